//! `voicebot serve` against a real SIP peer, SIPp (Debian `sip-tester`), on loopback: a caller
//! who speaks over RTP and gets the order-status question back, DTMF 0 sent as SIP INFO that
//! escalates (the gateway announces and hangs up itself), an OPTIONS ping over UDP and TCP, and
//! malformed SIP that never takes the gateway down. SIPp's exit status is 0 only when every
//! call of the scenario succeeded.
//!
//! Without SIPp these tests say so and pass, unless VOICEBOT_REQUIRE_PEERS is set (the test
//! script sets it, so CI fails loudly when a peer is missing).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{have_sipp, root, spoken_ulaw, Gateway};

/// Runs SIPp with `scenario` from tests/sipp in `dir`, calling `support`; returns its exit code
/// and its screen.
fn sipp(dir: &Path, port: u16, scenario: &str, media_port: u16, extra: &[&str]) -> (i32, String) {
    sipp_to(dir, port, "support", scenario, media_port, extra)
}

/// [`sipp`] calling `service` (the Request-URI's user part, which picks the flow).
fn sipp_to(
    dir: &Path,
    port: u16,
    service: &str,
    scenario: &str,
    media_port: u16,
    extra: &[&str],
) -> (i32, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg("sipp")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .arg("-sf")
        .arg(root().join("tests/sipp").join(scenario))
        .args(["-s", service, "-i", "127.0.0.1", "-p", "0"])
        .args(["-mp", &media_port.to_string(), "-m", "1", "-nostdin"])
        .args(["-timeout", "100", "-timeout_error"])
        .args(extra)
        .output()
        .expect("run sipp");
    let screen =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), screen)
}

#[test]
fn sipp_caller_asks_where_is_my_order_and_the_bot_asks_for_the_number() {
    if !have_sipp() {
        return;
    }
    let mut gw = Gateway::start("41000-41099", &[]);
    let dir = tempfile::tempdir().unwrap();
    spoken_ulaw(dir.path(), "Where is my order?", 3, 2);
    let (code, screen) = sipp(
        dir.path(),
        gw.port,
        "uac_speech.xml",
        41500,
        // Long enough for the reply to be heard even on a busy 2-core machine.
        &["-d", "15000"],
    );
    assert_eq!(code, 0, "sipp failed:\n{screen}");
    let records = gw.records(1, Duration::from_secs(40));
    assert_eq!(records.len(), 1, "one call record");
    let r = &records[0];
    assert_eq!(r["codec"], "PCMU/8000");
    assert_eq!(r["ended_by"], "caller");
    assert_eq!(r["called"], "support");
    let turns = r["turns"].as_array().expect("turns");
    assert!(!turns.is_empty(), "the caller's question was heard: {r}");
    assert_eq!(turns[0]["intent"], "order_status", "{}", turns[0]);
    let reply = turns[0]["reply"].as_str().unwrap_or("").to_lowercase();
    assert!(reply.contains("order number"), "{reply}");
    // The bot's reply went out over RTP (it was queued and played, at least in part).
    let speech = r["bot_speech"].as_array().expect("bot speech");
    assert!(speech.iter().any(|s| s["kind"] == "greeting"));
    assert!(speech
        .iter()
        .any(|s| s["kind"] == "reply" && s["played_ms"].as_u64().unwrap_or(0) > 500));
    // About 15 s of 20 ms packets each way.
    assert!(
        r["rtp"]["packets_received"].as_u64().unwrap_or(0) > 300,
        "{}",
        r["rtp"]
    );
    assert!(
        r["rtp"]["packets_sent"].as_u64().unwrap_or(0) > 300,
        "{}",
        r["rtp"]
    );
    assert!(gw.alive());
}

/// A delayed-offer call (RFC 3261 13.2.1; several trunks call so): the INVITE has no SDP, the
/// gateway's 200 OK carries its offer (the scenario checks PCMU and telephone-event), the
/// ACK the caller's answer, and from then on the call is an ordinary one: the question is
/// heard, the bot's reply is played back over RTP.
#[test]
fn sipp_delayed_offer_caller_is_heard_and_answered() {
    if !have_sipp() {
        return;
    }
    let mut gw = Gateway::start("48600-48699", &[]);
    let dir = tempfile::tempdir().unwrap();
    spoken_ulaw(dir.path(), "Where is my order?", 3, 2);
    let (code, screen) = sipp(
        dir.path(),
        gw.port,
        "uac_delayed_offer.xml",
        48700,
        &["-d", "15000"],
    );
    assert_eq!(code, 0, "sipp failed (no offer in the 200 OK?):\n{screen}");
    let records = gw.records(1, Duration::from_secs(40));
    let r = &records[0];
    assert_eq!(r["codec"], "PCMU/8000", "{r}");
    assert_eq!(r["ended_by"], "caller");
    let turns = r["turns"].as_array().expect("turns");
    assert!(!turns.is_empty(), "the caller's question was heard: {r}");
    assert_eq!(turns[0]["intent"], "order_status", "{}", turns[0]);
    let speech = r["bot_speech"].as_array().expect("bot speech");
    assert!(speech
        .iter()
        .any(|s| s["kind"] == "reply" && s["played_ms"].as_u64().unwrap_or(0) > 500));
    assert!(
        r["rtp"]["packets_received"].as_u64().unwrap_or(0) > 300,
        "{}",
        r["rtp"]
    );
    assert!(
        r["rtp"]["packets_sent"].as_u64().unwrap_or(0) > 300,
        "{}",
        r["rtp"]
    );
    assert!(gw.alive());
}

#[test]
fn sipp_dtmf_zero_escalates_and_the_gateway_hangs_up() {
    if !have_sipp() {
        return;
    }
    let gw = Gateway::start("41100-41199", &[]);
    let dir = tempfile::tempdir().unwrap();
    // One second of A-law silence, looped (the scenario offers PCMA first).
    std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).unwrap();
    let (code, screen) = sipp(dir.path(), gw.port, "uac_dtmf_info.xml", 41600, &[]);
    assert_eq!(code, 0, "sipp failed (no BYE from the gateway?):\n{screen}");
    let records = gw.records(1, Duration::from_secs(20));
    let r = &records[0];
    assert_eq!(r["codec"], "PCMA/8000", "the caller's first choice");
    assert_eq!(r["dtmf"], serde_json::json!(["0"]));
    assert_eq!(r["outcome"], "escalated", "{r}");
    assert_eq!(r["ended_by"], "bot");
    let announcement = r["bot_speech"]
        .as_array()
        .and_then(|s| s.last())
        .and_then(|s| s["text"].as_str())
        .unwrap_or("")
        .to_lowercase();
    assert!(
        announcement.contains("transfer") || announcement.contains("colleague"),
        "{announcement}"
    );
}

/// A flow file answering `number`, over the shipped intents and prompts, with `voice` as its
/// `[voice]` table.
fn flow_file(name: &str, number: &str, voice: &str) -> String {
    format!(
        "name = \"{name}\"\nnumbers = [\"{number}\"]\nintents = \"{}\"\nprompts = \"{}\"\n\
         [voice]\n{voice}\n",
        root().join("sip-config/intents.toml").display(),
        root().join("prompts/en.toml").display(),
    )
}

#[test]
fn each_flow_speaks_to_the_caller_in_its_own_voice() {
    if !have_sipp() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::write(
        flows.join("support.toml"),
        flow_file("support", "support", ""),
    )
    .unwrap();
    std::fs::write(
        flows.join("brisk.toml"),
        flow_file("brisk", "brisk", "speed = 1.5\ngain_db = -6.0"),
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[flows]\ndir = \"{}\"\ndefault = \"support\"\n",
            flows.display()
        ),
    )
    .unwrap();
    let gw = Gateway::start("42000-42099", &["--config", config.to_str().unwrap()]);
    // One second of A-law silence, looped; DTMF 0 asks for a person, so each call ends with
    // the transfer announcement, said whole.
    std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).unwrap();
    let mut announcement_ms = Vec::new();
    for (i, service) in ["support", "brisk"].into_iter().enumerate() {
        let (code, screen) = sipp_to(
            dir.path(),
            gw.port,
            service,
            "uac_dtmf_info.xml",
            42200 + 10 * i as u16,
            &[],
        );
        assert_eq!(code, 0, "sipp to {service} failed:\n{screen}");
        let records = gw.records(i + 1, Duration::from_secs(20));
        let r = records
            .iter()
            .find(|r| r["flow"] == service)
            .unwrap_or_else(|| panic!("no record of the call to {service}: {records:?}"));
        let last = r["bot_speech"]
            .as_array()
            .and_then(|s| s.last())
            .cloned()
            .unwrap_or_default();
        assert!(
            last["text"].as_str().unwrap_or("").contains("transferring"),
            "{r}"
        );
        assert_eq!(last["interrupted"], false, "{r}");
        announcement_ms.push(last["duration_ms"].as_f64().unwrap_or(0.0));
    }
    // The same words at 1.5 times the pace: about two thirds as long.
    let ratio = announcement_ms[1] / announcement_ms[0];
    println!(
        "transfer announcement: {} ms (support), {} ms (brisk, speed 1.5): ratio {ratio:.2}",
        announcement_ms[0], announcement_ms[1]
    );
    assert!(
        (0.55..0.8).contains(&ratio),
        "announcement {} ms (support) vs {} ms (brisk, speed 1.5): ratio {ratio:.2}",
        announcement_ms[0],
        announcement_ms[1]
    );
}

#[test]
fn options_ping_over_udp_and_tcp() {
    if !have_sipp() {
        return;
    }
    let gw = Gateway::start("41200-41299", &[]);
    let dir = tempfile::tempdir().unwrap();
    let (code, screen) = sipp(dir.path(), gw.port, "options.xml", 41700, &[]);
    assert_eq!(code, 0, "OPTIONS over UDP:\n{screen}");
    let (code, screen) = sipp(dir.path(), gw.port, "options.xml", 41710, &["-t", "t1"]);
    assert_eq!(code, 0, "OPTIONS over TCP:\n{screen}");
}

fn udp_exchange(port: u16, bytes: &[u8]) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    sock.send_to(bytes, ("127.0.0.1", port)).ok()?;
    let mut buf = vec![0u8; 65536];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).to_string())
}

fn options_request(extra: &str, content_length: &str) -> String {
    format!(
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-bad-{}\r\n\
         From: <sip:probe@127.0.0.1>;tag=1\r\n\
         To: <sip:support@127.0.0.1>\r\n\
         Call-ID: malformed-{}\r\n\
         CSeq: 1 OPTIONS\r\n{extra}\
         Content-Length: {content_length}\r\n\r\n",
        rand_suffix(),
        rand_suffix()
    )
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[test]
fn malformed_sip_gets_400_or_is_dropped_and_the_next_call_works() {
    if !have_sipp() {
        return;
    }
    let mut gw = Gateway::start("41300-41399", &[]);
    let port = gw.port;
    // Garbage bytes: dropped.
    assert_eq!(udp_exchange(port, b"\x00\x01\x02garbage\xff\xfe"), None);
    // Missing Call-ID/CSeq/Via: nothing to address a response with, dropped.
    assert_eq!(
        udp_exchange(
            port,
            b"INVITE sip:support@127.0.0.1 SIP/2.0\r\nFrom: <sip:a@b>\r\n\r\n"
        ),
        None
    );
    // A request with its headers but a Content-Length longer than the body: 400.
    let reply = udp_exchange(port, options_request("", "500").as_bytes()).expect("a 400");
    assert!(reply.starts_with("SIP/2.0 400"), "{reply}");
    // A CSeq whose method does not match: 400.
    let bad_cseq = options_request("", "0").replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS");
    let reply = udp_exchange(port, bad_cseq.as_bytes()).expect("a 400");
    assert!(reply.starts_with("SIP/2.0 400"), "{reply}");
    // The largest datagram UDP carries (64 KB) is still parsed and answered; larger messages
    // only exist on TCP (below).
    let big = options_request(&format!("X-Filler: {}\r\n", "a".repeat(64_000)), "0");
    let reply = udp_exchange(port, big.as_bytes()).expect("an answer to a 64 KB OPTIONS");
    assert!(reply.starts_with("SIP/2.0 200"), "{reply}");
    // The same over TCP: a bad frame closes that connection, nothing else.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    tcp.write_all(b"NOT SIP AT ALL\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let closed = matches!(tcp.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the connection is closed after a bad frame");
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.write_all(&vec![b'A'; 70_000]).unwrap_or(());
    drop(tcp);
    assert!(gw.alive(), "the gateway survived");
    // And it still answers calls (which a crash on that frame would have prevented).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("caller.raw"), vec![0xFFu8; 8000]).unwrap();
    let (code, screen) = sipp(dir.path(), port, "uac_speech.xml", 41800, &["-d", "2000"]);
    assert_eq!(code, 0, "a call after the malformed input:\n{screen}");
    assert!(gw.alive());
}

#[test]
fn sipp_cancel_during_setup_ends_cleanly_either_way() {
    if !have_sipp() {
        return;
    }
    let mut gw = Gateway::start("41900-41999", &[]);
    let dir = tempfile::tempdir().unwrap();
    // The gateway answers at once, so the CANCEL usually crosses the 200 OK; the scenario
    // accepts 487 (cancelled in time) or 200 + ACK + BYE, and fails on anything else.
    let (code, screen) = sipp(dir.path(), gw.port, "uac_cancel.xml", 41950, &[]);
    assert_eq!(code, 0, "CANCEL scenario:\n{screen}");
    let records = gw.records(1, Duration::from_secs(20));
    assert!(records.len() <= 1);
    if let Some(r) = records.first() {
        assert_eq!(r["ended_by"], "caller", "{r}");
    }
    assert!(gw.alive());
}

/// Call-IDs are the caller's choice: `a@b` and `a_b` (one file name once made safe) and a
/// second `a@b` are three calls, with three records and three recordings, each named by the
/// gateway's own call id and carrying the Call-ID as data.
#[test]
fn colliding_call_ids_are_three_calls_with_three_recordings() {
    if !have_sipp() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().join("recordings");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[recording]\nenabled = true\ndir = \"{}\"\n",
            recordings.display()
        ),
    )
    .unwrap();
    let gw = Gateway::start_with(Some(&config), "42100-42199", &[]);
    std::fs::write(dir.path().join("caller.raw"), vec![0xFFu8; 8000]).unwrap();
    let call_ids = ["a@b", "a_b", "a@b"];
    for (i, call_id) in call_ids.iter().enumerate() {
        let media_port = (42000 + 20 * i).to_string();
        let (code, screen) = sipp(
            dir.path(),
            gw.port,
            "uac_speech.xml",
            media_port.parse().unwrap(),
            &["-d", "1000", "-cid_str", call_id],
        );
        assert_eq!(code, 0, "call {i} ({call_id}):\n{screen}");
    }
    let records = gw.records(3, Duration::from_secs(30));
    assert_eq!(records.len(), 3, "one record per call: {records:#?}");
    let mut ids: Vec<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct gateway ids: {ids:?}");
    let mut seen: Vec<&str> = records
        .iter()
        .filter_map(|r| r["call_id"].as_str())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, ["a@b", "a@b", "a_b"]);
    // Each record names its own recording, which exists, and no two share a file.
    let mut files: Vec<String> = Vec::new();
    for r in &records {
        let file = r["recording"]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("no recording in {r:#}"));
        assert!(
            file.starts_with(r["id"].as_str().unwrap()),
            "{file} is named by the gateway id"
        );
        assert!(recordings.join(file).is_file(), "{file} on disk");
        files.push(file.to_string());
    }
    files.sort();
    files.dedup();
    assert_eq!(files.len(), 3);
    let on_disk = std::fs::read_dir(&recordings)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wav"))
        .count();
    assert_eq!(on_disk, 3);
}

//! SRTP with SDES keys (RFC 3711, RFC 4568) end to end, against real peers on loopback:
//! * pjsua2 (`srtpUse` mandatory) asks where its order is; the bot's reply, recorded by the
//!   caller after SRTP decryption, is transcribed;
//! * baresip (`mediaenc=srtp-mand`) calls and talks; the gateway hears it and baresip hears the
//!   bot (both decoded streams checked);
//! * a caller whose SRTP uses a key other than the one in its SDP is never heard: every packet
//!   is dropped and counted in `/metrics`, replays too, while its genuine packets are heard and
//!   the gateway's own packets open with the key of its answer.
//!
//! The gateway runs with `[media] srtp = "required"`, so a call that fell back to plain RTP
//! would be refused rather than pass.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::admin::{http_client, HttpGateway};
use common::cluster::sip_header;
use common::{call_over, have_baresip, pjsua_python, spoken_wav, transcribe_recording, Gateway};
use voicebot_gateway::media::srtp::{MasterKey, SrtpContext, SrtpError, SrtpSuite};

/// One SRTP test at a time: each runs a gateway with its models and a peer.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn srtp_required_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("gateway.toml");
    std::fs::write(&config, format!("[media]\nsrtp = \"required\"\n{extra}")).expect("config");
    config
}

#[test]
fn pjsua_srtp_mandatory_call_is_answered_and_the_reply_is_understood() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = srtp_required_config(dir.path(), "");
    let mut gw = Gateway::start_with(Some(&config), "47100-47199", &[]);
    let q1 = spoken_wav(dir.path(), "q1", "Where is my order?");
    let record = dir.path().join("bot.wav");
    let summary = call_over(
        &python,
        gw.port,
        "udp",
        &record,
        &[format!("say:{}", q1.display())],
        &["--srtp", "mandatory"],
    );
    assert_eq!(summary["connected"], true, "{summary}");
    assert!(summary.get("error").is_none(), "{summary}");

    let records = gw.records(1, Duration::from_secs(40));
    assert_eq!(records.len(), 1, "one call record");
    let r = &records[0];
    let rtp = &r["rtp"];
    assert_eq!(rtp["srtp"], "AES_CM_128_HMAC_SHA1_80", "{rtp}");
    assert_eq!(rtp["srtp_auth_failures"], 0, "{rtp}");
    assert_eq!(rtp["srtp_replays"], 0, "{rtp}");
    // SRTCP both ways: pjsua's reports opened, with its view of our stream.
    assert!(rtp["rtcp_received"].as_u64().unwrap_or(0) >= 1, "{rtp}");
    assert_eq!(rtp["remote_reported_lost"], 0, "{rtp}");
    let turns = r["turns"].as_array().expect("turns");
    assert!(!turns.is_empty(), "the question was heard: {r}");
    assert_eq!(turns[0]["intent"], "order_status", "{}", turns[0]);

    let heard = transcribe_recording(&record);
    assert!(
        heard.contains("order number"),
        "the bot asked for the number, over SRTP: {heard}"
    );
    assert!(gw.alive());
}

/// A baresip configuration directory: loopback only, no audio device (the caller's voice from `source`, what
/// it hears dumped by the sndfile module into `dumps`), PCMU, SRTP mandatory, no registration.
fn baresip_config(dir: &Path, source: &Path, dumps: &Path) -> PathBuf {
    let conf = dir.join("baresip");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::create_dir_all(dumps).expect("mkdir");
    let modules = [
        "g711.so",
        "aufile.so",
        "aubridge.so",
        "srtp.so",
        "sndfile.so",
    ];
    let mut text = format!(
        "poll_method\tepoll\nsip_listen\t127.0.0.1:0\nnet_interface\t127.0.0.1\n\
         audio_player\taubridge,nowhere\naudio_alert\taubridge,nowhere\n\
         audio_source\taufile,{}\n\
         module_path\t/usr/lib/baresip/modules\nsnd_path\t{}\n",
        source.display(),
        dumps.display()
    );
    for m in modules {
        text.push_str(&format!("module\t{m}\n"));
    }
    text.push_str("module_app\taccount.so\nmodule_app\tmenu.so\n");
    std::fs::write(conf.join("config"), text).expect("baresip config");
    std::fs::write(
        conf.join("accounts"),
        "<sip:caller@127.0.0.1>;regint=0;mediaenc=srtp-mand;audio_codecs=PCMU\n",
    )
    .expect("baresip accounts");
    std::fs::write(conf.join("contacts"), "").expect("baresip contacts");
    conf
}

/// The loudest sample (0..1) of a 16-bit WAV.
fn peak(path: &Path) -> f32 {
    let wav = voicebot_gateway::audio::wav::read_wav(path).expect("wav");
    wav.audio.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()))
}

#[test]
fn baresip_srtp_mandatory_call_carries_audio_both_ways() {
    if !have_baresip(&["srtp.so"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = srtp_required_config(dir.path(), "");
    let gw = Gateway::start_with(Some(&config), "47200-47299", &[]);
    // baresip's aufile wants 8 kHz here (its source runs at the codec's rate).
    let q16 = spoken_wav(dir.path(), "q1", "Where is my order?");
    let q8 = dir.path().join("q1-8k.wav");
    let status = Command::new("sox")
        .arg(&q16)
        .args(["-r", "8000"])
        .arg(&q8)
        .args(["pad", "1.5", "0"])
        .status()
        .expect("sox");
    assert!(status.success());
    let dumps = dir.path().join("dumps");
    let conf = baresip_config(dir.path(), &q8, &dumps);
    // Dial at once; quit (hanging up) after 20 s, bounded by `timeout` in any case.
    let out = Command::new("timeout")
        .arg("40")
        .arg("baresip")
        .arg("-f")
        .arg(&conf)
        .args(["-t", "20", "-e"])
        .arg(format!("/dial sip:support@127.0.0.1:{}", gw.port))
        .stdin(Stdio::null())
        .output()
        .expect("run baresip");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);

    let records = gw.records(1, Duration::from_secs(40));
    assert_eq!(records.len(), 1, "one call record; baresip said:\n{log}");
    let r = &records[0];
    let rtp = &r["rtp"];
    assert!(rtp["srtp"].is_string(), "SRTP negotiated: {rtp}\n{log}");
    // baresip sends its closing RTCP BYE in clear (its SRTP context is gone by then; seen as
    // 48 bytes of type 203 ending in the reason's text). Dropped as unauthenticated and counted,
    // as it must be; it races the SIP BYE, so it is in the record or not. Nothing else may fail.
    assert!(
        rtp["srtp_auth_failures"].as_u64().unwrap_or(99) <= 1,
        "{rtp}"
    );
    // baresip's file source stops at the end of the file (1.5 s of silence and the question:
    // about 200 packets, give or take one).
    assert!(
        rtp["packets_received"].as_u64().unwrap_or(0) >= 190,
        "the caller's audio was heard: {rtp}"
    );
    assert!(rtp["packets_sent"].as_u64().unwrap_or(0) >= 190, "{rtp}");
    let turns = r["turns"].as_array().expect("turns");
    assert!(
        turns.iter().any(|t| t["intent"] == "order_status"),
        "the question over SRTP was understood: {r}"
    );
    // What baresip decoded from the gateway: the bot's voice, not noise or silence.
    let decoded: Vec<PathBuf> = std::fs::read_dir(&dumps)
        .expect("dumps")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .collect();
    assert_eq!(
        decoded.len(),
        1,
        "one decoded stream dumped: {decoded:?}\n{log}"
    );
    assert!(peak(&decoded[0]) > 0.05, "baresip heard the bot");
    let heard = transcribe_recording(&decoded[0]);
    assert!(
        heard.split_whitespace().count() >= 3,
        "baresip heard words from the bot: {heard:?}"
    );
}

/// A minimal SIP caller over UDP that offers SRTP with a key of its choosing.
struct SdesCaller {
    sip: UdpSocket,
    rtp: UdpSocket,
    gateway: SocketAddr,
    call_id: String,
    to_tag: String,
}

const ANSWER_WAIT: Duration = Duration::from_secs(20);

impl SdesCaller {
    fn new(port: u16) -> SdesCaller {
        let sip = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        SdesCaller {
            sip,
            rtp,
            gateway: SocketAddr::from(([127, 0, 0, 1], port)),
            call_id: format!("srtp-{}@test", std::process::id()),
            to_tag: String::new(),
        }
    }

    fn request(&self, method: &str, cseq: u32, body: &str) -> String {
        let local = self.sip.local_addr().expect("addr");
        let to_tag = if self.to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={}", self.to_tag)
        };
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} sip:support@{gw} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-srtp-{method}-{cseq}\r\n\
             From: <sip:caller@127.0.0.1>;tag=srtp1\r\n\
             To: <sip:support@{gw}>{to_tag}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:caller@{local}>\r\nMax-Forwards: 70\r\n\
             {ct}Content-Length: {}\r\n\r\n{body}",
            self.call_id,
            body.len(),
            gw = self.gateway,
        )
    }

    /// Sends `request` and returns the final response to it.
    fn transact(&self, request: &str) -> String {
        self.sip
            .send_to(request.as_bytes(), self.gateway)
            .expect("send");
        let deadline = Instant::now() + ANSWER_WAIT;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no final response to:\n{request}");
            self.sip.set_read_timeout(Some(left)).expect("timeout");
            let Ok((n, _)) = self.sip.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let code: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if text.starts_with("SIP/2.0") && code >= 200 {
                return text;
            }
        }
    }

    /// INVITEs with `key` (base64) in `a=crypto`; returns the 200's SDP after the ACK.
    fn call(&mut self, key: &str) -> String {
        let rtp = self.rtp.local_addr().expect("addr");
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/SAVP 0\r\na=sendrecv\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n",
            rtp.port()
        );
        let ok = self.transact(&self.request("INVITE", 1, &sdp));
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
        self.to_tag = header(&ok, "To")
            .split(";tag=")
            .nth(1)
            .expect("To tag")
            .trim()
            .to_string();
        let ack = self.request("ACK", 1, "");
        self.sip.send_to(ack.as_bytes(), self.gateway).expect("ack");
        ok.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }

    fn bye(&self) {
        let ok = self.transact(&self.request("BYE", 2, ""));
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    }
}

/// A header's value in a SIP message; "" when it has none.
fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    sip_header(msg, name).unwrap_or("")
}

/// A PCMU packet of a loud 500 Hz square wave.
fn loud_rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160).map(|i| if (i / 8) % 2 == 0 { 0x80 } else { 0x00 }));
    p
}

/// The value of an unlabelled counter in an OpenMetrics text.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Polls `/metrics` until `name` reaches `at_least` (or the deadline); returns its value.
fn wait_counter(base: &str, name: &str, at_least: u64) -> u64 {
    let http = http_client(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = http
            .get(&format!("{base}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .map_or(0, |t| counter(&t, name));
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn srtp_with_a_wrong_key_is_never_heard_and_is_counted() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("records");
    std::fs::create_dir_all(&reports).unwrap();
    let config = srtp_required_config(
        dir.path(),
        &format!(
            "[sip]\nreport_dir = \"{}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-e2e-token\"\n\
             feedback_database = \"{}\"\nadmin_token_env = \"\"\nadmin_token_file = \"{}\"\n\
             history_database = \"\"\n",
            reports.display(),
            dir.path().join("feedback.sqlite3").display(),
            dir.path().join("admin-token").display(),
        ),
    );
    let mut gw = HttpGateway::start(&config, "47300-47399", 3, Duration::from_secs(120));
    let auth_name = "voicebot_srtp_auth_failures_total";
    let replay_name = "voicebot_srtp_replays_total";
    assert_eq!(wait_counter(&gw.base, auth_name, 0), 0);

    let offered = MasterKey::random();
    let mut caller = SdesCaller::new(gw.sip_port);
    let answer = caller.call(&STANDARD.encode(offered.as_bytes()));
    let crypto = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=crypto:"))
        .unwrap_or_else(|| panic!("no a=crypto in the answer:\n{answer}"));
    assert!(
        crypto.starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{crypto}"
    );
    let theirs = crypto.split("inline:").nth(1).expect("key").trim();
    let theirs =
        MasterKey::from_bytes(&STANDARD.decode(theirs).expect("base64")).expect("30 bytes");
    let gw_rtp: SocketAddr = {
        let port = answer
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok())
            .expect("m=audio port");
        SocketAddr::from(([127, 0, 0, 1], port))
    };

    // The gateway's own packets open with the key of its answer (and only with it).
    let mut inbound = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &theirs).unwrap();
    let mut wrong_in =
        SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &MasterKey::random()).unwrap();
    caller
        .rtp
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = caller.rtp.recv_from(&mut buf).expect("the gateway's RTP");
    assert_eq!(wrong_in.unprotect_rtp(&buf[..n]), Err(SrtpError::Auth));
    let (n, _) = caller.rtp.recv_from(&mut buf).expect("the gateway's RTP");
    let plain = inbound
        .unprotect_rtp(&buf[..n])
        .expect("opens with the answer's key");
    assert_eq!(plain[1] & 0x7f, 0, "PCMU inside");

    // 1. Loud audio under a key other than the offered one: all dropped, all counted.
    let mut tampered =
        SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &MasterKey::random()).unwrap();
    for seq in 0..60u16 {
        let packet = tampered.protect_rtp(&loud_rtp(seq, 0x7777)).unwrap();
        caller.rtp.send_to(&packet, gw_rtp).expect("send");
    }
    let failures = wait_counter(&gw.base, auth_name, 60);
    assert!(failures >= 60, "{auth_name} = {failures}");

    // 2. The genuine key: heard. Then five of those packets again: replays, dropped.
    let mut genuine = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &offered).unwrap();
    let mut sent = Vec::new();
    for seq in 100..130u16 {
        let packet = genuine.protect_rtp(&loud_rtp(seq, 0x1234)).unwrap();
        caller.rtp.send_to(&packet, gw_rtp).expect("send");
        sent.push(packet);
        std::thread::sleep(Duration::from_millis(5));
    }
    for packet in &sent[20..25] {
        caller.rtp.send_to(packet, gw_rtp).expect("send");
    }
    let replays = wait_counter(&gw.base, replay_name, 5);
    assert_eq!(replays, 5, "{replay_name}");
    caller.bye();

    // The record: only the 30 genuine packets reached the receiver.
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let found = std::fs::read_dir(&reports)
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no call record");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rtp = &record["rtp"];
    assert_eq!(rtp["srtp"], "AES_CM_128_HMAC_SHA1_80", "{rtp}");
    assert_eq!(rtp["srtp_auth_failures"], 60, "{rtp}");
    assert_eq!(rtp["srtp_replays"], 5, "{rtp}");
    assert_eq!(
        rtp["packets_received"], 30,
        "only the genuine packets: {rtp}"
    );
    assert_eq!(
        rtp["packets_foreign_ssrc"], 0,
        "dropped before the latch: {rtp}"
    );
    assert!(gw.alive());
}

/// A plain RTP/AVP offer to a gateway that requires SRTP is refused with 488 and a Warning.
#[test]
fn plain_offer_to_srtp_required_gets_488() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = srtp_required_config(dir.path(), "");
    let gw = Gateway::start_with(Some(&config), "47400-47499", &[]);
    let caller = SdesCaller::new(gw.port);
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0\r\n";
    let answer = caller.transact(&caller.request("INVITE", 1, sdp));
    assert!(answer.starts_with("SIP/2.0 488"), "{answer}");
    assert!(
        header(&answer, "Warning").contains("requires SRTP"),
        "{answer}"
    );
}

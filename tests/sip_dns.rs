//! RFC 3263 end to end: the agent extension `sip:2001@agents.test` is found through a real DNS
//! server (dnsmasq on loopback, with NAPTR, SRV and A records) and the agent call fails over
//! between the SRV targets, which are SIPp user agent servers.
//!
//! * NAPTR prefers TCP, which agent calls do not use, then UDP; SRV names two servers by
//!   priority. The first answers 503, so the INVITE goes to the second (a new transaction),
//!   which answers; the call is bridged and the record names the 503 attempt with its address.
//! * No NAPTR; SRV names a server that never answers and a second one: after
//!   `failover_after_ms` of silence (well within the ring time) the second is called.
//! * A trunk's registrar `sip:carrier.test`: SRV names an overloaded server (503) first and
//!   Kamailio second; the REGISTER goes to Kamailio at once, not after the back-off.
//!
//! In the agent tests a SIPp caller escalates with DTMF 0. Without SIPp, Kamailio or dnsmasq these tests say so and pass,
//! unless VOICEBOT_REQUIRE_PEERS is set.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::sipp::{agent, finish};
use common::webhook::{transfer_config, webhook_receiver};
use common::{free_udp_port, have_sipp, peer_available, root, Gateway};

/// One test at a time: each runs a gateway and several SIPp processes on 2 shared cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

fn have_dnsmasq() -> bool {
    let ok = Command::new(DNSMASQ)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    peer_available("dnsmasq", ok, "apt-get install dnsmasq-base")
}

/// dnsmasq in the foreground on 127.0.0.1 and a free port, serving only the records given
/// (authoritative for `.test`, no upstream, no hosts file), logging its queries. It lives at
/// most 180 s (`timeout`) and is stopped when dropped.
struct Dns {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Dns {
    fn start(records: &[String]) -> Dns {
        for _ in 0..5 {
            let port = free_udp_port();
            let mut child = Command::new("timeout")
                .args([
                    "180",
                    DNSMASQ,
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                ])
                .args([
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--pid-file=",
                ])
                .args(["--listen-address=127.0.0.1", &format!("--port={port}")])
                .args(["--local=/test/", "--log-queries", "--log-facility=-"])
                .args(records)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start dnsmasq");
            let stderr = child.stderr.take().expect("stderr");
            let log: Arc<Mutex<Vec<String>>> = Arc::default();
            let (tx, rx) = std::sync::mpsc::channel();
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("started, version") {
                        let _ = tx.send(true);
                    }
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
                let _ = tx.send(false);
            });
            let dns = Dns {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log,
            };
            if rx.recv_timeout(Duration::from_secs(10)) == Ok(true) {
                return dns;
            }
            // The port was taken meanwhile (or dnsmasq failed): say why, try another.
            eprintln!("dnsmasq did not start: {:?}", dns.lines());
        }
        panic!("dnsmasq would not start");
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether dnsmasq logged a query of `kind` for `name`.
    fn asked(&self, kind: &str, name: &str) -> bool {
        let needle = format!("query[{kind}] {name} ");
        self.lines().iter().any(|l| l.contains(&needle))
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        // `timeout` passes SIGTERM on to dnsmasq.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The answering agent (`tests/sipp/uas_agent.xml`), written to `dir` with its talk time
/// before hanging up raised from 12 to 30 s: the caller pressed 0 during the greeting, and is
/// put through once the greeting and the announcement are out.
fn answering_agent_scenario(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("tests/sipp/uas_agent.xml")).expect("scenario");
    assert!(text.contains("<pause milliseconds=\"12000\"/>"));
    let path = dir.join("uas_agent_30s.xml");
    std::fs::write(
        &path,
        text.replace(
            "<pause milliseconds=\"12000\"/>",
            "<pause milliseconds=\"30000\"/>",
        ),
    )
    .expect("scenario");
    path
}

/// Runs the SIPp caller (DTMF 0, then waits for the gateway's BYE) to completion.
fn caller(dir: &Path, gw_port: u16, media_port: u16) -> (i32, String) {
    std::fs::write(dir.join("caller.raw"), vec![0xD5u8; 8000]).expect("caller audio");
    let scenario = root().join("tests/sipp/uac_dtmf_info.xml");
    common::sipp::caller(dir, gw_port, &scenario, media_port)
}

/// The transfer test configuration with one extension, the DNS server and the failover timer.
fn config(dir: &Path, extension: &str, dns: SocketAddr, failover_ms: u64) -> String {
    let (hook_port, _) = webhook_receiver();
    let path = transfer_config(dir, &[extension.to_string()], hook_port, 15);
    let text = std::fs::read_to_string(&path).expect("config");
    let text = format!(
        "[sip]\ndns_servers = [\"{dns}\"]\ndns_timeout_ms = 3000\n{}",
        text.replace(
            "ring_timeout_s = 15\n",
            &format!("ring_timeout_s = 15\nfailover_after_ms = {failover_ms}\n"),
        )
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// The record's transfer attempts as "address outcome".
fn attempts(transfer: &serde_json::Value) -> Vec<String> {
    transfer["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    format!(
                        "{} {} {}",
                        x["target"].as_str().unwrap_or(""),
                        x["address"].as_str().unwrap_or("-"),
                        x["outcome"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_503_fails_over_to_the_next_srv_target() {
    if !have_sipp() || !have_dnsmasq() {
        return;
    }
    let _serial = serial();
    let (first, second) = (free_udp_port(), free_udp_port());
    let dns = Dns::start(&[
        // TCP first by NAPTR order: skipped, agent calls go over UDP.
        "--naptr-record=agents.test,5,10,S,SIP+D2T,,_sip._tcp.agents.test".into(),
        "--naptr-record=agents.test,10,10,S,SIP+D2U,,_sip._udp.agents.test".into(),
        format!("--srv-host=_sip._tcp.agents.test,tcp.agents.test,{first},1,0"),
        format!("--srv-host=_sip._udp.agents.test,b.agents.test,{second},20,10"),
        format!("--srv-host=_sip._udp.agents.test,a.agents.test,{first},10,10"),
        "--host-record=a.agents.test,127.0.0.1".into(),
        "--host-record=b.agents.test,127.0.0.1".into(),
        "--host-record=tcp.agents.test,127.0.0.1".into(),
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "sip:2001@agents.test", dns.addr, 4000);
    let gw = Gateway::start("46100-46149", &["--config", &cfg]);
    let agents = tempfile::tempdir().expect("dir");
    let unavailable = agent(
        agents.path(),
        first,
        46300,
        &root().join("tests/sipp/uas_unavailable.xml"),
        &[],
    );
    let answering = agent(
        agents.path(),
        second,
        46310,
        &answering_agent_scenario(agents.path()),
        &["-rtp_echo"],
    );
    let (code, screen) = caller(dir.path(), gw.port, 46400);
    let (first_code, first_screen) = finish(unavailable);
    let (second_code, second_screen) = finish(answering);
    assert_eq!(
        first_code, 0,
        "the first SRV target got no INVITE:\n{first_screen}"
    );
    assert_eq!(
        second_code, 0,
        "the second SRV target was not called, or not bridged:\n{second_screen}"
    );
    assert_eq!(code, 0, "caller:\n{screen}");

    assert!(dns.asked("NAPTR", "agents.test"), "{:?}", dns.lines());
    assert!(
        dns.asked("SRV", "_sip._udp.agents.test"),
        "{:?}",
        dns.lines()
    );
    assert!(
        !dns.asked("SRV", "_sip._tcp.agents.test"),
        "a TCP target was looked up: {:?}",
        dns.lines()
    );
    let records = gw.records(1, Duration::from_secs(30));
    let t = &records.first().expect("a call record")["transfer"];
    assert_eq!(t["outcome"], "bridged", "{t}");
    assert_eq!(t["agent"], "sip:2001@agents.test");
    assert_eq!(
        attempts(t),
        [format!(
            "sip:2001@agents.test 127.0.0.1:{first} failed: 503 Service Unavailable; \
             failed over to 127.0.0.1:{second}"
        )],
        "{t}"
    );
}

/// A SIP server that never answers: counts the INVITEs it gets.
fn silent_server() -> (u16, Arc<Mutex<Vec<Instant>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("addr").port();
    socket
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let got: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let sink = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            if buf.get(..n).is_some_and(|b| b.starts_with(b"INVITE ")) {
                if let Ok(mut g) = sink.lock() {
                    g.push(Instant::now());
                }
            }
        }
    });
    (port, got)
}

#[test]
fn a_silent_srv_target_is_left_within_the_ring_time() {
    if !have_sipp() || !have_dnsmasq() {
        return;
    }
    let _serial = serial();
    let (silent, invites) = silent_server();
    let second = free_udp_port();
    // No NAPTR for silent.test: SRV for UDP straight away.
    let dns = Dns::start(&[
        format!("--srv-host=_sip._udp.silent.test,a.silent.test,{silent},10,0"),
        format!("--srv-host=_sip._udp.silent.test,b.silent.test,{second},20,0"),
        "--host-record=a.silent.test,127.0.0.1".into(),
        "--host-record=b.silent.test,127.0.0.1".into(),
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "sip:2001@silent.test", dns.addr, 1500);
    let gw = Gateway::start("46150-46199", &["--config", &cfg]);
    let agents = tempfile::tempdir().expect("dir");
    let answering = agent(
        agents.path(),
        second,
        46320,
        &answering_agent_scenario(agents.path()),
        &["-rtp_echo"],
    );
    let (code, screen) = caller(dir.path(), gw.port, 46420);
    let (second_code, second_screen) = finish(answering);
    assert_eq!(
        second_code, 0,
        "the second SRV target was not called, or not bridged:\n{second_screen}"
    );
    assert_eq!(code, 0, "caller:\n{screen}");
    let invites = invites.lock().map(|g| g.clone()).unwrap_or_default();
    assert!(!invites.is_empty(), "the silent first target got no INVITE");
    assert!(dns.asked("NAPTR", "silent.test"), "{:?}", dns.lines());
    let records = gw.records(1, Duration::from_secs(30));
    let t = &records.first().expect("a call record")["transfer"];
    assert_eq!(t["outcome"], "bridged", "{t}");
    assert_eq!(
        attempts(t),
        [format!(
            "sip:2001@silent.test 127.0.0.1:{silent} failed: no response within 1500 ms; \
             failed over to 127.0.0.1:{second}"
        )],
        "{t}"
    );
}

/// A registrar that answers every REGISTER with 503 (overloaded): counts them.
fn unavailable_registrar() -> (u16, Arc<Mutex<usize>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("addr").port();
    socket
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let got: Arc<Mutex<usize>> = Arc::default();
    let sink = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Some(text) = buf.get(..n).and_then(|b| std::str::from_utf8(b).ok()) else {
                continue;
            };
            if !text.starts_with("REGISTER ") {
                continue;
            }
            // The response copies Via, From, To, Call-ID and CSeq (RFC 3261 8.2.6.2).
            let copied: String = text
                .lines()
                .filter(|l| {
                    let name = l
                        .split(':')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase();
                    ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str())
                })
                .map(|l| format!("{l}\r\n"))
                .collect();
            let answer =
                format!("SIP/2.0 503 Service Unavailable\r\n{copied}Content-Length: 0\r\n\r\n");
            let _ = socket.send_to(answer.as_bytes(), from);
            if let Ok(mut g) = sink.lock() {
                *g += 1;
            }
        }
    });
    (port, got)
}

/// A trunk's registrar by RFC 3263: `sip:carrier.test` has no NAPTR records, SRV names an
/// overloaded server first (503) and Kamailio second. The REGISTER goes to the second at once
/// (not after the trunk's 30 s back-off) and the gateway is registered there.
#[test]
fn a_trunk_registers_with_the_next_srv_target_when_the_first_answers_503() {
    if !have_dnsmasq() || !common::kamailio::have_kamailio() {
        return;
    }
    let _serial = serial();
    let (busy, registers) = unavailable_registrar();
    let kam = common::kamailio::Kamailio::start("bot", "srv-pass");
    let dns = Dns::start(&[
        format!("--srv-host=_sip._udp.carrier.test,a.carrier.test,{busy},10,0"),
        format!(
            "--srv-host=_sip._udp.carrier.test,b.carrier.test,{},20,0",
            kam.port
        ),
        "--host-record=a.carrier.test,127.0.0.1".into(),
        "--host-record=b.carrier.test,127.0.0.1".into(),
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sip]\ndns_servers = [\"{}\"]\ndns_timeout_ms = 3000\n\
             [[sip.trunks]]\nname = \"carrier\"\nregistrar = \"sip:carrier.test\"\n\
             user = \"bot\"\npassword = \"srv-pass\"\nexpires_s = 120\n",
            dns.addr
        ),
    )
    .expect("config");
    let started = Instant::now();
    let _gw = Gateway::start("46200-46249", &["--config", &cfg.display().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while kam.lines("KAMTEST registered bot").is_empty() {
        assert!(
            Instant::now() < deadline,
            "not registered at the second target; kamailio: {:?}; dns: {:?}",
            kam.lines("KAMTEST"),
            dns.lines()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    assert_eq!(
        registers.lock().map(|g| *g).unwrap_or(0),
        1,
        "the first target got one REGISTER and answered 503"
    );
    assert!(dns.asked("NAPTR", "carrier.test"), "{:?}", dns.lines());
    assert!(
        dns.asked("SRV", "_sip._udp.carrier.test"),
        "{:?}",
        dns.lines()
    );
    // The gateway's start (models loaded) is in this time too; the back-off alone is 30 s.
    assert!(took < Duration::from_secs(20), "registered after {took:?}");
}

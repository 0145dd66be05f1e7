//! A cluster on loopback: Kamailio (Debian `kamailio`) running the shipped
//! `sip-config/kamailio/dispatcher.cfg` in front of three `voicebot serve` gateways, and SIPp
//! callers with RTP through it. Calls are spread over the gateways; a gateway killed with
//! SIGKILL is taken out by Kamailio's OPTIONS probes and new calls go to the others; a rolling
//! restart (SIGTERM -> drain -> exit -> start -> probed active -> next) loses no call. And the
//! drain itself, without a proxy: a call in progress survives SIGTERM and ends normally while
//! new INVITEs and OPTIONS get 503, then the gateway exits 0.
//!
//! Loads are small (a 2-core machine runs the suite): a few calls at once, each a few seconds
//! of RTP. Kamailio or SIPp missing skips the tests, or fails them when VOICEBOT_REQUIRE_PEERS
//! is set.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{options_answer, status_of, ClusterGateway, Kamailio, SippLoad};
use common::have_sipp;

/// The caller scenario whose ACK and BYE follow the proxy's Record-Route.
const PROXIED: &str = "uac_speech_proxied.xml";

fn peers() -> bool {
    // Both are asked, so a missing one is reported even when the other is missing too.
    let kamailio = common::kamailio::have_kamailio();
    let sipp = have_sipp();
    kamailio && sipp
}

/// A second of silence for SIPp's rtp_stream (caller.raw in `dir`).
fn silence(dir: &Path) {
    std::fs::write(dir.join("caller.raw"), vec![0xFFu8; 8000]).expect("caller.raw");
}

/// Three gateways (records under `dir`) and Kamailio in front of them.
fn cluster(dir: &Path, rtp_base: u16) -> (Vec<ClusterGateway>, Kamailio) {
    let gateways: Vec<ClusterGateway> = (0..3u16)
        .map(|i| {
            let lo = rtp_base + i * 100;
            ClusterGateway::start(
                &format!("{lo}-{}", lo + 99),
                &dir.join(format!("gw{i}")),
                &[],
            )
        })
        .collect();
    let ports: Vec<u16> = gateways.iter().map(|g| g.port).collect();
    let kam = Kamailio::start(&ports);
    (gateways, kam)
}

fn counts(gateways: &[ClusterGateway]) -> Vec<usize> {
    gateways.iter().map(|g| g.records().len()).collect()
}

/// Waits (at most `wait`) until the gateways have written `n` records in all.
fn wait_records(gateways: &[ClusterGateway], n: usize, wait: Duration) -> Vec<usize> {
    let deadline = Instant::now() + wait;
    loop {
        let c = counts(gateways);
        if c.iter().sum::<usize>() >= n || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn calls_through_kamailio_are_answered_and_spread_over_three_gateways() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    silence(dir.path());
    let (gateways, kam) = cluster(dir.path(), 43000);
    let load = SippLoad::start(
        dir.path(),
        PROXIED,
        kam.port,
        43900,
        2,
        3,
        9,
        2000,
        Duration::from_secs(90),
    );
    let (result, screen) = load.finish();
    assert_eq!(
        result.code,
        Some(0),
        "sipp:\n{screen}\n{:?}",
        kam.lines("DISPATCH")
    );
    assert_eq!(result.successful, 9, "{screen}");
    let per_gateway = wait_records(&gateways, 9, Duration::from_secs(30));
    eprintln!("calls per gateway: {per_gateway:?}");
    assert_eq!(per_gateway.iter().sum::<usize>(), 9, "{per_gateway:?}");
    assert!(
        per_gateway.iter().all(|n| *n >= 2),
        "round robin: {per_gateway:?}"
    );
    for gw in &gateways {
        for r in gw.records() {
            assert_eq!(r["ended_by"], "caller", "{r}");
            // RTP went straight between SIPp and the gateway (Kamailio carries no media).
            assert!(
                r["rtp"]["packets_received"].as_u64().unwrap_or(0) > 20,
                "{}",
                r["rtp"]
            );
        }
    }
}

#[test]

fn a_gateway_killed_under_load_is_taken_out_and_later_calls_all_succeed() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    silence(dir.path());
    let (mut gateways, kam) = cluster(dir.path(), 44000);
    let load = SippLoad::start(
        dir.path(),
        PROXIED,
        kam.port,
        44900,
        1,
        3,
        10,
        3000,
        Duration::from_secs(120),
    );
    // Kill the first gateway once calls are flowing (two finished somewhere).
    wait_records(&gateways, 2, Duration::from_secs(60));
    let mark = kam.mark();
    let victim = gateways[0].port;
    gateways[0].kill();
    let (at_kill, screen) = load.finish();
    eprintln!(
        "kill -9 under load: {} calls succeeded, {} failed (calls the killed gateway held)",
        at_kill.successful, at_kill.failed
    );
    assert!(at_kill.successful > 0, "{screen}");
    assert!(
        at_kill.failed <= 3,
        "at most the calls in progress on it: {screen}"
    );
    assert!(
        kam.wait_inactive(mark, victim, Duration::from_secs(10)),
        "Kamailio did not take the killed gateway out: {:?}",
        kam.lines("GW")
    );
    let before = counts(&gateways[1..]).iter().sum::<usize>();
    let load = SippLoad::start(
        dir.path(),
        PROXIED,
        kam.port,
        44950,
        2,
        3,
        6,
        2000,
        Duration::from_secs(90),
    );
    let (after, screen) = load.finish();
    eprintln!(
        "after the kill: {} calls succeeded, {} failed",
        after.successful, after.failed
    );
    assert_eq!(after.code, Some(0), "{screen}");
    assert_eq!((after.successful, after.failed), (6, 0), "{screen}");
    let survivors = wait_records(&gateways[1..], before + 6, Duration::from_secs(30));
    assert_eq!(survivors.iter().sum::<usize>(), before + 6, "{survivors:?}");
}

#[test]

fn a_rolling_restart_under_load_loses_no_call() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    silence(dir.path());
    let (mut gateways, kam) = cluster(dir.path(), 45000);
    let load = SippLoad::start(
        dir.path(),
        PROXIED,
        kam.port,
        45900,
        1,
        3,
        1000,
        2000,
        Duration::from_secs(400),
    );
    wait_records(&gateways, 2, Duration::from_secs(60));
    for gw in gateways.iter_mut() {
        let mark = kam.mark();
        let started = Instant::now();
        gw.terminate();
        assert!(
            kam.wait_inactive(mark, gw.port, Duration::from_secs(20)),
            "Kamailio did not see gateway {} draining: {:?}",
            gw.port,
            kam.lines("GW")
        );
        let status = gw
            .wait_exit(Duration::from_secs(60))
            .expect("drained and exited");
        assert!(status.success(), "exit status after the drain: {status}");
        let drained = started.elapsed();
        let mark = kam.mark();
        gw.restart();
        assert!(
            kam.wait_active(mark, gw.port, Duration::from_secs(20)),
            "Kamailio did not take gateway {} back: {:?}",
            gw.port,
            kam.lines("GW")
        );
        eprintln!(
            "gateway {}: drained in {:.1} s, back in {:.1} s",
            gw.port,
            drained.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    // Calls on the restarted gateways too, then the load ends.
    let total = counts(&gateways).iter().sum::<usize>();
    wait_records(&gateways, total + 3, Duration::from_secs(30));
    load.stop_placing();
    let (result, screen) = load.finish();
    eprintln!(
        "rolling restart: {} calls succeeded, {} failed; per gateway {:?}",
        result.successful,
        result.failed,
        counts(&gateways)
    );
    assert_eq!(result.failed, 0, "{screen}\n{:?}", kam.lines("FAILOVER"));
    assert_eq!(result.code, Some(0), "{screen}");
    assert!(result.successful >= 5, "{screen}");
}

/// An INVITE to 127.0.0.1:`port` from a socket of our own: the final answer's status.
fn invite_answer(port: u16, wait: Duration) -> Option<u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let local = sock.local_addr().expect("addr");
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 46990 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let invite = format!(
        "INVITE sip:support@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKdrain1\r\n\
         From: <sip:late@127.0.0.1>;tag=late1\r\nTo: <sip:support@127.0.0.1>\r\nCall-ID: late-{}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:late@{local}>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        std::process::id(),
        sdp.len()
    );
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    sock.send_to(invite.as_bytes(), ("127.0.0.1", port))
        .expect("send INVITE");
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            if let Some(code) = status_of(&buf[..n]).filter(|c| *c >= 200) {
                return Some(code);
            }
        }
    }
    None
}

fn readyz(base: &str) -> (u16, serde_json::Value) {
    let agent = common::admin::http_client(Duration::from_secs(5));
    let mut answer = agent
        .get(&format!("{base}/readyz"))
        .call()
        .expect("GET /readyz");
    let status = answer.status().as_u16();
    let body = answer.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&body).expect("json"))
}

#[test]
fn sigterm_drains_a_call_in_progress_refuses_new_ones_then_exits_0() {
    if !have_sipp() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    silence(dir.path());
    let mut gw = ClusterGateway::start(
        "46000-46099",
        &dir.path().join("gw"),
        &["--http", "127.0.0.1:0"],
    );
    let base = format!(
        "http://{}",
        gw.ready
            .split("http=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no http= in {}", gw.ready))
    );
    assert_eq!(readyz(&base).0, 200);
    // One call, 8 s on the line.
    let call = SippLoad::start(
        dir.path(),
        "uac_speech.xml",
        gw.port,
        46900,
        1,
        1,
        1,
        8000,
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(&base).1["calls_active"] != 1 {
        assert!(Instant::now() < deadline, "the call never became active");
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (status, body) = readyz(&base);
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready["reason"], "draining", "{ready}");
    assert_eq!(ready["calls_active"], 1, "{ready}");
    assert_eq!(options_answer(gw.port, Duration::from_secs(5)), Some(503));
    assert_eq!(invite_answer(gw.port, Duration::from_secs(5)), Some(503));
    assert!(gw.alive(), "the gateway waits for its call");
    let (result, screen) = call.finish();
    assert_eq!(
        result.code,
        Some(0),
        "the call in progress ended normally:\n{screen}"
    );
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("the gateway exits once its last call is done");
    assert!(status.success(), "{status}");
    let records = gw.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["ended_by"], "caller", "{}", records[0]);
}

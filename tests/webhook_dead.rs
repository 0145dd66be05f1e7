//! A webhook receiver slower than `timeout_ms`, end to end: the real `voicebot serve` with a
//! SIPp caller who presses 0 (escalated), a busy agent (callback requested), and a receiver in
//! the test that takes every event but `escalated` at once and answers `escalated` only after
//! the gateway's deadline.
//!
//! The gateway must try `escalated` exactly `max_attempts` times, then give it up (a dead
//! letter): the call's later events are still delivered, in order; the admin API lists the
//! dead event with its attempts and last error; `/metrics` counts it; and once the receiver is
//! fast again, `POST /api/webhook/dead/{id}/retry` delivers it with the same idempotency key.
//!
//! Without SIPp this test says so and passes, unless VOICEBOT_REQUIRE_PEERS is set.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::http_client;
use common::webhook::{answer_ok, check_signature, http_base, read_delivery, Delivery, SECRET};
use common::{have_sipp, root, Gateway};

const ADMIN_TOKEN: &str = "dead-letter-admin-token-0123456789";
const TIMEOUT_MS: u64 = 200;
const MAX_ATTEMPTS: usize = 3;

type Log = Arc<Mutex<Vec<Delivery>>>;

/// A receiver that answers `escalated` only after three times the gateway's deadline while
/// `slow` is set, everything else at once. One thread per connection, so a slow answer holds
/// back nothing else.
fn slow_receiver(slow: Arc<AtomicBool>) -> (u16, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (sink, slow) = (Arc::clone(&sink), Arc::clone(&slow));
            std::thread::spawn(move || {
                let Some((delivery, stream)) = read_delivery(stream) else {
                    return;
                };
                let escalated = delivery.header("X-Voicebot-Event") == Some("escalated");
                if let Ok(mut g) = sink.lock() {
                    g.push(delivery);
                }
                if escalated && slow.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(TIMEOUT_MS * 3));
                }
                answer_ok(stream);
            });
        }
    });
    (port, log)
}

fn kinds(log: &Log) -> Vec<String> {
    log.lock()
        .map(|g| {
            g.iter()
                .filter_map(|d| d.header("X-Voicebot-Event").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `limit` for `done` to hold of the log.
fn wait_for(log: &Log, what: &str, limit: Duration, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = kinds(log);
        if done(&seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(dir: &Path, hook_port: u16, agent_port: u16) -> String {
    let path = dir.join("gateway.toml");
    let text = format!(
        "[handover.transfer]\nring_timeout_s = 3\n\
         [handover.transfer.teams]\ndefault = [\"sip:1002@127.0.0.1:{agent_port}\"]\n\
         [handover.webhook]\nurl = \"http://127.0.0.1:{hook_port}/hooks/voicebot\"\n\
         secret = \"{SECRET}\"\ntimeout_ms = {TIMEOUT_MS}\ninitial_backoff_ms = 50\n\
         max_backoff_ms = 100\nmax_attempts = {MAX_ATTEMPTS}\ndatabase = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-token\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\nfeedback_database = \"{}\"\n\
         history_database = \"{}\"\n",
        dir.join("outbox.sqlite3").display(),
        dir.join("feedback.sqlite3").display(),
        dir.join("history.sqlite3").display()
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn sipp(dir: &Path, args: &[String]) -> Command {
    let mut command = Command::new("timeout");
    command.arg("150").arg("sipp").current_dir(dir).args(args);
    command
}

fn busy_agent(dir: &Path, port: u16) -> Child {
    sipp(
        dir,
        &[
            "-sf".into(),
            root().join("tests/sipp/uas_busy.xml").display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            "1".into(),
            "-nostdin".into(),
            "-timeout".into(),
            "100".into(),
            "-timeout_error".into(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start sipp agent")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn a_slow_receiver_gets_bounded_attempts_and_the_event_is_dead_in_the_admin_api() {
    if !have_sipp() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(AtomicBool::new(true));
    let (hook_port, log) = slow_receiver(Arc::clone(&slow));
    let agent_port = free_port();
    let cfg = config(dir.path(), hook_port, agent_port);
    let gw = Gateway::start("46100-46149", &["--config", &cfg]);
    let base = http_base(&gw);
    let agents = tempfile::tempdir().unwrap();
    let agent = busy_agent(agents.path(), agent_port);
    std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).unwrap();
    let out = sipp(
        dir.path(),
        &[
            format!("127.0.0.1:{}", gw.port),
            "-sf".into(),
            root()
                .join("tests/sipp/uac_dtmf_info.xml")
                .display()
                .to_string(),
            "-s".into(),
            "support".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            "0".into(),
            "-mp".into(),
            free_port().to_string(),
            "-m".into(),
            "1".into(),
            "-nostdin".into(),
            "-timeout".into(),
            "140".into(),
            "-timeout_error".into(),
        ],
    )
    .output()
    .expect("run sipp caller");
    assert_eq!(
        out.status.code(),
        Some(0),
        "caller:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_out = agent.wait_with_output().expect("sipp agent");
    assert_eq!(agent_out.status.code(), Some(0), "busy agent");

    // The call's later events arrive although `escalated` never got through in time.
    wait_for(&log, "call_ended", Duration::from_secs(60), |k| {
        k.iter().any(|k| k == "call_ended")
    });
    let seen = kinds(&log);
    let escalated = seen.iter().filter(|k| *k == "escalated").count();
    assert_eq!(escalated, MAX_ATTEMPTS, "bounded attempts: {seen:?}");
    let later: Vec<&str> = seen
        .iter()
        .filter(|k| *k != "escalated")
        .map(String::as_str)
        .collect();
    assert_eq!(later, ["callback_requested", "call_ended"], "{seen:?}");
    // Every attempt came before the later events (per-call order, the dead one skipped).
    let last_escalated = seen.iter().rposition(|k| k == "escalated");
    let first_later = seen.iter().position(|k| k != "escalated");
    assert!(last_escalated < first_later, "{seen:?}");
    let deliveries = log.lock().unwrap().clone();
    for d in &deliveries {
        check_signature(d);
    }
    let key = deliveries[0]
        .header("Idempotency-Key")
        .expect("key")
        .to_string();
    assert!(deliveries
        .iter()
        .filter(|d| d.header("X-Voicebot-Event") == Some("escalated"))
        .all(|d| d.header("Idempotency-Key") == Some(key.as_str())));

    // The admin API shows the dead letter; /metrics counts it.
    let http = http_client(Duration::from_secs(10));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let get = |path: &str| -> (u16, String) {
        let mut r = http
            .get(format!("{base}{path}"))
            .header("Authorization", &auth)
            .call()
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap_or_default())
    };
    let (status, text) = get("/api/webhook/dead");
    assert_eq!(status, 200, "{text}");
    let dead: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(dead["count"], 1, "{dead}");
    let event = &dead["events"][0];
    assert_eq!(event["event_id"], key.as_str(), "{dead}");
    assert_eq!(event["kind"], "escalated");
    assert_eq!(event["attempts"], MAX_ATTEMPTS);
    assert_eq!(
        event["last_error"],
        format!("no answer within {TIMEOUT_MS} ms"),
        "{dead}"
    );
    let (_, metrics) = get("/metrics");
    assert!(
        metrics.contains("voicebot_webhook_dead_events 1"),
        "{metrics}"
    );
    let (status, _) = {
        let r = http
            .get(format!("{base}/api/webhook/dead"))
            .call()
            .expect("GET");
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 401, "the dead letters need the admin token");

    // The receiver is fixed; the admin requeues the event: delivered once more, same key.
    slow.store(false, Ordering::SeqCst);
    let mut r = http
        .post(format!("{base}/api/webhook/dead/{key}/retry"))
        .header("Authorization", &auth)
        .send_empty()
        .expect("POST");
    assert_eq!(
        r.status().as_u16(),
        202,
        "{}",
        r.body_mut().read_to_string().unwrap_or_default()
    );
    wait_for(&log, "the requeued event", Duration::from_secs(10), |k| {
        k.iter().filter(|k| *k == "escalated").count() == MAX_ATTEMPTS + 1
    });
    let last = log.lock().unwrap().last().cloned().expect("a delivery");
    assert_eq!(last.header("Idempotency-Key"), Some(key.as_str()));
    check_signature(&last);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get("/api/webhook/dead");
        if text.contains("\"count\":0") {
            break;
        }
        assert!(Instant::now() < deadline, "still dead: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, metrics) = get("/metrics");
    assert!(
        metrics.contains("voicebot_webhook_dead_events 0"),
        "{metrics}"
    );
}

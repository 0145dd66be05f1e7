//! A cluster on one shared PostgreSQL store, end to end: a throwaway PostgreSQL server (started
//! by the test, as the `postgres` user when run as root), Kamailio with the shipped dispatcher
//! configuration, and three `voicebot serve` gateways with `[storage] url` set, all on loopback.
//!
//! - A gateway killed with SIGKILL while its webhook events are still undelivered (the
//!   receiver refuses them): a survivor delivers every one of them, in order per call, with
//!   the idempotency keys the dead gateway gave them.
//! - Any gateway's admin API lists the calls of every gateway (the dead one's included), and
//!   any gateway serves the hand-over context of a call it never saw.
//! - A flow edit saved through gateway 1 changes what the bot says on a call placed on
//!   gateway 3.
//!
//! PostgreSQL, Kamailio or SIPp missing skips the test, or fails it when VOICEBOT_REQUIRE_PEERS
//! is set.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::http_client;
use common::cluster::{ClusterGateway, Kamailio, SippLoad};
use common::webhook::{read_delivery, Delivery, SECRET};
use common::{have_sipp, root};
use voicebot_gateway::storage::throwaway::ThrowawayPostgres;

const ADMIN_TOKEN: &str = "cluster-admin-token-0123456789";
const AGENT_TOKEN: &str = "cluster-agent-token";

type Log = Arc<Mutex<Vec<Delivery>>>;

/// A webhook receiver that answers 503 (and keeps nothing) while `refuse` is set, and 200
/// (keeping the delivery) otherwise.
fn receiver(refuse: Arc<AtomicBool>) -> (u16, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (sink, refuse) = (Arc::clone(&sink), Arc::clone(&refuse));
            std::thread::spawn(move || {
                let Some((delivery, mut stream)) = read_delivery(stream) else {
                    return;
                };
                if refuse.load(Ordering::SeqCst) {
                    let _ = stream.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                if let Ok(mut g) = sink.lock() {
                    g.push(delivery);
                }
                common::webhook::answer_ok(stream);
            });
        }
    });
    (port, log)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Gateway `i`'s home under `dir`: its own flows directory (a copy of the shipped one, whose
/// shared intents and prompts are links to the repository's) and its configuration.
fn gateway_config(dir: &Path, i: usize, db: &str, hook: u16, agent: u16) -> PathBuf {
    let home = dir.join(format!("gw{i}"));
    let flows = home.join("sip-config/flows");
    std::fs::create_dir_all(&flows).expect("flows dir");
    std::fs::copy(
        root().join("sip-config/flows/support.toml"),
        flows.join("support.toml"),
    )
    .expect("copy flow");
    std::os::unix::fs::symlink(
        root().join("sip-config/intents.toml"),
        home.join("sip-config/intents.toml"),
    )
    .expect("link intents");
    std::os::unix::fs::symlink(root().join("prompts"), home.join("prompts")).expect("link prompts");
    let path = home.join("gateway.toml");
    let text = format!(
        "[storage]\nurl = \"{db}\"\nnode = \"gw{i}\"\npool_size = 4\n\
         [flows]\ndir = \"{flows}\"\nshared = [\"{intents}\", \"{prompts}\"]\n\
         [handover.transfer]\nring_timeout_s = 3\n\
         [handover.transfer.teams]\ndefault = [\"sip:1002@127.0.0.1:{agent}\"]\n\
         [handover.webhook]\nurl = \"http://127.0.0.1:{hook}/hooks/voicebot\"\n\
         secret = \"{SECRET}\"\ntimeout_ms = 500\ninitial_backoff_ms = 100\n\
         max_backoff_ms = 500\nmax_attempts = 1000\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"{AGENT_TOKEN}\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\n",
        flows = flows.display(),
        intents = root().join("sip-config/intents.toml").display(),
        prompts = root().join("prompts").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn http_base(gw: &ClusterGateway) -> String {
    let addr = gw
        .ready
        .split("http=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no http= in {}", gw.ready));
    format!("http://{addr}")
}

fn get_json(url: &str, token: &str) -> serde_json::Value {
    let agent = http_client(Duration::from_secs(10));
    let mut answer = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = answer.body_mut().read_to_string().expect("body");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// A SIPp agent that answers `calls` INVITEs with 486 Busy.
fn busy_agent(dir: &Path, port: u16, calls: u32) -> Child {
    Command::new("timeout")
        .arg("200")
        .arg("sipp")
        .current_dir(dir)
        .arg("-sf")
        .arg(root().join("tests/sipp/uas_busy.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &calls.to_string(), "-nostdin", "-timeout", "180"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp agent")
}

/// One caller straight to `port` who presses 0 (an escalation: escalated, callback requested
/// because the agent is busy, call ended).
fn caller_pressing_0(dir: &Path, port: u16) {
    let out = Command::new("timeout")
        .arg("150")
        .arg("sipp")
        .current_dir(dir)
        .arg(format!("127.0.0.1:{port}"))
        .arg("-sf")
        .arg(root().join("tests/sipp/uac_dtmf_info.xml"))
        .args(["-s", "support", "-i", "127.0.0.1", "-p", "0"])
        .args(["-mp", &free_port().to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "140", "-timeout_error"])
        .output()
        .expect("run sipp caller");
    assert_eq!(
        out.status.code(),
        Some(0),
        "caller:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The outbox rows in the shared database: (event_id, call_id, kind, delivered).
fn outbox_rows(db: &str) -> Vec<(String, String, String, bool)> {
    let mut client = postgres::Client::connect(db, postgres::NoTls).expect("connect");
    client
        .query(
            "SELECT event_id, call_id, kind, delivered_ms IS NOT NULL FROM webhook_outbox ORDER BY id",
            &[],
        )
        .expect("outbox rows")
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_cluster_on_postgres_loses_no_webhook_event_shares_history_and_follows_flow_edits() {
    let kamailio = common::kamailio::have_kamailio();
    if !(have_sipp() && kamailio) {
        return;
    }
    let pg = match ThrowawayPostgres::start() {
        Ok(pg) => pg,
        Err(e) => {
            assert!(
                std::env::var("VOICEBOT_REQUIRE_PEERS").as_deref() != Ok("1"),
                "PostgreSQL is required (VOICEBOT_REQUIRE_PEERS=1): {e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
    };
    let db = pg.create_database("cluster").expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    // What the SIPp callers stream: a second of quiet mu-law, looped.
    std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).expect("caller.raw");
    let refuse = Arc::new(AtomicBool::new(true));
    let (hook, log) = receiver(Arc::clone(&refuse));
    let agent_port = free_port();
    let mut gateways: Vec<ClusterGateway> = (0..3)
        .map(|i| {
            let config = gateway_config(dir.path(), i, &db, hook, agent_port);
            let lo = 47000 + 100 * i as u16;
            ClusterGateway::start(
                &format!("{lo}-{}", lo + 99),
                &dir.path().join(format!("records{i}")),
                &["--config", config.to_str().expect("utf-8 path")],
            )
        })
        .collect();
    let ports: Vec<u16> = gateways.iter().map(|g| g.port).collect();
    let _kamailio = Kamailio::start(&ports);
    let bases: Vec<String> = gateways.iter().map(http_base).collect();

    // Two escalated calls on gateway 1 while the webhook receiver refuses every event.
    let agents = tempfile::tempdir().expect("tempdir");
    let agent = busy_agent(agents.path(), agent_port, 2);
    for _ in 0..2 {
        caller_pressing_0(dir.path(), gateways[0].port);
    }
    let mut agent = agent;
    let _ = agent.wait();
    wait_until(
        "both calls' call_ended events in the shared outbox",
        Duration::from_secs(30),
        || {
            outbox_rows(&db)
                .iter()
                .filter(|r| r.2 == "call_ended")
                .count()
                == 2
        },
    );
    let rows = outbox_rows(&db);
    assert!(rows.iter().all(|r| !r.3), "nothing delivered yet: {rows:?}");
    let calls_of_gw0: HashSet<String> = rows.iter().map(|r| r.1.clone()).collect();
    assert_eq!(calls_of_gw0.len(), 2, "{rows:?}");

    // Gateway 1 dies with its events undelivered; then the receiver takes events again.
    gateways[0].kill();
    refuse.store(false, Ordering::SeqCst);
    let killed = Instant::now();
    wait_until(
        "every event delivered by a survivor",
        Duration::from_secs(60),
        || outbox_rows(&db).iter().all(|r| r.3),
    );
    eprintln!(
        "{} events of the killed gateway delivered by the survivors {:.1} s after the kill",
        rows.len(),
        killed.elapsed().as_secs_f64()
    );
    let got = log.lock().expect("log").clone();
    let keys: HashSet<&str> = got
        .iter()
        .filter_map(|d| d.header("Idempotency-Key"))
        .collect();
    let expected: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, expected, "every event, with the key it was given");
    // In order per call: the first delivery of each event follows the order they were written.
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for d in &got {
        let key = d.header("Idempotency-Key").unwrap_or("").to_string();
        if seen.insert(key.clone()) {
            let body = d.json();
            first
                .entry(body["call_id"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(key);
        }
        common::webhook::check_signature(d);
    }
    for call in &calls_of_gw0 {
        let written: Vec<String> = rows
            .iter()
            .filter(|r| &r.1 == call)
            .map(|r| r.0.clone())
            .collect();
        assert_eq!(first.get(call), Some(&written), "order of call {call}");
    }
    let mut client = postgres::Client::connect(&db, postgres::NoTls).expect("connect");
    let holders: Vec<String> = client
        .query("SELECT DISTINCT claimed_by FROM webhook_outbox", &[])
        .expect("claims")
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect();
    assert!(
        holders.iter().all(|n| n != "gw0"),
        "delivered by the survivors: {holders:?}"
    );

    // The survivors list the dead gateway's calls and serve their hand-over contexts.
    let listed = get_json(&format!("{}/api/calls?node=gw0", bases[2]), ADMIN_TOKEN);
    let summaries = listed["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("calls: {listed}"));
    assert_eq!(
        summaries.len(),
        2,
        "gateway 3 lists gateway 1's calls: {listed}"
    );
    let ids: HashSet<String> = summaries
        .iter()
        .flat_map(|c| [c["call_id"].as_str(), c["id"].as_str()])
        .flatten()
        .map(String::from)
        .collect();
    assert!(calls_of_gw0.is_subset(&ids), "{listed}");
    for call in &calls_of_gw0 {
        let ctx = get_json(
            &format!("{}/calls/{call}/context?token={AGENT_TOKEN}", bases[1]),
            AGENT_TOKEN,
        );
        assert_eq!(ctx["call_id"], call.as_str(), "{ctx}");
        assert!(ctx["transcript"].is_array(), "{ctx}");
    }

    // A flow edit saved through gateway 2 is what the bot says on a call placed on gateway 3.
    let greeting = "Welcome to the cluster line, served from the shared store.";
    let prompts = std::fs::read_to_string(root().join("prompts/en.toml")).expect("prompts");
    let intents = std::fs::read_to_string(root().join("sip-config/intents.toml")).expect("intents");
    let flow = std::fs::read_to_string(root().join("sip-config/flows/support.toml"))
        .expect("flow")
        .replace("\"../intents.toml\"", "\"support/intents.toml\"")
        .replace("\"../../prompts/en.toml\"", "\"support/prompts.toml\"");
    let old = prompts
        .lines()
        .find(|l| l.starts_with("greeting = "))
        .expect("a greeting line")
        .to_string();
    let prompts = prompts.replacen(&old, &format!("greeting = \"{greeting}\""), 1);
    let body = serde_json::json!({"flow": flow, "intents": intents, "prompts": prompts});
    let mut answer = http_client(Duration::from_secs(30))
        .put(&format!("{}/api/flows/support", bases[1]))
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("PUT the flow");
    let put: serde_json::Value =
        serde_json::from_str(&answer.body_mut().read_to_string().expect("body")).expect("json");
    let revision = put["revision"].clone();
    assert!(revision.is_u64(), "{put}");
    let edited = Instant::now();
    wait_until(
        "the revision in force on gateway 3",
        Duration::from_secs(10),
        || get_json(&format!("{}/api/flows", bases[2]), ADMIN_TOKEN)["revision"] == revision,
    );
    eprintln!(
        "flow edit through gateway 2 in force on gateway 3 after {} ms",
        edited.elapsed().as_millis()
    );
    let before: HashSet<String> = gateways[2]
        .records()
        .iter()
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect();
    let call = SippLoad::start(
        dir.path(),
        "uac_speech.xml",
        gateways[2].port,
        free_port(),
        1,
        1,
        1,
        2000,
        Duration::from_secs(60),
    );
    let (result, screen) = call.finish();
    assert_eq!(result.code, Some(0), "{screen}");
    wait_until("the call's record", Duration::from_secs(30), || {
        gateways[2].records().len() > before.len()
    });
    let records = gateways[2].records();
    let newest = records
        .iter()
        .find(|r| r["id"].as_str().is_some_and(|id| !before.contains(id)))
        .expect("the new call's record");
    assert_eq!(newest["greeting"], greeting, "{newest}");
    assert_eq!(newest["node"], "gw2", "{newest}");
    drop(pg);
}

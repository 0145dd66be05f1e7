//! Trunks against a real registrar: Kamailio (Debian `kamailio`, run as a separate process on
//! loopback with `tests/kamailio/registrar.cfg.in`) authenticates REGISTER with digest and
//! routes INVITEs to registered contacts. The gateway must register, take a call that
//! Kamailio routes to its registered contact, match it to the trunk and pick the flow from the
//! number in P-Called-Party-ID; with a wrong password it must report the failure (admin API,
//! metrics) and retry only as its back-off allows, never in a loop.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::admin::{http_client, HttpGateway};
use common::{free_udp_port, have_sipp, peer_available, root};

fn have_kamailio() -> bool {
    Command::new("kamailio")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Kamailio on 127.0.0.1:`port`, killed on drop; its log lines are collected.
struct Kamailio {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    /// Starts Kamailio with the test configuration (account `user`/`password`) and waits
    /// until it answers OPTIONS.
    fn start(user: &str, password: &str) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_udp_port();
        let template = std::fs::read_to_string(root().join("tests/kamailio/registrar.cfg.in"))
            .expect("kamailio template");
        let cfg = template
            .replace("@@PORT@@", &port.to_string())
            .replace("@@DOMAIN@@", "trunk.test")
            .replace("@@USER@@", user)
            .replace("@@PASSWORD@@", password);
        let path = dir.path().join("kamailio.cfg");
        std::fs::write(&path, cfg).expect("write cfg");
        let mut child = Command::new("kamailio")
            .arg("-f")
            .arg(&path)
            .args(["-DD", "-E", "-Y"])
            .arg(dir.path())
            // Its own process group: dropping it stops its workers too.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kamailio");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        let k = Kamailio {
            child,
            port,
            log,
            _dir: dir,
        };
        k.wait_ready();
        k
    }

    fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let deadline = Instant::now() + Duration::from_secs(15);
        let local = sock.local_addr().expect("addr");
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let options = format!(
                "OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKready{n}\r\n\
                 From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{p}>\r\nCall-ID: ready-{n}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                p = self.port,
                n = rand_suffix(),
            );
            let _ = sock.send_to(options.as_bytes(), ("127.0.0.1", self.port));
            if let Ok(n) = sock.recv(&mut buf) {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    return;
                }
            }
        }
        panic!(
            "kamailio did not answer OPTIONS on {}: {:?}",
            self.port,
            self.lines("")
        );
    }

    fn lines(&self, containing: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(containing))
            .cloned()
            .collect()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        common::stop_process_group(&mut self.child);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A flow file: the shipped support flow renamed, with its intents and prompts by absolute
/// path, answering `numbers`.
fn flow(name: &str, numbers: &[&str]) -> String {
    let shipped =
        std::fs::read_to_string(root().join("sip-config/flows/support.toml")).expect("flow");
    let mut text = String::new();
    for line in shipped.lines() {
        if line.starts_with("name =") {
            text.push_str(&format!("name = \"{name}\"\n"));
        } else if line.starts_with("numbers =") {
            text.push_str(&format!("numbers = {numbers:?}\n"));
        } else if line.starts_with("intents =") {
            let p = root().join("sip-config/intents.toml");
            text.push_str(&format!("intents = \"{}\"\n", p.display()));
        } else if line.starts_with("prompts =") {
            let p = root().join("prompts/en.toml");
            text.push_str(&format!("prompts = \"{}\"\n", p.display()));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The gateway's configuration: two flows (support by default, sales for 4930222) and one
/// trunk registering with the Kamailio on `port`.
fn write_config(dir: &Path, port: u16, password: &str) -> PathBuf {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("mkdir");
    std::fs::write(flows.join("support.toml"), flow("support", &["support"])).expect("flow");
    std::fs::write(flows.join("sales.toml"), flow("sales", &["4930222"])).expect("flow");
    let config = dir.join("gateway.toml");
    let text = format!(
        "[flows]\ndir = \"{flows}\"\ndefault = \"support\"\nshared = [\"{intents}\", \"{prompts}\"]\n\
         [intent]\nengine = \"rules\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-e2e-token\"\n\
         feedback_database = \"{feedback}\"\nadmin_token_env = \"\"\nadmin_token_file = \"{token}\"\n\
         history_database = \"{history}\"\n\
         [[sip.trunks]]\nname = \"kam\"\nregistrar = \"sip:trunk.test\"\n\
         outbound_proxy = \"127.0.0.1:{port}\"\nuser = \"bot\"\npassword = \"{password}\"\n\
         expires_s = 60\nretry_min_s = 1\nretry_max_s = 2\n\
         called_number = [\"p-called-party-id\", \"to\"]\n",
        flows = flows.display(),
        intents = root().join("sip-config/intents.toml").display(),
        prompts = root().join("prompts").display(),
        feedback = dir.join("feedback.sqlite3").display(),
        token = dir.join("admin-token").display(),
        history = dir.join("history.sqlite3").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

struct Api {
    base: String,
    token: String,
    http: ureq::Agent,
}

impl Api {
    fn new(gw: &HttpGateway, dir: &Path) -> Api {
        let token = std::fs::read_to_string(dir.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_string();
        Api {
            base: gw.base.clone(),
            token,
            http: http_client(Duration::from_secs(20)),
        }
    }

    fn get(&self, path: &str) -> String {
        let mut r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .expect("HTTP");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        r.body_mut().read_to_string().expect("body")
    }

    fn trunk(&self) -> Value {
        let v: Value = serde_json::from_str(&self.get("/api/trunks")).expect("json");
        v["trunks"][0].clone()
    }

    /// Waits (at most `wait`) for the trunk to reach `state`.
    fn wait_state(&self, state: &str, wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let t = self.trunk();
            if t["state"] == state || Instant::now() > deadline {
                return t;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn peers() -> bool {
    peer_available("kamailio", have_kamailio(), "apt-get install kamailio")
        && peer_available("sipp", have_sipp(), "apt-get install sip-tester")
}

#[test]
fn registers_and_takes_a_call_routed_to_its_contact() {
    if !peers() {
        return;
    }
    let kam = Kamailio::start("bot", "s3cret-pass");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), kam.port, "s3cret-pass");
    let gw = HttpGateway::start(&config, "46800-46899", 3, Duration::from_secs(120));
    let api = Api::new(&gw, dir.path());
    let t = api.wait_state("registered", Duration::from_secs(20));
    assert_eq!(
        t["state"],
        "registered",
        "{t}; kamailio: {:?}",
        kam.lines("KAMTEST")
    );
    let contact = format!("sip:bot@127.0.0.1:{}", gw.sip_port);
    assert_eq!(t["contact"], contact.as_str());
    assert!(
        t["expires_in_s"]
            .as_u64()
            .is_some_and(|s| s > 30 && s <= 60),
        "{t}"
    );
    // Kamailio challenged, then saved our contact.
    assert!(!kam.lines("KAMTEST challenge for bot").is_empty());
    let saved = kam.lines("KAMTEST registered bot");
    assert!(saved.iter().any(|l| l.contains(&contact)), "{saved:?}");
    let metrics = api.get("/metrics");
    assert!(
        metrics.contains("voicebot_sip_trunk_registered{trunk=\"kam\"} 1"),
        "{metrics}"
    );
    let ready: Value = serde_json::from_str(&api.get("/readyz")).expect("json");
    assert_eq!(ready["trunks"][0]["state"], "registered");

    // A caller dials 4930222 on the trunk: Kamailio looks up "bot" and sends the INVITE to
    // our registered contact.
    let inf = dir.path().join("numbers.csv");
    std::fs::write(&inf, "SEQUENTIAL\n4930222;\n").expect("inf");
    let out = Command::new("timeout")
        .arg("60")
        .arg("sipp")
        .arg(format!("127.0.0.1:{}", kam.port))
        .arg("-sf")
        .arg(root().join("tests/sipp/uac_trunk.xml"))
        .arg("-inf")
        .arg(&inf)
        .args([
            "-s",
            "bot",
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-nostdin",
        ])
        .args(["-mp", "46790", "-timeout", "30", "-timeout_error"])
        .current_dir(dir.path())
        .output()
        .expect("run sipp");
    let screen =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp failed:\n{screen}\nkamailio: {:?}",
        kam.lines("KAMTEST")
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let record = loop {
        let v: Value = serde_json::from_str(&api.get("/api/calls")).expect("json");
        let found = v["calls"].as_array().and_then(|c| c.first()).cloned();
        if let Some(r) = found {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no call finished; kamailio: {:?}",
            kam.lines("KAMTEST")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let routed = kam.lines("KAMTEST INVITE for 4930222 routed to");
    assert!(routed.iter().any(|l| l.contains(&contact)), "{routed:?}");
    let id = record["id"].as_str().expect("call id").to_string();
    let text = api.get(&format!("/api/calls/{id}"));
    let text: String = text.split_whitespace().collect();
    assert!(text.contains("\"trunk\":\"kam\""), "{text}");
    assert!(text.contains("\"called\":\"4930222\""), "{text}");
    assert!(text.contains("\"flow\":\"sales\""), "{text}");
}

#[test]
fn a_wrong_password_is_reported_and_not_retried_in_a_loop() {
    if !peers() {
        return;
    }
    let kam = Kamailio::start("bot", "right-password");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), kam.port, "wrong-password");
    let gw = HttpGateway::start(&config, "46900-46999", 3, Duration::from_secs(120));
    let api = Api::new(&gw, dir.path());
    let t = api.wait_state("failed", Duration::from_secs(20));
    assert_eq!(t["state"], "failed", "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{t}"
    );
    assert!(t["next_retry_in_s"].as_u64().is_some(), "{t}");
    let started = Instant::now();
    let before = kam.lines("KAMTEST REGISTER from").len();
    // Watch the retries for 6 s: the back-off (1 s, then 2 s) allows at most 5 attempts of
    // two REGISTERs each (the first, and its one answer to the challenge).
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let registers = kam.lines("KAMTEST REGISTER from").len() - before;
    assert!(
        (2..=10).contains(&registers),
        "{registers} REGISTERs in 6 s"
    );
    let t = api.trunk();
    assert!(t["failures"].as_u64().is_some_and(|f| f >= 2), "{t}");
    let metrics = api.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("voicebot_sip_register_failures_total{")
                && l.contains("trunk=\"kam\"")
                && l.contains("reason=\"auth\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("voicebot_sip_trunk_registered{trunk=\"kam\"} 0"),
        "{metrics}"
    );
    drop(gw);
}

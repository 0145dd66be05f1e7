//! Trunks against a real registrar: Kamailio (Debian `kamailio`, run as a separate process on
//! loopback with `tests/kamailio/registrar.cfg.in`) authenticates REGISTER with digest and
//! routes INVITEs to registered contacts. The gateway must register, take a call that
//! Kamailio routes to its registered contact, match it to the trunk and pick the flow from the
//! number in P-Called-Party-ID; with a wrong password it must report the failure (admin API,
//! metrics) and retry only as its back-off allows, never in a loop.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::admin::{http_client, HttpGateway};
use common::kamailio::have_kamailio;
use common::kamailio::{Kamailio, Setup};
use common::pki::{make_ca, make_cert, write};
use common::{have_sipp, peer_available, root};

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
    let trunk = format!("outbound_proxy = \"127.0.0.1:{port}\"\n");
    write_config_with(dir, password, &trunk, "")
}

/// As [`write_config`], the trunk's registrar reached as `trunk` (TOML lines) says, and
/// `extra` TOML after it.
fn write_config_with(dir: &Path, password: &str, trunk: &str, extra: &str) -> PathBuf {
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
         {trunk}user = \"bot\"\npassword = \"{password}\"\n\
         expires_s = 60\nretry_min_s = 1\nretry_max_s = 2\n\
         called_number = [\"p-called-party-id\", \"to\"]\n{extra}",
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
    have_kamailio() && peer_available("sipp", have_sipp(), "apt-get install sip-tester")
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
    let text = call_through_to_contact(&kam, &api, dir.path(), &contact);
    assert!(text.contains("\"trunk\":\"kam\""), "{text}");
    assert!(text.contains("\"called\":\"4930222\""), "{text}");
    assert!(text.contains("\"flow\":\"sales\""), "{text}");
}

/// A caller dials 4930222 at Kamailio, which must route the call to our `contact`; the
/// gateway's record of it, without whitespace (for `contains` checks).
fn call_through_to_contact(kam: &Kamailio, api: &Api, dir: &Path, contact: &str) -> String {
    let record = call_through(kam, api, dir, "4930222");
    let routed = kam.lines("KAMTEST INVITE for 4930222 routed to");
    assert!(routed.iter().any(|l| l.contains(contact)), "{routed:?}");
    let id = record["id"].as_str().expect("call id").to_string();
    let text = api.get(&format!("/api/calls/{id}"));
    text.split_whitespace().collect()
}

/// A SIPp caller dials `number` at Kamailio (over UDP), which sends the call to the contact
/// the gateway registered; returns the gateway's record of the finished call.
fn call_through(kam: &Kamailio, api: &Api, dir: &Path, number: &str) -> Value {
    let inf = dir.join("numbers.csv");
    std::fs::write(&inf, format!("SEQUENTIAL\n{number};\n")).expect("inf");
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
        .current_dir(dir)
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
    loop {
        let v: Value = serde_json::from_str(&api.get("/api/calls")).expect("json");
        if let Some(r) = v["calls"].as_array().and_then(|c| c.first()) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no call finished; kamailio: {:?}",
            kam.lines("KAMTEST")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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

/// Whether Kamailio's TLS module (Debian `kamailio-tls-modules`) is installed.
fn tls_peer() -> bool {
    let ok = Path::new("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so").exists();
    peer_available(
        "kamailio tls module",
        ok,
        "apt-get install kamailio-tls-modules",
    )
}

/// The gateway's TLS port from its ready line (`tls=127.0.0.1:PORT`).
fn gateway_tls_port(gw: &HttpGateway) -> u16 {
    gw.banner[0]
        .split("tls=127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no tls= in {:?}", gw.banner[0]))
}

/// A Kamailio on TLS and the gateway's configuration registering there over TLS, trusting the
/// test CA. `impostor`: Kamailio's certificate (for 127.0.0.1 still) is from another CA.
fn tls_trunk(dir: &Path, impostor: bool) -> (Kamailio, PathBuf) {
    let (ca_pem, ca) = make_ca("trunk test CA");
    let (_, other) = make_ca("someone else's CA");
    let (kam_cert, kam_key) = make_cert(
        &["127.0.0.1"],
        "carrier",
        if impostor { &other } else { &ca },
    );
    let (gw_cert, gw_key) = make_cert(&["127.0.0.1"], "gateway", &ca);
    let ca_file = write(dir, "ca.pem", &ca_pem);
    let kam_cert = write(dir, "kam.pem", &kam_cert);
    let kam_key = write(dir, "kam.key", &kam_key);
    let gw_cert = write(dir, "gw.pem", &gw_cert);
    let gw_key = write(dir, "gw.key", &gw_key);
    let kam = Kamailio::start_with(
        "bot",
        "s3cret-pass",
        &Setup {
            tls: Some((&kam_cert, &kam_key)),
            ..Setup::default()
        },
    );
    let trunk = format!(
        "outbound_proxy = \"127.0.0.1:{}\"\ntransport = \"tls\"\n",
        kam.tls_port
    );
    let tls = format!(
        "[sip.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
        gw_cert.display(),
        gw_key.display(),
        ca_file.display()
    );
    let config = write_config_with(dir, "s3cret-pass", &trunk, &tls);
    (kam, config)
}

/// A carrier that takes REGISTER over TLS: the gateway registers over TLS (verifying the
/// carrier's certificate against the test CA), with a TLS contact on its own TLS listener,
/// and a call the carrier routes there arrives over TLS and picks its flow.
#[test]
fn registers_over_tls_and_takes_a_call_on_its_tls_contact() {
    if !peers() || !tls_peer() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (kam, config) = tls_trunk(dir.path(), false);
    let gw = HttpGateway::start(&config, "47000-47099", 3, Duration::from_secs(120));
    let api = Api::new(&gw, dir.path());
    let t = api.wait_state("registered", Duration::from_secs(20));
    assert_eq!(
        t["state"],
        "registered",
        "{t}; kamailio: {:?}",
        kam.lines("KAMTEST")
    );
    let contact = format!("sip:bot@127.0.0.1:{};transport=tls", gateway_tls_port(&gw));
    assert_eq!(t["contact"], contact.as_str(), "{t}");
    let target = format!("tls:127.0.0.1:{}", kam.tls_port);
    assert_eq!(t["target"], target.as_str(), "{t}");
    // Both REGISTERs (the challenged one and its answer) came over TLS.
    let registers = kam.lines("KAMTEST REGISTER from");
    assert!(registers.len() >= 2, "{registers:?}");
    assert!(
        registers.iter().all(|l| l.contains("proto=tls")),
        "{registers:?}"
    );
    let saved = kam.lines("KAMTEST registered bot");
    assert!(saved.iter().any(|l| l.contains(&contact)), "{saved:?}");

    let text = call_through_to_contact(&kam, &api, dir.path(), &contact);
    assert!(text.contains("\"trunk\":\"kam\""), "{text}");
    assert!(text.contains("\"flow\":\"sales\""), "{text}");
}

/// A registrar whose certificate our CA set does not vouch for: the handshake fails, the
/// attempt fails at once as a transport failure (not after the 32 s transaction timeout), no
/// REGISTER reaches it, and the gateway keeps retrying on its back-off only.
#[test]
fn an_untrusted_registrar_certificate_fails_the_registration_at_once() {
    if !peers() || !tls_peer() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (kam, config) = tls_trunk(dir.path(), true);
    let started = Instant::now();
    let gw = HttpGateway::start(&config, "47100-47199", 3, Duration::from_secs(120));
    let api = Api::new(&gw, dir.path());
    let t = api.wait_state("failed", Duration::from_secs(15));
    assert_eq!(t["state"], "failed", "{t}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed after {:?}: the transaction timeout, not the handshake",
        started.elapsed()
    );
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS handshake failed")),
        "{t}"
    );
    let metrics = api.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("voicebot_sip_register_failures_total{")
                && l.contains("reason=\"transport\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("voicebot_tls_handshake_failures_total{")
                && l.contains("outbound")),
        "{metrics}"
    );
    assert!(
        kam.lines("KAMTEST REGISTER").is_empty(),
        "{:?}",
        kam.lines("KAMTEST")
    );
}

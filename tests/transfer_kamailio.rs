//! A transfer to an agent behind a real PBX: Kamailio (Debian `kamailio`, run as a separate
//! process on loopback with `tests/kamailio/registrar.cfg.in` and `WITH_INVITE_AUTH`) is the
//! registrar and proxy, with digest auth, and a baresip (Debian `baresip`) agent registers to
//! it and answers automatically.
//!
//! * The gateway registers its trunk account with Kamailio; a SIPp caller calls it through
//!   Kamailio and presses 0; the gateway calls the agent's extension at Kamailio, which
//!   challenges the INVITE with 407; the team has no credentials of its own, so the gateway
//!   answers with the account of the trunk the extension is behind (the one it registered
//!   with Kamailio), Kamailio
//!   accepts them and relays the INVITE to baresip's registered contact, baresip answers, and
//!   the call is bridged with audio both ways; when the agent hangs up, the caller's call ends.
//! * With a wrong team password Kamailio challenges the answer again: the gateway sends
//!   exactly two INVITEs (no loop), the attempt is refused with 407 and the caller hears the
//!   callback path; the agent's phone never rings.
//!
//! The two run one after the other (each has its own Kamailio, baresip, gateway and ports, but
//! two calls with speech on a 2-core CI machine would make their timing the machine's). Without Kamailio, baresip or SIPp these tests
//! say so and pass, unless VOICEBOT_REQUIRE_PEERS is set.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::admin::http_client;
use common::kamailio::have_kamailio;
use common::kamailio::{free_tcp_port, Kamailio, Setup};
use common::webhook::{events, http_base, transfer_config, webhook_receiver};
use common::{have_baresip, have_sipp, root, Gateway};

/// The gateway's account at Kamailio (its trunk), which in the first test also answers the
/// agent calls' challenges: one account on the PBX, as a deployment would have.
const GW_USER: &str = "gw";
const GW_PASSWORD: &str = "gw-s3cret";
/// The agent's phone's account.
const AGENT: &str = "agent";
const AGENT_PASSWORD: &str = "agent-s3cret";

/// One test at a time (see the module docs).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn peers() -> bool {
    have_kamailio()
        && have_baresip(&[
            "g711.so",
            "aufile.so",
            "aubridge.so",
            "sndfile.so",
            "ctrl_tcp.so",
        ])
        && have_sipp()
}

/// The Kamailio of these tests: the gateway's account, the agent's, INVITEs challenged.
fn pbx() -> Kamailio {
    Kamailio::start_with(
        GW_USER,
        GW_PASSWORD,
        &Setup {
            agent: Some((AGENT, AGENT_PASSWORD)),
            defines: &["WITH_INVITE_AUTH"],
            ..Setup::default()
        },
    )
}

/// A baresip agent's phone on loopback, registered to Kamailio with digest and answering
/// every call at once; it plays a tone (`tone.wav`), dumps what it hears (sndfile module) and
/// takes commands over its ctrl_tcp socket. Killed on drop.
struct Baresip {
    child: Child,
    ctrl: u16,
    dumps: PathBuf,
    out: Arc<Mutex<Vec<String>>>,
}

impl Baresip {
    fn start(dir: &Path, kam_port: u16, rtp_ports: &str) -> Baresip {
        let conf = dir.join("baresip");
        let dumps = dir.join("dumps");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::create_dir_all(&dumps).expect("mkdir");
        // 30 s of a 440 Hz tone at 8 kHz: aufile plays at the codec's rate, and stops at the
        // end of the file.
        let tone = dir.join("tone.wav");
        let status = Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&tone)
            .args(["synth", "30", "sine", "440", "vol", "0.3"])
            .status()
            .expect("sox");
        assert!(status.success());
        let ctrl = free_tcp_port();
        let mut text = format!(
            "poll_method\tepoll\nsip_listen\t127.0.0.1:0\nnet_interface\t127.0.0.1\n\
             rtp_ports\t{rtp_ports}\n\
             audio_player\taubridge,nowhere\naudio_alert\taubridge,nowhere\n\
             audio_source\taufile,{}\n\
             module_path\t/usr/lib/baresip/modules\nsnd_path\t{}\n\
             ctrl_tcp_listen\t127.0.0.1:{ctrl}\n",
            tone.display(),
            dumps.display()
        );
        for m in [
            "g711.so",
            "aufile.so",
            "aubridge.so",
            "sndfile.so",
            "ctrl_tcp.so",
        ] {
            text.push_str(&format!("module\t{m}\n"));
        }
        text.push_str("module_app\taccount.so\nmodule_app\tmenu.so\n");
        std::fs::write(conf.join("config"), text).expect("baresip config");
        std::fs::write(
            conf.join("accounts"),
            format!(
                "<sip:{AGENT}@127.0.0.1:{kam_port}>;auth_pass={AGENT_PASSWORD};regint=60;\
                 answermode=auto;audio_codecs=PCMU\n"
            ),
        )
        .expect("baresip accounts");
        std::fs::write(conf.join("contacts"), "").expect("baresip contacts");
        // -t: it quits by itself after 2 minutes should the test not stop it.
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-t", "120"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start baresip");
        let out = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sink = Arc::clone(&out);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().expect("baresip output").push(line);
                }
            });
        }
        Baresip {
            child,
            ctrl,
            dumps,
            out,
        }
    }

    fn output(&self) -> String {
        self.out.lock().expect("baresip output").join("\n")
    }

    /// Sends `command` over ctrl_tcp (a netstring of JSON) and returns its response.
    fn command(&self, command: &str) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.ctrl)).expect("baresip ctrl_tcp");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let msg = serde_json::json!({"command": command, "token": "t"}).to_string();
        s.write_all(format!("{}:{msg},", msg.len()).as_bytes())
            .expect("send");
        // Events may come first: read netstrings until the response.
        let mut reader = BufReader::new(s);
        loop {
            let mut len = Vec::new();
            reader.read_until(b':', &mut len).expect("netstring");
            let n: usize = std::str::from_utf8(&len[..len.len().saturating_sub(1)])
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| panic!("bad netstring from baresip: {len:?}"));
            let mut body = vec![0; n + 1];
            reader.read_exact(&mut body).expect("netstring body");
            let v: Value = serde_json::from_slice(&body[..n]).expect("ctrl_tcp JSON");
            if v["response"] == true {
                return v;
            }
        }
    }

    /// Bytes of audio (16-bit samples) it decoded from the call so far (its `-dec.wav`).
    fn heard_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dumps)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().to_string_lossy().ends_with("-dec.wav"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len().saturating_sub(44))
            .sum()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most `wait`) for `probe` to give something.
fn wait_for<T>(wait: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The contact URI in a "KAMTEST registered USER contact=<URI>;..." line.
fn contact_of(line: &str) -> String {
    line.split("contact=<")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .unwrap_or_else(|| panic!("no contact in {line:?}"))
        .to_string()
}

/// The gateway's configuration: the agent's extension at Kamailio for every team, with the
/// teams' credentials `team_password` (None: none), and (when `trunk`) its trunk account
/// registering there.
fn gateway_config(
    dir: &Path,
    kam: &Kamailio,
    hook_port: u16,
    team_password: Option<&str>,
    trunk: bool,
) -> String {
    let agent = format!("sip:{AGENT}@127.0.0.1:{}", kam.port);
    let path = transfer_config(dir, &[agent], hook_port, 10);
    let mut text = std::fs::read_to_string(&path).expect("read config");
    if let Some(password) = team_password {
        text.push_str(&format!(
            "[handover.transfer.credentials.default]\nuser = \"{GW_USER}\"\npassword = \"{password}\"\n"
        ));
    }
    if trunk {
        text.push_str(&format!(
            "[[sip.trunks]]\nname = \"pbx\"\nregistrar = \"sip:trunk.test\"\n\
             outbound_proxy = \"127.0.0.1:{}\"\nuser = \"{GW_USER}\"\npassword = \"{GW_PASSWORD}\"\n\
             expires_s = 60\n",
            kam.port
        ));
    }
    std::fs::write(&path, text).expect("write config");
    path
}

/// `tests/sipp/uac_dtmf_info.xml` (presses 0 two seconds in, then stays until the gateway
/// hangs up) for a call through a proxy: its ACK and INFO carry the route set the 200 OK's
/// Record-Route gave, so they pass Kamailio too. Written into `dir`; its path returned.
fn proxied_dtmf_scenario(dir: &Path) -> PathBuf {
    let mut proxied = std::fs::read_to_string(root().join("tests/sipp/uac_dtmf_info.xml"))
        .expect("uac_dtmf_info.xml");
    for cseq in ["CSeq: 1 ACK\n", "CSeq: 2 INFO\n"] {
        let at = proxied
            .find(cseq)
            .unwrap_or_else(|| panic!("no {cseq:?} in uac_dtmf_info.xml"))
            + cseq.len();
        proxied.insert_str(at, "      [routes]\n");
    }
    let path = dir.join("uac_dtmf_info_proxied.xml");
    std::fs::write(&path, proxied).expect("write scenario");
    path
}

/// Runs SIPp's caller with `scenario` (`tests/sipp/uac_dtmf_info.xml` or its proxied form:
/// presses 0 two seconds in, then stays until the gateway hangs up) against `user` at
/// 127.0.0.1:`port`, to completion.
fn caller(dir: &Path, scenario: &Path, port: u16, user: &str, media_port: u16) -> (i32, String) {
    // One second of A-law silence, looped (the scenario offers PCMA first).
    std::fs::write(dir.join("caller.raw"), vec![0xD5u8; 8000]).expect("caller.raw");
    let out = Command::new("timeout")
        .arg("90")
        .arg("sipp")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .arg("-sf")
        .arg(scenario)
        .args(["-s", user, "-i", "127.0.0.1", "-p", "0"])
        .args(["-mp", &media_port.to_string(), "-m", "1", "-nostdin"])
        .args(["-timeout", "80", "-timeout_error"])
        .output()
        .expect("run sipp caller");
    let screen =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), screen)
}

/// The admin API's answer to GET `path` (the token from the file the gateway wrote).
fn admin_get(gw: &Gateway, dir: &Path, path: &str) -> Value {
    let token = std::fs::read_to_string(dir.join("admin-token")).expect("admin token");
    let mut r = http_client(Duration::from_secs(10))
        .get(format!("{}{path}", http_base(gw)))
        .header("Authorization", format!("Bearer {}", token.trim()))
        .call()
        .expect("HTTP");
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.body_mut().read_json().expect("JSON")
}

#[test]
fn a_transfer_reaches_a_registered_agent_through_kamailio_after_a_407() {
    if !peers() {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let kam = pbx();
    let agent = Baresip::start(dir.path(), kam.port, "49700-49739");
    let registered = kam
        .wait_line("KAMTEST registered agent", Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "baresip did not register: {:?}\nbaresip:\n{}",
                kam.lines("KAMTEST"),
                agent.output()
            )
        });
    let agent_contact = contact_of(&registered);

    let (hook_port, got) = webhook_receiver();
    let config = gateway_config(dir.path(), &kam, hook_port, None, true);
    let gw = Gateway::start_with(None, "49400-49499", &["--config", &config]);
    // The gateway registers (challenged, then saved with its contact).
    let gw_contact = format!("sip:{GW_USER}@127.0.0.1:{}", gw.port);
    let saved = kam
        .wait_line(
            &format!("KAMTEST registered {GW_USER} contact=<{gw_contact}"),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("the gateway did not register: {:?}", kam.lines("KAMTEST")));
    assert!(
        !kam.lines(&format!("KAMTEST challenge for {GW_USER}"))
            .is_empty(),
        "{saved}"
    );

    // The caller dials the gateway's account at Kamailio and presses 0; meanwhile the agent
    // answers, hears the caller through the gateway, and hangs up after a second of it.
    let caller_dir = tempfile::tempdir().expect("tempdir");
    let caller_path = caller_dir.path().to_path_buf();
    let kam_port = kam.port;
    let caller = std::thread::spawn(move || {
        let scenario = proxied_dtmf_scenario(&caller_path);
        caller(&caller_path, &scenario, kam_port, GW_USER, 49600)
    });
    let bridged = wait_for(Duration::from_secs(40), || {
        let live = admin_get(&gw, dir.path(), "/api/calls/live");
        (live["calls"][0]["state"] == "bridged").then_some(())
    });
    assert!(
        bridged.is_some(),
        "the call was not bridged to the agent; kamailio: {:?}\nbaresip:\n{}",
        kam.lines("KAMTEST"),
        agent.output()
    );
    // A second of the bridged call as the agent's phone plays it out.
    let before = agent.heard_bytes();
    let heard = wait_for(Duration::from_secs(10), || {
        (agent.heard_bytes() >= before + 16_000).then_some(())
    });
    assert!(
        heard.is_some(),
        "the agent's phone plays nothing:\n{}",
        agent.output()
    );
    let hangup = agent.command("hangup");
    assert_eq!(hangup["ok"], true, "{hangup}");
    let (code, screen) = caller.join().expect("caller thread");
    assert_eq!(
        code,
        0,
        "the caller got no BYE after the agent hung up:\n{screen}\nkamailio: {:?}",
        kam.lines("KAMTEST")
    );

    // Kamailio: the call came in for the gateway's account and went to its contact; the
    // agent's INVITE was challenged, authenticated as the team's user and relayed to
    // baresip's registered contact.
    let routed = kam.lines(&format!("KAMTEST INVITE for {GW_USER} routed to"));
    assert!(routed.iter().any(|l| l.contains(&gw_contact)), "{routed:?}");
    // The agent leg's INVITEs: the first without credentials (407), the second with the
    // team's, accepted.
    let invites = kam.lines("KAMTEST INVITE for agent from sip:voicebot@");
    assert_eq!(invites.len(), 2, "{:?}", kam.lines("KAMTEST"));
    assert!(
        invites[0].contains("challenged (user=<null>"),
        "no 407 first: {invites:?}"
    );
    assert!(
        invites[1].contains(&format!("authenticated as {GW_USER}")),
        "{invites:?}"
    );
    let relayed = kam.lines("KAMTEST INVITE for agent routed to");
    assert_eq!(relayed.len(), 1, "{:?}", kam.lines("KAMTEST"));
    assert!(
        relayed[0].contains(&agent_contact),
        "{relayed:?} vs {agent_contact}"
    );

    // The gateway's record: bridged to the agent's extension, audio both ways, ended by the
    // agent.
    let records = gw.records(1, Duration::from_secs(30));
    assert_eq!(records.len(), 1, "one call record");
    let r = &records[0];
    let t = &r["transfer"];
    assert_eq!(t["outcome"], "bridged", "{r}");
    assert_eq!(
        t["agent"],
        format!("sip:{AGENT}@127.0.0.1:{}", kam.port),
        "{t}"
    );
    assert!(t["packets_to_agent"].as_u64().unwrap_or(0) >= 40, "{t}");
    assert!(t["packets_from_agent"].as_u64().unwrap_or(0) >= 40, "{t}");
    assert_eq!(r["ended_by"], "agent", "{r}");
    let id = r["id"].as_str().expect("record id");
    let stored = admin_get(&gw, dir.path(), &format!("/api/calls/{id}"));
    let stored = stored.to_string();
    assert!(stored.contains("\"outcome\":\"bridged\""), "{stored}");
    let answered = events(&got, "agent_answered", Duration::from_secs(10));
    assert_eq!(answered.len(), 1, "one agent_answered event");
    println!(
        "decision -> agent INVITE {} ms, agent answer -> bridged {} ms, -> put through {} ms; \
         test {:?}",
        t["decision_to_invite_ms"],
        t["answer_to_bridge_ms"],
        t["answer_to_put_through_ms"],
        started.elapsed()
    );
}

#[test]
fn a_wrong_team_password_is_refused_once_without_a_loop() {
    if !peers() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let kam = pbx();
    let agent = Baresip::start(dir.path(), kam.port, "49740-49779");
    kam.wait_line("KAMTEST registered agent", Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "baresip did not register: {:?}\nbaresip:\n{}",
                kam.lines("KAMTEST"),
                agent.output()
            )
        });
    let (hook_port, got) = webhook_receiver();
    // No trunk here: the caller calls the gateway directly, and only the team's credentials
    // (wrong) are there to answer the challenge with.
    let config = gateway_config(dir.path(), &kam, hook_port, Some("not-the-password"), false);
    let gw = Gateway::start_with(None, "49500-49599", &["--config", &config]);
    let caller_dir = tempfile::tempdir().expect("tempdir");
    let scenario = root().join("tests/sipp/uac_dtmf_info.xml");
    let (code, screen) = caller(caller_dir.path(), &scenario, gw.port, "support", 49620);
    assert_eq!(
        code,
        0,
        "the caller got no BYE after the apology:\n{screen}\nkamailio: {:?}",
        kam.lines("KAMTEST")
    );
    let callback = events(&got, "callback_requested", Duration::from_secs(10));
    assert_eq!(callback.len(), 1);
    let attempts = callback[0].json()["data"]["attempts"].clone();
    assert_eq!(attempts[0]["outcome"], "refused 407", "{attempts}");
    let records = gw.records(1, Duration::from_secs(30));
    assert_eq!(
        records[0]["transfer"]["outcome"], "callback",
        "{}",
        records[0]
    );
    // Two INVITEs, both challenged (the first had no credentials, the second's were
    // refused), none relayed; the agent's phone never rang.
    let invites = kam.lines("KAMTEST INVITE for agent");
    assert_eq!(invites.len(), 2, "{invites:?}");
    assert!(
        invites[0].contains("challenged (user=<null>"),
        "{invites:?}"
    );
    assert!(
        invites[1].contains(&format!("challenged (user={GW_USER} ")),
        "the second INVITE carried the team's user, and was refused: {invites:?}"
    );
    assert!(
        std::fs::read_dir(&agent.dumps)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "the agent's phone answered a call:\n{}",
        agent.output()
    );
}

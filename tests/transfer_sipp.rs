//! Warm transfer end to end with real SIP peers on loopback: a SIPp caller reaches the bot,
//! escalates (by voice or DTMF 0), and the gateway hands the call to agent phones played by
//! SIPp user agent servers, while a webhook receiver in the test collects the signed hand-over
//! events.
//!
//! * "I want to cancel my subscription" (espeak-ng over RTP): the escalated event, signed, with
//!   the transcript and a summary naming the cancellation, arrives before the agent answers;
//!   the agent's INVITE carries the context headers (the SIPp scenario checks them); the call
//!   is bridged and audio flows both ways (the agent echoes it); the agent hangs up and the
//!   gateway ends the caller's leg.
//! * DTMF 0 with an agent who only rings and one who is busy: the ring timeout cancels the
//!   first, the second refuses, the caller hears the apology, and a callback request reaches
//!   the webhook.
//!
//! Without SIPp these tests say so and pass, unless VOICEBOT_REQUIRE_PEERS is set.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

mod common;

use common::sipp::finish;
use common::webhook::{
    check_signature, events, http_base, transfer_config as config, webhook_receiver,
    webhook_receiver_on, AGENT_TOKEN,
};
use common::{have_sipp, peer_available, root, spoken_ulaw, Gateway};

/// One test at a time: each runs a gateway with whisper and several SIPp processes, and on
/// 2 cores three of them at once would starve the media tasks.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a SIPp agent (UAS) on `port` with `scenario` from `tests/sipp/`.
fn agent(dir: &Path, port: u16, media_port: u16, scenario: &str, extra: &[&str]) -> Child {
    let scenario = root().join("tests/sipp").join(scenario);
    common::sipp::agent(dir, port, media_port, &scenario, extra)
}

/// Runs the SIPp caller with `scenario` from `tests/sipp/` to completion.
fn caller(dir: &Path, gw_port: u16, scenario: &str, media_port: u16) -> (i32, String) {
    let scenario = root().join("tests/sipp").join(scenario);
    common::sipp::caller(dir, gw_port, &scenario, media_port)
}

#[test]
fn cancellation_is_handed_to_an_agent_with_context_and_bridged() {
    if !have_sipp() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, got) = webhook_receiver();
    let agent_port = 45060;
    let cfg = config(
        dir.path(),
        &[format!("sip:1001@127.0.0.1:{agent_port}")],
        hook_port,
        15,
    );
    let mut gw = Gateway::start("45100-45199", &["--config", &cfg]);
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = agent(
        agent_dir.path(),
        agent_port,
        45300,
        "uas_agent.xml",
        &["-rtp_echo"],
    );
    spoken_ulaw(dir.path(), "I want to cancel my subscription.", 2, 25);
    let (code, screen) = caller(dir.path(), gw.port, "uac_speech_until_bye.xml", 45400);
    let (agent_code, agent_screen) = finish(agent);
    assert_eq!(
        agent_code, 0,
        "agent failed (INVITE without the context headers?):\n{agent_screen}"
    );
    assert_eq!(
        code, 0,
        "caller failed (no BYE after the agent hung up?):\n{screen}"
    );

    // The hand-over context reached the webhook, signed, before the agent answered.
    let escalated = events(&got, "escalated", Duration::from_secs(10));
    assert_eq!(escalated.len(), 1, "one escalated event");
    let answered = events(&got, "agent_answered", Duration::from_secs(10));
    assert_eq!(answered.len(), 1, "one agent_answered event");
    assert!(escalated[0].at < answered[0].at);
    check_signature(&escalated[0]);
    let event = escalated[0].json();
    assert_eq!(event["schema"], "voicebot.webhook.v1");
    assert_eq!(event["kind"], "escalated");
    let ctx = &event["data"];
    assert_eq!(ctx["schema"], "voicebot.handover.v1");
    assert_eq!(ctx["escalation"]["reason"], "critical_keyword", "{ctx}");
    let transcript = ctx["transcript"].to_string().to_lowercase();
    assert!(transcript.contains("cancel"), "{transcript}");
    let summary = ctx["summary"].as_str().unwrap_or("").to_lowercase();
    assert!(summary.contains("cancel"), "{summary}");
    let lines = summary.lines().count();
    assert!((3..=5).contains(&lines), "{summary}");

    // Any CTI system can fetch the same context with the agent token.
    let call_id = event["call_id"].as_str().expect("call id").to_string();
    let url = format!("{}/calls/{call_id}/context", http_base(&gw));
    let http = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build();
    let http: ureq::Agent = http.into();
    assert_eq!(http.get(&url).call().expect("GET").status(), 401);
    let mut resp = http
        .get(&url)
        .header("Authorization", &format!("Bearer {AGENT_TOKEN}"))
        .call()
        .expect("GET context");
    assert_eq!(resp.status(), 200);
    let fetched: serde_json::Value = resp.body_mut().read_json().expect("json");
    assert!(fetched["summary"]
        .as_str()
        .unwrap_or("")
        .to_lowercase()
        .contains("cancel"));

    // The call was bridged: audio went to the agent and came back (SIPp echoes it).
    let records = gw.records(1, Duration::from_secs(40));
    let r = &records[0];
    let t = &r["transfer"];
    assert_eq!(t["outcome"], "bridged", "{r}");
    assert_eq!(
        t["webhook_before_invite"], true,
        "the context reached the webhook before the agent's phone was called: {t}"
    );
    assert_eq!(t["agent"], format!("sip:1001@127.0.0.1:{agent_port}"));
    assert!(t["packets_to_agent"].as_u64().unwrap_or(0) > 100, "{t}");
    assert!(t["packets_from_agent"].as_u64().unwrap_or(0) > 100, "{t}");
    assert_eq!(r["ended_by"], "agent");
    let final_events = events(&got, "call_ended", Duration::from_secs(10));
    assert_eq!(final_events.len(), 1);
    check_signature(&final_events[0]);
    println!(
        "decision -> agent INVITE {} ms, agent answer -> caller's audio to the agent {} ms, \
         -> caller hears the agent {} ms",
        t["decision_to_invite_ms"], t["answer_to_bridge_ms"], t["answer_to_put_through_ms"]
    );
    assert!(gw.alive());
}

#[test]
fn nobody_answers_so_the_caller_gets_a_callback() {
    if !have_sipp() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, got) = webhook_receiver();
    let (ringing_port, busy_port) = (45061, 45062);
    let cfg = config(
        dir.path(),
        &[
            format!("sip:1001@127.0.0.1:{ringing_port}"),
            format!("sip:1002@127.0.0.1:{busy_port}"),
        ],
        hook_port,
        3,
    );
    let gw = Gateway::start("45500-45599", &["--config", &cfg]);
    let agents_dir = tempfile::tempdir().unwrap();
    let ringing = agent(
        agents_dir.path(),
        ringing_port,
        45700,
        "uas_ring_only.xml",
        &[],
    );
    let busy = agent(agents_dir.path(), busy_port, 45710, "uas_busy.xml", &[]);
    // One second of A-law silence, looped (the scenario offers PCMA first).
    std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).unwrap();
    let (code, screen) = caller(dir.path(), gw.port, "uac_dtmf_info.xml", 45800);
    let (ring_code, ring_screen) = finish(ringing);
    let (busy_code, busy_screen) = finish(busy);
    assert_eq!(
        ring_code, 0,
        "ringing agent was not cancelled:\n{ring_screen}"
    );
    assert_eq!(busy_code, 0, "busy agent:\n{busy_screen}");
    assert_eq!(code, 0, "caller got no BYE after the apology:\n{screen}");

    let callback = events(&got, "callback_requested", Duration::from_secs(10));
    assert_eq!(callback.len(), 1);
    check_signature(&callback[0]);
    let data = &callback[0].json()["data"];
    let attempts = data["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{data}");
    assert_eq!(attempts[0]["outcome"], "no answer");
    assert_eq!(attempts[1]["outcome"], "refused 486");
    let records = gw.records(1, Duration::from_secs(30));
    let r = &records[0];
    assert_eq!(r["transfer"]["outcome"], "callback", "{r}");
    let last = r["bot_speech"]
        .as_array()
        .and_then(|s| s.last())
        .and_then(|s| s["text"].as_str())
        .unwrap_or("")
        .to_lowercase();
    assert!(last.contains("call you back"), "{last}");

    // The agent screen, in a real browser: the hand-over shows with its reason and summary.
    let have_chromium = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !peer_available("chromium", have_chromium, "apt-get install chromium") {
        return;
    }
    // follow=false: the recent hand-overs once, so the page settles and the browser can stop.
    let page = format!("{}/agent?token={AGENT_TOKEN}&follow=false", http_base(&gw));
    let dom = chromium(dir.path(), &page, &["--dump-dom"]);
    assert!(dom.contains("class=\"state callback\""), "{dom}");
    assert!(dom.contains("pressed 0"), "the reason is shown: {dom}");
    assert!(
        dom.contains("Escalated on turn"),
        "the summary is shown: {dom}"
    );
    let shot = dir.path().join("agent-screen.png");
    chromium(
        dir.path(),
        &page,
        &[
            "--window-size=1000,700",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("VOICEBOT_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&shot, Path::new(&keep).join("agent-screen.png"));
    }
}

/// The agent behind a PBX that challenges every INVITE (401 here: SIPp's verifyauth checks
/// `Authorization`; the 407 flavour is the next test's and the endpoint's unit tests'): the
/// gateway answers with the team's credentials (the SIPp agent verifies the digest), and the
/// call is bridged.
#[test]
fn an_agent_behind_a_challenging_pbx_is_reached_with_the_teams_credentials() {
    if !have_sipp() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, _got) = webhook_receiver();
    let agent_port = 48660;
    let cfg = config(
        dir.path(),
        &[format!("sip:1001@127.0.0.1:{agent_port}")],
        hook_port,
        15,
    );
    with_credentials(&cfg, "agent-secret");
    let gw = Gateway::start("48800-48899", &["--config", &cfg]);
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = agent(
        agent_dir.path(),
        agent_port,
        48900,
        "uas_agent_auth.xml",
        &["-rtp_echo"],
    );
    spoken_ulaw(dir.path(), "I want to cancel my subscription.", 2, 25);
    let (code, screen) = caller(dir.path(), gw.port, "uac_speech_until_bye.xml", 48920);
    let (agent_code, agent_screen) = finish(agent);
    assert_eq!(
        agent_code, 0,
        "agent failed (no credentials, or wrong ones?):\n{agent_screen}"
    );
    assert_eq!(code, 0, "caller failed:\n{screen}");
    let records = gw.records(1, Duration::from_secs(40));
    let t = &records[0]["transfer"];
    assert_eq!(t["outcome"], "bridged", "{t}");
    assert!(t["packets_from_agent"].as_u64().unwrap_or(0) > 100, "{t}");
}

/// A wrong password: the PBX challenges the credentials again, and the gateway gives up after
/// exactly two INVITEs (the SIPp PBX fails on a third) instead of looping; the attempt is
/// reported as refused with 407 and the caller hears the transfer-failed path (callback).
#[test]
fn a_wrong_agent_password_fails_the_transfer_without_a_loop() {
    if !have_sipp() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, got) = webhook_receiver();
    let agent_port = 48661;
    let cfg = config(
        dir.path(),
        &[format!("sip:1001@127.0.0.1:{agent_port}")],
        hook_port,
        10,
    );
    with_credentials(&cfg, "not-the-password");
    let gw = Gateway::start("48950-48999", &["--config", &cfg]);
    let agent_dir = tempfile::tempdir().unwrap();
    let pbx = agent(
        agent_dir.path(),
        agent_port,
        48940,
        "uas_agent_auth_refused.xml",
        &[],
    );
    std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).unwrap();
    let (code, screen) = caller(dir.path(), gw.port, "uac_dtmf_info.xml", 48960);
    let (pbx_code, pbx_screen) = finish(pbx);
    assert_eq!(
        pbx_code, 0,
        "the PBX saw good credentials or a third INVITE:\n{pbx_screen}"
    );
    assert_eq!(code, 0, "caller got no BYE after the apology:\n{screen}");
    let callback = events(&got, "callback_requested", Duration::from_secs(10));
    assert_eq!(callback.len(), 1);
    let attempts = callback[0].json()["data"]["attempts"].clone();
    assert_eq!(attempts[0]["outcome"], "refused 407", "{attempts}");
    let records = gw.records(1, Duration::from_secs(30));
    let r = &records[0];
    assert_eq!(r["transfer"]["outcome"], "callback", "{r}");
}

/// Adds the default team's credentials for agent calls to the configuration at `path`.
fn with_credentials(path: &str, password: &str) {
    let mut text = std::fs::read_to_string(path).expect("read config");
    text.push_str(&format!(
        "[handover.transfer.credentials.default]\nuser = \"gw\"\npassword = \"{password}\"\n"
    ));
    std::fs::write(path, text).expect("write config");
}

/// Headless Chromium on `url` (flags as for a sandboxed CI machine with no network), letting
/// the page run for a few seconds of its own time; returns what it printed.
fn chromium(dir: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium-profile").display()
        ))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn events_survive_a_dead_webhook_and_a_gateway_crash() {
    if !have_sipp() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // A port where nobody listens yet: the webhook is down for the whole call.
    let hook_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let busy_port = 45063;
    let cfg = config(
        dir.path(),
        &[format!("sip:1002@127.0.0.1:{busy_port}")],
        hook_port,
        3,
    );
    let agents_dir = tempfile::tempdir().unwrap();
    {
        let gw = Gateway::start("45600-45649", &["--config", &cfg]);
        let busy = agent(agents_dir.path(), busy_port, 45720, "uas_busy.xml", &[]);
        std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).unwrap();
        let (code, screen) = caller(dir.path(), gw.port, "uac_dtmf_info.xml", 45820);
        assert_eq!(code, 0, "caller:\n{screen}");
        assert_eq!(finish(busy).0, 0);
        // The call is over (its record is written); the gateway is killed without a chance to
        // flush anything (SIGKILL when `gw` is dropped).
        assert_eq!(gw.records(1, Duration::from_secs(30)).len(), 1);
    }
    // The webhook comes back, then the gateway restarts on the same outbox.
    let (_, got) = webhook_receiver_on(hook_port);
    let _gw = Gateway::start("45650-45699", &["--config", &cfg]);
    let ended = events(&got, "call_ended", Duration::from_secs(30));
    assert_eq!(
        ended.len(),
        1,
        "call_ended delivered once after the restart"
    );
    std::thread::sleep(Duration::from_millis(500));
    let all = got.lock().map(|g| g.clone()).unwrap_or_default();
    let kinds: Vec<&str> = all
        .iter()
        .filter_map(|d| d.header("X-Voicebot-Event"))
        .collect();
    assert_eq!(
        kinds,
        ["escalated", "callback_requested", "call_ended"],
        "every event once, in order"
    );
    for d in &all {
        check_signature(d);
    }
    let ids: std::collections::BTreeSet<&str> = all
        .iter()
        .filter_map(|d| d.header("Idempotency-Key"))
        .collect();
    assert_eq!(ids.len(), 3);
}

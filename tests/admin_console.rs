//! The admin console in a real browser: headless Chromium driven by chromedriver (WebDriver
//! over HTTP, a small client below), against the real `voicebot serve` with its models.
//!
//! The test logs in (a wrong token first), edits a flow and saves it, makes an invalid edit and
//! sees the problem inline with its line, chats with the edited flow and then until it escalates,
//! runs a WAV, looks at live calls, the call history (filtered) and one call, and the analytics,
//! taking a screenshot at each stop; then (with SIPp) a real call shows live and then in the
//! history. Last, on Try it, a chat reply and a voice being tried (speed, gain) are spoken by
//! the gateway and play in the page, and an out-of-range speed shows the gateway's 422.
//! At each stop the page's console must hold no script error or policy violation.
//! The history is seeded with two calls before the gateway starts. Skipped when Chromium or
//! chromedriver is missing, unless VOICEBOT_REQUIRE_PEERS is set. Screenshots go to the test's
//! temporary directory, or to `$VOICEBOT_CONSOLE_SCREENSHOTS`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use voicebot_gateway::history::CallHistory;

use common::admin::HttpGateway;
use common::browser::{runs, Browser, Driver, CONTROL, END, ENTER, RELEASE};
use common::{have_sipp, peer_available, root, spoken_wav};

const ADMIN_TOKEN: &str = "console-admin-token-0123456789";

/// The shared player's `src` now (empty before the first playback).
fn audio_src(b: &Browser) -> String {
    b.try_find("#say-audio")
        .and_then(|a| b.property(&a, "src").as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until the shared player holds new audio (not `previous`) of more than half a second
/// and has played it (its time moved on, or it ended); returns its length in seconds.
fn wait_played(b: &Browser, previous: &str, what: &str) -> f64 {
    b.wait_until(&format!("{what} to play in #say-audio"), || {
        let audio = b.try_find("#say-audio")?;
        let src = b.property(&audio, "src").as_str()?.to_string();
        if src == previous || !src.starts_with("blob:") {
            return None;
        }
        let duration = b.property(&audio, "duration").as_f64()?;
        let at = b.property(&audio, "currentTime").as_f64().unwrap_or(0.0);
        let ended = b.property(&audio, "ended") == true;
        (duration.is_finite() && duration > 0.5 && (at > 0.0 || ended)).then_some(duration)
    })
}

// ---------------------------------------------------------------------------------------------
// The gateway's files.

/// A small support flow with the shipped intents and prompts (absolute paths); `not_found` is
/// the reply for an unknown order number. `[escalation]` comes last, so a line typed at the
/// end of the text lands in it.
fn flow_text(not_found: &str) -> String {
    format!(
        "name = \"support\"\n\
         description = \"Support line (console test)\"\n\
         numbers = [\"support\"]\n\
         intents = \"{}\"\n\
         prompts = \"{}\"\n\
         \n\
         [[lookup]]\n\
         intent = \"order_status\"\n\
         key = \"order_number\"\n\
         found = \"Thanks. Order {{order_number}} {{status}}.\"\n\
         not_found = \"{not_found}\"\n\
         \n\
         [lookup.records]\n\
         \"45712\" = {{ status = \"has been shipped\" }}\n\
         \n\
         [escalation]\n\
         clarifications_before_escalation = 1\n",
        root().join("sip-config/intents.toml").display(),
        root().join("prompts/en.toml").display(),
    )
}

fn turn(index: u32, said: &str, intent: &str, confidence: f64, reply: &str) -> Value {
    let start = u64::from(index) * 6000;
    json!({
        "index": index, "start_ms": start, "end_ms": start + 1800, "end_reason": "silence",
        "transcript": said, "asr_confidence": 0.93, "normalized": said.to_lowercase(),
        "intent": intent, "intent_confidence": confidence, "intent_evidence": [],
        "slots": {}, "reply": reply, "escalation": null, "ends_call": false, "emotion": null,
        "timings": {"asr_ms": 120, "intent_ms": 8, "tts_ms": 90, "total_ms": 220}, "fault": null
    })
}

/// Two finished calls in the history: one escalated (asked for a person, bridged to an agent),
/// one the bot finished itself.
fn seed_history(path: &Path) {
    let history = CallHistory::open(path).expect("history database");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let escalation = json!({"reason": "explicit_request", "detail": "the caller asked for a person",
                            "skill": "support", "turn": 2});
    let mut person = turn(
        2,
        "I want to speak to a person",
        "human_request",
        0.97,
        "Of course, I'm putting you through to a colleague.",
    );
    person["escalation"] = escalation.clone();
    let escalated = json!({
        "call_id": "seeded-escalated@console", "from": "<sip:alice@127.0.0.1>;tag=a1",
        "called": "support", "codec": "PCMU", "remote_rtp": "127.0.0.1:40000",
        "duration_ms": 95_000, "ended_by": "caller", "dtmf": [], "bot_speech": [],
        "rtp": {"packets_received": 4700, "packets_lost": 2},
        "flow": "support", "greeting": "Hello, you're through to support. How can I help?",
        "turns": [turn(1, "Where is my order?", "order_status", 0.91,
                       "Sure. What's the order number?"), person],
        "outcome": "escalated", "escalation": escalation,
        "caller_audio_ms": 9000, "unprocessed_after_end_ms": 0, "noise_ignored": 0,
        "pipeline_error": null,
        "transfer": {"skill": "support",
                     "attempts": [{"target": "sip:1001@127.0.0.1:5070", "outcome": "answered"}],
                     "agent": "sip:1001@127.0.0.1:5070", "decision_to_invite_ms": 14.0,
                     "answer_to_bridge_ms": 1.0, "answer_to_put_through_ms": 2100.0,
                     "packets_to_agent": 3000, "packets_from_agent": 2990, "outcome": "bridged",
                     "mode": "bridge", "whisper": "Caller asked about an order.", "whisper_ms": 1800.0,
                     "refer_to": null, "refer_status": null, "webhook_events": [],
                     "webhook_before_invite": null},
        "summary": "Alice asked where her order is, then asked for a person. Escalated on turn 2: the caller asked for a person."
    });
    let contained = json!({
        "call_id": "seeded-contained@console", "from": "<sip:bob@127.0.0.1>;tag=b1",
        "called": "support", "codec": "PCMA", "remote_rtp": "127.0.0.1:40002",
        "duration_ms": 35_000, "ended_by": "bot", "dtmf": [], "bot_speech": [],
        "rtp": {"packets_received": 1700, "packets_lost": 0},
        "flow": "support", "greeting": "Hello, you're through to support. How can I help?",
        "turns": [turn(1, "When are you open?", "opening_hours", 0.42,
                       "We're open from 8 to 8 on weekdays.")],
        "outcome": "completed", "escalation": null,
        "caller_audio_ms": 3000, "unprocessed_after_end_ms": 0, "noise_ignored": 0,
        "pipeline_error": null,
        "summary": "Bob asked for the opening hours; the bot answered."
    });
    history
        .insert(now - 3_600_000, &escalated)
        .expect("seed call");
    history
        .insert(now - 7_200_000, &contained)
        .expect("seed call");
}

fn write_config(dir: &Path) -> PathBuf {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("mkdir");
    std::fs::write(
        flows.join("support.toml"),
        flow_text("Sorry, I can't find order {order_number}."),
    )
    .expect("flow");
    seed_history(&dir.join("history.sqlite3"));
    let config = dir.join("gateway.toml");
    let text = format!(
        "[flows]\ndir = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-console-token\"\n\
         feedback_database = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\nadmin_token_env = \"\"\n\
         admin_token_file = \"{}\"\nhistory_database = \"{}\"\n\
         [recording]\nenabled = true\ndir = \"{}\"\n",
        flows.display(),
        dir.join("feedback.sqlite3").display(),
        dir.join("admin-token").display(),
        dir.join("history.sqlite3").display(),
        dir.join("recordings").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

#[test]
fn admin_console_in_headless_chromium() {
    let have = runs("chromium") && runs("chromedriver");
    if !peer_available(
        "chromium with chromedriver",
        have,
        "apt-get install chromium chromium-driver",
    ) {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let shots = std::env::var_os("VOICEBOT_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let config = write_config(dir.path());
    let flow_file = dir.path().join("flows/support.toml");

    let gateway = HttpGateway::start(&config, "46600-46699", 4, Duration::from_secs(120));
    let console_line = &gateway.banner[3];
    assert_eq!(
        console_line,
        &format!(
            "admin console: {}/admin (log in with the admin token from the configuration)",
            gateway.base
        )
    );
    let driver = Driver::start(&dir.path().join("chromedriver.log"));
    let b = Browser::open(&driver, &dir.path().join("profile"), shots.clone());
    let console = format!("{}/admin", gateway.base);

    // Log in: a wrong token is refused with the reason, the right one opens the flows.
    b.goto(&console);
    b.type_into("#token", "not-the-token");
    b.click("#login-button");
    b.wait_text("#login-error", "wrong admin token");
    b.type_into("#token", ADMIN_TOKEN);
    b.click("#login-button");
    let list = b.wait_text("#flow-list", "support");
    assert!(list.contains("Support line (console test)"), "{list}");
    b.stop("1-flows");

    // Edit the flow: a new reply for an unknown order number; saved, on disk, in force.
    b.click("a.flow-link[data-flow=\"support\"]");
    let editor = b.find("#flow-text");
    b.wait_until("the flow text in the editor", || {
        b.property(&editor, "value")
            .as_str()
            .is_some_and(|t| t.contains("[[lookup]]"))
            .then_some(())
    });
    let edited = flow_text("Order {order_number} is not in our records, says the console.");
    b.clear(&editor);
    b.type_into("#flow-text", &edited);
    b.click("#save");
    let saved = b.wait_text("#flow-message", "Saved");
    assert!(saved.contains("support.toml"), "{saved}");
    assert_eq!(
        std::fs::read_to_string(&flow_file).expect("flow"),
        edited,
        "the saved file is the text typed"
    );
    b.stop("2-flow-saved");

    // An invalid edit: the problem shows next to the editor with its line and field, the
    // line is marked in the gutter, and saving writes nothing.
    let bad_line = edited.lines().count() + 1;
    b.type_into(
        "#flow-text",
        &format!("{CONTROL}{END}{RELEASE}min_intent_confidence = 2.0"),
    );
    b.click("#validate");
    let problem = b.wait_text("#problems", &format!("line {bad_line}"));
    assert!(
        problem.contains("escalation.min_intent_confidence"),
        "{problem}"
    );
    assert!(problem.contains("between 0 and 1"), "{problem}");
    let marked = b.find(".gutter div.bad");
    assert_eq!(b.text(&marked), bad_line.to_string());
    b.click("#save");
    b.wait_text("#flow-message", "nothing was written");
    assert_eq!(std::fs::read_to_string(&flow_file).expect("flow"), edited);
    b.stop("3-flow-invalid");

    // Try it: a chat on the edited flow gets the new reply; then one that escalates shows why.
    b.click("#nav-try");
    b.type_into("#chat-input", &format!("where is my order{ENTER}"));
    b.wait_text("#chat-log", "order_status");
    b.type_into("#chat-input", &format!("55555{ENTER}"));
    // (Numbers are read out digit by digit.)
    b.wait_text(
        "#chat-log",
        "Order 5 5 5 5 5 is not in our records, says the console.",
    );
    b.click("#chat-reset");
    b.type_into(
        "#chat-input",
        &format!("I want to speak to a person{ENTER}"),
    );
    let escalation = b.wait_text("#chat-log .escalation", "Escalated");
    assert!(
        escalation.contains("asked for a person (explicit_request)"),
        "{escalation}"
    );
    assert_eq!(
        b.property(&b.find("#chat-input"), "disabled"),
        true,
        "the conversation is over"
    );
    b.stop("4-try-chat-escalated");

    // A WAV through the whole pipeline: the same per-turn report.
    let wav = spoken_wav(dir.path(), "order", "Hi, where is my order?");
    let file_input = b.try_find("#wav-file").expect("file input");
    b.must(
        "POST",
        &format!("/element/{}/value", file_input.0),
        Some(json!({ "text": wav.display().to_string() })),
    );
    b.click("#wav-run");
    let report = b.wait_text("#wav-report", "order_status");
    assert!(report.to_lowercase().contains("order"), "{report}");
    b.resize(1280, 1500);
    b.stop("5-try-wav");
    b.resize(1280, 1000);

    // Calls: nothing live; the history with both seeded calls, filtered, then one call.
    b.click("#nav-calls");
    b.wait_text("#live-calls", "No calls in progress.");
    let table = b.wait_text("#call-table", "asked for a person (explicit_request)");
    assert!(table.contains("completed"), "{table}");
    b.select("#calls-escalated", "false");
    b.click("#calls-apply");
    b.wait_until("the filtered history", || {
        let t = b.text(&b.try_find("#call-table")?);
        (!t.contains("explicit_request") && t.contains("completed")).then_some(())
    });
    b.select("#calls-escalated", "true");
    b.select("#calls-reason", "explicit_request");
    b.click("#calls-apply");
    b.wait_until("the escalated call alone", || {
        let t = b.text(&b.try_find("#call-table")?);
        (t.contains("explicit_request") && !t.contains("completed")).then_some(())
    });
    b.stop("6-calls");
    b.click("a.call-link");
    let highlighted = b.wait_text(".escalation", "asked for a person (explicit_request)");
    assert!(highlighted.contains("team support"), "{highlighted}");
    b.wait_text("#call-summary", "Escalated on turn 2");
    b.wait_text("#transfer-attempts", "sip:1001@127.0.0.1:5070");
    let main = b.wait_text("main", "Webhooks are not configured");
    assert!(
        main.contains("Of course, I'm putting you through"),
        "{main}"
    );
    b.stop("7-call-detail");

    // Analytics: containment, escalations by reason, confidence per intent (drawn in SVG).
    // The history's filter still holds (the escalated calls only), then it is cleared.
    b.click("#nav-analytics");
    b.wait_exact("#containment-rate", "0%");
    assert_eq!(b.text(&b.find("#call-count")), "1");
    b.select("#analytics-escalated", "");
    b.select("#analytics-reason", "");
    b.click("#analytics-apply");
    b.wait_exact("#containment-rate", "50%");
    assert_eq!(b.text(&b.find("#call-count")), "2");
    b.wait_text("#by-reason", "asked for a person (explicit_request)");
    let intents = b.wait_text("#intents", "human_request");
    assert!(intents.contains("opening_hours"), "{intents}");
    assert_eq!(b.find_all("#intents svg.histogram").len(), 3);
    assert_eq!(b.find_all("#intents svg.histogram rect").len(), 30);
    b.stop("8-analytics");

    // Log out; ?token= logs in again and leaves the address bar.
    b.click("#logout");
    b.find("#token");
    b.goto(&format!("{console}?token={ADMIN_TOKEN}#/analytics"));
    b.wait_exact("#containment-rate", "50%");
    let url = b.url();
    assert!(!url.contains(ADMIN_TOKEN), "the token stayed in {url}");
    assert!(url.ends_with("/admin#/analytics"), "{url}");
    let mut names = vec![
        "1-flows",
        "2-flow-saved",
        "3-flow-invalid",
        "4-try-chat-escalated",
        "5-try-wav",
        "6-calls",
        "7-call-detail",
        "8-analytics",
    ];

    // A real call (SIPp, pressing 0): live on the calls page while it lasts, then in the
    // history with its reason.
    if have_sipp() {
        b.click("#nav-calls");
        b.wait_text("#live-calls", "No calls in progress.");
        let sip_port = gateway.banner[0]
            .split("sip=127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no SIP port in {:?}", gateway.banner[0]))
            .to_string();
        // One second of A-law silence, looped, as the caller's audio.
        std::fs::write(dir.path().join("caller.raw"), vec![0xD5u8; 8000]).expect("audio");
        let cwd = dir.path().to_path_buf();
        let sipp = std::thread::spawn(move || {
            Command::new("timeout")
                .arg("60")
                .arg("sipp")
                .arg(format!("127.0.0.1:{sip_port}"))
                .current_dir(&cwd)
                .arg("-sf")
                .arg(root().join("tests/sipp/uac_dtmf_info.xml"))
                .args(["-s", "support", "-i", "127.0.0.1", "-p", "0"])
                .args(["-mp", "46700", "-m", "1", "-nostdin"])
                .args(["-timeout", "50", "-timeout_error"])
                .output()
                .expect("run sipp")
        });
        let live = b.wait_text("#live-calls", "support");
        assert!(live.contains("Caller"), "{live}");
        b.stop("9-live-call");
        let out = sipp.join().expect("sipp thread");
        assert!(
            out.status.success(),
            "sipp failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        b.wait_text("#live-calls", "No calls in progress.");
        // The history is read when asked: Apply again until the call is stored.
        b.wait_until("the real call in the history", || {
            b.click("#calls-apply");
            std::thread::sleep(Duration::from_millis(300));
            let t = b.text(&b.try_find("#call-table")?);
            t.contains("pressed 0 (dtmf0)").then_some(())
        });
        b.stop("10-real-call-in-history");
        // Its recording plays in the call's page (fetched with the token, as a blob).
        b.click("#call-table a.call-link");
        b.wait_text("#call-summary", "Escalated");
        b.click("#recording-load");
        let seconds = b.wait_until("the recording's metadata", || {
            let audio = b.try_find("#recording-audio")?;
            let d = b.property(&audio, "duration").as_f64()?;
            (d > 1.0).then_some(d)
        });
        assert!(seconds < 60.0, "recording of {seconds} s");
        b.stop("11-call-recording");
        names.extend([
            "9-live-call",
            "10-real-call-in-history",
            "11-call-recording",
        ]);
    }

    // Try it, heard: a chat reply spoken in the flow's voice, played in the page (a blob from
    // POST /api/test/say with the token); then a voice to try, then one out of range.
    b.click("#nav-try");
    b.click("#chat-reset");
    b.type_into(
        "#chat-input",
        &format!("what are your opening hours{ENTER}"),
    );
    b.wait_text("#chat-log", "opening_hours");
    let before = audio_src(&b);
    b.click("#chat-log .said.reply button[aria-label=\"Play reply\"]");
    let seconds = wait_played(&b, &before, "the chat reply");
    let note = b.wait_text("#chat-log .said.reply .say-note", "synthesised in");
    assert!(
        note.contains("voice default/1.00/+0.0") && note.contains("flow support"),
        "{note} ({seconds:.2} s of audio)"
    );
    // The box starts from the flow's own voice (the shipped flow's [voice]: the defaults).
    let speed = b.find("#say-speed");
    assert_eq!(b.property(&speed, "value"), "1");
    assert_eq!(b.property(&b.find("#say-gain"), "value"), "0");
    assert_eq!(b.property(&b.find("#say-engine"), "value"), "");
    assert!(
        !b.property(&b.find("#say-text"), "value")
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "the text to say is prefilled"
    );
    b.clear(&speed);
    b.type_into("#say-speed", "1.5");
    b.clear(&b.find("#say-gain"));
    b.type_into("#say-gain", "-6");
    let before = audio_src(&b);
    b.click("#say-play");
    let tried = wait_played(&b, &before, "the voice tried");
    let status = b.wait_text("#say-status", "synthesised in");
    assert!(
        status.contains("voice default/1.50/-6.0") && status.contains("spoken by neural"),
        "{status} ({tried:.2} s of audio; is the neural voice provisioned?)"
    );
    assert!(
        status.contains("1.50") && status.contains("-6.0"),
        "{status}"
    );
    b.resize(1280, 1700);
    b.stop("12-try-voice");
    b.resize(1280, 1000);
    b.clear(&b.find("#say-speed"));
    b.type_into("#say-speed", "5");
    b.click("#say-play");
    let refused = b.wait_text("#say-status", "voice.speed");
    assert!(refused.contains("HTTP 422"), "{refused}");
    assert!(refused.contains("outside 0.5..=2"), "{refused}");
    let errors = b.console_errors();
    assert!(
        errors.is_empty(),
        "after the 422: console errors: {errors:#?}"
    );
    assert_eq!(
        b.property(&b.find("#say-play"), "disabled"),
        false,
        "Play is enabled again after the answer"
    );
    names.push("12-try-voice");

    for name in names {
        let png = std::fs::read(shots.join(format!("{name}.png"))).expect("screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}");
        assert!(png.len() > 5_000, "{name}.png is nearly empty");
    }
    let mut gateway = gateway;
    assert!(gateway.alive(), "the gateway died");
    eprintln!(
        "admin console test: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}

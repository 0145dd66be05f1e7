//! "Call this flow" from the admin console, in a real browser: headless Chromium with a fake
//! microphone that plays espeak-ng speech ("Hello, I would like to know where my order is.")
//! calls the support flow over WebRTC (the WHIP route, the edge, the gateway's own pipeline),
//! against the real `voicebot serve` with its models. (A sentence, not three words: the test
//! is about the call path, and "Hi, where is my order?" was once heard as "where is my arm"
//! on a loaded machine.)
//!
//! Checked: the page's live view shows the caller's turn with its intent (order_status); the
//! audio the page received (recorded in the page with WebAudio, offered as a WAV download),
//! transcribed by our own ASR, holds the bot's question for the order number; after "Hang up"
//! the page links the call in the history, which has it (flow, turn, intent); a call with a
//! token the gateway refuses is explained on the page in plain words. Every wait is
//! bounded. Skipped when Chromium, chromedriver, espeak-ng or sox is missing, unless
//! VOICEBOT_REQUIRE_PEERS is set. Screenshots go to the test's temporary directory, or to
//! `$VOICEBOT_CONSOLE_SCREENSHOTS`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::admin::{http_client, HttpGateway};
use common::browser::{base64_decode, runs, Browser, Driver};
use common::{peer_available, root, spoken_wav, transcribe_recording};

const ADMIN_TOKEN: &str = "webrtc-console-admin-token-0123456789";
/// Silence before the caller speaks: the call connects and the greeting (about 11 s) plays
/// meanwhile, so the caller does not talk over it (the fake microphone starts when the page
/// asks for it, just before the call is placed).
const LEAD_S: &str = "16";
/// Silence after: Chromium loops the file, and the test is over long before it would repeat.
const TAIL_S: &str = "90";

/// Waits for `probe`, at most `limit` (a failure shows the call card).
fn wait_for<T>(b: &Browser, what: &str, limit: Duration, probe: impl FnMut() -> Option<T>) -> T {
    b.wait_within(what, limit, "#call-card", probe)
}

/// The text of `css` now ("" when absent).
fn text_of(b: &Browser, css: &str) -> String {
    b.try_find(css).map(|e| b.text(&e)).unwrap_or_default()
}

/// A number from the call card's data attributes (what the page hears).
fn card_number(b: &Browser, key: &str) -> Option<f64> {
    let v = b.execute(
        "const c = document.getElementById('call-card'); return c ? (c.dataset[arguments[0]] || null) : null;",
        json!([key]),
    );
    v.as_str().and_then(|s| s.parse().ok())
}

/// The caller's microphone: espeak-ng speech as 16-bit PCM mono WAV (what Chromium's fake
/// capture reads: it converts the rate itself), with silence around it.
fn caller_wav(dir: &Path) -> PathBuf {
    let speech = spoken_wav(
        dir,
        "caller-speech",
        "Hello, I would like to know where my order is.",
    );
    let wav = dir.join("caller.wav");
    let status = Command::new("sox")
        .arg(&speech)
        .args(["-r", "48000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(&wav)
        .args(["pad", LEAD_S, TAIL_S])
        .status()
        .expect("sox");
    assert!(status.success(), "sox could not pad the caller's speech");
    wav
}

/// The support flow: an order-status question makes the bot ask for the order number.
fn write_config(dir: &Path) -> PathBuf {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("mkdir");
    std::fs::write(
        flows.join("support.toml"),
        format!(
            "name = \"support\"\n\
             description = \"Support line (browser call test)\"\n\
             numbers = [\"support\"]\n\
             intents = \"{}\"\n\
             prompts = \"{}\"\n",
            root().join("sip-config/intents.toml").display(),
            root().join("prompts/en.toml").display(),
        ),
    )
    .expect("flow");
    let config = dir.join("gateway.toml");
    let text = format!(
        "[flows]\ndir = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-webrtc-console-token\"\n\
         feedback_database = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\nadmin_token_env = \"\"\n\
         admin_token_file = \"{}\"\nhistory_database = \"{}\"\n\
         [webrtc]\nenabled = true\n",
        flows.display(),
        dir.join("feedback.sqlite3").display(),
        dir.join("admin-token").display(),
        dir.join("history.sqlite3").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

#[test]
fn call_a_flow_from_the_console_in_headless_chromium() {
    let have = runs("chromium") && runs("chromedriver");
    if !peer_available(
        "chromium with chromedriver",
        have,
        "apt-get install chromium chromium-driver",
    ) || !peer_available(
        "espeak-ng and sox",
        runs("espeak-ng") && runs("sox"),
        "apt-get install espeak-ng sox",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let shots = std::env::var_os("VOICEBOT_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let config = write_config(dir.path());
    let mic = caller_wav(dir.path());

    let gateway = HttpGateway::start(&config, "46800-46899", 1, Duration::from_secs(120));
    let driver = Driver::start(&dir.path().join("chromedriver.log"));
    let extra = [
        "--use-fake-ui-for-media-stream".to_string(),
        "--use-fake-device-for-media-stream".to_string(),
        format!("--use-file-for-fake-audio-capture={}", mic.display()),
        "--autoplay-policy=no-user-gesture-required".to_string(),
    ];
    let b = Browser::open_with(&driver, &dir.path().join("profile"), shots.clone(), &extra);
    let console = format!("{}/admin", gateway.base);

    b.goto(&console);
    b.type_into("#token", ADMIN_TOKEN);
    b.click("#login-button");
    b.wait_text("#flow-list", "support");
    // The flow's page offers the call too.
    b.click("a.flow-link[data-flow=\"support\"]");
    b.wait_text("#call-card", "Call this flow");
    b.find("#call-start");

    // Call from Try it.
    b.click("#nav-try");
    b.select("#try-flow", "support");
    b.click("#call-start");
    wait_for(&b, "the call to connect", Duration::from_secs(30), || {
        let state = text_of(&b, "#call-state");
        let error = text_of(&b, "#call-error");
        assert!(error.is_empty(), "the call failed: {error}");
        state.starts_with("connected").then_some(())
    });

    // The caller's turn and its decision, live.
    let log = wait_for(
        &b,
        "the caller's turn with its intent",
        Duration::from_secs(60),
        || {
            let log = text_of(&b, "#call-log");
            log.contains("order_status").then_some(log)
        },
    );
    assert!(log.to_lowercase().contains("order"), "{log}");
    let reply = log.to_lowercase();
    assert!(
        reply.contains("order number"),
        "the reply asks for it: {log}"
    );
    // The bot's question reaches the page: more speech received after the turn, then quiet.
    let before = card_number(&b, "receivedVoiceS").unwrap_or(0.0);
    wait_for(
        &b,
        "the bot's question to be heard to its end",
        Duration::from_secs(40),
        || {
            let voiced = card_number(&b, "receivedVoiceS")?;
            let quiet = card_number(&b, "quietS")?;
            (voiced > before + 1.5 && quiet > 1.0).then_some(())
        },
    );
    b.stop("webrtc-1-in-call");

    // Hang up: the page links the call in the history and offers what it received.
    b.click("#call-hangup");
    let link = wait_for(&b, "the history link", Duration::from_secs(30), || {
        b.try_find("#call-history-link")
    });
    let href = b
        .property(&link, "href")
        .as_str()
        .unwrap_or_default()
        .to_string();
    let sip_call_id = href
        .split("#/calls/")
        .nth(1)
        .map(|s| {
            b.execute("return decodeURIComponent(arguments[0]);", json!([s]))
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|| panic!("no call id in {href}"));
    assert!(!sip_call_id.is_empty(), "{href}");
    assert!(
        text_of(&b, "#call-state").starts_with("call ended"),
        "{}",
        text_of(&b, "#call-state")
    );

    // The received audio, as the page offers it for download.
    b.find("#call-received");
    b.execute(
        "const blob = document.getElementById('call-received').wav;\n\
         blob.arrayBuffer().then((buf) => {\n\
           const bytes = new Uint8Array(buf);\n\
           let s = '';\n\
           for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));\n\
           window.receivedWav = btoa(s);\n\
         });",
        json!([]),
    );
    let b64 = wait_for(&b, "the received WAV", Duration::from_secs(20), || {
        b.execute("return window.receivedWav || null;", json!([]))
            .as_str()
            .map(str::to_string)
    });
    let wav = dir.path().join("received.wav");
    std::fs::write(&wav, base64_decode(&b64)).expect("write the received WAV");
    let heard = transcribe_recording(&wav);
    assert!(
        heard.contains("order number"),
        "the bot's question is not in what the page received: {heard:?}"
    );
    b.stop("webrtc-2-hung-up");

    // The call is in the history like any other.
    let http = http_client(Duration::from_secs(10));
    let mut r = http
        .get(format!(
            "{}/api/calls/{}",
            gateway.base,
            urlencode(&sip_call_id)
        ))
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .expect("GET /api/calls/{id}");
    assert_eq!(r.status(), 200, "the call is in the history");
    let detail: Value = r.body_mut().read_json().expect("JSON");
    assert_eq!(detail["record"]["flow"], "support", "{detail:#}");
    assert_eq!(
        detail["record"]["turns"][0]["intent"], "order_status",
        "{detail:#}"
    );
    b.click("#call-history-link");
    b.wait_text("main", "order_status");
    b.stop("webrtc-3-history");

    // A refused call is explained on the page: here the token (as after a token rotation).
    b.click("#nav-try");
    b.find("#call-start");
    b.execute("token = 'not-the-admin-token';", json!([]));
    b.click("#call-start");
    let refused = wait_for(&b, "the refusal", Duration::from_secs(20), || {
        let error = text_of(&b, "#call-error");
        (!error.is_empty()).then_some(error)
    });
    assert!(refused.contains("The admin token was refused"), "{refused}");
    assert!(
        b.try_find("#call-history-link").is_none(),
        "no call, no link"
    );
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

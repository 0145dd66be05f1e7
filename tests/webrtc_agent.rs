//! The agent screen's softphone end to end: a SIP caller (PJSIP's pjsua2, `tests/pjsua/
//! caller.py`, recording what it hears) escalates to a team whose extensions are two browser
//! agents, `webrtc:bob` (not logged in) and `webrtc:alice`; headless Chromium, logged in to the
//! agent screen as alice through its login form, with a fake microphone that says a known
//! sentence (espeak-ng), rings at once (bob counts as not answering: 480, no ring timeout),
//! shows the hand-over context while it rings, answers over WebRTC through the gateway's edge,
//! and hangs up once the caller has spoken to it; the bot then takes the caller back.
//!
//! Audio is checked both ways with the project's own ASR: the page's recording of what it
//! received (WebAudio, fetched as WAV) holds the caller's words; the caller's recording holds
//! the agent's, and the gateway transcribed the agent's browser audio into the call's record.
//! Every wait is bounded. Skipped when Chromium, chromedriver or pjsua2 is missing, unless
//! VOICEBOT_REQUIRE_PEERS is set. Screenshots go to the test's temporary directory, or to
//! `$VOICEBOT_AGENT_SCREENSHOTS`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::admin::{http_client, HttpGateway};
use common::browser::{base64_decode, runs, Browser, Driver};
use common::{call_over, peer_available, pjsua_python, spoken_wav, transcribe_recording};

const AGENT_TOKEN: &str = "agent-phone-token-0123456789";
const ADMIN_TOKEN: &str = "agent-phone-admin-token-0123456789";

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        "[sip]\nreport_dir = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"{AGENT_TOKEN}\"\n\
         feedback_database = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\nadmin_token_env = \"\"\n\
         admin_token_file = \"{}\"\nhistory_database = \"{}\"\n\
         [handover.transfer]\nring_timeout_s = 20\nwhisper = true\nafter_agent_hangup = \"bot\"\n\
         [handover.transfer.teams]\ndefault = [\"webrtc:bob\", \"webrtc:alice\"]\n",
        dir.join("records").display(),
        dir.join("feedback.sqlite3").display(),
        dir.join("admin-token").display(),
        dir.join("history.sqlite3").display(),
    );
    std::fs::create_dir_all(dir.join("records")).expect("records dir");
    std::fs::write(&config, text).expect("config");
    config
}

/// `text` spoken after `lead_s` of silence, then `tail_s` of silence: Chromium loops its fake
/// microphone's file, so the tail keeps the agent quiet for the rest of the call.
fn microphone_wav(dir: &Path, text: &str, lead_s: u32, tail_s: u32) -> PathBuf {
    let speech = spoken_wav(dir, "agent-speech", text);
    let wav = dir.join("agent-microphone.wav");
    let status = Command::new("sox")
        .arg(&speech)
        .arg(&wav)
        .args(["pad", &lead_s.to_string(), &tail_s.to_string()])
        .status()
        .expect("sox");
    assert!(status.success());
    wav
}

/// Waits for `probe`, at most `limit` (a failure shows the page).
fn wait_for<T>(b: &Browser, what: &str, limit: Duration, probe: impl FnMut() -> Option<T>) -> T {
    b.wait_within(what, limit, "body", probe)
}

/// The texts of the page's transcript rows said by `speaker`, in the hand-over cards.
fn lines_by(b: &Browser, speaker: &str) -> Vec<String> {
    let v = b.execute(
        "return [...document.querySelectorAll('#calls td.who')]\
           .filter((td) => td.textContent === arguments[0])\
           .map((td) => td.nextElementSibling ? td.nextElementSibling.textContent : '');",
        json!([speaker]),
    );
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_lowercase))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a transcript has the caller's "My order number is 4 4 7 1" (the tiny model may
/// miss a word or two, but not both the words and the digits).
fn said_order(text: &str) -> bool {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    text.contains("order") || digits.contains("447")
}

/// Root mean square of a 16-bit WAV's samples (0..1).
fn rms(path: &Path) -> f64 {
    let wav = voicebot_gateway::audio::wav::read_wav(path).expect("wav");
    let s = &wav.audio.samples;
    if s.is_empty() {
        return 0.0;
    }
    (s.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>() / s.len() as f64).sqrt()
}

#[test]
fn a_browser_agent_answers_an_escalated_sip_call_and_hands_it_back_to_the_bot() {
    let have = runs("chromium") && runs("chromedriver");
    if !peer_available(
        "chromium with chromedriver",
        have,
        "apt-get install chromium chromium-driver",
    ) {
        return;
    }
    let Some(python) = pjsua_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let shots = std::env::var_os("VOICEBOT_AGENT_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| d.join("screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let config = write_config(d);
    let gateway = HttpGateway::start(&config, "49100-49199", 1, Duration::from_secs(120));
    let http = http_client(Duration::from_secs(10));

    // The agent's microphone: quiet while the whisper plays to the agent, then a greeting.
    let mic = microphone_wav(
        d,
        "Hello, this is Alice. Give me a minute to check your account.",
        9,
        90,
    );
    let driver = Driver::start(&d.join("chromedriver.log"));
    let b = Browser::open_with(
        &driver,
        &d.join("profile"),
        shots.clone(),
        &[
            "--use-fake-ui-for-media-stream".into(),
            "--use-fake-device-for-media-stream".into(),
            format!("--use-file-for-fake-audio-capture={}", mic.display()),
            "--autoplay-policy=no-user-gesture-required".into(),
        ],
    );

    // Log in: a bad name and a wrong token are refused on the page, then alice logs in.
    b.goto(&format!("{}/agent", gateway.base));
    b.type_into("#login-agent", "al ice");
    b.type_into("#login-token", AGENT_TOKEN);
    b.click("#login-button");
    b.wait_text("#login-error", "agent name");
    b.clear(&b.find("#login-agent"));
    b.type_into("#login-agent", "alice");
    b.clear(&b.find("#login-token"));
    b.type_into("#login-token", "not-the-token");
    b.click("#login-button");
    b.wait_text("#login-error", "wrong token");
    b.clear(&b.find("#login-token"));
    b.type_into("#login-token", AGENT_TOKEN);
    b.click("#login-button");
    b.wait_text("#phone-status", "alice · phone ready");
    let mut r = http
        .get(format!("{}/agent/phone/agents", gateway.base))
        .header("Authorization", format!("Bearer {AGENT_TOKEN}"))
        .call()
        .expect("GET /agent/phone/agents");
    let listed: Value = r.body_mut().read_json().expect("JSON");
    assert_eq!(
        listed,
        json!({"agents": [{"agent": "alice", "screens": 1}]})
    );
    b.stop("logged-in");

    // The caller: asks to cancel (escalates), waits through the hand-over and the agent's
    // greeting, gives the order number (to the agent), and once back with the bot asks for the
    // opening hours.
    let cancel = spoken_wav(d, "cancel", "I want to cancel my subscription.");
    let order = spoken_wav(d, "order", "My order number is 4 4 7 1.");
    let hours = spoken_wav(d, "hours", "What are your opening hours?");
    let record = d.join("caller.wav");
    let caller = {
        let (python, record) = (python.clone(), record.clone());
        let port = gateway.sip_port;
        let turns = vec![
            format!("say:{}", cancel.display()),
            "pause:0".into(),
            format!("say:{}", order.display()),
            format!("say:{}", hours.display()),
        ];
        std::thread::spawn(move || {
            call_over(
                &python,
                port,
                "udp",
                &record,
                &turns,
                &["--speaking-level", "20", "--first-wait", "30"],
            )
        })
    };

    // It rings on alice's screen, with the context, well within the ring timeout (20 s)
    // after the hand-over shows: bob, not logged in, was passed over at once.
    wait_for(
        &b,
        "the hand-over on the page",
        Duration::from_secs(90),
        || b.try_find("#calls .call"),
    );
    let escalated = Instant::now();
    let ring = wait_for(&b, "the ring", Duration::from_secs(15), || {
        let ring = b.execute("return window.agentPhone.ring();", json!([]));
        (b.execute("return window.agentPhone.state();", json!([])) == "ringing").then_some(ring)
    });
    println!("rang {:?} after the hand-over showed", escalated.elapsed());
    let class = b.property(&b.find("#phone"), "className");
    assert_eq!(class, "ringing", "the screen rings visibly");
    assert_eq!(ring["agent"], "alice", "{ring}");
    let call_id = ring["call_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the ring names the call: {ring}"))
        .to_string();
    let mut r = http
        .get(format!("{}/calls/{call_id}/context", gateway.base))
        .header("Authorization", format!("Bearer {AGENT_TOKEN}"))
        .call()
        .expect("GET context");
    let context: Value = r.body_mut().read_json().expect("context JSON");
    let summary = context["summary"].as_str().unwrap_or("").to_string();
    assert!(!summary.is_empty(), "{context}");
    let first_line = summary.lines().next().unwrap_or("").trim().to_string();
    b.wait_text("#phone-summary", &first_line);
    let shown = b.text(&b.find("#phone-context")).to_lowercase();
    assert!(shown.contains("cancel"), "the transcript shows: {shown}");
    b.stop("ringing");

    // Answer: the microphone, WebRTC through the edge; the call is up.
    let callers_before = lines_by(&b, "caller").len();
    b.click("#answer");
    wait_for(&b, "the call to connect", Duration::from_secs(20), || {
        (b.execute("return window.agentPhone.state();", json!([])) == "in_call").then_some(())
    });
    b.find("#hangup");
    b.stop("in-call");

    // The gateway transcribes both sides live onto the page: the agent's greeting (the
    // browser's audio reached the gateway), then the caller speaking to the agent.
    let agent_said = wait_for(
        &b,
        "the agent's words on the page",
        Duration::from_secs(60),
        || {
            let lines = lines_by(&b, "agent");
            (!lines.is_empty()).then(|| lines.join(" | "))
        },
    );
    let caller_said = wait_for(
        &b,
        "the caller's words to the agent on the page",
        Duration::from_secs(60),
        || {
            let lines = lines_by(&b, "caller");
            (lines.len() > callers_before).then(|| lines[callers_before..].join(" | "))
        },
    );
    println!("page: agent said {agent_said:?}; caller said {caller_said:?}");
    b.stop("talking");

    // Hang up; the page stops the call, and what it heard is the caller (and the whisper).
    b.click("#hangup");
    wait_for(&b, "the phone to be idle", Duration::from_secs(10), || {
        (b.execute("return window.agentPhone.state();", json!([])) == "idle").then_some(())
    });
    let seconds = b
        .execute("return window.agentPhone.receivedSeconds();", json!([]))
        .as_f64()
        .unwrap_or(0.0);
    let wav64 = b.execute("return window.agentPhone.receivedWav();", json!([]));
    let page_wav = d.join("agent-received.wav");
    std::fs::write(&page_wav, base64_decode(wav64.as_str().unwrap_or(""))).expect("write wav");
    let level = rms(&page_wav);
    let heard_by_agent = transcribe_recording(&page_wav);
    println!("agent page received {seconds:.1} s, rms {level:.4}: {heard_by_agent:?}");
    assert!(seconds > 5.0, "{seconds} s received");
    assert!(level > 0.005, "the page received silence (rms {level})");
    // The whisper first ("Voice bot transfer: the caller wants to cancel ..."), then the
    // caller's own words.
    assert!(
        heard_by_agent.contains("transfer") || heard_by_agent.contains("cancel"),
        "no whisper: {heard_by_agent}"
    );
    assert!(said_order(&heard_by_agent), "{heard_by_agent}");
    b.stop("hung-up");

    // The caller: heard the agent, then the bot again, which answered the new question.
    let summary = caller.join().expect("caller thread");
    println!("caller: {summary}");
    assert_eq!(summary["connected"], true, "{summary}");
    let heard_by_caller = transcribe_recording(&record);
    println!("caller heard: {heard_by_caller:?}");
    // Words the bot never says (its prompts have none of them): the agent's.
    assert!(
        ["alice", "minute", "account"]
            .iter()
            .any(|w| heard_by_caller.contains(w)),
        "the caller did not hear the agent: {heard_by_caller}"
    );
    assert!(
        heard_by_caller.contains("anything else"),
        "{heard_by_caller}"
    );

    // The call's record: alice took the call (bridged), the bot took the caller back.
    let records = wait_records(&d.join("records"), Duration::from_secs(40));
    let rec = &records[0];
    let t = &rec["transfer"];
    println!("transfer: {t}");
    assert_eq!(t["outcome"], "returned_to_bot", "{rec}");
    assert_eq!(t["mode"], "bridge", "{t}");
    assert_eq!(t["agent"], "webrtc:alice", "{t}");
    assert!(t["packets_from_agent"].as_u64().unwrap_or(0) > 100, "{t}");
    assert!(t["packets_to_agent"].as_u64().unwrap_or(0) > 100, "{t}");
    let intents: Vec<&str> = rec["turns"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["intent"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(intents.last(), Some(&"opening_hours"), "{intents:?}");
}

/// The call records in `dir`, waiting (at most `wait`) for one.
fn wait_records(dir: &Path, wait: Duration) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let found: Vec<Value> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            assert!(!found.is_empty(), "no call record in {}", dir.display());
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

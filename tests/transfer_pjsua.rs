//! Warm transfer with full SIP user agents on both sides, PJSIP through pjsua2 on loopback: a
//! caller (`tests/pjsua/caller.py`) that speaks WAVs and does what a phone does with a REFER,
//! and agent phones (`tests/pjsua/agent.py`) that answer, record what they hear, greet, accept
//! a call that replaces another (RFC 3891), and may hang up. Recordings are transcribed with
//! the project's own ASR, so what is checked is what a person on each side would hear.
//!
//! * Bridge mode with a whisper: the agent hears a spoken summary naming the cancellation
//!   before the caller is put through; caller and agent then talk through the gateway, both
//!   sides are transcribed live into the hand-over context, the caller's later words reach the
//!   agent's recording; the agent hangs up and the bot takes the caller back and answers a new
//!   question.
//! * Attended: the gateway calls the agent, then REFERs the caller with `Replaces`; the
//!   caller's phone replaces our call with its own, the gateway leaves, and the caller talks to
//!   the agent directly.
//! * Blind: the first extension is busy, so the caller's phone reports 486 in its NOTIFY; the
//!   gateway REFERs it to the next extension, which answers.
//!
//! Without pjsua2 these tests say so and pass, unless VOICEBOT_REQUIRE_PEERS is set.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

mod common;

use common::webhook::{check_signature, events, webhook_receiver, Delivery, SECRET};
use common::{
    call_over, free_udp_port, pjsua_python, root, spoken_wav, transcribe_recording, Gateway,
};

/// One transfer at a time: each runs a gateway with whisper (transcribing both legs) and three
/// PJSIP processes, which is all 2 cores can carry without starving the media tasks.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A gateway configuration: `transfer` goes into `[handover.transfer]`, `extensions` is the
/// default team's list (TOML values).
fn config(dir: &Path, transfer: &str, extensions: &[String], webhook_port: u16) -> String {
    let path = dir.join("gateway.toml");
    let text = format!(
        "[handover.transfer]\nring_timeout_s = 15\n{transfer}\n\
         [handover.transfer.teams]\ndefault = [{}]\n\
         [handover.webhook]\nurl = \"http://127.0.0.1:{webhook_port}/hooks\"\n\
         secret = \"{SECRET}\"\ninitial_backoff_ms = 100\ndatabase = \"{}\"\n",
        extensions.join(", "),
        dir.join("outbox.sqlite3").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// A pjsua2 agent phone on `port`, started and listening.
struct AgentPhone {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl AgentPhone {
    fn start(python: &Path, dir: &Path, port: u16, extra: &[&str]) -> AgentPhone {
        let recording = dir.join(format!("agent-{port}.wav"));
        let mut child = Command::new("timeout")
            .arg("150")
            .arg(python)
            .arg(root().join("tests/pjsua/agent.py"))
            .args(["--port", &port.to_string(), "--timeout", "120"])
            .arg("--record")
            .arg(&recording)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the pjsua2 agent");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        // pjlib may print its own lines first.
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("agent did not start: {seen:?}");
            }
            if line.starts_with("{\"ready\"") {
                break;
            }
            seen.push_str(&line);
        }
        AgentPhone { child, stdout }
    }

    /// Waits for the agent to finish; its summary.
    fn finish(mut self) -> serde_json::Value {
        let mut out = String::new();
        let mut line = String::new();
        while self.stdout.read_line(&mut line).unwrap_or(0) > 0 {
            out.push_str(&line);
            line.clear();
        }
        let _ = self.child.wait();
        let last = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no summary from the agent: {out:?}"));
        serde_json::from_str(last).expect("agent summary is JSON")
    }
}

/// The `heard` spans of an agent call summary, as (start, end) seconds after the answer.
fn spans(heard: &serde_json::Value) -> Vec<(f64, f64)> {
    heard
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| Some((s[0].as_f64()?, s[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The webhook event of `kind` (exactly one), signature checked.
fn one_event(got: &std::sync::Arc<Mutex<Vec<Delivery>>>, kind: &str) -> serde_json::Value {
    let found = events(got, kind, Duration::from_secs(20));
    assert_eq!(found.len(), 1, "{kind} events: {found:?}");
    check_signature(&found[0]);
    found[0].json()
}

/// Whether a transcript has the caller's "My order number is 4 4 7 1" (the tiny model may
/// miss a word or two, but not both the words and the digits).
fn said_order(text: &str) -> bool {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    text.contains("order") || digits.contains("447")
}

#[test]
fn bridged_with_a_whisper_both_sides_transcribed_and_the_bot_takes_the_caller_back() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hook_port, got) = webhook_receiver();
    let agent_port = free_udp_port();
    let cfg = config(
        d,
        "whisper = true\nafter_agent_hangup = \"bot\"",
        &[format!("\"sip:agent@127.0.0.1:{agent_port}\"")],
        hook_port,
    );
    let gw = Gateway::start("47000-47099", &["--config", &cfg]);
    let hello = spoken_wav(
        d,
        "hello",
        "Hello, this is Anna from billing. How can I help you?",
    );
    let greet = hello.display().to_string();
    let agent = AgentPhone::start(
        &python,
        d,
        agent_port,
        &[
            "--answer-after",
            "1",
            "--greet",
            &greet,
            "--greet-after",
            "9",
            "--hangup-after",
            "24",
        ],
    );
    let cancel = spoken_wav(d, "cancel", "I want to cancel my subscription.");
    let order = spoken_wav(d, "order", "My order number is 4 4 7 1.");
    let hours = spoken_wav(d, "hours", "What are your opening hours?");
    let record = d.join("caller.wav");
    let summary = call_over(
        &python,
        gw.port,
        "udp",
        &record,
        &[
            // After the announcement, the agent's greeting, then the bot's "you are back".
            format!("say:{}", cancel.display()),
            "pause:0".into(),
            format!("say:{}", order.display()),
            format!("say:{}", hours.display()),
        ],
        // The quiet hold tone is not someone speaking.
        &["--speaking-level", "20", "--first-wait", "15"],
    );
    let agent = agent.finish();
    println!("caller: {summary}\nagent: {agent}");
    assert_eq!(summary["connected"], true, "{summary}");

    // The agent's phone got the context headers, heard the whisper naming the cancellation,
    // then the caller's own words.
    let calls = agent["calls"].as_array().expect("agent calls");
    assert_eq!(calls.len(), 1, "{agent}");
    assert!(
        calls[0]["headers"]["x-voicebot-call-id"].is_string(),
        "{agent}"
    );
    // The whisper is the first thing the agent hears, from the answer on and about as long
    // as the gateway says it played (its words are checked below, from the transfer record:
    // the tiny model mishears synthetic speech over G.711 too often to check them here);
    // then the caller's own words.
    let records = gw.records(1, Duration::from_secs(40));
    let r = &records[0];
    let t = &r["transfer"];
    let whisper_ms = t["whisper_ms"].as_f64().unwrap_or(0.0);
    let heard = spans(&calls[0]["heard"]);
    assert!(heard.len() >= 2, "{agent}");
    let (start, end) = heard[0];
    assert!(start < 1.5, "whisper heard from {start} s: {agent}");
    assert!(
        (end - start) * 1000.0 >= 0.6 * whisper_ms,
        "whisper heard {start}..{end} s, played {whisper_ms} ms: {agent}"
    );
    let heard_by_agent = transcribe_recording(Path::new(agent["recording"].as_str().unwrap()));
    assert!(said_order(&heard_by_agent), "{heard_by_agent}");
    // The caller heard the agent, then the bot again, which answered the new question.
    let heard_by_caller = transcribe_recording(&record);
    assert!(heard_by_caller.contains("help"), "{heard_by_caller}");
    assert!(
        heard_by_caller.contains("anything else"),
        "{heard_by_caller}"
    );

    assert_eq!(t["outcome"], "returned_to_bot", "{r}");
    assert_eq!(t["mode"], "bridge", "{t}");
    assert!(
        t["whisper"].as_str().unwrap_or("").contains("cancel"),
        "{t}"
    );
    assert!(t["whisper_ms"].as_f64().unwrap_or(0.0) > 1000.0, "{t}");
    let after: Vec<String> = r["after_handover"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l["text"].to_string().to_lowercase())
                .collect()
        })
        .unwrap_or_default();
    assert!(after.iter().any(|l| said_order(l)), "{r}");
    let intents: Vec<&str> = r["turns"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["intent"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        intents.last(),
        Some(&"opening_hours"),
        "{intents:?} {} {}",
        r["turns"],
        r["after_handover"]
    );

    // The final context has both sides of the conversation after the hand-over.
    let returned = one_event(&got, "returned_to_bot");
    assert!(returned["data"]["agent"].is_string(), "{returned}");
    let ended = one_event(&got, "call_ended");
    let transcript = ended["data"]["transcript"].as_array().expect("transcript");
    let said_by = |speaker: &str| -> String {
        transcript
            .iter()
            .filter(|l| l["speaker"] == speaker)
            .map(|l| l["text"].as_str().unwrap_or("").to_lowercase())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let agent_lines = said_by("agent");
    assert!(
        agent_lines.contains("help") || agent_lines.contains("billing"),
        "agent lines: {agent_lines}"
    );
    assert!(said_order(&said_by("caller")), "{}", said_by("caller"));
    println!(
        "answer -> caller's audio to the agent {} ms (after the whisper), -> caller hears the \
         agent {} ms",
        t["answer_to_bridge_ms"], t["answer_to_put_through_ms"]
    );
}

#[test]
fn attended_transfer_the_callers_phone_replaces_our_call_with_the_agent() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hook_port, got) = webhook_receiver();
    let agent_port = free_udp_port();
    let cfg = config(
        d,
        "",
        &[format!(
            "{{ uri = \"sip:agent@127.0.0.1:{agent_port}\", mode = \"attended\" }}"
        )],
        hook_port,
    );
    let gw = Gateway::start("47100-47199", &["--config", &cfg]);
    let hello = spoken_wav(d, "hello", "Hello, billing team, how can I help?");
    let agent = AgentPhone::start(
        &python,
        d,
        agent_port,
        &[
            "--answer-after",
            "1",
            "--greet",
            &hello.display().to_string(),
            "--greet-wait",
            "3",
        ],
    );
    let cancel = spoken_wav(d, "cancel", "I want to cancel my subscription.");
    let order = spoken_wav(d, "order", "My order number is 4 4 7 1.");
    let record = d.join("caller.wav");
    let summary = call_over(
        &python,
        gw.port,
        "udp",
        &record,
        &[
            format!("say:{}", cancel.display()),
            "await-transfer:45".into(),
            format!("say:{}", order.display()),
        ],
        &[],
    );
    let agent = agent.finish();
    assert_eq!(summary["connected"], true, "{summary}");
    assert_eq!(summary["transferred"], true, "{summary}");
    assert!(
        summary["transfer"]["to"]
            .as_str()
            .unwrap_or("")
            .contains("?Replaces="),
        "{summary}"
    );

    // Our consultation call, then the caller's phone's call that replaced it.
    let calls = agent["calls"].as_array().expect("agent calls");
    assert_eq!(calls.len(), 2, "{agent}");
    assert!(
        calls[0]["headers"]["x-voicebot-call-id"].is_string(),
        "{agent}"
    );
    assert_eq!(calls[1]["replaced"], true, "{agent}");
    let heard_by_agent = transcribe_recording(Path::new(agent["recording"].as_str().unwrap()));
    assert!(said_order(&heard_by_agent), "{heard_by_agent}");

    let records = gw.records(1, Duration::from_secs(40));
    let r = &records[0];
    let t = &r["transfer"];
    assert_eq!(t["outcome"], "transferred", "{r}");
    assert_eq!(t["mode"], "attended", "{t}");
    assert_eq!(t["refer_status"], 200, "{t}");
    assert!(
        t["refer_to"].as_str().unwrap_or("").contains("?Replaces="),
        "{t}"
    );
    assert_eq!(r["ended_by"], "transferred", "{r}");
    let transferred = one_event(&got, "transferred");
    assert_eq!(transferred["data"]["mode"], "attended");
}

#[test]
fn blind_transfer_moves_on_when_the_first_extension_is_busy() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hook_port, got) = webhook_receiver();
    let (busy_port, agent_port) = (free_udp_port(), free_udp_port());
    let cfg = config(
        d,
        "mode = \"blind\"",
        &[
            format!("\"sip:busy@127.0.0.1:{busy_port}\""),
            format!("\"sip:agent@127.0.0.1:{agent_port}\""),
        ],
        hook_port,
    );
    let gw = Gateway::start("47200-47299", &["--config", &cfg]);
    let busy = AgentPhone::start(&python, d, busy_port, &["--reject", "486"]);
    let agent = AgentPhone::start(&python, d, agent_port, &["--answer-after", "1"]);
    let cancel = spoken_wav(d, "cancel", "I want to cancel my subscription.");
    let order = spoken_wav(d, "order", "My order number is 4 4 7 1.");
    let record = d.join("caller.wav");
    let summary = call_over(
        &python,
        gw.port,
        "udp",
        &record,
        &[
            format!("say:{}", cancel.display()),
            "await-transfer:45".into(),
            format!("say:{}", order.display()),
        ],
        &["--first-wait", "6"],
    );
    let busy = busy.finish();
    let agent = agent.finish();
    assert_eq!(summary["transferred"], true, "{summary}");
    assert_eq!(busy["calls"][0]["last_code"], 486, "{busy}");
    let calls = agent["calls"].as_array().expect("agent calls");
    assert_eq!(calls.len(), 1, "{agent}");
    // The caller's phone called the agent itself (our context travels in the Refer-To).
    assert!(
        calls[0]["headers"]["from"]
            .as_str()
            .unwrap_or("")
            .contains("caller"),
        "{agent}"
    );
    // pjsua puts the Refer-To's headers on its INVITE: the agent gets our context token.
    assert!(
        calls[0]["headers"]["user-to-user"]
            .as_str()
            .unwrap_or("")
            .ends_with("purpose=voicebot-context"),
        "{agent}"
    );
    assert!(
        calls[0]["headers"]["x-voicebot-call-id"].is_string(),
        "{agent}"
    );
    let heard_by_agent = transcribe_recording(Path::new(agent["recording"].as_str().unwrap()));
    assert!(said_order(&heard_by_agent), "{heard_by_agent}");

    let records = gw.records(1, Duration::from_secs(40));
    let r = &records[0];
    let t = &r["transfer"];
    assert_eq!(t["outcome"], "transferred", "{r}");
    assert_eq!(t["mode"], "blind", "{t}");
    assert_eq!(t["attempts"][0]["outcome"], "transfer failed 486", "{t}");
    assert!(
        t["refer_to"]
            .as_str()
            .unwrap_or("")
            .contains("User-to-User="),
        "{t}"
    );
    let transferred = one_event(&got, "transferred");
    assert_eq!(
        transferred["data"]["agent"],
        format!("sip:agent@127.0.0.1:{agent_port}")
    );
}

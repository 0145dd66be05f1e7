//! `voicebot serve` called by a full SIP user agent, PJSIP through its Python binding pjsua2
//! (`tests/pjsua/caller.py`), on loopback. The caller speaks WAVs over real RTP and records
//! what the bot says; the test transcribes that recording with the project's own ASR, so the
//! round trip covers SIP, SDP negotiation with a UA offering many codecs, both RTP directions,
//! the jitter buffer, ASR, the dialog and TTS. A second call presses 0 (RFC 4733 telephone-event
//! from pjsua2's `dialDtmf`) and must reach the escalation policy.
//!
//! pjsua2 lives in a virtual environment made by scripts/deps.sh (default
//! ~/.cache/voicebot/venv; VOICEBOT_PJSUA_PYTHON names another interpreter).

mod common;

use std::path::Path;

use common::{call_over, natural_wav, pjsua_python, spoken_wav, transcribe_recording, Gateway};

/// One pjsua2 call at a time: each test runs a gateway with whisper and a PJSIP process, and
/// three at once on a 2-core machine starve the media tasks (late receive ticks make the
/// jitter buffer conceal, and recognition suffers), which is not what these tests measure.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the pjsua2 caller over UDP; returns its JSON summary.
fn call(python: &Path, port: u16, record: &Path, turns: &[String]) -> serde_json::Value {
    call_over(python, port, "udp", record, turns, &[])
}

/// A caller asks where their order is (`first` says how: `say` after the bot's turn, `say-now`
/// at once), after the turns in `before`, then gives the number; returns the caller's summary
/// and the recording of what it heard.
fn order_call(
    python: &Path,
    gw: &Gateway,
    dir: &Path,
    before: &[&str],
    first: &str,
) -> (serde_json::Value, std::path::PathBuf) {
    let q1 = spoken_wav(dir, "q1", "Where is my order?");
    let q2 = natural_wav(dir, "q2", "It is 4, 5, 7, 1, 2.");
    let record = dir.join("bot.wav");
    let mut turns: Vec<String> = before.iter().map(|t| t.to_string()).collect();
    turns.push(format!("{first}:{}", q1.display()));
    turns.push(format!("say:{}", q2.display()));
    let summary = call(python, gw.port, &record, &turns);
    (summary, record)
}

#[test]
fn pjsua_round_trip_where_is_my_order_then_the_number() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let mut gw = Gateway::start("41400-41499", &[]);
    let dir = tempfile::tempdir().unwrap();
    let (summary, record) = order_call(&python, &gw, dir.path(), &[], "say");
    assert_eq!(summary["connected"], true, "{summary}");
    assert!(summary.get("error").is_none(), "{summary}");

    // What the gateway decided.
    let records = gw.records(1, std::time::Duration::from_secs(40));
    assert_eq!(records.len(), 1, "one call record");
    let r = &records[0];
    let turns = r["turns"].as_array().expect("turns");
    assert!(turns.len() >= 2, "two caller turns heard: {r}");
    assert_eq!(turns[0]["intent"], "order_status", "{}", turns[0]);
    assert_eq!(turns[1]["slots"]["order_number"], "45712", "{}", turns[1]);
    // RTCP both ways: our sender reports out, pjsua's reports in (with its view of our stream).
    let rtp = &r["rtp"];
    assert!(rtp["rtcp_sent"].as_u64().unwrap_or(0) >= 2, "{rtp}");
    assert!(rtp["rtcp_received"].as_u64().unwrap_or(0) >= 2, "{rtp}");
    assert_eq!(rtp["remote_reported_lost"], 0, "{rtp}");

    // What the caller actually heard, through RTP and pjsua2's recorder.
    let heard = transcribe_recording(&record);
    assert!(
        heard.contains("order number"),
        "the bot asked for the number: {heard}"
    );
    assert!(
        heard.contains("shipped") || heard.contains("thursday"),
        "the bot said the order's status: {heard}"
    );
    assert!(gw.alive());
}

/// A caller who talks over the greeting is heard: the greeting stops (barge-in) and what they
/// said is the first turn, answered as any other.
#[test]
fn pjsua_speech_over_the_greeting_is_the_first_turn() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let mut gw = Gateway::start("44300-44399", &[]);
    let dir = tempfile::tempdir().unwrap();
    // 1.5 s into the greeting (about 9 s long), without waiting for the bot.
    let (summary, record) = order_call(&python, &gw, dir.path(), &["sleep:1.5"], "say-now");
    assert_eq!(summary["connected"], true, "{summary}");
    assert!(summary.get("error").is_none(), "{summary}");
    let records = gw.records(1, std::time::Duration::from_secs(40));
    assert_eq!(records.len(), 1, "one call record");
    let r = &records[0];
    let turns = r["turns"].as_array().expect("turns");
    assert!(
        !turns.is_empty(),
        "the words over the greeting were heard: {r}"
    );
    assert_eq!(turns[0]["intent"], "order_status", "{}", turns[0]);
    assert!(
        turns[0]["start_ms"].as_u64().is_some_and(|ms| ms < 5_000),
        "the first turn is the one said over the greeting: {}",
        turns[0]
    );
    assert!(
        turns.iter().any(|t| t["slots"]["order_number"] == "45712"),
        "the conversation went on: {r}"
    );
    let heard = transcribe_recording(&record);
    assert!(
        heard.contains("order number"),
        "the bot asked for the number: {heard}"
    );
    assert!(gw.alive());
}

#[test]
fn pjsua_dtmf_zero_reaches_the_escalation_policy() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let gw = Gateway::start("41500-41599", &[]);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("bot.wav");
    let summary = call(&python, gw.port, &record, &["dtmf:0".to_string()]);
    assert_eq!(summary["connected"], true, "{summary}");
    assert_eq!(
        summary["gateway_hung_up"], true,
        "the gateway ends the call after the announcement: {summary}"
    );
    let records = gw.records(1, std::time::Duration::from_secs(30));
    let r = &records[0];
    assert_eq!(r["dtmf"], serde_json::json!(["0"]), "RFC 4733 digit: {r}");
    assert_eq!(r["outcome"], "escalated", "{r}");
    assert_eq!(r["escalation"]["reason"], "dtmf0", "{r}");
}

#[test]
fn pjsua_over_tcp_after_the_idle_timer_the_gateway_bye_opens_a_new_connection() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // The silence below is for pjsip's idle timer, not for the bot: no re-prompts, no hand-over
    // for silence before the 0.
    let config = dir.path().join("quiet.toml");
    std::fs::write(&config, "[escalation]\nno_input_s = 0\n").expect("config");
    let gw = Gateway::start_with(Some(&config), "41600-41699", &[]);
    let record = dir.path().join("bot.wav");
    // Silent longer than pjsip's idle timer (it then closes its TCP connection), then 0: the
    // bot announces the handover and hangs up, and its BYE must open a new connection to the
    // caller's Contact to get there.
    let summary = call_over(
        &python,
        gw.port,
        "tcp",
        &record,
        &["pause:36".to_string(), "dtmf:0".to_string()],
        &["--await-hangup"],
    );
    assert_eq!(summary["connected"], true, "{summary}");
    assert_eq!(summary["gateway_hung_up"], true, "{summary}");
    let records = gw.records(1, std::time::Duration::from_secs(30));
    let r = &records[0];
    assert_eq!(r["ended_by"], "bot", "{r}");
    assert_eq!(r["outcome"], "escalated", "{r}");
    assert_eq!(r["dtmf"], serde_json::json!(["0"]), "{r}");
}

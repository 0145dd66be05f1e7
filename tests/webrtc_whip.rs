//! Browser calls end to end, without a browser: our own str0m client (full ICE, DTLS-SRTP,
//! Opus, over real UDP on loopback) posts its offer the WHIP way to a real `voicebot serve`,
//! hears the greeting, asks where its order is, and hears the bot ask for the order number
//! (transcribed by the project's ASR); the call is then in the history like a SIP call. Also
//! what bad requests get (no token, wrong type, malformed SDP, no Opus, unknown flow) and
//! that browser calls count against the same limit as SIP calls.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::admin::{http_client, HttpGateway};
use common::webrtc_client::{offer, post_offer, WebRtcCall};
use common::{spoken_wav, transcribe_recording};
use voicebot_gateway::audio::resample::resample_all;
use voicebot_gateway::audio::wav::{read_wav, write_wav, MonoAudio};

const ADMIN: &str = "whip-admin-token-0123456789";

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"whip-agent-token-0123456789\"\n\
         feedback_database = \"{}\"\nadmin_token = \"{ADMIN}\"\nhistory_database = \"{}\"\n{extra}",
        dir.join("feedback.sqlite3").display(),
        dir.join("history.sqlite3").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

fn speech_16k(path: &Path) -> Vec<f32> {
    let wav = read_wav(path).expect("wav").audio;
    resample_all(&wav.samples, wav.rate, 16_000).expect("resample")
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = HttpGateway::start(&config, "46700-46749", 3, Duration::from_secs(120));
    let (_rtc, good, _pending, _mid, _socket) = offer();
    let base = gw.base.as_str();

    let no_token = post_offer(base, None, "support", "application/sdp", &good);
    assert_eq!(no_token.status, 401, "{no_token:?}");
    let wrong = post_offer(base, Some("nope"), "support", "application/sdp", &good);
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let json = post_offer(base, Some(ADMIN), "support", "application/json", "{}");
    assert_eq!(json.status, 415, "{json:?}");
    assert!(json.body.contains("application/sdp"), "{json:?}");
    let malformed = post_offer(
        base,
        Some(ADMIN),
        "support",
        "application/sdp",
        "v=0\r\nhello\r\n",
    );
    assert_eq!(malformed.status, 400, "{malformed:?}");
    assert!(
        malformed.body.contains("malformed SDP offer"),
        "{malformed:?}"
    );
    let no_opus = good.replace("opus/48000/2", "PCMU/8000");
    let no_opus = post_offer(base, Some(ADMIN), "support", "application/sdp", &no_opus);
    assert_eq!(no_opus.status, 406, "{no_opus:?}");
    assert!(no_opus.body.contains("Opus"), "{no_opus:?}");
    let unknown = post_offer(base, Some(ADMIN), "no-such-flow", "application/sdp", &good);
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(unknown.body.contains("no-such-flow"), "{unknown:?}");
    let gone = http_client(Duration::from_secs(10))
        .delete(format!("{base}/api/webrtc/sessions/0123abcd"))
        .header("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
}

#[test]
fn a_browser_calls_the_flow_and_hears_the_bot() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let gw = HttpGateway::start(&config, "46750-46799", 3, Duration::from_secs(120));
    let question = speech_16k(&spoken_wav(dir.path(), "order", "Where is my order?"));

    let call = WebRtcCall::start(&gw.base, ADMIN, "support").unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(call.posted.content_type, "application/sdp");
    let location = call.posted.location.clone().expect("Location");
    assert!(location.starts_with("/api/webrtc/sessions/"), "{location}");
    let sip_call_id = call
        .posted
        .sip_call_id
        .clone()
        .expect("X-Voicebot-Sip-Call-Id");
    let connected = call
        .wait_connected(Duration::from_secs(10))
        .expect("ICE and DTLS complete");
    // The greeting plays; the caller asks once it has started.
    call.first_sound_after(connected, 0.02, Duration::from_secs(15))
        .expect("the greeting is heard");
    call.say(&question);
    let said = call
        .wait_said(Duration::from_secs(30))
        .expect("the question was sent");
    let reply = call
        .first_sound_after(said, 0.02, Duration::from_secs(20))
        .expect("the bot answers");
    // Let the answer play, then read what was heard.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        if reply.elapsed() < Duration::from_secs(6) {
            continue;
        }
        let heard = dir.path().join("heard.wav");
        write_wav(
            &heard,
            &MonoAudio {
                samples: call.heard(),
                rate: 16_000,
            },
        )
        .expect("write what was heard");
        text = transcribe_recording(&heard).to_lowercase();
        if text.contains("order number") {
            break;
        }
    }
    assert!(
        text.contains("order number"),
        "the bot did not ask for it: {text}"
    );
    assert_eq!(call.hangup(), 200);

    // The call is in the history, under its SIP Call-ID, like any other.
    let agent = http_client(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut r = agent
            .get(format!("{}/api/calls", gw.base))
            .header("Authorization", &format!("Bearer {ADMIN}"))
            .call()
            .unwrap();
        let list: serde_json::Value = r.body_mut().read_json().unwrap();
        let found = list["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["call_id"] == sip_call_id.as_str())
            .cloned();
        if let Some(c) = found {
            assert_eq!(c["flow"], "support", "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "not in the history: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn browser_calls_count_against_the_sip_call_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[sip]\nmax_calls = 1\n");
    let gw = HttpGateway::start(&config, "46800-46849", 3, Duration::from_secs(120));
    let first = WebRtcCall::start(&gw.base, ADMIN, "support").unwrap_or_else(|p| panic!("{p:?}"));
    first
        .wait_connected(Duration::from_secs(10))
        .expect("the first call connects");
    let second = WebRtcCall::start(&gw.base, ADMIN, "support")
        .err()
        .expect("the second call is refused");
    assert_eq!(second.status, 503, "{second:?}");
    assert!(second.body.contains("busy"), "{second:?}");
    assert_eq!(first.hangup(), 200);
    // With the first gone, a call gets through again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        match WebRtcCall::start(&gw.base, ADMIN, "support") {
            Ok(c) => break c,
            Err(p) if p.status == 503 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(p) => panic!("{p:?}"),
        }
    };
    assert_eq!(third.hangup(), 200);
}

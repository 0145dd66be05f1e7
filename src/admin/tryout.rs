//! Trying a flow without a phone: `POST /api/test/chat`, `POST /api/test/wav`, and hearing
//! the bot's voice with `POST /api/test/say`.
//!
//! # Why it reuses the simulator
//!
//! An admin testing a flow must see what a caller would get, so these run the code
//! `voicebot simulate` runs and answer with its report (`CallReport`: per turn the transcript,
//! ASR confidence, intent and confidence, slots, reply, escalation with reason, timings):
//!
//! - a chat runs typed turns through the flow's dialog ([`crate::simulate::chat`]); with
//!   `"speak": true` the turns are spoken by espeak-ng instead and go through the whole
//!   pipeline, speech recognition included, as a scenario file's `say` turns do;
//! - a WAV is decoded like `voicebot simulate`'s input (any rate, channels mixed down) and fed
//!   through the pipeline as 20 ms frames ([`crate::simulate::call::simulate_call`]).
//!
//! Recognition and the dialog run on the inference pool that live calls use; nothing blocks
//! the async runtime (decoding and espeak-ng run on blocking threads). So that a test can never
//! crowd out the calls, one test runs at a time (another gets 429), a WAV may hold at most
//! [`MAX_WAV_SECONDS`] of audio and a chat at most [`MAX_TURNS`] turns.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{AdminState, ApiError};
use crate::audio::wav::{decode_wav, encode_wav};
use crate::flows::Flow;
use crate::pipeline::synthesize_text;
use crate::report::CallReport;
use crate::simulate::chat::simulate_chat;
use crate::simulate::scenario::{CallerVoice, Scenario, Turn};
use crate::speech::tts::SpeechSynthesizer;
use crate::speech::voice::VoiceStyle;

/// Largest WAV upload.
pub const MAX_WAV_BYTES: usize = 10 * 1024 * 1024;
/// Longest WAV accepted.
pub const MAX_WAV_SECONDS: u64 = 180;
/// Most turns in one chat, and the longest turn.
pub const MAX_TURNS: usize = 50;
pub const MAX_TURN_CHARS: usize = 1000;
/// Longest text `POST /api/test/say` speaks (about a minute of speech).
pub const MAX_SAY_CHARS: usize = 1000;

/// `POST /api/test/chat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The flow (default: the default flow).
    #[serde(default)]
    pub flow: Option<String>,
    /// What the caller says, turn by turn.
    pub turns: Vec<String>,
    /// Speak the turns with espeak-ng and run speech recognition on them too.
    #[serde(default)]
    pub speak: bool,
}

/// What a test returns.
#[derive(Debug, Serialize)]
pub struct TestRun {
    /// `text`, `speech` (a spoken chat) or `wav`.
    pub mode: &'static str,
    pub flow: String,
    /// The WAV's format, for a WAV.
    pub sample_rate: Option<u32>,
    pub channels: Option<u16>,
    /// The report, as `voicebot simulate --json` gives it.
    pub report: CallReport,
    /// Chat turns not used because the bot handed over or ended the call first.
    pub unprocessed_turns: Option<usize>,
    /// Wall time of the run, ms.
    pub wall_ms: f64,
}

/// The flow `name`, or the default.
fn flow(state: &AdminState, name: Option<&str>) -> Result<Arc<Flow>, ApiError> {
    let set = state.engines.flows.current();
    match name {
        None | Some("") => Ok(set.default_flow()),
        Some(n) => set.get(n).ok_or_else(|| {
            ApiError::not_found(format!("no flow `{n}` (flows: {})", set.names().join(", ")))
        }),
    }
}

/// One test at a time.
fn permit(state: &AdminState) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state.tests.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "another test is running; try again when it has finished",
        )
    })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// `POST /api/test/chat`.
pub async fn chat(
    State(state): State<Arc<AdminState>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Json<TestRun>, ApiError> {
    let Json(req) = body?;
    if req.turns.is_empty() || req.turns.len() > MAX_TURNS {
        return Err(ApiError::unprocessable(format!(
            "turns: give 1 to {MAX_TURNS} caller turns"
        )));
    }
    if let Some(i) = req.turns.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::unprocessable(format!("turns[{i}]: is empty")));
    }
    if let Some(i) = req
        .turns
        .iter()
        .position(|t| t.chars().count() > MAX_TURN_CHARS)
    {
        return Err(ApiError::unprocessable(format!(
            "turns[{i}]: longer than {MAX_TURN_CHARS} characters"
        )));
    }
    let flow = flow(&state, req.flow.as_deref())?;
    let _permit = permit(&state)?;
    let started = Instant::now();
    let engines = state.engines.clone();
    if !req.speak {
        let run = simulate_chat(&engines, Arc::clone(&flow), &req.turns)
            .await
            .map_err(|e| ApiError::internal(format!("test chat: {e}")))?;
        return Ok(Json(TestRun {
            mode: "text",
            flow: flow.name.clone(),
            sample_rate: None,
            channels: None,
            report: run.report,
            unprocessed_turns: Some(run.unprocessed_turns),
            wall_ms: ms(started),
        }));
    }
    // Spoken: the turns as a scenario's `say` turns, rendered by espeak-ng off the runtime.
    let scenario = Scenario {
        description: String::new(),
        flow: Some(flow.name.clone()),
        caller: CallerVoice::default(),
        turns: req
            .turns
            .iter()
            .map(|t| Turn {
                say: Some(t.clone()),
                wav: None,
                silence_s: None,
                expect: Default::default(),
            })
            .collect(),
    };
    let audio = tokio::task::spawn_blocking(move || scenario.render_audio())
        .await
        .map_err(|e| ApiError::internal(format!("speaking the turns: {e}")))?
        .map_err(|e| ApiError::internal(format!("speaking the turns: {e}")))?;
    let call = crate::simulate::call::simulate_call(&engines, Arc::clone(&flow), &audio)
        .await
        .map_err(|e| ApiError::internal(format!("test call: {e}")))?;
    let heard = call.report.turns.len();
    Ok(Json(TestRun {
        mode: "speech",
        flow: flow.name.clone(),
        sample_rate: None,
        channels: None,
        report: call.report,
        unprocessed_turns: Some(req.turns.len().saturating_sub(heard)),
        wall_ms: ms(started),
    }))
}

/// `POST /api/test/say`: how the bot would say `text`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SayRequest {
    /// The flow whose voice speaks (default: the default flow).
    #[serde(default)]
    pub flow: Option<String>,
    /// What to say (a reply from a chat test, a prompt being written).
    pub text: String,
    /// A voice to try instead of the flow's own `[voice]` (same fields), before saving it.
    #[serde(default)]
    pub voice: Option<VoiceStyle>,
}

/// `POST /api/test/say`: `text` in the flow's voice (or the `voice` given), as a 16-bit mono
/// WAV at the rate the call path synthesises at, cut into units and synthesised as a call
/// would, so the prompt cache answers for fixed prompts.
pub async fn say(
    State(state): State<Arc<AdminState>>,
    body: Result<Json<SayRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let text = req.text.trim();
    if text.is_empty() {
        return Err(ApiError::unprocessable("text: is empty"));
    }
    if text.chars().count() > MAX_SAY_CHARS {
        return Err(ApiError::unprocessable(format!(
            "text: longer than {MAX_SAY_CHARS} characters"
        )));
    }
    let flow = flow(&state, req.flow.as_deref())?;
    let style = match req.voice {
        Some(voice) => {
            voice.check().map_err(|(field, reason)| {
                ApiError::unprocessable(format!("voice.{field}: {reason}"))
            })?;
            voice
        }
        None => flow.voice,
    };
    let _permit = permit(&state)?;
    let started = Instant::now();
    let audio = synthesize_text(&state.engines, text, style)
        .await
        .map_err(|e| ApiError::internal(format!("speech synthesis: {e}")))?;
    let wav = encode_wav(&audio).map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(flow = %flow.name, voice = %style.key(), chars = text.chars().count(),
        ms = started.elapsed().as_millis() as u64, "test say");
    let headers = [
        (header::CONTENT_TYPE, "audio/wav".to_string()),
        (header::CACHE_CONTROL, "no-store".to_string()),
        (
            header::HeaderName::from_static("x-voicebot-flow"),
            flow.name.clone(),
        ),
        (
            header::HeaderName::from_static("x-voicebot-voice"),
            style.key(),
        ),
        (
            header::HeaderName::from_static("x-voicebot-engine"),
            state.engines.tts.engine_for(&style).to_string(),
        ),
        (
            header::HeaderName::from_static("x-voicebot-synthesis-ms"),
            format!("{:.1}", ms(started)),
        ),
    ];
    Ok((headers, wav).into_response())
}

/// `?flow=` of a WAV test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WavQuery {
    #[serde(default)]
    pub flow: Option<String>,
}

/// `POST /api/test/wav` (body: the WAV file; `Content-Type: audio/wav`).
pub async fn wav(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<WavQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TestRun>, ApiError> {
    let Query(q) = query?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let accepted = [
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "application/octet-stream",
    ];
    if !accepted.iter().any(|a| content_type.starts_with(a)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "send the WAV file as the body with Content-Type: audio/wav (got `{content_type}`)"
            ),
        ));
    }
    let body = body?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty body: send a WAV file"));
    }
    let flow = flow(&state, q.flow.as_deref())?;
    let _permit = permit(&state)?;
    let started = Instant::now();
    let wav =
        tokio::task::spawn_blocking(move || decode_wav(Path::new("upload.wav"), Cursor::new(body)))
            .await
            .map_err(|e| ApiError::internal(format!("decoding the WAV: {e}")))?
            .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    if wav.audio.duration_ms() > MAX_WAV_SECONDS * 1000 {
        return Err(ApiError::unprocessable(format!(
            "upload.wav: {} s of audio; at most {MAX_WAV_SECONDS} s",
            wav.audio.duration_ms() / 1000
        )));
    }
    let call = crate::simulate::call::simulate_call(&state.engines, Arc::clone(&flow), &wav.audio)
        .await
        .map_err(|e| ApiError::internal(format!("test call: {e}")))?;
    Ok(Json(TestRun {
        mode: "wav",
        flow: flow.name.clone(),
        sample_rate: Some(wav.audio.rate),
        channels: Some(wav.channels),
        report: call.report,
        unprocessed_turns: None,
        wall_ms: ms(started),
    }))
}

/// `POST /api/test/wav` with its larger body limit.
pub fn wav_route() -> MethodRouter<Arc<AdminState>> {
    post(wav).layer(DefaultBodyLimit::max(MAX_WAV_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::{admin, fixture, send, Answer, ADMIN};
    use crate::audio::test_signal::{silence, voiced};
    use serde_json::json;

    fn wav_bytes(samples: &[f32], rate: u32) -> Vec<u8> {
        encode_wav(&crate::audio::wav::MonoAudio {
            samples: samples.to_vec(),
            rate,
        })
        .expect("in memory")
    }

    /// `POST /api/test/say` with `body`, as the admin (or with no token).
    async fn say(app: &axum::Router, token: Option<&str>, body: serde_json::Value) -> Answer {
        let body = body.to_string();
        send(
            app,
            "POST",
            "/api/test/say",
            token,
            Some("application/json"),
            body,
        )
        .await
    }

    #[tokio::test]
    async fn say_answers_a_wav_in_the_flows_voice_or_the_one_tried() {
        let f = fixture(true);
        let body = json!({"flow": "support", "text": "Your order has shipped. Goodbye."});
        let a = say(&f.app, Some(ADMIN), body).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.content_type, "audio/wav");
        assert_eq!(a.header("x-voicebot-flow"), "support");
        assert_eq!(a.header("x-voicebot-voice"), "default/1.00/+0.0");
        assert_eq!(a.header("x-voicebot-engine"), "custom", "the test voice");
        let wav = decode_wav(Path::new("say.wav"), Cursor::new(a.body)).expect("a WAV");
        assert_eq!(wav.audio.rate, crate::audio::SPEECH_RATE);
        assert_eq!(wav.channels, 1);
        // Two units of the test voice's 0.1 s tone.
        assert_eq!(wav.audio.samples.len(), 3200);
        assert!(wav.audio.samples.iter().any(|s| s.abs() > 0.05));
        // A voice tried before it is saved in the flow file.
        let body = json!({"text": "Hello.", "voice": {"engine": "espeak", "speed": 1.5}});
        let a = say(&f.app, Some(ADMIN), body).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.header("x-voicebot-voice"), "espeak/1.50/+0.0");
        // Without the token: 401.
        let a = say(&f.app, None, json!({"text": "Hello."})).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn bad_says_are_4xx_json_naming_the_field() {
        let f = fixture(true);
        let long = "a".repeat(MAX_SAY_CHARS + 1);
        let cases = [
            (
                json!({"text": "  "}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "text: is empty",
            ),
            (
                json!({"text": long}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "text: longer than",
            ),
            (
                json!({"text": "Hi.", "voice": {"speed": 3.0}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "voice.speed",
            ),
            (
                json!({"text": "Hi.", "voice": {"gain_db": -40}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "voice.gain_db",
            ),
            (
                json!({"text": "Hi.", "voice": {"engine": "piper"}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown variant",
            ),
            (
                json!({"text": "Hi.", "flow": "nope"}),
                StatusCode::NOT_FOUND,
                "no flow `nope`",
            ),
            (
                json!({"txt": "Hi."}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown field",
            ),
        ];
        for (body, status, says) in cases {
            let (got, v) = admin(
                &f.app,
                "POST",
                "/api/test/say",
                "/api/test/say",
                Some("application/json"),
                body.to_string(),
            )
            .await;
            assert_eq!(got, status, "{body}: {v}");
            assert!(v.to_string().contains(says), "{body}: {v}");
        }
        let (got, _) = admin(
            &f.app,
            "POST",
            "/api/test/say",
            "/api/test/say",
            Some("text/plain"),
            "Hello",
        )
        .await;
        assert_eq!(got, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn chat_reports_each_turn_like_simulate() {
        let f = fixture(true);
        let body = json!({"flow": "support", "turns": ["where is my order", "45712"]});
        let (status, v) = admin(
            &f.app,
            "POST",
            "/api/test/chat",
            "/api/test/chat",
            Some("application/json"),
            body.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["mode"], "text");
        let turns = &v["report"]["turns"];
        assert_eq!(turns[0]["transcript"], "where is my order");
        assert_eq!(turns[0]["intent"], "order_status");
        assert!(turns[0]["intent_confidence"]
            .as_f64()
            .is_some_and(|c| c > 0.5));
        assert_eq!(turns[1]["slots"]["order_number"], "45712", "{v}");
        assert!(
            turns[1]["reply"]
                .as_str()
                .is_some_and(|r| r.contains("4 5 7 1 2")),
            "{v}"
        );
        assert_eq!(v["report"]["outcome"], "caller_hung_up");
    }

    #[tokio::test]
    async fn chat_that_escalates_says_why() {
        let f = fixture(true);
        let body = json!({"turns": ["I want to cancel my subscription", "hello?"]});
        let (status, v) = admin(
            &f.app,
            "POST",
            "/api/test/chat",
            "/api/test/chat",
            Some("application/json"),
            body.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["report"]["outcome"], "escalated");
        assert_eq!(v["report"]["escalation"]["reason"], "critical_keyword");
        assert_eq!(v["unprocessed_turns"], 1);
    }

    #[tokio::test]
    async fn bad_chats_are_4xx_json() {
        let f = fixture(true);
        let cases: [(&str, Option<&str>, StatusCode); 7] = [
            (
                "{\"turns\": [\"hi\"",
                Some("application/json"),
                StatusCode::BAD_REQUEST,
            ),
            (
                "{\"turns\": \"hi\"}",
                Some("application/json"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "{\"turns\": []}",
                Some("application/json"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "{\"turns\": [\" \"]}",
                Some("application/json"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "{\"turns\": [\"hi\"], \"flw\": 1}",
                Some("application/json"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "{\"turns\": [\"hi\"], \"flow\": \"nope\"}",
                Some("application/json"),
                StatusCode::NOT_FOUND,
            ),
            (
                "{\"turns\": [\"hi\"]}",
                None,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
        ];
        for (body, ct, expected) in cases {
            let a = send(&f.app, "POST", "/api/test/chat", Some(ADMIN), ct, body).await;
            assert_eq!(a.status, expected, "{body}: {}", a.text());
            crate::admin::test_support::assert_schema(
                "POST",
                "/api/test/chat",
                a.status,
                &a.json(),
            );
        }
        let long = json!({"turns": ["x".repeat(70 * 1024)]}).to_string();
        let a = send(
            &f.app,
            "POST",
            "/api/test/chat",
            Some(ADMIN),
            Some("application/json"),
            long,
        )
        .await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(a.json()["error"].is_string());
    }

    #[tokio::test]
    async fn a_wav_runs_through_the_pipeline() {
        let f = fixture(true);
        let mut audio = silence(500);
        audio.extend(voiced(900));
        audio.extend(silence(1500));
        let (status, v) = admin(
            &f.app,
            "POST",
            "/api/test/wav?flow=support",
            "/api/test/wav",
            Some("audio/wav"),
            wav_bytes(&audio, 16_000),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["mode"], "wav");
        assert_eq!(v["sample_rate"], 16_000);
        assert_eq!(v["report"]["turns"][0]["transcript"], "Where is my order?");
        assert_eq!(v["report"]["turns"][0]["intent"], "order_status");
    }

    #[tokio::test]
    async fn bad_wavs_are_4xx_json() {
        let f = fixture(true);
        let post = |uri: &'static str, ct: Option<&'static str>, body: Vec<u8>| {
            let app = f.app.clone();
            async move { send(&app, "POST", uri, Some(ADMIN), ct, body).await }
        };
        let good = wav_bytes(&silence(100), 8000);
        let cases = [
            post("/api/test/wav", Some("text/plain"), good.clone()).await,
            post("/api/test/wav", None, good.clone()).await,
            post("/api/test/wav", Some("audio/wav"), Vec::new()).await,
            post(
                "/api/test/wav",
                Some("audio/wav"),
                b"RIFF....not a wav".to_vec(),
            )
            .await,
            post("/api/test/wav?flow=nope", Some("audio/wav"), good.clone()).await,
            post("/api/test/wav?flw=x", Some("audio/wav"), good.clone()).await,
            post(
                "/api/test/wav",
                Some("audio/wav"),
                vec![0; MAX_WAV_BYTES + 1],
            )
            .await,
        ];
        let expected = [415, 415, 400, 422, 404, 400, 413];
        for (a, want) in cases.iter().zip(expected) {
            assert_eq!(a.status.as_u16(), want, "{}", a.text());
            crate::admin::test_support::assert_schema("POST", "/api/test/wav", a.status, &a.json());
        }
    }

    #[tokio::test]
    async fn one_test_at_a_time() {
        let f = fixture(true);
        let held = f.state.tests.try_acquire().expect("free");
        let body = json!({"turns": ["hi"]}).to_string();
        let a = send(
            &f.app,
            "POST",
            "/api/test/chat",
            Some(ADMIN),
            Some("application/json"),
            body.clone(),
        )
        .await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        crate::admin::test_support::assert_schema("POST", "/api/test/chat", a.status, &a.json());
        drop(held);
        let a = send(
            &f.app,
            "POST",
            "/api/test/chat",
            Some(ADMIN),
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
    }
}

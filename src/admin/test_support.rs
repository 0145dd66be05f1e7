//! What the admin router tests share: a gateway state with scripted speech engines, a flows
//! directory of its own, an in-memory call history; requests sent through the router in
//! process (`tower::ServiceExt::oneshot`); every JSON answer checked against the OpenAPI
//! document.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use super::openapi::{self, RouteId};
use super::AdminState;
use crate::config::{GatewayConfig, IntentEngine};
use crate::handover::feedback::FeedbackStore;
use crate::handover::hub::HandoverHub;
use crate::history::CallHistory;
use crate::pipeline::Engines;
use crate::speech::asr::{AsrError, Expectation, Pass, SpeechRecognizer, Transcript};
use crate::speech::pool::InferencePool;
use crate::speech::tts::{Speech, SpeechSynthesizer, TtsError};
use crate::speech::tts_cache::{CacheLimits, CachedSynthesizer};
use crate::speech::voice::VoiceStyle;
use crate::web::WebState;

pub const ADMIN: &str = "admin-secret-0123456789";
pub const AGENT: &str = "agent-secret";

/// Hears "where is my order" in any audio.
struct FixedAsr;

impl SpeechRecognizer for FixedAsr {
    fn decode_expecting(
        &self,
        _samples: &[f32],
        _pass: Pass,
        _expect: Expectation,
    ) -> Result<Transcript, AsrError> {
        Ok(Transcript {
            text: "Where is my order?".into(),
            confidence: 0.9,
            elapsed: Duration::from_millis(3),
            ..Transcript::default()
        })
    }
}

/// A short tone per reply.
struct ToneTts;

impl SpeechSynthesizer for ToneTts {
    fn synthesize_in(&self, _text: &str, _style: &VoiceStyle) -> Result<Speech, TtsError> {
        Ok(Speech {
            audio: crate::audio::wav::MonoAudio {
                samples: vec![0.1; 1600],
                rate: 16_000,
            },
            elapsed: Duration::from_millis(1),
        })
    }
}

/// A test gateway: its state, its flows directory (inside `dir`).
pub struct Fixture {
    pub state: Arc<AdminState>,
    pub dir: tempfile::TempDir,
    pub app: Router,
    pub routes: Vec<RouteId>,
}

impl Fixture {
    pub fn flows_dir(&self) -> PathBuf {
        self.dir.path().join("flows")
    }
}

/// A flows directory like the shipped one: `flows/support.toml` naming `../intents.toml` and
/// `../prompts.toml` (the fixture lists both in `[flows] shared`).
pub fn write_flows(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("flows")).expect("mkdir");
    std::fs::copy(
        root.join("sip-config/intents.toml"),
        dir.join("intents.toml"),
    )
    .expect("copy intents");
    std::fs::copy(root.join("prompts/en.toml"), dir.join("prompts.toml")).expect("copy prompts");
    std::fs::write(dir.join("flows/support.toml"), support_flow("")).expect("write flow");
}

/// The support flow's text with `extra` appended.
pub fn support_flow(extra: &str) -> String {
    format!(
        "name = \"support\"\ndescription = \"Support\"\nnumbers = [\"100\"]\n\
         intents = \"../intents.toml\"\nprompts = \"../prompts.toml\"\n{extra}"
    )
}

/// A fixture with a flows directory (`with_dir`) or on the embedded default flow.
pub fn fixture(with_dir: bool) -> Fixture {
    fixture_on(with_dir, None)
}

/// [`fixture`] whose flows follow a shared store at `shared_url` (as node `node`), started
/// up (the latest revision taken, or its files published as the first); no listener.
pub fn shared_fixture(with_dir: bool, shared_url: &str, node: &str) -> Fixture {
    fixture_on(with_dir, Some((shared_url, node)))
}

fn fixture_on(with_dir: bool, shared: Option<(&str, &str)>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    if with_dir {
        write_flows(dir.path());
    }
    let mut config = GatewayConfig::default();
    config.intent.engine = IntentEngine::Rules;
    config.flows.dir = dir.path().join("flows");
    // The support flow's intents and prompts lie beside the flows directory, as shared files.
    config.flows.shared = vec![
        dir.path().join("intents.toml"),
        dir.path().join("prompts.toml"),
    ];
    config.recording.dir = dir.path().join("recordings");
    let flows = crate::engines::load_flows(&config).expect("flows load");
    let engines = Engines {
        config: Arc::new(config),
        asr: Arc::new(FixedAsr),
        tts: Arc::new(CachedSynthesizer::new(
            Arc::new(ToneTts),
            CacheLimits::default(),
        )),
        flows: Arc::new(crate::flows::FlowStore::new(flows)),
        pool: InferencePool::new(1, 8),
        turn_end: None,
    };
    let flow_sync = shared.map(|(url, node)| {
        let pool = crate::storage::postgres::connect(url, 2).expect("connects");
        let sync = crate::flow_sync::FlowSync::open(
            pool,
            node.into(),
            url.into(),
            Arc::clone(&engines.config),
            Arc::clone(&engines.flows),
        )
        .expect("flow sync opens");
        sync.start_up().expect("flow sync starts");
        Arc::new(sync)
    });
    let hub = Arc::new(HandoverHub::new());
    let state = Arc::new(
        AdminState::new(engines, ADMIN.into(), Arc::clone(&hub))
            .with_history(Some(Arc::new(
                CallHistory::open_in_memory().expect("history"),
            )))
            .with_flow_sync(flow_sync),
    );
    state.readiness.set_models_loaded(true);
    state.readiness.set_sip_listening(true);
    let web = Arc::new(WebState {
        agents: Arc::new(crate::webrtc::agents::BrowserAgents::new(Arc::clone(&hub))),
        hub,
        feedback: Arc::new(FeedbackStore::in_memory().expect("feedback")),
        token: AGENT.into(),
        webrtc: None,
        relay: None,
    });
    let routes = crate::web::routes(web, Some(Arc::clone(&state)));
    let list = routes.list();
    Fixture {
        state,
        dir,
        app: routes.into_router(),
        routes: list,
    }
}

/// The whole router (agent and admin routes) and its route table.
pub fn full_app() -> (Router, Vec<RouteId>) {
    let f = fixture(true);
    (f.app, f.routes)
}

/// An answer: status, content type, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request through the router.
pub async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        request = request.header("Content-Type", ct);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).expect("request"))
        .await
        .expect("infallible router");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
        .await
        .expect("body")
        .to_vec();
    Answer {
        status,
        content_type,
        headers,
        body,
    }
}

/// An admin request; the answer must be JSON and match the OpenAPI document's schema for
/// `template` (the documented path), the method and the status.
pub async fn admin(
    app: &Router,
    method: &str,
    uri: &str,
    template: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let answer = send(app, method, uri, Some(ADMIN), content_type, body).await;
    let value = answer.json();
    assert_schema(method, template, answer.status, &value);
    (answer.status, value)
}

/// Checks `value` against the document's schema for the response.
pub fn assert_schema(method: &str, template: &str, status: StatusCode, value: &Value) {
    let doc = openapi::parsed();
    let schema =
        openapi::response_schema(doc, method, template, status.as_u16()).unwrap_or_else(|| {
            panic!("assets/openapi.json documents no JSON {status} answer for {method} {template}")
        });
    let problems = openapi::check(doc, schema, value);
    assert!(
        problems.is_empty(),
        "{method} {template} {status} does not match its schema:\n{}\n{value:#}",
        problems.join("\n")
    );
}

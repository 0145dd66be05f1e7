//! The gateway's HTTP side for agents and CTI systems (axum): the hand-over context of a call
//! (`GET /calls/{id}/context`), the agent screen (`GET /agent`) with the live hand-over events
//! as server-sent events, and the agents' feedback on what the bot understood, exportable as
//! new example utterances. Everything but `/healthz` and the page itself needs the agent token
//! (`Authorization: Bearer ...`, or `?token=` where a browser cannot set headers, as for
//! EventSource). Errors are JSON (`{"error": "..."}`) with a 4xx status, never a 500 for bad
//! input.
//!
//! The agent screen is also a softphone for browser agents (`webrtc:<agent>` extensions): its
//! event stream opened with `?agent=<name>` logs the screen in (see
//! [`crate::webrtc::agents`]) and carries that agent's rings; `POST
//! /agent/phone/{ring_id}/answer` with the browser's SDP offer answers a ring through the WebRTC
//! edge, `DELETE /agent/phone/{ring_id}` declines it or hangs up.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use crate::admin::openapi::Routes;
use crate::admin::AdminState;
use crate::handover::feedback::{Feedback, FeedbackStore, Verdict};
use crate::handover::hub::HandoverHub;
use crate::webrtc::agents::BrowserAgents;
use crate::webrtc::EdgeError;

/// The agent screen, served as is (no external assets: it works offline).
const AGENT_PAGE: &str = include_str!("../assets/agent.html");
/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

pub use crate::config::http::HttpConfig;

/// Serves `app` on `listener` as `axum::serve` does, with two limits it lacks: a connection
/// that has not sent a request's complete headers within `header_timeout` (the first request's
/// or, on a kept-alive connection, the next one's) is closed, so slowloris clients cannot hold
/// connections open; and at most `max_connections` are served at once, more waiting in the
/// listen backlog until one ends. Runs until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    max_connections: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        // The semaphore is never closed, so this waits for a slot and never fails.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}

/// The agent screen's Content-Security-Policy: its own inline script and style only (pinned by
/// hash), requests to the gateway only. The page's WebRTC call is not a fetch (no directive
/// applies); the caller's audio plays from a MediaStream.
pub fn agent_page_policy() -> &'static str {
    use crate::admin::console::{element_text, hash_source};
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let script = element_text(AGENT_PAGE, "<script>", "</script>").unwrap_or_default();
        let style = element_text(AGENT_PAGE, "<style>", "</style>").unwrap_or_default();
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             media-src blob: mediastream:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash_source(script),
            hash_source(style)
        )
    });
    &CSP
}

/// `GET /agent`: the page (no token needed; it holds no data).
async fn agent_page() -> impl IntoResponse {
    use axum::http::header;
    (
        [
            (header::CONTENT_SECURITY_POLICY, agent_page_policy()),
            // The token may arrive in the address (?token=): never pass it on.
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(AGENT_PAGE),
    )
}

/// What the handlers share.
pub struct WebState {
    pub hub: Arc<HandoverHub>,
    pub feedback: Arc<FeedbackStore>,
    pub token: String,
    /// The WebRTC edge (browser agents answer their rings through it), when it runs.
    pub webrtc: Option<crate::webrtc::EdgeHandle>,
    /// The browser agents' open screens (the edge rings them; the event stream logs them in).
    pub agents: Arc<BrowserAgents>,
    /// The cluster's hand-over events, when a shared store is on: a context this gateway's hub
    /// does not hold is rebuilt from them.
    pub relay: Option<crate::handover::cluster::HandoverRelay>,
}

/// A JSON error with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
    /// Events only: `false` ends the stream after the snapshot of recent hand-overs (a static
    /// view, e.g. for a wallboard that reloads itself, or a page rendered for a report).
    follow: Option<bool>,
    /// Events only: log this screen in as the browser agent of this name (its rings come on
    /// the stream) while the stream is open.
    agent: Option<String>,
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn authorize(state: &WebState, headers: &HeaderMap, query: &TokenQuery) -> Result<(), ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer.or(query.token.as_deref()) {
        Some(t) if same(t.trim(), &state.token) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::FORBIDDEN, "wrong token".into())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing token: send Authorization: Bearer <agent token>".into(),
        )),
    }
}

/// The routes: the agents', and the admin API's when given (see [`crate::admin`]), with their
/// route table (checked against the OpenAPI document).
pub fn routes(state: Arc<WebState>, admin: Option<Arc<AdminState>>) -> Routes<()> {
    let agent = Routes::new()
        .route("/healthz", &["GET"], get(|| async { "ok" }))
        .route("/agent", &["GET"], get(agent_page))
        .route("/agent/events", &["GET"], get(events))
        .route("/calls/{id}/context", &["GET"], get(context))
        .route(
            "/calls/{id}/feedback",
            &["GET", "POST"],
            post(feedback).get(call_feedback),
        )
        .route("/feedback/examples", &["GET"], get(examples))
        .route("/agent/phone/agents", &["GET"], get(phone_agents))
        .route(
            "/agent/phone/{ring_id}/answer",
            &["POST"],
            post(phone_answer),
        )
        .route("/agent/phone/{ring_id}", &["DELETE"], delete(phone_hangup))
        .with_state(state);
    let all = match admin {
        Some(admin) => agent.merge(crate::admin::routes(admin)),
        None => agent,
    };
    all.map_router(|r| {
        r.fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
            .method_not_allowed_fallback(|| async {
                ApiError(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed on this endpoint".into(),
                )
            })
            .layer(DefaultBodyLimit::max(MAX_BODY))
    })
}

/// The router (see [`routes`]).
pub fn router(state: Arc<WebState>, admin: Option<Arc<AdminState>>) -> Router {
    routes(state, admin).into_router()
}

async fn context(
    State(state): State<Arc<WebState>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, &q)?;
    if let Some(ctx) = state.hub.context(&id) {
        return Ok(Json(ctx));
    }
    let stored = match state.relay.clone() {
        Some(relay) => {
            let key = id.clone();
            tokio::task::spawn_blocking(move || relay.context(&key))
                .await
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        }
        None => None,
    };
    stored.map(Json).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no hand-over context for call `{id}`"),
        )
    })
}

/// Feedback as an agent sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    /// Index of the caller line in the context's transcript.
    line: usize,
    verdict: Verdict,
    correct_intent: Option<String>,
    note: Option<String>,
}

async fn feedback(
    State(state): State<Arc<WebState>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<Json<FeedbackRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers, &q)?;
    let Json(req) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let ctx = state.hub.context(&id).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no hand-over context for call `{id}`"),
        )
    })?;
    let entry = ctx["transcript"]
        .get(req.line)
        .filter(|e| e["speaker"] == "caller")
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "transcript line {} is not a caller line of call `{id}`",
                    req.line
                ),
            )
        })?;
    if req.verdict == Verdict::Wrong
        && req
            .correct_intent
            .as_deref()
            .is_some_and(|i| !crate::dialog::intent::is_identifier(i))
    {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "correct_intent must be an intent name (lowercase letters, digits, _)".into(),
        ));
    }
    let record = Feedback {
        call_id: id,
        line: req.line,
        utterance: entry["text"].as_str().unwrap_or_default().to_string(),
        bot_intent: entry["intent"].as_str().unwrap_or("none").to_string(),
        verdict: req.verdict,
        correct_intent: req.correct_intent.filter(|i| !i.is_empty()),
        note: req.note.map(|n| n.chars().take(2000).collect()),
        created_ms: crate::handover::outbox::now_unix_ms(),
    };
    let stored = state.feedback.clone();
    let id = tokio::task::spawn_blocking(move || stored.record(&record))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

async fn call_feedback(
    State(state): State<Arc<WebState>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<Feedback>>, ApiError> {
    authorize(&state, &headers, &q)?;
    let stored = state.feedback.clone();
    tokio::task::spawn_blocking(move || stored.for_call(&id))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map(Json)
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

async fn examples(
    State(state): State<Arc<WebState>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, &q)?;
    let stored = state.feedback.clone();
    let map = tokio::task::spawn_blocking(move || stored.examples())
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(serde_json::to_value(map).unwrap_or_default()))
}

/// Server-sent events: the recent contexts first (`snapshot`), then every hand-over event as
/// it happens (`escalated`, `agent_answered`, `callback_requested`, `call_ended`).
async fn events(
    State(state): State<Arc<WebState>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&state, &headers, &q)?;
    let follow = q.follow.unwrap_or(true);
    // Logged in before the snapshot is taken: a ring from now on is not missed.
    let login = match q.agent.as_deref().filter(|_| follow) {
        Some(agent) => Some(state.agents.login(agent).map_err(|e| {
            let status = match e {
                crate::webrtc::agents::LoginError::BadName(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            ApiError(status, e.to_string())
        })?),
        None => None,
    };
    let live = BroadcastStream::new(state.hub.subscribe());
    let mut recent = state.hub.recent(20);
    recent.reverse();
    let snapshot = tokio_stream::iter(recent.into_iter().map(|ctx| {
        Ok(Event::default().event("snapshot").data(
            serde_json::json!({"kind": "snapshot", "call_id": ctx["call_id"], "data": ctx})
                .to_string(),
        ))
    }));
    let live = live.filter_map(|e| {
        let e = e.ok()?;
        Some(Ok(Event::default()
            .event(e.kind.clone())
            .data(serde_json::to_string(&e).unwrap_or_default())))
    });
    type Events = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
    let stream: Events = match (follow, login) {
        (false, _) => Box::pin(snapshot),
        (true, None) => Box::pin(snapshot.chain(live)),
        (true, Some(login)) => {
            let agent = login.agent().to_string();
            let (phone, guard) = login.into_parts();
            let hello = tokio_stream::once(Ok(Event::default()
                .event("logged_in")
                .data(serde_json::json!({ "agent": agent }).to_string())));
            // The stream owns the login: the screen is logged out when the stream is dropped.
            let phone = tokio_stream::wrappers::ReceiverStream::new(phone).map(move |e| {
                let _login = &guard;
                Ok(Event::default().event(e.kind).data(e.data.to_string()))
            });
            Box::pin(hello.chain(snapshot).chain(live.merge(phone)))
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// An edge error as the agent screen gets it.
impl From<EdgeError> for ApiError {
    fn from(e: EdgeError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError(status, e.to_string())
    }
}

fn edge(state: &WebState) -> Result<&crate::webrtc::EdgeHandle, ApiError> {
    state.webrtc.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "browser calls are off: set [webrtc] enabled = true".into(),
        )
    })
}

/// `GET /agent/phone/agents`: the browser agents logged in now (screens open).
async fn phone_agents(
    State(state): State<Arc<WebState>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, &q)?;
    Ok(Json(
        serde_json::json!({ "agents": state.agents.logged_in() }),
    ))
}

/// `POST /agent/phone/{ring_id}/answer`: the agent's browser answers a ring with its SDP
/// offer; 201 with the SDP answer.
async fn phone_answer(
    State(state): State<Arc<WebState>>,
    Path(ring_id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &q)?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !content_type.starts_with("application/sdp") {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the SDP offer with Content-Type: application/sdp (got `{content_type}`)"),
        ));
    }
    let body = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let offer = std::str::from_utf8(&body).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "malformed SDP offer: not UTF-8 text".into(),
        )
    })?;
    let session = edge(&state)?.answer_agent(&ring_id, offer).await?;
    state.agents.answered(&ring_id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CONTENT_TYPE, "application/sdp")],
        session.answer_sdp,
    )
        .into_response())
}

/// `DELETE /agent/phone/{ring_id}`: declines a ring, or hangs up the answered call.
async fn phone_hangup(
    State(state): State<Arc<WebState>>,
    Path(ring_id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, &q)?;
    edge(&state)?.hangup(&ring_id).await?;
    Ok(Json(
        serde_json::json!({ "ring_id": ring_id, "ended": true }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Serves the router on loopback; returns its base URL and the shared state.
    fn serve() -> (String, Arc<WebState>, tokio::runtime::Runtime) {
        serve_with(|_| None)
    }

    /// [`serve`] with an edge made on the server's runtime.
    fn serve_with(
        edge: impl FnOnce(&tokio::runtime::Runtime) -> Option<crate::webrtc::EdgeHandle>,
    ) -> (String, Arc<WebState>, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let hub = Arc::new(HandoverHub::new());
        let state = Arc::new(WebState {
            agents: Arc::new(BrowserAgents::new(Arc::clone(&hub))),
            hub,
            feedback: Arc::new(FeedbackStore::in_memory().unwrap()),
            token: "agent-secret".into(),
            webrtc: edge(&rt),
            relay: None,
        });
        let app = router(Arc::clone(&state), None);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (base, state, rt)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into()
    }

    fn context() -> serde_json::Value {
        json!({
            "schema": "voicebot.handover.v1", "call_id": "c1", "summary": "Caller wants to cancel",
            "transcript": [
                {"at_ms": 0, "speaker": "bot", "text": "Hello", "interrupted": false},
                {"at_ms": 900, "speaker": "caller", "text": "i want out of my contract", "interrupted": false, "intent": "complaint"}
            ]
        })
    }

    #[test]
    fn context_needs_the_token_and_unknown_calls_are_404() {
        let (base, state, _rt) = serve();
        state.hub.publish("escalated", "c1", &context());
        let a = agent();
        let r = a.get(format!("{base}/calls/c1/context")).call().unwrap();
        assert_eq!(r.status(), 401);
        let r = a
            .get(format!("{base}/calls/c1/context"))
            .header("Authorization", "Bearer nope")
            .call()
            .unwrap();
        assert_eq!(r.status(), 403);
        let mut r = a
            .get(format!("{base}/calls/c1/context"))
            .header("Authorization", "Bearer agent-secret")
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        assert_eq!(v["summary"], "Caller wants to cancel");
        let mut r = a
            .get(format!("{base}/calls/zzz/context?token=agent-secret"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        assert!(v["error"].as_str().unwrap_or("").contains("zzz"));
        assert_eq!(
            a.get(format!("{base}/nothing")).call().unwrap().status(),
            404
        );
        let mut page = a.get(format!("{base}/agent")).call().unwrap();
        assert!(page
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("<title>"));
    }

    #[test]
    fn feedback_is_validated_stored_and_exported() {
        let (base, state, _rt) = serve();
        state.hub.publish("escalated", "c1", &context());
        let a = agent();
        let post = |body: &str| {
            a.post(format!("{base}/calls/c1/feedback"))
                .header("Authorization", "Bearer agent-secret")
                .header("Content-Type", "application/json")
                .send(body)
                .unwrap()
                .status()
                .as_u16()
        };
        assert_eq!(post("{not json"), 400);
        // Well-formed JSON of the wrong shape: 422, as axum's extractor says.
        assert_eq!(post(r#"{"line": 1, "verdict": "meh"}"#), 422);
        assert_eq!(post(r#"{"line": "one", "verdict": "good"}"#), 422);
        assert_eq!(post(r#"{"line": 1, "verdict": "good", "extra": 1}"#), 422);
        assert_eq!(post(r#"{"line": 0, "verdict": "good"}"#), 422, "a bot line");
        assert_eq!(post(r#"{"line": 9, "verdict": "good"}"#), 422);
        assert_eq!(
            post(r#"{"line": 1, "verdict": "wrong", "correct_intent": "Bad Name"}"#),
            422
        );
        assert_eq!(
            post(&format!(
                "{{\"line\": 1, \"verdict\": \"good\", \"note\": \"{}\"}}",
                "x".repeat(70_000)
            )),
            413
        );
        assert_eq!(
            post(r#"{"line": 1, "verdict": "wrong", "correct_intent": "cancellation"}"#),
            201
        );
        let mut r = a
            .get(format!("{base}/feedback/examples"))
            .header("Authorization", "Bearer agent-secret")
            .call()
            .unwrap();
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        assert_eq!(v, json!({"cancellation": ["i want out of my contract"]}));
        let mut r = a
            .get(format!("{base}/calls/c1/feedback?token=agent-secret"))
            .call()
            .unwrap();
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        assert_eq!(v[0]["bot_intent"], "complaint");
    }

    #[test]
    fn events_stream_snapshots_then_live_events() {
        let (base, state, _rt) = serve();
        state.hub.publish("escalated", "c1", &context());
        let a = agent();
        let mut r = a
            .get(format!("{base}/agent/events?token=agent-secret"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let publisher = Arc::clone(&state);
        std::thread::spawn(move || {
            // Once the stream's subscription is open (the event would go nowhere before).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while publisher.hub.subscribers() == 0 && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            publisher
                .hub
                .publish("agent_answered", "c1", &json!({"agent": "sip:1001@h"}));
        });
        let mut reader = r.body_mut().as_reader();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !seen.contains("event: agent_answered") && std::time::Instant::now() < deadline {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        assert!(seen.contains("event: snapshot"), "{seen}");
        assert!(seen.contains("event: agent_answered"), "{seen}");
        assert!(seen.contains("sip:1001@h"), "{seen}");
    }

    /// An edge on the test's runtime that knows one ringing call, `r1`, and answers it with
    /// a fixed SDP (the edge itself is tested in src/webrtc and end to end).
    fn one_ring_edge(rt: &tokio::runtime::Runtime) -> Option<crate::webrtc::EdgeHandle> {
        use crate::webrtc::{AgentSession, EdgeCommand};
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        rt.spawn(async move {
            let mut answered = false;
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    EdgeCommand::AnswerAgent {
                        ring_id,
                        offer,
                        reply,
                    } => {
                        let result = if offer.starts_with("v=0") {
                            if ring_id == "r1" && !answered {
                                answered = true;
                                Ok(AgentSession {
                                    id: ring_id,
                                    answer_sdp: "v=0\r\ns=answer\r\n".into(),
                                })
                            } else {
                                Err(EdgeError::NotFound(format!("no ringing call {ring_id}")))
                            }
                        } else {
                            Err(EdgeError::BadOffer("no v= line".into()))
                        };
                        let _ = reply.send(result);
                    }
                    EdgeCommand::Hangup { id, reply } => {
                        let _ = reply.send(if id == "r1" {
                            Ok(())
                        } else {
                            Err(EdgeError::NotFound(format!("no browser call {id}")))
                        });
                    }
                    EdgeCommand::CallFlow { reply, .. } => {
                        let _ = reply.send(Err(EdgeError::NotFound("no flows here".into())));
                    }
                }
            }
        });
        Some(crate::webrtc::EdgeHandle::new(tx))
    }

    /// Reads the event stream until `needle` shows (bounded).
    fn read_until(reader: &mut impl std::io::Read, seen: &mut String, needle: &str) {
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !seen.contains(needle) && std::time::Instant::now() < deadline {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    }

    #[test]
    fn a_screen_logs_in_with_its_stream_and_gets_its_rings_only() {
        use crate::webrtc::{AgentRing, AgentScreens};
        let (base, state, _rt) = serve();
        state.hub.publish("escalated", "c1", &context());
        let a = agent();
        let r = a
            .get(format!(
                "{base}/agent/events?token=agent-secret&agent=al%20ice"
            ))
            .call()
            .unwrap();
        assert_eq!(r.status(), 400, "not an agent name");
        let mut alice = a
            .get(format!(
                "{base}/agent/events?token=agent-secret&agent=alice"
            ))
            .call()
            .unwrap();
        assert_eq!(alice.status(), 200);
        let mut bob = a
            .get(format!("{base}/agent/events?token=agent-secret&agent=bob"))
            .call()
            .unwrap();
        let mut alice_seen = String::new();
        let mut alice_reader = alice.body_mut().as_reader();
        read_until(&mut alice_reader, &mut alice_seen, "event: logged_in");
        let mut bob_seen = String::new();
        let mut bob_reader = bob.body_mut().as_reader();
        read_until(&mut bob_reader, &mut bob_seen, "event: logged_in");
        assert!(alice_seen.contains("\"agent\":\"alice\""), "{alice_seen}");
        let mut listed = a
            .get(format!("{base}/agent/phone/agents?token=agent-secret"))
            .call()
            .unwrap();
        let v: serde_json::Value = listed.body_mut().read_json().unwrap();
        assert_eq!(
            v,
            json!({"agents": [{"agent": "alice", "screens": 1}, {"agent": "bob", "screens": 1}]})
        );

        let ring = |id: &str, who: &str| AgentRing {
            ring_id: id.into(),
            agent: who.into(),
            call_id: Some("c1".into()),
            team: Some("billing".into()),
            from: "<sip:caller@h>".into(),
        };
        assert!(state.agents.ring(ring("r1", "alice")));
        assert!(
            !state.agents.ring(ring("r2", "carol")),
            "carol is not logged in"
        );
        read_until(&mut alice_reader, &mut alice_seen, "\"ring_id\":\"r1\"");
        let ring_event = alice_seen
            .split("event: ring\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no ring event: {alice_seen}"));
        assert!(ring_event.contains("\"ring_id\":\"r1\""), "{alice_seen}");
        // The ring carries the call's hand-over context.
        assert!(
            ring_event.contains("Caller wants to cancel"),
            "{alice_seen}"
        );
        state.agents.ring_ended("r1", "cancelled");
        read_until(&mut alice_reader, &mut alice_seen, "event: ring_ended");
        assert!(
            alice_seen.contains("\"reason\":\"cancelled\""),
            "{alice_seen}"
        );
        // Bob's screen saw the hand-over events, never alice's ring.
        state.agents.ring(ring("r3", "bob"));
        read_until(&mut bob_reader, &mut bob_seen, "\"ring_id\":\"r3\"");
        assert!(!bob_seen.contains("\"ring_id\":\"r1\""), "{bob_seen}");
        assert!(bob_seen.contains("event: snapshot"), "{bob_seen}");

        // Closing the stream logs the screen out.
        drop(alice_reader);
        drop(alice);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state.agents.logged_in().len() > 1 && std::time::Instant::now() < deadline {
            // Hyper notices the closed connection when it next writes: give it something.
            state
                .hub
                .publish("agent_answered", "c1", &json!({"agent": "x"}));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(state.agents.logged_in().len(), 1, "alice logged out");
        assert!(!state.agents.ring(ring("r4", "alice")));
    }

    #[test]
    fn answering_and_hanging_up_go_through_the_edge() {
        let (base, state, _rt) = serve_with(one_ring_edge);
        let a = agent();
        let answer = |id: &str, ct: &str, body: &str| {
            let mut r = a
                .post(format!("{base}/agent/phone/{id}/answer"))
                .header("Authorization", "Bearer agent-secret")
                .header("Content-Type", ct)
                .send(body)
                .unwrap();
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (
                status,
                ct,
                r.body_mut().read_to_string().unwrap_or_default(),
            )
        };
        let no_token = a
            .post(format!("{base}/agent/phone/r1/answer"))
            .header("Content-Type", "application/sdp")
            .send("v=0")
            .unwrap();
        assert_eq!(no_token.status(), 401);
        let (status, _, body) = answer("r1", "text/plain", "v=0");
        assert_eq!(status, 415, "{body}");
        let (status, _, body) = answer("r1", "application/sdp", "hello");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("malformed SDP offer"), "{body}");
        let (status, ct, body) = answer("r1", "application/sdp", "v=0\r\n");
        assert_eq!((status, ct.as_str()), (201, "application/sdp"), "{body}");
        assert_eq!(body, "v=0\r\ns=answer\r\n");
        let (status, _, body) = answer("r1", "application/sdp", "v=0\r\n");
        assert_eq!(status, 404, "answered once: {body}");
        assert!(body.contains("\"error\""), "{body}");

        let hang_up = |id: &str| {
            let mut r = a
                .delete(format!("{base}/agent/phone/{id}?token=agent-secret"))
                .call()
                .unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.body_mut().read_json().unwrap_or_default();
            (status, v)
        };
        assert_eq!(
            hang_up("r1"),
            (200, json!({"ring_id": "r1", "ended": true}))
        );
        let (status, v) = hang_up("r9");
        assert_eq!(status, 404);
        assert!(v["error"].as_str().unwrap_or("").contains("r9"), "{v}");
        drop(state);
    }

    #[test]
    fn without_the_edge_the_phone_routes_say_so() {
        let (base, _state, _rt) = serve();
        let a = agent();
        let mut r = a
            .post(format!("{base}/agent/phone/r1/answer?token=agent-secret"))
            .header("Content-Type", "application/sdp")
            .send("v=0\r\n")
            .unwrap();
        assert_eq!(r.status(), 503);
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        assert!(
            v["error"].as_str().unwrap_or("").contains("[webrtc]"),
            "{v}"
        );
        let r = a
            .delete(format!("{base}/agent/phone/r1?token=agent-secret"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 503);
    }

    #[test]
    fn the_agent_page_is_self_contained_and_pinned_by_its_policy() {
        assert_eq!(AGENT_PAGE.matches("<script").count(), 1);
        assert_eq!(AGENT_PAGE.matches("<style").count(), 1);
        for banned in [
            "http://",
            "https://",
            "url(",
            "src=",
            "<link",
            "@import",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!AGENT_PAGE.contains(banned), "the agent page uses {banned}");
        }
        let csp = agent_page_policy();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        let (base, _state, _rt) = serve();
        let r = agent().get(format!("{base}/agent")).call().unwrap();
        assert_eq!(
            r.headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok()),
            Some(csp)
        );
    }
}

//! The admin HTTP API: flows, tests without a phone, calls (live and history), analytics,
//! health and metrics.
//!
//! # Why it exists
//!
//! Contact-center admins configure the bot's flows and need to see what it did on every call.
//! The files stay the source of truth (hand-editable, reviewed like code): the API validates an
//! edit with exactly the checks a load makes, writes it atomically, and puts the new flows in
//! force for new calls while calls in progress finish on the flow they started with. Everything
//! else is read-only: the call history (SQLite, [`crate::history`]), the calls in progress
//! ([`live`]), the hand-over contexts and webhook deliveries, and test runs of a flow with
//! typed turns or a WAV through the same code as `voicebot simulate`.
//!
//! # Shape
//!
//! One axum [`Router`] ([`router`]), merged by [`crate::web`] into the agents' server on the
//! same `[http] listen` address. Every `/api/...` route needs the **admin token** (its own,
//! never the agents'; `Authorization: Bearer ...`), checked by a middleware before a body is
//! read, so an unauthenticated upload costs nothing. `/readyz` and `/metrics` are open to
//! scrapers unless `[http] metrics_token` is set; `/openapi.json` describes every route (admin
//! and agent) and is open, as is the console page `/admin` (it holds no data: it asks the API,
//! with the token the admin types in). Every error is JSON, `{"error": "..."}` (plus
//! `problems` for an invalid flow), with a 4xx status for anything the client sent wrong; 5xx
//! is kept for the gateway's own failures (a database or disk error).
//!
//! # Files
//!
//! - [`flows`]: list, read, validate, write (atomically) and delete flows; hot reload.
//! - [`tryout`]: `POST /api/test/chat` and `/api/test/wav`.
//! - [`calls`]: call history, one call's record, analytics, live calls; storing finished calls.
//! - [`live`]: the registry of calls in progress.
//! - [`live_events`]: one call's events as they happen (server-sent events), for the console's
//!   "Call this flow".
//! - [`health`]: `/readyz`, `/metrics` and the readiness flags.
//! - [`webhook`]: webhook events given up (dead letters): list, requeue.
//! - [`metrics`]: the Prometheus registry and what feeds it.
//! - [`console`]: `GET /admin`, the admin console (one embedded page that uses this API).
//! - [`openapi`]: `/openapi.json`, the route table it is checked against, and a small JSON
//!   Schema checker the tests use to hold every response to the document.

pub mod calls;
pub mod console;
pub mod flows;
pub mod health;
pub mod live_events;
pub use crate::observe::{live, metrics};
pub mod openapi;
pub mod trunks;
pub mod tryout;
pub mod webhook;
pub mod webrtc;

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::handover::hub::HandoverHub;
use crate::handover::outbox::Outbox;
use crate::history::CallHistory;
use crate::pipeline::Engines;
use health::{Readiness, Stopper};
use live::LiveCalls;
use openapi::Routes;

/// What the admin handlers share.
pub struct AdminState {
    /// The loaded engines: configuration, flows, ASR/TTS and the inference pool.
    pub engines: Engines,
    /// The admin bearer token.
    pub token: String,
    /// A bearer token for `/metrics` and `/readyz`; `None`: open.
    pub metrics_token: Option<String>,
    /// The call history, when `[http] history_database` is set.
    pub history: Option<Arc<CallHistory>>,
    pub live: Arc<LiveCalls>,
    pub readiness: Arc<Readiness>,
    /// Drain requests (`POST /api/drain`), shared with the server's signal handling.
    pub stopper: Arc<Stopper>,
    /// The trunks' registration states (`GET /api/trunks`, `/readyz`, `/metrics`).
    pub trunks: Arc<trunks::TrunkBoard>,
    /// The webhook outbox, when webhooks are configured (depth, deliveries, dead letters and
    /// their requeue).
    pub outbox: Option<Arc<Outbox>>,
    /// Latest hand-over contexts (summaries of escalated calls).
    pub hub: Arc<HandoverHub>,
    /// The WebRTC edge (`/api/webrtc/...`: browser calls to a flow), when it runs.
    pub webrtc: Option<crate::webrtc::EdgeHandle>,
    /// The cluster's flows on the shared store, when `[storage] url` is set: edits are
    /// published as revisions ([`crate::flow_sync`]).
    pub flow_sync: Option<Arc<crate::flow_sync::FlowSync>>,
    /// One flow edit at a time: validate, write and swap happen as one step.
    flow_edits: tokio::sync::Mutex<()>,
    /// Test runs share the inference pool with live calls: one at a time.
    tests: tokio::sync::Semaphore,
}

impl AdminState {
    /// The state for `engines` with the admin `token`; the optional parts start empty (see the
    /// `with_*` methods).
    pub fn new(engines: Engines, token: String, hub: Arc<HandoverHub>) -> Self {
        AdminState {
            engines,
            token,
            metrics_token: None,
            history: None,
            live: Arc::new(LiveCalls::new()),
            readiness: Arc::new(Readiness::new()),
            stopper: Arc::new(Stopper::new()),
            trunks: Arc::new(trunks::TrunkBoard::new()),
            outbox: None,
            hub,
            webrtc: None,
            flow_sync: None,
            flow_edits: tokio::sync::Mutex::new(()),
            tests: tokio::sync::Semaphore::new(1),
        }
    }

    pub fn with_history(mut self, history: Option<Arc<CallHistory>>) -> Self {
        self.history = history;
        self
    }

    pub fn with_live(mut self, live: Arc<LiveCalls>) -> Self {
        self.live = live;
        self
    }

    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = readiness;
        self
    }

    pub fn with_stopper(mut self, stopper: Arc<Stopper>) -> Self {
        self.stopper = stopper;
        self
    }

    pub fn with_trunks(mut self, trunks: Arc<trunks::TrunkBoard>) -> Self {
        self.trunks = trunks;
        self
    }

    pub fn with_outbox(mut self, outbox: Option<Arc<Outbox>>) -> Self {
        self.outbox = outbox;
        self
    }

    pub fn with_webrtc(mut self, edge: Option<crate::webrtc::EdgeHandle>) -> Self {
        self.webrtc = edge;
        self
    }

    pub fn with_flow_sync(mut self, sync: Option<Arc<crate::flow_sync::FlowSync>>) -> Self {
        self.flow_sync = sync;
        self
    }

    pub fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token.filter(|t| !t.is_empty());
        self
    }
}

/// An error answer: a status and `{"error": message}`, plus `problems` for an invalid flow.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub problems: Vec<flows::Problem>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// A failure of the gateway itself (database, disk, a task that died).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    problems: &'a [flows::Problem],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "admin API failure");
        }
        let body = ErrorBody {
            error: &self.message,
            problems: &self.problems,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

/// Parses a JSON request body with the statuses axum's `Json` uses: 400 for malformed JSON,
/// 422 for JSON of the wrong shape.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable(format!("invalid request body: {e}"))
        }
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// 401 with the RFC 6750 challenge.
fn unauthorized(message: &str, invalid: bool) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    let challenge = if invalid {
        "Bearer realm=\"voicebot-admin\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"voicebot-admin\""
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// Lets a request through only with the admin token.
async fn require_admin(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(request.headers()) {
        Some(t) if same(t, &state.token) => next.run(request).await,
        Some(_) => unauthorized("wrong admin token", true),
        None => unauthorized(
            "missing token: send Authorization: Bearer <admin token>",
            false,
        ),
    }
}

/// Lets a request through when no metrics token is set, or with it (or the admin token).
async fn require_metrics(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.metrics_token.as_deref() else {
        return next.run(request).await;
    };
    match bearer(request.headers()) {
        Some(t) if same(t, expected) || same(t, &state.token) => next.run(request).await,
        Some(_) => unauthorized("wrong metrics token", true),
        None => unauthorized(
            "missing token: send Authorization: Bearer <metrics token>",
            false,
        ),
    }
}

/// The admin routes (to be merged into the agents' router, which adds the JSON fallbacks and
/// the default body limit).
pub fn routes(state: Arc<AdminState>) -> Routes<()> {
    use axum::middleware::from_fn_with_state;
    let api = Routes::new()
        .route("/api/flows", &["GET"], get(flows::list))
        .route("/api/flows/validate", &["POST"], flows::validate_route())
        .route(
            "/api/flows/{name}",
            &["GET", "PUT", "DELETE"],
            flows::flow_route(),
        )
        .route("/api/test/chat", &["POST"], post(tryout::chat))
        .route("/api/test/wav", &["POST"], tryout::wav_route())
        .route("/api/test/say", &["POST"], post(tryout::say))
        .route("/api/calls", &["GET"], get(calls::list))
        .route("/api/calls/live", &["GET"], get(calls::live))
        .route("/api/calls/live/events", &["GET"], get(live_events::events))
        .route("/api/calls/{id}", &["GET"], get(calls::one))
        .route("/api/calls/{id}/recording", &["GET"], get(calls::recording))
        .route("/api/analytics", &["GET"], get(calls::analytics))
        .route("/api/trunks", &["GET"], get(trunks::list))
        .route("/api/drain", &["POST"], post(health::drain))
        .route(
            "/api/webrtc/flows/{flow}",
            &["POST"],
            post(webrtc::call_flow),
        )
        .route(
            "/api/webrtc/sessions/{id}",
            &["DELETE"],
            delete(webrtc::hangup),
        )
        .route("/api/webhook/dead", &["GET"], get(webhook::list))
        .route(
            "/api/webhook/dead/{id}/retry",
            &["POST"],
            post(webhook::retry),
        )
        .map_router(|r| r.route_layer(from_fn_with_state(Arc::clone(&state), require_admin)));
    let scraped = Routes::new()
        .route("/readyz", &["GET"], get(health::readyz))
        .route("/metrics", &["GET"], get(health::metrics))
        .map_router(|r| r.route_layer(from_fn_with_state(Arc::clone(&state), require_metrics)));
    let open = Routes::new()
        .route("/openapi.json", &["GET"], get(openapi::document))
        .route("/admin", &["GET"], get(console::page));
    api.merge(scraped).merge(open).with_state(state)
}

/// The admin router alone (see [`routes`]).
pub fn router(state: Arc<AdminState>) -> Router {
    routes(state).into_router()
}

#[cfg(test)]
pub(crate) mod test_support;

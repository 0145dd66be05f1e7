//! Readiness (`GET /readyz`) and metrics (`GET /metrics`).
//!
//! `/healthz` (in [`crate::web`]) says the process answers; `/readyz` says it can take calls:
//! the models are loaded and the SIP socket is being served. A load balancer or an
//! orchestrator routes calls by the second, restarts by the first. The flags are set by the
//! server as it starts and cleared when it begins to shut down (draining), so a gateway that
//! is draining stops being ready at once (`reason: "draining"`). `POST /api/drain` (admin
//! token) starts the drain as SIGTERM does, for an orchestrator that cannot send signals. Trunk registrations are listed but do
//! not decide readiness (see `ReadyBody::trunks`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::{metrics, AdminState, ApiError};
use crate::config::AdmissionConfig;

pub use crate::observe::readiness::{Readiness, StopLevel, Stopper};

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    models_loaded: bool,
    sip_listening: bool,
    /// Flows in force.
    flows: Vec<String>,
    calls_active: usize,
    draining: bool,
    /// Why not ready: "starting", "draining" (new calls refused, calls in progress going on),
    /// "stopping" (hanging up the calls left); None when ready.
    reason: Option<&'static str>,
    /// Each trunk's registration state. A failed registration does not make the gateway
    /// unready: calls from other trunks and address-matched peers still work, and restarting
    /// the gateway would not fix a wrong password; it shows here and in `/api/trunks`.
    trunks: Vec<super::trunks::TrunkView>,
}

/// `GET /readyz`: 200 when ready, else 503; the same JSON body either way.
pub async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let r = &state.readiness;
    let reason = match (r.draining(), r.models_loaded() && r.sip_listening()) {
        (true, true) => Some("draining"),
        (true, false) => Some("stopping"),
        (false, false) => Some("starting"),
        (false, true) => None,
    };
    let body = ReadyBody {
        ready: reason.is_none(),
        models_loaded: r.models_loaded(),
        sip_listening: r.sip_listening(),
        flows: state.engines.flows.current().names(),
        calls_active: state.live.len(),
        draining: r.draining(),
        reason,
        trunks: state.trunks.views(std::time::Instant::now()),
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[derive(Serialize)]
struct DrainBody {
    state: &'static str,
    calls_active: usize,
}

/// `POST /api/drain`: starts draining, as the first SIGTERM does (a second request changes
/// nothing; only a signal or `[sip] drain_timeout_s` hangs up the calls left).
pub async fn drain(State(state): State<Arc<AdminState>>) -> Response {
    let level = state.stopper.drain();
    tracing::info!(?level, "drain asked for through the admin API");
    let body = DrainBody {
        state: if level == StopLevel::HangUp {
            "stopping"
        } else {
            "draining"
        },
        calls_active: state.live.len(),
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `GET /metrics`: the OpenMetrics text. The gauges of current state are set from their
/// sources first (the outbox query runs off the async runtime).
pub async fn metrics(State(state): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let m = metrics::global();
    m.calls_active
        .set(i64::try_from(state.live.len()).unwrap_or(i64::MAX));
    let (depth, dead) = match &state.outbox {
        Some(outbox) => {
            let outbox = Arc::clone(outbox);
            let counts = move || {
                Ok::<_, crate::handover::outbox::OutboxError>((
                    outbox.pending_count()?,
                    outbox.dead_count()?,
                ))
            };
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            match tokio::task::spawn_blocking(counts).await {
                Ok(Ok((depth, dead))) => (gauge(depth), gauge(dead)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the webhook outbox depth");
                    (-1, -1)
                }
                Err(e) => return Err(ApiError::internal(format!("outbox query: {e}"))),
            }
        }
        None => (0, 0),
    };
    m.outbox_depth.set(depth);
    for t in state.trunks.snapshot() {
        metrics::trunk_registered(&t.name, t.state == "registered");
    }
    m.webhook_dead.set(dead);
    // The prompt cache keeps its own counts; the exported counters follow them.
    let (hits, misses) = state.engines.tts.stats();
    m.prompt_cache_hits
        .inner()
        .store(hits, std::sync::atomic::Ordering::Relaxed);
    m.prompt_cache_misses
        .inner()
        .store(misses, std::sync::atomic::Ordering::Relaxed);
    let (units, kept) = state.engines.tts.occupancy();
    m.prompt_cache_units
        .set(i64::try_from(units).unwrap_or(i64::MAX));
    m.prompt_cache_kept
        .set(i64::try_from(kept).unwrap_or(i64::MAX));
    let window = state.engines.config.admission.window();
    let waited = state
        .engines
        .pool
        .turn_wait(window, AdmissionConfig::TURN_WAIT_QUANTILE)
        .map_or(0.0, |(waited, _)| waited.as_secs_f64());
    m.turn_wait.set(waited);
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], m.encode()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::{assert_schema, fixture, send, ADMIN};

    #[tokio::test]
    async fn ready_only_with_models_and_sip() {
        let f = fixture(true);
        let a = send(&f.app, "GET", "/readyz", None, None, "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_schema("GET", "/readyz", a.status, &a.json());
        f.state.readiness.set_sip_listening(false);
        let a = send(&f.app, "GET", "/readyz", None, None, "").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.json()["sip_listening"], false);
        assert_eq!(a.json()["reason"], "starting");
        assert_schema("GET", "/readyz", a.status, &a.json());
        let a = send(&f.app, "GET", "/healthz", None, None, "").await;
        assert_eq!(a.text(), "ok");
    }

    #[tokio::test]
    async fn post_drain_needs_the_admin_token_and_makes_readyz_say_draining() {
        let f = fixture(true);
        let a = send(&f.app, "POST", "/api/drain", None, None, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(f.state.stopper.level(), StopLevel::Running);
        let a = send(&f.app, "POST", "/api/drain", Some(ADMIN), None, "").await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_schema("POST", "/api/drain", a.status, &a.json());
        assert_eq!(a.json()["state"], "draining");
        assert_eq!(f.state.stopper.level(), StopLevel::Drain);
        // The server's signalling task marks the readiness as it starts draining.
        f.state.readiness.set_draining(true);
        let a = send(&f.app, "GET", "/readyz", None, None, "").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_schema("GET", "/readyz", a.status, &a.json());
        assert_eq!(a.json()["reason"], "draining");
        assert_eq!(a.json()["draining"], true);
        // Asked again: still draining, never a hang-up.
        let a = send(&f.app, "POST", "/api/drain", Some(ADMIN), None, "").await;
        assert_eq!(a.json()["state"], "draining");
        assert_eq!(f.state.stopper.level(), StopLevel::Drain);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text_with_every_name() {
        let f = fixture(true);
        let a = send(&f.app, "GET", "/metrics", None, None, "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.content_type.starts_with("application/openmetrics-text"));
        let text = a.text();
        for name in metrics::NAMES {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains("voicebot_webhook_outbox_depth 0"), "{text}");
        assert!(text.contains("voicebot_webhook_dead_events 0"), "{text}");
    }

    #[tokio::test]
    async fn a_metrics_token_closes_metrics_and_readiness() {
        let f = fixture(true);
        let state = Arc::new(
            AdminState::new(
                f.state.engines.clone(),
                ADMIN.into(),
                Arc::clone(&f.state.hub),
            )
            .with_metrics_token(Some("scrape-token-0123456789".into())),
        );
        let app = crate::admin::router(state);
        for path in ["/metrics", "/readyz"] {
            let a = send(&app, "GET", path, None, None, "").await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
            assert_schema("GET", path, a.status, &a.json());
            let a = send(&app, "GET", path, Some("nope"), None, "").await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
            for token in ["scrape-token-0123456789", ADMIN] {
                let a = send(&app, "GET", path, Some(token), None, "").await;
                assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{path}");
            }
        }
    }
}

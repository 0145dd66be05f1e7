//! Webhook dead letters: `GET /api/webhook/dead` and `POST /api/webhook/dead/{id}/retry`.
//!
//! An event the receiver did not take within `max_attempts` attempts is given up (see
//! [`crate::handover::outbox`]): it stays in the outbox with its attempt count and last error,
//! and no longer holds back its call's later events. An admin sees those events here, fixes the
//! receiver, and requeues one: it is sent again with its original id (the idempotency key) and
//! body, with a fresh set of attempts. The deliverer takes it up at its next round (within a
//! second). Without a webhook configured both routes answer 404.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{AdminState, ApiError};
use crate::handover::outbox::{now_unix_ms, DeadEvent, Outbox, OutboxError, MAX_DEAD_LISTED};

/// `?limit=` of the listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    pub limit: Option<usize>,
}

/// The dead letters.
#[derive(Debug, Serialize)]
pub struct DeadList {
    /// How many events are dead in all (the listing may hold fewer).
    pub count: u64,
    /// The most recently given up first, at most `limit` (default and cap 1000).
    pub events: Vec<DeadEvent>,
}

/// The answer to a requeue.
#[derive(Debug, Serialize)]
pub struct Requeued {
    pub event_id: String,
    /// Always `pending`.
    pub state: &'static str,
}

fn outbox(state: &AdminState) -> Result<Arc<Outbox>, ApiError> {
    state.outbox.clone().ok_or_else(|| {
        ApiError::not_found("webhooks are off: no [handover.webhook] url is configured")
    })
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::UnknownEvent(_) => ApiError::not_found(e.to_string()),
            OutboxError::NotDead { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// Runs an outbox query off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("outbox query: {e}")))?
        .map_err(ApiError::from)
}

/// `GET /api/webhook/dead[?limit=N]`.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<DeadList>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(MAX_DEAD_LISTED);
    if !(1..=MAX_DEAD_LISTED).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be in 1..={MAX_DEAD_LISTED}"
        )));
    }
    let outbox = outbox(&state)?;
    let (count, events) =
        blocking(move || Ok((outbox.dead_count()?, outbox.dead_events(limit)?))).await?;
    Ok(Json(DeadList { count, events }))
}

/// `POST /api/webhook/dead/{id}/retry`: 202 once requeued; 404 for an unknown event, 409 for
/// one that is not dead (pending or delivered).
pub async fn retry(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Requeued>), ApiError> {
    let well_formed = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ApiError::bad_request(
            "an event id is 32 hex digits (the Idempotency-Key the receiver saw)",
        ));
    }
    let outbox = outbox(&state)?;
    let key = id.clone();
    blocking(move || outbox.retry_dead(&key, now_unix_ms())).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Requeued {
            event_id: id,
            state: "pending",
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::{admin, fixture, send, ADMIN};
    use crate::handover::outbox::{EventState, Failure, WebhookConfig};

    #[tokio::test]
    async fn dead_letters_are_listed_and_requeued_through_the_api() {
        let f = fixture(true);
        let outbox = Arc::new(Outbox::in_memory().unwrap());
        let state = Arc::new(
            AdminState::new(
                f.state.engines.clone(),
                ADMIN.into(),
                Arc::clone(&f.state.hub),
            )
            .with_outbox(Some(Arc::clone(&outbox))),
        );
        let app = crate::admin::router(state);
        let template = "/api/webhook/dead";
        let (status, body) = admin(&app, "GET", template, template, None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["count"], 0);

        let config = WebhookConfig {
            max_attempts: 2,
            ..WebhookConfig::default()
        };
        let dead = outbox
            .enqueue("call-1", "escalated", serde_json::json!({}), 5)
            .unwrap();
        let later = outbox
            .enqueue("call-1", "call_ended", serde_json::json!({}), 6)
            .unwrap();
        let id = outbox.due(10, 1).unwrap()[0].id;
        outbox.mark_failed(id, "no answer", 10, &config).unwrap();
        assert_eq!(
            outbox.mark_failed(id, "no answer", 20, &config).unwrap(),
            Failure::Dead { attempt: 2 }
        );
        let (status, body) = admin(&app, "GET", template, template, None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["count"], 1);
        assert_eq!(body["events"][0]["event_id"], dead.as_str());
        assert_eq!(body["events"][0]["call_id"], "call-1");
        assert_eq!(body["events"][0]["attempts"], 2);
        assert_eq!(body["events"][0]["last_error"], "no answer");
        for bad in ["?limit=0", "?limit=x", "?limit=1001", "?other=1"] {
            let uri = format!("{template}{bad}");
            let (status, _) = admin(&app, "GET", &uri, template, None, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }

        let retry = "/api/webhook/dead/{id}/retry";
        let uri = |id: &str| format!("/api/webhook/dead/{id}/retry");
        let (status, _) = admin(&app, "POST", &uri(&later), retry, None, "").await;
        assert_eq!(status, StatusCode::CONFLICT, "a pending event is not dead");
        let (status, _) = admin(&app, "POST", &uri(&"0".repeat(32)), retry, None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let a = send(&app, "POST", &uri("..%2F..%2Fx"), Some(ADMIN), None, "").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let (status, _) = admin(&app, "POST", &uri("not-hex"), retry, None, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let a = send(&app, "POST", &uri(&dead), None, None, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);

        let (status, body) = admin(&app, "POST", &uri(&dead), retry, None, "").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["state"], "pending");
        let events = outbox.events_for_call("call-1").unwrap();
        assert_eq!(events[0].state, EventState::Pending);
        assert_eq!(events[0].attempts, 0);
        let (_, body) = admin(&app, "GET", template, template, None, "").await;
        assert_eq!(body["count"], 0);
        let (status, _) = admin(&app, "POST", &uri(&dead), retry, None, "").await;
        assert_eq!(status, StatusCode::CONFLICT, "requeued once");

        // Without a webhook: 404 with the reason.
        let (status, body) = admin(&f.app, "GET", template, template, None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("webhooks are off"));
    }
}

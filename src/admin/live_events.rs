//! `GET /api/calls/live/events?call_id=<SIP Call-ID>`: one call's events as they happen
//! (server-sent events), for the console's "Call this flow" view.
//!
//! # Why
//!
//! A tester calling a flow from the console wants to see each turn's transcript and decision
//! while speaking, not after the call. The call task already publishes its events on the
//! hand-over hub ([`HandoverHub`]: partial lines, the hand-over's steps) and, for this view,
//! each finished turn (`turn`, a [`crate::report::TurnReport`]: what the caller said, the
//! intent and its confidence, the reply, an escalation with its reason), what the bot starts
//! saying (`said`), and [`CALL_FINISHED`] once the call's record is stored. This route is that
//! hub filtered to one call, behind the admin token (the page reads it with `fetch`, so the
//! token travels in the `Authorization` header, never in a URL).
//!
//! # Shape
//!
//! The first event is `call` (the call as `/api/calls/live` lists it); then every hub event of
//! the call, named by its kind, each `data` a JSON `{kind, call_id, data}` as on the agents'
//! stream. The stream ends after `call_finished`; should the call task end without it (it never
//! should), it ends with `call_gone` once the call has left the live registry. A call that is
//! not in progress is a 404: a finished call is in the history (`/api/calls/{id}` takes the SIP
//! Call-ID). A reader that falls behind gets `lagged` with how many events it missed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::{AdminState, ApiError};
use crate::handover::hub::{HubEvent, CALL_FINISHED};
use crate::observe::live::LiveCalls;

/// How often the stream checks that its call is still in progress (the fallback end).
const LIVENESS_CHECK: Duration = Duration::from_secs(2);
/// Events queued for a slow reader before the stream waits for it.
const QUEUE: usize = 64;
/// The longest SIP Call-ID accepted (as `/api/calls/{id}`).
const MAX_CALL_ID: usize = 512;

/// The query of `GET /api/calls/live/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveEventsQuery {
    /// The call's SIP Call-ID (`X-Voicebot-Sip-Call-Id` of a browser call's 201).
    call_id: Option<String>,
}

/// One SSE event named `kind` with `{kind, call_id, data}`.
fn sse(event: &HubEvent) -> Event {
    Event::default()
        .event(event.kind.clone())
        .data(serde_json::to_string(event).unwrap_or_default())
}

/// `GET /api/calls/live/events?call_id=...`.
pub async fn events(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<LiveEventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = q?;
    let call_id = q.call_id.unwrap_or_default();
    if call_id.is_empty() || call_id.len() > MAX_CALL_ID {
        return Err(ApiError::bad_request(format!(
            "call_id: the call's SIP Call-ID is required (1 to {MAX_CALL_ID} characters)"
        )));
    }
    // Subscribed before the call is looked up: nothing published in between is missed.
    let rx = state.hub.subscribe();
    let call = state.live.by_call_id(&call_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no call in progress with SIP Call-ID `{call_id}` (a finished call is in the \
             history: /api/calls/{{id}} takes the SIP Call-ID)"
        ))
    })?;
    let first = HubEvent {
        kind: "call".into(),
        call_id: call_id.clone(),
        data: serde_json::to_value(&call).unwrap_or_default(),
    };
    let (tx, out) = mpsc::channel(QUEUE);
    tokio::spawn(forward(call_id, rx, Arc::clone(&state.live), tx, first));
    let stream = ReceiverStream::new(out).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Forwards the call's hub events to the reader until the call is over or the reader is gone.
async fn forward(
    call_id: String,
    mut rx: tokio::sync::broadcast::Receiver<HubEvent>,
    live: Arc<LiveCalls>,
    tx: mpsc::Sender<Event>,
    first: HubEvent,
) {
    if tx.send(sse(&first)).await.is_err() {
        return;
    }
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    check.tick().await;
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Ok(event) if event.call_id == call_id => {
                    let last = event.kind == CALL_FINISHED;
                    if tx.send(sse(&event)).await.is_err() || last {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    let note = HubEvent {
                        kind: "lagged".into(),
                        call_id: call_id.clone(),
                        data: json!({ "missed": missed }),
                    };
                    if tx.send(sse(&note)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = check.tick() => {
                if live.by_call_id(&call_id).is_none() {
                    finish_gone(&call_id, &mut rx, &tx).await;
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

/// The call left the live registry: what its task published last is passed on, then (unless
/// that was `call_finished`) `call_gone`.
async fn finish_gone(
    call_id: &str,
    rx: &mut tokio::sync::broadcast::Receiver<HubEvent>,
    tx: &mpsc::Sender<Event>,
) {
    while let Ok(event) = rx.try_recv() {
        if event.call_id != call_id {
            continue;
        }
        let last = event.kind == CALL_FINISHED;
        if tx.send(sse(&event)).await.is_err() || last {
            return;
        }
    }
    let gone = HubEvent {
        kind: "call_gone".into(),
        call_id: call_id.to_string(),
        data: json!({ "reason": "the call is no longer in progress" }),
    };
    let _ = tx.send(sse(&gone)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::{admin, fixture, send, ADMIN};
    use axum::http::StatusCode;

    /// Reads the SSE body of `uri` until it ends (bounded by `wait`); its `(event, data)`s.
    async fn read_events(
        app: &axum::Router,
        uri: &str,
        wait: Duration,
    ) -> (StatusCode, Vec<(String, serde_json::Value)>) {
        let a = tokio::time::timeout(wait, send(app, "GET", uri, Some(ADMIN), None, ""))
            .await
            .expect("the stream ended in time");
        let mut events = Vec::new();
        let text = a.text();
        for block in text.split("\n\n") {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).expect("data is JSON")));
            }
        }
        (a.status, events)
    }

    #[tokio::test]
    async fn a_calls_events_stream_until_it_finishes_and_others_are_left_out() {
        let f = fixture(true);
        f.state
            .live
            .start("g1", "sip-call-1@h", "<sip:a@h>", Some("100"), "support");
        let (app, hub) = (f.app.clone(), Arc::clone(&f.state.hub));
        let reader = tokio::spawn(async move {
            read_events(
                &app,
                "/api/calls/live/events?call_id=sip-call-1%40h",
                Duration::from_secs(10),
            )
            .await
        });
        // Publish once the reader is subscribed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while f.state.hub.subscribers() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no subscriber");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        hub.publish("partial", "sip-call-1@h", &json!({"text": "where is"}));
        hub.broadcast("turn", "other@h", &json!({"transcript": "not mine"}));
        hub.broadcast(
            "turn",
            "sip-call-1@h",
            &json!({"transcript": "where is my order", "intent": "order_status",
                    "intent_confidence": 0.9, "reply": "What's the order number?",
                    "escalation": null}),
        );
        hub.broadcast(
            CALL_FINISHED,
            "sip-call-1@h",
            &json!({"id": "g1", "in_history": true}),
        );
        // After the end: not passed on (the stream is over).
        hub.broadcast("turn", "sip-call-1@h", &json!({"transcript": "late"}));
        let (status, events) = reader.await.expect("reader");
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["call", "partial", "turn", CALL_FINISHED],
            "{events:?}"
        );
        assert_eq!(events[0].1["data"]["flow"], "support");
        assert_eq!(events[0].1["data"]["id"], "g1");
        assert_eq!(events[2].1["call_id"], "sip-call-1@h");
        assert_eq!(events[2].1["data"]["intent"], "order_status");
        assert_eq!(events[3].1["data"]["id"], "g1");
    }

    #[tokio::test]
    async fn a_call_that_leaves_without_its_last_event_ends_the_stream() {
        let f = fixture(true);
        f.state
            .live
            .start("g2", "sip-call-2@h", "<sip:a@h>", None, "support");
        let app = f.app.clone();
        let reader = tokio::spawn(async move {
            read_events(
                &app,
                "/api/calls/live/events?call_id=sip-call-2%40h",
                Duration::from_secs(15),
            )
            .await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while f.state.hub.subscribers() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no subscriber");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f.state.live.end("g2");
        let (status, events) = reader.await.expect("reader");
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["call", "call_gone"], "{events:?}");
    }

    #[tokio::test]
    async fn bad_or_unknown_calls_are_refused_with_json() {
        let f = fixture(true);
        let t = "/api/calls/live/events";
        let (status, v) = admin(&f.app, "GET", t, t, None, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(v["error"].as_str().unwrap_or("").contains("call_id"), "{v}");
        let (status, v) = admin(&f.app, "GET", &format!("{t}?call_id=nope"), t, None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(v["error"].as_str().unwrap_or("").contains("nope"), "{v}");
        let (status, _) = admin(&f.app, "GET", &format!("{t}?call=x"), t, None, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let a = send(&f.app, "GET", &format!("{t}?call_id=x"), None, None, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
}

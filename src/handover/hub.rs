//! The live side of hand-overs: the latest context of each escalated call (served to CTI
//! systems at `GET /calls/{id}/context`) and a broadcast of hand-over events for the agents'
//! screens, next to the durable webhook. In memory and bounded: the webhook outbox is the
//! durable record; this is what an agent's browser watches.
//!
//! In a cluster the hub also sends its hand-over events and lines to the other gateways
//! ([`HandoverHub::relay_to`], see [`crate::handover::cluster`]) and takes theirs in
//! ([`HandoverHub::apply_remote`]), so every gateway's screens see every call.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many calls' contexts are kept (the oldest are forgotten first).
pub const MAX_CALLS: usize = 1000;
/// The live-only event that closes a call's events (every call, escalated or not; published
/// once its record is stored): what the console's per-call stream ends on.
pub const CALL_FINISHED: &str = "call_finished";
/// Events a slow screen may fall behind before it misses some.
const CHANNEL_DEPTH: usize = 256;

/// One hand-over event, as the agent's screen receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HubEvent {
    pub kind: String,
    pub call_id: String,
    pub data: serde_json::Value,
}

/// A hub's change as the other gateways of a cluster apply it.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayOp {
    /// [`HandoverHub::publish`].
    Publish(HubEvent),
    /// [`HandoverHub::append_line`] (the event's kind is `transcript`, its data the line).
    Line(HubEvent),
}

/// Shared by the call tasks (publishers) and the HTTP server (readers).
pub struct HandoverHub {
    state: Mutex<State>,
    events: broadcast::Sender<HubEvent>,
    /// Where this gateway's own changes go for the rest of the cluster (never blocks a call:
    /// a full queue drops the change, logged).
    relay: OnceLock<SyncSender<RelayOp>>,
}

#[derive(Default)]
struct State {
    contexts: HashMap<String, serde_json::Value>,
    order: VecDeque<String>,
}

impl Default for HandoverHub {
    fn default() -> Self {
        Self::new()
    }
}

impl HandoverHub {
    pub fn new() -> Self {
        HandoverHub {
            state: Mutex::new(State::default()),
            events: broadcast::channel(CHANNEL_DEPTH).0,
            relay: OnceLock::new(),
        }
    }

    /// Sends this gateway's published events and lines to `tx` from now on (the cluster
    /// relay); a second call is ignored.
    pub fn relay_to(&self, tx: SyncSender<RelayOp>) {
        let _ = self.relay.set(tx);
    }

    /// Applies another gateway's change: shown on the screens and kept as [`Self::publish`]
    /// and [`Self::append_line`] would, but not relayed again.
    pub fn apply_remote(&self, op: RelayOp) {
        match op {
            RelayOp::Publish(e) => self.apply_publish(&e.kind, &e.call_id, &e.data),
            RelayOp::Line(e) => self.apply_line(&e.call_id, &e.data),
        }
    }

    fn relay_out(&self, op: impl FnOnce() -> RelayOp) {
        let Some(tx) = self.relay.get() else {
            return;
        };
        match tx.try_send(op()) {
            Ok(()) => {}
            Err(TrySendError::Full(op)) => {
                tracing::warn!(
                    ?op,
                    "cluster relay queue full: other gateways miss this hand-over event"
                );
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("cluster relay stopped: other gateways miss this hand-over event");
            }
        }
    }

    /// Publishes an event; one whose data is a hand-over context (it has a `transcript`)
    /// becomes the call's latest context.
    pub fn publish(&self, kind: &str, call_id: &str, data: &serde_json::Value) {
        self.apply_publish(kind, call_id, data);
        self.relay_out(|| {
            RelayOp::Publish(HubEvent {
                kind: kind.to_string(),
                call_id: call_id.to_string(),
                data: data.clone(),
            })
        });
    }

    fn apply_publish(&self, kind: &str, call_id: &str, data: &serde_json::Value) {
        if data.get("transcript").is_some() {
            if let Ok(mut state) = self.state.lock() {
                if state
                    .contexts
                    .insert(call_id.to_string(), data.clone())
                    .is_none()
                {
                    state.order.push_back(call_id.to_string());
                    while state.order.len() > MAX_CALLS {
                        if let Some(old) = state.order.pop_front() {
                            state.contexts.remove(&old);
                        }
                    }
                }
            }
        }
        // No screen open is not an error.
        let _ = self.events.send(HubEvent {
            kind: kind.to_string(),
            call_id: call_id.to_string(),
            data: data.clone(),
        });
    }

    /// Sends a live-only event (the console's per-call view: a finished turn, what the bot
    /// said, the end of the call): never kept as the call's context, so a screen opened later,
    /// a CTI fetch and the agents' snapshot see only hand-over contexts.
    pub fn broadcast(&self, kind: &str, call_id: &str, data: &serde_json::Value) {
        // No screen open is not an error.
        let _ = self.events.send(HubEvent {
            kind: kind.to_string(),
            call_id: call_id.to_string(),
            data: data.clone(),
        });
    }

    /// A line heard after the hand-over (the caller's or the agent's): appended to the call's
    /// context, so a screen opened later or a CTI fetch sees it too, and sent live as a
    /// `transcript` event.
    pub fn append_line(&self, call_id: &str, line: &serde_json::Value) {
        self.apply_line(call_id, line);
        self.relay_out(|| {
            RelayOp::Line(HubEvent {
                kind: "transcript".to_string(),
                call_id: call_id.to_string(),
                data: line.clone(),
            })
        });
    }

    fn apply_line(&self, call_id: &str, line: &serde_json::Value) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(lines) = state
                .contexts
                .get_mut(call_id)
                .and_then(|c| c.get_mut("transcript"))
                .and_then(|t| t.as_array_mut())
            {
                lines.push(line.clone());
            }
        }
        let _ = self.events.send(HubEvent {
            kind: "transcript".to_string(),
            call_id: call_id.to_string(),
            data: line.clone(),
        });
    }

    /// The latest context of a call.
    pub fn context(&self, call_id: &str) -> Option<serde_json::Value> {
        self.state.lock().ok()?.contexts.get(call_id).cloned()
    }

    /// The contexts of the most recent calls, newest first.
    pub fn recent(&self, n: usize) -> Vec<serde_json::Value> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state
            .order
            .iter()
            .rev()
            .take(n)
            .filter_map(|id| state.contexts.get(id).cloned())
            .collect()
    }

    /// A new subscription to the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    /// How many subscriptions are open (screens listening).
    pub fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn own_changes_are_relayed_and_remote_ones_applied_but_not_relayed_again() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let a = HandoverHub::new();
        a.relay_to(tx);
        a.publish("escalated", "c1", &json!({"transcript": [{"text": "hi"}]}));
        a.append_line("c1", &json!({"speaker": "agent", "text": "hello"}));
        a.broadcast("turn", "c1", &json!({}));
        let ops: Vec<RelayOp> = rx.try_iter().collect();
        assert_eq!(ops.len(), 2, "live-only events stay local: {ops:?}");

        let (tx_b, rx_b) = std::sync::mpsc::sync_channel(8);
        let b = HandoverHub::new();
        b.relay_to(tx_b);
        let mut screen = b.subscribe();
        for op in ops {
            b.apply_remote(op);
        }
        assert_eq!(b.context("c1"), a.context("c1"));
        assert_eq!(
            screen.try_recv().map(|e| e.kind).ok().as_deref(),
            Some("escalated")
        );
        assert_eq!(
            screen.try_recv().map(|e| e.kind).ok().as_deref(),
            Some("transcript")
        );
        assert!(
            rx_b.try_recv().is_err(),
            "a remote change is not relayed again"
        );
    }

    #[test]
    fn live_lines_join_the_stored_context_and_go_out_as_events() {
        let hub = HandoverHub::new();
        hub.publish("escalated", "c1", &json!({"transcript": [{"text": "a"}]}));
        let mut rx = hub.subscribe();
        hub.append_line("c1", &json!({"speaker": "agent", "text": "hello"}));
        // A call the hub does not know: only the event.
        hub.append_line("c9", &json!({"speaker": "caller", "text": "x"}));
        let ctx = hub.context("c1").unwrap();
        assert_eq!(ctx["transcript"][1]["text"], "hello");
        assert!(hub.context("c9").is_none());
        let ev = rx.try_recv().unwrap();
        assert_eq!(
            (ev.kind.as_str(), ev.call_id.as_str()),
            ("transcript", "c1")
        );
        assert_eq!(rx.try_recv().unwrap().call_id, "c9");
    }

    #[test]
    fn broadcast_events_go_out_but_are_never_a_context() {
        let hub = HandoverHub::new();
        let mut rx = hub.subscribe();
        // A turn report has a `transcript` (a string): it must not become the call's context.
        hub.broadcast("turn", "c1", &json!({"transcript": "where is my order"}));
        assert!(hub.context("c1").is_none());
        assert!(hub.recent(5).is_empty());
        let ev = rx.try_recv().unwrap();
        assert_eq!((ev.kind.as_str(), ev.call_id.as_str()), ("turn", "c1"));
        assert_eq!(ev.data["transcript"], "where is my order");
    }

    #[test]
    fn contexts_are_kept_per_call_and_bounded() {
        let hub = HandoverHub::new();
        let mut rx = hub.subscribe();
        hub.publish(
            "escalated",
            "c1",
            &json!({"transcript": [], "summary": "a"}),
        );
        hub.publish("agent_answered", "c1", &json!({"agent": "sip:1@h"}));
        hub.publish(
            "call_ended",
            "c1",
            &json!({"transcript": [], "summary": "b"}),
        );
        assert_eq!(
            hub.context("c1").map(|c| c["summary"].clone()),
            Some(json!("b"))
        );
        assert_eq!(
            rx.try_recv().map(|e| e.kind).ok().as_deref(),
            Some("escalated")
        );
        assert_eq!(
            rx.try_recv().map(|e| e.kind).ok().as_deref(),
            Some("agent_answered")
        );
        for i in 0..MAX_CALLS + 5 {
            hub.publish("escalated", &format!("x{i}"), &json!({"transcript": []}));
        }
        assert!(hub.context("c1").is_none(), "the oldest call is forgotten");
        assert!(hub.context(&format!("x{}", MAX_CALLS + 4)).is_some());
        assert_eq!(hub.recent(3).len(), 3);
    }
}

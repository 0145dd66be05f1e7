//! The calls in progress, for `GET /api/calls/live` and the active-calls gauge.
//!
//! # Why a registry of its own
//!
//! The call history only learns about a call when it has ended, and the signalling task's own
//! table of calls is private to that task (it is not shared, so signalling never waits on a
//! lock). This registry is the small shared view in between: the server adds a call when its
//! task is spawned and removes it when the task finishes, and the call's code reports what
//! phase the call is in with [`LiveCalls::set_state`] (a map lookup under a mutex held for
//! microseconds, cheap enough for a media loop). Readers get a snapshot.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

/// Where a call in progress stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// The bot has the caller.
    Bot,
    /// The bot decided to hand over and is announcing it / preparing the transfer.
    Escalating,
    /// An agent's phone is ringing; the caller hears ringback.
    RingingAgent,
    /// Caller and agent are bridged through the gateway.
    Bridged,
    /// The caller's side was transferred to the agent (REFER); the gateway is leaving the call.
    Transferred,
}

/// One call in progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveCall {
    /// The gateway's own call id (the key: a SIP Call-ID is the caller's choice).
    pub id: String,
    /// The SIP Call-ID.
    pub call_id: String,
    /// The caller (SIP From).
    pub from: String,
    /// The called number or SIP user, when the Request-URI had one.
    pub called: Option<String>,
    /// The flow answering the call.
    pub flow: String,
    /// When the call started, ms since the Unix epoch.
    pub started_at_ms: u64,
    pub state: CallState,
    /// When the call entered `state`, ms since the Unix epoch.
    pub state_since_ms: u64,
}

/// The registry (see the module documentation).
#[derive(Debug, Default)]
pub struct LiveCalls {
    calls: Mutex<HashMap<String, LiveCall>>,
}

impl LiveCalls {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LiveCall>> {
        // Entries are plain values, never half-updated: a poisoned lock is still usable.
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call was answered: it starts with the bot.
    pub fn start(&self, id: &str, call_id: &str, from: &str, called: Option<&str>, flow: &str) {
        let now = crate::handover::outbox::now_unix_ms();
        self.lock().insert(
            id.to_string(),
            LiveCall {
                id: id.to_string(),
                call_id: call_id.to_string(),
                from: from.to_string(),
                called: called.map(str::to_string),
                flow: flow.to_string(),
                started_at_ms: now,
                state: CallState::Bot,
                state_since_ms: now,
            },
        );
    }

    /// The call moved to `state`; unknown calls (already ended) are ignored. Returns whether the
    /// call was known.
    pub fn set_state(&self, id: &str, state: CallState) -> bool {
        let mut calls = self.lock();
        match calls.get_mut(id) {
            Some(call) => {
                if call.state != state {
                    call.state = state;
                    call.state_since_ms = crate::handover::outbox::now_unix_ms();
                }
                true
            }
            None => false,
        }
    }

    /// The call ended.
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Calls in progress.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The call in progress with this SIP Call-ID (the newest, should a peer reuse one).
    pub fn by_call_id(&self, call_id: &str) -> Option<LiveCall> {
        self.lock()
            .values()
            .filter(|c| c.call_id == call_id)
            .max_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms))
            .cloned()
    }

    /// Every call in progress, oldest first.
    pub fn snapshot(&self) -> Vec<LiveCall> {
        let mut calls: Vec<LiveCall> = self.lock().values().cloned().collect();
        calls.sort_by(|a, b| {
            a.started_at_ms
                .cmp(&b.started_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_come_change_state_and_go() {
        let live = LiveCalls::new();
        live.start("a@h", "a@h", "sip:alice@h", Some("support"), "support");
        live.start("b@h", "b@h", "sip:bob@h", None, "billing");
        assert_eq!(live.len(), 2);
        assert!(live.set_state("a@h", CallState::RingingAgent));
        assert!(!live.set_state("zzz", CallState::Bridged));
        let snap = live.snapshot();
        let a = snap.iter().find(|c| c.call_id == "a@h").expect("a");
        assert_eq!(a.state, CallState::RingingAgent);
        assert_eq!(
            serde_json::to_value(a).expect("json")["state"],
            "ringing_agent"
        );
        live.end("a@h");
        live.end("a@h");
        assert_eq!(live.len(), 1);
        assert_eq!(live.snapshot()[0].flow, "billing");
    }
}

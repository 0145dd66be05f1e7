//! The registry of browser agents' open screens: who is logged in to the agent screen's
//! softphone, and the way the edge's rings reach their pages.
//!
//! # Why the event stream is the login
//!
//! An agent counts as reachable exactly while a screen of theirs can show a ring. The agent
//! screen already holds one server-sent event stream open (`GET /agent/events`); opening it
//! with `?agent=<name>` logs that screen in, and the stream's end (tab closed, network gone)
//! logs it out, with no separate session to expire or to leak. So "not logged in" is never
//! stale for long, and an agent with no screen open makes the edge refuse the call at once
//! (the hunt goes on to the next extension) instead of ringing nobody until the ring timeout.
//!
//! A ring goes to that agent's screens only, with the call's hand-over context from the
//! [`HandoverHub`] (the latest one for the escalated call's id), so the page can show the
//! summary, reason and transcript while it rings. A screen opened while a ring is on gets it
//! too; when one screen answers, the agent's other screens stop ringing (`ring_answered`);
//! when the ring ends elsewhere (the caller hung up, the hunt moved on, the call ended), every
//! screen hears `ring_ended` with the reason.
//!
//! Everything is bounded: screens per agent, agents, rings remembered, and each screen's queue
//! (a screen that does not read its stream misses events rather than holding memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

use super::{AgentRing, AgentScreens};
use crate::handover::hub::HandoverHub;

/// Screens one agent may have open at once.
pub const MAX_SCREENS_PER_AGENT: usize = 16;
/// Agents logged in at once.
pub const MAX_AGENTS: usize = 10_000;
/// Rings remembered (the edge ends each; this only bounds a ring it never ended).
const MAX_RINGS: usize = 4096;
/// Events one screen may have unread before it misses some.
const SCREEN_QUEUE: usize = 64;

/// An event for an agent's screens (sent as a server-sent event named `kind`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhoneEvent {
    /// `ring`, `ring_answered` or `ring_ended`.
    pub kind: &'static str,
    pub data: serde_json::Value,
}

/// Why a screen cannot log in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("`{0}` is not an agent name: letters, digits, `.`, `_` or `-`, at most 64 characters")]
    BadName(String),
    #[error("agent `{0}` has {MAX_SCREENS_PER_AGENT} screens open already, the most allowed")]
    TooManyScreens(String),
    #[error("{MAX_AGENTS} agents are logged in already, the most allowed")]
    TooManyAgents,
}

/// Whether `name` is an agent's name: the user part of the edge's SIP URI for them, as
/// `webrtc:<agent>` extensions are checked at load.
pub fn valid_agent_name(name: &str) -> bool {
    crate::handover::transfer::uri_safe_name(name)
}

struct Screen {
    id: u64,
    tx: mpsc::Sender<PhoneEvent>,
}

struct ActiveRing {
    agent: String,
    /// The `ring` event, for screens opened while it rings.
    event: PhoneEvent,
    answered: bool,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    next_screen: u64,
    screens: HashMap<String, Vec<Screen>>,
    rings: HashMap<String, ActiveRing>,
}

/// The agents' open screens; shared by the event streams (login) and the edge (rings).
pub struct BrowserAgents {
    hub: Arc<HandoverHub>,
    inner: Mutex<Inner>,
}

/// A logged-in screen: its events, and its login, which ends when this is dropped.
pub struct ScreenLogin {
    pub events: mpsc::Receiver<PhoneEvent>,
    guard: LoginGuard,
}

impl ScreenLogin {
    /// The agent's name.
    pub fn agent(&self) -> &str {
        &self.guard.agent
    }

    /// Splits the events from the login (keep the guard as long as the screen is open).
    pub fn into_parts(self) -> (mpsc::Receiver<PhoneEvent>, LoginGuard) {
        (self.events, self.guard)
    }
}

/// Logs its screen out when dropped.
pub struct LoginGuard {
    agents: Weak<BrowserAgents>,
    agent: String,
    screen: u64,
}

impl Drop for LoginGuard {
    fn drop(&mut self) {
        if let Some(agents) = self.agents.upgrade() {
            agents.logout(&self.agent, self.screen);
        }
    }
}

/// A logged-in agent and how many screens they have open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedIn {
    pub agent: String,
    pub screens: usize,
}

impl BrowserAgents {
    /// An empty registry; rings carry the contexts `hub` holds.
    pub fn new(hub: Arc<HandoverHub>) -> Self {
        BrowserAgents {
            hub,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a screen in as `agent`. It receives the agent's rings from now on, and at once any
    /// ring of theirs still waiting for an answer.
    pub fn login(self: &Arc<Self>, agent: &str) -> Result<ScreenLogin, LoginError> {
        if !valid_agent_name(agent) {
            return Err(LoginError::BadName(agent.chars().take(80).collect()));
        }
        let mut inner = self.lock();
        let open = inner.screens.get(agent).map_or(0, Vec::len);
        if open >= MAX_SCREENS_PER_AGENT {
            return Err(LoginError::TooManyScreens(agent.to_string()));
        }
        if open == 0 && inner.screens.len() >= MAX_AGENTS {
            return Err(LoginError::TooManyAgents);
        }
        inner.next_screen += 1;
        let id = inner.next_screen;
        let (tx, rx) = mpsc::channel(SCREEN_QUEUE);
        let mut waiting: Vec<&ActiveRing> = inner
            .rings
            .values()
            .filter(|r| r.agent == agent && !r.answered)
            .collect();
        waiting.sort_by_key(|r| r.since);
        for ring in waiting {
            let _ = tx.try_send(ring.event.clone());
        }
        inner
            .screens
            .entry(agent.to_string())
            .or_default()
            .push(Screen { id, tx });
        tracing::info!(%agent, screen = id, "browser agent logged in");
        Ok(ScreenLogin {
            events: rx,
            guard: LoginGuard {
                agents: Arc::downgrade(self),
                agent: agent.to_string(),
                screen: id,
            },
        })
    }

    fn logout(&self, agent: &str, screen: u64) {
        let mut inner = self.lock();
        if let Some(screens) = inner.screens.get_mut(agent) {
            screens.retain(|s| s.id != screen);
            if screens.is_empty() {
                inner.screens.remove(agent);
            }
        }
        tracing::info!(%agent, screen, "browser agent's screen closed");
    }

    /// The logged-in agents, by name.
    pub fn logged_in(&self) -> Vec<LoggedIn> {
        let inner = self.lock();
        let mut list: Vec<LoggedIn> = inner
            .screens
            .iter()
            .map(|(agent, s)| LoggedIn {
                agent: agent.clone(),
                screens: s.len(),
            })
            .collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        list
    }

    /// Sends `event` to `agent`'s screens; how many took it.
    fn send(inner: &Inner, agent: &str, event: &PhoneEvent) -> usize {
        let Some(screens) = inner.screens.get(agent) else {
            return 0;
        };
        screens
            .iter()
            .filter(|s| match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(%agent, screen = s.id, kind = event.kind, error = %e, "agent screen missed an event");
                    false
                }
            })
            .count()
    }

    /// A screen answered `ring_id` (the edge took its answer): the agent's other screens
    /// stop ringing. False when the ring is unknown.
    pub fn answered(&self, ring_id: &str) -> bool {
        let mut inner = self.lock();
        let Some(ring) = inner.rings.get_mut(ring_id) else {
            return false;
        };
        ring.answered = true;
        let agent = ring.agent.clone();
        let event = PhoneEvent {
            kind: "ring_answered",
            data: serde_json::json!({ "ring_id": ring_id, "agent": agent }),
        };
        Self::send(&inner, &agent, &event);
        true
    }
}

impl AgentScreens for BrowserAgents {
    fn ring(&self, ring: AgentRing) -> bool {
        // Outside the lock: the hub has its own.
        let context = ring.call_id.as_deref().and_then(|id| self.hub.context(id));
        let mut data = serde_json::to_value(&ring).unwrap_or_default();
        if let Some(map) = data.as_object_mut() {
            map.insert("context".into(), context.unwrap_or(serde_json::Value::Null));
        }
        let event = PhoneEvent { kind: "ring", data };
        let mut inner = self.lock();
        let delivered = Self::send(&inner, &ring.agent, &event);
        if delivered == 0 {
            return false;
        }
        if inner.rings.len() >= MAX_RINGS {
            // The edge ends every ring; this only drops one it forgot.
            if let Some(oldest) = inner
                .rings
                .iter()
                .min_by_key(|(_, r)| r.since)
                .map(|(id, _)| id.clone())
            {
                inner.rings.remove(&oldest);
            }
        }
        inner.rings.insert(
            ring.ring_id.clone(),
            ActiveRing {
                agent: ring.agent.clone(),
                event,
                answered: false,
                since: Instant::now(),
            },
        );
        tracing::info!(agent = %ring.agent, ring = %ring.ring_id, screens = delivered, "ringing the agent's screens");
        true
    }

    fn ring_ended(&self, ring_id: &str, reason: &str) {
        let mut inner = self.lock();
        let Some(ring) = inner.rings.remove(ring_id) else {
            return;
        };
        let event = PhoneEvent {
            kind: "ring_ended",
            data: serde_json::json!({ "ring_id": ring_id, "agent": ring.agent, "reason": reason }),
        };
        Self::send(&inner, &ring.agent, &event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ring(id: &str, agent: &str, call: Option<&str>) -> AgentRing {
        AgentRing {
            ring_id: id.into(),
            agent: agent.into(),
            call_id: call.map(str::to_string),
            team: Some("billing".into()),
            from: "<sip:caller@127.0.0.1>;tag=1".into(),
        }
    }

    fn registry() -> (Arc<HandoverHub>, Arc<BrowserAgents>) {
        let hub = Arc::new(HandoverHub::new());
        (Arc::clone(&hub), Arc::new(BrowserAgents::new(hub)))
    }

    #[test]
    fn names_are_checked_at_login() {
        let (_, agents) = registry();
        for bad in ["", "al ice", "bob@host", "a/b", "ü", &"x".repeat(65)] {
            assert!(
                matches!(agents.login(bad), Err(LoginError::BadName(_))),
                "{bad:?}"
            );
        }
        for good in ["alice", "bob.b", "agent_7", "A-1"] {
            assert!(agents.login(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_ring_reaches_only_that_agents_screens_with_the_context() {
        let (hub, agents) = registry();
        hub.publish(
            "escalated",
            "call-1",
            &json!({"summary": "Wants to cancel", "transcript": [{"speaker": "caller", "text": "cancel"}]}),
        );
        let mut alice1 = agents.login("alice").unwrap();
        let mut alice2 = agents.login("alice").unwrap();
        let mut bob = agents.login("bob").unwrap();
        assert!(agents.ring(ring("r1", "alice", Some("call-1"))));
        for screen in [&mut alice1, &mut alice2] {
            let e = screen.events.try_recv().unwrap();
            assert_eq!(e.kind, "ring");
            assert_eq!(e.data["ring_id"], "r1");
            assert_eq!(e.data["team"], "billing");
            assert_eq!(e.data["context"]["summary"], "Wants to cancel");
        }
        assert!(bob.events.try_recv().is_err(), "bob's screen stays quiet");
        // A call the hub has no context for still rings, with a null context.
        assert!(agents.ring(ring("r2", "bob", Some("unknown"))));
        assert_eq!(bob.events.try_recv().unwrap().data["context"], json!(null));
    }

    #[test]
    fn an_agent_without_screens_is_not_logged_in() {
        let (_, agents) = registry();
        assert!(!agents.ring(ring("r1", "carol", None)));
        let screen = agents.login("carol").unwrap();
        assert_eq!(
            agents.logged_in(),
            vec![LoggedIn {
                agent: "carol".into(),
                screens: 1
            }]
        );
        drop(screen);
        assert!(agents.logged_in().is_empty());
        assert!(!agents.ring(ring("r2", "carol", None)), "logged out");
    }

    #[test]
    fn a_closed_screen_does_not_count() {
        let (_, agents) = registry();
        let (events, _guard) = agents.login("dave").unwrap().into_parts();
        drop(events); // the stream went away before its login did
        assert!(!agents.ring(ring("r1", "dave", None)));
    }

    #[test]
    fn ends_and_answers_reach_every_screen_and_late_screens_see_waiting_rings() {
        let (_, agents) = registry();
        let mut first = agents.login("alice").unwrap();
        assert!(agents.ring(ring("r1", "alice", None)));
        assert_eq!(first.events.try_recv().unwrap().kind, "ring");
        // A screen opened while it rings rings too.
        let mut late = agents.login("alice").unwrap();
        assert_eq!(late.events.try_recv().unwrap().data["ring_id"], "r1");
        assert!(agents.answered("r1"));
        for s in [&mut first, &mut late] {
            let e = s.events.try_recv().unwrap();
            assert_eq!(
                (e.kind, e.data["ring_id"].clone()),
                ("ring_answered", json!("r1"))
            );
        }
        // An answered ring is not offered to a screen opened later.
        let mut later = agents.login("alice").unwrap();
        assert!(later.events.try_recv().is_err());
        agents.ring_ended("r1", "the call ended");
        for s in [&mut first, &mut late, &mut later] {
            let e = s.events.try_recv().unwrap();
            assert_eq!(e.kind, "ring_ended");
            assert_eq!(e.data["reason"], "the call ended");
        }
        // Ended once: a second end and an answer of an unknown ring do nothing.
        agents.ring_ended("r1", "again");
        assert!(first.events.try_recv().is_err());
        assert!(!agents.answered("r1"));
    }

    #[test]
    fn screens_per_agent_are_bounded_and_queues_do_not_grow() {
        let (_, agents) = registry();
        let screens: Vec<_> = (0..MAX_SCREENS_PER_AGENT)
            .map(|_| agents.login("erin").unwrap())
            .collect();
        assert_eq!(
            agents.login("erin").err(),
            Some(LoginError::TooManyScreens("erin".into()))
        );
        drop(screens);
        let mut s = agents.login("erin").unwrap();
        // A screen that never reads misses events past its queue; the rest still ring.
        for i in 0..SCREEN_QUEUE + 10 {
            agents.ring(ring(&format!("r{i}"), "erin", None));
        }
        let mut got = 0;
        while s.events.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, SCREEN_QUEUE);
    }
}

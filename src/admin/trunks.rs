//! `GET /api/trunks`: each configured trunk's registration state, as the signalling task last
//! saw it, so an operator can tell "no calls because the password is wrong" from "no calls".
//!
//! The [`TrunkBoard`] is written by the signalling task (which owns the sans-IO registration
//! clients) whenever a registration changes, and read by the admin API, `/readyz` and the
//! scrape handler. Times are kept as `Instant`s and turned into seconds when read.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::AdminState;

/// One trunk's state as the signalling task last set it.
#[derive(Debug, Clone, Default)]
pub struct TrunkEntry {
    pub name: String,
    /// Whether the gateway registers with this trunk.
    pub registers: bool,
    /// `unregistered`, `registering`, `registered`, `failed`, or `address-only`.
    pub state: &'static str,
    /// Our Contact as registered.
    pub contact: Option<String>,
    /// Where REGISTERs go now (`transport:address`): the registrar's address in use, which
    /// moves to the next one on a timeout or 503 (RFC 3263 failover).
    pub target: Option<String>,
    pub registered_until: Option<Instant>,
    pub next_retry: Option<Instant>,
    pub last_error: Option<String>,
    /// Failed attempts since the start.
    pub failures: u64,
}

/// The trunks' states, shared between the signalling task and the HTTP side.
#[derive(Debug, Default)]
pub struct TrunkBoard {
    entries: Mutex<Vec<TrunkEntry>>,
}

impl TrunkBoard {
    pub fn new() -> TrunkBoard {
        TrunkBoard::default()
    }

    /// Replaces (or adds) the entry named `entry.name`.
    pub fn set(&self, entry: TrunkEntry) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.iter_mut().find(|e| e.name == entry.name) {
            Some(e) => *e = entry,
            None => entries.push(entry),
        }
    }

    pub fn snapshot(&self) -> Vec<TrunkEntry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The entries as the API shows them, times relative to `now`.
    pub fn views(&self, now: Instant) -> Vec<TrunkView> {
        let wall = SystemTime::now();
        self.snapshot()
            .into_iter()
            .map(|e| {
                let until_unix = e.registered_until.and_then(|u| {
                    (wall + u.saturating_duration_since(now))
                        .duration_since(UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs())
                });
                TrunkView {
                    registered_until: until_unix,
                    expires_in_s: e
                        .registered_until
                        .map(|u| u.saturating_duration_since(now).as_secs()),
                    next_retry_in_s: e
                        .next_retry
                        .map(|r| r.saturating_duration_since(now).as_secs()),
                    name: e.name,
                    registers: e.registers,
                    state: e.state,
                    contact: e.contact,
                    target: e.target,
                    last_error: e.last_error,
                    failures: e.failures,
                }
            })
            .collect()
    }
}

/// One trunk in `GET /api/trunks` and `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct TrunkView {
    pub name: String,
    pub registers: bool,
    pub state: &'static str,
    pub contact: Option<String>,
    /// Where REGISTERs go now (`transport:address`).
    pub target: Option<String>,
    /// Unix time (seconds) the binding runs out, while registered.
    pub registered_until: Option<u64>,
    pub expires_in_s: Option<u64>,
    pub last_error: Option<String>,
    /// Seconds to the next attempt after a failure.
    pub next_retry_in_s: Option<u64>,
    pub failures: u64,
}

#[derive(Serialize)]
pub struct TrunkList {
    pub count: usize,
    pub trunks: Vec<TrunkView>,
}

/// `GET /api/trunks`.
pub async fn list(State(state): State<Arc<AdminState>>) -> Json<TrunkList> {
    let trunks = state.trunks.views(Instant::now());
    Json(TrunkList {
        count: trunks.len(),
        trunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::{assert_schema, fixture, send, ADMIN};
    use axum::http::StatusCode;
    use std::time::Duration;

    #[tokio::test]
    async fn trunks_show_state_expiry_and_errors() {
        let f = fixture(true);
        let now = Instant::now();
        f.state.trunks.set(TrunkEntry {
            name: "carrier".into(),
            registers: true,
            state: "registered",
            contact: Some("sip:bot@127.0.0.1:5060".into()),
            registered_until: Some(now + Duration::from_secs(300)),
            ..TrunkEntry::default()
        });
        f.state.trunks.set(TrunkEntry {
            name: "pbx".into(),
            registers: true,
            state: "failed",
            next_retry: Some(now + Duration::from_secs(60)),
            last_error: Some("credentials refused".into()),
            failures: 2,
            ..TrunkEntry::default()
        });
        let a = send(&f.app, "GET", "/api/trunks", None, None, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let a = send(&f.app, "GET", "/api/trunks", Some(ADMIN), None, "").await;
        assert_eq!(a.status, StatusCode::OK);
        let v = a.json();
        assert_schema("GET", "/api/trunks", a.status, &v);
        assert_eq!(v["count"], 2);
        assert_eq!(v["trunks"][0]["state"], "registered");
        assert!(v["trunks"][0]["expires_in_s"]
            .as_u64()
            .is_some_and(|s| s > 290));
        assert!(v["trunks"][0]["registered_until"].as_u64().is_some());
        assert_eq!(v["trunks"][1]["last_error"], "credentials refused");
        assert!(v["trunks"][1]["next_retry_in_s"]
            .as_u64()
            .is_some_and(|s| s > 50));
        // Readiness lists them too, and does not depend on them.
        let r = send(&f.app, "GET", "/readyz", None, None, "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_schema("GET", "/readyz", r.status, &r.json());
        assert_eq!(r.json()["trunks"][1]["state"], "failed");
    }
}

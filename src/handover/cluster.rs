//! Agent screens across a cluster: every gateway's hand-over events reach every gateway's hub.
//!
//! # Why
//!
//! Behind a SIP proxy a call lands on any gateway, but an agent keeps one screen open on one
//! gateway (whichever the load balancer in front of the HTTP side picked), and a CTI system
//! fetches `GET /calls/{id}/context` from whichever gateway it reaches. So with a shared store
//! the hub of each gateway ([`HandoverHub`]) writes its own hand-over events and lines into
//! `handover_events` on PostgreSQL and follows the other gateways' (`LISTEN
//! voicebot_handover`): the screens of every gateway see every call, live, and a context is
//! served wherever it is asked for. A context no hub holds any more (a gateway started after
//! the call, or more than [`crate::handover::hub::MAX_CALLS`] calls ago) is rebuilt from the
//! table ([`HandoverRelay::context`]).
//!
//! # How
//!
//! - A call never waits for the database: the hub hands its change to a bounded queue
//!   ([`QUEUE`]) and a writer thread inserts it (with `pg_notify` in the same statement).
//! - A follower thread holds one pooled connection in `LISTEN`, and on each notice (and at
//!   least every [`POLL`], in case a notice was lost with a connection) reads the rows after
//!   the last it applied. Ids are taken in insertion order but two gateways' transactions may
//!   commit out of order, so it looks back [`LOOKBACK`] ids and skips the ones it has applied.
//! - Rows older than the history's retention are pruned daily.

use std::collections::BTreeSet;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::handover::hub::{HandoverHub, HubEvent, RelayOp};
use crate::storage::postgres::{self as pg, PgError, PgPool};
use crate::storage::Shared;

/// The notification channel.
pub const CHANNEL: &str = "voicebot_handover";
/// Changes waiting for the writer; beyond this a change is dropped (logged), never waited for.
pub const QUEUE: usize = 4096;
/// The follower reads the table at least this often.
const POLL: Duration = Duration::from_secs(1);
/// How far before the last applied id the follower looks again (late commits).
const LOOKBACK: i64 = 256;
/// Rows the follower reads per round.
const BATCH: i64 = 500;
/// Events replayed into the hub at start (recent contexts for the screens' snapshot).
const REPLAY: i64 = 500;

const MIGRATIONS: &[&str] = &[include_str!(
    "../../migrations/postgres/handover/0001_handover_events.sql"
)];

/// The cluster side of this gateway's hub.
#[derive(Debug, Clone)]
pub struct HandoverRelay {
    pool: PgPool,
    node: String,
}

impl HandoverRelay {
    /// Migrates the table, replays the cluster's recent events into `hub`, then starts the
    /// writer and the follower threads (they run as long as the process). Blocking.
    pub fn start(shared: &Shared, hub: &Arc<HandoverHub>) -> Result<HandoverRelay, PgError> {
        pg::migrate(&shared.pool, "handover", MIGRATIONS)?;
        let relay = HandoverRelay {
            pool: shared.pool.clone(),
            node: shared.node.clone(),
        };
        let mut follower = Follower {
            pool: relay.pool.clone(),
            node: relay.node.clone(),
            hub: Arc::clone(hub),
            after: 0,
            applied: BTreeSet::new(),
        };
        let newest: i64 = pg::conn(&relay.pool)?
            .query_one("SELECT COALESCE(MAX(id), 0) FROM handover_events", &[])?
            .get(0);
        follower.after = (newest - REPLAY).max(0);
        follower.catch_up_all()?;
        let (tx, rx) = sync_channel(QUEUE);
        hub.relay_to(tx);
        let writer = Writer {
            pool: relay.pool.clone(),
            node: relay.node.clone(),
        };
        spawn("handover-relay-writer", move || writer.run(rx));
        spawn("handover-relay-follower", move || follower.run());
        tracing::info!(node = %relay.node, "hand-over events shared with the cluster");
        Ok(relay)
    }

    /// A call's latest context rebuilt from the table (every gateway's events), `None` when the
    /// call has none. Blocking.
    pub fn context(&self, call_id: &str) -> Result<Option<serde_json::Value>, PgError> {
        let rows = pg::conn(&self.pool)?.query(
            "SELECT op, kind, call_id, data::text FROM handover_events
             WHERE call_id = $1 ORDER BY id",
            &[&call_id],
        )?;
        let hub = HandoverHub::new();
        for row in rows {
            if let Some(op) = relay_op(row.get(0), row.get(1), row.get(2), row.get(3)) {
                hub.apply_remote(op);
            }
        }
        Ok(hub.context(call_id))
    }

    /// Prunes events older than `days` (0: kept), at start and then daily, as the call
    /// history is pruned.
    pub fn spawn_retention(self, days: u32) -> Option<tokio::task::JoinHandle<()>> {
        crate::storage::spawn_daily_prune("hand-over events", days, move |before| {
            self.prune(before)
        })
    }

    /// Deletes the events created before `before_ms`; returns how many. Blocking.
    pub fn prune(&self, before_ms: i64) -> Result<u64, PgError> {
        Ok(pg::conn(&self.pool)?.execute(
            "DELETE FROM handover_events WHERE created_ms < $1",
            &[&before_ms],
        )?)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        tracing::error!(error = %e, thread = name, "cannot start a cluster relay thread");
    }
}

/// A row as the hub's change it records.
fn relay_op(op: String, kind: String, call_id: String, data: String) -> Option<RelayOp> {
    let data = serde_json::from_str(&data).ok()?;
    let event = HubEvent {
        kind,
        call_id,
        data,
    };
    match op.as_str() {
        "publish" => Some(RelayOp::Publish(event)),
        "line" => Some(RelayOp::Line(event)),
        _ => None,
    }
}

/// Inserts this gateway's changes.
struct Writer {
    pool: PgPool,
    node: String,
}

impl Writer {
    fn run(self, rx: Receiver<RelayOp>) {
        for op in rx {
            let mut backoff = Duration::from_millis(100);
            // A change is retried while the database is away (up to ~30 s), then dropped.
            for attempt in 1..=8 {
                match self.insert(&op) {
                    Ok(()) => break,
                    Err(e) if attempt == 8 => {
                        tracing::error!(error = %e, "hand-over event not shared with the cluster");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "sharing a hand-over event failed; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(8));
                    }
                }
            }
        }
    }

    fn insert(&self, op: &RelayOp) -> Result<(), PgError> {
        let (name, e) = match op {
            RelayOp::Publish(e) => ("publish", e),
            RelayOp::Line(e) => ("line", e),
        };
        let data = e.data.to_string();
        let now = crate::handover::outbox::now_unix_ms();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        pg::conn(&self.pool)?.query_one(
            "WITH ins AS (
                 INSERT INTO handover_events (node, op, kind, call_id, data, created_ms)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) RETURNING id)
             SELECT pg_notify($7, id::text) FROM ins",
            &[
                &self.node, &name, &e.kind, &e.call_id, &data, &now, &CHANNEL,
            ],
        )?;
        Ok(())
    }
}

/// Applies the other gateways' changes to this gateway's hub.
struct Follower {
    pool: PgPool,
    node: String,
    hub: Arc<HandoverHub>,
    /// The highest id applied (or skipped as our own).
    after: i64,
    /// Ids applied within the look-back window.
    applied: BTreeSet<i64>,
}

impl Follower {
    fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.follow() {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "following the cluster's hand-over events failed; reconnecting");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Listens on one connection until it fails.
    fn follow(&mut self) -> Result<(), PgError> {
        let mut conn = pg::conn(&self.pool)?;
        conn.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        loop {
            // After (re)connecting, and after every notice or quiet POLL: read what is new.
            self.catch_up(&mut conn)?;
            let mut notices = conn.notifications();
            let mut waiting = notices.timeout_iter(POLL);
            // A notice, or None after a quiet POLL; an error is a lost connection.
            let _notice = waiting.next()?;
        }
    }

    fn catch_up_all(&mut self) -> Result<(), PgError> {
        let mut conn = pg::conn(&self.pool)?;
        self.catch_up(&mut conn)
    }

    /// Applies the rows after `after - LOOKBACK` not applied yet, in id order.
    fn catch_up(&mut self, conn: &mut postgres::Client) -> Result<(), PgError> {
        loop {
            let from = (self.after - LOOKBACK).max(0);
            let rows = conn.query(
                "SELECT id, node, op, kind, call_id, data::text FROM handover_events
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&from, &BATCH],
            )?;
            let mut fresh = 0;
            let full = rows.len() as i64 == BATCH;
            let mut last = from;
            for row in rows {
                let id: i64 = row.get(0);
                last = id;
                if !self.applied.insert(id) {
                    continue;
                }
                fresh += 1;
                let node: String = row.get(1);
                if node != self.node {
                    if let Some(op) = relay_op(row.get(2), row.get(3), row.get(4), row.get(5)) {
                        self.hub.apply_remote(op);
                    }
                }
            }
            self.after = self.after.max(last);
            // Forget ids that fell out of the look-back window.
            let keep_from = self.after - LOOKBACK;
            self.applied = self.applied.split_off(&keep_from);
            if !full || fresh == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;
    use std::time::Instant;

    fn call_ids(ops: &[HubEvent]) -> HashSet<String> {
        ops.iter().map(|e| e.call_id.clone()).collect()
    }

    fn shared(url: &str, node: &str) -> Shared {
        Shared {
            pool: pg::connect(url, 4).expect("connects"),
            node: node.into(),
            shown_url: String::new(),
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_call_on_one_gateway_is_on_the_screens_and_contexts_of_another() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let hub_a = Arc::new(HandoverHub::new());
        let hub_b = Arc::new(HandoverHub::new());
        let _a = HandoverRelay::start(&shared(&url, "a"), &hub_a).expect("relay a");
        let relay_b = HandoverRelay::start(&shared(&url, "b"), &hub_b).expect("relay b");
        let mut screen_b = hub_b.subscribe();

        let started = Instant::now();
        hub_a.publish(
            "escalated",
            "c1",
            &json!({"call_id": "c1", "transcript": [{"text": "hi"}]}),
        );
        hub_a.append_line("c1", &json!({"speaker": "agent", "text": "hello"}));
        wait_for("the context on b", || {
            hub_b
                .context("c1")
                .is_some_and(|c| c["transcript"].as_array().map(Vec::len) == Some(2))
        });
        eprintln!("relayed in {:?}", started.elapsed());
        let first = screen_b.try_recv().expect("an event on b's screen");
        assert_eq!(
            (first.kind.as_str(), first.call_id.as_str()),
            ("escalated", "c1")
        );
        // b's own events are not applied twice on b, and reach a.
        hub_b.publish(
            "escalated",
            "c2",
            &json!({"call_id": "c2", "transcript": []}),
        );
        wait_for("c2 on a", || hub_a.context("c2").is_some());
        // Rebuilt from the table alone, as a gateway that never saw it would.
        let rebuilt = relay_b.context("c1").expect("query").expect("a context");
        assert_eq!(rebuilt, hub_a.context("c1").expect("a has it"));
        assert_eq!(relay_b.context("nope").expect("query"), None);
        assert_eq!(relay_b.prune(i64::MAX).expect("prune"), 3);
    }

    #[test]
    fn a_gateway_started_later_replays_recent_contexts() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let hub_a = Arc::new(HandoverHub::new());
        let _a = HandoverRelay::start(&shared(&url, "a"), &hub_a).expect("relay a");
        let events: Vec<HubEvent> = (0..3)
            .map(|i| HubEvent {
                kind: "escalated".into(),
                call_id: format!("c{i}"),
                data: json!({"transcript": [], "n": i}),
            })
            .collect();
        for e in &events {
            hub_a.publish(&e.kind, &e.call_id, &e.data);
        }
        let pool = shared(&url, "x").pool;
        wait_for("three rows", || {
            pg::conn(&pool)
                .expect("conn")
                .query_one("SELECT COUNT(*) FROM handover_events", &[])
                .map(|r| r.get::<_, i64>(0) == 3)
                .unwrap_or(false)
        });
        let hub_c = Arc::new(HandoverHub::new());
        let _c = HandoverRelay::start(&shared(&url, "c"), &hub_c).expect("relay c");
        let seen: HashSet<String> = hub_c
            .recent(10)
            .iter()
            .filter_map(|c| c.get("n").map(|n| format!("c{n}")))
            .collect();
        assert_eq!(seen, call_ids(&events));
    }
}

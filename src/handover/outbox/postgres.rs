//! The outbox on the cluster's shared PostgreSQL database: every gateway enqueues into one
//! table and every gateway delivers from it, so the events of a gateway that dies are
//! delivered by another.
//!
//! # Claims and leases
//!
//! [`PgOutbox::due`] does not just read: in one statement (one transaction) it takes the
//! oldest pending event of each call that is due and not leased by a live holder, locks those
//! rows with `FOR UPDATE SKIP LOCKED` (two gateways polling at once never wait on each other
//! nor take the same row) and records the claim: `claimed_by = <node>`,
//! `lease_until_ms = <now> + <lease>`. While the lease runs, no other gateway takes the event,
//! nor (since only a call's oldest pending event is ever due) any later event of its call: the
//! order per call holds across gateways. [`PgOutbox::mark_delivered`] and
//! [`PgOutbox::mark_failed`] end the lease. A gateway that dies between the claim and the
//! bookkeeping leaves a lease that runs out; then any gateway claims the event again and posts
//! it (at-least-once, the receiver de-duplicates on `Idempotency-Key`, as after a restart of a
//! single gateway).
//!
//! The lease is measured on the **database's clock** (`clock_timestamp()`), so gateways whose
//! clocks disagree still agree on when a lease ends. `next_attempt_ms` stays on the caller's
//! clock, as on SQLite (a few milliseconds of skew only move a retry by as much).
//!
//! A gateway re-claims the events it holds itself at once (its own lease does not keep it
//! out): the deliverer gives up a round whose lease runs short and takes the rest again in the
//! next one, and a gateway restarted under the same node name takes its events back without
//! waiting. Node names must therefore be unique in the cluster (the default,
//! `<hostname>:<SIP port>`, is).

use std::fmt;
use std::time::Duration;

use crate::storage::postgres::{conn, migrate, PgConn, PgPool};

use super::{
    attempts_from_sql, backoff_ms, envelope, from_sql, to_sql, DeadEvent, EventState, EventStatus,
    Failure, OutboxError, PendingEvent, WebhookConfig, MAX_ERROR_CHARS,
};

/// The store's name in `voicebot_schema`.
const STORE: &str = "outbox";

/// The schema, one file per version (never edit a released one; append).
const MIGRATIONS: &[&str] = &[include_str!(
    "../../../migrations/postgres/outbox/0001_webhook_outbox.sql"
)];

/// Pending: neither delivered nor given up.
const PENDING: &str = "delivered_ms IS NULL AND dead_ms IS NULL";

/// The database's clock in unix milliseconds (leases are measured on it).
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// The outbox table on the shared database, seen by gateway `node`.
pub(super) struct PgOutbox {
    pool: PgPool,
    node: String,
    lease: Duration,
}

impl fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutbox")
            .field("node", &self.node)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl PgOutbox {
    /// The outbox on `pool`'s database (its schema brought up to date), claiming as `node`
    /// for `lease` at a time.
    pub(super) fn open(pool: PgPool, node: &str, lease: Duration) -> Result<PgOutbox, OutboxError> {
        migrate(&pool, STORE, MIGRATIONS)?;
        Ok(PgOutbox {
            pool,
            node: node.to_string(),
            lease,
        })
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn lease(&self) -> Duration {
        self.lease
    }

    fn conn(&self) -> Result<PgConn, OutboxError> {
        Ok(conn(&self.pool)?)
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    pub(super) fn enqueue(
        &self,
        call_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> Result<String, OutboxError> {
        let (event_id, body) = envelope(call_id, kind, data, now_ms)?;
        self.conn()?.execute(
            "INSERT INTO webhook_outbox
                 (event_id, call_id, kind, body, created_ms, attempts, next_attempt_ms)
             VALUES ($1, $2, $3, $4, $5, 0, $5)",
            &[&event_id, &call_id, &kind, &body, &to_sql(now_ms)],
        )?;
        Ok(event_id)
    }

    /// Claims and returns up to `limit` events, oldest first: of each call its oldest pending
    /// event, when due by `now_ms` and not leased by another live holder.
    pub(super) fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<PendingEvent>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The lease and due conditions are on the locked row itself, so that a row another
        // gateway claimed (or delivered) after this statement's snapshot is re-checked on its
        // newest version when locked (READ COMMITTED re-evaluates them) and left alone.
        let rows = self.conn()?.query(
            &format!(
                "WITH picked AS (
                     SELECT o.id FROM webhook_outbox o
                     WHERE o.delivered_ms IS NULL AND o.dead_ms IS NULL
                       AND o.next_attempt_ms <= $1
                       AND (o.lease_until_ms IS NULL OR o.lease_until_ms <= {DB_NOW_MS}
                            OR o.claimed_by = $3)
                       AND NOT EXISTS (
                           SELECT 1 FROM webhook_outbox e
                           WHERE e.call_id = o.call_id AND e.id < o.id
                             AND e.delivered_ms IS NULL AND e.dead_ms IS NULL)
                     ORDER BY o.id
                     LIMIT $2
                     FOR UPDATE OF o SKIP LOCKED
                 )
                 UPDATE webhook_outbox w
                 SET claimed_by = $3, lease_until_ms = {DB_NOW_MS} + $4
                 FROM picked WHERE w.id = picked.id
                 RETURNING w.id, w.event_id, w.call_id, w.kind, w.body, w.created_ms, w.attempts"
            ),
            &[&to_sql(now_ms), &limit, &self.node, &self.lease_ms()],
        )?;
        let mut events: Vec<PendingEvent> = rows
            .iter()
            .map(|row| PendingEvent {
                id: row.get(0),
                event_id: row.get(1),
                call_id: row.get(2),
                kind: row.get(3),
                body: row.get(4),
                created_ms: from_sql(row.get(5)),
                attempts: attempts_from_sql(row.get(6)),
            })
            .collect();
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    /// Gives back this gateway's claims on `ids` (events it took but will not post now).
    pub(super) fn release(&self, ids: &[i64]) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.conn()?.execute(
            &format!(
                "UPDATE webhook_outbox SET lease_until_ms = NULL
                 WHERE id = ANY($1) AND claimed_by = $2 AND {PENDING}"
            ),
            &[&ids, &self.node],
        )?;
        Ok(())
    }

    /// The earliest next attempt among the calls' oldest pending events that this gateway
    /// may claim (those leased by another live gateway are not counted: when their lease ends
    /// is the holder's business, and the deliverer polls at least every second anyway).
    pub(super) fn next_due_ms(&self) -> Result<Option<u64>, OutboxError> {
        let row = self.conn()?.query_one(
            &format!(
                "SELECT MIN(o.next_attempt_ms) FROM webhook_outbox o
                 WHERE o.delivered_ms IS NULL AND o.dead_ms IS NULL
                   AND (o.lease_until_ms IS NULL OR o.lease_until_ms <= {DB_NOW_MS}
                        OR o.claimed_by = $1)
                   AND NOT EXISTS (
                       SELECT 1 FROM webhook_outbox e
                       WHERE e.call_id = o.call_id AND e.id < o.id
                         AND e.delivered_ms IS NULL AND e.dead_ms IS NULL)"
            ),
            &[&self.node],
        )?;
        let next: Option<i64> = row.get(0);
        Ok(next.map(from_sql))
    }

    /// Records a 2xx answer (whoever holds the claim now: a delivery is a fact) and ends the
    /// lease.
    pub(super) fn mark_delivered(&self, id: i64, now_ms: u64) -> Result<(), OutboxError> {
        let changed = self.conn()?.execute(
            &format!(
                "UPDATE webhook_outbox
                 SET delivered_ms = $2, attempts = attempts + 1, lease_until_ms = NULL
                 WHERE id = $1 AND {PENDING}"
            ),
            &[&id, &to_sql(now_ms)],
        )?;
        if changed == 0 {
            return Err(OutboxError::NotPending(id));
        }
        Ok(())
    }

    /// Records a failed attempt, as on SQLite, and ends the lease. An event that another
    /// gateway claimed meanwhile (this one's lease ran out) is that gateway's to judge:
    /// [`OutboxError::NotPending`].
    pub(super) fn mark_failed(
        &self,
        id: i64,
        error: &str,
        now_ms: u64,
        config: &WebhookConfig,
    ) -> Result<Failure, OutboxError> {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let row = tx.query_opt(
            &format!(
                "SELECT event_id, call_id, kind, attempts FROM webhook_outbox
                 WHERE id = $1 AND {PENDING}
                   AND (claimed_by = $2 OR claimed_by IS NULL OR lease_until_ms IS NULL
                        OR lease_until_ms <= {DB_NOW_MS})
                 FOR UPDATE"
            ),
            &[&id, &self.node],
        )?;
        let Some(row) = row else {
            return Err(OutboxError::NotPending(id));
        };
        let (event_id, call_id, kind): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let attempt = attempts_from_sql(row.get(3)).saturating_add(1);
        let outcome = if config.max_attempts > 0 && attempt >= config.max_attempts {
            tx.execute(
                "UPDATE webhook_outbox
                 SET attempts = $2, dead_ms = $3, last_error = $4, lease_until_ms = NULL
                 WHERE id = $1",
                &[&id, &i64::from(attempt), &to_sql(now_ms), &error],
            )?;
            Failure::Dead { attempt }
        } else {
            let retry_in_ms = backoff_ms(
                attempt,
                config.initial_backoff_ms,
                config.max_backoff_ms,
                rand::random::<f64>(),
            );
            tx.execute(
                "UPDATE webhook_outbox
                 SET attempts = $2, next_attempt_ms = $3, last_error = $4, lease_until_ms = NULL
                 WHERE id = $1",
                &[
                    &id,
                    &i64::from(attempt),
                    &to_sql(now_ms.saturating_add(retry_in_ms)),
                    &error,
                ],
            )?;
            Failure::Retry {
                attempt,
                retry_in_ms,
            }
        };
        tx.commit()?;
        if let Failure::Dead { attempt } = outcome {
            tracing::error!(
                event_id = %event_id,
                call_id = %call_id,
                kind = %kind,
                attempts = attempt,
                reason = %error,
                node = %self.node,
                "webhook event given up after its last allowed attempt"
            );
        }
        Ok(outcome)
    }

    pub(super) fn pending_count(&self) -> Result<u64, OutboxError> {
        let count: i64 = self
            .conn()?
            .query_one(
                &format!("SELECT COUNT(*) FROM webhook_outbox WHERE {PENDING}"),
                &[],
            )?
            .get(0);
        Ok(from_sql(count))
    }

    pub(super) fn dead_count(&self) -> Result<u64, OutboxError> {
        let count: i64 = self
            .conn()?
            .query_one(
                "SELECT COUNT(*) FROM webhook_outbox
                 WHERE dead_ms IS NOT NULL AND delivered_ms IS NULL",
                &[],
            )?
            .get(0);
        Ok(from_sql(count))
    }

    pub(super) fn dead_events(&self, limit: usize) -> Result<Vec<DeadEvent>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.conn()?.query(
            "SELECT event_id, call_id, kind, created_ms, dead_ms, attempts, last_error
             FROM webhook_outbox
             WHERE dead_ms IS NOT NULL AND delivered_ms IS NULL
             ORDER BY dead_ms DESC, id DESC
             LIMIT $1",
            &[&limit],
        )?;
        Ok(rows
            .iter()
            .map(|row| DeadEvent {
                event_id: row.get(0),
                call_id: row.get(1),
                kind: row.get(2),
                created_ms: from_sql(row.get(3)),
                dead_ms: from_sql(row.get(4)),
                attempts: attempts_from_sql(row.get(5)),
                last_error: row.get(6),
            })
            .collect())
    }

    pub(super) fn retry_dead(&self, event_id: &str, now_ms: u64) -> Result<(), OutboxError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE webhook_outbox
             SET dead_ms = NULL, attempts = 0, next_attempt_ms = $2, lease_until_ms = NULL
             WHERE event_id = $1 AND dead_ms IS NOT NULL AND delivered_ms IS NULL",
            &[&event_id, &to_sql(now_ms)],
        )?;
        if changed == 0 {
            let delivered: Option<Option<i64>> = tx
                .query_opt(
                    "SELECT delivered_ms FROM webhook_outbox WHERE event_id = $1",
                    &[&event_id],
                )?
                .map(|row| row.get(0));
            return Err(match delivered {
                None => OutboxError::UnknownEvent(event_id.to_string()),
                Some(delivered) => OutboxError::NotDead {
                    event_id: event_id.to_string(),
                    state: if delivered.is_some() {
                        EventState::Delivered
                    } else {
                        EventState::Pending
                    },
                },
            });
        }
        tx.commit()?;
        tracing::info!(event_id = %event_id, node = %self.node, "dead webhook event requeued");
        Ok(())
    }

    pub(super) fn events_for_call(&self, call_id: &str) -> Result<Vec<EventStatus>, OutboxError> {
        let rows = self.conn()?.query(
            "SELECT event_id, kind, created_ms, attempts, next_attempt_ms, delivered_ms,
                    dead_ms, last_error, claimed_by
             FROM webhook_outbox WHERE call_id = $1 ORDER BY id",
            &[&call_id],
        )?;
        Ok(rows
            .iter()
            .map(|row| {
                let delivered_ms: Option<i64> = row.get(5);
                let dead_ms: Option<i64> = row.get(6);
                let state = match (delivered_ms, dead_ms) {
                    (Some(_), _) => EventState::Delivered,
                    (None, Some(_)) => EventState::Dead,
                    (None, None) => EventState::Pending,
                };
                EventStatus {
                    event_id: row.get(0),
                    kind: row.get(1),
                    state,
                    created_ms: from_sql(row.get(2)),
                    attempts: attempts_from_sql(row.get(3)),
                    next_attempt_ms: from_sql(row.get(4)),
                    delivered_ms: delivered_ms.map(from_sql),
                    last_error: row.get(7),
                    claimed_by: row.get(8),
                }
            })
            .collect())
    }

    pub(super) fn prune(&self, before_ms: u64) -> Result<usize, OutboxError> {
        let deleted = self.conn()?.execute(
            &format!("DELETE FROM webhook_outbox WHERE NOT ({PENDING}) AND created_ms < $1"),
            &[&to_sql(before_ms)],
        )?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    /// Sets the schema version of this store (the test of a newer schema being refused).
    #[cfg(test)]
    pub(super) fn set_schema_version(&self, version: i64) -> Result<(), OutboxError> {
        self.conn()?.execute(
            "UPDATE voicebot_schema SET version = $2 WHERE store = $1",
            &[&STORE, &version],
        )?;
        Ok(())
    }
}

impl From<::postgres::Error> for OutboxError {
    fn from(e: ::postgres::Error) -> Self {
        OutboxError::Postgres(e.into())
    }
}

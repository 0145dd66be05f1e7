//! The outbox in one SQLite file: the embedded default, a single gateway's own queue. Only
//! this process delivers from it, so [`SqliteOutbox::due`] just reads (nothing to claim).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    attempts_from_sql, backoff_ms, envelope, from_sql, to_sql, DeadEvent, EventState, EventStatus,
    Failure, OutboxError, PendingEvent, WebhookConfig, MAX_ERROR_CHARS,
};

/// The schema, one entry per version: entry `i` brings a database from version `i` to `i + 1`
/// (`PRAGMA user_version`). Append; never edit a released entry.
pub(super) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE webhook_outbox (
         id INTEGER PRIMARY KEY,
         event_id TEXT NOT NULL UNIQUE,
         call_id TEXT NOT NULL,
         kind TEXT NOT NULL,
         body TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         attempts INTEGER NOT NULL DEFAULT 0,
         next_attempt_ms INTEGER NOT NULL,
         delivered_ms INTEGER NULL,
         dead_ms INTEGER NULL,
         last_error TEXT NULL
     );
     CREATE INDEX webhook_outbox_pending_by_call ON webhook_outbox (call_id, id)
         WHERE delivered_ms IS NULL AND dead_ms IS NULL;
     CREATE INDEX webhook_outbox_by_call ON webhook_outbox (call_id);",
    // Dead letters are listed by the admin API, newest first.
    "CREATE INDEX webhook_outbox_dead ON webhook_outbox (dead_ms) WHERE dead_ms IS NOT NULL;",
];

/// Pending: neither delivered nor given up.
const PENDING: &str = "delivered_ms IS NULL AND dead_ms IS NULL";

/// The durable queue of webhook events, in one SQLite database.
pub(super) struct SqliteOutbox {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl From<crate::storage::sqlite::StoreError> for OutboxError {
    fn from(e: crate::storage::sqlite::StoreError) -> Self {
        use crate::storage::sqlite::StoreError;
        match e {
            StoreError::CreateDir { path, source } => OutboxError::CreateDir { path, source },
            StoreError::Sqlite(e) => OutboxError::Sqlite(e),
            StoreError::NewerSchema { found, known } => OutboxError::SchemaTooNew {
                found,
                supported: known,
            },
        }
    }
}

impl SqliteOutbox {
    /// Opens (or creates, with its directory) the database at `path` and brings its schema up
    /// to date.
    pub(super) fn open(path: &Path) -> Result<SqliteOutbox, OutboxError> {
        let mut conn = crate::storage::sqlite::open(path)?;
        migrate(&mut conn)?;
        Ok(SqliteOutbox {
            conn: Mutex::new(conn),
            path: Some(path.to_path_buf()),
        })
    }

    /// A throw-away outbox in memory (tests, dry runs).
    pub(super) fn in_memory() -> Result<SqliteOutbox, OutboxError> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        Ok(SqliteOutbox {
            conn: Mutex::new(conn),
            path: None,
        })
    }

    /// The database file (`None` in memory).
    pub(super) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held cannot leave the database half-written (an open
        // transaction rolls back when dropped), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores an event, due at once, and returns its id (the idempotency key).
    pub(super) fn enqueue(
        &self,
        call_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> Result<String, OutboxError> {
        let (event_id, body) = envelope(call_id, kind, data, now_ms)?;
        self.conn().execute(
            "INSERT INTO webhook_outbox
                 (event_id, call_id, kind, body, created_ms, attempts, next_attempt_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?5)",
            params![event_id, call_id, kind, body, to_sql(now_ms)],
        )?;
        Ok(event_id)
    }

    /// Up to `limit` events to send now, oldest first: for each call, only its oldest pending
    /// event, and only when its next attempt is due (`next_attempt_ms <= now_ms`).
    pub(super) fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<PendingEvent>, OutboxError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT id, event_id, call_id, kind, body, created_ms, attempts
             FROM webhook_outbox
             WHERE id IN (SELECT MIN(id) FROM webhook_outbox WHERE {PENDING} GROUP BY call_id)
               AND next_attempt_ms <= ?1
             ORDER BY id
             LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![to_sql(now_ms), limit], |row| {
            Ok(PendingEvent {
                id: row.get(0)?,
                event_id: row.get(1)?,
                call_id: row.get(2)?,
                kind: row.get(3)?,
                body: row.get(4)?,
                created_ms: from_sql(row.get(5)?),
                attempts: attempts_from_sql(row.get(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next event becomes due (the earliest next attempt among the oldest pending
    /// event of each call); `None`: nothing pending.
    pub(super) fn next_due_ms(&self) -> Result<Option<u64>, OutboxError> {
        let next: Option<i64> = self.conn().query_row(
            &format!(
                "SELECT MIN(next_attempt_ms) FROM webhook_outbox
                 WHERE id IN (SELECT MIN(id) FROM webhook_outbox WHERE {PENDING} GROUP BY call_id)"
            ),
            [],
            |row| row.get(0),
        )?;
        Ok(next.map(from_sql))
    }

    /// Records a 2xx answer to event `id`.
    pub(super) fn mark_delivered(&self, id: i64, now_ms: u64) -> Result<(), OutboxError> {
        let changed = self.conn().execute(
            &format!(
                "UPDATE webhook_outbox SET delivered_ms = ?2, attempts = attempts + 1
                 WHERE id = ?1 AND {PENDING}"
            ),
            params![id, to_sql(now_ms)],
        )?;
        if changed == 0 {
            return Err(OutboxError::NotPending(id));
        }
        Ok(())
    }

    /// Records a failed attempt at event `id`: schedules the next one with exponential backoff
    /// and jitter, or gives the event up after `config.max_attempts` attempts (when > 0).
    pub(super) fn mark_failed(
        &self,
        id: i64,
        error: &str,
        now_ms: u64,
        config: &WebhookConfig,
    ) -> Result<Failure, OutboxError> {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some((event_id, call_id, kind, attempts)) = tx
            .query_row(
                &format!(
                    "SELECT event_id, call_id, kind, attempts FROM webhook_outbox
                     WHERE id = ?1 AND {PENDING}"
                ),
                [id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        attempts_from_sql(row.get(3)?),
                    ))
                },
            )
            .optional()?
        else {
            return Err(OutboxError::NotPending(id));
        };
        let attempt = attempts.saturating_add(1);
        let outcome = if config.max_attempts > 0 && attempt >= config.max_attempts {
            tx.execute(
                "UPDATE webhook_outbox SET attempts = ?2, dead_ms = ?3, last_error = ?4
                 WHERE id = ?1",
                params![id, attempt, to_sql(now_ms), error],
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
                "UPDATE webhook_outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4
                 WHERE id = ?1",
                params![
                    id,
                    attempt,
                    to_sql(now_ms.saturating_add(retry_in_ms)),
                    error
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
                "webhook event given up after its last allowed attempt"
            );
        }
        Ok(outcome)
    }

    /// Events not yet delivered nor given up (the outbox depth, for metrics).
    pub(super) fn pending_count(&self) -> Result<u64, OutboxError> {
        let count: i64 = self.conn().query_row(
            &format!("SELECT COUNT(*) FROM webhook_outbox WHERE {PENDING}"),
            [],
            |row| row.get(0),
        )?;
        Ok(from_sql(count))
    }

    /// Events given up (dead letters), also those not yet pruned.
    pub(super) fn dead_count(&self) -> Result<u64, OutboxError> {
        let count: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM webhook_outbox
             WHERE dead_ms IS NOT NULL AND delivered_ms IS NULL",
            [],
            |row| row.get(0),
        )?;
        Ok(from_sql(count))
    }

    /// Up to `limit` dead letters, the most recently given up first.
    pub(super) fn dead_events(&self, limit: usize) -> Result<Vec<DeadEvent>, OutboxError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT event_id, call_id, kind, created_ms, dead_ms, attempts, last_error
             FROM webhook_outbox
             WHERE dead_ms IS NOT NULL AND delivered_ms IS NULL
             ORDER BY dead_ms DESC, id DESC
             LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map([limit], |row| {
            Ok(DeadEvent {
                event_id: row.get(0)?,
                call_id: row.get(1)?,
                kind: row.get(2)?,
                created_ms: from_sql(row.get(3)?),
                dead_ms: from_sql(row.get(4)?),
                attempts: attempts_from_sql(row.get(5)?),
                last_error: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Requeues dead letter `event_id` (an admin fixed the receiver): pending again, due at
    /// `now_ms`, with a fresh set of `max_attempts` attempts; its id and body are unchanged and
    /// its last error is kept until the next attempt. It goes before its call's events still
    /// pending (it is older), after those already delivered.
    pub(super) fn retry_dead(&self, event_id: &str, now_ms: u64) -> Result<(), OutboxError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE webhook_outbox SET dead_ms = NULL, attempts = 0, next_attempt_ms = ?2
             WHERE event_id = ?1 AND dead_ms IS NOT NULL AND delivered_ms IS NULL",
            params![event_id, to_sql(now_ms)],
        )?;
        if changed == 0 {
            let delivered: Option<Option<i64>> = tx
                .query_row(
                    "SELECT delivered_ms FROM webhook_outbox WHERE event_id = ?1",
                    [event_id],
                    |row| row.get(0),
                )
                .optional()?;
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
        tracing::info!(event_id = %event_id, "dead webhook event requeued");
        Ok(())
    }

    /// Every event of a call, in creation order, with its delivery state.
    pub(super) fn events_for_call(&self, call_id: &str) -> Result<Vec<EventStatus>, OutboxError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT event_id, kind, created_ms, attempts, next_attempt_ms, delivered_ms,
                    dead_ms, last_error
             FROM webhook_outbox WHERE call_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([call_id], |row| {
            let delivered_ms: Option<i64> = row.get(5)?;
            let dead_ms: Option<i64> = row.get(6)?;
            let state = match (delivered_ms, dead_ms) {
                (Some(_), _) => EventState::Delivered,
                (None, Some(_)) => EventState::Dead,
                (None, None) => EventState::Pending,
            };
            Ok(EventStatus {
                event_id: row.get(0)?,
                kind: row.get(1)?,
                state,
                created_ms: from_sql(row.get(2)?),
                attempts: attempts_from_sql(row.get(3)?),
                next_attempt_ms: from_sql(row.get(4)?),
                delivered_ms: delivered_ms.map(from_sql),
                last_error: row.get(7)?,
                claimed_by: None,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes delivered and dead events created before `before_ms`; returns how many. Pending
    /// events are never deleted.
    pub(super) fn prune(&self, before_ms: u64) -> Result<usize, OutboxError> {
        Ok(self.conn().execute(
            &format!("DELETE FROM webhook_outbox WHERE NOT ({PENDING}) AND created_ms < ?1"),
            [to_sql(before_ms)],
        )?)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), OutboxError> {
    Ok(crate::storage::sqlite::migrate(
        conn,
        MIGRATIONS,
        "webhook outbox",
    )?)
}

//! The call history: every finished call's record, kept for the admin API in SQLite (one
//! gateway) or on the cluster's shared PostgreSQL store ([`CallHistory::open_postgres`]), where
//! every gateway writes its calls and any gateway's admin API lists and analyses all of them.
//!
//! # Why it exists
//!
//! Admins need to see what the bot did on each call: which flow answered, what it understood,
//! whether it handed the call to a person and why, how the transfer went. The gateway already
//! writes one JSON record per finished call (see `write_record` in [`crate::server`]), but a
//! directory of files answers "what happened on call X" and nothing else: questions such as
//! "how many calls escalated last week for reason X", "what share of calls did the bot finish
//! itself" or "how sure was the intent engine about `billing`" would mean reading every file.
//! [`CallHistory`] keeps each record whole, next to the few facts those questions filter and
//! aggregate on, in indexed columns ([`CallSummary`]), plus one row per caller turn (intent
//! and confidence) for the intent statistics of [`CallHistory::analytics`].
//!
//! # Input
//!
//! [`CallHistory::insert`] takes the record as JSON ([`serde_json::Value`]), exactly as the
//! gateway serialises its `CallRecord` (with the `CallReport` of [`crate::report`] flattened
//! into it), not the Rust types: the store does not change when those types do, and older
//! records with fewer fields still go in. Every field is read defensively: a missing or
//! mistyped field becomes `None` or a default; only a record without a `call_id` is refused.
//! The record does not say when the call started, so the caller passes that time.
//!
//! # Schema
//!
//! Versioned by [`MIGRATIONS`] and `PRAGMA user_version`: a database is brought up to date when
//! opened, and one written by a newer release (a version this binary does not know) is refused
//! with [`HistoryError::NewerSchema`] rather than misread. On PostgreSQL the same columns live
//! in `migrations/postgres/history/` (tables `calls` and `call_turns`), versioned per store by
//! [`crate::storage::postgres::migrate`]; see [`postgres`].
//!
//! - `calls`: one row per call, keyed by the gateway's own call id `id` (the SIP `call_id`, a
//!   peer's choice, is an indexed column, not a key): the [`CallSummary`] columns and the full
//!   `record` (JSON text). Indexed by start time, flow and escalation reason.
//!   `node`: the gateway that handled the call (the record's `node`, set when a shared store is
//!   on; `None` for a single gateway).
//! - `turns`: one row per caller turn, keyed by `(id, idx)` (`idx`: the 1-based position
//!   of the turn in the record's `turns`): the recognised `intent` and its `confidence`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod postgres;

/// The schema, one entry per version: entry `i` brings a database from version `i` to `i + 1`
/// (`PRAGMA user_version`). Append; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE calls (
         call_id TEXT PRIMARY KEY NOT NULL,
         started_at_ms INTEGER NOT NULL,
         duration_ms INTEGER NOT NULL,
         caller TEXT NOT NULL,
         flow TEXT NULL,
         outcome TEXT NULL,
         escalated INTEGER NOT NULL,
         reason TEXT NULL,
         transfer_outcome TEXT NULL,
         turn_count INTEGER NOT NULL,
         ended_by TEXT NOT NULL,
         record TEXT NOT NULL
     );
     CREATE INDEX calls_by_started ON calls (started_at_ms);
     CREATE INDEX calls_by_flow ON calls (flow, started_at_ms);
     CREATE INDEX calls_by_reason ON calls (reason, started_at_ms);
     CREATE TABLE turns (
         call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
         idx INTEGER NOT NULL,
         intent TEXT NULL,
         confidence REAL NULL,
         PRIMARY KEY (call_id, idx)
     ) WITHOUT ROWID;",
    // Version 2: calls are keyed by the gateway's own call id (`id`), not by the SIP Call-ID,
    // which a peer chooses: two calls with one Call-ID are two rows. Rows of version 1 take
    // their Call-ID as their id (it was unique there).
    "CREATE TABLE calls_v2 (
         id TEXT PRIMARY KEY NOT NULL,
         call_id TEXT NOT NULL,
         started_at_ms INTEGER NOT NULL,
         duration_ms INTEGER NOT NULL,
         caller TEXT NOT NULL,
         flow TEXT NULL,
         outcome TEXT NULL,
         escalated INTEGER NOT NULL,
         reason TEXT NULL,
         transfer_outcome TEXT NULL,
         turn_count INTEGER NOT NULL,
         ended_by TEXT NOT NULL,
         record TEXT NOT NULL
     );
     INSERT INTO calls_v2 SELECT call_id, call_id, started_at_ms, duration_ms, caller, flow,
         outcome, escalated, reason, transfer_outcome, turn_count, ended_by, record FROM calls;
     CREATE TABLE turns_v2 (
         id TEXT NOT NULL REFERENCES calls_v2 (id) ON DELETE CASCADE,
         idx INTEGER NOT NULL,
         intent TEXT NULL,
         confidence REAL NULL,
         PRIMARY KEY (id, idx)
     ) WITHOUT ROWID;
     INSERT INTO turns_v2 SELECT call_id, idx, intent, confidence FROM turns;
     DROP TABLE turns;
     DROP TABLE calls;
     ALTER TABLE calls_v2 RENAME TO calls;
     ALTER TABLE turns_v2 RENAME TO turns;
     CREATE INDEX calls_by_started ON calls (started_at_ms);
     CREATE INDEX calls_by_flow ON calls (flow, started_at_ms);
     CREATE INDEX calls_by_reason ON calls (reason, started_at_ms);
     CREATE INDEX calls_by_call_id ON calls (call_id, started_at_ms);",
    // Version 3: the gateway that handled the call (a cluster on a shared store names it).
    "ALTER TABLE calls ADD COLUMN node TEXT NULL;
     CREATE INDEX calls_by_node ON calls (node, started_at_ms);",
];

/// [`CallFilter::limit`] when none is given.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most rows one [`CallHistory::list`] returns, whatever the filter asks for.
pub const MAX_LIMIT: u32 = 1000;

/// The columns of a [`CallSummary`], in the order [`summary_from_row`] reads them (calls are
/// aliased `c` in every query).
const SUMMARY_COLUMNS: &str = "c.id, c.call_id, c.started_at_ms, c.duration_ms, c.caller, c.flow, \
     c.outcome, c.escalated, c.reason, c.transfer_outcome, c.turn_count, c.ended_by, c.node";

/// Why the call history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database refused a statement (or could not be opened).
    #[error("call history database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The directory of the database file could not be created.
    #[error("cannot create the directory of {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A record could not be serialised, or a stored one could not be read back.
    #[error("call record JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The record has no (non-empty, string) `call_id`, so it cannot be stored or found.
    #[error("call record without a call_id")]
    MissingCallId,
    /// The database was written by a newer release, with a schema this binary does not know.
    #[error(
        "call history schema version {found} is newer than this gateway's ({known}); \
         was the database written by a newer release?"
    )]
    NewerSchema { found: i64, known: i64 },
    /// The shared PostgreSQL store refused a statement, or no connection could be had.
    #[error("call history on PostgreSQL: {0}")]
    Postgres(#[from] crate::storage::postgres::PgError),
}

impl From<::postgres::Error> for HistoryError {
    fn from(e: ::postgres::Error) -> Self {
        HistoryError::Postgres(e.into())
    }
}

/// The indexed facts of one stored call, as [`CallHistory::list`] returns them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CallSummary {
    /// The gateway's own call id (the record's `id`; its `call_id` for records without one).
    pub id: String,
    /// The SIP Call-ID, as the caller chose it (not unique: see [`CallHistory::get`]).
    pub call_id: String,
    /// When the call started, milliseconds since the Unix epoch (as given to
    /// [`CallHistory::insert`]).
    pub started_at_ms: i64,
    /// How long the call lasted (the record's `duration_ms`).
    pub duration_ms: u64,
    /// The caller (the record's `from`, the SIP From header as received).
    pub from: String,
    /// The flow that answered (absent when the pipeline failed before reporting).
    pub flow: Option<String>,
    /// How the call ended for the bot: `completed`, `escalated` or `caller_hung_up`.
    pub outcome: Option<String>,
    /// Whether the bot handed the call to a person.
    pub escalated: bool,
    /// The escalation reason as serialised (`explicit_request`, `critical_keyword`, ...).
    pub reason: Option<String>,
    /// How the warm transfer went (`bridged`, `callback`, `caller_hung_up`), when there was one.
    pub transfer_outcome: Option<String>,
    /// Caller turns in the call.
    pub turns: u32,
    /// Who or what ended the call (the record's `ended_by`; `unknown` when absent).
    pub ended_by: String,
    /// The gateway that handled the call (the record's `node`: set when the gateways share a
    /// store; `None` for a single gateway's calls).
    pub node: Option<String>,
}

/// Which calls to list, count or analyse. Every field is optional and they combine with AND;
/// deserialisable from an HTTP query string or a JSON body.
#[derive(Deserialize, Default, Clone, Debug)]
pub struct CallFilter {
    /// Calls started at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Calls started before this time (ms since the Unix epoch, exclusive).
    pub until_ms: Option<i64>,
    /// Calls answered by this flow.
    pub flow: Option<String>,
    /// Only escalated (`true`) or only contained (`false`) calls.
    pub escalated: Option<bool>,
    /// Calls escalated for this reason (as serialised, e.g. `negative_tone`).
    pub reason: Option<String>,
    /// Calls handled by this gateway (its `[storage] node` name).
    pub node: Option<String>,
    /// At most this many calls ([`DEFAULT_LIMIT`] when absent, never more than [`MAX_LIMIT`]);
    /// [`CallHistory::list`] only.
    pub limit: Option<u32>,
    /// Skip this many calls first (paging); [`CallHistory::list`] only.
    pub offset: Option<u32>,
}

/// Figures over the calls a filter selects.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Analytics {
    /// Calls selected.
    pub calls: u64,
    /// Calls the bot finished itself: not escalated (completed or the caller hung up).
    pub contained: u64,
    /// `contained / calls`; `None` when no call was selected.
    pub containment_rate: Option<f64>,
    /// Escalated calls per reason (`unknown` for an escalation without a reason).
    pub escalations_by_reason: BTreeMap<String, u64>,
    /// Mean call duration, ms; `None` when no call was selected.
    pub avg_handling_ms: Option<f64>,
    /// Per recognised intent, over the caller turns of the selected calls: most frequent first
    /// (ties by name).
    pub intents: Vec<IntentConfidence>,
}

/// How confident the intent engine was about one intent.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct IntentConfidence {
    /// The intent name.
    pub intent: String,
    /// Turns recognised as this intent (with a confidence).
    pub turns: u64,
    /// Their mean confidence.
    pub mean_confidence: f64,
    /// Turns per confidence bucket: `[0, 0.1)`, `[0.1, 0.2)`, ..., `[0.9, 1.0]` (1.0 and above
    /// count in the last bucket, below 0 in the first).
    pub histogram: [u64; 10],
}

/// The call history, in one SQLite database or on the shared PostgreSQL store (see the module
/// documentation). The methods behave the same on both.
pub struct CallHistory {
    backend: Backend,
}

/// Where the history lives.
enum Backend {
    Sqlite {
        conn: Mutex<Connection>,
        path: Option<PathBuf>,
    },
    Postgres(crate::storage::postgres::PgPool),
}

impl fmt::Debug for CallHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Sqlite { path, .. } => f
                .debug_struct("CallHistory")
                .field("path", path)
                .finish_non_exhaustive(),
            Backend::Postgres(_) => f
                .debug_struct("CallHistory")
                .field("backend", &"postgres")
                .finish_non_exhaustive(),
        }
    }
}

impl From<crate::storage::sqlite::StoreError> for HistoryError {
    fn from(e: crate::storage::sqlite::StoreError) -> Self {
        use crate::storage::sqlite::StoreError;
        match e {
            StoreError::CreateDir { path, source } => HistoryError::Io { path, source },
            StoreError::Sqlite(e) => HistoryError::Sqlite(e),
            StoreError::NewerSchema { found, known } => HistoryError::NewerSchema { found, known },
        }
    }
}

impl CallHistory {
    /// Opens (or creates, with its directory) the database at `path` and brings its schema up
    /// to date. Fails with [`HistoryError::NewerSchema`] on a database of a newer release.
    pub fn open(path: &Path) -> Result<CallHistory, HistoryError> {
        // WAL also lets the admin API read while calls are being stored.
        let mut conn = crate::storage::sqlite::open(path)?;
        init(&mut conn)?;
        Ok(CallHistory {
            backend: Backend::Sqlite {
                conn: Mutex::new(conn),
                path: Some(path.to_path_buf()),
            },
        })
    }

    /// A throw-away history in memory (tests, dry runs).
    pub fn open_in_memory() -> Result<CallHistory, HistoryError> {
        let mut conn = Connection::open_in_memory()?;
        init(&mut conn)?;
        Ok(CallHistory {
            backend: Backend::Sqlite {
                conn: Mutex::new(conn),
                path: None,
            },
        })
    }

    /// The history on the cluster's shared PostgreSQL store: brings its schema up to date
    /// (once, whichever gateway starts first). Blocking: call it off the async runtime.
    pub fn open_postgres(
        pool: crate::storage::postgres::PgPool,
    ) -> Result<CallHistory, HistoryError> {
        postgres::migrate(&pool)?;
        Ok(CallHistory {
            backend: Backend::Postgres(pool),
        })
    }

    /// The database file (`None` in memory and on PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite { path, .. } => path.as_deref(),
            Backend::Postgres(_) => None,
        }
    }

    /// Whether the history is on the shared PostgreSQL store.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The SQLite connection, or the pool.
    fn sqlite(&self) -> Result<MutexGuard<'_, Connection>, &crate::storage::postgres::PgPool> {
        match &self.backend {
            // A panic while the lock was held cannot leave the database half-written (an open
            // transaction rolls back when dropped), so a poisoned lock is still usable.
            Backend::Sqlite { conn, .. } => Ok(conn.lock().unwrap_or_else(PoisonError::into_inner)),
            Backend::Postgres(pool) => Err(pool),
        }
    }

    /// Stores one finished call that started at `started_at_ms` (ms since the Unix epoch),
    /// from its JSON record, and returns what was indexed. A second insert of the same
    /// `call_id` replaces the first (its turns too). Fails with [`HistoryError::MissingCallId`]
    /// when the record has no `call_id`.
    pub fn insert(&self, started_at_ms: i64, record: &Value) -> Result<CallSummary, HistoryError> {
        let summary = summarise(started_at_ms, record)?;
        let turns = turn_rows(record);
        let stored = serde_json::to_string(record)?;
        let mut conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pool) => {
                postgres::insert(pool, &summary, &turns, &stored)?;
                tracing::debug!(id = %summary.id, call_id = %summary.call_id, turns = turns.len(), "call stored in the shared history");
                return Ok(summary);
            }
        };
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO calls (id, call_id, started_at_ms, duration_ms, caller, flow, outcome,
                 escalated, reason, transfer_outcome, turn_count, ended_by, record, node)
             VALUES (?13, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?14)
             ON CONFLICT (id) DO UPDATE SET
                 call_id = excluded.call_id,
                 started_at_ms = excluded.started_at_ms,
                 duration_ms = excluded.duration_ms,
                 caller = excluded.caller,
                 flow = excluded.flow,
                 outcome = excluded.outcome,
                 escalated = excluded.escalated,
                 reason = excluded.reason,
                 transfer_outcome = excluded.transfer_outcome,
                 turn_count = excluded.turn_count,
                 ended_by = excluded.ended_by,
                 record = excluded.record,
                 node = excluded.node",
            params![
                summary.call_id,
                summary.started_at_ms,
                i64::try_from(summary.duration_ms).unwrap_or(i64::MAX),
                summary.from,
                summary.flow,
                summary.outcome,
                summary.escalated,
                summary.reason,
                summary.transfer_outcome,
                summary.turns,
                summary.ended_by,
                stored,
                summary.id,
                summary.node,
            ],
        )?;
        tx.execute("DELETE FROM turns WHERE id = ?1", [&summary.id])?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO turns (id, idx, intent, confidence) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (idx, (intent, confidence)) in (1_i64..).zip(&turns) {
                stmt.execute(params![summary.id, idx, intent, confidence])?;
            }
        }
        tx.commit()?;
        tracing::debug!(id = %summary.id, call_id = %summary.call_id, turns = turns.len(), "call stored in the history");
        Ok(summary)
    }

    /// The calls the filter selects, newest first (ties by `call_id`), paged by its `limit`
    /// and `offset`.
    pub fn list(&self, filter: &CallFilter) -> Result<Vec<CallSummary>, HistoryError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pool) => return postgres::list(pool, filter),
        };
        let (clause, mut values) = where_clause(filter);
        let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
        values.push(SqlValue::Integer(i64::from(limit)));
        values.push(SqlValue::Integer(i64::from(filter.offset.unwrap_or(0))));
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM calls c{clause}
             ORDER BY c.started_at_ms DESC, c.id DESC LIMIT ? OFFSET ?"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(values), summary_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// How many calls the filter selects (its `limit` and `offset` ignored).
    pub fn count(&self, filter: &CallFilter) -> Result<u64, HistoryError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pool) => return postgres::count(pool, filter),
        };
        let (clause, values) = where_clause(filter);
        let sql = format!("SELECT COUNT(*) FROM calls c{clause}");
        let n: i64 = conn.query_row(&sql, params_from_iter(values), |row| row.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The full record of a call, as it was inserted; `None` for an unknown call. `key` is the
    /// gateway's call id; a SIP Call-ID is taken too (the newest call that used it, since a
    /// Call-ID is the caller's choice and need not be unique).
    pub fn get(&self, key: &str) -> Result<Option<Value>, HistoryError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pool) => return postgres::get(pool, key),
        };
        let stored: Option<String> = conn
            .query_row(
                "SELECT record FROM calls WHERE id = ?1
                 UNION ALL
                 SELECT * FROM (SELECT record FROM calls WHERE call_id = ?1
                     ORDER BY started_at_ms DESC, id DESC LIMIT 1)
                 LIMIT 1",
                [key],
                |row| row.get(0),
            )
            .optional()?;
        Ok(stored.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    /// Retention: deletes the calls (and their turns) that started before `older_than_ms`
    /// (ms since the Unix epoch) and returns how many calls went.
    pub fn prune(&self, older_than_ms: i64) -> Result<usize, HistoryError> {
        let mut conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pool) => {
                let calls = postgres::prune(pool, older_than_ms)?;
                if calls > 0 {
                    tracing::info!(calls, older_than_ms, "shared call history pruned");
                }
                return Ok(calls);
            }
        };
        let tx = conn.transaction()?;
        // The foreign key cascades too; deleting explicitly does not depend on the pragma.
        tx.execute(
            "DELETE FROM turns WHERE id IN
                 (SELECT id FROM calls WHERE started_at_ms < ?1)",
            [older_than_ms],
        )?;
        let calls = tx.execute(
            "DELETE FROM calls WHERE started_at_ms < ?1",
            [older_than_ms],
        )?;
        tx.commit()?;
        if calls > 0 {
            tracing::info!(calls, older_than_ms, "call history pruned");
        }
        Ok(calls)
    }

    /// Containment, escalations per reason, handling time and intent confidence over the
    /// calls the filter selects (its `limit` and `offset` ignored).
    pub fn analytics(&self, filter: &CallFilter) -> Result<Analytics, HistoryError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pool) => return postgres::analytics(pool, filter),
        };
        let (clause, values) = where_clause(filter);

        let totals: (i64, Option<i64>, Option<f64>) = conn.query_row(
            &format!(
                "SELECT COUNT(*), SUM(c.escalated = 0), AVG(c.duration_ms) FROM calls c{clause}"
            ),
            params_from_iter(values.iter()),
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;

        let and = if clause.is_empty() { " WHERE" } else { " AND" };
        let mut stmt = conn.prepare(&format!(
            "SELECT COALESCE(c.reason, 'unknown'), COUNT(*) FROM calls c{clause}{and}
             c.escalated = 1 GROUP BY 1"
        ))?;
        let reasons = stmt
            .query_map(params_from_iter(values.iter()), |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;

        // Bucket k holds [k/10, (k+1)/10); the tiny epsilon keeps a decimal such as 0.3,
        // whose binary value times ten may land a hair under 3, in its own bucket.
        let mut stmt = conn.prepare(&format!(
            "SELECT t.intent,
                 MIN(MAX(CAST(t.confidence * 10 + 1e-9 AS INTEGER), 0), 9) AS bucket,
                 COUNT(*), SUM(t.confidence)
             FROM turns t JOIN calls c ON c.id = t.id{clause}{and}
                 t.intent IS NOT NULL AND t.confidence IS NOT NULL
             GROUP BY t.intent, bucket"
        ))?;
        let groups = stmt
            .query_map(params_from_iter(values.iter()), |row| {
                Ok(IntentGroup {
                    intent: row.get(0)?,
                    bucket: row.get(1)?,
                    turns: row.get(2)?,
                    confidence_sum: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(assemble(totals, reasons, groups))
    }
}

/// The turns of one intent in one confidence bucket, as the analytics query groups them.
struct IntentGroup {
    intent: String,
    bucket: i64,
    turns: i64,
    confidence_sum: f64,
}

/// [`Analytics`] from what both backends' queries give: (calls, contained, mean duration),
/// escalations per reason, and the turns per intent and confidence bucket.
fn assemble(
    (calls, contained, avg_handling_ms): (i64, Option<i64>, Option<f64>),
    reasons: Vec<(String, i64)>,
    groups: Vec<IntentGroup>,
) -> Analytics {
    let calls = u64::try_from(calls).unwrap_or(0);
    let contained = contained.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let escalations_by_reason = reasons
        .into_iter()
        .map(|(reason, n)| (reason, u64::try_from(n).unwrap_or(0)))
        .collect();
    let mut intents: BTreeMap<String, IntentConfidence> = BTreeMap::new();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for g in groups {
        let n = u64::try_from(g.turns).unwrap_or(0);
        let entry = intents
            .entry(g.intent.clone())
            .or_insert_with(|| IntentConfidence {
                intent: g.intent.clone(),
                turns: 0,
                mean_confidence: 0.0,
                histogram: [0; 10],
            });
        entry.turns += n;
        let bucket = usize::try_from(g.bucket).unwrap_or(0).min(9);
        entry.histogram[bucket] += n;
        *sums.entry(g.intent).or_insert(0.0) += g.confidence_sum;
    }
    let mut intents: Vec<IntentConfidence> = intents
        .into_values()
        .map(|mut i| {
            let sum = sums.get(&i.intent).copied().unwrap_or(0.0);
            i.mean_confidence = if i.turns == 0 {
                0.0
            } else {
                sum / i.turns as f64
            };
            i
        })
        .collect();
    // Stable sort: ties keep the map's alphabetical order.
    intents.sort_by_key(|i| std::cmp::Reverse(i.turns));
    Analytics {
        calls,
        contained,
        containment_rate: (calls > 0).then(|| contained as f64 / calls as f64),
        escalations_by_reason,
        avg_handling_ms: if calls > 0 { avg_handling_ms } else { None },
        intents,
    }
}

/// Connection settings and migrations, for files and memory alike.
fn init(conn: &mut Connection) -> Result<(), HistoryError> {
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(crate::storage::sqlite::migrate(
        conn,
        MIGRATIONS,
        "call history",
    )?)
}

/// A value a filter compares a column with.
enum FilterValue {
    Int(i64),
    Text(String),
    Bool(bool),
}

/// The filter's conditions on `calls c`, each the column and its comparison (the placeholder
/// follows) with its value, in order. Both backends build their `WHERE` from it.
fn conditions(filter: &CallFilter) -> Vec<(&'static str, FilterValue)> {
    let mut out = Vec::new();
    if let Some(since) = filter.since_ms {
        out.push(("c.started_at_ms >=", FilterValue::Int(since)));
    }
    if let Some(until) = filter.until_ms {
        out.push(("c.started_at_ms <", FilterValue::Int(until)));
    }
    if let Some(flow) = &filter.flow {
        out.push(("c.flow =", FilterValue::Text(flow.clone())));
    }
    if let Some(escalated) = filter.escalated {
        out.push(("c.escalated =", FilterValue::Bool(escalated)));
    }
    if let Some(reason) = &filter.reason {
        out.push(("c.reason =", FilterValue::Text(reason.clone())));
    }
    if let Some(node) = &filter.node {
        out.push(("c.node =", FilterValue::Text(node.clone())));
    }
    out
}

/// The filter's conditions on `calls c` (empty, or starting with " WHERE") and their values,
/// in order. Only fixed SQL text goes into the clause; every value is a bound parameter.
fn where_clause(filter: &CallFilter) -> (String, Vec<SqlValue>) {
    let mut text: Vec<String> = Vec::new();
    let mut values: Vec<SqlValue> = Vec::new();
    for (condition, value) in conditions(filter) {
        text.push(format!("{condition} ?"));
        values.push(match value {
            FilterValue::Int(n) => SqlValue::Integer(n),
            FilterValue::Text(t) => SqlValue::Text(t),
            FilterValue::Bool(b) => SqlValue::Integer(i64::from(b)),
        });
    }
    if text.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", text.join(" AND ")), values)
    }
}

/// A [`CallSummary`] from a row of [`SUMMARY_COLUMNS`].
fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CallSummary> {
    Ok(CallSummary {
        id: row.get(0)?,
        call_id: row.get(1)?,
        started_at_ms: row.get(2)?,
        duration_ms: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        from: row.get(4)?,
        flow: row.get(5)?,
        outcome: row.get(6)?,
        escalated: row.get(7)?,
        reason: row.get(8)?,
        transfer_outcome: row.get(9)?,
        turns: u32::try_from(row.get::<_, i64>(10)?).unwrap_or(u32::MAX),
        ended_by: row.get(11)?,
        node: row.get(12)?,
    })
}

/// The string at `key` of a JSON object, if it is one.
fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The indexed facts of a record (see [`CallSummary`] for where each comes from).
fn summarise(started_at_ms: i64, record: &Value) -> Result<CallSummary, HistoryError> {
    let call_id = text(record, "call_id")
        .filter(|id| !id.is_empty())
        .ok_or(HistoryError::MissingCallId)?;
    let id = text(record, "id")
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| call_id.clone());
    let turns = record.get("turns").and_then(Value::as_array);
    let outcome = text(record, "outcome");
    // The call's escalation; a record without one at the top (older shapes) may still carry
    // it on the turn that decided it.
    let escalation = record
        .get("escalation")
        .filter(|e| e.is_object())
        .or_else(|| {
            turns?
                .iter()
                .rev()
                .filter_map(|t| t.get("escalation"))
                .find(|e| e.is_object())
        });
    let escalated = escalation.is_some() || outcome.as_deref() == Some("escalated");
    let duration_ms = record
        .get("duration_ms")
        .and_then(|d| {
            d.as_u64().or_else(|| {
                d.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        })
        .unwrap_or(0);
    Ok(CallSummary {
        id,
        call_id,
        started_at_ms,
        duration_ms,
        from: text(record, "from").unwrap_or_default(),
        flow: text(record, "flow"),
        outcome,
        escalated,
        reason: escalation.and_then(|e| text(e, "reason")),
        transfer_outcome: record.get("transfer").and_then(|t| text(t, "outcome")),
        turns: turns.map_or(0, |t| u32::try_from(t.len()).unwrap_or(u32::MAX)),
        ended_by: text(record, "ended_by").unwrap_or_else(|| "unknown".into()),
        node: text(record, "node").filter(|n| !n.is_empty()),
    })
}

/// Intent and confidence of each caller turn of a record, in order.
fn turn_rows(record: &Value) -> Vec<(Option<String>, Option<f64>)> {
    record
        .get("turns")
        .and_then(Value::as_array)
        .map(|turns| {
            turns
                .iter()
                .map(|t| {
                    (
                        text(t, "intent"),
                        t.get("intent_confidence")
                            .and_then(Value::as_f64)
                            .filter(|c| c.is_finite()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A caller turn as `TurnReport` serialises it.
    fn turn(index: usize, intent: &str, confidence: f64, escalation: Option<Value>) -> Value {
        json!({
            "index": index,
            "start_ms": 1000 * index,
            "end_ms": 1000 * index + 800,
            "end_reason": "silence",
            "transcript": "some words",
            "asr_confidence": 0.9,
            "normalized": "some words",
            "intent": intent,
            "intent_confidence": confidence,
            "intent_evidence": ["words"],
            "slots": {},
            "reply": "a reply",
            "escalation": escalation,
            "ends_call": false,
            "emotion": null,
            "timings": {"asr_ms": 120, "intent_ms": 3, "tts_ms": 40, "total_ms": 170},
            "fault": null
        })
    }

    /// A call record as the gateway writes it (`CallRecord` with `CallReport` flattened).
    fn record(
        call_id: &str,
        flow: &str,
        reason: Option<&str>,
        duration_ms: u64,
        turns: &[(&str, f64)],
        transfer: Option<&str>,
    ) -> Value {
        let escalation = reason.map(|r| {
            json!({
                "reason": r,
                "detail": "why",
                "skill": "billing",
                "turn": turns.len().max(1)
            })
        });
        let n = turns.len();
        let turns: Vec<Value> = turns
            .iter()
            .enumerate()
            .map(|(i, (intent, c))| {
                let e = if i + 1 == n { escalation.clone() } else { None };
                turn(i + 1, intent, *c, e)
            })
            .collect();
        let mut r = json!({
            "call_id": call_id,
            "from": "\"Alice\" <sip:alice@example.com>;tag=abc",
            "called": "sip:support@example.com",
            "codec": "PCMU",
            "remote_rtp": "192.0.2.1:4000",
            "duration_ms": duration_ms,
            "ended_by": "caller",
            "dtmf": [],
            "bot_speech": [{
                "kind": "greeting", "text": "Hello", "queued_at_ms": 0,
                "duration_ms": 900, "played_ms": 900, "interrupted": false
            }],
            "rtp": {"packets_received": 100, "packets_lost": 0, "jitter_ms": 1.5},
            "flow": flow,
            "greeting": "Hello",
            "turns": turns,
            "outcome": if reason.is_some() { "escalated" } else { "completed" },
            "escalation": escalation,
            "caller_audio_ms": duration_ms,
            "unprocessed_after_end_ms": 0,
            "noise_ignored": 0,
            "pipeline_error": null
        });
        if let (Some(outcome), Some(obj)) = (transfer, r.as_object_mut()) {
            obj.insert(
                "transfer".into(),
                json!({
                    "skill": "billing",
                    "attempts": [{"target": "sip:100@pbx", "outcome": "answered"}],
                    "agent": "sip:100@pbx",
                    "decision_to_invite_ms": 12.5,
                    "answer_to_bridge_ms": 3.0,
                    "packets_to_agent": 10,
                    "packets_from_agent": 10,
                    "outcome": outcome,
                    "webhook_events": [],
                    "webhook_before_invite": null
                }),
            );
        }
        r
    }

    fn ids(list: &[CallSummary]) -> Vec<&str> {
        list.iter().map(|s| s.call_id.as_str()).collect()
    }

    /// Says which backend a test failed on (printed after the panic message).
    struct On(&'static str);

    impl Drop for On {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("(the failure above is on the {} backend)", self.0);
            }
        }
    }

    /// The history on each backend: SQLite in memory, and PostgreSQL (a fresh database on the
    /// throwaway server) when it is installed.
    fn backends() -> Vec<(&'static str, CallHistory)> {
        let mut all = vec![("sqlite", CallHistory::open_in_memory().unwrap())];
        if let Some(h) = postgres_history() {
            all.push(("postgres", h));
        }
        all
    }

    /// A history on a fresh PostgreSQL database, when PostgreSQL is installed.
    fn postgres_history() -> Option<CallHistory> {
        let url = crate::storage::throwaway::fresh_database()?;
        let pool = crate::storage::postgres::connect(&url, 2).expect("connects");
        Some(CallHistory::open_postgres(pool).expect("opens on PostgreSQL"))
    }

    /// [`fill`]'s calls on each backend.
    fn samples() -> Vec<(&'static str, CallHistory)> {
        backends()
            .into_iter()
            .map(|(backend, h)| {
                fill(&h);
                (backend, h)
            })
            .collect()
    }

    /// One number from the database behind `h` (the same question in each dialect).
    fn scalar(h: &CallHistory, sqlite: &str, postgres: &str) -> i64 {
        match h.sqlite() {
            Ok(conn) => conn.query_row(sqlite, [], |row| row.get(0)).unwrap(),
            Err(pool) => crate::storage::postgres::conn(pool)
                .unwrap()
                .query_one(postgres, &[])
                .unwrap()
                .get(0),
        }
    }

    fn turn_rows_in_db(h: &CallHistory) -> i64 {
        scalar(
            h,
            "SELECT COUNT(*) FROM turns",
            "SELECT COUNT(*) FROM call_turns",
        )
    }

    /// Four calls: a (billing, completed), b (billing, escalated negative_tone, bridged),
    /// c (support, escalated explicit_request, callback), d (support, completed).
    fn fill(h: &CallHistory) {
        h.insert(
            1_000,
            &record("a", "billing", None, 10_000, &[("pay", 0.95)], None),
        )
        .unwrap();
        h.insert(
            2_000,
            &record(
                "b",
                "billing",
                Some("negative_tone"),
                20_000,
                &[("pay", 0.55), ("complain", 0.8)],
                Some("bridged"),
            ),
        )
        .unwrap();
        h.insert(
            3_000,
            &record(
                "c",
                "support",
                Some("explicit_request"),
                30_000,
                &[("agent", 1.0)],
                Some("callback"),
            ),
        )
        .unwrap();
        h.insert(
            4_000,
            &record(
                "d",
                "support",
                None,
                40_000,
                &[("pay", 0.05), ("bye", 0.3)],
                None,
            ),
        )
        .unwrap();
    }

    #[test]
    fn insert_then_get_round_trips_and_summarises() {
        for (backend, h) in backends() {
            let _on = On(backend);
            let r = record(
                "call-1",
                "billing",
                Some("negative_tone"),
                12_345,
                &[("pay", 0.5), ("complain", 0.9)],
                Some("bridged"),
            );
            let s = h.insert(1_700_000_000_000, &r).unwrap();
            assert_eq!(
                s,
                CallSummary {
                    id: "call-1".into(),
                    call_id: "call-1".into(),
                    started_at_ms: 1_700_000_000_000,
                    duration_ms: 12_345,
                    from: "\"Alice\" <sip:alice@example.com>;tag=abc".into(),
                    flow: Some("billing".into()),
                    outcome: Some("escalated".into()),
                    escalated: true,
                    reason: Some("negative_tone".into()),
                    transfer_outcome: Some("bridged".into()),
                    turns: 2,
                    ended_by: "caller".into(),
                    node: None,
                }
            );
            assert_eq!(h.get("call-1").unwrap(), Some(r));
            assert_eq!(h.get("nope").unwrap(), None);
            assert_eq!(h.list(&CallFilter::default()).unwrap(), vec![s]);
            assert_eq!(turn_rows_in_db(&h), 2);
        }
    }

    #[test]
    fn sparse_records_get_defaults() {
        for (backend, h) in backends() {
            let _on = On(backend);
            // A call whose pipeline failed: no report fields at all.
            let s = h
                .insert(
                    5,
                    &json!({"call_id": "x", "pipeline_error": "boom", "duration_ms": "long"}),
                )
                .unwrap();
            assert_eq!(s.duration_ms, 0);
            assert_eq!(s.from, "");
            assert_eq!(s.flow, None);
            assert_eq!(s.outcome, None);
            assert!(!s.escalated);
            assert_eq!(s.reason, None);
            assert_eq!(s.turns, 0);
            assert_eq!(s.ended_by, "unknown");
            // Escalated without an escalation object; a turn with odd fields.
            let s = h
                .insert(
                    6,
                    &json!({"call_id": "y", "outcome": "escalated",
                        "turns": [{"intent": 3, "intent_confidence": "high"}, 7]}),
                )
                .unwrap();
            assert!(s.escalated);
            assert_eq!(s.reason, None);
            assert_eq!(s.turns, 2);
            let a = h.analytics(&CallFilter::default()).unwrap();
            assert_eq!(a.escalations_by_reason.get("unknown"), Some(&1));
            assert!(a.intents.is_empty());
        }
    }

    #[test]
    fn a_record_without_call_id_is_refused() {
        for (backend, h) in backends() {
            let _on = On(backend);
            for bad in [
                json!({"from": "x"}),
                json!({"call_id": ""}),
                json!({"call_id": 42}),
                json!([1, 2]),
                Value::Null,
            ] {
                assert!(
                    matches!(h.insert(1, &bad), Err(HistoryError::MissingCallId)),
                    "{bad}"
                );
            }
            assert_eq!(h.count(&CallFilter::default()).unwrap(), 0);
        }
    }

    #[test]
    fn a_second_insert_replaces_the_call_and_its_turns() {
        for (backend, h) in backends() {
            let _on = On(backend);
            h.insert(
                1,
                &record(
                    "a",
                    "billing",
                    Some("dtmf0"),
                    1_000,
                    &[("pay", 0.5), ("pay", 0.6), ("agent", 0.9)],
                    Some("callback"),
                ),
            )
            .unwrap();
            let r2 = record("a", "support", None, 2_000, &[("bye", 0.7)], None);
            h.insert(2, &r2).unwrap();
            assert_eq!(h.count(&CallFilter::default()).unwrap(), 1);
            let list = h.list(&CallFilter::default()).unwrap();
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].started_at_ms, 2);
            assert_eq!(list[0].flow.as_deref(), Some("support"));
            assert!(!list[0].escalated);
            assert_eq!(list[0].reason, None);
            assert_eq!(list[0].transfer_outcome, None);
            assert_eq!(list[0].turns, 1);
            assert_eq!(h.get("a").unwrap(), Some(r2));
            assert_eq!(turn_rows_in_db(&h), 1);
            let a = h.analytics(&CallFilter::default()).unwrap();
            assert_eq!(a.intents.len(), 1);
            assert_eq!(a.intents[0].intent, "bye");
        }
    }

    #[test]
    fn filters_select_alone_and_combined() {
        for (backend, h) in samples() {
            let _on = On(backend);
            let check = |f: CallFilter, want: &[&str]| {
                let list = h.list(&f).unwrap();
                assert_eq!(ids(&list), want, "{f:?}");
                assert_eq!(h.count(&f).unwrap(), want.len() as u64, "{f:?}");
            };
            check(CallFilter::default(), &["d", "c", "b", "a"]);
            check(
                CallFilter {
                    since_ms: Some(2_000),
                    ..Default::default()
                },
                &["d", "c", "b"],
            );
            check(
                CallFilter {
                    until_ms: Some(3_000),
                    ..Default::default()
                },
                &["b", "a"],
            );
            check(
                CallFilter {
                    flow: Some("support".into()),
                    ..Default::default()
                },
                &["d", "c"],
            );
            check(
                CallFilter {
                    escalated: Some(true),
                    ..Default::default()
                },
                &["c", "b"],
            );
            check(
                CallFilter {
                    escalated: Some(false),
                    ..Default::default()
                },
                &["d", "a"],
            );
            check(
                CallFilter {
                    reason: Some("negative_tone".into()),
                    ..Default::default()
                },
                &["b"],
            );
            check(
                CallFilter {
                    flow: Some("nope".into()),
                    ..Default::default()
                },
                &[],
            );
            check(
                CallFilter {
                    since_ms: Some(2_000),
                    until_ms: Some(4_000),
                    flow: Some("billing".into()),
                    escalated: Some(true),
                    ..Default::default()
                },
                &["b"],
            );
            check(
                CallFilter {
                    since_ms: Some(1_000),
                    flow: Some("support".into()),
                    escalated: Some(false),
                    ..Default::default()
                },
                &["d"],
            );
            check(
                CallFilter {
                    flow: Some("billing".into()),
                    reason: Some("explicit_request".into()),
                    ..Default::default()
                },
                &[],
            );
            // Limit and offset page the list but not the count.
            let f = CallFilter {
                limit: Some(2),
                offset: Some(1),
                ..Default::default()
            };
            assert_eq!(ids(&h.list(&f).unwrap()), ["c", "b"]);
            assert_eq!(h.count(&f).unwrap(), 4);
        }
    }

    #[test]
    fn a_filter_deserialises_from_a_query_like_object() {
        let f: CallFilter =
            serde_json::from_value(json!({"flow": "billing", "escalated": true, "limit": 5}))
                .unwrap();
        assert_eq!(f.flow.as_deref(), Some("billing"));
        assert_eq!(f.escalated, Some(true));
        assert_eq!(f.limit, Some(5));
        assert_eq!(f.since_ms, None);
    }

    #[test]
    fn limit_defaults_to_100_and_is_capped_at_1000() {
        for (backend, h) in backends() {
            let _on = On(backend);
            let minimal = |i: usize| json!({"call_id": format!("c{i:04}"), "duration_ms": 1});
            for i in 0..1005 {
                h.insert(i as i64, &minimal(i)).unwrap();
            }
            let all = CallFilter::default();
            assert_eq!(h.count(&all).unwrap(), 1005);
            let page = h.list(&all).unwrap();
            assert_eq!(page.len(), 100);
            assert_eq!(page[0].call_id, "c1004");
            let big = CallFilter {
                limit: Some(5000),
                ..Default::default()
            };
            let page = h.list(&big).unwrap();
            assert_eq!(page.len(), 1000);
            assert_eq!(page[999].call_id, "c0005");
            let tail = CallFilter {
                limit: Some(5000),
                offset: Some(1000),
                ..Default::default()
            };
            assert_eq!(
                ids(&h.list(&tail).unwrap()),
                ["c0004", "c0003", "c0002", "c0001", "c0000"]
            );
            let none = CallFilter {
                limit: Some(0),
                ..Default::default()
            };
            assert!(h.list(&none).unwrap().is_empty());
        }
    }

    #[test]
    fn prune_removes_old_calls_and_their_turns() {
        for (backend, h) in samples() {
            let _on = On(backend);
            assert_eq!(turn_rows_in_db(&h), 6);
            assert_eq!(h.prune(3_000).unwrap(), 2);
            assert_eq!(ids(&h.list(&CallFilter::default()).unwrap()), ["d", "c"]);
            assert_eq!(h.get("a").unwrap(), None);
            assert_eq!(turn_rows_in_db(&h), 3);
            let orphans = scalar(
                &h,
                "SELECT COUNT(*) FROM turns WHERE id NOT IN (SELECT id FROM calls)",
                "SELECT COUNT(*) FROM call_turns WHERE id NOT IN (SELECT id FROM calls)",
            );
            assert_eq!(orphans, 0);
            assert_eq!(h.prune(0).unwrap(), 0);
            assert_eq!(h.prune(i64::MAX).unwrap(), 2);
            assert_eq!(turn_rows_in_db(&h), 0);
        }
    }

    #[test]
    fn analytics_on_a_known_set() {
        for (backend, h) in samples() {
            let _on = On(backend);
            let a = h.analytics(&CallFilter::default()).unwrap();
            assert_eq!(a.calls, 4);
            assert_eq!(a.contained, 2);
            assert_eq!(a.containment_rate, Some(0.5));
            assert_eq!(
                a.escalations_by_reason,
                BTreeMap::from([("explicit_request".into(), 1), ("negative_tone".into(), 1)])
            );
            assert_eq!(a.avg_handling_ms, Some(25_000.0));
            let names: Vec<&str> = a.intents.iter().map(|i| i.intent.as_str()).collect();
            // pay: 3 turns; the rest one each, alphabetical.
            assert_eq!(names, ["pay", "agent", "bye", "complain"]);
            let pay = &a.intents[0];
            assert_eq!(pay.turns, 3);
            assert!((pay.mean_confidence - (0.95 + 0.55 + 0.05) / 3.0).abs() < 1e-9);
            assert_eq!(pay.histogram, [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
            let agent = &a.intents[1];
            assert_eq!(agent.turns, 1);
            assert_eq!(agent.mean_confidence, 1.0);
            // Confidence 1.0 counts in the last bucket.
            assert_eq!(agent.histogram, [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            // 0.3 lands in [0.3, 0.4), 0.8 in [0.8, 0.9).
            assert_eq!(a.intents[2].histogram, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            assert_eq!(a.intents[3].histogram, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);

            // The same filter as list: billing calls only; limit and offset ignored.
            let a = h
                .analytics(&CallFilter {
                    flow: Some("billing".into()),
                    limit: Some(1),
                    offset: Some(3),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(a.calls, 2);
            assert_eq!(a.contained, 1);
            assert_eq!(a.containment_rate, Some(0.5));
            assert_eq!(
                a.escalations_by_reason,
                BTreeMap::from([("negative_tone".into(), 1)])
            );
            assert_eq!(a.avg_handling_ms, Some(15_000.0));
            let names: Vec<&str> = a.intents.iter().map(|i| i.intent.as_str()).collect();
            assert_eq!(names, ["pay", "complain"]);
            assert_eq!(a.intents[0].turns, 2);
            assert!((a.intents[0].mean_confidence - 0.75).abs() < 1e-9);

            // Contained calls only.
            let a = h
                .analytics(&CallFilter {
                    escalated: Some(false),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(a.calls, 2);
            assert_eq!(a.containment_rate, Some(1.0));
            assert!(a.escalations_by_reason.is_empty());
        }
    }

    #[test]
    fn analytics_of_nothing() {
        let want = Analytics {
            calls: 0,
            contained: 0,
            containment_rate: None,
            escalations_by_reason: BTreeMap::new(),
            avg_handling_ms: None,
            intents: Vec::new(),
        };
        for (backend, h) in backends() {
            let _on = On(backend);
            assert_eq!(h.analytics(&CallFilter::default()).unwrap(), want);
            // A filter that selects nothing in a non-empty history.
            fill(&h);
            let none = CallFilter {
                since_ms: Some(10_000),
                ..Default::default()
            };
            assert_eq!(h.analytics(&none).unwrap(), want);
        }
        assert_eq!(
            serde_json::to_value(&want).unwrap()["containment_rate"],
            Value::Null
        );
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_file_database_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/history.sqlite");
        let r = record(
            "a",
            "billing",
            Some("dtmf0"),
            5_000,
            &[("agent", 0.9)],
            None,
        );
        {
            let h = CallHistory::open(&path).unwrap();
            assert_eq!(h.path(), Some(path.as_path()));
            h.insert(42, &r).unwrap();
        }
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
        let h = CallHistory::open(&path).unwrap();
        assert_eq!(h.get("a").unwrap(), Some(r));
        assert_eq!(h.count(&CallFilter::default()).unwrap(), 1);
        assert_eq!(
            h.analytics(&CallFilter::default()).unwrap().intents[0].turns,
            1
        );
        drop(h);
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite");
        drop(CallHistory::open(&path).unwrap());
        let newer = MIGRATIONS.len() as i64 + 1;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        match CallHistory::open(&path) {
            Err(HistoryError::NewerSchema { found, known }) => {
                assert_eq!(found, newer);
                assert_eq!(known, MIGRATIONS.len() as i64);
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
        // Left as it was.
        assert_eq!(user_version(&path), newer);
    }

    #[test]
    fn calls_sharing_a_sip_call_id_are_two_calls() {
        for (backend, h) in backends() {
            let _on = On(backend);
            let mut first = record("dup@h", "billing", None, 1_000, &[("billing", 0.9)], None);
            first["id"] = json!("gw-1");
            let mut second = record("dup@h", "support", None, 2_000, &[("agent", 0.8)], None);
            second["id"] = json!("gw-2");
            h.insert(10, &first).unwrap();
            h.insert(20, &second).unwrap();
            let listed = h.list(&CallFilter::default()).unwrap();
            assert_eq!(ids(&listed), ["dup@h", "dup@h"]);
            let keys: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(keys, ["gw-2", "gw-1"]);
            assert_eq!(h.get("gw-1").unwrap(), Some(first));
            // The Call-ID finds the newest call that used it.
            assert_eq!(h.get("dup@h").unwrap(), Some(second));
            assert_eq!(turn_rows_in_db(&h), 2);
        }
    }

    #[test]
    fn a_version_1_database_is_keyed_by_the_call_id_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite");
        {
            let mut conn = Connection::open(&path).unwrap();
            crate::storage::sqlite::migrate(&mut conn, &MIGRATIONS[..1], "call history").unwrap();
            conn.execute(
                "INSERT INTO calls VALUES ('old@h', 5, 6, 'sip:a@h', 'support', 'completed', 0,
                     NULL, NULL, 1, 'caller', '{\"call_id\":\"old@h\"}')",
                [],
            )
            .unwrap();
            conn.execute("INSERT INTO turns VALUES ('old@h', 1, 'hours', 0.7)", [])
                .unwrap();
        }
        let h = CallHistory::open(&path).unwrap();
        let listed = h.list(&CallFilter::default()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].id.as_str(), listed[0].turns), ("old@h", 1));
        assert_eq!(h.get("old@h").unwrap(), Some(json!({"call_id": "old@h"})));
        assert_eq!(turn_rows_in_db(&h), 1);
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
    }

    #[test]
    fn the_node_is_kept_and_selects_calls() {
        for (backend, h) in backends() {
            let _on = On(backend);
            let mut a = record("a", "billing", None, 1_000, &[("pay", 0.9)], None);
            a["node"] = json!("gw-1:5060");
            let mut b = record("b", "billing", None, 1_000, &[("pay", 0.8)], None);
            b["node"] = json!("gw-2:5060");
            let c = record("c", "billing", None, 1_000, &[], None);
            assert_eq!(h.insert(1, &a).unwrap().node.as_deref(), Some("gw-1:5060"));
            h.insert(2, &b).unwrap();
            assert_eq!(h.insert(3, &c).unwrap().node, None);
            let listed = h.list(&CallFilter::default()).unwrap();
            let nodes: Vec<Option<&str>> = listed.iter().map(|s| s.node.as_deref()).collect();
            assert_eq!(nodes, [None, Some("gw-2:5060"), Some("gw-1:5060")]);
            let on_1 = CallFilter {
                node: Some("gw-1:5060".into()),
                ..Default::default()
            };
            assert_eq!(ids(&h.list(&on_1).unwrap()), ["a"]);
            assert_eq!(h.count(&on_1).unwrap(), 1);
            let a1 = h.analytics(&on_1).unwrap();
            assert_eq!((a1.calls, a1.intents[0].turns), (1, 1));
        }
    }

    #[test]
    fn a_text_with_a_nul_character_is_stored() {
        for (backend, h) in backends() {
            let _on = On(backend);
            let mut r = record("nul", "billing", None, 1_000, &[("pay\0x", 0.5)], None);
            r["from"] = json!("sip:a\0b@h");
            h.insert(1, &r).unwrap();
            assert_eq!(
                h.get("nul").unwrap(),
                Some(r),
                "the record comes back as it went in"
            );
            assert_eq!(h.count(&CallFilter::default()).unwrap(), 1);
        }
    }

    #[test]
    fn two_gateways_on_one_database_see_each_others_calls() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let open = || {
            let pool = crate::storage::postgres::connect(&url, 2).expect("connects");
            CallHistory::open_postgres(pool).expect("opens")
        };
        // Two gateways start together against a new database: the schema is made once.
        let (one, two) = std::thread::scope(|s| {
            let a = s.spawn(open);
            let b = s.spawn(open);
            (a.join().expect("gateway 1"), b.join().expect("gateway 2"))
        });
        assert!(one.is_shared() && two.is_shared());
        let mut a = record(
            "a@h",
            "billing",
            Some("dtmf0"),
            1_000,
            &[("pay", 0.9)],
            None,
        );
        a["id"] = json!("gw1-call");
        a["node"] = json!("gw1");
        let mut b = record("b@h", "support", None, 3_000, &[("bye", 0.4)], None);
        b["id"] = json!("gw2-call");
        b["node"] = json!("gw2");
        one.insert(10, &a).unwrap();
        two.insert(20, &b).unwrap();
        for (name, h) in [("gateway 1", &one), ("gateway 2", &two)] {
            let listed = h.list(&CallFilter::default()).unwrap();
            let keys: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(keys, ["gw2-call", "gw1-call"], "{name}");
            assert_eq!(h.get("gw1-call").unwrap().as_ref(), Some(&a), "{name}");
            assert_eq!(h.get("b@h").unwrap().as_ref(), Some(&b), "{name}");
            let an = h.analytics(&CallFilter::default()).unwrap();
            assert_eq!((an.calls, an.contained), (2, 1), "{name}");
            let gw2 = CallFilter {
                node: Some("gw2".into()),
                ..Default::default()
            };
            assert_eq!(h.count(&gw2).unwrap(), 1, "{name}");
        }
        // Retention on either gateway applies to the cluster's history.
        assert_eq!(two.prune(15).unwrap(), 1);
        assert_eq!(one.get("gw1-call").unwrap(), None);
        assert_eq!(one.count(&CallFilter::default()).unwrap(), 1);
        assert_eq!(turn_rows_in_db(&one), 1);
    }

    /// `n` varied calls (flows, reasons, outcomes, durations, confidences on and around the
    /// bucket edges, out of range, missing), the same on every run.
    fn varied_records(n: usize) -> Vec<(i64, Value)> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let flows = ["billing", "support", "sales"];
        let reasons = [
            None,
            None,
            Some("dtmf0"),
            Some("negative_tone"),
            Some("explicit_request"),
        ];
        let intents = ["pay", "agent", "bye", "complain", "hours"];
        (0..n)
            .map(|i| {
                let turns: Vec<(&str, f64)> = (0..next(5))
                    .map(|_| {
                        let c = match next(4) {
                            0 => next(11) as f64 / 10.0,
                            1 => next(1_000_001) as f64 / 1_000_000.0,
                            2 => next(3) as f64 - 1.0,
                            _ => next(97) as f64 / 97.0,
                        };
                        (intents[next(5) as usize], c)
                    })
                    .collect();
                let transfer = ["bridged", "callback"][next(2) as usize];
                let reason = reasons[next(5) as usize];
                let mut r = record(
                    &format!("call-{i}"),
                    flows[next(3) as usize],
                    reason,
                    next(600_000),
                    &turns,
                    reason.map(|_| transfer),
                );
                r["node"] = json!(format!("gw{}", next(3)));
                (next(100_000) as i64, r)
            })
            .collect()
    }

    #[test]
    fn analytics_agree_between_the_backends() {
        let Some(pg) = postgres_history() else {
            return;
        };
        let lite = CallHistory::open_in_memory().unwrap();
        for (started, r) in varied_records(400) {
            lite.insert(started, &r).unwrap();
            pg.insert(started, &r).unwrap();
        }
        let filters = [
            CallFilter::default(),
            CallFilter {
                flow: Some("billing".into()),
                ..Default::default()
            },
            CallFilter {
                escalated: Some(true),
                since_ms: Some(20_000),
                ..Default::default()
            },
            CallFilter {
                node: Some("gw1".into()),
                until_ms: Some(70_000),
                ..Default::default()
            },
            CallFilter {
                reason: Some("dtmf0".into()),
                limit: Some(7),
                offset: Some(3),
                ..Default::default()
            },
        ];
        for f in &filters {
            assert_eq!(lite.list(f).unwrap(), pg.list(f).unwrap(), "list {f:?}");
            assert_eq!(lite.count(f).unwrap(), pg.count(f).unwrap(), "count {f:?}");
            let (a, b) = (lite.analytics(f).unwrap(), pg.analytics(f).unwrap());
            assert!(a.calls > 0, "the filter selects calls: {f:?}");
            assert_eq!(a.calls, b.calls, "{f:?}");
            assert_eq!(a.contained, b.contained, "{f:?}");
            assert_eq!(a.containment_rate, b.containment_rate, "{f:?}");
            assert_eq!(a.escalations_by_reason, b.escalations_by_reason, "{f:?}");
            assert_eq!(a.avg_handling_ms, b.avg_handling_ms, "{f:?}");
            assert_eq!(a.intents.len(), b.intents.len(), "{f:?}");
            for (x, y) in a.intents.iter().zip(&b.intents) {
                assert_eq!(
                    (&x.intent, x.turns, x.histogram),
                    (&y.intent, y.turns, y.histogram),
                    "{f:?}"
                );
                // The engines add the confidences in their own order: the sums may differ in
                // the last bits of a double, nothing more.
                assert!(
                    (x.mean_confidence - y.mean_confidence).abs()
                        <= 1e-12 * x.mean_confidence.abs().max(1.0),
                    "{f:?}: {} vs {}",
                    x.mean_confidence,
                    y.mean_confidence
                );
            }
        }
        for (started, r) in varied_records(400).iter().step_by(37) {
            let id = r["call_id"].as_str().unwrap();
            assert_eq!(
                lite.get(id).unwrap(),
                pg.get(id).unwrap(),
                "{id} at {started}"
            );
        }
        assert_eq!(lite.prune(50_000).unwrap(), pg.prune(50_000).unwrap());
        assert_eq!(
            lite.list(&CallFilter::default()).unwrap(),
            pg.list(&CallFilter::default()).unwrap()
        );
    }
}

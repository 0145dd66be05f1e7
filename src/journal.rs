//! The journal of calls in progress: what a crash must not lose.
//!
//! # Why it exists
//!
//! A call's record reaches the history, the report directory and the webhook only when the
//! call ends. A gateway killed mid-call (`kill -9`, the OOM killer, a power cut) used to lose
//! all of it: the call never appeared in the history, no `call_ended` went to the agents'
//! systems, and the peers were left hanging, an agent's phone ringing for a call nobody would
//! bridge, a caller in a dialog nobody would end. The journal keeps, while a call lasts:
//!
//! - the record so far (the caller, the flow, the turns, the bot's decision, the transfer's
//!   attempts), rewritten as it changes;
//! - the hand-over context, once the call escalated (what `call_ended` carries);
//! - each open leg's dialog state ([`LegSnapshot`]): what a BYE or CANCEL needs.
//!
//! A call that ends normally is deleted from it. At the next start, whatever is left was
//! interrupted: the gateway stores those calls as `interrupted`, sends their `call_ended`,
//! and ends their legs ([`crate::sip::endpoint::SipEndpoint::end_restored`]).
//!
//! # One gateway per journal
//!
//! The database is opened in SQLite's exclusive locking mode, so a second gateway pointed at
//! the same file cannot read another live gateway's calls as interrupted ones:
//! [`CallJournal::open`] fails with [`JournalError::InUse`]. The lock dies with the process,
//! so the gateway restarted after a crash takes the journal over.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection};
use serde_json::Value;

use crate::sip::endpoint::LegSnapshot;

/// The schema, one entry per version (see [`crate::storage::sqlite::migrate`]).
const MIGRATIONS: &[&str] = &["CREATE TABLE calls (
         id TEXT PRIMARY KEY NOT NULL,
         started_at_ms INTEGER NOT NULL,
         updated_at_ms INTEGER NOT NULL,
         record TEXT NOT NULL,
         context TEXT NULL
     );
     CREATE TABLE legs (
         id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
         leg TEXT NOT NULL,
         snapshot TEXT NOT NULL,
         PRIMARY KEY (id, leg)
     ) WITHOUT ROWID;"];

/// Why the journal could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("call journal {path}: {source}")]
    Store {
        path: PathBuf,
        source: crate::storage::sqlite::StoreError,
    },
    #[error(
        "call journal {0} is in use by another running gateway; give each gateway its own \
         `[sip] journal`"
    )]
    InUse(PathBuf),
    #[error("call journal: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("call journal JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A call the previous run did not finish.
#[derive(Debug, Clone, PartialEq)]
pub struct InterruptedCall {
    /// The gateway's call id.
    pub id: String,
    pub started_at_ms: i64,
    /// When the journal last heard of the call: the best guess of when it was cut.
    pub updated_at_ms: i64,
    /// The record as far as it got.
    pub record: Value,
    /// The hand-over context, when the call had escalated.
    pub context: Option<Value>,
    /// The legs still open, by name (`caller`, `agent-N`).
    pub legs: Vec<(String, LegSnapshot)>,
}

/// The journal (see the module documentation).
#[derive(Debug)]
pub struct CallJournal {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl CallJournal {
    /// Opens (or creates) the journal at `path` and takes it for this process.
    pub fn open(path: &Path) -> Result<CallJournal, JournalError> {
        let in_use = || JournalError::InUse(path.to_path_buf());
        let store = |source: crate::storage::sqlite::StoreError| match &source {
            crate::storage::sqlite::StoreError::Sqlite(e) if is_busy(e) => in_use(),
            _ => JournalError::Store {
                path: path.to_path_buf(),
                source,
            },
        };
        let mut conn = crate::storage::sqlite::open(path).map_err(store)?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // The first write takes the lock (held until the connection closes).
        match conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;") {
            Ok(()) => {}
            Err(e) if is_busy(&e) => return Err(in_use()),
            Err(e) => return Err(e.into()),
        }
        crate::storage::sqlite::migrate(&mut conn, MIGRATIONS, "call journal").map_err(store)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(CallJournal {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // Every write is one statement or one transaction: a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call started (or its record changed): stores the record so far.
    pub fn put_record(
        &self,
        id: &str,
        started_at_ms: i64,
        now_ms: i64,
        record: &Value,
    ) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT INTO calls (id, started_at_ms, updated_at_ms, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms,
                 record = excluded.record",
            params![id, started_at_ms, now_ms, serde_json::to_string(record)?],
        )?;
        Ok(())
    }

    /// The call escalated: the context `call_ended` carries if the call is cut.
    pub fn put_context(&self, id: &str, now_ms: i64, context: &Value) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE calls SET context = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![id, serde_json::to_string(context)?, now_ms],
        )?;
        Ok(())
    }

    /// A leg of the call is open (or its dialog state changed).
    pub fn put_leg(&self, id: &str, leg: &str, snapshot: &LegSnapshot) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT INTO legs (id, leg, snapshot) SELECT ?1, ?2, ?3 WHERE EXISTS
                 (SELECT 1 FROM calls WHERE id = ?1)
             ON CONFLICT (id, leg) DO UPDATE SET snapshot = excluded.snapshot",
            params![id, leg, serde_json::to_string(snapshot)?],
        )?;
        Ok(())
    }

    /// A leg ended.
    pub fn drop_leg(&self, id: &str, leg: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "DELETE FROM legs WHERE id = ?1 AND leg = ?2",
            params![id, leg],
        )?;
        Ok(())
    }

    /// The call ended and its record is stored: nothing of it is left to recover.
    pub fn finish(&self, id: &str) -> Result<(), JournalError> {
        self.conn()
            .execute("DELETE FROM calls WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Every call still in the journal (at start: the calls the previous run did not finish),
    /// oldest first. A row that does not read back is logged and skipped, never fatal.
    pub fn unfinished(&self) -> Result<Vec<InterruptedCall>, JournalError> {
        let conn = self.conn();
        let mut calls = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT id, started_at_ms, updated_at_ms, record, context FROM calls
             ORDER BY started_at_ms, id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut legs_of =
            conn.prepare("SELECT leg, snapshot FROM legs WHERE id = ?1 ORDER BY leg")?;
        for row in rows {
            let (id, started_at_ms, updated_at_ms, record, context) = row?;
            let record = serde_json::from_str(&record).unwrap_or_else(|e| {
                tracing::warn!(%id, error = %e, "journaled record unreadable; keeping the id only");
                serde_json::json!({})
            });
            let context = context.and_then(|c| serde_json::from_str(&c).ok());
            let mut legs = Vec::new();
            let leg_rows = legs_of.query_map([&id], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?;
            for leg in leg_rows {
                let (name, snapshot) = leg?;
                match serde_json::from_str(&snapshot) {
                    Ok(s) => legs.push((name, s)),
                    Err(e) => {
                        tracing::warn!(%id, leg = %name, error = %e, "journaled leg unreadable")
                    }
                }
            }
            calls.push(InterruptedCall {
                id,
                started_at_ms,
                updated_at_ms,
                record,
                context,
                legs,
            });
        }
        Ok(calls)
    }
}

/// One change for the journal's writer thread.
enum Op {
    Record {
        id: String,
        started_at_ms: i64,
        record: Value,
    },
    Context {
        id: String,
        context: Value,
    },
    Leg {
        id: String,
        leg: String,
        snapshot: LegSnapshot,
    },
    DropLeg {
        id: String,
        leg: String,
    },
    Finish {
        id: String,
    },
}

/// Writes to the journal from async code without blocking it: changes go, in the order they
/// were made, to one thread that owns the database. Cheap to clone; the thread ends when the
/// last handle is dropped. A failed write is logged (the call goes on; only its crash
/// recovery is weaker).
#[derive(Clone, Debug)]
pub struct JournalWriter {
    tx: std::sync::mpsc::Sender<Op>,
}

impl JournalWriter {
    /// Starts the writer thread for `journal`.
    pub fn start(journal: std::sync::Arc<CallJournal>) -> std::io::Result<JournalWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("call-journal".into())
            .spawn(move || {
                for op in rx {
                    let now = now_ms();
                    let result = match &op {
                        Op::Record {
                            id,
                            started_at_ms,
                            record,
                        } => journal.put_record(id, *started_at_ms, now, record),
                        Op::Context { id, context } => journal.put_context(id, now, context),
                        Op::Leg { id, leg, snapshot } => journal.put_leg(id, leg, snapshot),
                        Op::DropLeg { id, leg } => journal.drop_leg(id, leg),
                        Op::Finish { id } => journal.finish(id),
                    };
                    if let Err(e) = result {
                        tracing::error!(error = %e, "call journal write failed");
                    }
                }
            })?;
        Ok(JournalWriter { tx })
    }

    fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            tracing::error!("call journal writer gone; change not journaled");
        }
    }

    /// See [`CallJournal::put_record`].
    pub fn record(&self, id: &str, started_at_ms: i64, record: Value) {
        self.send(Op::Record {
            id: id.to_string(),
            started_at_ms,
            record,
        });
    }

    /// See [`CallJournal::put_context`].
    pub fn context(&self, id: &str, context: Value) {
        self.send(Op::Context {
            id: id.to_string(),
            context,
        });
    }

    /// See [`CallJournal::put_leg`].
    pub fn leg(&self, id: &str, leg: &str, snapshot: LegSnapshot) {
        self.send(Op::Leg {
            id: id.to_string(),
            leg: leg.to_string(),
            snapshot,
        });
    }

    /// See [`CallJournal::drop_leg`].
    pub fn drop_leg(&self, id: &str, leg: &str) {
        self.send(Op::DropLeg {
            id: id.to_string(),
            leg: leg.to_string(),
        });
    }

    /// See [`CallJournal::finish`].
    pub fn finish(&self, id: &str) {
        self.send(Op::Finish { id: id.to_string() });
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The journal's name for an agent leg.
pub fn agent_leg(handle: u64) -> String {
    format!("agent-{handle}")
}

/// The journal's name for the caller's leg.
pub const CALLER_LEG: &str = "caller";

/// Whether SQLite refused because another connection holds the database.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leg() -> LegSnapshot {
        LegSnapshot::Inviting {
            invite: "INVITE sip:1001@127.0.0.1 SIP/2.0\r\n\r\n".into(),
            peer: "127.0.0.1:5070".parse().unwrap(),
            tcp: false,
            tls: false,
            local_ip: "127.0.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn what_a_crash_leaves_is_read_back_and_finished_calls_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j/journal.sqlite3");
        {
            let j = CallJournal::open(&path).unwrap();
            j.put_record("a", 1, 2, &json!({"call_id": "x@h"})).unwrap();
            j.put_record("a", 1, 5, &json!({"call_id": "x@h", "turns": [1]}))
                .unwrap();
            j.put_context("a", 6, &json!({"summary": "s"})).unwrap();
            j.put_leg("a", "caller", &leg()).unwrap();
            j.put_leg("a", "agent-7", &leg()).unwrap();
            j.drop_leg("a", "caller").unwrap();
            j.put_record("b", 3, 3, &json!({})).unwrap();
            j.finish("b").unwrap();
            // A leg of an unknown call is not kept.
            j.put_leg("zz", "caller", &leg()).unwrap();
        }
        let j = CallJournal::open(&path).unwrap();
        let left = j.unfinished().unwrap();
        assert_eq!(
            left,
            [InterruptedCall {
                id: "a".into(),
                started_at_ms: 1,
                updated_at_ms: 6,
                record: json!({"call_id": "x@h", "turns": [1]}),
                context: Some(json!({"summary": "s"})),
                legs: vec![("agent-7".into(), leg())],
            }]
        );
        j.finish("a").unwrap();
        assert!(j.unfinished().unwrap().is_empty());
    }

    #[test]
    fn a_second_gateway_cannot_take_a_journal_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite3");
        let first = CallJournal::open(&path).unwrap();
        match CallJournal::open(&path) {
            Err(JournalError::InUse(p)) => assert_eq!(p, path),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        CallJournal::open(&path).expect("free again once the first is closed");
    }
}

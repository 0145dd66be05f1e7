//! Agents' feedback on the bot: after a hand-over the agent marks what the bot understood of a
//! caller's line as good or wrong (with the right intent), and the gateway keeps it in SQLite,
//! or, for a cluster, on the shared PostgreSQL store ([`FeedbackStore::open_postgres`]) so the
//! feedback given on any gateway's agent screen adds up in one place.
//! [`FeedbackStore::examples`] turns it into new example utterances per intent, ready to be
//! reviewed and added to the flow's intents file: the humans improve the bot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::storage::postgres::{conn, PgPool};

/// The PostgreSQL schema, one file per version (`voicebot_schema`, store `feedback`). Append;
/// never edit a released file.
const PG_MIGRATIONS: &[&str] = &[include_str!(
    "../../migrations/postgres/feedback/0001_agent_feedback.sql"
)];

/// Why feedback could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("feedback database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the feedback database is locked by a panicked thread")]
    Poisoned,
    #[error("feedback on PostgreSQL: {0}")]
    Postgres(#[from] crate::storage::postgres::PgError),
}

impl From<::postgres::Error> for FeedbackError {
    fn from(e: ::postgres::Error) -> Self {
        FeedbackError::Postgres(e.into())
    }
}

/// The agent's verdict on one recognised caller line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Good,
    Wrong,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Wrong => "wrong",
        }
    }

    fn from_stored(text: &str) -> Verdict {
        if text == "good" {
            Verdict::Good
        } else {
            Verdict::Wrong
        }
    }
}

/// One piece of feedback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub call_id: String,
    /// Index of the caller line in the context's transcript.
    pub line: usize,
    /// What the caller said (from the context).
    pub utterance: String,
    /// What the bot recognised.
    pub bot_intent: String,
    pub verdict: Verdict,
    /// The intent the agent says was meant (required for a wrong verdict to become an
    /// example).
    pub correct_intent: Option<String>,
    pub note: Option<String>,
    pub created_ms: u64,
}

/// The feedback table, in SQLite or on the shared PostgreSQL store; the methods behave the
/// same on both.
pub struct FeedbackStore {
    backend: Backend,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(PgPool),
}

/// The columns of a [`Feedback`], in the order both backends read them.
const COLUMNS: &str =
    "call_id, line, utterance, bot_intent, verdict, correct_intent, note, created_ms";

/// What teaches an example: confirmed recognitions under the bot's intent, corrected ones
/// under the agent's (the same SQL on both backends).
const EXAMPLES: &str =
    "SELECT CASE verdict WHEN 'good' THEN bot_intent ELSE correct_intent END AS intent,
            utterance
     FROM agent_feedback
     WHERE (verdict = 'good' AND bot_intent <> 'none')
        OR (verdict = 'wrong' AND correct_intent IS NOT NULL AND correct_intent <> '')
     ORDER BY id";

/// `text` as PostgreSQL's `TEXT` takes it (no NUL character).
fn pg_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

impl FeedbackStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<FeedbackStore, FeedbackError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| FeedbackError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        Self::init(Connection::open(path)?)
    }

    /// A store in memory (tests).
    pub fn in_memory() -> Result<FeedbackStore, FeedbackError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<FeedbackStore, FeedbackError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS agent_feedback (
                id INTEGER PRIMARY KEY,
                call_id TEXT NOT NULL,
                line INTEGER NOT NULL,
                utterance TEXT NOT NULL,
                bot_intent TEXT NOT NULL,
                verdict TEXT NOT NULL CHECK (verdict IN ('good', 'wrong')),
                correct_intent TEXT,
                note TEXT,
                created_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS agent_feedback_call ON agent_feedback(call_id);",
        )?;
        Ok(FeedbackStore {
            backend: Backend::Sqlite(Mutex::new(conn)),
        })
    }

    /// The store on the cluster's shared PostgreSQL store: brings its schema up to date (once,
    /// whichever gateway starts first). Blocking: call it off the async runtime.
    pub fn open_postgres(pool: PgPool) -> Result<FeedbackStore, FeedbackError> {
        crate::storage::postgres::migrate(&pool, "feedback", PG_MIGRATIONS)?;
        Ok(FeedbackStore {
            backend: Backend::Postgres(pool),
        })
    }

    /// The SQLite connection, or the pool.
    fn sqlite(
        &self,
    ) -> Result<Result<std::sync::MutexGuard<'_, Connection>, &PgPool>, FeedbackError> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(Ok(conn.lock().map_err(|_| FeedbackError::Poisoned)?)),
            Backend::Postgres(pool) => Ok(Err(pool)),
        }
    }

    /// Stores one piece of feedback; returns its id.
    pub fn record(&self, f: &Feedback) -> Result<i64, FeedbackError> {
        let line = i64::try_from(f.line).unwrap_or(i64::MAX);
        let created_ms = i64::try_from(f.created_ms).unwrap_or(i64::MAX);
        let conn = match self.sqlite()? {
            Ok(conn) => conn,
            Err(pool) => {
                let row = conn(pool)?.query_one(
                    "INSERT INTO agent_feedback
                     (call_id, line, utterance, bot_intent, verdict, correct_intent, note,
                      created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    &[
                        &pg_text(&f.call_id),
                        &line,
                        &pg_text(&f.utterance),
                        &pg_text(&f.bot_intent),
                        &f.verdict.as_str(),
                        &f.correct_intent.as_deref().map(pg_text),
                        &f.note.as_deref().map(pg_text),
                        &created_ms,
                    ],
                )?;
                return Ok(row.try_get(0)?);
            }
        };
        conn.execute(
            "INSERT INTO agent_feedback
             (call_id, line, utterance, bot_intent, verdict, correct_intent, note, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                f.call_id,
                line,
                f.utterance,
                f.bot_intent,
                f.verdict.as_str(),
                f.correct_intent,
                f.note,
                created_ms
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The feedback on one call, oldest first.
    pub fn for_call(&self, call_id: &str) -> Result<Vec<Feedback>, FeedbackError> {
        let sql = format!("SELECT {COLUMNS} FROM agent_feedback WHERE call_id = $1 ORDER BY id");
        let conn = match self.sqlite()? {
            Ok(conn) => conn,
            Err(pool) => {
                return conn(pool)?
                    .query(&sql, &[&pg_text(call_id)])?
                    .iter()
                    .map(|row| {
                        Ok(Feedback {
                            call_id: row.try_get(0)?,
                            line: usize::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
                            utterance: row.try_get(2)?,
                            bot_intent: row.try_get(3)?,
                            verdict: Verdict::from_stored(row.try_get(4)?),
                            correct_intent: row.try_get(5)?,
                            note: row.try_get(6)?,
                            created_ms: u64::try_from(row.try_get::<_, i64>(7)?).unwrap_or(0),
                        })
                    })
                    .collect();
            }
        };
        // SQLite takes `$1` as a numbered parameter too.
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![call_id], |row| {
            let verdict: String = row.get(4)?;
            Ok(Feedback {
                call_id: row.get(0)?,
                line: usize::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                utterance: row.get(2)?,
                bot_intent: row.get(3)?,
                verdict: Verdict::from_stored(&verdict),
                correct_intent: row.get(5)?,
                note: row.get(6)?,
                created_ms: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// New example utterances per intent: confirmed recognitions under the bot's intent, and
    /// corrected ones under the intent the agent gave; each utterance once per intent.
    pub fn examples(&self) -> Result<BTreeMap<String, Vec<String>>, FeedbackError> {
        let pairs: Vec<(String, String)> = match self.sqlite()? {
            Ok(conn) => {
                let mut stmt = conn.prepare(EXAMPLES)?;
                let rows = stmt.query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
            Err(pool) => conn(pool)?
                .query(EXAMPLES, &[])?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<Vec<_>, ::postgres::Error>>()?,
        };
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (intent, utterance) in pairs {
            let list = out.entry(intent).or_default();
            if !list.contains(&utterance) {
                list.push(utterance);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(
        line: usize,
        utterance: &str,
        bot: &str,
        verdict: Verdict,
        correct: Option<&str>,
    ) -> Feedback {
        Feedback {
            call_id: "c1".into(),
            line,
            utterance: utterance.into(),
            bot_intent: bot.into(),
            verdict,
            correct_intent: correct.map(str::to_string),
            note: None,
            created_ms: 1,
        }
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

    /// A store on a fresh PostgreSQL database, when PostgreSQL is installed.
    fn postgres_store() -> Option<(String, FeedbackStore)> {
        let url = crate::storage::throwaway::fresh_database()?;
        let pool = crate::storage::postgres::connect(&url, 2).expect("connects");
        Some((url, FeedbackStore::open_postgres(pool).expect("opens")))
    }

    /// The store on each backend: SQLite in memory, and PostgreSQL when it is installed.
    fn backends() -> Vec<(&'static str, FeedbackStore)> {
        let mut all = vec![("sqlite", FeedbackStore::in_memory().unwrap())];
        if let Some((_, store)) = postgres_store() {
            all.push(("postgres", store));
        }
        all
    }

    #[test]
    fn feedback_becomes_examples_per_intent() {
        for (backend, store) in backends() {
            let _on = On(backend);
            store
                .record(&fb(
                    1,
                    "my parcel is lost",
                    "order_status",
                    Verdict::Good,
                    None,
                ))
                .unwrap();
            store
                .record(&fb(
                    3,
                    "i want out of this contract",
                    "complaint",
                    Verdict::Wrong,
                    Some("cancellation"),
                ))
                .unwrap();
            // A wrong verdict without the right intent is kept but teaches nothing.
            store
                .record(&fb(5, "hmm", "greeting", Verdict::Wrong, None))
                .unwrap();
            store
                .record(&fb(
                    1,
                    "my parcel is lost",
                    "order_status",
                    Verdict::Good,
                    None,
                ))
                .unwrap();
            let ex = store.examples().unwrap();
            assert_eq!(ex["order_status"], ["my parcel is lost"]);
            assert_eq!(ex["cancellation"], ["i want out of this contract"]);
            assert!(!ex.contains_key("greeting"));
            assert_eq!(store.for_call("c1").unwrap().len(), 4);
            assert!(store.for_call("other").unwrap().is_empty());
        }
    }

    #[test]
    fn feedback_reads_back_as_given_in_order() {
        for (backend, store) in backends() {
            let _on = On(backend);
            let mut first = fb(2, "cancel it", "cancellation", Verdict::Good, None);
            first.note = Some("spot on".into());
            first.created_ms = 1_795_844_701_857;
            let second = fb(
                4,
                "the bill\0",
                "billing",
                Verdict::Wrong,
                Some("complaint"),
            );
            let a = store.record(&first).unwrap();
            let b = store.record(&second).unwrap();
            assert!(b > a, "ids grow: {a} then {b}");
            let got = store.for_call("c1").unwrap();
            assert_eq!(got[0], first);
            assert_eq!((got[1].line, got[1].verdict), (4, Verdict::Wrong));
            assert_eq!(got[1].correct_intent.as_deref(), Some("complaint"));
            assert_eq!(store.examples().unwrap()["complaint"].len(), 1);
        }
    }

    #[test]
    fn gateways_sharing_a_database_share_the_feedback() {
        let Some((url, one)) = postgres_store() else {
            return;
        };
        let pool = crate::storage::postgres::connect(&url, 2).expect("connects");
        let two = FeedbackStore::open_postgres(pool).expect("second gateway opens");
        one.record(&fb(
            1,
            "where is my parcel",
            "order_status",
            Verdict::Good,
            None,
        ))
        .unwrap();
        two.record(&fb(
            3,
            "stop my plan",
            "complaint",
            Verdict::Wrong,
            Some("cancellation"),
        ))
        .unwrap();
        for store in [&one, &two] {
            assert_eq!(store.for_call("c1").unwrap().len(), 2);
            let ex = store.examples().unwrap();
            assert_eq!(ex["order_status"], ["where is my parcel"]);
            assert_eq!(ex["cancellation"], ["stop my plan"]);
        }
    }

    #[test]
    fn the_store_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/feedback.sqlite3");
        FeedbackStore::open(&path)
            .unwrap()
            .record(&fb(
                1,
                "where is my stuff",
                "order_status",
                Verdict::Good,
                None,
            ))
            .unwrap();
        let again = FeedbackStore::open(&path).unwrap();
        assert_eq!(again.for_call("c1").unwrap().len(), 1);
    }
}

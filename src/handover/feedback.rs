//! Agents' feedback on the bot: after a hand-over the agent marks what the bot understood of a
//! caller's line as good or wrong (with the right intent), and the gateway keeps it in SQLite.
//! [`FeedbackStore::examples`] turns it into new example utterances per intent, ready to be
//! reviewed and added to the flow's intents file: the humans improve the bot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

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

/// The feedback table.
pub struct FeedbackStore {
    conn: Mutex<Connection>,
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
            conn: Mutex::new(conn),
        })
    }

    /// Stores one piece of feedback; returns its id.
    pub fn record(&self, f: &Feedback) -> Result<i64, FeedbackError> {
        let conn = self.conn.lock().map_err(|_| FeedbackError::Poisoned)?;
        conn.execute(
            "INSERT INTO agent_feedback
             (call_id, line, utterance, bot_intent, verdict, correct_intent, note, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                f.call_id,
                f.line as i64,
                f.utterance,
                f.bot_intent,
                f.verdict.as_str(),
                f.correct_intent,
                f.note,
                f.created_ms as i64
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The feedback on one call, oldest first.
    pub fn for_call(&self, call_id: &str) -> Result<Vec<Feedback>, FeedbackError> {
        let conn = self.conn.lock().map_err(|_| FeedbackError::Poisoned)?;
        let mut stmt = conn.prepare(
            "SELECT call_id, line, utterance, bot_intent, verdict, correct_intent, note, created_ms
             FROM agent_feedback WHERE call_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![call_id], |row| {
            let verdict: String = row.get(4)?;
            Ok(Feedback {
                call_id: row.get(0)?,
                line: row.get::<_, i64>(1)? as usize,
                utterance: row.get(2)?,
                bot_intent: row.get(3)?,
                verdict: if verdict == "good" {
                    Verdict::Good
                } else {
                    Verdict::Wrong
                },
                correct_intent: row.get(5)?,
                note: row.get(6)?,
                created_ms: row.get::<_, i64>(7)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// New example utterances per intent: confirmed recognitions under the bot's intent, and
    /// corrected ones under the intent the agent gave; each utterance once per intent.
    pub fn examples(&self) -> Result<BTreeMap<String, Vec<String>>, FeedbackError> {
        let conn = self.conn.lock().map_err(|_| FeedbackError::Poisoned)?;
        let mut stmt = conn.prepare(
            "SELECT CASE verdict WHEN 'good' THEN bot_intent ELSE correct_intent END AS intent,
                    utterance
             FROM agent_feedback
             WHERE (verdict = 'good' AND bot_intent <> 'none')
                OR (verdict = 'wrong' AND correct_intent IS NOT NULL AND correct_intent <> '')
             ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            let (intent, utterance) = row?;
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

    #[test]
    fn feedback_becomes_examples_per_intent() {
        let store = FeedbackStore::in_memory().unwrap();
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

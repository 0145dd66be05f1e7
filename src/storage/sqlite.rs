//! What the gateway's SQLite stores (the webhook outbox, the call history) share: opening a
//! database file the same way, and bringing its schema up to date with versioned migrations
//! tracked in `PRAGMA user_version`. One place, so every store gets the same durability
//! settings and refuses a database written by a newer release the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// Why a store's database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the directory of {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema version {found} is newer than this binary knows ({known})")]
    NewerSchema { found: i64, known: i64 },
}

/// Opens (or creates, with its directory) the database at `path`: WAL (readers never block
/// the writer), `synchronous = NORMAL` (a commit does not fsync; the WAL is synced at
/// checkpoints, which survives a process crash and at worst loses the last commits on a power
/// cut) and a 5 s busy timeout.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let conn = Connection::open(path)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Brings the schema to the latest of `migrations` (version n is `migrations[n - 1]`), one
/// transaction per step; `what` names the store in the log.
pub fn migrate(conn: &mut Connection, migrations: &[&str], what: &str) -> Result<(), StoreError> {
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    for (version, sql) in (1..)
        .zip(migrations)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::debug!(version, store = what, "schema migrated");
    }
    Ok(())
}

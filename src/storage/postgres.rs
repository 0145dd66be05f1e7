//! The shared store's plumbing: a pool of PostgreSQL connections and versioned migrations.
//!
//! # Why the blocking client
//!
//! The stores are synchronous (rusqlite is) and every caller already runs them off the async
//! runtime (`spawn_blocking`, the deliverer's blocking steps). The `postgres` crate is
//! `tokio-postgres` behind a blocking interface, so one store type can hold either backend and
//! keep one synchronous API; r2d2 (by the same author) pools its connections. A store method
//! must therefore never be called on an async task itself, exactly as with SQLite.
//!
//! # Migrations
//!
//! Each store keeps its schema as numbered SQL files under `migrations/postgres/<store>/`
//! (compiled in with `include_str!`). [`migrate`] applies the ones a database lacks, one
//! transaction per step, and records the version per store in `voicebot_schema`. Several
//! gateways starting at once against a new database take turns on an advisory lock, so each
//! step runs exactly once. A database at a version this binary does not know is refused (as
//! the SQLite stores refuse one), never misread.

use std::time::Duration;

use r2d2_postgres::postgres::{self, NoTls};
use r2d2_postgres::PostgresConnectionManager;

/// The r2d2 pool inside a [`PgPool`].
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// A pool of connections to the shared database (cheap to clone; derefs to r2d2's pool).
///
/// The blocking client closes a connection by running its own small runtime, which panics on
/// a tokio worker thread. A pool whose last handle goes away on an async task (the server
/// returning from `run`) would close its connections there, so the last handle hands the pool
/// to a short-lived thread of its own to close them.
#[derive(Clone)]
pub struct PgPool(std::sync::Arc<PoolOwner>);

struct PoolOwner(Option<Pool>);

impl Drop for PoolOwner {
    fn drop(&mut self) {
        let Some(pool) = self.0.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let closing = std::thread::Builder::new()
                .name("pg-pool-close".into())
                .spawn(move || drop(pool));
            if let Err(e) = closing {
                tracing::warn!(error = %e, "PostgreSQL connections left open at exit");
            }
        }
    }
}

impl std::ops::Deref for PgPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        match &self.0 .0 {
            Some(pool) => pool,
            // Taken only in drop, when no handle is left to deref.
            None => unreachable!("a PgPool is used after its last handle was dropped"),
        }
    }
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("state", &self.state())
            .finish()
    }
}
/// One connection taken from a [`PgPool`].
pub type PgConn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// How long taking a connection from the pool may wait (the database is down or every
/// connection is busy) before the store call fails.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock key every gateway takes while migrating (any constant; "vbmigr").
const MIGRATION_LOCK: i64 = 0x7662_6d69_6772;

/// Why the shared database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL URL: {0}")]
    Url(postgres::Error),
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("the {store} schema in PostgreSQL is at version {found}, newer than this binary knows ({known})")]
    NewerSchema {
        store: String,
        found: i64,
        known: i64,
    },
}

/// A pool of at most `size` connections to `url`. Connects once now, so a wrong URL, password
/// or an unreachable server is reported at start, not at the first call.
pub fn connect(url: &str, size: u32) -> Result<PgPool, PgError> {
    let config: postgres::Config = url.parse().map_err(PgError::Url)?;
    let manager = PostgresConnectionManager::new(config, NoTls);
    let pool = r2d2::Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(1))
        .connection_timeout(CHECKOUT_TIMEOUT)
        // A connection whose server went away is found out before a store call gets it.
        .test_on_check_out(true)
        .build(manager)?;
    Ok(PgPool(std::sync::Arc::new(PoolOwner(Some(pool)))))
}

/// A connection from `pool` for one store call.
pub fn conn(pool: &PgPool) -> Result<PgConn, PgError> {
    Ok(pool.get()?)
}

/// Brings `store`'s schema to the latest of `migrations` (version n is `migrations[n - 1]`).
pub fn migrate(pool: &PgPool, store: &str, migrations: &[&str]) -> Result<(), PgError> {
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    let mut conn = conn(pool)?;
    let mut tx = conn.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS voicebot_schema (
             store TEXT PRIMARY KEY NOT NULL,
             version BIGINT NOT NULL
         )",
    )?;
    let found: i64 = tx
        .query_opt(
            "SELECT version FROM voicebot_schema WHERE store = $1",
            &[&store],
        )?
        .map_or(0, |row| row.get(0));
    if found > known {
        return Err(PgError::NewerSchema {
            store: store.to_string(),
            found,
            known,
        });
    }
    for (version, sql) in (1i64..)
        .zip(migrations)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let mut step = tx.transaction()?;
        step.batch_execute(sql)?;
        step.execute(
            "INSERT INTO voicebot_schema (store, version) VALUES ($1, $2)
             ON CONFLICT (store) DO UPDATE SET version = EXCLUDED.version",
            &[&store, &version],
        )?;
        step.commit()?;
        tracing::info!(store, version, "PostgreSQL schema migrated");
    }
    tx.commit()?;
    Ok(())
}

/// `url` with its password replaced by `***`, for logs and `Debug` output.
pub fn redacted(url: &str) -> String {
    // URL form: postgres://user:password@host...
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            return format!("{scheme}{masked}@{host}");
        }
        return url.to_string();
    }
    // key=value form: password=... (quoted or not)
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_both_url_forms() {
        assert_eq!(
            redacted("postgres://vb:secret@db:5432/x"),
            "postgres://vb:***@db:5432/x"
        );
        assert_eq!(redacted("postgresql://vb@db/x"), "postgresql://vb@db/x");
        assert_eq!(
            redacted("host=db user=vb password=secret dbname=x"),
            "host=db user=vb password=*** dbname=x"
        );
    }

    #[test]
    fn migrations_run_once_in_order_and_a_newer_schema_is_refused() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let pool = connect(&url, 2).expect("connects");
        let steps = ["CREATE TABLE t (a INT)", "ALTER TABLE t ADD COLUMN b INT"];
        migrate(&pool, "demo", &steps[..1]).expect("version 1");
        migrate(&pool, "demo", &steps).expect("version 2");
        migrate(&pool, "demo", &steps).expect("nothing to do");
        let mut c = conn(&pool).expect("conn");
        c.execute("INSERT INTO t (a, b) VALUES (1, 2)", &[])
            .expect("both columns exist");
        match migrate(&pool, "demo", &steps[..1]) {
            Err(PgError::NewerSchema { found, known, .. }) => assert_eq!((found, known), (2, 1)),
            other => panic!("expected NewerSchema, got {other:?}"),
        }
        // Another store's versions are its own.
        migrate(&pool, "other", &["CREATE TABLE u (a INT)"]).expect("other store");
    }

    #[test]
    fn gateways_migrating_at_once_apply_each_step_once() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let steps = ["CREATE TABLE once (a INT)", "INSERT INTO once VALUES (1)"];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let pool = connect(&url, 1).expect("connects");
                    migrate(&pool, "race", &steps).expect("migrates");
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let pool = connect(&url, 1).expect("connects");
        let n: i64 = conn(&pool)
            .expect("conn")
            .query_one("SELECT COUNT(*) FROM once", &[])
            .expect("count")
            .get(0);
        assert_eq!(n, 1);
    }
}

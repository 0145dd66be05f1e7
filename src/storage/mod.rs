//! Where the gateway keeps what outlives a call: the call history, the webhook outbox, the
//! agents' feedback and the flows.
//!
//! # Two backends, one behaviour
//!
//! A single gateway keeps all of it to itself, embedded: SQLite files and the flow files on its
//! own disk ([`sqlite`]), nothing to install or run beside it. A cluster of gateways (several
//! processes behind a SIP proxy) needs one view of every call, an outbox that a surviving
//! gateway can deliver when the one that wrote an event dies, and flows that every gateway
//! follows; that is `[storage] url = "postgres://..."` ([`postgres`]): the same stores, on one
//! PostgreSQL database shared by all gateways. Every store has one public type whose methods
//! behave the same on both backends; their unit tests run against both.
//!
//! Only the crash-recovery journal of calls in progress ([`crate::journal`]) stays on the
//! gateway's own disk: it is about the calls of this process and is read by this process when
//! it starts again.

pub mod postgres;
pub mod sqlite;
pub mod throwaway;

use serde::{Deserialize, Serialize};

/// The most connections one gateway opens to PostgreSQL unless told otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// `[storage]` in the gateway configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `postgres://user:password@host:port/database` (libpq's URL or key=value form): the
    /// shared store of a cluster. Empty: embedded (SQLite files and flow files). Prefer
    /// `url_env`, which keeps the password out of the file.
    pub url: String,
    /// The environment variable holding the URL (wins over `url` when set and not empty).
    pub url_env: String,
    /// The most connections this gateway holds open to the database.
    pub pool_size: u32,
    /// This gateway's name in the cluster (which gateway wrote a record, owns a call, holds a
    /// webhook delivery). Empty: `<hostname>:<SIP port>`, unique per process on one machine.
    pub node: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: String::new(),
            url_env: String::new(),
            pool_size: DEFAULT_POOL_SIZE,
            node: String::new(),
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &postgres::redacted(&self.url))
            .field("url_env", &self.url_env)
            .field("pool_size", &self.pool_size)
            .field("node", &self.node)
            .finish()
    }
}

impl StorageConfig {
    /// The database URL in force: `url_env`'s variable when set and not empty, else `url`;
    /// `None`: embedded storage.
    pub fn resolved_url(&self) -> Option<String> {
        let from_env = (!self.url_env.is_empty())
            .then(|| std::env::var(&self.url_env).ok())
            .flatten()
            .filter(|v| !v.trim().is_empty());
        from_env
            .or_else(|| Some(self.url.clone()))
            .filter(|u| !u.trim().is_empty())
    }

    /// What is wrong with the section, as (field, reason), for the config loader.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.pool_size == 0 || self.pool_size > 256 {
            return Some(("pool_size", "must be between 1 and 256".to_string()));
        }
        if let Some(url) = self.resolved_url() {
            if let Err(e) = url.parse::<::postgres::Config>() {
                return Some(("url", format!("not a PostgreSQL URL: {e}")));
            }
        }
        if self.node.len() > 200 || self.node.chars().any(char::is_control) {
            return Some((
                "node",
                "at most 200 characters, no control characters".to_string(),
            ));
        }
        None
    }

    /// This gateway's node name: `node`, else `<hostname>:<sip_port>`.
    pub fn node_name(&self, sip_port: u16) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gateway".to_string());
        format!("{host}:{sip_port}")
    }
}

/// Runs `prune(before_ms)` (off the async runtime) at once and then once a day, deleting what
/// is older than `days`, until the task is aborted; `days == 0` keeps everything (no task).
/// `what` names the store in the log. One loop for every store with a retention.
pub fn spawn_daily_prune<N, E>(
    what: &'static str,
    days: u32,
    prune: impl Fn(i64) -> Result<N, E> + Send + Sync + 'static,
) -> Option<tokio::task::JoinHandle<()>>
where
    N: std::fmt::Display + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    if days == 0 {
        return None;
    }
    let keep_ms = i64::from(days) * 86_400_000;
    let prune = std::sync::Arc::new(prune);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(86_400));
        loop {
            tick.tick().await;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let before = now_ms.saturating_sub(keep_ms);
            let prune = std::sync::Arc::clone(&prune);
            match tokio::task::spawn_blocking(move || prune(before)).await {
                Ok(Ok(n)) => tracing::info!(store = what, removed = %n, days, "retention applied"),
                Ok(Err(e)) => tracing::warn!(store = what, error = %e, "retention failed"),
                Err(e) => tracing::warn!(store = what, error = %e, "retention task failed"),
            }
        }
    }))
}

/// The shared store of a cluster, once connected and migrated: what every store opens on.
#[derive(Clone)]
pub struct Shared {
    /// Connections to the shared database.
    pub pool: postgres::PgPool,
    /// This gateway's node name ([`StorageConfig::node_name`]).
    pub node: String,
    /// The URL in force, its password redacted (for logs and the banner).
    pub shown_url: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.node)
            .field("url", &self.shown_url)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connects to the shared database of `config` (`None`: embedded storage). Blocking: run
    /// it off the async runtime.
    pub fn connect(
        config: &StorageConfig,
        sip_port: u16,
    ) -> Result<Option<Shared>, postgres::PgError> {
        let Some(url) = config.resolved_url() else {
            return Ok(None);
        };
        let pool = postgres::connect(&url, config.pool_size)?;
        let shared = Shared {
            pool,
            node: config.node_name(sip_port),
            shown_url: postgres::redacted(&url),
        };
        tracing::info!(url = %shared.shown_url, node = %shared.node, "shared PostgreSQL store connected");
        Ok(Some(shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_by_default_and_the_environment_wins() {
        let mut c = StorageConfig::default();
        assert_eq!(c.resolved_url(), None);
        assert!(c.problem().is_none());
        c.url = "postgres://a@127.0.0.1/x".into();
        assert_eq!(
            c.resolved_url().as_deref(),
            Some("postgres://a@127.0.0.1/x")
        );
        c.url_env = "VOICEBOT_TEST_STORAGE_URL_THAT_IS_NOT_SET".into();
        assert_eq!(
            c.resolved_url().as_deref(),
            Some("postgres://a@127.0.0.1/x")
        );
    }

    #[test]
    fn bad_settings_name_their_field() {
        let c = StorageConfig {
            url: "mysql://nope".into(),
            ..StorageConfig::default()
        };
        assert_eq!(c.problem().map(|p| p.0), Some("url"));
        let c = StorageConfig {
            pool_size: 0,
            ..StorageConfig::default()
        };
        assert_eq!(c.problem().map(|p| p.0), Some("pool_size"));
        let c = StorageConfig {
            node: "a\nb".into(),
            ..StorageConfig::default()
        };
        assert_eq!(c.problem().map(|p| p.0), Some("node"));
    }

    #[test]
    fn the_password_never_reaches_debug_output() {
        let c = StorageConfig {
            url: "postgres://voicebot:s3cret@db:5432/voicebot".into(),
            ..StorageConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db:5432"), "{shown}");
    }
}

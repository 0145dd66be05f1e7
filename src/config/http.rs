//! `[http]`: the agents' and admins' HTTP side: where it listens, its bearer tokens (from the
//! configuration, the environment, or generated into owner-only files) and its databases.

use std::path::{Path as FsPath, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the HTTP side listens unless told otherwise: on loopback only, so that a newcomer
/// finds the console and the agent screen at once, while reaching them from elsewhere stays
/// the admin's explicit choice (`[http] listen`, `voicebot serve --http`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `[http]` in the gateway configuration.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `ADDR:PORT` to listen on ([`DEFAULT_LISTEN`], loopback only, by default); empty: no
    /// HTTP server.
    pub listen: String,
    /// The agents' bearer token; prefer `agent_token_env`. When both are empty a random token
    /// is generated at start and written to `token_file`.
    pub agent_token: String,
    pub agent_token_env: String,
    pub token_file: PathBuf,
    /// SQLite file for the agents' feedback.
    pub feedback_database: PathBuf,
    /// The admin API's bearer token (see [`crate::admin`]); prefer `admin_token_env`. When both
    /// are empty a random token is generated at start and written to `admin_token_file`.
    pub admin_token: String,
    pub admin_token_env: String,
    pub admin_token_file: PathBuf,
    /// SQLite file of the call history; empty: no history.
    pub history_database: PathBuf,
    /// Calls older than this are deleted from the history (at start and daily); 0: kept.
    pub history_retention_days: u32,
    /// A bearer token for `/metrics` and `/readyz`; empty: open (as scrapers expect).
    pub metrics_token: String,
    /// A connection that has not sent a request's complete headers within this many seconds
    /// is closed (slowloris); at most `max_connections` are served at once (more wait in the
    /// listen backlog).
    pub header_timeout_s: u64,
    pub max_connections: usize,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field(
                "agent_token",
                &if self.agent_token.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("agent_token_env", &self.agent_token_env)
            .field("token_file", &self.token_file)
            .field("feedback_database", &self.feedback_database)
            .field("admin_token", &masked(&self.admin_token))
            .field("admin_token_env", &self.admin_token_env)
            .field("admin_token_file", &self.admin_token_file)
            .field("history_database", &self.history_database)
            .field("history_retention_days", &self.history_retention_days)
            .field("metrics_token", &masked(&self.metrics_token))
            .field("header_timeout_s", &self.header_timeout_s)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A secret as `Debug` shows it.
fn masked(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "***"
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: DEFAULT_LISTEN.into(),
            agent_token: String::new(),
            agent_token_env: "VOICEBOT_AGENT_TOKEN".into(),
            token_file: PathBuf::from("data/agent-token"),
            feedback_database: PathBuf::from("data/feedback.sqlite3"),
            admin_token: String::new(),
            admin_token_env: "VOICEBOT_ADMIN_TOKEN".into(),
            admin_token_file: PathBuf::from("data/admin-token"),
            history_database: PathBuf::from("data/history.sqlite3"),
            history_retention_days: 90,
            metrics_token: String::new(),
            header_timeout_s: 10,
            max_connections: 512,
        }
    }
}

/// A bearer token: configured, from the environment, or generated and written to `file`
/// (readable by the owner only). Returns the token and where it came from (never the token).
fn resolve_secret(literal: &str, env: &str, file: &FsPath) -> std::io::Result<(String, String)> {
    if !literal.is_empty() {
        return Ok((literal.to_string(), "the configuration".into()));
    }
    if !env.is_empty() {
        if let Ok(t) = std::env::var(env) {
            if !t.trim().is_empty() {
                return Ok((t.trim().to_string(), format!("${env}")));
            }
        }
    }
    let token = format!("{:032x}", rand::random::<u128>());
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Created with mode 0600 (not chmod-ed after the write), so the token is never readable
    // by others, not even for a moment.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(file)?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An existing file keeps its mode on open: tighten it too.
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((token, file.display().to_string()))
}

impl HttpConfig {
    /// What is wrong with the settings, as `(field, reason)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Some((
                "listen",
                format!("`{}` is not ADDR:PORT (e.g. 127.0.0.1:8080)", self.listen),
            ));
        }
        if !self.admin_token.is_empty() && self.admin_token == self.agent_token {
            return Some((
                "admin_token",
                "must differ from agent_token (agents must not get admin rights)".into(),
            ));
        }
        for (field, token) in [
            ("admin_token", &self.admin_token),
            ("metrics_token", &self.metrics_token),
        ] {
            if !token.is_empty() && (token.len() < 16 || token.trim() != token.as_str()) {
                return Some((
                    field,
                    "must be at least 16 characters, without surrounding spaces".into(),
                ));
            }
        }
        if self.admin_token.is_empty() && self.admin_token_file.as_os_str().is_empty() {
            return Some((
                "admin_token_file",
                "must name a file (where a generated admin token is written)".into(),
            ));
        }
        if self.header_timeout_s == 0 || self.max_connections == 0 {
            return Some((
                "header_timeout_s",
                "header_timeout_s and max_connections must be at least 1".into(),
            ));
        }
        if self.history_retention_days > 36_500 {
            return Some((
                "history_retention_days",
                "must be at most 36500 (100 years); 0 keeps every call".into(),
            ));
        }
        None
    }

    /// The agent token: configured, from the environment, or generated and written to
    /// `token_file` (readable by the owner only). Returns the token and where it came from.
    pub fn resolve_token(&self) -> std::io::Result<(String, String)> {
        resolve_secret(&self.agent_token, &self.agent_token_env, &self.token_file)
    }

    /// The admin token, the same way: configured, from `admin_token_env`, or generated and
    /// written to `admin_token_file`. Returns the token and where it came from.
    pub fn resolve_admin_token(&self) -> std::io::Result<(String, String)> {
        resolve_secret(
            &self.admin_token,
            &self.admin_token_env,
            &self.admin_token_file,
        )
    }
}

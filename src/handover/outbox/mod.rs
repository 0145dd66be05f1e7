//! The webhook outbox: hand-over events (escalated, agent answered, call ended, ...) reach the
//! configured webhook (a CRM, an agent screen) durably, in order per call, and signed.
//!
//! # Why an outbox
//!
//! A call must never wait on, or fail because of, the webhook target. So an event is first
//! written to SQLite ([`Outbox::enqueue`], a few hundred microseconds, no network) and only then
//! sent, by a background task ([`spawn_deliverer`]) that retries with capped exponential backoff
//! and jitter until the target answers 2xx. The events survive a gateway restart: the next
//! deliverer picks up whatever is still pending.
//!
//! # Dead letters
//!
//! A receiver that never answers 2xx in time (down, or slower than `timeout_ms`) must not get
//! the same event for ever, nor hold back the call's later events for ever. So an event is
//! tried at most `max_attempts` times (default 10: with the default back-off, about three and
//! a half minutes of trying), then it becomes a *dead letter*: it stays in the outbox table
//! with its attempt count and last error, is logged once (as an error) when it dies, counted
//! in `/metrics` (`voicebot_webhook_dead_events`), listed by the admin API
//! (`GET /api/webhook/dead`), and can be requeued by an admin once the receiver is fixed
//! ([`Outbox::retry_dead`], `POST /api/webhook/dead/{event_id}/retry`), with a fresh set of
//! attempts and its original id and body. Dead letters are pruned with the delivered events
//! after `retention_days`. `max_attempts = 0` restores retrying for ever (not recommended: one
//! broken event then blocks its call's later events until it is delivered).
//!
//! # Ordering
//!
//! Events of one call are delivered in the order they were enqueued: only the oldest pending
//! event of each call is ever due, so `call_ended` can never overtake `escalated` while the
//! latter is backing off. Events of different calls are independent: a call whose event keeps
//! failing does not hold back the others (each POST is bounded by `timeout_ms`). A dead event
//! is *skipped*: the later events of its call are delivered, still in their order, without it.
//! A dead event that an admin requeues goes before its call's events still pending, but after
//! those already delivered, so a receiver that cares orders by `created_at_ms`.
//!
//! # What is sent
//!
//! One `POST` per attempt to `url`, with the JSON envelope
//! `{"schema":"voicebot.webhook.v1","event_id":..,"kind":..,"call_id":..,"created_at_ms":..,"data":{..}}`.
//! The envelope is serialised once, at enqueue time, and stored as is, so every retry of an
//! event sends byte-identical bodies. Headers:
//!
//! - `Content-Type: application/json`
//! - `X-Voicebot-Event: <kind>`
//! - `X-Voicebot-Event-Id: <event_id>` and `Idempotency-Key: <event_id>` (the same value)
//! - `X-Voicebot-Timestamp: <unix seconds of this attempt>`
//! - `X-Voicebot-Signature: v1=<hex>` when a secret is configured, where `<hex>` is the
//!   lowercase hex HMAC-SHA256, keyed with the secret, of `"<timestamp>.<body>"` ([`sign`]).
//!
//! # What a receiver must do
//!
//! 1. Verify the signature over the *raw* body bytes and the timestamp header, and reject a
//!    timestamp too far from its own clock (a few minutes): [`verify`] does both, in constant
//!    time. This stops forged and replayed requests.
//! 2. De-duplicate on `Idempotency-Key`: delivery is at-least-once. An event whose 2xx was lost
//!    (a timeout after the receiver had processed it, a gateway crash between the POST and the
//!    bookkeeping) is sent again, with the same key and body.
//! 3. Answer 2xx quickly (within `timeout_ms`) once the event is stored; anything else, a
//!    redirect included, counts as a failure and is retried.
//!
//! The secret comes from the config or, better, from the environment variable named by
//! `secret_env`; it never reaches a log line or a `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

mod postgres;
mod sqlite;

/// The `schema` field of every envelope.
pub const SCHEMA: &str = "voicebot.webhook.v1";

/// Shortest and longest allowed `timeout_ms`.
pub const TIMEOUT_RANGE_MS: (u64, u64) = (50, 60_000);
/// Shortest and longest allowed `initial_backoff_ms`.
pub const INITIAL_BACKOFF_RANGE_MS: (u64, u64) = (10, 600_000);
/// Longest allowed `max_backoff_ms` (one day).
pub const MAX_BACKOFF_LIMIT_MS: u64 = 86_400_000;
/// The default `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Most dead letters one listing returns.
pub const MAX_DEAD_LISTED: usize = 1_000;

/// Share of a retry delay taken off at random, so that many events failing together do not
/// retry together.
const JITTER: f64 = 0.2;
/// Events taken from the outbox per delivery round.
const BATCH: usize = 32;
/// Longest sleep of the deliverer between rounds (a safety net: enqueues wake it at once).
const MAX_IDLE_MS: u64 = 1_000;
/// Longest error text stored per event.
const MAX_ERROR_CHARS: usize = 500;
/// A claim on PostgreSQL lasts this many webhook timeouts ([`lease_for`]).
pub const LEASE_TIMEOUTS: u64 = 5;
/// The shortest claim on PostgreSQL, in milliseconds ([`lease_for`]).
pub const MIN_LEASE_MS: u64 = 5_000;
/// Time kept in hand beyond one `timeout_ms` before a claimed event is posted: the POST's
/// bookkeeping must land while the lease still runs.
const LEASE_MARGIN_MS: u64 = 1_000;

/// `[handover.webhook]`: where hand-over events are posted and how they are retried.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The `http://` or `https://` URL events are posted to; empty: webhooks off.
    pub url: String,
    /// HMAC-SHA256 key for the `X-Voicebot-Signature` header; prefer `secret_env`. Empty (and
    /// the variable unset or empty): requests are unsigned.
    pub secret: String,
    /// Environment variable holding the key (used when `secret` is empty).
    pub secret_env: String,
    /// Deadline for one whole POST (connect, send, answer), in milliseconds.
    pub timeout_ms: u64,
    /// Delay before the first retry; it doubles with each failed attempt.
    pub initial_backoff_ms: u64,
    /// Longest delay between two attempts.
    pub max_backoff_ms: u64,
    /// Attempts after which an undelivered event is given up (a dead letter, see the module
    /// docs); 0: retry for ever.
    pub max_attempts: u32,
    /// The SQLite file holding the outbox (created with its directory when missing).
    pub database: PathBuf,
    /// Delivered and given-up events are deleted this many days after they were created
    /// (checked hourly); pending events are never deleted.
    pub retention_days: u32,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &if self.secret.is_empty() { "" } else { "***" })
            .field("secret_env", &self.secret_env)
            .field("timeout_ms", &self.timeout_ms)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("max_attempts", &self.max_attempts)
            .field("database", &self.database)
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            secret_env: "VOICEBOT_WEBHOOK_SECRET".into(),
            timeout_ms: 2_000,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            database: PathBuf::from("data/voicebot.sqlite3"),
            retention_days: 30,
        }
    }
}

impl WebhookConfig {
    /// Whether webhooks are on (a URL is set).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// What is wrong with the settings, as `(field, reason)`; only checked when enabled.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !self.enabled() {
            return None;
        }
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        match rest {
            None => {
                return Some((
                    "url",
                    format!("`{}` is not an http:// or https:// URL", self.url),
                ))
            }
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                return Some(("url", format!("`{}` names no host", self.url)))
            }
            Some(_) => {}
        }
        if !(1..=36_500).contains(&self.retention_days) {
            return Some((
                "retention_days",
                format!("{} must be in 1..=36500", self.retention_days),
            ));
        }
        let (lo, hi) = TIMEOUT_RANGE_MS;
        if !(lo..=hi).contains(&self.timeout_ms) {
            return Some((
                "timeout_ms",
                format!("{} must be in {lo}..={hi}", self.timeout_ms),
            ));
        }
        let (lo, hi) = INITIAL_BACKOFF_RANGE_MS;
        if !(lo..=hi).contains(&self.initial_backoff_ms) {
            return Some((
                "initial_backoff_ms",
                format!("{} must be in {lo}..={hi}", self.initial_backoff_ms),
            ));
        }
        let (lo, hi) = (self.initial_backoff_ms, MAX_BACKOFF_LIMIT_MS);
        if !(lo..=hi).contains(&self.max_backoff_ms) {
            return Some((
                "max_backoff_ms",
                format!(
                    "{} must be in {lo}..={hi} (at least initial_backoff_ms)",
                    self.max_backoff_ms
                ),
            ));
        }
        if self.database.as_os_str().is_empty() {
            return Some(("database", "must name the SQLite file".into()));
        }
        None
    }

    /// The signing key: `secret`, else the variable named by `secret_env`; `None`: unsigned.
    fn signing_key(&self) -> Option<Vec<u8>> {
        if !self.secret.is_empty() {
            return Some(self.secret.as_bytes().to_vec());
        }
        if self.secret_env.is_empty() {
            return None;
        }
        std::env::var(&self.secret_env)
            .ok()
            .filter(|k| !k.is_empty())
            .map(String::into_bytes)
    }
}

/// Why the outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("webhook outbox database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("webhook outbox on the shared store: {0}")]
    Postgres(#[from] crate::storage::postgres::PgError),
    #[error("cannot create the directory of {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialise the webhook event: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "webhook outbox schema version {found} is newer than this gateway's ({supported}); \
         was the database written by a newer release?"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("webhook event #{0} is not pending (unknown, delivered or dead)")]
    NotPending(i64),
    #[error("no webhook event `{0}` in the outbox")]
    UnknownEvent(String),
    #[error(
        "webhook event `{event_id}` is {state:?}, not dead; only a dead event can be requeued"
    )]
    NotDead { event_id: String, state: EventState },
}

/// Why one POST did not deliver an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("HTTP status {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, body: String },
    #[error("request failed: {0}")]
    Transport(String),
}

/// An event waiting to be sent, as [`Outbox::due`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Row id, for [`Outbox::mark_delivered`] and [`Outbox::mark_failed`].
    pub id: i64,
    /// The idempotency key.
    pub event_id: String,
    pub call_id: String,
    pub kind: String,
    /// The exact JSON body sent on every attempt.
    pub body: String,
    pub created_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// Not delivered yet; will be retried.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up after `max_attempts` failed attempts.
    Dead,
}

/// One event of a call and its delivery history, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventStatus {
    pub event_id: String,
    pub kind: String,
    pub state: EventState,
    pub created_ms: u64,
    pub attempts: u32,
    /// When the next attempt is due (meaningful while pending).
    pub next_attempt_ms: u64,
    pub delivered_ms: Option<u64>,
    /// The reason of the latest failed attempt, kept after a later success.
    pub last_error: Option<String>,
    /// The gateway (node) that last claimed it for delivery (on PostgreSQL; absent on SQLite,
    /// where the one gateway delivers everything).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

/// An event given up after its last allowed attempt (a dead letter), for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadEvent {
    /// The idempotency key; names the event in `POST /api/webhook/dead/{event_id}/retry`.
    pub event_id: String,
    pub call_id: String,
    pub kind: String,
    pub created_ms: u64,
    /// When it was given up.
    pub dead_ms: u64,
    /// Attempts made, all failed.
    pub attempts: u32,
    /// The reason of the last attempt's failure.
    pub last_error: Option<String>,
}

/// What [`Outbox::mark_failed`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Attempt `attempt` failed; the next one is in `retry_in_ms`.
    Retry { attempt: u32, retry_in_ms: u64 },
    /// Attempt `attempt` was the last allowed one: the event is given up.
    Dead { attempt: u32 },
}

/// The durable queue of webhook events: one SQLite file (a single gateway, the default) or the
/// cluster's shared PostgreSQL database (`[storage] url`; every gateway delivers, see
/// [`postgres`]). Same methods, same behaviour; only `due` differs in that on PostgreSQL it
/// also claims what it returns for this gateway.
#[derive(Debug)]
pub struct Outbox {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sqlite(sqlite::SqliteOutbox),
    Postgres(postgres::PgOutbox),
}

/// Dispatches a method call to the backend in use.
macro_rules! on_backend {
    ($self:ident, $store:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($store) => $call,
            Backend::Postgres($store) => $call,
        }
    };
}

impl Outbox {
    /// Opens (or creates, with its directory) the SQLite database at `path` and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Outbox, OutboxError> {
        Ok(Outbox {
            backend: Backend::Sqlite(sqlite::SqliteOutbox::open(path)?),
        })
    }

    /// A throw-away outbox in memory (tests, dry runs).
    pub fn in_memory() -> Result<Outbox, OutboxError> {
        Ok(Outbox {
            backend: Backend::Sqlite(sqlite::SqliteOutbox::in_memory()?),
        })
    }

    /// The outbox on the cluster's shared PostgreSQL database (its `webhook_outbox` table,
    /// migrated to the latest schema), delivered from by gateway `node`, whose claims last
    /// `lease` ([`lease_for`] of the webhook config). Blocking: call it off the async runtime.
    pub fn open_postgres(
        pool: crate::storage::postgres::PgPool,
        node: &str,
        lease: Duration,
    ) -> Result<Outbox, OutboxError> {
        Ok(Outbox {
            backend: Backend::Postgres(postgres::PgOutbox::open(pool, node, lease)?),
        })
    }

    /// The SQLite database file (`None` in memory and on PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(s) => s.path(),
            Backend::Postgres(_) => None,
        }
    }

    /// The node this outbox claims events as (`None` on SQLite: nothing is shared).
    pub fn node(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(p.node()),
        }
    }

    /// How long a claim made by [`Outbox::due`] lasts (`None` on SQLite: no claims).
    pub fn lease(&self) -> Option<Duration> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(p.lease()),
        }
    }

    /// Stores an event, due at once, and returns its id (the idempotency key). Call
    /// [`DelivererHandle::notify`] afterwards (or use [`DelivererHandle::enqueue`]) so the
    /// deliverer wakes at once.
    pub fn enqueue(
        &self,
        call_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> Result<String, OutboxError> {
        on_backend!(self, s => s.enqueue(call_id, kind, data, now_ms))
    }

    /// Up to `limit` events to send now, oldest first: for each call, only its oldest pending
    /// event, and only when its next attempt is due (`next_attempt_ms <= now_ms`). On
    /// PostgreSQL, only events not leased by another live gateway, and the events returned
    /// are claimed for this node for [`Outbox::lease`] (this node may take them again at once).
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<PendingEvent>, OutboxError> {
        on_backend!(self, s => s.due(now_ms, limit))
    }

    /// Gives back the claims on events taken with [`Outbox::due`] that this gateway will not
    /// post now (it stops, or its lease runs short), so any gateway may take them at once.
    /// Nothing to do on SQLite.
    pub fn release(&self, ids: &[i64]) -> Result<(), OutboxError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.release(ids),
        }
    }

    /// When the next event becomes due (the earliest next attempt among the oldest pending
    /// event of each call; on PostgreSQL among those not leased by another gateway); `None`:
    /// nothing pending.
    pub fn next_due_ms(&self) -> Result<Option<u64>, OutboxError> {
        on_backend!(self, s => s.next_due_ms())
    }

    /// Records a 2xx answer to event `id` (on PostgreSQL, also ends its lease).
    pub fn mark_delivered(&self, id: i64, now_ms: u64) -> Result<(), OutboxError> {
        on_backend!(self, s => s.mark_delivered(id, now_ms))
    }

    /// Records a failed attempt at event `id`: schedules the next one with exponential backoff
    /// and jitter, or gives the event up after `config.max_attempts` attempts (when > 0). On
    /// PostgreSQL it also ends the lease; an event another gateway has claimed since (this
    /// one's lease ran out) is [`OutboxError::NotPending`] here.
    pub fn mark_failed(
        &self,
        id: i64,
        error: &str,
        now_ms: u64,
        config: &WebhookConfig,
    ) -> Result<Failure, OutboxError> {
        on_backend!(self, s => s.mark_failed(id, error, now_ms, config))
    }

    /// Events not yet delivered nor given up (the outbox depth, for metrics; on PostgreSQL,
    /// the whole cluster's).
    pub fn pending_count(&self) -> Result<u64, OutboxError> {
        on_backend!(self, s => s.pending_count())
    }

    /// Events given up (dead letters), also those not yet pruned.
    pub fn dead_count(&self) -> Result<u64, OutboxError> {
        on_backend!(self, s => s.dead_count())
    }

    /// Up to `limit` dead letters, the most recently given up first.
    pub fn dead_events(&self, limit: usize) -> Result<Vec<DeadEvent>, OutboxError> {
        on_backend!(self, s => s.dead_events(limit))
    }

    /// Requeues dead letter `event_id` (an admin fixed the receiver): pending again, due at
    /// `now_ms`, with a fresh set of `max_attempts` attempts; its id and body are unchanged and
    /// its last error is kept until the next attempt. It goes before its call's events still
    /// pending (it is older), after those already delivered.
    pub fn retry_dead(&self, event_id: &str, now_ms: u64) -> Result<(), OutboxError> {
        on_backend!(self, s => s.retry_dead(event_id, now_ms))
    }

    /// Every event of a call, in creation order, with its delivery state.
    pub fn events_for_call(&self, call_id: &str) -> Result<Vec<EventStatus>, OutboxError> {
        on_backend!(self, s => s.events_for_call(call_id))
    }

    /// Deletes delivered and dead events created before `before_ms`; returns how many. Pending
    /// events are never deleted.
    pub fn prune(&self, before_ms: u64) -> Result<usize, OutboxError> {
        on_backend!(self, s => s.prune(before_ms))
    }
}

/// How long a gateway's claim on an event lasts on PostgreSQL: [`LEASE_TIMEOUTS`] times the
/// webhook's `timeout_ms` (one POST's deadline), at least [`MIN_LEASE_MS`]. Long enough that
/// a claimed event is posted well within it (the deliverer posts one only while its lease has
/// a whole `timeout_ms` and a margin left), short enough that the events held by a gateway
/// that died are taken over by another within seconds (10 s with the default 2 s timeout).
pub fn lease_for(config: &WebhookConfig) -> Duration {
    Duration::from_millis(
        config
            .timeout_ms
            .saturating_mul(LEASE_TIMEOUTS)
            .max(MIN_LEASE_MS),
    )
}

/// The envelope of a new event: its fresh id and the exact JSON body sent on every attempt.
fn envelope(
    call_id: &str,
    kind: &str,
    data: serde_json::Value,
    now_ms: u64,
) -> Result<(String, String), OutboxError> {
    let event_id = new_event_id();
    let body = serde_json::to_string(&serde_json::json!({
        "schema": SCHEMA,
        "event_id": event_id,
        "kind": kind,
        "call_id": call_id,
        "created_at_ms": now_ms,
        "data": data,
    }))?;
    Ok((event_id, body))
}

/// A fresh random 128-bit event id, as 32 lowercase hex digits.
fn new_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn attempts_from_sql(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The delay after failed attempt number `attempt` (1-based): `initial_ms` doubled per earlier
/// failure, capped at `max_ms`, then shortened at random by up to [`JITTER`] of itself (`unit`
/// in `[0, 1)`), so it never exceeds the cap. At least 1 ms.
fn backoff_ms(attempt: u32, initial_ms: u64, max_ms: u64, unit: f64) -> u64 {
    let base = initial_ms
        .saturating_mul(2u64.saturating_pow(attempt.saturating_sub(1)))
        .min(max_ms);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // Rounded down, so the delay stays within [base * (1 - JITTER), base].
    let cut = (base as f64 * JITTER * unit) as u64;
    base.saturating_sub(cut).max(1)
}

type HmacSha256 = Hmac<Sha256>;

/// The signature of a request: lowercase hex HMAC-SHA256, keyed with `secret`, of
/// `"{timestamp_s}.{body}"`. Sent as `X-Voicebot-Signature: v1=<this>`.
pub fn sign(secret: &[u8], timestamp_s: u64, body: &str) -> String {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether `header_value` (the `X-Voicebot-Signature` header: `v1=<hex>`, or several
/// comma-separated, e.g. during a key rotation) holds a valid signature of `body` at
/// `timestamp_s`, and `timestamp_s` lies within `tolerance_s` of `now_s`. Compares in constant
/// time.
pub fn verify(
    secret: &[u8],
    timestamp_s: u64,
    body: &str,
    header_value: &str,
    now_s: u64,
    tolerance_s: u64,
) -> bool {
    if now_s.abs_diff(timestamp_s) > tolerance_s {
        return false;
    }
    header_value
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(unhex)
        .any(|signature| {
            let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
                return false;
            };
            mac.update(timestamp_s.to_string().as_bytes());
            mac.update(b".");
            mac.update(body.as_bytes());
            mac.verify_slice(&signature).is_ok()
        })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `scheme://host[:port]` of a URL, for logs: the user info, path and query of a webhook URL
/// often carry a token.
fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}")
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Sends one event: a blocking HTTP client with the config's deadline and signing key.
#[derive(Clone)]
pub struct Deliverer {
    agent: ureq::Agent,
    url: String,
    key: Option<Vec<u8>>,
    timeout_ms: u64,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverer")
            .field("url", &self.url)
            .field("signed", &self.key.is_some())
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A client for `config.url`; reads the signing key (config or environment) once.
    pub fn new(config: &WebhookConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
            // Every status is an answer to judge here, and a redirect is a failure: a POST
            // must not silently turn into a GET elsewhere.
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("voicebot-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Deliverer {
            agent,
            url: config.url.clone(),
            key: config.signing_key(),
            timeout_ms: config.timeout_ms,
        }
    }

    /// Whether requests carry a signature.
    pub fn signed(&self) -> bool {
        self.key.is_some()
    }

    /// POSTs `event` once, stamped and signed at `now_s` (Unix seconds); `Ok(status)` on a 2xx
    /// answer. Blocks for at most `timeout_ms`.
    pub fn post(&self, event: &PendingEvent, now_s: u64) -> Result<u16, DeliveryError> {
        let started = Instant::now();
        let timestamp = now_s.to_string();
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-Voicebot-Event", &event.kind)
            .header("X-Voicebot-Event-Id", &event.event_id)
            .header("Idempotency-Key", &event.event_id)
            .header("X-Voicebot-Timestamp", &timestamp);
        if let Some(key) = &self.key {
            let signature = format!("v1={}", sign(key, now_s, &event.body));
            request = request.header("X-Voicebot-Signature", &signature);
        }
        let timed_out = |e: &ureq::Error| {
            matches!(e, ureq::Error::Timeout(_))
                || matches!(e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
                || started.elapsed() >= Duration::from_millis(self.timeout_ms)
        };
        let response = request.send(event.body.as_bytes()).map_err(|e| {
            if timed_out(&e) {
                DeliveryError::Timeout(self.timeout_ms)
            } else {
                DeliveryError::Transport(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        // Read (a bounded part of) the answer: it frees the connection for reuse and gives a
        // failure its reason. A 2xx counts even if its body then fails to arrive.
        let body = response
            .into_body()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(DeliveryError::Status {
                status,
                body: body.trim().chars().take(200).collect(),
            })
        }
    }
}

/// Who waits for which event to be delivered (see [`DelivererHandle::enqueue_watched`]).
#[derive(Debug, Default)]
struct DeliveryWaiters(Mutex<std::collections::HashMap<String, oneshot::Sender<()>>>);

impl DeliveryWaiters {
    fn lock(&self) -> MutexGuard<'_, std::collections::HashMap<String, oneshot::Sender<()>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Event `event_id` was delivered: its waiter (if any) is told.
    fn delivered(&self, event_id: &str) {
        if let Some(tx) = self.lock().remove(event_id) {
            let _ = tx.send(());
        }
    }

    /// Event `event_id` was given up: its waiter (if any) learns at once that no confirmation
    /// will come (its receiver sees the sender dropped).
    fn gave_up(&self, event_id: &str) {
        drop(self.lock().remove(event_id));
    }
}

/// The running deliverer: wake it after an enqueue, stop it at shutdown.
pub struct DelivererHandle {
    outbox: Arc<Outbox>,
    waiters: Arc<DeliveryWaiters>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for DelivererHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelivererHandle")
            .field("outbox", &self.outbox)
            .field("stopping", &self.stop.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl DelivererHandle {
    /// Wakes the deliverer now (after an [`Outbox::enqueue`]).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Enqueues an event stamped with the wall clock and wakes the deliverer; returns the
    /// event id. A short blocking SQLite write (no network).
    pub fn enqueue(
        &self,
        call_id: &str,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<String, OutboxError> {
        let event_id = self.outbox.enqueue(call_id, kind, data, now_unix_ms())?;
        self.notify();
        Ok(event_id)
    }

    /// Like [`DelivererHandle::enqueue`], and the returned receiver completes once the
    /// webhook confirmed the event (it is dropped unanswered if the event is given up or the
    /// deliverer stops). A short blocking SQLite write: call it off the async runtime.
    pub fn enqueue_watched(
        &self,
        call_id: &str,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<(String, oneshot::Receiver<()>), OutboxError> {
        let (tx, rx) = oneshot::channel();
        // Held across the insert, so the delivery cannot pass between the insert and the
        // registration unseen (the deliverer reports a delivery under the same lock).
        let mut waiters = self.waiters.lock();
        waiters.retain(|_, waiting| !waiting.is_closed());
        let event_id = self.outbox.enqueue(call_id, kind, data, now_unix_ms())?;
        waiters.insert(event_id.clone(), tx);
        drop(waiters);
        self.notify();
        Ok((event_id, rx))
    }

    /// The outbox it delivers from.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Stops the deliverer: the POST in flight (if any) finishes and is recorded, the rest
    /// stays in the outbox for the next start. Returns once the task has ended; calling it
    /// again returns at once.
    pub async fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "webhook deliverer task failed");
            }
        }
    }
}

/// Starts the delivery loop on the current tokio runtime: it sends due events one by one (on
/// the blocking pool), records each answer, and sleeps until the next event is due (at most
/// a second) or until [`DelivererHandle::notify`]. With webhooks off (no URL) it sends nothing
/// and the events stay in the outbox.
/// How often delivered events past their retention are deleted.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

pub fn spawn_deliverer(outbox: Arc<Outbox>, config: WebhookConfig) -> DelivererHandle {
    let wake = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let waiters = Arc::new(DeliveryWaiters::default());
    let (owned, waiters_for_task, wake_for_task, stop_for_task) = (
        Arc::clone(&outbox),
        Arc::clone(&waiters),
        Arc::clone(&wake),
        Arc::clone(&stop),
    );
    let task = tokio::spawn(async move {
        deliver_loop(
            &owned,
            config,
            waiters_for_task,
            wake_for_task,
            stop_for_task,
        )
        .await;
        // Dropping a PostgreSQL outbox may close connections, which blocks: not on the
        // runtime's own threads.
        let _ = tokio::task::spawn_blocking(move || drop(owned)).await;
    });
    DelivererHandle {
        outbox,
        waiters,
        wake,
        stop,
        task: Mutex::new(Some(task)),
    }
}

async fn deliver_loop(
    outbox: &Arc<Outbox>,
    config: WebhookConfig,
    waiters: Arc<DeliveryWaiters>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
) {
    if !config.enabled() {
        tracing::info!("webhooks off (no url): events stay in the outbox");
        while !stop.load(Ordering::Acquire) {
            wake.notified().await;
        }
        return;
    }
    let deliverer = Deliverer::new(&config);
    if !deliverer.signed() {
        tracing::warn!(
            secret_env = %config.secret_env,
            "webhook requests are unsigned: no secret configured"
        );
    }
    tracing::info!(
        target_origin = %origin(&config.url),
        timeout_ms = config.timeout_ms,
        max_attempts = config.max_attempts,
        "webhook deliverer started"
    );
    if config.max_attempts == 0 {
        tracing::warn!(
            "webhook max_attempts = 0: an event the receiver never takes is retried for ever \
             and holds back its call's later events"
        );
    }
    let config = Arc::new(config);
    let mut next_prune = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        if std::time::Instant::now() >= next_prune {
            next_prune += PRUNE_INTERVAL;
            let keep_ms = u64::from(config.retention_days) * 86_400_000;
            let before = now_unix_ms().saturating_sub(keep_ms);
            let outbox = Arc::clone(outbox);
            match tokio::task::spawn_blocking(move || outbox.prune(before)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::info!(events = n, "old delivered and dead webhook events pruned")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the webhook outbox"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the webhook outbox"),
            }
        }
        let round = {
            let (outbox, deliverer, config, stop, waiters) = (
                Arc::clone(outbox),
                deliverer.clone(),
                Arc::clone(&config),
                Arc::clone(&stop),
                Arc::clone(&waiters),
            );
            tokio::task::spawn_blocking(move || {
                deliver_round(&outbox, &deliverer, &config, &stop, &waiters)
            })
            .await
        };
        let wait_ms = match round {
            Ok(Ok(wait_ms)) => wait_ms,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "webhook outbox unavailable; retrying");
                MAX_IDLE_MS
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook delivery round failed; retrying");
                MAX_IDLE_MS
            }
        };
        if stop.load(Ordering::Acquire) {
            break;
        }
        if wait_ms > 0 {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        }
    }
    tracing::info!("webhook deliverer stopped");
}

/// Sends the events due now, one at a time (stopping early when asked), and returns how long
/// to wait before the next round.
fn deliver_round(
    outbox: &Outbox,
    deliverer: &Deliverer,
    config: &WebhookConfig,
    stop: &AtomicBool,
    waiters: &DeliveryWaiters,
) -> Result<u64, OutboxError> {
    // On PostgreSQL the events are claimed for `outbox.lease()` from (at the latest) now; an
    // event is posted only while the claim still covers its whole POST and the bookkeeping.
    let claimed_at = Instant::now();
    let posting_time = Duration::from_millis(config.timeout_ms.saturating_add(LEASE_MARGIN_MS));
    let events = outbox.due(now_unix_ms(), BATCH)?;
    for (index, event) in events.iter().enumerate() {
        let lease_short = outbox
            .lease()
            .is_some_and(|lease| index > 0 && claimed_at.elapsed() + posting_time > lease);
        if stop.load(Ordering::Acquire) || lease_short {
            // Give the rest back: any gateway (this one in its next round) takes them again.
            let rest: Vec<i64> = events[index..].iter().map(|e| e.id).collect();
            outbox.release(&rest)?;
            return Ok(0);
        }
        let started = Instant::now();
        let result = deliverer.post(event, now_unix_ms() / 1000);
        let elapsed_ms = started.elapsed().as_millis();
        match result {
            Ok(status) => {
                match outbox.mark_delivered(event.id, now_unix_ms()) {
                    Ok(()) => {}
                    // Another gateway took it over (this one's lease ran out) and recorded
                    // it first: delivered all the same.
                    Err(OutboxError::NotPending(_)) if outbox.lease().is_some() => {
                        tracing::warn!(event_id = %event.event_id, "webhook event delivered twice: another gateway took it over after this one's lease ran out")
                    }
                    Err(e) => return Err(e),
                }
                waiters.delivered(&event.event_id);
                tracing::info!(
                    event_id = %event.event_id,
                    call_id = %event.call_id,
                    kind = %event.kind,
                    attempt = event.attempts.saturating_add(1),
                    status,
                    elapsed_ms,
                    "webhook delivered"
                );
            }
            Err(e) => {
                let reason = e.to_string();
                match outbox.mark_failed(event.id, &reason, now_unix_ms(), config) {
                    Ok(Failure::Retry {
                        attempt,
                        retry_in_ms,
                    }) => tracing::warn!(
                        event_id = %event.event_id,
                        call_id = %event.call_id,
                        kind = %event.kind,
                        attempt,
                        retry_in_ms,
                        elapsed_ms,
                        reason = %reason,
                        "webhook attempt failed"
                    ),
                    // Logged (once) as an error by mark_failed.
                    Ok(Failure::Dead { .. }) => waiters.gave_up(&event.event_id),
                    // Another gateway holds it now (this one's lease ran out): its attempt
                    // counts, not this one.
                    Err(OutboxError::NotPending(_)) if outbox.lease().is_some() => {
                        tracing::warn!(event_id = %event.event_id, reason = %reason, "webhook attempt failed after another gateway took the event over")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let now = now_unix_ms();
    Ok(match outbox.next_due_ms()? {
        Some(due) => due.saturating_sub(now).min(MAX_IDLE_MS),
        None => MAX_IDLE_MS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};

    const SECRET: &str = "s3cret-test-key";

    // ---- both backends ---------------------------------------------------------------------

    /// Where one run of a test keeps its outbox: a SQLite file, or a fresh database on the
    /// throwaway PostgreSQL server. Every store test runs on each of [`stores`].
    struct Store {
        name: &'static str,
        dir: tempfile::TempDir,
        url: Option<String>,
    }

    /// The SQLite store, and the PostgreSQL one when a throwaway server is available.
    fn stores() -> Vec<Store> {
        let sqlite = Store {
            name: "SQLite",
            dir: tempfile::tempdir().unwrap(),
            url: None,
        };
        let postgres = crate::storage::throwaway::fresh_database().map(|url| Store {
            name: "PostgreSQL",
            dir: tempfile::tempdir().unwrap(),
            url: Some(url),
        });
        std::iter::once(sqlite).chain(postgres).collect()
    }

    /// Says on which backend a test failed (printed while unwinding from a failed assertion).
    struct Naming(&'static str);

    impl Drop for Naming {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("*** failed on the {} outbox", self.0);
            }
        }
    }

    impl Store {
        /// The outbox as gateway `node-a` sees it (a 10 s lease on PostgreSQL).
        fn open(&self) -> Outbox {
            self.open_as("node-a", Duration::from_secs(10))
        }

        /// The outbox as gateway `node` sees it, claiming for `lease` (PostgreSQL; SQLite has
        /// no claims and a file per store).
        fn open_as(&self, node: &str, lease: Duration) -> Outbox {
            match &self.url {
                None => Outbox::open(&self.dir.path().join("outbox.sqlite3")).unwrap(),
                Some(url) => {
                    let pool = crate::storage::postgres::connect(url, 4).unwrap();
                    Outbox::open_postgres(pool, node, lease).unwrap()
                }
            }
        }

        fn naming(&self) -> Naming {
            Naming(self.name)
        }
    }

    /// Runs a blocking store call from an async test (the PostgreSQL client must not run on
    /// the async runtime itself; needs the multi-thread runtime).
    fn sync<T>(f: impl FnOnce() -> T) -> T {
        tokio::task::block_in_place(f)
    }

    // ---- signing ---------------------------------------------------------------------------

    #[test]
    fn sign_matches_an_independent_vector() {
        // python3: hmac.new(b"key", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            sign(b"key", 1_700_000_000, r#"{"a":1}"#),
            "a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
        // python3: hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            sign(b"whsec_test", 1_700_000_000, "{}"),
            "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn verify_accepts_the_signature_and_rejects_tampering_and_staleness() {
        let body = r#"{"a":1}"#;
        let header = format!("v1={}", sign(b"key", 1_700_000_000, body));
        assert!(verify(
            b"key",
            1_700_000_000,
            body,
            &header,
            1_700_000_010,
            300
        ));
        // Several signatures (key rotation): any valid one will do.
        let rotated = format!("v1={},  {header}", "00".repeat(32));
        assert!(verify(
            b"key",
            1_700_000_000,
            body,
            &rotated,
            1_700_000_000,
            300
        ));
        // Tampered body, other key, other timestamp.
        assert!(!verify(
            b"key",
            1_700_000_000,
            r#"{"a":2}"#,
            &header,
            1_700_000_000,
            300
        ));
        assert!(!verify(
            b"other",
            1_700_000_000,
            body,
            &header,
            1_700_000_000,
            300
        ));
        assert!(!verify(
            b"key",
            1_700_000_001,
            body,
            &header,
            1_700_000_001,
            300
        ));
        // Stale, or from the future, beyond the tolerance.
        assert!(!verify(
            b"key",
            1_700_000_000,
            body,
            &header,
            1_700_000_301,
            300
        ));
        assert!(!verify(
            b"key",
            1_700_000_000,
            body,
            &header,
            1_699_999_699,
            300
        ));
        assert!(verify(
            b"key",
            1_700_000_000,
            body,
            &header,
            1_700_000_300,
            300
        ));
        // Malformed headers.
        for bad in [
            "",
            "v1=",
            "v1=zz",
            "v2=00",
            &header[3..],
            &header[..header.len() - 1],
        ] {
            assert!(
                !verify(b"key", 1_700_000_000, body, bad, 1_700_000_000, 300),
                "{bad}"
            );
        }
    }

    // ---- backoff ---------------------------------------------------------------------------

    #[test]
    fn backoff_doubles_is_capped_and_jitter_stays_in_bounds() {
        let plain: Vec<u64> = (1..=10).map(|k| backoff_ms(k, 500, 60_000, 0.0)).collect();
        assert_eq!(
            plain,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        // No overflow far out.
        assert_eq!(backoff_ms(200, 500, 60_000, 0.0), 60_000);
        assert_eq!(backoff_ms(u32::MAX, u64::MAX, u64::MAX, 0.0), u64::MAX);
        for k in 1..=20 {
            let base = plain.get(k as usize - 1).copied().unwrap_or(60_000);
            for _ in 0..200 {
                let delay = backoff_ms(k, 500, 60_000, rand::random::<f64>());
                assert!(delay <= base, "attempt {k}: {delay} > {base}");
                assert!(
                    delay as f64 >= base as f64 * (1.0 - JITTER),
                    "attempt {k}: {delay}"
                );
            }
        }
        assert_eq!(backoff_ms(1, 500, 60_000, 0.999_999), 401);
        assert_eq!(backoff_ms(1, 500, 60_000, f64::NAN), 500);
        assert_eq!(backoff_ms(1, 0, 0, 0.5), 1);
    }

    #[test]
    fn mark_failed_backs_off_and_gives_up_after_max_attempts() {
        for store in stores() {
            let _named = store.naming();
            let outbox = store.open();
            let config = WebhookConfig {
                initial_backoff_ms: 100,
                max_backoff_ms: 1_000,
                max_attempts: 3,
                ..WebhookConfig::default()
            };
            outbox
                .enqueue("c", "escalated", serde_json::json!({}), 0)
                .unwrap();
            let id = outbox.due(0, 10).unwrap()[0].id;
            let now = 10_000;
            let Failure::Retry {
                attempt: 1,
                retry_in_ms,
            } = outbox.mark_failed(id, "boom", now, &config).unwrap()
            else {
                panic!("expected a retry");
            };
            assert!((80..=100).contains(&retry_in_ms));
            assert!(outbox.due(now + retry_in_ms - 1, 10).unwrap().is_empty());
            assert_eq!(outbox.due(now + retry_in_ms, 10).unwrap().len(), 1);
            let Failure::Retry {
                attempt: 2,
                retry_in_ms,
            } = outbox.mark_failed(id, "boom", now, &config).unwrap()
            else {
                panic!("expected a retry");
            };
            assert!((160..=200).contains(&retry_in_ms));
            assert_eq!(
                outbox.mark_failed(id, "final", now, &config).unwrap(),
                Failure::Dead { attempt: 3 }
            );
            assert_eq!(outbox.pending_count().unwrap(), 0);
            assert!(outbox.due(u64::MAX, 10).unwrap().is_empty());
            let status = &outbox.events_for_call("c").unwrap()[0];
            assert_eq!(status.state, EventState::Dead);
            assert_eq!(status.attempts, 3);
            assert_eq!(status.last_error.as_deref(), Some("final"));
            assert!(matches!(
                outbox.mark_failed(id, "again", now, &config),
                Err(OutboxError::NotPending(_))
            ));
            assert!(matches!(
                outbox.mark_delivered(id, now),
                Err(OutboxError::NotPending(_))
            ));
        }
    }

    // ---- outbox ----------------------------------------------------------------------------

    #[test]
    fn due_keeps_each_calls_events_in_order() {
        for store in stores() {
            let _named = store.naming();
            let outbox = store.open();
            let a1 = outbox
                .enqueue("A", "escalated", serde_json::json!({}), 1)
                .unwrap();
            let b1 = outbox
                .enqueue("B", "escalated", serde_json::json!({}), 2)
                .unwrap();
            let a2 = outbox
                .enqueue("A", "agent_answered", serde_json::json!({}), 3)
                .unwrap();
            let b2 = outbox
                .enqueue("B", "call_ended", serde_json::json!({}), 4)
                .unwrap();
            let c1 = outbox
                .enqueue("C", "escalated", serde_json::json!({}), 5)
                .unwrap();
            let ids = |events: Vec<PendingEvent>| -> Vec<String> {
                events.into_iter().map(|e| e.event_id).collect()
            };
            assert_eq!(outbox.pending_count().unwrap(), 5);
            // Only the head of each call, oldest first; nothing is due before it was created.
            assert_eq!(
                ids(outbox.due(100, 10).unwrap()),
                [a1.as_str(), b1.as_str(), c1.as_str()]
            );
            assert_eq!(ids(outbox.due(100, 2).unwrap()), [a1.as_str(), b1.as_str()]);
            assert_eq!(ids(outbox.due(2, 10).unwrap()), [a1.as_str(), b1.as_str()]);
            assert!(outbox.due(0, 10).unwrap().is_empty());
            assert_eq!(outbox.next_due_ms().unwrap(), Some(1));

            let due = outbox.due(100, 10).unwrap();
            outbox.mark_delivered(due[0].id, 100).unwrap();
            assert_eq!(
                ids(outbox.due(100, 10).unwrap()),
                [b1.as_str(), a2.as_str(), c1.as_str()]
            );

            // B's head backs off: B2, although due, waits behind it.
            let config = WebhookConfig {
                initial_backoff_ms: 1_000,
                ..WebhookConfig::default()
            };
            outbox.mark_failed(due[1].id, "down", 100, &config).unwrap();
            assert_eq!(
                ids(outbox.due(100, 10).unwrap()),
                [a2.as_str(), c1.as_str()]
            );
            let b_retry = outbox.events_for_call("B").unwrap()[0].next_attempt_ms;
            assert_eq!(
                ids(outbox.due(b_retry, 10).unwrap()),
                [b1.as_str(), a2.as_str(), c1.as_str()]
            );

            // A dead head no longer blocks its call.
            let give_up = WebhookConfig {
                max_attempts: 2,
                ..config
            };
            assert_eq!(
                outbox
                    .mark_failed(due[1].id, "down", 200, &give_up)
                    .unwrap(),
                Failure::Dead { attempt: 2 }
            );
            assert_eq!(
                ids(outbox.due(200, 10).unwrap()),
                [a2.as_str(), b2.as_str(), c1.as_str()]
            );
            assert_eq!(outbox.pending_count().unwrap(), 3);

            let history = outbox.events_for_call("A").unwrap();
            assert_eq!(history.len(), 2);
            assert_eq!(history[0].event_id, a1);
            assert_eq!(history[0].state, EventState::Delivered);
            assert_eq!(history[0].delivered_ms, Some(100));
            assert_eq!(history[0].attempts, 1);
            assert_eq!(history[1].state, EventState::Pending);
            assert!(outbox.events_for_call("nobody").unwrap().is_empty());

            // Pruning leaves pending events alone.
            assert_eq!(outbox.prune(u64::MAX).unwrap(), 2);
            assert_eq!(outbox.pending_count().unwrap(), 3);
        }
    }

    #[test]
    fn enqueue_stores_the_exact_envelope_with_unique_ids() {
        for store in stores() {
            let _named = store.naming();
            let outbox = store.open();
            let data = serde_json::json!({"queue": "billing", "summary": "caller wants a refund"});
            let id = outbox
                .enqueue("call-1", "escalated", data.clone(), 1_234)
                .unwrap();
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            let event = &outbox.due(2_000, 1).unwrap()[0];
            let envelope: serde_json::Value = serde_json::from_str(&event.body).unwrap();
            assert_eq!(
                envelope,
                serde_json::json!({
                    "schema": SCHEMA,
                    "event_id": id,
                    "kind": "escalated",
                    "call_id": "call-1",
                    "created_at_ms": 1_234,
                    "data": data,
                })
            );
            assert_eq!((event.created_ms, event.attempts), (1_234, 0));
            let more: std::collections::HashSet<String> = (0..200)
                .map(|_| {
                    outbox
                        .enqueue("c", "k", serde_json::Value::Null, 0)
                        .unwrap()
                })
                .collect();
            assert_eq!(more.len(), 200);
        }
    }

    #[test]
    fn open_migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/outbox.sqlite3");
        let first = Outbox::open(&path).unwrap();
        first.enqueue("c", "k", serde_json::Value::Null, 0).unwrap();
        drop(first);
        let again = Outbox::open(&path).unwrap();
        assert_eq!(again.pending_count().unwrap(), 1);
        let Backend::Sqlite(sqlite) = &again.backend else {
            panic!("a file outbox is SQLite");
        };
        let (version, mode): (i64, String) = {
            let conn = sqlite.conn();
            (
                conn.query_row("PRAGMA user_version", [], |r| r.get(0))
                    .unwrap(),
                conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .unwrap(),
            )
        };
        assert_eq!(version, sqlite::MIGRATIONS.len() as i64);
        assert_eq!(mode, "wal");
        sqlite
            .conn()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(again);
        assert!(matches!(
            Outbox::open(&path),
            Err(OutboxError::SchemaTooNew { found: 99, .. })
        ));
    }

    // ---- config ----------------------------------------------------------------------------

    #[test]
    fn config_defaults_validation_and_secret_hygiene() {
        let off = WebhookConfig::default();
        assert!(!off.enabled());
        assert_eq!(off.problem(), None);
        let on = WebhookConfig {
            url: "https://crm.example/hooks/voicebot".into(),
            secret: "hunter2".into(),
            ..WebhookConfig::default()
        };
        assert_eq!(on.problem(), None);
        let debug = format!("{on:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"));
        let deliverer = Deliverer::new(&on);
        assert!(deliverer.signed());
        let unsigned = WebhookConfig {
            secret: String::new(),
            secret_env: "VOICEBOT_TEST_OUTBOX_SURELY_UNSET".into(),
            ..on.clone()
        };
        assert!(!Deliverer::new(&unsigned).signed());
        assert!(!format!("{deliverer:?}").contains("hunter2"));

        let field = |c: WebhookConfig| c.problem().map(|(f, _)| f);
        let with = |f: fn(&mut WebhookConfig)| {
            let mut c = on.clone();
            f(&mut c);
            c
        };
        assert_eq!(field(with(|c| c.url = "ftp://x".into())), Some("url"));
        assert_eq!(field(with(|c| c.url = "http://".into())), Some("url"));
        assert_eq!(field(with(|c| c.timeout_ms = 0)), Some("timeout_ms"));
        assert_eq!(
            field(with(|c| c.initial_backoff_ms = 0)),
            Some("initial_backoff_ms")
        );
        assert_eq!(
            field(with(|c| c.max_backoff_ms = 100)),
            Some("max_backoff_ms")
        );
        assert_eq!(
            field(with(|c| c.database = PathBuf::new())),
            Some("database")
        );

        let parsed: WebhookConfig =
            toml::from_str("url = \"http://127.0.0.1:9/x\"\nmax_attempts = 5").unwrap();
        assert_eq!(parsed.max_attempts, 5);
        assert_eq!(parsed.timeout_ms, 2_000);
        assert!(toml::from_str::<WebhookConfig>("urll = \"x\"").is_err());
    }

    #[test]
    fn logged_origin_hides_credentials_paths_and_queries() {
        assert_eq!(
            origin("https://user:pw@crm.example:8443/hooks/T0/XYZ?token=abc"),
            "https://crm.example:8443"
        );
        assert_eq!(origin("http://127.0.0.1:9?t=1"), "http://127.0.0.1:9");
        assert_eq!(origin("no url"), "");
    }

    // ---- a loopback receiver ---------------------------------------------------------------

    #[derive(Debug, Clone)]
    struct Received {
        headers: HashMap<String, String>,
        body: String,
    }

    impl Received {
        fn header(&self, name: &str) -> &str {
            self.headers.get(name).map(String::as_str).unwrap_or("")
        }

        fn signature_ok(&self) -> bool {
            let Ok(timestamp) = self.header("x-voicebot-timestamp").parse::<u64>() else {
                return false;
            };
            verify(
                SECRET.as_bytes(),
                timestamp,
                &self.body,
                self.header("x-voicebot-signature"),
                now_unix_ms() / 1000,
                300,
            )
        }
    }

    enum Reply {
        Status(u16),
        Hang,
    }

    type Log = Arc<Mutex<Vec<Received>>>;

    /// A tiny HTTP server on loopback: records every request, answers as `reply` says (given
    /// the request's index). Returns its URL and the log.
    fn receiver(reply: impl Fn(usize, &Received) -> Reply + Send + 'static) -> (String, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let log: Log = Arc::default();
        let seen = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut hung: Vec<TcpStream> = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                let index = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(request.clone());
                    seen.len() - 1
                };
                match reply(index, &request) {
                    Reply::Status(code) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        );
                    }
                    Reply::Hang => hung.push(stream),
                }
            }
        });
        (url, log)
    }

    fn read_request(stream: &TcpStream) -> Option<Received> {
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if !line.starts_with("POST /hook ") {
            return None;
        }
        let mut headers = HashMap::new();
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':')?;
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        let length: usize = headers.get("content-length")?.parse().ok()?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some(Received {
            headers,
            body: String::from_utf8(body).ok()?,
        })
    }

    /// A loopback port with nothing listening.
    fn dead_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn test_config(url: String) -> WebhookConfig {
        WebhookConfig {
            url,
            secret: SECRET.into(),
            timeout_ms: 1_000,
            initial_backoff_ms: 20,
            max_backoff_ms: 80,
            ..WebhookConfig::default()
        }
    }

    async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !sync(&mut done) {
            assert!(started.elapsed() < limit, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ---- delivery --------------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_survive_a_restart_and_arrive_once_in_order_signed() {
        let kinds = ["escalated", "agent_answered", "call_ended"];
        for store in sync(stores) {
            let _named = store.naming();
            // First life: the target is down.
            let ids: Vec<String> = {
                let outbox = Arc::new(sync(|| store.open()));
                let down = test_config(format!("http://127.0.0.1:{}/hook", dead_port()));
                let handle = spawn_deliverer(Arc::clone(&outbox), down);
                let ids: Vec<String> = kinds
                    .iter()
                    .map(|kind| {
                        sync(|| handle.enqueue("call-7", kind, serde_json::json!({ "kind": kind })))
                            .unwrap()
                    })
                    .collect();
                wait_until("two failed attempts", Duration::from_secs(5), || {
                    outbox.events_for_call("call-7").unwrap()[0].attempts >= 2
                })
                .await;
                handle.shutdown().await;
                let history = sync(|| outbox.events_for_call("call-7")).unwrap();
                assert!(history.iter().all(|e| e.state == EventState::Pending));
                assert!(history[0].last_error.is_some());
                // The later events were never tried: they wait behind the first.
                assert_eq!((history[1].attempts, history[2].attempts), (0, 0));
                assert_eq!(sync(|| outbox.pending_count()).unwrap(), 3);
                sync(move || drop((handle, outbox)));
                ids
            };

            // Second life: a new Outbox on the same store, the target is up.
            let (url, log) = receiver(|_, _| Reply::Status(200));
            let outbox = Arc::new(sync(|| store.open()));
            assert_eq!(sync(|| outbox.pending_count()).unwrap(), 3);
            let started = Instant::now();
            let handle = spawn_deliverer(Arc::clone(&outbox), test_config(url));
            wait_until("delivery after restart", Duration::from_secs(5), || {
                outbox.pending_count().unwrap() == 0
            })
            .await;
            let took = started.elapsed();
            handle.shutdown().await;

            let received = log.lock().unwrap().clone();
            let got: Vec<&str> = received
                .iter()
                .map(|r| r.header("idempotency-key"))
                .collect();
            assert_eq!(got, ids, "each event once, in order, same ids");
            for (request, kind) in received.iter().zip(kinds) {
                assert!(request.signature_ok(), "{request:?}");
                assert!(request.header("x-voicebot-signature").starts_with("v1="));
                assert_eq!(request.header("x-voicebot-event"), kind);
                assert_eq!(
                    request.header("x-voicebot-event-id"),
                    request.header("idempotency-key")
                );
                assert_eq!(request.header("content-type"), "application/json");
                let envelope: serde_json::Value = serde_json::from_str(&request.body).unwrap();
                assert_eq!(envelope["kind"], kind);
                assert_eq!(envelope["event_id"], request.header("idempotency-key"));
                assert_eq!(envelope["schema"], SCHEMA);
            }
            let history = sync(|| outbox.events_for_call("call-7")).unwrap();
            assert!(history.iter().all(|e| e.state == EventState::Delivered));
            assert!(history[0].attempts >= 3);
            assert_eq!(history[2].attempts, 1);
            sync(move || drop((handle, outbox)));
            eprintln!(
                "{}: restart: 3 events delivered {took:?} after the second start",
                store.name
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_attempt_is_retried_with_identical_bytes_and_key() {
        for store in sync(stores) {
            let _named = store.naming();
            let (url, log) = receiver(|i, _| Reply::Status(if i == 0 { 500 } else { 200 }));
            let outbox = Arc::new(sync(|| store.open()));
            let handle = spawn_deliverer(Arc::clone(&outbox), test_config(url));
            let id = sync(|| {
                handle.enqueue("call-9", "escalated", serde_json::json!({"queue": "sales"}))
            })
            .unwrap();
            wait_until("the retry", Duration::from_secs(5), || {
                outbox.pending_count().unwrap() == 0
            })
            .await;
            handle.shutdown().await;

            let received = log.lock().unwrap().clone();
            assert_eq!(received.len(), 2);
            for request in &received {
                assert_eq!(request.header("idempotency-key"), id);
                assert!(request.signature_ok());
            }
            assert_eq!(received[0].body, received[1].body);
            let status = &sync(|| outbox.events_for_call("call-9")).unwrap()[0];
            assert_eq!(status.state, EventState::Delivered);
            assert_eq!(status.attempts, 2);
            assert_eq!(status.last_error.as_deref(), Some("HTTP status 500: ok"));
            assert_eq!(status.claimed_by, outbox.node().map(str::to_string));
            sync(move || drop((handle, outbox)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_receiver_times_out_and_other_calls_still_get_through() {
        for store in sync(stores) {
            let _named = store.naming();
            let (url, log) = receiver(|_, request| {
                if request.body.contains(r#""call_id":"stuck""#) {
                    Reply::Hang
                } else {
                    Reply::Status(204)
                }
            });
            let config = WebhookConfig {
                timeout_ms: 300,
                ..test_config(url)
            };

            // One POST, by hand: it gives up within the deadline.
            let outbox = Arc::new(sync(|| store.open()));
            sync(|| outbox.enqueue("stuck", "escalated", serde_json::Value::Null, 0)).unwrap();
            let event = sync(|| outbox.due(0, 1)).unwrap().remove(0);
            let started = Instant::now();
            let result = Deliverer::new(&config).post(&event, now_unix_ms() / 1000);
            let took = started.elapsed();
            assert_eq!(result, Err(DeliveryError::Timeout(300)));
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_millis(1_000),
                "{took:?}"
            );

            // The deliverer: the stuck call's event times out, the other call's is delivered.
            let started = Instant::now();
            let handle = spawn_deliverer(Arc::clone(&outbox), config);
            sync(|| handle.enqueue("fine", "escalated", serde_json::Value::Null)).unwrap();
            wait_until("the other call's event", Duration::from_secs(5), || {
                outbox.events_for_call("fine").unwrap()[0].state == EventState::Delivered
            })
            .await;
            let delivered_after = started.elapsed();
            handle.shutdown().await;
            assert!(
                delivered_after < Duration::from_millis(1_500),
                "{delivered_after:?}"
            );
            let stuck = &sync(|| outbox.events_for_call("stuck")).unwrap()[0];
            assert_eq!(stuck.state, EventState::Pending);
            assert!(stuck.attempts >= 1);
            assert_eq!(stuck.last_error.as_deref(), Some("no answer within 300 ms"));
            assert!(log.lock().unwrap().iter().any(|r| r.body.contains("fine")));
            sync(move || drop((handle, outbox)));
            eprintln!(
                "{}: hang: timeout after {took:?}, other call delivered after {delivered_after:?}",
                store.name
            );
        }
    }

    #[test]
    fn dead_letters_are_listed_skipped_and_requeued_once_fixed() {
        for store in stores() {
            let _named = store.naming();
            let outbox = store.open();
            let config = WebhookConfig {
                initial_backoff_ms: 100,
                max_attempts: 2,
                ..WebhookConfig::default()
            };
            assert_eq!(WebhookConfig::default().max_attempts, DEFAULT_MAX_ATTEMPTS);
            let first = outbox
                .enqueue("A", "escalated", serde_json::json!({}), 1)
                .unwrap();
            let second = outbox
                .enqueue("A", "call_ended", serde_json::json!({}), 2)
                .unwrap();
            let head = outbox.due(10, 10).unwrap().remove(0);
            assert_eq!(head.event_id, first);
            outbox.mark_failed(head.id, "slow", 10, &config).unwrap();
            assert_eq!(
                outbox.mark_failed(head.id, "slower", 500, &config).unwrap(),
                Failure::Dead { attempt: 2 }
            );
            assert_eq!(outbox.dead_count().unwrap(), 1);
            let dead = outbox.dead_events(10).unwrap();
            assert_eq!(
                dead,
                [DeadEvent {
                    event_id: first.clone(),
                    call_id: "A".into(),
                    kind: "escalated".into(),
                    created_ms: 1,
                    dead_ms: 500,
                    attempts: 2,
                    last_error: Some("slower".into()),
                }]
            );
            assert!(outbox.dead_events(0).unwrap().is_empty());
            // The dead head is skipped: the call's next event is due.
            let next = outbox.due(500, 10).unwrap();
            assert_eq!(next.len(), 1);
            assert_eq!(next[0].event_id, second);

            // Only a dead event can be requeued.
            assert!(matches!(
                outbox.retry_dead(&second, 600),
                Err(OutboxError::NotDead {
                    state: EventState::Pending,
                    ..
                })
            ));
            assert!(matches!(
                outbox.retry_dead("nope", 600),
                Err(OutboxError::UnknownEvent(_))
            ));
            // Requeued: pending with a fresh set of attempts, before the call's pending events,
            // same id and body.
            outbox.retry_dead(&first, 600).unwrap();
            assert_eq!(outbox.dead_count().unwrap(), 0);
            assert!(outbox.due(599, 10).unwrap().is_empty());
            let again = outbox.due(600, 10).unwrap().remove(0);
            assert_eq!((again.id, again.attempts), (head.id, 0));
            assert_eq!(again.body, head.body);
            assert_eq!(
                outbox.mark_failed(again.id, "still", 600, &config).unwrap(),
                Failure::Retry {
                    attempt: 1,
                    retry_in_ms: outbox.events_for_call("A").unwrap()[0].next_attempt_ms - 600
                }
            );
            outbox.mark_delivered(again.id, 800).unwrap();
            assert!(matches!(
                outbox.retry_dead(&first, 900),
                Err(OutboxError::NotDead {
                    state: EventState::Delivered,
                    ..
                })
            ));
            // Dead letters are pruned with the delivered events, never the pending ones.
            let lone = outbox
                .enqueue("B", "escalated", serde_json::json!({}), 3)
                .unwrap();
            let id = outbox
                .due(1_000, 10)
                .unwrap()
                .into_iter()
                .find(|e| e.event_id == lone)
                .unwrap()
                .id;
            outbox.mark_failed(id, "x", 1_000, &config).unwrap();
            outbox.mark_failed(id, "x", 1_000, &config).unwrap();
            assert_eq!(outbox.dead_count().unwrap(), 1);
            assert_eq!(outbox.prune(u64::MAX).unwrap(), 2);
            assert_eq!(outbox.dead_count().unwrap(), 0);
            assert_eq!(outbox.pending_count().unwrap(), 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_receiver_gets_a_bounded_number_of_attempts_and_the_call_moves_on() {
        for store in sync(stores) {
            let _named = store.naming();
            // The receiver never answers `escalated` (slower than any timeout); it takes the
            // rest.
            let (url, log) = receiver(|_, request| {
                if request.header("x-voicebot-event") == "escalated" {
                    Reply::Hang
                } else {
                    Reply::Status(200)
                }
            });
            let config = WebhookConfig {
                timeout_ms: 100,
                max_attempts: 3,
                ..test_config(url)
            };
            let outbox = Arc::new(sync(|| store.open()));
            let handle = spawn_deliverer(Arc::clone(&outbox), config);
            let (dead_id, confirmed) =
                sync(|| handle.enqueue_watched("call-3", "escalated", serde_json::json!({})))
                    .unwrap();
            let ended =
                sync(|| handle.enqueue("call-3", "call_ended", serde_json::json!({}))).unwrap();
            wait_until("the later event", Duration::from_secs(10), || {
                outbox.events_for_call("call-3").unwrap()[1].state == EventState::Delivered
            })
            .await;
            handle.shutdown().await;
            // The watcher learns that no confirmation will come.
            assert!(confirmed.await.is_err());
            let history = sync(|| outbox.events_for_call("call-3")).unwrap();
            assert_eq!(history[0].state, EventState::Dead);
            assert_eq!(history[0].attempts, 3);
            assert_eq!(
                history[0].last_error.as_deref(),
                Some("no answer within 100 ms")
            );
            let received = log.lock().unwrap().clone();
            let keys: Vec<&str> = received
                .iter()
                .map(|r| r.header("idempotency-key"))
                .collect();
            assert_eq!(
                keys,
                [dead_id.as_str(), &dead_id, &dead_id, &ended],
                "three attempts at the slow event, then the next one"
            );
            assert_eq!(
                sync(|| outbox.dead_events(10)).unwrap()[0].event_id,
                dead_id
            );
            sync(move || drop((handle, outbox)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_off_leaves_events_in_the_outbox() {
        for store in sync(stores) {
            let _named = store.naming();
            let outbox = Arc::new(sync(|| store.open()));
            let handle = spawn_deliverer(Arc::clone(&outbox), WebhookConfig::default());
            sync(|| handle.enqueue("c", "escalated", serde_json::Value::Null)).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            handle.shutdown().await;
            handle.shutdown().await;
            assert_eq!(sync(|| outbox.pending_count()).unwrap(), 1);
            sync(move || drop((handle, outbox)));
        }
    }

    // ---- a cluster of gateways on PostgreSQL -----------------------------------------------

    /// A PostgreSQL store on a fresh database; `None` without a throwaway server.
    fn postgres_store() -> Option<Store> {
        let url = crate::storage::throwaway::fresh_database()?;
        Some(Store {
            name: "PostgreSQL",
            dir: tempfile::tempdir().unwrap(),
            url: Some(url),
        })
    }

    #[test]
    fn postgres_schema_migrates_once_and_a_newer_one_is_refused() {
        let Some(store) = postgres_store() else {
            return;
        };
        let first = store.open();
        first.enqueue("c", "k", serde_json::Value::Null, 0).unwrap();
        drop(first);
        let again = store.open();
        assert_eq!(again.pending_count().unwrap(), 1);
        let Backend::Postgres(pg) = &again.backend else {
            panic!("a PostgreSQL store");
        };
        pg.set_schema_version(99).unwrap();
        drop(again);
        let pool = crate::storage::postgres::connect(store.url.as_deref().unwrap(), 1).unwrap();
        assert!(matches!(
            Outbox::open_postgres(pool, "node-a", Duration::from_secs(10)),
            Err(OutboxError::Postgres(
                crate::storage::postgres::PgError::NewerSchema { found: 99, .. }
            ))
        ));
    }

    #[test]
    fn gateways_claim_disjoint_events_and_keep_each_calls_order() {
        let Some(store) = postgres_store() else {
            return;
        };
        let lease = Duration::from_secs(30);
        let (a, b) = (
            store.open_as("node-a", lease),
            store.open_as("node-b", lease),
        );
        // Ten calls with three events each, enqueued through either gateway.
        let mut ids: HashMap<String, Vec<String>> = HashMap::new();
        for step in 0..3 {
            for call in 0..10 {
                let call_id = format!("call-{call}");
                let outbox = if call % 2 == 0 { &a } else { &b };
                let id = outbox
                    .enqueue(&call_id, &format!("k{step}"), serde_json::Value::Null, 1)
                    .unwrap();
                ids.entry(call_id).or_default().push(id);
            }
        }
        let heads: std::collections::HashSet<String> =
            ids.values().map(|events| events[0].clone()).collect();
        let keys = |events: &[PendingEvent]| -> std::collections::HashSet<String> {
            events.iter().map(|e| e.event_id.clone()).collect()
        };

        let of_a = a.due(10, 4).unwrap();
        let of_b = b.due(10, 100).unwrap();
        assert_eq!((of_a.len(), of_b.len()), (4, 6), "a takes 4, b the other 6");
        assert!(keys(&of_a).is_disjoint(&keys(&of_b)));
        let all: std::collections::HashSet<String> =
            keys(&of_a).union(&keys(&of_b)).cloned().collect();
        assert_eq!(all, heads, "only the oldest event of each call");
        // Each keeps its own claims (it may take them again); neither takes the other's, nor a
        // later event of a call whose head the other holds.
        assert_eq!(keys(&a.due(10, 100).unwrap()), keys(&of_a));
        assert_eq!(keys(&b.due(10, 100).unwrap()), keys(&of_b));
        let held = &b.events_for_call(&of_a[0].call_id).unwrap()[0];
        assert_eq!(held.claimed_by.as_deref(), Some("node-a"));
        assert_eq!(held.state, EventState::Pending);

        // a delivers its four: the second events of those calls are due, to b as well.
        for event in &of_a {
            a.mark_delivered(event.id, 20).unwrap();
        }
        let next = b.due(20, 100).unwrap();
        let seconds: std::collections::HashSet<String> =
            of_a.iter().map(|e| ids[&e.call_id][1].clone()).collect();
        assert_eq!(keys(&next), keys(&of_b).union(&seconds).cloned().collect());
        // A failed attempt ends the claim: the event waits for its retry, then anyone takes it.
        let config = WebhookConfig {
            initial_backoff_ms: 1_000,
            ..WebhookConfig::default()
        };
        let failed = &of_b[0];
        let Failure::Retry { retry_in_ms, .. } =
            b.mark_failed(failed.id, "down", 20, &config).unwrap()
        else {
            panic!("a retry");
        };
        assert!(!keys(&a.due(20, 100).unwrap()).contains(&failed.event_id));
        assert!(keys(&a.due(20 + retry_in_ms, 100).unwrap()).contains(&failed.event_id));
    }

    #[test]
    fn two_gateways_draining_at_once_take_each_event_once_in_order() {
        let Some(store) = postgres_store() else {
            return;
        };
        let lease = Duration::from_secs(30);
        let mut ids: HashMap<String, Vec<String>> = HashMap::new();
        {
            let a = store.open_as("node-a", lease);
            for step in 0..4 {
                for call in 0..50 {
                    let call_id = format!("call-{call}");
                    let id = a
                        .enqueue(&call_id, &format!("k{step}"), serde_json::Value::Null, 1)
                        .unwrap();
                    ids.entry(call_id).or_default().push(id);
                }
            }
        }
        let log: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let gateways: Vec<_> = ["node-a", "node-b"]
            .into_iter()
            .map(|node| {
                let outbox = store.open_as(node, lease);
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while outbox.pending_count().unwrap() > 0 {
                        assert!(Instant::now() < deadline, "{node}: not drained in time");
                        for event in outbox.due(1_000, 8).unwrap() {
                            log.lock().unwrap().push((
                                node.to_string(),
                                event.call_id.clone(),
                                event.event_id.clone(),
                            ));
                            // Claims are exclusive: the other gateway never recorded it.
                            outbox.mark_delivered(event.id, 1_000).unwrap();
                        }
                    }
                })
            })
            .collect();
        for gateway in gateways {
            gateway.join().expect("gateway thread");
        }
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 200, "every event taken exactly once");
        for (call_id, expected) in &ids {
            let got: Vec<&String> = log
                .iter()
                .filter(|(_, c, _)| c == call_id)
                .map(|(_, _, id)| id)
                .collect();
            assert_eq!(
                got,
                expected.iter().collect::<Vec<_>>(),
                "{call_id} in order"
            );
        }
        let by_a = log.iter().filter(|(node, _, _)| node == "node-a").count();
        eprintln!("drain: node-a took {by_a} events, node-b {}", 200 - by_a);
    }

    #[test]
    fn a_dead_gateways_claims_are_taken_over_once_their_lease_ends() {
        let Some(store) = postgres_store() else {
            return;
        };
        let lease = Duration::from_millis(1_500);
        let (dead, survivor) = (
            store.open_as("node-dead", lease),
            store.open_as("node-b", lease),
        );
        let a1 = dead
            .enqueue("A", "escalated", serde_json::json!({}), 1)
            .unwrap();
        let a2 = dead
            .enqueue("A", "call_ended", serde_json::json!({}), 2)
            .unwrap();
        let b1 = dead
            .enqueue("B", "escalated", serde_json::json!({}), 3)
            .unwrap();
        // The gateway claims both heads, then dies mid-delivery (it never records an answer).
        let held = dead.due(10, 10).unwrap();
        let claimed_at = Instant::now();
        assert_eq!(
            held.iter().map(|e| &e.event_id).collect::<Vec<_>>(),
            [&a1, &b1]
        );
        // While the lease runs the survivor takes nothing: not the heads, not A's later event.
        assert!(survivor.due(10, 10).unwrap().is_empty());
        assert_eq!(survivor.next_due_ms().unwrap(), None);
        let mut taken = Vec::new();
        while taken.is_empty() {
            assert!(
                claimed_at.elapsed() < Duration::from_secs(10),
                "the lease never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
            taken = survivor.due(10, 10).unwrap();
        }
        let waited = claimed_at.elapsed();
        assert!(waited + Duration::from_millis(100) >= lease, "{waited:?}");
        assert_eq!(
            taken.iter().map(|e| &e.event_id).collect::<Vec<_>>(),
            [&a1, &b1],
            "the same events, in order, A's later one still behind its head"
        );
        let history = survivor.events_for_call("A").unwrap();
        assert_eq!(history[0].claimed_by.as_deref(), Some("node-b"));
        assert_eq!(history[1].claimed_by, None);
        survivor.mark_delivered(taken[0].id, 20).unwrap();
        assert_eq!(
            survivor
                .due(20, 10)
                .unwrap()
                .iter()
                .map(|e| &e.event_id)
                .collect::<Vec<_>>(),
            [&a2, &b1]
        );
        // The dead gateway's late bookkeeping cannot undo the survivor's work.
        assert!(matches!(
            dead.mark_failed(taken[0].id, "late", 30, &WebhookConfig::default()),
            Err(OutboxError::NotPending(_))
        ));
        assert!(matches!(
            dead.mark_failed(taken[1].id, "late", 30, &WebhookConfig::default()),
            Err(OutboxError::NotPending(_))
        ));
        eprintln!("takeover after {waited:?} (lease {lease:?})");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_deliverers_post_every_event_once_in_order_per_call() {
        let Some(store) = sync(postgres_store) else {
            return;
        };
        let (url, log) = receiver(|_, _| Reply::Status(200));
        let config = test_config(url);
        let lease = lease_for(&config);
        let (a, b) = sync(|| {
            (
                Arc::new(store.open_as("node-a", lease)),
                Arc::new(store.open_as("node-b", lease)),
            )
        });
        let handles = [
            spawn_deliverer(Arc::clone(&a), config.clone()),
            spawn_deliverer(Arc::clone(&b), config),
        ];
        // 30 calls, four events each, each call's events enqueued by "its" gateway.
        let (calls, steps) = (30, 4);
        let mut ids: HashMap<String, Vec<String>> = HashMap::new();
        for step in 0..steps {
            for call in 0..calls {
                let call_id = format!("call-{call}");
                let handle = &handles[call % 2];
                let id =
                    sync(|| handle.enqueue(&call_id, &format!("k{step}"), serde_json::json!({})))
                        .unwrap();
                ids.entry(call_id).or_default().push(id);
            }
        }
        let started = Instant::now();
        wait_until("every event delivered", Duration::from_secs(30), || {
            a.pending_count().unwrap() == 0
        })
        .await;
        let took = started.elapsed();
        for handle in &handles {
            handle.shutdown().await;
        }
        let received = log.lock().unwrap().clone();
        assert_eq!(
            received.len(),
            calls * steps,
            "each event posted exactly once"
        );
        let mut per_call: HashMap<String, Vec<String>> = HashMap::new();
        for request in &received {
            assert!(request.signature_ok());
            let envelope: serde_json::Value = serde_json::from_str(&request.body).unwrap();
            let call_id = envelope["call_id"].as_str().unwrap().to_string();
            per_call
                .entry(call_id)
                .or_default()
                .push(request.header("idempotency-key").to_string());
        }
        assert_eq!(per_call, ids, "every call's events, once each, in order");
        let by_a = sync(|| {
            (0..calls)
                .flat_map(|call| a.events_for_call(&format!("call-{call}")).unwrap())
                .filter(|e| e.claimed_by.as_deref() == Some("node-a"))
                .count()
        });
        sync(move || drop((handles, a, b)));
        eprintln!(
            "two deliverers: {} events in {took:?}; node-a posted {by_a}, node-b {}",
            calls * steps,
            calls * steps - by_a
        );
    }
}

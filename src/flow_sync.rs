//! Keeping this gateway's flows in step with the cluster's, through the shared PostgreSQL store.
//!
//! # Why it works this way
//!
//! Each gateway loads its flows from its own flows directory ([`crate::flows`]); the files stay
//! what a gateway runs on, so everything that works on one gateway (the loader's checks, the
//! admin API's reads, a call keeping its flow) works unchanged in a cluster. What the shared
//! store adds is one sequence of **revisions**: an admin edit on any gateway is validated there
//! (exactly as on a single gateway), then stored as a new row of `flow_revisions` holding the
//! *full* set of the flows directory's files (`flow_files`, paths relative to the directory),
//! and announced with `NOTIFY voicebot_flows '<id>'` in the same transaction, so a listener
//! never hears of a revision it cannot read yet.
//!
//! Every gateway runs one [`Listener`]: a dedicated thread with its own connection (`LISTEN`
//! needs a connection that stays open, and the pool's connections are lent out per call). On a
//! notification, and after every (re)connection, it reads the latest revision: a notification
//! missed while the connection was down is therefore not lost, and a burst of edits is taken
//! in one step. A lost connection is retried with a bounded back-off (0.2 s doubling to 5 s).
//!
//! A revision is put in force here the way an admin edit is: loaded first with its files seen
//! through an [`Overlay`] (nothing written yet), and only if it loads are the files written
//! (atomically, one by one, skipping unchanged ones), the files it no longer has removed (only
//! regular files inside the flows directory) and the validated set put in force
//! ([`FlowStore::replace`]): new calls get it at once, calls in progress keep their flow. A
//! revision that does not load here (a shared file this gateway lacks, say) is logged with the
//! file and line, and the previous flows stay.
//!
//! Edits are serialised across the cluster: a publish takes an advisory lock and is refused
//! ([`FlowSyncError::Conflict`]) when the latest revision is not the one this gateway's edit was
//! validated against, so two admins editing on two gateways at once never silently overwrite
//! each other. At start ([`FlowSync::start_up`]) a gateway takes the latest revision; on a
//! database without one, the first gateway (under the same lock) publishes its own files as
//! revision 1.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use crate::config::GatewayConfig;
use crate::engines::{load_flows, load_flows_with, LoadError};
use crate::flows::{write_atomically, WritePlan};
use crate::flows::{FlowSet, FlowStore, Overlay};
use crate::storage::postgres::{self as pg, PgError, PgPool};

/// The channel every gateway LISTENs on; the payload is the new revision's id.
pub const CHANNEL: &str = "voicebot_flows";

/// The schema of the `flows` store.
const MIGRATIONS: &[&str] = &[include_str!(
    "../migrations/postgres/flows/0001_flow_revisions.sql"
)];

/// The advisory lock a publish (and the first publish at start) takes ("vbflow").
const PUBLISH_LOCK: i64 = 0x7662_666c_6f77;

/// How long one wait for a notification lasts before the stop flag and the connection are
/// checked again.
const LISTEN_TICK: Duration = Duration::from_millis(250);
/// A connection silent for this long is probed (a dead peer without a reset is found out).
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// Back-off between connection attempts: from the first to the last, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The most files, the deepest directories and the largest file a snapshot of the flows
/// directory takes.
const MAX_FILES: usize = 10_000;
const MAX_DEPTH: usize = 8;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The application name of the listener's connection (`pg_stat_activity`).
pub const LISTENER_APPLICATION: &str = "voicebot-flows-listener";

/// A revision's files: path relative to the flows directory (`/`-separated) -> text.
pub type Files = BTreeMap<String, String>;

/// One revision of the cluster's flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub id: i64,
    /// The gateway that published it.
    pub node: String,
    pub created_ms: i64,
    /// What changed (`PUT support`, `DELETE billing`, `initial flows of <node>`).
    pub change: String,
    pub files: Files,
}

/// Why flows could not be published or followed.
#[derive(Debug, thiserror::Error)]
pub enum FlowSyncError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(
        "the flows changed on another gateway: revision {latest} is the latest, this edit was \
         validated against {base}; read the flow again and repeat the edit"
    )]
    Conflict { base: String, latest: String },
    #[error("flow file `{path}` is not a plain relative path inside the flows directory {dir}")]
    BadPath { path: String, dir: PathBuf },
    #[error("flow revision {revision} does not load on this gateway: {error}")]
    Invalid { revision: i64, error: LoadError },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<postgres::Error> for FlowSyncError {
    fn from(e: postgres::Error) -> Self {
        FlowSyncError::Postgres(PgError::from(e))
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FlowSyncError {
    let path = path.to_path_buf();
    move |source| FlowSyncError::Io { what, path, source }
}

fn shown(revision: Option<i64>) -> String {
    revision.map_or_else(|| "none".to_string(), |r| r.to_string())
}

/// Where this gateway stands in the cluster's revisions.
#[derive(Debug, Default, Clone, Copy)]
struct Followed {
    /// The revision in force here.
    in_force: Option<i64>,
    /// The latest revision heard of that did not load here (the flows of `in_force` stay).
    refused: Option<i64>,
}

/// Called with the set put in force from a revision (the server keeps the prompts ready).
pub type OnChange = Box<dyn Fn(&FlowSet) + Send + Sync>;

/// This gateway's side of the cluster's flows.
pub struct FlowSync {
    pool: PgPool,
    node: String,
    /// The database URL, for the listener's own connection.
    url: String,
    config: Arc<GatewayConfig>,
    store: Arc<FlowStore>,
    on_change: Option<OnChange>,
    /// The revisions in force here and refused here. Held while the flows directory is
    /// written, so a publish and the listener never write it at once.
    followed: Mutex<Followed>,
    reconnects: AtomicU64,
}

impl std::fmt::Debug for FlowSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowSync")
            .field("node", &self.node)
            .field("dir", &self.config.flows.dir)
            .field("in_force", &self.in_force())
            .finish_non_exhaustive()
    }
}

impl FlowSync {
    /// The flows of `config`/`store` on the shared database (`pool`, reachable at `url`),
    /// its schema migrated. Blocking.
    pub fn open(
        pool: PgPool,
        node: String,
        url: String,
        config: Arc<GatewayConfig>,
        store: Arc<FlowStore>,
    ) -> Result<FlowSync, FlowSyncError> {
        pg::migrate(&pool, "flows", MIGRATIONS)?;
        Ok(FlowSync {
            pool,
            node,
            url,
            config,
            store,
            on_change: None,
            followed: Mutex::new(Followed::default()),
            reconnects: AtomicU64::new(0),
        })
    }

    /// Calls `f` after each set put in force here (not for failed revisions).
    pub fn with_on_change(mut self, f: OnChange) -> Self {
        self.on_change = Some(f);
        self
    }

    /// The revision in force on this gateway (`None`: none taken yet).
    pub fn in_force(&self) -> Option<i64> {
        self.lock().in_force
    }

    /// The latest revision that did not load here, when it is newer than the one in force.
    pub fn refused(&self) -> Option<i64> {
        let f = *self.lock();
        f.refused.filter(|r| Some(*r) > f.in_force)
    }

    /// How often the listener connected again after losing its connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Followed> {
        self.followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dir(&self) -> &Path {
        &self.config.flows.dir
    }

    /// The latest revision, with its files (`None`: none published yet).
    pub fn fetch_latest(&self) -> Result<Option<Revision>, FlowSyncError> {
        let mut conn = pg::conn(&self.pool)?;
        let Some(row) = conn.query_opt(
            "SELECT id, node, created_ms, change FROM flow_revisions ORDER BY id DESC LIMIT 1",
            &[],
        )?
        else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        let files = files_of(&mut *conn, id)?;
        Ok(Some(Revision {
            id,
            node: row.get(1),
            created_ms: row.get(2),
            change: row.get(3),
            files,
        }))
    }

    /// At start, before calls are answered: takes the latest revision, or, when the database
    /// has none, publishes this gateway's flow files as the first (one gateway does, under a
    /// lock). Returns the revision in force. A latest revision that does not load here is an
    /// error (the flows loaded from disk stay in force).
    pub fn start_up(&self) -> Result<Option<i64>, FlowSyncError> {
        {
            let mut guard = self.lock();
            let mut conn = pg::conn(&self.pool)?;
            let mut tx = conn.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PUBLISH_LOCK])?;
            if latest_id(&mut tx)?.is_none() {
                let files = snapshot(self.dir())?;
                let change = format!("initial flows of {}", self.node);
                let id = insert_revision(&mut tx, &self.node, &change, &files)?;
                tx.commit()?;
                guard.in_force = Some(id);
                tracing::info!(revision = id, files = files.len(), node = %self.node,
                    "published this gateway's flow files as the cluster's first revision");
                return Ok(Some(id));
            }
            tx.commit()?;
        }
        self.catch_up()
    }

    /// Puts the latest revision in force when it is newer than the one here; returns the
    /// revision in force.
    pub fn catch_up(&self) -> Result<Option<i64>, FlowSyncError> {
        let mut guard = self.lock();
        let Some(latest) = self.fetch_latest()? else {
            return Ok(guard.in_force);
        };
        if Some(latest.id) <= guard.in_force {
            return Ok(guard.in_force);
        }
        match self.materialize(&latest) {
            Ok(()) => {
                guard.in_force = Some(latest.id);
                tracing::info!(revision = latest.id, from = %latest.node, change = %latest.change,
                    "flow revision in force");
                Ok(guard.in_force)
            }
            Err(e) => {
                guard.refused = Some(latest.id);
                tracing::warn!(revision = latest.id, from = %latest.node, error = %e,
                    "flow revision not taken; the previous flows stay in force");
                Err(e)
            }
        }
    }

    /// Publishes a validated admin edit (`plan`, validated against revision `base`) as a new
    /// revision, then carries it out here and puts its set in force. Refused with
    /// [`FlowSyncError::Conflict`] when another gateway published meanwhile, unless the latest
    /// revision is one that did not load here: an edit made where the flows in force are
    /// `base` then replaces it (else one bad revision would block every edit). Blocking.
    pub fn publish(
        &self,
        plan: WritePlan,
        base: Option<i64>,
        change: &str,
    ) -> Result<(i64, Arc<FlowSet>), FlowSyncError> {
        let mut guard = self.lock();
        let dir = self.dir().to_path_buf();
        let mut conn = pg::conn(&self.pool)?;
        let mut tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PUBLISH_LOCK])?;
        let latest = latest_id(&mut tx)?;
        let replaces_refused = latest.is_some() && latest == guard.refused;
        if guard.in_force != base || (latest != base && !replaces_refused) {
            return Err(FlowSyncError::Conflict {
                base: shown(base),
                latest: shown(latest),
            });
        }
        if replaces_refused && latest != base {
            tracing::warn!(refused = ?latest, base = ?base,
                "this edit replaces the latest revision, which does not load on this gateway");
        }
        let mut files = match base {
            Some(b) => files_of(&mut tx, b)?,
            None => snapshot(&dir)?,
        };
        for (path, text) in &plan.files {
            files.insert(relative(&dir, path)?, text.clone());
        }
        for path in &plan.removals {
            files.remove(&relative(&dir, path)?);
        }
        let id = insert_revision(&mut tx, &self.node, change, &files)?;
        tx.commit()?;
        // Committed: the other gateways follow; here the files are written now (should that
        // fail, the listener tries again on hearing this revision).
        write_tree(&dir, &files)?;
        let set = self.store.replace(plan.set);
        if let Some(f) = &self.on_change {
            f(&set);
        }
        guard.in_force = Some(id);
        tracing::info!(
            revision = id,
            change,
            files = files.len(),
            "flow revision published"
        );
        Ok((id, set))
    }

    /// Validates `revision` here, then writes it into the flows directory and puts it in force.
    fn materialize(&self, revision: &Revision) -> Result<(), FlowSyncError> {
        let dir = self.dir();
        let invalid = |error| FlowSyncError::Invalid {
            revision: revision.id,
            error,
        };
        for path in revision.files.keys() {
            plain(dir, path)?;
        }
        let set = if revision.files.is_empty() {
            // No files: the embedded default flow (no flows directory).
            write_tree(dir, &revision.files)?;
            load_flows(&self.config).map_err(invalid)?
        } else {
            let mut overlay = Overlay::new();
            for path in listing(dir)? {
                overlay.insert(dir.join(path), None);
            }
            for (path, text) in &revision.files {
                overlay.insert(dir.join(path), Some(text.clone()));
            }
            let set = load_flows_with(&self.config, &overlay).map_err(invalid)?;
            write_tree(dir, &revision.files)?;
            set
        };
        let set = self.store.replace(set);
        if let Some(f) = &self.on_change {
            f(&set);
        }
        Ok(())
    }

    /// Starts the listener thread (see the module docs). It stops when the returned handle
    /// is dropped.
    pub fn listen(self: &Arc<Self>) -> std::io::Result<Listener> {
        let stop = Arc::new(AtomicBool::new(false));
        let sync = Arc::clone(self);
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("flow-sync".into())
            .spawn(move || sync.listen_loop(&flag))?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }

    fn connect_listener(&self) -> Result<postgres::Client, postgres::Error> {
        let mut config: postgres::Config = self.url.parse()?;
        config
            .application_name(LISTENER_APPLICATION)
            .connect_timeout(Duration::from_secs(5));
        let mut client = config.connect(postgres::NoTls)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(client)
    }

    fn listen_loop(&self, stop: &AtomicBool) {
        let mut backoff = BACKOFF_FIRST;
        let mut connected_before = false;
        while !stop.load(Ordering::Relaxed) {
            match self.connect_listener() {
                Ok(mut client) => {
                    if connected_before {
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("flow listener connected again; catching up");
                    }
                    connected_before = true;
                    backoff = BACKOFF_FIRST;
                    // A notification sent while the connection was down is not lost.
                    let _ = self.catch_up();
                    self.follow(&mut client, stop);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tracing::warn!(retry_in = ?backoff, "flow listener lost its connection");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "flow listener cannot connect")
                }
            }
            let until = Instant::now() + backoff;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                std::thread::sleep(
                    LISTEN_TICK.min(until.saturating_duration_since(Instant::now())),
                );
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Follows notifications on `client` until it is lost or `stop` is set.
    fn follow(&self, client: &mut postgres::Client, stop: &AtomicBool) {
        let mut last_probe = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let heard = {
                let mut notifications = client.notifications();
                let mut iter = notifications.timeout_iter(LISTEN_TICK);
                match iter.next() {
                    Ok(heard) => heard,
                    Err(e) => {
                        tracing::warn!(error = %e, "flow listener connection failed");
                        return;
                    }
                }
            };
            if client.is_closed() {
                return;
            }
            match heard {
                Some(n) => {
                    last_probe = Instant::now();
                    let id = n.payload().parse::<i64>().ok();
                    if id.is_none() || id > self.in_force() {
                        let _ = self.catch_up();
                    }
                }
                None if last_probe.elapsed() >= PROBE_EVERY => {
                    if client.is_valid(Duration::from_secs(5)).is_err() {
                        return;
                    }
                    last_probe = Instant::now();
                }
                None => {}
            }
        }
    }
}

/// The listener thread; dropping it stops the thread (within a quarter of a second).
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn latest_id(tx: &mut postgres::Transaction<'_>) -> Result<Option<i64>, postgres::Error> {
    Ok(tx
        .query_one("SELECT MAX(id) FROM flow_revisions", &[])?
        .get::<_, Option<i64>>(0))
}

fn files_of(
    client: &mut impl postgres::GenericClient,
    revision: i64,
) -> Result<Files, postgres::Error> {
    Ok(client
        .query(
            "SELECT path, text FROM flow_files WHERE revision = $1 ORDER BY path",
            &[&revision],
        )?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Stores a revision and announces it (delivered when the transaction commits).
fn insert_revision(
    tx: &mut postgres::Transaction<'_>,
    node: &str,
    change: &str,
    files: &Files,
) -> Result<i64, postgres::Error> {
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    let id: i64 = tx
        .query_one(
            "INSERT INTO flow_revisions (node, created_ms, change) VALUES ($1, $2, $3) \
             RETURNING id",
            &[&node, &now_ms, &change],
        )?
        .get(0);
    let insert = tx.prepare("INSERT INTO flow_files (revision, path, text) VALUES ($1, $2, $3)")?;
    for (path, text) in files {
        tx.execute(&insert, &[&id, path, text])?;
    }
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id.to_string()])?;
    Ok(id)
}

/// `path` (below `dir`) as a revision's relative path.
fn relative(dir: &Path, path: &Path) -> Result<String, FlowSyncError> {
    let bad = || FlowSyncError::BadPath {
        path: path.display().to_string(),
        dir: dir.to_path_buf(),
    };
    let rel = path.strip_prefix(dir).map_err(|_| bad())?;
    let parts: Option<Vec<&str>> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let parts = parts.ok_or_else(bad)?;
    let joined = parts.join("/");
    plain(dir, &joined)?;
    Ok(joined)
}

/// Checks a revision's path: plain names only (no `..`, no root, no hidden names), so that a
/// revision can only ever write inside the flows directory. Returns the path to write.
fn plain(dir: &Path, rel: &str) -> Result<PathBuf, FlowSyncError> {
    let ok = !rel.is_empty()
        && rel.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && !part.contains('\\')
                && Path::new(part)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
        });
    if ok {
        Ok(dir.join(rel))
    } else {
        Err(FlowSyncError::BadPath {
            path: rel.to_string(),
            dir: dir.to_path_buf(),
        })
    }
}

/// The regular files below `dir` (relative, `/`-separated), skipping hidden names (the
/// admin API's partial files) and symbolic links; nothing when `dir` does not exist.
fn listing(dir: &Path) -> Result<Vec<String>, FlowSyncError> {
    fn walk(
        dir: &Path,
        prefix: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) -> Result<(), FlowSyncError> {
        let entries = std::fs::read_dir(dir).map_err(io_error("cannot list", dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("cannot list", dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry
                .file_type()
                .map_err(io_error("cannot stat", &entry.path()))?;
            if kind.is_dir() && depth < MAX_DEPTH {
                walk(&entry.path(), &rel, depth + 1, out)?;
            } else if kind.is_file() && out.len() < MAX_FILES {
                out.push(rel);
            } else if kind.is_symlink() {
                tracing::debug!(file = %entry.path().display(), "symbolic link in the flows directory not shared");
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, "", 0, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// The flows directory's files (see [`listing`]), with their texts.
fn snapshot(dir: &Path) -> Result<Files, FlowSyncError> {
    let mut files = Files::new();
    for rel in listing(dir)? {
        let path = dir.join(&rel);
        let size = std::fs::metadata(&path)
            .map_err(io_error("cannot stat", &path))?
            .len();
        if size > MAX_FILE_BYTES {
            tracing::warn!(file = %path.display(), size, "file in the flows directory too large to share; left out");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(rel, text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(file = %path.display(), "file in the flows directory is not UTF-8 text; left out");
            }
            Err(e) => return Err(io_error("cannot read", &path)(e)),
        }
    }
    Ok(files)
}

/// Makes the flows directory hold exactly `files`: writes the changed ones atomically, removes
/// the regular files it no longer has (and, for no files at all, the emptied directories).
fn write_tree(dir: &Path, files: &Files) -> Result<(), FlowSyncError> {
    let dir_real = if files.is_empty() {
        None
    } else {
        std::fs::create_dir_all(dir).map_err(io_error("cannot create", dir))?;
        Some(std::fs::canonicalize(dir).map_err(io_error("cannot resolve", dir))?)
    };
    for (rel, text) in files {
        let path = plain(dir, rel)?;
        if std::fs::read_to_string(&path).is_ok_and(|old| old == *text) {
            continue;
        }
        if let (Some(parent), Some(real)) = (path.parent(), &dir_real) {
            std::fs::create_dir_all(parent).map_err(io_error("cannot create", parent))?;
            // A sub-directory that is a link leading elsewhere is never written through.
            let parent_real =
                std::fs::canonicalize(parent).map_err(io_error("cannot resolve", parent))?;
            if !parent_real.starts_with(real) {
                return Err(FlowSyncError::BadPath {
                    path: rel.clone(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        write_atomically(&path, text).map_err(io_error("cannot write", &path))?;
    }
    for rel in listing(dir)? {
        if !files.contains_key(&rel) {
            let path = dir.join(&rel);
            std::fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
            tracing::info!(file = %path.display(), "flow file removed (not in the revision)");
        }
    }
    if files.is_empty() && dir.is_dir() {
        remove_empty_dirs(dir);
    }
    Ok(())
}

/// Removes `dir` and its sub-directories when they hold nothing (best effort).
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|k| k.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::flows::{plan_delete, plan_write, FlowWrite};
    use crate::admin::test_support::support_flow;
    use crate::config::IntentEngine;

    /// One gateway of a test cluster: its own flows directory (with the support flow, its
    /// intents and prompts beside it as shared files), its flows and its sync.
    struct Gateway {
        dir: tempfile::TempDir,
        config: Arc<GatewayConfig>,
        store: Arc<FlowStore>,
        sync: Arc<FlowSync>,
    }

    impl Gateway {
        fn new(url: &str, node: &str) -> Gateway {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            std::fs::copy(
                root.join("sip-config/intents.toml"),
                dir.path().join("intents.toml"),
            )
            .expect("copy intents");
            std::fs::copy(
                root.join("prompts/en.toml"),
                dir.path().join("prompts.toml"),
            )
            .expect("copy prompts");
            std::fs::create_dir_all(dir.path().join("flows")).expect("mkdir");
            std::fs::write(dir.path().join("flows/support.toml"), support_flow(""))
                .expect("write flow");
            let mut config = GatewayConfig::default();
            config.intent.engine = IntentEngine::Rules;
            config.flows.dir = dir.path().join("flows");
            config.flows.shared = vec![
                dir.path().join("intents.toml"),
                dir.path().join("prompts.toml"),
            ];
            let config = Arc::new(config);
            let store = Arc::new(FlowStore::new(load_flows(&config).expect("flows load")));
            let pool = pg::connect(url, 2).expect("connects");
            let sync = FlowSync::open(
                pool,
                node.into(),
                url.into(),
                Arc::clone(&config),
                Arc::clone(&store),
            )
            .expect("opens");
            Gateway {
                dir,
                config,
                store,
                sync: Arc::new(sync),
            }
        }

        fn flows_dir(&self) -> PathBuf {
            self.dir.path().join("flows")
        }

        /// An admin PUT of `name` as this gateway's admin API does it with a shared store.
        fn put(&self, name: &str, text: String) -> Result<i64, FlowSyncError> {
            let base = self.sync.in_force();
            let write = FlowWrite {
                flow: text,
                intents: None,
                prompts: None,
            };
            let plan = plan_write(&self.config, &self.store.current(), name, &write)
                .expect("the edit validates");
            self.sync
                .publish(plan, base, &format!("PUT {name}"))
                .map(|(id, _)| id)
        }

        fn delete(&self, name: &str) -> Result<i64, FlowSyncError> {
            let base = self.sync.in_force();
            let plan =
                plan_delete(&self.config, &self.store.current(), name).expect("delete validates");
            self.sync
                .publish(plan, base, &format!("DELETE {name}"))
                .map(|(id, _)| id)
        }

        fn description(&self, name: &str) -> Option<String> {
            self.store
                .current()
                .get(name)
                .map(|f| f.description.clone())
        }
    }

    fn billing(description: &str) -> String {
        format!(
            "name = \"billing\"\ndescription = \"{description}\"\nnumbers = [\"200\"]\n\
             intents = \"../intents.toml\"\nprompts = \"../prompts.toml\"\n"
        )
    }

    /// Waits (bounded) until `done`; returns how long it took.
    fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
        start.elapsed()
    }

    /// Stores a revision as another gateway would, without validating it here.
    fn publish_raw(g: &Gateway, files: &Files, change: &str) -> i64 {
        let mut conn = pg::conn(&g.sync.pool).expect("conn");
        let mut tx = conn.transaction().expect("tx");
        let id = insert_revision(&mut tx, "elsewhere", change, files).expect("insert");
        tx.commit().expect("commit");
        id
    }

    #[test]
    fn revisions_are_published_and_fetched_with_every_file() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let a = Gateway::new(&url, "a");
        assert_eq!(a.sync.fetch_latest().expect("fetch"), None);
        // The first gateway publishes its own files as revision 1.
        let first = a.sync.start_up().expect("start").expect("a revision");
        let latest = a.sync.fetch_latest().expect("fetch").expect("revision 1");
        assert_eq!(latest.id, first);
        assert_eq!(latest.node, "a");
        assert!(latest.change.contains("initial"), "{}", latest.change);
        assert_eq!(
            latest.files,
            Files::from([("support.toml".to_string(), support_flow(""))])
        );
        // A second gateway takes it instead of publishing its own.
        let b = Gateway::new(&url, "b");
        assert_eq!(b.sync.start_up().expect("start"), Some(first));
        assert_eq!(
            a.sync.fetch_latest().expect("fetch").map(|r| r.id),
            Some(first)
        );

        // An edit: a new revision with the full set, written and in force here.
        let second = a.put("billing", billing("Billing")).expect("publish");
        assert!(second > first);
        let latest = a.sync.fetch_latest().expect("fetch").expect("revision 2");
        assert_eq!(latest.id, second);
        assert_eq!(latest.change, "PUT billing");
        assert_eq!(
            latest.files.keys().collect::<Vec<_>>(),
            ["billing.toml", "support.toml"]
        );
        assert_eq!(a.sync.in_force(), Some(second));
        assert_eq!(a.description("billing").as_deref(), Some("Billing"));
        assert_eq!(
            std::fs::read_to_string(a.flows_dir().join("billing.toml")).expect("written"),
            billing("Billing")
        );

        // b has not taken revision 2: its edit was validated against revision 1 and is refused.
        match b.put("billing", billing("Other")) {
            Err(FlowSyncError::Conflict { base, latest }) => {
                assert_eq!((base, latest), (first.to_string(), second.to_string()))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(b.sync.catch_up().expect("catch up"), Some(second));
        assert_eq!(b.description("billing").as_deref(), Some("Billing"));

        // A delete: the file leaves the revision and every directory.
        let third = b.delete("billing").expect("delete");
        assert_eq!(
            a.sync
                .fetch_latest()
                .expect("fetch")
                .expect("revision 3")
                .files
                .keys()
                .collect::<Vec<_>>(),
            ["support.toml"]
        );
        assert_eq!(a.sync.catch_up().expect("catch up"), Some(third));
        assert!(!a.flows_dir().join("billing.toml").exists());
        assert_eq!(a.description("billing"), None);
    }

    #[test]
    fn gateways_starting_together_publish_one_first_revision() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let gateways: Vec<Gateway> = (0..3)
            .map(|i| Gateway::new(&url, &format!("g{i}")))
            .collect();
        let revisions: Vec<Option<i64>> = std::thread::scope(|s| {
            let started: Vec<_> = gateways
                .iter()
                .map(|g| s.spawn(|| g.sync.start_up().expect("start")))
                .collect();
            started
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        let first = revisions[0].expect("a revision");
        assert!(revisions.iter().all(|r| *r == Some(first)), "{revisions:?}");
        let mut conn = pg::conn(&gateways[0].sync.pool).expect("conn");
        let n: i64 = conn
            .query_one("SELECT COUNT(*) FROM flow_revisions", &[])
            .expect("count")
            .get(0);
        assert_eq!(n, 1);
    }

    #[test]
    fn an_edit_published_by_one_gateway_is_in_force_on_the_other() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let (a, b) = (Gateway::new(&url, "a"), Gateway::new(&url, "b"));
        a.sync.start_up().expect("start a");
        b.sync.start_up().expect("start b");
        let _listening = b.sync.listen().expect("listener");
        // A call in progress on b keeps the flow it started with.
        let call_flow = b.store.current().get("support").expect("support");
        let mut took = Vec::new();
        for round in 0..8 {
            let description = format!("Support, edit {round}");
            let text = support_flow("").replace(
                "description = \"Support\"",
                &format!("description = \"{description}\""),
            );
            let start = Instant::now();
            let id = a.put("support", text.clone()).expect("publish");
            within(Duration::from_secs(3), "the edit in force on b", || {
                b.description("support").as_deref() == Some(description.as_str())
            });
            took.push(start.elapsed());
            assert_eq!(b.sync.in_force(), Some(id));
            assert_eq!(
                std::fs::read_to_string(b.flows_dir().join("support.toml")).expect("on disk"),
                text
            );
        }
        assert_eq!(call_flow.description, "Support");
        // A new flow and its removal travel too.
        a.put("billing", billing("Billing")).expect("publish");
        within(Duration::from_secs(3), "billing on b", || {
            b.description("billing").is_some()
        });
        assert_eq!(b.store.current().for_number("200").name, "billing");
        a.delete("billing").expect("delete");
        within(Duration::from_secs(3), "billing gone from b", || {
            b.description("billing").is_none()
        });
        assert!(!b.flows_dir().join("billing.toml").exists());
        took.sort();
        eprintln!(
            "flow propagation (publish -> in force on the other gateway), {} edits: \
             min {:?}, median {:?}, max {:?}",
            took.len(),
            took[0],
            took[took.len() / 2],
            took[took.len() - 1]
        );
    }

    #[test]
    #[ignore = "flaky when run beside the other flow tests: the edit is caught up but the \
                reconnect counter stays 0 for 10 s (under investigation; passes alone: \
                cargo test --lib -- --ignored a_killed_listener)"]
    fn a_killed_listener_connection_reconnects_and_catches_up() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let (a, b) = (Gateway::new(&url, "a"), Gateway::new(&url, "b"));
        a.sync.start_up().expect("start a");
        b.sync.start_up().expect("start b");
        let _listening = b.sync.listen().expect("listener");
        let mut admin = pg::conn(&a.sync.pool).expect("conn");
        let database = url.rsplit('/').next().unwrap_or_default().to_string();
        let listener_pid = |admin: &mut pg::PgConn| -> Option<i32> {
            admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE application_name = $1 AND datname = $2",
                    &[&LISTENER_APPLICATION, &database],
                )
                .expect("activity")
                .map(|row| row.get(0))
        };
        let mut pid = None;
        within(Duration::from_secs(5), "b's listener connected", || {
            pid = listener_pid(&mut admin);
            pid.is_some()
        });
        let pid = pid.expect("listener pid");
        // The listener's connection dies; an edit is published once it is gone.
        let killed: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .expect("terminate")
            .get(0);
        assert!(killed);
        within(Duration::from_secs(5), "the killed backend gone", || {
            listener_pid(&mut admin) != Some(pid)
        });
        let id = a
            .put("billing", billing("After the kill"))
            .expect("publish");
        let took = within(Duration::from_secs(10), "b caught up", || {
            b.sync.in_force() == Some(id)
        });
        assert_eq!(b.description("billing").as_deref(), Some("After the kill"));
        within(
            Duration::from_secs(10),
            "the listener connected again",
            || b.sync.reconnects() >= 1,
        );
        // And it listens again: the next edit arrives too.
        within(
            Duration::from_secs(5),
            "b's listener connected again",
            || listener_pid(&mut admin).is_some_and(|p| p != pid),
        );
        let next = a.put("billing", billing("Heard again")).expect("publish");
        within(Duration::from_secs(3), "the next edit on b", || {
            b.sync.in_force() == Some(next)
        });
        eprintln!("caught up {took:?} after the listener's connection was killed");
    }

    #[test]
    fn a_revision_published_while_a_gateway_did_not_listen_is_taken_on_connecting() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let (a, b) = (Gateway::new(&url, "a"), Gateway::new(&url, "b"));
        a.sync.start_up().expect("start a");
        b.sync.start_up().expect("start b");
        // Its NOTIFY reaches nobody: b does not listen yet (as while its connection is down).
        let id = a.put("billing", billing("Missed")).expect("publish");
        assert_ne!(b.sync.in_force(), Some(id));
        let _listening = b.sync.listen().expect("listener");
        within(Duration::from_secs(5), "b took the missed revision", || {
            b.sync.in_force() == Some(id)
        });
        assert_eq!(b.description("billing").as_deref(), Some("Missed"));
    }

    #[test]
    fn a_revision_that_does_not_load_keeps_the_previous_flows() {
        let Some(url) = crate::storage::throwaway::fresh_database() else {
            return;
        };
        let (a, b) = (Gateway::new(&url, "a"), Gateway::new(&url, "b"));
        let first = a.sync.start_up().expect("start a");
        b.sync.start_up().expect("start b");
        let before = b.store.current();
        // Published elsewhere: a flow with a syntax error on line 3.
        let mut files = Files::from([("support.toml".to_string(), support_flow(""))]);
        files.insert(
            "broken.toml".into(),
            "name = \"broken\"\nnumbers = [\"300\"]\nescalation = [oops\n".into(),
        );
        let bad = publish_raw(&a, &files, "PUT broken");
        match b.sync.catch_up() {
            Err(FlowSyncError::Invalid { revision, error }) => {
                assert_eq!(revision, bad);
                let shown = error.to_string();
                assert!(shown.contains("broken.toml"), "{shown}");
                assert!(shown.contains(":3"), "names the line: {shown}");
            }
            other => panic!("expected the revision refused, got {other:?}"),
        }
        assert_eq!(b.sync.in_force(), first);
        assert_eq!(b.sync.refused(), Some(bad));
        assert!(Arc::ptr_eq(&before, &b.store.current()), "flows unchanged");
        assert!(
            !b.flows_dir().join("broken.toml").exists(),
            "nothing written"
        );
        // A path leading out of the flows directory is refused before anything is read.
        let escape = publish_raw(
            &a,
            &Files::from([("../escape.toml".to_string(), "x".to_string())]),
            "escape",
        );
        assert!(matches!(
            b.sync.catch_up(),
            Err(FlowSyncError::BadPath { .. })
        ));
        assert!(!b.dir.path().join("escape.toml").exists());
        assert_eq!(b.sync.refused(), Some(escape));
        // An edit where the flows in force are the last good ones replaces the bad revision.
        let fixed = b
            .put("billing", billing("Billing"))
            .expect("publish over it");
        assert_eq!(a.sync.catch_up().expect("a follows"), Some(fixed));
        assert_eq!(a.description("billing").as_deref(), Some("Billing"));
        assert_eq!(a.description("broken"), None);
        assert_eq!(b.sync.refused(), None);
    }

    #[test]
    fn revision_paths_stay_inside_the_flows_directory() {
        let dir = Path::new("/srv/flows");
        assert!(plain(dir, "support.toml").is_ok());
        assert!(plain(dir, "billing/intents.toml").is_ok());
        for bad in [
            "",
            "../x.toml",
            "a/../../x.toml",
            "/etc/passwd",
            ".hidden.toml",
            "a//b.toml",
            "a\\..\\b",
        ] {
            assert!(plain(dir, bad).is_err(), "{bad:?} refused");
        }
        assert_eq!(
            relative(dir, &dir.join("billing/intents.toml")).expect("inside"),
            "billing/intents.toml"
        );
        assert!(relative(dir, Path::new("/srv/other.toml")).is_err());
    }
}

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

use crate::admin::flows::{write_atomically, WritePlan};
use crate::config::GatewayConfig;
use crate::engines::{load_flows, load_flows_with, LoadError};
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
    /// The revision in force here. Held while the flows directory is written, so a publish
    /// and the listener never write it at once.
    in_force: Mutex<Option<i64>>,
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
            in_force: Mutex::new(None),
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
        *self.lock()
    }

    /// How often the listener connected again after losing its connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Option<i64>> {
        self.in_force
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
                *guard = Some(id);
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
            return Ok(*guard);
        };
        if Some(latest.id) <= *guard {
            return Ok(*guard);
        }
        match self.materialize(&latest) {
            Ok(()) => {
                *guard = Some(latest.id);
                tracing::info!(revision = latest.id, from = %latest.node, change = %latest.change,
                    "flow revision in force");
                Ok(*guard)
            }
            Err(e) => {
                tracing::warn!(revision = latest.id, from = %latest.node, error = %e,
                    "flow revision not taken; the previous flows stay in force");
                Err(e)
            }
        }
    }

    /// Publishes a validated admin edit (`plan`, validated against revision `base`) as a new
    /// revision, then carries it out here and puts its set in force. Refused with
    /// [`FlowSyncError::Conflict`] when another gateway published meanwhile. Blocking.
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
        if latest != base || *guard != base {
            return Err(FlowSyncError::Conflict {
                base: shown(base),
                latest: shown(latest),
            });
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
        *guard = Some(id);
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

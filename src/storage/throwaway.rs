//! A throwaway PostgreSQL server for tests and benchmarks: its own data directory under the
//! temp directory, on a free loopback port, started with Debian's server binaries (`initdb`,
//! `postgres`) and gone with the process that started it.
//!
//! # Why here and not in `tests/`
//!
//! The stores' unit tests (beside their code), the end-to-end cluster tests and the cluster
//! benchmark all need one, started the same way; this is the one place that knows how.
//!
//! # How
//!
//! - PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system
//!   user (Debian's package creates it) and its directory belongs to that user.
//! - The server is a child of a thread that lives as long as the process and is started with
//!   `PR_SET_PDEATHSIG`, so a test process that ends (or is killed) takes its server with it;
//!   data directories of processes that are gone are removed by the next start.
//! - Durability is off (`fsync`, `synchronous_commit`, `full_page_writes`): the data is
//!   thrown away anyway.
//! - [`fresh_database`] gives each test its own database on one shared server per process.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable naming the directory of `initdb` and `postgres` (default: the
/// newest `/usr/lib/postgresql/<version>/bin`).
pub const BIN_ENV: &str = "VOICEBOT_PG_BIN";
/// The superuser of a throwaway server (trust authentication on loopback).
pub const USER: &str = "voicebot";

/// Why a throwaway server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    #[error(
        "PostgreSQL server binaries not found (install Debian's `postgresql`, or set {BIN_ENV})"
    )]
    NoBinaries,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Failed { what: String, output: String },
    #[error("the server did not accept connections within {0:?}")]
    NotReady(Duration),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ThrowawayError {
    let what = what.into();
    move |source| ThrowawayError::Io { what, source }
}

/// A running throwaway server.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl ThrowawayPostgres {
    /// Starts a server (a few seconds: `initdb`, then the server's start). The calling thread
    /// is its parent: when that thread ends, the server is killed. See [`shared`] for one that
    /// lives as long as the process.
    pub fn start() -> Result<ThrowawayPostgres, ThrowawayError> {
        let bin = binaries().ok_or(ThrowawayError::NoBinaries)?;
        sweep_stale_dirs();
        let dir = std::env::temp_dir().join(format!(
            "voicebot-pg-{}-{}",
            std::process::id(),
            NEXT_SERVER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).map_err(io(format!("creating {dir:?}")))?;
        let owner = server_user();
        if let Some((uid, gid)) = owner {
            for d in [dir.clone(), dir.join("data")] {
                chown(&d, Some(uid), Some(gid)).map_err(io(format!("chown {d:?}")))?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null());
        as_owner(&mut initdb, owner);
        let out = initdb.output().map_err(io("running initdb"))?;
        if !out.status.success() {
            return Err(ThrowawayError::Failed {
                what: "initdb".into(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let port = free_port().map_err(io("finding a free port"))?;
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg("-k")
            .arg(&dir)
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=600"])
            .args([
                "-c",
                "shared_buffers=32MB",
                "-c",
                "log_min_messages=warning",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        as_owner(&mut server, owner);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal
        // (after the uid change above, which would clear it).
        unsafe {
            server.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = server.spawn().map_err(io("starting postgres"))?;
        let pg = ThrowawayPostgres {
            port,
            dir,
            child: Mutex::new(Some(child)),
        };
        pg.wait_ready(Duration::from_secs(30))?;
        Ok(pg)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (empty) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, ThrowawayError> {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| ThrowawayError::Failed {
                what: "connecting".into(),
                output: e.to_string(),
            })?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
            .map_err(|e| ThrowawayError::Failed {
                what: format!("CREATE DATABASE {name}"),
                output: e.to_string(),
            })?;
        Ok(self.url(name))
    }

    /// Kills the server now (the test of a database that goes away).
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), ThrowawayError> {
        let deadline = Instant::now() + limit;
        loop {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return Ok(());
            }
            let exited = {
                let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
                child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .is_some()
            };
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                if exited {
                    return Err(ThrowawayError::Failed {
                        what: "postgres".into(),
                        output: log,
                    });
                }
                return Err(ThrowawayError::NotReady(limit));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_SERVER: AtomicU32 = AtomicU32::new(0);
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// One server for the whole process, started on first use by a thread that never ends (so the
/// parent-death signal fires only when the process goes). `None` when the server binaries are
/// missing and `VOICEBOT_REQUIRE_PEERS` is not `1`; with it set, a missing or failing server
/// panics, so a test that needs PostgreSQL fails rather than passes without it.
pub fn shared() -> Option<&'static ThrowawayPostgres> {
    static SHARED: OnceLock<Result<ThrowawayPostgres, String>> = OnceLock::new();
    let server = SHARED.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("throwaway-postgres".into())
            .spawn(move || {
                let _ = tx.send(ThrowawayPostgres::start());
                loop {
                    std::thread::park();
                }
            });
        match spawned {
            Ok(_) => match rx.recv() {
                Ok(started) => started.map_err(|e| e.to_string()),
                Err(_) => Err("the server thread ended".into()),
            },
            Err(e) => Err(e.to_string()),
        }
    });
    match server {
        Ok(pg) => Some(pg),
        Err(e) => {
            if std::env::var("VOICEBOT_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!("PostgreSQL is required (VOICEBOT_REQUIRE_PEERS=1): {e}");
            }
            eprintln!("skipped: no throwaway PostgreSQL ({e})");
            None
        }
    }
}

/// A new, empty database on the [`shared`] server, for one test; `None` as [`shared`].
pub fn fresh_database() -> Option<String> {
    let pg = shared()?;
    let name = format!("t{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
    match pg.create_database(&name) {
        Ok(url) => Some(url),
        Err(e) => panic!("throwaway PostgreSQL: {e}"),
    }
}

/// The directory of the server binaries: [`BIN_ENV`], else the newest Debian version.
fn binaries() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return dir.join("postgres").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").exists() && bin.join("initdb").exists()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// As root: the uid and gid of the `postgres` system user; otherwise `None` (run as we are).
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == "postgres").then_some(())?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    // initdb and postgres refuse a working directory they cannot read.
    cmd.current_dir("/");
}

fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

/// Removes the data directories of earlier processes that are gone.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("voicebot-pg-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fresh_database_accepts_connections_and_is_empty() {
        let Some(url) = super::fresh_database() else {
            return;
        };
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connects");
        let n: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
                &[],
            )
            .expect("query")
            .get(0);
        assert_eq!(n, 0);
    }
}

//! A Kamailio (Debian `kamailio`, GPL, run as a separate process on loopback) for the tests:
//! registrar and proxy with digest auth (`tests/kamailio/registrar.cfg.in`), optionally on TLS
//! too, with an agent's account and a 407 challenge to INVITEs for it; its log lines are
//! collected for the tests to read.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::options_answer;
use super::{free_udp_port, peer_available, root, stop_process_group};

/// Whether Kamailio is usable (see [`peer_available`]).
pub fn have_kamailio() -> bool {
    let ok = Command::new("kamailio")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    peer_available("kamailio", ok, "apt-get install kamailio")
}

/// One Kamailio process in the foreground (`-DD -E`, working directory `dir`), in a process
/// group of its own so that dropping it stops its workers too; its stderr lines are collected.
/// The registrar here and the cluster's dispatcher both run on it.
pub struct KamailioProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl KamailioProcess {
    /// Starts `kamailio` with `args` (the configuration file and its defines).
    pub fn spawn<I, S>(dir: tempfile::TempDir, args: I) -> KamailioProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new("kamailio")
            .args(args)
            .args(["-DD", "-E", "-Y"])
            .arg(dir.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kamailio");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        KamailioProcess {
            child,
            log,
            _dir: dir,
        }
    }

    /// Panics (with the log) unless Kamailio answers OPTIONS on `port` within 15 s.
    pub fn wait_ready(&self, port: u16) {
        assert!(
            options_answer(port, Duration::from_secs(15)) == Some(200),
            "kamailio did not answer OPTIONS on {port}: {:?}",
            self.lines("")
        );
    }

    /// The log lines containing `containing`.
    pub fn lines(&self, containing: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(containing))
            .cloned()
            .collect()
    }

    /// How many log lines there are (a mark for [`KamailioProcess::wait_line_after`]).
    pub fn mark(&self) -> usize {
        self.log.lock().expect("log").len()
    }

    /// The first log line after `mark` containing `containing`, waiting (at most `wait`)
    /// for it.
    pub fn wait_line_after(&self, mark: usize, containing: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            // One lock at a time: the log's length is read under the same guard.
            let found = {
                let log = self.log.lock().expect("log");
                log[mark.min(log.len())..]
                    .iter()
                    .find(|l| l.contains(containing))
                    .cloned()
            };
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KamailioProcess {
    fn drop(&mut self) {
        stop_process_group(&mut self.child);
    }
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Kamailio on 127.0.0.1:`port`, killed on drop; its log lines are collected.
pub struct Kamailio {
    process: KamailioProcess,
    pub port: u16,
    /// Its TLS port (listening only with [`Setup::tls`]).
    pub tls_port: u16,
}

/// What a test's Kamailio is set up with beyond the template's defaults.
#[derive(Default)]
pub struct Setup<'a> {
    /// Its TLS certificate and key (PEM, for 127.0.0.1): also listen on TLS.
    pub tls: Option<(&'a Path, &'a Path)>,
    /// A second account (user, password): an agent's phone registering to it.
    pub agent: Option<(&'a str, &'a str)>,
    /// The template's defines to set (`-A NAME`), such as `WITH_INVITE_AUTH`.
    pub defines: &'a [&'a str],
}

impl Kamailio {
    /// Starts Kamailio with the test configuration (account `user`/`password`) and waits
    /// until it answers OPTIONS.
    pub fn start(user: &str, password: &str) -> Kamailio {
        Kamailio::start_with(user, password, &Setup::default())
    }

    pub fn start_with(user: &str, password: &str, setup: &Setup) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_udp_port();
        let tls_port = free_tcp_port();
        let template = std::fs::read_to_string(root().join("tests/kamailio/registrar.cfg.in"))
            .expect("kamailio template");
        let tls_cfg = dir.path().join("tls.cfg");
        let cfg = template
            .replace("@@PORT@@", &port.to_string())
            .replace("@@TLSPORT@@", &tls_port.to_string())
            .replace("@@TLSCFG@@", &tls_cfg.display().to_string())
            .replace("@@DOMAIN@@", "trunk.test")
            .replace("@@USER@@", user)
            .replace("@@PASSWORD@@", password)
            .replace("@@AGENT@@", setup.agent.map_or("", |a| a.0))
            .replace("@@AGENT_PASSWORD@@", setup.agent.map_or("", |a| a.1));
        let path = dir.path().join("kamailio.cfg");
        std::fs::write(&path, cfg).expect("write cfg");
        let mut defines = Vec::new();
        if let Some((cert, key)) = setup.tls {
            // Server side: our certificate; client side (calls to the gateway's TLS contact):
            // the test checks the gateway's side of verification, not Kamailio's.
            let text = format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\ncertificate = {}\nprivate_key = {}\n\n\
                 [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\n",
                cert.display(),
                key.display()
            );
            std::fs::write(&tls_cfg, text).expect("write tls.cfg");
            defines.extend(["-A", "WITH_TLS"]);
        }
        if setup.agent.is_some() {
            defines.extend(["-A", "WITH_AGENT"]);
        }
        for name in setup.defines {
            defines.extend(["-A", name]);
        }
        let mut args = vec![OsString::from("-f"), path.into_os_string()];
        args.extend(defines.iter().map(OsString::from));
        let process = KamailioProcess::spawn(dir, args);
        process.wait_ready(port);
        Kamailio {
            process,
            port,
            tls_port,
        }
    }

    /// The first log line containing `containing`, waiting up to `wait` for it.
    pub fn wait_line(&self, containing: &str, wait: Duration) -> Option<String> {
        self.process.wait_line_after(0, containing, wait)
    }

    /// The log lines containing `containing`.
    pub fn lines(&self, containing: &str) -> Vec<String> {
        self.process.lines(containing)
    }
}

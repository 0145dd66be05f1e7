//! A Kamailio (Debian `kamailio`, GPL, run as a separate process on loopback) for the tests:
//! registrar and proxy with digest auth (`tests/kamailio/registrar.cfg.in`), optionally on TLS
//! too, with an agent's account and a 407 challenge to INVITEs for it; its log lines are
//! collected for the tests to read.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{free_udp_port, root};

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Kamailio on 127.0.0.1:`port`, killed on drop; its log lines are collected.
pub struct Kamailio {
    child: Child,
    pub port: u16,
    /// Its TLS port (listening only with [`Setup::tls`]).
    pub tls_port: u16,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
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
        let mut child = Command::new("kamailio")
            .arg("-f")
            .arg(&path)
            .args(&defines)
            .args(["-DD", "-E", "-Y"])
            .arg(dir.path())
            // Its own process group: dropping it stops its workers too.
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
        let k = Kamailio {
            child,
            port,
            tls_port,
            log,
            _dir: dir,
        };
        k.wait_ready();
        k
    }

    pub fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let deadline = Instant::now() + Duration::from_secs(15);
        let local = sock.local_addr().expect("addr");
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let options = format!(
                "OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKready{n}\r\n\
                 From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{p}>\r\nCall-ID: ready-{n}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                p = self.port,
                n = rand_suffix(),
            );
            let _ = sock.send_to(options.as_bytes(), ("127.0.0.1", self.port));
            if let Ok(n) = sock.recv(&mut buf) {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    return;
                }
            }
        }
        panic!(
            "kamailio did not answer OPTIONS on {}: {:?}",
            self.port,
            self.lines("")
        );
    }

    /// The first log line containing `containing`, waiting up to `wait` for it.
    pub fn wait_line(&self, containing: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(line) = self.lines(containing).into_iter().next() {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn lines(&self, containing: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(containing))
            .cloned()
            .collect()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        super::stop_process_group(&mut self.child);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

//! Shared by the end-to-end tests with real SIP peers: a `voicebot serve` process on loopback
//! and the peer-presence rule (a missing peer skips the test unless VOICEBOT_REQUIRE_PEERS is
//! set, as the test script does, so CI fails loudly instead).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a peer is usable; when not, says so, and fails when peers are required.
pub fn peer_available(name: &str, available: bool, install: &str) -> bool {
    if !available {
        assert!(
            std::env::var_os("VOICEBOT_REQUIRE_PEERS").is_none(),
            "{name} is required (VOICEBOT_REQUIRE_PEERS is set) but not installed ({install})"
        );
        eprintln!("skipped: {name} not installed ({install})");
    }
    available
}

/// A running `voicebot serve`, killed on drop.
pub struct Gateway {
    child: Child,
    pub port: u16,
    /// The ready line it printed (`voicebot ready: sip=... rtp=... [http=...]`).
    pub ready: String,
    records: tempfile::TempDir,
}

impl Gateway {
    pub fn start(rtp_ports: &str, extra: &[&str]) -> Gateway {
        let records = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_voicebot"))
            .current_dir(root())
            .args(["serve", "--sip", "127.0.0.1:0", "--rtp-ports", rtp_ports])
            .arg("--report-dir")
            .arg(records.path())
            .args(extra)
            .env("RUST_LOG", "voicebot_gateway=info,warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start voicebot serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading, so the gateway never writes into a closed pipe.
            let mut rest = String::new();
            while reader.read_line(&mut rest).unwrap_or(0) > 0 {
                rest.clear();
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("voicebot serve printed no ready line within 90 s");
        let port = line
            .split("sip=127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in ready line {line:?}"));
        Gateway {
            child,
            port,
            ready: line.trim().to_string(),
            records,
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The call records written so far, waiting up to `wait` for at least `n`.
    pub fn records(&self, n: usize, wait: Duration) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let found: Vec<serde_json::Value> = std::fs::read_dir(self.records.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect();
            if found.len() >= n || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether SIPp (Debian `sip-tester`) is usable (see [`peer_available`]).
pub fn have_sipp() -> bool {
    let ok = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    peer_available("sipp", ok, "apt-get install sip-tester")
}

/// Writes `caller.raw` in `dir`, headerless 8 kHz mu-law for SIPp's rtp_stream: `lead_s` of
/// silence, `text` spoken by espeak-ng, `tail_s` of silence.
pub fn spoken_ulaw(dir: &std::path::Path, text: &str, lead_s: u32, tail_s: u32) -> PathBuf {
    let wav = dir.join("speech.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng");
    assert!(status.success());
    let raw = dir.join("caller.raw");
    let status = Command::new("sox")
        .arg(&wav)
        .args(["-r", "8000", "-c", "1", "-t", "raw", "-e", "mu-law"])
        .arg(&raw)
        .args(["pad", &lead_s.to_string(), &tail_s.to_string()])
        .status()
        .expect("sox");
    assert!(status.success());
    raw
}

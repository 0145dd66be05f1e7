//! A `voicebot serve` with its HTTP side on (agent screen, admin API and console), started
//! with a configuration file of the test's own; killed on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::root;

pub struct HttpGateway {
    child: Child,
    /// The banner's lines (ready, agent screen, admin API, admin console).
    pub banner: Vec<String>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The SIP port it listens on.
    pub sip_port: u16,
}

impl HttpGateway {
    /// Starts `voicebot --config CONFIG serve` on loopback and waits (at most `wait`) for the
    /// banner's `lines` lines.
    pub fn start(config: &Path, rtp_ports: &str, lines: usize, wait: Duration) -> HttpGateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_voicebot"))
            .current_dir(root())
            .arg("--config")
            .arg(config)
            .args(["serve", "--sip", "127.0.0.1:0", "--rtp-ports", rtp_ports])
            .env("RUST_LOG", "voicebot_gateway=info,warn")
            .env_remove("VOICEBOT_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start voicebot serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            // Keeps reading after the banner, so the gateway never writes into a closed pipe.
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = tx.send(line.trim_end().to_string());
                line.clear();
            }
        });
        let deadline = std::time::Instant::now() + wait;
        let mut banner = Vec::new();
        while banner.len() < lines {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => banner.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("voicebot serve: no full banner within {wait:?}; got {banner:?}");
                }
            }
        }
        let http = banner[0]
            .split("http=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no http= in {:?}", banner[0]))
            .to_string();
        let sip_port = banner[0]
            .split("sip=127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no SIP port in {:?}", banner[0]));
        HttpGateway {
            child,
            banner,
            base: format!("http://{http}"),
            sip_port,
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// An HTTP client that reports 4xx/5xx as answers, not errors, with an overall deadline.
pub fn http_client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

impl Drop for HttpGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A `voicebot serve` with its HTTP side on (agent screen, admin API and console), started
//! with a configuration file of the test's own; killed on drop.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use super::{sip_port, spawn_serve};

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
        let (child, banner) = spawn_serve(Some(config), rtp_ports, &[], lines, wait);
        let http = banner[0]
            .split("http=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no http= in {:?}", banner[0]))
            .to_string();
        let sip_port = sip_port(&banner[0]);
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

    /// The gateway's process id (for /proc/PID).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

//! `[sip]` and `[media]`: where the gateway listens, who may call, how many calls it takes, and
//! the RTP side's ports, jitter buffer and barge-in settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config_file::ConfigError;
use crate::media::latch::{LatchConfig, LatchMode};
use crate::media::srtp::SrtpMode;

/// A SIP transport to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Udp,
    Tcp,
}

/// One digest-authentication account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipUser {
    pub user: String,
    pub password: String,
}

/// `[sip.auth]`: digest authentication of inbound INVITEs (off while `users` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipAuthConfig {
    pub realm: String,
    pub users: Vec<SipUser>,
    /// How long a challenge's nonce stays valid, seconds.
    pub nonce_ttl_s: u64,
    /// Failed digest attempts from one source address within `failure_window_s` after which
    /// its INVITEs get 403 with Retry-After, without a password check, until the window ends.
    pub max_failures: u32,
    pub failure_window_s: u64,
}

impl Default for SipAuthConfig {
    fn default() -> Self {
        Self {
            realm: "voicebot".into(),
            users: Vec::new(),
            nonce_ttl_s: 60,
            max_failures: 10,
            failure_window_s: 60,
        }
    }
}

/// `[sip.tls]`: SIP over TLS (RFC 3261 26, RFC 5630). The listener is off while `listen` is
/// empty; the client side (agent legs to `sips:` or `;transport=tls` targets) is always there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipTlsConfig {
    /// `ADDR:PORT` of the TLS listener ("" = none; port 0 picks a free one).
    pub listen: String,
    /// Our certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or
    /// SEC1). Needed for the listener; when set they are also our client certificate on
    /// connections we open (carriers that ask for mutual TLS).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA certificates (PEM) that callers' client certificates must chain to: when set, the
    /// listener requires and verifies a client certificate (mutual TLS); "" = none asked.
    pub client_ca_file: PathBuf,
    /// CA certificates (PEM) the certificates of peers we connect to must chain to; "" = the
    /// public web roots (Mozilla's list, built in).
    pub ca_file: PathBuf,
    /// Verify the certificate of peers we connect to (chain and name). false is for a lab
    /// with self-signed PBXs only: anyone on the path can then read and change the calls.
    pub verify_server: bool,
    /// CRLF keep-alive pings (RFC 5626 4.4.1) on idle TCP and TLS connections the gateway
    /// opened, every this many seconds without traffic (0 = none).
    pub keepalive_interval_s: u64,
}

impl Default for SipTlsConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            verify_server: true,
            keepalive_interval_s: 90,
        }
    }
}

impl SipTlsConfig {
    /// The listener's address, when on.
    pub fn listen_addr(&self) -> Option<Result<SocketAddr, String>> {
        let listen = self.listen.trim();
        (!listen.is_empty()).then(|| {
            listen
                .parse()
                .map_err(|_| format!("`{listen}` is not ADDR:PORT, e.g. \"0.0.0.0:5061\""))
        })
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(Err(e)) = self.listen_addr() {
            return Err(("sip.tls.listen", e));
        }
        let empty = |p: &Path| p.as_os_str().is_empty();
        if self.listen_addr().is_some() && (empty(&self.cert_file) || empty(&self.key_file)) {
            return Err((
                "sip.tls.cert_file",
                "the TLS listener needs cert_file and key_file".into(),
            ));
        }
        if empty(&self.cert_file) != empty(&self.key_file) {
            return Err((
                "sip.tls.key_file",
                "cert_file and key_file go together: set both or neither".into(),
            ));
        }
        if !empty(&self.client_ca_file) && self.listen_addr().is_none() {
            return Err((
                "sip.tls.client_ca_file",
                "asks for client certificates on a listener that is off (set listen)".into(),
            ));
        }
        if self.keepalive_interval_s > 86_400 {
            return Err((
                "sip.tls.keepalive_interval_s",
                "must be at most 86400 seconds (0 = off)".into(),
            ));
        }
        if !self.verify_server {
            tracing::warn!("[sip.tls] verify_server = false: peers' certificates are not checked, so anyone on the path can read and change calls");
        }
        Ok(())
    }
}

/// `[sip]`: signalling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Address and port for SIP (UDP and TCP share the port).
    pub listen: SocketAddr,
    pub transports: Vec<TransportKind>,
    /// Calls (ringing or answered) taken at once; more get 486 Busy Here.
    pub max_calls: usize,
    /// Shortest RFC 4028 session interval accepted (seconds); shorter asks get 422.
    pub min_session_expires: u32,
    /// Draining (the first SIGTERM/SIGINT, or `POST /api/drain`): new INVITEs and OPTIONS get
    /// 503 while the calls in progress go on to their end; after this many seconds the calls
    /// still in progress are hung up and the gateway exits.
    pub drain_timeout_s: u64,
    /// Source addresses or CIDR ranges allowed to call; empty means everyone.
    pub allow_from: Vec<String>,
    pub auth: SipAuthConfig,
    /// Directory for one JSON record per finished call ("" = none).
    pub report_dir: PathBuf,
    /// The journal of calls in progress, so a crash loses no call (see [`crate::journal`];
    /// "" = none). One gateway per file.
    pub journal: PathBuf,
    /// SIP over TCP: open connections at most, in total and per source address (more are
    /// closed as they are accepted); a connection whose message has not completed within
    /// `tcp_header_timeout_s` of its first byte, or that sends nothing for
    /// `tcp_idle_timeout_s`, is closed.
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_source: usize,
    pub tcp_header_timeout_s: u64,
    pub tcp_idle_timeout_s: u64,
    /// The `Server` and `User-Agent` header value ("" = no such header). The default names no
    /// version, so a scanner learns less about which bugs to try.
    pub user_agent: String,
    /// DNS servers for the RFC 3263 lookups of agent extensions (NAPTR, SRV, A/AAAA), each
    /// `IP` (port 53) or `IP:port`; empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<String>,
    /// How long one extension's whole lookup may take, ms (a dead DNS server must not hold
    /// the caller).
    pub dns_timeout_ms: u64,
    pub tls: SipTlsConfig,
    /// `[[sip.trunks]]`: trunks and PBXs (registration, matching of their calls, the header
    /// that carries the called number); see [`crate::config::trunks`].
    pub trunks: Vec<super::trunks::TrunkConfig>,
}

/// A DNS server from `[sip] dns_servers`: `IP` (port 53) or `IP:port`.
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{s}` is not an IP address or IP:port"))
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            transports: vec![TransportKind::Udp, TransportKind::Tcp],
            max_calls: 200,
            min_session_expires: 90,
            drain_timeout_s: 300,
            allow_from: Vec::new(),
            auth: SipAuthConfig::default(),
            report_dir: PathBuf::new(),
            journal: PathBuf::from("data/calls-in-progress.sqlite3"),
            tcp_max_connections: 1024,
            tcp_max_connections_per_source: 32,
            tcp_header_timeout_s: 10,
            tcp_idle_timeout_s: 300,
            user_agent: "voicebot-gateway".into(),
            dns_servers: Vec::new(),
            dns_timeout_ms: 2000,
            tls: SipTlsConfig::default(),
            trunks: Vec::new(),
        }
    }
}

/// `[media]`: RTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// RTP ports (even ones for RTP, the next odd one for RTCP), inclusive.
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// A call with no RTP from the caller for this long is hung up (0 disables).
    pub no_rtp_timeout_s: u64,
    /// Jitter buffer delay bounds.
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    /// Let the caller interrupt the bot.
    pub barge_in: bool,
    /// Caller speech needed, while the bot talks, before playback stops.
    pub barge_in_min_speech_ms: u32,
    /// Caller level above which a frame counts as speech for barge-in, dBFS.
    pub barge_in_floor_dbfs: f32,
    /// How far below the bot's own level its echo is assumed to come back, dB: caller audio
    /// within this margin of the bot's output level is treated as echo, not speech.
    pub echo_return_loss_db: f32,
    /// Which sources may latch a call leg's RTP before its first packet (`media::latch`):
    /// "strict" (exactly the SDP address), "signalled-ip" (the SDP address, or any port on
    /// the SDP's or the signalling peer's IP: NAT), "any" (unsafe: whoever sends first).
    pub latching: LatchMode,
    /// How long the latched stream must be silent before a new SSRC from the same address
    /// takes over, ms.
    pub ssrc_change_after_ms: u32,
    /// SRTP with SDES keys (RFC 4568) for inbound calls: "off" (plain RTP only; an RTP/SAVP
    /// offer gets 488), "optional" (an RTP/SAVP offer is answered with keys, a plain one
    /// plainly), "required" (only RTP/SAVP; a plain offer gets 488).
    pub srtp: SrtpMode,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            rtp_port_min: 20000,
            rtp_port_max: 29999,
            no_rtp_timeout_s: 30,
            jitter_min_ms: 40,
            jitter_max_ms: 200,
            barge_in: true,
            barge_in_min_speech_ms: 120,
            barge_in_floor_dbfs: -40.0,
            echo_return_loss_db: 12.0,
            latching: LatchMode::SignalledIp,
            ssrc_change_after_ms: 500,
            srtp: SrtpMode::Optional,
        }
    }
}

impl SipConfig {
    pub fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: &str| Err(ConfigError::invalid(file, text, field, reason));
        if self.transports.is_empty() {
            return bad(
                "sip.transports",
                "must list at least one of \"udp\", \"tcp\"",
            );
        }
        if self.max_calls == 0 || self.max_calls > 10_000 {
            return bad("sip.max_calls", "must be between 1 and 10000");
        }
        if !(90..=86_400).contains(&self.min_session_expires) {
            return bad(
                "sip.min_session_expires",
                "must be between 90 (RFC 4028's floor) and 86400 seconds",
            );
        }
        if self.drain_timeout_s > 86_400 {
            return bad("sip.drain_timeout_s", "must be at most 86400 seconds");
        }
        if self.user_agent.len() > 200 || self.user_agent.chars().any(char::is_control) {
            return bad(
                "sip.user_agent",
                "must be at most 200 characters, without control characters",
            );
        }
        if let Err(e) = crate::sip::auth::AllowList::parse(&self.allow_from) {
            return bad("sip.allow_from", &e.to_string());
        }
        if self
            .auth
            .users
            .iter()
            .any(|u| u.user.is_empty() || u.password.is_empty())
        {
            return bad(
                "sip.auth.users",
                "every user needs a non-empty user and password",
            );
        }
        if self.auth.nonce_ttl_s < 10 {
            return bad("sip.auth.nonce_ttl_s", "must be at least 10 seconds");
        }
        if self.auth.max_failures == 0 || self.auth.failure_window_s == 0 {
            return bad(
                "sip.auth.max_failures",
                "max_failures and failure_window_s must be at least 1",
            );
        }
        if self.tcp_max_connections == 0
            || self.tcp_max_connections_per_source == 0
            || self.tcp_max_connections_per_source > self.tcp_max_connections
        {
            return bad(
                "sip.tcp_max_connections_per_source",
                "TCP connection caps must be at least 1, the per-source one at most the total",
            );
        }
        if self.tcp_header_timeout_s == 0 || self.tcp_idle_timeout_s < self.tcp_header_timeout_s {
            return bad(
                "sip.tcp_header_timeout_s",
                "must be at least 1 second and at most tcp_idle_timeout_s",
            );
        }
        for server in &self.dns_servers {
            if let Err(reason) = parse_dns_server(server) {
                return bad("sip.dns_servers", &reason);
            }
        }
        if !(100..=30_000).contains(&self.dns_timeout_ms) {
            return bad("sip.dns_timeout_ms", "must be between 100 and 30000 ms");
        }
        if let Err((field, reason)) = self.tls.validate() {
            return bad(field, &reason);
        }
        super::trunks::validate(&self.trunks, self.tls.listen_addr().is_some(), file, text)
    }
}

impl MediaConfig {
    pub fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: &str| Err(ConfigError::invalid(file, text, field, reason));
        if self.rtp_port_min < 1024 || !self.rtp_port_min.is_multiple_of(2) {
            return bad("media.rtp_port_min", "must be an even port of 1024 or more");
        }
        if self.rtp_port_max <= self.rtp_port_min {
            return bad("media.rtp_port_max", "must be above rtp_port_min");
        }
        if self.jitter_min_ms < 20 || self.jitter_min_ms > self.jitter_max_ms {
            return bad(
                "media.jitter_min_ms",
                "must be at least 20 and at most jitter_max_ms",
            );
        }
        if self.jitter_max_ms > 1000 {
            return bad("media.jitter_max_ms", "must be at most 1000 ms");
        }
        if !(40..=2000).contains(&self.barge_in_min_speech_ms) {
            return bad(
                "media.barge_in_min_speech_ms",
                "must be between 40 and 2000 ms",
            );
        }
        if !(-80.0..=0.0).contains(&self.barge_in_floor_dbfs) {
            return bad(
                "media.barge_in_floor_dbfs",
                "must be between -80 and 0 dBFS",
            );
        }
        if !(0.0..=60.0).contains(&self.echo_return_loss_db) {
            return bad("media.echo_return_loss_db", "must be between 0 and 60 dB");
        }
        if !(20..=60_000).contains(&self.ssrc_change_after_ms) {
            return bad(
                "media.ssrc_change_after_ms",
                "must be between 20 and 60000 ms",
            );
        }
        if self.latching == LatchMode::Any {
            tracing::warn!(
                "[media] latching = \"any\": a stranger who sends RTP first gets the call's audio"
            );
        }
        Ok(())
    }

    /// The latching rules for every call leg.
    pub fn latch(&self) -> LatchConfig {
        LatchConfig {
            mode: self.latching,
            ssrc_change_after: std::time::Duration::from_millis(u64::from(
                self.ssrc_change_after_ms,
            )),
        }
    }

    /// The number of RTP port pairs in the range.
    pub fn port_pairs(&self) -> usize {
        usize::from((self.rtp_port_max - self.rtp_port_min) / 2) + 1
    }
}

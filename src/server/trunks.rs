//! The signalling task's side of `[[sip.trunks]]`: it drives one sans-IO
//! [`Registration`] per registering trunk (REGISTERs go out on the SIP socket, their
//! responses are taken off the same socket before the endpoint sees them), keeps the
//! [`TrunkBoard`] and the metrics up to date, and tells which trunk an incoming call belongs
//! to and which number it called.
//!
//! A call is a trunk's when it comes from one of the trunk's `addresses`, or when its
//! Request-URI is the Contact the gateway registered with that trunk (the registrar routed
//! it to us), the user part compared.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::admin::trunks::{TrunkBoard, TrunkEntry};
use crate::config::trunks::{CalledSource, TrunkConfig};
use crate::observe::metrics;
use crate::sip::digest_client::ClientCredentials;
use crate::sip::endpoint::{CalledHeaders, OutboundAuth};
use crate::sip::locate::Transport;
use crate::sip::message::{parse_sip_uri, SipMessage};
use crate::sip::registration::{FailureKind, RegEvent, RegState, Registration, RegistrationConfig};

/// A registering trunk: its client and where its REGISTERs go.
struct Registered {
    reg: Registration,
    /// The registrar's addresses in RFC 3263 order; REGISTERs go to `targets[at]`.
    targets: Vec<SocketAddr>,
    at: usize,
    /// Addresses that failed one after another in this round (a failure with none left to
    /// try waits for the back-off, then starts again from the first address).
    failed_in_round: usize,
    transport: RegTransport,
    /// The connection (TCP or TLS) the last REGISTER went on, to fail it when that
    /// connection fails.
    conn: Option<u64>,
    failures: u64,
}

impl Registered {
    /// After a failed attempt: a timeout or a 503 moves to the registrar's next address and
    /// tries it at once (RFC 3263 4.3), until every address failed in this round; then the
    /// back-off runs and the next round starts from the first (most preferred) address.
    fn fail_over(&mut self, kind: FailureKind, now: Instant) {
        if !kind.fails_over() {
            return;
        }
        self.failed_in_round = self.failed_in_round.saturating_add(1);
        let from = self.targets.get(self.at).copied();
        if self.failed_in_round < self.targets.len() {
            self.at = (self.at + 1) % self.targets.len();
            let to = self.targets.get(self.at).copied();
            tracing::warn!(trunk = %self.reg.trunk(), failed = ?from, next = ?to, reason = kind.label(), "registrar address failed; trying the next one");
            self.reg.fail_over(now);
        } else {
            self.failed_in_round = 0;
            self.at = 0;
        }
    }
}

/// How a trunk's REGISTERs travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegTransport {
    Udp,
    Tcp,
    /// Over TLS, the registrar's certificate naming this host (the outbound proxy's or
    /// registrar's, RFC 5922 7.2).
    Tls(ServerName<'static>),
}

impl RegTransport {
    /// `udp`, `tcp` or `tls`, as the config and the admin API write it.
    fn name(&self) -> &'static str {
        match self {
            RegTransport::Udp => "udp",
            RegTransport::Tcp => "tcp",
            RegTransport::Tls(_) => "tls",
        }
    }
}

/// Every trunk, and the registrations of those that register.
pub(crate) struct Trunks {
    configs: Vec<TrunkConfig>,
    /// Parallel to `configs`: the registration when the trunk registers and could start.
    regs: Vec<Option<Registered>>,
    board: Arc<TrunkBoard>,
    /// The TLS listener's port: trunks registering over TLS give it in their Contact.
    tls_port: Option<u16>,
}

/// A REGISTER to send.
pub(crate) struct TrunkTransmit {
    /// The trunk's index (for [`Trunks::sent_on`]).
    pub index: usize,
    pub to: SocketAddr,
    pub transport: RegTransport,
    pub bytes: Vec<u8>,
}

/// The trunk an incoming call was matched to, and the number it called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrunkMatch {
    pub trunk: String,
    pub called: Option<String>,
    pub source: Option<CalledSource>,
    pub flow: Option<String>,
}

impl Trunks {
    /// Prepares the board; registrations start with [`Trunks::start`].
    pub fn new(configs: Vec<TrunkConfig>, board: Arc<TrunkBoard>, tls_port: Option<u16>) -> Trunks {
        for t in &configs {
            board.set(TrunkEntry {
                name: t.name.clone(),
                registers: t.registers(),
                state: if t.registers() {
                    "unregistered"
                } else {
                    "address-only"
                },
                ..TrunkEntry::default()
            });
        }
        let regs = configs.iter().map(|_| None).collect();
        Trunks {
            configs,
            regs,
            board,
            tls_port,
        }
    }

    /// Whether any trunk registers (responses need looking at).
    pub fn any_registering(&self) -> bool {
        self.regs.iter().any(Option::is_some)
    }

    /// Starts trunk `index`'s registration towards `targets` (the registrar's addresses in
    /// the order to try them); `local_ip` is our address as the first target sees it and
    /// `sip_port` our UDP/TCP port (for Via and Contact).
    pub fn start(
        &mut self,
        index: usize,
        targets: Vec<SocketAddr>,
        local_ip: IpAddr,
        sip_port: u16,
        user_agent: &str,
        now: Instant,
    ) {
        let Some(t) = self.configs.get(index) else {
            return;
        };
        let Some(&first) = targets.first() else {
            return;
        };
        let (transport, port, via) = match t.transport.as_str() {
            "tcp" => (RegTransport::Tcp, sip_port, "TCP"),
            "tls" => {
                let name = tls_name(t);
                match (name, self.tls_port) {
                    (Some(name), Some(port)) => (RegTransport::Tls(name), port, "TLS"),
                    (None, _) => {
                        let why = "the registrar's host is no name a certificate can carry";
                        return self.unresolved(index, why.into());
                    }
                    // Refused at load: a TLS trunk needs the listener for its calls.
                    (_, None) => {
                        return self.unresolved(index, "the TLS listener is off".into());
                    }
                }
            }
            _ => (RegTransport::Udp, sip_port, "UDP"),
        };
        let host = match local_ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let sent_by = format!("{host}:{port}");
        let mut contact = format!("sip:{}@{sent_by}", t.user);
        if transport != RegTransport::Udp {
            contact.push_str(";transport=");
            contact.push_str(transport.name());
        }
        let credentials = t.resolved_password().map(|password| ClientCredentials {
            user: t.digest_user().to_string(),
            password,
        });
        let mut reg = Registration::new(RegistrationConfig {
            trunk: t.name.clone(),
            registrar: t.registrar.clone(),
            aor: format!("sip:{}@{}", t.user, t.aor_domain()),
            contact,
            via_transport: via,
            sent_by,
            reliable: transport != RegTransport::Udp,
            expires: t.expires_s,
            user_agent: user_agent.to_string(),
            credentials,
            retry_min: Duration::from_secs(t.retry_min_s),
            retry_max: Duration::from_secs(t.retry_max_s),
        });
        tracing::info!(trunk = %t.name, registrar = %t.registrar, target = %first, transport = via, "registering");
        reg.start(now);
        if let Some(slot) = self.regs.get_mut(index) {
            *slot = Some(Registered {
                reg,
                targets,
                at: 0,
                failed_in_round: 0,
                transport,
                conn: None,
                failures: 0,
            });
        }
        self.publish(index);
    }

    /// A trunk whose registrar could not be resolved: shown as failed (no retry; the address
    /// is looked up at start).
    pub fn unresolved(&mut self, index: usize, why: String) {
        if let Some(t) = self.configs.get(index) {
            tracing::error!(trunk = %t.name, error = %why, "cannot register");
            metrics::register_failed(&t.name, "resolve");
            self.board.set(TrunkEntry {
                name: t.name.clone(),
                registers: true,
                state: "failed",
                last_error: Some(why),
                failures: 1,
                ..TrunkEntry::default()
            });
        }
    }

    /// Takes a response that answers one of our REGISTERs; false when it is not ours.
    pub fn handle_response(&mut self, msg: &SipMessage, now: Instant) -> bool {
        let Some(index) = self
            .regs
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.reg.owns(msg)))
        else {
            return false;
        };
        if let Some(Some(r)) = self.regs.get_mut(index) {
            r.reg.handle_response(msg, now);
        }
        self.after(index, now);
        true
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.regs
            .iter()
            .flatten()
            .filter_map(|r| r.reg.next_timeout())
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for index in 0..self.regs.len() {
            let due = self
                .regs
                .get(index)
                .and_then(|r| r.as_ref())
                .and_then(|r| r.reg.next_timeout())
                .is_some_and(|at| at <= now);
            if due {
                if let Some(Some(r)) = self.regs.get_mut(index) {
                    r.reg.handle_timeout(now);
                }
                self.after(index, now);
            }
        }
    }

    /// Removes every binding (`Expires: 0`) when the gateway stops.
    pub fn unregister_all(&mut self, now: Instant) {
        for index in 0..self.regs.len() {
            if let Some(Some(r)) = self.regs.get_mut(index) {
                r.reg.unregister(now);
            }
            self.after(index, now);
        }
    }

    /// The REGISTERs to send.
    pub fn poll_transmit(&mut self) -> Option<TrunkTransmit> {
        self.regs.iter_mut().enumerate().find_map(|(index, r)| {
            let r = r.as_mut()?;
            let to = r.targets.get(r.at).copied()?;
            r.reg.poll_transmit().map(|bytes| TrunkTransmit {
                index,
                to,
                transport: r.transport.clone(),
                bytes,
            })
        })
    }

    /// Trunk `index`'s REGISTER went on connection `conn`.
    pub fn sent_on(&mut self, index: usize, conn: u64) {
        if let Some(Some(r)) = self.regs.get_mut(index) {
            r.conn = Some(conn);
        }
    }

    /// Connection `conn` could not be opened, or closed: a REGISTER waiting on it fails now
    /// (and moves to the registrar's next address) instead of at its 32 s timeout.
    pub fn connection_failed(&mut self, conn: u64, why: &str, now: Instant) {
        for index in 0..self.regs.len() {
            if let Some(Some(r)) = self.regs.get_mut(index) {
                if r.conn == Some(conn) {
                    r.conn = None;
                    r.reg.transport_failed(why, now);
                    self.after(index, now);
                }
            }
        }
    }

    /// Events into metrics and logs, failover to the registrar's next address, state onto
    /// the board.
    fn after(&mut self, index: usize, now: Instant) {
        let Some(Some(r)) = self.regs.get_mut(index) else {
            return;
        };
        while let Some(event) = r.reg.poll_event() {
            match event {
                RegEvent::Failed { kind, .. } => {
                    r.failures = r.failures.saturating_add(1);
                    metrics::register_failed(r.reg.trunk(), kind.label());
                    r.fail_over(kind, now);
                }
                RegEvent::Registered { .. } => r.failed_in_round = 0,
                RegEvent::Unregistered => {}
            }
        }
        self.publish(index);
    }

    /// Where trunk `index`'s REGISTERs go now (tests).
    #[cfg(test)]
    fn target(&self, index: usize) -> Option<SocketAddr> {
        let r = self.regs.get(index)?.as_ref()?;
        r.targets.get(r.at).copied()
    }

    fn publish(&self, index: usize) {
        let Some(Some(r)) = self.regs.get(index) else {
            return;
        };
        let (until, retry) = match r.reg.state() {
            RegState::Registered { until } => (Some(*until), None),
            RegState::Failed { retry_at, .. } => (None, Some(*retry_at)),
            _ => (None, None),
        };
        metrics::trunk_registered(r.reg.trunk(), until.is_some());
        self.board.set(TrunkEntry {
            name: r.reg.trunk().to_string(),
            registers: true,
            state: r.reg.state().name(),
            contact: Some(r.reg.contact().to_string()),
            target: r
                .targets
                .get(r.at)
                .map(|a| format!("{}:{a}", r.transport.name())),
            registered_until: until,
            next_retry: retry,
            last_error: r.reg.last_error().map(str::to_string),
            failures: r.failures,
        });
    }

    /// The credentials of the trunk an INVITE of ours to `target` goes to: a registering
    /// trunk whose registrar, AOR domain or outbound proxy is the target's host (and port,
    /// when both name one). A PBX challenges the calls to its extensions with the account the
    /// gateway registered; None when no trunk matches or it has no password.
    pub fn credentials_for(&self, target: &str) -> Option<OutboundAuth> {
        let uri = parse_sip_uri(target)?;
        let same = |host: &str, port: Option<u16>| {
            let h = |x: &str| {
                x.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase()
            };
            h(host) == h(uri.host) && (port.is_none() || uri.port.is_none() || port == uri.port)
        };
        let t = self.configs.iter().filter(|t| t.registers()).find(|t| {
            let registrar = parse_sip_uri(&t.registrar);
            let proxy_uri = t.register_uri();
            let proxy = (!t.outbound_proxy.is_empty())
                .then(|| parse_sip_uri(&proxy_uri))
                .flatten();
            registrar.is_some_and(|r| same(r.host, r.port))
                || same(&t.aor_domain(), None)
                || proxy.is_some_and(|p| same(p.host, p.port))
        })?;
        let password = t.resolved_password()?;
        tracing::debug!(trunk = %t.name, %target, "the trunk's credentials answer challenges on this call");
        Some(OutboundAuth {
            owner: format!("trunk {}", t.name),
            credentials: ClientCredentials {
                user: t.digest_user().to_string(),
                password,
            },
        })
    }

    /// The trunk `call` belongs to: by source address first, then by the Request-URI being
    /// a contact we registered (same user, host and port).
    pub fn match_call(&self, source: IpAddr, headers: &CalledHeaders) -> Option<TrunkMatch> {
        let by_address = self.configs.iter().position(|t| t.matches_address(source));
        let by_contact = || {
            let ruri = parse_sip_uri(&headers.request_uri)?;
            self.regs.iter().position(|r| {
                r.as_ref().is_some_and(|r| {
                    parse_sip_uri(r.reg.contact()).is_some_and(|c| {
                        c.user.is_some()
                            && c.user == ruri.user
                            && c.port.unwrap_or(5060) == ruri.port.unwrap_or(5060)
                    })
                })
            })
        };
        let index = by_address.or_else(by_contact)?;
        let t = self.configs.get(index)?;
        let (called, source) = match t.called_number(headers) {
            Some((n, s)) => (Some(n), Some(s)),
            None => (None, None),
        };
        Some(TrunkMatch {
            trunk: t.name.clone(),
            called,
            source,
            flow: (!t.flow.is_empty()).then(|| t.flow.clone()),
        })
    }
}

/// Locates where each registering trunk's REGISTERs go, once at start: its `outbound_proxy`,
/// else its registrar, over its transport, per RFC 3263 (NAPTR, SRV, A/AAAA), bounded by
/// `[sip] dns_timeout_ms` per trunk.
pub(crate) async fn resolve_targets(
    configs: &[TrunkConfig],
    resolver: &super::dns::SipResolver,
) -> Vec<(usize, Result<Vec<SocketAddr>, String>)> {
    let mut out = Vec::new();
    for (index, t) in configs.iter().enumerate().filter(|(_, t)| t.registers()) {
        let transport = match t.transport.as_str() {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => Transport::Udp,
        };
        let located = resolver
            .locate_registrar(&t.register_uri(), transport)
            .await;
        out.push((index, located));
    }
    out
}

/// The name the registrar's certificate must carry: the outbound proxy's host when REGISTERs
/// go there, else the registrar's.
fn tls_name(t: &TrunkConfig) -> Option<ServerName<'static>> {
    let uri = t.register_uri();
    let host = parse_sip_uri(&uri)?.host;
    super::tls::server_name(host)
}

/// The trunks that set their own `srtp`, by the source addresses of their calls, for the
/// endpoint's per-call SRTP mode (entries that cannot be read were refused at load).
pub(super) fn srtp_by_source(
    trunks: &[crate::config::trunks::TrunkConfig],
) -> Vec<(crate::sip::auth::AllowList, crate::media::srtp::SrtpMode)> {
    trunks
        .iter()
        .filter(|t| !t.addresses.is_empty())
        .filter_map(|t| {
            let mode = crate::media::srtp::SrtpMode::from_word(&t.srtp)?;
            let sources = crate::sip::auth::AllowList::parse(&t.addresses).ok()?;
            Some((sources, mode))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(from: &str, ruri: &str, to: &str) -> (IpAddr, CalledHeaders) {
        let ip = from.parse::<SocketAddr>().expect("addr").ip();
        let h = CalledHeaders {
            request_uri: ruri.into(),
            to: to.into(),
            ..CalledHeaders::default()
        };
        (ip, h)
    }

    fn addr(a: &str) -> SocketAddr {
        a.parse().expect("addr")
    }

    fn ip() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn registering(transport: &str) -> TrunkConfig {
        TrunkConfig {
            name: "carrier".into(),
            registrar: "sip:carrier.test".into(),
            user: "bot".into(),
            password: "x".into(),
            transport: transport.into(),
            ..TrunkConfig::default()
        }
    }

    fn sent(trunks: &mut Trunks) -> (TrunkTransmit, SipMessage) {
        let t = trunks.poll_transmit().expect("a REGISTER");
        let msg = SipMessage::parse(&t.bytes).expect("parses");
        (t, msg)
    }

    fn answer(req: &SipMessage, code: u16) -> SipMessage {
        let r = SipMessage::response_to(req, code, "Reason", Some("t1"));
        SipMessage::parse(&r.to_bytes()).expect("parses")
    }

    #[test]
    fn a_503_or_a_timeout_moves_to_the_registrars_next_address_at_once() {
        let board = Arc::new(TrunkBoard::new());
        let mut trunks = Trunks::new(vec![registering("udp")], Arc::clone(&board), None);
        let t0 = Instant::now();
        let (a, b) = (addr("127.0.0.2:5060"), addr("127.0.0.3:5060"));
        trunks.start(0, vec![a, b], ip(), 5070, "ua", t0);
        let (t, first) = sent(&mut trunks);
        assert_eq!(t.to, a);
        assert_eq!(
            board.snapshot()[0].target.as_deref(),
            Some("udp:127.0.0.2:5060")
        );
        // 503 from the first address: the REGISTER goes to the second one now.
        assert!(trunks.handle_response(&answer(&first, 503), t0));
        let (t, second) = sent(&mut trunks);
        assert_eq!(t.to, b);
        assert_eq!(trunks.target(0), Some(b));
        assert_eq!(board.snapshot()[0].state, "registering");
        // The second times out too: every address failed, so the back-off runs, and the next
        // round starts from the first address.
        let mut now = t0;
        while trunks.poll_transmit().is_some() || board.snapshot()[0].state != "failed" {
            now = trunks.next_timeout().expect("timer");
            trunks.handle_timeout(now);
            assert!(now < t0 + Duration::from_secs(60), "timer F fires");
        }
        assert_ne!(second.via_branch(), first.via_branch());
        assert_eq!(trunks.target(0), Some(a));
        let retry = trunks.next_timeout().expect("retry");
        assert!(
            retry >= now + Duration::from_secs(30),
            "back-off, not a loop"
        );
        trunks.handle_timeout(retry);
        let (t, third) = sent(&mut trunks);
        assert_eq!(t.to, a);
        // A refusal of the credentials is not the address's fault: no failover.
        let mut r = answer(&third, 403);
        r = SipMessage::parse(&r.to_bytes()).expect("parses");
        trunks.handle_response(&r, retry);
        assert!(trunks.poll_transmit().is_none());
        assert_eq!(trunks.target(0), Some(a));
    }

    #[test]
    fn calls_to_a_trunks_host_answer_challenges_with_its_account() {
        let board = Arc::new(TrunkBoard::new());
        let pbx = TrunkConfig {
            outbound_proxy: "127.0.0.1:5080".into(),
            auth_user: "gw-auth".into(),
            ..registering("udp")
        };
        let address_only = TrunkConfig {
            name: "other".into(),
            addresses: vec!["192.0.2.0/24".into()],
            ..TrunkConfig::default()
        };
        let trunks = Trunks::new(vec![address_only, pbx], board, None);
        for target in ["sip:2001@carrier.test", "sip:2001@127.0.0.1:5080"] {
            let auth = trunks.credentials_for(target).expect(target);
            assert_eq!(auth.owner, "trunk carrier");
            assert_eq!(auth.credentials.user, "gw-auth");
            assert_eq!(auth.credentials.password, "x");
        }
        assert!(trunks.credentials_for("sip:2001@127.0.0.1:5090").is_none());
        assert!(trunks.credentials_for("sip:2001@pbx.elsewhere").is_none());
        assert!(trunks.credentials_for("not a uri").is_none());
    }

    #[test]
    fn registering_over_tls_gives_the_tls_listeners_contact() {
        let board = Arc::new(TrunkBoard::new());
        let mut trunks = Trunks::new(vec![registering("tls")], Arc::clone(&board), Some(5061));
        trunks.start(
            0,
            vec![addr("127.0.0.2:5061")],
            ip(),
            5070,
            "ua",
            Instant::now(),
        );
        let (t, msg) = sent(&mut trunks);
        assert_eq!(
            t.transport,
            RegTransport::Tls(ServerName::try_from("carrier.test").expect("name"))
        );
        assert!(msg
            .header("Via")
            .is_some_and(|v| v.starts_with("SIP/2.0/TLS 127.0.0.1:5061;")));
        assert_eq!(
            msg.header("Contact"),
            Some("<sip:bot@127.0.0.1:5061;transport=tls>;expires=600")
        );
        // The connection cannot be opened: the next address at once, not after 32 s.
        let mut two = Trunks::new(
            vec![registering("tls")],
            Arc::new(TrunkBoard::new()),
            Some(5061),
        );
        let (a, b) = (addr("127.0.0.2:5061"), addr("127.0.0.3:5061"));
        two.start(0, vec![a, b], ip(), 5070, "ua", Instant::now());
        let (t, _) = sent(&mut two);
        assert_eq!((t.index, t.to), (0, a));
        two.sent_on(t.index, 7);
        two.connection_failed(8, "another connection", Instant::now());
        assert!(two.poll_transmit().is_none());
        two.connection_failed(7, "refused", Instant::now());
        let (t, _) = sent(&mut two);
        assert_eq!(t.to, b);
        // Without the listener (refused at load anyway) the trunk shows as failed.
        let mut off = Trunks::new(vec![registering("tls")], Arc::clone(&board), None);
        off.start(
            0,
            vec![addr("127.0.0.2:5061")],
            ip(),
            5070,
            "ua",
            Instant::now(),
        );
        assert!(off.poll_transmit().is_none());
        assert_eq!(board.snapshot()[0].state, "failed");
    }

    impl Trunks {
        fn match_call_pair(&self, (ip, h): (IpAddr, CalledHeaders)) -> Option<TrunkMatch> {
            self.match_call(ip, &h)
        }
    }

    #[test]
    fn calls_are_matched_by_address_or_registered_contact() {
        let board = Arc::new(TrunkBoard::new());
        let pbx = TrunkConfig {
            name: "pbx".into(),
            registrar: "sip:pbx.test".into(),
            user: "bot".into(),
            password: "x".into(),
            flow: "support".into(),
            ..TrunkConfig::default()
        };
        let carrier = TrunkConfig {
            name: "carrier".into(),
            addresses: vec!["192.0.2.0/24".into()],
            ..TrunkConfig::default()
        };
        let mut trunks = Trunks::new(vec![pbx, carrier], Arc::clone(&board), None);
        assert_eq!(board.snapshot()[1].state, "address-only");
        let now = Instant::now();
        trunks.start(0, vec![addr("127.0.0.1:5080")], ip(), 5070, "ua", now);
        assert!(trunks.poll_transmit().is_some());
        assert_eq!(board.snapshot()[0].state, "registering");
        let m = trunks
            .match_call_pair(call(
                "127.0.0.1:5080",
                "sip:bot@127.0.0.1:5070",
                "<sip:+4930111@pbx.test>",
            ))
            .expect("by contact");
        assert_eq!(m.trunk, "pbx");
        assert_eq!(m.called.as_deref(), Some("+4930111"));
        assert_eq!(m.source, Some(CalledSource::To));
        assert_eq!(m.flow.as_deref(), Some("support"));
        let m = trunks
            .match_call_pair(call("192.0.2.7:5060", "sip:4930999@gw", "<sip:x@gw>"))
            .expect("by address");
        assert_eq!(m.trunk, "carrier");
        assert_eq!(m.called.as_deref(), Some("4930999"));
        assert!(trunks
            .match_call_pair(call(
                "198.51.100.1:5060",
                "sip:someone@127.0.0.1:5070",
                "<sip:x@gw>"
            ))
            .is_none());
    }
}

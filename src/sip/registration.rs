//! Registering the gateway with a trunk's registrar or a PBX (RFC 3261 section 10), sans-IO.
//!
//! Many trunk providers and every PBX extension send calls only to a user agent that has
//! registered: REGISTER with digest authentication, refreshed before the binding expires, and
//! registered again after a failure. One [`Registration`] does that for one trunk: fed the
//! responses to its REGISTERs and `Instant`s, it says what to send
//! ([`Registration::poll_transmit`]), when it wants to be woken
//! ([`Registration::next_timeout`]) and what happened ([`Registration::poll_event`]).
//!
//! - The Call-ID stays the same for every REGISTER of a trunk and the CSeq grows (10.2); each
//!   request has a fresh branch, by which its responses are matched ([`Registration::owns`]).
//! - 401/407 are answered with [`DigestClient`]; a realm that challenges the answer again
//!   (wrong credentials) is a failure, never a loop.
//! - The expiry granted is taken from our Contact's `expires` in the 2xx, else the `Expires`
//!   header, else what we asked; the binding is refreshed at half of it.
//! - 423 Interval Too Brief: asked again at once with the registrar's `Min-Expires`.
//! - Any other failure (no answer within 64*T1, a 4xx/5xx/6xx, refused credentials) is
//!   retried after a back-off that doubles from `retry_min` up to `retry_max`.
//! - [`Registration::unregister`] removes the binding (`Expires: 0`) when the gateway stops.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::digest_client::{new_cnonce, ClientAuthError, ClientCredentials, DigestClient};
use super::message::{param_of, split_list, uri_of, Method, SipMessage};
use super::transaction::{ClientAction, ClientTransaction};

/// The shortest expiry we ask for or accept (a registrar granting less is answered with a
/// refresh no sooner than half of this).
pub const MIN_EXPIRES: u32 = 30;

/// One trunk's registration settings.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The trunk's name (logs, events).
    pub trunk: String,
    /// The registrar's URI: the REGISTER's Request-URI (`sip:provider.example`).
    pub registrar: String,
    /// The address of record registered: `sip:user@domain` (From and To).
    pub aor: String,
    /// Our Contact URI (`sip:user@our-ip:port`, with `;transport=tcp` when over TCP).
    pub contact: String,
    /// `UDP` or `TCP` (the Via's transport) and our sent-by (`ip:port`).
    pub via_transport: &'static str,
    pub sent_by: String,
    /// Whether the transport is reliable (no retransmissions).
    pub reliable: bool,
    /// The expiry asked for, seconds.
    pub expires: u32,
    /// The User-Agent header ("" = none).
    pub user_agent: String,
    /// The digest credentials; None: a challenge is a failure.
    pub credentials: Option<ClientCredentials>,
    /// Back-off after a failure: doubles from `retry_min` up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Where a registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegState {
    /// Not started, or removed (unregistered) on purpose.
    Unregistered,
    /// A REGISTER is out (the first one, or one after a failure).
    Registering,
    /// The registrar holds our binding until `until`.
    Registered { until: Instant },
    /// The last attempt failed; the next one is at `retry_at`.
    Failed { reason: String, retry_at: Instant },
}

impl RegState {
    /// A short name for metrics and the admin API.
    pub fn name(&self) -> &'static str {
        match self {
            RegState::Unregistered => "unregistered",
            RegState::Registering => "registering",
            RegState::Registered { .. } => "registered",
            RegState::Failed { .. } => "failed",
        }
    }
}

/// Why an attempt failed, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No final response within 64*T1.
    Timeout,
    /// The credentials were refused (or none were configured for a challenge).
    Auth,
    /// A final error response.
    Status,
    /// 503 Service Unavailable: the registrar is overloaded or down for maintenance; another
    /// address of the registrar may take the REGISTER (RFC 3263 4.3).
    Unavailable,
    /// The connection the REGISTER needed could not be opened (refused, TLS handshake
    /// failed) or closed before the answer.
    Transport,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Auth => "auth",
            FailureKind::Status => "status",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Transport => "transport",
        }
    }

    /// Whether another address of the registrar should be tried at once (RFC 3263 4.3: a
    /// transaction timeout, a transport error or a 503).
    pub fn fails_over(self) -> bool {
        matches!(
            self,
            FailureKind::Timeout | FailureKind::Unavailable | FailureKind::Transport
        )
    }
}

/// What happened to the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegEvent {
    /// The registrar accepted the binding for `expires` seconds.
    Registered { expires: u32 },
    /// An attempt failed; retried after `retry_in`.
    Failed {
        kind: FailureKind,
        reason: String,
        retry_in: Duration,
    },
    /// The binding was removed (or the attempt to remove it ended).
    Unregistered,
}

/// The REGISTER in flight.
struct InFlight {
    branch: String,
    cseq: u32,
    txn: ClientTransaction,
    /// The headers that authenticate it (after a challenge), kept for a 423 retry.
    expires: u32,
}

/// One trunk's registration client (see the module docs).
pub struct Registration {
    config: RegistrationConfig,
    state: RegState,
    call_id: String,
    from_tag: String,
    cseq: u32,
    digest: Option<DigestClient>,
    in_flight: Option<InFlight>,
    /// When the next REGISTER goes out without a response to wait for (refresh or retry).
    wake_at: Option<Instant>,
    /// Consecutive failures (the back-off's exponent).
    failures: u32,
    /// The expiry asked for next (raised by 423).
    expires: u32,
    /// The last failure, kept after a later success for the admin API.
    last_error: Option<String>,
    unregistering: bool,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<RegEvent>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("trunk", &self.config.trunk)
            .field("state", &self.state)
            .finish()
    }
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Registration {
    pub fn new(config: RegistrationConfig) -> Registration {
        let expires = config.expires.max(MIN_EXPIRES);
        Registration {
            digest: config.credentials.clone().map(DigestClient::new),
            call_id: format!("reg-{}", token()),
            from_tag: token(),
            cseq: 0,
            state: RegState::Unregistered,
            in_flight: None,
            wake_at: None,
            failures: 0,
            expires,
            last_error: None,
            unregistering: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            config,
        }
    }

    pub fn trunk(&self) -> &str {
        &self.config.trunk
    }

    pub fn state(&self) -> &RegState {
        &self.state
    }

    /// The last failure's description (kept after a later success).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Our Contact URI as registered.
    pub fn contact(&self) -> &str {
        &self.config.contact
    }

    /// The Call-ID every REGISTER of this trunk carries.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Sends the first REGISTER.
    pub fn start(&mut self, now: Instant) {
        self.unregistering = false;
        self.fresh_attempt(now);
    }

    /// Removes the binding (`Expires: 0`): sent when registered or registering; otherwise
    /// nothing is held and the state simply becomes Unregistered.
    pub fn unregister(&mut self, now: Instant) {
        self.unregistering = true;
        self.wake_at = None;
        match self.state {
            RegState::Registered { .. } | RegState::Registering => {
                if let Some(d) = &mut self.digest {
                    d.reset();
                }
                self.send_register(0, None, now);
            }
            _ => {
                self.in_flight = None;
                self.state = RegState::Unregistered;
            }
        }
    }

    /// The transport could not carry the REGISTER in flight (the connection to the registrar
    /// failed or closed): the attempt fails now instead of at the transaction's timeout.
    pub fn transport_failed(&mut self, why: &str, now: Instant) {
        if self.in_flight.take().is_none() {
            return;
        }
        if self.unregistering {
            self.state = RegState::Unregistered;
            self.events.push_back(RegEvent::Unregistered);
            return;
        }
        self.fail(FailureKind::Transport, why.to_string(), now);
    }

    /// After a failure that [`FailureKind::fails_over`], the caller has another address of the
    /// registrar to send to: the next attempt goes at once instead of after the back-off, and
    /// the failure does not lengthen the back-off (that grows only when every address failed).
    pub fn fail_over(&mut self, now: Instant) {
        if self.unregistering || !matches!(self.state, RegState::Failed { .. }) {
            return;
        }
        self.failures = self.failures.saturating_sub(1);
        self.wake_at = None;
        self.fresh_attempt(now);
    }

    /// Whether `response` answers our REGISTER in flight (Call-ID and branch).
    pub fn owns(&self, response: &SipMessage) -> bool {
        match &self.in_flight {
            Some(f) => {
                response.call_id() == Some(self.call_id.as_str())
                    && response.via_branch() == Some(f.branch.as_str())
            }
            None => false,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<RegEvent> {
        self.events.pop_front()
    }

    /// When [`Registration::handle_timeout`] wants to run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        let txn = self.in_flight.as_ref().and_then(|f| f.txn.next_timer());
        [txn, self.wake_at].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(f) = &mut self.in_flight {
            match f.txn.on_timer(now) {
                Some(ClientAction::Retransmit(bytes)) => self.transmits.push_back(bytes),
                Some(ClientAction::Timeout) => {
                    self.in_flight = None;
                    self.fail(
                        FailureKind::Timeout,
                        "no response from the registrar".into(),
                        now,
                    );
                }
                None => {}
            }
            if self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.txn.is_terminated())
            {
                self.in_flight = None;
            }
        }
        if self.wake_at.is_some_and(|at| now >= at) {
            self.wake_at = None;
            if !self.unregistering {
                self.fresh_attempt(now);
            }
        }
    }

    /// A response to one of our REGISTERs (check [`Registration::owns`] first).
    pub fn handle_response(&mut self, response: &SipMessage, now: Instant) {
        let Some(code) = response.status() else {
            return;
        };
        let Some(flight) = &mut self.in_flight else {
            return;
        };
        if response.cseq().map(|c| c.seq) != Some(flight.cseq) {
            return;
        }
        if flight.txn.on_response(code, now).is_none() {
            return;
        }
        let asked = flight.expires;
        // The transaction lingers only to absorb retransmissions; a new REGISTER has a new
        // branch, so it can go at once.
        self.in_flight = None;
        if self.unregistering {
            self.state = RegState::Unregistered;
            self.events.push_back(RegEvent::Unregistered);
            tracing::info!(trunk = %self.config.trunk, code, "registration removed");
            return;
        }
        match code {
            200..=299 => self.registered(response, asked, now),
            401 | 407 => self.challenged(code, response, asked, now),
            423 => self.too_brief(response, now),
            _ => {
                let reason = match response.start {
                    super::message::StartLine::Response { ref reason, .. } => reason.as_str(),
                    _ => "",
                };
                let text = format!("registrar answered {code} {reason}");
                let kind = if code == 503 {
                    FailureKind::Unavailable
                } else {
                    FailureKind::Status
                };
                self.fail(kind, text, now);
            }
        }
    }

    fn registered(&mut self, response: &SipMessage, asked: u32, now: Instant) {
        let granted = granted_expiry(response, &self.config.contact).unwrap_or(asked);
        if granted == 0 {
            self.fail(
                FailureKind::Status,
                "registrar accepted with no expiry (binding not kept)".into(),
                now,
            );
            return;
        }
        if let Some(d) = &mut self.digest {
            d.reset();
        }
        self.failures = 0;
        let until = now + Duration::from_secs(u64::from(granted));
        // Refresh at half the granted time, but not sooner than half of MIN_EXPIRES.
        let refresh = Duration::from_secs(u64::from(granted.max(MIN_EXPIRES) / 2));
        self.wake_at = Some(now + refresh);
        self.state = RegState::Registered { until };
        tracing::info!(trunk = %self.config.trunk, granted_s = granted, refresh_in_s = refresh.as_secs(), "registered");
        self.events
            .push_back(RegEvent::Registered { expires: granted });
    }

    fn challenged(&mut self, code: u16, response: &SipMessage, asked: u32, now: Instant) {
        let header = if code == 401 {
            "WWW-Authenticate"
        } else {
            "Proxy-Authenticate"
        };
        let Some(digest) = &mut self.digest else {
            self.fail(
                FailureKind::Auth,
                format!("registrar asked for credentials ({code}) and the trunk has none"),
                now,
            );
            return;
        };
        let answer = digest.answer(
            code,
            // One challenge per header line: a challenge's own commas are not a list.
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(header))
                .map(|h| h.value.as_str()),
            "REGISTER",
            &self.config.registrar,
            &new_cnonce(),
        );
        match answer {
            Ok(auth) => {
                tracing::debug!(trunk = %self.config.trunk, code, "answering the registrar's challenge");
                self.send_register(asked, Some((auth.name, auth.value)), now);
            }
            Err(e @ ClientAuthError::Rejected { .. }) => {
                self.fail(FailureKind::Auth, e.to_string(), now);
            }
            Err(e) => self.fail(FailureKind::Auth, e.to_string(), now),
        }
    }

    /// 423 Interval Too Brief: ask again at once with the registrar's Min-Expires (once: a
    /// second 423 for the same value is a failure).
    fn too_brief(&mut self, response: &SipMessage, now: Instant) {
        let min = response
            .header("Min-Expires")
            .and_then(|v| v.trim().parse::<u32>().ok());
        match min {
            Some(min) if min > self.expires => {
                tracing::info!(trunk = %self.config.trunk, min_expires = min, "registrar wants a longer expiry");
                self.expires = min;
                self.send_register(min, None, now);
            }
            _ => self.fail(
                FailureKind::Status,
                "423 Interval Too Brief without a usable Min-Expires".into(),
                now,
            ),
        }
    }

    fn fail(&mut self, kind: FailureKind, reason: String, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let retry_in = backoff(self.config.retry_min, self.config.retry_max, self.failures);
        tracing::warn!(trunk = %self.config.trunk, kind = kind.label(), %reason, retry_in_s = retry_in.as_secs(), "registration failed");
        self.last_error = Some(reason.clone());
        self.wake_at = Some(now + retry_in);
        self.state = RegState::Failed {
            reason: reason.clone(),
            retry_at: now + retry_in,
        };
        self.events.push_back(RegEvent::Failed {
            kind,
            reason,
            retry_in,
        });
    }

    /// A new attempt (first, refresh or retry): challenges are answered afresh.
    fn fresh_attempt(&mut self, now: Instant) {
        if let Some(d) = &mut self.digest {
            d.reset();
        }
        if !matches!(self.state, RegState::Registered { .. }) {
            self.state = RegState::Registering;
        }
        self.send_register(self.expires, None, now);
    }

    fn send_register(&mut self, expires: u32, auth: Option<(&str, String)>, now: Instant) {
        self.cseq = self.cseq.wrapping_add(1).max(1);
        let branch = format!("z9hG4bK{}", token());
        let c = &self.config;
        let mut msg = SipMessage::request(Method::Register, c.registrar.clone());
        msg.push(
            "Via",
            format!(
                "SIP/2.0/{} {};branch={branch};rport",
                c.via_transport, c.sent_by
            ),
        )
        .push("Max-Forwards", "70")
        .push("From", format!("<{}>;tag={}", c.aor, self.from_tag))
        .push("To", format!("<{}>", c.aor))
        .push("Call-ID", self.call_id.clone())
        .push("CSeq", format!("{} REGISTER", self.cseq))
        .push("Contact", format!("<{}>;expires={expires}", c.contact))
        .push("Expires", expires.to_string());
        if let Some((name, value)) = auth {
            msg.push(name, value);
        }
        if !c.user_agent.is_empty() {
            msg.push("User-Agent", c.user_agent.clone());
        }
        let bytes = msg.to_bytes();
        self.in_flight = Some(InFlight {
            branch,
            cseq: self.cseq,
            txn: ClientTransaction::new(bytes.clone(), c.reliable, now),
            expires,
        });
        self.transmits.push_back(bytes);
    }
}

/// The back-off after `failures` consecutive failures: `min * 2^(failures-1)`, at most `max`.
pub fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    min.saturating_mul(1u32 << shift).min(max).max(min.min(max))
}

/// The expiry a 2xx grants our binding: our Contact's `expires` parameter, else the Expires
/// header (RFC 3261 10.2.4). None when neither is readable.
fn granted_expiry(response: &SipMessage, our_contact: &str) -> Option<u32> {
    let contacts: Vec<&str> = response
        .header_values("Contact")
        .flat_map(split_list)
        .collect();
    let ours = contacts
        .iter()
        .find(|c| same_uri(uri_of(c), our_contact))
        .or_else(|| (contacts.len() == 1).then(|| contacts.first()).flatten());
    ours.and_then(|c| param_of(c, "expires"))
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| {
            response
                .header("Expires")
                .and_then(|v| v.trim().parse().ok())
        })
}

/// URIs compared the lenient way registrars echo them: case-insensitive, parameters aside.
fn same_uri(a: &str, b: &str) -> bool {
    let base = |u: &str| u.split(';').next().unwrap_or(u).to_ascii_lowercase();
    base(a) == base(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{DigestAuthenticator, DigestConfig};
    use crate::sip::transaction::timeout_64t1;

    fn config(password: &str) -> RegistrationConfig {
        RegistrationConfig {
            trunk: "carrier".into(),
            registrar: "sip:registrar.test".into(),
            aor: "sip:bot@registrar.test".into(),
            contact: "sip:bot@127.0.0.1:5070".into(),
            via_transport: "UDP",
            sent_by: "127.0.0.1:5070".into(),
            reliable: false,
            expires: 300,
            user_agent: "voicebot-gateway".into(),
            credentials: Some(ClientCredentials {
                user: "bot".into(),
                password: password.into(),
            }),
            retry_min: Duration::from_secs(10),
            retry_max: Duration::from_secs(80),
        }
    }

    fn sent(reg: &mut Registration) -> SipMessage {
        let bytes = reg.poll_transmit().expect("a REGISTER");
        assert!(reg.poll_transmit().is_none(), "one message at a time");
        SipMessage::parse(&bytes).expect("parses")
    }

    fn reply(request: &SipMessage, code: u16, extra: &[(&str, &str)]) -> SipMessage {
        let mut r = SipMessage::response_to(request, code, "Reason", Some("reg1"));
        for (n, v) in extra {
            r.push(n, *v);
        }
        SipMessage::parse(&r.to_bytes()).expect("parses")
    }

    /// A registrar with one account that checks the Authorization (the gateway's own server
    /// side), so the client's answer is verified for real.
    struct Registrar {
        auth: DigestAuthenticator,
        epoch: (Instant, std::time::SystemTime),
    }

    impl Registrar {
        fn new(now: Instant) -> Registrar {
            Registrar {
                auth: DigestAuthenticator::new(DigestConfig {
                    realm: "registrar.test".into(),
                    users: vec![("bot".into(), "secret".into())],
                    nonce_ttl: Duration::from_secs(60),
                    max_failures: 100,
                    failure_window: Duration::from_secs(60),
                }),
                epoch: (now, std::time::SystemTime::now()),
            }
        }

        fn answer(&mut self, req: &SipMessage, now: Instant) -> SipMessage {
            let wall = self.epoch.1 + now.duration_since(self.epoch.0);
            match req.header("Authorization") {
                None => {
                    let ch = self.auth.challenge(wall, false);
                    reply(req, 401, &[("WWW-Authenticate", &ch)])
                }
                Some(h) => match self.auth.verify("REGISTER", h, wall) {
                    Ok(_) => reply(
                        req,
                        200,
                        &[("Contact", "<sip:bot@127.0.0.1:5070>;expires=120")],
                    ),
                    Err(_) => {
                        let ch = self.auth.challenge(wall, false);
                        reply(req, 401, &[("WWW-Authenticate", &ch)])
                    }
                },
            }
        }
    }

    #[test]
    fn registers_with_digest_and_refreshes_at_half_the_granted_expiry() {
        let t0 = Instant::now();
        let mut registrar = Registrar::new(t0);
        let mut reg = Registration::new(config("secret"));
        assert_eq!(reg.state(), &RegState::Unregistered);
        reg.start(t0);
        assert_eq!(reg.state(), &RegState::Registering);
        let first = sent(&mut reg);
        assert_eq!(first.method(), Some(&Method::Register));
        assert_eq!(first.request_uri(), Some("sip:registrar.test"));
        assert_eq!(first.header("To"), Some("<sip:bot@registrar.test>"));
        assert_eq!(
            first.header("Contact"),
            Some("<sip:bot@127.0.0.1:5070>;expires=300")
        );
        assert_eq!(first.header("Expires"), Some("300"));
        let challenge = registrar.answer(&first, t0);
        assert!(reg.owns(&challenge));
        reg.handle_response(&challenge, t0);
        let second = sent(&mut reg);
        assert!(second.header("Authorization").is_some());
        assert_eq!(second.call_id(), first.call_id(), "Call-ID fixed per trunk");
        assert_eq!(second.cseq().map(|c| c.seq), Some(2), "CSeq grows");
        assert_ne!(second.via_branch(), first.via_branch(), "fresh branch");
        assert!(!reg.owns(&challenge), "the old branch is no longer ours");
        let ok = registrar.answer(&second, t0);
        assert_eq!(ok.status(), Some(200));
        reg.handle_response(&ok, t0);
        assert_eq!(
            reg.state(),
            &RegState::Registered {
                until: t0 + Duration::from_secs(120)
            }
        );
        assert_eq!(
            reg.poll_event(),
            Some(RegEvent::Registered { expires: 120 })
        );
        // Refresh at half the granted 120 s; retransmission timers are gone.
        assert_eq!(reg.next_timeout(), Some(t0 + Duration::from_secs(60)));
        let t1 = t0 + Duration::from_secs(60);
        reg.handle_timeout(t1);
        let refresh = sent(&mut reg);
        assert_eq!(refresh.cseq().map(|c| c.seq), Some(3));
        assert!(refresh.header("Authorization").is_none());
        // The refresh is challenged afresh (the digest client was reset) and succeeds.
        let challenge = registrar.answer(&refresh, t1);
        reg.handle_response(&challenge, t1);
        let answered = sent(&mut reg);
        let ok = registrar.answer(&answered, t1);
        reg.handle_response(&ok, t1);
        assert!(matches!(reg.state(), RegState::Registered { .. }));
    }

    #[test]
    fn wrong_password_fails_without_a_loop_and_backs_off_exponentially() {
        let t0 = Instant::now();
        let mut registrar = Registrar::new(t0);
        let mut reg = Registration::new(config("wrong"));
        reg.start(t0);
        let mut now = t0;
        let mut retries = Vec::new();
        for _ in 0..5 {
            let first = sent(&mut reg);
            reg.handle_response(&registrar.answer(&first, now), now);
            let second = sent(&mut reg);
            assert!(second.header("Authorization").is_some());
            reg.handle_response(&registrar.answer(&second, now), now);
            // Refused: nothing more is sent until the back-off ends.
            assert!(reg.poll_transmit().is_none());
            let Some(RegEvent::Failed { kind, retry_in, .. }) = reg.poll_event() else {
                panic!("a failure event");
            };
            assert_eq!(kind, FailureKind::Auth);
            assert!(matches!(reg.state(), RegState::Failed { .. }));
            assert!(reg.last_error().is_some_and(|e| e.contains("refused")));
            retries.push(retry_in.as_secs());
            now = reg.next_timeout().expect("a retry");
            reg.handle_timeout(now);
        }
        assert_eq!(retries, vec![10, 20, 40, 80, 80]);
    }

    #[test]
    fn a_timeout_is_a_failure_retried_after_the_back_off() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        reg.start(t0);
        let first = sent(&mut reg);
        // Retransmitted over UDP (timer E) until timer F.
        let mut now = t0;
        let mut copies = 0;
        while now < t0 + timeout_64t1() {
            now = reg.next_timeout().expect("timer");
            reg.handle_timeout(now);
            while let Some(b) = reg.poll_transmit() {
                assert_eq!(b, first.to_bytes());
                copies += 1;
            }
        }
        assert!(copies >= 5, "{copies} retransmissions");
        let Some(RegEvent::Failed { kind, retry_in, .. }) = reg.poll_event() else {
            panic!("a failure event");
        };
        assert_eq!(kind, FailureKind::Timeout);
        assert_eq!(retry_in, Duration::from_secs(10));
        assert_eq!(reg.next_timeout(), Some(now + Duration::from_secs(10)));
        reg.handle_timeout(now + Duration::from_secs(10));
        let again = sent(&mut reg);
        assert_eq!(again.call_id(), first.call_id());
        assert_eq!(reg.state(), &RegState::Registering);
    }

    #[test]
    fn a_failed_connection_fails_the_attempt_at_once() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        // Nothing in flight: nothing to fail.
        reg.transport_failed("refused", t0);
        assert!(reg.poll_event().is_none());
        reg.start(t0);
        let _ = sent(&mut reg);
        reg.transport_failed("connection refused", t0);
        let Some(RegEvent::Failed { kind, reason, .. }) = reg.poll_event() else {
            panic!("failure");
        };
        assert_eq!(kind, FailureKind::Transport);
        assert!(kind.fails_over());
        assert_eq!(reason, "connection refused");
        assert!(matches!(reg.state(), RegState::Failed { .. }));
        // The dead transaction's timers are gone: only the back-off's retry is left.
        assert_eq!(reg.next_timeout(), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn failing_over_sends_at_once_and_does_not_lengthen_the_back_off() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        reg.start(t0);
        let first = sent(&mut reg);
        reg.handle_response(&reply(&first, 503, &[]), t0);
        let Some(RegEvent::Failed { kind, .. }) = reg.poll_event() else {
            panic!("failure");
        };
        assert!(kind.fails_over());
        assert!(!FailureKind::Auth.fails_over() && !FailureKind::Status.fails_over());
        // Another address of the registrar: the REGISTER goes now, on a new branch.
        reg.fail_over(t0);
        let second = sent(&mut reg);
        assert_ne!(second.via_branch(), first.via_branch());
        assert_eq!(reg.state(), &RegState::Registering);
        // That one fails too, and no address is left: the back-off is the first one.
        reg.handle_response(&reply(&second, 503, &[]), t0);
        let Some(RegEvent::Failed { retry_in, .. }) = reg.poll_event() else {
            panic!("failure");
        };
        assert_eq!(retry_in, Duration::from_secs(10));
        // Failing over is for failed attempts only.
        let mut idle = Registration::new(config("secret"));
        idle.fail_over(t0);
        assert!(idle.poll_transmit().is_none());
    }

    #[test]
    fn error_responses_fail_and_success_resets_the_back_off() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        reg.start(t0);
        let r = sent(&mut reg);
        reg.handle_response(&reply(&r, 503, &[]), t0);
        assert!(matches!(
            reg.poll_event(),
            Some(RegEvent::Failed {
                kind: FailureKind::Unavailable,
                ..
            })
        ));
        assert!(reg.last_error().is_some_and(|e| e.contains("503")));
        let t1 = reg.next_timeout().expect("retry");
        reg.handle_timeout(t1);
        let r = sent(&mut reg);
        reg.handle_response(&reply(&r, 404, &[]), t1);
        let Some(RegEvent::Failed { retry_in, .. }) = reg.poll_event() else {
            panic!("failure");
        };
        assert_eq!(retry_in, Duration::from_secs(20));
        let t2 = reg.next_timeout().expect("retry");
        reg.handle_timeout(t2);
        let r = sent(&mut reg);
        // No Contact in the 2xx: the Expires header decides.
        reg.handle_response(&reply(&r, 200, &[("Expires", "90")]), t2);
        assert_eq!(reg.poll_event(), Some(RegEvent::Registered { expires: 90 }));
        assert_eq!(reg.next_timeout(), Some(t2 + Duration::from_secs(45)));
        reg.handle_timeout(t2 + Duration::from_secs(45));
        let r = sent(&mut reg);
        reg.handle_response(&reply(&r, 500, &[]), t2 + Duration::from_secs(45));
        let Some(RegEvent::Failed { retry_in, .. }) = reg.poll_event() else {
            panic!("failure");
        };
        assert_eq!(retry_in, Duration::from_secs(10), "back-off starts over");
    }

    #[test]
    fn interval_too_brief_asks_again_with_min_expires() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        reg.start(t0);
        let r = sent(&mut reg);
        reg.handle_response(&reply(&r, 423, &[("Min-Expires", "600")]), t0);
        let r2 = sent(&mut reg);
        assert_eq!(r2.header("Expires"), Some("600"));
        assert_eq!(
            r2.header("Contact"),
            Some("<sip:bot@127.0.0.1:5070>;expires=600")
        );
        // A second 423 asking no more than we already ask is a failure, not a loop.
        reg.handle_response(&reply(&r2, 423, &[("Min-Expires", "600")]), t0);
        assert!(reg.poll_transmit().is_none());
        assert!(matches!(reg.state(), RegState::Failed { .. }));
    }

    #[test]
    fn our_contacts_expires_wins_among_several_bindings() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        reg.start(t0);
        let r = sent(&mut reg);
        let ok = reply(
            &r,
            200,
            &[
                (
                    "Contact",
                    "<sip:other@10.0.0.9:5060>;expires=3000, <sip:BOT@127.0.0.1:5070>;expires=200",
                ),
                ("Expires", "999"),
            ],
        );
        reg.handle_response(&ok, t0);
        assert_eq!(
            reg.poll_event(),
            Some(RegEvent::Registered { expires: 200 })
        );
    }

    #[test]
    fn responses_of_other_transactions_are_not_ours_and_retransmissions_are_absorbed() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        reg.start(t0);
        let r = sent(&mut reg);
        let mut foreign = reply(&r, 200, &[]);
        foreign.headers.retain(|h| h.name != "Call-ID");
        foreign.push("Call-ID", "someone-else");
        assert!(!reg.owns(&foreign));
        let ok = reply(&r, 200, &[]);
        reg.handle_response(&ok, t0);
        assert_eq!(
            reg.poll_event(),
            Some(RegEvent::Registered { expires: 300 })
        );
        // The same 200 again (a retransmission) changes nothing.
        reg.handle_response(&ok, t0);
        assert!(reg.poll_event().is_none());
        assert!(reg.poll_transmit().is_none());
    }

    #[test]
    fn a_challenge_without_credentials_fails() {
        let t0 = Instant::now();
        let mut c = config("x");
        c.credentials = None;
        let mut reg = Registration::new(c);
        reg.start(t0);
        let r = sent(&mut reg);
        let ch = reply(
            &r,
            401,
            &[("WWW-Authenticate", "Digest realm=\"x\", nonce=\"n\"")],
        );
        reg.handle_response(&ch, t0);
        assert!(matches!(
            reg.poll_event(),
            Some(RegEvent::Failed {
                kind: FailureKind::Auth,
                ..
            })
        ));
    }

    #[test]
    fn unregister_sends_expires_zero_and_ends_unregistered() {
        let t0 = Instant::now();
        let mut reg = Registration::new(config("secret"));
        reg.start(t0);
        let r = sent(&mut reg);
        reg.handle_response(&reply(&r, 200, &[]), t0);
        let _ = reg.poll_event();
        reg.unregister(t0);
        let bye = sent(&mut reg);
        assert_eq!(bye.header("Expires"), Some("0"));
        assert_eq!(
            bye.header("Contact"),
            Some("<sip:bot@127.0.0.1:5070>;expires=0")
        );
        reg.handle_response(&reply(&bye, 200, &[]), t0);
        assert_eq!(reg.poll_event(), Some(RegEvent::Unregistered));
        assert_eq!(reg.state(), &RegState::Unregistered);
        assert_eq!(reg.next_timeout(), None, "no refresh after unregistering");
        // A failed trunk has nothing to remove.
        let mut failed = Registration::new(config("secret"));
        failed.start(t0);
        let r = sent(&mut failed);
        failed.handle_response(&reply(&r, 403, &[]), t0);
        failed.unregister(t0);
        assert!(failed.poll_transmit().is_none());
        assert_eq!(failed.state(), &RegState::Unregistered);
        assert_eq!(failed.next_timeout(), None);
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), s(60), 1), s(5));
        assert_eq!(backoff(s(5), s(60), 2), s(10));
        assert_eq!(backoff(s(5), s(60), 4), s(40));
        assert_eq!(backoff(s(5), s(60), 5), s(60));
        assert_eq!(backoff(s(5), s(60), u32::MAX), s(60));
    }
}

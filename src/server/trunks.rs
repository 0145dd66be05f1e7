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

use crate::admin::trunks::{TrunkBoard, TrunkEntry};
use crate::config::trunks::{CalledSource, TrunkConfig};
use crate::observe::metrics;
use crate::sip::digest_client::ClientCredentials;
use crate::sip::endpoint::CalledHeaders;
use crate::sip::message::{parse_sip_uri, SipMessage};
use crate::sip::registration::{RegEvent, RegState, Registration, RegistrationConfig};

/// A registering trunk: its client and where its REGISTERs go.
struct Registered {
    reg: Registration,
    target: SocketAddr,
    tcp: bool,
    failures: u64,
}

/// Every trunk, and the registrations of those that register.
pub(crate) struct Trunks {
    configs: Vec<TrunkConfig>,
    /// Parallel to `configs`: the registration when the trunk registers and could start.
    regs: Vec<Option<Registered>>,
    board: Arc<TrunkBoard>,
}

/// A REGISTER to send.
pub(crate) struct TrunkTransmit {
    pub to: SocketAddr,
    pub tcp: bool,
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
    pub fn new(configs: Vec<TrunkConfig>, board: Arc<TrunkBoard>) -> Trunks {
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
        }
    }

    /// Whether any trunk registers (responses need looking at).
    pub fn any_registering(&self) -> bool {
        self.regs.iter().any(Option::is_some)
    }

    /// Starts trunk `index`'s registration towards `target`; `local` is our address as the
    /// target sees it (for Via and Contact).
    pub fn start(
        &mut self,
        index: usize,
        target: SocketAddr,
        local: SocketAddr,
        user_agent: &str,
        now: Instant,
    ) {
        let Some(t) = self.configs.get(index) else {
            return;
        };
        let tcp = t.transport == "tcp";
        let host = match local.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let sent_by = format!("{host}:{}", local.port());
        let mut contact = format!("sip:{}@{sent_by}", t.user);
        if tcp {
            contact.push_str(";transport=tcp");
        }
        let credentials = t.resolved_password().map(|password| ClientCredentials {
            user: if t.auth_user.is_empty() {
                t.user.clone()
            } else {
                t.auth_user.clone()
            },
            password,
        });
        let mut reg = Registration::new(RegistrationConfig {
            trunk: t.name.clone(),
            registrar: t.registrar.clone(),
            aor: format!("sip:{}@{}", t.user, t.aor_domain()),
            contact,
            via_transport: if tcp { "TCP" } else { "UDP" },
            sent_by,
            reliable: tcp,
            expires: t.expires_s,
            user_agent: user_agent.to_string(),
            credentials,
            retry_min: Duration::from_secs(t.retry_min_s),
            retry_max: Duration::from_secs(t.retry_max_s),
        });
        tracing::info!(trunk = %t.name, registrar = %t.registrar, %target, "registering");
        reg.start(now);
        if let Some(slot) = self.regs.get_mut(index) {
            *slot = Some(Registered {
                reg,
                target,
                tcp,
                failures: 0,
            });
        }
        self.publish(index);
    }

    /// A trunk whose registrar could not be resolved: shown as failed (no retry; the address
    /// is looked up at start).
    pub fn unresolved(&mut self, index: usize, why: String) {
        if let Some(t) = self.configs.get(index) {
            tracing::error!(trunk = %t.name, error = %why, "cannot register: registrar address unknown");
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
        self.after(index);
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
                self.after(index);
            }
        }
    }

    /// Removes every binding (`Expires: 0`) when the gateway stops.
    pub fn unregister_all(&mut self, now: Instant) {
        for index in 0..self.regs.len() {
            if let Some(Some(r)) = self.regs.get_mut(index) {
                r.reg.unregister(now);
            }
            self.after(index);
        }
    }

    /// The REGISTERs to send.
    pub fn poll_transmit(&mut self) -> Option<TrunkTransmit> {
        self.regs.iter_mut().flatten().find_map(|r| {
            r.reg.poll_transmit().map(|bytes| TrunkTransmit {
                to: r.target,
                tcp: r.tcp,
                bytes,
            })
        })
    }

    /// Events into metrics and logs, state onto the board.
    fn after(&mut self, index: usize) {
        let Some(Some(r)) = self.regs.get_mut(index) else {
            return;
        };
        while let Some(event) = r.reg.poll_event() {
            match event {
                RegEvent::Failed { kind, .. } => {
                    r.failures = r.failures.saturating_add(1);
                    metrics::register_failed(r.reg.trunk(), kind.label());
                }
                RegEvent::Registered { .. } | RegEvent::Unregistered => {}
            }
        }
        self.publish(index);
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
            registered_until: until,
            next_retry: retry,
            last_error: r.reg.last_error().map(str::to_string),
            failures: r.failures,
        });
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

/// Looks up where each registering trunk's REGISTERs go (`outbound_proxy`, else the
/// registrar's host and port), once at start.
pub(crate) async fn resolve_targets(
    configs: &[TrunkConfig],
) -> Vec<(usize, Result<SocketAddr, String>)> {
    let mut out = Vec::new();
    for (index, t) in configs.iter().enumerate().filter(|(_, t)| t.registers()) {
        let target = t.register_target();
        let lookup = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host(target.clone()),
        )
        .await;
        let resolved = match lookup {
            Ok(Ok(mut addrs)) => addrs
                .next()
                .ok_or_else(|| format!("{target} has no address")),
            Ok(Err(e)) => Err(format!("cannot resolve {target}: {e}")),
            Err(_) => Err(format!("resolving {target} timed out")),
        };
        out.push((index, resolved));
    }
    out
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
        let mut trunks = Trunks::new(vec![pbx, carrier], Arc::clone(&board));
        assert_eq!(board.snapshot()[1].state, "address-only");
        let now = Instant::now();
        trunks.start(
            0,
            "127.0.0.1:5080".parse().expect("addr"),
            "127.0.0.1:5070".parse().expect("addr"),
            "ua",
            now,
        );
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

//! Locating a SIP server (RFC 3263 section 4), sans-IO: which transport, address and port an
//! INVITE to a SIP URI goes to, in the order to try them. A trunk or PBX publishes its
//! preferences in DNS (NAPTR for the transports, SRV for the hosts with priority and weight,
//! A/AAAA for the addresses) so that a client fails over to the next server when one is down;
//! a plain A lookup of the URI's host knows none of that.
//!
//! [`Locator`] asks for one DNS query at a time ([`Locator::next_query`]) and is fed each
//! answer ([`Locator::answer`]); the tokio layer (`server::dns`) does the lookups. Its rules:
//!
//! - a numeric IP as the target (`maddr` if present, else the host): no lookup at all; the
//!   `transport` parameter or UDP (`sip:`) / TLS (`sips:`), the explicit port or the default;
//! - an explicit port, or a `transport` parameter: no NAPTR; SRV for that transport unless the
//!   port is explicit, then A/AAAA;
//! - otherwise NAPTR (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T` with the `s` flag, by order then
//!   preference, only the transports the caller supports), the SRV names they point at;
//!   without usable NAPTR records, SRV for each supported transport (`_sip._udp`,
//!   `_sip._tcp`, `_sips._tcp`);
//! - SRV records by priority, then weighted random within a priority (RFC 2782), with the
//!   random numbers from an injected source so the order is testable;
//! - no SRV records: A/AAAA of the host on the transport's default port (5060, TLS 5061).
//!
//! Lookups are bounded (queries, records per answer, destinations), so a hostile DNS answer
//! cannot make a call task work without end.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// At most this many DNS queries for one URI.
pub const MAX_QUERIES: usize = 24;
/// At most this many destinations in the list.
pub const MAX_DESTINATIONS: usize = 16;
/// Records per answer considered (the rest are ignored).
const MAX_RECORDS: usize = 16;

/// A transport a SIP request can go over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The port when neither the URI nor SRV names one.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            Transport::Udp | Transport::Tcp => 5060,
        }
    }

    /// The NAPTR service field (RFC 3263 4.1, RFC 3261 26.3.2.1).
    fn naptr_service(self) -> &'static str {
        match self {
            Transport::Udp => "SIP+D2U",
            Transport::Tcp => "SIP+D2T",
            Transport::Tls => "SIPS+D2T",
        }
    }

    /// The SRV name of `domain` for this transport (RFC 3263 4.2).
    fn srv_name(self, domain: &str) -> String {
        let prefix = match self {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        };
        format!("{prefix}.{domain}")
    }

    /// The `transport` URI parameter's value (case-insensitive).
    fn from_param(value: &str) -> Option<Transport> {
        match value.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where to send: one entry of the ordered list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.transport, self.addr)
    }
}

/// A DNS query the locator needs answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Naptr(String),
    Srv(String),
    /// A and AAAA records of a host.
    Address(String),
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Query::Naptr(n) => write!(f, "NAPTR {n}"),
            Query::Srv(n) => write!(f, "SRV {n}"),
            Query::Address(n) => write!(f, "A/AAAA {n}"),
        }
    }
}

/// A NAPTR record (RFC 3403), as far as SIP uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaptrRecord {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    /// The SRV name to look up next.
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The answer to a [`Query`]: the records (none: the name has none), or why the lookup failed
/// (treated as no records, and reported if nothing is found at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Naptr(Vec<NaptrRecord>),
    Srv(Vec<SrvRecord>),
    Addresses(Vec<IpAddr>),
    Failed(String),
}

/// Why a URI cannot be located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error("`{0}` is not a sip: or sips: URI with a host")]
    BadUri(String),
    #[error("`{uri}` needs transport {transport}, which is not supported here")]
    Unsupported { uri: String, transport: String },
    #[error("no address found for {host}{}", why_suffix(.why))]
    NotFound { host: String, why: Vec<String> },
}

fn why_suffix(why: &[String]) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join("; "))
    }
}

/// A source of random numbers: `pick(n)` returns a number in `0..=n` (RFC 2782's weighted
/// choice). Injected so that tests choose the order.
pub type Pick = Box<dyn FnMut(u32) -> u32 + Send>;

/// Random numbers from the thread's generator.
pub fn random_pick() -> Pick {
    Box::new(|n| rand::random_range(0..=n))
}

/// Where the lookup stands.
#[derive(Debug)]
enum Stage {
    Naptr,
    /// SRV names still to look up (with their transport); `fallback`: the transport and the
    /// host's address lookup when no name has records.
    Srv {
        names: VecDeque<(String, Transport)>,
        fallback: Transport,
        found: bool,
    },
    /// Hosts whose addresses are still to look up, with the port and transport to use.
    Hosts(VecDeque<(String, u16, Transport)>),
    Done,
}

/// Locates one SIP URI: feed it DNS answers until [`Locator::is_done`].
pub struct Locator {
    uri: String,
    host: String,
    secure: bool,
    supported: Vec<Transport>,
    stage: Stage,
    /// The query asked and not answered yet.
    asked: Option<Query>,
    queries: usize,
    /// SRV targets found so far, in order, before their addresses are looked up.
    srv_hosts: VecDeque<(String, u16, Transport)>,
    found: Vec<Destination>,
    /// Failed lookups, for the error when nothing is found.
    why: Vec<String>,
    pick: Pick,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator")
            .field("uri", &self.uri)
            .field("stage", &self.stage)
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

/// The target parts of a SIP URI (RFC 3263 4: `maddr` overrides the host).
struct UriTarget {
    secure: bool,
    host: String,
    port: Option<u16>,
    transport: Option<Transport>,
}

fn uri_target(uri: &str) -> Result<UriTarget, LocateError> {
    let bad = || LocateError::BadUri(uri.to_string());
    let parsed = super::message::parse_sip_uri(uri).ok_or_else(bad)?;
    let secure = uri.starts_with("sips:");
    let transport = match parsed.transport {
        Some(t) => Some(
            Transport::from_param(t).ok_or_else(|| LocateError::Unsupported {
                uri: uri.to_string(),
                transport: t.to_string(),
            })?,
        ),
        None => None,
    };
    // The parameters after the host: `maddr` names another host to send to.
    let after_host = uri.rsplit('@').next().unwrap_or(uri);
    let after_host = after_host.split('?').next().unwrap_or(after_host);
    let maddr = after_host.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("maddr").then(|| v.trim())
    });
    let host = match maddr {
        Some(m) => m.trim_start_matches('[').trim_end_matches(']'),
        None => parsed.host,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(UriTarget {
        secure,
        host: host.to_string(),
        port: parsed.port,
        transport,
    })
}

impl Locator {
    /// Starts locating `uri` for a client that can send over `supported` (in its order of
    /// preference), drawing SRV weights from `pick`.
    pub fn new(uri: &str, supported: &[Transport], pick: Pick) -> Result<Locator, LocateError> {
        let target = uri_target(uri)?;
        // A sips: URI goes over TLS only (RFC 3263 4.1).
        let usable: Vec<Transport> = supported
            .iter()
            .copied()
            .filter(|t| !target.secure || *t == Transport::Tls)
            .collect();
        let mut loc = Locator {
            uri: uri.to_string(),
            host: target.host.clone(),
            secure: target.secure,
            supported: usable,
            stage: Stage::Done,
            asked: None,
            queries: 0,
            srv_hosts: VecDeque::new(),
            found: Vec::new(),
            why: Vec::new(),
            pick,
        };
        let numeric = target.host.parse::<IpAddr>().ok();
        let fixed = match target.transport {
            Some(t) => Some(t),
            // Numeric or with a port, and no transport named: UDP, or TLS for sips: (4.1).
            None if numeric.is_some() || target.port.is_some() => Some(if target.secure {
                Transport::Tls
            } else {
                Transport::Udp
            }),
            None => None,
        };
        if let Some(t) = fixed {
            if !loc.supported.contains(&t) {
                return Err(LocateError::Unsupported {
                    uri: uri.to_string(),
                    transport: t.to_string(),
                });
            }
        } else if loc.supported.is_empty() {
            return Err(LocateError::Unsupported {
                uri: uri.to_string(),
                transport: if target.secure { "tls" } else { "any" }.into(),
            });
        }
        loc.stage = match (fixed, numeric, target.port) {
            (Some(t), Some(ip), port) => {
                let port = port.unwrap_or(t.default_port());
                loc.found.push(Destination {
                    transport: t,
                    addr: SocketAddr::new(ip, port),
                });
                Stage::Done
            }
            (Some(t), None, Some(port)) => Stage::Hosts(VecDeque::from([(target.host, port, t)])),
            (Some(t), None, None) => Stage::Srv {
                names: VecDeque::from([(t.srv_name(&target.host), t)]),
                fallback: t,
                found: false,
            },
            (None, _, _) => Stage::Naptr,
        };
        Ok(loc)
    }

    /// The query to run now, if any (the same one until it is answered).
    pub fn next_query(&mut self) -> Option<Query> {
        if let Some(q) = &self.asked {
            return Some(q.clone());
        }
        if self.queries >= MAX_QUERIES {
            if !matches!(self.stage, Stage::Done) {
                self.why
                    .push(format!("gave up after {MAX_QUERIES} queries"));
                self.stage = Stage::Done;
            }
            return None;
        }
        let q = match &self.stage {
            Stage::Naptr => Query::Naptr(self.host.clone()),
            Stage::Srv { names, .. } => Query::Srv(names.front()?.0.clone()),
            Stage::Hosts(hosts) => Query::Address(hosts.front()?.0.clone()),
            Stage::Done => return None,
        };
        self.queries += 1;
        self.asked = Some(q.clone());
        Some(q)
    }

    /// Whether the list is complete.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Feeds the answer to the query [`Locator::next_query`] gave.
    pub fn answer(&mut self, answer: Answer) {
        let Some(query) = self.asked.take() else {
            return;
        };
        let answer = match answer {
            Answer::Failed(why) => {
                tracing::debug!(%query, %why, "DNS lookup failed");
                self.why.push(format!("{query}: {why}"));
                None
            }
            a => Some(a),
        };
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Naptr => self.on_naptr(answer),
            Stage::Srv {
                names,
                fallback,
                found,
            } => self.on_srv(answer, names, fallback, found),
            Stage::Hosts(hosts) => self.on_addresses(answer, hosts),
            Stage::Done => {}
        }
    }

    /// The destinations in order, once done.
    pub fn result(self) -> Result<Vec<Destination>, LocateError> {
        if self.found.is_empty() {
            Err(LocateError::NotFound {
                host: self.host,
                why: self.why,
            })
        } else {
            Ok(self.found)
        }
    }

    fn on_naptr(&mut self, answer: Option<Answer>) {
        let mut records = match answer {
            Some(Answer::Naptr(r)) => r,
            _ => Vec::new(),
        };
        records.truncate(MAX_RECORDS);
        records.sort_by_key(|r| (r.order, r.preference));
        let mut names = VecDeque::new();
        for r in &records {
            if !r.flags.eq_ignore_ascii_case("s") {
                continue;
            }
            let t = self
                .supported
                .iter()
                .copied()
                .find(|t| r.services.eq_ignore_ascii_case(t.naptr_service()));
            if let Some(t) = t {
                let name = r.replacement.trim_end_matches('.').to_string();
                if !name.is_empty() && !names.iter().any(|(n, _)| *n == name) {
                    names.push_back((name, t));
                }
            }
        }
        if names.is_empty() {
            // No NAPTR records we can use: SRV for each transport we support (4.1).
            tracing::debug!(host = %self.host, records = records.len(), "no usable NAPTR records; trying SRV for each transport");
            names = self
                .supported
                .iter()
                .map(|t| (t.srv_name(&self.host), *t))
                .collect();
        }
        let fallback = names.front().map_or(Transport::Udp, |(_, t)| *t);
        self.stage = Stage::Srv {
            names,
            fallback,
            found: false,
        };
    }

    fn on_srv(
        &mut self,
        answer: Option<Answer>,
        mut names: VecDeque<(String, Transport)>,
        fallback: Transport,
        mut found: bool,
    ) {
        let transport = names.pop_front().map_or(fallback, |(_, t)| t);
        let mut records = match answer {
            Some(Answer::Srv(r)) => r,
            _ => Vec::new(),
        };
        records.truncate(MAX_RECORDS);
        // A single record with the target "." says the service is not offered (RFC 2782).
        records.retain(|r| !r.target.trim_end_matches('.').is_empty());
        found |= !records.is_empty();
        for r in srv_order(records, &mut self.pick) {
            let host = r.target.trim_end_matches('.').to_string();
            self.srv_hosts.push_back((host, r.port, transport));
        }
        self.stage = if !names.is_empty() {
            Stage::Srv {
                names,
                fallback,
                found,
            }
        } else if found {
            Stage::Hosts(std::mem::take(&mut self.srv_hosts))
        } else {
            // No SRV records: the host itself on the transport's default port (4.2).
            tracing::debug!(host = %self.host, transport = %fallback, "no SRV records; looking up the host's addresses");
            Stage::Hosts(VecDeque::from([(
                self.host.clone(),
                fallback.default_port(),
                fallback,
            )]))
        };
    }

    fn on_addresses(
        &mut self,
        answer: Option<Answer>,
        mut hosts: VecDeque<(String, u16, Transport)>,
    ) {
        let Some((_, port, transport)) = hosts.pop_front() else {
            return;
        };
        if let Some(Answer::Addresses(ips)) = answer {
            for ip in ips.into_iter().take(MAX_RECORDS) {
                let d = Destination {
                    transport,
                    addr: SocketAddr::new(ip, port),
                };
                if self.found.len() < MAX_DESTINATIONS && !self.found.contains(&d) {
                    self.found.push(d);
                }
            }
        }
        self.stage = if hosts.is_empty() || self.found.len() >= MAX_DESTINATIONS {
            Stage::Done
        } else {
            Stage::Hosts(hosts)
        };
    }

    /// Whether the URI is a sips: URI.
    pub fn is_secure(&self) -> bool {
        self.secure
    }
}

/// Orders SRV records (RFC 2782): ascending priority; within a priority, a weighted random
/// draw (records of weight 0 first in the running sum, so they are picked rarely but can be).
pub fn srv_order(mut records: Vec<SrvRecord>, pick: &mut Pick) -> Vec<SrvRecord> {
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    let mut rest = VecDeque::from(records);
    while let Some(first) = rest.front() {
        let priority = first.priority;
        let n = rest.iter().take_while(|r| r.priority == priority).count();
        let mut group: Vec<SrvRecord> = rest.drain(..n).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let draw = pick(total).min(total);
            let mut running = 0u32;
            let mut chosen = group.len() - 1;
            for (i, r) in group.iter().enumerate() {
                running += u32::from(r.weight);
                if running >= draw {
                    chosen = i;
                    break;
                }
            }
            out.push(group.remove(chosen));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP_ONLY: &[Transport] = &[Transport::Udp];
    const ALL: &[Transport] = &[Transport::Udp, Transport::Tcp, Transport::Tls];

    fn zero() -> Pick {
        Box::new(|_| 0)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn dest(t: Transport, a: &str) -> Destination {
        Destination {
            transport: t,
            addr: a.parse().unwrap(),
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn naptr(order: u16, preference: u16, services: &str, replacement: &str) -> NaptrRecord {
        NaptrRecord {
            order,
            preference,
            flags: "S".into(),
            services: services.into(),
            replacement: replacement.into(),
        }
    }

    /// Runs a locator against a fixed table of answers; returns the queries asked and the
    /// result.
    fn run(
        mut loc: Locator,
        dns: impl Fn(&Query) -> Answer,
    ) -> (Vec<Query>, Result<Vec<Destination>, LocateError>) {
        let mut asked = Vec::new();
        while let Some(q) = loc.next_query() {
            let a = dns(&q);
            asked.push(q);
            loc.answer(a);
        }
        assert!(loc.is_done());
        (asked, loc.result())
    }

    #[test]
    fn numeric_ip_needs_no_lookup() {
        let (asked, r) = run(
            Locator::new("sip:1001@10.0.0.7", UDP_ONLY, zero()).unwrap(),
            |_| unreachable!(),
        );
        assert!(asked.is_empty());
        assert_eq!(r.unwrap(), [dest(Transport::Udp, "10.0.0.7:5060")]);
        let (_, r) = run(
            Locator::new("sip:1001@[::1]:5070;transport=TCP", ALL, zero()).unwrap(),
            |_| unreachable!(),
        );
        assert_eq!(r.unwrap(), [dest(Transport::Tcp, "[::1]:5070")]);
        // sips: on a numeric IP: TLS on 5061.
        let (_, r) = run(
            Locator::new("sips:1001@10.0.0.7", ALL, zero()).unwrap(),
            |_| unreachable!(),
        );
        assert_eq!(r.unwrap(), [dest(Transport::Tls, "10.0.0.7:5061")]);
    }

    #[test]
    fn maddr_overrides_the_host() {
        let (asked, r) = run(
            Locator::new("sip:1001@pbx.example.com;maddr=10.1.1.1", UDP_ONLY, zero()).unwrap(),
            |_| unreachable!(),
        );
        assert!(asked.is_empty());
        assert_eq!(r.unwrap(), [dest(Transport::Udp, "10.1.1.1:5060")]);
        let (asked, _) = run(
            Locator::new(
                "sip:1001@10.0.0.1;maddr=proxy.example.com",
                UDP_ONLY,
                zero(),
            )
            .unwrap(),
            |_| Answer::Naptr(vec![]),
        );
        assert_eq!(asked[0], Query::Naptr("proxy.example.com".into()));
    }

    #[test]
    fn explicit_port_skips_naptr_and_srv() {
        let (asked, r) = run(
            Locator::new("sip:1001@pbx.example.com:5070", UDP_ONLY, zero()).unwrap(),
            |_| Answer::Addresses(vec![ip("10.0.0.1"), ip("::2")]),
        );
        assert_eq!(asked, [Query::Address("pbx.example.com".into())]);
        assert_eq!(
            r.unwrap(),
            [
                dest(Transport::Udp, "10.0.0.1:5070"),
                dest(Transport::Udp, "[::2]:5070")
            ]
        );
    }

    #[test]
    fn transport_param_skips_naptr_and_uses_its_srv() {
        let (asked, r) = run(
            Locator::new("sip:1001@pbx.example.com;transport=tcp", ALL, zero()).unwrap(),
            |q| match q {
                Query::Srv(_) => Answer::Srv(vec![srv(0, 0, 5080, "a.example.com.")]),
                _ => Answer::Addresses(vec![ip("10.0.0.3")]),
            },
        );
        assert_eq!(
            asked,
            [
                Query::Srv("_sip._tcp.pbx.example.com".into()),
                Query::Address("a.example.com".into())
            ]
        );
        assert_eq!(r.unwrap(), [dest(Transport::Tcp, "10.0.0.3:5080")]);
        // A transport we cannot use is an error, not a silent switch.
        assert!(matches!(
            Locator::new("sip:1001@pbx.example.com;transport=tcp", UDP_ONLY, zero()),
            Err(LocateError::Unsupported { .. })
        ));
        assert!(matches!(
            Locator::new("sip:1001@pbx;transport=sctp", ALL, zero()),
            Err(LocateError::Unsupported { .. })
        ));
    }

    #[test]
    fn naptr_orders_transports_and_skips_unsupported_ones() {
        let dns = |q: &Query| match q {
            Query::Naptr(_) => Answer::Naptr(vec![
                naptr(50, 50, "SIP+D2U", "_sip._udp.example.com."),
                naptr(10, 90, "SIP+D2T", "_sip._tcp.example.com."),
                naptr(10, 10, "SIPS+D2T", "_sips._tcp.example.com."),
                naptr(5, 5, "SIP+D2S", "_sip._sctp.example.com."),
            ]),
            Query::Srv(name) if name.starts_with("_sips") => {
                Answer::Srv(vec![srv(1, 0, 5061, "tls.example.com.")])
            }
            Query::Srv(name) if name.starts_with("_sip._tcp") => {
                Answer::Srv(vec![srv(1, 0, 5060, "tcp.example.com.")])
            }
            Query::Srv(_) => Answer::Srv(vec![srv(1, 0, 5060, "udp.example.com.")]),
            Query::Address(h) if h.starts_with("tls") => Answer::Addresses(vec![ip("10.0.0.3")]),
            Query::Address(h) if h.starts_with("tcp") => Answer::Addresses(vec![ip("10.0.0.2")]),
            Query::Address(_) => Answer::Addresses(vec![ip("10.0.0.1")]),
        };
        let (asked, r) = run(
            Locator::new("sip:1001@example.com", ALL, zero()).unwrap(),
            dns,
        );
        assert_eq!(asked[0], Query::Naptr("example.com".into()));
        assert_eq!(
            r.unwrap(),
            [
                dest(Transport::Tls, "10.0.0.3:5061"),
                dest(Transport::Tcp, "10.0.0.2:5060"),
                dest(Transport::Udp, "10.0.0.1:5060"),
            ]
        );
        // A UDP-only client follows only the D2U record.
        let (asked, r) = run(
            Locator::new("sip:1001@example.com", UDP_ONLY, zero()).unwrap(),
            dns,
        );
        assert_eq!(asked[1], Query::Srv("_sip._udp.example.com".into()));
        assert_eq!(r.unwrap(), [dest(Transport::Udp, "10.0.0.1:5060")]);
        // A sips: URI only takes SIPS+D2T.
        let (_, r) = run(
            Locator::new("sips:1001@example.com", ALL, zero()).unwrap(),
            dns,
        );
        assert_eq!(r.unwrap(), [dest(Transport::Tls, "10.0.0.3:5061")]);
        assert!(matches!(
            Locator::new("sips:1001@example.com", UDP_ONLY, zero()),
            Err(LocateError::Unsupported { .. })
        ));
    }

    #[test]
    fn without_naptr_srv_is_asked_for_each_supported_transport() {
        let (asked, r) = run(
            Locator::new(
                "sip:2001@agents.test",
                &[Transport::Udp, Transport::Tcp],
                zero(),
            )
            .unwrap(),
            |q| match q {
                Query::Naptr(_) => Answer::Failed("NXDOMAIN".into()),
                Query::Srv(n) if n.starts_with("_sip._udp") => Answer::Srv(vec![
                    srv(20, 0, 5071, "b.agents.test."),
                    srv(10, 0, 5070, "a.agents.test."),
                ]),
                Query::Srv(_) => Answer::Srv(vec![]),
                Query::Address(h) if h == "a.agents.test" => {
                    Answer::Addresses(vec![ip("127.0.0.2")])
                }
                Query::Address(_) => Answer::Addresses(vec![ip("127.0.0.3")]),
            },
        );
        assert_eq!(
            asked,
            [
                Query::Naptr("agents.test".into()),
                Query::Srv("_sip._udp.agents.test".into()),
                Query::Srv("_sip._tcp.agents.test".into()),
                Query::Address("a.agents.test".into()),
                Query::Address("b.agents.test".into()),
            ]
        );
        assert_eq!(
            r.unwrap(),
            [
                dest(Transport::Udp, "127.0.0.2:5070"),
                dest(Transport::Udp, "127.0.0.3:5071")
            ]
        );
    }

    #[test]
    fn without_srv_the_host_is_used_on_the_default_port() {
        let (asked, r) = run(
            Locator::new("sip:2001@pbx.test", UDP_ONLY, zero()).unwrap(),
            |q| match q {
                Query::Naptr(_) | Query::Srv(_) => Answer::Srv(vec![]),
                Query::Address(_) => Answer::Addresses(vec![ip("10.9.9.9")]),
            },
        );
        assert_eq!(asked.last(), Some(&Query::Address("pbx.test".into())));
        assert_eq!(r.unwrap(), [dest(Transport::Udp, "10.9.9.9:5060")]);
        // sips: falls back to TLS on 5061.
        let (_, r) = run(
            Locator::new("sips:2001@pbx.test", ALL, zero()).unwrap(),
            |q| match q {
                Query::Address(_) => Answer::Addresses(vec![ip("10.9.9.9")]),
                _ => Answer::Failed("SERVFAIL".into()),
            },
        );
        assert_eq!(r.unwrap(), [dest(Transport::Tls, "10.9.9.9:5061")]);
    }

    #[test]
    fn srv_dot_target_means_no_service_and_nothing_found_is_explained() {
        let (_, r) = run(
            Locator::new("sip:2001@pbx.test", UDP_ONLY, zero()).unwrap(),
            |q| match q {
                Query::Srv(_) => Answer::Srv(vec![srv(0, 0, 0, ".")]),
                Query::Naptr(_) => Answer::Naptr(vec![]),
                Query::Address(_) => Answer::Failed("NXDOMAIN".into()),
            },
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no address found for pbx.test"), "{e}");
        assert!(e.contains("A/AAAA pbx.test: NXDOMAIN"), "{e}");
    }

    #[test]
    fn srv_priority_first_then_weighted_draw() {
        let records = vec![
            srv(20, 0, 1, "low"),
            srv(10, 10, 2, "heavy"),
            srv(10, 0, 3, "zero"),
            srv(10, 5, 4, "light"),
        ];
        let names = |v: Vec<SrvRecord>| v.into_iter().map(|r| r.target).collect::<Vec<_>>();
        // Draw 0 takes the zero-weight record (listed first in the running sum).
        assert_eq!(
            names(srv_order(records.clone(), &mut zero())),
            ["zero", "heavy", "light", "low"]
        );
        // The largest draw takes the last of the running sum each time.
        let mut max: Pick = Box::new(|n| n);
        assert_eq!(
            names(srv_order(records.clone(), &mut max)),
            ["light", "heavy", "zero", "low"]
        );
        // A draw of 1..=10 lands on "heavy" (running sums 0, 10, 15).
        let mut seven: Pick = Box::new(|n| n.min(7));
        assert_eq!(
            names(srv_order(records.clone(), &mut seven)),
            ["heavy", "light", "zero", "low"]
        );
        // Over many draws the weights hold: "heavy" comes first for draws 1..=10 of 0..=15,
        // 10/16 of the time (1875 of 3000, standard deviation 27).
        let mut heavy_first = 0;
        for _ in 0..3000 {
            let mut pick = random_pick();
            if srv_order(records.clone(), &mut pick)[0].target == "heavy" {
                heavy_first += 1;
            }
        }
        assert!((1700..2050).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn lookups_are_bounded() {
        // Every SRV answer names many hosts; the list stops at MAX_DESTINATIONS and the
        // queries at MAX_QUERIES.
        let mut n = 0u8;
        let mut loc = Locator::new("sip:x@flood.test", ALL, zero()).unwrap();
        let mut asked = 0;
        while let Some(q) = loc.next_query() {
            asked += 1;
            let a = match q {
                Query::Naptr(_) => Answer::Naptr(vec![]),
                Query::Srv(_) => Answer::Srv(
                    (0..40)
                        .map(|i| srv(1, 1, 5060, &format!("h{i}.flood.test")))
                        .collect(),
                ),
                Query::Address(_) => {
                    n = n.wrapping_add(1);
                    Answer::Addresses(vec![ip(&format!("10.0.0.{n}"))])
                }
            };
            loc.answer(a);
        }
        assert!(asked <= MAX_QUERIES);
        let found = loc.result().unwrap();
        assert!(!found.is_empty() && found.len() <= MAX_DESTINATIONS);
    }

    #[test]
    fn bad_uris_are_refused() {
        assert!(matches!(
            Locator::new("tel:+123", ALL, zero()),
            Err(LocateError::BadUri(_))
        ));
        assert!(matches!(
            Locator::new("sip:1001@", ALL, zero()),
            Err(LocateError::BadUri(_))
        ));
    }
}

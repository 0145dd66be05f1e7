//! The DNS side of RFC 3263 for agent calls: runs a [`Locator`] (the sans-IO rules) against
//! real DNS with `hickory-resolver`, from the servers in `[sip] dns_servers` or, when that is
//! empty, the system's `/etc/resolv.conf`. A call task awaits it in a task of its own, never
//! the signalling task, and the whole lookup is bounded by `[sip] dns_timeout_ms`, so a dead
//! DNS server cannot hold up signalling or the caller beyond that.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::call::control::LegError;
use crate::config::media::{parse_dns_server, SipConfig};
use crate::sip::locate::{
    random_pick, Answer, Destination, Locator, NaptrRecord, Query, SrvRecord, Transport,
};

/// The transport an agent's INVITE goes over, as the signalling task picks it from the URI
/// (`sips:` or `;transport=tls`: TLS, `;transport=tcp`: TCP, else UDP): the lookup looks for
/// that transport only, so the addresses found are the ones the INVITE can use.
fn agent_transports(uri: &str) -> &'static [Transport] {
    if crate::sip::message::wants_tls(uri) {
        return &[Transport::Tls];
    }
    let tcp = crate::sip::message::parse_sip_uri(uri)
        .and_then(|u| u.transport)
        .is_some_and(|t| t.eq_ignore_ascii_case("tcp"));
    if tcp {
        &[Transport::Tcp]
    } else {
        &[Transport::Udp]
    }
}

/// Looks up where agent calls go (RFC 3263), shared by all calls (it caches answers).
#[derive(Clone)]
pub struct SipResolver {
    /// The resolver, or why none could be made (reported at each lookup).
    inner: Result<TokioResolver, String>,
    limit: Duration,
    /// Where `webrtc:<agent>` extensions are called: the WebRTC edge, when it runs.
    webrtc_edge: Option<SocketAddr>,
}

impl SipResolver {
    /// A resolver for `[sip] dns_servers` (validated at load) and `dns_timeout_ms`.
    pub fn new(sip: &SipConfig) -> SipResolver {
        let limit = Duration::from_millis(sip.dns_timeout_ms);
        let servers: Vec<SocketAddr> = sip
            .dns_servers
            .iter()
            .filter_map(|s| parse_dns_server(s).ok())
            .collect();
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            Ok(TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), name_servers),
                TokioRuntimeProvider::default(),
            ))
        };
        let inner = builder.and_then(|mut b| {
            let opts = b.options_mut();
            // One query may take the whole budget; the overall limit is enforced here too.
            opts.timeout = limit;
            opts.attempts = 1;
            b.build().map_err(|e| format!("cannot set up DNS: {e}"))
        });
        match &inner {
            Ok(_) if servers.is_empty() => {
                tracing::info!("agent extensions are looked up with the system's DNS servers")
            }
            Ok(_) => {
                tracing::info!(servers = ?servers, "agent extensions are looked up with the configured DNS servers")
            }
            Err(e) => tracing::error!(error = %e, "no DNS: only numeric agent extensions work"),
        }
        SipResolver {
            inner,
            limit,
            webrtc_edge: None,
        }
    }

    /// Browser agents (`webrtc:<agent>`) are called at `edge` (None: they cannot be).
    pub fn with_webrtc_edge(mut self, edge: Option<SocketAddr>) -> Self {
        self.webrtc_edge = edge;
        self
    }

    /// The ordered addresses to send an agent's INVITE to (over the URI's transport, see
    /// [`agent_transports`]), per RFC 3263; at most
    /// `dns_timeout_ms` in all.
    pub async fn locate(&self, uri: &str) -> Result<Vec<SocketAddr>, LegError> {
        if uri.starts_with("webrtc:") {
            return self.webrtc_edge.map(|edge| vec![edge]).ok_or_else(|| {
                LegError::BadTarget(format!(
                    "`{uri}` is a browser agent, and browser calls are off ([webrtc] enabled)"
                ))
            });
        }
        let host = crate::handover::transfer::parse_target(uri)
            .map(|(h, _)| h)
            .unwrap_or_else(|_| uri.to_string());
        match self.run(uri, agent_transports(uri)).await {
            Ok(found) => {
                let list: Vec<String> = found.iter().map(Destination::to_string).collect();
                tracing::info!(%uri, targets = ?list, "agent extension located");
                Ok(found.into_iter().map(|d| d.addr).collect())
            }
            Err(Failure::BadUri(why)) => Err(LegError::BadTarget(why)),
            Err(Failure::Lookup(why)) => Err(LegError::Lookup { host, why }),
            Err(Failure::Timeout) => Err(LegError::LookupTimeout {
                host,
                secs: self.limit.as_secs().max(1),
            }),
        }
    }

    /// The ordered addresses a trunk's REGISTERs go to over `transport` (RFC 3263: NAPTR, SRV
    /// by priority and weight, A/AAAA), from `uri` (its outbound proxy or registrar); at most
    /// `dns_timeout_ms` in all. The error says why in words, for the trunk's state.
    pub async fn locate_registrar(
        &self,
        uri: &str,
        transport: Transport,
    ) -> Result<Vec<SocketAddr>, String> {
        match self.run(uri, &[transport]).await {
            Ok(found) => {
                let list: Vec<String> = found.iter().map(Destination::to_string).collect();
                tracing::info!(%uri, targets = ?list, "registrar located");
                Ok(found.into_iter().map(|d| d.addr).collect())
            }
            Err(Failure::BadUri(why) | Failure::Lookup(why)) => {
                Err(format!("cannot locate {uri}: {why}"))
            }
            Err(Failure::Timeout) => Err(format!(
                "locating {uri} took over {} ms ([sip] dns_timeout_ms)",
                self.limit.as_millis()
            )),
        }
    }

    /// Runs the RFC 3263 rules for `uri` over `transports` against DNS, within the limit.
    async fn run(&self, uri: &str, transports: &[Transport]) -> Result<Vec<Destination>, Failure> {
        let mut loc = Locator::new(uri, transports, random_pick())
            .map_err(|e| Failure::BadUri(e.to_string()))?;
        let run = async {
            while let Some(q) = loc.next_query() {
                let answer = match &self.inner {
                    Ok(r) => ask(r, &q).await,
                    Err(e) => Answer::Failed(e.clone()),
                };
                tracing::debug!(query = %q, ?answer, "DNS answer");
                loc.answer(answer);
            }
            loc.result()
        };
        match tokio::time::timeout(self.limit, run).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(Failure::Lookup(e.to_string())),
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// Why a lookup found nothing.
enum Failure {
    /// The URI names no target (or a transport we cannot send over).
    BadUri(String),
    Lookup(String),
    Timeout,
}

/// Runs one query against DNS.
async fn ask(r: &TokioResolver, q: &Query) -> Answer {
    let looked_up = match q {
        Query::Address(host) => {
            return match r.lookup_ip(host.as_str()).await {
                Ok(ips) => Answer::Addresses(ips.iter().collect()),
                Err(e) if e.is_no_records_found() => Answer::Addresses(Vec::new()),
                Err(e) => Answer::Failed(e.to_string()),
            };
        }
        Query::Naptr(name) => r.lookup(fqdn(name), RecordType::NAPTR).await,
        Query::Srv(name) => r.lookup(fqdn(name), RecordType::SRV).await,
    };
    let lookup = match looked_up {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() => {
            return match q {
                Query::Naptr(_) => Answer::Naptr(Vec::new()),
                _ => Answer::Srv(Vec::new()),
            }
        }
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let data = lookup.answers().iter().map(|rec| &rec.data);
    match q {
        Query::Naptr(_) => Answer::Naptr(
            data.filter_map(|d| match d {
                RData::NAPTR(n) => Some(NaptrRecord {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    services: String::from_utf8_lossy(&n.services).into_owned(),
                    replacement: n.replacement.to_utf8(),
                }),
                _ => None,
            })
            .collect(),
        ),
        _ => Answer::Srv(
            data.filter_map(|d| match d {
                RData::SRV(s) => Some(SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_utf8(),
                }),
                _ => None,
            })
            .collect(),
        ),
    }
}

/// `name` as a fully qualified name, so NAPTR and SRV names never go through search domains.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_servers_parse_with_and_without_port() {
        assert_eq!(
            parse_dns_server("127.0.0.9"),
            Ok("127.0.0.9:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("127.0.0.9:5353"),
            Ok("127.0.0.9:5353".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("[::1]:53"),
            Ok("[::1]:53".parse().unwrap())
        );
        assert!(parse_dns_server("dns.example.com").is_err());
    }

    #[tokio::test]
    async fn numeric_targets_need_no_dns() {
        let sip = SipConfig {
            dns_servers: vec!["127.0.0.1:9".into()],
            ..SipConfig::default()
        };
        let r = SipResolver::new(&sip);
        assert_eq!(
            r.locate("sip:1001@127.0.0.1:5070").await,
            Ok(vec!["127.0.0.1:5070".parse().unwrap()])
        );
        // The transport the URI names is the one looked up: TCP and TLS targets on numeric
        // addresses, TLS on 5061 by default.
        assert_eq!(
            r.locate("sip:1001@127.0.0.1:5070;transport=tcp").await,
            Ok(vec!["127.0.0.1:5070".parse().unwrap()])
        );
        assert_eq!(
            r.locate("sips:1001@127.0.0.1").await,
            Ok(vec!["127.0.0.1:5061".parse().unwrap()])
        );
    }

    #[test]
    fn the_lookup_is_for_the_transport_the_uri_asks_for() {
        assert_eq!(agent_transports("sip:a@h"), &[Transport::Udp]);
        assert_eq!(agent_transports("sip:a@h;transport=TCP"), &[Transport::Tcp]);
        assert_eq!(agent_transports("sip:a@h;transport=tls"), &[Transport::Tls]);
        assert_eq!(agent_transports("sips:a@h"), &[Transport::Tls]);
    }
}

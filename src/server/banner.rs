//! What `voicebot serve` prints on stdout once it is ready.
//!
//! The first line is for programs (tests, supervisors): `voicebot ready: sip=ADDR rtp=LO-HI
//! [http=ADDR] [tls=ADDR]`, one line whose format does not change. The lines after it are for
//! the person who just started the gateway: where the agent screen, the admin API and the
//! console are (with where their tokens come from: a file, an environment variable or the
//! configuration, never the token itself), and which SIP addresses reach which flow. When the
//! gateway listens on every address (`0.0.0.0`, `::`), the URLs name loopback, which works on
//! the machine itself; from elsewhere, use the machine's address.
//!
//! The lines' order is kept: tests and scripts find the agent screen, admin API and console on
//! lines 2 to 4 when the HTTP side is on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The HTTP side as the banner shows it.
pub struct HttpBanner<'a> {
    pub addr: SocketAddr,
    /// Where the agents' token comes from (never the token).
    pub agent_token_source: &'a str,
    /// Where the admin token comes from (never the token).
    pub admin_token_source: &'a str,
}

/// A flow as the banner shows it: its name and the numbers (SIP users) it answers.
pub struct FlowBanner<'a> {
    pub name: &'a str,
    pub numbers: &'a [String],
}

/// Everything the banner says.
pub struct Banner<'a> {
    pub sip: SocketAddr,
    pub rtp: (u16, u16),
    pub tls: Option<SocketAddr>,
    pub http: Option<HttpBanner<'a>>,
    pub flows: Vec<FlowBanner<'a>>,
    /// The flow that answers numbers no flow claims.
    pub default_flow: &'a str,
    /// The shared store of a cluster (its URL without the password, this gateway's node
    /// name); `None`: embedded storage, nothing said.
    pub storage: Option<(&'a str, &'a str)>,
}

/// An address a person on this machine can use to reach a listener bound to `addr`: loopback
/// instead of the unspecified address.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

impl Banner<'_> {
    /// The banner, one `\n`-terminated line each.
    pub fn render(&self) -> String {
        let (lo, hi) = self.rtp;
        let sip = self.sip;
        let tls = self.tls.map(|a| format!(" tls={a}")).unwrap_or_default();
        let mut out = match &self.http {
            Some(h) => {
                let http = reachable(h.addr);
                format!(
                    "voicebot ready: sip={sip} rtp={lo}-{hi} http={}{tls}\n\
                     agent screen: http://{http}/agent?token=<agent token> (token from {agent})\n\
                     admin API: http://{http}/api/ (Authorization: Bearer <admin token>, token from {admin}); \
                     OpenAPI at http://{http}/openapi.json, metrics at http://{http}/metrics\n\
                     admin console: http://{http}/admin (log in with the admin token from {admin})\n",
                    h.addr,
                    agent = h.agent_token_source,
                    admin = h.admin_token_source,
                )
            }
            None => format!(
                "voicebot ready: sip={sip} rtp={lo}-{hi}{tls}\n\
                 console, agent screen and admin API: off ([http] listen = \"\"; \
                 `voicebot serve --http 127.0.0.1:8080` turns them on)\n"
            ),
        };
        for line in self.call_lines() {
            out.push_str(&line);
            out.push('\n');
        }
        if let Some((url, node)) = self.storage {
            out.push_str(&format!(
                "shared store: {url} (this gateway is node `{node}` of the cluster)\n"
            ));
        }
        out
    }

    /// `call the bot (flow NAME): sip:NUMBER@ADDR, ...`, one line per flow, the default flow
    /// first. The default flow also answers numbers no flow claims; a flow with no numbers
    /// of its own is reached only through the default rule (or not from SIP at all).
    fn call_lines(&self) -> Vec<String> {
        let at = reachable(self.sip);
        let mut flows: Vec<&FlowBanner<'_>> = self.flows.iter().collect();
        flows.sort_by_key(|f| f.name != self.default_flow);
        flows
            .into_iter()
            .filter_map(|f| {
                let default = f.name == self.default_flow;
                let uris: Vec<String> = if f.numbers.is_empty() && default {
                    vec![format!("sip:{}@{at}", f.name)]
                } else {
                    f.numbers.iter().map(|n| format!("sip:{n}@{at}")).collect()
                };
                if uris.is_empty() {
                    return None;
                }
                let what = if default {
                    format!(
                        "flow {}, the default: it also answers numbers no flow claims",
                        f.name
                    )
                } else {
                    format!("flow {}", f.name)
                };
                Some(format!("call the bot ({what}): {}", uris.join(", ")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn with_http_the_ready_line_comes_first_then_the_urls_then_the_flows() {
        let support = numbers(&["support", "+18005550100"]);
        let billing = numbers(&["200"]);
        let banner = Banner {
            sip: "0.0.0.0:5060".parse().unwrap(),
            rtp: (20000, 29999),
            tls: None,
            http: Some(HttpBanner {
                addr: "127.0.0.1:8080".parse().unwrap(),
                agent_token_source: "/srv/vb/data/agent-token",
                admin_token_source: "$VOICEBOT_ADMIN_TOKEN",
            }),
            flows: vec![
                FlowBanner {
                    name: "billing",
                    numbers: &billing,
                },
                FlowBanner {
                    name: "support",
                    numbers: &support,
                },
            ],
            default_flow: "support",
            storage: None,
        };
        let text = banner.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "voicebot ready: sip=0.0.0.0:5060 rtp=20000-29999 http=127.0.0.1:8080"
        );
        assert_eq!(
            lines[1],
            "agent screen: http://127.0.0.1:8080/agent?token=<agent token> \
             (token from /srv/vb/data/agent-token)"
        );
        assert!(lines[2].starts_with("admin API: http://127.0.0.1:8080/api/"));
        assert_eq!(
            lines[3],
            "admin console: http://127.0.0.1:8080/admin \
             (log in with the admin token from $VOICEBOT_ADMIN_TOKEN)"
        );
        assert_eq!(
            lines[4],
            "call the bot (flow support, the default: it also answers numbers no flow claims): \
             sip:support@127.0.0.1:5060, sip:+18005550100@127.0.0.1:5060"
        );
        assert_eq!(
            lines[5],
            "call the bot (flow billing): sip:200@127.0.0.1:5060"
        );
        assert_eq!(lines.len(), 6);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn without_http_it_says_how_to_turn_it_on() {
        let banner = Banner {
            sip: "127.0.0.1:5070".parse().unwrap(),
            rtp: (20000, 20099),
            tls: Some("127.0.0.1:5071".parse().unwrap()),
            http: None,
            flows: vec![FlowBanner {
                name: "support",
                numbers: &[],
            }],
            default_flow: "support",
            storage: None,
        };
        let text = banner.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "voicebot ready: sip=127.0.0.1:5070 rtp=20000-20099 tls=127.0.0.1:5071"
        );
        assert!(lines[1].contains("--http 127.0.0.1:8080"), "{}", lines[1]);
        assert!(
            lines[2].ends_with("sip:support@127.0.0.1:5070"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn the_unspecified_address_is_shown_as_loopback() {
        assert_eq!(
            reachable("0.0.0.0:80".parse().unwrap()),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:80".parse().unwrap()),
            "[::1]:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("192.0.2.1:80".parse().unwrap()),
            "192.0.2.1:80".parse::<SocketAddr>().unwrap()
        );
    }
}

//! `[webrtc]`: browser calls (the console's "Call this flow" and the agents' softphone), see
//! [`crate::webrtc`]. On by default: it needs the HTTP side (its signalling is HTTP) and opens
//! nothing to the network by itself beyond one UDP port per browser call.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `[webrtc]` in the gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// Browser calls on or off (off: `/api/webrtc/...` answers 503, `webrtc:` extensions fail).
    pub enabled: bool,
    /// The address browsers reach the gateway's media at (its ICE host candidate). Empty: the
    /// HTTP side's address when it names one, else 127.0.0.1 (a browser on this machine).
    pub ice_address: String,
    /// Browser calls at once, callers and agents together; 0: `[sip] max_calls` (every
    /// browser call is also a call of the gateway, so that limit holds for them anyway).
    pub max_calls: usize,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            enabled: true,
            ice_address: String::new(),
            max_calls: 0,
        }
    }
}

impl WebRtcConfig {
    /// The ICE host address: `ice_address`, else the HTTP listener's IP when specific, else
    /// loopback. An unreadable `ice_address` is reported by validation.
    pub fn ice_ip(&self, http_ip: Option<IpAddr>) -> Result<IpAddr, String> {
        if !self.ice_address.trim().is_empty() {
            return self.ice_address.trim().parse::<IpAddr>().map_err(|_| {
                format!(
                    "`{}` is not an IP address (browsers must reach it directly)",
                    self.ice_address
                )
            });
        }
        Ok(match http_ip {
            Some(ip) if !ip.is_unspecified() => ip,
            _ => IpAddr::from([127, 0, 0, 1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ice_address_follows_the_http_side_unless_set() {
        let c = WebRtcConfig::default();
        assert_eq!(c.ice_ip(None).unwrap().to_string(), "127.0.0.1");
        assert_eq!(
            c.ice_ip(Some("0.0.0.0".parse().unwrap()))
                .unwrap()
                .to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            c.ice_ip(Some("10.1.2.3".parse().unwrap()))
                .unwrap()
                .to_string(),
            "10.1.2.3"
        );
        let set = WebRtcConfig {
            ice_address: "192.168.0.9".into(),
            ..WebRtcConfig::default()
        };
        assert_eq!(set.ice_ip(None).unwrap().to_string(), "192.168.0.9");
        let bad = WebRtcConfig {
            ice_address: "host.example".into(),
            ..WebRtcConfig::default()
        };
        assert!(bad.ice_ip(None).unwrap_err().contains("not an IP address"));
    }
}

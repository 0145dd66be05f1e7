//! `[[sip.trunks]]`: the SIP trunks and PBXs the gateway takes calls from. A trunk may ask the
//! gateway to register (a registrar URI and credentials), and says which of its calls are its
//! own (source addresses, or the registered contact) and which header carries the number the
//! caller dialled (for picking the flow).
//!
//! The password comes from the environment (`password_env`) so the file can be shared; a
//! missing variable is an error at load that names the variable and the trunk.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config_file::ConfigError;
use crate::sip::auth::AllowList;
use crate::sip::message::{parse_sip_uri, uri_of};

/// Where the called number is read from, in the order a trunk lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalledSource {
    /// The Request-URI's user part (skipped when it is the trunk's registered contact user:
    /// a registrar that routes to our contact puts our user there, not the number).
    RequestUri,
    /// The To header's user part.
    To,
    /// `P-Called-Party-ID` (RFC 3455): the number originally called, set by IMS and many
    /// carriers.
    PCalledPartyId,
    /// The first `Diversion` header (RFC 5806): the number the call was forwarded from.
    Diversion,
}

impl CalledSource {
    pub fn name(self) -> &'static str {
        match self {
            CalledSource::RequestUri => "request-uri",
            CalledSource::To => "to",
            CalledSource::PCalledPartyId => "p-called-party-id",
            CalledSource::Diversion => "diversion",
        }
    }
}

/// The default order: the carrier's own statement of the called number first, then the
/// Request-URI (the number on an address-matched trunk), then To.
pub fn default_called_number() -> Vec<CalledSource> {
    vec![
        CalledSource::PCalledPartyId,
        CalledSource::RequestUri,
        CalledSource::To,
    ]
}

/// The words accepted for a trunk's `transport`.
pub const TRANSPORTS: [&str; 3] = ["udp", "tcp", "tls"];
/// The words accepted for a trunk's `srtp`.
pub const SRTP_MODES: [&str; 3] = ["off", "optional", "required"];

/// One `[[sip.trunks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkConfig {
    /// A unique name (logs, metrics, call records, `GET /api/trunks`).
    pub name: String,
    /// The registrar's SIP URI (`sip:sip.carrier.example`); "" = the trunk is matched by
    /// `addresses` only and the gateway does not register.
    pub registrar: String,
    /// Where REGISTERs are sent (`host[:port]`); "" = the registrar's host and port.
    pub outbound_proxy: String,
    /// The user registered (the AOR's user part and our Contact's user).
    pub user: String,
    /// The AOR's domain; "" = the registrar's host.
    pub domain: String,
    /// The digest user name; "" = `user`.
    pub auth_user: String,
    /// The environment variable holding the digest password.
    pub password_env: String,
    /// The password itself (tests; prefer `password_env`).
    pub password: String,
    /// "udp", "tcp" or "tls" (TLS needs `[sip.tls] listen`: the registrar sends our calls to
    /// the TLS Contact we register).
    pub transport: String,
    /// The registration expiry asked for, seconds.
    pub expires_s: u32,
    /// Back-off after a failed REGISTER: doubles from `retry_min_s` up to `retry_max_s`.
    pub retry_min_s: u64,
    pub retry_max_s: u64,
    /// Source addresses or CIDR ranges whose calls belong to this trunk.
    pub addresses: Vec<String>,
    /// SRTP for this trunk's calls: "off", "optional", "required"; "" = the gateway's default.
    pub srtp: String,
    /// Where the called number is read from, first found wins.
    pub called_number: Vec<CalledSource>,
    /// A flow for every call of the trunk ("" = the flow is picked by the called number).
    pub flow: String,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            registrar: String::new(),
            outbound_proxy: String::new(),
            user: String::new(),
            domain: String::new(),
            auth_user: String::new(),
            password_env: String::new(),
            password: String::new(),
            transport: "udp".into(),
            expires_s: 600,
            retry_min_s: 30,
            retry_max_s: 1800,
            addresses: Vec::new(),
            srtp: String::new(),
            called_number: default_called_number(),
            flow: String::new(),
        }
    }
}

pub use crate::sip::endpoint::CalledHeaders;

/// The user part of the URI inside a header value, `%HH` escapes decoded; a `tel:` URI's
/// number; `+` kept.
fn user_of(value: &str) -> Option<String> {
    let uri = uri_of(value);
    let user = match parse_sip_uri(uri) {
        Some(u) => u.user?.to_string(),
        None => {
            let tel = uri.strip_prefix("tel:")?;
            tel.split(';').next()?.to_string()
        }
    };
    let user = crate::sip::message::unescape_uri_part(&user).unwrap_or(user);
    (!user.is_empty()).then_some(user)
}

impl TrunkConfig {
    /// Whether the gateway registers with this trunk.
    pub fn registers(&self) -> bool {
        !self.registrar.is_empty()
    }

    /// The password (from `password_env`, else `password`); None when neither is set.
    pub fn resolved_password(&self) -> Option<String> {
        if !self.password_env.is_empty() {
            return std::env::var(&self.password_env).ok();
        }
        (!self.password.is_empty()).then(|| self.password.clone())
    }

    /// The AOR's domain: `domain`, else the registrar's host.
    pub fn aor_domain(&self) -> String {
        if !self.domain.is_empty() {
            return self.domain.clone();
        }
        parse_sip_uri(&self.registrar)
            .map(|u| u.host.to_string())
            .unwrap_or_default()
    }

    /// The digest user name: `auth_user`, else `user`.
    pub fn digest_user(&self) -> &str {
        if self.auth_user.is_empty() {
            &self.user
        } else {
            &self.auth_user
        }
    }

    /// The SIP URI that REGISTERs are sent towards (RFC 3263 locates it): the outbound proxy
    /// (a SIP URI, or `host[:port]`), else the registrar; with the trunk's transport as a
    /// `transport` parameter when it is TCP or TLS and the URI names none (a `sips:` URI
    /// means TLS already).
    pub fn register_uri(&self) -> String {
        let proxy = self.outbound_proxy.trim();
        let mut uri = if proxy.is_empty() {
            self.registrar.clone()
        } else if parse_sip_uri(proxy).is_some() {
            proxy.to_string()
        } else {
            format!("sip:{proxy}")
        };
        let named = parse_sip_uri(&uri).is_some_and(|u| u.transport.is_some());
        if self.transport != "udp" && !named && !uri.starts_with("sips:") {
            uri = uri.split('?').next().unwrap_or(&uri).to_string();
            uri.push_str(";transport=");
            uri.push_str(&self.transport);
        }
        uri
    }

    /// Whether a call from `ip` is this trunk's by address.
    pub fn matches_address(&self, ip: IpAddr) -> bool {
        !self.addresses.is_empty()
            && AllowList::parse(&self.addresses).is_ok_and(|list| list.allows(ip))
    }

    /// The called number per `called_number`, first source found wins.
    /// `registered_user`: our Contact's user when this trunk registers (a Request-URI user
    /// equal to it is our contact, not a number).
    pub fn called_number(&self, h: &CalledHeaders) -> Option<(String, CalledSource)> {
        self.called_number.iter().find_map(|source| {
            let number = match source {
                CalledSource::RequestUri => user_of(&h.request_uri)
                    .filter(|u| !(self.registers() && u.eq_ignore_ascii_case(&self.user))),
                CalledSource::To => user_of(&h.to),
                CalledSource::PCalledPartyId => h.p_called_party_id.as_deref().and_then(user_of),
                CalledSource::Diversion => h.diversion.as_deref().and_then(user_of),
            };
            number.map(|n| (n, *source))
        })
    }

    fn validate(
        &self,
        i: usize,
        tls_listener: bool,
        file: &Path,
        text: &str,
    ) -> Result<(), ConfigError> {
        let field = |f: &str| format!("sip.trunks[{i}].{f}");
        let bad =
            |f: &str, reason: String| Err(ConfigError::invalid(file, text, &field(f), reason));
        let name = &self.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad(
                "name",
                "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
            );
        }
        if !TRANSPORTS.contains(&self.transport.as_str()) {
            return bad(
                "transport",
                format!("trunk {name:?}: must be one of {TRANSPORTS:?}"),
            );
        }
        if !self.srtp.is_empty() && !SRTP_MODES.contains(&self.srtp.as_str()) {
            return bad(
                "srtp",
                format!("trunk {name:?}: must be one of {SRTP_MODES:?} (or \"\" for the default)"),
            );
        }
        if let Err(e) = AllowList::parse(&self.addresses) {
            return bad("addresses", format!("trunk {name:?}: {e}"));
        }
        if self.called_number.is_empty() {
            return bad(
                "called_number",
                format!("trunk {name:?}: list at least one of request-uri, to, p-called-party-id, diversion"),
            );
        }
        if self.flow.chars().any(char::is_control) {
            return bad("flow", format!("trunk {name:?}: no control characters"));
        }
        if !self.registers() {
            if self.addresses.is_empty() {
                return bad(
                    "addresses",
                    format!("trunk {name:?}: without a registrar the trunk is matched by address: list its addresses"),
                );
            }
            return Ok(());
        }
        self.validate_registration(&field, tls_listener, file, text)
    }

    fn validate_registration(
        &self,
        field: &dyn Fn(&str) -> String,
        tls_listener: bool,
        file: &Path,
        text: &str,
    ) -> Result<(), ConfigError> {
        let name = &self.name;
        let bad =
            |f: &str, reason: String| Err(ConfigError::invalid(file, text, &field(f), reason));
        if parse_sip_uri(&self.registrar).is_none() || self.registrar.contains(['<', '>', ' ']) {
            return bad(
                "registrar",
                format!("trunk {name:?}: must be a SIP URI such as \"sip:sip.carrier.example\""),
            );
        }
        if self.transport == "tls" && !tls_listener {
            return bad(
                "transport",
                format!("trunk {name:?}: registering over TLS needs the TLS listener for the calls the registrar sends to our Contact: set [sip.tls] listen"),
            );
        }
        let secure = |u: &str| u.trim_start().starts_with("sips:");
        if self.transport != "tls" && (secure(&self.registrar) || secure(&self.outbound_proxy)) {
            return bad(
                "transport",
                format!("trunk {name:?}: a sips: registrar or proxy is reached over TLS only: set transport = \"tls\""),
            );
        }
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b))
        };
        if !token_ok(&self.user) {
            return bad(
                "user",
                format!(
                    "trunk {name:?}: a registering trunk needs a user (URI user characters only)"
                ),
            );
        }
        if !self.auth_user.is_empty() && self.auth_user.chars().any(|c| c.is_control() || c == '"')
        {
            return bad(
                "auth_user",
                format!("trunk {name:?}: no quotes or control characters"),
            );
        }
        if !self.domain.is_empty() && !token_ok(&self.domain) {
            return bad("domain", format!("trunk {name:?}: must be a host name"));
        }
        if !self.password_env.is_empty() {
            match std::env::var(&self.password_env) {
                Ok(p) if !p.is_empty() => {}
                _ => {
                    return bad(
                        "password_env",
                        format!(
                            "trunk {name:?}: the environment variable {} is not set (or empty)",
                            self.password_env
                        ),
                    )
                }
            }
        }
        if !(60..=86_400).contains(&self.expires_s) {
            return bad(
                "expires_s",
                format!("trunk {name:?}: must be between 60 and 86400 seconds"),
            );
        }
        if self.retry_min_s == 0 || self.retry_max_s < self.retry_min_s || self.retry_max_s > 86_400
        {
            return bad(
                "retry_min_s",
                format!("trunk {name:?}: need 1 <= retry_min_s <= retry_max_s <= 86400"),
            );
        }
        let uri = self.register_uri();
        let host_ok = parse_sip_uri(&uri).is_some_and(|u| {
            !u.host.is_empty()
                && !u
                    .host
                    .contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
        });
        if !host_ok {
            return bad(
                "outbound_proxy",
                format!("trunk {name:?}: not a host[:port] or SIP URI"),
            );
        }
        Ok(())
    }
}

/// Validates every trunk and that names are unique; `tls_listener`: whether `[sip.tls]
/// listen` is set (trunks that register over TLS need it).
pub fn validate(
    trunks: &[TrunkConfig],
    tls_listener: bool,
    file: &Path,
    text: &str,
) -> Result<(), ConfigError> {
    for (i, t) in trunks.iter().enumerate() {
        t.validate(i, tls_listener, file, text)?;
        if trunks[..i].iter().any(|o| o.name == t.name) {
            return Err(ConfigError::invalid(
                file,
                text,
                &format!("sip.trunks[{i}].name"),
                format!("trunk name {:?} is used twice", t.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk() -> TrunkConfig {
        TrunkConfig {
            name: "carrier".into(),
            registrar: "sip:sip.carrier.test:5080".into(),
            user: "bot".into(),
            password: "secret".into(),
            ..TrunkConfig::default()
        }
    }

    fn check(t: TrunkConfig) -> Result<(), String> {
        validate(&[t], false, Path::new("gateway.toml"), "").map_err(|e| e.to_string())
    }

    #[test]
    fn a_registering_trunk_validates_and_derives_its_targets() {
        let t = trunk();
        assert!(check(t.clone()).is_ok());
        assert_eq!(t.aor_domain(), "sip.carrier.test");
        assert_eq!(t.register_uri(), "sip:sip.carrier.test:5080");
        let mut p = t.clone();
        p.outbound_proxy = "127.0.0.1:6000".into();
        assert_eq!(p.register_uri(), "sip:127.0.0.1:6000");
        p.outbound_proxy = "sip:proxy.test;lr".into();
        assert_eq!(p.register_uri(), "sip:proxy.test;lr");
        // TCP and TLS are named in the URI, so RFC 3263 looks for that transport only.
        p.transport = "tcp".into();
        assert_eq!(p.register_uri(), "sip:proxy.test;lr;transport=tcp");
        let mut s = t.clone();
        s.transport = "tls".into();
        assert_eq!(s.register_uri(), "sip:sip.carrier.test:5080;transport=tls");
        s.registrar = "sips:sip.carrier.test".into();
        assert_eq!(s.register_uri(), "sips:sip.carrier.test");
        s.registrar = "sip:sip.carrier.test;transport=tls".into();
        assert_eq!(s.register_uri(), "sip:sip.carrier.test;transport=tls");
    }

    #[test]
    fn tls_trunks_need_the_listener_and_sips_needs_tls() {
        let tls = TrunkConfig {
            transport: "tls".into(),
            ..trunk()
        };
        let err = check(tls.clone()).expect_err("no listener");
        assert!(err.contains("[sip.tls] listen"), "{err}");
        assert!(validate(&[tls], true, Path::new("gateway.toml"), "").is_ok());
        let sips = TrunkConfig {
            registrar: "sips:sip.carrier.test".into(),
            ..trunk()
        };
        let err = check(sips).expect_err("sips over udp");
        assert!(err.contains("over TLS only"), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: Vec<(TrunkConfig, &str)> = vec![
            (
                TrunkConfig {
                    name: "a b".into(),
                    ..trunk()
                },
                "name",
            ),
            (
                TrunkConfig {
                    transport: "sctp".into(),
                    ..trunk()
                },
                "transport",
            ),
            (
                TrunkConfig {
                    srtp: "maybe".into(),
                    ..trunk()
                },
                "srtp",
            ),
            (
                TrunkConfig {
                    registrar: "carrier.test".into(),
                    ..trunk()
                },
                "registrar",
            ),
            (
                TrunkConfig {
                    user: String::new(),
                    ..trunk()
                },
                "user",
            ),
            (
                TrunkConfig {
                    expires_s: 10,
                    ..trunk()
                },
                "expires_s",
            ),
            (
                TrunkConfig {
                    retry_min_s: 0,
                    ..trunk()
                },
                "retry_min_s",
            ),
            (
                TrunkConfig {
                    addresses: vec!["300.1.1.1".into()],
                    ..trunk()
                },
                "addresses",
            ),
            (
                TrunkConfig {
                    called_number: vec![],
                    ..trunk()
                },
                "called_number",
            ),
            (
                TrunkConfig {
                    registrar: String::new(),
                    ..trunk()
                },
                "addresses",
            ),
        ];
        for (t, field) in cases {
            let e = check(t).expect_err(field);
            assert!(
                e.contains(&format!("sip.trunks[0].{field}")),
                "{field}: {e}"
            );
        }
        let e = validate(&[trunk(), trunk()], false, Path::new("g.toml"), "").expect_err("dup");
        assert!(e.to_string().contains("used twice"), "{e}");
        for word in SRTP_MODES {
            assert!(check(TrunkConfig {
                srtp: word.into(),
                ..trunk()
            })
            .is_ok());
        }
    }

    #[test]
    fn a_missing_password_variable_names_it_and_the_trunk() {
        let t = TrunkConfig {
            password_env: "VOICEBOT_TEST_TRUNK_PASSWORD_NOT_SET".into(),
            ..trunk()
        };
        let e = check(t).expect_err("missing");
        assert!(e.contains("VOICEBOT_TEST_TRUNK_PASSWORD_NOT_SET"), "{e}");
        assert!(e.contains("\"carrier\""), "{e}");
    }

    #[test]
    fn called_number_follows_the_trunks_order() {
        let h = CalledHeaders {
            request_uri: "sip:bot@127.0.0.1:5070".into(),
            to: "<sip:+4930111@carrier.test>".into(),
            p_called_party_id: Some("<sip:4930222@carrier.test;user=phone>".into()),
            diversion: Some("<tel:+4930333>;reason=unconditional".into()),
        };
        let t = trunk();
        assert_eq!(
            t.called_number(&h),
            Some(("4930222".into(), CalledSource::PCalledPartyId))
        );
        let only = |s: Vec<CalledSource>| TrunkConfig {
            called_number: s,
            ..trunk()
        };
        // The registered contact's user in the Request-URI is not a number: To is next.
        assert_eq!(
            only(vec![CalledSource::RequestUri, CalledSource::To]).called_number(&h),
            Some(("+4930111".into(), CalledSource::To))
        );
        assert_eq!(
            only(vec![CalledSource::Diversion]).called_number(&h),
            Some(("+4930333".into(), CalledSource::Diversion))
        );
        // An address-matched trunk takes the Request-URI's user.
        let plain = TrunkConfig {
            registrar: String::new(),
            addresses: vec!["10.0.0.0/8".into()],
            called_number: vec![CalledSource::RequestUri],
            ..trunk()
        };
        assert_eq!(
            plain.called_number(&h),
            Some(("bot".into(), CalledSource::RequestUri))
        );
        assert!(plain.matches_address("10.1.2.3".parse().expect("ip")));
        assert!(!plain.matches_address("192.0.2.1".parse().expect("ip")));
        assert!(!trunk().matches_address("10.1.2.3".parse().expect("ip")));
    }
}

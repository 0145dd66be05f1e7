//! Where an escalated call goes: the agent extensions per team, tried in order (a hunt group),
//! each for at most a ring timeout, and the SIP headers that carry the context to the agent's
//! phone or PBX. Sans-IO: [`Hunt`] is a plain state machine over the configured targets that
//! the call task feeds with what happened to each attempt.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sip::digest_client::ClientCredentials;
use crate::sip::endpoint::OutboundAuth;

/// The team name that serves teams without their own list.
pub const DEFAULT_TEAM: &str = "default";

/// How a call reaches one extension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// The gateway calls the agent and bridges the two legs itself (back-to-back user agent):
    /// it keeps transcribing, may whisper to the agent first, and can take the caller back.
    #[default]
    Bridge,
    /// Blind transfer (RFC 3515 REFER): the caller's side calls the extension itself and the
    /// gateway leaves the call once that call is answered.
    Blind,
    /// Attended transfer: the gateway calls the agent first (the whisper plays), then asks the
    /// caller's side to replace that call with its own (REFER with `Replaces`, RFC 3891). When
    /// the caller's side cannot, the gateway bridges the two legs instead.
    Attended,
}

impl TransferMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferMode::Bridge => "bridge",
            TransferMode::Blind => "blind",
            TransferMode::Attended => "attended",
        }
    }
}

/// One extension of a team: a SIP URI (transferred with the team's default mode), or
/// `{ uri = "...", mode = "blind" }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Extension {
    Uri(String),
    Spec(ExtensionSpec),
}

/// An extension with its own transfer mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionSpec {
    pub uri: String,
    #[serde(default)]
    pub mode: Option<TransferMode>,
}

// By hand rather than `untagged`, so a wrong mode or key is reported as exactly that (serde's
// untagged enums only say that no variant matched).
impl<'de> Deserialize<'de> for Extension {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Extension;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    r#"a SIP URI or { uri = "sip:...", mode = "bridge" | "blind" | "attended" }"#,
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Extension, E> {
                Ok(Extension::Uri(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Extension, A::Error> {
                ExtensionSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Extension::Spec)
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Extension {
    pub fn uri(&self) -> &str {
        match self {
            Extension::Uri(u) => u,
            Extension::Spec(s) => &s.uri,
        }
    }
}

/// An extension to try, with the mode it is reached in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub mode: TransferMode,
}

/// What the gateway does when the agent hangs up a bridged call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterAgent {
    /// The caller's call ends too.
    #[default]
    End,
    /// The bot takes the caller back ("Is there anything else I can help you with?").
    Bot,
}

/// `[transfer]` in the gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Agent extensions per team, tried in order; `default` serves the other teams. Each is
    /// a SIP URI or `{ uri, mode }`. No extension for a team: the bot announces the hand-over
    /// and ends the call.
    pub teams: BTreeMap<String, Vec<Extension>>,
    /// The mode of extensions given as a plain URI.
    pub mode: TransferMode,
    /// How long one extension may ring before the next is tried, seconds (for blind
    /// transfers: how long the caller's side may take to reach it).
    pub ring_timeout_s: u64,
    /// The user part of our From header on agent calls.
    pub from_user: String,
    /// How long the agent's INVITE waits for the webhook to confirm the escalated event, so
    /// the agent's screen has the context before the phone rings; the INVITE goes out after
    /// this at the latest (a dead webhook never holds up the caller). Milliseconds, 0: no wait.
    pub webhook_wait_ms: u64,
    /// Base URL where the context can be fetched (`{base}/calls/{id}/context`), sent to the
    /// agent's PBX in `X-Voicebot-Context-Url`; empty: the header is left out.
    pub context_url_base: String,
    /// Whether the agent hears a short spoken summary (the flow's `transfer_whisper` prompt)
    /// when answering, before the caller is put through (bridge and attended modes).
    pub whisper: bool,
    /// What happens when the agent hangs up a bridged call.
    pub after_agent_hangup: AfterAgent,
    /// An extension whose host has several addresses (DNS SRV or A/AAAA records, RFC 3263):
    /// how long the INVITE to one address may go without any response (not even 100 Trying)
    /// before the next address is tried, ms, within the ring timeout. 0: only the
    /// transaction timeout (32 s) or a 503 moves on.
    pub failover_after_ms: u64,
    /// Per team (`default` serves the others), the user and password the gateway answers a
    /// PBX's `401`/`407` challenge to an agent INVITE with.
    pub credentials: BTreeMap<String, AgentCredentials>,
}

/// `[handover.transfer.credentials.<team>]`: how the gateway authenticates its calls to the
/// team's extensions. The password comes from `password_env` (an environment variable) or,
/// for tests, `password`; it never reaches a log line or a `Debug` output.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCredentials {
    pub user: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub password_env: String,
}

impl std::fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("password_env", &self.password_env)
            .finish()
    }
}

impl AgentCredentials {
    /// The password: `password`, else the variable named by `password_env` (unset or empty:
    /// `None`).
    pub fn password(&self) -> Option<String> {
        if !self.password.is_empty() {
            return Some(self.password.clone());
        }
        if self.password_env.is_empty() {
            return None;
        }
        std::env::var(&self.password_env)
            .ok()
            .filter(|p| !p.is_empty())
    }

    /// What is wrong with them, as `(field, reason)` (`field` below the team's table).
    fn problem(&self, team: &str) -> Option<(&'static str, String)> {
        if self.user.is_empty() || self.user.chars().any(|c| c.is_control()) {
            return Some((
                "user",
                "must be a user name without control characters".into(),
            ));
        }
        if self.password.is_empty() && self.password_env.is_empty() {
            return Some((
                "password_env",
                format!("team {team}: set password_env (an environment variable) or password"),
            ));
        }
        if self.password().is_none() {
            return Some((
                "password_env",
                format!(
                    "environment variable {} (the password of team {team}'s agent calls) is not set or empty",
                    self.password_env
                ),
            ));
        }
        None
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            teams: BTreeMap::new(),
            mode: TransferMode::Bridge,
            ring_timeout_s: 20,
            from_user: "voicebot".into(),
            webhook_wait_ms: 40,
            context_url_base: String::new(),
            whisper: false,
            after_agent_hangup: AfterAgent::End,
            failover_after_ms: 4000,
            credentials: BTreeMap::new(),
        }
    }
}

impl TransferConfig {
    /// What is wrong with the settings, as `(field, reason)`.
    pub fn problem(&self) -> Option<(String, String)> {
        if !(1..=300).contains(&self.ring_timeout_s) {
            return Some((
                "ring_timeout_s".into(),
                format!("{} must be in 1..=300", self.ring_timeout_s),
            ));
        }
        for (team, targets) in &self.teams {
            for (i, target) in targets.iter().enumerate() {
                if let Err(reason) = check_extension(target) {
                    return Some((format!("teams.{team}.{i}"), reason));
                }
            }
        }
        if self.failover_after_ms != 0 && !(200..=32_000).contains(&self.failover_after_ms) {
            return Some((
                "failover_after_ms".into(),
                format!(
                    "{} must be 0 (off) or in 200..=32000",
                    self.failover_after_ms
                ),
            ));
        }
        for (team, credentials) in &self.credentials {
            if let Some((field, reason)) = credentials.problem(team) {
                return Some((format!("credentials.{team}.{field}"), reason));
            }
        }
        if self.webhook_wait_ms > 2000 {
            return Some((
                "webhook_wait_ms".into(),
                format!("{} must be at most 2000", self.webhook_wait_ms),
            ));
        }
        if self.from_user.is_empty()
            || !self
                .from_user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        {
            return Some((
                "from_user".into(),
                "must be a SIP user name (letters, digits, - _ . +)".into(),
            ));
        }
        None
    }

    /// The extensions for `team` (or the default team's), each with its mode.
    pub fn targets(&self, team: &str) -> Vec<Target> {
        self.teams
            .get(team)
            .filter(|t| !t.is_empty())
            .or_else(|| self.teams.get(DEFAULT_TEAM))
            .map(|list| {
                list.iter()
                    .map(|e| Target {
                        uri: e.uri().to_string(),
                        mode: match e {
                            // The gateway alone reaches a browser agent: always bridged.
                            _ if browser_agent(e.uri()).is_some() => TransferMode::Bridge,
                            Extension::Spec(ExtensionSpec { mode: Some(m), .. }) => *m,
                            _ => self.mode,
                        },
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The credentials for our INVITEs on behalf of `team`: the team's, else the `default`
    /// team's. `None`: the signalling task tries the account of the trunk the extension is
    /// behind (`server::trunks::Trunks::credentials_for`); without one a challenge is a refusal.
    pub fn team_credentials(&self, team: &str) -> Option<OutboundAuth> {
        let (name, entry) = self
            .credentials
            .get_key_value(team)
            .or_else(|| self.credentials.get_key_value(DEFAULT_TEAM))?;
        let Some(password) = entry.password() else {
            tracing::warn!(team = %name, variable = %entry.password_env, "the agent calls' password is not set; a challenge will fail");
            return None;
        };
        Some(OutboundAuth {
            owner: format!("team {name}"),
            credentials: ClientCredentials {
                user: entry.user.clone(),
                password,
            },
        })
    }

    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.ring_timeout_s)
    }
}

/// The agent's name of a browser agent's extension (`webrtc:<agent>`), else None.
pub fn browser_agent(uri: &str) -> Option<&str> {
    uri.strip_prefix("webrtc:")
}

/// Whether a name (a browser agent's, a flow's) can stand as is in a SIP URI's user part:
/// the WebRTC edge and the core call each other by such names.
pub fn uri_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What is wrong with an extension: a SIP URI the gateway can call, or a browser agent
/// (`webrtc:<agent>`, reached through the gateway only, so in bridge mode).
fn check_extension(e: &Extension) -> Result<(), String> {
    let Some(agent) = browser_agent(e.uri()) else {
        return parse_target(e.uri()).map(|_| ());
    };
    if !uri_safe_name(agent) {
        return Err(format!(
            "`{}`: a browser agent's name is letters, digits, `.`, `_` or `-` (at most 64)",
            e.uri()
        ));
    }
    match e {
        Extension::Spec(ExtensionSpec {
            mode: Some(m @ (TransferMode::Blind | TransferMode::Attended)),
            ..
        }) => Err(format!(
            "`{}` is a browser agent: only the gateway can reach it, so mode must be \"bridge\", not \"{}\"",
            e.uri(),
            m.as_str()
        )),
        _ => Ok(()),
    }
}

/// The host and port of a `sip:user@host[:port][;params]` or `sips:` target (when absent,
/// port 5061 for `sips:` and `;transport=tls`, RFC 3261 19.1.2; else 5060).
pub fn parse_target(uri: &str) -> Result<(String, u16), String> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .ok_or_else(|| format!("`{uri}` is not a sip: or sips: URI"))?;
    let default = crate::sip::message::default_port(uri).to_string();
    let host_port = rest
        .split(';')
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("");
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (host_port, default.as_str()),
        Some((h, p)) => (h, p),
        None => (host_port, default.as_str()),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{uri}` has a bad port `{port}`"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{uri}` has no host"));
    }
    Ok((host.to_string(), port))
}

/// The RFC 7433 `User-to-User` value carrying a context token: hex, with our purpose.
pub fn user_to_user(token: &str) -> String {
    let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex};encoding=hex;purpose=voicebot-context")
}

/// Characters a SIP URI header value may carry unescaped (RFC 3261 25.1: `unreserved` and
/// `hnv-unreserved`); everything else is percent-encoded.
const URI_HEADER_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'[')
    .remove(b']')
    .remove(b'/')
    .remove(b'?')
    .remove(b':')
    .remove(b'+')
    .remove(b'$');

/// A `Refer-To` URI: `uri` with `headers` for the INVITE the far end sends (RFC 3261 19.1.1
/// `?name=value&...`, values escaped), e.g. `Replaces` or `User-to-User`.
pub fn refer_to(uri: &str, headers: &[(&str, String)]) -> String {
    let mut out = uri.to_string();
    for (i, (name, value)) in headers.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(name);
        out.push('=');
        out.extend(percent_encoding::utf8_percent_encode(
            value,
            URI_HEADER_VALUE,
        ));
    }
    out
}

/// The `Replaces` value (RFC 3891) naming our dialog with the agent, as the agent's side sees
/// it: its own tag is the to-tag, ours the from-tag.
pub fn replaces(call_id: &str, our_tag: &str, their_tag: &str) -> String {
    format!("{call_id};to-tag={their_tag};from-tag={our_tag}")
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Refused with this SIP status (busy, declined, not found...).
    Refused(u16),
    /// Rang for the whole ring timeout (we cancelled).
    NoAnswer,
    /// Could not be placed (no port, bad address).
    Failed(String),
    /// The caller's side could not transfer the call there (its REFER or NOTIFY status).
    TransferFailed(u16),
}

/// One try of one extension, for the record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub target: String,
    /// The address called, when the extension was looked up (an extension with several
    /// addresses has one attempt per address it failed over from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub outcome: String,
}

/// The hunt over a team's extensions.
#[derive(Debug, Clone)]
pub struct Hunt {
    targets: Vec<Target>,
    next: usize,
    attempts: Vec<Attempt>,
}

impl Hunt {
    pub fn new(targets: &[Target]) -> Hunt {
        Hunt {
            targets: targets.to_vec(),
            next: 0,
            attempts: Vec::new(),
        }
    }

    /// Whether there is nobody to call at all.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The next extension to ring, if any is left.
    pub fn next_target(&mut self) -> Option<Target> {
        let t = self.targets.get(self.next).cloned();
        if t.is_some() {
            self.next += 1;
        }
        t
    }

    /// Records how the current attempt ended.
    pub fn record(&mut self, target: &str, outcome: &AttemptOutcome) {
        self.record_at(target, None, outcome);
    }

    /// Records how the current attempt at `address` ended.
    pub fn record_at(
        &mut self,
        target: &str,
        address: Option<std::net::SocketAddr>,
        outcome: &AttemptOutcome,
    ) {
        let outcome = match outcome {
            AttemptOutcome::Refused(code) => format!("refused {code}"),
            AttemptOutcome::NoAnswer => "no answer".into(),
            AttemptOutcome::Failed(why) => format!("failed: {why}"),
            AttemptOutcome::TransferFailed(code) => format!("transfer failed {code}"),
        };
        self.attempts.push(Attempt {
            target: target.to_string(),
            address: address.map(|a| a.to_string()),
            outcome,
        });
    }

    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(u: &str) -> Extension {
        Extension::Uri(u.into())
    }

    #[test]
    fn credentials_per_team_with_default_and_from_the_environment() {
        let text = r#"
            [credentials.default]
            user = "gw"
            password = "secret"
            [credentials.billing]
            user = "gw-billing"
            password_env = "VOICEBOT_TEST_AGENT_PASSWORD_SURELY_UNSET"
        "#;
        let mut c: TransferConfig = toml::from_str(text).unwrap();
        // The variable is missing: the error names it and the team.
        let (field, reason) = c.problem().unwrap();
        assert_eq!(field, "credentials.billing.password_env");
        assert!(
            reason.contains("VOICEBOT_TEST_AGENT_PASSWORD_SURELY_UNSET"),
            "{reason}"
        );
        assert!(reason.contains("billing"), "{reason}");
        let support = c.team_credentials("support").unwrap();
        assert_eq!(support.owner, "team default");
        assert_eq!(support.credentials.user, "gw");
        assert_eq!(support.credentials.password, "secret");
        // No password at lookup time: no credentials (a challenge fails).
        assert_eq!(c.team_credentials("billing"), None);
        c.credentials.get_mut("billing").unwrap().password = "pw".into();
        assert_eq!(c.problem(), None);
        let billing = c.team_credentials("billing").unwrap();
        assert_eq!(billing.credentials.user, "gw-billing");
        assert!(!format!("{:?}", c.credentials).contains("pw\""));
        c.credentials.get_mut("billing").unwrap().password.clear();
        c.credentials
            .get_mut("billing")
            .unwrap()
            .password_env
            .clear();
        assert_eq!(
            c.problem().map(|p| p.0),
            Some("credentials.billing.password_env".into())
        );
        c.credentials.clear();
        assert_eq!(c.team_credentials("billing"), None);
    }

    #[test]
    fn targets_per_team_with_default() {
        let mut c = TransferConfig::default();
        assert!(c.targets("billing").is_empty());
        c.teams
            .insert("default".into(), vec![uri("sip:1000@10.0.0.1")]);
        c.teams.insert(
            "billing".into(),
            vec![uri("sip:2001@10.0.0.1"), uri("sip:2002@10.0.0.1:5070")],
        );
        assert_eq!(c.targets("billing").len(), 2);
        assert_eq!(
            c.targets("support"),
            [Target {
                uri: "sip:1000@10.0.0.1".into(),
                mode: TransferMode::Bridge
            }]
        );
        assert_eq!(c.problem(), None);
        c.teams.insert("x".into(), vec![uri("tel:+123")]);
        assert_eq!(c.problem().map(|p| p.0), Some("teams.x.0".into()));
    }

    #[test]
    fn modes_per_extension_from_toml() {
        let c: TransferConfig = toml::from_str(
            r#"
            mode = "attended"
            [teams]
            billing = ["sip:2001@h", { uri = "sip:2002@h", mode = "blind" }, { uri = "sip:2003@h" }]
            "#,
        )
        .unwrap();
        let modes: Vec<TransferMode> = c.targets("billing").iter().map(|t| t.mode).collect();
        assert_eq!(
            modes,
            [
                TransferMode::Attended,
                TransferMode::Blind,
                TransferMode::Attended
            ]
        );
        // A wrong mode or key is named as such.
        let e = toml::from_str::<TransferConfig>(
            r#"teams = { b = [{ uri = "sip:1@h", mode = "refer" }] }"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `refer`"), "{e}");
        let e = toml::from_str::<TransferConfig>(r#"teams = { b = [{ url = "sip:1@h" }] }"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `url`"), "{e}");
        let e = toml::from_str::<TransferConfig>(r#"teams = { b = [5] }"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a SIP URI or"), "{e}");
    }

    #[test]
    fn browser_agents_are_always_bridged() {
        let c: TransferConfig = toml::from_str(
            r#"
            mode = "blind"
            [teams]
            billing = ["webrtc:alice", "sip:2001@h", { uri = "webrtc:bob.b", mode = "bridge" }]
            "#,
        )
        .unwrap();
        assert_eq!(c.problem(), None);
        let modes: Vec<TransferMode> = c.targets("billing").iter().map(|t| t.mode).collect();
        assert_eq!(
            modes,
            [
                TransferMode::Bridge,
                TransferMode::Blind,
                TransferMode::Bridge
            ]
        );
        for (text, says) in [
            (
                r#"teams = { b = [{ uri = "webrtc:alice", mode = "blind" }] }"#,
                "mode must be \"bridge\"",
            ),
            (
                r#"teams = { b = ["webrtc:al ice"] }"#,
                "a browser agent's name",
            ),
            (r#"teams = { b = ["webrtc:"] }"#, "a browser agent's name"),
        ] {
            let c: TransferConfig = toml::from_str(text).unwrap();
            let (field, reason) = c.problem().expect(text);
            assert_eq!(field, "teams.b.0");
            assert!(reason.contains(says), "{reason}");
        }
    }

    #[test]
    fn refer_to_escapes_header_values() {
        let r = replaces("abc@10.0.0.1", "ours", "theirs");
        assert_eq!(r, "abc@10.0.0.1;to-tag=theirs;from-tag=ours");
        assert_eq!(
            refer_to("sip:2001@10.0.0.2:5070", &[("Replaces", r)]),
            "sip:2001@10.0.0.2:5070?Replaces=abc%4010.0.0.1%3Bto-tag%3Dtheirs%3Bfrom-tag%3Dours"
        );
        assert_eq!(
            refer_to("sip:a@h", &[("X-A", "1 2".into()), ("X-B", "x&y".into())]),
            "sip:a@h?X-A=1%202&X-B=x%26y"
        );
    }

    #[test]
    fn target_addresses() {
        assert_eq!(
            parse_target("sip:1001@127.0.0.1:5070"),
            Ok(("127.0.0.1".into(), 5070))
        );
        assert_eq!(
            parse_target("sip:pbx.example.com"),
            Ok(("pbx.example.com".into(), 5060))
        );
        assert_eq!(
            parse_target("sip:1001@[::1]:5070;transport=udp"),
            Ok(("::1".into(), 5070))
        );
        assert!(parse_target("sip:1001@host:port").is_err());
        // TLS targets: port 5061 unless named.
        assert_eq!(
            parse_target("sips:1001@pbx.example.com"),
            Ok(("pbx.example.com".into(), 5061))
        );
        assert_eq!(
            parse_target("sip:1001@10.0.0.5;transport=TLS"),
            Ok(("10.0.0.5".into(), 5061))
        );
        assert_eq!(
            parse_target("sips:1001@[::1]:5071"),
            Ok(("::1".into(), 5071))
        );
        assert!(parse_target("http://x").is_err());
    }

    #[test]
    fn hunt_goes_through_the_list_once() {
        let t = |u: &str| Target {
            uri: u.into(),
            mode: TransferMode::Bridge,
        };
        let mut h = Hunt::new(&[t("sip:a@h"), t("sip:b@h")]);
        assert_eq!(h.next_target(), Some(t("sip:a@h")));
        h.record("sip:a@h", &AttemptOutcome::Refused(486));
        assert_eq!(h.next_target(), Some(t("sip:b@h")));
        h.record("sip:b@h", &AttemptOutcome::TransferFailed(603));
        assert_eq!(h.next_target(), None);
        assert_eq!(h.attempts()[0].outcome, "refused 486");
        assert_eq!(h.attempts()[1].outcome, "transfer failed 603");
    }

    #[test]
    fn user_to_user_is_hex() {
        assert_eq!(
            user_to_user("ab"),
            "6162;encoding=hex;purpose=voicebot-context"
        );
    }
}

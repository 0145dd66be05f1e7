//! Where an escalated call goes: the agent extensions per team, tried in order (a hunt group),
//! each for at most a ring timeout, and the SIP headers that carry the context to the agent's
//! phone or PBX. Sans-IO: [`Hunt`] is a plain state machine over the configured targets that
//! the call task feeds with what happened to each attempt.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The team name that serves teams without their own list.
pub const DEFAULT_TEAM: &str = "default";

/// `[transfer]` in the gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Agent extensions (SIP URIs) per team, tried in order; `default` serves the other teams.
    /// No extension for a team: the bot announces the hand-over and ends the call.
    pub teams: BTreeMap<String, Vec<String>>,
    /// How long one extension may ring before the next is tried, seconds.
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
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            teams: BTreeMap::new(),
            ring_timeout_s: 20,
            from_user: "voicebot".into(),
            webhook_wait_ms: 40,
            context_url_base: String::new(),
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
                if let Err(reason) = parse_target(target) {
                    return Some((format!("teams.{team}.{i}"), reason));
                }
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

    /// The extensions for `team`, or the default team's.
    pub fn targets(&self, team: &str) -> &[String] {
        self.teams
            .get(team)
            .filter(|t| !t.is_empty())
            .or_else(|| self.teams.get(DEFAULT_TEAM))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.ring_timeout_s)
    }
}

/// The host and port of a `sip:user@host[:port][;params]` target (port 5060 when absent).
pub fn parse_target(uri: &str) -> Result<(String, u16), String> {
    let rest = uri
        .strip_prefix("sip:")
        .ok_or_else(|| format!("`{uri}` is not a sip: URI"))?;
    let host_port = rest
        .split(';')
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("");
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (host_port, "5060"),
        Some((h, p)) => (h, p),
        None => (host_port, "5060"),
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

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Refused with this SIP status (busy, declined, not found...).
    Refused(u16),
    /// Rang for the whole ring timeout (we cancelled).
    NoAnswer,
    /// Could not be placed (no port, bad address).
    Failed(String),
}

/// One try of one extension, for the record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub target: String,
    pub outcome: String,
}

/// The hunt over a team's extensions.
#[derive(Debug, Clone)]
pub struct Hunt {
    targets: Vec<String>,
    next: usize,
    attempts: Vec<Attempt>,
}

impl Hunt {
    pub fn new(targets: &[String]) -> Hunt {
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
    pub fn next_target(&mut self) -> Option<String> {
        let t = self.targets.get(self.next).cloned();
        if t.is_some() {
            self.next += 1;
        }
        t
    }

    /// Records how the current attempt ended.
    pub fn record(&mut self, target: &str, outcome: &AttemptOutcome) {
        let outcome = match outcome {
            AttemptOutcome::Refused(code) => format!("refused {code}"),
            AttemptOutcome::NoAnswer => "no answer".into(),
            AttemptOutcome::Failed(why) => format!("failed: {why}"),
        };
        self.attempts.push(Attempt {
            target: target.to_string(),
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

    #[test]
    fn targets_per_team_with_default() {
        let mut c = TransferConfig::default();
        assert!(c.targets("billing").is_empty());
        c.teams
            .insert("default".into(), vec!["sip:1000@10.0.0.1".into()]);
        c.teams.insert(
            "billing".into(),
            vec!["sip:2001@10.0.0.1".into(), "sip:2002@10.0.0.1:5070".into()],
        );
        assert_eq!(c.targets("billing").len(), 2);
        assert_eq!(c.targets("support"), ["sip:1000@10.0.0.1".to_string()]);
        assert_eq!(c.problem(), None);
        c.teams.insert("x".into(), vec!["tel:+123".into()]);
        assert_eq!(c.problem().map(|p| p.0), Some("teams.x.0".into()));
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
        assert!(parse_target("http://x").is_err());
    }

    #[test]
    fn hunt_goes_through_the_list_once() {
        let mut h = Hunt::new(&["sip:a@h".into(), "sip:b@h".into()]);
        assert_eq!(h.next_target().as_deref(), Some("sip:a@h"));
        h.record("sip:a@h", &AttemptOutcome::Refused(486));
        assert_eq!(h.next_target().as_deref(), Some("sip:b@h"));
        h.record("sip:b@h", &AttemptOutcome::NoAnswer);
        assert_eq!(h.next_target(), None);
        assert_eq!(h.attempts()[0].outcome, "refused 486");
        assert_eq!(h.attempts()[1].outcome, "no answer");
    }

    #[test]
    fn user_to_user_is_hex() {
        assert_eq!(
            user_to_user("ab"),
            "6162;encoding=hex;purpose=voicebot-context"
        );
    }
}

//! The client side of SIP digest authentication (RFC 3261 22.2/22.3, RFC 7616's SHA-256,
//! RFC 8760): what the gateway sends when a registrar, a trunk or a PBX answers one of its
//! own requests (REGISTER, an agent INVITE) with `401 Unauthorized` or `407 Proxy
//! Authentication Required`.
//!
//! Sans-IO: [`DigestClient::answer`] is fed the challenge response's status and challenge
//! header values and returns the header to add to the request sent again. It keeps what it
//! needs to never loop: a realm whose challenge it already answered is answered again only
//! when the server says the nonce was merely stale (`stale=true`), and at most
//! [`MAX_STALE_RETRIES`] times; anything else is [`ClientAuthError::Rejected`] (a wrong user
//! or password), which the caller reports instead of retrying. After a success the owner
//! calls [`DigestClient::reset`] so that the next request (a REGISTER refresh, the next call)
//! may be challenged afresh.
//!
//! Of several challenges the strongest supported one is taken (SHA-256 before MD5); `qop=auth`
//! is used whenever the server offers it (with a fresh `cnonce` and a counted `nc`), and the
//! RFC 2069 form only when the server offers no qop at all. `auth-int` alone, or an algorithm
//! such as MD5-sess, is [`ClientAuthError::Unsupported`].

use std::fmt;

use super::auth::{hex, parse_params, quote, Algorithm, AuthError};

/// How many times one realm's challenge is answered again after `stale=true`.
pub const MAX_STALE_RETRIES: u32 = 2;

/// A user name and password the gateway authenticates with (a trunk's or a team's).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a challenge was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    /// The response carried no challenge header for its status (a 401 without
    /// `WWW-Authenticate`, a 407 without `Proxy-Authenticate`).
    #[error("{status} response without a {header} challenge")]
    NoChallenge { status: u16, header: &'static str },
    /// The status is not 401 or 407.
    #[error("status {0} is not a digest challenge")]
    NotAChallenge(u16),
    /// No challenge could be read or none uses what we support.
    #[error("cannot answer the challenge: {0}")]
    Unsupported(String),
    /// The realm was answered already and challenged again without `stale=true`: the
    /// credentials are wrong (or unknown to the server). Never retried.
    #[error("credentials for user {user:?} were refused in realm {realm:?}")]
    Rejected { user: String, realm: String },
}

/// A challenge from `WWW-Authenticate:` or `Proxy-Authenticate:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    algorithm: Algorithm,
    /// The server offers `qop=auth`.
    qop_auth: bool,
    /// `stale=true`: the nonce expired but the credentials were right.
    pub stale: bool,
}

impl DigestChallenge {
    /// Parses one challenge value (`Digest realm="..", nonce="..", ...`).
    pub fn parse(value: &str) -> Result<DigestChallenge, ClientAuthError> {
        let value = value.trim_start();
        let scheme_end = value
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(value.len());
        let (scheme, params) = value.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(unsupported(AuthError::NotDigest));
        }
        let params = parse_params(params).map_err(unsupported)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let realm = get("realm").ok_or_else(|| unsupported(AuthError::MissingParam("realm")))?;
        let nonce = get("nonce").ok_or_else(|| unsupported(AuthError::MissingParam("nonce")))?;
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("MD5") => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("SHA-256") => Algorithm::Sha256,
            Some(a) => return Err(unsupported(AuthError::UnsupportedAlgorithm(a.into()))),
        };
        let (qop_auth, any_qop) = match get("qop") {
            None => (false, false),
            Some(list) => (
                list.split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth")),
                true,
            ),
        };
        if any_qop && !qop_auth {
            return Err(unsupported(AuthError::UnsupportedQop(
                get("qop").unwrap_or_default().into(),
            )));
        }
        Ok(DigestChallenge {
            realm: realm.into(),
            nonce: nonce.into(),
            opaque: get("opaque").map(str::to_owned),
            algorithm,
            qop_auth,
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The strongest challenge we can answer among `values` (SHA-256, then MD5), or why none.
    pub fn strongest<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<DigestChallenge, ClientAuthError> {
        let mut best: Option<DigestChallenge> = None;
        let mut last_error = None;
        for value in values {
            match DigestChallenge::parse(value) {
                Ok(c) => {
                    let better = best.as_ref().is_none_or(|b| {
                        b.algorithm == Algorithm::Md5 && c.algorithm == Algorithm::Sha256
                    });
                    if better {
                        best = Some(c);
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        best.ok_or_else(|| {
            last_error.unwrap_or_else(|| ClientAuthError::Unsupported("no challenge".into()))
        })
    }
}

fn unsupported(error: AuthError) -> ClientAuthError {
    ClientAuthError::Unsupported(error.to_string())
}

/// The header to add to a request sent again after a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    /// `Authorization` (after a 401) or `Proxy-Authorization` (after a 407).
    pub name: &'static str,
    pub value: String,
}

/// Answers challenges for one set of credentials, never in a loop (see the module docs).
#[derive(Debug, Clone)]
pub struct DigestClient {
    credentials: ClientCredentials,
    /// Realms answered since the last [`DigestClient::reset`], with the stale retries used.
    answered: Vec<(String, u32)>,
    /// The nonce last answered and its nonce-count.
    nonce_count: Option<(String, u32)>,
}

impl DigestClient {
    pub fn new(credentials: ClientCredentials) -> DigestClient {
        DigestClient {
            credentials,
            answered: Vec::new(),
            nonce_count: None,
        }
    }

    pub fn user(&self) -> &str {
        &self.credentials.user
    }

    /// The request went through: later challenges are answered afresh.
    pub fn reset(&mut self) {
        self.answered.clear();
    }

    /// The header for the request (`method`, digest `uri` = its Request-URI) sent again after
    /// a `status` (401/407) response with these challenge values. `cnonce`: a fresh random
    /// token from the caller (injected, so tests are repeatable).
    pub fn answer<'a>(
        &mut self,
        status: u16,
        challenges: impl IntoIterator<Item = &'a str>,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Result<AuthHeader, ClientAuthError> {
        let (name, challenge_header) = match status {
            401 => ("Authorization", "WWW-Authenticate"),
            407 => ("Proxy-Authorization", "Proxy-Authenticate"),
            other => return Err(ClientAuthError::NotAChallenge(other)),
        };
        let mut challenges = challenges.into_iter().peekable();
        if challenges.peek().is_none() {
            return Err(ClientAuthError::NoChallenge {
                status,
                header: challenge_header,
            });
        }
        let challenge = DigestChallenge::strongest(challenges)?;
        self.note_realm(&challenge)?;
        let nc = self.next_nonce_count(&challenge.nonce);
        Ok(AuthHeader {
            name,
            value: self.authorization(&challenge, method, uri, nc, cnonce),
        })
    }

    /// Records that `challenge`'s realm is being answered; refuses a realm answered already
    /// unless the challenge is stale (and stale retries are left).
    fn note_realm(&mut self, challenge: &DigestChallenge) -> Result<(), ClientAuthError> {
        let rejected = || ClientAuthError::Rejected {
            user: self.credentials.user.clone(),
            realm: challenge.realm.clone(),
        };
        match self
            .answered
            .iter_mut()
            .find(|(realm, _)| *realm == challenge.realm)
        {
            None => {
                self.answered.push((challenge.realm.clone(), 0));
                Ok(())
            }
            Some((_, stale_retries)) if challenge.stale && *stale_retries < MAX_STALE_RETRIES => {
                *stale_retries += 1;
                Ok(())
            }
            Some(_) => Err(rejected()),
        }
    }

    fn next_nonce_count(&mut self, nonce: &str) -> u32 {
        let count = match &self.nonce_count {
            Some((last, n)) if last == nonce => n.saturating_add(1),
            _ => 1,
        };
        self.nonce_count = Some((nonce.to_owned(), count));
        count
    }

    fn authorization(
        &self,
        c: &DigestChallenge,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let user = &self.credentials.user;
        let ha1 = c
            .algorithm
            .hex(&[user, &c.realm, &self.credentials.password]);
        let ha2 = c.algorithm.hex(&[method, uri]);
        let algorithm = match c.algorithm {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        };
        let mut value = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm={algorithm}",
            quote(user),
            quote(&c.realm),
            quote(&c.nonce),
            quote(uri),
        );
        let response = if c.qop_auth {
            let nc = format!("{nc:08x}");
            let response = c
                .algorithm
                .hex(&[&ha1, &c.nonce, &nc, cnonce, "auth", &ha2]);
            value.push_str(&format!(
                ", qop=auth, nc={nc}, cnonce=\"{}\"",
                quote(cnonce)
            ));
            response
        } else {
            c.algorithm.hex(&[&ha1, &c.nonce, &ha2])
        };
        value.push_str(&format!(", response=\"{response}\""));
        if let Some(opaque) = &c.opaque {
            value.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
        }
        value
    }
}

/// A fresh client nonce (random hex).
pub fn new_cnonce() -> String {
    let bytes: [u8; 8] = rand::random();
    hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{DigestAuthenticator, DigestConfig, DigestCredentials};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, SystemTime};

    fn client() -> DigestClient {
        DigestClient::new(ClientCredentials {
            user: "Mufasa".into(),
            password: "Circle Of Life".into(),
        })
    }

    #[test]
    fn rfc2617_example_without_qop_and_with_qop() {
        // RFC 2617 3.5's example (qop=auth): response 6629fae49393a05397450978507c4ef1.
        let challenge = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let mut c = client();
        let header = c
            .answer(401, [challenge], "GET", "/dir/index.html", "0a4f113b")
            .unwrap();
        assert_eq!(header.name, "Authorization");
        assert!(header.value.contains("nc=00000001"), "{}", header.value);
        assert!(
            header
                .value
                .contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{}",
            header.value
        );
        assert!(header
            .value
            .contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
        // RFC 2069 form when no qop is offered.
        let mut c = client();
        let header = c
            .answer(
                407,
                [r#"Digest realm="r", nonce="n""#],
                "INVITE",
                "sip:a@b",
                "x",
            )
            .unwrap();
        assert_eq!(header.name, "Proxy-Authorization");
        assert!(!header.value.contains("qop"));
    }

    #[test]
    fn our_own_authenticator_accepts_the_answer_for_both_algorithms() {
        let config = DigestConfig {
            realm: "voicebot".into(),
            users: vec![("alice".into(), "s3cret".into())],
            nonce_ttl: Duration::from_secs(60),
            max_failures: 5,
            failure_window: Duration::from_secs(60),
        };
        let now = SystemTime::now();
        let mut server = DigestAuthenticator::new(config);
        // One fresh challenge pair per algorithm: the server refuses nc=1 twice on a nonce.
        for which in 0..2 {
            let challenge = server.challenges(now, false)[which].clone();
            let mut c = DigestClient::new(ClientCredentials {
                user: "alice".into(),
                password: "s3cret".into(),
            });
            let header = c
                .answer(
                    401,
                    [challenge.as_str()],
                    "INVITE",
                    "sip:bot@127.0.0.1",
                    "abc",
                )
                .unwrap();
            let credentials = DigestCredentials::parse(&header.value).unwrap();
            let checked = server.check(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                "INVITE",
                "sip:bot@127.0.0.1",
                Some(&header.value),
                now,
            );
            assert!(
                checked.result.is_ok(),
                "{:?} {credentials:?}",
                checked.result
            );
        }
    }

    #[test]
    fn sha256_is_preferred_whatever_the_order() {
        let md5 = r#"Digest realm="r", nonce="n", algorithm=MD5, qop="auth""#;
        let sha = r#"Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth""#;
        let picked = DigestChallenge::strongest([md5, sha]).unwrap();
        assert_eq!(picked.algorithm, Algorithm::Sha256);
        let picked = DigestChallenge::strongest([sha, md5]).unwrap();
        assert_eq!(picked.algorithm, Algorithm::Sha256);
        // An unreadable value beside a good one is skipped.
        let picked = DigestChallenge::strongest(["Basic realm=\"x\"", md5]).unwrap();
        assert_eq!(picked.algorithm, Algorithm::Md5);
    }

    #[test]
    fn a_second_challenge_of_the_same_realm_is_a_rejection_not_a_loop() {
        let mut c = client();
        let challenge = r#"Digest realm="pbx", nonce="n1", qop="auth""#;
        assert!(c
            .answer(407, [challenge], "INVITE", "sip:1@pbx", "c")
            .is_ok());
        let again = r#"Digest realm="pbx", nonce="n2", qop="auth""#;
        assert_eq!(
            c.answer(407, [again], "INVITE", "sip:1@pbx", "c"),
            Err(ClientAuthError::Rejected {
                user: "Mufasa".into(),
                realm: "pbx".into()
            })
        );
        // After a success (reset), the next request is answered afresh.
        c.reset();
        assert!(c.answer(407, [again], "INVITE", "sip:1@pbx", "c").is_ok());
    }

    #[test]
    fn stale_challenges_are_answered_a_bounded_number_of_times() {
        let mut c = client();
        let first = r#"Digest realm="pbx", nonce="n1", qop="auth""#;
        c.answer(401, [first], "REGISTER", "sip:pbx", "c").unwrap();
        let stale = r#"Digest realm="pbx", nonce="n2", qop="auth", stale=TRUE"#;
        for _ in 0..MAX_STALE_RETRIES {
            assert!(c.answer(401, [stale], "REGISTER", "sip:pbx", "c").is_ok());
        }
        assert!(matches!(
            c.answer(401, [stale], "REGISTER", "sip:pbx", "c"),
            Err(ClientAuthError::Rejected { .. })
        ));
    }

    #[test]
    fn nonce_count_grows_per_nonce() {
        let mut c = client();
        let a = r#"Digest realm="a", nonce="n", qop="auth""#;
        let b = r#"Digest realm="b", nonce="n", qop="auth""#;
        let h1 = c.answer(401, [a], "INVITE", "sip:x", "c").unwrap();
        let h2 = c.answer(407, [b], "INVITE", "sip:x", "c").unwrap();
        assert!(h1.value.contains("nc=00000001"));
        assert!(h2.value.contains("nc=00000002"));
    }

    #[test]
    fn unusable_challenges_are_errors() {
        let mut c = client();
        assert_eq!(
            c.answer(401, std::iter::empty::<&str>(), "INVITE", "sip:x", "c"),
            Err(ClientAuthError::NoChallenge {
                status: 401,
                header: "WWW-Authenticate"
            })
        );
        assert_eq!(
            c.answer(
                403,
                ["Digest realm=\"r\", nonce=\"n\""],
                "INVITE",
                "sip:x",
                "c"
            ),
            Err(ClientAuthError::NotAChallenge(403))
        );
        for bad in [
            "Basic realm=\"r\"",
            "Digest realm=\"r\"",
            "Digest nonce=\"n\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess",
            "Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"",
            "Digest realm=\"r, nonce=\"n\"",
            "",
        ] {
            assert!(
                matches!(
                    c.answer(401, [bad], "INVITE", "sip:x", "c"),
                    Err(ClientAuthError::Unsupported(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn quotes_in_user_names_cannot_break_the_header() {
        let mut c = DigestClient::new(ClientCredentials {
            user: "a\"b\r\nX-Evil: 1".into(),
            password: "p".into(),
        });
        let h = c
            .answer(
                401,
                [r#"Digest realm="r", nonce="n""#],
                "INVITE",
                "sip:x",
                "c",
            )
            .unwrap();
        assert!(!h.value.contains('\r') && !h.value.contains('\n'));
        assert!(DigestCredentials::parse(&h.value).is_ok());
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let shown = format!("{:?}", client());
        assert!(!shown.contains("Circle"), "{shown}");
    }
}

//! Who may place calls: SIP digest authentication (RFC 3261 section 22 with RFC 7616's
//! SHA-256 and RFC 8760, MD5 kept for older phones; `qop=auth` required) and an IP allow-list,
//! both sans-IO (fed with wall time).
//!
//! A voicebot line reachable over the network is a toll-fraud and denial-of-service target,
//! so an inbound INVITE is answered only if it comes from an allowed address and, when users
//! are configured, carries valid digest credentials. The flow is the usual one: the first
//! INVITE gets `401 Unauthorized` with two `WWW-Authenticate:` values from
//! [`DigestAuthenticator::challenges`] (SHA-256 first, then MD5, one nonce); the caller re-sends
//! the INVITE with an `Authorization:` header that [`DigestAuthenticator::check`] checks.
//!
//! Hardening (issue 20), as Kamailio's auth module and Asterisk's PJSIP do it:
//! - **No replay.** A nonce carries its issue time and a random part under an HMAC with a
//!   per-process secret, so forging one is impossible and checking one needs no table. What
//!   is used is tracked: each accepted nonce remembers its highest nonce-count (`nc`), and a
//!   request must bring a higher one, so a captured `Authorization` is refused on a new call.
//!   The store is bounded ([`MAX_TRACKED_NONCES`]): entries go when their nonce expires, and
//!   when it is full the oldest goes and every nonce issued up to its time counts as stale
//!   from then on (the client gets `stale=true` and retries with a new nonce; nothing
//!   evicted can be replayed). An expired nonce with an otherwise valid response is
//!   [`AuthError::StaleNonce`], answered with a fresh challenge with `stale=true`.
//! - **The digest `uri` must be the Request-URI**, so credentials for one target do not open
//!   another.
//! - **`qop=auth` is required**: RFC 2069 responses (no `nc`, no `cnonce`) cannot be tracked.
//! - **Guessing is throttled per source address**: after `max_failures` wrong responses (or
//!   unknown users) within `failure_window`, the source's INVITEs are
//!   [`AuthError::Throttled`] (403 with `Retry-After`) without a password check until the
//!   window ends. [`Checked::log`] asks for one log line per burst, not per guess.
//!
//! Headers come from the network: parsing accepts any parameter order, quoted strings with
//! commas and escapes, and any case in names, and never panics; the response is compared in
//! constant time.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use rand::RngCore;
use sha2::Sha256;

/// Why an `Authorization` value or an allow-list entry was refused.
///
/// For SIP: [`AuthError::StaleNonce`] gets a new 401 challenge with `stale=true`; the parse
/// and nonce errors a new 401 challenge; [`AuthError::UnknownUser`] and
/// [`AuthError::WrongResponse`] a 403 (or a new 401, but answer both the same way so that
/// user names cannot be probed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The header's scheme is not `Digest` (e.g. `Basic`).
    #[error("authorization scheme is not Digest")]
    NotDigest,
    /// The header is not a well-formed list of `name=value` parameters.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// A parameter appears twice, which would make the header ambiguous.
    #[error("parameter {0:?} appears more than once")]
    DuplicateParam(String),
    /// A required parameter is missing.
    #[error("missing parameter {0}")]
    MissingParam(&'static str),
    /// `algorithm` is neither SHA-256 nor MD5 (e.g. MD5-sess, which the challenge did not
    /// offer).
    #[error("unsupported digest algorithm {0:?} (only SHA-256 and MD5)")]
    UnsupportedAlgorithm(String),
    /// `qop` is not `auth` (e.g. `auth-int`).
    #[error("unsupported qop {0:?} (only auth)")]
    UnsupportedQop(String),
    /// The credentials are for another realm.
    #[error("realm {0:?} is not ours")]
    BadRealm(String),
    /// The nonce was not issued by this authenticator (forged, tampered or from before a
    /// restart).
    #[error("nonce was not issued by us")]
    InvalidNonce,
    /// The response is right but the nonce has expired: re-challenge with `stale=true`.
    #[error("nonce has expired")]
    StaleNonce,
    /// The nonce-count is not above the last one accepted with this nonce: a replay.
    #[error("nonce-count {0:?} already used with this nonce (a replay)")]
    NonceReused(String),
    /// The digest `uri` is not the request's Request-URI.
    #[error("digest uri {0:?} is not the Request-URI")]
    UriMismatch(String),
    /// Too many failed attempts from this source: refused without a check for this long.
    #[error("too many failed attempts from this source; retry after {retry_after_s} s")]
    Throttled {
        /// Seconds until the source is heard again (for `Retry-After`).
        retry_after_s: u64,
    },
    /// No such user is configured.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The digest response does not match the user's password.
    #[error("wrong digest response for user {0:?}")]
    WrongResponse(String),
    /// An allow-list entry is not an address or network.
    #[error("bad allow-list entry {entry:?}: {reason}")]
    BadAllowListEntry {
        /// The entry as configured.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Digest authentication settings.
#[derive(Clone)]
pub struct DigestConfig {
    /// The realm shown to callers (e.g. the gateway's host name).
    pub realm: String,
    /// `(user, password)` pairs.
    pub users: Vec<(String, String)>,
    /// How long a nonce stays valid.
    pub nonce_ttl: Duration,
    /// Failed attempts (wrong response, unknown user) from one source address within
    /// `failure_window` after which that source is throttled until the window ends.
    pub max_failures: u32,
    pub failure_window: Duration,
}

impl fmt::Debug for DigestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("DigestConfig")
            .field("realm", &self.realm)
            .field("users", &users)
            .field("nonce_ttl", &self.nonce_ttl)
            .field("max_failures", &self.max_failures)
            .field("failure_window", &self.failure_window)
            .finish_non_exhaustive()
    }
}

/// Nonces in use tracked at most (see the module docs: when full, the oldest goes and the
/// nonces issued up to its time become stale).
pub const MAX_TRACKED_NONCES: usize = 8192;
/// Source addresses whose failures are tracked at most (when full, expired windows go, then
/// the oldest window).
pub const MAX_TRACKED_SOURCES: usize = 8192;

/// Issues digest challenges and checks the answers; remembers the nonce-counts used and the
/// failures per source, both bounded.
pub struct DigestAuthenticator {
    config: DigestConfig,
    secret: [u8; 32],
    /// Accepted nonces -> (issue time, highest nonce-count accepted).
    used: HashMap<String, (u64, u32)>,
    /// Nonces issued at or before this time (Unix seconds) are stale: their tracking was
    /// evicted from a full store.
    stale_before: u64,
    /// Failed attempts per source address, in its current window.
    failures: HashMap<IpAddr, FailureWindow>,
}

/// One source's failed attempts in its current window.
#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    /// Unix seconds of the window's first failure.
    since: u64,
    failures: u32,
}

/// The outcome of [`DigestAuthenticator::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The authenticated user, or why not.
    pub result: Result<String, AuthError>,
    /// Whether this refusal deserves a log line: the first failure of a source's window and
    /// the moment it is throttled, not every guess of a burst (nor the routine first INVITE
    /// without credentials).
    pub log: bool,
}

impl fmt::Debug for DigestAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuthenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Hex digits of the issue time at the start of a nonce.
const NONCE_TIME_HEX: usize = 16;
/// Hex digits of the random part after it, so every challenge has its own nonce.
const NONCE_RANDOM_HEX: usize = 16;
/// Hex digits of a nonce: the issue time, the random part, then their HMAC-MD5.
const NONCE_HEX: usize = NONCE_TIME_HEX + NONCE_RANDOM_HEX + 32;

/// A digest algorithm we offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// Lowercase hex of the hash of the parts joined with ':'.
    pub(super) fn hex(self, parts: &[&str]) -> String {
        match self {
            Algorithm::Md5 => hash_hex::<Md5>(parts),
            Algorithm::Sha256 => hash_hex::<Sha256>(parts),
        }
    }
}

impl DigestAuthenticator {
    /// An authenticator with a fresh random secret: nonces issued before a restart are then
    /// [`AuthError::InvalidNonce`] and callers are simply challenged again.
    pub fn new(config: DigestConfig) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self::with_secret(config, secret)
    }

    /// An authenticator with a given secret, so that several gateway instances (or a
    /// restarted one) accept each other's nonces.
    pub fn with_secret(config: DigestConfig, secret: [u8; 32]) -> Self {
        DigestAuthenticator {
            config,
            secret,
            used: HashMap::new(),
            stale_before: 0,
            failures: HashMap::new(),
        }
    }

    /// The configured realm.
    pub fn realm(&self) -> &str {
        &self.config.realm
    }

    /// The value for one `WWW-Authenticate:` header: `Digest realm="..", nonce="..",
    /// algorithm=MD5, qop="auth"`, plus `, stale=true` when asked.
    pub fn challenge(&self, now: SystemTime, stale: bool) -> String {
        self.challenge_for("MD5", &self.new_nonce(now), stale)
    }

    /// The values for the `WWW-Authenticate:` headers of a 401, in order of preference:
    /// SHA-256 (RFC 7616), then MD5 for older clients, with one fresh nonce.
    pub fn challenges(&self, now: SystemTime, stale: bool) -> [String; 2] {
        let nonce = self.new_nonce(now);
        [
            self.challenge_for("SHA-256", &nonce, stale),
            self.challenge_for("MD5", &nonce, stale),
        ]
    }

    fn challenge_for(&self, algorithm: &str, nonce: &str, stale: bool) -> String {
        format!(
            "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={algorithm}, qop=\"auth\"{}",
            quote(&self.config.realm),
            if stale { ", stale=true" } else { "" }
        )
    }

    fn new_nonce(&self, now: SystemTime) -> String {
        let mut random = [0u8; NONCE_RANDOM_HEX / 2];
        rand::rng().fill_bytes(&mut random);
        self.nonce(unix_secs(now), &hex(&random))
    }

    /// Checks the `Authorization:` value (if any) of a request with `method` and
    /// `request_uri` from `source`: throttling first, then [`DigestAuthenticator::verify`],
    /// the digest `uri` against the Request-URI, and the nonce-count against replays (an
    /// accepted one is remembered). Wrong responses and unknown users count as failures of
    /// `source`.
    pub fn check(
        &mut self,
        source: IpAddr,
        method: &str,
        request_uri: &str,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Checked {
        let secs = unix_secs(now);
        let window = self.config.failure_window.as_secs().max(1);
        if let Some(w) = self.failures.get(&source) {
            let ends = w.since.saturating_add(window);
            if w.failures >= self.config.max_failures && secs < ends {
                return Checked {
                    result: Err(AuthError::Throttled {
                        retry_after_s: ends - secs,
                    }),
                    log: false,
                };
            }
        }
        let Some(authorization) = authorization else {
            return Checked {
                result: Err(AuthError::MissingParam("Authorization")),
                log: false,
            };
        };
        let result = self
            .verify_credentials(method, authorization, now)
            .and_then(|(credentials, issued)| {
                if credentials.uri.trim() != request_uri.trim() {
                    return Err(AuthError::UriMismatch(credentials.uri));
                }
                self.use_nonce(&credentials, issued, secs)?;
                Ok(credentials.username)
            });
        match &result {
            Err(AuthError::WrongResponse(_) | AuthError::UnknownUser(_)) => {
                let (failures, throttled_now) = self.count_failure(source, secs, window);
                Checked {
                    result: match throttled_now {
                        true => Err(AuthError::Throttled {
                            retry_after_s: window,
                        }),
                        false => result,
                    },
                    log: failures == 1 || throttled_now,
                }
            }
            Ok(_) => Checked { result, log: false },
            // Replays, stale nonces and malformed headers: one line each (a replay is worth
            // knowing about; none of them tests a password).
            Err(_) => Checked { result, log: true },
        }
    }

    /// Counts a failure of `source`; returns the failures in its window and whether this one
    /// starts its throttling.
    fn count_failure(&mut self, source: IpAddr, secs: u64, window: u64) -> (u32, bool) {
        if !self.failures.contains_key(&source) && self.failures.len() >= MAX_TRACKED_SOURCES {
            self.failures
                .retain(|_, w| w.since.saturating_add(window) > secs);
            if self.failures.len() >= MAX_TRACKED_SOURCES {
                if let Some(oldest) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, w)| w.since)
                    .map(|(ip, _)| *ip)
                {
                    self.failures.remove(&oldest);
                }
            }
        }
        let w = self.failures.entry(source).or_insert(FailureWindow {
            since: secs,
            failures: 0,
        });
        if w.since.saturating_add(window) <= secs {
            *w = FailureWindow {
                since: secs,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        (w.failures, w.failures == self.config.max_failures)
    }

    /// Accepts the nonce-count of verified credentials if it is above the last one accepted
    /// with that nonce, and remembers it (bounded; see the module docs).
    fn use_nonce(
        &mut self,
        credentials: &DigestCredentials,
        issued: u64,
        secs: u64,
    ) -> Result<(), AuthError> {
        let nc_text = credentials.nc.as_deref().unwrap_or("");
        let nc = u32::from_str_radix(nc_text, 16)
            .map_err(|_| AuthError::Malformed("nc is not 8 hex digits"))?;
        if nc_text.len() != 8 {
            return Err(AuthError::Malformed("nc is not 8 hex digits"));
        }
        if issued <= self.stale_before {
            return Err(AuthError::StaleNonce);
        }
        if let Some((_, last)) = self.used.get_mut(&credentials.nonce) {
            if nc <= *last {
                return Err(AuthError::NonceReused(nc_text.to_owned()));
            }
            *last = nc;
            return Ok(());
        }
        if self.used.len() >= MAX_TRACKED_NONCES {
            let ttl = self.config.nonce_ttl.as_secs();
            self.used
                .retain(|_, (issued, _)| issued.saturating_add(ttl) >= secs);
        }
        if self.used.len() >= MAX_TRACKED_NONCES {
            if let Some((oldest, time)) = self
                .used
                .iter()
                .min_by_key(|(_, (issued, _))| *issued)
                .map(|(nonce, (issued, _))| (nonce.clone(), *issued))
            {
                self.used.remove(&oldest);
                self.stale_before = self.stale_before.max(time);
                if issued <= self.stale_before {
                    return Err(AuthError::StaleNonce);
                }
            }
        }
        self.used.insert(credentials.nonce.clone(), (issued, nc));
        Ok(())
    }

    /// Checks an `Authorization:` value for a request with `method` (e.g. `INVITE`) and
    /// returns the authenticated user name: the credentials alone, with no memory of what was
    /// used before. [`DigestAuthenticator::check`] adds the Request-URI, replay and
    /// throttling checks that a server needs.
    pub fn verify(
        &self,
        method: &str,
        authorization: &str,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        self.verify_credentials(method, authorization, now)
            .map(|(credentials, _)| credentials.username)
    }

    /// [`DigestAuthenticator::verify`], returning the credentials and the nonce's issue time.
    fn verify_credentials(
        &self,
        method: &str,
        authorization: &str,
        now: SystemTime,
    ) -> Result<(DigestCredentials, u64), AuthError> {
        let credentials = DigestCredentials::parse(authorization)?;
        credentials.algorithm()?;
        let Some(qop) = &credentials.qop else {
            return Err(AuthError::MissingParam("qop"));
        };
        if !qop.eq_ignore_ascii_case("auth") {
            return Err(AuthError::UnsupportedQop(qop.clone()));
        }
        if credentials.nc.is_none() {
            return Err(AuthError::MissingParam("nc"));
        }
        if credentials.cnonce.is_none() {
            return Err(AuthError::MissingParam("cnonce"));
        }
        if credentials.realm != self.config.realm {
            return Err(AuthError::BadRealm(credentials.realm));
        }
        let issued = self.check_nonce(&credentials.nonce)?;

        let password = self
            .config
            .users
            .iter()
            .find(|(user, _)| *user == credentials.username)
            .map(|(_, password)| password.as_str())
            .ok_or_else(|| AuthError::UnknownUser(credentials.username.clone()))?;
        let expected = credentials.expected_response(password, method);
        let given = credentials.response.to_ascii_lowercase();
        if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return Err(AuthError::WrongResponse(credentials.username));
        }

        // Only a valid response may be told its nonce is stale (RFC 2617 section 3.2.1).
        let age = unix_secs(now).saturating_sub(issued);
        if age > self.config.nonce_ttl.as_secs() {
            return Err(AuthError::StaleNonce);
        }
        Ok((credentials, issued))
    }

    fn nonce(&self, issued: u64, random: &str) -> String {
        let time = format!("{issued:0width$x}", width = NONCE_TIME_HEX);
        let mac = hmac_md5(
            &self.secret,
            format!("{time}:{random}:{}", self.config.realm).as_bytes(),
        );
        format!("{time}{random}{}", hex(&mac))
    }

    /// Checks that we issued `nonce` and returns its issue time (Unix seconds).
    fn check_nonce(&self, nonce: &str) -> Result<u64, AuthError> {
        if nonce.len() != NONCE_HEX {
            return Err(AuthError::InvalidNonce);
        }
        let issued = nonce
            .get(..NONCE_TIME_HEX)
            .and_then(|time| u64::from_str_radix(time, 16).ok())
            .ok_or(AuthError::InvalidNonce)?;
        let random = nonce
            .get(NONCE_TIME_HEX..NONCE_TIME_HEX + NONCE_RANDOM_HEX)
            .ok_or(AuthError::InvalidNonce)?;
        if !constant_time_eq(self.nonce(issued, random).as_bytes(), nonce.as_bytes()) {
            return Err(AuthError::InvalidNonce);
        }
        Ok(issued)
    }
}

/// The parameters of a `Digest` `Authorization:` (or `Proxy-Authorization:`) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`, as issued in the challenge.
    pub nonce: String,
    /// `uri`: the digest-uri, normally the Request-URI.
    pub uri: String,
    /// `response`: 32 (MD5) or 64 (SHA-256) hex digits.
    pub response: String,
    /// `algorithm` (`SHA-256` or `MD5`), absent meaning MD5.
    pub algorithm: Option<String>,
    /// `qop`, absent for RFC 2069 clients.
    pub qop: Option<String>,
    /// `nc`, with `qop`.
    pub nc: Option<String>,
    /// `cnonce`, with `qop`.
    pub cnonce: Option<String>,
}

impl DigestCredentials {
    /// Parses a header value such as `Digest username="alice", realm="..", ...`: parameters
    /// in any order, names in any case, quoted or not, unknown ones ignored.
    pub fn parse(header: &str) -> Result<DigestCredentials, AuthError> {
        let header = header.trim_start();
        let scheme_end = header
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(header.len());
        let (scheme, params) = header.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::NotDigest);
        }
        let params = parse_params(params)?;
        let optional = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let required = |name: &'static str| optional(name).ok_or(AuthError::MissingParam(name));
        Ok(DigestCredentials {
            username: required("username")?,
            realm: required("realm")?,
            nonce: required("nonce")?,
            uri: required("uri")?,
            response: required("response")?,
            algorithm: optional("algorithm"),
            qop: optional("qop"),
            nc: optional("nc"),
            cnonce: optional("cnonce"),
        })
    }

    /// The response a client knowing `password` computes for a request with `method`
    /// (lowercase hex): `H(HA1:nonce:nc:cnonce:qop:HA2)` with `qop`, else `H(HA1:nonce:HA2)`,
    /// where `HA1 = H(username:realm:password)`, `HA2 = H(method:uri)` and `H` is SHA-256 or
    /// MD5 as `algorithm` says (an unsupported one is computed as MD5, and refused anyway).
    pub fn expected_response(&self, password: &str, method: &str) -> String {
        let h = self.algorithm().unwrap_or(Algorithm::Md5);
        let ha1 = h.hex(&[&self.username, &self.realm, password]);
        let ha2 = h.hex(&[method, &self.uri]);
        match (&self.qop, &self.nc, &self.cnonce) {
            (Some(qop), Some(nc), Some(cnonce)) => {
                h.hex(&[&ha1, &self.nonce, nc, cnonce, qop, &ha2])
            }
            _ => h.hex(&[&ha1, &self.nonce, &ha2]),
        }
    }

    fn algorithm(&self) -> Result<Algorithm, AuthError> {
        match self.algorithm.as_deref() {
            None => Ok(Algorithm::Md5),
            Some(a) if a.eq_ignore_ascii_case("MD5") => Ok(Algorithm::Md5),
            Some(a) if a.eq_ignore_ascii_case("SHA-256") => Ok(Algorithm::Sha256),
            Some(a) => Err(AuthError::UnsupportedAlgorithm(a.to_owned())),
        }
    }
}

/// Splits `name=value, name="quoted, value"` into lowercase names and unquoted values.
pub(super) fn parse_params(s: &str) -> Result<Vec<(String, String)>, AuthError> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut params: Vec<(String, String)> = Vec::new();
    let skip_whitespace = |i: &mut usize| {
        while bytes.get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
    };
    loop {
        while bytes
            .get(i)
            .is_some_and(|b| *b == b',' || b.is_ascii_whitespace())
        {
            i += 1;
        }
        if i >= bytes.len() {
            return Ok(params);
        }

        let start = i;
        while bytes.get(i).copied().is_some_and(is_token_byte) {
            i += 1;
        }
        // Token bytes are ASCII, so these are character boundaries.
        let name = s
            .get(start..i)
            .filter(|name| !name.is_empty())
            .ok_or(AuthError::Malformed("expected a parameter name"))?
            .to_ascii_lowercase();
        skip_whitespace(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err(AuthError::Malformed("expected '=' after a parameter name"));
        }
        i += 1;
        skip_whitespace(&mut i);

        let value = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let mut value = Vec::new();
            loop {
                match bytes.get(i) {
                    None => return Err(AuthError::Malformed("unterminated quoted string")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let escaped = bytes
                            .get(i + 1)
                            .ok_or(AuthError::Malformed("unterminated quoted string"))?;
                        value.push(*escaped);
                        i += 2;
                    }
                    Some(b) => {
                        value.push(*b);
                        i += 1;
                    }
                }
            }
            // Only ASCII backslashes were removed from UTF-8 input, so this cannot fail.
            String::from_utf8(value)
                .map_err(|_| AuthError::Malformed("quoted string is not UTF-8"))?
        } else {
            // Lenient: anything up to the next comma or blank, e.g. an unquoted URI.
            let start = i;
            while bytes
                .get(i)
                .is_some_and(|b| *b != b',' && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            s.get(start..i)
                .filter(|value| !value.is_empty())
                .ok_or(AuthError::Malformed("empty parameter value"))?
                .to_owned()
        };

        skip_whitespace(&mut i);
        if bytes.get(i).is_some_and(|b| *b != b',') {
            return Err(AuthError::Malformed("expected ',' between parameters"));
        }
        if params.iter().any(|(n, _)| *n == name) {
            return Err(AuthError::DuplicateParam(name));
        }
        params.push((name, value));
    }
}

/// RFC 3261 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Escapes a value for a quoted-string, dropping line breaks that would end the header.
pub(super) fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len());
    for c in value.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')) {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Lowercase hex of the hash of the parts joined with ':'.
fn hash_hex<D: Digest>(parts: &[&str]) -> String {
    let mut hash = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash.update(b":");
        }
        hash.update(part.as_bytes());
    }
    hex(&hash.finalize())
}

/// HMAC-MD5 (RFC 2104).
fn hmac_md5(key: &[u8], message: &[u8]) -> [u8; 16] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key
            .iter_mut()
            .zip(Md5::digest(key))
            .for_each(|(k, d)| *k = d);
    } else {
        block_key.iter_mut().zip(key).for_each(|(k, d)| *k = *d);
    }
    let ipad = block_key.map(|k| k ^ 0x36);
    let opad = block_key.map(|k| k ^ 0x5c);
    let inner = Md5::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Md5::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes
/// of a guessed response were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Source addresses allowed to send requests: single addresses and CIDR networks, IPv4 and
/// IPv6. An empty list allows everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<Network>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    V4 { address: u32, prefix: u8 },
    V6 { address: u128, prefix: u8 },
}

impl AllowList {
    /// Parses entries like `127.0.0.1`, `10.0.0.0/8`, `::1`, `2001:db8::/32`. A network with
    /// bits set past its prefix (`10.1.0.0/8`) is refused as a likely typo.
    pub fn parse(entries: &[String]) -> Result<AllowList, AuthError> {
        let networks = entries
            .iter()
            .map(|entry| {
                parse_network(entry.trim()).map_err(|reason| AuthError::BadAllowListEntry {
                    entry: entry.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowList { networks })
    }

    /// Whether `ip` may send requests. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, seen
    /// on dual-stack sockets) match IPv4 entries.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.networks.is_empty() {
            return true;
        }
        let ip = ip.to_canonical();
        self.networks.iter().any(|network| match (*network, ip) {
            (Network::V4 { address, prefix }, IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(prefix) == address
            }
            (Network::V6 { address, prefix }, IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(prefix) == address
            }
            _ => false,
        })
    }

    /// Whether the list is empty, i.e. allows everyone.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

fn parse_network(entry: &str) -> Result<Network, &'static str> {
    if entry.is_empty() {
        return Err("empty entry");
    }
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (entry, None),
    };
    let address: IpAddr = address.parse().map_err(|_| "not an IP address")?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(prefix) => prefix
            .parse::<u8>()
            .map_err(|_| "prefix length is not a number")?,
    };
    if prefix > max {
        return Err("prefix length is too long for the address family");
    }
    let network = match address {
        IpAddr::V4(v4) => Network::V4 {
            address: u32::from(v4),
            prefix,
        },
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // An IPv4-mapped network is matched as the IPv4 network it maps.
            Some(v4) if prefix >= 96 => Network::V4 {
                address: u32::from(v4),
                prefix: prefix - 96,
            },
            _ => Network::V6 {
                address: u128::from(v6),
                prefix,
            },
        },
    };
    let host_bits_clear = match network {
        Network::V4 { address, prefix } => address & !mask_v4(prefix) == 0,
        Network::V6 { address, prefix } => address & !mask_v6(prefix) == 0,
    };
    if !host_bits_clear {
        return Err("address has bits set past the prefix length");
    }
    Ok(network)
}

fn mask_v4(prefix: u8) -> u32 {
    let bits = Ipv4Addr::BITS;
    u32::MAX
        .checked_shl(bits - u32::from(prefix).min(bits))
        .unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    let bits = Ipv6Addr::BITS;
    u128::MAX
        .checked_shl(bits - u32::from(prefix).min(bits))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_750_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn authenticator() -> DigestAuthenticator {
        DigestAuthenticator::new(DigestConfig {
            realm: "voicebot.example".into(),
            users: vec![
                ("alice".into(), "s3cret".into()),
                ("pbx".into(), "trunk pass".into()),
            ],
            nonce_ttl: Duration::from_secs(60),
            max_failures: 5,
            failure_window: Duration::from_secs(60),
        })
    }

    /// Pulls `name="value"` out of a challenge.
    fn challenge_param(challenge: &str, name: &str) -> String {
        let start = challenge.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        let len = challenge[start..].find('"').unwrap();
        challenge[start..start + len].to_owned()
    }

    fn md5(s: &str) -> String {
        hex(&Md5::digest(s.as_bytes()))
    }

    /// What a phone sends back, computed here independently of the module's code.
    fn client_authorization(challenge: &str, user: &str, password: &str, method: &str) -> String {
        let realm = challenge_param(challenge, "realm");
        let nonce = challenge_param(challenge, "nonce");
        let uri = "sip:bot@192.0.2.10:5060";
        let (nc, cnonce) = ("00000001", "a1b2c3d4");
        let ha1 = md5(&format!("{user}:{realm}:{password}"));
        let ha2 = md5(&format!("{method}:{uri}"));
        let response = md5(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc={nc}"
        )
    }

    #[test]
    fn hmac_md5_matches_rfc_2104() {
        assert_eq!(
            hex(&hmac_md5(&[0x0b; 16], b"Hi There")),
            "9294727a3638bb1c13f48ef8158bfc9d"
        );
        assert_eq!(
            hex(&hmac_md5(b"Jefe", b"what do ya want for nothing?")),
            "750c783e6ab0b503eaa86e310a5db738"
        );
        // RFC 2202 test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_md5(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"
        );
    }

    #[test]
    fn rfc_2617_example() {
        let header = r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let credentials = DigestCredentials::parse(header).unwrap();
        assert_eq!(credentials.username, "Mufasa");
        assert_eq!(credentials.uri, "/dir/index.html");
        assert_eq!(credentials.nc.as_deref(), Some("00000001"));
        assert_eq!(
            credentials.expected_response("Circle Of Life", "GET"),
            "6629fae49393a05397450978507c4ef1"
        );
        assert_eq!(credentials.response, "6629fae49393a05397450978507c4ef1");
        // The same from the formula, spelled out.
        let ha1 = md5("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = md5("GET:/dir/index.html");
        assert_eq!(
            md5(&format!(
                "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
            )),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    #[test]
    fn challenge_format() {
        let auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let nonce = challenge_param(&challenge, "nonce");
        assert_eq!(
            challenge,
            format!(
                "Digest realm=\"voicebot.example\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\""
            )
        );
        assert_eq!(nonce.len(), NONCE_HEX);
        assert!(auth.challenge(at(T0), true).ends_with(", stale=true"));
        // Every challenge has its own nonce, even in the same second.
        assert_ne!(
            challenge_param(&auth.challenge(at(T0), false), "nonce"),
            nonce
        );
        // Two headers, SHA-256 first, one nonce.
        let [sha, md5] = auth.challenges(at(T0), true);
        let nonce = challenge_param(&sha, "nonce");
        assert_eq!(
            sha,
            format!(
                "Digest realm=\"voicebot.example\", nonce=\"{nonce}\", algorithm=SHA-256, \
                 qop=\"auth\", stale=true"
            )
        );
        assert_eq!(md5, sha.replace("SHA-256", "MD5"));
    }

    const URI: &str = "sip:bot@192.0.2.10:5060";

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn sha256(s: &str) -> String {
        hex(&Sha256::digest(s.as_bytes()))
    }

    /// A SHA-256 answer (RFC 7616) computed here independently of the module's code.
    fn sha256_authorization(challenge: &str, user: &str, password: &str, nc: &str) -> String {
        let realm = challenge_param(challenge, "realm");
        let nonce = challenge_param(challenge, "nonce");
        let ha1 = sha256(&format!("{user}:{realm}:{password}"));
        let ha2 = sha256(&format!("INVITE:{URI}"));
        let response = sha256(&format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{URI}\", \
             response=\"{response}\", algorithm=SHA-256, cnonce=\"c0ffee\", qop=auth, nc={nc}"
        )
    }

    #[test]
    fn sha256_is_offered_first_and_accepted() {
        let mut auth = authenticator();
        let [sha, _] = auth.challenges(at(T0), false);
        let header = sha256_authorization(&sha, "alice", "s3cret", "00000001");
        let checked = auth.check(ip(1), "INVITE", URI, Some(&header), at(T0 + 1));
        assert_eq!(checked.result, Ok("alice".into()));
        let wrong = sha256_authorization(&sha, "alice", "guess", "00000002");
        assert_eq!(
            auth.check(ip(1), "INVITE", URI, Some(&wrong), at(T0 + 1))
                .result,
            Err(AuthError::WrongResponse("alice".into()))
        );
    }

    /// Issue 20: a captured Authorization was accepted again on a new call and for another
    /// Request-URI.
    #[test]
    fn a_replayed_authorization_is_refused() {
        let mut auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let header = client_authorization(&challenge, "alice", "s3cret", "INVITE");
        let check = |auth: &mut DigestAuthenticator, uri: &str, header: &str| {
            auth.check(ip(1), "INVITE", uri, Some(header), at(T0 + 2))
                .result
        };
        // For another Request-URI: refused before anything is remembered.
        assert!(matches!(
            check(&mut auth, "sip:other@192.0.2.10:5060", &header),
            Err(AuthError::UriMismatch(_))
        ));
        assert_eq!(check(&mut auth, URI, &header), Ok("alice".into()));
        // The same header again (a new call, same nc): a replay.
        assert_eq!(
            check(&mut auth, URI, &header),
            Err(AuthError::NonceReused("00000001".into()))
        );
        // The same nonce with the next nc (what a phone does on its next call) is fine, and
        // a lower nc after it is not.
        let next = |nc: &str| {
            let nonce = challenge_param(&challenge, "nonce");
            let ha1 = md5("alice:voicebot.example:s3cret");
            let ha2 = md5(&format!("INVITE:{URI}"));
            let response = md5(&format!("{ha1}:{nonce}:{nc}:zz:auth:{ha2}"));
            format!(
                "Digest username=\"alice\", realm=\"voicebot.example\", nonce=\"{nonce}\", \
                 uri=\"{URI}\", response=\"{response}\", cnonce=\"zz\", qop=auth, nc={nc}"
            )
        };
        assert_eq!(check(&mut auth, URI, &next("00000003")), Ok("alice".into()));
        assert!(matches!(
            check(&mut auth, URI, &next("00000002")),
            Err(AuthError::NonceReused(_))
        ));
        // A replay is not a password guess: it never throttles the source.
        assert!(auth.failures.is_empty());
    }

    #[test]
    fn the_nonce_store_is_bounded_and_what_it_forgets_turns_stale() {
        let mut auth = authenticator();
        let mut first = None;
        for i in 0..MAX_TRACKED_NONCES as u64 + 1 {
            // One nonce per second, all alive (ttl 60 s is ignored here: 10 000 s pass).
            let now = at(T0 + i / 200);
            let header =
                client_authorization(&auth.challenge(now, false), "alice", "s3cret", "INVITE");
            first.get_or_insert_with(|| header.clone());
            assert_eq!(
                auth.check(ip(1), "INVITE", URI, Some(&header), now).result,
                Ok("alice".into()),
                "{i}"
            );
        }
        assert!(auth.used.len() <= MAX_TRACKED_NONCES);
        // The first nonce was forgotten, yet its replay is stale, not accepted.
        assert_eq!(
            auth.check(ip(1), "INVITE", URI, first.as_deref(), at(T0 + 41))
                .result,
            Err(AuthError::StaleNonce)
        );
    }

    #[test]
    fn guesses_are_throttled_per_source_and_logged_once_per_burst() {
        let mut auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let mut logged = 0;
        let mut throttled = 0;
        for i in 0..2000u64 {
            let guess = client_authorization(&challenge, "alice", &format!("guess{i}"), "INVITE");
            let checked = auth.check(ip(9), "INVITE", URI, Some(&guess), at(T0 + 1 + i / 100));
            logged += usize::from(checked.log);
            match checked.result {
                Err(AuthError::Throttled { retry_after_s }) => {
                    assert!((1..=60).contains(&retry_after_s));
                    throttled += 1;
                }
                Err(AuthError::WrongResponse(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        // 20 s of guessing, one window of 60 s: 5 checked, the rest refused unchecked; the
        // log got the first failure and the start of the throttling.
        assert_eq!(throttled, 1996);
        assert_eq!(logged, 2);
        // Even the right password is refused from that source until the window ends...
        let good = client_authorization(&challenge, "alice", "s3cret", "INVITE");
        assert!(matches!(
            auth.check(ip(9), "INVITE", URI, Some(&good), at(T0 + 30))
                .result,
            Err(AuthError::Throttled { .. })
        ));
        // ...while another source is unaffected.
        assert_eq!(
            auth.check(ip(10), "INVITE", URI, Some(&good), at(T0 + 30))
                .result,
            Ok("alice".into())
        );
        // After the window the source is heard again.
        let challenge = auth.challenge(at(T0 + 61), false);
        let good = client_authorization(&challenge, "alice", "s3cret", "INVITE");
        assert_eq!(
            auth.check(ip(9), "INVITE", URI, Some(&good), at(T0 + 61))
                .result,
            Ok("alice".into())
        );
        // An INVITE without credentials is routine: no failure, no log line.
        let none = auth.check(ip(11), "INVITE", URI, None, at(T0));
        assert_eq!(none.result, Err(AuthError::MissingParam("Authorization")));
        assert!(!none.log);
    }

    #[test]
    fn round_trip() {
        let auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let header = client_authorization(&challenge, "alice", "s3cret", "INVITE");
        assert_eq!(
            auth.verify("INVITE", &header, at(T0 + 5)),
            Ok("alice".into())
        );
        // At the very end of the nonce's life it is still good.
        assert_eq!(
            auth.verify("INVITE", &header, at(T0 + 60)),
            Ok("alice".into())
        );
        let header = client_authorization(&challenge, "pbx", "trunk pass", "INVITE");
        assert_eq!(auth.verify("INVITE", &header, at(T0)), Ok("pbx".into()));
    }

    #[test]
    fn shared_secret_accepts_the_other_instance_nonces() {
        let config = DigestConfig {
            realm: "r".into(),
            users: vec![("u".into(), "p".into())],
            nonce_ttl: Duration::from_secs(30),
            max_failures: 5,
            failure_window: Duration::from_secs(60),
        };
        let a = DigestAuthenticator::with_secret(config.clone(), [7; 32]);
        let b = DigestAuthenticator::with_secret(config, [7; 32]);
        let header = client_authorization(&a.challenge(at(T0), false), "u", "p", "INVITE");
        assert_eq!(b.verify("INVITE", &header, at(T0)), Ok("u".into()));
    }

    #[test]
    fn wrong_password_user_method_or_realm() {
        let auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let header = client_authorization(&challenge, "alice", "guess", "INVITE");
        assert_eq!(
            auth.verify("INVITE", &header, at(T0)),
            Err(AuthError::WrongResponse("alice".into()))
        );
        let header = client_authorization(&challenge, "mallory", "s3cret", "INVITE");
        assert_eq!(
            auth.verify("INVITE", &header, at(T0)),
            Err(AuthError::UnknownUser("mallory".into()))
        );
        // A response for another method does not authorize this one.
        let header = client_authorization(&challenge, "alice", "s3cret", "BYE");
        assert_eq!(
            auth.verify("INVITE", &header, at(T0)),
            Err(AuthError::WrongResponse("alice".into()))
        );
        let header = client_authorization(&challenge, "alice", "s3cret", "INVITE")
            .replace("realm=\"voicebot.example\"", "realm=\"other\"");
        assert_eq!(
            auth.verify("INVITE", &header, at(T0)),
            Err(AuthError::BadRealm("other".into()))
        );
    }

    #[test]
    fn stale_nonce() {
        let auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let header = client_authorization(&challenge, "alice", "s3cret", "INVITE");
        assert_eq!(
            auth.verify("INVITE", &header, at(T0 + 61)),
            Err(AuthError::StaleNonce)
        );
        // Stale is reserved for right answers: a wrong one past the TTL is just wrong.
        let wrong = client_authorization(&challenge, "alice", "guess", "INVITE");
        assert_eq!(
            auth.verify("INVITE", &wrong, at(T0 + 61)),
            Err(AuthError::WrongResponse("alice".into()))
        );
    }

    #[test]
    fn tampered_or_foreign_nonce() {
        let auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let nonce = challenge_param(&challenge, "nonce");
        let flip = |nonce: &str, at: usize| -> String {
            let mut bytes = nonce.as_bytes().to_vec();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).unwrap()
        };
        // Moving the issue time forward (to dodge expiry) or touching the MAC both fail,
        // even with a response correctly computed over the tampered nonce.
        for tampered in [
            flip(&nonce, 10),
            flip(&nonce, NONCE_HEX - 1),
            nonce.to_uppercase(),
            nonce[..NONCE_HEX - 1].to_owned(),
            format!("{nonce}0"),
            "dcd98b7102dd2f0e8b11d0f600bfb0c093".to_owned(),
            String::new(),
        ] {
            if tampered == nonce {
                continue;
            }
            let forged = challenge.replace(&nonce, &tampered);
            let header = client_authorization(&forged, "alice", "s3cret", "INVITE");
            assert_eq!(
                auth.verify("INVITE", &header, at(T0)),
                Err(AuthError::InvalidNonce),
                "{tampered}"
            );
        }
        // A nonce from another authenticator (another secret).
        let other = authenticator().challenge(at(T0), false);
        let header = client_authorization(&other, "alice", "s3cret", "INVITE");
        assert_eq!(
            auth.verify("INVITE", &header, at(T0)),
            Err(AuthError::InvalidNonce)
        );
    }

    #[test]
    fn header_parsing_is_liberal_in_form() {
        let auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let nonce = challenge_param(&challenge, "nonce");
        // Any order, upper-case names and scheme, unknown parameters, commas and escaped
        // quotes inside quoted strings, an upper-case response.
        let uri = "sip:bot,x@192.0.2.10";
        let ha1 = md5("alice:voicebot.example:s3cret");
        let ha2 = md5(&format!("INVITE:{uri}"));
        let response = md5(&format!("{ha1}:{nonce}:0000000a:x,\"y:auth:{ha2}"));
        let header = format!(
            "DIGEST  NC=0000000a,QOP=\"auth\" ,Response=\"{}\",opaque=\"o,p\", \
             cnonce=\"x,\\\"y\",uri=\"{uri}\",Nonce=\"{nonce}\",realm=\"voicebot.example\", \
             USERNAME=\"alice\",future=token, algorithm=md5",
            response.to_uppercase()
        );
        assert_eq!(auth.verify("INVITE", &header, at(T0)), Ok("alice".into()));
        let credentials = DigestCredentials::parse(&header).unwrap();
        assert_eq!(credentials.cnonce.as_deref(), Some("x,\"y"));
        assert_eq!(credentials.uri, uri);
    }

    #[test]
    fn rfc_2069_response_without_qop_is_refused() {
        let auth = authenticator();
        let nonce = challenge_param(&auth.challenge(at(T0), false), "nonce");
        let ha1 = md5("alice:voicebot.example:s3cret");
        let ha2 = md5("INVITE:sip:bot@gw");
        let response = md5(&format!("{ha1}:{nonce}:{ha2}"));
        let header = format!(
            "Digest username=\"alice\", realm=\"voicebot.example\", nonce=\"{nonce}\", \
             uri=\"sip:bot@gw\", response=\"{response}\""
        );
        // Without nc there is nothing to track a replay by.
        assert_eq!(
            auth.verify("INVITE", &header, at(T0)),
            Err(AuthError::MissingParam("qop"))
        );
    }

    #[test]
    fn unsupported_or_incomplete_credentials() {
        let auth = authenticator();
        let challenge = auth.challenge(at(T0), false);
        let good = client_authorization(&challenge, "alice", "s3cret", "INVITE");
        let cases = [
            (
                good.replace("algorithm=MD5", "algorithm=MD5-sess"),
                AuthError::UnsupportedAlgorithm("MD5-sess".into()),
            ),
            (
                good.replace("qop=auth", "qop=auth-int"),
                AuthError::UnsupportedQop("auth-int".into()),
            ),
            (
                good.replace(", nc=00000001", ""),
                AuthError::MissingParam("nc"),
            ),
            (
                good.replace(", cnonce=\"a1b2c3d4\"", ""),
                AuthError::MissingParam("cnonce"),
            ),
            (
                good.replace("username=", "user="),
                AuthError::MissingParam("username"),
            ),
            (
                good.replace("response=", "resp="),
                AuthError::MissingParam("response"),
            ),
            (good.replace("Digest ", "Basic "), AuthError::NotDigest),
            ("Basic YWxpY2U6czNjcmV0".into(), AuthError::NotDigest),
            (
                format!("{good}, nc=00000002"),
                AuthError::DuplicateParam("nc".into()),
            ),
            (
                good.replace("uri=\"", "uri=\"x"),
                AuthError::WrongResponse("alice".into()),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                auth.verify("INVITE", &header, at(T0)),
                Err(expected),
                "{header}"
            );
        }
    }

    #[test]
    fn garbage_headers_are_errors_not_panics() {
        let auth = authenticator();
        let fixed = [
            "",
            " ",
            "Digest",
            "Digest ",
            "Digest ,,,,",
            "Digest username",
            "Digest username=",
            "Digest username=\"",
            "Digest username=\"\\",
            "Digest =\"x\"",
            "Digest username=\"a\" realm=\"b\"",
            "Digest username=\"a\",realm=\"b\",nonce=\"c\",uri=\"d\",response=\"e\"",
            "Digest username=\"\u{e9}\\\u{e9}\", realm=\"\u{1F600}\"",
            "Digest \u{0}=\u{0}",
        ];
        for header in fixed {
            assert!(auth.verify("INVITE", header, at(T0)).is_err(), "{header:?}");
        }
        // Seeded random and mutated headers.
        let good =
            client_authorization(&auth.challenge(at(T0), false), "alice", "s3cret", "INVITE");
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"Digest usernam=\",\\ \t\r\nabc0123456789:@;";
        for round in 0..4000_u32 {
            let bytes: Vec<u8> = if round.is_multiple_of(2) {
                (0..next() % 120)
                    .map(|_| {
                        let r = next();
                        if r.is_multiple_of(3) {
                            r as u8 >> 1
                        } else {
                            alphabet[(r % alphabet.len() as u64) as usize]
                        }
                    })
                    .collect()
            } else {
                let mut bytes = good.as_bytes().to_vec();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % bytes.len().max(1) as u64) as usize;
                    match next() % 3 {
                        0 if at < bytes.len() => {
                            bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize]
                        }
                        1 => bytes.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                        _ => bytes.truncate(at),
                    }
                }
                bytes
            };
            let header = String::from_utf8_lossy(&bytes);
            let _ = auth.verify("INVITE", &header, at(T0));
            let _ = DigestCredentials::parse(&header);
        }
    }

    #[test]
    fn allow_list() {
        let entries: Vec<String> = [
            "127.0.0.1",
            " 10.0.0.0/8 ",
            "::1",
            "2001:db8::/32",
            "192.168.1.0/24",
        ]
        .map(String::from)
        .to_vec();
        let list = AllowList::parse(&entries).unwrap();
        let allowed = [
            "127.0.0.1",
            "10.255.1.2",
            "10.0.0.0",
            "::1",
            "2001:db8:ffff::5",
            "192.168.1.200",
            "::ffff:10.1.2.3",
        ];
        let refused = [
            "127.0.0.2",
            "11.0.0.1",
            "9.255.255.255",
            "::2",
            "2001:db9::1",
            "192.168.2.1",
            "::ffff:127.0.0.2",
            "0.0.0.0",
            "::",
        ];
        for ip in allowed {
            assert!(list.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in refused {
            assert!(!list.allows(ip.parse().unwrap()), "{ip}");
        }

        let empty = AllowList::parse(&[]).unwrap();
        assert!(empty.is_empty());
        assert!(empty.allows("203.0.113.9".parse().unwrap()));

        let everyone = AllowList::parse(&["0.0.0.0/0".into(), "::/0".into()]).unwrap();
        assert!(everyone.allows("203.0.113.9".parse().unwrap()));
        assert!(everyone.allows("2001:db8::1".parse().unwrap()));

        let mapped = AllowList::parse(&["::ffff:10.0.0.0/104".into()]).unwrap();
        assert!(mapped.allows("10.9.9.9".parse().unwrap()));
        assert!(!mapped.allows("11.0.0.0".parse().unwrap()));
    }

    #[test]
    fn bad_allow_list_entries_are_named() {
        for (entry, reason) in [
            ("", "empty entry"),
            ("localhost", "not an IP address"),
            ("10.0.0.0/", "prefix length is not a number"),
            ("10.0.0.0/x", "prefix length is not a number"),
            (
                "10.0.0.0/33",
                "prefix length is too long for the address family",
            ),
            ("::/129", "prefix length is too long for the address family"),
            ("10.1.0.0/8", "address has bits set past the prefix length"),
            (
                "2001:db8::1/32",
                "address has bits set past the prefix length",
            ),
            ("10.0.0.0/8/8", "prefix length is not a number"),
        ] {
            let entries = vec!["127.0.0.1".to_owned(), entry.to_owned()];
            assert_eq!(
                AllowList::parse(&entries),
                Err(AuthError::BadAllowListEntry {
                    entry: entry.to_owned(),
                    reason
                }),
                "{entry}"
            );
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let debug = format!("{:?}", authenticator());
        assert!(debug.contains("alice"));
        assert!(!debug.contains("s3cret"));
        assert!(!debug.contains("secret:"));
    }
}

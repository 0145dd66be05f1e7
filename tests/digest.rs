//! Digest authentication of a running `voicebot serve` against a client written here (issue
//! 20): the 401 offers SHA-256 before MD5, a captured `Authorization` replayed on a new call
//! (for another Request-URI, or the same one) is refused, and 2,000 wrong guesses from one
//! source are throttled (refused with 403 and Retry-After without a password check) while
//! another source still gets in. SIP over TCP on loopback only; no peer program is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod common;

use common::Gateway;

const USER: &str = "trunk";
const PASSWORD: &str = "s3cret-e2e";
const MAX_FAILURES: usize = 10;

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        "[sip.auth]\nrealm = \"voicebot\"\nusers = [{{ user = \"{USER}\", password = \"{PASSWORD}\" }}]\n\
         max_failures = {MAX_FAILURES}\nfailure_window_s = 300\n"
    );
    std::fs::write(&config, text).expect("config");
    config
}

/// A SIP client over one TCP connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    port: u16,
    n: u32,
}

/// One response: status code and head.
struct Response {
    code: u16,
    head: String,
}

impl Response {
    fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.head.lines().filter_map(move |l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

impl Client {
    fn new(stream: TcpStream, port: u16) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
            port,
            n: 0,
        }
    }

    /// Sends an INVITE to `user` with `authorization` (a header line or "") and returns its
    /// first response other than 100.
    fn invite(&mut self, user: &str, authorization: &str) -> Response {
        self.n += 1;
        let n = self.n;
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let local = self.stream.local_addr().expect("local");
        let msg = format!(
            "INVITE {} SIP/2.0\r\n\
             Via: SIP/2.0/TCP {local};branch=z9hG4bK-digest-{n}-{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@127.0.0.1>;tag=t{n}\r\n\
             To: <sip:{user}@127.0.0.1>\r\n\
             Call-ID: digest-{n}-{}@127.0.0.1\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{local};transport=tcp>\r\n\
             {authorization}\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            self.uri(user),
            local.port(),
            local.port(),
            sdp.len()
        );
        self.stream.write_all(msg.as_bytes()).expect("send");
        // Skip 100 Trying and what belongs to earlier calls (an accepted call's 200 OK and its
        // retransmissions come whenever they come).
        let call_id = format!("digest-{n}-{}@127.0.0.1", local.port());
        loop {
            let r = self.response();
            if r.code != 100
                && r.headers("Call-ID")
                    .chain(r.headers("i"))
                    .any(|v| v == call_id)
            {
                return r;
            }
        }
    }

    fn uri(&self, user: &str) -> String {
        format!("sip:{user}@127.0.0.1:{}", self.port)
    }

    fn response(&mut self) -> Response {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        let n = n.trim();
                        (n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("l"))
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    self.buf.drain(..end + 4 + len);
                    if !head.starts_with("SIP/2.0 ") {
                        // A request of the gateway's (the BYE of an accepted call we never
                        // ACKed): not what this client waits for.
                        continue;
                    }
                    let code = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or_else(|| panic!("not a response: {head}"));
                    return Response { code, head };
                }
            }
            let mut chunk = [0u8; 8192];
            let k = self.stream.read(&mut chunk).expect("a response");
            assert!(k > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }
}

fn param(challenge: &str, name: &str) -> String {
    let start = challenge.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
    let len = challenge[start..].find('"').expect("quote");
    challenge[start..start + len].to_owned()
}

fn sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Authorization:` line a phone sends for `uri` to the SHA-256 challenge.
fn authorization(challenge: &str, password: &str, uri: &str, nc: u32) -> String {
    let (realm, nonce) = (param(challenge, "realm"), param(challenge, "nonce"));
    let nc = format!("{nc:08x}");
    let ha1 = sha256(&format!("{USER}:{realm}:{password}"));
    let ha2 = sha256(&format!("INVITE:{uri}"));
    let response = sha256(&format!("{ha1}:{nonce}:{nc}:4a5b:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"{USER}\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", algorithm=SHA-256, cnonce=\"4a5b\", qop=auth, \
         nc={nc}\r\n"
    )
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(format!("{from}:0").parse().expect("address"))?;
            socket.connect(to).await
        })
        .expect("connect");
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// The SHA-256 challenge of a 401, checking the MD5 one follows it.
fn sha256_challenge(r: &Response) -> String {
    assert_eq!(r.code, 401, "{}", r.head);
    let challenges: Vec<&str> = r.headers("WWW-Authenticate").collect();
    assert_eq!(challenges.len(), 2, "{}", r.head);
    assert!(challenges[0].contains("algorithm=SHA-256"), "{}", r.head);
    assert!(challenges[1].contains("algorithm=MD5"), "{}", r.head);
    assert!(challenges.iter().all(|c| c.contains("qop=\"auth\"")));
    assert_eq!(param(challenges[0], "nonce"), param(challenges[1], "nonce"));
    challenges[0].to_owned()
}

#[test]
fn replays_are_refused_and_guessing_is_throttled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let mut gw = Gateway::start_with(Some(&config), "46800-46899", &[]);
    let sip = SocketAddr::from(([127, 0, 0, 1], gw.port));
    let mut client = Client::new(connect_from("127.0.0.1", sip), gw.port);

    // The challenge, then a call with the right credentials gets in.
    let challenge = sha256_challenge(&client.invite("support", ""));
    let uri = client.uri("support");
    let captured = authorization(&challenge, PASSWORD, &uri, 1);
    let r = client.invite("support", &captured);
    assert!((180..300).contains(&r.code), "{}", r.head);

    // The captured header on a new call for another Request-URI, and for the same one.
    for user in ["other", "support"] {
        let r = client.invite(user, &captured);
        assert_eq!(r.code, 401, "replay to {user} got {}", r.head);
    }

    // 2,000 wrong guesses from this source, each with the next nonce-count.
    let started = Instant::now();
    let (mut throttled, mut checked) = (0, 0);
    for i in 0..2000u32 {
        let guess = authorization(&challenge, &format!("guess-{i}"), &uri, 2 + i);
        let r = client.invite("support", &guess);
        match r.code {
            403 => {
                let retry: u64 = r
                    .headers("Retry-After")
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("403 without Retry-After: {}", r.head));
                assert!((1..=300).contains(&retry), "{retry}");
                throttled += 1;
            }
            401 => checked += 1,
            _ => panic!("a wrong guess got {}", r.head),
        }
    }
    eprintln!(
        "2000 guesses in {:?}: {checked} checked (401), {throttled} refused unchecked (403)",
        started.elapsed()
    );
    // The 10th failure starts the throttling (and is itself answered 403).
    assert_eq!(checked, MAX_FAILURES - 1);
    assert_eq!(throttled, 2000 - checked);
    // Even the right password is refused from this source now.
    let right = authorization(&challenge, PASSWORD, &uri, 5000);
    assert_eq!(client.invite("support", &right).code, 403);

    // Another source is unaffected.
    let mut other = Client::new(connect_from("127.0.0.2", sip), gw.port);
    let challenge = sha256_challenge(&other.invite("support", ""));
    let r = other.invite(
        "support",
        &authorization(&challenge, PASSWORD, &other.uri("support"), 1),
    );
    assert!((180..300).contains(&r.code), "{}", r.head);
    assert!(gw.alive());
}

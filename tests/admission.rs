//! Admission control of a running `voicebot serve` on loopback (issue 16): past its call limit
//! (`[admission] calls_per_core` x `cores`) a new INVITE gets 503 Service Unavailable with
//! Retry-After, the calls in progress go on, the refusal is counted in `/metrics`, and once a
//! call ends the next caller is answered again. The callers are plain SIP over UDP written
//! here (INVITE, ACK, BYE), so every answer is seen as sent; only loopback addresses.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::admin::{http_client, HttpGateway};
use common::cluster::{sip_header, status_of};

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 46990 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// One caller's dialog, as far as this test needs it.
struct Caller {
    sock: UdpSocket,
    gateway: u16,
    call_id: String,
    to_tag: Option<String>,
}

impl Caller {
    fn new(gateway: u16, n: usize) -> Caller {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Caller {
            sock,
            gateway,
            call_id: format!("admission-{n}-{}", std::process::id()),
            to_tag: None,
        }
    }

    fn send(&self, text: &str) {
        self.sock
            .send_to(text.as_bytes(), ("127.0.0.1", self.gateway))
            .expect("send");
    }

    fn request(&self, method: &str, cseq: u32, branch: &str, body: &str) -> String {
        let local = self.sock.local_addr().expect("addr");
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let content_type = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        format!(
            "{method} sip:support@127.0.0.1:{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\n\
             From: <sip:caller@127.0.0.1>;tag=caller-{id}\r\nTo: <sip:support@127.0.0.1>{to_tag}\r\n\
             Call-ID: {id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@{local}>\r\n\
             Max-Forwards: 70\r\n{content_type}Content-Length: {len}\r\n\r\n{body}",
            gw = self.gateway,
            id = self.call_id,
            len = body.len(),
        )
    }

    /// Sends the INVITE and returns the final response (ACKed when 2xx).
    fn invite(&mut self) -> String {
        let branch = format!("z9hG4bK-{}-inv", self.call_id);
        self.send(&self.request("INVITE", 1, &branch, SDP));
        let text = self
            .final_response(Duration::from_secs(10))
            .expect("a final answer to the INVITE");
        if status_of(text.as_bytes()) == Some(200) {
            self.to_tag = sip_header(&text, "To")
                .and_then(|to| to.split(";tag=").nth(1))
                .map(|t| t.split(';').next().unwrap_or(t).to_string());
            let ack_branch = format!("z9hG4bK-{}-ack", self.call_id);
            self.send(&self.request("ACK", 1, &ack_branch, ""));
        }
        text
    }

    /// Ends the call with BYE and waits for its 200.
    fn bye(&mut self) {
        let branch = format!("z9hG4bK-{}-bye", self.call_id);
        self.send(&self.request("BYE", 2, &branch, ""));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(text) = self.final_response(Duration::from_secs(1)) {
                if sip_header(&text, "CSeq").is_some_and(|c| c.ends_with("BYE")) {
                    assert_eq!(status_of(text.as_bytes()), Some(200), "{text}");
                    return;
                }
            }
        }
        panic!("no answer to the BYE of {}", self.call_id);
    }

    /// The next final (>= 200) response within `wait`.
    fn final_response(&self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                if status_of(&buf[..n]).is_some_and(|c| c >= 200) {
                    return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        }
        None
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        "[admission]\ncalls_per_core = 2\ncores = 1\nretry_after_s = 45\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-e2e-token\"\n\
         feedback_database = \"{}\"\nadmin_token_env = \"\"\nadmin_token_file = \"{}\"\n\
         history_database = \"\"\n",
        dir.join("feedback.sqlite3").display(),
        dir.join("admin-token").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

/// The value of the `voicebot_refused_total` sample for `reason` in `/metrics`.
fn refused(base: &str, reason: &str) -> u64 {
    let text = http_client(Duration::from_secs(5))
        .get(&format!("{base}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    let key = format!("voicebot_refused_total{{reason=\"{reason}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn calls_past_the_limit_get_503_with_retry_after_and_the_others_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let gw = HttpGateway::start(&config, "47700-47799", 3, Duration::from_secs(120));
    let port = gw.sip_port;

    let mut first = Caller::new(port, 1);
    let mut second = Caller::new(port, 2);
    for caller in [&mut first, &mut second] {
        let answer = caller.invite();
        assert_eq!(status_of(answer.as_bytes()), Some(200), "{answer}");
    }
    let mut third = Caller::new(port, 3);
    let answer = third.invite();
    assert_eq!(status_of(answer.as_bytes()), Some(503), "{answer}");
    assert_eq!(sip_header(&answer, "Retry-After"), Some("45"), "{answer}");
    assert_eq!(refused(&gw.base, "admission_capacity"), 1);

    // The calls in progress were not touched: the first ends normally, and its place is
    // taken by the next caller.
    first.bye();
    let mut fourth = Caller::new(port, 4);
    let answer = fourth.invite();
    assert_eq!(status_of(answer.as_bytes()), Some(200), "{answer}");
    second.bye();
    fourth.bye();
    assert_eq!(refused(&gw.base, "admission_capacity"), 1);
}

//! A webhook receiver for the hand-over tests: it answers 200 to every POST on loopback and
//! keeps what it got, and checks the signature the gateway puts on each event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voicebot_gateway::handover::outbox::verify;

use super::Gateway;

/// The agent token of [`transfer_config`].
pub const AGENT_TOKEN: &str = "agent-test-token";

/// The webhook secret the tests configure.
pub const SECRET: &str = "transfer-test-secret";

/// The HTTP address from the gateway's ready line.
pub fn http_base(gw: &Gateway) -> String {
    let addr = gw
        .ready
        .split("http=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no http= in {:?}", gw.ready));
    format!("http://{addr}")
}

/// One POST the webhook receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub at: Instant,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
}

/// A webhook receiver on loopback answering 200 to every POST.
pub fn webhook_receiver() -> (u16, Arc<Mutex<Vec<Delivery>>>) {
    webhook_receiver_on(0)
}

/// The same on a given port (0: any free one).
pub fn webhook_receiver_on(port: u16) -> (u16, Arc<Mutex<Vec<Delivery>>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Some((delivery, stream)) = read_delivery(stream) else {
                continue;
            };
            if let Ok(mut g) = sink.lock() {
                g.push(delivery);
            }
            answer_ok(stream);
        }
    });
    (port, got)
}

/// Reads one webhook POST from `stream` (5 s read timeout, body up to 1 MiB); the delivery and
/// the stream to answer on, or None when the peer sent nothing.
pub fn read_delivery(stream: TcpStream) -> Option<(Delivery, TcpStream)> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((n, v)) = line.trim_end().split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    let _ = reader.read_exact(&mut body);
    let delivery = Delivery {
        at: Instant::now(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    Some((delivery, reader.into_inner()))
}

/// Answers a delivery with 200 and closes.
pub fn answer_ok(mut stream: TcpStream) {
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// The webhook events of kind `kind`, waiting up to `wait` for at least one.
pub fn events(got: &Arc<Mutex<Vec<Delivery>>>, kind: &str, wait: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + wait;
    loop {
        let found: Vec<Delivery> = got
            .lock()
            .map(|g| {
                g.iter()
                    .filter(|d| d.header("X-Voicebot-Event") == Some(kind))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn check_signature(d: &Delivery) {
    let ts: u64 = d
        .header("X-Voicebot-Timestamp")
        .and_then(|t| t.parse().ok())
        .expect("timestamp header");
    let sig = d.header("X-Voicebot-Signature").expect("signature header");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    assert!(
        verify(SECRET.as_bytes(), ts, &d.body, sig, now, 300),
        "bad signature on {}",
        d.body
    );
    assert_eq!(d.header("Idempotency-Key"), d.header("X-Voicebot-Event-Id"));
}

/// A gateway configuration (`dir/gateway.toml`, its path returned; its databases in `dir`) with
/// the given agents for every team and the webhook (with a short
/// back-off, and attempts enough for a webhook that stays down for a whole call and a restart:
/// the default 10 would give an event up after about 50 s at this back-off).
pub fn transfer_config(
    dir: &Path,
    agents: &[String],
    webhook_port: u16,
    ring_timeout_s: u64,
) -> String {
    let list = agents
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let path = dir.join("gateway.toml");
    let text = format!(
        "[handover.transfer]\nring_timeout_s = {ring_timeout_s}\n\
         [handover.transfer.teams]\ndefault = [{list}]\n\
         [handover.webhook]\nurl = \"http://127.0.0.1:{webhook_port}/hooks/voicebot\"\n\
         secret = \"{SECRET}\"\ninitial_backoff_ms = 100\nmax_attempts = 100\n\
         database = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"{AGENT_TOKEN}\"\n\
         feedback_database = \"{}\"\nadmin_token_file = \"{}\"\n\
         history_database = \"{}\"\n",
        dir.join("outbox.sqlite3").display(),
        dir.join("feedback.sqlite3").display(),
        dir.join("admin-token").display(),
        dir.join("history.sqlite3").display()
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

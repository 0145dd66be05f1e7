//! RFC 4475's 49 torture messages against a running `voicebot serve`, over UDP and over TCP:
//! each gets the answer `tests/rfc4475/expected.txt` records (what the RFC expects, or a choice
//! within the latitude its text allows), an answered INVITE is acknowledged and hung up, and
//! after every message the gateway still answers an OPTIONS. At the end a real call (SIPp)
//! goes through. Also: two clients reusing one branch from different sent-by addresses each
//! get their own answer (RFC 3261 17.2.3).
//!
//! The messages go out as the RFC has them, but for two rewrites (tests/rfc4475/README.md):
//! `192.0.2.` becomes `127.0.0.` after the first empty line, so the RTP of an answered call
//! stays on loopback; and where a message repeats the branch, sent-by and method of an
//! earlier one (three pairs do), its branch gets the file name appended, because to RFC 3261
//! 17.2.3 it would otherwise be a retransmission of the earlier request, answered to the
//! earlier sender for 32 s.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{have_sipp, root, Gateway};
use voicebot_gateway::sip::message::{via_sent_by, Method, SipMessage, StreamFramer};

/// How long an answer may take (a busy 2-core machine, a call set up).
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long "nothing comes back" is watched for. Every answer the gateway gives comes within
/// milliseconds (it answers in the signalling task, before any media work); this only bounds
/// how late a wrong answer could be caught.
const SILENCE_WAIT: Duration = Duration::from_millis(400);

fn data_dir() -> PathBuf {
    root().join("tests/rfc4475")
}

/// One line of expected.txt.
struct Case {
    name: String,
    udp: String,
    tcp: String,
}

fn cases() -> Vec<Case> {
    let table = std::fs::read_to_string(data_dir().join("expected.txt")).expect("expected.txt");
    let cases: Vec<Case> = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Case {
                name: cols[0].to_string(),
                udp: cols[2].to_string(),
                tcp: cols[3].to_string(),
            }
        })
        .collect();
    assert_eq!(cases.len(), 49, "RFC 4475 section 3 has 49 messages");
    cases
}

/// The message file, with TEST-NET addresses after the first empty line moved to loopback
/// (same length, so every Content-Length still holds).
fn message(name: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(data_dir().join(format!("{name}.dat"))).expect("message file");
    let Some(start) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return bytes;
    };
    let mut i = start;
    while let Some(at) = bytes[i..].windows(8).position(|w| w == b"192.0.2.") {
        bytes[i + at..i + at + 8].copy_from_slice(b"127.0.0.");
        i += at + 8;
    }
    bytes
}

/// `bytes` with its branch made unique when an earlier message had the same branch, sent-by
/// and method (the server transaction key); `seen` collects the keys.
fn distinct_transaction(
    name: &str,
    bytes: Vec<u8>,
    seen: &mut HashSet<(String, String, String)>,
) -> Vec<u8> {
    let Ok(msg) = SipMessage::parse(&bytes) else {
        return bytes;
    };
    let (Some(method), Some(branch), Some(sent_by)) = (
        msg.method(),
        msg.via_branch(),
        msg.top_via().and_then(via_sent_by),
    ) else {
        return bytes;
    };
    if seen.insert((branch.to_string(), sent_by, method.to_string())) {
        return bytes;
    }
    let needle = format!("branch={branch}");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the branch as written");
    let end = at + needle.len();
    let mut out = bytes[..end].to_vec();
    out.extend_from_slice(format!("-{name}").as_bytes());
    out.extend_from_slice(&bytes[end..]);
    out
}

/// What came back.
#[derive(Debug)]
enum Heard {
    Message(Box<SipMessage>),
    Nothing,
    Closed,
}

/// One client: a UDP socket, or a TCP connection with its framer.
enum Link {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, StreamFramer),
}

impl Link {
    fn udp(port: u16) -> Link {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        Link::Udp(sock, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn tcp(port: u16) -> Link {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Link::Tcp(stream, StreamFramer::new())
    }

    fn transport(&self) -> &'static str {
        match self {
            Link::Udp(..) => "UDP",
            Link::Tcp(..) => "TCP",
        }
    }

    fn local(&self) -> SocketAddr {
        match self {
            Link::Udp(s, _) => s.local_addr().expect("local address"),
            Link::Tcp(s, _) => s.local_addr().expect("local address"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match self {
            Link::Udp(s, to) => {
                s.send_to(bytes, *to).expect("send");
            }
            // The peer may have closed already (a frame it could not read); what counts is
            // what we read afterwards.
            Link::Tcp(s, _) => {
                let _ = s.write_all(bytes);
            }
        }
    }

    /// The next message, waiting at most `wait`.
    fn next(&mut self, wait: Duration) -> Heard {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Heard::Nothing;
            }
            match self {
                Link::Udp(s, _) => {
                    s.set_read_timeout(Some(left)).expect("timeout");
                    match s.recv(&mut buf) {
                        Ok(n) => match SipMessage::parse(&buf[..n]) {
                            Ok(m) => return Heard::Message(Box::new(m)),
                            Err(e) => panic!("the gateway sent something unparsable: {e}"),
                        },
                        Err(_) => return Heard::Nothing,
                    }
                }
                Link::Tcp(s, framer) => {
                    match framer.next_message() {
                        Ok(Some(m)) => return Heard::Message(Box::new(m)),
                        Ok(None) => {}
                        Err(e) => panic!("the gateway sent an unframable message: {e}"),
                    }
                    s.set_read_timeout(Some(left)).expect("timeout");
                    match s.read(&mut buf) {
                        Ok(0) => return Heard::Closed,
                        Ok(n) => framer.push(&buf[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            return Heard::Nothing
                        }
                        Err(_) => return Heard::Closed,
                    }
                }
            }
        }
    }

    /// The next final response (provisional ones skipped), or what ended the wait.
    fn final_response(&mut self, wait: Duration) -> Heard {
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Heard::Message(m) if m.status().is_some_and(|c| c >= 200) => {
                    return Heard::Message(m)
                }
                Heard::Message(_) => {}
                other => return other,
            }
        }
    }
}

fn token() -> String {
    format!("{:x}", rand::random::<u64>())
}

/// An in-dialog or ACK request built from a response: its From, To and Call-ID, CSeq `seq`.
fn request_from(resp: &SipMessage, link: &Link, method: &str, uri: &str, seq: u32) -> Vec<u8> {
    let mut req = SipMessage::request(Method::parse(method), uri);
    req.push(
        "Via",
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{};rport",
            link.transport(),
            link.local(),
            token()
        ),
    );
    req.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        if let Some(v) = resp.header(name) {
            req.push(name, v);
        }
    }
    req.push("CSeq", format!("{seq} {method}"));
    req.to_bytes()
}

/// The ACK for a non-2xx final response to an INVITE: the request's Via (so its branch and
/// sent-by), the response's To.
fn ack_for_failure(resp: &SipMessage) -> Vec<u8> {
    let mut ack = SipMessage::request(Method::Ack, "sip:support@127.0.0.1");
    for h in resp.headers.iter().filter(|h| h.name == "Via") {
        ack.push("Via", h.value.clone());
    }
    ack.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        if let Some(v) = resp.header(name) {
            ack.push(name, v);
        }
    }
    let seq = resp.cseq().map_or(1, |c| c.seq);
    ack.push("CSeq", format!("{seq} ACK"));
    ack.to_bytes()
}

/// Acknowledges a 2xx to an INVITE and hangs up; the BYE must be answered 200.
fn ack_and_bye(link: &mut Link, resp: &SipMessage) -> Result<(), String> {
    let contact = resp
        .header("Contact")
        .map(voicebot_gateway::sip::message::uri_of)
        .ok_or("200 OK without Contact")?
        .to_string();
    let seq = resp.cseq().map_or(1, |c| c.seq);
    let ack = request_from(resp, link, "ACK", &contact, seq);
    let bye = request_from(resp, link, "BYE", &contact, seq + 1);
    link.send(&ack);
    link.send(&bye);
    loop {
        match link.final_response(ANSWER_WAIT) {
            Heard::Message(m) if m.cseq().is_some_and(|c| c.method == Method::Bye) => {
                return match m.status() {
                    Some(200) => Ok(()),
                    other => Err(format!("BYE answered {other:?}")),
                };
            }
            // A late retransmission of the INVITE's 200 (the ACK crossed it).
            Heard::Message(_) => {}
            other => return Err(format!("no answer to the BYE: {other:?}")),
        }
    }
}

/// The Call-IDs of the requests in `bytes` as the transport frames them (None where a request
/// has none or does not parse).
fn call_ids(bytes: &[u8], link: &Link) -> Vec<Option<String>> {
    let first = || {
        vec![SipMessage::parse(bytes)
            .ok()
            .and_then(|m| m.call_id().map(str::to_string))]
    };
    match link {
        Link::Udp(..) => first(),
        Link::Tcp(..) => {
            let mut framer = StreamFramer::new();
            framer.push(bytes);
            let mut ids = Vec::new();
            while let Ok(Some(m)) = framer.next_message() {
                ids.push(m.call_id().map(str::to_string));
            }
            if ids.is_empty() {
                first()
            } else {
                ids
            }
        }
    }
}

/// Sends one message and checks its answers against `expected` (`a|b`, `a+b`; see
/// expected.txt).
fn exchange(link: &mut Link, bytes: &[u8], expected: &str) -> Result<(), String> {
    let ids = call_ids(bytes, link);
    link.send(bytes);
    for (i, outcome) in expected.split('+').enumerate() {
        let allowed: Vec<&str> = outcome.split('|').collect();
        let wants_answer = allowed.iter().any(|a| *a != "none" && *a != "closed");
        let wait = if wants_answer {
            ANSWER_WAIT
        } else {
            SILENCE_WAIT
        };
        let got = match link.final_response(wait) {
            Heard::Nothing => "none".to_string(),
            Heard::Closed => "closed".to_string(),
            Heard::Message(m) => {
                let Some(code) = m.status() else {
                    return Err(format!("a request instead of an answer: {:?}", m.start));
                };
                if let (Some(Some(id)), Some(got)) = (ids.get(i), m.call_id()) {
                    if id != got {
                        return Err(format!("answer for Call-ID {got:?}, expected {id:?}"));
                    }
                }
                let invite = m.cseq().is_some_and(|c| c.method == Method::Invite);
                if invite && (200..300).contains(&code) {
                    ack_and_bye(link, &m)?;
                    "call".to_string()
                } else {
                    if invite {
                        link.send(&ack_for_failure(&m));
                    }
                    check_headers(&m)?;
                    code.to_string()
                }
            }
        };
        if !allowed.contains(&got.as_str()) {
            return Err(format!("request {}: got {got}, expected {outcome}", i + 1));
        }
    }
    Ok(())
}

/// What particular refusals must carry.
fn check_headers(m: &SipMessage) -> Result<(), String> {
    let need = |name: &str, part: &str| {
        m.header(name)
            .filter(|v| v.contains(part))
            .map(|_| ())
            .ok_or(format!(
                "{} without {name}: {part}",
                m.status().unwrap_or(0)
            ))
    };
    match m.status() {
        Some(420) => need("Unsupported", "nothingSupportsThisEither"),
        Some(415) => need("Accept", "application/sdp"),
        Some(405) => need("Allow", "INVITE"),
        _ => Ok(()),
    }
}

/// The gateway answers an OPTIONS on a fresh link of the same kind.
fn options_answered(tcp: bool, port: u16) -> Result<(), String> {
    let mut link = if tcp {
        Link::tcp(port)
    } else {
        Link::udp(port)
    };
    let options = format!(
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{} {};branch=z9hG4bK{}\r\n\
         From: <sip:probe@127.0.0.1>;tag={}\r\n\
         To: <sip:support@127.0.0.1>\r\n\
         Call-ID: alive-{}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n",
        link.transport(),
        link.local(),
        token(),
        token(),
        token()
    );
    link.send(options.as_bytes());
    match link.final_response(ANSWER_WAIT) {
        Heard::Message(m) if m.status() == Some(200) => Ok(()),
        other => Err(format!("OPTIONS not answered 200: {other:?}")),
    }
}

/// Every message over one transport against one gateway; then a real call.
fn torture(tcp: bool, rtp_ports: &str, media_port: u16) {
    let mut gw = Gateway::start(rtp_ports, &[]);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut seen = HashSet::new();
    for case in cases() {
        let mut link = if tcp {
            Link::tcp(gw.port)
        } else {
            Link::udp(gw.port)
        };
        let expected = if tcp { &case.tcp } else { &case.udp };
        let bytes = distinct_transaction(&case.name, message(&case.name), &mut seen);
        if let Err(e) = exchange(&mut link, &bytes, expected) {
            failures.push(format!("{}: {e}", case.name));
        }
        drop(link);
        assert!(gw.alive(), "the gateway died after {}", case.name);
        if let Err(e) = options_answered(tcp, gw.port) {
            failures.push(format!("after {}: {e}", case.name));
        }
    }
    let transport = if tcp { "TCP" } else { "UDP" };
    println!(
        "RFC 4475 over {transport}: 49 messages in {:.1} s, {} failures",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "over {transport}:\n{}",
        failures.join("\n")
    );
    // And a real call still goes through.
    if have_sipp() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("caller.raw"), vec![0xFFu8; 8000]).unwrap();
        let (code, screen) = sipp_call(dir.path(), gw.port, tcp, media_port);
        assert_eq!(code, 0, "a call after the torture messages:\n{screen}");
        assert!(gw.alive());
    }
}

fn sipp_call(dir: &Path, port: u16, tcp: bool, media_port: u16) -> (i32, String) {
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg("sipp")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .arg("-sf")
        .arg(root().join("tests/sipp/uac_speech.xml"))
        .args(["-s", "support", "-i", "127.0.0.1", "-p", "0"])
        .args(["-mp", &media_port.to_string(), "-m", "1", "-nostdin"])
        .args(["-timeout", "50", "-timeout_error", "-d", "2000"]);
    if tcp {
        cmd.args(["-t", "t1"]);
    }
    let out = cmd.output().expect("run sipp");
    let screen =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), screen)
}

#[test]
fn rfc4475_messages_over_udp() {
    torture(false, "43000-43099", 43500);
}

#[test]
fn rfc4475_messages_over_tcp() {
    torture(true, "43100-43199", 43600);
}

#[test]
fn two_clients_reusing_a_branch_each_get_their_own_answer() {
    let gw = Gateway::start("43200-43299", &[]);
    // Two clients on two loopback addresses, one branch.
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.2:0").unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], gw.port));
    let branch = format!("z9hG4bKshared{}", token());
    let ask = |sock: &UdpSocket, call_id: &str| {
        let options = format!(
            "OPTIONS sip:support@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {};branch={branch}\r\n\
             From: <sip:probe@127.0.0.1>;tag={call_id}\r\n\
             To: <sip:support@127.0.0.1>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n",
            sock.local_addr().unwrap()
        );
        sock.send_to(options.as_bytes(), to).unwrap();
    };
    let answer = |sock: &UdpSocket, wait: Duration| {
        sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 65_536];
        let n = sock.recv(&mut buf).ok()?;
        SipMessage::parse(&buf[..n]).ok()
    };
    let (id_a, id_b) = (format!("a-{}", token()), format!("b-{}", token()));
    ask(&a, &id_a);
    let got_a = answer(&a, ANSWER_WAIT).expect("client A answered");
    assert_eq!(
        (got_a.status(), got_a.call_id()),
        (Some(200), Some(id_a.as_str()))
    );
    ask(&b, &id_b);
    let got_b = answer(&b, ANSWER_WAIT).expect("client B answered, not swallowed");
    assert_eq!(
        (got_b.status(), got_b.call_id()),
        (Some(200), Some(id_b.as_str()))
    );
    // And A was not sent B's answer (or its own again).
    assert!(
        answer(&a, SILENCE_WAIT).is_none(),
        "client A got a second answer"
    );
}

//! Resource limits of a running `voicebot serve` on loopback (issue 20): the TCP framer's
//! Content-Length overflow leaks no file descriptor, pipelined requests are all answered, the
//! per-source cap on SIP/TCP connections holds without hurting other sources, and slowloris
//! clients on SIP/TCP and HTTP are closed on the header deadline while others are served.
//! Only loopback addresses (127.0.0.0/8); no peer program is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::admin::HttpGateway;

/// Seconds a SIP/TCP or HTTP message may take to complete (the test's configuration).
const HEADER_TIMEOUT_S: u64 = 2;
/// SIP/TCP connections per source address (the test's configuration).
const PER_SOURCE: usize = 8;

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        "[sip]\ntcp_header_timeout_s = {HEADER_TIMEOUT_S}\n\
         tcp_max_connections_per_source = {PER_SOURCE}\n\
         [http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"agent-e2e-token\"\n\
         feedback_database = \"{}\"\nadmin_token_env = \"\"\nadmin_token_file = \"{}\"\n\
         history_database = \"\"\nheader_timeout_s = {HEADER_TIMEOUT_S}\n",
        dir.join("feedback.sqlite3").display(),
        dir.join("admin-token").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

fn options(n: usize, content_length: &str) -> String {
    format!(
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-limits-{n}\r\n\
         From: <sip:probe@127.0.0.1>;tag=1\r\n\
         To: <sip:support@127.0.0.1>\r\n\
         Call-ID: limits-{n}\r\n\
         CSeq: {} OPTIONS\r\n\
         Content-Length: {content_length}\r\n\r\n",
        n + 1
    )
}

/// A TCP connection to `to` from the loopback address `from` (any port).
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{from}:0").parse().expect("address"))?;
        socket.connect(to).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Reads until `n` SIP responses starting `SIP/2.0 200` came, the peer closed, or `wait`.
fn read_200s(stream: &mut TcpStream, n: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut text = String::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let count = text.matches("SIP/2.0 200").count();
        let left = deadline.saturating_duration_since(Instant::now());
        if count >= n || left.is_zero() {
            return count;
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return text.matches("SIP/2.0 200").count(),
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return text.matches("SIP/2.0 200").count(),
        }
    }
}

/// An OPTIONS over a new TCP connection from `from` is answered 200.
fn tcp_options_answered(from: &str, port: u16) -> bool {
    let Ok(mut s) = connect_from(from, SocketAddr::from(([127, 0, 0, 1], port))) else {
        return false;
    };
    s.write_all(options(0, "0").as_bytes()).is_ok()
        && read_200s(&mut s, 1, Duration::from_secs(5)) == 1
}

/// Whether the peer closes `stream` within `wait` (reading and discarding what comes).
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// Waits up to `wait` for the gateway's open descriptors to come back to `base` or fewer.
fn fds_back_to(pid: u32, base: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    loop {
        let now = open_fds(pid);
        if now <= base || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn limits_hold_and_the_gateway_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let mut gw = HttpGateway::start(&config, "46700-46799", 3, Duration::from_secs(120));
    let port = gw.sip_port;
    let sip = SocketAddr::from(([127, 0, 0, 1], port));
    let http: SocketAddr = gw
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("http addr");
    assert!(tcp_options_answered("127.0.0.1", port));
    let base = fds_back_to(gw.pid(), 0, Duration::from_millis(300));

    // 1. The 213-byte message whose Content-Length overflowed the framer, on 200 short
    //    connections: each is closed by the gateway, and no descriptor stays behind.
    let overflow = options(1, "18446744073709551615");
    assert!(overflow.len() > 200, "{}", overflow.len());
    for _ in 0..200 {
        let mut s = TcpStream::connect(sip).expect("connect");
        s.write_all(overflow.as_bytes()).expect("send");
        assert!(closed_within(&mut s, Duration::from_secs(5)), "not closed");
    }
    let after = fds_back_to(gw.pid(), base, Duration::from_secs(10));
    assert!(after <= base, "{after} descriptors open, {base} before");
    assert!(gw.alive());
    assert!(tcp_options_answered("127.0.0.1", port));

    // 2. 200 requests pipelined in one write on one connection: 200 answers.
    let mut s = TcpStream::connect(sip).expect("connect");
    let batch: String = (0..200).map(|n| options(1000 + n, "0")).collect();
    s.write_all(batch.as_bytes()).expect("send");
    assert_eq!(read_200s(&mut s, 200, Duration::from_secs(20)), 200);
    drop(s);

    // 3. The per-source cap: the source's next connection is closed at once; another source
    //    is served meanwhile; the slots come back when the connections close.
    let held: Vec<TcpStream> = (0..PER_SOURCE)
        .map(|_| connect_from("127.0.0.2", sip).expect("connect"))
        .collect();
    let mut over = connect_from("127.0.0.2", sip).expect("connect");
    let _ = over.write_all(options(2, "0").as_bytes());
    assert!(
        closed_within(&mut over, Duration::from_secs(5)),
        "over the cap yet open"
    );
    assert!(tcp_options_answered("127.0.0.3", port));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp_options_answered("127.0.0.2", port) {
        assert!(Instant::now() < deadline, "slots not given back");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 4. Slowloris on SIP/TCP and HTTP: a byte every 300 ms keeps the connection from idling
    //    but never completes the headers; both are closed on the header deadline, and other
    //    clients are answered meanwhile.
    let mut sip_slow = TcpStream::connect(sip).expect("connect");
    let mut http_slow = TcpStream::connect(http).expect("connect");
    sip_slow
        .write_all(b"OPTIONS sip:support@127.0.0.1 SIP/2.0\r\n")
        .expect("send");
    http_slow
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    let started = Instant::now();
    let (mut sip_open, mut http_open) = (true, true);
    let mut closed_after = Vec::new();
    while (sip_open || http_open) && started.elapsed() < Duration::from_secs(HEADER_TIMEOUT_S * 5) {
        for (open, stream) in [
            (&mut sip_open, &mut sip_slow),
            (&mut http_open, &mut http_slow),
        ] {
            if *open
                && (stream.write_all(b"X").is_err()
                    || closed_within(stream, Duration::from_millis(300)))
            {
                *open = false;
                closed_after.push(started.elapsed());
            }
        }
        assert!(tcp_options_answered("127.0.0.4", port));
    }
    assert!(
        !sip_open && !http_open,
        "slowloris connections still open after {:?}",
        started.elapsed()
    );
    for t in &closed_after {
        assert!(
            *t >= Duration::from_millis(HEADER_TIMEOUT_S * 1000 - 500),
            "closed early: {t:?}"
        );
    }
    let healthz = common::admin::http_client(Duration::from_secs(5))
        .get(format!("{}/healthz", gw.base))
        .call()
        .expect("GET /healthz");
    assert_eq!(healthz.status(), 200);
    assert!(gw.alive());
}

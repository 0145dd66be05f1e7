//! SIP over TLS end to end, on loopback, with a CA made inside each test (rcgen; no key is
//! ever written outside the test's temporary directory).
//!
//! * A full SIP user agent (PJSIP through pjsua2, `tests/pjsua/caller.py`) calls the
//!   gateway's TLS listener with a `sips:` URI, verifying the gateway's certificate and
//!   presenting its own (mutual TLS); the call is answered and the bot speaks.
//! * With `client_ca_file` set, a client without a certificate is refused in the handshake
//!   (logged, counted in `voicebot_tls_handshake_failures_total`), one with a certificate
//!   from the CA gets its OPTIONS answered.
//! * An agent leg to a `sips:` extension whose certificate the configured CA did not sign is
//!   refused in the handshake and fails at once (503); the next extension, with a good
//!   certificate, gets the INVITE over TLS with a TLS Via and a `sips:` Contact.
//! * Call setup time (INVITE sent to the call confirmed) over TLS against UDP, several calls
//!   each, printed.
//!
//! SIPp from Debian is built without TLS (`sipp -t l1` says so), hence pjsua2 and rustls
//! peers. Without pjsua2 the pjsua tests say so and pass, unless VOICEBOT_REQUIRE_PEERS is set.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::pki::{make_ca, make_cert, write};
use common::{call_over, pjsua_python, Gateway};

/// One gateway with calls at a time: each loads whisper, and pjsua2 calls on 2 cores starve
/// each other's media.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The test's certificates, as PEM files in its temporary directory.
struct Pki {
    ca: PathBuf,
    /// The gateway's certificate for 127.0.0.1, signed by `ca`.
    cert: PathBuf,
    key: PathBuf,
    /// A caller's client certificate, signed by `ca`.
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A certificate for 127.0.0.1 from another CA (an impostor agent).
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let (ca_pem, ca) = make_ca("voicebot test CA");
    let (cert, key) = make_cert(&["127.0.0.1", "localhost"], "gateway", &ca);
    let (client_cert, client_key) = make_cert(&["caller.test"], "caller", &ca);
    let (_, rogue_ca) = make_ca("someone else's CA");
    let (rogue_cert, rogue_key) = make_cert(&["127.0.0.1"], "impostor", &rogue_ca);
    Pki {
        ca: write(dir, "ca.pem", &ca_pem),
        cert: write(dir, "gateway.pem", &cert),
        key: write(dir, "gateway.key", &key),
        client_cert: write(dir, "caller.pem", &client_cert),
        client_key: write(dir, "caller.key", &client_key),
        rogue_cert: write(dir, "rogue.pem", &rogue_cert),
        rogue_key: write(dir, "rogue.key", &rogue_key),
    }
}

/// A configuration with the TLS listener on (port 0) and `extra` TOML after `[sip.tls]`'s
/// keys (more `[sip.tls]` keys first, then other sections).
fn config(dir: &Path, pki: &Pki, extra: &str) -> PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        "[sip.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}\n",
        pki.cert.display(),
        pki.key.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The TLS port from the ready line (`tls=127.0.0.1:PORT`).
fn tls_port(gw: &Gateway) -> u16 {
    gw.ready
        .split("tls=127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no tls= in {:?}", gw.ready))
}

fn certs(file: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(file)
        .expect("PEM")
        .collect::<Result<_, _>>()
        .expect("certificates")
}

fn key(file: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(file).expect("key")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client trusting the test CA, with the caller's certificate or none.
fn client(pki: &Pki, with_cert: bool) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&pki.ca) {
        roots.add(c).expect("CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_cert {
        builder
            .with_client_auth_cert(certs(&pki.client_cert), key(&pki.client_key))
            .expect("client cert")
    } else {
        builder.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sends an OPTIONS over TLS to `port`; the response's status line, or why there is none.
fn options_over_tls(port: u16, connector: tokio_rustls::TlsConnector) -> Result<String, String> {
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let options = format!(
            "OPTIONS sip:support@127.0.0.1:{port};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch=z9hG4bKtls1\r\nMax-Forwards: 70\r\n\
             From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:support@127.0.0.1>\r\n\
             Call-ID: tls-probe-{}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            local.port()
        );
        // With TLS 1.3 the client's handshake ends before the server has judged its
        // certificate: a refusal shows on the write or the read.
        tls.write_all(options.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut buf = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) => Err("closed without a response".into()),
            Ok(Ok(n)) => Ok(String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Err(_) => Err("no response in 10 s".into()),
        }
    })
}

/// Calls over TLS with a `sips:` URI from pjsua2, which verifies the gateway's certificate
/// against the test CA and presents its own (the gateway requires one). The bot answers and
/// speaks; the call is recorded.
#[test]
fn pjsua_calls_over_mutual_tls_and_the_bot_answers() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let cfg = config(
        dir.path(),
        &pki,
        &format!("client_ca_file = \"{}\"", pki.ca.display()),
    );
    let mut gw = Gateway::start_with(Some(&cfg), "46100-46199", &[]);
    let port = tls_port(&gw);
    let record = dir.path().join("bot.wav");
    let (ca, cert, key) = (
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let summary = call_over(
        &python,
        port,
        "tls",
        &record,
        &["pause:0.2".to_string()],
        &[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--sips",
        ],
    );
    assert_eq!(summary["connected"], true, "{summary}");
    assert!(summary.get("error").is_none(), "{summary}");
    assert_eq!(
        summary["turns"][0]["bot_spoke_before"], true,
        "the bot's greeting reached the caller over RTP: {summary}"
    );
    let records = gw.records(1, Duration::from_secs(40));
    assert_eq!(records.len(), 1, "one call record");
    let r = &records[0];
    assert!(
        r["bot_speech"].as_array().is_some_and(|s| !s.is_empty()),
        "the bot spoke: {r}"
    );
    assert!(gw.alive());
}

/// `client_ca_file` set: a TLS client without a certificate is refused in the handshake, the
/// refusal is counted in /metrics; one with a certificate from the CA is answered.
#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let d = dir.path();
    let cfg = config(
        d,
        &pki,
        &format!(
            "client_ca_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             agent_token = \"agent-tls-test\"\nfeedback_database = \"{}\"\n\
             admin_token_file = \"{}\"\n",
            pki.ca.display(),
            d.join("feedback.sqlite3").display(),
            d.join("admin-token").display()
        ),
    );
    let gw = Gateway::start_with(Some(&cfg), "46200-46299", &[]);
    let port = tls_port(&gw);

    let refused = options_over_tls(port, client(&pki, false));
    assert!(
        refused.is_err(),
        "a client without a certificate got an answer: {refused:?}"
    );
    let answered = options_over_tls(port, client(&pki, true)).expect("answered with a cert");
    assert_eq!(answered, "SIP/2.0 200 OK");

    let http = common::webhook::http_base(&gw);
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = ureq::get(&format!("{http}/metrics"))
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .expect("metrics text");
        if text.contains("voicebot_tls_handshake_failures_total{direction=\"inbound\"} 1")
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("voicebot_tls_handshake_failures_total{direction=\"inbound\"} 1"),
        "{metrics}"
    );
}

/// What an in-test TLS agent saw: the handshake's error, or the INVITE it got.
#[derive(Debug)]
enum AgentSaw {
    HandshakeFailed(String),
    Invite(String),
}

/// A TLS agent on a free port with `cert`/`key`: reports the handshake's outcome and the first
/// request, answers it 486 Busy Here and reads on until the gateway closes or 20 s pass.
fn tls_agent(cert: &Path, key: &Path) -> (u16, mpsc::Receiver<AgentSaw>) {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs(cert), self::key(key))
        .expect("agent certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let accepted = tokio::time::timeout(Duration::from_secs(120), listener.accept()).await;
            let Ok(Ok((tcp, _))) = accepted else {
                return;
            };
            let mut tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    let _ = tx.send(AgentSaw::HandshakeFailed(e.to_string()));
                    return;
                }
            };
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8192];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut answered = false;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if !answered && text.contains("\r\n\r\n") {
                    answered = true;
                    let _ = tx.send(AgentSaw::Invite(text.clone()));
                    let _ = tls.write_all(busy(&text).as_bytes()).await;
                    let _ = tls.flush().await;
                }
            }
        });
    });
    (port, rx)
}

/// A 486 Busy Here for the request `text`.
fn busy(text: &str) -> String {
    let header = |name: &str| {
        text.lines()
            .find(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
            })
            .map(|l| l.to_string())
            .unwrap_or_default()
    };
    format!(
        "SIP/2.0 486 Busy Here\r\n{}\r\n{}\r\n{};tag=agent486\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
        header("Via"),
        header("From"),
        header("To"),
        header("Call-ID"),
        header("CSeq")
    )
}

/// The caller presses 0; the first agent (`sips:`) shows a certificate from another CA, so the
/// gateway refuses the handshake and goes on at once; the second gets the INVITE over TLS.
#[test]
fn agent_legs_over_tls_verify_the_agent_certificate() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (rogue_port, rogue) = tls_agent(&pki.rogue_cert, &pki.rogue_key);
    let (good_port, good) = tls_agent(&pki.cert, &pki.key);
    let cfg = config(
        dir.path(),
        &pki,
        &format!(
            "ca_file = \"{}\"\n[handover.transfer]\nring_timeout_s = 10\n\
             [handover.transfer.teams]\n\
             default = [\"sips:1001@127.0.0.1:{rogue_port}\", \"sip:1002@127.0.0.1:{good_port};transport=tls\"]\n",
            pki.ca.display()
        ),
    );
    let gw = Gateway::start_with(Some(&cfg), "46300-46399", &[]);
    let port = gw.port;
    let record = dir.path().join("bot.wav");
    let caller = std::thread::spawn(move || {
        call_over(
            &python,
            port,
            "udp",
            &record,
            &["dtmf:0".to_string(), "pause:3".to_string()],
            &[],
        )
    });
    let refused = rogue
        .recv_timeout(Duration::from_secs(90))
        .expect("the gateway connected to the first agent");
    let AgentSaw::HandshakeFailed(why) = &refused else {
        panic!("the impostor's certificate was accepted: {refused:?}");
    };
    println!("the impostor agent's handshake ended: {why}");
    let invite = match good.recv_timeout(Duration::from_secs(30)) {
        Ok(AgentSaw::Invite(text)) => text,
        other => panic!("the second agent got no INVITE over TLS: {other:?}"),
    };
    assert!(
        invite.starts_with(&format!(
            "INVITE sip:1002@127.0.0.1:{good_port};transport=tls SIP/2.0\r\n"
        )),
        "{invite}"
    );
    assert!(
        invite.contains("\r\nVia: SIP/2.0/TLS 127.0.0.1:"),
        "{invite}"
    );
    let tls = tls_port(&gw);
    assert!(
        invite.contains(&format!(
            "\r\nContact: <sip:voicebot@127.0.0.1:{tls};transport=tls>"
        )),
        "{invite}"
    );
    let summary = caller.join().expect("caller thread");
    assert_eq!(summary["connected"], true, "{summary}");
    let records = gw.records(1, Duration::from_secs(40));
    let t = &records[0]["transfer"];
    let attempts = t["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{t}");
    assert_eq!(attempts[0]["outcome"], "refused 503", "{t}");
    assert_eq!(attempts[1]["outcome"], "refused 486", "{t}");
}

/// Setup time of calls over TLS (a fresh connection and handshake each) against UDP, from
/// pjsua2's INVITE to the call's confirmation, five calls each; the figures are printed.
#[test]
fn tls_call_setup_time_against_udp() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let cfg = config(dir.path(), &pki, "");
    let gw = Gateway::start_with(Some(&cfg), "46400-46499", &[]);
    let tls = tls_port(&gw);
    let ca = pki.ca.display().to_string();
    let mut times: Vec<(&str, Vec<f64>)> = Vec::new();
    for (transport, port, extra) in [
        ("udp", gw.port, vec![]),
        ("tls", tls, vec!["--tls-ca", ca.as_str()]),
    ] {
        let mut ms = Vec::new();
        for i in 0..5 {
            let record = dir.path().join(format!("{transport}-{i}.wav"));
            let mut args = extra.clone();
            args.push("--connect-only");
            let summary = call_over(&python, port, transport, &record, &[], &args);
            assert_eq!(summary["connected"], true, "{transport}: {summary}");
            ms.push(summary["setup_ms"].as_f64().expect("setup_ms"));
        }
        times.push((transport, ms));
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (transport, ms) in &times {
        println!(
            "call setup over {transport}: median {:.1} ms, min {:.1}, max {:.1} ({ms:?})",
            median(ms),
            ms.iter().copied().fold(f64::MAX, f64::min),
            ms.iter().copied().fold(0.0, f64::max)
        );
    }
    let tls_median = median(&times[1].1);
    assert!(
        tls_median < 2000.0,
        "TLS call setup takes {tls_median} ms (median)"
    );
}

//! What a newcomer sees on the first `voicebot serve`: the banner names the SIP addresses to
//! call (the shipped flow's numbers), the console and agent screen URLs, and where the
//! generated tokens are (never the tokens); an HTTP address that is taken stops the start with
//! a message that names it and says how to choose another. The real binary, the shipped flow
//! and models; everything on loopback, with free ports (never the default 8080, which other
//! tests and programs may hold).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{http_client, HttpGateway};

/// A configuration with the HTTP side on a free port and every file it writes in `dir`; the
/// flows are the shipped ones (the embedded defaults' `sip-config/flows`).
fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nagent_token_env = \"\"\ntoken_file = \"{}\"\n\
         admin_token_env = \"\"\nadmin_token_file = \"{}\"\n\
         feedback_database = \"{}\"\nhistory_database = \"{}\"\n\
         [handover.webhook]\ndatabase = \"{}\"\n",
        dir.join("tokens/agent-token").display(),
        dir.join("tokens/admin-token").display(),
        dir.join("feedback.sqlite3").display(),
        dir.join("history.sqlite3").display(),
        dir.join("outbox.sqlite3").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

#[test]
fn the_banner_says_where_to_call_where_to_look_and_where_the_tokens_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let gateway = HttpGateway::start(&config, "47500-47599", 5, Duration::from_secs(120));
    let banner = gateway.banner.join("\n");
    let port = gateway.sip_port;
    let base = &gateway.base;
    // The machine-readable line keeps its format.
    assert!(
        gateway.banner[0].starts_with(&format!("voicebot ready: sip=127.0.0.1:{port} rtp=")),
        "{banner}"
    );
    // The SIP addresses of the shipped default flow, by its numbers.
    assert_eq!(
        gateway.banner[4],
        format!(
            "call the bot (flow support, the default: it also answers numbers no flow claims): \
             sip:support@127.0.0.1:{port}, sip:+18005550100@127.0.0.1:{port}"
        ),
        "{banner}"
    );
    // The console and the agent screen, each with where its token is: the generated files.
    let agent_file = dir.path().join("tokens/agent-token");
    let admin_file = dir.path().join("tokens/admin-token");
    assert_eq!(
        gateway.banner[3],
        format!(
            "admin console: {base}/admin (log in with the admin token from {})",
            admin_file.display()
        ),
        "{banner}"
    );
    assert_eq!(
        gateway.banner[1],
        format!(
            "agent screen: {base}/agent?token=<agent token> (token from {})",
            agent_file.display()
        ),
        "{banner}"
    );
    for file in [&agent_file, &admin_file] {
        let token = std::fs::read_to_string(file).expect("generated token");
        let token = token.trim();
        assert!(token.len() >= 16, "{token}");
        assert!(!banner.contains(token), "a token was printed: {banner}");
    }
    // The URLs printed are the ones that answer.
    let client = http_client(Duration::from_secs(20));
    for page in ["/admin", "/agent"] {
        let answer = client
            .get(format!("{base}{page}"))
            .call()
            .expect("HTTP answer");
        assert_eq!(answer.status(), 200, "GET {page}");
    }
    let unauthorised = client
        .get(format!("{base}/api/flows"))
        .call()
        .expect("HTTP answer");
    assert_eq!(unauthorised.status(), 401, "the admin API needs its token");
}

#[test]
fn a_taken_http_address_stops_the_start_and_says_how_to_choose_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_voicebot"))
        .current_dir(common::root())
        .arg("--config")
        .arg(&config)
        .args([
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--rtp-ports",
            "47600-47699",
        ])
        .args(["--journal", "", "--http", &taken])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start voicebot serve");
    // It loads its models, then fails to bind: wait for the exit, bounded.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("voicebot serve did not stop with its HTTP address taken");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        !stdout.contains("voicebot ready"),
        "it said ready: {stdout}"
    );
    for needed in [taken.as_str(), "[http] listen", "--http ADDR:PORT"] {
        assert!(stderr.contains(needed), "`{needed}` not in: {stderr}");
    }
    // Said once, on one line (not repeated by the error chain).
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"));
    assert!(line.contains(&taken), "{line}");
    assert_eq!(stderr.matches(taken.as_str()).count(), 1, "{stderr}");
    drop(holder);
}

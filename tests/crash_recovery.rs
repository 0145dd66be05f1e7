//! A crash loses no call: a gateway killed with SIGKILL while an escalated call rings an agent
//! is restarted on the same address with the same journal, and closes the call it left open:
//! the ringing agent gets a CANCEL (SIPp agent: CANCEL, 487, our ACK), the caller a BYE (SIPp
//! caller), the webhook a `call_ended` marked interrupted, and the call is in the history and
//! the report directory with `ended_by = "interrupted"`.
//!
//! Without SIPp this test says so and passes, unless VOICEBOT_REQUIRE_PEERS is set.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::webhook::{events, transfer_config, webhook_receiver};
use common::{have_sipp, root, Gateway};

fn sipp(dir: &Path, scenario: &str, args: &[&str]) -> Child {
    Command::new("timeout")
        .arg("150")
        .arg("sipp")
        .current_dir(dir)
        .args(args)
        .arg("-sf")
        .arg(root().join("tests/sipp").join(scenario))
        .args(["-i", "127.0.0.1", "-m", "1", "-nostdin"])
        .args(["-timeout", "140", "-timeout_error", "-trace_msg"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sipp")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("sipp");
    let screen =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), screen)
}

/// Waits until SIPp's message trace in `dir` shows `needle`.
fn wait_for_trace(dir: &Path, needle: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let seen = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("_messages.log"))
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|text| text.contains(needle)));
        if seen {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn kill_9_while_an_agent_rings_then_restart_closes_the_call() {
    if !have_sipp() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, got) = webhook_receiver();
    let agent_port = 45160;
    let cfg = transfer_config(
        dir.path(),
        &[format!("sip:1001@127.0.0.1:{agent_port}")],
        hook_port,
        90,
    );
    let journal = dir.path().join("journal.sqlite3");
    let journal = journal.to_str().unwrap();
    let mut first = Gateway::start("45200-45299", &["--config", &cfg, "--journal", journal]);
    let sip = format!("127.0.0.1:{}", first.port);

    let agent_dir = tempfile::tempdir().unwrap();
    let agent_port_arg = agent_port.to_string();
    let agent = sipp(
        agent_dir.path(),
        "uas_ring_only.xml",
        &["-p", &agent_port_arg, "-mp", "45360"],
    );
    let caller_dir = tempfile::tempdir().unwrap();
    std::fs::write(caller_dir.path().join("caller.raw"), vec![0xD5u8; 8000]).unwrap();
    let caller = sipp(
        caller_dir.path(),
        "uac_dtmf_info.xml",
        &[&sip, "-s", "support", "-p", "0", "-mp", "45380"],
    );
    // DTMF 0 escalates; the agent's phone rings.
    assert!(
        wait_for_trace(
            agent_dir.path(),
            "SIP/2.0 180 Ringing",
            Duration::from_secs(90)
        ),
        "the agent's phone never rang"
    );
    let escalated = events(&got, "escalated", Duration::from_secs(10));
    assert_eq!(escalated.len(), 1);
    let call_id = escalated[0].json()["call_id"]
        .as_str()
        .expect("call_id")
        .to_string();

    first.kill();
    let second = Gateway::start(
        "45200-45299",
        &["--config", &cfg, "--journal", journal, "--sip", &sip],
    );

    let (agent_code, agent_screen) = finish(agent);
    assert_eq!(
        agent_code, 0,
        "the ringing agent was not cancelled:\n{agent_screen}"
    );
    let (caller_code, caller_screen) = finish(caller);
    assert_eq!(caller_code, 0, "the caller got no BYE:\n{caller_screen}");

    let ended = events(&got, "call_ended", Duration::from_secs(20));
    assert_eq!(ended.len(), 1, "one call_ended");
    let data = &ended[0].json()["data"];
    assert_eq!(data["ended_by"], "interrupted", "{data}");
    assert_eq!(data["outcome"], "interrupted", "{data}");
    assert_eq!(ended[0].json()["call_id"], call_id.as_str());

    let records = second.records(1, Duration::from_secs(10));
    assert_eq!(records.len(), 1, "the interrupted call's record");
    assert_eq!(records[0]["ended_by"], "interrupted");
    assert_eq!(records[0]["call_id"], call_id.as_str());
    assert!(records[0]["escalation"].is_object(), "{:#}", records[0]);
    drop(second);
    let history = voicebot_gateway::history::CallHistory::open(&dir.path().join("history.sqlite3"))
        .expect("history");
    let stored = history.get(&call_id).unwrap().expect("in the history");
    assert_eq!(stored["ended_by"], "interrupted");
    assert_eq!(stored["outcome"], "escalated");
}

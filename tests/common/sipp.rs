//! SIPp peers of the transfer tests: an agent (UAS) listening for the gateway's INVITE and a
//! caller (UAC) calling the gateway, each bounded by `timeout` so a stuck peer cannot hang the
//! suite.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts a SIPp agent (UAS) on `port` with `scenario` (a path), `extra` arguments after ours.
pub fn agent(dir: &Path, port: u16, media_port: u16, scenario: &Path, extra: &[&str]) -> Child {
    Command::new("timeout")
        .arg("120")
        .arg("sipp")
        .current_dir(dir)
        .arg("-sf")
        .arg(scenario)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &media_port.to_string(), "-m", "1", "-nostdin"])
        .args(["-timeout", "100", "-timeout_error"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sipp agent")
}

/// Runs a SIPp caller with `scenario` (a path) against the gateway's "support" number to
/// completion: its exit code and its screen.
pub fn caller(dir: &Path, gw_port: u16, scenario: &Path, media_port: u16) -> (i32, String) {
    let out = Command::new("timeout")
        .arg("150")
        .arg("sipp")
        .arg(format!("127.0.0.1:{gw_port}"))
        .current_dir(dir)
        .arg("-sf")
        .arg(scenario)
        .args(["-s", "support", "-i", "127.0.0.1", "-p", "0"])
        .args(["-mp", &media_port.to_string(), "-m", "1", "-nostdin"])
        .args(["-timeout", "140", "-timeout_error"])
        .output()
        .expect("run sipp caller");
    (out.status.code().unwrap_or(-1), screen(&out))
}

/// Waits for a SIPp peer started with [`agent`]: its exit code and its screen.
pub fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("sipp agent");
    (out.status.code().unwrap_or(-1), screen(&out))
}

fn screen(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

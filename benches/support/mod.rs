//! What the load benchmarks share: a child process that dies with the benchmark, numeric
//! settings from the environment, and a process's memory and CPU time from `/proc`.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout};
use std::sync::mpsc;
use std::time::Duration;

/// A child process, killed and reaped when dropped (a benchmark that panics leaves no gateway
/// or SIP peer behind).
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway's first stdout line (`voicebot ready: ...`) within `wait`; the rest of its
/// stdout is drained by a thread, so the gateway never writes into a full pipe. Err: it exited
/// first (with what it printed, if anything) or took longer.
#[allow(dead_code)] // not every bench starts a gateway
pub fn ready_line(stdout: ChildStdout, wait: Duration) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap_or(0);
        let _ = tx.send((n, line));
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    match rx.recv_timeout(wait) {
        Ok((n, line)) if n > 0 && line.starts_with("voicebot ready:") => Ok(line),
        Ok((_, line)) => Err(format!("the gateway exited or did not get ready: {line:?}")),
        Err(_) => Err(format!(
            "the gateway did not get ready within {} s",
            wait.as_secs()
        )),
    }
}

/// The SIP port of the ready line (`sip=127.0.0.1:PORT`).
#[allow(dead_code)] // not every bench starts a gateway
pub fn sip_port(ready: &str) -> Option<u16> {
    ready
        .split("sip=127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
}

/// A whole number from the environment variable `name`, else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Resident memory (kB) and CPU time (clock ticks, all threads) of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss, utime + stime))
}

/// SuccessfulCall(C) and FailedCall(C) from the last line of SIPp's statistics file.
#[allow(dead_code)] // only the SIPp benches read it
pub fn read_stats(path: &std::path::Path) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (0, 0);
    };
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return (0, 0);
    };
    let Some(last) = lines.rfind(|l| !l.trim().is_empty()) else {
        return (0, 0);
    };
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

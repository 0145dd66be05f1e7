//! A cluster on loopback for the end-to-end tests: Kamailio started from the shipped
//! `sip-config/kamailio/dispatcher.cfg` with a dispatcher list of the test's gateways, gateways
//! on fixed SIP ports (so one can be stopped and started again at the address Kamailio knows),
//! and SIPp load through the proxy with its results counted. Every wait has a deadline.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{free_udp_port, root, sip_port, spawn_serve};

use super::kamailio::KamailioProcess;

/// Kamailio running the shipped dispatcher configuration on 127.0.0.1:`port`, killed on drop;
/// its log lines are collected (the configuration logs DISPATCH, FAILOVER, GWDOWN, GWUP).
pub struct Kamailio {
    process: KamailioProcess,
    pub port: u16,
}

impl Kamailio {
    /// Starts Kamailio in front of the gateways on 127.0.0.1:`gateways` and waits (15 s at
    /// most) until it answers OPTIONS.
    pub fn start(gateways: &[u16]) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_udp_port();
        let list = dir.path().join("dispatcher.list");
        let lines: String = gateways
            .iter()
            .map(|p| format!("1 sip:127.0.0.1:{p} 0 0\n"))
            .collect();
        std::fs::write(&list, lines).expect("write dispatcher list");
        let process = KamailioProcess::spawn(
            dir,
            [
                "-f".into(),
                root()
                    .join("sip-config/kamailio/dispatcher.cfg")
                    .into_os_string(),
                "-A".into(),
                format!("LISTEN=udp:127.0.0.1:{port}").into(),
                "-A".into(),
                format!("DISPATCHER_LIST=\"{}\"", list.display()).into(),
                "-A".into(),
                "WITH_DEBUG_LOG".into(),
            ],
        );
        process.wait_ready(port);
        Kamailio { process, port }
    }

    /// The log lines containing `containing`.
    pub fn lines(&self, containing: &str) -> Vec<String> {
        self.process.lines(containing)
    }

    /// How many log lines there are (a mark for [`Kamailio::wait_line_after`]).
    pub fn mark(&self) -> usize {
        self.process.mark()
    }

    /// Waits (at most `wait`) for a log line after `mark` containing `containing`.
    pub fn wait_line_after(&self, mark: usize, containing: &str, wait: Duration) -> bool {
        self.process
            .wait_line_after(mark, containing, wait)
            .is_some()
    }

    /// Waits until Kamailio has taken the gateway on `port` out of its set (GWDOWN after
    /// `mark`).
    pub fn wait_inactive(&self, mark: usize, port: u16, wait: Duration) -> bool {
        self.wait_line_after(mark, &format!("GWDOWN sip:127.0.0.1:{port}"), wait)
    }

    /// Waits until Kamailio's probes found the gateway on `port` alive again (GWUP after
    /// `mark`).
    pub fn wait_active(&self, mark: usize, port: u16, wait: Duration) -> bool {
        self.wait_line_after(mark, &format!("GWUP sip:127.0.0.1:{port}"), wait)
    }
}

/// Sends OPTIONS to 127.0.0.1:`port` until a final answer comes (at most `wait`): its status.
pub fn options_answer(port: u16, wait: Duration) -> Option<u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let local = sock.local_addr().expect("addr");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    let mut n = 0u32;
    while Instant::now() < deadline {
        n += 1;
        let options = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKopt{n}x{}\r\n\
             From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: opt-{n}-{}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            std::process::id(),
            local.port(),
        );
        let _ = sock.send_to(options.as_bytes(), ("127.0.0.1", port));
        if let Ok(len) = sock.recv(&mut buf) {
            if let Some(code) = status_of(&buf[..len]).filter(|c| *c >= 200) {
                return Some(code);
            }
        }
    }
    None
}

/// The status code of a SIP response.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// The value of the first `name` header (any case, full form) in a SIP message.
pub fn sip_header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A `voicebot serve` on a fixed SIP port (127.0.0.1:`port`), so it can be stopped and started
/// again where Kamailio's list names it; killed on drop. Its call records go to `records`,
/// which outlives restarts.
pub struct ClusterGateway {
    child: Option<Child>,
    pub port: u16,
    pub rtp_ports: String,
    pub extra: Vec<String>,
    pub records: PathBuf,
    /// The ready line of the latest start.
    pub ready: String,
}

impl ClusterGateway {
    /// Starts a gateway on a free SIP port with RTP ports `rtp_ports` and `extra` arguments
    /// (`--config FILE`, `--http ADDR`, ...), its records under `records`.
    pub fn start(rtp_ports: &str, records: &Path, extra: &[&str]) -> ClusterGateway {
        let mut gw = ClusterGateway {
            child: None,
            port: free_udp_port(),
            rtp_ports: rtp_ports.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            records: records.to_path_buf(),
            ready: String::new(),
        };
        std::fs::create_dir_all(records).expect("records dir");
        gw.restart();
        gw
    }

    /// Starts it (again) on the same port; waits (90 s at most) for its ready line.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "gateway {} still running", self.port);
        let sip = format!("127.0.0.1:{}", self.port);
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--sip".as_ref(),
            sip.as_ref(),
            "--report-dir".as_ref(),
            self.records.as_os_str(),
        ];
        args.extend(self.extra.iter().map(std::ffi::OsStr::new));
        let (child, banner) = spawn_serve(None, &self.rtp_ports, &args, 1, Duration::from_secs(90));
        assert_eq!(sip_port(&banner[0]), self.port, "{}", banner[0]);
        self.ready = banner[0].trim().to_string();
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (the first starts the drain; a second hangs up at once).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success());
        }
    }

    /// Kills it at once (SIGKILL, as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most `wait`) for the process to exit: its status, or None if it still runs.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The call records it wrote (all its runs).
    pub fn records(&self) -> Vec<serde_json::Value> {
        read_records(&self.records)
    }
}

impl Drop for ClusterGateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The JSON call records in `dir`.
pub fn read_records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

/// A SIPp caller load against 127.0.0.1:`port`: `scenario` under tests/sipp (`uac_speech.xml`,
/// or `uac_speech_proxied.xml` through a proxy: caller.raw in `dir` streamed over RTP, then
/// `hold_ms` on the line, then BYE), `rate` calls per second, at most
/// `limit` at once, `calls` in all. Killed when it outlives its deadline or is dropped.
pub struct SippLoad {
    child: Child,
    deadline: Instant,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What a SIPp run ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SippCounts {
    pub successful: u64,
    pub failed: u64,
    /// SIPp's exit code (0: every call succeeded; None: killed at its deadline).
    pub code: Option<i32>,
}

impl SippLoad {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: &Path,
        scenario: &str,
        port: u16,
        media_port: u16,
        rate: u32,
        limit: u32,
        calls: u32,
        hold_ms: u32,
        wait: Duration,
    ) -> SippLoad {
        let mut child = Command::new("sipp")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir)
            .arg("-sf")
            .arg(root().join("tests/sipp").join(scenario))
            .args(["-s", "support", "-i", "127.0.0.1", "-p", "0"])
            .args(["-mp", &media_port.to_string()])
            .args(["-r", &rate.to_string(), "-l", &limit.to_string()])
            .args(["-m", &calls.to_string(), "-d", &hold_ms.to_string()])
            .args(["-nostdin", "-timeout_error", "-max_non_invite_retrans", "4"])
            .args(["-timeout", &wait.as_secs().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sipp");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for stream in [stdout, stderr] {
            let sink = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut s = sink.lock().expect("sipp output");
                    s.push_str(&line);
                    s.push('\n');
                }
            }));
        }
        SippLoad {
            child,
            deadline: Instant::now() + wait + Duration::from_secs(10),
            output,
            readers,
        }
    }

    /// Asks SIPp to place no more calls and to end when its calls in progress have (SIGUSR1).
    pub fn stop_placing(&self) {
        let _ = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status();
    }

    /// Waits for SIPp to finish (killing it at its deadline): the counts from its final
    /// screen, and its output.
    pub fn finish(mut self) -> (SippCounts, String) {
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            if Instant::now() > self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let screen = self.output.lock().expect("sipp output").clone();
        let counts = SippCounts {
            successful: last_count(&screen, "Successful call"),
            failed: last_count(&screen, "Failed call"),
            code,
        };
        (counts, screen)
    }
}

impl Drop for SippLoad {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The cumulative count on SIPp's last `label` line (`  Failed call | 0 | 3`).
fn last_count(screen: &str, label: &str) -> u64 {
    screen
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.rsplit('|').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

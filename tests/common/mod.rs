//! Shared by the end-to-end tests with real SIP peers: a `voicebot serve` process on loopback
//! and the peer-presence rule (a missing peer skips the test unless VOICEBOT_REQUIRE_PEERS is
//! set, as the test script does, so CI fails loudly instead), PJSIP's pjsua2 caller, speech made
//! with espeak-ng, recordings transcribed with the project's ASR, and a webhook receiver.

#![allow(dead_code)]

pub mod admin;
pub mod browser;
pub mod cluster;
pub mod kamailio;
pub mod pki;
pub mod sipp;
pub mod venv;
pub mod webhook;
pub mod webrtc_client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use voicebot_gateway::audio::resample::resample_all;
use voicebot_gateway::audio::wav::read_wav;
use voicebot_gateway::audio::SPEECH_RATE;
use voicebot_gateway::config::GatewayConfig;
use voicebot_gateway::speech::asr;
use voicebot_gateway::speech::vad::{Endpointer, VadEvent};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a peer is usable; when not, says so, and fails when peers are required.
pub fn peer_available(name: &str, available: bool, install: &str) -> bool {
    if !available {
        assert!(
            std::env::var_os("VOICEBOT_REQUIRE_PEERS").is_none(),
            "{name} is required (VOICEBOT_REQUIRE_PEERS is set) but not installed ({install})"
        );
        eprintln!("skipped: {name} not installed ({install})");
    }
    available
}

/// Starts `voicebot [--config CONFIG] serve --sip 127.0.0.1:0 --rtp-ports PORTS ARGS...` in the
/// repository and waits (at most `wait`) for the first `lines` lines of its banner; the child
/// is killed when they do not come. Its stdout is read to the end, so the gateway never writes
/// into a closed pipe.
pub fn spawn_serve(
    config: Option<&Path>,
    rtp_ports: &str,
    args: &[&std::ffi::OsStr],
    lines: usize,
    wait: Duration,
) -> (Child, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_voicebot"));
    command.current_dir(root());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(["serve", "--rtp-ports", rtp_ports]);
    if !args.iter().any(|a| *a == "--sip") {
        command.args(["--sip", "127.0.0.1:0"]);
    }
    // Gateways run in parallel from one working directory: none shares the default journal
    // (tests of crash recovery pass their own).
    if !args.iter().any(|a| *a == "--journal") {
        command.args(["--journal", ""]);
    }
    // Nor the default HTTP address (127.0.0.1:8080): a gateway whose configuration leaves
    // `[http] listen` at its default runs without HTTP; a test that wants the HTTP side names
    // a free port (`listen = "127.0.0.1:0"`) or passes `--http`.
    // The configuration may come as `config` or as a `--config PATH` among the arguments.
    let named = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(Path::new);
    if !args.iter().any(|a| *a == "--http") && http_left_at_default(config.or(named)) {
        command.args(["--http", ""]);
    }
    let mut child = command
        .args(args)
        .env("RUST_LOG", "voicebot_gateway=info,warn")
        .env_remove("VOICEBOT_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(gateway_log())
        .spawn()
        .expect("start voicebot serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(line.trim_end().to_string());
            line.clear();
        }
    });
    let deadline = std::time::Instant::now() + wait;
    let mut banner = Vec::new();
    while banner.len() < lines {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => banner.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("voicebot serve: no banner within {wait:?}; got {banner:?}");
            }
        }
    }
    (child, banner)
}

/// Whether `config` (the embedded defaults when None) leaves `[http] listen` at its default.
fn http_left_at_default(config: Option<&Path>) -> bool {
    let default = voicebot_gateway::config::http::DEFAULT_LISTEN;
    match config {
        None => true,
        // A configuration that does not load stops the gateway anyway, which says why.
        Some(path) => GatewayConfig::load(path).is_ok_and(|c| c.http.listen == default),
    }
}

/// Where a gateway's log goes: a new file under `$VOICEBOT_TEST_LOG_DIR` when that is set (to
/// see why an end-to-end test failed), else nowhere.
fn gateway_log() -> Stdio {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("VOICEBOT_TEST_LOG_DIR") else {
        return Stdio::null();
    };
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = Path::new(&dir).join(format!("gateway-{}-{n}.log", std::process::id()));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::File::create(&path)) {
        Ok(f) => Stdio::from(f),
        Err(e) => panic!("cannot write the gateway log {}: {e}", path.display()),
    }
}

/// The port after `sip=127.0.0.1:` in the banner's ready line.
pub fn sip_port(ready: &str) -> u16 {
    ready
        .split("sip=127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no SIP port in ready line {ready:?}"))
}

/// A running `voicebot serve`, killed on drop.
pub struct Gateway {
    child: Child,
    pub port: u16,
    /// The ready line it printed (`voicebot ready: sip=... rtp=... [http=...]`).
    pub ready: String,
    records: tempfile::TempDir,
}

impl Gateway {
    pub fn start(rtp_ports: &str, extra: &[&str]) -> Gateway {
        Self::start_with(None, rtp_ports, extra)
    }

    /// [`Gateway::start`] with a configuration file (the embedded defaults for what it leaves
    /// out).
    pub fn start_with(config: Option<&Path>, rtp_ports: &str, extra: &[&str]) -> Gateway {
        let records = tempfile::tempdir().expect("temp dir");
        let mut args = vec![
            std::ffi::OsStr::new("--report-dir"),
            records.path().as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let (child, banner) = spawn_serve(config, rtp_ports, &args, 1, Duration::from_secs(90));
        Gateway {
            child,
            port: sip_port(&banner[0]),
            ready: banner[0].trim().to_string(),
            records,
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the gateway at once (SIGKILL, as a crash would end it) and waits for it to go.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The call records written so far, waiting up to `wait` for at least `n`.
    pub fn records(&self, n: usize, wait: Duration) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let found: Vec<serde_json::Value> = std::fs::read_dir(self.records.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect();
            if found.len() >= n || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free UDP port on loopback (bound, then released for the peer that uses it).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether SIPp (Debian `sip-tester`) is usable (see [`peer_available`]).
pub fn have_sipp() -> bool {
    let ok = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    peer_available("sipp", ok, "apt-get install sip-tester")
}

/// Writes `caller.raw` in `dir`, headerless 8 kHz mu-law for SIPp's rtp_stream: `lead_s` of
/// silence, `text` spoken by espeak-ng, `tail_s` of silence.
pub fn spoken_ulaw(dir: &std::path::Path, text: &str, lead_s: u32, tail_s: u32) -> PathBuf {
    let wav = dir.join("speech.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng");
    assert!(status.success());
    let raw = dir.join("caller.raw");
    let status = Command::new("sox")
        .arg(&wav)
        .args(["-r", "8000", "-c", "1", "-t", "raw", "-e", "mu-law"])
        .arg(&raw)
        .args(["pad", &lead_s.to_string(), &tail_s.to_string()])
        .status()
        .expect("sox");
    assert!(status.success());
    raw
}

/// The Python interpreter with pjsua2 (PJSIP's binding), or None (the test is skipped, or
/// fails where peers are required).
pub fn pjsua_python() -> Option<PathBuf> {
    let python = venv::pjsua_interpreter();
    peer_available("pjsua2", python.is_some(), "scripts/deps.sh makes its venv")
        .then_some(python)
        .flatten()
}

/// `text` spoken by espeak-ng as a 16 kHz 16-bit mono WAV with a little silence around it.
pub fn spoken_wav(dir: &Path, name: &str, text: &str) -> PathBuf {
    let raw = dir.join(format!("{name}-espeak.wav"));
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "145", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng");
    assert!(status.success());
    let wav = dir.join(format!("{name}.wav"));
    let status = Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .args(["pad", "0.2", "0.6"])
        .status()
        .expect("sox");
    assert!(status.success());
    wav
}

/// `text` spoken by the gateway's neural voice (not the recogniser under test), as a 16 kHz
/// WAV with the same pauses as [`spoken_wav`]: for turns where espeak-ng's robotic digits are
/// beyond the recogniser (Moonshine hears its "five, seven" as "time, heaven"; human callers
/// are measured by `voicebot bench-asr`).
pub fn natural_wav(dir: &Path, name: &str, text: &str) -> PathBuf {
    use voicebot_gateway::speech::tts::SpeechSynthesizer;
    let config = GatewayConfig::embedded().expect("config");
    let voice = voicebot_gateway::speech::voice::Voice::load(&config.tts);
    assert_eq!(
        voice.engine(),
        "neural",
        "the neural voice is missing: python3 models/provision.py"
    );
    let speech = voice.synthesize(text).expect("speech");
    let mut samples =
        resample_all(&speech.audio.samples, speech.audio.rate, SPEECH_RATE).expect("resample");
    let pad = |ms: usize| vec![0.0f32; SPEECH_RATE as usize * ms / 1000];
    let mut padded = pad(200);
    padded.append(&mut samples);
    padded.extend(pad(600));
    let wav = dir.join(format!("{name}.wav"));
    voicebot_gateway::audio::wav::write_wav(
        &wav,
        &voicebot_gateway::audio::wav::MonoAudio {
            samples: padded,
            rate: SPEECH_RATE,
        },
    )
    .expect("write wav");
    wav
}

/// Runs the pjsua2 caller (tests/pjsua/caller.py) over `transport` with `extra` arguments;
/// returns its JSON summary.
pub fn call_over(
    python: &Path,
    port: u16,
    transport: &str,
    record: &Path,
    turns: &[String],
    extra: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new("timeout");
    cmd.arg("150")
        .arg(python)
        .arg(root().join("tests/pjsua/caller.py"))
        .args(["--port", &port.to_string(), "--timeout", "120"])
        .args(["--transport", transport])
        .arg("--record")
        .arg(record)
        .args(extra);
    for t in turns {
        cmd.args(["--turn", t]);
    }
    let out = cmd.output().expect("run the pjsua2 caller");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no summary from the caller; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("caller summary is JSON")
}

/// Everything said on a recording, transcribed utterance by utterance, in lower case.
pub fn transcribe_recording(path: &Path) -> String {
    let wav = read_wav(path).expect("recording");
    let audio = if wav.audio.rate == SPEECH_RATE {
        wav.audio.samples
    } else {
        resample_all(&wav.audio.samples, wav.audio.rate, SPEECH_RATE).expect("resample")
    };
    let config = GatewayConfig::embedded().expect("config");
    let asr = asr::load(&config.asr).expect("speech model (models/provision.py)");
    let mut endpointer = Endpointer::new(config.vad.clone());
    let mut events = Vec::new();
    endpointer.push(&audio, &mut events);
    endpointer.finish(&mut events);
    let mut text = String::new();
    for event in events {
        if let VadEvent::Utterance(u) = event {
            let t = asr.transcribe(&u.samples).expect("transcribe");
            text.push_str(&t.text);
            text.push(' ');
        }
    }
    text.to_lowercase()
}

/// Stops a program started in a process group of its own (`CommandExt::process_group(0)`),
/// such as Kamailio, whose worker processes outlive a SIGKILL of its main process: SIGTERM
/// first (Kamailio then stops its workers), up to 5 s, then SIGKILL to the whole group, so no
/// process of it outlives the test.
pub fn stop_process_group(child: &mut Child) {
    let Ok(pgid) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    // SAFETY: kill(2) with a pid we started; no memory is touched.
    unsafe { libc::kill(pgid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above, for the group it leads.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// Whether baresip (Debian `baresip`) runs and has `modules` (file names under
/// `/usr/lib/baresip/modules`), see [`peer_available`].
pub fn have_baresip(modules: &[&str]) -> bool {
    let ok = modules
        .iter()
        .all(|m| Path::new("/usr/lib/baresip/modules").join(m).exists())
        && Command::new("baresip")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
    peer_available("baresip", ok, "apt-get install baresip")
}

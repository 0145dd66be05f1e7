//! Browser calls against SIP calls, in one run against one gateway: how long a call takes to
//! set up, and how long a caller waits from the end of what they said to the first sound of
//! the bot's answer, over WebRTC and over SIP, on the same utterances.
//!
//! Run: `cargo bench --bench webrtc`. It needs pjsua2's Python venv, as the pjsua tests do
//! (`scripts/deps.sh`, or `VOICEBOT_PJSUA_PYTHON`), and the `voicebot` binary this bench
//! builds; either missing, it fails (exit status 2) saying which. It starts `voicebot serve`
//! on loopback with the default flow, the admin API and browser calls on (`[webrtc]` is on by
//! default), and uses our own browser (tests/common/webrtc_client.rs: str0m with full ICE,
//! DTLS-SRTP, Opus over real UDP on loopback) for the WebRTC side and pjsua2 for the SIP side.
//!
//! 1. Call setup, WEBRTC_SETUP_CALLS calls each (default 10), one at a time, the transports
//!    alternating: over WebRTC, from the offer's POST to the 201 with the answer (the edge has
//!    placed its SIP call with the core by then) and to ICE + DTLS connected at the client
//!    (`Event::Connected`: SRTP keys in place, media can flow), then DELETE; over SIP,
//!    `tests/pjsua/caller.py --connect-only`'s `setup_ms`, from sending the INVITE to the
//!    call's confirmation (200 OK received, ACK sent), a new pjsua2 process per call (its
//!    start-up is not counted).
//! 2. Voice-to-voice, WEBRTC_ROUNDS rounds (default 2), the transports alternating within
//!    each round so both see the same load: one call per transport per round, saying every
//!    utterance of turn_latency's list once, in the list's order (benches/support/speech.rs:
//!    the gateway's own neural voice, 8 kHz telephone band, the same WAV files for both). The
//!    SIP caller is `tests/pjsua/load_caller.py --calls 1 --in-order` (PCMU); the WebRTC
//!    caller sends the same 8 kHz samples resampled to 16 kHz, Opus-coded. Both wait for the
//!    greeting to end (1 s of quiet), then per turn: say the utterance, wait for the reply and
//!    for 1 s of quiet after it, think 0.3-0.9 s, next. A reply not started WEBRTC_DEADLINE_S
//!    (default 5) after the end of speech loses the turn; a reply that starts before the
//!    caller has finished (the bot took a pause inside the utterance for its end) is "talked
//!    over" and not measured. No line noise on either side.
//! 3. Optionally (WEBRTC_CONCURRENT=N, 2 to 4; default off), N callers at once on each
//!    transport, one transport after the other: one load_caller.py with --calls N, and N
//!    WebRTC calls in threads, started a second apart; each caller says every utterance once.
//!
//! How each side measures the gap (end of the caller's last voiced sample, peak -40 dBFS, to
//! the first received sample at or above -40 dBFS):
//! - SIP (load_caller.py's doc): one pjsua2 conference-bridge clock for what is sent and what
//!   is heard, exact to the sample. The received side is the output of pjsua's own jitter
//!   buffer, as a phone would play it.
//! - WebRTC: the client timestamps each 20 ms frame when it sends it and when a frame
//!   arrives (decoded at once, no jitter buffer). The end of speech is the send time of the
//!   frame holding the last voiced sample plus that sample's place in the frame; the reply's
//!   start is the arrival of the first frame with an audible sample plus that sample's place
//!   in the frame. Good to about a millisecond, plus the client thread's scheduling.
//!
//! What that means for the comparison: the WebRTC figure has no caller-side jitter buffer in
//! it (a browser's NetEq adds some tens of ms before playout, pjsua's buffer is in the SIP
//! figure), so on equal footing WebRTC is that much slower than printed. Both include the
//! codec's delay (Opus about 6.5 ms each way plus the edge's resampling; PCMU none). The
//! WebRTC path has a hop the SIP path lacks: the edge decodes Opus and forwards the audio to
//! the core over loopback RTP, and back.
//!
//! Settings by environment: WEBRTC_SETUP_CALLS, WEBRTC_ROUNDS, WEBRTC_DEADLINE_S as above;
//! WEBRTC_JSON: write the figures there as JSON too; WEBRTC_KEEP: keep the work files
//! (utterances, callers' results, gateway log) in this directory.
//! The machine's load average is printed at the start and at the end: the figures move with
//! it (the gateway's recognition and synthesis share the CPU with whatever else runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/speech.rs"]
mod speech;
mod support;
#[path = "../tests/common/venv.rs"]
mod venv;
// The test client is shared with tests/webrtc_whip.rs; the bench uses a part of it.
#[allow(dead_code)]
#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

use speech::{
    db_to_amplitude, make_utterance, percentile, voiced_span, write_wav, Api, RATE, UTTERANCES,
    VOICED_DBFS,
};
use support::{env_u64, proc_usage, ready_line, Kill};
use webrtc_client::WebRtcCall;

const ADMIN_TOKEN: &str = "webrtc-bench-admin-token-0123456789";
/// The client's frame: 20 ms at 16 kHz.
const FRAME: usize = 320;
const WIDE: u32 = 16_000;
/// Quiet that ends the bot's turn (greeting or reply), as load_caller.py's --quiet.
const QUIET: Duration = Duration::from_secs(1);
/// Think time after a reply: MIN_THINK plus up to THINK_JITTER (both callers).
const MIN_THINK_S: f64 = 0.3;
const THINK_JITTER_S: f64 = 0.6;

fn fail(what: &str) -> ! {
    eprintln!("webrtc bench: {what}");
    std::process::exit(2);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs `cmd` to its end or `limit`, killed then; its stdout.
fn run_bounded(mut cmd: Command, limit: Duration, log: &Path) -> Option<String> {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let err = std::fs::File::create(log).expect("log file");
    let mut child = Kill(
        cmd.stdout(out.reopen().expect("reopen"))
            .stderr(err)
            .spawn()
            .expect("start a caller"),
    );
    let deadline = Instant::now() + limit;
    loop {
        match child.0.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                eprintln!("webrtc bench: {cmd:?} overran {limit:?}; killed (log {log:?})");
                return None;
            }
        }
    }
    std::fs::read_to_string(out.path()).ok()
}

/// The last JSON object line of a caller's output.
fn last_json(text: &str) -> Option<Value> {
    text.lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0.0f32, |m, s| m.max(s.abs()))
}

/// The first sample at or above `level` in the frames, placed in time: its frame's arrival
/// plus its index in the frame.
fn first_audible(frames: &[(Instant, Vec<f32>)], level: f32) -> Option<Instant> {
    frames.iter().find_map(|(t, f)| {
        let i = f.iter().position(|s| s.abs() >= level)?;
        Some(*t + Duration::from_secs_f64(i as f64 / WIDE as f64))
    })
}

/// Waits until nothing audible has arrived for QUIET after `since` (at least one audible frame
/// having arrived after it, unless `need_sound` is false); the end of the last audible frame.
fn wait_quiet(
    call: &WebRtcCall,
    since: Instant,
    level: f32,
    need_sound: bool,
    within: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let frames = call.frames_since(since);
        let last = frames
            .iter()
            .rev()
            .find(|(_, f)| peak(f) >= level)
            .map(|(t, _)| *t);
        let quiet_from = match last {
            Some(t) => Some(t),
            None if !need_sound => Some(since),
            None => None,
        };
        if let Some(q) = quiet_from {
            if q.elapsed() >= QUIET {
                return Some(q);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// One utterance as both callers say it.
struct Utterance {
    name: String,
    wav: PathBuf,
    /// The same samples at 16 kHz for the WebRTC client.
    wide: Vec<f32>,
    /// Index of the last voiced sample in `wide` (peak at or above VOICED_DBFS).
    last_voiced: usize,
    /// Index of the first voiced sample in `wide`.
    first_voiced: usize,
    /// The last frame whose RMS is above the client's 0.01 (its `last_voiced_sent`).
    last_loud_frame: usize,
}

/// One measured turn.
#[derive(Clone)]
struct Turn {
    utterance: String,
    gap_ms: Option<f64>,
    lost: bool,
    talked_over: bool,
}

#[derive(Default)]
struct Transport {
    turns: Vec<Turn>,
    calls_failed: usize,
    /// The gateway's CPU time during this transport's calls, and their wall time (s).
    gateway_cpu_s: f64,
    wall_s: f64,
}

impl Transport {
    /// The gateway's CPU in % of one core while this transport's calls ran.
    fn cpu_percent(&self) -> f64 {
        100.0 * self.gateway_cpu_s / self.wall_s
    }

    fn gaps(&self) -> Vec<f64> {
        let mut g: Vec<f64> = self.turns.iter().filter_map(|t| t.gap_ms).collect();
        g.sort_by(f64::total_cmp);
        g
    }
}

fn stats(sorted: &[f64]) -> Value {
    let r = |x: f64| {
        if x.is_finite() {
            json!((x * 10.0).round() / 10.0)
        } else {
            Value::Null
        }
    };
    json!({
        "n": sorted.len(),
        "p50_ms": r(percentile(sorted, 50.0)),
        "p95_ms": r(percentile(sorted, 95.0)),
        "max_ms": r(sorted.last().copied().unwrap_or(f64::NAN)),
    })
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// One WebRTC call saying every utterance once, in order.
fn webrtc_call(
    base: &str,
    utterances: &[Utterance],
    deadline: Duration,
    seed: u64,
    out: &mut Transport,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let level = db_to_amplitude(VOICED_DBFS);
    let call = match WebRtcCall::start(base, ADMIN_TOKEN, "support") {
        Ok(c) => c,
        Err(p) => {
            eprintln!(
                "webrtc bench: the offer was refused: {} {}",
                p.status, p.body
            );
            out.calls_failed += 1;
            return;
        }
    };
    let Some(connected) = call.wait_connected(Duration::from_secs(10)) else {
        eprintln!("webrtc bench: a WebRTC call did not connect within 10 s");
        out.calls_failed += 1;
        return;
    };
    // The greeting: heard, then quiet (a call with no greeting goes on after 40 s).
    if wait_quiet(&call, connected, level, true, Duration::from_secs(40)).is_none() {
        eprintln!("webrtc bench: no greeting heard (or it did not end); going on");
    }
    for u in utterances {
        let think = MIN_THINK_S + rng.random::<f64>() * THINK_JITTER_S;
        std::thread::sleep(Duration::from_secs_f64(think));
        if call.closed() {
            eprintln!("webrtc bench: the gateway ended a WebRTC call");
            out.calls_failed += 1;
            break;
        }
        let asked = Instant::now();
        call.say(&u.wide);
        let said_within = Duration::from_secs_f64(u.wide.len() as f64 / WIDE as f64 + 10.0);
        let mut turn = Turn {
            utterance: u.name.clone(),
            gap_ms: None,
            lost: false,
            talked_over: false,
        };
        let (Some(_), Some(loud)) = (call.wait_said(said_within), call.last_voiced_sent()) else {
            eprintln!("webrtc bench: {} was not sent in time", u.name);
            out.calls_failed += 1;
            break;
        };
        if loud < asked {
            eprintln!("webrtc bench: {}: no loud frame sent", u.name);
            continue;
        }
        // The last voiced sample's time from the last loud frame's send time.
        let frame_of_voice = u.last_voiced / FRAME;
        let end = loud
            + Duration::from_secs_f64(
                (frame_of_voice as f64 - u.last_loud_frame as f64) * 0.020
                    + (u.last_voiced % FRAME) as f64 / WIDE as f64,
            );
        let voice_start = loud
            - Duration::from_secs_f64(
                (u.last_loud_frame as f64 - (u.first_voiced / FRAME) as f64) * 0.020,
            );
        // Anything audible between the first voiced frame and the end: the bot talked over.
        let early: Vec<_> = call
            .frames_since(voice_start)
            .into_iter()
            .filter(|(t, _)| *t <= end)
            .collect();
        turn.talked_over = first_audible(&early, level).is_some();
        let onset = {
            let until = Instant::now().max(end) + deadline;
            loop {
                let after = call.frames_since(end);
                if let Some(o) = first_audible(&after, level).filter(|o| *o <= end + deadline) {
                    break Some(o);
                }
                if Instant::now() > until {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        match onset {
            Some(o) if !turn.talked_over => turn.gap_ms = Some(ms(o.duration_since(end))),
            Some(_) => {}
            None => turn.lost = !turn.talked_over,
        }
        out.turns.push(turn);
        // The reply to its end (or, lost, the line quiet).
        if wait_quiet(&call, end, level, false, Duration::from_secs(40)).is_none() {
            eprintln!(
                "webrtc bench: the reply to {} did not end within 40 s",
                u.name
            );
        }
    }
    call.hangup();
}

/// What the SIP caller needs.
struct SipSide<'a> {
    python: &'a Path,
    root: &'a Path,
    port: u16,
}

/// `calls` SIP calls at once (one load_caller.py), each saying every utterance once, in order.
fn sip_call(
    side: &SipSide,
    calls: usize,
    utterances: &[Utterance],
    deadline: Duration,
    seed: u64,
    log: &Path,
    out: &mut Transport,
) {
    let mut cmd = Command::new(side.python);
    cmd.arg(side.root.join("tests/pjsua/load_caller.py"))
        .args(["--port", &side.port.to_string()])
        .args(["--calls", &calls.to_string(), "--in-order"])
        .args(["--stagger", if calls > 1 { "4" } else { "0" }])
        .args(["--turns", &utterances.len().to_string()])
        .args(["--deadline", &deadline.as_secs_f64().to_string()])
        .args(["--talk-share", "1"])
        .args(["--min-think", &MIN_THINK_S.to_string()])
        .args(["--think-jitter", &THINK_JITTER_S.to_string()])
        .args(["--rtp-port", "41000"])
        .args(["--seed", &seed.to_string()])
        .args(["--timeout", "400"]);
    for u in utterances {
        cmd.arg("--utterance").arg(&u.wav);
    }
    let Some(result) = run_bounded(cmd, Duration::from_secs(430), log)
        .as_deref()
        .and_then(last_json)
    else {
        eprintln!("webrtc bench: load_caller.py gave no result (see {log:?})");
        out.calls_failed += 1;
        return;
    };
    let calls = result["calls"].as_array().cloned().unwrap_or_default();
    if calls.is_empty() || calls.iter().any(|c| c["connected"] != json!(true)) {
        eprintln!("webrtc bench: a SIP call failed: {result}");
        out.calls_failed += 1;
    }
    for c in &calls {
        for t in c["turns"].as_array().into_iter().flatten() {
            out.turns.push(Turn {
                utterance: t["utterance"].as_str().unwrap_or("?").to_string(),
                gap_ms: t["gap_ms"].as_f64(),
                lost: t["lost"] == json!(true),
                talked_over: t["talked_over"] == json!(true),
            });
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run must not start a load.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(python) = venv::pjsua_interpreter() else {
        fail("pjsua2's Python is missing (scripts/deps.sh, or VOICEBOT_PJSUA_PYTHON)");
    };
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_voicebot"));
    if !binary.is_file() {
        fail(&format!("the gateway binary {binary:?} is missing"));
    }
    let setup_calls = env_u64("WEBRTC_SETUP_CALLS", 10) as usize;
    let rounds = env_u64("WEBRTC_ROUNDS", 2);
    let deadline = Duration::from_secs(env_u64("WEBRTC_DEADLINE_S", 5));
    let load_start = load_average();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let temp = tempfile::tempdir().expect("temp dir");
    let work = match std::env::var_os("WEBRTC_KEEP") {
        Some(dir) => PathBuf::from(dir),
        None => temp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&work).expect("work dir");

    // The gateway: default flow and settings, the admin API and browser calls on.
    let config = work.join("gateway.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"webrtc-bench-agent-token-0123456789\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\nadmin_token_env = \"\"\n\
         feedback_database = \"{}\"\nhistory_database = \"{}\"\n\
         [handover.webhook]\ndatabase = \"{}\"\n",
        work.join("feedback.sqlite3").display(),
        work.join("history.sqlite3").display(),
        work.join("outbox.sqlite3").display(),
    );
    std::fs::write(&config, text).expect("write config");
    let log = std::fs::File::create(work.join("gateway.log")).expect("log file");
    let mut server = Command::new(&binary)
        .current_dir(&root)
        .arg("--config")
        .arg(&config)
        .args([
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--rtp-ports",
            "32000-32999",
        ])
        .args(["--max-calls", "20"])
        .env_remove("VOICEBOT_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {binary:?}: {e}")));
    let pid = server.id();
    let cpu_s = || proc_usage(pid).map_or(0.0, |(_, ticks)| ticks as f64 / 100.0);
    let stdout = server.stdout.take().expect("stdout");
    let _server = Kill(server);
    // The ready line, within two minutes (models load); the rest of the output is drained so
    // the gateway never writes into a full pipe.
    let ready = ready_line(stdout, Duration::from_secs(120))
        .unwrap_or_else(|why| fail(&format!("{why} (log {:?})", work.join("gateway.log"))));
    let (api, sip_port) = Api::from_ready_line(&ready, ADMIN_TOKEN).unwrap_or_else(|e| fail(&e));

    // The utterances, as turn_latency makes them; the WebRTC caller's at 16 kHz.
    let voiced = db_to_amplitude(VOICED_DBFS);
    let mut utterances = Vec::new();
    for (name, parts) in UTTERANCES {
        let audio = make_utterance(&api, parts);
        let wav = work.join(format!("{name}.wav"));
        write_wav(&wav, &audio);
        let wide =
            voicebot_gateway::audio::resample::resample_all(&audio, RATE, WIDE).expect("resample");
        let (first_voiced, last_voiced) = voiced_span(&wide, voiced).expect("voiced");
        let last_loud_frame = wide
            .chunks(FRAME)
            .rposition(|f| webrtc_client::rms(f) > 0.01)
            .expect("a loud frame");
        utterances.push(Utterance {
            name: name.to_string(),
            wav,
            wide,
            last_voiced,
            first_voiced,
            last_loud_frame,
        });
    }
    println!(
        "webrtc bench: gateway {}, {} utterances, load average {load_start}",
        api.base,
        utterances.len()
    );

    // 1. Call setup, the transports alternating.
    let mut answered = Vec::new();
    let mut connected = Vec::new();
    let mut sip_setup = Vec::new();
    let mut setup_failures = (0usize, 0usize);
    for i in 0..setup_calls {
        match WebRtcCall::start(&api.base, ADMIN_TOKEN, "support") {
            Ok(call) => {
                let at_201 = Instant::now();
                match call.wait_connected(Duration::from_secs(10)) {
                    Some(c) => {
                        answered.push(ms(at_201 - call.offered_at));
                        connected.push(ms(c - call.offered_at));
                    }
                    None => setup_failures.0 += 1,
                }
                let status = call.hangup();
                if status != 200 {
                    eprintln!("webrtc bench: DELETE answered {status}");
                }
            }
            Err(p) => {
                eprintln!("webrtc bench: offer refused: {} {}", p.status, p.body);
                setup_failures.0 += 1;
            }
        }
        let mut cmd = Command::new(&python);
        cmd.arg(root.join("tests/pjsua/caller.py"))
            .args(["--port", &sip_port.to_string()])
            .arg("--record")
            .arg(work.join(format!("setup{i}.wav")))
            .args(["--connect-only", "--timeout", "20"]);
        let summary = run_bounded(
            cmd,
            Duration::from_secs(40),
            &work.join(format!("setup{i}.log")),
        )
        .as_deref()
        .and_then(last_json);
        match summary.as_ref().and_then(|s| s["setup_ms"].as_f64()) {
            Some(v) => sip_setup.push(v),
            None => {
                eprintln!("webrtc bench: SIP setup call {i} failed: {summary:?}");
                setup_failures.1 += 1;
            }
        }
    }
    let (answered, connected, sip_setup) = (sorted(answered), sorted(connected), sorted(sip_setup));

    // 2. Voice-to-voice, the transports alternating in each round.
    let mut sip = Transport::default();
    let mut web = Transport::default();
    for r in 0..rounds {
        let (started, cpu0) = (Instant::now(), cpu_s());
        let side = SipSide {
            python: &python,
            root: &root,
            port: sip_port,
        };
        sip_call(
            &side,
            1,
            &utterances,
            deadline,
            r + 1,
            &work.join(format!("sip-round{r}.log")),
            &mut sip,
        );
        let sip_s = started.elapsed().as_secs_f64();
        let (started, cpu1) = (Instant::now(), cpu_s());
        webrtc_call(&api.base, &utterances, deadline, r + 1, &mut web);
        let web_s = started.elapsed().as_secs_f64();
        let cpu2 = cpu_s();
        sip.gateway_cpu_s += cpu1 - cpu0;
        sip.wall_s += sip_s;
        web.gateway_cpu_s += cpu2 - cpu1;
        web.wall_s += web_s;
        println!(
            "  round {}: SIP call {sip_s:.0} s, WebRTC call {web_s:.0} s, load average {}",
            r + 1,
            load_average()
        );
    }
    // Optionally, N callers at once on each transport (one after the other).
    let concurrent = (env_u64("WEBRTC_CONCURRENT", 0) as usize).min(4);
    let mut sip_n = Transport::default();
    let mut web_n = Transport::default();
    if concurrent > 1 {
        let (started, cpu0) = (Instant::now(), cpu_s());
        let side = SipSide {
            python: &python,
            root: &root,
            port: sip_port,
        };
        let log = work.join("sip-concurrent.log");
        sip_call(
            &side,
            concurrent,
            &utterances,
            deadline,
            99,
            &log,
            &mut sip_n,
        );
        sip_n.wall_s = started.elapsed().as_secs_f64();
        sip_n.gateway_cpu_s = cpu_s() - cpu0;
        let (started, cpu0) = (Instant::now(), cpu_s());
        let parts: Vec<Transport> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..concurrent)
                .map(|i| {
                    let (base, utterances) = (api.base.as_str(), &utterances);
                    s.spawn(move || {
                        // Staggered as load_caller.py's callers are (within 4 s).
                        std::thread::sleep(Duration::from_millis(i as u64 * 1000));
                        let mut t = Transport::default();
                        webrtc_call(base, utterances, deadline, 100 + i as u64, &mut t);
                        t
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for p in parts {
            web_n.turns.extend(p.turns);
            web_n.calls_failed += p.calls_failed;
        }
        web_n.wall_s = started.elapsed().as_secs_f64();
        web_n.gateway_cpu_s = cpu_s() - cpu0;
        println!(
            "  {concurrent} at once: SIP {:.0} s, WebRTC {:.0} s, load average {}",
            sip_n.wall_s,
            web_n.wall_s,
            load_average()
        );
    }
    let load_end = load_average();

    // The report.
    println!();
    println!(
        "Call setup, {setup_calls} calls per transport, one at a time (failed: WebRTC {}, SIP {}):",
        setup_failures.0, setup_failures.1
    );
    println!(
        "  {:<40} {:>4} {:>8} {:>8} {:>8}",
        "", "n", "p50 ms", "p95 ms", "max ms"
    );
    let row = |label: &str, v: &[f64]| {
        println!(
            "  {label:<40} {:>4} {:>8.1} {:>8.1} {:>8.1}",
            v.len(),
            percentile(v, 50.0),
            percentile(v, 95.0),
            v.last().copied().unwrap_or(f64::NAN)
        );
    };
    row("WebRTC offer POST -> 201 answer", &answered);
    row("WebRTC offer POST -> ICE+DTLS connected", &connected);
    row("SIP INVITE -> confirmed (pjsua2, UDP)", &sip_setup);
    println!();
    println!(
        "Voice-to-voice at the caller (last voiced sample sent -> first audible sample of the \
         reply), {rounds} round(s) of {} utterances, lost after {} s:",
        utterances.len(),
        deadline.as_secs()
    );
    println!(
        "  {:<24} {:>6} {:>5} {:>5} {:>6} {:>8} {:>8} {:>8} {:>7}",
        "", "turns", "lost", "over", "failed", "p50 ms", "p95 ms", "max ms", "gw CPU"
    );
    let sip_label = format!("SIP, {concurrent} at once");
    let web_label = format!("WebRTC, {concurrent} at once");
    let mut rows = vec![("SIP (pjsua2, PCMU)", &sip), ("WebRTC (str0m, Opus)", &web)];
    if concurrent > 1 {
        rows.push((sip_label.as_str(), &sip_n));
        rows.push((web_label.as_str(), &web_n));
    }
    for (label, t) in rows {
        let g = t.gaps();
        println!(
            "  {label:<24} {:>6} {:>5} {:>5} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>6.0}%",
            t.turns.len(),
            t.turns.iter().filter(|x| x.lost).count(),
            t.turns.iter().filter(|x| x.talked_over).count(),
            t.calls_failed,
            percentile(&g, 50.0),
            percentile(&g, 95.0),
            g.last().copied().unwrap_or(f64::NAN),
            t.cpu_percent()
        );
    }
    println!("  per utterance, p50 ms (SIP / WebRTC):");
    let per = |t: &Transport, name: &str| {
        sorted(
            t.turns
                .iter()
                .filter(|x| x.utterance == name)
                .filter_map(|x| x.gap_ms)
                .collect(),
        )
    };
    for u in &utterances {
        println!(
            "    {:<14} {:>7.0} / {:>7.0}",
            u.name,
            percentile(&per(&sip, &u.name), 50.0),
            percentile(&per(&web, &u.name), 50.0)
        );
    }
    println!(
        "  (WebRTC: at packet arrival, no caller jitter buffer; SIP: after pjsua's jitter \
         buffer; see the bench's doc. gw CPU: the gateway's, edge included, in % of one core \
         while that transport's calls ran; over: the bot spoke before the caller had finished)"
    );
    println!("load average (1, 5, 15 min): at the start {load_start}, at the end {load_end}");

    if let Ok(path) = std::env::var("WEBRTC_JSON") {
        let transport = |t: &Transport| {
            json!({
                "turns": t.turns.len(),
                "lost": t.turns.iter().filter(|x| x.lost).count(),
                "talked_over": t.turns.iter().filter(|x| x.talked_over).count(),
                "calls_failed": t.calls_failed,
                "gap": stats(&t.gaps()),
                "gateway_cpu_percent_of_one_core": (t.cpu_percent() * 10.0).round() / 10.0,
                "turns_detail": t.turns.iter().map(|x| json!({
                    "utterance": x.utterance, "gap_ms": x.gap_ms,
                    "lost": x.lost, "talked_over": x.talked_over,
                })).collect::<Vec<_>>(),
            })
        };
        let doc = json!({
            "benchmark": "webrtc",
            "load_average_start": load_start,
            "load_average_end": load_end,
            "setup": {
                "calls_per_transport": setup_calls,
                "webrtc_offer_to_201": stats(&answered),
                "webrtc_offer_to_connected": stats(&connected),
                "sip_invite_to_confirmed": stats(&sip_setup),
                "failed": {"webrtc": setup_failures.0, "sip": setup_failures.1},
            },
            "voice_to_voice": {
                "rounds": rounds,
                "deadline_s": deadline.as_secs(),
                "sip": transport(&sip),
                "webrtc": transport(&web),
                "concurrent_callers": concurrent,
                "sip_concurrent": (concurrent > 1).then(|| transport(&sip_n)),
                "webrtc_concurrent": (concurrent > 1).then(|| transport(&web_n)),
            },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write WEBRTC_JSON");
        println!("figures written to {path}");
    }
}

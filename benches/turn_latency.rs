//! Voice-to-voice latency, outside in: how long callers wait, at their phone, from the end of
//! what they said to the first sound of the bot's answer, with N callers talking at once.
//!
//! Run: `cargo bench --bench turn_latency` (needs pjsua2's Python venv, as the pjsua tests do:
//! `scripts/deps.sh`, or `VOICEBOT_PJSUA_PYTHON`). It starts `voicebot serve` (the binary this
//! bench builds) on loopback with the default flow and the admin API on, makes the callers'
//! utterances with the gateway's own neural voice (`POST /api/test/say`) through an 8 kHz
//! telephone band, checks once that the default flow answers each of them without handing
//! over or hanging up (`POST /api/test/wav`), then for each N places N calls with
//! `tests/pjsua/load_caller.py` (LAT_PER_PROCESS calls a process, default 4: the most the PyPI
//! pjsua2 wheel allows), each taking LAT_TURNS turns, and
//! measures every turn's gap at the caller (the method is in load_caller.py's doc: one
//! conference-bridge clock for what is sent and what is heard, exact to the sample). Afterwards
//! it reads each call's record from the admin API and splits the gap into stages.
//!
//! Settings by environment:
//! - LAT_CALLERS: the series of N (default 1,4,8,16,24,32,40);
//! - LAT_TURNS: turns per caller (default 6);
//! - LAT_NOISE_DBFS: line noise under the whole call the callers send, RMS dBFS (default -65;
//!   empty: none);
//! - LAT_DEADLINE_S: a reply that has not started this long after the end of speech loses the
//!   turn (default 5);
//! - LAT_JSON: write the figures there as JSON;
//! - LAT_KEEP: keep the work files (utterances, noise, callers' results, gateway log) in this
//!   directory; with LAT_DUMP=1 the callers also write what each call sent and heard there;
//! - LAT_GATEWAY_TOML: extra gateway configuration (TOML text appended to the bench's own,
//!   which sets only `[http]` and `[handover.webhook]`), e.g. `[vad]\nend_silence_ms = 400`.
//!
//! Stages, from the call records (media time of the caller's audio at the gateway):
//! `vad lag` the recogniser's end of speech after the caller's last voiced sample, `endpoint`
//! the silence waited for after it (`decided_at - end`), `process` from that decision to the
//! reply's first audio being ready (the record's `total`: recognition unless it was done early
//! at a pause, intent, synthesis of the first sentence, queueing for the inference pool), with
//! `asr`, `intent` and `tts` as the record gives them, and `playout` from the reply being ready
//! to its first audible sample at the caller (pacing, any silence the voice puts before its
//! first word, network, both jitter buffers). The gateway's clock is placed on the caller's by
//! each call's utterance starts (the VAD start plus its pre-roll), so `vad lag` and `playout`
//! are good to about 30 ms; `vad lag + endpoint + process + playout` is the measured gap
//! exactly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/speech.rs"]
mod speech;
mod support;
#[path = "../tests/common/venv.rs"]
mod venv;

use speech::{
    db_to_amplitude, longest_pause_ms, make_utterance, median, percentile, telephone_band,
    voiced_span, write_wav, Api, PAUSE_MS, RATE, UTTERANCES, VOICED_DBFS,
};
use support::{env_u64, proc_usage, ready_line, Kill};

/// Calls one caller process places at most, unless LAT_PER_PROCESS says otherwise: pjsua caps
/// them at its compile-time PJSUA_MAX_CALLS, which is 4 in the PyPI pjsua2-python wheel the
/// tests use (load_caller.py takes up to 16 with a build that allows it).
const PER_PROCESS: usize = 4;
/// The gateway's VAD pre-roll (`[vad] pre_roll_ms`, default): a turn's `start_ms` is its
/// detected start minus this.
const PRE_ROLL_MS: f64 = 240.0;
const ADMIN_TOKEN: &str = "turn-latency-bench-admin-token";

/// CPU time (clock ticks, 100 a second) of a process, all threads.
fn cpu_ticks(pid: u32) -> Option<u64> {
    proc_usage(pid).map(|(_, ticks)| ticks)
}

/// The Python with pjsua2, as the pjsua tests find it.
fn pjsua_python() -> Option<PathBuf> {
    venv::pjsua_interpreter()
}

/// Ten seconds of white noise in the telephone band at `dbfs` RMS (looped by the callers).
fn make_noise(dbfs: f32, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut noise: Vec<f32> = (0..RATE as usize * 10)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    telephone_band(&mut noise);
    let rms = (noise.iter().map(|s| s * s).sum::<f32>() / noise.len() as f32).sqrt();
    let gain = db_to_amplitude(dbfs) / rms.max(1e-9);
    noise.iter_mut().for_each(|s| *s *= gain);
    noise
}

/// The per-stage values of one measured turn (ms), from its call's record.
#[derive(Default, Clone)]
struct Stages {
    vad_lag: f64,
    endpoint: f64,
    process: f64,
    asr: f64,
    intent: f64,
    tts: f64,
    playout: f64,
}

const STAGE_NAMES: [&str; 7] = [
    "vad lag", "endpoint", "process", "asr", "intent", "tts", "playout",
];

impl Stages {
    fn values(&self) -> [f64; 7] {
        [
            self.vad_lag,
            self.endpoint,
            self.process,
            self.asr,
            self.intent,
            self.tts,
            self.playout,
        ]
    }
}

/// What one N gave.
#[derive(Default)]
struct Level {
    n: usize,
    gaps: Vec<f64>,
    /// The gaps of every turn but each call's first: the first turns come in a burst (all the
    /// calls dial within a few seconds and hear the same greeting), the rest are the steady
    /// state.
    later_gaps: Vec<f64>,
    lost: usize,
    talked_over: usize,
    calls_failed: usize,
    /// Calls refused by admission control (503), not failed: the gateway's clean answer to
    /// more callers than it can serve in time.
    calls_refused: usize,
    calls_ended_by_gateway: usize,
    stages: Vec<Stages>,
    misheard: usize,
    early: usize,
    /// Speech turns in the records that no caller turn matched (a split sentence, noise).
    extra_turns: usize,
    unmatched: usize,
    gateway_cpu: f64,
    gateway_cpu_peak: f64,
    callers_cpu: f64,
    talk_share: Vec<f64>,
    offsets: Vec<f64>,
    wall_s: f64,
}

/// `values` in ascending order.
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

impl Level {
    /// Calls the gateway took (offered less refused).
    fn answered(&self) -> usize {
        self.n.saturating_sub(self.calls_refused)
    }

    fn sorted_gaps(&self) -> Vec<f64> {
        sorted(&self.gaps)
    }

    fn sorted_later_gaps(&self) -> Vec<f64> {
        sorted(&self.later_gaps)
    }

    fn stage_medians(&self) -> Vec<f64> {
        (0..STAGE_NAMES.len())
            .map(|i| {
                median(
                    &self
                        .stages
                        .iter()
                        .map(|s| s.values()[i])
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    }

    fn json(&self) -> Value {
        let g = self.sorted_gaps();
        let stages: serde_json::Map<String, Value> = STAGE_NAMES
            .iter()
            .zip(self.stage_medians())
            .map(|(n, v)| (n.replace(' ', "_") + "_p50_ms", json!(round1(v))))
            .collect();
        json!({
            "callers": self.n,
            "turns_measured": g.len(),
            "lost": self.lost,
            "talked_over": self.talked_over,
            "calls_failed": self.calls_failed,
            "calls_refused": self.calls_refused,
            "calls_answered": self.answered(),
            "calls_ended_by_gateway": self.calls_ended_by_gateway,
            "gap_p50_ms": round1(percentile(&g, 50.0)),
            "gap_p95_ms": round1(percentile(&g, 95.0)),
            "gap_max_ms": round1(g.last().copied().unwrap_or(f64::NAN)),
            "later_turns_gap_p95_ms": round1(percentile(&self.sorted_later_gaps(), 95.0)),
            "gaps_ms": g.iter().map(|x| round1(*x)).collect::<Vec<_>>(),
            "stages": stages,
            "turns_with_stages": self.stages.len(),
            "misheard_turns": self.misheard,
            "early_transcript_turns": self.early,
            "extra_gateway_turns": self.extra_turns,
            "unmatched_turns": self.unmatched,
            "gateway_cpu_percent_of_one_core": round1(self.gateway_cpu * 100.0),
            "gateway_cpu_peak_5s_percent_of_one_core": round1(self.gateway_cpu_peak * 100.0),
            "callers_cpu_percent_of_one_core": round1(self.callers_cpu * 100.0),
            "talk_share_p50": round3(median(&self.talk_share)),
            "clock_offset_p50_ms": round1(median(&self.offsets)),
            "wall_s": round1(self.wall_s),
        })
    }
}

fn round1(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 10.0).round() / 10.0)
    } else {
        Value::Null
    }
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Everything a level's runs share.
struct Setup<'a> {
    python: &'a Path,
    caller: PathBuf,
    sip_port: u16,
    gateway_pid: u32,
    utterances: &'a [PathBuf],
    noise: Option<&'a Path>,
    turns: u64,
    deadline_s: u64,
    work: &'a Path,
    dump: bool,
    per_process: usize,
    api: &'a Api,
}

fn run_level(setup: &Setup, n: usize) -> Level {
    let processes = n.div_ceil(setup.per_process);
    let timeout = 40 + setup.turns * 35;
    let dir = setup.work.join(format!("n{n}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let gateway_before = cpu_ticks(setup.gateway_pid).unwrap_or(0);
    let started = Instant::now();
    let mut children = Vec::new();
    for p in 0..processes {
        // Calls spread evenly over the processes.
        let calls = n / processes + usize::from(p < n % processes);
        let mut cmd = Command::new(setup.python);
        cmd.arg(&setup.caller)
            .args(["--port", &setup.sip_port.to_string()])
            .args(["--calls", &calls.to_string()])
            .args(["--turns", &setup.turns.to_string()])
            .args(["--deadline", &setup.deadline_s.to_string()])
            .args(["--rtp-port", &(40_000 + p * 200).to_string()])
            .args(["--seed", &(n * 100 + p + 1).to_string()])
            .args(["--stagger", "4"])
            .args(["--timeout", &timeout.to_string()]);
        if let Some(noise) = setup.noise {
            cmd.arg("--noise").arg(noise);
        }
        for u in setup.utterances {
            cmd.arg("--utterance").arg(u);
        }
        if setup.dump {
            cmd.arg("--dump").arg(dir.join(format!("dump{p}")));
        }
        let out = std::fs::File::create(dir.join(format!("caller{p}.json"))).expect("file");
        let err = std::fs::File::create(dir.join(format!("caller{p}.log"))).expect("file");
        children.push(Kill(
            cmd.stdout(out)
                .stderr(err)
                .spawn()
                .expect("start load_caller.py"),
        ));
    }
    // Wait for the callers, sampling the gateway's CPU time every half second.
    let deadline = started + Duration::from_secs(timeout + 30);
    let mut cpu_samples = vec![(started, gateway_before)];
    loop {
        if children
            .iter_mut()
            .all(|c| matches!(c.0.try_wait(), Ok(Some(_))))
        {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("turn_latency: caller processes overran their timeout; killed");
            for c in &mut children {
                let _ = c.0.kill();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        if let Some(t) = cpu_ticks(setup.gateway_pid) {
            cpu_samples.push((Instant::now(), t));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let gateway_after = cpu_ticks(setup.gateway_pid).unwrap_or(gateway_before);
    // The busiest 5 s of the run.
    let mut peak = 0.0f64;
    for (i, (t0, c0)) in cpu_samples.iter().enumerate() {
        if let Some((t1, c1)) = cpu_samples[i..]
            .iter()
            .find(|(t, _)| t.duration_since(*t0) >= Duration::from_secs(5))
        {
            peak = peak.max((c1 - c0) as f64 / 100.0 / t1.duration_since(*t0).as_secs_f64());
        }
    }
    drop(children);

    let mut level = Level {
        n,
        wall_s: wall,
        gateway_cpu: (gateway_after - gateway_before) as f64 / 100.0 / wall,
        gateway_cpu_peak: peak,
        ..Level::default()
    };
    let mut callers_cpu = 0.0;
    for p in 0..processes {
        let text = std::fs::read_to_string(dir.join(format!("caller{p}.json"))).unwrap_or_default();
        let Some(result) = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        else {
            eprintln!("turn_latency: caller process {p} of N={n} gave no result (see {dir:?})");
            level.calls_failed += n / processes;
            continue;
        };
        callers_cpu += result["cpu_s"].as_f64().unwrap_or(0.0);
        for call in result["calls"].as_array().into_iter().flatten() {
            measure_call(setup, call, &mut level);
        }
    }
    level.callers_cpu = callers_cpu / wall;
    level
}

/// Adds one call's turns (the caller's gaps) and stages (its record) to `level`.
fn measure_call(setup: &Setup, call: &Value, level: &mut Level) {
    if call["connected"] != json!(true) && call["last_code"] == json!(503) {
        level.calls_refused += 1;
        return;
    }
    if call["connected"] != json!(true) || !call["error"].is_null() {
        level.calls_failed += 1;
    }
    if let Some(share) = call["talk_share"].as_f64() {
        level.talk_share.push(share);
    }
    let turns = call["turns"].as_array().cloned().unwrap_or_default();
    for (i, t) in turns.iter().enumerate() {
        if t["lost"] == json!(true) {
            level.lost += 1;
        } else if t["talked_over"] == json!(true) {
            level.talked_over += 1;
        } else if let Some(gap) = t["gap_ms"].as_f64() {
            level.gaps.push(gap);
            if i > 0 {
                level.later_gaps.push(gap);
            }
        }
    }
    let Some(record) = call["call_id"].as_str().and_then(|id| setup.api.record(id)) else {
        level.unmatched += turns.len();
        return;
    };
    if record["ended_by"] != json!("caller") {
        level.calls_ended_by_gateway += 1;
    }
    let rec_turns = record["turns"].as_array().cloned().unwrap_or_default();
    let replies: Vec<&Value> = record["bot_speech"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == json!("reply"))
        .collect();
    // Match each caller turn to the gateway turn that started with it: the gateway's start is
    // its VAD start minus the pre-roll; the caller's is its first voiced sample. The caller's
    // clock starts with the call's port, the gateway's with the caller's first frame (tx0).
    let tx0_ms = call["tx0_s"].as_f64().unwrap_or(0.0) * 1000.0;
    let mut matched = vec![false; rec_turns.len()];
    let mut pairs = Vec::new();
    for t in &turns {
        let Some(voice) = t["voice_start_s"].as_f64() else {
            continue;
        };
        let caller_start = voice * 1000.0 - tx0_ms;
        let best = rec_turns
            .iter()
            .enumerate()
            .filter(|(i, _)| !matched[*i])
            .map(|(i, r)| {
                let start = r["start_ms"].as_f64().unwrap_or(f64::NAN) + PRE_ROLL_MS;
                (i, start - caller_start)
            })
            .filter(|(_, d)| d.abs() < 400.0)
            .min_by(|a, b| a.1.abs().total_cmp(&b.1.abs()));
        match best {
            Some((i, offset)) => {
                matched[i] = true;
                pairs.push((t, &rec_turns[i], offset));
            }
            None => level.unmatched += 1,
        }
    }
    // Only speech the callers did not say counts (a no-input re-prompt after a caller's last
    // utterance is the gateway's own turn, not something it heard).
    level.extra_turns += rec_turns
        .iter()
        .zip(&matched)
        .filter(|(r, m)| !**m && r["input"] == json!("speech"))
        .count();
    if pairs.is_empty() {
        return;
    }
    // The gateway's clock on the caller's: the median start difference of this call.
    let offset = median(&pairs.iter().map(|p| p.2).collect::<Vec<_>>());
    level.offsets.push(offset);
    for (t, r, _) in pairs {
        // Not understood: no intent and nothing collected (the bot asks again).
        let no_slots = r["slots"].as_object().is_none_or(|m| m.is_empty());
        if r["intent"].as_str().is_none_or(|i| i == "none") && no_slots {
            level.misheard += 1;
        }
        let (Some(gap), Some(end_s), Some(onset_s)) = (
            t["gap_ms"].as_f64(),
            t["end_s"].as_f64(),
            t["onset_s"].as_f64(),
        ) else {
            continue;
        };
        if t["talked_over"] == json!(true) {
            continue;
        }
        let caller_end = end_s * 1000.0 - tx0_ms + offset;
        let caller_onset = onset_s * 1000.0 - tx0_ms + offset;
        let end = r["end_ms"].as_f64().unwrap_or(f64::NAN);
        let timing = |k: &str| r["timings"][k].as_f64().unwrap_or(f64::NAN);
        let total = timing("total_ms");
        let Some(reply) = replies
            .iter()
            .filter(|s| s["queued_at_ms"].as_f64().is_some_and(|q| q >= end))
            .min_by(|a, b| {
                let q = |s: &Value| s["queued_at_ms"].as_f64().unwrap_or(f64::MAX);
                q(a).total_cmp(&q(b))
            })
        else {
            continue;
        };
        let queued = reply["queued_at_ms"].as_f64().unwrap_or(f64::NAN);
        if r["turn_end"]["early_transcript"] == json!(true) {
            level.early += 1;
        }
        let stages = Stages {
            vad_lag: end - caller_end,
            endpoint: queued - total - end,
            process: total,
            asr: timing("asr_ms"),
            intent: timing("intent_ms"),
            tts: timing("tts_ms"),
            playout: caller_onset - queued,
        };
        debug_assert!(
            (stages.vad_lag + stages.endpoint + total + stages.playout - gap).abs() < 1.0
        );
        level.stages.push(stages);
    }
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run must not start a load.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(python) = pjsua_python() else {
        eprintln!("turn_latency: pjsua2's Python is missing (scripts/deps.sh); skipped");
        return;
    };
    let series: Vec<usize> = std::env::var("LAT_CALLERS")
        .unwrap_or_else(|_| "1,4,8,16,24,32,40".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let turns = env_u64("LAT_TURNS", 6);
    let deadline_s = env_u64("LAT_DEADLINE_S", 5);
    let noise_dbfs: Option<f32> = match std::env::var("LAT_NOISE_DBFS") {
        Ok(v) if v.trim().is_empty() => None,
        Ok(v) => Some(v.trim().parse().expect("LAT_NOISE_DBFS: a level in dBFS")),
        Err(_) => Some(-65.0),
    };
    let dump = std::env::var("LAT_DUMP").is_ok_and(|v| v == "1");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let temp = tempfile::tempdir().expect("temp dir");
    let work = match std::env::var_os("LAT_KEEP") {
        Some(dir) => PathBuf::from(dir),
        None => temp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&work).expect("work dir");

    // The gateway: default flow and settings, the admin API on, its files in the work dir.
    let config = work.join("gateway.toml");
    let mut text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nagent_token = \"turn-latency-bench-agent-token\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\nadmin_token_env = \"\"\n\
         feedback_database = \"{}\"\nhistory_database = \"{}\"\n\
         [handover.webhook]\ndatabase = \"{}\"\n",
        work.join("feedback.sqlite3").display(),
        work.join("history.sqlite3").display(),
        work.join("outbox.sqlite3").display(),
    );
    if let Ok(extra) = std::env::var("LAT_GATEWAY_TOML") {
        text.push_str(&extra.replace("\\n", "\n"));
        text.push('\n');
    }
    std::fs::write(&config, text).expect("write config");
    let log = std::fs::File::create(work.join("gateway.log")).expect("log file");
    let mut server = Command::new(env!("CARGO_BIN_EXE_voicebot"))
        .current_dir(&root)
        .arg("--config")
        .arg(&config)
        .args([
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--rtp-ports",
            "30000-31999",
        ])
        // No --max-calls: the gateway's own admission control decides which calls it takes.
        .env_remove("VOICEBOT_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start voicebot serve");
    let pid = server.id();
    let stdout = server.stdout.take().expect("stdout");
    let _server = Kill(server);
    // The banner (and anything else) is drained so the gateway never writes into a full pipe.
    let ready = ready_line(stdout, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    let (api, sip_port) =
        Api::from_ready_line(&ready, ADMIN_TOKEN).unwrap_or_else(|e| panic!("{e}"));

    // The callers' speech and line noise.
    let voiced = db_to_amplitude(VOICED_DBFS);
    let mut utterances = Vec::new();
    let mut whole_call = Vec::new();
    let noise = noise_dbfs.map(|db| make_noise(db, 7));
    println!("Caller utterances (neural voice, 8 kHz telephone band, {PAUSE_MS} ms pauses):");
    for (name, parts) in UTTERANCES {
        let audio = make_utterance(&api, parts);
        let path = work.join(format!("{name}.wav"));
        write_wav(&path, &audio);
        let (first, last) = voiced_span(&audio, voiced).expect("voiced");
        println!(
            "  {name:<12} {:.2} s, longest pause {:>3.0} ms  \"{}\"",
            (last - first) as f64 / RATE as f64,
            longest_pause_ms(&audio),
            parts.join(" ... ")
        );
        whole_call.extend(std::iter::repeat_n(0.0, RATE as usize * 3));
        whole_call.extend_from_slice(&audio);
        utterances.push(path);
    }
    whole_call.extend(std::iter::repeat_n(0.0, RATE as usize * 2));
    let noise_path = noise.as_ref().map(|n| {
        let path = work.join("noise.wav");
        write_wav(&path, n);
        for (i, s) in whole_call.iter_mut().enumerate() {
            *s += n[i % n.len()];
        }
        path
    });
    preflight(&api, &whole_call, &work);

    let setup = Setup {
        python: &python,
        caller: root.join("tests/pjsua/load_caller.py"),
        sip_port,
        gateway_pid: pid,
        utterances: &utterances,
        noise: noise_path.as_deref(),
        turns,
        deadline_s,
        work: &work,
        dump,
        per_process: (env_u64("LAT_PER_PROCESS", PER_PROCESS as u64) as usize).clamp(1, 16),
        api: &api,
    };
    let mut levels = Vec::new();
    for &n in &series {
        let level = run_level(&setup, n);
        let g = level.sorted_gaps();
        println!(
            "  N={n}: {} turns, lost {}, p50 {:.0} ms, p95 {:.0} ms ({:.0} s)",
            g.len(),
            level.lost,
            percentile(&g, 50.0),
            percentile(&g, 95.0),
            level.wall_s
        );
        levels.push(level);
    }
    report(&levels, noise_dbfs, turns, deadline_s);
    if let Ok(path) = std::env::var("LAT_JSON") {
        let capacity = capacity(&levels);
        let utterances: Vec<Value> = UTTERANCES
            .iter()
            .map(|(n, p)| json!({"name": n, "text": p.join(" ... ")}))
            .collect();
        let doc = json!({
            "benchmark": "turn_latency",
            "noise_dbfs": noise_dbfs,
            "turns_per_caller": turns,
            "deadline_s": deadline_s,
            "utterances": utterances,
            "levels": levels.iter().map(Level::json).collect::<Vec<_>>(),
            "largest_n_p95_within_1000ms_no_loss": capacity.map(|l| l.n),
            "most_answered_p95_within_1000ms_no_loss": capacity.map(Level::answered),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write LAT_JSON");
        println!("figures written to {path}");
    }
}

/// Runs every utterance once, in one WAV, through the default flow (`/api/test/wav`) and says
/// what the flow made of each: none may hand over or end the call.
fn preflight(api: &Api, audio: &[f32], work: &Path) {
    let path = work.join("all-utterances.wav");
    write_wav(&path, audio);
    let bytes = std::fs::read(&path).expect("read WAV");
    let (status, body) = api.post("/api/test/wav?flow=support", "audio/wav", &bytes);
    let report: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != 200 {
        eprintln!(
            "turn_latency: the preflight WAV was refused ({status}): {}",
            String::from_utf8_lossy(&body)
        );
        return;
    }
    println!("What the default flow makes of them (one call, /api/test/wav):");
    let turns = report["report"]["turns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in &turns {
        let flag = if !t["escalation"].is_null() {
            "  <- HANDS OVER"
        } else if t["ends_call"] == json!(true) {
            "  <- ENDS THE CALL"
        } else {
            ""
        };
        println!(
            "  {:>5.1} s  {:<16} {:<40} -> {}{flag}",
            t["start_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            t["intent"].as_str().unwrap_or("-"),
            format!("\"{}\"", t["transcript"].as_str().unwrap_or("")),
            t["reply"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(50)
                .collect::<String>(),
        );
    }
    if turns.len() != UTTERANCES.len() {
        println!(
            "  note: {} turns for {} utterances (a pause taken for the end of a turn, or noise \
             taken for speech)",
            turns.len(),
            UTTERANCES.len()
        );
    }
}

/// The level with the most callers answered whose p95 gap is within 1000 ms with no turn lost
/// or talked over and no call failed (and every smaller N of the series too); calls refused by
/// admission control are not failures.
fn capacity(levels: &[Level]) -> Option<&Level> {
    let mut best = None;
    for l in levels {
        let g = l.sorted_gaps();
        let ok = !g.is_empty()
            && percentile(&g, 95.0) <= 1000.0
            && l.lost == 0
            && l.talked_over == 0
            && l.calls_failed == 0;
        if !ok {
            break;
        }
        if best.is_none_or(|b: &Level| l.answered() >= b.answered()) {
            best = Some(l);
        }
    }
    best
}

fn report(levels: &[Level], noise: Option<f32>, turns: u64, deadline_s: u64) {
    println!();
    println!(
        "Voice-to-voice latency at the caller (end of the caller's speech -> first audible \
         sample of the reply), {turns} turns per caller, line noise {}, lost after {deadline_s} s",
        noise.map_or("off".to_string(), |n| format!("{n} dBFS"))
    );
    println!(
        "{:>4} {:>8} {:>6} {:>5} {:>5} {:>7} {:>7} {:>7} {:>9} {:>7} {:>7} {:>8} {:>5}",
        "N",
        "refused",
        "turns",
        "lost",
        "over",
        "p50 ms",
        "p95 ms",
        "max ms",
        "p95 later",
        "gw CPU",
        "gw peak",
        "callers",
        "talk"
    );
    for l in levels {
        let g = l.sorted_gaps();
        println!(
            "{:>4} {:>8} {:>6} {:>5} {:>5} {:>7.0} {:>7.0} {:>7.0} {:>9.0} {:>6.0}% {:>6.0}% {:>7.0}% {:>5.2}",
            l.n,
            l.calls_refused,
            g.len(),
            l.lost,
            l.talked_over,
            percentile(&g, 50.0),
            percentile(&g, 95.0),
            g.last().copied().unwrap_or(f64::NAN),
            percentile(&l.sorted_later_gaps(), 95.0),
            l.gateway_cpu * 100.0,
            l.gateway_cpu_peak * 100.0,
            l.callers_cpu * 100.0,
            median(&l.talk_share),
        );
    }
    match capacity(levels) {
        Some(l) => println!(
            "most callers answered with p95 <= 1000 ms, no turn lost or talked over: {} (N={})",
            l.answered(),
            l.n
        ),
        None => println!(
            "most callers answered with p95 <= 1000 ms, no turn lost or talked over: none of the series"
        ),
    }
    println!(
        "(refused: calls refused by admission control with 503; p95 later: every turn but each \
         call's first, which all come in a burst after the same greeting; over: the bot spoke before the caller had finished; CPU in % of one core: the gateway \
         averaged over each N's run and in its busiest 5 s, all caller processes averaged; talk: \
         the callers' share of speaking time, p50)"
    );
    println!();
    println!("Per stage, p50 in ms (from the call records; see the bench's doc):");
    print!("{:>4}", "N");
    for name in STAGE_NAMES {
        print!(" {name:>9}");
    }
    println!(
        " {:>6} {:>9} {:>6} {:>6}",
        "early", "misheard", "extra", "calls"
    );
    for l in levels {
        print!("{:>4}", l.n);
        for v in l.stage_medians() {
            print!(" {v:>9.0}");
        }
        println!(
            " {:>6} {:>9} {:>6} {:>6}",
            l.early,
            l.misheard,
            l.extra_turns,
            format!("{}/{}", l.calls_failed, l.calls_ended_by_gateway)
        );
    }
    println!(
        "(vad lag + endpoint + process + playout = the gap; asr, intent and tts as the records \
         give them (an early transcript, made at a pause before the end was decided, is not part \
         of process); early: turns with an early transcript; misheard: turns the bot did not \
         understand; extra: speech turns the gateway heard that the callers did not say \
         (a sentence split in two, noise; no-input re-prompts are not counted); calls: failed \
         / ended by the gateway)"
    );
}

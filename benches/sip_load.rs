//! Capacity benchmark: SIPp places many concurrent calls with RTP streams against
//! `voicebot serve`, and this harness prints calls handled, failed calls, CPU and memory per
//! call, and the gateway's RTP send jitter (how late packets left against their 20 ms grid).
//!
//! Run: `cargo bench --bench sip_load` (needs `sipp` from Debian's `sip-tester`). Settings by
//! environment: LOAD_CALLS (default 200 concurrent calls), LOAD_RATE (new calls per second,
//! default 20), LOAD_HOLD_S (seconds each call lasts, default 30). The caller streams silence,
//! so the speech pipeline stays idle (the endpointer runs, ASR does not), as the target asks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{env_u64, proc_usage, read_stats, sip_port, Kill};

fn ticks_per_second() -> f64 {
    100.0
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run must not start a load.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if Command::new("sipp").arg("-v").output().is_err() {
        eprintln!("sip_load: sipp is not installed (apt-get install sip-tester); skipped");
        return;
    }
    let calls = env_u64("LOAD_CALLS", 200);
    let rate = env_u64("LOAD_RATE", 20);
    let hold_s = env_u64("LOAD_HOLD_S", 30);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().expect("temp dir");
    let reports = work.path().join("records");
    // One second of mu-law silence (0xFF), looped by SIPp.
    std::fs::write(work.path().join("caller.raw"), vec![0xFFu8; 8000]).expect("write audio");

    let bin = root.join("target/release/voicebot");
    assert!(
        bin.exists(),
        "build the gateway first: cargo build --release"
    );
    let mut server = Command::new(&bin)
        .current_dir(&root)
        .args([
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--rtp-ports",
            "30000-31999",
        ])
        .args(["--max-calls", &(calls + 10).to_string()])
        // SIP load only: no HTTP side (nor a clash on its default port).
        .args(["--http", ""])
        .arg("--report-dir")
        .arg(&reports)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start voicebot serve");
    let pid = server.id();
    let stdout = server.stdout.take().expect("stdout");
    let server = Kill(server);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let port: u16 = sip_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
    std::thread::sleep(Duration::from_millis(500));
    let (base_rss, base_cpu) = proc_usage(pid).expect("proc usage");

    let stat_file = work.path().join("stat.csv");
    let started = Instant::now();
    let mut sipp = Kill(
        Command::new("sipp")
            .current_dir(work.path())
            .arg(format!("127.0.0.1:{port}"))
            .arg("-sf")
            .arg(root.join("benches/sipp/uac_load.xml"))
            .args([
                "-s",
                "support",
                "-i",
                "127.0.0.1",
                "-p",
                "0",
                "-mp",
                "32000",
            ])
            .args(["-r", &rate.to_string(), "-l", &calls.to_string()])
            .args(["-m", &calls.to_string()])
            .args(["-d", &(hold_s * 1000).to_string()])
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(&stat_file)
            .args([
                "-nostdin",
                "-timeout",
                &(hold_s + calls / rate.max(1) + 60).to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp"),
    );
    // Sample the gateway while every call is up: the middle of the hold time after the last
    // call started.
    let ramp = Duration::from_secs_f64(calls as f64 / rate.max(1) as f64);
    let mut peak_rss = base_rss;
    let mut steady: Option<(Instant, u64)> = None;
    let mut steady_end: Option<(Instant, u64)> = None;
    let status = loop {
        if let Some(status) = sipp.0.try_wait().expect("sipp status") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
        let Some((rss, cpu)) = proc_usage(pid) else {
            continue;
        };
        peak_rss = peak_rss.max(rss);
        let t = started.elapsed();
        if t > ramp + Duration::from_secs(2) && t < ramp + Duration::from_secs(hold_s / 2 + 2) {
            if steady.is_none() {
                steady = Some((Instant::now(), cpu));
            }
            steady_end = Some((Instant::now(), cpu));
        }
    };
    // Give the gateway a moment to write the last call records.
    std::thread::sleep(Duration::from_secs(2));
    let (successful, failed) = read_stats(&stat_file);
    let steady_cpu = match (steady, steady_end) {
        (Some((a, ca)), Some((b, cb))) if b > a => {
            (cb - ca) as f64 / ticks_per_second() / (b - a).as_secs_f64()
        }
        _ => f64::NAN,
    };
    let total_cpu = proc_usage(pid).map_or(0, |u| u.1) - base_cpu;
    let (all_p99, lat_p99, lat_max, records) = send_lateness(&reports);
    drop(server);

    println!("SIP load: {calls} calls, {rate} calls/s, {hold_s} s each, RTP both ways, PCMU");
    println!(
        "  sipp exit status           {}",
        status.code().unwrap_or(-1)
    );
    println!("  calls handled / failed     {successful} / {failed}");
    println!("  call records written       {records}");
    println!(
        "  CPU with all calls up      {:.1}% of one core ({:.3}% per call)",
        steady_cpu * 100.0,
        steady_cpu * 100.0 / calls as f64
    );
    println!(
        "  CPU time, whole run        {:.1} s",
        total_cpu as f64 / ticks_per_second()
    );
    println!(
        "  memory                     {} MB before calls, {} MB peak, {:.2} MB per call",
        base_rss / 1024,
        peak_rss / 1024,
        (peak_rss.saturating_sub(base_rss)) as f64 / 1024.0 / calls as f64
    );
    println!(
        "  RTP send jitter            p99 {all_p99:.1} ms over all packets; worst call's p99 \
         {lat_p99:.1} ms; max {lat_max:.1} ms (deviation from the 20 ms grid)"
    );
}

/// The p99 of all packets' send deviation (merged histograms), the worst call's p99 and the
/// overall max, from the call records.
fn send_lateness(dir: &Path) -> (f64, f64, f64, usize) {
    let mut p99 = 0.0f64;
    let mut max = 0.0f64;
    let mut n = 0;
    let mut merged = vec![0u64; 1001];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        n += 1;
        let rtp = &json["rtp"];
        p99 = p99.max(rtp["send_late_p99_ms"].as_f64().unwrap_or(0.0));
        max = max.max(rtp["send_late_max_ms"].as_f64().unwrap_or(0.0));
        for pair in rtp["send_late_histogram"].as_array().into_iter().flatten() {
            let bucket = pair[0].as_u64().unwrap_or(0) as usize;
            if let Some(slot) = merged.get_mut(bucket) {
                *slot += pair[1].as_u64().unwrap_or(0);
            }
        }
    }
    let total: u64 = merged.iter().sum();
    let mut seen = 0;
    let mut all_p99 = 0.0;
    for (i, count) in merged.iter().enumerate() {
        seen += count;
        if total > 0 && seen as f64 >= 0.99 * total as f64 {
            all_p99 = (i + 1) as f64 * 0.1;
            break;
        }
    }
    (all_p99, p99, max, n)
}

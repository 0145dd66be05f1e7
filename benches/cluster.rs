//! Cluster benchmark: SIPp places short calls (INVITE, a second of RTP, BYE) at a fixed rate,
//! once straight into one gateway on its embedded storage, once through Kamailio (the shipped
//! `sip-config/kamailio/dispatcher.cfg`) into three gateways on one shared PostgreSQL (a
//! throwaway server). It prints, for both: calls placed, failed, the calls per second carried,
//! INVITE -> 200 p50/p95/max (SIPp's response-time trace), and for the cluster what PostgreSQL
//! wrote per finished call (transactions, rows, WAL bytes) plus the time of one history write.
//!
//! Run: `cargo bench --bench cluster` (needs `sipp`, `kamailio` and PostgreSQL's server
//! binaries). CLUSTER_CALLS (default 400), CLUSTER_RATE (calls per second, default 50),
//! CLUSTER_HOLD_MS (default 1000) change the run; CLUSTER_KEEP=1 keeps SIPp's traces.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{env_u64, proc_usage, read_stats, sip_port, Kill};
use voicebot_gateway::storage::throwaway::ThrowawayPostgres;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for program in ["sipp", "kamailio"] {
        if Command::new(program).arg("-v").output().is_err() {
            eprintln!("cluster: {program} is not installed; skipped");
            return;
        }
    }
    let calls = env_u64("CLUSTER_CALLS", 400);
    let rate = env_u64("CLUSTER_RATE", 50);
    let hold_ms = env_u64("CLUSTER_HOLD_MS", 1000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/release/voicebot");
    assert!(
        bin.exists(),
        "build the gateway first: cargo build --release"
    );
    // CLUSTER_KEEP=1 keeps SIPp's error traces and the gateways' records (path printed).
    let keep = std::env::var("CLUSTER_KEEP").as_deref() == Ok("1");
    let work = tempfile::Builder::new()
        .disable_cleanup(keep)
        .tempdir()
        .expect("temp dir");
    if keep {
        println!("cluster: keeping {}", work.path().display());
    }
    std::fs::write(work.path().join("caller.raw"), vec![0xFFu8; 8000]).expect("audio");

    println!("cluster: {calls} calls at {rate}/s, {hold_ms} ms each (SIPp, PCMU, silence)");
    // One gateway, embedded storage, SIPp straight at it.
    let single = {
        let gw = start_gateway(&bin, &root, work.path(), 0, None);
        let cpu = cpu_ticks(&[&gw]);
        let run = place_calls(work.path(), &root, gw.1, calls, rate, hold_ms, "single");
        let cpu = cpu_ticks(&[&gw]) - cpu;
        drop(gw);
        (run, cpu)
    };
    report("1 gateway, straight (SQLite)", &single.0, single.1);

    // Three gateways on PostgreSQL behind Kamailio.
    let pg = ThrowawayPostgres::start().expect("throwaway PostgreSQL");
    let db = pg.create_database("bench").expect("database");
    let gateways: Vec<(Kill, u16)> = (1..=3)
        .map(|i| start_gateway(&bin, &root, work.path(), i, Some(&db)))
        .collect();
    let ports: Vec<u16> = gateways.iter().map(|g| g.1).collect();
    let (_kamailio, proxy) = start_kamailio(&root, work.path(), &ports);
    let before = pg_counters(&db);
    let all: Vec<&(Kill, u16)> = gateways.iter().collect();
    let cpu = cpu_ticks(&all);
    let cluster = place_calls(work.path(), &root, proxy, calls, rate, hold_ms, "cluster");
    // The last records are written after the BYE: wait (bounded) until every call is stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_calls(&db) < cluster.successful && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = pg_counters(&db);
    let cpu = cpu_ticks(&all) - cpu;
    report("3 gateways via Kamailio (PostgreSQL)", &cluster, cpu);
    let stored = stored_calls(&db);
    let per_call = |a: i64, b: i64| (b - a) as f64 / stored.max(1) as f64;
    println!(
        "  PostgreSQL per finished call ({stored} stored): {:.1} transactions, {:.1} rows inserted, \
         {:.1} rows updated, {:.0} WAL bytes",
        per_call(before.commits, after.commits),
        per_call(before.inserted, after.inserted),
        per_call(before.updated, after.updated),
        per_call(before.wal, after.wal),
    );
    history_write_cost(&db);
    drop(gateways);
    drop(pg);
}

/// What one SIPp run carried.
struct Run {
    successful: u64,
    failed: u64,
    elapsed: Duration,
    /// INVITE -> 200 of each successful call, ms.
    rtt_ms: Vec<f64>,
}

/// CPU time (clock ticks) the gateways have used so far.
fn cpu_ticks(gateways: &[&(Kill, u16)]) -> u64 {
    gateways
        .iter()
        .filter_map(|g| proc_usage(g.0 .0.id()).map(|(_, ticks)| ticks))
        .sum()
}

fn report(what: &str, run: &Run, cpu_ticks: u64) {
    let mut rtt = run.rtt_ms.clone();
    rtt.sort_by(f64::total_cmp);
    let at = |q: f64| {
        rtt.get(((rtt.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{what}: {} calls ok, {} failed in {:.1} s = {:.1} calls/s; INVITE->200 p50 {:.1} ms, \
         p95 {:.1} ms, max {:.1} ms ({} timed); gateway CPU {:.1} ms per call",
        run.successful,
        run.failed,
        run.elapsed.as_secs_f64(),
        run.successful as f64 / run.elapsed.as_secs_f64(),
        at(0.5),
        at(0.95),
        rtt.last().copied().unwrap_or(f64::NAN),
        rtt.len(),
        cpu_ticks as f64 * 10.0 / run.successful.max(1) as f64
    );
}

/// Starts gateway `i` (`--http ""`; with `db`: on the shared store as node `gw<i>`; the
/// per-core admission limit off, the calls being silent and signalling what is measured): the
/// process and its SIP port.
fn start_gateway(bin: &Path, root: &Path, work: &Path, i: u16, db: Option<&str>) -> (Kill, u16) {
    let config = work.join(format!("gw{i}.toml"));
    let storage = db
        .map(|db| format!("[storage]\nurl = \"{db}\"\nnode = \"gw{i}\"\npool_size = 4\n"))
        .unwrap_or_default();
    let records = work.join(format!("records{i}"));
    std::fs::write(
        &config,
        format!(
            "{storage}[admission]\ncalls_per_core = 0\n[http]\nlisten = \"\"\nhistory_database = \"{}\"\n\
             feedback_database = \"{}\"\n",
            work.join(format!("history{i}.sqlite3")).display(),
            work.join(format!("feedback{i}.sqlite3")).display()
        ),
    )
    .expect("config");
    let lo = 30000 + i * 1000;
    let mut child = Command::new(bin)
        .current_dir(root)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--sip", "127.0.0.1:0", "--journal", ""])
        .args(["--rtp-ports", &format!("{lo}-{}", lo + 998)])
        .args(["--max-calls", "500", "--report-dir"])
        .arg(&records)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start voicebot serve");
    let stdout = child.stdout.take().expect("stdout");
    let child = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let port = sip_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

/// Kamailio with the shipped dispatcher configuration over `gateways`; waits until it has
/// probed them all active. Its process and port.
/// Kamailio, stopped with its worker processes (they outlive a SIGKILL of the main process).
struct Kamailio(std::process::Child);

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its workers; then SIGKILL to its process group.
        let pgid = i32::try_from(self.0.id()).unwrap_or(i32::MAX);
        // SAFETY: kill(2) on a process (group) we started.
        unsafe { libc::kill(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn start_kamailio(root: &Path, work: &Path, gateways: &[u16]) -> (Kamailio, u16) {
    let list = work.join("dispatcher.list");
    let lines: String = gateways
        .iter()
        .map(|p| format!("1 sip:127.0.0.1:{p} 0 0\n"))
        .collect();
    std::fs::write(&list, lines).expect("dispatcher list");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new("kamailio")
        .arg("-f")
        .arg(root.join("sip-config/kamailio/dispatcher.cfg"))
        .args(["-DD", "-E", "-Y"])
        .arg(work)
        .arg("-A")
        .arg(format!("LISTEN=udp:127.0.0.1:{port}"))
        .arg("-A")
        .arg(format!("DISPATCHER_LIST=\"{}\"", list.display()))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kamailio");
    // Its first probes mark the gateways active within a second or two.
    std::thread::sleep(Duration::from_secs(3));
    (Kamailio(child), port)
}

/// SIPp's uac_load scenario against 127.0.0.1:`port`.
fn place_calls(
    work: &Path,
    root: &Path,
    port: u16,
    calls: u64,
    rate: u64,
    hold_ms: u64,
    name: &str,
) -> Run {
    let dir = work.join(format!("sipp-{name}"));
    std::fs::create_dir_all(&dir).expect("sipp dir");
    std::fs::copy(work.join("caller.raw"), dir.join("caller.raw")).expect("audio");
    let stat = dir.join("stat.csv");
    let started = Instant::now();
    let status = Command::new("timeout")
        .arg("600")
        .arg("sipp")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(&dir)
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
            "29000",
        ])
        .args(["-r", &rate.to_string(), "-m", &calls.to_string()])
        .args(["-l", "400", "-d", &hold_ms.to_string()])
        .args([
            "-nostdin",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-trace_stat",
            "-trace_err",
        ])
        .args(["-fd", "1", "-stf"])
        .arg(&stat)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run sipp");
    let elapsed = started.elapsed();
    if !status.success() {
        eprintln!("cluster: sipp ({name}) exited with {status}");
    }
    let (ok, failed) = read_stats(&stat);
    let rtt_ms = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_rtt.csv"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split(';').nth(1)?.trim().parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    Run {
        successful: ok,
        failed,
        elapsed,
        rtt_ms,
    }
}

struct Counters {
    commits: i64,
    inserted: i64,
    updated: i64,
    wal: i64,
}

fn pg_counters(db: &str) -> Counters {
    let mut c = postgres::Client::connect(db, postgres::NoTls).expect("connect");
    // The statistics collector lags a little; ask for a fresh snapshot.
    let _ = c.batch_execute("SELECT pg_stat_clear_snapshot()");
    let row = c
        .query_one(
            "SELECT xact_commit, tup_inserted, tup_updated,
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .expect("pg_stat_database");
    Counters {
        commits: row.get(0),
        inserted: row.get(1),
        updated: row.get(2),
        wal: row.get(3),
    }
}

fn stored_calls(db: &str) -> u64 {
    let mut c = postgres::Client::connect(db, postgres::NoTls).expect("connect");
    c.query_one("SELECT COUNT(*) FROM calls", &[])
        .map(|r| r.get::<_, i64>(0).max(0) as u64)
        .unwrap_or(0)
}

/// The time of one finished call's write to the shared history (one real record, stored 200
/// times under new ids), as the gateway does it.
fn history_write_cost(db: &str) {
    let pool = voicebot_gateway::storage::postgres::connect(db, 2).expect("pool");
    let history = voicebot_gateway::history::CallHistory::open_postgres(pool).expect("history");
    let mut c = postgres::Client::connect(db, postgres::NoTls).expect("connect");
    let record: String = c
        .query_one("SELECT record FROM calls LIMIT 1", &[])
        .map(|r| r.get(0))
        .expect("a stored record");
    let record: serde_json::Value = serde_json::from_str(&record).expect("record json");
    let mut times = Vec::new();
    for i in 0..200 {
        let mut r = record.clone();
        r["id"] = serde_json::json!(format!("bench-{i}"));
        r["call_id"] = serde_json::json!(format!("bench-{i}@bench"));
        let t = Instant::now();
        history.insert(1_700_000_000_000 + i, &r).expect("insert");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "  one finished call written to the shared history (one transaction): p50 {:.2} ms, \
         p95 {:.2} ms ({} bytes of record)",
        times[times.len() / 2],
        times[times.len() * 95 / 100],
        record.to_string().len()
    );
}

//! Capacity with SRTP on (issue 19): N concurrent SIP callers on loopback against one
//! `voicebot serve`, in two modes measured alternately in the same run so that whatever else
//! loads the machine weighs on both alike: plain `RTP/AVP`, then `RTP/SAVP` with SDES keys
//! (`a=crypto`, AES_CM_128_HMAC_SHA1_80), then again, ROUNDS times. Debian's SIPp has no SRTP,
//! so the callers are written here: a small RFC 3261 UAC per call (its own UDP sockets for SIP,
//! RTP and RTCP; INVITE with PCMU and telephone-event, ACK, BYE after the hold time) that
//! streams 20 ms of mu-law silence every 20 ms, protected with the gateway's own
//! `SrtpContext` in SRTP mode, and receives the gateway's stream (the greeting, then its
//! silence), unprotecting every packet. The caller stays silent, so speech recognition stays
//! idle (as in `sip_load`) and the figure isolates media plus SRTP.
//!
//! For each mode and round it prints the calls set up and failed; the gateway's CPU (utime +
//! stime from /proc over the window where all calls are up) as a share of a core, per call as
//! ms of CPU per second of call and as % of a core; the gateway's memory; the callers' receive
//! jitter (p50/p99 of |inter-arrival gap - 20 ms|) and loss; packets that failed to unprotect
//! at the callers (SRTP and SRTCP) and at the gateway (from its call records). Then one
//! averaged row per mode and the SRTP - RTP difference. The run fails (exit status 2) when
//! any call failed to set up, ended early, got no media or no answer to its BYE, or when any
//! packet failed to unprotect on either side.
//!
//! Run: `cargo bench --bench srtp_load` (needs `target/release/voicebot`). Settings by
//! environment: LOAD_CALLS (default 50 concurrent calls), LOAD_RATE (new calls per second,
//! default 10), LOAD_HOLD_S (seconds each call lasts, default 20), ROUNDS (default 2: RTP, SRTP,
//! RTP, SRTP), SRTP_LOAD_JSON=FILE (also write the figures as JSON).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use voicebot_gateway::media::rtp::{parse_rtp, RtpPacket};
use voicebot_gateway::media::srtp::{MasterKey, SrtpContext, SrtpMode, SrtpSuite};
use voicebot_gateway::sip::message::{
    default_port, param_of, parse_sip_uri, uri_of, via_sent_by, Method, SipMessage,
};
use voicebot_gateway::sip::sdes;
use voicebot_gateway::sip::sdp::parse_offer_for;

mod support;

use support::{env_u64, proc_usage, ready_line, sip_port, Kill};

/// Clock ticks per second of /proc/PID/stat (as sip_load assumes).
const TICKS_PER_SECOND: f64 = 100.0;
const SUITE: SrtpSuite = SrtpSuite::AesCm128HmacSha1_80;
const PTIME: Duration = Duration::from_millis(20);
/// Samples per 20 ms packet at 8 kHz.
const SAMPLES: u32 = 160;
/// RFC 3261 timers T1 and T2.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// How long a transaction waits for its final response (under RFC 3261's 32 s: a gateway
/// that does not answer within this has failed the load anyway).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(16);
/// Jitter histogram: 0.1 ms buckets up to 100 ms (the last takes the rest).
const BUCKETS: usize = 1001;
/// The gateway's RTP ports (as sip_load's).
const GATEWAY_RTP_PORTS: &str = "30000-31999";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Rtp,
    Srtp,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Rtp => "RTP/AVP",
            Mode::Srtp => "RTP/SAVP",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Mode::Rtp => "rtp",
            Mode::Srtp => "srtp",
        }
    }
}

#[derive(Clone, Copy)]
struct Settings {
    calls: u64,
    rate: u64,
    hold: Duration,
    rounds: u64,
}

/// Deviations from the 20 ms grid, in 0.1 ms buckets.
#[derive(Clone)]
struct Histogram(Vec<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(vec![0; BUCKETS])
    }
}

impl Histogram {
    fn record(&mut self, deviation: Duration) {
        let i = usize::try_from(deviation.as_micros() / 100).unwrap_or(usize::MAX);
        self.0[i.min(BUCKETS - 1)] += 1;
    }

    fn add(&mut self, bucket: usize, count: u64) {
        self.0[bucket.min(BUCKETS - 1)] += count;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    /// The upper edge (ms) of the bucket holding quantile `q`; NaN when empty.
    fn quantile(&self, q: f64) -> f64 {
        let total: u64 = self.0.iter().sum();
        let mut seen = 0;
        for (i, count) in self.0.iter().enumerate() {
            seen += count;
            if total > 0 && seen as f64 >= q * total as f64 {
                return (i + 1) as f64 * 0.1;
            }
        }
        f64::NAN
    }
}

/// What the monitor needs to know of the calls as they come up.
#[derive(Default)]
struct Progress {
    /// Calls whose setup ended (answered or failed).
    settled: AtomicUsize,
    up: AtomicUsize,
    /// When the first call was answered: its BYE, the first, comes one hold time later.
    first_up: Mutex<Option<Instant>>,
}

impl Progress {
    fn settle(&self, up: bool) {
        if up {
            let mut first = self.first_up.lock().expect("progress lock");
            first.get_or_insert_with(Instant::now);
            self.up.fetch_add(1, Ordering::SeqCst);
        }
        self.settled.fetch_add(1, Ordering::SeqCst);
    }
}

/// One caller's account of its call.
#[derive(Default)]
struct CallOutcome {
    set_up: bool,
    /// The monitor was told how the setup ended.
    settled: bool,
    failure: Option<String>,
    setup_ms: f64,
    sent: u64,
    received: u64,
    /// Packets the gateway's sequence numbers say it sent us while we listened.
    expected: u64,
    unprotect_failures: u64,
    rtcp_received: u64,
    rtcp_unprotect_failures: u64,
    gaps: Histogram,
}

/// One mode in one round.
struct ModeRun {
    mode: Mode,
    round: u64,
    calls: u64,
    up: u64,
    /// Calls up when the CPU window opened: the per-call CPU divides by these.
    up_in_window: u64,
    failed: u64,
    failures: Vec<String>,
    setup_ms_max: f64,
    /// Gateway CPU over the window with all calls up, as a share of one core.
    cpu_share: f64,
    window_s: f64,
    /// Gateway resident memory during the window (max of the samples), kB.
    rss_kb: u64,
    /// This harness's own CPU over the same window, as a share of one core.
    harness_share: f64,
    sent: u64,
    received: u64,
    expected: u64,
    unprotect_failures: u64,
    rtcp_received: u64,
    rtcp_unprotect_failures: u64,
    rx_gaps: Histogram,
    gateway: GatewayFigures,
}

impl ModeRun {
    /// ms of gateway CPU per second of call.
    fn cpu_ms_per_call_s(&self) -> f64 {
        self.cpu_share * 1000.0 / self.up_in_window.max(1) as f64
    }

    fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            return f64::NAN;
        }
        100.0 * self.expected.saturating_sub(self.received) as f64 / self.expected as f64
    }
}

/// What the gateway's call records of one mode's calls say.
#[derive(Default)]
struct GatewayFigures {
    records: u64,
    packets_received: u64,
    srtp_drops: u64,
    /// Records whose `rtp.srtp` is not what the mode negotiated.
    wrong_suite: u64,
    send_late: Histogram,
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run must not start a load.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let settings = Settings {
        calls: env_u64("LOAD_CALLS", 50).max(1),
        rate: env_u64("LOAD_RATE", 10).max(1),
        hold: Duration::from_secs(env_u64("LOAD_HOLD_S", 20).max(1)),
        rounds: env_u64("ROUNDS", 2).max(1),
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().expect("temp dir");
    let reports = work.path().join("records");
    let log_path = work.path().join("gateway.log");

    let bin = root.join("target/release/voicebot");
    assert!(
        bin.exists(),
        "build the gateway first: cargo build --release"
    );
    // SRTP answered when offered (the default, written out); every store in the temp dir.
    let config = work.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[media]\nsrtp = \"optional\"\n\
             [http]\nlisten = \"\"\nhistory_database = \"{}\"\nfeedback_database = \"{}\"\n\
             [handover.webhook]\ndatabase = \"{}\"\n",
            work.path().join("history.sqlite3").display(),
            work.path().join("feedback.sqlite3").display(),
            work.path().join("outbox.sqlite3").display(),
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut server = Command::new(&bin)
        .current_dir(&root)
        .arg("--config")
        .arg(&config)
        .args([
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--rtp-ports",
            GATEWAY_RTP_PORTS,
        ])
        .args(["--max-calls", &(settings.calls + 10).to_string()])
        // Media load only: no HTTP side, no journal.
        .args(["--http", "", "--journal", ""])
        .arg("--report-dir")
        .arg(&reports)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start voicebot serve");
    let pid = server.id();
    let stdout = server.stdout.take().expect("stdout");
    let mut server = Kill(server);
    // The ready line within two minutes (models load); the rest of stdout is drained.
    let line = match ready_line(stdout, Duration::from_secs(120)) {
        Ok(line) => line,
        Err(why) => fail(server, &log_path, &why),
    };
    let port = sip_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
    let gateway = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);

    // The gateway keeps working a while after its ready line (it makes its fixed prompts):
    // wait until it idles (two seconds in a row under 3 % of a core, at most 90 s), then take
    // its memory and CPU over 3 s before any call.
    let cpu_share_over = |d: Duration| {
        let a = proc_usage(pid)?.1;
        std::thread::sleep(d);
        let b = proc_usage(pid)?.1;
        Some(b.saturating_sub(a) as f64 / TICKS_PER_SECOND / d.as_secs_f64())
    };
    let quiet_deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut quiet = 0;
    while quiet < 2 && std::time::Instant::now() < quiet_deadline {
        match cpu_share_over(Duration::from_secs(1)) {
            Some(share) if share < 0.03 => quiet += 1,
            Some(_) => quiet = 0,
            None => fail(server, &log_path, "the gateway exited after its ready line"),
        }
    }
    let (base_rss, _) = proc_usage(pid).expect("proc usage");
    let idle_share = cpu_share_over(Duration::from_secs(3)).unwrap_or(f64::NAN);
    let load_before = load_average();
    println!(
        "SRTP load: {} calls, {} calls/s, {} s each, {} round(s) of RTP/AVP then RTP/SAVP \
         (SDES {SUITE}), PCMU both ways, the caller silent",
        settings.calls,
        settings.rate,
        settings.hold.as_secs(),
        settings.rounds
    );
    println!(
        "  gateway idle: {} MB, {:.2} % of a core; load average {load_before}",
        base_rss / 1024,
        idle_share * 100.0
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nonce: u32 = rand::random();
    let mut runs = Vec::new();
    for round in 1..=settings.rounds {
        for mode in [Mode::Rtp, Mode::Srtp] {
            let prefix = format!("srtpload-{nonce:08x}-r{round}-{}-", mode.word());
            let mut run = runtime.block_on(run_mode(mode, round, settings, gateway, pid, &prefix));
            run.gateway = gateway_figures(&reports, &prefix, mode, run.up);
            println!(
                "  round {round} {:<8} {} up, {} failed, gateway {:.1} % of a core",
                mode.label(),
                run.up,
                run.failed,
                run.cpu_share * 100.0
            );
            runs.push(run);
            if let Ok(Some(status)) = server.0.try_wait() {
                print_table(&runs, base_rss);
                fail(server, &log_path, &format!("the gateway exited: {status}"));
            }
            // Let the last calls' teardown finish before the next mode starts.
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    drop(runtime);
    let load_after = load_average();

    print_table(&runs, base_rss);
    println!("  load average before {load_before}, after {load_after}");
    if let Ok(path) = std::env::var("SRTP_LOAD_JSON") {
        let json = to_json(settings, &runs, base_rss, idle_share);
        std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json"))
            .unwrap_or_else(|e| eprintln!("srtp_load: cannot write {path}: {e}"));
        println!("  figures written to {path}");
    }
    let bad = runs.iter().any(|r| {
        r.failed > 0
            || r.unprotect_failures > 0
            || r.rtcp_unprotect_failures > 0
            || r.gateway.srtp_drops > 0
            || r.gateway.wrong_suite > 0
    });
    if bad {
        for r in &runs {
            for f in &r.failures {
                eprintln!("  round {} {}: {f}", r.round, r.mode.label());
            }
        }
        fail(
            server,
            &log_path,
            "calls failed or packets failed to unprotect",
        );
    }
}

/// Stops the gateway, shows the end of its log and exits with status 2.
fn fail(server: Kill, log: &Path, why: &str) -> ! {
    drop(server);
    eprintln!("srtp_load: FAILED: {why}");
    if let Ok(text) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("  gateway: {l}");
        }
    }
    std::process::exit(2);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Places the mode's calls at `rate` per second and samples the gateway while all are up.
async fn run_mode(
    mode: Mode,
    round: u64,
    settings: Settings,
    gateway: SocketAddr,
    pid: u32,
    prefix: &str,
) -> ModeRun {
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..settings.calls {
        let progress = progress.clone();
        let call_id = format!("{prefix}{i}-{:016x}@127.0.0.1", rand::random::<u64>());
        let at = started + Duration::from_secs_f64(i as f64 / settings.rate as f64);
        tasks.push(tokio::spawn(async move {
            sleep_until(at).await;
            let limit = settings.hold + TRANSACTION_TIMEOUT * 3 + Duration::from_secs(10);
            let mut outcome = CallOutcome::default();
            let finished = timeout(
                limit,
                call(
                    mode,
                    gateway,
                    call_id,
                    settings.hold,
                    &progress,
                    &mut outcome,
                ),
            )
            .await;
            match finished {
                Ok(Ok(())) => {}
                Ok(Err(why)) => outcome.failure = Some(why),
                Err(_) => outcome.failure = Some(format!("no end within {limit:?}")),
            }
            if !outcome.settled {
                // A call that never settled (timed out in setup) must not stall the monitor.
                progress.settle(false);
            }
            if outcome.failure.is_none() && outcome.received == 0 {
                outcome.failure = Some("no media from the gateway".into());
            }
            outcome
        }));
    }

    // Every call settled (bounded by the ramp plus a transaction timeout), then a second to
    // settle; the window ends half a second before the first call's BYE.
    let ramp = Duration::from_secs_f64(settings.calls as f64 / settings.rate as f64);
    let settle_deadline = started + ramp + TRANSACTION_TIMEOUT + Duration::from_secs(2);
    while progress.settled.load(Ordering::SeqCst) < settings.calls as usize
        && Instant::now() < settle_deadline
    {
        sleep(Duration::from_millis(100)).await;
    }
    let window_start = Instant::now() + Duration::from_secs(1);
    let first_up = *progress.first_up.lock().expect("progress lock");
    let window_end = first_up.map(|t| t + settings.hold - Duration::from_millis(500));
    let up_at_start = progress.up.load(Ordering::SeqCst) as u64;
    let me = std::process::id();
    let (mut cpu_share, mut harness_share, mut window_s, mut rss_kb) = (f64::NAN, f64::NAN, 0.0, 0);
    match window_end {
        Some(end) if end > window_start + Duration::from_secs(1) => {
            sleep_until(window_start).await;
            let a = proc_usage(pid);
            let h_a = proc_usage(me);
            let t_a = Instant::now();
            while Instant::now() + Duration::from_millis(250) < end {
                sleep(Duration::from_millis(250)).await;
                if let Some((rss, _)) = proc_usage(pid) {
                    rss_kb = rss_kb.max(rss);
                }
            }
            sleep_until(end).await;
            let b = proc_usage(pid);
            let h_b = proc_usage(me);
            window_s = t_a.elapsed().as_secs_f64();
            if let (Some((_, ca)), Some((rss, cb))) = (a, b) {
                rss_kb = rss_kb.max(rss);
                cpu_share = (cb - ca) as f64 / TICKS_PER_SECOND / window_s;
            }
            if let (Some((_, ca)), Some((_, cb))) = (h_a, h_b) {
                harness_share = (cb - ca) as f64 / TICKS_PER_SECOND / window_s;
            }
        }
        Some(_) => eprintln!(
            "srtp_load: round {round} {}: no window with every call up (hold {:?} too short \
             for the ramp {ramp:?}?)",
            mode.label(),
            settings.hold
        ),
        None => eprintln!("srtp_load: round {round} {}: no call came up", mode.label()),
    }

    let mut run = ModeRun {
        mode,
        round,
        calls: settings.calls,
        up: 0,
        up_in_window: up_at_start,
        failed: 0,
        failures: Vec::new(),
        setup_ms_max: 0.0,
        cpu_share,
        window_s,
        rss_kb,
        harness_share,
        sent: 0,
        received: 0,
        expected: 0,
        unprotect_failures: 0,
        rtcp_received: 0,
        rtcp_unprotect_failures: 0,
        rx_gaps: Histogram::default(),
        gateway: GatewayFigures::default(),
    };
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = match task.await {
            Ok(o) => o,
            Err(e) => CallOutcome {
                failure: Some(format!("call task: {e}")),
                ..CallOutcome::default()
            },
        };
        if outcome.set_up {
            run.up += 1;
            run.setup_ms_max = run.setup_ms_max.max(outcome.setup_ms);
        }
        if let Some(why) = &outcome.failure {
            run.failed += 1;
            if run.failures.len() < 10 {
                run.failures.push(format!("call {i}: {why}"));
            }
        }
        run.sent += outcome.sent;
        run.received += outcome.received;
        run.expected += outcome.expected;
        run.unprotect_failures += outcome.unprotect_failures;
        run.rtcp_received += outcome.rtcp_received;
        run.rtcp_unprotect_failures += outcome.rtcp_unprotect_failures;
        run.rx_gaps.merge(&outcome.gaps);
    }
    if up_at_start < run.up {
        eprintln!(
            "srtp_load: round {round} {}: only {up_at_start} of {} calls were up when the \
             window opened",
            mode.label(),
            run.up
        );
    }
    run
}

/// One call's SIP signalling, kept to what a UAC on loopback needs (RFC 3261 sections 8, 12,
/// 13, 15, 17): its own socket, a route set from Record-Route, the remote target from Contact.
struct Leg {
    sock: UdpSocket,
    /// Where the INVITE went: the next hop when the route set and target give no other.
    gateway: SocketAddr,
    local: SocketAddr,
    call_id: String,
    from: String,
    to: String,
    /// The Request-URI of requests inside the dialog.
    target: String,
    routes: Vec<String>,
    /// The ACK of the 2xx, sent again for each retransmitted 2xx.
    ack: Option<(Vec<u8>, SocketAddr)>,
}

impl Leg {
    fn request(&self, method: Method, uri: &str, branch: &str, cseq: u32) -> SipMessage {
        let mut m = SipMessage::request(method.clone(), uri);
        m.push(
            "Via",
            format!("SIP/2.0/UDP {};branch={branch};rport", self.local),
        );
        m.push("Max-Forwards", "70");
        m.push("From", self.from.clone());
        m.push("To", self.to.clone());
        m.push("Call-ID", self.call_id.clone());
        m.push("CSeq", format!("{cseq} {method}"));
        for route in &self.routes {
            m.push("Route", route.clone());
        }
        m.push("Contact", format!("<sip:load@{}>", self.local));
        m
    }

    /// Where requests inside the dialog go: the first route when it is a loose router, else
    /// the remote target (an IP address; the gateway's address otherwise).
    fn next_hop(&self) -> SocketAddr {
        let uri = match self.routes.first() {
            Some(route) => uri_of(route),
            None => self.target.as_str(),
        };
        parse_sip_uri(uri)
            .and_then(|u| {
                let ip: IpAddr = u.host.trim_matches(['[', ']']).parse().ok()?;
                Some(SocketAddr::new(
                    ip,
                    u.port.unwrap_or_else(|| default_port(uri)),
                ))
            })
            .unwrap_or(self.gateway)
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) -> Result<(), String> {
        self.sock
            .send_to(bytes, to)
            .await
            .map(|_| ())
            .map_err(|e| format!("send: {e}"))
    }

    /// A message that is not the awaited response: a retransmitted 2xx to our INVITE gets our
    /// ACK again; the gateway's BYE is answered 200 (returns true: the call is over); OPTIONS
    /// 200; any other request 501.
    async fn stray(&self, msg: &SipMessage) -> Result<bool, String> {
        if let Some(code) = msg.status() {
            let invite = msg.cseq().is_some_and(|c| c.method == Method::Invite);
            if invite && (200..300).contains(&code) {
                if let Some((ack, to)) = &self.ack {
                    self.send(ack, *to).await?;
                }
            }
            return Ok(false);
        }
        let Some(method) = msg.method().cloned() else {
            return Ok(false);
        };
        let from = msg
            .top_via()
            .and_then(|v| {
                let rport = param_of(v, "rport").and_then(|p| p.parse::<u16>().ok());
                let sent_by = via_sent_by(v)?;
                let addr: SocketAddr = sent_by.parse().ok()?;
                Some(SocketAddr::new(addr.ip(), rport.unwrap_or(addr.port())))
            })
            .unwrap_or(self.gateway);
        let (code, reason) = match method {
            Method::Ack => return Ok(false),
            Method::Bye | Method::Options => (200, "OK"),
            _ => (501, "Not Implemented"),
        };
        let response = SipMessage::response_to(msg, code, reason, None);
        self.send(&response.to_bytes(), from).await?;
        Ok(method == Method::Bye)
    }

    /// Sends `request` and retransmits it (Timer A/E) until a final response with `method`
    /// in its CSeq, which it returns; other messages meanwhile go to [`Leg::stray`] (a BYE
    /// from the gateway ends the wait with `Ok(None)`).
    async fn transaction(
        &self,
        request: &SipMessage,
        method: Method,
    ) -> Result<Option<SipMessage>, String> {
        let bytes = request.to_bytes();
        let to = if method == Method::Invite {
            self.gateway
        } else {
            self.next_hop()
        };
        let deadline = Instant::now() + TRANSACTION_TIMEOUT;
        let mut interval = T1;
        let mut resend_at = Instant::now() + interval;
        let mut provisional = false;
        self.send(&bytes, to).await?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no final response to {method} within {TRANSACTION_TIMEOUT:?}"
                ));
            }
            let wake = if provisional && method == Method::Invite {
                deadline
            } else {
                resend_at.min(deadline)
            };
            match timeout(wake - now, self.sock.recv_from(&mut buf)).await {
                Err(_) => {
                    if Instant::now() >= resend_at && !(provisional && method == Method::Invite) {
                        self.send(&bytes, to).await?;
                        interval = if method == Method::Invite {
                            interval * 2
                        } else {
                            (interval * 2).min(T2)
                        };
                        resend_at = Instant::now() + interval;
                    }
                }
                Ok(Err(e)) => return Err(format!("SIP receive: {e}")),
                Ok(Ok((n, _))) => {
                    let Ok(msg) = SipMessage::parse(&buf[..n]) else {
                        continue;
                    };
                    let ours = msg.status().is_some()
                        && msg.cseq().is_some_and(|c| c.method == method)
                        && msg.via_branch() == request.via_branch();
                    if !ours {
                        if self.stray(&msg).await? {
                            return Ok(None);
                        }
                        continue;
                    }
                    match msg.status() {
                        Some(100..=199) => {
                            provisional = true;
                            if method != Method::Invite {
                                // Timer E goes on at T2 once a provisional came.
                                interval = T2;
                            }
                        }
                        _ => return Ok(Some(msg)),
                    }
                }
            }
        }
    }
}

/// An RTP socket on an even port with its RTCP neighbour bound (the gateway sends RTCP to the
/// RTP port + 1).
fn rtp_pair() -> Result<(UdpSocket, UdpSocket), String> {
    for _ in 0..200 {
        let rtp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = rtp.local_addr().map_err(|e| e.to_string())?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        let Ok(rtcp) = std::net::UdpSocket::bind(("127.0.0.1", port + 1)) else {
            continue;
        };
        let tokio_socket = |s: std::net::UdpSocket| {
            s.set_nonblocking(true)
                .and_then(|()| UdpSocket::from_std(s))
                .map_err(|e| e.to_string())
        };
        return Ok((tokio_socket(rtp)?, tokio_socket(rtcp)?));
    }
    Err("no free even RTP port with its RTCP port".into())
}

fn offer_sdp(mode: Mode, rtp_port: u16, key: &MasterKey) -> String {
    let session: u32 = rand::random();
    let mut sdp = format!(
        "v=0\r\no=load {session} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} {} 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
        mode.label()
    );
    if mode == Mode::Srtp {
        sdp.push_str(&format!(
            "a=crypto:{}\r\n",
            sdes::crypto_value(1, SUITE, key)
        ));
    }
    sdp
}

fn branch() -> String {
    format!("z9hG4bK-{:016x}", rand::random::<u64>())
}

/// One call: INVITE, ACK, `hold` of media both ways, BYE. Fills `out` as it goes (so a
/// timeout keeps what was counted); `Err` says why the call failed.
async fn call(
    mode: Mode,
    gateway: SocketAddr,
    call_id: String,
    hold: Duration,
    progress: &Progress,
    out: &mut CallOutcome,
) -> Result<(), String> {
    let settle_failed = |out: &mut CallOutcome, why: String| {
        out.settled = true;
        progress.settle(false);
        Err(why)
    };
    let sock = match UdpSocket::bind("127.0.0.1:0").await {
        Ok(s) => s,
        Err(e) => return settle_failed(out, format!("SIP socket: {e}")),
    };
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let (rtp, rtcp) = match rtp_pair() {
        Ok(pair) => pair,
        Err(e) => return settle_failed(out, e),
    };
    let rtp_port = rtp.local_addr().map_err(|e| e.to_string())?.port();
    let our_key = MasterKey::random();
    let uri = format!("sip:support@{gateway}");
    let mut leg = Leg {
        sock,
        gateway,
        local,
        from: format!(
            "\"load\" <sip:load@{local}>;tag={:08x}",
            rand::random::<u32>()
        ),
        to: format!("<{uri}>"),
        call_id,
        target: uri.clone(),
        routes: Vec::new(),
        ack: None,
    };

    // INVITE until a final response.
    let setup_started = Instant::now();
    let invite_branch = branch();
    let mut invite = leg.request(Method::Invite, &uri, &invite_branch, 1);
    invite.set_body(
        "application/sdp",
        offer_sdp(mode, rtp_port, &our_key).into_bytes(),
    );
    let answer = match leg.transaction(&invite, Method::Invite).await {
        Ok(Some(answer)) => answer,
        Ok(None) => return settle_failed(out, "the gateway sent BYE during setup".into()),
        Err(why) => return settle_failed(out, why),
    };
    let code = answer.status().unwrap_or(0);
    leg.to = answer.header("To").unwrap_or_default().to_string();
    if !(200..300).contains(&code) {
        // The ACK of a non-2xx final response belongs to the INVITE transaction (17.1.1.3).
        let ack = leg.request(Method::Ack, &uri, &invite_branch, 1);
        leg.send(&ack.to_bytes(), gateway).await?;
        return settle_failed(out, format!("INVITE answered {code}"));
    }
    if answer.to_tag().is_none() {
        return settle_failed(out, "200 OK without a To tag".into());
    }
    if let Some(contact) = answer.header_values("Contact").next() {
        leg.target = uri_of(contact).to_string();
    }
    leg.routes = answer
        .header_values("Record-Route")
        .map(str::to_string)
        .collect::<Vec<_>>();
    leg.routes.reverse();
    let ack = leg.request(Method::Ack, &leg.target, &branch(), 1);
    let ack_to = leg.next_hop();
    let ack_bytes = ack.to_bytes();
    leg.send(&ack_bytes, ack_to).await?;
    leg.ack = Some((ack_bytes, ack_to));

    // The answer: where to send, and in SRTP mode the gateway's key.
    let wanted = match mode {
        Mode::Rtp => SrtpMode::Off,
        Mode::Srtp => SrtpMode::Required,
    };
    let media = match parse_offer_for(&answer.body, wanted) {
        Ok(m) => m,
        Err(e) => {
            let _ = bye(&leg).await;
            return settle_failed(out, format!("answer SDP: {e}"));
        }
    };
    let mut srtp = None;
    if mode == Mode::Srtp {
        let keys = sdes::choose(&media.crypto).and_then(|(tag, suite, key)| {
            if tag != 1 || suite != SUITE {
                return Err(format!("answered a=crypto tag {tag} {suite}"));
            }
            let tx = SrtpContext::new(SUITE, &our_key).map_err(|e| e.to_string())?;
            let rx = SrtpContext::new(suite, &key).map_err(|e| e.to_string())?;
            Ok((tx, rx))
        });
        match keys {
            Ok(pair) => srtp = Some(pair),
            Err(why) => {
                let _ = bye(&leg).await;
                return settle_failed(out, format!("answer SDES: {why}"));
            }
        }
    }
    out.set_up = true;
    out.setup_ms = setup_started.elapsed().as_secs_f64() * 1000.0;
    out.settled = true;
    progress.settle(true);

    let hung_up = media_loop(&leg, &rtp, &rtcp, media.remote_rtp, srtp, hold, out).await?;
    if hung_up {
        return Err("the gateway hung up before the hold time".into());
    }
    bye(&leg).await
}

/// Streams silence and receives the gateway's packets until `hold` is over; true when the
/// gateway sent BYE meanwhile.
async fn media_loop(
    leg: &Leg,
    rtp: &UdpSocket,
    rtcp: &UdpSocket,
    remote: SocketAddr,
    mut srtp: Option<(SrtpContext, SrtpContext)>,
    hold: Duration,
    out: &mut CallOutcome,
) -> Result<bool, String> {
    let end = Instant::now() + hold;
    let mut packet = RtpPacket {
        payload_type: 0,
        sequence: rand::random(),
        timestamp: rand::random(),
        ssrc: rand::random(),
        marker: true,
        payload: vec![0xFF; SAMPLES as usize],
    };
    let mut tick = tokio::time::interval(PTIME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut rtp_buf, mut rtcp_buf, mut sip_buf) =
        (vec![0u8; 2048], vec![0u8; 2048], vec![0u8; 65_535]);
    let mut last_arrival: Option<Instant> = None;
    let mut first_seq: Option<i64> = None;
    let mut highest: i64 = 0;
    let mut errors = 0u32;
    loop {
        tokio::select! {
            _ = sleep_until(end) => break,
            _ = tick.tick() => {
                let plain = packet.to_bytes();
                let bytes = match srtp.as_mut() {
                    Some((tx, _)) => tx.protect_rtp(&plain).map_err(|e| format!("protect: {e}"))?,
                    None => plain,
                };
                rtp.send_to(&bytes, remote).await.map_err(|e| format!("RTP send: {e}"))?;
                out.sent += 1;
                packet.marker = false;
                packet.sequence = packet.sequence.wrapping_add(1);
                packet.timestamp = packet.timestamp.wrapping_add(SAMPLES);
            }
            r = rtp.recv_from(&mut rtp_buf) => {
                let at = Instant::now();
                let n = match r {
                    Ok((n, _)) => n,
                    Err(e) => {
                        errors += 1;
                        if errors > 100 {
                            return Err(format!("RTP receive: {e}"));
                        }
                        continue;
                    }
                };
                let plain = match srtp.as_mut() {
                    Some((_, rx)) => match rx.unprotect_rtp(&rtp_buf[..n]) {
                        Ok(p) => p,
                        Err(_) => {
                            out.unprotect_failures += 1;
                            continue;
                        }
                    },
                    None => rtp_buf[..n].to_vec(),
                };
                let Ok(p) = parse_rtp(&plain) else {
                    continue;
                };
                out.received += 1;
                let ext = match first_seq {
                    None => {
                        let s = i64::from(p.sequence);
                        first_seq = Some(s);
                        s
                    }
                    Some(_) => {
                        let delta = i64::from(p.sequence.wrapping_sub(highest as u16) as i16);
                        highest + delta
                    }
                };
                highest = highest.max(ext);
                if let Some(prev) = last_arrival {
                    let gap = at - prev;
                    out.gaps.record(gap.abs_diff(PTIME));
                }
                last_arrival = Some(at);
            }
            r = rtcp.recv_from(&mut rtcp_buf) => {
                let Ok((n, _)) = r else {
                    errors += 1;
                    if errors > 100 {
                        return Err("RTCP receive errors".into());
                    }
                    continue;
                };
                out.rtcp_received += 1;
                if let Some((_, rx)) = srtp.as_mut() {
                    if rx.unprotect_rtcp(&rtcp_buf[..n]).is_err() {
                        out.rtcp_unprotect_failures += 1;
                    }
                }
            }
            r = leg.sock.recv_from(&mut sip_buf) => {
                let Ok((n, _)) = r else {
                    errors += 1;
                    if errors > 100 {
                        return Err("SIP receive errors".into());
                    }
                    continue;
                };
                if let Ok(msg) = SipMessage::parse(&sip_buf[..n]) {
                    if leg.stray(&msg).await? {
                        return Ok(true);
                    }
                }
            }
        }
    }
    if let Some(first) = first_seq {
        out.expected = u64::try_from(highest - first + 1).unwrap_or(0);
    }
    Ok(false)
}

/// BYE (CSeq 2) and its 200.
async fn bye(leg: &Leg) -> Result<(), String> {
    let request = leg.request(Method::Bye, &leg.target, &branch(), 2);
    match leg.transaction(&request, Method::Bye).await? {
        // The gateway's own BYE crossed ours: the call is over either way.
        None => Ok(()),
        Some(r) if r.status() == Some(200) => Ok(()),
        Some(r) => Err(format!("BYE answered {}", r.status().unwrap_or(0))),
    }
}

/// The gateway's records of the calls whose Call-ID starts with `prefix` (waits up to 10 s for
/// `expected` of them: records are written as calls end).
fn gateway_figures(dir: &Path, prefix: &str, mode: Mode, expected: u64) -> GatewayFigures {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut figures = GatewayFigures::default();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if !json["call_id"]
                .as_str()
                .is_some_and(|c| c.starts_with(prefix))
            {
                continue;
            }
            figures.records += 1;
            let rtp = &json["rtp"];
            let n = |k: &str| rtp[k].as_u64().unwrap_or(0);
            figures.packets_received += n("packets_received");
            figures.srtp_drops += n("srtp_auth_failures") + n("srtp_replays") + n("srtp_malformed");
            let suite = rtp["srtp"].as_str();
            let right = match mode {
                Mode::Rtp => suite.is_none(),
                Mode::Srtp => suite == Some(SUITE.name()),
            };
            if !right {
                figures.wrong_suite += 1;
            }
            for pair in rtp["send_late_histogram"].as_array().into_iter().flatten() {
                let bucket = pair[0].as_u64().unwrap_or(0) as usize;
                figures.send_late.add(bucket, pair[1].as_u64().unwrap_or(0));
            }
        }
        if figures.records >= expected || std::time::Instant::now() >= deadline {
            return figures;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The per-mode averages over rounds: (cpu share, ms per call-second, rss kB, merged rx gaps,
/// merged gateway send lateness, and the sums).
struct Average {
    mode: Mode,
    rounds: usize,
    cpu_share: f64,
    cpu_ms_per_call_s: f64,
    rss_kb: f64,
    harness_share: f64,
    up: u64,
    failed: u64,
    received: u64,
    expected: u64,
    unprotect_failures: u64,
    rtcp_unprotect_failures: u64,
    gateway_srtp_drops: u64,
    rx_gaps: Histogram,
    send_late: Histogram,
}

fn average(runs: &[ModeRun], mode: Mode) -> Average {
    let of: Vec<&ModeRun> = runs.iter().filter(|r| r.mode == mode).collect();
    let measured: Vec<&&ModeRun> = of.iter().filter(|r| r.cpu_share.is_finite()).collect();
    let mean = |f: &dyn Fn(&ModeRun) -> f64| {
        if measured.is_empty() {
            f64::NAN
        } else {
            measured.iter().map(|r| f(r)).sum::<f64>() / measured.len() as f64
        }
    };
    let mut avg = Average {
        mode,
        rounds: of.len(),
        cpu_share: mean(&|r| r.cpu_share),
        cpu_ms_per_call_s: mean(&|r| r.cpu_ms_per_call_s()),
        rss_kb: mean(&|r| r.rss_kb as f64),
        harness_share: mean(&|r| r.harness_share),
        up: 0,
        failed: 0,
        received: 0,
        expected: 0,
        unprotect_failures: 0,
        rtcp_unprotect_failures: 0,
        gateway_srtp_drops: 0,
        rx_gaps: Histogram::default(),
        send_late: Histogram::default(),
    };
    for r in &of {
        avg.up += r.up;
        avg.failed += r.failed;
        avg.received += r.received;
        avg.expected += r.expected;
        avg.unprotect_failures += r.unprotect_failures;
        avg.rtcp_unprotect_failures += r.rtcp_unprotect_failures;
        avg.gateway_srtp_drops += r.gateway.srtp_drops;
        avg.rx_gaps.merge(&r.rx_gaps);
        avg.send_late.merge(&r.gateway.send_late);
    }
    avg
}

/// One table line: round and mode left-aligned, the figures right-aligned.
fn table_line(cells: [String; 12]) -> String {
    const WIDTHS: [usize; 12] = [5, 8, 9, 7, 9, 10, 6, 17, 8, 6, 9, 8];
    cells
        .iter()
        .zip(WIDTHS)
        .enumerate()
        .map(|(i, (cell, w))| {
            if i < 2 {
                format!("{cell:<w$}")
            } else {
                format!("{cell:>w$}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The figures of a row, whatever it averages.
struct Row<'a> {
    round: String,
    mode: Mode,
    up: u64,
    failed: u64,
    cpu_share: f64,
    ms_per_call_s: f64,
    rss_mb: f64,
    rx_gaps: &'a Histogram,
    send_late: &'a Histogram,
    loss_pct: f64,
    unprotect: (u64, u64),
    gateway_drops: u64,
}

impl Row<'_> {
    fn line(&self) -> String {
        table_line([
            self.round.clone(),
            self.mode.label().to_string(),
            format!("{}/{}", self.up, self.failed),
            format!("{:.1}", self.cpu_share * 100.0),
            format!("{:.2}", self.ms_per_call_s),
            format!("{:.3}", self.ms_per_call_s / 10.0),
            format!("{:.0}", self.rss_mb),
            format!(
                "{:.1}/{:.1}",
                self.rx_gaps.quantile(0.5),
                self.rx_gaps.quantile(0.99)
            ),
            format!("{:.1}", self.send_late.quantile(0.99)),
            format!("{:.2}", self.loss_pct),
            format!("{}/{}", self.unprotect.0, self.unprotect.1),
            self.gateway_drops.to_string(),
        ])
    }
}

fn print_table(runs: &[ModeRun], base_rss: u64) {
    let header = |cells: [&str; 12]| table_line(cells.map(str::to_string));
    println!();
    println!(
        "{}",
        header([
            "round",
            "mode",
            "up/",
            "gateway",
            "CPU ms",
            "% of core",
            "RSS",
            "rx jitter",
            "gw send",
            "rx",
            "unprotect",
            "gw SRTP",
        ])
    );
    println!(
        "{}",
        header([
            "",
            "",
            "failed",
            "% core",
            "per call-s",
            "per call",
            "MB",
            "p50/p99 ms",
            "p99 ms",
            "loss %",
            "RTP/RTCP",
            "drops",
        ])
    );
    for r in runs {
        let row = Row {
            round: r.round.to_string(),
            mode: r.mode,
            up: r.up,
            failed: r.failed,
            cpu_share: r.cpu_share,
            ms_per_call_s: r.cpu_ms_per_call_s(),
            rss_mb: r.rss_kb as f64 / 1024.0,
            rx_gaps: &r.rx_gaps,
            send_late: &r.gateway.send_late,
            loss_pct: r.loss_pct(),
            unprotect: (r.unprotect_failures, r.rtcp_unprotect_failures),
            gateway_drops: r.gateway.srtp_drops,
        };
        println!("{}", row.line());
    }
    let avgs = [average(runs, Mode::Rtp), average(runs, Mode::Srtp)];
    for a in &avgs {
        let loss_pct = if a.expected == 0 {
            f64::NAN
        } else {
            100.0 * a.expected.saturating_sub(a.received) as f64 / a.expected as f64
        };
        let row = Row {
            round: "mean".into(),
            mode: a.mode,
            up: a.up,
            failed: a.failed,
            cpu_share: a.cpu_share,
            ms_per_call_s: a.cpu_ms_per_call_s,
            rss_mb: a.rss_kb / 1024.0,
            rx_gaps: &a.rx_gaps,
            send_late: &a.send_late,
            loss_pct,
            unprotect: (a.unprotect_failures, a.rtcp_unprotect_failures),
            gateway_drops: a.gateway_srtp_drops,
        };
        println!("{}", row.line());
    }
    let [rtp, srtp] = &avgs;
    println!(
        "SRTP - RTP: {:+.2} ms of gateway CPU per second of call ({:+.3} % of a core per call), \
         over {} round(s)",
        srtp.cpu_ms_per_call_s - rtp.cpu_ms_per_call_s,
        (srtp.cpu_ms_per_call_s - rtp.cpu_ms_per_call_s) / 10.0,
        srtp.rounds.min(rtp.rounds)
    );
    println!(
        "gateway memory: {} MB idle; the callers (this process) used {:.1} % (RTP) / {:.1} % \
         (SRTP) of a core",
        base_rss / 1024,
        rtp.harness_share * 100.0,
        srtp.harness_share * 100.0
    );
}

fn to_json(settings: Settings, runs: &[ModeRun], base_rss: u64, idle: f64) -> serde_json::Value {
    // Three decimals are plenty; NaN (not measured) is null.
    let finite = |x: f64| x.is_finite().then(|| (x * 1000.0).round() / 1000.0);
    let rows: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "round": r.round,
                "mode": r.mode.label(),
                "calls": r.calls,
                "up": r.up,
                "failed": r.failed,
                "failures": r.failures,
                "setup_ms_max": finite(r.setup_ms_max),
                "window_s": finite(r.window_s),
                "gateway_cpu_share": finite(r.cpu_share),
                "cpu_ms_per_call_second": finite(r.cpu_ms_per_call_s()),
                "core_pct_per_call": finite(r.cpu_ms_per_call_s() / 10.0),
                "gateway_rss_mb": finite(r.rss_kb as f64 / 1024.0),
                "harness_cpu_share": finite(r.harness_share),
                "packets_sent": r.sent,
                "packets_received": r.received,
                "packets_expected": r.expected,
                "loss_pct": finite(r.loss_pct()),
                "rx_jitter_p50_ms": finite(r.rx_gaps.quantile(0.5)),
                "rx_jitter_p99_ms": finite(r.rx_gaps.quantile(0.99)),
                "unprotect_failures": r.unprotect_failures,
                "rtcp_received": r.rtcp_received,
                "rtcp_unprotect_failures": r.rtcp_unprotect_failures,
                "gateway_records": r.gateway.records,
                "gateway_packets_received": r.gateway.packets_received,
                "gateway_srtp_drops": r.gateway.srtp_drops,
                "gateway_wrong_suite": r.gateway.wrong_suite,
                "gateway_send_late_p99_ms": finite(r.gateway.send_late.quantile(0.99)),
            })
        })
        .collect();
    let means: Vec<serde_json::Value> = [Mode::Rtp, Mode::Srtp]
        .into_iter()
        .map(|m| {
            let a = average(runs, m);
            serde_json::json!({
                "mode": m.label(),
                "rounds": a.rounds,
                "up": a.up,
                "failed": a.failed,
                "gateway_cpu_share": finite(a.cpu_share),
                "cpu_ms_per_call_second": finite(a.cpu_ms_per_call_s),
                "core_pct_per_call": finite(a.cpu_ms_per_call_s / 10.0),
                "gateway_rss_mb": finite(a.rss_kb / 1024.0),
                "rx_jitter_p50_ms": finite(a.rx_gaps.quantile(0.5)),
                "rx_jitter_p99_ms": finite(a.rx_gaps.quantile(0.99)),
                "gateway_send_late_p99_ms": finite(a.send_late.quantile(0.99)),
                "unprotect_failures": a.unprotect_failures,
                "rtcp_unprotect_failures": a.rtcp_unprotect_failures,
                "gateway_srtp_drops": a.gateway_srtp_drops,
            })
        })
        .collect();
    serde_json::json!({
        "calls": settings.calls,
        "rate": settings.rate,
        "hold_s": settings.hold.as_secs(),
        "rounds": settings.rounds,
        "suite": SUITE.name(),
        "gateway_idle_rss_mb": finite(base_rss as f64 / 1024.0),
        "gateway_idle_cpu_share": finite(idle),
        "runs": rows,
        "means": means,
    })
}

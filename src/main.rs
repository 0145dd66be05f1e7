//! The `voicebot` command: the binary edge, where errors become messages and exit codes.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use voicebot_gateway::config::GatewayConfig;
use voicebot_gateway::flows::Flow;
use voicebot_gateway::simulate::batch::{
    expand_inputs, output_stem, run_file, write_json, FileResult,
};
use voicebot_gateway::simulate::render;
use voicebot_gateway::simulate::scenario::{run_scenario, ScenarioResult};
use voicebot_gateway::{asr_eval, engines};

#[derive(Parser)]
#[command(
    name = "voicebot",
    version,
    about = "Offline voicebot telephony gateway"
)]
struct Cli {
    /// Gateway configuration (TOML); the embedded defaults when absent.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output (-v: decisions, -vv: pipeline details). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run recorded calls (WAV files or directories of them) or scenario files through the bot.
    Simulate {
        /// WAV files or directories; with --scenario, scenario files or directories of *.toml.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Treat the paths as scenario files and check their expectations.
        #[arg(long)]
        scenario: bool,
        /// Where the bot's audio and the JSON reports are written.
        #[arg(long, default_value = "simulate-out")]
        out: PathBuf,
        /// Print the JSON reports on stdout instead of the text view.
        #[arg(long)]
        json: bool,
        /// The flow that answers (default: the configured default flow). Scenario files may
        /// name their own.
        #[arg(long, value_name = "NAME")]
        flow: Option<String>,
    },
    /// Measure speech recognition on telephone speech: word error rate per line condition,
    /// digit strings, latency after the end of speech, partial passes, and the dialog's
    /// decisions on what was heard; several engines side by side.
    BenchAsr {
        /// Engines to compare: moonshine:base, moonshine:tiny, moonshine:DIR, whisper,
        /// whisper:FILE (repeatable; default: the configured engine).
        #[arg(long = "engine", value_name = "ENGINE[:MODEL]")]
        engines: Vec<String>,
        /// Real human clips: a directory with clips.tsv and the WAVs
        /// (`python3 scripts/fetch-eval-speech.py` makes it).
        #[arg(long, value_name = "DIR")]
        human: Option<PathBuf>,
        /// At most this many synthetic utterances per split (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Also decode each utterance as it grows, as a live call does, to cost the partials.
        #[arg(long)]
        partials: bool,
        /// Decode spoken numbers without expecting digits (a live call expects them once the
        /// bot has asked for the number): what listening for digits brings.
        #[arg(long)]
        no_digit_context: bool,
        /// Print every utterance's reference and transcript.
        #[arg(long)]
        rows: bool,
        /// Also write every row as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Answer SIP calls (UDP and TCP) with the bot until SIGINT/SIGTERM (the first drains: new
    /// calls get 503, calls in progress finish; a second hangs up at once).
    Serve {
        /// SIP listen address, overriding `[sip] listen` (port 0: a free port).
        #[arg(long, value_name = "ADDR:PORT")]
        sip: Option<std::net::SocketAddr>,
        /// RTP port range LO-HI, overriding `[media] rtp_port_min/max`.
        #[arg(long, value_name = "LO-HI")]
        rtp_ports: Option<String>,
        /// Calls taken at once, overriding `[sip] max_calls` and the per-core limit of
        /// `[admission] calls_per_core` (the lateness check `max_turn_wait_ms` still holds).
        #[arg(long, value_name = "N")]
        max_calls: Option<usize>,
        /// Write one JSON record per finished call here, overriding `[sip] report_dir`.
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// The journal of calls in progress, overriding `[sip] journal` ("" = none).
        #[arg(long, value_name = "FILE")]
        journal: Option<String>,
        /// Where the console, agent screen and admin API listen, overriding `[http] listen`
        /// (default 127.0.0.1:8080; port 0: a free port; "" = no HTTP side).
        #[arg(long, value_name = "ADDR:PORT")]
        http: Option<String>,
    },
    /// Validate the configuration and dialog files, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "voicebot_gateway=info,warn",
        _ => "voicebot_gateway=debug,info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal: a log file, a pipe or journald gets plain text
    // (NO_COLOR turns them off at a terminal too).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

fn load_config(path: Option<&Path>) -> anyhow::Result<GatewayConfig> {
    Ok(match path {
        Some(p) => GatewayConfig::load(p)?,
        None => GatewayConfig::embedded()?,
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Serve {
            sip,
            rtp_ports,
            max_calls,
            report_dir,
            journal,
            http,
        } => {
            if let Some(http) = http {
                anyhow::ensure!(
                    http.is_empty() || http.parse::<std::net::SocketAddr>().is_ok(),
                    "--http `{http}`: expected ADDR:PORT (e.g. 127.0.0.1:8080), or \"\" for no HTTP side"
                );
                config.http.listen = http;
            }
            if let Some(journal) = journal {
                config.sip.journal = PathBuf::from(journal);
            }
            if let Some(range) = rtp_ports {
                let (lo, hi) = parse_port_range(&range)?;
                config.media.rtp_port_min = lo;
                config.media.rtp_port_max = hi;
            }
            if let Some(n) = max_calls {
                anyhow::ensure!(n > 0, "--max-calls must be at least 1");
                config.sip.max_calls = n;
                config.admission.calls_per_core = 0;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(config, sip, report_dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let flows = engines::load_flows(&config)?;
            println!(
                "configuration OK; intent engine {:?}; flows: {}",
                config.intent.engine,
                flows.names().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchAsr {
            engines,
            human,
            limit,
            partials,
            no_digit_context,
            rows,
            json,
        } => {
            let specs = if engines.is_empty() {
                vec![format!(
                    "{}:{}",
                    config.asr.engine.name(),
                    config.asr.model.display()
                )]
            } else {
                engines
            };
            let specs = specs
                .iter()
                .map(|s| asr_eval::parse_engine(s.trim_end_matches(':'), &config.asr))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let flows = engines::load_flows(&config)?;
            let flow = flows.default_flow();
            let judge = asr_eval::DialogJudge::new(
                flow.dialog.clone(),
                voicebot_gateway::pipeline::flow_vocabulary(&flow).with_dictionary(
                    voicebot_gateway::speech::asr::vocabulary::Dictionary::shared(
                        &config.asr.dictionary,
                    ),
                ),
            );
            let started = std::time::Instant::now();
            let items = asr_eval::set::build(&asr_eval::set::SetSpec {
                root: &voicebot_gateway::config::home::home(),
                tts: &config.tts,
                human: human.as_deref(),
                limit,
            })?;
            eprintln!(
                "bench-asr: {} utterances ready in {} ms",
                items.len(),
                started.elapsed().as_millis()
            );
            let mut reports = Vec::new();
            for spec in &specs {
                let options = asr_eval::RunOptions {
                    partials,
                    digit_context: !no_digit_context,
                };
                let report = asr_eval::run_engine(spec, &items, &judge, options)
                    .map_err(anyhow::Error::msg)?;
                if rows {
                    for r in &report.rows {
                        println!(
                            "{} [{}] {} | {} | ref: {} | heard: {}",
                            spec.label, r.id, r.condition, r.voice, r.reference, r.hypothesis
                        );
                    }
                }
                reports.push(report);
            }
            let ceiling = asr_eval::text_ceiling(&items, &judge);
            print!("{}", asr_eval::render(&reports, &ceiling));
            if let Some(path) = json {
                write_json(&path, &reports).map_err(anyhow::Error::msg)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            paths,
            scenario,
            out,
            json,
            flow,
        } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("{}: cannot create output directory", out.display()))?;
            let engines = engines::load(config)?;
            let set = engines.flows.current();
            let flow = match flow {
                None => set.default_flow(),
                Some(name) => set.get(&name).with_context(|| {
                    format!("unknown flow `{name}` (flows: {})", set.names().join(", "))
                })?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let ok = if scenario {
                runtime.block_on(simulate_scenarios(&engines, flow, &paths, &out, json))?
            } else {
                runtime.block_on(simulate_files(&engines, flow, &paths, &out, json))?
            };
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `LO-HI`, an even low port and a higher high port.
fn parse_port_range(range: &str) -> anyhow::Result<(u16, u16)> {
    let (lo, hi) = range
        .split_once('-')
        .with_context(|| format!("--rtp-ports `{range}`: expected LO-HI, e.g. 20000-29999"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .with_context(|| format!("--rtp-ports `{range}`: bad low port"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .with_context(|| format!("--rtp-ports `{range}`: bad high port"))?;
    anyhow::ensure!(
        lo >= 1024 && lo.is_multiple_of(2) && hi > lo,
        "--rtp-ports `{range}`: the low port must be even and at least 1024, the high port above it"
    );
    Ok((lo, hi))
}

async fn serve(
    config: GatewayConfig,
    sip: Option<std::net::SocketAddr>,
    report_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (lo, hi) = (config.media.rtp_port_min, config.media.rtp_port_max);
    let engines = tokio::task::spawn_blocking(move || engines::load(config))
        .await
        .context("loading models")??;
    engines::keep_prompts_ready(&engines);
    let flows = engines.flows.current();
    let mut server = voicebot_gateway::server::Server::bind(engines, sip).await?;
    server.set_report_dir(report_dir);
    let addr = server.local_addr();
    {
        use std::io::Write;
        use voicebot_gateway::server::banner::{Banner, FlowBanner, HttpBanner};
        let banner = Banner {
            sip: addr,
            rtp: (lo, hi),
            tls: server.tls_addr(),
            http: server.http().map(|(addr, agent_token_source)| HttpBanner {
                addr,
                agent_token_source,
                admin_token_source: server.admin_token_source().unwrap_or("nowhere"),
            }),
            flows: flows
                .flows()
                .map(|f| FlowBanner {
                    name: &f.name,
                    numbers: &f.numbers,
                })
                .collect(),
            default_flow: flows.default_name(),
            storage: server
                .storage()
                .map(|s| (s.shown_url.as_str(), s.node.as_str())),
        }
        .render();
        // One write: the banner arrives whole. A closed stdout (a supervisor that read the
        // ready line and went away) must not stop a running gateway, so errors are only logged.
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(banner.as_bytes()).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "cannot print the ready banner on stdout");
        }
    }
    tracing::info!(%addr, "SIP listening (UDP and TCP)");
    tokio::spawn(forward_signals(server.stopper()));
    server.run(std::future::pending::<()>()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Passes every SIGINT and SIGTERM to the server's stopper: the first drains (new calls get
/// 503, calls in progress finish, then the gateway exits), the next hangs up at once.
async fn forward_signals(stopper: std::sync::Arc<voicebot_gateway::observe::readiness::Stopper>) {
    #[cfg(unix)]
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT still stops the gateway");
            None
        }
    };
    loop {
        #[cfg(unix)]
        let which = tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT"),
            Some(()) = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            } => Ok("SIGTERM"),
        };
        #[cfg(not(unix))]
        let which = tokio::signal::ctrl_c().await.map(|()| "SIGINT");
        match which {
            Ok(name) => {
                let level = stopper.signal();
                tracing::info!(signal = name, ?level, "stop signal");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
                return;
            }
        }
    }
}

fn progress(n: usize) -> ProgressBar {
    if n < 2 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} calls  {elapsed}  {msg}")
    {
        pb.set_style(style);
    }
    pb
}

async fn simulate_files(
    engines: &voicebot_gateway::pipeline::Engines,
    flow: Arc<Flow>,
    paths: &[PathBuf],
    out: &Path,
    json: bool,
) -> anyhow::Result<bool> {
    let inputs = expand_inputs(paths, "wav");
    if inputs.is_empty() {
        anyhow::bail!("no WAV files found in {}", display_list(paths));
    }
    let pb = progress(inputs.len());
    let mut taken = HashSet::new();
    let mut results: Vec<FileResult> = Vec::new();
    for input in &inputs {
        pb.set_message(input.display().to_string());
        let stem = output_stem(input, &mut taken);
        let result = run_file(engines, flow.clone(), input, out, &stem).await;
        pb.suspend(|| print_file(&result, json));
        pb.inc(1);
        results.push(result);
    }
    pb.finish_and_clear();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    write_json(&out.join("summary.json"), &results).map_err(anyhow::Error::msg)?;
    if !json {
        if inputs.len() > 1 {
            println!("{}", render::summary_table(&results));
        }
        println!(
            "{} call{}, {} failed; reports in {}",
            results.len(),
            if results.len() == 1 { "" } else { "s" },
            failed,
            out.display()
        );
    }
    Ok(failed == 0)
}

fn print_file(result: &FileResult, json: bool) {
    if json {
        match serde_json::to_string(result) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!(
                "error: {}: cannot encode report: {e}",
                result.file.display()
            ),
        }
        if let Some(e) = &result.error {
            eprintln!("error: {e}");
        }
        return;
    }
    if let Some(e) = &result.error {
        eprintln!("error: {e}");
    }
    if let Some(report) = &result.report {
        print!(
            "{}",
            render::call_text(&result.file.display().to_string(), report)
        );
        if let (Some(wav), Some(js)) = (&result.bot_audio, &result.json_report) {
            println!("  wrote {} and {}", wav.display(), js.display());
        }
    }
}

async fn simulate_scenarios(
    engines: &voicebot_gateway::pipeline::Engines,
    flow: Arc<Flow>,
    paths: &[PathBuf],
    out: &Path,
    json: bool,
) -> anyhow::Result<bool> {
    let files = expand_inputs(paths, "toml");
    if files.is_empty() {
        anyhow::bail!("no scenario files found in {}", display_list(paths));
    }
    let pb = progress(files.len());
    let mut taken = HashSet::new();
    let mut results: Vec<ScenarioResult> = Vec::new();
    for file in &files {
        pb.set_message(file.display().to_string());
        let (result, call) = run_scenario(engines, flow.clone(), file).await;
        let stem = output_stem(file, &mut taken);
        if let Some(call) = &call {
            if let Err(e) = voicebot_gateway::audio::wav::write_wav(
                &out.join(format!("{stem}.bot.wav")),
                &call.bot_track,
            ) {
                eprintln!("error: {e}");
            }
        }
        if let Err(e) = write_json(&out.join(format!("{stem}.json")), &result) {
            eprintln!("error: {e}");
        }
        pb.suspend(|| {
            if json {
                if let Ok(s) = serde_json::to_string(&result) {
                    println!("{s}");
                }
                return;
            }
            if let Some(report) = &result.report {
                print!("{}", render::call_text(&file.display().to_string(), report));
            }
            if result.passed {
                println!("  PASS {}", file.display());
            } else {
                for f in &result.failures {
                    println!("  FAIL {}: {f}", file.display());
                }
            }
        });
        pb.inc(1);
        results.push(result);
    }
    pb.finish_and_clear();
    let passed = results.iter().filter(|r| r.passed).count();
    let failed = results.len() - passed;
    write_json(&out.join("summary.json"), &results).map_err(anyhow::Error::msg)?;
    // The plain closing line CI reads.
    println!("scenarios: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

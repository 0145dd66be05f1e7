//! Voice benchmark: time to first audio and real-time factor of the bot's voice on one
//! thread, the figures a caller feels (the pause before the bot answers, and whether
//! synthesis keeps ahead of playout).
//!
//! Run: `cargo bench --bench voice` (after `python3 models/provision.py`). For each of ten
//! typical replies it measures, through the same path as a call (text normalisation, the
//! voice's unit split, synthesis, level): the time to the first unit's audio, the whole
//! reply's synthesis time and its audio length. Each reply runs REPEAT times (environment,
//! default 5); the first run and the median are printed. Targets (issue 7): first audio at most
//! 120 ms for the first sentence of a typical reply, RTF at most 0.1. espeak-ng's figures are
//! printed beside for comparison. Then the prompt cache: how long keeping the embedded flow's
//! fixed prompts ready takes (as the gateway does at start), and what a kept unit costs a call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use voicebot_gateway::config::GatewayConfig;
use voicebot_gateway::dialog::escalation::EscalationConfig;
use voicebot_gateway::engines::fixed_prompt_units;
use voicebot_gateway::flows::{as_is, FlowSet};
use voicebot_gateway::speech::tts::SpeechSynthesizer;
use voicebot_gateway::speech::tts_cache::{CacheLimits, CachedSynthesizer};
use voicebot_gateway::speech::voice::{TtsEngine, Voice};

const REPLIES: &[&str] = &[
    "I'm transferring you to a colleague who is an expert in billing. Please hold the line.",
    "Thanks. I have noted order number 4471. Its current status and tracking link are in the confirmation email for that order. Is there anything else I can help you with?",
    "We're open Monday to Friday from 8 in the morning to 6 in the evening. On Sundays we're closed.",
    "Hello, and thank you for calling. You are speaking with our automated assistant. How can I help you today?",
    "No problem. I've sent a password reset link to the email address we have on file.",
    "Your refund of $42.50 was sent to your card on November 28.",
    "Sorry, I didn't quite understand that. Could you say it in other words?",
    "Your appointment is confirmed for Tuesday at 10:30. Is there anything else?",
    "Sure, I can check that for you. What is your order number?",
    "Thank you for calling. Goodbye!",
];

struct Figures {
    first_audio: Duration,
    whole: Duration,
    audio_s: f64,
}

fn measure(voice: &Voice, text: &str) -> Figures {
    let started = Instant::now();
    let units = voice.units(text);
    let mut first_audio = Duration::ZERO;
    let mut audio_s = 0.0;
    for (i, unit) in units.iter().enumerate() {
        let speech = voice.synthesize(unit).expect("synthesis");
        if i == 0 {
            first_audio = started.elapsed();
        }
        audio_s += speech.audio.samples.len() as f64 / f64::from(speech.audio.rate);
    }
    Figures {
        first_audio,
        whole: started.elapsed(),
        audio_s,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints the table for one engine; returns (worst median first audio ms, overall RTF).
fn run(name: &str, voice: &Voice, repeat: usize) -> (f64, f64) {
    println!(
        "\n{name} ({} engine), {repeat} runs per reply, one thread",
        voice.engine()
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "reply", "1st run", "median", "whole", "audio", "RTF"
    );
    let (mut worst, mut synth, mut audio) = (0.0f64, 0.0, 0.0);
    for text in REPLIES {
        let runs: Vec<Figures> = (0..repeat).map(|_| measure(voice, text)).collect();
        let first = median(runs.iter().map(|f| ms(f.first_audio)).collect());
        let whole = median(runs.iter().map(|f| ms(f.whole)).collect());
        let seconds = runs[0].audio_s;
        worst = worst.max(first);
        synth += whole / 1000.0;
        audio += seconds;
        let label: String = text.chars().take(42).collect();
        println!(
            "{label:<44} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.2}s {:>7.3}",
            ms(runs[0].first_audio),
            first,
            whole,
            seconds,
            whole / 1000.0 / seconds.max(1e-9)
        );
    }
    let rtf = synth / audio.max(1e-9);
    println!("{name}: worst median time to first audio {worst:.1} ms; RTF {rtf:.3} over {audio:.1} s of speech");
    (worst, rtf)
}

/// Keeping the embedded flow's fixed prompts ready (what the gateway does at start), then the
/// time a call waits for one of them.
fn prompt_cache(voice: Voice) {
    let flows = FlowSet::embedded(&EscalationConfig::default(), &as_is).expect("embedded flow");
    let cache = CachedSynthesizer::new(Arc::new(voice), CacheLimits::default());
    let units = fixed_prompt_units(&cache, &flows);
    let report = cache.keep(&units);
    let audio_s: f64 = units
        .iter()
        .map(|(u, s)| {
            let a = cache.synthesize_in(u, s).expect("kept").audio;
            a.samples.len() as f64 / f64::from(a.rate)
        })
        .sum();
    let greeting = flows.default_flow().dialog.prompts().greeting();
    let first = cache.units(&greeting).remove(0);
    let started = Instant::now();
    let n = 1000;
    for _ in 0..n {
        cache.synthesize(&first).expect("kept");
    }
    println!(
        "\nprompt cache: {} fixed units ({audio_s:.1} s of speech) kept ready in {:.0} ms \
         ({} failed); a kept unit then takes {:.1} us",
        units.len(),
        ms(report.elapsed),
        report.failed,
        started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
}

fn main() {
    let repeat: usize = std::env::var("REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut config = GatewayConfig::embedded().expect("embedded configuration");
    config.tts.neural.threads = 1;
    let load = Instant::now();
    let neural = Voice::load(&config.tts);
    println!("voice load: {:.0} ms", ms(load.elapsed()));
    if neural.engine() != "neural" {
        eprintln!("the neural voice did not load: run `python3 models/provision.py`");
        std::process::exit(1);
    }
    let (first, rtf) = run("neural", &neural, repeat);
    prompt_cache(neural);
    config.tts.engine = TtsEngine::Espeak;
    let espeak = Voice::load(&config.tts);
    run("espeak-ng", &espeak, repeat.min(2));
    println!(
        "\ntargets: first audio <= 120 ms: {} ({first:.1} ms); RTF <= 0.1: {} ({rtf:.3})",
        if first <= 120.0 { "met" } else { "MISSED" },
        if rtf <= 0.1 { "met" } else { "MISSED" }
    );
}

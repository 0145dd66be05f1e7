//! Dialog latency per caller turn, without speech: `Bot::on_utterance` (normalisation, intent,
//! slots, emotion, escalation policy, reply) with the rule classifier and with the default hybrid
//! engine (sentence embeddings; needs `python3 models/provision.py`), `normalize` alone, and the
//! voice side of emotion (`prosody::analyze` on a 3 s utterance), on a mix of 10 typical
//! transcripts. Each turn is the first of a fresh call (the bot is built outside the timing);
//! `bot_new` measures that per-call set-up on its own.
//!
//! ```sh
//! cargo bench --bench dialog                                   # full run
//! cargo bench --bench dialog -- --warm-up-time 1 --measurement-time 3   # about 15 s
//! ```
//!
//! Throughput is reported in turns per second; time per turn is the mix's time divided by 10.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use voicebot_gateway::dialog::normalize::normalize;
use voicebot_gateway::dialog::{Bot, CallerTurn, DialogAssets, EscalationConfig};

/// Typical transcripts as whisper writes them: requests, social turns, an escalation, a slot.
const MIX: [&str; 10] = [
    "Hi, where is my order?",
    "My order number is 4 5 7 1 2.",
    "um i can't get into my account, I think I forgot my password",
    "What are your opening hours on Saturday?",
    "Thank you so much, that's really helpful.",
    "I want to speak to a real person.",
    "I don't want to cancel, I just want to check my order.",
    "This is absolutely ridiculous, I've been waiting three weeks!",
    "uh yeah hi so like my parcel still hasn't arrived and it's been ten days",
    "OK, that's all, goodbye.",
];

fn assets() -> Arc<DialogAssets> {
    Arc::new(DialogAssets::embedded().expect("embedded dialog assets are valid"))
}

/// Times the mix of first turns, each on a fresh bot over `assets`, as benchmark `group`.
fn first_turns(c: &mut Criterion, group: &str, assets: Arc<DialogAssets>) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(MIX.len() as u64));
    group.bench_function("mix_of_10_first_turns", |b| {
        b.iter_batched(
            || {
                MIX.iter()
                    .map(|_| Bot::new(Arc::clone(&assets), EscalationConfig::default()))
                    .collect::<Vec<_>>()
            },
            |bots| {
                for (mut bot, text) in bots.into_iter().zip(MIX) {
                    black_box(bot.on_utterance(CallerTurn::new(black_box(text), 0.9)));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn on_utterance(c: &mut Criterion) {
    first_turns(c, "on_utterance", assets());
}

/// The default flow's dialog with the configured default engine (hybrid), as calls get it.
fn hybrid_assets() -> Arc<DialogAssets> {
    let config = voicebot_gateway::config::GatewayConfig::embedded().expect("embedded config");
    let flows = voicebot_gateway::engines::load_flows(&config)
        .expect("flows and the intent model load (run `python3 models/provision.py`)");
    flows.default_flow().dialog.clone()
}

fn on_utterance_hybrid(c: &mut Criterion) {
    first_turns(c, "on_utterance_hybrid", hybrid_assets());
}

/// Voice emotion input: prosody of 3 s of a harmonic voice-like signal at 16 kHz.
fn prosody_3s(c: &mut Criterion) {
    let samples: Vec<f32> = (0..48_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            let env = (std::f32::consts::PI * 4.0 * t).sin().abs();
            (1..=5)
                .map(|h| (2.0 * std::f32::consts::PI * 140.0 * h as f32 * t).sin() / h as f32)
                .sum::<f32>()
                * 0.2
                * env
        })
        .collect();
    c.bench_function("prosody_analyze_3s", |b| {
        b.iter(|| {
            black_box(voicebot_gateway::speech::prosody::analyze(black_box(
                &samples,
            )))
        })
    });
}

fn normalize_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements(MIX.len() as u64));
    group.bench_function("mix_of_10", |b| {
        b.iter(|| {
            for text in MIX {
                black_box(normalize(black_box(text)));
            }
        })
    });
    group.finish();
}

fn bot_new(c: &mut Criterion) {
    let assets = assets();
    c.bench_function("bot_new", |b| {
        b.iter(|| black_box(Bot::new(Arc::clone(&assets), EscalationConfig::default())))
    });
}

criterion_group!(
    benches,
    on_utterance,
    on_utterance_hybrid,
    prosody_3s,
    normalize_only,
    bot_new
);
criterion_main!(benches);

//! The bot must be intelligible: its replies, spoken by the default voice and squeezed through an
//! 8 kHz telephone band, are recognised again by the speech model and must keep their words.

use voicebot_gateway::audio::resample::resample_all;
use voicebot_gateway::dialog::escalation::EscalationConfig;
use voicebot_gateway::dialog::normalize::normalize;
use voicebot_gateway::dialog::{Bot, CallerTurn};
use voicebot_gateway::flows::{as_is, FlowSet, FlowsConfig};
use voicebot_gateway::speech::asr::{self, AsrConfig, SpeechRecognizer};
use voicebot_gateway::speech::tts::{EspeakSynthesizer, SpeechSynthesizer, TtsConfig};

/// The bot's replies to a few typical calls, as the dialog engine writes them.
fn bot_replies() -> Vec<String> {
    // The default flow, with its order-status data, as calls get it.
    let flow = FlowSet::load(
        &FlowsConfig::default(),
        &EscalationConfig::default(),
        &as_is,
    )
    .expect("flows load")
    .default_flow();
    let assets = flow.dialog.clone();
    let mut replies = Vec::new();
    let calls: &[&[&str]] = &[
        &[
            "where is my order",
            "my order number is 4 5 7 1 2",
            "thank you goodbye",
        ],
        &["what are your opening hours"],
        &["I forgot my password"],
        &["I want to speak to a person"],
        &["I want to cancel my subscription"],
    ];
    for call in calls {
        let mut bot = Bot::new(assets.clone(), EscalationConfig::default());
        replies.push(bot.greeting());
        for text in *call {
            let turn = bot.on_utterance(CallerTurn::new(*text, 0.95));
            replies.push(turn.reply);
        }
    }
    replies.retain(|r| !r.trim().is_empty());
    replies.sort();
    replies.dedup();
    replies
}

/// Normalised words; digit runs count digit by digit ("457" and "4 5 7" are the same words).
fn words(text: &str) -> Vec<String> {
    normalize(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .flat_map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                w.chars().map(String::from).collect::<Vec<_>>()
            } else {
                vec![w.to_string()]
            }
        })
        .collect()
}

/// Word recall of each reply after TTS, an optional telephone band, and ASR.
fn recall(
    asr: &dyn SpeechRecognizer,
    tts: &EspeakSynthesizer,
    replies: &[String],
    telephone: bool,
) -> Vec<(f32, usize, usize)> {
    replies
        .iter()
        .map(|reply| {
            let speech = tts.synthesize(reply).expect("tts");
            let wide = if telephone {
                let phone =
                    resample_all(&speech.audio.samples, speech.audio.rate, 8000).expect("to 8k");
                resample_all(&phone, 8000, 16000).expect("to 16k")
            } else {
                resample_all(&speech.audio.samples, speech.audio.rate, 16000).expect("to 16k")
            };
            let heard = asr.transcribe(&wide).expect("asr");
            let heard_words = words(&heard.text);
            let expected = words(reply);
            let found = expected.iter().filter(|w| heard_words.contains(w)).count();
            let r = found as f32 / expected.len().max(1) as f32;
            println!(
                "{} {r:.2}  said: {reply}\n           heard: {}",
                if telephone { "phone" } else { "wide " },
                heard.text
            );
            (r, found, expected.len())
        })
        .collect()
}

fn overall(rows: &[(f32, usize, usize)]) -> f32 {
    let found: usize = rows.iter().map(|r| r.1).sum();
    let total: usize = rows.iter().map(|r| r.2).sum();
    found as f32 / total.max(1) as f32
}

#[test]
fn replies_survive_tts_and_asr() {
    assert!(
        std::path::Path::new("models/moonshine/base-en/tokenizer.bin").is_file(),
        "models/moonshine/base-en is missing: run `python3 models/provision.py`"
    );
    let asr = asr::load(&AsrConfig::default()).expect("model loads");
    let tts = EspeakSynthesizer::new(TtsConfig::default());
    let replies = bot_replies();
    assert!(replies.len() >= 6, "too few distinct replies: {replies:?}");

    // The voice itself, at the speech model's rate: every reply must come back nearly whole.
    let wide = recall(asr.as_ref(), &tts, &replies, false);
    for (row, reply) in wide.iter().zip(&replies) {
        assert!(
            row.0 >= 0.75,
            "reply unintelligible ({:.2}): {reply:?}",
            row.0
        );
    }
    let wide_overall = overall(&wide);
    // Through an 8 kHz telephone band: espeak-ng heard by whisper tiny.en loses words (the
    // neural-voice issue measured 26.6 % WER); this guards against getting worse than that.
    let phone = recall(asr.as_ref(), &tts, &replies, true);
    let phone_overall = overall(&phone);
    println!(
        "word recall over {} replies: wideband {wide_overall:.3}, telephone band {phone_overall:.3}",
        replies.len()
    );
    assert!(wide_overall >= 0.85, "wideband recall {wide_overall:.3}");
    assert!(phone_overall >= 0.65, "telephone recall {phone_overall:.3}");
}

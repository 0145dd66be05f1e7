//! Each speech recogniser on speech through a G.711 line (the neural voice), recognised by
//! Moonshine base (the default), Moonshine tiny and whisper tiny.en, with word confidences, a
//! partial pass on the first part of the utterance, and spoken digits.

use voicebot_gateway::asr_eval::channel::{transmit, CONDITIONS};
use voicebot_gateway::asr_eval::score;
use voicebot_gateway::config::GatewayConfig;
use voicebot_gateway::speech::asr::{self, AsrConfig, Engine, Pass, SpeechRecognizer};
use voicebot_gateway::speech::tts::SpeechSynthesizer;
use voicebot_gateway::speech::voice::Voice;

/// `text` said by the neural voice over a plain G.711 mu-law line, at 16 kHz. (espeak-ng's
/// robotic voices are in `voicebot bench-asr`'s set; here the point is that each engine works.)
fn phone_speech(text: &str) -> Vec<f32> {
    let config = GatewayConfig::embedded().expect("embedded configuration");
    let voice = Voice::load(&config.tts);
    assert_eq!(
        voice.engine(),
        "neural",
        "the neural voice did not load: run `python3 models/provision.py`"
    );
    let speech = voice.synthesize(text).expect("speech");
    let line = CONDITIONS
        .iter()
        .find(|c| c.name == "g711u")
        .expect("plain G.711 line");
    transmit(&speech.audio.samples, speech.audio.rate, line, 1).expect("line")
}

fn load(engine: Engine, model: &str) -> std::sync::Arc<dyn SpeechRecognizer> {
    let config = AsrConfig {
        engine,
        model: model.into(),
        ..AsrConfig::default()
    };
    asr::load(&config)
        .unwrap_or_else(|e| panic!("{engine:?} {model}: {e} (python3 models/provision.py)"))
}

fn check_engine(engine: Engine, model: &str) {
    let asr = load(engine, model);
    let audio = phone_speech("Where is my parcel? It was due on Monday.");
    let t = asr.decode(&audio, Pass::Final).expect("final pass");
    let words = score::normalize(&t.text);
    for expected in ["parcel", "monday"] {
        assert!(
            words.iter().any(|w| w == expected),
            "{}: {expected:?} not in {:?}",
            asr.describe(),
            t.text
        );
    }
    assert!(
        !t.words.is_empty(),
        "{}: no word confidences",
        asr.describe()
    );
    assert!(
        t.words.iter().all(|w| (0.0..=1.0).contains(&w.confidence)),
        "{:?}",
        t.words
    );
    assert!(
        t.confidence > 0.3,
        "{}: confidence {}",
        asr.describe(),
        t.confidence
    );
    // A partial pass over the first half hears the start of the sentence.
    let partial = asr
        .decode(&audio[..audio.len() / 2], Pass::Partial)
        .expect("partial pass");
    assert!(
        score::normalize(&partial.text)
            .iter()
            .any(|w| w == "where" || w == "parcel"),
        "{}: partial {:?}",
        asr.describe(),
        partial.text
    );
    // Silence gives no words worth acting on.
    let silence = vec![0.0f32; 16_000];
    let quiet = asr.decode(&silence, Pass::Final).expect("silence");
    assert!(
        quiet.text.split_whitespace().count() <= 2,
        "{}: heard {:?} in silence",
        asr.describe(),
        quiet.text
    );
}

#[test]
fn moonshine_base_recognises_phone_speech() {
    check_engine(Engine::Moonshine, "base");
}

#[test]
fn moonshine_tiny_recognises_phone_speech() {
    check_engine(Engine::Moonshine, "tiny");
}

#[test]
fn whisper_still_recognises_phone_speech() {
    check_engine(Engine::Whisper, "models/ggml-tiny.en.bin");
}

/// Order numbers said digit by digit with pauses come through as their digits.
#[test]
fn the_default_engine_gets_spoken_order_numbers() {
    let asr = asr::load(&AsrConfig::default()).expect("default engine");
    let cases = [
        ("My order number is four, five, seven, one, two.", "45712"),
        ("It's eight, three, double zero, six.", "83006"),
        ("The reference is two, nine, one, four.", "2914"),
    ];
    let mut wrong = Vec::new();
    for (text, digits) in cases {
        let t = asr.transcribe(&phone_speech(text)).expect("recognised");
        if score::digits(&t.text) != digits {
            wrong.push(format!("{text:?} -> {:?}", t.text));
        }
    }
    assert!(wrong.is_empty(), "digits misheard: {wrong:#?}");
}

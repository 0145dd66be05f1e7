//! Loading the shared engines (speech model, voice, flows, inference pool) from a validated
//! configuration, once per process.

use std::sync::Arc;

use crate::config::{GatewayConfig, IntentEngine};
use crate::config_file::ConfigError;
use crate::dialog::embedding::{hybrid_with_encoder, EmbeddingError, SentenceEncoder};
use crate::dialog::llm::LlmClassifier;
use crate::dialog::DialogAssets;
use crate::flows::{as_is, FlowSet, FlowStore, Overlay};
use crate::pipeline::Engines;
use crate::speech::asr::{self, AsrError};
use crate::speech::pool::InferencePool;
use crate::speech::tts::SpeechSynthesizer;
use crate::speech::tts_cache::{CacheLimits, CachedSynthesizer};
use crate::speech::turn_end::TurnEndModel;
use crate::speech::voice::{TtsEngine, Voice, VoiceStyle};

/// Why the engines could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Asr(#[from] AsrError),
    #[error(transparent)]
    Intent(#[from] EmbeddingError),
}

/// The sentence encoder for `model`/`tokenizer`, loaded once per process: flows reloaded (or
/// validated) later share the model already in memory instead of loading a second copy.
fn shared_encoder(
    model: &std::path::Path,
    tokenizer: &std::path::Path,
) -> Result<Arc<SentenceEncoder>, EmbeddingError> {
    type Loaded = Vec<(std::path::PathBuf, std::path::PathBuf, Arc<SentenceEncoder>)>;
    static LOADED: std::sync::Mutex<Loaded> = std::sync::Mutex::new(Vec::new());
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, _, encoder)) = loaded.iter().find(|(m, t, _)| m == model && t == tokenizer) {
        return Ok(Arc::clone(encoder));
    }
    let encoder = Arc::new(SentenceEncoder::load(model, tokenizer)?);
    loaded.push((
        model.to_path_buf(),
        tokenizer.to_path_buf(),
        Arc::clone(&encoder),
    ));
    Ok(encoder)
}

/// Loads the flows named in the configuration (or the embedded default flow), each with the
/// configured intent classifier.
pub fn load_flows(config: &GatewayConfig) -> Result<FlowSet, LoadError> {
    load_flows_with(config, &Overlay::new())
}

/// [`load_flows`] with some files replaced or hidden (see [`Overlay`]): the admin API's
/// validation of an edit, by the very checks a load from disk makes.
pub fn load_flows_with(config: &GatewayConfig, overlay: &Overlay) -> Result<FlowSet, LoadError> {
    // With `[intent.llm] enabled`, the endpoint classifies first and the engine below is its
    // fallback.
    let llm = &config.intent.llm;
    let front = |assets: DialogAssets| {
        if !llm.enabled {
            return assets;
        }
        tracing::info!(url = %llm.url, model = %llm.model, timeout_ms = llm.timeout_ms,
            "intents classified by the LLM endpoint, with the offline engine as fallback");
        assets.wrap_classifier(|offline, intents| {
            Box::new(LlmClassifier::new(llm.clone(), intents, offline))
        })
    };
    match config.intent.engine {
        IntentEngine::Rules => Ok(FlowSet::load_with(
            &config.flows,
            &config.escalation,
            &|a| front(as_is(a)),
            overlay,
        )?),
        IntentEngine::Hybrid => {
            // One encoder shared by every flow; each flow embeds its own examples.
            let encoder = shared_encoder(&config.intent.model, &config.intent.tokenizer)?;
            // The flow loader's hook cannot fail, so the first model error is kept and returned.
            let failure = std::cell::RefCell::new(None);
            let customize =
                |assets: DialogAssets| match hybrid_with_encoder(&assets, Arc::clone(&encoder)) {
                    Ok(hybrid) => front(assets.with_classifier(Box::new(hybrid))),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                        assets
                    }
                };
            let set = FlowSet::load_with(&config.flows, &config.escalation, &customize, overlay)?;
            match failure.into_inner() {
                Some(e) => Err(e.into()),
                None => Ok(set),
            }
        }
    }
}

/// The fixed prompts of every flow in `flows` (see [`crate::dialog::prompts::Prompts::fixed`]),
/// cut into the units calls synthesise, each in its flow's voice; greetings first, since
/// they are needed first.
pub fn fixed_prompt_units(
    tts: &dyn SpeechSynthesizer,
    flows: &crate::flows::FlowSet,
) -> Vec<(String, VoiceStyle)> {
    let mut seen = std::collections::HashSet::new();
    let mut units = Vec::new();
    let fixed: Vec<_> = flows
        .flows()
        .map(|f| (f.dialog.prompts().fixed(), f.voice))
        .collect();
    let longest = fixed.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    // Round robin over the flows: every flow's greeting before any flow's second prompt.
    for i in 0..longest {
        for (texts, style) in &fixed {
            let Some(text) = texts.get(i) else { continue };
            for unit in tts.units(text) {
                if seen.insert((unit.clone(), style.exact_key())) {
                    units.push((unit, *style));
                }
            }
        }
    }
    units
}

/// Synthesises the current flows' fixed prompts into the prompt cache on a thread of its own,
/// and keeps them there until the next call of this (at start and after each flow change), so
/// the greeting and the other fixed prompts cost nothing at call time. A call arriving
/// meanwhile is not held up: it synthesises what is not ready yet itself.
pub fn keep_prompts_ready(engines: &Engines) {
    let tts = Arc::clone(&engines.tts);
    let flows = engines.flows.current();
    let default_engine = engines.config.tts.engine;
    let spawned = std::thread::Builder::new()
        .name("prompt-cache".into())
        .spawn(move || {
            // Here, off the runtime: asking may load the neural voice.
            for flow in flows.flows() {
                let asked = flow.voice.engine.unwrap_or(default_engine);
                let speaks = tts.engine_for(&flow.voice);
                if asked == TtsEngine::Neural && speaks != "neural" {
                    tracing::warn!(flow = %flow.name, speaks, "the flow asks for the neural voice, which is not available; it speaks with espeak-ng");
                }
            }
            // Cut after the check: a voice loaded by it cuts units its own way, as calls will.
            let units = fixed_prompt_units(tts.as_ref(), &flows);
            let report = tts.keep(&units);
            tracing::info!(
                units = units.len(),
                synthesized = report.synthesized,
                already_cached = report.cached,
                failed = report.failed,
                superseded = report.superseded,
                ms = report.elapsed.as_millis() as u64,
                "fixed prompts ready in the prompt cache"
            );
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the prompt cache's thread; prompts are synthesised at first use");
    }
}

/// Loads everything a call needs.
pub fn load(config: GatewayConfig) -> Result<Engines, LoadError> {
    let flows = load_flows(&config)?;
    // One session of each model per worker, opened and warmed now rather than by a call.
    let asr = asr::load_with_sessions(&config.asr, config.pool.workers)?;
    // At the pipeline's rate, so cached units are used as they are.
    let tts = Voice::load(&config.tts).at_rate(crate::audio::SPEECH_RATE);
    let pool = InferencePool::new(config.pool.workers, config.pool.queue);
    let turn_end = load_turn_end(&config);
    Ok(Engines {
        config: Arc::new(config),
        asr,
        tts: Arc::new(CachedSynthesizer::new(
            Arc::new(tts),
            CacheLimits::default(),
        )),
        flows: Arc::new(FlowStore::new(flows)),
        pool,
        turn_end,
    })
}

/// The turn-end model, or none (configured off, or it cannot load: the gateway still answers,
/// each turn then ending after `vad.end_silence_ms` of silence, and says so).
fn load_turn_end(config: &GatewayConfig) -> Option<Arc<TurnEndModel>> {
    let path = &config.turn.model;
    if path.as_os_str().is_empty() {
        tracing::info!("no turn-end model ([turn] model is empty): turns end after vad.end_silence_ms of silence");
        return None;
    }
    match TurnEndModel::load_with_sessions(&config.asr.onnx_library, path, config.pool.workers) {
        Ok(model) => {
            tracing::info!(model = %path.display(), threshold = config.turn.threshold, "turn-end model loaded");
            Some(Arc::new(model))
        }
        Err(e) => {
            tracing::error!(error = %e, end_silence_ms = config.vad.end_silence_ms, "the turn-end model cannot load: every turn ends after the longest silence");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::wav::MonoAudio;
    use crate::flows::FlowStore;
    use crate::speech::tts::{Speech, TtsError};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct NoAsr;

    impl crate::speech::asr::SpeechRecognizer for NoAsr {
        fn decode_expecting(
            &self,
            _: &[f32],
            _: crate::speech::asr::Pass,
            _: crate::speech::asr::Expectation,
        ) -> Result<crate::speech::asr::Transcript, crate::speech::asr::AsrError> {
            Err(crate::speech::asr::AsrError::Inference(
                "no speech here".into(),
            ))
        }
    }

    /// Counts syntheses; 10 ms of silence each.
    struct Counting(AtomicUsize);

    impl SpeechSynthesizer for Counting {
        fn synthesize_in(&self, _: &str, _: &VoiceStyle) -> Result<Speech, TtsError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Speech {
                audio: MonoAudio {
                    samples: vec![0.0; 160],
                    rate: 16_000,
                },
                elapsed: std::time::Duration::ZERO,
            })
        }
    }

    #[test]
    fn every_flows_fixed_prompts_are_kept_ready_greeting_first() {
        let flows = FlowSet::embedded(&Default::default(), &as_is).expect("embedded flow");
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let engines = Engines {
            config: Arc::new(GatewayConfig::default()),
            asr: Arc::new(NoAsr),
            tts: Arc::new(CachedSynthesizer::new(
                counting.clone(),
                CacheLimits::default(),
            )),
            flows: Arc::new(FlowStore::new(flows)),
            pool: InferencePool::new(1, 4),
            turn_end: None,
        };
        let set = engines.flows.current();
        let units = fixed_prompt_units(engines.tts.as_ref(), &set);
        let greeting = set.default_flow().dialog.prompts().greeting();
        assert_eq!(units[0].0, engines.tts.units(&greeting)[0]);
        assert!(units.len() > 20, "{units:?}");
        assert!(units
            .iter()
            .all(|(u, s)| !u.contains('{') && *s == VoiceStyle::default()));
        let report = engines.tts.keep(&units);
        assert_eq!(report.synthesized, units.len());
        assert_eq!(counting.0.load(Ordering::SeqCst), units.len());
        // A call's greeting and transfer announcement now cost nothing.
        let flow = set.default_flow();
        let prompts = flow.dialog.prompts();
        for text in [prompts.greeting(), prompts.transfer("billing")] {
            for unit in engines.tts.units(&text) {
                assert!(engines.tts.synthesize(&unit).is_ok());
            }
        }
        assert_eq!(counting.0.load(Ordering::SeqCst), units.len());
    }
}

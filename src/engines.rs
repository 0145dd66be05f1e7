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
use crate::speech::asr::{AsrError, WhisperRecognizer};
use crate::speech::pool::InferencePool;
use crate::speech::tts_cache::{CacheLimits, CachedSynthesizer};
use crate::speech::voice::Voice;

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

/// Loads everything a call needs.
pub fn load(config: GatewayConfig) -> Result<Engines, LoadError> {
    let flows = load_flows(&config)?;
    let asr = WhisperRecognizer::load(&config.asr)?;
    let tts = Voice::load(&config.tts);
    let pool = InferencePool::new(config.pool.workers, config.pool.queue);
    Ok(Engines {
        config: Arc::new(config),
        asr: Arc::new(asr),
        tts: Arc::new(CachedSynthesizer::new(
            Arc::new(tts),
            CacheLimits::default(),
        )),
        flows: Arc::new(FlowStore::new(flows)),
        pool,
    })
}

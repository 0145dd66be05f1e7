//! Loading the shared engines (speech model, voice, flows, inference pool) from a validated
//! configuration, once per process.

use std::sync::Arc;

use crate::config::GatewayConfig;
use crate::config_file::ConfigError;
use crate::flows::{as_is, FlowSet, FlowStore};
use crate::pipeline::Engines;
use crate::speech::asr::{AsrError, WhisperRecognizer};
use crate::speech::pool::InferencePool;
use crate::speech::tts::EspeakSynthesizer;

/// Why the engines could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Asr(#[from] AsrError),
}

/// Loads the flows named in the configuration (or the embedded default flow).
pub fn load_flows(config: &GatewayConfig) -> Result<FlowSet, ConfigError> {
    FlowSet::load(&config.flows, &config.escalation, &as_is)
}

/// Loads everything a call needs.
pub fn load(config: GatewayConfig) -> Result<Engines, LoadError> {
    let flows = load_flows(&config)?;
    let asr = WhisperRecognizer::load(&config.asr)?;
    let tts = EspeakSynthesizer::new(config.tts.clone());
    let pool = InferencePool::new(config.pool.workers, config.pool.queue);
    Ok(Engines {
        config: Arc::new(config),
        asr: Arc::new(asr),
        tts: Arc::new(tts),
        flows: Arc::new(FlowStore::new(flows)),
        pool,
    })
}

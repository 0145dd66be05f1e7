//! Loading the shared engines (speech model, voice, dialog content, inference pool) from a
//! validated configuration, once per process.

use std::sync::Arc;

use crate::config::GatewayConfig;
use crate::config_file::ConfigError;
use crate::dialog::DialogAssets;
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

/// Loads the dialog content named in the configuration (or the embedded defaults).
pub fn load_dialog(config: &GatewayConfig) -> Result<DialogAssets, ConfigError> {
    match (&config.dialog.intents, &config.dialog.prompts) {
        (None, None) => DialogAssets::embedded(),
        (intents, prompts) => {
            let intents = intents
                .clone()
                .unwrap_or_else(|| "sip-config/intents.toml".into());
            let prompts = prompts.clone().unwrap_or_else(|| "prompts/en.toml".into());
            DialogAssets::load(&intents, &prompts)
        }
    }
}

/// Loads everything a call needs.
pub fn load(config: GatewayConfig) -> Result<Engines, LoadError> {
    let dialog = load_dialog(&config)?;
    let asr = WhisperRecognizer::load(&config.asr)?;
    let tts = EspeakSynthesizer::new(config.tts.clone());
    let pool = InferencePool::new(config.pool.workers, config.pool.queue);
    Ok(Engines {
        config: Arc::new(config),
        asr: Arc::new(asr),
        tts: Arc::new(tts),
        dialog: Arc::new(dialog),
        pool,
    })
}

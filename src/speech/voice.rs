//! The bot's voice as the rest of the gateway uses it: the configured engine behind one
//! [`SpeechSynthesizer`], with the text made speakable first and the level made even after.
//!
//! # Why this shape
//!
//! - **One default, one fallback.** The neural voice (hibari, see
//!   [`crate::speech::neural`]) is the default: it is far more intelligible over a phone line
//!   than espeak-ng. Its files come from `models/provision.py`; when they are missing or do
//!   not load, the gateway still talks, with espeak-ng, and says so in a warning at start. A
//!   unit the neural voice fails to synthesise is spoken by espeak-ng too (logged), so a
//!   caller never meets silence because of one odd sentence.
//! - **Text normalisation is the voice's job**, not each prompt author's: order numbers, money,
//!   times and dates are expanded ([`crate::speech::normalize`]) before any engine sees them,
//!   so every engine reads "4471" as "four four seven one" after "order".
//! - **Even level.** Engines differ (the neural voice is about -26 dBFS RMS); every unit is
//!   brought to `[tts] peak_dbfs` so prompts from different engines sound alike and G.711 never
//!   clips.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::neural::hibari::HibariVoice;
use super::normalize::normalize;
use super::tts::{
    normalize_peak, EspeakSynthesizer, Speech, SpeechSynthesizer, TtsConfig, TtsError,
};

/// Which engine speaks (`[tts] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TtsEngine {
    /// The neural voice (hibari through ONNX Runtime), espeak-ng as the fallback.
    #[default]
    Neural,
    /// espeak-ng only.
    Espeak,
}

/// The configured voice (see the module documentation).
pub struct Voice {
    primary: Arc<dyn SpeechSynthesizer>,
    /// espeak-ng behind the neural voice; `None` when espeak-ng is the primary.
    fallback: Option<Arc<dyn SpeechSynthesizer>>,
    peak_dbfs: f32,
    /// "neural" or "espeak-ng": which engine is speaking, for logs and reports.
    name: &'static str,
}

impl Voice {
    /// The voice `config` asks for; never fails: without the neural voice's files, espeak-ng.
    pub fn load(config: &TtsConfig) -> Voice {
        let espeak: Arc<dyn SpeechSynthesizer> = Arc::new(EspeakSynthesizer::new(config.clone()));
        let peak_dbfs = config.peak_dbfs;
        match config.engine {
            TtsEngine::Espeak => Voice {
                primary: espeak,
                fallback: None,
                peak_dbfs,
                name: "espeak-ng",
            },
            TtsEngine::Neural => match HibariVoice::load(&config.neural) {
                Ok(neural) => {
                    tracing::info!(dir = %config.neural.dir.display(), "neural voice loaded (hibari); espeak-ng is the fallback");
                    Voice {
                        primary: Arc::new(neural),
                        fallback: Some(espeak),
                        peak_dbfs,
                        name: "neural",
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the neural voice is not available; the bot speaks with espeak-ng (run `python3 models/provision.py`)");
                    Voice {
                        primary: espeak,
                        fallback: None,
                        peak_dbfs,
                        name: "espeak-ng",
                    }
                }
            },
        }
    }

    /// A voice over given engines (tests, benchmarks).
    pub fn with_engines(
        primary: Arc<dyn SpeechSynthesizer>,
        fallback: Option<Arc<dyn SpeechSynthesizer>>,
        peak_dbfs: f32,
        name: &'static str,
    ) -> Voice {
        Voice {
            primary,
            fallback,
            peak_dbfs,
            name,
        }
    }

    /// Which engine speaks: "neural" or "espeak-ng".
    pub fn engine(&self) -> &'static str {
        self.name
    }
}

impl SpeechSynthesizer for Voice {
    fn units(&self, text: &str) -> Vec<String> {
        self.primary.units(&normalize(text))
    }

    fn synthesize(&self, text: &str) -> Result<Speech, TtsError> {
        let spoken = normalize(text);
        let mut speech = match self.primary.synthesize(&spoken) {
            Ok(s) => s,
            Err(e) => match &self.fallback {
                Some(fallback) => {
                    tracing::warn!(error = %e, text = %spoken, "the neural voice failed; espeak-ng says it");
                    fallback.synthesize(&spoken)?
                }
                None => return Err(e),
            },
        };
        normalize_peak(&mut speech.audio.samples, self.peak_dbfs);
        Ok(speech)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::wav::MonoAudio;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records what it was asked to say; when `fails`, fails on texts containing "fail".
    #[derive(Default)]
    struct Recorder {
        said: Mutex<Vec<String>>,
        level: f32,
        fails: bool,
    }

    impl SpeechSynthesizer for Recorder {
        fn synthesize(&self, text: &str) -> Result<Speech, TtsError> {
            self.said.lock().unwrap().push(text.to_string());
            if self.fails && text.contains("fail") {
                return Err(TtsError::Failed {
                    program: "test".into(),
                    reason: "asked to".into(),
                });
            }
            Ok(Speech {
                audio: MonoAudio {
                    samples: vec![self.level, -self.level, 0.0],
                    rate: 24_000,
                },
                elapsed: Duration::ZERO,
            })
        }
    }

    #[test]
    fn engines_hear_normalised_text_at_an_even_level() {
        let neural = Arc::new(Recorder {
            level: 0.05,
            ..Recorder::default()
        });
        let voice = Voice::with_engines(neural.clone(), None, -6.0, "neural");
        let s = voice.synthesize("Your order 4471 ships at 9:30.").unwrap();
        assert_eq!(
            neural.said.lock().unwrap()[0],
            normalize("Your order 4471 ships at 9:30.")
        );
        assert!(!neural.said.lock().unwrap()[0].contains('4'));
        let peak = s.audio.samples.iter().fold(0f32, |a, b| a.max(b.abs()));
        assert!((peak - 10f32.powf(-6.0 / 20.0)).abs() < 1e-3, "{peak}");
        let units = voice.units("Order 4471 shipped. It arrives Monday.");
        assert_eq!(units.len(), 2);
        assert!(units.iter().all(|u| !u.contains('4')), "{units:?}");
    }

    #[test]
    fn a_failing_neural_unit_is_said_by_the_fallback() {
        let neural = Arc::new(Recorder {
            level: 0.1,
            fails: true,
            ..Recorder::default()
        });
        let espeak = Arc::new(Recorder {
            level: 0.5,
            ..Recorder::default()
        });
        let voice = Voice::with_engines(neural.clone(), Some(espeak.clone()), -3.0, "neural");
        assert!(voice.synthesize("this will fail").is_ok());
        assert_eq!(espeak.said.lock().unwrap().len(), 1);
        let alone = Voice::with_engines(neural, None, -3.0, "neural");
        assert!(alone.synthesize("this will fail").is_err());
    }

    #[test]
    fn missing_neural_files_fall_back_to_espeak() {
        let mut config = TtsConfig::default();
        config.neural.dir = "/nonexistent/hibari".into();
        let voice = Voice::load(&config);
        assert_eq!(voice.engine(), "espeak-ng");
        config.engine = TtsEngine::Espeak;
        assert_eq!(Voice::load(&config).engine(), "espeak-ng");
    }
}

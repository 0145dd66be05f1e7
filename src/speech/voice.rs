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
//! - **A style per flow.** A flow may pick its engine, pace and level ([`VoiceStyle`], the
//!   flow file's `[voice]`): a sales line can sound brisker than a complaints line without a
//!   second gateway. The style travels with every synthesis (and into the prompt cache's key);
//!   the neural voice is loaded once, on first use when espeak-ng is the default.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::neural::hibari::{HibariConfig, HibariVoice};
use super::normalize::normalize;
use super::tts::{
    normalize_peak, EspeakSynthesizer, Speech, SpeechSynthesizer, TtsConfig, TtsError,
};
use crate::audio::resample::resample_all;

/// Which engine speaks (`[tts] engine`, a flow's `[voice] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TtsEngine {
    /// The neural voice (hibari through ONNX Runtime), espeak-ng as the fallback.
    #[default]
    Neural,
    /// espeak-ng only.
    Espeak,
}

impl TtsEngine {
    /// The engine's name in settings and logs.
    pub fn name(self) -> &'static str {
        match self {
            TtsEngine::Neural => "neural",
            TtsEngine::Espeak => "espeak",
        }
    }
}

/// How one flow's bot sounds (`[voice]` in a flow file): which engine, how fast, how loud.
/// The default is the gateway's `[tts]` voice unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceStyle {
    /// The engine; absent: the gateway's `[tts] engine`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<TtsEngine>,
    /// Pace relative to the engine's configured pace (`[tts.neural] speed`, `[tts] rate_wpm`),
    /// within [`VoiceStyle::SPEED`]; 1.0 leaves it as configured.
    pub speed: f32,
    /// Level relative to `[tts] peak_dbfs` in dB, within [`VoiceStyle::GAIN_DB`]; the peak
    /// never goes above 0 dBFS (G.711 would clip).
    pub gain_db: f32,
}

impl Default for VoiceStyle {
    fn default() -> Self {
        VoiceStyle {
            engine: None,
            speed: 1.0,
            gain_db: 0.0,
        }
    }
}

impl VoiceStyle {
    /// Allowed `speed`: half to twice the configured pace.
    pub const SPEED: std::ops::RangeInclusive<f32> = 0.5..=2.0;
    /// Allowed `gain_db`.
    pub const GAIN_DB: std::ops::RangeInclusive<f32> = -20.0..=6.0;

    /// The first setting out of range, as (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !Self::SPEED.contains(&self.speed) {
            return Err((
                "speed",
                format!(
                    "{} is outside {}..={} (1.0 = the configured pace)",
                    self.speed,
                    Self::SPEED.start(),
                    Self::SPEED.end()
                ),
            ));
        }
        if !Self::GAIN_DB.contains(&self.gain_db) {
            return Err((
                "gain_db",
                format!(
                    "{} dB is outside {}..={} dB (0 = the gateway's [tts] peak_dbfs)",
                    self.gain_db,
                    Self::GAIN_DB.start(),
                    Self::GAIN_DB.end()
                ),
            ));
        }
        Ok(())
    }

    /// The style exactly, for cache keys: two styles that sound different never share one
    /// (unlike [`VoiceStyle::key`], which rounds).
    pub fn exact_key(&self) -> String {
        format!(
            "{}/{:08x}/{:08x}",
            self.engine.map_or("default", TtsEngine::name),
            self.speed.to_bits(),
            self.gain_db.to_bits()
        )
    }

    /// A short text naming the style, for logs and the admin API ("default/1.00/+0.0").
    pub fn key(&self) -> String {
        format!(
            "{}/{:.2}/{:+.1}",
            self.engine.map_or("default", TtsEngine::name),
            self.speed,
            self.gain_db
        )
    }
}

/// The configured voice (see the module documentation).
pub struct Voice {
    /// The engine of `[tts] engine`, for styles that name none.
    default_engine: TtsEngine,
    espeak: Arc<dyn SpeechSynthesizer>,
    /// The neural voice, loaded when first needed (at start when it is the default); `None`
    /// inside when it could not be loaded (espeak-ng speaks then).
    neural: OnceLock<Option<Arc<dyn SpeechSynthesizer>>>,
    /// Where the neural voice is loaded from; `None` for voices built from given engines.
    neural_config: Option<HibariConfig>,
    peak_dbfs: f32,
    /// The rate every unit is delivered at (`None`: each engine's own).
    rate: Option<u32>,
}

impl Voice {
    /// The voice `config` asks for; never fails: without the neural voice's files, espeak-ng.
    /// The neural voice is loaded now when it is the default engine, else when a flow first
    /// asks for it.
    pub fn load(config: &TtsConfig) -> Voice {
        let voice = Voice {
            default_engine: config.engine,
            espeak: Arc::new(EspeakSynthesizer::new(config.clone())),
            neural: OnceLock::new(),
            neural_config: Some(config.neural.clone()),
            peak_dbfs: config.peak_dbfs,
            rate: None,
        };
        if config.engine == TtsEngine::Neural {
            voice.neural();
        }
        voice
    }

    /// A voice over given engines (tests, benchmarks): `neural` (none: espeak-ng speaks for
    /// it) and espeak-ng, `default` for styles that name no engine.
    pub fn with_engines(
        neural: Option<Arc<dyn SpeechSynthesizer>>,
        espeak: Arc<dyn SpeechSynthesizer>,
        default: TtsEngine,
        peak_dbfs: f32,
    ) -> Voice {
        Voice {
            default_engine: default,
            espeak,
            neural: OnceLock::from(neural),
            neural_config: None,
            peak_dbfs,
            rate: None,
        }
    }

    /// This voice delivering every unit at `rate` (resampled where it synthesises, i.e. on the
    /// inference pool), so the prompt cache holds audio the call path uses as it is.
    pub fn at_rate(self, rate: u32) -> Voice {
        Voice {
            rate: Some(rate),
            ..self
        }
    }

    /// The neural voice, loading it on first use; `None` (warned once) when it cannot load.
    fn neural(&self) -> Option<&Arc<dyn SpeechSynthesizer>> {
        self.neural
            .get_or_init(|| {
                let config = self.neural_config.as_ref()?;
                match HibariVoice::load(config) {
                    Ok(neural) => {
                        tracing::info!(dir = %config.dir.display(), "neural voice loaded (hibari); espeak-ng is the fallback");
                        Some(Arc::new(neural) as Arc<dyn SpeechSynthesizer>)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the neural voice is not available; the bot speaks with espeak-ng (run `python3 models/provision.py`)");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Which engine speaks with the default style: "neural" or "espeak-ng".
    pub fn engine(&self) -> &'static str {
        self.engine_for(&VoiceStyle::default())
    }
}

impl SpeechSynthesizer for Voice {
    /// "neural" or "espeak-ng" (loads the neural voice if the style asks for it).
    fn engine_for(&self, style: &VoiceStyle) -> &'static str {
        match style.engine.unwrap_or(self.default_engine) {
            TtsEngine::Neural if self.neural().is_some() => "neural",
            _ => "espeak-ng",
        }
    }

    /// The neural voice's units once it is loaded (its own sentence split), else sentences.
    fn units(&self, text: &str) -> Vec<String> {
        let spoken = normalize(text);
        match self.neural.get() {
            Some(Some(neural)) => neural.units(&spoken),
            _ => self.espeak.units(&spoken),
        }
    }

    fn synthesize_in(&self, text: &str, style: &VoiceStyle) -> Result<Speech, TtsError> {
        let spoken = normalize(text);
        let neural = match style.engine.unwrap_or(self.default_engine) {
            TtsEngine::Neural => self.neural(),
            TtsEngine::Espeak => None,
        };
        let mut speech = match neural {
            Some(neural) => match neural.synthesize_in(&spoken, style) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, text = %spoken, "the neural voice failed; espeak-ng says it");
                    self.espeak.synthesize_in(&spoken, style)?
                }
            },
            None => self.espeak.synthesize_in(&spoken, style)?,
        };
        if let Some(rate) = self.rate.filter(|&r| r != speech.audio.rate) {
            speech.audio.samples = resample_all(&speech.audio.samples, speech.audio.rate, rate)
                .map_err(|e| TtsError::BadOutput {
                    program: "resampler".into(),
                    reason: e.to_string(),
                })?;
            speech.audio.rate = rate;
        }
        normalize_peak(&mut speech.audio.samples, self.peak_dbfs + style.gain_db);
        Ok(speech)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::wav::MonoAudio;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records what it was asked to say and in which style; when `fails`, fails on texts
    /// containing "fail".
    #[derive(Default)]
    struct Recorder {
        said: Mutex<Vec<(String, VoiceStyle)>>,
        level: f32,
        fails: bool,
    }

    impl Recorder {
        fn texts(&self) -> Vec<String> {
            self.said
                .lock()
                .unwrap()
                .iter()
                .map(|(t, _)| t.clone())
                .collect()
        }
    }

    impl SpeechSynthesizer for Recorder {
        fn synthesize_in(&self, text: &str, style: &VoiceStyle) -> Result<Speech, TtsError> {
            self.said.lock().unwrap().push((text.to_string(), *style));
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

    fn peak(s: &Speech) -> f32 {
        s.audio.samples.iter().fold(0f32, |a, b| a.max(b.abs()))
    }

    fn recorder(level: f32, fails: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            level,
            fails,
            ..Recorder::default()
        })
    }

    #[test]
    fn engines_hear_normalised_text_at_an_even_level() {
        let neural = recorder(0.05, false);
        let voice = Voice::with_engines(
            Some(neural.clone()),
            recorder(0.5, false),
            TtsEngine::Neural,
            -6.0,
        );
        let s = voice.synthesize("Your order 4471 ships at 9:30.").unwrap();
        assert_eq!(
            neural.texts()[0],
            normalize("Your order 4471 ships at 9:30.")
        );
        assert!(!neural.texts()[0].contains('4'));
        assert!(
            (peak(&s) - 10f32.powf(-6.0 / 20.0)).abs() < 1e-3,
            "{}",
            peak(&s)
        );
        let units = voice.units("Order 4471 shipped. It arrives Monday.");
        assert_eq!(units.len(), 2);
        assert!(units.iter().all(|u| !u.contains('4')), "{units:?}");
    }

    #[test]
    fn a_failing_neural_unit_is_said_by_the_fallback() {
        let neural = recorder(0.1, true);
        let espeak = recorder(0.5, false);
        let voice = Voice::with_engines(
            Some(neural.clone()),
            espeak.clone(),
            TtsEngine::Neural,
            -3.0,
        );
        assert!(voice.synthesize("this will fail").is_ok());
        assert_eq!(espeak.texts().len(), 1);
        let both_fail =
            Voice::with_engines(Some(neural), recorder(0.5, true), TtsEngine::Neural, -3.0);
        assert!(both_fail.synthesize("this will fail").is_err());
    }

    #[test]
    fn a_style_picks_the_engine_passes_the_pace_and_sets_the_level() {
        let neural = recorder(0.1, false);
        let espeak = recorder(0.1, false);
        let voice = Voice::with_engines(
            Some(neural.clone()),
            espeak.clone(),
            TtsEngine::Neural,
            -3.0,
        );
        let brisk = VoiceStyle {
            engine: Some(TtsEngine::Espeak),
            speed: 1.25,
            gain_db: -6.0,
        };
        let s = voice.synthesize_in("Hello there.", &brisk).unwrap();
        assert_eq!(neural.texts().len(), 0);
        assert_eq!(espeak.said.lock().unwrap()[0].1, brisk);
        assert!(
            (peak(&s) - 10f32.powf(-9.0 / 20.0)).abs() < 1e-3,
            "{}",
            peak(&s)
        );
        assert_eq!(voice.engine_for(&brisk), "espeak-ng");
        // No engine named: the default one; the level never goes above 0 dBFS.
        let loud = VoiceStyle {
            gain_db: 6.0,
            ..VoiceStyle::default()
        };
        let s = voice.synthesize_in("Hello there.", &loud).unwrap();
        assert_eq!(neural.texts().len(), 1);
        assert!((peak(&s) - 1.0).abs() < 1e-3, "{}", peak(&s));
        // A neural style on a gateway whose neural voice is missing: espeak-ng.
        let without = Voice::with_engines(None, espeak.clone(), TtsEngine::Espeak, -3.0);
        let neural_style = VoiceStyle {
            engine: Some(TtsEngine::Neural),
            ..VoiceStyle::default()
        };
        assert!(without.synthesize_in("Hi.", &neural_style).is_ok());
        assert_eq!(espeak.texts().len(), 2);
        assert_eq!(without.engine_for(&neural_style), "espeak-ng");
    }

    #[test]
    fn a_voice_at_a_rate_delivers_every_unit_at_it() {
        let voice = Voice::with_engines(
            Some(recorder(0.2, false)),
            recorder(0.2, false),
            TtsEngine::Neural,
            -3.0,
        )
        .at_rate(16_000);
        let s = voice.synthesize("Hello.").unwrap();
        assert_eq!(s.audio.rate, 16_000);
        // 3 samples at 24 kHz are 2 at 16 kHz, give or take the filter's edge.
        assert!(
            (1..=4).contains(&s.audio.samples.len()),
            "{}",
            s.audio.samples.len()
        );
    }

    #[test]
    fn styles_are_checked_and_keyed() {
        assert!(VoiceStyle::default().check().is_ok());
        let slow = VoiceStyle {
            speed: 0.2,
            ..VoiceStyle::default()
        };
        assert_eq!(slow.check().unwrap_err().0, "speed");
        let loud = VoiceStyle {
            gain_db: 12.0,
            ..VoiceStyle::default()
        };
        assert_eq!(loud.check().unwrap_err().0, "gain_db");
        let nan = VoiceStyle {
            speed: f32::NAN,
            ..VoiceStyle::default()
        };
        assert!(nan.check().is_err());
        assert_eq!(VoiceStyle::default().key(), "default/1.00/+0.0");
        let espeak = VoiceStyle {
            engine: Some(TtsEngine::Espeak),
            speed: 1.1,
            gain_db: -2.5,
        };
        assert_eq!(espeak.key(), "espeak/1.10/-2.5");
        let nearly = VoiceStyle {
            speed: 1.001,
            ..VoiceStyle::default()
        };
        assert_eq!(nearly.key(), VoiceStyle::default().key());
        assert_ne!(nearly.exact_key(), VoiceStyle::default().exact_key());
    }

    #[test]
    fn missing_neural_files_fall_back_to_espeak() {
        let mut config = TtsConfig::default();
        config.neural.dir = "/nonexistent/hibari".into();
        let voice = Voice::load(&config);
        assert_eq!(voice.engine(), "espeak-ng");
        config.engine = TtsEngine::Espeak;
        let voice = Voice::load(&config);
        assert_eq!(voice.engine(), "espeak-ng");
        // Asked for by a flow, the neural voice is tried then, and espeak-ng speaks for it.
        let neural = VoiceStyle {
            engine: Some(TtsEngine::Neural),
            ..VoiceStyle::default()
        };
        assert_eq!(voice.engine_for(&neural), "espeak-ng");
    }
}

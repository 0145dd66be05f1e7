//! Conditioning of the recogniser's input for telephone audio, chosen by measurement.
//!
//! Telephone callers arrive at any level: a quiet handset through G.711 may peak 30 dB below
//! full scale, a loud one clips. The recognisers were trained on speech at ordinary levels, so
//! [`Conditioning::Level`] brings each utterance's loud part (the 99.5th percentile of the
//! absolute sample values, so a click does not decide) to -6 dBFS, with at most +24 dB of
//! gain, before decoding. `bench-asr` measured both on the same set (README, "Speech
//! recognition"); the gateway's default is what measured better.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// How the utterance is prepared before the engine hears it (`[asr] conditioning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Conditioning {
    /// As decoded from the line.
    None,
    /// Level normalised (see the module documentation).
    #[default]
    Level,
}

/// Target level of the loud part, dBFS.
const TARGET_DBFS: f32 = -6.0;
/// Most gain applied, dB (quieter input is left this much louder, not more: it is noise).
const MAX_GAIN_DB: f32 = 24.0;
/// Below this level (dBFS) the input is treated as silence and left alone.
const SILENCE_DBFS: f32 = -70.0;
/// Audio whose loud part stays below this (dBFS) holds no speech a telephone carries: it is
/// not decoded at all (both engines make up words on silence: "I'm a little bit of...").
const NO_SPEECH_DBFS: f32 = -55.0;

/// Whether `samples` are too quiet to hold speech (see [`NO_SPEECH_DBFS`]).
pub fn is_silent(samples: &[f32]) -> bool {
    loud_level(samples) < db_to_amp(NO_SPEECH_DBFS)
}

/// `samples` prepared as `conditioning` says.
pub fn condition(samples: &[f32], conditioning: Conditioning) -> Cow<'_, [f32]> {
    match conditioning {
        Conditioning::None => Cow::Borrowed(samples),
        Conditioning::Level => {
            let loud = loud_level(samples);
            if loud <= db_to_amp(SILENCE_DBFS) {
                return Cow::Borrowed(samples);
            }
            let gain = (db_to_amp(TARGET_DBFS) / loud).min(db_to_amp(MAX_GAIN_DB));
            if (gain - 1.0).abs() < 0.05 {
                return Cow::Borrowed(samples);
            }
            Cow::Owned(
                samples
                    .iter()
                    .map(|s| (s * gain).clamp(-1.0, 1.0))
                    .collect(),
            )
        }
    }
}

/// The 99.5th percentile of |sample|.
fn loud_level(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    // A histogram over 1/1024 steps: linear time, no sort of the whole utterance.
    let mut bins = [0u32; 1025];
    for s in samples {
        let i = ((s.abs().min(1.0)) * 1024.0) as usize;
        bins[i] += 1;
    }
    let wanted = (samples.len() as f64 * 0.005).ceil() as u32;
    let mut above = 0u32;
    for (i, count) in bins.iter().enumerate().rev() {
        above += count;
        if above >= wanted {
            return i as f32 / 1024.0;
        }
    }
    0.0
}

fn db_to_amp(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amplitude: f32) -> Vec<f32> {
        (0..16_000)
            .map(|i| amplitude * (i as f32 * 0.05).sin())
            .collect()
    }

    #[test]
    fn quiet_speech_is_brought_up_loud_left_alone() {
        // -26 dBFS: +20 dB brings it to -6 dBFS.
        let quiet = tone(0.05);
        let out = condition(&quiet, Conditioning::Level);
        let peak = out.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((0.45..0.55).contains(&peak), "peak {peak}");
        let right = tone(0.5);
        assert!(matches!(
            condition(&right, Conditioning::Level),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn gain_is_capped_and_silence_untouched() {
        let very_quiet = tone(0.001);
        let out = condition(&very_quiet, Conditioning::Level);
        let peak = out.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak < 0.02, "at most +24 dB: {peak}");
        let silence = vec![0.0f32; 1000];
        assert!(matches!(
            condition(&silence, Conditioning::Level),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            condition(&very_quiet, Conditioning::None),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn silence_and_faint_hiss_are_silent_speech_is_not() {
        assert!(is_silent(&vec![0.0f32; 16_000]));
        assert!(is_silent(&tone(0.001)), "-60 dBFS");
        assert!(!is_silent(&tone(0.01)), "-40 dBFS: a very quiet caller");
        assert!(is_silent(&[]));
    }

    #[test]
    fn a_click_does_not_set_the_level() {
        let mut quiet = tone(0.02);
        quiet[100] = 1.0;
        let out = condition(&quiet, Conditioning::Level);
        assert!(out[5000].abs() > 0.1 || out[5001].abs() > 0.1);
    }
}

//! The telephone line an evaluation utterance travels through before it is recognised.
//!
//! Each condition is what a live call would do to the caller's voice, built from the
//! gateway's own media code so the evaluation hears what the pipeline hears: down to the
//! codec's rate, line noise added there (white noise at a fixed RMS level in dBFS, the hiss of
//! a line or comfort noise), encoded and decoded 20 ms frame by 20 ms frame with the
//! negotiated codec, frames lost at random (concealed as the receiver does: the last frame
//! repeated at half level, then silence), and back up to the recogniser's 16 kHz. Noise and
//! loss come from a generator seeded by the utterance, so a run is repeatable.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::audio::resample::{resample_all, ResampleError};
use crate::audio::SPEECH_RATE;
use crate::media::codec::{Codec, CodecError};

/// One line condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    /// Short name for reports ("g711u", "g711a-noise65", ...).
    pub name: &'static str,
    pub codec: Codec,
    /// Band-limit to 8 kHz sampling before the codec (Opus is otherwise wideband).
    pub narrowband: bool,
    /// White noise RMS level in dBFS, if any.
    pub noise_dbfs: Option<f32>,
    /// Share of 20 ms packets lost.
    pub loss: f32,
    /// Level change of the caller's voice before the line (a quiet handset: -24 dB).
    pub gain_db: f32,
}

/// The conditions of the evaluation, in the order utterances are dealt to them.
pub const CONDITIONS: &[Condition] = &[
    Condition {
        name: "g711u-quiet",
        codec: Codec::Pcmu,
        narrowband: true,
        noise_dbfs: None,
        loss: 0.0,
        gain_db: -24.0,
    },
    Condition {
        name: "g711u",
        codec: Codec::Pcmu,
        narrowband: true,
        noise_dbfs: None,
        loss: 0.0,
        gain_db: 0.0,
    },
    Condition {
        name: "g711a-noise65",
        codec: Codec::Pcma,
        narrowband: true,
        noise_dbfs: Some(-65.0),
        loss: 0.0,
        gain_db: 0.0,
    },
    Condition {
        name: "g711u-noise50",
        codec: Codec::Pcmu,
        narrowband: true,
        noise_dbfs: Some(-50.0),
        loss: 0.0,
        gain_db: 0.0,
    },
    Condition {
        name: "opus-8k",
        codec: Codec::Opus,
        narrowband: true,
        noise_dbfs: None,
        loss: 0.0,
        gain_db: 0.0,
    },
    Condition {
        name: "g711u-loss1",
        codec: Codec::Pcmu,
        narrowband: true,
        noise_dbfs: None,
        loss: 0.01,
        gain_db: 0.0,
    },
    Condition {
        name: "g711u-loss3",
        codec: Codec::Pcmu,
        narrowband: true,
        noise_dbfs: Some(-65.0),
        loss: 0.03,
        gain_db: 0.0,
    },
];

/// Why the line could not carry the audio.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Resample(#[from] ResampleError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// `audio` at `rate` through `condition`, back at 16 kHz; `seed` drives noise and loss.
pub fn transmit(
    audio: &[f32],
    rate: u32,
    condition: &Condition,
    seed: u64,
) -> Result<Vec<f32>, ChannelError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut line = if condition.narrowband {
        resample_all(audio, rate, 8000)?
    } else {
        audio.to_vec()
    };
    if condition.gain_db != 0.0 {
        let gain = 10f32.powf(condition.gain_db / 20.0);
        line.iter_mut().for_each(|s| *s *= gain);
    }
    let mut line_rate = if condition.narrowband { 8000 } else { rate };
    if let Some(dbfs) = condition.noise_dbfs {
        add_noise(&mut line, dbfs, &mut rng);
    }
    let codec_rate = condition.codec.sample_rate();
    if line_rate != codec_rate {
        line = resample_all(&line, line_rate, codec_rate)?;
        line_rate = codec_rate;
    }
    let frame = (line_rate / 50) as usize;
    let mut encoder = condition.codec.encoder()?;
    let mut decoder = condition.codec.decoder()?;
    let mut out = Vec::with_capacity(line.len());
    let mut payload = Vec::new();
    let mut last: Vec<f32> = vec![0.0; frame];
    let mut concealed = 0u32;
    for chunk in line.chunks(frame) {
        let mut samples = chunk.to_vec();
        samples.resize(frame, 0.0);
        payload.clear();
        encoder.encode(&samples, &mut payload);
        if condition.loss > 0.0 && rng.random::<f32>() < condition.loss {
            concealed += 1;
            let gain = if concealed == 1 { 0.5 } else { 0.0 };
            out.extend(last.iter().map(|s| s * gain));
            continue;
        }
        concealed = 0;
        let before = out.len();
        decoder.decode(&payload, &mut out);
        last.clear();
        last.extend_from_slice(&out[before..]);
        last.resize(frame, 0.0);
    }
    out.truncate(line.len());
    Ok(resample_all(&out, line_rate, SPEECH_RATE)?)
}

/// Adds white noise (uniform, RMS at `dbfs`).
fn add_noise(samples: &mut [f32], dbfs: f32, rng: &mut StdRng) {
    // A uniform variable in [-a, a] has RMS a / sqrt(3).
    let rms = 10f32.powf(dbfs / 20.0);
    let amplitude = rms * 3f32.sqrt();
    for s in samples {
        *s += amplitude * (rng.random::<f32>() * 2.0 - 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, seconds: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / rate as f32).sin())
            .collect()
    }

    fn rms(s: &[f32]) -> f32 {
        (s.iter().map(|x| x * x).sum::<f32>() / s.len().max(1) as f32).sqrt()
    }

    #[test]
    fn every_condition_keeps_length_and_level() {
        let audio = tone(22_050, 1.0);
        for c in CONDITIONS {
            let out = transmit(&audio, 22_050, c, 7).expect(c.name);
            let expected = SPEECH_RATE as usize;
            assert!(
                out.len().abs_diff(expected) < 400,
                "{}: {} samples",
                c.name,
                out.len()
            );
            let level = rms(&out[2000..14_000]) / 10f32.powf(c.gain_db / 20.0);
            assert!((0.12..0.3).contains(&level), "{}: rms {level}", c.name);
        }
    }

    #[test]
    fn noise_is_at_its_level_and_repeatable() {
        let silence = vec![0.0f32; 8000];
        let c = Condition {
            name: "noise",
            codec: Codec::Pcmu,
            narrowband: true,
            noise_dbfs: Some(-50.0),
            loss: 0.0,
            gain_db: 0.0,
        };
        let a = transmit(&silence, 8000, &c, 1).unwrap();
        let b = transmit(&silence, 8000, &c, 1).unwrap();
        assert_eq!(a, b, "same seed, same line");
        let db = 20.0 * rms(&a[1000..15_000]).log10();
        assert!((-53.0..-47.0).contains(&db), "noise at {db} dBFS");
    }

    #[test]
    fn lost_packets_become_quiet_gaps() {
        let audio = tone(8000, 2.0);
        let c = Condition {
            name: "loss",
            codec: Codec::Pcmu,
            narrowband: true,
            noise_dbfs: None,
            loss: 0.3,
            gain_db: 0.0,
        };
        let out = transmit(&audio, 8000, &c, 3).unwrap();
        let frames = out.chunks(320).filter(|f| rms(f) < 0.02).count();
        assert!(frames >= 3, "{frames} silent frames after 30 % loss");
    }
}

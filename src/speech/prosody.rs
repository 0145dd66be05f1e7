//! Prosody of a caller utterance: how loud, how high and how fast the caller speaks.
//!
//! Anger and agitation raise loudness, pitch and speaking rate; what counts as "raised" depends
//! on the caller, so these absolute measurements are compared with the same caller's earlier
//! turns by the dialog's emotion tracker (`crate::dialog::emotion`). This module only measures,
//! from 16 kHz mono samples, with plain DSP (no model):
//! - loudness: RMS level of the voiced frames in dBFS;
//! - pitch: median fundamental frequency of voiced frames, from the normalised autocorrelation
//!   (60-400 Hz), and its spread (10th-90th percentile) in semitones;
//! - speaking rate: syllable nuclei (peaks of the smoothed energy envelope in voiced stretches)
//!   per second of voiced time.

use serde::Serialize;

use crate::audio::SPEECH_RATE;

/// 32 ms analysis frames with a 10 ms hop.
const FRAME: usize = 512;
const HOP: usize = 160;
const MIN_F0: f32 = 60.0;
const MAX_F0: f32 = 400.0;
/// Normalised autocorrelation above which a frame counts as voiced.
const VOICING: f32 = 0.45;

/// Measurements of one utterance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prosody {
    /// RMS level of the voiced frames, dBFS.
    pub loudness_dbfs: f32,
    /// Median F0 of the voiced frames, Hz (0 when nothing was voiced).
    pub pitch_hz: f32,
    /// Spread of F0 (10th to 90th percentile), semitones.
    pub pitch_spread_st: f32,
    /// Syllable nuclei per second of voiced time.
    pub syllable_rate: f32,
    /// Voiced time, seconds.
    pub voiced_seconds: f32,
}

impl Prosody {
    /// Whether there was enough voiced speech to compare with other turns.
    pub fn is_usable(&self) -> bool {
        self.voiced_seconds >= 0.3 && self.pitch_hz > 0.0
    }
}

/// Measures an utterance (16 kHz mono).
pub fn analyze(samples: &[f32]) -> Prosody {
    let mut voiced_energy = Vec::new();
    let mut pitches = Vec::new();
    let mut envelope = Vec::new();
    let mut voiced_flags = Vec::new();
    let min_lag = (SPEECH_RATE as f32 / MAX_F0) as usize;
    let max_lag = (SPEECH_RATE as f32 / MIN_F0) as usize;
    let mut start = 0;
    while start + FRAME <= samples.len() {
        let frame = &samples[start..start + FRAME];
        let energy: f32 = frame.iter().map(|s| s * s).sum::<f32>() / FRAME as f32;
        envelope.push(energy);
        // Quiet frames are not voiced, whatever their periodicity (-55 dBFS): skip the search.
        let (lag, strength) = if energy > 3e-6 {
            best_lag(frame, min_lag, max_lag)
        } else {
            (min_lag, 0.0)
        };
        let voiced = strength >= VOICING;
        voiced_flags.push(voiced);
        if voiced {
            voiced_energy.push(energy);
            pitches.push(SPEECH_RATE as f32 / lag as f32);
        }
        start += HOP;
    }
    let voiced_seconds = voiced_energy.len() as f32 * HOP as f32 / SPEECH_RATE as f32;
    let loudness_dbfs = if voiced_energy.is_empty() {
        -120.0
    } else {
        let mean = voiced_energy.iter().sum::<f32>() / voiced_energy.len() as f32;
        10.0 * mean.max(1e-12).log10()
    };
    pitches.sort_by(f32::total_cmp);
    let pct = |p: f32| pitches[((pitches.len() - 1) as f32 * p).round() as usize];
    let (pitch_hz, pitch_spread_st) = if pitches.is_empty() {
        (0.0, 0.0)
    } else {
        (pct(0.5), 12.0 * (pct(0.9) / pct(0.1)).log2())
    };
    let nuclei = count_nuclei(&envelope, &voiced_flags);
    let syllable_rate = if voiced_seconds > 0.0 {
        nuclei as f32 / voiced_seconds
    } else {
        0.0
    };
    Prosody {
        loudness_dbfs,
        pitch_hz,
        pitch_spread_st,
        syllable_rate,
        voiced_seconds,
    }
}

/// The lag with the highest normalised autocorrelation, and that correlation.
fn best_lag(frame: &[f32], min_lag: usize, max_lag: usize) -> (usize, f32) {
    let mean = frame.iter().sum::<f32>() / frame.len() as f32;
    let x: Vec<f32> = frame.iter().map(|s| s - mean).collect();
    // Energies of every prefix, so each lag's two window energies cost O(1).
    let mut prefix = Vec::with_capacity(x.len() + 1);
    prefix.push(0.0f32);
    for v in &x {
        let last = prefix[prefix.len() - 1];
        prefix.push(last + v * v);
    }
    let total = prefix[x.len()];
    let mut best = (min_lag, 0.0f32);
    for lag in min_lag..=max_lag.min(x.len() / 2) {
        let n = x.len() - lag;
        let num = dot(&x[..n], &x[lag..]);
        let ea = prefix[n];
        let eb = total - prefix[lag];
        let r = num / (ea * eb).sqrt().max(1e-12);
        if r > best.1 {
            best = (lag, r);
        }
    }
    // Prefer the shortest lag that is nearly as good (avoids picking a pitch sub-harmonic).
    let (lag, r) = best;
    for div in [3usize, 2] {
        let short = lag / div;
        if short >= min_lag {
            let (a, b) = (&x[..x.len() - short], &x[short..]);
            let num: f32 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let ea: f32 = a.iter().map(|p| p * p).sum();
            let eb: f32 = b.iter().map(|q| q * q).sum();
            let rs = num / (ea * eb).sqrt().max(1e-12);
            if rs >= 0.9 * r {
                return (short, rs);
            }
        }
    }
    (lag, r)
}

/// Dot product in eight independent lanes, which the compiler turns into SIMD (a plain
/// sequential float sum cannot be reordered, so it would not be vectorised).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Syllable nuclei: local maxima (over +-60 ms) of the smoothed energy envelope in voiced frames,
/// at least 80 ms apart, each standing 3 dB above the dip since the previous one.
fn count_nuclei(envelope: &[f32], voiced: &[bool]) -> usize {
    let n = envelope.len();
    let smooth: Vec<f32> = (0..n)
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(2), (i + 3).min(n));
            envelope[lo..hi].iter().sum::<f32>() / (hi - lo) as f32
        })
        .collect();
    let mut count = 0;
    let mut last_peak: Option<usize> = None;
    let mut dip = f32::MAX;
    for i in 0..n {
        let v = smooth[i];
        dip = dip.min(v);
        let (lo, hi) = (i.saturating_sub(6), (i + 7).min(n));
        let local_max = smooth[lo..hi].iter().all(|&w| w <= v);
        let spaced = last_peak.is_none_or(|p| i - p >= 8);
        if voiced[i] && local_max && spaced && v > dip * 2.0 {
            count += 1;
            last_peak = Some(i);
            dip = v;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;

    /// A harmonic-rich vowel-like sound at `f0`, `syllables` per second, peak level `amp`.
    fn voice(f0: f32, syllables: f32, amp: f32, secs: f32) -> Vec<f32> {
        let n = (secs * SPEECH_RATE as f32) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / SPEECH_RATE as f32;
                let tone: f32 = (1..=6)
                    .map(|h| (2.0 * PI * f0 * h as f32 * t).sin() / h as f32)
                    .sum();
                let env = (PI * syllables * t).sin().abs().powf(0.7);
                amp * 0.5 * tone * env
            })
            .collect()
    }

    #[test]
    fn pitch_is_measured() {
        for f0 in [90.0, 140.0, 220.0, 300.0] {
            let p = analyze(&voice(f0, 4.0, 0.3, 2.0));
            assert!((p.pitch_hz - f0).abs() / f0 < 0.05, "{f0}: {p:?}");
            assert!(p.is_usable());
        }
    }

    #[test]
    fn louder_is_louder_by_the_right_amount() {
        let quiet = analyze(&voice(150.0, 4.0, 0.1, 2.0));
        let loud = analyze(&voice(150.0, 4.0, 0.4, 2.0));
        let diff = loud.loudness_dbfs - quiet.loudness_dbfs;
        assert!((diff - 12.0).abs() < 1.0, "{diff} dB");
    }

    #[test]
    fn faster_speech_has_more_syllables_per_second() {
        let slow = analyze(&voice(150.0, 3.0, 0.3, 3.0));
        let fast = analyze(&voice(150.0, 6.0, 0.3, 3.0));
        assert!(
            fast.syllable_rate > slow.syllable_rate * 1.5,
            "{slow:?} {fast:?}"
        );
        // About 3 and 6 nuclei a second of voiced time (voicing covers most of the time).
        assert!((2.0..5.0).contains(&slow.syllable_rate), "{slow:?}");
    }

    #[test]
    fn silence_and_noise_are_not_usable() {
        assert!(!analyze(&vec![0.0; 32_000]).is_usable());
        let mut x = 12345u32;
        let noise: Vec<f32> = (0..32_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) as f32 / 32768.0 - 1.0) * 0.1
            })
            .collect();
        let p = analyze(&noise);
        assert!(p.voiced_seconds < 0.3, "{p:?}");
    }
}

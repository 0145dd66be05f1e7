//! Synthetic test signals for unit tests that need "speech" without a recording or a model.

use super::{ms_to_samples, SPEECH_RATE};

/// A crude voiced sound at 16 kHz: a ~140 Hz pulse train through two formant-like resonances
/// (~700 Hz and ~1200 Hz), amplitude-modulated at a syllable rate. Enough for a neural VAD to
/// call it speech (the VAD tests check that it does).
pub fn voiced(ms: u64) -> Vec<f32> {
    let n = ms_to_samples(ms, SPEECH_RATE);
    let rate = SPEECH_RATE as f32;
    let period = rate / 140.0;
    let two_pi = 2.0 * std::f32::consts::PI;
    let (c1, c2) = (
        (two_pi * 700.0 / rate).cos(),
        (two_pi * 1200.0 / rate).cos(),
    );
    let (mut y1, mut y2, mut z1, mut z2) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = i as f32 / rate;
        let pulse = if (i as f32 % period) < 1.0 { 1.0 } else { 0.0 };
        let y = pulse + 1.85 * y1 * c1 - 0.93 * y2;
        y2 = y1;
        y1 = y;
        let z = y + 1.8 * z1 * c2 - 0.9 * z2;
        z2 = z1;
        z1 = z;
        let envelope = 0.6 + 0.4 * (two_pi * 4.0 * t).sin().abs();
        out.push(z * 0.02 * envelope);
    }
    out
}

/// Silence at 16 kHz.
pub fn silence(ms: u64) -> Vec<f32> {
    vec![0.0; ms_to_samples(ms, SPEECH_RATE)]
}

/// White noise at 16 kHz with an RMS level of `dbfs` (full scale = 1.0), reproducible from
/// `seed`: line hiss for endpointing tests.
pub fn noise(ms: u64, dbfs: f32, seed: u64) -> Vec<f32> {
    let n = ms_to_samples(ms, SPEECH_RATE);
    // Uniform in [-1, 1) has an RMS of 1/sqrt(3).
    let scale = 10f32.powf(dbfs / 20.0) * 3f32.sqrt();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            (unit * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Adds `b` onto `a` (as long as `a`).
pub fn mix(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

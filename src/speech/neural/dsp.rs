//! The neural voice's output stage: hibari's model outputs (spectra per 12.5 ms frame) to a
//! 24 kHz waveform.
//!
//! # Why this exists
//!
//! The hibari model does not produce samples. Per frame it predicts five spectra of 601 bins
//! (`lh`, `theta`, `ln`, `lr`, `phi`) and a pitch value `f0`; the waveform is
//!
//! ```text
//! S = exp(lh) e^{i π tanh(theta)} STFT(pulses(f0)) + exp(ln) Z + exp(lr) e^{i phi}
//! y = ISTFT(S)          (n_fft 1200, hop 300, periodic Hann, 24 kHz)
//! ```
//!
//! with `pulses(f0)` a band-limited pulse train and `Z` complex white noise. This is a port of
//! `hibari/dsp.py` (`synth`) from hibari-tts 0.2.1 (Apache-2.0), kept faithful so that the
//! voice sounds the way its authors trained it: the same interpolation of `f0`, the same
//! closed-form pulse train, the same reflect-padded STFT and the same `torch.istft`-style
//! inverse (window-squared normalisation, `center = true`). With the noise term off it
//! matches the Python output to 1e-7 (the `dsp_reference.bin` test, made by
//! `testdata/make_reference.py`).
//!
//! # Why it looks like this
//!
//! The DSP runs once per streaming unit, right after the model and before the caller hears
//! anything, so it is on the time-to-first-audio path. [`Vocoder`] therefore plans both FFTs
//! and builds the windows once and is shared (it is `Send + Sync`, and needs no `&mut`);
//! the per-bin trigonometry and exponentials, which are data-dependent and so have no
//! recurrence or table, use the branch-free polynomial approximations in [`fast`] (Cephes'
//! single-precision kernels, within a few ulp of libm) that the compiler can vectorise. On
//! x86-64 CPUs with AVX2 the two hot loops are also compiled for AVX2 and picked at run time;
//! both builds do the same IEEE operations (no FMA contraction), so the samples are
//! bit-identical either way. About 7 ms for 4.5 s of audio on one core.
//!
//! # Noise and determinism
//!
//! Python draws `Z` from numpy's global-entropy generator, so every run differs slightly.
//! Here the noise comes from a small self-contained generator (xoshiro256+, Box-Muller)
//! seeded by the caller ([`Noise::Seeded`]); the hibari voice seeds it from the phoneme ids
//! and the speed, so the same text always gives the same samples (which keeps the TTS cache
//! and the tests reproducible). The generator is written out here rather than taken from
//! `rand` because `rand` documents no value stability for its seeded generators across
//! versions, and an upgrade must not change the audio. The noise branch is quiet (it shapes
//! breath and fricatives), so a different generator than numpy's is inaudible: with noise on,
//! the Rust and Python waveforms still correlate at 1.000.

use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// Output sample rate.
pub const SAMPLE_RATE: u32 = 24_000;
/// FFT size of the model's spectra.
pub const N_FFT: usize = 1200;
/// Samples per frame (12.5 ms).
pub const HOP: usize = 300;
/// Frequency bins per frame.
pub const BINS: usize = N_FFT / 2 + 1;

/// Frames below this pitch (Hz) are unvoiced: no pulses.
const VOICED_HZ: f32 = 40.0;
/// Harmonics of the pulse train stop below this frequency (Hz).
const PULSE_FMAX: f32 = 11_000.0;
/// `exp` of the log-magnitudes is capped at `exp(7)`, as in hibari.
const LOG_CAP: f32 = 7.0;
/// Bins handled together when combining the branches (8 complex values = one cache line).
const TILE: usize = 8;

/// Why model outputs could not be turned into audio.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DspError {
    #[error("model output `{name}` has {got} values, expected {expected} ({BINS} bins x {frames} frames)")]
    Shape {
        name: &'static str,
        got: usize,
        expected: usize,
        frames: usize,
    },
    #[error("FFT failed: {0}")]
    Fft(String),
}

/// The model's outputs for one utterance: five spectra `[BINS x F]` (bin-major, as the model
/// returns them without the batch axis) and the pitch track `f0` `[F]` in Hz (0 = unvoiced).
#[derive(Debug, Clone, Copy)]
pub struct Spectra<'a> {
    /// Harmonic log-magnitude.
    pub lh: &'a [f32],
    /// Harmonic phase shift, mapped through `π tanh`.
    pub theta: &'a [f32],
    /// Noise log-magnitude.
    pub ln: &'a [f32],
    /// Free-phase (residual) log-magnitude.
    pub lr: &'a [f32],
    /// Free-phase phase.
    pub phi: &'a [f32],
    /// Pitch per frame, Hz.
    pub f0: &'a [f32],
}

impl Spectra<'_> {
    /// Frames (12.5 ms each).
    pub fn frames(&self) -> usize {
        self.f0.len()
    }

    fn check(&self) -> Result<usize, DspError> {
        let frames = self.frames();
        let expected = BINS * frames;
        for (name, a) in [
            ("lh", self.lh),
            ("theta", self.theta),
            ("ln", self.ln),
            ("lr", self.lr),
            ("phi", self.phi),
        ] {
            if a.len() != expected {
                return Err(DspError::Shape {
                    name,
                    got: a.len(),
                    expected,
                    frames,
                });
            }
        }
        Ok(frames)
    }
}

/// The noise term `exp(ln) Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// Left out (reference comparisons; hibari always has it on).
    Off,
    /// Complex Gaussian noise from a generator seeded with this value: the same seed and
    /// inputs give the same samples on every run and every version of this crate's deps.
    Seeded(u64),
}

/// The output stage, set up once: FFT plans and windows. Shared between threads.
pub struct Vocoder {
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
    /// Analysis window: Hann / (N_FFT / 4), so that `exp(lh)` is a harmonic's magnitude.
    win_src: Vec<f32>,
    /// Synthesis window including the inverse FFT's 1/N.
    win_syn: Vec<f32>,
    /// Hann², summed later over the frames that cover a sample.
    win_sq: Vec<f32>,
    /// 1 / (sum of Hann² over all four overlapping frames) per position within a hop.
    inv_norm_full: Vec<f32>,
    /// Linear-interpolation weights of `f0` within a frame (`u` towards the later frame).
    interp_u: Vec<f32>,
    interp_v: Vec<f32>,
}

impl std::fmt::Debug for Vocoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocoder")
            .field("n_fft", &N_FFT)
            .field("hop", &HOP)
            .finish()
    }
}

impl Default for Vocoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Vocoder {
    /// Plans the FFTs and builds the windows.
    pub fn new() -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(N_FFT);
        let inverse = planner.plan_fft_inverse(N_FFT);
        // Periodic Hann in f32, as numpy builds it (computed in f64, then rounded).
        let win: Vec<f32> = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let src_scale = (N_FFT / 4) as f32;
        let win_src = win.iter().map(|w| w / src_scale).collect();
        let win_syn = win.iter().map(|w| w / N_FFT as f32).collect();
        let win_sq: Vec<f32> = win.iter().map(|w| w * w).collect();
        let inv_norm_full = (0..HOP)
            .map(|j| {
                let s = (0..N_FFT / HOP).fold(0.0f32, |acc, k| acc + win_sq[k * HOP + j]);
                1.0 / s.max(1e-11)
            })
            .collect();
        // u = ((j + 0.5) / HOP - 0.5) mod 1, computed in f64 and rounded like numpy does.
        let interp_u: Vec<f32> = (0..HOP)
            .map(|j| ((j as f64 + 0.5) / HOP as f64 - 0.5).rem_euclid(1.0) as f32)
            .collect();
        let interp_v = interp_u.iter().map(|u| 1.0 - u).collect();
        Vocoder {
            forward,
            inverse,
            win_src,
            win_syn,
            win_sq,
            inv_norm_full,
            interp_u,
            interp_v,
        }
    }

    /// The waveform for `spectra`: `frames * HOP` samples at [`SAMPLE_RATE`], not normalised
    /// (hibari's level, about -26 dBFS RMS for speech; peaks stay well inside [-1, 1]).
    pub fn synthesize(&self, spectra: &Spectra<'_>, noise: Noise) -> Result<Vec<f32>, DspError> {
        let frames = spectra.check()?;
        if frames == 0 {
            return Ok(Vec::new());
        }
        let mut spec = self.pulse_stft(spectra.f0)?;
        self.shape(spectra, noise, &mut spec);
        self.istft(&mut spec, frames)
    }

    /// The band-limited pulse train for `f0`, `len * HOP` samples (`pulses()` in dsp.py):
    /// `sum_{h=1..H} cos(h t) = sin((H + 1/2) t) / (2 sin(t / 2)) - 1/2` with `H` the number of
    /// harmonics below 11 kHz and `t` the running phase; zero where unvoiced.
    pub fn pulses(&self, f0: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; f0.len() * HOP];
        self.pulses_into(f0, &mut out);
        out
    }

    fn pulses_into(&self, f0: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.pulses_avx2(f0, out) };
        }
        self.pulses_body(f0, out)
    }

    /// [`Self::pulses_body`] compiled for AVX2 (same IEEE operations, no FMA contraction, so
    /// the samples are bit-identical to the baseline build's).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pulses_avx2(&self, f0: &[f32], out: &mut [f32]) {
        self.pulses_body(f0, out)
    }

    #[inline(always)]
    fn pulses_body(&self, f0: &[f32], out: &mut [f32]) {
        let last = f0.len().saturating_sub(1);
        let at = |k: usize| f0[k.min(last)];
        let half = HOP / 2;
        // Phase accumulates in f64 over the whole utterance (as numpy's cumsum does), so long
        // utterances keep their pitch exact; everything per sample after that is f32.
        let mut phase = 0.0f64;
        let mut freq = [0.0f32; HOP];
        let mut t = [0.0f32; HOP];
        for (k, block) in out.chunks_exact_mut(HOP).enumerate() {
            let (prev, cur, next) = (at(k.saturating_sub(1)), at(k), at(k + 1));
            let weights = self.interp_v.iter().zip(&self.interp_u);
            for (j, (f, (v, u))) in freq.iter_mut().zip(weights).enumerate() {
                let (a, b) = if j < half { (prev, cur) } else { (cur, next) };
                *f = a * v + b * u;
            }
            for (tj, f) in t.iter_mut().zip(&freq) {
                phase += f64::from(f.max(VOICED_HZ));
                // numpy: t *= 1 / SR; modf(t); t *= 2π (phase > 0, so `as u64` is floor).
                let cycles = phase * (1.0 / f64::from(SAMPLE_RATE));
                *tj = ((cycles - cycles as u64 as f64) * std::f64::consts::TAU) as f32;
            }
            for ((y, &f), &tj) in block.iter_mut().zip(&freq).zip(&t) {
                let h = fast::floor_pos(PULSE_FMAX / f.max(VOICED_HZ)) + 0.5;
                let s = 2.0 * fast::sin(tj * 0.5);
                let e = if s.abs() <= 2e-3 {
                    h
                } else {
                    fast::sin(h * tj) / s
                };
                *y = if f > VOICED_HZ { e - 0.5 } else { 0.0 };
            }
        }
    }

    /// STFT of the pulse train (`torch.stft(center=True)`, reflect padding, analysis window
    /// Hann / 300), frame-major `[frames][BINS]`.
    fn pulse_stft(&self, f0: &[f32]) -> Result<Vec<Complex32>, DspError> {
        let frames = f0.len();
        let n = frames * HOP;
        let pad = N_FFT / 2;
        let mut padded = vec![0.0f32; n + 2 * pad];
        self.pulses_into(f0, &mut padded[pad..pad + n]);
        for i in 0..pad {
            padded[pad - 1 - i] = padded[pad + reflect(-(i as isize) - 1, n)];
            padded[pad + n + i] = padded[pad + reflect((n + i) as isize, n)];
        }
        let mut spec = vec![Complex32::new(0.0, 0.0); frames * BINS];
        let mut buf = vec![0.0f32; N_FFT];
        let mut scratch = self.forward.make_scratch_vec();
        for (fr, row) in spec.chunks_exact_mut(BINS).enumerate() {
            let src = &padded[fr * HOP..fr * HOP + N_FFT];
            for ((b, x), w) in buf.iter_mut().zip(src).zip(&self.win_src) {
                *b = x * w;
            }
            self.forward
                .process_with_scratch(&mut buf, row, &mut scratch)
                .map_err(|e| DspError::Fft(e.to_string()))?;
        }
        Ok(spec)
    }

    /// `S = exp(lh) e^{iπ tanh θ} E + exp(ln) Z + exp(lr) e^{iφ}`, in place on `spec` (`E`).
    ///
    /// The model's arrays are bin-major and the spectrum is frame-major, so the work goes in
    /// tiles of [`TILE`] bins: per bin, passes over contiguous rows into tile buffers (each pass
    /// vectorises), then one sweep over the frames that reads and writes a tile's bins of a
    /// frame together (one cache line) instead of striding through the spectrum once per bin.
    fn shape(&self, sp: &Spectra<'_>, noise: Noise, spec: &mut [Complex32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.shape_avx2(sp, noise, spec) };
        }
        self.shape_body(sp, noise, spec)
    }

    /// [`Self::shape_body`] compiled for AVX2 (bit-identical results, as for the pulses).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn shape_avx2(&self, sp: &Spectra<'_>, noise: Noise, spec: &mut [Complex32]) {
        self.shape_body(sp, noise, spec)
    }

    #[inline(always)]
    fn shape_body(&self, sp: &Spectra<'_>, noise: Noise, spec: &mut [Complex32]) {
        let frames = sp.frames();
        let mut rng = match noise {
            Noise::Off => None,
            Noise::Seeded(seed) => Some(Normal::new(seed)),
        };
        let n = TILE * frames;
        let (mut hr, mut hi) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (mut ar, mut ai) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (mut u1, mut u2) = (vec![0.0f32; frames], vec![0.0f32; frames]);
        for b0 in (0..BINS).step_by(TILE) {
            let width = TILE.min(BINS - b0);
            for t in 0..width {
                let row = (b0 + t) * frames..(b0 + t + 1) * frames;
                let tile = t * frames..(t + 1) * frames;
                // Harmonic rotation exp(lh) e^{iπ tanh θ}.
                for (((re, im), &lh), &th) in hr[tile.clone()]
                    .iter_mut()
                    .zip(hi[tile.clone()].iter_mut())
                    .zip(&sp.lh[row.clone()])
                    .zip(&sp.theta[row.clone()])
                {
                    let (s, c) = fast::sin_cos(std::f32::consts::PI * fast::tanh(th));
                    let a = fast::exp(lh.min(LOG_CAP));
                    *re = c * a;
                    *im = s * a;
                }
                // Free-phase branch exp(lr) e^{iφ}.
                for (((re, im), &lr), &phi) in ar[tile.clone()]
                    .iter_mut()
                    .zip(ai[tile.clone()].iter_mut())
                    .zip(&sp.lr[row.clone()])
                    .zip(&sp.phi[row.clone()])
                {
                    let (s, c) = fast::sin_cos(phi);
                    let a = fast::exp(lr.min(LOG_CAP));
                    *re = c * a;
                    *im = s * a;
                }
                // + exp(ln) Z: Box-Muller on uniforms drawn in a fixed order (bin-major).
                if let Some(g) = rng.as_mut() {
                    g.uniforms(&mut u1, &mut u2);
                    for ((((re, im), &ln), &v1), &v2) in ar[tile.clone()]
                        .iter_mut()
                        .zip(ai[tile].iter_mut())
                        .zip(&sp.ln[row])
                        .zip(&u1)
                        .zip(&u2)
                    {
                        let r = (-2.0 * fast::ln(v1)).sqrt() * fast::exp(ln.min(LOG_CAP));
                        let (s, c) = fast::sin_cos(std::f32::consts::TAU * v2);
                        *re += r * c;
                        *im += r * s;
                    }
                }
            }
            // S = E · harmonic rotation + (noise + free-phase branch).
            for (i, frame) in spec.chunks_exact_mut(BINS).enumerate() {
                for (t, e) in frame[b0..b0 + width].iter_mut().enumerate() {
                    let k = t * frames + i;
                    let re = e.re * hr[k] - e.im * hi[k];
                    let im = e.re * hi[k] + e.im * hr[k];
                    *e = Complex32::new(re + ar[k], im + ai[k]);
                }
            }
        }
    }

    /// Inverse STFT like `torch.istft(center=True, length=frames*HOP)`: inverse FFT per frame,
    /// synthesis window, overlap-add, divide by the overlap-added window², drop the padding.
    fn istft(&self, spec: &mut [Complex32], frames: usize) -> Result<Vec<f32>, DspError> {
        let overlap = N_FFT / HOP;
        let pad = N_FFT / 2;
        let mut y = vec![0.0f32; (frames + overlap - 1) * HOP];
        let mut buf = vec![0.0f32; N_FFT];
        let mut scratch = self.inverse.make_scratch_vec();
        for (fr, row) in spec.chunks_exact_mut(BINS).enumerate() {
            // A real signal's DC and Nyquist bins are real (irfft ignores their imaginary part).
            row[0].im = 0.0;
            row[BINS - 1].im = 0.0;
            self.inverse
                .process_with_scratch(row, &mut buf, &mut scratch)
                .map_err(|e| DspError::Fft(e.to_string()))?;
            let dst = &mut y[fr * HOP..fr * HOP + N_FFT];
            for ((d, x), w) in dst.iter_mut().zip(&buf).zip(&self.win_syn) {
                *d += x * w;
            }
        }
        // Normalise by the summed window² per hop-sized block; only blocks near the ends are
        // covered by fewer than `overlap` frames.
        let mut out = Vec::with_capacity(frames * HOP);
        let mut edge = vec![0.0f32; HOP];
        for (q, block) in y.chunks_exact(HOP).enumerate() {
            let full = q + 1 >= overlap && q < frames;
            let norm: &[f32] = if full {
                &self.inv_norm_full
            } else {
                for (j, e) in edge.iter_mut().enumerate() {
                    let s = (0..overlap)
                        .filter(|&k| q >= k && q - k < frames)
                        .fold(0.0f32, |acc, k| acc + self.win_sq[k * HOP + j]);
                    *e = 1.0 / s.max(1e-11);
                }
                &edge
            };
            for (j, (x, n)) in block.iter().zip(norm).enumerate() {
                let p = q * HOP + j;
                if p >= pad && p < pad + frames * HOP {
                    out.push(x * n);
                }
            }
        }
        Ok(out)
    }
}

/// numpy's "reflect" padding index (mirror without repeating the edge), for any offset.
fn reflect(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= n as isize { period - m } else { m }) as usize
}

/// Standard normal numbers from xoshiro256+ (seeded through splitmix64) by Box-Muller: small,
/// fast and fixed forever (see the module docs).
struct Normal {
    s: [u64; 4],
}

impl Normal {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Normal {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Two uniforms per position from one draw (24 bits each): `u1` in (0, 1], `u2` in [0, 1).
    fn uniforms(&mut self, u1: &mut [f32], u2: &mut [f32]) {
        const SCALE: f32 = 1.0 / 16_777_216.0;
        for (a, b) in u1.iter_mut().zip(u2.iter_mut()) {
            let bits = self.next_u64();
            *a = ((bits >> 40) as f32 + 1.0) * SCALE;
            *b = ((bits >> 16) & 0xFF_FFFF) as f32 * SCALE;
        }
    }

    /// Fills `out` (even length) with independent N(0, 1) values (Box-Muller).
    #[cfg(test)]
    fn fill(&mut self, out: &mut [f32]) {
        let n = out.len() / 2;
        let (mut u1, mut u2) = (vec![0.0; n], vec![0.0; n]);
        self.uniforms(&mut u1, &mut u2);
        for ((pair, a), b) in out.chunks_exact_mut(2).zip(&u1).zip(&u2) {
            let r = (-2.0 * fast::ln(*a)).sqrt();
            let (s, c) = fast::sin_cos(std::f32::consts::TAU * b);
            pair[0] = r * c;
            pair[1] = r * s;
        }
    }
}

/// Branch-free single-precision kernels (after Cephes' `sinf`, `cosf`, `expf`, `logf`): a few
/// ulp from libm over the ranges used here. Rounding uses the 1.5·2^23 trick instead of
/// `round`/`floor` (libm calls on baseline x86-64) or `as i32` (saturating, so scalarised),
/// so loops over them vectorise.
pub mod fast {
    /// 1.5 · 2^23: adding it rounds an f32 of magnitude below 2^22 to an integer (to nearest,
    /// ties to even) and leaves that integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;

    /// `x` rounded to the nearest integer, as a float and as an integer (|x| < 2^22).
    #[inline(always)]
    fn round(x: f32) -> (f32, i32) {
        let k = x + ROUND;
        (k - ROUND, k.to_bits() as i32 - ROUND.to_bits() as i32)
    }

    /// `floor x` for 0 <= x < 2^22.
    #[inline(always)]
    pub fn floor_pos(x: f32) -> f32 {
        let r = round(x).0;
        if r > x {
            r - 1.0
        } else {
            r
        }
    }

    /// `(sin x, cos x)`; accurate for |x| up to about 8192.
    #[inline(always)]
    pub fn sin_cos(x: f32) -> (f32, f32) {
        const DP1: f32 = 0.785_156_25;
        const DP2: f32 = 2.418_756_5e-4;
        const DP3: f32 = 3.774_895e-8;
        let ax = x.abs();
        // ax = m·π/2 + z with |z| <= π/4 (Cephes' octant rounded to even, j = 2m).
        let (m, mi) = round(ax * std::f32::consts::FRAC_2_PI);
        let y = m + m;
        let z = ((ax - y * DP1) - y * DP2) - y * DP3;
        let zz = z * z;
        let sp = ((-1.951_529_6e-4 * zz + 8.332_161e-3) * zz - 1.666_665_5e-1) * zz * z + z;
        let cp = ((2.443_315_7e-5 * zz - 1.388_731_6e-3) * zz + 4.166_664_6e-2) * zz * zz
            - 0.5 * zz
            + 1.0;
        let quadrant = mi & 3;
        let (s, c) = if quadrant & 1 == 1 {
            (cp, sp)
        } else {
            (sp, cp)
        };
        let s = if quadrant >= 2 { -s } else { s };
        let c = if quadrant == 1 || quadrant == 2 {
            -c
        } else {
            c
        };
        (if x < 0.0 { -s } else { s }, c)
    }

    /// `sin x`; see [`sin_cos`].
    #[inline(always)]
    pub fn sin(x: f32) -> f32 {
        sin_cos(x).0
    }

    /// `e^x`, flushing to 0 below about -87.3 and saturating at `e^88`.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const C1: f32 = 0.693_359_4;
        const C2: f32 = -2.121_944_4e-4;
        let underflow = x < -87.3;
        let x = x.clamp(-87.3, 88.0);
        let (nf, n) = round(x * LOG2E);
        let r = (x - nf * C1) - nf * C2;
        let mut p = 1.987_569_1e-4;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
        let e = p * r * r + r + 1.0;
        // 2^n by building the exponent field (n is in [-126, 127] after the clamp).
        let scale = f32::from_bits(((n + 127) as u32) << 23);
        if underflow {
            0.0
        } else {
            e * scale
        }
    }

    /// `tanh x` from [`exp`]: absolute error about 1e-7 (what matters here: it is a phase).
    #[inline(always)]
    pub fn tanh(x: f32) -> f32 {
        let e = exp(2.0 * x.clamp(-9.0, 9.0));
        (e - 1.0) / (e + 1.0)
    }

    /// Natural log of a positive normal `x` (here: uniforms in (0, 1]).
    #[inline(always)]
    pub fn ln(x: f32) -> f32 {
        const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
        let bits = x.to_bits();
        let mut e = ((bits >> 23) & 0xff) as i32 - 126;
        let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
        if m < SQRT_HALF {
            e -= 1;
            m = m + m - 1.0;
        } else {
            m -= 1.0;
        }
        let z = m * m;
        let mut y = 7.037_683_6e-2;
        y = y * m - 1.151_461e-1;
        y = y * m + 1.167_699_9e-1;
        y = y * m - 1.242_014_1e-1;
        y = y * m + 1.424_932_3e-1;
        y = y * m - 1.666_805_8e-1;
        y = y * m + 2.000_071_5e-1;
        y = y * m - 2.499_999_4e-1;
        y = y * m + 3.333_333e-1;
        let ef = e as f32;
        let mut y = y * m * z;
        y += -2.121_944_4e-4 * ef;
        y += -0.5 * z;
        (m + y) + 0.693_359_4 * ef
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros(frames: usize) -> Vec<f32> {
        vec![0.0; BINS * frames]
    }

    /// Magnitude of the DFT of `x` at `hz` (single bin, Goertzel-free direct sum).
    fn dft_mag(x: &[f32], hz: f64) -> f64 {
        let w = std::f64::consts::TAU * hz / f64::from(SAMPLE_RATE);
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (n, &v) in x.iter().enumerate() {
            re += f64::from(v) * (w * n as f64).cos();
            im -= f64::from(v) * (w * n as f64).sin();
        }
        (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn fast_kernels_match_libm() {
        let mut worst = (0.0f32, 0.0f32, 0.0f32);
        for i in -200_000..=200_000 {
            let x = i as f32 * 0.0087; // -1740 .. 1740: the pulse train's largest arguments
            let (s, c) = fast::sin_cos(x);
            worst.0 = worst.0.max((s - (x as f64).sin() as f32).abs());
            worst.0 = worst.0.max((c - (x as f64).cos() as f32).abs());
        }
        for i in -8_700..=700 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let rel = ((f64::from(fast::exp(x)) - want) / want).abs() as f32;
            worst.1 = worst.1.max(rel);
            worst.2 = worst
                .2
                .max((fast::tanh(x / 10.0) - (x / 10.0).tanh()).abs());
        }
        assert!(worst.0 < 2e-6, "sin/cos error {}", worst.0);
        assert!(worst.1 < 3e-7, "exp relative error {}", worst.1);
        assert!(worst.2 < 3e-7, "tanh error {}", worst.2);
        for i in 1..=100_000 {
            let x = i as f32 / 100_000.0;
            let err = (fast::ln(x) - (x as f64).ln() as f32).abs();
            assert!(
                err < 1e-6 * (1.0 + (x as f64).ln().abs() as f32),
                "ln({x}) error {err}"
            );
        }
        assert_eq!(fast::exp(-100.0), 0.0);
        assert_eq!(fast::sin_cos(0.0), (0.0, 1.0));
        for x in [
            0.0f32,
            0.2,
            1.0,
            1.5,
            2.0,
            274.9,
            275.0,
            11_000.0 / 40.0,
            4_000_000.5,
        ] {
            assert_eq!(fast::floor_pos(x), x.floor(), "floor({x})");
        }
    }

    #[test]
    fn reflect_is_numpy_reflect() {
        // np.pad([0,1,2,3], 5, mode="reflect") -> [1,2,3,2,1,0,1,2,3,2,1,0,1]
        let left: Vec<usize> = (1..=5).rev().map(|i| reflect(-i, 4)).collect();
        assert_eq!(left, [1, 2, 3, 2, 1]);
        let right: Vec<usize> = (4..9).map(|i| reflect(i, 4)).collect();
        assert_eq!(right, [2, 1, 0, 1, 2]);
        assert_eq!(reflect(-3, 1), 0);
    }

    #[test]
    fn length_is_frames_times_hop_and_zero_frames_is_empty() {
        let v = Vocoder::new();
        for frames in [1usize, 2, 3, 7, 40] {
            let z = zeros(frames);
            let f0 = vec![150.0; frames];
            let sp = Spectra {
                lh: &z,
                theta: &z,
                ln: &z,
                lr: &z,
                phi: &z,
                f0: &f0,
            };
            let y = v.synthesize(&sp, Noise::Seeded(1)).unwrap();
            assert_eq!(y.len(), frames * HOP);
            assert!(y.iter().all(|s| s.is_finite()));
        }
        let sp = Spectra {
            lh: &[],
            theta: &[],
            ln: &[],
            lr: &[],
            phi: &[],
            f0: &[],
        };
        assert!(v.synthesize(&sp, Noise::Off).unwrap().is_empty());
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let v = Vocoder::new();
        let z = zeros(4);
        let short = vec![0.0; BINS * 4 - 1];
        let f0 = vec![100.0; 4];
        let sp = Spectra {
            lh: &z,
            theta: &z,
            ln: &short,
            lr: &z,
            phi: &z,
            f0: &f0,
        };
        let err = v.synthesize(&sp, Noise::Off).unwrap_err();
        assert!(
            matches!(
                err,
                DspError::Shape {
                    name: "ln",
                    frames: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn zero_magnitudes_give_silence() {
        let v = Vocoder::new();
        let frames = 20;
        let very_quiet = vec![-200.0; BINS * frames]; // exp(-200) = 0
        let z = zeros(frames);
        let f0 = vec![180.0; frames];
        let sp = Spectra {
            lh: &very_quiet,
            theta: &z,
            ln: &very_quiet,
            lr: &very_quiet,
            phi: &z,
            f0: &f0,
        };
        let y = v.synthesize(&sp, Noise::Seeded(7)).unwrap();
        assert_eq!(y.len(), frames * HOP);
        assert!(y.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn constant_f0_is_a_pulse_train_at_f0() {
        let v = Vocoder::new();
        let frames = 40; // 0.5 s
        let f0_hz = 200.0f32;
        // Only the harmonic branch, unit magnitude (lh = 0), no phase shift.
        let z = zeros(frames);
        let off = vec![-200.0; BINS * frames];
        let f0 = vec![f0_hz; frames];
        let sp = Spectra {
            lh: &z,
            theta: &z,
            ln: &off,
            lr: &off,
            phi: &z,
            f0: &f0,
        };
        let y = v.synthesize(&sp, Noise::Off).unwrap();
        let mid = &y[HOP * 8..HOP * 32]; // away from the edges
        let fund = dft_mag(mid, f0_hz.into());
        // With lh = 0 the output is the pulse train itself scaled by the analysis window's
        // 1 / (N_FFT / 4): harmonics of amplitude 1/300, so |DFT| / len = 1/600.
        assert!(
            (fund - 1.0 / 600.0).abs() < 0.1 / 600.0,
            "fundamental magnitude {fund}"
        );
        // Harmonics at k·f0 have it too; anything between them is tiny.
        for off_hz in [130.0, 290.0, 310.0, 523.0] {
            let m = dft_mag(mid, off_hz);
            assert!(m < fund / 50.0, "{off_hz} Hz: {m} vs fundamental {fund}");
        }
        let second = dft_mag(mid, 2.0 * f64::from(f0_hz));
        assert!(second > fund / 2.0, "second harmonic {second}");
        // Unvoiced (f0 below 40 Hz): no pulses at all.
        let f0 = vec![0.0; frames];
        let sp = Spectra { f0: &f0, ..sp };
        assert!(v
            .synthesize(&sp, Noise::Off)
            .unwrap()
            .iter()
            .all(|&s| s == 0.0));
    }

    #[test]
    fn seeded_noise_is_deterministic() {
        let v = Vocoder::new();
        let frames = 10;
        let z = zeros(frames);
        let off = vec![-200.0; BINS * frames];
        let f0 = vec![0.0; frames];
        let sp = Spectra {
            lh: &off,
            theta: &z,
            ln: &z,
            lr: &off,
            phi: &z,
            f0: &f0,
        };
        let a = v.synthesize(&sp, Noise::Seeded(42)).unwrap();
        let b = v.synthesize(&sp, Noise::Seeded(42)).unwrap();
        let c = v.synthesize(&sp, Noise::Seeded(43)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // White noise of unit variance per bin: check the level is sane and nonzero.
        let rms = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        assert!(rms > 0.01 && rms < 1.0, "rms {rms}");
        // The generator itself: mean ~0, variance ~1.
        let mut g = Normal::new(5);
        let mut buf = vec![0.0f32; 200_000];
        g.fill(&mut buf);
        let mean = buf.iter().map(|&x| f64::from(x)).sum::<f64>() / buf.len() as f64;
        let var = buf
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / buf.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
    }

    /// float16 bits -> f32 (the reference file stores the spectra as float16).
    fn f16_to_f32(h: u16) -> f32 {
        let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let exp = i32::from((h >> 10) & 0x1f);
        let frac = f32::from(h & 0x3ff);
        match exp {
            0 => sign * frac * 2f32.powi(-24),
            31 => sign * f32::INFINITY,
            _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
        }
    }

    #[test]
    fn matches_hibari_python_dsp_without_noise() {
        // testdata/make_reference.py: 12 frames of "Thank you for calling." through hibari's
        // own dsp.synth (noise off).
        let data = include_bytes!("testdata/dsp_reference.bin");
        assert_eq!(&data[..4], b"HDSP");
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
        let (frames, bins) = (u32_at(4), u32_at(8));
        assert_eq!(bins, BINS);
        let mut off = 12;
        let mut parts = Vec::new();
        for _ in 0..5 {
            let n = bins * frames;
            let v: Vec<f32> = data[off..off + 2 * n]
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            off += 2 * n;
            parts.push(v);
        }
        let f32s = |off: usize, n: usize| -> Vec<f32> {
            data[off..off + 4 * n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let f0 = f32s(off, frames);
        off += 4 * frames;
        let want = f32s(off, frames * HOP);
        assert_eq!(off + 4 * frames * HOP, data.len());

        let sp = Spectra {
            lh: &parts[0],
            theta: &parts[1],
            ln: &parts[2],
            lr: &parts[3],
            phi: &parts[4],
            f0: &f0,
        };
        let got = Vocoder::new().synthesize(&sp, Noise::Off).unwrap();
        assert_eq!(got.len(), want.len());
        let peak = want.iter().fold(0.0f32, |a, b| a.max(b.abs()));
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("dsp parity: max |err| {err:.2e} (peak {peak:.3})");
        assert!(
            peak > 0.05,
            "reference is too quiet to test anything: {peak}"
        );
        assert!(err < 1e-4, "max abs error {err} against hibari's dsp.synth");
    }

    #[test]
    fn avx2_and_baseline_paths_agree_bit_for_bit() {
        let v = Vocoder::new();
        let frames = 30;
        let mk = |f: &dyn Fn(usize) -> f32| (0..BINS * frames).map(f).collect::<Vec<f32>>();
        let lh = mk(&|i| -2.0 - (i % 97) as f32 * 0.05);
        let th = mk(&|i| ((i % 13) as f32 - 6.0) * 0.3);
        let ln = mk(&|i| -5.0 - (i % 31) as f32 * 0.1);
        let phi = mk(&|i| (i % 17) as f32 * 0.37 - 3.0);
        let f0: Vec<f32> = (0..frames)
            .map(|k| if k < 25 { 120.0 + 3.0 * k as f32 } else { 0.0 })
            .collect();
        let sp = Spectra {
            lh: &lh,
            theta: &th,
            ln: &ln,
            lr: &lh,
            phi: &phi,
            f0: &f0,
        };
        let mut base = v.pulses(&f0);
        let mut fast_path = vec![0.0; base.len()];
        v.pulses_body(&f0, &mut base);
        v.pulses_into(&f0, &mut fast_path);
        assert_eq!(base, fast_path);
        let mut a = v.pulse_stft(&f0).unwrap();
        let mut b = a.clone();
        v.shape_body(&sp, Noise::Seeded(9), &mut a);
        v.shape(&sp, Noise::Seeded(9), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn timing_for_a_4_5_s_utterance() {
        // Not an assertion on time: prints what the output stage costs (run with --nocapture).
        let v = Vocoder::new();
        let frames = 360;
        let mk = |f: &dyn Fn(usize) -> f32| (0..BINS * frames).map(f).collect::<Vec<f32>>();
        let lh = mk(&|i| -3.0 - (i % 97) as f32 * 0.05);
        let th = mk(&|i| ((i % 13) as f32 - 6.0) * 0.3);
        let ln = mk(&|i| -6.0 - (i % 31) as f32 * 0.1);
        let phi = mk(&|i| (i % 17) as f32 * 0.37 - 3.0);
        let f0: Vec<f32> = (0..frames)
            .map(|k| {
                if k % 50 < 40 {
                    150.0 + k as f32 * 0.2
                } else {
                    0.0
                }
            })
            .collect();
        let sp = Spectra {
            lh: &lh,
            theta: &th,
            ln: &ln,
            lr: &lh,
            phi: &phi,
            f0: &f0,
        };
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let y = v.synthesize(&sp, Noise::Seeded(3)).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            assert_eq!(y.len(), frames * HOP);
        }
        println!(
            "dsp: {frames} frames ({:.1} s of audio) in {:.2} ms (best of 5)",
            frames as f64 * 0.0125,
            best * 1e3
        );
    }
}

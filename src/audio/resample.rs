//! Streaming sample-rate conversion with `rubato`'s FFT resampler.
//!
//! A live call delivers 20 ms frames at the codec's rate (8 kHz for G.711) and the speech
//! stages want 16 kHz; a WAV file may have any rate. [`StreamResampler`] accepts input in pieces of
//! any length, converts it in fixed chunks (band-limited, not sample dropping), compensates the
//! filter delay so output sample `n` lines up with input time `n / rate_out`, and flushes the tail
//! at the end of the stream.

use rubato::{FftFixedIn, Resampler};

/// Why a resampler could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample {from} Hz -> {to} Hz: {reason}")]
    Construct { from: u32, to: u32, reason: String },
    #[error("resampling failed: {0}")]
    Process(String),
}

/// A mono resampler fed with arbitrary-length pieces.
pub struct StreamResampler {
    inner: Option<FftFixedIn<f32>>,
    chunk_in: usize,
    pending: Vec<f32>,
    /// Output samples still to drop to compensate the filter delay.
    skip: usize,
    /// Input samples consumed and output samples produced, to trim the flushed tail exactly.
    consumed: u64,
    produced: u64,
    rate_in: u32,
    rate_out: u32,
}

impl StreamResampler {
    /// Builds a resampler from `rate_in` to `rate_out`, working in chunks of about 20 ms.
    pub fn new(rate_in: u32, rate_out: u32) -> Result<Self, ResampleError> {
        let chunk_in = (rate_in as usize / 50).max(32);
        let inner = if rate_in == rate_out {
            None
        } else {
            Some(
                FftFixedIn::<f32>::new(rate_in as usize, rate_out as usize, chunk_in, 1, 1)
                    .map_err(|e| ResampleError::Construct {
                        from: rate_in,
                        to: rate_out,
                        reason: e.to_string(),
                    })?,
            )
        };
        let skip = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(StreamResampler {
            inner,
            chunk_in,
            pending: Vec::with_capacity(chunk_in * 2),
            skip,
            consumed: 0,
            produced: 0,
            rate_in,
            rate_out,
        })
    }

    /// Feeds input samples; appends whatever output is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        self.consumed += input.len() as u64;
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            self.produced += input.len() as u64;
            return Ok(());
        };
        self.pending.extend_from_slice(input);
        let mut start = 0;
        while self.pending.len() - start >= self.chunk_in {
            let chunk = &self.pending[start..start + self.chunk_in];
            let result = inner
                .process(&[chunk], None)
                .map_err(|e| ResampleError::Process(e.to_string()))?;
            start += self.chunk_in;
            Self::emit(&mut self.skip, &mut self.produced, &result[0], out);
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Ends the stream: converts what is buffered and drains the filter, so the output holds
    /// exactly `input_len * rate_out / rate_in` samples overall.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let target = self.consumed * u64::from(self.rate_out) / u64::from(self.rate_in.max(1));
        if let Some(inner) = self.inner.as_mut() {
            // Feed silence until the filter delay has flushed through.
            let mut rounds = 0;
            while self.produced < target && rounds < 64 {
                let mut chunk = std::mem::take(&mut self.pending);
                chunk.resize(self.chunk_in, 0.0);
                let result = inner
                    .process(&[&chunk[..]], None)
                    .map_err(|e| ResampleError::Process(e.to_string()))?;
                Self::emit(&mut self.skip, &mut self.produced, &result[0], out);
                rounds += 1;
            }
        }
        if self.produced > target {
            let excess = (self.produced - target) as usize;
            out.truncate(out.len().saturating_sub(excess));
            self.produced = target;
        }
        self.pending.clear();
        Ok(())
    }

    fn emit(skip: &mut usize, produced: &mut u64, chunk: &[f32], out: &mut Vec<f32>) {
        let drop = (*skip).min(chunk.len());
        *skip -= drop;
        out.extend_from_slice(&chunk[drop..]);
        *produced += (chunk.len() - drop) as u64;
    }
}

/// Resamples a whole buffer in one go (used for TTS output and test audio).
pub fn resample_all(input: &[f32], rate_in: u32, rate_out: u32) -> Result<Vec<f32>, ResampleError> {
    let mut r = StreamResampler::new(rate_in, rate_out)?;
    let mut out =
        Vec::with_capacity(input.len() * rate_out as usize / rate_in.max(1) as usize + 64);
    r.push(input, &mut out)?;
    r.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| 0.5 * (2.0 * PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Amplitude of `freq` in `x` by correlation with a sine/cosine pair.
    fn tone_level(x: &[f32], freq: f32, rate: u32) -> f32 {
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for (i, &v) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * f64::from(freq) * i as f64 / f64::from(rate);
            s += f64::from(v) * ph.sin();
            c += f64::from(v) * ph.cos();
        }
        (2.0 * (s * s + c * c).sqrt() / x.len() as f64) as f32
    }

    #[test]
    fn length_is_exact_for_telephone_rate() {
        let input = sine(440.0, 8000, 1.0);
        let out = resample_all(&input, 8000, 16000).expect("resample");
        assert_eq!(out.len(), 16000);
    }

    #[test]
    fn tone_survives_upsampling_in_pieces() {
        let input = sine(1000.0, 8000, 1.0);
        let mut r = StreamResampler::new(8000, 16000).expect("new");
        let mut out = Vec::new();
        // Odd piece sizes, as a jittery network would deliver.
        for piece in input.chunks(137) {
            r.push(piece, &mut out).expect("push");
        }
        r.finish(&mut out).expect("finish");
        assert_eq!(out.len(), 16000);
        let level = tone_level(&out[1600..14400], 1000.0, 16000);
        assert!((level - 0.5).abs() < 0.02, "level {level}");
    }

    #[test]
    fn delay_is_compensated() {
        // An impulse at 0.5 s must come out at 0.5 s.
        let mut input = vec![0.0f32; 8000];
        input[4000] = 1.0;
        let out = resample_all(&input, 8000, 16000).expect("resample");
        let peak = out
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(i, _)| i)
            .expect("non-empty");
        assert!((peak as i64 - 8000).abs() <= 2, "peak at {peak}");
    }

    #[test]
    fn downsampling_removes_content_above_nyquist() {
        // 7 kHz at 44.1 kHz cannot exist at 8 kHz; dropping samples would alias it to 1 kHz.
        let input = sine(7000.0, 44100, 1.0);
        let out = resample_all(&input, 44100, 8000).expect("resample");
        assert_eq!(out.len(), 8000);
        assert!(tone_level(&out[800..7200], 1000.0, 8000) < 0.01);
    }

    #[test]
    fn same_rate_passes_through() {
        let input = sine(300.0, 16000, 0.1);
        let out = resample_all(&input, 16000, 16000).expect("resample");
        assert_eq!(out, input);
    }
}

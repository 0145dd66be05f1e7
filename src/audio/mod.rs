//! Audio plumbing shared by every path into and out of the bot: reading and writing WAV files
//! with errors a tester can act on, streaming sample-rate conversion, and the 20 ms framing
//! that a live RTP call delivers.

pub mod frames;
pub mod resample;
#[cfg(test)]
pub mod test_signal;
pub mod wav;

/// The rate the speech stages (VAD, ASR) work at.
pub const SPEECH_RATE: u32 = 16_000;

/// Duration of one media frame, as on a live RTP call.
pub const FRAME_MS: u32 = 20;

/// Converts a sample count at `rate` into milliseconds.
pub fn samples_to_ms(samples: usize, rate: u32) -> u64 {
    (samples as u64 * 1000) / u64::from(rate.max(1))
}

/// Converts milliseconds into a sample count at `rate`.
pub fn ms_to_samples(ms: u64, rate: u32) -> usize {
    ((ms * u64::from(rate)) / 1000) as usize
}

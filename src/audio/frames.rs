//! Cutting a recording into the 20 ms frames a live call delivers, each stamped with its media
//! time. Simulation feeds the pipeline through this so endpointing and timings mean the same as
//! on a call; the time comes from the sample count, never from a wall clock.

use std::time::Duration;

/// One frame of caller audio at its source rate.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioFrame {
    /// Media time of the first sample, from the start of the call.
    pub at: Duration,
    /// Samples in [-1, 1].
    pub samples: Vec<f32>,
    /// Samples per second.
    pub rate: u32,
}

/// Splits `samples` into frames of `frame_ms` (the last may be shorter).
pub fn split_frames(
    samples: &[f32],
    rate: u32,
    frame_ms: u32,
) -> impl Iterator<Item = AudioFrame> + '_ {
    let len = ((rate as usize * frame_ms as usize) / 1000).max(1);
    samples
        .chunks(len)
        .enumerate()
        .map(move |(i, chunk)| AudioFrame {
            at: Duration::from_micros((i * len) as u64 * 1_000_000 / u64::from(rate.max(1))),
            samples: chunk.to_vec(),
            rate,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_20ms_with_exact_timestamps() {
        let samples = vec![0.0f32; 8000 + 80];
        let frames: Vec<_> = split_frames(&samples, 8000, 20).collect();
        assert_eq!(frames.len(), 51);
        assert_eq!(frames[0].samples.len(), 160);
        assert_eq!(frames[50].samples.len(), 80);
        assert_eq!(frames[25].at, Duration::from_millis(500));
    }

    #[test]
    fn odd_rates_keep_time_from_sample_count() {
        let samples = vec![0.0f32; 11025];
        let frames: Vec<_> = split_frames(&samples, 11025, 20).collect();
        // 220 samples a frame: the timestamps follow samples, not frame count * 20 ms.
        assert_eq!(frames[1].at, Duration::from_micros(220 * 1_000_000 / 11025));
    }
}

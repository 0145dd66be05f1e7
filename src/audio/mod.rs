//! Audio plumbing shared by every path into and out of the bot: reading and writing WAV files
//! with errors a tester can act on, streaming sample-rate conversion, and the 20 ms framing
//! that a live RTP call delivers, and trimming the silence a voice puts before its first word.

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

/// Level under which the start of synthesised speech counts as silence (-50 dBFS).
const LEAD_SILENCE: f32 = 0.003_16;
/// Audio kept before the first sound, and the fade-in over it, so no consonant is clipped and
/// the cut makes no click.
const LEAD_KEEP_MS: u64 = 10;

/// Removes the silence (and the quiet start of a fade-in) before the first sound of `samples`
/// at `rate`, keeping 10 ms faded in. A reply heard 300 ms earlier is a reply 300 ms faster:
/// voices start their audio with silence, and the caller waits through all of it. Audio with
/// no sound at all is left as it is. Returns how many samples were removed.
pub fn trim_leading_silence(samples: &mut Vec<f32>, rate: u32) -> usize {
    let Some(first) = samples.iter().position(|s| s.abs() >= LEAD_SILENCE) else {
        return 0;
    };
    let keep = ms_to_samples(LEAD_KEEP_MS, rate);
    let cut = first.saturating_sub(keep);
    samples.drain(..cut);
    let ramp = keep.min(samples.len());
    for (i, s) in samples.iter_mut().take(ramp).enumerate() {
        *s *= i as f32 / ramp as f32;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_silence_is_trimmed_to_a_short_fade_in() {
        let rate = 16_000;
        let mut audio = vec![0.0f32; 5000];
        audio.extend((0..800).map(|i| 0.0005 * i as f32 / 800.0)); // a faint fade-in
        audio.extend(std::iter::repeat_n(0.5f32, 1000));
        let removed = trim_leading_silence(&mut audio, rate);
        // The faint fade-in never reaches -50 dBFS, so the sound starts at the 0.5s: 10 ms
        // (160 samples) before them are kept, faded in.
        assert_eq!(audio.len(), 160 + 1000);
        assert_eq!(removed, 5000 + 800 - 160);
        assert_eq!(audio[0], 0.0, "faded in");
        assert!(audio[159] < 0.0005 && audio[160] == 0.5);
    }

    #[test]
    fn audio_without_sound_is_left_alone() {
        let mut audio = vec![0.001f32; 3000];
        assert_eq!(trim_leading_silence(&mut audio, 16_000), 0);
        assert_eq!(audio.len(), 3000);
        let mut empty = Vec::new();
        assert_eq!(trim_leading_silence(&mut empty, 16_000), 0);
    }
}

//! Barge-in detection: the caller starts talking while the bot speaks, so the bot must stop.
//!
//! Kept apart from the pipeline's VAD on purpose: the decision must come within a couple of
//! hundred milliseconds, on the media task's own 20 ms clock, and it must not fire on the bot's
//! own voice coming back as line echo or on a short "mhm". A frame counts as caller speech only
//! when it is above an absolute floor *and* above the bot's current output level minus the
//! assumed echo return loss; playback stops after `min_speech_ms` of such frames (one quiet
//! frame inside is tolerated, two reset the count).

/// Barge-in settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BargeInConfig {
    pub min_speech_ms: u32,
    pub floor_dbfs: f32,
    pub echo_return_loss_db: f32,
    pub frame_ms: u32,
}

/// The detector's state for one call.
#[derive(Debug)]
pub struct BargeIn {
    config: BargeInConfig,
    voiced_ms: u32,
    quiet_frames: u32,
}

fn dbfs(rms: f32) -> f32 {
    20.0 * rms.max(1e-9).log10()
}

impl BargeIn {
    pub fn new(config: BargeInConfig) -> Self {
        Self {
            config,
            voiced_ms: 0,
            quiet_frames: 0,
        }
    }

    /// One caller frame with RMS level `caller_rms`, while the bot's speech has RMS level
    /// `bot_rms` and `bot_speaking` says whether it is playing. True when playback must stop.
    pub fn on_frame(&mut self, caller_rms: f32, bot_rms: f32, bot_speaking: bool) -> bool {
        if !bot_speaking {
            self.voiced_ms = 0;
            self.quiet_frames = 0;
            return false;
        }
        let level = dbfs(caller_rms);
        let echo_ceiling = dbfs(bot_rms) - self.config.echo_return_loss_db;
        if level > self.config.floor_dbfs && level > echo_ceiling {
            self.voiced_ms += self.config.frame_ms;
            self.quiet_frames = 0;
        } else {
            self.quiet_frames += 1;
            if self.quiet_frames >= 2 {
                self.voiced_ms = 0;
            }
        }
        if self.voiced_ms >= self.config.min_speech_ms {
            self.voiced_ms = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> BargeIn {
        BargeIn::new(BargeInConfig {
            min_speech_ms: 120,
            floor_dbfs: -40.0,
            echo_return_loss_db: 12.0,
            frame_ms: 20,
        })
    }

    /// The frame index at which the detector fires, if any.
    fn fires_at(d: &mut BargeIn, caller: &[f32], bot: f32) -> Option<usize> {
        caller.iter().position(|&c| d.on_frame(c, bot, true))
    }

    #[test]
    fn caller_speech_stops_the_bot_after_min_duration() {
        let mut d = detector();
        // -14 dBFS speech against a -10 dBFS bot: well above its -22 dB echo.
        let speech = vec![0.2; 20];
        assert_eq!(fires_at(&mut d, &speech, 0.3), Some(5)); // 6 frames = 120 ms
    }

    #[test]
    fn echo_of_the_bot_does_not_barge_in() {
        let mut d = detector();
        // Echo 20 dB below the bot.
        let echo = vec![0.03; 100];
        assert_eq!(fires_at(&mut d, &echo, 0.3), None);
    }

    #[test]
    fn short_mhm_does_not_barge_in() {
        let mut d = detector();
        let mut frames = vec![0.2; 4]; // 80 ms
        frames.extend(vec![0.0; 10]);
        frames.extend(vec![0.2; 4]);
        assert_eq!(fires_at(&mut d, &frames, 0.3), None);
    }

    #[test]
    fn nothing_happens_while_the_bot_is_quiet() {
        let mut d = detector();
        assert!((0..50).all(|_| !d.on_frame(0.5, 0.0, false)));
    }
}

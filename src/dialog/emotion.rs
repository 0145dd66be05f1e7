//! Per-call emotion: the tone of the caller's words together with the arousal in their voice,
//! and how it develops over the call.
//!
//! Words carry the clearest signal ("this is ridiculous", sarcasm such as "oh great, another
//! robot"): [`super::escalation::EscalationPolicy::tone`] scores them. The voice adds arousal:
//! louder, higher and faster than *this caller's own* earlier turns (an absolute level says
//! little: some people are loud, phones differ). The first usable turn sets the caller's
//! baseline; later calm turns refine it. Voice arousal only amplifies what the words say, so a
//! loud but friendly caller is not handed over, and a caller whose irritation grows turn after
//! turn is noticed before any single turn crosses the threshold.

use serde::Serialize;

use crate::speech::prosody::Prosody;

/// Emotion measured on one turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmotionReading {
    /// Negativity of the words, in `[0, 1)`.
    pub text: f32,
    /// Arousal of the voice against the caller's baseline, in `[0, 1]`; none on the first usable
    /// turn (it sets the baseline) or without usable audio.
    pub voice: Option<f32>,
    /// What the voice arousal is made of, e.g. `"+7.1 dB, +2.3 st, rate x1.20"`.
    pub voice_detail: Option<String>,
    /// The turn's score: the words, amplified by the voice (never raised by the voice alone).
    pub combined: f32,
}

/// Voice baseline of one caller.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Baseline {
    loudness_dbfs: f32,
    pitch_hz: f32,
    syllable_rate: f32,
}

/// Arousal below which a turn counts as calm (and refines the baseline).
const CALM: f32 = 0.3;

/// The per-call tracker.
#[derive(Debug, Clone, Default)]
pub struct EmotionTracker {
    baseline: Option<Baseline>,
    history: Vec<f32>,
}

impl EmotionTracker {
    /// Scores a turn from its text tone and, when available, its prosody. `voice_weight` is the
    /// share of the voice in the combined score (see `EscalationConfig::voice_weight`).
    pub fn observe(
        &mut self,
        text: f32,
        prosody: Option<&Prosody>,
        voice_weight: f32,
    ) -> EmotionReading {
        let usable = prosody.filter(|p| p.is_usable());
        let (voice, voice_detail) = match (usable, self.baseline) {
            (Some(p), Some(base)) => {
                let (arousal, detail) = arousal(p, &base);
                if arousal < CALM {
                    self.refine(p);
                }
                (Some(arousal), Some(detail))
            }
            (Some(p), None) => {
                self.baseline = Some(Baseline {
                    loudness_dbfs: p.loudness_dbfs,
                    pitch_hz: p.pitch_hz,
                    syllable_rate: p.syllable_rate,
                });
                (None, None)
            }
            (None, _) => (None, None),
        };
        let combined = match voice {
            // The voice amplifies the words; it never lowers them, and never acts alone.
            Some(v) if text > 0.0 => text.max((1.0 - voice_weight) * text + voice_weight * v),
            _ => text,
        };
        let combined = (combined * 1000.0).round() / 1000.0;
        self.history.push(combined);
        EmotionReading {
            text,
            voice,
            voice_detail,
            combined,
        }
    }

    /// The combined scores of the turns so far.
    pub fn history(&self) -> &[f32] {
        &self.history
    }

    /// Whether the last `turns` scores rose turn after turn and the last reached `min_score`:
    /// irritation building up. Returns the scores as text for the escalation detail.
    pub fn worsening(&self, turns: usize, min_score: f32) -> Option<String> {
        if turns < 2 || self.history.len() < turns {
            return None;
        }
        let recent = &self.history[self.history.len() - turns..];
        let rising = recent.windows(2).all(|w| w[1] > w[0]);
        let last = recent[recent.len() - 1];
        (rising && last >= min_score).then(|| {
            recent
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(" -> ")
        })
    }

    fn refine(&mut self, p: &Prosody) {
        if let Some(b) = &mut self.baseline {
            b.loudness_dbfs = 0.5 * (b.loudness_dbfs + p.loudness_dbfs);
            b.pitch_hz = (b.pitch_hz * p.pitch_hz).sqrt();
            b.syllable_rate = 0.5 * (b.syllable_rate + p.syllable_rate);
        }
    }
}

/// Arousal of `p` against `base`: +6 dB louder, +3 semitones higher or 30 % faster each move it
/// by roughly its weight (loudness 0.45, pitch 0.40, rate 0.15); quieter, lower or slower never
/// counts as negative arousal.
fn arousal(p: &Prosody, base: &Baseline) -> (f32, String) {
    let d_loud = p.loudness_dbfs - base.loudness_dbfs;
    let d_pitch = 12.0 * (p.pitch_hz / base.pitch_hz.max(1.0)).log2();
    let rate = if base.syllable_rate > 0.0 {
        p.syllable_rate / base.syllable_rate
    } else {
        1.0
    };
    let score = 0.45 * (d_loud / 6.0).max(0.0)
        + 0.40 * (d_pitch / 3.0).max(0.0)
        + 0.15 * ((rate - 1.0) / 0.3).max(0.0);
    let score = (score.clamp(0.0, 1.0) * 1000.0).round() / 1000.0;
    (
        score,
        format!("{d_loud:+.1} dB, {d_pitch:+.1} st, rate x{rate:.2} vs the caller's baseline"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(loud: f32, pitch: f32, rate: f32) -> Prosody {
        Prosody {
            loudness_dbfs: loud,
            pitch_hz: pitch,
            pitch_spread_st: 2.0,
            syllable_rate: rate,
            voiced_seconds: 1.5,
        }
    }

    #[test]
    fn first_turn_sets_the_baseline() {
        let mut t = EmotionTracker::default();
        let r = t.observe(0.0, Some(&voice(-30.0, 120.0, 4.0)), 0.4);
        assert_eq!(r.voice, None);
        assert_eq!(r.combined, 0.0);
    }

    #[test]
    fn raised_voice_amplifies_negative_words_only() {
        let mut t = EmotionTracker::default();
        t.observe(0.0, Some(&voice(-30.0, 120.0, 4.0)), 0.4);
        // Louder by 9 dB and 4 semitones higher: strongly aroused.
        let angry = voice(-21.0, 120.0 * 2f32.powf(4.0 / 12.0), 5.0);
        let r = t.observe(0.5, Some(&angry), 0.4);
        assert!(r.voice.unwrap_or(0.0) >= 0.9, "{r:?}");
        assert!(r.combined > 0.6, "{r:?}");
        assert!(r.voice_detail.as_deref().unwrap_or("").contains("+9.0 dB"));
        // The same voice with friendly words stays at 0.
        let r = t.observe(0.0, Some(&angry), 0.4);
        assert_eq!(r.combined, 0.0);
    }

    #[test]
    fn calmer_voice_never_counts() {
        let mut t = EmotionTracker::default();
        t.observe(0.0, Some(&voice(-30.0, 120.0, 4.0)), 0.4);
        let r = t.observe(0.5, Some(&voice(-40.0, 100.0, 3.0)), 0.4);
        assert_eq!(r.voice, Some(0.0));
        assert_eq!(r.combined, 0.5);
    }

    #[test]
    fn unusable_audio_is_ignored() {
        let mut t = EmotionTracker::default();
        let silent = Prosody {
            voiced_seconds: 0.0,
            pitch_hz: 0.0,
            ..voice(-90.0, 0.0, 0.0)
        };
        let r = t.observe(0.3, Some(&silent), 0.4);
        assert_eq!((r.voice, r.combined), (None, 0.3));
        // Nor does it become the baseline.
        let r = t.observe(0.0, Some(&voice(-30.0, 120.0, 4.0)), 0.4);
        assert_eq!(r.voice, None);
    }

    #[test]
    fn worsening_trend_is_detected() {
        let mut t = EmotionTracker::default();
        for s in [0.0, 0.2, 0.33, 0.5] {
            t.observe(s, None, 0.4);
        }
        assert_eq!(t.worsening(3, 0.4).as_deref(), Some("0.20 -> 0.33 -> 0.50"));
        assert_eq!(t.worsening(3, 0.6), None);
        t.observe(0.4, None, 0.4);
        assert_eq!(t.worsening(3, 0.3), None, "no longer rising");
        assert_eq!(t.worsening(1, 0.0), None);
    }
}

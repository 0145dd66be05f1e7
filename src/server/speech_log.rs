//! What the bot said on the call against what the caller actually heard: each queued
//! utterance with where it starts in the sender's queue, so a barge-in or a bridge that drops
//! the queue records how much of each was played, and the hand-over context can say which
//! lines the caller heard in full.

use std::time::Duration;

use crate::call::record::BotSpeech;
use crate::handover::context::BotSpeechLine;
use crate::pipeline::SpeechKind;

/// Tracks queued bot speech against what the sender actually played.
#[derive(Default)]
pub struct SpeechLog {
    entries: Vec<(
        BotSpeech,
        u64, /* start offset in samples */
        u64, /* length */
    )>,
    enqueued: u64,
}

impl SpeechLog {
    pub fn push(&mut self, kind: SpeechKind, text: String, at: Duration, samples: u64, rate: u32) {
        let speech = BotSpeech {
            kind: match kind {
                SpeechKind::Greeting => "greeting",
                SpeechKind::Reply => "reply",
            },
            text,
            queued_at_ms: at.as_millis() as u64,
            duration_ms: samples * 1000 / u64::from(rate.max(1)),
            played_ms: 0,
            interrupted: false,
        };
        self.entries.push((speech, self.enqueued, samples));
        self.enqueued += samples;
    }

    /// More audio of the last entry (the next unit of a reply spoken in units).
    pub fn extend(&mut self, samples: u64, rate: u32) {
        if let Some((speech, _, len)) = self.entries.last_mut() {
            *len += samples;
            speech.duration_ms = *len * 1000 / u64::from(rate.max(1));
        }
        self.enqueued += samples;
    }

    /// Audio that is not bot speech (the hold tone) went into the same sender.
    pub fn pad(&mut self, samples: u64) {
        self.enqueued += samples;
    }

    /// What the bot said so far, as the hand-over context lists it.
    pub fn lines(&self, queued_now: u64, rate: u32) -> Vec<BotSpeechLine> {
        let played_total = self.enqueued.saturating_sub(queued_now);
        self.entries
            .iter()
            .map(|(speech, start, len)| {
                let played_ms = if speech.interrupted {
                    speech.played_ms
                } else {
                    played_total.saturating_sub(*start).min(*len) * 1000 / u64::from(rate.max(1))
                };
                BotSpeechLine {
                    at_ms: speech.queued_at_ms,
                    text: speech.text.clone(),
                    played_ms,
                    duration_ms: speech.duration_ms,
                    interrupted: speech.interrupted,
                }
            })
            .collect()
    }

    /// Records a barge-in: `unplayed` queued samples were dropped.
    pub fn cut(&mut self, unplayed: u64, rate: u32) {
        let played_total = self.enqueued.saturating_sub(unplayed);
        for (speech, start, len) in &mut self.entries {
            let end = *start + *len;
            if end > played_total && !speech.interrupted && speech.played_ms == 0 {
                let played = played_total.saturating_sub(*start).min(*len);
                speech.played_ms = played * 1000 / u64::from(rate.max(1));
                speech.interrupted = true;
            }
        }
        self.enqueued = played_total;
    }

    pub fn finish(mut self, queued_now: u64, rate: u32) -> Vec<BotSpeech> {
        let played_total = self.enqueued.saturating_sub(queued_now);
        for (speech, start, len) in &mut self.entries {
            if !speech.interrupted {
                let played = played_total.saturating_sub(*start).min(*len);
                speech.played_ms = played * 1000 / u64::from(rate.max(1));
            }
        }
        self.entries.into_iter().map(|(s, _, _)| s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_log_records_cut_point() {
        let mut log = SpeechLog::default();
        log.push(
            SpeechKind::Greeting,
            "hello".into(),
            Duration::ZERO,
            8000,
            8000,
        );
        log.push(
            SpeechKind::Reply,
            "your order".into(),
            Duration::from_secs(3),
            16000,
            8000,
        );
        // 125 ms of the greeting played, then the caller interrupted: 23000 samples unplayed.
        log.cut(23000, 8000);
        let speech = log.finish(0, 8000);
        assert!(speech[0].interrupted);
        assert_eq!(speech[0].played_ms, 125);
        assert!(speech[1].interrupted);
        assert_eq!(speech[1].played_ms, 0);
    }

    #[test]
    fn speech_log_full_playout() {
        let mut log = SpeechLog::default();
        log.push(
            SpeechKind::Greeting,
            "hello".into(),
            Duration::ZERO,
            8000,
            8000,
        );
        let speech = log.finish(0, 8000);
        assert!(!speech[0].interrupted);
        assert_eq!(speech[0].played_ms, 1000);
    }
}

//! Voice activity detection and end-of-utterance detection, as a sans-IO state machine.
//!
//! The [`Endpointer`] is fed 16 kHz audio in pieces of any size and keeps its own media clock
//! from the sample count, so a WAV file fed frame by frame and a live RTP stream behave the same.
//! Frame-level speech probabilities come from `earshot` (a small pure-Rust neural VAD, 16 ms
//! frames); on top of it the endpointer decides when a caller *starts* an utterance (enough voiced
//! time, so a cough or a short "mhm" does not count) and when they *finished* (a configurable
//! stretch of trailing silence, or a maximum length), and hands out the utterance's audio with a
//! little pre-roll so the first syllable is not clipped.

use std::collections::VecDeque;
use std::time::Duration;

use earshot::Detector;
use serde::{Deserialize, Serialize};

use crate::audio::SPEECH_RATE;

/// Samples per VAD decision (earshot's fixed 16 ms frame).
const VAD_FRAME: usize = 256;
const VAD_FRAME_MS: u64 = 16;

/// Endpointing settings (`[vad]` in the gateway configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// Speech probability at or above which a 16 ms frame counts as voiced.
    pub threshold: f32,
    /// Voiced time needed before an utterance is considered started.
    pub min_speech_ms: u64,
    /// Trailing silence that ends an utterance.
    pub end_silence_ms: u64,
    /// Audio kept from before the detected start.
    pub pre_roll_ms: u64,
    /// Silence tolerated inside a candidate start before it is dropped as noise.
    pub onset_gap_ms: u64,
    /// An utterance longer than this is cut and processed.
    pub max_utterance_ms: u64,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            threshold: 0.5,
            min_speech_ms: 160,
            end_silence_ms: 700,
            pre_roll_ms: 240,
            onset_gap_ms: 200,
            max_utterance_ms: 15_000,
        }
    }
}

/// Why an utterance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The caller stopped talking for `end_silence_ms`.
    Silence,
    /// The utterance reached `max_utterance_ms`.
    MaxLength,
    /// The audio stream ended while the caller was talking.
    EndOfStream,
}

/// One finished caller utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    /// Media time of the first sample in `samples` (pre-roll included).
    pub start: Duration,
    /// Media time at which the last voiced frame ended.
    pub end: Duration,
    /// Media time at which the end was decided (what a live call waits for).
    pub decided_at: Duration,
    /// 16 kHz mono samples.
    pub samples: Vec<f32>,
    /// Voiced time inside the utterance.
    pub voiced: Duration,
    /// Why it ended.
    pub reason: EndReason,
}

/// What the endpointer reports.
#[derive(Debug, Clone, PartialEq)]
pub enum VadEvent {
    /// The caller started talking (used for barge-in on live calls).
    SpeechStarted { at: Duration },
    /// The caller finished an utterance.
    Utterance(Utterance),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Silent,
    /// Voiced frames seen, not yet enough to call it speech.
    Onset {
        voiced_ms: u64,
        gap_ms: u64,
    },
    Speaking {
        silence_ms: u64,
    },
}

/// The streaming endpointer. One per call.
pub struct Endpointer {
    config: VadConfig,
    detector: Box<Detector>,
    state: State,
    /// Samples not yet making a whole VAD frame.
    partial: Vec<f32>,
    /// Recent audio kept for pre-roll while silent.
    history: VecDeque<f32>,
    history_cap: usize,
    /// Audio of the current utterance (from its pre-roll on).
    current: Vec<f32>,
    current_start: u64,
    voiced_ms: u64,
    last_voiced_end: u64,
    /// Samples processed through the VAD (the media clock).
    clock: u64,
}

impl Endpointer {
    /// A new endpointer at media time zero.
    pub fn new(config: VadConfig) -> Self {
        let history_cap = (config.pre_roll_ms as usize * SPEECH_RATE as usize) / 1000
            + (config.min_speech_ms + config.onset_gap_ms) as usize * SPEECH_RATE as usize / 1000
            + VAD_FRAME;
        Endpointer {
            config,
            detector: Detector::default_boxed(),
            state: State::Silent,
            partial: Vec::with_capacity(VAD_FRAME),
            history: VecDeque::with_capacity(history_cap),
            history_cap,
            current: Vec::new(),
            current_start: 0,
            voiced_ms: 0,
            last_voiced_end: 0,
            clock: 0,
        }
    }

    /// Media time reached so far.
    pub fn now(&self) -> Duration {
        samples_to_duration(self.clock)
    }

    /// Whether the caller is currently mid-utterance.
    pub fn is_speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// The utterance in progress (pre-roll included) while the caller is speaking: what a
    /// partial recognition pass decodes.
    pub fn current_audio(&self) -> Option<&[f32]> {
        self.is_speaking().then_some(self.current.as_slice())
    }

    /// Feeds 16 kHz samples; appends any events to `events`.
    pub fn push(&mut self, samples: &[f32], events: &mut Vec<VadEvent>) {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (VAD_FRAME - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() == VAD_FRAME {
                let frame = std::mem::take(&mut self.partial);
                self.process_frame(&frame, events);
                self.partial = frame;
                self.partial.clear();
            }
        }
    }

    /// Ends the stream: an utterance in progress is delivered with [`EndReason::EndOfStream`].
    pub fn finish(&mut self, events: &mut Vec<VadEvent>) {
        if !self.partial.is_empty() {
            let mut frame = std::mem::take(&mut self.partial);
            frame.resize(VAD_FRAME, 0.0);
            self.process_frame(&frame, events);
        }
        if let State::Speaking { .. } = self.state {
            self.emit(EndReason::EndOfStream, events);
        }
        self.state = State::Silent;
    }

    fn process_frame(&mut self, frame: &[f32], events: &mut Vec<VadEvent>) {
        let score = self.detector.predict_f32(frame);
        let voiced = score >= self.config.threshold;
        let frame_start = self.clock;
        self.clock += VAD_FRAME as u64;
        match self.state {
            State::Silent => {
                self.remember(frame);
                if voiced {
                    self.state = State::Onset {
                        voiced_ms: VAD_FRAME_MS,
                        gap_ms: 0,
                    };
                    // The candidate starts pre_roll before this frame.
                    let pre = ms_to_samples(self.config.pre_roll_ms);
                    self.current_start = frame_start.saturating_sub(pre);
                    self.last_voiced_end = self.clock;
                    self.check_onset(events);
                }
            }
            State::Onset { voiced_ms, gap_ms } => {
                self.remember(frame);
                if voiced {
                    self.last_voiced_end = self.clock;
                    self.state = State::Onset {
                        voiced_ms: voiced_ms + VAD_FRAME_MS,
                        gap_ms: 0,
                    };
                    self.check_onset(events);
                } else if gap_ms + VAD_FRAME_MS > self.config.onset_gap_ms {
                    self.state = State::Silent;
                } else {
                    self.state = State::Onset {
                        voiced_ms,
                        gap_ms: gap_ms + VAD_FRAME_MS,
                    };
                }
            }
            State::Speaking { silence_ms } => {
                self.current.extend_from_slice(frame);
                if voiced {
                    self.voiced_ms += VAD_FRAME_MS;
                    self.last_voiced_end = self.clock;
                    self.state = State::Speaking { silence_ms: 0 };
                } else {
                    self.state = State::Speaking {
                        silence_ms: silence_ms + VAD_FRAME_MS,
                    };
                }
                let length_ms = samples_to_ms(self.clock - self.current_start);
                if let State::Speaking { silence_ms } = self.state {
                    if silence_ms >= self.config.end_silence_ms {
                        self.emit(EndReason::Silence, events);
                    } else if length_ms >= self.config.max_utterance_ms {
                        self.emit(EndReason::MaxLength, events);
                    }
                }
            }
        }
    }

    fn check_onset(&mut self, events: &mut Vec<VadEvent>) {
        let State::Onset { voiced_ms, .. } = self.state else {
            return;
        };
        if voiced_ms < self.config.min_speech_ms {
            return;
        }
        // Speech confirmed: the utterance is the history from its start on.
        let history_start = self.clock - self.history.len() as u64;
        self.current_start = self.current_start.max(history_start);
        let skip = (self.current_start - history_start) as usize;
        self.current.clear();
        self.current.extend(self.history.iter().skip(skip));
        self.history.clear();
        self.voiced_ms = voiced_ms;
        self.state = State::Speaking { silence_ms: 0 };
        events.push(VadEvent::SpeechStarted {
            at: samples_to_duration(self.current_start),
        });
    }

    fn remember(&mut self, frame: &[f32]) {
        self.history.extend(frame.iter().copied());
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
    }

    fn emit(&mut self, reason: EndReason, events: &mut Vec<VadEvent>) {
        // Keep a short tail after the last voiced frame, drop the rest of the silence.
        let tail = ms_to_samples(self.config.end_silence_ms.min(200));
        let keep_until = (self.last_voiced_end + tail).min(self.clock);
        let keep = (keep_until.saturating_sub(self.current_start)) as usize;
        self.current.truncate(keep);
        let samples = std::mem::take(&mut self.current);
        events.push(VadEvent::Utterance(Utterance {
            start: samples_to_duration(self.current_start),
            end: samples_to_duration(self.last_voiced_end),
            decided_at: samples_to_duration(self.clock),
            samples,
            voiced: Duration::from_millis(self.voiced_ms),
            reason,
        }));
        self.voiced_ms = 0;
        self.state = State::Silent;
        if reason == EndReason::MaxLength {
            // The caller is still talking: the next utterance starts right here.
            self.current_start = self.clock;
        }
    }
}

fn ms_to_samples(ms: u64) -> u64 {
    ms * u64::from(SPEECH_RATE) / 1000
}

fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / u64::from(SPEECH_RATE)
}

fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_micros(samples * 1_000_000 / u64::from(SPEECH_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_signal::{silence, voiced};

    fn run(audio: &[f32], config: VadConfig) -> Vec<VadEvent> {
        let mut ep = Endpointer::new(config);
        let mut events = Vec::new();
        for frame in audio.chunks(320) {
            ep.push(frame, &mut events);
        }
        ep.finish(&mut events);
        events
    }

    fn utterances(events: &[VadEvent]) -> Vec<&Utterance> {
        events
            .iter()
            .filter_map(|e| match e {
                VadEvent::Utterance(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    /// Stand-in for speech; `detector_calls_synthetic_voice_speech` checks the VAD agrees.
    fn speechlike(ms: u64) -> Vec<f32> {
        voiced(ms)
    }

    #[test]
    fn silence_gives_no_events() {
        let events = run(&silence(3000), VadConfig::default());
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn detector_calls_synthetic_voice_speech() {
        // Guard for the other tests: if the stand-in stops being speech to the VAD, say so.
        let mut det = Detector::default_boxed();
        let audio = speechlike(1000);
        let voiced_frames = audio
            .chunks_exact(VAD_FRAME)
            .filter(|f| det.predict_f32(f) >= 0.5)
            .count();
        assert!(
            voiced_frames > 20,
            "only {voiced_frames} of 62 frames voiced"
        );
    }

    #[test]
    fn two_utterances_separated_by_a_pause() {
        let mut audio = silence(500);
        audio.extend(speechlike(1200));
        audio.extend(silence(1500));
        audio.extend(speechlike(900));
        audio.extend(silence(1000));
        let events = run(&audio, VadConfig::default());
        let utts = utterances(&events);
        assert_eq!(utts.len(), 2, "{events:?}");
        assert!(utts.iter().all(|u| u.reason == EndReason::Silence));
        // First utterance starts near 0.5 s (pre-roll allowed) and ends near 1.7 s.
        let u = utts[0];
        assert!(u.start <= Duration::from_millis(520), "start {:?}", u.start);
        assert!(u.start >= Duration::from_millis(200), "start {:?}", u.start);
        assert!(
            u.end >= Duration::from_millis(1500) && u.end <= Duration::from_millis(1800),
            "end {:?}",
            u.end
        );
        // The decision comes end_silence_ms after the end of speech.
        assert!(u.decided_at >= u.end + Duration::from_millis(650));
        let started = events
            .iter()
            .filter(|e| matches!(e, VadEvent::SpeechStarted { .. }))
            .count();
        assert_eq!(started, 2);
    }

    #[test]
    fn short_blip_is_not_an_utterance() {
        let mut audio = silence(500);
        audio.extend(speechlike(48));
        audio.extend(silence(1500));
        let events = run(&audio, VadConfig::default());
        assert!(utterances(&events).is_empty(), "{events:?}");
    }

    #[test]
    fn short_pause_inside_speech_does_not_split() {
        let mut audio = silence(300);
        audio.extend(speechlike(800));
        audio.extend(silence(300));
        audio.extend(speechlike(800));
        audio.extend(silence(1000));
        let utts_events = run(&audio, VadConfig::default());
        assert_eq!(utterances(&utts_events).len(), 1);
    }

    #[test]
    fn long_speech_is_cut_at_max_length() {
        let config = VadConfig {
            max_utterance_ms: 2000,
            ..VadConfig::default()
        };
        let mut audio = speechlike(5000);
        audio.extend(silence(1000));
        let events = run(&audio, config);
        let utts = utterances(&events);
        assert!(utts.len() >= 2, "{events:?}");
        assert_eq!(utts[0].reason, EndReason::MaxLength);
        assert!(utts[0].samples.len() <= 2000 * 16 + VAD_FRAME);
    }

    #[test]
    fn stream_ending_mid_speech_delivers_it() {
        let mut audio = silence(300);
        audio.extend(speechlike(1000));
        let events = run(&audio, VadConfig::default());
        let utts = utterances(&events);
        assert_eq!(utts.len(), 1);
        assert_eq!(utts[0].reason, EndReason::EndOfStream);
    }

    #[test]
    fn pre_roll_is_included() {
        let mut audio = silence(1000);
        audio.extend(speechlike(1000));
        audio.extend(silence(1000));
        let events = run(&audio, VadConfig::default());
        let u = utterances(&events)[0];
        // The audio begins before the voiced part: its first pre-roll samples are silent.
        assert!(u.samples[..1000].iter().all(|s| s.abs() < 1e-6));
        assert!(u.samples.len() >= 16 * 1000);
    }
}

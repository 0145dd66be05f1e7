//! The no-input clock: when a caller's silence after the bot's prompt counts as no input.
//!
//! Two stages share it. The respond stage knows when the bot's speech ends (in media time:
//! where the last unit was placed plus its length), so after it has spoken it *arms* the clock
//! with a deadline: that end plus the flow's `no_input_s`. The listen stage knows the caller's
//! media time and whether the caller is speaking, so it *fires* the clock, once per arm, when
//! the caller's media time passes the deadline with no utterance since the arm. Everything is
//! media time, so a file fed faster than real time meets the same silences as a call.
//!
//! An arm names how many caller utterances the respond stage had received when it armed: an
//! utterance the listen stage has sent since makes the arm stale (the bot owes that utterance
//! an answer, and arms again after it). While the latest arm is stale the listen stage holds
//! back audio that lies past the earliest possible deadline *and* ahead of the wall clock: a
//! file waits for the bot's answer as a call would wait for the bot's words, while a live
//! call's audio, which is never ahead of the wall clock, is never held.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::CallInput;

/// Media time a frame may run ahead of the wall clock before it counts as file input (live
/// calls jitter by a few packets at most).
const AHEAD_OF_WALL_CLOCK: Duration = Duration::from_millis(500);

/// The respond stage's latest arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NoInputArm {
    /// Caller utterances the respond stage had received when it armed.
    heard: u64,
    /// Media time at which the silence counts as no input; none while the bot waits for
    /// nothing (no-input off, the call handed over or ended).
    deadline: Option<Duration>,
    /// Counts the arms (0: not armed yet), so that each fires at most once.
    generation: u64,
}

/// A clock for one call: the respond stage's [`NoInputArmer`] and the listen stage's
/// [`NoInputWatch`]. None when the flow has no-input handling off.
pub(crate) fn clock(timeout: Option<Duration>) -> Option<(NoInputArmer, NoInputWatch)> {
    let timeout = timeout?;
    let (tx, rx) = watch::channel(NoInputArm::default());
    let armer = NoInputArmer {
        tx,
        timeout,
        heard: 0,
        generation: 0,
        deadline: None,
    };
    let watch = NoInputWatch {
        arm: rx,
        timeout,
        sent: 0,
        last_voice: Duration::ZERO,
        fired: None,
        started: Instant::now(),
    };
    Some((armer, watch))
}

/// The respond stage's side.
#[derive(Debug)]
pub(crate) struct NoInputArmer {
    tx: watch::Sender<NoInputArm>,
    timeout: Duration,
    heard: u64,
    generation: u64,
    deadline: Option<Duration>,
}

impl NoInputArmer {
    /// A caller utterance reached the respond stage (arms made before it are stale).
    pub(crate) fn heard_utterance(&mut self) {
        self.heard += 1;
    }

    /// The bot's speech ends at media time `speech_end`: the silence counts from there.
    pub(crate) fn arm(&mut self, speech_end: Duration) {
        self.set(Some(speech_end + self.timeout));
    }

    /// Arms again with the deadline of the last arm (after a turn that needed no answer:
    /// noise, an ignored key).
    pub(crate) fn keep(&mut self) {
        self.set(self.deadline);
    }

    /// The bot waits for nothing any more (hand-over, goodbye).
    pub(crate) fn disarm(&mut self) {
        self.set(None);
    }

    fn set(&mut self, deadline: Option<Duration>) {
        self.generation += 1;
        self.deadline = deadline;
        // The listen stage may be gone (the caller hung up): nothing left to fire.
        let _ = self.tx.send(NoInputArm {
            heard: self.heard,
            deadline,
            generation: self.generation,
        });
    }
}

/// The listen stage's side.
#[derive(Debug)]
pub(crate) struct NoInputWatch {
    arm: watch::Receiver<NoInputArm>,
    timeout: Duration,
    /// Utterances sent on to the respond stage.
    sent: u64,
    /// Media time the caller's last utterance ended.
    last_voice: Duration,
    /// The arm that fired last, and the media time it fired at.
    fired: Option<(u64, Duration)>,
    /// Wall-clock start of the call's listening, to tell file input from a call's.
    started: Instant,
}

impl NoInputWatch {
    /// An utterance that ended at media time `end` goes to the respond stage.
    pub(crate) fn sent_utterance(&mut self, end: Duration) {
        self.sent += 1;
        self.last_voice = end;
    }

    /// The latest arm, when it was made after the caller's latest utterance was answered.
    fn current(&self) -> Option<NoInputArm> {
        let arm = *self.arm.borrow();
        (arm.generation > 0 && arm.heard == self.sent).then_some(arm)
    }

    /// Whether `item` must wait for the respond stage's next arm (see the module docs): the
    /// latest arm is stale or has fired, and the frame lies past the earliest deadline the
    /// next arm can set (a silence's length after the caller's last words or the last firing).
    pub(crate) fn holds(&self, item: &CallInput) -> bool {
        let CallInput::Audio(frame) = item else {
            return false;
        };
        // The respond stage is done with the call (hand-over, goodbye): no arm will come.
        if self.arm.has_changed().is_err() {
            return false;
        }
        let fired = self.fired.map(|(generation, _)| generation);
        let waiting = match self.current() {
            None => true,
            Some(arm) => fired == Some(arm.generation),
        };
        let since = self
            .fired
            .map_or(self.last_voice, |(_, at)| at.max(self.last_voice));
        waiting
            && frame.at >= since + self.timeout
            && frame.at > self.started.elapsed() + AHEAD_OF_WALL_CLOCK
    }

    /// Whether the caller's silence at media time `now` is no input (at most once per arm).
    pub(crate) fn due(&mut self, now: Duration, speaking: bool) -> bool {
        if speaking {
            return false;
        }
        let Some(arm) = self.current() else {
            return false;
        };
        if self.fired.is_some_and(|(g, _)| g == arm.generation)
            || arm.deadline.is_none_or(|d| now < d)
        {
            return false;
        }
        self.fired = Some((arm.generation, now));
        true
    }

    /// Waits for the respond stage's next arm, or for the respond stage to be gone (then
    /// nothing waits for an arm any more, see [`NoInputWatch::holds`]).
    pub(crate) async fn changed(&mut self) {
        let _ = self.arm.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::frames::AudioFrame;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn frame(at: Duration) -> CallInput {
        CallInput::Audio(AudioFrame {
            at,
            samples: vec![0.0; 160],
            rate: 8000,
        })
    }

    #[test]
    fn fires_once_per_arm_after_the_deadline_and_never_while_the_caller_speaks() {
        let (mut armer, mut watch) = clock(Some(secs(7))).expect("on");
        assert!(!watch.due(secs(30), false), "not armed yet");
        armer.arm(secs(9)); // the greeting ends at 9 s
        assert!(!watch.due(secs(15), false));
        assert!(!watch.due(secs(16), true), "the caller is speaking");
        assert!(watch.due(secs(16), false));
        assert!(!watch.due(secs(17), false), "once per arm");
        armer.arm(secs(20));
        assert!(watch.due(secs(27), false));
    }

    #[test]
    fn an_utterance_makes_the_arm_stale_until_the_bot_has_answered_it() {
        let (mut armer, mut watch) = clock(Some(secs(5))).expect("on");
        armer.arm(secs(2));
        watch.sent_utterance(secs(3));
        assert!(!watch.due(secs(8), false), "the bot owes an answer");
        armer.heard_utterance();
        armer.arm(secs(6));
        assert!(!watch.due(secs(10), false));
        assert!(watch.due(secs(11), false));
        // Noise: the bot keeps the deadline it had.
        watch.sent_utterance(secs(12));
        armer.heard_utterance();
        armer.keep();
        assert!(watch.due(secs(12), false));
        armer.disarm();
        assert!(!watch.due(secs(100), false), "the bot waits for nothing");
    }

    #[test]
    fn only_input_from_the_future_waits_for_the_bot() {
        let (mut armer, mut watch) = clock(Some(secs(7))).expect("on");
        // A file: media time far ahead of the wall clock, past the earliest deadline.
        assert!(watch.holds(&frame(secs(8))));
        assert!(!watch.holds(&frame(secs(6))), "before any deadline");
        assert!(!watch.holds(&CallInput::End));
        armer.arm(secs(9));
        assert!(
            !watch.holds(&frame(secs(8))),
            "armed: the frame can be judged"
        );
        assert!(watch.due(secs(16), false));
        assert!(
            watch.holds(&frame(secs(23))),
            "fired: the bot's next prompt sets the next deadline"
        );
        assert!(!watch.holds(&frame(secs(22))));
        armer.arm(secs(20));
        assert!(!watch.holds(&frame(secs(23))));
        watch.sent_utterance(secs(20));
        assert!(watch.holds(&frame(secs(28))));
        // A live call: media time is the wall clock, never held.
        let (_armer, live) = clock(Some(Duration::ZERO)).expect("on");
        assert!(!live.holds(&frame(Duration::ZERO)));
        // The bot let go of the call while the caller spoke once more: no arm will come, and
        // nothing may wait for one.
        drop(armer);
        assert!(!watch.holds(&frame(secs(40))));
    }

    #[test]
    fn off_without_a_timeout() {
        assert!(clock(None).is_none());
    }
}

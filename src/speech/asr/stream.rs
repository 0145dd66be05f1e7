//! When to decode the growing utterance for a partial hypothesis: a sans-IO schedule.
//!
//! A call's listen stage pushes the length of the utterance so far (in media time) and asks
//! [`PartialSchedule::due`] whether to start a partial pass; the pass runs on the inference
//! pool and comes back through [`PartialSchedule::done`]. The schedule holds three rules:
//! - **interval**: a new pass once the utterance has grown by `interval` since the last one;
//! - **one at a time**: never a second pass while one is running for the call;
//! - **budget**: the compute spent on partials of an utterance stays within `budget` cores
//!   times the utterance's length (the next pass's cost is estimated from the last one's,
//!   scaled by length, as the encoder's cost grows with the audio). A skipped pass is counted.
//!
//! A result that comes back after its utterance ended is stale and is dropped, and identical
//! consecutive texts are not repeated. The schedule owns no audio and no clock: the caller
//! takes the snapshot from the endpointer and measures the pass's wall time.

use std::time::Duration;

/// What the schedule decided for a pass that came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialOutcome {
    /// A new hypothesis for the current utterance.
    New(String),
    /// The same text as the last one, or empty: nothing to show.
    Unchanged,
    /// The utterance it was for has ended.
    Stale,
}

/// Counters of one call's partial passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialStats {
    pub passes: u32,
    pub skipped_for_budget: u32,
    pub compute: Duration,
}

/// The schedule for one call (see the module documentation).
#[derive(Debug, Clone)]
pub struct PartialSchedule {
    interval: Duration,
    budget: f32,
    /// Which utterance is current (bumped at each start).
    utterance: u64,
    /// The utterance length at the last pass started.
    last_at: Duration,
    in_flight: Option<u64>,
    /// Compute spent on this utterance's passes.
    spent: Duration,
    /// The last pass's cost per second of audio.
    cost_per_second: f32,
    last_text: String,
    stats: PartialStats,
}

impl PartialSchedule {
    /// `interval` zero turns partials off.
    pub fn new(interval: Duration, budget: f32) -> Self {
        PartialSchedule {
            interval,
            budget: budget.max(0.0),
            utterance: 0,
            last_at: Duration::ZERO,
            in_flight: None,
            spent: Duration::ZERO,
            cost_per_second: 0.0,
            last_text: String::new(),
            stats: PartialStats::default(),
        }
    }

    /// Whether partials are on.
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero() && self.budget > 0.0
    }

    /// A new utterance starts (speech confirmed).
    pub fn start(&mut self) {
        self.utterance += 1;
        self.last_at = Duration::ZERO;
        self.spent = Duration::ZERO;
        self.last_text.clear();
    }

    /// The current utterance ended: passes still running for it become stale.
    pub fn end(&mut self) {
        self.utterance += 1;
    }

    /// With the utterance `length` long so far: Some(ticket) when a pass should start now.
    pub fn due(&mut self, length: Duration) -> Option<u64> {
        if !self.enabled() || self.in_flight.is_some() {
            return None;
        }
        if length < self.last_at + self.interval {
            return None;
        }
        let estimate = self.cost_per_second * length.as_secs_f32();
        let allowed = self.budget * length.as_secs_f32();
        if self.spent.as_secs_f32() + estimate > allowed {
            self.stats.skipped_for_budget += 1;
            // Try again one interval later, when the budget has grown with the audio.
            self.last_at = length;
            return None;
        }
        self.last_at = length;
        self.in_flight = Some(self.utterance);
        Some(self.utterance)
    }

    /// A pass for `ticket` over `length` of audio came back after `cost` of compute with
    /// `text`.
    pub fn done(
        &mut self,
        ticket: u64,
        length: Duration,
        cost: Duration,
        text: &str,
    ) -> PartialOutcome {
        if self.in_flight == Some(ticket) {
            self.in_flight = None;
        }
        self.stats.passes += 1;
        self.stats.compute += cost;
        if length > Duration::ZERO {
            self.cost_per_second = cost.as_secs_f32() / length.as_secs_f32();
        }
        if ticket != self.utterance {
            return PartialOutcome::Stale;
        }
        self.spent += cost;
        let text = text.trim();
        if text.is_empty() || text == self.last_text {
            return PartialOutcome::Unchanged;
        }
        self.last_text = text.to_string();
        PartialOutcome::New(self.last_text.clone())
    }

    /// The call's counters so far.
    pub fn stats(&self) -> PartialStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn passes_follow_the_interval_one_at_a_time() {
        let mut s = PartialSchedule::new(ms(500), 0.1);
        s.start();
        assert_eq!(s.due(ms(300)), None);
        let t = s.due(ms(500)).expect("due at 500 ms");
        assert_eq!(s.due(ms(1200)), None, "one pass at a time");
        assert_eq!(
            s.done(t, ms(500), ms(20), "where is"),
            PartialOutcome::New("where is".into())
        );
        assert_eq!(s.due(ms(900)), None, "interval counts from the last start");
        let t = s.due(ms(1000)).expect("due at 1000 ms");
        assert_eq!(
            s.done(t, ms(1000), ms(30), " where is "),
            PartialOutcome::Unchanged
        );
    }

    #[test]
    fn the_budget_skips_passes_it_cannot_afford() {
        // 0.1 core: over 1 s of audio, 100 ms of compute.
        let mut s = PartialSchedule::new(ms(500), 0.1);
        s.start();
        let t = s.due(ms(500)).unwrap();
        // Expensive: 80 ms for 0.5 s, i.e. 160 ms per second of audio.
        s.done(t, ms(500), ms(80), "a");
        // At 1 s: spent 80 + estimated 160 > 100 allowed.
        assert_eq!(s.due(ms(1000)), None);
        assert_eq!(s.stats().skipped_for_budget, 1);
        // Much later the budget has grown: 80 + 0.16*3 = 560 > 300: still skipped; at 10 s,
        // 80 + 1600 > 1000: still; the cost per second is what decides.
        assert_eq!(s.due(ms(1500)), None);
        // A cheap engine fits: cost 20 ms per 0.5 s.
        let mut cheap = PartialSchedule::new(ms(500), 0.1);
        cheap.start();
        let t = cheap.due(ms(500)).unwrap();
        cheap.done(t, ms(500), ms(20), "a");
        assert!(cheap.due(ms(1000)).is_some());
    }

    #[test]
    fn late_results_of_an_ended_utterance_are_stale() {
        let mut s = PartialSchedule::new(ms(500), 0.1);
        s.start();
        let t = s.due(ms(500)).unwrap();
        s.end();
        assert_eq!(s.done(t, ms(500), ms(10), "hello"), PartialOutcome::Stale);
        s.start();
        assert!(
            s.due(ms(500)).is_some(),
            "a stale pass does not block the next utterance"
        );
    }

    #[test]
    fn zero_interval_turns_partials_off() {
        let mut s = PartialSchedule::new(Duration::ZERO, 0.1);
        s.start();
        assert!(!s.enabled());
        assert_eq!(s.due(ms(5000)), None);
    }
}

//! Whether the gateway can take calls (what `/readyz` reports): the models are loaded, the
//! SIP socket is being served and the gateway is not draining. The server sets the flags as
//! it starts and when it begins to drain.
//!
//! [`Stopper`] is how a stop is asked for: the process's signals (SIGTERM/SIGINT) and the
//! admin API's `POST /api/drain` both go through it, so the signalling task sees one ordered
//! sequence of requests: the first drains (new calls refused, calls in progress finish), a
//! second signal hangs up what is left at once.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    models: AtomicBool,
    sip: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// The speech model, voice and flows are loaded.
    pub fn set_models_loaded(&self, loaded: bool) {
        self.models.store(loaded, Ordering::Release);
    }

    /// The SIP socket is bound and its signalling task is serving it.
    pub fn set_sip_listening(&self, listening: bool) {
        self.sip.store(listening, Ordering::Release);
    }

    /// The gateway is draining: it refuses new calls and waits for the calls in progress.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    pub fn models_loaded(&self) -> bool {
        self.models.load(Ordering::Acquire)
    }

    pub fn sip_listening(&self) -> bool {
        self.sip.load(Ordering::Acquire)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// How far a stop has gone; it only ever goes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Serving.
    Running,
    /// Refusing new calls, waiting for the calls in progress to end.
    Drain,
    /// Hanging up the calls in progress and exiting.
    HangUp,
}

/// Asks the signalling task to drain or to stop (shared by the signal handler and the admin
/// API).
#[derive(Debug)]
pub struct Stopper {
    level: watch::Sender<StopLevel>,
}

impl Default for Stopper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stopper {
    pub fn new() -> Self {
        Self {
            level: watch::Sender::new(StopLevel::Running),
        }
    }

    /// A SIGTERM/SIGINT: the first drains, the next hangs up at once. Returns the new level.
    pub fn signal(&self) -> StopLevel {
        let mut now = StopLevel::Running;
        self.level.send_modify(|l| {
            *l = match *l {
                StopLevel::Running => StopLevel::Drain,
                StopLevel::Drain | StopLevel::HangUp => StopLevel::HangUp,
            };
            now = *l;
        });
        now
    }

    /// `POST /api/drain`: drains; a gateway already draining or stopping stays as it is.
    /// Returns the level after the call.
    pub fn drain(&self) -> StopLevel {
        let mut now = StopLevel::Running;
        self.level.send_modify(|l| {
            if *l == StopLevel::Running {
                *l = StopLevel::Drain;
            }
            now = *l;
        });
        now
    }

    pub fn level(&self) -> StopLevel {
        *self.level.borrow()
    }

    /// For the signalling task: sees every change of level.
    pub fn subscribe(&self) -> watch::Receiver<StopLevel> {
        self.level.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_drains_and_the_second_hangs_up() {
        let stop = Stopper::new();
        let rx = stop.subscribe();
        assert_eq!(stop.level(), StopLevel::Running);
        assert_eq!(stop.signal(), StopLevel::Drain);
        assert_eq!(*rx.borrow(), StopLevel::Drain);
        assert_eq!(stop.signal(), StopLevel::HangUp);
        assert_eq!(stop.signal(), StopLevel::HangUp);
    }

    #[test]
    fn the_admin_drain_never_escalates() {
        let stop = Stopper::new();
        assert_eq!(stop.drain(), StopLevel::Drain);
        assert_eq!(stop.drain(), StopLevel::Drain, "a second drain request");
        assert_eq!(
            stop.signal(),
            StopLevel::HangUp,
            "a signal during the drain"
        );
        assert_eq!(stop.drain(), StopLevel::HangUp);
    }
}

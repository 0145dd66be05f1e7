//! Whether the gateway can take calls (what `/readyz` reports): the models are loaded and the
//! SIP socket is being served. The server sets the flags as it starts and clears them when it
//! begins to drain.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    models: AtomicBool,
    sip: AtomicBool,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// The speech model, voice and flows are loaded.
    pub fn set_models_loaded(&self, loaded: bool) {
        self.models.store(loaded, Ordering::Release);
    }

    /// The SIP socket is bound and its signalling task is serving it (false once draining).
    pub fn set_sip_listening(&self, listening: bool) {
        self.sip.store(listening, Ordering::Release);
    }

    pub fn models_loaded(&self) -> bool {
        self.models.load(Ordering::Acquire)
    }

    pub fn sip_listening(&self) -> bool {
        self.sip.load(Ordering::Acquire)
    }
}

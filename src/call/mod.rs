//! Call control: what happens to an answered call once the bot decides to hand it over (the
//! webhook gate, the hunt over extensions, ring timeouts, the whisper, bridging or REFER
//! transfers, the agent hanging up, the callback request) and how the call ends.
//!
//! [`control::CallControl`] is a sans-IO state machine like the SIP endpoint: fed events and
//! an injected `Instant`, it returns what to do. The media task in `server::call` is the thin
//! IO shell around it. [`record`] holds the typed facts the call reports (who ended it, how the
//! transfer went, the events it emits), turned into JSON only at the boundaries.

pub mod control;
pub mod record;
#[cfg(test)]
mod sip_harness;
#[cfg(test)]
mod tests;

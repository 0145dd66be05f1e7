//! Call media, sans-IO: RTP packets in and out, codecs, the jitter buffer, DTMF events and
//! paced playout. Nothing here owns a socket or reads a clock; the server layer feeds packets
//! and the current `Instant` and sends what comes back.
//!
//! | module | job |
//! | --- | --- |
//! | [`codec`], [`g711`] | the negotiated codec, G.711 mu-law/A-law |
//! | [`rtp`] | RTP packets to and from bytes, RTCP demultiplexing |
//! | [`jitter`] | the adaptive jitter buffer |
//! | [`dtmf`] | RFC 4733 telephone-events in and out |
//! | [`latch`] | which sources may drive a leg's media: latching, the SSRC lock |
//! | [`receiver`] | one call's receive side: jitter buffer, decoding, concealment, DTMF |
//! | [`sender`] | one call's send side: 20 ms pacing, silence, markers, DTMF |
//! | [`rtcp`] | sender and receiver reports out, SR/RR/BYE in |
//! | [`barge_in`] | when the caller's speech must stop the bot |
//! | [`srtp`] | SRTP/SRTCP protect and unprotect with SDES keys, drops counted |
//!
//! Every parser here takes `&[u8]` and returns a `Result`; `fuzz_tests` feeds them (and the
//! whole receive path) seeded random and mutated datagrams.

pub mod barge_in;
pub mod codec;
pub mod dtmf;
#[cfg(test)]
mod fuzz_tests;
pub mod g711;
pub mod jitter;
pub mod latch;
pub mod receiver;
pub mod rtcp;
pub mod rtp;
pub mod sender;
pub mod srtp;

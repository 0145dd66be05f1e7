//! Call media, sans-IO: RTP packets in and out, codecs, the jitter buffer, DTMF events and
//! paced playout. Nothing here owns a socket or reads a clock; the server layer feeds packets
//! and the current `Instant` and sends what comes back.

pub mod codec;

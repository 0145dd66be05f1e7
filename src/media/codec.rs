//! The audio codecs the gateway speaks on RTP and their static RTP payload types.

use std::fmt;

use super::g711;

/// A negotiated audio codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law (RTP payload type 0), 8 kHz.
    Pcmu,
    /// G.711 A-law (RTP payload type 8), 8 kHz.
    Pcma,
}

impl Codec {
    /// Every codec the gateway can offer or accept, in its own order of preference.
    pub const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// The static RTP payload type (RFC 3551).
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name used in SDP `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        8000
    }

    /// The audio sample rate the codec carries (equal to the clock rate for G.711).
    pub fn sample_rate(self) -> u32 {
        8000
    }

    /// Looks a codec up by its SDP encoding name and clock rate (case-insensitive).
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.encoding_name().eq_ignore_ascii_case(name) && c.clock_rate() == clock_rate)
    }

    /// Samples in one packet of `ptime_ms`.
    pub fn samples_per_frame(self, ptime_ms: u32) -> usize {
        (self.sample_rate() * ptime_ms / 1000) as usize
    }

    /// Decodes an RTP payload, appending samples in [-1, 1] to `out`.
    pub fn decode(self, payload: &[u8], out: &mut Vec<f32>) {
        let decode = match self {
            Codec::Pcmu => g711::decode_ulaw,
            Codec::Pcma => g711::decode_alaw,
        };
        out.extend(payload.iter().map(|&b| g711::to_f32(decode(b))));
    }

    /// Encodes samples in [-1, 1] (clamped), appending the payload bytes to `out`.
    pub fn encode(self, samples: &[f32], out: &mut Vec<u8>) {
        let encode = match self {
            Codec::Pcmu => g711::encode_ulaw,
            Codec::Pcma => g711::encode_alaw,
        };
        out.extend(samples.iter().map(|&s| encode(g711::to_i16(s))));
    }

    /// Looks a codec up by its static payload type.
    pub fn from_static_payload_type(pt: u8) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.static_payload_type() == pt)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.encoding_name(), self.clock_rate())
    }
}

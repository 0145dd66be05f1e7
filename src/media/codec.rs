//! The audio codecs the gateway speaks on RTP: G.711 mu-law and A-law (every SIP phone, PBX
//! and trunk) and Opus (RFC 7587; softphones, WebRTC gateways), with their payload types and
//! clocks, and the per-call encoder and decoder state.
//!
//! Opus runs at 16 kHz inside the gateway (the rate speech recognition wants), whatever the
//! far end's capture rate; its RTP clock is always 48 kHz and its SDP always says two channels,
//! as RFC 7587 requires, while the stream itself is mono.

use std::fmt;

use audiopus::coder::{Decoder as OpusDecoder, Encoder as OpusEncoder};
use audiopus::{Application, Bitrate, Channels, SampleRate};

use super::g711;

/// The dynamic payload type offered for Opus in our own offers.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Opus's internal sample rate in the gateway.
const OPUS_RATE: u32 = 16_000;
/// Opus bitrate for speech at 16 kHz (wideband voice is clear at 24 kbit/s).
const OPUS_BITRATE: i32 = 24_000;
/// The longest Opus frame (120 ms) at 16 kHz, for decode buffers.
const OPUS_MAX_FRAME: usize = 1920;

/// A negotiated audio codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law (RTP payload type 0), 8 kHz.
    Pcmu,
    /// G.711 A-law (RTP payload type 8), 8 kHz.
    Pcma,
    /// Opus (dynamic payload type), 48 kHz RTP clock, 16 kHz inside the gateway.
    Opus,
}

/// Why a codec's state could not be created or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("Opus: {0}")]
    Opus(String),
}

impl Codec {
    /// Every codec the gateway can offer or accept, in its own order of preference (the
    /// caller's order decides an answer).
    pub const ALL: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::Opus];

    /// The static RTP payload type (RFC 3551), if the codec has one.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::Opus => None,
        }
    }

    /// The payload type to use in our own offers.
    pub fn default_payload_type(self) -> u8 {
        self.static_payload_type().unwrap_or(OPUS_PAYLOAD_TYPE)
    }

    /// The encoding name used in SDP `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Opus => "opus",
        }
    }

    /// The channel count written in `a=rtpmap` (RFC 7587 says 2 for Opus), if any.
    pub fn rtpmap_channels(self) -> Option<u8> {
        match self {
            Codec::Opus => Some(2),
            _ => None,
        }
    }

    /// The `a=fmtp` parameters of our answer or offer, if any.
    pub fn fmtp(self) -> Option<&'static str> {
        match self {
            Codec::Opus => {
                Some("useinbandfec=1; maxplaybackrate=16000; sprop-maxcapturerate=16000")
            }
            _ => None,
        }
    }

    /// The RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::Opus => 48_000,
        }
    }

    /// The sample rate of the audio the gateway encodes and decodes.
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::Opus => OPUS_RATE,
        }
    }

    /// Looks a codec up by its SDP encoding name, clock rate and channel count (case-insensitive
    /// name; a missing channel count means one).
    pub fn from_rtpmap(name: &str, clock_rate: u32, channels: Option<&str>) -> Option<Codec> {
        let channels = channels.map_or("1", str::trim);
        Codec::ALL.into_iter().find(|c| {
            c.encoding_name().eq_ignore_ascii_case(name)
                && c.clock_rate() == clock_rate
                && match c.rtpmap_channels() {
                    Some(n) => channels == n.to_string(),
                    None => channels == "1",
                }
        })
    }

    /// Samples (at [`sample_rate`](Self::sample_rate)) in one packet of `ptime_ms`.
    pub fn samples_per_frame(self, ptime_ms: u32) -> usize {
        (self.sample_rate() * ptime_ms / 1000) as usize
    }

    /// RTP timestamp units in one packet of `ptime_ms`.
    pub fn timestamp_per_frame(self, ptime_ms: u32) -> u32 {
        self.clock_rate() * ptime_ms / 1000
    }

    /// Looks a codec up by its static payload type.
    pub fn from_static_payload_type(pt: u8) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.static_payload_type() == Some(pt))
    }

    /// A decoder for one call.
    pub fn decoder(self) -> Result<AudioDecoder, CodecError> {
        Ok(match self {
            Codec::Pcmu | Codec::Pcma => AudioDecoder::G711(self),
            Codec::Opus => AudioDecoder::Opus(Box::new(
                OpusDecoder::new(SampleRate::Hz16000, Channels::Mono)
                    .map_err(|e| CodecError::Opus(e.to_string()))?,
            )),
        })
    }

    /// An encoder for one call.
    pub fn encoder(self) -> Result<AudioEncoder, CodecError> {
        Ok(match self {
            Codec::Pcmu | Codec::Pcma => AudioEncoder::G711(self),
            Codec::Opus => {
                let mut enc =
                    OpusEncoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip)
                        .map_err(|e| CodecError::Opus(e.to_string()))?;
                enc.set_bitrate(Bitrate::BitsPerSecond(OPUS_BITRATE))
                    .map_err(|e| CodecError::Opus(e.to_string()))?;
                // Forward error correction lets the far end recover a lost packet.
                enc.set_inband_fec(true)
                    .map_err(|e| CodecError::Opus(e.to_string()))?;
                enc.set_packet_loss_perc(5)
                    .map_err(|e| CodecError::Opus(e.to_string()))?;
                AudioEncoder::Opus(Box::new(enc))
            }
        })
    }
}

/// One call's decoder.
pub enum AudioDecoder {
    G711(Codec),
    Opus(Box<OpusDecoder>),
}

impl fmt::Debug for AudioDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioDecoder::G711(c) => write!(f, "AudioDecoder({c})"),
            AudioDecoder::Opus(_) => f.write_str("AudioDecoder(opus)"),
        }
    }
}

impl AudioDecoder {
    /// Decodes an RTP payload, appending samples in [-1, 1] to `out`. A payload the codec
    /// cannot decode appends nothing (the receiver conceals the gap).
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) {
        match self {
            AudioDecoder::G711(codec) => {
                let decode = match codec {
                    Codec::Pcma => g711::decode_alaw,
                    _ => g711::decode_ulaw,
                };
                out.extend(payload.iter().map(|&b| g711::to_f32(decode(b))));
            }
            AudioDecoder::Opus(dec) => {
                let mut buf = vec![0.0f32; OPUS_MAX_FRAME];
                let Ok(packet) = audiopus::packet::Packet::try_from(payload) else {
                    return;
                };
                let Ok(signals) = audiopus::MutSignals::try_from(&mut buf[..]) else {
                    return;
                };
                if let Ok(n) = dec.decode_float(Some(packet), signals, false) {
                    out.extend(
                        buf[..n.min(OPUS_MAX_FRAME)]
                            .iter()
                            .map(|s| s.clamp(-1.0, 1.0)),
                    );
                }
            }
        }
    }
}

/// One call's encoder.
pub enum AudioEncoder {
    G711(Codec),
    Opus(Box<OpusEncoder>),
}

impl fmt::Debug for AudioEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioEncoder::G711(c) => write!(f, "AudioEncoder({c})"),
            AudioEncoder::Opus(_) => f.write_str("AudioEncoder(opus)"),
        }
    }
}

impl AudioEncoder {
    /// Encodes one frame of samples in [-1, 1] (clamped), appending the payload to `out`.
    pub fn encode(&mut self, samples: &[f32], out: &mut Vec<u8>) {
        match self {
            AudioEncoder::G711(codec) => {
                let encode = match codec {
                    Codec::Pcma => g711::encode_alaw,
                    _ => g711::encode_ulaw,
                };
                out.extend(samples.iter().map(|&s| encode(g711::to_i16(s))));
            }
            AudioEncoder::Opus(enc) => {
                let clamped: Vec<f32> = samples.iter().map(|s| s.clamp(-1.0, 1.0)).collect();
                let mut buf = [0u8; 1500];
                match enc.encode_float(&clamped, &mut buf) {
                    Ok(n) => out.extend_from_slice(&buf[..n.min(buf.len())]),
                    Err(e) => tracing::warn!(error = %e, "Opus encoding failed; frame skipped"),
                }
            }
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.encoding_name(), self.clock_rate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpmap_lookup_respects_channels() {
        assert_eq!(
            Codec::from_rtpmap("opus", 48000, Some("2")),
            Some(Codec::Opus)
        );
        assert_eq!(Codec::from_rtpmap("OPUS", 48000, None), None);
        assert_eq!(Codec::from_rtpmap("pcmu", 8000, None), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("PCMU", 8000, Some("2")), None);
        assert_eq!(Codec::Opus.timestamp_per_frame(20), 960);
        assert_eq!(Codec::Opus.samples_per_frame(20), 320);
    }

    #[test]
    fn opus_round_trip_keeps_a_tone() {
        let mut enc = Codec::Opus.encoder().unwrap();
        let mut dec = Codec::Opus.decoder().unwrap();
        let mut decoded = Vec::new();
        for frame in 0..25 {
            let samples: Vec<f32> = (0..320)
                .map(|i| {
                    let t = (frame * 320 + i) as f32 / 16_000.0;
                    0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                })
                .collect();
            let mut payload = Vec::new();
            enc.encode(&samples, &mut payload);
            assert!(!payload.is_empty() && payload.len() < 200);
            dec.decode(&payload, &mut decoded);
        }
        assert_eq!(decoded.len(), 25 * 320);
        // After the codec's start-up, the tone comes back at about its level.
        let tail = &decoded[decoded.len() - 3200..];
        let rms = (tail.iter().map(|s| s * s).sum::<f32>() / tail.len() as f32).sqrt();
        assert!((0.25..0.45).contains(&rms), "{rms}");
        // Garbage is not audio: nothing is appended and nothing panics.
        let before = decoded.len();
        dec.decode(&[0xFF; 3], &mut decoded);
        dec.decode(&[], &mut decoded);
        assert!(decoded.len() - before <= OPUS_MAX_FRAME);
    }

    #[test]
    fn g711_state_is_stateless() {
        let mut enc = Codec::Pcma.encoder().unwrap();
        let mut dec = Codec::Pcma.decoder().unwrap();
        let mut payload = Vec::new();
        enc.encode(&[0.0, 0.5, -0.5], &mut payload);
        assert_eq!(payload[0], 0xD5);
        let mut out = Vec::new();
        dec.decode(&payload, &mut out);
        assert!((out[1] - 0.5).abs() < 0.02);
    }
}

//! The receiving side of a call's RTP: demultiplexes audio, DTMF and RTCP, runs the jitter
//! buffer, decodes, conceals losses, and hands out exactly one 20 ms frame per playout tick
//! whatever packet time the caller uses.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::codec::{AudioDecoder, Codec, CodecError};
use super::dtmf::{DtmfEvent, DtmfReceiver};
use super::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use super::rtp::{is_rtcp, parse_rtp, RtpError};

/// Consecutive concealed frames before concealment fades to silence.
const CONCEAL_FRAMES: u32 = 3;

/// Counters beyond the jitter buffer's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceiverStats {
    pub received: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub jitter_ms: f64,
    pub delay_ms: u32,
    pub rtcp: u64,
    pub other_payload: u64,
    pub malformed: u64,
}

/// One call's RTP receiver.
#[derive(Debug)]
pub struct MediaReceiver {
    codec: Codec,
    decoder: AudioDecoder,
    /// The negotiated audio payload type.
    payload_type: u8,
    telephone_event_pt: Option<u8>,
    jitter: JitterBuffer,
    dtmf: DtmfReceiver,
    pending: VecDeque<f32>,
    last_frame: Vec<f32>,
    concealed: u32,
    last_packet_at: Option<Instant>,
    remote_ssrc: Option<u32>,
    rtcp: u64,
    other_payload: u64,
    malformed: u64,
}

impl MediaReceiver {
    /// A receiver for `codec` on its default payload type (see
    /// [`set_payload_type`](Self::set_payload_type) for a negotiated dynamic one).
    pub fn new(
        codec: Codec,
        telephone_event_pt: Option<u8>,
        jitter: JitterConfig,
    ) -> Result<Self, CodecError> {
        Ok(Self {
            codec,
            decoder: codec.decoder()?,
            payload_type: codec.default_payload_type(),
            telephone_event_pt,
            jitter: JitterBuffer::new(jitter),
            dtmf: DtmfReceiver::new(),
            pending: VecDeque::new(),
            last_frame: Vec::new(),
            concealed: 0,
            last_packet_at: None,
            remote_ssrc: None,
            rtcp: 0,
            other_payload: 0,
            malformed: 0,
        })
    }

    /// The payload type the answer gave the codec (Opus's is dynamic).
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.payload_type = payload_type;
    }

    /// A re-INVITE changed the codec (and its payload type).
    pub fn set_codec(&mut self, codec: Codec, payload_type: u8) -> Result<(), CodecError> {
        self.decoder = codec.decoder()?;
        self.codec = codec;
        self.payload_type = payload_type;
        self.pending.clear();
        self.last_frame.clear();
        Ok(())
    }

    /// A datagram from the RTP port: a DTMF digit when it starts a key press.
    pub fn push_datagram(
        &mut self,
        buf: &[u8],
        now: Instant,
    ) -> Result<Option<DtmfEvent>, RtpError> {
        if is_rtcp(buf) {
            self.rtcp += 1;
            return Ok(None);
        }
        let packet = match parse_rtp(buf) {
            Ok(p) => p,
            Err(e) => {
                self.malformed += 1;
                return Err(e);
            }
        };
        self.last_packet_at = Some(now);
        self.remote_ssrc = Some(packet.ssrc);
        if Some(packet.payload_type) == self.telephone_event_pt {
            return Ok(self.dtmf.push(
                packet.ssrc,
                packet.timestamp,
                &packet.payload,
                // telephone-event/8000, the rate negotiated whatever the audio codec.
                8000,
            ));
        }
        if packet.payload_type == self.payload_type {
            self.jitter.push(packet, now);
        } else {
            self.other_payload += 1;
        }
        Ok(None)
    }

    /// One 20 ms frame at the codec's rate, or None while nothing is playing.
    pub fn poll_frame(&mut self, now: Instant) -> Option<Vec<f32>> {
        let want = self.codec.samples_per_frame(20);
        let rate = u64::from(self.codec.sample_rate().max(1));
        while self.pending.len() < want {
            // Samples still queued from a longer packet play first: the next packet's slot
            // starts after them, which is what the jitter buffer measures its delay against.
            let queued = Duration::from_micros(self.pending.len() as u64 * 1_000_000 / rate);
            match self.jitter.pop(now + queued) {
                Playout::Frame(packet) => {
                    let mut decoded = Vec::with_capacity(want);
                    self.decoder.decode(&packet.payload, &mut decoded);
                    if decoded.is_empty() {
                        // Undecodable payload: conceal it like a lost packet.
                        let frame = self.conceal(want);
                        self.pending.extend(frame);
                        continue;
                    }
                    self.concealed = 0;
                    self.last_frame.clone_from(&decoded);
                    self.pending.extend(decoded);
                }
                Playout::Lost => {
                    let frame = self.conceal(want);
                    self.pending.extend(frame);
                }
                Playout::Buffering => {
                    if self.pending.is_empty() {
                        return None;
                    }
                    // Finish the partial frame with silence.
                    self.pending.resize(want, 0.0);
                }
            }
        }
        Some(self.pending.drain(..want).collect())
    }

    /// Loss concealment: the last good frame again, 6 dB quieter each time, then silence.
    fn conceal(&mut self, want: usize) -> Vec<f32> {
        self.concealed += 1;
        if self.concealed > CONCEAL_FRAMES || self.last_frame.is_empty() {
            return vec![0.0; want.max(self.last_frame.len())];
        }
        let gain = 0.5f32.powi(self.concealed as i32);
        self.last_frame.iter().map(|s| s * gain).collect()
    }

    pub fn last_packet_at(&self) -> Option<Instant> {
        self.last_packet_at
    }

    pub fn remote_ssrc(&self) -> Option<u32> {
        self.remote_ssrc
    }

    pub fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats()
    }

    pub fn stats(&self) -> ReceiverStats {
        let j = self.jitter.stats();
        ReceiverStats {
            received: j.received,
            lost: j.lost,
            late: j.late,
            duplicates: j.duplicates,
            reordered: j.reordered,
            jitter_ms: j.jitter_ms,
            delay_ms: j.delay_ms,
            rtcp: self.rtcp,
            other_payload: self.other_payload,
            malformed: self.malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::dtmf_payloads;
    use crate::media::rtp::RtpPacket;

    fn datagram(pt: u8, seq: u16, payload: Vec<u8>) -> Vec<u8> {
        RtpPacket {
            payload_type: pt,
            sequence: seq,
            timestamp: u32::from(seq) * 160,
            ssrc: 9,
            marker: false,
            payload,
        }
        .to_bytes()
    }

    #[test]
    fn decodes_conceals_and_reports_dtmf() {
        let t0 = Instant::now();
        let mut rx = MediaReceiver::new(Codec::Pcmu, Some(101), JitterConfig::default()).unwrap();
        // A loud 20 ms frame (mu-law 0x80 is near full scale), then a lost packet.
        rx.push_datagram(&datagram(0, 1, vec![0x80; 160]), t0)
            .unwrap();
        rx.push_datagram(&datagram(0, 3, vec![0x80; 160]), t0)
            .unwrap();
        assert_eq!(rx.poll_frame(t0), None, "buffering");
        let first = rx.poll_frame(t0 + Duration::from_millis(40)).unwrap();
        assert_eq!(first.len(), 160);
        assert!(first[0] > 0.9);
        let concealed = rx.poll_frame(t0 + Duration::from_millis(60)).unwrap();
        assert!((concealed[0] - first[0] * 0.5).abs() < 1e-6);
        let digit = dtmf_payloads('0', 60, 8000, 20).unwrap()[0].0.clone();
        let ev = rx.push_datagram(&datagram(101, 4, digit), t0).unwrap();
        assert_eq!(ev.map(|e| e.digit), Some('0'));
        assert!(rx
            .push_datagram(&[0x81, 201, 0, 1, 0, 0, 0, 9], t0)
            .unwrap()
            .is_none());
        assert!(rx.push_datagram(&[1, 2, 3], t0).is_err());
        rx.push_datagram(&datagram(18, 5, vec![0; 20]), t0).unwrap();
        let stats = rx.stats();
        assert_eq!(
            (stats.rtcp, stats.malformed, stats.other_payload),
            (1, 1, 1)
        );
    }

    #[test]
    fn thirty_ms_packets_come_out_as_twenty_ms_frames() {
        let t0 = Instant::now();
        let mut rx = MediaReceiver::new(Codec::Pcma, None, JitterConfig::default()).unwrap();
        for seq in 0..4u16 {
            rx.push_datagram(&datagram(8, seq, vec![0xD5; 240]), t0)
                .unwrap();
        }
        let later = t0 + Duration::from_millis(100);
        let frames: Vec<_> = (0..6).filter_map(|_| rx.poll_frame(later)).collect();
        assert_eq!(frames.len(), 6);
        assert!(frames.iter().all(|f| f.len() == 160));
    }

    #[test]
    fn opus_on_a_dynamic_payload_type_round_trips_through_rtp() {
        use crate::media::sender::RtpSender;
        let t0 = Instant::now();
        let mut tx = RtpSender::new(Codec::Opus, 96, 1, 0, 0, 20, t0).unwrap();
        let jitter = JitterConfig {
            clock_rate: 48_000,
            frame_samples: 960,
            ..JitterConfig::default()
        };
        let mut rx = MediaReceiver::new(Codec::Opus, Some(101), jitter).unwrap();
        rx.set_payload_type(96);
        let tone: Vec<f32> = (0..16_000)
            .map(|i| 0.4 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 16_000.0).sin())
            .collect();
        tx.enqueue(&tone);
        let mut frames = Vec::new();
        for k in 0..60u64 {
            let now = t0 + Duration::from_millis(20 * k);
            while let Some(packet) = tx.poll(now) {
                let p = parse_rtp(&packet).unwrap();
                assert_eq!(p.payload_type, 96);
                assert_eq!(p.timestamp, (k as u32) * 960, "48 kHz RTP clock");
                rx.push_datagram(&packet, now).unwrap();
            }
            frames.extend(rx.poll_frame(now));
        }
        assert!(frames.iter().all(|f| f.len() == 320), "20 ms at 16 kHz");
        let loud = frames
            .iter()
            .filter(|f| (f.iter().map(|s| s * s).sum::<f32>() / 320.0).sqrt() > 0.15)
            .count();
        assert!(
            loud >= 40,
            "{loud} of {} frames carry the tone",
            frames.len()
        );
    }
}

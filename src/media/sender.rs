//! The sending side of a call's RTP: bot speech queued at the codec rate goes out as one packet
//! every 20 ms on a fixed grid (start + n * ptime, so it never drifts), silence when the queue
//! is empty so the stream never stalls, RFC 4733 digits in place of audio when asked. RTP
//! timestamps advance by one frame per packet whatever is sent, sequence numbers by one, and
//! the marker bit starts each talkspurt (RFC 3551 section 4.1).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::codec::{AudioEncoder, Codec, CodecError};
use super::dtmf::{dtmf_payloads, DtmfError};
use super::rtp::RtpPacket;

/// One call's paced RTP sender.
#[derive(Debug)]
pub struct RtpSender {
    encoder: AudioEncoder,
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    ptime: Duration,
    frame_samples: usize,
    /// RTP timestamp units per packet (differs from `frame_samples` for Opus's 48 kHz clock).
    frame_timestamp: u32,
    start: Instant,
    sent: u64,
    queue: VecDeque<f32>,
    talking: bool,
    telephone_event_pt: Option<u8>,
    /// RFC 4733 payloads still to send, each flagged when it starts a key press.
    dtmf: VecDeque<(Vec<u8>, bool)>,
    /// RTP timestamp of the key press being sent: the slot of its first packet.
    dtmf_timestamp: u32,
    played: u64,
    octets: u64,
    /// What went out, as audio, since the last [`drain_sent`](RtpSender::drain_sent), when
    /// kept (for call recording): one frame per packet, silence for digits and gaps.
    sent_audio: Option<Vec<f32>>,
}

impl RtpSender {
    pub fn new(
        codec: Codec,
        payload_type: u8,
        ssrc: u32,
        initial_sequence: u16,
        initial_timestamp: u32,
        ptime_ms: u32,
        start: Instant,
    ) -> Result<Self, CodecError> {
        let ptime_ms = ptime_ms.clamp(10, 60);
        Ok(Self {
            encoder: codec.encoder()?,
            payload_type,
            ssrc,
            sequence: initial_sequence,
            timestamp: initial_timestamp,
            ptime: Duration::from_millis(u64::from(ptime_ms)),
            frame_samples: codec.samples_per_frame(ptime_ms),
            frame_timestamp: codec.timestamp_per_frame(ptime_ms),
            start,
            sent: 0,
            queue: VecDeque::new(),
            talking: false,
            telephone_event_pt: None,
            dtmf: VecDeque::new(),
            dtmf_timestamp: 0,
            played: 0,
            octets: 0,
            sent_audio: None,
        })
    }

    /// A sender with a random SSRC, sequence number and timestamp (RFC 3550 section 5.1).
    pub fn new_random(
        codec: Codec,
        payload_type: u8,
        ptime_ms: u32,
        start: Instant,
    ) -> Result<Self, CodecError> {
        Self::new(
            codec,
            payload_type,
            rand::random(),
            rand::random(),
            rand::random(),
            ptime_ms,
            start,
        )
    }

    /// The payload type to use for RFC 4733 digits.
    pub fn set_telephone_event_pt(&mut self, pt: Option<u8>) {
        self.telephone_event_pt = pt;
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Queues bot speech at the codec's sample rate.
    pub fn enqueue(&mut self, samples: &[f32]) {
        self.queue.extend(samples);
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Instant {
        self.start + self.ptime * u32::try_from(self.sent).unwrap_or(u32::MAX)
    }

    /// The next packet when it is due at `now`. A caller woken late gets one packet per call
    /// until it has caught up with the grid (call it in a loop); no timestamp is skipped.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        if now < self.next_due() {
            return None;
        }
        let packet = if let Some((payload, first)) = self.dtmf.pop_front() {
            if first {
                // A key press is stamped with the slot it starts in (RFC 4733 section 2.3.1),
                // so digits queued back to back still get distinct timestamps.
                self.dtmf_timestamp = self.timestamp;
            }
            // Speech after the digit starts a new talkspurt.
            self.talking = false;
            if let Some(kept) = self.sent_audio.as_mut() {
                kept.resize(kept.len() + self.frame_samples, 0.0);
            }
            RtpPacket {
                payload_type: self.telephone_event_pt.unwrap_or(101),
                sequence: self.sequence,
                timestamp: self.dtmf_timestamp,
                ssrc: self.ssrc,
                marker: first,
                payload,
            }
        } else {
            let n = self.frame_samples.min(self.queue.len());
            let speaking = n > 0;
            let mut frame: Vec<f32> = self.queue.drain(..n).collect();
            self.played += n as u64;
            frame.resize(self.frame_samples, 0.0);
            if let Some(kept) = self.sent_audio.as_mut() {
                kept.extend_from_slice(&frame);
            }
            let mut payload = Vec::with_capacity(self.frame_samples);
            self.encoder.encode(&frame, &mut payload);
            let marker = speaking && !self.talking;
            self.talking = speaking;
            RtpPacket {
                payload_type: self.payload_type,
                sequence: self.sequence,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                marker,
                payload,
            }
        };
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.frame_timestamp);
        self.sent += 1;
        self.octets += packet.payload.len() as u64;
        Some(packet.to_bytes())
    }

    /// Sends a digit (RFC 4733) in place of the next audio packets.
    pub fn send_dtmf(&mut self, digit: char, duration_ms: u32) -> Result<(), DtmfError> {
        let ptime_ms = self.ptime.as_millis() as u32;
        // telephone-event/8000, the rate negotiated whatever the audio codec.
        let payloads = dtmf_payloads(digit, duration_ms, 8000, ptime_ms)?;
        for (i, (payload, _end)) in payloads.into_iter().enumerate() {
            self.dtmf.push_back((payload, i == 0));
        }
        Ok(())
    }

    /// Keeps what is sent, as audio, for [`drain_sent`](RtpSender::drain_sent) (call recording).
    pub fn keep_sent_audio(&mut self) {
        self.sent_audio.get_or_insert_with(Vec::new);
    }

    /// Appends the audio sent since the last call to `out` (nothing unless kept).
    pub fn drain_sent(&mut self, out: &mut Vec<f32>) {
        if let Some(kept) = self.sent_audio.as_mut() {
            out.append(kept);
        }
    }

    /// Drops the queued speech (barge-in); returns how many samples were never played.
    pub fn flush(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        // Whatever is queued next is a new talkspurt.
        self.talking = false;
        n
    }

    pub fn queued_samples(&self) -> usize {
        self.queue.len()
    }

    /// Whether bot speech is queued or playing.
    pub fn is_speaking(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Speech samples sent so far.
    pub fn played_samples_total(&self) -> u64 {
        self.played
    }

    /// Packets sent so far.
    pub fn packets_sent(&self) -> u64 {
        self.sent
    }

    /// Payload bytes sent so far (for RTCP sender reports).
    pub fn octets_sent(&self) -> u64 {
        self.octets
    }

    /// The RTP timestamp the next packet will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::parse_rtp;

    #[test]
    fn paces_on_a_fixed_grid_with_silence_and_markers() {
        let t0 = Instant::now();
        let mut tx = RtpSender::new(Codec::Pcmu, 0, 5, 65534, u32::MAX - 100, 20, t0).unwrap();
        assert!(tx.poll(t0).is_some(), "first packet at once");
        assert!(tx.poll(t0 + Duration::from_millis(19)).is_none());
        assert_eq!(tx.next_due(), t0 + Duration::from_millis(20));
        tx.enqueue(&vec![0.5; 400]); // 2.5 frames of speech
                                     // Woken 60 ms late: four packets come out back to back, then it waits again.
        let late = t0 + Duration::from_millis(80);
        let mut packets = Vec::new();
        while let Some(p) = tx.poll(late) {
            packets.push(parse_rtp(&p).unwrap());
        }
        assert_eq!(packets.len(), 4);
        assert!(tx.poll(late).is_none());
        let seqs: Vec<u16> = packets.iter().map(|p| p.sequence).collect();
        assert_eq!(seqs, vec![65535, 0, 1, 2]);
        for w in packets.windows(2) {
            assert_eq!(w[1].timestamp.wrapping_sub(w[0].timestamp), 160);
        }
        assert_eq!(
            packets.iter().map(|p| p.marker).collect::<Vec<_>>(),
            vec![true, false, false, false]
        );
        // The third speech packet is half speech, half padding; the fourth is silence (0xFF).
        assert!(packets[3].payload.iter().all(|&b| b == 0xFF));
        assert_eq!(tx.played_samples_total(), 400);
        assert!(!tx.is_speaking());
    }

    #[test]
    fn flush_reports_unplayed_speech() {
        let t0 = Instant::now();
        let mut tx = RtpSender::new_random(Codec::Pcma, 8, 20, t0).unwrap();
        tx.enqueue(&vec![0.1; 1000]);
        tx.poll(t0);
        assert!(tx.is_speaking());
        assert_eq!(tx.flush(), 840);
        assert!(!tx.is_speaking());
    }

    #[test]
    fn sent_audio_is_kept_only_when_asked_and_matches_what_went_out() {
        let t0 = Instant::now();
        let mut tx = RtpSender::new_random(Codec::Pcmu, 0, 20, t0).unwrap();
        tx.enqueue(&[0.25; 200]);
        tx.poll(t0);
        let mut kept = Vec::new();
        tx.drain_sent(&mut kept);
        assert!(kept.is_empty(), "not kept by default");
        tx.keep_sent_audio();
        tx.poll(t0 + Duration::from_millis(20));
        tx.send_dtmf('5', 40).unwrap();
        tx.poll(t0 + Duration::from_millis(40));
        tx.drain_sent(&mut kept);
        // 40 samples of speech, the frame's padding, then a digit's packet as silence.
        assert_eq!(kept.len(), 320);
        assert!(kept[..40].iter().all(|&s| s == 0.25));
        assert!(kept[40..].iter().all(|&s| s == 0.0));
        let mut again = Vec::new();
        tx.drain_sent(&mut again);
        assert!(again.is_empty(), "taken");
    }

    #[test]
    fn dtmf_replaces_audio_packets() {
        let t0 = Instant::now();
        let mut tx = RtpSender::new(Codec::Pcmu, 0, 5, 0, 1000, 20, t0).unwrap();
        tx.set_telephone_event_pt(Some(101));
        tx.send_dtmf('5', 60).unwrap();
        assert!(tx.send_dtmf('x', 60).is_err());
        let packets: Vec<_> = (0..6)
            .filter_map(|i| tx.poll(t0 + Duration::from_millis(20 * i)))
            .map(|p| parse_rtp(&p).unwrap())
            .collect();
        assert!(packets[..5]
            .iter()
            .all(|p| p.payload_type == 101 && p.timestamp == 1000));
        assert!(packets[0].marker);
        assert_eq!(packets[5].payload_type, 0);
        assert_eq!(packets[5].timestamp, 1000 + 5 * 160);
        assert_eq!(tx.octets_sent(), 5 * 4 + 160);
    }

    #[test]
    fn back_to_back_digits_have_their_own_timestamps() {
        let t0 = Instant::now();
        let mut tx = RtpSender::new(Codec::Pcmu, 0, 5, 0, 1000, 20, t0).unwrap();
        tx.set_telephone_event_pt(Some(101));
        tx.send_dtmf('1', 40).unwrap();
        tx.send_dtmf('2', 40).unwrap();
        tx.enqueue(&[0.5; 160]);
        let packets: Vec<_> = (0..9)
            .filter_map(|i| tx.poll(t0 + Duration::from_millis(20 * i)))
            .map(|p| parse_rtp(&p).unwrap())
            .collect();
        // '1': one update and three end packets from slot 0; '2' the same from slot 4.
        let stamps: Vec<_> = packets[..8].iter().map(|p| p.timestamp).collect();
        assert_eq!(stamps, [1000, 1000, 1000, 1000, 1640, 1640, 1640, 1640]);
        let markers: Vec<_> = packets.iter().map(|p| p.marker).collect();
        assert_eq!(
            markers,
            [true, false, false, false, true, false, false, false, true]
        );
        // Speech after the digits starts a talkspurt at its own slot.
        assert_eq!(
            (packets[8].payload_type, packets[8].timestamp),
            (0, 1000 + 8 * 160)
        );
    }

    #[test]
    fn speech_after_a_barge_in_flush_is_a_new_talkspurt() {
        let t0 = Instant::now();
        let mut tx = RtpSender::new(Codec::Pcmu, 0, 5, 0, 0, 20, t0).unwrap();
        tx.enqueue(&[0.5; 800]);
        let first = parse_rtp(&tx.poll(t0).unwrap()).unwrap();
        assert!(first.marker);
        assert_eq!(tx.flush(), 640);
        tx.enqueue(&[0.5; 160]);
        let next = parse_rtp(&tx.poll(t0 + Duration::from_millis(20)).unwrap()).unwrap();
        assert!(next.marker);
    }
}

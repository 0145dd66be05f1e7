//! The adaptive jitter buffer: packets in arrival order (late, reordered, duplicated, lost),
//! frames out in sequence at the 20 ms playout clock.
//!
//! Playout starts once the oldest buffered packet has waited the target delay; from then on
//! every `pop` plays the next sequence number, or reports it lost when it is missing (the delay
//! is the reorder window: a packet arriving after its slot is late and dropped). The target
//! delay follows the RFC 3550 interarrival jitter (three times the jitter plus one frame,
//! within the configured bounds), growing at once and shrinking slowly; it applies whenever
//! playout (re)starts after an underrun. A buffer that grows past the maximum delay (the
//! caller's clock runs fast) drops its oldest packets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::rtp::RtpPacket;

/// Jitter buffer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    pub clock_rate: u32,
    /// RTP timestamp units per packet.
    pub frame_samples: u32,
    pub min_delay_ms: u32,
    pub max_delay_ms: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            frame_samples: 160,
            min_delay_ms: 40,
            max_delay_ms: 200,
        }
    }
}

/// What the playout clock gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    Frame(RtpPacket),
    /// The packet for this slot is missing: conceal.
    Lost,
    /// Not playing (before the first packets, or after the caller stopped sending).
    Buffering,
}

/// Counters for the call record and RTCP.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    pub received: u64,
    pub duplicates: u64,
    pub late: u64,
    pub lost: u64,
    pub reordered: u64,
    pub jitter_ms: f64,
    pub delay_ms: u32,
    /// Highest extended sequence number seen.
    pub highest_seq: u64,
}

/// Consecutive empty slots after which playout stops (the caller went quiet).
const UNDERRUN_SLOTS: u32 = 5;
/// Sequence jumps larger than this restart the stream.
const MAX_JUMP: i64 = 1000;

/// The buffer.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    packets: BTreeMap<u64, (RtpPacket, Instant)>,
    ssrc: Option<u32>,
    highest: Option<u64>,
    next_play: Option<u64>,
    empty_slots: u32,
    /// Interarrival jitter in timestamp units (RFC 3550 A.8).
    jitter: f64,
    last_transit: Option<(Instant, u32)>,
    target_ms: f64,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        Self {
            target_ms: f64::from(config.min_delay_ms),
            config,
            packets: BTreeMap::new(),
            ssrc: None,
            highest: None,
            next_play: None,
            empty_slots: 0,
            jitter: 0.0,
            last_transit: None,
            stats: JitterStats::default(),
        }
    }

    fn frame_ms(&self) -> f64 {
        f64::from(self.config.frame_samples) * 1000.0 / f64::from(self.config.clock_rate.max(1))
    }

    fn reset(&mut self) {
        self.packets.clear();
        self.highest = None;
        self.next_play = None;
        self.empty_slots = 0;
        self.last_transit = None;
    }

    /// Extends a 16-bit sequence number next to the highest seen so far.
    fn extend(&self, seq: u16) -> Option<u64> {
        let Some(highest) = self.highest else {
            return Some(u64::from(seq) + (1 << 16));
        };
        let diff = i64::from(seq.wrapping_sub(highest as u16) as i16);
        if diff.abs() > MAX_JUMP {
            return None;
        }
        u64::try_from(highest as i64 + diff).ok()
    }

    /// A packet arrived at `now`.
    pub fn push(&mut self, packet: RtpPacket, now: Instant) {
        if self.ssrc != Some(packet.ssrc) {
            if self.ssrc.is_some() {
                tracing::debug!(ssrc = packet.ssrc, "new RTP source; jitter buffer restarts");
            }
            self.reset();
            self.ssrc = Some(packet.ssrc);
        }
        let ext = match self.extend(packet.sequence) {
            Some(e) => e,
            None => {
                tracing::debug!(
                    seq = packet.sequence,
                    "RTP sequence jump; jitter buffer restarts"
                );
                self.reset();
                u64::from(packet.sequence) + (1 << 16)
            }
        };
        self.stats.received += 1;
        self.update_jitter(packet.timestamp, now);
        if self.next_play.is_some_and(|n| ext < n) {
            self.stats.late += 1;
            return;
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            return;
        }
        match self.highest {
            Some(h) if ext < h => self.stats.reordered += 1,
            _ => self.highest = Some(ext),
        }
        self.stats.highest_seq = self.highest.unwrap_or(ext);
        self.packets.insert(ext, (packet, now));
        // A caller clock running fast fills the buffer: keep it within the maximum delay.
        let max_packets =
            (f64::from(self.config.max_delay_ms) / self.frame_ms()).ceil() as usize + 1;
        while self.packets.len() > max_packets {
            if let Some((&first, _)) = self.packets.iter().next() {
                self.packets.remove(&first);
                if let Some(n) = self.next_play.as_mut() {
                    *n = (*n).max(first + 1);
                }
            }
        }
    }

    fn update_jitter(&mut self, timestamp: u32, now: Instant) {
        if let Some((prev_at, prev_ts)) = self.last_transit {
            let arrival = now.saturating_duration_since(prev_at).as_secs_f64()
                * f64::from(self.config.clock_rate);
            let sent = f64::from(timestamp.wrapping_sub(prev_ts) as i32);
            let d = (arrival - sent).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some((now, timestamp));
        let jitter_ms = self.jitter * 1000.0 / f64::from(self.config.clock_rate.max(1));
        let desired = (3.0 * jitter_ms + self.frame_ms()).clamp(
            f64::from(self.config.min_delay_ms),
            f64::from(self.config.max_delay_ms),
        );
        // Grow at once, shrink slowly.
        self.target_ms = if desired > self.target_ms {
            desired
        } else {
            self.target_ms - (self.target_ms - desired) * 0.01
        };
    }

    /// The playout clock's 20 ms tick.
    pub fn pop(&mut self, now: Instant) -> Playout {
        let Some(next) = self.next_play else {
            let Some((&first, (_, arrived))) = self.packets.iter().next() else {
                return Playout::Buffering;
            };
            if now.saturating_duration_since(*arrived)
                < Duration::from_secs_f64(self.target_ms / 1000.0)
            {
                return Playout::Buffering;
            }
            self.next_play = Some(first);
            return self.pop(now);
        };
        if let Some((packet, _)) = self.packets.remove(&next) {
            self.next_play = Some(next + 1);
            self.empty_slots = 0;
            return Playout::Frame(packet);
        }
        if self.packets.is_empty() {
            // Nothing after this slot either: a late packet or the end of a talkspurt. Conceal
            // without counting a loss (a packet arriving after its slot counts as late).
            self.empty_slots += 1;
            if self.empty_slots >= UNDERRUN_SLOTS {
                // The caller stopped sending (silence suppression, hold): wait for new packets
                // and restart playout with the current target delay.
                self.next_play = None;
                self.empty_slots = 0;
                return Playout::Buffering;
            }
        } else {
            // A later packet is here, so this one is missing.
            self.stats.lost += 1;
        }
        self.next_play = Some(next + 1);
        Playout::Lost
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats {
            jitter_ms: self.jitter * 1000.0 / f64::from(self.config.clock_rate.max(1)),
            delay_ms: self.target_ms.round() as u32,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ssrc: u32) -> RtpPacket {
        RtpPacket {
            payload_type: 0,
            sequence: seq,
            timestamp: u32::from(seq).wrapping_mul(160),
            ssrc,
            marker: false,
            payload: vec![seq as u8; 160],
        }
    }

    fn seqs(out: &[Playout]) -> Vec<Option<u16>> {
        out.iter()
            .filter(|p| !matches!(p, Playout::Buffering))
            .map(|p| match p {
                Playout::Frame(f) => Some(f.sequence),
                _ => None,
            })
            .collect()
    }

    /// Feeds packets at the given arrival offsets (ms) and pops every 20 ms for `ms`.
    fn run(arrivals: &[(u16, u64)], ms: u64) -> (Vec<Playout>, JitterStats) {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        let mut sorted = arrivals.to_vec();
        sorted.sort_by_key(|a| a.1);
        let mut i = 0;
        for tick in (0..ms).step_by(20) {
            while i < sorted.len() && sorted[i].1 <= tick {
                jb.push(
                    packet(sorted[i].0, 7),
                    t0 + Duration::from_millis(sorted[i].1),
                );
                i += 1;
            }
            out.push(jb.pop(t0 + Duration::from_millis(tick)));
        }
        (out, jb.stats())
    }

    #[test]
    fn in_order_stream_plays_after_the_delay() {
        let arrivals: Vec<_> = (100..110).map(|s| (s, u64::from(s - 100) * 20)).collect();
        let (out, stats) = run(&arrivals, 300);
        assert!(matches!(out[0], Playout::Buffering));
        assert!(matches!(out[2], Playout::Frame(_)), "plays after 40 ms");
        assert_eq!(
            seqs(&out)[..10],
            (100..110).map(Some).collect::<Vec<_>>()[..]
        );
        assert_eq!(stats.lost, 0);
    }

    #[test]
    fn reordered_packets_play_in_order_and_duplicates_drop() {
        let arrivals = vec![(1, 0), (3, 20), (2, 25), (2, 30), (4, 60), (5, 80)];
        let (out, stats) = run(&arrivals, 200);
        assert_eq!(
            seqs(&out)[..5],
            [Some(1), Some(2), Some(3), Some(4), Some(5)]
        );
        assert_eq!(stats.reordered, 1);
        assert_eq!(stats.duplicates, 1);
    }

    #[test]
    fn loss_is_reported_and_late_packets_are_dropped() {
        let arrivals = vec![(1, 0), (2, 20), (4, 60), (5, 80), (3, 150), (6, 100)];
        let (out, stats) = run(&arrivals, 200);
        assert_eq!(seqs(&out)[..5], [Some(1), Some(2), None, Some(4), Some(5)]);
        assert_eq!(stats.lost, 1);
        assert_eq!(stats.late, 1);
    }

    #[test]
    fn sequence_wraps_around() {
        let arrivals: Vec<_> = (0..6u16)
            .map(|i| (65533u16.wrapping_add(i), u64::from(i) * 20))
            .collect();
        let (out, stats) = run(&arrivals, 200);
        assert_eq!(
            seqs(&out)[..6],
            [
                Some(65533),
                Some(65534),
                Some(65535),
                Some(0),
                Some(1),
                Some(2)
            ]
        );
        assert_eq!(stats.lost, 0);
    }

    #[test]
    fn ssrc_change_restarts_and_silence_goes_back_to_buffering() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(packet(10, 1), t0);
        assert!(matches!(
            jb.pop(t0 + Duration::from_millis(40)),
            Playout::Frame(_)
        ));
        jb.push(packet(5000, 2), t0 + Duration::from_millis(60));
        assert!(matches!(
            jb.pop(t0 + Duration::from_millis(60)),
            Playout::Buffering
        ));
        assert!(
            matches!(jb.pop(t0 + Duration::from_millis(100)), Playout::Frame(p) if p.ssrc == 2)
        );
        let mut tick = 120;
        let mut buffering = false;
        for _ in 0..UNDERRUN_SLOTS + 1 {
            buffering = matches!(jb.pop(t0 + Duration::from_millis(tick)), Playout::Buffering);
            tick += 20;
        }
        assert!(buffering);
    }

    #[test]
    fn jitter_estimate_grows_the_delay() {
        // Packets alternately 0 and 40 ms late.
        let arrivals: Vec<_> = (0..200u16)
            .map(|s| (s, u64::from(s) * 20 + if s % 2 == 1 { 40 } else { 0 }))
            .collect();
        let (_, stats) = run(&arrivals, 4000);
        assert!(stats.jitter_ms > 20.0, "{}", stats.jitter_ms);
        assert!(stats.delay_ms > 60, "{}", stats.delay_ms);
        assert!(stats.delay_ms <= 200);
    }
}

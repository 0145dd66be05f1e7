//! The adaptive jitter buffer: packets in arrival order (late, reordered, duplicated, lost),
//! frames out in sequence at the 20 ms playout clock.
//!
//! Playout starts once the oldest buffered packet has waited the target delay; from then on
//! every `pop` plays the next sequence number, or reports it lost when it is missing and a
//! later packet is already here (a packet arriving after its slot is late and dropped).
//!
//! The target delay follows the RFC 3550 interarrival jitter (three times the jitter plus one
//! frame, within the configured bounds), growing at once and shrinking slowly. It is applied
//! *while playing*, not only when playout restarts: a stream that keeps flowing but jitters
//! never underruns for long, so waiting for a restart would leave the delay at its first value
//! and drop every late packet for the whole call. The buffer measures its playout delay as the
//! time between a slot's playout and the moment its packet would have arrived over the fastest
//! path seen in the last few seconds (RFC 3550 transit time, minimum over a sliding window):
//!
//! - below the target, a slot is stretched: `pop` answers [`Playout::Lost`] without moving on
//!   (the caller conceals one frame) and the packet plays one tick later;
//! - a frame above the target for a second, or above the maximum delay at all, is dropped
//!   (one at a time, only when the next packet is already here), so the delay shrinks slowly
//!   and a caller clock running fast never builds up latency;
//! - an empty buffer at a slot is also stretched, so a late packet still plays instead of being
//!   dropped; after [`UNDERRUN_SLOTS`] empty slots (the caller stopped sending: silence
//!   suppression, hold) playout stops and restarts later with the current target delay.

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
    /// No packet for this slot (missing, not here yet, or the delay is growing): conceal.
    Lost,
    /// Not playing (before the first packets, or after the caller stopped sending).
    Buffering,
}

/// Counters for the call record and RTCP.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Packets pushed (duplicates and late ones included).
    pub received: u64,
    /// Packets already buffered or already played.
    pub duplicates: u64,
    /// Packets that arrived after their slot was concealed.
    pub late: u64,
    /// Slots given up on because their packet was missing while later ones were here.
    pub lost: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// RFC 3550 interarrival jitter.
    pub jitter_ms: f64,
    /// The playout delay of the last slot (the target delay before playout starts).
    pub delay_ms: u32,
    /// Highest extended sequence number seen (starts at 65536 + the first sequence number).
    pub highest_seq: u64,
    /// The delay the buffer is steering towards.
    pub target_delay_ms: u32,
    /// Slots concealed to grow the delay or to wait for a packet (not counted as lost).
    pub stretched: u64,
    /// Packets dropped to shrink the delay.
    pub shrunk: u64,
}

/// Consecutive empty slots after which playout stops (the caller went quiet).
pub const UNDERRUN_SLOTS: u32 = 5;
/// Sequence jumps larger than this restart the stream.
const MAX_JUMP: i64 = 1000;
/// Timestamp jumps (beyond what the sequence numbers explain) larger than this many seconds
/// restart the stream.
const MAX_TS_JUMP_S: i64 = 10;
/// Consecutive slots above target + one frame before one frame is dropped.
const SHRINK_SLOTS: u32 = 50;
/// Length of each of the two windows the fastest transit time is taken over.
const TRANSIT_WINDOW: Duration = Duration::from_secs(2);

/// The fastest transit time (arrival minus media time) over the current and previous window.
#[derive(Debug, Clone, Copy)]
struct BaseTransit {
    window_start: Instant,
    current_ms: f64,
    previous_ms: Option<f64>,
}

impl BaseTransit {
    fn update(&mut self, transit_ms: f64, now: Instant) {
        if now.saturating_duration_since(self.window_start) >= TRANSIT_WINDOW {
            self.previous_ms = Some(self.current_ms);
            self.current_ms = transit_ms;
            self.window_start = now;
        } else {
            self.current_ms = self.current_ms.min(transit_ms);
        }
    }

    fn get(&self) -> f64 {
        self.previous_ms
            .map_or(self.current_ms, |p| p.min(self.current_ms))
    }
}

/// The buffer.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    packets: BTreeMap<u64, (RtpPacket, Instant)>,
    ssrc: Option<u32>,
    highest: Option<u64>,
    /// Timestamp of the packet with the highest sequence number.
    highest_ts: u32,
    next_play: Option<u64>,
    /// Bit i set: slot `next_play - 1 - i` was played (tells duplicates from late packets).
    played: u64,
    empty_slots: u32,
    slots_above_target: u32,
    /// Instant and RTP timestamp the media clock is measured from.
    anchor: Option<(Instant, u32)>,
    base_transit: Option<BaseTransit>,
    /// Interarrival jitter in timestamp units (RFC 3550 A.8).
    jitter: f64,
    last_transit: Option<(Instant, u32)>,
    target_ms: f64,
    delay_ms: Option<f64>,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        let config = JitterConfig {
            clock_rate: config.clock_rate.max(1),
            frame_samples: config.frame_samples.max(1),
            min_delay_ms: config.min_delay_ms,
            max_delay_ms: config.max_delay_ms.max(config.min_delay_ms),
        };
        Self {
            target_ms: f64::from(config.min_delay_ms),
            config,
            packets: BTreeMap::new(),
            ssrc: None,
            highest: None,
            highest_ts: 0,
            next_play: None,
            played: 0,
            empty_slots: 0,
            slots_above_target: 0,
            anchor: None,
            base_transit: None,
            jitter: 0.0,
            last_transit: None,
            delay_ms: None,
            stats: JitterStats::default(),
        }
    }

    fn frame_ms(&self) -> f64 {
        f64::from(self.config.frame_samples) * 1000.0 / f64::from(self.config.clock_rate)
    }

    /// Forgets the stream (new source, or a jump no reordering explains).
    fn reset(&mut self) {
        self.packets.clear();
        self.highest = None;
        self.next_play = None;
        self.played = 0;
        self.empty_slots = 0;
        self.slots_above_target = 0;
        self.anchor = None;
        self.base_transit = None;
        self.last_transit = None;
        self.delay_ms = None;
    }

    /// Extends a 16-bit sequence number next to the highest seen so far; None on a jump.
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

    /// Whether `timestamp` on extended sequence `ext` is far from where the sequence numbers
    /// put it (the source restarted its clock without changing SSRC).
    fn timestamp_jumped(&self, ext: u64, timestamp: u32) -> bool {
        let Some(highest) = self.highest else {
            return false;
        };
        let expected = (ext as i64 - highest as i64) * i64::from(self.config.frame_samples);
        let actual = i64::from(timestamp.wrapping_sub(self.highest_ts) as i32);
        (actual - expected).abs() > MAX_TS_JUMP_S * i64::from(self.config.clock_rate)
    }

    /// Milliseconds of media clock from the anchor to `timestamp`.
    fn media_ms(&self, anchor_ts: u32, timestamp: u32) -> f64 {
        f64::from(timestamp.wrapping_sub(anchor_ts) as i32) * 1000.0
            / f64::from(self.config.clock_rate)
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
            Some(e) if !self.timestamp_jumped(e, packet.timestamp) => e,
            _ => {
                tracing::debug!(
                    seq = packet.sequence,
                    ts = packet.timestamp,
                    "RTP sequence or timestamp jump; jitter buffer restarts"
                );
                self.reset();
                u64::from(packet.sequence) + (1 << 16)
            }
        };
        self.stats.received += 1;
        let already_played = self.next_play.filter(|&n| ext < n).is_some_and(|next| {
            u32::try_from(next - ext - 1)
                .ok()
                .and_then(|back| self.played.checked_shr(back))
                .is_some_and(|bits| bits & 1 == 1)
        });
        if already_played || self.packets.contains_key(&ext) {
            // A copy says nothing about the network's delay: no jitter or transit update.
            self.stats.duplicates += 1;
            return;
        }
        // A late packet does: it is the reason the delay must grow.
        self.update_jitter(packet.timestamp, now);
        self.update_transit(packet.timestamp, now);
        if self.next_play.is_some_and(|n| ext < n) {
            self.stats.late += 1;
            return;
        }
        match self.highest {
            Some(h) if ext < h => self.stats.reordered += 1,
            _ => {
                self.highest = Some(ext);
                self.highest_ts = packet.timestamp;
            }
        }
        self.stats.highest_seq = self.highest.unwrap_or(ext);
        self.packets.insert(ext, (packet, now));
        // Bound the memory whatever the source does; the delay control keeps a well-behaved
        // stream far below this.
        let max_packets =
            2 * (f64::from(self.config.max_delay_ms) / self.frame_ms()).ceil() as usize + 4;
        while self.packets.len() > max_packets {
            let Some((first, _)) = self.packets.pop_first() else {
                break;
            };
            if let Some(n) = self.next_play.filter(|&n| n <= first) {
                self.advance(first + 1 - n, false);
            }
            self.stats.shrunk += 1;
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
        let jitter_ms = self.jitter * 1000.0 / f64::from(self.config.clock_rate);
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

    fn update_transit(&mut self, timestamp: u32, now: Instant) {
        let (anchor_at, anchor_ts) = *self.anchor.get_or_insert((now, timestamp));
        let transit = now.saturating_duration_since(anchor_at).as_secs_f64() * 1000.0
            - self.media_ms(anchor_ts, timestamp);
        match self.base_transit.as_mut() {
            Some(base) => base.update(transit, now),
            None => {
                self.base_transit = Some(BaseTransit {
                    window_start: now,
                    current_ms: transit,
                    previous_ms: None,
                })
            }
        }
    }

    /// How long after the fastest possible arrival the slot with `timestamp` plays at `now`.
    fn playout_delay_ms(&self, timestamp: u32, now: Instant) -> Option<f64> {
        let (anchor_at, anchor_ts) = self.anchor?;
        let base = self.base_transit?.get();
        Some(
            now.saturating_duration_since(anchor_at).as_secs_f64() * 1000.0
                - self.media_ms(anchor_ts, timestamp)
                - base,
        )
    }

    /// Moves the playout point `slots` forward; `played` marks the last of them as played.
    fn advance(&mut self, slots: u64, played: bool) {
        let Some(next) = self.next_play else {
            return;
        };
        self.next_play = Some(next + slots);
        self.played = u32::try_from(slots)
            .ok()
            .and_then(|s| self.played.checked_shl(s))
            .unwrap_or(0)
            | u64::from(played);
    }

    /// The playout clock's tick: what plays from `now` on. A caller that still has audio
    /// queued from an earlier packet passes the instant this slot will actually start.
    pub fn pop(&mut self, now: Instant) -> Playout {
        let Some(next) = self.next_play else {
            return self.start(now);
        };
        let stretch_below = self.target_ms - self.frame_ms() / 2.0;
        match self.packets.first_key_value() {
            None => {
                // Nothing here, not even a later packet: wait for it (the delay grows by one
                // frame) rather than skip a slot whose packet may be on its way.
                self.empty_slots += 1;
                self.stats.stretched += 1;
                if self.empty_slots >= UNDERRUN_SLOTS {
                    // The caller stopped sending (silence suppression, hold): restart later
                    // with the current target and a fresh view of the transit time.
                    self.next_play = None;
                    self.empty_slots = 0;
                    self.base_transit = None;
                    self.delay_ms = None;
                    return Playout::Buffering;
                }
                Playout::Lost
            }
            Some((&first, (packet, _))) if first == next => {
                self.empty_slots = 0;
                let delay = self.playout_delay_ms(packet.timestamp, now);
                self.delay_ms = delay;
                let delay = delay.unwrap_or(self.target_ms);
                if delay < stretch_below {
                    self.stats.stretched += 1;
                    self.slots_above_target = 0;
                    return Playout::Lost;
                }
                if delay > self.target_ms + self.frame_ms() {
                    self.slots_above_target += 1;
                } else {
                    self.slots_above_target = 0;
                }
                let too_long = delay > f64::from(self.config.max_delay_ms) + self.frame_ms()
                    || self.slots_above_target >= SHRINK_SLOTS;
                if too_long && self.packets.contains_key(&(next + 1)) {
                    // Shrink by one frame: drop this one, play the next in its place.
                    self.packets.remove(&next);
                    self.advance(1, false);
                    self.stats.shrunk += 1;
                    self.slots_above_target = 0;
                }
                self.play_next()
            }
            Some((&first, (packet, _))) => {
                // The slot's packet is missing but a later one is here.
                self.empty_slots = 0;
                let gap = first - next;
                let slot_ts = packet
                    .timestamp
                    .wrapping_sub((gap as u32).wrapping_mul(self.config.frame_samples));
                let delay = self.playout_delay_ms(slot_ts, now);
                self.delay_ms = delay;
                if delay.is_some_and(|d| d < stretch_below) {
                    // Still early for this slot: give a reordered packet its chance.
                    self.stats.stretched += 1;
                    return Playout::Lost;
                }
                self.stats.lost += 1;
                self.advance(1, false);
                Playout::Lost
            }
        }
    }

    /// Before playout: start once the oldest packet has waited the target delay.
    fn start(&mut self, now: Instant) -> Playout {
        let Some((&first, (_, arrived))) = self.packets.first_key_value() else {
            return Playout::Buffering;
        };
        if now.saturating_duration_since(*arrived)
            < Duration::from_secs_f64(self.target_ms / 1000.0)
        {
            return Playout::Buffering;
        }
        self.next_play = Some(first);
        self.played = 0;
        self.empty_slots = 0;
        self.slots_above_target = 0;
        self.play_next()
    }

    /// Plays the packet at the playout point (present by the caller's check).
    fn play_next(&mut self) -> Playout {
        let Some(next) = self.next_play else {
            return Playout::Buffering;
        };
        match self.packets.remove(&next) {
            Some((packet, _)) => {
                self.advance(1, true);
                Playout::Frame(packet)
            }
            None => Playout::Lost,
        }
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats {
            jitter_ms: self.jitter * 1000.0 / f64::from(self.config.clock_rate),
            delay_ms: self.delay_ms.unwrap_or(self.target_ms).max(0.0).round() as u32,
            target_delay_ms: self.target_ms.round() as u32,
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
            // Monotonic across the sequence wrap for every sequence number the tests use.
            timestamp: u32::from(seq.wrapping_sub(60_000)) * 160,
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

    fn frames(out: &[Playout]) -> usize {
        out.iter()
            .filter(|p| matches!(p, Playout::Frame(_)))
            .count()
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
        // After the last packet the buffer waits (stretches) three slots.
        assert_eq!((stats.lost, stats.stretched, stats.late), (0, 3, 0));
        assert_eq!(stats.delay_ms, 40);
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
    fn duplicate_of_a_played_packet_is_not_late() {
        let arrivals = vec![(1, 0), (2, 20), (3, 40), (1, 50), (4, 60)];
        let (out, stats) = run(&arrivals, 160);
        assert_eq!(seqs(&out)[..4], [Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!((stats.duplicates, stats.late), (1, 0));
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
    fn a_packet_delayed_past_its_slot_still_plays_and_the_delay_grows() {
        // Packet 3 is 30 ms late with nothing behind it yet: its slot is stretched, not lost.
        let arrivals = vec![(1, 0), (2, 20), (3, 90), (4, 90), (5, 90), (6, 100)];
        let (out, stats) = run(&arrivals, 240);
        assert_eq!(
            seqs(&out)[..7],
            [Some(1), Some(2), None, Some(3), Some(4), Some(5), Some(6)]
        );
        assert_eq!((stats.lost, stats.late), (0, 0));
        assert_eq!(stats.delay_ms, 60);
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
    fn timestamp_jump_restarts_the_stream() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(packet(1, 1), t0);
        assert!(matches!(
            jb.pop(t0 + Duration::from_millis(40)),
            Playout::Frame(_)
        ));
        let mut jumped = packet(2, 1);
        jumped.timestamp = jumped.timestamp.wrapping_add(8000 * 60);
        jb.push(jumped, t0 + Duration::from_millis(60));
        assert_eq!(jb.pop(t0 + Duration::from_millis(60)), Playout::Buffering);
        assert!(matches!(
            jb.pop(t0 + Duration::from_millis(100)),
            Playout::Frame(p) if p.sequence == 2
        ));
    }

    #[test]
    fn jitter_estimate_of_synthetic_arrivals() {
        // Evenly spaced arrivals: no jitter.
        let steady: Vec<_> = (0..100u16).map(|s| (s, u64::from(s) * 20)).collect();
        let (_, stats) = run(&steady, 2000);
        assert!(stats.jitter_ms < 1e-9, "{}", stats.jitter_ms);
        assert_eq!(stats.target_delay_ms, 40);
        // Every other packet 40 ms late: |D| is 40 ms every packet, so J converges to 40 ms.
        let alternating: Vec<_> = (0..200u16)
            .map(|s| (s, u64::from(s) * 20 + if s % 2 == 1 { 40 } else { 0 }))
            .collect();
        let (_, stats) = run(&alternating, 4000);
        assert!((stats.jitter_ms - 40.0).abs() < 1.0, "{}", stats.jitter_ms);
        assert!(stats.delay_ms > 60, "{}", stats.delay_ms);
        assert!(stats.delay_ms <= 200);
    }

    #[test]
    fn sustained_jitter_grows_the_delay_while_playing() {
        // Every other packet 60 ms late, for 10 s. With the starting delay (40 ms) half the
        // packets would be late; the delay must grow during playout so that almost all play.
        let arrivals: Vec<_> = (0..500u16)
            .map(|s| (s, u64::from(s) * 20 + if s % 2 == 1 { 60 } else { 0 }))
            .collect();
        let (out, stats) = run(&arrivals, 11_000);
        assert!(frames(&out) >= 495, "{} frames, {stats:?}", frames(&out));
        assert!(stats.late + stats.lost <= 5, "{stats:?}");
        assert!(stats.delay_ms >= 80, "{stats:?}");
    }

    #[test]
    fn delay_shrinks_slowly_when_the_jitter_goes_away() {
        // 4 s of 60 ms jitter, then 16 s of a steady stream.
        let arrivals: Vec<_> = (0..1000u16)
            .map(|s| {
                let late = s < 200 && s % 2 == 1;
                (s, u64::from(s) * 20 + if late { 60 } else { 0 })
            })
            .collect();
        let (out, stats) = run(&arrivals, 20_100);
        assert!(stats.target_delay_ms < 60, "{stats:?}");
        assert!(stats.delay_ms <= 80, "{stats:?}");
        assert!(stats.shrunk > 0, "{stats:?}");
        assert!(frames(&out) >= 1000 - stats.shrunk as usize - 5);
    }

    #[test]
    fn a_slow_sender_clock_loses_nothing() {
        // The caller's clock runs 1 % slow: a packet every 20.2 ms for 60 s.
        let arrivals: Vec<_> = (0..3000u16).map(|s| (s, u64::from(s) * 202 / 10)).collect();
        let (out, stats) = run(&arrivals, 60_700);
        assert_eq!(frames(&out), 3000, "{stats:?}");
        assert_eq!((stats.lost, stats.late), (0, 0), "{stats:?}");
    }

    #[test]
    fn a_fast_sender_clock_does_not_build_up_delay() {
        // The caller's clock runs 1 % fast: a packet every 19.8 ms for 60 s.
        let arrivals: Vec<_> = (0..3000u16).map(|s| (s, u64::from(s) * 198 / 10)).collect();
        let (_, stats) = run(&arrivals, 59_400);
        assert!(stats.delay_ms <= 80, "{stats:?}");
        assert!(stats.shrunk >= 20, "{stats:?}");
    }
}

//! Who may drive a call leg's media: which datagrams on the leg's RTP port count, and where the
//! leg's RTP goes (symmetric RTP, RFC 4961). Sans-IO: fed with each datagram's source and an
//! `Instant`, it says admit or drop; the leg hands admitted packets to its receiver and sends
//! to [`MediaLatch::destination`].
//!
//! Why: anyone who can reach the RTP port range can send to a call's port. Latching the send
//! address onto the first packet from any source let a stranger spraying the range at call
//! start take the bot's audio (the caller heard nothing), and RFC 4733 events from any SSRC let
//! a sprayed `0` force a hand-over. The rules, in the manner of Asterisk's `strictrtp` and
//! rtpengine's strict source:
//!
//! 1. **Latching.** Until the first accepted RTP packet, a source is accepted only as the mode
//!    says ([`LatchMode`]): exactly the SDP address (`strict`); the SDP address, any port on the
//!    SDP's IP or on the signalling peer's IP, the address the INVITE came from
//!    (`signalled-ip`, the default: a caller behind NAT sends from another port, or from its
//!    public address while its SDP names a private one); or anyone (`any`, the old behaviour,
//!    unsafe: whoever sends first gets the bot's audio). The first accepted RTP packet locks
//!    the leg onto its source address and SSRC, and the bot's audio goes there.
//! 2. **SSRC lock.** After latching, RTP from any other address is dropped and counted
//!    (`stranger`), and so is RTP from the latched address with another SSRC (`foreign_ssrc`)
//!    unless the locked stream has been silent for `ssrc_change_after` (a PBX or SBC
//!    re-anchoring its media starts a new stream): then the new SSRC takes over. A re-INVITE
//!    ([`MediaLatch::resignal`]) that moves the SDP address unlocks the leg, which latches again
//!    under rule 1; one that keeps it lets the next packet from the latched address set a new
//!    SSRC at once.
//! 3. **DTMF.** RFC 4733 events travel in the same RTP stream, so they pass the same check:
//!    digits only from the locked address and SSRC. (SIP INFO digits are signalling and not
//!    affected.)
//! 4. **RTCP** (multiplexed on the RTP port, or on its own port) is accepted from the latched
//!    IP (before latching: from a source rule 1 accepts); it never moves the destination.
//!
//! Nothing here parses more than the fixed RTP header's version and SSRC (bytes 0 and 8..12,
//! length checked first); the receiver parses what is admitted.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::rtp::is_rtcp;

/// Which sources may latch a leg's media before its first packet (`[media] latching`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatchMode {
    /// Exactly the address and port the SDP names.
    Strict,
    /// The SDP address, or any port on the SDP's IP or on the signalling peer's IP (NAT).
    #[default]
    SignalledIp,
    /// Any source (unsafe: a stranger who sends first receives the call's audio).
    Any,
}

/// The latching rules for a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatchConfig {
    pub mode: LatchMode,
    /// How long the locked stream must be silent before another SSRC from the latched address
    /// takes over.
    pub ssrc_change_after: Duration,
}

impl Default for LatchConfig {
    fn default() -> Self {
        Self {
            mode: LatchMode::SignalledIp,
            ssrc_change_after: Duration::from_millis(500),
        }
    }
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// RTP (audio or DTMF) from the leg's stream: give it to the receiver. `latched`: the
    /// first packet, whose source is now the destination.
    Rtp { latched: bool },
    /// RTCP from the leg's peer.
    Rtcp,
    /// Dropped, and counted.
    Drop(Dropped),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// From a source the rules do not accept (or not the latched one).
    Stranger,
    /// From the latched address with another SSRC while the locked stream is alive.
    ForeignSsrc,
}

/// Counters for the call's RTP figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatchStats {
    /// Datagrams (RTP or RTCP) dropped for their source.
    pub stranger: u64,
    /// RTP from the latched address with another SSRC, dropped.
    pub foreign_ssrc: u64,
    /// SSRC changes accepted after the old stream's silence.
    pub ssrc_changes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Lock {
    addr: SocketAddr,
    /// None after a re-INVITE that kept the address: the next packet sets it.
    ssrc: Option<u32>,
    last_at: Instant,
}

/// One leg's latch.
#[derive(Debug, Clone)]
pub struct MediaLatch {
    config: LatchConfig,
    /// The address the SDP names.
    sdp: SocketAddr,
    /// The signalling peer's IP (the INVITE's source, or where our INVITE went).
    signalling_ip: IpAddr,
    lock: Option<Lock>,
    stats: LatchStats,
}

/// The SSRC of an RTP datagram: version 2 and a whole fixed header, else None.
fn rtp_ssrc(buf: &[u8]) -> Option<u32> {
    match buf {
        [b0, _, _, _, _, _, _, _, s0, s1, s2, s3, ..] if b0 >> 6 == 2 => {
            Some(u32::from_be_bytes([*s0, *s1, *s2, *s3]))
        }
        _ => None,
    }
}

impl MediaLatch {
    pub fn new(config: LatchConfig, sdp: SocketAddr, signalling_ip: IpAddr) -> Self {
        Self {
            config,
            sdp,
            signalling_ip,
            lock: None,
            stats: LatchStats::default(),
        }
    }

    /// Whether rule 1 accepts `from` as the leg's source.
    fn source_allowed(&self, from: SocketAddr) -> bool {
        match self.config.mode {
            LatchMode::Strict => from == self.sdp,
            LatchMode::SignalledIp => {
                from == self.sdp || from.ip() == self.sdp.ip() || from.ip() == self.signalling_ip
            }
            LatchMode::Any => true,
        }
    }

    /// A datagram on the leg's RTP port from `from`.
    pub fn admit(&mut self, buf: &[u8], from: SocketAddr, now: Instant) -> Admit {
        if is_rtcp(buf) {
            return if self.admits_rtcp_from(from) {
                Admit::Rtcp
            } else {
                Admit::Drop(Dropped::Stranger)
            };
        }
        let Some(ssrc) = rtp_ssrc(buf) else {
            // Not RTP: the receiver counts it as malformed when it comes from the leg's peer;
            // it never latches.
            let ours = match &self.lock {
                Some(lock) => lock.addr == from,
                None => self.source_allowed(from),
            };
            if ours {
                return Admit::Rtp { latched: false };
            }
            self.stats.stranger += 1;
            return Admit::Drop(Dropped::Stranger);
        };
        let Some(lock) = self.lock.as_mut() else {
            if !self.source_allowed(from) {
                self.stats.stranger += 1;
                return Admit::Drop(Dropped::Stranger);
            }
            self.lock = Some(Lock {
                addr: from,
                ssrc: Some(ssrc),
                last_at: now,
            });
            return Admit::Rtp { latched: true };
        };
        if lock.addr != from {
            self.stats.stranger += 1;
            return Admit::Drop(Dropped::Stranger);
        }
        match lock.ssrc {
            Some(locked) if locked != ssrc => {
                if now.saturating_duration_since(lock.last_at) < self.config.ssrc_change_after {
                    self.stats.foreign_ssrc += 1;
                    return Admit::Drop(Dropped::ForeignSsrc);
                }
                tracing::info!(
                    old = locked,
                    new = ssrc,
                    %from,
                    "the RTP stream changed SSRC after a silence; following the new one"
                );
                self.stats.ssrc_changes += 1;
            }
            _ => {}
        }
        lock.ssrc = Some(ssrc);
        lock.last_at = now;
        Admit::Rtp { latched: false }
    }

    /// Whether RTCP from `from` (on either port) is the leg's peer's: the latched IP, or
    /// before latching a source rule 1 accepts (on any port: RTCP comes from RTP port + 1).
    pub fn admits_rtcp_from(&mut self, from: SocketAddr) -> bool {
        let ok = match &self.lock {
            Some(lock) => lock.addr.ip() == from.ip(),
            None => {
                let as_rtp = SocketAddr::new(from.ip(), from.port().saturating_sub(1));
                self.source_allowed(from) || self.source_allowed(as_rtp)
            }
        };
        if !ok {
            self.stats.stranger += 1;
        }
        ok
    }

    /// Where the leg's RTP goes: the latched source, else the SDP address.
    pub fn destination(&self) -> SocketAddr {
        self.lock.map_or(self.sdp, |l| l.addr)
    }

    /// The latched source and SSRC, once latched.
    pub fn locked(&self) -> Option<(SocketAddr, Option<u32>)> {
        self.lock.map(|l| (l.addr, l.ssrc))
    }

    /// A re-INVITE signalled `sdp`: a new address unlocks the leg (it latches again by rule
    /// 1); the same address keeps the latched source and accepts the next SSRC from it.
    pub fn resignal(&mut self, sdp: SocketAddr) {
        if sdp != self.sdp {
            self.sdp = sdp;
            self.lock = None;
        } else if let Some(lock) = self.lock.as_mut() {
            lock.ssrc = None;
        }
    }

    pub fn stats(&self) -> LatchStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::dtmf_payloads;
    use crate::media::rtp::RtpPacket;

    const CALLER_SDP: &str = "127.0.0.1:40000";
    const STRANGER: &str = "127.0.0.7:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(ssrc: u32, pt: u8) -> Vec<u8> {
        RtpPacket {
            payload_type: pt,
            sequence: 1,
            timestamp: 160,
            ssrc,
            marker: false,
            payload: vec![0xFF; 160],
        }
        .to_bytes()
    }

    fn dtmf_zero(ssrc: u32) -> Vec<u8> {
        let payload = dtmf_payloads('0', 60, 8000, 20).unwrap()[0].0.clone();
        RtpPacket {
            payload_type: 101,
            sequence: 9,
            timestamp: 800,
            ssrc,
            marker: true,
            payload,
        }
        .to_bytes()
    }

    fn latch(mode: LatchMode, signalling: &str) -> MediaLatch {
        let config = LatchConfig {
            mode,
            ..LatchConfig::default()
        };
        MediaLatch::new(config, addr(CALLER_SDP), signalling.parse().unwrap())
    }

    const RR: [u8; 8] = [0x81, 201, 0, 1, 0, 0, 0, 9];

    #[test]
    fn a_spray_before_the_callers_first_packet_neither_latches_nor_is_admitted() {
        let t0 = Instant::now();
        let mut l = latch(LatchMode::SignalledIp, "127.0.0.1");
        for k in 0..50 {
            let from = SocketAddr::new(addr(STRANGER).ip(), 20000 + k);
            assert_eq!(
                l.admit(&rtp(666, 0), from, t0),
                Admit::Drop(Dropped::Stranger)
            );
            assert_eq!(
                l.admit(&dtmf_zero(666), from, t0),
                Admit::Drop(Dropped::Stranger)
            );
        }
        assert_eq!(
            l.destination(),
            addr(CALLER_SDP),
            "the bot still sends to the SDP"
        );
        assert_eq!(l.locked(), None);
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), t0),
            Admit::Rtp { latched: true }
        );
        assert_eq!(l.locked(), Some((addr(CALLER_SDP), Some(7))));
        assert_eq!(l.stats().stranger, 100);
        assert!(!l.admits_rtcp_from(addr("127.0.0.7:40001")));
        assert_eq!(
            l.admit(&RR, addr(STRANGER), t0),
            Admit::Drop(Dropped::Stranger)
        );
    }

    #[test]
    fn a_spray_after_latching_is_dropped_and_never_moves_the_destination() {
        let t0 = Instant::now();
        let mut l = latch(LatchMode::SignalledIp, "127.0.0.1");
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), t0),
            Admit::Rtp { latched: true }
        );
        let later = t0 + Duration::from_secs(5);
        // Another source, with the caller's SSRC or its own: even from the caller's own IP
        // (another port) once latched.
        for from in [STRANGER, "127.0.0.1:40002"] {
            for ssrc in [7, 666] {
                assert_eq!(
                    l.admit(&rtp(ssrc, 0), addr(from), later),
                    Admit::Drop(Dropped::Stranger)
                );
            }
        }
        assert_eq!(l.destination(), addr(CALLER_SDP));
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), later),
            Admit::Rtp { latched: false }
        );
        assert_eq!(l.stats().stranger, 4);
        // RTCP from the caller's RTCP port is the caller's; from elsewhere it is not.
        assert!(l.admits_rtcp_from(addr("127.0.0.1:40001")));
        assert_eq!(l.admit(&RR, addr(CALLER_SDP), later), Admit::Rtcp);
        assert!(!l.admits_rtcp_from(addr("127.0.0.7:40001")));
    }

    #[test]
    fn dtmf_counts_only_from_the_locked_stream() {
        let t0 = Instant::now();
        let mut l = latch(LatchMode::SignalledIp, "127.0.0.1");
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), t0),
            Admit::Rtp { latched: true }
        );
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(
            l.admit(&dtmf_zero(666), addr(STRANGER), t1),
            Admit::Drop(Dropped::Stranger)
        );
        // Spoofed source with a stranger's SSRC while the caller talks.
        assert_eq!(
            l.admit(&dtmf_zero(666), addr(CALLER_SDP), t1),
            Admit::Drop(Dropped::ForeignSsrc)
        );
        assert_eq!(
            l.admit(&dtmf_zero(7), addr(CALLER_SDP), t1),
            Admit::Rtp { latched: false }
        );
        assert_eq!(l.stats().foreign_ssrc, 1);
    }

    #[test]
    fn a_new_ssrc_from_the_latched_address_takes_over_only_after_silence() {
        let t0 = Instant::now();
        let mut l = latch(LatchMode::SignalledIp, "127.0.0.1");
        let ms = Duration::from_millis;
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), t0),
            Admit::Rtp { latched: true }
        );
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), t0 + ms(200)),
            Admit::Rtp { latched: false }
        );
        // 499 ms after the old stream's last packet: still the old stream's time.
        assert_eq!(
            l.admit(&rtp(8, 0), addr(CALLER_SDP), t0 + ms(699)),
            Admit::Drop(Dropped::ForeignSsrc)
        );
        // The old stream silent for 500 ms: re-anchoring, the new SSRC is the stream now.
        assert_eq!(
            l.admit(&rtp(8, 0), addr(CALLER_SDP), t0 + ms(700)),
            Admit::Rtp { latched: false }
        );
        assert_eq!(l.locked(), Some((addr(CALLER_SDP), Some(8))));
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), t0 + ms(720)),
            Admit::Drop(Dropped::ForeignSsrc),
            "the old SSRC is foreign now"
        );
        assert_eq!(
            l.stats(),
            LatchStats {
                stranger: 0,
                foreign_ssrc: 2,
                ssrc_changes: 1
            }
        );
    }

    #[test]
    fn nat_mode_accepts_the_signalling_peers_ip_on_any_port_and_strict_does_not() {
        let t0 = Instant::now();
        // The SDP names a private address; media and the INVITE come from the NAT's public one.
        let nat_public = "127.0.0.9";
        let mut l = latch(LatchMode::SignalledIp, nat_public);
        assert_eq!(
            l.admit(&rtp(5, 0), addr(STRANGER), t0),
            Admit::Drop(Dropped::Stranger)
        );
        assert_eq!(
            l.admit(&rtp(5, 0), addr("127.0.0.9:61000"), t0),
            Admit::Rtp { latched: true }
        );
        assert_eq!(l.destination(), addr("127.0.0.9:61000"), "symmetric RTP");
        // The SDP's own IP on another port also passes rule 1.
        let mut l = latch(LatchMode::SignalledIp, nat_public);
        assert_eq!(
            l.admit(&rtp(5, 0), addr("127.0.0.1:50000"), t0),
            Admit::Rtp { latched: true }
        );

        let mut strict = latch(LatchMode::Strict, nat_public);
        for from in ["127.0.0.9:61000", "127.0.0.1:40002", STRANGER] {
            assert_eq!(
                strict.admit(&rtp(5, 0), addr(from), t0),
                Admit::Drop(Dropped::Stranger),
                "{from}"
            );
        }
        assert_eq!(
            strict.admit(&rtp(5, 0), addr(CALLER_SDP), t0),
            Admit::Rtp { latched: true }
        );

        // `any`: the first source wins (the unsafe old behaviour), then it is locked.
        let mut any = latch(LatchMode::Any, nat_public);
        assert_eq!(
            any.admit(&rtp(5, 0), addr(STRANGER), t0),
            Admit::Rtp { latched: true }
        );
        assert_eq!(any.destination(), addr(STRANGER));
        assert_eq!(
            any.admit(&rtp(7, 0), addr(CALLER_SDP), t0),
            Admit::Drop(Dropped::Stranger)
        );
    }

    #[test]
    fn a_reinvite_to_a_new_address_relatches_and_the_same_address_accepts_a_new_ssrc() {
        let t0 = Instant::now();
        let mut l = latch(LatchMode::SignalledIp, "127.0.0.1");
        assert_eq!(
            l.admit(&rtp(7, 0), addr(CALLER_SDP), t0),
            Admit::Rtp { latched: true }
        );
        // Same SDP (a codec change, a refresh): the caller's new SSRC counts at once.
        l.resignal(addr(CALLER_SDP));
        assert_eq!(
            l.admit(&rtp(9, 0), addr(CALLER_SDP), t0),
            Admit::Rtp { latched: false }
        );
        assert_eq!(l.locked(), Some((addr(CALLER_SDP), Some(9))));
        // A PBX re-anchors the media on another host of its own.
        l.resignal(addr("127.0.0.3:30000"));
        assert_eq!(l.destination(), addr("127.0.0.3:30000"));
        assert_eq!(
            l.admit(&rtp(9, 0), addr(STRANGER), t0),
            Admit::Drop(Dropped::Stranger)
        );
        assert_eq!(
            l.admit(&rtp(11, 0), addr("127.0.0.3:30000"), t0),
            Admit::Rtp { latched: true }
        );
    }

    #[test]
    fn short_or_foreign_datagrams_never_latch() {
        let t0 = Instant::now();
        let mut l = latch(LatchMode::Any, "127.0.0.1");
        // Too short for a header, or version 1: handed on (the receiver counts them as
        // malformed) but the leg stays unlatched.
        assert_eq!(
            l.admit(&[0x80, 0, 0], addr(STRANGER), t0),
            Admit::Rtp { latched: false }
        );
        let mut v1 = rtp(5, 0);
        v1[0] = 0x40;
        assert_eq!(
            l.admit(&v1, addr(STRANGER), t0),
            Admit::Rtp { latched: false }
        );
        assert_eq!(l.locked(), None);
        let mut l = latch(LatchMode::SignalledIp, "127.0.0.1");
        assert_eq!(
            l.admit(&[], addr(STRANGER), t0),
            Admit::Drop(Dropped::Stranger)
        );
    }
}

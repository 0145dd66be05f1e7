//! SRTP and SRTCP (RFC 3711) for calls whose keys came by SDES (RFC 4568).
//!
//! Trunks and PBXs that encrypt media offer `RTP/SAVP` with `a=crypto` lines; the SDP side
//! (`sip::sdes`) picks a suite and keys, and this module turns them into the two one-way
//! crypto contexts a call leg needs: [`SrtpSession::inbound`] authenticates and decrypts what
//! the caller sends, [`SrtpSession::outbound`] encrypts what we send. The cipher, key
//! derivation and replay windows are `webrtc-srtp`'s; this wrapper is sans-IO (bytes in,
//! bytes or a typed drop reason out), never panics on network input (lengths are checked
//! before the crate sees them), never prints a key, and counts what it drops, so the server
//! layer can report authentication failures and replays without ever playing them.
//!
//! A packet that fails authentication or repeats one already accepted is dropped: it never
//! reaches the jitter buffer, the latch or the recording.

use std::fmt;

use serde::{Deserialize, Serialize};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

/// Replay window in packets (RFC 3711 section 3.3.2 asks for at least 64; libsrtp uses 128).
const REPLAY_WINDOW: usize = 128;

/// Streams (SSRCs) a leg's inbound context tries to authenticate besides those that already
/// did: each costs the crate a little state, so a sender spraying SSRCs cannot grow it without
/// bound. Packets from further unknown SSRCs are dropped as authentication failures.
const MAX_UNPROVEN_SSRCS: usize = 16;

/// Bytes of an SRTCP trailer before the tag: the E flag and the 31-bit SRTCP index.
const SRTCP_INDEX_LEN: usize = 4;

/// Whether a call's media is encrypted: the gateway's `[media] srtp`, a value that can also
/// be chosen per call (a trunk's own setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpMode {
    /// Plain RTP only: an offer that is only `RTP/SAVP` gets 488.
    Off,
    /// `RTP/SAVP` offers are answered with SDES keys, plain `RTP/AVP` offers plainly.
    #[default]
    Optional,
    /// Only `RTP/SAVP` with a usable `a=crypto`: a plain offer gets 488.
    Required,
}

impl SrtpMode {
    /// The mode a configuration word names (`off`, `optional`, `required`).
    pub fn from_word(word: &str) -> Option<SrtpMode> {
        [SrtpMode::Off, SrtpMode::Optional, SrtpMode::Required]
            .into_iter()
            .find(|m| m.as_str() == word)
    }

    /// The setting's name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SrtpMode::Off => "off",
            SrtpMode::Optional => "optional",
            SrtpMode::Required => "required",
        }
    }
}

impl fmt::Display for SrtpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SDES crypto suites the gateway speaks (RFC 4568 section 6.2), in our preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag on RTP and RTCP.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit tag on RTP (RTCP keeps 80 bits).
    AesCm128HmacSha1_32,
}

impl SrtpSuite {
    /// Every supported suite.
    pub const ALL: [SrtpSuite; 2] = [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ];

    /// The suite's name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite a name in `a=crypto` stands for (names are case-sensitive in RFC 4568, but
    /// some stacks write them in lower case).
    pub fn from_name(name: &str) -> Option<SrtpSuite> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Bytes added to every RTP packet (the authentication tag).
    pub fn rtp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
        }
    }

    /// Bytes of the RTCP authentication tag (80 bits for both suites).
    pub fn rtcp_tag_len(self) -> usize {
        10
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

impl fmt::Display for SrtpSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A master key and salt (16 + 14 bytes for both suites). Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; MasterKey::LEN]);

impl MasterKey {
    /// Key (16) plus salt (14) bytes.
    pub const LEN: usize = 30;
    const KEY_LEN: usize = 16;

    /// A fresh random key and salt (the thread's CSPRNG), one per call and direction.
    pub fn random() -> MasterKey {
        MasterKey(rand::random())
    }

    /// The key and salt from exactly [`MasterKey::LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<MasterKey> {
        bytes.try_into().ok().map(MasterKey)
    }

    /// The concatenated key and salt, as SDES carries them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn key(&self) -> &[u8] {
        self.0.get(..Self::KEY_LEN).unwrap_or_default()
    }

    fn salt(&self) -> &[u8] {
        self.0.get(Self::KEY_LEN..).unwrap_or_default()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// What SDES settled for a call's media: the suite, the tag of the `a=crypto` line it came
/// from, the key we send with (ours, in our SDP) and the key the far end sends with (theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub suite: SrtpSuite,
    /// The `a=crypto` tag, the same in offer and answer.
    pub tag: u32,
    /// Protects what we send.
    pub local: MasterKey,
    /// Authenticates what the far end sends.
    pub remote: MasterKey,
}

/// Why a packet was not protected or unprotected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The authentication tag does not match: a wrong key, a tampered packet, or a stranger.
    #[error("SRTP authentication failed")]
    Auth,
    /// The packet repeats one already accepted, or is older than the replay window.
    #[error("SRTP replay (or older than the replay window)")]
    Replay,
    /// Too short or not RTP/RTCP at all.
    #[error("not an SRTP/SRTCP packet: {0}")]
    Malformed(String),
    /// The crypto context could not be built or refused to protect (e.g. key exhausted).
    #[error("SRTP context: {0}")]
    Context(String),
}

/// Drops counted by an inbound context since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpCounters {
    pub auth_failures: u64,
    pub replays: u64,
    pub malformed: u64,
}

/// One direction's crypto context (RFC 3711 "cryptographic context"): SRTP and SRTCP for
/// every SSRC of that direction.
pub struct SrtpContext {
    ctx: Context,
    suite: SrtpSuite,
    /// SSRCs that authenticated at least one packet, and others tried so far.
    proven: Vec<u32>,
    unproven: Vec<u32>,
    counters: SrtpCounters,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// A context for `suite` under `key`, with replay windows on SRTP and SRTCP.
    pub fn new(suite: SrtpSuite, key: &MasterKey) -> Result<SrtpContext, SrtpError> {
        let ctx = Context::new(
            key.key(),
            key.salt(),
            suite.profile(),
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )
        .map_err(|e| SrtpError::Context(e.to_string()))?;
        Ok(SrtpContext {
            ctx,
            suite,
            proven: Vec::new(),
            unproven: Vec::new(),
            counters: SrtpCounters::default(),
        })
    }

    /// The suite in use.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Drops counted so far.
    pub fn counters(&self) -> SrtpCounters {
        self.counters
    }

    /// Encrypts and authenticates one RTP packet (header in the clear, tag appended).
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if packet.len() < 12 {
            return Err(SrtpError::Malformed("RTP packet under 12 bytes".into()));
        }
        self.ctx
            .encrypt_rtp(packet)
            .map(|b| b.to_vec())
            .map_err(|e| SrtpError::Context(e.to_string()))
    }

    /// Encrypts and authenticates one RTCP compound packet (index and tag appended).
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if packet.len() < 8 {
            return Err(SrtpError::Malformed("RTCP packet under 8 bytes".into()));
        }
        self.ctx
            .encrypt_rtcp(packet)
            .map(|b| b.to_vec())
            .map_err(|e| SrtpError::Context(e.to_string()))
    }

    /// Authenticates, checks against replay and decrypts one SRTP packet; what fails is
    /// counted and must be dropped.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let result = self.try_unprotect_rtp(packet);
        self.count(result.as_ref().err());
        result
    }

    fn try_unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let min = 12usize.saturating_add(self.suite.rtp_tag_len());
        let ssrc = packet
            .get(8..12)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .filter(|_| packet.len() >= min)
            .map(u32::from_be_bytes)
            .ok_or_else(|| SrtpError::Malformed(format!("SRTP packet under {min} bytes")))?;
        let known = self.proven.contains(&ssrc);
        if !known && !self.unproven.contains(&ssrc) {
            if self.unproven.len() >= MAX_UNPROVEN_SSRCS {
                return Err(SrtpError::Auth);
            }
            self.unproven.push(ssrc);
        }
        let plain = self.ctx.decrypt_rtp(packet).map_err(classify)?;
        if !known {
            self.unproven.retain(|s| *s != ssrc);
            self.proven.push(ssrc);
        }
        Ok(plain.to_vec())
    }

    /// Authenticates, checks against replay and decrypts one SRTCP packet; what fails is
    /// counted and must be dropped.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        // The crate reads the SSRC at 4..8 and the index before the tag without checking.
        let min = 8usize
            .saturating_add(SRTCP_INDEX_LEN)
            .saturating_add(self.suite.rtcp_tag_len());
        // The E flag opens the SRTCP trailer. The crate returns a packet whose flag is clear
        // without checking its tag; unencrypted SRTCP is never negotiated here, so such a
        // packet is a forgery.
        let e_flag = packet
            .len()
            .checked_sub(self.suite.rtcp_tag_len() + SRTCP_INDEX_LEN)
            .and_then(|at| packet.get(at))
            .is_some_and(|b| b & 0x80 != 0);
        let result = if packet.len() < min {
            Err(SrtpError::Malformed(format!(
                "SRTCP packet under {min} bytes"
            )))
        } else if !e_flag {
            Err(SrtpError::Auth)
        } else {
            self.ctx
                .decrypt_rtcp(packet)
                .map(|b| b.to_vec())
                .map_err(classify)
        };
        self.count(result.as_ref().err());
        result
    }

    fn count(&mut self, error: Option<&SrtpError>) {
        let c = &mut self.counters;
        match error {
            Some(SrtpError::Auth) => c.auth_failures += 1,
            Some(SrtpError::Replay) => c.replays += 1,
            Some(SrtpError::Malformed(_) | SrtpError::Context(_)) => c.malformed += 1,
            None => {}
        }
    }
}

fn classify(e: webrtc_srtp::Error) -> SrtpError {
    use webrtc_srtp::Error as E;
    match e {
        E::RtpFailedToVerifyAuthTag
        | E::RtcpFailedToVerifyAuthTag
        | E::ErrFailedToVerifyAuthTag => SrtpError::Auth,
        E::SrtpSsrcDuplicated(..) | E::SrtcpSsrcDuplicated(..) | E::ErrDuplicated => {
            SrtpError::Replay
        }
        other => SrtpError::Malformed(other.to_string()),
    }
}

/// Both directions of one call leg's SRTP.
#[derive(Debug)]
pub struct SrtpSession {
    /// What the far end sends us.
    pub inbound: SrtpContext,
    /// What we send.
    pub outbound: SrtpContext,
}

impl SrtpSession {
    /// The contexts for negotiated `keys`.
    pub fn new(keys: &SrtpKeys) -> Result<SrtpSession, SrtpError> {
        Ok(SrtpSession {
            inbound: SrtpContext::new(keys.suite, &keys.remote)?,
            outbound: SrtpContext::new(keys.suite, &keys.local)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// A receiver report with no blocks, SSRC 0x01020304.
    fn rtcp_rr() -> Vec<u8> {
        vec![0x80, 201, 0x00, 0x01, 0x01, 0x02, 0x03, 0x04]
    }

    fn pair(suite: SrtpSuite) -> (SrtpContext, SrtpContext) {
        let key = MasterKey::random();
        (
            SrtpContext::new(suite, &key).unwrap(),
            SrtpContext::new(suite, &key).unwrap(),
        )
    }

    #[test]
    fn rtp_roundtrip_both_suites() {
        for suite in SrtpSuite::ALL {
            let (mut tx, mut rx) = pair(suite);
            for seq in 1000..1100u16 {
                let plain = rtp(seq, 0xdead_beef, &[0x55; 160]);
                let secret = tx.protect_rtp(&plain).unwrap();
                assert_eq!(secret.len(), plain.len() + suite.rtp_tag_len());
                assert_eq!(secret[..12], plain[..12], "the header stays in the clear");
                assert_ne!(secret[12..172], plain[12..], "the payload is encrypted");
                assert_eq!(rx.unprotect_rtp(&secret).unwrap(), plain);
            }
            assert_eq!(rx.counters(), SrtpCounters::default());
        }
    }

    #[test]
    fn rtcp_roundtrip() {
        let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_32);
        let plain = rtcp_rr();
        let secret = tx.protect_rtcp(&plain).unwrap();
        assert_eq!(secret.len(), plain.len() + 4 + 10);
        assert_eq!(rx.unprotect_rtcp(&secret).unwrap(), plain);
        assert_eq!(
            rx.unprotect_rtcp(&secret),
            Err(SrtpError::Replay),
            "the same SRTCP index twice"
        );
        assert_eq!(rx.counters().replays, 1);
    }

    #[test]
    fn srtcp_with_the_e_flag_cleared_is_not_taken_unauthenticated() {
        let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
        let mut forged = rtcp_rr();
        // A plausible trailer: E clear, index 1, and a tag of zeros.
        forged.extend_from_slice(&[0, 0, 0, 1]);
        forged.extend_from_slice(&[0; 10]);
        assert_eq!(rx.unprotect_rtcp(&forged), Err(SrtpError::Auth));
        // A genuine packet with its E flag flipped fails too.
        let mut genuine = tx.protect_rtcp(&rtcp_rr()).unwrap();
        let at = genuine.len() - 14;
        genuine[at] &= 0x7f;
        assert_eq!(rx.unprotect_rtcp(&genuine), Err(SrtpError::Auth));
        assert_eq!(rx.counters().auth_failures, 2);
    }

    #[test]
    fn tampered_packet_and_wrong_key_fail_authentication_and_are_counted() {
        let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
        let mut secret = tx.protect_rtp(&rtp(1, 7, &[1; 160])).unwrap();
        secret[20] ^= 0x01;
        assert_eq!(rx.unprotect_rtp(&secret), Err(SrtpError::Auth));

        let mut stranger =
            SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &MasterKey::random()).unwrap();
        let forged = stranger.protect_rtp(&rtp(2, 7, &[1; 160])).unwrap();
        assert_eq!(rx.unprotect_rtp(&forged), Err(SrtpError::Auth));
        assert_eq!(rx.counters().auth_failures, 2);

        // The genuine stream still gets through after the failures.
        let good = tx.protect_rtp(&rtp(3, 7, &[1; 160])).unwrap();
        assert!(rx.unprotect_rtp(&good).is_ok());
    }

    #[test]
    fn replayed_and_too_old_packets_are_dropped_and_counted() {
        let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
        let first = tx.protect_rtp(&rtp(10, 9, &[2; 160])).unwrap();
        assert!(rx.unprotect_rtp(&first).is_ok());
        assert_eq!(rx.unprotect_rtp(&first), Err(SrtpError::Replay));
        for seq in 11..(11 + REPLAY_WINDOW as u16 + 5) {
            let p = tx.protect_rtp(&rtp(seq, 9, &[2; 160])).unwrap();
            assert!(rx.unprotect_rtp(&p).is_ok());
        }
        assert_eq!(
            rx.unprotect_rtp(&first),
            Err(SrtpError::Replay),
            "beyond the window"
        );
        assert_eq!(rx.counters().replays, 2);
        assert_eq!(rx.counters().auth_failures, 0);
    }

    #[test]
    fn short_and_garbage_input_never_panics() {
        let (_, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x80) as u8).collect();
            assert!(rx.unprotect_rtp(&junk).is_err());
            assert!(rx.unprotect_rtcp(&junk).is_err());
        }
        // Every one dropped and counted. The crate checks the replay window before the tag, so
        // a forged packet "older" than an earlier forged one counts as a replay.
        let c = rx.counters();
        assert_eq!(c.auth_failures + c.replays + c.malformed, 128, "{c:?}");
    }

    #[test]
    fn ssrc_spray_is_bounded() {
        let (_, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
        let mut stranger =
            SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &MasterKey::random()).unwrap();
        for ssrc in 0..1000u32 {
            let p = stranger.protect_rtp(&rtp(1, ssrc, &[0; 20])).unwrap();
            assert_eq!(rx.unprotect_rtp(&p), Err(SrtpError::Auth));
        }
        assert!(rx.unproven.len() <= MAX_UNPROVEN_SSRCS);
        assert_eq!(rx.counters().auth_failures, 1000);
    }

    #[test]
    fn keys_are_never_printed() {
        let key = MasterKey::from_bytes(&[0xab; 30]).unwrap();
        let keys = SrtpKeys {
            suite: SrtpSuite::AesCm128HmacSha1_80,
            tag: 1,
            local: key.clone(),
            remote: key,
        };
        let shown = format!("{keys:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab, "));
        assert!(shown.contains("redacted"));
        assert!(MasterKey::from_bytes(&[0; 29]).is_none());
    }

    #[test]
    fn suite_names() {
        assert_eq!(
            SrtpSuite::from_name("AES_CM_128_HMAC_SHA1_32"),
            Some(SrtpSuite::AesCm128HmacSha1_32)
        );
        assert_eq!(SrtpSuite::from_name("AEAD_AES_256_GCM"), None);
        assert_eq!(SrtpMode::default(), SrtpMode::Optional);
    }
}

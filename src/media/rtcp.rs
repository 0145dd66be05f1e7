//! RTCP (RFC 3550 section 6), the small part a voice gateway needs: a compound Sender Report
//! (with one report block about the caller's stream) plus SDES CNAME every few seconds, and a
//! tolerant reader of what the caller sends (SR, RR, BYE), which never panics on bad bytes.
//! Written out rather than pulled in: these are fixed 32-bit-word layouts, and the RTCP crates
//! we found come with a full WebRTC stack.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between 1900 (NTP epoch) and 1970 (Unix epoch).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// What we know about the caller's stream for a report block.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceptionReport {
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start (24-bit, clamped).
    pub cumulative_lost: u32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the caller's last SR (0 if none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// Our side of the stream for the sender info.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SenderInfo {
    pub ssrc: u32,
    pub wall_clock: SystemTime,
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

/// 64-bit NTP time.
fn ntp(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

fn push_report_block(out: &mut Vec<u8>, r: &ReceptionReport) {
    out.extend_from_slice(&r.ssrc.to_be_bytes());
    let lost = r.cumulative_lost.min(0x7F_FFFF);
    out.push(r.fraction_lost);
    out.extend_from_slice(&lost.to_be_bytes()[1..]);
    out.extend_from_slice(&r.extended_highest_seq.to_be_bytes());
    out.extend_from_slice(&r.jitter.to_be_bytes());
    out.extend_from_slice(&r.last_sr.to_be_bytes());
    out.extend_from_slice(&r.delay_since_last_sr.to_be_bytes());
}

fn push_sdes_cname(out: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let name: Vec<u8> = cname.bytes().take(255).collect();
    let start = out.len();
    out.extend_from_slice(&[0x81, 202, 0, 0]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1); // CNAME
    out.push(name.len() as u8);
    out.extend_from_slice(&name);
    out.push(0); // end of items
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    let words = ((out.len() - start) / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// A compound RTCP packet: SR (with a report block when `report` is given) and SDES CNAME.
pub fn sender_report(
    sender: &SenderInfo,
    report: Option<&ReceptionReport>,
    cname: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    let count = u8::from(report.is_some());
    out.extend_from_slice(&[0x80 | count, 200, 0, 0]);
    out.extend_from_slice(&sender.ssrc.to_be_bytes());
    out.extend_from_slice(&ntp(sender.wall_clock).to_be_bytes());
    out.extend_from_slice(&sender.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&sender.packets.to_be_bytes());
    out.extend_from_slice(&sender.octets.to_be_bytes());
    if let Some(r) = report {
        push_report_block(&mut out, r);
    }
    let words = (out.len() / 4 - 1) as u16;
    out[2..4].copy_from_slice(&words.to_be_bytes());
    push_sdes_cname(&mut out, sender.ssrc, cname);
    out
}

/// A compound RTCP packet for a side that is not sending (hold, recvonly): RR (with a report
/// block when `report` is given) and SDES CNAME.
pub fn receiver_report(ssrc: u32, report: Option<&ReceptionReport>, cname: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let count = u8::from(report.is_some());
    out.extend_from_slice(&[0x80 | count, 201, 0, 0]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(r) = report {
        push_report_block(&mut out, r);
    }
    let words = (out.len() / 4 - 1) as u16;
    out[2..4].copy_from_slice(&words.to_be_bytes());
    push_sdes_cname(&mut out, ssrc, cname);
    out
}

/// What an incoming compound RTCP packet said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RtcpSummary {
    /// The sender's SSRC and the middle 32 bits of its NTP time, from an SR.
    pub sender_report: Option<(u32, u32)>,
    /// Report blocks about streams (ours among them), from SR and RR.
    pub reports: Vec<ReceptionReport>,
    /// The caller said BYE.
    pub bye: bool,
}

/// Why bytes are not RTCP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet truncated or malformed at byte {0}")]
    Malformed(usize),
}

fn be32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_blocks(buf: &[u8], mut at: usize, count: u8, out: &mut Vec<ReceptionReport>) -> Option<()> {
    for _ in 0..count {
        let lost = be32(buf, at + 4)?;
        out.push(ReceptionReport {
            ssrc: be32(buf, at)?,
            fraction_lost: (lost >> 24) as u8,
            cumulative_lost: lost & 0xFF_FFFF,
            extended_highest_seq: be32(buf, at + 8)?,
            jitter: be32(buf, at + 12)?,
            last_sr: be32(buf, at + 16)?,
            delay_since_last_sr: be32(buf, at + 20)?,
        });
        at += 24;
    }
    Some(())
}

/// Reads a compound RTCP packet; unknown packet types are skipped.
pub fn parse_rtcp(buf: &[u8]) -> Result<RtcpSummary, RtcpError> {
    let mut summary = RtcpSummary::default();
    let mut at = 0;
    if buf.len() < 4 {
        return Err(RtcpError::Malformed(0));
    }
    while at + 4 <= buf.len() {
        let header = &buf[at..at + 4];
        if header[0] >> 6 != 2 {
            return Err(RtcpError::Malformed(at));
        }
        let count = header[0] & 0x1F;
        let kind = header[1];
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let Some(packet) = buf.get(at..at + len) else {
            return Err(RtcpError::Malformed(at));
        };
        let parsed = match kind {
            200 => {
                let ntp_mid = be32(packet, 8)
                    .zip(be32(packet, 12))
                    .map(|(hi, lo)| (hi << 16) | (lo >> 16));
                summary.sender_report = be32(packet, 4).zip(ntp_mid);
                read_blocks(packet, 28, count, &mut summary.reports)
            }
            201 => read_blocks(packet, 8, count, &mut summary.reports),
            203 => {
                summary.bye = true;
                Some(())
            }
            _ => Some(()),
        };
        if parsed.is_none() {
            return Err(RtcpError::Malformed(at));
        }
        at += len;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_report_round_trips() {
        let report = ReceptionReport {
            ssrc: 0xABCD,
            fraction_lost: 12,
            cumulative_lost: 34,
            extended_highest_seq: 70000,
            jitter: 80,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        };
        let bytes = sender_report(
            &SenderInfo {
                ssrc: 7,
                wall_clock: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                rtp_timestamp: 160,
                packets: 10,
                octets: 1600,
            },
            Some(&report),
            "voicebot@127.0.0.1",
        );
        assert_eq!(bytes.len() % 4, 0);
        let summary = parse_rtcp(&bytes).unwrap();
        assert_eq!(summary.reports, vec![report]);
        let (ssrc, ntp_mid) = summary.sender_report.unwrap();
        assert_eq!(ssrc, 7);
        let secs = 1_700_000_000u64 + NTP_UNIX_OFFSET;
        assert_eq!(ntp_mid, ((secs as u32) << 16));
        assert!(!summary.bye);
    }

    #[test]
    fn receiver_report_round_trips() {
        let report = ReceptionReport {
            ssrc: 0xABCD,
            fraction_lost: 3,
            cumulative_lost: 0x7F_FFFF + 10, // clamped to 24 bits
            extended_highest_seq: 65536 + 12,
            jitter: 40,
            ..Default::default()
        };
        let bytes = receiver_report(9, Some(&report), "voicebot");
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..2], &[0x81, 201]);
        let summary = parse_rtcp(&bytes).unwrap();
        assert_eq!(
            summary.reports,
            vec![ReceptionReport {
                cumulative_lost: 0x7F_FFFF,
                ..report
            }]
        );
        assert_eq!(summary.sender_report, None);
        let empty = parse_rtcp(&receiver_report(9, None, "")).unwrap();
        assert!(empty.reports.is_empty());
    }

    #[test]
    fn receiver_report_and_bye() {
        // RR with one block, then BYE.
        let mut rr = vec![0x81, 201, 0, 7];
        rr.extend_from_slice(&9u32.to_be_bytes());
        push_report_block(
            &mut rr,
            &ReceptionReport {
                ssrc: 7,
                jitter: 5,
                ..Default::default()
            },
        );
        rr.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 9]);
        let summary = parse_rtcp(&rr).unwrap();
        assert_eq!(summary.reports.len(), 1);
        assert_eq!(summary.reports[0].jitter, 5);
        assert!(summary.bye);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(parse_rtcp(&[]).is_err());
        assert!(parse_rtcp(&[0x81, 201, 0, 30, 0, 0]).is_err());
        assert!(parse_rtcp(&[0x41, 201, 0, 0]).is_err());
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        for len in 0..3000usize {
            let buf: Vec<u8> = (0..len % 120)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i == 0 {
                        0x80 | (x as u8 & 0x1F)
                    } else {
                        x as u8
                    }
                })
                .collect();
            let _ = parse_rtcp(&buf);
        }
    }
}

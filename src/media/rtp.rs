//! RTP packets (RFC 3550) as owned values: read with `rtp-rs`'s bounds-checked reader, written
//! with its builder. RTCP shares the port when the caller multiplexes (RFC 5761) and is told
//! apart by its packet type.

/// Why bytes are not an RTP packet the gateway can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("not an RTP packet: {0}")]
    Malformed(String),
}

/// One RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
}

/// Parses an RTP packet (version 2; CSRCs, extension and padding handled and skipped).
pub fn parse_rtp(buf: &[u8]) -> Result<RtpPacket, RtpError> {
    let reader = rtp_rs::RtpReader::new(buf).map_err(|e| RtpError::Malformed(format!("{e:?}")))?;
    Ok(RtpPacket {
        payload_type: reader.payload_type(),
        sequence: reader.sequence_number().into(),
        timestamp: reader.timestamp(),
        ssrc: reader.ssrc(),
        marker: reader.mark(),
        payload: reader.payload().to_vec(),
    })
}

/// Whether a datagram on the RTP port is RTCP (packet types 192..=223 in the second byte, RFC
/// 5761 section 4).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 8 && buf[0] >> 6 == 2 && (192..=223).contains(&buf[1])
}

impl RtpPacket {
    /// The packet's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let builder = rtp_rs::RtpPacketBuilder::new()
            .payload_type(self.payload_type & 0x7F)
            .sequence(self.sequence.into())
            .timestamp(self.timestamp)
            .ssrc(self.ssrc)
            .marked(self.marker)
            .payload(&self.payload);
        // The builder only fails on a payload type above 127, masked above.
        builder.build().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let p = RtpPacket {
            payload_type: 0,
            sequence: 65535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 42,
            marker: true,
            payload: vec![0xFF; 160],
        };
        let bytes = p.to_bytes();
        assert_eq!(bytes.len(), 172);
        assert_eq!(parse_rtp(&bytes), Ok(p));
        assert!(!is_rtcp(&bytes));
        assert!(parse_rtp(&bytes[..5]).is_err());
        let mut v1 = bytes.clone();
        v1[0] = 0x40;
        assert!(parse_rtp(&v1).is_err());
        // RTCP receiver report header.
        assert!(is_rtcp(&[0x81, 201, 0, 7, 0, 0, 0, 1]));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..4000usize {
            let buf: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_rtp(&buf);
            let _ = is_rtcp(&buf);
        }
    }
}

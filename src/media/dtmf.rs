//! DTMF as RFC 4733 telephone-events: digits from the caller's keypad in, and digits out.
//!
//! An event is one key press, identified by its RTP timestamp; the sender repeats packets with
//! a growing duration and sends the end packet three times. The receiver reports each event
//! once, on its first packet, so a lost end packet never loses a digit.

/// A received digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    pub digit: char,
    /// Duration known when it was reported, ms.
    pub duration_ms: u32,
    /// The event's RTP timestamp.
    pub timestamp: u32,
}

/// Why a digit cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("{0:?} is not a DTMF digit (0-9, *, #, A-D)")]
    NotADigit(char),
}

const DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// The RFC 4733 event code of a digit.
pub fn event_code(digit: char) -> Option<u8> {
    DIGITS
        .iter()
        .position(|&d| d == digit.to_ascii_uppercase())
        .map(|i| i as u8)
}

/// Reports each telephone-event once.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    last: Option<(u32, u32)>, // (ssrc, timestamp) of the last reported event
}

impl DtmfReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// A telephone-event packet; the digit when it starts a new event.
    pub fn push(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        payload: &[u8],
        clock_rate: u32,
    ) -> Option<DtmfEvent> {
        let [code, _flags, d0, d1, ..] = *payload else {
            return None;
        };
        let digit = *DIGITS.get(usize::from(code))?;
        if self.last == Some((ssrc, timestamp)) {
            return None;
        }
        self.last = Some((ssrc, timestamp));
        let duration = u32::from(u16::from_be_bytes([d0, d1]));
        Some(DtmfEvent {
            digit,
            duration_ms: duration * 1000 / clock_rate.max(1),
            timestamp,
        })
    }
}

/// The payloads to send for one key press of `duration_ms`: one every `ptime_ms` with the
/// duration so far, the last (end bit set) three times. The bool is the end flag.
pub fn dtmf_payloads(
    digit: char,
    duration_ms: u32,
    clock_rate: u32,
    ptime_ms: u32,
) -> Result<Vec<(Vec<u8>, bool)>, DtmfError> {
    let code = event_code(digit).ok_or(DtmfError::NotADigit(digit))?;
    let ptime = ptime_ms.max(10);
    let steps = duration_ms.max(ptime).div_ceil(ptime);
    let volume = 10u8; // -10 dBm0
    let mut out = Vec::new();
    for i in 1..=steps {
        let end = i == steps;
        let samples = (i * ptime * clock_rate / 1000).min(u32::from(u16::MAX)) as u16;
        let flags = if end { 0x80 | volume } else { volume };
        let [d0, d1] = samples.to_be_bytes();
        let payload = vec![code, flags, d0, d1];
        let copies = if end { 3 } else { 1 };
        for _ in 0..copies {
            out.push((payload.clone(), end));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_reported_once() {
        let mut rx = DtmfReceiver::new();
        let packets = dtmf_payloads('0', 100, 8000, 20).unwrap();
        assert_eq!(packets.len(), 5 + 2);
        assert!(packets.last().unwrap().1);
        let digits: Vec<_> = packets
            .iter()
            .filter_map(|(p, _)| rx.push(1, 1000, p, 8000))
            .collect();
        assert_eq!(digits.len(), 1);
        assert_eq!(digits[0].digit, '0');
        // The next press has a new timestamp.
        let again = rx.push(
            1,
            5000,
            &dtmf_payloads('#', 60, 8000, 20).unwrap()[0].0,
            8000,
        );
        assert_eq!(again.map(|e| e.digit), Some('#'));
    }

    #[test]
    fn malformed_payloads_are_ignored() {
        let mut rx = DtmfReceiver::new();
        assert_eq!(rx.push(1, 1, &[1, 2, 3], 8000), None);
        assert_eq!(rx.push(1, 2, &[16, 0, 0, 160], 8000), None);
        assert_eq!(
            dtmf_payloads('x', 100, 8000, 20),
            Err(DtmfError::NotADigit('x'))
        );
        assert_eq!(event_code('d'), Some(15));
    }
}

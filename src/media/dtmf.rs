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

/// Why a digit cannot be sent, or a payload is not a DTMF telephone-event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("{0:?} is not a DTMF digit (0-9, *, #, A-D)")]
    NotADigit(char),
    #[error("telephone-event payload of {0} bytes (at least 4 needed)")]
    TooShort(usize),
    #[error("telephone-event {0} is not a DTMF digit")]
    NotDtmf(u8),
}

/// One RFC 4733 telephone-event payload (section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub digit: char,
    /// The E bit: the last packets of the event.
    pub end: bool,
    /// Power level, -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

/// Reads a telephone-event payload; only the DTMF events (0-15) are accepted. Extra bytes
/// (several events in one packet, RFC 4733 section 2.5.1.5) are ignored.
pub fn parse_telephone_event(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
    let [code, flags, d0, d1, ..] = *payload else {
        return Err(DtmfError::TooShort(payload.len()));
    };
    let digit = *DIGITS
        .get(usize::from(code))
        .ok_or(DtmfError::NotDtmf(code))?;
    Ok(TelephoneEvent {
        digit,
        end: flags & 0x80 != 0,
        volume: flags & 0x3F,
        duration: u16::from_be_bytes([d0, d1]),
    })
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

/// How far back in RTP time (seconds) a packet counts as part of an event already reported.
const STALE_EVENT_S: u32 = 10;

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
        let event = parse_telephone_event(payload).ok()?;
        if let Some((last_ssrc, last_ts)) = self.last {
            // The same event again (updates, the repeated end packets), or a straggler of an
            // earlier one arriving after the next key press started: events only move forward
            // in RTP time. A source that restarts its clock further back is a new event.
            let back = i64::from(last_ts.wrapping_sub(timestamp) as i32);
            let window = i64::from(STALE_EVENT_S) * i64::from(clock_rate.max(1));
            if last_ssrc == ssrc && (0..window).contains(&back) {
                return None;
            }
        }
        self.last = Some((ssrc, timestamp));
        Some(DtmfEvent {
            digit: event.digit,
            duration_ms: u32::from(event.duration) * 1000 / clock_rate.max(1),
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
    fn a_straggler_of_an_earlier_event_is_not_a_new_digit() {
        let mut rx = DtmfReceiver::new();
        let one = dtmf_payloads('1', 100, 8000, 20).unwrap();
        let two = dtmf_payloads('2', 100, 8000, 20).unwrap();
        assert_eq!(
            rx.push(1, 1000, &one[0].0, 8000).map(|e| e.digit),
            Some('1')
        );
        assert_eq!(
            rx.push(1, 2600, &two[0].0, 8000).map(|e| e.digit),
            Some('2')
        );
        // A delayed end packet of '1' arrives after '2' started.
        let end_of_one = &one.last().unwrap().0;
        assert_eq!(rx.push(1, 1000, end_of_one, 8000), None);
        assert_eq!(rx.push(1, 2600, &two.last().unwrap().0, 8000), None);
        // Another source starts afresh; timestamps wrap: an event just past u32::MAX is new.
        assert!(rx.push(2, u32::MAX - 100, &one[0].0, 8000).is_some());
        assert!(rx.push(2, 200, &two[0].0, 8000).is_some());
        // A clock restarted far back is a new event too.
        assert!(rx
            .push(2, 200u32.wrapping_sub(8000 * 60), &one[0].0, 8000)
            .is_some());
    }

    #[test]
    fn telephone_event_payloads_parse() {
        assert_eq!(
            parse_telephone_event(&[11, 0x8A, 0x03, 0x20, 0xFF]),
            Ok(TelephoneEvent {
                digit: '#',
                end: true,
                volume: 10,
                duration: 800
            })
        );
        assert_eq!(parse_telephone_event(&[1, 2]), Err(DtmfError::TooShort(2)));
        assert_eq!(
            parse_telephone_event(&[16, 0, 0, 0]),
            Err(DtmfError::NotDtmf(16))
        );
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

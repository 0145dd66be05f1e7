//! Every parser of network input, and the receive path as a whole, fed with seeded
//! pseudo-random bytes: any datagram must come back as a value or an error, never a panic.
//! Purely random bytes stop at the first check, so half the inputs are mutations of valid
//! packets (RTP, RFC 4733, compound RTCP) that reach the deeper branches. The same inputs
//! every run, so a failure reproduces; `cargo fuzz` targets go further.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::codec::Codec;
use super::dtmf::{dtmf_payloads, parse_telephone_event, DtmfReceiver};
use super::jitter::{JitterBuffer, JitterConfig};
use super::receiver::MediaReceiver;
use super::rtcp::{parse_rtcp, receiver_report, sender_report, ReceptionReport, SenderInfo};
use super::rtp::{is_rtcp, parse_rtp, RtpPacket};

const CASES: usize = 5000;

fn valid_rtp(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(0..200);
    RtpPacket {
        payload_type: rng.random_range(0..128),
        sequence: rng.random(),
        timestamp: rng.random(),
        ssrc: rng.random_range(0..3),
        marker: rng.random(),
        payload: (0..len).map(|_| rng.random()).collect(),
    }
    .to_bytes()
}

fn valid_rtcp(rng: &mut StdRng) -> Vec<u8> {
    let report = ReceptionReport {
        ssrc: rng.random(),
        jitter: rng.random(),
        ..Default::default()
    };
    let mut out = if rng.random() {
        sender_report(
            &SenderInfo {
                ssrc: rng.random(),
                wall_clock: std::time::UNIX_EPOCH
                    + Duration::from_secs(rng.random_range(0..1 << 40)),
                rtp_timestamp: rng.random(),
                packets: rng.random(),
                octets: rng.random(),
            },
            Some(&report),
            "fuzz",
        )
    } else {
        receiver_report(rng.random(), Some(&report), "fuzz")
    };
    out.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 9]);
    out
}

/// Random bytes, or `valid` with a few bytes flipped, cut short or extended.
fn input(rng: &mut StdRng, valid: fn(&mut StdRng) -> Vec<u8>) -> Vec<u8> {
    if rng.random() {
        let len = rng.random_range(0..300);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut bytes = valid(rng);
    for _ in 0..rng.random_range(0..4) {
        if let Some(len) = bytes.len().checked_sub(1) {
            let at = rng.random_range(0..=len);
            bytes[at] = rng.random();
        }
    }
    match rng.random_range(0..4) {
        0 => bytes.truncate(rng.random_range(0..=bytes.len())),
        1 => bytes.extend((0..rng.random_range(0..8)).map(|_| rng.random::<u8>())),
        _ => {}
    }
    bytes
}

#[test]
fn rtp_parser_survives_any_bytes() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut parsed = 0;
    for _ in 0..CASES {
        let bytes = input(&mut rng, valid_rtp);
        let _ = is_rtcp(&bytes);
        if let Ok(p) = parse_rtp(&bytes) {
            parsed += 1;
            // Whatever parses serialises again to something that parses to the same fields.
            let again = parse_rtp(&p.to_bytes()).expect("own output parses");
            assert_eq!(again.payload, p.payload);
        }
    }
    assert!(
        parsed > CASES / 10,
        "only {parsed} inputs parsed: the mutations are too blunt"
    );
}

#[test]
fn telephone_event_parser_survives_any_bytes() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut dtmf = DtmfReceiver::new();
    let valid = |rng: &mut StdRng| {
        let digit = ['0', '5', '9', '*', '#', 'A', 'D'][rng.random_range(0..7)];
        let payloads =
            dtmf_payloads(digit, rng.random_range(0..2000), 8000, 20).unwrap_or_default();
        payloads
            .into_iter()
            .next()
            .map(|(p, _)| p)
            .unwrap_or_default()
    };
    for _ in 0..CASES {
        let bytes = input(&mut rng, valid);
        let _ = parse_telephone_event(&bytes);
        let _ = dtmf.push(rng.random_range(0..2), rng.random(), &bytes, rng.random());
    }
}

#[test]
fn rtcp_parser_survives_any_bytes() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut parsed = 0;
    for _ in 0..CASES {
        let bytes = input(&mut rng, valid_rtcp);
        if parse_rtcp(&bytes).is_ok() {
            parsed += 1;
        }
    }
    assert!(parsed > CASES / 20, "only {parsed} inputs parsed");
}

#[test]
fn receive_path_survives_any_datagrams() {
    let mut rng = StdRng::seed_from_u64(4);
    let t0 = Instant::now();
    let mut rx =
        MediaReceiver::new(Codec::Pcmu, Some(101), JitterConfig::default()).expect("receiver");
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut now = t0;
    for i in 0..CASES {
        let bytes = input(&mut rng, if i % 3 == 0 { valid_rtcp } else { valid_rtp });
        let _ = rx.push_datagram(&bytes, now);
        if let Ok(p) = parse_rtp(&bytes) {
            jb.push(p, now);
        }
        if i % 2 == 0 {
            now += Duration::from_millis(rng.random_range(0..45));
            if let Some(frame) = rx.poll_frame(now) {
                assert_eq!(frame.len(), 160);
                assert!(frame.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
            }
            let _ = jb.pop(now);
        }
    }
    let stats = rx.stats();
    assert!(stats.received + stats.rtcp + stats.malformed > 0);
}

#[test]
fn the_latch_survives_any_datagrams_and_keeps_its_invariants() {
    use super::latch::{Admit, LatchConfig, LatchMode, MediaLatch};
    use std::net::{IpAddr, SocketAddr};
    let mut rng = StdRng::seed_from_u64(5);
    let t0 = Instant::now();
    let sdp: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let peer = IpAddr::from([127, 0, 0, 2]);
    for mode in [LatchMode::Strict, LatchMode::SignalledIp, LatchMode::Any] {
        let config = LatchConfig {
            mode,
            ..LatchConfig::default()
        };
        let mut latch = MediaLatch::new(config, sdp, peer);
        let mut now = t0;
        let mut admitted_from = Vec::new();
        for i in 0..CASES {
            let bytes = input(&mut rng, if i % 3 == 0 { valid_rtcp } else { valid_rtp });
            let from = SocketAddr::new(
                IpAddr::from([127, 0, 0, rng.random_range(1..4)]),
                40000 + rng.random_range(0..3),
            );
            now += Duration::from_millis(rng.random_range(0..30));
            let before = latch.locked();
            match latch.admit(&bytes, from, now) {
                Admit::Rtp { latched: true } => {
                    assert_eq!(before, None, "latches once");
                    assert_eq!(latch.destination(), from);
                }
                Admit::Rtp { latched: false } if before.is_some() => admitted_from.push(from),
                Admit::Rtp { .. } | Admit::Rtcp | Admit::Drop(_) => {}
            }
            if let (Some((a, _)), Some((b, _))) = (before, latch.locked()) {
                assert_eq!(a, b, "only a re-INVITE moves a latched leg");
            }
            if mode == LatchMode::Strict {
                assert!(latch.locked().is_none_or(|(a, _)| a == sdp));
            }
        }
        let locked = latch.locked().map(|(a, _)| a);
        assert!(locked.is_some(), "{mode:?} latched on something");
        assert!(
            admitted_from.iter().all(|a| Some(*a) == locked),
            "{mode:?}: after latching only the latched source is admitted"
        );
    }
}

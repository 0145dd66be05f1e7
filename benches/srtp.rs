//! SRTP cost per packet and per call: what encrypting a call's media adds to the CPU.
//!
//! Run: `cargo bench --bench srtp`. One 20 ms G.711 packet (12-byte header, 160 bytes of
//! payload) is protected (encrypt + HMAC-SHA1 tag, as the pacer does for every packet we send)
//! and unprotected (tag check, replay window, decrypt, as the caller leg does for every packet
//! it receives), for both SDES suites; then a whole second of one call both ways (50 packets
//! out, 50 in) and a 20 ms RTCP report. The per-call cost is the second's time: as a share of
//! one core, it bounds how many SRTP calls the crypto alone could take (the gateway's capacity
//! is set by speech recognition long before that).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use voicebot_gateway::media::srtp::{MasterKey, SrtpContext, SrtpSuite};

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend((0..160u32).map(|i| (i * 7) as u8));
    p
}

fn pair(suite: SrtpSuite) -> (SrtpContext, SrtpContext) {
    let key = MasterKey::random();
    (
        SrtpContext::new(suite, &key).expect("context"),
        SrtpContext::new(suite, &key).expect("context"),
    )
}

fn per_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("srtp_packet");
    group.throughput(Throughput::Elements(1));
    for suite in SrtpSuite::ALL {
        let (mut tx, _) = pair(suite);
        let mut seq = 0u16;
        group.bench_function(format!("protect/{suite}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                tx.protect_rtp(&rtp(seq)).expect("protect")
            })
        });
        // Unprotect needs fresh packets in order (a repeat is a replay): protect a batch
        // outside the timing, unprotect it inside.
        let (mut tx, mut rx) = pair(suite);
        let mut next = 0u16;
        group.bench_function(format!("unprotect/{suite}"), |b| {
            b.iter_batched(
                || {
                    next = next.wrapping_add(1);
                    tx.protect_rtp(&rtp(next)).expect("protect")
                },
                |packet| rx.unprotect_rtp(&packet).expect("unprotect"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn per_call_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("srtp_call");
    // One second of one call: 50 packets protected (ours) and 50 unprotected (the caller's).
    group.throughput(Throughput::Elements(100));
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let (mut our_tx, _) = pair(suite);
    let (mut their_tx, mut our_rx) = pair(suite);
    let (mut their_seq, mut our_seq) = (0u16, 0u16);
    group.bench_function("one_second_both_ways/AES_CM_128_HMAC_SHA1_80", |b| {
        b.iter_batched(
            || {
                (0..50)
                    .map(|_| {
                        their_seq = their_seq.wrapping_add(1);
                        their_tx.protect_rtp(&rtp(their_seq)).expect("protect")
                    })
                    .collect::<Vec<_>>()
            },
            |incoming| {
                for packet in &incoming {
                    our_rx.unprotect_rtp(packet).expect("unprotect");
                    our_seq = our_seq.wrapping_add(1);
                    our_tx.protect_rtp(&rtp(our_seq)).expect("protect");
                }
            },
            BatchSize::SmallInput,
        )
    });
    let (mut rtcp_tx, mut rtcp_rx) = pair(suite);
    let report = [0x80u8, 200, 0, 6, 0x12, 0x34, 0x56, 0x78]
        .into_iter()
        .chain([0u8; 20])
        .collect::<Vec<u8>>();
    group.throughput(Throughput::Elements(1));
    group.bench_function("rtcp_report_protect_unprotect", |b| {
        b.iter(|| {
            let p = rtcp_tx.protect_rtcp(&report).expect("protect");
            rtcp_rx.unprotect_rtcp(&p).expect("unprotect")
        })
    });
    group.finish();
}

criterion_group!(benches, per_packet, per_call_second);
criterion_main!(benches);

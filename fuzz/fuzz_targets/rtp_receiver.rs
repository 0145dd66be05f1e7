//! A call's whole receive path fed arbitrary datagrams: RTP/RTCP demultiplexing, the jitter
//! buffer, decoding, concealment and DTMF never panic, and every frame is 20 ms of samples in
//! [-1, 1].
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use voicebot_gateway::media::codec::Codec;
use voicebot_gateway::media::jitter::JitterConfig;
use voicebot_gateway::media::receiver::MediaReceiver;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut rx = MediaReceiver::new(Codec::Pcmu, Some(101), JitterConfig::default()).expect("receiver");
    // Datagrams separated by a 0xFE byte, one 20 ms tick after each.
    for (i, datagram) in data.split(|&b| b == 0xFE).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 20);
        let _ = rx.push_datagram(datagram, now);
        if let Some(frame) = rx.poll_frame(now) {
            assert_eq!(frame.len(), 160);
            assert!(frame.iter().all(|s| (-1.0..=1.0).contains(s)));
        }
    }
});

//! A call's whole receive path fed arbitrary datagrams. The body is
//! `voicebot_gateway::fuzzing::rtp_receiver`, which the test suite also replays on `fuzz/seeds/rtp_receiver/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicebot_gateway::fuzzing::rtp_receiver(data));

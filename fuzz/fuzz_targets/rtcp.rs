//! RTCP compound packets from the caller's RTP port. The body is
//! `voicebot_gateway::fuzzing::rtcp`, which the test suite also replays on `fuzz/seeds/rtcp/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicebot_gateway::fuzzing::rtcp(data));

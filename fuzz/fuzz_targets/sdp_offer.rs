//! SDP offers from the network: parsing and negotiation. The body is
//! `voicebot_gateway::fuzzing::sdp_offer`, which the test suite also replays on `fuzz/seeds/sdp_offer/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicebot_gateway::fuzzing::sdp_offer(data));

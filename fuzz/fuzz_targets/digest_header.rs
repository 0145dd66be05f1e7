//! Authorization headers from the network: parsing and verification. The body is
//! `voicebot_gateway::fuzzing::digest_header`, which the test suite also replays on `fuzz/seeds/digest_header/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicebot_gateway::fuzzing::digest_header(data));

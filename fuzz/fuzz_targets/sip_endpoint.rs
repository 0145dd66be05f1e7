//! The whole user agent server fed arbitrary datagrams. The body is
//! `voicebot_gateway::fuzzing::sip_endpoint`, which the test suite also replays on `fuzz/seeds/sip_endpoint/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicebot_gateway::fuzzing::sip_endpoint(data));

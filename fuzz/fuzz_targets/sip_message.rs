//! SIP message parsing and TCP framing on arbitrary bytes. The body is
//! `voicebot_gateway::fuzzing::sip_message`, which the test suite also replays on `fuzz/seeds/sip_message/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicebot_gateway::fuzzing::sip_message(data));

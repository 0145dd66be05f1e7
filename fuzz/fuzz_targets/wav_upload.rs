//! A tester's WAV upload (POST /api/test/wav, voicebot simulate). The body is
//! `voicebot_gateway::fuzzing::wav_upload`, which the test suite also replays on `fuzz/seeds/wav_upload/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicebot_gateway::fuzzing::wav_upload(data));

//! Authorization headers from the network: parsing and verification never panic.
#![no_main]
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use voicebot_gateway::sip::auth::{DigestAuthenticator, DigestConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let auth = DigestAuthenticator::with_secret(
        DigestConfig {
            realm: "voicebot".into(),
            users: vec![("trunk".into(), "secret".into())],
            nonce_ttl: Duration::from_secs(300),
        },
        [7; 32],
    );
    let _ = auth.verify("INVITE", text, SystemTime::UNIX_EPOCH);
});

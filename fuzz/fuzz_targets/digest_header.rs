//! Authorization headers from the network: parsing and verification never panic.
#![no_main]
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use voicebot_gateway::sip::auth::{DigestAuthenticator, DigestConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut auth = DigestAuthenticator::with_secret(
        DigestConfig {
            realm: "voicebot".into(),
            users: vec![("trunk".into(), "secret".into())],
            nonce_ttl: Duration::from_secs(300),
            max_failures: 10,
            failure_window: Duration::from_secs(60),
        },
        [7; 32],
    );
    let _ = auth.verify("INVITE", text, SystemTime::UNIX_EPOCH);
    let _ = auth.check(
        std::net::Ipv4Addr::LOCALHOST.into(),
        "INVITE",
        "sip:support@127.0.0.1",
        Some(text),
        SystemTime::UNIX_EPOCH,
    );
});

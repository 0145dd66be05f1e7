//! The whole user agent server fed arbitrary datagrams: never panics, whatever the sequence.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use voicebot_gateway::sip::auth::AllowList;
use voicebot_gateway::sip::endpoint::{EndpointConfig, Event, Peer, SipEndpoint, Transport};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut ep = SipEndpoint::new(
        EndpointConfig::default(),
        None,
        AllowList::parse(&[]).expect("empty list"),
        t0,
    );
    let peer = Peer {
        transport: Transport::Udp,
        addr: "127.0.0.1:5061".parse().expect("address"),
    };
    let ip = peer.addr.ip();
    // Datagrams separated by a NUL byte; accept every call so later messages hit dialogs.
    for (i, datagram) in data.split(|&b| b == 0).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 300);
        ep.handle_bytes(peer, ip, datagram, now);
        while let Some(event) = ep.poll_event() {
            if let Event::IncomingCall(call) = event {
                let local = voicebot_gateway::sip::sdp::LocalMedia {
                    address: ip,
                    rtp_port: 20000,
                    session_id: 1,
                    session_version: 1,
                };
                ep.accept(call.handle, local, now);
            }
        }
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {}
    }
});

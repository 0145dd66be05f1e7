//! SDP offers from the network: parsing and negotiation never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voicebot_gateway::media::codec::Codec;
use voicebot_gateway::sip::sdp;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = sdp::parse_offer(data) {
        let _ = sdp::negotiate(&offer, &Codec::ALL);
    }
});

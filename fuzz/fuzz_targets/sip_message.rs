//! SIP message parsing and TCP framing on arbitrary bytes: never panics, and whatever parses
//! prints back to something that parses again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voicebot_gateway::sip::message::{SipMessage, StreamFramer};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = SipMessage::parse(data) {
        let _ = msg.validate_request();
        let _ = (msg.cseq(), msg.via_branch(), msg.from_tag(), msg.to_tag());
        let printed = msg.to_bytes();
        assert!(SipMessage::parse(&printed).is_ok());
    }
    let mut framer = StreamFramer::new();
    for chunk in data.chunks(97) {
        framer.push(chunk);
        while let Ok(Some(_)) = framer.next_message() {}
    }
});

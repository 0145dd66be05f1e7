//! The tokio layer that owns the SIP and RTP sockets and the timers, and drives the sans-IO
//! cores in [`crate::sip`] and [`crate::media`] for `voicebot serve`.

//! SIP signalling, sans-IO: message parsing and printing, SDP offer/answer, server and client
//! transactions with their RFC 3261 timers, and the per-call dialog state machine. Every piece
//! is fed bytes and an `Instant` and returns what to send; the tokio layer in
//! [`crate::server`] owns the sockets and the timers.

pub mod auth;
pub mod digest_client;
pub mod endpoint;
pub mod escape;
pub mod locate;
pub mod message;
pub mod registration;
pub mod sdes;
pub mod sdp;
pub mod transaction;

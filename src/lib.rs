//! voicebot-gateway: an offline voicebot for telephone support lines.
//!
//! A caller's audio goes through [`pipeline`] (resampling, endpointing, speech recognition,
//! the [`dialog`] engine, speech synthesis); the bot answers routine requests itself and decides,
//! with a reason, when a human must take over. [`simulate`] runs recorded or scripted calls
//! through the same pipeline for testers.

pub mod admin;
pub mod asr_eval;
pub mod audio;
pub mod call;
pub mod config;
pub mod config_file;
pub mod dialog;
pub mod engines;
pub mod flow_sync;
pub mod flows;
pub mod fuzzing;
pub mod handover;
pub mod history;
pub mod journal;
pub mod media;
pub mod observe;
pub mod pipeline;
pub mod report;
pub mod serde_util;
pub mod server;
pub mod simulate;
pub mod sip;
pub mod speech;
pub mod storage;
pub mod web;
pub mod webrtc;

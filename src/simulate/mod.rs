//! Tester mode: recorded calls and scripted scenarios through the whole pipeline, no phone.
//!
//! `voicebot simulate` takes WAV files (or directories of them) or scenario files, runs each as a
//! call through [`crate::pipeline`], prints what happened turn by turn, and writes the bot's audio
//! and a JSON report per call. A bad input is reported in one line naming the file and the reason,
//! and the batch goes on with the others. [`chat`] runs typed turns through the dialog alone
//! (the admin API's test chat).

pub mod batch;
pub mod call;
pub mod chat;
pub mod render;
pub mod scenario;

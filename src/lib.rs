//! voicebot-gateway: an offline voicebot for telephone support lines.

pub mod audio;
pub mod config_file;
pub mod speech;
pub mod serde_util;

//! `[recording]`: whether calls are recorded, where, and for how long they are kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[recording]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Record every call (both directions, one stereo WAV per call).
    pub enabled: bool,
    /// Where the WAV files go (created when missing).
    pub dir: PathBuf,
    /// Recordings older than this many days are deleted, at start and then daily (0: kept).
    pub retention_days: u32,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: false,
            dir: PathBuf::from("data/recordings"),
            retention_days: 30,
        }
    }
}

impl RecordingConfig {
    /// What is wrong with the settings, as `(field, reason)`.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.enabled && self.dir.as_os_str().is_empty() {
            return Some(("recording.dir", "must name a directory when enabled"));
        }
        if self.retention_days > 36_500 {
            return Some((
                "recording.retention_days",
                "must be at most 36500 (100 years); 0 keeps every recording",
            ));
        }
        None
    }
}

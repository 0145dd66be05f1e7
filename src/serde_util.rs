//! Serialization helpers shared by the JSON reports.

use std::time::Duration;

use serde::Serializer;

/// Serialises a duration as whole milliseconds.
pub fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

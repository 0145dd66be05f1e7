//! The hibari voice (being written).

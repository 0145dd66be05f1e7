//! The output stage (being written).

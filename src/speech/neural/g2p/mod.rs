//! Grapheme to phoneme (being written).

//! Text normalisation for speech (being written).

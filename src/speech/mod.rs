//! Speech in and out: endpointing, recognition, synthesis and the pool they run on.

pub mod asr;
pub mod neural;
pub mod normalize;
pub mod onnx;
pub mod pool;
pub mod prosody;
pub mod tts;
pub mod tts_cache;
pub mod turn_end;
pub mod vad;
pub mod voice;

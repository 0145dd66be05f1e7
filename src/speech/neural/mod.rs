//! The neural voice (hibari, an Apache-2.0 distillation of Kokoro-82M): text to phonemes
//! ([`g2p`]), phonemes to spectra (an ONNX model through [`crate::speech::onnx`]), spectra to audio
//! ([`dsp`]), behind [`crate::speech::tts::SpeechSynthesizer`] ([`hibari`]).

pub mod dsp;
pub mod g2p;
pub mod hibari;

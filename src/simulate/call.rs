//! Runs one recorded call through the real pipeline: the recording is cut into 20 ms frames
//! (media time from the sample count), fed through a bounded channel exactly as RTP frames
//! would be, and the bot's speech is laid on a timeline next to the caller's audio.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::audio::frames::split_frames;
use crate::audio::wav::MonoAudio;
use crate::audio::{ms_to_samples, FRAME_MS, SPEECH_RATE};
use crate::flows::Flow;
use crate::pipeline::{run_call, CallInput, CallOutput, Engines, PipelineError};
use crate::report::CallReport;

/// A simulated call's results.
#[derive(Debug, Clone)]
pub struct SimulatedCall {
    pub report: CallReport,
    /// The bot's speech at 16 kHz, each utterance placed where it would start on the call.
    pub bot_track: MonoAudio,
}

/// Feeds `audio` through the pipeline as a call and collects what the bot says.
pub async fn simulate_call(
    engines: &Engines,
    flow: Arc<Flow>,
    audio: &MonoAudio,
) -> Result<SimulatedCall, PipelineError> {
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let frames: Vec<_> = split_frames(&audio.samples, audio.rate, FRAME_MS).collect();
    let feeder = tokio::spawn(async move {
        for frame in frames {
            if in_tx.send(CallInput::Audio(frame)).await.is_err() {
                return; // the pipeline stopped listening (bot ended the call)
            }
        }
        let _ = in_tx.send(CallInput::End).await;
    });
    let call = tokio::spawn(run_call(engines.clone(), flow, in_rx, out_tx));
    let mut track = Timeline::default();
    while let Some(out) = out_rx.recv().await {
        match out {
            CallOutput::Speak {
                audio, ready_at, ..
            } => track.place(&audio.samples, ready_at),
            // The caller spoke over the bot: the rest of its speech is not heard.
            CallOutput::SpeechCut { at } => track.cut(at),
            _ => {}
        }
    }
    let report = call
        .await
        .map_err(|e| PipelineError::Stage(format!("call task: {e}")))??;
    let _ = feeder.await;
    let total = ms_to_samples(report.caller_audio.as_millis() as u64, SPEECH_RATE);
    let mut samples = track.samples;
    if samples.len() < total {
        samples.resize(total, 0.0);
    }
    Ok(SimulatedCall {
        report,
        bot_track: MonoAudio {
            samples,
            rate: SPEECH_RATE,
        },
    })
}

/// The bot's output channel: speech never overlaps itself, and starts no earlier than ready.
#[derive(Default)]
struct Timeline {
    samples: Vec<f32>,
}

impl Timeline {
    fn place(&mut self, speech: &[f32], ready_at: Duration) {
        let at = ms_to_samples(ready_at.as_millis() as u64, SPEECH_RATE).max(self.samples.len());
        self.samples.resize(at, 0.0);
        self.samples.extend_from_slice(speech);
    }

    /// Drops the speech placed after `at`.
    fn cut(&mut self, at: Duration) {
        let at = ms_to_samples(at.as_millis() as u64, SPEECH_RATE);
        self.samples.truncate(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_never_overlaps() {
        let mut t = Timeline::default();
        t.place(&[1.0; 16_000], Duration::from_millis(0));
        // Ready at 0.5 s but the first speech lasts until 1.0 s: it waits.
        t.place(&[0.5; 8_000], Duration::from_millis(500));
        assert_eq!(t.samples.len(), 24_000);
        assert_eq!(t.samples[16_000], 0.5);
        // Ready later than the end: silence in between.
        t.place(&[0.25; 10], Duration::from_millis(2_000));
        assert_eq!(t.samples.len(), 32_010);
        assert_eq!(t.samples[30_000], 0.0);
        // A barge-in at 1.2 s: what was placed after it is not heard, the next reply follows.
        t.cut(Duration::from_millis(1_200));
        assert_eq!(t.samples.len(), 19_200);
        t.place(&[0.75; 10], Duration::from_millis(1_000));
        assert_eq!(t.samples.len(), 19_210);
    }
}

//! The voice side of emotion on real speech: the same speaker saying routine sentences calmly,
//! then louder, higher and faster, through an 8 kHz telephone band. The calm turns must read as
//! calm against the caller's baseline and the agitated one as aroused.

use std::process::Command;

use voicebot_gateway::audio::resample::resample_all;
use voicebot_gateway::dialog::emotion::EmotionTracker;
use voicebot_gateway::speech::prosody::{analyze, Prosody};
use voicebot_gateway::speech::tts::decode_streamed_wav;

/// espeak-ng with amplitude (0-200), pitch (0-99) and speed (words per minute).
fn speak(text: &str, amplitude: u32, pitch: u32, wpm: u32) -> Prosody {
    let out = Command::new("espeak-ng")
        .args(["-v", "en-us", "--stdout"])
        .args([
            "-a",
            &amplitude.to_string(),
            "-p",
            &pitch.to_string(),
            "-s",
            &wpm.to_string(),
        ])
        .arg(text)
        .output()
        .expect("espeak-ng runs");
    assert!(out.status.success());
    let audio = decode_streamed_wav(&out.stdout).expect("wav");
    let phone = resample_all(&audio.samples, audio.rate, 8000).expect("8k");
    let wide = resample_all(&phone, 8000, 16000).expect("16k");
    analyze(&wide)
}

#[test]
fn agitated_speech_reads_as_aroused_and_calm_speech_as_calm() {
    let mut tracker = EmotionTracker::default();
    let first = speak("Hello, I have a question about my order.", 60, 40, 150);
    assert!(first.is_usable(), "{first:?}");
    // Text score 0.5 everywhere so the voice shows in the combined score.
    tracker.observe(0.5, Some(&first), 0.4);
    let calm = speak("It was supposed to arrive on Monday.", 60, 42, 150);
    let r = tracker.observe(0.5, Some(&calm), 0.4);
    println!("first {first:?}\ncalm {calm:?}\n{r:?}");
    assert!(
        r.voice.expect("baseline set") < 0.3,
        "calm turn read as aroused: {r:?}"
    );
    let agitated = speak(
        "It still has not arrived and nobody tells me anything!",
        180,
        75,
        185,
    );
    let r = tracker.observe(0.5, Some(&agitated), 0.4);
    println!("agitated {agitated:?}\n{r:?}");
    assert!(
        r.voice.expect("voice") > 0.7,
        "agitated turn read as calm: {r:?}"
    );
    assert!(r.combined >= 0.6, "{r:?}");
}

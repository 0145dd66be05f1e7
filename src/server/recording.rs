//! Call recording: both directions of a call in one stereo WAV file, written by a thread of
//! its own.
//!
//! # Why this shape
//!
//! Admins replay a call to see why the bot did what it did, so the recording is what the
//! caller really exchanged with the gateway: the **left** channel is the caller as the gateway
//! heard them (decoded, after the jitter buffer, silence while nothing arrives), the **right**
//! channel what the caller was sent (the bot, the hold tone, the agent once bridged), taken
//! from the paced sender after barge-in cuts, so an interrupted reply stops where the caller
//! stopped hearing it. Both sides run on the call's 20 ms grid, so they line up without
//! timestamps; the writer pairs them up ([`Interleaver`]) and pads the side that is briefly
//! behind.
//!
//! Disk writes never run on the async runtime: the call task appends to a buffer and hands it
//! over every 200 ms through a bounded channel ([`CallRecorder`]); a `recorder` thread per
//! recording writes it. A stalled disk does not stall the call: the call keeps up to
//! [`MAX_PENDING_MS`] buffered, then drops whole stretches of both sides together (so the
//! channels stay aligned) and counts them. The WAV header is brought up to date every second,
//! so a crash leaves a playable file up to the last second written.
//!
//! Recording is off by default (`[recording] enabled`); files older than `retention_days` are
//! deleted ([`prune`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::audio::resample::StreamResampler;

/// Audio handed to the writer at a time.
const SHIP_MS: u64 = 200;
/// Audio the call keeps while the writer is behind before it drops some.
pub const MAX_PENDING_MS: u64 = 30_000;
/// Chunks in flight to the writer.
const CHANNEL_CHUNKS: usize = 64;
/// The WAV header is rewritten after this much audio.
const FLUSH_EVERY_MS: u64 = 1_000;
/// One side may run this far ahead of the other before the other is padded with silence.
const MAX_SKEW_MS: u64 = 2_000;

pub use crate::config::recording::RecordingConfig;

/// Why a recording could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: hound::Error },
    #[error("cannot start the recorder thread: {0}")]
    Thread(std::io::Error),
    #[error("the recorder thread ended without a result")]
    Lost,
}

pub use crate::call::record::RecordingInfo;

pub use crate::call::record::{
    is_recording_file_name as is_file_name, recording_file_name as file_name,
};

/// Audio of both sides for the writer, at one rate.
#[derive(Debug, Default)]
struct Chunk {
    rate: u32,
    caller: Vec<f32>,
    heard: Vec<f32>,
}

impl Chunk {
    fn ms(&self) -> u64 {
        let longest = self.caller.len().max(self.heard.len()) as u64;
        longest * 1000 / u64::from(self.rate.max(1))
    }

    fn is_empty(&self) -> bool {
        self.caller.is_empty() && self.heard.is_empty()
    }
}

/// The call task's side of a recording: cheap appends, handed to the writer thread.
pub struct CallRecorder {
    tx: SyncSender<Chunk>,
    done: oneshot::Receiver<Result<RecordingInfo, RecordingError>>,
    pending: Chunk,
    dropped_ms: u64,
    file: String,
}

impl CallRecorder {
    /// Starts recording call `call_id` into `dir` at `rate` samples per second. The file is
    /// created by the writer thread; a failure to create it comes back from [`finish`].
    ///
    /// [`finish`]: CallRecorder::finish
    pub fn start(dir: &Path, call_id: &str, rate: u32) -> Result<Self, RecordingError> {
        let file = file_name(call_id);
        let path = dir.join(&file);
        let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
        let (done_tx, done) = oneshot::channel();
        let dir = dir.to_path_buf();
        let name = file.clone();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                let result = write_recording(&dir, &path, rate, rx).map(|seconds| RecordingInfo {
                    file: name,
                    rate,
                    channels: "left: caller, right: sent to the caller".into(),
                    seconds,
                    dropped_ms: 0,
                });
                let _ = done_tx.send(result);
            })
            .map_err(RecordingError::Thread)?;
        Ok(CallRecorder {
            tx,
            done,
            pending: Chunk {
                rate,
                ..Chunk::default()
            },
            dropped_ms: 0,
            file,
        })
    }

    /// The file name the recording gets.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The caller's audio (one 20 ms frame per call tick) at `rate`.
    pub fn caller(&mut self, samples: &[f32], rate: u32) {
        self.switch_rate(rate);
        self.pending.caller.extend_from_slice(samples);
        self.ship();
    }

    /// A frame of silence from the caller (nothing received yet), `samples` long.
    pub fn caller_silence(&mut self, samples: usize, rate: u32) {
        self.switch_rate(rate);
        let len = self.pending.caller.len();
        self.pending.caller.resize(len + samples, 0.0);
        self.ship();
    }

    /// What was sent to the caller since the last call, at `rate`.
    pub fn heard(&mut self, samples: &[f32], rate: u32) {
        self.switch_rate(rate);
        self.pending.heard.extend_from_slice(samples);
        self.ship();
    }

    /// A codec change: what is buffered goes at the old rate first.
    fn switch_rate(&mut self, rate: u32) {
        if rate == self.pending.rate {
            return;
        }
        if !self.pending.is_empty() {
            let chunk = std::mem::take(&mut self.pending);
            if let Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) =
                self.tx.try_send(chunk)
            {
                self.dropped_ms += c.ms();
            }
        }
        self.pending.rate = rate;
    }

    fn ship(&mut self) {
        let ms = self.pending.ms();
        if ms < SHIP_MS {
            return;
        }
        let rate = self.pending.rate;
        let chunk = std::mem::replace(
            &mut self.pending,
            Chunk {
                rate,
                ..Chunk::default()
            },
        );
        match self.tx.try_send(chunk) {
            Ok(()) => {}
            Err(TrySendError::Full(back)) => {
                if ms >= MAX_PENDING_MS {
                    if self.dropped_ms == 0 {
                        tracing::warn!(
                            file = %self.file,
                            "the recording's disk is too slow; dropping audio (both sides)"
                        );
                    }
                    // Both sides lose the same stretch, so they stay aligned.
                    self.dropped_ms += ms;
                } else {
                    self.pending = back;
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                // The writer failed (its error comes back from `finish`).
                self.dropped_ms += ms;
            }
        }
    }

    /// Ends the recording: the rest is written and the file closed (off the runtime).
    pub async fn finish(self) -> Result<RecordingInfo, RecordingError> {
        let CallRecorder {
            tx,
            done,
            pending,
            dropped_ms,
            ..
        } = self;
        // A blocking send may wait for the writer: not on the runtime.
        let _ = tokio::task::spawn_blocking(move || {
            if !pending.is_empty() {
                let _ = tx.send(pending);
            }
            drop(tx);
        })
        .await;
        let mut info = done.await.map_err(|_| RecordingError::Lost)??;
        info.dropped_ms += dropped_ms;
        Ok(info)
    }
}

/// Pairs the two sides sample by sample; the side ahead waits for the other, unless it is
/// more than `max_skew` samples ahead (the other side stopped), then the other is padded.
#[derive(Debug, Default)]
pub struct Interleaver {
    caller: VecDeque<i16>,
    heard: VecDeque<i16>,
    max_skew: usize,
}

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16
}

impl Interleaver {
    pub fn new(max_skew: usize) -> Self {
        Interleaver {
            max_skew,
            ..Interleaver::default()
        }
    }

    pub fn push_caller(&mut self, samples: &[f32]) {
        self.caller.extend(samples.iter().map(|&s| to_i16(s)));
    }

    pub fn push_heard(&mut self, samples: &[f32]) {
        self.heard.extend(samples.iter().map(|&s| to_i16(s)));
    }

    /// The stereo frames ready to write (left caller, right heard), appended to `out`.
    pub fn drain_ready(&mut self, out: &mut Vec<i16>) {
        let (a, b) = (self.caller.len(), self.heard.len());
        if a.abs_diff(b) > self.max_skew {
            let short = if a < b {
                &mut self.caller
            } else {
                &mut self.heard
            };
            let missing = a.abs_diff(b) - self.max_skew;
            short.extend(std::iter::repeat_n(0, missing));
        }
        let n = self.caller.len().min(self.heard.len());
        out.reserve(n * 2);
        for (l, r) in self.caller.drain(..n).zip(self.heard.drain(..n)) {
            out.push(l);
            out.push(r);
        }
    }

    /// Everything left, the shorter side padded with silence.
    pub fn drain_all(&mut self, out: &mut Vec<i16>) {
        let n = self.caller.len().max(self.heard.len());
        self.caller.resize(n, 0);
        self.heard.resize(n, 0);
        self.drain_ready(out);
    }
}

/// Converts one side's chunks to the recording's rate (a resampler per input rate, kept
/// across chunks so the joins are seamless).
struct RateMatch {
    rate: u32,
    resampler: Option<(u32, StreamResampler)>,
}

impl RateMatch {
    fn convert(&mut self, samples: Vec<f32>, rate: u32) -> Vec<f32> {
        if rate == self.rate || samples.is_empty() {
            return samples;
        }
        if self.resampler.as_ref().is_none_or(|(r, _)| *r != rate) {
            match StreamResampler::new(rate, self.rate) {
                Ok(r) => self.resampler = Some((rate, r)),
                Err(e) => {
                    tracing::warn!(error = %e, from = rate, to = self.rate, "recording: cannot resample; writing silence");
                    let n = samples.len() * self.rate as usize / rate.max(1) as usize;
                    return vec![0.0; n];
                }
            }
        }
        let mut out = Vec::with_capacity(samples.len() * self.rate as usize / rate as usize + 64);
        if let Some((_, r)) = self.resampler.as_mut() {
            if let Err(e) = r.push(&samples, &mut out) {
                tracing::warn!(error = %e, "recording: resampling failed; a chunk is silent");
                out = vec![0.0; samples.len() * self.rate as usize / rate as usize];
            }
        }
        out
    }
}

/// The writer thread's work: chunks in, a stereo 16-bit WAV out. Returns the seconds written
/// (the call side counts drops).
fn write_recording(
    dir: &Path,
    path: &Path,
    rate: u32,
    chunks: Receiver<Chunk>,
) -> Result<f64, RecordingError> {
    std::fs::create_dir_all(dir).map_err(|source| RecordingError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let write_err = |source| RecordingError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(|e| match e {
        hound::Error::IoError(source) => RecordingError::Create {
            path: path.to_path_buf(),
            source,
        },
        other => write_err(other),
    })?;
    let mut mix = Interleaver::new(crate::audio::ms_to_samples(MAX_SKEW_MS, rate));
    let (mut caller_rate, mut heard_rate) = (
        RateMatch {
            rate,
            resampler: None,
        },
        RateMatch {
            rate,
            resampler: None,
        },
    );
    let flush_every = u64::from(rate) * FLUSH_EVERY_MS / 1000;
    let (mut written, mut since_flush) = (0u64, 0u64);
    let mut frames = Vec::new();
    let mut write = |frames: &mut Vec<i16>,
                     writer: &mut hound::WavWriter<std::io::BufWriter<std::fs::File>>|
     -> Result<(), RecordingError> {
        for &s in frames.iter() {
            writer.write_sample(s).map_err(write_err)?;
        }
        let n = frames.len() as u64 / 2;
        written += n;
        since_flush += n;
        frames.clear();
        if since_flush >= flush_every {
            since_flush = 0;
            writer.flush().map_err(write_err)?;
        }
        Ok(())
    };
    for chunk in chunks {
        mix.push_caller(&caller_rate.convert(chunk.caller, chunk.rate));
        mix.push_heard(&heard_rate.convert(chunk.heard, chunk.rate));
        mix.drain_ready(&mut frames);
        write(&mut frames, &mut writer)?;
    }
    mix.drain_all(&mut frames);
    write(&mut frames, &mut writer)?;
    writer.finalize().map_err(write_err)?;
    Ok(written as f64 / f64::from(rate))
}

/// Deletes the recordings in `dir` last written before `now - retention_days`; returns how
/// many went. A missing directory has nothing to delete.
pub fn prune(dir: &Path, retention_days: u32, now: SystemTime) -> std::io::Result<usize> {
    if retention_days == 0 {
        return Ok(0);
    }
    let cutoff = now
        .checked_sub(Duration::from_secs(u64::from(retention_days) * 86_400))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut deleted = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_file_name) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() && meta.modified()? < cutoff {
            std::fs::remove_file(entry.path())?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Prunes `config.dir` at start and then daily (on a blocking thread), until the task is
/// aborted; no task when recording is off or keeps everything.
pub fn spawn_retention(config: &RecordingConfig) -> Option<tokio::task::JoinHandle<()>> {
    if !config.enabled || config.retention_days == 0 {
        return None;
    }
    let (dir, days) = (config.dir.clone(), config.retention_days);
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(86_400));
        loop {
            every.tick().await;
            let dir = dir.clone();
            match tokio::task::spawn_blocking(move || prune(&dir, days, SystemTime::now())).await {
                Ok(Ok(n)) => tracing::info!(deleted = n, days, "call recording retention applied"),
                Ok(Err(e)) => tracing::warn!(error = %e, "call recording retention failed"),
                Err(e) => tracing::warn!(error = %e, "call recording retention task failed"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_recognised() {
        assert_eq!(file_name("abc-1.x"), "abc-1.x.wav");
        assert_eq!(file_name("../../etc/passwd"), "_.._etc_passwd.wav");
        assert_eq!(file_name("a@b c"), "a_b_c.wav");
        assert!(is_file_name(&file_name("../../etc/passwd")));
        assert!(is_file_name("x.wav"));
        assert!(!is_file_name("../x.wav"));
        assert!(!is_file_name("a/x.wav"));
        assert!(!is_file_name(".x.wav"));
        assert!(!is_file_name("x.json"));
    }

    #[test]
    fn interleaves_and_waits_for_the_side_behind() {
        let mut mix = Interleaver::new(1000);
        let mut out = Vec::new();
        mix.push_caller(&[0.5; 4]);
        mix.push_heard(&[-0.5; 2]);
        mix.drain_ready(&mut out);
        assert_eq!(out, vec![16384, -16384, 16384, -16384]);
        out.clear();
        mix.drain_ready(&mut out);
        assert!(out.is_empty(), "two caller samples wait for the other side");
        mix.push_heard(&[1.0]);
        mix.drain_ready(&mut out);
        assert_eq!(out, vec![16384, 32767]);
        out.clear();
        mix.drain_all(&mut out);
        assert_eq!(out, vec![16384, 0], "the end is padded");
    }

    #[test]
    fn a_side_that_stops_is_padded_beyond_the_skew() {
        let mut mix = Interleaver::new(3);
        let mut out = Vec::new();
        mix.push_caller(&[0.1; 10]);
        mix.drain_ready(&mut out);
        // 7 of 10 written against silence; 3 wait for the other side.
        assert_eq!(out.len(), 14);
        assert!(out.chunks(2).all(|p| p[1] == 0));
    }

    #[tokio::test]
    async fn records_both_sides_in_step_to_a_stereo_wav() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = CallRecorder::start(dir.path(), "call/1@host", 8000).unwrap();
        assert_eq!(rec.file(), "call_1_host.wav");
        // 3 s: the caller speaks a tone at 0.25 in the first second, the bot answers at -0.5
        // in the second; the sender's frames come in uneven batches, as the pacer sends them.
        for tick in 0..150 {
            let caller = if tick < 50 { 0.25 } else { 0.0 };
            rec.caller(&[caller; 160], 8000);
            let heard: Vec<f32> = if (50..100).contains(&tick) {
                vec![-0.5; 160]
            } else {
                vec![0.0; 160]
            };
            // Two frames every other tick.
            if tick % 2 == 1 {
                rec.heard(&[heard.clone(), heard].concat(), 8000);
            }
        }
        let info = rec.finish().await.unwrap();
        assert_eq!(info.rate, 8000);
        assert_eq!(info.dropped_ms, 0);
        assert!((info.seconds - 3.0).abs() < 0.001, "{info:?}");
        let mut wav = hound::WavReader::open(dir.path().join(&info.file)).unwrap();
        assert_eq!(wav.spec().channels, 2);
        let samples: Vec<i16> = wav.samples::<i16>().map(Result::unwrap).collect();
        let at = |s: f64| &samples[(s * 8000.0) as usize * 2..][..2];
        assert_eq!(at(0.5), &[8192, 0]);
        // The heard side lags by at most one pacer batch (one frame, 20 ms).
        assert_eq!(at(1.5), &[0, -16384]);
        assert_eq!(at(2.5), &[0, 0]);
    }

    #[tokio::test]
    async fn a_codec_change_is_resampled_to_the_recordings_rate() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = CallRecorder::start(dir.path(), "c2", 8000).unwrap();
        for _ in 0..50 {
            rec.caller(&[0.0; 160], 8000);
            rec.heard(&[0.0; 160], 8000);
        }
        for _ in 0..50 {
            rec.caller(&[0.0; 320], 16000);
            rec.heard(&[0.0; 320], 16000);
        }
        let info = rec.finish().await.unwrap();
        // 1 s at 8 kHz, then 1 s at 16 kHz written at 8 kHz (the resampler keeps a short tail).
        assert!((info.seconds - 2.0).abs() < 0.05, "{info:?}");
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_made_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let mut rec = CallRecorder::start(&blocker.join("sub"), "c3", 8000).unwrap();
        for _ in 0..20 {
            rec.caller(&[0.0; 160], 8000);
            rec.heard(&[0.0; 160], 8000);
        }
        let e = rec.finish().await.unwrap_err();
        assert!(matches!(e, RecordingError::Create { .. }), "{e}");
    }

    #[test]
    fn prune_deletes_only_old_recordings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.wav"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let later = SystemTime::now() + Duration::from_secs(3 * 86_400);
        assert_eq!(prune(dir.path(), 30, later).unwrap(), 0);
        assert_eq!(prune(dir.path(), 2, later).unwrap(), 1);
        assert!(!dir.path().join("old.wav").exists());
        assert!(dir.path().join("notes.txt").exists(), "not a recording");
        assert_eq!(prune(&dir.path().join("missing"), 2, later).unwrap(), 0);
        assert_eq!(prune(dir.path(), 0, later).unwrap(), 0, "0 keeps all");
    }
}

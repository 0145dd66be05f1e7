//! WAV input and output.
//!
//! Input accepts any PCM or float WAV (any rate, any channel count) and mixes it down to mono
//! `f32`; everything a tester can get wrong (missing file, not a WAV, a compressed format, an empty
//! or truncated file) becomes a distinct [`WavError`] whose message names the file.

use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use hound::{SampleFormat, WavReader, WavSpec, WavWriter};

/// Mono audio with its sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct MonoAudio {
    /// Samples in [-1, 1].
    pub samples: Vec<f32>,
    /// Samples per second.
    pub rate: u32,
}

impl MonoAudio {
    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        super::samples_to_ms(self.samples.len(), self.rate)
    }
}

/// What was read from a WAV file, with the format it had.
#[derive(Debug, Clone, PartialEq)]
pub struct WavInput {
    /// The audio, mixed down to mono.
    pub audio: MonoAudio,
    /// Channels in the file.
    pub channels: u16,
    /// Bits per sample in the file.
    pub bits: u16,
}

/// Why a WAV file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{path}: file not found")]
    Missing { path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a WAV file ({reason})")]
    NotWav { path: PathBuf, reason: String },
    #[error("{path}: unsupported WAV format: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: WAV file has no audio samples")]
    Empty { path: PathBuf },
    #[error("{path}: WAV file is truncated: header promises {expected} samples, {found} present")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: cannot write WAV: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Reads a WAV file and mixes it down to mono.
pub fn read_wav(path: &Path) -> Result<WavInput, WavError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => WavError::Missing {
            path: path.to_path_buf(),
        },
        _ => WavError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(WavError::NotWav {
            path: path.to_path_buf(),
            reason: "it is a directory".into(),
        });
    }
    decode_wav(path, BufReader::new(file))
}

/// Decodes WAV bytes from any reader; `path` only labels errors.
pub fn decode_wav<R: Read + Seek>(path: &Path, reader: R) -> Result<WavInput, WavError> {
    let reader = WavReader::new(reader).map_err(|e| classify_open_error(path, e))?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(WavError::Unsupported {
            path: path.to_path_buf(),
            reason: "zero channels".into(),
        });
    }
    if spec.sample_rate < 4_000 || spec.sample_rate > 192_000 {
        return Err(WavError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "sample rate {} Hz is outside 4000..=192000",
                spec.sample_rate
            ),
        });
    }
    let expected = u64::from(reader.len());
    let interleaved = read_samples(path, reader, spec, expected)?;
    let channels = usize::from(spec.channels);
    if interleaved.len() < channels {
        return Err(WavError::Empty {
            path: path.to_path_buf(),
        });
    }
    let samples = mix_to_mono(&interleaved, channels);
    Ok(WavInput {
        audio: MonoAudio {
            samples,
            rate: spec.sample_rate,
        },
        channels: spec.channels,
        bits: spec.bits_per_sample,
    })
}

fn read_samples<R: Read>(
    path: &Path,
    mut reader: WavReader<R>,
    spec: WavSpec,
    expected: u64,
) -> Result<Vec<f32>, WavError> {
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).min(1 << 26));
    let truncated = |found: usize| WavError::Truncated {
        path: path.to_path_buf(),
        expected,
        found: found as u64,
    };
    match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Float, 32) => {
            for s in reader.samples::<f32>() {
                out.push(s.map_err(|_| truncated(out.len()))?);
            }
        }
        (SampleFormat::Int, bits @ 8..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            for s in reader.samples::<i32>() {
                out.push(s.map_err(|_| truncated(out.len()))? as f32 * scale);
            }
        }
        (format, bits) => {
            return Err(WavError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("{bits}-bit {format:?} samples"),
            })
        }
    }
    if (out.len() as u64) < expected {
        return Err(truncated(out.len()));
    }
    Ok(out)
}

fn classify_open_error(path: &Path, err: hound::Error) -> WavError {
    let path = path.to_path_buf();
    match err {
        // hound reports a short header as `Other("Failed to read enough bytes.")`.
        hound::Error::IoError(e)
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.to_string().contains("enough bytes") =>
        {
            WavError::NotWav {
                path,
                reason: "file ends before the WAV header is complete".into(),
            }
        }
        hound::Error::IoError(source) => WavError::Io { path, source },
        hound::Error::FormatError(reason) => WavError::NotWav {
            path,
            reason: reason.to_string(),
        },
        hound::Error::Unsupported => WavError::Unsupported {
            path,
            reason: "compressed or extensible encoding (only PCM and IEEE float are read)".into(),
        },
        other => WavError::Unsupported {
            path,
            reason: other.to_string(),
        },
    }
}

/// Averages interleaved channels into one.
pub fn mix_to_mono(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    let inv = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() * inv)
        .collect()
}

/// Writes mono audio as 16-bit PCM, through a temporary file renamed into place so a reader never
/// sees half a file.
pub fn write_wav(path: &Path, audio: &MonoAudio) -> Result<(), WavError> {
    let werr = |reason: String| WavError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let tmp = path.with_extension("wav.partial");
    let spec = WavSpec {
        channels: 1,
        sample_rate: audio.rate,
        bits_per_sample: 16,
        sample_format: SampleFormat::Int,
    };
    let mut writer = WavWriter::create(&tmp, spec).map_err(|e| werr(e.to_string()))?;
    for &s in &audio.samples {
        writer
            .write_sample(to_i16(s))
            .map_err(|e| werr(e.to_string()))?;
    }
    writer.finalize().map_err(|e| werr(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| werr(e.to_string()))
}

/// Mono audio as the bytes of a 16-bit PCM WAV file (an HTTP response, a test's upload).
pub fn encode_wav(audio: &MonoAudio) -> Result<Vec<u8>, WavError> {
    let werr = |e: hound::Error| WavError::Write {
        path: PathBuf::from("<memory>"),
        reason: e.to_string(),
    };
    let spec = WavSpec {
        channels: 1,
        sample_rate: audio.rate,
        bits_per_sample: 16,
        sample_format: SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + 2 * audio.samples.len()));
    let mut writer = WavWriter::new(&mut out, spec).map_err(werr)?;
    for &s in &audio.samples {
        writer.write_sample(to_i16(s)).map_err(werr)?;
    }
    writer.finalize().map_err(werr)?;
    Ok(out.into_inner())
}

/// Converts a float sample to 16-bit PCM with clipping.
pub fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn wav_bytes(spec: WavSpec, samples: &[i16]) -> Vec<u8> {
        let mut cur = Cursor::new(Vec::new());
        let mut w = WavWriter::new(&mut cur, spec).expect("writer");
        for &s in samples {
            w.write_sample(s).expect("sample");
        }
        w.finalize().expect("finalize");
        cur.into_inner()
    }

    fn spec(channels: u16, rate: u32) -> WavSpec {
        WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: SampleFormat::Int,
        }
    }

    #[test]
    fn reads_stereo_8k_and_mixes_down() {
        let bytes = wav_bytes(spec(2, 8000), &[16384, 0, -16384, -16384, 32767, 32767]);
        let input = decode_wav(Path::new("a.wav"), Cursor::new(bytes)).expect("valid");
        assert_eq!(input.channels, 2);
        assert_eq!(input.audio.rate, 8000);
        assert_eq!(input.audio.samples.len(), 3);
        assert!((input.audio.samples[0] - 0.25).abs() < 1e-4);
        assert!((input.audio.samples[1] + 0.5).abs() < 1e-4);
    }

    #[test]
    fn not_a_wav_is_named() {
        let err = decode_wav(
            Path::new("notes.txt"),
            Cursor::new(b"hello world, not audio at all".to_vec()),
        )
        .unwrap_err();
        assert!(matches!(err, WavError::NotWav { .. }), "{err}");
        assert!(
            err.to_string().starts_with("notes.txt: not a WAV file"),
            "{err}"
        );
    }

    #[test]
    fn empty_wav_is_reported() {
        let bytes = wav_bytes(spec(1, 16000), &[]);
        let err = decode_wav(Path::new("e.wav"), Cursor::new(bytes)).unwrap_err();
        assert!(matches!(err, WavError::Empty { .. }), "{err}");
    }

    #[test]
    fn truncated_wav_is_reported() {
        let mut bytes = wav_bytes(spec(1, 16000), &[1000; 1000]);
        bytes.truncate(bytes.len() - 501);
        let err = decode_wav(Path::new("t.wav"), Cursor::new(bytes)).unwrap_err();
        match err {
            WavError::Truncated {
                expected, found, ..
            } => {
                assert_eq!(expected, 1000);
                assert!(found < 1000);
            }
            other => panic!("expected Truncated, got {other}"),
        }
    }

    #[test]
    fn header_only_fragment_is_not_wav() {
        let bytes = wav_bytes(spec(1, 16000), &[1; 10]);
        let err = decode_wav(Path::new("h.wav"), Cursor::new(bytes[..20].to_vec())).unwrap_err();
        assert!(matches!(err, WavError::NotWav { .. }), "{err}");
    }

    #[test]
    fn missing_file_is_reported() {
        let err = read_wav(Path::new("/nonexistent/dir/call.wav")).unwrap_err();
        assert!(matches!(err, WavError::Missing { .. }), "{err}");
        assert_eq!(err.to_string(), "/nonexistent/dir/call.wav: file not found");
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.wav");
        let audio = MonoAudio {
            samples: vec![0.0, 0.5, -0.5, 0.25],
            rate: 16000,
        };
        write_wav(&path, &audio).expect("write");
        let back = read_wav(&path).expect("read");
        assert_eq!(back.audio.samples.len(), 4);
        for (a, b) in audio.samples.iter().zip(&back.audio.samples) {
            assert!((a - b).abs() < 1e-3);
        }
        assert!(!dir.path().join("out.wav.partial").exists());
    }
}

//! A batch of recorded calls: input discovery, per-file outputs, the summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audio::wav::{read_wav, write_wav};
use crate::flows::Flow;
use crate::pipeline::Engines;
use crate::report::CallReport;

use super::call::simulate_call;

/// One input's result.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub file: PathBuf,
    /// Input format, when the file could be read.
    pub sample_rate: Option<u32>,
    pub channels: Option<u16>,
    /// The call, when it ran.
    pub report: Option<CallReport>,
    /// Where the bot's audio and the JSON report were written.
    pub bot_audio: Option<PathBuf>,
    pub json_report: Option<PathBuf>,
    /// One-line reason when the file failed.
    pub error: Option<String>,
    #[serde(serialize_with = "crate::report::ser_ms", rename = "wall_ms")]
    pub wall: Duration,
}

impl FileResult {
    fn failed(file: &Path, error: String, wall: Duration) -> Self {
        FileResult {
            file: file.to_path_buf(),
            sample_rate: None,
            channels: None,
            report: None,
            bot_audio: None,
            json_report: None,
            error: Some(error),
            wall,
        }
    }
}

/// Expands the command line's paths: files are taken as given (even with another extension, so
/// a wrong file is reported rather than skipped), directories contribute their files ending in
/// `.{extension}` (any case), sorted. A path that does not exist is kept so it is reported as
/// missing.
pub fn expand_inputs(paths: &[PathBuf], extension: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.is_file()
                                && p.extension()
                                    .is_some_and(|x| x.eq_ignore_ascii_case(extension))
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    out
}

/// Output file stem for `input`: its file name without extension, made unique in the batch by
/// a numeric suffix.
pub fn output_stem(input: &Path, taken: &mut std::collections::HashSet<String>) -> String {
    let base = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "call".into());
    let mut stem = base.clone();
    let mut n = 2;
    while !taken.insert(stem.clone()) {
        stem = format!("{base}-{n}");
        n += 1;
    }
    stem
}

/// Runs one file; never fails as a whole: problems end up in [`FileResult::error`].
pub async fn run_file(
    engines: &Engines,
    flow: Arc<Flow>,
    input: &Path,
    out_dir: &Path,
    stem: &str,
) -> FileResult {
    let started = Instant::now();
    let wav = match read_wav(input) {
        Ok(wav) => wav,
        Err(e) => return FileResult::failed(input, e.to_string(), started.elapsed()),
    };
    let call = match simulate_call(engines, flow, &wav.audio).await {
        Ok(call) => call,
        Err(e) => {
            return FileResult::failed(
                input,
                format!("{}: {e}", input.display()),
                started.elapsed(),
            )
        }
    };
    let bot_path = out_dir.join(format!("{stem}.bot.wav"));
    let json_path = out_dir.join(format!("{stem}.json"));
    let mut result = FileResult {
        file: input.to_path_buf(),
        sample_rate: Some(wav.audio.rate),
        channels: Some(wav.channels),
        report: Some(call.report),
        bot_audio: None,
        json_report: None,
        error: None,
        wall: started.elapsed(),
    };
    if let Err(e) = write_wav(&bot_path, &call.bot_track) {
        result.error = Some(e.to_string());
        return result;
    }
    result.bot_audio = Some(bot_path);
    result.json_report = Some(json_path.clone());
    if let Err(e) = write_json(&json_path, &result) {
        result.error = Some(e);
        result.json_report = None;
    }
    result
}

/// Writes `value` as pretty JSON through a temporary file renamed into place.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| format!("{}: cannot encode report: {e}", path.display()))?;
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, text + "\n")
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: cannot write report: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn directories_expand_to_sorted_wavs_and_files_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.wav", "a.WAV", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let explicit = dir.path().join("notes.txt");
        let missing = PathBuf::from("/nonexistent/x.wav");
        let got = expand_inputs(
            &[dir.path().to_path_buf(), explicit.clone(), missing.clone()],
            "wav",
        );
        assert_eq!(
            got,
            vec![
                dir.path().join("a.WAV"),
                dir.path().join("b.wav"),
                explicit,
                missing
            ]
        );
    }

    #[test]
    fn stems_are_unique() {
        let mut taken = HashSet::new();
        assert_eq!(output_stem(Path::new("a/call.wav"), &mut taken), "call");
        assert_eq!(output_stem(Path::new("b/call.wav"), &mut taken), "call-2");
        assert_eq!(output_stem(Path::new("c/call.wav"), &mut taken), "call-3");
    }
}

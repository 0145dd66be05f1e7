//! ONNX Runtime for the neural models (the voice and the Moonshine recogniser): one process-wide environment, loaded at run time.
//!
//! # Why this shape
//!
//! The gateway never links ONNX Runtime: `ort` is built with `load-dynamic`, so nothing native
//! is downloaded or linked at build time and the CI build stays a plain `cargo build`. The
//! library (`libonnxruntime.so`, MIT) is taken from the PyPI `onnxruntime` wheel by
//! `models/provision.py`, like the model weights, and loaded here on first use: from
//! `$ORT_DYLIB_PATH` when set, else from the configured path. ONNX Runtime allows one
//! environment per process, so the first successful load is kept for every later session; a
//! failed load is remembered too (the voice falls back to espeak-ng, and asking again cannot
//! succeed without a restart).
//!
//! Sessions are built for one intra-op thread by default: the gateway runs inference on its
//! own pool (one session per pool worker, as `Session::run` needs `&mut`), and a call's
//! synthesis must not take every core from the speech recogniser.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// Why ONNX Runtime or a model could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot load ONNX Runtime from {path}: {reason} (run `python3 models/provision.py`)")]
    Runtime { path: PathBuf, reason: String },
    #[error("cannot load the model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
}

static ENVIRONMENT: OnceLock<Result<Environment, OnnxError>> = OnceLock::new();

/// The library to load: `$ORT_DYLIB_PATH` when set, else `configured`.
pub fn runtime_path(configured: &Path) -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| configured.to_path_buf())
}

/// The process's ONNX Runtime environment, loading the library at `library` on first use
/// (later calls get the first result, whatever path they name).
pub fn environment(library: &Path) -> Result<&'static Environment, OnnxError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = runtime_path(library);
            if !path.is_file() {
                return Err(OnnxError::Runtime {
                    reason: "no such file".into(),
                    path,
                });
            }
            let fail = |reason: String| OnnxError::Runtime {
                path: path.clone(),
                reason,
            };
            let builder = ort::init_from(&path).map_err(|e| fail(e.to_string()))?;
            let env = builder
                .with_name("voicebot")
                .build()
                .map_err(|e| fail(e.to_string()))?;
            tracing::info!(library = %path.display(), "ONNX Runtime loaded");
            Ok(env)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A session for the model at `model`, running on `threads` intra-op threads (at least 1).
pub fn session(library: &Path, model: &Path, threads: usize) -> Result<Session, OnnxError> {
    let env = environment(library)?;
    let fail = |reason: String| OnnxError::Model {
        path: model.to_path_buf(),
        reason,
    };
    if !model.is_file() {
        return Err(fail(
            "no such file (run `python3 models/provision.py`)".into(),
        ));
    }
    Session::builder(env)
        .map_err(|e| fail(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| fail(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| fail(e.to_string()))?
        .commit_from_file(model)
        .map_err(|e| fail(e.to_string()))
}

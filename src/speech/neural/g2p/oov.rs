//! Out-of-vocabulary words through hibari's character transformer (`oov.onnx`,
//! hibari's `g2p/oov.py`).
//!
//! Names and brands that are in neither dictionary ("Nguyen", "Zorblax") still have to be read,
//! and the voice was trained on espeak-ng's readings of such words; the net (0.7M parameters,
//! about a millisecond a word on one thread) reproduces those readings without shipping a GPL
//! program. Input: one id per known character (unknown ones dropped, at most `maxlen`); output:
//! `slots` ids per input character with the argmax already taken, decoded CTC-style (drop
//! blanks, collapse repeats).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use super::G2pError;
use crate::speech::onnx;

#[derive(Deserialize)]
struct OovMeta {
    #[serde(rename = "in")]
    chars_in: Vec<String>,
    #[serde(rename = "out")]
    chars_out: Vec<String>,
    maxlen: usize,
}

/// The OOV net and its character tables.
pub struct Oov {
    cin: HashMap<char, i64>,
    cout: Vec<String>,
    maxlen: usize,
    /// `Session::run` needs `&mut`; words are short, so one session behind a lock is enough.
    session: Mutex<Session>,
}

impl Oov {
    /// Loads `oov.onnx` and `oov.json` from `dir`.
    pub fn load(dir: &Path, onnx_library: &Path) -> Result<Oov, G2pError> {
        let meta_path = dir.join("oov.json");
        let meta: OovMeta = super::read_json(&meta_path)?;
        let mut cin = HashMap::new();
        for (i, s) in meta.chars_in.iter().enumerate() {
            let mut chars = s.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                cin.insert(c, i as i64 + 1);
            }
        }
        let session = onnx::session(onnx_library, &dir.join("oov.onnx"), 1)?;
        let oov = Oov {
            cin,
            cout: meta.chars_out,
            maxlen: meta.maxlen,
            session: Mutex::new(session),
        };
        // ONNX Runtime's first run is ~20 ms slower than later ones; pay it here, not in a call.
        oov.read("hibari")?;
        Ok(oov)
    }

    /// Phonemes for one word, `None` when it has no known character.
    pub fn read(&self, word: &str) -> Result<Option<String>, G2pError> {
        let ids: Vec<i64> = word
            .chars()
            .filter_map(|c| self.cin.get(&c).copied())
            .take(self.maxlen)
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let n = ids.len();
        let input = Tensor::from_array(([1usize, n], ids)).map_err(run_error)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| G2pError::Inference("the OOV session lock is poisoned".into()))?;
        let outputs = session
            .run(ort::inputs!["chars" => input])
            .map_err(run_error)?;
        let (_, out) = outputs["ids"]
            .try_extract_tensor::<i64>()
            .map_err(run_error)?;
        Ok(Some(self.decode(out)))
    }

    /// CTC decoding: emit a symbol when it differs from the previous id and is not blank (0).
    fn decode(&self, out: &[i64]) -> String {
        let mut ps = String::new();
        let mut prev = 0;
        for &i in out {
            if i != prev && i != 0 {
                if let Some(s) = usize::try_from(i - 1).ok().and_then(|k| self.cout.get(k)) {
                    ps.push_str(s);
                }
            }
            prev = i;
        }
        ps
    }
}

fn run_error(e: ort::Error) -> G2pError {
    G2pError::Inference(e.to_string())
}

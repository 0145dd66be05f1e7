//! Reading TOML configuration files with errors a person can act on.
//!
//! Every configuration file of the gateway (gateway settings, intents, prompts, scenarios) goes
//! through [`parse`], so a syntax error, an unknown key or a wrong type is reported the same way:
//! the file, the line, the field and the reason. Semantic checks that run after deserialising
//! (a threshold out of range, a reply that names an unknown intent) use [`ConfigError::invalid`]
//! with the field's dotted path; the line is looked up in the original text so the admin is sent
//! to the exact spot.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A configuration file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or embedded default) the text came from.
    pub file: PathBuf,
    /// 1-based line of the offending item, when it could be located.
    pub line: Option<usize>,
    /// Dotted path of the offending field (`vad.min_speech_ms`, `intent.2.examples`), if known.
    pub field: Option<String>,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl ConfigError {
    /// A semantic error on the field at `path` (dot separated; array items by index).
    pub fn invalid(file: &Path, text: &str, path: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: locate(text, path),
            field: Some(path.to_string()),
            reason: reason.into(),
        }
    }

    /// An error about the file as a whole (unreadable, empty).
    pub fn whole_file(file: &Path, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            field: None,
            reason: reason.into(),
        }
    }
}

/// Deserialises `text` (the content of `file`) into `T`, mapping syntax and type errors to a
/// [`ConfigError`] with the line and, where serde names it, the field.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str::<T>(text).map_err(|err| {
        let line = err.span().map(|span| line_of(text, span.start));
        ConfigError {
            file: file.to_path_buf(),
            line,
            field: None,
            reason: err.message().trim().to_string(),
        }
    })
}

/// Reads and parses a file from disk.
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::whole_file(file, format!("cannot read: {e}")))?;
    let value = parse(file, &text)?;
    Ok((value, text))
}

/// 1-based line number of byte offset `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Finds the line where the item at dotted `path` is written; falls back to the deepest parent
/// that exists, so an error about a missing key points at the table that lacks it.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut best: Option<usize> = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let next = match (table, value) {
            (Some(t), _) => t.get(segment),
            (None, Some(v)) => match segment.parse::<usize>() {
                Ok(index) => v.get_ref().get(index),
                Err(_) => v.get_ref().get(segment),
            },
            (None, None) => None,
        };
        let Some(next) = next else { break };
        best = Some(line_of(text, next.span().start));
        table = None;
        value = Some(next);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        vad: Vad,
        intent: Vec<Intent>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Vad {
        threshold: f32,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Intent {
        name: String,
    }

    const GOOD: &str =
        "[vad]\nthreshold = 0.5\n\n[[intent]]\nname = \"a\"\n\n[[intent]]\nname = \"b\"\n";

    #[test]
    fn parses_valid_text() {
        let s: Sample = parse(Path::new("x.toml"), GOOD).expect("valid");
        assert_eq!(s.intent.len(), 2);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = "[vad]\nthreshold = 0.5\ntreshold = 1\n[[intent]]\nname = \"a\"\n";
        let err = parse::<Sample>(Path::new("g.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.reason.contains("treshold"), "{err}");
        assert!(err.to_string().starts_with("g.toml:3: "), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = "[vad]\nthreshold = \"high\"\n[[intent]]\nname = \"a\"\n";
        let err = parse::<Sample>(Path::new("g.toml"), text).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn locate_follows_tables_and_arrays() {
        assert_eq!(locate(GOOD, "vad.threshold"), Some(2));
        assert_eq!(locate(GOOD, "intent.1.name"), Some(8));
        assert_eq!(locate(GOOD, "intent.0.name"), Some(5));
        // A missing leaf falls back to its parent.
        assert_eq!(locate(GOOD, "vad.missing"), Some(1));
        assert_eq!(locate(GOOD, "nothing"), None);
    }

    #[test]
    fn invalid_reports_field_and_line() {
        let err = ConfigError::invalid(
            Path::new("g.toml"),
            GOOD,
            "vad.threshold",
            "must be in [0, 1]",
        );
        assert_eq!(
            err.to_string(),
            "g.toml:2: field `vad.threshold`: must be in [0, 1]"
        );
    }
}

//! The dialog content of the gateway, loaded once and shared by all calls.
//!
//! Intents (`sip-config/intents.toml`) and prompts (`prompts/en.toml`) only make sense
//! together: every intent needs a reply, every skill a team name. [`DialogAssets`] loads and
//! cross-validates both (from disk or from the copies embedded in the binary), builds the
//! intent classifier once, and is then shared read-only (`Arc`) by every call's
//! [`super::Bot`].

use std::fmt;
use std::path::Path;

use super::intent::{IntentClassifier, IntentDef, IntentsFile, RuleClassifier};
use super::lookup::Lookup;
use super::prompts::Prompts;
use crate::config_file::ConfigError;

/// The intents shipped with the gateway.
pub const EMBEDDED_INTENTS: &str = include_str!("../../sip-config/intents.toml");
/// The prompts shipped with the gateway.
pub const EMBEDDED_PROMPTS: &str = include_str!("../../prompts/en.toml");

/// Validated intents and prompts plus the classifier built from them.
pub struct DialogAssets {
    intents: IntentsFile,
    prompts: Prompts,
    classifier: Box<dyn IntentClassifier>,
    lookups: Vec<Lookup>,
}

impl fmt::Debug for DialogAssets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialogAssets")
            .field(
                "intents",
                &self
                    .intents
                    .intents
                    .iter()
                    .map(|i| &i.name)
                    .collect::<Vec<_>>(),
            )
            .field("skills", &self.intents.skills)
            .finish_non_exhaustive()
    }
}

impl DialogAssets {
    /// The built-in intents and prompts.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::from_texts(
            Path::new("<embedded>/sip-config/intents.toml"),
            EMBEDDED_INTENTS,
            Path::new("<embedded>/prompts/en.toml"),
            EMBEDDED_PROMPTS,
        )
    }

    /// Reads and validates an intents file and a prompts file.
    pub fn load(intents: &Path, prompts: &Path) -> Result<Self, ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| ConfigError::whole_file(path, format!("cannot read: {e}")))
        };
        let intents_text = read(intents)?;
        let prompts_text = read(prompts)?;
        Self::from_texts(intents, &intents_text, prompts, &prompts_text)
    }

    /// Validates intents and prompts given as text; the paths label errors.
    pub fn from_texts(
        intents_file: &Path,
        intents_text: &str,
        prompts_file: &Path,
        prompts_text: &str,
    ) -> Result<Self, ConfigError> {
        let intents = IntentsFile::from_text(intents_file, intents_text)?;
        let prompts = Prompts::from_text(prompts_file, prompts_text, &intents)?;
        let classifier = Box::new(RuleClassifier::new(&intents));
        Ok(DialogAssets {
            intents,
            prompts,
            classifier,
            lookups: Vec::new(),
        })
    }

    /// Replaces the intent classifier (e.g. with a sentence-embedding model). It must report
    /// intent names from the intents file, or `"none"`.
    pub fn with_classifier(mut self, classifier: Box<dyn IntentClassifier>) -> Self {
        self.classifier = classifier;
        self
    }

    /// Wraps the intent classifier, e.g. with a backend that falls back to it.
    pub fn wrap_classifier(
        mut self,
        wrap: impl FnOnce(Box<dyn IntentClassifier>, &IntentsFile) -> Box<dyn IntentClassifier>,
    ) -> Self {
        let placeholder: Box<dyn IntentClassifier> = Box::new(RuleClassifier::new(&self.intents));
        let inner = std::mem::replace(&mut self.classifier, placeholder);
        self.classifier = wrap(inner, &self.intents);
        self
    }

    /// Attaches data lookups (see [`super::lookup`]), validated against these intents.
    pub fn with_lookups(mut self, lookups: Vec<Lookup>) -> Self {
        self.lookups = lookups;
        self
    }

    /// The lookup that answers `intent`, if any.
    pub fn lookup(&self, intent: &str) -> Option<&Lookup> {
        self.lookups.iter().find(|l| l.intent == intent)
    }

    /// The intent classifier.
    pub fn classifier(&self) -> &dyn IntentClassifier {
        self.classifier.as_ref()
    }

    /// The intents file.
    pub fn intents(&self) -> &IntentsFile {
        &self.intents
    }

    /// The definition of intent `name`.
    pub fn intent(&self, name: &str) -> Option<&IntentDef> {
        self.intents.intent(name)
    }

    /// The prompts.
    pub fn prompts(&self) -> &Prompts {
        &self.prompts
    }

    /// The skill for escalations not tied to an intent.
    pub fn default_skill(&self) -> &str {
        &self.intents.default_skill
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load() {
        let assets = DialogAssets::embedded().expect("embedded intents and prompts are valid");
        for name in [
            "greeting",
            "order_status",
            "password_reset",
            "opening_hours",
            "human_request",
            "complaint",
            "cancellation",
            "goodbye",
            "thanks",
        ] {
            assert!(assets.intent(name).is_some(), "missing intent {name}");
        }
        assert_eq!(assets.default_skill(), "general");
        assert_eq!(
            assets.prompts().transfer("billing"),
            "I'm transferring you to a colleague from our billing team who can help with this. Please hold the line."
        );
        assert!(format!("{assets:?}").contains("order_status"));
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = std::env::temp_dir().join(format!("dialog-assets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let intents = dir.join("intents.toml");
        let prompts = dir.join("en.toml");
        std::fs::write(&intents, EMBEDDED_INTENTS).expect("write");
        std::fs::write(&prompts, EMBEDDED_PROMPTS).expect("write");
        let loaded = DialogAssets::load(&intents, &prompts);
        let missing = DialogAssets::load(&dir.join("nope.toml"), &prompts);
        let _ = std::fs::remove_dir_all(&dir);
        loaded.expect("loads");
        let err = missing.unwrap_err();
        assert!(err.reason.starts_with("cannot read"), "{err}");
        assert!(err.file.ends_with("nope.toml"));
    }

    struct Always;
    impl IntentClassifier for Always {
        fn classify(&self, _: &str) -> super::super::IntentMatch {
            super::super::IntentMatch {
                intent: "opening_hours".into(),
                confidence: 1.0,
                evidence: vec!["test".into()],
                tone: None,
            }
        }
    }

    #[test]
    fn classifier_can_be_replaced() {
        let assets = DialogAssets::embedded()
            .expect("valid")
            .with_classifier(Box::new(Always));
        assert_eq!(
            assets.classifier().classify("where is my order").intent,
            "opening_hours"
        );
    }

    const INTENTS: &str = r#"skills = ["general", "support"]
default_skill = "general"

[[intent]]
name = "order_status"
skill = "support"
requires = ["order_number"]
examples = ["where is my order"]
[intent.cues]
"where * order" = 0.9

[[intent]]
name = "goodbye"
skill = "general"
ends_call = true
examples = ["bye"]
"#;

    const PROMPTS: &str = r#"greeting = "Hello."
clarify = "Pardon?"
repeat = "Again, please?"
transfer = "To {team}."

[teams]
general = "service"
support = "support"

[slots.order_number]
ask = "Number?"
reask = "Number again?"

[replies]
order_status = "Order {order_number}."
goodbye = "Bye."
"#;

    /// Loads the fixtures with one replacement in the intents (`in_prompts == false`) or the
    /// prompts text and returns the error.
    fn error(in_prompts: bool, from: &str, to: &str) -> ConfigError {
        let (mut intents, mut prompts) = (INTENTS.to_string(), PROMPTS.to_string());
        let target = if in_prompts {
            &mut prompts
        } else {
            &mut intents
        };
        assert!(target.contains(from), "fixture lacks {from:?}");
        *target = target.replacen(from, to, 1);
        match DialogAssets::from_texts(Path::new("i.toml"), &intents, Path::new("p.toml"), &prompts)
        {
            Ok(_) => panic!("{from:?} -> {to:?} should be rejected"),
            Err(e) => e,
        }
    }

    fn assert_error(err: &ConfigError, file: &str, line: usize, needle: &str) {
        assert_eq!(err.file, Path::new(file), "{err}");
        assert_eq!(err.line, Some(line), "{err}");
        assert!(err.reason.contains(needle), "{err} lacks {needle:?}");
    }

    #[test]
    fn fixtures_are_valid() {
        let assets =
            DialogAssets::from_texts(Path::new("i.toml"), INTENTS, Path::new("p.toml"), PROMPTS)
                .expect("valid");
        let mut slots = std::collections::BTreeMap::new();
        slots.insert("order_number".to_string(), "42".to_string());
        assert_eq!(
            assets.prompts().reply("order_status", &slots).as_deref(),
            Some("Order 4 2.")
        );
    }

    #[test]
    fn unknown_keys_name_file_and_line() {
        let err = error(
            false,
            "examples = [\"bye\"]\n",
            "examples = [\"bye\"]\nexamplez = [\"x\"]\n",
        );
        assert_error(&err, "i.toml", 17, "examplez");
        let err = error(
            true,
            "repeat = \"Again, please?\"\n",
            "repeat = \"Again, please?\"\ncolour = \"red\"\n",
        );
        assert_error(&err, "p.toml", 4, "colour");
        let err = error(
            true,
            "reask = \"Number again?\"",
            "reask = \"Number again?\"\nretry = \"x\"",
        );
        assert_error(&err, "p.toml", 13, "retry");
    }

    #[test]
    fn duplicate_intent_names_both_lines() {
        let err = error(false, "name = \"goodbye\"", "name = \"order_status\"");
        assert_error(
            &err,
            "i.toml",
            13,
            "duplicate intent name `order_status` (first defined at line 5)",
        );
        assert_eq!(err.field.as_deref(), Some("intent.1.name"));
    }

    #[test]
    fn intent_errors_name_the_line() {
        assert_error(
            &error(
                false,
                "skill = \"general\"\nends_call",
                "skill = \"billing\"\nends_call",
            ),
            "i.toml",
            14,
            "unknown skill `billing`",
        );
        assert_error(
            &error(false, "examples = [\"bye\"]", "examples = []"),
            "i.toml",
            16,
            "at least one example",
        );
        assert_error(
            &error(
                false,
                "examples = [\"bye\"]",
                "examples = [\"bye\", \"?!\"]",
            ),
            "i.toml",
            16,
            "example sentence is empty",
        );
        assert_error(
            &error(false, "\"where * order\" = 0.9", "\"where * order\" = 1.5"),
            "i.toml",
            10,
            "must be in (0, 1]",
        );
        assert_error(
            &error(false, "\"where * order\" = 0.9", "\"where *\" = 0.9"),
            "i.toml",
            10,
            "`*` must stand between two words",
        );
        assert_error(
            &error(
                false,
                "requires = [\"order_number\"]",
                "requires = [\"order_id\"]",
            ),
            "i.toml",
            7,
            "unknown slot `order_id`",
        );
        assert_error(
            &error(
                false,
                "default_skill = \"general\"",
                "default_skill = \"sales\"",
            ),
            "i.toml",
            2,
            "unknown skill `sales`",
        );
        assert_error(
            &error(false, "name = \"goodbye\"", "name = \"none\""),
            "i.toml",
            13,
            "reserved",
        );
        assert_error(
            &error(false, "name = \"goodbye\"", "name = \"Good Bye\""),
            "i.toml",
            13,
            "not an identifier",
        );
        assert_error(
            &error(
                false,
                "ends_call = true",
                "escalate = \"critical\"\nends_call = true",
            ),
            "i.toml",
            15,
            "cannot also end the call",
        );
        let err = error(
            false,
            "default_skill = \"general\"\n",
            "default_skill = \"general\"\n[synonyms]\nx = []\n",
        );
        assert_error(&err, "i.toml", 4, "lists no variants");
    }

    #[test]
    fn missing_reply_points_at_the_replies_table() {
        let err = error(true, "goodbye = \"Bye.\"\n", "");
        assert_error(&err, "p.toml", 14, "missing reply for intent `goodbye`");
        assert_eq!(err.field.as_deref(), Some("replies.goodbye"));
    }

    #[test]
    fn template_errors_name_the_line() {
        let err = error(true, "goodbye = \"Bye.\"", "goodbye = \"Bye {colour}.\"");
        assert_error(&err, "p.toml", 16, "unknown placeholder `{colour}`");
        let err = error(true, "goodbye = \"Bye.\"", "goodbye = \"Bye {name}.\"");
        assert_error(&err, "p.toml", 16, "slot `{name}` may be empty here");
        let err = error(
            true,
            "order_status = \"Order {order_number}.\"",
            "order_status = \"Order {order_number.\"",
        );
        assert_error(&err, "p.toml", 15, "unclosed placeholder");
        let err = error(
            true,
            "transfer = \"To {team}.\"",
            "transfer = \"To {skill}.\"",
        );
        assert_error(&err, "p.toml", 4, "allowed here: {team}");
        let err = error(
            true,
            "greeting = \"Hello.\"",
            "greeting = \"Hello {name}.\"",
        );
        assert_error(&err, "p.toml", 1, "allowed here: none");
        let err = error(true, "ask = \"Number?\"", "ask = \" \"");
        assert_error(&err, "p.toml", 11, "must not be empty");
    }

    #[test]
    fn prompt_cross_checks_name_the_line() {
        assert_error(
            &error(true, "support = \"support\"\n", ""),
            "p.toml",
            6,
            "no team name for skill `support`",
        );
        assert_error(
            &error(
                true,
                "support = \"support\"",
                "support = \"support\"\nsales = \"sales\"",
            ),
            "p.toml",
            9,
            "unknown skill `sales`",
        );
        assert_error(
            &error(
                true,
                "goodbye = \"Bye.\"",
                "goodbye = \"Bye.\"\ngreting = \"Hi\"",
            ),
            "p.toml",
            17,
            "no intent `greting`",
        );
        assert_error(
            &error(true, "[slots.order_number]", "[slots.email]"),
            "p.toml",
            10,
            "intent `order_status` requires `order_number`",
        );
        assert_error(
            &error(
                true,
                "[slots.order_number]",
                "[slots.shoe_size]\nask = \"a\"\nreask = \"b\"\n[slots.order_number]",
            ),
            "p.toml",
            10,
            "unknown slot `shoe_size`",
        );
    }

    #[test]
    fn escalating_intent_must_not_have_a_reply() {
        let intents = INTENTS.replace("ends_call = true", "escalate = \"explicit_request\"");
        let err =
            DialogAssets::from_texts(Path::new("i.toml"), &intents, Path::new("p.toml"), PROMPTS)
                .unwrap_err();
        assert_error(&err, "p.toml", 16, "escalates");
    }
}

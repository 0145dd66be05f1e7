//! Looking up what the caller asked about in a flow's data: the demo order-status source.
//!
//! A flow can attach a lookup to an intent: once the intent's key slot is filled (e.g. the order
//! number), the record with that key is found and the `found` template is spoken with the slot
//! and the record's fields; an unknown key gets `not_found` and the slot is asked again (it
//! counts as a failed turn, so a caller who keeps giving unknown numbers reaches a person).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::assets::DialogAssets;
use super::prompts::Template;
use crate::config_file::ConfigError;

/// A lookup as written in a flow file (`[[lookup]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// The intent whose answer comes from this data.
    pub intent: String,
    /// The slot used as the key (the intent must require it).
    pub key: String,
    /// Spoken when the key is found: `{key}` and the record's fields as placeholders.
    pub found: String,
    /// Spoken when it is not: only `{key}` may be used.
    pub not_found: String,
    /// The data: key -> fields.
    #[serde(default)]
    pub records: BTreeMap<String, BTreeMap<String, String>>,
}

/// A validated lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub intent: String,
    pub key: String,
    found: Template,
    not_found: Template,
    records: BTreeMap<String, BTreeMap<String, String>>,
}

/// The outcome of a lookup: the sentence to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    Found(String),
    NotFound(String),
}

impl Lookup {
    /// Validates `spec` (written at `field`, e.g. `lookup.0`, in `file`) against the flow's
    /// intents.
    pub fn compile(
        spec: &LookupSpec,
        assets: &DialogAssets,
        file: &Path,
        text: &str,
        field: &str,
    ) -> Result<Self, ConfigError> {
        let bad = |sub: &str, reason: String| {
            ConfigError::invalid(file, text, &format!("{field}.{sub}"), reason)
        };
        let Some(intent) = assets.intent(&spec.intent) else {
            return Err(bad("intent", format!("unknown intent `{}`", spec.intent)));
        };
        if !intent.requires.iter().any(|r| r == &spec.key) {
            return Err(bad(
                "key",
                format!(
                    "intent `{}` does not require slot `{}` (its `requires`: [{}])",
                    spec.intent,
                    spec.key,
                    intent.requires.join(", ")
                ),
            ));
        }
        let found = Template::parse(&spec.found).map_err(|e| bad("found", e))?;
        let not_found = Template::parse(&spec.not_found).map_err(|e| bad("not_found", e))?;
        if let Some(p) = not_found.placeholders().find(|p| *p != spec.key) {
            return Err(bad(
                "not_found",
                format!(
                    "`{{{p}}}` is unknown here: only `{{{}}}` can be used",
                    spec.key
                ),
            ));
        }
        for (key, fields) in &spec.records {
            if let Some(p) = found
                .placeholders()
                .find(|p| *p != spec.key && !fields.contains_key(*p))
            {
                return Err(bad(
                    &format!("records.{key}"),
                    format!("record has no field `{p}`, which `found` uses"),
                ));
            }
        }
        let records = spec
            .records
            .iter()
            .map(|(k, v)| (canonical(k), v.clone()))
            .collect();
        Ok(Lookup {
            intent: spec.intent.clone(),
            key: spec.key.clone(),
            found,
            not_found,
            records,
        })
    }

    /// Looks the key slot up in `slots` and renders the answer.
    pub fn answer(&self, slots: &BTreeMap<String, String>) -> LookupAnswer {
        let key = slots
            .get(&self.key)
            .map(|k| canonical(k))
            .unwrap_or_default();
        match self.records.get(&key) {
            Some(fields) => {
                let mut values = fields.clone();
                values.extend(slots.iter().map(|(k, v)| (k.clone(), v.clone())));
                LookupAnswer::Found(self.found.render(&values))
            }
            None => LookupAnswer::NotFound(self.not_found.render(slots)),
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Keys compare without spaces, dashes or case ("45-712" finds "45712").
fn canonical(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(found: &str, not_found: &str) -> LookupSpec {
        LookupSpec {
            intent: "order_status".into(),
            key: "order_number".into(),
            found: found.into(),
            not_found: not_found.into(),
            records: BTreeMap::from([(
                "45-712".to_string(),
                BTreeMap::from([("status".to_string(), "was shipped on Monday".to_string())]),
            )]),
        }
    }

    fn compile(s: &LookupSpec) -> Result<Lookup, ConfigError> {
        let assets = DialogAssets::embedded().expect("embedded");
        Lookup::compile(s, &assets, Path::new("f.toml"), "", "lookup.0")
    }

    #[test]
    fn found_and_not_found() {
        let l = compile(&spec(
            "Order {order_number} {status}.",
            "No order {order_number}.",
        ))
        .expect("valid");
        let slots = BTreeMap::from([("order_number".to_string(), "45712".to_string())]);
        assert_eq!(
            l.answer(&slots),
            LookupAnswer::Found("Order 4 5 7 1 2 was shipped on Monday.".into())
        );
        let slots = BTreeMap::from([("order_number".to_string(), "11111".to_string())]);
        assert_eq!(
            l.answer(&slots),
            LookupAnswer::NotFound("No order 1 1 1 1 1.".into())
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = spec("Order {order_number} {eta}.", "x");
        let err = compile(&s).unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("lookup.0.records.45-712"),
            "{err}"
        );
        s = spec("ok", "No order {status}.");
        assert_eq!(
            compile(&s).unwrap_err().field.as_deref(),
            Some("lookup.0.not_found")
        );
        s = spec("ok", "x");
        s.intent = "opening_hours".into();
        let err = compile(&s).unwrap_err();
        assert!(err.reason.contains("does not require"), "{err}");
        s.intent = "nope".into();
        assert!(compile(&s).unwrap_err().reason.contains("unknown intent"));
    }
}

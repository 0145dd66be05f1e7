//! Averaged-perceptron part-of-speech tagger (Penn Treebank tags), hibari's `g2p/tagger.py`.
//!
//! The lexicon reads heteronyms by tag ("read" VBD vs VB, "live" JJ vs VBP, "record" NN vs
//! VB) and its function-word rules look at tags too, so the tags must match the reference. The
//! model (`tagger.json`) is a tag dictionary for words with one dominant tag plus feature
//! weights; it was trained on spaCy en_core_web_sm's tags. Scores are summed in feature order
//! in `f64`, exactly as the Python does, so ties break the same way (larger tag name wins).

use std::collections::{HashMap, HashSet};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::pystr::{isalpha, isdigit, islower, isupper, last_n};

const START: [&str; 2] = ["-START2-", "-START-"];
const END: [&str; 2] = ["-END-", "-END2-"];

#[derive(Deserialize)]
struct TaggerFile {
    tags: Vec<String>,
    tagdict: HashMap<String, String>,
    #[serde(default)]
    vocab: Option<Vec<String>>,
    weights: HashMap<String, Pairs>,
}

/// A JSON object read as its (key, value) pairs: 80k small weight maps load faster as vectors
/// than as hash maps, and the tagger only iterates them.
struct Pairs(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Pairs, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of tag to weight")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(pair) = map.next_entry::<String, f64>()? {
                    v.push(pair);
                }
                Ok(Pairs(v))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// The perceptron tagger.
pub struct Tagger {
    tags: Vec<String>,
    tagdict: HashMap<String, String>,
    vocab: Option<HashSet<String>>,
    /// feature -> (index into `tags`, weight)
    weights: HashMap<String, Vec<(u16, f64)>>,
}

impl Tagger {
    /// Parses `tagger.json`.
    pub fn from_json(text: &str) -> Result<Tagger, serde_json::Error> {
        let file: TaggerFile = serde_json::from_str(text)?;
        let index: HashMap<&str, u16> = file
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u16))
            .collect();
        let weights = file
            .weights
            .into_iter()
            .map(|(feature, ws)| {
                let ws =
                    ws.0.into_iter()
                        .filter_map(|(t, w)| index.get(t.as_str()).map(|&i| (i, w)))
                        .collect();
                (feature, ws)
            })
            .collect();
        Ok(Tagger {
            vocab: file.vocab.map(|v| v.into_iter().collect()),
            tags: file.tags,
            tagdict: file.tagdict,
            weights,
        })
    }

    /// One tag per word.
    pub fn tag<S: AsRef<str>>(&self, words: &[S]) -> Vec<String> {
        let mut ctx: Vec<String> = START.iter().map(|s| s.to_string()).collect();
        for w in words {
            let w = w.as_ref();
            let n = norm(w);
            let known = self.vocab.as_ref().is_none_or(|v| v.contains(&n));
            ctx.push(if known { n } else { format!("<{}>", shape(w)) });
        }
        ctx.extend(END.iter().map(|s| s.to_string()));
        let mut prev = START[1].to_string();
        let mut prev2 = START[0].to_string();
        let mut tags = Vec::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            let w = w.as_ref();
            let tag = match self.tagdict.get(w) {
                Some(t) => t.clone(),
                None => self.predict(&features(i, w, &ctx, &prev, &prev2)),
            };
            prev2 = std::mem::replace(&mut prev, tag.clone());
            tags.push(tag);
        }
        tags
    }

    fn predict(&self, feats: &[String]) -> String {
        let mut scores = vec![0.0f64; self.tags.len()];
        let mut any = false;
        for f in feats {
            if let Some(ws) = self.weights.get(f) {
                if !ws.is_empty() {
                    any = true;
                }
                for &(t, w) in ws {
                    scores[t as usize] += w;
                }
            }
        }
        if !any {
            return "NN".to_string();
        }
        let mut best: Option<(f64, &str)> = None;
        for (t, &s) in self.tags.iter().zip(&scores) {
            let better = match best {
                None => true,
                Some((bs, bt)) => s > bs || (s == bs && t.as_str() > bt),
            };
            if better {
                best = Some((s, t));
            }
        }
        best.map_or("NN", |(_, t)| t).to_string()
    }
}

/// The word as the weights know it: classes for hyphenated words, years and numbers.
fn norm(w: &str) -> String {
    if w.contains('-') && !w.starts_with('-') {
        return "!HYPHEN".into();
    }
    if isdigit(w) && w.chars().count() == 4 {
        return "!YEAR".into();
    }
    if w.chars()
        .next()
        .is_some_and(|c| isdigit(c.encode_utf8(&mut [0; 4])))
    {
        return "!DIGITS".into();
    }
    w.to_lowercase()
}

/// The word's shape: "x", "Xx", "XX", "X1", "xX", "d", or its first 4 characters with digits
/// as `d` and letters as `x`.
pub fn shape(w: &str) -> String {
    if isalpha(w) {
        if islower(w) {
            return "x".into();
        }
        if isupper(w) {
            return if w.chars().count() > 1 { "XX" } else { "X1" }.into();
        }
        let mut chars = w.chars();
        let first_upper = chars.next().is_some_and(char::is_uppercase);
        if first_upper && islower(chars.as_str()) {
            return "Xx".into();
        }
        return "xX".into();
    }
    if isdigit(w) {
        return "d".into();
    }
    w.chars()
        .take(4)
        .map(|c| {
            let mut b = [0; 4];
            let cs: &str = c.encode_utf8(&mut b);
            if isdigit(cs) {
                'd'
            } else if c.is_alphabetic() {
                'x'
            } else {
                c
            }
        })
        .collect()
}

fn features(i: usize, word: &str, ctx: &[String], prev: &str, prev2: &str) -> Vec<String> {
    let j = i + 2;
    let first: String = word.chars().take(1).collect();
    vec![
        "b".to_string(),
        format!("s3={}", last_n(word, 3)),
        format!("p1={first}"),
        format!("w={}", ctx[j]),
        format!("sh={}", shape(word)),
        if i == 0 { "i0" } else { "i+" }.to_string(),
        format!("t-1={prev}"),
        format!("t-2={prev2}"),
        format!("t-12={prev},{prev2}"),
        format!("w-1={}", ctx[j - 1]),
        format!("s3-1={}", last_n(&ctx[j - 1], 3)),
        format!("w-2={}", ctx[j - 2]),
        format!("w+1={}", ctx[j + 1]),
        format!("s3+1={}", last_n(&ctx[j + 1], 3)),
        format!("w+2={}", ctx[j + 2]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(shape("anna"), "x");
        assert_eq!(shape("Anna"), "Xx");
        assert_eq!(shape("USA"), "XX");
        assert_eq!(shape("A"), "X1");
        assert_eq!(shape("iPhone"), "xX");
        assert_eq!(shape("4471"), "d");
        assert_eq!(shape("12.50"), "dd.d");
        assert_eq!(shape("e-mail"), "x-xx");
    }

    #[test]
    fn norms() {
        assert_eq!(norm("well-known"), "!HYPHEN");
        assert_eq!(norm("-5"), "-5");
        assert_eq!(norm("1990"), "!YEAR");
        assert_eq!(norm("25"), "!DIGITS");
        assert_eq!(norm("Hello"), "hello");
    }

    #[test]
    fn tiny_model_scores_and_tagdict() {
        let json = r#"{"tags": ["NN", "VB", "VBD"], "tagdict": {"the": "DT"},
            "weights": {"b": {"NN": 1.0}, "s3=ead": {"VB": 0.5, "VBD": 0.6},
                        "t-1=DT": {"NN": 3.0}}}"#;
        let t = Tagger::from_json(json).unwrap();
        // "read" after nothing: b gives NN 1.0, s3=ead VBD 0.6 -> NN.
        // "the read": t-1=DT adds NN 3.0.
        assert_eq!(t.tag(&["the", "read"]), ["DT", "NN"]);
        // Tie: equal scores pick the larger tag name.
        let json =
            r#"{"tags": ["NN", "VB"], "tagdict": {}, "weights": {"b": {"NN": 1.0, "VB": 1.0}}}"#;
        let t = Tagger::from_json(json).unwrap();
        assert_eq!(t.tag(&["x"]), ["VB"]);
        // No feature with weights: NN.
        let json = r#"{"tags": ["VB"], "tagdict": {}, "weights": {}}"#;
        let t = Tagger::from_json(json).unwrap();
        assert_eq!(t.tag(&["x"]), ["NN"]);
    }
}

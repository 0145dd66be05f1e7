//! Scoring a transcript against its reference: word errors and digit strings.
//!
//! Both sides are normalised the same way before counting, so that spelling choices are not
//! errors: lower case, punctuation dropped (apostrophes kept), hyphens split, numbers written
//! with digits spelt digit by digit ("4471" and "four four seven one" are the same words;
//! "double five" is "five five"), and hesitations ("uh", "um", "er", "ah", "hmm") removed.

/// Hesitation words left out of scoring.
const FILLERS: &[&str] = &["uh", "um", "er", "ah", "hmm", "erm", "mm", "uhm"];

const DIGIT_WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// The words of `text` as scored.
pub fn normalize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let lowered = text.to_lowercase().replace(['-', '/'], " ");
    for raw in lowered.split_whitespace() {
        let word: String = raw
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'')
            .collect();
        let word = word.trim_matches('\'');
        if word.is_empty() || FILLERS.contains(&word) {
            continue;
        }
        if word.chars().all(|c| c.is_ascii_digit()) {
            for d in word.chars() {
                words.push(DIGIT_WORDS[(d as u8 - b'0') as usize].to_string());
            }
            continue;
        }
        if word == "oh"
            && words
                .last()
                .is_some_and(|w: &String| DIGIT_WORDS.contains(&w.as_str()))
        {
            words.push("zero".into()); // "four oh seven"
            continue;
        }
        words.push(word.to_string());
    }
    expand_double(words)
}

/// "double five" -> "five five", "triple two" -> "two two two".
fn expand_double(words: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let times = match words[i].as_str() {
            "double" => 2,
            "triple" => 3,
            _ => 0,
        };
        if times > 0 {
            if let Some(next) = words
                .get(i + 1)
                .filter(|w| DIGIT_WORDS.contains(&w.as_str()))
            {
                out.extend(std::iter::repeat_n(next.clone(), times));
                i += 2;
                continue;
            }
        }
        out.push(words[i].clone());
        i += 1;
    }
    out
}

/// The digit string a text says (digits and digit words, in order); "" when none.
pub fn digits(text: &str) -> String {
    normalize(text)
        .iter()
        .filter_map(|w| DIGIT_WORDS.iter().position(|d| d == w))
        .map(|d| char::from(b'0' + d as u8))
        .collect()
}

/// Word edits (substitutions, deletions, insertions) from `reference` to `hypothesis`.
pub fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    crate::speech::asr::vocabulary::levenshtein(reference, hypothesis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> Vec<String> {
        normalize(text)
    }

    #[test]
    fn spelling_choices_are_not_errors() {
        assert_eq!(
            n("Where's my order #4471?"),
            n("where's my order four four seven one")
        );
        assert_eq!(n("Uh, I want a re-fund."), n("I want a re fund"));
        assert_eq!(n("four oh seven"), n("407"));
        assert_eq!(n("double five two"), n("5 5 2"));
    }

    #[test]
    fn digits_are_read_in_order() {
        assert_eq!(digits("My order number is 4, 5, 7, 1, 2."), "45712");
        assert_eq!(digits("it's four double five one"), "4551");
        assert_eq!(digits("no numbers here"), "");
    }

    #[test]
    fn word_errors_count_edits() {
        let r = n("where is my parcel");
        assert_eq!(word_errors(&r, &n("where is my parcel")), 0);
        assert_eq!(word_errors(&r, &n("where is the parcel")), 1);
        assert_eq!(word_errors(&r, &n("where is my")), 1);
        assert_eq!(word_errors(&r, &n("so where is my parcel now")), 2);
        assert_eq!(word_errors(&r, &[]), 4);
    }
}

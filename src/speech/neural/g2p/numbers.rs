//! English number words (cardinal, ordinal, year, decimal), hibari's `g2p/numbers.py`.
//!
//! Our normaliser spells out numbers before the G2P, but digits can still arrive (an order
//! number the normaliser left alone, a digit inside a product name), and the lexicon's number
//! reading is what the voice was trained to hear, so it is ported rather than replaced by digit
//! by digit reading. The strings are num2words-compatible; the caller splits them on
//! non-letters and drops "and". Numbers are `u128`: digit strings beyond that (or beyond
//! decillions) are read digit by digit by the caller.

// The same number words as the speech normaliser's (one table for the crate).
use crate::speech::normalize::{ONES, SCALES, TENS};

/// The largest number `cardinal` can name (the Python raises beyond decillions).
pub const MAX: u128 = 999_999_999_999_999_999_999_999_999_999_999_999;

fn below_1000(mut n: u128) -> Vec<String> {
    let mut words = Vec::new();
    if n >= 100 {
        words.push(ONES[(n / 100) as usize].to_string());
        words.push("hundred".to_string());
        n %= 100;
        if n > 0 {
            words.push("and".to_string());
        }
    }
    if n >= 20 {
        let mut w = TENS[(n / 10) as usize].to_string();
        if !n.is_multiple_of(10) {
            w.push('-');
            w.push_str(ONES[(n % 10) as usize]);
        }
        words.push(w);
    } else if n > 0 || words.is_empty() {
        words.push(ONES[n as usize].to_string());
    }
    words
}

/// num2words(n): "one thousand, two hundred and thirty-four". `None` above [`MAX`].
pub fn cardinal(n: u128) -> Option<String> {
    if n > MAX {
        return None;
    }
    if n < 1000 {
        return Some(below_1000(n).join(" "));
    }
    let mut groups = Vec::new();
    let mut scale = 0;
    let mut n = n;
    while n > 0 {
        let g = n % 1000;
        n /= 1000;
        if g > 0 {
            let mut s = below_1000(g).join(" ");
            if scale > 0 {
                s.push(' ');
                s.push_str(SCALES.get(scale)?);
            }
            groups.push(s);
        }
        scale += 1;
    }
    groups.reverse();
    let last = groups.last()?.clone();
    let after_and = last.rsplit(" and ").next().unwrap_or(&last);
    if groups.len() > 1 && !after_and.contains(' ') && !last.contains("hundred") {
        let head = groups[..groups.len() - 1].join(", ");
        return Some(format!("{head} and {last}"));
    }
    Some(groups.join(", "))
}

/// num2words(n, to="ordinal"): "twenty-third", "one hundred and first".
pub fn ordinal(n: u128) -> Option<String> {
    let c = cardinal(n)?;
    let (head, last) = match c.rfind(' ') {
        Some(i) => (&c[..=i], &c[i + 1..]),
        None => ("", c.as_str()),
    };
    let last = match last.rfind('-') {
        Some(i) => format!("{}-{}", &last[..i], ord_word(&last[i + 1..])),
        None => ord_word(last),
    };
    Some(format!("{head}{last}"))
}

fn ord_word(w: &str) -> String {
    match w {
        "one" => "first".into(),
        "two" => "second".into(),
        "three" => "third".into(),
        "five" => "fifth".into(),
        "eight" => "eighth".into(),
        "nine" => "ninth".into(),
        "twelve" => "twelfth".into(),
        _ => match w.strip_suffix('y') {
            Some(stem) => format!("{stem}ieth"),
            None => format!("{w}th"),
        },
    }
}

/// num2words(n, to="year"): "nineteen oh-five", "two thousand and five", "twenty ten".
pub fn year(n: u128) -> Option<String> {
    let (high, low) = (n / 100, n % 100);
    if high == 0 || (high.is_multiple_of(10) && low < 10) || high >= 100 {
        return cardinal(n);
    }
    let lowtext = if low == 0 {
        "hundred".to_string()
    } else if low < 10 {
        format!("oh-{}", cardinal(low)?)
    } else {
        cardinal(low)?
    };
    Some(format!("{} {lowtext}", cardinal(high)?))
}

/// num2words(float(s)) for "3.14": "three point one four" (trailing zeros dropped).
pub fn decimal(s: &str) -> Option<String> {
    let (ip, fp) = s.split_once('.').unwrap_or((s, ""));
    let fp = fp.trim_end_matches('0');
    let int = if ip.is_empty() { 0 } else { ip.parse().ok()? };
    let mut words = cardinal(int)?;
    if !fp.is_empty() {
        words.push_str(" point");
        for c in fp.chars() {
            words.push(' ');
            words.push_str(ONES[c.to_digit(10)? as usize]);
        }
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cardinals() {
        assert_eq!(cardinal(0).unwrap(), "zero");
        assert_eq!(cardinal(25).unwrap(), "twenty-five");
        assert_eq!(cardinal(203).unwrap(), "two hundred and three");
        assert_eq!(cardinal(1001).unwrap(), "one thousand and one");
        assert_eq!(
            cardinal(1234).unwrap(),
            "one thousand, two hundred and thirty-four"
        );
        assert_eq!(cardinal(2_000_020).unwrap(), "two million and twenty");
        assert_eq!(cardinal(1100).unwrap(), "one thousand, one hundred");
    }

    #[test]
    fn ordinals_years_decimals() {
        assert_eq!(ordinal(3).unwrap(), "third");
        assert_eq!(ordinal(23).unwrap(), "twenty-third");
        assert_eq!(ordinal(40).unwrap(), "fortieth");
        assert_eq!(ordinal(101).unwrap(), "one hundred and first");
        assert_eq!(year(1905).unwrap(), "nineteen oh-five");
        assert_eq!(year(2005).unwrap(), "two thousand and five");
        assert_eq!(year(2010).unwrap(), "twenty ten");
        assert_eq!(year(1900).unwrap(), "nineteen hundred");
        assert_eq!(decimal("3.140").unwrap(), "three point one four");
    }
}

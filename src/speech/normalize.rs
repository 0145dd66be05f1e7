//! Text normalisation before speech synthesis: turns a bot reply into words a voice reads right.
//!
//! Replies are templates filled with caller data (order numbers, amounts, times, dates, names).
//! The TTS front end reads words well but digits and symbols badly: "4471" comes out as a year
//! ("forty-four seventy-one"), "$42.50" as "dollar forty-two point five zero", "9am" as "nam".
//! [`normalize`] expands everything a voice could misread into plain words, keeps sentence
//! punctuation (`. , ? ! ; :`) for prosody and leaves ordinary words alone (case preserved).
//! Its output never contains an ASCII digit.
//!
//! # How it decides
//!
//! The text goes through small passes in a fixed order (see `PASSES`); each pass rewrites the
//! spans it recognises into words, so a later, more general pass never sees them. The specific
//! readings come first (addresses, dates, times, phone numbers, money, identifiers) and the
//! general number readings last; a final pass reads any digit left digit by digit. Regexes are
//! compiled once ([`LazyLock`]); a pass can reject a match by looking at the text around it
//! (the `regex` crate has no look-around), and the search then resumes one character later.
//!
//! # Readings chosen (documented decisions)
//!
//! - Cardinals are American style without "and": `1,250` → "one thousand two hundred fifty";
//!   up to `u64::MAX` (quintillions); longer digit runs are read digit by digit. A bare 4-digit
//!   number is a cardinal (`1500 points` → "one thousand five hundred points"), except after
//!   "in", "since", "of", "year", "until", "till", "during" and in 4-digit year ranges
//!   (`2020-2024`) where 1100-2099 reads as a year ("twenty twenty-six", "nineteen ninety-nine",
//!   "two thousand five", "fifteen hundred"); decades: `1990s` → "nineteen nineties".
//! - Decimals: the digits after the point one by one (`3.14` → "three point one four").
//! - Digit-by-digit reading says "zero" for 0 (identifiers must be unambiguous); "oh" is used
//!   only for the minutes of a time (`9:05` → "nine oh five") and in years (`1905`).
//! - Identifiers: after a cue word (order, order number, number, no., #, reference, ref,
//!   ticket, case, account, invoice, tracking, code, PIN, extension, ext., ID, confirmation,
//!   booking, reservation, policy, claim, serial, member, dial, "ending in"), in any case, a token with
//!   a digit is read character by character: letters as capitals, digits as words, `-` as
//!   "dash" (`#A1234` → "number A one two three four"). A cue followed by a 1-2 digit number
//!   reads it as a cardinal ("case 12" → "case twelve", "number 7"), since those are
//!   counts as often as identifiers. Any bare run of 5 or more digits is read digit by digit.
//!   Other tokens mixing letters and digits (`B12`, `MP3`, `2FA`) spell capitals and short
//!   lowercase runs letter by letter, keep longer words, and read 1-2 digit runs as cardinals
//!   ("B twelve") and longer runs digit by digit.
//! - Phone numbers (`+1 555-123-4567`, `(555) 123 4567`, `0800 123 456`, `+4915112345678`):
//!   digit by digit, groups separated by commas, a leading `+` is "plus". Two groups only
//!   (`555-1234`) count as a phone number after a cue ("call", "phone", "dial", ...) or when
//!   the first group starts with 0; otherwise `100-2000` stays a range.
//! - Money: `$42.50` → "forty-two dollars and fifty cents", `$0.99` → "ninety-nine cents",
//!   `£3.05` → "three pounds and five pence", scale words keep the decimal
//!   (`$2.5 million` → "two point five million dollars"), `$10-20` → "ten to twenty dollars".
//!   Symbols `$ € £ ¥ ₹` before the amount (`€` also after it) and codes USD EUR GBP CAD AUD
//!   JPY INR CHF before or after. Continental amounts (`€1.234,56`, `12,50 €`) are recognised
//!   by their shape: dot-separated thousands or a comma followed by one or two digits.
//! - Times: "A M" / "P M" as separate capitals so the voice spells them (`9am` → "nine A M").
//!   `9:00` → "nine o'clock", `9:00 pm` → "nine P M", `12:00 pm` / `12pm` → "twelve noon",
//!   `12 am` → "twelve midnight". 24-hour times (hour 0 or 13-23, or a leading zero) are said
//!   on the 12-hour clock: `17:45` → "five forty-five P M", `09:00` → "nine A M"; in a range
//!   one 24-hour side makes both sides 24-hour. Ranges: `9am-5pm` → "nine A M to five P M".
//!   `9.30am` is a time only with am/pm (else a decimal); a colon between numbers that is no
//!   time is a ratio (`16:9` → "sixteen to nine").
//! - Dates: `2026-11-28`, `11/28/2026`, `28.11.2026`, `Nov 28, 2026`, `28 November 2026` →
//!   "November twenty-eighth, twenty twenty-six". Slashes and dashes are US order (month
//!   first) unless the first field is over 12; dots are day first. Two-digit years are 2000-2069
//!   or 1970-1999. `the 28th of November` keeps its order ("twenty-eighth of November").
//!   Weekday abbreviations become full names in ranges (`Mon-Fri` → "Monday to Friday"),
//!   before a date or time, or after "on", "every", "from", "until", "next", ....
//! - Fractions: `a/b` with `a < b <= 10` is a fraction (`3/4` → "three quarters"); otherwise a
//!   valid month/day is a date (`11/28` → "November twenty-eighth"); otherwise "a slash b".
//!   `24/7` → "twenty-four seven". Ranges `2-3` → "two to three".
//! - Abbreviations are expanded with their case kept (`Apt.` → "Apartment", `apt.` →
//!   "apartment", `E.g.` → "For example"). One that ends a sentence (end of text, or before a
//!   capitalised word for those that can end one, like "etc." or "St.") keeps the full stop.
//!   Street types (St, Ave, Rd, Blvd, Dr, ...) are expanded after a house number and name
//!   ("12 Main St." → "Street") or after a capitalised word; before a capitalised word "Dr."
//!   is "Doctor" and "St." is "Saint".
//! - E-mail addresses and URLs: `@` → "at", `.` → "dot", `/` → "slash", `-` → "dash"; the
//!   `http(s)://` scheme is not spoken.
//! - Known limits: a capitalised "May" before a number at the start of a sentence reads as a
//!   date; space-grouped thousands (`100 000`) read as two numbers; `order 100 units` reads
//!   the quantity digit by digit (the cue wins for 3+ digits).
//! - Typographic quotes and apostrophes become ASCII, en dashes and minus signs become `-`,
//!   non-breaking spaces become spaces; runs of whitespace collapse to one space and no space
//!   is left before `, . ; : ? !`.

use std::sync::LazyLock;

use regex::{Captures, Regex};

// ---------------------------------------------------------------------------------------------
// Number words (public helpers)
// ---------------------------------------------------------------------------------------------

/// "zero" to "nineteen".
pub(crate) const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
/// The tens' words, by tens digit ("twenty" at 2; nothing at 0 and 1).
pub(crate) const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
/// The words of each power of a thousand ("thousand" at 1), up to the decillions the G2P's
/// number reading names.
pub(crate) const SCALES: [&str; 12] = [
    "",
    "thousand",
    "million",
    "billion",
    "trillion",
    "quadrillion",
    "quintillion",
    "sextillion",
    "septillion",
    "octillion",
    "nonillion",
    "decillion",
];

/// Words for 1..=999 ("one hundred twenty-three").
fn below_thousand(n: u64) -> String {
    let (hundreds, rest) = (n / 100, n % 100);
    let mut out = String::new();
    if hundreds > 0 {
        out.push_str(ONES[hundreds as usize]);
        out.push_str(" hundred");
    }
    if rest > 0 {
        if !out.is_empty() {
            out.push(' ');
        }
        if rest < 20 {
            out.push_str(ONES[rest as usize]);
        } else {
            out.push_str(TENS[(rest / 10) as usize]);
            if rest % 10 > 0 {
                out.push('-');
                out.push_str(ONES[(rest % 10) as usize]);
            }
        }
    }
    out
}

/// The cardinal number in words, American style without "and":
/// `1250` → "one thousand two hundred fifty", `0` → "zero".
pub fn cardinal(n: u64) -> String {
    if n == 0 {
        return ONES[0].to_string();
    }
    let mut groups = Vec::with_capacity(7);
    let mut m = n;
    while m > 0 {
        groups.push(m % 1000);
        m /= 1000;
    }
    let mut parts: Vec<String> = Vec::new();
    for (i, &g) in groups.iter().enumerate().rev() {
        if g == 0 {
            continue;
        }
        parts.push(below_thousand(g));
        if i > 0 {
            parts.push(SCALES[i].to_string());
        }
    }
    parts.join(" ")
}

/// The ordinal number in words: `1` → "first", `22` → "twenty-second", `103` → "one hundred
/// third".
pub fn ordinal(n: u64) -> String {
    let c = cardinal(n);
    let split = c.rfind([' ', '-']).map_or(0, |i| i + 1);
    let (head, last) = c.split_at(split);
    let last = match last {
        "one" => "first".to_string(),
        "two" => "second".to_string(),
        "three" => "third".to_string(),
        "five" => "fifth".to_string(),
        "eight" => "eighth".to_string(),
        "nine" => "ninth".to_string(),
        "twelve" => "twelfth".to_string(),
        w => match w.strip_suffix('y') {
            Some(stem) => format!("{stem}ieth"),
            None => format!("{w}th"),
        },
    };
    format!("{head}{last}")
}

/// Reads `s` one character at a time: ASCII digits as words ("zero" for 0), ASCII letters as
/// capital letters, `-` as "dash"; everything else (spaces, dots, parentheses) is skipped.
/// `"AB-12"` → "A B dash one two".
pub fn digits(s: &str) -> String {
    let mut words: Vec<String> = Vec::with_capacity(s.len());
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            words.push(ONES[d as usize].to_string());
        } else if c.is_ascii_alphabetic() {
            words.push(c.to_ascii_uppercase().to_string());
        } else if c == '-' {
            words.push("dash".to_string());
        }
    }
    words.join(" ")
}

/// A 4-digit year: "nineteen ninety-nine", "two thousand five", "twenty twenty-six",
/// "nineteen hundred", "nineteen oh five".
fn year_words(n: u64) -> String {
    if (2000..2010).contains(&n) || !(1000..=9999).contains(&n) {
        return cardinal(n);
    }
    let (hi, lo) = (n / 100, n % 100);
    match lo {
        0 => format!("{} hundred", cardinal(hi)),
        1..=9 => format!("{} oh {}", cardinal(hi), cardinal(lo)),
        _ => format!("{} {}", cardinal(hi), cardinal(lo)),
    }
}

/// Plural of a number word phrase's last word ("ninety" → "nineties", "hundred" → "hundreds").
fn plural_number(words: &str) -> String {
    match words.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{words}s"),
    }
}

/// An integer digit string (commas allowed) as a cardinal, or digit by digit if it does not
/// fit in a `u64`.
fn int_words(s: &str) -> String {
    let plain: String = s.chars().filter(|c| *c != ',').collect();
    match plain.parse::<u64>() {
        Ok(n) => cardinal(n),
        Err(_) => digits(&plain),
    }
}

/// A number as written (`1,250`, `2.5`, `.5`) in words; decimals read digit by digit after
/// "point". Dotted versions (`2.10.3`) read each part as a number: "two point ten point three".
fn number_words(s: &str) -> String {
    if s.matches('.').count() > 1 {
        return s
            .split('.')
            .map(int_words)
            .collect::<Vec<_>>()
            .join(" point ");
    }
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let mut out = if int.is_empty() {
        String::new()
    } else {
        int_words(int)
    };
    if let Some(f) = frac {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("point ");
        out.push_str(&digits(f));
    }
    out
}

fn parse_u64(s: &str) -> Option<u64> {
    let plain: String = s.chars().filter(|c| *c != ',').collect();
    plain.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Small text helpers
// ---------------------------------------------------------------------------------------------

/// `repl` with its first letter capitalised when `src` starts with a capital.
fn match_case(src: &str, repl: &str) -> String {
    let upper = src.chars().next().is_some_and(char::is_uppercase);
    let mut chars = repl.chars();
    match chars.next() {
        Some(first) if upper && first.is_lowercase() => first.to_uppercase().chain(chars).collect(),
        _ => repl.to_string(),
    }
}

/// Whether an abbreviation's consumed full stop also ended the sentence: at the end of the
/// text, or (for abbreviations that can end a sentence) before a capitalised word.
fn keeps_stop(after: &str, can_end_sentence: bool) -> bool {
    let rest = after.trim_start();
    if rest.is_empty() {
        return true;
    }
    can_end_sentence
        && after.starts_with(char::is_whitespace)
        && rest.chars().next().is_some_and(char::is_uppercase)
}

fn last_char(s: &str) -> Option<char> {
    s.chars().next_back()
}

fn first_char(s: &str) -> Option<char> {
    s.chars().next()
}

/// The word before a match, lowercased and without punctuation.
fn prev_word(before: &str) -> String {
    before
        .split_whitespace()
        .next_back()
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// Whether `after` continues a number (`.5`, `,000`, `-3`, `/2`, `:30`) or a word.
fn continues_number(after: &str) -> bool {
    let mut chars = after.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => true,
        Some('.' | ',' | '-' | '/' | ':') => chars.next().is_some_and(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// Whether `before` ends inside a number or word (so a match starting here is a fragment).
fn ends_in_token(before: &str) -> bool {
    let mut chars = before.chars().rev();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => true,
        Some('.' | ',' | '-' | '/' | ':' | '+') => {
            chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

fn group<'t>(caps: &Captures<'t>, name: &str) -> Option<&'t str> {
    caps.name(name).map(|m| m.as_str())
}

/// Replaces the matches of `re` in `text`, left to right. `f` sees the captures, the text
/// before the match and the text after it, and returns the replacement, or `None` to keep the
/// text; after a rejection the search resumes one character after the match start, so a
/// rejected long match does not hide a shorter one inside it.
fn replace(
    re: &Regex,
    text: &str,
    mut f: impl FnMut(&Captures, &str, &str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut pos = 0;
    let mut copied = 0;
    while pos <= text.len() {
        let Some(caps) = re.captures_at(text, pos) else {
            break;
        };
        let Some(m) = caps.get(0) else {
            break;
        };
        let replacement = if m.is_empty() {
            None
        } else {
            f(&caps, &text[..m.start()], &text[m.end()..])
        };
        match replacement {
            Some(r) => {
                out.push_str(&text[copied..m.start()]);
                out.push_str(&r);
                copied = m.end();
                pos = m.end();
            }
            None => {
                pos = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    out.push_str(&text[copied..]);
    out
}

// ---------------------------------------------------------------------------------------------
// Domain tables
// ---------------------------------------------------------------------------------------------

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Month number (1-12) of a month name or abbreviation.
fn month_index(word: &str) -> Option<usize> {
    let w = word.to_lowercase();
    let prefix = w.get(..3)?;
    MONTHS
        .iter()
        .position(|m| m[..3].eq_ignore_ascii_case(prefix))
        .map(|i| i + 1)
}

fn days_in_month(month: usize) -> u64 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// "November twenty-eighth[, twenty twenty-six]" for a valid date, else `None`.
fn date_words(month: usize, day: u64, year: Option<u64>) -> Option<String> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(month) {
        return None;
    }
    let mut out = format!("{} {}", MONTHS[month - 1], ordinal(day));
    if let Some(y) = year {
        out.push_str(", ");
        out.push_str(&year_words(y));
    }
    Some(out)
}

fn valid_year(y: u64) -> bool {
    (1100..=2099).contains(&y)
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn weekday_full(abbr: &str) -> Option<&'static str> {
    let prefix = abbr.get(..3)?;
    WEEKDAYS
        .iter()
        .find(|d| d[..3].eq_ignore_ascii_case(prefix))
        .copied()
}

/// Words before a weekday abbreviation that make it a day ("on Sat").
const WEEKDAY_CUES: [&str; 13] = [
    "on", "every", "from", "until", "till", "through", "thru", "by", "next", "last", "this",
    "before", "after",
];

/// Words before a two-group number that make it a phone number ("call 555-1234").
const PHONE_CUES: [&str; 14] = [
    "call",
    "dial",
    "phone",
    "telephone",
    "tel",
    "fax",
    "text",
    "mobile",
    "cell",
    "hotline",
    "line",
    "number",
    "contact",
    "whatsapp",
];

struct Currency {
    one: &'static str,
    many: &'static str,
    /// Minor unit, singular and plural.
    sub: Option<(&'static str, &'static str)>,
}

fn currency(sign: &str) -> Option<Currency> {
    let c = |one, many, sub| Some(Currency { one, many, sub });
    match sign {
        "$" | "USD" => c("dollar", "dollars", Some(("cent", "cents"))),
        "€" | "EUR" => c("euro", "euros", Some(("cent", "cents"))),
        "£" | "GBP" => c("pound", "pounds", Some(("penny", "pence"))),
        "¥" | "JPY" => c("yen", "yen", None),
        "₹" | "INR" => c("rupee", "rupees", Some(("paisa", "paise"))),
        "CAD" => c(
            "Canadian dollar",
            "Canadian dollars",
            Some(("cent", "cents")),
        ),
        "AUD" => c(
            "Australian dollar",
            "Australian dollars",
            Some(("cent", "cents")),
        ),
        "CHF" => c("Swiss franc", "Swiss francs", Some(("centime", "centimes"))),
        _ => None,
    }
}

/// A money scale word or suffix (`million`, `m`, `bn`, `k`) as a word.
fn money_scale(s: &str) -> Option<&'static str> {
    match s {
        "thousand" | "k" | "K" => Some("thousand"),
        "million" | "m" | "M" | "mn" => Some("million"),
        "billion" | "b" | "B" | "bn" => Some("billion"),
        "trillion" => Some("trillion"),
        _ => None,
    }
}

/// An amount of money in words, or `None` if the amount does not parse.
fn money_words(amount: &str, scale: Option<&str>, cur: &Currency) -> Option<String> {
    if let Some(scale) = scale {
        return Some(format!("{} {scale} {}", number_words(amount), cur.many));
    }
    let (int, frac) = match amount.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (amount, None),
    };
    let major = parse_u64(int)?;
    let major_words = |n: u64| {
        format!(
            "{} {}",
            cardinal(n),
            if n == 1 { cur.one } else { cur.many }
        )
    };
    match (frac, cur.sub) {
        (None, _) => Some(major_words(major)),
        (Some(f), Some((sub_one, sub_many))) if f.len() <= 2 => {
            let minor = f.parse::<u64>().ok()? * if f.len() == 1 { 10 } else { 1 };
            let minor_words = format!(
                "{} {}",
                cardinal(minor),
                if minor == 1 { sub_one } else { sub_many }
            );
            Some(match (major, minor) {
                (_, 0) => major_words(major),
                (0, _) => minor_words,
                _ => format!("{} and {minor_words}", major_words(major)),
            })
        }
        (Some(_), _) => Some(format!("{} {}", number_words(amount), cur.many)),
    }
}

/// A clock time in words (see the module docs), or `None` if it is not a valid time.
/// `marker` is 'a' or 'p' when the text said am/pm; `h24` says the 24-hour clock.
fn time_words(
    h: u64,
    m: Option<u64>,
    s: Option<u64>,
    marker: Option<char>,
    h24: bool,
) -> Option<String> {
    if m.is_some_and(|m| m > 59) || s.is_some_and(|s| s > 59) {
        return None;
    }
    let (hour, marker) = match marker {
        Some(mk) => {
            if !(1..=12).contains(&h) {
                return None;
            }
            (h, Some(mk))
        }
        None if h24 => {
            if h > 23 {
                return None;
            }
            let hour = if h.is_multiple_of(12) { 12 } else { h % 12 };
            (hour, Some(if h < 12 { 'a' } else { 'p' }))
        }
        None => {
            if h > 12 {
                return None;
            }
            (if h == 0 { 12 } else { h }, None)
        }
    };
    let minutes = m.unwrap_or(0);
    if hour == 12 && minutes == 0 && s.unwrap_or(0) == 0 {
        match marker {
            Some('p') => return Some("twelve noon".to_string()),
            Some(_) => return Some("twelve midnight".to_string()),
            None => {}
        }
    }
    let mut out = cardinal(hour);
    match minutes {
        0 if marker.is_none() && m.is_some() => out.push_str(" o'clock"),
        0 => {}
        1..=9 => {
            out.push_str(" oh ");
            out.push_str(&cardinal(minutes));
        }
        _ => {
            out.push(' ');
            out.push_str(&cardinal(minutes));
        }
    }
    match marker {
        Some('p') => out.push_str(" P M"),
        Some(_) => out.push_str(" A M"),
        None => {}
    }
    if let Some(sec) = s.filter(|s| *s > 0) {
        out.push_str(&format!(
            " and {} second{}",
            cardinal(sec),
            if sec == 1 { "" } else { "s" }
        ));
    }
    Some(out)
}

/// Reads an e-mail address or URL: letter runs kept, digit runs digit by digit, symbols named.
fn speak_address(s: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut run = String::new();
    let flush = |run: &mut String, words: &mut Vec<String>| {
        if !run.is_empty() {
            words.push(std::mem::take(run));
        }
    };
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            flush(&mut run, &mut words);
            let mut num = String::from(c);
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                num.push(d);
            }
            words.push(digits(&num));
        } else if c.is_alphabetic() {
            run.push(c);
        } else {
            flush(&mut run, &mut words);
            let name = match c {
                '.' => "dot",
                '@' => "at",
                '-' => "dash",
                '_' => "underscore",
                '/' => "slash",
                '+' => "plus",
                ':' => "colon",
                '?' => "question mark",
                '=' => "equals",
                '&' => "and",
                '#' => "hash",
                '%' => "percent",
                '~' => "tilde",
                _ => continue,
            };
            words.push(name.to_string());
        }
    }
    flush(&mut run, &mut words);
    words.join(" ")
}

/// Reads a token mixing letters and digits (`B12`, `MP3`, `Room12`): capitals and short
/// lowercase runs letter by letter, longer words kept, 1-2 digit runs as cardinals, longer
/// digit runs digit by digit.
fn spell_mixed(token: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let bytes = token.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let digit = bytes[i].is_ascii_digit();
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() == digit {
            i += 1;
        }
        let run = &token[start..i];
        if digit {
            words.push(if run.len() <= 2 {
                int_words(run)
            } else {
                digits(run)
            });
        } else if run.len() <= 2 || run.chars().all(|c| c.is_ascii_uppercase()) {
            words.push(digits(run));
        } else {
            words.push(run.to_string());
        }
    }
    words.join(" ")
}

/// Denominator words for a fraction (`4`, plural) → "quarters".
fn denominator(d: u64, plural: bool) -> String {
    let word = match d {
        2 => "half".to_string(),
        4 => "quarter".to_string(),
        _ => ordinal(d),
    };
    match (plural, d) {
        (false, _) => word,
        (true, 2) => "halves".to_string(),
        (true, _) => format!("{word}s"),
    }
}

/// A proper fraction `n/d` with `d <= 10` in words, else `None`.
fn fraction_words(n: u64, d: u64) -> Option<String> {
    if n == 0 || n >= d || !(2..=10).contains(&d) {
        return None;
    }
    Some(format!("{} {}", cardinal(n), denominator(d, n > 1)))
}

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

/// A number as written: `1,250`, `1,250.75`, `42`, `2.5`.
const NUM: &str = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?";
/// An amount written the continental way, `1.234,56` or `12,50` (money only).
const EUNUM: &str = r"\d{1,3}(?:\.\d{3})+(?:,\d{1,2})?|\d+,\d{1,2}";
/// A month name or abbreviation (case checked by the passes: it must be capitalised).
const MONTH: &str = r"(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)";
/// A weekday name or abbreviation.
const WEEKDAY: &str = r"Mon(?:day)?|Tue(?:s(?:day)?)?|Wed(?:nesday)?|Thu(?:rs?(?:day)?)?|Fri(?:day)?|Sat(?:urday)?|Sun(?:day)?";
/// Currency codes read like their symbol.
const CODES: &str = "USD|EUR|GBP|CAD|AUD|JPY|INR|CHF";

/// Every regex, compiled once.
struct Patterns {
    email: Regex,
    url: Regex,
    /// Abbreviation, expansion, whether it can end a sentence.
    abbrevs: Vec<(Regex, &'static str, bool)>,
    street_num: Regex,
    doctor: Regex,
    saint: Regex,
    street_name: Regex,
    weekday: Regex,
    iso_date: Regex,
    num_date: Regex,
    day_month: Regex,
    month_day: Regex,
    month_year: Regex,
    time: Regex,
    ratio: Regex,
    phone: Regex,
    phone_plus: Regex,
    money_sym: Regex,
    money_code_pre: Regex,
    money_code_post: Regex,
    percent: Regex,
    degree: Regex,
    unit: Regex,
    unit_words: Vec<(Regex, &'static str, bool)>,
    plus_after: Regex,
    about: Regex,
    ordinal: Regex,
    ident: Regex,
    decade: Regex,
    mixed: Regex,
    year_range: Regex,
    year_cue: Regex,
    long_digits: Regex,
    range: Regex,
    mixed_frac: Regex,
    frac: Regex,
    number: Regex,
}

impl Patterns {
    fn build() -> Result<Patterns, regex::Error> {
        let re = Regex::new;
        let scale = |i: u8| {
            format!(
                r"(?:\s(?P<w{i}>thousand|million|billion|trillion)\b|(?P<l{i}>k|K|m|M|mn|bn|b|B)\b)"
            )
        };
        let ampm = |i: u8| format!(r"(?:\s*(?P<ap{i}>[AaPp])(?:[Mm]\b|\.\s?[Mm]\b\.?))");
        let clock = |i: u8| {
            format!(
                r"(?P<h{i}>\d{{1,2}})(?:(?P<sep{i}>[:.])(?P<m{i}>\d{{2}}))?(?::(?P<s{i}>\d{{2}}))?{}?",
                ampm(i)
            )
        };
        let abbrev = |pattern: &str, word: &'static str, ends: bool| {
            Regex::new(pattern).map(|r| (r, word, ends))
        };
        Ok(Patterns {
            email: re(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")?,
            url: re(concat!(
                r#"(?i)\b(?:https?://|www\.)[^\s<>"]+"#,
                r#"|\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|org|net|edu|gov|io|co|uk|us|ca|de|fr|eu|info|biz|app|dev|ai|me|tv|ly)\b(?:/[^\s<>"]*)?"#
            ))?,
            abbrevs: vec![
                abbrev(r"(?i)\be\.\s?g\.", "for example", false)?,
                abbrev(r"(?i)\bi\.\s?e\.", "that is", false)?,
                abbrev(r"(?i)\betc\b\.?", "et cetera", true)?,
                abbrev(r"(?i)\bapprox\b\.?", "approximately", false)?,
                abbrev(r"(?i)\bvs\b\.?", "versus", false)?,
                abbrev(r"\b(?:Apt\b\.?|apt\.)", "apartment", true)?,
                abbrev(r"\b(?:Ste\b\.?|ste\.)", "suite", true)?,
                abbrev(r"(?i)\bincl\b\.", "including", false)?,
                abbrev(r"\b(?:Dept\b\.?|dept\.)", "department", true)?,
                abbrev(r"\bMrs\b\.?", "Missus", false)?,
                abbrev(r"\bMr\b\.?", "Mister", false)?,
                abbrev(r"\bMs\b\.?", "Miz", false)?,
                abbrev(r"\bw/o\b", "without", false)?,
                abbrev(r"(?i)\btel\b\.", "telephone", false)?,
            ],
            street_num: re(
                r"\b(?P<pre>\d+[A-Za-z]?\s+(?:[A-Z][A-Za-z'-]*\.?\s+){1,3})(?P<t>St|Ave|Rd|Blvd|Dr|Ln|Ct|Hwy|Pkwy)\b(?P<dot>\.)?",
            )?,
            doctor: re(r"\bDr\b\.?\s+(?P<c>[A-Z])")?,
            saint: re(r"\b(?P<a>St|Mt)\b\.?\s+(?P<c>[A-Z])")?,
            street_name: re(r"\b(?P<pre>[A-Z][a-z]+\s+)(?P<t>St|Ave|Rd|Blvd|Dr|Ln)\b(?P<dot>\.)?")?,
            weekday: re(&format!(
                r"\b(?P<a>{WEEKDAY})\b(?P<adot>\.)?(?:\s*(?:-|to|through|thru)\s*(?P<b>{WEEKDAY})\b(?P<bdot>\.)?)?"
            ))?,
            iso_date: re(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b")?,
            num_date: re(
                r"\b(?P<a>\d{1,2})(?P<s1>[/.-])(?P<b>\d{1,2})(?P<s2>[/.-])(?P<y>\d{4}|\d{2})\b",
            )?,
            day_month: re(&format!(
                r"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<of>of\s+)?(?P<m>{MONTH})\b(?P<dot>\.)?(?:,?\s+(?P<y>\d{{4}})\b)?"
            ))?,
            month_day: re(&format!(
                r"\b(?P<m>{MONTH})\b\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\b(?:\s?-\s?(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\b)?(?:,?\s+(?P<y>\d{{4}})\b)?"
            ))?,
            month_year: re(&format!(r"\b(?P<m>{MONTH})\b\.?,?\s+(?P<y>\d{{4}})\b"))?,
            time: re(&format!(
                r"\b(?:{}\s*(?P<conn>-|to|until|till|through)\s*)?{}",
                clock(1),
                clock(2)
            ))?,
            ratio: re(r"\b(?P<a>\d+):(?P<b>\d+)\b")?,
            phone: re(
                r"(?:(?P<plus>\+)\s?(?P<cc>\d{1,3})[ .-]?)?(?:\((?P<area>\d{1,5})\)[ .-]?|\b\d{1,5}[ .-])(?:\d{2,5}[ .-]){0,3}\d{2,5}\b",
            )?,
            phone_plus: re(r"\+(?P<d>\d{7,15})\b")?,
            money_sym: re(&format!(
                r"(?P<neg>-)?(?:US)?(?P<sym>[$€£¥₹])\s?(?:(?P<e1>{EUNUM})\b|(?P<a1>{NUM})){}?(?:\s?(?:-|to)\s?(?:US)?[$€£¥₹]?\s?(?P<a2>{NUM}){}?)?",
                scale(1),
                scale(2)
            ))?,
            money_code_pre: re(&format!(r"\b(?P<sym>{CODES})\s?(?P<a1>{NUM}){}?", scale(1)))?,
            money_code_post: re(&format!(
                r"(?P<neg>-)?\b(?:(?P<e1>{EUNUM})\b|(?P<a1>{NUM})){}?\s?(?:(?P<sym>{CODES})\b|(?P<sym2>€))",
                scale(1)
            ))?,
            percent: re(r"(?P<n>\d)\s?%")?,
            degree: re(r"\s?°\s?(?P<u>[CF]\b)?")?,
            unit: re(&format!(
                r"\b(?P<n>{NUM})(?P<sp>\s?)(?P<u>km/h|mins|min|hrs|hr|h|secs|sec|ms|wks|wk|yrs|yr|mos|km|kg|cm|mm|mi|lbs|lb|oz|ft|GB|MB|TB|KB|kB|Mbps|GHz|MHz|mph|kph|x|k)\b(?P<dot>\.)?"
            ))?,
            unit_words: vec![
                abbrev(r"\bhrs\b\.?", "hours", true)?,
                abbrev(r"\bhr\b\.?", "hour", true)?,
                abbrev(r"\bmins\b\.?", "minutes", true)?,
                abbrev(r"\bsecs\b\.?", "seconds", true)?,
            ],
            plus_after: re(r"(?P<n>\d)\+")?,
            about: re(r"~\s?(?P<n>\d)")?,
            ordinal: re(r"\b(?P<n>\d{1,3}(?:,\d{3})+|\d+)(?:st|nd|rd|th|ST|ND|RD|TH)\b")?,
            ident: re(concat!(
                r"(?i)(?P<cue>\b(?:order|reference|ref|ticket|case|account|invoice|tracking|confirmation",
                r"|booking|reservation|policy|claim|serial|member|code|pin|extension|ext|id|number|num|dial)\b\.?",
                r"(?:\s+(?:number\b|num\b\.?|no\.|code\b|id\b))?",
                r"|\bno\.|\b(?:ending|ends)\s+(?:in|with)\b|#)",
                r"(?P<mid>\s*:\s*|\s+(?:is|was)\s*:?\s*|\s*)(?P<hash>#\s*)?",
                r"(?P<id>(?:[a-z0-9]+-)*[a-z0-9]*\d[a-z0-9]*(?:-[a-z0-9]+)*)\b"
            ))?,
            decade: re(r"(?P<ap>')?\b(?P<n>\d{2}|\d{4})s\b")?,
            mixed: re(r"\b(?:[A-Za-z]+\d|\d+[A-Za-z])[A-Za-z0-9]*\b")?,
            year_range: re(r"\b(?P<a>\d{4})\s?-\s?(?P<b>\d{4})\b")?,
            year_cue: re(r"(?i)\b(?P<cue>in|since|of|year|until|till|during)\s+(?P<y>\d{4})\b")?,
            long_digits: re(r"(?P<plus>\+)?\b(?P<d>\d{5,})\b")?,
            range: re(&format!(r"\b(?P<a>{NUM})\s?-\s?(?P<b>{NUM})\b"))?,
            mixed_frac: re(r"\b(?P<w>\d+)\s+(?P<n>\d+)/(?P<d>\d+)\b")?,
            frac: re(r"\b(?P<n>\d+)/(?P<d>\d+)\b")?,
            number: re(&format!(
                r"(?P<neg>-)?(?:\b(?P<n>\d+(?:\.\d+){{2,}}|{NUM})|\.(?P<f>\d+))"
            ))?,
        })
    }
}

static PATTERNS: LazyLock<Result<Patterns, regex::Error>> = LazyLock::new(Patterns::build);

// ---------------------------------------------------------------------------------------------
// Passes
// ---------------------------------------------------------------------------------------------

type Pass = fn(&Patterns, &str) -> String;

/// The passes, in order: specific readings first, general numbers last.
const PASSES: [(&str, Pass); 22] = [
    ("addresses", pass_addresses),
    ("abbreviations", pass_abbreviations),
    ("streets and titles", pass_streets),
    ("symbols", pass_symbols),
    ("weekdays", pass_weekdays),
    ("dates", pass_dates),
    ("times", pass_times),
    ("phone numbers", pass_phones),
    ("money", pass_money),
    ("percent and degrees", pass_percent_degrees),
    ("units", pass_units),
    ("ordinals", pass_ordinals),
    ("identifiers", pass_identifiers),
    ("decades", pass_decades),
    ("mixed tokens", pass_mixed),
    ("years", pass_years),
    ("long digit runs", pass_long_digits),
    ("ranges", pass_ranges),
    ("fractions", pass_fractions),
    ("numbers", pass_numbers),
    ("leftover digits", pass_leftover_digits),
    ("leftover symbols", pass_leftover_symbols),
];

/// Normalises a bot reply for speech synthesis (see the module docs). Total: any input gives a
/// string without ASCII digits.
pub fn normalize(text: &str) -> String {
    let mut s = clean(text);
    match PATTERNS.as_ref() {
        Ok(p) => {
            for (_, pass) in PASSES {
                s = pass(p, &s);
            }
        }
        // Unreachable with the fixed patterns (a test builds them), but stay total.
        Err(_) => s = spell_digit_runs(&s),
    }
    tidy(&s)
}

/// Typographic quotes and apostrophes to ASCII, en dashes and minus signs to `-`, exotic
/// spaces to plain spaces.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' => '"',
            '\u{2013}' | '\u{2212}' | '\u{2010}' | '\u{2011}' => '-',
            '\u{00A0}' | '\u{202F}' | '\u{2009}' | '\u{2007}' => ' ',
            c => c,
        })
        .collect()
}

/// Whitespace collapsed to single spaces, none before sentence punctuation, ends trimmed.
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        let glue = word.starts_with([',', '.', ';', ':', '?', '!']);
        if !out.is_empty() && !glue {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Any ASCII digit run read digit by digit (the safety net).
fn spell_digit_runs(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut run = String::from(c);
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                run.push(d);
            }
            if last_char(&out).is_some_and(|c| !c.is_whitespace()) {
                out.push(' ');
            }
            out.push_str(&digits(&run));
            if chars.peek().is_some_and(|c| c.is_alphanumeric()) {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// E-mail addresses and URLs: "support at acme dot com"; the scheme is dropped.
fn pass_addresses(p: &Patterns, s: &str) -> String {
    let s = replace(&p.email, s, |c, _, _| Some(speak_address(&c[0])));
    replace(&p.url, &s, |c, before, _| {
        if before.ends_with(['@', '.']) {
            return None;
        }
        let m = &c[0];
        // A trailing sentence mark belongs to the sentence, not the address.
        let core = m.trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '\'', '"']);
        let tail = &m[core.len()..];
        let lower = core.to_ascii_lowercase();
        let body = ["https://", "http://"]
            .iter()
            .find_map(|scheme| lower.starts_with(scheme).then(|| &core[scheme.len()..]))
            .unwrap_or(core);
        let body = body.trim_end_matches('/');
        Some(format!("{}{tail}", speak_address(body)))
    })
}

/// Latin and title abbreviations ("e.g.", "etc.", "Mr.", ...), case kept.
fn pass_abbreviations(p: &Patterns, s: &str) -> String {
    apply_abbrevs(&p.abbrevs, s)
}

fn apply_abbrevs(table: &[(Regex, &'static str, bool)], s: &str) -> String {
    let mut s = s.to_string();
    for (re, word, ends) in table {
        s = replace(re, &s, |c, _, after| {
            let m = &c[0];
            let mut out = match_case(m, word);
            if m.ends_with('.') && keeps_stop(after, *ends) {
                out.push('.');
            }
            Some(out)
        });
    }
    s
}

fn street_word(abbr: &str) -> &'static str {
    match abbr {
        "St" => "Street",
        "Ave" => "Avenue",
        "Rd" => "Road",
        "Blvd" => "Boulevard",
        "Dr" => "Drive",
        "Ln" => "Lane",
        "Ct" => "Court",
        "Hwy" => "Highway",
        _ => "Parkway",
    }
}

/// Street types after a house number and name ("12 Main St." → "Street"), then "Dr." before a
/// name → "Doctor", "St."/"Mt." before a name → "Saint"/"Mount", then street types after a
/// capitalised word ("Elm Dr").
fn pass_streets(p: &Patterns, s: &str) -> String {
    let street = |c: &Captures, after: &str| {
        let mut out = format!(
            "{}{}",
            group(c, "pre").unwrap_or(""),
            street_word(group(c, "t").unwrap_or(""))
        );
        if group(c, "dot").is_some() && keeps_stop(after, true) {
            out.push('.');
        }
        Some(out)
    };
    let s = replace(&p.street_num, s, |c, _, after| street(c, after));
    let s = replace(&p.doctor, &s, |c, _, _| {
        Some(format!("Doctor {}", group(c, "c").unwrap_or("")))
    });
    let s = replace(&p.saint, &s, |c, _, _| {
        let word = if group(c, "a") == Some("Mt") {
            "Mount"
        } else {
            "Saint"
        };
        Some(format!("{word} {}", group(c, "c").unwrap_or("")))
    });
    replace(&p.street_name, &s, |c, _, after| street(c, after))
}

/// `&` → "and", a lone `@` → "at".
fn pass_symbols(_: &Patterns, s: &str) -> String {
    if !s.contains(['&', '@']) {
        return s.to_string();
    }
    s.replace('&', " and ").replace('@', " at ")
}

/// Weekday abbreviations in ranges ("Mon-Fri" → "Monday to Friday"), and before a date or time
/// or after "on", "every", ... ("on Sat" → "on Saturday"); full names in ranges get "to".
fn pass_weekdays(p: &Patterns, s: &str) -> String {
    replace(&p.weekday, s, |c, before, after| {
        let a = group(c, "a")?;
        let full_a = weekday_full(a)?;
        if let Some(b) = group(c, "b") {
            let mut out = format!("{full_a} to {}", weekday_full(b)?);
            if group(c, "bdot").is_some() && keeps_stop(after, true) {
                out.push('.');
            }
            return Some(out);
        }
        if a == full_a {
            return None;
        }
        let next = after.trim_start_matches([' ', ',', '.']);
        let next_is_date = next.starts_with(|c: char| c.is_ascii_digit())
            || (next.starts_with(|c: char| c.is_uppercase())
                && next
                    .split(|c: char| !c.is_alphabetic())
                    .next()
                    .and_then(month_index)
                    .is_some());
        if !next_is_date && !WEEKDAY_CUES.contains(&prev_word(before).as_str()) {
            return None;
        }
        let mut out = full_a.to_string();
        if group(c, "adot").is_some() && keeps_stop(after, true) {
            out.push('.');
        }
        Some(out)
    })
}

/// ISO dates, numeric dates (US order unless the first field is over 12; dots day first),
/// "28 November [2026]", "the 28th of November", "Nov 28[, 2026]", "November 2026".
fn pass_dates(p: &Patterns, s: &str) -> String {
    let s = replace(&p.iso_date, s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let y = parse_u64(group(c, "y")?)?;
        let m = parse_u64(group(c, "m")?)? as usize;
        let d = parse_u64(group(c, "d")?)?;
        date_words(m, d, valid_year(y).then_some(y)).filter(|_| valid_year(y))
    });
    let s = replace(&p.num_date, &s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let sep = group(c, "s1")?;
        let y_text = group(c, "y")?;
        if Some(sep) != group(c, "s2") || (sep == "." && y_text.len() != 4) {
            return None;
        }
        let a = parse_u64(group(c, "a")?)?;
        let b = parse_u64(group(c, "b")?)?;
        let mut y = parse_u64(y_text)?;
        if y_text.len() == 2 {
            y += if y < 70 { 2000 } else { 1900 };
        }
        if !valid_year(y) {
            return None;
        }
        let (month, day) = if sep == "." || a > 12 { (b, a) } else { (a, b) };
        date_words(month as usize, day, Some(y))
    });
    let s = replace(&p.day_month, &s, |c, before, after| {
        let m = group(c, "m")?;
        if !m.starts_with(char::is_uppercase) || ends_in_token(before) {
            return None;
        }
        let month = month_index(m)?;
        let day = parse_u64(group(c, "d")?)?;
        let year = match group(c, "y") {
            Some(y) => Some(parse_u64(y).filter(|y| valid_year(*y))?),
            None => None,
        };
        let mut out = if group(c, "of").is_some() {
            date_words(month, day, None)?;
            let mut out = format!("{} of {}", ordinal(day), MONTHS[month - 1]);
            if let Some(y) = year {
                out.push_str(&format!(", {}", year_words(y)));
            }
            out
        } else {
            date_words(month, day, year)?
        };
        if year.is_none() && group(c, "dot").is_some() && keeps_stop(after, true) {
            out.push('.');
        }
        Some(out)
    });
    let s = replace(&p.month_day, &s, |c, _, after| {
        let m = group(c, "m")?;
        if !m.starts_with(char::is_uppercase) || continues_number(after) {
            return None;
        }
        let month = month_index(m)?;
        let day = parse_u64(group(c, "d")?)?;
        let year = match group(c, "y") {
            Some(y) => Some(parse_u64(y).filter(|y| valid_year(*y))?),
            None => None,
        };
        match group(c, "d2") {
            Some(d2) => {
                let d2 = parse_u64(d2)?;
                let first = date_words(month, day, None)?;
                date_words(month, d2, None)?;
                let mut out = format!("{first} to {}", ordinal(d2));
                if let Some(y) = year {
                    out.push_str(&format!(", {}", year_words(y)));
                }
                Some(out)
            }
            None => date_words(month, day, year),
        }
    });
    replace(&p.month_year, &s, |c, _, after| {
        let m = group(c, "m")?;
        let y = parse_u64(group(c, "y")?)?;
        if !m.starts_with(char::is_uppercase) || !valid_year(y) || continues_number(after) {
            return None;
        }
        Some(format!("{} {}", MONTHS[month_index(m)? - 1], year_words(y)))
    })
}

/// One side of a time or time range, as matched.
struct Clock<'t> {
    hour_text: &'t str,
    hour: u64,
    minutes: Option<u64>,
    seconds: Option<u64>,
    marker: Option<char>,
}

impl<'t> Clock<'t> {
    /// Side `i` of the match; `None` if it is not a clock time (a dotted `9.30` is one only
    /// with am/pm, otherwise it is a decimal).
    fn from(c: &Captures<'t>, i: u8) -> Option<Clock<'t>> {
        let hour_text = group(c, &format!("h{i}"))?;
        let marker = group(c, &format!("ap{i}"))
            .and_then(first_char)
            .map(|c| c.to_ascii_lowercase());
        if group(c, &format!("sep{i}")) == Some(".") && marker.is_none() {
            return None;
        }
        Some(Clock {
            hour_text,
            hour: parse_u64(hour_text)?,
            minutes: group(c, &format!("m{i}")).and_then(parse_u64),
            seconds: group(c, &format!("s{i}")).and_then(parse_u64),
            marker,
        })
    }

    /// Written as a time (with minutes or am/pm), not a bare number.
    fn is_time(&self) -> bool {
        self.minutes.is_some() || self.marker.is_some()
    }

    /// Written on the 24-hour clock.
    fn is_24h(&self) -> bool {
        self.marker.is_none()
            && self.minutes.is_some()
            && (self.hour == 0 || self.hour > 12 || self.hour_text.starts_with('0'))
    }

    fn words(&self, h24: bool) -> Option<String> {
        time_words(
            self.hour,
            self.minutes,
            self.seconds,
            self.marker,
            h24 && self.marker.is_none(),
        )
    }
}

/// Clock times and time ranges ("9:30 pm", "17:45", "9am-5pm"); bare numbers are left to the
/// number passes. A colon between numbers that is no time is a ratio ("16:9" → "16 to 9").
fn pass_times(p: &Patterns, s: &str) -> String {
    let s = replace(&p.time, s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let second = Clock::from(c, 2)?;
        let first = match c.name("h1") {
            Some(_) => Some(Clock::from(c, 1)?),
            None => None,
        };
        let mut out = match first {
            Some(first) => {
                if !first.is_time() && !second.is_time() {
                    return None;
                }
                let h24 = first.is_24h() || second.is_24h();
                format!("{} to {}", first.words(h24)?, second.words(h24)?)
            }
            None => {
                if !second.is_time() {
                    return None;
                }
                second.words(second.is_24h())?
            }
        };
        if c[0].ends_with('.') && keeps_stop(after, true) {
            out.push('.');
        }
        Some(out)
    });
    replace(&p.ratio, &s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        Some(format!(
            "{} to {}",
            int_words(group(c, "a")?),
            int_words(group(c, "b")?)
        ))
    })
}

/// Phone numbers: digit by digit, groups separated by commas, "+" → "plus".
fn pass_phones(p: &Patterns, s: &str) -> String {
    let s = replace(&p.phone_plus, s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        Some(format!("plus {}", digits(group(c, "d")?)))
    });
    replace(&p.phone, &s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let m = c.get(0)?;
        let cc = c.name("cc");
        let rest = &s[cc.map_or(m.start(), |g| g.end())..m.end()];
        let groups: Vec<&str> = rest
            .split(|ch: char| !ch.is_ascii_digit())
            .filter(|g| !g.is_empty())
            .collect();
        let separators: Vec<&str> = rest
            .split(|ch: char| ch.is_ascii_digit())
            .filter(|g| !g.is_empty())
            .collect();
        let total: usize = groups.iter().map(|g| g.len()).sum();
        if groups.len() < 2 || total < 7 {
            return None;
        }
        let marked = cc.is_some() || c.name("area").is_some();
        let consistent = separators.windows(2).all(|w| w[0] == w[1]);
        let accepted = marked
            || (consistent
                && (groups.len() >= 3
                    || groups[0].starts_with('0')
                    || PHONE_CUES.contains(&prev_word(before).as_str())));
        if !accepted {
            return None;
        }
        let mut parts: Vec<String> = Vec::with_capacity(groups.len() + 1);
        if let Some(cc) = cc {
            parts.push(format!("plus {}", digits(cc.as_str())));
        }
        parts.extend(groups.iter().map(|g| digits(g)));
        Some(parts.join(", "))
    })
}

/// Money with a symbol or a currency code, with cents, scale words and ranges.
fn pass_money(p: &Patterns, s: &str) -> String {
    let money = |c: &Captures, before: &str| -> Option<String> {
        let cur = currency(group(c, "sym").or(group(c, "sym2"))?)?;
        let scale1 = group(c, "w1").or(group(c, "l1")).and_then(money_scale);
        let continental = group(c, "e1").map(|e| e.replace('.', "").replace(',', "."));
        let a1 = continental.as_deref().or(group(c, "a1"))?;
        let mut out = match group(c, "a2") {
            Some(a2) => {
                let scale2 = group(c, "w2").or(group(c, "l2")).and_then(money_scale);
                let second = money_words(a2, scale2, &cur)?;
                let first = if !a1.contains('.') && (scale1.is_none() || scale1 == scale2) {
                    match scale1 {
                        Some(sc) => format!("{} {sc}", number_words(a1)),
                        None => number_words(a1),
                    }
                } else {
                    money_words(a1, scale1, &cur)?
                };
                format!("{first} to {second}")
            }
            None => money_words(a1, scale1, &cur)?,
        };
        if group(c, "neg").is_some() {
            out = if ends_in_token(&format!("{before}-")) {
                format!("-{out}")
            } else {
                format!("minus {out}")
            };
        }
        Some(out)
    };
    let s = replace(&p.money_sym, s, |c, before, after| {
        if continues_number(after) {
            return None;
        }
        money(c, before)
    });
    let s = replace(&p.money_code_pre, &s, |c, before, after| {
        if continues_number(after) {
            return None;
        }
        money(c, before)
    });
    replace(&p.money_code_post, &s, |c, before, _| {
        if ends_in_token(before) {
            return None;
        }
        money(c, before)
    })
}

/// "15%" → "15 percent", "72°F" → "72 degrees Fahrenheit" (the numbers are read later;
/// "degree" is singular after a lone "1").
fn pass_percent_degrees(p: &Patterns, s: &str) -> String {
    let s = p.percent.replace_all(s, "$n percent").into_owned();
    replace(&p.degree, &s, |c, before, _| {
        let number = before.split_whitespace().next_back().unwrap_or("");
        let mut out = String::from(if number == "1" || number == "-1" {
            " degree"
        } else {
            " degrees"
        });
        match group(c, "u") {
            Some("C") => out.push_str(" Celsius"),
            Some("F") => out.push_str(" Fahrenheit"),
            _ => {}
        }
        out.push(' ');
        Some(out)
    })
}

/// Unit words for a unit abbreviation: (singular, plural, must be glued to the number).
fn unit_word(u: &str) -> Option<(&'static str, &'static str, bool)> {
    Some(match u {
        "min" | "mins" => ("minute", "minutes", false),
        "hr" | "hrs" => ("hour", "hours", false),
        "h" => ("hour", "hours", true),
        "sec" | "secs" => ("second", "seconds", false),
        "ms" => ("millisecond", "milliseconds", false),
        "wk" | "wks" => ("week", "weeks", false),
        "yr" | "yrs" => ("year", "years", false),
        "mos" => ("month", "months", false),
        "km" => ("kilometer", "kilometers", false),
        "kg" => ("kilogram", "kilograms", false),
        "cm" => ("centimeter", "centimeters", false),
        "mm" => ("millimeter", "millimeters", false),
        "mi" => ("mile", "miles", false),
        "lb" | "lbs" => ("pound", "pounds", false),
        "oz" => ("ounce", "ounces", false),
        "ft" => ("foot", "feet", false),
        "GB" => ("gigabyte", "gigabytes", false),
        "MB" => ("megabyte", "megabytes", false),
        "TB" => ("terabyte", "terabytes", false),
        "KB" | "kB" => ("kilobyte", "kilobytes", false),
        "Mbps" => ("megabit per second", "megabits per second", false),
        "GHz" => ("gigahertz", "gigahertz", false),
        "MHz" => ("megahertz", "megahertz", false),
        "mph" => ("mile per hour", "miles per hour", false),
        "kph" | "km/h" => ("kilometer per hour", "kilometers per hour", false),
        "x" => ("time", "times", true),
        "k" => ("thousand", "thousand", true),
        _ => return None,
    })
}

/// Units after a number ("5 min" → "5 minutes", "24h", "2x", "10k"), then the plural unit
/// abbreviations on their own ("hrs" → "hours"); also "18+" → "18 plus", "~5" → "about 5".
fn pass_units(p: &Patterns, s: &str) -> String {
    let s = replace(&p.unit, s, |c, before, after| {
        if last_char(before).is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '.') {
            return None;
        }
        let n = group(c, "n")?;
        let (one, many, glued) = unit_word(group(c, "u")?)?;
        if glued && !group(c, "sp").unwrap_or("").is_empty() {
            return None;
        }
        let mut out = format!("{n} {}", if n == "1" { one } else { many });
        if group(c, "dot").is_some() && keeps_stop(after, true) {
            out.push('.');
        }
        Some(out)
    });
    let s = apply_abbrevs(&p.unit_words, &s);
    let s = p.plus_after.replace_all(&s, "$n plus ");
    p.about.replace_all(&s, "about $n").into_owned()
}

/// Ordinals: "22nd" → "twenty-second".
fn pass_ordinals(p: &Patterns, s: &str) -> String {
    replace(&p.ordinal, s, |c, before, _| {
        if ends_in_token(before) {
            return None;
        }
        Some(ordinal(parse_u64(group(c, "n")?)?))
    })
}

/// Identifiers after a cue word: character by character ("order 4471" → "order four four seven
/// one", "#A1234" → "number A one two three four"); a 1-2 digit number is a cardinal.
fn pass_identifiers(p: &Patterns, s: &str) -> String {
    replace(&p.ident, s, |c, before, _| {
        let cue = group(c, "cue")?;
        let id = group(c, "id")?;
        if cue.eq_ignore_ascii_case("case") && prev_word(before) == "in" {
            return None;
        }
        if cue == "#" && ends_in_token(before) {
            return None;
        }
        let words: Vec<String> = cue
            .split_whitespace()
            .map(|w| {
                let plain = w.trim_end_matches('.').to_ascii_lowercase();
                match plain.as_str() {
                    "no" | "num" | "#" => match_case(w, "number"),
                    "ext" => match_case(w, "extension"),
                    "ref" => match_case(w, "reference"),
                    _ => w.to_string(),
                }
            })
            .collect();
        let cue_words = words.join(" ");
        let says_number = cue_words.to_ascii_lowercase().ends_with("number");
        let mid = group(c, "mid").unwrap_or("");
        let hash = if group(c, "hash").is_some() && !says_number {
            " number"
        } else {
            ""
        };
        let id_words = if id.len() <= 2 && id.chars().all(|ch| ch.is_ascii_digit()) {
            int_words(id)
        } else {
            digits(id)
        };
        Some(format!("{cue_words}{mid}{hash} {id_words}"))
    })
}

/// Decades: "1990s" → "nineteen nineties", "the '80s" → "the eighties".
fn pass_decades(p: &Patterns, s: &str) -> String {
    replace(&p.decade, s, |c, _, _| {
        let text = group(c, "n")?;
        let n = parse_u64(text)?;
        if !n.is_multiple_of(10) {
            return None;
        }
        let words = if text.len() == 2 {
            if n < 20 {
                return None;
            }
            cardinal(n)
        } else {
            if !valid_year(n) {
                return None;
            }
            year_words(n)
        };
        Some(plural_number(&words))
    })
}

/// Tokens mixing letters and digits ("B12", "MP3", "2FA").
fn pass_mixed(p: &Patterns, s: &str) -> String {
    replace(&p.mixed, s, |c, _, _| Some(spell_mixed(&c[0])))
}

/// Years: 4-digit ranges of years ("2020-2024") and a 4-digit number after "in", "since",
/// "of", "year", "until", "till", "during".
fn pass_years(p: &Patterns, s: &str) -> String {
    let s = replace(&p.year_range, s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let a = parse_u64(group(c, "a")?)?;
        let b = parse_u64(group(c, "b")?)?;
        if !(1900..=2099).contains(&a) || !(1900..=2099).contains(&b) || a >= b {
            return None;
        }
        Some(format!("{} to {}", year_words(a), year_words(b)))
    });
    replace(&p.year_cue, &s, |c, _, after| {
        if continues_number(after) {
            return None;
        }
        let y = parse_u64(group(c, "y")?)?;
        if !valid_year(y) {
            return None;
        }
        Some(format!("{} {}", group(c, "cue")?, year_words(y)))
    })
}

/// Bare runs of 5 or more digits: digit by digit.
fn pass_long_digits(p: &Patterns, s: &str) -> String {
    replace(&p.long_digits, s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let plus = if group(c, "plus").is_some() {
            "plus "
        } else {
            ""
        };
        Some(format!("{plus}{}", digits(group(c, "d")?)))
    })
}

/// Number ranges: "2-3" → "2 to 3" read as numbers.
fn pass_ranges(p: &Patterns, s: &str) -> String {
    replace(&p.range, s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        Some(format!(
            "{} to {}",
            number_words(group(c, "a")?),
            number_words(group(c, "b")?)
        ))
    })
}

/// Fractions ("3/4" → "three quarters", "1 1/2" → "one and a half"), "24/7", month/day
/// without a year ("11/28"), otherwise "a slash b".
fn pass_fractions(p: &Patterns, s: &str) -> String {
    let s = replace(&p.mixed_frac, s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let w = parse_u64(group(c, "w")?)?;
        let n = parse_u64(group(c, "n")?)?;
        let d = parse_u64(group(c, "d")?)?;
        fraction_words(n, d)?;
        let frac = if n == 1 {
            format!("a {}", denominator(d, false))
        } else {
            fraction_words(n, d)?
        };
        Some(format!("{} and {frac}", cardinal(w)))
    });
    replace(&p.frac, &s, |c, before, after| {
        if ends_in_token(before) || continues_number(after) {
            return None;
        }
        let (nt, dt) = (group(c, "n")?, group(c, "d")?);
        let n = parse_u64(nt)?;
        let d = parse_u64(dt)?;
        if (n, d) == (24, 7) {
            return Some("twenty-four seven".to_string());
        }
        fraction_words(n, d)
            .or_else(|| date_words(n as usize, d, None))
            .or_else(|| Some(format!("{} slash {}", int_words(nt), int_words(dt))))
    })
}

/// Cardinals and decimals, with a leading "-" read as "minus" where it is not a hyphen.
fn pass_numbers(p: &Patterns, s: &str) -> String {
    replace(&p.number, s, |c, before, _| {
        let words = match (group(c, "n"), group(c, "f")) {
            (Some(n), _) => number_words(n),
            (None, Some(f)) => {
                if last_char(before).is_some_and(|ch| ch.is_ascii_digit()) {
                    return None;
                }
                format!("point {}", digits(f))
            }
            (None, None) => return None,
        };
        Some(match group(c, "neg") {
            Some(_) if last_char(before).is_some_and(|ch| ch.is_alphanumeric() || ch == ')') => {
                format!("-{words}")
            }
            Some(_) => format!("minus {words}"),
            None => words,
        })
    })
}

/// The safety net: any digit still there is read digit by digit.
fn pass_leftover_digits(_: &Patterns, s: &str) -> String {
    if s.bytes().any(|b| b.is_ascii_digit()) {
        spell_digit_runs(s)
    } else {
        s.to_string()
    }
}

/// Symbols left after the numbers: "%" → "percent", "°" → "degrees", a spaced " = " →
/// "equals".
fn pass_leftover_symbols(_: &Patterns, s: &str) -> String {
    if !s.contains(['%', '°', '=']) {
        return s.to_string();
    }
    s.replace('%', " percent")
        .replace('°', " degrees")
        .replace(" = ", " equals ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile() {
        assert!(PATTERNS.as_ref().is_ok(), "{:?}", PATTERNS.as_ref().err());
    }

    /// (input, expected) for every reading; also the corpus for the no-digit property.
    const CASES: &[(&str, &str)] = &[
        // Cardinals, decimals, negatives, ordinals.
        ("3", "three"),
        ("42", "forty-two"),
        ("1,250", "one thousand two hundred fifty"),
        ("2.5", "two point five"),
        ("-4", "minus four"),
        ("It is -4 outside.", "It is minus four outside."),
        ("999,999,999", "nine hundred ninety-nine million nine hundred ninety-nine thousand nine hundred ninety-nine"),
        ("1,000,000", "one million"),
        ("You have 100 points.", "You have one hundred points."),
        ("1500 points", "one thousand five hundred points"),
        ("1st", "first"),
        ("22nd", "twenty-second"),
        ("103rd", "one hundred third"),
        ("the 11th floor", "the eleventh floor"),
        ("3.14", "three point one four"),
        // Identifiers after cues.
        ("Your order 4471 has shipped", "Your order four four seven one has shipped"),
        ("#A1234", "number A one two three four"),
        ("Order #4471 is ready.", "Order number four four seven one is ready."),
        ("Your order number is 4471.", "Your order number is four four seven one."),
        ("order no. 4471", "order number four four seven one"),
        ("Ticket AB12 was closed.", "Ticket A B one two was closed."),
        ("Reference: XK-2049", "Reference: X K dash two zero four nine"),
        ("Your PIN is 0420.", "Your PIN is zero four two zero."),
        ("ext. 204", "extension two zero four"),
        ("ID 7781", "ID seven seven eight one"),
        ("confirmation code 905", "confirmation code nine zero five"),
        ("TRACKING 1Z999", "TRACKING one Z nine nine nine"),
        ("the card ending in 1999", "the card ending in one nine nine nine"),
        ("case 12", "case twelve"),
        ("Call 4471902", "Call four four seven one nine zero two"),
        // Phone numbers.
        ("+1 555-123-4567", "plus one, five five five, one two three, four five six seven"),
        ("Call (555) 123 4567.", "Call five five five, one two three, four five six seven."),
        ("0800 123 456", "zero eight zero zero, one two three, four five six"),
        ("+44 20 7946 0958", "plus four four, two zero, seven nine four six, zero nine five eight"),
        ("call 555-1234", "call five five five, one two three four"),
        ("+4915112345678", "plus four nine one five one one two three four five six seven eight"),
        // Money.
        ("$42.50", "forty-two dollars and fifty cents"),
        ("$1", "one dollar"),
        ("$0.99", "ninety-nine cents"),
        ("€20", "twenty euros"),
        ("£3.05", "three pounds and five pence"),
        ("USD 15", "fifteen dollars"),
        ("15 USD", "fifteen dollars"),
        ("$1,200", "one thousand two hundred dollars"),
        ("$2.5 million", "two point five million dollars"),
        ("$10-20", "ten to twenty dollars"),
        ("Your balance is -$5.", "Your balance is minus five dollars."),
        ("$1.01", "one dollar and one cent"),
        ("$3m", "three million dollars"),
        // Times.
        ("9:30", "nine thirty"),
        ("9:00", "nine o'clock"),
        ("9:05", "nine oh five"),
        ("Meet at 9.30am.", "Meet at nine thirty A M."),
        ("It weighs 9.30 kg", "It weighs nine point three zero kilograms"),
        ("tel. 0800 123 456", "telephone zero eight zero zero, one two three, four five six"),
        ("9am", "nine A M"),
        ("at 9 a.m. tomorrow", "at nine A M tomorrow"),
        ("9 AM", "nine A M"),
        ("9:30 pm", "nine thirty P M"),
        ("17:45", "five forty-five P M"),
        ("12:00 pm", "twelve noon"),
        ("12am", "twelve midnight"),
        ("9am-5pm", "nine A M to five P M"),
        ("9-5", "nine to five"),
        ("09:00-17:30", "nine A M to five thirty P M"),
        ("We open at 8 a.m.", "We open at eight A M."),
        ("See you at 10 a.m. Thanks!", "See you at ten A M. Thanks!"),
        // Dates.
        ("2026-11-28", "November twenty-eighth, twenty twenty-six"),
        ("Nov 28", "November twenty-eighth"),
        ("November 28", "November twenty-eighth"),
        ("28 November", "November twenty-eighth"),
        ("11/28/2026", "November twenty-eighth, twenty twenty-six"),
        ("28/11/2026", "November twenty-eighth, twenty twenty-six"),
        ("28.11.2026", "November twenty-eighth, twenty twenty-six"),
        ("Nov. 28, 2026", "November twenty-eighth, twenty twenty-six"),
        ("the 28th of November", "the twenty-eighth of November"),
        ("Mon-Fri", "Monday to Friday"),
        ("Open Mon-Fri 9am-5pm.", "Open Monday to Friday nine A M to five P M."),
        ("Sat, Nov 28", "Saturday, November twenty-eighth"),
        ("in November 2026", "in November twenty twenty-six"),
        ("Dec 24-26", "December twenty-fourth to twenty-sixth"),
        ("Monday-Friday", "Monday to Friday"),
        ("on Sat", "on Saturday"),
        // Years and decades.
        ("in 2026", "in twenty twenty-six"),
        ("since 1999", "since nineteen ninety-nine"),
        ("of 2005", "of two thousand five"),
        ("2020-2024", "twenty twenty to twenty twenty-four"),
        ("the 1990s", "the nineteen nineties"),
        // Percent, degrees, symbols, addresses.
        ("15%", "fifteen percent"),
        ("2.5%", "two point five percent"),
        ("10-15%", "ten to fifteen percent"),
        ("72°F", "seventy-two degrees Fahrenheit"),
        ("-5 °C", "minus five degrees Celsius"),
        ("Tom & Jerry", "Tom and Jerry"),
        ("support@acme.com", "support at acme dot com"),
        ("Write to support@acme.com.", "Write to support at acme dot com."),
        ("Visit https://acme.com/help.", "Visit acme dot com slash help."),
        ("www.acme.co.uk", "www dot acme dot co dot uk"),
        ("jane.doe42@mail.example.org", "jane dot doe four two at mail dot example dot org"),
        // Abbreviations.
        ("Bring ID, e.g. a passport.", "Bring ID, for example a passport."),
        ("i.e. tomorrow", "that is tomorrow"),
        ("Shoes, bags, etc.", "Shoes, bags, et cetera."),
        ("Shoes, bags, etc. Anything else?", "Shoes, bags, et cetera. Anything else?"),
        ("approx. 20 min", "approximately twenty minutes"),
        ("Dr. Smith will call.", "Doctor Smith will call."),
        ("Mr. Jones", "Mister Jones"),
        ("Mrs. Jones", "Missus Jones"),
        ("Ms. Jones", "Miz Jones"),
        ("12 Main St.", "twelve Main Street."),
        ("St. Louis", "Saint Louis"),
        ("1 min", "one minute"),
        ("2 hrs", "two hours"),
        ("24 hrs a day", "twenty-four hours a day"),
        ("30 sec", "thirty seconds"),
        ("Apt. 4B", "Apartment four B"),
        ("Lakers vs. Celtics", "Lakers versus Celtics"),
        ("Open 24/7", "Open twenty-four seven"),
        // Ranges and fractions.
        ("2-3 days", "two to three days"),
        ("1/2", "one half"),
        ("3/4", "three quarters"),
        ("1 1/2 cups", "one and a half cups"),
        ("2/3", "two thirds"),
        // Mixed tokens, units.
        ("Gate B12", "Gate B twelve"),
        ("an MP3 file", "an M P three file"),
        ("5GB", "five gigabytes"),
        ("2x faster", "two times faster"),
        ("18+", "eighteen plus"),
        // Mixed sentences.
        (
            "Hi Mr. Smith, your order #A1234 of $42.50 will arrive Mon, Nov 28 between 9am and 5pm.",
            "Hi Mister Smith, your order number A one two three four of forty-two dollars and fifty cents will arrive Monday, November twenty-eighth between nine A M and five P M.",
        ),
        (
            "Invoice INV-2026-0042 is due 2026-12-01.",
            "Invoice I N V dash two zero two six dash zero zero four two is due December first, twenty twenty-six.",
        ),
        ("We're open 8:30-17:00 Mon-Sat.", "We're open eight thirty A M to five P M Monday to Saturday."),
        ("Temperatures of 30-35°C.", "Temperatures of thirty to thirty-five degrees Celsius."),
        ("It is 1° warmer.", "It is one degree warmer."),
        ("Your refund of €1.234,56 is done.", "Your refund of one thousand two hundred thirty-four euros and fifty-six cents is done."),
        ("12,50 €", "twelve euros and fifty cents"),
        ("Version 2.10.3", "Version two point ten point three"),
        ("Please hold for 2-3 min.", "Please hold for two to three minutes."),
        ("Dial 911.", "Dial nine one one."),
        ("Ratio 16:9", "Ratio sixteen to nine"),
        ("Your flight UA123 departs at 06:45.", "Your flight U A one two three departs at six forty-five A M."),
        ("Order 12 pizzas", "Order twelve pizzas"),
        ("100-2000 points", "one hundred to two thousand points"),
        ("Around 10k users.", "Around ten thousand users."),
        ("Up 3.5% since 2019.", "Up three point five percent since twenty nineteen."),
        ("Call me at +33 1 23 45 67 89.", "Call me at plus three three, one, two three, four five, six seven, eight nine."),
        ("5/12/85", "May twelfth, nineteen eighty-five"),
        ("Shipped on 3 Mar.", "Shipped on March third."),
        ("We're #1!", "We're number one!"),
        // Whitespace and quotes.
        ("  Hello \n  world  ", "Hello world"),
        ("It\u{2019}s \u{201C}ready\u{201D}", "It's \"ready\""),
        ("Hello , world", "Hello, world"),
    ];

    /// Texts that must come out exactly as they went in.
    const UNCHANGED: &[&str] = &[
        "",
        "Hello, how can I help you today?",
        "May I have your name, please?",
        "The Sun is out. March on!",
        "Is there anything else; anything at all?",
        "We are open Monday to Friday.",
        "No. That is not right.",
        "Press the pound key.",
        "Your order has shipped!",
        "Case closed: thank you.",
        "It's a short min walk away.",
        "Thanks for calling. Goodbye!",
        "Sat on the mat, the Wed team won.",
        "Press the star key, then hash.",
        "Can you spell that for me?",
        "Your appointment is confirmed: see you soon!",
        "We'll call you back in a few minutes.",
    ];

    #[test]
    fn readings() {
        let mut failures = Vec::new();
        for (input, expected) in CASES {
            let got = normalize(input);
            if got != *expected {
                failures.push(format!("{input:?}\n   got {got:?}\n  want {expected:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(cardinal(0), "zero");
        assert_eq!(cardinal(7_000_015), "seven million fifteen");
        assert_eq!(
            cardinal(u64::MAX),
            "eighteen quintillion four hundred forty-six quadrillion seven hundred forty-four \
             trillion seventy-three billion seven hundred nine million five hundred fifty-one \
             thousand six hundred fifteen"
        );
        assert_eq!(ordinal(12), "twelfth");
        assert_eq!(ordinal(20), "twentieth");
        assert_eq!(ordinal(1000), "one thousandth");
        assert_eq!(ordinal(101), "one hundred first");
        assert_eq!(digits("A-07b"), "A dash zero seven B");
        assert_eq!(year_words(2026), "twenty twenty-six");
        assert_eq!(year_words(1905), "nineteen oh five");
        assert_eq!(year_words(2000), "two thousand");
        assert_eq!(year_words(1500), "fifteen hundred");
        assert_eq!(
            number_words("12345678901234567890123"),
            digits("12345678901234567890123")
        );
    }

    /// A tiny deterministic generator, so the property test needs no dependency.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % bound as u64) as usize
        }
    }

    #[test]
    fn never_leaves_a_digit() {
        let mut texts: Vec<String> = CASES.iter().map(|(i, _)| i.to_string()).collect();
        texts.extend(UNCHANGED.iter().map(|t| t.to_string()));
        let alphabet: Vec<char> = "0123456789012345 aAmMpP.,:-/$€£%#@&+°()x'kst\n"
            .chars()
            .collect();
        let mut rng = Lcg(42);
        for _ in 0..3000 {
            let len = 1 + rng.next(40);
            texts.push(
                (0..len)
                    .map(|_| alphabet[rng.next(alphabet.len())])
                    .collect(),
            );
        }
        texts.push("9".repeat(400));
        texts.push("1,".repeat(200));
        texts.push("$".repeat(50) + &"9.".repeat(50));
        for t in &texts {
            let out = normalize(t);
            assert!(!out.bytes().any(|b| b.is_ascii_digit()), "{t:?} -> {out:?}");
            assert_eq!(out, out.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }

    #[test]
    fn unchanged() {
        for input in UNCHANGED {
            assert_eq!(normalize(input), *input);
        }
        assert_eq!(normalize("   "), "");
    }
}

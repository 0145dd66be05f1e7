//! Grapheme to phoneme for the neural voice: normalised English text to the phoneme string
//! hibari's acoustic model reads, and that string to model ids.
//!
//! # Why a port
//!
//! hibari was distilled from Kokoro-82M, which hears misaki's phonemes; any other G2P (espeak-ng,
//! a CMUdict lookup) feeds the model readings and stress it was never trained on, and it
//! mispronounces. So this is a port of hibari-tts 0.2.1's g2p (Apache-2.0, Maureese Williams),
//! itself a port of misaki 0.9.4 (Apache-2.0, hexgrad); tokenizer rules from spaCy (MIT). See
//! NOTICE. The output matches the Python `hibari.g2p.G2P` character for character on the golden
//! file in `testdata/` (made by `testdata/make_golden.py`).
//!
//! # Pipeline (one sentence)
//!
//! 1. `tokenize`: spaCy's English tokenizer rules (special cases, prefixes, suffixes,
//!    infixes), whitespace remembered per token.
//! 2. `tagger`: an averaged-perceptron POS tagger; the lexicon reads heteronyms by tag.
//! 3. Retokenizing: each token splits into subtokens (camelCase, digit groups, hyphens);
//!    punctuation gets its phoneme characters; subtokens not separated by whitespace form a
//!    group that is first looked up whole ("don't"), then piecewise.
//! 4. Right to left, with a `lexicon::Ctx` saying whether the next word starts with a vowel
//!    ("the apple" vs "the pear") or is "to": `lexicon` (gold, then silver dictionary,
//!    special words, spelled acronyms, -s/-ed/-ing stems, numbers), else the fallback: letters
//!    through the OOV net (`oov`), digits through the number reader, symbols from a table.
//! 5. Stress balancing inside a group, then `ɾ` -> `T` and `ʔ` -> `t` (the model's symbols).
//!
//! hibari's own text normaliser (`g2p/normalize.py`) is not ported: `crate::speech::normalize`
//! runs before this and spells out money, times and dates. Digits that still arrive are read
//! with misaki's number rules (ported in `numbers` and the lexicon): 4-digit numbers as years,
//! others as cardinals, digit groups after a non-digit piece digit by digit.
//!
//! Only US English; hibari's British lexicon and OOV net are not loaded.
//!
//! # Known differences from the Python
//!
//! None on the golden file or on 21k differential lines (random lexicon words, every tokenizer
//! special case, numbers, currency, symbols, URLs, camelCase, accented words). By construction:
//! Unicode NFKC is a subset (ligatures, full-width ASCII, superscript digits, spaces, accent
//! composition for Latin-1 vowels); Python's Unicode classes (`\w`, `\d`, `isalpha`) are
//! approximated with Rust's `char` properties, which differ only outside Latin text;
//! non-ASCII digits are not turned into numbers; digit strings past decillions are read digit
//! by digit (Python raises); where the Python raises on odd input, this returns phonemes.

mod lexicon;
mod numbers;
mod oov;
mod pystr;
mod tagger;
mod token;
mod tokenize;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use regex::Regex;
use serde::de::DeserializeOwned;

use self::lexicon::{apply_stress, stress_weight, Ctx, Entry, Lexicon};
use self::lexicon::{CONSONANTS, CURRENCIES, PRIMARY_STRESS, VOWELS};
use self::oov::Oov;
use self::pystr::{is_decimal, is_letter, is_lo, is_up, is_word};
use self::tagger::Tagger;
use self::token::{joined_text, merge_tokens, Tok};
use self::tokenize::Tokenizer;
use crate::speech::onnx::OnnxError;

/// Characters that never carry sound inside a word group.
const SUBTOKEN_JUNKS: &str = "',-._‘’/";
/// Punctuation the model reads (pauses, intonation).
const PUNCTS: &str = ";:,.!?—…\"“”";
/// The same without quotes: these end a phrase for the right-to-left context.
const NON_QUOTE_PUNCTS: &str = ";:,.!?—…";
const PUNCT_TAGS: [&str; 11] = [
    ".", ",", "-LRB-", "-RRB-", "``", "\"\"", "''", ":", "$", "#", "NFP",
];
const APOSTROPHES: &str = "'‘’";

/// Why the G2P could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum G2pError {
    #[error("cannot read {path}: {source} (run `python3 models/provision.py`)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("bad G2P data: {0}")]
    Data(String),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("OOV net failed: {0}")]
    Inference(String),
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, G2pError> {
    let text = std::fs::read_to_string(path).map_err(|source| G2pError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| G2pError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// hibari's G2P, US English. Loaded once (about 10 MB of JSON and a 3 MB ONNX net) and shared.
pub struct G2p {
    tokenizer: Tokenizer,
    tagger: Tagger,
    lexicon: Lexicon,
    oov: Oov,
    vocab: HashMap<char, i64>,
    link: Regex,
}

impl G2p {
    /// Loads the lexicons, tagger, tokenizer exceptions, vocab and OOV net from `dir`
    /// (`models/hibari/`), with ONNX Runtime from `onnx_library` (or `$ORT_DYLIB_PATH`).
    pub fn load(dir: &Path, onnx_library: &Path) -> Result<G2p, G2pError> {
        let started = Instant::now();
        // The three big JSON files parse in parallel: load time is mostly JSON parsing.
        let (gold, silver, tagger) = std::thread::scope(|s| {
            let gold =
                s.spawn(|| read_json::<HashMap<String, Entry>>(&dir.join("lexicon_us_gold.json")));
            let silver = s
                .spawn(|| read_json::<HashMap<String, Entry>>(&dir.join("lexicon_us_silver.json")));
            let tagger = load_tagger(&dir.join("tagger.json"));
            let join = |r: std::thread::Result<_>| {
                r.unwrap_or_else(|_| Err(G2pError::Data("a loader thread panicked".into())))
            };
            (join(gold.join()), join(silver.join()), tagger)
        });
        let exceptions: HashMap<String, Vec<String>> =
            read_json(&dir.join("tokenizer_exceptions.json"))?;
        let vocab_raw: HashMap<String, i64> = read_json(&dir.join("vocab.json"))?;
        let mut vocab = HashMap::new();
        for (k, v) in vocab_raw {
            let mut chars = k.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                vocab.insert(c, v);
            }
        }
        let oov = Oov::load(dir, onnx_library)?;
        let regex = |p: &str| Regex::new(p).map_err(|e| G2pError::Data(e.to_string()));
        let g2p = G2p {
            tokenizer: Tokenizer::new(exceptions).map_err(|e| G2pError::Data(e.to_string()))?,
            tagger: tagger?,
            lexicon: Lexicon::new(gold?, silver?),
            oov,
            vocab,
            link: regex(r"\[([^\]]+)\]\(([^\)]*)\)")?,
        };
        tracing::info!(
            dir = %dir.display(),
            ms = started.elapsed().as_millis() as u64,
            "G2P loaded"
        );
        Ok(g2p)
    }

    /// Phonemes for one sentence (or a chunk of one) of normalised English text, exactly as
    /// hibari's Python `G2P` gives them (`normalize_text=False`). Words are separated by a space
    /// where the text had whitespace; unreadable tokens are left out.
    pub fn phonemize(&self, text: &str) -> Result<String, G2pError> {
        let tokens = self.tokens(text);
        let tokens = self.phonemize_tokens(tokens)?;
        let mut out = String::new();
        for tk in &tokens {
            if let Some(ps) = &tk.phonemes {
                out.push_str(ps);
            }
            if tk.whitespace {
                out.push(' ');
            }
        }
        Ok(out.trim().to_string())
    }

    /// Model ids for a phoneme string: 0, the ids of the characters the vocabulary knows
    /// (others are dropped), 0.
    pub fn ids(&self, phonemes: &str) -> Vec<i64> {
        let mut ids = Vec::with_capacity(phonemes.len() + 2);
        ids.push(0);
        ids.extend(phonemes.chars().filter_map(|c| self.vocab.get(&c).copied()));
        ids.push(0);
        ids
    }

    /// Tagged tokens; `[word](/phonemes/)` sets a token's phonemes directly.
    fn tokens(&self, text: &str) -> Vec<Tok> {
        let mut toks = Vec::new();
        let mut pos = 0;
        for caps in self.link.captures_iter(text) {
            let (Some(whole), Some(word), Some(target)) = (caps.get(0), caps.get(1), caps.get(2))
            else {
                continue;
            };
            toks.extend(self.tagged(&text[pos..whole.start()]));
            let f = target.as_str();
            let phonemes = (f.chars().count() > 1 && f.starts_with('/') && f.ends_with('/'))
                .then(|| f[1..].trim_end_matches('/').to_string());
            toks.push(Tok {
                text: word.as_str().to_string(),
                tag: "NN".to_string(),
                whitespace: text[whole.end()..]
                    .chars()
                    .next()
                    .is_some_and(char::is_whitespace),
                phonemes,
                is_head: true,
                ..Tok::default()
            });
            pos = whole.end();
        }
        toks.extend(self.tagged(&text[pos..]));
        toks
    }

    fn tagged(&self, text: &str) -> Vec<Tok> {
        let pairs = self.tokenizer.tokenize(text);
        if pairs.is_empty() {
            return Vec::new();
        }
        let words: Vec<&str> = pairs.iter().map(|(t, _)| t.as_str()).collect();
        let tags = self.tagger.tag(&words);
        pairs
            .into_iter()
            .zip(tags)
            .map(|((text, whitespace), tag)| Tok {
                text,
                tag,
                whitespace,
                is_head: true,
                ..Tok::default()
            })
            .collect()
    }

    /// Fills in every token's phonemes (misaki's `G2P.__call__`).
    fn phonemize_tokens(&self, tokens: Vec<Tok>) -> Result<Vec<Tok>, G2pError> {
        let mut words = retokenize(tokens);
        let mut ctx = Ctx::default();
        for w in words.iter_mut().rev() {
            match w {
                Word::One(tk) => {
                    if tk.phonemes.is_none() {
                        tk.phonemes = self.lexicon.read(tk, &ctx);
                    }
                    if tk.phonemes.is_none() {
                        tk.phonemes = Some(self.fallback(tk)?);
                    }
                    ctx = token_context(ctx, tk.phonemes.as_deref(), tk);
                }
                Word::Many(w) => ctx = self.phonemize_group(w, ctx)?,
            }
        }
        let mut out: Vec<Tok> = words
            .into_iter()
            .map(|w| match w {
                Word::One(tk) => tk,
                Word::Many(v) => merge_tokens(&v, Some("")),
            })
            .collect();
        for tk in &mut out {
            if let Some(ps) = &mut tk.phonemes {
                if ps.contains(['ɾ', 'ʔ']) {
                    *ps = ps.replace('ɾ', "T").replace('ʔ', "t");
                }
            }
        }
        Ok(out)
    }

    /// Subtokens written together: the longest run that the lexicon reads whole wins, right to
    /// left; a piece nothing reads sends the whole group to the fallback.
    fn phonemize_group(&self, w: &mut [Tok], mut ctx: Ctx) -> Result<Ctx, G2pError> {
        let (mut left, mut right) = (0, w.len());
        let mut should_fallback = false;
        while left < right {
            let piece = &w[left..right];
            let ps = if piece
                .iter()
                .any(|tk| tk.alias.is_some() || tk.phonemes.is_some())
            {
                None
            } else {
                let tk = merge_tokens(piece, None);
                self.lexicon.read(&tk, &ctx).map(|ps| (ps, tk))
            };
            if let Some((ps, tk)) = ps {
                ctx = token_context(ctx, Some(&ps), &tk);
                w[left].phonemes = Some(ps);
                for x in &mut w[left + 1..right] {
                    x.phonemes = Some(String::new());
                }
                right = left;
                left = 0;
            } else if left + 1 < right {
                left += 1;
            } else {
                right -= 1;
                let tk = &mut w[right];
                if tk.phonemes.is_none() {
                    if tk.text.chars().all(|c| SUBTOKEN_JUNKS.contains(c)) {
                        tk.phonemes = Some(String::new());
                    } else {
                        should_fallback = true;
                        break;
                    }
                }
                left = 0;
            }
        }
        if should_fallback {
            let tk = merge_tokens(w, None);
            w[0].phonemes = Some(self.fallback(&tk)?);
            for x in &mut w[1..] {
                x.phonemes = Some(String::new());
            }
        } else {
            resolve_tokens(w);
        }
        Ok(ctx)
    }

    /// An unknown word: letters go to the OOV net, digit runs to the number reader, symbols to
    /// a small table; pieces joined by spaces.
    fn fallback(&self, tk: &Tok) -> Result<String, G2pError> {
        let mut out: Vec<String> = Vec::new();
        for piece in fallback_pieces(&tk.text) {
            let Some(first) = piece.chars().next() else {
                continue;
            };
            let ps = if is_decimal(first) {
                self.lexicon.get_number(&piece, None, false)
            } else if first.is_alphabetic() {
                self.oov.read(&piece)?
            } else {
                Some(piece.chars().map(symbol_phonemes).collect())
            };
            if let Some(ps) = ps.filter(|p| !p.is_empty()) {
                out.push(ps);
            }
        }
        Ok(out.join(" "))
    }
}

fn load_tagger(path: &Path) -> Result<Tagger, G2pError> {
    let text = std::fs::read_to_string(path).map_err(|source| G2pError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Tagger::from_json(&text).map_err(|source| G2pError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// What espeak read symbols as in the reference pipeline.
fn symbol_phonemes(c: char) -> &'static str {
    match c {
        '/' => "slˈæʃ",
        '=' => "ˈikwᵊlz",
        '+' => "plˈʌs",
        '&' => "ænd",
        '@' => "æt",
        '%' => "pəɹsˈɛnt",
        '#' => "hˈæʃ",
        '*' => "ˈæstəɹˌɪsk",
        '~' => "tˈɪldə",
        '^' => "kˈɛɹət",
        '<' => "lˈɛs ðən",
        '>' => "ɡɹˈATəɹ ðən",
        '—' => "—",
        _ => "",
    }
}

/// A word for the right-to-left pass: one token, or subtokens written together.
enum Word {
    One(Tok),
    Many(Vec<Tok>),
}

/// Splits tokens into subtokens, gives punctuation its phonemes, marks currency amounts, and
/// groups subtokens not separated by whitespace (misaki's `G2P.retokenize`).
fn retokenize(tokens: Vec<Tok>) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    let mut currency: Option<String> = None;
    let n_tokens = tokens.len();
    let next_tags: Vec<bool> = tokens.iter().map(|t| t.tag == "CD").collect();
    for (i, token) in tokens.into_iter().enumerate() {
        let mut tks: Vec<Tok> = if token.alias.is_none() && token.phonemes.is_none() {
            subtokens(&token.text)
                .into_iter()
                .map(|text| Tok {
                    text,
                    whitespace: false,
                    is_head: true,
                    prespace: false,
                    ..token.clone()
                })
                .collect()
        } else {
            vec![token.clone()]
        };
        let Some(last) = tks.last_mut() else {
            continue;
        };
        last.whitespace = token.whitespace;
        let n = tks.len();
        let texts: Vec<String> = tks.iter().map(|t| t.text.clone()).collect();
        for (j, mut tk) in tks.into_iter().enumerate() {
            if tk.alias.is_some() || tk.phonemes.is_some() {
            } else if tk.tag == "$" && CURRENCIES.iter().any(|(s, _)| *s == tk.text) {
                currency = Some(tk.text.clone());
                tk.phonemes = Some(String::new());
            } else if tk.tag == ":" && (tk.text == "-" || tk.text == "–") {
                tk.phonemes = Some("—".to_string());
            } else if PUNCT_TAGS.contains(&tk.tag.as_str())
                && !tk.text.chars().all(|c| {
                    let mut l = c.to_lowercase();
                    matches!((l.next(), l.next()), (Some(l), None) if l.is_ascii_lowercase())
                })
            {
                tk.phonemes = Some(match tk.tag.as_str() {
                    "-LRB-" => "(".to_string(),
                    "-RRB-" => ")".to_string(),
                    "``" => "\u{201C}".to_string(),
                    "\"\"" | "''" => "\u{201D}".to_string(),
                    _ => tk.text.chars().filter(|&c| PUNCTS.contains(c)).collect(),
                });
            } else if currency.is_some() {
                if tk.tag != "CD" {
                    currency = None;
                } else if j + 1 == n && (i + 1 == n_tokens || !next_tags[i + 1]) {
                    tk.currency.clone_from(&currency);
                }
            } else if 0 < j && j + 1 < n && tk.text == "2" && {
                let a = texts[j - 1].chars().next_back();
                let b = texts[j + 1].chars().next();
                a.is_some_and(char::is_alphabetic) && b.is_some_and(char::is_alphabetic)
            } {
                tk.alias = Some("to".to_string());
            }
            if tk.alias.is_some() || tk.phonemes.is_some() {
                words.push(Word::One(tk));
            } else if let Some(Word::Many(group)) = words.last_mut() {
                if group.last().is_some_and(|t| !t.whitespace) {
                    tk.is_head = false;
                    group.push(tk);
                } else if tk.whitespace {
                    words.push(Word::One(tk));
                } else {
                    words.push(Word::Many(vec![tk]));
                }
            } else if tk.whitespace {
                words.push(Word::One(tk));
            } else {
                words.push(Word::Many(vec![tk]));
            }
        }
    }
    words
        .into_iter()
        .map(|w| match w {
            Word::Many(mut v) if v.len() == 1 => match v.pop() {
                Some(tk) => Word::One(tk),
                None => Word::Many(v),
            },
            w => w,
        })
        .collect()
}

/// Does the next word start with a vowel, and is it "to"?
fn token_context(ctx: Ctx, ps: Option<&str>, token: &Tok) -> Ctx {
    let mut vowel = ctx.future_vowel;
    if let Some(ps) = ps.filter(|p| !p.is_empty()) {
        if let Some(c) = ps
            .chars()
            .find(|&c| VOWELS.contains(c) || CONSONANTS.contains(c) || NON_QUOTE_PUNCTS.contains(c))
        {
            vowel = if NON_QUOTE_PUNCTS.contains(c) {
                None
            } else {
                Some(VOWELS.contains(c))
            };
        }
    }
    let future_to = token.text == "to"
        || token.text == "To"
        || (token.text == "TO" && (token.tag == "TO" || token.tag == "IN"));
    Ctx {
        future_vowel: vowel,
        future_to,
    }
}

/// Inside a group read piecewise: spacing between pieces that were separate words in effect
/// ("A-team"), and stress balancing so a compound has one main stress.
fn resolve_tokens(tokens: &mut [Tok]) {
    if tokens.is_empty() {
        return;
    }
    let text = joined_text(tokens);
    let mut classes = [false; 3];
    for c in text.chars().filter(|&c| !SUBTOKEN_JUNKS.contains(c)) {
        let class = if c.is_alphabetic() {
            0
        } else if c.is_ascii_digit() {
            1
        } else {
            2
        };
        classes[class] = true;
    }
    let prespace =
        text.contains(' ') || text.contains('/') || classes.iter().filter(|&&b| b).count() > 1;
    let n = tokens.len();
    for (i, tk) in tokens.iter_mut().enumerate() {
        if tk.phonemes.is_none() {
            let is_single_punct = {
                let mut cs = tk.text.chars();
                matches!((cs.next(), cs.next()), (Some(c), None) if NON_QUOTE_PUNCTS.contains(c))
            };
            if i + 1 == n && is_single_punct {
                tk.phonemes = Some(tk.text.clone());
            } else if tk.text.chars().all(|c| SUBTOKEN_JUNKS.contains(c)) {
                tk.phonemes = Some(String::new());
            }
        } else if i > 0 {
            tk.prespace = prespace;
        }
    }
    if prespace {
        return;
    }
    let mut indices: Vec<(bool, usize, usize)> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, tk)| {
            let ps = tk.phonemes.as_deref().filter(|p| !p.is_empty())?;
            Some((ps.contains(PRIMARY_STRESS), stress_weight(ps), i))
        })
        .collect();
    let demote = |tk: &mut Tok| {
        if let Some(ps) = &tk.phonemes {
            tk.phonemes = Some(apply_stress(ps, Some(-0.5)));
        }
    };
    if indices.len() == 2 && tokens[indices[0].2].text.chars().count() == 1 {
        demote(&mut tokens[indices[1].2]);
        return;
    }
    let primaries = indices.iter().filter(|x| x.0).count();
    if indices.len() < 2 || primaries <= indices.len().div_ceil(2) {
        return;
    }
    indices.sort();
    for &(_, _, i) in &indices[..indices.len() / 2] {
        demote(&mut tokens[i]);
    }
}

/// The fallback's pieces, Python's `re.finditer(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\d+(?:[,.]\d+)*|[^\w\s]+")`:
/// letter runs (with inner apostrophes), digit groups, symbol runs. Written out because the
/// `regex` crate's `\w` leaves out characters like `²` that Python counts as word characters
/// (and the OOV net reads).
fn fallback_pieces(text: &str) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let n = c.len();
    let letter = |i: usize| i < n && is_letter(c[i]);
    let digit = |i: usize| i < n && is_decimal(c[i]);
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let start = i;
        if letter(i) {
            while letter(i) {
                i += 1;
            }
            while i < n && (c[i] == '\'' || c[i] == '’') && letter(i + 1) {
                i += 1;
                while letter(i) {
                    i += 1;
                }
            }
        } else if digit(i) {
            while digit(i) {
                i += 1;
            }
            while i < n && (c[i] == ',' || c[i] == '.') && digit(i + 1) {
                i += 1;
                while digit(i) {
                    i += 1;
                }
            }
        } else if !is_word(c[i]) && !c[i].is_whitespace() {
            while i < n && !is_word(c[i]) && !c[i].is_whitespace() {
                i += 1;
            }
        } else {
            i += 1;
            continue;
        }
        out.push(c[start..i].iter().collect());
    }
    out
}

/// misaki's `SUBTOKEN_RE.findall`: leading apostrophes, camelCase and ACRONYMWord boundaries,
/// digit groups ("1,000.50", a leading "-"), hyphen/underscore runs, letter runs with
/// apostrophe-letter pairs ("don't"), single symbols, trailing apostrophes. Characters no
/// alternative takes (a lone inner apostrophe) are dropped, as `findall` skips them.
fn subtokens(text: &str) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let n = c.len();
    let apos = |i: usize| i < n && APOSTROPHES.contains(c[i]);
    let letter = |i: usize| i < n && is_letter(c[i]);
    let digit = |i: usize| i < n && is_decimal(c[i]);
    let digit_run = |start: usize| {
        let mut k = start;
        loop {
            if digit(k) {
                k += 1;
            } else if k < n && (c[k] == ',' || c[k] == '.') && digit(k + 1) {
                k += 2;
            } else {
                return k;
            }
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let end = (|| {
            // ^['‘’]+
            if i == 0 && apos(0) {
                return Some((0..n).find(|&k| !apos(k)).unwrap_or(n));
            }
            // [A-Z](?=[A-Z][a-z])
            if is_up(c[i]) && i + 2 < n && is_up(c[i + 1]) && is_lo(c[i + 2]) {
                return Some(i + 1);
            }
            // (?:^-)?(?:\d?[,.]?\d)+
            if i == 0 && c[0] == '-' {
                let k = digit_run(1);
                if k > 1 {
                    return Some(k);
                }
            }
            let k = digit_run(i);
            if k > i {
                return Some(k);
            }
            // [-_]+
            if c[i] == '-' || c[i] == '_' {
                return Some((i..n).find(|&k| c[k] != '-' && c[k] != '_').unwrap_or(n));
            }
            // ['‘’]{2,}
            if apos(i) && apos(i + 1) {
                return Some((i..n).find(|&k| !apos(k)).unwrap_or(n));
            }
            // [^\W\d_]*?(?:['‘’][^\W\d_])*?[a-z](?=[A-Z])  (lazy: fewest letters, then fewest
            // apostrophe pairs)
            let mut k = i;
            loop {
                let mut p = k;
                loop {
                    if p + 1 < n && is_lo(c[p]) && is_up(c[p + 1]) {
                        return Some(p + 1);
                    }
                    if apos(p) && letter(p + 1) {
                        p += 2;
                    } else {
                        break;
                    }
                }
                if letter(k) {
                    k += 1;
                } else {
                    break;
                }
            }
            // [^\W\d_]+(?:['‘’][^\W\d_])*
            if letter(i) {
                let mut k = i;
                while letter(k) {
                    k += 1;
                }
                while apos(k) && letter(k + 1) {
                    k += 2;
                }
                return Some(k);
            }
            // [^\w\-'‘’]
            if !is_word(c[i]) && c[i] != '-' && !apos(i) {
                return Some(i + 1);
            }
            // ['‘’]+$
            if apos(i) {
                let k = (i..n).find(|&k| !apos(k)).unwrap_or(n);
                if k == n {
                    return Some(n);
                }
            }
            None
        })();
        match end {
            Some(e) if e > i => {
                out.push(c[i..e].iter().collect());
                i = e;
            }
            _ => i += 1,
        }
    }
    out
}

/// Where the test finds the models and ONNX Runtime.
#[cfg(test)]
fn test_paths() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("models/hibari");
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/onnxruntime/libonnxruntime.so"));
    (dir, lib)
}

#[cfg(test)]
fn test_g2p() -> &'static G2p {
    use std::sync::OnceLock;
    static G2P: OnceLock<G2p> = OnceLock::new();
    G2P.get_or_init(|| {
        let (dir, lib) = test_paths();
        assert!(
            dir.join("lexicon_us_gold.json").is_file() && lib.is_file(),
            "the G2P test needs {} and {} (set ORT_DYLIB_PATH or run `python3 models/provision.py`)",
            dir.display(),
            lib.display()
        );
        let t = Instant::now();
        let g2p = G2p::load(&dir, &lib).unwrap_or_else(|e| panic!("G2P load failed: {e}"));
        println!("G2P load: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
        g2p
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtoken_split_like_misaki() {
        assert_eq!(subtokens("McDonald"), ["Mc", "Donald"]);
        assert_eq!(subtokens("iPhone"), ["i", "Phone"]);
        assert_eq!(subtokens("PDFFile"), ["PDFFile"]);
        assert_eq!(subtokens("ABCdef"), ["ABCdef"]);
        assert_eq!(subtokens("aBCd"), ["a", "B", "Cd"]);
        assert_eq!(subtokens("don't"), ["don't"]);
        assert_eq!(subtokens("rock'n'roll"), ["rock'n'r", "oll"]);
        assert_eq!(subtokens("1,000.50"), ["1,000.50"]);
        assert_eq!(subtokens("-5"), ["-5"]);
        assert_eq!(subtokens("x2y"), ["x", "2", "y"]);
        assert_eq!(subtokens("e-mail"), ["e", "-", "mail"]);
        assert_eq!(subtokens("'tis"), ["'", "tis"]);
        assert_eq!(subtokens("dogs'"), ["dogs", "'"]);
        assert_eq!(subtokens("a.b"), ["a", ".", "b"]);
    }

    #[test]
    fn fallback_pieces_like_python() {
        assert_eq!(fallback_pieces("m²"), ["m²"]);
        assert_eq!(
            fallback_pieces("a/b 1,000.5x"),
            ["a", "/", "b", "1,000.5", "x"]
        );
        assert_eq!(fallback_pieces("o'neil_x"), ["o'neil", "x"]);
        assert_eq!(fallback_pieces("¯\\(ツ)/¯"), ["¯\\(", "ツ", ")/¯"]);
    }

    #[test]
    fn golden_file_matches_python_hibari() {
        let g2p = test_g2p();
        let golden = include_str!("testdata/golden.tsv");
        let mut total = 0;
        let mut mismatches = 0;
        for line in golden
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (input, want) = line.split_once('\t').expect("golden line has a tab");
            let got = g2p.phonemize(input).expect("phonemize");
            total += 1;
            if got != want {
                mismatches += 1;
                println!("MISMATCH {input}\n   want {want}\n    got {got}");
            }
        }
        let rate = 100.0 * (total - mismatches) as f64 / total as f64;
        println!(
            "golden: {}/{} match ({rate:.1}%)",
            total - mismatches,
            total
        );
        assert!(total >= 150);
        assert!(rate >= 98.0, "golden match rate {rate:.1}% < 98%");
    }

    #[test]
    fn g2p_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<G2p>();
    }

    #[test]
    fn odd_input_does_not_panic() {
        let g2p = test_g2p();
        let long_digits = "9".repeat(60);
        let long_word = "abc".repeat(40);
        for s in [
            "",
            "   ",
            "...",
            "''''",
            "'",
            "-",
            "$",
            "$$5.5.5",
            "-5'",
            "5''s",
            "٣٤ ١٢th",
            "x²³ ½ ⅔",
            "e\u{301}cole",
            "🙂👍🏽 ok",
            "שלום עולם",
            "日本語のテキスト",
            "\u{0}\u{7}\u{200B}",
            "[](//)",
            "[x](/)",
            "[x](/ˈɛks/) [y](",
            long_digits.as_str(),
            long_word.as_str(),
            "İstanbul ǅemal ß ẞ",
            "a'b'c'd' ''x'' ‘’‘",
            "2 2-2 a2b 2a a2",
            "$1.2.3 £0.001 €,5",
        ] {
            let ps = g2p.phonemize(s).expect("phonemize");
            let _ = g2p.ids(&ps);
        }
    }

    #[test]
    fn ids_wrap_known_symbols_in_pads() {
        let g2p = test_g2p();
        // From hibari's vocab.json: h 50, ə 83, l 54, ˈ 156, O 31; "#" is not in the vocab.
        assert_eq!(g2p.ids("həlˈO#"), [0, 50, 83, 54, 156, 31, 0]);
        assert_eq!(g2p.ids(""), [0, 0]);
    }

    /// A wider differential check than the golden file: `G2P_COMPARE=<tsv of input TAB
    /// phonemes>` made with the Python G2P (see testdata/make_golden.py for the call).
    #[test]
    #[ignore = "needs G2P_COMPARE pointing at a Python dump"]
    fn compare_with_python_dump() {
        let Some(path) = std::env::var_os("G2P_COMPARE") else {
            return;
        };
        let g2p = test_g2p();
        let text = std::fs::read_to_string(path).expect("read G2P_COMPARE");
        let (mut total, mut bad) = (0, 0);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let Some((input, want)) = line.split_once('\t') else {
                continue;
            };
            total += 1;
            let got = g2p.phonemize(input).expect("phonemize");
            if got != want {
                bad += 1;
                println!("MISMATCH {input}\n   want {want}\n    got {got}");
            }
        }
        println!("compare: {}/{total} match", total - bad);
    }

    #[test]
    fn timing_per_sentence() {
        let g2p = test_g2p();
        let sentences = [
            "Thank you for calling, how can I help you today?",
            "I'm transferring you to a colleague who is an expert in billing.",
            "Could you please confirm your date of birth and the postcode on your account?",
            "Your Netflix subscription is managed through Vodafone.",
        ];
        for s in sentences {
            let t = Instant::now();
            let first = g2p.phonemize(s).expect("phonemize");
            let cold = t.elapsed();
            let t = Instant::now();
            for _ in 0..20 {
                let again = g2p.phonemize(s).expect("phonemize");
                assert_eq!(again, first);
            }
            let warm = t.elapsed() / 20;
            println!(
                "phonemize: first {:.2} ms, then {:.2} ms: {s}",
                cold.as_secs_f64() * 1e3,
                warm.as_secs_f64() * 1e3
            );
        }
    }
}

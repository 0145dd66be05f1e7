//! `voicebot bench-asr`: speech recognition measured on telephone speech, side by side.
//!
//! Every engine given (`moonshine:base`, `moonshine:tiny`, `whisper`, ...) recognises the same
//! evaluation set ([`set`]: synthetic voices and real human clips over simulated telephone
//! lines, a tuning part and a held-out part) at `[asr] threads`, and the report gives per
//! engine:
//! - word error rate per line condition and per split, and on human speech;
//! - digit strings said digit by digit: the share the bot reads exactly (its own normaliser
//!   and order-number reader on the transcript);
//! - the final pass's latency after the end of speech (p50, p95, max): the wall time of the
//!   decode of the whole utterance, which is what a caller waits for once the endpointer has
//!   decided the turn is over;
//! - partial passes: with `--partials`, the utterance is decoded every `partial_interval_ms`
//!   of audio as it grows, as a live call does, and the compute is reported per second of
//!   speech (the share of a core one talking call costs);
//! - the dialog on what was heard: the default flow's intent and escalation decisions on the
//!   recognised caller turns, against the same labels as the text evaluation (and the text
//!   itself as the ceiling), with vocabulary correction applied as on a live call.

pub mod channel;
pub mod score;
pub mod set;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dialog::{Bot, BotTurn, CallerTurn, DialogAssets, EscalationConfig};
use crate::speech::asr::vocabulary::Vocabulary;
use crate::speech::asr::{self, AsrConfig, Engine, Expectation, Pass, SpeechRecognizer};
use set::{Item, Kind, Split};

/// An engine to measure: a label and its settings.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub label: String,
    pub config: AsrConfig,
}

/// Parses `moonshine:base`, `moonshine:tiny`, `moonshine:DIR`, `whisper`, `whisper:FILE`.
pub fn parse_engine(spec: &str, base: &AsrConfig) -> Result<EngineSpec, String> {
    let (engine, model) = spec.split_once(':').unwrap_or((spec, ""));
    let engine = match engine {
        "moonshine" => Engine::Moonshine,
        "whisper" => Engine::Whisper,
        other => return Err(format!("unknown engine {other:?} (moonshine or whisper)")),
    };
    let mut config = AsrConfig {
        engine,
        model: model.into(),
        ..base.clone()
    };
    if engine != base.engine && model.is_empty() {
        config.model = Default::default();
    }
    let label = format!("{} {}", engine.name(), config.model_path().display());
    Ok(EngineSpec { label, config })
}

/// One recognised item.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    pub split: Split,
    pub kind: Kind,
    pub voice: String,
    pub condition: &'static str,
    pub reference: String,
    pub hypothesis: String,
    pub ref_words: usize,
    pub errors: usize,
    pub audio_ms: u64,
    pub final_ms: f64,
    /// Compute of the partial passes over this utterance (with `--partials`).
    pub partial_ms: f64,
    pub partial_passes: usize,
    pub digits_ok: Option<bool>,
    pub intent_ok: Option<bool>,
    pub escalation_ok: Option<bool>,
}

/// One engine's results.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    pub label: String,
    pub threads: usize,
    pub load_ms: u64,
    pub rows: Vec<Row>,
}

/// The dialog used to score recognised turns.
pub struct DialogJudge {
    assets: Arc<DialogAssets>,
    vocabulary: Vocabulary,
}

impl DialogJudge {
    pub fn new(assets: Arc<DialogAssets>, vocabulary: Vocabulary) -> Self {
        DialogJudge { assets, vocabulary }
    }

    /// (intent right, escalation right) for `text` heard with `confidence`; the intent is
    /// only judged where the label names one (as in the text evaluation, `none` rows count
    /// for escalation only).
    fn judge(&self, labels: &set::Labels, text: &str, confidence: f32) -> (Option<bool>, bool) {
        let mut bot = Bot::new(Arc::clone(&self.assets), EscalationConfig::default());
        let turn = bot.on_utterance(CallerTurn::new(text, confidence));
        (
            (labels.intent != crate::dialog::NONE_INTENT)
                .then(|| turn.intent.intent == labels.intent),
            reason_name(&turn) == labels.escalation,
        )
    }
}

fn reason_name(turn: &BotTurn) -> String {
    match &turn.escalation {
        None => "none".to_string(),
        Some(e) => serde_json::to_value(e.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", e.reason)),
    }
}

/// How [`run_engine`] decodes.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Also decode each utterance as it grows, to cost the partial passes.
    pub partials: bool,
    /// Decode spoken numbers expecting digits, as a live call does once the bot asked.
    pub digit_context: bool,
}

/// Recognises every item with one engine.
pub fn run_engine(
    spec: &EngineSpec,
    items: &[Item],
    judge: &DialogJudge,
    options: RunOptions,
) -> Result<EngineReport, String> {
    let started = Instant::now();
    let engine = asr::load(&spec.config).map_err(|e| format!("{}: {e}", spec.label))?;
    let load_ms = started.elapsed().as_millis() as u64;
    let interval = spec.config.partial_interval_ms.max(100) as usize * 16;
    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        let (partial_ms, partial_passes) = if options.partials {
            partial_cost(engine.as_ref(), &item.audio, interval)?
        } else {
            (0.0, 0)
        };
        let t0 = Instant::now();
        // A spoken number answers the bot's question for it, so a live call decodes it
        // expecting digits.
        let expect = match item.digits {
            Some(_) if options.digit_context => Expectation::Digits,
            _ => Expectation::Anything,
        };
        let t = engine
            .decode_expecting(&item.audio, Pass::Final, expect)
            .map_err(|e| format!("{}: {}: {e}", spec.label, item.id))?;
        let final_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (text, _) = judge.vocabulary.correct(&t.words);
        let text = if t.words.is_empty() {
            t.text.clone()
        } else {
            text
        };
        let reference = score::normalize(&item.reference);
        let hypothesis = score::normalize(&text);
        let (intent_ok, escalation_ok) = match &item.labels {
            Some(l) => {
                let (i, e) = judge.judge(l, &text, t.confidence);
                (i, Some(e))
            }
            None => (None, None),
        };
        rows.push(Row {
            id: item.id.clone(),
            split: item.split,
            kind: item.kind,
            voice: item.voice.clone(),
            condition: item.condition,
            reference: item.reference.clone(),
            hypothesis: text.clone(),
            ref_words: reference.len(),
            errors: score::word_errors(&reference, &hypothesis),
            audio_ms: (item.audio.len() / 16) as u64,
            final_ms,
            partial_ms,
            partial_passes,
            // What the bot takes as the number (its own normaliser and slot reader), not a
            // reading of the transcript the bot would not make.
            digits_ok: item.digits.as_ref().map(|d| {
                let normalized = crate::dialog::normalize::normalize(&text);
                crate::dialog::slots::order_number(&normalized).as_deref() == Some(d.as_str())
            }),
            intent_ok,
            escalation_ok,
        });
    }
    Ok(EngineReport {
        label: spec.label.clone(),
        threads: spec.config.resolved_threads(),
        load_ms,
        rows,
    })
}

/// Decodes the growing utterance every `interval` samples: (total ms, passes).
fn partial_cost(
    engine: &dyn SpeechRecognizer,
    audio: &[f32],
    interval: usize,
) -> Result<(f64, usize), String> {
    let mut total = Duration::ZERO;
    let mut passes = 0;
    let mut end = interval;
    while end < audio.len() {
        let t0 = Instant::now();
        engine
            .decode(&audio[..end], Pass::Partial)
            .map_err(|e| e.to_string())?;
        total += t0.elapsed();
        passes += 1;
        end += interval;
    }
    Ok((total.as_secs_f64() * 1000.0, passes))
}

/// Turns, intents right, escalations right, turns with an intent label (not `none`).
pub type Ceiling = (usize, usize, usize, usize);

/// The dialog's scores with the reference text as the transcript (the ceiling).
pub fn text_ceiling(items: &[Item], judge: &DialogJudge) -> BTreeMap<Split, Ceiling> {
    let mut out: BTreeMap<Split, Ceiling> = BTreeMap::new();
    for item in items {
        if let Some(l) = &item.labels {
            let (i, e) = judge.judge(l, &item.reference, 0.95);
            let entry = out.entry(item.split).or_default();
            entry.0 += 1;
            entry.1 += usize::from(i == Some(true));
            entry.2 += usize::from(e);
            entry.3 += usize::from(i.is_some());
        }
    }
    out
}

fn pct(num: usize, den: usize) -> String {
    if den == 0 {
        "-".into()
    } else {
        format!("{:.1} %", 100.0 * num as f64 / den as f64)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// WER of rows: (errors, words).
fn wer<'a>(rows: impl Iterator<Item = &'a Row>) -> (usize, usize) {
    rows.fold((0, 0), |(e, w), r| (e + r.errors, w + r.ref_words))
}

/// The printed report.
pub fn render(reports: &[EngineReport], ceiling: &BTreeMap<Split, Ceiling>) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut out = String::new();
    let Some(first) = reports.first() else {
        return "no engine measured\n".into();
    };
    let conditions: Vec<&str> = channel::CONDITIONS.iter().map(|c| c.name).collect();
    let mut wer_table = Table::new();
    wer_table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["engine".to_string(), "split".to_string()];
    header.extend(conditions.iter().map(|c| format!("WER {c}")));
    header.extend([
        "WER synthetic".into(),
        "WER human".into(),
        "digits right".into(),
    ]);
    wer_table.set_header(header);
    for r in reports {
        for split in [Split::Tune, Split::Heldout] {
            let rows = || r.rows.iter().filter(move |x| x.split == split);
            let mut line = vec![r.label.clone(), format!("{split:?}").to_lowercase()];
            for c in &conditions {
                let (e, w) = wer(rows().filter(|x| x.kind == Kind::Synthetic && x.condition == *c));
                line.push(pct(e, w));
            }
            let (e, w) = wer(rows().filter(|x| x.kind == Kind::Synthetic));
            line.push(format!("{} ({e}/{w})", pct(e, w)));
            let (e, w) = wer(rows().filter(|x| x.kind == Kind::Human));
            line.push(format!("{} ({e}/{w})", pct(e, w)));
            let digits: Vec<bool> = rows().filter_map(|x| x.digits_ok).collect();
            let ok = digits.iter().filter(|d| **d).count();
            line.push(format!("{} ({ok}/{})", pct(ok, digits.len()), digits.len()));
            wer_table.add_row(line);
        }
    }
    out.push_str(&format!(
        "Word error rate (synthetic: {} utterances; human: {} clips)\n{wer_table}\n",
        first
            .rows
            .iter()
            .filter(|r| r.kind == Kind::Synthetic)
            .count(),
        first.rows.iter().filter(|r| r.kind == Kind::Human).count()
    ));
    let mut speed = Table::new();
    speed.load_preset(UTF8_FULL_CONDENSED);
    speed.set_header(vec![
        "engine",
        "threads",
        "load ms",
        "final p50 ms",
        "final p95 ms",
        "final max ms",
        "partial passes",
        "partial CPU (cores per talking call)",
    ]);
    for r in reports {
        let mut times: Vec<f64> = r.rows.iter().map(|x| x.final_ms).collect();
        times.sort_by(f64::total_cmp);
        let passes: usize = r.rows.iter().map(|x| x.partial_passes).sum();
        let partial: f64 = r.rows.iter().map(|x| x.partial_ms).sum();
        let audio: u64 = r.rows.iter().map(|x| x.audio_ms).sum();
        speed.add_row(vec![
            r.label.clone(),
            r.threads.to_string(),
            r.load_ms.to_string(),
            format!("{:.0}", percentile(&times, 0.5)),
            format!("{:.0}", percentile(&times, 0.95)),
            format!("{:.0}", times.last().copied().unwrap_or(0.0)),
            passes.to_string(),
            if passes == 0 {
                "-".into()
            } else {
                format!("{:.3}", partial / audio.max(1) as f64)
            },
        ]);
    }
    out.push_str(&format!(
        "Speed (final pass after the end of speech; one utterance at a time)\n{speed}\n"
    ));
    let mut dialog = Table::new();
    dialog.load_preset(UTF8_FULL_CONDENSED);
    dialog.set_header(vec![
        "transcripts from",
        "split",
        "turns",
        "intent right (of turns with one)",
        "escalation right",
    ]);
    for (split, (n, i, e, labelled)) in ceiling {
        dialog.add_row(vec![
            "reference text".into(),
            format!("{split:?}").to_lowercase(),
            n.to_string(),
            pct(*i, *labelled),
            pct(*e, *n),
        ]);
    }
    for r in reports {
        for split in [Split::Tune, Split::Heldout] {
            let rows: Vec<&Row> = r
                .rows
                .iter()
                .filter(|x| x.split == split && x.escalation_ok.is_some())
                .collect();
            let labelled = rows.iter().filter(|x| x.intent_ok.is_some()).count();
            let i = rows.iter().filter(|x| x.intent_ok == Some(true)).count();
            let e = rows
                .iter()
                .filter(|x| x.escalation_ok == Some(true))
                .count();
            dialog.add_row(vec![
                r.label.clone(),
                format!("{split:?}").to_lowercase(),
                rows.len().to_string(),
                pct(i, labelled),
                pct(e, rows.len()),
            ]);
        }
    }
    out.push_str(&format!(
        "The default flow's decisions on what was heard (first turn of a call)\n{dialog}\n"
    ));
    out
}

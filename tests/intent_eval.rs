//! Intent and escalation quality on the labelled caller utterances in `tests/eval/utterances.toml`.
//!
//! Every utterance is the first turn of a fresh call with the embedded intents and prompts and
//! the default escalation settings. The test measures
//!
//! * intent accuracy: the bot's intent equals the label, over rows whose label is not `none`;
//! * escalation precision and recall: "the bot escalated" against "the label escalates";
//! * reason accuracy: the right reason, among rows that should escalate and did;
//!
//! prints every miss with the engine's evidence, and fails when a figure drops below the floor
//! below. Run with `cargo test --release --test intent_eval -- --nocapture` to see the report.
//!
//! The floors are what the engine achieves today, rounded down a little, so that the test
//! catches regressions; the goals are what it should achieve. The labels describe what a
//! careful human agent would decide and must not be edited to suit an engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use voicebot_gateway::dialog::{
    Bot, BotTurn, CallerTurn, DialogAssets, EscalationConfig, NONE_INTENT,
};

// The README states the same floors and goals (section on the intent evaluation); change both
// together. Measured with the rule-based engine when the set was written: intent accuracy
// 74.8 % (80/107), escalation precision 97.0 % (32/33), recall 56.1 % (32/57), reason accuracy
// 100 % (32/32). With the hybrid engine (embeddings + rules), min_critical_confidence and
// weighted sarcasm: 88.8 % (95/107), 97.8 % (45/46), 78.9 % (45/57), 93.3 % (42/45).
// With meaning-based tone, strong negative words, more examples per intent, "an act outranks a
// topic", "not ... anymore" as cessation, sarcasm by contrast and negatable requests for a
// person: 99.1 % (106/107), 98.3 % (57/58), 100 % (57/57), 100 % (57/57). The floors were the
// goals.
// Issue 21 added 36 rows written before measuring: 22 of plain anger without listed words
// (insults, waiting, calling again, being ignored), 6 of mild frustration that must not
// escalate and 8 one- or two-word requests for a person. With the nearest-example tone of
// before, anger 14/35 and escalation recall 75.9 % (66/87). With the tone model (a logistic
// regression over the embedding, meaning_tone_threshold 0.65): 99.2 % (130/131), 97.6 %
// (80/82), 92.0 % (80/87), 97.5 % (78/80); the misses are anger around a routine request
// ("this is the fifth call this week about the same order"). Recall floor below that.
/// Floors on the tuning set (`utterances.toml`): the engine was developed against it.
const TUNING_FLOORS: Floors = Floors {
    intent_accuracy: 0.95,
    escalation_precision: 0.95,
    escalation_recall: 0.90,
    reason_accuracy: 0.95,
};
/// Floors on the held-out set (`heldout.toml`), written by someone who had not seen the
/// intents file or the tuning set, and never tuned against: the honest estimate of how the
/// engine does on callers it has not met. First measurement, before any change made after
/// reading its misses: 94.4 % (84/89), 95.1 % (39/41), 86.7 % (39/45), 100 % (39/39). After two
/// general changes prompted by them (sarcasm by contrast, a request for a person can be
/// negated, "any more" as cessation): 96.6 % (86/89), 97.6 % (41/42), 91.1 % (41/45), 100 %
/// (41/41). Floors a little below.
const HELDOUT_FLOORS: Floors = Floors {
    intent_accuracy: 0.93,
    escalation_precision: 0.93,
    escalation_recall: 0.88,
    reason_accuracy: 0.95,
};

/// The lowest figures a set may give before the test fails.
struct Floors {
    /// Intent accuracy (share of rows with an intent label that get that intent).
    intent_accuracy: f64,
    /// Escalation precision (escalated turns that should have escalated).
    escalation_precision: f64,
    /// Escalation recall (turns that should escalate and did).
    escalation_recall: f64,
    /// Reason accuracy among correctly escalated turns.
    reason_accuracy: f64,
}

/// Goals (not enforced): what the dialog engine should reach.
const GOAL_INTENT_ACCURACY: f64 = 0.95;
const GOAL_ESCALATION_PRECISION: f64 = 0.90;
const GOAL_ESCALATION_RECALL: f64 = 0.95;

const EVAL_SET: &str = include_str!("eval/utterances.toml");
const HELDOUT_SET: &str = include_str!("eval/heldout.toml");
/// The escalation reasons a first spoken turn can produce (labels are checked against them).
const SPEECH_REASONS: &[&str] = &["explicit_request", "critical_keyword", "negative_tone"];
/// The label for "must not escalate".
const NO_ESCALATION: &str = "none";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalSet {
    utterance: Vec<Labelled>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Labelled {
    text: String,
    intent: String,
    escalation: String,
    group: String,
}

/// What the bot made of one labelled utterance.
struct Outcome<'a> {
    case: &'a Labelled,
    intent: String,
    confidence: f32,
    /// The escalation reason in its snake_case name, or `"none"`.
    escalation: String,
    evidence: String,
}

impl Outcome<'_> {
    fn expects_intent(&self) -> bool {
        self.case.intent != NONE_INTENT
    }
    fn intent_ok(&self) -> bool {
        self.intent == self.case.intent
    }
    fn should_escalate(&self) -> bool {
        self.case.escalation != NO_ESCALATION
    }
    fn escalated(&self) -> bool {
        self.escalation != NO_ESCALATION
    }
    fn escalation_ok(&self) -> bool {
        self.escalation == self.case.escalation
    }
}

fn load_set() -> EvalSet {
    toml::from_str(EVAL_SET).expect("tests/eval/utterances.toml parses")
}

fn load_heldout() -> EvalSet {
    toml::from_str(HELDOUT_SET).expect("tests/eval/heldout.toml parses")
}

/// The default flow's dialog with the configured default intent engine (the hybrid of
/// sentence embeddings and rules), as live calls get it.
fn assets() -> Arc<DialogAssets> {
    let config = voicebot_gateway::config::GatewayConfig::embedded().expect("embedded config");
    let flows = voicebot_gateway::engines::load_flows(&config)
        .expect("flows and intent model load (run `python3 models/provision.py`)");
    flows.default_flow().dialog.clone()
}

fn reason_name(turn: &BotTurn) -> String {
    match &turn.escalation {
        None => NO_ESCALATION.to_string(),
        Some(e) => serde_json::to_value(e.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", e.reason)),
    }
}

fn evaluate<'a>(assets: &Arc<DialogAssets>, set: &'a EvalSet) -> Vec<Outcome<'a>> {
    set.utterance
        .iter()
        .map(|case| {
            let mut bot = Bot::new(Arc::clone(assets), EscalationConfig::default());
            let turn = bot.on_utterance(CallerTurn::new(case.text.clone(), 0.9));
            let mut evidence = turn.intent.evidence.join("; ");
            if let Some(e) = &turn.escalation {
                if !evidence.is_empty() {
                    evidence.push_str(" | ");
                }
                evidence.push_str(&e.detail);
            }
            Outcome {
                case,
                intent: turn.intent.intent.clone(),
                confidence: turn.intent.confidence,
                escalation: reason_name(&turn),
                evidence,
            }
        })
        .collect()
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// The evaluation's figures.
#[derive(Debug)]
struct Figures {
    intent_correct: usize,
    intent_total: usize,
    true_pos: usize,
    false_pos: usize,
    false_neg: usize,
    reason_correct: usize,
}

impl Figures {
    fn of(outcomes: &[Outcome<'_>]) -> Self {
        let intent_rows = outcomes.iter().filter(|o| o.expects_intent());
        let count = |f: &dyn Fn(&Outcome<'_>) -> bool| outcomes.iter().filter(|o| f(o)).count();
        Figures {
            intent_correct: intent_rows.clone().filter(|o| o.intent_ok()).count(),
            intent_total: intent_rows.count(),
            true_pos: count(&|o| o.should_escalate() && o.escalated()),
            false_pos: count(&|o| !o.should_escalate() && o.escalated()),
            false_neg: count(&|o| o.should_escalate() && !o.escalated()),
            reason_correct: count(&|o| o.should_escalate() && o.escalation_ok()),
        }
    }
    fn intent_accuracy(&self) -> f64 {
        ratio(self.intent_correct, self.intent_total)
    }
    fn precision(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_pos)
    }
    fn recall(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_neg)
    }
    fn reason_accuracy(&self) -> f64 {
        ratio(self.reason_correct, self.true_pos)
    }
}

fn pct(x: f64) -> String {
    format!("{:5.1} %", 100.0 * x)
}

#[test]
fn eval_sets_are_well_formed() {
    let assets = assets();
    for set in [load_set(), load_heldout()] {
        check_well_formed(&set, &assets);
    }
}

fn check_well_formed(set: &EvalSet, assets: &Arc<DialogAssets>) {
    assert!(
        set.utterance.len() >= 80,
        "only {} utterances",
        set.utterance.len()
    );
    for case in &set.utterance {
        assert!(!case.text.trim().is_empty(), "empty text: {case:?}");
        assert!(
            case.intent == NONE_INTENT || assets.intent(&case.intent).is_some(),
            "unknown intent label: {case:?}"
        );
        assert!(
            case.escalation == NO_ESCALATION || SPEECH_REASONS.contains(&case.escalation.as_str()),
            "unknown escalation label: {case:?}"
        );
        assert!(!case.group.trim().is_empty(), "no group: {case:?}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for case in &set.utterance {
        assert!(
            seen.insert(case.text.to_lowercase()),
            "duplicate utterance {:?}",
            case.text
        );
    }
}

#[test]
fn intent_and_escalation_quality() {
    check_quality("tuning set (utterances.toml)", &load_set(), &TUNING_FLOORS);
}

#[test]
fn heldout_intent_and_escalation_quality() {
    check_quality(
        "held-out set (heldout.toml)",
        &load_heldout(),
        &HELDOUT_FLOORS,
    );
}

fn check_quality(name: &str, set: &EvalSet, floors: &Floors) {
    println!("\n===== {name}");
    let outcomes = evaluate(&assets(), set);
    let figures = Figures::of(&outcomes);

    let misses: Vec<&Outcome<'_>> = outcomes
        .iter()
        .filter(|o| (o.expects_intent() && !o.intent_ok()) || !o.escalation_ok())
        .collect();
    println!(
        "\n{} misses of {} utterances (intent wrong, or escalation/reason wrong):",
        misses.len(),
        outcomes.len()
    );
    for o in &misses {
        let intent_mark = if !o.expects_intent() || o.intent_ok() {
            " "
        } else {
            "I"
        };
        let esc_mark = if o.escalation_ok() { " " } else { "E" };
        println!(
            "{intent_mark}{esc_mark} [{}] {:?}\n     expected: intent {:<14} escalation {:<16}\n     got:      intent {:<14} escalation {:<16} (confidence {:.2})\n     evidence: {}",
            o.case.group,
            o.case.text,
            o.case.intent,
            o.case.escalation,
            o.intent,
            o.escalation,
            o.confidence,
            if o.evidence.is_empty() { "(none)" } else { &o.evidence }
        );
    }

    let mut by_group: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for o in &outcomes {
        let entry = by_group.entry(o.case.group.as_str()).or_default();
        entry.1 += 1;
        if (!o.expects_intent() || o.intent_ok()) && o.escalation_ok() {
            entry.0 += 1;
        }
    }
    println!("\nfully right per group:");
    for (group, (ok, n)) in &by_group {
        println!("  {group:<11} {ok:>3} / {n:<3}");
    }

    let f = &figures;
    println!("\nfigure                 value     floor     goal");
    let rows = [
        (
            "intent accuracy",
            f.intent_accuracy(),
            floors.intent_accuracy,
            Some(GOAL_INTENT_ACCURACY),
            format!("{}/{}", f.intent_correct, f.intent_total),
        ),
        (
            "escalation precision",
            f.precision(),
            floors.escalation_precision,
            Some(GOAL_ESCALATION_PRECISION),
            format!("{}/{}", f.true_pos, f.true_pos + f.false_pos),
        ),
        (
            "escalation recall",
            f.recall(),
            floors.escalation_recall,
            Some(GOAL_ESCALATION_RECALL),
            format!("{}/{}", f.true_pos, f.true_pos + f.false_neg),
        ),
        (
            "reason accuracy",
            f.reason_accuracy(),
            floors.reason_accuracy,
            None,
            format!("{}/{}", f.reason_correct, f.true_pos),
        ),
    ];
    for (name, value, floor, goal, counts) in &rows {
        println!(
            "{name:<21} {} {} {}   ({counts})",
            pct(*value),
            pct(*floor),
            goal.map(pct).unwrap_or_else(|| "      -".into()),
        );
    }

    let failed: Vec<String> = rows
        .iter()
        .filter(|(_, value, floor, _, _)| value < floor)
        .map(|(name, value, floor, _, _)| {
            format!("{name} {} below the floor {}", pct(*value), pct(*floor))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: {} (misses printed above)",
        failed.join("; ")
    );
}

/// Per-intent confusion counts (expected intent -> what the bot said). Informational only.
#[test]
fn per_intent_confusion() {
    let set = load_set();
    let outcomes = evaluate(&assets(), &set);
    let mut confusion: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for o in &outcomes {
        *confusion
            .entry(o.case.intent.as_str())
            .or_default()
            .entry(o.intent.as_str())
            .or_default() += 1;
    }
    println!("\nexpected intent -> got (count); * marks the right answer");
    for (expected, got) in &confusion {
        let total: usize = got.values().sum();
        let right = got.get(expected).copied().unwrap_or(0);
        let cells: Vec<String> = got
            .iter()
            .map(|(name, n)| {
                let mark = if name == expected { "*" } else { "" };
                format!("{mark}{name} {n}")
            })
            .collect();
        println!(
            "  {expected:<15} {right:>3}/{total:<3} {}",
            cells.join(", ")
        );
    }
    let mut escalations: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for o in &outcomes {
        *escalations
            .entry((o.case.escalation.as_str(), o.escalation.as_str()))
            .or_default() += 1;
    }
    println!("\nexpected escalation -> got (count)");
    for ((expected, got), n) in &escalations {
        let mark = if expected == got { "*" } else { " " };
        println!("  {mark} {expected:<17} -> {got:<17} {n}");
    }
}

//! Human-readable output of simulations: the per-turn transcript view and the summary table.

use std::fmt::Write;
use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

use crate::report::{CallOutcome, CallReport, TurnInput, TurnReport};

use super::batch::FileResult;

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f32())
}

/// One turn, as several indented lines.
pub fn turn_text(turn: &TurnReport) -> String {
    let mut s = String::new();
    let heard = match turn.input {
        TurnInput::Speech => format!(
            "caller: \"{}\"  (asr confidence {:.2})",
            turn.transcript, turn.asr_confidence
        ),
        TurnInput::Dtmf => "caller pressed a key".to_string(),
        TurnInput::NoInput => "caller silent (no input)".to_string(),
    };
    let _ = writeln!(
        s,
        "  [{}] {}-{} s  {heard}",
        turn.index,
        secs(turn.start),
        secs(turn.end),
    );
    let slots = if turn.slots.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = turn.slots.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("  slots: {}", list.join(", "))
    };
    let _ = writeln!(
        s,
        "      intent: {} ({:.2}){}",
        turn.intent, turn.intent_confidence, slots
    );
    if let Some(em) = turn
        .emotion
        .as_ref()
        .filter(|e| e.combined > 0.0 || e.voice.is_some())
    {
        let voice = match (em.voice, &em.voice_detail) {
            (Some(v), Some(d)) => format!(", voice arousal {v:.2} ({d})"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "      emotion: words {:.2}{voice}, combined {:.2}",
            em.text, em.combined
        );
    }
    if let Some(e) = &turn.escalation {
        let _ = writeln!(
            s,
            "      ESCALATE: {} -> {} team: {}",
            serde_json::to_value(e.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            e.skill,
            e.detail
        );
    }
    if let Some(fault) = &turn.fault {
        let _ = writeln!(s, "      FAULT: {fault}");
    }
    if !turn.reply.is_empty() {
        let _ = writeln!(s, "      bot: \"{}\"", turn.reply);
    }
    let t = &turn.timings;
    let _ = writeln!(
        s,
        "      timings: asr {} ms, intent {:.2} ms, tts {} ms, total {} ms",
        t.asr.as_millis(),
        t.intent.as_secs_f64() * 1000.0,
        t.tts.as_millis(),
        t.total.as_millis()
    );
    s
}

/// A whole call.
pub fn call_text(file: &str, report: &CallReport) -> String {
    let mut s = format!("== {file}\n  bot: \"{}\"\n", report.greeting);
    for turn in &report.turns {
        s.push_str(&turn_text(turn));
    }
    let rest = match report.outcome {
        _ if report.unprocessed_after_end.is_zero() => String::new(),
        CallOutcome::Escalated => format!(
            " ({} s of caller audio after the hand-over left to the human)",
            secs(report.unprocessed_after_end)
        ),
        _ => format!(
            " ({} s of caller audio after the goodbye not processed)",
            secs(report.unprocessed_after_end)
        ),
    };
    let _ = writeln!(s, "  outcome: {}{rest}", outcome_text(report.outcome));
    s
}

fn outcome_text(outcome: CallOutcome) -> &'static str {
    match outcome {
        CallOutcome::CallerHungUp => "caller hung up",
        CallOutcome::Completed => "bot completed the call",
        CallOutcome::Escalated => "escalated to a human",
    }
}

/// The batch summary table.
pub fn summary_table(results: &[FileResult]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "file",
        "turns",
        "outcome",
        "reason",
        "mean ASR conf",
        "mean ASR ms",
        "mean total ms",
        "status",
    ]);
    for r in results {
        let name = r.file.display().to_string();
        match (&r.report, &r.error) {
            (Some(report), None) => {
                let n = report.turns.len().max(1) as f32;
                let conf: f32 = report.turns.iter().map(|t| t.asr_confidence).sum::<f32>() / n;
                let asr: u128 = report.turns.iter().map(|t| t.timings.asr.as_millis()).sum();
                let total: u128 = report
                    .turns
                    .iter()
                    .map(|t| t.timings.total.as_millis())
                    .sum();
                let reason = report
                    .escalation
                    .as_ref()
                    .and_then(|e| serde_json::to_value(e.reason).ok())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "-".into());
                table.add_row(vec![
                    Cell::new(name),
                    Cell::new(report.turns.len()).set_alignment(CellAlignment::Right),
                    Cell::new(outcome_text(report.outcome)),
                    Cell::new(reason),
                    Cell::new(format!("{conf:.2}")).set_alignment(CellAlignment::Right),
                    Cell::new(asr / n as u128).set_alignment(CellAlignment::Right),
                    Cell::new(total / n as u128).set_alignment(CellAlignment::Right),
                    Cell::new("ok"),
                ]);
            }
            (_, error) => {
                table.add_row(vec![
                    Cell::new(name),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new(format!(
                        "FAILED: {}",
                        error.as_deref().unwrap_or("no report")
                    )),
                ]);
            }
        }
    }
    table.to_string()
}

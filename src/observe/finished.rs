//! The end of every call: its record feeds the metrics and is stored in the [`CallHistory`]
//! on a blocking thread, so the SQLite write (a few ms, more when the disk is busy) never
//! holds an async worker, and a failed write costs the history one call, never the call
//! itself. The record is stored as the JSON the gateway writes to `--report-dir`, plus a
//! `summary`: the same few lines the agent's hand-over context has, so a history view can
//! show what happened at a glance. Also the history's retention task.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::metrics;
use crate::call::record::CallRecord;
use crate::handover::context::{build, ContextInput};
use crate::history::CallHistory;

/// Stores a finished call (see the module documentation). Never blocks: the database write
/// runs on tokio's blocking pool (inline when called outside a runtime); the write's task is
/// returned for whoever must know when it is done (it says whether the call was stored).
pub fn on_call_finished(
    history: Option<Arc<CallHistory>>,
    started: SystemTime,
    record: &CallRecord,
) -> Option<tokio::task::JoinHandle<bool>> {
    metrics::observe_finished_call(record);
    let history = history?;
    let mut value = match serde_json::to_value(record) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, call_id = %record.call_id, "call record not serialisable; not stored");
            return None;
        }
    };
    if let (Some(report), Some(fields)) = (&record.report, value.as_object_mut()) {
        let ctx = build(&ContextInput {
            call_id: &record.call_id,
            flow: &report.flow,
            caller: &record.from,
            called: record.called.as_deref(),
            started_at: started,
            escalated_at: None,
            greeting: Some((&report.greeting, 0)),
            turns: &report.turns,
            bot_speech: &[],
            escalation: report.escalation.as_ref(),
            team_name: None,
            after_handover: &[],
        });
        fields.insert("summary".into(), Value::String(ctx.summary));
    }
    let started_ms = unix_ms(started);
    let store = move || match history.insert(started_ms, &value) {
        Ok(s) => {
            tracing::debug!(call_id = %s.call_id, "call stored in the history");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store the call in the history");
            false
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => Some(rt.spawn_blocking(store)),
        Err(_) => {
            store();
            None
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes calls older than `days` at once and then once a day, until the task is aborted.
/// `days == 0` keeps everything (no task).
pub fn spawn_retention(
    history: Arc<CallHistory>,
    days: u32,
) -> Option<tokio::task::JoinHandle<()>> {
    crate::storage::spawn_daily_prune("call history", days, move |before| history.prune(before))
}

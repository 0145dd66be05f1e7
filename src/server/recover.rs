//! The calls a previous run of the gateway did not finish, closed at start from the journal
//! ([`crate::journal`]): each goes to the history and the report directory as `interrupted`,
//! an escalated one sends its `call_ended` (the agents' systems learn the call is over), and
//! its open legs are ended (the caller's dialog gets a BYE, a ringing agent a CANCEL, a
//! bridged agent a BYE). Runs before the gateway takes calls.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::call::record::EndedBy;
use crate::handover::outbox::DelivererHandle;
use crate::history::CallHistory;
use crate::journal::{CallJournal, InterruptedCall};
use crate::sip::endpoint::SipEndpoint;
use crate::sip::escape::escaped;

/// Where the interrupted calls' records and events go.
pub(super) struct Sinks<'a> {
    pub report_dir: Option<&'a Path>,
    pub history: Option<Arc<CallHistory>>,
    pub deliverer: Option<Arc<DelivererHandle>>,
    /// This gateway's node name when a shared store is on (the record names it).
    pub node: Option<&'a str>,
}

/// Closes every call left in `journal`; returns how many there were.
pub(super) async fn recover(
    journal: Arc<CallJournal>,
    endpoint: &mut SipEndpoint,
    sinks: Sinks<'_>,
) -> usize {
    let reader = Arc::clone(&journal);
    let calls = match tokio::task::spawn_blocking(move || reader.unfinished()).await {
        Ok(Ok(calls)) => calls,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the call journal; no call recovered");
            return 0;
        }
        Err(e) => {
            tracing::error!(error = %e, "call journal reader failed");
            return 0;
        }
    };
    for call in &calls {
        close(call, endpoint, &sinks).await;
        let (j, id) = (Arc::clone(&journal), call.id.clone());
        let finished = tokio::task::spawn_blocking(move || j.finish(&id)).await;
        if !matches!(finished, Ok(Ok(()))) {
            tracing::error!(id = %call.id, "cannot clear a recovered call from the journal");
        }
    }
    calls.len()
}

/// The interrupted call's final record: what was journaled, ended by `interrupted`.
pub(super) fn final_record(call: &InterruptedCall) -> Value {
    let mut record = match &call.record {
        Value::Object(_) => call.record.clone(),
        _ => json!({}),
    };
    if let Some(fields) = record.as_object_mut() {
        fields.insert("id".into(), json!(call.id));
        fields.insert("ended_by".into(), json!(EndedBy::Interrupted));
        let duration = call.updated_at_ms.saturating_sub(call.started_at_ms).max(0);
        fields.insert("duration_ms".into(), json!(duration));
        fields.entry("call_id").or_insert_with(|| json!(call.id));
    }
    record
}

async fn close(call: &InterruptedCall, endpoint: &mut SipEndpoint, sinks: &Sinks<'_>) {
    let mut record = final_record(call);
    if let (Some(node), Some(fields)) = (sinks.node, record.as_object_mut()) {
        fields.insert("node".into(), json!(node));
    }
    let call_id = record["call_id"].as_str().unwrap_or(&call.id).to_string();
    tracing::warn!(id = %call.id, call_id = %escaped(&call_id), legs = call.legs.len(), escalated = call.context.is_some(),
        "call interrupted by the previous run: recording it and ending its legs");
    if let Some(dir) = sinks.report_dir {
        super::call::write_record(dir, &call.id, &record);
    }
    if let Some(history) = &sinks.history {
        let (h, r, started) = (Arc::clone(history), record.clone(), call.started_at_ms);
        match tokio::task::spawn_blocking(move || h.insert(started, &r)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(id = %call.id, error = %e, "interrupted call not stored in the history")
            }
            Err(e) => tracing::error!(id = %call.id, error = %e, "history writer failed"),
        }
    }
    if let (Some(deliverer), Some(context)) = (&sinks.deliverer, &call.context) {
        let mut data = context.clone();
        if let Some(fields) = data.as_object_mut() {
            fields.insert("outcome".into(), json!("interrupted"));
            fields.insert("ended_by".into(), json!(EndedBy::Interrupted));
        }
        let (d, id) = (Arc::clone(deliverer), call_id.clone());
        match tokio::task::spawn_blocking(move || d.enqueue(&id, "call_ended", data)).await {
            Ok(Ok(event)) => {
                tracing::info!(call_id = %escaped(&call_id), event_id = %event, "call_ended queued for the interrupted call")
            }
            Ok(Err(e)) => {
                tracing::error!(call_id = %escaped(&call_id), error = %e, "call_ended for the interrupted call not queued")
            }
            Err(e) => {
                tracing::error!(call_id = %escaped(&call_id), error = %e, "outbox writer failed")
            }
        }
    }
    let now = std::time::Instant::now();
    for (name, leg) in &call.legs {
        if !endpoint.end_restored(leg, now) {
            tracing::warn!(id = %call.id, leg = %name, "cannot end a journaled leg");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_record_keeps_what_was_journaled_and_says_interrupted() {
        let call = InterruptedCall {
            id: "gw-1".into(),
            started_at_ms: 1_000,
            updated_at_ms: 4_500,
            record: json!({"call_id": "x@h", "turns": [{"text": "hi"}], "duration_ms": 1}),
            context: None,
            legs: Vec::new(),
        };
        let r = final_record(&call);
        assert_eq!(r["id"], "gw-1");
        assert_eq!(r["call_id"], "x@h");
        assert_eq!(r["ended_by"], "interrupted");
        assert_eq!(r["duration_ms"], 3_500);
        assert_eq!(r["turns"][0]["text"], "hi");
        let empty = InterruptedCall {
            record: json!("garbage"),
            ..call
        };
        assert_eq!(final_record(&empty)["call_id"], "gw-1");
    }
}

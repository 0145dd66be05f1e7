//! The typed facts of a call's end and of its transfer: who ended the call, how the transfer
//! went, and the events the call emits. The call-control core fills them in; the IO shell turns
//! them into JSON only where they leave the process (webhook, agent screen, record file,
//! history), so every consumer reads the same names.

use serde::{Deserialize, Serialize};

use crate::handover::transfer::{Attempt, TransferMode};
use crate::report::CallReport;
use crate::sip::endpoint::EndReason;

/// The JSON record written for each finished call: the same report `voicebot simulate --json`
/// writes, plus the telephony facts.
#[derive(Debug, Default, Serialize)]
pub struct CallRecord {
    /// The gateway's own call id ([`new_call_id`]): files and stores are named by it.
    pub id: String,
    /// The SIP Call-ID, as the caller chose it (data, not a key: two calls may share one).
    pub call_id: String,
    pub from: String,
    pub called: Option<String>,
    /// The `[[sip.trunks]]` entry the call came through, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
    pub codec: String,
    pub remote_rtp: String,
    pub duration_ms: u64,
    pub ended_by: EndedBy,
    pub dtmf: Vec<char>,
    pub bot_speech: Vec<BotSpeech>,
    pub rtp: RtpFigures,
    #[serde(flatten)]
    pub report: Option<CallReport>,
    pub pipeline_error: Option<String>,
    /// The warm transfer, when the call was handed to a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferRecord>,
    /// The call's recording, when `[recording]` is on and it was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingInfo>,
    /// The gateway that handled the call (`[storage] node`), when the gateways share a store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What the bot said on the call, and whether the caller cut it short.
#[derive(Debug, Clone, Serialize)]
pub struct BotSpeech {
    /// `greeting` or `reply` (prompts of the call's control, such as the apology, are
    /// replies).
    pub kind: &'static str,
    pub text: String,
    /// Call time when it was queued for playout, ms.
    pub queued_at_ms: u64,
    pub duration_ms: u64,
    /// How much of it went out before the caller interrupted (equal to the duration when not
    /// interrupted).
    pub played_ms: u64,
    pub interrupted: bool,
}

/// RTP figures for the call's record.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RtpFigures {
    pub packets_received: u64,
    pub packets_lost: u64,
    pub packets_late: u64,
    pub jitter_ms: f64,
    pub packets_sent: u64,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
    /// The caller's view of our stream, from its last RTCP report: packets lost and jitter
    /// (ms).
    pub remote_reported_lost: Option<u32>,
    pub remote_reported_jitter_ms: Option<f64>,
    /// How far packets left from their 20 ms grid, early or late (send jitter), ms.
    pub send_late_p50_ms: f64,
    pub send_late_p99_ms: f64,
    pub send_late_max_ms: f64,
    /// The whole distribution: (bucket of 0.1 ms, packets) for the non-empty buckets, so
    /// several calls can be merged.
    pub send_late_histogram: Vec<(u16, u32)>,
    pub frames_dropped_by_pipeline: u64,
    /// Datagrams dropped because they came from a source other than the latched one (or,
    /// before latching, one the `[media] latching` rule refuses), and RTP from the latched
    /// address with another SSRC while the locked stream was alive (`media::latch`).
    pub packets_from_strangers: u64,
    pub packets_foreign_ssrc: u64,
    /// The SRTP suite when the caller's media was encrypted (SDES), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    /// SRTP/SRTCP packets dropped because they could not be authenticated (a wrong key,
    /// tampering) or replayed one already accepted; none of them was played.
    pub srtp_auth_failures: u64,
    pub srtp_replays: u64,
    /// Datagrams on an SRTP call that are no SRTP/SRTCP packet at all (too short to carry
    /// a tag, not RTP version 2), e.g. a peer's NAT keep-alives: dropped, not played, and not
    /// counted as authentication failures (they are no forgery attempt).
    #[serde(default)]
    pub srtp_malformed: u64,
}

/// A finished recording, as the call's record shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    /// The file name inside `[recording] dir`.
    pub file: String,
    /// Samples per second (the call's codec rate when it started).
    pub rate: u32,
    /// Always "left: caller, right: sent to the caller".
    pub channels: String,
    pub seconds: f64,
    /// Audio lost because the disk could not keep up (both channels), ms.
    pub dropped_ms: u64,
}

/// Who or what ended the call (the record's `ended_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The caller hung up (BYE).
    Caller,
    /// The bot said goodbye, or nobody could take the escalated call.
    Bot,
    /// The agent hung up a bridged call.
    Agent,
    /// The caller's side took the call to the agent (blind or attended transfer).
    Transferred,
    /// The gateway was stopping.
    Shutdown,
    /// The gateway died during the call (a crash or `kill -9`); the next start closed it from
    /// the journal of calls in progress.
    Interrupted,
    /// The caller's RTP stopped for longer than `no_rtp_timeout_s`.
    NoRtpTimeout,
    /// The call's pipeline failed.
    PipelineError,
    /// The caller cancelled before the answer.
    Cancelled,
    /// The gateway's own hang-up finished the dialog.
    LocalHangup,
    /// The gateway rejected the call.
    Rejected,
    /// The caller never acknowledged the answer.
    AckTimeout,
    /// The session timer ran out.
    SessionExpired,
    /// The call was refused or never answered (calls the gateway placed).
    Refused,
    NoResponse,
    /// Nothing said why (the call task's queue closed).
    #[default]
    Unknown,
}

impl EndedBy {
    /// Why signalling says the dialog ended.
    pub fn from_end(reason: &EndReason) -> EndedBy {
        match reason {
            EndReason::RemoteBye => EndedBy::Caller,
            EndReason::Cancelled => EndedBy::Cancelled,
            EndReason::LocalHangup => EndedBy::LocalHangup,
            EndReason::Rejected(_) => EndedBy::Rejected,
            EndReason::AckTimeout => EndedBy::AckTimeout,
            EndReason::SessionExpired => EndedBy::SessionExpired,
            EndReason::Refused(_) => EndedBy::Refused,
            EndReason::NoResponse => EndedBy::NoResponse,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Bot => "bot",
            EndedBy::Agent => "agent",
            EndedBy::Transferred => "transferred",
            EndedBy::Shutdown => "shutdown",
            EndedBy::Interrupted => "interrupted",
            EndedBy::NoRtpTimeout => "no_rtp_timeout",
            EndedBy::PipelineError => "pipeline_error",
            EndedBy::Cancelled => "cancelled",
            EndedBy::LocalHangup => "local_hangup",
            EndedBy::Rejected => "rejected",
            EndedBy::AckTimeout => "ack_timeout",
            EndedBy::SessionExpired => "session_expired",
            EndedBy::Refused => "refused",
            EndedBy::NoResponse => "no_response",
            EndedBy::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for EndedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferOutcome {
    /// Caller and agent talked through the gateway.
    Bridged,
    /// The caller's side took the call to the agent (blind or attended REFER).
    Transferred,
    /// The agent hung up and the bot took the caller back.
    ReturnedToBot,
    /// Nobody answered: the caller heard the apology and a callback was requested.
    Callback,
    /// The caller left before being put through.
    CallerHungUp,
}

/// How a warm transfer went, for the call's record.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TransferRecord {
    /// The team (skill) the call went to.
    pub skill: String,
    /// Every extension tried, with its outcome.
    pub attempts: Vec<Attempt>,
    /// The extension that answered.
    pub agent: Option<String>,
    /// From the escalation decision to the first agent INVITE (or REFER), ms.
    pub decision_to_invite_ms: Option<f64>,
    /// From the agent's answer to the caller's audio going to the agent, ms (bridge mode: at
    /// once, or after the whisper).
    pub answer_to_bridge_ms: Option<f64>,
    /// From the agent's answer to the caller hearing the agent, ms: once the whisper and the
    /// caller's announcement are over.
    pub answer_to_put_through_ms: Option<f64>,
    /// Packets relayed to and from the agent.
    pub packets_to_agent: u64,
    pub packets_from_agent: u64,
    /// How it ended; absent while it is still going on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<TransferOutcome>,
    /// How the answering extension was reached.
    pub mode: Option<TransferMode>,
    /// What the agent heard before the caller was put through, and for how long (ms).
    pub whisper: Option<String>,
    pub whisper_ms: Option<f64>,
    /// The Refer-To of the transfer, and the status the caller's side reported for it.
    pub refer_to: Option<String>,
    pub refer_status: Option<u16>,
    /// Webhook events queued (event ids).
    pub webhook_events: Vec<String>,
    /// Whether the webhook confirmed the escalated event before the agent's INVITE went out.
    pub webhook_before_invite: Option<bool>,
}

/// What the call tells the outside world (webhook and agent screens) during a transfer. The
/// shell adds what only it knows (the context for `Escalated`) when it turns one into JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallEvent {
    /// The call is being handed over: the context goes out before any phone rings.
    Escalated { skill: String },
    /// An agent answered and the leg's media runs.
    AgentAnswered {
        agent: String,
        mode: TransferMode,
        codec: String,
    },
    /// The caller's side reached the agent itself; the gateway left the call.
    Transferred { agent: String, mode: TransferMode },
    /// The agent hung up and the bot has the caller again.
    ReturnedToBot { agent: Option<String> },
    /// Nobody answered: somebody should call the caller back.
    CallbackRequested {
        skill: String,
        reason: String,
        attempts: Vec<Attempt>,
    },
}

impl CallEvent {
    /// The event's name on the webhook and the agent screen.
    pub fn kind(&self) -> &'static str {
        match self {
            CallEvent::Escalated { .. } => "escalated",
            CallEvent::AgentAnswered { .. } => "agent_answered",
            CallEvent::Transferred { .. } => "transferred",
            CallEvent::ReturnedToBot { .. } => "returned_to_bot",
            CallEvent::CallbackRequested { .. } => "callback_requested",
        }
    }

    /// The event's data as the webhook carries it (without the `kind` tag, which travels in
    /// the envelope).
    pub fn data(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_else(|e| {
            // Every field is a plain string, number or list of them: this cannot fail.
            tracing::error!(error = %e, "call event not serialisable");
            serde_json::Value::Null
        });
        if let Some(fields) = value.as_object_mut() {
            fields.remove("kind");
        }
        value
    }
}

/// A new gateway call id: a UUIDv7, unique without coordination and sorted by creation time,
/// so files and listings named by it sort by call start. Unlike the SIP Call-ID, no peer
/// chooses it, so it can name files and key stores.
pub fn new_call_id() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

/// A call id as a file name stem (call records, recordings): anything but letters, digits, `-`
/// and `.` replaced by `_`, at most 120 characters, no leading dot, so a hostile Call-ID can
/// name neither another path nor a hidden file.
pub fn call_file_stem(call_id: &str) -> String {
    let safe: String = call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    safe.trim_start_matches('.').to_string()
}

/// The recording's file name for a call id (see [`call_file_stem`]: a hostile Call-ID
/// cannot name another path).
pub fn recording_file_name(call_id: &str) -> String {
    format!("{}.wav", call_file_stem(call_id))
}

/// Whether `name` is a recording file name as [`recording_file_name`] makes them (no directory part).
pub fn is_recording_file_name(name: &str) -> bool {
    name.ends_with(".wav")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_wire_are_snake_case() {
        assert_eq!(
            serde_json::to_value(EndedBy::NoRtpTimeout).unwrap(),
            "no_rtp_timeout"
        );
        assert_eq!(EndedBy::from_end(&EndReason::RemoteBye), EndedBy::Caller);
        assert_eq!(
            serde_json::to_value(TransferOutcome::ReturnedToBot).unwrap(),
            "returned_to_bot"
        );
        for e in [EndedBy::LocalHangup, EndedBy::AckTimeout, EndedBy::Bot] {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
    }

    #[test]
    fn event_data_leaves_the_kind_to_the_envelope() {
        let e = CallEvent::Transferred {
            agent: "sip:1@pbx".into(),
            mode: TransferMode::Blind,
        };
        assert_eq!(e.kind(), "transferred");
        assert_eq!(
            e.data(),
            serde_json::json!({"agent": "sip:1@pbx", "mode": "blind"})
        );
    }
}

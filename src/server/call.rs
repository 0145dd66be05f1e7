//! One answered call's media task: the RTP socket, the jitter buffer and decoder feeding the
//! call's [`pipeline`](crate::pipeline), the bot's speech encoded and paced out every 20 ms
//! (silence when the bot is quiet, so the stream never stalls), barge-in, DTMF, and the call's
//! record when it ends. It ends the call itself when the bot is done (goodbye or escalation),
//! when the caller's RTP stops for too long, or at shutdown; whatever happens, its ports and
//! pipeline are freed when it returns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::audio::frames::AudioFrame;
use crate::audio::resample::resample_all;
use crate::flows::Flow;
use crate::handover::context::{self, BotSpeechLine, ContextInput};
use crate::handover::outbox::DelivererHandle;
use crate::handover::transfer::{
    parse_target, user_to_user, AfterAgent, Attempt, AttemptOutcome, Hunt, Target, TransferConfig,
    TransferMode,
};
use crate::media::barge_in::{BargeIn, BargeInConfig};
use crate::media::codec::CodecError;
use crate::media::jitter::JitterConfig;
use crate::media::receiver::MediaReceiver;
use crate::media::rtcp::{parse_rtcp, sender_report, ReceptionReport, SenderInfo};
use crate::media::rtp::is_rtcp;
use crate::media::sender::RtpSender;
use crate::pipeline::{
    run_call_with, run_transcriber, synthesize_text, CallInput, CallOptions, CallOutput, Engines,
    SpeechCancel, SpeechKind,
};
use crate::report::CallReport;
use crate::report::{HeardLine, TurnReport};
use crate::sip::endpoint::{CallHandle, EndReason, IncomingCall, ReferProgress};
use crate::sip::sdp::Negotiated;
use crate::speech::voice::VoiceStyle;

use super::pacer::{Lateness, PacedStream, Pacer};
use super::ports::RtpPorts;
use super::recording::{CallRecorder, RecordingConfig, RecordingInfo};
use super::transfer::{convert, hold_tone_frame, AgentMedia};
use super::{Inbound, PlaceCall, ReferCall};
use crate::admin::live::CallState as LiveState;

/// Packet time: every frame and packet is 20 ms.
const PTIME_MS: u32 = 20;
/// RTCP report interval (RFC 3550's minimum of 5 s suits one audio stream each way).
const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// Caller frames allowed to wait for the pipeline's listen stage.
const INPUT_QUEUE: usize = 64;

/// What the signalling task tells a call task.
#[derive(Debug)]
pub enum CallControl {
    /// The caller acknowledged the answer.
    Confirmed,
    /// Hold, resume or a codec change.
    MediaChanged(Negotiated),
    /// A DTMF digit sent as SIP INFO.
    Dtmf(char),
    /// The dialog is over.
    Ended(EndReason),
    /// The gateway is stopping: hang up now.
    Shutdown,
    /// News of the agent leg of a transfer.
    Agent(AgentEvent),
    /// How the caller's side is doing with the transfer we REFERred it to.
    Refer(ReferProgress),
}

/// What happened to an agent leg the call task asked for.
#[derive(Debug)]
pub enum AgentEvent {
    /// The agent's phone rings (180) or plays early media (183).
    Progress(CallHandle, u16),
    /// The agent answered.
    Answered(CallHandle, Negotiated),
    /// The leg ended: refused, cancelled, timed out, or the agent hung up.
    Ended(CallHandle, EndReason),
}

/// Everything a call task needs.
pub struct CallSetup {
    pub call: IncomingCall,
    pub ports: RtpPorts,
    pub flow: Arc<Flow>,
    pub engines: Engines,
    pub report_dir: Option<PathBuf>,
    pub pacer: Pacer,
    pub control: mpsc::Receiver<CallControl>,
    pub(super) hangup: mpsc::Sender<Inbound>,
    /// Where hand-over events go (webhook outbox), when configured.
    pub deliverer: Option<Arc<DelivererHandle>>,
    /// Live hand-over contexts and events for the agents' screens.
    pub hub: Arc<crate::handover::hub::HandoverHub>,
    /// Where the finished call's record is stored for the admin API, when enabled.
    pub history: Option<Arc<crate::history::CallHistory>>,
    /// The calls-in-progress view of the admin API: this call's phase is reported there.
    pub live: Arc<crate::admin::live::LiveCalls>,
}

/// What the bot said on the call, and whether the caller cut it short.
#[derive(Debug, Clone, Serialize)]
pub struct BotSpeech {
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
}

/// The JSON record written for each finished call: the same report `voicebot simulate --json`
/// writes, plus the telephony facts.
#[derive(Debug, Serialize)]
pub struct CallRecord {
    pub call_id: String,
    pub from: String,
    pub called: Option<String>,
    pub codec: String,
    pub remote_rtp: String,
    pub duration_ms: u64,
    pub ended_by: String,
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
    /// From the escalation decision to the first agent INVITE, ms.
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
    /// "bridged", "transferred" (the caller's side took the call to the agent: blind or
    /// attended), "returned_to_bot", "callback" (nobody answered) or "caller_hung_up".
    pub outcome: String,
    /// How the answering extension was reached: bridge, blind or attended.
    pub mode: Option<String>,
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

/// Tracks queued bot speech against what the sender actually played.
#[derive(Default)]
struct SpeechLog {
    entries: Vec<(
        BotSpeech,
        u64, /* start offset in samples */
        u64, /* length */
    )>,
    enqueued: u64,
}

impl SpeechLog {
    fn push(&mut self, kind: SpeechKind, text: String, at: Duration, samples: u64, rate: u32) {
        let speech = BotSpeech {
            kind: match kind {
                SpeechKind::Greeting => "greeting",
                SpeechKind::Reply => "reply",
            },
            text,
            queued_at_ms: at.as_millis() as u64,
            duration_ms: samples * 1000 / u64::from(rate.max(1)),
            played_ms: 0,
            interrupted: false,
        };
        self.entries.push((speech, self.enqueued, samples));
        self.enqueued += samples;
    }

    /// More audio of the last entry (the next unit of a reply spoken in units).
    fn extend(&mut self, samples: u64, rate: u32) {
        if let Some((speech, _, len)) = self.entries.last_mut() {
            *len += samples;
            speech.duration_ms = *len * 1000 / u64::from(rate.max(1));
        }
        self.enqueued += samples;
    }

    /// Audio that is not bot speech (the hold tone) went into the same sender.
    fn pad(&mut self, samples: u64) {
        self.enqueued += samples;
    }

    /// What the bot said so far, as the hand-over context lists it.
    fn lines(&self, queued_now: u64, rate: u32) -> Vec<BotSpeechLine> {
        let played_total = self.enqueued.saturating_sub(queued_now);
        self.entries
            .iter()
            .map(|(speech, start, len)| {
                let played_ms = if speech.interrupted {
                    speech.played_ms
                } else {
                    played_total.saturating_sub(*start).min(*len) * 1000 / u64::from(rate.max(1))
                };
                BotSpeechLine {
                    at_ms: speech.queued_at_ms,
                    text: speech.text.clone(),
                    played_ms,
                    duration_ms: speech.duration_ms,
                    interrupted: speech.interrupted,
                }
            })
            .collect()
    }

    /// Records a barge-in: `unplayed` queued samples were dropped.
    fn cut(&mut self, unplayed: u64, rate: u32) {
        let played_total = self.enqueued.saturating_sub(unplayed);
        for (speech, start, len) in &mut self.entries {
            let end = *start + *len;
            if end > played_total && !speech.interrupted && speech.played_ms == 0 {
                let played = played_total.saturating_sub(*start).min(*len);
                speech.played_ms = played * 1000 / u64::from(rate.max(1));
                speech.interrupted = true;
            }
        }
        self.enqueued = played_total;
    }

    fn finish(mut self, queued_now: u64, rate: u32) -> Vec<BotSpeech> {
        let played_total = self.enqueued.saturating_sub(queued_now);
        for (speech, start, len) in &mut self.entries {
            if !speech.interrupted {
                let played = played_total.saturating_sub(*start).min(*len);
                speech.played_ms = played * 1000 / u64::from(rate.max(1));
            }
        }
        self.entries.into_iter().map(|(s, _, _)| s).collect()
    }
}

/// A warm transfer in progress (see [`crate::handover`]).
struct TransferRun {
    skill: String,
    /// The team's spoken name.
    team: String,
    escalation: crate::dialog::Escalation,
    hunt: Hunt,
    leg: Leg,
    record: TransferRecord,
    escalated_wall: std::time::SystemTime,
    /// Hold-tone frames played so far.
    hold_frames: u64,
}

impl TransferRun {
    /// The agent leg's media, once an agent answered and until the leg is gone.
    fn agent_media(&mut self) -> Option<&mut AgentMedia> {
        match &mut self.leg {
            Leg::Answered { media, .. }
            | Leg::Bridged { media }
            | Leg::Referring {
                consult: Some(media),
                ..
            } => Some(media),
            _ => None,
        }
    }

    fn agent_socket(&self) -> Option<Arc<UdpSocket>> {
        match &self.leg {
            Leg::Answered { media, .. }
            | Leg::Bridged { media }
            | Leg::Referring {
                consult: Some(media),
                ..
            } => Some(media.socket()),
            _ => None,
        }
    }

    /// Whether the caller waits for someone (and hears the hold tone).
    fn caller_waits(&self) -> bool {
        matches!(
            self.leg,
            Leg::Ringing { .. } | Leg::Answered { .. } | Leg::Referring { .. }
        )
    }
}

/// The call's phase for the admin API's live view.
fn live_state(run: Option<&TransferRun>) -> LiveState {
    match run.map(|r| &r.leg) {
        None => LiveState::Bot,
        Some(Leg::Dialing | Leg::Failed) => LiveState::Escalating,
        Some(Leg::Ringing { .. } | Leg::Answered { .. } | Leg::Referring { .. }) => {
            LiveState::RingingAgent
        }
        Some(Leg::Bridged { .. }) => LiveState::Bridged,
        Some(Leg::Transferred) => LiveState::Transferred,
    }
}

/// Where the agent leg stands.
enum Leg {
    /// Between attempts.
    Dialing,
    /// An extension rings.
    Ringing {
        agent: CallHandle,
        target: Target,
        ports: Option<RtpPorts>,
        deadline: Instant,
        /// We cancelled it at the ring timeout.
        cancelled: bool,
    },
    /// The agent answered. The whisper (if any) plays to the agent and the caller hears the
    /// end of the announcement, then the hold tone; once both are done the two are put
    /// through (the caller's queue is never flushed mid-sentence, nor does the agent's audio
    /// queue up behind the announcement).
    Answered {
        media: Box<AgentMedia>,
        target: Target,
        answered: Instant,
        /// When the whisper has gone out (the answer itself when there is none).
        whispered_at: Instant,
    },
    /// The caller's side was asked to transfer the call (REFER) and has not reported the
    /// result yet. Attended: `consult` is our answered call with the agent that it replaces.
    Referring {
        target: Target,
        deadline: Instant,
        consult: Option<Box<AgentMedia>>,
    },
    /// Caller and agent talk.
    Bridged { media: Box<AgentMedia> },
    /// The caller's side reached the agent itself; the gateway leaves the call.
    Transferred,
    /// Nobody answered: the apology plays, then the call ends.
    Failed,
}

/// The hand-over context of this call as it stands.
#[allow(clippy::too_many_arguments)]
fn handover_context(
    call: &IncomingCall,
    flow: &str,
    started_at: std::time::SystemTime,
    run: &TransferRun,
    turns: &[TurnReport],
    bot_speech: &[BotSpeechLine],
    escalation: Option<&crate::dialog::Escalation>,
    after_handover: &[context::TranscriptEntry],
) -> context::HandoverContext {
    context::build(&ContextInput {
        call_id: &call.call_id,
        flow,
        caller: crate::sip::message::uri_of(&call.from),
        called: call.called.as_deref(),
        started_at,
        escalated_at: Some(run.escalated_wall),
        greeting: None,
        turns,
        bot_speech,
        escalation,
        team_name: Some(&run.team),
        after_handover,
    })
}

/// How long the caller's side may take to report a transfer's result, beyond the ring timeout.
const REFER_GRACE: Duration = Duration::from_secs(15);

/// The headers that carry the context to the agent's phone or PBX: on our INVITE, or in the
/// Refer-To URI of a blind transfer (so the caller's side puts them on its INVITE).
fn context_headers(
    r: &TransferRun,
    call_id: &str,
    cfg: &TransferConfig,
    flow: &str,
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("X-Voicebot-Call-Id".to_string(), call_id.to_string()),
        ("X-Voicebot-Team".to_string(), r.skill.clone()),
        ("X-Voicebot-Flow".to_string(), flow.to_string()),
        ("User-to-User".to_string(), user_to_user(call_id)),
    ];
    if !cfg.context_url_base.is_empty() {
        headers.push((
            "X-Voicebot-Context-Url".to_string(),
            format!(
                "{}/calls/{call_id}/context",
                cfg.context_url_base.trim_end_matches('/')
            ),
        ));
    }
    headers
}

/// Asks the signalling task to REFER the caller's side; the Refer-To that went out.
async fn send_refer(
    signalling: &mpsc::Sender<Inbound>,
    caller: CallHandle,
    target: &str,
    headers: Vec<(String, String)>,
    replacing: Option<CallHandle>,
) -> Result<String, String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = ReferCall {
        caller,
        target: target.to_string(),
        headers,
        replacing,
        reply,
    };
    signalling
        .send(Inbound::Refer(request))
        .await
        .map_err(|_| "signalling is gone".to_string())?;
    match tokio::time::timeout(Duration::from_secs(2), answer).await {
        Ok(Ok(result)) => result,
        _ => Err("signalling did not answer".into()),
    }
}

/// The address of an extension's host (`sip:user@host[:port]`), looked up without blocking
/// (and at most 2 s: a dead DNS server must not hold the caller).
async fn resolve(uri: &str) -> Result<SocketAddr, String> {
    let (host, port) = parse_target(uri)?;
    let looked_up = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    match looked_up {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| format!("{host} has no address")),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!("cannot resolve {host}: no answer within 2 s")),
    }
}

/// Tries the next extensions of the hunt until one rings (bridge, attended) or the caller's
/// side was asked to call it (blind); [`Leg::Failed`] when none is left or none could be
/// tried.
async fn dial_next(
    r: &mut TransferRun,
    signalling: &mpsc::Sender<Inbound>,
    caller: CallHandle,
    call_id: &str,
    cfg: &TransferConfig,
    flow: &str,
) {
    while let Some(target) = r.hunt.next_target() {
        let headers = context_headers(r, call_id, cfg, flow);
        if target.mode == TransferMode::Blind {
            match send_refer(signalling, caller, &target.uri, headers, None).await {
                Ok(refer_to) => {
                    tracing::info!(target = %target.uri, "blind transfer: the caller's side was asked to call the extension");
                    r.record.refer_to = Some(refer_to);
                    r.leg = Leg::Referring {
                        target,
                        deadline: Instant::now() + cfg.ring_timeout() + REFER_GRACE,
                        consult: None,
                    };
                    return;
                }
                Err(why) => {
                    tracing::warn!(target = %target.uri, %why, "cannot transfer to this extension; trying the next");
                    r.hunt.record(&target.uri, &AttemptOutcome::Failed(why));
                    continue;
                }
            }
        }
        let addr = match resolve(&target.uri).await {
            Ok(addr) => addr,
            Err(why) => {
                tracing::warn!(target = %target.uri, %why, "cannot call this extension; trying the next");
                r.hunt.record(&target.uri, &AttemptOutcome::Failed(why));
                continue;
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = PlaceCall {
            caller,
            target: target.uri.clone(),
            addr,
            headers,
            from_display: format!("Voicebot {}", r.team),
            from_user: cfg.from_user.clone(),
            reply,
        };
        if signalling.send(Inbound::PlaceCall(request)).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(2), answer).await {
            Ok(Ok(Ok((agent, ports)))) => {
                tracing::info!(%agent, target = %target.uri, mode = target.mode.as_str(), "calling the agent");
                r.leg = Leg::Ringing {
                    agent,
                    target,
                    ports: Some(ports),
                    deadline: Instant::now() + cfg.ring_timeout(),
                    cancelled: false,
                };
                return;
            }
            Ok(Ok(Err(why))) => {
                tracing::warn!(target = %target.uri, %why, "cannot call this extension; trying the next");
                r.hunt.record(&target.uri, &AttemptOutcome::Failed(why));
            }
            _ => {
                r.hunt.record(
                    &target.uri,
                    &AttemptOutcome::Failed("signalling did not answer".into()),
                );
            }
        }
    }
    r.leg = Leg::Failed;
}

/// A line heard after the hand-over as a transcript entry; `offset`: the call time its
/// transcriber started at.
fn heard_entry(
    line: &HeardLine,
    offset: Duration,
    speaker: context::Speaker,
) -> context::TranscriptEntry {
    context::TranscriptEntry {
        at_ms: (offset + line.start).as_millis() as u64,
        speaker,
        text: line.text.clone(),
        interrupted: false,
        asr_confidence: Some(line.confidence),
        intent: None,
    }
}

/// Synthesises `text` in the flow's voice at `rate` for one leg; None (logged) when synthesis
/// fails.
async fn synthesize_at(
    engines: &Engines,
    text: &str,
    style: VoiceStyle,
    rate: u32,
) -> Option<Vec<f32>> {
    match synthesize_text(engines, text, style).await {
        Ok(audio) => Some(convert(audio.samples, audio.rate, rate)),
        Err(e) => {
            tracing::error!(error = %e, %text, "speech synthesis failed");
            None
        }
    }
}

/// Puts the caller through to the agent: stops the hold tone and bridges the two legs.
fn bridge(
    r: &mut TransferRun,
    agent: Box<AgentMedia>,
    answered: Option<Instant>,
    stream: &Arc<std::sync::Mutex<PacedStream>>,
    speech_log: &mut SpeechLog,
    rate: u32,
) {
    let unplayed = stream.lock().map_or(0, |mut s| s.sender.flush());
    speech_log.cut(unplayed as u64, rate);
    if let Some(at) = answered {
        let ms = at.elapsed().as_secs_f64() * 1000.0;
        r.record.answer_to_bridge_ms.get_or_insert(ms);
        r.record.answer_to_put_through_ms = Some(ms);
    }
    r.record.outcome = "bridged".into();
    tracing::info!(agent = %agent.handle, "caller and agent bridged");
    r.leg = Leg::Bridged { media: agent };
}

/// The agent answered (and heard the whisper, if any): bridge mode bridges; attended mode asks
/// the caller's side to replace our call with the agent by its own (REFER with `Replaces`),
/// bridging instead when that cannot even be asked.
#[allow(clippy::too_many_arguments)]
async fn put_through(
    r: &mut TransferRun,
    agent: Box<AgentMedia>,
    target: Target,
    answered: Instant,
    signalling: &mpsc::Sender<Inbound>,
    caller: CallHandle,
    cfg: &TransferConfig,
    stream: &Arc<std::sync::Mutex<PacedStream>>,
    speech_log: &mut SpeechLog,
    rate: u32,
) {
    if target.mode == TransferMode::Attended {
        match send_refer(
            signalling,
            caller,
            &target.uri,
            Vec::new(),
            Some(agent.handle),
        )
        .await
        {
            Ok(refer_to) => {
                tracing::info!(target = %target.uri, "attended transfer: the caller's side was asked to replace our call with the agent");
                r.record.refer_to = Some(refer_to);
                r.leg = Leg::Referring {
                    target,
                    deadline: Instant::now() + cfg.ring_timeout() + REFER_GRACE,
                    consult: Some(agent),
                };
                return;
            }
            Err(why) => {
                tracing::warn!(%why, "cannot ask for an attended transfer; bridging through the gateway instead");
            }
        }
    }
    bridge(r, agent, Some(answered), stream, speech_log, rate);
}

/// The caller's side could not make the transfer (`code`: its REFER or NOTIFY status). An
/// attended transfer whose agent is still on the line falls back to bridging through the
/// gateway; otherwise the hunt goes on. Returns whether the hunt has run dry.
#[allow(clippy::too_many_arguments)]
async fn transfer_failed(
    r: &mut TransferRun,
    code: u16,
    signalling: &mpsc::Sender<Inbound>,
    caller: CallHandle,
    call_id: &str,
    cfg: &TransferConfig,
    flow: &str,
    stream: &Arc<std::sync::Mutex<PacedStream>>,
    speech_log: &mut SpeechLog,
    rate: u32,
) -> bool {
    r.record.refer_status = Some(code);
    let leg = std::mem::replace(&mut r.leg, Leg::Dialing);
    let Leg::Referring {
        target, consult, ..
    } = leg
    else {
        r.leg = leg;
        return false;
    };
    match consult {
        Some(agent) => {
            tracing::warn!(code, target = %target.uri, "the caller's side could not take the attended transfer; bridging through the gateway instead");
            bridge(r, agent, None, stream, speech_log, rate);
            false
        }
        None => {
            tracing::warn!(code, target = %target.uri, "the transfer failed; trying the next extension");
            r.hunt
                .record(&target.uri, &AttemptOutcome::TransferFailed(code));
            dial_next(r, signalling, caller, call_id, cfg, flow).await;
            matches!(r.leg, Leg::Failed)
        }
    }
}

/// Waits up to `wait` for the webhook to confirm event `id`.
async fn wait_delivered(d: &DelivererHandle, call_id: &str, id: &str, wait: Duration) -> bool {
    use crate::handover::outbox::EventState;
    let deadline = Instant::now() + wait;
    loop {
        let delivered = d.outbox().events_for_call(call_id).is_ok_and(|events| {
            events
                .iter()
                .any(|e| e.event_id == id && e.state == EventState::Delivered)
        });
        if delivered {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Nobody answered: a callback request goes to the webhook and the caller hears the apology.
#[allow(clippy::too_many_arguments)]
async fn give_up(
    r: &mut TransferRun,
    engines: &Engines,
    flow: &Flow,
    post: &impl Fn(&str, serde_json::Value) -> Option<String>,
    stream: &Arc<std::sync::Mutex<PacedStream>>,
    speech_log: &mut SpeechLog,
    frames_fed: u64,
    rate: u32,
) {
    r.record.outcome = "callback".into();
    tracing::warn!(attempts = ?r.hunt.attempts(), "no agent answered; a callback is requested");
    let data = serde_json::json!({
        "skill": r.skill,
        "reason": "no agent answered",
        "attempts": r.hunt.attempts(),
    });
    r.record
        .webhook_events
        .extend(post("callback_requested", data));
    let text = flow.dialog.prompts().transfer_failed(&r.skill);
    if let Some(samples) = synthesize_at(engines, &text, flow.voice, rate).await {
        // After whatever is queued (the end of the announcement; at most 40 ms of tone).
        let at = Duration::from_millis(frames_fed * u64::from(PTIME_MS));
        speech_log.push(SpeechKind::Reply, text, at, samples.len() as u64, rate);
        if let Ok(mut s) = stream.lock() {
            s.sender.enqueue(&samples);
        }
    }
}

fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

/// Runs the call's media until it ends; never panics on network input, always writes the
/// record (when a report directory is set) and frees the ports.
pub async fn run_call_media(setup: CallSetup) {
    let CallSetup {
        call,
        ports,
        flow,
        engines,
        report_dir,
        pacer,
        mut control,
        hangup,
        deliverer,
        hub,
        history,
        live,
    } = setup;
    let started_wall = std::time::SystemTime::now();
    let handle = call.handle;
    let started = Instant::now();
    let media_cfg = engines.config.media.clone();
    let socket = match ports.rtp.try_clone().and_then(UdpSocket::from_std) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the RTP socket; hanging up");
            let _ = hangup.send(Inbound::Hangup(handle)).await;
            return;
        }
    };
    let rtcp_socket = ports
        .rtcp
        .as_ref()
        .and_then(|s| s.try_clone().ok())
        .and_then(|s| UdpSocket::from_std(s).ok());
    let mut rtcp = RtcpState::default();
    let mut rtcp_buf = vec![0u8; 1500];
    let mut next_rtcp = started + RTCP_INTERVAL;
    let mut media = call.media.clone();
    let mut remote: SocketAddr = media.remote_rtp;
    let (min_delay_ms, max_delay_ms) = (media_cfg.jitter_min_ms, media_cfg.jitter_max_ms);
    // The receive and send sides for a negotiated codec (again after a codec change).
    let media_ends = |m: &Negotiated, start: Instant| {
        let jitter = JitterConfig {
            clock_rate: m.codec.clock_rate(),
            frame_samples: m.codec.timestamp_per_frame(PTIME_MS),
            min_delay_ms,
            max_delay_ms,
        };
        let mut receiver = MediaReceiver::new(m.codec, m.telephone_event_pt, jitter)?;
        receiver.set_payload_type(m.payload_type);
        let mut sender = RtpSender::new_random(m.codec, m.payload_type, PTIME_MS, start)?;
        sender.set_telephone_event_pt(m.telephone_event_pt);
        Ok::<_, CodecError>((receiver, sender))
    };
    let (mut receiver, sender) = match media_ends(&media, started) {
        Ok(ends) => ends,
        Err(e) => {
            tracing::error!(error = %e, codec = %media.codec, "cannot set up the codec; hanging up");
            let _ = hangup.send(Inbound::Hangup(handle)).await;
            return;
        }
    };
    let send_socket = match ports.rtp.try_clone() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot share the RTP socket with the pacer; hanging up");
            let _ = hangup.send(Inbound::Hangup(handle)).await;
            return;
        }
    };
    let mut paced = PacedStream::new(sender, send_socket, remote);
    paced.sending = media.direction.sends();
    let mut recorder = start_recording(&engines.config.recording, &call.call_id, &media);
    // What the sender sent since the last tick, for the recording (reused every tick).
    let mut sent_audio: Vec<f32> = Vec::new();
    if recorder.is_some() {
        paced.sender.keep_sent_audio();
    }
    let stream = pacer.register(paced);
    // The receive side's 20 ms playout clock (sending is the pacer's job).
    let mut tick = tokio::time::interval_at(
        (started + Duration::from_millis(u64::from(PTIME_MS))).into(),
        Duration::from_millis(u64::from(PTIME_MS)),
    );
    let mut rate = media.codec.sample_rate();
    let mut barge_in = BargeIn::new(BargeInConfig {
        min_speech_ms: media_cfg.barge_in_min_speech_ms,
        floor_dbfs: media_cfg.barge_in_floor_dbfs,
        echo_return_loss_db: media_cfg.echo_return_loss_db,
        frame_ms: PTIME_MS,
    });

    let (in_tx, in_rx) = mpsc::channel(INPUT_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let speech_cancel = SpeechCancel::default();
    let options = CallOptions {
        transcribe_after_handover: true,
        speech_cancel: speech_cancel.clone(),
    };
    let mut pipeline = tokio::spawn(run_call_with(
        engines.clone(),
        flow.clone(),
        in_rx,
        out_tx,
        options,
    ));
    // After a barge-in, the rest of the interrupted reply (units already on their way) is
    // dropped until the next reply starts.
    let mut dropping_rest = false;
    let mut pipeline_result: Option<Result<CallReport, String>> = None;

    let mut speech_log = SpeechLog::default();
    let mut bot_level = 0.0f32;
    let mut figures = RtpFigures::default();
    let mut dtmf = Vec::new();
    let mut frames_fed: u64 = 0;
    let mut receiving = false;
    let mut latched = false;
    let mut buf = vec![0u8; 2048];
    let mut ended_by: Option<String> = None;
    // The bot finished (goodbye or escalation): hang up once its last words are out.
    let mut bot_done = false;
    let mut hangup_sent = false;
    let mut hangup_deadline: Option<Instant> = None;
    let mut rtp_timeout_logged = false;
    let no_rtp = Duration::from_secs(media_cfg.no_rtp_timeout_s);
    // The caller's turns so far (for the hand-over context) and the transfer, once escalated.
    let mut turns: Vec<TurnReport> = Vec::new();
    let mut run: Option<TransferRun> = None;
    let mut live_reported = LiveState::Bot;
    // A transfer that ended with the bot taking the caller back.
    let mut returned: Option<TransferRun> = None;
    // What caller and agent said after the hand-over (the live transcript), and the agent
    // side's transcriber while bridged: its input and the call time it started at.
    let mut after_handover: Vec<context::TranscriptEntry> = Vec::new();
    let (agent_line_tx, mut agent_line_rx) = mpsc::channel::<HeardLine>(16);
    let mut agent_asr: Option<(mpsc::Sender<CallInput>, Duration)> = None;
    let mut agent_buf = vec![0u8; 2048];
    let transfer_cfg = engines.config.handover.transfer.clone();
    let post = |kind: &str, data: serde_json::Value| -> Option<String> {
        hub.publish(kind, &call.call_id, &data);
        let d = deliverer.as_ref()?;
        match d.enqueue(&call.call_id, kind, data) {
            Ok(id) => {
                tracing::info!(event = kind, event_id = %id, "webhook event queued");
                Some(id)
            }
            Err(e) => {
                tracing::error!(event = kind, error = %e, "webhook event could not be queued");
                None
            }
        }
    };

    loop {
        let agent_socket = run.as_ref().and_then(TransferRun::agent_socket);
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let now = Instant::now();
                let rtp_packet = !is_rtcp(&buf[..n]);
                match receiver.push_datagram(&buf[..n], now) {
                    Ok(event) => {
                        // Symmetric RTP: answer where the caller's media really comes from
                        // (NAT, or an SDP address that is not the sending one). Only the first
                        // RTP packet moves the destination: later strays or spoofed packets
                        // cannot redirect the bot's audio (a re-INVITE can).
                        if rtp_packet && !latched && from != remote {
                            tracing::info!(%from, sdp = %remote, "RTP source differs from SDP; sending there (symmetric RTP)");
                            remote = from;
                            if let Ok(mut s) = stream.lock() {
                                s.remote = from;
                            }
                        }
                        latched |= rtp_packet;
                        receiving = true;
                        if let Some(ev) = event {
                            let at = Duration::from_millis(frames_fed * u64::from(PTIME_MS));
                            tracing::info!(digit = %ev.digit, "DTMF (RFC 4733)");
                            dtmf.push(ev.digit);
                            let _ = in_tx.try_send(CallInput::Dtmf { digit: ev.digit, at });
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, %from, "RTP packet ignored"),
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let speaking = stream.lock().is_ok_and(|s| s.sender.is_speaking());
                // After the caller's first packet, the pipeline gets a frame every 20 ms:
                // decoded, concealed, or silence while the caller sends nothing (so end-of-turn
                // detection still sees the pause).
                let caller_frame = receiving.then(|| {
                    receiver
                        .poll_frame(now)
                        .unwrap_or_else(|| vec![0.0; media.codec.samples_per_frame(PTIME_MS)])
                });
                if let Some(rec) = recorder.as_mut() {
                    match &caller_frame {
                        Some(frame) => rec.caller(frame, rate),
                        None => rec.caller_silence(media.codec.samples_per_frame(PTIME_MS), rate),
                    }
                    if let Ok(mut s) = stream.lock() {
                        s.sender.drain_sent(&mut sent_audio);
                    }
                    rec.heard(&sent_audio, rate);
                    sent_audio.clear();
                }
                if let Some(TransferRun { leg: Leg::Bridged { media: agent, .. }, .. }) = run.as_mut() {
                    // Bridged: the caller's audio goes to the agent, the agent's to the caller;
                    // the pipeline still hears the caller (the transcript goes on).
                    match &caller_frame {
                        Some(frame) => agent.send(frame, rate),
                        None => agent.send(&vec![0.0; media.codec.samples_per_frame(PTIME_MS)], rate),
                    }
                    let for_caller = agent.poll_for_caller(now, rate);
                    let at = Duration::from_millis(frames_fed * u64::from(PTIME_MS));
                    let (tx, _) = agent_asr.get_or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
                        let job = run_transcriber(engines.clone(), rx, agent_line_tx.clone());
                        tokio::spawn(async move {
                            match job.await {
                                Ok(lines) => tracing::info!(lines = lines.len(), "agent side transcribed"),
                                Err(e) => tracing::warn!(error = %e, "the agent side could not be transcribed"),
                            }
                        }.in_current_span());
                        (tx, at)
                    });
                    let frame = AudioFrame { at, samples: for_caller.clone(), rate };
                    if tx.try_send(CallInput::Audio(frame)).is_err() {
                        tracing::debug!("agent transcriber behind; a frame skipped");
                    }
                    if let Ok(mut s) = stream.lock() {
                        s.sender.enqueue(&for_caller);
                    }
                    speech_log.pad(for_caller.len() as u64);
                } else if let Some((tx, _)) = agent_asr.take() {
                    // Not bridged any more: the agent's transcriber finishes its last words.
                    let _ = tx.try_send(CallInput::End);
                }
                if let Some(r) = run.as_mut() {
                    if let Leg::Answered { media: agent, target, answered, whispered_at } = &mut r.leg {
                        // Bridge mode: the agent hears the caller from the answer on (after
                        // the whisper); the caller hears the agent once the announcement is
                        // over (see `Leg::Answered`).
                        if target.mode == TransferMode::Bridge && now >= *whispered_at {
                            match &caller_frame {
                                Some(frame) => agent.send(frame, rate),
                                None => agent.send(&vec![0.0; media.codec.samples_per_frame(PTIME_MS)], rate),
                            }
                            r.record.answer_to_bridge_ms.get_or_insert_with(|| answered.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    if !matches!(r.leg, Leg::Bridged { .. }) {
                        if let Some(agent) = r.agent_media() {
                            agent.discard_frame(now);
                        }
                    }
                }
                if let Some(frame) = caller_frame {
                    let level = rms(&frame);
                    if media_cfg.barge_in
                        && run.is_none()
                        && barge_in.on_frame(level, bot_level, speaking)
                    {
                        let unplayed = stream.lock().map_or(0, |mut s| s.sender.flush());
                        speech_log.cut(unplayed as u64, rate);
                        speech_cancel.cancel();
                        dropping_rest = true;
                        tracing::info!(
                            at_ms = frames_fed * u64::from(PTIME_MS),
                            "barge-in: caller spoke over the bot; playback stopped"
                        );
                    }
                    let at = Duration::from_millis(frames_fed * u64::from(PTIME_MS));
                    frames_fed += 1;
                    let input = CallInput::Audio(AudioFrame { at, samples: frame, rate });
                    if in_tx.try_send(input).is_err() {
                        figures.frames_dropped_by_pipeline += 1;
                    }
                }
                if no_rtp > Duration::ZERO && ended_by.is_none() {
                    let last = receiver.last_packet_at().unwrap_or(started);
                    if now.duration_since(last) > no_rtp && !hangup_sent {
                        if !rtp_timeout_logged {
                            tracing::warn!(secs = no_rtp.as_secs(), "no RTP from the caller; hanging up");
                            rtp_timeout_logged = true;
                        }
                        ended_by = Some("no_rtp_timeout".into());
                        hangup_sent = true;
                        let _ = hangup.send(Inbound::Hangup(handle)).await;
                    }
                }
                let mut hunt_failed = false;
                if let Some(r) = run.as_mut() {
                    if r.caller_waits() {
                        // The caller hears a quiet ringback tone once the announcement is out.
                        let queued = stream.lock().map_or(0, |s| s.sender.queued_samples());
                        if queued < media.codec.samples_per_frame(PTIME_MS) * 2 {
                            let tone = hold_tone_frame(r.hold_frames, rate);
                            r.hold_frames += 1;
                            speech_log.pad(tone.len() as u64);
                            if let Ok(mut s) = stream.lock() {
                                s.sender.enqueue(&tone);
                            }
                        }
                    }
                    if let Leg::Ringing { agent, deadline, cancelled, .. } = &mut r.leg {
                        if now >= *deadline && !*cancelled {
                            *cancelled = true;
                            tracing::info!(agent = %agent, "agent did not answer within the ring timeout; cancelling");
                            let _ = hangup.send(Inbound::Hangup(*agent)).await;
                        }
                    }
                    let caller_idle = stream.lock().map_or(true, |s| s.sender.queued_samples() <= media.codec.samples_per_frame(PTIME_MS) * 3);
                    let ready = caller_idle && matches!(&r.leg, Leg::Answered { whispered_at, .. } if now >= *whispered_at);
                    if ready {
                        if let Leg::Answered { media: agent, target, answered, .. } = std::mem::replace(&mut r.leg, Leg::Dialing) {
                            if r.record.whisper.is_some() {
                                r.record.whisper_ms = Some(answered.elapsed().as_secs_f64() * 1000.0);
                            }
                            put_through(r, agent, target, answered, &hangup, handle, &transfer_cfg, &stream, &mut speech_log, rate).await;
                        }
                    }
                    let overdue = matches!(&r.leg, Leg::Referring { deadline, .. } if now >= *deadline);
                    if overdue {
                        tracing::warn!("the caller's side did not report the transfer's result in time");
                        hunt_failed = transfer_failed(r, 408, &hangup, handle, &call.call_id, &transfer_cfg, &flow.name, &stream, &mut speech_log, rate).await;
                    }
                    if hunt_failed {
                        give_up(r, &engines, &flow, &post, &stream, &mut speech_log, frames_fed, rate).await;
                        bot_done = true;
                    }
                }
                if bot_done && !hangup_sent && !speaking {
                    // A short tail so the last word is not clipped by the BYE.
                    let at = *hangup_deadline.get_or_insert(now + Duration::from_millis(400));
                    if now >= at {
                        hangup_sent = true;
                        ended_by.get_or_insert_with(|| "bot".into());
                        let _ = hangup.send(Inbound::Hangup(handle)).await;
                    }
                }
            }
            received = async {
                match &agent_socket {
                    Some(sock) => sock.recv_from(&mut agent_buf).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok((n, from)) = received {
                    if let Some(agent) = run.as_mut().and_then(TransferRun::agent_media) {
                        if let Some(ev) = agent.on_datagram(&agent_buf[..n], from, Instant::now()) {
                            tracing::info!(digit = %ev.digit, "DTMF from the agent");
                        }
                    }
                }
            }
            Some(line) = agent_line_rx.recv() => {
                let offset = agent_asr.as_ref().map_or(Duration::ZERO, |(_, at)| *at);
                let entry = heard_entry(&line, offset, context::Speaker::Agent);
                hub.append_line(&call.call_id, &serde_json::to_value(&entry).unwrap_or_default());
                after_handover.push(entry);
            }
            received = async {
                match &rtcp_socket {
                    Some(s) => s.recv_from(&mut rtcp_buf).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok((n, _)) = received {
                    let ssrc = stream.lock().map_or(0, |s| s.sender.ssrc());
                    rtcp.on_packet(&rtcp_buf[..n], Instant::now(), ssrc, &mut figures);
                }
            }
            () = tokio::time::sleep_until(next_rtcp.into()) => {
                next_rtcp += RTCP_INTERVAL;
                if let Some(s) = &rtcp_socket {
                    let report = rtcp.report(&receiver, Instant::now());
                    let info = stream.lock().ok().map(|s| SenderInfo {
                        ssrc: s.sender.ssrc(),
                        wall_clock: std::time::SystemTime::now(),
                        rtp_timestamp: s.sender.timestamp(),
                        packets: s.sender.packets_sent() as u32,
                        octets: s.sender.octets_sent() as u32,
                    });
                    let Some(info) = info else { continue };
                    let packet = sender_report(
                        &info,
                        report.as_ref(),
                        &format!("voicebot@{}", call.local_ip),
                    );
                    let to = SocketAddr::new(remote.ip(), remote.port().saturating_add(1));
                    if s.send_to(&packet, to).await.is_ok() {
                        figures.rtcp_sent += 1;
                    }
                }
            }
            out = out_rx.recv() => match out {
                Some(CallOutput::Speak { kind, text, audio, continues, .. }) => {
                    if continues && dropping_rest {
                        continue;
                    }
                    dropping_rest = false;
                    let samples = if audio.rate == rate {
                        audio.samples
                    } else {
                        match resample_all(&audio.samples, audio.rate, rate) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot resample bot speech; skipped");
                                continue;
                            }
                        }
                    };
                    bot_level = rms(&samples);
                    let at = Duration::from_millis(frames_fed * u64::from(PTIME_MS));
                    if continues {
                        speech_log.extend(samples.len() as u64, rate);
                    } else {
                        speech_log.push(kind, text, at, samples.len() as u64, rate);
                    }
                    if let Ok(mut s) = stream.lock() {
                        s.sender.enqueue(&samples);
                    }
                }
                Some(CallOutput::Partial(line)) => {
                    // Live only: the agent screen shows what the caller is saying.
                    let data = serde_json::to_value(&line).unwrap_or_default();
                    hub.publish("partial", &call.call_id, &data);
                }
                Some(CallOutput::Heard(line)) => {
                    let entry = heard_entry(&line, Duration::ZERO, context::Speaker::Caller);
                    hub.append_line(&call.call_id, &serde_json::to_value(&entry).unwrap_or_default());
                    after_handover.push(entry);
                }
                Some(CallOutput::Turn(turn)) => {
                    let escalation = turn.escalation.clone();
                    let ends_call = turn.ends_call;
                    turns.push(*turn);
                    match escalation {
                        Some(e) if run.is_none() => {
                            let targets = transfer_cfg.targets(&e.skill);
                            if targets.is_empty() {
                                tracing::info!(reason = ?e.reason, skill = %e.skill,
                                    "escalation: no agent extension is configured for this team, so the call ends after the announcement");
                                bot_done = true;
                            } else {
                                let decided = Instant::now();
                                let team = flow.dialog.prompts().team(&e.skill);
                                let mut r = TransferRun {
                                    skill: e.skill.clone(),
                                    team,
                                    escalation: e.clone(),
                                    hunt: Hunt::new(&targets),
                                    leg: Leg::Dialing,
                                    record: TransferRecord { skill: e.skill.clone(), ..TransferRecord::default() },
                                    escalated_wall: std::time::SystemTime::now(),
                                    hold_frames: 0,
                                };
                                // The agent's screen gets the context before the phone rings.
                                let queued = stream.lock().map_or(0, |s| s.sender.queued_samples());
                                let lines = speech_log.lines(queued as u64, rate);
                                let ctx = handover_context(&call, &flow.name, started_wall, &r, &turns, &lines, Some(&e), &after_handover);
                                tracing::info!(reason = ?e.reason, skill = %e.skill, targets = targets.len(), summary = %ctx.summary.replace('\n', " | "), "escalation: warm transfer");
                                let data = serde_json::to_value(&ctx).unwrap_or_default();
                                let event = post("escalated", data);
                                if let (Some(id), Some(d)) = (&event, &deliverer) {
                                    let wait = Duration::from_millis(transfer_cfg.webhook_wait_ms);
                                    let confirmed = wait_delivered(d, &call.call_id, id, wait).await;
                                    r.record.webhook_before_invite = Some(confirmed);
                                    if !confirmed {
                                        tracing::warn!(wait_ms = transfer_cfg.webhook_wait_ms, "the webhook has not confirmed the context yet; calling the agent anyway");
                                    }
                                }
                                r.record.webhook_events.extend(event);
                                dial_next(&mut r, &hangup, handle, &call.call_id, &transfer_cfg, &flow.name).await;
                                r.record.decision_to_invite_ms = Some(decided.elapsed().as_secs_f64() * 1000.0);
                                let failed = matches!(r.leg, Leg::Failed);
                                run = Some(r);
                                if failed {
                                    if let Some(r) = run.as_mut() {
                                        give_up(r, &engines, &flow, &post, &stream, &mut speech_log, frames_fed, rate).await;
                                    }
                                    bot_done = true;
                                }
                            }
                        }
                        Some(_) => {}
                        None if ends_call => bot_done = true,
                        None => {}
                    }
                }
                None => {}
            },
            ctl = control.recv() => match ctl {
                Some(CallControl::Confirmed) => tracing::debug!("ACK received"),
                Some(CallControl::MediaChanged(m)) => {
                    // A new codec is a new stream both ways: a fresh jitter buffer for its clock,
                    // fresh sequence numbers, timestamps and SSRC.
                    let new_ends = if m.codec != media.codec || m.payload_type != media.payload_type {
                        match media_ends(&m, Instant::now()) {
                            Ok(ends) => Some(ends),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot switch codec; keeping the old one");
                                None
                            }
                        }
                    } else {
                        None
                    };
                    remote = m.remote_rtp;
                    if let Ok(mut s) = stream.lock() {
                        if let Some((new_receiver, mut new_sender)) = new_ends {
                            if let Some(rec) = recorder.as_mut() {
                                // The old sender's last frames, at the old rate.
                                s.sender.drain_sent(&mut sent_audio);
                                rec.heard(&sent_audio, rate);
                                sent_audio.clear();
                                new_sender.keep_sent_audio();
                            }
                            receiver = new_receiver;
                            rate = m.codec.sample_rate();
                            s.sender = new_sender;
                        }
                        s.remote = m.remote_rtp;
                        s.sending = m.direction.sends();
                    }
                    tracing::info!(hold = m.on_hold, codec = %m.codec, "media updated by re-INVITE");
                    media = m;
                }
                Some(CallControl::Dtmf(digit)) => {
                    let at = Duration::from_millis(frames_fed * u64::from(PTIME_MS));
                    dtmf.push(digit);
                    if let Some(TransferRun { leg: Leg::Bridged { media: agent, .. }, .. }) = run.as_ref() {
                        agent.send_dtmf(digit);
                    }
                    let _ = in_tx.try_send(CallInput::Dtmf { digit, at });
                }
                Some(CallControl::Agent(event)) => {
                    let Some(r) = run.as_mut() else { continue };
                    match event {
                        AgentEvent::Progress(agent, code) => {
                            tracing::info!(%agent, code, "agent leg progress");
                        }
                        AgentEvent::Answered(agent, m) => {
                            let answered = Instant::now();
                            let leg = std::mem::replace(&mut r.leg, Leg::Dialing);
                            match leg {
                                Leg::Ringing { agent: ringing, target, ports: Some(agent_ports), .. } if ringing == agent => {
                                    match AgentMedia::start(agent, agent_ports, &m, rate, &pacer, (min_delay_ms, max_delay_ms), answered) {
                                        Ok(agent_media) => {
                                            let mut agent_media = Box::new(agent_media);
                                            r.record.agent = Some(target.uri.clone());
                                            r.record.mode = Some(target.mode.as_str().into());
                                            tracing::info!(%agent, target = %target.uri, codec = %m.codec, mode = target.mode.as_str(), "agent answered");
                                            let data = serde_json::json!({"agent": target.uri, "codec": m.codec.to_string(), "mode": target.mode.as_str()});
                                            r.record.webhook_events.extend(post("agent_answered", data));
                                            let whisper = if transfer_cfg.whisper {
                                                let queued = stream.lock().map_or(0, |s| s.sender.queued_samples());
                                                let lines = speech_log.lines(queued as u64, rate);
                                                let ctx = handover_context(&call, &flow.name, started_wall, r, &turns, &lines, Some(&r.escalation), &after_handover);
                                                let text = flow.dialog.prompts().transfer_whisper(&context::whisper_values(&ctx));
                                                synthesize_at(&engines, &text, flow.voice, agent_media.rate).await.map(|audio| (text, audio))
                                            } else {
                                                None
                                            };
                                            let mut whispered_at = Instant::now();
                                            if let Some((text, audio)) = whisper {
                                                tracing::info!(%text, "whispering to the agent before putting the caller through");
                                                agent_media.play(&audio);
                                                let secs = audio.len() as f64 / f64::from(agent_media.rate.max(1));
                                                whispered_at += Duration::from_secs_f64(secs);
                                                r.record.whisper = Some(text);
                                            }
                                            // Put through on a later tick, once the whisper and
                                            // the caller's announcement are out.
                                            r.leg = Leg::Answered { media: agent_media, target, answered, whispered_at };
                                        }
                                        Err(e) => {
                                            tracing::error!(error = %e, "cannot start the agent leg's media; trying the next extension");
                                            let _ = hangup.send(Inbound::Hangup(agent)).await;
                                            r.hunt.record(&target.uri, &AttemptOutcome::Failed(e.to_string()));
                                            dial_next(r, &hangup, handle, &call.call_id, &transfer_cfg, &flow.name).await;
                                        }
                                    }
                                }
                                other => {
                                    // Not the leg we are waiting for: end it.
                                    r.leg = other;
                                    let _ = hangup.send(Inbound::Hangup(agent)).await;
                                }
                            }
                            if matches!(r.leg, Leg::Failed) {
                                give_up(r, &engines, &flow, &post, &stream, &mut speech_log, frames_fed, rate).await;
                                bot_done = true;
                            }
                        }
                        AgentEvent::Ended(agent, reason) => {
                            // Which leg ended (decided before any await: the leg's media is
                            // not shareable across threads).
                            enum Gone { Unanswered(String, bool), BeforeBridge(String), Consult, Bridged, Other }
                            let gone = match &r.leg {
                                Leg::Ringing { agent: a, target, cancelled, .. } if *a == agent => Gone::Unanswered(target.uri.clone(), *cancelled),
                                Leg::Answered { media: m, target, .. } if m.handle == agent => Gone::BeforeBridge(target.uri.clone()),
                                Leg::Referring { consult: Some(m), .. } if m.handle == agent => Gone::Consult,
                                Leg::Bridged { media: m, .. } if m.handle == agent => Gone::Bridged,
                                _ => Gone::Other,
                            };
                            let mut hunt_again = None;
                            let mut back_to_bot = false;
                            match gone {
                                Gone::Unanswered(target, cancelled) => {
                                    let outcome = match reason {
                                        EndReason::Refused(code) => AttemptOutcome::Refused(code),
                                        EndReason::Cancelled if cancelled => AttemptOutcome::NoAnswer,
                                        EndReason::NoResponse => AttemptOutcome::NoAnswer,
                                        other => AttemptOutcome::Failed(format!("{other:?}")),
                                    };
                                    tracing::info!(%agent, %target, ?outcome, "agent leg not answered; trying the next extension");
                                    hunt_again = Some((target, outcome));
                                }
                                Gone::BeforeBridge(target) => {
                                    tracing::info!(%agent, %target, "the agent hung up before the caller was put through; trying the next extension");
                                    hunt_again = Some((target, AttemptOutcome::Failed("hung up before the caller was put through".into())));
                                }
                                Gone::Consult => {
                                    // Normal for an attended transfer: the agent's phone ends our
                                    // call once the caller's side replaced it. The NOTIFY decides.
                                    tracing::info!(%agent, "the consultation call with the agent ended");
                                    if let Leg::Referring { consult, .. } = &mut r.leg {
                                        if let Some(m) = consult.take() {
                                            r.record.packets_to_agent = m.packets_out();
                                            r.record.packets_from_agent = m.packets_in;
                                        }
                                    }
                                }
                                Gone::Bridged if transfer_cfg.after_agent_hangup == AfterAgent::Bot => {
                                    tracing::info!(%agent, "the agent hung up; the bot takes the caller back");
                                    if let Leg::Bridged { media: m } = std::mem::replace(&mut r.leg, Leg::Dialing) {
                                        r.record.packets_to_agent = m.packets_out();
                                        r.record.packets_from_agent = m.packets_in;
                                    }
                                    r.record.outcome = "returned_to_bot".into();
                                    r.record.webhook_events.extend(post("returned_to_bot", serde_json::json!({"agent": r.record.agent})));
                                    let _ = in_tx.try_send(CallInput::Resume);
                                    back_to_bot = true;
                                }
                                Gone::Bridged => {
                                    tracing::info!(%agent, "the agent hung up; ending the call");
                                    ended_by.get_or_insert_with(|| "agent".into());
                                    if !hangup_sent {
                                        hangup_sent = true;
                                        let _ = hangup.send(Inbound::Hangup(handle)).await;
                                    }
                                }
                                Gone::Other => {}
                            }
                            if let Some((target, outcome)) = hunt_again {
                                r.leg = Leg::Dialing;
                                r.hunt.record(&target, &outcome);
                                dial_next(r, &hangup, handle, &call.call_id, &transfer_cfg, &flow.name).await;
                                if matches!(r.leg, Leg::Failed) {
                                    give_up(r, &engines, &flow, &post, &stream, &mut speech_log, frames_fed, rate).await;
                                    bot_done = true;
                                }
                            }
                            if back_to_bot {
                                // The caller is the bot's again; a new escalation starts a new
                                // transfer.
                                returned = run.take();
                            }
                        }
                    }
                }
                Some(CallControl::Refer(progress)) => {
                    let Some(r) = run.as_mut() else { continue };
                    if !matches!(r.leg, Leg::Referring { .. }) {
                        tracing::debug!(?progress, "transfer progress for no transfer in progress");
                        continue;
                    }
                    let failed = match progress {
                        ReferProgress::Accepted => {
                            tracing::info!("the caller's side accepted the transfer");
                            None
                        }
                        ReferProgress::Notified { code, .. } if (200..300).contains(&code) => {
                            r.record.refer_status = Some(code);
                            if let Leg::Referring { target, consult, .. } = std::mem::replace(&mut r.leg, Leg::Transferred) {
                                tracing::info!(target = %target.uri, mode = target.mode.as_str(), "transfer completed: the caller's side reached the agent; leaving the call");
                                r.record.agent = Some(target.uri.clone());
                                r.record.mode = Some(target.mode.as_str().into());
                                r.record.outcome = "transferred".into();
                                let data = serde_json::json!({"agent": target.uri, "mode": target.mode.as_str()});
                                r.record.webhook_events.extend(post("transferred", data));
                                if let Some(m) = consult {
                                    r.record.packets_to_agent = m.packets_out();
                                    r.record.packets_from_agent = m.packets_in;
                                    let _ = hangup.send(Inbound::Hangup(m.handle)).await;
                                }
                            }
                            ended_by.get_or_insert_with(|| "transferred".into());
                            if !hangup_sent {
                                hangup_sent = true;
                                let _ = hangup.send(Inbound::Hangup(handle)).await;
                            }
                            None
                        }
                        ReferProgress::Notified { code, last } if code < 200 => {
                            tracing::info!(code, "transfer progress");
                            // A subscription that ends without a final status: no result.
                            last.then_some(code)
                        }
                        ReferProgress::Notified { code, .. } | ReferProgress::Refused(code) => Some(code),
                    };
                    if let Some(code) = failed {
                        if transfer_failed(r, code, &hangup, handle, &call.call_id, &transfer_cfg, &flow.name, &stream, &mut speech_log, rate).await {
                            give_up(r, &engines, &flow, &post, &stream, &mut speech_log, frames_fed, rate).await;
                            bot_done = true;
                        }
                    }
                }
                Some(CallControl::Ended(reason)) => {
                    ended_by.get_or_insert_with(|| match reason {
                        EndReason::RemoteBye => "caller".to_string(),
                        other => format!("{other:?}").to_lowercase(),
                    });
                    break;
                }
                Some(CallControl::Shutdown) => {
                    ended_by.get_or_insert_with(|| "shutdown".into());
                    if !hangup_sent {
                        hangup_sent = true;
                        let _ = hangup.send(Inbound::Hangup(handle)).await;
                    }
                }
                None => break,
            },
            res = &mut pipeline, if pipeline_result.is_none() => {
                let res = match res {
                    Ok(Ok(report)) => Ok(report),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("pipeline task: {e}")),
                };
                if let Err(e) = &res {
                    tracing::error!(error = %e, "call pipeline failed; hanging up");
                    if !hangup_sent {
                        hangup_sent = true;
                        ended_by.get_or_insert_with(|| "pipeline_error".into());
                        let _ = hangup.send(Inbound::Hangup(handle)).await;
                    }
                }
                pipeline_result = Some(res);
            }
        }
        let state = live_state(run.as_ref());
        if state != live_reported {
            live_reported = state;
            live.set_state(&call.call_id, state);
        }
    }

    // The dialog is over: close the caller's audio and collect the pipeline's report (it may
    // still be transcribing the last words; bounded wait).
    let _ = in_tx.try_send(CallInput::End);
    drop(in_tx);
    if pipeline_result.is_none() {
        // Keep draining outputs so the pipeline never blocks on a full channel.
        let drain = async {
            loop {
                tokio::select! {
                    res = &mut pipeline => break res,
                    _ = out_rx.recv() => {}
                }
            }
        };
        pipeline_result = Some(
            match tokio::time::timeout(Duration::from_secs(30), drain).await {
                Ok(Ok(Ok(report))) => Ok(report),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(e)) => Err(format!("pipeline task: {e}")),
                Err(_) => {
                    pipeline.abort();
                    Err("pipeline did not finish within 30 s of hang-up".into())
                }
            },
        );
    }
    let stats = receiver.stats();
    figures.packets_received = stats.received;
    figures.packets_lost = stats.lost;
    figures.packets_late = stats.late;
    figures.jitter_ms = stats.jitter_ms;
    let (lateness, queued) = match stream.lock() {
        Ok(mut s) => {
            figures.packets_sent = s.packets_sent;
            (std::mem::take(&mut s.lateness), s.sender.queued_samples())
        }
        Err(_) => (Lateness::new(), 0),
    };
    drop(stream);
    figures.send_late_p50_ms = lateness.quantile_ms(0.50);
    figures.send_late_p99_ms = lateness.quantile_ms(0.99);
    figures.send_late_max_ms = lateness.max.as_secs_f64() * 1000.0;
    figures.send_late_histogram = lateness
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| (i as u16, n))
        .collect();
    // The transfer's end: the agent leg's figures, and the final context for the agent's
    // screen (the whole transcript, now including what was said while bridged).
    let transfer_record = match run.or(returned) {
        Some(mut r) => {
            if let Some(agent) = r.agent_media() {
                let (out, inn) = (agent.packets_out(), agent.packets_in);
                r.record.packets_to_agent = out;
                r.record.packets_from_agent = inn;
            }
            if r.caller_waits() {
                // The caller left before being put through; signalling ends the agent leg.
                r.record.outcome = "caller_hung_up".into();
            }
            if let Leg::Ringing { agent, .. } = &r.leg {
                let _ = hangup.send(Inbound::Hangup(*agent)).await;
            }
            r.record.attempts = r.hunt.attempts().to_vec();
            if let Some(Ok(report)) = &pipeline_result {
                let lines = speech_log.lines(queued as u64, rate);
                let ctx = handover_context(
                    &call,
                    &flow.name,
                    started_wall,
                    &r,
                    &report.turns,
                    &lines,
                    report.escalation.as_ref(),
                    &after_handover,
                );
                let mut data = serde_json::to_value(&ctx).unwrap_or_default();
                if let Some(obj) = data.as_object_mut() {
                    obj.insert("outcome".into(), serde_json::json!(r.record.outcome));
                    obj.insert(
                        "ended_by".into(),
                        serde_json::json!(ended_by.clone().unwrap_or_default()),
                    );
                }
                r.record.webhook_events.extend(post("call_ended", data));
            }
            Some(r.record)
        }
        None => None,
    };
    let recording = match recorder {
        Some(r) => match r.finish().await {
            Ok(info) => {
                tracing::info!(file = %info.file, seconds = info.seconds, dropped_ms = info.dropped_ms, "call recording written");
                Some(info)
            }
            Err(e) => {
                tracing::error!(error = %e, "the call recording failed");
                None
            }
        },
        None => None,
    };
    let (report, pipeline_error) = match pipeline_result {
        Some(Ok(r)) => (Some(r), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let record = CallRecord {
        call_id: call.call_id.clone(),
        from: call.from.clone(),
        called: call.called.clone(),
        codec: media.codec.to_string(),
        remote_rtp: remote.to_string(),
        duration_ms: started.elapsed().as_millis() as u64,
        ended_by: ended_by.unwrap_or_else(|| "unknown".into()),
        dtmf,
        bot_speech: speech_log.finish(queued as u64, rate),
        rtp: figures,
        report,
        pipeline_error,
        transfer: transfer_record,
        recording,
    };
    tracing::info!(
        ended_by = %record.ended_by,
        duration_ms = record.duration_ms,
        turns = record.report.as_ref().map_or(0, |r| r.turns.len()),
        "call finished"
    );
    if let Some(dir) = report_dir {
        write_record(&dir, &record);
    }
    // Metrics, and the history (its SQLite write runs on a blocking thread).
    crate::admin::calls::on_call_finished(history, started_wall, &record);
    drop(ports);
}

/// RTCP bookkeeping for one call: what the report blocks need and what the caller reported.
#[derive(Default)]
struct RtcpState {
    /// The caller's last SR: the middle NTP bits and when it arrived.
    last_sr: Option<(u32, Instant)>,
    /// Received and lost counts at the previous report (for the fraction lost).
    previous: (u64, u64),
}

impl RtcpState {
    fn on_packet(&mut self, buf: &[u8], now: Instant, our_ssrc: u32, figures: &mut RtpFigures) {
        figures.rtcp_received += 1;
        match parse_rtcp(buf) {
            Ok(summary) => {
                if let Some((_, ntp_mid)) = summary.sender_report {
                    self.last_sr = Some((ntp_mid, now));
                }
                if let Some(r) = summary.reports.iter().find(|r| r.ssrc == our_ssrc) {
                    figures.remote_reported_lost = Some(r.cumulative_lost);
                    figures.remote_reported_jitter_ms = Some(f64::from(r.jitter) / 8.0);
                }
                if summary.bye {
                    tracing::debug!("RTCP BYE from the caller");
                }
            }
            Err(e) => tracing::debug!(error = %e, "RTCP packet ignored"),
        }
    }

    /// The report block about the caller's stream, once it has sent something.
    fn report(&mut self, receiver: &MediaReceiver, now: Instant) -> Option<ReceptionReport> {
        let ssrc = receiver.remote_ssrc()?;
        let j = receiver.jitter_stats();
        let (prev_received, prev_lost) = self.previous;
        self.previous = (j.received, j.lost);
        let (received, lost) = (j.received - prev_received, j.lost - prev_lost);
        let fraction = (lost * 256)
            .checked_div(received + lost)
            .map_or(0, |f| f.min(255) as u8);
        let (last_sr, dlsr) = match self.last_sr {
            Some((mid, at)) => (mid, (now.duration_since(at).as_secs_f64() * 65536.0) as u32),
            None => (0, 0),
        };
        Some(ReceptionReport {
            ssrc,
            fraction_lost: fraction,
            cumulative_lost: j.lost.min(0x7F_FFFF) as u32,
            extended_highest_seq: j.highest_seq.saturating_sub(1 << 16) as u32,
            jitter: (j.jitter_ms * 8.0) as u32,
            last_sr,
            delay_since_last_sr: dlsr,
        })
    }
}

/// A file name from a Call-ID (which may hold any characters).
/// The call's recorder, when `[recording]` is on (a failure to start is logged, the call goes
/// on unrecorded).
fn start_recording(
    config: &RecordingConfig,
    call_id: &str,
    media: &Negotiated,
) -> Option<CallRecorder> {
    if !config.enabled {
        return None;
    }
    match CallRecorder::start(&config.dir, call_id, media.codec.sample_rate()) {
        Ok(r) => {
            tracing::info!(dir = %config.dir.display(), file = r.file(), "recording the call");
            Some(r)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record the call; it goes on unrecorded");
            None
        }
    }
}

fn record_file_name(call_id: &str) -> String {
    format!("{}.json", super::call_file_stem(call_id))
}

fn write_record(dir: &std::path::Path, record: &CallRecord) {
    let path = dir.join(record_file_name(&record.call_id));
    let tmp = path.with_extension("json.tmp");
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| {
            let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, json)
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    match result {
        Ok(()) => tracing::info!(path = %path.display(), "call record written"),
        Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot write call record"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_log_records_cut_point() {
        let mut log = SpeechLog::default();
        log.push(
            SpeechKind::Greeting,
            "hello".into(),
            Duration::ZERO,
            8000,
            8000,
        );
        log.push(
            SpeechKind::Reply,
            "your order".into(),
            Duration::from_secs(3),
            16000,
            8000,
        );
        // 125 ms of the greeting played, then the caller interrupted: 23000 samples unplayed.
        log.cut(23000, 8000);
        let speech = log.finish(0, 8000);
        assert!(speech[0].interrupted);
        assert_eq!(speech[0].played_ms, 125);
        assert!(speech[1].interrupted);
        assert_eq!(speech[1].played_ms, 0);
    }

    #[test]
    fn speech_log_full_playout() {
        let mut log = SpeechLog::default();
        log.push(
            SpeechKind::Greeting,
            "hello".into(),
            Duration::ZERO,
            8000,
            8000,
        );
        let speech = log.finish(0, 8000);
        assert!(!speech[0].interrupted);
        assert_eq!(speech[0].played_ms, 1000);
    }

    #[test]
    fn record_names_are_safe() {
        assert_eq!(record_file_name("a/b@c:1"), "a_b_c_1.json");
    }
}

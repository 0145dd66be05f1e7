//! One answered call's task: the IO shell around the call's sans-IO parts. It owns the
//! caller's RTP leg ([`CallerLeg`]), the agent leg's media once an agent answers
//! ([`AgentMedia`]), the call's [`pipeline`](crate::pipeline) and the call-control core
//! ([`CallControl`]). Every 20 ms it moves audio between them (bot speech, barge-in, hold
//! tone, the bridge, both transcripts); it turns what the control core asks for into work
//! (name lookups, agent calls and REFERs through the signalling task, speech synthesis,
//! events for the webhook) that runs beside it and comes back as input, so the media tick
//! never waits. Whatever happens, the call's record is written and its ports and pipeline
//! are freed when it returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::audio::frames::AudioFrame;
use crate::audio::resample::resample_all;
use crate::audio::wav::MonoAudio;
use crate::call::control::{
    CallControl, CallerPrompt, ControlConfig, LegError, LegId, OpId, Output, Phase, Playout,
};
use crate::call::record::{CallEvent, CallRecord, EndedBy};
use crate::flows::Flow;
use crate::handover::context::{self, ContextInput};
use crate::handover::hub::CALL_FINISHED;
use crate::handover::outbox::DelivererHandle;
use crate::media::barge_in::{BargeIn, BargeInConfig};
use crate::observe::live::CallState as LiveState;
use crate::pipeline::{
    run_call_with, run_transcriber, synthesize_text, BotDecision, CallInput, CallOptions,
    CallOutput, Engines, SpeechCancel, SpeechKind,
};
use crate::report::{CallReport, HeardLine, TurnReport};
use crate::sip::endpoint::{CallHandle, EndReason, IncomingCall, ReferProgress};
use crate::sip::sdp::Negotiated;

use super::caller_leg::{CallerLeg, PTIME_MS};
use super::event_poster::{EventPoster, Posted};
use super::pacer::Pacer;
use super::ports::RtpPorts;
use super::signal_queue::SignalReceiver;
use super::speech_log::SpeechLog;
use super::transfer::{convert, hold_tone_frame, AgentLeg, AgentMedia};
use super::{Inbound, PlaceCall, ReferCall};

/// RTCP report interval (RFC 3550's minimum of 5 s suits one audio stream each way).
const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// Caller frames allowed to wait for the pipeline's listen stage.
const INPUT_QUEUE: usize = 64;
/// How long the signalling task may take to place a call or send a REFER for us.
const SIGNALLING_ANSWER: Duration = Duration::from_secs(2);

/// What the signalling task tells a call task (through its [`signal
/// queue`](super::signal_queue), which never loses the news that decides the call).
#[derive(Debug)]
pub enum CallSignal {
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
    /// The agent's side is trying (100), rings (180) or plays early media (183).
    Progress(CallHandle, u16),
    /// The agent answered.
    Answered(CallHandle, Negotiated),
    /// The leg ended: refused, cancelled, timed out, or the agent hung up.
    Ended(CallHandle, EndReason),
}

impl AgentEvent {
    /// The leg the news is about.
    pub fn leg(&self) -> CallHandle {
        match self {
            AgentEvent::Progress(h, _) | AgentEvent::Answered(h, _) | AgentEvent::Ended(h, _) => *h,
        }
    }
}

/// Everything a call task needs.
pub struct CallSetup {
    /// The gateway's own call id ([`crate::call::record::new_call_id`]).
    pub id: String,
    /// The journal of calls in progress, when there is one.
    pub journal: Option<crate::journal::JournalWriter>,
    pub call: IncomingCall,
    pub ports: RtpPorts,
    pub flow: Arc<Flow>,
    pub engines: Engines,
    pub report_dir: Option<PathBuf>,
    pub pacer: Pacer,
    pub control: SignalReceiver,
    pub(super) hangup: mpsc::Sender<Inbound>,
    /// Where hand-over events go (webhook outbox), when configured.
    pub deliverer: Option<Arc<DelivererHandle>>,
    /// Live hand-over contexts and events for the agents' screens.
    pub hub: Arc<crate::handover::hub::HandoverHub>,
    /// Where the finished call's record is stored for the admin API, when enabled.
    pub history: Option<Arc<crate::history::CallHistory>>,
    /// The calls-in-progress view of the admin API: this call's phase is reported there.
    pub live: Arc<crate::observe::live::LiveCalls>,
    /// Where agent extensions' calls go (RFC 3263 lookups, shared so answers are cached).
    pub resolver: Arc<super::dns::SipResolver>,
    /// This gateway's node name when a shared store is on: the call's record names it.
    pub node: Option<Arc<str>>,
}

/// Work the task started for the control core; its result comes back as one of these.
enum Done {
    Resolved(OpId, Result<Vec<SocketAddr>, LegError>),
    Placed(OpId, Result<AgentLeg, LegError>),
    ReferSent(OpId, Result<String, LegError>),
    /// The whisper's text and audio (None: synthesis failed).
    Whisper(CallHandle, String, Option<MonoAudio>),
    /// A prompt for the caller.
    Prompt(String, Option<MonoAudio>),
    /// Whether the webhook confirmed the escalated event in time.
    WebhookSettled(bool),
}

/// The channels and sockets the task waits on (apart from its state, so a `select!` can
/// borrow them while a handler borrows the state).
struct CallIo {
    socket: UdpSocket,
    rtcp_socket: Option<UdpSocket>,
    signals: SignalReceiver,
    pipeline_out: mpsc::Receiver<CallOutput>,
    pipeline: JoinHandle<Result<CallReport, crate::pipeline::PipelineError>>,
    done: mpsc::UnboundedReceiver<Done>,
    posted: mpsc::UnboundedReceiver<Posted>,
    agent_lines: mpsc::Receiver<HeardLine>,
}

/// Where a call's agent side is being transcribed while bridged: its input and the call
/// time it started at.
struct AgentTranscriber {
    input: mpsc::Sender<CallInput>,
    offset: Duration,
}

/// One call's state.
struct CallTask {
    /// The gateway's own call id (records, recordings and the live view are keyed by it).
    id: String,
    /// Where the call's progress is journaled, so a crash does not lose it.
    journal: Option<crate::journal::JournalWriter>,
    /// The escalation the bot decided on, once it did.
    escalation: Option<crate::dialog::escalation::Escalation>,
    call: IncomingCall,
    flow: Arc<Flow>,
    engines: Engines,
    pacer: Pacer,
    signalling: mpsc::Sender<Inbound>,
    live: Arc<crate::observe::live::LiveCalls>,
    hub: Arc<crate::handover::hub::HandoverHub>,
    history: Option<Arc<crate::history::CallHistory>>,
    resolver: Arc<super::dns::SipResolver>,
    /// This gateway's node name when a shared store is on.
    node: Option<Arc<str>>,
    report_dir: Option<PathBuf>,
    started: Instant,
    started_wall: SystemTime,
    _ports: RtpPorts,

    caller: CallerLeg,
    barge_in: BargeIn,
    /// The level of the bot's last utterance (for barge-in's echo allowance).
    bot_level: f32,
    /// After a barge-in, the rest of the interrupted reply (units already on their way) is
    /// dropped until the next reply starts.
    dropping_rest: bool,
    frames_fed: u64,
    dtmf: Vec<char>,
    speech_log: SpeechLog,
    rtp_timeout_logged: bool,

    input: mpsc::Sender<CallInput>,
    speech_cancel: SpeechCancel,
    pipeline_result: Option<Result<CallReport, String>>,
    /// The caller's turns so far (for the hand-over context).
    turns: Vec<TurnReport>,
    /// What caller and agent said after the hand-over (the live transcript).
    after_handover: Vec<context::TranscriptEntry>,

    control: CallControl,
    agent: Option<Box<AgentMedia>>,
    /// Agent legs placed and not yet ended or answered: their RTP ports and SIP peer's IP.
    agent_ports: HashMap<CallHandle, AgentLeg>,
    /// Answers waiting for the core's go-ahead to start their media.
    agent_answers: HashMap<CallHandle, Negotiated>,
    /// Every agent leg the signalling task placed for this call (its handle came back).
    placed_legs: std::collections::HashSet<CallHandle>,
    /// News of a leg that came before the signalling task's answer that placed it (a phone,
    /// or the WebRTC edge for an agent who is not logged in, can refuse within microseconds):
    /// replayed, in order, once the leg is known.
    early_agent_events: Vec<AgentEvent>,
    agent_asr: Option<AgentTranscriber>,
    agent_line_tx: mpsc::Sender<HeardLine>,
    hold_frames: u64,
    done_tx: mpsc::UnboundedSender<Done>,
    poster: EventPoster,
    /// Set once the call_ended event was queued (its id comes back on `posted`).
    live_reported: LiveState,
    signalling_gone: bool,
}

/// The call's phase for the admin API's live view.
fn live_state(phase: Phase) -> LiveState {
    match phase {
        Phase::Bot => LiveState::Bot,
        Phase::Escalating => LiveState::Escalating,
        Phase::RingingAgent => LiveState::RingingAgent,
        Phase::Bridged => LiveState::Bridged,
        Phase::Transferred => LiveState::Transferred,
    }
}

/// For a caller that cannot follow a REFER (its INVITE's `Allow` has no REFER: a browser
/// through the WebRTC edge, some trunks), every extension is reached bridged.
fn bridge_only(targets: &mut [crate::handover::transfer::Target]) {
    use crate::handover::transfer::TransferMode;
    for t in targets.iter_mut() {
        if t.mode != TransferMode::Bridge {
            tracing::info!(target = %t.uri, mode = t.mode.as_str(), "the caller cannot follow a REFER: bridged instead");
            t.mode = TransferMode::Bridge;
        }
    }
}

/// `value` as JSON for the agents' screens and the webhook; None (logged) if it cannot be.
fn to_json(what: &str, value: &impl Serialize) -> Option<serde_json::Value> {
    match serde_json::to_value(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(what, error = %e, "cannot serialise; not published");
            None
        }
    }
}

/// Runs the call's media until it ends; never panics on network input, always writes the
/// record (when a report directory is set) and frees the ports.
pub async fn run_call_media(setup: CallSetup) {
    let handle = setup.call.handle;
    let hangup = setup.hangup.clone();
    match CallTask::start(setup) {
        Ok((task, io)) => task.run(io).await,
        Err(why) => {
            tracing::error!(error = %why, "cannot start the call's media; hanging up");
            let _ = hangup.send(Inbound::Hangup(handle)).await;
        }
    }
}

impl CallTask {
    /// Sets up the caller's media, the pipeline and the control core.
    fn start(setup: CallSetup) -> Result<(CallTask, CallIo), String> {
        let CallSetup {
            id,
            journal,
            call,
            ports,
            flow,
            engines,
            report_dir,
            pacer,
            control: signals,
            hangup: signalling,
            deliverer,
            hub,
            history,
            live,
            resolver,
            node,
        } = setup;
        let started = Instant::now();
        let media_cfg = engines.config.media.clone();
        let socket = ports
            .rtp
            .try_clone()
            .and_then(UdpSocket::from_std)
            .map_err(|e| format!("cannot use the RTP socket: {e}"))?;
        let rtcp_socket = ports
            .rtcp
            .as_ref()
            .and_then(|s| s.try_clone().ok())
            .and_then(|s| UdpSocket::from_std(s).ok());
        let caller = CallerLeg::start(
            &call,
            &ports.rtp,
            &pacer,
            &media_cfg,
            (&engines.config.recording, id.as_str()),
            started,
        )
        .map_err(|e| format!("{e} (codec {})", call.media.codec))?;
        let (input, pipeline_in) = mpsc::channel(INPUT_QUEUE);
        let (pipeline_tx, pipeline_out) = mpsc::channel(16);
        let speech_cancel = SpeechCancel::default();
        let options = CallOptions {
            transcribe_after_handover: true,
            speech_cancel: speech_cancel.clone(),
        };
        let pipeline = tokio::spawn(run_call_with(
            engines.clone(),
            flow.clone(),
            pipeline_in,
            pipeline_tx,
            options,
        ));
        let (done_tx, done) = mpsc::unbounded_channel();
        let (posted_tx, posted) = mpsc::unbounded_channel();
        let (agent_line_tx, agent_lines) = mpsc::channel(16);
        let control = CallControl::new(ControlConfig {
            call_id: call.call_id.clone(),
            flow: flow.name.clone(),
            transfer: engines.config.handover.transfer.clone(),
            webhook: deliverer.is_some(),
        });
        let poster = EventPoster::start(&call.call_id, Arc::clone(&hub), deliverer, posted_tx);
        let barge_in = BargeIn::new(BargeInConfig {
            min_speech_ms: media_cfg.barge_in_min_speech_ms,
            floor_dbfs: media_cfg.barge_in_floor_dbfs,
            echo_return_loss_db: media_cfg.echo_return_loss_db,
            frame_ms: PTIME_MS,
        });
        let io = CallIo {
            socket,
            rtcp_socket,
            signals,
            pipeline_out,
            pipeline,
            done,
            posted,
            agent_lines,
        };
        let task = CallTask {
            id,
            journal,
            escalation: None,
            call,
            flow,
            engines,
            pacer,
            signalling,
            live,
            hub,
            history,
            resolver,
            node,
            report_dir,
            started,
            started_wall: SystemTime::now(),
            _ports: ports,
            caller,
            barge_in,
            bot_level: 0.0,
            dropping_rest: false,
            frames_fed: 0,
            dtmf: Vec::new(),
            speech_log: SpeechLog::default(),
            rtp_timeout_logged: false,
            input,
            speech_cancel,
            pipeline_result: None,
            turns: Vec::new(),
            after_handover: Vec::new(),
            control,
            agent: None,
            agent_ports: HashMap::new(),
            agent_answers: HashMap::new(),
            placed_legs: std::collections::HashSet::new(),
            early_agent_events: Vec::new(),
            agent_asr: None,
            agent_line_tx,
            hold_frames: 0,
            done_tx,
            poster,
            live_reported: LiveState::Bot,
            signalling_gone: false,
        };
        Ok((task, io))
    }

    /// The call's loop: waits on the sockets, the media tick, the pipeline, signalling and
    /// the work it started; each handler feeds the control core, whose outputs are carried
    /// out after every event.
    async fn run(mut self, mut io: CallIo) {
        let tick_period = Duration::from_millis(u64::from(PTIME_MS));
        let mut tick = tokio::time::interval_at((self.started + tick_period).into(), tick_period);
        let mut next_rtcp = self.started + RTCP_INTERVAL;
        let mut buf = vec![0u8; 2048];
        let mut agent_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 1500];
        loop {
            let agent_socket = self.agent.as_ref().map(|a| a.socket());
            tokio::select! {
                received = io.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = received {
                        self.on_caller_datagram(&buf[..n], from);
                    }
                }
                _ = tick.tick() => self.on_tick(Instant::now()),
                received = recv_on(agent_socket.as_deref(), &mut agent_buf) => {
                    if let (Ok((n, from)), Some(agent)) = (received, self.agent.as_mut()) {
                        if let Some(ev) = agent.on_datagram(&agent_buf[..n], from, Instant::now()) {
                            tracing::info!(digit = %ev.digit, "DTMF from the agent");
                        }
                    }
                }
                Some(line) = io.agent_lines.recv() => self.on_agent_line(&line),
                received = recv_on(io.rtcp_socket.as_ref(), &mut rtcp_buf) => {
                    if let Ok((n, from)) = received {
                        self.caller.on_rtcp(&rtcp_buf[..n], from, Instant::now());
                    }
                }
                () = tokio::time::sleep_until(next_rtcp.into()) => {
                    next_rtcp += RTCP_INTERVAL;
                    self.send_rtcp(io.rtcp_socket.as_ref()).await;
                }
                out = io.pipeline_out.recv() => {
                    if let Some(out) = out {
                        self.on_pipeline_output(out);
                    }
                }
                signal = io.signals.recv() => self.on_signal(signal),
                Some(done) = io.done.recv() => self.on_done(done),
                Some(posted) = io.posted.recv() => self.on_posted(posted),
                res = &mut io.pipeline, if self.pipeline_result.is_none() => self.on_pipeline_end(res),
            }
            self.carry_out();
            if self.control.is_over() || self.signalling_gone {
                break;
            }
            let state = live_state(self.control.phase());
            if state != self.live_reported {
                self.live_reported = state;
                self.live.set_state(&self.id, state);
            }
        }
        self.finish(io).await;
    }

    /// The caller's RTP port received a datagram.
    fn on_caller_datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        if let Some(ev) = self.caller.on_datagram(bytes, from, Instant::now()) {
            tracing::info!(digit = %ev.digit, "DTMF (RFC 4733)");
            self.dtmf.push(ev.digit);
            let at = self.media_time();
            self.send_input(CallInput::Dtmf {
                digit: ev.digit,
                at,
            });
        }
    }

    /// The call time of the caller's next frame.
    fn media_time(&self) -> Duration {
        Duration::from_millis(self.frames_fed * u64::from(PTIME_MS))
    }

    /// Gives the pipeline an input that must not be lost (a key press, the resume).
    fn send_input(&self, input: CallInput) {
        send_or_spawn(&self.input, input);
    }

    /// Asks the signalling task for something without waiting for room in its queue.
    fn to_signalling(&self, msg: Inbound) {
        send_or_spawn(&self.signalling, msg);
    }

    /// The 20 ms media tick: the caller's frame to the pipeline (and the agent), the agent's
    /// audio to the caller, barge-in, the hold tone, the dead-RTP check and the control
    /// core's timers.
    fn on_tick(&mut self, now: Instant) {
        let speaking = self.caller.speaking();
        let frame = self.caller.next_frame(now);
        self.relay_agent(now, frame.as_deref());
        if let Some(frame) = frame {
            self.barge_in_check(&frame, speaking);
            let at = self.media_time();
            self.frames_fed += 1;
            let rate = self.caller.rate();
            let input = CallInput::Audio(AudioFrame {
                at,
                samples: frame,
                rate,
            });
            if self.input.try_send(input).is_err() {
                self.caller.figures.frames_dropped_by_pipeline += 1;
            }
        }
        self.check_rtp_timeout(now);
        let frame_len = self.caller.frame_len();
        let queued = self.caller.queued();
        if self.control.caller_waits() && queued < frame_len * 2 {
            // The caller hears a quiet ringback tone once the announcement is out.
            let tone = hold_tone_frame(self.hold_frames, self.caller.rate());
            self.hold_frames += 1;
            self.speech_log.pad(tone.len() as u64);
            self.caller.play(&tone);
        }
        let playout = Playout {
            speaking,
            nearly_empty: queued <= frame_len * 3,
        };
        self.control.handle_timeout(now, playout);
    }

    /// The agent leg's audio for this tick: both ways when bridged (and the agent side
    /// transcribed), the caller to the agent when the agent already listens, nothing (its
    /// audio discarded) while the agent waits.
    fn relay_agent(&mut self, now: Instant, caller_frame: Option<&[f32]>) {
        let Some(agent) = self.agent.as_mut() else {
            self.end_agent_transcript();
            return;
        };
        let rate = self.caller.rate();
        let silence;
        let frame = match caller_frame {
            Some(f) => f,
            None => {
                silence = vec![0.0; self.caller.frame_len()];
                &silence
            }
        };
        let bridged = self.control.bridged_agent();
        let listening = self.control.agent_listening(now);
        if bridged != Some(agent.handle) {
            if listening == Some(agent.handle) {
                agent.send(frame, rate);
            }
            agent.discard_frame(now);
            self.end_agent_transcript();
            return;
        }
        // Bridged: the caller's audio goes to the agent, the agent's to the caller; the
        // pipeline still hears the caller (the transcript goes on).
        agent.send(frame, rate);
        let for_caller = agent.poll_for_caller(now, rate);
        let at = self.media_time();
        let asr = self.agent_asr.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(INPUT_QUEUE);
            let job = run_transcriber(self.engines.clone(), rx, self.agent_line_tx.clone());
            tokio::spawn(
                async move {
                    match job.await {
                        Ok(lines) => tracing::info!(lines = lines.len(), "agent side transcribed"),
                        Err(e) => {
                            tracing::warn!(error = %e, "the agent side could not be transcribed")
                        }
                    }
                }
                .in_current_span(),
            );
            AgentTranscriber {
                input: tx,
                offset: at,
            }
        });
        let frame = AudioFrame {
            at,
            samples: for_caller.clone(),
            rate,
        };
        if asr.input.try_send(CallInput::Audio(frame)).is_err() {
            tracing::debug!("agent transcriber behind; a frame skipped");
        }
        self.caller.play(&for_caller);
        self.speech_log.pad(for_caller.len() as u64);
    }

    /// Not bridged (any more): the agent's transcriber finishes its last words.
    fn end_agent_transcript(&mut self) {
        if let Some(asr) = self.agent_asr.take() {
            let _ = asr.input.try_send(CallInput::End);
        }
    }

    /// The caller spoke over the bot: playback stops (only while the bot has the caller).
    fn barge_in_check(&mut self, frame: &[f32], speaking: bool) {
        let level = rms(frame);
        if self.engines.config.media.barge_in
            && self.control.bot_has_caller()
            && self.barge_in.on_frame(level, self.bot_level, speaking)
        {
            let unplayed = self.caller.flush();
            self.speech_log.cut(unplayed as u64, self.caller.rate());
            self.speech_cancel.cancel();
            self.dropping_rest = true;
            tracing::info!(
                at_ms = self.frames_fed * u64::from(PTIME_MS),
                "barge-in: caller spoke over the bot; playback stopped"
            );
        }
    }

    /// Hangs up when the caller's RTP stopped for longer than `no_rtp_timeout_s`.
    fn check_rtp_timeout(&mut self, now: Instant) {
        let limit = Duration::from_secs(self.engines.config.media.no_rtp_timeout_s);
        if limit.is_zero() || self.control.hangup_sent() || self.control.ended_by().is_some() {
            return;
        }
        if self.caller.silent_for(self.started, now) > limit {
            if !self.rtp_timeout_logged {
                tracing::warn!(secs = limit.as_secs(), "no RTP from the caller; hanging up");
                self.rtp_timeout_logged = true;
            }
            self.control.hang_up(EndedBy::NoRtpTimeout);
        }
    }

    async fn send_rtcp(&mut self, socket: Option<&UdpSocket>) {
        let Some(socket) = socket else {
            return;
        };
        if let Some((packet, to)) = self.caller.rtcp_report(Instant::now()) {
            if socket.send_to(&packet, to).await.is_ok() {
                self.caller.figures.rtcp_sent += 1;
            }
        }
    }

    /// What the pipeline produced: bot speech to play, live lines, the caller's turns.
    fn on_pipeline_output(&mut self, out: CallOutput) {
        match out {
            CallOutput::Speak {
                kind,
                text,
                audio,
                continues,
                ..
            } => {
                if continues && self.dropping_rest {
                    return;
                }
                self.dropping_rest = false;
                let rate = self.caller.rate();
                let samples = if audio.rate == rate {
                    audio.samples
                } else {
                    match resample_all(&audio.samples, audio.rate, rate) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot resample bot speech; skipped");
                            return;
                        }
                    }
                };
                self.bot_level = rms(&samples);
                if continues {
                    self.speech_log.extend(samples.len() as u64, rate);
                } else {
                    // Live only: the console's call view shows what the bot says as it starts.
                    let what = match kind {
                        SpeechKind::Greeting => "greeting",
                        SpeechKind::Reply => "reply",
                    };
                    let data = serde_json::json!({"kind": what, "text": text});
                    self.hub.broadcast("said", &self.call.call_id, &data);
                    let at = self.media_time();
                    self.speech_log
                        .push(kind, text, at, samples.len() as u64, rate);
                }
                self.caller.play(&samples);
            }
            // The media layer stopped playback itself when the caller spoke over the bot
            // (`barge_in_check`); the pipeline's cut is the same event seen from its side.
            CallOutput::SpeechCut { .. } => {}
            CallOutput::Partial(line) => {
                // Live only: the agent screen shows what the caller is saying.
                if let Some(data) = to_json("partial line", &line) {
                    self.hub.publish("partial", &self.call.call_id, &data);
                }
            }
            CallOutput::Heard(line) => {
                let entry = heard_entry(&line, Duration::ZERO, context::Speaker::Caller);
                self.append_transcript(entry);
            }
            CallOutput::Decision(decision) => self.on_decision(decision),
            // Kept for the hand-over context; live for the console's call view (what the
            // caller said, the intent and its confidence, the reply, an escalation and why).
            CallOutput::Turn(turn) => {
                if let Some(data) = to_json("turn", &turn) {
                    self.hub.broadcast("turn", &self.call.call_id, &data);
                }
                self.turns.push(*turn);
                self.journal_progress();
            }
        }
    }

    /// The bot's decision goes to the control core.
    fn on_decision(&mut self, decision: BotDecision) {
        match decision {
            BotDecision::HandOver(e) => {
                let mut targets = self.engines.config.handover.transfer.targets(&e.skill);
                if !self.call.refer_allowed {
                    bridge_only(&mut targets);
                }
                let team = self.flow.dialog.prompts().team(&e.skill);
                self.control
                    .escalate(Instant::now(), SystemTime::now(), &e, team, &targets);
                self.escalation = Some(e);
                self.journal_progress();
            }
            BotDecision::Finish => self.control.bot_finished(),
        }
    }

    /// Journals the call as far as it got (see [`crate::journal`]): what a crash must not
    /// lose. Fields as in the final record.
    fn journal_progress(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        let record = serde_json::json!({
            "id": self.id,
            "call_id": self.call.call_id,
            "from": self.call.from,
            "called": self.call.called,
            "flow": self.flow.name,
            "turns": self.turns,
            "escalation": self.escalation,
            "outcome": self.escalation.as_ref().map(|_| "escalated"),
        });
        let started = crate::journal::now_ms()
            - i64::try_from(self.started.elapsed().as_millis()).unwrap_or(0);
        journal.record(&self.id, started, record);
    }

    /// A line of the live transcript after the hand-over.
    fn append_transcript(&mut self, entry: context::TranscriptEntry) {
        if let Some(data) = to_json("transcript line", &entry) {
            self.hub.append_line(&self.call.call_id, &data);
        }
        self.after_handover.push(entry);
    }

    fn on_agent_line(&mut self, line: &HeardLine) {
        let offset = self.agent_asr.as_ref().map_or(Duration::ZERO, |a| a.offset);
        let entry = heard_entry(line, offset, context::Speaker::Agent);
        self.append_transcript(entry);
    }

    /// News from the signalling task.
    fn on_signal(&mut self, signal: Option<CallSignal>) {
        let now = Instant::now();
        let Some(signal) = signal else {
            self.signalling_gone = true;
            return;
        };
        match signal {
            CallSignal::Agent(event) if !self.placed_legs.contains(&event.leg()) => {
                tracing::debug!(leg = %event.leg(), "agent leg news before its placing was confirmed; kept");
                self.early_agent_events.push(event);
            }
            CallSignal::Confirmed => tracing::debug!("ACK received"),
            CallSignal::MediaChanged(m) => self.caller.change_media(m, now),
            CallSignal::Dtmf(digit) => {
                self.dtmf.push(digit);
                if let Some(agent) = self.agent.as_ref() {
                    if self.control.bridged_agent() == Some(agent.handle) {
                        agent.send_dtmf(digit);
                    }
                }
                let at = self.media_time();
                self.send_input(CallInput::Dtmf { digit, at });
            }
            CallSignal::Agent(AgentEvent::Progress(agent, code)) => {
                self.control.agent_progress(agent, code);
            }
            CallSignal::Agent(AgentEvent::Answered(agent, media)) => {
                self.agent_answers.insert(agent, media);
                self.control.agent_answered(now, agent);
            }
            CallSignal::Agent(AgentEvent::Ended(agent, reason)) => {
                self.agent_ports.remove(&agent);
                self.agent_answers.remove(&agent);
                self.control.agent_ended(now, agent, &reason);
            }
            CallSignal::Refer(progress) => self.control.refer_progress(now, progress),
            CallSignal::Ended(reason) => self.control.caller_ended(&reason),
            CallSignal::Shutdown => self.control.hang_up(EndedBy::Shutdown),
        }
    }

    /// Work the task started came back.
    fn on_done(&mut self, done: Done) {
        let now = Instant::now();
        match done {
            Done::Resolved(op, result) => self.control.resolved(now, op, result),
            Done::Placed(op, result) => {
                let result = result.map(|leg| {
                    let agent = leg.handle;
                    self.agent_ports.insert(agent, leg);
                    self.placed_legs.insert(agent);
                    agent
                });
                let placed = result.as_ref().ok().copied();
                self.control.placed(now, op, result);
                if let Some(agent) = placed {
                    let (early, later): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut self.early_agent_events)
                            .into_iter()
                            .partition(|e| e.leg() == agent);
                    self.early_agent_events = later;
                    for event in early {
                        self.on_signal(Some(CallSignal::Agent(event)));
                    }
                }
            }
            Done::ReferSent(op, result) => self.control.refer_sent(now, op, result),
            Done::Whisper(agent, text, audio) => {
                let whisper = match (self.agent.as_mut(), audio) {
                    (Some(media), Some(audio)) if media.handle == agent => {
                        let samples = convert(audio.samples, audio.rate, media.rate);
                        media.play(&samples);
                        let secs = samples.len() as f64 / f64::from(media.rate.max(1));
                        Some((text, Duration::from_secs_f64(secs)))
                    }
                    _ => None,
                };
                self.control.whisper_ready(now, agent, whisper);
            }
            Done::Prompt(text, audio) => {
                if let Some(audio) = audio {
                    let rate = self.caller.rate();
                    let samples = convert(audio.samples, audio.rate, rate);
                    tracing::info!(
                        %text,
                        audio_ms = samples.len() as u64 * 1000 / u64::from(rate.max(1)),
                        queued_ms = self.caller.queued() as u64 * 1000 / u64::from(rate.max(1)),
                        "prompt for the caller queued"
                    );
                    // After whatever is queued (the end of the announcement; at most 40 ms of
                    // tone).
                    let at = self.media_time();
                    self.speech_log
                        .push(SpeechKind::Reply, text, at, samples.len() as u64, rate);
                    self.caller.play(&samples);
                }
                self.control.prompt_queued();
            }
            Done::WebhookSettled(confirmed) => self.control.webhook_settled(now, confirmed),
        }
    }

    /// An event reached the outbox (or could not).
    fn on_posted(&mut self, posted: Posted) {
        match posted.result {
            Ok((id, delivered)) => {
                self.control.event_queued(id);
                if let Some(delivered) = delivered {
                    let wait = Duration::from_millis(
                        self.engines.config.handover.transfer.webhook_wait_ms,
                    );
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        let confirmed =
                            matches!(tokio::time::timeout(wait, delivered).await, Ok(Ok(())));
                        let _ = done.send(Done::WebhookSettled(confirmed));
                    });
                }
            }
            Err(_) if posted.kind == "escalated" => {
                self.control.webhook_settled(Instant::now(), false);
            }
            Err(_) => {}
        }
    }

    /// The pipeline ended by itself: a failure hangs the call up.
    fn on_pipeline_end(
        &mut self,
        res: Result<Result<CallReport, crate::pipeline::PipelineError>, tokio::task::JoinError>,
    ) {
        let res = match res {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("pipeline task: {e}")),
        };
        if let Err(e) = &res {
            tracing::error!(error = %e, "call pipeline failed; hanging up");
            self.control.hang_up(EndedBy::PipelineError);
        }
        self.pipeline_result = Some(res);
    }

    /// Carries out what the control core asked for.
    fn carry_out(&mut self) {
        while let Some(output) = self.control.poll_output() {
            match output {
                Output::Resolve { op, uri } => {
                    // In a task of its own: the lookup never holds up the media tick or
                    // signalling, and its result comes back tagged with `op`.
                    let done = self.done_tx.clone();
                    let resolver = Arc::clone(&self.resolver);
                    tokio::spawn(async move {
                        let _ = done.send(Done::Resolved(op, resolver.locate(&uri).await));
                    });
                }
                Output::PlaceCall {
                    op,
                    uri,
                    addr,
                    headers,
                    from_display,
                    from_user,
                    auth,
                } => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let request = PlaceCall {
                        caller: self.call.handle,
                        target: uri,
                        addr,
                        headers,
                        from_display,
                        from_user,
                        auth,
                        reply,
                    };
                    let peer_ip = addr.ip();
                    self.ask_signalling(Inbound::PlaceCall(request), answer, move |r| {
                        let leg = |(handle, ports)| AgentLeg {
                            handle,
                            ports,
                            peer_ip,
                        };
                        Done::Placed(op, r.map(leg))
                    });
                }
                Output::Refer {
                    op,
                    uri,
                    headers,
                    replacing,
                } => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let request = ReferCall {
                        caller: self.call.handle,
                        target: uri,
                        headers,
                        replacing,
                        reply,
                    };
                    self.ask_signalling(Inbound::Refer(request), answer, move |r| {
                        Done::ReferSent(op, r)
                    });
                }
                Output::HangUp(LegId::Caller) => {
                    self.to_signalling(Inbound::Hangup(self.call.handle));
                }
                Output::HangUp(LegId::Agent(agent)) => {
                    self.agent_ports.remove(&agent);
                    self.to_signalling(Inbound::Hangup(agent));
                }
                Output::StartAgentMedia(agent) => self.start_agent_media(agent),
                Output::DropAgentMedia(agent) => self.drop_agent_media(agent),
                Output::Whisper(agent) => self.start_whisper(agent),
                Output::Bridge(_) => {
                    // The hold tone (or the end of the announcement) stops.
                    let unplayed = self.caller.flush();
                    self.speech_log.cut(unplayed as u64, self.caller.rate());
                }
                Output::SayToCaller(prompt) => self.start_prompt(&prompt),
                Output::ResumeBot => self.send_input(CallInput::Resume),
                Output::Emit(event) => self.emit(&event),
            }
        }
    }

    /// Sends `msg` to the signalling task and feeds its answer (or its silence) back.
    fn ask_signalling<T: Send + 'static>(
        &self,
        msg: Inbound,
        answer: tokio::sync::oneshot::Receiver<Result<T, LegError>>,
        done: impl FnOnce(Result<T, LegError>) -> Done + Send + 'static,
    ) {
        let (signalling, results) = (self.signalling.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let result = if signalling.send(msg).await.is_err() {
                Err(LegError::SignallingGone)
            } else {
                match tokio::time::timeout(SIGNALLING_ANSWER, answer).await {
                    Ok(Ok(result)) => result,
                    _ => Err(LegError::SignallingSilent),
                }
            };
            let _ = results.send(done(result));
        });
    }

    /// The answering agent's media starts on the ports of its leg.
    fn start_agent_media(&mut self, agent: CallHandle) {
        let now = Instant::now();
        let (Some(media), Some(leg)) = (
            self.agent_answers.remove(&agent),
            self.agent_ports.remove(&agent),
        ) else {
            self.control
                .agent_media_failed(now, agent, LegError::LegGone);
            return;
        };
        let cfg = &self.engines.config.media;
        let rate = self.caller.rate();
        match AgentMedia::start(leg, &media, rate, &self.pacer, cfg, now) {
            Ok(started) => {
                self.agent = Some(Box::new(started));
                self.control
                    .agent_media_started(now, agent, &media.codec.to_string());
            }
            Err(e) => self
                .control
                .agent_media_failed(now, agent, LegError::Media(e.to_string())),
        }
    }

    /// The agent leg is over: its media stops and its figures go to the record.
    fn drop_agent_media(&mut self, agent: CallHandle) {
        if self.agent.as_ref().is_some_and(|a| a.handle == agent) {
            if let Some(media) = self.agent.take() {
                self.control
                    .agent_media_closed(media.packets_out(), media.packets_in);
            }
        }
    }

    /// The hand-over context of this call as it stands.
    fn handover_context(&self) -> Option<context::HandoverContext> {
        let (escalation, ..) = self.control.escalation()?;
        self.context_of(&self.turns, Some(escalation))
    }

    /// The hand-over context from these turns and this escalation (the pipeline's final
    /// report has the complete ones once the call is over).
    fn context_of(
        &self,
        turns: &[TurnReport],
        escalation: Option<&crate::dialog::Escalation>,
    ) -> Option<context::HandoverContext> {
        let (_, team, escalated_at) = self.control.escalation()?;
        let queued = self.caller.queued() as u64;
        let lines = self.speech_log.lines(queued, self.caller.rate());
        Some(context::build(&ContextInput {
            call_id: &self.call.call_id,
            flow: &self.flow.name,
            caller: crate::sip::message::uri_of(&self.call.from),
            called: self.call.called.as_deref(),
            started_at: self.started_wall,
            escalated_at: Some(escalated_at),
            greeting: None,
            turns,
            bot_speech: &lines,
            escalation,
            team_name: Some(team),
            after_handover: &self.after_handover,
        }))
    }

    /// Synthesises the whisper (the flow's summary of the context) for the agent.
    fn start_whisper(&mut self, agent: CallHandle) {
        let text = match self.handover_context() {
            Some(ctx) => self
                .flow
                .dialog
                .prompts()
                .transfer_whisper(&context::whisper_values(&ctx)),
            None => String::new(),
        };
        let (engines, style, done) = (self.engines.clone(), self.flow.voice, self.done_tx.clone());
        tokio::spawn(async move {
            let audio = synthesize(&engines, &text, style).await;
            let _ = done.send(Done::Whisper(agent, text, audio));
        });
    }

    /// Synthesises a prompt of the control core for the caller.
    fn start_prompt(&mut self, prompt: &CallerPrompt) {
        let text = match prompt {
            CallerPrompt::TransferFailed { skill } => {
                self.flow.dialog.prompts().transfer_failed(skill)
            }
        };
        let (engines, style, done) = (self.engines.clone(), self.flow.voice, self.done_tx.clone());
        tokio::spawn(async move {
            let audio = synthesize(&engines, &text, style).await;
            let _ = done.send(Done::Prompt(text, audio));
        });
    }

    /// Publishes an event of the control core; the escalation carries the whole context
    /// (watched: the agent's INVITE waits for its confirmation).
    fn emit(&mut self, event: &CallEvent) {
        let data = match event {
            CallEvent::Escalated { .. } => {
                let Some(ctx) = self.handover_context() else {
                    return;
                };
                tracing::info!(summary = %ctx.summary.replace('\n', " | "), "hand-over context");
                match to_json("hand-over context", &ctx) {
                    Some(data) => {
                        if let Some(journal) = &self.journal {
                            journal.context(&self.id, data.clone());
                        }
                        data
                    }
                    None => {
                        self.control.webhook_settled(Instant::now(), false);
                        return;
                    }
                }
            }
            other => other.data(),
        };
        let watched = matches!(event, CallEvent::Escalated { .. }) && self.poster.has_webhook();
        self.poster.post(event.kind(), data, watched);
    }

    /// The call is over: the pipeline's report (bounded wait), the transfer's end and the
    /// final context for the agent's screen, the record, metrics and history.
    async fn finish(mut self, mut io: CallIo) {
        // Close the caller's audio and collect the report (it may still be transcribing the
        // last words), draining its outputs so it never blocks on a full channel.
        let _ = self.input.try_send(CallInput::End);
        // Our sender goes (swapped for one of a channel nobody reads), so the pipeline's input
        // ends even when `End` found no room.
        let (input, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.input, input));
        if self.pipeline_result.is_none() {
            let drain = async {
                loop {
                    tokio::select! {
                        res = &mut io.pipeline => break res,
                        _ = io.pipeline_out.recv() => {}
                    }
                }
            };
            self.pipeline_result = Some(
                match tokio::time::timeout(Duration::from_secs(30), drain).await {
                    Ok(Ok(Ok(report))) => Ok(report),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Err(e)) => Err(format!("pipeline task: {e}")),
                    Err(_) => {
                        io.pipeline.abort();
                        Err("pipeline did not finish within 30 s of hang-up".into())
                    }
                },
            );
        }
        if let Some(agent) = self.agent.take() {
            self.control
                .agent_media_closed(agent.packets_out(), agent.packets_in);
        }
        let queued = self.caller.queued() as u64;
        let transfer = self.control.finish();
        // The final context: the whole transcript, now including what was said while bridged.
        let mut call_ended = None;
        if let (Some(r), Some(Ok(report))) = (&transfer, &self.pipeline_result) {
            let ended_by = self.control.ended_by().unwrap_or(EndedBy::Unknown);
            call_ended = self
                .context_of(&report.turns, report.escalation.as_ref())
                .and_then(|ctx| to_json("hand-over context", &ctx))
                .map(|mut data| {
                    if let Some(obj) = data.as_object_mut() {
                        obj.insert("outcome".into(), serde_json::json!(r.outcome));
                        obj.insert("ended_by".into(), serde_json::json!(ended_by));
                    }
                    data
                });
        }
        let mut transfer = transfer;
        if let Some(data) = call_ended {
            self.poster.post("call_ended", data, false);
            if let (Some(r), Some(id)) = (transfer.as_mut(), last_event_id(&mut io).await) {
                r.webhook_events.push(id);
            }
        }
        let (codec, remote) = self.caller.describe();
        let rate = self.caller.rate();
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let (rtp, recording) = self.caller.finish().await;
        let (report, pipeline_error) = match self.pipeline_result {
            Some(Ok(r)) => (Some(r), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let record = CallRecord {
            id: self.id.clone(),
            call_id: self.call.call_id.clone(),
            from: self.call.from.clone(),
            called: self.call.called.clone(),
            trunk: self.call.trunk.clone(),
            codec,
            remote_rtp: remote,
            duration_ms,
            ended_by: self.control.ended_by().unwrap_or(EndedBy::Unknown),
            dtmf: self.dtmf,
            bot_speech: self.speech_log.finish(queued, rate),
            rtp,
            report,
            pipeline_error,
            transfer,
            recording,
            node: self.node.as_deref().map(str::to_string),
        };
        tracing::info!(
            ended_by = %record.ended_by,
            duration_ms = record.duration_ms,
            turns = record.report.as_ref().map_or(0, |r| r.turns.len()),
            "call finished"
        );
        if let Some(dir) = &self.report_dir {
            write_record(dir, &record.id, &record);
        }
        // Metrics, and the history (its SQLite write runs on a blocking thread).
        let stored =
            crate::observe::finished::on_call_finished(self.history, self.started_wall, &record);
        let in_history = match stored {
            Some(stored) => matches!(
                tokio::time::timeout(Duration::from_secs(10), stored).await,
                Ok(Ok(true))
            ),
            None => false,
        };
        // Stored: the journal may forget the call (a crash before this point recovers it).
        if let Some(journal) = &self.journal {
            journal.finish(&self.id);
        }
        // Live only, last: whoever watches this call (the console) learns it is over, and,
        // once it is stored, that the history has it.
        let finished = serde_json::json!({
            "id": record.id,
            "call_id": record.call_id,
            "flow": self.flow.name,
            "ended_by": record.ended_by,
            "outcome": record.report.as_ref().map(|r| r.outcome),
            "turns": record.report.as_ref().map_or(0, |r| r.turns.len()),
            "duration_ms": record.duration_ms,
            "in_history": in_history,
        });
        self.hub
            .broadcast(CALL_FINISHED, &self.call.call_id, &finished);
    }
}

/// Waits (bounded) for the outbox to report the last posted event; its id.
async fn last_event_id(io: &mut CallIo) -> Option<String> {
    let wait = async {
        while let Some(posted) = io.posted.recv().await {
            if posted.kind == "call_ended" {
                return posted.result.ok().map(|(id, _)| id);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .ok()
        .flatten()
}

/// Queues `msg` at once when there is room, else by a task that waits for room: the call task
/// never waits, and nothing is lost while the receiver lives.
fn send_or_spawn<T: Send + 'static>(tx: &mpsc::Sender<T>, msg: T) {
    if let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(msg) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(msg).await;
        });
    }
}

/// Waits for a datagram on `socket`, or forever when there is none.
async fn recv_on(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Synthesises `text` in the flow's voice; None (logged) when synthesis fails.
async fn synthesize(
    engines: &Engines,
    text: &str,
    style: crate::speech::voice::VoiceStyle,
) -> Option<MonoAudio> {
    match synthesize_text(engines, text, style).await {
        Ok(audio) => Some(audio),
        Err(e) => {
            tracing::error!(error = %e, %text, "speech synthesis failed");
            None
        }
    }
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

fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

fn record_file_name(call_id: &str) -> String {
    format!("{}.json", super::call_file_stem(call_id))
}

/// Writes a call's record as `{id}.json` in `dir` (atomically: a reader never sees half).
pub(super) fn write_record(dir: &std::path::Path, id: &str, record: &impl serde::Serialize) {
    let path = dir.join(record_file_name(id));
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
    fn record_names_are_safe() {
        assert_eq!(record_file_name("a/b@c:1"), "a_b_c_1.json");
    }
}

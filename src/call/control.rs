//! The call-control core: everything that happens from the bot's decision to hand a call
//! over to the end of the call, as a plain state machine in the style of the SIP endpoint.
//!
//! It is fed what happened (the bot's decision, agent-leg news, REFER progress, the webhook's
//! confirmation, the results of work the shell started for it, `handle_timeout(now)`) and
//! answers with [`Output`]s from [`CallControl::poll_output`]: look up an address, place a
//! call, send a REFER, hang up a leg, start or drop the agent's media, whisper, bridge, speak a
//! prompt to the caller, emit an event. It owns no socket, task or clock: every `Instant`
//! comes in from the caller, so each transfer path is tested in virtual time
//! (see `tests.rs`). The shell never waits for an answer inside a branch: it starts the work
//! and feeds the result back in, tagged with the [`OpId`] of the request it answers, so a late
//! answer to a request the core has moved past is recognised and ignored.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::dialog::Escalation;
use crate::handover::transfer::{refer_to, replaces};
use crate::handover::transfer::{
    user_to_user, AfterAgent, AttemptOutcome, Hunt, Target, TransferConfig, TransferMode,
};
use crate::sip::endpoint::{CallHandle, EndReason, OutboundAuth, ReferProgress, SipEndpoint};

use super::record::{CallEvent, EndedBy, TransferOutcome, TransferRecord};

/// How long the caller's side may take to report a transfer's result, beyond the ring timeout.
pub const REFER_GRACE: Duration = Duration::from_secs(15);
/// The pause after the bot's last words before the BYE, so the last word is not clipped.
pub const HANGUP_TAIL: Duration = Duration::from_millis(400);

/// What the core needs to know about the call and its settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub call_id: String,
    pub flow: String,
    pub transfer: TransferConfig,
    /// Whether escalated events are confirmed by a webhook (a deliverer exists): the agent's
    /// INVITE then waits up to `transfer.webhook_wait_ms` for the confirmation.
    pub webhook: bool,
}

/// Why an extension could not be tried, or a transfer not asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegError {
    #[error("bad extension URI: {0}")]
    BadTarget(String),
    #[error("cannot resolve {host}: {why}")]
    Lookup { host: String, why: String },
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("cannot resolve {host}: no answer within {secs} s")]
    LookupTimeout { host: String, secs: u64 },
    #[error("agent calls need the UDP transport")]
    NoUdp,
    #[error("no free RTP port for the agent leg")]
    NoPort,
    #[error("the agent leg is gone")]
    LegGone,
    #[error("the call is not in a state to be transferred")]
    NotTransferable,
    #[error("signalling is gone")]
    SignallingGone,
    #[error("signalling did not answer")]
    SignallingSilent,
    #[error("the agent leg's media: {0}")]
    Media(String),
}

/// Names one request the core made, so its answer can be matched to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(u64);

/// A leg of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegId {
    Caller,
    Agent(CallHandle),
}

/// A prompt for the caller that the shell words (from the flow) and synthesises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerPrompt {
    /// Nobody could take the call: the apology and the callback promise.
    TransferFailed { skill: String },
}

/// What the core asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Look up where an extension's calls go (RFC 3263: its addresses in the order to try);
    /// answer with [`CallControl::resolved`].
    Resolve { op: OpId, uri: String },
    /// Place the agent's call; answer with [`CallControl::placed`].
    PlaceCall {
        op: OpId,
        uri: String,
        addr: SocketAddr,
        headers: Vec<(String, String)>,
        from_display: String,
        from_user: String,
        /// What answers the agent's PBX challenging the INVITE (the team's credentials).
        auth: Option<OutboundAuth>,
    },
    /// Ask the caller's side to transfer the call (REFER); `replacing`: the agent call it
    /// replaces (attended). Answer with [`CallControl::refer_sent`].
    Refer {
        op: OpId,
        uri: String,
        headers: Vec<(String, String)>,
        replacing: Option<CallHandle>,
    },
    /// End a leg (BYE, or CANCEL while it rings).
    HangUp(LegId),
    /// The agent answered: start the leg's media; answer with
    /// [`CallControl::agent_media_started`] or [`CallControl::agent_media_failed`].
    StartAgentMedia(CallHandle),
    /// The agent leg is over: stop its media (and report its packet counts with
    /// [`CallControl::agent_media_closed`]).
    DropAgentMedia(CallHandle),
    /// Speak the whisper (the flow's summary prompt) to the agent only; answer with
    /// [`CallControl::whisper_ready`].
    Whisper(CallHandle),
    /// Put the caller through: drop what is still queued for the caller and relay both ways.
    Bridge(CallHandle),
    /// Speak to the caller after whatever is queued; answer with
    /// [`CallControl::prompt_queued`].
    SayToCaller(CallerPrompt),
    /// The bot takes the caller back (after the agent hung up).
    ResumeBot,
    /// Tell the outside world; the shell reports the event's id with
    /// [`CallControl::event_queued`].
    Emit(CallEvent),
}

/// What the caller is hearing, as far as the shell's media loop is concerned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Playout {
    /// Bot speech is still playing.
    pub speaking: bool,
    /// At most a few frames are queued (the announcement is out; hold tone only).
    pub nearly_empty: bool,
}

/// The call's phase, as the live-calls view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Bot,
    Escalating,
    RingingAgent,
    Bridged,
    Transferred,
}

/// The addresses of the extension being called, in RFC 3263 order: the one being tried and
/// those left to fail over to on a 503 or no response, within the extension's ring time.
#[derive(Debug, Clone)]
struct Route {
    addr: SocketAddr,
    rest: VecDeque<SocketAddr>,
    /// The extension's ring timeout, which runs from its first INVITE (across failovers).
    deadline: Option<Instant>,
}

/// Where the agent leg stands.
#[derive(Debug)]
enum Leg {
    /// Waiting up to `deadline` for the webhook to confirm the escalated event.
    Gate { deadline: Instant },
    /// The extension's host is being looked up.
    Resolving { op: OpId, target: Target },
    /// The agent's INVITE is being placed.
    Placing {
        op: OpId,
        target: Target,
        route: Route,
    },
    /// The extension rings.
    Ringing {
        agent: CallHandle,
        target: Target,
        deadline: Instant,
        /// We cancelled it at the ring timeout.
        cancelled: bool,
        route: Route,
        /// Without any response by then (not even 100 Trying), the next address is tried
        /// (None: no failover timer, or a response came).
        silent_until: Option<Instant>,
    },
    /// The agent answered; its media is starting.
    Connecting {
        agent: CallHandle,
        target: Target,
        answered: Instant,
    },
    /// The agent's media runs. The whisper (if any) plays to the agent and the caller hears
    /// the end of the announcement, then the hold tone; once both are done the two are put
    /// through. `whispered_at` is None while the whisper is being synthesised.
    Answered {
        agent: CallHandle,
        target: Target,
        answered: Instant,
        whispered_at: Option<Instant>,
    },
    /// A REFER is being sent (blind: to the extension; attended: replacing `consult`).
    ReferSending {
        op: OpId,
        target: Target,
        consult: Option<CallHandle>,
    },
    /// The caller's side was asked to transfer the call and has not reported the result yet.
    Referring {
        target: Target,
        deadline: Instant,
        consult: Option<CallHandle>,
    },
    /// Caller and agent talk.
    Bridged { agent: CallHandle },
    /// The caller's side reached the agent itself; the gateway leaves the call.
    Transferred,
    /// Nobody answered: the apology plays, then the call ends.
    Failed,
    /// The agent hung up and the bot has the caller again.
    Returned,
}

/// One escalation's transfer.
#[derive(Debug)]
struct Transfer {
    skill: String,
    team: String,
    escalation: Escalation,
    escalated_wall: SystemTime,
    decided: Instant,
    hunt: Hunt,
    leg: Leg,
    record: TransferRecord,
}

/// The hang-up of the caller's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hangup {
    /// Not decided.
    No,
    /// Once the bot's last words (and a pending prompt) are out, plus the tail.
    AfterSpeech { at: Option<Instant> },
    /// The BYE was asked for.
    Sent,
}

/// The call-control state machine of one call.
#[derive(Debug)]
pub struct CallControl {
    cfg: ControlConfig,
    transfer: Option<Transfer>,
    hangup: Hangup,
    /// A prompt for the caller is being synthesised.
    prompt_pending: bool,
    ended_by: Option<EndedBy>,
    /// The caller's dialog is over.
    over: bool,
    next_op: u64,
    outputs: VecDeque<Output>,
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

impl CallControl {
    pub fn new(cfg: ControlConfig) -> CallControl {
        CallControl {
            cfg,
            transfer: None,
            hangup: Hangup::No,
            prompt_pending: false,
            ended_by: None,
            over: false,
            next_op: 0,
            outputs: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`CallControl::handle_timeout`] must run next at the latest (the shell's media
    /// tick also calls it every 20 ms, with the caller's playout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let leg = match self.transfer.as_ref().map(|t| &t.leg) {
            Some(Leg::Gate { deadline }) => Some(*deadline),
            Some(Leg::Ringing {
                deadline,
                cancelled: false,
                route,
                silent_until,
                ..
            }) => match silent_until {
                Some(at) if !route.rest.is_empty() => Some((*at).min(*deadline)),
                _ => Some(*deadline),
            },
            Some(Leg::Referring { deadline, .. }) => Some(*deadline),
            Some(Leg::Answered {
                whispered_at: Some(at),
                ..
            }) => Some(*at),
            _ => None,
        };
        let tail = match self.hangup {
            Hangup::AfterSpeech { at: Some(at) } => Some(at),
            _ => None,
        };
        match (leg, tail) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the caller's dialog is over (the shell stops the call's loop).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Who ended the call, once known.
    pub fn ended_by(&self) -> Option<EndedBy> {
        self.ended_by
    }

    /// Whether the caller's BYE was asked for.
    pub fn hangup_sent(&self) -> bool {
        self.hangup == Hangup::Sent
    }

    /// The call's phase for the live view.
    pub fn phase(&self) -> Phase {
        match self.transfer.as_ref().map(|t| &t.leg) {
            None | Some(Leg::Returned) => Phase::Bot,
            Some(Leg::Gate { .. } | Leg::Resolving { .. } | Leg::Placing { .. } | Leg::Failed) => {
                Phase::Escalating
            }
            Some(
                Leg::Ringing { .. }
                | Leg::Connecting { .. }
                | Leg::Answered { .. }
                | Leg::ReferSending { .. }
                | Leg::Referring { .. },
            ) => Phase::RingingAgent,
            Some(Leg::Bridged { .. }) => Phase::Bridged,
            Some(Leg::Transferred) => Phase::Transferred,
        }
    }

    /// Whether the bot has the caller (no transfer, or the agent gave the caller back): only
    /// then may the caller barge in on the bot.
    pub fn bot_has_caller(&self) -> bool {
        matches!(
            self.transfer.as_ref().map(|t| &t.leg),
            None | Some(Leg::Returned)
        )
    }

    /// Whether the caller waits for someone and hears the hold tone.
    pub fn caller_waits(&self) -> bool {
        matches!(
            self.transfer.as_ref().map(|t| &t.leg),
            Some(
                Leg::Gate { .. }
                    | Leg::Resolving { .. }
                    | Leg::Placing { .. }
                    | Leg::Ringing { .. }
                    | Leg::Connecting { .. }
                    | Leg::Answered { .. }
                    | Leg::ReferSending { .. }
                    | Leg::Referring { .. }
            )
        )
    }

    /// The agent talking with the caller, when bridged.
    pub fn bridged_agent(&self) -> Option<CallHandle> {
        match self.transfer.as_ref().map(|t| &t.leg) {
            Some(Leg::Bridged { agent }) => Some(*agent),
            _ => None,
        }
    }

    /// The agent who already hears the caller before being put through (bridge mode, once
    /// the whisper is over), as of `now`.
    pub fn agent_listening(&self, now: Instant) -> Option<CallHandle> {
        match self.transfer.as_ref().map(|t| &t.leg) {
            Some(Leg::Answered {
                agent,
                target,
                whispered_at: Some(at),
                ..
            }) if target.mode == TransferMode::Bridge && now >= *at => Some(*agent),
            _ => None,
        }
    }

    /// The escalation being handled, its team's spoken name and when it was decided (wall
    /// clock), for the hand-over context.
    pub fn escalation(&self) -> Option<(&Escalation, &str, SystemTime)> {
        self.transfer
            .as_ref()
            .map(|t| (&t.escalation, t.team.as_str(), t.escalated_wall))
    }

    /// The transfer's record so far.
    pub fn record(&self) -> Option<&TransferRecord> {
        self.transfer.as_ref().map(|t| &t.record)
    }

    /// The call is over: the transfer's final record (the latest transfer's, when the bot
    /// took the caller back and escalated again).
    pub fn finish(&mut self) -> Option<TransferRecord> {
        let waits = self.caller_waits();
        let t = self.transfer.as_mut()?;
        if waits {
            t.record.outcome = Some(TransferOutcome::CallerHungUp);
        }
        t.record.attempts = t.hunt.attempts().to_vec();
        Some(t.record.clone())
    }

    fn op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    // ---- The bot's decisions ----

    /// The bot is done with the caller (goodbye): hang up once its last words are out.
    pub fn bot_finished(&mut self) {
        if self.hangup == Hangup::No {
            self.hangup = Hangup::AfterSpeech { at: None };
        }
    }

    /// The bot decided to hand the call over to `team` (its spoken name) over `targets`.
    /// Without targets the call ends after the announcement; while a transfer is running a
    /// second escalation changes nothing.
    pub fn escalate(
        &mut self,
        now: Instant,
        wall: SystemTime,
        escalation: &Escalation,
        team: String,
        targets: &[Target],
    ) {
        if !self.bot_has_caller() || self.over {
            return;
        }
        if targets.is_empty() {
            tracing::info!(reason = ?escalation.reason, skill = %escalation.skill,
                "escalation: no agent extension is configured for this team, so the call ends after the announcement");
            self.bot_finished();
            return;
        }
        tracing::info!(reason = ?escalation.reason, skill = %escalation.skill, targets = targets.len(), "escalation: warm transfer");
        let wait = Duration::from_millis(self.cfg.transfer.webhook_wait_ms);
        let gated = self.cfg.webhook && !wait.is_zero();
        self.transfer = Some(Transfer {
            skill: escalation.skill.clone(),
            team,
            escalation: escalation.clone(),
            escalated_wall: wall,
            decided: now,
            hunt: Hunt::new(targets),
            leg: Leg::Gate {
                deadline: now + wait,
            },
            record: TransferRecord {
                skill: escalation.skill.clone(),
                ..TransferRecord::default()
            },
        });
        // The agent's screen gets the context before the phone rings.
        self.outputs.push_back(Output::Emit(CallEvent::Escalated {
            skill: escalation.skill.clone(),
        }));
        if !gated {
            self.dial_next(now);
        }
    }

    // ---- The webhook ----

    /// An event went into the outbox with this id.
    pub fn event_queued(&mut self, id: String) {
        if let Some(t) = self.transfer.as_mut() {
            t.record.webhook_events.push(id);
        }
    }

    /// The webhook confirmed the escalated event (`true`), or it cannot be confirmed at all
    /// (`false`: it could not even be queued).
    pub fn webhook_settled(&mut self, now: Instant, confirmed: bool) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if matches!(t.leg, Leg::Gate { .. }) {
            t.record.webhook_before_invite = Some(confirmed);
            self.dial_next(now);
        }
    }

    // ---- The hunt ----

    /// Tries the next extension: a REFER for a blind one, an address lookup for the others;
    /// gives up when none is left.
    fn dial_next(&mut self, now: Instant) {
        if self.over {
            // The caller is gone: nobody is called for them any more.
            return;
        }
        let op = self.op();
        let (call_id, flow) = (self.cfg.call_id.clone(), self.cfg.flow.clone());
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Some(target) = t.hunt.next_target() else {
            self.give_up();
            return;
        };
        if target.mode == TransferMode::Blind {
            let headers = context_headers(&call_id, &t.skill, &flow, &self.cfg.transfer);
            t.record
                .decision_to_invite_ms
                .get_or_insert_with(|| ms_between(t.decided, now));
            self.outputs.push_back(Output::Refer {
                op,
                uri: target.uri.clone(),
                headers,
                replacing: None,
            });
            t.leg = Leg::ReferSending {
                op,
                target,
                consult: None,
            };
        } else {
            self.outputs.push_back(Output::Resolve {
                op,
                uri: target.uri.clone(),
            });
            t.leg = Leg::Resolving { op, target };
        }
    }

    /// The current attempt failed before anything rang: recorded, and the next is tried.
    fn attempt_failed(&mut self, now: Instant, uri: &str, outcome: AttemptOutcome) {
        self.attempt_failed_at(now, uri, None, outcome);
    }

    /// [`Self::attempt_failed`], naming the address that was called.
    fn attempt_failed_at(
        &mut self,
        now: Instant,
        uri: &str,
        addr: Option<SocketAddr>,
        outcome: AttemptOutcome,
    ) {
        if let Some(t) = self.transfer.as_mut() {
            t.hunt.record_at(uri, addr, &outcome);
        }
        self.dial_next(now);
    }

    /// Where the extension of request `op` is called: its addresses in the order to try
    /// (RFC 3263), or why there are none.
    pub fn resolved(&mut self, now: Instant, op: OpId, result: Result<Vec<SocketAddr>, LegError>) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let target = match &t.leg {
            Leg::Resolving { op: o, target } if *o == op => target.clone(),
            _ => return,
        };
        let mut addrs: VecDeque<SocketAddr> = match result {
            Ok(addrs) => addrs.into(),
            Err(why) => {
                tracing::warn!(target = %target.uri, %why, "cannot call this extension; trying the next");
                self.attempt_failed(now, &target.uri, AttemptOutcome::Failed(why.to_string()));
                return;
            }
        };
        let Some(addr) = addrs.pop_front() else {
            let why = LegError::NoAddress(target.uri.clone());
            tracing::warn!(target = %target.uri, %why, "cannot call this extension; trying the next");
            self.attempt_failed(now, &target.uri, AttemptOutcome::Failed(why.to_string()));
            return;
        };
        if !addrs.is_empty() {
            tracing::info!(target = %target.uri, first = %addr, more = ?addrs, "the extension has several addresses; failing over in this order");
        }
        let route = Route {
            addr,
            rest: addrs,
            deadline: None,
        };
        self.place(now, target, route);
    }

    /// Sends the INVITE for `target` to `route.addr`.
    fn place(&mut self, now: Instant, target: Target, route: Route) {
        let (call_id, flow) = (self.cfg.call_id.clone(), self.cfg.flow.clone());
        let op = self.op();
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let headers = context_headers(&call_id, &t.skill, &flow, &self.cfg.transfer);
        t.record
            .decision_to_invite_ms
            .get_or_insert_with(|| ms_between(t.decided, now));
        self.outputs.push_back(Output::PlaceCall {
            op,
            uri: target.uri.clone(),
            addr: route.addr,
            headers,
            from_display: format!("Voicebot {}", t.team),
            from_user: self.cfg.transfer.from_user.clone(),
            auth: self.cfg.transfer.team_credentials(&t.team),
        });
        t.leg = Leg::Placing { op, target, route };
    }

    /// The INVITE to the current address of the ringing extension got a 503 or no response
    /// (`why`): the next address is called, within the extension's ring time. False (nothing
    /// done) when no address is left or the ring time is over.
    fn fail_over(&mut self, now: Instant, why: &str) -> bool {
        let over = self.over;
        let Some(t) = self.transfer.as_mut() else {
            return false;
        };
        let Leg::Ringing {
            target,
            route,
            deadline,
            ..
        } = &t.leg
        else {
            return false;
        };
        if route.rest.is_empty() || now >= *deadline || over {
            return false;
        }
        let (target, mut route) = (target.clone(), route.clone());
        let failed = route.addr;
        let Some(next) = route.rest.pop_front() else {
            return false;
        };
        tracing::info!(target = %target.uri, address = %failed, next = %next, %why, left = route.rest.len(), "agent address failed; failing over to the next address of the extension");
        t.hunt.record_at(
            &target.uri,
            Some(failed),
            &AttemptOutcome::Failed(format!("{why}; failed over to {next}")),
        );
        route.addr = next;
        self.place(now, target, route);
        true
    }

    /// The agent's call of request `op` went out (its handle), or could not be placed.
    pub fn placed(&mut self, now: Instant, op: OpId, result: Result<CallHandle, LegError>) {
        let ring = self.cfg.transfer.ring_timeout();
        let failover = Duration::from_millis(self.cfg.transfer.failover_after_ms);
        let Some(t) = self.transfer.as_mut() else {
            if let Ok(agent) = result {
                self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
            }
            return;
        };
        let (target, mut route) = match &t.leg {
            Leg::Placing {
                op: o,
                target,
                route,
            } if *o == op => (target.clone(), route.clone()),
            _ => {
                // A leg nobody waits for any more (the caller left meanwhile).
                if let Ok(agent) = result {
                    self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
                }
                return;
            }
        };
        match result {
            Ok(agent) if !self.over => {
                tracing::info!(%agent, target = %target.uri, address = %route.addr, mode = target.mode.as_str(), "calling the agent");
                let deadline = *route.deadline.get_or_insert(now + ring);
                t.leg = Leg::Ringing {
                    agent,
                    target,
                    deadline,
                    cancelled: false,
                    route,
                    silent_until: (!failover.is_zero()).then(|| now + failover),
                };
            }
            Ok(agent) => self.outputs.push_back(Output::HangUp(LegId::Agent(agent))),
            Err(why) => {
                tracing::warn!(target = %target.uri, address = %route.addr, %why, "cannot call this extension; trying the next");
                self.attempt_failed_at(
                    now,
                    &target.uri,
                    Some(route.addr),
                    AttemptOutcome::Failed(why.to_string()),
                );
            }
        }
    }

    /// Nobody answered: a callback request, the apology, then the hang-up.
    fn give_up(&mut self) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        tracing::warn!(attempts = ?t.hunt.attempts(), "no agent answered; a callback is requested");
        t.leg = Leg::Failed;
        t.record.outcome = Some(TransferOutcome::Callback);
        let event = CallEvent::CallbackRequested {
            skill: t.skill.clone(),
            reason: "no agent answered".into(),
            attempts: t.hunt.attempts().to_vec(),
        };
        let prompt = CallerPrompt::TransferFailed {
            skill: t.skill.clone(),
        };
        self.outputs.push_back(Output::Emit(event));
        if !self.over {
            self.prompt_pending = true;
            self.outputs.push_back(Output::SayToCaller(prompt));
        }
        self.bot_finished();
    }

    // ---- The agent leg ----

    /// The agent's side answered provisionally: trying (100), ringing (180) or early media
    /// (183). Any of them means this address is alive: no failover for silence any more.
    pub fn agent_progress(&mut self, agent: CallHandle, code: u16) {
        tracing::info!(%agent, code, "agent leg progress");
        if let Some(Leg::Ringing {
            agent: a,
            silent_until,
            ..
        }) = self.transfer.as_mut().map(|t| &mut t.leg)
        {
            if *a == agent {
                *silent_until = None;
            }
        }
    }

    /// The agent answered.
    pub fn agent_answered(&mut self, now: Instant, agent: CallHandle) {
        let Some(t) = self.transfer.as_mut() else {
            self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
            return;
        };
        match std::mem::replace(&mut t.leg, Leg::Failed) {
            Leg::Ringing {
                agent: ringing,
                target,
                ..
            } if ringing == agent && !self.over => {
                t.leg = Leg::Connecting {
                    agent,
                    target,
                    answered: now,
                };
                self.outputs.push_back(Output::StartAgentMedia(agent));
            }
            other => {
                // Not the leg we are waiting for: end it.
                t.leg = other;
                self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
            }
        }
    }

    /// The answering agent's media runs (`codec`: the leg's codec).
    pub fn agent_media_started(&mut self, now: Instant, agent: CallHandle, codec: &str) {
        let whisper = self.cfg.transfer.whisper;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Leg::Connecting {
            agent: a,
            target,
            answered,
        } = &t.leg
        else {
            return;
        };
        if *a != agent {
            return;
        }
        let (target, answered) = (target.clone(), *answered);
        tracing::info!(%agent, target = %target.uri, codec, mode = target.mode.as_str(), "agent answered");
        t.record.agent = Some(target.uri.clone());
        t.record.mode = Some(target.mode);
        self.outputs
            .push_back(Output::Emit(CallEvent::AgentAnswered {
                agent: target.uri.clone(),
                mode: target.mode,
                codec: codec.to_string(),
            }));
        let whispered_at = if whisper {
            self.outputs.push_back(Output::Whisper(agent));
            None
        } else {
            Some(now)
        };
        t.leg = Leg::Answered {
            agent,
            target,
            answered,
            whispered_at,
        };
    }

    /// The answering agent's media could not start: that leg ends, the next is tried.
    pub fn agent_media_failed(&mut self, now: Instant, agent: CallHandle, why: LegError) {
        let target = match self.transfer.as_ref().map(|t| &t.leg) {
            Some(Leg::Connecting {
                agent: a, target, ..
            }) if *a == agent => target.uri.clone(),
            _ => return,
        };
        tracing::error!(error = %why, "cannot start the agent leg's media; trying the next extension");
        self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
        self.attempt_failed(now, &target, AttemptOutcome::Failed(why.to_string()));
    }

    /// The whisper for `agent` is playing (`Some((text, length))`), or could not be made.
    pub fn whisper_ready(
        &mut self,
        now: Instant,
        agent: CallHandle,
        whisper: Option<(String, Duration)>,
    ) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if let Leg::Answered {
            agent: a,
            whispered_at: at @ None,
            ..
        } = &mut t.leg
        {
            if *a != agent {
                return;
            }
            match whisper {
                Some((text, length)) => {
                    tracing::info!(%text, "whispering to the agent before putting the caller through");
                    *at = Some(now + length);
                    t.record.whisper = Some(text);
                }
                None => *at = Some(now),
            }
        }
    }

    /// The agent leg's packet counts, once its media stopped.
    pub fn agent_media_closed(&mut self, packets_out: u64, packets_in: u64) {
        if let Some(t) = self.transfer.as_mut() {
            t.record.packets_to_agent = packets_out;
            t.record.packets_from_agent = packets_in;
        }
    }

    /// An agent leg ended: refused, cancelled, timed out, or the agent hung up.
    pub fn agent_ended(&mut self, now: Instant, agent: CallHandle, reason: &EndReason) {
        /// Which part of the transfer the leg was.
        enum Gone {
            Unanswered(String, SocketAddr, AttemptOutcome),
            BeforePutThrough(String),
            Consult,
            Bridged,
        }
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let gone = match &mut t.leg {
            Leg::Ringing {
                agent: a,
                target,
                cancelled,
                route,
                ..
            } if *a == agent => {
                let outcome = match reason {
                    EndReason::Refused(code) => AttemptOutcome::Refused(*code),
                    EndReason::Cancelled if *cancelled => AttemptOutcome::NoAnswer,
                    EndReason::NoResponse => AttemptOutcome::NoAnswer,
                    other => AttemptOutcome::Failed(format!("{other:?}")),
                };
                Gone::Unanswered(target.uri.clone(), route.addr, outcome)
            }
            Leg::Connecting {
                agent: a, target, ..
            }
            | Leg::Answered {
                agent: a, target, ..
            } if *a == agent => Gone::BeforePutThrough(target.uri.clone()),
            Leg::ReferSending { consult, .. } | Leg::Referring { consult, .. }
                if *consult == Some(agent) =>
            {
                *consult = None;
                Gone::Consult
            }
            Leg::Bridged { agent: a } if *a == agent => Gone::Bridged,
            _ => return,
        };
        match gone {
            Gone::Unanswered(uri, addr, outcome) => {
                // RFC 3263 4.3: a 503 or a transaction timeout moves on to the next address of
                // the same extension; any other refusal is the extension's answer.
                let why = match reason {
                    EndReason::Refused(503) => Some("503 Service Unavailable"),
                    EndReason::NoResponse => Some("no response (transaction timeout)"),
                    _ => None,
                };
                if let Some(why) = why {
                    if self.fail_over(now, why) {
                        return;
                    }
                }
                tracing::info!(%agent, target = %uri, address = %addr, ?outcome, "agent leg not answered; trying the next extension");
                self.attempt_failed_at(now, &uri, Some(addr), outcome);
            }
            Gone::BeforePutThrough(uri) => {
                tracing::info!(%agent, target = %uri, "the agent hung up before the caller was put through; trying the next extension");
                self.outputs.push_back(Output::DropAgentMedia(agent));
                let why = "hung up before the caller was put through".to_string();
                self.attempt_failed(now, &uri, AttemptOutcome::Failed(why.to_string()));
            }
            Gone::Consult => {
                // Normal for an attended transfer: the agent's phone ends our call once the
                // caller's side replaced it. The NOTIFY decides.
                tracing::info!(%agent, "the consultation call with the agent ended");
                self.outputs.push_back(Output::DropAgentMedia(agent));
            }
            Gone::Bridged => self.bridged_agent_left(agent),
        }
    }

    /// The agent hung up a bridged call: the bot takes the caller back, or the call ends.
    fn bridged_agent_left(&mut self, agent: CallHandle) {
        self.outputs.push_back(Output::DropAgentMedia(agent));
        let back_to_bot = self.cfg.transfer.after_agent_hangup == AfterAgent::Bot && !self.over;
        match self.transfer.as_mut() {
            Some(t) if back_to_bot => {
                tracing::info!(%agent, "the agent hung up; the bot takes the caller back");
                t.leg = Leg::Returned;
                t.record.outcome = Some(TransferOutcome::ReturnedToBot);
                let event = CallEvent::ReturnedToBot {
                    agent: t.record.agent.clone(),
                };
                self.outputs.push_back(Output::Emit(event));
                self.outputs.push_back(Output::ResumeBot);
            }
            _ => {
                tracing::info!(%agent, "the agent hung up; ending the call");
                self.hang_up(EndedBy::Agent);
            }
        }
    }

    // ---- Putting through ----

    /// The agent answered and heard the whisper: bridge mode bridges; attended mode asks the
    /// caller's side to replace our call with the agent's (REFER with `Replaces`).
    fn put_through(&mut self, now: Instant) {
        let op = self.op();
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Leg::Answered {
            agent,
            target,
            answered,
            ..
        } = std::mem::replace(&mut t.leg, Leg::Failed)
        else {
            return;
        };
        if t.record.whisper.is_some() {
            t.record.whisper_ms = Some(ms_between(answered, now));
        }
        if target.mode == TransferMode::Attended {
            self.outputs.push_back(Output::Refer {
                op,
                uri: target.uri.clone(),
                headers: Vec::new(),
                replacing: Some(agent),
            });
            t.leg = Leg::ReferSending {
                op,
                target,
                consult: Some(agent),
            };
            return;
        }
        self.bridge(now, agent, Some(answered));
    }

    /// Puts the caller through to the agent: the hold tone stops and the legs are bridged.
    fn bridge(&mut self, now: Instant, agent: CallHandle, answered: Option<Instant>) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if let Some(at) = answered {
            let ms = ms_between(at, now);
            t.record.answer_to_bridge_ms.get_or_insert(ms);
            t.record.answer_to_put_through_ms = Some(ms);
        }
        t.record.outcome = Some(TransferOutcome::Bridged);
        tracing::info!(%agent, "caller and agent bridged");
        t.leg = Leg::Bridged { agent };
        self.outputs.push_back(Output::Bridge(agent));
    }

    /// The REFER of request `op` went out (its Refer-To), or could not be sent.
    pub fn refer_sent(&mut self, now: Instant, op: OpId, result: Result<String, LegError>) {
        let grace = self.cfg.transfer.ring_timeout() + REFER_GRACE;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let (target, consult) = match &t.leg {
            Leg::ReferSending {
                op: o,
                target,
                consult,
            } if *o == op => (target.clone(), *consult),
            _ => return,
        };
        match result {
            Ok(refer_to) => {
                tracing::info!(target = %target.uri, mode = target.mode.as_str(), "the caller's side was asked to transfer the call");
                t.record.refer_to = Some(refer_to);
                t.leg = Leg::Referring {
                    target,
                    deadline: now + grace,
                    consult,
                };
            }
            Err(why) => match consult {
                Some(agent) => {
                    tracing::warn!(%why, "cannot ask for an attended transfer; bridging through the gateway instead");
                    self.bridge(now, agent, None);
                }
                None => {
                    tracing::warn!(target = %target.uri, %why, "cannot transfer to this extension; trying the next");
                    self.attempt_failed(now, &target.uri, AttemptOutcome::Failed(why.to_string()));
                }
            },
        }
    }

    /// How the caller's side is doing with the transfer.
    pub fn refer_progress(&mut self, now: Instant, progress: ReferProgress) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if !matches!(t.leg, Leg::Referring { .. }) {
            tracing::debug!(?progress, "transfer progress for no transfer in progress");
            return;
        }
        let failed = match progress {
            ReferProgress::Accepted => {
                tracing::info!("the caller's side accepted the transfer");
                None
            }
            ReferProgress::Notified { code, .. } if (200..300).contains(&code) => {
                t.record.refer_status = Some(code);
                self.transferred();
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
            self.transfer_failed(now, code);
        }
    }

    /// The caller's side reached the agent: the gateway leaves the call.
    fn transferred(&mut self) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Leg::Referring {
            target, consult, ..
        } = std::mem::replace(&mut t.leg, Leg::Transferred)
        else {
            return;
        };
        tracing::info!(target = %target.uri, mode = target.mode.as_str(), "transfer completed: the caller's side reached the agent; leaving the call");
        t.record.agent = Some(target.uri.clone());
        t.record.mode = Some(target.mode);
        t.record.outcome = Some(TransferOutcome::Transferred);
        self.outputs.push_back(Output::Emit(CallEvent::Transferred {
            agent: target.uri,
            mode: target.mode,
        }));
        if let Some(agent) = consult {
            self.outputs.push_back(Output::DropAgentMedia(agent));
            self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
        }
        self.hang_up(EndedBy::Transferred);
    }

    /// The caller's side could not make the transfer (`code`: its REFER or NOTIFY status). An
    /// attended transfer whose agent is still on the line falls back to bridging through the
    /// gateway; otherwise the hunt goes on.
    fn transfer_failed(&mut self, now: Instant, code: u16) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        t.record.refer_status = Some(code);
        let Leg::Referring {
            target, consult, ..
        } = std::mem::replace(&mut t.leg, Leg::Failed)
        else {
            return;
        };
        match consult {
            Some(agent) => {
                tracing::warn!(code, target = %target.uri, "the caller's side could not take the attended transfer; bridging through the gateway instead");
                self.bridge(now, agent, None);
            }
            None => {
                tracing::warn!(code, target = %target.uri, "the transfer failed; trying the next extension");
                self.attempt_failed(now, &target.uri, AttemptOutcome::TransferFailed(code));
            }
        }
    }

    // ---- Time and the caller's leg ----

    /// Time passed: deadlines (webhook wait, ring timeout, transfer report, hang-up tail) and
    /// what waits for the caller's playout (putting through after the announcement).
    pub fn handle_timeout(&mut self, now: Instant, playout: Playout) {
        self.leg_timers(now, playout);
        self.hangup_timer(now, playout);
    }

    fn leg_timers(&mut self, now: Instant, playout: Playout) {
        /// What is due.
        enum Due {
            Gate,
            RingTimeout(CallHandle),
            Silent(CallHandle),
            PutThrough,
            ReferOverdue,
        }
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let due = match &mut t.leg {
            Leg::Gate { deadline } if now >= *deadline => Due::Gate,
            Leg::Ringing {
                agent,
                deadline,
                cancelled,
                ..
            } if now >= *deadline && !*cancelled => {
                *cancelled = true;
                Due::RingTimeout(*agent)
            }
            Leg::Ringing {
                agent,
                silent_until: Some(at),
                route,
                cancelled: false,
                ..
            } if now >= *at && !route.rest.is_empty() => Due::Silent(*agent),
            Leg::Answered {
                target,
                answered,
                whispered_at: Some(at),
                ..
            } if now >= *at => {
                // Bridge mode: the agent hears the caller from now on (see
                // `agent_listening`); the caller hears the agent once the announcement is out.
                if target.mode == TransferMode::Bridge {
                    let ms = ms_between(*answered, now);
                    t.record.answer_to_bridge_ms.get_or_insert(ms);
                }
                if !playout.nearly_empty {
                    return;
                }
                Due::PutThrough
            }
            Leg::Referring { deadline, .. } if now >= *deadline => Due::ReferOverdue,
            _ => return,
        };
        match due {
            Due::Gate => {
                tracing::warn!(
                    wait_ms = self.cfg.transfer.webhook_wait_ms,
                    "the webhook has not confirmed the context yet; calling the agent anyway"
                );
                t.record.webhook_before_invite = Some(false);
                self.dial_next(now);
            }
            Due::RingTimeout(agent) => {
                tracing::info!(%agent, "agent did not answer within the ring timeout; cancelling");
                self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
            }
            Due::Silent(agent) => {
                let ms = self.cfg.transfer.failover_after_ms;
                // The leg is given up (cancelled should a response still come; the endpoint
                // sends the CANCEL once it may).
                self.outputs.push_back(Output::HangUp(LegId::Agent(agent)));
                self.fail_over(now, &format!("no response within {ms} ms"));
            }
            Due::PutThrough => self.put_through(now),
            Due::ReferOverdue => {
                tracing::warn!("the caller's side did not report the transfer's result in time");
                self.transfer_failed(now, 408);
            }
        }
    }

    fn hangup_timer(&mut self, now: Instant, playout: Playout) {
        let Hangup::AfterSpeech { at } = &mut self.hangup else {
            return;
        };
        if self.over || self.prompt_pending || playout.speaking {
            return;
        }
        // A short tail so the last word is not clipped by the BYE.
        let due = *at.get_or_insert(now + HANGUP_TAIL);
        if now >= due {
            self.hang_up(EndedBy::Bot);
        }
    }

    /// The prompt asked for with [`Output::SayToCaller`] is queued for playout (or could not
    /// be made).
    pub fn prompt_queued(&mut self) {
        self.prompt_pending = false;
    }

    /// Hang up the caller now, for `why` (kept if something else ended the call first).
    pub fn hang_up(&mut self, why: EndedBy) {
        self.ended_by.get_or_insert(why);
        if self.hangup != Hangup::Sent && !self.over {
            self.hangup = Hangup::Sent;
            self.outputs.push_back(Output::HangUp(LegId::Caller));
        }
    }

    /// The caller's dialog ended (`reason` from signalling).
    pub fn caller_ended(&mut self, reason: &EndReason) {
        self.ended_by.get_or_insert(EndedBy::from_end(reason));
        if self.caller_waits() {
            if let Some(t) = self.transfer.as_mut() {
                t.record.outcome = Some(TransferOutcome::CallerHungUp);
            }
        }
        self.over = true;
        if let Some(Leg::Ringing { agent, .. }) = self.transfer.as_ref().map(|t| &t.leg) {
            self.outputs.push_back(Output::HangUp(LegId::Agent(*agent)));
        }
    }
}

/// The headers that carry the context to the agent's phone or PBX: on our INVITE, or in the
/// Refer-To URI of a blind transfer (so the caller's side puts them on its INVITE).
pub fn context_headers(
    call_id: &str,
    skill: &str,
    flow: &str,
    cfg: &TransferConfig,
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("X-Voicebot-Call-Id".to_string(), call_id.to_string()),
        ("X-Voicebot-Team".to_string(), skill.to_string()),
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

/// Sends the REFER an [`Output::Refer`] asks for on `caller`'s dialog: blind, to `uri` with the
/// context `headers` in the Refer-To; attended, to the agent's Contact with a `Replaces` for
/// `replacing`'s dialog. Returns the Refer-To that went out.
pub fn send_refer(
    endpoint: &mut SipEndpoint,
    caller: CallHandle,
    uri: &str,
    headers: &[(String, String)],
    replacing: Option<CallHandle>,
    now: Instant,
) -> Result<String, LegError> {
    let target = match replacing {
        Some(consult) => {
            let ids = endpoint.dialog_ids(consult).ok_or(LegError::LegGone)?;
            let r = replaces(&ids.call_id, &ids.local_tag, &ids.remote_tag);
            refer_to(&ids.remote_target, &[("Replaces", r)])
        }
        None => {
            let h: Vec<(&str, String)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.clone()))
                .collect();
            refer_to(uri, &h)
        }
    };
    if endpoint.refer(caller, &target, now) {
        Ok(target)
    } else {
        Err(LegError::NotTransferable)
    }
}

//! The call-control core against the project's own SIP endpoints, in virtual time: a caller
//! endpoint places a call to the gateway's endpoint, and the agents' endpoint (one per host)
//! answers, refuses or lets the gateway's INVITEs ring. Their messages travel through an
//! in-memory network (quinn's `Pair` idea); the clock only moves when every endpoint and the
//! core are idle, to the earliest of their timers. No socket, no sleeping: a test that would
//! take a minute of ringing on the wire runs in microseconds, and the SIP details the core
//! relies on (CANCEL after the ring timeout gives `Cancelled`, an unanswered INVITE ends with
//! `NoResponse` after 64*T1, a REFER the caller's side does not support is refused) are the
//! endpoint's own, not assumed.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use super::control::{send_refer, CallControl, ControlConfig, LegError, LegId, Output, Playout};
use super::record::{EndedBy, TransferOutcome};
use crate::dialog::escalation::{Escalation, EscalationReason};
use crate::handover::transfer::{parse_target, AfterAgent, Target, TransferConfig, TransferMode};
use crate::sip::auth::AllowList;
use crate::sip::endpoint::{
    CallHandle, EndReason, EndpointConfig, Event, OutboundCall, Peer, SipEndpoint, Transport,
};
use crate::sip::sdp::LocalMedia;

const GATEWAY: &str = "127.0.0.1:5060";
const CALLER: &str = "127.0.0.1:5061";
/// The agents' PBX: every extension `sip:<behaviour>@127.0.0.2:5070`.
const AGENTS: &str = "127.0.0.2:5070";
/// A host that never answers (its packets are lost).
const SILENT: &str = "127.0.0.3:5070";

/// What an agent extension does with the gateway's INVITE, by its user part.
fn behaviour(user: &str) -> &str {
    user.split('-').next().unwrap_or(user)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a test address")
}

fn endpoint(now: Instant, port: u16) -> SipEndpoint {
    SipEndpoint::new(
        EndpointConfig {
            sip_port: port,
            ..EndpointConfig::default()
        },
        None,
        AllowList::parse(&[]).expect("an empty allow list"),
        now,
    )
}

fn media(ip: IpAddr, port: u16) -> LocalMedia {
    LocalMedia {
        address: ip,
        rtp_port: port,
        session_id: 1,
        session_version: 1,
    }
}

/// The gateway (its endpoint and the call's control core), a caller and the agents.
struct Net {
    now: Instant,
    gateway: SipEndpoint,
    caller: SipEndpoint,
    agents: SipEndpoint,
    control: CallControl,
    /// The call at the gateway, once it arrived.
    call: Option<CallHandle>,
    /// Agent legs the gateway placed.
    legs: HashSet<CallHandle>,
    /// The agents' side: their incoming calls by handle, with the extension called.
    agent_calls: HashMap<CallHandle, String>,
    /// What happened, for the assertions.
    caller_answered: bool,
    caller_ended: Option<EndReason>,
    agent_ended: Vec<(String, EndReason)>,
    bridged: Vec<CallHandle>,
    resumed: bool,
    apologised: bool,
    events: Vec<&'static str>,
}

impl Net {
    /// A call from the caller to the gateway, answered.
    fn call(cfg: impl FnOnce(&mut TransferConfig)) -> Net {
        let now = Instant::now();
        let mut transfer = TransferConfig {
            ring_timeout_s: 5,
            webhook_wait_ms: 0,
            ..TransferConfig::default()
        };
        cfg(&mut transfer);
        let mut net = Net {
            now,
            gateway: endpoint(now, 5060),
            caller: endpoint(now, 5061),
            agents: endpoint(now, 5070),
            control: CallControl::new(ControlConfig {
                call_id: "harness".into(),
                flow: "support".into(),
                transfer,
                webhook: false,
            }),
            call: None,
            legs: HashSet::new(),
            agent_calls: HashMap::new(),
            caller_answered: false,
            caller_ended: None,
            agent_ended: Vec::new(),
            bridged: Vec::new(),
            resumed: false,
            apologised: false,
            events: Vec::new(),
        };
        let caller_ip = addr(CALLER).ip();
        net.caller.invite(
            OutboundCall {
                target: format!("sip:support@{GATEWAY}"),
                peer: Peer {
                    transport: Transport::Udp,
                    addr: addr(GATEWAY),
                },
                local_ip: caller_ip,
                from_display: "Alice".into(),
                from_user: "alice".into(),
                local: media(caller_ip, 40_000),
                headers: Vec::new(),
                auth: None,
            },
            now,
        );
        net.settle();
        assert!(net.caller_answered, "the gateway answered the call");
        net
    }

    /// The bot hands the call over to these extensions.
    fn escalate(&mut self, targets: &[(&str, TransferMode)]) {
        let targets: Vec<Target> = targets
            .iter()
            .map(|(uri, mode)| Target {
                uri: (*uri).to_string(),
                mode: *mode,
            })
            .collect();
        let escalation = Escalation {
            reason: EscalationReason::ExplicitRequest,
            detail: "asked for a person".into(),
            skill: "billing".into(),
            turn: 1,
        };
        self.control.escalate(
            self.now,
            SystemTime::now(),
            &escalation,
            "the billing team".into(),
            &targets,
        );
        self.settle();
    }

    /// Delivers every message and acts on every event and output until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for from in [GATEWAY, CALLER, AGENTS] {
                while let Some(t) = self.endpoint(from).poll_transmit() {
                    moved = true;
                    let to = t.to.addr;
                    let peer = Peer {
                        transport: Transport::Udp,
                        addr: addr(from),
                    };
                    let now = self.now;
                    if to == addr(SILENT) {
                        continue;
                    }
                    self.endpoint_at(to)
                        .handle_bytes(peer, to.ip(), &t.bytes, now);
                }
            }
            moved |= self.gateway_events();
            moved |= self.caller_events();
            moved |= self.agent_events();
            moved |= self.outputs();
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    fn endpoint(&mut self, name: &str) -> &mut SipEndpoint {
        self.endpoint_at(addr(name))
    }

    fn endpoint_at(&mut self, at: SocketAddr) -> &mut SipEndpoint {
        if at == addr(GATEWAY) {
            &mut self.gateway
        } else if at == addr(CALLER) {
            &mut self.caller
        } else if at == addr(AGENTS) {
            &mut self.agents
        } else {
            panic!("nobody at {at}")
        }
    }

    /// What the gateway's signalling task does with its endpoint's events.
    fn gateway_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.gateway.poll_event() {
            moved = true;
            let now = self.now;
            match event {
                Event::IncomingCall(call) => {
                    self.gateway
                        .accept(call.handle, media(call.local_ip, 30_000), now);
                    self.call = Some(call.handle);
                }
                Event::OutboundProgress(agent, code) => self.control.agent_progress(agent, code),
                Event::OutboundAnswered(agent, _) => self.control.agent_answered(now, agent),
                Event::Refer(_, progress) => self.control.refer_progress(now, progress),
                Event::CallEnded(handle, reason) if self.legs.remove(&handle) => {
                    self.control.agent_ended(now, handle, &reason);
                }
                Event::CallEnded(handle, reason) if Some(handle) == self.call => {
                    self.control.caller_ended(&reason);
                }
                _ => {}
            }
        }
        moved
    }

    fn caller_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.caller.poll_event() {
            moved = true;
            match event {
                Event::OutboundAnswered(..) => self.caller_answered = true,
                Event::CallEnded(_, reason) => self.caller_ended = Some(reason),
                _ => {}
            }
        }
        moved
    }

    /// The agents' phones: `answer-*` answers, `busy-*` refuses with 486, `decline-*` with
    /// 603, `ring-*` rings until cancelled.
    fn agent_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.agents.poll_event() {
            moved = true;
            let now = self.now;
            match event {
                Event::IncomingCall(call) => {
                    let user = call.called.clone().unwrap_or_default();
                    self.agent_calls.insert(call.handle, user.clone());
                    match behaviour(&user) {
                        "answer" => {
                            let local = media(call.local_ip, 50_000);
                            self.agents.accept(call.handle, local, now);
                        }
                        "busy" => self.agents.reject(call.handle, 486, now),
                        "decline" => self.agents.reject(call.handle, 603, now),
                        _ => {}
                    }
                }
                Event::CallEnded(handle, reason) => {
                    let user = self.agent_calls.get(&handle).cloned().unwrap_or_default();
                    self.agent_ended.push((user, reason));
                }
                _ => {}
            }
        }
        moved
    }

    /// What the call task does with the core's outputs (the media parts reduced to notes).
    fn outputs(&mut self) -> bool {
        let mut moved = false;
        while let Some(output) = self.control.poll_output() {
            moved = true;
            let now = self.now;
            match output {
                Output::Resolve { op, uri } => {
                    let result =
                        parse_target(&uri)
                            .map_err(LegError::BadTarget)
                            .and_then(|(host, port)| {
                                format!("{host}:{port}")
                                    .parse::<SocketAddr>()
                                    .map(|a| vec![a])
                                    .map_err(|_| LegError::NoAddress(host))
                            });
                    self.control.resolved(now, op, result);
                }
                Output::PlaceCall {
                    op,
                    uri,
                    addr: to,
                    headers,
                    from_display,
                    from_user,
                    auth,
                } => {
                    let local_ip = addr(GATEWAY).ip();
                    let leg = self.gateway.invite(
                        OutboundCall {
                            target: uri,
                            peer: Peer {
                                transport: Transport::Udp,
                                addr: to,
                            },
                            local_ip,
                            from_display,
                            from_user,
                            local: media(local_ip, 31_000),
                            headers,
                            auth,
                        },
                        now,
                    );
                    self.legs.insert(leg);
                    self.control.placed(now, op, Ok(leg));
                }
                Output::Refer {
                    op,
                    uri,
                    headers,
                    replacing,
                } => {
                    let result = self.refer(&uri, &headers, replacing);
                    self.control.refer_sent(now, op, result);
                }
                Output::HangUp(LegId::Caller) => {
                    if let Some(call) = self.call {
                        self.gateway.hangup(call, now);
                    }
                }
                Output::HangUp(LegId::Agent(leg)) => self.gateway.hangup(leg, now),
                Output::StartAgentMedia(leg) => self.control.agent_media_started(now, leg, "PCMU"),
                Output::DropAgentMedia(_) => self.control.agent_media_closed(100, 100),
                Output::Whisper(leg) => self.control.whisper_ready(
                    now,
                    leg,
                    Some(("billing, a refund".into(), Duration::from_secs(2))),
                ),
                Output::Bridge(leg) => self.bridged.push(leg),
                Output::SayToCaller(_) => {
                    self.apologised = true;
                    self.control.prompt_queued();
                }
                Output::ResumeBot => self.resumed = true,
                Output::Emit(event) => self.events.push(event.kind()),
            }
        }
        moved
    }

    /// What the signalling task does for a REFER request (the same function).
    fn refer(
        &mut self,
        uri: &str,
        headers: &[(String, String)],
        replacing: Option<CallHandle>,
    ) -> Result<String, LegError> {
        let call = self.call.ok_or(LegError::NotTransferable)?;
        send_refer(&mut self.gateway, call, uri, headers, replacing, self.now)
    }

    /// Moves the clock to the next timer of anyone, runs the timers, and settles; until
    /// `done` holds or `limit` of virtual time has passed.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            let next = [
                self.gateway.next_timeout(),
                self.caller.next_timeout(),
                self.agents.next_timeout(),
                self.control.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            // The core also runs on the media tick.
            .map_or(self.now + Duration::from_millis(20), |t| {
                t.min(self.now + Duration::from_millis(20))
            });
            assert!(next <= end, "not done within {limit:?}");
            self.now = next.max(self.now);
            let now = self.now;
            self.gateway.handle_timeout(now);
            self.caller.handle_timeout(now);
            self.agents.handle_timeout(now);
            let idle = Playout {
                speaking: false,
                nearly_empty: true,
            };
            self.control.handle_timeout(now, idle);
            self.settle();
        }
    }

    fn attempts(&mut self) -> Vec<String> {
        self.control
            .finish()
            .map(|r| r.attempts.iter().map(|a| a.outcome.clone()).collect())
            .unwrap_or_default()
    }
}

fn ext(user: &str) -> String {
    format!("sip:{user}@{AGENTS}")
}

#[test]
fn an_answering_agent_is_bridged_and_hanging_up_ends_the_call() {
    let mut net = Net::call(|_| {});
    net.escalate(&[(&ext("answer-1"), TransferMode::Bridge)]);
    net.run_until(Duration::from_secs(1), |n| !n.bridged.is_empty());
    assert_eq!(net.events, ["escalated", "agent_answered"]);
    // The agent hangs up: the gateway says goodbye to the caller too.
    let agent = *net.agent_calls.keys().next().expect("the agent was called");
    let now = net.now;
    net.agents.hangup(agent, now);
    net.run_until(Duration::from_secs(5), |n| n.caller_ended.is_some());
    assert_eq!(net.caller_ended, Some(EndReason::RemoteBye));
    assert_eq!(net.control.ended_by(), Some(EndedBy::Agent));
    assert!(
        net.control.is_over(),
        "the gateway's side of the call ended"
    );
    let r = net.control.finish().expect("a transfer");
    assert_eq!(r.outcome, Some(TransferOutcome::Bridged));
    assert_eq!(r.agent, Some(ext("answer-1")));
}

#[test]
fn busy_and_decline_are_skipped_for_the_next_extension() {
    let mut net = Net::call(|_| {});
    net.escalate(&[
        (&ext("busy-1"), TransferMode::Bridge),
        (&ext("decline-2"), TransferMode::Bridge),
        (&ext("answer-3"), TransferMode::Bridge),
    ]);
    net.run_until(Duration::from_secs(2), |n| !n.bridged.is_empty());
    assert_eq!(net.attempts(), ["refused 486", "refused 603"]);
}

#[test]
fn an_extension_ringing_past_the_timeout_is_cancelled_for_the_next() {
    let mut net = Net::call(|_| {});
    net.escalate(&[
        (&ext("ring-1"), TransferMode::Bridge),
        (&ext("answer-2"), TransferMode::Bridge),
    ]);
    net.run_until(Duration::from_secs(8), |n| !n.bridged.is_empty());
    assert_eq!(net.attempts(), ["no answer"]);
    // The ringing phone saw the CANCEL.
    assert_eq!(
        net.agent_ended,
        [("ring-1".to_string(), EndReason::Cancelled)]
    );
}

#[test]
fn a_host_that_never_answers_ends_in_the_apology_and_the_callback() {
    let mut net = Net::call(|c| c.ring_timeout_s = 60);
    net.escalate(&[(&format!("sip:1001@{SILENT}"), TransferMode::Bridge)]);
    // 64*T1 without any response (timer B), then the apology and the hang-up.
    net.run_until(Duration::from_secs(40), |n| n.caller_ended.is_some());
    assert!(net.apologised);
    assert!(
        net.events.contains(&"callback_requested"),
        "{:?}",
        net.events
    );
    assert_eq!(net.control.ended_by(), Some(EndedBy::Bot));
    assert_eq!(net.attempts(), ["no answer"]);
}

#[test]
fn a_caller_who_hangs_up_while_the_agent_rings_cancels_the_agent() {
    let mut net = Net::call(|_| {});
    net.escalate(&[(&ext("ring-1"), TransferMode::Bridge)]);
    net.run_until(Duration::from_secs(1), |n| !n.agent_calls.is_empty());
    let caller_leg = CallHandle(1);
    let now = net.now;
    net.caller.hangup(caller_leg, now);
    net.run_until(Duration::from_secs(5), |n| !n.agent_ended.is_empty());
    assert_eq!(
        net.agent_ended,
        [("ring-1".to_string(), EndReason::Cancelled)]
    );
    assert_eq!(net.control.ended_by(), Some(EndedBy::Caller));
    let r = net.control.finish().expect("a transfer");
    assert_eq!(r.outcome, Some(TransferOutcome::CallerHungUp));
}

#[test]
fn a_caller_side_without_refer_makes_blind_transfer_try_the_next() {
    // The endpoint as a caller does not take REFERs: it refuses them, as many phones do.
    let mut net = Net::call(|_| {});
    net.escalate(&[
        (&ext("answer-1"), TransferMode::Blind),
        (&ext("answer-2"), TransferMode::Bridge),
    ]);
    net.run_until(Duration::from_secs(2), |n| !n.bridged.is_empty());
    let attempts = net.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(
        attempts[0].starts_with("transfer failed 4")
            || attempts[0].starts_with("transfer failed 5"),
        "{attempts:?}"
    );
}

#[test]
fn attended_transfer_refused_by_the_caller_side_falls_back_to_the_bridge() {
    let mut net = Net::call(|c| c.whisper = true);
    net.escalate(&[(&ext("answer-1"), TransferMode::Attended)]);
    net.run_until(Duration::from_secs(5), |n| !n.bridged.is_empty());
    let r = net.control.finish().expect("a transfer");
    assert_eq!(r.outcome, Some(TransferOutcome::Bridged));
    assert_eq!(r.mode, Some(TransferMode::Attended));
    assert!(r.refer_to.is_some_and(|to| to.contains("Replaces")));
    assert!(r.refer_status.is_some());
    assert_eq!(r.whisper.as_deref(), Some("billing, a refund"));
}

#[test]
fn the_bot_takes_the_caller_back_and_a_second_escalation_reaches_another_agent() {
    let mut net = Net::call(|c| c.after_agent_hangup = AfterAgent::Bot);
    net.escalate(&[(&ext("answer-1"), TransferMode::Bridge)]);
    net.run_until(Duration::from_secs(1), |n| !n.bridged.is_empty());
    let agent = *net.agent_calls.keys().next().expect("the agent was called");
    let now = net.now;
    net.agents.hangup(agent, now);
    net.run_until(Duration::from_secs(2), |n| n.resumed);
    assert!(
        net.caller_ended.is_none(),
        "the caller is still on the line"
    );
    net.escalate(&[(&ext("answer-2"), TransferMode::Bridge)]);
    net.run_until(Duration::from_secs(2), |n| n.bridged.len() == 2);
    let r = net.control.finish().expect("a transfer");
    assert_eq!(r.agent, Some(ext("answer-2")));
}

//! Every transfer path of the call-control core, in virtual time: a test clock, scripted
//! answers to the core's requests, no sockets and no sleeping.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::control::{
    CallControl, CallerPrompt, ControlConfig, LegError, LegId, OpId, Output, Phase, Playout,
};
use super::record::{CallEvent, EndedBy, TransferOutcome};
use crate::dialog::escalation::{Escalation, EscalationReason};
use crate::handover::transfer::{AfterAgent, Target, TransferConfig, TransferMode};
use crate::sip::endpoint::{CallHandle, EndReason, ReferProgress};

const IDLE: Playout = Playout {
    speaking: false,
    nearly_empty: true,
};
const ANNOUNCING: Playout = Playout {
    speaking: true,
    nearly_empty: false,
};

/// The core under test, its clock and what it asked for so far.
struct Harness {
    cc: CallControl,
    now: Instant,
    out: Vec<Output>,
    next_leg: u64,
}

fn config(f: impl FnOnce(&mut ControlConfig)) -> ControlConfig {
    let mut cfg = ControlConfig {
        call_id: "c1".into(),
        flow: "support".into(),
        transfer: TransferConfig {
            ring_timeout_s: 10,
            webhook_wait_ms: 0,
            ..TransferConfig::default()
        },
        webhook: false,
    };
    f(&mut cfg);
    cfg
}

fn target(uri: &str, mode: TransferMode) -> Target {
    Target {
        uri: uri.into(),
        mode,
    }
}

fn escalation() -> Escalation {
    Escalation {
        reason: EscalationReason::ExplicitRequest,
        detail: "asked for a person".into(),
        skill: "billing".into(),
        turn: 2,
    }
}

fn addr() -> SocketAddr {
    "127.0.0.1:5070".parse().unwrap()
}

impl Harness {
    fn new(cfg: ControlConfig) -> Harness {
        Harness {
            cc: CallControl::new(cfg),
            now: Instant::now(),
            out: Vec::new(),
            next_leg: 100,
        }
    }

    fn bridge_to(uris: &[&str]) -> Harness {
        let mut h = Harness::new(config(|_| {}));
        let targets: Vec<Target> = uris
            .iter()
            .map(|u| target(u, TransferMode::Bridge))
            .collect();
        h.escalate(&targets);
        h
    }

    fn escalate(&mut self, targets: &[Target]) {
        self.cc.escalate(
            self.now,
            SystemTime::now(),
            &escalation(),
            "the billing team".into(),
            targets,
        );
        self.drain();
    }

    /// Collects the outputs produced so far; returns the new ones.
    fn drain(&mut self) -> Vec<Output> {
        let mut new = Vec::new();
        while let Some(o) = self.cc.poll_output() {
            new.push(o);
        }
        self.out.extend(new.iter().cloned());
        new
    }

    fn advance(&mut self, by: Duration, playout: Playout) -> Vec<Output> {
        self.now += by;
        self.cc.handle_timeout(self.now, playout);
        self.drain()
    }

    /// The last request of each kind.
    fn last_resolve(&self) -> (OpId, String) {
        self.out
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::Resolve { op, uri } => Some((*op, uri.clone())),
                _ => None,
            })
            .expect("a lookup was asked for")
    }

    fn last_place(&self) -> (OpId, String) {
        self.out
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::PlaceCall { op, uri, .. } => Some((*op, uri.clone())),
                _ => None,
            })
            .expect("a call was placed")
    }

    fn last_refer(&self) -> (OpId, String, Option<CallHandle>) {
        self.out
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::Refer {
                    op, uri, replacing, ..
                } => Some((*op, uri.clone(), *replacing)),
                _ => None,
            })
            .expect("a REFER was asked for")
    }

    /// Resolves and places the pending extension; returns its ringing leg.
    fn ring(&mut self) -> CallHandle {
        let (op, _) = self.last_resolve();
        self.cc.resolved(self.now, op, Ok(vec![addr()]));
        self.drain();
        let (op, _) = self.last_place();
        self.next_leg += 1;
        let leg = CallHandle(self.next_leg);
        self.cc.placed(self.now, op, Ok(leg));
        self.drain();
        leg
    }

    /// The agent on `leg` answers and its media starts.
    fn answer(&mut self, leg: CallHandle) -> Vec<Output> {
        self.cc.agent_answered(self.now, leg);
        let mut new = self.drain();
        assert!(new.contains(&Output::StartAgentMedia(leg)), "{new:?}");
        self.cc.agent_media_started(self.now, leg, "PCMU");
        new.extend(self.drain());
        new
    }

    fn events(&self) -> Vec<&'static str> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Emit(e) => Some(e.kind()),
                _ => None,
            })
            .collect()
    }

    fn outcome(&mut self) -> Option<TransferOutcome> {
        self.cc.record().and_then(|r| r.outcome)
    }

    fn attempts(&mut self) -> Vec<String> {
        self.cc
            .finish()
            .map(|r| {
                r.attempts
                    .iter()
                    .map(|a| format!("{} {}", a.target, a.outcome))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Plays the hang-up tail out: the caller's BYE is asked for.
    fn play_out(&mut self) {
        for _ in 0..50 {
            self.advance(Duration::from_millis(20), IDLE);
            if self.cc.hangup_sent() {
                return;
            }
        }
        panic!("the call never hung up: {:?}", self.out);
    }
}

// ---- Bridge mode ----

#[test]
fn bridge_without_whisper_puts_through_once_the_announcement_is_out() {
    let mut h = Harness::bridge_to(&["sip:100@pbx"]);
    assert_eq!(h.events(), ["escalated"]);
    assert_eq!(h.cc.phase(), Phase::Escalating);
    assert!(h.cc.caller_waits());
    let leg = h.ring();
    assert_eq!(h.cc.phase(), Phase::RingingAgent);
    h.answer(leg);
    assert_eq!(h.events(), ["escalated", "agent_answered"]);
    // The agent hears the caller at once; the caller hears the announcement's end first.
    assert!(h.advance(Duration::from_millis(20), ANNOUNCING).is_empty());
    assert_eq!(h.cc.agent_listening(h.now), Some(leg));
    assert_eq!(h.cc.bridged_agent(), None);
    let new = h.advance(Duration::from_millis(500), IDLE);
    assert_eq!(new, [Output::Bridge(leg)]);
    assert_eq!(h.cc.bridged_agent(), Some(leg));
    assert_eq!(h.cc.phase(), Phase::Bridged);
    assert!(!h.cc.caller_waits());
    let r = h.cc.finish().unwrap();
    assert_eq!(r.outcome, Some(TransferOutcome::Bridged));
    assert_eq!(r.agent.as_deref(), Some("sip:100@pbx"));
    assert_eq!(r.mode, Some(TransferMode::Bridge));
    assert_eq!(r.answer_to_bridge_ms, Some(20.0));
    assert_eq!(r.answer_to_put_through_ms, Some(520.0));
    assert!(r.whisper.is_none());
}

#[test]
fn bridge_with_whisper_waits_for_the_whisper_to_end() {
    let mut h = Harness::new(config(|c| c.transfer.whisper = true));
    h.escalate(&[target("sip:100@pbx", TransferMode::Bridge)]);
    let leg = h.ring();
    let new = h.answer(leg);
    assert!(new.contains(&Output::Whisper(leg)), "{new:?}");
    // While the whisper is made, nobody is put through, and the agent does not hear the
    // caller yet.
    assert!(h.advance(Duration::from_millis(200), IDLE).is_empty());
    assert_eq!(h.cc.agent_listening(h.now), None);
    h.cc.whisper_ready(
        h.now,
        leg,
        Some(("Billing: a refund".into(), Duration::from_secs(2))),
    );
    assert!(h.advance(Duration::from_millis(1900), IDLE).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(100), IDLE),
        [Output::Bridge(leg)]
    );
    let r = h.cc.finish().unwrap();
    assert_eq!(r.whisper.as_deref(), Some("Billing: a refund"));
    assert_eq!(r.whisper_ms, Some(2200.0));
}

#[test]
fn a_whisper_that_cannot_be_made_does_not_hold_the_caller() {
    let mut h = Harness::new(config(|c| c.transfer.whisper = true));
    h.escalate(&[target("sip:100@pbx", TransferMode::Bridge)]);
    let leg = h.ring();
    h.answer(leg);
    h.cc.whisper_ready(h.now, leg, None);
    assert_eq!(
        h.advance(Duration::from_millis(20), IDLE),
        [Output::Bridge(leg)]
    );
    assert!(h.cc.finish().unwrap().whisper.is_none());
}

#[test]
fn the_context_headers_go_on_the_agent_invite() {
    let mut h = Harness::new(config(|c| {
        c.transfer.context_url_base = "https://gw.example/".into();
    }));
    h.escalate(&[target("sip:100@pbx", TransferMode::Bridge)]);
    let (op, _) = h.last_resolve();
    h.cc.resolved(h.now, op, Ok(vec![addr()]));
    let new = h.drain();
    let Output::PlaceCall {
        headers,
        from_display,
        from_user,
        addr: to,
        ..
    } = &new[0]
    else {
        panic!("{new:?}")
    };
    assert_eq!(*to, addr());
    assert_eq!(from_display, "Voicebot the billing team");
    assert_eq!(from_user, "voicebot");
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "X-Voicebot-Call-Id",
            "X-Voicebot-Team",
            "X-Voicebot-Flow",
            "User-to-User",
            "X-Voicebot-Context-Url"
        ]
    );
    assert!(headers.contains(&(
        "X-Voicebot-Context-Url".into(),
        "https://gw.example/calls/c1/context".into()
    )));
}

// ---- The hunt ----

#[test]
fn busy_then_decline_then_answer_along_the_hunt_list() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx", "sip:3@pbx"]);
    let first = h.ring();
    h.cc.agent_ended(h.now, first, &EndReason::Refused(486));
    h.drain();
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
    let second = h.ring();
    h.cc.agent_ended(h.now, second, &EndReason::Refused(603));
    h.drain();
    let third = h.ring();
    h.answer(third);
    h.advance(Duration::from_millis(20), IDLE);
    assert_eq!(h.cc.bridged_agent(), Some(third));
    assert_eq!(
        h.attempts(),
        ["sip:1@pbx refused 486", "sip:2@pbx refused 603"]
    );
}

#[test]
fn an_extension_that_rings_too_long_is_cancelled_and_the_next_rings() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let first = h.ring();
    assert!(h.advance(Duration::from_secs(9), IDLE).is_empty());
    assert_eq!(h.cc.poll_timeout(), Some(h.now + Duration::from_secs(1)));
    let new = h.advance(Duration::from_secs(1), IDLE);
    assert_eq!(new, [Output::HangUp(LegId::Agent(first))]);
    // Cancelled once only.
    assert!(h.advance(Duration::from_secs(1), IDLE).is_empty());
    h.cc.agent_ended(h.now, first, &EndReason::Cancelled);
    h.drain();
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
    assert_eq!(h.attempts(), ["sip:1@pbx no answer"]);
}

#[test]
fn a_leg_without_any_final_response_counts_as_no_answer() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let first = h.ring();
    h.cc.agent_ended(h.now, first, &EndReason::NoResponse);
    h.drain();
    assert_eq!(h.attempts(), ["sip:1@pbx no answer"]);
}

#[test]
fn nobody_answers_apology_callback_event_then_hang_up() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let first = h.ring();
    h.cc.agent_ended(h.now, first, &EndReason::Refused(486));
    h.drain();
    let second = h.ring();
    h.cc.agent_ended(h.now, second, &EndReason::Refused(480));
    let new = h.drain();
    assert!(
        new.contains(&Output::SayToCaller(CallerPrompt::TransferFailed {
            skill: "billing".into()
        })),
        "{new:?}"
    );
    let Some(Output::Emit(CallEvent::CallbackRequested {
        skill, attempts, ..
    })) = new.iter().find(|o| matches!(o, Output::Emit(_)))
    else {
        panic!("{new:?}")
    };
    assert_eq!(skill, "billing");
    assert_eq!(attempts.len(), 2);
    assert!(!h.cc.caller_waits(), "no hold tone over the apology");
    // No hang-up while the apology is being made or spoken.
    assert!(h.advance(Duration::from_secs(1), IDLE).is_empty());
    h.cc.prompt_queued();
    assert!(h.advance(Duration::from_secs(3), ANNOUNCING).is_empty());
    assert!(h.advance(Duration::from_millis(20), IDLE).is_empty());
    assert!(h.advance(Duration::from_millis(380), IDLE).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(20), IDLE),
        [Output::HangUp(LegId::Caller)]
    );
    assert_eq!(h.cc.ended_by(), Some(EndedBy::Bot));
    assert_eq!(h.outcome(), Some(TransferOutcome::Callback));
}

#[test]
fn an_unresolvable_host_is_skipped() {
    let mut h = Harness::bridge_to(&["sip:1@nowhere.invalid", "sip:2@pbx"]);
    let (op, _) = h.last_resolve();
    h.cc.resolved(
        h.now,
        op,
        Err(LegError::Lookup {
            host: "nowhere.invalid".into(),
            why: "not found".into(),
        }),
    );
    h.drain();
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
    assert_eq!(
        h.attempts(),
        ["sip:1@nowhere.invalid failed: cannot resolve nowhere.invalid: not found"]
    );
}

#[test]
fn only_unresolvable_hosts_mean_a_callback() {
    let mut h = Harness::bridge_to(&["sip:1@nowhere.invalid"]);
    let (op, _) = h.last_resolve();
    h.cc.resolved(
        h.now,
        op,
        Err(LegError::LookupTimeout {
            host: "nowhere.invalid".into(),
            secs: 2,
        }),
    );
    h.drain();
    assert_eq!(h.outcome(), Some(TransferOutcome::Callback));
    assert!(h.cc.record().unwrap().decision_to_invite_ms.is_none());
}

#[test]
fn a_call_that_cannot_be_placed_is_skipped() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let (op, _) = h.last_resolve();
    h.cc.resolved(h.now, op, Ok(vec![addr()]));
    h.drain();
    let (op, _) = h.last_place();
    h.cc.placed(h.now, op, Err(LegError::NoPort));
    h.drain();
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
}

#[test]
fn agent_media_that_cannot_start_ends_that_leg_and_tries_the_next() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let first = h.ring();
    h.cc.agent_answered(h.now, first);
    h.drain();
    h.cc.agent_media_failed(h.now, first, LegError::Media("codec: unsupported".into()));
    let new = h.drain();
    assert_eq!(new[0], Output::HangUp(LegId::Agent(first)));
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
    assert!(!h.events().contains(&"agent_answered"));
}

#[test]
fn an_agent_who_hangs_up_before_being_put_through_makes_way_for_the_next() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let first = h.ring();
    h.answer(first);
    h.cc.agent_ended(h.now, first, &EndReason::RemoteBye);
    let new = h.drain();
    assert_eq!(new[0], Output::DropAgentMedia(first));
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
}

#[test]
fn an_answer_from_a_leg_nobody_waits_for_is_hung_up() {
    let mut h = Harness::bridge_to(&["sip:1@pbx"]);
    let leg = h.ring();
    h.cc.agent_answered(h.now, CallHandle(999));
    assert_eq!(h.drain(), [Output::HangUp(LegId::Agent(CallHandle(999)))]);
    // The real leg still can answer.
    h.answer(leg);
    assert_eq!(
        h.advance(Duration::from_millis(20), IDLE),
        [Output::Bridge(leg)]
    );
}

#[test]
fn a_late_lookup_answer_is_ignored() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let (stale, _) = h.last_resolve();
    h.cc.resolved(h.now, stale, Err(LegError::NoAddress("pbx".into())));
    h.drain();
    // The first lookup answers again, late: the second is still the one waited for.
    h.cc.resolved(h.now, stale, Ok(vec![addr()]));
    assert!(h.drain().is_empty());
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
}

// ---- Blind transfer ----

#[test]
fn blind_refer_accepted_and_notified_200_leaves_the_call() {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[target("sip:1@pbx", TransferMode::Blind)]);
    let (op, uri, replacing) = h.last_refer();
    assert_eq!((uri.as_str(), replacing), ("sip:1@pbx", None));
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx?X-Voicebot-Call-Id=c1>".into()));
    h.cc.refer_progress(h.now, ReferProgress::Accepted);
    h.cc.refer_progress(
        h.now,
        ReferProgress::Notified {
            code: 100,
            last: false,
        },
    );
    assert!(h.drain().is_empty());
    h.cc.refer_progress(
        h.now,
        ReferProgress::Notified {
            code: 200,
            last: true,
        },
    );
    let new = h.drain();
    assert!(new.contains(&Output::HangUp(LegId::Caller)), "{new:?}");
    assert_eq!(h.events(), ["escalated", "transferred"]);
    assert_eq!(h.cc.ended_by(), Some(EndedBy::Transferred));
    assert_eq!(h.cc.phase(), Phase::Transferred);
    let r = h.cc.finish().unwrap();
    assert_eq!(r.outcome, Some(TransferOutcome::Transferred));
    assert_eq!(r.refer_status, Some(200));
    assert_eq!(r.mode, Some(TransferMode::Blind));
    assert!(r.refer_to.unwrap().contains("X-Voicebot-Call-Id"));
}

#[test]
fn blind_refer_rejected_tries_the_next_extension() {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[
        target("sip:1@pbx", TransferMode::Blind),
        target("sip:2@pbx", TransferMode::Bridge),
    ]);
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx>".into()));
    h.cc.refer_progress(h.now, ReferProgress::Refused(405));
    h.drain();
    assert_eq!(h.last_resolve().1, "sip:2@pbx");
    assert_eq!(h.attempts(), ["sip:1@pbx transfer failed 405"]);
}

#[test]
fn notify_failure_then_the_next_extension() {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[
        target("sip:1@pbx", TransferMode::Blind),
        target("sip:2@pbx", TransferMode::Blind),
    ]);
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx>".into()));
    h.cc.refer_progress(
        h.now,
        ReferProgress::Notified {
            code: 486,
            last: true,
        },
    );
    h.drain();
    assert_eq!(h.last_refer().1, "sip:2@pbx");
    assert_eq!(h.cc.record().unwrap().refer_status, Some(486));
}

#[test]
fn a_subscription_that_ends_without_a_final_status_is_a_failure() {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[target("sip:1@pbx", TransferMode::Blind)]);
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx>".into()));
    h.cc.refer_progress(
        h.now,
        ReferProgress::Notified {
            code: 180,
            last: true,
        },
    );
    h.drain();
    assert_eq!(h.outcome(), Some(TransferOutcome::Callback));
}

#[test]
fn a_refer_that_cannot_be_sent_tries_the_next() {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[
        target("sip:1@pbx", TransferMode::Blind),
        target("sip:2@pbx", TransferMode::Blind),
    ]);
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Err(LegError::NotTransferable));
    h.drain();
    assert_eq!(h.last_refer().1, "sip:2@pbx");
}

#[test]
fn a_caller_side_that_never_reports_fails_the_transfer_after_the_grace() {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[target("sip:1@pbx", TransferMode::Blind)]);
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx>".into()));
    h.cc.refer_progress(h.now, ReferProgress::Accepted);
    assert!(h.advance(Duration::from_secs(24), IDLE).is_empty());
    h.advance(Duration::from_secs(1), IDLE);
    assert_eq!(h.cc.record().unwrap().refer_status, Some(408));
    assert_eq!(h.outcome(), Some(TransferOutcome::Callback));
}

// ---- Attended transfer ----

fn attended() -> (Harness, CallHandle) {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[target("sip:1@pbx", TransferMode::Attended)]);
    let leg = h.ring();
    h.answer(leg);
    // The consultation: the agent does not hear the caller.
    assert_eq!(h.cc.agent_listening(h.now), None);
    h.advance(Duration::from_millis(20), IDLE);
    let (_, uri, replacing) = h.last_refer();
    assert_eq!((uri.as_str(), replacing), ("sip:1@pbx", Some(leg)));
    (h, leg)
}

#[test]
fn attended_with_replaces_completes_and_ends_the_consultation() {
    let (mut h, leg) = attended();
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx?Replaces=x>".into()));
    h.cc.refer_progress(
        h.now,
        ReferProgress::Notified {
            code: 200,
            last: true,
        },
    );
    let new = h.drain();
    assert!(new.contains(&Output::DropAgentMedia(leg)), "{new:?}");
    assert!(new.contains(&Output::HangUp(LegId::Agent(leg))), "{new:?}");
    assert!(new.contains(&Output::HangUp(LegId::Caller)), "{new:?}");
    let r = h.cc.finish().unwrap();
    assert_eq!(r.outcome, Some(TransferOutcome::Transferred));
    assert_eq!(r.mode, Some(TransferMode::Attended));
}

#[test]
fn attended_refused_falls_back_to_the_bridge() {
    let (mut h, leg) = attended();
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx?Replaces=x>".into()));
    h.cc.refer_progress(h.now, ReferProgress::Refused(501));
    assert_eq!(h.drain(), [Output::Bridge(leg)]);
    assert_eq!(h.outcome(), Some(TransferOutcome::Bridged));
    assert_eq!(h.cc.record().unwrap().refer_status, Some(501));
}

#[test]
fn attended_that_cannot_be_asked_bridges_at_once() {
    let (mut h, leg) = attended();
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Err(LegError::LegGone));
    assert_eq!(h.drain(), [Output::Bridge(leg)]);
}

#[test]
fn attended_whose_consultation_ends_first_waits_for_the_notify() {
    let (mut h, leg) = attended();
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx?Replaces=x>".into()));
    h.cc.agent_ended(h.now, leg, &EndReason::RemoteBye);
    assert_eq!(h.drain(), [Output::DropAgentMedia(leg)]);
    h.cc.refer_progress(
        h.now,
        ReferProgress::Notified {
            code: 200,
            last: true,
        },
    );
    h.drain();
    assert_eq!(h.outcome(), Some(TransferOutcome::Transferred));
    // And when it fails without the agent on the line, the hunt goes on (here: nobody left).
    let (mut h, leg) = attended();
    let (op, ..) = h.last_refer();
    h.cc.refer_sent(h.now, op, Ok("<sip:1@pbx?Replaces=x>".into()));
    h.cc.agent_ended(h.now, leg, &EndReason::RemoteBye);
    h.cc.refer_progress(
        h.now,
        ReferProgress::Notified {
            code: 503,
            last: true,
        },
    );
    h.drain();
    assert_eq!(h.outcome(), Some(TransferOutcome::Callback));
}

// ---- The agent hangs up ----

fn bridged(after: AfterAgent) -> (Harness, CallHandle) {
    let mut h = Harness::new(config(|c| c.transfer.after_agent_hangup = after));
    h.escalate(&[target("sip:1@pbx", TransferMode::Bridge)]);
    let leg = h.ring();
    h.answer(leg);
    h.advance(Duration::from_millis(20), IDLE);
    assert_eq!(h.cc.bridged_agent(), Some(leg));
    (h, leg)
}

#[test]
fn agent_hangs_up_and_the_call_ends() {
    let (mut h, leg) = bridged(AfterAgent::End);
    h.cc.agent_ended(h.now, leg, &EndReason::RemoteBye);
    assert_eq!(
        h.drain(),
        [Output::DropAgentMedia(leg), Output::HangUp(LegId::Caller)]
    );
    assert_eq!(h.cc.ended_by(), Some(EndedBy::Agent));
    assert_eq!(h.outcome(), Some(TransferOutcome::Bridged));
}

#[test]
fn agent_hangs_up_and_the_bot_takes_the_caller_back_then_escalates_again() {
    let (mut h, leg) = bridged(AfterAgent::Bot);
    h.cc.agent_ended(h.now, leg, &EndReason::RemoteBye);
    let new = h.drain();
    assert_eq!(new[0], Output::DropAgentMedia(leg));
    assert!(new.contains(&Output::ResumeBot), "{new:?}");
    assert_eq!(
        h.events(),
        ["escalated", "agent_answered", "returned_to_bot"]
    );
    assert!(h.cc.bot_has_caller());
    assert_eq!(h.cc.phase(), Phase::Bot);
    assert!(!h.cc.caller_waits());
    assert_eq!(h.outcome(), Some(TransferOutcome::ReturnedToBot));
    // A second escalation starts a second transfer.
    h.escalate(&[target("sip:2@pbx", TransferMode::Bridge)]);
    assert_eq!(h.events().iter().filter(|e| **e == "escalated").count(), 2);
    let second = h.ring();
    h.answer(second);
    h.advance(Duration::from_millis(20), IDLE);
    assert_eq!(h.cc.bridged_agent(), Some(second));
    let r = h.cc.finish().unwrap();
    assert_eq!(r.agent.as_deref(), Some("sip:2@pbx"));
}

#[test]
fn a_second_escalation_during_a_transfer_changes_nothing() {
    let mut h = Harness::bridge_to(&["sip:1@pbx"]);
    let before = h.out.len();
    h.escalate(&[target("sip:2@pbx", TransferMode::Bridge)]);
    assert_eq!(h.out.len(), before);
}

// ---- The caller hangs up ----

#[test]
fn caller_hangs_up_while_the_agent_rings() {
    let mut h = Harness::bridge_to(&["sip:1@pbx"]);
    let leg = h.ring();
    h.cc.caller_ended(&EndReason::RemoteBye);
    assert_eq!(h.drain(), [Output::HangUp(LegId::Agent(leg))]);
    assert!(h.cc.is_over());
    assert_eq!(h.cc.ended_by(), Some(EndedBy::Caller));
    assert_eq!(
        h.cc.finish().unwrap().outcome,
        Some(TransferOutcome::CallerHungUp)
    );
    // The agent answering now is ended, not connected.
    h.cc.agent_answered(h.now, leg);
    assert_eq!(h.drain(), [Output::HangUp(LegId::Agent(leg))]);
}

#[test]
fn the_hunt_stops_when_the_caller_has_left() {
    let mut h = Harness::bridge_to(&["sip:1@pbx", "sip:2@pbx"]);
    let leg = h.ring();
    h.cc.caller_ended(&EndReason::RemoteBye);
    h.drain();
    // The CANCEL we sent for the caller completes: no next extension, no callback.
    h.cc.agent_ended(h.now, leg, &EndReason::Cancelled);
    assert!(h.drain().is_empty());
    assert_eq!(h.events(), ["escalated"]);
    assert_eq!(h.outcome(), Some(TransferOutcome::CallerHungUp));
}

#[test]
fn a_leg_placed_after_the_caller_left_is_hung_up() {
    let mut h = Harness::bridge_to(&["sip:1@pbx"]);
    let (op, _) = h.last_resolve();
    h.cc.resolved(h.now, op, Ok(vec![addr()]));
    h.drain();
    let (op, _) = h.last_place();
    h.cc.caller_ended(&EndReason::RemoteBye);
    h.cc.placed(h.now, op, Ok(CallHandle(7)));
    assert_eq!(h.drain(), [Output::HangUp(LegId::Agent(CallHandle(7)))]);
}

#[test]
fn caller_hangs_up_during_the_apology() {
    let mut h = Harness::bridge_to(&["sip:1@pbx"]);
    let leg = h.ring();
    h.cc.agent_ended(h.now, leg, &EndReason::Refused(486));
    h.drain();
    h.cc.caller_ended(&EndReason::RemoteBye);
    h.cc.prompt_queued();
    assert!(h.advance(Duration::from_secs(1), IDLE).is_empty());
    assert_eq!(h.cc.ended_by(), Some(EndedBy::Caller));
    assert_eq!(h.outcome(), Some(TransferOutcome::Callback));
}

// ---- The webhook gate ----

fn gated() -> Harness {
    let mut h = Harness::new(config(|c| {
        c.webhook = true;
        c.transfer.webhook_wait_ms = 300;
    }));
    h.escalate(&[target("sip:1@pbx", TransferMode::Bridge)]);
    assert_eq!(h.events(), ["escalated"]);
    assert!(
        !h.out.iter().any(|o| matches!(o, Output::Resolve { .. })),
        "nothing rings before the webhook confirms"
    );
    h
}

#[test]
fn a_fast_webhook_lets_the_agent_call_go_at_once() {
    let mut h = gated();
    h.now += Duration::from_millis(12);
    h.cc.webhook_settled(h.now, true);
    h.drain();
    h.ring();
    let r = h.cc.record().unwrap();
    assert_eq!(r.webhook_before_invite, Some(true));
    assert_eq!(r.decision_to_invite_ms, Some(12.0));
}

#[test]
fn a_slow_webhook_does_not_hold_the_agent_call_past_the_wait() {
    let mut h = gated();
    assert!(h.advance(Duration::from_millis(299), IDLE).is_empty());
    let new = h.advance(Duration::from_millis(1), IDLE);
    assert!(matches!(new[0], Output::Resolve { .. }), "{new:?}");
    // The confirmation arriving later changes nothing.
    h.cc.webhook_settled(h.now, true);
    assert!(h.drain().is_empty());
    assert_eq!(h.cc.record().unwrap().webhook_before_invite, Some(false));
}

#[test]
fn a_dead_webhook_that_cannot_queue_does_not_wait() {
    let mut h = gated();
    h.cc.webhook_settled(h.now, false);
    let new = h.drain();
    assert!(matches!(new[0], Output::Resolve { .. }), "{new:?}");
    assert_eq!(h.cc.record().unwrap().webhook_before_invite, Some(false));
}

#[test]
fn event_ids_are_recorded() {
    let mut h = gated();
    h.cc.event_queued("ev-1".into());
    assert_eq!(h.cc.record().unwrap().webhook_events, ["ev-1"]);
}

// ---- Ending without a transfer ----

#[test]
fn a_team_without_extensions_ends_the_call_after_the_announcement() {
    let mut h = Harness::new(config(|_| {}));
    h.escalate(&[]);
    assert!(h.out.is_empty());
    assert!(h.cc.record().is_none());
    assert!(h.advance(Duration::from_secs(2), ANNOUNCING).is_empty());
    h.play_out();
    assert_eq!(h.cc.ended_by(), Some(EndedBy::Bot));
}

#[test]
fn goodbye_hangs_up_after_the_tail_once() {
    let mut h = Harness::new(config(|_| {}));
    h.cc.bot_finished();
    h.play_out();
    let byes = h
        .out
        .iter()
        .filter(|o| **o == Output::HangUp(LegId::Caller))
        .count();
    assert_eq!(byes, 1);
    h.advance(Duration::from_secs(1), IDLE);
    assert_eq!(
        h.out
            .iter()
            .filter(|o| **o == Output::HangUp(LegId::Caller))
            .count(),
        1
    );
}

#[test]
fn the_first_reason_to_end_is_kept() {
    let mut h = Harness::new(config(|_| {}));
    h.cc.hang_up(EndedBy::NoRtpTimeout);
    h.cc.hang_up(EndedBy::Shutdown);
    h.cc.caller_ended(&EndReason::LocalHangup);
    assert_eq!(h.drain(), [Output::HangUp(LegId::Caller)]);
    assert_eq!(h.cc.ended_by(), Some(EndedBy::NoRtpTimeout));
    assert!(h.cc.finish().is_none());
}

#[test]
fn shutdown_during_a_bridge_hangs_up_the_caller() {
    let (mut h, _) = bridged(AfterAgent::End);
    h.cc.hang_up(EndedBy::Shutdown);
    assert_eq!(h.drain(), [Output::HangUp(LegId::Caller)]);
    h.cc.caller_ended(&EndReason::LocalHangup);
    assert_eq!(h.cc.ended_by(), Some(EndedBy::Shutdown));
    assert_eq!(h.outcome(), Some(TransferOutcome::Bridged));
}

// ---- Failover over an extension's addresses (RFC 3263) ----

fn addr_n(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 5060))
}

impl Harness {
    /// Resolves the pending extension to `addrs`; returns the address its first INVITE goes to.
    fn resolve_to(&mut self, addrs: &[SocketAddr]) -> SocketAddr {
        let (op, _) = self.last_resolve();
        self.cc.resolved(self.now, op, Ok(addrs.to_vec()));
        self.drain();
        self.last_place_addr()
    }

    fn last_place_addr(&self) -> SocketAddr {
        self.out
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::PlaceCall { addr, .. } => Some(*addr),
                _ => None,
            })
            .expect("a call was placed")
    }

    /// The INVITE asked for last went out: its leg.
    fn placed_leg(&mut self) -> CallHandle {
        let (op, _) = self.last_place();
        self.next_leg += 1;
        let leg = CallHandle(self.next_leg);
        self.cc.placed(self.now, op, Ok(leg));
        self.drain();
        leg
    }

    fn places(&self) -> usize {
        self.out
            .iter()
            .filter(|o| matches!(o, Output::PlaceCall { .. }))
            .count()
    }

    fn attempts_with_addresses(&mut self) -> Vec<String> {
        self.cc
            .finish()
            .map(|r| {
                r.attempts
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {} {}",
                            a.target,
                            a.address.as_deref().unwrap_or("-"),
                            a.outcome
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn a_503_fails_over_to_the_next_address_of_the_same_extension() {
    let mut h = Harness::bridge_to(&["sip:2001@agents.test", "sip:2002@pbx"]);
    assert_eq!(h.resolve_to(&[addr_n(2), addr_n(3)]), addr_n(2));
    let first = h.placed_leg();
    h.cc.agent_ended(h.now, first, &EndReason::Refused(503));
    let new = h.drain();
    assert!(
        matches!(&new[..], [Output::PlaceCall { uri, addr, .. }] if uri == "sip:2001@agents.test" && *addr == addr_n(3)),
        "{new:?}"
    );
    let second = h.placed_leg();
    h.answer(second);
    assert_eq!(
        h.advance(Duration::from_millis(20), IDLE),
        [Output::Bridge(second)]
    );
    assert_eq!(
        h.attempts_with_addresses(),
        ["sip:2001@agents.test 127.0.0.2:5060 failed: 503 Service Unavailable; failed over to 127.0.0.3:5060"]
    );
    assert_eq!(
        h.cc.finish().unwrap().agent.as_deref(),
        Some("sip:2001@agents.test")
    );
}

#[test]
fn other_refusals_end_the_extensions_turn() {
    let mut h = Harness::bridge_to(&["sip:2001@agents.test", "sip:2002@pbx"]);
    h.resolve_to(&[addr_n(2), addr_n(3)]);
    let first = h.placed_leg();
    h.cc.agent_ended(h.now, first, &EndReason::Refused(486));
    h.drain();
    // No INVITE to the second address: the hunt moves on to the next extension.
    assert_eq!(h.places(), 1);
    assert_eq!(h.last_resolve().1, "sip:2002@pbx");
    assert_eq!(
        h.attempts_with_addresses(),
        ["sip:2001@agents.test 127.0.0.2:5060 refused 486"]
    );
}

#[test]
fn a_503_from_the_last_address_moves_the_hunt_on() {
    let mut h = Harness::bridge_to(&["sip:2001@agents.test", "sip:2002@pbx"]);
    h.resolve_to(&[addr_n(2), addr_n(3)]);
    let first = h.placed_leg();
    h.cc.agent_ended(h.now, first, &EndReason::Refused(503));
    h.drain();
    let second = h.placed_leg();
    h.cc.agent_ended(h.now, second, &EndReason::Refused(503));
    h.drain();
    assert_eq!(h.last_resolve().1, "sip:2002@pbx");
    assert_eq!(h.attempts_with_addresses().len(), 2);
}

#[test]
fn a_silent_address_is_left_after_failover_after_ms() {
    let mut h = Harness::new(config(|c| c.transfer.failover_after_ms = 2000));
    h.escalate(&[target("sip:2001@agents.test", TransferMode::Bridge)]);
    h.resolve_to(&[addr_n(2), addr_n(3)]);
    let first = h.placed_leg();
    assert_eq!(h.cc.poll_timeout(), Some(h.now + Duration::from_secs(2)));
    assert!(h.advance(Duration::from_millis(1980), IDLE).is_empty());
    let new = h.advance(Duration::from_millis(20), IDLE);
    assert!(
        matches!(&new[..], [Output::HangUp(LegId::Agent(l)), Output::PlaceCall { addr, .. }] if *l == first && *addr == addr_n(3)),
        "{new:?}"
    );
    let second = h.placed_leg();
    // The abandoned leg's end (timer B, later) changes nothing.
    h.cc.agent_ended(h.now, first, &EndReason::NoResponse);
    assert!(h.drain().is_empty());
    // The ring timeout still counts from the first INVITE: 10 s in all.
    assert_eq!(h.cc.poll_timeout(), Some(h.now + Duration::from_secs(8)));
    h.cc.agent_progress(second, 180);
    let new = h.advance(Duration::from_secs(8), IDLE);
    assert_eq!(new, [Output::HangUp(LegId::Agent(second))]);
    h.cc.agent_ended(h.now, second, &EndReason::Cancelled);
    h.drain();
    assert_eq!(h.outcome(), Some(TransferOutcome::Callback));
    assert_eq!(
        h.attempts_with_addresses(),
        [
            "sip:2001@agents.test 127.0.0.2:5060 failed: no response within 2000 ms; failed over to 127.0.0.3:5060",
            "sip:2001@agents.test 127.0.0.3:5060 no answer"
        ]
    );
}

#[test]
fn any_response_even_100_trying_stops_the_silence_timer() {
    let mut h = Harness::new(config(|c| c.transfer.failover_after_ms = 2000));
    h.escalate(&[target("sip:2001@agents.test", TransferMode::Bridge)]);
    h.resolve_to(&[addr_n(2), addr_n(3)]);
    let first = h.placed_leg();
    h.cc.agent_progress(first, 100);
    assert_eq!(h.cc.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    assert!(h.advance(Duration::from_secs(3), IDLE).is_empty());
    assert_eq!(h.places(), 1);
    // A transaction timeout still fails over.
    h.cc.agent_ended(h.now, first, &EndReason::NoResponse);
    let new = h.drain();
    assert!(
        matches!(&new[..], [Output::PlaceCall { addr, .. }] if *addr == addr_n(3)),
        "{new:?}"
    );
}

#[test]
fn no_failover_once_the_ring_time_is_over() {
    let mut h = Harness::new(config(|c| c.transfer.failover_after_ms = 0));
    h.escalate(&[
        target("sip:2001@agents.test", TransferMode::Bridge),
        target("sip:2002@pbx", TransferMode::Bridge),
    ]);
    h.resolve_to(&[addr_n(2), addr_n(3)]);
    let first = h.placed_leg();
    // Failover off: silence only ends at the ring timeout.
    assert_eq!(h.cc.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    let new = h.advance(Duration::from_secs(10), IDLE);
    assert_eq!(new, [Output::HangUp(LegId::Agent(first))]);
    h.cc.agent_ended(h.now, first, &EndReason::NoResponse);
    h.drain();
    assert_eq!(h.places(), 1);
    assert_eq!(h.last_resolve().1, "sip:2002@pbx");
}

#[test]
fn an_empty_address_list_skips_the_extension() {
    let mut h = Harness::bridge_to(&["sip:2001@agents.test", "sip:2002@pbx"]);
    h.resolve_to_nothing();
    assert_eq!(h.last_resolve().1, "sip:2002@pbx");
}

impl Harness {
    fn resolve_to_nothing(&mut self) {
        let (op, _) = self.last_resolve();
        self.cc.resolved(self.now, op, Ok(Vec::new()));
        self.drain();
    }
}

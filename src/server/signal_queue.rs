//! The queue from the signalling task to one call task. Signalling must never wait for a
//! call (one slow call would stall every other call's SIP), and a call must never lose the
//! news that decides its fate (the caller hung up, the agent answered, the transfer's
//! result), however far behind it is. So the queue is unbounded for those events, which SIP
//! itself bounds (a dialog ends once, each agent leg answers and ends once); only what a
//! caller can repeat at will (DTMF sent as INFO, ACK news) is capped per call, and what goes
//! past the cap is dropped with a warning.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::call::{AgentEvent, CallSignal};

/// Repeatable events a call may have waiting before more are dropped.
pub const REPEATABLE_CAP: usize = 64;

/// Whether a caller can send this again and again at will.
fn repeatable(signal: &CallSignal) -> bool {
    matches!(
        signal,
        CallSignal::Dtmf(_) | CallSignal::Confirmed | CallSignal::Agent(AgentEvent::Progress(..))
    )
}

/// The signalling side of one call's queue.
#[derive(Debug, Clone)]
pub struct SignalSender {
    tx: mpsc::UnboundedSender<CallSignal>,
    repeatable_waiting: Arc<AtomicUsize>,
}

/// The call task's side.
#[derive(Debug)]
pub struct SignalReceiver {
    rx: mpsc::UnboundedReceiver<CallSignal>,
    repeatable_waiting: Arc<AtomicUsize>,
}

/// A new queue for one call.
pub fn signal_queue() -> (SignalSender, SignalReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    (
        SignalSender {
            tx,
            repeatable_waiting: Arc::clone(&waiting),
        },
        SignalReceiver {
            rx,
            repeatable_waiting: waiting,
        },
    )
}

/// Why a signal did not reach its call.
#[derive(Debug, PartialEq, Eq)]
pub enum NotQueued {
    /// The call task is gone.
    Closed,
    /// A repeatable event over the per-call cap.
    OverCap,
}

impl SignalSender {
    /// Queues `signal` without waiting.
    pub fn send(&self, signal: CallSignal) -> Result<(), NotQueued> {
        let counted = repeatable(&signal);
        if counted {
            let before = self.repeatable_waiting.fetch_add(1, Ordering::AcqRel);
            if before >= REPEATABLE_CAP {
                self.repeatable_waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(NotQueued::OverCap);
            }
        }
        self.tx.send(signal).map_err(|_| {
            if counted {
                self.repeatable_waiting.fetch_sub(1, Ordering::AcqRel);
            }
            NotQueued::Closed
        })
    }
}

impl SignalReceiver {
    /// The next signal; None once signalling dropped the call.
    pub async fn recv(&mut self) -> Option<CallSignal> {
        let signal = self.rx.recv().await?;
        if repeatable(&signal) {
            self.repeatable_waiting.fetch_sub(1, Ordering::AcqRel);
        }
        Some(signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::endpoint::{CallHandle, EndReason, ReferProgress};

    fn negotiated() -> crate::sip::sdp::Negotiated {
        crate::sip::sdp::Negotiated {
            codec: crate::media::codec::Codec::Pcmu,
            payload_type: 0,
            telephone_event_pt: None,
            remote_rtp: "127.0.0.1:4000".parse().unwrap(),
            direction: crate::sip::sdp::Direction::SendRecv,
            ptime_ms: 20,
            on_hold: false,
            srtp: None,
        }
    }

    /// A call task that does not read for a while (a stalled task) loses none of the events
    /// that decide the call, and signalling never waits for it.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_call_task_loses_no_control_event() {
        let (tx, mut rx) = signal_queue();
        let agent = CallHandle(9);
        let mut over_cap = 0;
        for i in 0..1000u32 {
            // A flood of key presses, with the decisive news in between.
            if tx.send(CallSignal::Dtmf('5')) == Err(NotQueued::OverCap) {
                over_cap += 1;
            }
            match i {
                100 => tx
                    .send(CallSignal::Agent(AgentEvent::Answered(agent, negotiated())))
                    .unwrap(),
                200 => tx
                    .send(CallSignal::Refer(ReferProgress::Notified {
                        code: 200,
                        last: true,
                    }))
                    .unwrap(),
                300 => tx
                    .send(CallSignal::Agent(AgentEvent::Ended(
                        agent,
                        EndReason::RemoteBye,
                    )))
                    .unwrap(),
                _ => {}
            }
        }
        tx.send(CallSignal::Ended(EndReason::RemoteBye)).unwrap();
        assert_eq!(over_cap, 1000 - REPEATABLE_CAP);
        drop(tx);
        let mut seen = Vec::new();
        while let Some(signal) = rx.recv().await {
            seen.push(signal);
        }
        let decisive: Vec<String> = seen
            .iter()
            .filter(|s| !matches!(s, CallSignal::Dtmf(_)))
            .map(|s| format!("{s:?}").chars().take(14).collect())
            .collect();
        assert_eq!(
            decisive,
            [
                "Agent(Answered",
                "Refer(Notified",
                "Agent(Ended(Ca",
                "Ended(RemoteBy"
            ]
        );
        assert_eq!(seen.len(), REPEATABLE_CAP + 4);
        // Once the task catches up, key presses flow again.
        let (tx, mut rx) = signal_queue();
        for _ in 0..REPEATABLE_CAP {
            tx.send(CallSignal::Dtmf('1')).unwrap();
        }
        assert_eq!(tx.send(CallSignal::Dtmf('2')), Err(NotQueued::OverCap));
        rx.recv().await.unwrap();
        assert_eq!(tx.send(CallSignal::Dtmf('3')), Ok(()));
    }

    #[test]
    fn a_gone_call_is_reported() {
        let (tx, rx) = signal_queue();
        drop(rx);
        assert_eq!(
            tx.send(CallSignal::Ended(EndReason::RemoteBye)),
            Err(NotQueued::Closed)
        );
        assert_eq!(tx.send(CallSignal::Dtmf('1')), Err(NotQueued::Closed));
        assert_eq!(tx.repeatable_waiting.load(Ordering::Acquire), 0);
    }
}

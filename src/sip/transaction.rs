//! SIP transactions (RFC 3261 section 17), sans-IO: the retransmission and timeout rules for
//! the server side of INVITE and non-INVITE requests, the client side of the non-INVITE
//! requests the gateway sends (BYE, CANCEL), and the client side of its INVITEs (calling an
//! agent for a warm transfer). Each transaction is a small state machine fed with
//! `Instant`s; it says when it wants to be woken ([`next_timer`]) and what to (re)send.
//!
//! Over reliable transports (TCP) nothing is retransmitted and the "wait" timers (I, J, K) are
//! zero, as section 17 says.
//!
//! [`next_timer`]: ServerTransaction::next_timer

use std::time::{Duration, Instant};

/// RTT estimate (RFC 3261 section 17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Longest retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Longest time a message stays in the network.
pub const T4: Duration = Duration::from_secs(5);

/// 64*T1: the transaction timeout (timers B, F, H, J).
pub fn timeout_64t1() -> Duration {
    T1 * 64
}

/// Server transaction kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Invite,
    NonInvite,
}

/// States shared by both server transaction kinds (17.2.1 and 17.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Request received, no final response yet (INVITE: Proceeding; non-INVITE: Trying or
    /// Proceeding).
    Proceeding,
    /// Final response sent, absorbing retransmissions (and for INVITE waiting for the ACK).
    Completed,
    /// INVITE only: ACK received, absorbing ACK retransmissions (timer I).
    Confirmed,
    Terminated,
}

/// What a server transaction asks its owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction {
    /// Send these bytes (a response, new or retransmitted) to the request's source.
    Send(Vec<u8>),
    /// The INVITE's final non-2xx response was never acknowledged (timer H).
    AckTimeout,
}

/// A server transaction.
#[derive(Debug)]
pub struct ServerTransaction {
    kind: ServerKind,
    reliable: bool,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    /// Timer G: next retransmission of a final INVITE response, and its interval.
    retransmit: Option<(Instant, Duration)>,
    /// Timer H (INVITE, Completed), I (Confirmed) or J (non-INVITE, Completed).
    end_at: Option<Instant>,
}

impl ServerTransaction {
    pub fn new(kind: ServerKind, reliable: bool) -> Self {
        Self {
            kind,
            reliable,
            state: ServerState::Proceeding,
            last_response: None,
            retransmit: None,
            end_at: None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The request arrived again: resend the last response, if any (17.2.1, 17.2.2).
    pub fn on_retransmitted_request(&self) -> Option<Vec<u8>> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    /// The transaction user sends a response with status `code`.
    pub fn send_response(&mut self, code: u16, bytes: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        if self.state != ServerState::Proceeding {
            return None;
        }
        self.last_response = Some(bytes.clone());
        if code < 200 {
            return Some(bytes);
        }
        match self.kind {
            // A 2xx ends the INVITE server transaction; its retransmission belongs to the
            // dialog layer (13.3.1.4), because the ACK for it is a transaction of its own.
            ServerKind::Invite if code < 300 => self.state = ServerState::Terminated,
            ServerKind::Invite => {
                self.state = ServerState::Completed;
                if !self.reliable {
                    self.retransmit = Some((now + T1, T1));
                }
                self.end_at = Some(now + timeout_64t1());
            }
            ServerKind::NonInvite => {
                if self.reliable {
                    self.state = ServerState::Terminated;
                } else {
                    self.state = ServerState::Completed;
                    self.end_at = Some(now + timeout_64t1());
                }
            }
        }
        Some(bytes)
    }

    /// The ACK for a non-2xx final response arrived.
    pub fn on_ack(&mut self, now: Instant) {
        if self.kind == ServerKind::Invite && self.state == ServerState::Completed {
            self.retransmit = None;
            if self.reliable {
                self.state = ServerState::Terminated;
            } else {
                self.state = ServerState::Confirmed;
                self.end_at = Some(now + T4);
            }
        }
    }

    /// When [`on_timer`](Self::on_timer) wants to run next.
    pub fn next_timer(&self) -> Option<Instant> {
        match (self.retransmit.map(|(at, _)| at), self.end_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Option<ServerAction> {
        if let Some(end) = self.end_at {
            if now >= end {
                let timed_out =
                    self.kind == ServerKind::Invite && self.state == ServerState::Completed;
                self.state = ServerState::Terminated;
                self.retransmit = None;
                self.end_at = None;
                return timed_out.then_some(ServerAction::AckTimeout);
            }
        }
        if let Some((at, interval)) = self.retransmit {
            if now >= at {
                let next = (interval * 2).min(T2);
                self.retransmit = Some((now + next, next));
                return self.last_response.clone().map(ServerAction::Send);
            }
        }
        None
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }
}

/// What a non-INVITE client transaction reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Send the request again (timer E).
    Retransmit(Vec<u8>),
    /// No final response in 64*T1 (timer F).
    Timeout,
}

/// A non-INVITE client transaction (17.1.2), e.g. the gateway's BYE.
#[derive(Debug)]
pub struct ClientTransaction {
    request: Vec<u8>,
    reliable: bool,
    retransmit: Option<(Instant, Duration)>,
    give_up_at: Option<Instant>,
    /// Timer K: absorb response retransmissions after the final response.
    linger_until: Option<Instant>,
    final_code: Option<u16>,
}

impl ClientTransaction {
    /// Starts the transaction; the caller sends `request` once now.
    pub fn new(request: Vec<u8>, reliable: bool, now: Instant) -> Self {
        Self {
            retransmit: (!reliable).then_some((now + T1, T1)),
            give_up_at: Some(now + timeout_64t1()),
            request,
            reliable,
            linger_until: None,
            final_code: None,
        }
    }

    /// A response arrived; returns its code when it is the (first) final one.
    pub fn on_response(&mut self, code: u16, now: Instant) -> Option<u16> {
        if self.final_code.is_some() {
            return None;
        }
        if code < 200 {
            // Proceeding: keep retransmitting, at T2.
            if let Some((_, _)) = self.retransmit {
                self.retransmit = Some((now + T2, T2));
            }
            return None;
        }
        self.final_code = Some(code);
        self.retransmit = None;
        self.give_up_at = None;
        self.linger_until = (!self.reliable).then_some(now + T4);
        Some(code)
    }

    /// A final response arrived.
    pub fn is_answered(&self) -> bool {
        self.final_code.is_some()
    }

    pub fn next_timer(&self) -> Option<Instant> {
        [
            self.retransmit.map(|(at, _)| at),
            self.give_up_at,
            self.linger_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn on_timer(&mut self, now: Instant) -> Option<ClientAction> {
        if let Some(at) = self.give_up_at {
            if now >= at {
                self.give_up_at = None;
                self.retransmit = None;
                return Some(ClientAction::Timeout);
            }
        }
        if let Some(at) = self.linger_until {
            if now >= at {
                self.linger_until = None;
            }
        }
        if let Some((at, interval)) = self.retransmit {
            if now >= at {
                let next = (interval * 2).min(T2);
                self.retransmit = Some((now + next, next));
                return Some(ClientAction::Retransmit(self.request.clone()));
            }
        }
        None
    }

    /// Finished: answered (and lingered) or timed out.
    pub fn is_terminated(&self) -> bool {
        self.retransmit.is_none() && self.give_up_at.is_none() && self.linger_until.is_none()
    }
}

/// How long an INVITE client transaction absorbs retransmitted final responses over UDP
/// (timer D, at least 32 s).
pub const TIMER_D: Duration = Duration::from_secs(32);

/// What an INVITE client transaction reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteClientAction {
    /// Send the INVITE again (timer A).
    Retransmit(Vec<u8>),
    /// No final response in 64*T1 (timer B).
    Timeout,
}

/// Where an INVITE client transaction stands (17.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteClientState {
    /// INVITE sent, nothing heard yet: retransmitting (timer A) until 64*T1 (timer B).
    Calling,
    /// A provisional response arrived: no more retransmissions, waiting for the final one.
    Proceeding,
    /// A non-2xx final response arrived and was acknowledged; retransmissions of it are
    /// acknowledged again until timer D.
    Completed,
    /// A 2xx arrived (its ACK belongs to the dialog), or the transaction ended.
    Terminated,
}

/// An INVITE client transaction (RFC 3261 17.1.1), e.g. the gateway calling an agent. The ACK
/// for a non-2xx final response is built by the owner (it needs the response's To tag) and
/// handed over with [`InviteClientTransaction::on_final_failure`], so that retransmitted
/// responses get the same ACK.
#[derive(Debug)]
pub struct InviteClientTransaction {
    request: Vec<u8>,
    reliable: bool,
    state: InviteClientState,
    retransmit: Option<(Instant, Duration)>,
    give_up_at: Option<Instant>,
    linger_until: Option<Instant>,
    ack: Option<Vec<u8>>,
}

impl InviteClientTransaction {
    /// Starts the transaction; the owner sends `request` once now.
    pub fn new(request: Vec<u8>, reliable: bool, now: Instant) -> Self {
        Self {
            retransmit: (!reliable).then_some((now + T1, T1)),
            give_up_at: Some(now + timeout_64t1()),
            request,
            reliable,
            state: InviteClientState::Calling,
            linger_until: None,
            ack: None,
        }
    }

    pub fn state(&self) -> InviteClientState {
        self.state
    }

    /// Whether a provisional or final response has been heard (a CANCEL may be sent only
    /// then, 9.1).
    pub fn heard_back(&self) -> bool {
        self.state != InviteClientState::Calling
    }

    /// A provisional response: stop retransmitting (timer A); timer B still runs.
    pub fn on_provisional(&mut self) {
        if self.state == InviteClientState::Calling {
            self.state = InviteClientState::Proceeding;
            self.retransmit = None;
        }
    }

    /// A 2xx: the transaction is done; the dialog acknowledges it.
    pub fn on_success(&mut self) {
        self.state = InviteClientState::Terminated;
        self.retransmit = None;
        self.give_up_at = None;
    }

    /// A non-2xx final response, with the ACK for it: returns the ACK to send now, also for a
    /// retransmission of the response while Completed.
    pub fn on_final_failure(&mut self, ack: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        match self.state {
            InviteClientState::Calling | InviteClientState::Proceeding => {
                self.state = InviteClientState::Completed;
                self.retransmit = None;
                self.give_up_at = None;
                self.linger_until = Some(if self.reliable { now } else { now + TIMER_D });
                self.ack = Some(ack.clone());
                Some(ack)
            }
            InviteClientState::Completed => self.ack.clone(),
            InviteClientState::Terminated => None,
        }
    }

    pub fn next_timer(&self) -> Option<Instant> {
        [
            self.retransmit.map(|(at, _)| at),
            self.give_up_at,
            self.linger_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn on_timer(&mut self, now: Instant) -> Option<InviteClientAction> {
        if self.give_up_at.is_some_and(|at| now >= at) {
            self.give_up_at = None;
            self.retransmit = None;
            self.state = InviteClientState::Terminated;
            return Some(InviteClientAction::Timeout);
        }
        if self.linger_until.is_some_and(|at| now >= at) {
            self.linger_until = None;
            self.state = InviteClientState::Terminated;
        }
        if let Some((at, interval)) = self.retransmit {
            if now >= at {
                // Timer A doubles without a cap; timer B ends it.
                let next = interval * 2;
                self.retransmit = Some((now + next, next));
                return Some(InviteClientAction::Retransmit(self.request.clone()));
            }
        }
        None
    }

    pub fn is_terminated(&self) -> bool {
        self.state == InviteClientState::Terminated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_client_retransmits_until_provisional_then_times_out() {
        let t0 = Instant::now();
        let mut t = InviteClientTransaction::new(b"INVITE".to_vec(), false, t0);
        assert_eq!(t.next_timer(), Some(t0 + T1));
        assert_eq!(
            t.on_timer(t0 + T1),
            Some(InviteClientAction::Retransmit(b"INVITE".to_vec()))
        );
        // Timer A doubled: 2*T1 later.
        assert_eq!(t.next_timer(), Some(t0 + T1 + T1 * 2));
        t.on_provisional();
        assert!(t.heard_back());
        assert_eq!(t.next_timer(), Some(t0 + timeout_64t1()));
        assert_eq!(
            t.on_timer(t0 + timeout_64t1()),
            Some(InviteClientAction::Timeout)
        );
        assert!(t.is_terminated());
    }

    #[test]
    fn invite_client_failure_is_acked_again_on_retransmission_until_timer_d() {
        let t0 = Instant::now();
        let mut t = InviteClientTransaction::new(b"INVITE".to_vec(), false, t0);
        assert_eq!(
            t.on_final_failure(b"ACK".to_vec(), t0),
            Some(b"ACK".to_vec())
        );
        assert_eq!(t.state(), InviteClientState::Completed);
        assert_eq!(
            t.on_final_failure(b"other".to_vec(), t0),
            Some(b"ACK".to_vec())
        );
        assert_eq!(t.next_timer(), Some(t0 + TIMER_D));
        assert_eq!(t.on_timer(t0 + TIMER_D), None);
        assert!(t.is_terminated());
        // Over TCP there is nothing to absorb.
        let mut t = InviteClientTransaction::new(b"INVITE".to_vec(), true, t0);
        assert_eq!(t.next_timer(), Some(t0 + timeout_64t1()));
        t.on_final_failure(b"ACK".to_vec(), t0);
        t.on_timer(t0);
        assert!(t.is_terminated());
    }

    #[test]
    fn invite_client_success_ends_the_transaction() {
        let t0 = Instant::now();
        let mut t = InviteClientTransaction::new(b"INVITE".to_vec(), false, t0);
        t.on_success();
        assert!(t.is_terminated());
        assert_eq!(t.next_timer(), None);
    }

    #[test]
    fn invite_error_response_retransmits_on_g_until_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(ServerKind::Invite, false);
        assert!(tx.send_response(100, b"100".to_vec(), t0).is_some());
        assert_eq!(tx.on_retransmitted_request(), Some(b"100".to_vec()));
        tx.send_response(486, b"486".to_vec(), t0);
        assert_eq!(tx.state(), ServerState::Completed);
        // G fires at 0.5, 1.5, 3.5, 7.5, 11.5 s (interval doubles, capped at T2 = 4 s).
        let mut sends = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(12) {
            now = tx.next_timer().unwrap();
            if let Some(ServerAction::Send(_)) = tx.on_timer(now) {
                sends.push((now - t0).as_millis());
            }
        }
        assert_eq!(sends[..5], [500, 1500, 3500, 7500, 11500]);
        tx.on_ack(now);
        assert_eq!(tx.state(), ServerState::Confirmed);
        let end = tx.next_timer().unwrap();
        assert_eq!(end - now, T4);
        assert_eq!(tx.on_timer(end), None);
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_error_without_ack_times_out_on_h() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(ServerKind::Invite, true);
        tx.send_response(603, b"603".to_vec(), t0);
        // Reliable transport: no timer G, only H.
        assert_eq!(tx.next_timer(), Some(t0 + timeout_64t1()));
        assert_eq!(
            tx.on_timer(t0 + timeout_64t1()),
            Some(ServerAction::AckTimeout)
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_2xx_ends_the_transaction() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(ServerKind::Invite, false);
        tx.send_response(200, b"200".to_vec(), t0);
        assert!(tx.is_terminated());
        assert_eq!(tx.next_timer(), None);
    }

    #[test]
    fn non_invite_absorbs_retransmissions_until_j() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(ServerKind::NonInvite, false);
        tx.send_response(200, b"200".to_vec(), t0);
        assert_eq!(tx.on_retransmitted_request(), Some(b"200".to_vec()));
        assert_eq!(tx.next_timer(), Some(t0 + timeout_64t1()));
        tx.on_timer(t0 + timeout_64t1());
        assert!(tx.is_terminated());
        let mut tcp = ServerTransaction::new(ServerKind::NonInvite, true);
        tcp.send_response(200, b"200".to_vec(), t0);
        assert!(tcp.is_terminated());
    }

    #[test]
    fn client_retransmits_on_e_and_times_out_on_f() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(b"BYE".to_vec(), false, t0);
        let mut retransmits = 0;
        let mut now;
        loop {
            now = tx.next_timer().unwrap();
            match tx.on_timer(now) {
                Some(ClientAction::Retransmit(_)) => retransmits += 1,
                Some(ClientAction::Timeout) => break,
                None => {}
            }
        }
        assert_eq!(now - t0, timeout_64t1());
        // 0.5, 1.5, 3.5, 7.5, then every 4 s until timer F at 32 s: 10 retransmissions.
        assert_eq!(retransmits, 10);
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_final_response_lingers_on_k() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(b"BYE".to_vec(), false, t0);
        assert_eq!(tx.on_response(100, t0), None);
        assert_eq!(tx.on_response(200, t0), Some(200));
        assert_eq!(tx.on_response(200, t0), None);
        assert_eq!(tx.next_timer(), Some(t0 + T4));
        tx.on_timer(t0 + T4);
        assert!(tx.is_terminated());
    }
}

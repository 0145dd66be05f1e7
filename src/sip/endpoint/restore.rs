//! Ending, after a restart, the legs a crashed gateway left open.
//!
//! # Why it exists
//!
//! A gateway killed in the middle of a call leaves its peers waiting: the caller's dialog is
//! confirmed and nobody will send it media or a BYE; an agent's phone may still be ringing for
//! a call nobody will bridge. The call task journals each leg's dialog state as a
//! [`LegSnapshot`] (what a request ending the leg needs, nothing else), and the next start of
//! the gateway hands the snapshots back to [`SipEndpoint::end_restored`]:
//!
//! - a confirmed dialog gets a BYE, retransmitted as any non-INVITE request is (timer E/F),
//!   with a CSeq well above the last one journaled (requests sent after the snapshot, such as
//!   a REFER, raised it; RFC 3261 12.2.1.1 asks only for a higher number);
//! - an INVITE still without a final answer becomes a pending call we placed again, as seen
//!   after its first provisional response, and is cancelled the ordinary way: the CANCEL,
//!   the ACK for the 487, and a BYE for a 200 that crosses the CANCEL all come from the code
//!   that handles live calls.
//!
//! Over TCP the connection died with the process, so requests go to a fresh connection to
//! the remote target (or the INVITE's destination).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    host_of, random_token, target_address, CallHandle, CallState, Peer, PendingOutbound,
    SipEndpoint, Transmit, Transport,
};
use crate::sip::message::{Method, SipMessage};
use crate::sip::sdp::LocalMedia;
use crate::sip::transaction::{ClientAction, ClientTransaction, InviteClientTransaction};

/// How far above the journaled CSeq a restored BYE goes (requests sent after the snapshot
/// used some numbers in between).
const CSEQ_MARGIN: u32 = 100;

/// What ending one leg needs, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LegSnapshot {
    /// A dialog (answered or confirmed): ended with a BYE.
    Dialog {
        call_id: String,
        /// Our From (as we send it: the caller's To with our tag, or our own From).
        local_uri: String,
        /// Their side (the caller's From, or the agent's To with its tag).
        remote_uri: String,
        remote_target: String,
        route_set: Vec<String>,
        peer: SocketAddr,
        tcp: bool,
        /// The stream was TLS (journals written before TLS existed have no such field).
        #[serde(default)]
        tls: bool,
        local_ip: IpAddr,
        local_cseq: u32,
    },
    /// An INVITE we sent that had no final answer: ended with a CANCEL.
    Inviting {
        /// The INVITE as sent.
        invite: String,
        peer: SocketAddr,
        tcp: bool,
        #[serde(default)]
        tls: bool,
        local_ip: IpAddr,
    },
}

/// A BYE of a restored dialog, until it is answered or times out.
#[derive(Debug)]
pub(super) struct RestoredBye {
    branch: String,
    txn: ClientTransaction,
    to: Peer,
    reconnect: Option<SocketAddr>,
}

fn transport(tcp: bool, tls: bool) -> Transport {
    // No connection survives a restart: id 0 names none, so the server layer connects anew
    // (to `Transmit::reconnect`).
    match (tcp, tls) {
        (_, true) => Transport::Tls(0),
        (true, false) => Transport::Tcp(0),
        (false, false) => Transport::Udp,
    }
}

impl SipEndpoint {
    /// What ending `handle`'s leg would take now (None: unknown, or already ending).
    pub fn leg_snapshot(&self, handle: CallHandle) -> Option<LegSnapshot> {
        if let Some(p) = self.outbound.get(&handle) {
            return Some(LegSnapshot::Inviting {
                invite: String::from_utf8_lossy(&p.invite.to_bytes()).into_owned(),
                peer: p.peer.addr,
                tcp: p.peer.transport.is_reliable(),
                tls: p.peer.transport.is_tls(),
                local_ip: p.local_ip,
            });
        }
        let call = self.calls.get(&handle)?;
        if matches!(call.state, CallState::Ringing | CallState::Ending) {
            return None;
        }
        Some(LegSnapshot::Dialog {
            call_id: call.call_id.clone(),
            local_uri: call.local_uri.clone(),
            remote_uri: call.remote_uri.clone(),
            remote_target: call.remote_target.clone(),
            route_set: call.route_set.clone(),
            peer: call.peer.addr,
            tcp: call.peer.transport.is_reliable(),
            tls: call.peer.transport.is_tls(),
            local_ip: call.local_ip,
            local_cseq: call.local_cseq,
        })
    }

    /// Ends a leg a previous run of the gateway left open (see the module documentation).
    /// Returns false when the snapshot is unusable (an INVITE that does not parse).
    pub fn end_restored(&mut self, leg: &LegSnapshot, now: Instant) -> bool {
        match leg {
            LegSnapshot::Dialog { .. } => {
                self.restored_bye(leg, now);
                true
            }
            LegSnapshot::Inviting {
                invite,
                peer,
                tcp,
                tls,
                local_ip,
            } => self.restored_cancel(invite, *peer, transport(*tcp, *tls), *local_ip, now),
        }
    }

    fn restored_bye(&mut self, leg: &LegSnapshot, now: Instant) {
        let LegSnapshot::Dialog {
            call_id,
            local_uri,
            remote_uri,
            remote_target,
            route_set,
            peer,
            tcp,
            tls,
            local_ip,
            local_cseq,
        } = leg
        else {
            return;
        };
        let to = Peer {
            transport: transport(*tcp, *tls),
            addr: *peer,
        };
        let branch = format!("z9hG4bK{}", random_token());
        let mut bye = SipMessage::request(Method::Bye, remote_target.clone());
        bye.push(
            "Via",
            format!(
                "SIP/2.0/{} {}:{};branch={branch};rport",
                to.transport.via_name(),
                host_of(*local_ip),
                self.config.port_for(to.transport)
            ),
        );
        bye.push("Max-Forwards", "70");
        for route in route_set {
            bye.push("Route", route.clone());
        }
        bye.push("From", local_uri.clone());
        bye.push("To", remote_uri.clone());
        bye.push("Call-ID", call_id.clone());
        let seq = local_cseq.saturating_add(CSEQ_MARGIN);
        bye.push("CSeq", format!("{seq} BYE"));
        if !self.config.user_agent.is_empty() {
            bye.push("User-Agent", self.config.user_agent.clone());
        }
        let bytes = bye.to_bytes();
        let reconnect = target_address(remote_target).or(Some(*peer));
        tracing::info!(call_id = %crate::sip::escape::escaped(call_id), peer = %peer, "ending a dialog left open by the previous run (BYE)");
        self.restored.push(RestoredBye {
            branch,
            txn: ClientTransaction::new(bytes.clone(), to.transport.is_reliable(), now),
            to,
            reconnect,
        });
        self.transmits.push_back(Transmit {
            to,
            bytes,
            reconnect,
        });
    }

    fn restored_cancel(
        &mut self,
        invite: &str,
        peer: SocketAddr,
        transport: Transport,
        local_ip: IpAddr,
        now: Instant,
    ) -> bool {
        let Ok(msg) = SipMessage::parse(invite.as_bytes()) else {
            tracing::warn!(%peer, "a journaled INVITE does not parse; cannot cancel it");
            return false;
        };
        let (Some(branch), Some(local_tag)) = (msg.via_branch(), msg.from_tag()) else {
            tracing::warn!(%peer, "a journaled INVITE has no branch or From tag; cannot cancel it");
            return false;
        };
        let (branch, local_tag) = (branch.to_string(), local_tag.to_string());
        let handle = CallHandle(self.next_handle);
        self.next_handle += 1;
        // As after a provisional answer: no INVITE retransmission, and CANCEL is allowed.
        let mut txn = InviteClientTransaction::new(msg.to_bytes(), transport.is_reliable(), now);
        txn.on_provisional();
        tracing::info!(call = %handle, call_id = msg.call_id().unwrap_or(""), %peer,
            "cancelling an INVITE left unanswered by the previous run");
        self.outbound.insert(
            handle,
            PendingOutbound {
                txn,
                invite: msg,
                branch,
                peer: Peer {
                    transport,
                    addr: peer,
                },
                local_ip,
                local_tag,
                local: LocalMedia {
                    address: local_ip,
                    rtp_port: 0,
                    session_id: 0,
                    session_version: 0,
                },
                cancel_wanted: true,
                target: String::new(),
                auth: None,
                challenged: Vec::new(),
                cancel: None,
            },
        );
        self.cancel(handle, now);
        true
    }

    /// A response to a restored BYE; true when it was one.
    pub(super) fn restored_response(&mut self, branch: &str, code: u16, now: Instant) -> bool {
        let Some(i) = self.restored.iter().position(|r| r.branch == branch) else {
            return false;
        };
        if self.restored[i].txn.on_response(code, now).is_some() {
            tracing::info!(code, "a restored dialog's BYE was answered");
            self.restored.swap_remove(i);
        }
        true
    }

    /// Retransmits restored BYEs that are due and forgets the finished ones.
    pub(super) fn restored_timers(&mut self, now: Instant) {
        let mut sends = Vec::new();
        self.restored.retain_mut(|r| {
            if r.txn.next_timer().is_some_and(|t| t <= now) {
                match r.txn.on_timer(now) {
                    Some(ClientAction::Retransmit(bytes)) => {
                        sends.push(Transmit {
                            to: r.to,
                            bytes,
                            reconnect: r.reconnect,
                        });
                    }
                    Some(ClientAction::Timeout) => {
                        tracing::warn!("a restored dialog's BYE was not answered (timer F)");
                    }
                    None => {}
                }
            }
            !r.txn.is_terminated()
        });
        self.transmits.extend(sends);
    }

    /// The restored BYEs' next timer.
    pub(super) fn restored_next_timer(&self) -> Option<Instant> {
        self.restored
            .iter()
            .filter_map(|r| r.txn.next_timer())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::AllowList;
    use crate::sip::endpoint::{EndpointConfig, Event, OutboundCall};
    use std::time::Duration;

    fn endpoint(now: Instant) -> SipEndpoint {
        SipEndpoint::new(
            EndpointConfig::default(),
            None,
            AllowList::parse(&[]).unwrap(),
            now,
        )
    }

    fn local_media() -> LocalMedia {
        LocalMedia {
            address: "127.0.0.1".parse().unwrap(),
            rtp_port: 20000,
            session_id: 1,
            session_version: 1,
        }
    }

    fn sent(ep: &mut SipEndpoint) -> Vec<(Transmit, SipMessage)> {
        std::iter::from_fn(|| ep.poll_transmit())
            .map(|t| {
                let msg = SipMessage::parse(&t.bytes).unwrap();
                (t, msg)
            })
            .collect()
    }

    fn respond(to: &SipMessage, code: u16, to_tag: &str) -> Vec<u8> {
        let cseq = to.header("CSeq").unwrap();
        format!(
            "SIP/2.0 {code} X\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag={to_tag}\r\nCall-ID: {}\r\n\
             CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
            to.top_via().unwrap(),
            to.header("From").unwrap(),
            to.header("To").unwrap(),
            to.call_id().unwrap(),
        )
        .into_bytes()
    }

    /// A caller's answered and acknowledged call; the endpoint and the call's handle.
    fn confirmed_call(t0: Instant) -> (SipEndpoint, CallHandle) {
        let mut ep = endpoint(t0);
        let caller = Peer {
            transport: Transport::Udp,
            addr: "127.0.0.1:5061".parse().unwrap(),
        };
        let sdp = "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 0\r\n";
        let invite = format!(
            "INVITE sip:support@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKinv1\r\n\
             From: <sip:caller@127.0.0.1>;tag=caller1\r\nTo: <sip:support@127.0.0.1>\r\n\
             Call-ID: crash-1@test\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5061>\r\n\
             Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        let ip = "127.0.0.1".parse().unwrap();
        ep.handle_bytes(caller, ip, invite.as_bytes(), t0);
        let handle = std::iter::from_fn(|| ep.poll_event())
            .find_map(|e| match e {
                Event::IncomingCall(c) => Some(c.handle),
                _ => None,
            })
            .expect("incoming call");
        ep.accept(handle, local_media(), t0);
        let ok = sent(&mut ep)
            .into_iter()
            .map(|(_, m)| m)
            .find(|m| m.status() == Some(200))
            .expect("200 OK");
        let to = ok.header("To").unwrap();
        let ack = format!(
            "ACK sip:caller@127.0.0.1:5061 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKack1\r\n\
             From: <sip:caller@127.0.0.1>;tag=caller1\r\nTo: {to}\r\nCall-ID: crash-1@test\r\n\
             CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        ep.handle_bytes(caller, ip, ack.as_bytes(), t0);
        (ep, handle)
    }

    #[test]
    fn a_journaled_dialog_is_ended_with_a_bye_after_a_restart() {
        let t0 = Instant::now();
        let (old, handle) = confirmed_call(t0);
        let snapshot = old.leg_snapshot(handle).expect("a dialog");
        // The journal keeps it as JSON.
        let json = serde_json::to_string(&snapshot).unwrap();
        let leg: LegSnapshot = serde_json::from_str(&json).unwrap();
        drop(old);

        let mut ep = endpoint(t0);
        assert!(ep.end_restored(&leg, t0));
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1);
        let (t, bye) = &out[0];
        assert_eq!(t.to.addr, "127.0.0.1:5061".parse().unwrap());
        assert_eq!(bye.method(), Some(&Method::Bye));
        assert_eq!(bye.request_uri(), Some("sip:caller@127.0.0.1:5061"));
        assert_eq!(bye.call_id(), Some("crash-1@test"));
        assert!(bye.from_tag().is_some());
        assert!(bye.header("To").unwrap().contains("tag=caller1"));
        assert!(bye.cseq().unwrap().seq > 1);
        // Retransmitted over UDP until answered, then forgotten.
        let t1 = ep.next_timeout().expect("timer E");
        ep.handle_timeout(t1);
        assert_eq!(sent(&mut ep).len(), 1);
        let ok = respond(bye, 200, "caller1");
        ep.handle_bytes(t.to, "127.0.0.1".parse().unwrap(), &ok, t1);
        assert!(ep.restored.is_empty());
        ep.handle_timeout(t1 + Duration::from_secs(40));
        assert!(sent(&mut ep).is_empty());
    }

    #[test]
    fn a_journaled_ringing_invite_is_cancelled_and_its_487_acknowledged() {
        let t0 = Instant::now();
        let mut old = endpoint(t0);
        let agent: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let handle = old.invite(
            OutboundCall {
                target: "sip:1001@127.0.0.1:5070".into(),
                peer: Peer {
                    transport: Transport::Udp,
                    addr: agent,
                },
                local_ip: "127.0.0.1".parse().unwrap(),
                from_display: "Voicebot".into(),
                from_user: "voicebot".into(),
                local: local_media(),
                headers: Vec::new(),
                auth: None,
            },
            t0,
        );
        let invite = sent(&mut old).remove(0).1;
        let leg = old.leg_snapshot(handle).expect("an INVITE");
        assert!(matches!(leg, LegSnapshot::Inviting { .. }));
        drop(old);

        let mut ep = endpoint(t0);
        assert!(ep.end_restored(&leg, t0));
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1, "only the CANCEL, no INVITE again");
        let cancel = &out[0].1;
        assert_eq!(cancel.method(), Some(&Method::Cancel));
        assert_eq!(cancel.via_branch(), invite.via_branch());
        assert_eq!(cancel.call_id(), invite.call_id());
        assert_eq!(out[0].0.to.addr, agent);
        let ip = "127.0.0.1".parse().unwrap();
        let peer = out[0].0.to;
        ep.handle_bytes(peer, ip, &respond(cancel, 200, "agent1"), t0);
        ep.handle_bytes(peer, ip, &respond(&invite, 487, "agent1"), t0);
        let acks: Vec<SipMessage> = sent(&mut ep).into_iter().map(|(_, m)| m).collect();
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].method(), Some(&Method::Ack));
        assert_eq!(acks[0].via_branch(), invite.via_branch());
    }

    #[test]
    fn an_unparsable_journaled_invite_is_refused() {
        let t0 = Instant::now();
        let mut ep = endpoint(t0);
        let leg = LegSnapshot::Inviting {
            invite: "garbage".into(),
            peer: "127.0.0.1:5070".parse().unwrap(),
            tcp: false,
            tls: false,
            local_ip: "127.0.0.1".parse().unwrap(),
        };
        assert!(!ep.end_restored(&leg, t0));
        assert!(ep.poll_transmit().is_none());
    }
}

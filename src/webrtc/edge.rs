//! The edge's task: its own SIP endpoint on loopback (our sans-IO [`SipEndpoint`], as a user
//! agent client for browser callers and a server for browser agents), the table of browser
//! sessions, and the relays between browsers and the core's calls.
//!
//! The core is reached at its UDP SIP address; only the core may call the edge (its allow
//! list holds the core's address alone), and the core knows the edge's address, so it takes
//! the flow an edge INVITE names and sends `webrtc:<agent>` extensions here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::flows::FlowStore;
use crate::media::codec::Codec;
use crate::sip::auth::AllowList;
use crate::sip::endpoint::{
    CallHandle, EndReason, EndpointConfig, Event, IncomingCall, OutboundCall, Peer, SipEndpoint,
    Transport,
};
use crate::sip::sdp::{LocalMedia, Negotiated};

use super::peer::BrowserPeer;
use super::relay::{Relay, RelayEnded};
use super::{
    AgentRing, AgentScreens, AgentSession, CallerSession, EdgeCommand, EdgeError, EdgeHandle,
    CORE_ANSWER,
};

/// What the edge needs to start.
pub struct EdgeSetup {
    /// The core's SIP address over UDP (an unspecified address means loopback).
    pub core: SocketAddr,
    /// The address browsers reach our ICE host candidates at.
    pub ice_ip: IpAddr,
    /// Browser calls at once (callers and agents together).
    pub max_sessions: usize,
    /// The flows, to refuse an unknown flow before calling the core.
    pub flows: Arc<FlowStore>,
    /// Where browser agents are rung.
    pub agents: Arc<dyn AgentScreens>,
}

/// A running edge: the HTTP side's handle, and the SIP address the core calls agents at.
pub struct Edge {
    pub handle: EdgeHandle,
    pub sip_addr: SocketAddr,
}

/// Binds the edge's SIP socket and starts its task.
pub async fn start(setup: EdgeSetup) -> std::io::Result<Edge> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let core = if setup.core.ip().is_unspecified() {
        SocketAddr::new(loopback, setup.core.port())
    } else {
        setup.core
    };
    let socket = UdpSocket::bind(SocketAddr::new(core.ip(), 0)).await?;
    let sip_addr = socket.local_addr()?;
    let allow = AllowList::parse(&[core.ip().to_string()])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let endpoint = SipEndpoint::new(
        EndpointConfig {
            max_calls: setup.max_sessions,
            // Opus only: browsers speak it, so the core's call needs no transcoding.
            codecs: vec![Codec::Opus],
            user_agent: "voicebot-webrtc-edge".into(),
            contact_user: "webrtc".into(),
            sip_port: sip_addr.port(),
            ..EndpointConfig::default()
        },
        None,
        allow,
        Instant::now(),
    );
    let (tx, rx) = mpsc::channel(64);
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let task = EdgeTask {
        endpoint,
        socket,
        core,
        setup,
        sessions: HashMap::new(),
        by_handle: HashMap::new(),
        ended_tx,
    };
    tokio::spawn(task.run(rx, ended_rx));
    tracing::info!(sip = %sip_addr, core = %core, "WebRTC edge ready");
    Ok(Edge {
        handle: EdgeHandle::new(tx),
        sip_addr,
    })
}

/// A browser session's media, prepared before the core answers.
struct Prepared {
    peer: BrowserPeer,
    browser: UdpSocket,
    core_socket: UdpSocket,
    answer_sdp: String,
}

enum SessionState {
    /// A caller's INVITE to the core waits for its answer.
    Calling {
        prepared: Box<Prepared>,
        reply: oneshot::Sender<Result<CallerSession, EdgeError>>,
        deadline: Instant,
    },
    /// An agent's browser is ringing (the core's INVITE waits).
    Ringing { call: Box<IncomingCall> },
    /// Media flows; dropping `stop` ends the relay.
    Up { _stop: oneshot::Sender<()> },
}

struct Session {
    handle: CallHandle,
    /// A browser agent's ring (else a browser caller).
    agent: bool,
    state: SessionState,
}

struct EdgeTask {
    endpoint: SipEndpoint,
    socket: UdpSocket,
    core: SocketAddr,
    setup: EdgeSetup,
    sessions: HashMap<String, Session>,
    by_handle: HashMap<CallHandle, String>,
    ended_tx: mpsc::UnboundedSender<RelayEnded>,
}

/// A new session id: unguessable (it names the session's URL).
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Answers a refused browser call with `error`, and logs why.
fn refuse(flow: &str, reply: oneshot::Sender<Result<CallerSession, EdgeError>>, error: EdgeError) {
    tracing::info!(%flow, status = error.http_status(), error = %error, "browser call refused");
    let _ = reply.send(Err(error));
}

impl EdgeTask {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<EdgeCommand>,
        mut ended: mpsc::UnboundedReceiver<RelayEnded>,
    ) {
        let mut buf = vec![0u8; 65_535];
        loop {
            self.flush().await;
            let wake = self.next_wake();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => {
                        let peer = Peer { transport: Transport::Udp, addr: source };
                        let local_ip = self.core.ip();
                        self.endpoint.handle_bytes(peer, local_ip, &buf[..n], Instant::now());
                    }
                    Err(e) => tracing::debug!(error = %e, "edge SIP socket"),
                },
                Some(end) = ended.recv() => self.on_relay_ended(end),
                _ = tokio::time::sleep_until(wake.into()) => self.on_timer(),
            }
        }
        // The HTTP side is gone (the gateway stops): hang up what is left.
        let now = Instant::now();
        for s in self.sessions.values() {
            self.endpoint.hangup(s.handle, now);
        }
        self.flush().await;
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        if let Some(t) = self.endpoint.next_timeout() {
            wake = wake.min(t);
        }
        for s in self.sessions.values() {
            if let SessionState::Calling { deadline, .. } = &s.state {
                wake = wake.min(*deadline);
            }
        }
        wake
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.endpoint.handle_timeout(now);
        let late: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(&s.state, SessionState::Calling { deadline, .. } if *deadline <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            if let Some(s) = self.remove(&id) {
                self.endpoint.hangup(s.handle, now);
                if let SessionState::Calling { reply, .. } = s.state {
                    let _ = reply.send(Err(EdgeError::Core(format!(
                        "no answer within {} s",
                        CORE_ANSWER.as_secs()
                    ))));
                }
            }
        }
    }

    async fn flush(&mut self) {
        loop {
            while let Some(t) = self.endpoint.poll_transmit() {
                if let Err(e) = self.socket.send_to(&t.bytes, t.to.addr).await {
                    tracing::warn!(error = %e, to = %t.to.addr, "edge cannot send SIP");
                }
            }
            match self.endpoint.poll_event() {
                Some(event) => self.on_event(event).await,
                None => return,
            }
        }
    }

    fn remove(&mut self, id: &str) -> Option<Session> {
        let s = self.sessions.remove(id)?;
        self.by_handle.remove(&s.handle);
        Some(s)
    }

    async fn on_command(&mut self, cmd: EdgeCommand) {
        match cmd {
            EdgeCommand::CallFlow { flow, offer, reply } => {
                self.call_flow(&flow, &offer, reply).await;
            }
            EdgeCommand::AnswerAgent {
                ring_id,
                offer,
                reply,
            } => {
                let result = self.answer_agent(&ring_id, &offer).await;
                if let Err(e) = &result {
                    tracing::info!(ring = %ring_id, error = %e, "browser agent's answer refused");
                }
                let _ = reply.send(result);
            }
            EdgeCommand::Hangup { id, reply } => {
                let _ = reply.send(self.hangup(&id));
            }
        }
    }

    /// Binds the browser's and the core's sockets and answers the browser's offer.
    async fn prepare(&self, offer: &str) -> Result<Prepared, EdgeError> {
        let unavailable = |e: std::io::Error| EdgeError::Unavailable(format!("no UDP port: {e}"));
        let browser = UdpSocket::bind(SocketAddr::new(self.setup.ice_ip, 0))
            .await
            .map_err(unavailable)?;
        let core_socket = UdpSocket::bind(SocketAddr::new(self.core.ip(), 0))
            .await
            .map_err(unavailable)?;
        let local = browser.local_addr().map_err(unavailable)?;
        let (peer, answer_sdp) = BrowserPeer::answer(offer, local, Instant::now())?;
        Ok(Prepared {
            peer,
            browser,
            core_socket,
            answer_sdp,
        })
    }

    fn has_room(&self) -> Result<(), EdgeError> {
        if self.sessions.len() >= self.setup.max_sessions {
            return Err(EdgeError::Busy(format!(
                "{} browser calls in progress, the most allowed",
                self.sessions.len()
            )));
        }
        Ok(())
    }

    async fn call_flow(
        &mut self,
        flow: &str,
        offer: &str,
        reply: oneshot::Sender<Result<CallerSession, EdgeError>>,
    ) {
        if !crate::handover::transfer::uri_safe_name(flow)
            || self.setup.flows.current().get(flow).is_none()
        {
            return refuse(
                flow,
                reply,
                EdgeError::NotFound(format!("no flow `{flow}`")),
            );
        }
        if let Err(e) = self.has_room() {
            return refuse(flow, reply, e);
        }
        let prepared = match self.prepare(offer).await {
            Ok(p) => p,
            Err(e) => return refuse(flow, reply, e),
        };
        let id = new_id();
        let rtp_port = prepared
            .core_socket
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0);
        let now = Instant::now();
        let handle = self.endpoint.invite(
            OutboundCall {
                target: format!("sip:{flow}@{}", self.core),
                peer: Peer {
                    transport: Transport::Udp,
                    addr: self.core,
                },
                local_ip: self.core.ip(),
                from_display: "Browser".into(),
                from_user: format!("webrtc-{}", &id[..8]),
                local: LocalMedia {
                    address: self.core.ip(),
                    rtp_port,
                    session_id: rand::random::<u32>().into(),
                    session_version: 1,
                },
                headers: vec![("X-Voicebot-Source".into(), "webrtc".into())],
                auth: None,
            },
            now,
        );
        tracing::info!(session = %id, %flow, call = %handle, "browser caller: calling the flow");
        self.by_handle.insert(handle, id.clone());
        self.sessions.insert(
            id,
            Session {
                handle,
                agent: false,
                state: SessionState::Calling {
                    prepared: Box::new(prepared),
                    reply,
                    deadline: now + CORE_ANSWER,
                },
            },
        );
    }

    /// Starts the relay of an answered session.
    fn start_relay(
        &mut self,
        id: &str,
        mut prepared: Prepared,
        media: &Negotiated,
    ) -> oneshot::Sender<()> {
        prepared.peer.set_core_payload_type(media.payload_type);
        let relay = Relay {
            id: id.to_string(),
            peer: prepared.peer,
            browser: prepared.browser,
            core: prepared.core_socket,
            core_rtp: media.remote_rtp,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(relay.run(stop_rx, self.ended_tx.clone()));
        stop_tx
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::OutboundAnswered(handle, media) => self.on_core_answered(handle, media),
            Event::IncomingCall(call) => self.on_agent_call(call),
            Event::CallEnded(handle, reason) => self.on_call_ended(handle, reason),
            Event::MediaChanged(handle, media) => {
                tracing::debug!(call = %handle, codec = %media.codec, "core changed the media; relay keeps its address");
            }
            _ => {}
        }
    }

    fn on_core_answered(&mut self, handle: CallHandle, media: Negotiated) {
        let Some(id) = self.by_handle.get(&handle).cloned() else {
            return;
        };
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        let SessionState::Calling {
            prepared, reply, ..
        } = session.state
        else {
            self.sessions.insert(id, session);
            return;
        };
        if media.codec != Codec::Opus {
            tracing::warn!(session = %id, codec = %media.codec, "the core did not take Opus; hanging up");
            self.by_handle.remove(&handle);
            self.endpoint.hangup(handle, Instant::now());
            let _ = reply.send(Err(EdgeError::Core(format!(
                "the gateway answered with {}, not Opus",
                media.codec
            ))));
            return;
        }
        let sip_call_id = self
            .endpoint
            .dialog_ids(handle)
            .map(|d| d.call_id)
            .unwrap_or_default();
        let answer_sdp = prepared.answer_sdp.clone();
        let stop = self.start_relay(&id, *prepared, &media);
        tracing::info!(session = %id, call = %handle, %sip_call_id, "browser caller connected to the flow");
        let accepted = reply.send(Ok(CallerSession {
            id: id.clone(),
            answer_sdp,
            sip_call_id,
        }));
        if accepted.is_err() {
            // The HTTP request went away meanwhile: nobody will ever use this call.
            self.by_handle.remove(&handle);
            self.endpoint.hangup(handle, Instant::now());
            return;
        }
        self.sessions.insert(
            id,
            Session {
                handle,
                agent: false,
                state: SessionState::Up { _stop: stop },
            },
        );
    }

    /// The core calls a browser agent (`webrtc:<agent>` became `sip:<agent>@edge`).
    fn on_agent_call(&mut self, call: Box<IncomingCall>) {
        let now = Instant::now();
        let agent = call.called.clone().unwrap_or_default();
        if self.has_room().is_err() {
            self.endpoint.reject(call.handle, 486, now);
            return;
        }
        let header = |name: &str| {
            call.voicebot_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let ring_id = new_id();
        let ring = AgentRing {
            ring_id: ring_id.clone(),
            agent: agent.clone(),
            call_id: header("X-Voicebot-Call-Id"),
            team: header("X-Voicebot-Team"),
            from: call.from.clone(),
        };
        if !self.setup.agents.ring(ring) {
            tracing::info!(%agent, call = %call.handle, "browser agent not logged in: 480");
            self.endpoint.reject(call.handle, 480, now);
            return;
        }
        tracing::info!(%agent, ring = %ring_id, call = %call.handle, "ringing a browser agent");
        self.by_handle.insert(call.handle, ring_id.clone());
        self.sessions.insert(
            ring_id,
            Session {
                handle: call.handle,
                agent: true,
                state: SessionState::Ringing { call },
            },
        );
    }

    async fn answer_agent(
        &mut self,
        ring_id: &str,
        offer: &str,
    ) -> Result<AgentSession, EdgeError> {
        match self.sessions.get(ring_id).map(|s| &s.state) {
            Some(SessionState::Ringing { .. }) => {}
            Some(_) => {
                return Err(EdgeError::NotFound(format!(
                    "ring {ring_id} was already answered"
                )))
            }
            None => {
                return Err(EdgeError::NotFound(format!(
                    "no ringing call {ring_id} (it ended or was answered elsewhere)"
                )))
            }
        }
        let prepared = self.prepare(offer).await?;
        // The ring may have ended while the sockets were bound.
        let Some(session) = self.sessions.remove(ring_id) else {
            return Err(EdgeError::NotFound(format!("the call {ring_id} ended")));
        };
        let SessionState::Ringing { call } = session.state else {
            self.sessions.insert(ring_id.to_string(), session);
            return Err(EdgeError::NotFound(format!(
                "ring {ring_id} was already answered"
            )));
        };
        let rtp_port = prepared
            .core_socket
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0);
        self.endpoint.accept(
            call.handle,
            LocalMedia {
                address: call.local_ip,
                rtp_port,
                session_id: rand::random::<u32>().into(),
                session_version: 1,
            },
            Instant::now(),
        );
        let answer_sdp = prepared.answer_sdp.clone();
        let stop = self.start_relay(ring_id, prepared, &call.media);
        tracing::info!(ring = %ring_id, call = %call.handle, "browser agent answered");
        self.sessions.insert(
            ring_id.to_string(),
            Session {
                handle: call.handle,
                agent: true,
                state: SessionState::Up { _stop: stop },
            },
        );
        Ok(AgentSession {
            id: ring_id.to_string(),
            answer_sdp,
        })
    }

    fn hangup(&mut self, id: &str) -> Result<(), EdgeError> {
        let Some(session) = self.remove(id) else {
            return Err(EdgeError::NotFound(format!("no browser call {id}")));
        };
        let now = Instant::now();
        match session.state {
            SessionState::Ringing { call } => {
                tracing::info!(ring = %id, "browser agent declined");
                self.endpoint.reject(call.handle, 603, now);
            }
            SessionState::Calling { reply, .. } => {
                self.endpoint.hangup(session.handle, now);
                let _ = reply.send(Err(EdgeError::NotFound("hung up before the answer".into())));
            }
            SessionState::Up { .. } => {
                tracing::info!(session = %id, "browser hung up");
                self.endpoint.hangup(session.handle, now);
            }
        }
        if session.agent {
            self.setup.agents.ring_ended(id, "hung up");
        }
        Ok(())
    }

    /// The core ended a call: refused or ended a caller's, cancelled or hung up an agent's.
    fn on_call_ended(&mut self, handle: CallHandle, reason: EndReason) {
        let Some(id) = self.by_handle.get(&handle).cloned() else {
            return;
        };
        let Some(session) = self.remove(&id) else {
            return;
        };
        tracing::info!(session = %id, ?reason, "the gateway ended the browser's call");
        match session.state {
            SessionState::Calling { reply, .. } => {
                let error = match &reason {
                    EndReason::Refused(code @ (486 | 480 | 503 | 600)) => {
                        EdgeError::Busy(format!("the gateway answered {code}"))
                    }
                    EndReason::Refused(code) => {
                        EdgeError::Core(format!("the gateway answered {code}"))
                    }
                    EndReason::NoResponse => EdgeError::Core("the gateway did not answer".into()),
                    other => EdgeError::Core(format!("{other:?}")),
                };
                let _ = reply.send(Err(error));
            }
            // Dropping the session's stop sender ends the relay.
            SessionState::Up { .. } | SessionState::Ringing { .. } => {}
        }
        if session.agent {
            let why = match reason {
                EndReason::Cancelled => "cancelled",
                EndReason::RemoteBye => "the call ended",
                _ => "ended",
            };
            self.setup.agents.ring_ended(&id, why);
        }
    }

    /// A relay ended by itself (the browser went away): hang up its call.
    fn on_relay_ended(&mut self, end: RelayEnded) {
        let Some(session) = self.remove(&end.id) else {
            return;
        };
        tracing::info!(session = %end.id, reason = %end.reason, "browser gone; hanging up its call");
        self.endpoint.hangup(session.handle, Instant::now());
        if session.agent {
            self.setup.agents.ring_ended(&end.id, &end.reason);
        }
    }
}

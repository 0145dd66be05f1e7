//! Calls from the browser over WebRTC: a caller's "call this flow" from the console (signalled
//! the WHIP way, RFC 9725) and the agent screen's softphone.
//!
//! # Why an edge in front of the SIP core, not a second kind of call
//!
//! A browser leg differs from a SIP leg in its transport only: ICE, DTLS-SRTP and Opus over one
//! UDP port, signalled over HTTP. Everything after that (jitter buffer, pipeline, barge-in,
//! recording, escalation, transfer, history) is what a SIP call already has. So the WebRTC edge
//! terminates the browser's transport with `str0m` (sans-IO, as our own cores are) and meets the
//! gateway core where any SIP peer does: it places or answers a SIP call over loopback, with
//! plain RTP (Opus, no transcoding) between its relay and the call's RTP port. This is the
//! design of WebRTC-to-SIP gateways (rtpengine in front of a SIP server, Janus' SIP plugin): the
//! core cannot tell a browser from a softphone, and no call path exists twice.
//!
//! - A browser caller: `POST /api/webrtc/flows/{flow}` with an SDP offer. The edge places a SIP
//!   INVITE to the core naming the flow; when the core answers, the browser gets `201 Created`
//!   with the SDP answer and the session's URL; `DELETE` on that URL hangs up (a BYE to the core).
//! - A browser agent: a team's extension `webrtc:<agent>` is called at the edge's SIP address. The
//!   edge rings that agent's screens ([`AgentScreens`]); an agent with no screen open does not
//!   answer (480, the hunt goes on). "Answer" posts the browser's offer; the edge answers the
//!   core's INVITE and relays media.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub mod agents;
pub mod edge;
pub mod peer;
pub mod relay;

/// Longest wait for the core to answer the edge's INVITE (the flow answers at once unless the
/// gateway is full or draining).
pub const CORE_ANSWER: Duration = Duration::from_secs(10);

/// A browser caller's session, as `POST /api/webrtc/flows/{flow}` returns it.
#[derive(Debug, Clone)]
pub struct CallerSession {
    /// The session's id (its URL is `/api/webrtc/sessions/{id}`).
    pub id: String,
    /// The SDP answer for the browser.
    pub answer_sdp: String,
    /// The SIP Call-ID of the edge's call to the core: the call's key in the live view and in
    /// the hand-over hub's events.
    pub sip_call_id: String,
}

/// An agent's browser call, as answering a ring returns it.
#[derive(Debug, Clone)]
pub struct AgentSession {
    /// The ring's id; hanging up names it.
    pub id: String,
    /// The SDP answer for the agent's browser.
    pub answer_sdp: String,
}

/// A call ringing a browser agent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentRing {
    /// Unique per ring; the agent screen answers or hangs up with it.
    pub ring_id: String,
    /// The agent's name (`webrtc:<agent>`).
    pub agent: String,
    /// The escalated call's SIP Call-ID (its hand-over context is keyed by it), when the core
    /// sent it (`X-Voicebot-Call-Id` on the INVITE).
    pub call_id: Option<String>,
    /// The team the call was escalated to, when known (`X-Voicebot-Team`).
    pub team: Option<String>,
    /// Who calls: the core's From.
    pub from: String,
}

/// Where the edge rings browser agents: the agent screens' registry implements it.
pub trait AgentScreens: Send + Sync {
    /// Rings every open screen of `ring.agent`; false when none is open (the agent is not
    /// logged in: the call is refused at once so the hunt goes on).
    fn ring(&self, ring: AgentRing) -> bool;
    /// The ring or the answered call ended: cancelled before an answer, the hunt moved on, or
    /// the call was hung up (by the core, or by the agent on another screen).
    fn ring_ended(&self, ring_id: &str, reason: &str);
}

/// Why the edge could not do what was asked; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The SDP offer cannot be read.
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    /// The offer can be read but cannot be accepted (no Opus audio, no DTLS fingerprint, ...).
    #[error("offer not acceptable: {0}")]
    NotAcceptable(String),
    /// No such flow, session or ring.
    #[error("{0}")]
    NotFound(String),
    /// Too many browser calls, or the core refused the call (full, draining).
    #[error("busy: {0}")]
    Busy(String),
    /// The core did not answer, or answered with an error.
    #[error("the gateway did not take the call: {0}")]
    Core(String),
    /// The edge is not running (stopping, or WebRTC is disabled).
    #[error("WebRTC is not available: {0}")]
    Unavailable(String),
}

impl EdgeError {
    /// The HTTP status for the error.
    pub fn http_status(&self) -> u16 {
        match self {
            EdgeError::BadOffer(_) => 400,
            EdgeError::NotAcceptable(_) => 406,
            EdgeError::NotFound(_) => 404,
            EdgeError::Busy(_) | EdgeError::Unavailable(_) => 503,
            EdgeError::Core(_) => 502,
        }
    }
}

/// What the HTTP side asks the edge to do.
#[derive(Debug)]
pub enum EdgeCommand {
    CallFlow {
        flow: String,
        offer: String,
        reply: oneshot::Sender<Result<CallerSession, EdgeError>>,
    },
    AnswerAgent {
        ring_id: String,
        offer: String,
        reply: oneshot::Sender<Result<AgentSession, EdgeError>>,
    },
    /// Hangs up a caller session or an agent's ring/call by its id.
    Hangup {
        id: String,
        reply: oneshot::Sender<Result<(), EdgeError>>,
    },
}

/// The HTTP side's handle on the running edge (cheap to clone).
#[derive(Debug, Clone)]
pub struct EdgeHandle {
    commands: mpsc::Sender<EdgeCommand>,
}

impl EdgeHandle {
    /// A handle sending to `commands` (the edge task's queue).
    pub fn new(commands: mpsc::Sender<EdgeCommand>) -> Self {
        EdgeHandle { commands }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EdgeError>>) -> EdgeCommand,
    ) -> Result<T, EdgeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| EdgeError::Unavailable("the WebRTC edge has stopped".into()))?;
        rx.await
            .map_err(|_| EdgeError::Unavailable("the WebRTC edge has stopped".into()))?
    }

    /// Calls `flow` for a browser with SDP `offer`; the answer once the core took the call.
    pub async fn call_flow(&self, flow: &str, offer: &str) -> Result<CallerSession, EdgeError> {
        let (flow, offer) = (flow.to_string(), offer.to_string());
        self.ask(|reply| EdgeCommand::CallFlow { flow, offer, reply })
            .await
    }

    /// Answers ring `ring_id` with the agent browser's SDP `offer`.
    pub async fn answer_agent(
        &self,
        ring_id: &str,
        offer: &str,
    ) -> Result<AgentSession, EdgeError> {
        let (ring_id, offer) = (ring_id.to_string(), offer.to_string());
        self.ask(|reply| EdgeCommand::AnswerAgent {
            ring_id,
            offer,
            reply,
        })
        .await
    }

    /// Hangs up the caller session or agent ring/call `id`.
    pub async fn hangup(&self, id: &str) -> Result<(), EdgeError> {
        let id = id.to_string();
        self.ask(|reply| EdgeCommand::Hangup { id, reply }).await
    }
}

//! The gateway's SIP user agent server, sans-IO: every received message goes in with the
//! current `Instant`, and what to send ([`Transmit`]) and what happened to calls ([`Event`])
//! come out. It owns the server transactions, the dialogs of answered calls and the BYEs the
//! gateway sends, with all RFC 3261 timers; the tokio layer only moves bytes and sleeps until
//! [`SipEndpoint::next_timeout`].
//!
//! A call goes: INVITE -> 100 Trying -> (checks: allow-list, auth, capacity, codecs, session
//! timer) -> 180 Ringing and [`Event::IncomingCall`] -> the owner allocates media and calls
//! [`SipEndpoint::accept`] -> 200 OK with the SDP answer, retransmitted until the ACK ->
//! [`Event::CallConfirmed`] -> re-INVITE/UPDATE/INFO inside the dialog -> BYE from either side
//! -> [`Event::CallEnded`] with the reason.
//!
//! Every request is judged before a transaction exists: malformed ones (RFC 4475 3.1.2, 3.3)
//! get a stateless 400 or 505 whenever a Via can be read; then RFC 3261 8.2's checks in order:
//! 501 for an unknown method, 400 for a CSeq of another method, 416 for a Request-URI that is
//! not sip/sips, 420 for a required extension we lack, 415 and 406 for an offer we cannot read
//! or answer. Server transactions are keyed by branch, sent-by and method (17.2.3).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use crate::media::codec::Codec;
use crate::media::srtp::SrtpMode;
use crate::sip::auth::{AllowList, AuthError, DigestAuthenticator};
use crate::sip::digest_client::{ClientCredentials, DigestClient};
use crate::sip::escape::escaped;
use crate::sip::message::{
    default_port, is_sips, parse_sip_uri, split_list, unescape_uri_part, uri_of, uri_scheme,
    via_sent_by, Method, ParseError, RequestError, SipMessage,
};
use crate::sip::sdp::{self, LocalMedia, MediaOffer, Negotiated};
use crate::sip::transaction::{
    timeout_64t1, ClientAction, ClientTransaction, InviteClientAction, InviteClientState,
    InviteClientTransaction, ServerAction, ServerKind, ServerTransaction, T1, T2,
};

mod challenge;
mod delayed_offer;
mod restore;
pub use restore::LegSnapshot;

/// Methods the gateway implements (the `Allow` header lists exactly these).
/// The Retry-After (seconds) of the 503 a draining gateway gives new INVITEs and OPTIONS: a
/// hint to a caller without a proxy; a dispatcher's probes find the gateway again sooner.
pub const DRAIN_RETRY_AFTER_S: u32 = 30;

pub const ALLOWED: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY";

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    /// A TCP connection, by the id the server layer gave it.
    Tcp(u64),
    /// A TLS connection (RFC 3261 26.2, RFC 5630), by the id the server layer gave it. Ids are
    /// shared with TCP: one id names one connection, whatever its kind.
    Tls(u64),
}

impl Transport {
    /// Stream transports (TCP, TLS): no retransmissions of requests or 2xx (RFC 3261 17).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp(_) | Transport::Tls(_))
    }

    /// The connection id of a stream transport.
    pub fn connection(self) -> Option<u64> {
        match self {
            Transport::Udp => None,
            Transport::Tcp(c) | Transport::Tls(c) => Some(c),
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp(_) => "TCP",
            Transport::Tls(_) => "TLS",
        }
    }
}

/// Where a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Peer,
    pub bytes: Vec<u8>,
    /// For requests we originate inside a dialog over TCP: where to open a new connection
    /// (the remote target's address, RFC 3261 18.1.1) when `to`'s connection has closed.
    pub reconnect: Option<SocketAddr>,
}

/// A call's handle, unique for the endpoint's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u64);

impl fmt::Display for CallHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call-{}", self.0)
    }
}

/// A new call waiting for [`SipEndpoint::accept`] or [`SipEndpoint::reject`].
#[derive(Debug, Clone)]
pub struct IncomingCall {
    pub handle: CallHandle,
    pub call_id: String,
    /// The caller (From header, as sent).
    pub from: String,
    /// The user part of the Request-URI (the dialled number or SIP user), if any.
    pub called: Option<String>,
    pub peer: Peer,
    /// Our local address the request reached (for SDP and Contact).
    pub local_ip: IpAddr,
    pub media: Negotiated,
    /// The authenticated user, when digest authentication is on.
    pub user: Option<String>,
    /// The INVITE's headers a trunk may read the called number from.
    pub called_headers: CalledHeaders,
    /// The `[[sip.trunks]]` entry the call came through, when the server matched one.
    pub trunk: Option<String>,
    /// The INVITE's `X-Voicebot-*` headers, as sent (a gateway's own agent legs carry the
    /// escalated call's ids in them: the WebRTC edge shows that context to a browser agent).
    pub voicebot_headers: Vec<(String, String)>,
    /// Whether the caller's side can follow a REFER: its INVITE's `Allow` lists REFER, or it
    /// sent no `Allow` (RFC 3261 20.5: then nothing is known, and phones that transfer exist).
    /// A caller that cannot (the WebRTC edge, some trunks) is transferred bridged.
    pub refer_allowed: bool,
}

/// The parts of an INVITE a called number can come from (a trunk's `called_number` picks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalledHeaders {
    pub request_uri: String,
    pub to: String,
    pub p_called_party_id: Option<String>,
    pub diversion: Option<String>,
}

impl CalledHeaders {
    fn of(msg: &SipMessage) -> CalledHeaders {
        CalledHeaders {
            request_uri: msg.request_uri().unwrap_or("").to_string(),
            to: msg.header("To").unwrap_or("").to_string(),
            p_called_party_id: msg.header("P-Called-Party-ID").map(str::to_string),
            diversion: msg.header_values("Diversion").next().map(str::to_string),
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The caller sent BYE.
    RemoteBye,
    /// The caller cancelled before the answer.
    Cancelled,
    /// The gateway hung up (BYE answered, or not answered in time).
    LocalHangup,
    /// The gateway rejected the call before answering.
    Rejected(u16),
    /// The caller never acknowledged the 200 OK.
    AckTimeout,
    /// The session timer (RFC 4028) ran out without a refresh.
    SessionExpired,
    /// A call we placed was refused with this final response (busy, declined, not found).
    Refused(u16),
    /// A call we placed got no final response within 64*T1 (timer B).
    NoResponse,
}

/// What happened to calls.
#[derive(Debug, Clone)]
pub enum Event {
    IncomingCall(Box<IncomingCall>),
    /// The ACK for the 200 OK arrived.
    CallConfirmed(CallHandle),
    /// A re-INVITE or UPDATE changed the media (hold, resume, codec or address change).
    MediaChanged(CallHandle, Negotiated),
    /// A DTMF digit sent as SIP INFO (application/dtmf-relay or application/dtmf).
    Dtmf(CallHandle, char),
    /// A call we placed ([`SipEndpoint::invite`]) got a provisional response (100, 180, 183).
    OutboundProgress(CallHandle, u16),
    /// A call we placed was answered (2xx, acknowledged by us) with this media.
    OutboundAnswered(CallHandle, Negotiated),
    /// How our REFER ([`SipEndpoint::refer`]) of this call is going.
    Refer(CallHandle, ReferProgress),
    CallEnded(CallHandle, EndReason),
}

/// The progress of a transfer we asked the caller's side to make (RFC 3515 REFER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferProgress {
    /// The REFER was accepted (202): the far end now tries the transfer target.
    Accepted,
    /// The REFER itself was refused with this status (405, 403, 501...), or not answered (408).
    Refused(u16),
    /// A NOTIFY reported the transfer call's status (a `message/sipfrag` status line). `last`:
    /// the subscription ended with it (the result is final).
    Notified { code: u16, last: bool },
}

/// The identifiers of an established dialog, as a `Replaces` header (RFC 3891) names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogIds {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// The far end's Contact URI: where a request meant for that very device goes.
    pub remote_target: String,
}

/// A call the gateway places (the agent leg of a warm transfer).
#[derive(Debug, Clone)]
pub struct OutboundCall {
    /// The Request-URI and To, e.g. `sip:1001@pbx.example.com`.
    pub target: String,
    /// Where the INVITE goes: the target's host, or an outbound proxy.
    pub peer: Peer,
    /// Our address on the way to `peer` (Via, Contact, SDP).
    pub local_ip: IpAddr,
    /// The From header's display name and user (`"Voicebot" <sip:USER@...>`).
    pub from_display: String,
    pub from_user: String,
    /// Where we receive the leg's RTP.
    pub local: LocalMedia,
    /// Extra headers, e.g. `X-Voicebot-Call-Id` and `User-to-User`.
    pub headers: Vec<(String, String)>,
    /// What answers a `401`/`407` challenge to this INVITE; `None`: a challenge is a refusal.
    pub auth: Option<OutboundAuth>,
}

/// The credentials a call we place authenticates with when challenged (a team's for agent
/// calls, a trunk's for calls through it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAuth {
    /// Whose credentials these are, for the logs (`team billing`, `trunk carrier`).
    pub owner: String,
    pub credentials: ClientCredentials,
}

/// A call we placed that has no final answer yet.
#[derive(Debug)]
struct PendingOutbound {
    txn: InviteClientTransaction,
    /// Our INVITE (CANCEL and non-2xx ACKs copy its headers).
    invite: SipMessage,
    branch: String,
    peer: Peer,
    local_ip: IpAddr,
    local_tag: String,
    local: LocalMedia,
    /// The owner hung up before a provisional response: CANCEL as soon as one arrives.
    cancel_wanted: bool,
    cancel: Option<ClientTransaction>,
    /// The Request-URI, for the logs.
    target: String,
    /// Whose credentials and the client answering challenges with them.
    auth: Option<(String, DigestClient)>,
    /// The branches and transactions of earlier INVITEs of this call that were challenged:
    /// they acknowledge retransmitted 401/407s until timer D.
    challenged: Vec<(String, InviteClientTransaction)>,
}

/// Endpoint settings.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Answered plus ringing calls allowed at once; more get 486 Busy Here.
    pub max_calls: usize,
    /// Codecs offered, in the gateway's order (the caller's order decides).
    pub codecs: Vec<Codec>,
    /// Shortest session interval accepted (RFC 4028 Min-SE), seconds.
    pub min_session_expires: u32,
    /// Product name for the User-Agent and Server headers (`[sip] user_agent`); empty: the
    /// headers are left out. The default names no version, which would tell a scanner which
    /// known bugs to try.
    pub user_agent: String,
    /// The user part of our Contact.
    pub contact_user: String,
    /// The port the SIP listeners use (for Contact).
    pub sip_port: u16,
    /// The port of the TLS listener (`[sip.tls] listen`) for Via and Contact over TLS; None
    /// (no listener) names 5061, the default port of `sips:` (RFC 3261 26.2.2).
    pub tls_port: Option<u16>,
    /// SRTP for inbound calls (`[media] srtp`): which transports an offer may use. Chosen
    /// per call ([`SipEndpoint::srtp_mode_for`]); the calls we place offer plain RTP.
    pub srtp: SrtpMode,
    /// Trunks' own SRTP modes (`[[sip.trunks]] srtp`), by the source addresses of their calls
    /// (`addresses`); the first that holds the INVITE's source wins over `srtp`.
    pub srtp_by_source: Vec<(AllowList, SrtpMode)>,
}

impl EndpointConfig {
    /// Our port for Via and Contact on `transport`.
    fn port_for(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Tls(_) => self.tls_port.unwrap_or(5061),
            Transport::Udp | Transport::Tcp(_) => self.sip_port,
        }
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            max_calls: 200,
            codecs: Codec::ALL.to_vec(),
            min_session_expires: 90,
            user_agent: "voicebot-gateway".into(),
            contact_user: "voicebot".into(),
            sip_port: 5060,
            tls_port: None,
            srtp: SrtpMode::default(),
            srtp_by_source: Vec::new(),
        }
    }
}

/// Where a call's dialog stands.
#[derive(Debug)]
enum CallState {
    /// 180 sent; waiting for the owner to accept or reject.
    Ringing,
    /// 200 OK sent; retransmitting it until the ACK (13.3.1.4).
    Answered {
        response: Vec<u8>,
        next: Instant,
        interval: Duration,
        give_up: Instant,
    },
    Confirmed,
    /// Our BYE is out.
    Ending,
}

impl CallState {
    /// A 2xx just sent: retransmitted from T1 on over UDP (13.3.1.4), never over TCP; the
    /// call is given up after 64*T1 without an ACK either way.
    fn answered(response: Vec<u8>, reliable: bool, now: Instant) -> CallState {
        CallState::Answered {
            response,
            next: if reliable {
                now + timeout_64t1()
            } else {
                now + T1
            },
            interval: T1,
            give_up: now + timeout_64t1(),
        }
    }
}

#[derive(Debug)]
struct Call {
    handle: CallHandle,
    call_id: String,
    local_tag: String,
    remote_tag: String,
    peer: Peer,
    local_ip: IpAddr,
    /// The initial INVITE, for building its responses.
    invite: SipMessage,
    invite_key: TxnKey,
    state: CallState,
    remote_cseq: u32,
    local_cseq: u32,
    /// Record-Route of the INVITE, in order (the UAS's route set, 12.1.1).
    route_set: Vec<String>,
    /// The caller's Contact URI (remote target).
    remote_target: String,
    /// The From and To header values as the caller sent them (To gets our tag).
    remote_uri: String,
    local_uri: String,
    media: Negotiated,
    local_media: Option<LocalMedia>,
    /// The offer the current media answers (its m= lines shape the answer, RFC 3264).
    offer: MediaOffer,
    /// CSeq of the INVITE (initial or re-INVITE) whose 2xx is waiting for its ACK.
    pending_ack_cseq: Option<u32>,
    session_expires: Option<Duration>,
    session_deadline: Option<Instant>,
    bye: Option<ClientTransaction>,
    bye_branch: Option<String>,
    /// Our REFER's branch and client transaction, while it runs.
    refer: Option<(String, ClientTransaction)>,
    /// CallEnded was already reported (the BYE may still be finishing).
    end_reported: bool,
    /// A call we placed: the branch of our INVITE and the ACK for its 2xx, sent again when
    /// the 2xx is retransmitted (13.2.2.4).
    invite_ack: Option<(String, Vec<u8>)>,
    /// The INVITE came without an offer (delayed offer): the 200 OK carries ours.
    delayed_offer: bool,
    /// Our offer went out in a 2xx: the ACK must carry the answer (RFC 3264, 3261 13.2.1).
    awaiting_answer: bool,
    /// Which transports this call's offers may use (re-INVITEs are held to the same rule).
    srtp_mode: SrtpMode,
}

/// Identifies a server transaction (RFC 3261 17.2.3): the top Via's branch, its sent-by and
/// the method, ACK matching INVITE (a CANCEL has its own transaction, with the INVITE's branch
/// and sent-by). Two clients that happen to pick the same branch therefore never share a
/// transaction. Branches without the RFC 3261 magic cookie, or with nothing after it (RFC
/// 4475 3.2.1), fall back to the dialog identifiers and CSeq number (RFC 2543 matching).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TxnKey {
    branch: String,
    sent_by: String,
    method: String,
}

impl TxnKey {
    fn of(msg: &SipMessage, method: &Method) -> Option<TxnKey> {
        let method = match method {
            Method::Ack => "INVITE".to_string(),
            m => m.as_str().to_string(),
        };
        let sent_by = via_sent_by(msg.top_via()?)?;
        let branch = match msg.via_branch() {
            Some(b) if b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE) => b.to_string(),
            _ => format!(
                "{}|{}|{}",
                msg.call_id()?,
                msg.from_tag().unwrap_or(""),
                msg.cseq()?.seq
            ),
        };
        Some(TxnKey {
            branch,
            sent_by,
            method,
        })
    }

    /// The INVITE transaction a CANCEL or ACK with this key refers to.
    fn invite(&self) -> TxnKey {
        TxnKey {
            method: "INVITE".into(),
            ..self.clone()
        }
    }
}

/// The prefix of RFC 3261 branch parameters (8.1.1.7).
const MAGIC_COOKIE: &str = "z9hG4bK";

/// The payload type of telephone-event (RFC 4733) in the offers we make.
const DTMF_PT: u8 = 101;

struct ServerTxnEntry {
    txn: ServerTransaction,
    peer: Peer,
    call: Option<CallHandle>,
}

/// The sans-IO SIP user agent server.
pub struct SipEndpoint {
    config: EndpointConfig,
    auth: Option<DigestAuthenticator>,
    allow: AllowList,
    transactions: HashMap<TxnKey, ServerTxnEntry>,
    calls: HashMap<CallHandle, Call>,
    /// Calls we placed, until their final response.
    outbound: HashMap<CallHandle, PendingOutbound>,
    /// (Call-ID, our tag) -> call.
    dialogs: HashMap<(String, String), CallHandle>,
    next_handle: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Maps `Instant`s to wall-clock time for digest nonces.
    epoch: (Instant, SystemTime),
    draining: bool,
    /// BYEs for dialogs a previous run left open ([`SipEndpoint::end_restored`]).
    restored: Vec<restore::RestoredBye>,
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn status_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        422 => "Session Interval Too Small",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "Unknown",
    }
}

impl SipEndpoint {
    pub fn new(
        config: EndpointConfig,
        auth: Option<DigestAuthenticator>,
        allow: AllowList,
        now: Instant,
    ) -> Self {
        Self {
            config,
            auth,
            allow,
            transactions: HashMap::new(),
            calls: HashMap::new(),
            outbound: HashMap::new(),
            dialogs: HashMap::new(),
            next_handle: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            epoch: (now, SystemTime::now()),
            draining: false,
            restored: Vec::new(),
        }
    }

    /// Calls ringing or answered, including calls we placed.
    pub fn active_calls(&self) -> usize {
        self.calls.len() + self.outbound.len()
    }

    /// Stops taking new calls: new INVITEs and out-of-dialog OPTIONS get 503 with
    /// Retry-After; requests in the dialogs in progress (BYE, re-INVITE, UPDATE, INFO,
    /// NOTIFY, ACK) and the calls we place for them go on.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether [`SipEndpoint::drain`] was called.
    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn wall_clock(&self, now: Instant) -> SystemTime {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0)
    }

    fn send(&mut self, to: Peer, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit {
            to,
            bytes,
            reconnect: None,
        });
    }

    /// A datagram or stream frame arrived from `peer` on our `local_ip`.
    pub fn handle_bytes(&mut self, peer: Peer, local_ip: IpAddr, bytes: &[u8], now: Instant) {
        match SipMessage::parse(bytes) {
            Ok(msg) => self.handle_message(peer, local_ip, msg, now),
            Err(ParseError::Incomplete) if bytes.iter().all(|b| b.is_ascii_whitespace()) => {
                // CRLF keep-alive (RFC 5626): answer a double CRLF ping with a single pong.
                if bytes.len() >= 4 && peer.transport == Transport::Udp {
                    self.send(peer, b"\r\n".to_vec());
                }
            }
            Err(e) => self.reject_unparsable(peer, bytes, &e),
        }
    }

    /// Answers a message that could not be parsed with 400 when enough of it is readable to
    /// address a response (RFC 3261 21.4.1, 18.3: a bad Content-Length, say); otherwise drops
    /// it. Responses are never answered.
    fn reject_unparsable(&mut self, peer: Peer, bytes: &[u8], error: &ParseError) {
        tracing::warn!(peer = %peer.addr, %error, "malformed SIP message");
        // Try again without the body and the Content-Length, so the head parses alone.
        let head_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(bytes.len(), |i| i + 4);
        let Ok(text) = std::str::from_utf8(&bytes[..head_end]) else {
            return;
        };
        let mut head: String = text
            .split("\r\n")
            .filter(|l| {
                let name = l.split(':').next().unwrap_or("").trim();
                !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("l")
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        head.push_str("\r\n\r\n");
        if let Ok(msg) = SipMessage::parse(head.as_bytes()) {
            if msg.method().is_some_and(|m| *m != Method::Ack) && msg.answerable() {
                self.reply_stateless(peer, &msg, 400, error);
            }
        }
    }

    /// A response sent outside any transaction, to a request that never gets one (malformed):
    /// its retransmissions are answered the same way again.
    fn reply_stateless(&mut self, peer: Peer, msg: &SipMessage, code: u16, why: &dyn fmt::Display) {
        let mut resp = self.response(msg, code, None);
        resp.push("Warning", warning(399, why));
        self.send(peer, resp.to_bytes());
    }

    /// A parsed message.
    pub fn handle_message(&mut self, peer: Peer, local_ip: IpAddr, msg: SipMessage, now: Instant) {
        if msg.status().is_some() {
            self.handle_response(msg, now);
            return;
        }
        if !msg.answerable() {
            tracing::warn!(peer = %peer.addr, "request without a Via dropped");
            return;
        }
        let is_ack = msg.method() == Some(&Method::Ack);
        if let Err(e) = msg.validate_request() {
            tracing::info!(peer = %peer.addr, error = %e, "malformed request refused");
            if !is_ack {
                self.reply_stateless(peer, &msg, e.status(), &e);
            }
            return;
        }
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let Some(key) = TxnKey::of(&msg, &method) else {
            return;
        };
        // A retransmission of a request we are handling, or the ACK of a non-2xx response.
        if let Some(entry) = self.transactions.get_mut(&key) {
            if method == Method::Ack {
                entry.txn.on_ack(now);
            } else if let Some(bytes) = entry.txn.on_retransmitted_request() {
                let to = entry.peer;
                self.send(to, bytes);
            }
            return;
        }
        if is_ack {
            self.handle_ack(&msg, now);
            return;
        }
        let kind = if method == Method::Invite {
            ServerKind::Invite
        } else {
            ServerKind::NonInvite
        };
        if let Some((code, extra)) = self.refusal(&msg, &method) {
            let mut resp = self.response(&msg, code, Some(&random_token()));
            for (name, value) in extra {
                resp.push(name, value);
            }
            tracing::info!(peer = %peer.addr, code, method = %method, "request refused");
            self.respond_new(peer, key, kind, None, resp, now);
            return;
        }
        match method {
            Method::Cancel => self.handle_cancel(peer, &msg, key, now),
            Method::Invite if msg.to_tag().is_none() => {
                self.handle_new_invite(peer, local_ip, msg, key, now)
            }
            _ if msg.to_tag().is_some() => self.handle_in_dialog(peer, msg, method, key, now),
            // A proxy's keep-alive probe (Kamailio's dispatcher): while draining the 503 takes
            // this gateway out of its set, so new calls go to the others.
            Method::Options if self.draining => {
                let mut resp = self.response(&msg, 503, None);
                resp.push("Retry-After", DRAIN_RETRY_AFTER_S.to_string());
                tracing::debug!(peer = %peer.addr, "OPTIONS refused: draining");
                self.respond_new(peer, key, ServerKind::NonInvite, None, resp, now);
            }
            Method::Options => {
                let mut resp = self.response(&msg, 200, None);
                resp.push("Accept", "application/sdp");
                self.respond_new(peer, key, ServerKind::NonInvite, None, resp, now);
            }
            Method::Bye | Method::Update | Method::Info | Method::Notify => {
                let resp = self.response(&msg, 481, None);
                self.respond_new(peer, key, ServerKind::NonInvite, None, resp, now);
            }
            _ => {
                let resp = self.response(&msg, 405, None);
                self.respond_new(peer, key, ServerKind::NonInvite, None, resp, now);
            }
        }
    }

    /// The checks of RFC 3261 8.2 every new request (but ACK) passes before its method is
    /// acted on, in the RFC's order, as the refusal's status and extra headers: an unknown
    /// method (501; known but unsupported ones get 405 later), a CSeq for another method
    /// (400), a Request-URI scheme other than sip/sips (416), a required extension we lack
    /// (420 with Unsupported; `timer`, RFC 4028, is the one we support; not for CANCEL), and
    /// for an offer (INVITE, UPDATE) a body that is not SDP (415 with Accept) or an Accept
    /// that rules out the SDP answer (406).
    fn refusal(
        &self,
        msg: &SipMessage,
        method: &Method,
    ) -> Option<(u16, Vec<(&'static str, String)>)> {
        if !is_known_method(method) {
            return Some((501, Vec::new()));
        }
        if !msg.cseq_matches() {
            let why = warning(399, &RequestError::CSeqMethod);
            return Some((400, vec![("Warning", why)]));
        }
        let scheme = msg.request_uri().and_then(uri_scheme).unwrap_or("");
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            return Some((416, Vec::new()));
        }
        if *method != Method::Cancel {
            let unsupported: Vec<&str> = msg
                .header_values("Require")
                .filter(|ext| !ext.eq_ignore_ascii_case("timer"))
                .collect();
            if !unsupported.is_empty() {
                return Some((420, vec![("Unsupported", unsupported.join(", "))]));
            }
        }
        if matches!(method, Method::Invite | Method::Update) {
            if !msg.body.is_empty() && !body_is_sdp(msg) {
                return Some((
                    415,
                    vec![
                        ("Accept", "application/sdp".into()),
                        ("Accept-Encoding", "identity".into()),
                    ],
                ));
            }
            if *method == Method::Invite && !accepts_sdp(msg) {
                let why = "399 voicebot \"the answer is SDP, which Accept rules out\"".into();
                return Some((406, vec![("Warning", why)]));
            }
        }
        None
    }

    /// A response with the standard headers every response from us carries.
    /// A final response to a request without a To tag gets a fresh one when the caller names
    /// none (RFC 3261 8.2.6.2).
    fn response(&self, req: &SipMessage, code: u16, to_tag: Option<&str>) -> SipMessage {
        let fresh = (to_tag.is_none() && code > 100).then(random_token);
        let to_tag = to_tag.or(fresh.as_deref());
        let mut resp = SipMessage::response_to(req, code, status_reason(code), to_tag);
        if !self.config.user_agent.is_empty() {
            resp.push("Server", self.config.user_agent.clone());
        }
        if matches!(code, 200 | 405 | 501) || (180..200).contains(&code) {
            resp.push("Allow", ALLOWED);
        }
        resp
    }

    /// Creates a server transaction and sends its first (final) response.
    fn respond_new(
        &mut self,
        peer: Peer,
        key: TxnKey,
        kind: ServerKind,
        call: Option<CallHandle>,
        resp: SipMessage,
        now: Instant,
    ) {
        let mut txn = ServerTransaction::new(kind, peer.transport.is_reliable());
        let code = resp.status().unwrap_or(500);
        if let Some(bytes) = txn.send_response(code, resp.to_bytes(), now) {
            self.send(peer, bytes);
        }
        if !txn.is_terminated() {
            self.transactions
                .insert(key, ServerTxnEntry { txn, peer, call });
        }
    }

    /// Sends a response in an existing server transaction.
    fn respond_in(&mut self, key: &TxnKey, resp: SipMessage, now: Instant) {
        let Some(entry) = self.transactions.get_mut(key) else {
            return;
        };
        let code = resp.status().unwrap_or(500);
        if let Some(bytes) = entry.txn.send_response(code, resp.to_bytes(), now) {
            let to = entry.peer;
            if entry.txn.is_terminated() {
                self.transactions.remove(key);
            }
            self.send(to, bytes);
        }
    }

    /// Our Contact for a dialog on `transport` whose INVITE had `dialog_uri` as its
    /// Request-URI. Over TLS a `sips:` dialog gets a `sips:` Contact (RFC 3261 12.1.1, 8.1.1.8:
    /// it must), a `sip:` one `;transport=tls`, which RFC 5630 deprecates but every peer reads,
    /// and which keeps the peer's requests to us on TLS.
    fn contact(&self, local_ip: IpAddr, transport: Transport, dialog_uri: &str) -> String {
        let host = host_of(local_ip);
        let port = self.config.port_for(transport);
        let user = &self.config.contact_user;
        match transport {
            Transport::Udp => format!("<sip:{user}@{host}:{port}>"),
            Transport::Tcp(_) => format!("<sip:{user}@{host}:{port};transport=tcp>"),
            Transport::Tls(_) if is_sips(dialog_uri) => format!("<sips:{user}@{host}:{port}>"),
            Transport::Tls(_) => format!("<sip:{user}@{host}:{port};transport=tls>"),
        }
    }

    /// Checks an INVITE's digest credentials when `[sip.auth]` is on: the authenticated user
    /// (None when auth is off), or `Err` once a 401 challenge or a throttling 403 is sent.
    fn authenticate_invite(
        &mut self,
        peer: Peer,
        msg: &SipMessage,
        key: &TxnKey,
        local_tag: &str,
        now: Instant,
    ) -> Result<Option<String>, ()> {
        let uri = msg.request_uri().unwrap_or("");
        let wall = self.wall_clock(now);
        if let Some(auth) = self.auth.as_mut() {
            let checked = auth.check(
                peer.addr.ip(),
                "INVITE",
                uri,
                msg.header("Authorization"),
                wall,
            );
            // One log line per burst of guesses (the authenticator says which), not per guess.
            match (&checked.result, checked.log) {
                (Ok(_), _) => {}
                (Err(e), true) => {
                    tracing::info!(peer = %peer.addr, error = %e, "digest authentication refused")
                }
                (Err(e), false) => {
                    tracing::debug!(peer = %peer.addr, error = %e, "digest authentication needed")
                }
            }
            let challenges = match &checked.result {
                Ok(_) | Err(AuthError::Throttled { .. }) => None,
                Err(e) => Some(auth.challenges(wall, matches!(e, AuthError::StaleNonce))),
            };
            match (checked.result, challenges) {
                (Ok(name), _) => return Ok(Some(name)),
                (Err(AuthError::Throttled { retry_after_s }), _) => {
                    // Refused without a password check until the source's window ends.
                    let mut resp = self.response(msg, 403, Some(local_tag));
                    resp.push("Retry-After", retry_after_s.to_string());
                    self.respond_in(key, resp, now);
                    return Err(());
                }
                (Err(_), challenges) => {
                    let mut resp = self.response(msg, 401, Some(local_tag));
                    for challenge in challenges.into_iter().flatten() {
                        resp.push("WWW-Authenticate", challenge);
                    }
                    self.respond_in(key, resp, now);
                    return Err(());
                }
            }
        }
        Ok(None)
    }

    fn handle_new_invite(
        &mut self,
        peer: Peer,
        local_ip: IpAddr,
        msg: SipMessage,
        key: TxnKey,
        now: Instant,
    ) {
        // 100 Trying at once, so the caller stops retransmitting while we decide.
        let mut txn = ServerTransaction::new(ServerKind::Invite, peer.transport.is_reliable());
        let trying = self.response(&msg, 100, None);
        if let Some(bytes) = txn.send_response(100, trying.to_bytes(), now) {
            self.send(peer, bytes);
        }
        self.transactions.insert(
            key.clone(),
            ServerTxnEntry {
                txn,
                peer,
                call: None,
            },
        );
        let local_tag = random_token();
        let reject = |ep: &mut Self, code: u16, extra: &[(&str, String)], why: &str| {
            tracing::info!(peer = %peer.addr, call_id = %escaped(msg.call_id().unwrap_or("")), code, why, "call rejected");
            let mut resp = ep.response(&msg, code, Some(&local_tag));
            for (name, value) in extra {
                resp.push(name, value.clone());
            }
            ep.respond_in(&key, resp, now);
        };
        if !self.allow.allows(peer.addr.ip()) {
            return reject(self, 403, &[], "source address not in the allow-list");
        }
        let uri = msg.request_uri().unwrap_or("");
        if msg
            .header("Max-Forwards")
            .and_then(|v| v.trim().parse::<u32>().ok())
            == Some(0)
        {
            return reject(self, 483, &[], "Max-Forwards is 0");
        }
        // Digest authentication: the user, or the 401/403 already sent.
        let Ok(user) = self.authenticate_invite(peer, &msg, &key, &local_tag, now) else {
            return;
        };
        if self.draining {
            return reject(
                self,
                503,
                &[("Retry-After", DRAIN_RETRY_AFTER_S.to_string())],
                "gateway is draining",
            );
        }
        if self.calls.len() >= self.config.max_calls {
            return reject(
                self,
                486,
                &[("Retry-After", "10".into())],
                "over capacity (max_calls)",
            );
        }
        let srtp_mode = self.srtp_mode_for(peer, &msg);
        let delayed_offer = msg.body.is_empty();
        let negotiated = self.negotiate_invite(peer, &msg, srtp_mode);
        let (offer, media) = match negotiated {
            Ok(pair) => pair,
            Err(e) => {
                tracing::info!(srtp = %srtp_mode, error = %e, "the offer's SDP is not acceptable");
                let warning = warning(305, &e);
                return reject(self, 488, &[("Warning", warning)], "SDP not acceptable");
            }
        };
        let session_expires = match session_expires(&msg) {
            Some(secs) if secs < self.config.min_session_expires => {
                let min = self.config.min_session_expires.to_string();
                return reject(
                    self,
                    422,
                    &[("Min-SE", min)],
                    "session interval below Min-SE",
                );
            }
            Some(secs) => Some(Duration::from_secs(u64::from(secs))),
            None => None,
        };
        let handle = CallHandle(self.next_handle);
        self.next_handle += 1;
        let call_id = msg.call_id().unwrap_or("").to_string();
        let remote_tag = msg.from_tag().unwrap_or("").to_string();
        let route_set: Vec<String> = msg
            .header_values("Record-Route")
            .map(str::to_string)
            .collect();
        let remote_target = msg
            .header("Contact")
            .map(|c| uri_of(split_list(c).next().unwrap_or(c)).to_string())
            .unwrap_or_else(|| uri_of(msg.header("From").unwrap_or("")).to_string());
        let remote_uri = msg.header("From").unwrap_or("").to_string();
        let local_uri = format!("{};tag={local_tag}", msg.header("To").unwrap_or(""));
        // The user part with its %HH escapes decoded (`%73upport` is `support`, RFC 4475
        // 3.1.1.3), unless that would make it unprintable.
        let user_of = |uri: &str| {
            parse_sip_uri(uri)
                .and_then(|u| u.user)
                .map(|u| unescape_uri_part(u).unwrap_or_else(|| u.to_string()))
        };
        let called = user_of(uri).or_else(|| user_of(uri_of(msg.header("To").unwrap_or(""))));
        let cseq = msg.cseq().map_or(0, |c| c.seq);
        if let Some(entry) = self.transactions.get_mut(&key) {
            entry.call = Some(handle);
        }
        let mut ringing = self.response(&msg, 180, Some(&local_tag));
        ringing.push("Contact", self.contact(local_ip, peer.transport, uri));
        for rr in &route_set {
            ringing.push("Record-Route", rr.clone());
        }
        self.respond_in(&key, ringing, now);
        tracing::info!(
            call = %handle, call_id = %escaped(&call_id), peer = %peer.addr, codec = %media.codec,
            srtp = media.srtp.as_ref().map(|k| k.suite.name()).unwrap_or("no"),
            called = %escaped(called.as_deref().unwrap_or("")), delayed_offer, "incoming call"
        );
        self.events
            .push_back(Event::IncomingCall(Box::new(IncomingCall {
                handle,
                call_id: call_id.clone(),
                from: remote_uri.clone(),
                called,
                peer,
                local_ip,
                media: media.clone(),
                user,
                called_headers: CalledHeaders::of(&msg),
                trunk: None,
                voicebot_headers: msg
                    .headers
                    .iter()
                    .filter(|h| {
                        h.name.len() > 11
                            && h.name
                                .get(..11)
                                .is_some_and(|p| p.eq_ignore_ascii_case("X-Voicebot-"))
                    })
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                refer_allowed: msg.header("Allow").is_none()
                    || msg
                        .header_values("Allow")
                        .any(|m| m.trim().eq_ignore_ascii_case("REFER")),
            })));
        self.dialogs
            .insert((call_id.clone(), local_tag.clone()), handle);
        self.calls.insert(
            handle,
            Call {
                handle,
                call_id,
                local_tag,
                remote_tag,
                peer,
                local_ip,
                invite: msg,
                invite_key: key,
                state: CallState::Ringing,
                remote_cseq: cseq,
                local_cseq: 0,
                route_set,
                remote_target,
                remote_uri,
                local_uri,
                media,
                local_media: None,
                offer,
                pending_ack_cseq: None,
                session_expires,
                session_deadline: None,
                bye: None,
                bye_branch: None,
                refer: None,
                end_reported: false,
                invite_ack: None,
                delayed_offer,
                awaiting_answer: false,
                srtp_mode,
            },
        );
    }

    /// The offer of a new INVITE and the media it gives, under the call's SRTP mode. No body
    /// at all is a delayed offer (RFC 3261 13.2.1): ours goes in the 200 OK. It is plain
    /// RTP/AVP, so a call that must be SRTP cannot start that way.
    fn negotiate_invite(
        &self,
        peer: Peer,
        msg: &SipMessage,
        srtp_mode: SrtpMode,
    ) -> Result<(MediaOffer, Negotiated), sdp::SdpError> {
        if msg.body.is_empty() && srtp_mode == SrtpMode::Required {
            return Err(sdp::SdpError::SrtpRequired(
                "none (delayed offer; our offers are RTP/AVP)".into(),
            ));
        }
        if msg.body.is_empty() {
            return Ok(self.delayed_offer_placeholder(peer.addr.ip()));
        }
        sdp::parse_offer_for(&msg.body, srtp_mode).and_then(|offer| {
            sdp::negotiate(&offer, &self.config.codecs).map(|media| (offer, media))
        })
    }

    /// The SRTP mode for an inbound INVITE from `peer`: the mode of the trunk its source
    /// address belongs to, else the gateway's `[media] srtp`.
    fn srtp_mode_for(&self, peer: Peer, _invite: &SipMessage) -> SrtpMode {
        self.config
            .srtp_by_source
            .iter()
            .find(|(sources, _)| sources.allows(peer.addr.ip()))
            .map_or(self.config.srtp, |(_, mode)| *mode)
    }

    /// Answers a ringing call with 200 OK and the SDP answer for `local`.
    pub fn accept(&mut self, handle: CallHandle, local: LocalMedia, now: Instant) {
        let Some(call) = self.calls.get(&handle) else {
            return;
        };
        if !matches!(call.state, CallState::Ringing) {
            return;
        }
        let delayed_offer = call.delayed_offer;
        let body = if delayed_offer {
            sdp::offer_sdp(&local, &self.config.codecs, DTMF_PT)
        } else {
            sdp::answer_sdp_for_offer(&local, &call.offer, &call.media)
        }
        .into_bytes();
        let mut resp = self.response(&call.invite, 200, Some(&call.local_tag));
        resp.push(
            "Contact",
            self.contact(
                call.local_ip,
                call.peer.transport,
                call.invite.request_uri().unwrap_or(""),
            ),
        );
        for rr in &call.route_set {
            resp.push("Record-Route", rr.clone());
        }
        resp.push("Supported", "timer");
        if let Some(se) = call.session_expires {
            resp.push("Session-Expires", format!("{};refresher=uac", se.as_secs()));
            resp.push("Require", "timer");
        }
        resp.set_body("application/sdp", body);
        let bytes = resp.to_bytes();
        let key = call.invite_key.clone();
        let invite_cseq = call.remote_cseq;
        let reliable = call.peer.transport.is_reliable();
        self.respond_in(&key, resp, now);
        if let Some(call) = self.calls.get_mut(&handle) {
            call.local_media = Some(local);
            call.pending_ack_cseq = Some(invite_cseq);
            call.awaiting_answer = delayed_offer;
            call.state = CallState::answered(bytes, reliable, now);
            call.session_deadline = call.session_expires.map(|se| now + se);
            tracing::info!(call = %handle, "call answered");
        }
    }

    /// Refuses a ringing call (e.g. 503 when no media port is free).
    pub fn reject(&mut self, handle: CallHandle, code: u16, now: Instant) {
        self.refuse(handle, code, None, now);
    }

    /// Refuses a ringing call with `code` and, when given, a Retry-After of that many seconds
    /// (a 503 from admission control: the trunk may try another gateway, or this one later).
    pub fn refuse(
        &mut self,
        handle: CallHandle,
        code: u16,
        retry_after_s: Option<u32>,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(&handle) else {
            return;
        };
        if !matches!(call.state, CallState::Ringing) {
            return;
        }
        let mut resp = self.response(&call.invite, code, Some(&call.local_tag));
        if let Some(secs) = retry_after_s {
            resp.push("Retry-After", secs.to_string());
        }
        let key = call.invite_key.clone();
        self.respond_in(&key, resp, now);
        self.end_call(handle, EndReason::Rejected(code));
    }

    /// Ends a call from our side: BYE once answered, 480 while still ringing.
    pub fn hangup(&mut self, handle: CallHandle, now: Instant) {
        if self.outbound.contains_key(&handle) {
            self.cancel(handle, now);
            return;
        }
        let Some(call) = self.calls.get(&handle) else {
            return;
        };
        match call.state {
            CallState::Ringing => self.reject(handle, 480, now),
            CallState::Ending => {}
            CallState::Answered { .. } | CallState::Confirmed => self.send_bye(handle, now),
        }
    }

    /// A request inside `call`'s dialog (RFC 3261 12.2.1.1) with a fresh branch and the next
    /// CSeq; returns it with the branch.
    fn dialog_request(
        config: &EndpointConfig,
        call: &mut Call,
        method: Method,
    ) -> (SipMessage, String) {
        call.local_cseq = call.local_cseq.max(1) + 1;
        let branch = format!("z9hG4bK{}", random_token());
        let local_host = host_of(call.local_ip);
        let mut req = SipMessage::request(method.clone(), call.remote_target.clone());
        req.push(
            "Via",
            format!(
                "SIP/2.0/{} {local_host}:{};branch={branch};rport",
                call.peer.transport.via_name(),
                config.port_for(call.peer.transport)
            ),
        );
        req.push("Max-Forwards", "70");
        for route in &call.route_set {
            req.push("Route", route.clone());
        }
        req.push("From", call.local_uri.clone());
        req.push("To", call.remote_uri.clone());
        req.push("Call-ID", call.call_id.clone());
        req.push("CSeq", format!("{} {}", call.local_cseq, method.as_str()));
        if !config.user_agent.is_empty() {
            req.push("User-Agent", config.user_agent.clone());
        }
        (req, branch)
    }

    /// Sends an in-dialog request of `handle` the way the call came (symmetric signalling,
    /// which also holds behind NAT and on TCP, where the caller's connection is reused).
    fn send_in_dialog(&mut self, handle: CallHandle, bytes: Vec<u8>) {
        let Some(call) = self.calls.get(&handle) else {
            return;
        };
        let to = call.peer;
        let reconnect = target_address(&call.remote_target);
        self.transmits.push_back(Transmit {
            to,
            bytes,
            reconnect,
        });
    }

    fn send_bye(&mut self, handle: CallHandle, now: Instant) {
        let Some(call) = self.calls.get_mut(&handle) else {
            return;
        };
        let (bye, branch) = Self::dialog_request(&self.config, call, Method::Bye);
        call.state = CallState::Ending;
        let bytes = bye.to_bytes();
        call.bye = Some(ClientTransaction::new(
            bytes.clone(),
            call.peer.transport.is_reliable(),
            now,
        ));
        call.bye_branch = Some(branch);
        tracing::info!(call = %handle, "sending BYE");
        self.send_in_dialog(handle, bytes);
    }

    /// Asks the far end of an answered call to call `refer_to` instead (RFC 3515 REFER): a
    /// blind transfer, or an attended one when `refer_to` carries a `Replaces` header (RFC
    /// 3891). Its progress comes as [`Event::Refer`]; the call itself stays up until someone
    /// hangs up. Returns false when the call is not in a state to be transferred (not
    /// answered, ending, or a REFER already running).
    pub fn refer(&mut self, handle: CallHandle, refer_to: &str, now: Instant) -> bool {
        let Some(call) = self.calls.get(&handle) else {
            return false;
        };
        let running = call
            .refer
            .as_ref()
            .is_some_and(|(_, t)| !t.is_answered() && !t.is_terminated());
        if !matches!(
            call.state,
            CallState::Confirmed | CallState::Answered { .. }
        ) || running
        {
            return false;
        }
        let contact = self.contact(
            call.local_ip,
            call.peer.transport,
            call.invite.request_uri().unwrap_or(""),
        );
        let referred_by = uri_of(&call.local_uri).to_string();
        let Some(call) = self.calls.get_mut(&handle) else {
            return false;
        };
        let (mut refer, branch) = Self::dialog_request(&self.config, call, Method::Refer);
        refer.push("Contact", contact);
        refer.push("Refer-To", format!("<{refer_to}>"));
        refer.push("Referred-By", format!("<{referred_by}>"));
        refer.push("Content-Length", "0");
        let bytes = refer.to_bytes();
        let txn = ClientTransaction::new(bytes.clone(), call.peer.transport.is_reliable(), now);
        call.refer = Some((branch, txn));
        tracing::info!(call = %handle, refer_to = %escaped(refer_to), "sending REFER");
        self.send_in_dialog(handle, bytes);
        true
    }

    /// The identifiers of an answered call's dialog (for a `Replaces` header).
    pub fn dialog_ids(&self, handle: CallHandle) -> Option<DialogIds> {
        let call = self.calls.get(&handle)?;
        Some(DialogIds {
            call_id: call.call_id.clone(),
            local_tag: call.local_tag.clone(),
            remote_tag: call.remote_tag.clone(),
            remote_target: call.remote_target.clone(),
        })
    }

    fn handle_response(&mut self, msg: SipMessage, now: Instant) {
        let (Some(code), Some(branch)) = (msg.status(), msg.via_branch()) else {
            return;
        };
        let pending = self
            .outbound
            .iter()
            .find(|(_, p)| p.branch == branch)
            .map(|(h, _)| *h);
        if pending.is_none() && self.challenged_response(branch, code, now) {
            return;
        }
        if let Some(handle) = pending {
            let is_cancel = msg.cseq().is_some_and(|c| c.method == Method::Cancel);
            if is_cancel {
                if let Some(cancel) = self
                    .outbound
                    .get_mut(&handle)
                    .and_then(|p| p.cancel.as_mut())
                {
                    cancel.on_response(code, now);
                }
            } else {
                self.outbound_response(handle, msg, code, now);
            }
            return;
        }
        // A retransmitted 2xx for a call we placed and acknowledged: acknowledge it again.
        let ack = self.calls.values().find_map(|c| {
            c.invite_ack
                .as_ref()
                .filter(|(b, _)| b == branch)
                .map(|a| (c.peer, a.1.clone()))
        });
        if let Some((peer, ack)) = ack {
            if (200..300).contains(&code) {
                self.send(peer, ack);
            }
            return;
        }
        let refer = self
            .calls
            .values()
            .find(|c| c.refer.as_ref().is_some_and(|(b, _)| b == branch))
            .map(|c| c.handle);
        if let Some(handle) = refer {
            let done = self
                .calls
                .get_mut(&handle)
                .and_then(|c| c.refer.as_mut())
                .and_then(|(_, t)| t.on_response(code, now));
            if let Some(code) = done {
                let progress = if (200..300).contains(&code) {
                    ReferProgress::Accepted
                } else {
                    ReferProgress::Refused(code)
                };
                tracing::info!(call = %handle, code, "REFER answered");
                self.events.push_back(Event::Refer(handle, progress));
            }
            return;
        }
        let handle = self
            .calls
            .values()
            .find(|c| c.bye_branch.as_deref() == Some(branch))
            .map(|c| c.handle);
        if self.restored_response(branch, code, now) {
            return;
        }
        let Some(handle) = handle else {
            tracing::debug!(code, "response matches no transaction");
            return;
        };
        let done = self
            .calls
            .get_mut(&handle)
            .and_then(|c| c.bye.as_mut())
            .and_then(|t| t.on_response(code, now));
        if let Some(code) = done {
            tracing::info!(call = %handle, code, "BYE answered");
            self.end_call(handle, EndReason::LocalHangup);
        }
    }

    /// Places a call (RFC 3261 13.2): sends the INVITE with our SDP offer and returns its
    /// handle. Progress comes as [`Event::OutboundProgress`], the answer as
    /// [`Event::OutboundAnswered`] (the endpoint sends the ACK), a refusal or timeout as
    /// [`Event::CallEnded`]. [`SipEndpoint::hangup`] cancels it while it rings.
    pub fn invite(&mut self, call: OutboundCall, now: Instant) -> CallHandle {
        let handle = CallHandle(self.next_handle);
        self.next_handle += 1;
        let local_tag = random_token();
        let branch = format!("z9hG4bK{}", random_token());
        let call_id = format!("{}@voicebot", random_token());
        let host = host_of(call.local_ip);
        let mut invite = SipMessage::request(Method::Invite, call.target.clone());
        invite.push(
            "Via",
            format!(
                "SIP/2.0/{} {host}:{};branch={branch};rport",
                call.peer.transport.via_name(),
                self.config.port_for(call.peer.transport)
            ),
        );
        invite.push("Max-Forwards", "70");
        let display = call.from_display.replace('"', "");
        invite.push(
            "From",
            format!(
                "\"{display}\" <sip:{}@{host}:{}>;tag={local_tag}",
                call.from_user, self.config.sip_port
            ),
        );
        invite.push("To", format!("<{}>", call.target));
        invite.push("Call-ID", call_id.clone());
        invite.push("CSeq", "1 INVITE");
        invite.push(
            "Contact",
            self.contact(call.local_ip, call.peer.transport, &call.target),
        );
        invite.push("Allow", ALLOWED);
        invite.push("Supported", "timer");
        if !self.config.user_agent.is_empty() {
            invite.push("User-Agent", self.config.user_agent.clone());
        }
        for (name, value) in &call.headers {
            invite.push(name, value.clone());
        }
        let offer = sdp::offer_sdp(&call.local, &self.config.codecs, DTMF_PT);
        invite.set_body("application/sdp", offer.into_bytes());
        let bytes = invite.to_bytes();
        let txn =
            InviteClientTransaction::new(bytes.clone(), call.peer.transport.is_reliable(), now);
        tracing::info!(call = %handle, call_id = %escaped(&call_id), target = %escaped(&call.target), peer = %call.peer.addr, "placing call");
        self.outbound.insert(
            handle,
            PendingOutbound {
                txn,
                invite,
                branch,
                peer: call.peer,
                local_ip: call.local_ip,
                local_tag,
                local: call.local,
                cancel_wanted: false,
                cancel: None,
                target: call.target.clone(),
                auth: call
                    .auth
                    .map(|a| (a.owner, DigestClient::new(a.credentials))),
                challenged: Vec::new(),
            },
        );
        self.send(call.peer, bytes);
        handle
    }

    /// The stream connection `transport` names could not be opened (refused, TLS handshake
    /// failed, the peer's certificate not trusted): the calls we placed over it that have no
    /// final response end at once, as refused with 503 (RFC 3261 8.1.3.1: a transport error
    /// counts as 503 Service Unavailable), rather than after timer B's 32 s.
    pub fn transport_failed(&mut self, transport: Transport) {
        let failed: Vec<CallHandle> = self
            .outbound
            .iter()
            .filter(|(_, p)| p.peer.transport == transport && !p.txn.heard_back())
            .map(|(h, _)| *h)
            .collect();
        for handle in failed {
            self.outbound.remove(&handle);
            tracing::warn!(call = %handle, ?transport, "the connection for the call we placed failed; ending it as 503");
            self.events
                .push_back(Event::CallEnded(handle, EndReason::Refused(503)));
        }
    }

    /// Cancels a call we placed that has no final response yet (9.1): the CANCEL goes out once
    /// a provisional response has arrived; the 487 then ends the call.
    fn cancel(&mut self, handle: CallHandle, now: Instant) {
        let Some(p) = self.outbound.get_mut(&handle) else {
            return;
        };
        if p.cancel.is_some()
            || p.txn.state() == InviteClientState::Completed
            || p.txn.is_terminated()
        {
            return;
        }
        if !p.txn.heard_back() {
            p.cancel_wanted = true;
            return;
        }
        let mut cancel = SipMessage::request(
            Method::Cancel,
            p.invite.request_uri().unwrap_or("").to_string(),
        );
        for name in ["Via", "Route", "From", "To", "Call-ID"] {
            for value in p.invite.header_values(name) {
                cancel.push(name, value.to_string());
            }
        }
        cancel.push("Max-Forwards", "70");
        let seq = p.invite.cseq().map_or(1, |c| c.seq);
        cancel.push("CSeq", format!("{seq} CANCEL"));
        // The INVITE's credentials, as a proxy that challenged it expects (RFC 3261 22.1).
        challenge::copy_credentials(&p.invite, &mut cancel);
        let bytes = cancel.to_bytes();
        p.cancel = Some(ClientTransaction::new(
            bytes.clone(),
            p.peer.transport.is_reliable(),
            now,
        ));
        let peer = p.peer;
        tracing::info!(call = %handle, "cancelling the call we placed");
        self.send(peer, bytes);
    }

    /// The ACK for a final response to our INVITE: for a 2xx a new transaction to the remote
    /// target along the route set (13.2.2.4), for a failure the same branch and Request-URI
    /// as the INVITE (17.1.1.3).
    fn ack_for(
        p: &PendingOutbound,
        response: &SipMessage,
        success: Option<(&str, &[String])>,
        sip_port: u16,
    ) -> Vec<u8> {
        let uri = match success {
            Some((target, _)) => target.to_string(),
            None => p.invite.request_uri().unwrap_or("").to_string(),
        };
        let mut ack = SipMessage::request(Method::Ack, uri);
        match success {
            Some(_) => ack.push(
                "Via",
                format!(
                    "SIP/2.0/{} {}:{sip_port};branch=z9hG4bK{};rport",
                    p.peer.transport.via_name(),
                    host_of(p.local_ip),
                    random_token()
                ),
            ),
            None => ack.push("Via", p.invite.top_via().unwrap_or("").to_string()),
        };
        ack.push("Max-Forwards", "70");
        if let Some((_, routes)) = success {
            for route in routes {
                ack.push("Route", route.clone());
            }
        }
        ack.push("From", p.invite.header("From").unwrap_or("").to_string());
        ack.push("To", response.header("To").unwrap_or("").to_string());
        ack.push("Call-ID", p.invite.call_id().unwrap_or("").to_string());
        let seq = p.invite.cseq().map_or(1, |c| c.seq);
        ack.push("CSeq", format!("{seq} ACK"));
        if success.is_some() {
            challenge::copy_credentials(&p.invite, &mut ack);
        }
        ack.to_bytes()
    }

    /// A response to the INVITE of a call we placed.
    fn outbound_response(&mut self, handle: CallHandle, msg: SipMessage, code: u16, now: Instant) {
        let sip_port = self
            .outbound
            .get(&handle)
            .map_or(self.config.sip_port, |p| {
                self.config.port_for(p.peer.transport)
            });
        if code < 200 {
            let Some(p) = self.outbound.get_mut(&handle) else {
                return;
            };
            p.txn.on_provisional();
            let cancel_now = p.cancel_wanted && p.cancel.is_none();
            // 100 Trying too: it tells the owner that this address is alive (RFC 3263
            // failover waits for a response, not for ringing).
            self.events.push_back(Event::OutboundProgress(handle, code));
            if cancel_now {
                self.cancel(handle, now);
            }
            return;
        }
        if (code == 401 || code == 407) && self.answer_outbound_challenge(handle, &msg, code, now) {
            return;
        }
        if code >= 300 {
            let Some(p) = self.outbound.get_mut(&handle) else {
                return;
            };
            let ack = Self::ack_for(p, &msg, None, sip_port);
            let first = p.txn.state() != InviteClientState::Completed;
            let peer = p.peer;
            if let Some(ack) = p.txn.on_final_failure(ack, now) {
                self.send(peer, ack);
            }
            if first {
                let reason = if code == 487 {
                    EndReason::Cancelled
                } else {
                    EndReason::Refused(code)
                };
                tracing::info!(call = %handle, code, "the call we placed was not answered");
                self.events.push_back(Event::CallEnded(handle, reason));
            }
            // The transaction lingers (timer D) to acknowledge retransmissions.
            return;
        }
        // 2xx: the dialog starts; we acknowledge it ourselves.
        let Some(mut p) = self.outbound.remove(&handle) else {
            return;
        };
        p.txn.on_success();
        let mut route_set: Vec<String> = msg
            .header_values("Record-Route")
            .map(str::to_string)
            .collect();
        route_set.reverse();
        let remote_target = msg
            .header("Contact")
            .map(|c| uri_of(split_list(c).next().unwrap_or(c)).to_string())
            .unwrap_or_else(|| p.invite.request_uri().unwrap_or("").to_string());
        let ack = Self::ack_for(&p, &msg, Some((&remote_target, &route_set)), sip_port);
        self.send(p.peer, ack.clone());
        let answer = sdp::parse_offer(&msg.body)
            .and_then(|offer| sdp::negotiate(&offer, &self.config.codecs).map(|m| (offer, m)));
        let remote_tag = msg.to_tag().unwrap_or("").to_string();
        let call_id = p.invite.call_id().unwrap_or("").to_string();
        let (offer, media) = match answer {
            Ok(pair) => pair,
            Err(e) => {
                // Answered with media we cannot use: acknowledge, then hang up (13.2.2.4).
                tracing::warn!(call = %handle, error = %e, "the answer's SDP is not acceptable; hanging up");
                self.events
                    .push_back(Event::CallEnded(handle, EndReason::Refused(488)));
                let mut placeholder = self.outbound_call(
                    handle,
                    &p,
                    &msg,
                    remote_tag,
                    remote_target,
                    route_set,
                    call_id,
                );
                placeholder.end_reported = true;
                placeholder.invite_ack = Some((p.branch.clone(), ack));
                self.calls.insert(handle, placeholder);
                self.send_bye(handle, now);
                return;
            }
        };
        let mut call = self.outbound_call(
            handle,
            &p,
            &msg,
            remote_tag,
            remote_target,
            route_set,
            call_id,
        );
        call.invite_ack = Some((p.branch.clone(), ack));
        call.media = media.clone();
        call.offer = offer;
        let cancelled = p.cancel_wanted || p.cancel.is_some();
        self.dialogs
            .insert((call.call_id.clone(), call.local_tag.clone()), handle);
        self.calls.insert(handle, call);
        if cancelled {
            // The answer crossed our CANCEL: the call exists now and must be ended (9.1).
            tracing::info!(call = %handle, "answered after we cancelled; hanging up");
            self.events
                .push_back(Event::CallEnded(handle, EndReason::Cancelled));
            if let Some(c) = self.calls.get_mut(&handle) {
                c.end_reported = true;
            }
            self.send_bye(handle, now);
            return;
        }
        tracing::info!(call = %handle, codec = %media.codec, "the call we placed was answered");
        self.events
            .push_back(Event::OutboundAnswered(handle, media));
    }

    /// The dialog state of a call we placed, from its 2xx.
    #[allow(clippy::too_many_arguments)]
    fn outbound_call(
        &self,
        handle: CallHandle,
        p: &PendingOutbound,
        response: &SipMessage,
        remote_tag: String,
        remote_target: String,
        route_set: Vec<String>,
        call_id: String,
    ) -> Call {
        let placeholder_media = Negotiated {
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event_pt: None,
            remote_rtp: SocketAddr::new(p.local_ip, 0),
            direction: sdp::Direction::Inactive,
            ptime_ms: 20,
            on_hold: true,
            srtp: None,
        };
        let placeholder_offer = MediaOffer {
            remote_rtp: SocketAddr::new(p.local_ip, 0),
            codecs: Vec::new(),
            telephone_event_pt: None,
            direction: sdp::Direction::Inactive,
            ptime_ms: None,
            media_lines: Vec::new(),
            audio_index: 0,
            secure: false,
            crypto: Vec::new(),
        };
        let session_expires = session_expires(response).map(|s| Duration::from_secs(u64::from(s)));
        Call {
            handle,
            call_id,
            local_tag: p.local_tag.clone(),
            remote_tag,
            peer: p.peer,
            local_ip: p.local_ip,
            invite: p.invite.clone(),
            invite_key: TxnKey {
                branch: p.branch.clone(),
                sent_by: String::new(),
                method: "INVITE".into(),
            },
            state: CallState::Confirmed,
            remote_cseq: 0,
            local_cseq: p.invite.cseq().map_or(1, |c| c.seq),
            route_set,
            remote_target,
            remote_uri: response.header("To").unwrap_or("").to_string(),
            local_uri: p.invite.header("From").unwrap_or("").to_string(),
            media: placeholder_media,
            local_media: Some(p.local),
            offer: placeholder_offer,
            pending_ack_cseq: None,
            session_expires,
            session_deadline: None,
            bye: None,
            bye_branch: None,
            refer: None,
            end_reported: false,
            invite_ack: None,
            delayed_offer: false,
            awaiting_answer: false,
            // Our offers are plain RTP/AVP (agent legs).
            srtp_mode: SrtpMode::Off,
        }
    }

    fn handle_ack(&mut self, msg: &SipMessage, now: Instant) {
        let Some(handle) = self.dialog_of(msg) else {
            return;
        };
        let cseq = msg.cseq().map(|c| c.seq);
        let Some(call) = self.calls.get_mut(&handle) else {
            return;
        };
        if call.pending_ack_cseq.is_some() && call.pending_ack_cseq == cseq {
            call.pending_ack_cseq = None;
            if call.awaiting_answer && !self.answer_in_ack(handle, msg, now) {
                return;
            }
            let Some(call) = self.calls.get_mut(&handle) else {
                return;
            };
            if matches!(call.state, CallState::Answered { .. }) {
                call.state = CallState::Confirmed;
                tracing::info!(call = %handle, "call confirmed (ACK)");
                self.events.push_back(Event::CallConfirmed(handle));
            }
        }
    }

    /// The dialog a request belongs to: Call-ID and our tag, and the caller's tag must match
    /// (RFC 3261 12.2.2).
    fn dialog_of(&self, msg: &SipMessage) -> Option<CallHandle> {
        let key = (msg.call_id()?.to_string(), msg.to_tag()?.to_string());
        let handle = self.dialogs.get(&key).copied()?;
        let call = self.calls.get(&handle)?;
        (msg.from_tag().unwrap_or("") == call.remote_tag).then_some(handle)
    }

    fn handle_cancel(&mut self, peer: Peer, msg: &SipMessage, key: TxnKey, now: Instant) {
        // The CANCEL matches the INVITE transaction with the same branch (9.2).
        let invite_key = key.invite();
        let target = self
            .transactions
            .get(&invite_key)
            .map(|e| (e.call, e.txn.state()));
        let Some((call, state)) = target else {
            let resp = self.response(msg, 481, None);
            self.respond_new(peer, key, ServerKind::NonInvite, None, resp, now);
            return;
        };
        let resp = self.response(msg, 200, None);
        self.respond_new(peer, key, ServerKind::NonInvite, None, resp, now);
        if state != crate::sip::transaction::ServerState::Proceeding {
            return; // already answered: the CANCEL has no effect
        }
        if let Some(handle) = call {
            let Some(c) = self.calls.get(&handle) else {
                return;
            };
            if matches!(c.state, CallState::Ringing) {
                let resp = self.response(&c.invite, 487, Some(&c.local_tag));
                self.respond_in(&invite_key, resp, now);
                tracing::info!(call = %handle, "caller cancelled");
                self.end_call(handle, EndReason::Cancelled);
            }
        }
    }

    fn handle_in_dialog(
        &mut self,
        peer: Peer,
        msg: SipMessage,
        method: Method,
        key: TxnKey,
        now: Instant,
    ) {
        let kind = if method == Method::Invite {
            ServerKind::Invite
        } else {
            ServerKind::NonInvite
        };
        let Some(handle) = self.dialog_of(&msg) else {
            let resp = self.response(&msg, 481, None);
            self.respond_new(peer, key, kind, None, resp, now);
            return;
        };
        let cseq = msg.cseq().map_or(0, |c| c.seq);
        let stale = self
            .calls
            .get(&handle)
            .is_some_and(|c| cseq <= c.remote_cseq && method != Method::Ack);
        if stale {
            let resp = self.response(&msg, 500, None);
            self.respond_new(peer, key, kind, Some(handle), resp, now);
            return;
        }
        if let Some(call) = self.calls.get_mut(&handle) {
            call.remote_cseq = cseq;
        }
        match method {
            Method::Bye => {
                let resp = self.response(&msg, 200, None);
                self.respond_new(peer, key, kind, Some(handle), resp, now);
                tracing::info!(call = %handle, "caller hung up (BYE)");
                self.end_call(handle, EndReason::RemoteBye);
            }
            Method::Invite | Method::Update => {
                self.handle_reoffer(peer, msg, method, key, handle, now)
            }
            Method::Info => {
                let digit = dtmf_from_info(&msg);
                let resp = self.response(&msg, 200, None);
                self.respond_new(peer, key, kind, Some(handle), resp, now);
                if let Some(d) = digit {
                    self.events.push_back(Event::Dtmf(handle, d));
                }
            }
            Method::Options => {
                let resp = self.response(&msg, 200, None);
                self.respond_new(peer, key, kind, Some(handle), resp, now);
            }
            Method::Notify => self.handle_notify(peer, &msg, key, handle, now),
            _ => {
                let resp = self.response(&msg, 405, None);
                self.respond_new(peer, key, kind, Some(handle), resp, now);
            }
        }
    }

    /// A NOTIFY in a call's dialog: the progress of the transfer our REFER asked for (RFC
    /// 3515 section 2.4.5: `Event: refer`, a `message/sipfrag` status line). Other event
    /// packages get 489.
    fn handle_notify(
        &mut self,
        peer: Peer,
        msg: &SipMessage,
        key: TxnKey,
        handle: CallHandle,
        now: Instant,
    ) {
        let package = msg.header("Event").map(|e| {
            e.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let referred = self.calls.get(&handle).is_some_and(|c| c.refer.is_some());
        if package.as_deref() != Some("refer") || !referred {
            let code = if package.as_deref() == Some("refer") {
                481
            } else {
                489
            };
            let resp = self.response(msg, code, None);
            self.respond_new(peer, key, ServerKind::NonInvite, Some(handle), resp, now);
            return;
        }
        let resp = self.response(msg, 200, None);
        self.respond_new(peer, key, ServerKind::NonInvite, Some(handle), resp, now);
        let last = msg
            .header("Subscription-State")
            .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"));
        match sipfrag_status(&msg.body) {
            Some(code) => {
                tracing::info!(call = %handle, code, last, "transfer progress (NOTIFY)");
                self.events
                    .push_back(Event::Refer(handle, ReferProgress::Notified { code, last }));
            }
            // A final NOTIFY without a readable status: the transfer's result is unknown,
            // which the owner treats as a failure.
            None if last => {
                tracing::warn!(call = %handle, "final transfer NOTIFY without a sipfrag status");
                self.events.push_back(Event::Refer(
                    handle,
                    ReferProgress::Notified { code: 500, last },
                ));
            }
            None => tracing::debug!(call = %handle, "transfer NOTIFY without a sipfrag status"),
        }
    }

    /// re-INVITE or UPDATE: a session refresh, with or without a new offer (hold, resume,
    /// codec change).
    fn handle_reoffer(
        &mut self,
        peer: Peer,
        msg: SipMessage,
        method: Method,
        key: TxnKey,
        handle: CallHandle,
        now: Instant,
    ) {
        let kind = if method == Method::Invite {
            ServerKind::Invite
        } else {
            ServerKind::NonInvite
        };
        let Some(call) = self.calls.get(&handle) else {
            return;
        };
        if method == Method::Invite && call.pending_ack_cseq.is_some() {
            // A 2xx of ours is still waiting for its ACK (RFC 3261 14.2).
            let mut resp = self.response(&msg, 500, None);
            resp.push("Retry-After", "1");
            self.respond_new(peer, key, kind, Some(handle), resp, now);
            return;
        }
        let mut new_media = None;
        if !msg.body.is_empty() {
            let current = call.media.srtp.as_ref();
            match sdp::parse_offer_for(&msg.body, call.srtp_mode).and_then(|offer| {
                sdp::negotiate_with(&offer, &self.config.codecs, current)
                    .map(|media| (offer, media))
            }) {
                Ok(pair) => new_media = Some(pair),
                Err(e) => {
                    let mut resp = self.response(&msg, 488, None);
                    resp.push("Warning", warning(305, &e));
                    self.respond_new(peer, key, kind, Some(handle), resp, now);
                    return;
                }
            }
        }
        let (offer, media) = new_media
            .clone()
            .unwrap_or_else(|| (call.offer.clone(), call.media.clone()));
        let mut resp = self.response(&msg, 200, None);
        resp.push(
            "Contact",
            self.contact(
                call.local_ip,
                call.peer.transport,
                call.invite.request_uri().unwrap_or(""),
            ),
        );
        resp.push("Supported", "timer");
        let session_expires = session_expires(&msg)
            .map(|s| Duration::from_secs(u64::from(s.max(self.config.min_session_expires))))
            .or(call.session_expires);
        if let Some(se) = session_expires {
            resp.push("Session-Expires", format!("{};refresher=uac", se.as_secs()));
        }
        let mut local = call.local_media;
        // An offerless re-INVITE gets our full offer; the ACK brings the answer (RFC 3264 8).
        let our_offer = new_media.is_none() && method == Method::Invite;
        if let Some(l) = local.as_mut() {
            l.session_version += 1;
            if our_offer {
                let te = call.media.telephone_event_pt.unwrap_or(DTMF_PT);
                let offer = sdp::offer_sdp(l, &self.config.codecs, te);
                resp.set_body("application/sdp", offer.into_bytes());
            } else if new_media.is_some() {
                let answer = sdp::answer_sdp_for_offer(l, &offer, &media);
                resp.set_body("application/sdp", answer.into_bytes());
            }
        }
        let bytes = resp.to_bytes();
        let cseq = msg.cseq().map_or(0, |c| c.seq);
        self.respond_new(peer, key, kind, Some(handle), resp, now);
        let reliable = peer.transport.is_reliable();
        if let Some(call) = self.calls.get_mut(&handle) {
            call.local_media = local;
            call.session_expires = session_expires;
            call.session_deadline = session_expires.map(|se| now + se);
            if method == Method::Invite {
                call.pending_ack_cseq = Some(cseq);
                call.awaiting_answer = our_offer && local.is_some();
                if matches!(call.state, CallState::Confirmed) {
                    call.state = CallState::answered(bytes, reliable, now);
                }
            }
            if let Some((offer, m)) = new_media {
                call.offer = offer;
                let changed = m != call.media;
                call.media = m.clone();
                if changed {
                    tracing::info!(call = %handle, codec = %m.codec, hold = m.on_hold, "media changed");
                    self.events.push_back(Event::MediaChanged(handle, m));
                }
            }
        }
    }

    fn end_call(&mut self, handle: CallHandle, reason: EndReason) {
        if let Some(call) = self.calls.remove(&handle) {
            self.dialogs
                .remove(&(call.call_id.clone(), call.local_tag.clone()));
            if !call.end_reported {
                tracing::info!(call = %handle, ?reason, "call ended");
                self.events.push_back(Event::CallEnded(handle, reason));
            }
        }
    }

    /// The earliest moment [`handle_timeout`](Self::handle_timeout) has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        let txns = self
            .transactions
            .values()
            .filter_map(|e| e.txn.next_timer());
        let calls = self.calls.values().flat_map(|c| {
            let answered = match &c.state {
                CallState::Answered { next, give_up, .. } => Some((*next).min(*give_up)),
                _ => None,
            };
            [
                answered,
                c.session_deadline,
                c.bye.as_ref().and_then(|b| b.next_timer()),
                c.refer.as_ref().and_then(|(_, t)| t.next_timer()),
            ]
        });
        let outbound = self.outbound.values().flat_map(|p| {
            [
                p.txn.next_timer(),
                p.cancel.as_ref().and_then(|c| c.next_timer()),
            ]
            .into_iter()
            .chain(p.challenged.iter().map(|(_, t)| t.next_timer()))
        });
        txns.chain(calls.flatten())
            .chain(outbound.flatten())
            .chain(self.restored_next_timer())
            .min()
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.restored_timers(now);
        let mut sends = Vec::new();
        self.transactions.retain(|_, entry| {
            if entry.txn.next_timer().is_some_and(|t| t <= now) {
                match entry.txn.on_timer(now) {
                    Some(ServerAction::Send(bytes)) => sends.push((entry.peer, bytes)),
                    Some(ServerAction::AckTimeout) => {
                        tracing::warn!(peer = %entry.peer.addr, "no ACK for a final response (timer H)");
                    }
                    None => {}
                }
            }
            !entry.txn.is_terminated()
        });
        let mut no_response = Vec::new();
        self.outbound.retain(|handle, p| {
            if p.txn.next_timer().is_some_and(|t| t <= now) {
                match p.txn.on_timer(now) {
                    Some(InviteClientAction::Retransmit(bytes)) => sends.push((p.peer, bytes)),
                    Some(InviteClientAction::Timeout) => {
                        tracing::warn!(call = %handle, "no final response to our INVITE (timer B)");
                        no_response.push(*handle);
                    }
                    None => {}
                }
            }
            if let Some(cancel) = p.cancel.as_mut() {
                if cancel.next_timer().is_some_and(|t| t <= now) {
                    if let Some(ClientAction::Retransmit(bytes)) = cancel.on_timer(now) {
                        sends.push((p.peer, bytes));
                    }
                }
            }
            p.challenged.retain_mut(|(_, txn)| {
                if txn.next_timer().is_some_and(|t| t <= now) {
                    // Completed: the only timer left is D, which ends the transaction.
                    let _ = txn.on_timer(now);
                }
                !txn.is_terminated()
            });
            !p.txn.is_terminated()
        });
        for handle in no_response {
            self.events
                .push_back(Event::CallEnded(handle, EndReason::NoResponse));
        }
        let mut bye_now = Vec::new();
        let mut ended = Vec::new();
        let mut refer_timeouts = Vec::new();
        for call in self.calls.values_mut() {
            let peer = call.peer;
            if let CallState::Answered {
                response,
                next,
                interval,
                give_up,
            } = &mut call.state
            {
                if now >= *give_up {
                    tracing::warn!(call = %call.handle, "no ACK for 200 OK within 64*T1; hanging up");
                    bye_now.push((call.handle, true));
                } else if now >= *next {
                    if !peer.transport.is_reliable() {
                        sends.push((peer, response.clone()));
                    }
                    *interval = (*interval * 2).min(T2);
                    *next = now + *interval;
                }
            }
            if call.session_deadline.is_some_and(|d| now >= d) {
                call.session_deadline = None;
                tracing::warn!(call = %call.handle, "session timer expired without refresh");
                bye_now.push((call.handle, false));
            }
            if let Some((_, refer)) = call.refer.as_mut() {
                if refer.next_timer().is_some_and(|t| t <= now) {
                    match refer.on_timer(now) {
                        Some(ClientAction::Retransmit(bytes)) => sends.push((peer, bytes)),
                        Some(ClientAction::Timeout) => {
                            tracing::warn!(call = %call.handle, "REFER not answered (timer F)");
                            refer_timeouts.push(call.handle);
                        }
                        None => {}
                    }
                }
            }
            if let Some(bye) = call.bye.as_mut() {
                if bye.next_timer().is_some_and(|t| t <= now) {
                    match bye.on_timer(now) {
                        Some(ClientAction::Retransmit(bytes)) => sends.push((peer, bytes)),
                        Some(ClientAction::Timeout) => {
                            tracing::warn!(call = %call.handle, "BYE not answered (timer F)");
                            ended.push(call.handle);
                        }
                        None => {}
                    }
                }
            }
        }
        for (to, bytes) in sends {
            self.send(to, bytes);
        }
        for handle in refer_timeouts {
            self.events
                .push_back(Event::Refer(handle, ReferProgress::Refused(408)));
        }
        for handle in ended {
            self.end_call(handle, EndReason::LocalHangup);
        }
        for (handle, ack_timeout) in bye_now {
            self.send_bye(handle, now);
            // The call is over for the media side now; the BYE transaction finishes alone.
            let reason = if ack_timeout {
                EndReason::AckTimeout
            } else {
                EndReason::SessionExpired
            };
            tracing::info!(call = %handle, ?reason, "call ended");
            self.events.push_back(Event::CallEnded(handle, reason));
            if let Some(call) = self.calls.get_mut(&handle) {
                call.end_reported = true;
            }
        }
    }
}

/// Whether the gateway knows `method` (RFC 3261 8.2.1: a method it knows but does not
/// implement gets 405 with Allow, one it does not know 501).
fn is_known_method(method: &Method) -> bool {
    match method {
        Method::Other(name) => name == "PUBLISH",
        _ => true,
    }
}

/// The media type of a Content-Type value (`application/sdp;charset=x` -> `application/sdp`),
/// lower-cased.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether the body is SDP: Content-Type `application/sdp` (or none, as lenient UAs send),
/// not encoded.
fn body_is_sdp(msg: &SipMessage) -> bool {
    let plain = msg
        .header("Content-Encoding")
        .is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
    plain
        && msg
            .header("Content-Type")
            .is_none_or(|ct| media_type(ct) == "application/sdp")
}

/// Whether an SDP body may answer the request: no Accept header (SDP is the default, RFC 3261
/// 20.1), or one listing `application/sdp`, `application/*` or `*/*`.
fn accepts_sdp(msg: &SipMessage) -> bool {
    if msg.header("Accept").is_none() {
        return true;
    }
    msg.header_values("Accept")
        .map(media_type)
        .any(|t| matches!(t.as_str(), "application/sdp" | "application/*" | "*/*"))
}

/// The status code of a `message/sipfrag` body's status line (`SIP/2.0 200 OK`).
fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    parts
        .next()?
        .parse::<u16>()
        .ok()
        .filter(|c| (100..700).contains(c))
}

/// A host for Via, From and Contact: IPv6 in brackets.
fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// A Warning header value (RFC 3261 20.43): the error text as a quoted string, with the
/// characters a quoted string cannot hold replaced.
fn warning(code: u16, error: &dyn fmt::Display) -> String {
    let text: String = error
        .to_string()
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .take(200)
        .collect();
    format!("{code} voicebot \"{text}\"")
}

/// The address of a SIP URI with an IP-literal host (port 5060 when absent, 5061 for `sips:`
/// and `;transport=tls`); None for names,
/// which this gateway does not resolve.
fn target_address(uri: &str) -> Option<SocketAddr> {
    let u = parse_sip_uri(uri)?;
    let ip: IpAddr = u.host.parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(default_port(uri))))
}

/// The Session-Expires interval asked for, in seconds (RFC 4028).
fn session_expires(msg: &SipMessage) -> Option<u32> {
    let v = msg.header("Session-Expires")?;
    v.split(';').next()?.trim().parse().ok()
}

/// A DTMF digit from a SIP INFO body (`application/dtmf-relay`: `Signal=5`; `application/dtmf`:
/// `5`).
fn dtmf_from_info(msg: &SipMessage) -> Option<char> {
    let ct = msg.header("Content-Type")?.to_ascii_lowercase();
    let body = std::str::from_utf8(&msg.body).ok()?;
    let raw = if ct.starts_with("application/dtmf-relay") {
        body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then_some(v.trim())
        })?
    } else if ct.starts_with("application/dtmf") {
        body.trim()
    } else {
        return None;
    };
    let mut chars = raw.chars();
    let c = chars.next()?;
    (chars.next().is_none() && matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

    fn caller() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "127.0.0.1:5061".parse().unwrap(),
        }
    }

    fn local_ip() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn request(
        method: &str,
        branch: &str,
        cseq: u32,
        to_tag: Option<&str>,
        extra: &str,
        body: &str,
    ) -> Vec<u8> {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} sip:support@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\n\
From: <sip:caller@127.0.0.1>;tag=caller1\r\n\
To: <sip:support@127.0.0.1>{to_tag}\r\n\
Call-ID: call-1@test\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:caller@127.0.0.1:5061>\r\n\
Max-Forwards: 70\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn endpoint(max_calls: usize) -> SipEndpoint {
        SipEndpoint::new(
            EndpointConfig {
                max_calls,
                ..EndpointConfig::default()
            },
            None,
            AllowList::parse(&[]).unwrap(),
            Instant::now(),
        )
    }

    fn sent(ep: &mut SipEndpoint) -> Vec<SipMessage> {
        std::iter::from_fn(|| ep.poll_transmit())
            .map(|t| SipMessage::parse(&t.bytes).unwrap())
            .collect()
    }

    fn codes(msgs: &[SipMessage]) -> Vec<u16> {
        msgs.iter().filter_map(SipMessage::status).collect()
    }

    fn local_media() -> LocalMedia {
        LocalMedia {
            address: local_ip(),
            rtp_port: 20000,
            session_id: 7,
            session_version: 1,
        }
    }

    /// The caller's ACK for the 200 OK, and the CallConfirmed event it causes.
    fn confirm(ep: &mut SipEndpoint, tag: &str, t: Instant) {
        let ack = request("ACK", "z9hG4bK2", 1, Some(tag), "", "");
        ep.handle_bytes(caller(), local_ip(), &ack, t);
        assert!(matches!(ep.poll_event(), Some(Event::CallConfirmed(_))));
    }

    /// Runs an INVITE up to the answer; returns the endpoint, the handle and our To tag.
    fn answered(t0: Instant) -> (SipEndpoint, CallHandle, String) {
        let mut ep = endpoint(10);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![100, 180]);
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!("no IncomingCall event")
        };
        assert_eq!(call.media.codec, Codec::Pcmu);
        assert_eq!(call.called.as_deref(), Some("support"));
        ep.accept(call.handle, local_media(), t0);
        let ok = sent(&mut ep);
        assert_eq!(codes(&ok), vec![200]);
        let tag = ok[0].to_tag().unwrap().to_string();
        assert!(String::from_utf8_lossy(&ok[0].body).contains("m=audio 20000 RTP/AVP 0 101"));
        assert!(ok[0].header("Allow").is_some_and(|a| a.contains("INVITE")));
        (ep, call.handle, tag)
    }

    /// Sends `ep` a caller's INVITE (branch `branch`, `extra` headers) and returns the call it
    /// reports; the responses stay queued.
    fn ring(ep: &mut SipEndpoint, branch: &str, extra: &str, now: Instant) -> IncomingCall {
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", branch, 1, None, extra, SDP),
            now,
        );
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!("no IncomingCall event")
        };
        *call
    }

    /// The INVITE's `extra` headers as the IncomingCall reports them.
    fn incoming_with(extra: &str) -> IncomingCall {
        ring(&mut endpoint(10), "z9hG4bK1", extra, Instant::now())
    }

    #[test]
    fn whether_the_caller_can_follow_a_refer_comes_from_its_allow() {
        assert!(incoming_with("").refer_allowed, "no Allow: nothing known");
        assert!(incoming_with("Allow: INVITE, ACK, BYE, REFER, NOTIFY\r\n").refer_allowed);
        assert!(incoming_with("Allow: INVITE, ACK\r\nAllow: refer\r\n").refer_allowed);
        assert!(!incoming_with(&format!("Allow: {ALLOWED}\r\n")).refer_allowed);
    }

    #[test]
    fn the_invites_voicebot_headers_are_kept() {
        let call = incoming_with(
            "X-Voicebot-Call-Id: abc@1\r\nX-Other: 1\r\nx-voicebot-team: billing\r\n",
        );
        assert_eq!(
            call.voicebot_headers,
            vec![
                ("X-Voicebot-Call-Id".to_string(), "abc@1".to_string()),
                ("x-voicebot-team".to_string(), "billing".to_string())
            ]
        );
    }

    fn agent() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "127.0.0.1:5070".parse().unwrap(),
        }
    }

    /// Places a call to the agent and returns the endpoint, the handle and our INVITE.
    fn placed(t0: Instant) -> (SipEndpoint, CallHandle, SipMessage) {
        let mut ep = endpoint(10);
        let handle = ep.invite(
            OutboundCall {
                target: "sip:1001@127.0.0.1:5070".into(),
                peer: agent(),
                local_ip: local_ip(),
                from_display: "Voicebot \"support\"".into(),
                from_user: "voicebot".into(),
                local: local_media(),
                headers: vec![("X-Voicebot-Call-Id".into(), "call-1@test".into())],
                auth: None,
            },
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1);
        let invite = out[0].clone();
        assert_eq!(invite.method(), Some(&Method::Invite));
        assert_eq!(invite.request_uri(), Some("sip:1001@127.0.0.1:5070"));
        assert_eq!(invite.header("X-Voicebot-Call-Id"), Some("call-1@test"));
        assert!(invite
            .header("From")
            .is_some_and(|f| f.starts_with("\"Voicebot support\" <sip:voicebot@")));
        assert!(String::from_utf8_lossy(&invite.body).contains("m=audio 20000 RTP/AVP"));
        (ep, handle, invite)
    }

    /// The agent's response to our INVITE (or CANCEL with `method`).
    fn agent_response(invite: &SipMessage, code: u16, method: &str, body: &str) -> Vec<u8> {
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "SIP/2.0 {code} X\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=agent1\r\nCall-ID: {}\r\n\
CSeq: 1 {method}\r\nContact: <sip:1001@127.0.0.1:5070>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            invite.top_via().unwrap(),
            invite.header("From").unwrap(),
            invite.header("To").unwrap(),
            invite.call_id().unwrap(),
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn placed_call_rings_answers_is_acked_and_the_agent_hangs_up() {
        let t0 = Instant::now();
        let (mut ep, handle, invite) = placed(t0);
        // Timer A retransmits until a provisional response.
        ep.handle_timeout(t0 + T1);
        assert_eq!(sent(&mut ep).len(), 1);
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 180, "INVITE", ""),
            t0,
        );
        assert!(matches!(ep.poll_event(), Some(Event::OutboundProgress(h, 180)) if h == handle));
        ep.handle_timeout(t0 + T1 * 4);
        assert!(sent(&mut ep).is_empty(), "no retransmission after 180");
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 200, "INVITE", SDP),
            t0,
        );
        let ack = sent(&mut ep);
        assert_eq!(ack[0].method(), Some(&Method::Ack));
        assert_eq!(ack[0].request_uri(), Some("sip:1001@127.0.0.1:5070"));
        assert!(ack[0].to_tag() == Some("agent1"));
        let Some(Event::OutboundAnswered(h, media)) = ep.poll_event() else {
            panic!("not answered")
        };
        assert_eq!(h, handle);
        assert_eq!(media.remote_rtp.port(), 6000);
        // A retransmitted 200 is acknowledged again.
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 200, "INVITE", SDP),
            t0,
        );
        assert_eq!(sent(&mut ep)[0].method(), Some(&Method::Ack));
        // The agent hangs up: its BYE is in our dialog.
        let bye = format!(
            "BYE sip:voicebot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKab\r\n\
From: {};tag=agent1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            invite.header("To").unwrap(),
            invite.header("From").unwrap(),
            invite.call_id().unwrap()
        );
        ep.handle_bytes(agent(), local_ip(), bye.as_bytes(), t0);
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        assert!(
            matches!(ep.poll_event(), Some(Event::CallEnded(h, EndReason::RemoteBye)) if h == handle)
        );
        assert_eq!(ep.active_calls(), 0);
    }

    #[test]
    fn placed_call_busy_is_acked_and_reported() {
        let t0 = Instant::now();
        let (mut ep, handle, invite) = placed(t0);
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 486, "INVITE", ""),
            t0,
        );
        let ack = sent(&mut ep);
        assert_eq!(ack[0].method(), Some(&Method::Ack));
        assert_eq!(
            ack[0].via_branch(),
            invite.via_branch(),
            "same branch as the INVITE"
        );
        assert!(
            matches!(ep.poll_event(), Some(Event::CallEnded(h, EndReason::Refused(486))) if h == handle)
        );
        // The retransmitted 486 gets the same ACK and no second event.
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 486, "INVITE", ""),
            t0,
        );
        assert_eq!(sent(&mut ep)[0].method(), Some(&Method::Ack));
        assert!(ep.poll_event().is_none());
        ep.handle_timeout(t0 + crate::sip::transaction::TIMER_D);
        assert_eq!(ep.active_calls(), 0);
    }

    #[test]
    fn hanging_up_a_ringing_placed_call_cancels_it_after_the_first_provisional() {
        let t0 = Instant::now();
        let (mut ep, handle, invite) = placed(t0);
        // Before any provisional response, the CANCEL waits.
        ep.hangup(handle, t0);
        assert!(sent(&mut ep).is_empty());
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 180, "INVITE", ""),
            t0,
        );
        let cancel = sent(&mut ep);
        assert_eq!(cancel[0].method(), Some(&Method::Cancel));
        assert_eq!(cancel[0].via_branch(), invite.via_branch());
        assert_eq!(cancel[0].cseq().map(|c| c.seq), Some(1));
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 200, "CANCEL", ""),
            t0,
        );
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 487, "INVITE", ""),
            t0,
        );
        assert_eq!(sent(&mut ep)[0].method(), Some(&Method::Ack));
        let events: Vec<Event> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::CallEnded(h, EndReason::Cancelled) if *h == handle)),
            "{events:?}"
        );
    }

    #[test]
    fn an_answer_crossing_our_cancel_is_hung_up() {
        let t0 = Instant::now();
        let (mut ep, handle, invite) = placed(t0);
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 180, "INVITE", ""),
            t0,
        );
        ep.hangup(handle, t0);
        sent(&mut ep);
        ep.handle_bytes(
            agent(),
            local_ip(),
            &agent_response(&invite, 200, "INVITE", SDP),
            t0,
        );
        let out = sent(&mut ep);
        let methods: Vec<_> = out.iter().filter_map(|m| m.method().cloned()).collect();
        assert_eq!(methods, vec![Method::Ack, Method::Bye]);
        let events: Vec<Event> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::CallEnded(h, EndReason::Cancelled) if *h == handle)));
        assert!(!events
            .iter()
            .any(|e| matches!(e, Event::OutboundAnswered(..))));
    }

    #[test]
    fn an_unanswered_placed_call_times_out_with_timer_b() {
        let t0 = Instant::now();
        let (mut ep, handle, _) = placed(t0);
        let mut t = t0;
        while t < t0 + timeout_64t1() {
            t += T1;
            ep.handle_timeout(t);
        }
        assert!(sent(&mut ep).len() >= 5, "timer A retransmissions");
        assert!(
            matches!(ep.poll_event(), Some(Event::CallEnded(h, EndReason::NoResponse)) if h == handle)
        );
        assert_eq!(ep.active_calls(), 0);
    }

    #[test]
    fn answer_ack_bye() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = answered(t0);
        // The 200 is retransmitted at T1 until the ACK comes.
        ep.handle_timeout(t0 + T1);
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK2", 1, Some(&tag), "", ""),
            t0 + T1,
        );
        assert!(matches!(ep.poll_event(), Some(Event::CallConfirmed(h)) if h == handle));
        ep.handle_timeout(t0 + T1 * 8);
        assert!(sent(&mut ep).is_empty(), "no retransmission after the ACK");
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("BYE", "z9hG4bK3", 2, Some(&tag), "", ""),
            t0 + T1 * 9,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        assert!(
            matches!(ep.poll_event(), Some(Event::CallEnded(h, EndReason::RemoteBye)) if h == handle)
        );
        assert_eq!(ep.active_calls(), 0);
    }

    #[test]
    fn retransmitted_invite_gets_last_response_not_a_new_call() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        let invite = request("INVITE", "z9hG4bK1", 1, None, "", SDP);
        ep.handle_bytes(caller(), local_ip(), &invite, t0);
        sent(&mut ep);
        ep.handle_bytes(caller(), local_ip(), &invite, t0 + T1);
        assert_eq!(codes(&sent(&mut ep)), vec![180]);
        assert!(matches!(ep.poll_event(), Some(Event::IncomingCall(_))));
        assert!(ep.poll_event().is_none());
    }

    #[test]
    fn cancel_while_ringing() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
            t0,
        );
        sent(&mut ep);
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!()
        };
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("CANCEL", "z9hG4bK1", 1, None, "", ""),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![200, 487]);
        assert!(
            matches!(ep.poll_event(), Some(Event::CallEnded(h, EndReason::Cancelled)) if h == call.handle)
        );
        // The 487 is retransmitted (timer G) until its ACK, which the transaction absorbs.
        ep.handle_timeout(t0 + T1);
        assert_eq!(codes(&sent(&mut ep)), vec![487]);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK1", 1, None, "", ""),
            t0 + T1,
        );
        ep.handle_timeout(t0 + T1 * 4);
        assert!(sent(&mut ep).is_empty());
        // A CANCEL for nothing.
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("CANCEL", "z9hG4bK9", 1, None, "", ""),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![481]);
    }

    #[test]
    fn rejections_488_486_422_420() {
        let t0 = Instant::now();
        let g729 = SDP.replace("RTP/AVP 0 101", "RTP/AVP 18 101");
        let mut ep = endpoint(1);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bKa", 1, None, "", &g729),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 488]);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request(
                "INVITE",
                "z9hG4bKb",
                1,
                None,
                "Session-Expires: 30\r\n",
                SDP,
            ),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![100, 422]);
        assert_eq!(out[1].header("Min-SE"), Some("90"));
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bKc", 1, None, "Require: 100rel\r\n", SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![420]);
        let options = request("OPTIONS", "z9hG4bKo", 1, None, "Require: x-unknown\r\n", "");
        ep.handle_bytes(caller(), local_ip(), &options, t0);
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![420]);
        assert_eq!(out[0].header("Unsupported"), Some("x-unknown"));
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bKd", 1, None, "", SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 180]);
        let other = String::from_utf8(request("INVITE", "z9hG4bKe", 1, None, "", SDP))
            .unwrap()
            .replace("call-1@test", "call-2@test");
        ep.handle_bytes(caller(), local_ip(), other.as_bytes(), t0);
        assert_eq!(codes(&sent(&mut ep)), vec![100, 486]);
    }

    #[test]
    fn a_refused_call_gets_503_with_retry_after_and_ends() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        let call = ring(&mut ep, "z9hG4bK1", "", t0);
        assert_eq!(codes(&sent(&mut ep)), vec![100, 180]);
        ep.refuse(call.handle, 503, Some(30), t0);
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![503]);
        assert_eq!(out[0].header("Retry-After"), Some("30"));
        assert!(matches!(
            ep.poll_event(),
            Some(Event::CallEnded(h, EndReason::Rejected(503))) if h == call.handle
        ));
        assert_eq!(ep.active_calls(), 0);
        // A plain reject names no Retry-After.
        let call = ring(&mut ep, "z9hG4bK2", "", t0);
        let _ = sent(&mut ep);
        ep.reject(call.handle, 503, t0);
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![503]);
        assert_eq!(out[0].header("Retry-After"), None);
    }

    #[test]
    fn hangup_sends_bye_and_retransmits_until_answered() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = answered(t0);
        confirm(&mut ep, &tag, t0);
        ep.hangup(handle, t0);
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1);
        let bye = &out[0];
        assert_eq!(bye.method(), Some(&Method::Bye));
        assert_eq!(bye.request_uri(), Some("sip:caller@127.0.0.1:5061"));
        assert_eq!(bye.from_tag(), Some(tag.as_str()));
        assert_eq!(bye.to_tag(), Some("caller1"));
        ep.handle_timeout(t0 + T1);
        assert_eq!(sent(&mut ep).len(), 1, "BYE retransmitted on timer E");
        let mut resp = SipMessage::response_to(bye, 200, "OK", None);
        resp.push("Content-Length", "0");
        ep.handle_bytes(caller(), local_ip(), &resp.to_bytes(), t0 + T1);
        assert!(
            matches!(ep.poll_event(), Some(Event::CallEnded(h, EndReason::LocalHangup)) if h == handle)
        );
    }

    #[test]
    fn missing_ack_hangs_up_after_64_t1() {
        let t0 = Instant::now();
        let (mut ep, handle, _) = answered(t0);
        let mut now = t0;
        let mut retransmits = 0;
        while now < t0 + timeout_64t1() {
            now = ep.next_timeout().unwrap();
            ep.handle_timeout(now);
            retransmits += sent(&mut ep)
                .iter()
                .filter(|m| m.status() == Some(200))
                .count();
        }
        assert!(retransmits >= 7, "{retransmits}");
        assert!(
            matches!(ep.poll_event(), Some(Event::CallEnded(h, EndReason::AckTimeout)) if h == handle)
        );
    }

    #[test]
    fn reinvite_hold_changes_media() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = answered(t0);
        confirm(&mut ep, &tag, t0);
        let hold = format!("{SDP}a=sendonly\r\n");
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK5", 2, Some(&tag), "", &hold),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![200]);
        assert!(String::from_utf8_lossy(&out[0].body).contains("a=recvonly"));
        assert!(
            matches!(ep.poll_event(), Some(Event::MediaChanged(h, m)) if h == handle && m.on_hold)
        );
        // An old CSeq inside the dialog is refused.
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INFO", "z9hG4bK6", 1, Some(&tag), "", ""),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![500]);
    }

    fn savp_sdp(key_b64: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 6000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{key_b64}\r\n"
        )
    }

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";
    const KEY_B: &str = "HR0dHR0dHR0dHR0dHR0dHR0dHR0dHR0dHR0dHR0d";

    fn endpoint_srtp(srtp: SrtpMode) -> SipEndpoint {
        SipEndpoint::new(
            EndpointConfig {
                srtp,
                ..EndpointConfig::default()
            },
            None,
            AllowList::parse(&[]).unwrap(),
            Instant::now(),
        )
    }

    #[test]
    fn srtp_offer_is_answered_with_sdes_and_a_rekey_by_reinvite_changes_the_keys() {
        let t0 = Instant::now();
        let mut ep = endpoint_srtp(SrtpMode::Optional);
        let offer = savp_sdp(KEY_A);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", &offer),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 180]);
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!("no IncomingCall event")
        };
        let keys = call.media.srtp.clone().expect("SRTP negotiated");
        assert_eq!(keys.tag, 3);
        ep.accept(call.handle, local_media(), t0);
        let ok = sent(&mut ep);
        let body = String::from_utf8_lossy(&ok[0].body).to_string();
        assert!(body.contains("m=audio 20000 RTP/SAVP 0 101"), "{body}");
        assert!(
            body.contains("a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:"),
            "{body}"
        );
        let tag = ok[0].to_tag().unwrap().to_string();
        confirm(&mut ep, &tag, t0);

        // The same key again (a session refresh): no change, our key stays.
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK5", 2, Some(&tag), "", &offer),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![200]);
        let crypto_of = |body: &[u8]| {
            String::from_utf8_lossy(body)
                .lines()
                .find(|l| l.starts_with("a=crypto:"))
                .map(str::to_owned)
        };
        assert_eq!(
            crypto_of(&out[0].body),
            crypto_of(&ok[0].body),
            "our key is kept"
        );
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK6", 2, Some(&tag), "", ""),
            t0,
        );
        assert!(!matches!(ep.poll_event(), Some(Event::MediaChanged(..))));

        // A new key: rekeyed, both ways.
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK7", 3, Some(&tag), "", &savp_sdp(KEY_B)),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![200]);
        let Some(Event::MediaChanged(_, m)) = ep.poll_event() else {
            panic!("no MediaChanged for the new key")
        };
        let new = m.srtp.expect("still SRTP");
        assert_ne!(new.remote, keys.remote);
        assert_ne!(new.local, keys.local);
    }

    #[test]
    fn srtp_modes_refuse_with_488() {
        let t0 = Instant::now();
        for (mode, body, why) in [
            (SrtpMode::Required, SDP.to_owned(), "requires SRTP"),
            (SrtpMode::Off, savp_sdp(KEY_A), "RTP/SAVP"),
            (
                SrtpMode::Optional,
                savp_sdp(&format!("{KEY_A}|2^20|1:4")),
                "MKI",
            ),
        ] {
            let mut ep = endpoint_srtp(mode);
            ep.handle_bytes(
                caller(),
                local_ip(),
                &request("INVITE", "z9hG4bK1", 1, None, "", &body),
                t0,
            );
            let out = sent(&mut ep);
            assert_eq!(codes(&out), vec![100, 488], "{mode}");
            let warning = out[1].header("Warning").unwrap_or_default();
            assert!(warning.contains(why), "{mode}: {warning}");
            assert!(!warning.contains(KEY_A), "no key in the Warning");
        }
    }

    #[test]
    fn a_delayed_offer_to_a_gateway_that_requires_srtp_gets_488() {
        let t0 = Instant::now();
        let mut ep = endpoint_srtp(SrtpMode::Required);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", ""),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![100, 488]);
        let warning = out[1].header("Warning").unwrap_or_default();
        assert!(warning.contains("delayed offer"), "{warning}");
    }

    #[test]
    fn a_trunks_srtp_mode_holds_for_calls_from_its_addresses() {
        let t0 = Instant::now();
        let trunk = |cidr: &str| {
            SipEndpoint::new(
                EndpointConfig {
                    srtp: SrtpMode::Optional,
                    srtp_by_source: vec![(
                        AllowList::parse(&[cidr.to_string()]).unwrap(),
                        SrtpMode::Required,
                    )],
                    ..EndpointConfig::default()
                },
                None,
                AllowList::parse(&[]).unwrap(),
                t0,
            )
        };
        // The caller (127.0.0.1) is the trunk's: its plain offer is refused.
        let mut ep = trunk("127.0.0.0/8");
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 488]);
        // From elsewhere the gateway's own mode (optional) takes the plain offer.
        let mut ep = trunk("192.0.2.0/24");
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 180]);
    }

    #[test]
    fn session_timer_expiry_hangs_up() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request(
                "INVITE",
                "z9hG4bK1",
                1,
                None,
                "Session-Expires: 120\r\nSupported: timer\r\n",
                SDP,
            ),
            t0,
        );
        sent(&mut ep);
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!()
        };
        ep.accept(call.handle, local_media(), t0);
        let ok = sent(&mut ep);
        assert_eq!(ok[0].header("Session-Expires"), Some("120;refresher=uac"));
        let tag = ok[0].to_tag().unwrap().to_string();
        confirm(&mut ep, &tag, t0);
        ep.handle_timeout(t0 + Duration::from_secs(121));
        let out = sent(&mut ep);
        assert!(out.iter().any(|m| m.method() == Some(&Method::Bye)));
        assert!(matches!(
            ep.poll_event(),
            Some(Event::CallEnded(_, EndReason::SessionExpired))
        ));
    }

    #[test]
    fn options_malformed_and_unknown_dialog() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("OPTIONS", "z9hG4bK1", 1, None, "", ""),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![200]);
        assert_eq!(out[0].header("Allow"), Some(ALLOWED));
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("BYE", "z9hG4bK2", 1, Some("nope"), "", ""),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![481]);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("SUBSCRIBE", "z9hG4bK3", 1, None, "", ""),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![405]);
        // Bad Content-Length still gets a 400; garbage and header-less requests are dropped.
        let bad = String::from_utf8(request("OPTIONS", "z9hG4bK4", 1, None, "", ""))
            .unwrap()
            .replace("Content-Length: 0", "Content-Length: 99");
        ep.handle_bytes(caller(), local_ip(), bad.as_bytes(), t0);
        assert_eq!(codes(&sent(&mut ep)), vec![400]);
        ep.handle_bytes(caller(), local_ip(), b"\x00\xffgarbage\r\n\r\n", t0);
        ep.handle_bytes(
            caller(),
            local_ip(),
            b"OPTIONS sip:a SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n",
            t0,
        );
        assert!(sent(&mut ep).is_empty());
        // The endpoint still takes calls.
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK5", 1, None, "", SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 180]);
    }

    #[test]
    fn sip_info_dtmf() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = answered(t0);
        let mut info = String::from_utf8(request(
            "INFO",
            "z9hG4bK7",
            2,
            Some(&tag),
            "Content-Type: application/dtmf-relay\r\n",
            "",
        ))
        .unwrap();
        info = info.replace(
            "Content-Length: 0\r\n\r\n",
            "Content-Length: 24\r\n\r\nSignal=0\r\nDuration=160\r\n",
        );
        ep.handle_bytes(caller(), local_ip(), info.as_bytes(), t0);
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        assert!(matches!(ep.poll_event(), Some(Event::Dtmf(h, '0')) if h == handle));
    }

    fn confirmed(t0: Instant) -> (SipEndpoint, CallHandle, String) {
        let (mut ep, handle, tag) = answered(t0);
        confirm(&mut ep, &tag, t0);
        while ep.poll_event().is_some() {}
        (ep, handle, tag)
    }

    /// A NOTIFY of the caller's side about our REFER.
    fn notify(tag: &str, cseq: u32, event: &str, state: &str, frag: &str) -> Vec<u8> {
        let head = String::from_utf8(request(
            "NOTIFY",
            &format!("z9hG4bKn{cseq}"),
            cseq,
            Some(tag),
            &format!("Event: {event}\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag\r\n"),
            "",
        ))
        .unwrap();
        head.replace(
            "Content-Length: 0\r\n\r\n",
            &format!("Content-Length: {}\r\n\r\n{frag}", frag.len()),
        )
        .into_bytes()
    }

    #[test]
    fn refer_goes_out_in_the_dialog_and_its_progress_comes_back() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = confirmed(t0);
        let target = "sip:2001@10.0.0.9:5070?Replaces=a%40b%3Bto-tag%3Dx%3Bfrom-tag%3Dy";
        assert!(ep.refer(handle, target, t0));
        let out = sent(&mut ep);
        let refer = &out[0];
        assert_eq!(refer.method(), Some(&Method::Refer));
        assert_eq!(refer.request_uri(), Some("sip:caller@127.0.0.1:5061"));
        assert_eq!(
            refer.header("Refer-To"),
            Some(format!("<{target}>").as_str())
        );
        assert!(refer.header("Referred-By").is_some());
        assert!(refer.header("Contact").is_some());
        assert_eq!(refer.to_tag(), Some("caller1"));
        assert_eq!(refer.from_tag(), Some(tag.as_str()));
        assert_eq!(refer.cseq().map(|c| c.method), Some(Method::Refer));
        // One REFER at a time.
        assert!(!ep.refer(handle, target, t0));
        let accepted = SipMessage::response_to(refer, 202, "Accepted", None).to_bytes();
        ep.handle_bytes(caller(), local_ip(), &accepted, t0);
        assert!(
            matches!(ep.poll_event(), Some(Event::Refer(h, ReferProgress::Accepted)) if h == handle)
        );
        ep.handle_bytes(
            caller(),
            local_ip(),
            &notify(
                &tag,
                2,
                "refer",
                "active;expires=60",
                "SIP/2.0 100 Trying\r\n",
            ),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        assert_eq!(
            ep.poll_event().map(|e| format!("{e:?}")),
            Some(format!(
                "{:?}",
                Event::Refer(
                    handle,
                    ReferProgress::Notified {
                        code: 100,
                        last: false
                    }
                )
            ))
        );
        ep.handle_bytes(
            caller(),
            local_ip(),
            &notify(
                &tag,
                3,
                "refer;id=2",
                "terminated;reason=noresource",
                "SIP/2.0 200 OK\r\n",
            ),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        assert!(matches!(
            ep.poll_event(),
            Some(Event::Refer(h, ReferProgress::Notified { code: 200, last: true })) if h == handle
        ));
        // The REFER is over: another may be sent.
        assert!(ep.refer(handle, "sip:2002@10.0.0.9", t0));
    }

    #[test]
    fn refer_refused_or_unanswered_is_reported() {
        let t0 = Instant::now();
        let (mut ep, handle, _) = confirmed(t0);
        assert!(ep.refer(handle, "sip:2001@10.0.0.9", t0));
        let refer = sent(&mut ep).remove(0);
        let refused = SipMessage::response_to(&refer, 405, "Method Not Allowed", None).to_bytes();
        ep.handle_bytes(caller(), local_ip(), &refused, t0);
        assert!(matches!(
            ep.poll_event(),
            Some(Event::Refer(_, ReferProgress::Refused(405)))
        ));
        assert!(ep.refer(handle, "sip:2001@10.0.0.9", t0));
        // Not answered: retransmitted over UDP, then timer F gives 408.
        let mut t = t0;
        let mut retransmits = 0;
        let mut outcome = None;
        while outcome.is_none() && t < t0 + Duration::from_secs(40) {
            t = ep
                .next_timeout()
                .unwrap_or(t + Duration::from_millis(500))
                .max(t);
            ep.handle_timeout(t);
            retransmits += sent(&mut ep)
                .iter()
                .filter(|m| m.method() == Some(&Method::Refer))
                .count();
            while let Some(e) = ep.poll_event() {
                if let Event::Refer(_, p) = e {
                    outcome = Some(p);
                }
            }
        }
        assert!(retransmits >= 2, "{retransmits}");
        assert_eq!(outcome, Some(ReferProgress::Refused(408)));
    }

    #[test]
    fn notify_needs_our_refer_and_the_refer_package() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = confirmed(t0);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &notify(&tag, 2, "refer", "active", "SIP/2.0 100 Trying\r\n"),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![481]);
        assert!(ep.refer(handle, "sip:2001@10.0.0.9", t0));
        sent(&mut ep);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &notify(&tag, 3, "dialog", "active", "x"),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![489]);
        // A final NOTIFY without a readable status: a failure, not silence.
        ep.handle_bytes(
            caller(),
            local_ip(),
            &notify(&tag, 4, "refer", "terminated", "garbage"),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        assert!(matches!(
            ep.poll_event(),
            Some(Event::Refer(
                _,
                ReferProgress::Notified {
                    code: 500,
                    last: true
                }
            ))
        ));
        assert_eq!(sipfrag_status(b"SIP/2.0 603 Declined\r\n"), Some(603));
        assert_eq!(sipfrag_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(sipfrag_status(b"SIP/2.0 99 x"), None);
    }

    #[test]
    fn refer_needs_an_answered_call_and_dialog_ids_name_the_dialog() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
            t0,
        );
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!("no call")
        };
        assert!(!ep.refer(call.handle, "sip:2001@h", t0));
        let (ep, handle, tag) = confirmed(t0);
        let ids = ep.dialog_ids(handle).unwrap();
        assert_eq!(ids.call_id, "call-1@test");
        assert_eq!(ids.local_tag, tag);
        assert_eq!(ids.remote_tag, "caller1");
        assert_eq!(ids.remote_target, "sip:caller@127.0.0.1:5061");
    }

    #[test]
    fn digest_challenge_then_authorized_call_and_allow_list() {
        use crate::sip::auth::{DigestConfig, DigestCredentials};
        let t0 = Instant::now();
        let auth = DigestAuthenticator::new(DigestConfig {
            realm: "voicebot".into(),
            users: vec![("trunk".into(), "secret".into())],
            nonce_ttl: Duration::from_secs(300),
            max_failures: 10,
            failure_window: Duration::from_secs(60),
        });
        let mut ep = SipEndpoint::new(
            EndpointConfig::default(),
            Some(auth),
            AllowList::parse(&["127.0.0.0/8".to_string()]).unwrap(),
            t0,
        );
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![100, 401]);
        let challenge = out[1].header("WWW-Authenticate").unwrap();
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let mut creds = DigestCredentials::parse(&format!(
            "Digest username=\"trunk\", realm=\"voicebot\", nonce=\"{nonce}\", \
             uri=\"sip:support@127.0.0.1:5060\", response=\"x\", qop=auth, nc=00000001, cnonce=\"c1\""
        ))
        .unwrap();
        creds.response = creds.expected_response("secret", "INVITE");
        let header = format!(
            "Authorization: Digest username=\"trunk\", realm=\"voicebot\", nonce=\"{nonce}\", \
             uri=\"sip:support@127.0.0.1:5060\", response=\"{}\", qop=auth, nc=00000001, cnonce=\"c1\"\r\n",
            creds.response
        );
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK2", 2, None, &header, SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 180]);
        assert!(
            matches!(ep.poll_event(), Some(Event::IncomingCall(c)) if c.user.as_deref() == Some("trunk"))
        );
        let wrong = header.replace(&creds.response, "00000000000000000000000000000000");
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK3", 3, None, &wrong, SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 401]);
        let stranger = Peer {
            transport: Transport::Udp,
            addr: "192.0.2.9:5060".parse().unwrap(),
        };
        ep.handle_bytes(
            stranger,
            local_ip(),
            &request("INVITE", "z9hG4bK4", 1, None, &header, SDP),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 403]);
    }

    #[test]
    fn behind_a_proxy_record_route_is_echoed_and_routes_our_bye() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        let rr = "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n";
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, rr, SDP),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(
            out[1].header_values("Record-Route").count(),
            2,
            "180 echoes the route"
        );
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!()
        };
        ep.accept(call.handle, local_media(), t0);
        let ok = sent(&mut ep);
        let routes: Vec<_> = ok[0].header_values("Record-Route").collect();
        assert_eq!(
            routes,
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        let tag = ok[0].to_tag().unwrap().to_string();
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK2", 1, Some(&tag), "", ""),
            t0,
        );
        ep.hangup(call.handle, t0);
        let bye = sent(&mut ep).remove(0);
        // The UAS uses the route set in the order received (RFC 3261 12.1.1).
        let route: Vec<_> = bye.header_values("Route").collect();
        assert_eq!(
            route,
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(bye.request_uri(), Some("sip:caller@127.0.0.1:5061"));
    }

    /// A request from `via` (sent-by) with `branch`, its own Call-ID.
    fn options_from(via: &str, branch: &str, call_id: &str) -> Vec<u8> {
        format!(
            "OPTIONS sip:support@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP {via};branch={branch}\r\n\
From: <sip:probe@127.0.0.1>;tag=f-{call_id}\r\n\
To: <sip:support@127.0.0.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn transactions_are_keyed_by_branch_sent_by_and_method() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        let a = caller();
        let b = Peer {
            transport: Transport::Udp,
            addr: "127.0.0.2:5062".parse().unwrap(),
        };
        ep.handle_bytes(
            a,
            local_ip(),
            &options_from("127.0.0.1:5061", "z9hG4bKsame", "a"),
            t0,
        );
        ep.handle_bytes(
            b,
            local_ip(),
            &options_from("127.0.0.2:5062", "z9hG4bKsame", "b"),
            t0,
        );
        let out: Vec<Transmit> = std::iter::from_fn(|| ep.poll_transmit()).collect();
        assert_eq!(out.len(), 2, "each client gets its own answer");
        for (t, (peer, call_id)) in out.iter().zip([(a, "a"), (b, "b")]) {
            assert_eq!(t.to, peer);
            let resp = SipMessage::parse(&t.bytes).unwrap();
            assert_eq!((resp.status(), resp.call_id()), (Some(200), Some(call_id)));
        }
        // A retransmission is still one (same sent-by, written differently): the same answer.
        ep.handle_bytes(
            a,
            local_ip(),
            &options_from("127.0.0.1:5061", "z9hG4bKsame", "x"),
            t0,
        );
        let again = sent(&mut ep);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].call_id(), Some("a"));
        // Port 5060 is the default sent-by port: `host` and `host:5060` are one client.
        ep.handle_bytes(
            b,
            local_ip(),
            &options_from("10.0.0.9", "z9hG4bKdflt", "c"),
            t0,
        );
        ep.handle_bytes(
            b,
            local_ip(),
            &options_from("10.0.0.9:5060", "z9hG4bKdflt", "d"),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(
            out.iter().map(|m| m.call_id()).collect::<Vec<_>>(),
            [Some("c"), Some("c")]
        );
    }

    #[test]
    fn a_cancel_from_another_sent_by_does_not_cancel_the_call() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
            t0,
        );
        sent(&mut ep);
        assert!(matches!(ep.poll_event(), Some(Event::IncomingCall(_))));
        let cancel = String::from_utf8(request("CANCEL", "z9hG4bK1", 1, None, "", ""))
            .unwrap()
            .replace("127.0.0.1:5061;branch", "192.0.2.7:5061;branch");
        ep.handle_bytes(caller(), local_ip(), cancel.as_bytes(), t0);
        assert_eq!(codes(&sent(&mut ep)), vec![481]);
        assert!(ep.poll_event().is_none(), "the call goes on");
    }

    /// One RFC 4475 message from tests/rfc4475.
    fn torture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/rfc4475")
            .join(format!("{name}.dat"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Feeds `bytes` as one datagram, accepts any call, and returns what went out.
    fn answers(bytes: &[u8]) -> Vec<SipMessage> {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        ep.handle_bytes(caller(), local_ip(), bytes, t0);
        while let Some(event) = ep.poll_event() {
            if let Event::IncomingCall(call) = event {
                ep.accept(call.handle, local_media(), t0);
            }
        }
        sent(&mut ep)
    }

    #[test]
    fn rfc4475_messages_get_the_answers_the_rfc_expects_over_udp() {
        let table = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475/expected.txt"),
        )
        .unwrap();
        let mut checked = 0;
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (name, udp) = (cols[0], cols[2]);
            let out = answers(&torture(name));
            // Over UDP one datagram is one request: the first outcome is the whole answer.
            let want: Vec<&str> = udp.split('+').next().unwrap().split('|').collect();
            let got = match out.iter().find(|m| m.status().is_some_and(|c| c >= 200)) {
                None => "none".to_string(),
                Some(m)
                    if m.status() == Some(200)
                        && m.cseq().is_some_and(|c| c.method == Method::Invite) =>
                {
                    "call".to_string()
                }
                Some(m) => m.status().unwrap_or(0).to_string(),
            };
            assert!(
                want.contains(&got.as_str()),
                "{name}: got {got}, expected {udp}"
            );
            for m in &out {
                assert_eq!(m.header("Server"), Some("voicebot-gateway"), "{name}");
                if m.status().is_some_and(|c| c >= 200) {
                    assert!(
                        m.to_tag().is_some() || m.header("To").is_none(),
                        "{name}: To tag"
                    );
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 49, "every message of RFC 4475 section 3");
    }

    #[test]
    fn unknown_method_501_known_but_unsupported_405() {
        let out = answers(&torture("intmeth"));
        assert_eq!(codes(&out), vec![501]);
        assert_eq!(
            out[0].call_id(),
            Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
        );
        assert_eq!(codes(&answers(&torture("mismatch02"))), vec![501]);
        assert_eq!(
            codes(&answers(&request("MESSAGE", "z9hG4bKm", 1, None, "", ""))),
            vec![405]
        );
        let publish = String::from_utf8(request("MESSAGE", "z9hG4bKp", 1, None, "", ""))
            .unwrap()
            .replace("MESSAGE", "PUBLISH");
        let out = answers(publish.as_bytes());
        assert_eq!(codes(&out), vec![405]);
        assert_eq!(out[0].header("Allow"), Some(ALLOWED));
        // The CSeq of a known method that is not the request's: 400.
        assert_eq!(codes(&answers(&torture("mismatch01"))), vec![400]);
    }

    #[test]
    fn bad_request_lines_get_400_or_505_not_silence() {
        for name in ["lwsstart", "trws", "lwsruri", "ltgtruri", "escruri"] {
            let out = answers(&torture(name));
            assert_eq!(codes(&out), vec![400], "{name}");
            assert!(out[0].header("Warning").is_some(), "{name}");
        }
        let out = answers(&torture("badvers"));
        assert_eq!(codes(&out), vec![505]);
        assert_eq!(
            out[0].header("Via"),
            Some("SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw")
        );
        // An ACK with a bad request line is never answered.
        let ack = String::from_utf8(torture("lwsstart"))
            .unwrap()
            .replace("INVITE", "ACK");
        assert!(answers(ack.as_bytes()).is_empty());
    }

    #[test]
    fn duplicate_and_malformed_headers_get_400() {
        for name in [
            "multi01", "mcl01", "badinv01", "quotbal", "scalar02", "insuf", "baddn",
        ] {
            assert_eq!(codes(&answers(&torture(name))), vec![400], "{name}");
        }
        // Missing Call-ID, From and To: the 400 copies what there is.
        let out = answers(&torture("insuf"));
        assert_eq!(out[0].header("CSeq"), Some("193942 INVITE"));
        assert!(out[0].call_id().is_none());
        // Every header a response copies, twice: 400 each.
        for (name, line) in [
            ("Call-ID", "Call-ID: other@test\r\n"),
            ("CSeq", "CSeq: 2 OPTIONS\r\n"),
            ("From", "From: <sip:x@127.0.0.1>;tag=2\r\n"),
            ("To", "To: <sip:y@127.0.0.1>\r\n"),
        ] {
            let out = answers(&request("OPTIONS", "z9hG4bKd", 1, None, line, ""));
            assert_eq!(codes(&out), vec![400], "{name}");
            assert!(
                out[0].header("Warning").unwrap_or("").contains(name),
                "{name}"
            );
        }
    }

    #[test]
    fn scheme_extension_body_and_accept_refusals() {
        assert_eq!(codes(&answers(&torture("unkscm"))), vec![416]);
        assert_eq!(codes(&answers(&torture("novelsc"))), vec![416]);
        let out = answers(&torture("bext01"));
        assert_eq!(codes(&out), vec![420]);
        assert_eq!(
            out[0].header("Unsupported"),
            Some("nothingSupportsThis, nothingSupportsThisEither")
        );
        let out = answers(&torture("invut"));
        assert_eq!(codes(&out), vec![415]);
        assert_eq!(out[0].header("Accept"), Some("application/sdp"));
        assert_eq!(codes(&answers(&torture("sdp01"))), vec![406]);
        // SDP with its parameters, and a wildcard Accept, are fine.
        let ok = String::from_utf8(request(
            "INVITE",
            "z9hG4bKs",
            1,
            None,
            "Accept: application/*\r\n",
            SDP,
        ))
        .unwrap()
        .replace(
            "Content-Type: application/sdp",
            "Content-Type: Application/SDP; charset=utf-8",
        );
        assert_eq!(codes(&answers(ok.as_bytes())), vec![100, 180, 200]);
    }

    #[test]
    fn valid_odd_messages_are_accepted() {
        for name in ["esc01", "longreq", "inv2543", "baddate"] {
            let out = answers(&torture(name));
            assert_eq!(codes(&out), vec![100, 180, 200], "{name}");
        }
        for name in [
            "lwsdisp",
            "semiuri",
            "transports",
            "zeromf",
            "badaspec",
            "badbranch",
        ] {
            assert_eq!(codes(&answers(&torture(name))), vec![200], "{name}");
        }
        // The extra bytes after dblreq's REGISTER are noise (RFC 3261 18.3).
        assert_eq!(codes(&answers(&torture("dblreq"))), vec![405]);
        // Responses that match nothing are dropped.
        for name in ["unreason", "noreason", "scalarlg", "bigcode", "bcast"] {
            assert!(answers(&torture(name)).is_empty(), "{name}");
        }
    }

    #[test]
    fn the_called_user_is_unescaped_when_printable() {
        let t0 = Instant::now();
        let mut ep = endpoint(10);
        let invite = String::from_utf8(request("INVITE", "z9hG4bKe", 1, None, "", SDP))
            .unwrap()
            .replacen("sip:support@", "sip:%73upp%6Frt@", 1);
        ep.handle_bytes(caller(), local_ip(), invite.as_bytes(), t0);
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!("no call")
        };
        assert_eq!(call.called.as_deref(), Some("support"));
        let mut ep = endpoint(10);
        ep.handle_bytes(caller(), local_ip(), &torture("esc01"), t0);
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!("no call")
        };
        assert_eq!(call.called.as_deref(), Some("sips:user@example.com"));
    }

    #[test]
    fn draining_refuses_new_invites_and_options_with_503_but_keeps_the_calls_in_progress() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = answered(t0);
        confirm(&mut ep, &tag, t0);
        assert!(!ep.draining());
        ep.drain();
        assert!(ep.draining());
        // A dispatcher's probe: 503 with Retry-After, so the gateway leaves its set.
        let probe = request("OPTIONS", "z9hG4bKp", 1, None, "", "");
        ep.handle_bytes(caller(), local_ip(), &probe, t0);
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![503]);
        assert_eq!(
            out[0].header("Retry-After"),
            Some(DRAIN_RETRY_AFTER_S.to_string().as_str())
        );
        // A new call: 503 with Retry-After, and no IncomingCall.
        let mut other = String::from_utf8(request("INVITE", "z9hG4bKn", 1, None, "", SDP))
            .unwrap()
            .replace("call-1@test", "call-2@test");
        other = other.replace("tag=caller1", "tag=caller2");
        ep.handle_bytes(caller(), local_ip(), other.as_bytes(), t0);
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![100, 503], "{out:?}");
        assert!(out[1].header("Retry-After").is_some());
        assert!(
            ep.poll_event().is_none(),
            "a draining gateway takes no call"
        );
        // In the call in progress: an OPTIONS, a re-INVITE and the BYE still work.
        let ping = request("OPTIONS", "z9hG4bKi", 2, Some(&tag), "", "");
        ep.handle_bytes(caller(), local_ip(), &ping, t0);
        assert_eq!(codes(&sent(&mut ep)), vec![200], "in-dialog OPTIONS");
        let reinvite = request("INVITE", "z9hG4bKr", 3, Some(&tag), "", SDP);
        ep.handle_bytes(caller(), local_ip(), &reinvite, t0);
        let out = sent(&mut ep);
        assert!(codes(&out).contains(&200), "re-INVITE answered: {out:?}");
        let ack = request("ACK", "z9hG4bKra", 3, Some(&tag), "", "");
        ep.handle_bytes(caller(), local_ip(), &ack, t0);
        while ep.poll_event().is_some() {}
        let bye = request("BYE", "z9hG4bKb", 4, Some(&tag), "", "");
        ep.handle_bytes(caller(), local_ip(), &bye, t0);
        assert_eq!(codes(&sent(&mut ep)), vec![200], "BYE");
        let mut ended = false;
        while let Some(event) = ep.poll_event() {
            ended |= matches!(event, Event::CallEnded(h, EndReason::RemoteBye) if h == handle);
        }
        assert!(ended, "the call in progress ends by the caller's BYE");
        assert_eq!(ep.active_calls(), 0);
    }

    #[test]
    fn an_endpoint_that_is_not_draining_answers_options_with_200() {
        let out = answers(&request("OPTIONS", "z9hG4bKo", 1, None, "", ""));
        assert_eq!(codes(&out), vec![200]);
    }

    #[test]
    fn server_header_is_configurable_and_can_be_left_out() {
        let out = answers(&request("OPTIONS", "z9hG4bKu", 1, None, "", ""));
        assert_eq!(out[0].header("Server"), Some("voicebot-gateway"));
        let t0 = Instant::now();
        for (value, expected) in [("Acme SBC", Some("Acme SBC")), ("", None)] {
            let mut ep = SipEndpoint::new(
                EndpointConfig {
                    user_agent: value.into(),
                    ..EndpointConfig::default()
                },
                None,
                AllowList::parse(&[]).unwrap(),
                t0,
            );
            ep.handle_bytes(
                caller(),
                local_ip(),
                &request("INVITE", "z9hG4bK1", 1, None, "", SDP),
                t0,
            );
            let Some(Event::IncomingCall(call)) = ep.poll_event() else {
                panic!("no call")
            };
            ep.accept(call.handle, local_media(), t0);
            for m in sent(&mut ep) {
                assert_eq!(m.header("Server"), expected);
            }
            ep.hangup(call.handle, t0);
            let bye = sent(&mut ep);
            assert_eq!(bye[0].method(), Some(&Method::Bye));
            assert_eq!(bye[0].header("User-Agent"), expected);
        }
    }
    /// Places a call to the agent with `password` for user `gw` (None: no credentials).
    fn placed_auth(t0: Instant, password: Option<&str>) -> (SipEndpoint, CallHandle, SipMessage) {
        let mut ep = endpoint(10);
        let handle = ep.invite(
            OutboundCall {
                target: "sip:1001@127.0.0.1:5070".into(),
                peer: agent(),
                local_ip: local_ip(),
                from_display: "Voicebot billing".into(),
                from_user: "voicebot".into(),
                local: local_media(),
                headers: Vec::new(),
                auth: password.map(|p| OutboundAuth {
                    owner: "team billing".into(),
                    credentials: ClientCredentials {
                        user: "gw".into(),
                        password: p.into(),
                    },
                }),
            },
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1);
        (ep, handle, out[0].clone())
    }

    /// The agent's answer to `request` (our INVITE or CANCEL), CSeq and Via copied from it.
    fn reply_to(request: &SipMessage, code: u16, extra: &str, body: &str) -> Vec<u8> {
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let cseq = request.cseq().unwrap();
        format!(
            "SIP/2.0 {code} X\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=agent{code}\r\nCall-ID: {}\r\n\
CSeq: {} {}\r\nContact: <sip:1001@127.0.0.1:5070>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            request.top_via().unwrap(),
            request.header("From").unwrap(),
            request.header("To").unwrap(),
            request.call_id().unwrap(),
            cseq.seq,
            cseq.method,
            body.len()
        )
        .into_bytes()
    }

    fn digest(header: &str, nonce: &str, stale: bool) -> String {
        let stale = if stale { ", stale=true" } else { "" };
        format!("{header}: Digest realm=\"pbx.test\", nonce=\"{nonce}\", qop=\"auth\", algorithm=MD5{stale}\r\n")
    }

    /// Our ACK for a challenge and the INVITE sent again, checked against the first INVITE.
    fn resent(ep: &mut SipEndpoint, before: &SipMessage, header: &str) -> SipMessage {
        let out = sent(ep);
        assert_eq!(out.len(), 2, "an ACK and the INVITE again");
        let (ack, invite) = (&out[0], out[1].clone());
        assert_eq!(ack.method(), Some(&Method::Ack));
        assert_eq!(ack.via_branch(), before.via_branch());
        assert_eq!(ack.cseq().map(|c| c.seq), before.cseq().map(|c| c.seq));
        assert_eq!(invite.method(), Some(&Method::Invite));
        assert_ne!(invite.via_branch(), before.via_branch());
        assert_eq!(
            invite.cseq().map(|c| c.seq),
            before.cseq().map(|c| c.seq + 1)
        );
        assert_eq!(invite.call_id(), before.call_id());
        assert_eq!(invite.header("From"), before.header("From"));
        assert_eq!(invite.header("To"), before.header("To"));
        assert_eq!(invite.body, before.body);
        let value = invite.header(header).expect("credentials");
        assert!(value.contains("username=\"gw\""), "{value}");
        assert!(value.contains("realm=\"pbx.test\""), "{value}");
        assert!(value.contains("uri=\"sip:1001@127.0.0.1:5070\""), "{value}");
        assert!(!value.contains("secret"), "{value}");
        invite
    }

    #[test]
    fn a_407_challenge_is_answered_once_and_the_call_is_answered() {
        let t0 = Instant::now();
        let (mut ep, handle, first) = placed_auth(t0, Some("secret"));
        let challenge = reply_to(&first, 407, &digest("Proxy-Authenticate", "n1", false), "");
        ep.handle_bytes(agent(), local_ip(), &challenge, t0);
        let second = resent(&mut ep, &first, "Proxy-Authorization");
        assert!(
            ep.poll_event().is_none(),
            "a challenge answered is no refusal"
        );
        // A retransmitted 407 is acknowledged again on the first transaction, and never
        // answered with another INVITE.
        ep.handle_bytes(agent(), local_ip(), &challenge, t0 + T1);
        let again = sent(&mut ep);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].method(), Some(&Method::Ack));
        assert_eq!(again[0].via_branch(), first.via_branch());
        ep.handle_bytes(agent(), local_ip(), &reply_to(&second, 180, "", ""), t0);
        assert!(matches!(ep.poll_event(), Some(Event::OutboundProgress(h, 180)) if h == handle));
        ep.handle_bytes(agent(), local_ip(), &reply_to(&second, 200, "", SDP), t0);
        let ack = sent(&mut ep);
        assert_eq!(ack.len(), 1);
        assert_eq!(ack[0].method(), Some(&Method::Ack));
        assert_eq!(ack[0].cseq().map(|c| c.seq), Some(2));
        assert_eq!(
            ack[0].header("Proxy-Authorization"),
            second.header("Proxy-Authorization")
        );
        assert!(matches!(ep.poll_event(), Some(Event::OutboundAnswered(h, _)) if h == handle));
        // The challenged transaction ends with timer D.
        ep.handle_timeout(t0 + crate::sip::transaction::TIMER_D + T1);
        assert!(sent(&mut ep).is_empty());
        assert!(ep.outbound.is_empty());
    }

    #[test]
    fn a_wrong_password_is_refused_after_two_invites_not_a_loop() {
        let t0 = Instant::now();
        let (mut ep, handle, first) = placed_auth(t0, Some("wrong"));
        let header = digest("WWW-Authenticate", "n1", false);
        ep.handle_bytes(agent(), local_ip(), &reply_to(&first, 401, &header, ""), t0);
        let second = resent(&mut ep, &first, "Authorization");
        // The PBX challenges again with a fresh nonce: the password is wrong.
        let header = digest("WWW-Authenticate", "n2", false);
        ep.handle_bytes(
            agent(),
            local_ip(),
            &reply_to(&second, 401, &header, ""),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1, "only the ACK, no third INVITE");
        assert_eq!(out[0].method(), Some(&Method::Ack));
        assert_eq!(out[0].via_branch(), second.via_branch());
        assert!(matches!(
            ep.poll_event(),
            Some(Event::CallEnded(h, EndReason::Refused(401))) if h == handle
        ));
        assert!(ep.poll_event().is_none());
    }

    #[test]
    fn a_challenge_without_credentials_is_a_refusal() {
        let t0 = Instant::now();
        let (mut ep, handle, first) = placed_auth(t0, None);
        let header = digest("Proxy-Authenticate", "n1", false);
        ep.handle_bytes(agent(), local_ip(), &reply_to(&first, 407, &header, ""), t0);
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].method(), Some(&Method::Ack));
        assert!(matches!(
            ep.poll_event(),
            Some(Event::CallEnded(h, EndReason::Refused(407))) if h == handle
        ));
    }

    #[test]
    fn a_stale_nonce_is_answered_again_and_cancel_goes_for_the_latest_invite() {
        let t0 = Instant::now();
        let (mut ep, handle, first) = placed_auth(t0, Some("secret"));
        let header = digest("Proxy-Authenticate", "n1", false);
        ep.handle_bytes(agent(), local_ip(), &reply_to(&first, 407, &header, ""), t0);
        let second = resent(&mut ep, &first, "Proxy-Authorization");
        let header = digest("Proxy-Authenticate", "n2", true);
        ep.handle_bytes(
            agent(),
            local_ip(),
            &reply_to(&second, 407, &header, ""),
            t0,
        );
        let third = resent(&mut ep, &second, "Proxy-Authorization");
        assert!(third
            .header("Proxy-Authorization")
            .is_some_and(|v| v.contains("nonce=\"n2\"")));
        // Hung up while the third INVITE has no provisional answer: the CANCEL waits for one,
        // then goes for that INVITE (its branch and CSeq) with its credentials.
        ep.hangup(handle, t0);
        assert!(sent(&mut ep).is_empty());
        ep.handle_bytes(agent(), local_ip(), &reply_to(&third, 180, "", ""), t0);
        let cancel = sent(&mut ep);
        assert_eq!(cancel.len(), 1);
        assert_eq!(cancel[0].method(), Some(&Method::Cancel));
        assert_eq!(cancel[0].via_branch(), third.via_branch());
        assert_eq!(cancel[0].cseq().map(|c| c.seq), Some(3));
        assert_eq!(
            cancel[0].header("Proxy-Authorization"),
            third.header("Proxy-Authorization")
        );
        ep.handle_bytes(agent(), local_ip(), &reply_to(&cancel[0], 200, "", ""), t0);
        ep.handle_bytes(agent(), local_ip(), &reply_to(&third, 487, "", ""), t0);
        let ack = sent(&mut ep);
        assert_eq!(ack[0].method(), Some(&Method::Ack));
        assert_eq!(ack[0].via_branch(), third.via_branch());
        assert!(matches!(
            ep.poll_event(),
            Some(Event::OutboundProgress(_, 180))
        ));
        assert!(matches!(
            ep.poll_event(),
            Some(Event::CallEnded(h, EndReason::Cancelled)) if h == handle
        ));
    }

    /// A delayed-offer INVITE accepted: the 200 OK with our offer, and our To tag.
    fn delayed_offer_answered(t0: Instant) -> (SipEndpoint, CallHandle, String) {
        let mut ep = endpoint(10);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK1", 1, None, "", ""),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![100, 180]);
        let Some(Event::IncomingCall(call)) = ep.poll_event() else {
            panic!("no IncomingCall event")
        };
        assert_eq!(call.media.direction, sdp::Direction::Inactive);
        ep.accept(call.handle, local_media(), t0);
        let ok = sent(&mut ep);
        assert_eq!(codes(&ok), vec![200]);
        let offer = String::from_utf8_lossy(&ok[0].body).into_owned();
        // Every codec and telephone-event, sendrecv: an offer, not an answer.
        assert!(offer.contains("m=audio 20000 RTP/AVP 0 8 "), "{offer}");
        assert!(offer.contains("telephone-event/8000"), "{offer}");
        assert!(offer.contains("opus"), "{offer}");
        assert!(ep.poll_event().is_none());
        (ep, call.handle, ok[0].to_tag().unwrap().to_string())
    }

    #[test]
    fn delayed_offer_the_answer_in_the_ack_starts_the_media() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = delayed_offer_answered(t0);
        let answer = SDP
            .replace("RTP/AVP 0 101", "RTP/AVP 8 101")
            .replace("6000", "6010");
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK2", 1, Some(&tag), "", &answer),
            t0,
        );
        let Some(Event::MediaChanged(h, media)) = ep.poll_event() else {
            panic!("no MediaChanged on the ACK")
        };
        assert_eq!(h, handle);
        assert_eq!(media.codec, Codec::Pcma);
        assert_eq!(media.remote_rtp, "127.0.0.1:6010".parse().unwrap());
        assert_eq!(media.direction, sdp::Direction::SendRecv);
        assert!(matches!(ep.poll_event(), Some(Event::CallConfirmed(h)) if h == handle));
        ep.handle_timeout(t0 + T1 * 4);
        assert!(
            sent(&mut ep).is_empty(),
            "no 200 retransmission after the ACK"
        );
    }

    #[test]
    fn delayed_offer_an_ack_without_an_answer_hangs_up() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = delayed_offer_answered(t0);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK2", 1, Some(&tag), "", ""),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].method(), Some(&Method::Bye));
        assert!(matches!(
            ep.poll_event(),
            Some(Event::CallEnded(h, EndReason::LocalHangup)) if h == handle
        ));
        assert!(
            ep.poll_event().is_none(),
            "neither confirmed nor ended twice"
        );
    }

    #[test]
    fn offerless_reinvite_gets_our_offer_and_the_ack_answer_changes_the_media() {
        let t0 = Instant::now();
        let (mut ep, handle, tag) = answered(t0);
        confirm(&mut ep, &tag, t0);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK5", 2, Some(&tag), "", ""),
            t0,
        );
        let out = sent(&mut ep);
        assert_eq!(codes(&out), vec![200]);
        let offer = String::from_utf8_lossy(&out[0].body).into_owned();
        assert!(offer.contains("m=audio 20000 RTP/AVP 0 8 "), "{offer}");
        // The same session, one version on (RFC 3264 8).
        assert!(offer.contains("o=- 7 2 IN IP4 127.0.0.1"), "{offer}");
        let answer = SDP.replace("6000", "6020");
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK6", 2, Some(&tag), "", &answer),
            t0,
        );
        let Some(Event::MediaChanged(h, media)) = ep.poll_event() else {
            panic!("no MediaChanged on the ACK")
        };
        assert_eq!(h, handle);
        assert_eq!(media.remote_rtp, "127.0.0.1:6020".parse().unwrap());
        assert!(matches!(ep.poll_event(), Some(Event::CallConfirmed(_))));
        // An offerless re-INVITE whose ACK has no answer keeps the media and the call.
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("INVITE", "z9hG4bK7", 3, Some(&tag), "", ""),
            t0,
        );
        assert_eq!(codes(&sent(&mut ep)), vec![200]);
        ep.handle_bytes(
            caller(),
            local_ip(),
            &request("ACK", "z9hG4bK8", 3, Some(&tag), "", ""),
            t0,
        );
        assert!(sent(&mut ep).is_empty());
        assert!(matches!(ep.poll_event(), Some(Event::CallConfirmed(_))));
        assert_eq!(ep.active_calls(), 1);
    }

    fn tls_endpoint() -> SipEndpoint {
        SipEndpoint::new(
            EndpointConfig {
                sip_port: 5060,
                tls_port: Some(5071),
                ..EndpointConfig::default()
            },
            None,
            AllowList::parse(&[]).unwrap(),
            Instant::now(),
        )
    }

    /// A call over TLS: our Via says TLS with the TLS listener's port, our Contact is `sips:`
    /// for a `sips:` Request-URI (RFC 3261 12.1.1) and `;transport=tls` for a `sip:` one, and
    /// nothing is retransmitted (a reliable transport, RFC 3261 17.2.1).
    #[test]
    fn calls_over_tls_get_tls_via_and_contact() {
        let t0 = Instant::now();
        let peer = Peer {
            transport: Transport::Tls(3),
            addr: "127.0.0.1:40000".parse().unwrap(),
        };
        for (scheme, contact) in [
            ("sips", "<sips:voicebot@127.0.0.1:5071>"),
            ("sip", "<sip:voicebot@127.0.0.1:5071;transport=tls>"),
        ] {
            let mut ep = tls_endpoint();
            let invite = String::from_utf8(request("INVITE", "z9hG4bK1", 1, None, "", SDP))
                .unwrap()
                .replace("INVITE sip:support", &format!("INVITE {scheme}:support"))
                .replace("SIP/2.0/UDP", "SIP/2.0/TLS");
            ep.handle_bytes(peer, local_ip(), invite.as_bytes(), t0);
            let out: Vec<Transmit> = std::iter::from_fn(|| ep.poll_transmit()).collect();
            assert!(
                out.iter().all(|t| t.to == peer),
                "answered on the connection"
            );
            let ringing = SipMessage::parse(&out[1].bytes).unwrap();
            assert_eq!(ringing.header("Contact"), Some(contact));
            let Some(Event::IncomingCall(call)) = ep.poll_event() else {
                panic!("no IncomingCall")
            };
            ep.accept(call.handle, local_media(), t0);
            let ok = sent(&mut ep);
            assert_eq!(codes(&ok), vec![200]);
            assert_eq!(ok[0].header("Contact"), Some(contact));
            ep.handle_timeout(t0 + T1 * 2);
            assert!(sent(&mut ep).is_empty(), "no 200 retransmission over TLS");
            ep.hangup(call.handle, t0);
            let bye = sent(&mut ep);
            assert_eq!(bye[0].method(), Some(&Method::Bye));
            assert!(
                bye[0]
                    .top_via()
                    .is_some_and(|v| v.starts_with("SIP/2.0/TLS 127.0.0.1:5071;")),
                "{:?}",
                bye[0].top_via()
            );
        }
    }

    /// A call we place over TLS names TLS in Via and `sips:` in Contact; when its connection
    /// cannot be opened (say the agent's certificate is not trusted) it ends at once as 503.
    #[test]
    fn placed_calls_over_tls_end_when_the_connection_fails() {
        let t0 = Instant::now();
        let mut ep = tls_endpoint();
        let peer = Peer {
            transport: Transport::Tls(9),
            addr: "127.0.0.1:5081".parse().unwrap(),
        };
        let handle = ep.invite(
            OutboundCall {
                target: "sips:1001@127.0.0.1:5081".into(),
                peer,
                local_ip: local_ip(),
                from_display: "Voicebot".into(),
                from_user: "voicebot".into(),
                local: local_media(),
                headers: Vec::new(),
                auth: None,
            },
            t0,
        );
        let invite = sent(&mut ep);
        assert_eq!(invite[0].request_uri(), Some("sips:1001@127.0.0.1:5081"));
        assert!(invite[0]
            .top_via()
            .is_some_and(|v| v.starts_with("SIP/2.0/TLS 127.0.0.1:5071;")));
        assert_eq!(
            invite[0].header("Contact"),
            Some("<sips:voicebot@127.0.0.1:5071>")
        );
        ep.handle_timeout(t0 + T1 * 2);
        assert!(
            sent(&mut ep).is_empty(),
            "no INVITE retransmission over TLS"
        );
        // Another connection's failure is not this call's.
        ep.transport_failed(Transport::Tls(8));
        ep.transport_failed(Transport::Tcp(9));
        assert!(ep.poll_event().is_none());
        ep.transport_failed(Transport::Tls(9));
        assert!(matches!(
            ep.poll_event(),
            Some(Event::CallEnded(h, EndReason::Refused(503))) if h == handle
        ));
        assert_eq!(ep.active_calls(), 0);
        ep.handle_timeout(t0 + T1 * 64);
        assert!(ep.poll_event().is_none(), "no second end (timer B)");
    }

    #[test]
    fn tls_targets_default_to_port_5061() {
        assert_eq!(
            target_address("sips:a@10.0.0.1"),
            Some("10.0.0.1:5061".parse().unwrap())
        );
        assert_eq!(
            target_address("sip:a@10.0.0.1;transport=tls"),
            Some("10.0.0.1:5061".parse().unwrap())
        );
        assert_eq!(
            target_address("sip:a@10.0.0.1;transport=tcp"),
            Some("10.0.0.1:5060".parse().unwrap())
        );
    }
}

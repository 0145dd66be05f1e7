//! The tokio layer that owns the SIP and RTP sockets and the timers, and drives the sans-IO
//! cores in [`crate::sip`] and [`crate::media`] for `voicebot serve`.
//!
//! One signalling task owns the [`SipEndpoint`]: it reads the UDP socket and the TCP
//! connections' frames, sleeps until the endpoint's next timer, and turns endpoint events into
//! per-call media tasks ([`call`]). A call task owns its RTP socket, its jitter buffer and paced
//! sender, and the call's pipeline; it talks to the signalling task only through channels, so a
//! slow call never holds up signalling or another call.

pub mod call;
mod caller_leg;
mod event_poster;
pub mod pacer;
mod ports;
pub mod recording;
pub mod signal_queue;
mod speech_log;
pub mod transfer;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::admin::AdminState;
use crate::call::control::LegError;
use crate::config::media::TransportKind;
use crate::handover::feedback::FeedbackStore;
use crate::handover::hub::HandoverHub;
use crate::handover::outbox::{spawn_deliverer, DelivererHandle, Outbox};
use crate::history::CallHistory;
use crate::observe::live::LiveCalls;
use crate::observe::readiness::Readiness;
use crate::pipeline::Engines;
use crate::sip::auth::{AllowList, DigestAuthenticator, DigestConfig};
use crate::sip::endpoint::{
    CallHandle, EndpointConfig, Event, OutboundCall, Peer, SipEndpoint, Transmit, Transport,
};
use crate::sip::message::{StreamFramer, MAX_MESSAGE_BYTES};
use crate::sip::sdp::LocalMedia;
use call::{AgentEvent, CallSetup, CallSignal};
use pacer::Pacer;
use ports::PortPool;
use signal_queue::{signal_queue, NotQueued, SignalSender};

pub use crate::call::record::call_file_stem;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind SIP {transport} on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bad [sip] settings: {0}")]
    Config(String),
    #[error("SIP socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// What the signalling task hears from the rest of the server.
enum Inbound {
    /// A SIP message framed from a TCP connection.
    TcpFrame {
        conn: u64,
        from: SocketAddr,
        local: SocketAddr,
        bytes: Vec<u8>,
    },
    TcpOpened {
        conn: u64,
        writer: mpsc::Sender<Vec<u8>>,
    },
    TcpClosed {
        conn: u64,
    },
    /// A call task asks to end its call (the bot finished, no RTP, a fault).
    Hangup(CallHandle),
    /// A call task finished and freed its media.
    CallDone(CallHandle),
    /// A call task hands its caller over: place a call to an agent extension.
    PlaceCall(PlaceCall),
    /// A call task hands its caller over by transfer: REFER the caller's side.
    Refer(ReferCall),
}

/// A request to REFER the caller's side of a call elsewhere (blind or attended transfer).
pub(crate) struct ReferCall {
    pub caller: CallHandle,
    /// Blind: the extension's URI; `headers` go into the Refer-To URI.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Attended: the answered agent leg the caller's side should replace (`Replaces`, sent
    /// to that agent's Contact).
    pub replacing: Option<CallHandle>,
    /// The Refer-To URI that went out, or why no REFER could be sent.
    pub reply: tokio::sync::oneshot::Sender<Result<String, LegError>>,
}

/// A request to call an agent for the caller's call.
pub(crate) struct PlaceCall {
    pub caller: CallHandle,
    /// The agent's SIP URI.
    pub target: String,
    /// Where the INVITE goes: the target's host, resolved by the call task (name lookups
    /// never block the signalling task).
    pub addr: SocketAddr,
    /// Context headers for the INVITE.
    pub headers: Vec<(String, String)>,
    pub from_display: String,
    pub from_user: String,
    /// The new leg's handle and its RTP ports, or why it could not be placed.
    pub reply: tokio::sync::oneshot::Sender<Result<(CallHandle, ports::RtpPorts), LegError>>,
}

/// A bound, not yet running server.
pub struct Server {
    udp: Option<Arc<UdpSocket>>,
    tcp: Option<TcpListener>,
    local: SocketAddr,
    engines: Engines,
    report_dir: Option<PathBuf>,
    /// Live hand-over contexts and events (for the HTTP side).
    hub: Arc<HandoverHub>,
    /// The HTTP listener for agents, when `[http] listen` is set.
    http: Option<HttpSide>,
}

/// The bound HTTP side.
struct HttpSide {
    listener: tokio::net::TcpListener,
    state: Arc<crate::web::WebState>,
    token_source: String,
    /// The admin API's token and where it came from.
    admin_token: String,
    admin_token_source: String,
    /// The call history, when `[http] history_database` is set.
    history: Option<Arc<CallHistory>>,
}

impl Server {
    /// Binds the SIP sockets from `engines.config.sip` (overridden by `listen` when given).
    /// With port 0 a free port is chosen, the same for UDP and TCP.
    pub async fn bind(engines: Engines, listen: Option<SocketAddr>) -> Result<Server, ServeError> {
        let sip = &engines.config.sip;
        let addr = listen.unwrap_or(sip.listen);
        let want_udp = sip.transports.contains(&TransportKind::Udp);
        let want_tcp = sip.transports.contains(&TransportKind::Tcp);
        let mut last_err = None;
        // Port 0: retry a few times in case the TCP side of the UDP-chosen port is taken.
        for _ in 0..10 {
            let udp = if want_udp {
                match UdpSocket::bind(addr).await {
                    Ok(s) => Some(s),
                    Err(source) => {
                        return Err(ServeError::Bind {
                            transport: "UDP",
                            addr,
                            source,
                        })
                    }
                }
            } else {
                None
            };
            let port = match &udp {
                Some(s) => s.local_addr()?.port(),
                None => addr.port(),
            };
            let tcp_addr = SocketAddr::new(addr.ip(), port);
            let tcp = if want_tcp {
                match TcpListener::bind(tcp_addr).await {
                    Ok(l) => Some(l),
                    Err(source) if addr.port() == 0 => {
                        last_err = Some(source);
                        continue;
                    }
                    Err(source) => {
                        return Err(ServeError::Bind {
                            transport: "TCP",
                            addr: tcp_addr,
                            source,
                        })
                    }
                }
            } else {
                None
            };
            let local = match (&udp, &tcp) {
                (Some(u), _) => u.local_addr()?,
                (None, Some(t)) => t.local_addr()?,
                (None, None) => return Err(ServeError::Config("no SIP transport".into())),
            };
            let report_dir = Some(sip.report_dir.clone()).filter(|d| !d.as_os_str().is_empty());
            let hub = Arc::new(HandoverHub::new());
            let http = bind_http(&engines.config.http, &hub).await?;
            return Ok(Server {
                udp: udp.map(Arc::new),
                tcp,
                local,
                engines,
                report_dir,
                hub,
                http,
            });
        }
        Err(ServeError::Bind {
            transport: "TCP",
            addr,
            source: last_err.unwrap_or_else(|| std::io::Error::other("no free port")),
        })
    }

    /// The address SIP listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address of the agents' HTTP side, and where its token comes from.
    pub fn http(&self) -> Option<(SocketAddr, &str)> {
        let h = self.http.as_ref()?;
        Some((h.listener.local_addr().ok()?, h.token_source.as_str()))
    }

    /// Where the admin API's token comes from (the configuration, an environment variable, or
    /// the file it was generated into), when the HTTP side is on. Never the token itself.
    pub fn admin_token_source(&self) -> Option<&str> {
        self.http.as_ref().map(|h| h.admin_token_source.as_str())
    }

    /// Writes finished calls' records to `dir` (overrides `[sip] report_dir`).
    pub fn set_report_dir(&mut self, dir: Option<PathBuf>) {
        if dir.is_some() {
            self.report_dir = dir;
        }
    }

    /// Runs until `shutdown` resolves; then stops taking calls, hangs up the ones in progress
    /// and waits (up to 5 s) for their records to be written.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let config = self.engines.config.clone();
        let sip = &config.sip;
        let auth = (!sip.auth.users.is_empty()).then(|| {
            DigestAuthenticator::new(DigestConfig {
                realm: sip.auth.realm.clone(),
                users: sip
                    .auth
                    .users
                    .iter()
                    .map(|u| (u.user.clone(), u.password.clone()))
                    .collect(),
                nonce_ttl: Duration::from_secs(sip.auth.nonce_ttl_s),
            })
        });
        let allow =
            AllowList::parse(&sip.allow_from).map_err(|e| ServeError::Config(e.to_string()))?;
        let endpoint = SipEndpoint::new(
            EndpointConfig {
                max_calls: sip.max_calls,
                min_session_expires: sip.min_session_expires,
                user_agent: sip.user_agent.clone(),
                sip_port: self.local.port(),
                ..EndpointConfig::default()
            },
            auth,
            allow,
            Instant::now(),
        );
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        if let Some(listener) = self.tcp {
            tokio::spawn(accept_tcp(listener, self.local, inbound_tx.clone()));
        }
        let ports = PortPool::new(config.media.rtp_port_min, config.media.rtp_port_max);
        let pacer = Pacer::start()?;
        // Hand-over events go to the webhook through the durable outbox; events left from a
        // previous run are delivered too.
        let webhook = &config.handover.webhook;
        let deliverer = if webhook.enabled() {
            let outbox = Outbox::open(&webhook.database)
                .map_err(|e| ServeError::Config(format!("webhook outbox: {e}")))?;
            tracing::info!(url = %webhook.url, database = %webhook.database.display(), "webhook outbox open");
            Some(Arc::new(spawn_deliverer(Arc::new(outbox), webhook.clone())))
        } else {
            None
        };
        // Calls in progress, and whether the gateway can take calls (the admin API shows both).
        let live = Arc::new(LiveCalls::new());
        let readiness = Arc::new(Readiness::new());
        readiness.set_models_loaded(true);
        let mut history = None;
        let mut background = Vec::new();
        background.extend(recording::spawn_retention(&config.recording));
        if config.recording.enabled {
            tracing::info!(dir = %config.recording.dir.display(), retention_days = config.recording.retention_days, "calls are recorded");
        }
        if let Some(h) = self.http {
            history = h.history.clone();
            if let Some(store) = &history {
                background.extend(crate::observe::finished::spawn_retention(
                    Arc::clone(store),
                    config.http.history_retention_days,
                ));
            }
            let admin = AdminState::new(self.engines.clone(), h.admin_token, Arc::clone(&self.hub))
                .with_history(history.clone())
                .with_live(Arc::clone(&live))
                .with_readiness(Arc::clone(&readiness))
                .with_outbox(deliverer.as_ref().map(|d| Arc::clone(d.outbox())))
                .with_metrics_token(Some(config.http.metrics_token.clone()));
            let app = crate::web::router(h.state, Some(Arc::new(admin)));
            background.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(h.listener, app).await {
                    tracing::error!(error = %e, "the HTTP server stopped");
                }
            }));
        }
        let signalling = Signalling {
            endpoint,
            udp: self.udp,
            local: self.local,
            tcp_writers: HashMap::new(),
            calls: HashMap::new(),
            inbound_tx,
            engines: self.engines,
            ports,
            report_dir: self.report_dir,
            local_ips: HashMap::new(),
            pacer,
            legs: HashMap::new(),
            deliverer: deliverer.clone(),
            hub: self.hub,
            history,
            live,
            readiness,
        };
        let result = signalling.run(inbound_rx, shutdown).await;
        for task in background {
            task.abort();
        }
        if let Some(d) = deliverer {
            // Whatever is still undelivered stays in the outbox for the next start.
            let _ = tokio::time::timeout(Duration::from_secs(3), d.shutdown()).await;
        }
        result
    }
}

/// The signalling task's state.
struct Signalling {
    endpoint: SipEndpoint,
    udp: Option<Arc<UdpSocket>>,
    local: SocketAddr,
    tcp_writers: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    calls: HashMap<CallHandle, SignalSender>,
    inbound_tx: mpsc::Sender<Inbound>,
    engines: Engines,
    ports: PortPool,
    report_dir: Option<PathBuf>,
    /// Our address as seen from each remote IP, when listening on a wildcard address.
    local_ips: HashMap<IpAddr, IpAddr>,
    /// Sends every call's RTP on time.
    pacer: Pacer,
    /// Agent legs we placed -> the caller's call they belong to.
    legs: HashMap<CallHandle, CallHandle>,
    /// The webhook deliverer, when webhooks are configured.
    deliverer: Option<Arc<DelivererHandle>>,
    hub: Arc<HandoverHub>,
    /// Where finished calls are stored for the admin API.
    history: Option<Arc<CallHistory>>,
    /// Calls in progress, for the admin API.
    live: Arc<LiveCalls>,
    /// What `/readyz` reports.
    readiness: Arc<Readiness>,
}

impl Signalling {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        let udp = self.udp.clone();
        let mut draining_since: Option<Instant> = None;
        self.readiness.set_sip_listening(true);
        loop {
            let deadline = self.endpoint.next_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let recv = async {
                match &udp {
                    Some(sock) => sock.recv_from(&mut buf).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = recv => match received {
                    Ok((n, from)) => {
                        let local_ip = self.local_ip_for(from.ip());
                        let peer = Peer { transport: Transport::Udp, addr: from };
                        if n > MAX_MESSAGE_BYTES {
                            tracing::warn!(%from, "oversized SIP datagram dropped");
                        } else {
                            self.endpoint.handle_bytes(peer, local_ip, &buf[..n], Instant::now());
                        }
                    }
                    // ICMP port unreachable and the like surface here on Linux; they concern
                    // one peer, never the listener.
                    Err(e) => tracing::debug!(error = %e, "UDP receive error"),
                },
                msg = inbound.recv() => match msg {
                    Some(m) => self.on_inbound(m),
                    None => return Ok(()),
                },
                () = sleep => self.endpoint.handle_timeout(Instant::now()),
                () = &mut shutdown, if draining_since.is_none() => {
                    tracing::info!(calls = self.calls.len(), "shutting down: hanging up calls");
                    self.readiness.set_sip_listening(false);
                    self.endpoint.drain();
                    draining_since = Some(Instant::now());
                    for tx in self.calls.values() {
                        let _ = tx.send(CallSignal::Shutdown);
                    }
                }
            }
            self.flush().await;
            if let Some(since) = draining_since {
                if self.calls.is_empty() || since.elapsed() > Duration::from_secs(5) {
                    return Ok(());
                }
            }
        }
    }

    /// Our IP as the peer at `remote` sees it: the listen address, or for a wildcard listen
    /// address the source address the kernel picks for that peer.
    fn local_ip_for(&mut self, remote: IpAddr) -> IpAddr {
        if !self.local.ip().is_unspecified() {
            return self.local.ip();
        }
        *self.local_ips.entry(remote).or_insert_with(|| {
            let probe =
                std::net::UdpSocket::bind(SocketAddr::new(self.local.ip(), 0)).and_then(|s| {
                    s.connect(SocketAddr::new(remote, 9))?;
                    s.local_addr()
                });
            probe.map_or(remote, |a| a.ip())
        })
    }

    fn on_inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::TcpFrame {
                conn,
                from,
                local,
                bytes,
            } => {
                let peer = Peer {
                    transport: Transport::Tcp(conn),
                    addr: from,
                };
                self.endpoint
                    .handle_bytes(peer, local.ip(), &bytes, Instant::now());
            }
            Inbound::TcpOpened { conn, writer } => {
                self.tcp_writers.insert(conn, writer);
            }
            Inbound::TcpClosed { conn } => {
                self.tcp_writers.remove(&conn);
            }
            Inbound::Hangup(handle) => self.endpoint.hangup(handle, Instant::now()),
            Inbound::CallDone(handle) => {
                self.calls.remove(&handle);
                // Nothing is left dangling: an agent leg of a finished call is ended too.
                self.end_agent_legs(handle, Instant::now());
            }
            Inbound::PlaceCall(req) => {
                let result = self.place_call(&req);
                let _ = req.reply.send(result);
            }
            Inbound::Refer(req) => {
                let result = self.refer(&req);
                let _ = req.reply.send(result);
            }
        }
    }

    /// Ends (cancels or hangs up) every agent leg placed for `caller`.
    fn end_agent_legs(&mut self, caller: CallHandle, now: Instant) {
        let legs: Vec<CallHandle> = self
            .legs
            .iter()
            .filter(|(_, c)| **c == caller)
            .map(|(a, _)| *a)
            .collect();
        for agent in legs {
            tracing::info!(call = %caller, %agent, "caller gone; ending the agent leg");
            self.endpoint.hangup(agent, now);
        }
    }

    /// Places the agent leg of a transfer.
    fn place_call(&mut self, req: &PlaceCall) -> Result<(CallHandle, ports::RtpPorts), LegError> {
        let addr = req.addr;
        if self.udp.is_none() {
            return Err(LegError::NoUdp);
        }
        let local_ip = self.local_ip_for(addr.ip());
        let ports = self.ports.take(local_ip).ok_or(LegError::NoPort)?;
        let local = LocalMedia {
            address: local_ip,
            rtp_port: ports.rtp_port(),
            session_id: rand::random::<u32>().into(),
            session_version: 1,
        };
        let handle = self.endpoint.invite(
            OutboundCall {
                target: req.target.clone(),
                peer: Peer {
                    transport: Transport::Udp,
                    addr,
                },
                local_ip,
                from_display: req.from_display.clone(),
                from_user: req.from_user.clone(),
                local,
                headers: req.headers.clone(),
            },
            Instant::now(),
        );
        self.legs.insert(handle, req.caller);
        Ok((handle, ports))
    }

    /// Sends a REFER for a transfer of `req.caller`.
    fn refer(&mut self, req: &ReferCall) -> Result<String, LegError> {
        crate::call::control::send_refer(
            &mut self.endpoint,
            req.caller,
            &req.target,
            &req.headers,
            req.replacing,
            Instant::now(),
        )
    }

    /// Sends what the endpoint produced and acts on its events.
    async fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.transmit(t).await;
        }
        while let Some(event) = self.endpoint.poll_event() {
            self.on_event(event);
            while let Some(t) = self.endpoint.poll_transmit() {
                self.transmit(t).await;
            }
        }
    }

    async fn transmit(&mut self, t: Transmit) {
        match t.to.transport {
            Transport::Udp => {
                if let Some(sock) = &self.udp {
                    if let Err(e) = sock.send_to(&t.bytes, t.to.addr).await {
                        tracing::warn!(to = %t.to.addr, error = %e, "SIP send failed");
                    }
                }
            }
            Transport::Tcp(conn) => {
                let sent = match self.tcp_writers.get(&conn) {
                    Some(w) => w.try_send(t.bytes.clone()).is_ok(),
                    None => false,
                };
                if sent {
                    return;
                }
                match t.reconnect {
                    // The caller closed the connection (idle phones do): a request of ours goes
                    // on a new connection to the dialog's remote target (RFC 3261 18.1.1).
                    Some(target) => {
                        tracing::info!(%target, "TCP connection closed; reconnecting to the remote target");
                        tokio::spawn(connect_and_send(
                            target,
                            t.bytes,
                            self.local,
                            self.inbound_tx.clone(),
                        ));
                    }
                    None => {
                        tracing::warn!(to = %t.to.addr, "TCP connection closed or stalled; message dropped");
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::IncomingCall(call) => {
                let Some(ports) = self.ports.take(call.local_ip) else {
                    tracing::warn!(call = %call.handle, "no free RTP port; rejecting with 503");
                    self.endpoint.reject(call.handle, 503, now);
                    return;
                };
                let local = LocalMedia {
                    address: call.local_ip,
                    rtp_port: ports.rtp_port(),
                    session_id: rand::random::<u32>().into(),
                    session_version: 1,
                };
                let flows = self.engines.flows.current();
                let flow = match call.called.as_deref() {
                    Some(number) => flows.for_number(number),
                    None => flows.default_flow(),
                };
                let (control_tx, control_rx) = signal_queue();
                self.live.start(
                    &call.call_id,
                    &call.from,
                    call.called.as_deref(),
                    &flow.name,
                );
                crate::observe::metrics::global().calls_total.inc();
                let setup = CallSetup {
                    history: self.history.clone(),
                    live: Arc::clone(&self.live),
                    deliverer: self.deliverer.clone(),
                    hub: Arc::clone(&self.hub),
                    call: *call.clone(),
                    ports,
                    flow,
                    engines: self.engines.clone(),
                    report_dir: self.report_dir.clone(),
                    pacer: self.pacer.clone(),
                    control: control_rx,
                    hangup: self.inbound_tx.clone(),
                };
                self.calls.insert(call.handle, control_tx);
                self.endpoint.accept(call.handle, local, now);
                let handle = call.handle;
                let done = self.inbound_tx.clone();
                let span = tracing::info_span!("call", id = %handle, call_id = %call.call_id);
                let (live, call_id) = (Arc::clone(&self.live), call.call_id.clone());
                tokio::spawn(
                    async move {
                        call::run_call_media(setup).await;
                        live.end(&call_id);
                        let _ = done.send(Inbound::CallDone(handle)).await;
                    }
                    .instrument(span),
                );
            }
            Event::CallConfirmed(handle) => self.control(handle, CallSignal::Confirmed),
            Event::MediaChanged(handle, media) => {
                self.control(handle, CallSignal::MediaChanged(media))
            }
            Event::Dtmf(handle, digit) => self.control(handle, CallSignal::Dtmf(digit)),
            Event::OutboundProgress(agent, code) => {
                if let Some(caller) = self.legs.get(&agent).copied() {
                    self.control(caller, CallSignal::Agent(AgentEvent::Progress(agent, code)));
                }
            }
            Event::OutboundAnswered(agent, media) => match self.legs.get(&agent).copied() {
                Some(caller) if self.calls.contains_key(&caller) => self.control(
                    caller,
                    CallSignal::Agent(AgentEvent::Answered(agent, media)),
                ),
                // The caller is gone: the agent leg has nothing to bridge.
                _ => self.endpoint.hangup(agent, now),
            },
            Event::Refer(handle, progress) => self.control(handle, CallSignal::Refer(progress)),
            Event::CallEnded(handle, reason) => {
                if let Some(caller) = self.legs.remove(&handle) {
                    self.control(caller, CallSignal::Agent(AgentEvent::Ended(handle, reason)));
                    return;
                }
                // The caller hung up: its agent leg (ringing or bridged) ends too.
                self.end_agent_legs(handle, now);
                self.control(handle, CallSignal::Ended(reason))
            }
        }
    }

    /// Tells a call task; never waits, and never drops what decides the call (see
    /// [`signal_queue`]).
    fn control(&mut self, handle: CallHandle, msg: CallSignal) {
        if let Some(tx) = self.calls.get(&handle) {
            match tx.send(msg) {
                Ok(()) => {}
                Err(NotQueued::OverCap) => {
                    tracing::warn!(call = %handle, "call task far behind; a repeated event (key press) dropped");
                }
                Err(NotQueued::Closed) => {
                    tracing::debug!(call = %handle, "call task already gone");
                }
            }
        }
    }
}

/// Binds the agents' HTTP side when `[http] listen` is set: the listener, the token and the
/// feedback store.
async fn bind_http(
    config: &crate::web::HttpConfig,
    hub: &Arc<HandoverHub>,
) -> Result<Option<HttpSide>, ServeError> {
    if config.listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = config.listen.parse().map_err(|_| {
        ServeError::Config(format!(
            "[http] listen `{}` is not ADDR:PORT",
            config.listen
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            transport: "HTTP",
            addr,
            source,
        })?;
    let (token, token_source) = config
        .resolve_token()
        .map_err(|e| ServeError::Config(format!("agent token: {e}")))?;
    let feedback = FeedbackStore::open(&config.feedback_database)
        .map_err(|e| ServeError::Config(format!("feedback store: {e}")))?;
    let (admin_token, admin_token_source) = config
        .resolve_admin_token()
        .map_err(|e| ServeError::Config(format!("admin token: {e}")))?;
    if crate::admin::same(&admin_token, &token) {
        return Err(ServeError::Config(
            "the admin token must differ from the agent token".into(),
        ));
    }
    let history = if config.history_database.as_os_str().is_empty() {
        None
    } else {
        let history = CallHistory::open(&config.history_database)
            .map_err(|e| ServeError::Config(format!("call history: {e}")))?;
        tracing::info!(database = %config.history_database.display(), "call history open");
        Some(Arc::new(history))
    };
    let state = Arc::new(crate::web::WebState {
        hub: Arc::clone(hub),
        feedback: Arc::new(feedback),
        token,
    });
    Ok(Some(HttpSide {
        listener,
        state,
        token_source,
        admin_token,
        admin_token_source,
        history,
    }))
}

/// TCP connection ids, accepted and opened alike.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Opens a TCP connection to `target`, sends `bytes` first, then serves it like an accepted one
/// (so the response to our request comes back through the endpoint).
async fn connect_and_send(
    target: SocketAddr,
    bytes: Vec<u8>,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
) {
    let connect = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(target));
    let mut stream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%target, error = %e, "cannot reconnect over TCP; message dropped");
            return;
        }
        Err(_) => {
            tracing::warn!(%target, "TCP reconnect timed out; message dropped");
            return;
        }
    };
    if let Err(e) = stream.write_all(&bytes).await {
        tracing::warn!(%target, error = %e, "TCP send failed after reconnecting");
        return;
    }
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let local = stream.local_addr().unwrap_or(local);
    serve_tcp(stream, conn, target, local, inbound).await;
}

/// Accepts TCP connections; each gets a reader task (framing) and a writer task.
async fn accept_tcp(listener: TcpListener, local: SocketAddr, inbound: mpsc::Sender<Inbound>) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let local = stream.local_addr().unwrap_or(local);
        tokio::spawn(serve_tcp(stream, conn, from, local, inbound.clone()));
    }
}

async fn serve_tcp(
    stream: TcpStream,
    conn: u64,
    from: SocketAddr,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (write_tx, mut write_rx) = mpsc::channel::<Vec<u8>>(64);
    if inbound
        .send(Inbound::TcpOpened {
            conn,
            writer: write_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = write_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut framer = StreamFramer::new();
    let mut buf = vec![0u8; 16 * 1024];
    // A connection that sends nothing for this long is closed (bounded resources).
    let idle = Duration::from_secs(300);
    loop {
        let n = match tokio::time::timeout(idle, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_message() {
                Ok(Some(msg)) => {
                    let frame = Inbound::TcpFrame {
                        conn,
                        from,
                        local,
                        bytes: msg.to_bytes(),
                    };
                    if inbound.send(frame).await.is_err() {
                        write_task.abort();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // A stream cannot resynchronise after a bad frame: close it.
                    tracing::warn!(%from, error = %e, "bad SIP frame on TCP; closing the connection");
                    let _ = inbound.send(Inbound::TcpClosed { conn }).await;
                    write_task.abort();
                    return;
                }
            }
        }
    }
    let _ = inbound.send(Inbound::TcpClosed { conn }).await;
    write_task.abort();
}

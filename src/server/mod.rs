//! The tokio layer that owns the SIP and RTP sockets and the timers, and drives the sans-IO
//! cores in [`crate::sip`] and [`crate::media`] for `voicebot serve`.
//!
//! One signalling task owns the [`SipEndpoint`]: it reads the UDP socket and the TCP and TLS
//! connections' frames (one connection loop, generic over the stream: [`tls`] only adds the
//! handshake), sleeps until the endpoint's next timer, and turns endpoint events into
//! per-call media tasks ([`call`]). A call task owns its RTP socket, its jitter buffer and paced
//! sender, and the call's pipeline; it talks to the signalling task only through channels, so a
//! slow call never holds up signalling or another call.

pub mod admission;
pub mod banner;
pub mod call;
mod caller_leg;
pub mod dns;
mod event_poster;
pub mod pacer;
mod ports;
pub mod recording;
mod recover;
pub mod signal_queue;
mod speech_log;
pub mod tls;
pub mod transfer;
mod trunks;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use crate::admin::AdminState;
use crate::call::control::LegError;
use crate::config::media::TransportKind;
use crate::config::AdmissionConfig;
use crate::flow_sync::{self, FlowSync};
use crate::handover::feedback::FeedbackStore;
use crate::handover::hub::HandoverHub;
use crate::handover::outbox::{spawn_deliverer, DelivererHandle, Outbox};
use crate::history::CallHistory;
use crate::journal::{CallJournal, JournalWriter};
use crate::observe::live::LiveCalls;
use crate::observe::readiness::{Readiness, StopLevel, Stopper};
use crate::pipeline::Engines;
use crate::sip::auth::{AllowList, DigestAuthenticator, DigestConfig};
use crate::sip::endpoint::{
    CallHandle, EndpointConfig, Event, OutboundAuth, OutboundCall, Peer, SipEndpoint, Transmit,
    Transport,
};
use crate::sip::escape::escaped;
use crate::sip::message::{parse_sip_uri, wants_tls, StreamFramer, MAX_MESSAGE_BYTES};
use crate::sip::sdp::LocalMedia;
use call::{AgentEvent, CallSetup, CallSignal};
use pacer::Pacer;
use ports::PortPool;
use rustls::pki_types::ServerName;
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
    /// The HTTP side's address is taken (often by another program on port 8080, the
    /// default): the message says how to choose another.
    #[error(
        "cannot listen for HTTP (console, agent screen, admin API) on {addr}: {error}; \
         choose another address with `[http] listen = \"ADDR:PORT\"` in the configuration or \
         `voicebot serve --http ADDR:PORT`, or turn the HTTP side off with `--http \"\"`"
    )]
    HttpBind {
        addr: SocketAddr,
        /// Not `source`: the message already says it, and a chain would repeat it.
        error: std::io::Error,
    },
    #[error("bad [sip] settings: {0}")]
    Config(String),
    #[error("SIP socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}

/// What the signalling task hears from the rest of the server.
enum Inbound {
    /// A SIP message framed from a TCP or TLS connection.
    TcpFrame {
        transport: Transport,
        from: SocketAddr,
        local: SocketAddr,
        bytes: Vec<u8>,
    },
    TcpOpened {
        conn: u64,
        writer: TcpWriter,
    },
    TcpClosed {
        conn: u64,
    },
    /// A connection we were opening could not be (refused, TLS handshake failed): what was
    /// queued for it is dropped, and calls placed over it end.
    ConnectFailed {
        transport: Transport,
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
    /// The credentials for a challenge to the INVITE.
    pub auth: Option<OutboundAuth>,
    /// The new leg's handle and its RTP ports, or why it could not be placed.
    pub reply: tokio::sync::oneshot::Sender<Result<(CallHandle, ports::RtpPorts), LegError>>,
}

/// A bound, not yet running server.
pub struct Server {
    udp: Option<Arc<UdpSocket>>,
    tcp: Option<TcpListener>,
    local: SocketAddr,
    /// The TLS listener (`[sip.tls] listen`) and the TLS settings for both directions.
    tls_listener: Option<TcpListener>,
    tls: tls::TlsSide,
    engines: Engines,
    report_dir: Option<PathBuf>,
    /// Live hand-over contexts and events (for the HTTP side).
    hub: Arc<HandoverHub>,
    /// The HTTP listener for agents, when `[http] listen` is set.
    http: Option<HttpSide>,
    /// The WebRTC edge (browser callers and agents), when `[webrtc] enabled` and SIP takes UDP.
    edge: Option<crate::webrtc::edge::Edge>,
    /// The cluster's shared PostgreSQL store, when `[storage] url` is set.
    storage: Option<crate::storage::Shared>,
    /// The cluster's flows and their listener thread, with a shared store.
    flow_sync: Option<(Arc<FlowSync>, flow_sync::Listener)>,
    /// Drain and stop requests (signals, `POST /api/drain`).
    stopper: Arc<Stopper>,
}

/// The bound HTTP side.
struct HttpSide {
    listener: tokio::net::TcpListener,
    state: Arc<crate::web::WebState>,
    token_source: String,
    /// The admin API's token and where it came from.
    admin_token: String,
    admin_token_source: String,
    /// The call history: on the shared store when `[storage] url` is set, else in
    /// `[http] history_database` when that is set.
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
        let tls_listen = match sip.tls.listen_addr() {
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => return Err(ServeError::Config(format!("[sip.tls] listen {e}"))),
            None => None,
        };
        // Bad certificate or key files stop the start here, naming the file.
        let tls = tls::TlsSide::load(&sip.tls, tls_listen.is_some())?;
        let mut tls_listener = match tls_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServeError::Bind {
                            transport: "TLS",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
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
            let storage = connect_storage(&engines.config.storage, local.port()).await?;
            // The cluster's flows are in force before a call is answered.
            let flow_sync = match &storage {
                Some(shared) => Some(start_flow_sync(&engines, shared).await?),
                None => None,
            };
            let hub = Arc::new(HandoverHub::new());
            let relay = start_relay(storage.as_ref(), &hub).await?;
            // One registry of agent screens: the event streams log screens in, the edge rings them.
            let agents = Arc::new(crate::webrtc::agents::BrowserAgents::new(Arc::clone(&hub)));
            let edge = start_edge(&engines, udp.as_ref().map(|_| local), &agents).await?;
            let http = bind_http(
                &engines.config.http,
                storage.as_ref(),
                &hub,
                edge.as_ref().map(|e| e.handle.clone()),
                agents,
                relay,
            )
            .await?;
            return Ok(Server {
                udp: udp.map(Arc::new),
                tcp,
                local,
                tls_listener: tls_listener.take(),
                tls: tls.clone(),
                engines,
                report_dir,
                hub,
                http,
                edge,
                storage,
                flow_sync,
                stopper: Arc::new(Stopper::new()),
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

    /// The address of the TLS listener, when `[sip.tls] listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listener.as_ref().and_then(|l| l.local_addr().ok())
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

    /// The cluster's shared store, when `[storage] url` is set.
    pub fn storage(&self) -> Option<&crate::storage::Shared> {
        self.storage.as_ref()
    }

    /// Asks this gateway to drain or stop: the process's SIGTERM/SIGINT handler calls
    /// [`Stopper::signal`] (first: drain, second: hang up at once).
    pub fn stopper(&self) -> Arc<Stopper> {
        Arc::clone(&self.stopper)
    }

    /// Writes finished calls' records to `dir` (overrides `[sip] report_dir`).
    pub fn set_report_dir(&mut self, dir: Option<PathBuf>) {
        if dir.is_some() {
            self.report_dir = dir;
        }
    }

    /// The SIP core for `config` (digest users, allow list, limits).
    fn sip_endpoint(
        &self,
        config: &crate::config::GatewayConfig,
    ) -> Result<SipEndpoint, ServeError> {
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
                max_failures: sip.auth.max_failures,
                failure_window: Duration::from_secs(sip.auth.failure_window_s),
            })
        });
        let allow =
            AllowList::parse(&sip.allow_from).map_err(|e| ServeError::Config(e.to_string()))?;
        Ok(SipEndpoint::new(
            EndpointConfig {
                max_calls: sip.max_calls,
                min_session_expires: sip.min_session_expires,
                user_agent: sip.user_agent.clone(),
                sip_port: self.local.port(),
                tls_port: self.tls_addr().map(|a| a.port()),
                srtp: config.media.srtp,
                srtp_by_source: trunks::srtp_by_source(&sip.trunks),
                ..EndpointConfig::default()
            },
            auth,
            allow,
            Instant::now(),
        ))
    }

    /// Runs until it has drained. `shutdown` resolving counts as one signal to the
    /// [`Server::stopper`]: the gateway drains (new INVITEs and OPTIONS get 503, the calls in
    /// progress go on to their end, `/readyz` says draining) and returns once no call is left;
    /// after `[sip] drain_timeout_s`, or at a second signal, it hangs up the calls left and
    /// waits (up to 5 s) for their records to be written.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let config = self.engines.config.clone();
        // The flows' listener follows the cluster as long as the server runs.
        let flow_sync = self.flow_sync.take();
        let sip = &config.sip;
        let mut endpoint = self.sip_endpoint(&config)?;
        // Trunks that register over TLS give this port in their Contact.
        let tls_port = self.tls_addr().map(|a| a.port());
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        let tcp_limits = TcpLimits::from_config(sip);
        if let Some(listener) = self.tcp {
            tokio::spawn(accept_tcp(
                listener,
                self.local,
                inbound_tx.clone(),
                tcp_limits,
                None,
            ));
        }
        if let (Some(listener), Some(acceptor)) = (self.tls_listener, self.tls.acceptor.clone()) {
            let local = listener.local_addr()?;
            tracing::info!(%local, mutual = !sip.tls.client_ca_file.as_os_str().is_empty(), "SIP listening on TLS");
            tokio::spawn(accept_tcp(
                listener,
                local,
                inbound_tx.clone(),
                tcp_limits,
                Some(acceptor),
            ));
        }
        let keepalive = (sip.tls.keepalive_interval_s > 0)
            .then(|| Duration::from_secs(sip.tls.keepalive_interval_s));
        let ports = PortPool::new(config.media.rtp_port_min, config.media.rtp_port_max);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let admission = admission::AdmissionPolicy::new(&config.admission, cores);
        tracing::info!(cores, "admission: {}", admission.describe());
        let pacer = Pacer::start()?;
        // Hand-over events go to the webhook through the durable outbox; events left from a
        // previous run are delivered too.
        let deliverer = open_deliverer(&config.handover.webhook, self.storage.as_ref()).await?;
        // Calls in progress, and whether the gateway can take calls (the admin API shows both).
        let live = Arc::new(LiveCalls::new());
        let readiness = Arc::new(Readiness::new());
        readiness.set_models_loaded(true);
        let trunk_board = Arc::new(crate::admin::trunks::TrunkBoard::new());
        let trunks = trunks::Trunks::new(sip.trunks.clone(), Arc::clone(&trunk_board), tls_port);
        let resolver = dns::SipResolver::new(sip);
        let trunk_targets = trunks::resolve_targets(&sip.trunks, &resolver).await;
        let mut history = None;
        // Calls' records name the gateway that handled them when the gateways share a store.
        let node: Option<Arc<str>> = self.storage.as_ref().map(|s| Arc::from(s.node.as_str()));
        let mut background = Vec::new();
        background.extend(recording::spawn_retention(&config.recording));
        if config.recording.enabled {
            tracing::info!(dir = %config.recording.dir.display(), retention_days = config.recording.retention_days, "calls are recorded");
        }
        if let Some(h) = self.http {
            history = h.history.clone();
            if let Some(relay) = h.state.relay.clone() {
                background.extend(relay.spawn_retention(config.http.history_retention_days));
            }
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
                .with_stopper(Arc::clone(&self.stopper))
                .with_trunks(Arc::clone(&trunk_board))
                .with_outbox(deliverer.as_ref().map(|d| Arc::clone(d.outbox())))
                .with_webrtc(self.edge.as_ref().map(|e| e.handle.clone()))
                .with_flow_sync(flow_sync.as_ref().map(|(s, _)| Arc::clone(s)))
                .with_metrics_token(Some(config.http.metrics_token.clone()));
            let app = crate::web::router(h.state, Some(Arc::new(admin)));
            background.push(tokio::spawn(crate::web::serve(
                h.listener,
                app,
                Duration::from_secs(config.http.header_timeout_s.clamp(1, 86_400)),
                config.http.max_connections,
            )));
        }
        if let (None, Some(shared)) = (&history, &self.storage) {
            // No HTTP side here, but this gateway's calls still belong in the cluster's
            // history, which the other gateways' admin APIs show.
            let store = shared_history(shared).await?;
            background.extend(crate::observe::finished::spawn_retention(
                Arc::clone(&store),
                config.http.history_retention_days,
            ));
            history = Some(store);
        }
        let journal = match open_journal(&sip.journal) {
            Some(journal) => {
                let sinks = recover::Sinks {
                    report_dir: self.report_dir.as_deref(),
                    history: history.clone(),
                    deliverer: deliverer.clone(),
                    node: node.as_deref(),
                };
                let n = recover::recover(Arc::clone(&journal), &mut endpoint, sinks).await;
                if n > 0 {
                    tracing::warn!(calls = n, "closed the calls the previous run left open");
                }
                Some(JournalWriter::start(journal)?)
            }
            None => None,
        };
        let webrtc_edge = self.edge.as_ref().map(|e| e.sip_addr);
        let resolver = Arc::new(resolver.with_webrtc_edge(webrtc_edge));
        let signalling = Signalling {
            webrtc_edge,
            resolver,
            journal,
            ids: HashMap::new(),
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
            tcp_limits,
            connector: self.tls.connector.clone(),
            keepalive,
            connecting: HashMap::new(),
            owned: HashMap::new(),
            pacer,
            legs: HashMap::new(),
            deliverer: deliverer.clone(),
            hub: self.hub,
            history,
            node,
            live,
            readiness,
            trunks,
            admission,
            ended: HashSet::new(),
        };
        let stopper = Arc::clone(&self.stopper);
        let shutdown = async move {
            shutdown.await;
            stopper.signal();
            // Further stops come through the stopper only.
            std::future::pending::<()>().await;
        };
        let stops = Stops {
            level: self.stopper.subscribe(),
            closed: false,
            drain_timeout: Duration::from_secs(sip.drain_timeout_s),
        };
        let result = signalling
            .run(inbound_rx, shutdown, stops, trunk_targets)
            .await;
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

/// The webhook deliverer when a webhook is configured. With a shared store the outbox is the
/// cluster's (PostgreSQL; `database` is not used) and every gateway delivers from it, so a dead
/// gateway's events are delivered by a survivor once its claims' lease runs out.
async fn open_deliverer(
    webhook: &crate::handover::outbox::WebhookConfig,
    storage: Option<&crate::storage::Shared>,
) -> Result<Option<Arc<DelivererHandle>>, ServeError> {
    if !webhook.enabled() {
        return Ok(None);
    }
    let outbox = match storage {
        Some(shared) => {
            let (pool, node, lease) = (
                shared.pool.clone(),
                shared.node.clone(),
                crate::handover::outbox::lease_for(webhook),
            );
            let outbox =
                tokio::task::spawn_blocking(move || Outbox::open_postgres(pool, &node, lease))
                    .await
                    .map_err(|e| ServeError::Config(format!("webhook outbox: {e}")))?
                    .map_err(|e| ServeError::Config(format!("webhook outbox: {e}")))?;
            tracing::info!(url = %webhook.url, store = %shared.shown_url, node = %shared.node, lease_ms = lease.as_millis(), "webhook outbox open on the shared store");
            outbox
        }
        None => {
            let outbox = Outbox::open(&webhook.database)
                .map_err(|e| ServeError::Config(format!("webhook outbox: {e}")))?;
            tracing::info!(url = %webhook.url, database = %webhook.database.display(), "webhook outbox open");
            outbox
        }
    };
    Ok(Some(Arc::new(spawn_deliverer(
        Arc::new(outbox),
        webhook.clone(),
    ))))
}

/// The cluster's call history on the shared store (for a gateway without an HTTP side).
async fn shared_history(shared: &crate::storage::Shared) -> Result<Arc<CallHistory>, ServeError> {
    let pool = shared.pool.clone();
    let store = tokio::task::spawn_blocking(move || CallHistory::open_postgres(pool))
        .await
        .map_err(|e| ServeError::Config(format!("[storage]: {e}")))?
        .map_err(|e| ServeError::Config(format!("call history on [storage]: {e}")))?;
    Ok(Arc::new(store))
}

/// Opens the journal of calls in progress ("" = none). One held by another running gateway
/// is left to it (logged): this gateway then runs without crash recovery.
fn open_journal(path: &std::path::Path) -> Option<Arc<CallJournal>> {
    if path.as_os_str().is_empty() {
        return None;
    }
    match CallJournal::open(path) {
        Ok(journal) => {
            tracing::info!(journal = %path.display(), "journal of calls in progress open");
            Some(Arc::new(journal))
        }
        Err(e) => {
            tracing::error!(error = %e, "no journal of calls in progress: a crash would lose the calls in progress");
            None
        }
    }
}

/// Stop requests as the signalling task sees them.
struct Stops {
    level: tokio::sync::watch::Receiver<StopLevel>,
    /// The stopper is gone (never while the server runs; no busy loop if it were).
    closed: bool,
    /// `[sip] drain_timeout_s`.
    drain_timeout: Duration,
}

/// How far the stop has gone.
#[derive(Debug, Default)]
struct StopState {
    draining_since: Option<Instant>,
    hung_up_since: Option<Instant>,
    /// The count of calls left last logged.
    logged_left: Option<usize>,
}

/// How long the calls hung up at the end of a drain get to finish (their records written).
const HANG_UP_GRACE: Duration = Duration::from_secs(5);

impl StopState {
    /// When the loop must wake for the stop: the drain's timeout, or the end of the grace
    /// after hanging up.
    fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        match (self.draining_since, self.hung_up_since) {
            (_, Some(at)) => Some(at + HANG_UP_GRACE),
            (Some(since), None) => Some(since + timeout),
            (None, None) => None,
        }
    }

    /// Whether the signalling task is done: draining and no call left, or the grace after
    /// hanging up has passed.
    fn done(&self, calls: usize) -> bool {
        self.draining_since.is_some()
            && (calls == 0
                || self
                    .hung_up_since
                    .is_some_and(|at| at.elapsed() > HANG_UP_GRACE))
    }
}

/// The signalling task's state.
struct Signalling {
    /// The WebRTC edge's SIP address: its INVITEs name their flow, and `webrtc:<agent>`
    /// extensions are called there.
    webrtc_edge: Option<SocketAddr>,
    /// The journal of calls in progress (their open legs are journaled here).
    journal: Option<JournalWriter>,
    /// Answered callers' calls -> the gateway's call id.
    ids: HashMap<CallHandle, String>,
    endpoint: SipEndpoint,
    udp: Option<Arc<UdpSocket>>,
    local: SocketAddr,
    tcp_writers: HashMap<u64, TcpWriter>,
    calls: HashMap<CallHandle, SignalSender>,
    inbound_tx: mpsc::Sender<Inbound>,
    engines: Engines,
    ports: PortPool,
    report_dir: Option<PathBuf>,
    /// Our address as seen from each remote IP, when listening on a wildcard address.
    local_ips: HashMap<IpAddr, IpAddr>,
    /// Deadlines for the TCP connections we open ourselves.
    tcp_limits: TcpLimits,
    /// Opens TLS connections (verifying the peer against `[sip.tls] ca_file`).
    connector: tokio_rustls::TlsConnector,
    /// CRLF pings on idle connections we opened (RFC 5626 4.4.1).
    keepalive: Option<Duration>,
    /// Connections we are opening -> the messages waiting for them.
    connecting: HashMap<u64, Vec<Vec<u8>>>,
    /// Connections we opened, by (the name a TLS peer's certificate carries, None for TCP;
    /// peer): reused for later messages to the same peer.
    owned: HashMap<(Option<ServerName<'static>>, SocketAddr), u64>,
    /// Sends every call's RTP on time.
    pacer: Pacer,
    /// Agent legs we placed -> the caller's call they belong to.
    legs: HashMap<CallHandle, CallHandle>,
    /// The webhook deliverer, when webhooks are configured.
    deliverer: Option<Arc<DelivererHandle>>,
    hub: Arc<HandoverHub>,
    /// Where finished calls are stored for the admin API.
    history: Option<Arc<CallHistory>>,
    /// This gateway's node name when a shared store is on (calls' records name it).
    node: Option<Arc<str>>,
    /// Calls in progress, for the admin API.
    live: Arc<LiveCalls>,
    /// What `/readyz` reports.
    readiness: Arc<Readiness>,
    /// RFC 3263 lookups of agent extensions, for the call tasks.
    resolver: Arc<dns::SipResolver>,
    /// `[[sip.trunks]]`: registrations and the matching of incoming calls.
    trunks: trunks::Trunks,
    /// Which new calls are refused because they could not be answered in time.
    admission: admission::AdmissionPolicy,
    /// Calls in `calls` whose dialog has ended and whose task is finishing (the record, the
    /// webhook): they no longer count against admission.
    ended: HashSet<CallHandle>,
}

impl Signalling {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        shutdown: impl std::future::Future<Output = ()>,
        mut stops: Stops,
        trunk_targets: Vec<(usize, Result<Vec<SocketAddr>, String>)>,
    ) -> Result<(), ServeError> {
        tokio::pin!(shutdown);
        self.start_trunks(trunk_targets);
        // The first REGISTERs go now: over TCP or TLS no retransmission timer would wake the
        // loop for them (they waited for the first event of any kind).
        self.flush().await;
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        let udp = self.udp.clone();
        let mut stop = StopState::default();
        self.readiness.set_sip_listening(true);
        loop {
            let deadline = [
                self.endpoint.next_timeout(),
                self.trunks.next_timeout(),
                stop.next_deadline(stops.drain_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
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
                        } else if !self.trunk_response(&buf[..n]) {
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
                () = sleep => {
                    self.endpoint.handle_timeout(Instant::now());
                    self.trunks.handle_timeout(Instant::now());
                }
                () = &mut shutdown => {}
                changed = stops.level.changed(), if !stops.closed => {
                    if changed.is_err() {
                        stops.closed = true;
                    }
                }
            }
            let level = *stops.level.borrow_and_update();
            self.advance_stop(&mut stop, level, stops.drain_timeout);
            self.flush().await;
            if stop.done(self.calls.len()) {
                tracing::info!(
                    hung_up = stop.hung_up_since.is_some(),
                    left = self.calls.len(),
                    "stopped: exiting"
                );
                return Ok(());
            }
        }
    }

    /// Moves the drain on: starts it, hangs up at its timeout or at a second signal, and
    /// logs how many calls are left as they end.
    fn advance_stop(&mut self, stop: &mut StopState, level: StopLevel, timeout: Duration) {
        let now = Instant::now();
        if level >= StopLevel::Drain && stop.draining_since.is_none() {
            tracing::info!(
                calls = self.calls.len(),
                timeout_s = timeout.as_secs(),
                "draining started: new INVITEs and OPTIONS get 503; calls in progress go on"
            );
            self.readiness.set_draining(true);
            self.endpoint.drain();
            self.trunks.unregister_all(now);
            stop.draining_since = Some(now);
            stop.logged_left = Some(self.calls.len());
        }
        let Some(since) = stop.draining_since else {
            return;
        };
        if stop.hung_up_since.is_none() {
            let timed_out = now.duration_since(since) >= timeout;
            if level == StopLevel::HangUp || timed_out {
                if timed_out {
                    tracing::warn!(
                        calls = self.calls.len(),
                        timeout_s = timeout.as_secs(),
                        "drain timeout ([sip] drain_timeout_s): hanging up the calls left"
                    );
                } else {
                    tracing::info!(
                        calls = self.calls.len(),
                        "second stop signal: hanging up the calls left"
                    );
                }
                self.readiness.set_sip_listening(false);
                stop.hung_up_since = Some(now);
                for tx in self.calls.values() {
                    let _ = tx.send(CallSignal::Shutdown);
                }
            } else if stop.logged_left != Some(self.calls.len()) {
                stop.logged_left = Some(self.calls.len());
                tracing::info!(calls = self.calls.len(), "draining: calls left");
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
                transport,
                from,
                local,
                bytes,
            } => {
                let peer = Peer {
                    transport,
                    addr: from,
                };
                if !self.trunk_response(&bytes) {
                    self.endpoint
                        .handle_bytes(peer, local.ip(), &bytes, Instant::now());
                }
            }
            Inbound::TcpOpened { conn, writer } => {
                // Belt and braces: a connection whose close notice was lost (see `ConnGuard`)
                // has no writer task any more; its entry goes here.
                self.tcp_writers.retain(|_, w| !w.is_closed());
                // What waited for a connection we opened goes out now, in order.
                for bytes in self.connecting.remove(&conn).unwrap_or_default() {
                    if writer.send(bytes).is_err() {
                        tracing::warn!(conn, "new connection refused our first messages");
                        break;
                    }
                }
                self.tcp_writers.insert(conn, writer);
            }
            Inbound::TcpClosed { conn } => {
                self.tcp_writers.remove(&conn);
                self.connecting.remove(&conn);
                self.owned.retain(|_, c| *c != conn);
                self.trunks.connection_failed(
                    conn,
                    "the connection to the registrar closed",
                    Instant::now(),
                );
            }
            Inbound::ConnectFailed { transport } => {
                if let Some(conn) = transport.connection() {
                    self.connecting.remove(&conn);
                    self.owned.retain(|_, c| *c != conn);
                    self.trunks.connection_failed(
                        conn,
                        "cannot connect to the registrar (refused, unreachable or TLS handshake failed)",
                        Instant::now(),
                    );
                }
                self.endpoint.transport_failed(transport);
            }
            Inbound::Hangup(handle) => self.endpoint.hangup(handle, Instant::now()),
            Inbound::CallDone(handle) => {
                self.calls.remove(&handle);
                self.ended.remove(&handle);
                self.ids.remove(&handle);
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

    /// Journals how to end `leg` (the caller's own, or an agent leg of `caller`'s call).
    fn journal_leg(&self, caller: CallHandle, leg: CallHandle) {
        let (Some(journal), Some(id)) = (&self.journal, self.ids.get(&caller)) else {
            return;
        };
        let Some(snapshot) = self.endpoint.leg_snapshot(leg) else {
            return;
        };
        let name = if leg == caller {
            crate::journal::CALLER_LEG.to_string()
        } else {
            crate::journal::agent_leg(leg.0)
        };
        journal.leg(id, &name, snapshot);
    }

    /// `leg` ended: nothing of it is left to end after a crash.
    fn journal_leg_ended(&self, leg: CallHandle) {
        let Some(journal) = &self.journal else {
            return;
        };
        if let Some(id) = self.legs.get(&leg).and_then(|c| self.ids.get(c)) {
            journal.drop_leg(id, &crate::journal::agent_leg(leg.0));
        } else if let Some(id) = self.ids.get(&leg) {
            journal.drop_leg(id, crate::journal::CALLER_LEG);
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
        let transport = match outgoing_kind(&req.target) {
            OutgoingKind::Udp if self.udp.is_none() => return Err(LegError::NoUdp),
            OutgoingKind::Udp => Transport::Udp,
            OutgoingKind::Tcp => Transport::Tcp(self.stream_to(addr, None)),
            OutgoingKind::Tls => {
                // The certificate must name the host the target names (RFC 5922 7.2).
                let host = parse_sip_uri(&req.target).map_or("", |u| u.host);
                let name = tls::server_name(host).ok_or_else(|| {
                    LegError::BadTarget(format!("`{host}` is no name a certificate can carry"))
                })?;
                Transport::Tls(self.stream_to(addr, Some(name)))
            }
        };
        let local_ip = self.local_ip_for(addr.ip());
        let ports = self.ports.take(local_ip).ok_or(LegError::NoPort)?;
        let local = LocalMedia {
            address: local_ip,
            rtp_port: ports.rtp_port(),
            session_id: rand::random::<u32>().into(),
            session_version: 1,
        };
        // A browser agent is reached at the WebRTC edge, by its name.
        let target = match (req.target.strip_prefix("webrtc:"), self.webrtc_edge) {
            (Some(agent), Some(edge)) => format!("sip:{agent}@{edge}"),
            _ => req.target.clone(),
        };
        let handle = self.endpoint.invite(
            OutboundCall {
                target,
                peer: Peer { transport, addr },
                local_ip,
                from_display: req.from_display.clone(),
                from_user: req.from_user.clone(),
                local,
                headers: req.headers.clone(),
                // Without a team's credentials, those of the trunk the extension is behind (a
                // PBX challenges its extensions' calls with the account we registered).
                auth: req
                    .auth
                    .clone()
                    .or_else(|| self.trunks.credentials_for(&req.target)),
            },
            Instant::now(),
        );
        self.legs.insert(handle, req.caller);
        self.journal_leg(req.caller, handle);
        Ok((handle, ports))
    }

    /// A connection we opened to `target` that is still usable, or a new one being opened
    /// (messages sent to it meanwhile wait in `connecting`). `tls`: over TLS, with the name the
    /// peer's certificate must carry; None: over TCP.
    fn stream_to(&mut self, target: SocketAddr, tls: Option<ServerName<'static>>) -> u64 {
        let key = (tls, target);
        if let Some(&conn) = self.owned.get(&key) {
            let open = self.tcp_writers.get(&conn).is_some_and(|w| !w.is_closed());
            if open || self.connecting.contains_key(&conn) {
                tracing::debug!(%target, conn, "reusing our connection");
                return conn;
            }
        }
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        self.connecting.insert(conn, Vec::new());
        let tls = key.0.clone().map(|name| (self.connector.clone(), name));
        self.owned.insert(key, conn);
        tokio::spawn(open_stream(OpenStream {
            conn,
            target,
            tls,
            local: self.local,
            inbound: self.inbound_tx.clone(),
            limits: self.tcp_limits,
            keepalive: self.keepalive,
        }));
        conn
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

    /// Starts the registrations of the trunks whose registrar was located.
    fn start_trunks(&mut self, targets: Vec<(usize, Result<Vec<SocketAddr>, String>)>) {
        let user_agent = self.engines.config.sip.user_agent.clone();
        for (index, target) in targets {
            match target {
                Ok(addrs) => {
                    let Some(first) = addrs.first() else {
                        continue;
                    };
                    let local_ip = self.local_ip_for(first.ip());
                    self.trunks.start(
                        index,
                        addrs,
                        local_ip,
                        self.local.port(),
                        &user_agent,
                        Instant::now(),
                    );
                }
                Err(why) => self.trunks.unresolved(index, why),
            }
        }
    }

    /// Hands a response to the trunk registrations; true when it answered one of our
    /// REGISTERs (the endpoint never sees it).
    fn trunk_response(&mut self, bytes: &[u8]) -> bool {
        if !self.trunks.any_registering() || !bytes.starts_with(b"SIP/2.0 ") {
            return false;
        }
        match crate::sip::message::SipMessage::parse(bytes) {
            Ok(msg) => self.trunks.handle_response(&msg, Instant::now()),
            Err(_) => false,
        }
    }

    /// Matches an incoming call to its trunk: the call takes the trunk's called number (per
    /// its `called_number` list) and name; returns the trunk's own flow, if it has one.
    fn match_trunk(&self, call: &mut crate::sip::endpoint::IncomingCall) -> Option<String> {
        let m = self
            .trunks
            .match_call(call.peer.addr.ip(), &call.called_headers)?;
        tracing::info!(
            call = %call.handle, trunk = %m.trunk,
            called = %escaped(m.called.as_deref().unwrap_or("")),
            source = m.source.map_or("none", |s| s.name()),
            flow = m.flow.as_deref().unwrap_or(""),
            "call matched to a trunk"
        );
        if m.called.is_some() {
            call.called = m.called;
        }
        call.trunk = Some(m.trunk);
        m.flow
    }

    /// Sends a REGISTER: over UDP from the SIP socket, over TCP or TLS on our (reused)
    /// connection to the registrar, whose responses come back through
    /// [`Signalling::trunk_response`].
    async fn transmit_register(&mut self, t: trunks::TrunkTransmit) {
        let stream = match t.transport {
            trunks::RegTransport::Udp => None,
            trunks::RegTransport::Tcp => Some((None, false)),
            trunks::RegTransport::Tls(name) => Some((Some(name), true)),
        };
        if let Some((name, tls)) = stream {
            let conn = self.stream_to(t.to, name);
            self.trunks.sent_on(t.index, conn);
            let to = Peer {
                transport: if tls {
                    Transport::Tls(conn)
                } else {
                    Transport::Tcp(conn)
                },
                addr: t.to,
            };
            self.transmit(Transmit {
                to,
                bytes: t.bytes,
                reconnect: None,
            })
            .await;
        } else if let Some(sock) = &self.udp {
            if let Err(e) = sock.send_to(&t.bytes, t.to).await {
                tracing::warn!(to = %t.to, error = %e, "REGISTER send failed");
            }
        } else {
            tracing::warn!(to = %t.to, "REGISTER over UDP but UDP is not among [sip] transports");
        }
    }

    /// Sends what the endpoint produced and acts on its events.
    async fn flush(&mut self) {
        while let Some(t) = self.trunks.poll_transmit() {
            self.transmit_register(t).await;
        }
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
            Transport::Tcp(conn) | Transport::Tls(conn) => {
                if let Some(waiting) = self.connecting.get_mut(&conn) {
                    waiting.push(t.bytes);
                    return;
                }
                let sent = match self.tcp_writers.get(&conn) {
                    Some(w) => w.send(t.bytes.clone()),
                    None => Err(WriteRefused::Closed),
                };
                match sent {
                    Ok(()) => return,
                    Err(WriteRefused::Closed) => {
                        self.tcp_writers.remove(&conn);
                    }
                    Err(WriteRefused::Backlog) => {
                        // The peer does not read what we send (or pipelines faster than it
                        // reads): close the connection rather than queue without bound or
                        // drop a response and go on (Kamailio's tcp_conn_wq_max).
                        tracing::warn!(to = %t.to.addr, "TCP peer not reading its responses; closing the connection");
                        crate::observe::metrics::refused("tcp_write_backlog");
                        if let Some(w) = self.tcp_writers.remove(&conn) {
                            w.close();
                        }
                    }
                }
                match t.reconnect {
                    // The caller closed the connection (idle phones do): a request of ours goes
                    // on a new connection to the dialog's remote target (RFC 3261 18.1.1).
                    Some(target) => {
                        let tls = t.to.transport.is_tls();
                        tracing::info!(%target, tls, "connection closed; sending on a connection to the remote target");
                        // Only the address is known here: the certificate must name it.
                        let name = tls.then(|| ServerName::IpAddress(target.ip().into()));
                        let conn = self.stream_to(target, name);
                        match self.connecting.get_mut(&conn) {
                            Some(waiting) => waiting.push(t.bytes),
                            None => {
                                let sent = self.tcp_writers.get(&conn).map(|w| w.send(t.bytes));
                                if !matches!(sent, Some(Ok(()))) {
                                    tracing::warn!(%target, "connection to the remote target unusable; message dropped");
                                }
                            }
                        }
                    }
                    None => {
                        tracing::warn!(to = %t.to.addr, "TCP connection closed or stalled; message dropped");
                    }
                }
            }
        }
    }

    /// Whether one more call may be taken now (see [`admission`]).
    fn admit(&self) -> Result<(), admission::Refusal> {
        let waits = self.admission.max_turn_wait.and_then(|_| {
            self.engines
                .pool
                .turn_wait(self.admission.window, AdmissionConfig::TURN_WAIT_QUANTILE)
        });
        let in_progress = self.calls.len().saturating_sub(self.ended.len());
        let decision = self.admission.admit(in_progress, waits);
        if decision.is_ok() {
            tracing::info!(
                in_progress,
                turn_wait_p90_ms = waits.map(|(w, _)| w.as_millis() as u64),
                turn_jobs = waits.map(|(_, n)| n),
                "call admitted"
            );
        }
        decision
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::IncomingCall(call) => {
                if let Err(refusal) = self.admit() {
                    tracing::warn!(call = %call.handle, from = %call.from, reason = refusal.reason(), "refusing a new call with 503: {refusal}");
                    crate::observe::metrics::refused(refusal.reason());
                    let retry_after = self.admission.retry_after_s;
                    self.endpoint
                        .refuse(call.handle, 503, Some(retry_after), now);
                    return;
                }
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
                let mut call = call;
                let flows = self.engines.flows.current();
                let trunk_flow = self.match_trunk(&mut call);
                let from_edge = self.webrtc_edge == Some(call.peer.addr);
                let flow = match (
                    trunk_flow.and_then(|name| flows.get(&name)),
                    call.called.as_deref(),
                ) {
                    (Some(flow), _) => flow,
                    // A browser call from the console names its flow.
                    (None, Some(name)) if from_edge => {
                        flows.get(name).unwrap_or_else(|| flows.for_number(name))
                    }
                    (None, Some(number)) => flows.for_number(number),
                    (None, None) => flows.default_flow(),
                };
                let (control_tx, control_rx) = signal_queue();
                let id = crate::call::record::new_call_id();
                self.live.start(
                    &id,
                    &call.call_id,
                    &call.from,
                    call.called.as_deref(),
                    &flow.name,
                );
                crate::observe::metrics::global().calls_total.inc();
                let flow_name = flow.name.clone();
                let setup = CallSetup {
                    journal: self.journal.clone(),
                    id: id.clone(),
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
                    resolver: Arc::clone(&self.resolver),
                    node: self.node.clone(),
                };
                self.calls.insert(call.handle, control_tx);
                self.endpoint.accept(call.handle, local, now);
                self.ids.insert(call.handle, id.clone());
                if let Some(journal) = &self.journal {
                    journal.record(
                        &id,
                        crate::journal::now_ms(),
                        serde_json::json!({
                            "id": id,
                            "call_id": call.call_id,
                            "from": call.from,
                            "called": call.called,
                            "flow": flow_name,
                        }),
                    );
                    self.journal_leg(call.handle, call.handle);
                }
                let handle = call.handle;
                let done = self.inbound_tx.clone();
                let span = tracing::info_span!("call", handle = %handle, id = %id, call_id = %escaped(&call.call_id));
                let live = Arc::clone(&self.live);
                tokio::spawn(
                    async move {
                        call::run_call_media(setup).await;
                        live.end(&id);
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
                Some(caller) if self.calls.contains_key(&caller) => {
                    // Now a dialog: a BYE, no longer a CANCEL, ends it.
                    self.journal_leg(caller, agent);
                    self.control(
                        caller,
                        CallSignal::Agent(AgentEvent::Answered(agent, media)),
                    )
                }
                // The caller is gone: the agent leg has nothing to bridge.
                _ => self.endpoint.hangup(agent, now),
            },
            Event::Refer(handle, progress) => self.control(handle, CallSignal::Refer(progress)),
            Event::CallEnded(handle, reason) => {
                self.journal_leg_ended(handle);
                if let Some(caller) = self.legs.remove(&handle) {
                    self.control(caller, CallSignal::Agent(AgentEvent::Ended(handle, reason)));
                    return;
                }
                // The caller hung up: its agent leg (ringing or bridged) ends too.
                self.end_agent_legs(handle, now);
                if self.calls.contains_key(&handle) {
                    self.ended.insert(handle);
                }
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
/// Starts the WebRTC edge in front of the SIP core at `core` (its UDP address), unless
/// `[webrtc]` is off or SIP takes no UDP (the edge speaks SIP over UDP on loopback).
async fn start_edge(
    engines: &Engines,
    core: Option<SocketAddr>,
    agents: &Arc<crate::webrtc::agents::BrowserAgents>,
) -> Result<Option<crate::webrtc::edge::Edge>, ServeError> {
    let config = &engines.config;
    let Some(core) = core.filter(|_| config.webrtc.enabled) else {
        if config.webrtc.enabled {
            tracing::warn!("browser calls need SIP over UDP ([sip] transports); WebRTC is off");
        }
        return Ok(None);
    };
    let http_ip = config
        .http
        .listen
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip());
    let ice_ip = config
        .webrtc
        .ice_ip(http_ip)
        .map_err(|e| ServeError::Config(format!("[webrtc] ice_address {e}")))?;
    let max_sessions = match config.webrtc.max_calls {
        0 => config.sip.max_calls,
        n => n,
    };
    let edge = crate::webrtc::edge::start(crate::webrtc::edge::EdgeSetup {
        core,
        ice_ip,
        max_sessions,
        flows: Arc::clone(&engines.flows),
        agents: Arc::clone(agents) as Arc<dyn crate::webrtc::AgentScreens>,
    })
    .await?;
    Ok(Some(edge))
}

async fn bind_http(
    config: &crate::web::HttpConfig,
    storage: Option<&crate::storage::Shared>,
    hub: &Arc<HandoverHub>,
    webrtc: Option<crate::webrtc::EdgeHandle>,
    agents: Arc<crate::webrtc::agents::BrowserAgents>,
    relay: Option<crate::handover::cluster::HandoverRelay>,
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
        .map_err(|error| ServeError::HttpBind { addr, error })?;
    let (token, token_source) = config
        .resolve_token()
        .map_err(|e| ServeError::Config(format!("agent token: {e}")))?;
    let (admin_token, admin_token_source) = config
        .resolve_admin_token()
        .map_err(|e| ServeError::Config(format!("admin token: {e}")))?;
    if crate::admin::same(&admin_token, &token) {
        return Err(ServeError::Config(
            "the admin token must differ from the agent token".into(),
        ));
    }
    let (feedback, history) = match storage {
        // A cluster: every gateway writes its calls and its agents' feedback to the shared
        // store, and any gateway's admin API shows all of them; the history is always on.
        Some(shared) => {
            let pool = shared.pool.clone();
            let opened = tokio::task::spawn_blocking(move || {
                let feedback = FeedbackStore::open_postgres(pool.clone())
                    .map_err(|e| ServeError::Config(format!("feedback store on [storage]: {e}")))?;
                let history = CallHistory::open_postgres(pool)
                    .map_err(|e| ServeError::Config(format!("call history on [storage]: {e}")))?;
                Ok::<_, ServeError>((feedback, history))
            })
            .await
            .map_err(|e| ServeError::Config(format!("[storage]: {e}")))?;
            let (feedback, history) = opened?;
            tracing::info!(url = %shared.shown_url, node = %shared.node, "call history and agents' feedback on the shared store");
            (feedback, Some(Arc::new(history)))
        }
        None => {
            let feedback = FeedbackStore::open(&config.feedback_database)
                .map_err(|e| ServeError::Config(format!("feedback store: {e}")))?;
            let history = if config.history_database.as_os_str().is_empty() {
                None
            } else {
                let history = CallHistory::open(&config.history_database)
                    .map_err(|e| ServeError::Config(format!("call history: {e}")))?;
                tracing::info!(database = %config.history_database.display(), "call history open");
                Some(Arc::new(history))
            };
            (feedback, history)
        }
    };
    let state = Arc::new(crate::web::WebState {
        hub: Arc::clone(hub),
        feedback: Arc::new(feedback),
        token,
        webrtc,
        agents,
        relay,
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

/// Connects to the shared store of `[storage]` (`None`: embedded), off the async runtime.
async fn connect_storage(
    config: &crate::storage::StorageConfig,
    sip_port: u16,
) -> Result<Option<crate::storage::Shared>, ServeError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || crate::storage::Shared::connect(&config, sip_port))
        .await
        .map_err(|e| ServeError::Config(format!("[storage]: {e}")))?
        .map_err(|e| ServeError::Config(format!("[storage] url: {e}")))
}

/// With a shared store: shares this gateway's hand-over events with the cluster and follows
/// the others' (see [`crate::handover::cluster`]).
async fn start_relay(
    storage: Option<&crate::storage::Shared>,
    hub: &Arc<HandoverHub>,
) -> Result<Option<crate::handover::cluster::HandoverRelay>, ServeError> {
    let Some(shared) = storage.cloned() else {
        return Ok(None);
    };
    let hub = Arc::clone(hub);
    tokio::task::spawn_blocking(move || {
        crate::handover::cluster::HandoverRelay::start(&shared, &hub)
    })
    .await
    .map_err(|e| ServeError::Config(format!("[storage]: {e}")))?
    .map(Some)
    .map_err(|e| ServeError::Config(format!("[storage] hand-over events: {e}")))
}

/// Opens the cluster's flows on the shared store, takes the latest revision (or publishes this
/// gateway's files as the first), and starts the listener that follows the next ones.
async fn start_flow_sync(
    engines: &Engines,
    shared: &crate::storage::Shared,
) -> Result<(Arc<FlowSync>, flow_sync::Listener), ServeError> {
    let url = engines
        .config
        .storage
        .resolved_url()
        .ok_or_else(|| ServeError::Config("[storage] url: not set".into()))?;
    let (pool, node) = (shared.pool.clone(), shared.node.clone());
    let ready = engines.clone();
    let (config, store) = (Arc::clone(&engines.config), Arc::clone(&engines.flows));
    let sync = tokio::task::spawn_blocking(move || {
        let sync =
            FlowSync::open(pool, node, url, config, store)?.with_on_change(Box::new(move |_| {
                crate::engines::keep_prompts_ready(&ready)
            }));
        match sync.start_up() {
            Ok(revision) => {
                tracing::info!(revision = ?revision, "flows follow the shared store")
            }
            // The flows loaded from disk stay; the listener takes the next revision.
            Err(e @ flow_sync::FlowSyncError::Invalid { .. }) => {
                tracing::warn!(error = %e, "the shared store's latest flows do not load here; \
                    this gateway keeps its own until a revision that loads")
            }
            Err(e) => return Err(e),
        }
        Ok(Arc::new(sync))
    })
    .await
    .map_err(|e| ServeError::Config(format!("[storage] flows: {e}")))?
    .map_err(|e| ServeError::Config(format!("[storage] flows: {e}")))?;
    let listener = sync
        .listen()
        .map_err(|e| ServeError::Config(format!("[storage] flows listener: {e}")))?;
    Ok((sync, listener))
}

/// TCP connection ids, accepted and opened alike.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// How an agent leg's INVITE travels, from its target URI: `sips:` or `;transport=tls` over
/// TLS, `;transport=tcp` over TCP, anything else over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutgoingKind {
    Udp,
    Tcp,
    Tls,
}

fn outgoing_kind(target: &str) -> OutgoingKind {
    if wants_tls(target) {
        return OutgoingKind::Tls;
    }
    let tcp = parse_sip_uri(target)
        .and_then(|u| u.transport)
        .is_some_and(|t| t.eq_ignore_ascii_case("tcp"));
    if tcp {
        OutgoingKind::Tcp
    } else {
        OutgoingKind::Udp
    }
}

/// A connection for the signalling task to open (see [`Signalling::stream_to`]).
struct OpenStream {
    /// The id chosen in advance: messages for it wait in `Signalling::connecting`.
    conn: u64,
    target: SocketAddr,
    /// TLS: the connector and the name the peer's certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: TcpLimits,
    keepalive: Option<Duration>,
}

/// Opens a TCP (and TLS) connection, then serves it like an accepted one (so the responses
/// to our requests come back through the endpoint); failing that, tells the signalling task.
/// Connections we open are not counted against the accept caps: the dialogs bound them.
async fn open_stream(o: OpenStream) {
    let transport = match o.tls {
        Some(_) => Transport::Tls(o.conn),
        None => Transport::Tcp(o.conn),
    };
    let target = o.target;
    let failed = |why: String| {
        let inbound = o.inbound.clone();
        async move {
            tracing::warn!(%target, ?transport, error = %why, "cannot open a connection; its messages are dropped");
            let _ = inbound.send(Inbound::ConnectFailed { transport }).await;
        }
    };
    let connect = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(target));
    let stream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(e.to_string()).await,
        Err(_) => return failed("connect timed out".into()).await,
    };
    // See `serve_stream`: responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(o.local);
    let conn = ConnInfo {
        transport,
        from: target,
        local,
        inbound: o.inbound.clone(),
        limits: o.limits,
        keepalive: o.keepalive,
    };
    match o.tls {
        None => serve_stream(stream, conn, None).await,
        Some((connector, name)) => {
            match tls::connect(&connector, stream, name, o.limits.header_timeout).await {
                Ok(tls) => serve_stream(tls, conn, None).await,
                Err(why) => {
                    failed(format!("TLS handshake: {why}")).await;
                }
            }
        }
    }
}

/// Bytes queued for one TCP connection's writer at most. A peer that pipelines requests but
/// does not read the responses (or reads slower than it sends) reaches it, and its connection
/// is closed: responses are never dropped while the connection stays open, and memory per
/// connection stays bounded (Kamailio's `tcp_conn_wq_max` plays the same part).
const TCP_WRITE_BACKLOG_BYTES: usize = 4 * MAX_MESSAGE_BYTES;

/// The limits on SIP over TCP (`[sip] tcp_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpLimits {
    max_total: usize,
    max_per_source: usize,
    /// A message must complete within this of its first byte (slowloris).
    header_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    idle_timeout: Duration,
}

impl TcpLimits {
    fn from_config(sip: &crate::config::media::SipConfig) -> Self {
        // At most a day, so deadlines stay far from `Instant`'s range.
        let secs = |s: u64| Duration::from_secs(s.clamp(1, 86_400));
        TcpLimits {
            max_total: sip.tcp_max_connections,
            max_per_source: sip.tcp_max_connections_per_source,
            header_timeout: secs(sip.tcp_header_timeout_s),
            idle_timeout: secs(sip.tcp_idle_timeout_s),
        }
    }
}

/// Which cap refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverCap {
    Total,
    PerSource,
}

impl OverCap {
    fn reason(self) -> &'static str {
        match self {
            OverCap::Total => "tcp_total",
            OverCap::PerSource => "tcp_per_source",
        }
    }
}

/// Open accepted connections, in total and per source address: plain counts, so the caps are
/// tested without sockets. An address's entry goes when its last connection does.
#[derive(Debug, Default)]
struct ConnTable {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl ConnTable {
    /// Counts a new connection from `ip`, or says which cap it is over (then nothing counts).
    fn admit(&mut self, ip: IpAddr, limits: &TcpLimits) -> Result<(), OverCap> {
        if self.total >= limits.max_total {
            return Err(OverCap::Total);
        }
        let from_ip = self.per_source.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.max_per_source {
            return Err(OverCap::PerSource);
        }
        self.per_source.insert(ip, from_ip + 1);
        self.total += 1;
        Ok(())
    }

    fn release(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }
}

/// A connection's place in the [`ConnTable`], given back when dropped (with the connection's
/// task, however it ends).
struct ConnPermit {
    table: Arc<Mutex<ConnTable>>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        // The table holds only counts: a panic elsewhere while it was locked leaves it usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(self.ip);
    }
}

/// Why a connection's reader stops waiting for bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Nothing received for the idle timeout.
    Idle,
    /// A message begun and not completed within the header timeout.
    Header,
}

/// When a connection's reader gives up (sans-IO): the idle timeout after the last bytes, or
/// the header timeout after the first byte of a message still incomplete, whichever is first.
#[derive(Debug, Clone, Copy)]
struct ReadClock {
    limits: TcpLimits,
    last_read: Instant,
    partial_since: Option<Instant>,
}

impl ReadClock {
    fn new(limits: TcpLimits, now: Instant) -> Self {
        ReadClock {
            limits,
            last_read: now,
            partial_since: None,
        }
    }

    /// Bytes arrived at `now`; `framed`: they completed at least one message; `partial`: part
    /// of a message is left over (then its clock starts now, or keeps running when no message
    /// completed since it started).
    fn on_read(&mut self, now: Instant, framed: bool, partial: bool) {
        self.last_read = now;
        self.partial_since = match (partial, framed) {
            (false, _) => None,
            (true, true) => Some(now),
            (true, false) => self.partial_since.or(Some(now)),
        };
    }

    fn deadline(&self) -> (Instant, Expiry) {
        let idle = self.last_read + self.limits.idle_timeout;
        match self.partial_since {
            Some(since) if since + self.limits.header_timeout < idle => {
                (since + self.limits.header_timeout, Expiry::Header)
            }
            _ => (idle, Expiry::Idle),
        }
    }
}

/// The signalling task's handle on one connection's writer task: a queue bounded in bytes
/// ([`TCP_WRITE_BACKLOG_BYTES`]), never blocking the signalling task.
#[derive(Debug, Clone)]
struct TcpWriter {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer task and not yet written.
    queued: Arc<AtomicUsize>,
    /// Asks the connection's reader to end the connection.
    close: Arc<Notify>,
}

/// Why a [`TcpWriter`] did not take bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteRefused {
    /// The connection is gone.
    Closed,
    /// The peer is too far behind reading: close the connection.
    Backlog,
}

impl TcpWriter {
    fn send(&self, bytes: Vec<u8>) -> Result<(), WriteRefused> {
        let len = bytes.len();
        let before = self.queued.fetch_add(len, Ordering::SeqCst);
        if before > 0 && before.saturating_add(len) > TCP_WRITE_BACKLOG_BYTES {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            return Err(WriteRefused::Backlog);
        }
        self.tx.send(bytes).map_err(|_| {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            WriteRefused::Closed
        })
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn close(&self) {
        self.close.notify_one();
    }
}

/// Releases a connection's resources on every exit path of its task, a panic included (the
/// framer once panicked on a huge Content-Length and the socket leaked, issue 20): the writer
/// task is aborted (dropping the write half; the read half goes with the task, so the socket
/// closes), the signalling task is told to forget the connection, and its slot in the
/// [`ConnTable`] goes back.
struct ConnGuard {
    conn: u64,
    inbound: mpsc::Sender<Inbound>,
    writer: tokio::task::AbortHandle,
    _permit: Option<ConnPermit>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.writer.abort();
        let closed = Inbound::TcpClosed { conn: self.conn };
        if let Err(mpsc::error::TrySendError::Full(closed)) = self.inbound.try_send(closed) {
            // A drop cannot wait: tell the busy signalling task from a task of its own. (Were
            // even that impossible, the entry is pruned at the next TcpOpened: its writer is
            // gone.)
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let inbound = self.inbound.clone();
                runtime.spawn(async move {
                    let _ = inbound.send(closed).await;
                });
            }
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
enum ConnEnd {
    PeerClosed,
    ReadError,
    Expired(Expiry),
    /// The signalling task closed it (the peer does not read its responses).
    ClosedByUs,
    BadFrame(crate::sip::message::ParseError),
    GatewayGone,
}

/// Accepts TCP connections within the caps; each gets a reader task (framing) and a writer
/// task. Over a cap the new connection is closed at once and counted
/// (`voicebot_refused_total`); the warning is logged at most once per 10 s with the count.
/// With `tls`, the listener is the TLS one: the handshake comes first (within the header
/// timeout, holding its place under the caps), then the same framing and limits.
async fn accept_tcp(
    listener: TcpListener,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: TcpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let table = Arc::new(Mutex::new(ConnTable::default()));
    let mut refused_unlogged = 0u64;
    let mut last_warning: Option<Instant> = None;
    let kind = if tls.is_some() { "TLS" } else { "TCP" };
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(from.ip(), &limits);
        if let Err(over) = admitted {
            drop(stream);
            crate::observe::metrics::refused(over.reason());
            refused_unlogged += 1;
            if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(%from, kind, cap = over.reason(), refused = refused_unlogged, "connections over a cap closed");
                refused_unlogged = 0;
                last_warning = Some(Instant::now());
            }
            continue;
        }
        let permit = ConnPermit {
            table: Arc::clone(&table),
            ip: from.ip(),
        };
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        // Responses go out as they are made (100 Trying, then the final one): without this,
        // Nagle holds the second until the peer's delayed ACK, some 40 ms per request.
        let _ = stream.set_nodelay(true);
        let mut conn = ConnInfo {
            transport: Transport::Tcp(id),
            from,
            local: stream.local_addr().unwrap_or(local),
            inbound: inbound.clone(),
            limits,
            // Pinging is for the side that opened the connection (RFC 5626 4.4.1).
            keepalive: None,
        };
        match &tls {
            None => {
                tokio::spawn(serve_stream(stream, conn, Some(permit)));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                conn.transport = Transport::Tls(id);
                // The permit moves into the task: the handshake holds its place under the caps.
                tokio::spawn(async move {
                    if let Some(tls) =
                        tls::accept(&acceptor, stream, from, limits.header_timeout).await
                    {
                        serve_stream(tls, conn, Some(permit)).await;
                    }
                });
            }
        }
    }
}

/// One stream connection, as its tasks see it.
struct ConnInfo {
    /// `Tcp(id)` or `Tls(id)`.
    transport: Transport,
    /// The peer.
    from: SocketAddr,
    /// Our end.
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: TcpLimits,
    /// CRLF pings after this long without sending (connections we opened).
    keepalive: Option<Duration>,
}

/// Serves one TCP or TLS connection: a writer task fed by the signalling task, and this task
/// reading and framing, until either ends (then [`ConnGuard`] releases everything).
async fn serve_stream<S>(stream: S, c: ConnInfo, permit: Option<ConnPermit>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let conn = c.transport.connection().unwrap_or(0);
    let kind = if c.transport.is_tls() { "TLS" } else { "TCP" };
    let from = c.from;
    let (reader, writer) = tokio::io::split(stream);
    let (write_tx, write_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let close = Arc::new(Notify::new());
    let write_task = tokio::spawn(write_loop(
        writer,
        write_rx,
        Arc::clone(&queued),
        Arc::clone(&close),
        c.keepalive,
    ));
    // From here on every way out (return, the gateway gone, a panic) releases the connection.
    let _guard = ConnGuard {
        conn,
        inbound: c.inbound.clone(),
        writer: write_task.abort_handle(),
        _permit: permit,
    };
    let writer = TcpWriter {
        tx: write_tx,
        queued,
        close: Arc::clone(&close),
    };
    let opened = Inbound::TcpOpened {
        conn,
        writer: writer.clone(),
    };
    if c.inbound.send(opened).await.is_err() {
        return;
    }
    match read_frames(reader, &c, &writer, &close).await {
        ConnEnd::BadFrame(e) => {
            // A stream cannot resynchronise after a bad frame: close it.
            tracing::warn!(%from, kind, error = %e, "bad SIP frame on a stream; closing the connection");
        }
        ConnEnd::Expired(Expiry::Header) => {
            crate::observe::metrics::refused("tcp_header_timeout");
            tracing::debug!(%from, kind, "SIP message not completed in time; closing the connection");
        }
        end => tracing::debug!(%from, kind, ?end, "connection ended"),
    }
}

/// A CRLF keep-alive ping (RFC 5626 3.5.1); the pong is one CRLF.
const PING: &[u8] = b"\r\n\r\n";
const PONG: &[u8] = b"\r\n";

/// Writes what the signalling task queued; a failed write ends the connection. With
/// `keepalive`, a CRLF ping goes out after that long without anything to write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    close: Arc<Notify>,
    keepalive: Option<Duration>,
) {
    loop {
        let next = match keepalive {
            Some(every) => match tokio::time::timeout(every, queue.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::trace!("idle connection: CRLF keep-alive ping");
                    if write_flushed(&mut writer, PING).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => queue.recv().await,
        };
        let Some(bytes) = next else {
            break;
        };
        let written = write_flushed(&mut writer, &bytes).await;
        queued.fetch_sub(bytes.len(), Ordering::SeqCst);
        if written.is_err() {
            break;
        }
    }
    close.notify_one();
}

/// Writes `bytes` and flushes them (TLS buffers records until flushed; TCP's flush is free).
async fn write_flushed<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Reads and frames one connection's messages until it ends, within its deadlines; answers
/// CRLF keep-alive pings with a pong through `writer`.
async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    c: &ConnInfo,
    writer: &TcpWriter,
    close: &Notify,
) -> ConnEnd {
    let mut framer = StreamFramer::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut clock = ReadClock::new(c.limits, Instant::now());
    loop {
        let (deadline, expiry) = clock.deadline();
        let n = tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => return ConnEnd::PeerClosed,
                Ok(n) => n,
                Err(_) => return ConnEnd::ReadError,
            },
            () = tokio::time::sleep_until(deadline.into()) => return ConnEnd::Expired(expiry),
            () = close.notified() => return ConnEnd::ClosedByUs,
        };
        framer.push(&buf[..n]);
        let mut framed = false;
        loop {
            let next = framer.next_message();
            for _ in 0..framer.take_pings() {
                if writer.send(PONG.to_vec()).is_err() {
                    return ConnEnd::ClosedByUs;
                }
            }
            match next {
                Ok(Some(msg)) => {
                    framed = true;
                    let frame = Inbound::TcpFrame {
                        transport: c.transport,
                        from: c.from,
                        local: c.local,
                        bytes: msg.to_bytes(),
                    };
                    if c.inbound.send(frame).await.is_err() {
                        return ConnEnd::GatewayGone;
                    }
                }
                Ok(None) => break,
                Err(e) => return ConnEnd::BadFrame(e),
            }
        }
        clock.on_read(Instant::now(), framed, framer.has_partial());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TcpLimits {
        TcpLimits {
            max_total: 3,
            max_per_source: 2,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn connection_caps_per_source_and_in_total() {
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
        );
        let mut t = ConnTable::default();
        assert_eq!(t.admit(a, &limits()), Ok(()));
        assert_eq!(t.admit(a, &limits()), Ok(()));
        assert_eq!(t.admit(a, &limits()), Err(OverCap::PerSource));
        assert_eq!(t.admit(b, &limits()), Ok(()));
        assert_eq!(t.admit(c, &limits()), Err(OverCap::Total));
        t.release(a);
        assert_eq!(t.admit(c, &limits()), Ok(()));
        for ip in [a, b, c] {
            t.release(ip);
        }
        assert_eq!(t.total, 0);
        assert!(t.per_source.is_empty(), "{:?}", t.per_source);
        // A release too many never underflows.
        t.release(a);
        assert_eq!(t.total, 0);
    }

    #[test]
    fn a_message_must_complete_within_the_header_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clock = ReadClock::new(limits(), t0);
        assert_eq!(clock.deadline(), (t0 + s(300), Expiry::Idle));
        // A dribbling peer: each byte keeps the connection from idling, not the message.
        clock.on_read(t0 + s(1), false, true);
        for i in 2..9 {
            clock.on_read(t0 + s(i), false, true);
        }
        assert_eq!(clock.deadline(), (t0 + s(11), Expiry::Header));
        // A message completes, part of the next one follows: its own clock.
        clock.on_read(t0 + s(9), true, true);
        assert_eq!(clock.deadline(), (t0 + s(19), Expiry::Header));
        // Nothing pending: only the idle timeout.
        clock.on_read(t0 + s(12), true, false);
        assert_eq!(clock.deadline(), (t0 + s(312), Expiry::Idle));
    }

    #[tokio::test]
    async fn writer_backlog_is_bounded_in_bytes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let w = TcpWriter {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            close: Arc::new(Notify::new()),
        };
        let chunk = vec![0u8; 1000];
        let fit = TCP_WRITE_BACKLOG_BYTES / chunk.len();
        for _ in 0..fit {
            assert_eq!(w.send(chunk.clone()), Ok(()));
        }
        assert_eq!(w.send(chunk.clone()), Err(WriteRefused::Backlog));
        assert_eq!(w.queued.load(Ordering::SeqCst), fit * chunk.len());
        rx.close();
        while rx.recv().await.is_some() {}
        assert!(w.is_closed());
        w.queued.store(0, Ordering::SeqCst);
        assert_eq!(w.send(chunk), Err(WriteRefused::Closed));
        assert_eq!(w.queued.load(Ordering::SeqCst), 0);
    }

    /// A stream connection on an in-memory pipe, as the signalling task sees it.
    async fn piped(
        keepalive: Option<Duration>,
    ) -> (
        tokio::io::DuplexStream,
        mpsc::Receiver<Inbound>,
        tokio::task::JoinHandle<()>,
    ) {
        let (inbound, mut rx) = mpsc::channel(16);
        let (ours, peer) = tokio::io::duplex(4096);
        let conn = ConnInfo {
            transport: Transport::Tls(5),
            from: "127.0.0.1:5061".parse().unwrap(),
            local: "127.0.0.1:40000".parse().unwrap(),
            inbound,
            limits: limits(),
            keepalive,
        };
        let task = tokio::spawn(serve_stream(ours, conn, None));
        assert!(matches!(
            rx.recv().await,
            Some(Inbound::TcpOpened { conn: 5, .. })
        ));
        (peer, rx, task)
    }

    /// What the peer end of a pipe reads until it has `want` bytes or `wait` passes.
    async fn read_some(peer: &mut tokio::io::DuplexStream, want: usize, wait: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = tokio::time::Instant::now() + wait;
        while got.len() < want {
            match tokio::time::timeout_at(deadline, peer.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        got
    }

    /// RFC 5626 on a stream: a peer's double-CRLF ping gets one CRLF pong, and nothing reaches
    /// the endpoint; a connection we accepted never pings on its own.
    #[tokio::test]
    async fn a_crlf_ping_gets_a_pong() {
        let (mut peer, mut rx, task) = piped(None).await;
        peer.write_all(b"\r\n\r\n").await.unwrap();
        let wait = Duration::from_secs(5);
        assert_eq!(read_some(&mut peer, 2, wait).await, b"\r\n");
        let quiet = Duration::from_millis(300);
        assert!(
            read_some(&mut peer, 1, quiet).await.is_empty(),
            "no ping of our own"
        );
        assert!(
            rx.try_recv().is_err(),
            "a ping is no frame for the endpoint"
        );
        drop(peer);
        task.await.unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(Inbound::TcpClosed { conn: 5 })
        ));
    }

    /// A connection we opened is pinged (double CRLF) once it has been idle for the
    /// keep-alive interval.
    #[tokio::test]
    async fn idle_connections_we_opened_are_pinged() {
        let (mut peer, _rx, _task) = piped(Some(Duration::from_millis(100))).await;
        let got = read_some(&mut peer, 4, Duration::from_secs(5)).await;
        assert_eq!(got.get(..4), Some(&b"\r\n\r\n"[..]), "{got:?}");
    }

    /// A connection task that panics still closes its writer, tells the signalling task and
    /// gives its slot back.
    #[tokio::test]
    async fn a_panicking_connection_task_releases_everything() {
        let (inbound, mut rx) = mpsc::channel(4);
        let table = Arc::new(Mutex::new(ConnTable::default()));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        table.lock().unwrap().admit(ip, &limits()).unwrap();
        let writer = tokio::spawn(std::future::pending::<()>());
        let guard = ConnGuard {
            conn: 7,
            inbound,
            writer: writer.abort_handle(),
            _permit: Some(ConnPermit {
                table: Arc::clone(&table),
                ip,
            }),
        };
        let task = tokio::spawn(async move {
            let _guard = guard;
            tokio::task::yield_now().await;
            panic!("a framing bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(writer.await.unwrap_err().is_cancelled());
        match rx.recv().await {
            Some(Inbound::TcpClosed { conn: 7 }) => {}
            _ => panic!("no TcpClosed"),
        }
        assert_eq!(table.lock().unwrap().total, 0);
    }
}

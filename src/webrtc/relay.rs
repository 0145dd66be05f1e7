//! The tokio side of one browser peer: its two UDP sockets (the browser's ICE host candidate,
//! and the loopback RTP port the core's call sends to) around a [`BrowserPeer`], until either
//! side ends. One task per browser call, as a SIP call has one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::peer::{BrowserPeer, PeerOutput};

/// How long the browser has to complete ICE and DTLS after the answer.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(20);
/// The longest a wait lasts without news (str0m always names its next timeout; this bounds it).
const IDLE_TICK: Duration = Duration::from_millis(500);

/// Why a relay ended, for the edge's table.
#[derive(Debug)]
pub struct RelayEnded {
    pub id: String,
    pub reason: String,
}

/// One browser call's relay (see the module documentation).
pub struct Relay {
    pub id: String,
    pub peer: BrowserPeer,
    /// The browser's side: our ICE host candidate.
    pub browser: UdpSocket,
    /// The core's side: where the core's call sends its RTP.
    pub core: UdpSocket,
    /// Where the core's call receives RTP.
    pub core_rtp: SocketAddr,
}

impl Relay {
    /// Runs until the browser goes, the core's side goes quiet for good, or `stop` fires (or
    /// its sender is dropped); reports the end on `ended` unless stopped.
    pub async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        ended: mpsc::UnboundedSender<RelayEnded>,
    ) {
        let started = Instant::now();
        let mut from_browser = vec![0u8; 2048];
        let mut from_core = vec![0u8; 2048];
        let reason = loop {
            if let Some(reason) = self.flush().await {
                break Some(reason);
            }
            if !self.peer.is_connected() && started.elapsed() > CONNECT_WITHIN {
                break Some(format!(
                    "the browser did not connect (ICE and DTLS) within {} s",
                    CONNECT_WITHIN.as_secs()
                ));
            }
            let now = Instant::now();
            let wake = self
                .peer
                .next_timeout()
                .unwrap_or(now + IDLE_TICK)
                .min(now + IDLE_TICK);
            tokio::select! {
                _ = &mut stop => {
                    self.peer.close();
                    let _ = self.flush().await;
                    break None;
                }
                r = self.browser.recv_from(&mut from_browser) => match r {
                    Ok((n, source)) => self.peer.from_browser(Instant::now(), source, &from_browser[..n]),
                    Err(e) => tracing::debug!(error = %e, "browser socket"),
                },
                r = self.core.recv_from(&mut from_core) => match r {
                    // Only the core's call may feed the browser.
                    Ok((n, source)) if source.ip() == self.core_rtp.ip() => {
                        self.peer.from_core(Instant::now(), &from_core[..n]);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "core RTP socket"),
                },
                _ = tokio::time::sleep_until(wake.into()) => self.peer.handle_timeout(Instant::now()),
            }
        };
        let f = self.peer.figures();
        tracing::info!(
            session = %self.id, from_browser = f.from_browser, to_browser = f.to_browser,
            dropped_from_core = f.dropped_from_core, reason = reason.as_deref().unwrap_or("hung up"),
            "browser media ended"
        );
        if let Some(reason) = reason {
            let _ = ended.send(RelayEnded {
                id: self.id.clone(),
                reason,
            });
        }
    }

    /// Sends what the peer wants sent; the reason when the browser is gone.
    async fn flush(&mut self) -> Option<String> {
        while let Some(out) = self.peer.poll() {
            match out {
                PeerOutput::ToBrowser { to, bytes } => {
                    if let Err(e) = self.browser.send_to(&bytes, to).await {
                        tracing::debug!(error = %e, %to, "cannot send to the browser");
                    }
                }
                PeerOutput::ToCore(bytes) => {
                    if let Err(e) = self.core.send_to(&bytes, self.core_rtp).await {
                        tracing::debug!(error = %e, "cannot send to the core");
                    }
                }
                PeerOutput::Connected => {
                    tracing::info!(session = %self.id, "browser connected (ICE, DTLS-SRTP)");
                }
                PeerOutput::Closed(reason) => return Some(reason),
            }
        }
        None
    }
}

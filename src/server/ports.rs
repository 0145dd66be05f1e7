//! RTP port pairs from the configured range: an even port for RTP and the odd one above it for
//! RTCP (RFC 3550 section 11), bound when a call is answered and given back when its media task
//! ends, whatever way it ends.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// The pool of port pairs.
#[derive(Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolState>>,
}

struct PoolState {
    min: u16,
    pairs: u16,
    cursor: u16,
    in_use: HashSet<u16>,
}

/// A bound RTP/RTCP socket pair, released to the pool on drop.
pub struct RtpPorts {
    pub rtp: UdpSocket,
    pub rtcp: Option<UdpSocket>,
    port: u16,
    pool: Arc<Mutex<PoolState>>,
}

impl RtpPorts {
    pub fn rtp_port(&self) -> u16 {
        self.port
    }
}

impl Drop for RtpPorts {
    fn drop(&mut self) {
        if let Ok(mut state) = self.pool.lock() {
            state.in_use.remove(&self.port);
        }
    }
}

impl PortPool {
    pub fn new(min: u16, max: u16) -> Self {
        let min = min + min % 2;
        let pairs = max.saturating_sub(min) / 2 + 1;
        Self {
            inner: Arc::new(Mutex::new(PoolState {
                min,
                pairs,
                cursor: 0,
                in_use: HashSet::new(),
            })),
        }
    }

    /// Binds the next free pair on `ip`; ports another program holds are skipped. None when the
    /// whole range is busy.
    pub fn take(&self, ip: IpAddr) -> Option<RtpPorts> {
        let mut state = self.inner.lock().ok()?;
        for _ in 0..state.pairs {
            let port = state.min + 2 * state.cursor;
            state.cursor = (state.cursor + 1) % state.pairs.max(1);
            if state.in_use.contains(&port) {
                continue;
            }
            let Ok(rtp) = UdpSocket::bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            let rtcp = UdpSocket::bind(SocketAddr::new(ip, port + 1)).ok();
            if rtp.set_nonblocking(true).is_err() {
                continue;
            }
            if let Some(r) = &rtcp {
                let _ = r.set_nonblocking(true);
            }
            state.in_use.insert(port);
            return Some(RtpPorts {
                rtp,
                rtcp,
                port,
                pool: self.inner.clone(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_distinct_and_returned_on_drop() {
        let pool = PortPool::new(41000, 41005);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = pool.take(ip).expect("first pair");
        let b = pool.take(ip).expect("second pair");
        let c = pool.take(ip).expect("third pair");
        assert!(a.rtp_port().is_multiple_of(2) && b.rtp_port().is_multiple_of(2));
        assert_ne!(a.rtp_port(), b.rtp_port());
        assert!(pool.take(ip).is_none(), "range of three pairs is exhausted");
        let freed = b.rtp_port();
        drop(b);
        let again = pool.take(ip).expect("a freed pair is reused");
        assert_eq!(again.rtp_port(), freed);
        drop((a, c));
    }
}

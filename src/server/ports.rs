//! RTP port pairs from the configured range: an even port for RTP and the odd one above it for
//! RTCP (RFC 3550 section 11), bound when a call is answered and given back when its media task
//! ends, whatever way it ends.
//!
//! Pairs are drawn at random, not in sequence: a stranger who learns one call's port (or
//! sprays the range) cannot tell which port the next call gets, so its packets hit a live call
//! only by chance, and then `media::latch` drops them. A draw walks the whole range in a random
//! order (a random start and a random stride coprime with the number of pairs), skipping
//! pairs in use and pairs another program holds (the bind fails), so a free pair is found
//! whenever one exists and a held one is never handed out twice. The choice is a plain function
//! of the pool's state, a random source and a bind attempt ([`PoolState::reserve`]), tested
//! without sockets.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use rand::Rng;

/// The pool of port pairs.
#[derive(Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolState>>,
}

/// Which pairs exist and which are held.
#[derive(Debug)]
pub struct PoolState {
    /// The lowest RTP port (even).
    min: u16,
    /// Pairs in the range: RTP ports `min`, `min + 2`, ... with RTCP one above, all within it.
    pairs: u16,
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

fn gcd(mut a: u16, mut b: u16) -> u16 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl PoolState {
    /// The pairs of `min..=max`: an even RTP port whose RTCP port (one above) is in the range
    /// too. An empty range has no pairs.
    pub fn new(min: u16, max: u16) -> Self {
        let min = min.saturating_add(min % 2);
        // Ports min..=max, counted without overflow; a pair needs two of them.
        let ports = u32::from(max).saturating_sub(u32::from(min)) + u32::from(max >= min);
        let pairs = u16::try_from(ports / 2).unwrap_or(u16::MAX);
        Self {
            min,
            pairs,
            in_use: HashSet::new(),
        }
    }

    /// The RTP port of pair `index` (below `pairs`, so it and the one above fit in u16).
    fn port(&self, index: u16) -> u16 {
        self.min + 2 * index
    }

    /// Reserves a free pair in random order: the first pair whose RTP port is not in use and
    /// for which `bind` succeeds (a program outside the pool may hold ports). None when every
    /// pair is taken or unbindable.
    pub fn reserve<T>(
        &mut self,
        rng: &mut impl Rng,
        mut bind: impl FnMut(u16) -> Option<T>,
    ) -> Option<(u16, T)> {
        if self.pairs == 0 || self.in_use.len() >= usize::from(self.pairs) {
            return None;
        }
        let start = rng.random_range(0..self.pairs);
        // A stride coprime with the number of pairs visits every pair once.
        let stride = loop {
            let s = rng.random_range(1..=self.pairs);
            if gcd(s, self.pairs) == 1 {
                break s;
            }
        };
        let pairs = u32::from(self.pairs);
        for k in 0..pairs {
            let index = (u32::from(start) + k * u32::from(stride)) % pairs;
            // index < pairs <= u16::MAX.
            let port = self.port(index as u16);
            if self.in_use.contains(&port) {
                continue;
            }
            if let Some(bound) = bind(port) {
                self.in_use.insert(port);
                return Some((port, bound));
            }
        }
        None
    }
}

/// Binds an RTP/RTCP pair on `ip`, non-blocking; None when either port is taken.
fn bind_pair(ip: IpAddr, port: u16) -> Option<(UdpSocket, UdpSocket)> {
    let rtp = UdpSocket::bind(SocketAddr::new(ip, port)).ok()?;
    let rtcp = UdpSocket::bind(SocketAddr::new(ip, port.checked_add(1)?)).ok()?;
    rtp.set_nonblocking(true).ok()?;
    rtcp.set_nonblocking(true).ok()?;
    Some((rtp, rtcp))
}

impl PortPool {
    pub fn new(min: u16, max: u16) -> Self {
        Self {
            inner: Arc::new(Mutex::new(PoolState::new(min, max))),
        }
    }

    /// Binds a random free pair on `ip`; pairs another program holds are skipped. None when the
    /// whole range is busy.
    pub fn take(&self, ip: IpAddr) -> Option<RtpPorts> {
        let mut state = self.inner.lock().ok()?;
        let (port, (rtp, rtcp)) = state.reserve(&mut rand::rng(), |port| bind_pair(ip, port))?;
        Some(RtpPorts {
            rtp,
            rtcp: Some(rtcp),
            port,
            pool: self.inner.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn pairs_fit_in_the_range() {
        let cases = [
            ((41000, 41005), 3),
            ((41000, 41004), 2),
            ((41001, 41005), 2),
            ((20000, 29999), 5000),
            ((41000, 41000), 0),
            ((41000, 40000), 0),
            ((65534, 65535), 1),
            ((65535, 65535), 0),
        ];
        for ((min, max), pairs) in cases {
            let s = PoolState::new(min, max);
            assert_eq!(s.pairs, pairs, "{min}-{max}");
            if pairs > 0 {
                assert!(s.min.is_multiple_of(2) && s.min >= min);
                assert!(u32::from(s.port(pairs - 1)) < u32::from(max), "{min}-{max}");
            }
        }
    }

    #[test]
    fn every_pair_is_handed_out_once_until_given_back() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut s = PoolState::new(30000, 30199);
        let mut held = HashSet::new();
        for _ in 0..100 {
            let (port, ()) = s.reserve(&mut rng, |_| Some(())).expect("a free pair");
            assert!(
                port.is_multiple_of(2) && (30000..30199).contains(&port),
                "{port}"
            );
            assert!(held.insert(port), "{port} handed out twice");
        }
        assert!(s.reserve(&mut rng, |_| Some(())).is_none(), "all 100 held");
        s.in_use.remove(&30124);
        assert_eq!(s.reserve(&mut rng, |_| Some(())).map(|r| r.0), Some(30124));
    }

    #[test]
    fn ports_others_hold_are_skipped_and_the_last_free_one_is_found() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut s = PoolState::new(30000, 30199);
        // Another program holds every pair but one.
        let mut tried = HashSet::new();
        let got = s.reserve(&mut rng, |port| {
            tried.insert(port);
            (port == 30142).then_some(())
        });
        assert_eq!(got.map(|r| r.0), Some(30142));
        // Nothing bindable: every pair was tried once, then None.
        let mut attempts = 0;
        assert!(s
            .reserve(&mut rng, |_| {
                attempts += 1;
                None::<()>
            })
            .is_none());
        assert_eq!(attempts, 99, "each free pair tried once");
    }

    #[test]
    fn the_next_port_cannot_be_guessed_from_the_last() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut s = PoolState::new(20000, 29999);
        let mut ports = Vec::new();
        for _ in 0..200 {
            let (port, ()) = s.reserve(&mut rng, |_| Some(())).unwrap();
            ports.push(port);
            s.in_use.remove(&port); // each call ends before the next
        }
        let sequential = ports.windows(2).filter(|w| w[1] == w[0] + 2).count();
        let distinct = ports.iter().collect::<HashSet<_>>().len();
        assert!(
            sequential <= 2,
            "{sequential} of 199 draws followed the last"
        );
        assert!(distinct >= 190, "{distinct} distinct ports in 200 draws");
        let low_half = ports.iter().filter(|&&p| p < 25000).count();
        assert!(
            (70..=130).contains(&low_half),
            "spread over the range: {low_half}"
        );
    }

    #[test]
    fn sockets_are_bound_distinct_and_returned_on_drop() {
        let pool = PortPool::new(47710, 47715);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = pool.take(ip).expect("first pair");
        let b = pool.take(ip).expect("second pair");
        let c = pool.take(ip).expect("third pair");
        let mut ports = vec![a.rtp_port(), b.rtp_port(), c.rtp_port()];
        ports.sort_unstable();
        assert_eq!(ports, vec![47710, 47712, 47714]);
        for p in [&a, &b, &c] {
            assert_eq!(p.rtp.local_addr().unwrap().port(), p.rtp_port());
            let rtcp = p.rtcp.as_ref().expect("RTCP bound");
            assert_eq!(rtcp.local_addr().unwrap().port(), p.rtp_port() + 1);
        }
        assert!(pool.take(ip).is_none(), "range of three pairs is exhausted");
        let freed = b.rtp_port();
        drop(b);
        let again = pool.take(ip).expect("a freed pair is reused");
        assert_eq!(again.rtp_port(), freed);
        drop((a, c));
    }

    #[test]
    fn a_port_another_program_holds_is_skipped() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        // Someone else has the RTCP port of the first pair.
        let squatter = UdpSocket::bind((ip, 47721)).expect("bind 47721");
        let pool = PortPool::new(47720, 47723);
        let got = pool.take(ip).expect("the other pair");
        assert_eq!(got.rtp_port(), 47722);
        assert!(pool.take(ip).is_none());
        drop(squatter);
        assert_eq!(pool.take(ip).map(|p| p.rtp_port()), Some(47720));
    }
}

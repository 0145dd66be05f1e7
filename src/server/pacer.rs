//! The RTP pacer: one OS thread that sends every call's packets on their 20 ms grids.
//!
//! Why a thread of its own: tokio's timers have millisecond resolution and a busy runtime
//! wakes a call's task late, which shows up as send jitter at the far end. This thread sleeps
//! with the OS's sub-millisecond precision until the earliest packet due across all calls,
//! sends what is due, and goes back to sleep; it does nothing else. Calls hand it a
//! [`PacedStream`] (their [`RtpSender`] and socket) behind a mutex and keep using it to queue
//! speech, flush on barge-in or read figures; a stream whose call dropped it is forgotten.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::media::sender::RtpSender;
use crate::media::srtp::SrtpContext;

/// Packets go out up to this much before their slot, to centre send times on the grid given
/// the OS's wake-up latency.
const SEND_AHEAD: Duration = Duration::from_micros(150);
/// Longest sleep, so new streams and slow clocks are picked up promptly.
const MAX_SLEEP: Duration = Duration::from_millis(20);

/// Send lateness histogram: 0.1 ms buckets up to 100 ms (the last bucket takes the rest).
pub struct Lateness {
    pub buckets: Vec<u32>,
    pub max: Duration,
}

impl Lateness {
    const BUCKET_US: u64 = 100;

    pub fn new() -> Self {
        Self {
            buckets: vec![0; 1001],
            max: Duration::ZERO,
        }
    }

    pub fn record(&mut self, late: Duration) {
        let i = (late.as_micros() as u64 / Self::BUCKET_US).min(1000) as usize;
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.max = self.max.max(late);
    }

    /// The `q` quantile in ms (upper edge of its bucket).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.buckets.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0.0;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += u64::from(c);
            if seen >= target {
                let edge = (i as u64 + 1) as f64 * Self::BUCKET_US as f64 / 1000.0;
                return edge.min(self.max.as_secs_f64() * 1000.0);
            }
        }
        self.max.as_secs_f64() * 1000.0
    }
}

impl Default for Lateness {
    fn default() -> Self {
        Self::new()
    }
}

/// One call's outgoing stream.
pub struct PacedStream {
    pub sender: RtpSender,
    socket: UdpSocket,
    /// Where packets go (updated by symmetric RTP and re-INVITEs).
    pub remote: SocketAddr,
    /// False while the negotiated direction says we must not send (hold).
    pub sending: bool,
    /// Deviation of each packet's send time from its slot.
    pub lateness: Lateness,
    pub packets_sent: u64,
    pub send_errors: u64,
    /// The outbound SRTP context when the leg is encrypted: every packet is protected here,
    /// just before it leaves (the call task's RTCP reports use it too).
    pub srtp: Option<SrtpContext>,
}

impl PacedStream {
    pub fn new(sender: RtpSender, socket: UdpSocket, remote: SocketAddr) -> Self {
        Self {
            sender,
            socket,
            remote,
            sending: true,
            lateness: Lateness::new(),
            packets_sent: 0,
            send_errors: 0,
            srtp: None,
        }
    }

    /// Sends whatever is due at `now`; returns the next due time.
    fn send_due(&mut self, now: Instant) -> Instant {
        loop {
            let slot = self.sender.next_due();
            let Some(packet) = self.sender.poll(now + SEND_AHEAD) else {
                return slot;
            };
            self.lateness
                .record(if now > slot { now - slot } else { slot - now });
            if !self.sending {
                continue;
            }
            let protected;
            let packet = match self.srtp.as_mut().map(|c| c.protect_rtp(&packet)) {
                None => &packet,
                Some(Ok(p)) => {
                    protected = p;
                    &protected
                }
                Some(Err(_)) => {
                    self.send_errors += 1;
                    continue;
                }
            };
            match self.socket.send_to(packet, self.remote) {
                Ok(_) => self.packets_sent += 1,
                Err(_) => self.send_errors += 1,
            }
        }
    }
}

/// The pacer's handle: register streams with it.
#[derive(Clone)]
pub struct Pacer {
    streams: Arc<Mutex<Vec<Weak<Mutex<PacedStream>>>>>,
    thread: Thread,
}

impl Pacer {
    /// Starts the pacer thread; it ends when every handle is dropped.
    pub fn start() -> std::io::Result<Pacer> {
        let streams: Arc<Mutex<Vec<Weak<Mutex<PacedStream>>>>> = Arc::default();
        let shared = Arc::downgrade(&streams);
        let handle = thread::Builder::new()
            .name("rtp-pacer".into())
            .spawn(move || run(shared))?;
        Ok(Pacer {
            streams,
            thread: handle.thread().clone(),
        })
    }

    /// Adds a stream; the pacer sends its packets from now on.
    pub fn register(&self, stream: PacedStream) -> Arc<Mutex<PacedStream>> {
        let stream = Arc::new(Mutex::new(stream));
        if let Ok(mut list) = self.streams.lock() {
            list.push(Arc::downgrade(&stream));
        }
        self.thread.unpark();
        stream
    }

    /// Streams currently paced.
    pub fn len(&self) -> usize {
        self.streams.lock().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn run(shared: Weak<Mutex<Vec<Weak<Mutex<PacedStream>>>>>) {
    let mut live: Vec<Arc<Mutex<PacedStream>>> = Vec::new();
    loop {
        let Some(streams) = shared.upgrade() else {
            return; // every Pacer handle is gone
        };
        live.clear();
        if let Ok(mut list) = streams.lock() {
            list.retain(|w| match w.upgrade() {
                Some(s) => {
                    live.push(s);
                    true
                }
                None => false,
            });
        }
        drop(streams);
        let now = Instant::now();
        let mut earliest = now + MAX_SLEEP;
        for stream in &live {
            if let Ok(mut s) = stream.lock() {
                earliest = earliest.min(s.send_due(now));
            }
        }
        live.clear();
        let wake = earliest.checked_sub(SEND_AHEAD).unwrap_or(earliest);
        let now = Instant::now();
        if wake > now {
            thread::park_timeout(wake - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::Codec;

    #[test]
    fn lateness_quantiles() {
        let mut l = Lateness::new();
        for _ in 0..98 {
            l.record(Duration::from_micros(50));
        }
        l.record(Duration::from_millis(3));
        l.record(Duration::from_millis(200));
        assert!((l.quantile_ms(0.5) - 0.1).abs() < 1e-9);
        assert!((l.quantile_ms(0.99) - 3.1).abs() < 1e-9);
        assert_eq!(l.max, Duration::from_millis(200));
    }

    #[test]
    fn paces_registered_streams_and_forgets_dropped_ones() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let pacer = Pacer::start().unwrap();
        let sender = RtpSender::new_random(Codec::Pcmu, 0, 20, Instant::now()).unwrap();
        let stream = pacer.register(PacedStream::new(sender, tx, rx.local_addr().unwrap()));
        let started = Instant::now();
        let mut buf = [0u8; 512];
        for _ in 0..10 {
            let n = rx.recv(&mut buf).expect("a packet every 20 ms");
            assert_eq!(n, 172);
        }
        // Ten packets take about 180 ms (the first goes at once).
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(170), "{elapsed:?}");
        assert!(stream.lock().unwrap().packets_sent >= 10);
        drop(stream);
        // The pacer notices at its next tick; wait for that, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !pacer.is_empty() {
            assert!(Instant::now() < deadline, "a dropped stream is forgotten");
            thread::yield_now();
        }
    }
}

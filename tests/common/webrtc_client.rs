//! A browser of our own for the WebRTC tests and the benchmark: str0m with full ICE (as a
//! browser has), offering Opus audio, over a real UDP socket on loopback. It posts its offer
//! the WHIP way, sends speech as 20 ms Opus frames in real time (silence frames between, as a
//! browser's microphone track does) and keeps what it hears, decoded at 16 kHz, with each
//! frame's arrival time.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Channels, SampleRate};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

/// An HTTP client that reports 4xx/5xx as answers (self-contained: the benchmark includes this
/// file alone).
fn http_client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Samples per 20 ms frame at 16 kHz.
const FRAME: usize = 320;

/// An offer from a fresh client (for tests that only post offers).
pub fn offer() -> (Rtc, String, SdpPendingOffer, Mid, UdpSocket) {
    str0m::crypto::from_feature_flags().install_process_default();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client UDP socket");
    let addr = socket.local_addr().expect("client address");
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().expect("an offer");
    (rtc, offer.to_sdp_string(), pending, mid, socket)
}

/// An HTTP answer: status, headers we look at, body.
#[derive(Debug, Clone)]
pub struct Posted {
    pub status: u16,
    pub location: Option<String>,
    pub sip_call_id: Option<String>,
    pub content_type: String,
    pub body: String,
}

/// POSTs `body` as `content_type` to `{base}/api/webrtc/flows/{flow}` with `token`.
pub fn post_offer(
    base: &str,
    token: Option<&str>,
    flow: &str,
    content_type: &str,
    body: &str,
) -> Posted {
    let agent = http_client(Duration::from_secs(30));
    let mut req = agent
        .post(format!("{base}/api/webrtc/flows/{flow}"))
        .header("Content-Type", content_type);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send(body).expect("POST offer");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (location, sip_call_id) = (header("location"), header("x-voicebot-sip-call-id"));
    let content_type = header("content-type").unwrap_or_default();
    Posted {
        status: r.status().as_u16(),
        location,
        sip_call_id,
        content_type,
        body: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

#[derive(Default)]
struct Shared {
    connected_at: Option<Instant>,
    closed: bool,
    /// 16 kHz samples still to send.
    to_send: VecDeque<f32>,
    /// When the last queued sample went out.
    sent_all_at: Option<Instant>,
    /// When the last frame with speech in it (RMS above 0.01) went out.
    last_voiced_at: Option<Instant>,
    /// What arrived: (arrival, 16 kHz samples of one frame).
    heard: Vec<(Instant, Vec<f32>)>,
}

/// A call in progress.
pub struct WebRtcCall {
    pub posted: Posted,
    base: String,
    token: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// When the POST was sent.
    pub offered_at: Instant,
}

impl WebRtcCall {
    /// Calls `flow`; the POST's answer when it is not 201.
    pub fn start(base: &str, token: &str, flow: &str) -> Result<WebRtcCall, Posted> {
        let (mut rtc, offer, pending, mid, socket) = offer();
        let offered_at = Instant::now();
        let posted = post_offer(base, Some(token), flow, "application/sdp", &offer);
        if posted.status != 201 {
            return Err(posted);
        }
        let answer = SdpAnswer::from_sdp_string(&posted.body).expect("an SDP answer");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::spawn(move || run(rtc, socket, mid, &shared, &stop))
        };
        Ok(WebRtcCall {
            posted,
            base: base.to_string(),
            token: token.to_string(),
            shared,
            stop,
            thread: Some(thread),
            offered_at,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When ICE and DTLS completed, waiting up to `within`.
    pub fn wait_connected(&self, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(t) = self.lock().connected_at {
                return Some(t);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Queues 16 kHz `samples` to be said (after what is still queued).
    pub fn say(&self, samples: &[f32]) {
        let mut s = self.lock();
        s.sent_all_at = None;
        s.to_send.extend(samples.iter().copied());
    }

    /// When everything queued has been sent, waiting up to `within`.
    pub fn wait_said(&self, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(t) = self.lock().sent_all_at {
                return Some(t);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// When the last frame with speech in it was sent.
    pub fn last_voiced_sent(&self) -> Option<Instant> {
        self.lock().last_voiced_at
    }

    /// Everything heard so far, 16 kHz.
    pub fn heard(&self) -> Vec<f32> {
        self.lock()
            .heard
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect()
    }

    /// What arrived after `after`: each frame's arrival and its 16 kHz samples (the benchmark
    /// places sounds inside a frame from these).
    pub fn frames_since(&self, after: Instant) -> Vec<(Instant, Vec<f32>)> {
        self.lock()
            .heard
            .iter()
            .filter(|(t, _)| *t > after)
            .cloned()
            .collect()
    }

    /// The arrival of the first frame after `after` whose RMS is above `level`, waiting up to
    /// `within`.
    pub fn first_sound_after(
        &self,
        after: Instant,
        level: f32,
        within: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .lock()
                .heard
                .iter()
                .find(|(t, f)| *t > after && rms(f) > level)
                .map(|(t, _)| *t);
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the edge's side has gone (ICE disconnected).
    pub fn closed(&self) -> bool {
        self.lock().closed
    }

    /// DELETEs the session; the status.
    pub fn hangup(mut self) -> u16 {
        let status = match &self.posted.location {
            Some(loc) => http_client(Duration::from_secs(10))
                .delete(format!("{}{loc}", self.base))
                .header("Authorization", &format!("Bearer {}", self.token))
                .call()
                .map(|r| r.status().as_u16())
                .unwrap_or(0),
            None => 0,
        };
        self.finish();
        status
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WebRtcCall {
    fn drop(&mut self) {
        self.finish();
    }
}

pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

/// The client's loop: str0m's I/O, a 20 ms send clock, decoding what arrives.
fn run(mut rtc: Rtc, socket: UdpSocket, mid: Mid, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let local = socket.local_addr().expect("local address");
    let encoder =
        Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip).expect("encoder");
    let mut decoder = Decoder::new(SampleRate::Hz16000, Channels::Mono).expect("decoder");
    let mut buf = vec![0u8; 2048];
    let mut next_frame = Instant::now();
    let mut ts: u64 = 0;
    let mut connected = false;
    // Bounded: a test's call ends long before this.
    let give_up = Instant::now() + Duration::from_secs(300);
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::Connected)) => {
                    connected = true;
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    s.connected_at = Some(Instant::now());
                }
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => {
                    shared.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
                }
                Ok(Output::Event(Event::MediaData(d))) => {
                    let mut out = vec![0f32; 1920];
                    let decoded = audiopus::packet::Packet::try_from(&d.data[..])
                        .ok()
                        .and_then(|p| {
                            let signals = audiopus::MutSignals::try_from(&mut out[..]).ok()?;
                            decoder.decode_float(Some(p), signals, false).ok()
                        });
                    if let Some(n) = decoded {
                        out.truncate(n);
                        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        s.heard.push((Instant::now(), out));
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(_) => {
                    shared.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
                    return;
                }
            }
        };
        let now = Instant::now();
        if connected && now >= next_frame {
            let frame: Vec<f32> = {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                let had = !s.to_send.is_empty();
                let n = FRAME.min(s.to_send.len());
                let mut f: Vec<f32> = s.to_send.drain(..n).collect();
                f.resize(FRAME, 0.0);
                if had && s.to_send.is_empty() {
                    s.sent_all_at = Some(now);
                }
                if rms(&f) > 0.01 {
                    s.last_voiced_at = Some(now);
                }
                f
            };
            let mut packet = vec![0u8; 1500];
            if let Ok(n) = encoder.encode_float(&frame, &mut packet) {
                packet.truncate(n);
                let pt = rtc
                    .writer(mid)
                    .and_then(|w| w.payload_params().next().map(|p| p.pt()));
                if let (Some(pt), Some(writer)) = (pt, rtc.writer(mid)) {
                    let time = MediaTime::new(ts, Frequency::FORTY_EIGHT_KHZ);
                    let _ = writer.write(pt, now, time, packet);
                }
            }
            ts += 960;
            next_frame += Duration::from_millis(20);
            if next_frame < now {
                next_frame = now + Duration::from_millis(20);
            }
            continue;
        }
        if !connected {
            next_frame = now;
        }
        let wake = timeout
            .min(next_frame.max(now))
            .min(now + Duration::from_millis(20));
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        let _ = socket.set_read_timeout(Some(wait));
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                let Ok(contents) = buf[..n].try_into() else {
                    continue;
                };
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    },
                );
                let _ = rtc.handle_input(input);
            }
            Err(_) => {
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
}

/// The edge's address in an SDP answer's host candidate (for tests that look at it).
pub fn answer_candidate(answer: &str) -> Option<SocketAddr> {
    answer.lines().find_map(|l| {
        let c = l.trim().strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok()
    })
}

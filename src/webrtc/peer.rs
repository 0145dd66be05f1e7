//! One browser peer of the edge: its WebRTC session (str0m: ICE-lite, DTLS-SRTP, Opus, RTCP)
//! and the plain RTP it exchanges with the gateway core.
//!
//! Sans-IO, like str0m under it: fed the browser's datagrams, the core's RTP packets and the
//! time, it says what to send where and when to wake it ([`BrowserPeer::poll`]). Opus frames
//! pass through untouched both ways (the core's call negotiated Opus with the edge), so the
//! edge costs a copy and an SRTP operation per packet, no transcoding.
//!
//! Towards the core the peer writes RTP with the browser's own sequence numbers (a lost packet
//! stays a gap the core's jitter buffer sees) and timestamps, under one SSRC of its own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::format::Codec as RtcCodec;
use str0m::media::{Frequency, MediaData, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use super::EdgeError;

/// The largest RTP packet accepted from the core (an Opus frame is far smaller).
const MAX_CORE_PACKET: usize = 1500;

/// What the peer wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutput {
    /// A datagram for the browser (ICE, DTLS, SRTP, SRTCP).
    ToBrowser { to: SocketAddr, bytes: Vec<u8> },
    /// An RTP packet (Opus) for the core's call.
    ToCore(Vec<u8>),
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// The browser is gone (ICE disconnected or failed, DTLS closed).
    Closed(String),
}

/// Counters of the session, for its log line and the call's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerFigures {
    pub from_browser: u64,
    pub to_browser: u64,
    /// Packets from the core that could not be passed on (not RTP, another payload type,
    /// before the browser connected).
    pub dropped_from_core: u64,
}

/// Installs str0m's crypto provider (pure Rust) once per process.
fn crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}

/// Why an offer cannot be taken, before str0m sees it: an offer must have audio with Opus.
pub fn check_offer(offer: &str) -> Result<SdpOffer, EdgeError> {
    if offer.trim().is_empty() {
        return Err(EdgeError::BadOffer(
            "the body is empty; send an SDP offer".into(),
        ));
    }
    let parsed =
        SdpOffer::from_sdp_string(offer).map_err(|e| EdgeError::BadOffer(e.to_string()))?;
    let mut audio = false;
    let mut opus = false;
    for line in offer.lines().map(str::trim) {
        if line.starts_with("m=audio ") {
            audio = true;
        }
        if let Some(map) = line.strip_prefix("a=rtpmap:") {
            let codec = map.split_whitespace().nth(1).unwrap_or("");
            if codec.to_ascii_lowercase().starts_with("opus/48000") {
                opus = true;
            }
        }
    }
    if !audio {
        return Err(EdgeError::NotAcceptable(
            "the offer has no audio (m=audio) section".into(),
        ));
    }
    if !opus {
        return Err(EdgeError::NotAcceptable(
            "the offer's audio has no Opus (a=rtpmap:... opus/48000/2): the gateway speaks Opus with browsers"
                .into(),
        ));
    }
    Ok(parsed)
}

/// The mid of the first accepted audio section of an SDP answer.
fn audio_mid(sdp: &str) -> Option<Mid> {
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            // A rejected section has port 0.
            let mut fields = m.split_whitespace();
            in_audio = fields.next() == Some("audio") && fields.next() != Some("0");
        } else if in_audio {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                return Some(Mid::from(mid));
            }
        }
    }
    None
}

/// One browser's session (see the module documentation).
pub struct BrowserPeer {
    rtc: Rtc,
    /// Our ICE host candidate's address (the UDP socket the browser talks to).
    local: SocketAddr,
    /// The audio section and Opus payload type the browser negotiated.
    mid: Option<Mid>,
    browser_pt: Option<Pt>,
    /// The payload type of Opus on the core's call (set once the core answered).
    core_pt: u8,
    ssrc: u32,
    /// The core's RTP timestamps, unwrapped (str0m wants a growing media time).
    core_ts: Option<(u32, u64)>,
    out: VecDeque<PeerOutput>,
    next_timeout: Option<Instant>,
    connected: bool,
    closed: bool,
    figures: PeerFigures,
}

impl BrowserPeer {
    /// A session answering the browser's `offer`, reached at `local` (our ICE host
    /// candidate); returns it with the SDP answer.
    pub fn answer(
        offer: &str,
        local: SocketAddr,
        now: Instant,
    ) -> Result<(BrowserPeer, String), EdgeError> {
        crypto();
        let offer = check_offer(offer)?;
        let mut rtc = RtcConfig::new()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        let candidate = Candidate::host(local, "udp")
            .map_err(|e| EdgeError::Unavailable(format!("no ICE candidate for {local}: {e}")))?;
        let _ = rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| EdgeError::NotAcceptable(e.to_string()))?;
        let mut peer = BrowserPeer {
            rtc,
            local,
            mid: None,
            browser_pt: None,
            core_pt: crate::media::codec::OPUS_PAYLOAD_TYPE,
            ssrc: rand::random(),
            core_ts: None,
            out: VecDeque::new(),
            next_timeout: None,
            connected: false,
            closed: false,
            figures: PeerFigures::default(),
        };
        let answer = answer.to_sdp_string();
        // str0m announces the media (MediaAdded) only once DTLS is up; the answer names it.
        let mid = audio_mid(&answer).filter(|m| peer.rtc.media(*m).is_some());
        let Some(mid) = mid else {
            return Err(EdgeError::NotAcceptable(
                "no audio section of the offer could be accepted".into(),
            ));
        };
        peer.mid = Some(mid);
        peer.browser_pt = peer.rtc.writer(mid).and_then(|w| {
            w.payload_params()
                .find(|p| p.spec().codec == RtcCodec::Opus)
                .map(|p| p.pt())
        });
        if peer.browser_pt.is_none() {
            return Err(EdgeError::NotAcceptable(
                "Opus was not negotiated for the audio".into(),
            ));
        }
        peer.drain(now);
        Ok((peer, answer))
    }

    /// The payload type of Opus on the core's side of the relay.
    pub fn set_core_payload_type(&mut self, pt: u8) {
        self.core_pt = pt;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn figures(&self) -> PeerFigures {
        self.figures
    }

    /// When to call [`BrowserPeer::handle_timeout`] next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    /// A datagram from the browser (from `source`, to our candidate).
    pub fn from_browser(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        if self.closed {
            return;
        }
        let Ok(contents) = bytes.try_into() else {
            // Not STUN, DTLS or SRTP: nothing a browser sends.
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(error = %e, %source, "browser datagram not taken");
        }
        self.drain(now);
    }

    /// An RTP packet from the core's call: its Opus frame goes to the browser.
    pub fn from_core(&mut self, now: Instant, bytes: &[u8]) {
        if self.closed || bytes.len() > MAX_CORE_PACKET {
            self.figures.dropped_from_core += 1;
            return;
        }
        let Ok(packet) = rtp_rs::RtpReader::new(bytes) else {
            self.figures.dropped_from_core += 1;
            return;
        };
        let (Some(mid), Some(pt)) = (self.mid, self.browser_pt) else {
            self.figures.dropped_from_core += 1;
            return;
        };
        if packet.payload_type() != self.core_pt || !self.connected {
            self.figures.dropped_from_core += 1;
            return;
        }
        let time = MediaTime::new(
            self.unwrap_core_ts(packet.timestamp()),
            Frequency::FORTY_EIGHT_KHZ,
        );
        let written = match self.rtc.writer(mid) {
            // Straight from the datagram into str0m's shared buffer: one copy per packet.
            Some(w) => w.write(pt, now, time, packet.payload()),
            None => {
                self.figures.dropped_from_core += 1;
                return;
            }
        };
        match written {
            Ok(()) => self.figures.to_browser += 1,
            Err(e) => {
                self.figures.dropped_from_core += 1;
                tracing::debug!(error = %e, "frame for the browser not written");
            }
        }
        self.drain(now);
    }

    /// The timer set by [`BrowserPeer::next_timeout`] is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "WebRTC timeout handling failed");
        }
        self.drain(now);
    }

    /// Hangs up: the browser learns it from the ICE/DTLS side going quiet (and from the
    /// HTTP side's DELETE or event).
    pub fn close(&mut self) {
        if !self.closed {
            self.rtc.disconnect();
            self.closed = true;
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<PeerOutput> {
        self.out.pop_front()
    }

    /// The core's RTP timestamp, extended past 32-bit wrap-around.
    fn unwrap_core_ts(&mut self, ts: u32) -> u64 {
        let extended = match self.core_ts {
            None => u64::from(ts),
            Some((last, last_ext)) => {
                let delta = ts.wrapping_sub(last) as i32;
                last_ext.saturating_add_signed(i64::from(delta))
            }
        };
        self.core_ts = Some((ts, extended));
        extended
    }

    /// Runs str0m until it waits for input or time, queueing what it wants done.
    fn drain(&mut self, _now: Instant) {
        while !self.closed {
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    self.closed = true;
                    self.out
                        .push_back(PeerOutput::Closed(format!("WebRTC error: {e}")));
                    return;
                }
            };
            match output {
                Output::Timeout(at) => {
                    self.next_timeout = Some(at);
                    return;
                }
                Output::Transmit(t) => self.out.push_back(PeerOutput::ToBrowser {
                    to: t.destination,
                    bytes: t.contents.to_vec(),
                }),
                Output::Event(event) => self.on_event(event),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                self.connected = true;
                self.out.push_back(PeerOutput::Connected);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.closed = true;
                self.out.push_back(PeerOutput::Closed(
                    "the browser's ICE connection ended".into(),
                ));
            }
            Event::MediaData(data) => self.on_media(data),
            _ => {}
        }
    }

    fn on_media(&mut self, data: MediaData) {
        if Some(data.mid) != self.mid {
            return;
        }
        self.figures.from_browser += 1;
        // The browser's own sequence number and timestamp (one Opus frame per packet).
        let seq = (*data.seq_range.start()).as_u16();
        let ts = data.time.numer() as u32;
        let mut packet = Vec::with_capacity(12 + data.data.len());
        packet.push(0x80);
        packet.push(self.core_pt & 0x7f);
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&ts.to_be_bytes());
        packet.extend_from_slice(&self.ssrc.to_be_bytes());
        packet.extend_from_slice(&data.data);
        self.out.push_back(PeerOutput::ToCore(packet));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaKind};

    const BROWSER: &str = "127.0.0.1:50000";
    const EDGE: &str = "127.0.0.1:40000";

    /// A browser of our own: str0m with full ICE, offering Opus audio.
    fn browser(now: Instant) -> (Rtc, String, str0m::change::SdpPendingOffer, Mid) {
        crypto();
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        let addr: SocketAddr = BROWSER.parse().unwrap();
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        (rtc, offer.to_sdp_string(), pending, mid)
    }

    /// Browser and edge exchange datagrams over a perfect network for `for_how_long` of
    /// simulated time; what the browser received as media, and what the edge sent the core.
    fn run(
        browser: &mut Rtc,
        peer: &mut BrowserPeer,
        now: &mut Instant,
        for_how_long: Duration,
        mut each_tick: impl FnMut(&mut Rtc, &mut BrowserPeer, Instant),
    ) -> (Vec<MediaData>, Vec<Vec<u8>>, bool) {
        let (b_addr, e_addr): (SocketAddr, SocketAddr) =
            (BROWSER.parse().unwrap(), EDGE.parse().unwrap());
        let end = *now + for_how_long;
        let (mut media, mut to_core, mut connected) = (Vec::new(), Vec::new(), false);
        while *now < end {
            each_tick(browser, peer, *now);
            // Browser's side until it waits.
            loop {
                match browser.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => peer.from_browser(*now, b_addr, &t.contents),
                    Output::Event(Event::MediaData(d)) => media.push(d),
                    Output::Event(_) => {}
                }
            }
            peer.handle_timeout(*now);
            while let Some(out) = peer.poll() {
                match out {
                    PeerOutput::ToBrowser { to, bytes } => {
                        assert_eq!(to, b_addr);
                        let input = Input::Receive(
                            *now,
                            Receive {
                                proto: Protocol::Udp,
                                source: e_addr,
                                destination: b_addr,
                                contents: bytes.as_slice().try_into().unwrap(),
                            },
                        );
                        browser.handle_input(input).unwrap();
                    }
                    PeerOutput::ToCore(p) => to_core.push(p),
                    PeerOutput::Connected => connected = true,
                    PeerOutput::Closed(why) => panic!("closed: {why}"),
                }
            }
            *now += Duration::from_millis(5);
            browser.handle_input(Input::Timeout(*now)).unwrap();
        }
        (media, to_core, connected)
    }

    #[test]
    fn a_browser_connects_and_opus_flows_both_ways_untouched() {
        let mut now = Instant::now();
        let (mut browser, offer, pending, mid) = browser(now);
        let (mut peer, answer) = BrowserPeer::answer(&offer, EDGE.parse().unwrap(), now).unwrap();
        assert!(answer.contains("a=ice-lite"), "{answer}");
        assert!(answer.contains("opus/48000/2"), "{answer}");
        assert!(answer.contains("a=fingerprint:sha-256"), "{answer}");
        browser
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        let (_, _, connected) = run(
            &mut browser,
            &mut peer,
            &mut now,
            Duration::from_secs(3),
            |_, _, _| {},
        );
        assert!(
            connected && peer.is_connected(),
            "ICE and DTLS did not complete"
        );

        // The core's RTP (Opus, its payload type 96) reaches the browser as Opus frames.
        peer.set_core_payload_type(96);
        let mut seq = 0u16;
        let mut ts = u32::MAX - 960; // wraps on the second packet
        let (media, _, _) = run(
            &mut browser,
            &mut peer,
            &mut now,
            Duration::from_millis(200),
            |_, p, t| {
                if seq < 5 {
                    let mut pkt = vec![0x80, 96];
                    pkt.extend_from_slice(&seq.to_be_bytes());
                    pkt.extend_from_slice(&ts.to_be_bytes());
                    pkt.extend_from_slice(&7u32.to_be_bytes());
                    pkt.extend_from_slice(&[0xF8, seq as u8, 1, 2, 3]);
                    p.from_core(t, &pkt);
                    seq += 1;
                    ts = ts.wrapping_add(960);
                }
            },
        );
        assert_eq!(media.len(), 5, "frames at the browser");
        for (i, m) in media.iter().enumerate() {
            assert_eq!(&m.data[..], &[0xF8, i as u8, 1, 2, 3]);
        }
        // Another payload type from the core is not passed on.
        let before = peer.figures().dropped_from_core;
        peer.from_core(now, &[0x80, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 7, 0xFF]);
        peer.from_core(now, b"not rtp");
        assert_eq!(peer.figures().dropped_from_core, before + 2);

        // The browser's Opus frames reach the core as RTP with its sequence numbers.
        let mut n = 0u64;
        let (_, to_core, _) = run(
            &mut browser,
            &mut peer,
            &mut now,
            Duration::from_millis(200),
            |b, _, t| {
                if n < 4 {
                    let pt = b.writer(mid).unwrap().payload_params().next().unwrap().pt();
                    let time = MediaTime::new(48_000 + n * 960, Frequency::FORTY_EIGHT_KHZ);
                    b.writer(mid)
                        .unwrap()
                        .write(pt, t, time, vec![0xF8, n as u8, 9])
                        .unwrap();
                    n += 1;
                }
            },
        );
        assert_eq!(to_core.len(), 4, "packets at the core");
        let mut seqs = Vec::new();
        for (i, p) in to_core.iter().enumerate() {
            let r = rtp_rs::RtpReader::new(p).unwrap();
            assert_eq!(r.payload_type(), 96);
            assert_eq!(r.payload(), &[0xF8, i as u8, 9]);
            seqs.push(u16::from(r.sequence_number()));
            if i > 0 {
                let prev = rtp_rs::RtpReader::new(&to_core[i - 1]).unwrap();
                assert_eq!(r.timestamp().wrapping_sub(prev.timestamp()), 960);
            }
        }
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "{seqs:?}"
        );
    }

    #[test]
    fn offers_that_cannot_be_taken_say_why() {
        let now = Instant::now();
        let local: SocketAddr = EDGE.parse().unwrap();
        let err = |offer: &str| BrowserPeer::answer(offer, local, now).err().unwrap();
        assert!(matches!(err(""), EdgeError::BadOffer(_)));
        assert!(matches!(err("hello"), EdgeError::BadOffer(_)));
        let (_, offer, _, _) = browser(now);
        let no_opus = offer.replace("opus/48000/2", "PCMU/8000");
        let e = err(&no_opus);
        assert!(matches!(e, EdgeError::NotAcceptable(_)), "{e}");
        assert_eq!(e.http_status(), 406);
        assert!(e.to_string().contains("Opus"), "{e}");
        let video_only = offer.replace("m=audio", "m=video");
        assert!(matches!(
            err(&video_only),
            EdgeError::NotAcceptable(_) | EdgeError::BadOffer(_)
        ));
    }
}

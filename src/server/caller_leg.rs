//! The caller's leg of an answered call: its RTP socket's receive side (jitter buffer,
//! decoder, symmetric-RTP latching under `media::latch`'s rules: only the caller's stream is
//! heard, DTMF included, and only the caller gets the bot's audio), its paced sender, the recording of both directions, RTCP
//! reports and the RTP figures of the call's record. The call task asks it for the caller's
//! next 20 ms frame and gives it what the caller should hear. When the call negotiated SRTP
//! (`media::srtp`), every datagram is authenticated and decrypted here before anything else
//! looks at it (so a forged packet can neither latch the stream nor be played), and the
//! outbound context sits in the paced stream, which protects each packet as it leaves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::call::record::{RecordingInfo, RtpFigures};
use crate::media::codec::CodecError;
use crate::media::dtmf::DtmfEvent;
use crate::media::jitter::JitterConfig;
use crate::media::latch::{Admit, Dropped, MediaLatch};
use crate::media::receiver::MediaReceiver;
use crate::media::rtcp::{parse_rtcp, sender_report, ReceptionReport, SenderInfo};
use crate::media::rtp::is_rtcp;
use crate::media::sender::RtpSender;
use crate::media::srtp::{SrtpContext, SrtpError, SrtpKeys, SrtpSession};
use crate::observe::metrics;
use crate::sip::endpoint::IncomingCall;
use crate::sip::sdp::Negotiated;

use super::pacer::{Lateness, PacedStream, Pacer};
use super::recording::{CallRecorder, RecordingConfig};
use crate::config::media::MediaConfig;

/// Packet time: every frame and packet is 20 ms.
pub const PTIME_MS: u32 = 20;

/// The receive and send sides for a negotiated codec: the caller's leg (again after a codec
/// change) and the agent's.
pub(super) fn media_ends(
    m: &Negotiated,
    jitter_ms: (u32, u32),
    start: Instant,
) -> Result<(MediaReceiver, RtpSender), CodecError> {
    let jitter = JitterConfig {
        clock_rate: m.codec.clock_rate(),
        frame_samples: m.codec.timestamp_per_frame(PTIME_MS),
        min_delay_ms: jitter_ms.0,
        max_delay_ms: jitter_ms.1,
    };
    let mut receiver = MediaReceiver::new(m.codec, m.telephone_event_pt, jitter)?;
    receiver.set_payload_type(m.payload_type);
    let mut sender = RtpSender::new_random(m.codec, m.payload_type, PTIME_MS, start)?;
    sender.set_telephone_event_pt(m.telephone_event_pt);
    Ok((receiver, sender))
}

/// Why the caller's leg could not start.
#[derive(Debug, thiserror::Error)]
pub enum CallerLegError {
    #[error("cannot set up the codec: {0}")]
    Codec(#[from] CodecError),
    #[error("cannot share the RTP socket with the pacer: {0}")]
    Socket(#[from] std::io::Error),
    #[error("cannot set up SRTP: {0}")]
    Srtp(#[from] SrtpError),
}

/// The caller's media, both ways.
pub struct CallerLeg {
    receiver: MediaReceiver,
    stream: Arc<Mutex<PacedStream>>,
    media: Negotiated,
    /// Which datagrams are the caller's, and where the caller's RTP goes (the SDP address
    /// until the first accepted packet latches it).
    latch: MediaLatch,
    /// The caller sent something: from then on the pipeline gets a frame every 20 ms.
    receiving: bool,
    rate: u32,
    jitter_ms: (u32, u32),
    recorder: Option<CallRecorder>,
    /// What the sender sent since the last tick, for the recording (reused every tick).
    sent_audio: Vec<f32>,
    rtcp: RtcpState,
    local_ip: std::net::IpAddr,
    /// Authenticates and decrypts the caller's SRTP/SRTCP (None: plain RTP).
    srtp_in: Option<SrtpContext>,
    pub figures: RtpFigures,
}

impl CallerLeg {
    /// Starts the media of the answered `call` on `rtp`; its media is accepted only as
    /// `config`'s latching rules say, from the SDP address or the INVITE's source.
    pub fn start(
        call: &IncomingCall,
        rtp: &std::net::UdpSocket,
        pacer: &Pacer,
        config: &MediaConfig,
        // The recording's settings, and the gateway's call id that names its file.
        (recording, id): (&RecordingConfig, &str),
        now: Instant,
    ) -> Result<CallerLeg, CallerLegError> {
        let media = &call.media;
        let jitter_ms = (config.jitter_min_ms, config.jitter_max_ms);
        let (receiver, sender) = media_ends(media, jitter_ms, now)?;
        let mut paced = PacedStream::new(sender, rtp.try_clone()?, media.remote_rtp);
        paced.sending = media.direction.sends();
        let (srtp_in, srtp_out) = srtp_contexts(media.srtp.as_ref())?;
        paced.srtp = srtp_out;
        let recorder = start_recording(recording, id, media);
        if recorder.is_some() {
            paced.sender.keep_sent_audio();
        }
        Ok(CallerLeg {
            receiver,
            stream: pacer.register(paced),
            media: media.clone(),
            latch: MediaLatch::new(config.latch(), media.remote_rtp, call.peer.addr.ip()),
            receiving: false,
            rate: media.codec.sample_rate(),
            jitter_ms,
            recorder,
            sent_audio: Vec::new(),
            rtcp: RtcpState::default(),
            local_ip: call.local_ip,
            srtp_in,
            figures: RtpFigures {
                srtp: media.srtp.as_ref().map(|k| k.suite.name().to_owned()),
                ..RtpFigures::default()
            },
        })
    }

    /// The rate of the leg's decoded audio (and of what it is given to play).
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Samples in one 20 ms frame.
    pub fn frame_len(&self) -> usize {
        self.media.codec.samples_per_frame(PTIME_MS)
    }

    /// How long the caller has sent nothing (counted from `started` before the first packet).
    pub fn silent_for(&self, started: Instant, now: Instant) -> Duration {
        now.duration_since(self.receiver.last_packet_at().unwrap_or(started))
    }

    /// A datagram on the RTP port: the caller's RTP into the jitter buffer (a finished DTMF
    /// digit is returned), the caller's RTCP to the RTCP bookkeeping, anything else dropped and
    /// counted.
    pub fn on_datagram(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<DtmfEvent> {
        let plain;
        let bytes = match self.srtp_in.as_mut() {
            None => bytes,
            Some(ctx) => {
                let opened = if is_rtcp(bytes) {
                    ctx.unprotect_rtcp(bytes)
                } else {
                    ctx.unprotect_rtp(bytes)
                };
                match opened {
                    Ok(p) => {
                        plain = p;
                        plain.as_slice()
                    }
                    Err(e) => {
                        self.count_srtp_drop(&e, from, bytes);
                        return None;
                    }
                }
            }
        };
        match self.latch.admit(bytes, from, now) {
            Admit::Drop(why) => {
                self.count_dropped(why, from);
                return None;
            }
            Admit::Rtcp => {
                self.on_rtcp_admitted(bytes, now);
                return None;
            }
            Admit::Rtp { latched } => {
                // Symmetric RTP: answer where the caller's media really comes from (NAT, or
                // an SDP address that is not the sending one). Only the first accepted packet
                // moves the destination; a re-INVITE can move it again.
                if latched {
                    if from != self.media.remote_rtp {
                        tracing::info!(%from, sdp = %self.media.remote_rtp, "RTP source differs from SDP; sending there (symmetric RTP)");
                    }
                    self.send_to(from);
                }
            }
        }
        match self.receiver.push_datagram(bytes, now) {
            Ok(event) => {
                self.receiving = true;
                event
            }
            Err(e) => {
                tracing::debug!(error = %e, %from, "RTP packet ignored");
                None
            }
        }
    }

    /// Counts a dropped datagram; the first of each kind is logged.
    fn count_dropped(&mut self, why: Dropped, from: SocketAddr) {
        let f = &mut self.figures;
        let count = match why {
            Dropped::Stranger => &mut f.packets_from_strangers,
            Dropped::ForeignSsrc => &mut f.packets_foreign_ssrc,
        };
        *count += 1;
        if *count == 1 {
            let latched = self.latch.locked().map(|(a, _)| a.to_string());
            tracing::warn!(%from, ?why, latched, "RTP not from the caller's stream dropped (counted in the call's RTP figures)");
        }
    }

    /// Counts an SRTP packet that was not authenticated, was a replay, or was no SRTP at all;
    /// the first of each kind is logged (without any key material).
    fn count_srtp_drop(&mut self, e: &SrtpError, from: SocketAddr, packet: &[u8]) {
        let f = &mut self.figures;
        let count = match e {
            SrtpError::Replay => {
                metrics::global().srtp_replays.inc();
                &mut f.srtp_replays
            }
            SrtpError::Malformed(_) => &mut f.srtp_malformed,
            SrtpError::Auth | SrtpError::Context(_) => {
                metrics::global().srtp_auth_failures.inc();
                &mut f.srtp_auth_failures
            }
        };
        *count += 1;
        if *count == 1 {
            // The header's first two bytes (version, and RTP payload or RTCP packet type) and
            // the length tell what the peer sent; nothing secret is in them.
            tracing::warn!(
                %from, error = %e, len = packet.len(),
                head = ?packet.get(..2), tail_e_flag = ?packet.len().checked_sub(14).and_then(|i| packet.get(i)),
                "SRTP packet dropped (counted in the call's RTP figures and the metrics)"
            );
        }
    }

    /// Where the bot's RTP goes from now on.
    fn send_to(&self, to: SocketAddr) {
        if let Ok(mut s) = self.stream.lock() {
            s.remote = to;
        }
    }

    /// The caller's next 20 ms, once the caller has sent anything: decoded, concealed, or
    /// silence while nothing arrives (so end-of-turn detection still sees the pause). The
    /// recording gets both directions of the tick.
    pub fn next_frame(&mut self, now: Instant) -> Option<Vec<f32>> {
        let frame_len = self.frame_len();
        let frame = self.receiving.then(|| {
            self.receiver
                .poll_frame(now)
                .unwrap_or_else(|| vec![0.0; frame_len])
        });
        if let Some(rec) = self.recorder.as_mut() {
            match &frame {
                Some(f) => rec.caller(f, self.rate),
                None => rec.caller_silence(frame_len, self.rate),
            }
            if let Ok(mut s) = self.stream.lock() {
                s.sender.drain_sent(&mut self.sent_audio);
            }
            rec.heard(&self.sent_audio, self.rate);
            self.sent_audio.clear();
        }
        frame
    }

    /// Queues audio (at the leg's rate) for the caller.
    pub fn play(&self, samples: &[f32]) {
        if let Ok(mut s) = self.stream.lock() {
            s.sender.enqueue(samples);
        }
    }

    /// Drops what is queued; returns how many samples were dropped.
    pub fn flush(&self) -> usize {
        self.stream.lock().map_or(0, |mut s| s.sender.flush())
    }

    /// Samples queued for the caller.
    pub fn queued(&self) -> usize {
        self.stream.lock().map_or(0, |s| s.sender.queued_samples())
    }

    /// Whether bot speech is playing.
    pub fn speaking(&self) -> bool {
        self.stream.lock().is_ok_and(|s| s.sender.is_speaking())
    }

    /// A re-INVITE changed the media: hold, resume, a new address or a new codec. A new codec
    /// is a new stream both ways: a fresh jitter buffer for its clock, fresh sequence numbers,
    /// timestamps and SSRC.
    pub fn change_media(&mut self, m: Negotiated, now: Instant) {
        let new_ends = if m.codec != self.media.codec || m.payload_type != self.media.payload_type {
            match media_ends(&m, self.jitter_ms, now) {
                Ok(ends) => Some(ends),
                Err(e) => {
                    tracing::error!(error = %e, "cannot switch codec; keeping the old one");
                    None
                }
            }
        } else {
            None
        };
        self.latch.resignal(m.remote_rtp);
        let destination = self.latch.destination();
        let rekey = if m.srtp != self.media.srtp {
            match srtp_contexts(m.srtp.as_ref()) {
                Ok(contexts) => Some(contexts),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up the new SRTP keys; keeping the old ones");
                    None
                }
            }
        } else {
            None
        };
        if rekey.is_some() {
            tracing::info!(
                srtp = m.srtp.as_ref().map(|k| k.suite.name()).unwrap_or("off"),
                plain_before = self.srtp_in.is_none(),
                "SRTP keys changed by re-INVITE (rekeyed both ways)"
            );
            self.figures.srtp = m.srtp.as_ref().map(|k| k.suite.name().to_owned());
        }
        if let Ok(mut s) = self.stream.lock() {
            if let Some((srtp_in, srtp_out)) = rekey {
                self.srtp_in = srtp_in;
                s.srtp = srtp_out;
            }
            if let Some((new_receiver, mut new_sender)) = new_ends {
                if let Some(rec) = self.recorder.as_mut() {
                    // The old sender's last frames, at the old rate.
                    s.sender.drain_sent(&mut self.sent_audio);
                    rec.heard(&self.sent_audio, self.rate);
                    self.sent_audio.clear();
                    new_sender.keep_sent_audio();
                }
                self.receiver = new_receiver;
                self.rate = m.codec.sample_rate();
                s.sender = new_sender;
            }
            s.remote = destination;
            s.sending = m.direction.sends();
        }
        tracing::info!(hold = m.on_hold, codec = %m.codec, "media updated by re-INVITE");
        self.media = m;
    }

    /// A datagram on the RTCP port: the caller's RTCP (from the caller's IP), else dropped
    /// and counted.
    pub fn on_rtcp(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        if !self.latch.admits_rtcp_from(from) {
            self.count_dropped(Dropped::Stranger, from);
            return;
        }
        match self.srtp_in.as_mut().map(|ctx| ctx.unprotect_rtcp(bytes)) {
            None => self.on_rtcp_admitted(bytes, now),
            Some(Ok(plain)) => self.on_rtcp_admitted(&plain, now),
            Some(Err(e)) => self.count_srtp_drop(&e, from, bytes),
        }
    }

    fn on_rtcp_admitted(&mut self, bytes: &[u8], now: Instant) {
        let ssrc = self.stream.lock().map_or(0, |s| s.sender.ssrc());
        self.rtcp.on_packet(bytes, now, ssrc, &mut self.figures);
    }

    /// Our next RTCP sender report and where it goes (the caller's RTP port + 1).
    pub fn rtcp_report(&mut self, now: Instant) -> Option<(Vec<u8>, SocketAddr)> {
        let report = self.rtcp.report(&self.receiver, now);
        let mut stream = self.stream.lock().ok()?;
        let info = SenderInfo {
            ssrc: stream.sender.ssrc(),
            wall_clock: SystemTime::now(),
            rtp_timestamp: stream.sender.timestamp(),
            packets: stream.sender.packets_sent() as u32,
            octets: stream.sender.octets_sent() as u32,
        };
        let mut packet = sender_report(
            &info,
            report.as_ref(),
            &format!("voicebot@{}", self.local_ip),
        );
        if let Some(ctx) = stream.srtp.as_mut() {
            packet = ctx
                .protect_rtcp(&packet)
                .map_err(|e| tracing::debug!(error = %e, "cannot protect our RTCP report"))
                .ok()?;
        }
        drop(stream);
        let remote = self.latch.destination();
        let to = SocketAddr::new(remote.ip(), remote.port().saturating_add(1));
        Some((packet, to))
    }

    /// The codec's name and where the caller's RTP went, for the record.
    pub fn describe(&self) -> (String, String) {
        (
            self.media.codec.to_string(),
            self.latch.destination().to_string(),
        )
    }

    /// The call is over: the RTP figures and the recording.
    pub async fn finish(mut self) -> (RtpFigures, Option<RecordingInfo>) {
        let stats = self.receiver.stats();
        let figures = &mut self.figures;
        figures.packets_received = stats.received;
        figures.packets_lost = stats.lost;
        figures.packets_late = stats.late;
        figures.jitter_ms = stats.jitter_ms;
        let lateness = match self.stream.lock() {
            Ok(mut s) => {
                figures.packets_sent = s.packets_sent;
                std::mem::take(&mut s.lateness)
            }
            Err(_) => Lateness::new(),
        };
        figures.send_late_p50_ms = lateness.quantile_ms(0.50);
        figures.send_late_p99_ms = lateness.quantile_ms(0.99);
        figures.send_late_max_ms = lateness.max.as_secs_f64() * 1000.0;
        figures.send_late_histogram = lateness
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (i as u16, n))
            .collect();
        let recording = match self.recorder.take() {
            Some(r) => match r.finish().await {
                Ok(info) => {
                    tracing::info!(file = %info.file, seconds = info.seconds, dropped_ms = info.dropped_ms, "call recording written");
                    Some(info)
                }
                Err(e) => {
                    tracing::error!(error = %e, "the call recording failed");
                    None
                }
            },
            None => None,
        };
        (self.figures, recording)
    }
}

/// The inbound and outbound SRTP contexts for `keys` (none for plain RTP).
fn srtp_contexts(
    keys: Option<&SrtpKeys>,
) -> Result<(Option<SrtpContext>, Option<SrtpContext>), SrtpError> {
    match keys {
        None => Ok((None, None)),
        Some(keys) => {
            let session = SrtpSession::new(keys)?;
            Ok((Some(session.inbound), Some(session.outbound)))
        }
    }
}

/// The call's recorder, when `[recording]` is on (a failure to start is logged, the call goes
/// on unrecorded).
fn start_recording(
    config: &RecordingConfig,
    call_id: &str,
    media: &Negotiated,
) -> Option<CallRecorder> {
    if !config.enabled {
        return None;
    }
    match CallRecorder::start(&config.dir, call_id, media.codec.sample_rate()) {
        Ok(r) => {
            tracing::info!(dir = %config.dir.display(), file = r.file(), "recording the call");
            Some(r)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record the call; it goes on unrecorded");
            None
        }
    }
}

/// RTCP bookkeeping for one call: what the report blocks need and what the caller reported.
#[derive(Default)]
struct RtcpState {
    /// The caller's last SR: the middle NTP bits and when it arrived.
    last_sr: Option<(u32, Instant)>,
    /// Received and lost counts at the previous report (for the fraction lost).
    previous: (u64, u64),
}

impl RtcpState {
    fn on_packet(&mut self, buf: &[u8], now: Instant, our_ssrc: u32, figures: &mut RtpFigures) {
        figures.rtcp_received += 1;
        match parse_rtcp(buf) {
            Ok(summary) => {
                if let Some((_, ntp_mid)) = summary.sender_report {
                    self.last_sr = Some((ntp_mid, now));
                }
                if let Some(r) = summary.reports.iter().find(|r| r.ssrc == our_ssrc) {
                    figures.remote_reported_lost = Some(r.cumulative_lost);
                    figures.remote_reported_jitter_ms = Some(f64::from(r.jitter) / 8.0);
                }
                if summary.bye {
                    tracing::debug!("RTCP BYE from the caller");
                }
            }
            Err(e) => tracing::debug!(error = %e, "RTCP packet ignored"),
        }
    }

    /// The report block about the caller's stream, once it has sent something.
    fn report(&mut self, receiver: &MediaReceiver, now: Instant) -> Option<ReceptionReport> {
        let ssrc = receiver.remote_ssrc()?;
        let j = receiver.jitter_stats();
        let (prev_received, prev_lost) = self.previous;
        self.previous = (j.received, j.lost);
        let (received, lost) = (j.received - prev_received, j.lost - prev_lost);
        let fraction = (lost * 256)
            .checked_div(received + lost)
            .map_or(0, |f| f.min(255) as u8);
        let (last_sr, dlsr) = match self.last_sr {
            Some((mid, at)) => (mid, (now.duration_since(at).as_secs_f64() * 65536.0) as u32),
            None => (0, 0),
        };
        Some(ReceptionReport {
            ssrc,
            fraction_lost: fraction,
            cumulative_lost: j.lost.min(0x7F_FFFF) as u32,
            extended_highest_seq: j.highest_seq.saturating_sub(1 << 16) as u32,
            jitter: (j.jitter_ms * 8.0) as u32,
            last_sr,
            delay_since_last_sr: dlsr,
        })
    }
}

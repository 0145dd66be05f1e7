//! The agent leg of a warm transfer, inside the caller's media task: its RTP socket, jitter
//! buffer and decoder, and its paced sender. Once the agent answers, the call task relays the
//! decoded audio both ways through it, so the two legs may use different codecs (PCMU on one,
//! Opus on the other): everything meets as PCM and is resampled when the rates differ. DTMF
//! from the caller is passed on as RFC 4733 events. The leg's media obeys the caller leg's
//! latching rules (`media::latch`): only RTP from the agent's SDP address or its SIP peer's IP
//! latches, then only that stream (address and SSRC) is heard and gets the caller's audio.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::audio::resample::{resample_all, StreamResampler};
use crate::config::media::MediaConfig;
use crate::media::codec::CodecError;
use crate::media::dtmf::DtmfEvent;
use crate::media::latch::{Admit, LatchStats, MediaLatch};
use crate::media::receiver::MediaReceiver;
use crate::sip::endpoint::CallHandle;
use crate::sip::sdp::Negotiated;

use super::caller_leg::{media_ends, PTIME_MS};
use super::pacer::{PacedStream, Pacer};
use super::ports::RtpPorts;

/// Why the agent leg's media could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentMediaError {
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("RTP socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("rate conversion: {0}")]
    Resample(#[from] crate::audio::resample::ResampleError),
}

/// A placed agent leg: its handle, its RTP ports and where its INVITE went (the SIP peer whose
/// IP may send the leg's media).
pub struct AgentLeg {
    pub handle: CallHandle,
    pub ports: RtpPorts,
    pub peer_ip: IpAddr,
}

/// The agent leg's RTP, both ways.
pub struct AgentMedia {
    pub handle: CallHandle,
    socket: Arc<UdpSocket>,
    receiver: MediaReceiver,
    stream: Arc<Mutex<PacedStream>>,
    /// Sample rate of the leg's decoded audio.
    pub rate: u32,
    latch: MediaLatch,
    /// Packets received from the agent.
    pub packets_in: u64,
    /// The caller leg's rate and the two streaming converters between it and the agent's
    /// (pass-through when equal), built once: a frame-by-frame resampler would cost a filter
    /// setup per 20 ms and click at every frame edge.
    caller_rate: u32,
    to_agent: StreamResampler,
    to_caller: StreamResampler,
    converted: Vec<f32>,
    _ports: RtpPorts,
}

impl AgentMedia {
    /// Starts the agent leg's media on its ports for the answered `media`.
    pub fn start(
        leg: AgentLeg,
        media: &Negotiated,
        caller_rate: u32,
        pacer: &Pacer,
        config: &MediaConfig,
        now: Instant,
    ) -> Result<AgentMedia, AgentMediaError> {
        let AgentLeg {
            handle,
            ports,
            peer_ip,
        } = leg;
        let jitter_ms = (config.jitter_min_ms, config.jitter_max_ms);
        let (receiver, sender) = media_ends(media, jitter_ms, now)?;
        let socket = Arc::new(UdpSocket::from_std(ports.rtp.try_clone()?)?);
        let send_socket = ports.rtp.try_clone()?;
        let mut paced = PacedStream::new(sender, send_socket, media.remote_rtp);
        paced.sending = media.direction.sends();
        let stream = pacer.register(paced);
        let rate = media.codec.sample_rate();
        Ok(AgentMedia {
            handle,
            socket,
            receiver,
            stream,
            rate,
            latch: MediaLatch::new(config.latch(), media.remote_rtp, peer_ip),
            packets_in: 0,
            caller_rate,
            to_agent: StreamResampler::new(caller_rate, rate)?,
            to_caller: StreamResampler::new(rate, caller_rate)?,
            converted: Vec::new(),
            _ports: ports,
        })
    }

    /// The leg's RTP socket, to wait on without borrowing the leg across an await.
    pub fn socket(&self) -> Arc<UdpSocket> {
        Arc::clone(&self.socket)
    }

    /// A datagram on the leg's port: the agent's RTP into the jitter buffer (a finished DTMF
    /// digit is returned); the first accepted packet's source becomes the destination
    /// (symmetric RTP). What is not the agent's stream is dropped and counted.
    pub fn on_datagram(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<DtmfEvent> {
        match self.latch.admit(bytes, from, now) {
            Admit::Rtp { latched } => {
                if latched {
                    if let Ok(mut s) = self.stream.lock() {
                        if s.remote != from {
                            tracing::info!(%from, sdp = %s.remote, "agent RTP source differs from SDP; sending there");
                            s.remote = from;
                        }
                    }
                }
            }
            Admit::Rtcp => return None,
            Admit::Drop(why) => {
                let stats = self.latch.stats();
                if stats.stranger + stats.foreign_ssrc == 1 {
                    tracing::warn!(%from, ?why, "agent leg: RTP not from the agent's stream dropped");
                }
                return None;
            }
        }
        match self.receiver.push_datagram(bytes, now) {
            Ok(event) => {
                self.packets_in += 1;
                event
            }
            Err(e) => {
                tracing::debug!(error = %e, %from, "agent RTP packet ignored");
                None
            }
        }
    }

    /// The caller leg changed rate (a re-INVITE with another codec): new converters.
    fn follow_caller_rate(&mut self, caller_rate: u32) {
        if caller_rate == self.caller_rate {
            return;
        }
        match (
            StreamResampler::new(caller_rate, self.rate),
            StreamResampler::new(self.rate, caller_rate),
        ) {
            (Ok(to_agent), Ok(to_caller)) => {
                self.caller_rate = caller_rate;
                self.to_agent = to_agent;
                self.to_caller = to_caller;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot convert between the legs' new rates");
            }
        }
    }

    /// The agent's next 20 ms of audio at the caller's `caller_rate` (silence before the first
    /// packet, concealment on loss; the converter's delay at the start).
    pub fn poll_for_caller(&mut self, now: Instant, caller_rate: u32) -> Vec<f32> {
        self.follow_caller_rate(caller_rate);
        let n = (self.rate * PTIME_MS / 1000) as usize;
        let frame = self
            .receiver
            .poll_frame(now)
            .unwrap_or_else(|| vec![0.0; n]);
        let mut out = Vec::with_capacity(frame.len() * 2);
        if let Err(e) = self.to_caller.push(&frame, &mut out) {
            tracing::debug!(error = %e, "cannot convert the agent's audio for the caller");
        }
        out
    }

    /// Sends the caller's audio (at `caller_rate`) to the agent.
    pub fn send(&mut self, samples: &[f32], caller_rate: u32) {
        self.follow_caller_rate(caller_rate);
        self.converted.clear();
        if let Err(e) = self.to_agent.push(samples, &mut self.converted) {
            tracing::debug!(error = %e, "cannot convert the caller's audio for the agent");
            return;
        }
        if let Ok(mut s) = self.stream.lock() {
            s.sender.enqueue(&self.converted);
        }
    }

    /// Plays `samples` (at the leg's rate) to the agent only: the whisper.
    pub fn play(&mut self, samples: &[f32]) {
        if let Ok(mut s) = self.stream.lock() {
            s.sender.enqueue(samples);
        }
    }

    /// The agent's next 20 ms, discarded (while the agent is not put through to the caller,
    /// the jitter buffer still has to be played out).
    pub fn discard_frame(&mut self, now: Instant) {
        let _ = self.receiver.poll_frame(now);
    }

    /// Passes a caller's DTMF digit on to the agent.
    pub fn send_dtmf(&self, digit: char) {
        if let Ok(mut s) = self.stream.lock() {
            if let Err(e) = s.sender.send_dtmf(digit, 100) {
                tracing::debug!(error = %e, %digit, "DTMF not passed to the agent");
            }
        }
    }

    /// Packets sent to the agent so far.
    pub fn packets_out(&self) -> u64 {
        self.stream.lock().map_or(0, |s| s.packets_sent)
    }
}

impl Drop for AgentMedia {
    /// What the leg's port dropped goes to the log (the call's record has the caller's leg).
    fn drop(&mut self) {
        let LatchStats {
            stranger,
            foreign_ssrc,
            ssrc_changes,
        } = self.latch.stats();
        if stranger + foreign_ssrc + ssrc_changes > 0 {
            tracing::info!(
                stranger,
                foreign_ssrc,
                ssrc_changes,
                "agent leg: datagrams not from the agent's stream were dropped"
            );
        }
    }
}

/// Converts a frame between rates for the caller leg (no-op when equal).
pub fn convert(samples: Vec<f32>, from: u32, to: u32) -> Vec<f32> {
    if from == to {
        return samples;
    }
    resample_all(&samples, from, to).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot resample agent audio for the caller");
        Vec::new()
    })
}

/// A ringback-style hold tone for the caller while the agent's phone rings: 425 Hz, one second
/// on, four off (ETSI), quiet (-20 dBFS), as 20 ms frames at `rate`. `frame` counts frames
/// since ringing started.
pub fn hold_tone_frame(frame: u64, rate: u32) -> Vec<f32> {
    let n = (rate * PTIME_MS / 1000) as usize;
    let period = 250; // 5 s in 20 ms frames
    if frame % period >= 50 {
        return vec![0.0; n];
    }
    let amplitude = 0.1f32;
    let start = frame * n as u64;
    (0..n)
        .map(|i| {
            let t = (start + i as u64) as f32 / rate as f32;
            amplitude * (2.0 * std::f32::consts::PI * 425.0 * t).sin()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_tone_is_on_one_second_in_five() {
        let on: usize = (0..250)
            .filter(|f| hold_tone_frame(*f, 8000).iter().any(|s| s.abs() > 0.01))
            .count();
        assert_eq!(on, 50);
        assert_eq!(hold_tone_frame(0, 16000).len(), 320);
        let peak = hold_tone_frame(1, 8000)
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((0.09..=0.1).contains(&peak), "{peak}");
    }
}

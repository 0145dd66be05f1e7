//! Delayed offer (RFC 3261 13.2.1, RFC 3264): an INVITE without a body leaves the offer to
//! us. Several trunks call so; refusing them with 488 lost those calls.
//!
//! The 200 OK then carries our offer (every configured codec and telephone-event, as in the
//! INVITEs we send), and the ACK carries the answer. Until the ACK the call's media is an
//! inactive placeholder (nothing is sent); the answer arrives as [`Event::MediaChanged`]
//! before [`Event::CallConfirmed`], so the media side handles it like any other media change.
//! An ACK without a usable answer leaves the session without media: the call is hung up with
//! BYE (13.3.1.4). An offerless re-INVITE works the same way in an established call, except
//! that a missing answer keeps the media as it was.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{CallHandle, CallState, EndReason, Event, SipEndpoint, DTMF_PT};
use crate::media::codec::Codec;
use crate::sip::message::SipMessage;
use crate::sip::sdp::{self, Direction, MediaOffer, Negotiated, SdpError};

impl SipEndpoint {
    /// The offer and media of a call whose INVITE had no offer, until the ACK brings the
    /// answer: our first codec, nothing sent (inactive), no remote address yet.
    pub(super) fn delayed_offer_placeholder(&self, peer_ip: IpAddr) -> (MediaOffer, Negotiated) {
        let codec = self.config.codecs.first().copied().unwrap_or(Codec::Pcmu);
        let nowhere = SocketAddr::new(peer_ip, 0);
        let offer = MediaOffer {
            remote_rtp: nowhere,
            codecs: Vec::new(),
            telephone_event_pt: None,
            direction: Direction::Inactive,
            ptime_ms: None,
            media_lines: Vec::new(),
            audio_index: 0,
            secure: false,
            crypto: Vec::new(),
        };
        let media = Negotiated {
            codec,
            payload_type: codec.default_payload_type(),
            telephone_event_pt: Some(DTMF_PT),
            remote_rtp: nowhere,
            direction: Direction::Inactive,
            ptime_ms: 20,
            on_hold: false,
            srtp: None,
        };
        (offer, media)
    }

    /// The ACK of a 2xx that carried our offer: its body is the answer. Returns false when
    /// the call cannot go on (an initial INVITE's ACK without a usable answer: BYE sent and
    /// the end reported).
    pub(super) fn answer_in_ack(
        &mut self,
        handle: CallHandle,
        ack: &SipMessage,
        now: Instant,
    ) -> bool {
        let Some(call) = self.calls.get_mut(&handle) else {
            return false;
        };
        call.awaiting_answer = false;
        let initial = ack.cseq().map(|c| c.seq) == call.invite.cseq().map(|c| c.seq);
        let answer = if ack.body.is_empty() {
            Err(SdpError::Empty)
        } else {
            sdp::parse_offer(&ack.body)
                .and_then(|a| sdp::negotiate(&a, &self.config.codecs).map(|m| (a, m)))
        };
        match answer {
            Ok((answer, media)) => {
                call.offer = answer;
                let changed = media != call.media;
                call.media = media.clone();
                tracing::info!(
                    call = %handle, codec = %media.codec, remote = %media.remote_rtp, initial,
                    "our offer was answered in the ACK"
                );
                if changed {
                    self.events.push_back(Event::MediaChanged(handle, media));
                }
                true
            }
            Err(e) if initial => {
                tracing::warn!(
                    call = %handle, error = %e,
                    "the ACK carries no usable answer to our offer (delayed offer); the call \
                     has no media and is hung up"
                );
                call.state = CallState::Confirmed;
                call.end_reported = true;
                self.send_bye(handle, now);
                self.events
                    .push_back(Event::CallEnded(handle, EndReason::LocalHangup));
                false
            }
            Err(e) => {
                tracing::warn!(
                    call = %handle, error = %e,
                    "the ACK of our re-INVITE answer carries no usable answer to our offer; \
                     keeping the media as it was"
                );
                true
            }
        }
    }
}

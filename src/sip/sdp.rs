//! SDP offer/answer (RFC 3264 over RFC 4566) for the one audio stream of a call.
//!
//! Callers offer whatever their stack supports: a PBX sends `PCMU PCMA telephone-event`, a
//! softphone opus, speex, G.722 and two telephone-event rates, a WebRTC gateway adds a video
//! line. The gateway speaks only G.711 with RFC 4733 DTMF, so this module reduces an offer to
//! what the media layer needs (where to send RTP, which payload type carries which codec,
//! whether the call is on hold) and writes the answer that tells the caller the same.
//!
//! Parsing and printing are `sdp-types`'; the semantics live here:
//! * static payload types need no `a=rtpmap` (RFC 3551), dynamic ones do, names are
//!   case-insensitive;
//! * the first `m=audio` line with a non-zero port over a transport the call's SRTP mode
//!   accepts (RTP/AVP(F) unless `required`, RTP/SAVP(F) with SDES keys unless `off`, see
//!   [`parse_offer_for`]) is the call's stream, a media-level `c=` wins over the
//!   session-level one;
//! * an RTP/SAVP stream is answered with the first usable `a=crypto` line's tag and suite and
//!   a fresh key of ours (`sip::sdes`), kept across re-INVITEs that keep the far end's key;
//! * the answer keeps the caller's payload type numbers and mirrors its direction, and
//!   [`answer_sdp_for_offer`] keeps one `m=` line per offered one (RFC 3264 section 6).
//!
//! Every byte here comes from the network, so nothing panics on any input: what the gateway
//! cannot use is a typed [`SdpError`] naming the line or field, for the call layer to log and
//! to answer with 488 (or 400).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use sdp_types::{
    Attribute, Connection, Media, MediaType, NetType, Origin, ParserError, RtpMap, Session, Time,
    TransportProto,
};

use crate::media::codec::Codec;
use crate::media::srtp::{MasterKey, SrtpKeys, SrtpMode};
use crate::sip::sdes::{self, OfferedCrypto};

/// Packetization the gateway uses when the caller asks for none it can honour (RFC 3551's
/// default for G.711).
pub const DEFAULT_PTIME_MS: u32 = 20;

/// RFC 4733 telephone events the gateway understands: the DTMF digits 0-9, *, #, A-D and
/// flash.
const TELEPHONE_EVENTS: &str = "0-16";

const TELEPHONE_EVENT: &str = "telephone-event";

/// Why an SDP body cannot be used. All but [`SdpError::Syntax`] and [`SdpError::Empty`] are
/// answered with 488 Not Acceptable Here; those two are a 400 Bad Request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is empty or only whitespace.
    #[error("empty SDP body")]
    Empty,
    /// The body is not SDP; the parser error names the line (1-based) and field.
    #[error("malformed SDP: {0}")]
    Syntax(#[from] ParserError),
    /// No `m=audio` line at all (e.g. a video-only or T.38-only offer).
    #[error("the SDP has no m=audio line")]
    NoAudio,
    /// Every `m=audio` line has port 0, i.e. the audio stream is disabled.
    #[error("every m=audio line is disabled (port 0)")]
    AudioDisabled,
    /// The only usable-looking audio lines use a transport the call does not accept: DTLS
    /// (UDP/TLS/RTP/SAVPF) always, RTP/SAVP when SRTP is off.
    #[error("m=audio transport {0:?} is not accepted (RTP/AVP(F), or RTP/SAVP(F) unless srtp = \"off\")")]
    UnsupportedTransport(String),
    /// Plain RTP offered to a call that requires SRTP (`srtp = "required"`).
    #[error("m=audio transport {0:?}: this gateway requires SRTP (RTP/SAVP with a=crypto)")]
    SrtpRequired(String),
    /// An RTP/SAVP stream whose `a=crypto` lines are all unusable (the reasons, per tag).
    #[error("no usable a=crypto: {0}")]
    NoUsableCrypto(String),
    /// A format on the audio `m=` line is not an RTP payload type number (0-127).
    #[error("m= line #{media}: format {value:?} is not an RTP payload type (0-127)")]
    BadPayloadType {
        /// 1-based index of the `m=` line.
        media: usize,
        /// The offending format token.
        value: String,
    },
    /// Neither the audio media section nor the session has a `c=` line.
    #[error("no c= line for the audio stream (neither media- nor session-level)")]
    MissingConnection,
    /// The `c=` line that applies to the audio stream cannot be sent RTP to.
    #[error("c= address {address:?}: {reason}")]
    BadConnection {
        /// The connection address as written.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An attribute of the audio media section is malformed.
    #[error("m= line #{media}: bad a={name}:{value:?}: {reason}")]
    BadAttribute {
        /// 1-based index of the `m=` line.
        media: usize,
        /// The attribute name (`rtpmap`, `ptime`).
        name: &'static str,
        /// The attribute value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// None of the offered codecs is one the gateway supports.
    #[error("no codec in common with the offer")]
    NoCommonCodec,
}

/// Media direction (RFC 3264 section 5.1), either as offered or as ours in an answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Both ways (the default when no direction attribute is present).
    #[default]
    SendRecv,
    /// The side that wrote it only sends.
    SendOnly,
    /// The side that wrote it only receives.
    RecvOnly,
    /// No media either way.
    Inactive,
}

impl Direction {
    /// The SDP attribute name (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Parses a direction attribute name, case-insensitively.
    pub fn from_attribute(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_str().eq_ignore_ascii_case(name))
    }

    /// The direction seen from the other side: sendonly <-> recvonly.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Whether the side this direction belongs to sends RTP.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side this direction belongs to receives RTP.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The same direction without its receiving half.
    fn without_recv(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
            Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One format of the offered audio `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedCodec {
    /// The RTP payload type.
    pub payload_type: u8,
    /// The gateway's codec for it, if it has one (mono G.711 at 8 kHz).
    pub codec: Option<Codec>,
    /// Encoding name as offered (`a=rtpmap`) or from the RFC 3551 static table; empty for a
    /// dynamic payload type without `a=rtpmap`.
    pub name: String,
    /// Clock rate as offered or from the static table; 0 when unknown.
    pub clock_rate: u32,
}

impl OfferedCodec {
    /// Whether this is RFC 4733 telephone-event at 8 kHz, the only rate the gateway's G.711
    /// streams can carry it at.
    pub fn is_telephone_event_8k(&self) -> bool {
        self.name.eq_ignore_ascii_case(TELEPHONE_EVENT) && self.clock_rate == 8000
    }
}

/// One `m=` line of an offer, kept so that an answer can have one `m=` line per offered one
/// (RFC 3264 section 6), rejecting the others with port 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMedia {
    /// Media type (`audio`, `video`, ...).
    pub media: String,
    /// Transport protocol (`RTP/AVP`, ...).
    pub proto: String,
    /// The format list as written.
    pub fmt: String,
}

/// The audio part of an SDP offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaOffer {
    /// Where the caller wants RTP (an unspecified address means old-style hold).
    pub remote_rtp: SocketAddr,
    /// The formats of the audio `m=` line, in the caller's order of preference.
    pub codecs: Vec<OfferedCodec>,
    /// The payload type of telephone-event/8000, if offered.
    pub telephone_event_pt: Option<u8>,
    /// The caller's direction (media-level attribute, else session-level, else sendrecv).
    pub direction: Direction,
    /// The caller's `a=ptime`, if any.
    pub ptime_ms: Option<u32>,
    /// Every `m=` line of the offer, in order.
    pub media_lines: Vec<OfferedMedia>,
    /// Index into `media_lines` of the audio stream described above.
    pub audio_index: usize,
    /// The audio stream is RTP/SAVP(F): SRTP keyed by one of `crypto`.
    pub secure: bool,
    /// The audio stream's `a=crypto` lines (RFC 4568), in the offerer's order.
    pub crypto: Vec<OfferedCrypto>,
}

/// What offer/answer settled for the call's audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The codec both sides use.
    pub codec: Codec,
    /// Its payload type (the caller's number, also in our answer).
    pub payload_type: u8,
    /// The payload type for RFC 4733 DTMF, if the caller offered telephone-event/8000.
    pub telephone_event_pt: Option<u8>,
    /// Where to send RTP.
    pub remote_rtp: SocketAddr,
    /// Our direction: send RTP only if [`Direction::sends`].
    pub direction: Direction,
    /// Packetization to send at: the caller's `a=ptime` when it is 10-60 ms in steps of 10,
    /// else [`DEFAULT_PTIME_MS`].
    pub ptime_ms: u32,
    /// The caller put the call on hold (sendonly, inactive, or a 0.0.0.0 / `::` address).
    pub on_hold: bool,
    /// SRTP's suite and keys, when the stream is RTP/SAVP (`None`: plain RTP).
    pub srtp: Option<SrtpKeys>,
}

/// Our side of the SDP: where we receive RTP and the `o=` line's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    /// The address the caller sends RTP to (also written in `o=`).
    pub address: IpAddr,
    /// Our RTP port.
    pub rtp_port: u16,
    /// `o=` session id, fixed for the dialog.
    pub session_id: u64,
    /// `o=` session version: increment it for every new SDP in the dialog (RFC 3264 section 8).
    pub session_version: u64,
}

/// Parses an offer (or an answer to our offer) over plain RTP and extracts its audio stream;
/// [`parse_offer_for`] with SRTP off.
pub fn parse_offer(body: &[u8]) -> Result<MediaOffer, SdpError> {
    parse_offer_for(body, SrtpMode::Off)
}

/// Parses an offer and extracts the first audio stream whose transport `srtp` accepts: plain
/// RTP/AVP(F) unless `Required`, RTP/SAVP(F) unless `Off`.
pub fn parse_offer_for(body: &[u8], srtp: SrtpMode) -> Result<MediaOffer, SdpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(SdpError::Empty);
    }
    let session = Session::parse(body)?;
    let (audio_index, media) = select_audio(&session.medias, srtp)?;
    let media_no = audio_index + 1;

    let connection = media
        .connections
        .first()
        .or(session.connection.as_ref())
        .ok_or(SdpError::MissingConnection)?;
    let ip = connection_ip(connection)?;

    let codecs = offered_codecs(media_no, media)?;
    let telephone_event_pt = codecs
        .iter()
        .find(|c| c.is_telephone_event_8k())
        .map(|c| c.payload_type);
    let direction = direction_of(&media.attributes)
        .or_else(|| direction_of(&session.attributes))
        .unwrap_or_default();
    let ptime_ms = ptime_of(media_no, media)?;
    let secure = is_secure(&media.proto);
    let crypto = if secure {
        offered_crypto(media_no, media)?
    } else {
        Vec::new()
    };

    let media_lines = session
        .medias
        .iter()
        .map(|m| OfferedMedia {
            media: m.media.clone(),
            proto: m.proto.clone(),
            fmt: m.fmt.clone(),
        })
        .collect();

    Ok(MediaOffer {
        remote_rtp: SocketAddr::new(ip, media.port),
        codecs,
        telephone_event_pt,
        direction,
        ptime_ms,
        media_lines,
        audio_index,
        secure,
        crypto,
    })
}

/// Picks the caller's most preferred codec among `supported` (order of the `m=` line
/// formats), keeps telephone-event/8000 if offered and mirrors the direction (sendonly ->
/// recvonly, recvonly -> sendonly, inactive -> inactive). `a=sendonly`, `a=inactive` or an
/// unspecified `c=` address (RFC 2543 hold) mean hold; with such an address we never send.
///
/// An RTP/SAVP offer gets SDES keys: the first usable `a=crypto` line and a fresh key of
/// ours (see [`negotiate_with`]).
///
/// [`SdpError::NoCommonCodec`] and [`SdpError::NoUsableCrypto`] are answered with 488 Not
/// Acceptable Here.
pub fn negotiate(offer: &MediaOffer, supported: &[Codec]) -> Result<Negotiated, SdpError> {
    negotiate_with(offer, supported, None)
}

/// [`negotiate`] for a new offer in a dialog whose SRTP keys are `current`: when the offer
/// keeps the far end's suite and key our key stays too (the crypto contexts, their rollover
/// counters and replay windows carry on); a new key from the far end is a rekey, answered
/// with a new key of ours (RFC 4568 section 7.1.4).
pub fn negotiate_with(
    offer: &MediaOffer,
    supported: &[Codec],
    current: Option<&SrtpKeys>,
) -> Result<Negotiated, SdpError> {
    let srtp = if offer.secure {
        let (tag, suite, remote) = sdes::choose(&offer.crypto).map_err(SdpError::NoUsableCrypto)?;
        let local = match current {
            Some(c) if c.suite == suite && c.remote == remote => c.local.clone(),
            _ => MasterKey::random(),
        };
        Some(SrtpKeys {
            suite,
            tag,
            local,
            remote,
        })
    } else {
        None
    };
    let (codec, payload_type) = offer
        .codecs
        .iter()
        .find_map(|offered| {
            offered
                .codec
                .filter(|c| supported.contains(c))
                .map(|c| (c, offered.payload_type))
        })
        .ok_or(SdpError::NoCommonCodec)?;

    // Old-style hold: the caller cannot receive at 0.0.0.0, whatever its attribute says.
    let remote = if offer.remote_rtp.ip().is_unspecified() {
        offer.direction.without_recv()
    } else {
        offer.direction
    };
    let ptime_ms = offer
        .ptime_ms
        .filter(|p| (10..=60).contains(p) && p.is_multiple_of(10))
        .unwrap_or(DEFAULT_PTIME_MS);

    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event_pt: offer.telephone_event_pt,
        remote_rtp: offer.remote_rtp,
        direction: remote.reverse(),
        ptime_ms,
        on_hold: matches!(remote, Direction::SendOnly | Direction::Inactive),
        srtp,
    })
}

/// The answer for a single-stream offer: `v, o, s, c, t`, `m=audio <port> RTP/AVP <pt>
/// [<te>]`, `a=rtpmap` for both, `a=fmtp:<te> 0-16`, `a=ptime` and our direction, CRLF lines.
///
/// When the offer had more than one `m=` line use [`answer_sdp_for_offer`]: RFC 3264 requires
/// the answer to have as many.
pub fn answer_sdp(local: &LocalMedia, negotiated: &Negotiated) -> String {
    let mut session = local_session(local);
    session.add_media(negotiated_media(local, negotiated));
    session.to_string()
}

/// Like [`answer_sdp`], but with one `m=` line per `m=` line of `offer`, in the same order:
/// the audio stream at `offer.audio_index` (with the offer's transport, RTP/AVP or
/// RTP/AVPF), every other one rejected with port 0.
pub fn answer_sdp_for_offer(
    local: &LocalMedia,
    offer: &MediaOffer,
    negotiated: &Negotiated,
) -> String {
    let mut session = local_session(local);
    if offer.audio_index >= offer.media_lines.len() {
        session.add_media(negotiated_media(local, negotiated));
    }
    for (i, line) in offer.media_lines.iter().enumerate() {
        if i == offer.audio_index {
            // The answer keeps the offer's profile (RTP/AVPF stays RTP/AVPF, RFC 3264 6.1).
            let mut media = negotiated_media(local, negotiated);
            media.proto = line.proto.clone();
            session.add_media(media);
        } else {
            // RFC 3264 section 6: a rejected stream keeps its media type, transport and at
            // least one format, with port 0.
            let fmt = if line.fmt.trim().is_empty() {
                "0"
            } else {
                line.fmt.as_str()
            };
            let mut media = Media::new(MediaType::Audio, 0, TransportProto::RtpAvp, fmt);
            media.media = line.media.clone();
            media.proto = line.proto.clone();
            session.add_media(media);
        }
    }
    session.to_string()
}

/// An offer for our own re-INVITEs and outbound calls: the codecs in the given order (all of
/// [`Codec::ALL`] when empty) with their static payload types, telephone-event at
/// `telephone_event_pt` (left out if that number is taken by a codec), `a=ptime:20`,
/// sendrecv.
pub fn offer_sdp(local: &LocalMedia, codecs: &[Codec], telephone_event_pt: u8) -> String {
    let codecs = if codecs.is_empty() {
        &Codec::ALL[..]
    } else {
        codecs
    };
    let mut formats: Vec<(u8, Codec)> = Vec::new();
    for codec in codecs {
        let pt = codec.default_payload_type();
        if !formats.iter().any(|(p, _)| *p == pt) {
            formats.push((pt, *codec));
        }
    }
    let te = (!formats.iter().any(|(p, _)| *p == telephone_event_pt)).then_some(telephone_event_pt);

    let mut session = local_session(local);
    session.add_media(audio_media(
        local.rtp_port,
        &formats,
        te,
        DEFAULT_PTIME_MS,
        Direction::SendRecv,
    ));
    session.to_string()
}

fn local_session(local: &LocalMedia) -> Session {
    let origin = Origin::with_ip_addr(local.session_id, local.session_version, local.address);
    let mut session = Session::new(origin, "voicebot");
    session.set_connection(Connection::from_ip_addr(local.address));
    session.add_time(Time::new(0, 0));
    session
}

fn negotiated_media(local: &LocalMedia, negotiated: &Negotiated) -> Media {
    let codec = negotiated.codec;
    let mut media = audio_media(
        local.rtp_port,
        &[(negotiated.payload_type, codec)],
        negotiated.telephone_event_pt,
        negotiated.ptime_ms,
        negotiated.direction,
    );
    if let Some(keys) = &negotiated.srtp {
        media.proto = "RTP/SAVP".to_owned();
        media.add_attribute(Attribute::with_value(
            "crypto",
            sdes::crypto_value(keys.tag, keys.suite, &keys.local),
        ));
    }
    media
}

fn audio_media(
    port: u16,
    formats: &[(u8, Codec)],
    telephone_event_pt: Option<u8>,
    ptime_ms: u32,
    direction: Direction,
) -> Media {
    let fmt = formats
        .iter()
        .map(|(pt, _)| *pt)
        .chain(telephone_event_pt)
        .map(|pt| pt.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut media = Media::new(MediaType::Audio, port, TransportProto::RtpAvp, fmt);
    for (pt, codec) in formats {
        let rtpmap = match codec.rtpmap_channels() {
            Some(n) => format!("{pt} {}/{}/{n}", codec.encoding_name(), codec.clock_rate()),
            None => format!("{pt} {}/{}", codec.encoding_name(), codec.clock_rate()),
        };
        media.add_attribute(Attribute::with_value("rtpmap", rtpmap));
        if let Some(fmtp) = codec.fmtp() {
            media.add_attribute(Attribute::with_value("fmtp", format!("{pt} {fmtp}")));
        }
    }
    if let Some(te) = telephone_event_pt {
        media.add_attribute(rtpmap(te, TELEPHONE_EVENT, 8000));
        media.add_attribute(Attribute::with_value(
            "fmtp",
            format!("{te} {TELEPHONE_EVENTS}"),
        ));
    }
    media.add_attribute(Attribute::with_value("ptime", ptime_ms));
    media.add_attribute(Attribute::new(direction.as_str()));
    media
}

fn rtpmap(pt: u8, name: &str, clock_rate: u32) -> Attribute {
    Attribute::with_value("rtpmap", RtpMap::new(pt, name, clock_rate))
}

fn is_plain(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")
}

fn is_secure(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/SAVP") || proto.eq_ignore_ascii_case("RTP/SAVPF")
}

/// The first `m=audio` line with a non-zero port over a transport `srtp` accepts, and its
/// index.
fn select_audio(medias: &[Media], srtp: SrtpMode) -> Result<(usize, &Media), SdpError> {
    let mut saw_audio = false;
    let mut other_transport: Option<&str> = None;
    for (i, media) in medias.iter().enumerate() {
        if !media.media.eq_ignore_ascii_case("audio") {
            continue;
        }
        saw_audio = true;
        if media.port == 0 {
            continue;
        }
        let proto = media.proto.as_str();
        let accepted = match srtp {
            SrtpMode::Off => is_plain(proto),
            SrtpMode::Optional => is_plain(proto) || is_secure(proto),
            SrtpMode::Required => is_secure(proto),
        };
        if accepted {
            return Ok((i, media));
        }
        other_transport.get_or_insert(proto);
    }
    Err(match other_transport {
        Some(proto) if srtp == SrtpMode::Required && is_plain(proto) => {
            SdpError::SrtpRequired(proto.to_owned())
        }
        Some(proto) => SdpError::UnsupportedTransport(proto.to_owned()),
        None if saw_audio => SdpError::AudioDisabled,
        None => SdpError::NoAudio,
    })
}

/// The audio stream's `a=crypto` lines; a line without even a tag and a suite is a syntax
/// error (400), an unusable one is kept with its reason.
fn offered_crypto(media_no: usize, media: &Media) -> Result<Vec<OfferedCrypto>, SdpError> {
    media
        .get_attribute_values("crypto")
        .map(|value| {
            let value = value.unwrap_or_default();
            sdes::parse_crypto(value).map_err(|reason| SdpError::BadAttribute {
                media: media_no,
                name: "crypto",
                // The value holds a key: never echo it.
                value: String::from("<redacted>"),
                reason,
            })
        })
        .collect()
}

fn connection_ip(connection: &Connection) -> Result<IpAddr, SdpError> {
    let bad = |reason: String| SdpError::BadConnection {
        address: connection.connection_address.clone(),
        reason,
    };
    if connection.nettype != NetType::In {
        return Err(bad(format!(
            "network type {} is not IN",
            connection.nettype
        )));
    }
    let address = connection.try_address().map_err(|e| bad(e.to_string()))?;
    if address.ip.is_multicast() {
        return Err(bad("multicast is not supported".to_owned()));
    }
    Ok(address.ip)
}

fn offered_codecs(media_no: usize, media: &Media) -> Result<Vec<OfferedCodec>, SdpError> {
    let rtpmaps = media
        .get_attribute_values("rtpmap")
        .map(|value| {
            let value = value.unwrap_or_default();
            value
                .trim()
                .parse::<RtpMap>()
                .map_err(|e| SdpError::BadAttribute {
                    media: media_no,
                    name: "rtpmap",
                    value: value.to_owned(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut codecs: Vec<OfferedCodec> = Vec::new();
    for token in media.fmt.split_ascii_whitespace() {
        let payload_type = token
            .parse::<u8>()
            .ok()
            .filter(|pt| *pt <= 127)
            .ok_or_else(|| SdpError::BadPayloadType {
                media: media_no,
                value: token.to_owned(),
            })?;
        if codecs.iter().any(|c| c.payload_type == payload_type) {
            continue;
        }
        let offered = match rtpmaps.iter().find(|m| m.payload_type == payload_type) {
            Some(map) => OfferedCodec {
                payload_type,
                codec: Codec::from_rtpmap(
                    map.encoding_name.trim(),
                    map.clock_rate,
                    map.encoding_params.as_deref(),
                ),
                name: map.encoding_name.clone(),
                clock_rate: map.clock_rate,
            },
            None => static_codec(payload_type),
        };
        codecs.push(offered);
    }
    Ok(codecs)
}

/// A payload type without `a=rtpmap`: RFC 3551's static audio table, else unknown.
fn static_codec(payload_type: u8) -> OfferedCodec {
    let (name, clock_rate) = match payload_type {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        5 => ("DVI4", 8000),
        6 => ("DVI4", 16000),
        7 => ("LPC", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        10 | 11 => ("L16", 44100),
        12 => ("QCELP", 8000),
        13 => ("CN", 8000),
        14 => ("MPA", 90000),
        15 => ("G728", 8000),
        16 => ("DVI4", 11025),
        17 => ("DVI4", 22050),
        18 => ("G729", 8000),
        _ => ("", 0),
    };
    OfferedCodec {
        payload_type,
        codec: Codec::from_static_payload_type(payload_type),
        name: name.to_owned(),
        clock_rate,
    }
}

fn direction_of(attributes: &[Attribute]) -> Option<Direction> {
    attributes
        .iter()
        .filter(|a| a.value.is_none())
        .find_map(|a| Direction::from_attribute(&a.attribute))
}

fn ptime_of(media_no: usize, media: &Media) -> Result<Option<u32>, SdpError> {
    let Some(value) = media.get_first_attribute_value("ptime") else {
        return Ok(None);
    };
    let value = value.unwrap_or_default();
    match value.trim().parse::<u32>() {
        Ok(ptime) if ptime > 0 => Ok(Some(ptime)),
        _ => Err(SdpError::BadAttribute {
            media: media_no,
            name: "ptime",
            value: value.to_owned(),
            reason: "not a positive whole number of milliseconds".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// What SIPp's uac scenario sends.
    const SIPP_OFFER: &str = "v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.1.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.1.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-11,16\r\n";

    /// A pjsua2 softphone offer: opus first, two telephone-event rates, media-level c=.
    const PJSUA_OFFER: &str = "v=0\r\n\
        o=- 3913633393 3913633393 IN IP4 192.168.1.20\r\n\
        s=pjmedia\r\n\
        b=AS:117\r\n\
        t=0 0\r\n\
        a=X-nat:0\r\n\
        m=audio 4000 RTP/AVP 96 97 98 99 3 0 8 9 120 121 122\r\n\
        c=IN IP4 192.168.1.20\r\n\
        b=TIAS:96000\r\n\
        a=rtcp:4001 IN IP4 192.168.1.20\r\n\
        a=sendrecv\r\n\
        a=rtpmap:96 opus/48000/2\r\n\
        a=fmtp:96 useinbandfec=1\r\n\
        a=rtpmap:97 speex/16000\r\n\
        a=rtpmap:98 speex/8000\r\n\
        a=rtpmap:99 speex/32000\r\n\
        a=rtpmap:3 GSM/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:120 telephone-event/16000\r\n\
        a=fmtp:120 0-16\r\n\
        a=rtpmap:121 telephone-event/8000\r\n\
        a=fmtp:121 0-16\r\n\
        a=rtpmap:122 telephone-event/32000\r\n\
        a=ssrc:1298449112 cname:5a6b0d6c1b8e4c1b\r\n";

    fn local() -> LocalMedia {
        LocalMedia {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            rtp_port: 20000,
            session_id: 42,
            session_version: 1,
        }
    }

    fn sdp(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\r\n")).collect()
    }

    fn offer_with_media(media: &[&str]) -> String {
        let mut lines = vec![
            "v=0",
            "o=- 1 1 IN IP4 10.0.0.1",
            "s=-",
            "c=IN IP4 10.0.0.1",
            "t=0 0",
        ];
        lines.extend_from_slice(media);
        sdp(&lines)
    }

    #[test]
    fn sipp_offer() {
        let offer = parse_offer(SIPP_OFFER.as_bytes()).unwrap();
        assert_eq!(offer.remote_rtp, "127.0.1.1:6000".parse().unwrap());
        assert_eq!(offer.telephone_event_pt, Some(101));
        assert_eq!(offer.direction, Direction::SendRecv);
        assert_eq!(offer.ptime_ms, None);
        assert_eq!(offer.codecs.len(), 2);
        assert_eq!(offer.codecs[0].codec, Some(Codec::Pcmu));
        assert_eq!(offer.codecs[1].name, "telephone-event");

        let n = negotiate(&offer, &Codec::ALL).unwrap();
        assert_eq!(
            n,
            Negotiated {
                codec: Codec::Pcmu,
                payload_type: 0,
                telephone_event_pt: Some(101),
                remote_rtp: "127.0.1.1:6000".parse().unwrap(),
                direction: Direction::SendRecv,
                ptime_ms: 20,
                on_hold: false,
                srtp: None,
            }
        );

        let answer = answer_sdp(&local(), &n);
        assert_eq!(
            answer,
            "v=0\r\n\
             o=- 42 1 IN IP4 192.0.2.10\r\n\
             s=voicebot\r\n\
             c=IN IP4 192.0.2.10\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
    }

    #[test]
    fn pjsua_offer_picks_opus_first_then_pcmu_and_8k_telephone_event() {
        let offer = parse_offer(PJSUA_OFFER.as_bytes()).unwrap();
        assert_eq!(offer.remote_rtp, "192.168.1.20:4000".parse().unwrap());
        assert_eq!(offer.codecs.len(), 11);
        assert_eq!(offer.codecs[0].name, "opus");
        assert_eq!(offer.codecs[0].clock_rate, 48000);
        assert_eq!(offer.codecs[0].codec, Some(Codec::Opus));
        // telephone-event/16000 comes first but the 8 kHz one is what we negotiate.
        assert_eq!(offer.telephone_event_pt, Some(121));

        // The caller prefers Opus, on its dynamic payload type.
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Opus, 96));
        assert_eq!(n.telephone_event_pt, Some(121));
        let answer = answer_sdp(&local(), &n);
        assert!(
            answer.contains("m=audio 20000 RTP/AVP 96 121\r\n"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:96 opus/48000/2\r\n"), "{answer}");
        assert!(answer.contains("a=fmtp:96 useinbandfec=1"), "{answer}");

        // Without Opus on our side, the caller's next choice we support: PCMU.
        let n = negotiate(&offer, &[Codec::Pcmu, Codec::Pcma]).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));

        // The caller's order wins over ours.
        let n = negotiate(&offer, &[Codec::Pcma, Codec::Pcmu]).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        let n = negotiate(&offer, &[Codec::Pcma]).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));

        let answer = answer_sdp(&local(), &n);
        assert!(
            answer.contains("m=audio 20000 RTP/AVP 8 121\r\n"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:121 telephone-event/8000\r\n"));
        assert!(answer.contains("a=fmtp:121 0-16\r\n"));
    }

    #[test]
    fn alaw_only_static_payload_type_without_rtpmap() {
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 8", "a=ptime:30"]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.codecs[0].name, "PCMA");
        assert_eq!(offer.telephone_event_pt, None);
        assert_eq!(offer.ptime_ms, Some(30));
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        assert_eq!((n.codec, n.payload_type, n.ptime_ms), (Codec::Pcma, 8, 30));
        assert_eq!(n.telephone_event_pt, None);
        let answer = answer_sdp(&local(), &n);
        assert!(answer.contains("m=audio 20000 RTP/AVP 8\r\n"), "{answer}");
        assert!(answer.contains("a=ptime:30\r\n"));
        assert!(!answer.contains("telephone-event"));
    }

    #[test]
    fn unusual_ptime_falls_back_to_default() {
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 0", "a=ptime:25"]);
        let n = negotiate(&parse_offer(body.as_bytes()).unwrap(), &Codec::ALL).unwrap();
        assert_eq!(n.ptime_ms, DEFAULT_PTIME_MS);
    }

    #[test]
    fn dynamic_payload_type_names_are_case_insensitive() {
        let body = offer_with_media(&[
            "m=audio 7078 RTP/AVP 112 110",
            "a=rtpmap:112 pcmu/8000/1",
            "a=rtpmap:110 Telephone-Event/8000",
        ]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.telephone_event_pt, Some(110));
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 112));
        assert!(answer_sdp(&local(), &n).contains("a=rtpmap:112 PCMU/8000\r\n"));
    }

    #[test]
    fn stereo_or_wrong_rate_g711_is_not_our_codec() {
        let body = offer_with_media(&[
            "m=audio 7078 RTP/AVP 96 97",
            "a=rtpmap:96 PCMU/8000/2",
            "a=rtpmap:97 PCMA/16000",
        ]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert!(offer.codecs.iter().all(|c| c.codec.is_none()));
        assert_eq!(negotiate(&offer, &Codec::ALL), Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn no_common_codec() {
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 18", "a=rtpmap:18 G729/8000"]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.codecs[0].name, "G729");
        assert_eq!(negotiate(&offer, &Codec::ALL), Err(SdpError::NoCommonCodec));
        // Nor when the gateway is configured with fewer codecs than offered.
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 0"]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(
            negotiate(&offer, &[Codec::Pcma]),
            Err(SdpError::NoCommonCodec)
        );
        assert_eq!(negotiate(&offer, &[]), Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn hold_with_sendonly() {
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 0 101", "a=sendonly"]);
        let n = negotiate(&parse_offer(body.as_bytes()).unwrap(), &Codec::ALL).unwrap();
        assert!(n.on_hold);
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(!n.direction.sends());
        assert!(answer_sdp(&local(), &n).ends_with("a=recvonly\r\n"));
    }

    #[test]
    fn hold_with_inactive_at_session_level() {
        let body = sdp(&[
            "v=0",
            "o=- 1 2 IN IP4 10.0.0.1",
            "s=-",
            "c=IN IP4 10.0.0.1",
            "t=0 0",
            "a=inactive",
            "m=audio 7078 RTP/AVP 0",
        ]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.direction, Direction::Inactive);
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        assert!(n.on_hold);
        assert_eq!(n.direction, Direction::Inactive);
        assert!(answer_sdp(&local(), &n).ends_with("a=inactive\r\n"));
    }

    #[test]
    fn media_level_direction_wins_over_session_level() {
        let body = sdp(&[
            "v=0",
            "s=-",
            "c=IN IP4 10.0.0.1",
            "t=0 0",
            "a=inactive",
            "m=audio 7078 RTP/AVP 0",
            "a=sendrecv",
        ]);
        let n = negotiate(&parse_offer(body.as_bytes()).unwrap(), &Codec::ALL).unwrap();
        assert!(!n.on_hold);
        assert_eq!(n.direction, Direction::SendRecv);
    }

    #[test]
    fn recvonly_offer_is_not_hold() {
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 0", "a=recvonly"]);
        let n = negotiate(&parse_offer(body.as_bytes()).unwrap(), &Codec::ALL).unwrap();
        assert!(!n.on_hold);
        assert_eq!(n.direction, Direction::SendOnly);
    }

    #[test]
    fn hold_with_zero_address() {
        let body = sdp(&[
            "v=0",
            "o=- 1 2 IN IP4 10.0.0.1",
            "s=-",
            "c=IN IP4 0.0.0.0",
            "t=0 0",
            "m=audio 7078 RTP/AVP 0",
        ]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.direction, Direction::SendRecv);
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        assert!(n.on_hold);
        assert!(!n.direction.sends());
        assert_eq!(n.direction, Direction::RecvOnly);
        assert_eq!(n.remote_rtp.ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));

        // Zero address and inactive: nothing either way.
        let body = body.replace(
            "m=audio 7078 RTP/AVP 0\r\n",
            "m=audio 7078 RTP/AVP 0\r\na=inactive\r\n",
        );
        let n = negotiate(&parse_offer(body.as_bytes()).unwrap(), &Codec::ALL).unwrap();
        assert!(n.on_hold);
        assert_eq!(n.direction, Direction::Inactive);
    }

    #[test]
    fn media_level_connection_wins_and_ipv6() {
        let body = sdp(&[
            "v=0",
            "o=- 1 2 IN IP6 2001:db8::1",
            "s=-",
            "c=IN IP4 10.0.0.1",
            "t=0 0",
            "m=audio 7078 RTP/AVP 0",
            "c=IN IP6 2001:db8::2",
        ]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.remote_rtp, "[2001:db8::2]:7078".parse().unwrap());

        let local6 = LocalMedia {
            address: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..local()
        };
        let answer = answer_sdp(&local6, &negotiate(&offer, &Codec::ALL).unwrap());
        assert!(answer.contains("o=- 42 1 IN IP6 ::1\r\n"), "{answer}");
        assert!(answer.contains("c=IN IP6 ::1\r\n"));
        let back = parse_offer(answer.as_bytes()).unwrap();
        assert_eq!(back.remote_rtp, "[::1]:20000".parse().unwrap());
    }

    #[test]
    fn first_enabled_audio_line_is_used_and_the_answer_keeps_the_layout() {
        let body = offer_with_media(&[
            "m=video 9000 RTP/AVP 96",
            "a=rtpmap:96 H264/90000",
            "m=audio 0 RTP/AVP 0",
            "m=audio 7000 RTP/SAVP 0",
            "m=audio 7078 RTP/AVP 8 0",
            "m=audio 7080 RTP/AVP 0",
        ]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.audio_index, 3);
        assert_eq!(offer.media_lines.len(), 5);
        assert_eq!(offer.remote_rtp.port(), 7078);
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        assert_eq!(n.codec, Codec::Pcma);

        let answer = answer_sdp_for_offer(&local(), &offer, &n);
        let m_lines: Vec<&str> = answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            [
                "m=video 0 RTP/AVP 96",
                "m=audio 0 RTP/AVP 0",
                "m=audio 0 RTP/SAVP 0",
                "m=audio 20000 RTP/AVP 8",
                "m=audio 0 RTP/AVP 0",
            ]
        );
        let back = Session::parse(answer.as_bytes()).unwrap();
        assert_eq!(back.medias.len(), 5);
        // Our own parser finds the same stream in the answer.
        assert_eq!(parse_offer(answer.as_bytes()).unwrap().audio_index, 3);
    }

    #[test]
    fn avpf_offer_is_answered_in_kind() {
        let body = offer_with_media(&["m=audio 7078 RTP/AVPF 0"]);
        let offer = parse_offer(body.as_bytes()).unwrap();
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        let answer = answer_sdp_for_offer(&local(), &offer, &n);
        assert!(answer.contains("m=audio 20000 RTP/AVPF 0\r\n"), "{answer}");
    }

    #[test]
    fn disabled_missing_or_secure_audio_is_rejected() {
        let only_zero = offer_with_media(&["m=audio 0 RTP/AVP 0"]);
        assert_eq!(
            parse_offer(only_zero.as_bytes()),
            Err(SdpError::AudioDisabled)
        );

        let video = offer_with_media(&["m=video 9000 RTP/AVP 96"]);
        assert_eq!(parse_offer(video.as_bytes()), Err(SdpError::NoAudio));
        let no_media = offer_with_media(&[]);
        assert_eq!(parse_offer(no_media.as_bytes()), Err(SdpError::NoAudio));

        let srtp = offer_with_media(&["m=audio 0 RTP/AVP 0", "m=audio 7000 RTP/SAVP 0"]);
        assert_eq!(
            parse_offer(srtp.as_bytes()),
            Err(SdpError::UnsupportedTransport("RTP/SAVP".into()))
        );
    }

    /// A pjsua2 offer with `srtpUse` mandatory: two suites, the 80-bit one first.
    const SAVP_OFFER: &str = "v=0\r\n\
        o=- 3913633393 3913633393 IN IP4 127.0.0.1\r\n\
        s=pjmedia\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 4000 RTP/SAVP 0 8 101\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=sendrecv\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\n\
        a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd|2^20\r\n";

    #[test]
    fn savp_offer_is_answered_with_a_fresh_key_under_the_same_tag() {
        let offer = parse_offer_for(SAVP_OFFER.as_bytes(), SrtpMode::Optional).unwrap();
        assert!(offer.secure);
        assert_eq!(offer.crypto.len(), 2);
        let n = negotiate(&offer, &Codec::ALL).unwrap();
        let keys = n.srtp.clone().unwrap();
        assert_eq!(keys.tag, 1);
        assert_eq!(
            keys.suite,
            crate::media::srtp::SrtpSuite::AesCm128HmacSha1_80
        );
        assert_eq!(
            keys.remote.as_bytes(),
            (0..30).collect::<Vec<u8>>().as_slice()
        );
        assert_ne!(keys.local, keys.remote);

        let answer = answer_sdp_for_offer(&local(), &offer, &n);
        assert!(
            answer.contains("m=audio 20000 RTP/SAVP 0 101\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{answer}"
        );
        assert!(
            !answer.contains("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"),
            "never echo their key"
        );
        assert_eq!(answer.matches("a=crypto").count(), 1);
        // Our answer, read as an offer, carries our key.
        let back = parse_offer_for(answer.as_bytes(), SrtpMode::Required).unwrap();
        let ours = negotiate(&back, &Codec::ALL).unwrap().srtp.unwrap();
        assert_eq!(ours.remote, keys.local);

        // A second call gets another key.
        let other = negotiate(&offer, &Codec::ALL).unwrap().srtp.unwrap();
        assert_ne!(other.local, keys.local);
        // No key in any Debug output.
        assert!(!format!("{n:?}{offer:?}").contains("[0, 1, 2"));
    }

    #[test]
    fn reinvite_keeps_our_key_unless_theirs_changes() {
        let offer = parse_offer_for(SAVP_OFFER.as_bytes(), SrtpMode::Optional).unwrap();
        let first = negotiate(&offer, &Codec::ALL).unwrap().srtp.unwrap();
        let same = negotiate_with(&offer, &Codec::ALL, Some(&first)).unwrap();
        assert_eq!(same.srtp.as_ref(), Some(&first));

        let rekeyed_body = SAVP_OFFER.replace(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:HR0dHR0dHR0dHR0dHR0dHR0dHR0dHR0dHR0dHR0d",
        );
        let rekeyed = parse_offer_for(rekeyed_body.as_bytes(), SrtpMode::Optional).unwrap();
        let new = negotiate_with(&rekeyed, &Codec::ALL, Some(&first))
            .unwrap()
            .srtp
            .unwrap();
        assert_ne!(new.remote, first.remote);
        assert_ne!(
            new.local, first.local,
            "a new key of theirs gets a new key of ours"
        );
    }

    #[test]
    fn srtp_modes_pick_and_refuse_transports() {
        let plain = offer_with_media(&["m=audio 7000 RTP/AVP 0"]);
        let secure = SAVP_OFFER;
        // off: as before, SAVP is refused.
        assert_eq!(
            parse_offer_for(secure.as_bytes(), SrtpMode::Off),
            Err(SdpError::UnsupportedTransport("RTP/SAVP".into()))
        );
        assert!(
            !parse_offer_for(plain.as_bytes(), SrtpMode::Off)
                .unwrap()
                .secure
        );
        // optional: both, each in kind.
        let o = parse_offer_for(plain.as_bytes(), SrtpMode::Optional).unwrap();
        assert!(negotiate(&o, &Codec::ALL).unwrap().srtp.is_none());
        assert!(
            !answer_sdp_for_offer(&local(), &o, &negotiate(&o, &Codec::ALL).unwrap())
                .contains("crypto")
        );
        // required: plain is refused.
        assert_eq!(
            parse_offer_for(plain.as_bytes(), SrtpMode::Required),
            Err(SdpError::SrtpRequired("RTP/AVP".into()))
        );
        assert!(
            parse_offer_for(secure.as_bytes(), SrtpMode::Required)
                .unwrap()
                .secure
        );
        // Two streams: the first one the mode accepts.
        let both = offer_with_media(&[
            "m=audio 7000 RTP/SAVP 0",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
            "m=audio 7002 RTP/AVP 0",
        ]);
        assert_eq!(
            parse_offer_for(both.as_bytes(), SrtpMode::Off)
                .unwrap()
                .audio_index,
            1
        );
        assert_eq!(
            parse_offer_for(both.as_bytes(), SrtpMode::Optional)
                .unwrap()
                .audio_index,
            0
        );
        // DTLS-SRTP is never accepted.
        let dtls = offer_with_media(&["m=audio 7000 UDP/TLS/RTP/SAVPF 0"]);
        assert_eq!(
            parse_offer_for(dtls.as_bytes(), SrtpMode::Optional),
            Err(SdpError::UnsupportedTransport("UDP/TLS/RTP/SAVPF".into()))
        );
    }

    #[test]
    fn savp_without_a_usable_crypto_line_is_refused_with_reasons() {
        let no_crypto = offer_with_media(&["m=audio 7000 RTP/SAVP 0", "a=fingerprint:sha-256 AB"]);
        let o = parse_offer_for(no_crypto.as_bytes(), SrtpMode::Optional).unwrap();
        assert!(matches!(
            negotiate(&o, &Codec::ALL),
            Err(SdpError::NoUsableCrypto(_))
        ));

        let mki = offer_with_media(&[
            "m=audio 7000 RTP/SAVP 0",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd|2^20|1:32",
            "a=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
        ]);
        let o = parse_offer_for(mki.as_bytes(), SrtpMode::Optional).unwrap();
        let err = negotiate(&o, &Codec::ALL).unwrap_err().to_string();
        assert!(err.contains("tag 1: an MKI is not supported"), "{err}");
        assert!(
            err.contains("tag 2: suite AES_256_CM_HMAC_SHA1_80"),
            "{err}"
        );
        assert!(!err.contains("AAECAwQF"), "{err}");

        let broken = offer_with_media(&["m=audio 7000 RTP/SAVP 0", "a=crypto:x"]);
        let err = parse_offer_for(broken.as_bytes(), SrtpMode::Optional).unwrap_err();
        assert!(
            matches!(err, SdpError::BadAttribute { name: "crypto", .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_a_typed_error_naming_the_problem() {
        assert_eq!(parse_offer(b""), Err(SdpError::Empty));
        assert_eq!(parse_offer(b" \r\n"), Err(SdpError::Empty));
        assert!(matches!(
            parse_offer(b"hello world"),
            Err(SdpError::Syntax(_))
        ));
        assert_eq!(
            parse_offer(b"v=1\r\n"),
            Err(SdpError::Syntax(ParserError::InvalidVersion(
                1,
                b"1".to_vec()
            )))
        );
        // A broken m= port names line 6.
        let body = offer_with_media(&["m=audio 70x78 RTP/AVP 0"]);
        let err = parse_offer(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            SdpError::Syntax(ParserError::InvalidFieldFormat(6, "Media port"))
        );
        assert!(err.to_string().contains("line 6"), "{err}");

        let body = offer_with_media(&["m=audio 7078 RTP/AVP 0 abc"]);
        assert_eq!(
            parse_offer(body.as_bytes()),
            Err(SdpError::BadPayloadType {
                media: 1,
                value: "abc".into()
            })
        );
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 128"]);
        assert!(matches!(
            parse_offer(body.as_bytes()),
            Err(SdpError::BadPayloadType { .. })
        ));

        let body = offer_with_media(&["m=audio 7078 RTP/AVP 96", "a=rtpmap:96 opus"]);
        assert!(matches!(
            parse_offer(body.as_bytes()),
            Err(SdpError::BadAttribute {
                name: "rtpmap",
                media: 1,
                ..
            })
        ));
        let body = offer_with_media(&["m=audio 7078 RTP/AVP 0", "a=ptime:abc"]);
        assert!(matches!(
            parse_offer(body.as_bytes()),
            Err(SdpError::BadAttribute { name: "ptime", .. })
        ));

        let no_c = sdp(&["v=0", "s=-", "t=0 0", "m=audio 7078 RTP/AVP 0"]);
        assert_eq!(
            parse_offer(no_c.as_bytes()),
            Err(SdpError::MissingConnection)
        );
        let bad_c = sdp(&[
            "v=0",
            "s=-",
            "c=IN IP4 pbx.example.com",
            "t=0 0",
            "m=audio 1 RTP/AVP 0",
        ]);
        assert!(matches!(
            parse_offer(bad_c.as_bytes()),
            Err(SdpError::BadConnection { .. })
        ));
        let multicast = sdp(&[
            "v=0",
            "s=-",
            "c=IN IP4 224.2.1.1/127",
            "t=0 0",
            "m=audio 1 RTP/AVP 0",
        ]);
        assert!(matches!(
            parse_offer(multicast.as_bytes()),
            Err(SdpError::BadConnection { .. })
        ));
    }

    #[test]
    fn our_offer_round_trips() {
        let body = offer_sdp(&local(), &Codec::ALL, 101);
        assert_eq!(
            body,
            "v=0\r\n\
             o=- 42 1 IN IP4 192.0.2.10\r\n\
             s=voicebot\r\n\
             c=IN IP4 192.0.2.10\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0 8 111 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:111 opus/48000/2\r\n\
             a=fmtp:111 useinbandfec=1; maxplaybackrate=16000; sprop-maxcapturerate=16000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.remote_rtp, "192.0.2.10:20000".parse().unwrap());
        assert_eq!(offer.telephone_event_pt, Some(101));
        assert_eq!(offer.ptime_ms, Some(20));
        let n = negotiate(&offer, &[Codec::Pcma]).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));

        // Preference order is kept; a telephone-event number taken by a codec is left out.
        let body = offer_sdp(&local(), &[Codec::Pcma], 8);
        assert!(body.contains("m=audio 20000 RTP/AVP 8\r\n"), "{body}");
        assert!(!body.contains("telephone-event"));
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            const SDP_BYTES: &[u8] = b"vosctmab=:/ \r\n0123456789.IPN4-6audiRTP/AVPrtpmapf\x00\xff";
            if self.next().is_multiple_of(2) {
                SDP_BYTES[self.below(SDP_BYTES.len())]
            } else {
                self.next() as u8
            }
        }
    }

    /// Whatever the input, no panic; and whatever negotiates yields an answer that parses back
    /// to the same choice.
    fn exercise(body: &[u8]) {
        let Ok(offer) = parse_offer_for(body, SrtpMode::Optional) else {
            return;
        };
        let Ok(n) = negotiate(&offer, &Codec::ALL) else {
            return;
        };
        for answer in [
            answer_sdp(&local(), &n),
            answer_sdp_for_offer(&local(), &offer, &n),
        ] {
            let back = parse_offer_for(answer.as_bytes(), SrtpMode::Optional)
                .unwrap_or_else(|e| panic!("answer {answer:?} to {body:?} does not parse: {e}"));
            let again = negotiate(&back, &Codec::ALL).unwrap();
            assert_eq!((again.codec, again.payload_type), (n.codec, n.payload_type));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x5eed_0001);
        for _ in 0..5000 {
            let len = rng.below(300);
            let body: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            exercise(&body);
        }
    }

    #[test]
    fn mutated_offers_never_panic() {
        let mut rng = Rng(0x5eed_0002);
        let seeds = [SIPP_OFFER, PJSUA_OFFER];
        let mut parsed = 0;
        for i in 0..6000 {
            let mut body = seeds[i % 2].as_bytes().to_vec();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(body.len() + 1);
                match rng.below(6) {
                    0 if at < body.len() => body[at] = rng.byte(),
                    1 => body.insert(at, rng.byte()),
                    2 => {
                        let end = (at + rng.below(20)).min(body.len());
                        body.drain(at..end);
                    }
                    3 => body.truncate(at),
                    4 => {
                        // Duplicate a chunk (often a whole line) somewhere else.
                        let end = (at + rng.below(40)).min(body.len());
                        let chunk = body[at..end].to_vec();
                        let to = rng.below(body.len() + 1);
                        body.splice(to..to, chunk);
                    }
                    _ => {
                        let big = ["99999999999", "-1", "256", "65536", "0", "::", ""];
                        let s = big[rng.below(big.len())].as_bytes().to_vec();
                        body.splice(at..at, s);
                    }
                }
            }
            if parse_offer(&body).is_ok() {
                parsed += 1;
            }
            exercise(&body);
        }
        // The mutations must leave enough offers intact to exercise negotiate and answer.
        assert!(parsed > 500, "only {parsed} mutated offers parsed");
    }
}

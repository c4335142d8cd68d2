//! SDP offer/answer (RFC 3264) for an audio-only IVR: one G.711 stream plus RFC 4733 DTMF.
//!
//! What we accept and what we send:
//! - **Answering** an offer ([`LocalSession::answer`]): the first offered codec we support (PCMU/0,
//!   PCMA/8) in the *offerer's* order, `telephone-event/8000` at whatever payload type the offer
//!   used, the offered `a=ptime` if we can packetise at it, and the mirrored direction. Every other
//!   m-line is refused with port 0 so the answer has as many m-lines as the offer (RFC 3264 6).
//!   The answer is built fresh: nothing (ICE, crypto, `a=rtcp`, vendor attributes) is copied.
//! - **Late offer** ([`LocalSession::offer`] / [`LocalSession::accept_answer`]): an INVITE without a
//!   body gets our offer in the 200 OK and the answer comes in the ACK (RFC 3261 13.2.1).
//! - `o=` versioning (RFC 3264 8): the version goes up only when what we send changes, so a
//!   re-INVITE that changes nothing gets a byte-identical answer.
//!
//! `ezk-sdp-types` does the line parsing, but we feed it only the lines we act on. Its sub-parsers
//! are strict and a failure anywhere fails the whole body, so a malformed `a=rtcp`, `a=candidate`
//! or `b=` line (all of which we ignore anyway), an `m=image` (T.38) line, or a doubled space in
//! `c=` would otherwise turn a usable offer into a 400. See `prepare` for the exact filtering.
//!
//! Not supported (the offer is refused with an error that maps to 488): SRTP profiles
//! (`RTP/SAVP`, `RTP/SAVPF`, DTLS), codecs other than G.711, `c=` with a host name.

use ezk_sdp_types::{
    Direction as SdpDirection, MediaDescription, RtpMap, SessionDescription, TaggedAddress,
};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

/// Packet times we can send at (ms). RFC 4566 6: `a=ptime` is a hint for the receiver, but
/// honouring it costs nothing and some gateways reject or garble other sizes.
const SUPPORTED_PTIMES_MS: [u32; 4] = [10, 20, 30, 40];
/// The packet time when the offer does not name one we support: the RFC 3551 4.5 default for G.711.
const DEFAULT_PTIME_MS: u32 = 20;
/// The payload type we use for telephone-event in our own offers: the de-facto standard number.
const OFFER_DTMF_PT: u8 = 101;
/// Events we claim when the offer did not list any: DTMF 0-9, *, #, A-D and flash (RFC 4733 7.1.1
/// says no fmtp means 0-15; listing 0-16 explicitly matches what Asterisk and Cisco send).
const DEFAULT_EVENTS: &str = "0-16";
/// Both G.711 laws and RFC 4733 events for them run at 8 kHz.
const CLOCK_RATE: u32 = 8000;
/// The attributes that can change our answer; everything else is dropped before parsing.
const KEPT_ATTRIBUTES: [&str; 8] = [
    "rtpmap", "fmtp", "ptime", "maxptime", "sendrecv", "sendonly", "recvonly", "inactive",
];

/// An audio codec we can send and receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// G.711 mu-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
}

impl Codec {
    /// The static payload type RFC 3551 6 assigns to the codec.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name as written in `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The codec an RFC 3551 static payload type means when the offer has no `a=rtpmap` for it.
    fn from_static_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The codec an `a=rtpmap` names. Names are case-insensitive (RFC 4855 3); a channel count
    /// other than one is a different format.
    fn from_rtpmap(map: &RtpMap) -> Option<Self> {
        if map.clock_rate != CLOCK_RATE {
            return None;
        }
        if map.params.as_deref().is_some_and(|ch| ch.trim() != "1") {
            return None;
        }
        let name = map.encoding.trim();
        [Codec::Pcmu, Codec::Pcma]
            .into_iter()
            .find(|c| name.eq_ignore_ascii_case(c.name()))
    }
}

/// Media direction. In [`Negotiated`] it is from *our* point of view: what we may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We send and receive.
    SendRecv,
    /// We only send (the peer put itself in a receive-only state).
    SendOnly,
    /// We only receive (the peer put us on hold).
    RecvOnly,
    /// Neither side sends.
    Inactive,
}

impl Direction {
    /// The attribute name (RFC 4566 6).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether we may send RTP.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether we should expect RTP.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The other side's view of the same stream: RFC 3264 6.1 mirroring.
    fn mirrored(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            same => same,
        }
    }

    /// The same direction without the receive half: what a peer that advertises the unspecified
    /// address means (RFC 3264 8.4, the RFC 2543 hold: "do not send to me").
    fn without_receive(self) -> Self {
        match self {
            Direction::SendRecv => Direction::SendOnly,
            Direction::RecvOnly => Direction::Inactive,
            same => same,
        }
    }

    fn from_sdp(direction: SdpDirection) -> Self {
        match direction {
            SdpDirection::SendRecv => Direction::SendRecv,
            SdpDirection::SendOnly => Direction::SendOnly,
            SdpDirection::RecvOnly => Direction::RecvOnly,
            SdpDirection::Inactive => Direction::Inactive,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of an offer/answer exchange: everything the media layer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP; `None` when the peer advertised 0.0.0.0/`::` (old-style hold), in which
    /// case `direction` never includes sending.
    pub remote: Option<SocketAddr>,
    /// The codec both sides use.
    pub codec: Codec,
    /// The payload type for `codec` (usually its static number, but an offer may map it to a
    /// dynamic one and RFC 3264 6.1 has us use the offerer's numbering).
    pub payload_type: u8,
    /// The payload type for RFC 4733 telephone-event at 8 kHz, if negotiated.
    pub dtmf_payload_type: Option<u8>,
    /// Packet time to send at, in ms.
    pub ptime_ms: u32,
    /// What we may do, from our point of view.
    pub direction: Direction,
}

/// Why an SDP body could not be answered or accepted.
#[derive(Debug, thiserror::Error)]
pub enum SdpError {
    /// The body is not SDP we can read (no `o=`/`s=`/`t=`, a malformed `m=`, `c=`, `o=` or
    /// `a=rtpmap` line, ...). Maps to 400.
    #[error("malformed SDP: {0}")]
    Parse(#[from] ezk_sdp_types::ParseSessionDescriptionError),
    /// The chosen stream has no connection address, neither at media nor at session level
    /// (RFC 4566 5.7 requires one of them). Maps to 400.
    #[error("no c= line for the audio stream")]
    MissingConnection,
    /// No active audio stream: none offered, all disabled with port 0, or the answer to our offer
    /// refused it. Maps to 488.
    #[error("no active audio stream")]
    NoAudio,
    /// Audio is offered only over transport profiles we do not speak (SRTP, DTLS, plain `udp`).
    /// Maps to 488.
    #[error("unsupported transport profile {0}")]
    UnsupportedProfile(String),
    /// Audio is offered, but not in PCMU or PCMA (or not in one our preferences allow). Maps to 488.
    #[error("no codec in common")]
    NoCommonCodec,
    /// The connection address is a host name; we do not resolve names for media. Maps to 488.
    #[error("unsupported connection address {0}")]
    UnsupportedAddress(String),
    /// The stream's address is of a family (IPv4, IPv6) we have no media address in, or not
    /// the one this call's media uses. Maps to 488: our answer would name an address the peer
    /// cannot reach, and we could not send to it.
    #[error("no media address for {0}")]
    NoMediaAddress(&'static str),
}

impl SdpError {
    /// Whether the right response is 488 Not Acceptable Here (the SDP is valid but we cannot take
    /// it, RFC 3261 21.4.26) rather than 400 Bad Request.
    pub fn is_not_acceptable(&self) -> bool {
        match self {
            SdpError::Parse(_) | SdpError::MissingConnection => false,
            SdpError::NoAudio
            | SdpError::UnsupportedProfile(_)
            | SdpError::NoCommonCodec
            | SdpError::UnsupportedAddress(_)
            | SdpError::NoMediaAddress(_) => true,
        }
    }
}

/// Our side of one SIP session's SDP: identity, RTP address, codecs, and what we last sent.
#[derive(Clone, Debug)]
pub struct LocalSession {
    session_id: u64,
    version: u64,
    rtp: SocketAddr,
    prefs: Vec<Codec>,
    /// Everything after the `o=` line of the last SDP we sent, to tell whether the next one changed.
    last_sent: Option<String>,
    /// The codecs of our outstanding offer; an answer may only pick from these (RFC 3264 6).
    offered: Option<Vec<Codec>>,
}

impl LocalSession {
    /// `session_id` should be random (RFC 4566 5.2); `rtp` is the address we advertise for RTP
    /// and must be one the peer can reach (not 0.0.0.0, which means hold). `prefs` is the set of
    /// codecs we allow, in the order we offer them; empty means both, PCMU first.
    pub fn new(session_id: u64, rtp: SocketAddr, prefs: Vec<Codec>) -> Self {
        let mut codecs: Vec<Codec> = Vec::with_capacity(2);
        for codec in prefs {
            if !codecs.contains(&codec) {
                codecs.push(codec);
            }
        }
        if codecs.is_empty() {
            codecs = vec![Codec::Pcmu, Codec::Pcma];
        }
        LocalSession {
            session_id,
            version: 1,
            rtp,
            prefs: codecs,
            last_sent: None,
            offered: None,
        }
    }

    /// The `o=` session version of the last SDP we produced (1 before any).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Answers `offer` (from an INVITE, re-INVITE or UPDATE): returns the answer SDP (CRLF line
    /// ends) and what was negotiated.
    ///
    /// The audio stream answered is the first one with a nonzero port, an RTP/AVP(F) profile and
    /// a codec we share; every other m-line gets port 0. When none qualifies, the error says why,
    /// preferring the most specific reason (no codec, then profile, then no audio at all).
    pub fn answer(&mut self, offer: &[u8]) -> Result<(String, Negotiated), SdpError> {
        let parsed = Parsed::new(offer)?;
        let (index, md, choice) = self.choose_stream(&parsed)?;

        let (remote_ip, on_hold_address) = connection_ip(md, &parsed.sdp)?;
        same_family(remote_ip, self.rtp.ip())?;
        let remote = remote_ip.map(|ip| SocketAddr::new(ip, md.media.port));
        let mut offered_direction = Direction::from_sdp(md.direction);
        if on_hold_address {
            offered_direction = offered_direction.without_receive();
        }
        let direction = offered_direction.mirrored();
        let ptime_ms = choose_ptime(md, &parsed.sdp);

        let mut media = String::new();
        for (i, raw) in parsed.mlines.iter().enumerate() {
            if i == index {
                push_audio(
                    &mut media,
                    self.rtp.port(),
                    raw.profile_text(),
                    &choice,
                    ptime_ms,
                    direction,
                );
            } else {
                push_rejected(&mut media, raw);
            }
        }
        let sdp = self.finish(&media);
        let negotiated = Negotiated {
            remote,
            codec: choice.codec,
            payload_type: choice.payload_type,
            dtmf_payload_type: choice.dtmf.as_ref().map(|(pt, _)| *pt),
            ptime_ms,
            direction,
        };
        Ok((sdp, negotiated))
    }

    /// The address of the stream [`LocalSession::answer`] would take from `offer` (`None` for
    /// a hold address), so the caller can pick a media address of the same family first.
    pub fn offered_address(&self, offer: &[u8]) -> Result<Option<IpAddr>, SdpError> {
        let parsed = Parsed::new(offer)?;
        let (_, md, _) = self.choose_stream(&parsed)?;
        Ok(connection_ip(md, &parsed.sdp)?.0)
    }

    /// Builds our offer for a late-offer INVITE (or a re-INVITE without SDP): our codecs in
    /// preference order, telephone-event at 101 with events 0-16, ptime 20, sendrecv.
    pub fn offer(&mut self) -> String {
        let codecs = self.prefs.clone();
        let mut pts: Vec<String> = codecs
            .iter()
            .map(|c| c.payload_type().to_string())
            .collect();
        pts.push(OFFER_DTMF_PT.to_string());

        let mut media = String::new();
        push_line(
            &mut media,
            format_args!("m=audio {} RTP/AVP {}", self.rtp.port(), pts.join(" ")),
        );
        for codec in &codecs {
            push_line(
                &mut media,
                format_args!(
                    "a=rtpmap:{} {}/{CLOCK_RATE}",
                    codec.payload_type(),
                    codec.name()
                ),
            );
        }
        push_line(
            &mut media,
            format_args!("a=rtpmap:{OFFER_DTMF_PT} telephone-event/{CLOCK_RATE}"),
        );
        push_line(
            &mut media,
            format_args!("a=fmtp:{OFFER_DTMF_PT} {DEFAULT_EVENTS}"),
        );
        push_line(&mut media, format_args!("a=ptime:{DEFAULT_PTIME_MS}"));
        push_line(&mut media, format_args!("a={}", Direction::SendRecv));

        self.offered = Some(codecs);
        self.finish(&media)
    }

    /// Reads the peer's answer to our last [`offer`](Self::offer) (from the ACK of a late-offer
    /// INVITE). Without an outstanding offer the answer is checked against our preferences.
    pub fn accept_answer(&mut self, answer: &[u8]) -> Result<Negotiated, SdpError> {
        let parsed = Parsed::new(answer)?;
        let offered = self.offered.take().unwrap_or_else(|| self.prefs.clone());

        // We offered one audio m-line, so the answer's first m-line is its answer (RFC 3264 6).
        let (md, raw) = parsed
            .sdp
            .media_descriptions
            .first()
            .zip(parsed.mlines.first())
            .ok_or(SdpError::NoAudio)?;
        if !raw.is_audio() || md.media.port == 0 {
            return Err(SdpError::NoAudio);
        }
        match raw.profile() {
            Profile::Avp | Profile::Avpf => {}
            Profile::Unsupported => return Err(SdpError::UnsupportedProfile(raw.proto.clone())),
        }
        let fmts = raw.payload_types();
        let (codec, payload_type) =
            pick_codec(md, &fmts, &offered).ok_or(SdpError::NoCommonCodec)?;
        let dtmf_payload_type = pick_telephone_event(md, &fmts, payload_type).map(|(pt, _)| pt);

        let (remote_ip, on_hold_address) = connection_ip(md, &parsed.sdp)?;
        same_family(remote_ip, self.rtp.ip())?;
        let mut answered_direction = Direction::from_sdp(md.direction);
        if on_hold_address {
            answered_direction = answered_direction.without_receive();
        }
        Ok(Negotiated {
            remote: remote_ip.map(|ip| SocketAddr::new(ip, md.media.port)),
            codec,
            payload_type,
            dtmf_payload_type,
            ptime_ms: choose_ptime(md, &parsed.sdp),
            // Our offer was sendrecv, so the answer's direction is the peer's whole view.
            direction: answered_direction.mirrored(),
        })
    }

    /// Picks the m-line to answer; see [`answer`](Self::answer) for the rule.
    fn choose_stream<'p>(
        &self,
        parsed: &'p Parsed,
    ) -> Result<(usize, &'p MediaDescription, Choice), SdpError> {
        let mut saw_rtp_audio = false;
        let mut unsupported_profile: Option<&str> = None;
        for (i, (md, raw)) in parsed
            .sdp
            .media_descriptions
            .iter()
            .zip(&parsed.mlines)
            .enumerate()
        {
            // Port 0 disables a stream (RFC 3264 8.2); it stays refused in the answer.
            if !raw.is_audio() || md.media.port == 0 {
                continue;
            }
            match raw.profile() {
                Profile::Avp | Profile::Avpf => saw_rtp_audio = true,
                Profile::Unsupported => {
                    unsupported_profile.get_or_insert(&raw.proto);
                    continue;
                }
            }
            let fmts = raw.payload_types();
            if let Some((codec, payload_type)) = pick_codec(md, &fmts, &self.prefs) {
                let dtmf = pick_telephone_event(md, &fmts, payload_type);
                return Ok((
                    i,
                    md,
                    Choice {
                        codec,
                        payload_type,
                        dtmf,
                    },
                ));
            }
        }
        Err(if saw_rtp_audio {
            SdpError::NoCommonCodec
        } else if let Some(proto) = unsupported_profile {
            SdpError::UnsupportedProfile(proto.to_owned())
        } else {
            SdpError::NoAudio
        })
    }

    /// Prepends `v=`/`o=`/`s=`/`c=`/`t=` to `media`, bumping the version if the result differs
    /// from what we sent last (RFC 3264 8: "incremented by one" only when the SDP changes).
    fn finish(&mut self, media: &str) -> String {
        let ip = self.rtp.ip().to_canonical();
        let address = match ip {
            IpAddr::V4(v4) => format!("IN IP4 {v4}"),
            IpAddr::V6(v6) => format!("IN IP6 {v6}"),
        };
        let mut rest = String::new();
        push_line(&mut rest, format_args!("s=-"));
        push_line(&mut rest, format_args!("c={address}"));
        push_line(&mut rest, format_args!("t=0 0"));
        rest.push_str(media);

        match &self.last_sent {
            Some(last) if *last == rest => {}
            Some(_) => {
                self.version = self.version.wrapping_add(1);
                self.last_sent = Some(rest.clone());
            }
            None => self.last_sent = Some(rest.clone()),
        }

        let mut sdp = String::with_capacity(rest.len() + 64);
        push_line(&mut sdp, format_args!("v=0"));
        push_line(
            &mut sdp,
            format_args!("o=ivrd {} {} {address}", self.session_id, self.version),
        );
        sdp.push_str(&rest);
        sdp
    }
}

/// The codec, payload types and event range chosen from one offered m-line.
struct Choice {
    codec: Codec,
    payload_type: u8,
    /// telephone-event payload type and the event list to answer with.
    dtmf: Option<(u8, String)>,
}

/// Transport profile classes (RFC 3264 6: the answer uses the offer's profile).
enum Profile {
    Avp,
    Avpf,
    Unsupported,
}

/// An m-line's tokens as the peer wrote them: we echo them when refusing the stream and read the
/// format list from them (ezk stops reading formats at the first one that is not a `u8`).
struct RawMLine {
    media: String,
    proto: String,
    fmts: Vec<String>,
}

impl RawMLine {
    fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }

    fn profile(&self) -> Profile {
        if self.proto.eq_ignore_ascii_case("RTP/AVP") {
            Profile::Avp
        } else if self.proto.eq_ignore_ascii_case("RTP/AVPF") {
            // AVPF is AVP plus RTCP feedback, which we never send; plain RTP interoperates.
            Profile::Avpf
        } else {
            Profile::Unsupported
        }
    }

    fn profile_text(&self) -> &'static str {
        match self.profile() {
            Profile::Avpf => "RTP/AVPF",
            Profile::Avp | Profile::Unsupported => "RTP/AVP",
        }
    }

    /// The RTP payload types, in the offerer's preference order (RFC 3264 5.1). Numbers above
    /// 127 cannot appear in an RTP header, so they are skipped.
    fn payload_types(&self) -> Vec<u8> {
        self.fmts
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt <= 127)
            .collect()
    }
}

/// A parsed body plus the raw m-lines, index-aligned with `sdp.media_descriptions`.
struct Parsed {
    sdp: SessionDescription,
    mlines: Vec<RawMLine>,
}

impl Parsed {
    fn new(body: &[u8]) -> Result<Self, SdpError> {
        let (text, mlines) = prepare(body);
        let sdp = SessionDescription::parse(&text.into())?;
        // ezk turns every m= line into one media description or fails, so the two lists line up;
        // checked anyway because a mismatch would pair streams with the wrong raw line.
        if sdp.media_descriptions.len() != mlines.len() {
            return Err(SdpError::NoAudio);
        }
        Ok(Parsed { sdp, mlines })
    }
}

/// Reduces a body to the lines we act on, normalised so that ezk accepts what real peers send:
/// - any of CRLF, LF or CR line ends, surrounding whitespace and blank lines;
/// - `a=` attributes other than [`KEPT_ATTRIBUTES`] and `b=`/`i=`/`k=`/... lines are dropped:
///   we ignore them anyway, and ezk fails the whole body when one of them does not parse;
/// - runs of whitespace inside `o=`/`c=`/`t=` collapse (ezk wants exactly `IN IP4 `);
/// - `m=` lines are recorded raw; ezk gets only `media port proto`, with media types it does
///   not know (`image`, `message`) renamed to `application`, which we refuse anyway.
///
/// Invalid UTF-8 is replaced rather than rejected: only `s=`/`i=` may carry other charsets
/// (RFC 4566 5), and we do not read those.
fn prepare(body: &[u8]) -> (String, Vec<RawMLine>) {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len());
    let mut mlines = Vec::new();
    for line in text.split(['\n', '\r']) {
        let line = line.trim();
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        match kind {
            "v" | "s" => push_line(&mut out, format_args!("{line}")),
            "o" | "c" | "t" => {
                let words: Vec<&str> = value.split_ascii_whitespace().collect();
                push_line(&mut out, format_args!("{kind}={}", words.join(" ")));
            }
            "m" => {
                let mut words = value.split_ascii_whitespace();
                let media = words.next().unwrap_or_default();
                let port = words.next().unwrap_or_default();
                let proto = words.next().unwrap_or_default();
                let fmts: Vec<String> = words.map(str::to_owned).collect();
                let known = ["audio", "video", "text", "application"]
                    .into_iter()
                    .find(|known| media.eq_ignore_ascii_case(known))
                    .unwrap_or("application");
                push_line(&mut out, format_args!("m={known} {port} {proto}"));
                mlines.push(RawMLine {
                    media: media.to_owned(),
                    proto: proto.to_owned(),
                    fmts,
                });
            }
            "a" => {
                let (name, rest) = match value.split_once(':') {
                    Some((name, rest)) => (name, Some(rest)),
                    None => (value, None),
                };
                let name = name.trim().to_ascii_lowercase();
                if KEPT_ATTRIBUTES.contains(&name.as_str()) {
                    match rest {
                        Some(rest) => push_line(&mut out, format_args!("a={name}:{}", rest.trim())),
                        None => push_line(&mut out, format_args!("a={name}")),
                    }
                }
            }
            _ => {}
        }
    }
    (out, mlines)
}

/// The first payload type in `fmts` (offerer order) that is one of `allowed`. An `a=rtpmap`
/// decides what a number means; without one only the static numbers 0 and 8 count (RFC 3551 6).
fn pick_codec(md: &MediaDescription, fmts: &[u8], allowed: &[Codec]) -> Option<(Codec, u8)> {
    fmts.iter().find_map(|&pt| {
        let codec = match md.rtpmap.iter().find(|map| map.payload == pt) {
            Some(map) => Codec::from_rtpmap(map)?,
            None => Codec::from_static_payload_type(pt)?,
        };
        allowed.contains(&codec).then_some((codec, pt))
    })
}

/// The first listed telephone-event at 8 kHz (RFC 4733 7.1: events must run at the audio
/// codec's clock rate, so FreeSWITCH's and Linphone's 16/48 kHz ones are not for us), with the
/// event list to answer with: the offer's, if it looks like one, else [`DEFAULT_EVENTS`].
fn pick_telephone_event(md: &MediaDescription, fmts: &[u8], codec_pt: u8) -> Option<(u8, String)> {
    fmts.iter()
        .copied()
        .filter(|&pt| pt != codec_pt)
        .find_map(|pt| {
            let map = md.rtpmap.iter().find(|map| map.payload == pt)?;
            if map.clock_rate != CLOCK_RATE
                || !map.encoding.trim().eq_ignore_ascii_case("telephone-event")
            {
                return None;
            }
            // RFC 4733 7.1.1: the answer lists the events the answerer will accept; we accept any
            // the offerer can send. We echo the list only if it is the plain `0-15,16` syntax, so a
            // mangled fmtp cannot put arbitrary text into our SDP.
            let events = md
                .fmtp
                .iter()
                .find(|fmtp| fmtp.format == pt)
                .map(|fmtp| fmtp.params.trim())
                .filter(|list| is_event_list(list))
                .unwrap_or(DEFAULT_EVENTS);
            Some((pt, events.to_owned()))
        })
}

/// Whether `list` is an RFC 4733 7.1.1 event list: comma-separated numbers or ranges.
fn is_event_list(list: &str) -> bool {
    !list.is_empty()
        && list.split(',').all(|item| {
            let mut ends = item.splitn(2, '-');
            ends.all(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The offered packet time if we support it, else 20, then capped by `a=maxptime`. Both are
/// media-level (RFC 4566 6) but some peers put them at session level, so that is the fallback.
fn choose_ptime(md: &MediaDescription, sdp: &SessionDescription) -> u32 {
    let mut ptime = attribute(md, sdp, "ptime")
        .and_then(parse_ms)
        .filter(|p| SUPPORTED_PTIMES_MS.contains(p))
        .unwrap_or(DEFAULT_PTIME_MS);
    if let Some(max) = attribute(md, sdp, "maxptime").and_then(parse_ms)
        && ptime > max
    {
        ptime = SUPPORTED_PTIMES_MS
            .into_iter()
            .rev()
            .find(|&p| p <= max)
            .unwrap_or(SUPPORTED_PTIMES_MS[0]);
    }
    ptime
}

/// The value of attribute `name`, media level first, then session level.
fn attribute<'a>(
    md: &'a MediaDescription,
    sdp: &'a SessionDescription,
    name: &str,
) -> Option<&'a str> {
    md.attributes
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
        .or_else(|| {
            sdp.attributes
                .iter()
                .find(|a| a.name.eq_ignore_ascii_case(name))
        })
        .and_then(|a| a.value.as_deref())
}

/// Milliseconds from `a=ptime`/`a=maxptime`; `20.0` is accepted (seen in the wild), `20.5` is not.
fn parse_ms(value: &str) -> Option<u32> {
    let value = value.trim();
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse().ok()
}

/// Name of an address family, for messages.
pub fn family_name(ip: IpAddr) -> &'static str {
    if ip.to_canonical().is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// A peer's media address must be of our media address's family: an IPv6 peer cannot be
/// sent to from an IPv4 socket, nor can it reach the IPv4 address our SDP would name.
fn same_family(remote: Option<IpAddr>, ours: IpAddr) -> Result<(), SdpError> {
    match remote {
        Some(ip) if ip.to_canonical().is_ipv4() != ours.to_canonical().is_ipv4() => {
            Err(SdpError::NoMediaAddress(family_name(ip)))
        }
        _ => Ok(()),
    }
}

/// The stream's address: media-level `c=` overrides session-level (RFC 4566 5.7). Returns the IP
/// (`None` when unspecified) and whether it was unspecified, i.e. an RFC 2543-style hold.
fn connection_ip(
    md: &MediaDescription,
    sdp: &SessionDescription,
) -> Result<(Option<IpAddr>, bool), SdpError> {
    let connection = md
        .connection
        .as_ref()
        .or(sdp.connection.as_ref())
        .ok_or(SdpError::MissingConnection)?;
    let ip = match &connection.address {
        TaggedAddress::IP4(ip) => IpAddr::V4(*ip),
        TaggedAddress::IP6(ip) => IpAddr::V6(*ip),
        TaggedAddress::IP4FQDN(host) | TaggedAddress::IP6FQDN(host) => {
            return Err(SdpError::UnsupportedAddress(host.to_string()));
        }
    };
    if ip.is_unspecified() {
        Ok((None, true))
    } else {
        Ok((Some(ip), false))
    }
}

/// Our accepted audio m-line and its attributes.
fn push_audio(
    out: &mut String,
    port: u16,
    proto: &str,
    choice: &Choice,
    ptime_ms: u32,
    direction: Direction,
) {
    match &choice.dtmf {
        Some((dtmf, _)) => push_line(
            out,
            format_args!("m=audio {port} {proto} {} {dtmf}", choice.payload_type),
        ),
        None => push_line(
            out,
            format_args!("m=audio {port} {proto} {}", choice.payload_type),
        ),
    }
    push_line(
        out,
        format_args!(
            "a=rtpmap:{} {}/{CLOCK_RATE}",
            choice.payload_type,
            choice.codec.name()
        ),
    );
    if let Some((dtmf, events)) = &choice.dtmf {
        push_line(
            out,
            format_args!("a=rtpmap:{dtmf} telephone-event/{CLOCK_RATE}"),
        );
        push_line(out, format_args!("a=fmtp:{dtmf} {events}"));
    }
    push_line(out, format_args!("a=ptime:{ptime_ms}"));
    push_line(out, format_args!("a={direction}"));
}

/// A refused m-line: the offer's media, profile and formats with port 0 (RFC 3264 6).
fn push_rejected(out: &mut String, raw: &RawMLine) {
    let mut line = format!("m={} 0 {}", raw.media, raw.proto);
    for fmt in &raw.fmts {
        line.push(' ');
        line.push_str(fmt);
    }
    push_line(out, format_args!("{line}"));
}

/// Appends one CRLF-terminated line (RFC 4566 5: CRLF is the line end we must send).
fn push_line(out: &mut String, line: fmt::Arguments<'_>) {
    // Writing into a String cannot fail.
    let _ = out.write_fmt(line);
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const BARESIP: &str = include_str!("../../tests/data/sdp/baresip.sdp");

    fn local() -> LocalSession {
        LocalSession::new(
            4242,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 40000),
            vec![Codec::Pcmu, Codec::Pcma],
        )
    }

    fn answer(offer: &str) -> (String, Negotiated) {
        let (sdp, negotiated) = local().answer(offer.as_bytes()).expect("answerable offer");
        check_wire_format(&sdp);
        (sdp, negotiated)
    }

    fn answer_err(offer: &str) -> SdpError {
        local()
            .answer(offer.as_bytes())
            .expect_err("offer must be refused")
    }

    /// CRLF everywhere, the RFC 4566 5 line order, and a body ezk parses back.
    fn check_wire_format(sdp: &str) {
        assert!(sdp.ends_with("\r\n"), "{sdp:?}");
        assert!(!sdp.replace("\r\n", "").contains(['\r', '\n']), "{sdp:?}");
        let kinds: String = sdp.lines().filter_map(|l| l.chars().next()).collect();
        let head: String = kinds.chars().take(6).collect();
        assert_eq!(head, "vosctm", "{sdp}");
        assert!(
            kinds[6..].chars().all(|k| k == 'm' || k == 'a'),
            "only m= and a= after t=: {sdp}"
        );
        // ezk cannot parse m=image/m=message at all, even refused; those go through our filter.
        let ezk_knows_all_media = sdp.lines().filter(|l| l.starts_with("m=")).all(|l| {
            ["m=audio ", "m=video ", "m=text ", "m=application "]
                .iter()
                .any(|known| l.starts_with(known))
        });
        if ezk_knows_all_media {
            SessionDescription::parse(&sdp.to_owned().into()).expect("answer parses back");
        } else {
            Parsed::new(sdp.as_bytes()).expect("answer parses back");
        }
    }

    /// The a= lines of the answer, without the `a=` prefix.
    fn attrs(sdp: &str) -> Vec<&str> {
        sdp.lines().filter_map(|l| l.strip_prefix("a=")).collect()
    }

    fn mlines(sdp: &str) -> Vec<&str> {
        sdp.lines().filter(|l| l.starts_with("m=")).collect()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port))
    }

    /// A minimal offer around one audio m-line and its attributes.
    fn offer_with(session_attrs: &str, mline: &str, media_attrs: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             {session_attrs}m={mline}\r\n{media_attrs}"
        )
    }

    /// An offer in a family our media address is not in is refused (488), never answered
    /// with an address the peer cannot use; `offered_address` lets the caller pick first.
    #[test]
    fn an_offer_in_another_family_is_not_acceptable() {
        let v6 = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
                  m=audio 5000 RTP/AVP 0\r\n";
        let mut ours = LocalSession::new(1, "192.0.2.10:20000".parse().unwrap(), Vec::new());
        assert_eq!(
            ours.offered_address(v6.as_bytes()).unwrap(),
            Some("2001:db8::1".parse().unwrap())
        );
        let err = ours.answer(v6.as_bytes()).unwrap_err();
        assert!(matches!(err, SdpError::NoMediaAddress("IPv6")), "{err}");
        assert!(err.is_not_acceptable());
        let mut ours6 = LocalSession::new(1, "[2001:db8::10]:20000".parse().unwrap(), Vec::new());
        let (sdp, n) = ours6.answer(v6.as_bytes()).unwrap();
        assert!(sdp.contains("c=IN IP6 2001:db8::10"), "{sdp}");
        assert_eq!(n.remote, Some("[2001:db8::1]:5000".parse().unwrap()));
        // A hold address (0.0.0.0) says nothing about the family.
        let hold = v6.replace("c=IN IP6 2001:db8::1", "c=IN IP4 0.0.0.0");
        assert_eq!(ours6.offered_address(hold.as_bytes()).unwrap(), None);
        ours6.answer(hold.as_bytes()).unwrap();
    }

    #[test]
    fn baresip_offer() {
        let (sdp, n) = answer(BARESIP);
        assert_eq!(
            n,
            Negotiated {
                remote: v4(192, 168, 1, 1, 16796),
                codec: Codec::Pcmu,
                payload_type: 0,
                dtmf_payload_type: Some(101),
                ptime_ms: 20,
                direction: Direction::SendRecv,
            }
        );
        assert_eq!(
            sdp,
            "v=0\r\n\
             o=ivrd 4242 1 IN IP4 203.0.113.7\r\n\
             s=-\r\n\
             c=IN IP4 203.0.113.7\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-15\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
    }

    #[test]
    fn sipp_default_uac_offer_gets_pcmu_without_dtmf() {
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/sipp_uac.sdp"));
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_payload_type),
            (Codec::Pcmu, 0, None)
        );
        assert_eq!(n.remote, v4(127, 0, 0, 1, 6000));
        assert_eq!(mlines(&sdp), ["m=audio 40000 RTP/AVP 0"]);
        assert_eq!(attrs(&sdp), ["rtpmap:0 PCMU/8000", "ptime:20", "sendrecv"]);
    }

    #[test]
    fn sipp_pcap_offer_mirrors_event_list() {
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/sipp_uac_pcap.sdp"));
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_payload_type),
            (Codec::Pcma, 8, Some(101))
        );
        assert_eq!(mlines(&sdp), ["m=audio 40000 RTP/AVP 8 101"]);
        assert!(attrs(&sdp).contains(&"fmtp:101 0-11,16"), "{sdp}");
    }

    #[test]
    fn asterisk_pjsip_offer() {
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/asterisk_pjsip.sdp"));
        assert_eq!(
            (n.codec, n.dtmf_payload_type, n.ptime_ms),
            (Codec::Pcmu, Some(101), 20)
        );
        assert_eq!(n.remote, v4(198, 51, 100, 5, 10036));
        assert!(attrs(&sdp).contains(&"fmtp:101 0-16"));
        assert!(!sdp.contains("maxptime"), "not echoed: {sdp}");
    }

    #[test]
    fn freeswitch_offer_skips_opus_g722_and_48k_events() {
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/freeswitch.sdp"));
        // Offer order is 102(opus) 9(G722) 0 8 96(te/48k) 101(te/8k) 13(CN).
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_payload_type),
            (Codec::Pcmu, 0, Some(101))
        );
        assert_eq!(mlines(&sdp), ["m=audio 40000 RTP/AVP 0 101"]);
        assert!(!sdp.contains("rtcp"), "a=rtcp is not copied: {sdp}");
        assert!(!sdp.contains("opus") && !sdp.contains(" 96"), "{sdp}");
    }

    #[test]
    fn linphone_offer_uses_static_pt_without_rtpmap_and_8k_events() {
        // Linphone lists 0 and 8 without a=rtpmap, and has telephone-event at 101 (48 kHz),
        // 99 (16 kHz) and 100 (8 kHz), without fmtp.
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/linphone.sdp"));
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_payload_type),
            (Codec::Pcmu, 0, Some(100))
        );
        assert_eq!(n.remote, v4(86, 107, 100, 98, 44305));
        assert_eq!(mlines(&sdp), ["m=audio 40000 RTP/AVP 0 100"]);
        assert!(
            attrs(&sdp).contains(&"fmtp:100 0-16"),
            "default list: {sdp}"
        );
    }

    #[test]
    fn cisco_offer_takes_events_not_nse_and_media_level_address() {
        let (_, n) = answer(include_str!("../../tests/data/sdp/cisco_ios.sdp"));
        assert_eq!((n.codec, n.dtmf_payload_type), (Codec::Pcmu, Some(101)));
        assert_eq!(n.remote, v4(10, 57, 5, 2, 19402));
    }

    #[test]
    fn polycom_style_offer() {
        // 9 (G722) and 102 (G.722.1) first, then PCMA before PCMU; events at 96 (16 kHz) and
        // 100 (8 kHz); ptime 30; direction only at session level.
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/polycom_style.sdp"));
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_payload_type, n.ptime_ms),
            (Codec::Pcma, 8, Some(100), 30)
        );
        assert_eq!(n.direction, Direction::SendRecv);
        assert_eq!(
            attrs(&sdp),
            [
                "rtpmap:8 PCMA/8000",
                "rtpmap:100 telephone-event/8000",
                "fmtp:100 0-15",
                "ptime:30",
                "sendrecv"
            ]
        );
    }

    #[test]
    fn lf_only_offer_gets_crlf_answer() {
        let offer = include_str!("../../tests/data/sdp/lf_only.sdp");
        assert!(!offer.contains('\r'), "test data must stay LF-only");
        let (_, n) = answer(offer);
        assert_eq!((n.codec, n.dtmf_payload_type), (Codec::Pcma, Some(101)));
        assert_eq!(n.remote, v4(192, 0, 2, 20, 17462));
    }

    #[test]
    fn sendonly_hold_is_answered_recvonly() {
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/hold_sendonly.sdp"));
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(
            n.remote.is_some(),
            "a=sendonly hold keeps the address for RTCP"
        );
        assert_eq!(attrs(&sdp).last(), Some(&"recvonly"));
    }

    #[test]
    fn zero_address_hold_has_no_remote_and_we_do_not_send() {
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/hold_zero_addr.sdp"));
        assert_eq!(n.remote, None);
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(!n.direction.sends());
        assert_eq!(attrs(&sdp).last(), Some(&"recvonly"));

        let inactive = offer_with(
            "",
            "audio 5000 RTP/AVP 0",
            "c=IN IP4 0.0.0.0\r\na=recvonly\r\n",
        );
        assert_eq!(answer(&inactive).1.direction, Direction::Inactive);
    }

    #[test]
    fn direction_is_mirrored_and_session_level_applies() {
        for (offered, ours) in [
            ("sendrecv", Direction::SendRecv),
            ("sendonly", Direction::RecvOnly),
            ("recvonly", Direction::SendOnly),
            ("inactive", Direction::Inactive),
        ] {
            let media_level = offer_with("", "audio 5000 RTP/AVP 0", &format!("a={offered}\r\n"));
            let (sdp, n) = answer(&media_level);
            assert_eq!(n.direction, ours, "{offered}");
            assert_eq!(attrs(&sdp).last(), Some(&ours.as_str()));

            let session_level = offer_with(&format!("a={offered}\r\n"), "audio 5000 RTP/AVP 0", "");
            assert_eq!(
                answer(&session_level).1.direction,
                ours,
                "session {offered}"
            );
        }
        // Media level overrides session level.
        let both = offer_with("a=sendonly\r\n", "audio 5000 RTP/AVP 0", "a=sendrecv\r\n");
        assert_eq!(answer(&both).1.direction, Direction::SendRecv);
        // No attribute at all means sendrecv (RFC 4566 6).
        let none = offer_with("", "audio 5000 RTP/AVP 0", "");
        assert_eq!(answer(&none).1.direction, Direction::SendRecv);
    }

    #[test]
    fn ipv6_offer_with_video_rejects_video_in_place() {
        let mut session = LocalSession::new(
            7,
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
                40002,
            ),
            vec![],
        );
        let offer = include_str!("../../tests/data/sdp/ipv6_audio_video.sdp");
        let (sdp, n) = session.answer(offer.as_bytes()).unwrap();
        check_wire_format(&sdp);
        let remote_ip = IpAddr::V6(Ipv6Addr::new(0xfde1, 0xc0fe, 0, 0, 0, 0, 0, 7));
        assert_eq!(n.remote, Some(SocketAddr::new(remote_ip, 17882)));
        // 101 is speex here; telephone-event is at 102.
        assert_eq!((n.codec, n.dtmf_payload_type), (Codec::Pcmu, Some(102)));
        assert_eq!(
            mlines(&sdp),
            ["m=audio 40002 RTP/AVP 0 102", "m=video 0 RTP/AVP 96"]
        );
        assert!(sdp.contains("\r\nc=IN IP6 2001:db8::5\r\n"), "{sdp}");
        assert!(
            sdp.contains("\r\no=ivrd 7 1 IN IP6 2001:db8::5\r\n"),
            "{sdp}"
        );
    }

    #[test]
    fn video_first_offer_answers_audio_second_with_media_level_address() {
        let (sdp, n) = answer(include_str!("../../tests/data/sdp/video_first.sdp"));
        assert_eq!(
            mlines(&sdp),
            ["m=video 0 RTP/AVP 96 97", "m=audio 40000 RTP/AVP 0 101"]
        );
        // Session-level c= says .68; the audio m-line's own c= says .69.
        assert_eq!(n.remote, v4(192, 168, 0, 69, 8000));
        // Our attributes follow the audio line, not the refused video line.
        let audio_at = sdp.find("m=audio").unwrap();
        assert!(sdp.find("a=rtpmap").unwrap() > audio_at);
    }

    #[test]
    fn srtp_offer_is_refused_with_488() {
        let err = answer_err(include_str!("../../tests/data/sdp/srtp_savp.sdp"));
        assert!(
            matches!(&err, SdpError::UnsupportedProfile(p) if p == "RTP/SAVP"),
            "{err:?}"
        );
        assert!(err.is_not_acceptable());

        let savpf = offer_with("", "audio 5000 RTP/SAVPF 0", "");
        assert!(matches!(
            answer_err(&savpf),
            SdpError::UnsupportedProfile(_)
        ));
    }

    #[test]
    fn srtp_line_next_to_plain_rtp_line_is_refused_in_place() {
        // Best-effort SRTP offered as two m-lines: take the RTP/AVP one.
        let offer = offer_with(
            "",
            "audio 5000 RTP/SAVP 0 101",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:vXMep/SIW4iMD21StWgrmy024dJZfOAM7qFFJfsJ\r\n\
             m=audio 5002 RTP/AVP 8\r\n",
        );
        let (sdp, n) = answer(&offer);
        assert_eq!(
            mlines(&sdp),
            ["m=audio 0 RTP/SAVP 0 101", "m=audio 40000 RTP/AVP 8"]
        );
        assert_eq!((n.codec, n.remote), (Codec::Pcma, v4(192, 0, 2, 1, 5002)));
        assert!(!sdp.contains("crypto"));
    }

    #[test]
    fn no_common_codec_is_488() {
        let err = answer_err(include_str!("../../tests/data/sdp/g729_only.sdp"));
        assert!(matches!(err, SdpError::NoCommonCodec), "{err:?}");
        assert!(err.is_not_acceptable());

        let opus = offer_with(
            "",
            "audio 5000 RTP/AVP 111 101",
            "a=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n",
        );
        assert!(matches!(answer_err(&opus), SdpError::NoCommonCodec));
    }

    #[test]
    fn codec_must_be_in_our_preferences_but_offer_order_wins() {
        let mut alaw_only =
            LocalSession::new(1, "192.0.2.9:4000".parse().unwrap(), vec![Codec::Pcma]);
        let (_, n) = alaw_only.answer(BARESIP.as_bytes()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));

        let mut alaw_first = LocalSession::new(
            1,
            "192.0.2.9:4000".parse().unwrap(),
            vec![Codec::Pcma, Codec::Pcmu],
        );
        let (_, n) = alaw_first.answer(BARESIP.as_bytes()).unwrap();
        assert_eq!(n.codec, Codec::Pcmu, "baresip lists 0 before 8");

        let ulaw_offer = include_str!("../../tests/data/sdp/sipp_uac.sdp");
        assert!(matches!(
            alaw_only.answer(ulaw_offer.as_bytes()),
            Err(SdpError::NoCommonCodec)
        ));
    }

    #[test]
    fn rtpmap_decides_what_a_payload_type_means() {
        // Dynamic number, lower-case name: still PCMU, answered at the offer's number.
        let dynamic = offer_with("", "audio 5000 RTP/AVP 97", "a=rtpmap:97 pcmu/8000\r\n");
        let (sdp, n) = answer(&dynamic);
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 97));
        assert!(attrs(&sdp).contains(&"rtpmap:97 PCMU/8000"));

        // Stereo or 16 kHz "PCMU" is not G.711 as we speak it; 8 mapped to something else is not PCMA.
        let odd = offer_with(
            "",
            "audio 5000 RTP/AVP 96 98 8",
            "a=rtpmap:96 PCMU/8000/2\r\na=rtpmap:98 PCMA/16000\r\na=rtpmap:8 G729/8000\r\n",
        );
        assert!(matches!(answer_err(&odd), SdpError::NoCommonCodec));

        // An explicit channel count of 1 is fine.
        let mono = offer_with("", "audio 5000 RTP/AVP 8", "a=rtpmap:8 PCMA/8000/1\r\n");
        assert_eq!(answer(&mono).1.codec, Codec::Pcma);
    }

    #[test]
    fn telephone_event_choice() {
        // Case-insensitive name, odd dynamic number, not at 48 kHz.
        let offer = offer_with(
            "",
            "audio 5000 RTP/AVP 0 127 96",
            "a=rtpmap:127 telephone-event/48000\r\na=rtpmap:96 Telephone-Event/8000\r\n\
             a=fmtp:96 0-15\r\n",
        );
        let (sdp, n) = answer(&offer);
        assert_eq!(n.dtmf_payload_type, Some(96));
        assert!(attrs(&sdp).contains(&"rtpmap:96 telephone-event/8000"));
        assert!(attrs(&sdp).contains(&"fmtp:96 0-15"));

        // An rtpmap for a number that is not in the m= line does not count.
        let unlisted = offer_with(
            "",
            "audio 5000 RTP/AVP 0",
            "a=rtpmap:101 telephone-event/8000\r\n",
        );
        assert_eq!(answer(&unlisted).1.dtmf_payload_type, None);

        // A mangled event list is not echoed.
        let mangled = offer_with(
            "",
            "audio 5000 RTP/AVP 0 101",
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15;x=<script>\r\n",
        );
        let (sdp, _) = answer(&mangled);
        assert!(attrs(&sdp).contains(&"fmtp:101 0-16"), "{sdp}");
    }

    #[test]
    fn ptime_rules() {
        let with = |attrs: &str| {
            answer(&offer_with("", "audio 5000 RTP/AVP 0", attrs))
                .1
                .ptime_ms
        };
        assert_eq!(with(""), 20);
        assert_eq!(with("a=ptime:10\r\n"), 10);
        assert_eq!(with("a=ptime:30\r\n"), 30);
        assert_eq!(with("a=ptime:40\r\n"), 40);
        assert_eq!(with("a=ptime:60\r\n"), 20, "unsupported falls back");
        assert_eq!(with("a=ptime:25\r\n"), 20);
        assert_eq!(with("a=ptime:20.0\r\n"), 20);
        assert_eq!(with("a=ptime:30.5\r\n"), 20);
        assert_eq!(with("a=ptime:abc\r\n"), 20);
        assert_eq!(with("a=ptime:30   \r\n"), 30, "trailing blanks");
        assert_eq!(with("a=maxptime:10\r\n"), 10, "cap below the default");
        assert_eq!(with("a=ptime:40\r\na=maxptime:30\r\n"), 30);
        assert_eq!(with("a=maxptime:150\r\n"), 20);
        let session_level = offer_with("a=ptime:30\r\n", "audio 5000 RTP/AVP 0", "");
        assert_eq!(answer(&session_level).1.ptime_ms, 30);

        let (sdp, _) = answer(&offer_with("", "audio 5000 RTP/AVP 0", "a=ptime:40\r\n"));
        assert!(attrs(&sdp).contains(&"ptime:40"));
    }

    #[test]
    fn later_audio_line_is_used_when_the_first_has_no_common_codec() {
        let offer = offer_with(
            "",
            "audio 5000 RTP/AVP 18",
            "a=rtpmap:18 G729/8000\r\nm=audio 5002 RTP/AVP 0\r\nm=audio 5004 RTP/AVP 8\r\n",
        );
        let (sdp, n) = answer(&offer);
        assert_eq!(
            mlines(&sdp),
            [
                "m=audio 0 RTP/AVP 18",
                "m=audio 40000 RTP/AVP 0",
                "m=audio 0 RTP/AVP 8"
            ]
        );
        assert_eq!(n.remote, v4(192, 0, 2, 1, 5002));
    }

    #[test]
    fn t38_reinvite_is_refused_and_image_lines_are_refused_in_place() {
        let err = answer_err(include_str!("../../tests/data/sdp/t38_reinvite.sdp"));
        assert!(matches!(err, SdpError::NoAudio), "{err:?}");
        assert!(err.is_not_acceptable());

        let both = offer_with("", "audio 5000 RTP/AVP 0", "m=image 5002 udptl t38\r\n");
        let (sdp, _) = answer(&both);
        assert_eq!(
            mlines(&sdp),
            ["m=audio 40000 RTP/AVP 0", "m=image 0 udptl t38"]
        );
    }

    #[test]
    fn avpf_is_answered_in_kind() {
        let (sdp, _) = answer(&offer_with("", "audio 5000 RTP/AVPF 8", ""));
        assert_eq!(mlines(&sdp), ["m=audio 40000 RTP/AVPF 8"]);
    }

    #[test]
    fn lenient_where_ezk_alone_is_strict() {
        // Each of these lines makes ezk-sdp-types reject the whole body on its own. None of them
        // matters to us, so the offer must still be answered.
        let offer = "v=0\r\n\
                     o=-  1 1 IN IP4 192.0.2.1\r\n\
                     s=-\r\n\
                     c=IN  IP4 192.0.2.1 \r\n\
                     b=AS:x\r\n\
                     t=0 0\r\n\
                     m=AUDIO 5000 RTP/AVP 300 8\r\n\
                     a=rtcp:abc\r\n\
                     a=candidate:garbage\r\n\
                     a=sendonly   \r\n\
                     m=message 5002 TCP/MSRP *\r\n";
        let raw = SessionDescription::parse(&offer.to_owned().into());
        assert!(
            raw.is_err(),
            "ezk got more lenient; the filtering may be simplified"
        );

        let (sdp, n) = answer(offer);
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
        assert_eq!(n.remote, v4(192, 0, 2, 1, 5000));
        assert_eq!(
            n.direction,
            Direction::RecvOnly,
            "trailing blanks after a=sendonly"
        );
        assert_eq!(
            mlines(&sdp),
            ["m=audio 40000 RTP/AVP 8", "m=message 0 TCP/MSRP *"]
        );
    }

    #[test]
    fn garbage_is_400() {
        for body in [
            &b""[..],
            b"hello world",
            b"\xff\xfe\x00\x01binary",
            b"v=0\r\nm=audio 5000 RTP/AVP 0\r\n",
            b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 99999 RTP/AVP 0\r\n",
            b"v=0\r\no=- 1 1 IN XX 192.0.2.1\r\ns=-\r\nt=0 0\r\n",
            b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio\r\n",
        ] {
            let err = local().answer(body).expect_err("garbage must fail");
            assert!(matches!(err, SdpError::Parse(_)), "{body:?}: {err:?}");
            assert!(!err.is_not_acceptable());
        }
    }

    #[test]
    fn missing_or_named_connection_address() {
        let no_c = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        let err = answer_err(no_c);
        assert!(matches!(err, SdpError::MissingConnection), "{err:?}");
        assert!(!err.is_not_acceptable());

        let named = offer_with("", "audio 5000 RTP/AVP 0", "c=IN IP4 media.example.com\r\n");
        let err = answer_err(&named);
        assert!(matches!(&err, SdpError::UnsupportedAddress(h) if h == "media.example.com"));
        assert!(err.is_not_acceptable());
    }

    #[test]
    fn no_audio_at_all_or_only_disabled_audio() {
        let video = offer_with("", "video 5000 RTP/AVP 96", "a=rtpmap:96 VP8/90000\r\n");
        assert!(matches!(answer_err(&video), SdpError::NoAudio));
        let disabled = offer_with("", "audio 0 RTP/AVP 0", "");
        assert!(matches!(answer_err(&disabled), SdpError::NoAudio));
        let none = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n";
        assert!(matches!(answer_err(none), SdpError::NoAudio));
    }

    #[test]
    fn version_increments_only_when_our_sdp_changes() {
        let mut s = local();
        let active = include_str!("../../tests/data/sdp/asterisk_pjsip.sdp");
        let hold = include_str!("../../tests/data/sdp/hold_sendonly.sdp");
        let version_of = |sdp: &str| -> u64 {
            let o = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
            o.split(' ').nth(2).unwrap().parse().unwrap()
        };

        let (first, _) = s.answer(active.as_bytes()).unwrap();
        assert_eq!(version_of(&first), 1);
        // Refresh re-INVITE with the same offer: identical answer, same version.
        let (again, _) = s.answer(active.as_bytes()).unwrap();
        assert_eq!(again, first);
        // Hold changes our direction to recvonly: new version.
        let (held, _) = s.answer(hold.as_bytes()).unwrap();
        assert_eq!(version_of(&held), 2);
        let (held_again, _) = s.answer(hold.as_bytes()).unwrap();
        assert_eq!(version_of(&held_again), 2);
        // Unhold: back to the first body, but it is a change from the last one we sent.
        let (resumed, _) = s.answer(active.as_bytes()).unwrap();
        assert_eq!(version_of(&resumed), 3);
        assert_eq!(resumed.replace("ivrd 4242 3", "ivrd 4242 1"), first);
        // A different offer that leads to the same answer does not bump.
        let (same, _) = s
            .answer(BARESIP.replace("0-15", "0-16").as_bytes())
            .unwrap();
        assert_eq!(version_of(&same), 3);
        assert_eq!(s.version(), 3);
        // Our own offer differs from the last answer.
        let offer = s.offer();
        assert_eq!(version_of(&offer), 4);
        assert_eq!(version_of(&s.offer()), 4);
    }

    #[test]
    fn late_offer_text() {
        let mut s = local();
        let offer = s.offer();
        check_wire_format(&offer);
        assert_eq!(
            offer,
            "v=0\r\n\
             o=ivrd 4242 1 IN IP4 203.0.113.7\r\n\
             s=-\r\n\
             c=IN IP4 203.0.113.7\r\n\
             t=0 0\r\n\
             m=audio 40000 RTP/AVP 0 8 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        let mut alaw = LocalSession::new(1, "192.0.2.9:4000".parse().unwrap(), vec![Codec::Pcma]);
        assert!(mlines(&alaw.offer()) == ["m=audio 4000 RTP/AVP 8 101"]);
    }

    #[test]
    fn late_offer_answer_from_ack() {
        let mut s = local();
        s.offer();
        // Typical answer: the peer picked PCMA and kept our event number.
        let answer = "v=0\r\no=- 5 5 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\n\
                      t=0 0\r\nm=audio 10036 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
                      a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:30\r\n";
        let n = s.accept_answer(answer.as_bytes()).unwrap();
        assert_eq!(
            n,
            Negotiated {
                remote: v4(198, 51, 100, 5, 10036),
                codec: Codec::Pcma,
                payload_type: 8,
                dtmf_payload_type: Some(101),
                ptime_ms: 30,
                direction: Direction::SendRecv,
            }
        );

        // The peer answered sendonly: we only receive.
        s.offer();
        let sendonly = answer.replace("a=ptime:30\r\n", "a=sendonly\r\n");
        let n = s.accept_answer(sendonly.as_bytes()).unwrap();
        assert_eq!((n.direction, n.ptime_ms), (Direction::RecvOnly, 20));

        // No DTMF in the answer.
        s.offer();
        let plain = "v=0\r\no=- 5 5 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\n\
                     t=0 0\r\nm=audio 10036 RTP/AVP 0\r\n";
        assert_eq!(
            s.accept_answer(plain.as_bytes()).unwrap().dtmf_payload_type,
            None
        );
    }

    #[test]
    fn late_offer_bad_answers() {
        let mut s = local();
        let base =
            "v=0\r\no=- 5 5 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\nt=0 0\r\n";

        s.offer();
        let refused = format!("{base}m=audio 0 RTP/AVP 0\r\n");
        assert!(matches!(
            s.accept_answer(refused.as_bytes()),
            Err(SdpError::NoAudio)
        ));

        s.offer();
        let g729 = format!("{base}m=audio 5000 RTP/AVP 18\r\n");
        assert!(matches!(
            s.accept_answer(g729.as_bytes()),
            Err(SdpError::NoCommonCodec)
        ));

        // PCMA is a codec we support, but it was not in this offer.
        let mut ulaw = LocalSession::new(1, "192.0.2.9:4000".parse().unwrap(), vec![Codec::Pcmu]);
        ulaw.offer();
        let alaw = format!("{base}m=audio 5000 RTP/AVP 8\r\n");
        assert!(matches!(
            ulaw.accept_answer(alaw.as_bytes()),
            Err(SdpError::NoCommonCodec)
        ));

        s.offer();
        let srtp = format!("{base}m=audio 5000 RTP/SAVP 0\r\n");
        assert!(matches!(
            s.accept_answer(srtp.as_bytes()),
            Err(SdpError::UnsupportedProfile(_))
        ));

        s.offer();
        assert!(matches!(s.accept_answer(b"junk"), Err(SdpError::Parse(_))));
    }

    #[test]
    fn prefs_are_deduplicated_and_default_to_both() {
        let mut s = LocalSession::new(1, "192.0.2.9:4000".parse().unwrap(), vec![]);
        assert_eq!(mlines(&s.offer()), ["m=audio 4000 RTP/AVP 0 8 101"]);
        let mut s = LocalSession::new(
            1,
            "192.0.2.9:4000".parse().unwrap(),
            vec![Codec::Pcma, Codec::Pcma, Codec::Pcmu],
        );
        assert_eq!(mlines(&s.offer()), ["m=audio 4000 RTP/AVP 8 0 101"]);
    }

    #[test]
    fn ipv4_mapped_local_address_is_advertised_as_ip4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:4000".parse().unwrap();
        let mut s = LocalSession::new(1, mapped, vec![]);
        assert!(s.offer().contains("\r\nc=IN IP4 192.0.2.9\r\n"));
    }

    #[test]
    fn codec_and_direction_helpers() {
        assert_eq!(
            (Codec::Pcmu.payload_type(), Codec::Pcmu.name()),
            (0, "PCMU")
        );
        assert_eq!(
            (Codec::Pcma.payload_type(), Codec::Pcma.name()),
            (8, "PCMA")
        );
        assert!(Direction::SendRecv.sends() && Direction::SendRecv.receives());
        assert!(Direction::SendOnly.sends() && !Direction::SendOnly.receives());
        assert!(!Direction::RecvOnly.sends() && Direction::RecvOnly.receives());
        assert!(!Direction::Inactive.sends() && !Direction::Inactive.receives());
    }
}

//! SDP offer/answer (RFC 3264) for an audio-only IVR: one G.711 stream plus RFC 4733 DTMF.
//!
//! What we accept and what we send:
//! - **Answering** an offer ([`LocalSession::answer`]): the first offered codec we support (PCMU/0,
//!   PCMA/8) in the *offerer's* order, `telephone-event/8000` at whatever payload type the offer
//!   used, the offered `a=ptime` if we can packetise at it, and the mirrored direction. Every other
//!   m-line is refused with port 0 so the answer has as many m-lines as the offer (RFC 3264 6).
//!   The answer is built fresh: nothing (ICE, `a=rtcp`, vendor attributes) is copied.
//! - **SRTP with SDES** (RFC 3711, RFC 4568), as [`SrtpMode`] allows: an `RTP/SAVP(F)` stream is
//!   answered with the first `a=crypto` line we can use (see [`parse_crypto`]), its tag echoed,
//!   and a fresh key of ours; our own offers carry both suites. SDES puts the keys in the SDP, so
//!   they protect nothing unless the signalling is TLS: every call here says whether it is, and
//!   over insecure signalling an `RTP/SAVP` stream is refused in place (port 0, RFC 3264 6: an
//!   answer may not change the offer's profile), never answered with plain RTP on that line. A
//!   plain stream offered beside it is then taken; without one, 488.
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
//! Not supported (the offer is refused with an error that maps to 488): DTLS-SRTP
//! (`UDP/TLS/RTP/SAVP`), SRTP when [`SrtpMode::Off`], codecs other than G.711, `c=` with a
//! host name.

use crate::media::srtp::{MASTER_LEN, MasterKey, SrtpKeys, Suite};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
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

/// Whether calls may, or must, use SRTP (`[media] srtp`). SDES keys are only ever offered or
/// accepted over secure signalling, whatever the mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpMode {
    /// Plain RTP only: `RTP/SAVP` streams are refused, as before SRTP existed.
    Off,
    /// SRTP when the peer offers it (over TLS), plain RTP when it offers that. Our own offers
    /// (late offer) are SRTP over TLS, plain otherwise.
    #[default]
    Optional,
    /// SRTP or nothing: a plain offer gets 488, and so does any call whose signalling is not
    /// secure (its keys would travel in clear).
    Required,
}

impl SrtpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SrtpMode::Off => "off",
            SrtpMode::Optional => "optional",
            SrtpMode::Required => "required",
        }
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
    /// The suite and both keys when the stream is SRTP; `None` for plain RTP.
    pub srtp: Option<SrtpKeys>,
    /// The offer had an SDES stream we refused because the signalling is not secure, and a
    /// plain stream beside it was taken instead: worth a line in the log.
    pub insecure_sdes_refused: bool,
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
    /// Every stream offered is plain RTP, and `[media] srtp = "required"`. Maps to 488.
    #[error("SRTP is required, and the offer has no RTP/SAVP stream")]
    SrtpRequired,
    /// The only streams we could take are SRTP keyed by SDES, and the signalling is not
    /// secure: the keys crossed the network in clear, so SRTP would protect nothing. Maps to 488.
    #[error(
        "SDES keys offered over insecure signalling: SRTP refused (keys in clear SDP protect nothing; use SIP over TLS)"
    )]
    InsecureSignalling,
    /// An RTP/SAVP stream without an `a=crypto` line we can use (a suite we do not speak, an
    /// MKI, session parameters, a short lifetime), or an answer whose crypto line does not
    /// match our offer. Maps to 488.
    #[error("no usable a=crypto line (we take AES_CM_128_HMAC_SHA1_80/_32 without MKI)")]
    NoUsableCrypto,
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
            | SdpError::NoMediaAddress(_)
            | SdpError::SrtpRequired
            | SdpError::InsecureSignalling
            | SdpError::NoUsableCrypto => true,
        }
    }

    /// Whether the refusal is about media security (SRTP/SDES), which the log and the 488's
    /// Warning should spell out.
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            SdpError::SrtpRequired | SdpError::InsecureSignalling | SdpError::NoUsableCrypto
        )
    }

    /// How specific a reason is, to report the most useful one when no stream was usable.
    fn rank(&self) -> u8 {
        match self {
            SdpError::NoCommonCodec => 5,
            SdpError::NoUsableCrypto => 4,
            SdpError::InsecureSignalling => 3,
            SdpError::SrtpRequired => 2,
            SdpError::UnsupportedProfile(_) => 1,
            _ => 0,
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
    /// Our outstanding offer; an answer may only pick from its codecs (RFC 3264 6), and must
    /// be SRTP if it was.
    offered: Option<OurOffer>,
    /// What `[media] srtp` allows.
    srtp: SrtpMode,
    /// Our master key per suite (index [`Suite::index`]), drawn when first needed and kept for
    /// the session: a re-INVITE that keeps the suite keeps our key, so the sender's rollover
    /// counter (which restarts only with a new key) never repeats a keystream.
    keys: [Option<MasterKey>; 2],
    /// Whether the session's media is SRTP; `None` before the first exchange.
    current_srtp: Option<bool>,
}

/// What our last offer proposed.
#[derive(Clone, Debug)]
struct OurOffer {
    codecs: Vec<Codec>,
    /// `RTP/SAVP` with both suites (tag 1: _80, tag 2: _32), with our keys for them.
    srtp: bool,
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
            srtp: SrtpMode::Off,
            keys: [None, None],
            current_srtp: None,
        }
    }

    /// Sets what `[media] srtp` allows (a new session starts with [`SrtpMode::Off`]).
    pub fn with_srtp(mut self, mode: SrtpMode) -> Self {
        self.srtp = mode;
        self
    }

    /// Whether our outstanding offer is SRTP (its answer brings the peer's key).
    pub fn srtp_offered(&self) -> bool {
        self.offered.as_ref().is_some_and(|o| o.srtp)
    }

    /// Our key for `suite`, drawn once per session.
    fn our_key(&mut self, suite: Suite) -> MasterKey {
        *self.keys[suite.index()].get_or_insert_with(MasterKey::random)
    }

    /// The `o=` session version of the last SDP we produced (1 before any).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Answers `offer` (from an INVITE, re-INVITE or UPDATE): returns the answer SDP (CRLF line
    /// ends) and what was negotiated. `secure_signalling` says whether the offer came over a
    /// transport that keeps SDES keys secret (TLS): without it no SRTP stream is taken.
    ///
    /// The audio stream answered is the first SRTP stream we can take (when [`SrtpMode`] and the
    /// signalling allow), else the first plain one, that has a nonzero port and a codec we
    /// share; every other m-line gets port 0. When none qualifies, the error says why, preferring
    /// the most specific reason (no codec, no usable crypto line, insecure signalling, SRTP
    /// required, then profile, then no audio at all).
    pub fn answer(
        &mut self,
        offer: &[u8],
        secure_signalling: bool,
    ) -> Result<(String, Negotiated), SdpError> {
        let parsed = Parsed::new(offer)?;
        let (index, md, choice) = self.choose_stream(&parsed, secure_signalling)?;
        let srtp = choice.crypto.map(|(tag, suite, theirs)| {
            let ours = self.our_key(suite);
            (
                tag,
                SrtpKeys {
                    suite,
                    send: ours,
                    recv: theirs,
                },
            )
        });

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
                    raw.profile().as_str(),
                    &choice,
                    ptime_ms,
                    direction,
                );
                if let Some((tag, keys)) = &srtp {
                    push_crypto(&mut media, *tag, keys.suite, &keys.send);
                }
            } else {
                push_rejected(&mut media, raw);
            }
        }
        let sdp = self.finish(&media);
        self.current_srtp = Some(srtp.is_some());
        let negotiated = Negotiated {
            remote,
            codec: choice.codec,
            payload_type: choice.payload_type,
            dtmf_payload_type: choice.dtmf.as_ref().map(|(pt, _)| *pt),
            ptime_ms,
            direction,
            srtp: srtp.map(|(_, keys)| keys),
            insecure_sdes_refused: choice.insecure_sdes_refused,
        };
        Ok((sdp, negotiated))
    }

    /// The address of the stream [`LocalSession::answer`] would take from `offer` (`None` for
    /// a hold address), so the caller can pick a media address of the same family first.
    pub fn offered_address(
        &self,
        offer: &[u8],
        secure_signalling: bool,
    ) -> Result<Option<IpAddr>, SdpError> {
        let parsed = Parsed::new(offer)?;
        let (_, md, _) = self.choose_stream(&parsed, secure_signalling)?;
        Ok(connection_ip(md, &parsed.sdp)?.0)
    }

    /// Builds our offer for a late-offer INVITE (or a re-INVITE without SDP): our codecs in
    /// preference order, telephone-event at 101 with events 0-16, ptime 20, sendrecv.
    ///
    /// SRTP: a first offer is `RTP/SAVP` with both suites when [`SrtpMode`] allows SRTP and the
    /// signalling is secure, plain otherwise, and refused when SRTP is required but the
    /// signalling is not secure. A later offer (re-INVITE without SDP) keeps the session's
    /// protection, with the same keys.
    pub fn offer(&mut self, secure_signalling: bool) -> Result<String, SdpError> {
        let srtp = match (self.srtp, self.current_srtp) {
            (SrtpMode::Off, _) => false,
            (_, Some(current)) => current,
            (SrtpMode::Required, None) => true,
            (SrtpMode::Optional, None) => secure_signalling,
        };
        if srtp && !secure_signalling {
            return Err(SdpError::InsecureSignalling);
        }
        let codecs = self.prefs.clone();
        let mut pts: Vec<String> = codecs
            .iter()
            .map(|c| c.payload_type().to_string())
            .collect();
        pts.push(OFFER_DTMF_PT.to_string());

        let profile = if srtp { "RTP/SAVP" } else { "RTP/AVP" };
        let mut media = String::new();
        push_line(
            &mut media,
            format_args!("m=audio {} {profile} {}", self.rtp.port(), pts.join(" ")),
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
        if srtp {
            for suite in Suite::ALL {
                let key = self.our_key(suite);
                push_crypto(&mut media, offer_tag(suite), suite, &key);
            }
        }

        self.offered = Some(OurOffer { codecs, srtp });
        Ok(self.finish(&media))
    }

    /// Reads the peer's answer to our last [`offer`](Self::offer) (from the ACK of a late-offer
    /// INVITE). Without an outstanding offer the answer is checked against our preferences.
    pub fn accept_answer(&mut self, answer: &[u8]) -> Result<Negotiated, SdpError> {
        let parsed = Parsed::new(answer)?;
        let offered = self.offered.take().unwrap_or_else(|| OurOffer {
            codecs: self.prefs.clone(),
            srtp: self.current_srtp == Some(true),
        });

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
        // RFC 3264 6: the answer keeps the offer's profile, so SRTP answers SRTP.
        let profile = raw.profile();
        if profile == Profile::Unsupported || profile.is_srtp() != offered.srtp {
            return Err(SdpError::UnsupportedProfile(raw.proto.clone()));
        }
        let srtp = if offered.srtp {
            // RFC 4568 7.1.3: exactly one crypto line, with a tag and suite of our offer.
            let [line] = &raw.crypto[..] else {
                return Err(SdpError::NoUsableCrypto);
            };
            let crypto = parse_crypto(line).map_err(|_| SdpError::NoUsableCrypto)?;
            let suite = Suite::ALL
                .into_iter()
                .find(|s| offer_tag(*s) == crypto.tag && *s == crypto.suite)
                .ok_or(SdpError::NoUsableCrypto)?;
            Some(SrtpKeys {
                suite,
                send: self.our_key(suite),
                recv: crypto.key,
            })
        } else {
            None
        };
        let fmts = raw.payload_types();
        let (codec, payload_type) =
            pick_codec(md, &fmts, &offered.codecs).ok_or(SdpError::NoCommonCodec)?;
        let dtmf_payload_type = pick_telephone_event(md, &fmts, payload_type).map(|(pt, _)| pt);

        let (remote_ip, on_hold_address) = connection_ip(md, &parsed.sdp)?;
        same_family(remote_ip, self.rtp.ip())?;
        let mut answered_direction = Direction::from_sdp(md.direction);
        if on_hold_address {
            answered_direction = answered_direction.without_receive();
        }
        self.current_srtp = Some(srtp.is_some());
        Ok(Negotiated {
            remote: remote_ip.map(|ip| SocketAddr::new(ip, md.media.port)),
            codec,
            payload_type,
            dtmf_payload_type,
            ptime_ms: choose_ptime(md, &parsed.sdp),
            // Our offer was sendrecv, so the answer's direction is the peer's whole view.
            direction: answered_direction.mirrored(),
            srtp,
            insecure_sdes_refused: false,
        })
    }

    /// Picks the m-line to answer; see [`answer`](Self::answer) for the rule.
    fn choose_stream<'p>(
        &self,
        parsed: &'p Parsed,
        secure_signalling: bool,
    ) -> Result<(usize, &'p MediaDescription, Choice), SdpError> {
        let mut why = SdpError::NoAudio;
        let mut note = |e: SdpError| {
            if e.rank() > why.rank() {
                why = e;
            }
        };
        let mut plain: Option<(usize, &MediaDescription, Choice)> = None;
        let mut insecure_sdes_refused = false;
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
            let profile = raw.profile();
            let crypto = match profile {
                Profile::Unsupported => {
                    note(SdpError::UnsupportedProfile(raw.proto.clone()));
                    continue;
                }
                Profile::Savp | Profile::Savpf if self.srtp == SrtpMode::Off => {
                    note(SdpError::UnsupportedProfile(raw.proto.clone()));
                    continue;
                }
                Profile::Savp | Profile::Savpf if !secure_signalling => {
                    insecure_sdes_refused = true;
                    note(SdpError::InsecureSignalling);
                    continue;
                }
                Profile::Savp | Profile::Savpf => {
                    // RFC 4568 7.1.2: the first line, in the offerer's order, that we can use.
                    match raw.crypto.iter().find_map(|line| parse_crypto(line).ok()) {
                        Some(c) => Some((c.tag, c.suite, c.key)),
                        None => {
                            note(SdpError::NoUsableCrypto);
                            continue;
                        }
                    }
                }
                Profile::Avp | Profile::Avpf if self.srtp == SrtpMode::Required => {
                    note(SdpError::SrtpRequired);
                    continue;
                }
                Profile::Avp | Profile::Avpf => None,
            };
            // A plain stream is kept in case no SRTP stream follows it.
            if crypto.is_none() && plain.is_some() {
                continue;
            }
            let fmts = raw.payload_types();
            let Some((codec, payload_type)) = pick_codec(md, &fmts, &self.prefs) else {
                note(SdpError::NoCommonCodec);
                continue;
            };
            let choice = Choice {
                codec,
                payload_type,
                dtmf: pick_telephone_event(md, &fmts, payload_type),
                crypto,
                insecure_sdes_refused: false,
            };
            if choice.crypto.is_some() {
                return Ok((i, md, choice));
            }
            plain = Some((i, md, choice));
        }
        match plain {
            Some((i, md, mut choice)) => {
                choice.insecure_sdes_refused = insecure_sdes_refused;
                Ok((i, md, choice))
            }
            None => Err(why),
        }
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
    /// For an SRTP stream: the tag, suite and key of the crypto line we take.
    crypto: Option<(u32, Suite, MasterKey)>,
    /// An SDES stream was passed over for insecure signalling (see [`Negotiated`]).
    insecure_sdes_refused: bool,
}

/// Transport profile classes (RFC 3264 6: the answer uses the offer's profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    Avp,
    Avpf,
    /// RTP/SAVP (RFC 3711): SRTP keyed by SDES.
    Savp,
    /// RTP/SAVPF: SAVP plus RTCP feedback, which we never send; answered in kind.
    Savpf,
    Unsupported,
}

impl Profile {
    fn is_srtp(self) -> bool {
        matches!(self, Profile::Savp | Profile::Savpf)
    }

    /// The profile as the answer writes it.
    fn as_str(self) -> &'static str {
        match self {
            Profile::Avpf => "RTP/AVPF",
            Profile::Savp => "RTP/SAVP",
            Profile::Savpf => "RTP/SAVPF",
            Profile::Avp | Profile::Unsupported => "RTP/AVP",
        }
    }
}

/// An m-line's tokens as the peer wrote them: we echo them when refusing the stream and read the
/// format list from them (ezk stops reading formats at the first one that is not a `u8`).
struct RawMLine {
    media: String,
    proto: String,
    fmts: Vec<String>,
    /// The values of its `a=crypto` lines (RFC 4568 9.1: media level only), in order.
    crypto: Vec<String>,
}

impl RawMLine {
    fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }

    fn profile(&self) -> Profile {
        let is = |name: &str| self.proto.eq_ignore_ascii_case(name);
        if is("RTP/AVP") {
            Profile::Avp
        } else if is("RTP/AVPF") {
            // AVPF is AVP plus RTCP feedback, which we never send; plain RTP interoperates.
            Profile::Avpf
        } else if is("RTP/SAVP") {
            Profile::Savp
        } else if is("RTP/SAVPF") {
            Profile::Savpf
        } else {
            Profile::Unsupported
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
                    crypto: Vec::new(),
                });
            }
            "a" => {
                let (name, rest) = match value.split_once(':') {
                    Some((name, rest)) => (name, Some(rest)),
                    None => (value, None),
                };
                let name = name.trim().to_ascii_lowercase();
                // ezk does not read a=crypto; we keep each m-line's raw values ourselves.
                if name == "crypto"
                    && let (Some(m), Some(rest)) = (mlines.last_mut(), rest)
                {
                    m.crypto.push(rest.trim().to_owned());
                }
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

/// Our `a=crypto` line: the tag we answer or offer, the suite and our key, no lifetime (the
/// default, 2^48) and no MKI.
fn push_crypto(out: &mut String, tag: u32, suite: Suite, key: &MasterKey) {
    push_line(
        out,
        format_args!(
            "a=crypto:{tag} {} inline:{}",
            suite.name(),
            BASE64.encode(key.as_bytes())
        ),
    );
}

/// The tag of each suite in our offers.
fn offer_tag(suite: Suite) -> u32 {
    suite.index() as u32 + 1
}

/// The shortest master key lifetime (packets) we accept. We never re-key within a call, and
/// 2^20 packets last 5.8 hours at 20 ms (2.9 at 10 ms), beyond `max_call_secs`' default of an
/// hour; a shorter lifetime would have the peer re-key by re-INVITE in the middle of ordinary
/// calls, each switch-over dropping audio.
pub const MIN_KEY_LIFETIME: u64 = 1 << 20;

/// An `a=crypto` line we can use (RFC 4568 9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: Suite,
    pub key: MasterKey,
}

/// Why an `a=crypto` line was passed over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoSkip {
    #[error("malformed a=crypto: {0}")]
    Malformed(&'static str),
    #[error("crypto suite {0} not supported")]
    Suite(String),
    #[error("key method other than inline")]
    KeyMethod,
    #[error("more than one key (only useful with MKI)")]
    SeveralKeys,
    #[error("MKI not supported")]
    Mki,
    #[error("key lifetime {0} shorter than 2^20 packets")]
    Lifetime(u64),
    #[error("session parameter {0} not supported")]
    SessionParam(String),
}

/// Reads the value of one `a=crypto` attribute:
/// `<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>] [<session-params>]`.
///
/// Taken: tags of 1-9 digits, the suites of [`Suite`], exactly 30 bytes of key and salt, a
/// lifetime of at least [`MIN_KEY_LIFETIME`] (`2^n` or decimal, at most 2^48), and the session
/// parameter `WSH=` (a window-size hint; ours is 128). Passed over: any MKI (we do not read
/// one), several keys, and every other session parameter (`KDR`, `UNENCRYPTED_SRTP`,
/// `UNAUTHENTICATED_SRTP`, `FEC_ORDER`, ...), whose meaning we would not honour.
pub fn parse_crypto(value: &str) -> Result<Crypto, CryptoSkip> {
    let mut words = value.split_ascii_whitespace();
    let (Some(tag), Some(suite), Some(key_params)) = (words.next(), words.next(), words.next())
    else {
        return Err(CryptoSkip::Malformed("fewer than three fields"));
    };
    if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoSkip::Malformed("tag is not 1-9 digits"));
    }
    let tag: u32 = tag.parse().map_err(|_| CryptoSkip::Malformed("tag"))?;
    let suite = Suite::from_name(suite)
        .ok_or_else(|| CryptoSkip::Suite(suite.chars().take(40).collect()))?;
    if key_params.contains(';') {
        return Err(CryptoSkip::SeveralKeys);
    }
    let (method, info) = key_params
        .split_once(':')
        .ok_or(CryptoSkip::Malformed("key parameter without a method"))?;
    if !method.eq_ignore_ascii_case("inline") {
        return Err(CryptoSkip::KeyMethod);
    }
    let mut parts = info.split('|');
    let key_salt = parts.next().unwrap_or_default();
    let mut lifetime_seen = false;
    for part in parts {
        if part.contains(':') {
            return Err(CryptoSkip::Mki);
        }
        if lifetime_seen {
            return Err(CryptoSkip::Malformed("two lifetimes"));
        }
        lifetime_seen = true;
        let packets = parse_lifetime(part).ok_or(CryptoSkip::Malformed("lifetime"))?;
        if packets < MIN_KEY_LIFETIME {
            return Err(CryptoSkip::Lifetime(packets));
        }
    }
    let bytes = BASE64
        .decode(key_salt)
        .map_err(|_| CryptoSkip::Malformed("key is not base64"))?;
    let key = MasterKey::from_slice(&bytes)
        .ok_or(CryptoSkip::Malformed("key and salt are not 30 bytes"))?;
    debug_assert_eq!(bytes.len(), MASTER_LEN);
    for param in words {
        let is_wsh = param
            .split_once('=')
            .is_some_and(|(name, n)| name == "WSH" && n.parse::<u32>().is_ok());
        if !is_wsh {
            return Err(CryptoSkip::SessionParam(param.chars().take(40).collect()));
        }
    }
    Ok(Crypto { tag, suite, key })
}

/// A key lifetime: `2^n` or a decimal number of packets, at most 2^48 (RFC 3711 9.2).
fn parse_lifetime(text: &str) -> Option<u64> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_digit());
    let packets = match text.strip_prefix("2^") {
        Some(exp) if digits(exp) => 1u64.checked_shl(exp.parse::<u32>().ok()?.min(64))?,
        Some(_) => return None,
        None if digits(text) => text.parse().ok()?,
        None => return None,
    };
    (packets <= 1 << 48).then_some(packets)
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
        let (sdp, negotiated) = local()
            .answer(offer.as_bytes(), false)
            .expect("answerable offer");
        check_wire_format(&sdp);
        (sdp, negotiated)
    }

    fn answer_err(offer: &str) -> SdpError {
        local()
            .answer(offer.as_bytes(), false)
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
            ours.offered_address(v6.as_bytes(), false).unwrap(),
            Some("2001:db8::1".parse().unwrap())
        );
        let err = ours.answer(v6.as_bytes(), false).unwrap_err();
        assert!(matches!(err, SdpError::NoMediaAddress("IPv6")), "{err}");
        assert!(err.is_not_acceptable());
        let mut ours6 = LocalSession::new(1, "[2001:db8::10]:20000".parse().unwrap(), Vec::new());
        let (sdp, n) = ours6.answer(v6.as_bytes(), false).unwrap();
        assert!(sdp.contains("c=IN IP6 2001:db8::10"), "{sdp}");
        assert_eq!(n.remote, Some("[2001:db8::1]:5000".parse().unwrap()));
        // A hold address (0.0.0.0) says nothing about the family.
        let hold = v6.replace("c=IN IP6 2001:db8::1", "c=IN IP4 0.0.0.0");
        assert_eq!(ours6.offered_address(hold.as_bytes(), false).unwrap(), None);
        ours6.answer(hold.as_bytes(), false).unwrap();
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
                srtp: None,
                insecure_sdes_refused: false,
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
        let (sdp, n) = session.answer(offer.as_bytes(), false).unwrap();
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

    fn srtp_session(mode: SrtpMode) -> LocalSession {
        local().with_srtp(mode)
    }

    fn crypto_lines(sdp: &str) -> Vec<&str> {
        sdp.lines().filter(|l| l.starts_with("a=crypto:")).collect()
    }

    /// The key of our `a=crypto` line with `tag`.
    fn our_key(sdp: &str, tag: u32) -> MasterKey {
        let line = crypto_lines(sdp)
            .into_iter()
            .find(|l| l.starts_with(&format!("a=crypto:{tag} ")))
            .expect("our crypto line");
        parse_crypto(line.strip_prefix("a=crypto:").unwrap())
            .expect("we write what we read")
            .key
    }

    fn b64_key(text: &str) -> MasterKey {
        MasterKey::from_slice(&BASE64.decode(text).unwrap()).unwrap()
    }

    #[test]
    fn sdes_offer_over_tls_gets_its_tag_echoed_and_a_fresh_key_of_ours() {
        let offer = include_str!("../../tests/data/sdp/srtp_savp.sdp");
        let mut s = srtp_session(SrtpMode::Optional);
        let (sdp, n) = s.answer(offer.as_bytes(), true).unwrap();
        check_wire_format(&sdp);
        assert_eq!(mlines(&sdp), ["m=audio 40000 RTP/SAVP 0 101"]);
        let crypto = crypto_lines(&sdp);
        assert_eq!(crypto.len(), 1, "{sdp}");
        assert!(crypto[0].starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert_eq!(
            crypto[0].len(),
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:".len() + 40
        );
        let keys = n.srtp.expect("SRTP negotiated");
        assert_eq!(keys.suite, Suite::AesCm128HmacSha1_80);
        assert_eq!(
            keys.recv,
            b64_key("vXMep/SIW4iMD21StWgrmy024dJZfOAM7qFFJfsJ")
        );
        assert_eq!(keys.send, our_key(&sdp, 1));
        assert_ne!(keys.send, keys.recv);
        assert!(!n.insecure_sdes_refused);
        // A refresh gets the same answer, key included; another call gets another key.
        let (again, n2) = s.answer(offer.as_bytes(), true).unwrap();
        assert_eq!((again, n2), (sdp.clone(), n.clone()));
        let (other, _) = srtp_session(SrtpMode::Required)
            .answer(offer.as_bytes(), true)
            .unwrap();
        assert_ne!(our_key(&other, 1), keys.send);
        // SAVPF is answered in kind.
        let savpf = offer.replace("RTP/SAVP", "RTP/SAVPF");
        let (sdp, n) = s.answer(savpf.as_bytes(), true).unwrap();
        assert_eq!(mlines(&sdp), ["m=audio 40000 RTP/SAVPF 0 101"]);
        assert_eq!(
            n.srtp.unwrap().send,
            keys.send,
            "same suite, same key of ours"
        );
    }

    #[test]
    fn sdes_over_insecure_signalling_is_refused_and_a_plain_stream_beside_it_taken() {
        let offer = include_str!("../../tests/data/sdp/srtp_savp.sdp");
        for mode in [SrtpMode::Optional, SrtpMode::Required] {
            let err = srtp_session(mode)
                .answer(offer.as_bytes(), false)
                .unwrap_err();
            assert!(
                matches!(err, SdpError::InsecureSignalling),
                "{mode:?}: {err:?}"
            );
            assert!(err.is_not_acceptable() && err.is_security());
            assert!(err.to_string().contains("insecure signalling"));
        }
        // Best effort (plain line first, SAVP second): over UDP the plain one, and the log
        // hears of the SDES line refused; over TLS the SRTP one, whatever the order.
        let both = include_str!("../../tests/data/sdp/best_effort_srtp.sdp");
        let (sdp, n) = srtp_session(SrtpMode::Optional)
            .answer(both.as_bytes(), false)
            .unwrap();
        assert_eq!(
            mlines(&sdp),
            ["m=audio 40000 RTP/AVP 8 101", "m=audio 0 RTP/SAVP 8 101"]
        );
        assert!(crypto_lines(&sdp).is_empty());
        assert_eq!((n.srtp, n.insecure_sdes_refused), (None, true));
        assert_eq!(n.remote, v4(192, 0, 2, 30, 30000));
        let (sdp, n) = srtp_session(SrtpMode::Optional)
            .answer(both.as_bytes(), true)
            .unwrap();
        assert_eq!(
            mlines(&sdp),
            ["m=audio 0 RTP/AVP 8 101", "m=audio 40000 RTP/SAVP 8 101"]
        );
        assert_eq!(n.remote, v4(192, 0, 2, 30, 30002));
        assert_eq!(crypto_lines(&sdp).len(), 1);
        assert!(crypto_lines(&sdp)[0].starts_with("a=crypto:7 AES_CM_128_HMAC_SHA1_80 "));
        // Off: the SAVP line is refused in place as it always was.
        let (sdp, n) = local().answer(both.as_bytes(), true).unwrap();
        assert_eq!(mlines(&sdp)[1], "m=audio 0 RTP/SAVP 8 101");
        assert_eq!((n.srtp, n.insecure_sdes_refused), (None, false));
    }

    #[test]
    fn required_refuses_plain_offers_and_optional_takes_them() {
        let plain = include_str!("../../tests/data/sdp/baresip.sdp");
        for secure in [false, true] {
            let err = srtp_session(SrtpMode::Required)
                .answer(plain.as_bytes(), secure)
                .unwrap_err();
            assert!(matches!(err, SdpError::SrtpRequired), "{err:?}");
            assert!(err.is_not_acceptable());
            let (_, n) = srtp_session(SrtpMode::Optional)
                .answer(plain.as_bytes(), secure)
                .unwrap();
            assert_eq!(n.srtp, None);
        }
        // A plain line beside a usable SAVP one is refused in place.
        let both = include_str!("../../tests/data/sdp/best_effort_srtp.sdp");
        let (sdp, n) = srtp_session(SrtpMode::Required)
            .answer(both.as_bytes(), true)
            .unwrap();
        assert_eq!(mlines(&sdp)[0], "m=audio 0 RTP/AVP 8 101");
        assert!(n.srtp.is_some());
    }

    #[test]
    fn real_world_crypto_offers_pick_the_first_usable_line() {
        let pick = |file: &str| {
            let (sdp, n) = srtp_session(SrtpMode::Optional)
                .answer(file.as_bytes(), true)
                .unwrap_or_else(|e| panic!("{e}: {file}"));
            check_wire_format(&sdp);
            let line = crypto_lines(&sdp)[0].to_owned();
            (line, n.srtp.unwrap())
        };
        // Asterisk: both suites, no lifetime; the first.
        let (line, keys) = pick(include_str!("../../tests/data/sdp/asterisk_srtp.sdp"));
        assert!(
            line.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 "),
            "{line}"
        );
        assert_eq!(
            keys.recv,
            b64_key("muSVTqTNpI3LPXn653zB2UZNRldg0i7klxPI+0bG")
        );
        // FreeSWITCH: GCM and AES-256 first, which we do not speak.
        let (line, keys) = pick(include_str!("../../tests/data/sdp/freeswitch_srtp.sdp"));
        assert!(
            line.starts_with("a=crypto:4 AES_CM_128_HMAC_SHA1_80 "),
            "{line}"
        );
        assert_eq!(
            keys.recv,
            b64_key("qce5DSp8/aHZbsUooUQMypy7zVcot8aZYber5eKY")
        );
        // Cisco: _32 first, with a lifetime of 2^31 (we never send that many).
        let (line, keys) = pick(include_str!("../../tests/data/sdp/cisco_srtp.sdp"));
        assert!(
            line.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_32 "),
            "{line}"
        );
        assert_eq!(keys.suite, Suite::AesCm128HmacSha1_32);
        // Polycom style: an MKI, a 2^10 lifetime, UNENCRYPTED_SRTCP are passed over; a
        // window-size hint is not.
        let (line, keys) = pick(include_str!("../../tests/data/sdp/polycom_srtp.sdp"));
        assert!(
            line.starts_with("a=crypto:4 AES_CM_128_HMAC_SHA1_32 "),
            "{line}"
        );
        assert!(
            !line.contains("WSH"),
            "our line has no session parameters: {line}"
        );
        assert_eq!(
            keys.recv,
            b64_key("Gs7+JKaAdxbtSY4p/1z7PXEuzS0fhpdwxFAsymwR")
        );
    }

    #[test]
    fn crypto_attribute_parsing() {
        let key = "muSVTqTNpI3LPXn653zB2UZNRldg0i7klxPI+0bG";
        let ok = |v: &str| parse_crypto(v).unwrap_or_else(|e| panic!("{v}: {e}"));
        let c = ok(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}"));
        assert_eq!(
            (c.tag, c.suite, c.key),
            (1, Suite::AesCm128HmacSha1_80, b64_key(key))
        );
        assert_eq!(
            ok(&format!(
                "123456789 aes_cm_128_hmac_sha1_32 INLINE:{key}|2^20"
            ))
            .tag,
            123456789
        );
        ok(&format!("2 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^48"));
        ok(&format!(
            "2 AES_CM_128_HMAC_SHA1_80 inline:{key}|1048576 WSH=64"
        ));
        ok(&format!("2  AES_CM_128_HMAC_SHA1_80\tinline:{key}"));
        let skip = |v: String| parse_crypto(&v).unwrap_err();
        use CryptoSkip::{KeyMethod, Lifetime, Malformed, Mki, SessionParam, SeveralKeys};
        assert_eq!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:4")),
            Mki
        );
        assert_eq!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:4")),
            Mki
        );
        assert_eq!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^19")),
            Lifetime(1 << 19)
        );
        assert_eq!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1000")),
            Lifetime(1000)
        );
        assert!(matches!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^49")),
            Malformed(_)
        ));
        assert!(matches!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^x")),
            Malformed(_)
        ));
        assert!(matches!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|2^20")),
            Malformed(_)
        ));
        assert_eq!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key} KDR=0")),
            SessionParam("KDR=0".into())
        );
        assert_eq!(
            skip(format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP"
            )),
            SessionParam("UNENCRYPTED_SRTP".into())
        );
        assert_eq!(
            skip(format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{key};inline:{key}"
            )),
            SeveralKeys
        );
        assert_eq!(
            skip(format!("1 AES_CM_128_HMAC_SHA1_80 uri:{key}")),
            KeyMethod
        );
        assert_eq!(
            skip(format!("1 AES_256_CM_HMAC_SHA1_80 inline:{key}")),
            CryptoSkip::Suite("AES_256_CM_HMAC_SHA1_80".into())
        );
        for bad in [
            String::new(),
            "1 AES_CM_128_HMAC_SHA1_80".into(),
            format!("x AES_CM_128_HMAC_SHA1_80 inline:{key}"),
            format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{key}"),
            "1 AES_CM_128_HMAC_SHA1_80 inline:not*base64".into(),
            "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA".into(),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline{key}"),
        ] {
            assert!(matches!(parse_crypto(&bad), Err(Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn savp_without_a_usable_crypto_line_is_488() {
        let bad = offer_with(
            "",
            "audio 5000 RTP/SAVP 0",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:muSVTqTNpI3LPXn653zB2UZNRldg0i7klxPI+0bG|2^31|1:1\r\n",
        );
        let err = srtp_session(SrtpMode::Optional)
            .answer(bad.as_bytes(), true)
            .unwrap_err();
        assert!(matches!(err, SdpError::NoUsableCrypto), "{err:?}");
        let none = offer_with("", "audio 5000 RTP/SAVP 0", "");
        assert!(matches!(
            srtp_session(SrtpMode::Optional).answer(none.as_bytes(), true),
            Err(SdpError::NoUsableCrypto)
        ));
        // A crypto line on RTP/AVP means nothing (RFC 4568 is for SAVP): plain, no crypto.
        let avp = offer_with(
            "",
            "audio 5000 RTP/AVP 0",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:muSVTqTNpI3LPXn653zB2UZNRldg0i7klxPI+0bG\r\n",
        );
        let (sdp, n) = srtp_session(SrtpMode::Optional)
            .answer(avp.as_bytes(), true)
            .unwrap();
        assert!(crypto_lines(&sdp).is_empty() && n.srtp.is_none());
        // Session-level crypto is not RFC 4568's and is not read.
        let session = offer_with(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:muSVTqTNpI3LPXn653zB2UZNRldg0i7klxPI+0bG\r\n",
            "audio 5000 RTP/SAVP 0",
            "",
        );
        assert!(matches!(
            srtp_session(SrtpMode::Optional).answer(session.as_bytes(), true),
            Err(SdpError::NoUsableCrypto)
        ));
    }

    #[test]
    fn our_srtp_offer_and_its_answer() {
        // Over TLS, optional: SAVP with both suites, tags 1 and 2.
        let mut s = srtp_session(SrtpMode::Optional);
        let offer = s.offer(true).unwrap();
        check_wire_format(&offer);
        assert!(s.srtp_offered());
        assert_eq!(mlines(&offer), ["m=audio 40000 RTP/SAVP 0 8 101"]);
        let lines = crypto_lines(&offer);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(lines[1].starts_with("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
        assert_ne!(our_key(&offer, 1), our_key(&offer, 2));
        let theirs = "CT3QFUqUHGN4sFm8OQm9iHYBV0rPpG93b5v4cQRD";
        let answer = |profile: &str, crypto: &str| {
            format!(
                "v=0\r\no=- 5 5 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\nt=0 0\r\n\
                 m=audio 10036 {profile} 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{crypto}"
            )
        };
        let good = answer(
            "RTP/SAVP",
            &format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{theirs}\r\n"),
        );
        let n = s.accept_answer(good.as_bytes()).unwrap();
        let keys = n.srtp.unwrap();
        assert_eq!(keys.suite, Suite::AesCm128HmacSha1_32);
        assert_eq!(
            (keys.send, keys.recv),
            (our_key(&offer, 2), b64_key(theirs))
        );
        // A re-offer (re-INVITE without SDP) keeps SRTP and our keys.
        let again = s.offer(true).unwrap();
        assert_eq!(our_key(&again, 2), keys.send);
        assert_eq!(our_key(&again, 1), our_key(&offer, 1));
        // Bad answers: plain, a tag we did not offer for that suite, two lines, none.
        for bad in [
            answer("RTP/AVP", ""),
            answer(
                "RTP/SAVP",
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{theirs}\r\n"),
            ),
            answer(
                "RTP/SAVP",
                &format!("a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{theirs}\r\n"),
            ),
            answer(
                "RTP/SAVP",
                &format!(
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{theirs}\r\n\
                     a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{theirs}\r\n"
                ),
            ),
            answer("RTP/SAVP", ""),
        ] {
            s.offer(true).unwrap();
            let err = s.accept_answer(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    err,
                    SdpError::UnsupportedProfile(_) | SdpError::NoUsableCrypto
                ),
                "{bad}: {err:?}"
            );
        }
        // Optional over UDP: a plain offer, no keys in clear. Required over UDP: none at all.
        let mut udp = srtp_session(SrtpMode::Optional);
        let plain = udp.offer(false).unwrap();
        assert!(crypto_lines(&plain).is_empty() && !udp.srtp_offered());
        assert_eq!(mlines(&plain), ["m=audio 40000 RTP/AVP 0 8 101"]);
        let sdes_answer = answer(
            "RTP/SAVP",
            &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{theirs}\r\n"),
        );
        assert!(matches!(
            udp.accept_answer(sdes_answer.as_bytes()),
            Err(SdpError::UnsupportedProfile(_))
        ));
        assert!(matches!(
            srtp_session(SrtpMode::Required).offer(false),
            Err(SdpError::InsecureSignalling)
        ));
        assert!(
            srtp_session(SrtpMode::Required)
                .offer(true)
                .unwrap()
                .contains("RTP/SAVP")
        );
        // Off over TLS: plain, as ever.
        assert!(local().offer(true).unwrap().contains("RTP/AVP 0 8 101"));
        // A session answered in plain RTP re-offers plain, even over TLS.
        let mut plain_call = srtp_session(SrtpMode::Optional);
        plain_call.answer(BARESIP.as_bytes(), true).unwrap();
        assert!(crypto_lines(&plain_call.offer(true).unwrap()).is_empty());
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
        let (_, n) = alaw_only.answer(BARESIP.as_bytes(), false).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));

        let mut alaw_first = LocalSession::new(
            1,
            "192.0.2.9:4000".parse().unwrap(),
            vec![Codec::Pcma, Codec::Pcmu],
        );
        let (_, n) = alaw_first.answer(BARESIP.as_bytes(), false).unwrap();
        assert_eq!(n.codec, Codec::Pcmu, "baresip lists 0 before 8");

        let ulaw_offer = include_str!("../../tests/data/sdp/sipp_uac.sdp");
        assert!(matches!(
            alaw_only.answer(ulaw_offer.as_bytes(), false),
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
            let err = local().answer(body, false).expect_err("garbage must fail");
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

        let (first, _) = s.answer(active.as_bytes(), false).unwrap();
        assert_eq!(version_of(&first), 1);
        // Refresh re-INVITE with the same offer: identical answer, same version.
        let (again, _) = s.answer(active.as_bytes(), false).unwrap();
        assert_eq!(again, first);
        // Hold changes our direction to recvonly: new version.
        let (held, _) = s.answer(hold.as_bytes(), false).unwrap();
        assert_eq!(version_of(&held), 2);
        let (held_again, _) = s.answer(hold.as_bytes(), false).unwrap();
        assert_eq!(version_of(&held_again), 2);
        // Unhold: back to the first body, but it is a change from the last one we sent.
        let (resumed, _) = s.answer(active.as_bytes(), false).unwrap();
        assert_eq!(version_of(&resumed), 3);
        assert_eq!(resumed.replace("ivrd 4242 3", "ivrd 4242 1"), first);
        // A different offer that leads to the same answer does not bump.
        let (same, _) = s
            .answer(BARESIP.replace("0-15", "0-16").as_bytes(), false)
            .unwrap();
        assert_eq!(version_of(&same), 3);
        assert_eq!(s.version(), 3);
        // Our own offer differs from the last answer.
        let offer = s.offer(false).unwrap();
        assert_eq!(version_of(&offer), 4);
        assert_eq!(version_of(&s.offer(false).unwrap()), 4);
    }

    #[test]
    fn late_offer_text() {
        let mut s = local();
        let offer = s.offer(false).unwrap();
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
        assert!(mlines(&alaw.offer(false).unwrap()) == ["m=audio 4000 RTP/AVP 8 101"]);
    }

    #[test]
    fn late_offer_answer_from_ack() {
        let mut s = local();
        s.offer(false).unwrap();
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
                srtp: None,
                insecure_sdes_refused: false,
            }
        );

        // The peer answered sendonly: we only receive.
        s.offer(false).unwrap();
        let sendonly = answer.replace("a=ptime:30\r\n", "a=sendonly\r\n");
        let n = s.accept_answer(sendonly.as_bytes()).unwrap();
        assert_eq!((n.direction, n.ptime_ms), (Direction::RecvOnly, 20));

        // No DTMF in the answer.
        s.offer(false).unwrap();
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

        s.offer(false).unwrap();
        let refused = format!("{base}m=audio 0 RTP/AVP 0\r\n");
        assert!(matches!(
            s.accept_answer(refused.as_bytes()),
            Err(SdpError::NoAudio)
        ));

        s.offer(false).unwrap();
        let g729 = format!("{base}m=audio 5000 RTP/AVP 18\r\n");
        assert!(matches!(
            s.accept_answer(g729.as_bytes()),
            Err(SdpError::NoCommonCodec)
        ));

        // PCMA is a codec we support, but it was not in this offer.
        let mut ulaw = LocalSession::new(1, "192.0.2.9:4000".parse().unwrap(), vec![Codec::Pcmu]);
        ulaw.offer(false).unwrap();
        let alaw = format!("{base}m=audio 5000 RTP/AVP 8\r\n");
        assert!(matches!(
            ulaw.accept_answer(alaw.as_bytes()),
            Err(SdpError::NoCommonCodec)
        ));

        s.offer(false).unwrap();
        let srtp = format!("{base}m=audio 5000 RTP/SAVP 0\r\n");
        assert!(matches!(
            s.accept_answer(srtp.as_bytes()),
            Err(SdpError::UnsupportedProfile(_))
        ));

        s.offer(false).unwrap();
        assert!(matches!(s.accept_answer(b"junk"), Err(SdpError::Parse(_))));
    }

    #[test]
    fn prefs_are_deduplicated_and_default_to_both() {
        let mut s = LocalSession::new(1, "192.0.2.9:4000".parse().unwrap(), vec![]);
        assert_eq!(
            mlines(&s.offer(false).unwrap()),
            ["m=audio 4000 RTP/AVP 0 8 101"]
        );
        let mut s = LocalSession::new(
            1,
            "192.0.2.9:4000".parse().unwrap(),
            vec![Codec::Pcma, Codec::Pcma, Codec::Pcmu],
        );
        assert_eq!(
            mlines(&s.offer(false).unwrap()),
            ["m=audio 4000 RTP/AVP 8 0 101"]
        );
    }

    #[test]
    fn ipv4_mapped_local_address_is_advertised_as_ip4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:4000".parse().unwrap();
        let mut s = LocalSession::new(1, mapped, vec![]);
        assert!(
            s.offer(false)
                .unwrap()
                .contains("\r\nc=IN IP4 192.0.2.9\r\n")
        );
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

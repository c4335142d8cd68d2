//! One call: the glue between its dialog, its media stream and the flow that drives it.
//!
//! A call is one tokio task. It answers the INVITE (SDP answer, optional ringing), then hands
//! a [`Call`] to a call flow, which uses the [`CallIo`] API: play prompts (with or without
//! barge-in), collect digits, hang up. While the flow waits, the call keeps serving its dialog:
//! re-INVITEs (hold, session refresh), INFO digits, BYE and CANCEL, the RTP timeout and the
//! maximum call duration all surface here, and every wait ends with the reason the call ended
//! if it did. Digits that arrive between waits are kept (type-ahead), de-duplicated across
//! methods (the same press by RFC 4733 and in-band counts once).

use crate::media::dtmf::{Digit, DigitDedup, DtmfMethod, parse_info};
use crate::media::engine::{
    MediaEngine, MediaError, MediaEvent, Protection, StreamHandle, StreamParams,
};
use crate::media::prompt::{Prompt, PromptLibrary};
use crate::redact::mask_number;
use crate::sip::core::{ACCEPT, ALLOW, CoreHandle, NewCall, SipEvent, TxId, new_branch};
use crate::sip::dialog::{Dialog, fmt_host_port};
use crate::sip::message::{Message, ResponseBuilder, extract_uri, reason_phrase, uri_user};
use crate::sip::peers::Trust;
use crate::sip::sdp::{Codec, Direction, LocalSession, Negotiated, SdpError, SrtpMode};
use crate::sip::session_timer::{self, Due, SessionTimer};
use crate::sip::transport::{Flow, Protocol, RequestTarget};
use bytes::Bytes;
use ezk_sip_types::{Method, Name};
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub mod outbound;

/// Keys kept while no collect is waiting for them (type-ahead).
const MAX_TYPEAHEAD: usize = 32;

/// Why a call ended (also the outcome recorded for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEnd {
    /// The flow finished and we hung up.
    Completed,
    /// The caller was transferred (REFER succeeded) and we hung up our leg.
    Transferred,
    /// The caller sent BYE.
    CallerHangup,
    /// The caller sent CANCEL before we answered.
    Cancelled,
    /// No RTP from the caller for the configured time.
    RtpTimeout,
    /// The maximum call duration was reached.
    MaxDuration,
    /// Our 2xx was never acknowledged (`[sip] ack_timeout_ms`). No BYE: the dialog was never
    /// confirmed, and the only proof that the INVITE's sender is where its Contact says is
    /// the ACK that never came.
    AckTimeout,
    /// The 2xx to a re-INVITE was never acknowledged (64*T1): the session ends with a BYE.
    ReinviteAckTimeout,
    /// The session timer ran out (RFC 4028): the refresh the caller owed did not come, or
    /// ours failed.
    SessionExpired,
    /// The daemon is shutting down and the drain deadline passed.
    Shutdown,
    /// The call could not be set up (SDP, media ports); the INVITE got an error response.
    Rejected(u16),
}

impl CallEnd {
    /// The names [`CallEnd::as_str`] gives, each once (for `ivrd audit --outcome`: a call
    /// whose flow never ran is audited with how it ended). A new variant goes here too.
    pub const NAMES: [&'static str; 11] = [
        "completed",
        "transferred",
        "caller-hangup",
        "cancelled",
        "rtp-timeout",
        "max-duration",
        "ack-timeout",
        "reinvite-ack-timeout",
        "session-expired",
        "shutdown",
        "rejected",
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CallEnd::Completed => "completed",
            CallEnd::Transferred => "transferred",
            CallEnd::CallerHangup => "caller-hangup",
            CallEnd::Cancelled => "cancelled",
            CallEnd::RtpTimeout => "rtp-timeout",
            CallEnd::MaxDuration => "max-duration",
            CallEnd::AckTimeout => "ack-timeout",
            CallEnd::ReinviteAckTimeout => "reinvite-ack-timeout",
            CallEnd::SessionExpired => "session-expired",
            CallEnd::Shutdown => "shutdown",
            CallEnd::Rejected(_) => "rejected",
        }
    }

    /// Whether we still owe the caller a BYE when the call ends this way.
    fn needs_bye(&self) -> bool {
        matches!(
            self,
            CallEnd::Completed
                | CallEnd::Transferred
                | CallEnd::RtpTimeout
                | CallEnd::MaxDuration
                | CallEnd::ReinviteAckTimeout
                | CallEnd::SessionExpired
                | CallEnd::Shutdown
        )
    }
}

/// Facts about a call a flow can use.
#[derive(Debug, Clone)]
pub struct CallFacts {
    pub call_id: String,
    /// The caller's number or user: the P-Asserted-Identity (RFC 3325) of a trusted peer,
    /// else the From URI's user part.
    pub caller: String,
    /// Who the per-caller limits count against. From is whatever a caller wants it to be, so
    /// it counts only from a trusted peer (which vouches for it, or asserts an identity);
    /// an untrusted source is counted by its address.
    pub limit_key: String,
    /// The caller's display name, if the From header had one.
    pub caller_name: Option<String>,
    /// The dialed number or user (Request-URI user part).
    pub called: String,
    pub request_uri: String,
    pub from_uri: String,
    pub remote: SocketAddr,
    pub started: SystemTime,
}

impl CallFacts {
    pub fn from_invite(invite: &Message, remote: SocketAddr, trust: Trust) -> CallFacts {
        let from_raw = invite.header(&Name::FROM).unwrap_or_default();
        let from_uri = extract_uri(from_raw).to_string();
        let name = from_raw
            .split('<')
            .next()
            .filter(|_| from_raw.contains('<'))
            .map(|n| n.trim().trim_matches('"').trim().to_string())
            .filter(|n| !n.is_empty());
        let request_uri = invite.request_uri().unwrap_or_default().to_string();
        let from_user = uri_user(&from_uri).unwrap_or_default().to_string();
        let asserted = trust
            .is_trusted()
            .then(|| asserted_identity(invite))
            .flatten();
        let caller = asserted.unwrap_or(from_user);
        let limit_key = if trust.is_trusted() {
            caller.clone()
        } else {
            format!("ip:{}", remote.ip().to_canonical())
        };
        CallFacts {
            call_id: invite.call_id.to_string(),
            caller,
            limit_key,
            caller_name: name,
            called: uri_user(&request_uri).unwrap_or_default().to_string(),
            request_uri,
            from_uri,
            remote,
            started: SystemTime::now(),
        }
    }
}

/// The caller a trusted peer asserts (RFC 3325 P-Asserted-Identity): the user part of the
/// first `sip:`/`sips:` or `tel:` URI among its values. Only ever read from a trusted peer.
fn asserted_identity(invite: &Message) -> Option<String> {
    invite
        .headers
        .get_raw(&Name::custom(
            "P-Asserted-Identity",
            &["P-Asserted-Identity"],
        ))
        .flat_map(|v| crate::sip::message::split_header_list(v))
        .filter_map(|v| uri_user(extract_uri(&v)).map(str::to_string))
        .find(|u| !u.is_empty())
}

/// How digits are collected.
#[derive(Debug, Clone)]
pub struct CollectSpec {
    pub min: usize,
    pub max: usize,
    /// A key that ends input early and is not part of it (usually `#`).
    pub terminator: Option<char>,
    /// Keys that, pressed first, end the collection at once as [`CollectEnd::Escape`]
    /// (e.g. `*` for "send me a new text"); pressed later they are ordinary keys.
    pub escape: Vec<char>,
    /// How long to wait for the first key after the prompt ends.
    pub first_digit_timeout: Duration,
    /// How long to wait for each further key.
    pub inter_digit_timeout: Duration,
}

/// How a collection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectEnd {
    Terminator,
    MaxDigits,
    Timeout,
    /// An escape key (a hotkey) was pressed first; the digits are that key.
    Escape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub digits: String,
    pub ended_by: CollectEnd,
    /// The methods the collected digits arrived by, in first-seen order.
    pub methods: Vec<DtmfMethod>,
}

/// The rules of a digit collection, without IO or clock, shared by the live call and the
/// simulator so the two cannot drift apart: the terminator ends input (and is not part of
/// it), `max` digits end it, and the caller's timer decides when silence ends it. After each
/// key that does not end the collection, the caller restarts its inter-digit timer.
pub struct DigitCollector<'a> {
    spec: &'a CollectSpec,
    digits: String,
    methods: Vec<DtmfMethod>,
}

impl<'a> DigitCollector<'a> {
    pub fn new(spec: &'a CollectSpec) -> Self {
        DigitCollector {
            spec,
            digits: String::new(),
            methods: Vec::new(),
        }
    }

    /// Takes one key; `Some` when it completes the collection.
    pub fn push(&mut self, key: char, method: DtmfMethod) -> Option<Collected> {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        if Some(key) == self.spec.terminator {
            return Some(self.finish(CollectEnd::Terminator));
        }
        if self.digits.is_empty() && self.spec.escape.contains(&key) {
            self.digits.push(key);
            return Some(self.finish(CollectEnd::Escape));
        }
        self.digits.push(key);
        (self.digits.len() >= self.spec.max).then(|| self.finish(CollectEnd::MaxDigits))
    }

    /// The caller's timer ran out.
    pub fn timed_out(mut self) -> Collected {
        self.finish(CollectEnd::Timeout)
    }

    fn finish(&mut self, ended_by: CollectEnd) -> Collected {
        Collected {
            digits: std::mem::take(&mut self.digits),
            ended_by,
            methods: std::mem::take(&mut self.methods),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayOutcome {
    /// The caller pressed a key and the prompt stopped (barge-in).
    pub interrupted: bool,
}

/// What a call flow can do with a call. The live [`Call`] implements it over SIP and RTP;
/// the simulator implements it with scripted keys and a virtual clock.
pub trait CallIo {
    fn facts(&self) -> &CallFacts;
    /// The time now, for time conditions: the clock on a live call, the virtual clock (from
    /// the simulated call's start) in a simulation.
    fn wall_clock(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }
    fn language(&self) -> &str;
    fn set_language(&mut self, language: &str);
    /// Plays prompts by name in the call's language; with `barge_in`, a key stops playback
    /// (and is kept for the next collect).
    fn play(
        &mut self,
        prompts: &[&str],
        barge_in: bool,
    ) -> impl Future<Output = Result<PlayOutcome, CallEnd>> + Send;
    fn collect(
        &mut self,
        spec: &CollectSpec,
    ) -> impl Future<Output = Result<Collected, CallEnd>> + Send;
    /// Runs `task` (an SMS send, a lookup) while the caller hears `prompts`, so nobody waits in
    /// silence; if the task outlasts the prompts, the wait tone repeats until it is done.
    /// Returns once both the task and the prompts have finished.
    fn run_with_prompt<T, F>(
        &mut self,
        prompts: &[&str],
        task: F,
    ) -> impl Future<Output = Result<T, CallEnd>> + Send
    where
        T: Send,
        F: Future<Output = T> + Send;
    /// Transfers the caller with REFER (RFC 3515) to `target` (a SIP URI), carrying `headers`
    /// in the Refer-To URI so the new INVITE has them. On success the call is over (we send
    /// BYE); on failure the call goes on and the flow decides.
    fn transfer(
        &mut self,
        target: &str,
        headers: &[(String, String)],
    ) -> impl Future<Output = Result<TransferOutcome, CallEnd>> + Send;
}

/// What became of the call's last transfer, for the audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// The transfer target (the Refer-To URI without its headers).
    pub target: String,
    /// The transferee's last reported status (sipfrag), or the REFER's own final response
    /// when it was refused; `None` when nothing came.
    pub status: Option<u16>,
    /// From sending the REFER to the outcome, in milliseconds.
    pub ms: u64,
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The target answered (final 2xx sipfrag); the call is handed over and will end.
    Transferred,
    /// The REFER was refused, the target failed, or nothing final came in time.
    Failed { status: Option<u16>, reason: String },
}

/// What a call needs from the daemon, shared by all calls.
#[derive(Clone)]
pub struct CallContext {
    pub core: CoreHandle,
    pub media: MediaEngine,
    pub prompts: Arc<PromptLibrary>,
    pub settings: Arc<CallSettings>,
    /// Cancelled when the drain deadline passes: calls still running hang up.
    pub hangup_all: CancellationToken,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The call's entry in the active-call list (`/status`), to show its media security.
    pub status_id: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct CallSettings {
    pub user_agent: String,
    pub ring: Duration,
    pub max_call: Option<Duration>,
    pub codecs: Vec<Codec>,
    /// Our media addresses, at most one per family: an offer's family picks one.
    pub media_addrs: Vec<MediaAddr>,
    pub public_host: Option<String>,
    pub default_language: String,
    /// Window in which the same digit by another method is a duplicate.
    pub dtmf_dedup_window: Duration,
    /// How long a transfer may take to report a final status (NOTIFY) before it counts as failed.
    pub transfer_timeout: Duration,
    /// Digest credentials for a PBX that challenges our REFER.
    pub auth: Option<Credentials>,
    /// The shortest session timer interval we accept (RFC 4028 Min-SE), seconds.
    pub session_min_se: u32,
    /// Whether media may or must be SRTP (`[media] srtp`).
    pub srtp: SrtpMode,
}

/// Whether `flow` keeps what is signalled on it secret, SDES keys included: only TLS does
/// (hop by hop, as RFC 4568 8.1.1 asks: the SDP crossed this connection encrypted).
/// The match is exhaustive on purpose: a new transport does not compile until it says.
pub fn signalling_is_secure(flow: &Flow) -> bool {
    match flow.protocol {
        Protocol::Tls => true,
        Protocol::Udp | Protocol::Tcp => false,
    }
}

/// A local media address: where RTP sockets bind, and what SDP announces (1:1 NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaAddr {
    pub bind: IpAddr,
    pub announce: IpAddr,
}

impl CallSettings {
    /// The media address for a peer at `ip` (its SDP address, or where its signalling came
    /// from): the one of the same family.
    pub fn media_addr_for(&self, ip: IpAddr) -> Option<MediaAddr> {
        let v4 = ip.to_canonical().is_ipv4();
        self.media_addrs
            .iter()
            .find(|m| m.bind.to_canonical().is_ipv4() == v4)
            .copied()
    }
}

/// Digest credentials (RFC 8760). The password never reaches a log line: `Debug` prints it as
/// `***`, so `?settings` in a trace is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// A live, answered call.
pub struct Call {
    facts: CallFacts,
    ctx: CallContext,
    dialog: Dialog,
    flow: Flow,
    session: LocalSession,
    stream: StreamHandle,
    params: StreamParams,
    sip_events: mpsc::UnboundedReceiver<SipEvent>,
    media_events: mpsc::UnboundedReceiver<MediaEvent>,
    typeahead: VecDeque<(Digit, DtmfMethod)>,
    dedup: DigitDedup,
    methods_seen: Vec<DtmfMethod>,
    next_token: u64,
    max_deadline: Option<tokio::time::Instant>,
    language: String,
    /// We sent an offer in a 2xx (late offer / offerless re-INVITE): the ACK carries the answer.
    awaiting_answer: bool,
    /// The last status a REFER's NOTIFY reported (sipfrag), while a transfer is under way.
    refer_status: Option<u16>,
    /// A transfer succeeded: the call ends as "transferred".
    transferred: bool,
    /// Until the ACK of our 200: the dialog is not confirmed yet.
    awaiting_first_ack: bool,
    /// The last transfer this call tried.
    last_transfer: Option<TransferReport>,
    /// SRTP or plain, over every media negotiation so far, for the audit row.
    srtp: SrtpRecord,
    /// The session timer (RFC 4028), and the outcome of our own refresh while one is out.
    timer: SessionTimer,
    refresh_pending: bool,
    refresh_results: mpsc::UnboundedReceiver<bool>,
    refresh_tx: mpsc::UnboundedSender<bool>,
}

/// What makes a [`Call`]: what answering or placing it set up.
struct CallParts {
    facts: CallFacts,
    dialog: Dialog,
    flow: Flow,
    session: LocalSession,
    stream: StreamHandle,
    params: StreamParams,
    sip_events: mpsc::UnboundedReceiver<SipEvent>,
    media_events: mpsc::UnboundedReceiver<MediaEvent>,
    max_deadline: Option<tokio::time::Instant>,
    awaiting_answer: bool,
    awaiting_first_ack: bool,
    srtp: SrtpRecord,
    timer: SessionTimer,
    ctx: CallContext,
}

enum Wake {
    Digit,
    /// A NOTIFY reported new progress of our REFER.
    ReferProgress,
    PlayDone {
        token: u64,
        interrupted: bool,
    },
    Timeout,
}

impl Call {
    /// Sets up media and answers the INVITE (after ringing, if configured). On failure the
    /// INVITE has been answered with an error and the reason is returned.
    pub async fn answer(new: NewCall, ctx: CallContext) -> Result<Call, CallEnd> {
        let NewCall {
            invite,
            flow,
            tx,
            local_tag,
            events: mut sip_events,
            trust,
        } = new;
        let facts = CallFacts::from_invite(&invite, flow.remote, trust);
        let settings = ctx.settings.clone();
        let reject_with = |code: u16, extra: &[(&str, String)]| {
            let mut b = ResponseBuilder::new(&invite, code, reason_phrase(code))
                .received_from(flow.remote)
                .to_tag(&local_tag)
                .header("Server", &settings.user_agent)
                .header("Accept", "application/sdp");
            for (name, value) in extra {
                b = b.header(name, value);
            }
            ctx.core.respond(tx, code, b.build());
            CallEnd::Rejected(code)
        };
        let reject = |code: u16| reject_with(code, &[]);
        // RFC 3261 20.43: 399 is the miscellaneous warning, for a person to read.
        let reject_why =
            |code: u16, why: &str| reject_with(code, &[("Warning", format!("399 ivrd \"{why}\""))]);
        let mut timer = SessionTimer::new(settings.session_min_se);
        let timer_answer = timer.decide(&invite);
        if let session_timer::Answer::TooSmall { min_se } = timer_answer {
            return Err(reject_with(422, &[("Min-SE", min_se.to_string())]));
        }
        if !invite.body.is_empty() && !invite.has_sdp() {
            return Err(reject(415));
        }
        // An INVITE whose Accept excludes SDP cannot take our answer (RFC 3261 21.4.7).
        if let Some(accept) = invite.header(&Name::ACCEPT) {
            let ok = accept.split(',').any(|t| {
                let t = t
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                matches!(t.as_str(), "application/sdp" | "application/*" | "*/*")
            });
            if !ok && !accept.trim().is_empty() {
                return Err(reject(406));
            }
        }
        let (media_tx, media_events) = mpsc::unbounded_channel();
        let initial = silent_params(&settings, true);
        // The media address of the offer's family (IPv6 callers get IPv6 media); for a late
        // offer or a hold address, the family the call's signalling came in on.
        let secure = signalling_is_secure(&flow);
        let refuse = |e: &SdpError| {
            info!(error = %e, "SDP offer refused");
            if e.is_security() {
                reject_why(sdp_error_code(e), &e.to_string())
            } else {
                reject(sdp_error_code(e))
            }
        };
        let offered = if invite.has_sdp() {
            let probe =
                LocalSession::new(0, flow.local, settings.codecs.clone()).with_srtp(settings.srtp);
            match probe.offered_address(&invite.body, secure) {
                Ok(ip) => ip,
                Err(e) => return Err(refuse(&e)),
            }
        } else {
            None
        };
        let media_addr =
            offered
                .and_then(|ip| settings.media_addr_for(ip))
                .or_else(|| match offered {
                    Some(_) => None,
                    None => settings
                        .media_addr_for(flow.local.ip())
                        .or(settings.media_addrs.first().copied()),
                });
        let Some(media_addr) = media_addr else {
            let family = crate::sip::sdp::family_name(offered.unwrap_or(flow.local.ip()));
            info!(family, "SDP offer refused: no media address of its family");
            return Err(reject_why(488, &format!("no media address for {family}")));
        };
        let stream = match ctx.media.open_at(media_addr.bind, initial, media_tx) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot open RTP stream; answering 503");
                let why = match e {
                    MediaError::NoPort { .. } => "no free RTP port",
                    MediaError::Io(_) => "cannot open an RTP socket",
                };
                return Err(reject_why(503, why));
            }
        };
        let rtp_local = stream.local_addr();
        let announce = SocketAddr::new(media_addr.announce, rtp_local.port());
        let mut session = LocalSession::new(rand::random(), announce, settings.codecs.clone())
            .with_srtp(settings.srtp);
        let (sdp, negotiated) = if invite.has_sdp() {
            match session.answer(&invite.body, secure) {
                Ok((sdp, n)) => (sdp, Some(n)),
                Err(e) => return Err(refuse(&e)),
            }
        } else {
            match session.offer(secure) {
                Ok(sdp) => (sdp, None),
                Err(e) => return Err(refuse(&e)),
            }
        };
        let params = match &negotiated {
            Some(n) => {
                log_media_security(n, "INVITE");
                params_from(n)
            }
            // Our offer is out: if it was SRTP, nothing counts until the answer's key.
            None if session.srtp_offered() => StreamParams {
                protection: Protection::AwaitingKeys,
                ..initial
            },
            None => initial,
        };
        let srtp = SrtpRecord::Unknown.and(negotiated.as_ref());
        if let (Some(id), Some(n)) = (ctx.status_id, &negotiated) {
            ctx.metrics.call_srtp(id, n.srtp.map(|k| k.suite.name()));
        }
        // Nothing is sent before the ACK: only a caller that received our 200 can ACK it (the
        // ACK carries our To tag), so media cannot be aimed at a host that never asked for it
        // by forging an INVITE from it. An IVR loses nothing by waiting those milliseconds.
        stream.update(StreamParams {
            send: false,
            ..params
        });

        let sips = invite
            .request_uri()
            .is_some_and(|u| u.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:")));
        let contact = contact_uri(&flow, settings.public_host.as_deref(), sips);
        let dialog = Dialog::new_uas(&invite, &local_tag, contact.clone(), flow.protocol);
        let max_deadline = settings.max_call.map(|d| tokio::time::Instant::now() + d);
        if !settings.ring.is_zero() {
            let ringing = ResponseBuilder::new(&invite, 180, "Ringing")
                .received_from(flow.remote)
                .to_tag(&local_tag)
                .header("Contact", format!("<{contact}>"))
                .build();
            ctx.core.respond(tx, 180, ringing);
            let until = tokio::time::Instant::now() + settings.ring;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    ev = sip_events.recv() => match ev {
                        Some(SipEvent::Cancelled) | None => return Err(CallEnd::Cancelled),
                        Some(other) => debug!(?other, "event while ringing ignored"),
                    },
                    _ = ctx.hangup_all.cancelled() => return Err(reject(503)),
                }
            }
        }
        let mut ok = ResponseBuilder::new(&invite, 200, "OK")
            .received_from(flow.remote)
            .to_tag(&local_tag)
            .header("Contact", format!("<{contact}>"))
            .header("Allow", ALLOW)
            .header("Accept", ACCEPT)
            .header("Supported", session_timer::SUPPORTED)
            .header("Server", &settings.user_agent);
        for (name, value) in timer_answer.headers() {
            ok = ok.header(name, value);
        }
        ctx.core.respond(
            tx,
            200,
            ok.body("application/sdp", Bytes::from(sdp)).build(),
        );
        timer.commit(&timer_answer, Instant::now());
        info!(
            caller = %mask_number(&facts.caller),
            called = %facts.called,
            remote = %flow.remote,
            transport = flow.protocol.via_name(),
            codec = params.codec.name(),
            srtp = srtp.suite().unwrap_or("no"),
            trusted = trust.is_trusted(),
            "call started"
        );
        let mut call = Call::assemble(CallParts {
            facts,
            dialog,
            flow,
            session,
            stream,
            params,
            sip_events,
            media_events,
            max_deadline,
            awaiting_answer: !invite.has_sdp(),
            awaiting_first_ack: true,
            srtp,
            timer,
            ctx,
        });
        match call.await_ack().await {
            Ok(()) => Ok(call),
            // The ACK came but its answer was unusable: the dialog is confirmed, so it ends
            // with the BYE we owe.
            Err((end, true)) => {
                call.finish(&end).await;
                Err(end)
            }
            Err((end, false)) => {
                call.ctx.core.end_dialog(call.dialog.id.clone());
                Err(end)
            }
        }
    }

    /// A call from its parts (answered or placed), with nothing typed or transferred yet.
    fn assemble(p: CallParts) -> Call {
        let (refresh_tx, refresh_results) = mpsc::unbounded_channel();
        Call {
            language: p.ctx.settings.default_language.clone(),
            dedup: DigitDedup::new(p.ctx.settings.dtmf_dedup_window),
            facts: p.facts,
            dialog: p.dialog,
            flow: p.flow,
            session: p.session,
            stream: p.stream,
            params: p.params,
            sip_events: p.sip_events,
            media_events: p.media_events,
            typeahead: VecDeque::new(),
            methods_seen: Vec::new(),
            next_token: 1,
            max_deadline: p.max_deadline,
            awaiting_answer: p.awaiting_answer,
            refer_status: None,
            transferred: false,
            awaiting_first_ack: p.awaiting_first_ack,
            last_transfer: None,
            srtp: p.srtp,
            timer: p.timer,
            refresh_pending: false,
            refresh_results,
            refresh_tx,
            ctx: p.ctx,
        }
    }

    /// Waits for the ACK of our 200, serving the dialog meanwhile, then lets media flow. A
    /// call whose ACK never comes ends here, quietly: no prompt, no BYE (RFC 3261 15 forbids
    /// one before the ACK). An error says whether the ACK had come.
    async fn await_ack(&mut self) -> Result<(), (CallEnd, bool)> {
        let unconfirmed = |e| (e, false);
        loop {
            let max_fut = sleep_until_some(self.max_deadline);
            tokio::select! {
                ev = self.sip_events.recv() => match ev {
                    Some(SipEvent::Ack { body }) => {
                        self.awaiting_first_ack = false;
                        let applied = self.on_sip(SipEvent::Ack { body });
                        self.stream.update(self.params);
                        return applied.map_err(|e| (e, true));
                    }
                    Some(ev) => self.on_sip(ev).map_err(unconfirmed)?,
                    None => return Err(unconfirmed(CallEnd::CallerHangup)),
                },
                ev = self.media_events.recv() => {
                    if let Some(MediaEvent::Digit { digit, method, at }) = ev {
                        self.on_digit(digit, method, at);
                    }
                }
                _ = max_fut => return Err(unconfirmed(CallEnd::MaxDuration)),
                _ = self.ctx.hangup_all.cancelled() => return Err(unconfirmed(CallEnd::Shutdown)),
            }
        }
    }

    /// The SRTP suite of the call's media, if every negotiation so far was SRTP.
    pub fn srtp_suite(&self) -> Option<&'static str> {
        self.srtp.suite()
    }

    /// Ends the call: BYE when we owe one, then releases the dialog and media.
    pub async fn finish(mut self, end: &CallEnd) {
        if end.needs_bye() {
            self.stream.stop();
            let branch = new_branch();
            let via = self.flow.local;
            let bye = self.dialog.request(
                "BYE",
                via,
                &branch,
                &[("User-Agent", self.ctx.settings.user_agent.clone())],
                None,
            );
            let to = self.request_target();
            match self.ctx.core.request(self.flow, to, branch, bye).await {
                Ok(resp) => debug!(status = resp.status(), "BYE answered"),
                Err(e) => info!(error = %e, "BYE got no answer"),
            }
        }
        self.ctx.core.end_dialog(self.dialog.id.clone());
    }

    /// Where in-dialog requests go: the route set or Contact when it is an IP literal we can
    /// reach, else back to where the INVITE came from (the usual case behind NAT and proxies).
    fn request_target(&self) -> RequestTarget {
        match self.flow.protocol {
            // On TCP the caller's connection is the way back (RFC 5923-style reuse, which
            // every softphone and PBX expects); when the peer has closed it, the transport
            // opens one to the route set or Contact (RFC 3261 18.1.1), over the same
            // protocol: a dialog that came over TLS never continues in clear.
            Protocol::Tcp | Protocol::Tls => RequestTarget {
                addr: self.flow.remote,
                reconnect: self.dialog.next_hop(self.flow.protocol),
            },
            Protocol::Udp => self
                .dialog
                .next_hop(self.flow.protocol)
                .unwrap_or(self.flow.remote)
                .into(),
        }
    }

    /// Waits for the next thing the flow cares about, serving the dialog meanwhile.
    async fn wait(&mut self, deadline: Option<tokio::time::Instant>) -> Result<Wake, CallEnd> {
        loop {
            let deadline_fut = sleep_until_some(deadline);
            let max_fut = sleep_until_some(self.max_deadline);
            // While our refresh is out, its answer decides; the deadline does not fire again.
            let timer_due = self.timer.deadline().filter(|_| !self.refresh_pending);
            let timer_fut =
                sleep_until_some(timer_due.map(|(at, _)| tokio::time::Instant::from_std(at)));
            tokio::select! {
                ev = self.sip_events.recv() => match ev {
                    Some(ev) => {
                        // A SIP INFO digit wakes the flow just like an RTP one.
                        let before = (self.typeahead.len(), self.refer_status);
                        self.on_sip(ev)?;
                        if self.typeahead.len() > before.0 {
                            return Ok(Wake::Digit);
                        }
                        if self.refer_status != before.1 {
                            return Ok(Wake::ReferProgress);
                        }
                    }
                    None => return Err(CallEnd::CallerHangup),
                },
                ev = self.media_events.recv() => match ev {
                    Some(MediaEvent::Digit { digit, method, at }) => {
                        if self.on_digit(digit, method, at) {
                            return Ok(Wake::Digit);
                        }
                    }
                    Some(MediaEvent::PlayDone { token, interrupted }) => return Ok(Wake::PlayDone { token, interrupted }),
                    Some(MediaEvent::RtpTimeout) => return Err(CallEnd::RtpTimeout),
                    None => return Err(CallEnd::RtpTimeout),
                },
                _ = deadline_fut => return Ok(Wake::Timeout),
                _ = max_fut => return Err(CallEnd::MaxDuration),
                _ = timer_fut => match timer_due.map(|(_, due)| due) {
                    Some(Due::Refresh) => self.send_refresh(),
                    _ => {
                        info!("session timer expired: no refresh from the caller");
                        return Err(CallEnd::SessionExpired);
                    }
                },
                Some(ok) = self.refresh_results.recv() => {
                    self.refresh_pending = false;
                    if !ok {
                        info!("session refresh failed");
                        return Err(CallEnd::SessionExpired);
                    }
                    self.timer.refreshed(Instant::now());
                }
                _ = self.ctx.hangup_all.cancelled() => return Err(CallEnd::Shutdown),
            }
        }
    }

    fn on_digit(&mut self, digit: Digit, method: DtmfMethod, at: Instant) -> bool {
        if !self.dedup.accept(at, digit, method) {
            // Key values are never logged here: this layer cannot tell a PIN from a menu choice.
            debug!(method = method.as_str(), "duplicate key press dropped");
            return false;
        }
        if self.typeahead.len() >= MAX_TYPEAHEAD {
            // Nobody types 32 keys ahead of a prompt: this is a flood of INFO or RFC 4733
            // events, and what it would queue is bounded here.
            debug!(
                method = method.as_str(),
                "type-ahead full; key press dropped"
            );
            return false;
        }
        debug!(method = method.as_str(), "key press");
        self.ctx.metrics.digit(method);
        if !self.methods_seen.contains(&method) {
            self.methods_seen.push(method);
        }
        self.typeahead.push_back((digit, method));
        true
    }

    fn on_sip(&mut self, ev: SipEvent) -> Result<(), CallEnd> {
        match ev {
            SipEvent::Bye => Err(CallEnd::CallerHangup),
            SipEvent::Cancelled => Err(CallEnd::Cancelled),
            // Past `await_ack`, only a re-INVITE's 2xx can go unACKed: the dialog is
            // confirmed, and ends with a BYE (RFC 3261 13.3.1.4).
            SipEvent::AckTimeout if !self.awaiting_first_ack => Err(CallEnd::ReinviteAckTimeout),
            SipEvent::AckTimeout => Err(CallEnd::AckTimeout),
            SipEvent::Ack { body } => {
                if self.awaiting_answer {
                    self.awaiting_answer = false;
                    match self.session.accept_answer(&body) {
                        Ok(n) => self.apply(&n),
                        // RFC 3261 13.2.2.4: a bad answer in the ACK leaves us nothing to
                        // negotiate with; hang up rather than play into the void.
                        Err(e) => {
                            warn!(error = %e, "unusable SDP answer in ACK");
                            return Err(CallEnd::Completed);
                        }
                    }
                }
                Ok(())
            }
            SipEvent::Request { tx, msg, flow } => {
                self.on_request(tx, *msg, flow);
                Ok(())
            }
        }
    }

    fn on_request(&mut self, tx: TxId, msg: Message, flow: Flow) {
        if self.dialog.accept_remote_cseq(&msg).is_err() {
            return self.respond(tx, &msg, flow, 500, &[], None);
        }
        let method = msg.method().clone();
        if method == Method::INVITE || method == Method::UPDATE {
            return self.on_session_request(tx, msg, flow, method == Method::UPDATE);
        }
        if method == Method::INFO {
            let ct = msg.content_type().unwrap_or_default();
            return match parse_info(&ct, &msg.body) {
                Ok(digit) => {
                    self.on_digit(digit, DtmfMethod::SipInfo, Instant::now());
                    self.respond(tx, &msg, flow, 200, &[], None)
                }
                // An empty INFO is a keep-alive some PBXes send; anything else we cannot read.
                Err(_) if msg.body.is_empty() => self.respond(tx, &msg, flow, 200, &[], None),
                Err(e) => {
                    debug!(error = %e, content_type = %ct, "INFO not understood");
                    self.respond(
                        tx,
                        &msg,
                        flow,
                        415,
                        &[("Accept", "application/dtmf-relay, application/dtmf".into())],
                        None,
                    )
                }
            };
        }
        if method == Method::NOTIFY {
            let is_refer = msg.header(&Name::EVENT).is_some_and(|e| {
                e.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("refer")
            });
            if is_refer && msg.content_type().as_deref() == Some("message/sipfrag") {
                // RFC 3515 2.4.5: the body's status line is the progress of the new call.
                if let Some(code) = sipfrag_status(&msg.body) {
                    debug!(code, "transfer progress");
                    self.refer_status = Some(code);
                }
            }
            return self.respond(tx, &msg, flow, 200, &[], None);
        }
        if method == Method::REFER {
            // We transfer callers; we do not let them transfer us.
            return self.respond(tx, &msg, flow, 603, &[], None);
        }
        self.respond(tx, &msg, flow, 405, &[("Allow", ALLOW.into())], None)
    }

    /// A re-INVITE or an UPDATE: a new offer (answered), a refresh of the session timer, or
    /// both. An UPDATE may come without SDP (a pure refresh); a re-INVITE without SDP gets our
    /// offer, answered in its ACK.
    fn on_session_request(&mut self, tx: TxId, msg: Message, flow: Flow, update: bool) {
        let what = if update { "UPDATE" } else { "re-INVITE" };
        // Our offer (in the 200 to an offerless re-INVITE) is still out: a second offer now
        // is glare (RFC 3261 14.2, RFC 3311 5.2).
        if self.awaiting_answer && (msg.has_sdp() || !update) {
            info!(request = what, "offer while ours is out: 491");
            return self.respond(tx, &msg, flow, 491, &[], None);
        }
        let timer = self.timer.decide(&msg);
        if let session_timer::Answer::TooSmall { min_se } = timer {
            return self.respond(tx, &msg, flow, 422, &[("Min-SE", min_se.to_string())], None);
        }
        if !update {
            self.dialog.refresh_target(&msg);
        }
        let secure = signalling_is_secure(&flow);
        let sdp = if msg.has_sdp() {
            match self.session.answer(&msg.body, secure) {
                Ok((sdp, n)) => {
                    self.apply(&n);
                    info!(
                        request = what,
                        direction = n.direction.as_str(),
                        srtp = n.srtp.map_or("no", |k| k.suite.name()),
                        "offer answered"
                    );
                    log_media_security(&n, what);
                    Some(sdp)
                }
                Err(e) => {
                    info!(request = what, error = %e, "offer refused");
                    // The old session stays as it was (RFC 3264 8), and so does the timer.
                    return self.respond(tx, &msg, flow, sdp_error_code(&e), &[], None);
                }
            }
        } else if update {
            None
        } else {
            match self.session.offer(secure) {
                Ok(sdp) => {
                    self.awaiting_answer = true;
                    Some(sdp)
                }
                Err(e) => {
                    info!(request = what, error = %e, "cannot offer");
                    return self.respond(tx, &msg, flow, 488, &[], None);
                }
            }
        };
        self.timer.commit(&timer, Instant::now());
        let mut extra = vec![
            ("Contact", format!("<{}>", self.dialog.local_contact)),
            ("Allow", ALLOW.into()),
            ("Supported", session_timer::SUPPORTED.into()),
        ];
        extra.extend(timer.headers());
        self.respond(tx, &msg, flow, 200, &extra, sdp);
    }

    /// Refreshes the session ourselves (we are the refresher): an UPDATE without SDP, sent
    /// from a task of its own, whose outcome comes back on `refresh_results`.
    fn send_refresh(&mut self) {
        let Some(interval) = self.timer.interval_secs() else {
            return;
        };
        let branch = new_branch();
        let update = self.dialog.request(
            "UPDATE",
            self.flow.local,
            &branch,
            &[
                ("Session-Expires", format!("{interval};refresher=uas")),
                ("Supported", session_timer::SUPPORTED.into()),
                ("User-Agent", self.ctx.settings.user_agent.clone()),
            ],
            None,
        );
        let (core, flow, to, results) = (
            self.ctx.core.clone(),
            self.flow,
            self.request_target(),
            self.refresh_tx.clone(),
        );
        self.refresh_pending = true;
        debug!("refreshing the session with UPDATE");
        tokio::spawn(async move {
            let ok = matches!(
                core.request(flow, to, branch, update).await,
                Ok(resp) if resp.status().is_some_and(|s| (200..300).contains(&s))
            );
            let _ = results.send(ok);
        });
    }

    fn respond(
        &self,
        tx: TxId,
        msg: &Message,
        flow: Flow,
        code: u16,
        extra: &[(&str, String)],
        sdp: Option<String>,
    ) {
        let reason = match code {
            603 => "Decline",
            c => reason_phrase(c),
        };
        let mut b = ResponseBuilder::new(msg, code, reason)
            .received_from(flow.remote)
            .header("Server", &self.ctx.settings.user_agent);
        for (n, v) in extra {
            b = b.header(n, v);
        }
        if let Some(sdp) = sdp {
            b = b.body("application/sdp", Bytes::from(sdp));
        }
        self.ctx.core.respond(tx, code, b.build());
    }

    fn apply(&mut self, n: &Negotiated) {
        self.params = params_from(n);
        self.stream.update(self.params);
        self.srtp = self.srtp.and(Some(n));
        if let Some(id) = self.ctx.status_id {
            self.ctx
                .metrics
                .call_srtp(id, n.srtp.map(|k| k.suite.name()));
        }
    }

    fn resolve(&self, names: &[&str]) -> Vec<Arc<Prompt>> {
        names
            .iter()
            .filter_map(|name| {
                let p = self.ctx.prompts.get(&self.language, name).or_else(|| {
                    self.ctx
                        .prompts
                        .get(&self.ctx.settings.default_language, name)
                });
                if p.is_none() {
                    // `ivrd check` and start-up validation catch this; never go silent on it.
                    warn!(prompt = name, language = %self.language, "prompt missing; skipped");
                }
                p.cloned()
            })
            .collect()
    }
}

impl CallIo for Call {
    fn facts(&self) -> &CallFacts {
        &self.facts
    }

    fn language(&self) -> &str {
        &self.language
    }

    fn set_language(&mut self, language: &str) {
        self.language = language.to_string();
    }

    async fn play(&mut self, prompts: &[&str], barge_in: bool) -> Result<PlayOutcome, CallEnd> {
        if barge_in && !self.typeahead.is_empty() {
            // The caller is already typing: do not make them listen.
            return Ok(PlayOutcome { interrupted: true });
        }
        let token = self.next_token;
        self.next_token += 1;
        self.stream.play(token, self.resolve(prompts));
        loop {
            match self.wait(None).await? {
                Wake::PlayDone {
                    token: t,
                    interrupted,
                } if t == token => return Ok(PlayOutcome { interrupted }),
                Wake::Digit if barge_in => {
                    self.stream.stop();
                    return Ok(PlayOutcome { interrupted: true });
                }
                _ => {}
            }
        }
    }

    async fn collect(&mut self, spec: &CollectSpec) -> Result<Collected, CallEnd> {
        let mut collector = DigitCollector::new(spec);
        let mut deadline = tokio::time::Instant::now() + spec.first_digit_timeout;
        loop {
            while let Some((d, m)) = self.typeahead.pop_front() {
                if let Some(done) = collector.push(d.as_char(), m) {
                    return Ok(done);
                }
                deadline = tokio::time::Instant::now() + spec.inter_digit_timeout;
            }
            if let Wake::Timeout = self.wait(Some(deadline)).await? {
                return Ok(collector.timed_out());
            }
        }
    }

    async fn run_with_prompt<T, F>(&mut self, prompts: &[&str], task: F) -> Result<T, CallEnd>
    where
        T: Send,
        F: Future<Output = T> + Send,
    {
        let mut token = self.next_token;
        self.next_token += 1;
        let resolved = self.resolve(prompts);
        let mut playing = !resolved.is_empty();
        self.stream.play(token, resolved);
        let wait_tone = self.resolve(&["wait-tone"]);
        tokio::pin!(task);
        let mut result: Option<T> = None;
        loop {
            if !playing && let Some(r) = result.take() {
                return Ok(r);
            }
            tokio::select! {
                r = &mut task, if result.is_none() => {
                    result = Some(r);
                    // What the caller waits for is known: the wait prompt ends at its next
                    // pause rather than playing out (never in the middle of a word).
                    if playing {
                        self.stream.stop_at_pause();
                    }
                }
                w = self.wait(None) => {
                    if let Wake::PlayDone { token: t, .. } = w?
                        && t == token {
                            playing = false;
                            if result.is_none() && !wait_tone.is_empty() {
                                // The task outlasts the prompt: a soft tone, not silence, so
                                // the caller knows the line is alive.
                                token = self.next_token;
                                self.next_token += 1;
                                self.stream.play(token, wait_tone.clone());
                                playing = true;
                            }
                        }
                }
            }
        }
    }

    async fn transfer(
        &mut self,
        target: &str,
        headers: &[(String, String)],
    ) -> Result<TransferOutcome, CallEnd> {
        let started = Instant::now();
        let result = self.transfer_inner(target, headers).await;
        let ms = started.elapsed().as_millis() as u64;
        // The REFER's fate, for the log and the audit row: the last final status the transferee
        // reported (sipfrag), or the REFER's own refusal.
        let (status, outcome) = match &result {
            Ok(TransferOutcome::Transferred) => (self.refer_status, "transferred".to_string()),
            Ok(TransferOutcome::Failed { status, reason }) => (*status, reason.clone()),
            Err(end) => (self.refer_status, format!("call ended: {}", end.as_str())),
        };
        info!(%target, status = status.unwrap_or(0), ms, outcome = %outcome, "transfer finished");
        self.last_transfer = Some(TransferReport {
            target: target.to_string(),
            status,
            ms,
        });
        result
    }
}

impl Call {
    /// The REFER, its challenge if any, and the wait for the transferee's final NOTIFY.
    async fn transfer_inner(
        &mut self,
        target: &str,
        headers: &[(String, String)],
    ) -> Result<TransferOutcome, CallEnd> {
        self.stream.stop();
        let refer_to = refer_to_uri(target, headers);
        let mut auth_header: Option<(&'static str, String)> = None;
        self.refer_status = None;
        let response = loop {
            let branch = new_branch();
            let mut extra = vec![
                ("Refer-To", format!("<{refer_to}>")),
                ("Referred-By", format!("<{}>", self.dialog.local_contact)),
                ("User-Agent", self.ctx.settings.user_agent.clone()),
            ];
            if let Some((name, value)) = &auth_header {
                extra.push((name, value.clone()));
            }
            let refer = self
                .dialog
                .request("REFER", self.flow.local, &branch, &extra, None);
            let core = self.ctx.core.clone();
            let to = self.request_target();
            let fut = core.request(self.flow, to, branch, refer);
            tokio::pin!(fut);
            let r = loop {
                tokio::select! {
                    r = &mut fut => break r,
                    w = self.wait(None) => { w?; }
                }
            };
            let resp = match r {
                Ok(resp) => resp,
                Err(e) => {
                    return Ok(TransferOutcome::Failed {
                        status: None,
                        reason: format!("REFER: {e}"),
                    });
                }
            };
            let status = resp.status().unwrap_or(0);
            if (status == 401 || status == 407) && auth_header.is_none() {
                let (challenge_name, answer_name) = if status == 401 {
                    (Name::WWW_AUTHENTICATE, "Authorization")
                } else {
                    (Name::PROXY_AUTHENTICATE, "Proxy-Authorization")
                };
                let challenge = resp
                    .header(&challenge_name)
                    .and_then(crate::sip::auth::parse_challenge);
                if let (
                    Some(ch),
                    Some(Credentials {
                        username: user,
                        password: pass,
                    }),
                ) = (challenge, self.ctx.settings.auth.clone())
                {
                    let uri = self.dialog.remote_target.clone();
                    let value = crate::sip::auth::authorization(
                        &ch,
                        &user,
                        &pass,
                        "REFER",
                        &uri,
                        &crate::sip::core::random_token(12),
                    );
                    auth_header = Some((answer_name, value));
                    continue;
                }
            }
            break resp;
        };
        let status = response.status().unwrap_or(0);
        if !(200..300).contains(&status) {
            return Ok(TransferOutcome::Failed {
                status: Some(status),
                reason: format!("REFER refused with {status}"),
            });
        }
        info!(target = %target, "transfer accepted; waiting for the outcome");
        let deadline = tokio::time::Instant::now() + self.ctx.settings.transfer_timeout;
        loop {
            match self.refer_status {
                Some(code) if (200..300).contains(&code) => {
                    self.transferred = true;
                    return Ok(TransferOutcome::Transferred);
                }
                Some(code) if code >= 300 => {
                    return Ok(TransferOutcome::Failed {
                        status: Some(code),
                        reason: format!("transfer target answered {code}"),
                    });
                }
                _ => {}
            }
            if let Wake::Timeout = self.wait(Some(deadline)).await? {
                return Ok(TransferOutcome::Failed {
                    status: self.refer_status,
                    reason: "no final transfer status in time".into(),
                });
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one (a `select!` arm that never fires).
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The Refer-To URI with headers (RFC 3261 19.1.1: `?name=value&...`, escaped), so the
/// transfer target's INVITE carries them (e.g. `X-Customer-Id`).
pub fn refer_to_uri(target: &str, headers: &[(String, String)]) -> String {
    if headers.is_empty() {
        return target.to_string();
    }
    let sep = if target.contains('?') { '&' } else { '?' };
    let query: Vec<String> = headers
        .iter()
        .map(|(n, v)| format!("{}={}", escape_hvalue(n), escape_hvalue(v)))
        .collect();
    format!("{target}{sep}{}", query.join("&"))
}

/// Escapes a header name or value for a SIP URI (RFC 3261 25.1 hnv-unreserved / unreserved).
fn escape_hvalue(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()[]/?:+$".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The status code of a `message/sipfrag` body's first line ("SIP/2.0 200 OK").
fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0")?.trim_start();
    rest.split_whitespace().next()?.parse().ok()
}

/// A stream's parameters before any SDP is agreed: our first codec, nothing sent, and
/// whether the peer's RTP is owed already.
fn silent_params(settings: &CallSettings, expect_rtp: bool) -> StreamParams {
    StreamParams {
        codec: settings.codecs[0],
        payload_type: settings.codecs[0].payload_type(),
        dtmf_payload_type: None,
        ptime_ms: 20,
        remote: None,
        send: false,
        expect_rtp,
        protection: Protection::Plain,
    }
}

fn params_from(n: &Negotiated) -> StreamParams {
    StreamParams {
        codec: n.codec,
        payload_type: n.payload_type,
        dtmf_payload_type: n.dtmf_payload_type,
        ptime_ms: n.ptime_ms,
        remote: n.remote,
        send: matches!(n.direction, Direction::SendRecv | Direction::SendOnly)
            && n.remote.is_some(),
        // Only a call both ways expects the caller's RTP. A caller's `a=sendonly` is a hold
        // (RFC 3264 8.4) like `inactive`, and a held phone may send nothing at all (linphonec
        // does): its silence must not end the call.
        expect_rtp: n.direction == Direction::SendRecv,
        protection: match n.srtp {
            Some(keys) => Protection::Srtp(keys),
            None => Protection::Plain,
        },
    }
}

/// What the audit row says of media security: SRTP only if every negotiation was, so that a
/// downgrade by a later re-INVITE stays on record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SrtpRecord {
    /// No media negotiated yet.
    Unknown,
    Srtp(&'static str),
    Plain,
}

impl SrtpRecord {
    fn and(self, n: Option<&Negotiated>) -> SrtpRecord {
        let Some(n) = n else {
            return self;
        };
        match (self, n.srtp) {
            (SrtpRecord::Plain, _) | (_, None) => SrtpRecord::Plain,
            (SrtpRecord::Srtp(was), Some(keys)) if was != keys.suite.name() => SrtpRecord::Plain,
            (_, Some(keys)) => SrtpRecord::Srtp(keys.suite.name()),
        }
    }

    fn suite(self) -> Option<&'static str> {
        match self {
            SrtpRecord::Srtp(suite) => Some(suite),
            SrtpRecord::Unknown | SrtpRecord::Plain => None,
        }
    }
}

/// The log line an SDES offer over insecure signalling deserves when a plain stream was taken
/// instead (when nothing was, the refusal's own line says so).
fn log_media_security(n: &Negotiated, what: &str) {
    if n.insecure_sdes_refused {
        warn!(
            request = what,
            "SDES keys offered over insecure signalling: the SRTP stream was refused (keys in \
             clear SDP protect nothing) and the plain RTP stream offered beside it taken; use \
             SIP over TLS for SRTP"
        );
    }
}

fn sdp_error_code(e: &SdpError) -> u16 {
    if e.is_not_acceptable() { 488 } else { 400 }
}

/// Our Contact for a dialog on `flow`. Over TLS it is `sips:` when the caller asked for
/// `sips:` (TLS on every hop, RFC 5630 4), else `sip:...;transport=tls` (this hop only).
fn contact_uri(flow: &Flow, public_host: Option<&str>, sips: bool) -> String {
    let hostport = match public_host {
        Some(h) => format!("{h}:{}", flow.local.port()),
        None => fmt_host_port(flow.local),
    };
    match flow.protocol {
        Protocol::Udp => format!("sip:ivrd@{hostport}"),
        Protocol::Tcp => format!("sip:ivrd@{hostport};transport=tcp"),
        Protocol::Tls if sips => format!("sips:ivrd@{hostport}"),
        Protocol::Tls => format!("sip:ivrd@{hostport};transport=tls"),
    }
}

/// What a finished call leaves behind (for the audit row).
#[derive(Debug)]
pub struct CallSummary<T> {
    pub facts: CallFacts,
    pub end: CallEnd,
    /// DTMF methods seen, in first-seen order.
    pub dtmf_methods: Vec<DtmfMethod>,
    pub ended: SystemTime,
    /// What the flow returned, if the call got as far as running it.
    pub flow: Option<T>,
    /// The last transfer the call tried.
    pub transfer: Option<TransferReport>,
    /// The SRTP suite, when every media negotiation of the call was SRTP; `None` for plain
    /// RTP (at any point) or a call that never got media.
    pub srtp: Option<&'static str>,
}

/// Runs one call from INVITE to the end: answer, flow, BYE, log. The flow gets the call and
/// gives it back with how it ended and a value of its own (a dialplan's outcome).
pub async fn run<F, Fut, T>(new: NewCall, ctx: CallContext, flow: F) -> CallSummary<T>
where
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = (Call, Result<(), CallEnd>, T)>,
{
    let started = Instant::now();
    let facts = CallFacts::from_invite(&new.invite, new.flow.remote, new.trust);
    let call = match Call::answer(new, ctx).await {
        Ok(call) => call,
        Err(end) => {
            info!(reason = end.as_str(), "call ended before answer");
            return CallSummary {
                facts,
                end,
                dtmf_methods: Vec::new(),
                ended: SystemTime::now(),
                flow: None,
                transfer: None,
                srtp: None,
            };
        }
    };
    let facts = call.facts.clone();
    let (call, result, value) = flow(call).await;
    let end = match result {
        Ok(()) if call.transferred => CallEnd::Transferred,
        Ok(()) => CallEnd::Completed,
        Err(e) => e,
    };
    let dtmf_methods = call.methods_seen.clone();
    let methods: Vec<&str> = dtmf_methods.iter().map(|m| m.as_str()).collect();
    let transfer = call.last_transfer.clone();
    let srtp = call.srtp.suite();
    call.finish(&end).await;
    info!(
        reason = end.as_str(),
        duration_ms = started.elapsed().as_millis() as u64,
        dtmf = %methods.join(","),
        "call ended"
    );
    CallSummary {
        facts,
        end,
        dtmf_methods,
        ended: SystemTime::now(),
        flow: Some(value),
        transfer,
        srtp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RTP timeout runs only while the call goes both ways: a caller's hold, whether it
    /// offers sendonly (ours recvonly), inactive or recvonly, pauses it.
    #[test]
    fn only_a_call_both_ways_expects_the_callers_rtp() {
        let negotiated = |direction| Negotiated {
            remote: Some("127.0.0.1:4000".parse().unwrap()),
            codec: Codec::Pcmu,
            payload_type: 0,
            dtmf_payload_type: Some(101),
            ptime_ms: 20,
            direction,
            srtp: None,
            insecure_sdes_refused: false,
        };
        let expects = |d| params_from(&negotiated(d)).expect_rtp;
        assert!(expects(Direction::SendRecv));
        assert!(!expects(Direction::RecvOnly), "the caller's sendonly hold");
        assert!(!expects(Direction::Inactive));
        assert!(!expects(Direction::SendOnly));
    }

    fn spec(max: usize) -> CollectSpec {
        CollectSpec {
            escape: Vec::new(),
            min: 1,
            max,
            terminator: Some('#'),
            first_digit_timeout: Duration::from_secs(5),
            inter_digit_timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn collector_ends_on_terminator_max_or_timeout() {
        let s = spec(4);
        let mut c = DigitCollector::new(&s);
        assert_eq!(c.push('1', DtmfMethod::Rfc4733), None);
        assert_eq!(c.push('2', DtmfMethod::SipInfo), None);
        let done = c.push('#', DtmfMethod::Rfc4733).unwrap();
        assert_eq!(done.digits, "12");
        assert_eq!(done.ended_by, CollectEnd::Terminator);
        assert_eq!(done.methods, vec![DtmfMethod::Rfc4733, DtmfMethod::SipInfo]);

        let s = spec(2);
        let mut c = DigitCollector::new(&s);
        assert_eq!(c.push('7', DtmfMethod::Inband), None);
        let done = c.push('8', DtmfMethod::Inband).unwrap();
        assert_eq!(
            (done.digits.as_str(), done.ended_by),
            ("78", CollectEnd::MaxDigits)
        );

        let mut c = DigitCollector::new(&s);
        assert_eq!(c.push('5', DtmfMethod::Rfc4733), None);
        let done = c.timed_out();
        assert_eq!(
            (done.digits.as_str(), done.ended_by),
            ("5", CollectEnd::Timeout)
        );
    }

    #[test]
    fn refer_to_carries_escaped_headers() {
        let uri = refer_to_uri(
            "sip:queue@pbx.example",
            &[
                ("X-Customer-Id".into(), "123456".into()),
                ("X-Note".into(), "a b;c".into()),
            ],
        );
        assert_eq!(
            uri,
            "sip:queue@pbx.example?X-Customer-Id=123456&X-Note=a%20b%3Bc"
        );
        assert_eq!(refer_to_uri("sip:q@h", &[]), "sip:q@h");
    }

    #[test]
    fn sipfrag_status_lines() {
        assert_eq!(sipfrag_status(b"SIP/2.0 200 OK\r\n"), Some(200));
        assert_eq!(sipfrag_status(b"SIP/2.0 100 Trying"), Some(100));
        assert_eq!(
            sipfrag_status(b"SIP/2.0  486 Busy Here\r\nFoo: bar"),
            Some(486)
        );
        assert_eq!(sipfrag_status(b"garbage"), None);
    }

    #[test]
    fn credentials_never_print_their_password() {
        let c = Credentials {
            username: "ivrd".into(),
            password: "s3cret-Pa55".into(),
        };
        let text = format!("{c:?} {:?}", Some(c.clone()));
        assert!(text.contains("ivrd") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn facts_from_invite() {
        let inv = Message::parse(Bytes::from_static(
            b"INVITE sip:+4930999@ivr.example;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: \"Alice Example\" <sip:+4915112345678@pbx.example>;tag=a\r\nTo: <sip:+4930999@ivr.example>\r\n\
Call-ID: c@h\r\nCSeq: 1 INVITE\r\n\r\n",
        ))
        .unwrap();
        let f = CallFacts::from_invite(&inv, "192.0.2.1:5060".parse().unwrap(), Trust::Untrusted);
        assert_eq!(f.caller, "+4915112345678");
        assert_eq!(f.caller_name.as_deref(), Some("Alice Example"));
        assert_eq!(f.called, "+4930999");
        assert_eq!(f.call_id, "c@h");
    }
}

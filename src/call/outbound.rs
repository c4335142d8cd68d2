//! Calls ivrd places (issue 15's PIN by voice call): the INVITE through the trunk, its
//! challenge, ringing, and the answered call handed over as an ordinary [`Call`] for prompts
//! and digits.
//!
//! ```text
//! INVITE --> 407 --> INVITE with Proxy-Authorization (same Call-ID, From tag, CSeq + 1)
//!        --> 1xx ... ring_timeout --> CANCEL --> 487      : NoAnswer
//!        --> 486/600 : Busy   403/603/607/608 : Rejected   408/480/487 : NoAnswer
//!        --> other 3xx-6xx, Timer B, transport error      : Failed
//!        --> 2xx (ACKed by the core) --> SDP answer applied --> Call
//! ```
//!
//! The SIP core runs the client INVITE transaction (RFC 3261 17.1.1 with RFC 6026), ACKs
//! failures and the 2xx, and ends extra forks; this module decides what to send next. RFC 3261
//! 9.1 allows a CANCEL only once a provisional response came: a call that is due to be
//! cancelled before any did waits for one (or for Timer B). A 2xx that crosses our CANCEL is a
//! callee who picked up at the last moment: the call goes on.

use super::*;
use crate::sip::core::{InviteEvent, Placed, random_token};
use crate::sip::message::{OutboundInvite, cancel_for, invite_request};

/// How long a CANCELled INVITE may still take to end (64*T1 with the default T1, RFC 3261 9.1):
/// after that nothing more is owed.
const CANCEL_WAIT: Duration = Duration::from_secs(32);

/// Where and as whom ivrd places calls (`[outbound]`).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// The trunk or PBX every INVITE goes to (an IP literal: no DNS on this path).
    pub proxy: SocketAddr,
    pub protocol: Protocol,
    /// The listener the INVITE leaves from (its responses and the dialog come back to it).
    pub local: SocketAddr,
    /// The address written in Via and Contact (the listener's, or the host's address towards
    /// the proxy when the listener is a wildcard).
    pub advertised: SocketAddr,
    /// The Request-URI, with `{number}` for the callee in E.164 (`+4930...`).
    pub request_uri: String,
    /// Our From URI (the caller ID the trunk may use).
    pub from: String,
    /// Digest credentials for a trunk that challenges the INVITE (401/407).
    pub credentials: Option<Credentials>,
    /// How long the callee's phone may ring before the call is cancelled.
    pub ring_timeout: Duration,
}

impl OutboundSettings {
    /// The Request-URI for `number`.
    pub fn request_uri(&self, number: &str) -> String {
        self.request_uri.replace("{number}", number)
    }
}

/// What became of a call attempt, as the verification's status and the audit record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Answered,
    Busy,
    NoAnswer,
    Rejected,
    Failed,
}

impl Delivery {
    /// The audit outcome of a code call that went each way (`ivrd audit --outcome`).
    pub const AUDIT_OUTCOMES: [&'static str; 5] = [
        "voice-answered",
        "voice-busy",
        "voice-no-answer",
        "voice-rejected",
        "voice-failed",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Answered => "answered",
            Delivery::Busy => "busy",
            Delivery::NoAnswer => "no-answer",
            Delivery::Rejected => "rejected",
            Delivery::Failed => "failed",
        }
    }

    /// What a final failure response says about the callee (RFC 3261 21.4-21.6, RFC 8197's
    /// 607, RFC 8688's 608).
    pub fn from_status(status: u16) -> Delivery {
        match status {
            486 | 600 => Delivery::Busy,
            408 | 480 | 487 => Delivery::NoAnswer,
            403 | 603 | 607 | 608 => Delivery::Rejected,
            _ => Delivery::Failed,
        }
    }
}

/// A call that was not answered: how, the final status if one came, and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReached {
    pub delivery: Delivery,
    pub status: Option<u16>,
    pub reason: String,
}

impl NotReached {
    fn failed(reason: impl Into<String>) -> NotReached {
        NotReached {
            delivery: Delivery::Failed,
            status: None,
            reason: reason.into(),
        }
    }
}

/// How one INVITE ended.
enum Rung {
    Answered(Box<Message>),
    Failed(Box<Message>),
    /// Cancelled at the ring timeout (or at shutdown, `true`).
    Cancelled {
        shutdown: bool,
    },
    NoResponse(crate::sip::core::RequestError),
}

impl Call {
    /// Calls `number` (E.164) through `out.proxy` and returns the answered call, media
    /// flowing; or how the attempt ended.
    pub async fn place(
        ctx: CallContext,
        out: &OutboundSettings,
        number: &str,
    ) -> Result<Call, NotReached> {
        let settings = ctx.settings.clone();
        let flow = Flow {
            protocol: out.protocol,
            local: out.local,
            remote: out.proxy,
        };
        let secure = signalling_is_secure(&flow);
        let media_addr = settings
            .media_addr_for(out.proxy.ip())
            .or(settings.media_addrs.first().copied())
            .ok_or_else(|| NotReached::failed("no media address"))?;
        let (media_tx, media_events) = mpsc::unbounded_channel();
        // Nothing is owed before the answer (early media is not played through).
        let initial = silent_params(&settings, false);
        let stream = ctx
            .media
            .open_at(media_addr.bind, initial, media_tx)
            .map_err(|e| NotReached::failed(format!("cannot open an RTP stream: {e}")))?;
        let announce = SocketAddr::new(media_addr.announce, stream.local_addr().port());
        let mut session = LocalSession::new(rand::random(), announce, settings.codecs.clone())
            .with_srtp(settings.srtp);
        let sdp = Bytes::from(
            session
                .offer(secure)
                .map_err(|e| NotReached::failed(format!("no SDP offer: {e}")))?,
        );
        let request_uri = out.request_uri(number);
        let call_id = format!("{}@ivrd", random_token(20));
        let from_tag = random_token(10);
        let contact = contact_uri(
            &Flow {
                local: out.advertised,
                ..flow
            },
            None,
            false,
        );
        let target = RequestTarget {
            addr: out.proxy,
            reconnect: Some(out.proxy),
        };
        let deadline = tokio::time::Instant::now() + out.ring_timeout;
        let mut credentials: Option<(&str, String)> = None;
        let mut cseq = 1;
        let (invite, ok, placed) = loop {
            let branch = new_branch();
            let bytes = invite_request(&OutboundInvite {
                request_uri: &request_uri,
                from: &out.from,
                from_tag: &from_tag,
                call_id: &call_id,
                cseq,
                protocol: out.protocol,
                via_host: out.advertised,
                branch: &branch,
                contact: &contact,
                credentials: credentials.clone(),
                user_agent: &settings.user_agent,
                sdp: sdp.clone(),
            });
            let invite = Message::parse(bytes.clone())
                .map_err(|e| NotReached::failed(format!("our INVITE does not parse: {e}")))?;
            let mut placed = ctx
                .core
                .invite(flow, target, bytes)
                .map_err(NotReached::failed)?;
            match ring(&ctx, flow, target, &invite, &mut placed, deadline).await {
                Rung::Answered(ok) => break (invite, ok, placed),
                Rung::Failed(resp) => {
                    let status = resp.status().unwrap_or(0);
                    if matches!(status, 401 | 407)
                        && credentials.is_none()
                        && let Some(answer) = answer_challenge(out, &resp, &request_uri)
                    {
                        credentials = Some(answer);
                        cseq += 1;
                        continue;
                    }
                    let reason = match status {
                        401 | 407 if credentials.is_some() => {
                            "the trunk refused our credentials".to_string()
                        }
                        401 | 407 => "the trunk asks for credentials; set [outbound] username \
                                      and password"
                            .to_string(),
                        _ => format!("the call was answered {status} {}", reason_of(&resp)),
                    };
                    return Err(NotReached {
                        delivery: Delivery::from_status(status),
                        status: Some(status),
                        reason,
                    });
                }
                Rung::Cancelled { shutdown } => {
                    return Err(NotReached {
                        delivery: if shutdown {
                            Delivery::Failed
                        } else {
                            Delivery::NoAnswer
                        },
                        status: Some(487),
                        reason: if shutdown {
                            "cancelled: ivrd is shutting down".into()
                        } else {
                            format!("no answer within {} s", out.ring_timeout.as_secs())
                        },
                    });
                }
                Rung::NoResponse(e) => {
                    return Err(NotReached::failed(format!("the trunk did not answer: {e}")));
                }
            }
        };
        let Placed {
            invite: _,
            dialog: sip_events,
        } = placed;
        let dialog = Dialog::new_uac(&invite, &ok, contact, out.protocol);
        let negotiated = if ok.has_sdp() {
            session.accept_answer(&ok.body)
        } else {
            Err(SdpError::NoAudio)
        };
        let facts = CallFacts {
            call_id: call_id.clone(),
            caller: number.to_string(),
            limit_key: number.to_string(),
            caller_name: None,
            called: number.to_string(),
            request_uri: request_uri.clone(),
            from_uri: out.from.clone(),
            remote: out.proxy,
            started: SystemTime::now(),
        };
        let params = match &negotiated {
            Ok(n) => params_from(n),
            Err(_) => initial,
        };
        let call = Call::assemble(CallParts {
            facts,
            dialog,
            flow,
            session,
            stream,
            params,
            sip_events,
            media_events,
            max_deadline: settings.max_call.map(|d| tokio::time::Instant::now() + d),
            awaiting_answer: false,
            awaiting_first_ack: false,
            srtp: SrtpRecord::Unknown.and(negotiated.as_ref().ok()),
            // ivrd asks for no session timer on its own INVITE; a callee's refresh is served.
            timer: SessionTimer::new(settings.session_min_se),
            ctx,
        });
        match negotiated {
            Ok(n) => {
                call.stream.update(call.params);
                info!(
                    to = %mask_number(number),
                    call_id = %call_id,
                    codec = n.codec.name(),
                    srtp = call.srtp.suite().unwrap_or("no"),
                    "outbound call answered"
                );
                Ok(call)
            }
            Err(e) => {
                warn!(error = %e, "outbound call answered with unusable SDP; hanging up");
                call.finish(&CallEnd::Completed).await;
                Err(NotReached::failed(format!("unusable SDP answer: {e}")))
            }
        }
    }
}

/// The credentials answering a 401/407 to our INVITE, when we have some and the challenge
/// reads.
fn answer_challenge(
    out: &OutboundSettings,
    resp: &Message,
    request_uri: &str,
) -> Option<(&'static str, String)> {
    let (challenge_name, answer_name) = if resp.status() == Some(401) {
        (Name::WWW_AUTHENTICATE, "Authorization")
    } else {
        (Name::PROXY_AUTHENTICATE, "Proxy-Authorization")
    };
    let challenge = crate::sip::auth::parse_challenge(resp.header(&challenge_name)?)?;
    let c = out.credentials.as_ref()?;
    Some((
        answer_name,
        crate::sip::auth::authorization(
            &challenge,
            &c.username,
            &c.password,
            "INVITE",
            request_uri,
            &random_token(12),
        ),
    ))
}

fn reason_of(resp: &Message) -> String {
    match &resp.start {
        crate::sip::message::StartLine::Response { reason, .. } => reason.to_string(),
        _ => String::new(),
    }
}

/// Waits for one INVITE's outcome; at `deadline` (ring timeout) or shutdown it is CANCELled
/// once ringing (RFC 3261 9.1), and the 487 that follows is the end.
async fn ring(
    ctx: &CallContext,
    flow: Flow,
    target: RequestTarget,
    invite: &Message,
    placed: &mut Placed,
    deadline: tokio::time::Instant,
) -> Rung {
    let mut provisional = false;
    // Why we want the call to end (shutdown or not), once it is due.
    let mut give_up: Option<bool> = None;
    let mut cancelled_at: Option<tokio::time::Instant> = None;
    let cancel = |ctx: &CallContext| {
        let core = ctx.core.clone();
        let branch = invite.branch().unwrap_or_default().to_string();
        let msg = cancel_for(invite);
        tokio::spawn(async move {
            match core.request(flow, target, branch, msg).await {
                Ok(resp) => debug!(status = resp.status(), "CANCEL answered"),
                Err(e) => debug!(error = %e, "CANCEL got no answer"),
            }
        });
        Some(tokio::time::Instant::now())
    };
    loop {
        let wake = match (cancelled_at, give_up) {
            (Some(at), _) => Some(at + CANCEL_WAIT),
            // Due, but nothing rang yet: only a provisional (or Timer B) moves us on.
            (None, Some(_)) => None,
            (None, None) => Some(deadline),
        };
        tokio::select! {
            ev = placed.invite.recv() => match ev {
                Some(InviteEvent::Provisional(_)) => {
                    provisional = true;
                    if give_up.is_some() && cancelled_at.is_none() {
                        cancelled_at = cancel(ctx);
                    }
                }
                Some(InviteEvent::Answered(ok)) => return Rung::Answered(ok),
                Some(InviteEvent::Failed(resp)) => {
                    return match give_up {
                        Some(shutdown) if cancelled_at.is_some() => Rung::Cancelled { shutdown },
                        _ => Rung::Failed(resp),
                    };
                }
                Some(InviteEvent::NoResponse(e)) => {
                    return match give_up {
                        Some(shutdown) => Rung::Cancelled { shutdown },
                        None => Rung::NoResponse(e),
                    };
                }
                None => return Rung::NoResponse(crate::sip::core::RequestError::CoreGone),
            },
            _ = sleep_until_some(wake) => {
                if let Some(shutdown) = give_up {
                    // 64*T1 after our CANCEL and still no final: nothing more is owed.
                    return Rung::Cancelled { shutdown };
                }
                give_up = Some(false);
                if provisional {
                    cancelled_at = cancel(ctx);
                }
            }
            _ = ctx.hangup_all.cancelled(), if give_up.is_none() => {
                give_up = Some(true);
                if provisional {
                    cancelled_at = cancel(ctx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_outcomes_are_the_deliveries() {
        for d in [
            Delivery::Answered,
            Delivery::Busy,
            Delivery::NoAnswer,
            Delivery::Rejected,
            Delivery::Failed,
        ] {
            let name = format!("voice-{}", d.as_str());
            assert!(Delivery::AUDIT_OUTCOMES.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn failure_statuses_say_what_happened_to_the_callee() {
        assert_eq!(Delivery::from_status(486), Delivery::Busy);
        assert_eq!(Delivery::from_status(600), Delivery::Busy);
        assert_eq!(Delivery::from_status(480), Delivery::NoAnswer);
        assert_eq!(Delivery::from_status(487), Delivery::NoAnswer);
        assert_eq!(Delivery::from_status(603), Delivery::Rejected);
        assert_eq!(Delivery::from_status(607), Delivery::Rejected);
        assert_eq!(Delivery::from_status(404), Delivery::Failed);
        assert_eq!(Delivery::from_status(503), Delivery::Failed);
        assert_eq!(Delivery::from_status(407), Delivery::Failed);
    }
}

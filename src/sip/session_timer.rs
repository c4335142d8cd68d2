//! Session timers (RFC 4028), as the UAS: what to answer a request that asks for one, and
//! when the session must be refreshed or ended. No IO and no clock: the call feeds it each
//! INVITE, re-INVITE or UPDATE with `now`, and asks it for the next deadline.
//!
//! What ivrd does:
//! - A request with `Supported: timer` and a `Session-Expires` below our minimum gets 422
//!   with `Min-SE` (RFC 4028 9). Otherwise the interval is the one asked for (never below the
//!   request's own `Min-SE`), and the refresher is the one the request named, else the UAC:
//!   the side that already sends re-INVITEs. The 2xx carries `Session-Expires` with the
//!   refresher and, when the UAC refreshes, `Require: timer`.
//! - A `Session-Expires` from a UAC without `Supported: timer` (a proxy inserted it) can only
//!   be refreshed by us: ivrd takes the session timer on as the refresher when the UAC allows
//!   UPDATE (a refresh without SDP), and otherwise answers without one.
//! - A refresh (re-INVITE or UPDATE) restarts the interval, negotiated afresh; one without
//!   `Session-Expires` turns the timer off (RFC 4028 10).
//! - When the UAC refreshes and no refresh comes, the session ends with BYE before it
//!   expires, by the smaller of 32 s and a third of the interval (RFC 4028 10). When ivrd
//!   refreshes, it sends UPDATE at half the interval.

use super::message::Message;
use ezk_sip_types::Name;
use std::time::{Duration, Instant};

/// Which side refreshes the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// What to answer a request, as far as session timers go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 422 Session Interval Too Small, with `Min-SE: <secs>`.
    TooSmall { min_se: u32 },
    /// A 2xx with these headers; the timer runs from the answer.
    Timer {
        interval: u32,
        refresher: Refresher,
        /// `Require: timer` goes into the 2xx (the UAC refreshes, so it must support it).
        require: bool,
    },
    /// No session timer for this session (or no longer).
    None,
}

impl Answer {
    /// Header lines for the 2xx (none for `None`); `Supported: timer` is added by the caller.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Answer::Timer {
                interval,
                refresher,
                require,
            } => {
                let mut h = vec![(
                    "Session-Expires",
                    format!("{interval};refresher={}", refresher.as_str()),
                )];
                if *require {
                    h.push(("Require", "timer".to_string()));
                }
                h
            }
            Answer::TooSmall { .. } | Answer::None => Vec::new(),
        }
    }
}

/// The session timer of one call.
#[derive(Clone, Debug)]
pub struct SessionTimer {
    /// Our minimum interval (`[sip] session_min_se_secs`; RFC 4028 says at least 90).
    min_se: u32,
    /// The running timer: interval, who refreshes, and when it was last refreshed.
    running: Option<(Duration, Refresher, Instant)>,
}

/// What the timer wants done next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a refresh (UPDATE) now: ivrd is the refresher.
    Refresh,
    /// The refresh did not come: send BYE now.
    Expire,
}

impl SessionTimer {
    pub fn new(min_se: u32) -> SessionTimer {
        SessionTimer {
            min_se: min_se.max(1),
            running: None,
        }
    }

    /// Negotiates for an INVITE, re-INVITE or UPDATE and takes the result at once (for a
    /// request whose 2xx is certain); see [`SessionTimer::decide`] and
    /// [`SessionTimer::commit`] for one whose SDP may still be refused.
    pub fn negotiate(&mut self, req: &Message, now: Instant) -> Answer {
        let answer = self.decide(req);
        self.commit(&answer, now);
        answer
    }

    /// The 2xx with `answer` went out: a timer (re)starts, or stops. `TooSmall` changes
    /// nothing (a refused refresh refreshes nothing).
    pub fn commit(&mut self, answer: &Answer, now: Instant) {
        match answer {
            Answer::Timer {
                interval,
                refresher,
                ..
            } => self.running = Some((Duration::from_secs(u64::from(*interval)), *refresher, now)),
            Answer::None => self.running = None,
            Answer::TooSmall { .. } => {}
        }
    }

    /// The interval of the running timer, in seconds (for the `Session-Expires` of our refresh).
    pub fn interval_secs(&self) -> Option<u64> {
        self.running.map(|(i, _, _)| i.as_secs())
    }

    /// What to answer `req`, without changing anything yet.
    pub fn decide(&self, req: &Message) -> Answer {
        let Some((requested, refresher)) = session_expires(req) else {
            return Answer::None;
        };
        let uac_supports =
            has_option(req, &Name::SUPPORTED, "timer") || has_option(req, &Name::REQUIRE, "timer");
        if uac_supports {
            if requested < self.min_se {
                return Answer::TooSmall {
                    min_se: self.min_se,
                };
            }
            let floor = min_se(req).unwrap_or(0);
            let refresher = refresher.unwrap_or(Refresher::Uac);
            return Answer::Timer {
                interval: requested.max(floor),
                refresher,
                require: refresher == Refresher::Uac,
            };
        }
        // A proxy asked for it, the UAC knows nothing of it: only we can refresh, and only by
        // UPDATE without SDP (we send no INVITEs).
        if allows(req, "UPDATE") {
            return Answer::Timer {
                interval: requested.max(self.min_se),
                refresher: Refresher::Uas,
                require: false,
            };
        }
        Answer::None
    }

    /// Our refresh went through (a 2xx to our UPDATE): the interval starts again.
    pub fn refreshed(&mut self, now: Instant) {
        if let Some((_, _, at)) = &mut self.running {
            *at = now;
        }
    }

    /// When something is due, if a timer runs: our refresh at half the interval, or the BYE
    /// at the interval minus min(32 s, a third of it) when the UAC refreshes.
    pub fn deadline(&self) -> Option<(Instant, Due)> {
        let (interval, refresher, at) = self.running?;
        Some(match refresher {
            Refresher::Uas => (at + interval / 2, Due::Refresh),
            Refresher::Uac => {
                let margin = (interval / 3).min(Duration::from_secs(32));
                (at + interval - margin, Due::Expire)
            }
        })
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

/// Longest interval we keep (a day): a call lasts at most `max_call_secs` anyway, and this
/// keeps every deadline well inside what an `Instant` can hold.
const MAX_INTERVAL: u32 = 86_400;

/// `Session-Expires: <secs>[;refresher=uac|uas]` (compact form `x`).
fn session_expires(req: &Message) -> Option<(u32, Option<Refresher>)> {
    let raw = req.header(&Name::custom("Session-Expires", &["Session-Expires", "x"]))?;
    let mut parts = raw.split(';');
    let secs: u32 = parts.next()?.trim().parse().ok()?;
    let secs = secs.min(MAX_INTERVAL);
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some((secs, refresher))
}

/// `Min-SE: <secs>`.
fn min_se(req: &Message) -> Option<u32> {
    req.header(&Name::custom("Min-SE", &["Min-SE"]))?
        .split(';')
        .next()?
        .trim()
        .parse::<u32>()
        .ok()
        .map(|v| v.min(MAX_INTERVAL))
}

/// Whether a comma-separated option header (Supported, Require, Allow) lists `option`.
fn has_option(req: &Message, name: &Name, option: &str) -> bool {
    req.headers
        .get_raw(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(option))
}

fn allows(req: &Message, method: &str) -> bool {
    has_option(req, &Name::ALLOW, method)
}

/// Option tags we support, for `Supported` headers.
pub const SUPPORTED: &str = "timer";

/// Whether `tag` is an extension we implement (a request may `Require` it).
pub fn is_supported(tag: &str) -> bool {
    SUPPORTED
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(tag.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(extra: &str) -> Message {
        Message::parse(Bytes::from(format!(
            "INVITE sip:ivr@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
             From: <sip:a@h>;tag=1\r\nTo: <sip:ivr@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n{extra}\r\n"
        )))
        .unwrap()
    }

    #[test]
    fn a_uac_with_timer_support_refreshes_and_its_value_counts() {
        let mut t = SessionTimer::new(90);
        let now = Instant::now();
        let a = t.negotiate(
            &req("Supported: timer, 100rel\r\nSession-Expires: 1800\r\n"),
            now,
        );
        assert_eq!(
            a,
            Answer::Timer {
                interval: 1800,
                refresher: Refresher::Uac,
                require: true
            }
        );
        assert_eq!(
            a.headers(),
            vec![
                ("Session-Expires", "1800;refresher=uac".to_string()),
                ("Require", "timer".to_string())
            ]
        );
        // BYE at 1800 - 32 s without a refresh.
        assert_eq!(
            t.deadline(),
            Some((now + Duration::from_secs(1768), Due::Expire))
        );
        // A short interval keeps a third of itself as margin: 90 - 30.
        let mut t = SessionTimer::new(90);
        t.negotiate(
            &req("Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n"),
            now,
        );
        assert_eq!(
            t.deadline(),
            Some((now + Duration::from_secs(60), Due::Expire))
        );
    }

    #[test]
    fn too_small_is_422_and_changes_nothing() {
        let mut t = SessionTimer::new(90);
        let now = Instant::now();
        assert_eq!(
            t.negotiate(&req("Supported: timer\r\nSession-Expires: 60\r\n"), now),
            Answer::TooSmall { min_se: 90 }
        );
        assert!(!t.is_running());
        // The request's own Min-SE is a floor for the answer too.
        assert_eq!(
            t.negotiate(
                &req("Supported: timer\r\nSession-Expires: 100\r\nMin-SE: 120\r\n"),
                now
            ),
            Answer::Timer {
                interval: 120,
                refresher: Refresher::Uac,
                require: true
            }
        );
    }

    #[test]
    fn the_uas_refreshes_when_asked_or_when_the_uac_cannot() {
        let now = Instant::now();
        let mut t = SessionTimer::new(90);
        let a = t.negotiate(
            &req("Supported: timer\r\nSession-Expires: 120;refresher=uas\r\n"),
            now,
        );
        assert_eq!(
            a,
            Answer::Timer {
                interval: 120,
                refresher: Refresher::Uas,
                require: false
            }
        );
        assert_eq!(
            t.deadline(),
            Some((now + Duration::from_secs(60), Due::Refresh))
        );
        t.refreshed(now + Duration::from_secs(60));
        assert_eq!(
            t.deadline(),
            Some((now + Duration::from_secs(120), Due::Refresh))
        );
        // A proxy inserted Session-Expires (no Supported: timer): we refresh by UPDATE if the
        // UAC allows it, at no less than our minimum; else no timer at all.
        let mut t = SessionTimer::new(90);
        assert_eq!(
            t.negotiate(
                &req("Allow: INVITE, ACK, BYE, UPDATE\r\nSession-Expires: 30\r\n"),
                now
            ),
            Answer::Timer {
                interval: 90,
                refresher: Refresher::Uas,
                require: false
            }
        );
        let mut t = SessionTimer::new(90);
        assert_eq!(
            t.negotiate(&req("Allow: INVITE, BYE\r\nSession-Expires: 1800\r\n"), now),
            Answer::None
        );
    }

    #[test]
    fn a_refresh_without_session_expires_turns_the_timer_off() {
        let now = Instant::now();
        let mut t = SessionTimer::new(90);
        t.negotiate(&req("Supported: timer\r\nx: 600\r\n"), now);
        assert!(t.is_running(), "compact form x");
        assert_eq!(t.negotiate(&req(""), now), Answer::None);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn garbage_values_mean_no_timer() {
        let now = Instant::now();
        let mut t = SessionTimer::new(90);
        // The longest interval is capped, so deadlines never overflow.
        t.negotiate(
            &req("Supported: timer\r\nSession-Expires: 4294967295\r\n"),
            now,
        );
        assert!(
            t.deadline()
                .is_some_and(|(at, _)| at < now + Duration::from_secs(86_401))
        );
        for v in ["abc", "-5", "99999999999", ""] {
            assert_eq!(
                t.negotiate(
                    &req(&format!("Supported: timer\r\nSession-Expires: {v}\r\n")),
                    now
                ),
                Answer::None,
                "{v}"
            );
        }
    }
}

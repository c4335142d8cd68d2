//! SIP transaction state machines (RFC 3261 section 17, with the RFC 6026
//! "Accepted" state), written sans-I/O in the style of `quinn-proto`.
//!
//! The machines own no socket and read no clock. The owner feeds them
//! inputs stamped with the current time (`handle_*(now, ..)`) and drains
//! their outputs:
//!
//! * [`poll_transmit`](ServerInvite::poll_transmit): a message to put on the
//!   wire (the owner knows the destination: the request's source or the
//!   request's target);
//! * [`poll_timeout`](ServerInvite::poll_timeout): the next deadline at which
//!   the owner must call `handle_timeout`;
//! * [`poll_event`](ServerInvite::poll_event): things the transaction user
//!   (TU) must act on, ending with exactly one [`Event::Terminated`] so the
//!   owner can drop the machine.
//!
//! Keeping time and I/O outside makes every timer exactly testable on a
//! virtual clock and lets one event loop drive thousands of transactions.
//! Messages are opaque, already-encoded [`Bytes`]; the machines never parse
//! SIP, so responses are handed over together with their status code.
//!
//! Calls that make no sense in the current state (an ACK before any final
//! response, a response after the transaction ended, a status outside
//! 100..=699) are ignored: the RFC tells transactions to absorb stray
//! messages, and a no-op is the one reaction that cannot corrupt state.
//!
//! Only the machines ivrd needs exist: [`ServerInvite`] and [`ServerNonInvite`]
//! for the calls it answers, [`ClientNonInvite`] for the requests it sends
//! itself (BYE, REFER, NOTIFY, INFO, CANCEL), and [`ClientInvite`] for the
//! INVITEs of outbound calls (a PIN read out by voice call). The ACK and
//! CANCEL of such an INVITE are built by
//! [`ack_for_failure`](super::message::ack_for_failure) and
//! [`cancel_for`](super::message::cancel_for).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The base timer values of RFC 3261 section 17.1.1.1 / table 4.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    /// RTT estimate; the initial retransmission interval.
    pub t1: Duration,
    /// Cap on the retransmission interval for non-INVITE requests and
    /// INVITE responses.
    pub t2: Duration,
    /// Maximum time a message stays in the network.
    pub t4: Duration,
    /// How long an answered INVITE waits for the ACK of its 2xx (Timer L, capped at 64*T1).
    /// RFC 6026 gives 64*T1 = 32 s; ivrd uses less (`[sip] ack_timeout_ms`, 16*T1 by
    /// default) because an unconfirmed INVITE holds an RTP port, and anyone can send INVITEs
    /// they never ACK: the 2xx is sent five times by then, and a caller that received none of
    /// them has no working path to us anyway.
    pub ack_wait: Duration,
}

impl Default for Timers {
    /// The RFC 3261 recommended values: T1 = 500 ms, T2 = 4 s, T4 = 5 s.
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            ack_wait: Duration::from_secs(32),
        }
    }
}

/// The transaction timers, named as in RFC 3261 table 4 and RFC 6026
/// (L and M).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// INVITE request retransmit (client, Calling, unreliable only): T1,
    /// doubling without cap.
    A,
    /// INVITE transaction timeout (client, Calling only: none runs in
    /// Proceeding, RFC 3261 17.1.1.2).
    B,
    /// Wait time for response retransmits (client INVITE, Completed), during
    /// which each retransmitted final response is answered with the ACK
    /// again; at least 32 s unreliable, 0 reliable.
    D,
    /// Non-INVITE request retransmit (client, unreliable only).
    E,
    /// Non-INVITE transaction timeout (client).
    F,
    /// INVITE final response retransmit (server, unreliable only). Also used
    /// for the 2xx retransmission of RFC 3261 13.3.1.4, which follows the
    /// same T1-doubling-to-T2 schedule.
    G,
    /// Wait time for ACK receipt (server INVITE, Completed).
    H,
    /// Wait time for ACK retransmits (server INVITE, Confirmed).
    I,
    /// Wait time for non-INVITE request retransmits (server).
    J,
    /// Wait time for response retransmits (client non-INVITE).
    K,
    /// Wait time in Accepted for the ACK / INVITE retransmits (server
    /// INVITE, RFC 6026 section 8.7).
    L,
    /// Wait time in Accepted for 2xx retransmits (client INVITE, RFC 6026
    /// section 8.4).
    M,
}

impl Timers {
    /// The initial duration of `timer` on the given transport, or `None`
    /// when the timer is not used on that transport (the retransmission
    /// timers only run over unreliable transports, RFC 3261 17.1.1.2,
    /// 17.1.2.2, 17.2.1).
    ///
    /// All timer arithmetic lives here, in [`Timers::backoff`] and in
    /// [`Timers::invite_backoff`] so the table can be checked against
    /// RFC 3261 table 4 in one place.
    pub fn duration(&self, timer: Timer, reliable: bool) -> Option<Duration> {
        let sixty_four_t1 = self.t1.checked_mul(64).unwrap_or(Duration::MAX);
        match timer {
            Timer::A | Timer::E | Timer::G => (!reliable).then_some(self.t1),
            Timer::B | Timer::F | Timer::H | Timer::M => Some(sixty_four_t1),
            Timer::L => Some(self.ack_wait.min(sixty_four_t1)),
            // "> 32 s for UDP": at least 32 s, and never shorter than the
            // 64*T1 the other side may keep retransmitting for.
            Timer::D => Some(if reliable {
                Duration::ZERO
            } else {
                sixty_four_t1.max(Duration::from_secs(32))
            }),
            Timer::I | Timer::K => Some(if reliable { Duration::ZERO } else { self.t4 }),
            Timer::J => Some(if reliable {
                Duration::ZERO
            } else {
                sixty_four_t1
            }),
        }
    }

    /// The retransmission interval that follows `previous`: doubled, capped
    /// at T2 (Timers E and G, RFC 3261 17.1.2.2 and 17.2.1; the 2xx
    /// retransmission of 13.3.1.4).
    pub fn backoff(&self, previous: Duration) -> Duration {
        previous
            .checked_mul(2)
            .unwrap_or(Duration::MAX)
            .min(self.t2)
    }

    /// Timer A's interval that follows `previous`: doubled, with no cap
    /// (RFC 3261 17.1.1.2; unlike E and G, Timer A is not capped at T2, and
    /// Timer B ends the doubling after six retransmissions).
    pub fn invite_backoff(&self, previous: Duration) -> Duration {
        previous.checked_mul(2).unwrap_or(Duration::MAX)
    }

    /// Timer E's interval once a provisional response has been seen: a
    /// flat T2 (RFC 3261 17.1.2.2, Proceeding state).
    pub fn proceeding_interval(&self) -> Duration {
        self.t2
    }
}

/// What the owner must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Timer H (server INVITE: no ACK for a non-2xx final), Timer F
    /// (client non-INVITE: no final response) or Timer B (client INVITE:
    /// no response at all); for the two client timers the owner treats it
    /// as a 408, RFC 3261 8.1.3.1.
    Timeout,
    /// No ACK for our 2xx within 64*T1 (RFC 3261 13.3.1.4, Timer L of
    /// RFC 6026): the dialog must send BYE.
    AckTimeout,
    /// The owner reported a transport failure (RFC 3261 17.1.4, 17.2.4);
    /// the TU is told and the transaction ends.
    TransportError,
    /// The transaction is over; emitted exactly once, always last. The
    /// owner may drop the machine after draining `poll_transmit`.
    Terminated,
}

/// Transaction states. Each machine uses a subset:
/// server INVITE: Proceeding, Accepted, Completed, Confirmed, Terminated;
/// client INVITE: Calling, Proceeding, Accepted, Completed, Terminated;
/// server and client non-INVITE: Trying, Proceeding, Completed, Terminated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Client INVITE: the INVITE is sent, no response yet (RFC 3261 17.1.1.2).
    Calling,
    /// Non-INVITE: request seen / sent, no response yet.
    Trying,
    /// A provisional response has been sent / received (server INVITE
    /// starts here: RFC 3261 17.2.1).
    Proceeding,
    /// INVITE after a 2xx (RFC 6026: section 7.1 for the server, 8.4 for the
    /// client).
    Accepted,
    /// A non-2xx final response has been sent / received.
    Completed,
    /// Server INVITE after the ACK for a non-2xx final response.
    Confirmed,
    /// Finished; every input is ignored.
    Terminated,
}

/// What the client transaction tells the owner about a received response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseDisposition {
    /// A 1xx to pass up to the TU (RFC 3261 17.1.2.2: every provisional
    /// in Trying or Proceeding is passed up).
    Provisional,
    /// The first final response; pass it up. Later retransmissions of it
    /// are absorbed (`None`).
    Final,
}

/// A retransmission timer (A, E, G, or the 2xx timer) and its current interval.
#[derive(Clone, Copy, Debug)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

impl Retransmit {
    /// Arms the first retransmission `interval` after `now`; `None` if the
    /// timer is unused on this transport or the deadline is unrepresentable.
    fn start(now: Instant, interval: Option<Duration>) -> Option<Self> {
        let interval = interval?;
        Some(Self {
            at: now.checked_add(interval)?,
            interval,
        })
    }

    /// Re-arms from `now` (RFC wording: "reset to fire in ..." when it
    /// fires), so a late caller gets one retransmission, not a burst.
    fn rearm(now: Instant, interval: Duration) -> Option<Self> {
        Some(Self {
            at: now.checked_add(interval)?,
            interval,
        })
    }
}

/// A one-shot timer that ends the current state (B, D, F, H, I, J, K, L, M).
#[derive(Clone, Copy, Debug)]
struct Deadline {
    timer: Timer,
    at: Instant,
}

/// Builds a one-shot deadline; an unrepresentable instant means "never".
fn deadline(now: Instant, timer: Timer, d: Duration) -> Option<Deadline> {
    Some(Deadline {
        timer,
        at: now.checked_add(d)?,
    })
}

/// Earliest of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The output queues every machine has.
#[derive(Debug, Default)]
struct Outputs {
    transmits: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

/// Status classes as the machines care about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Provisional,
    Success,
    Failure,
}

fn classify(status: u16) -> Option<Class> {
    match status {
        100..=199 => Some(Class::Provisional),
        200..=299 => Some(Class::Success),
        300..=699 => Some(Class::Failure),
        _ => None,
    }
}

/// Server INVITE transaction: RFC 3261 17.2.1 as amended by RFC 6026.
///
/// It also owns the 2xx retransmission that RFC 3261 13.3.1.4 assigns to
/// the UAS core, because it runs on the same schedule and ends with the
/// same ACK; the dialog only has to report the ACK (which arrives on a new
/// branch, so it never matches this transaction by itself) through
/// [`ServerInvite::handle_2xx_ack`].
#[derive(Debug)]
pub struct ServerInvite {
    state: State,
    timers: Timers,
    reliable: bool,
    /// The most recent response, re-sent on request retransmission and by
    /// the retransmission timer.
    last_response: Option<Bytes>,
    /// Timer G in Completed, the 13.3.1.4 2xx timer in Accepted.
    retransmit: Option<Retransmit>,
    /// Timer H in Completed, L in Accepted, I in Confirmed.
    deadline: Option<Deadline>,
    out: Outputs,
}

impl ServerInvite {
    /// A server INVITE transaction for a just-received INVITE. It starts in
    /// Proceeding (RFC 3261 17.2.1); the owner is expected to send a 100
    /// Trying promptly through [`ServerInvite::send_response`].
    pub fn new(_now: Instant, timers: Timers, reliable: bool) -> Self {
        Self {
            state: State::Proceeding,
            timers,
            reliable,
            last_response: None,
            retransmit: None,
            deadline: None,
            out: Outputs::default(),
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes of message this transaction keeps for retransmission (memory accounting).
    pub fn held_bytes(&self) -> usize {
        self.last_response.as_ref().map_or(0, Bytes::len)
    }

    /// The TU sends a response.
    ///
    /// * 1xx in Proceeding: transmitted, stays Proceeding.
    /// * 2xx in Proceeding: transmitted, enters Accepted (RFC 6026 7.1),
    ///   starts 2xx retransmission (UDP only) and Timer L.
    /// * 300-699 in Proceeding: transmitted, enters Completed, starts
    ///   Timer G (UDP only) and Timer H.
    /// * 2xx in Accepted: transmitted once (RFC 6026 7.1 passes further 2xx
    ///   straight to the transport); the first 2xx stays the one that is
    ///   retransmitted.
    /// * Anything else is ignored.
    pub fn send_response(&mut self, now: Instant, status: u16, msg: Bytes) {
        let Some(class) = classify(status) else {
            return;
        };
        match (self.state, class) {
            (State::Proceeding, Class::Provisional) => {
                self.transmit_and_remember(msg);
            }
            (State::Proceeding, Class::Success) => {
                self.transmit_and_remember(msg);
                self.state = State::Accepted;
                // RFC 3261 13.3.1.4: retransmit the 2xx at T1 doubling to
                // T2 until the ACK arrives; only needed over UDP.
                self.retransmit =
                    Retransmit::start(now, self.timers.duration(Timer::G, self.reliable));
                self.arm(now, Timer::L);
            }
            (State::Proceeding, Class::Failure) => {
                self.transmit_and_remember(msg);
                self.state = State::Completed;
                self.retransmit =
                    Retransmit::start(now, self.timers.duration(Timer::G, self.reliable));
                self.arm(now, Timer::H);
            }
            (State::Accepted, Class::Success) => {
                self.out.transmits.push_back(msg);
            }
            _ => {}
        }
    }

    /// The same INVITE arrived again. In Proceeding, Completed and Accepted
    /// the last response is re-sent (RFC 3261 17.2.1); before any response
    /// and in Confirmed it is absorbed.
    pub fn handle_request_retransmit(&mut self, _now: Instant) {
        if matches!(
            self.state,
            State::Proceeding | State::Completed | State::Accepted
        ) && let Some(msg) = &self.last_response
        {
            self.out.transmits.push_back(msg.clone());
        }
    }

    /// An ACK on this transaction's branch, i.e. for a non-2xx final. In
    /// Completed it enters Confirmed, stops Timers G and H and starts
    /// Timer I (T4 on UDP to absorb ACK retransmits, zero on reliable
    /// transports, where it terminates at once). Ignored elsewhere.
    pub fn handle_ack(&mut self, now: Instant) {
        if self.state != State::Completed {
            return;
        }
        self.state = State::Confirmed;
        self.retransmit = None;
        self.arm(now, Timer::I);
    }

    /// The dialog matched the ACK for our 2xx (a new branch). In Accepted
    /// it stops the 2xx retransmission and enters Confirmed, where it
    /// lingers until Timer L (RFC 6026 7.1) so that a late copy of the
    /// INVITE is absorbed here instead of looking like a new call. The
    /// lingering deadline ends quietly (no [`Event::AckTimeout`]).
    pub fn handle_2xx_ack(&mut self, _now: Instant) {
        if self.state == State::Accepted {
            self.state = State::Confirmed;
            self.retransmit = None;
            // Confirmed absorbs retransmissions without answering: the 2xx is not needed
            // again, and at thousands of calls a second its bytes add up.
            self.last_response = None;
            if let Some(d) = &mut self.deadline {
                // Timer I's semantics ("terminate, nothing to report") for L's remaining time.
                d.timer = Timer::I;
            }
        }
    }

    /// The owner failed to send one of our messages (RFC 3261 17.2.4):
    /// report [`Event::TransportError`] and terminate.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != State::Terminated {
            self.out.events.push_back(Event::TransportError);
            self.terminate();
        }
    }

    /// Fires every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // The state-ending timer first: if it is due, any retransmission due
        // at the same instant is moot.
        if let Some(d) = self.deadline
            && d.at <= now
        {
            match d.timer {
                Timer::H => self.out.events.push_back(Event::Timeout),
                Timer::L => self.out.events.push_back(Event::AckTimeout),
                _ => {}
            }
            self.terminate();
            return;
        }
        if let Some(r) = self.retransmit
            && r.at <= now
        {
            if let Some(msg) = &self.last_response {
                self.out.transmits.push_back(msg.clone());
            }
            self.retransmit = Retransmit::rearm(now, self.timers.backoff(r.interval));
        }
    }

    /// The next instant at which [`ServerInvite::handle_timeout`] must be
    /// called, if any timer is running.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.retransmit.map(|r| r.at), self.deadline.map(|d| d.at))
    }

    /// The next message to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.transmits.pop_front()
    }

    /// The next event for the owner, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    fn transmit_and_remember(&mut self, msg: Bytes) {
        self.out.transmits.push_back(msg.clone());
        self.last_response = Some(msg);
    }

    /// Arms the state-ending timer; a zero duration (I on reliable
    /// transports) fires at once, as "fire in zero seconds" means.
    fn arm(&mut self, now: Instant, timer: Timer) {
        match self.timers.duration(timer, self.reliable) {
            Some(d) if d.is_zero() => self.terminate(),
            Some(d) => self.deadline = deadline(now, timer, d),
            None => self.deadline = None,
        }
    }

    fn terminate(&mut self) {
        if self.state == State::Terminated {
            return;
        }
        self.state = State::Terminated;
        self.retransmit = None;
        self.deadline = None;
        self.out.events.push_back(Event::Terminated);
    }
}

/// Server non-INVITE transaction: RFC 3261 17.2.2.
#[derive(Debug)]
pub struct ServerNonInvite {
    state: State,
    timers: Timers,
    reliable: bool,
    last_response: Option<Bytes>,
    /// Timer J in Completed.
    deadline: Option<Deadline>,
    out: Outputs,
}

impl ServerNonInvite {
    /// A server transaction for a just-received non-INVITE request; starts
    /// in Trying.
    pub fn new(_now: Instant, timers: Timers, reliable: bool) -> Self {
        Self {
            state: State::Trying,
            timers,
            reliable,
            last_response: None,
            deadline: None,
            out: Outputs::default(),
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes of message this transaction keeps for retransmission (memory accounting).
    pub fn held_bytes(&self) -> usize {
        self.last_response.as_ref().map_or(0, Bytes::len)
    }

    /// The TU sends a response. A 1xx in Trying or Proceeding is sent and
    /// enters Proceeding; a final (200-699) is sent and enters Completed,
    /// starting Timer J (64*T1 on UDP, zero, i.e. immediate termination,
    /// on reliable transports). Responses in Completed are discarded
    /// (RFC 3261 17.2.2).
    pub fn send_response(&mut self, now: Instant, status: u16, msg: Bytes) {
        let Some(class) = classify(status) else {
            return;
        };
        if !matches!(self.state, State::Trying | State::Proceeding) {
            return;
        }
        self.out.transmits.push_back(msg.clone());
        self.last_response = Some(msg);
        if class == Class::Provisional {
            self.state = State::Proceeding;
            return;
        }
        self.state = State::Completed;
        match self.timers.duration(Timer::J, self.reliable) {
            Some(d) if !d.is_zero() => self.deadline = deadline(now, Timer::J, d),
            _ => self.terminate(),
        }
    }

    /// The same request arrived again: absorbed in Trying (nothing to send
    /// yet), answered with the last response in Proceeding and Completed
    /// (RFC 3261 17.2.2).
    pub fn handle_request_retransmit(&mut self, _now: Instant) {
        if matches!(self.state, State::Proceeding | State::Completed)
            && let Some(msg) = &self.last_response
        {
            self.out.transmits.push_back(msg.clone());
        }
    }

    /// The owner failed to send our response (RFC 3261 17.2.4).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != State::Terminated {
            self.out.events.push_back(Event::TransportError);
            self.terminate();
        }
    }

    /// Fires Timer J if due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline
            && d.at <= now
        {
            self.terminate();
        }
    }

    /// The next deadline (only Timer J exists here).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.map(|d| d.at)
    }

    /// The next message to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.transmits.pop_front()
    }

    /// The next event for the owner, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    fn terminate(&mut self) {
        if self.state == State::Terminated {
            return;
        }
        self.state = State::Terminated;
        self.deadline = None;
        self.out.events.push_back(Event::Terminated);
    }
}

/// Client non-INVITE transaction: RFC 3261 17.1.2, for the BYE, REFER,
/// NOTIFY and INFO requests ivrd sends.
#[derive(Debug)]
pub struct ClientNonInvite {
    state: State,
    timers: Timers,
    reliable: bool,
    request: Bytes,
    /// Timer E (unreliable transports only).
    retransmit: Option<Retransmit>,
    /// Timer F in Trying / Proceeding, K in Completed.
    deadline: Option<Deadline>,
    out: Outputs,
}

impl ClientNonInvite {
    /// Starts the transaction: the request is queued for transmission at
    /// once, Timer F (64*T1) starts, and on UDP Timer E (T1) as well
    /// (RFC 3261 17.1.2.2).
    pub fn new(now: Instant, timers: Timers, reliable: bool, request: Bytes) -> Self {
        let mut out = Outputs::default();
        out.transmits.push_back(request.clone());
        let f = timers
            .duration(Timer::F, reliable)
            .and_then(|d| deadline(now, Timer::F, d));
        Self {
            state: State::Trying,
            timers,
            reliable,
            request,
            retransmit: Retransmit::start(now, timers.duration(Timer::E, reliable)),
            deadline: f,
            out,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// A response matching this transaction arrived. Returns whether the
    /// owner should pass it up:
    ///
    /// * 1xx in Trying or Proceeding: `Provisional`; enters Proceeding
    ///   (Timer E keeps its pending deadline, then runs every T2).
    /// * 200-699 in Trying or Proceeding: `Final`; enters Completed, stops
    ///   Timers E and F and starts Timer K (T4 on UDP to absorb response
    ///   retransmits, zero on reliable transports: terminates at once).
    /// * Anything in Completed or Terminated, or an invalid status: `None`
    ///   (absorbed).
    pub fn handle_response(&mut self, now: Instant, status: u16) -> Option<ResponseDisposition> {
        let class = classify(status)?;
        if !matches!(self.state, State::Trying | State::Proceeding) {
            return None;
        }
        if class == Class::Provisional {
            self.state = State::Proceeding;
            return Some(ResponseDisposition::Provisional);
        }
        self.state = State::Completed;
        self.retransmit = None;
        match self.timers.duration(Timer::K, self.reliable) {
            Some(d) if !d.is_zero() => self.deadline = deadline(now, Timer::K, d),
            _ => self.terminate(),
        }
        Some(ResponseDisposition::Final)
    }

    /// The owner failed to send the request (RFC 3261 17.1.4): report
    /// [`Event::TransportError`] (the TU treats it like a 503) and
    /// terminate.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != State::Terminated {
            self.out.events.push_back(Event::TransportError);
            self.terminate();
        }
    }

    /// Fires every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline
            && d.at <= now
        {
            // Timer F: no final response in time (RFC 3261 17.1.2.2); the
            // TU learns of it before the transaction goes away.
            if d.timer == Timer::F {
                self.out.events.push_back(Event::Timeout);
            }
            self.terminate();
            return;
        }
        if let Some(r) = self.retransmit
            && r.at <= now
        {
            self.out.transmits.push_back(self.request.clone());
            let next = if self.state == State::Proceeding {
                self.timers.proceeding_interval()
            } else {
                self.timers.backoff(r.interval)
            };
            self.retransmit = Retransmit::rearm(now, next);
        }
    }

    /// The next instant at which [`ClientNonInvite::handle_timeout`] must
    /// be called, if any timer is running.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.retransmit.map(|r| r.at), self.deadline.map(|d| d.at))
    }

    /// The next message to send (always the request), oldest first.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.transmits.pop_front()
    }

    /// The next event for the owner, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    fn terminate(&mut self) {
        if self.state == State::Terminated {
            return;
        }
        self.state = State::Terminated;
        self.retransmit = None;
        self.deadline = None;
        self.out.events.push_back(Event::Terminated);
    }
}

/// What the client INVITE transaction tells the owner about a received response
/// (see [`ClientInvite::handle_response`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteResponse {
    /// A 1xx in Calling or Proceeding: pass it up (RFC 3261 17.1.1.2 passes every one up).
    Provisional,
    /// A 2xx in Calling, Proceeding or Accepted: pass it up. The TU, not the transaction,
    /// ACKs a 2xx (RFC 3261 13.2.2.4), so this is also returned for each retransmission of a
    /// 2xx in Accepted (RFC 6026 8.4), which the TU answers by re-sending its ACK, and for a
    /// 2xx from another fork (a different To tag), which the TU ACKs and usually ends with BYE.
    Success,
    /// The first 300-699 final response: pass it up. The transaction has already queued the
    /// ACK for it (RFC 3261 17.1.1.3); retransmissions of it are absorbed (`None`) and
    /// answered with the same ACK.
    Failure,
}

/// Client INVITE transaction: RFC 3261 17.1.1 as amended by RFC 6026, for the INVITEs of
/// outbound calls.
///
/// * Calling: the INVITE is sent at once and, over unreliable transports, re-sent on Timer A
///   (T1, doubling with no cap, 17.1.1.2); Timer B (64*T1) ends the transaction with
///   [`Event::Timeout`] if no response at all arrived.
/// * Proceeding (after a 1xx): no retransmission and **no timer**: RFC 3261 runs Timer B in
///   Calling only, so a call that rings forever keeps the transaction forever. The TU must bound
///   ringing itself and send a CANCEL (its own non-INVITE transaction, built with
///   [`cancel_for`](super::message::cancel_for); only once `state()` is Proceeding, RFC 3261
///   9.1). The 487 that follows ends this transaction as any failure does; if none comes
///   within 64*T1 of the CANCEL, the TU may drop the machine (RFC 3261 9.1): it owes nothing.
/// * Accepted (after a 2xx, RFC 6026 8.4): lingers for Timer M (64*T1) so that 2xx
///   retransmissions, and 2xx from other forks, still reach the TU, which ACKs them.
/// * Completed (after 300-699): the transaction sends the ACK, again for every retransmission
///   of the final response, until Timer D (at least 32 s unreliable, 0 reliable).
///
/// **The ACK for a failure.** The machine never parses SIP, but that ACK must carry the To tag
/// of the response (17.1.1.3), so the owner builds it (with
/// [`ack_for_failure`](super::message::ack_for_failure)). It hands over a builder together with
/// the response: `handle_response(now, status, || ack_for_failure(&invite, &response))`. The
/// machine calls it exactly once, for the first 300-699 in Calling or Proceeding, keeps the
/// bytes and re-sends them for each retransmission. Compared with an event asking for the ACK
/// and a later `send_ack` call, this is one call with no state in between in which Completed
/// has no ACK (a retransmission arriving there would go unanswered) and no reply the owner can
/// forget; compared with passing finished ACK bytes with every response, nothing is built for
/// the 1xx, 2xx and retransmissions that need none, and the machine, not the owner, decides
/// whether an ACK is due.
///
/// Responses are not carried by events (the other machines' [`Event`] stays payload-free): like
/// [`ClientNonInvite::handle_response`], `handle_response` returns whether and how to pass the
/// response up, and the owner still holds it. The events are [`Event::Timeout`] (Timer B),
/// [`Event::TransportError`] and a final [`Event::Terminated`].
#[derive(Debug)]
pub struct ClientInvite {
    state: State,
    timers: Timers,
    reliable: bool,
    /// The INVITE, while Timer A may still re-send it (Calling only).
    request: Option<Bytes>,
    /// The ACK for the failure response, in Completed.
    ack: Option<Bytes>,
    /// Timer A (Calling, unreliable transports only).
    retransmit: Option<Retransmit>,
    /// Timer B in Calling, M in Accepted, D in Completed.
    deadline: Option<Deadline>,
    out: Outputs,
}

impl ClientInvite {
    /// Starts the transaction in Calling: `invite` is queued for transmission at once, Timer B
    /// (64*T1) starts, and on unreliable transports Timer A (T1) as well (RFC 3261 17.1.1.2).
    pub fn new(now: Instant, timers: Timers, reliable: bool, invite: Bytes) -> Self {
        let mut out = Outputs::default();
        out.transmits.push_back(invite.clone());
        let retransmit = Retransmit::start(now, timers.duration(Timer::A, reliable));
        let b = timers
            .duration(Timer::B, reliable)
            .and_then(|d| deadline(now, Timer::B, d));
        Self {
            state: State::Calling,
            timers,
            reliable,
            // Kept only for Timer A: over a reliable transport it is never re-sent.
            request: retransmit.is_some().then_some(invite),
            ack: None,
            retransmit,
            deadline: b,
            out,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes of message this transaction keeps for retransmission (memory accounting): the
    /// INVITE while Timer A runs, the ACK in Completed.
    pub fn held_bytes(&self) -> usize {
        self.request.as_ref().map_or(0, Bytes::len) + self.ack.as_ref().map_or(0, Bytes::len)
    }

    /// A response matching this transaction arrived (RFC 3261 17.1.3: top Via branch and CSeq
    /// method INVITE). Returns whether and how the owner passes it up to the TU:
    ///
    /// * 1xx in Calling or Proceeding: `Provisional`; enters Proceeding, which stops Timers A
    ///   and B (no timer runs in Proceeding: the TU bounds ringing, see the type's docs).
    /// * 2xx in Calling or Proceeding: `Success`; enters Accepted (RFC 6026 8.4), stops A and B
    ///   and starts Timer M (64*T1). 2xx in Accepted: `Success` again, M keeps its deadline.
    /// * 300-699 in Calling or Proceeding: `Failure`; calls `ack` once and queues the ACK it
    ///   returns, enters Completed, stops A and B and starts Timer D (at least 32 s on
    ///   unreliable transports; zero, i.e. terminates at once after queueing the ACK, on
    ///   reliable ones).
    /// * 300-699 in Completed: `None`, and the same ACK is queued again (17.1.1.2).
    /// * Anything else (a 1xx after a final, a failure in Accepted, a 2xx in Completed, any
    ///   response after termination, a status outside 100..=699): `None`, absorbed, and `ack`
    ///   is not called.
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
        ack: impl FnOnce() -> Bytes,
    ) -> Option<InviteResponse> {
        let class = classify(status)?;
        match (self.state, class) {
            (State::Calling | State::Proceeding, Class::Provisional) => {
                self.state = State::Proceeding;
                self.stop_calling_timers();
                Some(InviteResponse::Provisional)
            }
            (State::Calling | State::Proceeding, Class::Success) => {
                self.state = State::Accepted;
                self.stop_calling_timers();
                self.arm(now, Timer::M);
                Some(InviteResponse::Success)
            }
            (State::Accepted, Class::Success) => Some(InviteResponse::Success),
            (State::Calling | State::Proceeding, Class::Failure) => {
                self.state = State::Completed;
                self.stop_calling_timers();
                let ack = ack();
                self.out.transmits.push_back(ack.clone());
                self.ack = Some(ack);
                self.arm(now, Timer::D);
                Some(InviteResponse::Failure)
            }
            (State::Completed, Class::Failure) => {
                if let Some(ack) = &self.ack {
                    self.out.transmits.push_back(ack.clone());
                }
                None
            }
            _ => None,
        }
    }

    /// The owner failed to send the INVITE (or the ACK) (RFC 3261 17.1.4): report
    /// [`Event::TransportError`] (the TU treats it like a 503) and terminate.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != State::Terminated {
            self.out.events.push_back(Event::TransportError);
            self.terminate();
        }
    }

    /// Fires every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // The state-ending timer first: when Timer B is due, a Timer A retransmission due at
        // the same instant is moot.
        if let Some(d) = self.deadline
            && d.at <= now
        {
            // Timer B: no response at all (RFC 3261 17.1.1.2); the TU treats it as a 408.
            // D and M end quietly.
            if d.timer == Timer::B {
                self.out.events.push_back(Event::Timeout);
            }
            self.terminate();
            return;
        }
        if let Some(r) = self.retransmit
            && r.at <= now
        {
            if let Some(invite) = &self.request {
                self.out.transmits.push_back(invite.clone());
            }
            self.retransmit = Retransmit::rearm(now, self.timers.invite_backoff(r.interval));
        }
    }

    /// The next instant at which [`ClientInvite::handle_timeout`] must be called, if any timer
    /// is running (none in Proceeding).
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.retransmit.map(|r| r.at), self.deadline.map(|d| d.at))
    }

    /// The next message to send (the INVITE, or the ACK for a failure), oldest first.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.transmits.pop_front()
    }

    /// The next event for the owner, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// Leaving Calling: no more retransmissions of the INVITE (so its bytes can go) and no
    /// Timer B.
    fn stop_calling_timers(&mut self) {
        self.retransmit = None;
        self.deadline = None;
        self.request = None;
    }

    /// Arms the state-ending timer; a zero duration (D on reliable transports) terminates at
    /// once.
    fn arm(&mut self, now: Instant, timer: Timer) {
        match self.timers.duration(timer, self.reliable) {
            Some(d) if d.is_zero() => self.terminate(),
            Some(d) => self.deadline = deadline(now, timer, d),
            None => self.deadline = None,
        }
    }

    fn terminate(&mut self) {
        if self.state == State::Terminated {
            return;
        }
        self.state = State::Terminated;
        self.retransmit = None;
        self.deadline = None;
        self.request = None;
        self.ack = None;
        self.out.events.push_back(Event::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The polling surface shared by the machines, so one driver can run
    /// any of them on a virtual clock.
    trait Machine {
        fn poll_timeout(&self) -> Option<Instant>;
        fn handle_timeout(&mut self, now: Instant);
        fn poll_transmit(&mut self) -> Option<Bytes>;
        fn poll_event(&mut self) -> Option<Event>;
    }

    macro_rules! machine {
        ($t:ty) => {
            impl Machine for $t {
                fn poll_timeout(&self) -> Option<Instant> {
                    <$t>::poll_timeout(self)
                }
                fn handle_timeout(&mut self, now: Instant) {
                    <$t>::handle_timeout(self, now)
                }
                fn poll_transmit(&mut self) -> Option<Bytes> {
                    <$t>::poll_transmit(self)
                }
                fn poll_event(&mut self) -> Option<Event> {
                    <$t>::poll_event(self)
                }
            }
        };
    }
    machine!(ServerInvite);
    machine!(ServerNonInvite);
    machine!(ClientNonInvite);
    machine!(ClientInvite);

    /// What happened while the clock ran, as offsets from the test's base.
    #[derive(Debug, Default)]
    struct Trace {
        transmits: Vec<(Duration, Bytes)>,
        events: Vec<(Duration, Event)>,
    }

    impl Trace {
        fn transmit_times(&self) -> Vec<Duration> {
            self.transmits.iter().map(|(t, _)| *t).collect()
        }
        fn events(&self) -> Vec<Event> {
            self.events.iter().map(|(_, e)| *e).collect()
        }
    }

    /// Drains outputs now, then advances the virtual clock from deadline
    /// to deadline (exactly as an owner would) while they are `<= limit`.
    fn run(m: &mut impl Machine, base: Instant, limit: Duration) -> Trace {
        let mut trace = Trace::default();
        let mut steps = 0;
        while let Some(t) = m.poll_timeout() {
            if t > base + limit {
                break;
            }
            steps += 1;
            assert!(steps < 1000, "timer loop does not converge");
            m.handle_timeout(t);
            while let Some(b) = m.poll_transmit() {
                trace.transmits.push((t - base, b));
            }
            while let Some(e) = m.poll_event() {
                trace.events.push((t - base, e));
            }
        }
        trace
    }

    fn transmits(m: &mut impl Machine) -> Vec<Bytes> {
        std::iter::from_fn(|| m.poll_transmit()).collect()
    }

    fn events(m: &mut impl Machine) -> Vec<Event> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    fn ms_list(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| ms(m)).collect()
    }

    /// The default-timer G / E / 2xx schedule over 32 s:
    /// 0.5, 1.5, 3.5, 7.5, then every 4 s up to 31.5.
    fn default_schedule() -> Vec<Duration> {
        let mut v = ms_list(&[500, 1500, 3500, 7500]);
        v.extend((11_500..=31_500).step_by(4000).map(ms));
        v
    }

    const TRYING: &[u8] = b"SIP/2.0 100 Trying\r\n\r\n";
    const RINGING: &[u8] = b"SIP/2.0 180 Ringing\r\n\r\n";
    const OK: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
    const BUSY: &[u8] = b"SIP/2.0 486 Busy Here\r\n\r\n";
    const BYE: &[u8] = b"BYE sip:a@b SIP/2.0\r\n\r\n";

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    // ---- Timers ----

    #[test]
    fn timer_table_matches_rfc3261_table4() {
        let t = Timers::default();
        assert_eq!((t.t1, t.t2, t.t4), (ms(500), ms(4000), ms(5000)));
        let s32 = Some(Duration::from_secs(32));
        for timer in [Timer::A, Timer::E, Timer::G] {
            assert_eq!(t.duration(timer, false), Some(ms(500)), "{timer:?}");
            assert_eq!(t.duration(timer, true), None, "{timer:?}");
        }
        for timer in [Timer::B, Timer::F, Timer::H, Timer::L, Timer::M] {
            assert_eq!(t.duration(timer, false), s32, "{timer:?}");
            assert_eq!(t.duration(timer, true), s32, "{timer:?}");
        }
        assert_eq!(t.duration(Timer::D, false), s32);
        assert_eq!(t.duration(Timer::J, false), s32);
        assert_eq!(t.duration(Timer::I, false), Some(ms(5000)));
        assert_eq!(t.duration(Timer::K, false), Some(ms(5000)));
        for timer in [Timer::D, Timer::I, Timer::J, Timer::K] {
            assert_eq!(t.duration(timer, true), Some(Duration::ZERO), "{timer:?}");
        }
        assert_eq!(t.backoff(ms(500)), ms(1000));
        assert_eq!(t.backoff(ms(2000)), ms(4000));
        assert_eq!(t.backoff(ms(4000)), ms(4000));
        assert_eq!(t.proceeding_interval(), ms(4000));
    }

    #[test]
    fn timer_arithmetic_saturates_instead_of_panicking() {
        let t = Timers {
            t1: Duration::MAX,
            t2: Duration::MAX,
            t4: Duration::MAX,
            ack_wait: Duration::MAX,
        };
        assert_eq!(t.duration(Timer::F, false), Some(Duration::MAX));
        assert_eq!(t.backoff(Duration::MAX), Duration::MAX);
        // Deadlines that cannot be represented never fire.
        let now = Instant::now();
        let mut c = ClientNonInvite::new(now, t, false, b(BYE));
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(transmits(&mut c), vec![b(BYE)]);
    }

    // ---- Server INVITE ----

    #[test]
    fn invite_starts_proceeding_without_timers() {
        let now = Instant::now();
        let mut s = ServerInvite::new(now, Timers::default(), false);
        assert_eq!(s.state(), State::Proceeding);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_event(), None);
        // A retransmitted INVITE before any response has nothing to re-send.
        s.handle_request_retransmit(now);
        assert_eq!(s.poll_transmit(), None);
    }

    #[test]
    fn invite_provisionals_sent_and_resent_on_retransmit() {
        let now = Instant::now();
        let mut s = ServerInvite::new(now, Timers::default(), false);
        s.send_response(now, 100, b(TRYING));
        s.handle_request_retransmit(now);
        s.send_response(now, 180, b(RINGING));
        assert_eq!(s.state(), State::Proceeding);
        assert_eq!(transmits(&mut s), vec![b(TRYING), b(TRYING), b(RINGING)]);
        // The latest provisional is the one re-sent; no timer in Proceeding.
        s.handle_request_retransmit(now + ms(700));
        assert_eq!(transmits(&mut s), vec![b(RINGING)]);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.poll_event(), None);
    }

    #[test]
    fn invite_non2xx_timer_g_schedule_then_timer_h_udp() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), false);
        s.send_response(base, 486, b(BUSY));
        assert_eq!(s.state(), State::Completed);
        assert_eq!(transmits(&mut s), vec![b(BUSY)]);
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert_eq!(trace.transmit_times(), default_schedule());
        assert!(trace.transmits.iter().all(|(_, m)| *m == b(BUSY)));
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::Timeout),
                (ms(32_000), Event::Terminated)
            ]
        );
        assert_eq!(s.state(), State::Terminated);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn invite_non2xx_reliable_no_retransmit_timer_h() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), true);
        s.send_response(base, 486, b(BUSY));
        assert_eq!(transmits(&mut s), vec![b(BUSY)]);
        assert_eq!(s.poll_timeout(), Some(base + ms(32_000)));
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(trace.events(), vec![Event::Timeout, Event::Terminated]);
        assert_eq!(trace.events[0].0, ms(32_000));
    }

    #[test]
    fn invite_ack_confirms_then_timer_i_udp() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), false);
        s.send_response(base, 486, b(BUSY));
        transmits(&mut s);
        let trace = run(&mut s, base, ms(1000));
        assert_eq!(trace.transmit_times(), ms_list(&[500]));

        s.handle_ack(base + ms(1000));
        assert_eq!(s.state(), State::Confirmed);
        // G and H are gone; only I (T4) remains.
        assert_eq!(s.poll_timeout(), Some(base + ms(6000)));
        // Retransmitted INVITE and ACK are absorbed in Confirmed.
        s.handle_request_retransmit(base + ms(2000));
        s.handle_ack(base + ms(2000));
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_timeout(), Some(base + ms(6000)));

        s.handle_timeout(base + ms(5999));
        assert_eq!(s.state(), State::Confirmed);
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(trace.events, vec![(ms(6000), Event::Terminated)]);
        assert_eq!(s.state(), State::Terminated);
    }

    #[test]
    fn invite_ack_reliable_terminates_at_once() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), true);
        s.send_response(base, 603, b(BUSY));
        s.handle_ack(base + ms(10));
        assert_eq!(s.state(), State::Terminated);
        assert_eq!(events(&mut s), vec![Event::Terminated]);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn invite_completed_resends_final_on_request_retransmit() {
        let now = Instant::now();
        let mut s = ServerInvite::new(now, Timers::default(), false);
        s.send_response(now, 180, b(RINGING));
        s.send_response(now, 486, b(BUSY));
        transmits(&mut s);
        s.handle_request_retransmit(now + ms(100));
        assert_eq!(transmits(&mut s), vec![b(BUSY)]);
        // A second final from the TU is discarded.
        s.send_response(now, 500, b(OK));
        s.send_response(now, 200, b(OK));
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.state(), State::Completed);
    }

    #[test]
    fn invite_2xx_retransmits_until_ack() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), false);
        s.send_response(base, 100, b(TRYING));
        s.send_response(base, 200, b(OK));
        assert_eq!(s.state(), State::Accepted);
        assert_eq!(transmits(&mut s), vec![b(TRYING), b(OK)]);
        let trace = run(&mut s, base, ms(9000));
        assert_eq!(trace.transmit_times(), ms_list(&[500, 1500, 3500, 7500]));
        assert!(trace.transmits.iter().all(|(_, m)| *m == b(OK)));
        assert!(trace.events.is_empty());
        // A same-branch ACK does not apply to a 2xx.
        s.handle_ack(base + ms(9000));
        assert_eq!(s.state(), State::Accepted);

        s.handle_2xx_ack(base + ms(9000));
        assert_eq!(s.state(), State::Confirmed);
        assert!(events(&mut s).is_empty());
        // No more 2xx retransmissions; a late INVITE copy is absorbed, not re-answered.
        s.handle_timeout(base + ms(11_500));
        s.handle_request_retransmit(base + ms(12_000));
        assert_eq!(s.poll_transmit(), None);
        // Lingers until Timer L (64*T1 after the 2xx), then ends without AckTimeout.
        assert_eq!(s.poll_timeout(), Some(base + ms(32_000)));
        s.handle_timeout(base + ms(32_000));
        assert_eq!(s.state(), State::Terminated);
        assert_eq!(events(&mut s), vec![Event::Terminated]);
    }

    #[test]
    fn invite_2xx_without_ack_times_out_at_32s_udp() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), false);
        s.send_response(base, 200, b(OK));
        transmits(&mut s);
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert_eq!(trace.transmit_times(), default_schedule());
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::AckTimeout),
                (ms(32_000), Event::Terminated)
            ]
        );
    }

    #[test]
    fn invite_2xx_reliable_no_retransmit_but_ack_timeout() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), true);
        s.send_response(base, 200, b(OK));
        assert_eq!(transmits(&mut s), vec![b(OK)]);
        assert_eq!(s.poll_timeout(), Some(base + ms(32_000)));
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::AckTimeout),
                (ms(32_000), Event::Terminated)
            ]
        );
    }

    #[test]
    fn invite_accepted_resends_2xx_on_request_retransmit() {
        let now = Instant::now();
        let mut s = ServerInvite::new(now, Timers::default(), true);
        s.send_response(now, 200, b(OK));
        transmits(&mut s);
        s.handle_request_retransmit(now + ms(50));
        assert_eq!(transmits(&mut s), vec![b(OK)]);
        // Non-2xx after a 2xx is invalid and dropped; a further 2xx is
        // passed straight through without replacing the retransmitted one.
        s.send_response(now, 486, b(BUSY));
        assert_eq!(s.poll_transmit(), None);
        s.send_response(now, 200, b(RINGING));
        assert_eq!(transmits(&mut s), vec![b(RINGING)]);
        s.handle_request_retransmit(now + ms(60));
        assert_eq!(transmits(&mut s), vec![b(OK)]);
        assert_eq!(s.state(), State::Accepted);
    }

    #[test]
    fn invite_ignores_acks_before_final_and_invalid_status() {
        let now = Instant::now();
        let mut s = ServerInvite::new(now, Timers::default(), false);
        s.handle_ack(now);
        s.handle_2xx_ack(now);
        s.send_response(now, 99, b(TRYING));
        s.send_response(now, 700, b(BUSY));
        assert_eq!(s.state(), State::Proceeding);
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_event(), None);
        // 2xx ACK in Completed is not ours either.
        s.send_response(now, 404, b(BUSY));
        s.handle_2xx_ack(now);
        assert_eq!(s.state(), State::Completed);
    }

    #[test]
    fn invite_terminated_is_emitted_once_and_inputs_ignored_after() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), false);
        s.send_response(base, 200, b(OK));
        s.handle_2xx_ack(base + ms(100));
        s.handle_2xx_ack(base + ms(200));
        // Lingering in Confirmed until Timer L, then every input is ignored.
        s.handle_timeout(base + Duration::from_secs(60));
        s.handle_transport_error(base + Duration::from_secs(61));
        s.send_response(base + Duration::from_secs(61), 486, b(BUSY));
        s.handle_request_retransmit(base + Duration::from_secs(61));
        assert_eq!(transmits(&mut s), vec![b(OK)]);
        assert_eq!(events(&mut s), vec![Event::Terminated]);
        assert_eq!(s.state(), State::Terminated);
    }

    #[test]
    fn invite_late_timeout_call_sends_one_retransmit_not_a_burst() {
        let base = Instant::now();
        let mut s = ServerInvite::new(base, Timers::default(), false);
        s.send_response(base, 486, b(BUSY));
        transmits(&mut s);
        // The owner oversleeps past three scheduled retransmissions.
        s.handle_timeout(base + ms(4000));
        assert_eq!(transmits(&mut s).len(), 1);
        // The schedule resumes from the actual firing time with the next
        // interval (1 s after a first 0.5 s interval).
        assert_eq!(s.poll_timeout(), Some(base + ms(5000)));
    }

    #[test]
    fn invite_transport_error_reports_and_terminates() {
        let now = Instant::now();
        let mut s = ServerInvite::new(now, Timers::default(), false);
        s.send_response(now, 486, b(BUSY));
        s.handle_transport_error(now);
        assert_eq!(
            events(&mut s),
            vec![Event::TransportError, Event::Terminated]
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn invite_custom_timers_scale_everything() {
        let timers = Timers {
            t1: ms(100),
            t2: ms(400),
            t4: ms(1000),
            ack_wait: Duration::MAX,
        };
        // G: 0.1, 0.3, 0.7, then every T2 = 0.4 s; H at 64*T1 = 6.4 s.
        let mut expected = ms_list(&[100, 300]);
        expected.extend((700..=6300).step_by(400).map(ms));

        let base = Instant::now();
        let mut s = ServerInvite::new(base, timers, false);
        s.send_response(base, 486, b(BUSY));
        transmits(&mut s);
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert_eq!(trace.transmit_times(), expected);
        assert_eq!(
            trace.events,
            vec![(ms(6400), Event::Timeout), (ms(6400), Event::Terminated)]
        );

        // Same schedule for the 2xx, ending in AckTimeout at 6.4 s.
        let mut s = ServerInvite::new(base, timers, false);
        s.send_response(base, 200, b(OK));
        transmits(&mut s);
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert_eq!(trace.transmit_times(), expected);
        assert_eq!(trace.events[0], (ms(6400), Event::AckTimeout));

        // Timer I is T4.
        let mut s = ServerInvite::new(base, timers, false);
        s.send_response(base, 486, b(BUSY));
        s.handle_ack(base);
        assert_eq!(s.poll_timeout(), Some(base + ms(1000)));
    }

    /// A shorter ACK wait ends an unconfirmed 2xx early (the RTP port it holds comes back),
    /// after the retransmissions that fit; it never exceeds 64*T1.
    #[test]
    fn ack_wait_shortens_timer_l() {
        let base = Instant::now();
        let timers = Timers {
            t1: ms(100),
            ack_wait: ms(1600),
            ..Timers::default()
        };
        let mut s = ServerInvite::new(base, timers, false);
        s.send_response(base, 200, b(OK));
        transmits(&mut s);
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert_eq!(trace.transmit_times(), ms_list(&[100, 300, 700, 1500]));
        assert_eq!(
            trace.events,
            vec![(ms(1600), Event::AckTimeout), (ms(1600), Event::Terminated)]
        );
        let long = Timers {
            t1: ms(100),
            ack_wait: Duration::from_secs(3600),
            ..Timers::default()
        };
        assert_eq!(long.duration(Timer::L, false), Some(ms(6400)));
    }

    // ---- Server non-INVITE ----

    #[test]
    fn non_invite_server_trying_absorbs_retransmit() {
        let now = Instant::now();
        let mut s = ServerNonInvite::new(now, Timers::default(), false);
        assert_eq!(s.state(), State::Trying);
        s.handle_request_retransmit(now);
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.poll_event(), None);
    }

    #[test]
    fn non_invite_server_proceeding_resends_latest_provisional() {
        let now = Instant::now();
        let mut s = ServerNonInvite::new(now, Timers::default(), false);
        s.send_response(now, 100, b(TRYING));
        s.send_response(now, 180, b(RINGING));
        assert_eq!(s.state(), State::Proceeding);
        transmits(&mut s);
        s.handle_request_retransmit(now);
        assert_eq!(transmits(&mut s), vec![b(RINGING)]);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn non_invite_server_completed_absorbs_with_same_response_then_timer_j() {
        let base = Instant::now();
        let mut s = ServerNonInvite::new(base, Timers::default(), false);
        s.send_response(base, 200, b(OK));
        assert_eq!(s.state(), State::Completed);
        assert_eq!(transmits(&mut s), vec![b(OK)]);
        // No timer-driven retransmission of non-INVITE responses.
        assert_eq!(s.poll_timeout(), Some(base + ms(32_000)));
        s.handle_request_retransmit(base + ms(500));
        s.handle_request_retransmit(base + ms(1500));
        assert_eq!(transmits(&mut s), vec![b(OK), b(OK)]);
        // Further finals from the TU are discarded.
        s.send_response(base, 486, b(BUSY));
        assert_eq!(s.poll_transmit(), None);

        s.handle_timeout(base + ms(31_999));
        assert_eq!(s.state(), State::Completed);
        let trace = run(&mut s, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(trace.events, vec![(ms(32_000), Event::Terminated)]);
        s.handle_request_retransmit(base + ms(40_000));
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_event(), None);
    }

    #[test]
    fn non_invite_server_reliable_terminates_on_final_but_still_sends_it() {
        let now = Instant::now();
        let mut s = ServerNonInvite::new(now, Timers::default(), true);
        s.send_response(now, 481, b(BUSY));
        assert_eq!(s.state(), State::Terminated);
        assert_eq!(transmits(&mut s), vec![b(BUSY)]);
        assert_eq!(events(&mut s), vec![Event::Terminated]);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn non_invite_server_custom_t1_scales_timer_j() {
        let timers = Timers {
            t1: ms(100),
            ..Timers::default()
        };
        let now = Instant::now();
        let mut s = ServerNonInvite::new(now, timers, false);
        s.send_response(now, 200, b(OK));
        assert_eq!(s.poll_timeout(), Some(now + ms(6400)));
    }

    // ---- Client non-INVITE ----

    #[test]
    fn client_sends_request_at_once() {
        let now = Instant::now();
        let mut c = ClientNonInvite::new(now, Timers::default(), false, b(BYE));
        assert_eq!(c.state(), State::Trying);
        assert_eq!(transmits(&mut c), vec![b(BYE)]);
        assert_eq!(c.poll_timeout(), Some(now + ms(500)));
    }

    #[test]
    fn client_timer_e_in_trying_then_timer_f_at_32s() {
        let base = Instant::now();
        let mut c = ClientNonInvite::new(base, Timers::default(), false, b(BYE));
        transmits(&mut c);
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert_eq!(trace.transmit_times(), default_schedule());
        assert!(trace.transmits.iter().all(|(_, m)| *m == b(BYE)));
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::Timeout),
                (ms(32_000), Event::Terminated)
            ]
        );
        assert_eq!(c.handle_response(base + ms(33_000), 200), None);
    }

    #[test]
    fn client_timer_e_in_proceeding_runs_every_t2() {
        let base = Instant::now();
        let mut c = ClientNonInvite::new(base, Timers::default(), false, b(BYE));
        transmits(&mut c);
        let trace = run(&mut c, base, ms(600));
        assert_eq!(trace.transmit_times(), ms_list(&[500]));
        assert_eq!(
            c.handle_response(base + ms(600), 100),
            Some(ResponseDisposition::Provisional)
        );
        assert_eq!(c.state(), State::Proceeding);
        // The pending E (1 s after 0.5 s) still fires at 1.5 s; from then
        // on every T2 = 4 s; Timer F still ends it at 32 s.
        let trace = run(&mut c, base, Duration::from_secs(100));
        let mut expected = ms_list(&[1500]);
        expected.extend((5500..=29_500).step_by(4000).map(ms));
        assert_eq!(trace.transmit_times(), expected);
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::Timeout),
                (ms(32_000), Event::Terminated)
            ]
        );
    }

    #[test]
    fn client_final_stops_retransmission_then_timer_k() {
        let base = Instant::now();
        let mut c = ClientNonInvite::new(base, Timers::default(), false, b(BYE));
        transmits(&mut c);
        let trace = run(&mut c, base, ms(2000));
        assert_eq!(trace.transmit_times(), ms_list(&[500, 1500]));
        assert_eq!(
            c.handle_response(base + ms(2000), 200),
            Some(ResponseDisposition::Final)
        );
        assert_eq!(c.state(), State::Completed);
        assert_eq!(c.poll_timeout(), Some(base + ms(7000)));
        // Retransmitted finals and late provisionals are absorbed.
        assert_eq!(c.handle_response(base + ms(2500), 200), None);
        assert_eq!(c.handle_response(base + ms(2500), 180), None);
        assert_eq!(c.poll_timeout(), Some(base + ms(7000)));
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(trace.events, vec![(ms(7000), Event::Terminated)]);
        assert_eq!(c.handle_response(base + ms(8000), 200), None);
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn client_reliable_no_retransmit_and_timer_f() {
        let base = Instant::now();
        let mut c = ClientNonInvite::new(base, Timers::default(), true, b(BYE));
        assert_eq!(transmits(&mut c), vec![b(BYE)]);
        assert_eq!(c.poll_timeout(), Some(base + ms(32_000)));
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::Timeout),
                (ms(32_000), Event::Terminated)
            ]
        );
    }

    #[test]
    fn client_reliable_final_terminates_at_once() {
        let now = Instant::now();
        let mut c = ClientNonInvite::new(now, Timers::default(), true, b(BYE));
        assert_eq!(
            c.handle_response(now, 180),
            Some(ResponseDisposition::Provisional)
        );
        assert_eq!(
            c.handle_response(now, 180),
            Some(ResponseDisposition::Provisional)
        );
        assert_eq!(
            c.handle_response(now, 486),
            Some(ResponseDisposition::Final)
        );
        assert_eq!(c.state(), State::Terminated);
        assert_eq!(events(&mut c), vec![Event::Terminated]);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn client_invalid_status_is_ignored() {
        let now = Instant::now();
        let mut c = ClientNonInvite::new(now, Timers::default(), false, b(BYE));
        assert_eq!(c.handle_response(now, 0), None);
        assert_eq!(c.handle_response(now, 99), None);
        assert_eq!(c.handle_response(now, 700), None);
        assert_eq!(c.state(), State::Trying);
        assert_eq!(c.poll_timeout(), Some(now + ms(500)));
    }

    #[test]
    fn client_transport_error_reports_once() {
        let now = Instant::now();
        let mut c = ClientNonInvite::new(now, Timers::default(), false, b(BYE));
        c.handle_transport_error(now);
        c.handle_transport_error(now);
        c.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(
            events(&mut c),
            vec![Event::TransportError, Event::Terminated]
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn client_custom_t1_scales_e_and_f() {
        let timers = Timers {
            t1: ms(100),
            ..Timers::default()
        };
        // E: 0.1, 0.3, 0.7, 1.5, 3.1 (interval 1.6), then 3.2 s gaps:
        // 6.3; F at 64*T1 = 6.4 s.
        let base = Instant::now();
        let mut c = ClientNonInvite::new(base, timers, false, b(BYE));
        transmits(&mut c);
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert_eq!(
            trace.transmit_times(),
            ms_list(&[100, 300, 700, 1500, 3100, 6300])
        );
        assert_eq!(
            trace.events,
            vec![(ms(6400), Event::Timeout), (ms(6400), Event::Terminated)]
        );
        // Timer K stays T4.
        let mut c = ClientNonInvite::new(base, timers, false, b(BYE));
        c.handle_response(base, 200);
        assert_eq!(c.poll_timeout(), Some(base + ms(5000)));
    }

    // ---- Client INVITE ----

    const INVITE: &[u8] = b"INVITE sip:+4930123@pbx SIP/2.0\r\n\r\n";
    const ACK: &[u8] = b"ACK sip:+4930123@pbx SIP/2.0\r\n\r\n";

    fn ack() -> Bytes {
        b(ACK)
    }

    /// For responses that must not make the transaction build an ACK.
    fn no_ack() -> Bytes {
        panic!("the transaction asked for an ACK it must not send")
    }

    #[test]
    fn timer_a_backoff_doubles_without_cap() {
        let t = Timers::default();
        assert_eq!(t.invite_backoff(ms(500)), ms(1000));
        // E and G stop at T2 = 4 s; A does not.
        assert_eq!(t.invite_backoff(ms(4000)), ms(8000));
        assert_eq!(t.invite_backoff(ms(16_000)), ms(32_000));
        assert_eq!(t.invite_backoff(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn client_invite_timer_a_doubles_uncapped_then_timer_b_udp() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), false, b(INVITE));
        assert_eq!(c.state(), State::Calling);
        assert_eq!(transmits(&mut c), vec![b(INVITE)]);
        assert_eq!(c.held_bytes(), INVITE.len());
        assert_eq!(c.poll_timeout(), Some(base + ms(500)));
        let trace = run(&mut c, base, Duration::from_secs(100));
        // Gaps of T1, 2T1, 4T1, 8T1, 16T1, 32T1: 4 s, 8 s, 16 s are past T2 (no cap); the next
        // one (63.5 s) is after Timer B.
        assert_eq!(
            trace.transmit_times(),
            ms_list(&[500, 1500, 3500, 7500, 15_500, 31_500])
        );
        assert!(trace.transmits.iter().all(|(_, m)| *m == b(INVITE)));
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::Timeout),
                (ms(32_000), Event::Terminated)
            ]
        );
        assert_eq!(c.state(), State::Terminated);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.held_bytes(), 0);
    }

    #[test]
    fn client_invite_reliable_never_retransmits_and_times_out_at_64_t1() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), true, b(INVITE));
        assert_eq!(transmits(&mut c), vec![b(INVITE)]);
        // Nothing kept: over TCP the INVITE is never sent again.
        assert_eq!(c.held_bytes(), 0);
        assert_eq!(c.poll_timeout(), Some(base + ms(32_000)));
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(
            trace.events,
            vec![
                (ms(32_000), Event::Timeout),
                (ms(32_000), Event::Terminated)
            ]
        );
    }

    #[test]
    fn client_invite_custom_t1_scales_a_and_b() {
        let timers = Timers {
            t1: ms(100),
            ..Timers::default()
        };
        let base = Instant::now();
        let mut c = ClientInvite::new(base, timers, false, b(INVITE));
        transmits(&mut c);
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert_eq!(
            trace.transmit_times(),
            ms_list(&[100, 300, 700, 1500, 3100, 6300])
        );
        assert_eq!(
            trace.events,
            vec![(ms(6400), Event::Timeout), (ms(6400), Event::Terminated)]
        );
    }

    #[test]
    fn client_invite_late_timeout_call_sends_one_retransmit_not_a_burst() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), false, b(INVITE));
        transmits(&mut c);
        // The owner oversleeps past the 0.5, 1.5 and 3.5 s retransmissions.
        c.handle_timeout(base + ms(4000));
        assert_eq!(transmits(&mut c), vec![b(INVITE)]);
        // Resumes from the actual firing time with the next interval (1 s after 0.5 s).
        assert_eq!(c.poll_timeout(), Some(base + ms(5000)));
    }

    #[test]
    fn client_invite_provisional_stops_retransmission_and_every_timer() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), false, b(INVITE));
        transmits(&mut c);
        let trace = run(&mut c, base, ms(2000));
        assert_eq!(trace.transmit_times(), ms_list(&[500, 1500]));
        assert_eq!(
            c.handle_response(base + ms(2000), 100, no_ack),
            Some(InviteResponse::Provisional)
        );
        assert_eq!(c.state(), State::Proceeding);
        // Neither Timer A nor Timer B runs in Proceeding, and the INVITE is no longer held.
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.held_bytes(), 0);
        // Every further 1xx is passed up.
        for status in [180, 183, 180] {
            assert_eq!(
                c.handle_response(base + ms(3000), status, no_ack),
                Some(InviteResponse::Provisional)
            );
        }
        // Long after Timer B would have fired in Calling: nothing is sent, nothing ends.
        c.handle_timeout(base + Duration::from_secs(600));
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.state(), State::Proceeding);
    }

    #[test]
    fn client_invite_2xx_accepted_passes_every_2xx_up_then_timer_m() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), false, b(INVITE));
        transmits(&mut c);
        c.handle_response(base + ms(100), 180, no_ack);
        assert_eq!(
            c.handle_response(base + ms(1000), 200, no_ack),
            Some(InviteResponse::Success)
        );
        assert_eq!(c.state(), State::Accepted);
        // The transaction sends nothing for a 2xx: the TU ACKs it.
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.poll_timeout(), Some(base + ms(33_000)));
        // A retransmitted 2xx (or one from another fork) goes up again, and M is not restarted.
        for at in [1500, 2500, 20_000] {
            assert_eq!(
                c.handle_response(base + ms(at), 200, no_ack),
                Some(InviteResponse::Success)
            );
        }
        assert_eq!(c.poll_timeout(), Some(base + ms(33_000)));
        // Late provisionals and failures are absorbed, without an ACK.
        assert_eq!(c.handle_response(base + ms(3000), 180, no_ack), None);
        assert_eq!(c.handle_response(base + ms(3000), 486, no_ack), None);
        assert_eq!(c.state(), State::Accepted);
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        // Timer M ends it quietly: no Timeout.
        assert_eq!(trace.events, vec![(ms(33_000), Event::Terminated)]);
        assert_eq!(c.handle_response(base + ms(34_000), 200, no_ack), None);
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn client_invite_2xx_in_calling_stops_timer_a_and_m_runs_on_tcp_too() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), false, b(INVITE));
        transmits(&mut c);
        assert_eq!(
            c.handle_response(base + ms(200), 202, no_ack),
            Some(InviteResponse::Success)
        );
        assert_eq!(c.held_bytes(), 0);
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(trace.events, vec![(ms(32_200), Event::Terminated)]);

        let mut c = ClientInvite::new(base, Timers::default(), true, b(INVITE));
        c.handle_response(base, 200, no_ack);
        assert_eq!(c.state(), State::Accepted);
        assert_eq!(c.poll_timeout(), Some(base + ms(32_000)));
    }

    #[test]
    fn client_invite_failure_acked_once_then_per_retransmission_until_timer_d_udp() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), false, b(INVITE));
        transmits(&mut c);
        let trace = run(&mut c, base, ms(1000));
        assert_eq!(trace.transmit_times(), ms_list(&[500]));
        let built = std::cell::Cell::new(0);
        let counting = || {
            built.set(built.get() + 1);
            b(ACK)
        };
        assert_eq!(
            c.handle_response(base + ms(1000), 486, counting),
            Some(InviteResponse::Failure)
        );
        assert_eq!(c.state(), State::Completed);
        assert_eq!(transmits(&mut c), vec![b(ACK)]);
        assert_eq!(c.held_bytes(), ACK.len());
        // Timer A is gone; Timer D runs 32 s.
        assert_eq!(c.poll_timeout(), Some(base + ms(33_000)));
        // Each retransmitted 486 is absorbed and answered with the stored ACK: built once.
        for at in [1500, 2500] {
            assert_eq!(c.handle_response(base + ms(at), 486, counting), None);
            assert_eq!(transmits(&mut c), vec![b(ACK)]);
        }
        assert_eq!(built.get(), 1);
        // Other responses in Completed are absorbed and get no ACK.
        assert_eq!(c.handle_response(base + ms(3000), 200, no_ack), None);
        assert_eq!(c.handle_response(base + ms(3000), 180, no_ack), None);
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.poll_event(), None);
        c.handle_timeout(base + ms(32_999));
        assert_eq!(c.state(), State::Completed);
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert!(trace.transmits.is_empty());
        assert_eq!(trace.events, vec![(ms(33_000), Event::Terminated)]);
        assert_eq!(c.held_bytes(), 0);
        // After Timer D a retransmitted 486 gets no ACK from this transaction.
        assert_eq!(c.handle_response(base + ms(34_000), 486, no_ack), None);
        assert_eq!(c.poll_transmit(), None);
    }

    /// Timer D is at least 32 s on UDP even when 64*T1 is shorter.
    #[test]
    fn client_invite_timer_d_floor_of_32s_with_short_t1() {
        let timers = Timers {
            t1: ms(100),
            ..Timers::default()
        };
        let base = Instant::now();
        let mut c = ClientInvite::new(base, timers, false, b(INVITE));
        c.handle_response(base + ms(50), 180, no_ack);
        assert_eq!(
            c.handle_response(base + ms(50), 404, ack),
            Some(InviteResponse::Failure)
        );
        assert_eq!(c.poll_timeout(), Some(base + ms(32_050)));
    }

    #[test]
    fn client_invite_failure_over_tcp_acks_and_terminates_at_once() {
        let now = Instant::now();
        let mut c = ClientInvite::new(now, Timers::default(), true, b(INVITE));
        assert_eq!(
            c.handle_response(now, 180, no_ack),
            Some(InviteResponse::Provisional)
        );
        assert_eq!(
            c.handle_response(now, 603, ack),
            Some(InviteResponse::Failure)
        );
        // The ACK still goes out before the transaction is dropped (Timer D = 0).
        assert_eq!(transmits(&mut c), vec![b(INVITE), b(ACK)]);
        assert_eq!(c.state(), State::Terminated);
        assert_eq!(events(&mut c), vec![Event::Terminated]);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.held_bytes(), 0);
        assert_eq!(c.handle_response(now, 603, no_ack), None);
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn client_invite_ignores_invalid_status_and_responses_after_termination() {
        let base = Instant::now();
        let mut c = ClientInvite::new(base, Timers::default(), false, b(INVITE));
        transmits(&mut c);
        for status in [0, 99, 700, 999] {
            assert_eq!(c.handle_response(base, status, no_ack), None, "{status}");
        }
        assert_eq!(c.state(), State::Calling);
        assert_eq!(c.poll_timeout(), Some(base + ms(500)));
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.poll_event(), None);
        // Timer B ends it; then every response is a stray.
        let trace = run(&mut c, base, Duration::from_secs(100));
        assert_eq!(trace.events(), vec![Event::Timeout, Event::Terminated]);
        for status in [100, 180, 200, 486, 699] {
            assert_eq!(
                c.handle_response(base + ms(40_000), status, no_ack),
                None,
                "{status}"
            );
        }
        c.handle_timeout(base + ms(100_000));
        assert_eq!(c.state(), State::Terminated);
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn client_invite_transport_error_reports_once_in_any_live_state() {
        let now = Instant::now();
        let mut c = ClientInvite::new(now, Timers::default(), false, b(INVITE));
        transmits(&mut c);
        c.handle_transport_error(now);
        c.handle_transport_error(now);
        c.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(c.handle_response(now, 200, no_ack), None);
        assert_eq!(
            events(&mut c),
            vec![Event::TransportError, Event::Terminated]
        );
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.held_bytes(), 0);

        // In Completed (the ACK could not be sent) it ends as well, without Timer D.
        let mut c = ClientInvite::new(now, Timers::default(), false, b(INVITE));
        c.handle_response(now, 486, ack);
        c.handle_transport_error(now);
        assert_eq!(
            events(&mut c),
            vec![Event::TransportError, Event::Terminated]
        );
        assert_eq!(c.state(), State::Terminated);
        assert_eq!(c.poll_timeout(), None);
    }
}

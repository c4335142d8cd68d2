//! The SIP core: one task that owns every transaction and routes messages to calls.
//!
//! Transports hand it parsed messages; calls hand it responses and requests as bytes. It
//! matches requests to server transactions (absorbing retransmissions, RFC 3261 17.2.3),
//! responses to client transactions (17.1.3), ACK and in-dialog requests to dialogs
//! (12.2.2), answers what needs no call (OPTIONS, CANCEL, BYE, 481, 501, 405, 420, 416) and
//! drives every transaction's timers from a single deadline heap, so thousands of
//! transactions cost one sleeping future, not thousands of timers.
//!
//! One task for all SIP is deliberate: signalling is a few messages a second per call, and
//! owning the tables in one place needs no locks and gives a total order to what happens.
//!
//! What the core answers by itself it answers statelessly (RFC 3261 8.2.7): OPTIONS, 481 for
//! unknown dialogs, 405, 501, 4xx for bad requests, and every 503 that sheds load. A flood of
//! those then costs no memory at all, where a transaction apiece used to keep each one for
//! 64*T1. Transactions exist only for calls (the INVITE and what comes inside its dialog), and
//! they are capped: in total, in the bytes they hold, and per untrusted source, alongside that
//! source's new calls per second and INVITEs waiting for their ACK ([`super::peers`]).

use super::dialog::{Dialog, DialogId};
use super::message::{Message, ResponseBuilder, ack_for_failure, reason_phrase, stateless_tag};
use super::peers::{Budgets, Refusal, SourceBudgets, Trust};
use super::transaction::{
    ClientInvite, ClientNonInvite, Event as TxEvent, InviteResponse, ResponseDisposition,
    ServerInvite, ServerNonInvite, State, Timers,
};
use super::transport::{Flow, Incoming, RequestTarget, Transports};
use bytes::Bytes;
use ezk_sip_types::{Method, Name};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Methods we accept, for Allow headers (RFC 3261 20.5).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, REFER, UPDATE";
/// Bodies we understand, for Accept headers.
pub const ACCEPT: &str =
    "application/sdp, application/dtmf-relay, application/dtmf, message/sipfrag";

/// Identifies a server transaction for the call that must answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

/// What the core tells a call about its dialog.
#[derive(Debug)]
pub enum SipEvent {
    /// The ACK for our 2xx (its body carries the answer after a late offer).
    Ack { body: Bytes },
    /// The caller cancelled before we answered; the core already sent 200 and 487.
    Cancelled,
    /// The caller hung up; the core already answered 200.
    Bye,
    /// An in-dialog request the call must answer (re-INVITE, INFO, NOTIFY, ...).
    Request {
        tx: TxId,
        msg: Box<Message>,
        flow: Flow,
    },
    /// Our 2xx was never ACKed (Timer L). For the INVITE that made the call
    /// (`[sip] ack_timeout_ms`) the dialog was never confirmed, so the call ends without a BYE
    /// (RFC 3261 13.3.1.4 asks for one, but the ACK that never came is also the only proof
    /// that the INVITE's sender is who its Contact says: a BYE would be one more packet aimed
    /// wherever a spoofed INVITE pointed). For a re-INVITE (after 64*T1) the dialog is
    /// confirmed and the call ends with a BYE.
    AckTimeout,
}

/// A new INVITE for the server to turn into a call.
pub struct NewCall {
    pub invite: Message,
    pub flow: Flow,
    pub tx: TxId,
    pub local_tag: String,
    pub events: mpsc::UnboundedReceiver<SipEvent>,
    /// Whether the INVITE came from a trusted peer (its P-Asserted-Identity counts).
    pub trust: Trust,
}

/// What the core tells the placer of an outbound INVITE ([`CoreHandle::invite`]) about it.
#[derive(Debug)]
pub enum InviteEvent {
    /// A 1xx (ringing, session progress).
    Provisional(Box<Message>),
    /// The first 2xx. The core has already ACKed it (and ACKs its retransmissions) and routes
    /// the dialog's requests to the placer's [`SipEvent`] channel from now on. A 2xx from
    /// another fork is ACKed and ended with a BYE by the core: a verification call has one
    /// callee.
    Answered(Box<Message>),
    /// A 300-699 final response; the transaction has ACKed it.
    Failed(Box<Message>),
    /// No response at all within Timer B, or the transport failed: no call.
    NoResponse(RequestError),
}

/// The placer's ends of an outbound INVITE: the transaction's news, then the dialog's requests.
pub struct Placed {
    pub invite: mpsc::UnboundedReceiver<InviteEvent>,
    pub dialog: mpsc::UnboundedReceiver<SipEvent>,
}

/// Why a request we sent got no final response.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("no final response (Timer F)")]
    Timeout,
    #[error("transport error")]
    Transport,
    #[error("SIP core stopped")]
    CoreGone,
}

enum Command {
    Respond {
        tx: TxId,
        code: u16,
        msg: Bytes,
    },
    Request {
        flow: Flow,
        to: RequestTarget,
        branch: String,
        msg: Bytes,
        reply: oneshot::Sender<Result<Message, RequestError>>,
    },
    /// Send an INVITE of ours in a client INVITE transaction.
    Invite {
        flow: Flow,
        to: RequestTarget,
        invite: Box<Message>,
        bytes: Bytes,
        events: mpsc::UnboundedSender<InviteEvent>,
        dialog: mpsc::UnboundedSender<SipEvent>,
    },
    EndDialog(DialogId),
    /// Stop taking new calls: INVITEs get 503 with Retry-After from now on.
    Drain {
        retry_after_secs: u32,
    },
    /// Take new calls again after a drain.
    Resume,
}

/// The calls' handle to the core; cheap to clone.
#[derive(Clone)]
pub struct CoreHandle {
    commands: mpsc::UnboundedSender<Command>,
    pub transports: Transports,
    pub stats: Arc<CoreStats>,
}

/// Counters for metrics (read without locking).
#[derive(Default, Debug)]
pub struct CoreStats {
    pub retransmissions: AtomicU64,
    pub requests_in: AtomicU64,
    pub responses_in: AtomicU64,
    /// New INVITEs answered 503 because they waited too long (overload control).
    pub overload_rejects: AtomicU64,
    /// Requests refused (stateless 503) for being over a budget, by [`Refusal`]: an untrusted
    /// source's call rate, unconfirmed INVITEs, transactions or the source table; or the
    /// daemon's own transaction capacity.
    pub refused: [AtomicU64; REFUSALS.len()],
    /// Server transactions alive now, and the bytes of messages they hold.
    pub server_transactions: AtomicUsize,
    pub transaction_bytes: AtomicUsize,
    /// Calls whose 2xx (or answer) is still waiting for its ACK.
    pub unconfirmed_calls: AtomicUsize,
    /// Calls dropped because their 2xx was never ACKed.
    pub ack_timeouts: AtomicU64,
    /// Goes up on every turn of the core's loop (at least four times a second when idle): the
    /// watchdog's proof that SIP is being served, not just that the process exists.
    pub loop_turns: AtomicU64,
    /// Why the node cannot take a call now (a [`Unready`] as its number, 0: it can), set by
    /// the daemon: OPTIONS answer 503 meanwhile, so a dispatcher in front moves calls away.
    pub unready: std::sync::atomic::AtomicU8,
}

/// Why a node is not ready for a call, besides draining (what OPTIONS say in a Warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Unready {
    /// Every RTP port is taken by a call.
    NoRtpPort = 1,
    /// The database does not answer.
    Database = 2,
}

impl Unready {
    pub fn as_str(self) -> &'static str {
        match self {
            Unready::NoRtpPort => "no free RTP port",
            Unready::Database => "the database does not answer",
        }
    }

    fn from_u8(n: u8) -> Option<Unready> {
        match n {
            1 => Some(Unready::NoRtpPort),
            2 => Some(Unready::Database),
            _ => None,
        }
    }
}

impl CoreStats {
    /// Records why the node cannot take a call (`None`: it can).
    pub fn set_unready(&self, why: Option<Unready>) {
        self.unready
            .store(why.map_or(0, |w| w as u8), Ordering::Relaxed);
    }

    /// Why the node cannot take a call, if it cannot.
    pub fn unready(&self) -> Option<Unready> {
        Unready::from_u8(self.unready.load(Ordering::Relaxed))
    }
}

/// The refusals counted in [`CoreStats::refused`], in its order.
pub const REFUSALS: [Refusal; 6] = [
    Refusal::Rate,
    Refusal::Unconfirmed,
    Refusal::Calls,
    Refusal::Transactions,
    Refusal::Sources,
    Refusal::Capacity,
];

impl CoreStats {
    fn refuse(&self, r: Refusal) {
        if let Some(i) = REFUSALS.iter().position(|x| *x == r) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl CoreHandle {
    /// Sends a response on a server transaction (the call built the bytes).
    pub fn respond(&self, tx: TxId, code: u16, msg: Bytes) {
        let _ = self.commands.send(Command::Respond { tx, code, msg });
    }

    /// Sends a request in a client transaction and waits for its final response.
    pub async fn request(
        &self,
        flow: Flow,
        to: RequestTarget,
        branch: String,
        msg: Bytes,
    ) -> Result<Message, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request {
                flow,
                to,
                branch,
                msg,
                reply,
            })
            .map_err(|_| RequestError::CoreGone)?;
        rx.await.map_err(|_| RequestError::CoreGone)?
    }

    /// Sends an INVITE of ours (`bytes`, built with
    /// [`invite_request`](super::message::invite_request)) to `to` and reports what becomes of
    /// it. A CANCEL for it is an ordinary [`CoreHandle::request`] on the INVITE's branch (the
    /// core tells the two apart by the responses' CSeq method). Dropping [`Placed::invite`]
    /// while the call still rings makes the core forget the transaction: do so only after the
    /// final response, or 64*T1 after a CANCEL that brought none (RFC 3261 9.1).
    pub fn invite(&self, flow: Flow, to: RequestTarget, bytes: Bytes) -> Result<Placed, String> {
        let invite = Message::parse(bytes.clone()).map_err(|e| e.to_string())?;
        if invite.branch().is_none() {
            return Err("INVITE without a Via branch".into());
        }
        let (events, invite_rx) = mpsc::unbounded_channel();
        let (dialog, dialog_rx) = mpsc::unbounded_channel();
        self.commands
            .send(Command::Invite {
                flow,
                to,
                invite: Box::new(invite),
                bytes,
                events,
                dialog,
            })
            .map_err(|_| RequestError::CoreGone.to_string())?;
        Ok(Placed {
            invite: invite_rx,
            dialog: dialog_rx,
        })
    }

    /// Stops routing requests to a dialog (the call is over).
    pub fn end_dialog(&self, id: DialogId) {
        let _ = self.commands.send(Command::EndDialog(id));
    }

    /// From now on, new INVITEs get 503 + Retry-After and OPTIONS say the same.
    pub fn drain(&self, retry_after_secs: u32) {
        let _ = self.commands.send(Command::Drain { retry_after_secs });
    }

    /// Takes new calls again (OPTIONS 200), after [`CoreHandle::drain`].
    pub fn resume(&self) {
        let _ = self.commands.send(Command::Resume);
    }
}

/// A fresh branch with the RFC 3261 magic cookie.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token(16))
}

/// A random token for tags and branches (RFC 3261 19.3: at least 32 bits of randomness).
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Server transaction key (RFC 3261 17.2.3): branch, sent-by and method, where ACK matches
/// the INVITE. Pre-RFC 3261 peers without the magic cookie are keyed by Call-ID, CSeq and
/// From tag, which is what 17.2.3's fallback comes down to for our purposes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TxKey {
    branch: String,
    sent_by: String,
    method: String,
}

impl TxKey {
    fn of(msg: &Message) -> TxKey {
        let method = match msg.method().to_string().as_str() {
            "ACK" => "INVITE".to_string(),
            m => m.to_string(),
        };
        Self::with_method(msg, method)
    }

    fn with_method(msg: &Message, method: String) -> TxKey {
        let via = &msg.vias[0];
        let branch = match msg.branch() {
            Some(b) if b.starts_with("z9hG4bK") => b.to_string(),
            _ => format!(
                "2543:{}:{}:{}",
                msg.call_id,
                msg.cseq,
                msg.from_tag().unwrap_or("")
            ),
        };
        TxKey {
            branch,
            sent_by: format!("{}:{}", via.sent_by.host, via.sent_by.port.unwrap_or(0)),
            method,
        }
    }

    fn len(&self) -> usize {
        self.branch.len() + self.sent_by.len() + self.method.len()
    }
}

enum ServerMachine {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

struct ServerTx {
    machine: ServerMachine,
    key: TxKey,
    flow: Flow,
    target: SocketAddr,
    /// For INVITE transactions, until the final response: the request (to build a 487 on
    /// CANCEL) and our To tag.
    invite: Option<(Message, String)>,
    dialog: Option<DialogId>,
    scheduled: Option<Instant>,
    /// The untrusted source this transaction counts against.
    charged: Option<IpAddr>,
    /// What this transaction adds to `Core::tx_bytes`.
    bytes: usize,
}

impl ServerTx {
    /// Memory this transaction holds, as the caps count it: the messages it keeps, its key
    /// twice (index and entry) and a fixed share for the structures around them (measured:
    /// an OPTIONS flood grew RSS by about 800 bytes per transaction before any message).
    fn held_bytes(&self) -> usize {
        const OVERHEAD: usize = 640;
        let machine = match &self.machine {
            ServerMachine::Invite(m) => m.held_bytes(),
            ServerMachine::NonInvite(m) => m.held_bytes(),
        };
        let invite = self.invite.as_ref().map_or(0, |(m, _)| m.wire_len);
        OVERHEAD + 2 * self.key.len() + machine + invite
    }
}

struct ClientTx {
    machine: ClientNonInvite,
    flow: Flow,
    target: SocketAddr,
    reply: Option<oneshot::Sender<Result<Message, RequestError>>>,
    scheduled: Option<Instant>,
}

/// An INVITE of ours (an outbound call) and what the core does for it on its own.
struct InviteTx {
    machine: ClientInvite,
    /// The INVITE as sent, parsed: for the failure's ACK and the 2xx's dialog.
    invite: Message,
    flow: Flow,
    target: SocketAddr,
    events: mpsc::UnboundedSender<InviteEvent>,
    /// Where the dialog's requests go, handed to the dialog on the first 2xx.
    dialog: Option<mpsc::UnboundedSender<SipEvent>>,
    /// The answered 2xx: its To tag, our ACK and where it went (re-sent on retransmissions).
    answered: Option<(String, Bytes, SocketAddr)>,
    scheduled: Option<Instant>,
}

struct DialogEntry {
    events: mpsc::UnboundedSender<SipEvent>,
    /// The INVITE transaction that created the dialog, until its 2xx is ACKed.
    invite_tx: Option<TxId>,
    /// The flow the dialog came on (a TCP connection stays open while the dialog lives).
    flow: Flow,
    /// Until the ACK: whether the call counts as unconfirmed, and for an untrusted source,
    /// the address whose unconfirmed slot it holds.
    unconfirmed: Option<Option<IpAddr>>,
    /// The untrusted source whose call slot this dialog holds, until it ends.
    charged_call: Option<IpAddr>,
    /// Re-INVITE transactions and their CSeq, until their 2xx is ACKed: the ACK comes on a
    /// new branch, so only the dialog can hand it to its transaction (RFC 3261 17.2.1). A few
    /// at most (one refused with 491 while another waits for its ACK); the oldest goes first.
    reinvites: Vec<(TxId, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Server(TxId),
    Client(String),
    Invite(String),
}

/// Settings the core needs.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub timers: Timers,
    pub user_agent: String,
    /// Overload control: a new INVITE that waited longer than this (from the kernel's receive
    /// time) gets 503 instead of a call. None: never.
    pub overload_after: Option<Duration>,
    /// What one untrusted source may ask of us.
    pub budgets: Budgets,
    /// Caps on all server transactions together.
    pub max_transactions: usize,
    pub max_transaction_bytes: usize,
    /// A new INVITE while the database does not answer ([`Unready::Database`]) gets 503 with
    /// Retry-After (a dispatcher in front tries another node); false: the call is answered
    /// and its plan's `on_error` branches route the caller (usually to the fallback).
    pub refuse_without_database: bool,
}

impl CoreConfig {
    /// Live server transactions by default: 2,000 calls/s over UDP keep about 85,000 alive
    /// (a BYE for 64*T1, an INVITE until its ACK wait ends).
    pub const MAX_TRANSACTIONS: usize = 150_000;
    /// Bytes they may hold by default, as the server transactions (`ServerTx`) count them.
    pub const MAX_TRANSACTION_BYTES: usize = 96 << 20;

    /// The defaults `[sip]` starts from: the given timers, no overload control.
    pub fn new(timers: Timers, user_agent: &str) -> CoreConfig {
        CoreConfig {
            timers,
            user_agent: user_agent.to_string(),
            overload_after: None,
            budgets: Budgets::default(),
            max_transactions: Self::MAX_TRANSACTIONS,
            max_transaction_bytes: Self::MAX_TRANSACTION_BYTES,
            refuse_without_database: true,
        }
    }
}

/// Re-INVITEs of one dialog remembered for their ACK.
const MAX_PENDING_REINVITES: usize = 4;

/// Untrusted sources together get one `UNTRUSTED_SHARE`-th of the transaction caps (of the
/// defaults: 18,750 transactions, 12 MiB of messages): with a quarter, an INVITE flood from
/// 200 sources held 29,364 transactions and 25 MiB, more than the edge's 64 MiB bound
/// allows next to the calls.
const UNTRUSTED_SHARE: usize = 8;

/// Retry-After on an OPTIONS 503 of a node not ready for a call (no RTP port, no database):
/// it may be ready again at any moment.
const UNREADY_RETRY_AFTER_SECS: u32 = 5;

/// Retry-After on an overload 503 (RFC 3261 21.5.4): short, because the overload is a queue
/// that drains in well under a second once new calls stop joining it.
const OVERLOAD_RETRY_AFTER_SECS: u32 = 1;

struct Core {
    cfg: CoreConfig,
    transports: Transports,
    stats: Arc<CoreStats>,
    next_id: u64,
    server: HashMap<TxId, ServerTx>,
    server_index: HashMap<TxKey, TxId>,
    client: HashMap<String, ClientTx>,
    /// Our INVITEs by branch. Apart from `client`: a CANCEL has its INVITE's branch.
    invites: HashMap<String, InviteTx>,
    dialogs: HashMap<DialogId, DialogEntry>,
    heap: BinaryHeap<Reverse<(Instant, TimerRef)>>,
    new_calls: mpsc::Sender<NewCall>,
    draining: Option<u32>,
    /// When the last overload 503 went out: a warning starts each overload episode, not each
    /// rejected call.
    last_overload: Option<Instant>,
    /// The same for budget refusals.
    last_refusal: Option<Instant>,
    budgets: SourceBudgets,
    /// Sum of every server transaction's `bytes`.
    tx_bytes: usize,
    /// Transactions charged to untrusted sources, and their bytes: together they may use a
    /// quarter of the caps, so sources that are not trusted, however many, cannot crowd out
    /// the PBX, and memory under their floods stays under a known bound.
    untrusted_txs: usize,
    untrusted_bytes: usize,
    next_sweep: Instant,
}

/// Starts the core task. New INVITEs arrive on `new_calls`.
pub fn spawn(
    cfg: CoreConfig,
    transports: Transports,
    mut incoming: mpsc::Receiver<Incoming>,
    new_calls: mpsc::Sender<NewCall>,
    shutdown: CancellationToken,
) -> CoreHandle {
    let (tx, mut commands) = mpsc::unbounded_channel();
    let stats = Arc::new(CoreStats::default());
    let handle = CoreHandle {
        commands: tx,
        transports: transports.clone(),
        stats: stats.clone(),
    };
    let mut core = Core {
        budgets: SourceBudgets::new(cfg.budgets),
        cfg,
        transports,
        stats,
        next_id: 1,
        server: HashMap::new(),
        server_index: HashMap::new(),
        client: HashMap::new(),
        invites: HashMap::new(),
        dialogs: HashMap::new(),
        heap: BinaryHeap::new(),
        new_calls,
        draining: None,
        last_overload: None,
        last_refusal: None,
        tx_bytes: 0,
        untrusted_txs: 0,
        untrusted_bytes: 0,
        next_sweep: Instant::now() + SourceBudgets::SWEEP_EVERY,
    };
    let mut connect_failures = core.transports.watch_connect_failures();
    tokio::spawn(async move {
        let mut idle = tokio::time::interval(Duration::from_millis(250));
        loop {
            core.stats.loop_turns.fetch_add(1, Ordering::Relaxed);
            let next = core.heap.peek().map(|Reverse((at, _))| *at);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(inc) = incoming.recv() => core.handle_incoming(inc),
                Some(cmd) = commands.recv() => core.handle_command(cmd),
                Some((local, peer)) = connect_failures.recv() => {
                    core.connect_failed(local, peer, Instant::now());
                }
                _ = sleep => core.fire_timers(Instant::now()),
                _ = idle.tick() => core.housekeeping(Instant::now()),
                _ = shutdown.cancelled() => break,
            }
        }
        debug!("SIP core stopped");
    });
    handle
}

impl Core {
    fn handle_incoming(
        &mut self,
        Incoming {
            msg,
            flow,
            arrived,
            trust,
        }: Incoming,
    ) {
        if msg.is_request() {
            self.stats.requests_in.fetch_add(1, Ordering::Relaxed);
            self.handle_request(msg, flow, arrived, trust);
        } else {
            self.stats.responses_in.fetch_add(1, Ordering::Relaxed);
            self.handle_response(msg);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.budgets.sweep(now);
            self.next_sweep = now + SourceBudgets::SWEEP_EVERY;
        }
        // An INVITE still ringing whose placer is gone has no timer to end it (Proceeding
        // runs none): forget it, or it stays forever.
        self.invites.retain(|branch, tx| {
            let keep = !(tx.events.is_closed() && tx.machine.state() == State::Proceeding);
            if !keep {
                debug!(%branch, "outbound INVITE forgotten: its placer gave up");
            }
            keep
        });
    }

    fn handle_request(&mut self, msg: Message, flow: Flow, arrived: Instant, trust: Trust) {
        let now = Instant::now();
        let method = msg.method().clone();
        if method == Method::ACK {
            return self.handle_ack(msg, now);
        }
        if method == Method::CANCEL {
            return self.handle_cancel(msg, flow, now, trust);
        }
        let key = TxKey::of(&msg);
        if let Some(id) = self.server_index.get(&key).copied() {
            // A retransmission: the transaction re-sends its last response, or absorbs it.
            self.stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            if let Some(tx) = self.server.get_mut(&id) {
                match &mut tx.machine {
                    ServerMachine::Invite(m) => m.handle_request_retransmit(now),
                    ServerMachine::NonInvite(m) => m.handle_request_retransmit(now),
                }
            }
            self.drive_server(id);
            return;
        }
        if let Some(code) = precheck(&msg).or_else(|| sips_over_plain(&msg, flow)) {
            let extra: Vec<(&str, String)> = match code {
                420 => vec![(
                    "Unsupported",
                    unsupported_required(&msg).unwrap_or_default(),
                )],
                _ => Vec::new(),
            };
            return self.respond_stateless(&msg, flow, trust, code, &extra);
        }
        let in_dialog = msg.to_tag().is_some();
        match method.to_string().as_str() {
            "INVITE" if !in_dialog => {
                if self.overloaded(now.saturating_duration_since(arrived), now) {
                    return self.respond_stateless(
                        &msg,
                        flow,
                        trust,
                        503,
                        &[("Retry-After", OVERLOAD_RETRY_AFTER_SECS.to_string())],
                    );
                }
                self.handle_new_invite(msg, flow, now, trust)
            }
            "OPTIONS" => self.handle_options(msg, flow, trust),
            "BYE" => match DialogId::of_request(&msg).and_then(|d| self.remove_dialog(&d)) {
                Some(entry) => {
                    self.respond_stateful(&msg, flow, trust, 200, &[]);
                    let _ = entry.events.send(SipEvent::Bye);
                }
                None => self.respond_stateless(&msg, flow, trust, 481, &[]),
            },
            m if is_known_method(m) => {
                if !in_dialog {
                    // Known but not out of a dialog here (REGISTER, MESSAGE, SUBSCRIBE, ...).
                    return self.respond_stateless(
                        &msg,
                        flow,
                        trust,
                        405,
                        &[("Allow", ALLOW.to_string())],
                    );
                }
                let Some(dialog) = DialogId::of_request(&msg) else {
                    return;
                };
                if !self.dialogs.contains_key(&dialog) {
                    return self.respond_stateless(&msg, flow, trust, 481, &[]);
                }
                let id = match self.open_server_tx(&msg, flow, now, trust, Some(dialog.clone())) {
                    Ok(id) => id,
                    Err(r) => return self.refuse(&msg, flow, trust, r, now),
                };
                if let Some(entry) = self.dialogs.get_mut(&dialog) {
                    if method == Method::INVITE {
                        if entry.reinvites.len() == MAX_PENDING_REINVITES {
                            entry.reinvites.remove(0);
                        }
                        entry.reinvites.push((id, msg.cseq));
                    }
                    let _ = entry.events.send(SipEvent::Request {
                        tx: id,
                        msg: Box::new(msg),
                        flow,
                    });
                }
            }
            _ => self.respond_stateless(&msg, flow, trust, 501, &[("Allow", ALLOW.to_string())]),
        }
    }

    /// Whether a new INVITE that waited `waited` must be turned away. Only new calls are shed:
    /// ACKs, BYEs and in-dialog requests keep being served, so calls already up stay healthy
    /// and the queue drains. Without this, at 2,500 calls/s (beyond what one core answers)
    /// the backlog grew to seconds, every caller retransmitted, and 9,270 of 50,000 calls
    /// failed with ivrd busy on requests their callers had given up on.
    fn overloaded(&mut self, waited: Duration, now: Instant) -> bool {
        let Some(limit) = self.cfg.overload_after else {
            return false;
        };
        if waited <= limit {
            return false;
        }
        self.stats.overload_rejects.fetch_add(1, Ordering::Relaxed);
        if self
            .last_overload
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            warn!(
                waited_ms = waited.as_millis() as u64,
                limit_ms = limit.as_millis() as u64,
                "overloaded: answering new calls 503 until requests are served in time \
                 (ivrd_sip_overload_rejects_total counts them)"
            );
        }
        self.last_overload = Some(now);
        true
    }

    /// Turns a request away for being over a budget: a stateless 503 (no transaction, so the
    /// refusal itself costs no memory), counted, and one warning per episode.
    fn refuse(&mut self, msg: &Message, flow: Flow, trust: Trust, r: Refusal, now: Instant) {
        self.stats.refuse(r);
        if self
            .last_refusal
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            warn!(
                source = %flow.remote.ip(),
                reason = r.as_str(),
                "refusing requests over a limit (ivrd_sip_refused_total counts them; \
                 [sip] source_* and max_transactions set the limits)"
            );
        }
        self.last_refusal = Some(now);
        let retry = match r {
            Refusal::Unconfirmed => self
                .cfg
                .timers
                .duration(super::transaction::Timer::L, false)
                .unwrap_or_default()
                .as_secs()
                .max(1),
            _ => 1,
        };
        self.respond_stateless(msg, flow, trust, 503, &[("Retry-After", retry.to_string())]);
    }

    fn handle_new_invite(&mut self, msg: Message, flow: Flow, now: Instant, trust: Trust) {
        if let Some(retry) = self.draining {
            return self.respond_stateless(
                &msg,
                flow,
                trust,
                503,
                &[("Retry-After", retry.to_string())],
            );
        }
        if self.cfg.refuse_without_database && self.stats.unready() == Some(Unready::Database) {
            // Nobody could be looked up or verified: better another node, or the caller's
            // PBX routing elsewhere, than a call that can only fail.
            return self.respond_stateless(
                &msg,
                flow,
                trust,
                503,
                &[
                    ("Retry-After", UNREADY_RETRY_AFTER_SECS.to_string()),
                    (
                        "Warning",
                        format!("399 ivrd \"{}\"", Unready::Database.as_str()),
                    ),
                ],
            );
        }
        // An untrusted source pays for the call up front: a token from its call rate and one
        // of its unconfirmed slots, which the ACK (or the call's end) gives back.
        let source = (!trust.is_trusted()).then(|| flow.remote.ip());
        if let Some(ip) = source
            && let Err(r) = self.budgets.open_call(ip, now)
        {
            return self.refuse(&msg, flow, trust, r, now);
        }
        let local_tag = random_token(10);
        let dialog = DialogId {
            call_id: msg.call_id.to_string(),
            local_tag: local_tag.clone(),
            remote_tag: msg.from_tag().unwrap_or_default().to_string(),
        };
        let id = match self.open_server_tx(&msg, flow, now, trust, Some(dialog.clone())) {
            Ok(id) => id,
            Err(r) => {
                if let Some(ip) = source {
                    self.budgets.confirmed(ip);
                    self.budgets.call_ended(ip);
                }
                return self.refuse(&msg, flow, trust, r, now);
            }
        };
        if let Some(tx) = self.server.get_mut(&id) {
            tx.invite = Some((msg.clone(), local_tag.clone()));
        }
        // 100 Trying at once: the call task may need a moment (SDP, media ports), and a
        // caller that hears nothing retransmits (RFC 3261 17.2.1).
        let trying = ResponseBuilder::new(&msg, 100, "Trying")
            .received_from(flow.remote)
            .build();
        self.send_on(id, 100, trying);
        let (events, rx) = mpsc::unbounded_channel();
        self.transports.pin(&flow, true);
        self.stats.unconfirmed_calls.fetch_add(1, Ordering::Relaxed);
        self.dialogs.insert(
            dialog.clone(),
            DialogEntry {
                events,
                invite_tx: Some(id),
                flow,
                unconfirmed: Some(source),
                charged_call: source,
                reinvites: Vec::new(),
            },
        );
        let new_call = NewCall {
            invite: msg.clone(),
            flow,
            tx: id,
            local_tag,
            events: rx,
            trust,
        };
        if let Err(e) = self.new_calls.try_send(new_call) {
            // The server is saturated or stopping: refuse now rather than let it ring forever.
            warn!(error = %e, "cannot take a new call");
            self.remove_dialog(&dialog);
            let busy = ResponseBuilder::new(&msg, 503, "Service Unavailable")
                .received_from(flow.remote)
                .header("Retry-After", 5)
                .build();
            self.send_on(id, 503, busy);
        }
    }

    /// Forgets a dialog, giving back what it held: its unconfirmed slot, its pin on a TCP
    /// connection.
    fn remove_dialog(&mut self, id: &DialogId) -> Option<DialogEntry> {
        let mut entry = self.dialogs.remove(id)?;
        self.settle_unconfirmed(&mut entry);
        if let Some(ip) = entry.charged_call.take() {
            self.budgets.call_ended(ip);
        }
        self.transports.pin(&entry.flow, false);
        Some(entry)
    }

    fn settle_unconfirmed(&mut self, entry: &mut DialogEntry) {
        if let Some(source) = entry.unconfirmed.take() {
            self.stats.unconfirmed_calls.fetch_sub(1, Ordering::Relaxed);
            if let Some(ip) = source {
                self.budgets.confirmed(ip);
            }
        }
    }

    fn handle_ack(&mut self, msg: Message, now: Instant) {
        // The ACK for a 2xx belongs to the dialog (new branch); for a non-2xx, to the INVITE
        // transaction (same branch). Try the transaction first: it is the exact match.
        let key = TxKey::of(&msg);
        if let Some(id) = self.server_index.get(&key).copied()
            && let Some(ServerTx {
                machine: ServerMachine::Invite(m),
                ..
            }) = self.server.get_mut(&id)
            && m.state() == State::Completed
        {
            m.handle_ack(now);
            self.drive_server(id);
            return;
        }
        let Some(dialog) = DialogId::of_request(&msg) else {
            return;
        };
        let Some(mut entry) = self.dialogs.remove(&dialog) else {
            debug!(call_id = %msg.call_id, "ACK for unknown dialog dropped");
            return;
        };
        let _ = entry.events.send(SipEvent::Ack {
            body: msg.body.clone(),
        });
        let mut invite_tx = entry.invite_tx.take();
        if invite_tx.is_some() {
            self.settle_unconfirmed(&mut entry);
        } else if let Some(i) = entry.reinvites.iter().position(|(_, c)| *c == msg.cseq) {
            invite_tx = Some(entry.reinvites.remove(i).0);
        }
        self.dialogs.insert(dialog, entry);
        if let Some(id) = invite_tx {
            if let Some(ServerTx {
                machine: ServerMachine::Invite(m),
                ..
            }) = self.server.get_mut(&id)
            {
                m.handle_2xx_ack(now);
            }
            self.drive_server(id);
        }
    }

    fn handle_cancel(&mut self, msg: Message, flow: Flow, now: Instant, trust: Trust) {
        let cancel_key = TxKey::of(&msg);
        if let Some(id) = self.server_index.get(&cancel_key).copied() {
            // A retransmitted CANCEL.
            if let Some(ServerTx {
                machine: ServerMachine::NonInvite(m),
                ..
            }) = self.server.get_mut(&id)
            {
                m.handle_request_retransmit(now);
            }
            return self.drive_server(id);
        }
        // RFC 3261 9.2: the CANCEL matches the INVITE transaction it cancels by branch.
        let invite_key = TxKey::with_method(&msg, "INVITE".into());
        let Some(invite_id) = self.server_index.get(&invite_key).copied() else {
            return self.respond_stateless(&msg, flow, trust, 481, &[]);
        };
        self.respond_stateful(&msg, flow, trust, 200, &[]);
        let Some(tx) = self.server.get_mut(&invite_id) else {
            return;
        };
        let ServerMachine::Invite(m) = &mut tx.machine else {
            return;
        };
        if m.state() != State::Proceeding {
            // Already answered: the CANCEL has no effect beyond its 200 (RFC 3261 9.2).
            return;
        }
        let Some((invite, tag)) = tx.invite.take() else {
            return;
        };
        let resp = ResponseBuilder::new(&invite, 487, "Request Terminated")
            .received_from(tx.flow.remote)
            .to_tag(&tag)
            .build();
        m.send_response(now, 487, resp);
        let dialog = tx.dialog.clone();
        self.drive_server(invite_id);
        if let Some(entry) = dialog.and_then(|d| self.remove_dialog(&d)) {
            let _ = entry.events.send(SipEvent::Cancelled);
        }
    }

    fn handle_options(&mut self, msg: Message, flow: Flow, trust: Trust) {
        if msg.to_tag().is_some() {
            let known = DialogId::of_request(&msg).is_some_and(|d| self.dialogs.contains_key(&d));
            if !known {
                return self.respond_stateless(&msg, flow, trust, 481, &[]);
            }
        }
        let mut extra = vec![
            ("Allow", ALLOW.to_string()),
            ("Accept", ACCEPT.to_string()),
            ("Accept-Encoding", "identity".to_string()),
            ("Supported", super::session_timer::SUPPORTED.to_string()),
        ];
        let code = match self.draining {
            // A draining server says so to OPTIONS pings too, so load balancers and PBX
            // qualify checks move traffic away before calls are refused.
            Some(retry) => {
                extra.push(("Retry-After", retry.to_string()));
                503
            }
            None => match self.stats.unready() {
                // Not ready for a call now: a dispatcher's probe takes the node out until it
                // is (RFC 3261 20.43: 399 is a warning for people).
                Some(why) => {
                    extra.push(("Retry-After", UNREADY_RETRY_AFTER_SECS.to_string()));
                    extra.push(("Warning", format!("399 ivrd \"{}\"", why.as_str())));
                    503
                }
                None => 200,
            },
        };
        // Stateless: an OPTIONS ping needs no memory of itself. A retransmission gets the same
        // answer (with the same tag) built again.
        self.respond_stateless(&msg, flow, trust, code, &extra);
    }

    fn handle_response(&mut self, msg: Message) {
        let now = Instant::now();
        let Some(branch) = msg.branch().map(str::to_string) else {
            return;
        };
        let Some(status) = msg.status() else { return };
        if msg.cseq_method == Method::INVITE {
            return self.handle_invite_response(msg, branch, status, now);
        }
        let Some(tx) = self.client.get_mut(&branch) else {
            // Retransmitted 2xx for requests we never sent, or stray responses: nothing to do.
            debug!(%branch, status, "response for unknown transaction");
            return;
        };
        match tx.machine.handle_response(now, status) {
            Some(ResponseDisposition::Final) => {
                if let Some(reply) = tx.reply.take() {
                    let _ = reply.send(Ok(msg));
                }
            }
            Some(ResponseDisposition::Provisional) => {}
            None => {
                self.stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.drive_client(&branch);
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Respond { tx, code, msg } => {
                let Some(t) = self.server.get_mut(&tx) else {
                    debug!(?tx, code, "response for a finished transaction dropped");
                    return;
                };
                match &mut t.machine {
                    ServerMachine::Invite(m) => m.send_response(now, code, msg),
                    ServerMachine::NonInvite(m) => m.send_response(now, code, msg),
                }
                let mut failed_dialog = None;
                if code >= 200 {
                    // A CANCEL can no longer change anything: the request need not be kept.
                    let was_invite = t.invite.take().is_some();
                    if code >= 300 && was_invite {
                        // A failed initial INVITE leaves no dialog behind.
                        failed_dialog = t.dialog.clone();
                    }
                }
                if let Some(d) = failed_dialog {
                    self.remove_dialog(&d);
                }
                self.drive_server(tx);
            }
            Command::Request {
                flow,
                to,
                branch,
                msg,
                reply,
            } => {
                // On TCP/TLS, a connection of our own if the peer's is gone.
                let target = self.transports.connect_for(&flow, to);
                let machine =
                    ClientNonInvite::new(now, self.cfg.timers, flow.protocol.reliable(), msg);
                self.client.insert(
                    branch.clone(),
                    ClientTx {
                        machine,
                        flow,
                        target,
                        reply: Some(reply),
                        scheduled: None,
                    },
                );
                self.drive_client(&branch);
            }
            Command::Invite {
                flow,
                to,
                invite,
                bytes,
                events,
                dialog,
            } => {
                let target = self.transports.connect_for(&flow, to);
                let Some(branch) = invite.branch().map(str::to_string) else {
                    return;
                };
                let machine =
                    ClientInvite::new(now, self.cfg.timers, flow.protocol.reliable(), bytes);
                self.invites.insert(
                    branch.clone(),
                    InviteTx {
                        machine,
                        invite: *invite,
                        flow,
                        target,
                        events,
                        dialog: Some(dialog),
                        answered: None,
                        scheduled: None,
                    },
                );
                self.drive_invite(&branch);
            }
            Command::EndDialog(id) => {
                self.remove_dialog(&id);
            }
            Command::Drain { retry_after_secs } => {
                info!(retry_after_secs, "no longer accepting calls");
                self.draining = Some(retry_after_secs);
            }
            Command::Resume => {
                if self.draining.take().is_some() {
                    info!("accepting calls again");
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, r))) = self.heap.pop() else {
                break;
            };
            match r {
                TimerRef::Server(id) => {
                    if let Some(tx) = self.server.get_mut(&id) {
                        tx.scheduled = None;
                        match &mut tx.machine {
                            ServerMachine::Invite(m) => m.handle_timeout(now),
                            ServerMachine::NonInvite(m) => m.handle_timeout(now),
                        }
                        self.drive_server(id);
                    }
                }
                TimerRef::Client(branch) => {
                    if let Some(tx) = self.client.get_mut(&branch) {
                        tx.scheduled = None;
                        tx.machine.handle_timeout(now);
                        self.drive_client(&branch);
                    }
                }
                TimerRef::Invite(branch) => {
                    if let Some(tx) = self.invites.get_mut(&branch) {
                        tx.scheduled = None;
                        tx.machine.handle_timeout(now);
                        self.drive_invite(&branch);
                    }
                }
            }
        }
    }

    /// Opens a server transaction, or says which cap is in the way: the daemon's own (count
    /// or bytes) or, for an untrusted source, its share.
    fn open_server_tx(
        &mut self,
        msg: &Message,
        flow: Flow,
        now: Instant,
        trust: Trust,
        dialog: Option<DialogId>,
    ) -> Result<TxId, Refusal> {
        if self.server.len() >= self.cfg.max_transactions
            || self.tx_bytes >= self.cfg.max_transaction_bytes
        {
            return Err(Refusal::Capacity);
        }
        let charged = if trust.is_trusted() {
            None
        } else {
            if self.untrusted_txs >= self.cfg.max_transactions / UNTRUSTED_SHARE
                || self.untrusted_bytes >= self.cfg.max_transaction_bytes / UNTRUSTED_SHARE
            {
                return Err(Refusal::Capacity);
            }
            self.budgets.open_transaction(flow.remote.ip(), now)?;
            self.untrusted_txs += 1;
            Some(flow.remote.ip())
        };
        let id = TxId(self.next_id);
        self.next_id += 1;
        let reliable = flow.protocol.reliable();
        let machine = if *msg.method() == Method::INVITE {
            let timers = if msg.to_tag().is_some() {
                // A re-INVITE's dialog is confirmed and its port long held: its 2xx waits the
                // full 64*T1 (RFC 6026) for the ACK, not the short wait of a new call.
                Timers {
                    ack_wait: Duration::MAX,
                    ..self.cfg.timers
                }
            } else {
                self.cfg.timers
            };
            ServerMachine::Invite(ServerInvite::new(now, timers, reliable))
        } else {
            ServerMachine::NonInvite(ServerNonInvite::new(now, self.cfg.timers, reliable))
        };
        let key = TxKey::of(msg);
        self.server_index.insert(key.clone(), id);
        let tx = ServerTx {
            machine,
            key,
            flow,
            target: msg.response_target(flow.remote, reliable, trust.is_trusted()),
            invite: None,
            dialog,
            scheduled: None,
            charged,
            bytes: 0,
        };
        self.server.insert(id, tx);
        self.stats
            .server_transactions
            .store(self.server.len(), Ordering::Relaxed);
        Ok(id)
    }

    /// Answers without a transaction (RFC 3261 8.2.7). The To tag is derived from the
    /// request, so a retransmission gets an identical answer; the response goes where RFC 3581
    /// says, and `maddr` counts only from a trusted peer.
    fn respond_stateless(
        &self,
        msg: &Message,
        flow: Flow,
        trust: Trust,
        code: u16,
        extra: &[(&str, String)],
    ) {
        let tag = stateless_tag(msg);
        let mut b = ResponseBuilder::new(msg, code, reason_phrase(code))
            .received_from(flow.remote)
            .to_tag(&tag)
            .header("Server", &self.cfg.user_agent);
        for (name, value) in extra {
            b = b.header(name, value);
        }
        let target = msg.response_target(flow.remote, flow.protocol.reliable(), trust.is_trusted());
        self.transports.send(&flow, target, b.build());
    }

    /// Answers a request the core handles itself inside a server transaction, so that
    /// retransmissions of the request get the same answer; for what belongs to a call (its
    /// BYE, the CANCEL of its INVITE). Over the caps it is answered statelessly instead: the
    /// same answer, only a retransmission would not find it.
    fn respond_stateful(
        &mut self,
        msg: &Message,
        flow: Flow,
        trust: Trust,
        code: u16,
        extra: &[(&str, String)],
    ) {
        let Ok(id) = self.open_server_tx(msg, flow, Instant::now(), trust, None) else {
            return self.respond_stateless(msg, flow, trust, code, extra);
        };
        let mut b = ResponseBuilder::new(msg, code, reason_phrase(code))
            .received_from(flow.remote)
            .header("Server", &self.cfg.user_agent);
        let tag = random_token(10);
        if code != 100 {
            b = b.to_tag(&tag);
        }
        for (name, value) in extra {
            b = b.header(name, value);
        }
        self.send_on(id, code, b.build());
    }

    fn send_on(&mut self, id: TxId, code: u16, resp: Bytes) {
        let now = Instant::now();
        if let Some(tx) = self.server.get_mut(&id) {
            match &mut tx.machine {
                ServerMachine::Invite(m) => m.send_response(now, code, resp),
                ServerMachine::NonInvite(m) => m.send_response(now, code, resp),
            }
        }
        self.drive_server(id);
    }

    /// Sends what a server transaction queued, acts on its events, re-arms its timer and keeps
    /// the byte account up to date.
    fn drive_server(&mut self, id: TxId) {
        let Some(tx) = self.server.get_mut(&id) else {
            return;
        };
        let mut terminated = false;
        let mut ack_timeout = false;
        loop {
            let out = match &mut tx.machine {
                ServerMachine::Invite(m) => m.poll_transmit(),
                ServerMachine::NonInvite(m) => m.poll_transmit(),
            };
            let Some(out) = out else { break };
            self.transports.send(&tx.flow, tx.target, out);
        }
        loop {
            let ev = match &mut tx.machine {
                ServerMachine::Invite(m) => m.poll_event(),
                ServerMachine::NonInvite(m) => m.poll_event(),
            };
            match ev {
                None => break,
                Some(TxEvent::Terminated) => terminated = true,
                Some(TxEvent::AckTimeout) => ack_timeout = true,
                Some(TxEvent::Timeout | TxEvent::TransportError) => {}
            }
        }
        let next = match &tx.machine {
            ServerMachine::Invite(m) => m.poll_timeout(),
            ServerMachine::NonInvite(m) => m.poll_timeout(),
        };
        schedule(&mut self.heap, &mut tx.scheduled, next, || {
            TimerRef::Server(id)
        });
        let held = if terminated { 0 } else { tx.held_bytes() };
        self.tx_bytes = self.tx_bytes - tx.bytes + held;
        if tx.charged.is_some() {
            self.untrusted_bytes = self.untrusted_bytes - tx.bytes + held;
        }
        tx.bytes = held;
        if ack_timeout {
            self.stats.ack_timeouts.fetch_add(1, Ordering::Relaxed);
            if let Some(entry) = tx.dialog.as_ref().and_then(|d| self.dialogs.get(d)) {
                let _ = entry.events.send(SipEvent::AckTimeout);
            }
        }
        if terminated {
            let tx = self.server.remove(&id).expect("present");
            if self.server_index.get(&tx.key) == Some(&id) {
                self.server_index.remove(&tx.key);
            }
            if let Some(ip) = tx.charged {
                self.budgets.close_transaction(ip);
                self.untrusted_txs -= 1;
            }
            self.stats
                .server_transactions
                .store(self.server.len(), Ordering::Relaxed);
        }
        self.stats
            .transaction_bytes
            .store(self.tx_bytes, Ordering::Relaxed);
    }

    /// Our connection to `peer` from `local` could not be opened: the requests that were to
    /// go on it get a transport error now (the TU treats it as a 503), not at Timer F.
    fn connect_failed(&mut self, local: SocketAddr, peer: SocketAddr, now: Instant) {
        let waiting: Vec<String> = self
            .client
            .iter()
            .filter(|(_, tx)| tx.flow.local == local && tx.target == peer)
            .map(|(branch, _)| branch.clone())
            .collect();
        for branch in waiting {
            if let Some(tx) = self.client.get_mut(&branch) {
                tx.machine.handle_transport_error(now);
            }
            self.drive_client(&branch);
        }
        let invites: Vec<String> = self
            .invites
            .iter()
            .filter(|(_, tx)| tx.flow.local == local && tx.target == peer)
            .map(|(branch, _)| branch.clone())
            .collect();
        for branch in invites {
            if let Some(tx) = self.invites.get_mut(&branch) {
                tx.machine.handle_transport_error(now);
            }
            self.drive_invite(&branch);
        }
    }

    /// A response to one of our INVITEs (RFC 3261 17.1.3: branch and CSeq method).
    fn handle_invite_response(&mut self, msg: Message, branch: String, status: u16, now: Instant) {
        let Some(tx) = self.invites.get_mut(&branch) else {
            debug!(%branch, status, "response for unknown INVITE transaction");
            return;
        };
        let invite = &tx.invite;
        match tx
            .machine
            .handle_response(now, status, || ack_for_failure(invite, &msg))
        {
            Some(InviteResponse::Provisional) => {
                let _ = tx.events.send(InviteEvent::Provisional(Box::new(msg)));
            }
            Some(InviteResponse::Failure) => {
                let _ = tx.events.send(InviteEvent::Failed(Box::new(msg)));
            }
            Some(InviteResponse::Success) => self.invite_answered(&branch, msg),
            None => {
                self.stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.drive_invite(&branch);
    }

    /// A 2xx to our INVITE: the first makes the call's dialog, which the core ACKs (RFC 3261
    /// 13.2.2.4) and routes from now on; its retransmissions get the same ACK; a 2xx from
    /// another fork gets an ACK and a BYE.
    fn invite_answered(&mut self, branch: &str, ok: Message) {
        let Some(tx) = self.invites.get_mut(branch) else {
            return;
        };
        let to_tag = ok.to_tag().unwrap_or_default().to_string();
        if let Some((tag, ack, to)) = &tx.answered
            && *tag == to_tag
        {
            self.stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            self.transports.send(&tx.flow, *to, ack.clone());
            return;
        }
        let flow = tx.flow;
        let contact = tx.invite.contact_uri().unwrap_or_default();
        let mut dialog = Dialog::new_uac(&tx.invite, &ok, contact, flow.protocol);
        // The ACK carries the INVITE's credentials (RFC 3261 22.1).
        let credentials: Vec<(&str, String)> = ["Proxy-Authorization", "Authorization"]
            .into_iter()
            .filter_map(|name| {
                tx.invite
                    .headers
                    .get_raw(&Name::from(name))
                    .next()
                    .map(|v| (name, v.to_string()))
            })
            .collect();
        let ack = dialog.ack(flow.local, &new_branch(), &credentials, None);
        let next_hop = dialog.next_hop(flow.protocol);
        let target = self.transports.connect_for(
            &flow,
            RequestTarget {
                addr: next_hop.unwrap_or(tx.target),
                reconnect: next_hop,
            },
        );
        self.transports.send(&flow, target, ack.clone());
        let Some(events) = tx.dialog.take() else {
            // Another fork answered after the call's own 2xx: one callee is all we want.
            info!(call_id = %ok.call_id, "a second fork answered; ending it with BYE");
            let bye_branch = new_branch();
            let bye = dialog.request("BYE", flow.local, &bye_branch, &[], None);
            let machine = ClientNonInvite::new(
                Instant::now(),
                self.cfg.timers,
                flow.protocol.reliable(),
                bye,
            );
            self.client.insert(
                bye_branch.clone(),
                ClientTx {
                    machine,
                    flow,
                    target,
                    reply: None,
                    scheduled: None,
                },
            );
            return self.drive_client(&bye_branch);
        };
        tx.answered = Some((to_tag, ack, target));
        let _ = tx.events.send(InviteEvent::Answered(Box::new(ok)));
        self.transports.pin(&flow, true);
        self.dialogs.insert(
            dialog.id.clone(),
            DialogEntry {
                events,
                invite_tx: None,
                flow,
                unconfirmed: None,
                charged_call: None,
                reinvites: Vec::new(),
            },
        );
    }

    /// Sends what one of our INVITE transactions queued and passes on its events.
    fn drive_invite(&mut self, branch: &str) {
        let Some(tx) = self.invites.get_mut(branch) else {
            return;
        };
        while let Some(out) = tx.machine.poll_transmit() {
            self.transports.send(&tx.flow, tx.target, out);
        }
        let mut terminated = false;
        while let Some(ev) = tx.machine.poll_event() {
            match ev {
                TxEvent::Timeout => {
                    let _ = tx
                        .events
                        .send(InviteEvent::NoResponse(RequestError::Timeout));
                }
                TxEvent::TransportError => {
                    let _ = tx
                        .events
                        .send(InviteEvent::NoResponse(RequestError::Transport));
                }
                TxEvent::Terminated => terminated = true,
                TxEvent::AckTimeout => {}
            }
        }
        let next = tx.machine.poll_timeout();
        schedule(&mut self.heap, &mut tx.scheduled, next, || {
            TimerRef::Invite(branch.to_string())
        });
        if terminated {
            self.invites.remove(branch);
        }
    }

    fn drive_client(&mut self, branch: &str) {
        let Some(tx) = self.client.get_mut(branch) else {
            return;
        };
        let mut first = true;
        while let Some(out) = tx.machine.poll_transmit() {
            if !first {
                self.stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            self.transports.send(&tx.flow, tx.target, out);
        }
        let mut terminated = false;
        while let Some(ev) = tx.machine.poll_event() {
            match ev {
                TxEvent::Timeout => {
                    if let Some(reply) = tx.reply.take() {
                        let _ = reply.send(Err(RequestError::Timeout));
                    }
                }
                TxEvent::TransportError => {
                    if let Some(reply) = tx.reply.take() {
                        let _ = reply.send(Err(RequestError::Transport));
                    }
                }
                TxEvent::Terminated => terminated = true,
                TxEvent::AckTimeout => {}
            }
        }
        let next = tx.machine.poll_timeout();
        schedule(&mut self.heap, &mut tx.scheduled, next, || {
            TimerRef::Client(branch.to_string())
        });
        if terminated {
            self.client.remove(branch);
        }
    }
}

/// Puts a transaction's next deadline on the timer heap, unless it is the one already there
/// (a deadline that moved leaves its old entry behind: firing it finds nothing due).
fn schedule(
    heap: &mut BinaryHeap<Reverse<(Instant, TimerRef)>>,
    scheduled: &mut Option<Instant>,
    next: Option<Instant>,
    timer: impl FnOnce() -> TimerRef,
) {
    if let Some(at) = next.filter(|_| next != *scheduled) {
        *scheduled = next;
        heap.push(Reverse((at, timer())));
    }
}

fn is_known_method(m: &str) -> bool {
    matches!(
        m,
        "INVITE"
            | "ACK"
            | "CANCEL"
            | "BYE"
            | "REGISTER"
            | "MESSAGE"
            | "UPDATE"
            | "PRACK"
            | "OPTIONS"
            | "SUBSCRIBE"
            | "NOTIFY"
            | "PUBLISH"
            | "INFO"
            | "REFER"
    )
}

/// A `sips:` Request-URI asks for TLS on every hop (RFC 5630 4); one that reached us over UDP
/// or TCP did not get it, so it is refused (416) rather than served in clear.
fn sips_over_plain(msg: &Message, flow: Flow) -> Option<u16> {
    let uri = msg.request_uri()?;
    let sips = uri
        .get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("sips:"));
    (sips && !flow.protocol.secure()).then_some(416)
}

/// The option tags of `Require` we do not implement, comma-joined (for `Unsupported`).
fn unsupported_required(msg: &Message) -> Option<String> {
    let tags: Vec<&str> = msg
        .headers
        .get_raw(&Name::REQUIRE)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !super::session_timer::is_supported(t))
        .collect();
    (!tags.is_empty()).then(|| tags.join(", "))
}

/// Checks a new request must pass before anything acts on it; `Some(code)` is the refusal.
fn precheck(msg: &Message) -> Option<u16> {
    let uri = msg.request_uri()?;
    let scheme = uri.split(':').next().unwrap_or("").to_ascii_lowercase();
    if !matches!(scheme.as_str(), "sip" | "sips" | "tel") {
        return Some(416);
    }
    // Max-Forwards: 0 is a proxy's business (483); an endpoint processes the request anyway
    // (RFC 4475 3.3.11), but a value that is not a number is malformed.
    if let Some(mf) = msg.header(&Name::MAX_FORWARDS)
        && mf.trim().parse::<u32>().is_err()
    {
        return Some(400);
    }
    // Of the SIP extensions a caller could require, we implement session timers (RFC 4028);
    // anything else gets 420 (RFC 3261 8.2.2.3).
    if unsupported_required(msg).is_some() {
        return Some(420);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::message::cancel_for;
    use super::*;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::from(s.to_string())).unwrap()
    }

    fn invite(call_id: &str, from: SocketAddr) -> String {
        format!(
            "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call_id}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=f{call_id}\r\n\
             To: <sip:ivr@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{from}>\r\nContent-Length: 0\r\n\r\n"
        )
    }

    async fn next_response(peer: &tokio::net::UdpSocket) -> String {
        let mut buf = vec![0u8; 4096];
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), peer.recv_from(&mut buf))
                .await
                .expect("a response within 5 s")
                .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Overload control, through a real UDP socket: a new INVITE that waited past the limit is
    /// answered 503 with Retry-After and never becomes a call; a fresh one does.
    #[tokio::test]
    async fn an_invite_that_waited_too_long_is_shed_with_503() {
        use super::super::transport::{self, Protocol};
        let shutdown = CancellationToken::new();
        let (in_tx, in_rx) = mpsc::channel(16);
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let transports = transport::Transports::new(Default::default(), Default::default());
        let bound = transport::bind(
            &transports,
            &[listen],
            &[],
            &[],
            in_tx.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let flow = Flow {
            protocol: Protocol::Udp,
            local: bound[0].1,
            remote: peer.local_addr().unwrap(),
        };
        let (calls_tx, mut calls_rx) = mpsc::channel(4);
        let cfg = CoreConfig {
            overload_after: Some(std::time::Duration::from_millis(500)),
            ..CoreConfig::new(Timers::default(), "test")
        };
        let core = spawn(cfg, transports, in_rx, calls_tx, shutdown.clone());

        let stale = Instant::now() - std::time::Duration::from_secs(1);
        let inc = Incoming {
            msg: msg(&invite("late", flow.remote)),
            flow,
            arrived: stale,
            trust: Trust::Trusted,
        };
        in_tx.send(inc).await.unwrap();
        let resp = next_response(&peer).await;
        assert!(resp.starts_with("SIP/2.0 503 "), "{resp}");
        assert!(resp.contains("\r\nRetry-After: 1\r\n"), "{resp}");
        assert_eq!(core.stats.overload_rejects.load(Ordering::Relaxed), 1);

        let fresh = Incoming {
            msg: msg(&invite("timely", flow.remote)),
            flow,
            arrived: Instant::now(),
            trust: Trust::Trusted,
        };
        in_tx.send(fresh).await.unwrap();
        assert!(next_response(&peer).await.starts_with("SIP/2.0 100 "));
        let call = tokio::time::timeout(std::time::Duration::from_secs(5), calls_rx.recv())
            .await
            .expect("a call for the timely INVITE")
            .unwrap();
        // The shed INVITE made no call: the first one through is the timely one.
        assert_eq!(call.invite.call_id.to_string(), "timely");
        assert_eq!(core.stats.overload_rejects.load(Ordering::Relaxed), 1);
        shutdown.cancel();
    }

    /// A core on a real UDP socket, with `cfg`, and a peer socket that receives on every
    /// loopback address (so flows can pretend to come from 127.0.0.2, .3, ...).
    async fn core_with(
        cfg: CoreConfig,
    ) -> (
        CoreHandle,
        mpsc::Sender<Incoming>,
        mpsc::Receiver<NewCall>,
        tokio::net::UdpSocket,
        SocketAddr,
        CancellationToken,
    ) {
        use super::super::transport;
        let shutdown = CancellationToken::new();
        let (in_tx, in_rx) = mpsc::channel(64);
        let transports = transport::Transports::new(Default::default(), Default::default());
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bound = transport::bind(
            &transports,
            &[listen],
            &[],
            &[],
            in_tx.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let peer = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let (calls_tx, calls_rx) = mpsc::channel(64);
        let core = spawn(cfg, transports, in_rx, calls_tx, shutdown.clone());
        (core, in_tx, calls_rx, peer, bound[0].1, shutdown)
    }

    fn from_host(
        text: &str,
        host: [u8; 4],
        peer: &tokio::net::UdpSocket,
        local: SocketAddr,
        trust: Trust,
    ) -> Incoming {
        let remote = SocketAddr::from((host, peer.local_addr().unwrap().port()));
        Incoming {
            msg: msg(text),
            flow: Flow {
                protocol: super::super::transport::Protocol::Udp,
                local,
                remote,
            },
            arrived: Instant::now(),
            trust,
        }
    }

    async fn responses(peer: &tokio::net::UdpSocket, window: std::time::Duration) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(Ok((n, _))) = tokio::time::timeout(window, peer.recv_from(&mut buf)).await {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// OPTIONS leave nothing behind; an INVITE opens a transaction.
    #[tokio::test]
    async fn options_are_answered_without_a_transaction() {
        let (core, in_tx, _calls, peer, local, shutdown) =
            core_with(CoreConfig::new(Timers::default(), "test")).await;
        let port = peer.local_addr().unwrap().port();
        for i in 0..20 {
            let text = format!(
                "OPTIONS sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKo{i}\r\n\
                 From: <sip:a@h>;tag=1\r\nTo: <sip:ivr@h>\r\nCall-ID: o{i}\r\nCSeq: 1 OPTIONS\r\n\r\n"
            );
            in_tx
                .send(from_host(
                    &text,
                    [127, 0, 0, 1],
                    &peer,
                    local,
                    Trust::Trusted,
                ))
                .await
                .unwrap();
        }
        let got = responses(&peer, std::time::Duration::from_millis(300)).await;
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|r| r.starts_with("SIP/2.0 200 ")));
        assert_eq!(core.stats.server_transactions.load(Ordering::Relaxed), 0);
        let inv = invite("one", SocketAddr::from(([127, 0, 0, 1], port)));
        in_tx
            .send(from_host(
                &inv,
                [127, 0, 0, 1],
                &peer,
                local,
                Trust::Trusted,
            ))
            .await
            .unwrap();
        responses(&peer, std::time::Duration::from_millis(200)).await;
        assert_eq!(core.stats.server_transactions.load(Ordering::Relaxed), 1);
        shutdown.cancel();
    }

    /// Untrusted sources, one INVITE each, can take only an eighth of the transaction cap
    /// between them; the rest get a stateless 503, and a trusted peer still gets in.
    #[tokio::test]
    async fn untrusted_sources_share_an_eighth_of_the_transaction_cap() {
        let cfg = CoreConfig {
            max_transactions: 16,
            ..CoreConfig::new(Timers::default(), "test")
        };
        let (core, in_tx, mut calls, peer, local, shutdown) = core_with(cfg).await;
        let port = peer.local_addr().unwrap().port();
        for k in 2..8u8 {
            let inv = invite(&format!("u{k}"), SocketAddr::from(([127, 0, 0, k], port)));
            in_tx
                .send(from_host(
                    &inv,
                    [127, 0, 0, k],
                    &peer,
                    local,
                    Trust::Untrusted,
                ))
                .await
                .unwrap();
        }
        let got = responses(&peer, std::time::Duration::from_millis(300)).await;
        let trying = got.iter().filter(|r| r.starts_with("SIP/2.0 100 ")).count();
        let refused = got.iter().filter(|r| r.starts_with("SIP/2.0 503 ")).count();
        assert_eq!((trying, refused), (2, 4), "{got:#?}");
        let capacity = REFUSALS
            .iter()
            .position(|r| *r == Refusal::Capacity)
            .unwrap();
        assert_eq!(core.stats.refused[capacity].load(Ordering::Relaxed), 4);
        let inv = invite("pbx", SocketAddr::from(([127, 0, 0, 1], port)));
        in_tx
            .send(from_host(
                &inv,
                [127, 0, 0, 1],
                &peer,
                local,
                Trust::Trusted,
            ))
            .await
            .unwrap();
        let got = responses(&peer, std::time::Duration::from_millis(300)).await;
        assert!(got[0].starts_with("SIP/2.0 100 "), "{got:#?}");
        let mut ids = Vec::new();
        while let Ok(c) = calls.try_recv() {
            ids.push((c.invite.call_id.to_string(), c.trust));
        }
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(ids[2], ("pbx".to_string(), Trust::Trusted));
        shutdown.cancel();
    }

    #[test]
    fn ack_and_invite_share_a_key_cancel_does_not() {
        let inv = msg(
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:5;branch=z9hG4bKx\r\nFrom: <sip:c@d>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
        );
        let ack = msg(
            "ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:5;branch=z9hG4bKx\r\nFrom: <sip:c@d>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n",
        );
        let cancel = msg(
            "CANCEL sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:5;branch=z9hG4bKx\r\nFrom: <sip:c@d>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 CANCEL\r\n\r\n",
        );
        assert_eq!(TxKey::of(&inv), TxKey::of(&ack));
        assert_ne!(TxKey::of(&inv), TxKey::of(&cancel));
        assert_eq!(
            TxKey::with_method(&cancel, "INVITE".into()),
            TxKey::of(&inv)
        );
    }

    #[test]
    fn prechecks() {
        let base = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:c@d>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n";
        assert_eq!(precheck(&msg(&format!("{base}\r\n"))), None);
        assert_eq!(
            precheck(&msg(&format!("{base}Require: foo\r\n\r\n"))),
            Some(420)
        );
        // Session timers are the one extension we implement.
        assert_eq!(
            precheck(&msg(&format!("{base}Require: timer\r\n\r\n"))),
            None
        );
        let both = msg(&format!("{base}Require: timer, 100rel\r\n\r\n"));
        assert_eq!(precheck(&both), Some(420));
        assert_eq!(unsupported_required(&both).as_deref(), Some("100rel"));
        let inv = base.replace("OPTIONS", "INVITE");
        // An endpoint processes Max-Forwards: 0 (RFC 4475 3.3.11); garbage is a 400.
        assert_eq!(
            precheck(&msg(&format!("{inv}Max-Forwards: 0\r\n\r\n"))),
            None
        );
        assert_eq!(
            precheck(&msg(&format!("{inv}Max-Forwards: many\r\n\r\n"))),
            Some(400)
        );
        let unk = base.replace("OPTIONS sip:a@b", "OPTIONS http:a@b");
        assert_eq!(precheck(&msg(&format!("{unk}\r\n"))), Some(416));
    }

    /// The INVITE of an outbound call to `callee`, from the core's `local` socket.
    fn our_invite(local: SocketAddr, callee: SocketAddr, branch: &str) -> Bytes {
        super::super::message::invite_request(&super::super::message::OutboundInvite {
            request_uri: &format!("sip:+4930123456@{callee}"),
            from: "sip:ivrd@127.0.0.1",
            from_tag: "ourtag",
            call_id: "out-1@ivrd",
            cseq: 1,
            protocol: super::super::transport::Protocol::Udp,
            via_host: local,
            branch,
            contact: &format!("sip:ivrd@{local}"),
            credentials: Some(("Proxy-Authorization", "Digest username=\"u\"".into())),
            user_agent: "test",
            sdp: Bytes::from_static(b"v=0\r\n"),
        })
    }

    /// A response of the callee to the request `req` (as received), with `code`, a To tag
    /// (none for 100) and whatever `extra` headers.
    fn answer(req: &str, code: u16, to_tag: Option<&str>, extra: &str) -> String {
        let header = |name: &str| {
            req.lines()
                .find(|l| l.starts_with(&format!("{name}:")))
                .unwrap_or_default()
                .to_string()
        };
        let to = match to_tag {
            Some(t) => format!("{};tag={t}", header("To")),
            None => header("To"),
        };
        format!(
            "SIP/2.0 {code} {}\r\n{}\r\n{}\r\n{to}\r\n{}\r\n{}\r\n{extra}Content-Length: 0\r\n\r\n",
            reason_phrase(code),
            header("Via"),
            header("From"),
            header("Call-ID"),
            header("CSeq"),
        )
    }

    /// A core that has just sent an outbound INVITE to `peer` (the callee), and the INVITE as
    /// the callee received it.
    struct OutboundRig {
        core: CoreHandle,
        peer: tokio::net::UdpSocket,
        local: SocketAddr,
        callee: SocketAddr,
        flow: Flow,
        branch: String,
        placed: Placed,
        inv: String,
        shutdown: CancellationToken,
    }

    async fn outbound_rig() -> OutboundRig {
        let (core, _in, _calls, peer, local, shutdown) =
            core_with(CoreConfig::new(Timers::default(), "test")).await;
        let callee = SocketAddr::from(([127, 0, 0, 1], peer.local_addr().unwrap().port()));
        let flow = Flow {
            protocol: super::super::transport::Protocol::Udp,
            local,
            remote: callee,
        };
        let branch = new_branch();
        let placed = core
            .invite(flow, callee.into(), our_invite(local, callee, &branch))
            .unwrap();
        let inv = next_response(&peer).await;
        OutboundRig {
            core,
            peer,
            local,
            callee,
            flow,
            branch,
            placed,
            inv,
            shutdown,
        }
    }

    async fn next_invite_event(placed: &mut Placed) -> InviteEvent {
        tokio::time::timeout(std::time::Duration::from_secs(5), placed.invite.recv())
            .await
            .expect("an INVITE event within 5 s")
            .expect("the core is running")
    }

    /// An outbound INVITE that rings and is CANCELled: the CANCEL (same branch, its own
    /// transaction) gets its own 200, the 487 ends the INVITE and is ACKed with its To tag on
    /// the INVITE's branch. Before the core kept INVITE client transactions apart, the
    /// CANCEL's response would have been matched to whichever shared the branch.
    #[tokio::test]
    async fn an_outbound_invite_rings_is_cancelled_and_its_487_is_acked() {
        let OutboundRig {
            core,
            peer,
            local,
            callee,
            flow,
            branch,
            mut placed,
            inv,
            shutdown,
        } = outbound_rig().await;
        assert!(inv.starts_with("INVITE "), "{inv}");
        peer.send_to(answer(&inv, 180, Some("theirs"), "").as_bytes(), local)
            .await
            .unwrap();
        assert!(matches!(
            next_invite_event(&mut placed).await,
            InviteEvent::Provisional(r) if r.status() == Some(180)
        ));
        let cancel = cancel_for(&msg(&inv));
        let req = {
            let core = core.clone();
            tokio::spawn(async move { core.request(flow, callee.into(), branch, cancel).await })
        };
        let cancel = next_response(&peer).await;
        assert!(cancel.starts_with("CANCEL "), "{cancel}");
        assert_eq!(via_branch_of(&cancel), via_branch_of(&inv));
        peer.send_to(answer(&cancel, 200, Some("theirs"), "").as_bytes(), local)
            .await
            .unwrap();
        let resp = req.await.unwrap().expect("the CANCEL's own 200");
        assert_eq!(resp.status(), Some(200));
        assert_eq!(resp.cseq_method, Method::CANCEL);
        peer.send_to(answer(&inv, 487, Some("theirs"), "").as_bytes(), local)
            .await
            .unwrap();
        assert!(matches!(
            next_invite_event(&mut placed).await,
            InviteEvent::Failed(r) if r.status() == Some(487)
        ));
        let ack = next_response(&peer).await;
        assert!(ack.starts_with("ACK "), "{ack}");
        assert!(ack.contains(";tag=theirs"), "{ack}");
        assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
        assert_eq!(via_branch_of(&ack), via_branch_of(&inv));
        // A retransmitted 487 is absorbed and answered with the same ACK.
        peer.send_to(answer(&inv, 487, Some("theirs"), "").as_bytes(), local)
            .await
            .unwrap();
        assert_eq!(next_response(&peer).await, ack);
        shutdown.cancel();
    }

    /// An answered outbound INVITE: the core ACKs the 2xx (new branch, the INVITE's CSeq and
    /// credentials, to the Contact), ACKs its retransmission again, ends a second fork with
    /// ACK and BYE, and routes the callee's BYE to the call.
    #[tokio::test]
    async fn an_answered_outbound_invite_is_acked_and_its_dialog_routed() {
        let OutboundRig {
            peer,
            local,
            callee,
            mut placed,
            inv,
            shutdown,
            ..
        } = outbound_rig().await;
        let contact = format!("Contact: <sip:callee@{callee}>\r\n");
        let ok = answer(&inv, 200, Some("theirs"), &contact);
        peer.send_to(ok.as_bytes(), local).await.unwrap();
        assert!(matches!(
            next_invite_event(&mut placed).await,
            InviteEvent::Answered(r) if r.to_tag() == Some("theirs")
        ));
        let ack = next_response(&peer).await;
        assert!(
            ack.starts_with(&format!("ACK sip:callee@{callee} ")),
            "{ack}"
        );
        assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
        assert!(ack.contains("Proxy-Authorization: Digest"), "{ack}");
        assert_ne!(via_branch_of(&ack), via_branch_of(&inv));
        // The 2xx again (our ACK was lost): the same ACK again, and no second Answered.
        peer.send_to(ok.as_bytes(), local).await.unwrap();
        assert_eq!(next_response(&peer).await, ack);
        // Another fork answers: ACK and BYE for it, nothing for the call.
        let fork = answer(&inv, 200, Some("fork2"), &contact);
        peer.send_to(fork.as_bytes(), local).await.unwrap();
        let fork_ack = next_response(&peer).await;
        assert!(
            fork_ack.starts_with("ACK ") && fork_ack.contains("tag=fork2"),
            "{fork_ack}"
        );
        let bye = next_response(&peer).await;
        assert!(
            bye.starts_with("BYE ") && bye.contains("tag=fork2"),
            "{bye}"
        );
        assert!(bye.contains("CSeq: 2 BYE"), "{bye}");
        assert!(
            placed.invite.try_recv().is_err(),
            "the fork is not the call's business"
        );
        // The callee hangs up: the core answers and tells the call.
        let their_bye = format!(
            "BYE sip:ivrd@{local} SIP/2.0\r\nVia: SIP/2.0/UDP {callee};branch=z9hG4bKbye1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+4930123456@{callee}>;tag=theirs\r\n\
             To: <sip:ivrd@127.0.0.1>;tag=ourtag\r\nCall-ID: out-1@ivrd\r\nCSeq: 1 BYE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        peer.send_to(their_bye.as_bytes(), local).await.unwrap();
        let ok = next_response(&peer).await;
        assert!(
            ok.starts_with("SIP/2.0 200 ") && ok.contains("CSeq: 1 BYE"),
            "{ok}"
        );
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), placed.dialog.recv())
            .await
            .unwrap();
        assert!(matches!(ev, Some(SipEvent::Bye)), "{ev:?}");
        shutdown.cancel();
    }

    /// A ringing INVITE whose placer is gone is forgotten (Proceeding has no timer of its
    /// own): the next housekeeping removes it.
    #[tokio::test]
    async fn a_ringing_invite_without_its_placer_is_forgotten() {
        let OutboundRig {
            peer,
            local,
            placed,
            inv,
            shutdown,
            ..
        } = outbound_rig().await;
        peer.send_to(answer(&inv, 180, Some("theirs"), "").as_bytes(), local)
            .await
            .unwrap();
        drop(placed);
        // Housekeeping runs every 250 ms; then the 487 finds no transaction: no ACK.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        peer.send_to(answer(&inv, 487, Some("theirs"), "").as_bytes(), local)
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let got = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            peer.recv_from(&mut buf),
        )
        .await;
        assert!(got.is_err(), "the forgotten INVITE still ACKed its 487");
        shutdown.cancel();
    }

    fn via_branch_of(m: &str) -> String {
        msg(m).branch().unwrap_or_default().to_string()
    }

    #[test]
    fn tokens_are_random_and_cookie_prefixed() {
        let (a, b) = (new_branch(), new_branch());
        assert!(a.starts_with("z9hG4bK") && a.len() == 23);
        assert_ne!(a, b);
    }
}

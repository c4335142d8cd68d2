//! The media engine: RTP for every call, paced from a shared clock.
//!
//! Sending: a few pacing threads (default one) each own a share of the streams and wake on a
//! fixed 1 ms grid of absolute deadlines ([`super::clock`]). On each tick a thread writes one
//! packet for every stream that is due (every 20 ticks for 20 ms ptime, on the stream's own
//! phase), from the stream's prompt queue or silence, into one stack buffer, and sends it with
//! a plain `sendto` on the stream's socket. No task or timer per call, no allocation per
//! packet, every stream of a thread phase-locked to one clock, and the streams spread evenly
//! over the phases, so a thousand 20 ms calls cost fifty `sendto`s per tick and nothing else.
//!
//! Why not `sendmmsg`: it batches datagrams of one socket, and every call has its own socket
//! (its own RTP port, which symmetric-RTP peers and NATs expect packets to come from), so there
//! is one datagram per socket per tick. The benchmark's floor shows the `sendto` itself, with
//! the loopback delivery it includes, is most of the cost.
//!
//! Receiving: one small tokio task per stream waits on its socket (epoll does the waiting),
//! learns where the caller's RTP comes from and drops RTP from anywhere else (strict RTP,
//! [`SourceFilter`]), latches that address for symmetric RTP, turns RFC 4733 events and in-band
//! tones into digits, and watches for RTP silence (the RTP timeout). Events go to the call task.
//!
//! SRTP ([`Protection::Srtp`], keys from SDES): the pacer encrypts each packet in place in its
//! stack buffer, which has room for the tag, right before `sendto`; the receive task checks and
//! decrypts in place in its receive buffer before anything else looks at the packet. A packet
//! that fails authentication or is a replay is counted and dropped there: it never reaches
//! the source filter (so it cannot be learned as the caller's source), the RTP timeout, or a
//! DTMF decoder. Each side keeps its [`srtp`] context (key schedule, keyed HMAC, ROC, replay
//! window) for the stream's life and replaces it only when a new SDP exchange changes its key.
//!
//! The call talks to its stream through a [`StreamHandle`]: play, stop, update after SDP
//! changes; dropping the handle closes the stream and frees its port.

use super::clock;
use super::dtmf::{Digit, DtmfMethod, InbandDetector, Rfc4733Receiver};
use super::g711;
use super::prompt::Prompt;
use super::rtp::{self, HEADER_LEN, Received, RtpSender};
use super::srtp::{self, SrtpError, SrtpKeys, SrtpReceiver, SrtpSender};
use crate::sip::sdp::Codec;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{Span, debug, info, warn};

/// The pacing grid: 1 ms. A stream sends every `ptime` ticks on a phase of its own, and the
/// streams are spread evenly over the phases, so a wake-up sends about N/20 packets (20 ms
/// ptime) rather than N/2 every 10 ms. A stream's moment within its burst then varies by
/// tens of microseconds instead of milliseconds (measured: bench/README.md), and the network
/// sees an even flow instead of a thousand packets at once.
const TICK: Duration = Duration::from_millis(1);
/// A tick that starts this late counts in `late_ticks`.
const LATE: Duration = Duration::from_millis(5);
/// How far behind the pacer still sends every missed packet: 200 ms, about the deepest
/// jitter buffer a phone keeps; later packets would be thrown away on arrival.
const CATCH_UP: Duration = Duration::from_millis(200);
/// Largest payload we send: 40 ms of G.711.
const MAX_PAYLOAD: usize = 320;
/// The pacer's packet buffer: header, payload, and room for an SRTP tag.
const SEND_BUF: usize = HEADER_LEN + MAX_PAYLOAD + srtp::MAX_TAG_LEN;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP port in {min}..={max}")]
    NoPort { min: u16, max: u16 },
    #[error("RTP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What a stream tells its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The prompts queued by `play(token, ..)` finished or were stopped.
    PlayDone { token: u64, interrupted: bool },
    Digit {
        digit: Digit,
        method: DtmfMethod,
        at: Instant,
    },
    /// No RTP for the configured time.
    RtpTimeout,
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub rtp_ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub symmetric_rtp: bool,
    /// Learn the caller's RTP source once and drop RTP from other addresses
    /// ([`SourceFilter`]); false latches to any source at any time (unsafe).
    pub strict_rtp: bool,
    /// Packets in sequence from one address and SSRC before strict RTP learns it.
    pub rtp_probation: u32,
    pub rtp_timeout: Option<Duration>,
    pub inband_dtmf: bool,
    pub pacing_threads: usize,
    /// Nice value the pacing threads ask for (0 = leave it).
    pub pacer_nice: i32,
}

/// What the negotiated SDP says about sending and receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    pub codec: Codec,
    pub payload_type: u8,
    pub dtmf_payload_type: Option<u8>,
    pub ptime_ms: u32,
    /// The address in the SDP; `None` until known (late offer) or on hold (0.0.0.0).
    pub remote: Option<SocketAddr>,
    /// False while we must not send (the caller's SDP says recvonly/inactive).
    pub send: bool,
    /// False while the call is on hold (anything but sendrecv: a held caller may send
    /// nothing, whatever its SDP says): pauses the RTP timeout, which counts again from the
    /// resume.
    pub expect_rtp: bool,
    /// Plain RTP or SRTP, and with which keys.
    pub protection: Protection,
}

/// How a stream's packets are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Plain RTP.
    Plain,
    /// SRTP is coming (our offer was SRTP) but the peer's answer, with its key, is not here
    /// yet: nothing is sent, and everything received is dropped as unauthenticated.
    AwaitingKeys,
    /// SRTP with these keys (`Debug` does not print them).
    Srtp(SrtpKeys),
}

impl Protection {
    /// The SRTP suite's name, or `None` for plain RTP.
    pub fn srtp_suite(&self) -> Option<&'static str> {
        match self {
            Protection::Srtp(keys) => Some(keys.suite.name()),
            Protection::Plain | Protection::AwaitingKeys => None,
        }
    }

    /// A sending context for our key, unless `current` already is one for it.
    fn sender(
        &self,
        current: Option<Box<SrtpSender>>,
        old: &Protection,
    ) -> Option<Box<SrtpSender>> {
        match (self, old) {
            (Protection::Srtp(new), Protection::Srtp(was))
                if new.suite == was.suite && new.send == was.send && current.is_some() =>
            {
                current
            }
            (Protection::Srtp(keys), _) => Some(Box::new(SrtpSender::new(keys.suite, &keys.send))),
            _ => None,
        }
    }
}

/// Counters for metrics and the benchmark (relaxed atomics: read rarely, written hot).
#[derive(Debug, Default)]
pub struct MediaStats {
    pub packets_sent: AtomicU64,
    /// RTP packets acted on: from the caller's learned source.
    pub packets_received: AtomicU64,
    /// RTP packets dropped by strict RTP because they came from another address than the
    /// caller's learned source.
    pub foreign_packets: AtomicU64,
    /// SRTP packets dropped because they failed authentication (a wrong key, a forgery, plain
    /// RTP on an SRTP stream, a damaged packet), or came before the keys did.
    pub srtp_auth_failures: AtomicU64,
    /// SRTP packets dropped as replays: an index already received, or too old for the window.
    pub srtp_replays: AtomicU64,
    pub send_errors: AtomicU64,
    /// Ticks that started more than 5 ms late.
    pub late_ticks: AtomicU64,
    /// Ticks given up because the pacer was more than `CATCH_UP` ticks behind: packets
    /// never sent.
    pub skipped_ticks: AtomicU64,
    pub ticks: AtomicU64,
    pub active_streams: AtomicUsize,
    /// Per stream, |interval between consecutive packets − ptime|, as the pacer saw it when it
    /// handed each packet to the kernel: ivrd's own view of send timing (the benchmark also
    /// measures it from outside, in a packet capture).
    pub send_jitter: JitterHistogram,
}

/// Upper bounds (µs) of the send-timing histogram buckets; the last bucket is +Inf.
pub const JITTER_BUCKETS_US: [u64; 9] = [50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000];

/// A fixed-bucket histogram written by one pacer thread per packet (relaxed atomics, no lock).
#[derive(Debug, Default)]
pub struct JitterHistogram {
    /// Non-cumulative counts; index `JITTER_BUCKETS_US.len()` is the overflow bucket.
    pub buckets: [AtomicU64; JITTER_BUCKETS_US.len() + 1],
    pub sum_ns: AtomicU64,
}

impl JitterHistogram {
    pub fn record(&self, error_ns: u64) {
        let i = JITTER_BUCKETS_US
            .iter()
            .position(|le| error_ns <= le * 1_000)
            .unwrap_or(JITTER_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(error_ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound, then the total (Prometheus `le` semantics).
    pub fn cumulative(&self) -> ([u64; JITTER_BUCKETS_US.len()], u64) {
        let mut out = [0; JITTER_BUCKETS_US.len()];
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            if i < out.len() {
                out[i] = acc;
            }
        }
        (out, acc)
    }
}

enum PacerCmd {
    Add(Box<PacedStream>),
    Play {
        id: u64,
        token: u64,
        prompts: Vec<Arc<Prompt>>,
    },
    Stop {
        id: u64,
    },
    /// End the playing at the next pause (see [`StreamHandle::stop_at_pause`]).
    StopAtPause {
        id: u64,
    },
    Update {
        id: u64,
        params: StreamParams,
    },
    Remove {
        id: u64,
    },
}

/// State shared between the call's handle, the receive task and the pacer.
#[derive(Debug)]
struct Shared {
    /// What the SDP says, as the call's handle last set it.
    sdp: Mutex<Sdp>,
    /// Bumped on every `update`, so the receive task re-reads `sdp` only when it changed
    /// instead of taking the lock for every packet.
    sdp_generation: AtomicU64,
    /// Where the caller's RTP comes from (symmetric RTP / NAT latching); written by the
    /// receive task when it learns a source, cleared when the SDP moves the media.
    latched: Mutex<Option<SocketAddr>>,
    /// Bumped on every (re-)latch, so the pacer re-reads `latched` only when it changed
    /// instead of taking the lock for every packet.
    latch_generation: AtomicU64,
}

impl Shared {
    fn new(params: StreamParams) -> Shared {
        Shared {
            sdp: Mutex::new(Sdp::new(params)),
            sdp_generation: AtomicU64::new(0),
            latched: Mutex::new(None),
            latch_generation: AtomicU64::new(0),
        }
    }

    fn set_latched(&self, to: Option<SocketAddr>) {
        let mut latched = self.latched.lock().expect("latch lock");
        if *latched != to {
            *latched = to;
            self.latch_generation.fetch_add(1, Ordering::Release);
        }
    }
}

/// The call's latest SDP facts, and how often they moved the media to a new address.
#[derive(Debug, Clone, Copy)]
struct Sdp {
    params: StreamParams,
    /// The last address an SDP named. Kept while `params.remote` is `None` (a 0.0.0.0
    /// hold), so that resuming at the same address is not a move.
    address: Option<SocketAddr>,
    /// Bumped whenever `address` changes; the receive task then learns the source again.
    moves: u64,
    /// Since when the caller's RTP is expected: the stream's start or the last resume. The
    /// RTP timeout counts from this or the caller's last packet, whichever is later, so the
    /// silence of a hold does not count once the call is resumed.
    expected_since: tokio::time::Instant,
}

impl Sdp {
    fn new(params: StreamParams) -> Sdp {
        Sdp {
            params,
            address: params.remote,
            moves: 0,
            expected_since: tokio::time::Instant::now(),
        }
    }

    /// Takes new facts; true when they move the media to a new address (a re-INVITE from
    /// elsewhere), which must not stay tied to the source learned for the old one.
    fn set(&mut self, params: StreamParams) -> bool {
        if params.expect_rtp && !self.params.expect_rtp {
            self.expected_since = tokio::time::Instant::now();
        }
        self.params = params;
        match params.remote {
            Some(to) if self.address.is_none_or(|a| !same_addr(a, to)) => {
                self.address = Some(to);
                self.moves += 1;
                true
            }
            _ => false,
        }
    }
}

/// Same IP and port. Ignores what `SocketAddr`'s `==` also compares for IPv6 (flow label,
/// scope) and sees an IPv4-mapped IPv6 source (a dual-stack socket) as the IPv4 address an
/// SDP names.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// What to do with a received RTP packet, by where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// From the caller's learned source: act on it.
    Accept,
    /// This packet made its address the caller's source: act on it, and send there
    /// (symmetric RTP).
    Learned,
    /// Still learning the source: counted towards probation, otherwise ignored.
    Probation,
    /// From another address than the learned source: dropped.
    Foreign,
}

/// A sequence-checked candidate source during probation.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    from: SocketAddr,
    ssrc: u32,
    seq: u16,
    count: u32,
}

/// Strict RTP (Asterisk's `strictrtp`, FreeSWITCH's auto-adjust): learns once where the
/// caller's RTP comes from and keeps to that address, so that nobody else who can reach the
/// port can take over the call's audio or type digits into it. Pure state, no IO, a few
/// comparisons per packet.
///
/// - A packet from the address the SDP named is learned at once: forging that source is no
///   easier than forging one that passed probation.
/// - Otherwise (NAT: the SDP names a private address) an address is learned after
///   `probation` packets from it with one SSRC and consecutive sequence numbers, which a
///   stray or blind sender does not produce; any break restarts the count from that packet.
/// - Once learned, packets from that address are accepted whatever their SSRC (gateways
///   start a new one per DTMF burst), and everything from other addresses is foreign.
/// - [`restart`](Self::restart) forgets the source when the SDP moves the media.
///
/// Not strict (`[media] strict_rtp = false`), it follows whichever address sent last.
#[derive(Debug, Clone)]
pub struct SourceFilter {
    strict: bool,
    probation: u32,
    sdp: Option<SocketAddr>,
    learned: Option<SocketAddr>,
    candidate: Option<Candidate>,
}

impl SourceFilter {
    /// A filter in probation; `sdp` is the address the SDP named, if any.
    pub fn new(strict: bool, probation: u32, sdp: Option<SocketAddr>) -> SourceFilter {
        SourceFilter {
            strict,
            probation: probation.max(1),
            sdp,
            learned: None,
            candidate: None,
        }
    }

    /// Forgets the learned source and starts probation again for a new SDP address.
    pub fn restart(&mut self, sdp: Option<SocketAddr>) {
        self.sdp = sdp;
        self.learned = None;
        self.candidate = None;
    }

    /// The caller's source, once learned.
    pub fn learned(&self) -> Option<SocketAddr> {
        self.learned
    }

    /// Judges one RTP packet by its source address, SSRC and sequence number.
    pub fn accept(&mut self, from: SocketAddr, ssrc: u32, seq: u16) -> Verdict {
        if let Some(learned) = self.learned {
            if same_addr(learned, from) {
                return Verdict::Accept;
            }
            if self.strict {
                return Verdict::Foreign;
            }
            self.learned = Some(from);
            return Verdict::Learned;
        }
        if !self.strict || self.sdp.is_some_and(|sdp| same_addr(sdp, from)) {
            self.learned = Some(from);
            self.candidate = None;
            return Verdict::Learned;
        }
        let count = match self.candidate {
            Some(c)
                if same_addr(c.from, from) && c.ssrc == ssrc && seq == c.seq.wrapping_add(1) =>
            {
                c.count + 1
            }
            _ => 1,
        };
        if count >= self.probation {
            self.learned = Some(from);
            self.candidate = None;
            Verdict::Learned
        } else {
            self.candidate = Some(Candidate {
                from,
                ssrc,
                seq,
                count,
            });
            Verdict::Probation
        }
    }
}

struct PacedStream {
    id: u64,
    socket: StdUdpSocket,
    params: StreamParams,
    rtp: RtpSender,
    /// The SRTP context for our key, while `params.protection` is SRTP. Boxed: it is a few
    /// hundred bytes (key schedule, keyed HMAC) the slab need not carry for plain streams.
    srtp: Option<Box<SrtpSender>>,
    shared: Arc<Shared>,
    symmetric: bool,
    /// The pacer's copy of `shared.latched`, as of `seen_generation`.
    latched: Option<SocketAddr>,
    seen_generation: u64,
    /// Ticks between packets (the ptime in ms), and which of the `every` phases
    /// (tick % every) this stream sends on.
    every: u64,
    phase: u64,
    /// When the previous packet went out (clock ns) and on which tick, for the jitter figures.
    last_sent_ns: u64,
    last_sent_tick: u64,
    queue: VecDeque<Arc<Prompt>>,
    pos: usize,
    token: Option<u64>,
    /// End the playing at the next pause of the current prompt (or its end).
    cut: bool,
    events: mpsc::UnboundedSender<MediaEvent>,
}

impl PacedStream {
    /// A stream that has sent nothing yet, with no prompt queued.
    fn new(
        id: u64,
        socket: StdUdpSocket,
        params: StreamParams,
        shared: Arc<Shared>,
        symmetric: bool,
        every: u64,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> PacedStream {
        PacedStream {
            id,
            socket,
            srtp: params.protection.sender(None, &Protection::Plain),
            params,
            rtp: RtpSender::new_random(),
            shared,
            symmetric,
            latched: None,
            seen_generation: 0,
            every,
            phase: 0,
            last_sent_ns: 0,
            last_sent_tick: 0,
            queue: VecDeque::new(),
            pos: 0,
            token: None,
            cut: false,
            events,
        }
    }

    fn destination(&mut self) -> Option<SocketAddr> {
        if self.symmetric {
            let generation = self.shared.latch_generation.load(Ordering::Acquire);
            if generation != self.seen_generation {
                self.seen_generation = generation;
                self.latched = *self.shared.latched.lock().expect("latch lock");
            }
            if self.latched.is_some() {
                return self.latched;
            }
        }
        self.params.remote
    }
    /// Fills `payload` from the prompt queue (then silence) and advances playback.
    fn fill(&mut self, payload: &mut [u8]) {
        let silence = match self.params.codec {
            Codec::Pcmu => g711::ULAW_SILENCE,
            Codec::Pcma => g711::ALAW_SILENCE,
        };
        let mut filled = 0;
        while filled < payload.len() {
            let Some(prompt) = self.queue.front() else {
                payload[filled..].fill(silence);
                break;
            };
            let audio: &[u8] = match self.params.codec {
                Codec::Pcmu => &prompt.pcmu,
                Codec::Pcma => &prompt.pcma,
            };
            // Under a cut, this prompt ends at its next pause and nothing after it plays.
            let end = if self.cut {
                prompt
                    .pauses
                    .iter()
                    .copied()
                    .find(|&p| p >= self.pos)
                    .unwrap_or(audio.len())
                    .min(audio.len())
            } else {
                audio.len()
            };
            let take = (end - self.pos.min(end)).min(payload.len() - filled);
            payload[filled..filled + take].copy_from_slice(&audio[self.pos..self.pos + take]);
            filled += take;
            self.pos += take;
            if self.pos >= end {
                if self.cut {
                    self.queue.clear();
                    self.cut = false;
                } else {
                    self.queue.pop_front();
                }
                self.pos = 0;
            }
        }
        if self.queue.is_empty()
            && let Some(token) = self.token.take()
        {
            let _ = self.events.send(MediaEvent::PlayDone {
                token,
                interrupted: false,
            });
        }
    }

    fn stop(&mut self) {
        self.queue.clear();
        self.pos = 0;
        self.cut = false;
        if let Some(token) = self.token.take() {
            let _ = self.events.send(MediaEvent::PlayDone {
                token,
                interrupted: true,
            });
        }
    }
}

struct Pacer {
    commands: std_mpsc::Sender<PacerCmd>,
    streams: AtomicUsize,
}

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct MediaEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    settings: MediaSettings,
    pacers: Vec<Pacer>,
    ports: Mutex<PortPool>,
    next_id: AtomicU64,
    stats: Arc<MediaStats>,
    stopping: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
    }
}

impl MediaEngine {
    /// Starts the pacing threads.
    pub fn start(settings: MediaSettings) -> std::io::Result<MediaEngine> {
        let stats = Arc::new(MediaStats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let mut pacers = Vec::new();
        for n in 0..settings.pacing_threads.max(1) {
            let (tx, rx) = std_mpsc::channel();
            let stats = stats.clone();
            let stopping = stopping.clone();
            let nice = settings.pacer_nice;
            std::thread::Builder::new()
                .name(format!("ivrd-rtp-{n}"))
                .spawn(move || {
                    raise_priority(n, nice);
                    pacer_loop(rx, stats, stopping)
                })?;
            pacers.push(Pacer {
                commands: tx,
                streams: AtomicUsize::new(0),
            });
        }
        let ports = PortPool::new(settings.port_min, settings.port_max);
        Ok(MediaEngine {
            inner: Arc::new(EngineInner {
                settings,
                pacers,
                ports: Mutex::new(ports),
                next_id: AtomicU64::new(1),
                stats,
                stopping,
            }),
        })
    }

    pub fn stats(&self) -> &Arc<MediaStats> {
        &self.inner.stats
    }

    /// Opens a stream on a free port of `rtp_ip`. Sending starts once `update` gives it a
    /// destination; until then the pacer only keeps its clock.
    pub fn open(
        &self,
        params: StreamParams,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<StreamHandle, MediaError> {
        self.open_at(self.inner.settings.rtp_ip, params, events)
    }

    /// [`MediaEngine::open`] on a given local address (one of each family, for dual-stack
    /// media: an IPv6 caller gets an IPv6 socket). Both families share the port numbering.
    pub fn open_at(
        &self,
        ip: IpAddr,
        params: StreamParams,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<StreamHandle, MediaError> {
        let s = &self.inner.settings;
        let (socket, port) = self.inner.ports.lock().expect("port lock").bind(ip)?;
        let recv_socket = socket.try_clone()?;
        recv_socket.set_nonblocking(true)?;
        // Read interest only: the pacer sends on this socket's twin from its own thread, and a
        // write-interest registration would wake a tokio worker for every packet it sends
        // (measured: a third of ivrd's CPU at 500 calls, bench/README.md).
        // SAFETY: the AsyncFd takes ownership of this std socket, so its descriptor stays open
        // and the same for as long as the registration lives (tokio's contract).
        let recv_socket =
            unsafe { AsyncFd::register_with_interest(recv_socket, Interest::READABLE) }
                .map_err(std::io::Error::from)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared::new(params));
        // The call's span (call_id), for the receive task's few log lines. Not entered for
        // every poll: that would cost per packet what a log line costs once.
        let span = Span::current();
        let recv = tokio::spawn(recv_loop(
            recv_socket,
            shared.clone(),
            events.clone(),
            self.inner.settings.clone(),
            self.inner.stats.clone(),
            span,
        ));
        // Least-loaded pacer: keeps threads balanced as calls come and go.
        let (pacer_idx, pacer) = self
            .inner
            .pacers
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| p.streams.load(Ordering::Relaxed))
            .expect("at least one pacer");
        pacer.streams.fetch_add(1, Ordering::Relaxed);
        let every = ticks_per_packet(params.ptime_ms);
        let stream = PacedStream::new(
            id,
            socket,
            params,
            shared.clone(),
            s.symmetric_rtp,
            every,
            events,
        );
        let _ = pacer.commands.send(PacerCmd::Add(Box::new(stream)));
        self.inner
            .stats
            .active_streams
            .fetch_add(1, Ordering::Relaxed);
        Ok(StreamHandle {
            id,
            pacer: pacer_idx,
            local: SocketAddr::new(ip, port),
            port,
            shared,
            recv,
            engine: self.inner.clone(),
        })
    }
}

/// A call's grip on its stream. Dropping it closes the stream.
pub struct StreamHandle {
    id: u64,
    pacer: usize,
    local: SocketAddr,
    port: u16,
    shared: Arc<Shared>,
    recv: tokio::task::JoinHandle<()>,
    engine: Arc<EngineInner>,
}

impl StreamHandle {
    /// Our RTP address (for the SDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn send(&self, cmd: PacerCmd) {
        let _ = self.engine.pacers[self.pacer].commands.send(cmd);
    }

    /// Queues prompts; `PlayDone { token }` follows when they end or are stopped.
    /// A play replaces whatever was playing (which gets its own `PlayDone`, interrupted).
    pub fn play(&self, token: u64, prompts: Vec<Arc<Prompt>>) {
        self.send(PacerCmd::Play {
            id: self.id,
            token,
            prompts,
        });
    }

    pub fn stop(&self) {
        self.send(PacerCmd::Stop { id: self.id });
    }

    /// Ends the playing at the next pause of the prompt playing now (between words or
    /// sentences), or at its end: for a wait prompt whose wait is over. `PlayDone` follows,
    /// not interrupted.
    pub fn stop_at_pause(&self) {
        self.send(PacerCmd::StopAtPause { id: self.id });
    }

    /// New SDP facts (answer, re-INVITE, hold). A new address starts strict RTP's learning
    /// again; the same address (hold, resume, a session refresh) keeps the learned source.
    pub fn update(&self, params: StreamParams) {
        let moved = self.shared.sdp.lock().expect("sdp lock").set(params);
        self.shared.sdp_generation.fetch_add(1, Ordering::Release);
        if moved {
            // Stop sending to the old source now rather than when the receive task next
            // wakes, which could be never if the new address sends nothing.
            self.shared.set_latched(None);
        }
        self.send(PacerCmd::Update {
            id: self.id,
            params,
        });
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.send(PacerCmd::Remove { id: self.id });
        self.recv.abort();
        self.engine.pacers[self.pacer]
            .streams
            .fetch_sub(1, Ordering::Relaxed);
        self.engine
            .stats
            .active_streams
            .fetch_sub(1, Ordering::Relaxed);
        self.engine
            .ports
            .lock()
            .expect("port lock")
            .release(self.port);
    }
}

/// RTP ports: even ports in the range, picked at random, so the port of the next call cannot
/// be guessed (strict RTP learns whoever sends first: a guessable port would let an attacker
/// try to be first). A port freed a moment ago is taken only when no other is free, so late
/// packets of an old call do not land in a new one.
struct PortPool {
    min: u16,
    max: u16,
    in_use: HashSet<u16>,
    /// The most recently released ports, oldest first.
    cooling: VecDeque<u16>,
}

/// How many released ports wait before they are reused (when there are others).
const COOLING: usize = 64;

impl PortPool {
    fn new(min: u16, max: u16) -> PortPool {
        let min = min + (min % 2);
        PortPool {
            min,
            max,
            in_use: HashSet::new(),
            cooling: VecDeque::with_capacity(COOLING),
        }
    }

    /// A socket on a free port. Only "in use" (another process holds it) moves on to the
    /// next port; any other failure (no descriptors left, an address not on this host) is
    /// that failure, not "no free port", so the log names the real cause.
    fn bind(&mut self, ip: IpAddr) -> Result<(StdUdpSocket, u16), MediaError> {
        let slots = u32::from(self.max.saturating_sub(self.min)) / 2 + 1;
        let start = rand::random_range(0..slots);
        for pass in 0..2 {
            for i in 0..slots {
                let port = self.min + 2 * ((start + i) % slots) as u16;
                if self.in_use.contains(&port) || (pass == 0 && self.cooling.contains(&port)) {
                    continue;
                }
                match StdUdpSocket::bind(SocketAddr::new(ip, port)) {
                    Ok(sock) => {
                        sock.set_nonblocking(true)?;
                        self.in_use.insert(port);
                        return Ok((sock, port));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                    Err(e) => return Err(MediaError::Io(e)),
                }
            }
        }
        Err(MediaError::NoPort {
            min: self.min,
            max: self.max,
        })
    }

    fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
        if self.cooling.len() == COOLING {
            self.cooling.pop_front();
        }
        self.cooling.push_back(port);
    }
}

/// Ticks between packets for a ptime: 10, 20, 30 or 40 (what we negotiate; see `sdp`).
fn ticks_per_packet(ptime_ms: u32) -> u64 {
    u64::from(ptime_ms / 10 * 10).clamp(10, 40)
}

/// Ticks in the phase plan: a multiple of every `ticks_per_packet` (10, 20, 30, 40).
const PHASE_SLOTS: usize = 120;

/// How many streams send on each tick of a 120-tick cycle. A new stream takes the phase whose
/// busiest tick is the least busy, so each tick carries the same share of the calls, instead
/// of depending on when each call happened to start. Pure bookkeeping, tested below.
#[derive(Debug)]
struct PhasePlan {
    load: [usize; PHASE_SLOTS],
}

impl Default for PhasePlan {
    fn default() -> PhasePlan {
        PhasePlan {
            load: [0; PHASE_SLOTS],
        }
    }
}

impl PhasePlan {
    fn slots(every: u64, phase: u64) -> impl Iterator<Item = usize> {
        (phase as usize..PHASE_SLOTS).step_by(every as usize)
    }

    /// Picks and books the phase (0..every) for a stream sending every `every` ticks.
    fn join(&mut self, every: u64) -> u64 {
        let phase = (0..every)
            .min_by_key(|p| Self::slots(every, *p).map(|i| self.load[i]).max())
            .unwrap_or(0);
        for i in Self::slots(every, phase) {
            self.load[i] += 1;
        }
        phase
    }

    fn leave(&mut self, every: u64, phase: u64) {
        for i in Self::slots(every, phase) {
            self.load[i] = self.load[i].saturating_sub(1);
        }
    }
}

/// The streams of one pacing thread. They stay put in a slab (a command finds one through
/// `index`); for each packet interval in use, `due` lists per phase the slab slots that send
/// on that phase, so a tick touches only the streams it sends for.
#[derive(Default)]
struct PacerStreams {
    slab: Vec<Option<PacedStream>>,
    free: Vec<usize>,
    index: HashMap<u64, usize>,
    /// (every, slab slots per phase 0..every).
    due: Vec<(u64, Vec<Vec<usize>>)>,
    phases: PhasePlan,
}

impl PacerStreams {
    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut PacedStream> {
        let slot = *self.index.get(&id)?;
        self.slab.get_mut(slot)?.as_mut()
    }

    fn due_list(&mut self, every: u64, phase: u64) -> &mut Vec<usize> {
        let g = match self.due.iter().position(|(e, _)| *e == every) {
            Some(g) => g,
            None => {
                self.due.push((every, vec![Vec::new(); every as usize]));
                self.due.len() - 1
            }
        };
        &mut self.due[g].1[phase as usize]
    }

    fn schedule(&mut self, slot: usize, every: u64) -> u64 {
        let phase = self.phases.join(every);
        self.due_list(every, phase).push(slot);
        phase
    }

    fn unschedule(&mut self, slot: usize, every: u64, phase: u64) {
        self.phases.leave(every, phase);
        let list = self.due_list(every, phase);
        if let Some(i) = list.iter().position(|s| *s == slot) {
            list.swap_remove(i);
        }
    }

    fn add(&mut self, mut s: PacedStream) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slab.push(None);
                self.slab.len() - 1
            }
        };
        s.phase = self.schedule(slot, s.every);
        self.index.insert(s.id, slot);
        self.slab[slot] = Some(s);
    }

    fn set_every(&mut self, id: u64, every: u64) {
        let Some(&slot) = self.index.get(&id) else {
            return;
        };
        let Some((old_every, old_phase)) = self.slab[slot].as_ref().map(|s| (s.every, s.phase))
        else {
            return;
        };
        if old_every == every {
            return;
        }
        self.unschedule(slot, old_every, old_phase);
        let phase = self.schedule(slot, every);
        if let Some(s) = self.slab[slot].as_mut() {
            s.every = every;
            s.phase = phase;
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(slot) = self.index.remove(&id) else {
            return;
        };
        if let Some(s) = self.slab[slot].take() {
            self.unschedule(slot, s.every, s.phase);
        }
        self.free.push(slot);
    }
}

/// RTP is the one part of ivrd that cannot wait: a SIP answer 5 ms late is unnoticed, a packet
/// 5 ms late is jitter, and 200 ms late it is given up. So the pacers run at a lower nice
/// value than the rest of the daemon, and say so when the host does not allow it.
fn raise_priority(n: usize, nice: i32) {
    if nice == 0 {
        return;
    }
    match clock::set_thread_nice(nice) {
        Ok(()) => debug!(pacer = n, nice, "RTP pacer priority raised"),
        // Once, from the first pacer: the others would say the same.
        Err(e) if n == 0 => warn!(
            nice,
            error = %e,
            "cannot raise the RTP pacer's priority: under load, prompts may break up. \
             Allow it with LimitNICE={nice} (systemd), `ulimit -e {}`, or CAP_SYS_NICE; \
             or set [media] pacer_nice = 0 to silence this",
            20 - nice
        ),
        Err(_) => {}
    }
}

fn pacer_loop(
    commands: std_mpsc::Receiver<PacerCmd>,
    stats: Arc<MediaStats>,
    stopping: Arc<AtomicBool>,
) {
    clock::tighten_timer_slack();
    let tick_ns = TICK.as_nanos() as u64;
    let late_ns = LATE.as_nanos() as u64;
    let catch_up_ns = CATCH_UP.as_nanos() as u64;
    let mut streams = PacerStreams::default();
    let start = clock::now_ns();
    let mut tick: u64 = 0;
    let mut buf = [0u8; SEND_BUF];
    loop {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        if streams.is_empty() {
            // Nothing to send: wait for a command instead of waking a thousand times a second
            // on an idle host. Still counts ticks, which the watchdog heartbeat watches.
            match commands.recv_timeout(Duration::from_millis(10)) {
                Ok(cmd) => apply(&mut streams, cmd),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            stats.ticks.fetch_add(1, Ordering::Relaxed);
            tick = (clock::now_ns() - start) / tick_ns + 1;
            continue;
        }
        let deadline = start + tick_ns * tick;
        clock::sleep_until_ns(deadline);
        let late = clock::now_ns().saturating_sub(deadline);
        if late > late_ns {
            stats.late_ticks.fetch_add(1, Ordering::Relaxed);
            // Behind by up to CATCH_UP (a descheduled thread, a busy host): run the missed
            // ticks back to back. Every packet still goes out, a little late, and a jitter
            // buffer absorbs that. Further behind (a suspended VM), late packets are useless:
            // skip to the present and count the ticks given up, which the caller hears as a
            // gap; the RTP timestamps still advance per packet sent.
            if late > catch_up_ns {
                let skipped = late / tick_ns;
                stats.skipped_ticks.fetch_add(skipped, Ordering::Relaxed);
                tick += skipped;
            }
        }
        stats.ticks.fetch_add(1, Ordering::Relaxed);
        loop {
            match commands.try_recv() {
                Ok(cmd) => apply(&mut streams, cmd),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    if streams.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        let PacerStreams { slab, due, .. } = &mut streams;
        for (every, phases) in due.iter() {
            for &slot in &phases[(tick % every) as usize] {
                let Some(s) = slab[slot].as_mut() else {
                    continue;
                };
                send_one(s, tick, tick_ns, &mut buf, &stats);
            }
        }
        tick += 1;
    }
}

/// Writes and sends one stream's packet for this tick.
fn send_one(
    s: &mut PacedStream,
    tick: u64,
    tick_ns: u64,
    buf: &mut [u8; SEND_BUF],
    stats: &MediaStats,
) {
    let Some(dest) = s.destination() else {
        return;
    };
    if !s.params.send || s.params.protection == Protection::AwaitingKeys {
        return;
    }
    let samples = (s.params.ptime_ms * 8) as usize;
    let mut len = HEADER_LEN + samples.min(MAX_PAYLOAD);
    s.rtp
        .write_header(&mut buf[..], s.params.payload_type, samples as u32);
    s.fill(&mut buf[HEADER_LEN..len]);
    if let Some(ctx) = s.srtp.as_mut() {
        // In place, into the room SEND_BUF leaves for the tag: cannot fail for our own header.
        match ctx.protect(&mut buf[..], len) {
            Ok(n) => len = n,
            Err(_) => {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    // One clock read per packet (vDSO, tens of ns against microseconds for sendto).
    let now = clock::now_ns();
    match s.socket.send_to(&buf[..len], dest) {
        Ok(_) => {
            stats.packets_sent.fetch_add(1, Ordering::Relaxed);
            // Only back-to-back packets count: a gap (hold, no destination yet, a skipped
            // backlog) is not jitter.
            if s.last_sent_ns != 0 && tick - s.last_sent_tick == s.every {
                let interval = now - s.last_sent_ns;
                let ptime = s.every * tick_ns;
                stats.send_jitter.record(interval.abs_diff(ptime));
            }
            s.last_sent_ns = now;
            s.last_sent_tick = tick;
        }
        Err(_) => {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn apply(streams: &mut PacerStreams, cmd: PacerCmd) {
    match cmd {
        PacerCmd::Add(s) => streams.add(*s),
        PacerCmd::Play { id, token, prompts } => {
            if let Some(s) = streams.get_mut(id) {
                s.stop();
                s.queue = prompts.into();
                s.pos = 0;
                s.token = Some(token);
                if s.queue.is_empty() {
                    s.fill(&mut []);
                }
            }
        }
        PacerCmd::Stop { id } => {
            if let Some(s) = streams.get_mut(id) {
                s.stop();
            }
        }
        PacerCmd::StopAtPause { id } => {
            if let Some(s) = streams.get_mut(id)
                && !s.queue.is_empty()
            {
                s.cut = true;
            }
        }
        PacerCmd::Update { id, params } => {
            streams.set_every(id, ticks_per_packet(params.ptime_ms));
            if let Some(s) = streams.get_mut(id) {
                // Same key, same context: its ROC goes on (a fresh one would reuse keystream).
                s.srtp = params
                    .protection
                    .sender(s.srtp.take(), &s.params.protection);
                s.params = params;
            }
        }
        PacerCmd::Remove { id } => streams.remove(id),
    }
}

/// One datagram from a socket registered for read readiness only.
async fn recv_from(
    socket: &AsyncFd<StdUdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        let mut ready = socket.readable().await?;
        match ready.try_io(|s| s.get_ref().recv_from(buf)) {
            Ok(result) => return result,
            // Spurious readiness: tokio cleared it; wait again.
            Err(_would_block) => continue,
        }
    }
}

/// The receive task's copy of the SDP facts, refreshed only after an `update`.
struct SdpView {
    params: StreamParams,
    generation: u64,
    moves: u64,
    expected_since: tokio::time::Instant,
}

impl SdpView {
    /// Re-reads the SDP facts if the call updated them (an atomic load per packet, the lock
    /// only after an update); restarts learning the source when they moved the media.
    fn refresh(&mut self, shared: &Shared, filter: &mut SourceFilter, symmetric: bool) {
        let generation = shared.sdp_generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let sdp = *shared.sdp.lock().expect("sdp lock");
        self.params = sdp.params;
        self.expected_since = sdp.expected_since;
        if sdp.moves != self.moves {
            self.moves = sdp.moves;
            filter.restart(sdp.address);
            if symmetric {
                // `update` cleared it already; this covers a source learned from a packet
                // judged just before that update was seen.
                shared.set_latched(None);
            }
        }
    }
}

/// The receive task's SRTP context, rebuilt only when the peer's key changes.
#[derive(Default)]
struct SrtpView {
    keys: Option<SrtpKeys>,
    receiver: Option<SrtpReceiver>,
}

impl SrtpView {
    /// Checks and decrypts `packet` in place when the stream is SRTP; returns the RTP length.
    /// What is not RTP at all (STUN, garbage) and RTCP (SRTCP) multiplexed on the port pass
    /// through untouched, for `rtp::parse` to set aside as it always has (`Invalid`, `Rtcp`):
    /// judged by the clear header bytes alone, since an SRTP packet's padding count is
    /// encrypted.
    fn unprotect(
        &mut self,
        protection: &Protection,
        packet: &mut [u8],
    ) -> Result<usize, SrtpError> {
        let keys = match protection {
            Protection::Plain => return Ok(packet.len()),
            Protection::AwaitingKeys => return Err(SrtpError::Auth),
            Protection::Srtp(keys) => keys,
        };
        let not_rtp = packet.len() < HEADER_LEN || packet[0] >> 6 != 2;
        if not_rtp || (192..=223).contains(&packet[1]) {
            return Ok(packet.len());
        }
        let same = self
            .keys
            .is_some_and(|k| k.suite == keys.suite && k.recv == keys.recv);
        if !same || self.receiver.is_none() {
            self.keys = Some(*keys);
            self.receiver = Some(SrtpReceiver::new(keys.suite, &keys.recv));
        }
        self.receiver
            .as_mut()
            .expect("set just above")
            .unprotect(packet)
    }
}

async fn recv_loop(
    socket: AsyncFd<StdUdpSocket>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<MediaEvent>,
    settings: MediaSettings,
    stats: Arc<MediaStats>,
    span: Span,
) {
    let mut buf = [0u8; 2048];
    let mut pcm = [0i16; 2048];
    let mut rfc4733 = Rfc4733Receiver::new();
    let mut inband = InbandDetector::new();
    let mut last_rx = tokio::time::Instant::now();
    let mut ssrc: Option<u32> = None;
    let (mut sdp, mut filter) = {
        // The generation before the facts: an update in between is then read again, not lost.
        let generation = shared.sdp_generation.load(Ordering::Acquire);
        let initial = *shared.sdp.lock().expect("sdp lock");
        let view = SdpView {
            params: initial.params,
            generation,
            moves: initial.moves,
            expected_since: initial.expected_since,
        };
        let filter =
            SourceFilter::new(settings.strict_rtp, settings.rtp_probation, initial.address);
        (view, filter)
    };
    // Whether a foreign packet was logged: once per stream, as every one of a flood would be.
    let mut foreign_logged = false;
    // The SRTP context for the peer's key, and the protection it was made for.
    let mut srtp = SrtpView::default();
    let mut srtp_logged = false;
    loop {
        sdp.refresh(&shared, &mut filter, settings.symmetric_rtp);
        let p = sdp.params;
        let now = tokio::time::Instant::now();
        let deadline = match settings.rtp_timeout {
            Some(t) if p.expect_rtp => last_rx.max(sdp.expected_since) + t,
            // On hold: nothing to time out now, but look at the facts again within the
            // timeout, so that a resume that brings no RTP still ends in one.
            Some(t) => now + t,
            None => now + Duration::from_secs(3600),
        };
        let (n, from) = tokio::select! {
            r = recv_from(&socket, &mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, "RTP receive error");
                    continue;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                // Judge by the facts as they are now, not as they were when the wait began:
                // a caller that went quiet and then put the call on hold is on hold.
                sdp.refresh(&shared, &mut filter, settings.symmetric_rtp);
                let timed_out = settings.rtp_timeout.is_some_and(|t| {
                    sdp.params.expect_rtp
                        && last_rx.max(sdp.expected_since) + t <= tokio::time::Instant::now()
                });
                if timed_out {
                    let _ = events.send(MediaEvent::RtpTimeout);
                    return;
                }
                continue;
            }
        };
        // An update may have come in while we waited: judge the packet by the current SDP.
        sdp.refresh(&shared, &mut filter, settings.symmetric_rtp);
        let p = sdp.params;
        // SRTP first: nothing unauthenticated reaches the source filter or a digit decoder.
        let n = match srtp.unprotect(&p.protection, &mut buf[..n]) {
            Ok(n) => n,
            Err(SrtpError::Replay) => {
                stats.srtp_replays.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(SrtpError::Auth | SrtpError::Malformed) => {
                stats.srtp_auth_failures.fetch_add(1, Ordering::Relaxed);
                if !srtp_logged {
                    srtp_logged = true;
                    info!(
                        parent: &span,
                        %from,
                        "SRTP packet failed authentication and was dropped (a wrong key, plain \
                         RTP, or a forgery); further ones are only counted"
                    );
                }
                continue;
            }
        };
        let Received::Rtp(pkt) = rtp::parse(&buf[..n]) else {
            continue;
        };
        match filter.accept(from, pkt.ssrc, pkt.seq) {
            Verdict::Accept => {}
            Verdict::Learned => {
                debug!(parent: &span, %from, "RTP source learned");
                if settings.symmetric_rtp {
                    shared.set_latched(Some(from));
                }
            }
            // Not acted on at all: no digits, no RTP-timeout refresh, not latched.
            Verdict::Probation => continue,
            Verdict::Foreign => {
                stats.foreign_packets.fetch_add(1, Ordering::Relaxed);
                if !foreign_logged && let Some(source) = filter.learned() {
                    foreign_logged = true;
                    info!(
                        parent: &span,
                        %from,
                        %source,
                        "RTP from an address other than the caller's dropped (strict RTP); \
                         further ones are only counted"
                    );
                }
                continue;
            }
        }
        last_rx = tokio::time::Instant::now();
        stats.packets_received.fetch_add(1, Ordering::Relaxed);
        // A new SSRC is a new sender clock (RFC 3550 8.2): its timestamps say nothing about
        // the old stream's, so a press on it must not be taken for a late copy of an older one.
        // Gateways and SIPp's play_dtmf start a fresh SSRC for every burst of keys.
        if ssrc != Some(pkt.ssrc) {
            ssrc = Some(pkt.ssrc);
            rfc4733.reset();
        }
        let digit = if Some(pkt.payload_type) == p.dtmf_payload_type {
            rfc4733
                .handle(pkt.timestamp, pkt.payload)
                .map(|d| (d, DtmfMethod::Rfc4733))
        } else if pkt.payload_type == p.payload_type && settings.inband_dtmf {
            let samples = &mut pcm[..pkt.payload.len().min(2048)];
            match p.codec {
                Codec::Pcmu => g711::decode_ulaw_into(&pkt.payload[..samples.len()], samples),
                Codec::Pcma => g711::decode_alaw_into(&pkt.payload[..samples.len()], samples),
            }
            // A frame longer than ~30 ms can complete more than one key: take the first here
            // and send any further ones right after it, in order.
            let first = inband.process(samples);
            if let Some(d) = first {
                let _ = events.send(MediaEvent::Digit {
                    digit: d,
                    method: DtmfMethod::Inband,
                    at: Instant::now(),
                });
                while let Some(more) = inband.pop_digit() {
                    let _ = events.send(MediaEvent::Digit {
                        digit: more,
                        method: DtmfMethod::Inband,
                        at: Instant::now(),
                    });
                }
            }
            None
        } else {
            None
        };
        if let Some((digit, method)) = digit
            && events
                .send(MediaEvent::Digit {
                    digit,
                    method,
                    at: Instant::now(),
                })
                .is_err()
        {
            warn!("call gone; stopping RTP receiver");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::rfc4733_payload;
    use crate::media::rtp::RtpPacket;
    use crate::media::srtp::SrtpSender;

    fn engine(port_min: u16, timeout: Option<Duration>) -> MediaEngine {
        MediaEngine::start(settings(port_min, timeout)).unwrap()
    }

    fn settings(port_min: u16, timeout: Option<Duration>) -> MediaSettings {
        MediaSettings {
            rtp_ip: "127.0.0.1".parse().unwrap(),
            port_min,
            port_max: port_min + 20,
            symmetric_rtp: true,
            strict_rtp: true,
            rtp_probation: 4,
            rtp_timeout: timeout,
            inband_dtmf: true,
            pacing_threads: 1,
            pacer_nice: 0,
        }
    }

    fn params(remote: SocketAddr) -> StreamParams {
        StreamParams {
            codec: Codec::Pcmu,
            payload_type: 0,
            dtmf_payload_type: Some(101),
            ptime_ms: 20,
            remote: Some(remote),
            send: true,
            expect_rtp: true,
            protection: Protection::Plain,
        }
    }

    fn recv(sock: &StdUdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 1500];
        let n = sock
            .recv(&mut buf)
            .expect("an RTP packet within the timeout");
        buf[..n].to_vec()
    }

    /// A wait prompt whose wait is over ends at its next pause: the word being said
    /// finishes, the rest (and any prompt queued after it) is not played.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_at_pause_ends_the_prompt_between_words() {
        let peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let engine = engine(41100, None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = engine.open(params(peer.local_addr().unwrap()), tx).unwrap();
        // "Word" (0.5 s of tone), a 0.3 s pause, "word" (0.5 s): cut points in the pause.
        let tone =
            |n: usize, level: i16| (0..n).map(move |i| if i % 16 < 8 { level } else { -level });
        let pcm: Vec<i16> = tone(4000, 8000)
            .chain(std::iter::repeat_n(0, 2400))
            .chain(tone(4000, 2000))
            .collect();
        let prompt = Arc::new(Prompt::from_pcm("words", "en", pcm));
        assert_eq!(&prompt.pauses[..], &[4000 + 320]);
        let other = Arc::new(Prompt::from_pcm("next", "en", tone(800, 500).collect()));
        // The G.711 bytes of the second word and of the next prompt.
        let unheard = [
            g711::ulaw_encode(2000),
            g711::ulaw_encode(-2000),
            g711::ulaw_encode(500),
            g711::ulaw_encode(-500),
        ];
        let _ = recv(&peer);
        stream.play(9, vec![prompt.clone(), other]);
        // 0.1 s in, the wait is over.
        for _ in 0..5 {
            recv(&peer);
        }
        let asked = Instant::now();
        stream.stop_at_pause();
        let done = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap();
        assert_eq!(
            done,
            Some(MediaEvent::PlayDone {
                token: 9,
                interrupted: false
            })
        );
        // The cut is 0.54 s into the prompt, about 0.44 s after the ask; played out, the
        // prompts would have ended 1.3 s after it.
        let took = asked.elapsed();
        assert!(
            took > Duration::from_millis(250) && took < Duration::from_millis(900),
            "{took:?}"
        );
        // Nothing of the second word or the next prompt went out (what the socket holds
        // now, and 0.6 s more).
        let mut later = Vec::new();
        for _ in 0..60 {
            later.extend_from_slice(&recv(&peer)[12..]);
        }
        assert!(
            later.iter().any(|b| *b == g711::ulaw_encode(8000)),
            "the first word was not sent"
        );
        assert!(
            !later.iter().any(|b| unheard.contains(b)),
            "the prompt went on after the cut"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plays_prompt_then_silence_with_continuous_headers() {
        let peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let engine = engine(41000, None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = engine.open(params(peer.local_addr().unwrap()), tx).unwrap();
        // 400 samples of a recognisable ramp: 2.5 packets of prompt, then silence.
        let pcm: Vec<i16> = (0..400).map(|i| (i * 50) as i16).collect();
        let prompt = Arc::new(Prompt::from_pcm("ramp", "en", pcm));
        // Let a few silent packets through first, then play.
        let first = recv(&peer);
        stream.play(7, vec![prompt.clone()]);
        let mut packets = vec![first];
        for _ in 0..12 {
            packets.push(recv(&peer));
        }
        let parsed: Vec<RtpPacket> = packets
            .iter()
            .map(|p| match rtp::parse(p) {
                Received::Rtp(r) => r,
                other => panic!("not RTP: {other:?}"),
            })
            .collect();
        assert!(parsed[0].marker, "first packet carries the marker");
        for w in parsed.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
            assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160));
            assert_eq!(w[1].ssrc, w[0].ssrc);
            assert!(!w[1].marker);
            assert_eq!(w[1].payload.len(), 160);
        }
        // The prompt's bytes appear, in order, followed by mu-law silence.
        let all: Vec<u8> = parsed
            .iter()
            .flat_map(|p| p.payload.iter().copied())
            .collect();
        let start = all
            .windows(prompt.pcmu.len())
            .position(|w| w == &prompt.pcmu[..])
            .expect("the prompt is sent intact");
        assert!(
            all[start + prompt.pcmu.len()..]
                .iter()
                .all(|b| *b == g711::ULAW_SILENCE)
        );
        let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .unwrap();
        assert_eq!(
            ev,
            Some(MediaEvent::PlayDone {
                token: 7,
                interrupted: false
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_interrupts_and_latching_follows_the_caller() {
        let sdp_peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let real_peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        real_peer
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let engine = engine(41100, None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = engine
            .open(params(sdp_peer.local_addr().unwrap()), tx)
            .unwrap();
        let long = Arc::new(Prompt::from_pcm("long", "en", vec![1000; 80_000]));
        stream.play(1, vec![long]);
        stream.stop();
        let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .unwrap();
        assert_eq!(
            ev,
            Some(MediaEvent::PlayDone {
                token: 1,
                interrupted: true
            })
        );
        // The caller's RTP comes from another address than its SDP said (NAT): we follow it,
        // once it has passed probation (4 packets in sequence), and not before.
        let mut caller = RtpSender::new_random();
        send_audio(&real_peer, &mut caller, stream.local_addr(), 1);
        real_peer
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 1500];
        assert!(
            real_peer.recv(&mut buf).is_err(),
            "latched to a source still in probation"
        );
        real_peer
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        send_audio(&real_peer, &mut caller, stream.local_addr(), 3);
        let got = recv(&real_peer);
        assert!(matches!(rtp::parse(&got), Received::Rtp(_)));
    }

    /// `count` 20 ms PCMU packets of silence, in sequence.
    fn send_audio(sock: &StdUdpSocket, sender: &mut RtpSender, to: SocketAddr, count: usize) {
        for _ in 0..count {
            let mut pkt = [g711::ULAW_SILENCE; HEADER_LEN + 160];
            sender.write_header(&mut pkt, 0, 160);
            sock.send_to(&pkt, to).unwrap();
        }
    }

    /// One key press as RFC 4733 packets on `sender`'s stream: start, then the end three
    /// times, all on the press's timestamp, sequence numbers running on.
    fn send_press(sock: &StdUdpSocket, sender: &mut RtpSender, to: SocketAddr, key: char) {
        let digit = Digit::from_char(key).unwrap();
        let ts = sender.timestamp;
        for (end, dur) in [(false, 160), (true, 480), (true, 480), (true, 480)] {
            let mut pkt = [0u8; HEADER_LEN + 4];
            sender.timestamp = ts;
            sender.write_header(&mut pkt, 101, 0);
            pkt[HEADER_LEN..].copy_from_slice(&rfc4733_payload(digit, end, 10, dur));
            sock.send_to(&pkt, to).unwrap();
        }
        sender.timestamp = ts.wrapping_add(800);
    }

    async fn next_event(rx: &mut mpsc::UnboundedReceiver<MediaEvent>) -> MediaEvent {
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a media event within 2 s")
            .expect("the stream is open")
    }

    fn digit_of(ev: &MediaEvent) -> Option<char> {
        match ev {
            MediaEvent::Digit { digit, .. } => Some(digit.as_char()),
            _ => None,
        }
    }

    /// Packets the pacer sent to `sock` within `window` (0 if it sends elsewhere).
    fn count_received(sock: &StdUdpSocket, window: Duration) -> usize {
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let deadline = Instant::now() + window;
        let mut buf = [0u8; 1500];
        let mut n = 0;
        while Instant::now() < deadline {
            if sock.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Discards whatever is queued on `sock`.
    fn drain(sock: &StdUdpSocket) {
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1500];
        while sock.recv(&mut buf).is_ok() {}
        sock.set_nonblocking(false).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strict_rtp_ignores_a_second_source() {
        let caller = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        // Another port on another loopback host: nothing about it matches the caller.
        let intruder = StdUdpSocket::bind("127.0.0.2:0").unwrap();
        let engine = engine(41400, Some(Duration::from_millis(800)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = engine
            .open(params(caller.local_addr().unwrap()), tx)
            .unwrap();
        let to = stream.local_addr();
        // The caller's first packet, from its SDP address, is learned at once.
        let mut real = RtpSender::new_random();
        send_audio(&caller, &mut real, to, 1);
        // The intruder sends a stream good enough to pass probation many times over, a key
        // press, and a lone end packet and garbage with the telephone-event payload type.
        let mut fake = RtpSender::new_random();
        send_audio(&intruder, &mut fake, to, 10);
        send_press(&intruder, &mut fake, to, '9');
        let mut lone_end = [0u8; HEADER_LEN + 4];
        RtpSender::new_random().write_header(&mut lone_end, 101, 0);
        lone_end[HEADER_LEN..].copy_from_slice(&rfc4733_payload(
            Digit::from_char('8').unwrap(),
            true,
            10,
            800,
        ));
        intruder.send_to(&lone_end, to).unwrap();
        let mut garbage = [0x5a; HEADER_LEN + 4];
        garbage[..2].copy_from_slice(&[0x80, 101]);
        intruder.send_to(&garbage, to).unwrap();
        // Then the caller presses 5: the first digit the call hears.
        send_press(&caller, &mut real, to, '5');
        let ev = next_event(&mut rx).await;
        assert_eq!(digit_of(&ev), Some('5'), "{ev:?}");
        // Prompts keep going to the caller; the intruder gets nothing.
        assert!(count_received(&caller, Duration::from_millis(200)) >= 5);
        assert_eq!(count_received(&intruder, Duration::from_millis(100)), 0);
        let stats = engine.stats();
        assert_eq!(stats.foreign_packets.load(Ordering::Relaxed), 16);
        assert_eq!(stats.packets_received.load(Ordering::Relaxed), 5);
        // The intruder's packets do not keep the call alive either: the caller went quiet,
        // so the RTP timeout fires while the intruder still sends.
        let flood = std::thread::spawn(move || {
            for _ in 0..60 {
                send_audio(&intruder, &mut fake, to, 1);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert_eq!(next_event(&mut rx).await, MediaEvent::RtpTimeout);
        flood.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_sdp_address_starts_learning_again_and_the_same_one_does_not() {
        let sdp_a = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let natted = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let moved = StdUdpSocket::bind("127.0.0.2:0").unwrap();
        let engine = engine(41500, None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut p = params(sdp_a.local_addr().unwrap());
        let stream = engine.open(p, tx).unwrap();
        let to = stream.local_addr();
        // The caller's RTP comes from behind NAT, not from its SDP address: learned after
        // probation; the pacer follows it.
        let mut nat = RtpSender::new_random();
        send_audio(&natted, &mut nat, to, 4);
        assert!(count_received(&natted, Duration::from_millis(200)) >= 5);
        // Hold and resume at the same address keep the learned source: a lone press under a
        // new SSRC (no probation possible) still types.
        p.send = false;
        p.expect_rtp = false;
        stream.update(p);
        p.send = true;
        p.expect_rtp = true;
        stream.update(p);
        let mut burst = RtpSender::new_random();
        send_press(&natted, &mut burst, to, '1');
        assert_eq!(digit_of(&next_event(&mut rx).await), Some('1'));
        // A re-INVITE moves the media: the old source is forgotten at once (the pacer
        // sends to the new SDP address even before it sends anything), and the new address
        // is learned from its first packet.
        p.remote = Some(moved.local_addr().unwrap());
        stream.update(p);
        // What the pacer sent the old source before the update may still be queued there.
        std::thread::sleep(Duration::from_millis(5));
        drain(&natted);
        assert!(count_received(&moved, Duration::from_millis(200)) >= 5);
        assert_eq!(count_received(&natted, Duration::from_millis(60)), 0);
        let mut new_stream = RtpSender::new_random();
        send_press(&moved, &mut new_stream, to, '2');
        assert_eq!(digit_of(&next_event(&mut rx).await), Some('2'));
        // The old source is foreign now.
        send_press(&natted, &mut nat, to, '3');
        send_press(&moved, &mut new_stream, to, '4');
        assert_eq!(digit_of(&next_event(&mut rx).await), Some('4'));
        assert_eq!(engine.stats().foreign_packets.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_strict_rtp_any_source_takes_over() {
        let caller = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let other = StdUdpSocket::bind("127.0.0.2:0").unwrap();
        let engine = MediaEngine::start(MediaSettings {
            strict_rtp: false,
            ..settings(41600, None)
        })
        .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = engine
            .open(params(caller.local_addr().unwrap()), tx)
            .unwrap();
        let to = stream.local_addr();
        send_audio(&caller, &mut RtpSender::new_random(), to, 1);
        send_press(&other, &mut RtpSender::new_random(), to, '9');
        assert_eq!(digit_of(&next_event(&mut rx).await), Some('9'));
        assert!(count_received(&other, Duration::from_millis(200)) >= 5);
        assert_eq!(engine.stats().foreign_packets.load(Ordering::Relaxed), 0);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn srtp_keys(suite: srtp::Suite) -> SrtpKeys {
        SrtpKeys {
            suite,
            send: srtp::MasterKey::random(),
            recv: srtp::MasterKey::random(),
        }
    }

    /// One key press (start, then the end three times) as plain RTP packets.
    fn press_packets(sender: &mut RtpSender, key: char) -> Vec<Vec<u8>> {
        let digit = Digit::from_char(key).unwrap();
        let ts = sender.timestamp;
        let packets = [(false, 160), (true, 480), (true, 480), (true, 480)]
            .into_iter()
            .map(|(end, dur)| {
                let mut pkt = vec![0u8; HEADER_LEN + 4];
                sender.timestamp = ts;
                sender.write_header(&mut pkt, 101, 0);
                pkt[HEADER_LEN..].copy_from_slice(&rfc4733_payload(digit, end, 10, dur));
                pkt
            })
            .collect();
        sender.timestamp = ts.wrapping_add(800);
        packets
    }

    /// `packets` protected by `tx`, as they go on the wire.
    fn protected(tx: &mut SrtpSender, packets: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        packets
            .into_iter()
            .map(|mut p| {
                let len = p.len();
                p.resize(len + srtp::MAX_TAG_LEN, 0);
                let n = tx.protect(&mut p, len).unwrap();
                p.truncate(n);
                p
            })
            .collect()
    }

    fn send_all(sock: &StdUdpSocket, packets: &[Vec<u8>], to: SocketAddr) {
        for p in packets {
            sock.send_to(p, to).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn srtp_prompt_decrypts_at_the_peer_with_the_negotiated_key() {
        for (port, suite) in [
            (42100, srtp::Suite::AesCm128HmacSha1_80),
            (42130, srtp::Suite::AesCm128HmacSha1_32),
        ] {
            let peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
            peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let engine = engine(port, None);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let keys = srtp_keys(suite);
            let stream = engine
                .open(
                    StreamParams {
                        protection: Protection::Srtp(keys),
                        ..params(peer.local_addr().unwrap())
                    },
                    tx,
                )
                .unwrap();
            let pcm: Vec<i16> = (0..400).map(|i| (i * 50) as i16).collect();
            let prompt = Arc::new(Prompt::from_pcm("ramp", "en", pcm));
            let first = recv(&peer);
            stream.play(7, vec![prompt.clone()]);
            let mut wire = vec![first];
            for _ in 0..12 {
                wire.push(recv(&peer));
            }
            // Only our key opens them; the receiver follows them in order.
            let mut wrong = SrtpReceiver::new(suite, &keys.recv);
            assert_eq!(wrong.unprotect(&mut wire[0].clone()), Err(SrtpError::Auth));
            let mut rx_ctx = SrtpReceiver::new(suite, &keys.send);
            let mut audio = Vec::new();
            let mut raw_audio = Vec::new();
            let mut last_seq = None;
            for p in &wire {
                assert_eq!(p.len(), HEADER_LEN + 160 + suite.tag_len());
                raw_audio.extend_from_slice(&p[HEADER_LEN..HEADER_LEN + 160]);
                let mut buf = p.clone();
                let n = rx_ctx.unprotect(&mut buf).expect("authentic");
                let Received::Rtp(pkt) = rtp::parse(&buf[..n]) else {
                    panic!("not RTP")
                };
                if let Some(prev) = last_seq {
                    assert_eq!(pkt.seq, u16::wrapping_add(prev, 1));
                }
                last_seq = Some(pkt.seq);
                audio.extend_from_slice(pkt.payload);
            }
            let find = |haystack: &[u8]| {
                haystack
                    .windows(prompt.pcmu.len())
                    .position(|w| w == &prompt.pcmu[..])
            };
            let start = find(&audio).expect("the prompt comes out intact");
            assert!(
                audio[start + prompt.pcmu.len()..]
                    .iter()
                    .all(|b| *b == g711::ULAW_SILENCE)
            );
            assert_eq!(
                find(&raw_audio),
                None,
                "the prompt crossed the wire readable"
            );
            assert!(!raw_audio.iter().all(|b| *b == g711::ULAW_SILENCE));
            assert_eq!(
                next_event(&mut rx).await,
                MediaEvent::PlayDone {
                    token: 7,
                    interrupted: false
                }
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn srtp_digits_are_collected_and_forged_or_replayed_packets_type_nothing() {
        let caller = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let engine = engine(42200, None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let suite = srtp::Suite::AesCm128HmacSha1_80;
        let keys = srtp_keys(suite);
        let stream = engine
            .open(
                StreamParams {
                    protection: Protection::Srtp(keys),
                    ..params(caller.local_addr().unwrap())
                },
                tx,
            )
            .unwrap();
        let to = stream.local_addr();
        let mut rtp_tx = RtpSender::new_random();
        let mut srtp_tx = SrtpSender::new(suite, &keys.recv);
        let five = protected(&mut srtp_tx, press_packets(&mut rtp_tx, '5'));
        send_all(&caller, &five, to);
        assert_eq!(digit_of(&next_event(&mut rx).await), Some('5'));
        // The same packets again: replays, dropped.
        send_all(&caller, &five, to);
        // A press under another key (a forgery), a tampered one, and plain RTP.
        let mut forger = SrtpSender::new(suite, &srtp::MasterKey::random());
        send_all(
            &caller,
            &protected(&mut forger, press_packets(&mut rtp_tx, '9')),
            to,
        );
        let mut tampered = protected(&mut srtp_tx, press_packets(&mut rtp_tx, '8'));
        for p in &mut tampered {
            p[HEADER_LEN] ^= 0x01;
        }
        send_all(&caller, &tampered, to);
        send_all(&caller, &press_packets(&mut rtp_tx, '7'), to);
        // The caller's next real press is the next digit the call hears.
        send_all(
            &caller,
            &protected(&mut srtp_tx, press_packets(&mut rtp_tx, '3')),
            to,
        );
        assert_eq!(digit_of(&next_event(&mut rx).await), Some('3'));
        let stats = engine.stats();
        // The digit is reported at the press's first end packet; the other end packets may
        // still be on their way (a loaded host).
        let deadline = Instant::now() + Duration::from_secs(2);
        while stats.packets_received.load(Ordering::Relaxed) < 8 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.srtp_replays.load(Ordering::Relaxed), 4);
        assert_eq!(stats.srtp_auth_failures.load(Ordering::Relaxed), 12);
        assert_eq!(stats.packets_received.load(Ordering::Relaxed), 8);
        assert_eq!(stats.foreign_packets.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unauthenticated_packets_teach_strict_rtp_nothing() {
        // The SDP names an address that stays silent; a stranger sends a stream good enough
        // for probation many times over, in plain RTP and under a wrong key.
        let sdp_addr = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = StdUdpSocket::bind("127.0.0.2:0").unwrap();
        let engine = engine(42300, None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let suite = srtp::Suite::AesCm128HmacSha1_32;
        let keys = srtp_keys(suite);
        let mut p = StreamParams {
            protection: Protection::AwaitingKeys,
            ..params(sdp_addr.local_addr().unwrap())
        };
        let stream = engine.open(p, tx).unwrap();
        let to = stream.local_addr();
        // Awaiting the peer's key (our SRTP offer is out): nothing goes out, nothing counts.
        assert_eq!(count_received(&sdp_addr, Duration::from_millis(150)), 0);
        let mut plain = RtpSender::new_random();
        send_audio(&stranger, &mut plain, to, 2);
        p.protection = Protection::Srtp(keys);
        stream.update(p);
        send_audio(&stranger, &mut plain, to, 10);
        let mut forger = SrtpSender::new(suite, &srtp::MasterKey::random());
        let mut rtp_tx = RtpSender::new_random();
        let forged: Vec<Vec<u8>> = (0..10)
            .map(|_| {
                let mut pkt = vec![g711::ULAW_SILENCE; HEADER_LEN + 160];
                rtp_tx.write_header(&mut pkt, 0, 160);
                pkt
            })
            .collect();
        send_all(&stranger, &protected(&mut forger, forged), to);
        send_all(&stranger, &press_packets(&mut rtp_tx, '1'), to);
        // Not RTP (a STUN binding request's first bytes) and RTCP are set aside, as in plain
        // RTP: not counted as failures.
        let mut rtcp = vec![0x80, 200, 0, 6];
        rtcp.resize(28 + 14, 0);
        send_all(
            &stranger,
            &[vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42], rtcp],
            to,
        );
        // The pacer still sends to the SDP's address, in SRTP under our key; the stranger hears
        // nothing and typed nothing.
        let mut buf = [0u8; 1500];
        sdp_addr
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let n = sdp_addr.recv(&mut buf).unwrap();
        let mut ctx = SrtpReceiver::new(suite, &keys.send);
        assert!(ctx.unprotect(&mut buf[..n]).is_ok());
        assert_eq!(count_received(&stranger, Duration::from_millis(150)), 0);
        let stats = engine.stats();
        assert_eq!(stats.srtp_auth_failures.load(Ordering::Relaxed), 26);
        assert_eq!(stats.packets_received.load(Ordering::Relaxed), 0);
        assert_eq!(stats.foreign_packets.load(Ordering::Relaxed), 0);
        assert!(rx.try_recv().is_err(), "no digit, no event");
    }

    #[test]
    fn source_filter_learns_the_sdp_address_at_once() {
        let sdp = addr("192.0.2.1:4000");
        let mut f = SourceFilter::new(true, 4, Some(sdp));
        assert_eq!(f.accept(sdp, 1, 100), Verdict::Learned);
        assert_eq!(f.learned(), Some(sdp));
        // Any SSRC and sequence from the learned address (a new SSRC per DTMF burst).
        assert_eq!(f.accept(sdp, 2, 7), Verdict::Accept);
        assert_eq!(f.accept(sdp, 1, 101), Verdict::Accept);
        // Anything else is foreign, however well-formed its stream.
        let other = addr("192.0.2.1:4002");
        for seq in 0..10 {
            assert_eq!(f.accept(other, 9, seq), Verdict::Foreign);
        }
        assert_eq!(
            f.accept(addr("198.51.100.7:4000"), 1, 102),
            Verdict::Foreign
        );
        // An IPv4-mapped source (dual-stack socket) is the IPv4 address the SDP named.
        let mut f = SourceFilter::new(true, 4, Some(sdp));
        assert_eq!(
            f.accept(addr("[::ffff:192.0.2.1]:4000"), 1, 1),
            Verdict::Learned
        );
    }

    #[test]
    fn source_filter_learns_another_address_after_probation() {
        let sdp = addr("10.0.0.5:4000");
        let nat = addr("203.0.113.9:31000");
        let mut f = SourceFilter::new(true, 4, Some(sdp));
        // Sequence numbers wrap like any others.
        assert_eq!(f.accept(nat, 7, 65534), Verdict::Probation);
        assert_eq!(f.accept(nat, 7, 65535), Verdict::Probation);
        assert_eq!(f.accept(nat, 7, 0), Verdict::Probation);
        assert_eq!(f.learned(), None);
        assert_eq!(f.accept(nat, 7, 1), Verdict::Learned);
        assert_eq!(f.learned(), Some(nat));
        assert_eq!(f.accept(nat, 8, 500), Verdict::Accept);
        // Once learned, even the SDP address is someone else.
        assert_eq!(f.accept(sdp, 7, 2), Verdict::Foreign);
        // Probation of 1: the first packet from anywhere.
        let mut f = SourceFilter::new(true, 1, Some(sdp));
        assert_eq!(f.accept(nat, 7, 9), Verdict::Learned);
        // No SDP address yet (late offer): probation for everyone.
        let mut f = SourceFilter::new(true, 2, None);
        assert_eq!(f.accept(sdp, 7, 9), Verdict::Probation);
        assert_eq!(f.accept(sdp, 7, 10), Verdict::Learned);
    }

    #[test]
    fn source_filter_probation_restarts_on_any_break() {
        let sdp = addr("10.0.0.5:4000");
        let a = addr("203.0.113.9:31000");
        let b = addr("203.0.113.9:31002");
        let mut f = SourceFilter::new(true, 4, Some(sdp));
        let run = |f: &mut SourceFilter, pkts: &[(SocketAddr, u32, u16)]| {
            pkts.iter()
                .map(|&(from, ssrc, seq)| f.accept(from, ssrc, seq))
                .collect::<Vec<_>>()
        };
        use Verdict::{Learned, Probation};
        // A gap, a duplicate, another SSRC, another address: each starts the count again
        // with that packet as the new candidate.
        assert_eq!(
            run(&mut f, &[(a, 1, 10), (a, 1, 11), (a, 1, 12), (a, 1, 14)]),
            [Probation; 4]
        );
        assert_eq!(
            run(&mut f, &[(a, 1, 15), (a, 1, 16), (a, 1, 16)]),
            [Probation; 3]
        );
        assert_eq!(
            run(&mut f, &[(a, 1, 17), (a, 1, 18), (a, 2, 19)]),
            [Probation; 3]
        );
        assert_eq!(
            run(&mut f, &[(a, 2, 20), (a, 2, 21), (b, 2, 22), (a, 2, 22)]),
            [Probation; 4]
        );
        assert_eq!(f.learned(), None);
        // Two senders interleaving never get through.
        for seq in 100..140u16 {
            let from = if seq % 2 == 0 { a } else { b };
            assert_eq!(f.accept(from, 3, seq), Probation);
        }
        // The candidate is the last packet that broke the run.
        assert_eq!(
            run(&mut f, &[(b, 3, 140), (b, 3, 141), (b, 3, 142)]),
            [Probation, Probation, Learned]
        );
        assert_eq!(f.learned(), Some(b));
    }

    #[test]
    fn source_filter_restart_forgets_the_source() {
        let a = addr("192.0.2.1:4000");
        let b = addr("192.0.2.99:5000");
        let mut f = SourceFilter::new(true, 4, Some(a));
        assert_eq!(f.accept(a, 1, 1), Verdict::Learned);
        f.restart(Some(b));
        assert_eq!(f.learned(), None);
        // The old address is a stranger again: probation, as for anyone.
        assert_eq!(f.accept(a, 1, 2), Verdict::Probation);
        assert_eq!(f.accept(b, 5, 9), Verdict::Learned);
        assert_eq!(f.accept(a, 1, 3), Verdict::Foreign);
    }

    #[test]
    fn without_strict_rtp_the_filter_follows_every_source() {
        let a = addr("192.0.2.1:4000");
        let b = addr("192.0.2.2:4000");
        let mut f = SourceFilter::new(false, 4, Some(a));
        assert_eq!(f.accept(b, 1, 1), Verdict::Learned);
        assert_eq!(f.accept(b, 1, 9), Verdict::Accept);
        assert_eq!(f.accept(a, 2, 1), Verdict::Learned);
        assert_eq!(f.learned(), Some(a));
    }

    #[test]
    fn only_a_new_sdp_address_is_a_move() {
        let a = addr("192.0.2.1:4000");
        let mut p = params(a);
        p.remote = None;
        let mut sdp = Sdp::new(p);
        // The answer names the first address.
        p.remote = Some(a);
        assert!(sdp.set(p));
        // Direction changes (hold, resume) and 0.0.0.0 hold keep it.
        p.send = false;
        assert!(!sdp.set(p));
        p.remote = None;
        assert!(!sdp.set(p));
        assert_eq!(sdp.params.remote, None);
        p.remote = Some(a);
        p.send = true;
        assert!(!sdp.set(p));
        // Another port is another address.
        p.remote = Some(addr("192.0.2.1:4002"));
        assert!(sdp.set(p));
        assert_eq!((sdp.moves, sdp.address), (2, p.remote));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rfc4733_digits_and_rtp_timeout_reach_the_call() {
        let peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let engine = engine(41200, Some(Duration::from_millis(600)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = engine.open(params(peer.local_addr().unwrap()), tx).unwrap();
        // One key press as telephone-event packets (end, duration), all on one timestamp.
        let press = |sender: &mut RtpSender, ts: u32, packets: &[(bool, u16)]| {
            for &(end, dur) in packets {
                let mut pkt = [0u8; HEADER_LEN + 4];
                sender.timestamp = ts;
                sender.write_header(&mut pkt, 101, 0);
                pkt[HEADER_LEN..].copy_from_slice(&rfc4733_payload(
                    Digit::from_char('5').unwrap(),
                    end,
                    10,
                    dur,
                ));
                peer.send_to(&pkt, stream.local_addr()).unwrap();
            }
        };
        let mut sender = RtpSender::new_random();
        let ts = sender.timestamp;
        // Start, continuation, end sent three times.
        press(
            &mut sender,
            ts,
            &[
                (false, 160),
                (false, 320),
                (true, 480),
                (true, 480),
                (true, 480),
            ],
        );
        let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match ev {
            MediaEvent::Digit { digit, method, .. } => {
                assert_eq!(digit.as_char(), '5');
                assert_eq!(method, DtmfMethod::Rfc4733);
            }
            other => panic!("expected a digit, got {other:?}"),
        }
        // A second burst under a new SSRC whose clock starts behind the first one's (SIPp's
        // play_dtmf does this) is a new press, not a late copy of the old one.
        let mut second = RtpSender::new_random();
        second.ssrc = sender.ssrc.wrapping_add(1);
        press(
            &mut second,
            ts.wrapping_sub(4000),
            &[(false, 160), (true, 320), (true, 320)],
        );
        let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(ev, MediaEvent::Digit { digit, .. } if digit.as_char() == '5'),
            "second burst: {ev:?}"
        );
        // Exactly one digit per burst, then silence from the caller ends in an RTP timeout.
        let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev, MediaEvent::RtpTimeout);
    }

    /// A hold pauses the RTP timeout even when the caller's last packet came before the hold
    /// (linphonec stops sending, then sends its re-INVITE): the receive task, asleep until a
    /// deadline set from that packet, must judge by the facts at the deadline, not those it
    /// went to sleep with. A resume that brings no RTP times out again, counted from the
    /// resume, neither at once nor never.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_pauses_the_rtp_timeout_and_a_resume_restarts_it() {
        let caller = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(400);
        let engine = engine(41700, Some(timeout));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut p = params(caller.local_addr().unwrap());
        let stream = engine.open(p, tx).unwrap();
        let mut sender = RtpSender::new_random();
        send_audio(&caller, &mut sender, stream.local_addr(), 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.expect_rtp = false;
        stream.update(p);
        let during_hold = tokio::time::timeout(timeout * 3, rx.recv()).await;
        assert!(
            during_hold.is_err(),
            "an event during the hold: {during_hold:?}"
        );
        p.expect_rtp = true;
        stream.update(p);
        let resumed = Instant::now();
        let ev = tokio::time::timeout(timeout * 5, rx.recv())
            .await
            .expect("no RTP timeout after a resume that brought no RTP")
            .unwrap();
        assert_eq!(ev, MediaEvent::RtpTimeout);
        assert!(
            resumed.elapsed() >= timeout - Duration::from_millis(50),
            "the RTP timeout fired {:?} after the resume: the hold's silence was counted",
            resumed.elapsed()
        );
    }

    #[test]
    fn phase_plan_splits_streams_evenly() {
        let mut plan = PhasePlan::default();
        // 20 ms streams fill the 20 phases one by one, then go round again.
        let phases: Vec<u64> = (0..25).map(|_| plan.join(20)).collect();
        assert_eq!(phases[..20], (0..20).collect::<Vec<u64>>()[..]);
        assert_eq!(phases[20..], [0, 1, 2, 3, 4]);
        // Three leave phase 7: the next joins go there first (ties go to the lowest phase).
        plan.leave(20, 7);
        assert_eq!(plan.join(20), 7);
        // A 30 ms stream takes the phase whose busiest tick is least busy: 5 of the 120 ticks
        // carry two 20 ms streams, so it avoids the phases that hit them.
        let p = plan.join(30);
        assert!(PhasePlan::slots(30, p).all(|i| plan.load[i] <= 2));
        assert_eq!(plan.load.iter().max(), Some(&2));
        assert_eq!(ticks_per_packet(20), 20);
        assert_eq!(ticks_per_packet(25), 20);
        assert_eq!(ticks_per_packet(5), 10);
        assert_eq!(ticks_per_packet(60), 40);
    }

    fn paced(id: u64, every: u64, tx: &mpsc::UnboundedSender<MediaEvent>) -> PacedStream {
        PacedStream::new(
            id,
            StdUdpSocket::bind("127.0.0.1:0").unwrap(),
            params("127.0.0.1:9".parse().unwrap()),
            Arc::new(Shared::new(params("127.0.0.1:9".parse().unwrap()))),
            false,
            every,
            tx.clone(),
        )
    }

    /// Slab slots due on `tick`, sorted.
    fn due_on(streams: &PacerStreams, tick: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = streams
            .due
            .iter()
            .flat_map(|(every, phases)| phases[(tick % every) as usize].iter())
            .map(|slot| streams.slab[*slot].as_ref().unwrap().id)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn pacer_streams_send_each_stream_once_per_ptime_across_add_remove_update() {
        let mut streams = PacerStreams::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        for id in 1..=40 {
            streams.add(paced(id, 20, &tx));
        }
        // Over any 20 consecutive ticks every stream is due exactly once, two per tick.
        let mut seen: Vec<u64> = (100..120).flat_map(|t| due_on(&streams, t)).collect();
        assert!((100..120).all(|t| due_on(&streams, t).len() == 2));
        seen.sort();
        assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
        // Removing frees the slot for the next stream and keeps the others where they were.
        let before = streams.get_mut(2).unwrap().phase;
        streams.remove(1);
        streams.remove(42);
        assert!(streams.get_mut(1).is_none());
        assert_eq!(streams.get_mut(2).unwrap().phase, before);
        streams.add(paced(41, 20, &tx));
        assert_eq!(streams.slab.len(), 40, "slot reused");
        let seen: Vec<u64> = (0..20).flat_map(|t| due_on(&streams, t)).collect();
        assert_eq!(seen.len(), 40);
        assert!(!seen.contains(&1) && seen.contains(&41));
        // ptime 20 -> 40 ms: the stream is due once per 40 ticks from then on.
        streams.set_every(3, 40);
        let s = streams.get_mut(3).unwrap();
        assert_eq!(s.every, 40);
        let times = (0..120)
            .filter(|t| due_on(&streams, *t).contains(&3))
            .count();
        assert_eq!(times, 3);
        let others = (0..120)
            .filter(|t| due_on(&streams, *t).contains(&4))
            .count();
        assert_eq!(others, 6);
    }

    #[test]
    fn jitter_histogram_buckets_by_upper_bound() {
        let h = JitterHistogram::default();
        for ns in [
            0, 50_000, 50_001, 1_999_999, 2_000_000, 2_000_001, 60_000_000,
        ] {
            h.record(ns);
        }
        let (cum, total) = h.cumulative();
        assert_eq!(total, 7);
        assert_eq!(cum[0], 2, "0 and exactly 50 µs are <= 50 µs");
        assert_eq!(cum[1], 3);
        assert_eq!(cum[5], 5, "<= 2 ms");
        assert_eq!(cum[8], 6, "<= 20 ms; 60 ms overflows");
    }

    #[test]
    fn port_pool_picks_unguessable_ports_and_rests_freed_ones() {
        let mut pool = PortPool::new(41400, 41599);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let firsts: HashSet<u16> = (0..8)
            .map(|_| {
                let (_s, p) = pool.bind(ip).unwrap();
                pool.release(p);
                p
            })
            .collect();
        assert!(firsts.len() > 1, "the same port every time: {firsts:?}");
        // A freed port is not handed out again while 99 others are free.
        let (sock, p) = pool.bind(ip).unwrap();
        drop(sock);
        pool.release(p);
        for _ in 0..40 {
            let (s, q) = pool.bind(ip).unwrap();
            assert_ne!(q, p, "a just-freed port was reused");
            drop(s);
            pool.release(q);
        }
    }

    #[test]
    fn port_pool_names_a_socket_failure_for_what_it_is() {
        // 192.0.2.1 is on no host: that is an address problem, not "no free RTP port".
        let mut pool = PortPool::new(41600, 41610);
        let err = pool.bind("192.0.2.1".parse().unwrap()).unwrap_err();
        assert!(matches!(err, MediaError::Io(_)), "{err}");
    }

    #[test]
    fn port_pool_skips_busy_ports_and_reports_exhaustion() {
        let busy = StdUdpSocket::bind("127.0.0.1:41300").unwrap();
        let mut pool = PortPool::new(41300, 41303);
        let (_a, pa) = pool.bind("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(pa, 41302, "41300 is taken by another socket");
        assert!(matches!(
            pool.bind("127.0.0.1".parse().unwrap()),
            Err(MediaError::NoPort { .. })
        ));
        pool.release(pa);
        drop(busy);
    }
}

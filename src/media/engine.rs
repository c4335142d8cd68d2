//! The media engine: RTP for every call, paced from a shared clock.
//!
//! Sending: a few pacing threads (default one) each own a share of the streams and wake on a
//! fixed 10 ms grid of absolute deadlines ([`super::clock`]). On each tick a thread writes one
//! packet for every stream that is due (every 2 ticks for 20 ms ptime), from the stream's
//! prompt queue or silence, into one stack buffer, and sends it with a plain `sendto` on the
//! stream's socket. No task or timer per call, no allocation per packet, every stream of a
//! thread phase-locked to one clock, and the streams spread evenly over the phases, so a
//! thousand 20 ms calls cost five hundred `sendto`s per tick and nothing else.
//!
//! Why not `sendmmsg`: it batches datagrams of one socket, and every call has its own socket
//! (its own RTP port, which symmetric-RTP peers and NATs expect packets to come from), so there
//! is one datagram per socket per tick. The benchmark's floor shows the `sendto` itself, with
//! the loopback delivery it includes, is most of the cost.
//!
//! Receiving: one small tokio task per stream waits on its socket (epoll does the waiting),
//! latches the caller's address for symmetric RTP, turns RFC 4733 events and in-band tones
//! into digits, and watches for RTP silence (the RTP timeout). Events go to the call task.
//!
//! The call talks to its stream through a [`StreamHandle`]: play, stop, update after SDP
//! changes; dropping the handle closes the stream and frees its port.

use super::clock;
use super::dtmf::{Digit, DtmfMethod, InbandDetector, Rfc4733Receiver};
use super::g711;
use super::prompt::Prompt;
use super::rtp::{self, HEADER_LEN, Received, RtpSender};
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
use tracing::{debug, warn};

/// The pacing grid. 10 ms serves every ptime we negotiate (10, 20, 30, 40 ms).
const TICK: Duration = Duration::from_millis(10);
/// Largest payload we send: 40 ms of G.711.
const MAX_PAYLOAD: usize = 320;

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
    pub rtp_timeout: Option<Duration>,
    pub inband_dtmf: bool,
    pub pacing_threads: usize,
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
    /// False while the caller sends nothing on purpose (hold): pauses the RTP timeout.
    pub expect_rtp: bool,
}

/// Counters for metrics and the benchmark (relaxed atomics: read rarely, written hot).
#[derive(Debug, Default)]
pub struct MediaStats {
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub send_errors: AtomicU64,
    /// Ticks that started more than half a tick late.
    pub late_ticks: AtomicU64,
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
    Update {
        id: u64,
        params: StreamParams,
    },
    Remove {
        id: u64,
    },
}

/// State shared between the receive task (writer) and the pacer (reader).
#[derive(Debug, Default)]
struct Shared {
    /// Where the caller's RTP comes from (symmetric RTP / NAT latching).
    latched: Mutex<Option<SocketAddr>>,
    /// Bumped on every (re-)latch, so the pacer re-reads `latched` only when it changed
    /// instead of taking the lock for every packet.
    latch_generation: AtomicU64,
}

struct PacedStream {
    id: u64,
    socket: StdUdpSocket,
    params: StreamParams,
    rtp: RtpSender,
    shared: Arc<Shared>,
    symmetric: bool,
    /// The pacer's copy of `shared.latched`, as of `seen_generation`.
    latched: Option<SocketAddr>,
    seen_generation: u64,
    /// Ticks between packets (ptime / 10 ms), the tick of the next packet, and which of the
    /// `every` phases (tick % every) this stream sends on.
    every: u64,
    next_tick: u64,
    phase: u64,
    /// When the previous packet went out (clock ns) and on which tick, for the jitter figures.
    last_sent_ns: u64,
    last_sent_tick: u64,
    queue: VecDeque<Arc<Prompt>>,
    pos: usize,
    token: Option<u64>,
    events: mpsc::UnboundedSender<MediaEvent>,
}

impl PacedStream {
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
            let take = (audio.len() - self.pos.min(audio.len())).min(payload.len() - filled);
            payload[filled..filled + take].copy_from_slice(&audio[self.pos..self.pos + take]);
            filled += take;
            self.pos += take;
            if self.pos >= audio.len() {
                self.queue.pop_front();
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
            std::thread::Builder::new()
                .name(format!("ivrd-rtp-{n}"))
                .spawn(move || pacer_loop(rx, stats, stopping))?;
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

    /// Opens a stream on a free port. Sending starts once `update` gives it a destination;
    /// until then the pacer only keeps its clock.
    pub fn open(
        &self,
        params: StreamParams,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<StreamHandle, MediaError> {
        let s = &self.inner.settings;
        let (socket, port) = self.inner.ports.lock().expect("port lock").bind(s.rtp_ip)?;
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
        let shared = Arc::new(Shared::default());
        let recv_params = Arc::new(Mutex::new(params));
        let recv = tokio::spawn(recv_loop(
            recv_socket,
            shared.clone(),
            recv_params.clone(),
            events.clone(),
            self.inner.settings.clone(),
            self.inner.stats.clone(),
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
        let stream = PacedStream {
            id,
            socket,
            params,
            rtp: RtpSender::new_random(),
            shared,
            symmetric: s.symmetric_rtp,
            latched: None,
            seen_generation: 0,
            every: ticks_per_packet(params.ptime_ms),
            next_tick: 0,
            phase: 0,
            last_sent_ns: 0,
            last_sent_tick: 0,
            queue: VecDeque::new(),
            pos: 0,
            token: None,
            events,
        };
        let _ = pacer.commands.send(PacerCmd::Add(Box::new(stream)));
        self.inner
            .stats
            .active_streams
            .fetch_add(1, Ordering::Relaxed);
        Ok(StreamHandle {
            id,
            pacer: pacer_idx,
            local: SocketAddr::new(s.rtp_ip, port),
            port,
            recv_params,
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
    recv_params: Arc<Mutex<StreamParams>>,
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

    /// New SDP facts (answer, re-INVITE, hold).
    pub fn update(&self, params: StreamParams) {
        *self.recv_params.lock().expect("params lock") = params;
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

/// RTP ports: even ports in the range, handed out round-robin so a port freed by one call is
/// not reused at once (late packets of the old call would land in the new one).
struct PortPool {
    min: u16,
    max: u16,
    cursor: u16,
    in_use: HashSet<u16>,
}

impl PortPool {
    fn new(min: u16, max: u16) -> PortPool {
        let min = min + (min % 2);
        PortPool {
            min,
            max,
            cursor: min,
            in_use: HashSet::new(),
        }
    }

    fn bind(&mut self, ip: IpAddr) -> Result<(StdUdpSocket, u16), MediaError> {
        let slots = (u32::from(self.max - self.min) / 2 + 1) as usize;
        for _ in 0..slots {
            let port = self.cursor;
            self.cursor = if u32::from(self.cursor) + 2 > u32::from(self.max) {
                self.min
            } else {
                self.cursor + 2
            };
            if self.in_use.contains(&port) {
                continue;
            }
            // Another process may hold the port: skip it and try the next.
            if let Ok(sock) = StdUdpSocket::bind(SocketAddr::new(ip, port)) {
                sock.set_nonblocking(true)?;
                self.in_use.insert(port);
                return Ok((sock, port));
            }
        }
        Err(MediaError::NoPort {
            min: self.min,
            max: self.max,
        })
    }

    fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

/// Ticks between packets for a ptime (10 ms grid; at least every tick).
fn ticks_per_packet(ptime_ms: u32) -> u64 {
    u64::from(ptime_ms / 10).clamp(1, PHASE_SLOTS as u64)
}

/// Ticks in the phase plan: a multiple of every `ticks_per_packet` we negotiate (1, 2, 3, 4).
const PHASE_SLOTS: usize = 12;

/// How many streams send on each tick of a 12-tick cycle. A new stream takes the phase whose
/// busiest tick is the least busy, so a 20 ms stream joins whichever half of the calls is
/// smaller: the work per tick stays even (half the calls each), instead of depending on
/// which tick each call happened to start on. Pure bookkeeping, tested below.
#[derive(Debug, Default)]
struct PhasePlan {
    load: [usize; PHASE_SLOTS],
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

/// The first tick after `tick` that falls on `phase` (mod `every`).
fn next_on_phase(tick: u64, every: u64, phase: u64) -> u64 {
    let t = tick + 1;
    t + (phase + every - t % every) % every
}

/// The streams of one pacing thread, in a Vec so a tick walks memory in order; the map only
/// finds a stream for a command.
#[derive(Default)]
struct PacerStreams {
    list: Vec<PacedStream>,
    index: HashMap<u64, usize>,
    phases: PhasePlan,
}

impl PacerStreams {
    fn get_mut(&mut self, id: u64) -> Option<&mut PacedStream> {
        let i = *self.index.get(&id)?;
        self.list.get_mut(i)
    }

    fn add(&mut self, mut s: PacedStream, tick: u64) {
        s.phase = self.phases.join(s.every);
        s.next_tick = next_on_phase(tick, s.every, s.phase);
        self.index.insert(s.id, self.list.len());
        self.list.push(s);
    }

    fn set_every(&mut self, id: u64, every: u64, tick: u64) {
        let Some(&i) = self.index.get(&id) else {
            return;
        };
        let s = &mut self.list[i];
        if s.every == every {
            return;
        }
        self.phases.leave(s.every, s.phase);
        s.every = every;
        s.phase = self.phases.join(every);
        s.next_tick = next_on_phase(tick, every, s.phase);
    }

    fn remove(&mut self, id: u64) {
        let Some(i) = self.index.remove(&id) else {
            return;
        };
        let s = self.list.swap_remove(i);
        self.phases.leave(s.every, s.phase);
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.id, i);
        }
    }
}

fn pacer_loop(
    commands: std_mpsc::Receiver<PacerCmd>,
    stats: Arc<MediaStats>,
    stopping: Arc<AtomicBool>,
) {
    clock::tighten_timer_slack();
    let tick_ns = TICK.as_nanos() as u64;
    let mut streams = PacerStreams::default();
    let start = clock::now_ns();
    let mut tick: u64 = 0;
    let mut buf = [0u8; HEADER_LEN + MAX_PAYLOAD];
    loop {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let deadline = start + tick_ns * tick;
        clock::sleep_until_ns(deadline);
        let late = clock::now_ns().saturating_sub(deadline);
        if late > tick_ns / 2 {
            stats.late_ticks.fetch_add(1, Ordering::Relaxed);
            // Far behind (suspended VM, overloaded host): skip to the present instead of
            // bursting the backlog; the RTP timestamps still advance per packet sent.
            if late > tick_ns * 5 {
                tick += late / tick_ns;
            }
        }
        stats.ticks.fetch_add(1, Ordering::Relaxed);
        loop {
            match commands.try_recv() {
                Ok(cmd) => apply(&mut streams, cmd, tick),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    if streams.list.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        for s in streams.list.iter_mut() {
            if s.next_tick > tick {
                continue;
            }
            s.next_tick = next_on_phase(tick, s.every, s.phase);
            let samples = (s.params.ptime_ms * 8) as usize;
            let Some(dest) = s.destination() else {
                continue;
            };
            if !s.params.send {
                continue;
            }
            let len = HEADER_LEN + samples.min(MAX_PAYLOAD);
            s.rtp
                .write_header(&mut buf, s.params.payload_type, samples as u32);
            s.fill(&mut buf[HEADER_LEN..len]);
            // One clock read per packet (vDSO, tens of ns against microseconds for sendto).
            let now = clock::now_ns();
            match s.socket.send_to(&buf[..len], dest) {
                Ok(_) => {
                    stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                    // Only back-to-back packets count: a gap (hold, no destination yet, a
                    // skipped backlog) is not jitter.
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
        tick += 1;
    }
}

fn apply(streams: &mut PacerStreams, cmd: PacerCmd, tick: u64) {
    match cmd {
        PacerCmd::Add(s) => streams.add(*s, tick),
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
        PacerCmd::Update { id, params } => {
            streams.set_every(id, ticks_per_packet(params.ptime_ms), tick);
            if let Some(s) = streams.get_mut(id) {
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

async fn recv_loop(
    socket: AsyncFd<StdUdpSocket>,
    shared: Arc<Shared>,
    params: Arc<Mutex<StreamParams>>,
    events: mpsc::UnboundedSender<MediaEvent>,
    settings: MediaSettings,
    stats: Arc<MediaStats>,
) {
    let mut buf = [0u8; 2048];
    let mut pcm = [0i16; 2048];
    let mut rfc4733 = Rfc4733Receiver::new();
    let mut inband = InbandDetector::new();
    let mut last_rx = tokio::time::Instant::now();
    let mut ssrc: Option<u32> = None;
    loop {
        let p = *params.lock().expect("params lock");
        let deadline = match settings.rtp_timeout {
            Some(t) if p.expect_rtp => last_rx + t,
            // Far future: the RTP timeout is off or paused (hold).
            _ => tokio::time::Instant::now() + Duration::from_secs(3600),
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
                if p.expect_rtp && settings.rtp_timeout.is_some() && last_rx + settings.rtp_timeout.unwrap_or_default() <= tokio::time::Instant::now() {
                    let _ = events.send(MediaEvent::RtpTimeout);
                    return;
                }
                continue;
            }
        };
        let Received::Rtp(pkt) = rtp::parse(&buf[..n]) else {
            continue;
        };
        last_rx = tokio::time::Instant::now();
        stats.packets_received.fetch_add(1, Ordering::Relaxed);
        if settings.symmetric_rtp {
            let mut latched = shared.latched.lock().expect("latch lock");
            if *latched != Some(from) {
                if latched.is_some() {
                    debug!(%from, "RTP source moved; re-latching");
                }
                *latched = Some(from);
                shared.latch_generation.fetch_add(1, Ordering::Release);
            }
        }
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

    fn engine(port_min: u16, timeout: Option<Duration>) -> MediaEngine {
        MediaEngine::start(MediaSettings {
            rtp_ip: "127.0.0.1".parse().unwrap(),
            port_min,
            port_max: port_min + 20,
            symmetric_rtp: true,
            rtp_timeout: timeout,
            inband_dtmf: true,
            pacing_threads: 1,
        })
        .unwrap()
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
        }
    }

    fn recv(sock: &StdUdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 1500];
        let n = sock
            .recv(&mut buf)
            .expect("an RTP packet within the timeout");
        buf[..n].to_vec()
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
        // The caller's RTP comes from another address than its SDP said (NAT): we follow it.
        let mut pkt = [0u8; HEADER_LEN + 160];
        RtpSender::new_random().write_header(&mut pkt, 0, 160);
        real_peer.send_to(&pkt, stream.local_addr()).unwrap();
        let got = recv(&real_peer);
        assert!(matches!(rtp::parse(&got), Received::Rtp(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rfc4733_digits_and_rtp_timeout_reach_the_call() {
        let peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let engine = engine(41200, Some(Duration::from_millis(600)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = engine.open(params(peer.local_addr().unwrap()), tx).unwrap();
        let mut sender = RtpSender::new_random();
        let ts = sender.timestamp;
        // One key press: start, continuation, end sent three times (same timestamp).
        for (end, dur) in [
            (false, 160),
            (false, 320),
            (true, 480),
            (true, 480),
            (true, 480),
        ] {
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
        for (end, dur) in [(false, 160), (true, 320), (true, 320)] {
            let mut pkt = [0u8; HEADER_LEN + 4];
            second.timestamp = ts.wrapping_sub(4000);
            second.write_header(&mut pkt, 101, 0);
            pkt[HEADER_LEN..].copy_from_slice(&rfc4733_payload(
                Digit::from_char('5').unwrap(),
                end,
                10,
                dur,
            ));
            peer.send_to(&pkt, stream.local_addr()).unwrap();
        }
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

    #[test]
    fn phase_plan_splits_streams_evenly_and_keeps_their_phase() {
        let mut plan = PhasePlan::default();
        // 20 ms streams alternate between the two halves.
        let phases: Vec<u64> = (0..6).map(|_| plan.join(2)).collect();
        assert_eq!(phases, [0, 1, 0, 1, 0, 1]);
        // Three leave phase 0: the next three all go there (ties go to the first phase).
        for _ in 0..3 {
            plan.leave(2, 0);
        }
        assert_eq!(
            [plan.join(2), plan.join(2), plan.join(2), plan.join(2)],
            [0, 0, 0, 0]
        );
        assert_eq!(plan.join(2), 1, "phase 0 now has one more");
        // A 30 ms stream takes the phase whose busiest tick is least busy: every 3-tick phase
        // covers two even and two odd ticks, so it lands where the odd half is and ties.
        assert_eq!(plan.join(3), 0);
        assert_eq!(plan.load.iter().max(), Some(&5));
        // next_on_phase keeps the stream on its phase, also after a skipped backlog.
        assert_eq!(next_on_phase(10, 2, 1), 11);
        assert_eq!(next_on_phase(11, 2, 1), 13);
        assert_eq!(next_on_phase(11, 3, 0), 12);
        assert_eq!(next_on_phase(12, 1, 0), 13);
    }

    #[test]
    fn pacer_streams_remove_keeps_the_index_consistent() {
        let mut streams = PacerStreams::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        for id in 1..=4 {
            let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
            streams.add(
                PacedStream {
                    id,
                    socket,
                    params: params("127.0.0.1:9".parse().unwrap()),
                    rtp: RtpSender::new_random(),
                    shared: Arc::new(Shared::default()),
                    symmetric: false,
                    latched: None,
                    seen_generation: 0,
                    every: 2,
                    next_tick: 0,
                    phase: 0,
                    last_sent_ns: 0,
                    last_sent_tick: 0,
                    queue: VecDeque::new(),
                    pos: 0,
                    token: None,
                    events: tx.clone(),
                },
                100,
            );
        }
        assert_eq!(streams.phases.load[0], 2);
        streams.remove(1);
        streams.remove(42);
        assert_eq!(streams.list.len(), 3);
        for id in 2..=4 {
            assert_eq!(streams.get_mut(id).map(|s| s.id), Some(id));
        }
        assert!(streams.get_mut(1).is_none());
        // ptime 20 -> 40 ms moves the stream to a phase of the 4-tick cycle.
        streams.set_every(3, 4, 200);
        let s = streams.get_mut(3).unwrap();
        assert_eq!((s.every, s.next_tick % 4), (4, s.phase));
        assert!(s.next_tick > 200 && s.next_tick <= 204);
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

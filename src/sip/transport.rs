//! SIP over UDP and TCP: the only part of the SIP stack that touches sockets.
//!
//! Every received message becomes an [`Incoming`] on one channel, tagged with the [`Flow`] it
//! came on, so the layers above can answer "the way it came" without knowing about sockets.
//! UDP answers go from the socket that received the request (peers and NATs expect the
//! source port to be the one they sent to); TCP answers go back on the same connection
//! (RFC 3261 18.2.2), which we keep open while the peer does.
//!
//! Malformed input never stops a listener: a datagram that does not parse is answered with
//! 400 (513 when over a size limit) when it has enough headers to route a response, otherwise
//! dropped with a debug log.
//!
//! The edge is held here, before anything is parsed: sources outside `[sip] trusted` are
//! dropped (or answered 403), and every TCP connection has bounds: a capped number per source
//! and in total, a write queue that closes the connection when the peer stops reading, an idle
//! timeout for connections that carry no dialog, and a deadline for each message to be
//! complete, so that neither silence nor one byte a second holds a descriptor for long.
//!
//! Requests and answers go back on the connection the peer opened (RFC 3261 18.2.2, RFC 5923
//! reuse). When that connection is gone (a PBX closes idle connections, Kamailio after
//! `tcp_connection_lifetime`) and a dialog needs to send, the transport opens one of its own
//! to the dialog's next hop ([`RequestTarget`]): TLS with the server's certificate checked
//! against `[tls] server_ca` or the system roots, presenting ours for mutual TLS. Responses
//! never open connections.

use super::message::{Message, ParseError, ResponseBuilder, frame_len, stateless_tag};
use super::peers::{PeerPolicy, Trust, UntrustedAction};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
    /// TCP with TLS (RFC 3261 26.2): the same framing and connection handling as TCP.
    Tls,
}

impl Protocol {
    pub fn via_name(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
        }
    }

    /// Reliable transports need no retransmissions (RFC 3261 17).
    pub fn reliable(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Tls)
    }

    /// Connection-oriented: answers and in-dialog requests go on the connection.
    pub fn stream(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Tls)
    }

    /// Whether what travels on it is encrypted (SDES keys in SDP may only travel this way).
    pub fn secure(self) -> bool {
        self == Protocol::Tls
    }
}

/// The path a message came on and answers go back on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub protocol: Protocol,
    /// Our listening address the message arrived at.
    pub local: SocketAddr,
    /// The peer's address (source of the message).
    pub remote: SocketAddr,
}

/// A parsed message and where it came from.
#[derive(Debug)]
pub struct Incoming {
    pub msg: Message,
    pub flow: Flow,
    /// When the kernel received it (UDP: the socket's receive timestamp, so time spent queued
    /// in the socket buffer counts; TCP: when its last byte was read). The core sheds new
    /// calls when requests have waited too long (overload control).
    pub arrived: Instant,
    /// How far the source is trusted (`[sip] trusted`); never `Denied` here, since those
    /// requests stop in the transport.
    pub trust: Trust,
}

/// Where a request goes: the address of the peer (for TCP/TLS, the connection with it), and
/// where to open a new connection when that one is gone: the dialog's next hop, whose port is
/// a listener (the connection's own port is the peer's ephemeral one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    pub addr: SocketAddr,
    pub reconnect: Option<SocketAddr>,
}

impl From<SocketAddr> for RequestTarget {
    fn from(addr: SocketAddr) -> Self {
        RequestTarget {
            addr,
            reconnect: None,
        }
    }
}

/// The limits that keep a TCP peer from holding more than its share (`[sip] tcp_*`).
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Connections in total; untrusted peers are refused beyond it, trusted ones are not.
    pub max_connections: usize,
    /// Connections from one untrusted address.
    pub max_per_source: usize,
    /// A connection that carries no dialog is closed after this long without traffic.
    pub idle: Duration,
    /// A message must be complete this long after its first byte, and a new connection must
    /// deliver its first message within it.
    pub message_timeout: Duration,
    /// Bytes waiting to be written to one peer; beyond this the connection is closed.
    pub write_queue: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1024,
            max_per_source: 16,
            idle: Duration::from_secs(120),
            message_timeout: Duration::from_secs(10),
            write_queue: 256 * 1024,
        }
    }
}

/// What the transports counted, for metrics (relaxed atomics).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Requests from sources outside `[sip] trusted`, dropped unanswered (TCP: connections).
    pub untrusted_dropped: AtomicU64,
    /// ... answered 403 (`untrusted = "reject"`).
    pub untrusted_rejected: AtomicU64,
    /// Messages over the size limits (`message::MAX_*`).
    pub too_large: AtomicU64,
    /// Messages that did not parse.
    pub malformed: AtomicU64,
    /// TCP connections open now.
    pub tcp_open: AtomicUsize,
    /// TCP connections refused at accept because of the caps.
    pub tcp_refused: AtomicU64,
    /// TCP connections closed: idle, too slow to deliver a message, peer not reading.
    pub tcp_closed_idle: AtomicU64,
    pub tcp_closed_slow: AtomicU64,
    pub tcp_closed_backlog: AtomicU64,
    /// TLS handshakes that failed or took too long.
    pub tls_handshake_failures: AtomicU64,
    /// Connections we opened to send a dialog's request (its own was gone), and those that
    /// failed (refused, timed out, server certificate not trusted).
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
}

/// The most bytes that may wait for an untrusted peer (a few of our answers are under 4 KiB).
const UNTRUSTED_WRITE_QUEUE: usize = 32 * 1024;

/// Sends bytes along flows; cheap to clone.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<Mutex<TransportTable>>,
    shared: Arc<Shared>,
}

struct Shared {
    policy: PeerPolicy,
    tcp: TcpLimits,
    /// The TLS configuration for new connections, accepted (certificate, key, client check)
    /// and opened (server check, our certificate); a reload swaps it, connections already up
    /// keep theirs.
    tls: std::sync::RwLock<Option<super::tls::TlsConfigs>>,
    /// Where messages read from connections we open go, and the shutdown they end with; set
    /// by [`bind`].
    incoming: std::sync::OnceLock<(mpsc::Sender<Incoming>, CancellationToken)>,
    /// Where a failed connect of ours is reported (our address, the peer's), so that the
    /// requests waiting for it fail at once (RFC 3261 17.1.4) rather than at Timer F.
    connect_failed: std::sync::OnceLock<mpsc::UnboundedSender<(SocketAddr, SocketAddr)>>,
    stats: TransportStats,
    /// Start of the clock the TCP activity stamps count from.
    epoch: Instant,
}

#[derive(Default)]
struct TransportTable {
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Open TCP connections by (local listener, peer).
    tcp: HashMap<(SocketAddr, SocketAddr), TcpConn>,
    /// Open TCP connections per untrusted address.
    tcp_per_source: HashMap<IpAddr, usize>,
}

struct TcpConn {
    tx: mpsc::UnboundedSender<Bytes>,
    state: Arc<ConnState>,
    /// Dialogs that use this connection: while any does, it is never closed as idle (our BYE
    /// or REFER will need it, RFC 5923-style reuse).
    pins: usize,
}

/// What a connection's reader, writer and senders share.
#[derive(Default)]
struct ConnState {
    /// Bytes that may wait for this peer: `tcp_write_queue` for a trusted peer, at most
    /// [`UNTRUSTED_WRITE_QUEUE`] for others, so that a thousand connections that never read
    /// hold tens of MiB between them, not hundreds.
    write_limit: usize,
    /// Bytes handed to the writer and not yet written.
    queued: AtomicUsize,
    /// Milliseconds since `Shared::epoch` of the last byte written.
    last_write_ms: AtomicU64,
    /// Cancelled to close the connection (its write queue overflowed).
    close: CancellationToken,
}

impl Transports {
    pub fn new(policy: PeerPolicy, tcp: TcpLimits) -> Transports {
        Transports {
            inner: Arc::default(),
            shared: Arc::new(Shared {
                policy,
                tcp,
                tls: std::sync::RwLock::new(None),
                incoming: std::sync::OnceLock::new(),
                connect_failed: std::sync::OnceLock::new(),
                stats: TransportStats::default(),
                epoch: Instant::now(),
            }),
        }
    }

    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// The TLS configuration new connections get (at start, and again on every reload).
    pub fn set_tls(&self, config: Option<super::tls::TlsConfigs>) {
        *self.shared.tls.write().expect("tls lock") = config;
    }

    fn tls_config(&self) -> Option<super::tls::TlsConfigs> {
        self.shared.tls.read().expect("tls lock").clone()
    }

    /// A handle to the counters that outlives this handle (for the metrics page).
    pub fn stats_handle(&self) -> TransportStatsHandle {
        TransportStatsHandle(self.shared.clone())
    }

    pub fn policy(&self) -> &PeerPolicy {
        &self.shared.policy
    }

    /// The address a request to `to` goes to, opening a connection first when it must: on
    /// TCP and TLS, the connection with `to.addr` if it is up, else one of our own to
    /// `to.reconnect` (queued at once, connected in the background; a failed connect drops
    /// what was queued, which the transaction layer sees as a timeout). UDP: `to.addr`.
    /// Failed connects of ours, as (our address, the peer's): the core fails the client
    /// transactions that were waiting for that connection. One receiver per `Transports`.
    pub fn watch_connect_failures(&self) -> mpsc::UnboundedReceiver<(SocketAddr, SocketAddr)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.shared.connect_failed.set(tx);
        rx
    }

    pub fn connect_for(&self, flow: &Flow, to: RequestTarget) -> SocketAddr {
        if !flow.protocol.stream() {
            return to.addr;
        }
        let mut table = self.inner.lock().expect("transport lock");
        if table.tcp.contains_key(&(flow.local, to.addr)) {
            return to.addr;
        }
        let Some(target) = to.reconnect else {
            return to.addr;
        };
        if table.tcp.contains_key(&(flow.local, target)) {
            return target;
        }
        let Some((incoming, shutdown)) = self.shared.incoming.get().cloned() else {
            return to.addr;
        };
        let trust = self.policy().classify(target.ip());
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ConnState {
            write_limit: self.shared.tcp.write_queue,
            ..ConnState::default()
        });
        state
            .last_write_ms
            .store(self.ms_since_epoch(), Ordering::Relaxed);
        table.tcp.insert(
            (flow.local, target),
            TcpConn {
                tx,
                state: state.clone(),
                pins: 0,
            },
        );
        drop(table);
        // Counted against the total like an accepted connection; never refused by the caps
        // (it serves a dialog we already carry, and there is one at most per dialog).
        self.stats().tcp_open.fetch_add(1, Ordering::Relaxed);
        self.stats().connects.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            slot: ConnSlot {
                transports: self.clone(),
                source: None,
            },
            local: flow.local,
            peer: target,
            // Messages on it are judged by where they come from, like any other; a target
            // outside `[sip] trusted` gets the untrusted bounds.
            trust: if trust == Trust::Denied {
                Trust::Untrusted
            } else {
                trust
            },
            incoming,
            transports: self.clone(),
            shutdown,
        };
        tokio::spawn(connect(flow.protocol, conn, Queue { rx, state }));
        target
    }

    /// Sends `data` to `to` over the flow's protocol and local address. For TCP the message
    /// goes on the connection with that peer (RFC 3261 18.2.2); if it is gone, the message is
    /// dropped (requests open a connection first with [`Transports::connect_for`]) and the
    /// transaction layer reports the missing answer as a timeout.
    pub fn send(&self, flow: &Flow, to: SocketAddr, data: Bytes) {
        match flow.protocol {
            Protocol::Udp => {
                let sock = self
                    .inner
                    .lock()
                    .expect("transport lock")
                    .udp
                    .get(&flow.local)
                    .cloned();
                let Some(sock) = sock else {
                    warn!(local = %flow.local, "no UDP socket for flow");
                    return;
                };
                // try_send_to: UDP sends do not block for long; a full buffer is a dropped
                // datagram either way, and the transaction layer retransmits.
                if let Err(e) = sock.try_send_to(&data, to) {
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        let sock = sock.clone();
                        tokio::spawn(async move {
                            let _ = sock.send_to(&data, to).await;
                        });
                    } else {
                        debug!(%to, error = %e, "UDP send failed");
                    }
                }
            }
            Protocol::Tcp | Protocol::Tls => {
                let conn = self
                    .inner
                    .lock()
                    .expect("transport lock")
                    .tcp
                    .get(&(flow.local, to))
                    .map(|c| (c.tx.clone(), c.state.clone()));
                let Some((tx, state)) = conn else {
                    debug!(%to, "no TCP connection to peer; dropping message");
                    return;
                };
                let queued = state.queued.fetch_add(data.len(), Ordering::Relaxed) + data.len();
                if queued > state.write_limit {
                    // A peer that does not read would otherwise grow this queue without end.
                    if !state.close.is_cancelled() {
                        self.shared
                            .stats
                            .tcp_closed_backlog
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %to, queued, "TCP peer is not reading; closing the connection");
                        state.close.cancel();
                    }
                    return;
                }
                let _ = tx.send(data);
            }
        }
    }

    /// A dialog starts (`true`) or stops (`false`) using `flow`: a TCP connection that carries
    /// a dialog is not closed for being idle. UDP flows need nothing.
    pub fn pin(&self, flow: &Flow, on: bool) {
        if !flow.protocol.stream() {
            return;
        }
        if let Some(c) = self
            .inner
            .lock()
            .expect("transport lock")
            .tcp
            .get_mut(&(flow.local, flow.remote))
        {
            c.pins = if on {
                c.pins + 1
            } else {
                c.pins.saturating_sub(1)
            };
        }
    }

    /// The UDP sockets we listen on, by address (for choosing a Via/Contact).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.inner
            .lock()
            .expect("transport lock")
            .udp
            .keys()
            .copied()
            .collect()
    }

    fn ms_since_epoch(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }
}

/// The transport counters, kept alive for the metrics page.
#[derive(Clone)]
pub struct TransportStatsHandle(Arc<Shared>);

impl std::ops::Deref for TransportStatsHandle {
    type Target = TransportStats;
    fn deref(&self) -> &TransportStats {
        &self.0.stats
    }
}

impl Default for TransportStatsHandle {
    fn default() -> Self {
        Transports::new(PeerPolicy::default(), TcpLimits::default()).stats_handle()
    }
}

/// Binds every listener; returns the transports handle and the actually bound addresses
/// (useful when a config says port 0).
pub async fn bind(
    transports: &Transports,
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
    tls: &[SocketAddr],
    incoming: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) -> std::io::Result<Vec<(Protocol, SocketAddr)>> {
    let _ = transports
        .shared
        .incoming
        .set((incoming.clone(), shutdown.clone()));
    let mut bound = Vec::new();
    // Each error names its address: "address in use" alone does not say which listener.
    let named = |proto: &str, addr: &SocketAddr| {
        let proto = proto.to_owned();
        let addr = *addr;
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{proto} {addr}: {e}"))
    };
    for addr in udp {
        let sock = Arc::new(bind_udp(*addr).map_err(named("UDP", addr))?);
        let local = sock.local_addr()?;
        transports
            .inner
            .lock()
            .expect("transport lock")
            .udp
            .insert(local, sock.clone());
        bound.push((Protocol::Udp, local));
        tokio::spawn(udp_loop(
            sock,
            local,
            incoming.clone(),
            transports.clone(),
            shutdown.clone(),
        ));
    }
    let streams = tcp
        .iter()
        .map(|a| (Protocol::Tcp, a))
        .chain(tls.iter().map(|a| (Protocol::Tls, a)));
    for (protocol, addr) in streams {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(named(protocol.via_name(), addr))?;
        let local = listener.local_addr()?;
        bound.push((protocol, local));
        tokio::spawn(tcp_accept_loop(
            listener,
            local,
            protocol,
            incoming.clone(),
            transports.clone(),
            shutdown.clone(),
        ));
    }
    for (p, a) in &bound {
        info!(protocol = p.via_name(), addr = %a, "SIP listening");
    }
    Ok(bound)
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    enable_receive_timestamps(&std_sock);
    let got = raise_receive_buffer(&std_sock, SIP_UDP_RCVBUF);
    if got < SIP_UDP_RCVBUF {
        info!(%addr, bytes = got, wanted = SIP_UDP_RCVBUF,
            "SIP UDP receive buffer capped by net.core.rmem_max; raise it for call-rate peaks");
    } else {
        debug!(%addr, bytes = got, "SIP UDP receive buffer");
    }
    UdpSocket::from_std(std_sock)
}

/// Receive buffer asked for on SIP UDP listeners. The kernel default (208 KiB on Debian) holds
/// only ~90 datagrams once each is charged its buffer overhead: measured at 1,500 calls/s,
/// a pause of a few milliseconds overflowed it and the dropped requests came back as
/// retransmissions 500 ms later. 4 MiB holds about 1,800, a third of a second of messages at
/// 2,000 calls/s; longer waits are overload control's business.
pub const SIP_UDP_RCVBUF: usize = 4 << 20;

/// Asks for `bytes` of receive buffer, beyond `net.core.rmem_max` when we may
/// (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN), else up to it; returns what the kernel granted.
pub fn raise_receive_buffer(sock: &std::net::UdpSocket, bytes: usize) -> usize {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if set_socket_option(fd, libc::SO_RCVBUFFORCE, want).is_err() {
        let _ = set_socket_option(fd, libc::SO_RCVBUF, want);
    }
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; `got` and `len` are valid for writes of their sizes.
    let ok = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
    };
    // Linux reports twice the value it was given (the other half is its bookkeeping
    // allowance), so halve it to compare with what we asked.
    if ok {
        usize::try_from(got).unwrap_or(0) / 2
    } else {
        0
    }
}

async fn udp_loop(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    incoming: mpsc::Sender<Incoming>,
    transports: Transports,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from, arrived) = tokio::select! {
            r = sock.async_io(tokio::io::Interest::READABLE, || recv_stamped(&sock, &mut buf)) => match r {
                Ok(v) => v,
                Err(e) => {
                    // ICMP port unreachable from an earlier send shows up here on some
                    // systems; it says nothing about this socket, so carry on.
                    debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let data = &buf[..n];
        // Keep-alives (CRLF, RFC 5626) and empty datagrams are not messages.
        if data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue;
        }
        let flow = Flow {
            protocol: Protocol::Udp,
            local,
            remote: from,
        };
        let trust = transports.policy().classify(from.ip());
        if trust == Trust::Denied {
            refuse_untrusted(data, &flow, &transports);
            continue;
        }
        deliver(
            Bytes::copy_from_slice(data),
            flow,
            arrived,
            trust,
            &incoming,
            &transports,
        )
        .await;
    }
}

/// Asks the kernel to stamp each datagram with its receive time (SO_TIMESTAMPNS). Without it
/// (it never fails on Linux) messages count as arriving when read, and overload control sees
/// only the time spent inside ivrd.
fn enable_receive_timestamps(sock: &impl std::os::fd::AsRawFd) {
    if let Err(e) = set_socket_option(sock.as_raw_fd(), libc::SO_TIMESTAMPNS, 1) {
        warn!(error = %e, "no receive timestamps on the SIP socket");
    }
}

/// `setsockopt(SOL_SOCKET, opt, value)` for the integer options above.
fn set_socket_option(
    fd: std::os::fd::RawFd,
    opt: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the caller passes an open socket; the value is a c_int that outlives the call,
    // and its size is given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One datagram, its source and when the kernel received it, as an `Instant`. `recvmsg` by
/// hand: std and tokio do not return control messages, and this is the only one we need.
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, std::time::Instant)> {
    use std::os::fd::AsRawFd;
    // SAFETY (whole function): every pointer handed to recvmsg points into locals or `buf`
    // that live across the call, with their true sizes; the kernel writes at most those
    // sizes. The CMSG_* macros walk only the control buffer the kernel filled, bounded by
    // the msg_controllen it set.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s for the alignment a cmsghdr needs; 64 bytes hold one timespec message.
    let mut control = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let now = std::time::Instant::now();
    let mut arrived = now;
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        let hdr = unsafe { &*c };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_TIMESTAMPNS {
            let ts: libc::timespec =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>()) };
            arrived = arrival_instant(now, std::time::SystemTime::now(), &ts);
        }
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    let from = sockaddr_to_std(&addr).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown address family")
    })?;
    Ok((n as usize, from, arrived))
}

/// The kernel stamps on CLOCK_REALTIME; calls measure on the monotonic clock. Maps the stamp
/// to an `Instant` by the wait it implies, clamped to 0..=60 s so that a clock step (NTP)
/// between the stamp and now cannot make a message look ancient or from the future.
fn arrival_instant(
    now: std::time::Instant,
    wall_now: std::time::SystemTime,
    stamp: &libc::timespec,
) -> std::time::Instant {
    let wall_ns = wall_now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let stamp_ns = stamp.tv_sec as i128 * 1_000_000_000 + stamp.tv_nsec as i128;
    let waited = (wall_ns - stamp_ns).clamp(0, 60_000_000_000) as u64;
    now.checked_sub(std::time::Duration::from_nanos(waited))
        .unwrap_or(now)
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A datagram from a source outside `[sip] trusted`: dropped unparsed, or with
/// `untrusted = "reject"` a request (not an ACK) gets a stateless 403.
fn refuse_untrusted(data: &[u8], flow: &Flow, transports: &Transports) {
    let stats = transports.stats();
    if transports.policy().untrusted == UntrustedAction::Drop {
        stats.untrusted_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    stats.untrusted_rejected.fetch_add(1, Ordering::Relaxed);
    let Ok(msg) = Message::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    if !msg.is_request() || msg.method() == &ezk_sip_types::Method::ACK {
        return;
    }
    let tag = stateless_tag(&msg);
    let resp = ResponseBuilder::new(&msg, 403, "Forbidden")
        .received_from(flow.remote)
        .to_tag(&tag)
        .build();
    // Straight back to the source: an untrusted Via decides nothing.
    transports.send(flow, flow.remote, resp);
}

/// Parses and forwards one message, or answers 400 if it is broken but answerable.
async fn deliver(
    data: Bytes,
    flow: Flow,
    arrived: Instant,
    trust: Trust,
    incoming: &mpsc::Sender<Incoming>,
    transports: &Transports,
) {
    match Message::parse(data.clone()) {
        Ok(msg) => {
            let inc = Incoming {
                msg,
                flow,
                arrived,
                trust,
            };
            if incoming.send(inc).await.is_err() {
                debug!("SIP core gone; dropping message");
            }
        }
        Err(err) => {
            let stats = transports.stats();
            if matches!(err, ParseError::TooLarge(_)) {
                stats.too_large.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
            debug!(from = %flow.remote, error = %err, "malformed SIP message");
            if let Some(resp) = bad_request_response(&data, &err) {
                transports.send(&flow, flow.remote, resp);
            }
        }
    }
}

/// Builds a 400 for a request that failed full parsing but still carries the headers a
/// response needs (RFC 3261 8.2: answer what you can, so the peer stops retransmitting).
/// Responses, ACKs and anything without Via/From/To/Call-ID/CSeq get no answer. A message
/// over a size limit gets 513 with only the top Via (the hop that sent it): echoing every one
/// of 1,000 Vias would hand the sender back what it flooded us with.
pub(crate) fn bad_request_response(data: &[u8], err: &ParseError) -> Option<Bytes> {
    let text = std::str::from_utf8(data).ok()?;
    let head = text.split("\r\n\r\n").next()?.split("\n\n").next()?;
    let mut lines = head.lines();
    let first = lines.next()?;
    if first.starts_with("SIP/") || first.starts_with("ACK ") {
        return None;
    }
    let code = err.status_code();
    let reason = match code {
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => "Bad Request",
    };
    let top_via_only = code == 513;
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    let mut have = [false; 5];
    let mut vias = 0;
    const NAMES: [(&str, &str, &str); 5] = [
        ("via", "v", "Via"),
        ("from", "f", "From"),
        ("to", "t", "To"),
        ("call-id", "i", "Call-ID"),
        ("cseq", "", "CSeq"),
    ];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        for (i, (long, short, canonical)) in NAMES.iter().enumerate() {
            if name.eq_ignore_ascii_case(long)
                || (!short.is_empty() && name.eq_ignore_ascii_case(short))
            {
                let mut value = value.trim();
                // Each header once, except Via (one per hop, up to the hops a message may
                // have): the answer stays the size of what came in, whatever came in.
                if i == 0 {
                    vias += 1;
                    if vias > super::message::MAX_VIAS || (top_via_only && have[0]) {
                        continue;
                    }
                    if top_via_only {
                        value = value.split(',').next().unwrap_or(value).trim();
                    }
                } else if have[i] {
                    continue;
                }
                if value.len() > 1024 {
                    return None;
                }
                have[i] = true;
                out.push_str(&format!("{canonical}: {value}\r\n"));
            }
        }
    }
    if !have.iter().all(|h| *h) {
        return None;
    }
    // The reason goes in a Warning-like header so admins can see why (no CR/LF inside).
    let reason: String = err
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    out.push_str(&format!(
        "Reason-Phrase-Detail: {reason}\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(Bytes::from(out))
}

async fn tcp_accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    protocol: Protocol,
    incoming: mpsc::Sender<Incoming>,
    transports: Transports,
    shutdown: CancellationToken,
) {
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning. The caps below keep
                    // ivrd under its descriptor limit, so this means something else holds them.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let trust = transports.policy().classify(peer.ip());
        let stats = transports.stats();
        if trust == Trust::Denied {
            // Accepted and closed at once, so the backlog never fills for trusted peers.
            stats.untrusted_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(slot) = ConnSlot::take(&transports, peer.ip(), trust) else {
            stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warn!(%peer, "TCP connection refused: over [sip] tcp_max_connections or tcp_max_per_source");
                last_refusal_log = Some(Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            slot,
            local,
            peer,
            trust,
            incoming: incoming.clone(),
            transports: transports.clone(),
            shutdown: shutdown.clone(),
        };
        if protocol == Protocol::Tls {
            tokio::spawn(tls_handshake(stream, conn));
        } else {
            tokio::spawn(stream_connection(stream, Protocol::Tcp, conn, None));
        }
    }
}

/// What a connection's task needs besides its stream.
struct Conn {
    slot: ConnSlot,
    local: SocketAddr,
    peer: SocketAddr,
    trust: Trust,
    incoming: mpsc::Sender<Incoming>,
    transports: Transports,
    shutdown: CancellationToken,
}

/// The TLS handshake, within the message timeout (a peer that opens a connection and stalls
/// the handshake holds a slot no longer than one that sends nothing), then SIP as on TCP.
async fn tls_handshake(stream: TcpStream, conn: Conn) {
    let Some(config) = conn.transports.tls_config() else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config.server);
    let limit = conn.transports.shared.tcp.message_timeout;
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => stream_connection(tls, Protocol::Tls, conn, None).await,
        Ok(Err(e)) => {
            conn.transports
                .stats()
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            info!(peer = %conn.peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            conn.transports
                .stats()
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            info!(peer = %conn.peer, "TLS handshake not completed in time; closing");
        }
    }
}

/// The write side of a connection registered before it exists (one we open): what was
/// queued meanwhile is written once it is up.
struct Queue {
    rx: mpsc::UnboundedReceiver<Bytes>,
    state: Arc<ConnState>,
}

/// Opens a connection for a dialog's request, within the message timeout for the TCP connect
/// and the TLS handshake together, from our listener's address (so the peer sees the host it
/// knows), then serves it like an accepted one.
async fn connect(protocol: Protocol, conn: Conn, queue: Queue) {
    let limit = conn.transports.shared.tcp.message_timeout;
    let (local, peer) = (conn.local, conn.peer);
    let opened = tokio::time::timeout(limit, async {
        let sock = if peer.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if local.is_ipv4() == peer.is_ipv4() && !local.ip().is_unspecified() {
            sock.bind(SocketAddr::new(local.ip(), 0))?;
        }
        let stream = sock.connect(peer).await?;
        let _ = stream.set_nodelay(true);
        Ok::<_, std::io::Error>(stream)
    })
    .await;
    let stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return connect_failed(&conn, &queue, &e.to_string()),
        Err(_) => return connect_failed(&conn, &queue, "timed out"),
    };
    if protocol != Protocol::Tls {
        info!(%peer, "opened a TCP connection for a dialog's request");
        return stream_connection(stream, protocol, conn, Some(queue)).await;
    }
    let Some(config) = conn.transports.tls_config() else {
        return connect_failed(&conn, &queue, "no [tls] configuration");
    };
    // The next hop is an address (only IP literals are routed to), so the server's
    // certificate must name that address (an IP SAN), as RFC 5922 7.2 allows.
    let name = rustls::pki_types::ServerName::IpAddress(peer.ip().into());
    let connector = tokio_rustls::TlsConnector::from(config.client);
    match tokio::time::timeout(limit, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => {
            info!(%peer, "opened a TLS connection for a dialog's request");
            stream_connection(tls, Protocol::Tls, conn, Some(queue)).await;
        }
        Ok(Err(e)) => {
            conn.transports
                .stats()
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            connect_failed(&conn, &queue, &format!("TLS: {e}"));
        }
        Err(_) => connect_failed(&conn, &queue, "TLS handshake timed out"),
    }
}

fn connect_failed(conn: &Conn, queue: &Queue, why: &str) {
    conn.transports
        .stats()
        .connect_failures
        .fetch_add(1, Ordering::Relaxed);
    warn!(peer = %conn.peer, error = why, "could not open a connection for a dialog's request; it fails");
    let mut table = conn.transports.inner.lock().expect("transport lock");
    // Only our entry: a connection the peer opened meanwhile stays.
    if table
        .tcp
        .get(&(conn.local, conn.peer))
        .is_some_and(|c| Arc::ptr_eq(&c.state, &queue.state))
    {
        table.tcp.remove(&(conn.local, conn.peer));
    }
    drop(table);
    if let Some(tx) = conn.transports.shared.connect_failed.get() {
        let _ = tx.send((conn.local, conn.peer));
    }
}

/// A connection's place under the caps, given back when dropped (however the connection ends).
struct ConnSlot {
    transports: Transports,
    /// The untrusted source it is counted against.
    source: Option<IpAddr>,
}

impl ConnSlot {
    /// Takes a slot: untrusted peers within both caps, trusted peers always (a PBX must get
    /// in even while a flood holds every untrusted slot).
    fn take(transports: &Transports, ip: IpAddr, trust: Trust) -> Option<ConnSlot> {
        let limits = transports.shared.tcp;
        let open = &transports.stats().tcp_open;
        let source = if trust.is_trusted() {
            None
        } else {
            let mut table = transports.inner.lock().expect("transport lock");
            let mine = table.tcp_per_source.entry(ip).or_insert(0);
            if *mine >= limits.max_per_source
                || open.load(Ordering::Relaxed) >= limits.max_connections
            {
                if *mine == 0 {
                    table.tcp_per_source.remove(&ip);
                }
                return None;
            }
            *mine += 1;
            Some(ip)
        };
        open.fetch_add(1, Ordering::Relaxed);
        Some(ConnSlot {
            transports: transports.clone(),
            source,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.transports
            .stats()
            .tcp_open
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.source {
            let mut table = self.transports.inner.lock().expect("transport lock");
            if let Some(n) = table.tcp_per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    table.tcp_per_source.remove(&ip);
                }
            }
        }
    }
}

/// Why a TCP connection was closed by us.
#[derive(Debug, PartialEq, Eq)]
enum Close {
    /// A message (or the first one) did not complete in time.
    Slow,
    /// No traffic for the idle time and no dialog on it.
    Idle,
}

/// One TCP or TLS connection: framing by Content-Length, the connection's bounds, and its
/// writer. `queue` is the write side of a connection we opened (registered before it was up);
/// an accepted one registers here.
async fn stream_connection<S>(stream: S, protocol: Protocol, conn: Conn, queue: Option<Queue>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        slot: _slot,
        local,
        peer,
        trust,
        incoming,
        transports,
        shutdown,
    } = conn;
    let limits = transports.shared.tcp;
    let (mut rd, mut wr) = tokio::io::split(stream);
    // A connection we opened carries what our request needs; the peer owes it no first
    // message (only the answer, which the transaction waits for).
    let opened = queue.is_some();
    let Queue { mut rx, state } = match queue {
        Some(q) => q,
        None => {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            let state = Arc::new(ConnState {
                write_limit: if trust.is_trusted() {
                    limits.write_queue
                } else {
                    limits.write_queue.min(UNTRUSTED_WRITE_QUEUE)
                },
                ..ConnState::default()
            });
            state
                .last_write_ms
                .store(transports.ms_since_epoch(), Ordering::Relaxed);
            transports.inner.lock().expect("transport lock").tcp.insert(
                (local, peer),
                TcpConn {
                    tx,
                    state: state.clone(),
                    pins: 0,
                },
            );
            Queue { rx, state }
        }
    };
    let writer = {
        let state = state.clone();
        let transports = transports.clone();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                // A peer that stops reading stalls this write; the queue behind it is what
                // `send` bounds, and the stall itself ends with the connection.
                let ok = wr.write_all(&data).await.is_ok();
                state.queued.fetch_sub(data.len(), Ordering::Relaxed);
                state
                    .last_write_ms
                    .store(transports.ms_since_epoch(), Ordering::Relaxed);
                if !ok {
                    state.close.cancel();
                    break;
                }
            }
        })
    };
    let flow = Flow {
        protocol,
        local,
        remote: peer,
    };
    let accepted = Instant::now();
    let mut last_read = accepted;
    let mut delivered_any = opened;
    // When the message now in `buf` began: it must be complete within the message timeout.
    let mut partial_since: Option<Instant> = None;
    let mut buf = BytesMut::with_capacity(8192);
    let closed: Option<Close> = 'conn: loop {
        let message_deadline = match (delivered_any, partial_since) {
            (_, Some(since)) => Some(since + limits.message_timeout),
            (false, None) => Some(accepted + limits.message_timeout),
            (true, None) => None,
        };
        let last_write = transports.shared.epoch
            + Duration::from_millis(state.last_write_ms.load(Ordering::Relaxed));
        let idle_deadline = last_read.max(last_write) + limits.idle;
        let wake = message_deadline.map_or(idle_deadline, |m| m.min(idle_deadline));
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => match r { Ok(n) => n, Err(_) => break None },
            _ = shutdown.cancelled() => break None,
            _ = state.close.cancelled() => break None,
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if message_deadline.is_some_and(|m| m <= now) {
                    break Some(Close::Slow);
                }
                if idle_deadline <= now {
                    let pinned = transports
                        .inner
                        .lock()
                        .expect("transport lock")
                        .tcp
                        .get(&(local, peer))
                        .is_some_and(|c| c.pins > 0);
                    if !pinned {
                        break Some(Close::Idle);
                    }
                    // A call is on it: the connection stays as long as the call does.
                    last_read = now;
                }
                continue;
            }
        };
        if n == 0 {
            break None;
        }
        last_read = Instant::now();
        loop {
            // Skip keep-alive CRLFs between messages (RFC 5626 4.4.1).
            while buf.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
                let _ = buf.split_to(1);
            }
            if buf.is_empty() {
                partial_since = None;
                break;
            }
            match frame_len(&buf) {
                Ok(Some(len)) => {
                    let frame = buf.split_to(len).freeze();
                    deliver(frame, flow, last_read, trust, &incoming, &transports).await;
                    delivered_any = true;
                    partial_since = None;
                }
                Ok(None) => {
                    partial_since.get_or_insert(last_read);
                    break;
                }
                Err(e) => {
                    if matches!(e, ParseError::TooLarge(_)) {
                        transports.stats().too_large.fetch_add(1, Ordering::Relaxed);
                    }
                    // Without a valid Content-Length we cannot find the next message, and a
                    // message over the limits is not buffered: the stream is unusable (RFC
                    // 3261 18.3), so close it.
                    warn!(%peer, error = %e, "unframeable TCP data; closing connection");
                    break 'conn None;
                }
            }
        }
    };
    match closed {
        Some(Close::Slow) => {
            transports
                .stats()
                .tcp_closed_slow
                .fetch_add(1, Ordering::Relaxed);
            info!(%peer, timeout_ms = limits.message_timeout.as_millis() as u64,
                "closing TCP connection: no complete SIP message in time");
        }
        Some(Close::Idle) => {
            transports
                .stats()
                .tcp_closed_idle
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "closing idle TCP connection");
        }
        None => {}
    }
    {
        let mut table = transports.inner.lock().expect("transport lock");
        if table
            .tcp
            .get(&(local, peer))
            .is_some_and(|c| Arc::ptr_eq(&c.state, &state))
        {
            table.tcp.remove(&(local, peer));
        }
    }
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_needs_routing_headers() {
        let req = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 99\r\n\r\n";
        let resp = bad_request_response(req, &ParseError::ShortBody { have: 0, want: 99 }).unwrap();
        let text = std::str::from_utf8(&resp).unwrap();
        assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"));
        assert!(text.contains("Call-ID: c1\r\n"));
        let no_callid = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCSeq: 1 INVITE\r\n\r\n";
        assert!(bad_request_response(no_callid, &ParseError::Missing("Call-ID")).is_none());
        let ack = b"ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n";
        assert!(bad_request_response(ack, &ParseError::Missing("x")).is_none());
    }

    /// The wait in the socket buffer counts: a datagram read 200 ms after it arrived is
    /// stamped 200 ms ago, which is what overload control needs to see.
    #[tokio::test]
    async fn receive_time_is_the_kernels_not_the_read() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable_receive_timestamps(&sock);
        // The kernel switches its receive stamping on through a deferred static key: a
        // datagram right after the first SO_TIMESTAMPNS of the host (or of a test run whose
        // other sockets just closed) may arrive unstamped and read as "now". Give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(b"OPTIONS", sock.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut buf = [0u8; 64];
        let (n, from, arrived) = sock
            .async_io(tokio::io::Interest::READABLE, || {
                recv_stamped(&sock, &mut buf)
            })
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"OPTIONS");
        assert_eq!(from, sender.local_addr().unwrap());
        let age = arrived.elapsed();
        assert!(
            age >= std::time::Duration::from_millis(190) && age < std::time::Duration::from_secs(5),
            "stamped {age:?} ago"
        );
    }

    #[test]
    fn a_stamp_from_a_stepped_clock_is_clamped() {
        let now = std::time::Instant::now();
        let wall = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let ts = |secs: i64| libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        };
        // From the future (the wall clock stepped back): it arrived now, not later.
        assert_eq!(arrival_instant(now, wall, &ts(1_000_100)), now);
        // A day old (stepped forward): at most 60 s of waiting is believed.
        let old = arrival_instant(now, wall, &ts(1_000_000 - 86_400));
        assert_eq!(now - old, std::time::Duration::from_secs(60));
        assert_eq!(
            now - arrival_instant(now, wall, &ts(999_999)),
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn receive_buffer_is_raised_as_far_as_the_kernel_allows() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let want = 1 << 20;
        let got = raise_receive_buffer(&sock, want);
        // Without CAP_NET_ADMIN the kernel caps the request at net.core.rmem_max.
        let sysctl = |name: &str| -> usize {
            let path = format!("/proc/sys/net/core/{name}");
            std::fs::read_to_string(path)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let (rmem_max, rmem_default) = (sysctl("rmem_max"), sysctl("rmem_default"));
        let privileged = unsafe { libc::geteuid() } == 0;
        let floor = if privileged { want } else { want.min(rmem_max) };
        assert!(
            got >= floor,
            "asked {want}, got {got} (rmem_max {rmem_max})"
        );
        // The default counts the bookkeeping half too: the usable part is half of it.
        assert!(
            got > rmem_default / 2,
            "not above the default: {got} vs {rmem_default}"
        );
    }
}

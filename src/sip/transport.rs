//! SIP over UDP and TCP: the only part of the SIP stack that touches sockets.
//!
//! Every received message becomes an [`Incoming`] on one channel, tagged with the [`Flow`] it
//! came on, so the layers above can answer "the way it came" without knowing about sockets.
//! UDP answers go from the socket that received the request (peers and NATs expect the
//! source port to be the one they sent to); TCP answers go back on the same connection
//! (RFC 3261 18.2.2), which we keep open while the peer does.
//!
//! Malformed input never stops a listener: a datagram that does not parse is answered with
//! 400 when it has enough headers to route a response, otherwise dropped with a debug log.

use super::message::{Message, ParseError, frame_len};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Largest SIP message we accept on TCP before calling the peer broken (a torture-test long
/// request is ~5 kB; real INVITEs with big SDP stay well under 16 kB).
const MAX_TCP_MESSAGE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub fn via_name(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
        }
    }

    /// Reliable transports need no retransmissions (RFC 3261 17).
    pub fn reliable(self) -> bool {
        matches!(self, Protocol::Tcp)
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
    pub arrived: std::time::Instant,
}

/// Sends bytes along flows; cheap to clone.
#[derive(Clone, Default)]
pub struct Transports {
    inner: Arc<Mutex<TransportTable>>,
}

#[derive(Default)]
struct TransportTable {
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Open TCP connections by (local listener, peer).
    tcp: HashMap<(SocketAddr, SocketAddr), mpsc::UnboundedSender<Bytes>>,
}

impl Transports {
    /// Sends `data` to `to` over the flow's protocol and local address. For TCP the message
    /// goes on the connection with that peer; if it is gone we open a new one (the peer's
    /// listening port is usually the same for requests it sent us over a connection it
    /// initiated only when it reuses connections, so this is best effort by design).
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
            Protocol::Tcp => {
                let existing = self
                    .inner
                    .lock()
                    .expect("transport lock")
                    .tcp
                    .get(&(flow.local, to))
                    .cloned();
                match existing {
                    Some(tx) if tx.send(data.clone()).is_ok() => {}
                    _ => {
                        debug!(%to, "no TCP connection to peer; dropping message");
                    }
                }
            }
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
}

/// Binds every listener; returns the transports handle and the actually bound addresses
/// (useful when a config says port 0).
pub async fn bind(
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
    incoming: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) -> std::io::Result<(Transports, Vec<(Protocol, SocketAddr)>)> {
    let transports = Transports::default();
    let mut bound = Vec::new();
    for addr in udp {
        let sock = Arc::new(bind_udp(*addr)?);
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
    for addr in tcp {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        bound.push((Protocol::Tcp, local));
        tokio::spawn(tcp_accept_loop(
            listener,
            local,
            incoming.clone(),
            transports.clone(),
            shutdown.clone(),
        ));
    }
    for (p, a) in &bound {
        info!(protocol = p.via_name(), addr = %a, "SIP listening");
    }
    Ok((transports, bound))
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
        deliver(
            Bytes::copy_from_slice(data),
            flow,
            arrived,
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

/// Parses and forwards one message, or answers 400 if it is broken but answerable.
async fn deliver(
    data: Bytes,
    flow: Flow,
    arrived: std::time::Instant,
    incoming: &mpsc::Sender<Incoming>,
    transports: &Transports,
) {
    match Message::parse(data.clone()) {
        Ok(msg) => {
            let inc = Incoming { msg, flow, arrived };
            if incoming.send(inc).await.is_err() {
                debug!("SIP core gone; dropping message");
            }
        }
        Err(err) => {
            debug!(from = %flow.remote, error = %err, "malformed SIP message");
            if let Some(resp) = bad_request_response(&data, &err) {
                transports.send(&flow, flow.remote, resp);
            }
        }
    }
}

/// Builds a 400 for a request that failed full parsing but still carries the headers a
/// response needs (RFC 3261 8.2: answer what you can, so the peer stops retransmitting).
/// Responses, ACKs and anything without Via/From/To/Call-ID/CSeq get no answer.
fn bad_request_response(data: &[u8], err: &ParseError) -> Option<Bytes> {
    let text = std::str::from_utf8(data).ok()?;
    let head = text.split("\r\n\r\n").next()?.split("\n\n").next()?;
    let mut lines = head.lines();
    let first = lines.next()?;
    if first.starts_with("SIP/") || first.starts_with("ACK ") {
        return None;
    }
    let code = err.status_code();
    let reason = if code == 505 {
        "Version Not Supported"
    } else {
        "Bad Request"
    };
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    let mut have = [false; 5];
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
                have[i] = true;
                out.push_str(&format!("{canonical}: {}\r\n", value.trim()));
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
    incoming: mpsc::Sender<Incoming>,
    transports: Transports,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(tcp_connection(
            stream,
            local,
            peer,
            incoming.clone(),
            transports.clone(),
            shutdown.clone(),
        ));
    }
}

async fn tcp_connection(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    incoming: mpsc::Sender<Incoming>,
    transports: Transports,
    shutdown: CancellationToken,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    transports
        .inner
        .lock()
        .expect("transport lock")
        .tcp
        .insert((local, peer), tx);
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    let flow = Flow {
        protocol: Protocol::Tcp,
        local,
        remote: peer,
    };
    let mut buf = BytesMut::with_capacity(8192);
    'conn: loop {
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => match r { Ok(n) => n, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        if n == 0 {
            break;
        }
        loop {
            // Skip keep-alive CRLFs between messages (RFC 5626 4.4.1).
            while buf.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
                let _ = buf.split_to(1);
            }
            if buf.is_empty() {
                break;
            }
            match frame_len(&buf) {
                Ok(Some(len)) => {
                    let frame = buf.split_to(len).freeze();
                    let arrived = std::time::Instant::now();
                    deliver(frame, flow, arrived, &incoming, &transports).await;
                }
                Ok(None) if buf.len() > MAX_TCP_MESSAGE => {
                    warn!(%peer, "TCP message too large; closing connection");
                    break 'conn;
                }
                Ok(None) => break,
                Err(e) => {
                    // Without a valid Content-Length we cannot find the next message: the
                    // stream is unusable (RFC 3261 18.3), so close it.
                    warn!(%peer, error = %e, "unframeable TCP data; closing connection");
                    break 'conn;
                }
            }
        }
    }
    transports
        .inner
        .lock()
        .expect("transport lock")
        .tcp
        .remove(&(local, peer));
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

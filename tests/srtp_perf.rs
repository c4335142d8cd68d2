//! What SRTP costs: no allocation per packet (checked on every `cargo test`), and time per packet
//! against plain RTP (two `#[ignore]`d measurements, run by hand):
//!
//! ```sh
//! cargo test --release --test srtp_perf -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `protect_cost_per_packet`: `protect()` over 100,000 packets of 172 bytes (20 ms of G.711)
//!   against writing the same packets in plain, and `unprotect()`.
//! - `pacer_cpu_per_packet_srtp_against_plain`: the media engine pacing N streams (1,000 and
//!   2,000) to a sink on loopback, plain and SRTP in turn: the pacer thread's CPU time per
//!   packet, packets lost, ticks given up. The `sendto` and its loopback delivery are most of
//!   the cost, as in the benchmark's workload 2 (see bench/README.md).

use ivrd::media::engine::{MediaEngine, MediaEvent, MediaSettings, Protection, StreamParams};
use ivrd::media::rtp::{HEADER_LEN, RtpSender};
use ivrd::media::srtp::{MAX_TAG_LEN, MasterKey, SrtpKeys, SrtpReceiver, SrtpSender, Suite};
use ivrd::sip::sdp::Codec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Counts allocations: per thread (for the transform alone) and in all (for the engine).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The engine-wide counter is shared: the tests that read it take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn thread_allocations() -> u64 {
    THREAD_ALLOCATIONS.with(Cell::get)
}

/// A 172-byte PCMU packet in a buffer with room for the tag.
fn packet(rtp: &mut RtpSender) -> ([u8; HEADER_LEN + 160 + MAX_TAG_LEN], usize) {
    let mut buf = [0xffu8; HEADER_LEN + 160 + MAX_TAG_LEN];
    rtp.write_header(&mut buf, 0, 160);
    (buf, HEADER_LEN + 160)
}

#[test]
fn protect_and_unprotect_allocate_nothing_per_packet() {
    let _turn = SERIAL.blocking_lock();
    for suite in Suite::ALL {
        let key = MasterKey::random();
        let mut tx = SrtpSender::new(suite, &key);
        let mut rx = SrtpReceiver::new(suite, &key);
        let mut rtp = RtpSender::new_random();
        // 70,000 packets: the sequence number wraps (ROC 0 -> 1) on the way.
        let before = thread_allocations();
        for _ in 0..70_000 {
            let (mut buf, len) = packet(&mut rtp);
            let n = tx.protect(&mut buf, len).unwrap();
            assert_eq!(rx.unprotect(&mut buf[..n]), Ok(len));
            // A replay and a forgery are refused without allocating either.
            assert!(rx.unprotect(&mut buf[..n]).is_err());
        }
        assert_eq!(thread_allocations() - before, 0, "{suite}: allocations");
        assert_eq!(rx.roc(), tx.roc());
    }
}

fn settings(port_min: u16, port_max: u16) -> MediaSettings {
    MediaSettings {
        rtp_ip: "127.0.0.1".parse().unwrap(),
        port_min,
        port_max,
        symmetric_rtp: true,
        strict_rtp: true,
        rtp_probation: 4,
        rtp_timeout: None,
        inband_dtmf: true,
        pacing_threads: 1,
        pacer_nice: 0,
    }
}

fn stream_params(remote: SocketAddr, protection: Protection) -> StreamParams {
    StreamParams {
        codec: Codec::Pcmu,
        payload_type: 0,
        dtmf_payload_type: Some(101),
        ptime_ms: 20,
        remote: Some(remote),
        send: true,
        expect_rtp: true,
        protection,
    }
}

/// Receives and counts datagrams on `sock` into `count` until `stop`.
fn sink(
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if sock.recv(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_allocates_nothing_per_srtp_packet() {
    let _turn = SERIAL.lock().await;
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let engine = MediaEngine::start(settings(43000, 43100)).unwrap();
    let suite = Suite::AesCm128HmacSha1_80;
    let mut streams = Vec::new();
    let mut inbound = Vec::new();
    let mut events = Vec::new();
    for _ in 0..20 {
        let keys = SrtpKeys {
            suite,
            send: MasterKey::random(),
            recv: MasterKey::random(),
        };
        let (tx, rx) = mpsc::unbounded_channel::<MediaEvent>();
        let stream = engine
            .open(stream_params(peer_addr, Protection::Srtp(keys)), tx)
            .unwrap();
        // What the peer sends this stream: 60 packets of SRTP audio, made up front.
        let mut srtp = SrtpSender::new(suite, &keys.recv);
        let mut rtp = RtpSender::new_random();
        let wire: Vec<Vec<u8>> = (0..60)
            .map(|_| {
                let (mut buf, len) = packet(&mut rtp);
                let n = srtp.protect(&mut buf, len).unwrap();
                buf[..n].to_vec()
            })
            .collect();
        inbound.push((stream.local_addr(), wire));
        streams.push(stream);
        events.push(rx);
    }
    // Let every stream and its receive task settle in, and the first packets go out.
    let stop = Arc::new(AtomicBool::new(false));
    let counted = sink(peer.try_clone().unwrap(), stop.clone(), Arc::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = engine.stats().clone();
    // One second of it: the pacer sends 20 x 50 packets, the peer 20 x 50 back.
    let sender = std::thread::spawn(move || {
        let started = Instant::now();
        for i in 0..50 {
            for (to, wire) in &inbound {
                peer.send_to(&wire[i + 5], *to).unwrap();
            }
            std::thread::sleep(
                (started + Duration::from_millis(20 * (i as u64 + 1))) - Instant::now(),
            );
        }
        // The first five of each, kept back to open the window above.
        inbound
    });
    let (sent0, received0) = (
        stats.packets_sent.load(Ordering::Relaxed),
        stats.packets_received.load(Ordering::Relaxed),
    );
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let sent = stats.packets_sent.load(Ordering::Relaxed) - sent0;
    let received = stats.packets_received.load(Ordering::Relaxed) - received0;
    let _ = sender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    counted.join().unwrap();
    assert!(sent >= 900, "the pacer sent {sent} packets in a second");
    assert!(
        received >= 800,
        "the engine took {received} packets in a second"
    );
    assert_eq!(stats.srtp_auth_failures.load(Ordering::Relaxed), 0);
    println!("{sent} SRTP packets sent, {received} received: {allocations} allocations");
    assert_eq!(
        allocations, 0,
        "allocations while the engine sent {sent} and received {received} SRTP packets"
    );
    drop(streams);
}

#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn protect_cost_per_packet() {
    const PACKETS: usize = 100_000;
    println!("CPU time of this thread (CLOCK_THREAD_CPUTIME_ID), best of 5 runs");
    let mut rtp = RtpSender::new_random();
    let plain: Vec<([u8; HEADER_LEN + 160 + MAX_TAG_LEN], usize)> =
        (0..PACKETS).map(|_| packet(&mut rtp)).collect();
    let time = |f: &mut dyn FnMut(&mut [u8], usize) -> usize| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut bufs = plain.clone();
            let t = cpu_now_ns();
            let mut total = 0;
            for (buf, len) in bufs.iter_mut() {
                total += f(buf, *len);
            }
            let ns = (cpu_now_ns() - t) as f64 / PACKETS as f64;
            std::hint::black_box(total);
            best = best.min(ns);
        }
        best
    };
    // Plain: what the pacer does per packet without SRTP, i.e. write the header and copy
    // 160 bytes of audio into the buffer.
    let audio = [0x55u8; 160];
    let mut writer = RtpSender::new_random();
    let copy = time(&mut |buf, len| {
        writer.write_header(buf, 0, 160);
        buf[HEADER_LEN..len].copy_from_slice(&audio);
        len
    });
    println!("plain header + 160-byte copy: {copy:.0} ns/packet");
    for suite in Suite::ALL {
        let key = MasterKey::random();
        let mut tx = SrtpSender::new(suite, &key);
        let protect = time(&mut |buf, len| tx.protect(buf, len).unwrap());
        let mut tx = SrtpSender::new(suite, &key);
        let mut wire: Vec<Vec<u8>> = plain
            .iter()
            .map(|(buf, len)| {
                let mut b = *buf;
                let n = tx.protect(&mut b, *len).unwrap();
                b[..n].to_vec()
            })
            .collect();
        let mut unprotect = f64::MAX;
        for _ in 0..5 {
            let mut copy = wire.clone();
            let mut rx = SrtpReceiver::new(suite, &key);
            let t = cpu_now_ns();
            for w in copy.iter_mut() {
                rx.unprotect(w).unwrap();
            }
            unprotect = unprotect.min((cpu_now_ns() - t) as f64 / PACKETS as f64);
        }
        wire.clear();
        println!("{suite}: protect {protect:.0} ns/packet, unprotect {unprotect:.0} ns/packet");
    }
}

/// This thread's CPU time (ns): unlike a wall clock, it does not count time other processes on
/// a busy host took from it.
fn cpu_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPU time (ns) the thread named `name` of this process has used, the newest such thread.
fn thread_cpu_ns(name: &str) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let tid: u64 = dir.file_name()?.to_str()?.parse().ok()?;
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        let ns: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
        if best.is_none_or(|(t, _)| tid > t) {
            best = Some((tid, ns));
        }
    }
    best.map(|(_, ns)| ns)
}

fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid int; SO_RCVBUFFORCE needs CAP_NET_ADMIN, else the
    // plain option is capped by net.core.rmem_max, which is all the sink then gets.
    unsafe {
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            if libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
            {
                return;
            }
        }
    }
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
async fn pacer_cpu_per_packet_srtp_against_plain() {
    let _turn = SERIAL.lock().await;
    raise_fd_limit();
    let secs: u64 = std::env::var("SRTP_PERF_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let sizes: Vec<usize> = std::env::var("SRTP_PERF_N")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 2000]);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    println!(
        "| N | mode | pacer CPU (cores) | ns/packet | sent / expected | late ticks | skipped ticks | sink got |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &n in &sizes {
        let mut per_packet = [0.0f64; 2];
        // Alternate, twice each, so that a noisy neighbour hits both modes alike.
        for round in 0..4 {
            let srtp = round % 2 == 1;
            let sink_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let sink_addr = sink_sock.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let got = Arc::new(AtomicU64::new(0));
            // A large receive buffer, so that the sink's own scheduling loses nothing.
            set_rcvbuf(&sink_sock, 32 << 20);
            let counted = sink(sink_sock, stop.clone(), got.clone());
            // At nice -10, as the daemon's pacer runs by default (as root, or it stays at 0).
            let engine = MediaEngine::start(MediaSettings {
                pacer_nice: -10,
                ..settings(44000, 44000 + 2 * n as u16 + 200)
            })
            .unwrap();
            let mut streams = Vec::with_capacity(n);
            let mut rxs = Vec::with_capacity(n);
            for _ in 0..n {
                let protection = if srtp {
                    Protection::Srtp(SrtpKeys {
                        suite: Suite::AesCm128HmacSha1_80,
                        send: MasterKey::random(),
                        recv: MasterKey::random(),
                    })
                } else {
                    Protection::Plain
                };
                let (tx, rx) = mpsc::unbounded_channel();
                streams.push(
                    engine
                        .open(stream_params(sink_addr, protection), tx)
                        .unwrap(),
                );
                rxs.push(rx);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let stats = engine.stats().clone();
            let snap = || {
                (
                    stats.packets_sent.load(Ordering::Relaxed),
                    stats.late_ticks.load(Ordering::Relaxed),
                    stats.skipped_ticks.load(Ordering::Relaxed),
                    thread_cpu_ns("ivrd-rtp-0").unwrap_or(0),
                    Instant::now(),
                    got.load(Ordering::Relaxed),
                )
            };
            let a = snap();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let b = snap();
            drop(streams);
            drop(engine);
            stop.store(true, Ordering::Relaxed);
            counted.join().unwrap();
            let received = b.5 - a.5;
            let wall = (b.4 - a.4).as_secs_f64();
            let sent = b.0 - a.0;
            let cpu = (b.3 - a.3) as f64;
            let ns = cpu / sent.max(1) as f64;
            per_packet[usize::from(srtp)] += ns / 2.0;
            let expected = (n as f64 * wall * 50.0).round() as u64;
            println!(
                "| {n} | {} | {:.3} | {ns:.0} | {sent} / {expected} | {} | {} | {received} |",
                if srtp { "SRTP _80" } else { "plain" },
                cpu / 1e9 / wall,
                b.1 - a.1,
                b.2 - a.2,
            );
            drop(rxs);
        }
        let ratio = per_packet[1] / per_packet[0];
        println!("N = {n}: SRTP/plain CPU per packet {ratio:.2}");
        ratios.push(ratio);
    }
    println!("ratios: {ratios:?}");
}

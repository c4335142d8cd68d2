//! The pacing clock: absolute deadlines on CLOCK_MONOTONIC.
//!
//! Why not `std::thread::sleep(deadline - now)`: a relative sleep is measured from whenever the
//! thread got around to computing `now`, so every wake-up error (scheduler latency, the
//! kernel's timer slack) becomes the start of the next interval. `clock_nanosleep` with
//! `TIMER_ABSTIME` wakes at the deadline itself, so errors do not carry over from tick to tick.
//! The pacer also asks for 1 µs timer slack instead of the default 50 µs, which the kernel
//! would otherwise add to every wake-up to batch timers. The benchmark measured the relative
//! sleep at about ten times the C floor's median interval error (bench/README.md).

/// Nanoseconds on CLOCK_MONOTONIC (the clock `std::time::Instant` uses on Linux).
#[cfg(target_os = "linux")]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `deadline_ns` (a `now_ns()` value); returns at once if it has passed.
#[cfg(target_os = "linux")]
pub fn sleep_until_ns(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; a null remainder is allowed with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        // A signal interrupts the sleep; the deadline is absolute, so simply sleep again.
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Asks the kernel not to delay this thread's wake-ups to batch timers (default slack 50 µs).
#[cfg(target_os = "linux")]
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long and only affects the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong, 0, 0, 0) };
}

/// Sets the calling thread's nice value (Linux nice is per thread). Lowering it below 0 needs
/// CAP_SYS_NICE or an RLIMIT_NICE that allows it (systemd: `LimitNICE=`); the error says which
/// was missing. Why the pacer wants it: at 1,200 calls/s, sharing one core with the tokio
/// worker at equal weight, half of its ticks started more than 5 ms late and one run gave up
/// 200 ticks of prompt audio; at nice -10 (about nine times the CPU weight when both are
/// runnable) late ticks fell from 5,000-7,000 to 25-177 in the same step.
#[cfg(target_os = "linux")]
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: PRIO_PROCESS with a thread id changes only that thread's nice value.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// Elsewhere (development on other Unixes): the same interface over std, relative sleep.
#[cfg(not(target_os = "linux"))]
fn epoch() -> std::time::Instant {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

#[cfg(not(target_os = "linux"))]
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

#[cfg(not(target_os = "linux"))]
pub fn sleep_until_ns(deadline_ns: u64) {
    let now = now_ns();
    if deadline_ns > now {
        std::thread::sleep(std::time::Duration::from_nanos(deadline_ns - now));
    }
}

#[cfg(not(target_os = "linux"))]
pub fn tighten_timer_slack() {}

#[cfg(not(target_os = "linux"))]
pub fn set_thread_nice(_nice: i32) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_an_absolute_deadline_not_before() {
        let start = now_ns();
        let deadline = start + 20_000_000;
        sleep_until_ns(deadline);
        let woke = now_ns();
        assert!(woke >= deadline, "woke {} ns early", deadline - woke);
        // A deadline in the past returns at once.
        let t = now_ns();
        sleep_until_ns(start);
        assert!(now_ns() - t < 5_000_000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn monotonic_ns_matches_std_instant_clock() {
        let a = std::time::Instant::now();
        let n0 = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let n1 = now_ns();
        let elapsed = a.elapsed().as_nanos() as u64;
        assert!(n1 - n0 <= elapsed && elapsed - (n1 - n0) < 5_000_000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn nice_applies_to_the_calling_thread_only() {
        fn own_nice() -> i32 {
            // SAFETY: as in set_thread_nice; getpriority returns the nice value (-1 is a valid
            // one, but none of the values used here).
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        }
        let before = own_nice();
        // Raising the nice value (lower priority) needs no privilege.
        let target = (before + 3).min(19);
        let seen = std::thread::spawn(move || {
            set_thread_nice(target).unwrap();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(seen, target);
        assert_eq!(
            own_nice(),
            before,
            "the nice value leaked to another thread"
        );
    }
}

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
}

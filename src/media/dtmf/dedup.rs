//! Cross-method de-duplication: one key press reported by two mechanisms
//! (RFC 4733 plus leaked in-band tones, RFC 4733 plus SIP INFO, ...) must
//! count once.
//!
//! Each receiver already collapses its own repeats (RFC 4733 by timestamp,
//! in-band by tone on/off), so repeats within one method are always real
//! key presses and are never suppressed here. A digit from method M is a
//! duplicate when the same digit was accepted from another method shortly
//! before and that acceptance has not already absorbed an M copy. The
//! one-to-one pairing matters: with a plain "same digit from another
//! method within the window" rule, a caller pressing 5 twice quickly,
//! with both presses reported by both methods in an unlucky order (the
//! second press reaching method B before method A), would lose the second
//! press because each copy finds the other method's previous report.

use std::time::{Duration, Instant};

use super::{Digit, DtmfMethod};

/// Accepted digits remembered at once. Entries older than the window are
/// dead anyway, and humans cannot press 16 keys inside one window, so
/// overwriting the oldest when full loses nothing real (and keeps a flood
/// of INFO requests from growing memory).
const CAPACITY: usize = 16;

/// A digit that was accepted and the methods whose copy of it was seen.
#[derive(Clone, Copy, Debug)]
struct Accepted {
    at: Instant,
    digit: Digit,
    /// Bit set of [`DtmfMethod::bit`]: the method that delivered it plus
    /// every method whose duplicate it has already absorbed.
    seen_by: u8,
}

/// Merges digits from several methods so each key press counts once.
#[derive(Clone, Debug)]
pub struct DigitDedup {
    window: Duration,
    entries: [Option<Accepted>; CAPACITY],
    /// Slot the next accepted digit goes into (oldest first overwritten).
    next: usize,
}

impl DigitDedup {
    /// Suggested window: 500 ms.
    ///
    /// In-band detection reports 25-60 ms after the tone starts, about
    /// when the RFC 4733 start packet arrives; SIP INFO travels through
    /// proxies and commonly lags the media by 100-300 ms. Because copies
    /// are paired one-to-one, a long window does not merge fast repeats of
    /// the same key, so the window can cover slow signalling paths. Its
    /// only cost is the rare case where each method loses a different one
    /// of two quick presses of the same key.
    pub const DEFAULT_WINDOW: Duration = Duration::from_millis(500);

    /// A de-duplicator that pairs copies arriving within `window`.
    pub fn new(window: Duration) -> Self {
        DigitDedup {
            window,
            entries: [None; CAPACITY],
            next: 0,
        }
    }

    /// Whether `digit`, arriving now by `method`, is a new key press
    /// (`true`) or another method's copy of one already accepted (`false`).
    pub fn accept(&mut self, now: Instant, digit: Digit, method: DtmfMethod) -> bool {
        let bit = method.bit();
        let window = self.window;
        // Pair with the oldest live acceptance that lacks this method: the
        // methods each deliver presses in order, so oldest-first keeps the
        // pairs aligned when several presses of the key are in flight.
        let oldest_match = self
            .entries
            .iter_mut()
            .flatten()
            .filter(|e| {
                e.digit == digit
                    && e.seen_by & bit == 0
                    && now.saturating_duration_since(e.at) <= window
            })
            .min_by_key(|e| e.at);
        if let Some(entry) = oldest_match {
            entry.seen_by |= bit;
            return false;
        }
        self.entries[self.next] = Some(Accepted {
            at: now,
            digit,
            seen_by: bit,
        });
        self.next = (self.next + 1) % CAPACITY;
        true
    }
}

impl Default for DigitDedup {
    fn default() -> Self {
        DigitDedup::new(Self::DEFAULT_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DtmfMethod::{Inband, Rfc4733, SipInfo};

    fn d(c: char) -> Digit {
        Digit::from_char(c).expect("test key")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn cross_method_duplicate_is_suppressed() {
        let t0 = Instant::now();
        let mut dd = DigitDedup::default();
        assert!(dd.accept(t0, d('5'), Rfc4733));
        assert!(!dd.accept(t0 + ms(50), d('5'), Inband));
        // INFO lagging by a few hundred ms is still the same press.
        assert!(!dd.accept(t0 + ms(350), d('5'), SipInfo));
        // A different key from another method is never a duplicate.
        assert!(dd.accept(t0 + ms(400), d('6'), Inband));
    }

    #[test]
    fn same_method_repeats_are_kept() {
        let t0 = Instant::now();
        let mut dd = DigitDedup::default();
        for i in 0..5 {
            assert!(dd.accept(t0 + ms(i * 100), d('5'), Rfc4733), "press {i}");
        }
    }

    #[test]
    fn outside_window_is_kept() {
        let t0 = Instant::now();
        let mut dd = DigitDedup::new(ms(300));
        assert!(dd.accept(t0, d('1'), SipInfo));
        assert!(dd.accept(t0 + ms(301), d('1'), Rfc4733));
        // And at exactly the window edge it is still a duplicate.
        let mut dd = DigitDedup::new(ms(300));
        assert!(dd.accept(t0, d('1'), SipInfo));
        assert!(!dd.accept(t0 + ms(300), d('1'), Rfc4733));
    }

    #[test]
    fn quick_double_press_reported_by_two_methods_gives_two_digits() {
        let t0 = Instant::now();
        let mut dd = DigitDedup::default();
        let arrivals = [
            (0, Rfc4733),   // press 1
            (60, Inband),   // press 1, late copy
            (250, Inband),  // press 2 reaches in-band first
            (270, Rfc4733), // press 2
        ];
        let kept: Vec<_> = arrivals
            .iter()
            .filter(|(t, m)| dd.accept(t0 + ms(*t), d('5'), *m))
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
    }

    #[test]
    fn three_methods_one_press() {
        let t0 = Instant::now();
        let mut dd = DigitDedup::default();
        assert!(dd.accept(t0, d('#'), Inband));
        assert!(!dd.accept(t0 + ms(10), d('#'), Rfc4733));
        assert!(!dd.accept(t0 + ms(200), d('#'), SipInfo));
        // A fourth copy from a method already paired is a new press.
        assert!(dd.accept(t0 + ms(210), d('#'), SipInfo));
    }

    #[test]
    fn capacity_overflow_is_bounded_and_harmless() {
        let t0 = Instant::now();
        let mut dd = DigitDedup::default();
        for i in 0..100u64 {
            assert!(dd.accept(t0 + ms(i), d('7'), SipInfo));
        }
        // The most recent acceptances are still there to pair with.
        assert!(!dd.accept(t0 + ms(100), d('7'), Rfc4733));
        // A clock going backwards does not panic and still pairs.
        assert!(!dd.accept(t0, d('7'), Inband));
    }
}

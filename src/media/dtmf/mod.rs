//! DTMF digit detection for every way a SIP call can carry a key press.
//!
//! A caller's key press can reach ivrd as RFC 4733 telephone-events in the
//! RTP stream ([`Rfc4733Receiver`]), as a SIP INFO request ([`parse_info`]),
//! or only as audio tones inside the voice stream ([`InbandDetector`]).
//! Phones and gateways differ in which of these they use, and some use two
//! at once, so [`DigitDedup`] merges the sources so that one key press
//! yields exactly one digit. Encoders ([`rfc4733_payload`],
//! [`generate_tone`]) live next to the decoders so that tests and ivrd's
//! own test tools produce exactly what the decoders expect.
//!
//! Everything here is plain synchronous code without I/O: the call
//! machinery feeds packets, bodies and audio frames in and acts on the
//! digits that come out. Nothing allocates on the per-packet / per-frame
//! path.

mod dedup;
mod inband;
mod info;
mod rfc4733;

use std::fmt;

pub use dedup::DigitDedup;
pub use inband::{InbandDetector, dbm0_to_amplitude, generate_tone};
pub use info::{InfoError, parse_info};
pub use rfc4733::{Rfc4733Receiver, TelephoneEvent, rfc4733_payload};

/// The channel a digit arrived by. Used for cross-method de-duplication
/// and for logging which mechanism a caller's equipment uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtmfMethod {
    /// RFC 4733 (formerly RFC 2833) telephone-event RTP payload.
    Rfc4733,
    /// SIP INFO with `application/dtmf-relay` or `application/dtmf`.
    SipInfo,
    /// Dual tones detected in the audio itself.
    Inband,
}

impl DtmfMethod {
    /// Short stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DtmfMethod::Rfc4733 => "rfc4733",
            DtmfMethod::SipInfo => "info",
            DtmfMethod::Inband => "inband",
        }
    }

    /// Index used for small per-method bit sets.
    pub(crate) fn bit(self) -> u8 {
        match self {
            DtmfMethod::Rfc4733 => 1,
            DtmfMethod::SipInfo => 2,
            DtmfMethod::Inband => 4,
        }
    }
}

impl fmt::Display for DtmfMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keypad, row by row: row `r` uses low tone `ROW_HZ[r]`, column `c`
/// uses high tone `COL_HZ[c]`.
const KEYPAD: [[u8; 4]; 4] = [*b"123A", *b"456B", *b"789C", *b"*0#D"];
/// Low ("row") group frequencies in Hz.
const ROW_HZ: [u16; 4] = [697, 770, 852, 941];
/// High ("column") group frequencies in Hz.
const COL_HZ: [u16; 4] = [1209, 1336, 1477, 1633];

/// One DTMF key: `'0'`-`'9'`, `'*'`, `'#'` or `'A'`-`'D'`.
///
/// The field is private so that every `Digit` in the program is one of
/// those 16 keys; construct it with [`Digit::from_char`] or
/// [`Digit::from_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digit(u8);

impl Digit {
    /// All 16 keys in RFC 4733 event-code order (0-9, *, #, A-D).
    pub const ALL: [Digit; 16] = [
        Digit(b'0'),
        Digit(b'1'),
        Digit(b'2'),
        Digit(b'3'),
        Digit(b'4'),
        Digit(b'5'),
        Digit(b'6'),
        Digit(b'7'),
        Digit(b'8'),
        Digit(b'9'),
        Digit(b'*'),
        Digit(b'#'),
        Digit(b'A'),
        Digit(b'B'),
        Digit(b'C'),
        Digit(b'D'),
    ];

    /// The key for a character. `'a'`-`'d'` are accepted as `'A'`-`'D'`
    /// because SIP INFO senders are not consistent about case.
    pub fn from_char(c: char) -> Option<Digit> {
        match c {
            '0'..='9' | '*' | '#' | 'A'..='D' => Some(Digit(c as u8)),
            'a'..='d' => Some(Digit(c.to_ascii_uppercase() as u8)),
            _ => None,
        }
    }

    /// The key for an RFC 4733 event code (0-9 digits, 10 `*`, 11 `#`,
    /// 12-15 `A`-`D`). Other codes (flash, tones, ...) are not keys.
    pub fn from_event(code: u8) -> Option<Digit> {
        Digit::ALL.get(usize::from(code)).copied()
    }

    /// The key as a character.
    pub fn as_char(self) -> char {
        char::from(self.0)
    }

    /// The RFC 4733 event code of this key.
    pub fn event(self) -> u8 {
        match self.0 {
            b'0'..=b'9' => self.0 - b'0',
            b'*' => 10,
            b'#' => 11,
            // The constructor guarantees 'A'..='D' here.
            other => 12 + (other - b'A'),
        }
    }

    /// The (low, high) tone pair in Hz that signals this key in-band.
    pub fn frequencies(self) -> (u16, u16) {
        let (row, col) = self.keypad_position();
        (ROW_HZ[row], COL_HZ[col])
    }

    /// Keypad (row, column) of this key.
    fn keypad_position(self) -> (usize, usize) {
        for (r, keys) in KEYPAD.iter().enumerate() {
            for (c, &k) in keys.iter().enumerate() {
                if k == self.0 {
                    return (r, c);
                }
            }
        }
        // Unreachable by construction; '1' keeps this total without a panic.
        (0, 0)
    }

    /// The key at keypad (row, column); both must be below 4.
    fn at(row: usize, col: usize) -> Option<Digit> {
        KEYPAD
            .get(row)
            .and_then(|keys| keys.get(col))
            .map(|&k| Digit(k))
    }
}

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_round_trip() {
        for code in 0..16u8 {
            let d = Digit::from_event(code).expect("0-15 are keys");
            assert_eq!(d.event(), code);
            assert_eq!(Digit::from_char(d.as_char()), Some(d));
        }
        assert_eq!(Digit::from_event(16), None);
        assert_eq!(Digit::from_event(255), None);
    }

    #[test]
    fn chars_map_to_expected_events() {
        let cases = [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('d', 15),
        ];
        for (c, code) in cases {
            assert_eq!(Digit::from_char(c).map(Digit::event), Some(code), "{c}");
        }
        for bad in ['E', 'e', ' ', '+', 'x', '٣'] {
            assert_eq!(Digit::from_char(bad), None, "{bad}");
        }
        assert_eq!(Digit::from_char('b').map(Digit::as_char), Some('B'));
    }

    #[test]
    fn keypad_frequencies() {
        let f = |c| Digit::from_char(c).map(Digit::frequencies);
        assert_eq!(f('1'), Some((697, 1209)));
        assert_eq!(f('5'), Some((770, 1336)));
        assert_eq!(f('9'), Some((852, 1477)));
        assert_eq!(f('0'), Some((941, 1336)));
        assert_eq!(f('#'), Some((941, 1477)));
        assert_eq!(f('D'), Some((941, 1633)));
        assert_eq!(Digit::at(3, 0).map(Digit::as_char), Some('*'));
        assert_eq!(Digit::at(4, 0), None);
    }

    /// One call where the phone sends every key three ways at once:
    /// RFC 4733 events, the tones still in the audio, and (for some keys)
    /// SIP INFO arriving 140 ms late. Each press must come out once.
    #[test]
    fn keys_sent_by_several_methods_count_once() {
        use std::time::{Duration, Instant};

        let keys = "155#";
        let with_info = [true, false, true, true];
        let press_ms = 200; // 100 ms tone, 100 ms pause
        let mut audio = Vec::new();
        for c in keys.chars() {
            let key = Digit::from_char(c).unwrap();
            generate_tone(key, 100, dbm0_to_amplitude(-8.0), &mut audio);
            audio.resize(audio.len() + 800, 0);
        }
        audio.resize(audio.len() + 1600, 0);

        let t0 = Instant::now();
        let mut rfc = Rfc4733Receiver::new();
        let mut inband = InbandDetector::new();
        let mut dedup = DigitDedup::default();
        let (mut kept, mut raw) = (String::new(), 0);
        let mut offer = |at_ms: usize, d: Digit, m: DtmfMethod, kept: &mut String| {
            raw += 1;
            if dedup.accept(t0 + Duration::from_millis(at_ms as u64), d, m) {
                kept.push(d.as_char());
            }
        };
        for (i, frame) in audio.chunks(160).enumerate() {
            let now_ms = i * 20;
            // RFC 4733: one packet per 20 ms while the key is down, the
            // end report three times after it; timestamp = tone start.
            let press = now_ms / press_ms;
            let into = now_ms % press_ms;
            if let Some(c) = keys.chars().nth(press) {
                let key = Digit::from_char(c).unwrap();
                let ts = (press * press_ms * 8) as u32;
                let pkts = match into {
                    0..100 => 1,
                    100..120 => 3,
                    _ => 0,
                };
                let end = into >= 100;
                let dur = (into.min(100) * 8) as u16;
                for _ in 0..pkts {
                    if let Some(d) = rfc.handle(ts, &rfc4733_payload(key, end, 10, dur)) {
                        offer(now_ms, d, DtmfMethod::Rfc4733, &mut kept);
                    }
                }
                if into == 140 && with_info[press] {
                    let body = format!("Signal={c}\r\nDuration=100\r\n");
                    let d = parse_info("application/dtmf-relay", body.as_bytes()).unwrap();
                    offer(now_ms, d, DtmfMethod::SipInfo, &mut kept);
                }
            }
            if let Some(d) = inband.process(frame) {
                offer(now_ms + 20, d, DtmfMethod::Inband, &mut kept);
            }
        }
        assert_eq!(kept, keys);
        // The scenario really did deliver every key more than once.
        assert_eq!(raw, 4 + 4 + 3, "rfc4733 + inband + info copies");
    }

    #[test]
    fn method_names() {
        assert_eq!(DtmfMethod::Rfc4733.as_str(), "rfc4733");
        assert_eq!(DtmfMethod::SipInfo.as_str(), "info");
        assert_eq!(DtmfMethod::Inband.to_string(), "inband");
    }
}

//! RFC 4733 telephone-event receiver: turns the stream of event packets
//! into one digit per key press, and the matching payload encoder.
//!
//! A sender reports one key press as a burst of packets that all carry the
//! RTP timestamp of the press's start: a start packet, updates with a
//! growing duration, and an end packet (E bit) sent three times. Any of
//! them may be lost, duplicated or reordered, so the press is identified
//! by its timestamp rather than by the start/end bits: the first packet
//! seen for a new timestamp yields the digit, everything else for that
//! timestamp is bookkeeping. Presses longer than the 16-bit duration field
//! are split into segments with new timestamps (RFC 4733 §2.5.1.3); those
//! are recognised and not counted again.

use super::Digit;

/// Payload size of one event report.
const REPORT_LEN: usize = 4;
/// E bit: this report ends the event.
const END_BIT: u8 = 0x80;
/// Volume field (-dBm0, 0-63).
const VOLUME_MASK: u8 = 0x3F;
/// Largest duration the 16-bit field can carry; a longer event continues
/// in a new segment whose timestamp is the old one plus this duration.
const MAX_SEGMENT: u32 = 0xFFFF;
/// How far short of `MAX_SEGMENT` the last duration we saw of a segment
/// may be (its final updates lost) and how far past it the next segment
/// may start, in timestamp units. 1600 is 200 ms at the usual 8 kHz event
/// clock: several lost updates, yet far less than the ~8 s a segment
/// lasts, so an ordinary short press is never mistaken for a segment.
const SEGMENT_SLACK: u32 = 1600;
/// A timestamp at most this far behind the current press (or anywhere
/// within a long, segmented press) is a late (reordered or duplicated)
/// packet and is ignored. Anything further back
/// is taken as the sender restarting its timestamps, so a new SSRC or a
/// re-INVITE does not silence DTMF for the rest of the call. 80000 units
/// is 10 s at 8 kHz, far beyond any jitter a real network delivers.
const REORDER_WINDOW: u32 = 80_000;

/// One decoded telephone-event report (the first 4 bytes of a payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0-15 are DTMF keys; others are tones, flash, ...).
    pub event: u8,
    /// E bit: the final report of the event.
    pub end: bool,
    /// Power level of the tone in -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Decode a payload; `None` if it is shorter than one report.
    ///
    /// Bytes after the first report (RFC 4733 §2.5.1.5 packs several
    /// reports of rapid machine-generated sequences into one packet) are
    /// ignored: phones send one key per packet.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let b = payload.get(..REPORT_LEN)?;
        Some(TelephoneEvent {
            event: b[0],
            end: b[1] & END_BIT != 0,
            volume: b[1] & VOLUME_MASK,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }
}

/// Encode one telephone-event report for `digit`.
///
/// `volume` is the tone power in -dBm0 and is truncated to its 6 bits;
/// `duration` is in RTP timestamp units. The R bit is always zero.
pub fn rfc4733_payload(digit: Digit, end: bool, volume: u8, duration: u16) -> [u8; 4] {
    let flags = if end { END_BIT } else { 0 } | (volume & VOLUME_MASK);
    let [d0, d1] = duration.to_be_bytes();
    [digit.event(), flags, d0, d1]
}

/// What we know about the most recent key press.
#[derive(Clone, Copy, Debug)]
struct Press {
    /// RTP timestamp of the current segment.
    timestamp: u32,
    /// RTP timestamp of the press's first segment.
    first_timestamp: u32,
    event: u8,
    /// An end report has been seen for the current segment.
    ended: bool,
    /// Longest duration seen in the current segment.
    duration: u16,
}

/// Per-stream state that turns telephone-event packets into digits.
///
/// Create one per RTP stream (SSRC) that negotiated telephone-event and
/// feed it every packet of that payload type.
#[derive(Clone, Debug, Default)]
pub struct Rfc4733Receiver {
    last: Option<Press>,
}

impl Rfc4733Receiver {
    /// A receiver that has seen no press yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget all history, e.g. when the stream's SSRC changes.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Feed one telephone-event packet: its RTP timestamp and payload.
    ///
    /// Returns the digit once per key press, on the first packet that
    /// arrives for it, whichever kind that is. Short payloads and events
    /// that are not DTMF keys are ignored without disturbing the state.
    pub fn handle(&mut self, rtp_timestamp: u32, payload: &[u8]) -> Option<Digit> {
        let report = TelephoneEvent::parse(payload)?;
        let digit = Digit::from_event(report.event)?;

        let Some(last) = self.last.as_mut() else {
            self.last = Some(Press::new(rtp_timestamp, report));
            return Some(digit);
        };

        let ahead = rtp_timestamp.wrapping_sub(last.timestamp);
        if ahead == 0 {
            if report.event == last.event {
                // Update, end report or retransmission of the current press.
                last.duration = last.duration.max(report.duration);
                last.ended |= report.end;
                return None;
            }
            // A different key under the same timestamp breaks the RFC. Once
            // the previous key has ended it is plainly a new key (some
            // senders reuse timestamps); before that, it is as likely a
            // straggler of an earlier key, and ping-ponging between the two
            // would count both again.
            if !last.ended {
                return None;
            }
            *last = Press::new(rtp_timestamp, report);
            return Some(digit);
        }
        // `ahead` above 2^31 means the timestamp is behind the current one.
        let behind = ahead.wrapping_neg();
        let segments_span = last.timestamp.wrapping_sub(last.first_timestamp);
        if ahead > u32::MAX / 2 && behind <= segments_span.saturating_add(REORDER_WINDOW) {
            // A late packet of an earlier press or of an earlier segment.
            return None;
        }
        if last.continues_into(ahead, report) {
            // Next segment of a long press (RFC 4733 §2.5.1.3): same key.
            let first = last.first_timestamp;
            *last = Press::new(rtp_timestamp, report);
            last.first_timestamp = first;
            return None;
        }
        *last = Press::new(rtp_timestamp, report);
        Some(digit)
    }
}

impl Press {
    fn new(timestamp: u32, report: TelephoneEvent) -> Self {
        Press {
            timestamp,
            first_timestamp: timestamp,
            event: report.event,
            ended: report.end,
            duration: report.duration,
        }
    }

    /// Whether a report `ahead` timestamp units later is the next segment
    /// of this press rather than a new press.
    ///
    /// A segment boundary only happens when the duration field is full,
    /// and the new segment starts where the old one stopped, without an
    /// end report in between. Requiring all of that keeps a new press of
    /// the same key (whose predecessor's end reports were all lost) from
    /// being swallowed unless it started right where a maximal segment
    /// ended, which a human cannot do.
    fn continues_into(&self, ahead: u32, report: TelephoneEvent) -> bool {
        let seen = u32::from(self.duration);
        !self.ended
            && report.event == self.event
            && seen + SEGMENT_SLACK >= MAX_SEGMENT
            && ahead >= seen
            && ahead <= MAX_SEGMENT + SEGMENT_SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digit {
        Digit::from_char(c).expect("test key")
    }

    /// Packets of one well-behaved press: start, updates every 50 ms (400
    /// units), end three times. Durations in 8 kHz units.
    fn press(key: char, total: u16) -> Vec<[u8; 4]> {
        let mut v = vec![rfc4733_payload(d(key), false, 10, 0)];
        let mut dur = 400u16;
        while dur < total {
            v.push(rfc4733_payload(d(key), false, 10, dur));
            dur += 400;
        }
        for _ in 0..3 {
            v.push(rfc4733_payload(d(key), true, 10, total));
        }
        v
    }

    fn feed(rx: &mut Rfc4733Receiver, ts: u32, packets: &[[u8; 4]]) -> Vec<char> {
        packets
            .iter()
            .filter_map(|p| rx.handle(ts, p))
            .map(Digit::as_char)
            .collect()
    }

    #[test]
    fn payload_encoding_matches_rfc_layout() {
        assert_eq!(
            rfc4733_payload(d('#'), true, 10, 1600),
            [11, 0x8A, 0x06, 0x40]
        );
        assert_eq!(
            rfc4733_payload(d('D'), false, 0xFF, 0xFFFF),
            [15, 0x3F, 0xFF, 0xFF]
        );
        let ev = TelephoneEvent::parse(&[5, 0x80 | 0x40 | 7, 1, 2]).unwrap();
        assert_eq!(
            ev,
            TelephoneEvent {
                event: 5,
                end: true,
                volume: 7,
                duration: 0x0102
            }
        );
    }

    #[test]
    fn one_press_gives_one_digit_on_first_packet() {
        let mut rx = Rfc4733Receiver::new();
        let pkts = press('5', 1600);
        assert_eq!(rx.handle(1000, &pkts[0]).map(Digit::as_char), Some('5'));
        assert_eq!(feed(&mut rx, 1000, &pkts[1..]), Vec::<char>::new());
    }

    #[test]
    fn start_packets_lost_still_counts_once() {
        let mut rx = Rfc4733Receiver::new();
        let pkts = press('7', 1600);
        // Drop the start and the first two updates.
        assert_eq!(feed(&mut rx, 5000, &pkts[3..]), vec!['7']);
        // Only the end reports survived for the next press.
        let next = press('8', 800);
        assert_eq!(feed(&mut rx, 9000, &next[next.len() - 3..]), vec!['8']);
    }

    #[test]
    fn end_packet_retransmissions_and_duplicates_never_count_again() {
        let mut rx = Rfc4733Receiver::new();
        let pkts = press('1', 1200);
        let doubled: Vec<[u8; 4]> = pkts.iter().flat_map(|p| [*p, *p]).collect();
        assert_eq!(feed(&mut rx, 77, &doubled), vec!['1']);
        // Another burst of end reports much later: still the same press.
        let end = rfc4733_payload(d('1'), true, 10, 1200);
        assert_eq!(feed(&mut rx, 77, &[end, end, end]), Vec::<char>::new());
    }

    #[test]
    fn two_presses_of_the_same_key_give_two_digits() {
        let mut rx = Rfc4733Receiver::new();
        let mut got = feed(&mut rx, 10_000, &press('5', 800));
        got.extend(feed(&mut rx, 10_000 + 1600, &press('5', 800)));
        assert_eq!(got, vec!['5', '5']);
    }

    #[test]
    fn same_key_again_after_all_end_packets_lost() {
        let mut rx = Rfc4733Receiver::new();
        let first = press('5', 800);
        let mut got = feed(&mut rx, 10_000, &first[..first.len() - 3]);
        got.extend(feed(&mut rx, 10_000 + 1200, &press('5', 800)));
        assert_eq!(got, vec!['5', '5']);
    }

    #[test]
    fn late_packets_of_an_earlier_press_do_not_retrigger() {
        let mut rx = Rfc4733Receiver::new();
        let one = press('1', 800);
        let two = press('2', 800);
        let mut got = Vec::new();
        // Press 1's start, then press 2 starts, then the rest of press 1
        // (including its end reports) straggles in, then the rest of 2.
        got.extend(rx.handle(4000, &one[0]));
        got.extend(rx.handle(6000, &two[0]));
        got.extend(one[1..].iter().filter_map(|p| rx.handle(4000, p)));
        got.extend(two[1..].iter().filter_map(|p| rx.handle(6000, p)));
        let chars: Vec<char> = got.into_iter().map(Digit::as_char).collect();
        assert_eq!(chars, vec!['1', '2']);
    }

    #[test]
    fn press_whose_first_packets_arrive_after_later_ones_counts_once() {
        let mut rx = Rfc4733Receiver::new();
        let pkts = press('9', 1600);
        let mut order: Vec<[u8; 4]> = pkts[2..].to_vec();
        order.extend_from_slice(&pkts[..2]);
        assert_eq!(feed(&mut rx, 123, &order), vec!['9']);
    }

    #[test]
    fn long_duration_segments_count_once_even_across_timestamp_wrap() {
        let mut rx = Rfc4733Receiver::new();
        let key = d('0');
        // Start close to the wrap so the second segment wraps around.
        let ts1 = u32::MAX - 30_000;
        let ts2 = ts1.wrapping_add(0xFFFF);
        let ts3 = ts2.wrapping_add(0xFFFF);
        assert!(ts2 < ts1, "test must cross the wrap");
        let mut got = Vec::new();
        for dur in (0..=0xFFFFu32).step_by(400).chain([0xFFFF]) {
            got.extend(rx.handle(ts1, &rfc4733_payload(key, false, 10, dur as u16)));
        }
        for dur in (0..=0xFFFFu32).step_by(400).chain([0xFFFF]) {
            got.extend(rx.handle(ts2, &rfc4733_payload(key, false, 10, dur as u16)));
        }
        // Third segment: the first packets are lost, then end x3.
        for dur in (4000..=8000u16).step_by(400) {
            got.extend(rx.handle(ts3, &rfc4733_payload(key, false, 10, dur)));
        }
        for _ in 0..3 {
            got.extend(rx.handle(ts3, &rfc4733_payload(key, true, 10, 8000)));
        }
        // A late packet from the first segment.
        got.extend(rx.handle(ts1, &rfc4733_payload(key, false, 10, 30_000)));
        assert_eq!(got, vec![key]);
        // And the key pressed again afterwards is a new digit.
        let later = ts3.wrapping_add(8000 + 800);
        assert_eq!(
            rx.handle(later, &rfc4733_payload(key, false, 10, 0)),
            Some(key)
        );
    }

    #[test]
    fn segment_rule_does_not_merge_short_presses_or_ended_events() {
        let key = d('4');
        // Not a full segment: a new press even though it is contiguous.
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(
            rx.handle(0, &rfc4733_payload(key, false, 10, 800)),
            Some(key)
        );
        assert_eq!(
            rx.handle(800, &rfc4733_payload(key, false, 10, 0)),
            Some(key)
        );
        // A full segment that ended: the next one is a new press.
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(
            rx.handle(0, &rfc4733_payload(key, true, 10, 0xFFFF)),
            Some(key)
        );
        assert_eq!(
            rx.handle(0xFFFF, &rfc4733_payload(key, false, 10, 0)),
            Some(key)
        );
        // A full segment followed by a different key: new press.
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(
            rx.handle(0, &rfc4733_payload(key, false, 10, 0xFFFF)),
            Some(key)
        );
        assert_eq!(
            rx.handle(0xFFFF, &rfc4733_payload(d('6'), false, 10, 0)),
            Some(d('6'))
        );
    }

    #[test]
    fn reused_timestamp_with_a_new_key_counts_only_after_an_end() {
        // Broken sender: the next key under the same timestamp.
        let mut rx = Rfc4733Receiver::new();
        let one = press('1', 800);
        let two = press('2', 800);
        let mut got = feed(&mut rx, 500, &one);
        got.extend(feed(&mut rx, 500, &two[..2]));
        // A straggling end report of '1' while '2' is down: ignored.
        got.extend(feed(&mut rx, 500, &one[one.len() - 1..]));
        got.extend(feed(&mut rx, 500, &two[2..]));
        assert_eq!(got, vec!['1', '2']);
        // Without an end report, a different key under the same timestamp
        // is not trusted.
        let mut rx = Rfc4733Receiver::new();
        let mut got = feed(&mut rx, 900, &one[..2]);
        got.extend(feed(&mut rx, 900, &two[..2]));
        assert_eq!(got, vec!['1']);
    }

    #[test]
    fn malformed_payloads_and_non_dtmf_events_are_ignored() {
        let mut rx = Rfc4733Receiver::new();
        for bad in [&[][..], &[5], &[5, 0x80], &[5, 0x80, 0]] {
            assert_eq!(rx.handle(100, bad), None);
        }
        // Event 16 (flash) and 255 are not keys.
        assert_eq!(rx.handle(100, &[16, 0, 0, 160]), None);
        assert_eq!(rx.handle(100, &[255, 0xFF, 0xFF, 0xFF]), None);
        // None of that disturbed the state: the first real key counts...
        assert_eq!(rx.handle(100, &[3, 0, 0, 0]).map(Digit::as_char), Some('3'));
        // ...junk for the same timestamp does not re-trigger or reset it...
        assert_eq!(rx.handle(100, &[3, 0x80]), None);
        assert_eq!(rx.handle(100, &[3, 0x80, 0, 160]), None);
        // ...and trailing bytes after the first report are tolerated.
        assert_eq!(
            rx.handle(900, &[2, 0, 0, 0, 9, 9, 9]).map(Digit::as_char),
            Some('2')
        );
    }

    #[test]
    fn timestamp_restart_far_behind_is_a_new_timeline() {
        let mut rx = Rfc4733Receiver::new();
        assert!(
            rx.handle(3_000_000_000, &rfc4733_payload(d('1'), false, 10, 0))
                .is_some()
        );
        // Just behind: a late packet, ignored.
        assert_eq!(
            rx.handle(2_999_990_000, &rfc4733_payload(d('2'), false, 10, 0)),
            None
        );
        // Far behind (1e9 units): the sender restarted its clock.
        let restarted = 2_000_000_000;
        assert_eq!(
            rx.handle(restarted, &rfc4733_payload(d('2'), false, 10, 0)),
            Some(d('2'))
        );
        // Ahead is simply a newer press.
        let next = restarted + 5000;
        assert_eq!(
            rx.handle(next, &rfc4733_payload(d('3'), false, 10, 0)),
            Some(d('3'))
        );
        // reset() forgets the history too.
        rx.reset();
        assert_eq!(
            rx.handle(1000, &rfc4733_payload(d('2'), true, 10, 0)),
            Some(d('2'))
        );
    }
}

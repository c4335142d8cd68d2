//! RTP (RFC 3550) headers: writing ours into a fixed buffer and reading the caller's.
//!
//! Written by hand because it is twenty lines and must not allocate: the pacer writes a header
//! into a stack buffer fifty times a second per call. `rtp-rs` was considered; its zero-copy
//! reader is fine, but its error types lack `Display` and we need nothing else from it.

/// The fixed RTP header size (no CSRCs, no extension), which is all we send.
pub const HEADER_LEN: usize = 12;

/// Our sending state for one stream: random SSRC and starting sequence/timestamp
/// (RFC 3550 5.1: random initial values make known-plaintext attacks harder and let
/// receivers tell a restarted sender apart).
#[derive(Debug, Clone)]
pub struct RtpSender {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    /// Set on the first packet of a talkspurt (RFC 3551 4.1); we send continuously, so only
    /// the very first packet of the stream has it.
    pub marker: bool,
}

impl RtpSender {
    pub fn new_random() -> RtpSender {
        use rand::Rng;
        let mut rng = rand::rng();
        RtpSender {
            ssrc: rng.random(),
            seq: rng.random(),
            timestamp: rng.random(),
            marker: true,
        }
    }

    /// Writes the header for the next packet into `buf[..12]` and advances the state by
    /// `samples` (the packet's duration in 8 kHz clock units).
    pub fn write_header(&mut self, buf: &mut [u8], payload_type: u8, samples: u32) {
        buf[0] = 0x80; // V=2, no padding, no extension, no CSRC
        buf[1] = (payload_type & 0x7f) | if self.marker { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.marker = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
    }
}

/// The parts of a received RTP packet we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// What arrived on an RTP port.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    Rtp(RtpPacket<'a>),
    /// RTCP multiplexed on the RTP port (RFC 5761 4: payload types 64-95 with the marker
    /// bit, i.e. second byte 192-223): tolerated and ignored.
    Rtcp,
    /// Not RTP at all (STUN, garbage, truncated).
    Invalid,
}

/// Parses a datagram received on an RTP port.
pub fn parse(buf: &[u8]) -> Received<'_> {
    if buf.len() < HEADER_LEN || buf[0] >> 6 != 2 {
        return Received::Invalid;
    }
    if (192..=223).contains(&buf[1]) {
        return Received::Rtcp;
    }
    let csrc_count = (buf[0] & 0x0f) as usize;
    let mut start = HEADER_LEN + 4 * csrc_count;
    if buf[0] & 0x10 != 0 {
        // Header extension: 16-bit profile, 16-bit length in 32-bit words (RFC 3550 5.3.1).
        if buf.len() < start + 4 {
            return Received::Invalid;
        }
        let words = u16::from_be_bytes([buf[start + 2], buf[start + 3]]) as usize;
        start += 4 + 4 * words;
    }
    let mut end = buf.len();
    if buf[0] & 0x20 != 0 {
        // Padding: the last byte says how many bytes to drop.
        let pad = buf[buf.len() - 1] as usize;
        if pad == 0 || pad > end {
            return Received::Invalid;
        }
        end -= pad;
    }
    if start > end {
        return Received::Invalid;
    }
    Received::Rtp(RtpPacket {
        payload_type: buf[1] & 0x7f,
        marker: buf[1] & 0x80 != 0,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload: &buf[start..end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_sequence() {
        let mut s = RtpSender {
            ssrc: 0xdeadbeef,
            seq: 65535,
            timestamp: u32::MAX - 100,
            marker: true,
        };
        let mut buf = [0u8; HEADER_LEN + 4];
        s.write_header(&mut buf, 0, 160);
        let Received::Rtp(p) = parse(&buf) else {
            panic!("not rtp")
        };
        assert_eq!(
            (p.payload_type, p.marker, p.seq, p.timestamp, p.ssrc),
            (0, true, 65535, u32::MAX - 100, 0xdeadbeef)
        );
        assert_eq!(p.payload.len(), 4);
        s.write_header(&mut buf, 8, 160);
        let Received::Rtp(p) = parse(&buf) else {
            panic!("not rtp")
        };
        // Sequence and timestamp wrap; the marker is only on the first packet.
        assert_eq!(
            (p.payload_type, p.marker, p.seq, p.timestamp),
            (8, false, 0, 59)
        );
    }

    #[test]
    fn rtcp_extension_padding_and_garbage() {
        let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&rtcp), Received::Rtcp);
        assert_eq!(parse(&[0x80, 0]), Received::Invalid);
        assert_eq!(parse(&[0x40; 20]), Received::Invalid);
        // One CSRC, an extension of one word, two bytes of payload and two of padding.
        let mut p = vec![0xB1, 101, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&[0, 0, 0, 3]); // CSRC
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]); // extension
        p.extend_from_slice(&[5, 6, 0, 2]); // payload + padding
        let Received::Rtp(r) = parse(&p) else {
            panic!("not rtp")
        };
        assert_eq!(r.payload, &[5, 6]);
        assert_eq!(r.payload_type, 101);
    }
}

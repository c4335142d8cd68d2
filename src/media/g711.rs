//! G.711 companding: mu-law (PCMU, RTP payload type 0) and A-law (PCMA,
//! payload type 8), the two codecs every SIP phone and trunk speaks.
//!
//! Decoding uses 256-entry tables built at compile time by `const fn`, so a
//! decode is one indexed load. Encoding uses the classic segment search of
//! the ITU-T G.191 / Sun reference code, but finds the segment with
//! `leading_zeros` instead of a loop, so it is branch-light and needs no
//! 64 KiB encode table.
//!
//! This is hand-written rather than taken from a crate (e.g.
//! `audio-codec-algorithms`): the whole codec is ~60 lines, the reference
//! algorithm is public and stable since 1972, and the exhaustive tests below
//! check every code and every 16-bit sample, so a dependency would buy
//! nothing but supply-chain surface.
//!
//! Conventions (identical to the G.191 reference and to what Asterisk,
//! FreeSWITCH and SoX emit):
//! - Linear samples are 16-bit; mu-law uses the top 14 bits, A-law the top
//!   13 bits. Decoded values are the midpoints of the quantisation
//!   intervals, scaled back to 16 bits: mu-law spans ±32124, A-law ±32256.
//! - Code bytes are the *transmitted* form: mu-law is bit-inverted, A-law has
//!   its even bits inverted (XOR 0x55), so silence is 0xFF resp. 0xD5.
//! - Mu-law has two codes for zero (0xFF "+0" and 0x7F "-0"); both decode to
//!   0 and the encoder always emits 0xFF for 0. A-law has no zero code: the
//!   smallest magnitude is ±8, and 0 encodes to 0xD5 (+8).

/// Mu-law byte for digital silence (+0). Used to fill comfort/silence frames.
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law byte for digital silence (the smallest positive level, +8).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Bias added before the mu-law segment search, so that the segments line
/// up on powers of two (G.711 section 3.2, scaled to 16-bit input).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude that can be biased without overflowing segment 7.
const ULAW_CLIP: i32 = 32635;

const fn ulaw_decode_const(byte: u8) -> i16 {
    let b = !byte;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0F) as i32;
    // Midpoint of the interval, with the bias removed again.
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if b & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_decode_const(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let segment = ((a & 0x70) >> 4) as i32;
    let mut t = ((a & 0x0F) as i32) << 4;
    // Segments 0 and 1 share the same step size; from 2 on it doubles.
    t += match segment {
        0 => 8,
        _ => 0x108,
    };
    if segment > 1 {
        t <<= segment - 1;
    }
    if a & 0x80 != 0 { t as i16 } else { -t as i16 }
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw {
            alaw_decode_const(i as u8)
        } else {
            ulaw_decode_const(i as u8)
        };
        i += 1;
    }
    table
}

/// Mu-law code byte -> 16-bit linear sample.
static ULAW_TO_LINEAR: [i16; 256] = build_table(false);
/// A-law code byte -> 16-bit linear sample.
static ALAW_TO_LINEAR: [i16; 256] = build_table(true);

/// Encodes one 16-bit linear sample as a mu-law byte.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut x = i32::from(sample);
    let sign: u8 = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    let x = x.min(ULAW_CLIP) + ULAW_BIAS;
    // x is in 132..=32767, so x >> 7 is in 1..=255 and its highest set bit
    // is the segment (exponent) 0..=7.
    let exponent = 7 - ((x >> 7) as u8).leading_zeros() as i32;
    let mantissa = (x >> (exponent + 3)) & 0x0F;
    !(sign | ((exponent as u8) << 4) | mantissa as u8)
}

/// Decodes one mu-law byte to a 16-bit linear sample.
#[inline]
pub fn ulaw_decode(byte: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(byte)]
}

/// Encodes one 16-bit linear sample as an A-law byte.
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law works on 13 bits. Negative values are mapped to one's
    // complement magnitude (-1 -> 0) so both signs quantise symmetrically.
    let v = i32::from(sample) >> 3;
    let (mask, magnitude) = if v >= 0 {
        (0xD5u8, v)
    } else {
        (0x55u8, -v - 1)
    };
    // magnitude is in 0..=4095. Segment 0 covers 0..=31, segment s >= 1
    // covers 16 << s ..= (32 << s) - 1, i.e. it is set by the highest bit.
    let segment = if magnitude < 32 {
        0
    } else {
        27 - (magnitude as u32).leading_zeros() as i32
    };
    let shift = if segment < 2 { 1 } else { segment };
    let code = ((segment as u8) << 4) | ((magnitude >> shift) & 0x0F) as u8;
    code ^ mask
}

/// Decodes one A-law byte to a 16-bit linear sample.
#[inline]
pub fn alaw_decode(byte: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(byte)]
}

/// Encodes `src` into `dst` as mu-law. Converts `min(src.len(), dst.len())`
/// samples and leaves any excess of `dst` untouched; never allocates, so it
/// is safe on the per-packet path.
pub fn encode_ulaw_into(src: &[i16], dst: &mut [u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = ulaw_encode(s);
    }
}

/// Decodes mu-law `src` into `dst`. Converts `min(src.len(), dst.len())`
/// samples; never allocates.
pub fn decode_ulaw_into(src: &[u8], dst: &mut [i16]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = ulaw_decode(b);
    }
}

/// Encodes `src` into `dst` as A-law. Converts `min(src.len(), dst.len())`
/// samples; never allocates.
pub fn encode_alaw_into(src: &[i16], dst: &mut [u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = alaw_encode(s);
    }
}

/// Decodes A-law `src` into `dst`. Converts `min(src.len(), dst.len())`
/// samples; never allocates.
pub fn decode_alaw_into(src: &[u8], dst: &mut [i16]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = alaw_decode(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_samples() -> impl Iterator<Item = i16> {
        i16::MIN..=i16::MAX
    }

    #[test]
    fn ulaw_known_values() {
        // Decoder outputs from G.711 table 2 (14-bit values x 4).
        let cases: &[(u8, i16)] = &[
            (0xFF, 0),      // +0
            (0x7F, 0),      // -0
            (0xFE, 8),      // 14-bit 2: first step of segment 1
            (0x7E, -8),     //
            (0xF0, 120),    // 14-bit 30: top of segment 1
            (0xEF, 132),    // 14-bit 33: first value of segment 2
            (0x8F, 16764),  // 14-bit 4191: first value of segment 8
            (0x80, 32124),  // 14-bit 8031: largest positive
            (0x00, -32124), // largest negative
        ];
        for &(code, linear) in cases {
            assert_eq!(ulaw_decode(code), linear, "decode {code:#04x}");
        }
        assert_eq!(ulaw_encode(0), ULAW_SILENCE);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_encode(8), 0xFE);
        assert_eq!(ulaw_encode(-8), 0x7E);
        assert_eq!(ulaw_encode(132), 0xEF);
        assert_eq!(ulaw_decode(ULAW_SILENCE), 0);
    }

    #[test]
    fn alaw_known_values() {
        // Decoder outputs from G.711 table 1 (13-bit values x 8).
        let cases: &[(u8, i16)] = &[
            (0xD5, 8),      // 13-bit 1: smallest positive
            (0x55, -8),     // smallest negative
            (0xD4, 24),     // 13-bit 3
            (0xC5, 264),    // 13-bit 33: first value of segment 1
            (0xF5, 528),    // 13-bit 66: first value of segment 2
            (0xAA, 32256),  // 13-bit 4032: largest positive
            (0x2A, -32256), // largest negative
        ];
        for &(code, linear) in cases {
            assert_eq!(alaw_decode(code), linear, "decode {code:#04x}");
        }
        assert_eq!(alaw_encode(0), ALAW_SILENCE);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_encode(264), 0xC5);
    }

    #[test]
    fn ulaw_code_round_trip() {
        for b in 0..=255u8 {
            let linear = ulaw_decode(b);
            assert_eq!(ulaw_decode(ulaw_encode(linear)), linear, "code {b:#04x}");
            // "-0" (0x7F) is the only code that does not come back as
            // itself: zero is always encoded as "+0".
            let expected = if b == 0x7F { 0xFF } else { b };
            assert_eq!(ulaw_encode(linear), expected, "code {b:#04x}");
        }
    }

    #[test]
    fn alaw_code_round_trip() {
        for b in 0..=255u8 {
            let linear = alaw_decode(b);
            assert_eq!(alaw_encode(linear), b, "code {b:#04x}");
            assert_eq!(alaw_decode(alaw_encode(linear)), linear);
        }
    }

    #[test]
    fn decode_tables_cover_expected_levels() {
        let mut u: Vec<i16> = (0..=255u8).map(ulaw_decode).collect();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 255, "mu-law: 256 codes, two of them zero");
        let mut a: Vec<i16> = (0..=255u8).map(alaw_decode).collect();
        a.sort_unstable();
        a.dedup();
        assert_eq!(a.len(), 256, "A-law: every code distinct");
    }

    #[test]
    fn quantisation_is_monotonic() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for x in all_samples() {
            let u = ulaw_decode(ulaw_encode(x));
            let a = alaw_decode(alaw_encode(x));
            assert!(u >= prev_u, "mu-law not monotonic at {x}");
            assert!(a >= prev_a, "A-law not monotonic at {x}");
            prev_u = u;
            prev_a = a;
        }
        assert_eq!(prev_u, 32124);
        assert_eq!(prev_a, 32256);
    }

    #[test]
    fn ulaw_error_is_bounded() {
        for x in all_samples() {
            let err = (i32::from(ulaw_decode(ulaw_encode(x))) - i32::from(x)).abs();
            let mag = i32::from(x).abs();
            // Half a step in segment e is 4 << e while |x| + bias >= 128 << e,
            // so the error is at most 1/32 of (|x| + bias). This also covers
            // the clipped range above 32635.
            assert!(err * 32 <= mag + ULAW_BIAS, "x={x} err={err}");
            // Absolute floor: the finest step is 8, half of it 4.
            if mag < 120 {
                assert!(err <= 4, "x={x} err={err}");
            }
        }
    }

    #[test]
    fn alaw_error_is_bounded() {
        for x in all_samples() {
            let err = (i32::from(alaw_decode(alaw_encode(x))) - i32::from(x)).abs();
            let mag = i32::from(x).abs();
            // Segments 0 and 1 have a uniform step of 16 (16-bit scale), so
            // the error there is at most 8 plus the 3 bits dropped by the
            // 13-bit truncation. Above that, half a step is at most 1/32 of
            // the segment's lower edge.
            if mag < 512 {
                assert!(err <= 8 + 7, "x={x} err={err}");
            }
            assert!(err * 32 <= mag + 8 * 32, "x={x} err={err}");
        }
    }

    #[test]
    fn slice_helpers_match_scalar_and_respect_lengths() {
        let src: Vec<i16> = (-300..300).map(|i| (i * 109) as i16).collect();
        let mut u = vec![0u8; src.len()];
        let mut a = vec![0u8; src.len()];
        encode_ulaw_into(&src, &mut u);
        encode_alaw_into(&src, &mut a);
        for (i, &s) in src.iter().enumerate() {
            assert_eq!(u[i], ulaw_encode(s));
            assert_eq!(a[i], alaw_encode(s));
        }
        let mut du = vec![0i16; src.len()];
        let mut da = vec![0i16; src.len()];
        decode_ulaw_into(&u, &mut du);
        decode_alaw_into(&a, &mut da);
        for i in 0..src.len() {
            assert_eq!(du[i], ulaw_decode(u[i]));
            assert_eq!(da[i], alaw_decode(a[i]));
        }

        // Mismatched lengths convert the common prefix and leave the rest.
        let mut short = [0x11u8; 4];
        encode_ulaw_into(&[0, 0], &mut short);
        assert_eq!(short, [0xFF, 0xFF, 0x11, 0x11]);
        let mut long = [7i16; 2];
        decode_alaw_into(&[0xD5, 0x55, 0xD5], &mut long);
        assert_eq!(long, [8, -8]);
    }
}

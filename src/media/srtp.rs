//! SRTP (RFC 3711) for the two suites SDES offers carry: AES_CM_128_HMAC_SHA1_80 and
//! AES_CM_128_HMAC_SHA1_32. Sans-IO: [`SrtpSender::protect`] and [`SrtpReceiver::unprotect`]
//! work in place on the caller's buffer and allocate nothing.
//!
//! What is here, by RFC 3711 section:
//! - 4.1.1 AES in counter mode: the IV is `(k_s << 16) ^ (SSRC << 64) ^ (index << 16)`, the
//!   keystream the AES encryption of IV, IV + 1, ... ([`apply_keystream`]). Eight blocks are
//!   encrypted per call into a stack array, so AES-NI can pipeline them.
//! - 4.2 HMAC-SHA1 over the authenticated portion (header and encrypted payload) followed by
//!   the 32-bit rollover counter (ROC), truncated to 80 or 32 bits. The HMAC is keyed once per
//!   stream: its inner and outer pads are hashed when the stream's keys are derived, and each
//!   packet clones that state (a copy of a few hundred bytes, no allocation).
//! - 4.3 key derivation with the AES-CM PRF and key derivation rate 0: the session keys are
//!   derived once from the master key and salt (labels 0, 1, 2).
//! - 3.3.1 and Appendix A: the receiver estimates the ROC from the sequence number and the
//!   highest one it authenticated, and updates both only after a packet authenticated.
//! - 3.3.2 replay protection: a sliding window of [`REPLAY_WINDOW`] packet indices behind the
//!   highest authenticated one; older or seen indices are dropped before any HMAC is computed.
//!
//! Not here: SRTCP (ivrd opens no RTCP socket, and RTCP on the RTP port is ignored before it
//! would reach [`SrtpReceiver`]), MKI, key derivation rates other than 0, the F8 and GCM
//! suites, and re-keying (a new key comes with a new context, from a new SDP exchange).
//!
//! The sender's ROC counts its own sequence wraps; nothing here resets it. A context with the
//! same key must therefore live as long as the stream ([`crate::media::engine`] replaces it only
//! when the key changes): a new context with the same key would start at ROC 0 again and
//! reuse keystream.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::fmt;

/// Master key length for AES_CM_128 (RFC 3711 8.2; RFC 4568 6.2.1).
pub const MASTER_KEY_LEN: usize = 16;
/// Master salt length (112 bits).
pub const MASTER_SALT_LEN: usize = 14;
/// Key and salt together, as SDES `inline:` carries them (40 characters of base64).
pub const MASTER_LEN: usize = MASTER_KEY_LEN + MASTER_SALT_LEN;
/// The longest authentication tag of the suites we speak (HMAC_SHA1_80).
pub const MAX_TAG_LEN: usize = 10;
/// Packet indices behind the highest authenticated one that are still accepted (once).
/// RFC 3711 3.3.2 asks for at least 64; 128 is libsrtp's default.
pub const REPLAY_WINDOW: u64 = 128;
/// The fixed RTP header (no CSRC, no extension).
const RTP_HEADER: usize = 12;
/// AES blocks encrypted per call: enough to keep AES-NI busy, small enough for the stack.
const PARALLEL_BLOCKS: usize = 8;
const BLOCK: usize = 16;

/// The SDES crypto suites we support, in our order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 tag of 80 bits (RFC 4568 6.2.1).
    AesCm128HmacSha1_80,
    /// The same with a 32-bit tag (RFC 4568 6.2.2).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Every suite we speak, in the order our offers list them.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The name in `a=crypto` (RFC 4568 6.2).
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite an `a=crypto` names, if we speak it. RFC 4568 names are case-sensitive
    /// tokens; some peers write them in lower case, which cannot mean anything else.
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of authentication tag each packet carries.
    pub fn tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }

    /// Index in [`Suite::ALL`].
    pub fn index(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 0,
            Suite::AesCm128HmacSha1_32 => 1,
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A master key and salt. `Debug` prints `***`: keys never reach a log line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MasterKey([u8; MASTER_LEN]);

impl MasterKey {
    pub fn new(bytes: [u8; MASTER_LEN]) -> MasterKey {
        MasterKey(bytes)
    }

    /// A fresh key from the thread's CSPRNG (ChaCha12, seeded and reseeded from the OS).
    pub fn random() -> MasterKey {
        use rand::RngCore;
        let mut bytes = [0u8; MASTER_LEN];
        rand::rng().fill_bytes(&mut bytes);
        MasterKey(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<MasterKey> {
        Some(MasterKey(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; MASTER_LEN] {
        &self.0
    }

    fn key(&self) -> &[u8] {
        &self.0[..MASTER_KEY_LEN]
    }

    fn salt(&self) -> &[u8] {
        &self.0[MASTER_KEY_LEN..]
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// Why a packet could not be protected or was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// Not an RTP packet we can read (too short, not version 2, a header longer than the
    /// packet), or no room for the tag when protecting.
    #[error("not a usable RTP packet")]
    Malformed,
    /// The authentication tag does not match: a wrong key, a forgery, a damaged packet.
    #[error("authentication failed")]
    Auth,
    /// A packet index already seen, or too far behind the highest one (RFC 3711 3.3.2).
    #[error("replayed packet")]
    Replay,
}

/// Session keys of one direction: the AES key schedule, the session salt and the keyed HMAC.
#[derive(Clone)]
struct Transform {
    cipher: Aes128,
    salt: [u8; MASTER_SALT_LEN],
    mac: Hmac<Sha1>,
    tag_len: usize,
}

impl Transform {
    /// RFC 3711 4.3 with key derivation rate 0: each session key is the PRF keystream for
    /// its label.
    fn derive(suite: Suite, master: &MasterKey) -> Transform {
        let prf = Aes128::new(GenericArray::from_slice(master.key()));
        let mut cipher_key = [0u8; 16];
        let mut auth_key = [0u8; 20];
        let mut salt = [0u8; MASTER_SALT_LEN];
        derive_key(&prf, master.salt(), LABEL_RTP_ENCRYPTION, &mut cipher_key);
        derive_key(&prf, master.salt(), LABEL_RTP_AUTH, &mut auth_key);
        derive_key(&prf, master.salt(), LABEL_RTP_SALT, &mut salt);
        let t = Transform {
            cipher: Aes128::new(GenericArray::from_slice(&cipher_key)),
            salt,
            mac: <Hmac<Sha1> as Mac>::new_from_slice(&auth_key).expect("HMAC takes any key"),
            tag_len: suite.tag_len(),
        };
        cipher_key.fill(0);
        auth_key.fill(0);
        t
    }

    /// The counter-mode IV of one packet (RFC 3711 4.1.1).
    fn iv(&self, ssrc: u32, index: u64) -> [u8; BLOCK] {
        let mut iv = [0u8; BLOCK];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        iv
    }

    /// The full HMAC-SHA1 of `authenticated` || ROC.
    fn mac(&self, authenticated: &[u8], roc: u32) -> Hmac<Sha1> {
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        mac.update(&roc.to_be_bytes());
        mac
    }
}

const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;

/// PRF_n(k_master, x) with x = (label << 48) ^ master_salt (key derivation rate 0, so the
/// index part is 0): the AES-CM keystream under the master key with IV = x << 16.
fn derive_key(prf: &Aes128, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; BLOCK];
    iv[..MASTER_SALT_LEN].copy_from_slice(master_salt);
    // key_id is 56 bits (label, then 48 bits of index / rate = 0), right-aligned under the
    // 112-bit salt: the label lands on byte 7.
    iv[7] ^= label;
    out.fill(0);
    apply_keystream(prf, &iv, out);
}

/// XORs `data` with the AES-CM keystream starting at `iv` (whose last 16 bits are the block
/// counter, zero here). At most 2^16 blocks: an RTP packet is far shorter.
pub fn apply_keystream(cipher: &Aes128, iv: &[u8; BLOCK], data: &mut [u8]) {
    debug_assert!(
        data.len() <= BLOCK << 16,
        "keystream longer than 2^16 blocks"
    );
    let mut blocks = [GenericArray::from([0u8; BLOCK]); PARALLEL_BLOCKS];
    let mut counter: u16 = 0;
    for chunk in data.chunks_mut(BLOCK * PARALLEL_BLOCKS) {
        let n = chunk.len().div_ceil(BLOCK);
        for block in &mut blocks[..n] {
            block.copy_from_slice(iv);
            block[14..].copy_from_slice(&counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        cipher.encrypt_blocks(&mut blocks[..n]);
        // Block by block, so the 16-byte XOR vectorizes (a flattened iterator does not).
        for (bytes, key) in chunk.chunks_mut(BLOCK).zip(&blocks) {
            for (byte, k) in bytes.iter_mut().zip(key.iter()) {
                *byte ^= k;
            }
        }
    }
}

/// The RTP header length: fixed part, CSRCs and extension (RFC 3550 5.1, 5.3.1). Everything
/// after it is the payload that SRTP encrypts (padding included).
fn header_len(packet: &[u8]) -> Option<usize> {
    if packet.len() < RTP_HEADER || packet[0] >> 6 != 2 {
        return None;
    }
    let mut len = RTP_HEADER + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    (len <= packet.len()).then_some(len)
}

fn seq_and_ssrc(packet: &[u8]) -> (u16, u32) {
    (
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    )
}

/// The sending side of one stream (one SSRC, our key).
#[derive(Clone)]
pub struct SrtpSender {
    suite: Suite,
    t: Transform,
    roc: u32,
    last_seq: Option<u16>,
}

impl SrtpSender {
    pub fn new(suite: Suite, key: &MasterKey) -> SrtpSender {
        SrtpSender {
            suite,
            t: Transform::derive(suite, key),
            roc: 0,
            last_seq: None,
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Bytes `protect` adds.
    pub fn tag_len(&self) -> usize {
        self.t.tag_len
    }

    /// Turns the RTP packet in `buf[..len]` into SRTP in place and returns its new length
    /// (`len` + the tag). `buf` must have room for the tag after the packet. Our sequence
    /// numbers only move forward, so a number below the last one is a wrap: the ROC counts it.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let total = len + self.t.tag_len;
        if total > buf.len() {
            return Err(SrtpError::Malformed);
        }
        let header = header_len(&buf[..len]).ok_or(SrtpError::Malformed)?;
        let (seq, ssrc) = seq_and_ssrc(buf);
        if self.last_seq.is_some_and(|last| seq < last) {
            self.roc = self.roc.wrapping_add(1);
        }
        self.last_seq = Some(seq);
        let index = (u64::from(self.roc) << 16) | u64::from(seq);
        let iv = self.t.iv(ssrc, index);
        apply_keystream(&self.t.cipher, &iv, &mut buf[header..len]);
        let tag = self.t.mac(&buf[..len], self.roc).finalize().into_bytes();
        buf[len..total].copy_from_slice(&tag[..self.t.tag_len]);
        Ok(total)
    }

    /// The rollover counter of the last packet protected.
    pub fn roc(&self) -> u32 {
        self.roc
    }
}

/// The receiving side of one stream (the peer's key): ROC estimation and the replay window.
#[derive(Clone)]
pub struct SrtpReceiver {
    suite: Suite,
    t: Transform,
    /// ROC and highest sequence number authenticated (s_l); `None` before the first packet.
    roc: u32,
    s_l: Option<u16>,
    /// Highest packet index authenticated, and which of the `REPLAY_WINDOW` indices at and
    /// below it were seen (bit k: index `max - k`).
    max_index: Option<u64>,
    seen: u128,
}

impl SrtpReceiver {
    pub fn new(suite: Suite, key: &MasterKey) -> SrtpReceiver {
        SrtpReceiver {
            suite,
            t: Transform::derive(suite, key),
            roc: 0,
            s_l: None,
            max_index: None,
            seen: 0,
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Checks and decrypts the SRTP packet in `buf` in place; returns the length of the RTP
    /// packet (without the tag). On any error the packet must be dropped: nothing in the
    /// context changed, and the payload may be half-decrypted garbage.
    pub fn unprotect(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.t.tag_len;
        let len = buf.len().checked_sub(tag_len).ok_or(SrtpError::Malformed)?;
        let header = header_len(&buf[..len]).ok_or(SrtpError::Malformed)?;
        let (seq, ssrc) = seq_and_ssrc(buf);
        let roc = self.estimate_roc(seq).ok_or(SrtpError::Replay)?;
        let index = (u64::from(roc) << 16) | u64::from(seq);
        if self.is_replay(index) {
            return Err(SrtpError::Replay);
        }
        let (packet, tag) = buf.split_at_mut(len);
        self.t
            .mac(packet, roc)
            .verify_truncated_left(tag)
            .map_err(|_| SrtpError::Auth)?;
        let iv = self.t.iv(ssrc, index);
        apply_keystream(&self.t.cipher, &iv, &mut packet[header..]);
        self.accept(seq, roc, index);
        Ok(len)
    }

    /// RFC 3711 Appendix A: the ROC the sender most likely used for `seq`, given the highest
    /// sequence number authenticated so far. `None` for an index before the stream began.
    fn estimate_roc(&self, seq: u16) -> Option<u32> {
        let Some(s_l) = self.s_l else {
            return Some(self.roc);
        };
        let (seq, s_l) = (i32::from(seq), i32::from(s_l));
        if s_l < 32768 {
            if seq - s_l > 32768 {
                self.roc.checked_sub(1)
            } else {
                Some(self.roc)
            }
        } else if s_l - 32768 > seq {
            self.roc.checked_add(1)
        } else {
            Some(self.roc)
        }
    }

    fn is_replay(&self, index: u64) -> bool {
        match self.max_index {
            None => false,
            Some(max) if index > max => false,
            Some(max) => {
                let behind = max - index;
                behind >= REPLAY_WINDOW || self.seen & (1u128 << behind) != 0
            }
        }
    }

    /// Records an authenticated packet: ROC and s_l (3.3.1), and the replay window.
    fn accept(&mut self, seq: u16, roc: u32, index: u64) {
        match self.s_l {
            None => self.s_l = Some(seq),
            Some(_) if roc > self.roc => {
                self.roc = roc;
                self.s_l = Some(seq);
            }
            Some(s_l) if roc == self.roc && seq > s_l => self.s_l = Some(seq),
            Some(_) => {}
        }
        match self.max_index {
            Some(max) if index <= max => self.seen |= 1u128 << (max - index),
            Some(max) => {
                let ahead = index - max;
                self.seen = if ahead >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << ahead
                } | 1;
                self.max_index = Some(index);
            }
            None => {
                self.seen = 1;
                self.max_index = Some(index);
            }
        }
    }

    /// The receiver's current ROC (the one of the highest sequence number authenticated).
    pub fn roc(&self) -> u32 {
        self.roc
    }
}

/// Both directions of one stream's SRTP: the suite and the master key of each side. `Debug`
/// never prints the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrtpKeys {
    pub suite: Suite,
    /// Ours: what we protect with (sent in our SDP).
    pub send: MasterKey,
    /// The peer's: what we unprotect with (from its SDP).
    pub recv: MasterKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The master key and salt of RFC 3711 B.3 (also libsrtp's `srtp_validate` key).
    fn b3_master() -> MasterKey {
        MasterKey::from_slice(&hex(
            "E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6",
        ))
        .unwrap()
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
        let cipher = Aes128::new(GenericArray::from_slice(&key));
        let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
        // The whole segment of the RFC: 65,282 blocks, from counter 0000 to FF01.
        let mut stream = vec![0u8; 1_044_512];
        apply_keystream(&cipher, &iv, &mut stream);
        assert_eq!(
            stream[..48],
            hex("E03EAD0935C95E80E166B16DD92B4EB4
                 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0")[..]
        );
        assert_eq!(
            stream[stream.len() - 48..],
            hex("EC8CDF7398607CB0F2D21675EA9EA1E4
                 362B7C3C6773516318A077D7FC5073AE
                 6A2CC3787889374FBEB4C81B17BA6C44")[..]
        );
        // The IV the packet formula builds for SSRC 0, index 0 from that salt is the RFC's.
        let t = Transform {
            cipher,
            salt: hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap(),
            mac: <Hmac<Sha1> as Mac>::new_from_slice(&[0; 20]).unwrap(),
            tag_len: 10,
        };
        assert_eq!(t.iv(0, 0), iv);
        // SSRC and index land where 4.1.1 puts them.
        assert_eq!(
            t.iv(0x0102_0304, 0x0a0b_0c0d_0e0f)[..],
            hex("F0F1F2F3F5F7F5F3F2F2F6F6F2F20000")[..]
        );
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let master = b3_master();
        let prf = Aes128::new(GenericArray::from_slice(master.key()));
        let mut cipher_key = [0u8; 16];
        derive_key(&prf, master.salt(), LABEL_RTP_ENCRYPTION, &mut cipher_key);
        assert_eq!(cipher_key[..], hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
        let mut salt = [0u8; 14];
        derive_key(&prf, master.salt(), LABEL_RTP_SALT, &mut salt);
        assert_eq!(salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
        // The RFC lists 94 bytes of the label-1 keystream; the auth key is its first 20.
        let mut auth = [0u8; 94];
        derive_key(&prf, master.salt(), LABEL_RTP_AUTH, &mut auth);
        assert_eq!(
            auth[..],
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
            )[..]
        );
    }

    /// libsrtp's known-answer packet (`srtp_validate`, default policy = AES_CM_128_HMAC_SHA1_80,
    /// SSRC 0xcafebabe, sequence 0x1234): byte for byte what the reference implementation
    /// sends, so we interoperate with everything built on it (Asterisk, FreeSWITCH, baresip).
    #[test]
    fn libsrtp_known_answer_packet() {
        let plain = hex("800f1234decafbadcafebabe abababababababababababababababab");
        let cipher =
            hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb");
        let mut buf = [0u8; 64];
        buf[..plain.len()].copy_from_slice(&plain);
        let mut tx = SrtpSender::new(Suite::AesCm128HmacSha1_80, &b3_master());
        let n = tx.protect(&mut buf, plain.len()).unwrap();
        assert_eq!(buf[..n], cipher[..]);
        let mut rx = SrtpReceiver::new(Suite::AesCm128HmacSha1_80, &b3_master());
        let mut got = cipher.clone();
        assert_eq!(rx.unprotect(&mut got), Ok(plain.len()));
        assert_eq!(got[..plain.len()], plain[..]);
        // The 32-bit suite: same keystream, the tag is the first 4 bytes of the same HMAC.
        let mut buf = [0u8; 64];
        buf[..plain.len()].copy_from_slice(&plain);
        let mut tx32 = SrtpSender::new(Suite::AesCm128HmacSha1_32, &b3_master());
        let n = tx32.protect(&mut buf, plain.len()).unwrap();
        assert_eq!(buf[..n], cipher[..plain.len() + 4]);
    }

    fn packet(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn protect(tx: &mut SrtpSender, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_TAG_LEN, 0);
        let n = tx.protect(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn round_trip_both_suites_and_across_a_sequence_wrap() {
        for suite in Suite::ALL {
            let key = MasterKey::random();
            let mut tx = SrtpSender::new(suite, &key);
            let mut rx = SrtpReceiver::new(suite, &key);
            // 65530 .. 65535, 0 .. 9: the ROC goes to 1 on both sides.
            for i in 0..16u16 {
                let seq = 65530u16.wrapping_add(i);
                let payload: Vec<u8> = (0..160).map(|b| (b as u8) ^ (i as u8)).collect();
                let plain = packet(seq, 0x1234_5678, &payload);
                let mut wire = protect(&mut tx, &plain);
                assert_eq!(wire.len(), plain.len() + suite.tag_len());
                assert_ne!(wire[12..172], plain[12..], "payload encrypted");
                assert_eq!(wire[..12], plain[..12], "header in clear");
                let n = rx.unprotect(&mut wire).unwrap();
                assert_eq!(wire[..n], plain[..], "{suite} seq {seq}");
            }
            assert_eq!((tx.roc(), rx.roc()), (1, 1));
        }
    }

    #[test]
    fn reordering_around_a_wrap_and_the_replay_window() {
        let key = MasterKey::random();
        let suite = Suite::AesCm128HmacSha1_80;
        let mut tx = SrtpSender::new(suite, &key);
        let mut rx = SrtpReceiver::new(suite, &key);
        let wire: Vec<Vec<u8>> = (0..300u16)
            .map(|i| {
                protect(
                    &mut tx,
                    &packet(65400u16.wrapping_add(i), 7, &[i as u8; 20]),
                )
            })
            .collect();
        // 65400..=65534 in order, then one of the next epoch before the last of this one.
        for p in &wire[..135] {
            rx.unprotect(&mut p.clone()).unwrap();
        }
        rx.unprotect(&mut wire[140].clone()).unwrap(); // seq 4, ROC 1
        assert_eq!(rx.roc(), 1);
        let mut late = wire[135].clone(); // seq 65535, ROC 0: late but in the window
        assert_eq!(rx.unprotect(&mut late), Ok(32));
        assert_eq!(late[12..32], [135u8; 20]);
        // The same packet again, and any packet already seen: replays.
        assert_eq!(rx.unprotect(&mut wire[135].clone()), Err(SrtpError::Replay));
        assert_eq!(rx.unprotect(&mut wire[140].clone()), Err(SrtpError::Replay));
        // The gap fills in.
        for p in &wire[136..140] {
            rx.unprotect(&mut p.clone()).unwrap();
        }
        // Far ahead, then something more than the window behind it.
        rx.unprotect(&mut wire[299].clone()).unwrap();
        assert_eq!(
            rx.unprotect(&mut wire[141].clone()),
            Err(SrtpError::Replay),
            "158 behind the highest: outside the 128-packet window"
        );
        rx.unprotect(&mut wire[200].clone()).unwrap();
    }

    #[test]
    fn tampered_wrong_key_wrong_suite_and_short_packets_are_refused() {
        let key = MasterKey::random();
        let suite = Suite::AesCm128HmacSha1_80;
        let mut tx = SrtpSender::new(suite, &key);
        let plain = packet(100, 9, &[0x55; 160]);
        let wire = protect(&mut tx, &plain);
        // Any flipped bit, in header, payload or tag.
        for at in [1, 3, 11, 12, 100, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[at] ^= 0x01;
            let mut rx = SrtpReceiver::new(suite, &key);
            assert_eq!(rx.unprotect(&mut bad), Err(SrtpError::Auth), "byte {at}");
            // A failed packet changed nothing: the real one still goes through.
            assert_eq!(rx.unprotect(&mut wire.clone()), Ok(plain.len()));
        }
        let mut other = SrtpReceiver::new(suite, &MasterKey::random());
        assert_eq!(other.unprotect(&mut wire.clone()), Err(SrtpError::Auth));
        let mut short_tag = SrtpReceiver::new(Suite::AesCm128HmacSha1_32, &key);
        assert_eq!(short_tag.unprotect(&mut wire.clone()), Err(SrtpError::Auth));
        // Plain RTP is not SRTP.
        let mut rx = SrtpReceiver::new(suite, &key);
        assert_eq!(rx.unprotect(&mut plain.clone()), Err(SrtpError::Auth));
        for len in [0, 5, 12, 21] {
            assert_eq!(
                rx.unprotect(&mut wire[..len].to_vec()),
                Err(SrtpError::Malformed),
                "{len} bytes"
            );
        }
        // No room for the tag when protecting.
        let mut tight = plain.clone();
        assert_eq!(
            tx.protect(&mut tight, plain.len()),
            Err(SrtpError::Malformed)
        );
    }

    #[test]
    fn csrc_and_extension_stay_in_clear_and_authenticated() {
        let key = MasterKey::random();
        let suite = Suite::AesCm128HmacSha1_32;
        let mut tx = SrtpSender::new(suite, &key);
        let mut rx = SrtpReceiver::new(suite, &key);
        // One CSRC, a one-word extension, 4 bytes of payload.
        let mut plain = vec![0x91, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        plain.extend_from_slice(&[0, 0, 0, 3, 0xBE, 0xDE, 0, 1, 9, 9, 9, 9, 1, 2, 3, 4]);
        let mut wire = protect(&mut tx, &plain);
        assert_eq!(wire[..24], plain[..24]);
        assert_ne!(wire[24..28], plain[24..]);
        assert_eq!(rx.unprotect(&mut wire), Ok(plain.len()));
        assert_eq!(wire[..plain.len()], plain[..]);
        // An extension claiming more than the packet holds.
        let mut broken = plain.clone();
        broken[19] = 200;
        let mut out = broken.clone();
        out.resize(broken.len() + 4, 0);
        assert_eq!(
            tx.protect(&mut out, broken.len()),
            Err(SrtpError::Malformed)
        );
    }

    /// The fuzz seeds are written by an independent implementation (Python, over the
    /// `cryptography` package's AES: `fuzz/scripts/make_seeds.py`); they authenticate here.
    #[test]
    fn seeds_from_the_independent_implementation_authenticate() {
        let key = MasterKey::new(crate::fuzzing::SRTP_FUZZ_KEY);
        let one = |suite: Suite, bytes: &[u8]| {
            let mut buf = bytes.to_vec();
            SrtpReceiver::new(suite, &key).unprotect(&mut buf)
        };
        let s80 = Suite::AesCm128HmacSha1_80;
        let s32 = Suite::AesCm128HmacSha1_32;
        assert_eq!(
            one(s80, include_bytes!("../../fuzz/corpus/srtp/pcmu_80.bin")),
            Ok(172)
        );
        assert_eq!(
            one(s32, include_bytes!("../../fuzz/corpus/srtp/pcmu_32.bin")),
            Ok(172)
        );
        assert_eq!(
            one(s80, include_bytes!("../../fuzz/corpus/srtp/event_5_80.bin")),
            Ok(16)
        );
        assert_eq!(
            one(
                s80,
                include_bytes!("../../fuzz/corpus/srtp/libsrtp_validate.bin")
            ),
            Ok(28)
        );
        // Six packets across a sequence wrap: the receiver follows the ROC to 1.
        let mut rx = SrtpReceiver::new(s80, &key);
        let mut rest = &include_bytes!("../../fuzz/corpus/srtp/seq_wrap_80.bin")[..];
        let mut n = 0;
        while let Some((&len, tail)) = rest.split_first() {
            let (packet, tail) = tail.split_at(usize::from(len));
            assert_eq!(rx.unprotect(&mut packet.to_vec()), Ok(52), "packet {n}");
            n += 1;
            rest = tail;
        }
        assert_eq!((n, rx.roc()), (6, 1));
    }

    #[test]
    fn keys_never_print() {
        let keys = SrtpKeys {
            suite: Suite::AesCm128HmacSha1_80,
            send: MasterKey::new([0xAB; MASTER_LEN]),
            recv: MasterKey::new([0xCD; MASTER_LEN]),
        };
        let text = format!("{keys:?}");
        assert!(
            !text.contains("171") && !text.to_lowercase().contains("ab, "),
            "{text}"
        );
        assert!(text.contains("***"));
        assert_eq!(
            Suite::from_name("aes_cm_128_hmac_sha1_32"),
            Some(Suite::AesCm128HmacSha1_32)
        );
        assert_eq!(Suite::from_name("AES_256_CM_HMAC_SHA1_80"), None);
    }
}

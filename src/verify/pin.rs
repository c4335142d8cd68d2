//! One-time PINs: generation from the OS CSPRNG and a vault that never holds them in clear.
//!
//! A [`Pin`] exists in clear only between [`PinVault::issue`] and the rendering of the SMS text
//! ([`Pin::expose`]); its `Debug` and `Display` print `****` so that a stray `{:?}` in a log line
//! cannot leak it, and its memory is zeroed on drop. The vault keeps, per subject (the customer
//! id), only `HMAC-SHA256(key, pin)` under a random key drawn once per process, so a memory dump
//! or a debug print of the vault shows no PIN, and digests from one run are useless in the next.
//! A PIN is single use, expires (5 minutes by default, 10 at most) and allows a few wrong tries.
//!
//! A second send for a subject while its PIN is valid sends the same PIN again
//! ([`PinVault::issue_or_resend`]), as Twilio Verify and tyntec do: a second call for the same
//! customer (an impatient customer, or someone typing their id) must neither void the code the
//! real caller is about to type nor leave the customer with two different codes. For that the
//! vault also keeps the PIN sealed with AES-256-GCM under a second per-process key that lives
//! only in memory: nothing on disk, in logs or in a database ever holds it, and a restart makes
//! every sealed PIN unreadable (the next send is a fresh PIN). The resend neither extends the
//! PIN's validity nor restores its tries.
//!
//! Time is a parameter (`now: Instant`) everywhere, so the simulator can drive a virtual clock.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Fewest digits a PIN may have.
pub const MIN_LENGTH: usize = 4;
/// Most digits a PIN may have.
pub const MAX_LENGTH: usize = 10;
/// How long a PIN is valid unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest validity we allow: a PIN that lives longer is a password, not a one-time code.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 60);
/// Wrong tries per PIN unless configured otherwise.
pub const DEFAULT_TRIES: u32 = 3;

/// Why a PIN or a vault could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The requested length is outside 4..=10.
    #[error("a PIN must have {MIN_LENGTH} to {MAX_LENGTH} digits, not {0}")]
    Length(usize),
    /// The operating system's random number generator failed (no PIN without real randomness).
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
    /// The validity is zero or longer than [`MAX_TTL`].
    #[error("a PIN must be valid for more than 0 seconds and at most 10 minutes, not {0:?}")]
    Ttl(Duration),
    /// Zero tries would make every PIN useless.
    #[error("a PIN must allow at least one try")]
    NoTries,
    /// The secret the nodes share for their PIN keys is too short to be one.
    #[error("the shared PIN secret has {0} bytes; it needs 32 at least (`openssl rand -hex 32`)")]
    Secret(usize),
}

/// A PIN in clear. Prints as `****`; zeroed on drop; deliberately neither `Clone` nor `PartialEq`
/// (comparisons belong in the vault, in constant time).
pub struct Pin(Zeroizing<String>, Issue);

/// Whether a PIN handed out by the vault is new or the outstanding one sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    New,
    /// The subject's PIN was still valid and is sent again: if this send fails, the PIN must
    /// stay (the first SMS delivered it).
    Resend,
}

impl Pin {
    /// Draws `length` uniformly distributed decimal digits from the OS CSPRNG.
    pub fn generate(length: usize) -> Result<Pin, PinError> {
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
            return Err(PinError::Length(length));
        }
        // Allocated once at its final size, so no reallocation leaves a copy of digits behind.
        let mut digits = Zeroizing::new(String::with_capacity(length));
        let mut bytes = Zeroizing::new([0u8; 32]);
        while digits.len() < length {
            OsRng
                .try_fill_bytes(bytes.as_mut())
                .map_err(|e| PinError::Rng(e.to_string()))?;
            for &b in bytes.iter() {
                // Rejection sampling: 250 is the largest multiple of 10 that fits in a byte, so
                // bytes 0..250 map onto each digit exactly 25 times; 250..=255 would bias 0..5.
                if b < 250 && digits.len() < length {
                    digits.push(char::from(b'0' + b % 10));
                }
            }
        }
        Ok(Pin(digits, Issue::New))
    }

    /// The outstanding PIN, unsealed for a resend.
    pub(crate) fn resent(digits: Zeroizing<String>) -> Pin {
        Pin(digits, Issue::Resend)
    }

    /// New, or the outstanding PIN sent again.
    pub fn issue(&self) -> Issue {
        self.1
    }

    /// The digits, for rendering the SMS text only. Never log, store or compare with this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a generated PIN; here because clippy expects it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(****)")
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// The two keys a vault works with: one for the PINs' HMAC digests, one that seals the digits
/// for a resend (AES-256-GCM). Random per process for the in-memory vault; derived from a
/// secret every node shares for the vault in the database ([`PinKeys::derive`]).
pub struct PinKeys {
    mac: Zeroizing<[u8; 32]>,
    seal: LessSafeKey,
}

impl fmt::Debug for PinKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinKeys(..)")
    }
}

impl PinKeys {
    /// Fresh keys from the OS CSPRNG.
    pub fn random() -> Result<PinKeys, PinError> {
        let mut mac = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(mac.as_mut())
            .map_err(|e| PinError::Rng(e.to_string()))?;
        let mut seal = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(seal.as_mut())
            .map_err(|e| PinError::Rng(e.to_string()))?;
        Ok(PinKeys::from_parts(mac, &seal))
    }

    /// Keys derived from a shared secret (HMAC-SHA256 of a label under it, one per key), so
    /// that every node digests and seals alike and neither key is the secret itself.
    pub fn derive(secret: &[u8]) -> PinKeys {
        let part = |label: &[u8]| {
            let mut mac =
                HmacSha256::new_from_slice(secret).expect("HMAC-SHA256 accepts keys of any length");
            mac.update(label);
            Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()))
        };
        PinKeys::from_parts(part(b"ivrd pin digest"), &part(b"ivrd pin seal"))
    }

    fn from_parts(mac: Zeroizing<[u8; 32]>, seal: &[u8; 32]) -> PinKeys {
        let seal =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, seal).expect("a 32-byte AES-256 key"));
        PinKeys { mac, seal }
    }

    /// The digest of `pin` for `subject`: bound to the subject, so a digest copied to another
    /// subject's row checks nothing.
    pub fn digest(&self, subject: &str, pin: &str) -> [u8; 32] {
        self.mac_of(subject, pin).finalize().into_bytes().into()
    }

    /// Whether `input` is the PIN whose digest is `digest`, compared in constant time
    /// (`verify_slice` uses `subtle::ConstantTimeEq`), whatever the input's length or content.
    pub fn matches(&self, subject: &str, input: &str, digest: &[u8]) -> bool {
        self.mac_of(subject, input).verify_slice(digest).is_ok()
    }

    fn mac_of(&self, subject: &str, pin: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.mac.as_ref())
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(subject.as_bytes());
        mac.update(&[0]);
        mac.update(pin.as_bytes());
        mac
    }

    /// The digits sealed for `subject`: nonce, ciphertext, tag.
    pub fn seal(&self, subject: &str, digits: &str) -> Result<Vec<u8>, PinError> {
        let mut nonce = [0u8; NONCE_LEN];
        // A random 96-bit nonce per seal, safe for 2^32 seals under one key. A process's
        // random key seals a few PINs a second for its life; a key derived from the shared
        // secret serves every node for as long as the secret is kept: at 10 PINs a second
        // that is 13 years, so rotate the secret well before (README, shared PINs).
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| PinError::Rng(e.to_string()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + digits.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(digits.as_bytes());
        let tag = self
            .seal
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(subject.as_bytes()),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| PinError::Rng("AES-GCM seal failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The digits [`PinKeys::seal`] sealed for `subject`, if these keys sealed them.
    pub fn unseal(&self, subject: &str, sealed: &[u8]) -> Option<Zeroizing<String>> {
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let clear = self
            .seal
            .open_in_place(nonce, Aad::from(subject.as_bytes()), buf.as_mut())
            .ok()?;
        let mut digits = Zeroizing::new(String::with_capacity(clear.len()));
        for &b in clear.iter() {
            digits.push(char::from(b));
        }
        Some(digits)
    }
}

/// The result of checking an entered PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// Correct; the PIN is now consumed.
    Valid,
    /// Wrong; `tries_left` more attempts on this PIN.
    Invalid { tries_left: u32 },
    /// Wrong, and that was the last try: the PIN is now void.
    Exhausted,
    /// The PIN expired before this attempt (it is now removed).
    Expired,
    /// No PIN is outstanding for this subject (never issued, consumed, voided or purged).
    NoPin,
}

/// What the vault remembers of one issued PIN: its keyed digest for checking, and the digits
/// sealed under the in-memory sealing key for a resend; never the digits in clear.
struct Entry {
    digest: [u8; 32],
    /// Nonce, then the AES-256-GCM ciphertext and tag of the digits.
    sealed: Vec<u8>,
    length: usize,
    expires: Instant,
    tries_left: u32,
}

/// Outstanding PINs by subject, as HMAC digests under a per-process key.
pub struct PinVault {
    /// Drawn once per process, never stored.
    keys: PinKeys,
    ttl: Duration,
    tries: u32,
    entries: HashMap<String, Entry>,
}

impl fmt::Debug for PinVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the key nor the digests: only what helps debugging.
        f.debug_struct("PinVault")
            .field("ttl", &self.ttl)
            .field("tries", &self.tries)
            .field("outstanding", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// The rules every vault takes (in memory or shared): a validity within (0, [`MAX_TTL`]] and
/// at least one try.
pub(crate) fn check_rules(ttl: Duration, tries: u32) -> Result<(), PinError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(PinError::Ttl(ttl));
    }
    if tries == 0 {
        return Err(PinError::NoTries);
    }
    Ok(())
}

impl PinVault {
    /// A vault whose PINs live `ttl` (at most [`MAX_TTL`]) and allow `tries` wrong attempts,
    /// with a fresh 32-byte key from the OS CSPRNG.
    pub fn new(ttl: Duration, tries: u32) -> Result<PinVault, PinError> {
        check_rules(ttl, tries)?;
        Ok(PinVault {
            keys: PinKeys::random()?,
            ttl,
            tries,
            entries: HashMap::new(),
        })
    }

    /// [`DEFAULT_TTL`] and [`DEFAULT_TRIES`].
    pub fn with_defaults() -> Result<PinVault, PinError> {
        PinVault::new(DEFAULT_TTL, DEFAULT_TRIES)
    }

    /// How long an issued PIN stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Creates a PIN of `length` digits for `subject`, replacing any outstanding one.
    /// The caller sends it and drops it; the vault keeps only its digest.
    pub fn issue(&mut self, subject: &str, length: usize, now: Instant) -> Result<Pin, PinError> {
        let pin = Pin::generate(length)?;
        self.purge_expired(now);
        let entry = Entry {
            digest: self.keys.digest(subject, pin.expose()),
            sealed: self.keys.seal(subject, pin.expose())?,
            length,
            expires: now + self.ttl,
            tries_left: self.tries,
        };
        self.entries.insert(subject.to_owned(), entry);
        Ok(pin)
    }

    /// The subject's outstanding PIN again if it is still valid, has tries left and has
    /// `length` digits (same validity, same tries: a resend restores nothing); otherwise a new
    /// one, as [`PinVault::issue`].
    pub fn issue_or_resend(
        &mut self,
        subject: &str,
        length: usize,
        now: Instant,
    ) -> Result<Pin, PinError> {
        self.purge_expired(now);
        if let Some(entry) = self.entries.get(subject)
            && entry.length == length
            && entry.tries_left > 0
            && let Some(digits) = self.keys.unseal(subject, &entry.sealed)
        {
            return Ok(Pin(digits, Issue::Resend));
        }
        self.issue(subject, length, now)
    }

    /// Checks `input` against the outstanding PIN of `subject`.
    ///
    /// The input's digest is compared with the stored one in constant time, whatever the input's
    /// length or content: a wrong-length input costs a try like any other wrong input, and no
    /// early exit tells an attacker how many leading digits were right.
    pub fn check(&mut self, subject: &str, input: &str, now: Instant) -> PinCheck {
        let outcome = match self.entries.get_mut(subject) {
            None => PinCheck::NoPin,
            Some(entry) if now >= entry.expires => PinCheck::Expired,
            Some(entry) => {
                if self.keys.matches(subject, input, &entry.digest) {
                    PinCheck::Valid
                } else {
                    entry.tries_left = entry.tries_left.saturating_sub(1);
                    match entry.tries_left {
                        0 => PinCheck::Exhausted,
                        tries_left => PinCheck::Invalid { tries_left },
                    }
                }
            }
        };
        // Single use: a valid, exhausted or expired PIN is gone after this call.
        if matches!(
            outcome,
            PinCheck::Valid | PinCheck::Exhausted | PinCheck::Expired
        ) {
            self.entries.remove(subject);
        }
        self.purge_expired(now);
        outcome
    }

    /// Voids the outstanding PIN of `subject` (e.g. the SMS could not be sent, or the customer
    /// was locked out). Returns whether there was one.
    pub fn revoke(&mut self, subject: &str) -> bool {
        self.entries.remove(subject).is_some()
    }

    /// Drops every PIN that has expired by `now`; `issue` and `check` call this, so the vault
    /// holds at most one entry per subject that asked for a PIN within the last TTL.
    pub fn purge_expired(&mut self, now: Instant) {
        self.entries.retain(|_, e| now < e.expires);
    }

    /// Number of outstanding (not yet purged) PINs.
    pub fn outstanding(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_in_range_are_all_digits_and_out_of_range_is_refused() {
        for len in MIN_LENGTH..=MAX_LENGTH {
            let pin = Pin::generate(len).unwrap();
            assert_eq!(pin.len(), len);
            assert!(pin.expose().bytes().all(|b| b.is_ascii_digit()));
        }
        for len in [0, 1, 3, 11, 100] {
            assert!(matches!(Pin::generate(len), Err(PinError::Length(l)) if l == len));
        }
        let msg = PinError::Length(3).to_string();
        assert_eq!(msg, "a PIN must have 4 to 10 digits, not 3");
    }

    #[test]
    fn digits_are_uniform_chi_square() {
        // 20 000 PINs of 10 digits = 200 000 digits. With 9 degrees of freedom the chi-square
        // statistic exceeds 27.9 with probability 0.001 and 40 with about 1e-5: a generous bound
        // that still catches a modulo bias (bytes % 10 without rejection gives chi2 ~ 190 here).
        let mut counts = [0u64; 10];
        for _ in 0..20_000 {
            let pin = Pin::generate(10).unwrap();
            for b in pin.expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        let total: u64 = counts.iter().sum();
        assert_eq!(total, 200_000);
        let expected = total as f64 / 10.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 40.0, "chi-square {chi2} too large: {counts:?}");
    }

    #[test]
    fn the_chi_square_bound_would_catch_a_modulo_bias() {
        // Guards the test above against being toothless: the same statistic over the biased
        // mapping (every byte % 10) must fail the bound.
        let mut counts = [0u64; 10];
        let mut bytes = [0u8; 1000];
        for _ in 0..200 {
            OsRng.try_fill_bytes(&mut bytes).unwrap();
            for &b in &bytes {
                counts[usize::from(b % 10)] += 1;
            }
        }
        let expected = 200_000.0 / 10.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 > 40.0, "biased chi-square {chi2} unexpectedly small");
    }

    #[test]
    fn debug_and_display_never_show_the_digits() {
        for _ in 0..50 {
            let pin = Pin::generate(6).unwrap();
            let clear = pin.expose().to_owned();
            let shown = [
                format!("{pin}"),
                format!("{pin:?}"),
                format!("{pin:#?}"),
                format!("{:?}", Some(&pin)),
            ];
            for s in &shown {
                assert!(!s.contains(&clear), "{s:?} leaks the PIN");
                assert!(!s.bytes().any(|b| b.is_ascii_digit()), "{s:?} shows digits");
            }
            assert_eq!(format!("{pin}"), "****");
        }
    }

    #[test]
    fn vault_debug_shows_neither_key_nor_digest() {
        let mut vault = PinVault::with_defaults().unwrap();
        let now = Instant::now();
        let pin = vault.issue("123456", 8, now).unwrap();
        let shown = format!("{vault:?}");
        assert!(!shown.contains(pin.expose()));
        let key_hex: String = vault.keys.mac.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&key_hex[..8]));
        assert!(!shown.contains(&format!("{:?}", vault.keys.mac.as_ref())));
        assert!(shown.contains("outstanding: 1"));
    }

    #[test]
    fn valid_pin_is_single_use() {
        let mut vault = PinVault::with_defaults().unwrap();
        let now = Instant::now();
        let pin = vault.issue("c1", 6, now).unwrap();
        assert_eq!(vault.check("c1", pin.expose(), now), PinCheck::Valid);
        assert_eq!(vault.check("c1", pin.expose(), now), PinCheck::NoPin);
        assert_eq!(vault.outstanding(), 0);
    }

    #[test]
    fn wrong_tries_count_down_then_exhaust_and_void_the_pin() {
        let mut vault = PinVault::new(DEFAULT_TTL, 3).unwrap();
        let now = Instant::now();
        let pin = vault.issue("c1", 4, now).unwrap();
        let wrong = wrong_input(pin.expose());
        assert_eq!(
            vault.check("c1", &wrong, now),
            PinCheck::Invalid { tries_left: 2 }
        );
        assert_eq!(
            vault.check("c1", &wrong, now),
            PinCheck::Invalid { tries_left: 1 }
        );
        assert_eq!(vault.check("c1", &wrong, now), PinCheck::Exhausted);
        // Void: even the right PIN no longer works.
        assert_eq!(vault.check("c1", pin.expose(), now), PinCheck::NoPin);
    }

    #[test]
    fn right_pin_after_a_wrong_try_is_valid() {
        let mut vault = PinVault::new(DEFAULT_TTL, 3).unwrap();
        let now = Instant::now();
        let pin = vault.issue("c1", 5, now).unwrap();
        let wrong = wrong_input(pin.expose());
        assert_eq!(
            vault.check("c1", &wrong, now),
            PinCheck::Invalid { tries_left: 2 }
        );
        assert_eq!(vault.check("c1", pin.expose(), now), PinCheck::Valid);
    }

    #[test]
    fn wrong_length_and_garbage_input_cost_a_try() {
        let mut vault = PinVault::new(DEFAULT_TTL, 4).unwrap();
        let now = Instant::now();
        let pin = vault.issue("c1", 6, now).unwrap();
        // A prefix of the right PIN, the PIN with a trailing '#', and the empty string.
        let prefix = &pin.expose()[..5];
        let with_hash = format!("{}#", pin.expose());
        assert_eq!(
            vault.check("c1", prefix, now),
            PinCheck::Invalid { tries_left: 3 }
        );
        assert_eq!(
            vault.check("c1", &with_hash, now),
            PinCheck::Invalid { tries_left: 2 }
        );
        assert_eq!(
            vault.check("c1", "", now),
            PinCheck::Invalid { tries_left: 1 }
        );
        assert_eq!(vault.check("c1", pin.expose(), now), PinCheck::Valid);
    }

    #[test]
    fn expiry_follows_the_given_clock() {
        let mut vault = PinVault::new(Duration::from_secs(300), 3).unwrap();
        let t0 = Instant::now();
        let pin = vault.issue("c1", 6, t0).unwrap();
        // One second before the end it still works (checked on a second PIN, as Valid consumes).
        let pin2 = vault.issue("c2", 6, t0).unwrap();
        assert_eq!(
            vault.check("c2", pin2.expose(), t0 + Duration::from_secs(299)),
            PinCheck::Valid
        );
        // At the expiry instant it is expired, even with the right digits, and then gone.
        assert_eq!(
            vault.check("c1", pin.expose(), t0 + Duration::from_secs(300)),
            PinCheck::Expired
        );
        assert_eq!(
            vault.check("c1", pin.expose(), t0 + Duration::from_secs(300)),
            PinCheck::NoPin
        );
    }

    #[test]
    fn expired_entries_of_other_subjects_are_purged() {
        let mut vault = PinVault::new(Duration::from_secs(60), 3).unwrap();
        let t0 = Instant::now();
        let _a = vault.issue("a", 6, t0).unwrap();
        let _b = vault.issue("b", 6, t0).unwrap();
        let later = t0 + Duration::from_secs(61);
        let c = vault.issue("c", 6, later).unwrap();
        assert_eq!(vault.outstanding(), 1, "a and b expired and were purged");
        assert_eq!(vault.check("a", "000000", later), PinCheck::NoPin);
        assert_eq!(vault.check("c", c.expose(), later), PinCheck::Valid);
    }

    #[test]
    fn reissue_replaces_the_old_pin_and_resets_tries() {
        let mut vault = PinVault::new(DEFAULT_TTL, 3).unwrap();
        let now = Instant::now();
        let old = vault.issue("c1", 10, now).unwrap();
        let wrong = wrong_input(old.expose());
        vault.check("c1", &wrong, now);
        vault.check("c1", &wrong, now);
        let new = vault.issue("c1", 10, now).unwrap();
        // Ten random digits: the chance that both PINs are equal is 1e-10.
        assert_ne!(old.expose(), new.expose());
        assert_eq!(
            vault.check("c1", old.expose(), now),
            PinCheck::Invalid { tries_left: 2 },
            "the old PIN is void and the tries start afresh"
        );
        assert_eq!(vault.check("c1", new.expose(), now), PinCheck::Valid);
    }

    #[test]
    fn a_resend_is_the_same_pin_with_the_same_expiry_and_tries() {
        let mut vault = PinVault::new(Duration::from_secs(300), 3).unwrap();
        let now = Instant::now();
        let first = vault.issue_or_resend("c1", 6, now).unwrap();
        assert_eq!(first.issue(), Issue::New);
        let wrong = wrong_input(first.expose());
        vault.check("c1", &wrong, now);
        let later = now + Duration::from_secs(200);
        let again = vault.issue_or_resend("c1", 6, later).unwrap();
        assert_eq!(again.issue(), Issue::Resend);
        assert_eq!(again.expose(), first.expose());
        // The resend restored no try and did not extend the validity.
        assert_eq!(
            vault.check("c1", &wrong, later),
            PinCheck::Invalid { tries_left: 1 }
        );
        assert_eq!(
            vault.check("c1", first.expose(), now + Duration::from_secs(301)),
            PinCheck::Expired,
            "expired at the first issue's deadline"
        );
    }

    #[test]
    fn no_resend_after_expiry_use_or_for_another_length() {
        let mut vault = PinVault::new(Duration::from_secs(300), 3).unwrap();
        let now = Instant::now();
        // Ten digits, so that two independent PINs are equal with probability 1e-10.
        let a = vault.issue_or_resend("c1", 10, now).unwrap();
        let after = now + Duration::from_secs(301);
        let b = vault.issue_or_resend("c1", 10, after).unwrap();
        assert_eq!(b.issue(), Issue::New, "expired");
        assert_ne!(a.expose(), b.expose());
        assert_eq!(vault.check("c1", b.expose(), after), PinCheck::Valid);
        let c = vault.issue_or_resend("c1", 10, after).unwrap();
        assert_eq!(c.issue(), Issue::New, "used");
        assert_ne!(b.expose(), c.expose());
        let d = vault.issue_or_resend("c1", 8, after).unwrap();
        assert_eq!(d.issue(), Issue::New, "another length");
        assert_eq!(d.expose().len(), 8);
        assert_eq!(
            vault.check("c1", c.expose(), after),
            PinCheck::Invalid { tries_left: 2 }
        );
        // A PIN whose tries ran out is not sent again.
        let e = vault.issue_or_resend("c2", 10, now).unwrap();
        for _ in 0..3 {
            vault.check("c2", &wrong_input(e.expose()), now);
        }
        let f = vault.issue_or_resend("c2", 10, now).unwrap();
        assert_eq!(f.issue(), Issue::New);
        assert_ne!(e.expose(), f.expose());
    }

    #[test]
    fn the_sealed_pin_opens_only_under_its_own_vaults_key() {
        let v1 = PinVault::with_defaults().unwrap();
        let v2 = PinVault::with_defaults().unwrap();
        let sealed = v1.keys.seal("c", "482913").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"482913"));
        assert_eq!(v1.keys.unseal("c", &sealed).unwrap().as_str(), "482913");
        assert!(
            v2.keys.unseal("c", &sealed).is_none(),
            "another process's key"
        );
        assert!(
            v1.keys.unseal("d", &sealed).is_none(),
            "sealed for another subject"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(v1.keys.unseal("c", &tampered).is_none());
        assert!(v1.keys.unseal("c", &sealed[..5]).is_none());
    }

    #[test]
    fn subjects_are_independent() {
        let mut vault = PinVault::with_defaults().unwrap();
        let now = Instant::now();
        let a = vault.issue("a", 8, now).unwrap();
        let b = vault.issue("b", 8, now).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(
            vault.check("a", b.expose(), now),
            PinCheck::Invalid { tries_left: 2 }
        );
        assert_eq!(vault.check("b", b.expose(), now), PinCheck::Valid);
        assert_eq!(vault.check("a", a.expose(), now), PinCheck::Valid);
    }

    #[test]
    fn revoke_voids_the_pin() {
        let mut vault = PinVault::with_defaults().unwrap();
        let now = Instant::now();
        let pin = vault.issue("c1", 6, now).unwrap();
        assert!(vault.revoke("c1"));
        assert!(!vault.revoke("c1"));
        assert_eq!(vault.check("c1", pin.expose(), now), PinCheck::NoPin);
    }

    #[test]
    fn digest_depends_on_the_vault_key() {
        let v1 = PinVault::with_defaults().unwrap();
        let v2 = PinVault::with_defaults().unwrap();
        assert_ne!(v1.keys.mac.as_ref(), v2.keys.mac.as_ref());
        let d = |v: &PinVault, s: &str, pin: &str| v.keys.digest(s, pin);
        assert_ne!(d(&v1, "c", "123456"), d(&v2, "c", "123456"));
        // Deterministic under one key, bound to the subject, and not the plain SHA-256.
        assert_eq!(d(&v1, "c", "123456"), d(&v1, "c", "123456"));
        assert_ne!(d(&v1, "c", "123456"), d(&v1, "c", "123457"));
        assert_ne!(d(&v1, "c", "123456"), d(&v1, "d", "123456"));
        use sha2::Digest;
        let plain: [u8; 32] = Sha256::digest(b"123456").into();
        assert_ne!(d(&v1, "c", "123456"), plain);
        // Keys derived from one secret agree on every node; another secret's do not.
        let (n1, n2) = (PinKeys::derive(b"shared"), PinKeys::derive(b"shared"));
        assert_eq!(n1.digest("c", "123456"), n2.digest("c", "123456"));
        assert!(n2.matches("c", "123456", &n1.digest("c", "123456")));
        let sealed = n1.seal("c", "123456").unwrap();
        assert_eq!(n2.unseal("c", &sealed).unwrap().as_str(), "123456");
        let other = PinKeys::derive(b"other");
        assert!(!other.matches("c", "123456", &n1.digest("c", "123456")));
        assert!(other.unseal("c", &sealed).is_none());
    }

    #[test]
    fn bad_vault_settings_are_refused() {
        assert!(matches!(
            PinVault::new(Duration::ZERO, 3),
            Err(PinError::Ttl(_))
        ));
        assert!(matches!(
            PinVault::new(MAX_TTL + Duration::from_secs(1), 3),
            Err(PinError::Ttl(_))
        ));
        assert!(PinVault::new(MAX_TTL, 3).is_ok());
        assert!(matches!(
            PinVault::new(DEFAULT_TTL, 0),
            Err(PinError::NoTries)
        ));
    }

    /// An input of the same length as `pin` that differs in its first digit.
    fn wrong_input(pin: &str) -> String {
        let first = pin.as_bytes()[0];
        let other = if first == b'9' {
            '0'
        } else {
            (first + 1) as char
        };
        format!("{other}{}", &pin[1..])
    }
}

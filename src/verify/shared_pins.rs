//! The PIN vault in the database, for several nodes ([`SharedVault`]): the same rules as the
//! in-memory [`PinVault`](super::pin::PinVault) (single use, expiry, wrong tries, a resend
//! sends the same digits without restoring tries or validity), over rows any node can read,
//! under keys every node derives from one shared secret (`[store] pin_key_file`). A code sent
//! through the HTTP API by one node can then be checked through any other, and a second call
//! for a customer on another node gets the code already on its way, not a second one.
//!
//! Times are wall-clock (`SystemTime`): rows outlive the process, and the nodes' clocks must
//! agree (NTP), as for every window the store counts.

use super::pin::{Pin, PinCheck, PinError, PinKeys, check_rules};
use crate::store::{PinUpdate, Store, StoreError, StoredPin};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Shortest shared secret accepted: 32 characters (`openssl rand -hex 32` makes 64).
pub const MIN_SECRET_LEN: usize = 32;

/// Why a shared PIN could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum SharedPinError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct SharedVault {
    keys: PinKeys,
    ttl: Duration,
    tries: u32,
    store: Arc<Store>,
}

impl std::fmt::Debug for SharedVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedVault")
            .field("ttl", &self.ttl)
            .field("tries", &self.tries)
            .finish_non_exhaustive()
    }
}

impl SharedVault {
    /// A vault over `store` whose PINs live `ttl` and allow `tries` wrong attempts, with keys
    /// derived from `secret` (at least [`MIN_SECRET_LEN`] bytes; the same on every node).
    pub fn new(
        secret: &[u8],
        ttl: Duration,
        tries: u32,
        store: Arc<Store>,
    ) -> Result<SharedVault, PinError> {
        check_rules(ttl, tries)?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(PinError::Secret(secret.len()));
        }
        Ok(SharedVault {
            keys: PinKeys::derive(secret),
            ttl,
            tries,
            store,
        })
    }

    /// The subject's outstanding PIN again if it is still valid, has tries left and has
    /// `length` digits; otherwise a new one, replacing any other.
    pub fn issue_or_resend(
        &self,
        subject: &str,
        length: usize,
        wall: SystemTime,
    ) -> Result<Pin, SharedPinError> {
        let mut failed = None;
        let pin = self.store.update_pin(subject, |row| {
            if let Some(r) = row
                && r.length as usize == length
                && r.tries_left > 0
                && wall < r.expires_at
                && let Some(digits) = self.keys.unseal(subject, &r.sealed)
            {
                return (PinUpdate::Keep, Some(Pin::resent(digits)));
            }
            let fresh = Pin::generate(length).and_then(|pin| {
                let row = StoredPin {
                    digest: self.keys.digest(subject, pin.expose()).to_vec(),
                    sealed: self.keys.seal(subject, pin.expose())?,
                    length: length as u32,
                    expires_at: wall + self.ttl,
                    tries_left: self.tries,
                };
                Ok((pin, row))
            });
            match fresh {
                Ok((pin, row)) => (PinUpdate::Put(row), Some(pin)),
                Err(e) => {
                    failed = Some(e);
                    (PinUpdate::Keep, None)
                }
            }
        })?;
        match (pin, failed) {
            (Some(pin), _) => Ok(pin),
            (None, Some(e)) => Err(e.into()),
            (None, None) => Err(PinError::Rng("no PIN was made".into()).into()),
        }
    }

    /// Checks `input` against the subject's outstanding PIN (constant-time digest
    /// comparison); a valid, exhausted or expired PIN is gone afterwards.
    pub fn check(
        &self,
        subject: &str,
        input: &str,
        wall: SystemTime,
    ) -> Result<PinCheck, StoreError> {
        self.store.update_pin(subject, |row| match row {
            None => (PinUpdate::Keep, PinCheck::NoPin),
            Some(r) if wall >= r.expires_at => (PinUpdate::Delete, PinCheck::Expired),
            Some(r) if self.keys.matches(subject, input, &r.digest) => {
                (PinUpdate::Delete, PinCheck::Valid)
            }
            Some(mut r) => {
                r.tries_left = r.tries_left.saturating_sub(1);
                match r.tries_left {
                    0 => (PinUpdate::Delete, PinCheck::Exhausted),
                    tries_left => (PinUpdate::Put(r), PinCheck::Invalid { tries_left }),
                }
            }
        })
    }

    /// Voids the subject's outstanding PIN; whether there was one.
    pub fn revoke(&self, subject: &str) -> Result<bool, StoreError> {
        self.store
            .update_pin(subject, |row| (PinUpdate::Delete, row.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn vaults() -> (tempfile::TempDir, SharedVault, SharedVault) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.db");
        let one = Arc::new(Store::open(&path).unwrap());
        let two = Arc::new(Store::open(&path).unwrap());
        let ttl = Duration::from_secs(300);
        (
            dir,
            SharedVault::new(SECRET, ttl, 3, one).unwrap(),
            SharedVault::new(SECRET, ttl, 3, two).unwrap(),
        )
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_code_issued_by_one_node_is_resent_and_checked_by_another() {
        let (_d, a, b) = vaults();
        let pin = a.issue_or_resend("123456", 6, t(0)).unwrap();
        assert_eq!(pin.issue(), crate::verify::pin::Issue::New);
        let again = b.issue_or_resend("123456", 6, t(10)).unwrap();
        assert_eq!(again.issue(), crate::verify::pin::Issue::Resend);
        assert_eq!(again.expose(), pin.expose());
        let wrong: String = pin
            .expose()
            .chars()
            .map(|c| char::from(b'0' + (c as u8 - b'0' + 1) % 10))
            .collect();
        assert_eq!(
            a.check("123456", &wrong, t(20)).unwrap(),
            PinCheck::Invalid { tries_left: 2 }
        );
        // The other subject's code is not this one's.
        assert_eq!(
            b.check("654321", pin.expose(), t(20)).unwrap(),
            PinCheck::NoPin
        );
        assert_eq!(
            b.check("123456", pin.expose(), t(30)).unwrap(),
            PinCheck::Valid
        );
        assert_eq!(
            a.check("123456", pin.expose(), t(31)).unwrap(),
            PinCheck::NoPin
        );
    }

    #[test]
    fn codes_expire_run_out_of_tries_and_are_revoked() {
        let (_d, a, b) = vaults();
        let pin = a.issue_or_resend("s", 4, t(0)).unwrap();
        assert_eq!(
            b.check("s", pin.expose(), t(300)).unwrap(),
            PinCheck::Expired
        );
        assert_eq!(a.check("s", pin.expose(), t(301)).unwrap(), PinCheck::NoPin);
        // After expiry a send makes a new code.
        let pin = a.issue_or_resend("s", 4, t(400)).unwrap();
        assert_eq!(pin.issue(), crate::verify::pin::Issue::New);
        for left in [2, 1] {
            assert_eq!(
                b.check("s", "x", t(401)).unwrap(),
                PinCheck::Invalid { tries_left: left }
            );
        }
        assert_eq!(a.check("s", "x", t(402)).unwrap(), PinCheck::Exhausted);
        assert_eq!(a.check("s", pin.expose(), t(403)).unwrap(), PinCheck::NoPin);
        a.issue_or_resend("s", 4, t(500)).unwrap();
        assert!(b.revoke("s").unwrap());
        assert!(!a.revoke("s").unwrap());
        // A resend asking for another length is a new code.
        let four = a.issue_or_resend("s", 4, t(600)).unwrap();
        let six = b.issue_or_resend("s", 6, t(601)).unwrap();
        assert_eq!((four.len(), six.len()), (4, 6));
        assert_eq!(six.issue(), crate::verify::pin::Issue::New);
    }

    #[test]
    fn another_secret_neither_checks_nor_resends_the_codes() {
        let (d, a, _) = vaults();
        let store = Arc::new(Store::open(d.path().join("ivrd.db")).unwrap());
        let other = SharedVault::new(
            b"another secret, 32 bytes or more.",
            Duration::from_secs(300),
            3,
            store,
        )
        .unwrap();
        let pin = a.issue_or_resend("s", 6, t(0)).unwrap();
        let resent = other.issue_or_resend("s", 6, t(1)).unwrap();
        assert_eq!(
            resent.issue(),
            crate::verify::pin::Issue::New,
            "unsealed under the wrong key"
        );
        assert_ne!(resent.expose(), pin.expose());
        assert_eq!(
            a.check("s", resent.expose(), t(2)).unwrap(),
            PinCheck::Invalid { tries_left: 2 },
            "its digest checks under the wrong key"
        );
    }

    #[test]
    fn a_short_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("ivrd.db")).unwrap());
        let err = SharedVault::new(b"short", Duration::from_secs(60), 3, store).unwrap_err();
        assert!(matches!(err, PinError::Secret(5)), "{err}");
    }
}

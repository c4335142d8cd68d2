//! PINs in the database (schema 11), for several nodes: a code sent by one node is checked,
//! or sent again, by any other. A row holds what the in-memory vault holds, never the digits
//! in clear: their HMAC digest and the digits sealed with AES-256-GCM, both under keys derived
//! from a secret the nodes share (`[store] pin_key_file`) that never reaches the database, so
//! a copy of the table reveals no code. The decision about a row (resend or new, right or
//! wrong, tries left) is the caller's (`verify::shared_pins`), made inside the transaction
//! that holds the subject's lock, so two nodes checking the same code take turns.

use super::backend::args;
use super::{Store, StoreError, from_ms, to_ms};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::time::SystemTime;

/// One outstanding PIN as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPin {
    /// HMAC-SHA256 of the subject and the digits.
    pub digest: Vec<u8>,
    /// Nonce, ciphertext and tag of the digits.
    pub sealed: Vec<u8>,
    /// Digits.
    pub length: u32,
    pub expires_at: SystemTime,
    pub tries_left: u32,
}

impl std::fmt::Debug for StoredPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPin")
            .field("length", &self.length)
            .field("expires_at", &self.expires_at)
            .field("tries_left", &self.tries_left)
            .finish_non_exhaustive()
    }
}

/// What becomes of a subject's row.
#[derive(Debug)]
pub enum PinUpdate {
    Keep,
    Put(StoredPin),
    Delete,
}

fn decode(what: &str, text: &str) -> Result<Vec<u8>, StoreError> {
    B64.decode(text)
        .map_err(|e| StoreError::Decode(format!("a stored PIN's {what}: {e}")))
}

impl Store {
    /// Reads the subject's PIN, lets `decide` say what becomes of it, and writes that, in one
    /// transaction under the subject's lock; returns what `decide` returned with it.
    pub fn update_pin<T>(
        &self,
        subject: &str,
        mut decide: impl FnMut(Option<StoredPin>) -> (PinUpdate, T),
    ) -> Result<T, StoreError> {
        self.write(|tx| {
            tx.lock(&format!("pin:{subject}"))?;
            let row = tx
                .query_opt(
                    "SELECT digest, sealed, length, expires_at, tries_left FROM pins
                     WHERE subject = ?1",
                    args![subject],
                )?
                .map(|r| {
                    Ok::<_, StoreError>(StoredPin {
                        digest: decode("digest", &r.text(0)?)?,
                        sealed: decode("seal", &r.text(1)?)?,
                        length: r.count(2)?,
                        expires_at: from_ms(r.int(3)?),
                        tries_left: r.count(4)?,
                    })
                })
                .transpose()?;
            let (update, out) = decide(row);
            match update {
                PinUpdate::Keep => {}
                PinUpdate::Delete => {
                    tx.exec("DELETE FROM pins WHERE subject = ?1", args![subject])?;
                }
                PinUpdate::Put(p) => {
                    tx.exec(
                        "INSERT INTO pins (subject, digest, sealed, length, expires_at, tries_left)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (subject) DO UPDATE SET digest = excluded.digest,
                             sealed = excluded.sealed, length = excluded.length,
                             expires_at = excluded.expires_at, tries_left = excluded.tries_left",
                        args![
                            subject,
                            B64.encode(&p.digest),
                            B64.encode(&p.sealed),
                            p.length,
                            to_ms(p.expires_at),
                            p.tries_left
                        ],
                    )?;
                }
            }
            Ok(out)
        })
    }

    /// Outstanding PINs (tests and status).
    pub fn pins_outstanding(&self) -> Result<u32, StoreError> {
        self.read(|tx| tx.count("SELECT COUNT(*) FROM pins", &[]))
    }
}

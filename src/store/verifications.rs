//! The HTTP API's rows: its keys and its verifications (schema 8).
//!
//! A key is shown once, when it is made; the table keeps its SHA-256 only. The keys are 256
//! random bits, so a plain hash is enough (a slow password hash guards guessable secrets),
//! and a lookup by hash is an index probe, the same work for a good key and a bad one.

use super::backend::{Row, Tx, args};
use super::{Store, StoreError, from_ms, to_ms};
use std::time::SystemTime;

/// An API key as `ivrd api-keys list` shows it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub created_at: SystemTime,
    pub revoked_at: Option<SystemTime>,
}

/// Where a verification stands, named as Twilio Verify and tyntec name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationStatus {
    /// A code went out and may be checked.
    Pending,
    /// The right code was checked.
    Approved,
    /// The client canceled it.
    Canceled,
    /// Too many wrong codes (or the number or customer is locked out).
    MaxAttemptsReached,
    /// The code's validity ended before the right one was checked.
    Expired,
    /// No code could be sent.
    Failed,
}

impl VerificationStatus {
    pub const ALL: [VerificationStatus; 6] = [
        VerificationStatus::Pending,
        VerificationStatus::Approved,
        VerificationStatus::Canceled,
        VerificationStatus::MaxAttemptsReached,
        VerificationStatus::Expired,
        VerificationStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Pending => "pending",
            VerificationStatus::Approved => "approved",
            VerificationStatus::Canceled => "canceled",
            VerificationStatus::MaxAttemptsReached => "max_attempts_reached",
            VerificationStatus::Expired => "expired",
            VerificationStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<VerificationStatus> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether nothing can change it any more.
    pub fn is_final(self) -> bool {
        self != VerificationStatus::Pending
    }
}

/// One verification started through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub id: String,
    /// The API key that started it (its name).
    pub key_name: String,
    /// E.164.
    pub to: String,
    /// The customer id whose number it is, or `tel:` and the number: whose limits, PIN and
    /// lock-out it uses.
    pub subject: String,
    pub customer_id: Option<String>,
    /// `sms` (or `voice`).
    pub channel: String,
    pub locale: String,
    pub template: String,
    pub status: VerificationStatus,
    /// Codes sent (the first and every resend).
    pub sends: u32,
    /// Codes checked.
    pub checks: u32,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub expires_at: SystemTime,
    /// How the last code went out: `sent` (SMS), or the call's outcome (`calling`,
    /// `answered`, `busy`, `no-answer`, `rejected`, `failed`).
    pub delivery: Option<String>,
}

const COLUMNS: &str = "id, key_name, to_number, subject, customer_id, channel, locale, template, \
                       status, sends, checks, created_at, updated_at, expires_at, delivery";

fn read(r: &Row) -> Result<Verification, StoreError> {
    let status = r.text(8)?;
    Ok(Verification {
        id: r.text(0)?,
        key_name: r.text(1)?,
        to: r.text(2)?,
        subject: r.text(3)?,
        customer_id: r.opt_text(4)?,
        channel: r.text(5)?,
        locale: r.text(6)?,
        template: r.text(7)?,
        // Only this module writes the column, from `as_str`.
        status: VerificationStatus::parse(&status).unwrap_or(VerificationStatus::Failed),
        sends: r.count(9)?,
        checks: r.count(10)?,
        created_at: from_ms(r.int(11)?),
        updated_at: from_ms(r.int(12)?),
        expires_at: from_ms(r.int(13)?),
        delivery: r.opt_text(14)?,
    })
}

fn insert(tx: &mut dyn Tx, v: &Verification) -> Result<(), StoreError> {
    tx.exec(
        &format!(
            "INSERT INTO verifications ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ),
        args![
            &v.id,
            &v.key_name,
            &v.to,
            &v.subject,
            &v.customer_id,
            &v.channel,
            &v.locale,
            &v.template,
            v.status.as_str(),
            v.sends,
            v.checks,
            to_ms(v.created_at),
            to_ms(v.updated_at),
            to_ms(v.expires_at),
            &v.delivery,
        ],
    )?;
    Ok(())
}

impl Store {
    /// Adds a key by its hash; `false` if the name is taken.
    pub fn add_api_key(&self, name: &str, hash: &str, at: SystemTime) -> Result<bool, StoreError> {
        let n = self.write(|tx| {
            tx.exec(
                "INSERT INTO api_keys (name, hash, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                args![name, hash, to_ms(at)],
            )
        })?;
        Ok(n == 1)
    }

    /// The name of the key with this hash, if it exists and is not revoked.
    pub fn api_key_by_hash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT name FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                args![hash],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    /// Revokes a key; `false` if there is no such key or it was revoked already.
    pub fn revoke_api_key(&self, name: &str, at: SystemTime) -> Result<bool, StoreError> {
        let n = self.write(|tx| {
            tx.exec(
                "UPDATE api_keys SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                args![name, to_ms(at)],
            )
        })?;
        Ok(n == 1)
    }

    /// Every key, by name.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT name, created_at, revoked_at FROM api_keys ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(ApiKey {
                    name: r.text(0)?,
                    created_at: from_ms(r.int(1)?),
                    revoked_at: r.opt_int(2)?.map(from_ms),
                })
            })
            .collect()
        })
    }

    pub fn insert_verification(&self, v: &Verification) -> Result<(), StoreError> {
        self.write(|tx| insert(tx, v))
    }

    /// Records `v`, a new pending verification whose first code just went out, unless a
    /// verification of the same subject and key is still pending at `now`: then that code
    /// counts as a resend of that one, which is returned with `false`. Two nodes taking one
    /// number's start in the same instant (each found none pending when it looked) so end
    /// with one verification, which every later check and resend finds.
    pub fn start_verification(
        &self,
        v: &Verification,
        now: SystemTime,
    ) -> Result<(Verification, bool), StoreError> {
        self.write(|tx| {
            tx.lock(&format!("verification:{}:{}", v.key_name, v.subject))?;
            let pending = tx
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM verifications
                         WHERE subject = ?1 AND key_name = ?2 AND status = 'pending'
                           AND expires_at > ?3
                         ORDER BY created_at DESC LIMIT 1"
                    ),
                    args![&v.subject, &v.key_name, to_ms(now)],
                )?
                .map(|r| read(&r))
                .transpose()?;
            let Some(mut joined) = pending else {
                insert(tx, v)?;
                return Ok((v.clone(), true));
            };
            joined.sends = joined.sends.saturating_add(v.sends);
            joined.channel = v.channel.clone();
            joined.updated_at = v.updated_at;
            joined.expires_at = joined.expires_at.max(v.expires_at);
            joined.delivery = v.delivery.clone();
            tx.exec(
                "UPDATE verifications SET sends = ?2, channel = ?3, updated_at = ?4,
                                          expires_at = ?5, delivery = ?6
                 WHERE id = ?1",
                args![
                    &joined.id,
                    joined.sends,
                    &joined.channel,
                    to_ms(joined.updated_at),
                    to_ms(joined.expires_at),
                    &joined.delivery,
                ],
            )?;
            Ok((joined, false))
        })
    }

    /// Writes what can change (status, counts, times), if the row's status is still `was`:
    /// a change decided on a status another node has changed since (an approval, a cancel)
    /// is not written over it. Returns whether it was written.
    pub fn update_verification(
        &self,
        v: &Verification,
        was: VerificationStatus,
    ) -> Result<bool, StoreError> {
        let n = self.write(|tx| {
            tx.exec(
                "UPDATE verifications SET status = ?2, sends = ?3, checks = ?4, updated_at = ?5,
                                          expires_at = ?6, channel = ?7, delivery = ?8
                 WHERE id = ?1 AND status = ?9",
                args![
                    &v.id,
                    v.status.as_str(),
                    v.sends,
                    v.checks,
                    to_ms(v.updated_at),
                    to_ms(v.expires_at),
                    &v.channel,
                    &v.delivery,
                    was.as_str(),
                ],
            )
        })?;
        Ok(n == 1)
    }

    /// Records how a code went out, changing nothing else (a call's outcome arrives while
    /// checks may be changing the status).
    pub fn set_verification_delivery(
        &self,
        id: &str,
        delivery: &str,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE verifications SET delivery = ?2, updated_at = ?3 WHERE id = ?1",
                args![id, delivery, to_ms(at)],
            )
        })?;
        Ok(())
    }

    pub fn verification(&self, id: &str) -> Result<Option<Verification>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                &format!("SELECT {COLUMNS} FROM verifications WHERE id = ?1"),
                args![id],
            )?
            .map(|r| read(&r))
            .transpose()
        })
    }

    /// The newest pending verification of `subject` started by `key_name`, if any.
    pub fn pending_verification(
        &self,
        subject: &str,
        key_name: &str,
    ) -> Result<Option<Verification>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM verifications
                     WHERE subject = ?1 AND key_name = ?2 AND status = 'pending'
                     ORDER BY created_at DESC LIMIT 1"
                ),
                args![subject, key_name],
            )?
            .map(|r| read(&r))
            .transpose()
        })
    }

    /// Wrong codes or PINs for the subject (no customer) since `since`.
    pub fn decoy_failures_since(
        &self,
        subject: &str,
        since: SystemTime,
    ) -> Result<u32, StoreError> {
        self.read(|tx| {
            tx.count(
                "SELECT COUNT(*) FROM decoy_failures WHERE subject = ?1 AND at >= ?2",
                args![subject, to_ms(since)],
            )
        })
    }
}

/// A status callback waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: i64,
    pub verification_id: String,
    /// The JSON sent, as signed.
    pub body: String,
    /// Deliveries tried so far.
    pub attempts: u32,
    pub created_at: SystemTime,
}

impl Store {
    /// Queues a status callback, due at once.
    pub fn enqueue_webhook(
        &self,
        verification_id: &str,
        body: &str,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO webhook_outbox (verification_id, body, attempts, next_at, created_at)
                 VALUES (?1, ?2, 0, ?3, ?3)",
                args![verification_id, body, to_ms(at)],
            )
        })?;
        Ok(())
    }

    /// Callbacks due at `now`, oldest first, at most `limit`; only the oldest waiting of
    /// each verification (its later changes wait for it, so a receiver sees them in order).
    /// Each is leased to this node for `lease`: another node's deliverer (several nodes on
    /// one database) does not see it until the lease ends, so a callback is sent once, and
    /// the events of a node that died come due again.
    pub fn claim_webhooks(
        &self,
        now: SystemTime,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.write(|tx| {
            // One deliverer at a time decides what is due (the lock), so two nodes never
            // claim the same event; the claim moves `next_at` past the lease.
            tx.lock("webhooks")?;
            let events: Vec<OutboxEvent> = tx
                .query(
                    "SELECT id, verification_id, body, attempts, created_at FROM webhook_outbox w
                     WHERE next_at <= ?1
                       AND NOT EXISTS (SELECT 1 FROM webhook_outbox e
                                       WHERE e.verification_id = w.verification_id
                                         AND e.id < w.id)
                     ORDER BY id LIMIT ?2",
                    args![to_ms(now), limit],
                )?
                .iter()
                .map(|r| {
                    Ok(OutboxEvent {
                        id: r.int(0)?,
                        verification_id: r.text(1)?,
                        body: r.text(2)?,
                        attempts: r.count(3)?,
                        created_at: from_ms(r.int(4)?),
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            for e in &events {
                tx.exec(
                    "UPDATE webhook_outbox SET next_at = ?2 WHERE id = ?1",
                    args![e.id, to_ms(now + lease)],
                )?;
            }
            Ok(events)
        })
    }

    /// Claimed events this node will not try after all (a round cut short by a stop, or
    /// events held behind a failed one): due again at `now` for any node, instead of at the
    /// end of their lease.
    pub fn release_webhooks(&self, ids: &[i64], now: SystemTime) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            for id in ids {
                tx.exec(
                    "UPDATE webhook_outbox SET next_at = ?2 WHERE id = ?1",
                    args![*id, to_ms(now)],
                )?;
            }
            Ok(())
        })
    }

    /// Delivered (or given up): out of the outbox.
    pub fn remove_webhook(&self, id: i64) -> Result<(), StoreError> {
        self.write(|tx| tx.exec("DELETE FROM webhook_outbox WHERE id = ?1", args![id]))?;
        Ok(())
    }

    /// A delivery failed: try again at `next_at`.
    pub fn retry_webhook(
        &self,
        id: i64,
        attempts: u32,
        next_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE webhook_outbox SET attempts = ?2, next_at = ?3 WHERE id = ?1",
                args![id, attempts, to_ms(next_at)],
            )
        })?;
        Ok(())
    }

    /// Callbacks waiting, for the tests and for status.
    pub fn webhooks_waiting(&self) -> Result<u32, StoreError> {
        self.read(|tx| tx.count("SELECT COUNT(*) FROM webhook_outbox", &[]))
    }
}

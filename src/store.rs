//! The store: customers, persisted PIN failures and lock-outs, SMS sends, the fraud guard's
//! counts, the API's keys and verifications, and the audit log.
//!
//! Two databases, one store: SQLite (embedded, rusqlite bundled: one node needs no database
//! server, and one file holds everything that must survive a restart) and PostgreSQL (shared
//! by several nodes, `[store] url`). A lock-out or an SMS rate limit that a restart, or a
//! second node, could reset would be no limit at all. Every query and every decision is
//! written once in this module over the `Tx` of src/store/backend.rs (see there for how the
//! two differ and how decisions stay atomic across nodes). The API is synchronous; async callers use
//! `spawn_blocking` or a dedicated thread (the PostgreSQL client must never run on an async
//! runtime's thread).
//!
//! The schema is versioned: `schema_version` holds the version and [`MIGRATIONS`] lists the steps
//! (with their PostgreSQL text in `pg_migrations`), each applied in its own transaction under
//! the migration lock, so a crash mid-upgrade leaves the last complete version and two nodes
//! starting at once take turns. A database written by a newer ivrd is refused rather than
//! misread.
//!
//! Times are stored as milliseconds since the Unix epoch and always passed in by the caller
//! (except customer bookkeeping timestamps), so the simulator can run on a virtual clock.
//! Phone numbers are stored only in E.164 form ([`normalize_phone`]); the store keeps the full
//! caller number in the audit log, and masking is the business of whoever logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

mod backend;
mod pg_migrations;
pub use backend::PgOptions;
use backend::{Backend, Dialect, End, Mode, Row, Tx, Value, args};

/// Schema steps in order; step `i` takes the file from version `i` to `i + 1`.
/// Append only: never edit a step that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema. Times are INTEGER milliseconds since the Unix epoch.
    r#"
    CREATE TABLE customers (
        id          TEXT PRIMARY KEY NOT NULL,
        name        TEXT NOT NULL,
        mobile      TEXT NOT NULL,          -- E.164
        language    TEXT,
        enabled     INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX customers_by_mobile ON customers (mobile);

    -- Extra CSV columns, one row per field: queryable, and no JSON to parse on every lookup.
    CREATE TABLE customer_fields (
        customer_id TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        value       TEXT NOT NULL,
        PRIMARY KEY (customer_id, name)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE failures (
        customer_id TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        at          INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX failures_by_customer ON failures (customer_id, at);
    CREATE INDEX failures_by_time ON failures (at);

    -- One row per customer ever locked; the level survives the lock's end so waits can grow.
    CREATE TABLE lockouts (
        customer_id TEXT PRIMARY KEY NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        until       INTEGER NOT NULL,
        level       INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE sms_sends (
        customer_id TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        caller      TEXT NOT NULL,
        at          INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX sms_by_customer ON sms_sends (customer_id, at);
    CREATE INDEX sms_by_caller ON sms_sends (caller, at);
    CREATE INDEX sms_by_time ON sms_sends (at);

    -- No foreign key on customer_id: the audit trail must outlive a removed customer.
    CREATE TABLE audit (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id      TEXT NOT NULL,
        caller       TEXT NOT NULL,
        dialed       TEXT NOT NULL,
        customer_id  TEXT,
        outcome      TEXT NOT NULL,
        started_at   INTEGER NOT NULL,
        ended_at     INTEGER NOT NULL,
        dtmf_methods TEXT NOT NULL,
        detail       TEXT
    ) STRICT;
    CREATE INDEX audit_by_start ON audit (started_at);
    CREATE INDEX audit_by_customer ON audit (customer_id, started_at);
    "#,
    // 2: what became of the call's transfer (REFER): its target, the transferee's final status
    // (sipfrag) or the REFER's refusal, and how long it took.
    r#"
    ALTER TABLE audit ADD COLUMN transfer_target TEXT;
    ALTER TABLE audit ADD COLUMN transfer_status INTEGER;
    ALTER TABLE audit ADD COLUMN transfer_ms INTEGER;
    "#,
    // 3: the SIP transport the call came on (UDP, TCP, TLS): a reviewer can tell which calls
    // crossed the network in clear.
    r#"
    ALTER TABLE audit ADD COLUMN transport TEXT;
    "#,
    // 4: media security: the SRTP suite when the call's media was SRTP throughout, NULL for
    // plain RTP (at any point of the call) or a call that never had media.
    r#"
    ALTER TABLE audit ADD COLUMN srtp TEXT;
    "#,
    // 5: sends for decoy customers (ids that are not a usable customer, see `decoy` on
    // `lookup_customer`): nothing goes out, but they count against the same limits as real
    // sends, so a limit reached sooner or later cannot tell a registered id from another.
    // No foreign key: the subject is whatever id the caller typed.
    r#"
    CREATE TABLE decoy_sends (
        subject TEXT NOT NULL,
        caller  TEXT NOT NULL,
        at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX decoy_by_subject ON decoy_sends (subject, at);
    CREATE INDEX decoy_by_caller ON decoy_sends (caller, at);
    CREATE INDEX decoy_by_time ON decoy_sends (at);
    "#,
    // 6: the fraud guard (`verify::guard`): every PIN SMS by destination prefix and calling
    // code (global, per-country and per-prefix budgets), verified PINs per prefix (the
    // breaker's ratio), open breakers, and wrong PINs in a row per customer (NIST's cap,
    // kept across lock-outs).
    r#"
    CREATE TABLE guard_sends (
        prefix TEXT NOT NULL,
        code   TEXT NOT NULL,
        at     INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX guard_sends_by_time ON guard_sends (at);
    CREATE INDEX guard_sends_by_prefix ON guard_sends (prefix, at);
    CREATE INDEX guard_sends_by_code ON guard_sends (code, at);
    CREATE TABLE guard_verified (
        prefix TEXT NOT NULL,
        at     INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX guard_verified_by_prefix ON guard_verified (prefix, at);
    CREATE TABLE breakers (
        prefix TEXT PRIMARY KEY NOT NULL,
        until  INTEGER NOT NULL
    ) STRICT;
    ALTER TABLE customers ADD COLUMN failures_in_a_row INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: wrong PINs typed for decoys, counted as a customer's are: the failure that reaches
    // `failures_before_lockout` ends a decoy's tries early as it ends a customer's, so the
    // lock-out is no oracle. No foreign key: the subject is whatever id the caller typed.
    r#"
    CREATE TABLE decoy_failures (
        subject TEXT NOT NULL,
        at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX decoy_failures_by_subject ON decoy_failures (subject, at);
    CREATE INDEX decoy_failures_by_time ON decoy_failures (at);
    "#,
    // 8: the HTTP API (`crate::api`): its keys (only a SHA-256 of each is kept) and its
    // verifications. A number that is no customer's is the subject `tel:+E164`; its sends
    // and wrong codes go into `decoy_sends` and `decoy_failures` (no foreign key there).
    r#"
    CREATE TABLE api_keys (
        name       TEXT PRIMARY KEY NOT NULL,
        hash       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) STRICT;
    CREATE TABLE verifications (
        id          TEXT PRIMARY KEY NOT NULL,
        key_name    TEXT NOT NULL,
        to_number   TEXT NOT NULL,
        subject     TEXT NOT NULL,
        customer_id TEXT,
        channel     TEXT NOT NULL,
        locale      TEXT NOT NULL,
        template    TEXT NOT NULL,
        status      TEXT NOT NULL,
        sends       INTEGER NOT NULL,
        checks      INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX verifications_by_subject ON verifications (subject, status);
    CREATE INDEX verifications_by_time ON verifications (created_at);
    "#,
    // 9: the API's status callbacks waiting to be delivered (`crate::api::webhooks`): an
    // outbox, so that a restart or a receiver that is down loses none.
    r#"
    CREATE TABLE webhook_outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        verification_id TEXT NOT NULL,
        body            TEXT NOT NULL,
        attempts        INTEGER NOT NULL,
        next_at         INTEGER NOT NULL,
        created_at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at);
    CREATE INDEX webhook_outbox_by_verification ON webhook_outbox (verification_id, id);
    "#,
    // 10: how the last code of a verification was delivered: `sent` (the SMS provider took
    // it), or a call's outcome (`calling`, `answered`, `busy`, `no-answer`, `rejected`,
    // `failed`).
    r#"
    ALTER TABLE verifications ADD COLUMN delivery TEXT;
    "#,
    // 11: outstanding PINs, for several nodes on one database (`verify::shared_pins`): the
    // digits' HMAC digest and their AES-GCM seal (base64), under keys derived from a secret
    // the nodes share and the database never sees. Used only with `[store] pin_key_file`.
    r#"
    CREATE TABLE pins (
        subject    TEXT PRIMARY KEY NOT NULL,
        digest     TEXT NOT NULL,
        sealed     TEXT NOT NULL,
        length     INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        tries_left INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX pins_by_expiry ON pins (expires_at);
    "#,
];

mod pins;
mod verifications;
pub use pins::{PinUpdate, StoredPin};
pub use verifications::{ApiKey, OutboxEvent, Verification, VerificationStatus};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a statement waits for a lock held by another connection (e.g. `ivrd customers ...`
/// run while the daemon writes) before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Column names with a fixed meaning; extra fields may not take them.
const RESERVED_FIELDS: [&str; 4] = ["id", "name", "mobile", "language"];

/// Longest accepted customer id, name, field name or field value, in characters.
const MAX_ID_LEN: usize = 64;
const MAX_TEXT_LEN: usize = 200;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file did not exist and could not be created (missing directory, permissions).
    #[error("could not create the database {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database could not be opened (a SQLite file, or a PostgreSQL server).
    #[error("could not open the database {target}: {source}")]
    Open {
        target: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read-only open found no file: nothing is created for a reader.
    #[error("no database at {}: the daemon creates it on its first start", .0.display())]
    NotFound(PathBuf),
    /// A read-only open found an older schema, which only a writer may upgrade.
    #[error(
        "the database has schema version {found}, older than version {known} of this ivrd; start the daemon (or run any `ivrd customers` command) once to upgrade it"
    )]
    SchemaTooOld { found: u32, known: u32 },
    /// SQLite refused write-ahead logging (e.g. a file system without shared memory support).
    #[error("the database would not switch to write-ahead logging (journal mode is {0:?})")]
    NoWal(String),
    /// The file was written by a newer ivrd; reading it could misinterpret or damage it.
    #[error(
        "the database has schema version {found}, newer than version {known} that this ivrd knows; upgrade ivrd or use another file"
    )]
    SchemaTooNew { found: u32, known: u32 },
    /// A SQLite statement failed.
    #[error("the database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL statement failed.
    #[error("the database failed: {0}")]
    Db(String),
    /// The database is not answering (server down, connection lost, no connection free
    /// within the timeout): nothing was written. The daemon treats it as an outage.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A constraint refused the write (an unknown customer, a duplicate key).
    #[error("the database refused the write: {0}")]
    Constraint(String),
    /// A value read back is not what the schema holds.
    #[error("the database returned an unexpected value: {0}")]
    Decode(String),
    /// The PostgreSQL URL does not parse.
    #[error("the database URL is unusable: {0}")]
    Url(String),
    /// The TLS set-up for PostgreSQL failed (the CA file).
    #[error("the database's TLS set-up failed: {0}")]
    Tls(String),
    /// A caller's callback stopped an iteration (its own error is returned instead).
    #[error("stopped by the caller")]
    Interrupted,
    /// `add_customer` found the id taken.
    #[error("a customer with id {0:?} already exists")]
    DuplicateCustomer(String),
    /// The customer record is unacceptable (bad id, number, language or field).
    #[error("invalid customer: {0}")]
    InvalidCustomer(#[from] InvalidCustomer),
    /// The default region for phone numbers is not a known country code.
    #[error("{0}")]
    Phone(#[from] PhoneError),
    /// The CSV header lacks a required column or is otherwise unusable; nothing was imported.
    #[error("the CSV header is unusable: {0}")]
    CsvHeader(String),
    /// The CSV input could not be read (I/O error, or a header that is not UTF-8); nothing was
    /// imported.
    #[error("could not read the CSV input: {0}")]
    Csv(#[from] csv::Error),
}

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing but blanks.
    #[error("the number is empty")]
    Empty,
    /// Longer than any phone number could be written; not worth parsing.
    #[error("the number is longer than 40 characters")]
    TooLong,
    /// The default region is not an ISO 3166 two-letter code the phone library knows.
    #[error("unknown region {0:?}: expected a two-letter country code such as DE")]
    UnknownRegion(String),
    /// Not parseable as a phone number, or parseable but not a valid number.
    #[error("not a valid number for region {region}")]
    Invalid { region: String },
    /// A valid number, but not written in E.164 where only E.164 is accepted.
    #[error("not in E.164 form (a + and the country code, digits only, e.g. +491701234567)")]
    NotE164,
}

/// Why a customer record was refused (by `add_customer`, `upsert_customer` or a CSV row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCustomer {
    /// The id is empty.
    #[error("missing id")]
    MissingId,
    /// The id has blanks or control characters, or is longer than 64 characters.
    #[error("bad id {0:?}: expected 1 to 64 characters without blanks or control characters")]
    BadId(String),
    /// The name is empty.
    #[error("missing name")]
    MissingName,
    /// The name is longer than 200 characters or has control characters.
    #[error("bad name: expected at most 200 characters without control characters")]
    BadName,
    /// The mobile number did not normalise to a valid E.164 number.
    #[error("bad mobile number {input:?}: {reason}")]
    BadMobile { input: String, reason: PhoneError },
    /// A valid number, but of a kind no SMS reaches (a fixed line, a toll-free or premium
    /// number, ...), as the phone library's metadata says.
    #[error("mobile number {input:?} is {kind}: an SMS would never arrive")]
    NotMobile { input: String, kind: &'static str },
    /// The language is not a code like `de` or `en-GB`.
    #[error("bad language code {0:?}: expected a code such as \"de\" or \"en-GB\"")]
    BadLanguage(String),
    /// An extra field's name is empty, reserved, or not letters, digits, `_` and `-`.
    #[error(
        "bad field name {0:?}: expected letters, digits, '_' or '-', and not id, name, mobile or language"
    )]
    BadFieldName(String),
    /// An extra field's value is longer than 200 characters or has control characters.
    #[error(
        "bad value for field {0:?}: expected at most 200 characters without control characters"
    )]
    BadFieldValue(String),
}

/// Parses `input` as a phone number (national numbers in `default_region`, e.g. `DE`), requires a
/// valid number and returns it in E.164 (`+491701234567`).
pub fn normalize_phone(input: &str, default_region: &str) -> Result<String, PhoneError> {
    let (region, region_upper) = parse_region(default_region)?;
    let input = input.trim();
    if input.is_empty() {
        return Err(PhoneError::Empty);
    }
    if input.chars().count() > 40 {
        return Err(PhoneError::TooLong);
    }
    let invalid = || PhoneError::Invalid {
        region: region_upper.clone(),
    };
    // The input may come from a SIP header, i.e. from anyone; the library has had panics on odd
    // inputs in the past, and a bad caller number must never take a call task down with it.
    let parsed = std::panic::catch_unwind(|| {
        let number = phonenumber::parse(Some(region), input).ok()?;
        phonenumber::is_valid(&number)
            .then(|| number.format().mode(phonenumber::Mode::E164).to_string())
    });
    match parsed {
        Ok(Some(e164)) => Ok(e164),
        _ => Err(invalid()),
    }
}

/// What kind of line a valid E.164 number is, when the phone library knows it to be one no
/// SMS reaches (`"a fixed line"`, ...); `None` for mobiles, numbers that may be either (the
/// USA's), VoIP and personal numbers, and numbers it cannot tell.
pub fn not_mobile(e164: &str) -> Option<&'static str> {
    use phonenumber::Type;
    let kind = std::panic::catch_unwind(|| {
        let number = phonenumber::parse(None, e164).ok()?;
        Some(number.number_type(&phonenumber::metadata::DATABASE))
    })
    .ok()
    .flatten()?;
    match kind {
        Type::FixedLine => Some("a fixed line"),
        Type::TollFree => Some("a toll-free number"),
        Type::PremiumRate => Some("a premium-rate number"),
        Type::SharedCost => Some("a shared-cost number"),
        Type::Uan => Some("a company number (UAN)"),
        Type::Voicemail => Some("a voicemail access number"),
        Type::Pager => Some("a pager number"),
        Type::ShortCode | Type::Emergency => Some("a short code"),
        _ => None,
    }
}

/// Whether a caller can type `id` on a phone keypad (digits only: `*` and `#` end or edit
/// input in the shipped plans).
pub fn keypad_typeable(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

/// The phone library's id for a two-letter region code (any case), and the code in upper case.
fn parse_region(region: &str) -> Result<(phonenumber::country::Id, String), PhoneError> {
    let upper = region.trim().to_ascii_uppercase();
    let id = upper
        .parse()
        .map_err(|_| PhoneError::UnknownRegion(region.to_owned()))?;
    Ok((id, upper))
}

/// Normalises a language code to `ll` or `ll-RR` (`EN_gb` -> `en-GB`), or refuses it.
pub fn normalize_language(input: &str) -> Result<String, InvalidCustomer> {
    let bad = || InvalidCustomer::BadLanguage(input.to_owned());
    let code = input.trim().replace('_', "-");
    let mut parts = code.split('-');
    let primary = parts.next().unwrap_or_default();
    if !(2..=3).contains(&primary.len()) || !primary.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad());
    }
    let mut out = primary.to_ascii_lowercase();
    if let Some(region) = parts.next() {
        let letters = region.len() == 2 && region.bytes().all(|b| b.is_ascii_alphabetic());
        let digits = region.len() == 3 && region.bytes().all(|b| b.is_ascii_digit());
        if !(letters || digits) {
            return Err(bad());
        }
        out.push('-');
        out.push_str(&region.to_ascii_uppercase());
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// A customer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// What the caller types to identify themselves, e.g. `123456`.
    pub id: String,
    pub name: String,
    /// E.164.
    pub mobile: String,
    /// `de`, `en-GB`, ...
    pub language: Option<String>,
    /// A disabled customer is kept (and keeps its history) but must be treated as unknown.
    pub enabled: bool,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// Extra CSV columns by name.
    pub extra: BTreeMap<String, String>,
}

/// A customer to add or update. New customers start enabled; an update keeps the enabled flag
/// (disabling is an admin decision that a nightly CSV re-import must not undo).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewCustomer {
    pub id: String,
    pub name: String,
    /// Must already be E.164 (use [`normalize_phone`]).
    pub mobile: String,
    pub language: Option<String>,
    pub extra: BTreeMap<String, String>,
}

/// One row of the audit log: what happened on one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// The SIP Call-ID.
    pub call_id: String,
    /// The caller's number in full (mask it when logging, not here).
    pub caller: String,
    /// The number or user part that was dialled.
    pub dialed: String,
    /// The customer the call identified, if any.
    pub customer_id: Option<String>,
    /// The flow's final outcome, e.g. `verified`, `locked_out`, `hangup`.
    pub outcome: String,
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
    /// DTMF methods seen on the call, e.g. `rfc4733,info`.
    pub dtmf_methods: String,
    pub detail: Option<String>,
    /// The call's last transfer, if it tried one.
    pub transfer: Option<AuditTransfer>,
    /// The SIP transport: `UDP`, `TCP` or `TLS` (none in rows written before it was recorded).
    pub transport: Option<String>,
    /// The SRTP suite (e.g. `AES_CM_128_HMAC_SHA1_80`) when every media negotiation of the call
    /// was SRTP; `None` for plain RTP or no media.
    pub srtp: Option<String>,
}

/// A call's transfer as the audit records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTransfer {
    /// The Refer-To target.
    pub target: String,
    /// The transferee's final status (sipfrag), or the REFER's refusal; `None` if none came.
    pub status: Option<u16>,
    /// How long the transfer took, in milliseconds.
    pub ms: u64,
}

/// One CSV row that was not imported, with the line it starts on (the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: RowError,
}

/// Why a CSV row was not imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The record itself is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidCustomer),
    /// An earlier row of the same file has this id; the earlier row wins.
    #[error("duplicate id {id:?} (first seen on line {first_line})")]
    DuplicateId { id: String, first_line: u64 },
    /// The row has a different number of fields than the header.
    #[error("expected {expected} fields as in the header, found {found}")]
    FieldCount { expected: usize, found: usize },
    /// The row is not valid UTF-8 or otherwise unreadable as CSV.
    #[error("unreadable row: {0}")]
    Malformed(String),
}

/// What `import_csv` did: good rows are kept even when others are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// Customers that did not exist before.
    pub created: usize,
    /// Existing customers whose record was replaced (their enabled flag is kept).
    pub updated: usize,
    /// Rows not imported, in file order.
    pub rejected: Vec<RejectedRow>,
    /// Imported rows that will not work as the admin may expect (an id no keypad can type, a
    /// mobile another customer has), in file order.
    pub warnings: Vec<ImportWarning>,
    /// Customers disabled because the file (under [`ImportOptions::sync`]) no longer has them.
    pub disabled: Vec<String>,
    /// Under `sync`, rejected rows stopped the disabling: a customer whose row was bad is
    /// still in the file.
    pub sync_skipped: bool,
}

/// A row that was imported but deserves a look, with its line (the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportWarning {
    pub line: u64,
    pub message: String,
}

/// How [`Store::import_csv_with`] reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Country for numbers written without an international prefix (ISO 3166 code).
    pub region: String,
    /// The field separator (`,` unless the file is, e.g., a German spreadsheet's `;`).
    pub delimiter: u8,
    /// Check and count everything, write nothing.
    pub dry_run: bool,
    /// The file is the whole customer list: enabled customers missing from it are disabled.
    pub sync: bool,
}

impl ImportOptions {
    /// Comma-separated, written, no sync, national numbers read in `region`.
    pub fn new(region: &str) -> ImportOptions {
        ImportOptions {
            region: region.to_owned(),
            delimiter: b',',
            dry_run: false,
            sync: false,
        }
    }
}

impl ImportReport {
    /// Rows imported (created + updated).
    pub fn imported(&self) -> usize {
        self.created + self.updated
    }
}

/// Rows removed by [`Store::purge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeReport {
    pub failures: usize,
    pub sms_sends: usize,
    /// The fraud guard's counted sends and verifications.
    pub guard_rows: usize,
}

/// Which database a store is on, as the configuration (or `--db`) names it.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres { url: String, opts: PgOptions },
}

impl Database {
    /// Whether `s` names a PostgreSQL database rather than a file.
    pub fn is_url(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    /// Opens it for the daemon or an admin command: created and migrated as needed.
    pub fn open(&self) -> Result<Store, StoreError> {
        match self {
            Database::Sqlite(path) => Store::open(path),
            Database::Postgres { url, opts } => Store::connect(url, opts),
        }
    }

    /// Opens it for reading only (reports beside the daemon).
    pub fn open_read_only(&self) -> Result<Store, StoreError> {
        match self {
            Database::Sqlite(path) => Store::open_read_only(path),
            Database::Postgres { url, opts } => Store::connect_read_only(url, opts),
        }
    }

    /// For messages: the file, or the URL without a password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres { url, .. } => match url.parse::<tokio_postgres::Config>() {
                Ok(config) => backend::describe_pg(&config),
                Err(_) => "postgres://(unparsable URL)".into(),
            },
        }
    }
}

/// The store. Cheap to share behind an `Arc`; every method is one transaction on its backend
/// (SQLite's one connection, or a pooled PostgreSQL connection).
pub struct Store {
    backend: Box<dyn Backend>,
    /// The schema version this open found (0: a new database, which the daemon seeds).
    migrated_from: u32,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.backend.describe())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, configures it and brings the
    /// schema up to [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        create_private(&path).map_err(|source| StoreError::Create {
            path: path.clone(),
            source,
        })?;
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            target: path.display().to_string(),
            source: Box::new(source),
        })?;
        configure(&conn)?;
        Store::migrated(Box::new(backend::Sqlite::new(conn, path)))
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user@host:port/db`, with
    /// `?sslmode=require` for TLS) and brings its schema up to [`SCHEMA_VERSION`]; several
    /// nodes may do this at once (the migration takes an advisory lock).
    pub fn connect(url: &str, opts: &PgOptions) -> Result<Store, StoreError> {
        Store::migrated(Box::new(backend::Postgres::connect(url, opts)?))
    }

    fn migrated(backend: Box<dyn Backend>) -> Result<Store, StoreError> {
        let from = migrate(backend.as_ref())?;
        Ok(Store {
            backend,
            migrated_from: from,
        })
    }

    /// Opens an existing database for reading only: never creates, migrates or writes it, so
    /// a report (`ivrd audit`) run beside the daemon cannot disturb it. Reads see the last
    /// committed state while the daemon writes (WAL); the busy timeout covers a checkpoint.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(StoreError::NotFound(path));
        }
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            target: path.display().to_string(),
            source: Box::new(source),
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Store::current(Box::new(backend::Sqlite::new(conn, path)))
    }

    /// [`Store::open_read_only`] for PostgreSQL: every transaction is read-only.
    pub fn connect_read_only(url: &str, opts: &PgOptions) -> Result<Store, StoreError> {
        Store::current(Box::new(backend::Postgres::connect(url, opts)?))
    }

    /// A store on a database whose schema must be this build's already.
    fn current(backend: Box<dyn Backend>) -> Result<Store, StoreError> {
        let store = Store {
            backend,
            migrated_from: SCHEMA_VERSION,
        };
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::SchemaTooOld {
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(store)
    }

    /// The SQLite file, if the store is one.
    pub fn path(&self) -> Option<&Path> {
        self.backend.path()
    }

    /// The database, for messages (a file, or a PostgreSQL URL without its password).
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Whether this open created the schema (a new database): only then is it seeded.
    pub fn was_created(&self) -> bool {
        self.migrated_from == 0
    }

    /// The schema version this open found before migrating.
    pub fn migrated_from(&self) -> u32 {
        self.migrated_from
    }

    /// Whether the database answers a query (the node's readiness probe).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.read(|tx| {
            tx.count("SELECT count(*) FROM customers WHERE id = ''", &[])
                .map(|_| ())
        })
    }

    /// The schema version in the database (equal to [`SCHEMA_VERSION`] after a successful
    /// open).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(read_version)
    }

    /// Runs `body` in one transaction, committed if it returns `Ok`.
    fn transaction<T>(
        &self,
        mode: Mode,
        mut body: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut out = None;
        self.backend.transaction(mode, &mut |tx| {
            out = Some(body(tx)?);
            Ok(End::Commit)
        })?;
        out.ok_or_else(|| StoreError::Decode("a transaction ended without its result".into()))
    }

    fn read<T>(
        &self,
        body: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(Mode::Read, body)
    }

    fn write<T>(
        &self,
        body: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(Mode::Write, body)
    }

    // ---------------------------------------------------------------- customers

    /// Adds a new (enabled) customer; fails with [`StoreError::DuplicateCustomer`] if the id exists.
    pub fn add_customer(&self, customer: &NewCustomer) -> Result<(), StoreError> {
        let customer = validate(customer)?;
        self.write(|tx| {
            // Insert-or-nothing decides in one statement: two nodes adding the same id at once
            // cannot both succeed (one would silently update the other's row).
            let now = now_ms();
            let n = tx.exec(
                "INSERT INTO customers (id, name, mobile, language, enabled, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5) ON CONFLICT (id) DO NOTHING",
                args![&customer.id, &customer.name, &customer.mobile, &customer.language, now],
            )?;
            if n == 0 {
                return Err(StoreError::DuplicateCustomer(customer.id.clone()));
            }
            write_fields(tx, &customer)
        })
    }

    /// Adds the customer or replaces the record of an existing one (name, mobile, language and
    /// extra fields; the enabled flag and creation time are kept). Returns true if it was new.
    pub fn upsert_customer(&self, customer: &NewCustomer) -> Result<bool, StoreError> {
        let customer = validate(customer)?;
        self.write(|tx| {
            tx.lock(&format!("customer:{}", customer.id))?;
            let created = !customer_exists(tx, &customer.id)?;
            write_customer(tx, &customer, now_ms())?;
            Ok(created)
        })
    }

    /// The customer with this id, enabled or not.
    pub fn find_customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        self.read(|tx| {
            let Some(row) = tx.query_opt(&format!("{SELECT_CUSTOMER} WHERE id = ?1"), args![id])?
            else {
                return Ok(None);
            };
            let mut c = customer_from_row(&row)?;
            c.extra = load_fields(tx, &c.id)?;
            Ok(Some(c))
        })
    }

    /// Every customer (enabled or not) with this E.164 mobile number, by id.
    pub fn find_by_mobile(&self, e164: &str) -> Result<Vec<Customer>, StoreError> {
        self.read(|tx| {
            let rows = tx.query(
                &format!("{SELECT_CUSTOMER} WHERE mobile = ?1 ORDER BY id"),
                args![e164],
            )?;
            let mut customers = Vec::with_capacity(rows.len());
            for row in rows {
                let mut c = customer_from_row(&row)?;
                c.extra = load_fields(tx, &c.id)?;
                customers.push(c);
            }
            Ok(customers)
        })
    }

    /// All customers by id.
    pub fn list_customers(&self) -> Result<Vec<Customer>, StoreError> {
        self.read(|tx| {
            let mut customers = Vec::new();
            tx.for_each(&format!("{SELECT_CUSTOMER} ORDER BY id"), &[], &mut |r| {
                customers.push(customer_from_row(&r)?);
                Ok(())
            })?;
            // One pass over all fields rather than one query per customer.
            let mut fields: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            tx.for_each(
                "SELECT customer_id, name, value FROM customer_fields",
                &[],
                &mut |r| {
                    fields
                        .entry(r.text(0)?)
                        .or_default()
                        .insert(r.text(1)?, r.text(2)?);
                    Ok(())
                },
            )?;
            for c in &mut customers {
                c.extra = fields.remove(&c.id).unwrap_or_default();
            }
            Ok(customers)
        })
    }

    /// Enables or disables a customer. Returns false if there is no such customer.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<bool, StoreError> {
        let n = self.write(|tx| {
            tx.exec(
                "UPDATE customers SET enabled = ?2, updated_at = ?3 WHERE id = ?1",
                args![id, enabled, now_ms()],
            )
        })?;
        Ok(n > 0)
    }

    /// Removes a customer with its fields, failures, lock-out and SMS history (the audit log
    /// keeps its rows). Returns false if there was no such customer.
    pub fn remove_customer(&self, id: &str) -> Result<bool, StoreError> {
        let n = self.write(|tx| tx.exec("DELETE FROM customers WHERE id = ?1", args![id]))?;
        Ok(n > 0)
    }

    /// Imports customers from CSV with a header row naming at least `id`, `name` and `mobile`
    /// (any order, any case); an optional `language` column; every other column becomes an extra
    /// field. National numbers are read in `default_region`.
    ///
    /// Good rows are upserted (see [`Store::upsert_customer`]) in one transaction; bad rows are
    /// reported with their line number and reason, and a row repeating an earlier id is rejected.
    /// A missing header column, an unknown region or an I/O error imports nothing. The reading
    /// and checking is [`parse_customers_csv`]; this adds the writing.
    pub fn import_csv(
        &self,
        reader: impl Read,
        default_region: &str,
    ) -> Result<ImportReport, StoreError> {
        self.import_csv_with(reader, &ImportOptions::new(default_region))
    }

    /// [`Store::import_csv`] with options: another delimiter, a dry run (everything checked
    /// and counted in a transaction that is rolled back), and sync (enabled customers the file
    /// does not name are disabled, unless a row was rejected). Also warns about rows that
    /// import but will not work as expected: ids no keypad can type, a mobile shared with
    /// another customer (a lookup by caller ID then finds neither).
    pub fn import_csv_with(
        &self,
        reader: impl Read,
        opts: &ImportOptions,
    ) -> Result<ImportReport, StoreError> {
        let CsvCustomers {
            customers: good,
            rejected,
            lines,
            warnings,
        } = parse_customers_csv_with(reader, &opts.region, opts.delimiter)?;
        let mut seed = Some(ImportReport {
            rejected,
            warnings,
            ..ImportReport::default()
        });
        let mut result = None;
        self.backend.transaction(Mode::Write, &mut |tx| {
            // Two imports (two nodes' admins) serialise: the created/updated counts come
            // from reads made before the writes.
            tx.lock("import")?;
            let seed = seed.take().ok_or(StoreError::Interrupted)?;
            result = Some(import_rows(tx, &good, &lines, opts, seed)?);
            Ok(if opts.dry_run {
                End::Rollback
            } else {
                End::Commit
            })
        })?;
        result.ok_or_else(|| StoreError::Decode("the import ended without its report".into()))
    }

    // ---------------------------------------------------------------- failures and lock-outs

    /// Records one wrong PIN for the customer at `at`.
    pub fn record_failure(&self, customer_id: &str, at: SystemTime) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO failures (customer_id, at) VALUES (?1, ?2)",
                args![customer_id, to_ms(at)],
            )
        })?;
        Ok(())
    }

    /// Wrong PINs recorded for the customer at or after `since`.
    pub fn failures_since(&self, customer_id: &str, since: SystemTime) -> Result<u32, StoreError> {
        self.read(|tx| {
            tx.count(
                "SELECT COUNT(*) FROM failures WHERE customer_id = ?1 AND at >= ?2",
                args![customer_id, to_ms(since)],
            )
        })
    }

    /// Records one wrong PIN for the customer at `at` and, when that makes `threshold` or more
    /// since `since`, locks the customer out (one level above the last lock-out, for
    /// `lockout_for(level)`) and forgets the failures the lock-out used up, all in one
    /// transaction under the customer's lock: two wrong PINs checked at the same moment (on
    /// one node or two) cannot both count before either locks, nor lock twice at one level.
    /// Returns the new lock-out's level and the failures that made it, if one was made.
    pub fn record_failure_and_lock(
        &self,
        customer_id: &str,
        at: SystemTime,
        since: SystemTime,
        threshold: u32,
        lockout_for: impl Fn(u32) -> std::time::Duration,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        self.write(|tx| {
            tx.lock(&format!("subject:{customer_id}"))?;
            tx.exec(
                "INSERT INTO failures (customer_id, at) VALUES (?1, ?2)",
                args![customer_id, to_ms(at)],
            )?;
            let failures = tx.count(
                "SELECT COUNT(*) FROM failures WHERE customer_id = ?1 AND at >= ?2",
                args![customer_id, to_ms(since)],
            )?;
            if failures < threshold {
                return Ok(None);
            }
            let level =
                read_lockout(tx, customer_id)?.map_or(1, |(_, level)| level.saturating_add(1));
            tx.exec(
                "INSERT INTO lockouts (customer_id, until, level) VALUES (?1, ?2, ?3)
                 ON CONFLICT (customer_id) DO UPDATE SET until = excluded.until, level = excluded.level",
                args![customer_id, to_ms(at + lockout_for(level)), level],
            )?;
            tx.exec(
                "DELETE FROM failures WHERE customer_id = ?1",
                args![customer_id],
            )?;
            Ok(Some((level, failures)))
        })
    }

    /// Forgets the customer's recorded wrong PINs.
    pub fn clear_failures(&self, customer_id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM failures WHERE customer_id = ?1",
                args![customer_id],
            )
        })?;
        Ok(())
    }

    /// Writes a consistent copy of what decides a call (customers, their fields, failures,
    /// lock-outs, sends, the guard's counts and breakers; not the audit, API keys or
    /// verifications) to a new SQLite file at `path`, e.g. for a simulation that must not
    /// spend real limits. Works from either backend.
    pub fn copy_to(&self, path: &Path) -> Result<(), StoreError> {
        let copy = Store::open(path)?;
        let mut tables: Vec<(&str, &str, Vec<Vec<backend::Value>>)> = COPIED_TABLES
            .iter()
            .map(|(t, c)| (*t, *c, Vec::new()))
            .collect();
        // One read transaction: a consistent snapshot of every table.
        self.read(|tx| {
            for (table, columns, rows) in tables.iter_mut() {
                rows.clear();
                tx.for_each(&format!("SELECT {columns} FROM {table}"), &[], &mut |r| {
                    rows.push(r.into_values());
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        copy.write(|tx| {
            for (table, columns, rows) in &tables {
                let n = columns.split(',').count();
                let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
                let sql = format!(
                    "INSERT INTO {table} ({columns}) VALUES ({})",
                    marks.join(", ")
                );
                for row in rows {
                    tx.exec(&sql, row)?;
                }
            }
            Ok(())
        })
    }

    /// Records a wrong PIN typed for the decoy `subject` at `at` and returns how many it has
    /// had since `since` (this one included), in one transaction under the subject's lock.
    pub fn record_decoy_failure(
        &self,
        subject: &str,
        at: SystemTime,
        since: SystemTime,
    ) -> Result<u32, StoreError> {
        self.write(|tx| {
            tx.lock(&format!("subject:{subject}"))?;
            tx.exec(
                "INSERT INTO decoy_failures (subject, at) VALUES (?1, ?2)",
                args![subject, to_ms(at)],
            )?;
            tx.count(
                "SELECT COUNT(*) FROM decoy_failures WHERE subject = ?1 AND at >= ?2",
                args![subject, to_ms(since)],
            )
        })
    }

    /// Forgets the wrong PINs typed for the decoy `subject`; returns how many there were.
    pub fn clear_decoy_failures(&self, subject: &str) -> Result<usize, StoreError> {
        let n = self.write(|tx| {
            tx.exec(
                "DELETE FROM decoy_failures WHERE subject = ?1",
                args![subject],
            )
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Locks the customer out until `until`, at `level` (1 for the first lock-out; the policy
    /// makes waits grow with it). Replaces any earlier lock-out.
    pub fn lock(&self, customer_id: &str, until: SystemTime, level: u32) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO lockouts (customer_id, until, level) VALUES (?1, ?2, ?3)
                 ON CONFLICT (customer_id) DO UPDATE SET until = excluded.until, level = excluded.level",
                args![customer_id, to_ms(until), level],
            )
        })?;
        Ok(())
    }

    /// The customer's last lock-out (`until`, `level`), whether or not it has ended: the level is
    /// what makes the next wait longer.
    pub fn lockout(&self, customer_id: &str) -> Result<Option<(SystemTime, u32)>, StoreError> {
        self.read(|tx| read_lockout(tx, customer_id))
    }

    /// Ends the customer's lock-out and resets its level (a verified caller, or an admin's unlock).
    /// Returns whether there was a lock-out row.
    pub fn clear_lockout(&self, customer_id: &str) -> Result<bool, StoreError> {
        let n = self.write(|tx| {
            tx.exec(
                "DELETE FROM lockouts WHERE customer_id = ?1",
                args![customer_id],
            )
        })?;
        Ok(n > 0)
    }

    // ---------------------------------------------------------------- SMS sends

    /// Records one PIN SMS for the customer, requested by `caller`, at `at`.
    pub fn record_sms(
        &self,
        customer_id: &str,
        caller: &str,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO sms_sends (customer_id, caller, at) VALUES (?1, ?2, ?3)",
                args![customer_id, caller, to_ms(at)],
            )
        })?;
        Ok(())
    }

    /// PIN SMS sent to the customer at or after `since`.
    pub fn sms_count_for_customer(
        &self,
        customer_id: &str,
        since: SystemTime,
    ) -> Result<u32, StoreError> {
        self.read(|tx| {
            tx.count(
                "SELECT COUNT(*) FROM sms_sends WHERE customer_id = ?1 AND at >= ?2",
                args![customer_id, to_ms(since)],
            )
        })
    }

    /// PIN SMS requested by the caller (for any customer) at or after `since`.
    pub fn sms_count_for_caller(&self, caller: &str, since: SystemTime) -> Result<u32, StoreError> {
        self.read(|tx| {
            tx.count(
                "SELECT COUNT(*) FROM sms_sends WHERE caller = ?1 AND at >= ?2",
                args![caller, to_ms(since)],
            )
        })
    }

    /// Checks both SMS limits and records the send only if neither is reached, in one
    /// transaction, so two concurrent calls cannot both take the last allowed send.
    pub fn admit_sms(
        &self,
        customer_id: &str,
        caller: &str,
        at: SystemTime,
        since: SystemTime,
        max_per_customer: u32,
        max_per_caller: u32,
    ) -> Result<SmsAdmission, StoreError> {
        self.admit(&Admission {
            decoy: false,
            goes_out: true,
            subject: customer_id,
            caller,
            at,
            since,
            per_subject: max_per_customer,
            per_caller: max_per_caller,
            guard: None,
        })
    }

    /// Admits one send under its limits (and the fraud guard's, if asked), recording it only
    /// if admitted, all in one transaction under the subject's, the caller's and (with a
    /// guard) the guard's locks: two calls, or two nodes, cannot both take the last allowed
    /// send. A decoy's sends (an id that is no usable customer) are counted in a table of
    /// their own; the caller's limit counts real and decoy sends together.
    pub fn admit(&self, a: &Admission<'_>) -> Result<SmsAdmission, StoreError> {
        let Admission {
            decoy,
            goes_out,
            subject,
            caller,
            at,
            since,
            per_subject: max_per_subject,
            per_caller: max_per_caller,
            guard,
        } = *a;
        let (count_subject, insert) = if decoy {
            (
                "SELECT COUNT(*) FROM decoy_sends WHERE subject = ?1 AND at >= ?2",
                "INSERT INTO decoy_sends (subject, caller, at) VALUES (?1, ?2, ?3)",
            )
        } else {
            (
                "SELECT COUNT(*) FROM sms_sends WHERE customer_id = ?1 AND at >= ?2",
                "INSERT INTO sms_sends (customer_id, caller, at) VALUES (?1, ?2, ?3)",
            )
        };
        self.write(|tx| {
            // Always in this order (subject, caller, guard): no two decisions wait on each other.
            tx.lock(&format!("subject:{subject}"))?;
            tx.lock(&format!("caller:{caller}"))?;
            // A lock-out made a moment ago (on another node, say) between the caller's check
            // and this send: decided here, under the subject's lock, it lets no SMS out.
            if !decoy && read_lockout(tx, subject)?.is_some_and(|(until, _)| until > at) {
                return Ok(SmsAdmission::LockedOut);
            }
            if let Some(g) = guard {
                tx.lock("guard")?;
                // A breaker that just tripped is recorded: keep that, though nothing is sent.
                if let Some(stop) = guard_stop(tx, g, at)? {
                    return Ok(SmsAdmission::Guard(stop));
                }
            }
            if tx.count(count_subject, args![subject, to_ms(since)])? >= max_per_subject {
                return Ok(SmsAdmission::CustomerLimit);
            }
            let for_caller = tx.count(
                "SELECT (SELECT COUNT(*) FROM sms_sends WHERE caller = ?1 AND at >= ?2)
                      + (SELECT COUNT(*) FROM decoy_sends WHERE caller = ?1 AND at >= ?2)",
                args![caller, to_ms(since)],
            )?;
            if for_caller >= max_per_caller {
                return Ok(SmsAdmission::CallerLimit);
            }
            tx.exec(insert, args![subject, caller, to_ms(at)])?;
            // A decoy sends nothing: it spends no budget (but is refused when one is spent).
            if let Some(g) = guard
                && goes_out
            {
                tx.exec(
                    "INSERT INTO guard_sends (prefix, code, at) VALUES (?1, ?2, ?3)",
                    args![g.prefix, g.code, to_ms(at)],
                )?;
            }
            Ok(SmsAdmission::Recorded)
        })
    }

    /// A PIN sent to `prefix` was verified at `at` (the breaker's ratio).
    pub fn record_verified(&self, prefix: &str, at: SystemTime) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO guard_verified (prefix, at) VALUES (?1, ?2)",
                args![prefix, to_ms(at)],
            )
        })?;
        Ok(())
    }

    /// Open breakers at `at`: prefix and until when.
    pub fn open_breakers(&self, at: SystemTime) -> Result<Vec<(String, SystemTime)>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT prefix, until FROM breakers WHERE until > ?1 ORDER BY prefix LIMIT 1000",
                args![to_ms(at)],
            )?
            .into_iter()
            .map(|r| Ok((r.text(0)?, from_ms(r.int(1)?))))
            .collect()
        })
    }

    /// PIN SMS counted by the guard since `since`, all destinations.
    pub fn guard_sends_since(&self, since: SystemTime) -> Result<u32, StoreError> {
        self.read(|tx| {
            tx.count(
                "SELECT COUNT(*) FROM guard_sends WHERE at >= ?1",
                args![to_ms(since)],
            )
        })
    }

    /// PIN SMS counted by the guard to calling code `code` since `since`.
    pub fn guard_sends_to_code_since(
        &self,
        code: &str,
        since: SystemTime,
    ) -> Result<u32, StoreError> {
        self.read(|tx| {
            tx.count(
                "SELECT COUNT(*) FROM guard_sends WHERE code = ?1 AND at >= ?2",
                args![code, to_ms(since)],
            )
        })
    }

    /// One more wrong PIN in a row for the customer; returns the new count.
    pub fn bump_failures_in_a_row(&self, customer_id: &str) -> Result<u32, StoreError> {
        self.write(|tx| {
            tx.query_opt(
                "UPDATE customers SET failures_in_a_row = failures_in_a_row + 1 WHERE id = ?1
                 RETURNING failures_in_a_row",
                args![customer_id],
            )?
            .map_or(Ok(0), |r| r.count(0))
        })
    }

    /// The customer's wrong PINs in a row.
    pub fn failures_in_a_row(&self, customer_id: &str) -> Result<u32, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT failures_in_a_row FROM customers WHERE id = ?1",
                args![customer_id],
            )?
            .map_or(Ok(0), |r| r.count(0))
        })
    }

    /// A right PIN, or an admin's unlock: the count starts again.
    pub fn reset_failures_in_a_row(&self, customer_id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE customers SET failures_in_a_row = 0 WHERE id = ?1",
                args![customer_id],
            )
        })?;
        Ok(())
    }

    /// Takes back one send that [`Store::admit_sms`] recorded for `customer_id` and `caller`
    /// at `at`, because nothing went out: it no longer counts against either limit, nor
    /// (with the same time) against the guard's budgets. One transaction: a crash cannot
    /// take back one and not the other.
    pub fn refund_sms(
        &self,
        customer_id: &str,
        caller: &str,
        at: SystemTime,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let row = tx.dialect().row_locator();
            let n = tx.exec(
                &format!(
                    "DELETE FROM sms_sends WHERE {row} =
                        (SELECT {row} FROM sms_sends WHERE customer_id = ?1 AND caller = ?2
                         AND at = ?3 LIMIT 1)"
                ),
                args![customer_id, caller, to_ms(at)],
            )?;
            if n == 1 {
                tx.exec(
                    &format!(
                        "DELETE FROM guard_sends WHERE {row} =
                            (SELECT {row} FROM guard_sends WHERE at = ?1 LIMIT 1)"
                    ),
                    args![to_ms(at)],
                )?;
            }
            Ok(n == 1)
        })
    }

    /// Deletes failures, SMS sends and the guard's counts older than `older_than` (they no
    /// longer count towards any window). Lock-outs and the audit log are kept.
    pub fn purge(&self, older_than: SystemTime) -> Result<PurgeReport, StoreError> {
        let cutoff = to_ms(older_than);
        self.write(|tx| {
            let mut delete = |table: &str| -> Result<usize, StoreError> {
                let n = tx.exec(&format!("DELETE FROM {table} WHERE at < ?1"), args![cutoff])?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            };
            Ok(PurgeReport {
                failures: delete("failures")? + delete("decoy_failures")?,
                sms_sends: delete("sms_sends")? + delete("decoy_sends")?,
                guard_rows: delete("guard_sends")? + delete("guard_verified")?,
            })
            .and_then(|report| {
                // PINs long expired (an expired one is also deleted when it is checked).
                tx.exec("DELETE FROM pins WHERE expires_at < ?1", args![cutoff])?;
                Ok(report)
            })
        })
    }

    // ---------------------------------------------------------------- audit

    /// Appends one row to the audit log.
    pub fn write_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        self.write_audit_batch(std::slice::from_ref(row))
    }

    /// Writes several audit rows in one transaction: one commit (one fsync) for all of them.
    /// All or none: a failure rolls the whole batch back.
    pub fn write_audit_batch(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        self.write(|tx| {
            for row in rows {
                tx.exec(
                    "INSERT INTO audit (call_id, caller, dialed, customer_id, outcome, started_at,
                                        ended_at, dtmf_methods, detail, transfer_target,
                                        transfer_status, transfer_ms, transport, srtp)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    args![
                        &row.call_id,
                        &row.caller,
                        &row.dialed,
                        &row.customer_id,
                        &row.outcome,
                        to_ms(row.started_at),
                        to_ms(row.ended_at),
                        &row.dtmf_methods,
                        &row.detail,
                        row.transfer.as_ref().map(|t| t.target.as_str()),
                        row.transfer.as_ref().and_then(|t| t.status),
                        row.transfer
                            .as_ref()
                            .map(|t| i64::try_from(t.ms).unwrap_or(i64::MAX)),
                        &row.transport,
                        &row.srtp,
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// Raw SQL against the store, for tests that must break it on purpose.
    #[cfg(test)]
    pub(crate) fn execute_batch_for_tests(&self, sql: &str) -> Result<(), StoreError> {
        self.write(|tx| tx.batch(sql))
    }

    /// The outcome and end of the customer's last audited call, and the end of their last
    /// verified one (for `ivrd customers show`).
    pub fn last_calls(&self, customer_id: &str) -> Result<LastCalls, StoreError> {
        self.read(|tx| {
            let last = tx
                .query_opt(
                    "SELECT outcome, ended_at FROM audit WHERE customer_id = ?1
                     ORDER BY started_at DESC, id DESC LIMIT 1",
                    args![customer_id],
                )?
                .map(|r| Ok::<_, StoreError>((r.text(0)?, from_ms(r.int(1)?))))
                .transpose()?;
            let verified = tx
                .query_opt(
                    "SELECT ended_at FROM audit WHERE customer_id = ?1 AND outcome = 'verified'
                     ORDER BY started_at DESC, id DESC LIMIT 1",
                    args![customer_id],
                )?
                .map(|r| r.int(0).map(from_ms))
                .transpose()?;
            Ok(LastCalls { last, verified })
        })
    }

    /// Forgets the customer's SMS sends (they no longer count against the limit).
    pub fn clear_sms_sends(&self, customer_id: &str) -> Result<usize, StoreError> {
        let n = self.write(|tx| {
            tx.exec(
                "DELETE FROM sms_sends WHERE customer_id = ?1",
                args![customer_id],
            )
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The last `limit` audit rows written, newest first.
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            tx.query(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"),
                args![limit],
            )?
            .iter()
            .map(|r| audit_from_row(r, 0))
            .collect()
        })
    }

    /// Hands `each` the audit rows that match `filter`, newest call first (by start, then by
    /// the order written), one at a time: an export of the whole table needs no memory for it.
    /// Stops at the first error `each` returns. The filter is bound as parameters, and the
    /// query is shaped so that the database walks `audit_by_customer` (a customer given) or
    /// `audit_by_start` in the order wanted, with no sort.
    pub fn for_each_audit<E: From<StoreError>>(
        &self,
        filter: &AuditFilter,
        mut each: impl FnMut(AuditRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        let (sql, values) = audit_query(filter);
        let mut stopped: Option<E> = None;
        let done = self.read(|tx| {
            tx.for_each(&sql, &values, &mut |r| {
                let record = AuditRecord {
                    id: r.int(0)?,
                    row: audit_from_row(&r, 1)?,
                };
                each(record).map_err(|e| {
                    stopped = Some(e);
                    StoreError::Interrupted
                })
            })
        });
        match (done, stopped) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Deletes the audit rows of calls that started before `older_than` (`[audit] keep_days`,
    /// `ivrd audit prune`); returns how many.
    pub fn prune_audit(&self, older_than: SystemTime) -> Result<usize, StoreError> {
        self.prune_audit_batches(older_than, AUDIT_PRUNE_BATCH, || true)
    }

    /// [`Store::prune_audit`] in statements of at most `batch` rows, each its own short
    /// transaction: a first prune of a table years deep must not hold the write lock (and the
    /// connection) for seconds while calls wait to write their rows and look up customers.
    /// Before each batch after the first, `keep_going` may say stop (the daemon shutting down);
    /// returns the rows deleted so far.
    pub fn prune_audit_batches(
        &self,
        older_than: SystemTime,
        batch: usize,
        mut keep_going: impl FnMut() -> bool,
    ) -> Result<usize, StoreError> {
        let batch = batch.max(1);
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let cutoff = to_ms(older_than);
        let mut total = 0;
        loop {
            // Each batch is its own transaction: others get the connection between batches.
            let n = self.write(|tx| {
                tx.exec(
                    "DELETE FROM audit WHERE id IN
                        (SELECT id FROM audit WHERE started_at < ?1 ORDER BY started_at LIMIT ?2)",
                    args![cutoff, limit],
                )
            })?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            total += n;
            if n < batch || !keep_going() {
                return Ok(total);
            }
            // std's mutex is not fair and SQLite's busy handler polls: without a pause this
            // thread would take both locks straight back and starve the writers it waits for.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What [`Store::copy_to`] copies, parents before children (foreign keys).
const COPIED_TABLES: [(&str, &str); 10] = [
    (
        "customers",
        "id, name, mobile, language, enabled, created_at, updated_at, failures_in_a_row",
    ),
    ("customer_fields", "customer_id, name, value"),
    ("failures", "customer_id, at"),
    ("lockouts", "customer_id, until, level"),
    ("sms_sends", "customer_id, caller, at"),
    ("decoy_sends", "subject, caller, at"),
    ("decoy_failures", "subject, at"),
    ("guard_sends", "prefix, code, at"),
    ("guard_verified", "prefix, at"),
    ("breakers", "prefix, until"),
];

/// Rows per statement of [`Store::prune_audit`]: a few milliseconds of work each.
pub const AUDIT_PRUNE_BATCH: usize = 1000;

/// The columns [`audit_from_row`] reads, in its order.
const AUDIT_COLUMNS: &str = "call_id, caller, dialed, customer_id, outcome, started_at, \
     ended_at, dtmf_methods, detail, transfer_target, transfer_status, transfer_ms, transport, srtp";

/// An [`AuditRow`] from [`AUDIT_COLUMNS`] starting at column `first`.
fn audit_from_row(r: &Row, first: usize) -> Result<AuditRow, StoreError> {
    let c = |i: usize| first + i;
    Ok(AuditRow {
        call_id: r.text(c(0))?,
        caller: r.text(c(1))?,
        dialed: r.text(c(2))?,
        customer_id: r.opt_text(c(3))?,
        outcome: r.text(c(4))?,
        started_at: from_ms(r.int(c(5))?),
        ended_at: from_ms(r.int(c(6))?),
        dtmf_methods: r.text(c(7))?,
        detail: r.opt_text(c(8))?,
        transfer: r.opt_text(c(9))?.map(|target| AuditTransfer {
            target,
            status: r
                .opt_int(c(10))
                .ok()
                .flatten()
                .and_then(|s| u16::try_from(s).ok()),
            ms: r
                .opt_int(c(11))
                .ok()
                .flatten()
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(0),
        }),
        transport: r.opt_text(c(12))?,
        srtp: r.opt_text(c(13))?,
    })
}

/// Which audit rows [`Store::for_each_audit`] yields: all conditions given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Calls that started at or after this.
    pub since: Option<SystemTime>,
    /// Calls that started before this.
    pub until: Option<SystemTime>,
    /// Any of these outcomes (none: any outcome).
    pub outcomes: Vec<String>,
    pub customer_id: Option<String>,
    /// Any of these caller numbers, compared as recorded (none: any caller).
    pub callers: Vec<String>,
    /// At most this many rows (the newest).
    pub limit: Option<usize>,
}

/// One audit row with its id (the order rows were written in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub row: AuditRow,
}

/// The SQL and its bound values for `filter`. Only placeholders are put into the text, never
/// a value. `ORDER BY started_at DESC, id DESC` matches both audit indexes (an index holds
/// the rowid, which `id` is), so SQLite reads them backwards instead of sorting.
fn audit_query(filter: &AuditFilter) -> (String, Vec<Value>) {
    let mut values: Vec<Value> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let bind = |values: &mut Vec<Value>, v: Value| {
        values.push(v);
        format!("?{}", values.len())
    };
    if let Some(id) = &filter.customer_id {
        let p = bind(&mut values, Value::Text(id.clone()));
        conds.push(format!("customer_id = {p}"));
    }
    if let Some(t) = filter.since {
        let p = bind(&mut values, Value::Int(to_ms(t)));
        conds.push(format!("started_at >= {p}"));
    }
    if let Some(t) = filter.until {
        let p = bind(&mut values, Value::Int(to_ms(t)));
        conds.push(format!("started_at < {p}"));
    }
    for (column, list) in [("outcome", &filter.outcomes), ("caller", &filter.callers)] {
        if list.is_empty() {
            continue;
        }
        let ps: Vec<String> = list
            .iter()
            .map(|v| bind(&mut values, Value::Text(v.clone())))
            .collect();
        conds.push(format!("{column} IN ({})", ps.join(", ")));
    }
    let mut sql = format!("SELECT id, {AUDIT_COLUMNS} FROM audit");
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY started_at DESC, id DESC");
    if let Some(limit) = filter.limit {
        let p = bind(
            &mut values,
            Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
        );
        sql.push_str(&format!(" LIMIT {p}"));
    }
    (sql, values)
}

/// A customer's last call (its outcome and end) and last verified call (its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCalls {
    pub last: Option<(String, SystemTime)>,
    pub verified: Option<SystemTime>,
}

/// One send to admit ([`Store::admit`]): whose, asked by whom, when, and under which limits.
#[derive(Clone, Copy)]
pub struct Admission<'a> {
    /// The subject is no customer (a decoy, or a number the API verifies): its sends are
    /// counted in a table of their own.
    pub decoy: bool,
    /// Something is sent: it spends the guard's budgets (a decoy's send does not).
    pub goes_out: bool,
    /// The customer id, or the decoy's subject.
    pub subject: &'a str,
    pub caller: &'a str,
    pub at: SystemTime,
    /// The start of the limits' window.
    pub since: SystemTime,
    /// Sends allowed per subject and per caller in the window.
    pub per_subject: u32,
    pub per_caller: u32,
    /// The fraud guard's question, if it is to be asked.
    pub guard: Option<&'a GuardQuery<'a>>,
}

/// What the fraud guard asks of an admission ([`Store::admit`]): the send's
/// destination, the budgets, and the breaker's rule. The store counts; the rule is the
/// caller's (`verify::guard`).
pub struct GuardQuery<'a> {
    /// The destination's prefix (the breaker's key) and calling code.
    pub prefix: &'a str,
    pub code: &'a str,
    /// Sends per hour and per day, all destinations (0: no limit).
    pub per_hour: u32,
    pub per_day: u32,
    /// Sends per hour to this calling code, if it has a budget.
    pub code_per_hour: Option<u32>,
    /// The breaker's window and pause (a zero window: no breaker).
    pub breaker_window: Duration,
    pub breaker_pause: Duration,
    /// Sends younger than this are not judged yet: their PIN may still be typed (the PIN's
    /// validity), or a burst of honest sends would trip the breaker before anyone could
    /// verify.
    pub breaker_grace: Duration,
    /// Given the sends to the prefix and the verified PINs since it was last judged: trip?
    pub trips: &'a dyn Fn(u32, u32) -> bool,
}

/// Which of the guard's limits stopped a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardStop {
    HourBudget,
    DayBudget,
    CodeBudget,
    /// The prefix's breaker is open (or has just tripped).
    Breaker,
}

/// The guard's verdict inside an admission's transaction; a breaker that trips is recorded.
fn guard_stop(
    tx: &mut dyn Tx,
    g: &GuardQuery<'_>,
    at: SystemTime,
) -> Result<Option<GuardStop>, StoreError> {
    let now = to_ms(at);
    let ago = |d: Duration| to_ms(at.checked_sub(d).unwrap_or(UNIX_EPOCH));
    let until: Option<i64> = tx
        .query_opt(
            "SELECT until FROM breakers WHERE prefix = ?1",
            args![g.prefix],
        )?
        .map(|r| r.int(0))
        .transpose()?;
    if until.is_some_and(|u| u > now) {
        return Ok(Some(GuardStop::Breaker));
    }
    let hour = ago(Duration::from_secs(3600));
    let mut total = |since: i64| {
        tx.count(
            "SELECT COUNT(*) FROM guard_sends WHERE at >= ?1",
            args![since],
        )
    };
    if g.per_hour > 0 && total(hour)? >= g.per_hour {
        return Ok(Some(GuardStop::HourBudget));
    }
    if g.per_day > 0 && total(ago(Duration::from_secs(86_400)))? >= g.per_day {
        return Ok(Some(GuardStop::DayBudget));
    }
    if let Some(max) = g.code_per_hour {
        let n = tx.count(
            "SELECT COUNT(*) FROM guard_sends WHERE code = ?1 AND at >= ?2",
            args![g.code, hour],
        )?;
        if n >= max {
            return Ok(Some(GuardStop::CodeBudget));
        }
    }
    if !g.breaker_window.is_zero() && !g.prefix.is_empty() {
        // Half-open after a pause: only what came after it is judged.
        let since = ago(g.breaker_window).max(until.unwrap_or(i64::MIN));
        let sends = tx.count(
            "SELECT COUNT(*) FROM guard_sends WHERE prefix = ?1 AND at >= ?2 AND at < ?3",
            args![g.prefix, since, ago(g.breaker_grace)],
        )?;
        let verified = tx.count(
            "SELECT COUNT(*) FROM guard_verified WHERE prefix = ?1 AND at >= ?2",
            args![g.prefix, since],
        )?;
        if (g.trips)(sends, verified) {
            tx.exec(
                "INSERT INTO breakers (prefix, until) VALUES (?1, ?2)
                 ON CONFLICT (prefix) DO UPDATE SET until = excluded.until",
                args![g.prefix, to_ms(at + g.breaker_pause)],
            )?;
            return Ok(Some(GuardStop::Breaker));
        }
    }
    Ok(None)
}

/// The result of [`Store::admit_sms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsAdmission {
    /// Under both limits; the send is recorded.
    Recorded,
    /// The customer has had the maximum number of PIN SMS in the window.
    CustomerLimit,
    /// The caller has requested the maximum number of PIN SMS in the window.
    CallerLimit,
    /// The fraud guard refused it.
    Guard(GuardStop),
    /// The customer is locked out.
    LockedOut,
}

// -------------------------------------------------------------------- helpers

/// Creates the database file readable by its owner only, if it does not exist yet: it holds
/// customers' phone numbers and the call audit. SQLite gives the `-wal` and `-shm` files the
/// main file's permissions. An existing file's permissions are the admin's business and left alone.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why `synchronous = FULL` rather than NORMAL: in WAL mode NORMAL can lose the last commits on
/// a power cut (not on a crash). Our writes are a few rows per call, so an fsync per commit is
/// cheap, and the rows at stake are lock-outs, failures and the audit trail: losing them would
/// hand an attacker fresh tries and erase the evidence.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Switching a new file to WAL takes an exclusive lock that SQLite does not wait for with
    // the busy handler: two processes creating the file at once (the daemon and an admin
    // command) would see "database is locked". So wait here, as long as the busy timeout.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal(mode));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    debug_assert!(fk, "foreign keys must be on: the cascades depend on them");
    Ok(())
}

/// The schema version in the database, 0 for an empty one.
fn read_version(tx: &mut dyn Tx) -> Result<u32, StoreError> {
    let exists = match tx.dialect() {
        Dialect::Sqlite => tx.count(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            &[],
        )?,
        Dialect::Postgres => tx.count(
            "SELECT COUNT(*) FROM pg_catalog.pg_tables
             WHERE schemaname = current_schema() AND tablename = 'schema_version'",
            &[],
        )?,
    };
    if exists == 0 {
        return Ok(0);
    }
    tx.query_opt("SELECT version FROM schema_version", &[])?
        .map_or(Ok(0), |r| r.count(0))
}

/// Applies the missing migrations, each in its own write transaction that takes the
/// migration lock and re-reads the version first, so two processes (two nodes) opening a
/// fresh database at once cannot both apply a step. Returns the version it found first.
fn migrate(backend: &dyn Backend) -> Result<u32, StoreError> {
    let mut first = None;
    loop {
        let mut done = false;
        backend.transaction(Mode::Write, &mut |tx| {
            tx.lock("migrate")?;
            let (create, steps) = match tx.dialect() {
                Dialect::Sqlite => (
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
                    MIGRATIONS,
                ),
                Dialect::Postgres => (
                    "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
                    pg_migrations::PG_MIGRATIONS,
                ),
            };
            let version = read_version(tx)?;
            first.get_or_insert(version);
            if version > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    found: version,
                    known: SCHEMA_VERSION,
                });
            }
            if version == SCHEMA_VERSION {
                done = true;
                return Ok(End::Commit);
            }
            tx.batch(create)?;
            tx.batch(steps[version as usize])?;
            tx.exec("DELETE FROM schema_version", &[])?;
            tx.exec(
                "INSERT INTO schema_version (version) VALUES (?1)",
                args![version + 1],
            )?;
            Ok(End::Commit)
        })?;
        if done {
            return Ok(first.unwrap_or(SCHEMA_VERSION));
        }
    }
}

const SELECT_CUSTOMER: &str =
    "SELECT id, name, mobile, language, enabled, created_at, updated_at FROM customers";

fn customer_from_row(r: &Row) -> Result<Customer, StoreError> {
    Ok(Customer {
        id: r.text(0)?,
        name: r.text(1)?,
        mobile: r.text(2)?,
        language: r.opt_text(3)?,
        enabled: r.int(4)? != 0,
        created_at: from_ms(r.int(5)?),
        updated_at: from_ms(r.int(6)?),
        extra: BTreeMap::new(),
    })
}

fn load_fields(tx: &mut dyn Tx, id: &str) -> Result<BTreeMap<String, String>, StoreError> {
    tx.query(
        "SELECT name, value FROM customer_fields WHERE customer_id = ?1",
        args![id],
    )?
    .into_iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?)))
    .collect()
}

fn customer_exists(tx: &mut dyn Tx, id: &str) -> Result<bool, StoreError> {
    Ok(tx.count("SELECT COUNT(*) FROM customers WHERE id = ?1", args![id])? > 0)
}

/// Inserts or updates the customer row (keeping `enabled` and `created_at` of an existing one)
/// and replaces its extra fields.
fn write_customer(tx: &mut dyn Tx, c: &NewCustomer, now: i64) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO customers (id, name, mobile, language, enabled, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, mobile = excluded.mobile,
             language = excluded.language, updated_at = excluded.updated_at",
        args![&c.id, &c.name, &c.mobile, &c.language, now],
    )?;
    write_fields(tx, c)
}

/// Replaces the customer's extra fields.
fn write_fields(tx: &mut dyn Tx, c: &NewCustomer) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM customer_fields WHERE customer_id = ?1",
        args![&c.id],
    )?;
    for (name, value) in &c.extra {
        tx.exec(
            "INSERT INTO customer_fields (customer_id, name, value) VALUES (?1, ?2, ?3)",
            args![&c.id, name, value],
        )?;
    }
    Ok(())
}

/// The writing half of [`Store::import_csv_with`], inside its transaction.
fn import_rows(
    tx: &mut dyn Tx,
    good: &[NewCustomer],
    lines: &[u64],
    opts: &ImportOptions,
    mut report: ImportReport,
) -> Result<ImportReport, StoreError> {
    let now = now_ms();
    let in_file: HashSet<&str> = good.iter().map(|c| c.id.as_str()).collect();
    for (c, &line) in good.iter().zip(lines) {
        // Another customer (not in this file, which was checked on its own) with the
        // same mobile.
        let shared: Vec<String> = tx
            .query(
                "SELECT id FROM customers WHERE mobile = ?1 AND id != ?2 AND enabled = 1",
                args![&c.mobile, &c.id],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|id| !in_file.contains(id.as_str()))
            .collect();
        // Under a sync that will disable them, the others are no clash.
        let others_disabled = opts.sync && report.rejected.is_empty();
        if !shared.is_empty() && !others_disabled {
            report.warnings.push(ImportWarning {
                line,
                message: format!(
                    "mobile {} is also customer {}'s: a lookup by caller ID finds neither",
                    c.mobile,
                    shared.join(", ")
                ),
            });
        }
        if customer_exists(tx, &c.id)? {
            report.updated += 1;
        } else {
            report.created += 1;
        }
        write_customer(tx, c, now)?;
    }
    if opts.sync {
        if report.rejected.is_empty() {
            let enabled = tx.query(
                "SELECT id FROM customers WHERE enabled = 1 ORDER BY id",
                &[],
            )?;
            for row in enabled {
                let id = row.text(0)?;
                if !in_file.contains(id.as_str()) {
                    tx.exec(
                        "UPDATE customers SET enabled = 0, updated_at = ?2 WHERE id = ?1",
                        args![&id, now],
                    )?;
                    report.disabled.push(id);
                }
            }
        } else {
            report.sync_skipped = true;
        }
    }
    report.warnings.sort_by_key(|w| w.line);
    Ok(report)
}

/// Checks and normalises a record: trimmed id and name, an E.164 mobile, a normalised language.
fn validate(c: &NewCustomer) -> Result<NewCustomer, InvalidCustomer> {
    let id = validate_id(&c.id)?;
    let name = validate_name(&c.name)?;
    // Already E.164 by contract; parsing it again (region irrelevant for `+` numbers) catches
    // a caller that skipped normalisation.
    let mobile = match normalize_phone(&c.mobile, "DE") {
        Ok(e164) if e164 == c.mobile.trim() => e164,
        result => {
            return Err(InvalidCustomer::BadMobile {
                input: c.mobile.clone(),
                reason: result.err().unwrap_or(PhoneError::NotE164),
            });
        }
    };
    let language = match c.language.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(l) => Some(normalize_language(l)?),
    };
    let mut extra = BTreeMap::new();
    for (name, value) in &c.extra {
        let name = validate_field_name(name)?;
        let value = value.trim();
        if value.chars().count() > MAX_TEXT_LEN || value.chars().any(char::is_control) {
            return Err(InvalidCustomer::BadFieldValue(name));
        }
        extra.insert(name, value.to_owned());
    }
    Ok(NewCustomer {
        id,
        name,
        mobile,
        language,
        extra,
    })
}

fn validate_id(id: &str) -> Result<String, InvalidCustomer> {
    let id = id.trim();
    if id.is_empty() {
        return Err(InvalidCustomer::MissingId);
    }
    if id.chars().count() > MAX_ID_LEN || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidCustomer::BadId(id.to_owned()));
    }
    Ok(id.to_owned())
}

fn validate_name(name: &str) -> Result<String, InvalidCustomer> {
    let name = name.trim();
    if name.is_empty() {
        return Err(InvalidCustomer::MissingName);
    }
    if name.chars().count() > MAX_TEXT_LEN || name.chars().any(char::is_control) {
        return Err(InvalidCustomer::BadName);
    }
    Ok(name.to_owned())
}

fn validate_field_name(name: &str) -> Result<String, InvalidCustomer> {
    let trimmed = name.trim();
    let ok = !trimmed.is_empty()
        && trimmed.len() <= MAX_ID_LEN
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !RESERVED_FIELDS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(trimmed));
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(InvalidCustomer::BadFieldName(name.to_owned()))
    }
}

/// The rows of a customer CSV that [`Store::import_csv`] would write, and the ones it would
/// reject (with line and reason), without touching a database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CsvCustomers {
    /// Valid rows in file order, ids unique.
    pub customers: Vec<NewCustomer>,
    /// The line each of `customers` starts on.
    pub lines: Vec<u64>,
    /// Rows not to import, in file order.
    pub rejected: Vec<RejectedRow>,
    /// Valid rows that will not work as expected (an id no keypad can type, a mobile another
    /// row of the file has).
    pub warnings: Vec<ImportWarning>,
}

/// Reads and checks a customer CSV (the format is [`Store::import_csv`]'s): every row either
/// becomes a valid [`NewCustomer`] or a [`RejectedRow`]. Errors are what imports nothing: an
/// unknown region, an unusable header, an I/O or CSV error.
pub fn parse_customers_csv(
    reader: impl Read,
    default_region: &str,
) -> Result<CsvCustomers, StoreError> {
    parse_customers_csv_with(reader, default_region, b',')
}

/// [`parse_customers_csv`] with another field delimiter.
pub fn parse_customers_csv_with(
    reader: impl Read,
    default_region: &str,
    delimiter: u8,
) -> Result<CsvCustomers, StoreError> {
    // Fail on a bad region up front rather than rejecting every row for it.
    parse_region(default_region)?;

    // The csv crate reports line numbers one short after CRLF line ends (rust-csv issue 395),
    // and spreadsheet exports use CRLF; a customer file is small, so read it whole and turn
    // CRLF and lone CR into LF, after which the reported lines are the lines an editor shows.
    let mut raw = Vec::new();
    let mut reader = reader;
    reader.read_to_end(&mut raw).map_err(csv::Error::from)?;
    let text = unify_line_ends(&raw);
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .delimiter(delimiter)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_slice());
    let header = csv.headers()?.clone();
    let columns = Columns::from_header(&header, delimiter)?;

    let mut rejected = Vec::new();
    let mut good: Vec<NewCustomer> = Vec::new();
    let mut lines: Vec<u64> = Vec::new();
    let mut warnings: Vec<ImportWarning> = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut mobiles: HashMap<String, (String, u64)> = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        // Where the next record starts, for errors that carry no position of their own.
        let next_line = csv.position().line();
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(next_line, |p| p.line());
                match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => {
                        rejected.push(RejectedRow {
                            line,
                            reason: RowError::Malformed("not valid UTF-8".into()),
                        });
                        continue;
                    }
                    _ => return Err(e.into()),
                }
            }
        }
        let line = record.position().map_or(next_line, |p| p.line());
        if record.len() != header.len() {
            rejected.push(RejectedRow {
                line,
                reason: RowError::FieldCount {
                    expected: header.len(),
                    found: record.len(),
                },
            });
            continue;
        }
        let result = columns
            .customer(&record, default_region)
            .map_err(RowError::from)
            .and_then(|c| match seen.get(&c.id) {
                Some(&first_line) => Err(RowError::DuplicateId {
                    id: c.id.clone(),
                    first_line,
                }),
                None => Ok(c),
            });
        match result {
            Ok(c) => {
                if !keypad_typeable(&c.id) {
                    warnings.push(ImportWarning {
                        line,
                        message: format!(
                            "id {:?} cannot be typed on a phone keypad (digits only): callers reach this customer only by caller ID",
                            c.id
                        ),
                    });
                }
                match mobiles.get(&c.mobile) {
                    Some((other, first)) => warnings.push(ImportWarning {
                        line,
                        message: format!(
                            "mobile {} is also customer {other}'s (line {first}): a lookup by caller ID finds neither",
                            c.mobile
                        ),
                    }),
                    None => {
                        mobiles.insert(c.mobile.clone(), (c.id.clone(), line));
                    }
                }
                seen.insert(c.id.clone(), line);
                good.push(c);
                lines.push(line);
            }
            Err(reason) => rejected.push(RejectedRow { line, reason }),
        }
    }

    Ok(CsvCustomers {
        customers: good,
        lines,
        rejected,
        warnings,
    })
}

/// Where the known columns are in a CSV header.
struct Columns {
    id: usize,
    name: usize,
    mobile: usize,
    language: Option<usize>,
    /// (index, field name) of every other column.
    extra: Vec<(usize, String)>,
}

impl Columns {
    fn from_header(header: &csv::StringRecord, delimiter: u8) -> Result<Columns, StoreError> {
        // One column holding another separator: a spreadsheet saved with `;` (German and
        // French Excel) or tabs. Say so instead of "bad field name".
        if header.len() == 1 {
            let only = header.get(0).unwrap_or_default();
            if let Some(sep) = [';', '\t', '|', ',']
                .into_iter()
                .find(|&c| c != char::from(delimiter) && only.contains(c))
            {
                let shown = if sep == '\t' {
                    "\\t".to_string()
                } else {
                    sep.to_string()
                };
                return Err(StoreError::CsvHeader(format!(
                    "the header {only:?} is one column: the file separates fields with {sep:?}; save it with commas or pass --delimiter '{shown}'"
                )));
            }
        }
        let mut seen = HashSet::new();
        let (mut id, mut name, mut mobile, mut language) = (None, None, None, None);
        let mut extra = Vec::new();
        for (i, col) in header.iter().enumerate() {
            // A UTF-8 byte order mark from spreadsheet exports must not hide the first column.
            let col = col.trim_start_matches('\u{feff}').trim();
            if !seen.insert(col.to_ascii_lowercase()) {
                return Err(StoreError::CsvHeader(format!(
                    "column {col:?} appears twice"
                )));
            }
            match col.to_ascii_lowercase().as_str() {
                "id" => id = Some(i),
                "name" => name = Some(i),
                "mobile" => mobile = Some(i),
                "language" => language = Some(i),
                _ => {
                    let field = validate_field_name(col)
                        .map_err(|e| StoreError::CsvHeader(e.to_string()))?;
                    extra.push((i, field));
                }
            }
        }
        let require = |col: Option<usize>, what: &str| {
            col.ok_or_else(|| {
                StoreError::CsvHeader(format!(
                    "no {what:?} column (the first line must name the columns, with at least id,name,mobile)"
                ))
            })
        };
        Ok(Columns {
            id: require(id, "id")?,
            name: require(name, "name")?,
            mobile: require(mobile, "mobile")?,
            language,
            extra,
        })
    }

    fn customer(
        &self,
        record: &csv::StringRecord,
        region: &str,
    ) -> Result<NewCustomer, InvalidCustomer> {
        let get = |i: usize| record.get(i).unwrap_or_default();
        let id = validate_id(get(self.id))?;
        let name = validate_name(get(self.name))?;
        let raw_mobile = get(self.mobile);
        let mobile =
            normalize_phone(raw_mobile, region).map_err(|reason| InvalidCustomer::BadMobile {
                input: raw_mobile.to_owned(),
                reason,
            })?;
        let language = self.language.map(get).filter(|l| !l.is_empty());
        let customer = NewCustomer {
            id,
            name,
            mobile,
            language: language.map(str::to_owned),
            extra: self
                .extra
                .iter()
                .map(|(i, field)| (field.clone(), get(*i).to_owned()))
                .collect(),
        };
        if let Some(kind) = not_mobile(&customer.mobile) {
            return Err(InvalidCustomer::NotMobile {
                input: raw_mobile.to_owned(),
                kind,
            });
        }
        // The same checks as add/upsert (language, field values), so a row that passes here
        // cannot fail inside the transaction.
        validate(&customer)
    }
}

/// CRLF and lone CR become LF.
fn unify_line_ends(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b == b'\r' {
            bytes.next_if_eq(&b'\n');
            out.push(b'\n');
        } else {
            out.push(b);
        }
    }
    out
}

fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch, negative before it, saturating far outside.
fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The customer's last lock-out row (`until`, `level`), inside a transaction.
fn read_lockout(
    tx: &mut dyn Tx,
    customer_id: &str,
) -> Result<Option<(SystemTime, u32)>, StoreError> {
    tx.query_opt(
        "SELECT until, level FROM lockouts WHERE customer_id = ?1",
        args![customer_id],
    )?
    .map(|r| Ok((from_ms(r.int(0)?), r.count(1)?)))
    .transpose()
}

fn from_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQLite connection under a store, for checks below the store's API.
    fn sqlite_conn(store: &Store) -> std::sync::MutexGuard<'_, Connection> {
        store.backend.sqlite().expect("a SQLite store").conn()
    }

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("ivrd.sqlite")).unwrap();
        (dir, store)
    }

    fn erika() -> NewCustomer {
        NewCustomer {
            id: "123456".into(),
            name: "Erika Mustermann".into(),
            mobile: "+491701234567".into(),
            language: Some("de".into()),
            extra: BTreeMap::from([("branch".into(), "Köln".into())]),
        }
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn open_creates_a_wal_file_with_the_current_schema() {
        let (dir, store) = temp_store();
        let path = dir.path().join("ivrd.sqlite");
        assert!(path.is_file());
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let conn = sqlite_conn(&store);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        // 2 = FULL
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
    }

    #[test]
    fn a_newer_schema_on_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(Store::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute("UPDATE schema_version SET version = 99", [])
                .unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, known } if known == SCHEMA_VERSION),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("newer than version {SCHEMA_VERSION}")),
            "{err}"
        );
    }

    /// A database of the first schema (before the audit recorded transfers) upgrades in place
    /// and keeps its rows.
    #[test]
    fn a_version_1_database_is_upgraded_with_its_audit_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);
                 INSERT INTO audit (call_id, caller, dialed, customer_id, outcome, started_at,
                                    ended_at, dtmf_methods, detail)
                 VALUES ('old@h', '+4930', '100', NULL, 'verified', 1000, 2000, 'info', NULL);",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rows = store.recent_audit(5).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].call_id, "old@h");
        assert_eq!(rows[0].transfer, None);
        assert_eq!(rows[0].transport, None);
        assert_eq!(rows[0].srtp, None);
    }

    /// A version 3 database (transfers and transport, no media security) upgrades to the
    /// current schema: its rows read back with no SRTP suite, and new rows carry theirs.
    #[test]
    fn a_version_3_database_gains_the_srtp_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for step in &MIGRATIONS[..3] {
                conn.execute_batch(step).unwrap();
            }
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (3);
                 INSERT INTO audit (call_id, caller, dialed, customer_id, outcome, started_at,
                                    ended_at, dtmf_methods, detail, transfer_target, transport)
                 VALUES ('v3@h', '+4930', '100', NULL, 'verified', 1000, 2000, 'info', NULL,
                         'sip:q@pbx', 'TLS');",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let mut row = store.recent_audit(1).unwrap().remove(0);
        assert_eq!((row.call_id.as_str(), row.srtp.as_deref()), ("v3@h", None));
        assert_eq!(row.transport.as_deref(), Some("TLS"));
        assert_eq!(row.transfer.as_ref().unwrap().target, "sip:q@pbx");
        row.call_id = "v4@h".into();
        row.srtp = Some("AES_CM_128_HMAC_SHA1_80".into());
        store.write_audit(&row).unwrap();
        assert_eq!(store.recent_audit(1).unwrap()[0], row);
    }

    #[test]
    fn open_fails_clearly_on_an_unwritable_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(dir.path().join("no/such/dir/db.sqlite")).unwrap_err();
        assert!(matches!(err, StoreError::Create { .. }), "{err}");
        assert!(err.to_string().starts_with("could not create the database"));
        // A directory where the file should be: creating "succeeds" (it exists), SQLite refuses.
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_new_database_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = temp_store();
        store.add_customer(&erika()).unwrap();
        for name in ["ivrd.sqlite", "ivrd.sqlite-wal"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
        }
    }

    #[test]
    fn add_refuses_a_valid_but_non_e164_number_with_a_clear_reason() {
        let (_dir, store) = temp_store();
        let err = store
            .add_customer(&NewCustomer {
                mobile: "0049 170 1234567".into(),
                ..erika()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid customer: bad mobile number \"0049 170 1234567\": not in E.164 form (a + and the country code, digits only, e.g. +491701234567)"
        );
    }

    #[test]
    fn import_counts_physical_lines_across_multi_line_fields() {
        let (_dir, store) = temp_store();
        let csv = "id,name,mobile\n1,\"Two\nLines\",0170 1234567\n2,B,0123\n3,C,0170 1234567\n";
        let report = store.import_csv(csv.as_bytes(), "DE").unwrap();
        let got: Vec<(u64, String)> = report
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    2,
                    "bad name: expected at most 200 characters without control characters"
                        .to_string()
                ),
                (
                    4,
                    "bad mobile number \"0123\": not a valid number for region DE".to_string()
                ),
            ]
        );
        assert_eq!(report.imported(), 1);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }

    #[test]
    fn add_refuses_a_non_e164_mobile_and_bad_fields() {
        let (_dir, store) = temp_store();
        let national = NewCustomer {
            mobile: "0170 1234567".into(),
            ..erika()
        };
        assert!(matches!(
            store.add_customer(&national),
            Err(StoreError::InvalidCustomer(
                InvalidCustomer::BadMobile { .. }
            ))
        ));
        let reserved = NewCustomer {
            extra: BTreeMap::from([("Mobile".into(), "x".into())]),
            ..erika()
        };
        assert!(matches!(
            store.add_customer(&reserved),
            Err(StoreError::InvalidCustomer(InvalidCustomer::BadFieldName(
                _
            )))
        ));
        let blank_id = NewCustomer {
            id: "  ".into(),
            ..erika()
        };
        assert!(matches!(
            store.add_customer(&blank_id),
            Err(StoreError::InvalidCustomer(InvalidCustomer::MissingId))
        ));
        assert!(store.list_customers().unwrap().is_empty());
    }

    #[test]
    fn normalize_phone_accepts_national_and_international_forms() {
        for input in [
            "0170 1234567",
            "+49 170 1234567",
            "0049 170 1234567",
            "+49 (170) 123-4567",
        ] {
            assert_eq!(
                normalize_phone(input, "DE").unwrap(),
                "+491701234567",
                "{input}"
            );
        }
        assert_eq!(
            normalize_phone("+1 415 555 2671", "DE").unwrap(),
            "+14155552671"
        );
        assert_eq!(
            normalize_phone("(415) 555-2671", "us").unwrap(),
            "+14155552671"
        );
    }

    #[test]
    fn normalize_phone_refuses_invalid_numbers_with_a_clear_reason() {
        let err = normalize_phone("0123", "DE").unwrap_err();
        assert_eq!(err.to_string(), "not a valid number for region DE");
        assert_eq!(normalize_phone("  ", "DE").unwrap_err(), PhoneError::Empty);
        assert!(matches!(
            normalize_phone("hello", "DE"),
            Err(PhoneError::Invalid { .. })
        ));
        assert!(matches!(
            normalize_phone(&"1".repeat(41), "DE"),
            Err(PhoneError::TooLong)
        ));
        assert_eq!(
            normalize_phone("0170 1234567", "XX").unwrap_err(),
            PhoneError::UnknownRegion("XX".into())
        );
        // Odd inputs from SIP headers must give an error, never a panic.
        for odd in [
            "  2 22#:",
            "003-836-4618x3001",
            "+",
            "++49",
            "tel:;",
            "\u{0}",
        ] {
            let _ = normalize_phone(odd, "CH");
        }
    }

    #[test]
    fn normalize_language_codes() {
        assert_eq!(normalize_language("de").unwrap(), "de");
        assert_eq!(normalize_language("EN_gb").unwrap(), "en-GB");
        assert_eq!(normalize_language("es-419").unwrap(), "es-419");
        for bad in [
            "", "d", "deutsch", "en-", "en-GBR", "e1", "en-GB-x", "de DE",
        ] {
            assert!(normalize_language(bad).is_err(), "{bad:?}");
        }
    }

    const CSV: &str = "\
id,name,mobile,language,branch
123456,Erika Mustermann,0170 1234567,de,Köln
,No Id,0170 1234568,,
200,Bad Mobile,0123,en,
300,Bad Lang,0170 1234569,deutsch,
123456,Dup,0170 1234560,,
400,\"Smith, John\",+44 7911 123456,en-gb,London
500,Short,0170 1234561
";

    #[test]
    fn import_line_numbers_hold_with_crlf_and_cr_line_ends() {
        check_import_of(&CSV.replace('\n', "\r\n"));
        check_import_of(&CSV.replace('\n', "\r"));
    }

    fn check_import_of(csv: &str) {
        let (_dir, store) = temp_store();
        let report = store.import_csv(csv.as_bytes(), "DE").unwrap();
        assert_eq!((report.created, report.updated), (2, 0));
        let lines: Vec<(u64, String)> = report
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.to_string()))
            .collect();
        assert_eq!(
            lines,
            [
                (3, "missing id".to_string()),
                (
                    4,
                    "bad mobile number \"0123\": not a valid number for region DE".to_string()
                ),
                (
                    5,
                    "bad language code \"deutsch\": expected a code such as \"de\" or \"en-GB\""
                        .to_string()
                ),
                (
                    6,
                    "duplicate id \"123456\" (first seen on line 2)".to_string()
                ),
                (8, "expected 5 fields as in the header, found 3".to_string()),
            ]
        );
        let erika = store.find_customer("123456").unwrap().unwrap();
        assert_eq!(
            erika.name, "Erika Mustermann",
            "the first row of a duplicate wins"
        );
        assert_eq!(erika.mobile, "+491701234567");
        assert_eq!(erika.extra["branch"], "Köln");
        let john = store.find_customer("400").unwrap().unwrap();
        assert_eq!(john.name, "Smith, John");
        assert_eq!(john.mobile, "+447911123456");
        assert_eq!(john.language.as_deref(), Some("en-GB"));
        assert_eq!(store.list_customers().unwrap().len(), 2);
    }

    #[test]
    fn parse_customers_csv_reads_and_checks_without_a_database() {
        let csv = "id,name,mobile\n1,A,0170 1234567\n1,B,0170 1234567\n2,,0170 1234567\n";
        let parsed = parse_customers_csv(csv.as_bytes(), "DE").unwrap();
        assert_eq!(parsed.customers.len(), 1);
        assert_eq!(parsed.customers[0].mobile, "+491701234567");
        let lines: Vec<u64> = parsed.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 4]);
        assert!(parse_customers_csv("id,name\n".as_bytes(), "DE").is_err());
    }

    #[test]
    fn import_handles_bom_crlf_and_bad_utf8() {
        let (_dir, store) = temp_store();
        let mut data = b"\xef\xbb\xbfid,name,mobile\r\n1,A,01701234567\r\n2,".to_vec();
        data.extend_from_slice(b"B\xff\xfe,01701234568\r\n3,C,01701234569\r\n");
        let report = store.import_csv(data.as_slice(), "DE").unwrap();
        assert_eq!(report.imported(), 2);
        assert_eq!(report.rejected.len(), 1);
        assert_eq!(report.rejected[0].line, 3);
        assert!(matches!(report.rejected[0].reason, RowError::Malformed(_)));
        assert!(store.find_customer("1").unwrap().is_some());
        assert!(store.find_customer("3").unwrap().is_some());
    }

    #[test]
    fn audit_filters_walk_an_index_in_order_without_sorting() {
        let (_dir, store) = temp_store();
        let plan = |f: &AuditFilter| -> String {
            let (sql, values) = audit_query(f);
            let conn = sqlite_conn(&store);
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            stmt.query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
        };
        let by_time = [
            AuditFilter::default(),
            AuditFilter {
                since: Some(t(0)),
                until: Some(t(100)),
                outcomes: vec!["verified".into(), "wrong-pin".into()],
                callers: vec!["+4930111".into()],
                limit: Some(50),
                ..AuditFilter::default()
            },
        ];
        for f in &by_time {
            let p = plan(f);
            assert!(p.contains("audit_by_start") && !p.contains("B-TREE"), "{p}");
        }
        let p = plan(&AuditFilter {
            customer_id: Some("123456".into()),
            since: Some(t(0)),
            outcomes: vec!["verified".into()],
            ..AuditFilter::default()
        });
        assert!(
            p.contains("audit_by_customer") && !p.contains("B-TREE"),
            "{p}"
        );
        // Values are bound, never spliced into the text.
        let (sql, values) = audit_query(&AuditFilter {
            customer_id: Some("x' OR 1=1 --".into()),
            outcomes: vec!["verified".into()],
            ..AuditFilter::default()
        });
        assert!(
            !sql.contains("OR 1=1") && !sql.contains("verified"),
            "{sql}"
        );
        assert_eq!(values.len(), 2);
    }

    #[test]
    fn a_read_only_open_refuses_an_old_schema_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (1);",
            )
            .unwrap();
        }
        let err = Store::open_read_only(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooOld { found: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("older than version"), "{err}");
        // Still version 1: the reader upgraded nothing.
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
    }

    #[test]
    fn times_round_trip_through_milliseconds() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            UNIX_EPOCH - Duration::from_millis(5_000),
        ] {
            assert_eq!(from_ms(to_ms(t)), t);
        }
    }
}

//! The PostgreSQL text of each step in [`super::MIGRATIONS`], with the same numbering: step `i`
//! takes a PostgreSQL schema from version `i` to `i + 1` as the SQLite step does a file.
//!
//! Same tables, columns (names, order, nullability, defaults, CHECKs), keys and index names;
//! only the dialect differs:
//! - `INTEGER` is 64-bit in SQLite and 32-bit in PostgreSQL, so every integer column is
//!   `BIGINT` (times are i64 milliseconds, `lockouts.level` can reach `u32::MAX`).
//!   `customers.enabled` stays an integer 0/1, which the shared DML writes.
//! - `STRICT` and `WITHOUT ROWID` are SQLite's: PostgreSQL always enforces column types, and
//!   has no rowid. `INTEGER PRIMARY KEY AUTOINCREMENT` becomes an identity column.
//! - SQLite compares text bytewise (`BINARY`); PostgreSQL uses the database's locale, which
//!   orders differently. Text keys and `ORDER BY`'d columns are `COLLATE "C"` (bytewise), and
//!   so are the foreign keys pointing at them, whose collation must match their target's.
//! - A SQLite index carries the rowid, which `audit.id` is; PostgreSQL's do not, so the audit
//!   indexes end with `id` to serve `ORDER BY started_at DESC, id DESC` without a sort.
//! - `sms_sends` and `guard_sends` have no id: where SQLite deletes one row by `rowid`, the
//!   PostgreSQL code uses `ctid`, so their columns stay as SQLite's.
//!
//! Each text is run whole by `batch_execute`, in its own transaction.

/// Step `i` in PostgreSQL's dialect; same numbering and meaning as `super::MIGRATIONS`.
pub(super) const PG_MIGRATIONS: &[&str] = &[
    // 1: the initial schema: customers, their fields, failures, lock-outs, SMS sends, audit.
    r#"
    CREATE TABLE customers (
        id          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
        name        TEXT NOT NULL,
        mobile      TEXT NOT NULL,
        language    TEXT,
        enabled     BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE INDEX customers_by_mobile ON customers (mobile);

    CREATE TABLE customer_fields (
        customer_id TEXT COLLATE "C" NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        name        TEXT COLLATE "C" NOT NULL,
        value       TEXT NOT NULL,
        PRIMARY KEY (customer_id, name)
    );

    CREATE TABLE failures (
        customer_id TEXT COLLATE "C" NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        at          BIGINT NOT NULL
    );
    CREATE INDEX failures_by_customer ON failures (customer_id, at);
    CREATE INDEX failures_by_time ON failures (at);

    CREATE TABLE lockouts (
        customer_id TEXT COLLATE "C" PRIMARY KEY NOT NULL
                    REFERENCES customers (id) ON DELETE CASCADE,
        until       BIGINT NOT NULL,
        level       BIGINT NOT NULL
    );

    CREATE TABLE sms_sends (
        customer_id TEXT COLLATE "C" NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        caller      TEXT NOT NULL,
        at          BIGINT NOT NULL
    );
    CREATE INDEX sms_by_customer ON sms_sends (customer_id, at);
    CREATE INDEX sms_by_caller ON sms_sends (caller, at);
    CREATE INDEX sms_by_time ON sms_sends (at);

    CREATE TABLE audit (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        call_id      TEXT NOT NULL,
        caller       TEXT NOT NULL,
        dialed       TEXT NOT NULL,
        customer_id  TEXT COLLATE "C",
        outcome      TEXT NOT NULL,
        started_at   BIGINT NOT NULL,
        ended_at     BIGINT NOT NULL,
        dtmf_methods TEXT NOT NULL,
        detail       TEXT
    );
    CREATE INDEX audit_by_start ON audit (started_at, id);
    CREATE INDEX audit_by_customer ON audit (customer_id, started_at, id);
    "#,
    // 2: what became of the call's transfer (REFER): target, final status, duration.
    r#"
    ALTER TABLE audit ADD COLUMN transfer_target TEXT;
    ALTER TABLE audit ADD COLUMN transfer_status BIGINT;
    ALTER TABLE audit ADD COLUMN transfer_ms BIGINT;
    "#,
    // 3: the SIP transport the call came on (UDP, TCP, TLS).
    r#"
    ALTER TABLE audit ADD COLUMN transport TEXT;
    "#,
    // 4: media security: the SRTP suite, NULL for plain RTP or no media.
    r#"
    ALTER TABLE audit ADD COLUMN srtp TEXT;
    "#,
    // 5: sends for decoy customers, counted against the same limits as real sends.
    r#"
    CREATE TABLE decoy_sends (
        subject TEXT NOT NULL,
        caller  TEXT NOT NULL,
        at      BIGINT NOT NULL
    );
    CREATE INDEX decoy_by_subject ON decoy_sends (subject, at);
    CREATE INDEX decoy_by_caller ON decoy_sends (caller, at);
    CREATE INDEX decoy_by_time ON decoy_sends (at);
    "#,
    // 6: the fraud guard: SMS by prefix and code, verified PINs, breakers, wrong PINs in a row.
    r#"
    CREATE TABLE guard_sends (
        prefix TEXT NOT NULL,
        code   TEXT NOT NULL,
        at     BIGINT NOT NULL
    );
    CREATE INDEX guard_sends_by_time ON guard_sends (at);
    CREATE INDEX guard_sends_by_prefix ON guard_sends (prefix, at);
    CREATE INDEX guard_sends_by_code ON guard_sends (code, at);
    CREATE TABLE guard_verified (
        prefix TEXT NOT NULL,
        at     BIGINT NOT NULL
    );
    CREATE INDEX guard_verified_by_prefix ON guard_verified (prefix, at);
    CREATE TABLE breakers (
        prefix TEXT COLLATE "C" PRIMARY KEY NOT NULL,
        until  BIGINT NOT NULL
    );
    ALTER TABLE customers ADD COLUMN failures_in_a_row BIGINT NOT NULL DEFAULT 0;
    "#,
    // 7: wrong PINs typed for decoys, counted as a customer's are.
    r#"
    CREATE TABLE decoy_failures (
        subject TEXT NOT NULL,
        at      BIGINT NOT NULL
    );
    CREATE INDEX decoy_failures_by_subject ON decoy_failures (subject, at);
    CREATE INDEX decoy_failures_by_time ON decoy_failures (at);
    "#,
    // 8: the HTTP API: its keys (SHA-256 only) and its verifications.
    r#"
    CREATE TABLE api_keys (
        name       TEXT COLLATE "C" PRIMARY KEY NOT NULL,
        hash       TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE verifications (
        id          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
        key_name    TEXT NOT NULL,
        to_number   TEXT NOT NULL,
        subject     TEXT NOT NULL,
        customer_id TEXT,
        channel     TEXT NOT NULL,
        locale      TEXT NOT NULL,
        template    TEXT NOT NULL,
        status      TEXT NOT NULL,
        sends       BIGINT NOT NULL,
        checks      BIGINT NOT NULL,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL
    );
    CREATE INDEX verifications_by_subject ON verifications (subject, status);
    CREATE INDEX verifications_by_time ON verifications (created_at);
    "#,
    // 9: the API's status callbacks waiting to be delivered: an outbox.
    r#"
    CREATE TABLE webhook_outbox (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        verification_id TEXT NOT NULL,
        body            TEXT NOT NULL,
        attempts        BIGINT NOT NULL,
        next_at         BIGINT NOT NULL,
        created_at      BIGINT NOT NULL
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at);
    CREATE INDEX webhook_outbox_by_verification ON webhook_outbox (verification_id, id);
    "#,
    // 10: how the last code of a verification was delivered (`sent` or a call's outcome).
    r#"
    ALTER TABLE verifications ADD COLUMN delivery TEXT;
    "#,
    // 11: outstanding PINs shared by the nodes (digest and seal, base64).
    r#"
    CREATE TABLE pins (
        subject    TEXT COLLATE "C" PRIMARY KEY NOT NULL,
        digest     TEXT NOT NULL,
        sealed     TEXT NOT NULL,
        length     BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        tries_left BIGINT NOT NULL
    );
    CREATE INDEX pins_by_expiry ON pins (expires_at);
    "#,
];

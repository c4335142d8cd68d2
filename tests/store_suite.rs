//! The store's test suite, run on both backends (issue 16: "the whole store suite passes on
//! SQLite and on PostgreSQL"): every suite function takes a [`Fixture`], a fresh empty
//! database of one backend, and the [`suite!`] macro makes a test of it for each, named
//! `sqlite::<name>` and `postgres::<name>`. Run one side with
//! `cargo test --test store_suite sqlite::` or `cargo test --test store_suite postgres::`.
//!
//! The fixtures: SQLite is a file in a temporary directory (on /dev/shm when there is one);
//! PostgreSQL is one throw-away cluster per test binary ([`CLUSTER`], tests/common/postgres.rs)
//! with a database of its own per test. Its databases are made with an ICU (linguistic)
//! collation, as a production database usually has one: a text `ORDER BY` that relies on the
//! database's collation instead of bytewise comparison (SQLite's) shows up here. A second
//! [`Fixture::store`] on the same database is a restart, or a second node.
//!
//! What the suite covers, all through the public API (plus a few counts in raw SQL where the
//! API cannot see, such as orphaned rows after a cascade):
//! - schema: a first open creates it, a reopen keeps the data and applies nothing again;
//! - customers: add, find, duplicates, refusals, upsert, lookup by mobile, enable, disable,
//!   remove (with its cascades), the listing in bytewise id order, CSV import (bad rows by
//!   line, re-import, header problems, sync, dry run);
//! - wrong PINs and lock-outs, SMS counts and admissions under both limits and the fraud
//!   guard (budgets, breaker), refunds, purge;
//! - the audit log (round trip, NUL bytes, filters, batched pruning, last calls), API keys,
//!   verifications, the webhook outbox and its leases, `copy_to`;
//! - several nodes at once (two stores on one database, eight threads each): lock-outs,
//!   admissions, the guard's budget, decoy failure counts, webhook claims, starts of one
//!   verification, first opens;
//! - PostgreSQL only: an outage (stopped, or frozen with SIGSTOP) fails calls by their
//!   deadline as `Unavailable`, and the same store works again once the server is back; a
//!   server that takes no writes is an outage too, and its sessions are replaced.
//!
//! Time (2 cores, debug): SQLite's side takes under a second; PostgreSQL's about 4 s, plus
//! 9 s for the outage test (on a cluster of its own), whose calls wait out the 2 s connect
//! timeout; about 10 s in all, as the two run in parallel.

mod common;

use common::postgres::Postgres;
use ivrd::store::{
    Admission, AuditFilter, AuditRow, AuditTransfer, GuardQuery, GuardStop, ImportOptions,
    LastCalls, NewCustomer, PgOptions, PurgeReport, RowError, SCHEMA_VERSION, SmsAdmission, Store,
    StoreError, Verification, VerificationStatus,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Barrier, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// =============================================================================================
// Fixtures
// =============================================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of one backend, for one test.
trait Fixture: Sync {
    fn backend(&self) -> Backend;

    /// A new store on this test's database: the first creates the schema; every later one is
    /// a restart (SQLite: a reopen) or another node.
    fn try_store(&self) -> Result<Store, StoreError>;

    /// [`Fixture::try_store`], which must succeed.
    fn store(&self) -> Store {
        self.try_store()
            .unwrap_or_else(|e| panic!("{:?}: opening the store failed: {e}", self.backend()))
    }

    /// Runs `sql`, a query with one integer column in one row, below the store's API.
    fn raw_count(&self, sql: &str) -> i64;

    /// The database's URL, if it is a PostgreSQL one.
    fn pg_url(&self) -> Option<&str> {
        None
    }
}

struct SqliteFixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteFixture {
    fn new() -> SqliteFixture {
        // tmpfs when there is one, as the PostgreSQL clusters: the suite measures the store's
        // logic, not the disk's fsync.
        let shm = std::path::Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("ivrd-store-suite-")
            .tempdir_in(parent)
            .expect("create a temporary directory");
        let path = dir.path().join("ivrd.sqlite");
        SqliteFixture { _dir: dir, path }
    }
}

impl Fixture for SqliteFixture {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn try_store(&self) -> Result<Store, StoreError> {
        Store::open(&self.path)
    }

    fn raw_count(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.path).expect("open the SQLite file");
        conn.query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// The PostgreSQL cluster of this test binary, started by the first test that needs it.
/// Statics are never dropped: the harness's watchdog stops the server and removes its
/// directory when the process exits.
static CLUSTER: LazyLock<Mutex<Postgres>> = LazyLock::new(|| Mutex::new(Postgres::new()));

/// Numbers the databases of [`CLUSTER`].
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

struct PgFixture {
    url: String,
}

impl PgFixture {
    /// A new database `t_<n>` on [`CLUSTER`], with a linguistic (ICU) collation as its
    /// default (see the module doc).
    fn new() -> PgFixture {
        let name = format!("t_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
        // The lock serialises the CREATE DATABASEs (each copies template0).
        let cluster = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        let mut admin = ::postgres::Client::connect(&cluster.url("postgres"), ::postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the test cluster: {e}\n{}", cluster.log()));
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE template0 \
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            ))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        PgFixture {
            url: cluster.url(&name),
        }
    }
}

impl Fixture for PgFixture {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn try_store(&self) -> Result<Store, StoreError> {
        Store::connect(&self.url, &PgOptions::default())
    }

    fn raw_count(&self, sql: &str) -> i64 {
        pg_client(&self.url)
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    fn pg_url(&self) -> Option<&str> {
        Some(&self.url)
    }
}

fn pg_client(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// `suite! { both: [f, ...], postgres_only: [g, ...] }` makes `sqlite::f` and `postgres::f`
/// (each with a fresh database of its backend) for every `f(&dyn Fixture)`, and
/// `postgres::g` for every `g()`.
macro_rules! suite {
    (both: [$($both:ident),* $(,)?], postgres_only: [$($pg:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $both() {
                    super::$both(&super::SqliteFixture::new());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $both() {
                    super::$both(&super::PgFixture::new());
                }
            )*
            $(
                #[test]
                fn $pg() {
                    super::$pg();
                }
            )*
        }
    };
}

suite! {
    both: [
        // Schema
        a_first_open_creates_the_schema_and_a_reopen_keeps_the_data,
        // Customers
        add_find_and_duplicate,
        add_refuses_a_non_e164_mobile_and_bad_fields,
        upsert_replaces_the_record_but_keeps_enabled_and_created,
        find_by_mobile_returns_every_match_in_id_order,
        enable_disable_and_remove_with_its_cascades,
        list_customers_has_the_extra_fields_in_bytewise_id_order,
        two_stores_see_each_others_writes,
        // CSV import
        import_keeps_good_rows_and_reports_bad_ones_by_line,
        reimport_updates_and_counts_them,
        import_header_problems_import_nothing,
        import_sync_disables_the_customers_the_file_lacks,
        import_dry_run_writes_nothing,
        // Wrong PINs and lock-outs
        failures_count_within_the_window_and_clear,
        failures_for_an_unknown_customer_are_refused,
        record_failure_and_lock_locks_at_the_threshold_one_level_up,
        lockouts_round_trip_at_the_highest_level_and_survive_a_restart,
        decoy_failures_and_failures_in_a_row_count_and_clear,
        // SMS sends and the fraud guard
        sms_counts_by_customer_and_caller,
        admit_sms_enforces_both_limits,
        admit_with_a_guard_spends_its_budgets,
        a_breaker_trips_and_is_recorded,
        refund_sms_gives_back_the_send,
        purge_drops_only_old_rows,
        // Audit
        audit_rows_round_trip_newest_first_and_outlive_the_customer,
        audit_strings_with_a_nul_byte_are_written,
        for_each_audit_filters_in_order,
        prune_audit_deletes_the_old_rows_in_batches,
        last_calls_finds_the_last_and_the_last_verified_call,
        // API keys, verifications, webhooks
        api_keys_by_hash_revoke_and_list_by_name,
        a_verification_round_trips_and_the_newest_pending_one_is_found,
        webhook_claims_are_leased_and_keep_each_verifications_order,
        a_start_joins_a_pending_verification_of_its_subject_and_key,
        released_webhook_claims_are_due_again_at_once,
        // Copies
        copy_to_writes_a_sqlite_copy_of_what_decides_a_call,
        // Several nodes at once
        concurrent_failures_lock_out_once_per_threshold,
        concurrent_admissions_take_exactly_the_customer_limit,
        concurrent_admissions_take_exactly_the_caller_limit,
        concurrent_admissions_take_exactly_the_guards_hour_budget,
        concurrent_decoy_failures_count_a_strict_sequence,
        concurrent_pin_updates_take_turns,
        concurrent_webhook_claims_hand_out_every_event_once,
        concurrent_adds_of_one_id_let_exactly_one_win,
        concurrent_starts_of_one_verification_make_one,
        concurrent_first_opens_migrate_once,
    ],
    postgres_only: [
        an_outage_fails_fast_and_the_same_store_recovers,
        a_hung_server_fails_calls_by_the_deadline_and_the_same_store_recovers,
        a_server_that_takes_no_writes_is_away_and_its_connections_are_replaced,
    ],
}

// =============================================================================================
// Helpers
// =============================================================================================

/// A moment of the tests' fixed timeline.
fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
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

/// A customer `id` with mobile `mobile` and no language or extra fields.
fn customer(id: &str, mobile: &str) -> NewCustomer {
    NewCustomer {
        id: id.into(),
        name: format!("Customer {id}"),
        mobile: mobile.into(),
        language: None,
        extra: BTreeMap::new(),
    }
}

/// A distinct valid German mobile number for `n` (< 10,000,000).
fn mobile(n: u32) -> String {
    format!("+49170{:07}", 1_000_000 + n % 9_000_000)
}

fn ids(customers: &[ivrd::store::Customer]) -> Vec<&str> {
    customers.iter().map(|c| c.id.as_str()).collect()
}

fn audit_at(n: u64) -> AuditRow {
    AuditRow {
        call_id: format!("call-{n}"),
        caller: "+491709999999".into(),
        dialed: "100".into(),
        customer_id: None,
        outcome: "verified".into(),
        started_at: t(n * 10),
        ended_at: t(n * 10 + 5),
        dtmf_methods: String::new(),
        detail: None,
        transfer: None,
        transport: None,
        srtp: None,
    }
}

/// A guard with only an hour budget (no day or code budget, no breaker).
fn hour_budget(per_hour: u32) -> GuardQuery<'static> {
    GuardQuery {
        prefix: "+49170",
        code: "49",
        per_hour,
        per_day: 0,
        code_per_hour: None,
        breaker_window: Duration::ZERO,
        breaker_pause: Duration::ZERO,
        breaker_grace: Duration::ZERO,
        trips: &never_trips,
    }
}

fn never_trips(_sends: u32, _verified: u32) -> bool {
    false
}

/// A send to admit for customer `subject`, asked by `caller` at `at`.
fn admission<'a>(
    subject: &'a str,
    caller: &'a str,
    at: SystemTime,
    guard: Option<&'a GuardQuery<'a>>,
) -> Admission<'a> {
    Admission {
        decoy: false,
        goes_out: true,
        subject,
        caller,
        at,
        since: t(0),
        per_subject: 100,
        per_caller: 100,
        guard,
    }
}

/// The audit rows `filter` yields, as call ids in the order handed out.
fn audit_calls(store: &Store, filter: &AuditFilter) -> Vec<String> {
    let mut seen = Vec::new();
    store
        .for_each_audit(filter, |r| {
            seen.push(r.row.call_id);
            Ok::<_, StoreError>(())
        })
        .unwrap();
    seen
}

/// A pending SMS verification of `to` by key `shop`, started (and its code sent) at `at`.
fn started(id: &str, to: &str, at: SystemTime) -> Verification {
    Verification {
        id: id.into(),
        key_name: "shop".into(),
        to: to.into(),
        subject: format!("tel:{to}"),
        customer_id: None,
        channel: "sms".into(),
        locale: "en".into(),
        template: "default".into(),
        status: VerificationStatus::Pending,
        sends: 1,
        checks: 0,
        created_at: at,
        updated_at: at,
        expires_at: at + Duration::from_secs(600),
        delivery: Some("sent".into()),
    }
}

/// Two stores on one database (two nodes), eight threads on each, started together by a
/// barrier: `work(store, thread)` for threads 0..16; their results in thread order.
fn on_two_nodes<T: Send>(f: &dyn Fixture, work: impl Fn(&Store, usize) -> T + Sync) -> Vec<T> {
    const THREADS: usize = 16;
    let nodes = [f.store(), f.store()];
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (store, barrier, work) = (&nodes[i % 2], &barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    work(store, i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

// =============================================================================================
// Schema
// =============================================================================================

fn a_first_open_creates_the_schema_and_a_reopen_keeps_the_data(f: &dyn Fixture) {
    let first = f.store();
    assert!(first.was_created(), "the first open of an empty database");
    assert_eq!(first.migrated_from(), 0);
    assert_eq!(first.schema_version().unwrap(), SCHEMA_VERSION);
    first.add_customer(&erika()).unwrap();
    first.ping().unwrap();
    drop(first);
    for _ in 0..2 {
        let again = f.store();
        assert!(
            !again.was_created(),
            "a reopen must not report a new database"
        );
        assert_eq!(
            again.migrated_from(),
            SCHEMA_VERSION,
            "nothing left to apply"
        );
        assert_eq!(again.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            again.find_customer("123456").unwrap().unwrap().name,
            "Erika Mustermann"
        );
    }
    // One version row, not one per open.
    assert_eq!(f.raw_count("SELECT COUNT(*) FROM schema_version"), 1);
    assert_eq!(
        f.raw_count("SELECT MAX(version) FROM schema_version"),
        i64::from(SCHEMA_VERSION)
    );
}

// =============================================================================================
// Customers
// =============================================================================================

fn add_find_and_duplicate(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    let c = store.find_customer("123456").unwrap().unwrap();
    assert_eq!(c.name, "Erika Mustermann");
    assert_eq!(c.mobile, "+491701234567");
    assert_eq!(c.language.as_deref(), Some("de"));
    assert!(c.enabled);
    assert_eq!(c.created_at, c.updated_at);
    assert_eq!(c.extra, BTreeMap::from([("branch".into(), "Köln".into())]));
    assert!(store.find_customer("654321").unwrap().is_none());
    let err = store
        .add_customer(&NewCustomer {
            name: "Someone Else".into(),
            ..erika()
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateCustomer(ref id) if id == "123456"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "a customer with id \"123456\" already exists"
    );
    // The refused add changed nothing.
    assert_eq!(
        store.find_customer("123456").unwrap().unwrap().name,
        "Erika Mustermann"
    );
}

fn add_refuses_a_non_e164_mobile_and_bad_fields(f: &dyn Fixture) {
    let store = f.store();
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
    let national = NewCustomer {
        mobile: "0170 1234567".into(),
        ..erika()
    };
    assert!(matches!(
        store.add_customer(&national),
        Err(StoreError::InvalidCustomer(
            ivrd::store::InvalidCustomer::BadMobile { .. }
        ))
    ));
    let reserved = NewCustomer {
        extra: BTreeMap::from([("Mobile".into(), "x".into())]),
        ..erika()
    };
    assert!(matches!(
        store.add_customer(&reserved),
        Err(StoreError::InvalidCustomer(
            ivrd::store::InvalidCustomer::BadFieldName(_)
        ))
    ));
    let blank_id = NewCustomer {
        id: "  ".into(),
        ..erika()
    };
    assert!(matches!(
        store.add_customer(&blank_id),
        Err(StoreError::InvalidCustomer(
            ivrd::store::InvalidCustomer::MissingId
        ))
    ));
    assert!(matches!(
        store.upsert_customer(&national),
        Err(StoreError::InvalidCustomer(_))
    ));
    assert!(store.list_customers().unwrap().is_empty());
    assert_eq!(f.raw_count("SELECT COUNT(*) FROM customer_fields"), 0);
}

fn upsert_replaces_the_record_but_keeps_enabled_and_created(f: &dyn Fixture) {
    let store = f.store();
    assert!(store.upsert_customer(&erika()).unwrap(), "new");
    let before = store.find_customer("123456").unwrap().unwrap();
    assert!(store.set_enabled("123456", false).unwrap());
    // The clock moves on (milliseconds are stored): the update time must change.
    std::thread::sleep(Duration::from_millis(5));
    let changed = NewCustomer {
        name: "Erika Musterfrau".into(),
        mobile: "+4915112345678".into(),
        language: None,
        extra: BTreeMap::from([("tier".into(), "gold".into())]),
        ..erika()
    };
    assert!(!store.upsert_customer(&changed).unwrap(), "an update");
    let after = store.find_customer("123456").unwrap().unwrap();
    assert_eq!(after.name, "Erika Musterfrau");
    assert_eq!(after.mobile, "+4915112345678");
    assert_eq!(after.language, None);
    assert!(
        !after.enabled,
        "an upsert must not re-enable a disabled customer"
    );
    assert_eq!(after.created_at, before.created_at);
    assert!(after.updated_at > before.updated_at);
    assert_eq!(
        after.extra,
        BTreeMap::from([("tier".to_string(), "gold".to_string())]),
        "old extra fields are replaced, not merged"
    );
    assert_eq!(store.list_customers().unwrap().len(), 1);
}

fn find_by_mobile_returns_every_match_in_id_order(f: &dyn Fixture) {
    let store = f.store();
    let shared = "+491701234567";
    // Added out of order; bytewise: digits, then upper case, then lower case.
    for id in ["a1", "777", "Z9", "123456"] {
        store.add_customer(&customer(id, shared)).unwrap();
    }
    store
        .add_customer(&customer("888", "+4915112345678"))
        .unwrap();
    store.set_enabled("777", false).unwrap();
    let found = store.find_by_mobile(shared).unwrap();
    assert_eq!(ids(&found), ["123456", "777", "Z9", "a1"]);
    assert!(!found[1].enabled, "disabled customers are found too");
    assert!(store.find_by_mobile("+4930123456").unwrap().is_empty());
    let other = store.find_by_mobile("+4915112345678").unwrap();
    assert_eq!(ids(&other), ["888"]);
}

fn enable_disable_and_remove_with_its_cascades(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    store
        .add_customer(&customer("2", "+4915112345678"))
        .unwrap();
    assert!(store.set_enabled("123456", false).unwrap());
    assert!(!store.find_customer("123456").unwrap().unwrap().enabled);
    assert!(store.set_enabled("123456", true).unwrap());
    assert!(store.find_customer("123456").unwrap().unwrap().enabled);
    assert!(!store.set_enabled("nope", true).unwrap());
    store.record_failure("123456", t(0)).unwrap();
    store.lock("123456", t(100), 1).unwrap();
    store.record_sms("123456", "+4930111", t(0)).unwrap();
    store.bump_failures_in_a_row("123456").unwrap();
    // The other customer's rows must survive the removal.
    store.record_failure("2", t(0)).unwrap();
    store.lock("2", t(100), 4).unwrap();
    assert!(store.remove_customer("123456").unwrap());
    assert!(!store.remove_customer("123456").unwrap());
    assert!(store.find_customer("123456").unwrap().is_none());
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 0);
    assert_eq!(store.lockout("123456").unwrap(), None);
    assert_eq!(store.sms_count_for_customer("123456", t(0)).unwrap(), 0);
    for table in ["customer_fields", "failures", "lockouts", "sms_sends"] {
        assert_eq!(
            f.raw_count(&format!(
                "SELECT COUNT(*) FROM {table} WHERE customer_id = '123456'"
            )),
            0,
            "orphaned rows in {table}"
        );
    }
    // A customer added again under the id starts clean.
    store
        .add_customer(&customer("123456", "+491701234567"))
        .unwrap();
    let again = store.find_customer("123456").unwrap().unwrap();
    assert!(again.extra.is_empty());
    assert_eq!(store.failures_in_a_row("123456").unwrap(), 0);
    assert_eq!(store.failures_since("2", t(0)).unwrap(), 1);
    assert_eq!(store.lockout("2").unwrap(), Some((t(100), 4)));
}

/// SQLite orders text bytewise; PostgreSQL by the database's collation unless the schema says
/// otherwise. The ids below sort differently under any linguistic collation.
fn list_customers_has_the_extra_fields_in_bytewise_id_order(f: &dyn Fixture) {
    let bytewise = ["0001", "B", "a-2", "a1", "b", "é"];
    let mut sorted = bytewise.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(sorted, bytewise, "the expectation itself is bytewise");
    if let Some(url) = f.pg_url() {
        // The test database's own collation is not bytewise: a schema without COLLATE "C"
        // would fail below.
        let linguistic: Vec<String> = pg_client(url)
            .query(
                "SELECT x FROM (VALUES ('0001'), ('B'), ('a-2'), ('a1'), ('b'), ('é')) v(x) \
                 ORDER BY x",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_ne!(linguistic, bytewise, "the test database collates bytewise");
    }
    let store = f.store();
    for (i, id) in ["é", "b", "a1", "B", "0001", "a-2"].into_iter().enumerate() {
        let mut c = customer(id, &mobile(i as u32));
        if i % 2 == 0 {
            c.extra = BTreeMap::from([
                ("branch".into(), format!("branch of {id}")),
                ("tier".into(), "gold".into()),
            ]);
        }
        store.add_customer(&c).unwrap();
    }
    let all = store.list_customers().unwrap();
    assert_eq!(ids(&all), bytewise);
    let extra: BTreeMap<&str, &BTreeMap<String, String>> =
        all.iter().map(|c| (c.id.as_str(), &c.extra)).collect();
    for id in ["é", "a1", "0001"] {
        assert_eq!(extra[id]["branch"], format!("branch of {id}"));
        assert_eq!(extra[id]["tier"], "gold");
        assert_eq!(extra[id].len(), 2);
    }
    for id in ["b", "B", "a-2"] {
        assert!(extra[id].is_empty(), "{id}: {:?}", extra[id]);
    }
    // Each listed record is what a lookup finds.
    for c in &all {
        assert_eq!(store.find_customer(&c.id).unwrap().as_ref(), Some(c));
    }
    // The import's sync walks the ids in the same order.
    let report = store
        .import_csv_with(
            "id,name,mobile\nb,B,+491701234567\n".as_bytes(),
            &ImportOptions {
                sync: true,
                ..ImportOptions::new("DE")
            },
        )
        .unwrap();
    assert_eq!(report.disabled, ["0001", "B", "a-2", "a1", "é"]);
}

fn two_stores_see_each_others_writes(f: &dyn Fixture) {
    let a = f.store();
    let b = f.store();
    a.add_customer(&erika()).unwrap();
    b.lock("123456", t(60), 1).unwrap();
    assert_eq!(a.lockout("123456").unwrap(), Some((t(60), 1)));
    b.set_enabled("123456", false).unwrap();
    assert!(!a.find_customer("123456").unwrap().unwrap().enabled);
    a.remove_customer("123456").unwrap();
    assert!(b.find_customer("123456").unwrap().is_none());
    assert_eq!(b.lockout("123456").unwrap(), None);
}

// =============================================================================================
// CSV import
// =============================================================================================

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

fn import_keeps_good_rows_and_reports_bad_ones_by_line(f: &dyn Fixture) {
    let store = f.store();
    let want_rejected = [
        (3, "missing id".to_string()),
        (
            4,
            "bad mobile number \"0123\": not a valid number for region DE".to_string(),
        ),
        (
            5,
            "bad language code \"deutsch\": expected a code such as \"de\" or \"en-GB\""
                .to_string(),
        ),
        (
            6,
            "duplicate id \"123456\" (first seen on line 2)".to_string(),
        ),
        (8, "expected 5 fields as in the header, found 3".to_string()),
    ];
    // LF, then the same file with CRLF and CR line ends: the same lines, now updates.
    for (csv, created, updated) in [
        (CSV.to_string(), 2, 0),
        (CSV.replace('\n', "\r\n"), 0, 2),
        (CSV.replace('\n', "\r"), 0, 2),
    ] {
        let report = store.import_csv(csv.as_bytes(), "DE").unwrap();
        assert_eq!((report.created, report.updated), (created, updated));
        let rejected: Vec<(u64, String)> = report
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.to_string()))
            .collect();
        assert_eq!(rejected, want_rejected);
    }
    let erika = store.find_customer("123456").unwrap().unwrap();
    assert_eq!(
        erika.name, "Erika Mustermann",
        "the first row of a duplicate wins"
    );
    assert_eq!(erika.mobile, "+491701234567");
    assert_eq!(erika.language.as_deref(), Some("de"));
    assert_eq!(erika.extra["branch"], "Köln");
    let john = store.find_customer("400").unwrap().unwrap();
    assert_eq!(john.name, "Smith, John");
    assert_eq!(john.mobile, "+447911123456");
    assert_eq!(john.language.as_deref(), Some("en-GB"));
    assert_eq!(john.extra["branch"], "London");
    assert_eq!(ids(&store.list_customers().unwrap()), ["123456", "400"]);
    // Unreadable bytes reject their row only.
    let mut data = b"\xef\xbb\xbfid,name,mobile\r\n1,A,01701234567\r\n2,".to_vec();
    data.extend_from_slice(b"B\xff\xfe,01701234568\r\n3,C,01701234569\r\n");
    let report = store.import_csv(data.as_slice(), "DE").unwrap();
    assert_eq!(report.imported(), 2);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].line, 3);
    assert!(matches!(report.rejected[0].reason, RowError::Malformed(_)));
    assert!(store.find_customer("2").unwrap().is_none());
    assert!(store.find_customer("3").unwrap().is_some());
}

fn reimport_updates_and_counts_them(f: &dyn Fixture) {
    let store = f.store();
    let first = store
        .import_csv("id,name,mobile\n1,A,01701234567\n".as_bytes(), "DE")
        .unwrap();
    assert_eq!((first.created, first.updated), (1, 0));
    let created_at = store.find_customer("1").unwrap().unwrap().created_at;
    store.set_enabled("1", false).unwrap();
    let report = store
        .import_csv(
            "ID,Name,Mobile\n1,A2,01701234567\n2,B,01701234568\n".as_bytes(),
            "DE",
        )
        .unwrap();
    assert_eq!((report.created, report.updated), (1, 1));
    assert!(report.rejected.is_empty());
    let one = store.find_customer("1").unwrap().unwrap();
    assert_eq!(one.name, "A2");
    assert_eq!(one.created_at, created_at);
    assert!(!one.enabled, "a re-import keeps an admin's disabling");
    assert_eq!(store.find_customer("2").unwrap().unwrap().name, "B");
}

fn import_header_problems_import_nothing(f: &dyn Fixture) {
    let store = f.store();
    let err = store
        .import_csv("id,name\n1,A\n".as_bytes(), "DE")
        .unwrap_err();
    assert!(matches!(err, StoreError::CsvHeader(_)), "{err}");
    assert!(err.to_string().contains("\"mobile\""), "{err}");
    let err = store
        .import_csv("id,name,mobile,id\n1,A,01701234567,1\n".as_bytes(), "DE")
        .unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    let err = store
        .import_csv(
            "id,name,mobile,my field\n1,A,01701234567,x\n".as_bytes(),
            "DE",
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::CsvHeader(_)), "{err}");
    // Headerless data: the first row is read as a header and lacks the columns.
    let err = store
        .import_csv("1,A,01701234567\n2,B,01701234568\n".as_bytes(), "DE")
        .unwrap_err();
    assert!(matches!(err, StoreError::CsvHeader(_)), "{err}");
    let err = store
        .import_csv("id,name,mobile\n1,A,01701234567\n".as_bytes(), "XX")
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Phone(ivrd::store::PhoneError::UnknownRegion(_))
        ),
        "{err:?}"
    );
    assert!(store.list_customers().unwrap().is_empty());
}

fn import_sync_disables_the_customers_the_file_lacks(f: &dyn Fixture) {
    let store = f.store();
    for (i, id) in ["A", "B", "C"].into_iter().enumerate() {
        store
            .add_customer(&customer(id, &mobile(i as u32)))
            .unwrap();
    }
    let sync = ImportOptions {
        sync: true,
        ..ImportOptions::new("DE")
    };
    let report = store
        .import_csv_with(
            format!("id,name,mobile\nA,A2,{}\nD,D,{}\n", mobile(0), mobile(3)).as_bytes(),
            &sync,
        )
        .unwrap();
    assert_eq!((report.created, report.updated), (1, 1));
    assert_eq!(report.disabled, ["B", "C"]);
    assert!(!report.sync_skipped);
    let enabled: Vec<(String, bool)> = store
        .list_customers()
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.enabled))
        .collect();
    assert_eq!(
        enabled,
        [
            ("A".into(), true),
            ("B".into(), false),
            ("C".into(), false),
            ("D".into(), true)
        ]
    );
    // A rejected row stops the disabling: its customer may be one of the missing.
    let report = store
        .import_csv_with(
            format!("id,name,mobile\nA,A3,{}\nD,D,0123\n", mobile(0)).as_bytes(),
            &sync,
        )
        .unwrap();
    assert!(report.sync_skipped);
    assert!(report.disabled.is_empty());
    assert_eq!(report.updated, 1);
    assert!(store.find_customer("D").unwrap().unwrap().enabled);
    assert_eq!(store.find_customer("A").unwrap().unwrap().name, "A3");
    // Semicolons, as a German spreadsheet writes them.
    let report = store
        .import_csv_with(
            format!("id;name;mobile\nE;Semi, Colon;{}\n", mobile(4)).as_bytes(),
            &ImportOptions {
                delimiter: b';',
                ..ImportOptions::new("DE")
            },
        )
        .unwrap();
    assert_eq!(report.created, 1);
    assert_eq!(
        store.find_customer("E").unwrap().unwrap().name,
        "Semi, Colon"
    );
}

fn import_dry_run_writes_nothing(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&customer("old", &mobile(9))).unwrap();
    let dry = ImportOptions {
        dry_run: true,
        sync: true,
        ..ImportOptions::new("DE")
    };
    let csv = format!(
        "id,name,mobile,tier\n1,A,{},gold\nold,Renamed,{},\n2,B,0123,\n",
        mobile(1),
        mobile(9)
    );
    let report = store.import_csv_with(csv.as_bytes(), &dry).unwrap();
    assert_eq!((report.created, report.updated), (1, 1));
    assert_eq!(report.rejected.len(), 1);
    assert!(report.sync_skipped);
    let good = format!("id,name,mobile\n1,A,{}\n", mobile(1));
    let report = store.import_csv_with(good.as_bytes(), &dry).unwrap();
    assert_eq!(report.created, 1);
    assert_eq!(report.disabled, ["old"], "a dry sync says what it would do");
    // ... and does none of it.
    let all = store.list_customers().unwrap();
    assert_eq!(ids(&all), ["old"]);
    assert!(all[0].enabled);
    assert_eq!(all[0].name, "Customer old");
    assert_eq!(f.raw_count("SELECT COUNT(*) FROM customer_fields"), 0);
}

// =============================================================================================
// Wrong PINs and lock-outs
// =============================================================================================

fn failures_count_within_the_window_and_clear(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    store.add_customer(&customer("2", &mobile(2))).unwrap();
    for s in [0, 10, 20, 30] {
        store.record_failure("123456", t(s)).unwrap();
    }
    store.record_failure("2", t(20)).unwrap();
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 4);
    assert_eq!(store.failures_since("123456", t(15)).unwrap(), 2);
    assert_eq!(
        store.failures_since("123456", t(30)).unwrap(),
        1,
        "inclusive"
    );
    assert_eq!(store.failures_since("123456", t(31)).unwrap(), 0);
    assert_eq!(store.failures_since("other", t(0)).unwrap(), 0);
    store.clear_failures("123456").unwrap();
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 0);
    assert_eq!(store.failures_since("2", t(0)).unwrap(), 1, "others' stay");
}

fn failures_for_an_unknown_customer_are_refused(f: &dyn Fixture) {
    let store = f.store();
    let r = store.record_failure("ghost", t(0));
    assert!(r.is_err(), "record_failure: {r:?}");
    let r = store.record_failure_and_lock("ghost", t(0), t(0), 1, |_| Duration::from_secs(60));
    assert!(r.is_err(), "record_failure_and_lock: {r:?}");
    let r = store.lock("ghost", t(60), 1);
    assert!(r.is_err(), "lock: {r:?}");
    let r = store.record_sms("ghost", "+4930111", t(0));
    assert!(r.is_err(), "record_sms: {r:?}");
    for table in ["failures", "lockouts", "sms_sends"] {
        assert_eq!(f.raw_count(&format!("SELECT COUNT(*) FROM {table}")), 0);
    }
    // The store goes on working after a refused write.
    store.add_customer(&customer("ghost", &mobile(1))).unwrap();
    store.record_failure("ghost", t(0)).unwrap();
    assert_eq!(store.failures_since("ghost", t(0)).unwrap(), 1);
}

fn record_failure_and_lock_locks_at_the_threshold_one_level_up(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    let wait = |level: u32| Duration::from_secs(60 * u64::from(level));
    let fail = |at, since| {
        store
            .record_failure_and_lock("123456", at, since, 3, wait)
            .unwrap()
    };
    // An old failure, before the window, does not count.
    store.record_failure("123456", t(0)).unwrap();
    assert_eq!(fail(t(11), t(10)), None);
    assert_eq!(fail(t(12), t(10)), None);
    assert_eq!(store.lockout("123456").unwrap(), None);
    assert_eq!(fail(t(13), t(10)), Some((1, 3)));
    assert_eq!(store.lockout("123456").unwrap(), Some((t(13) + wait(1), 1)));
    assert_eq!(
        store.failures_since("123456", t(0)).unwrap(),
        0,
        "the lock-out used the failures up (and the old one with them)"
    );
    assert_eq!(fail(t(14), t(10)), None);
    assert_eq!(fail(t(15), t(10)), None);
    assert_eq!(fail(t(16), t(10)), Some((2, 3)));
    assert_eq!(store.lockout("123456").unwrap(), Some((t(16) + wait(2), 2)));
    // An admin's unlock resets the level.
    assert!(store.clear_lockout("123456").unwrap());
    for s in 17..19 {
        assert_eq!(fail(t(s), t(10)), None);
    }
    assert_eq!(fail(t(19), t(10)), Some((1, 3)));
    // At the highest level the next lock-out stays there.
    store.lock("123456", t(20), u32::MAX).unwrap();
    for s in 21..23 {
        assert_eq!(fail(t(s), t(10)), None);
    }
    assert_eq!(fail(t(23), t(10)), Some((u32::MAX, 3)));
    assert_eq!(store.lockout("123456").unwrap().unwrap().1, u32::MAX);
}

fn lockouts_round_trip_at_the_highest_level_and_survive_a_restart(f: &dyn Fixture) {
    let until = t(900) + Duration::from_millis(123);
    {
        let store = f.store();
        store.add_customer(&erika()).unwrap();
        store.add_customer(&customer("2", &mobile(2))).unwrap();
        assert_eq!(store.lockout("123456").unwrap(), None);
        store.lock("123456", t(100), 1).unwrap();
        store.lock("123456", until, u32::MAX).unwrap();
        store.lock("2", t(50), 2).unwrap();
    }
    let store = f.store();
    assert_eq!(store.lockout("123456").unwrap(), Some((until, u32::MAX)));
    assert_eq!(store.lockout("2").unwrap(), Some((t(50), 2)));
    assert!(store.clear_lockout("123456").unwrap());
    assert_eq!(store.lockout("123456").unwrap(), None);
    assert!(!store.clear_lockout("123456").unwrap());
    assert_eq!(store.lockout("2").unwrap(), Some((t(50), 2)));
}

fn decoy_failures_and_failures_in_a_row_count_and_clear(f: &dyn Fixture) {
    let store = f.store();
    let subject = "tel:+4915112345678";
    assert_eq!(store.record_decoy_failure(subject, t(0), t(0)).unwrap(), 1);
    assert_eq!(store.record_decoy_failure(subject, t(10), t(0)).unwrap(), 2);
    assert_eq!(store.record_decoy_failure(subject, t(20), t(5)).unwrap(), 2);
    assert_eq!(store.record_decoy_failure("other", t(20), t(0)).unwrap(), 1);
    assert_eq!(store.decoy_failures_since(subject, t(0)).unwrap(), 3);
    assert_eq!(store.decoy_failures_since(subject, t(15)).unwrap(), 1);
    assert_eq!(store.clear_decoy_failures(subject).unwrap(), 3);
    assert_eq!(store.decoy_failures_since(subject, t(0)).unwrap(), 0);
    assert_eq!(store.decoy_failures_since("other", t(0)).unwrap(), 1);
    // Wrong PINs in a row, a counter on the customer.
    store.add_customer(&erika()).unwrap();
    assert_eq!(store.failures_in_a_row("123456").unwrap(), 0);
    assert_eq!(store.bump_failures_in_a_row("123456").unwrap(), 1);
    assert_eq!(store.bump_failures_in_a_row("123456").unwrap(), 2);
    assert_eq!(store.failures_in_a_row("123456").unwrap(), 2);
    assert_eq!(store.bump_failures_in_a_row("nobody").unwrap(), 0);
    store.reset_failures_in_a_row("123456").unwrap();
    assert_eq!(store.failures_in_a_row("123456").unwrap(), 0);
}

// =============================================================================================
// SMS sends and the fraud guard
// =============================================================================================

fn sms_counts_by_customer_and_caller(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    store.add_customer(&customer("2", &mobile(2))).unwrap();
    store.record_sms("123456", "+4930111", t(0)).unwrap();
    store.record_sms("123456", "+4930222", t(60)).unwrap();
    store.record_sms("2", "+4930111", t(120)).unwrap();
    assert_eq!(store.sms_count_for_customer("123456", t(0)).unwrap(), 2);
    assert_eq!(store.sms_count_for_customer("123456", t(1)).unwrap(), 1);
    assert_eq!(store.sms_count_for_customer("2", t(0)).unwrap(), 1);
    assert_eq!(store.sms_count_for_caller("+4930111", t(0)).unwrap(), 2);
    assert_eq!(store.sms_count_for_caller("+4930111", t(100)).unwrap(), 1);
    assert_eq!(store.sms_count_for_caller("+4930333", t(0)).unwrap(), 0);
    assert_eq!(store.clear_sms_sends("123456").unwrap(), 2);
    assert_eq!(store.sms_count_for_customer("123456", t(0)).unwrap(), 0);
    assert_eq!(store.sms_count_for_caller("+4930111", t(0)).unwrap(), 1);
}

fn admit_sms_enforces_both_limits(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    store.add_customer(&customer("2", &mobile(2))).unwrap();
    let admit = |c: &str, caller: &str, at| store.admit_sms(c, caller, at, t(0), 2, 3).unwrap();
    assert_eq!(admit("123456", "+4930111", t(1)), SmsAdmission::Recorded);
    assert_eq!(admit("123456", "+4930111", t(2)), SmsAdmission::Recorded);
    assert_eq!(
        admit("123456", "+4930111", t(3)),
        SmsAdmission::CustomerLimit
    );
    assert_eq!(admit("2", "+4930111", t(4)), SmsAdmission::Recorded);
    assert_eq!(admit("2", "+4930111", t(5)), SmsAdmission::CallerLimit);
    assert_eq!(admit("2", "+4930222", t(6)), SmsAdmission::Recorded);
    // Refusals are not recorded.
    assert_eq!(store.sms_count_for_caller("+4930111", t(0)).unwrap(), 3);
    assert_eq!(store.sms_count_for_customer("2", t(0)).unwrap(), 2);
    // A decoy's sends count against the caller too, in their own table.
    let decoy = Admission {
        decoy: true,
        per_subject: 1,
        per_caller: 4,
        ..admission("tel:+4915112345678", "+4930222", t(7), None)
    };
    assert_eq!(store.admit(&decoy).unwrap(), SmsAdmission::Recorded);
    assert_eq!(
        store.admit(&Admission { at: t(8), ..decoy }).unwrap(),
        SmsAdmission::CustomerLimit
    );
    let other_decoy = Admission {
        subject: "tel:+4915112345679",
        per_caller: 2,
        at: t(9),
        ..decoy
    };
    assert_eq!(
        store.admit(&other_decoy).unwrap(),
        SmsAdmission::CallerLimit,
        "the caller has one real and one decoy send"
    );
    assert_eq!(store.sms_count_for_caller("+4930222", t(0)).unwrap(), 1);
    // A window that starts later forgets the earlier sends.
    assert_eq!(
        store
            .admit_sms("123456", "+4930111", t(10), t(3), 2, 3)
            .unwrap(),
        SmsAdmission::Recorded
    );
    // A lock-out made since the caller looked (on another node) refuses the send itself,
    // and records nothing; once it has ended, sends are admitted again.
    store.lock("2", t(100), 1).unwrap();
    assert_eq!(admit("2", "+4930333", t(50)), SmsAdmission::LockedOut);
    assert_eq!(store.sms_count_for_customer("2", t(0)).unwrap(), 2);
    assert_eq!(
        store
            .admit_sms("2", "+4930333", t(100), t(99), 2, 3)
            .unwrap(),
        SmsAdmission::Recorded
    );
}

fn admit_with_a_guard_spends_its_budgets(f: &dyn Fixture) {
    let store = f.store();
    for i in 0..8 {
        store
            .add_customer(&customer(&format!("c{i}"), &mobile(i)))
            .unwrap();
    }
    let hour = hour_budget(5);
    let caller = |i: u32| format!("+4930{i:04}");
    for i in 0..5 {
        let (id, caller) = (format!("c{i}"), caller(i));
        let a = admission(&id, &caller, t(3600 + u64::from(i)), Some(&hour));
        assert_eq!(store.admit(&a).unwrap(), SmsAdmission::Recorded, "send {i}");
    }
    let a = admission("c5", "+4930999", t(3700), Some(&hour));
    assert_eq!(
        store.admit(&a).unwrap(),
        SmsAdmission::Guard(GuardStop::HourBudget)
    );
    assert_eq!(store.sms_count_for_customer("c5", t(0)).unwrap(), 0);
    assert_eq!(store.guard_sends_since(t(0)).unwrap(), 5);
    assert_eq!(store.guard_sends_to_code_since("49", t(0)).unwrap(), 5);
    assert_eq!(store.guard_sends_to_code_since("44", t(0)).unwrap(), 0);
    // The hour is a sliding window: exactly an hour after the first send it still counts,
    // a millisecond later it does not.
    let a = admission("c5", "+4930999", t(7200), Some(&hour));
    assert_eq!(
        store.admit(&a).unwrap(),
        SmsAdmission::Guard(GuardStop::HourBudget)
    );
    let a = admission(
        "c5",
        "+4930999",
        t(7200) + Duration::from_millis(1),
        Some(&hour),
    );
    assert_eq!(store.admit(&a).unwrap(), SmsAdmission::Recorded);
    // A spent budget refuses a decoy too (its hour still holds five sends) ...
    let decoy = Admission {
        decoy: true,
        goes_out: false,
        ..admission("tel:+4915112345678", "+4930888", t(7201), Some(&hour))
    };
    assert_eq!(
        store.admit(&decoy).unwrap(),
        SmsAdmission::Guard(GuardStop::HourBudget)
    );
    // ... but a decoy sends nothing, so it spends nothing when admitted.
    let decoy = Admission {
        at: t(7202),
        ..decoy
    };
    assert_eq!(store.admit(&decoy).unwrap(), SmsAdmission::Recorded);
    assert_eq!(store.guard_sends_since(t(0)).unwrap(), 6);
    // The day's budget and a calling code's; a spent budget refuses a decoy too.
    let day = GuardQuery {
        per_day: 6,
        ..hour_budget(0)
    };
    let a = admission("c6", "+4930777", t(7202), Some(&day));
    assert_eq!(
        store.admit(&a).unwrap(),
        SmsAdmission::Guard(GuardStop::DayBudget)
    );
    let decoy = Admission {
        guard: Some(&day),
        at: t(7202),
        subject: "tel:+4915112345679",
        ..decoy
    };
    assert_eq!(
        store.admit(&decoy).unwrap(),
        SmsAdmission::Guard(GuardStop::DayBudget)
    );
    let uk = GuardQuery {
        prefix: "+447",
        code: "44",
        code_per_hour: Some(1),
        ..hour_budget(0)
    };
    let a = admission("c6", "+4930777", t(7203), Some(&uk));
    assert_eq!(store.admit(&a).unwrap(), SmsAdmission::Recorded);
    let a = admission("c7", "+4930778", t(7204), Some(&uk));
    assert_eq!(
        store.admit(&a).unwrap(),
        SmsAdmission::Guard(GuardStop::CodeBudget)
    );
    assert_eq!(store.guard_sends_to_code_since("44", t(0)).unwrap(), 1);
    assert_eq!(store.guard_sends_since(t(0)).unwrap(), 7);
}

fn a_breaker_trips_and_is_recorded(f: &dyn Fixture) {
    let store = f.store();
    for i in 0..6 {
        store
            .add_customer(&customer(&format!("c{i}"), &mobile(i)))
            .unwrap();
    }
    // Trips at three sends with no PIN verified; sends younger than 10 s are not judged.
    let trips = |sends: u32, verified: u32| sends >= 3 && verified == 0;
    let breaker = GuardQuery {
        prefix: "+49170",
        code: "49",
        per_hour: 0,
        per_day: 0,
        code_per_hour: None,
        breaker_window: Duration::from_secs(600),
        breaker_pause: Duration::from_secs(300),
        breaker_grace: Duration::from_secs(10),
        trips: &trips,
    };
    for i in 0..3u64 {
        let id = format!("c{i}");
        let a = admission(&id, "+4930111", t(100 + i), Some(&breaker));
        assert_eq!(store.admit(&a).unwrap(), SmsAdmission::Recorded);
    }
    // Within the grace the three are not judged yet.
    let a = admission("c3", "+4930222", t(105), Some(&breaker));
    assert_eq!(store.admit(&a).unwrap(), SmsAdmission::Recorded);
    assert!(store.open_breakers(t(105)).unwrap().is_empty());
    // A verified PIN to another prefix changes nothing for this one.
    store.record_verified("+44", t(106)).unwrap();
    let a = admission("c4", "+4930333", t(120), Some(&breaker));
    assert_eq!(
        store.admit(&a).unwrap(),
        SmsAdmission::Guard(GuardStop::Breaker)
    );
    let open = store.open_breakers(t(120)).unwrap();
    assert_eq!(open, [("+49170".to_string(), t(120 + 300))]);
    // Recorded: a second node sees it open, and refuses without judging again.
    let other = f.store();
    let a = admission("c5", "+4930444", t(200), Some(&breaker));
    assert_eq!(
        other.admit(&a).unwrap(),
        SmsAdmission::Guard(GuardStop::Breaker)
    );
    assert_eq!(other.open_breakers(t(200)).unwrap(), open);
    assert_eq!(store.sms_count_for_customer("c4", t(0)).unwrap(), 0);
    assert!(
        store.open_breakers(t(420)).unwrap().is_empty(),
        "paused until then"
    );
    // Half-open after the pause: only the sends since are judged, not the four that tripped
    // it. Four new ones with a PIN verified among them keep it closed.
    for s in [500, 501, 502, 503] {
        let a = admission("c5", "+4930444", t(s), Some(&breaker));
        assert_eq!(other.admit(&a).unwrap(), SmsAdmission::Recorded, "t({s})");
    }
    store.record_verified("+49170", t(510)).unwrap();
    let a = admission("c5", "+4930444", t(520), Some(&breaker));
    assert_eq!(other.admit(&a).unwrap(), SmsAdmission::Recorded);
    assert!(store.open_breakers(t(520)).unwrap().is_empty());
    assert_eq!(store.sms_count_for_customer("c5", t(0)).unwrap(), 5);
}

fn refund_sms_gives_back_the_send(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    let guard = hour_budget(10);
    let a = admission("123456", "+4930111", t(100), Some(&guard));
    assert_eq!(store.admit(&a).unwrap(), SmsAdmission::Recorded);
    let a2 = admission("123456", "+4930111", t(101), Some(&guard));
    assert_eq!(store.admit(&a2).unwrap(), SmsAdmission::Recorded);
    assert_eq!(store.guard_sends_since(t(0)).unwrap(), 2);
    assert!(
        !store.refund_sms("123456", "+4930999", t(100)).unwrap(),
        "another caller's"
    );
    assert!(
        !store.refund_sms("123456", "+4930111", t(99)).unwrap(),
        "another time's"
    );
    assert!(store.refund_sms("123456", "+4930111", t(100)).unwrap());
    assert_eq!(store.sms_count_for_customer("123456", t(0)).unwrap(), 1);
    assert_eq!(store.sms_count_for_caller("+4930111", t(0)).unwrap(), 1);
    assert_eq!(store.guard_sends_since(t(0)).unwrap(), 1);
    assert_eq!(
        store.guard_sends_since(t(101)).unwrap(),
        1,
        "the other stays"
    );
    assert!(
        !store.refund_sms("123456", "+4930111", t(100)).unwrap(),
        "only once"
    );
    // The limit has room again.
    assert_eq!(
        store
            .admit_sms("123456", "+4930111", t(102), t(0), 2, 10)
            .unwrap(),
        SmsAdmission::Recorded
    );
}

fn purge_drops_only_old_rows(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    store.record_failure("123456", t(0)).unwrap();
    store.record_failure("123456", t(200)).unwrap();
    store.record_sms("123456", "+4930111", t(50)).unwrap();
    store.record_sms("123456", "+4930111", t(300)).unwrap();
    store
        .record_decoy_failure("tel:+4930", t(60), t(0))
        .unwrap();
    let decoy = Admission {
        decoy: true,
        ..admission("tel:+4930", "+4930222", t(70), None)
    };
    assert_eq!(store.admit(&decoy).unwrap(), SmsAdmission::Recorded);
    let guard = hour_budget(10);
    assert_eq!(
        store
            .admit(&admission("123456", "+4930333", t(80), Some(&guard)))
            .unwrap(),
        SmsAdmission::Recorded
    );
    store.record_verified("+49170", t(90)).unwrap();
    store.record_verified("+49170", t(100)).unwrap();
    store.lock("123456", t(10), 1).unwrap();
    store.write_audit(&audit_at(1)).unwrap();
    let report = store.purge(t(100)).unwrap();
    assert_eq!(
        report,
        PurgeReport {
            failures: 2,
            sms_sends: 3,
            guard_rows: 2
        }
    );
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 1);
    assert_eq!(store.sms_count_for_customer("123456", t(0)).unwrap(), 1);
    assert_eq!(store.decoy_failures_since("tel:+4930", t(0)).unwrap(), 0);
    assert_eq!(store.guard_sends_since(t(0)).unwrap(), 0);
    assert_eq!(
        f.raw_count("SELECT COUNT(*) FROM guard_verified"),
        1,
        "t(100) stays"
    );
    assert_eq!(store.lockout("123456").unwrap(), Some((t(10), 1)));
    assert_eq!(store.recent_audit(10).unwrap().len(), 1);
    assert_eq!(store.purge(t(100)).unwrap(), PurgeReport::default());
}

// =============================================================================================
// Audit
// =============================================================================================

fn audit_rows_round_trip_newest_first_and_outlive_the_customer(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    let row = |n: u64| AuditRow {
        call_id: format!("call-{n}@host"),
        caller: "+491709999999".into(),
        dialed: "+4930123456".into(),
        customer_id: (n != 1).then(|| "123456".into()),
        outcome: if n == 2 { "verified" } else { "hangup" }.into(),
        started_at: t(n * 100),
        ended_at: t(n * 100 + 42) + Duration::from_millis(5),
        dtmf_methods: "rfc4733".into(),
        detail: (n == 3).then(|| "no input".into()),
        transfer: (n == 2).then(|| AuditTransfer {
            target: "sip:queue@pbx".into(),
            status: Some(200),
            ms: 1234,
        }),
        transport: (n != 1).then(|| "TLS".into()),
        srtp: (n == 2).then(|| "AES_CM_128_HMAC_SHA1_80".into()),
    };
    store.write_audit(&row(1)).unwrap();
    store.write_audit_batch(&[row(2), row(3)]).unwrap();
    // A transfer without a final status.
    let mut four = row(4);
    four.transfer = Some(AuditTransfer {
        target: "sip:fallback@pbx".into(),
        status: None,
        ms: 0,
    });
    store.write_audit(&four).unwrap();
    store.remove_customer("123456").unwrap();
    let again = f.store();
    assert_eq!(again.recent_audit(3).unwrap(), vec![four, row(3), row(2)]);
    assert_eq!(again.recent_audit(10).unwrap().len(), 4);
    assert!(again.recent_audit(0).unwrap().is_empty());
    assert_eq!(again.recent_audit(10).unwrap()[3], row(1));
}

/// SIP headers can carry a NUL byte. SQLite's text keeps it; PostgreSQL's cannot hold one, so
/// the store writes U+FFFD there instead of failing the row (and its batch).
fn audit_strings_with_a_nul_byte_are_written(f: &dyn Fixture) {
    let store = f.store();
    let nul = AuditRow {
        call_id: "nul\0@host".into(),
        caller: "+49\u{0}170".into(),
        detail: Some("a\0b".into()),
        customer_id: Some("c\0".into()),
        ..audit_at(1)
    };
    store
        .write_audit_batch(&[audit_at(0), nul.clone(), audit_at(2)])
        .unwrap_or_else(|e| panic!("the batch with a NUL byte was refused: {e}"));
    let want = match f.backend() {
        Backend::Sqlite => nul.clone(),
        Backend::Postgres => AuditRow {
            call_id: "nul\u{FFFD}@host".into(),
            caller: "+49\u{FFFD}170".into(),
            detail: Some("a\u{FFFD}b".into()),
            customer_id: Some("c\u{FFFD}".into()),
            ..audit_at(1)
        },
    };
    let rows = store.recent_audit(10).unwrap();
    assert_eq!(rows, vec![audit_at(2), want.clone(), audit_at(0)]);
    // A filter with the same value finds it (the value is bound the same way).
    let filter = AuditFilter {
        callers: vec![nul.caller.clone()],
        customer_id: nul.customer_id.clone(),
        ..AuditFilter::default()
    };
    assert_eq!(audit_calls(&store, &filter), [want.call_id]);
}

fn for_each_audit_filters_in_order(f: &dyn Fixture) {
    let store = f.store();
    let row =
        |call: &str, caller: &str, customer: Option<&str>, outcome: &str, start: u64| AuditRow {
            call_id: call.into(),
            caller: caller.into(),
            customer_id: customer.map(Into::into),
            outcome: outcome.into(),
            started_at: t(start),
            ended_at: t(start + 5),
            ..audit_at(0)
        };
    let (x, y, z) = ("+4930111", "+4930222", "+4930333");
    // Written out of order (ids 1..=6): the walk follows the start, then the id, newest first.
    let rows = [
        row("a", x, Some("c1"), "verified", 100),
        row("b", y, Some("c2"), "hangup", 300),
        row("c", x, Some("c1"), "wrong-pin", 200),
        row("d", z, None, "hangup", 200),
        row("e", x, Some("c2"), "verified", 400),
        row("f", y, Some("c1"), "locked_out", 50),
    ];
    store.write_audit_batch(&rows[..3]).unwrap();
    for r in &rows[3..] {
        store.write_audit(r).unwrap();
    }
    let mut records = Vec::new();
    store
        .for_each_audit(&AuditFilter::default(), |r| {
            records.push((r.id, r.row));
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let got: Vec<(i64, &str)> = records
        .iter()
        .map(|(id, r)| (*id, r.call_id.as_str()))
        .collect();
    assert_eq!(
        got,
        [(5, "e"), (2, "b"), (4, "d"), (3, "c"), (1, "a"), (6, "f")]
    );
    assert_eq!(records[0].1, rows[4], "the whole row comes back");
    let check = |filter: AuditFilter, want: &[&str]| {
        assert_eq!(audit_calls(&store, &filter), want, "{filter:?}");
    };
    let with = AuditFilter::default;
    check(
        AuditFilter {
            customer_id: Some("c1".into()),
            ..with()
        },
        &["c", "a", "f"],
    );
    check(
        AuditFilter {
            since: Some(t(100)),
            until: Some(t(300)),
            ..with()
        },
        &["d", "c", "a"],
    );
    check(
        AuditFilter {
            outcomes: vec!["verified".into(), "hangup".into()],
            ..with()
        },
        &["e", "b", "d", "a"],
    );
    check(
        AuditFilter {
            callers: vec![x.into(), z.into()],
            ..with()
        },
        &["e", "d", "c", "a"],
    );
    check(
        AuditFilter {
            limit: Some(2),
            ..with()
        },
        &["e", "b"],
    );
    check(
        AuditFilter {
            customer_id: Some("c1".into()),
            outcomes: vec!["verified".into(), "wrong-pin".into()],
            since: Some(t(150)),
            ..with()
        },
        &["c"],
    );
    check(
        AuditFilter {
            customer_id: Some("c1".into()),
            limit: Some(2),
            ..with()
        },
        &["c", "a"],
    );
    check(
        AuditFilter {
            customer_id: Some("x' OR 1=1 --".into()),
            ..with()
        },
        &[],
    );
    check(
        AuditFilter {
            limit: Some(0),
            ..with()
        },
        &[],
    );
    // An error from the callback stops the walk and comes back.
    let mut calls = 0;
    let err = store
        .for_each_audit(&AuditFilter::default(), |_| {
            calls += 1;
            Err(StoreError::CsvHeader("stop".into()))
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::CsvHeader(ref m) if m == "stop"),
        "{err:?}"
    );
    assert_eq!(calls, 1);
}

fn prune_audit_deletes_the_old_rows_in_batches(f: &dyn Fixture) {
    let store = f.store();
    let rows: Vec<AuditRow> = (0..25).map(audit_at).collect();
    store.write_audit_batch(&rows).unwrap();
    // Older than t(200): the calls of t(0) to t(190), 20 of them, in batches of 4: five
    // full batches (each followed by the question whether to go on), then an empty one.
    let mut asked = 0;
    let pruned = store
        .prune_audit_batches(t(200), 4, || {
            asked += 1;
            true
        })
        .unwrap();
    assert_eq!((pruned, asked), (20, 5));
    let left = store.recent_audit(100).unwrap();
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|r| r.started_at >= t(200)));
    // A call that started exactly at the cutoff is kept.
    assert_eq!(store.prune_audit(t(200)).unwrap(), 0);
    assert_eq!(store.prune_audit(t(201)).unwrap(), 1);
    // Told to stop, it stops after the batch it was doing.
    assert_eq!(
        store.prune_audit_batches(t(10_000), 3, || false).unwrap(),
        3
    );
    assert_eq!(store.prune_audit(t(10_000)).unwrap(), 1);
    assert!(store.recent_audit(10).unwrap().is_empty());
    // Other tables are left alone.
    store.add_customer(&erika()).unwrap();
    store.record_failure("123456", t(0)).unwrap();
    store.prune_audit(t(10_000)).unwrap();
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 1);
}

fn last_calls_finds_the_last_and_the_last_verified_call(f: &dyn Fixture) {
    let store = f.store();
    let call = |n: u64, customer: &str, outcome: &str, start: u64| AuditRow {
        customer_id: Some(customer.into()),
        outcome: outcome.into(),
        started_at: t(start),
        ended_at: t(start + 5) + Duration::from_millis(n),
        ..audit_at(n)
    };
    assert_eq!(
        store.last_calls("c1").unwrap(),
        LastCalls {
            last: None,
            verified: None
        }
    );
    store
        .write_audit_batch(&[
            call(1, "c1", "verified", 100),
            call(2, "c1", "verified", 50),
            call(3, "c1", "wrong-pin", 200),
            call(4, "c2", "verified", 300),
        ])
        .unwrap();
    assert_eq!(
        store.last_calls("c1").unwrap(),
        LastCalls {
            last: Some(("wrong-pin".into(), t(205) + Duration::from_millis(3))),
            verified: Some(t(105) + Duration::from_millis(1)),
        }
    );
    // Two calls that started at once: the one written last is the last.
    store.write_audit(&call(5, "c2", "hangup", 300)).unwrap();
    assert_eq!(
        store.last_calls("c2").unwrap(),
        LastCalls {
            last: Some(("hangup".into(), t(305) + Duration::from_millis(5))),
            verified: Some(t(305) + Duration::from_millis(4)),
        }
    );
}

// =============================================================================================
// API keys, verifications, webhooks
// =============================================================================================

fn api_keys_by_hash_revoke_and_list_by_name(f: &dyn Fixture) {
    let store = f.store();
    let at = t(0) + Duration::from_millis(7);
    assert!(store.add_api_key("zeta", "h-zeta", at).unwrap());
    assert!(store.add_api_key("alpha", "h-alpha", t(1)).unwrap());
    assert!(store.add_api_key("Mid", "h-mid", t(2)).unwrap());
    assert!(
        !store.add_api_key("zeta", "h-other", t(3)).unwrap(),
        "names are unique"
    );
    assert_eq!(
        store.api_key_by_hash("h-zeta").unwrap().as_deref(),
        Some("zeta")
    );
    assert_eq!(store.api_key_by_hash("h-other").unwrap(), None);
    assert!(store.revoke_api_key("alpha", t(10)).unwrap());
    assert!(
        !store.revoke_api_key("alpha", t(11)).unwrap(),
        "revoked already"
    );
    assert!(!store.revoke_api_key("nobody", t(11)).unwrap());
    assert_eq!(store.api_key_by_hash("h-alpha").unwrap(), None);
    assert_eq!(
        store.api_key_by_hash("h-mid").unwrap().as_deref(),
        Some("Mid")
    );
    let keys: Vec<(String, SystemTime, Option<SystemTime>)> = store
        .api_keys()
        .unwrap()
        .into_iter()
        .map(|k| (k.name, k.created_at, k.revoked_at))
        .collect();
    assert_eq!(
        keys,
        [
            ("Mid".into(), t(2), None),
            ("alpha".into(), t(1), Some(t(10))),
            ("zeta".into(), at, None),
        ],
        "by name, bytewise"
    );
}

fn a_verification_round_trips_and_the_newest_pending_one_is_found(f: &dyn Fixture) {
    let store = f.store();
    let at = t(1000) + Duration::from_millis(1);
    let mut v = Verification {
        locale: "de".into(),
        expires_at: at + Duration::from_secs(300),
        ..started("VE1", "+4915112345678", at)
    };
    store.insert_verification(&v).unwrap();
    assert_eq!(store.verification("VE1").unwrap().as_ref(), Some(&v));
    assert_eq!(store.verification("VE9").unwrap(), None);
    // A newer pending one of the same subject and key, and one of a customer.
    let newer = Verification {
        id: "VE2".into(),
        created_at: at + Duration::from_secs(10),
        delivery: None,
        ..v.clone()
    };
    store.insert_verification(&newer).unwrap();
    let of_customer = Verification {
        id: "VE3".into(),
        subject: "123456".into(),
        customer_id: Some("123456".into()),
        channel: "voice".into(),
        ..v.clone()
    };
    store.insert_verification(&of_customer).unwrap();
    assert_eq!(
        store.verification("VE3").unwrap().as_ref(),
        Some(&of_customer)
    );
    let pending = |subject: &str, key: &str| {
        store
            .pending_verification(subject, key)
            .unwrap()
            .map(|v| v.id)
    };
    assert_eq!(
        pending("tel:+4915112345678", "shop").as_deref(),
        Some("VE2")
    );
    assert_eq!(pending("tel:+4915112345678", "other"), None);
    assert_eq!(pending("123456", "shop").as_deref(), Some("VE3"));
    // Approved: no longer pending; the older one is found again.
    let mut newer = newer;
    newer.status = VerificationStatus::Approved;
    newer.checks = 2;
    newer.sends = 3;
    newer.updated_at = at + Duration::from_secs(20);
    newer.expires_at = at + Duration::from_secs(20);
    newer.channel = "voice".into();
    newer.delivery = Some("answered".into());
    assert!(
        store
            .update_verification(&newer, VerificationStatus::Pending)
            .unwrap()
    );
    assert_eq!(store.verification("VE2").unwrap().as_ref(), Some(&newer));
    assert_eq!(
        pending("tel:+4915112345678", "shop").as_deref(),
        Some("VE1")
    );
    // A call's outcome changes the delivery alone.
    let later = at + Duration::from_secs(60);
    store
        .set_verification_delivery("VE1", "busy", later)
        .unwrap();
    v.delivery = Some("busy".into());
    v.updated_at = later;
    assert_eq!(store.verification("VE1").unwrap().as_ref(), Some(&v));
    for status in VerificationStatus::ALL {
        let was = v.status;
        v.status = status;
        assert!(store.update_verification(&v, was).unwrap());
        assert_eq!(store.verification("VE1").unwrap().unwrap().status, status);
        // Written over a status the row no longer has: refused, the row unchanged.
        let mut stale = v.clone();
        stale.checks += 1;
        assert!(!store.update_verification(&stale, was).unwrap() || was == status);
    }
    assert_eq!(pending("tel:+4915112345678", "shop"), None);
}

fn webhook_claims_are_leased_and_keep_each_verifications_order(f: &dyn Fixture) {
    let node_a = f.store();
    let node_b = f.store();
    let t0 = t(5000);
    let lease = Duration::from_secs(60);
    node_a.enqueue_webhook("VE1", "VE1 pending", t0).unwrap();
    node_a.enqueue_webhook("VE2", "VE2 pending", t0).unwrap();
    node_b.enqueue_webhook("VE1", "VE1 approved", t0).unwrap();
    node_a
        .enqueue_webhook("VE3", "VE3 later", t0 + Duration::from_secs(5))
        .unwrap();
    assert_eq!(node_b.webhooks_waiting().unwrap(), 4);
    let due = node_a.claim_webhooks(t0, lease, 10).unwrap();
    let bodies: Vec<&str> = due.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["VE1 pending", "VE2 pending"],
        "VE1's approval waits"
    );
    assert_eq!(due[0].verification_id, "VE1");
    assert_eq!((due[0].attempts, due[0].created_at), (0, t0));
    // Leased: the other node sees none of them until the lease ends.
    assert!(node_b.claim_webhooks(t0, lease, 10).unwrap().is_empty());
    // VE1's first fails and waits 1 s: its approval still waits; VE2's is delivered.
    node_a
        .retry_webhook(due[0].id, 1, t0 + Duration::from_secs(1))
        .unwrap();
    node_a.remove_webhook(due[1].id).unwrap();
    assert!(node_b.claim_webhooks(t0, lease, 10).unwrap().is_empty());
    let later = node_b
        .claim_webhooks(t0 + Duration::from_secs(1), lease, 10)
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(
        (later[0].body.as_str(), later[0].attempts),
        ("VE1 pending", 1)
    );
    node_b.remove_webhook(later[0].id).unwrap();
    // The limit: one of the two due.
    let t1 = t0 + Duration::from_secs(5);
    let first = node_b.claim_webhooks(t1, lease, 1).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body, "VE1 approved");
    let second = node_a.claim_webhooks(t1, lease, 1).unwrap();
    assert_eq!(second[0].body, "VE3 later");
    assert_eq!(node_a.webhooks_waiting().unwrap(), 2);
    // A node that died with them: due again once the lease has run out, not before.
    let end = t1 + lease;
    assert!(
        node_a
            .claim_webhooks(end - Duration::from_millis(1), lease, 10)
            .unwrap()
            .is_empty()
    );
    let again: Vec<String> = node_a
        .claim_webhooks(end, lease, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.body)
        .collect();
    assert_eq!(again, ["VE1 approved", "VE3 later"]);
}

fn a_start_joins_a_pending_verification_of_its_subject_and_key(f: &dyn Fixture) {
    let (node_a, node_b) = (f.store(), f.store());
    let at = t(7000);
    let first = started("VE1", "+4915112345678", at);
    let (got, created) = node_a.start_verification(&first, at).unwrap();
    assert!(created);
    assert_eq!(got, first);
    // Another node sent a code for the same number and key a second later: it becomes
    // VE1's resend (channel and delivery of the latest send, the later expiry).
    let later = at + Duration::from_secs(1);
    let second = Verification {
        channel: "voice".into(),
        delivery: Some("calling".into()),
        ..started("VE2", "+4915112345678", later)
    };
    let (got, created) = node_b.start_verification(&second, later).unwrap();
    assert!(!created);
    let want = Verification {
        sends: 2,
        channel: "voice".into(),
        updated_at: later,
        expires_at: later + Duration::from_secs(600),
        delivery: Some("calling".into()),
        ..first.clone()
    };
    assert_eq!(got, want);
    assert_eq!(node_a.verification("VE1").unwrap(), Some(want));
    assert_eq!(node_a.verification("VE2").unwrap(), None, "not written");
    // Another key, another number: verifications of their own.
    let other_key = Verification {
        key_name: "other".into(),
        ..started("VE3", "+4915112345678", later)
    };
    assert!(node_b.start_verification(&other_key, later).unwrap().1);
    assert!(
        node_b
            .start_verification(&started("VE4", "+4915199999999", later), later)
            .unwrap()
            .1
    );
    // VE1 expired, or ended: a new start makes a new one.
    let after = at + Duration::from_secs(2000);
    assert!(
        node_a
            .start_verification(&started("VE5", "+4915112345678", after), after)
            .unwrap()
            .1
    );
    let mut ve5 = node_a.verification("VE5").unwrap().unwrap();
    let was = ve5.status;
    ve5.status = VerificationStatus::Approved;
    assert!(node_a.update_verification(&ve5, was).unwrap());
    assert!(
        node_b
            .start_verification(&started("VE6", "+4915112345678", after), after)
            .unwrap()
            .1
    );
}

fn released_webhook_claims_are_due_again_at_once(f: &dyn Fixture) {
    let (node_a, node_b) = (f.store(), f.store());
    let t0 = t(8000);
    let lease = Duration::from_secs(600);
    for body in ["VE1 pending", "VE1 approved", "VE2 pending"] {
        let id = &body[..3];
        node_a.enqueue_webhook(id, body, t0).unwrap();
    }
    let claimed = node_a.claim_webhooks(t0, lease, 10).unwrap();
    assert_eq!(claimed.len(), 2, "VE1's approval waits for its pending");
    assert!(node_b.claim_webhooks(t0, lease, 10).unwrap().is_empty());
    // Node A stops before trying them: it hands them back, and node B takes them now, in
    // each verification's order, not when the lease ends.
    let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
    node_a.release_webhooks(&ids, t0).unwrap();
    node_a.release_webhooks(&[], t0).unwrap();
    let again: Vec<String> = node_b
        .claim_webhooks(t0, lease, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.body)
        .collect();
    assert_eq!(again, ["VE1 pending", "VE2 pending"]);
}

// =============================================================================================
// Copies
// =============================================================================================

fn copy_to_writes_a_sqlite_copy_of_what_decides_a_call(f: &dyn Fixture) {
    let store = f.store();
    store.add_customer(&erika()).unwrap();
    store
        .add_customer(&NewCustomer {
            extra: BTreeMap::from([("tier".into(), "gold".into()), ("x".into(), "ü".into())]),
            ..customer("é-2", &mobile(2))
        })
        .unwrap();
    store.add_customer(&customer("B", &mobile(3))).unwrap();
    store.set_enabled("B", false).unwrap();
    // A send before the lock-out (a locked-out customer's send is refused).
    let guard = hour_budget(10);
    assert_eq!(
        store
            .admit(&admission("123456", "+4930111", t(40), Some(&guard)))
            .unwrap(),
        SmsAdmission::Recorded
    );
    store
        .lock("123456", t(900) + Duration::from_millis(9), u32::MAX)
        .unwrap();
    store.lock("é-2", t(60), 2).unwrap();
    store.record_failure("é-2", t(30)).unwrap();
    store.bump_failures_in_a_row("é-2").unwrap();
    store
        .record_decoy_failure("tel:+4930", t(41), t(0))
        .unwrap();
    store.lock("B", t(50), 1).unwrap();
    // Not copied: the audit, API keys, verifications.
    store.write_audit(&audit_at(1)).unwrap();
    store.add_api_key("shop", "h", t(0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.sqlite");
    store.copy_to(&path).unwrap();
    let copy = Store::open(&path).unwrap();
    assert!(!copy.was_created(), "copy_to made the schema");
    assert_eq!(copy.schema_version().unwrap(), SCHEMA_VERSION);
    let original = store.list_customers().unwrap();
    assert_eq!(ids(&original), ["123456", "B", "é-2"]);
    assert_eq!(
        copy.list_customers().unwrap(),
        original,
        "records, flags, times, fields"
    );
    assert_eq!(
        copy.lockout("123456").unwrap(),
        Some((t(900) + Duration::from_millis(9), u32::MAX))
    );
    assert_eq!(copy.lockout("é-2").unwrap(), Some((t(60), 2)));
    assert_eq!(copy.lockout("B").unwrap(), Some((t(50), 1)));
    assert_eq!(copy.failures_since("é-2", t(0)).unwrap(), 1);
    assert_eq!(copy.failures_in_a_row("é-2").unwrap(), 1);
    assert_eq!(copy.sms_count_for_customer("123456", t(0)).unwrap(), 1);
    assert_eq!(copy.guard_sends_since(t(0)).unwrap(), 1);
    assert_eq!(copy.decoy_failures_since("tel:+4930", t(0)).unwrap(), 1);
    assert!(copy.recent_audit(10).unwrap().is_empty());
    assert!(copy.api_keys().unwrap().is_empty());
    // A copy is the simulation's to spend: the original is untouched.
    copy.record_failure("123456", t(99)).unwrap();
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 0);
    // An existing file is not a place for a copy's rows twice.
    assert!(
        store.copy_to(&path).is_err(),
        "a second copy onto the first"
    );
}

// =============================================================================================
// Several nodes at once
// =============================================================================================

/// Wrong PINs of one customer checked at the same moment on two nodes: each lock-out is made
/// exactly once, by the failure that reached the threshold, one level above the last.
fn concurrent_failures_lock_out_once_per_threshold(f: &dyn Fixture) {
    f.store().add_customer(&erika()).unwrap();
    let (each, threshold) = (30u32, 3u32);
    let t0 = t(0);
    let made = on_two_nodes(f, |store, _| {
        let mut locks = Vec::new();
        for i in 0..each {
            let at = t0 + Duration::from_millis(u64::from(i));
            let made = store
                .record_failure_and_lock("123456", at, t0, threshold, |level| {
                    Duration::from_secs(60 * u64::from(level))
                })
                .unwrap();
            if let Some((level, failures)) = made {
                assert_eq!(failures, threshold, "a lock-out made by more failures");
                locks.push(level);
            }
        }
        locks
    });
    let total = 16 * each;
    let mut levels: Vec<u32> = made.into_iter().flatten().collect();
    levels.sort_unstable();
    let want: Vec<u32> = (1..=total / threshold).collect();
    assert_eq!(levels, want, "each level made exactly once");
    let store = f.store();
    assert_eq!(
        store.lockout("123456").unwrap().unwrap().1,
        total / threshold
    );
    assert_eq!(store.failures_since("123456", t0).unwrap(), 0);
}

fn concurrent_admissions_take_exactly_the_customer_limit(f: &dyn Fixture) {
    f.store().add_customer(&erika()).unwrap();
    let results = on_two_nodes(f, |store, i| {
        (0..4)
            .map(|j| {
                let caller = format!("+4930{i:02}{j}");
                store
                    .admit_sms("123456", &caller, t(100), t(0), 3, 100)
                    .unwrap()
            })
            .collect::<Vec<_>>()
    });
    let all: Vec<SmsAdmission> = results.into_iter().flatten().collect();
    let recorded = all.iter().filter(|a| **a == SmsAdmission::Recorded).count();
    assert_eq!(recorded, 3, "{all:?}");
    assert!(
        all.iter()
            .all(|a| matches!(a, SmsAdmission::Recorded | SmsAdmission::CustomerLimit)),
        "{all:?}"
    );
    assert_eq!(f.store().sms_count_for_customer("123456", t(0)).unwrap(), 3);
}

fn concurrent_admissions_take_exactly_the_caller_limit(f: &dyn Fixture) {
    let store = f.store();
    for i in 0..64 {
        store
            .add_customer(&customer(&format!("c{i}"), &mobile(i)))
            .unwrap();
    }
    let results = on_two_nodes(f, |store, i| {
        (0..4)
            .map(|j| {
                let id = format!("c{}", i * 4 + j);
                store
                    .admit_sms(&id, "+4930111", t(100), t(0), 100, 3)
                    .unwrap()
            })
            .collect::<Vec<_>>()
    });
    let all: Vec<SmsAdmission> = results.into_iter().flatten().collect();
    let recorded = all.iter().filter(|a| **a == SmsAdmission::Recorded).count();
    assert_eq!(recorded, 3, "{all:?}");
    assert!(
        all.iter()
            .all(|a| matches!(a, SmsAdmission::Recorded | SmsAdmission::CallerLimit)),
        "{all:?}"
    );
    assert_eq!(store.sms_count_for_caller("+4930111", t(0)).unwrap(), 3);
}

fn concurrent_admissions_take_exactly_the_guards_hour_budget(f: &dyn Fixture) {
    let store = f.store();
    for i in 0..64 {
        store
            .add_customer(&customer(&format!("c{i}"), &mobile(i)))
            .unwrap();
    }
    let results = on_two_nodes(f, |store, i| {
        // Per thread: a `GuardQuery`'s rule is not `Sync`.
        let guard = hour_budget(5);
        (0..4)
            .map(|j| {
                let n = i * 4 + j;
                let (id, caller) = (format!("c{n}"), format!("+4930{n:04}"));
                store
                    .admit(&admission(&id, &caller, t(100), Some(&guard)))
                    .unwrap()
            })
            .collect::<Vec<_>>()
    });
    let all: Vec<SmsAdmission> = results.into_iter().flatten().collect();
    let recorded = all.iter().filter(|a| **a == SmsAdmission::Recorded).count();
    assert_eq!(recorded, 5, "{all:?}");
    assert!(
        all.iter().all(|a| matches!(
            a,
            SmsAdmission::Recorded | SmsAdmission::Guard(GuardStop::HourBudget)
        )),
        "{all:?}"
    );
    assert_eq!(store.guard_sends_since(t(0)).unwrap(), 5);
    assert_eq!(f.raw_count("SELECT COUNT(*) FROM sms_sends"), 5);
}

fn concurrent_decoy_failures_count_a_strict_sequence(f: &dyn Fixture) {
    let each = 20u32;
    let subject = "tel:+4915112345678";
    let counts = on_two_nodes(f, |store, i| {
        (0..each)
            .map(|j| {
                let at = t(100) + Duration::from_millis(u64::from(j) * 16 + i as u64);
                store.record_decoy_failure(subject, at, t(0)).unwrap()
            })
            .collect::<Vec<_>>()
    });
    for (i, seen) in counts.iter().enumerate() {
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "thread {i} saw counts go back: {seen:?}"
        );
    }
    let mut all: Vec<u32> = counts.into_iter().flatten().collect();
    all.sort_unstable();
    let want: Vec<u32> = (1..=16 * each).collect();
    assert_eq!(all, want, "every count exactly once");
    assert_eq!(
        f.store().decoy_failures_since(subject, t(0)).unwrap(),
        16 * each
    );
}

/// Two nodes check one shared PIN at the same moment (`[store] pin_key_file`): each
/// `update_pin` reads and writes its row under the subject's lock, so every one of 16 tries
/// sees the count the one before left, none is lost and none is given twice.
fn concurrent_pin_updates_take_turns(f: &dyn Fixture) {
    use ivrd::store::{PinUpdate, StoredPin};
    let tries = 16u32;
    f.store()
        .update_pin("123456", |_| {
            let row = StoredPin {
                digest: vec![7; 32],
                sealed: vec![1, 2, 3],
                length: 6,
                expires_at: t(3600),
                tries_left: tries,
            };
            (PinUpdate::Put(row), ())
        })
        .unwrap();
    let seen = on_two_nodes(f, |store, _| {
        store
            .update_pin("123456", |row| {
                let mut row = row.expect("the PIN is there");
                let before = row.tries_left;
                row.tries_left -= 1;
                let update = if row.tries_left == 0 {
                    PinUpdate::Delete
                } else {
                    PinUpdate::Put(row)
                };
                (update, before)
            })
            .unwrap()
    });
    let mut seen: Vec<u32> = seen;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=tries).collect::<Vec<_>>(),
        "each try saw its own count"
    );
    assert_eq!(
        f.store().pins_outstanding().unwrap(),
        0,
        "the last try removed it"
    );
    let row = f
        .store()
        .update_pin("123456", |row| (PinUpdate::Keep, row))
        .unwrap();
    assert_eq!(row, None);
}

/// Two nodes' deliverers (eight threads each) drain one outbox: every event is handed out
/// exactly once, and a verification's events in the order they were queued.
fn concurrent_webhook_claims_hand_out_every_event_once(f: &dyn Fixture) {
    let (verifications, per) = (40u32, 3u32);
    let store = f.store();
    let t0 = t(9000);
    for n in 0..per {
        for v in 0..verifications {
            store
                .enqueue_webhook(&format!("VE{v}"), &format!("{v}:{n}"), t0)
                .unwrap();
        }
    }
    let stamp = AtomicU64::new(0);
    let claimed = on_two_nodes(f, |store, _| {
        let mut mine: Vec<(u64, String)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = store
                .claim_webhooks(t0, Duration::from_secs(600), 5)
                .unwrap();
            if got.is_empty() {
                if store.webhooks_waiting().unwrap() == 0 {
                    return mine;
                }
                assert!(Instant::now() < deadline, "the outbox did not drain");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for e in got {
                mine.push((stamp.fetch_add(1, Ordering::SeqCst), e.body));
                store.remove_webhook(e.id).unwrap();
            }
        }
    });
    let mut all: Vec<(u64, String)> = claimed.into_iter().flatten().collect();
    let bodies: HashSet<&str> = all.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        all.len(),
        (verifications * per) as usize,
        "handed out in all"
    );
    assert_eq!(bodies.len(), all.len(), "an event was handed out twice");
    all.sort();
    let mut order: HashMap<String, Vec<u32>> = HashMap::new();
    for (_, body) in &all {
        let (v, n) = body.split_once(':').unwrap();
        order
            .entry(v.to_string())
            .or_default()
            .push(n.parse().unwrap());
    }
    let want: Vec<u32> = (0..per).collect();
    for (v, seen) in &order {
        assert_eq!(seen, &want, "verification {v}'s events out of order");
    }
    assert_eq!(store.webhooks_waiting().unwrap(), 0);
}

/// Two nodes adding the same new id at once: one add wins, the others are told it exists.
fn concurrent_adds_of_one_id_let_exactly_one_win(f: &dyn Fixture) {
    let results = on_two_nodes(f, |store, i| {
        store.add_customer(&NewCustomer {
            name: format!("Writer {i}"),
            ..erika()
        })
    });
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.is_ok().then_some(i))
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        assert!(
            matches!(r, Ok(()) | Err(StoreError::DuplicateCustomer(_))),
            "{r:?}"
        );
    }
    let c = f.store().find_customer("123456").unwrap().unwrap();
    assert_eq!(c.name, format!("Writer {}", winners[0]));
    assert_eq!(c.extra["branch"], "Köln", "the winner's fields, once");
}

/// Sixteen starts of one number's verification at once on two nodes, each having found none
/// pending: one verification, with every code counted as its send.
fn concurrent_starts_of_one_verification_make_one(f: &dyn Fixture) {
    let at = t(9500);
    let results = on_two_nodes(f, |store, i| {
        store
            .start_verification(&started(&format!("VE{i}"), "+4915112345678", at), at)
            .unwrap()
    });
    let created: Vec<&Verification> = results.iter().filter(|(_, c)| *c).map(|(v, _)| v).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    let id = &created[0].id;
    assert!(results.iter().all(|(v, _)| &v.id == id));
    let row = f.store().verification(id).unwrap().unwrap();
    assert_eq!(row.sends, results.len() as u32);
    assert_eq!(
        f.raw_count("SELECT COUNT(*) FROM verifications"),
        1,
        "one row in all"
    );
}

/// Four nodes starting at once on a new, empty database: all open it, the schema is made
/// once, and exactly one of them says it made it (only that one seeds it).
fn concurrent_first_opens_migrate_once(f: &dyn Fixture) {
    const NODES: usize = 4;
    let barrier = Barrier::new(NODES);
    let opened: Vec<Result<Store, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..NODES)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    f.try_store()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stores: Vec<Store> = opened
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("node {i} could not open: {e}")))
        .collect();
    for s in &stores {
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }
    let created = stores.iter().filter(|s| s.was_created()).count();
    assert_eq!(created, 1, "nodes that report a new database");
    assert_eq!(f.raw_count("SELECT COUNT(*) FROM schema_version"), 1);
    stores[0].add_customer(&erika()).unwrap();
    assert!(stores[3].find_customer("123456").unwrap().is_some());
}

// =============================================================================================
// PostgreSQL only
// =============================================================================================

/// The server goes away (a clean stop, then a crash): store calls fail within seconds as
/// `Unavailable`, write nothing, and the same store works again once the server is back (its
/// pool reconnects). A cluster of its own: the shared one must stay up.
fn an_outage_fails_fast_and_the_same_store_recovers() {
    let mut pg = Postgres::new();
    pg.create_database("outage");
    let store = Store::connect(&pg.url("outage"), &PgOptions::default()).unwrap();
    store.add_customer(&erika()).unwrap();
    let expect_unavailable = |what: &str, call: &dyn Fn() -> Result<(), StoreError>| {
        let started = Instant::now();
        let r = call();
        let took = started.elapsed();
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "{what} during the outage: {r:?}"
        );
        assert!(took < Duration::from_secs(10), "{what} took {took:?}");
        took
    };
    let find = || store.find_customer("123456").map(|_| ());
    let fail = || store.record_failure("123456", t(1));
    for (outage, stop) in [
        ("stop", Postgres::stop as fn(&mut Postgres)),
        ("kill", Postgres::kill),
    ] {
        stop(&mut pg);
        let took = [
            expect_unavailable(&format!("{outage}: a read"), &find),
            expect_unavailable(&format!("{outage}: a write"), &fail),
            expect_unavailable(&format!("{outage}: a ping"), &|| store.ping()),
        ];
        eprintln!("{outage}: store calls failed after {took:?}");
        pg.start();
        // The same store, at once: no reopening, no retry.
        assert_eq!(
            store.find_customer("123456").unwrap().unwrap().name,
            "Erika Mustermann",
            "after the {outage}"
        );
        assert_eq!(
            store.failures_since("123456", t(0)).unwrap(),
            0,
            "the failed write wrote nothing"
        );
    }
    store.record_failure("123456", t(1)).unwrap();
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 1);
}

/// The server hangs (SIGSTOP: a frozen host, a stalled disk) with connections open: the
/// kernel still acknowledges what the client sends, so neither TCP nor the server's own
/// `statement_timeout` ends a wait. A store call still fails as `Unavailable` by the client's
/// deadline (`statement_timeout + connect_timeout`), on a pooled connection and on a new one,
/// and the same store works again once the server goes on.
fn a_hung_server_fails_calls_by_the_deadline_and_the_same_store_recovers() {
    let mut pg = Postgres::new();
    pg.create_database("hung");
    let opts = PgOptions {
        pool_size: 2,
        connect_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(1),
        ..PgOptions::default()
    };
    let store = std::sync::Arc::new(Store::connect(&pg.url("hung"), &opts).unwrap());
    store.add_customer(&erika()).unwrap();
    pg.freeze();
    // Each call in a thread of its own, so a hang shows as a failed test, not a stuck one.
    let call = |what: &'static str, f: fn(&Store) -> Result<(), StoreError>| {
        let store = store.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = f(&store);
            let _ = tx.send((r, started.elapsed()));
        });
        let (r, took) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{what}: still waiting for a hung server after 20 s"));
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "{what} on a hung server: {r:?}"
        );
        assert!(took < Duration::from_secs(6), "{what} took {took:?}");
        eprintln!("{what}: failed after {took:?}");
    };
    // Three calls one after another: the first on the pooled connection, which the deadline
    // breaks, then on new connections (the server accepts none while it hangs).
    call("a read", |s| s.find_customer("123456").map(|_| ()));
    call("a write", |s| s.record_failure("123456", t(1)));
    call("a ping", |s| s.ping());
    pg.thaw();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.find_customer("123456") {
            Ok(found) => {
                assert_eq!(found.unwrap().name, "Erika Mustermann");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "after the thaw: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        store.failures_since("123456", t(0)).unwrap(),
        0,
        "the write cut short wrote nothing"
    );
}

/// A server that no longer takes writes (a standby, or a primary a failover demoted; here
/// the database's `default_transaction_read_only`, which new sessions take): a write fails as
/// `Unavailable` (an outage: the call takes its `on_error` branch), and the connection it ran
/// on leaves the pool, so the same store writes again as soon as a new session may (with a
/// multi-host URL and `target_session_attrs=read-write`, on the new primary).
fn a_server_that_takes_no_writes_is_away_and_its_connections_are_replaced() {
    let pg = Postgres::new();
    pg.create_database("standby");
    let opts = PgOptions {
        pool_size: 1,
        ..PgOptions::default()
    };
    let store = Store::connect(&pg.url("standby"), &opts).unwrap();
    store.add_customer(&erika()).unwrap();
    pg.psql(
        "standby",
        "ALTER DATABASE standby SET default_transaction_read_only = on",
    )
    .unwrap();
    // The pooled session was opened before: it still writes. Ending it (as a failover's
    // restart would) makes the next one read-only.
    pg.psql(
        "standby",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = 'standby' AND pid <> pg_backend_pid()",
    )
    .unwrap();
    let mut refused = None;
    for _ in 0..3 {
        match store.record_failure("123456", t(1)) {
            Err(StoreError::Unavailable(e)) if e.contains("25006") => {
                refused = Some(e);
                break;
            }
            // The terminated session's own error first.
            Err(StoreError::Unavailable(_)) => continue,
            other => panic!("a write on a read-only server: {other:?}"),
        }
    }
    let refused = refused.expect("no write was refused as read-only");
    assert!(refused.contains("read-only"), "{refused}");
    // Reads still work (on a new, read-only session). Writes come back once sessions may
    // write again: a session opened before that fails one write and is replaced.
    assert!(store.find_customer("123456").unwrap().is_some());
    pg.psql(
        "standby",
        "SET default_transaction_read_only = off; \
         ALTER DATABASE standby SET default_transaction_read_only = off",
    )
    .unwrap();
    let first = store.record_failure("123456", t(1));
    if first.is_err() {
        assert!(
            matches!(first, Err(StoreError::Unavailable(_))),
            "{first:?}"
        );
        store.record_failure("123456", t(1)).unwrap();
    }
    assert_eq!(store.failures_since("123456", t(0)).unwrap(), 1);
}

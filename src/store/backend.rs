//! The one seam between the store's logic and a database: [`Backend`] runs a transaction,
//! [`Tx`] runs statements in it. SQLite ([`Sqlite`], embedded, the default for one node) and
//! PostgreSQL ([`Postgres`], shared by several nodes) implement it; every query and every
//! decision (limits, lock-outs, budgets) is written once, in `store.rs` and its modules, over
//! `dyn Tx`, so the two cannot drift apart and one test suite covers both.
//!
//! Why so small an interface: the store's SQL is plain enough to be shared verbatim (both
//! dialects take `ON CONFLICT ... DO UPDATE`, `RETURNING`, `COUNT(*)`), so the backends only
//! bind values, read rows and lock. Statements are written with SQLite's numbered `?N`
//! placeholders; the PostgreSQL side rewrites them to `$N` once per statement text and keeps
//! the prepared statement per connection (one round trip per statement, not two). The few
//! dialect differences (`rowid` against `ctid`, the DDL) are asked of [`Tx::dialect`].
//!
//! Atomic decisions: a decision (count, then record) runs in one transaction opened with
//! [`Mode::Write`] that first calls [`Tx::lock`] on each key it decides for. SQLite needs no
//! lock (a write transaction is `BEGIN IMMEDIATE`: one writer per file); PostgreSQL takes a
//! transaction-scoped advisory lock on the key, so a second node deciding for the same
//! customer waits for the first one's commit and then counts its row (READ COMMITTED takes a
//! new snapshot per statement). Keys are always locked in the order subject, caller, guard.

use super::StoreError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A value bound to a statement or read from a row. Integers are 64-bit on both sides
/// (PostgreSQL columns are BIGINT): `u32` would bind as PostgreSQL's OID type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Value {
        Value::Int(i64::from(n))
    }
}
impl From<u16> for Value {
    fn from(n: u16) -> Value {
        Value::Int(i64::from(n))
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(i64::from(b))
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        v.as_deref().into()
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Binds a statement's values: `args![a, b, c]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::store::backend::Value::from($v)),*] };
}
pub(crate) use args;

/// One row read, its columns in the statement's order.
#[derive(Debug)]
pub(crate) struct Row(Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Decode(format!("no column {i}")))
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.at(i)? {
            Value::Text(s) => Ok(s.clone()),
            other => Err(StoreError::Decode(format!(
                "column {i}: expected text, got {other:?}"
            ))),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.at(i)? {
            Value::Int(n) => Ok(*n),
            other => Err(StoreError::Decode(format!(
                "column {i}: expected an integer, got {other:?}"
            ))),
        }
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub(crate) fn into_values(self) -> Vec<Value> {
        self.0
    }

    /// A count or a small counter, saturating into `u32`.
    pub(crate) fn count(&self, i: usize) -> Result<u32, StoreError> {
        Ok(u32::try_from(self.int(i)?.max(0)).unwrap_or(u32::MAX))
    }
}

/// Which SQL a statement may rely on beyond what both share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The column naming one physical row of a table without a key (for "delete one of
    /// these"): SQLite's `rowid`, PostgreSQL's `ctid`.
    pub(crate) fn row_locator(self) -> &'static str {
        match self {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "ctid",
        }
    }
}

/// Whether a transaction writes: SQLite takes the write lock at its start (`BEGIN
/// IMMEDIATE`), so a read-then-write decision cannot interleave with another writer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Read,
    Write,
}

/// How a transaction ends when its body succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Commit,
    Rollback,
}

/// Statements inside one transaction.
pub(crate) trait Tx {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns the rows it changed.
    fn exec(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query and hands `each` its rows one at a time (a large result is never held).
    fn for_each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Serialises this transaction with every other one that locks `key`, until its end
    /// (see the module doc). A no-op where the transaction already excludes other writers.
    fn lock(&mut self, key: &str) -> Result<(), StoreError>;
    /// Runs several statements without values (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
}

impl dyn Tx + '_ {
    /// Every row of a query.
    pub(crate) fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        self.for_each(sql, args, &mut |r| {
            rows.push(r);
            Ok(())
        })?;
        Ok(rows)
    }

    /// The first row of a query, if any.
    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first column of the first row of a query that always has one (`COUNT(*)`).
    pub(crate) fn count(&mut self, sql: &str, args: &[Value]) -> Result<u32, StoreError> {
        match self.query_opt(sql, args)? {
            Some(row) => row.count(0),
            None => Err(StoreError::Decode(format!("no row from {sql}"))),
        }
    }
}

/// A database the store can run transactions on.
pub(crate) trait Backend: Send + Sync {
    /// Runs `body` in one transaction: committed (or rolled back, if it says so) when it
    /// returns `Ok`, rolled back when it returns an error.
    fn transaction(
        &self,
        mode: Mode,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<End, StoreError>,
    ) -> Result<(), StoreError>;
    /// The database, for messages (never a password).
    fn describe(&self) -> String;
    /// The SQLite file, if that is what this is.
    fn path(&self) -> Option<&Path> {
        None
    }
    /// The SQLite backend, if that is what this is (tests look below the store's API).
    #[cfg(test)]
    fn sqlite(&self) -> Option<&Sqlite> {
        None
    }
}

// ------------------------------------------------------------------------------- SQLite

/// One SQLite connection behind a mutex: the write rate (a few rows per call) is far below
/// what one connection serves, and a single writer is what SQLite allows anyway.
pub(crate) struct Sqlite {
    conn: Mutex<rusqlite::Connection>,
    path: PathBuf,
}

impl Sqlite {
    pub(crate) fn new(conn: rusqlite::Connection, path: PathBuf) -> Sqlite {
        Sqlite {
            conn: Mutex::new(conn),
            path,
        }
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock cannot leave SQLite half-written: an open transaction
        // rolls back when dropped. So the connection is still sound and we keep serving.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct SqliteTx<'a>(&'a rusqlite::Transaction<'a>);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Result<Value, StoreError> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Integer(n) => Ok(Value::Int(n)),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(|s| Value::Text(s.to_owned()))
            .map_err(|e| StoreError::Decode(format!("text that is not UTF-8: {e}"))),
        ValueRef::Real(_) | ValueRef::Blob(_) => Err(StoreError::Decode(
            "a REAL or BLOB where the schema has none".into(),
        )),
    }
}

impl Tx for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn for_each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(sqlite_value(r.get_ref(i)?)?);
            }
            each(Row(values))?;
        }
        Ok(())
    }

    fn lock(&mut self, _key: &str) -> Result<(), StoreError> {
        // A write transaction is BEGIN IMMEDIATE: it already excludes every other writer.
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

impl Backend for Sqlite {
    fn transaction(
        &self,
        mode: Mode,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<End, StoreError>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let behavior = match mode {
            Mode::Read => rusqlite::TransactionBehavior::Deferred,
            Mode::Write => rusqlite::TransactionBehavior::Immediate,
        };
        let tx = conn.transaction_with_behavior(behavior)?;
        let end = body(&mut SqliteTx(&tx))?;
        match end {
            End::Commit => tx.commit()?,
            End::Rollback => tx.rollback()?,
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    #[cfg(test)]
    fn sqlite(&self) -> Option<&Sqlite> {
        Some(self)
    }
}

// ------------------------------------------------------------------------------- PostgreSQL

/// How the PostgreSQL pool connects and waits.
#[derive(Clone)]
pub struct PgOptions {
    /// Connections at most (each node; the server's `max_connections` bounds all nodes).
    pub pool_size: u32,
    /// How long a store call waits for a connection, and a new connection for the server,
    /// before failing with [`StoreError::Unavailable`]: during an outage a call's step must
    /// fail fast and take its `on_error` branch, not hang.
    pub connect_timeout: Duration,
    /// The server cancels a statement (`statement_timeout`) or a lock wait (`lock_timeout`)
    /// that takes longer. A server that cannot answer at all (hung, frozen, cut off) is not
    /// waited for past `statement_timeout + connect_timeout`: the call fails
    /// as [`StoreError::Unavailable`] and the pool drops that connection.
    pub statement_timeout: Duration,
    /// PEM file of the CA that signs the server's certificate (TLS: `sslmode=require` in the
    /// URL); the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// The password, when it is not in the URL (from a file or a systemd credential).
    pub password: Option<String>,
    /// Names the connections in `pg_stat_activity`.
    pub application_name: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ca_file", &self.ca_file)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            ca_file: None,
            password: None,
            application_name: "ivrd".into(),
        }
    }
}

/// A pooled PostgreSQL client with its prepared statements.
pub(crate) struct PgConn {
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    /// The task that drives the connection's socket, on [`PgLink`]'s runtime.
    driver: tokio::task::JoinHandle<()>,
    /// A deadline passed mid-exchange: what the server made of it is unknown, so the pool
    /// drops this connection ([`PgManager::has_broken`]) rather than reuse it.
    broken: bool,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // A healthy connection ends by itself once its client is gone (it says Terminate);
        // a broken one may be stuck writing to a server that does not read: cut it.
        if self.broken {
            self.driver.abort();
        }
    }
}

/// Most statements kept prepared per connection: the store's texts are a few dozen, but the
/// audit filter's `IN (...)` lists make texts of their own.
const MAX_PREPARED: usize = 256;

/// How long the client waits for the server, whatever the server's own timeouts say.
///
/// `statement_timeout` and `lock_timeout` are enforced by the server, so they end a slow
/// statement but not a wait on a server that cannot answer: a frozen host or a stalled disk
/// keeps the connection open (the kernel still acknowledges what is sent), and a network
/// that drops packets leaves TCP retrying for many minutes. Every exchange with the server
/// (connecting, each statement, each batch of rows, commit) is therefore bounded here too,
/// so a call's step fails and takes its `on_error` branch instead of holding the caller in
/// silence and a thread forever.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PgDeadline {
    /// A new connection: TCP, TLS, start-up and authentication together.
    connect: Duration,
    /// One exchange on an open connection: the server's own limit plus time for its answer.
    exchange: Duration,
}

impl PgDeadline {
    fn of(opts: &PgOptions) -> PgDeadline {
        PgDeadline {
            connect: opts.connect_timeout,
            exchange: opts.statement_timeout + opts.connect_timeout,
        }
    }
}

/// What every exchange with one database needs: the runtime that drives its connections
/// (one worker thread; store calls wait on it from their own blocking threads), the
/// deadlines, and the name errors give it. Shared by the pool's manager and the backend.
pub(crate) struct PgLink {
    rt: tokio::runtime::Runtime,
    deadline: PgDeadline,
    target: String,
}

impl PgLink {
    /// Runs `fut` to its end or to `limit`; past the limit the connection is `broken`.
    fn wait<T>(
        &self,
        broken: &mut bool,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        // The timer is made inside the runtime (a `Sleep` needs its time driver).
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await })
        {
            Ok(r) => r.map_err(|e| {
                let e = pg_error(&self.target, e);
                // A server that is going away, full, or no longer takes writes: a new
                // connection (to the same host, or to the new primary that a multi-host URL
                // with `target_session_attrs=read-write` finds) is the way back, not this one.
                if matches!(e, StoreError::Unavailable(_)) {
                    *broken = true;
                }
                e
            }),
            Err(_) => {
                *broken = true;
                Err(StoreError::Unavailable(format!(
                    "{}: no answer within {} ms",
                    self.target,
                    limit.as_millis()
                )))
            }
        }
    }
}

pub(crate) struct PgManager {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    link: std::sync::Arc<PgLink>,
}

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = StoreError;

    fn connect(&self) -> Result<PgConn, StoreError> {
        let link = &self.link;
        let mut timed_out = false;
        let (client, connection) = link.wait(
            &mut timed_out,
            link.deadline.connect,
            self.config.connect(self.tls.clone()),
        )?;
        let driver = link.rt.spawn(async move {
            // Its error (the server went away) reaches the client's next call as an error.
            let _ = connection.await;
        });
        Ok(PgConn {
            client,
            statements: HashMap::new(),
            driver,
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), StoreError> {
        let PgConn { client, broken, .. } = conn;
        self.link
            .wait(broken, self.link.deadline.exchange, client.simple_query(""))
            .map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

/// A pool of connections to one PostgreSQL database.
pub(crate) struct Postgres {
    /// The pool and the runtime under it. Taken by `Drop`, which must not close connections
    /// or stop their runtime on an async runtime's thread.
    parts: Option<PgParts>,
    target: String,
}

struct PgParts {
    pool: r2d2::Pool<PgManager>,
    link: std::sync::Arc<PgLink>,
}

impl Postgres {
    /// Connects (the first connection is made here, so a wrong URL or password fails now).
    pub(crate) fn connect(url: &str, opts: &PgOptions) -> Result<Postgres, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Url(e.to_string()))?;
        if let Some(password) = &opts.password {
            config.password(password);
        }
        let ms = |d: Duration| d.as_millis().max(1);
        config
            .application_name(&opts.application_name)
            .connect_timeout(opts.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            // Sent data unacknowledged this long (a host gone from the network) closes the
            // socket, so even an idle pooled connection does not outlive its server by long.
            .tcp_user_timeout(PgDeadline::of(opts).exchange)
            .options(format!(
                "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
                ms(opts.statement_timeout),
                ms(opts.statement_timeout),
                ms(opts.statement_timeout * 2),
            ));
        let target = describe_pg(&config);
        let tls = tls_connector(opts.ca_file.as_deref())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ivrd-pg")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("{target}: no runtime: {e}")))?;
        let link = std::sync::Arc::new(PgLink {
            rt,
            deadline: PgDeadline::of(opts),
            target: target.clone(),
        });
        let manager = PgManager {
            config,
            tls,
            link: link.clone(),
        };
        // One connection by hand first: a wrong URL, password or certificate is an error at
        // start, in the server's own words (the pool would only say it timed out).
        let first = r2d2::ManageConnection::connect(&manager);
        drop(first?);
        let pool = r2d2::Pool::builder()
            .max_size(opts.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(opts.connect_timeout)
            // A broken connection is noticed by `has_broken` when it comes back; testing
            // each one on the way out would cost a round trip per store call.
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Ok(Postgres {
            parts: Some(PgParts { pool, link }),
            target,
        })
    }

    fn parts(&self) -> &PgParts {
        // Only `Drop` takes them.
        self.parts.as_ref().expect("the pool lives until drop")
    }

    fn checkout(&self) -> Result<r2d2::PooledConnection<PgManager>, StoreError> {
        self.parts()
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(format!("no connection to {}: {e}", self.target)))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stopping the connections' runtime blocks, which panics on a thread that runs an
        // async runtime (where the daemon drops its store): a plain thread does it.
        if let Some(parts) = self.parts.take() {
            let _ = std::thread::Builder::new()
                .name("ivrd-pg-close".into())
                .spawn(move || drop(parts));
        }
    }
}

pub(crate) fn describe_pg(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

fn tls_connector(
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::Tls(format!("{}: {e}", path.display())))?;
            let mut found = 0;
            for cert in rustls_pemfile_certs(&pem) {
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Tls(format!("{}: {e}", path.display())))?;
                found += 1;
            }
            if found == 0 {
                return Err(StoreError::Tls(format!(
                    "{}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// A PostgreSQL error as the store reports it: the server being away (connection lost,
/// shutting down, too many connections) is [`StoreError::Unavailable`], which the daemon
/// treats as an outage; a refused constraint is [`StoreError::Constraint`].
pub(crate) fn pg_error(target: &str, e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let text = format!("{target}: {} ({code})", db.message());
            if code.starts_with("23") {
                StoreError::Constraint(text)
            } else if code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                // read_only_sql_transaction: a standby, or a primary demoted by a failover.
                || code == "25006"
            {
                StoreError::Unavailable(text)
            } else {
                StoreError::Db(text)
            }
        }
        // No answer from the server: closed, refused, timed out, TLS.
        None => StoreError::Unavailable(format!("{target}: {e}")),
    }
}

/// `?N` placeholders as PostgreSQL's `$N`. The store's SQL has no `?` anywhere else (no
/// string literal holds one).
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                _ => n.to_sql(ty, out),
            },
            // PostgreSQL's text cannot hold NUL, which SQLite's can (audit strings come from
            // SIP headers): store U+FFFD rather than fail a whole batch.
            Value::Text(s) if s.contains('\0') => s.replace('\0', "\u{FFFD}").to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        use tokio_postgres::types::Type;
        matches!(
            *ty,
            Type::INT2 | Type::INT4 | Type::INT8 | Type::BOOL | Type::TEXT | Type::VARCHAR
        )
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> tokio_postgres::types::FromSql<'a> for Value {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        Ok(match *ty {
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <Value as tokio_postgres::types::ToSql>::accepts(ty)
            || <String as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

/// One transaction on one pooled connection. `BEGIN` and `COMMIT` are sent as statements
/// (not through `tokio_postgres::Transaction`, whose borrow of the client would not let the
/// deadline mark the connection broken).
struct PgTx<'a> {
    link: &'a PgLink,
    conn: &'a mut PgConn,
}

impl PgTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(stmt) = self.conn.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let PgConn { client, broken, .. } = &mut *self.conn;
        let text = dollar_placeholders(sql);
        let stmt = self
            .link
            .wait(broken, self.link.deadline.exchange, client.prepare(&text))?;
        let statements = &mut self.conn.statements;
        if statements.len() >= MAX_PREPARED {
            statements.clear();
        }
        statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// Sends `sql` (no parameters, no rows) under the deadline.
    fn simple(&mut self, sql: &str) -> Result<(), StoreError> {
        let PgConn { client, broken, .. } = &mut *self.conn;
        self.link.wait(
            broken,
            self.link.deadline.exchange,
            client.batch_execute(sql),
        )
    }
}

fn bind(args: &[Value]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

impl Tx for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let PgConn { client, broken, .. } = &mut *self.conn;
        let params = bind(args);
        self.link.wait(
            broken,
            self.link.deadline.exchange,
            client.execute(&stmt, &params),
        )
    }

    fn for_each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use futures_util::StreamExt;
        let stmt = self.statement(sql)?;
        let PgConn { client, broken, .. } = &mut *self.conn;
        let limit = self.link.deadline.exchange;
        let rows = self
            .link
            .wait(broken, limit, client.query_raw(&stmt, args.iter()))?;
        let mut rows = std::pin::pin!(rows);
        // Each row under the deadline: a large result is read as it comes, never held whole.
        while let Some(r) = self
            .link
            .wait(broken, limit, async { rows.next().await.transpose() })?
        {
            let mut values = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                values.push(
                    r.try_get::<_, Value>(i)
                        .map_err(|e| StoreError::Decode(format!("column {i}: {e}")))?,
                );
            }
            each(Row(values))?;
        }
        Ok(())
    }

    fn lock(&mut self, key: &str) -> Result<(), StoreError> {
        // 64-bit hash of the key: a collision only makes two decisions wait for each other.
        self.exec(
            "SELECT pg_advisory_xact_lock(hashtextextended(?1, 0))",
            args![format!("ivrd:{key}")],
        )?;
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.simple(sql)
    }
}

impl Backend for Postgres {
    fn transaction(
        &self,
        mode: Mode,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<End, StoreError>,
    ) -> Result<(), StoreError> {
        let mut conn = self.checkout()?;
        let mut pg = PgTx {
            link: &self.parts().link,
            conn: &mut conn,
        };
        pg.simple(match mode {
            Mode::Read => "BEGIN READ ONLY",
            Mode::Write => "BEGIN",
        })?;
        match body(&mut pg) {
            Ok(End::Commit) => pg.simple("COMMIT"),
            Ok(End::Rollback) => pg.simple("ROLLBACK"),
            Err(e) => {
                // The statement's error is the one to report; a connection whose rollback
                // fails too is broken (or closed) and leaves the pool.
                if !pg.conn.broken && pg.simple("ROLLBACK").is_err() {
                    pg.conn.broken = true;
                }
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_and_nothing_else_changes() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?13) -- ?"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $13) -- ?"
        );
    }

    #[test]
    fn a_row_decodes_what_it_holds_and_refuses_what_it_does_not() {
        let row = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Int(-1),
            Value::Int(i64::MAX),
        ]);
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.opt_int(1).unwrap(), None);
        assert_eq!(row.opt_text(1).unwrap(), None);
        assert_eq!(row.text(2).unwrap(), "x");
        assert!(row.text(0).is_err());
        assert!(row.int(2).is_err());
        assert!(row.int(9).is_err());
        assert_eq!(row.count(3).unwrap(), 0);
        assert_eq!(row.count(4).unwrap(), u32::MAX);
    }
}

//! Audit rows with group commit: every finished call's row on disk, at any call rate.
//!
//! Why: the store runs SQLite with `synchronous = FULL` (an audit row must survive a power cut),
//! so each commit waits for an fsync. One commit per call tops out near 2,000 rows a second on
//! the benchmark machine's disk, and each one holds the store's lock while it waits, in the way
//! of customer lookups and PIN checks. Here one thread owns the writing: it takes every row that
//! arrives within a few milliseconds of the first, writes them in one transaction and fsyncs
//! once, then tells each call its row is durable.
//!
//! Nothing is lost: [`AuditWriter::write`] returns only once the row is committed (or the error
//! that stopped it), so a call task (and graceful shutdown, which waits for the call tasks)
//! still ends with its row on disk.
//!
//! # The spool: when the store is away (issue 16)
//!
//! The store may be a database on another host, which can go away. With a [`Spool`]
//! ([`AuditWriter::start_with_spool`]), a batch whose commit fails is appended to a local file
//! instead, one JSON object per line, and the file is fsynced before the rows are answered `Ok`:
//! they are as durable there as in the database. Then:
//!
//! - **Order.** While the spool holds rows, newer batches are appended behind them (after an
//!   attempt to flush, at most one every 2 s), never written around them, so the store
//!   receives the rows in the order they were written.
//! - **Bounded.** The file never holds more than [`Spool::max_rows`] rows. Rows that do not fit
//!   get the store's error, as without a spool, and an `error!` says so: an outage longer than
//!   the spool was sized for must be loud, not a file that grows until the disk is full and
//!   takes down whatever else writes there (logs, the SMS log, a local database).
//! - **Flushed without a new call.** While rows wait, the writer thread retries every 2 s on
//!   its own, and at start it flushes a file an earlier run left behind before anything else.
//!   A flush writes the rows oldest first in transactions of `MAX_BATCH` (512).
//! - **Duplicates, not losses.** After each committed chunk the chunk's lines are overwritten
//!   with spaces (newlines kept) and the file is fsynced; blank lines are skipped. A crash
//!   between a commit and that overwrite replays that one chunk at the next start: its rows
//!   may then be in the store twice (a crash in mid-overwrite leaves lines half blank: they do
//!   not parse and are skipped, and they were committed). Any other order (clearing first)
//!   could lose them, and the audit trail prefers a duplicate row, which a reader can recognise
//!   by its Call-ID and times, to a missing one. When every chunk is in, the file is removed
//!   (and the directory fsynced); when a flush stops half way, the remaining lines are copied
//!   to a new file that replaces the old one by rename, so committed rows neither come back
//!   nor take up room.
//! - **Damage is skipped, not fatal.** A line that does not parse (a torn write of a crash, an
//!   edit by hand) is logged with its byte offset and skipped; it never stops the rows behind it.
//!
//! A row the store refuses for its content rather than its absence would be spooled and retried
//! like the others and hold up the rows behind it; the SQLite store refuses none (no constraint
//! a row can break), a future store should make sure the same holds. One spool file belongs to
//! one writer: two daemons must not share its path.

use crate::store::{AuditRow, AuditTransfer, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

/// Every outcome an audit row can have, sorted, each once: the flow's verification outcome
/// ([`crate::dialplan::Outcome`]) or, for a call no flow ran on, how it ended
/// ([`crate::call::CallEnd`]); see `server::audit_row`. What `ivrd audit --outcome` accepts.
pub fn outcome_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = crate::dialplan::Outcome::ALL
        .iter()
        .map(|o| o.as_str())
        .chain(crate::call::CallEnd::NAMES)
        .chain(crate::call::outbound::Delivery::AUDIT_OUTCOMES)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Most rows in one transaction: bounds how long one commit holds the store's lock. A flush of
/// the spool writes chunks of this size too.
const MAX_BATCH: usize = 512;

/// How often the writer tries to flush the spool while rows wait in it, with or without new
/// rows arriving. Each failed try costs one failed commit and reading one chunk of the file.
const RETRY: Duration = Duration::from_secs(2);

/// Longest spool line read back. A row is a few hundred bytes; this only keeps a damaged file
/// (a torn tail of zeros has no newline) from being read into memory whole. Rows whose line
/// would be longer are not spooled (they get the store's error).
const MAX_LINE: usize = 1 << 20;

type Reply = oneshot::Sender<Result<(), String>>;

/// Handle to the writer thread; cheap to clone. The thread ends when the last handle is dropped,
/// after writing what it was given.
#[derive(Clone)]
pub struct AuditWriter {
    rows: std_mpsc::Sender<(AuditRow, Reply)>,
}

/// Why a row was not written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(String),
    #[error("audit writer thread is gone")]
    Gone,
}

/// Where rows wait while the store is away: see the module documentation.
#[derive(Debug, Clone)]
pub struct Spool {
    /// The spool file (JSON Lines), created with mode 0600 when first needed; its directory
    /// must exist. Removed again once flushed.
    pub path: PathBuf,
    /// Most rows the file holds; rows beyond it get the store's error.
    pub max_rows: usize,
}

impl AuditWriter {
    /// A writer without a spool: a failed commit is every row's error.
    pub fn start(store: Arc<Store>) -> std::io::Result<AuditWriter> {
        AuditWriter::start_with_spool(store, None)
    }

    /// A writer that spools rows to disk while the store fails (see the module documentation).
    /// A spool file left by an earlier run is written to the store first, by the writer thread
    /// (rows written meanwhile wait behind it). Fails when the spool's directory does not exist
    /// or its file cannot be opened: a misconfigured spool should stop the start, not show up
    /// in the first outage.
    pub fn start_with_spool(
        store: Arc<Store>,
        spool: Option<Spool>,
    ) -> std::io::Result<AuditWriter> {
        let spool = spool.map(SpoolFile::open).transpose()?;
        let (tx, rx) = std_mpsc::channel::<(AuditRow, Reply)>();
        std::thread::Builder::new()
            .name("ivrd-audit".into())
            .spawn(move || writer_loop(&store, &rx, spool))?;
        Ok(AuditWriter { rows: tx })
    }

    /// Queues the row and waits until it is committed (or, with a spool, durably spooled).
    pub async fn write(&self, row: AuditRow) -> Result<(), AuditError> {
        let (reply, done) = oneshot::channel();
        self.rows.send((row, reply)).map_err(|_| AuditError::Gone)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Store(e)),
            Err(_) => Err(AuditError::Gone),
        }
    }
}

/// How long the writer waits for more rows after the first of a batch. Nobody listens on the
/// other end any more (the caller has hung up; the call task only waits to end), so a few
/// milliseconds cost nothing, and at hundreds of calls a second they turn hundreds of commits
/// into a hundred. Measured at 600 calls/s: one commit per row was 14 % of ivrd's CPU.
const LINGER: Duration = Duration::from_millis(10);

fn writer_loop(
    store: &Store,
    rx: &std_mpsc::Receiver<(AuditRow, Reply)>,
    mut spool: Option<SpoolFile>,
) {
    // An earlier run's rows go before any of this run's.
    if let Some(spool) = spool.as_mut() {
        spool.try_flush(store);
    }
    // Blocks for the first row, sleeps LINGER, then takes what has arrived; rows that come in
    // during the commit form the next batch, so batches also grow with the load by themselves.
    // Sleeping rather than waiting on the channel matters: a waiting receiver is woken by
    // every row (one context switch each, measured at 1,000 a second at 600 calls/s), a
    // sleeping one costs the senders nothing. Only while rows wait in the spool does the
    // thread wake by itself, to retry the flush.
    loop {
        let first = match spool.as_mut().filter(|s| s.pending > 0) {
            Some(s) => {
                match rx.recv_timeout(s.next_try.saturating_duration_since(Instant::now())) {
                    Ok(first) => first,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        s.try_flush(store);
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match rx.recv() {
                Ok(first) => first,
                Err(_) => break,
            },
        };
        let mut batch = vec![first];
        std::thread::sleep(LINGER);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (rows, replies): (Vec<AuditRow>, Vec<Reply>) = batch.into_iter().unzip();
        match spool.as_mut() {
            Some(spool) => {
                for (reply, result) in replies.into_iter().zip(spool.commit(store, &rows)) {
                    let _ = reply.send(result);
                }
            }
            None => {
                let result = store
                    .write_audit_batch(&rows)
                    .map_err(|e: StoreError| e.to_string());
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
        }
    }
    // Every handle is gone (shutdown): one last try, and what stays waits for the next start.
    if let Some(spool) = spool.as_mut().filter(|s| s.pending > 0) {
        spool.try_flush(store);
        if spool.pending > 0 {
            warn!(
                rows = spool.pending,
                path = %spool.path.display(),
                "audit rows stay in the spool; the next start writes them to the store"
            );
        }
    }
}

/// The writer thread's side of a [`Spool`].
struct SpoolFile {
    path: PathBuf,
    max_rows: usize,
    /// Lines in the file that are not blank: rows waiting (and damaged lines among them, until
    /// a flush gets past them). Counts against `max_rows`.
    pending: usize,
    /// No flush before this (the last one failed).
    next_try: Instant,
    /// Why the store last failed (or the flush): the error rows get that do not fit, and the
    /// warning is logged only when it changes.
    last_error: Option<String>,
    /// The outage's warning has been logged (cleared when the spool is empty again).
    outage: bool,
    /// Damaged lines before this offset have been logged already (a failed flush reads its
    /// first chunk again every RETRY).
    reported_to: u64,
}

impl SpoolFile {
    /// Counts the rows an earlier run left, and ends the file with a newline if a crash cut
    /// its last line short (else the next row would be glued to it and lost with it).
    fn open(spool: Spool) -> io::Result<SpoolFile> {
        let dir = parent_dir(&spool.path);
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("audit spool directory {} does not exist", dir.display()),
            ));
        }
        let mut pending = 0;
        match OpenOptions::new().read(true).write(true).open(&spool.path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                if len > 0 {
                    let mut last = [0u8];
                    file.read_exact_at(&mut last, len - 1)?;
                    if last[0] != b'\n' {
                        file.write_all_at(b"\n", len)?;
                        file.sync_data()?;
                    }
                }
                let mut reader = BufReader::new(&file);
                let mut buf = Vec::new();
                loop {
                    let line = read_line(&mut reader, &mut buf)?;
                    if line.len == 0 {
                        break;
                    }
                    if line.overlong || !is_blank(&buf) {
                        pending += 1;
                    }
                }
                if pending > 0 {
                    warn!(
                        rows = pending,
                        path = %spool.path.display(),
                        "an earlier run left audit rows in the spool; writing them to the store first"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("audit spool {}: {e}", spool.path.display()),
                ));
            }
        }
        Ok(SpoolFile {
            path: spool.path,
            max_rows: spool.max_rows,
            pending,
            next_try: Instant::now(),
            last_error: None,
            outage: false,
            reported_to: 0,
        })
    }

    /// Commits one batch: to the store when nothing waits in the spool (or a flush just
    /// emptied it), else, or when the store fails, behind the spooled rows. One result per row.
    fn commit(&mut self, store: &Store, rows: &[AuditRow]) -> Vec<Result<(), String>> {
        if self.pending > 0 && Instant::now() >= self.next_try {
            self.try_flush(store);
        }
        let error = if self.pending == 0 {
            match store.write_audit_batch(rows) {
                Ok(()) => return vec![Ok(()); rows.len()],
                Err(e) => {
                    // The outage starts: the first flush is due a RETRY from now.
                    let e = e.to_string();
                    self.last_error = Some(e.clone());
                    self.next_try = Instant::now() + RETRY;
                    e
                }
            }
        } else {
            self.last_error
                .clone()
                .unwrap_or_else(|| "earlier audit rows wait in the spool".into())
        };
        self.spool(rows, &error)
    }

    /// Appends what fits of `rows` (the store failed with `error`) and fsyncs; those rows are
    /// answered `Ok`, the others get `error`.
    fn spool(&mut self, rows: &[AuditRow], error: &str) -> Vec<Result<(), String>> {
        let mut results = vec![Err(error.to_string()); rows.len()];
        let room = self.max_rows.saturating_sub(self.pending);
        let mut lines = Vec::new();
        let mut spooled = Vec::new();
        let mut no_room = 0;
        for (i, row) in rows.iter().enumerate() {
            if spooled.len() == room {
                no_room = rows.len() - i;
                break;
            }
            match serde_json::to_vec(&SpooledRow::from(row)) {
                Ok(line) if line.len() < MAX_LINE => {
                    lines.extend_from_slice(&line);
                    lines.push(b'\n');
                    spooled.push(i);
                }
                Ok(_) => error!(call_id = %row.call_id, "audit row too long to spool"),
                Err(e) => error!(call_id = %row.call_id, "audit row not spooled: {e}"),
            }
        }
        if !spooled.is_empty() {
            match self.append(&lines) {
                Ok(()) => {
                    self.pending += spooled.len();
                    if !self.outage {
                        self.outage = true;
                        warn!(
                            rows = spooled.len(),
                            error,
                            path = %self.path.display(),
                            "audit store unavailable: spooling audit rows to disk until it is back"
                        );
                    }
                    for &i in &spooled {
                        results[i] = Ok(());
                    }
                }
                Err(e) => {
                    error!(
                        rows = spooled.len(),
                        error,
                        path = %self.path.display(),
                        "audit rows lost: the store failed and so did the spool: {e}"
                    );
                    for &i in &spooled {
                        results[i] = Err(format!("{error}; spooling failed: {e}"));
                    }
                }
            }
        }
        if no_room > 0 {
            error!(
                rows = no_room,
                max_rows = self.max_rows,
                error,
                path = %self.path.display(),
                "audit rows lost: the store failed and the spool is full"
            );
        }
        results
    }

    /// Appends `lines` and fsyncs (the directory too when the file is new). On failure the
    /// file is cut back to its old length, so no half row stays behind to be glued to the next.
    fn append(&self, lines: &[u8]) -> io::Result<()> {
        let created = !self.path.exists();
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let old_len = file.metadata()?.len();
        let written = file
            .write_all(lines)
            .and_then(|()| file.sync_data())
            .and_then(|()| {
                if created {
                    sync_dir(&self.path)
                } else {
                    Ok(())
                }
            });
        if written.is_err() {
            let _ = file.set_len(old_len).and_then(|()| file.sync_data());
        }
        written
    }

    /// [`SpoolFile::flush`], with its logging and the retry's timing.
    fn try_flush(&mut self, store: &Store) {
        match self.flush(store) {
            Ok(rows) => {
                if rows > 0 || self.outage {
                    info!(rows, "audit spool flushed: the rows are in the store");
                }
                self.outage = false;
                self.last_error = None;
            }
            Err(e) => {
                self.next_try = Instant::now() + RETRY;
                if self.last_error.as_deref() == Some(e.as_str()) {
                    debug!(rows = self.pending, "audit spool not flushed: {e}");
                } else {
                    warn!(
                        rows = self.pending,
                        "audit spool not flushed, retrying every {RETRY:?}: {e}"
                    );
                }
                self.last_error = Some(e);
            }
        }
    }

    /// Writes the spooled rows to the store, oldest first, [`MAX_BATCH`] at a time, blanking
    /// each chunk's lines once committed; removes the file when all are in. Returns the rows
    /// written. On failure the rows not written stay, in a file without the committed ones.
    fn flush(&mut self, store: &Store) -> Result<usize, String> {
        let path = self.path.clone();
        let io_error = |e: io::Error| format!("audit spool {}: {e}", path.display());
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.pending = 0;
                return Ok(0);
            }
            Err(e) => return Err(io_error(e)),
        };
        let mut reader = BufReader::new(&file);
        let mut buf = Vec::new();
        let mut offset = 0u64;
        let mut written = 0;
        loop {
            // One chunk: up to MAX_BATCH lines that are not blank (blank ones are committed
            // already and left as they are).
            let mut first_live: Option<u64> = None;
            // Where each line of the chunk is, without its newline: what is blanked after the
            // commit.
            let mut lines: Vec<(u64, usize)> = Vec::new();
            let mut live = 0;
            let mut rows = Vec::new();
            while live < MAX_BATCH {
                let line = read_line(&mut reader, &mut buf).map_err(io_error)?;
                if line.len == 0 {
                    break;
                }
                let at = offset;
                offset += line.len as u64;
                if !line.overlong && is_blank(&buf) {
                    continue;
                }
                first_live.get_or_insert(at);
                lines.push((at, line.len - usize::from(line.newline)));
                live += 1;
                let parsed = if line.overlong {
                    Err(format!("longer than {MAX_LINE} bytes"))
                } else {
                    serde_json::from_slice::<SpooledRow>(&buf).map_err(|e| e.to_string())
                };
                match parsed {
                    Ok(row) => rows.push(AuditRow::from(row)),
                    Err(e) if at >= self.reported_to => {
                        self.reported_to = offset;
                        error!(
                            path = %path.display(),
                            offset = at,
                            "audit spool line skipped, it does not hold a row: {e}"
                        );
                    }
                    Err(_) => {}
                }
            }
            let Some(start) = first_live else { break };
            if !rows.is_empty()
                && let Err(e) = store.write_audit_batch(&rows)
            {
                if start > 0 {
                    drop(reader);
                    if let Err(c) = self.compact(&file, start) {
                        // The committed lines stay blank in the old file: no harm but room.
                        warn!(path = %path.display(), "audit spool not compacted: {c}");
                    }
                }
                if written > 0 {
                    info!(rows = written, "audit spool partly flushed");
                }
                return Err(e.to_string());
            }
            blank(&file, &lines)
                .and_then(|()| file.sync_data())
                .map_err(io_error)?;
            self.pending = self.pending.saturating_sub(live);
            written += rows.len();
        }
        drop(reader);
        std::fs::remove_file(&path)
            .and_then(|()| sync_dir(&path))
            .map_err(io_error)?;
        self.pending = 0;
        self.reported_to = 0;
        Ok(written)
    }

    /// Replaces the spool by a copy of its lines from `from` on (the first not committed):
    /// written beside it, fsynced, renamed over it, directory fsynced. A crash leaves either
    /// file whole.
    fn compact(&mut self, file: &File, from: u64) -> io::Result<()> {
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut src = file;
        src.seek(SeekFrom::Start(from))?;
        io::copy(&mut src, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)?;
        self.reported_to = self.reported_to.saturating_sub(from);
        Ok(())
    }
}

/// One line as [`read_line`] read it.
struct Line {
    /// Bytes consumed, newline included; 0 at the end of the file.
    len: usize,
    /// It ended with a newline (only the file's last line may not).
    newline: bool,
    /// Longer than [`MAX_LINE`]: consumed, but not kept.
    overlong: bool,
}

/// Reads one line into `buf` (newline included), keeping at most [`MAX_LINE`] bytes of it.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let mut line = Line {
        len: 0,
        newline: false,
        overlong: false,
    };
    while !line.newline {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let take = match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.newline = true;
                i + 1
            }
            None => available.len(),
        };
        if !line.overlong {
            if buf.len() + take > MAX_LINE {
                line.overlong = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..take]);
            }
        }
        reader.consume(take);
        line.len += take;
    }
    Ok(line)
}

/// Overwrites each `(offset, length)` of `file` with spaces.
fn blank(file: &File, lines: &[(u64, usize)]) -> io::Result<()> {
    const SPACES: [u8; 4096] = [b' '; 4096];
    for &(at, len) in lines {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(SPACES.len());
            file.write_all_at(&SPACES[..n], at + done as u64)?;
            done += n;
        }
    }
    Ok(())
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes a file's creation, removal or rename in its directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

/// An [`AuditRow`] as a spool line. Its own type, so that the store's row needs no serde and
/// the file's format changes only on purpose. Times are microseconds since the Unix epoch
/// (what the SQLite store keeps is milliseconds, PostgreSQL keeps microseconds). A field added
/// later must be an `Option` (or have a serde default), so that lines an older ivrd spooled
/// still parse.
#[derive(Debug, Serialize, Deserialize)]
struct SpooledRow {
    call_id: String,
    caller: String,
    dialed: String,
    customer_id: Option<String>,
    outcome: String,
    started_at_us: i64,
    ended_at_us: i64,
    dtmf_methods: String,
    detail: Option<String>,
    transfer: Option<SpooledTransfer>,
    transport: Option<String>,
    srtp: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SpooledTransfer {
    target: String,
    status: Option<u16>,
    ms: u64,
}

impl From<&AuditRow> for SpooledRow {
    fn from(row: &AuditRow) -> Self {
        SpooledRow {
            call_id: row.call_id.clone(),
            caller: row.caller.clone(),
            dialed: row.dialed.clone(),
            customer_id: row.customer_id.clone(),
            outcome: row.outcome.clone(),
            started_at_us: to_us(row.started_at),
            ended_at_us: to_us(row.ended_at),
            dtmf_methods: row.dtmf_methods.clone(),
            detail: row.detail.clone(),
            transfer: row.transfer.as_ref().map(|t| SpooledTransfer {
                target: t.target.clone(),
                status: t.status,
                ms: t.ms,
            }),
            transport: row.transport.clone(),
            srtp: row.srtp.clone(),
        }
    }
}

impl From<SpooledRow> for AuditRow {
    fn from(row: SpooledRow) -> Self {
        AuditRow {
            call_id: row.call_id,
            caller: row.caller,
            dialed: row.dialed,
            customer_id: row.customer_id,
            outcome: row.outcome,
            started_at: from_us(row.started_at_us),
            ended_at: from_us(row.ended_at_us),
            dtmf_methods: row.dtmf_methods,
            detail: row.detail,
            transfer: row.transfer.map(|t| AuditTransfer {
                target: t.target,
                status: t.status,
                ms: t.ms,
            }),
            transport: row.transport,
            srtp: row.srtp,
        }
    }
}

fn to_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

fn from_us(us: i64) -> SystemTime {
    let d = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn row(i: usize) -> AuditRow {
        AuditRow {
            call_id: format!("call-{i}"),
            caller: "+4915550000001".into(),
            dialed: "100".into(),
            customer_id: None,
            outcome: "caller-hangup".into(),
            started_at: SystemTime::now(),
            ended_at: SystemTime::now(),
            dtmf_methods: String::new(),
            detail: None,
            transfer: None,
            transport: None,
            srtp: None,
        }
    }

    #[test]
    fn outcome_names_hold_the_flow_and_call_end_names_once() {
        let names = outcome_names();
        for n in [
            "verified",
            "wrong-pin",
            "locked-out",
            "caller-hangup",
            "rtp-timeout",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        // "completed" and "caller-hangup" are both a flow outcome and a call end.
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(unique, names);
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert!(names.iter().all(|n| !n.is_empty()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_rows_are_all_committed_before_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("ivrd.db")).unwrap());
        let writer = AuditWriter::start(store.clone()).unwrap();
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move { w.write(row(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // Every row is there once write() returned, read back through a separate connection.
        let again = Store::open(dir.path().join("ivrd.db")).unwrap();
        let rows = again.recent_audit(1000).unwrap();
        assert_eq!(rows.len(), 300);
        let mut ids: Vec<String> = rows.into_iter().map(|r| r.call_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 300);
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_to_every_row_of_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("ivrd.db")).unwrap());
        // Break the table under the writer: the insert fails and the error comes back.
        store.execute_batch_for_tests("DROP TABLE audit").unwrap();
        let writer = AuditWriter::start(store).unwrap();
        let err = writer.write(row(1)).await.unwrap_err();
        assert!(err.to_string().contains("audit"), "{err}");
    }

    // The spool. The store is made to fail by renaming its audit table away (the insert finds
    // no table) and mended by renaming it back.

    const AWAY: &str = "ALTER TABLE audit RENAME TO audit_away";
    const BACK: &str = "ALTER TABLE audit_away RENAME TO audit";

    fn open_store(dir: &Path) -> Arc<Store> {
        Arc::new(Store::open(dir.join("ivrd.db")).unwrap())
    }

    fn spool_at(dir: &Path, max_rows: usize) -> Spool {
        Spool {
            path: dir.join("audit-spool.jsonl"),
            max_rows,
        }
    }

    /// Every line of the file, blank ones too; none if there is no file.
    fn file_lines(path: &Path) -> Vec<String> {
        match std::fs::read_to_string(path) {
            Ok(text) => text.split_terminator('\n').map(str::to_string).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    /// The Call-IDs of the spooled rows, in the file's order.
    fn spooled_ids(path: &Path) -> Vec<String> {
        file_lines(path)
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<SpooledRow>(l).unwrap().call_id)
            .collect()
    }

    /// The Call-IDs in the store, in the order written.
    fn stored_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .recent_audit(10_000)
            .unwrap()
            .into_iter()
            .map(|r| r.call_id)
            .collect();
        ids.reverse();
        ids
    }

    fn call_ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("call-{i}")).collect()
    }

    fn spool_line(i: usize) -> String {
        serde_json::to_string(&SpooledRow::from(&row(i))).unwrap()
    }

    /// Polls `done` until it holds; fails after 10 s (the writer retries every 2 s).
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn a_spooled_row_reads_back_as_it_was_written() {
        let at = |us: u64| UNIX_EPOCH + Duration::from_micros(us);
        let full = AuditRow {
            customer_id: Some("123456".into()),
            started_at: at(1_700_000_000_123_456),
            ended_at: at(1_700_000_042_654_321),
            dtmf_methods: "rfc4733,info".into(),
            detail: Some("end=bye \"quoted\"\nline".into()),
            transfer: Some(AuditTransfer {
                target: "sip:queue@pbx".into(),
                status: Some(200),
                ms: 1234,
            }),
            transport: Some("TLS".into()),
            srtp: Some("AES_CM_128_HMAC_SHA1_80".into()),
            ..row(7)
        };
        for original in [full, row(8)] {
            let line = serde_json::to_string(&SpooledRow::from(&original)).unwrap();
            assert!(!line.contains('\n'), "one row, one line: {line}");
            let back = AuditRow::from(serde_json::from_str::<SpooledRow>(&line).unwrap());
            // row() has times with nanoseconds; the spool keeps microseconds.
            let us = |t: SystemTime| from_us(to_us(t));
            assert_eq!(
                back,
                AuditRow {
                    started_at: us(original.started_at),
                    ended_at: us(original.ended_at),
                    ..original
                }
            );
        }
        assert_eq!(to_us(from_us(-1_500_000)), -1_500_000);
    }

    #[tokio::test]
    async fn rows_spooled_while_the_store_is_away_reach_it_in_order_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let spool = spool_at(dir.path(), 100);
        let path = spool.path.clone();
        let writer = AuditWriter::start_with_spool(store.clone(), Some(spool)).unwrap();
        writer.write(row(0)).await.unwrap();
        assert!(!path.exists(), "no spool while the store takes the rows");

        store.execute_batch_for_tests(AWAY).unwrap();
        for i in 1..5 {
            writer.write(row(i)).await.unwrap();
        }
        // Answered Ok because they are on disk, and only there.
        assert_eq!(spooled_ids(&path), call_ids(1..5));
        // Several at once (likely one batch) queue behind them.
        let tasks: Vec<_> = (5..9)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move { w.write(row(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(spooled_ids(&path).len(), 8);

        store.execute_batch_for_tests(BACK).unwrap();
        // A row written now goes behind the spooled ones (or after their flush), never first.
        writer.write(row(9)).await.unwrap();
        // No further call: the writer's own retry brings the rows in.
        eventually("the spool to be flushed", || !path.exists()).await;
        let ids = stored_ids(&store);
        assert_eq!(ids[..5], call_ids(0..5));
        let mut concurrent = ids[5..9].to_vec();
        concurrent.sort();
        assert_eq!(concurrent, call_ids(5..9));
        assert_eq!(ids[9], "call-9");
        assert_eq!(ids.len(), 10, "each row once: {ids:?}");

        // Back to normal: a row goes straight to the store.
        writer.write(row(10)).await.unwrap();
        assert!(!path.exists());
        assert_eq!(stored_ids(&store).len(), 11);
    }

    #[tokio::test]
    async fn rows_beyond_max_rows_get_the_store_error_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let spool = spool_at(dir.path(), 3);
        let path = spool.path.clone();
        let writer = AuditWriter::start_with_spool(store.clone(), Some(spool)).unwrap();
        store.execute_batch_for_tests(AWAY).unwrap();
        for i in 0..3 {
            writer.write(row(i)).await.unwrap();
            assert_eq!(file_lines(&path).len(), i + 1);
        }
        for i in 3..5 {
            let err = writer.write(row(i)).await.unwrap_err();
            assert!(err.to_string().contains("no such table: audit"), "{err}");
            assert_eq!(file_lines(&path).len(), 3);
        }
        // A batch larger than the room left gets errors for all of it, the file stays at 3.
        let tasks: Vec<_> = (5..20)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move { w.write(row(i)).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(spooled_ids(&path), call_ids(0..3));
        assert_eq!(file_lines(&path).len(), 3);

        store.execute_batch_for_tests(BACK).unwrap();
        eventually("the spool to be flushed", || !path.exists()).await;
        assert_eq!(stored_ids(&store), call_ids(0..3));
    }

    #[tokio::test]
    async fn a_spool_left_by_an_earlier_run_is_flushed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let spool = spool_at(dir.path(), 100);
        let path = spool.path.clone();
        // The first two lines were committed and blanked before that run stopped.
        let mut text = format!("{}\n{}\n", " ".repeat(40), " ".repeat(12));
        for i in 0..4 {
            text.push_str(&spool_line(i));
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        let _writer = AuditWriter::start_with_spool(store.clone(), Some(spool)).unwrap();
        // Nothing is written through this writer: the rows come in by themselves.
        eventually("the spool to be flushed", || !path.exists()).await;
        assert_eq!(stored_ids(&store), call_ids(0..4));
    }

    #[tokio::test]
    async fn damaged_lines_are_skipped_and_the_rows_around_them_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let spool = spool_at(dir.path(), 100);
        let path = spool.path.clone();
        let text = [
            spool_line(0),
            "not json at all".into(),
            spool_line(1),
            r#"{"call_id":"call-x"}"#.into(), // JSON, but not a row
            "\0\0\0\0".into(),                // what a crash can leave
            "x".repeat(MAX_LINE + 10),        // read in bounded memory, skipped
            spool_line(2),
        ]
        .join("\n");
        // The last line torn by a crash in mid-append: no newline at the end.
        let text = format!("{text}\n{}", &spool_line(99)[..30]);
        std::fs::write(&path, text).unwrap();
        // The store is away at start: the flush fails, and a new row goes behind the torn line,
        // not glued to it.
        store.execute_batch_for_tests(AWAY).unwrap();
        let writer = AuditWriter::start_with_spool(store.clone(), Some(spool)).unwrap();
        writer.write(row(3)).await.unwrap();
        store.execute_batch_for_tests(BACK).unwrap();
        eventually("the spool to be flushed", || !path.exists()).await;
        assert_eq!(stored_ids(&store), call_ids(0..4));
    }

    #[tokio::test]
    async fn a_flush_that_stops_half_way_keeps_only_the_rows_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let spool = spool_at(dir.path(), 1000);
        let path = spool.path.clone();
        let text: String = (0..600).map(|i| spool_line(i) + "\n").collect();
        std::fs::write(&path, text).unwrap();
        // The store takes the first chunk (MAX_BATCH rows) and fails in the second.
        store
            .execute_batch_for_tests(
                "CREATE TRIGGER poison BEFORE INSERT ON audit WHEN NEW.call_id = 'call-550'
                 BEGIN SELECT RAISE(ABORT, 'store failed'); END",
            )
            .unwrap();
        let _writer = AuditWriter::start_with_spool(store.clone(), Some(spool)).unwrap();
        eventually("the spool to be compacted", || {
            file_lines(&path).len() == 600 - MAX_BATCH
        })
        .await;
        assert_eq!(stored_ids(&store), call_ids(0..MAX_BATCH));
        // The committed rows are gone from the file, not just blanked.
        assert_eq!(spooled_ids(&path), call_ids(MAX_BATCH..600));

        store
            .execute_batch_for_tests("DROP TRIGGER poison")
            .unwrap();
        eventually("the spool to be flushed", || !path.exists()).await;
        assert_eq!(
            stored_ids(&store),
            call_ids(0..600),
            "each row once, in order"
        );
    }

    /// What a crash after a chunk's commit finds: that chunk blanked (and fsynced), the rest
    /// as it was. Seen here with the compaction that would follow made impossible (a directory
    /// where its temporary file goes), on the writer's spool directly.
    #[test]
    fn committed_chunks_are_blanked_and_never_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let spool = spool_at(dir.path(), 1000);
        let path = spool.path.clone();
        let text: String = (0..600).map(|i| spool_line(i) + "\n").collect();
        std::fs::write(&path, &text).unwrap();
        std::fs::create_dir(dir.path().join("audit-spool.jsonl.tmp")).unwrap();
        store
            .execute_batch_for_tests(
                "CREATE TRIGGER poison BEFORE INSERT ON audit WHEN NEW.call_id = 'call-550'
                 BEGIN SELECT RAISE(ABORT, 'store failed'); END",
            )
            .unwrap();
        let mut spool = SpoolFile::open(spool).unwrap();
        assert_eq!(spool.pending, 600);
        let err = spool.flush(&store).unwrap_err();
        assert!(err.contains("store failed"), "{err}");
        assert_eq!(spool.pending, 600 - MAX_BATCH);
        let lines = file_lines(&path);
        let original: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 600, "not compacted");
        for (i, line) in lines.iter().enumerate() {
            if i < MAX_BATCH {
                assert_eq!(line.len(), original[i].len());
                assert!(line.trim().is_empty(), "line {i} not blanked: {line}");
            } else {
                assert_eq!(line, original[i]);
            }
        }
        // Read again (as at the next start, or the next retry): the blank lines are skipped.
        store
            .execute_batch_for_tests("DROP TRIGGER poison")
            .unwrap();
        let mut spool = SpoolFile::open(spool_at(dir.path(), 1000)).unwrap();
        assert_eq!(spool.pending, 600 - MAX_BATCH);
        assert_eq!(spool.flush(&store), Ok(600 - MAX_BATCH));
        assert!(!path.exists());
        assert_eq!(
            stored_ids(&store),
            call_ids(0..600),
            "each row once, in order"
        );
    }

    #[test]
    fn a_spool_in_a_missing_directory_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let spool = spool_at(&dir.path().join("missing"), 10);
        let err = AuditWriter::start_with_spool(store, Some(spool))
            .err()
            .expect("no writer");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}

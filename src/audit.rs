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

use crate::store::{AuditRow, Store, StoreError};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

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

/// Most rows in one transaction: bounds how long one commit holds the store's lock.
const MAX_BATCH: usize = 512;

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

impl AuditWriter {
    pub fn start(store: Arc<Store>) -> std::io::Result<AuditWriter> {
        let (tx, rx) = std_mpsc::channel::<(AuditRow, Reply)>();
        std::thread::Builder::new()
            .name("ivrd-audit".into())
            .spawn(move || writer_loop(&store, &rx))?;
        Ok(AuditWriter { rows: tx })
    }

    /// Queues the row and waits until it is committed.
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

fn writer_loop(store: &Store, rx: &std_mpsc::Receiver<(AuditRow, Reply)>) {
    // Blocks for the first row, sleeps LINGER, then takes what has arrived; rows that come in
    // during the commit form the next batch, so batches also grow with the load by themselves.
    // Sleeping rather than waiting on the channel matters: a waiting receiver is woken by
    // every row (one context switch each, measured at 1,000 a second at 600 calls/s), a
    // sleeping one costs the senders nothing.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        std::thread::sleep(LINGER);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (rows, replies): (Vec<AuditRow>, Vec<Reply>) = batch.into_iter().unzip();
        let result = store
            .write_audit_batch(&rows)
            .map_err(|e: StoreError| e.to_string());
        for reply in replies {
            let _ = reply.send(result.clone());
        }
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
}

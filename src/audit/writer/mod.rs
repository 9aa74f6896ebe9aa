//! The writer: one tokio task owns the current file; handles send it records through a bounded channel.
//!
//! File work (encode, write, fsync, rotate) runs in `spawn_blocking` so a slow disk never stalls the
//! runtime's worker threads; while one batch is being written the next one queues up, so concurrent
//! `step()` calls share an fsync (group commit).

mod append;
mod recovery;
mod rotation;
mod task;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::files::{self, RawLine, Seal};
use super::record::{
    FIRST_SEQ, GENESIS_PREV, encode_data, encode_into, format_time, parse_line, sha256,
};
use super::{AuditError, Kind};
use task::run_writer;

/// Messages in one batch at most, so a flood still reaches the disk in bounded chunks.
const MAX_BATCH: usize = 8192;
/// How many trailing lines a crash may have left unfinished (a torn record, plus a torn recovery record
/// if the crash repeated during recovery). More than that is damage, not a crash.
const MAX_TORN_LINES: usize = 4;

/// How to open the log. Build with [`AuditOptions::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The current file, e.g. `/var/lib/hapull/audit.jsonl`. Rotated files are created beside it.
    pub path: PathBuf,
    /// Written into every record's `instance` field.
    pub instance: String,
    /// Rotate when the current file reaches this size.
    pub max_bytes: Option<u64>,
    /// Rotate when the current file's first record is this old.
    pub max_age: Option<Duration>,
    /// Gzip rotated files (in the background; `close()` waits for it).
    pub compress_rotated: bool,
    /// The longest an `event()` waits before it is written and fsync'd.
    pub batch_delay: Duration,
    /// Records that may wait in the queue; `event()` counts a drop when it is full.
    pub queue_capacity: usize,
    /// Bytes of event data that may wait in the queue; `event()` counts a drop beyond it, so a flood
    /// of large events cannot take the memory a count alone would allow (65,536 x 16 MiB).
    pub queue_bytes: u64,
}

impl AuditOptions {
    /// Defaults: no rotation, no compression, 1 s batch delay, room for 65,536 queued records or 64 MiB
    /// of queued event data, whichever is reached first.
    pub fn new(path: impl Into<PathBuf>, instance: impl Into<String>) -> Self {
        AuditOptions {
            path: path.into(),
            instance: instance.into(),
            max_bytes: None,
            max_age: None,
            compress_rotated: false,
            batch_delay: Duration::from_secs(1),
            queue_capacity: 65_536,
            queue_bytes: 64 * 1024 * 1024,
        }
    }

    fn validate(&self) -> Result<(), AuditError> {
        let bad = |what: String| AuditError::InvalidOptions {
            path: self.path.clone(),
            what,
        };
        if self.path.file_name().and_then(|n| n.to_str()).is_none() {
            return Err(bad(
                "the path must end in a UTF-8 file name, e.g. /var/lib/hapull/audit.jsonl".into(),
            ));
        }
        if self.queue_capacity == 0 {
            return Err(bad(
                "queue capacity is 0; use at least 1 (default 65536)".into()
            ));
        }
        if self.queue_bytes == 0 {
            return Err(bad(
                "queue_bytes is 0; use at least 1 (default 64 MiB)".into()
            ));
        }
        if self.max_bytes == Some(0) {
            return Err(bad(
                "max_bytes is 0; set a size like 64 MiB or leave it out".into(),
            ));
        }
        if self.max_age == Some(Duration::ZERO) {
            return Err(bad(
                "max_age is 0; set an age like \"7d\" or leave it out".into()
            ));
        }
        if self.batch_delay > Duration::from_secs(3600) {
            return Err(bad(format!(
                "batch_delay {} is longer than an hour; events would wait that long to become durable, use e.g. \"1s\"",
                humantime::format_duration(self.batch_delay)
            )));
        }
        Ok(())
    }
}

/// What [`AuditLog::open`] found and did. Every warning here was also logged with `tracing::warn!`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenReport {
    /// The torn tail found at open, if any: it was kept in place and an `audit.recovered` record follows it.
    pub torn: Option<TornTail>,
    /// Human-readable warnings (torn tail, seal disagreements).
    pub warnings: Vec<String>,
    /// The seq the next record gets.
    pub next_seq: u64,
}

/// Bytes at the end of the current file that did not form a complete record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
    pub reason: String,
}

/// Outcome of [`AuditLog::event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// In the queue; it will be written within the batch delay, or at `close()`.
    Queued,
    /// The queue was full; the event was counted and the count will be written as `audit.dropped`.
    Dropped,
    /// The log is closed.
    Closed,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    pub events_queued: u64,
    pub events_durable: u64,
    pub events_dropped: u64,
    /// Events accepted but not written because the writer had failed.
    pub events_lost: u64,
    /// The highest seq known to be fsync'd (0 before the first record).
    pub durable_seq: u64,
}

/// A cheap, cloneable handle to the one writer task of a log file.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    report: OpenReport,
    queued: AtomicU64,
    /// Bytes of event data in the queue right now (bounded by `queue_bytes`).
    queued_bytes: AtomicU64,
    queue_bytes: u64,
    durable_events: AtomicU64,
    dropped_pending: AtomicU64,
    dropped_total: AtomicU64,
    lost: AtomicU64,
    durable: watch::Receiver<u64>,
    task: Mutex<Option<JoinHandle<()>>>,
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;

enum Msg {
    Event {
        time: Timestamp,
        kind: Kind,
        data: Vec<u8>,
    },
    Step {
        time: Timestamp,
        kind: Kind,
        data: Vec<u8>,
        done: Reply,
    },
    Flush {
        done: Reply,
    },
    Close {
        done: Reply,
    },
}

impl Msg {
    fn is_urgent(&self) -> bool {
        !matches!(self, Msg::Event { .. })
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log, recovers a torn tail, and starts the writer task.
    /// Must be called inside a tokio runtime.
    pub async fn open(opts: AuditOptions) -> Result<AuditLog, AuditError> {
        opts.validate()?;
        let open_opts = opts.clone();
        let (core, report) = tokio::task::spawn_blocking(move || Core::open(open_opts))
            .await
            .map_err(|e| AuditError::WriterFailed {
                path: opts.path.clone(),
                reason: format!("opening panicked: {e}"),
            })??;
        let (tx, rx) = mpsc::channel(opts.queue_capacity);
        let (durable_tx, durable_rx) = watch::channel(core.durable_seq);
        let shared = Arc::new(Shared {
            path: opts.path.clone(),
            report,
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            queue_bytes: opts.queue_bytes,
            durable_events: AtomicU64::new(0),
            dropped_pending: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            durable: durable_rx,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(run_writer(
            core,
            rx,
            Arc::clone(&shared),
            durable_tx,
            opts.batch_delay,
        ));
        if let Ok(mut slot) = shared.task.lock() {
            *slot = Some(task);
        }
        Ok(AuditLog { tx, shared })
    }

    /// What open found (torn tail, seal warnings).
    pub fn open_report(&self) -> &OpenReport {
        &self.shared.report
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Appends a record and returns its seq once it is written and fsync'd.
    pub async fn step(&self, kind: Kind, data: Value) -> Result<u64, AuditError> {
        let (done, rx) = oneshot::channel();
        let msg = Msg::Step {
            time: Timestamp::now(),
            kind,
            data: encode_data(&data),
            done,
        };
        self.tx.send(msg).await.map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Queues a record without waiting. It becomes durable within the batch delay (or at `close()`).
    /// Never blocks: when the queue is full (by count or by bytes) the event is counted and an
    /// `audit.dropped` record says how many.
    /// `data` is serialized here, on the caller's side, so the queue holds compact bytes, not JSON trees.
    /// If the writer has failed (disk full, fsync error), queued events are counted in
    /// [`AuditStats::events_lost`] and the next `step()` returns the error.
    pub fn event(&self, kind: Kind, data: Value) -> EventStatus {
        let data = encode_data(&data);
        let size = data.len() as u64;
        let budget = &self.shared.queued_bytes;
        let admitted = budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q.saturating_add(size) <= self.shared.queue_bytes).then_some(q + size)
            })
            .is_ok();
        let drop_it = || {
            self.shared.dropped_pending.fetch_add(1, Ordering::Relaxed);
            self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            EventStatus::Dropped
        };
        if !admitted {
            return drop_it();
        }
        let msg = Msg::Event {
            time: Timestamp::now(),
            kind,
            data,
        };
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
                EventStatus::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                budget.fetch_sub(size, Ordering::AcqRel);
                drop_it()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                budget.fetch_sub(size, Ordering::AcqRel);
                EventStatus::Closed
            }
        }
    }

    /// Writes and fsyncs everything queued so far; returns the highest durable seq.
    pub async fn flush(&self) -> Result<u64, AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush { done })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Writes everything queued (including events queued by other handles before this call), waits for
    /// background compression, and stops the writer. Further records fail with `Closed`. Idempotent.
    pub async fn close(&self) -> Result<u64, AuditError> {
        let (done, rx) = oneshot::channel();
        let result = match self.tx.send(Msg::Close { done }).await {
            Ok(()) => rx.await.unwrap_or_else(|_| Ok(self.durable_seq())),
            Err(_) => Ok(self.durable_seq()),
        };
        let task = self.shared.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }

    /// The highest seq known to be fsync'd.
    pub fn durable_seq(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Waits until the record `seq` is durable (returns the durable seq), or until the writer stops.
    pub async fn wait_durable(&self, seq: u64) -> u64 {
        let mut rx = self.shared.durable.clone();
        let reached = rx.wait_for(|&d| d >= seq).await.map(|d| *d);
        match reached {
            Ok(d) => d,
            Err(_) => *rx.borrow(),
        }
    }

    pub fn stats(&self) -> AuditStats {
        AuditStats {
            events_queued: self.shared.queued.load(Ordering::Relaxed),
            events_durable: self.shared.durable_events.load(Ordering::Relaxed),
            events_dropped: self.shared.dropped_total.load(Ordering::Relaxed),
            events_lost: self.shared.lost.load(Ordering::Relaxed),
            durable_seq: self.durable_seq(),
        }
    }

    fn closed(&self) -> AuditError {
        AuditError::Closed {
            path: self.shared.path.clone(),
        }
    }
}

struct CommitOutcome {
    replies: Vec<(Reply, Result<u64, AuditError>)>,
    events_written: u64,
    events_lost: u64,
}

/// The synchronous part of the writer: encoding, the chain state, the file, rotation.
struct Core {
    path: PathBuf,
    seal_path: PathBuf,
    instance: String,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
    compress: bool,
    file: File,
    /// Bytes already written to the current file.
    size: u64,
    /// Time of the current file's first record (for age rotation and the rotated name).
    started: Option<Timestamp>,
    /// Seq of the current file's first record (for the rotated name).
    first_seq: u64,
    next_seq: u64,
    prev: String,
    pending: Vec<u8>,
    durable_seq: u64,
    sealed_seq: u64,
    compressors: Vec<ThreadHandle<()>>,
    failed: Option<String>,
}

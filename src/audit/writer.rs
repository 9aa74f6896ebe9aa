//! The writer: one tokio task owns the current file; handles send it records through a bounded channel.
//!
//! File work (encode, write, fsync, rotate) runs in `spawn_blocking` so a slow disk never stalls the
//! runtime's worker threads; while one batch is being written the next one queues up, so concurrent
//! `step()` calls share an fsync (group commit).

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

async fn run_writer(
    mut core: Core,
    mut rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    durable_tx: watch::Sender<u64>,
    batch_delay: Duration,
) {
    let mut running = true;
    while running {
        let mut batch = Vec::with_capacity(256);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break; // every handle is gone and the queue is empty
        }
        let mut urgent = batch.iter().any(Msg::is_urgent);
        if !urgent {
            let sleep = tokio::time::sleep_until(Instant::now() + batch_delay);
            tokio::pin!(sleep);
            while !urgent && batch.len() < MAX_BATCH {
                let before = batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, MAX_BATCH - before) => {
                        if n == 0 { running = false; break; }
                        urgent = batch[before..].iter().any(Msg::is_urgent);
                    }
                    _ = &mut sleep => break,
                }
            }
        }
        // Take whatever else is already queued into the same fsync.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if batch.iter().any(|m| matches!(m, Msg::Close { .. })) {
            running = false;
            // Nothing new may enter, but everything already queued is written in this last batch.
            rx.close();
            while let Ok(m) = rx.try_recv() {
                batch.push(m);
            }
        }
        // The batch has left the queue: its events no longer count against the byte budget.
        let taken: u64 = batch
            .iter()
            .map(|m| match m {
                Msg::Event { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        shared.queued_bytes.fetch_sub(taken, Ordering::AcqRel);
        let dropped = shared.dropped_pending.swap(0, Ordering::Relaxed);
        let finish = !running;
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = core.commit(batch, dropped);
            if finish {
                core.finish();
            }
            (core, outcome)
        })
        .await;
        let Ok((c, outcome)) = joined else {
            tracing::error!(path = %shared.path.display(), "audit writer panicked; no further records are written");
            return;
        };
        core = c;
        shared
            .durable_events
            .fetch_add(outcome.events_written, Ordering::Relaxed);
        shared
            .lost
            .fetch_add(outcome.events_lost, Ordering::Relaxed);
        durable_tx.send_replace(core.durable_seq);
        for (done, result) in outcome.replies {
            let _ = done.send(result);
        }
    }
    if running {
        // All handles dropped without close(): everything queued was committed above.
        let _ = tokio::task::spawn_blocking(move || core.finish()).await;
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

impl Core {
    fn open(opts: AuditOptions) -> Result<(Core, OpenReport), AuditError> {
        let path = opts.path.clone();
        let dir = files::parent_dir(&path);
        crate::private_fs::create_dir_all(&dir)
            .map_err(|e| AuditError::io(&dir, "creating the directory", e))?;
        if opts.compress_rotated {
            files::finish_compressions(&path)?;
        }
        let mut file = crate::private_fs::open_append(&path)
            .map_err(|e| AuditError::io(&path, "opening for append", e))?;
        files::sync_dir(&dir)?;
        let len = file
            .metadata()
            .map_err(|e| AuditError::io(&path, "reading metadata", e))?
            .len();

        let mut report = OpenReport::default();
        let mut torn: Option<(u64, Vec<u8>, bool, String)> = None; // offset, bytes, ended in newline, reason
        let mut last_good: Option<(u64, String)> = None; // seq, line hash
        let mut last_good_offset: Option<u64> = None; // where that line starts, in the current file
        if len > 0 {
            let lines = files::last_lines(&mut file, &path, len, MAX_TORN_LINES + 1)?;
            let good_idx = lines
                .iter()
                .rposition(|l| l.newline && parse_line(&l.bytes).is_ok());
            let torn_from = good_idx.map_or(0, |i| i + 1);
            if torn_from < lines.len() {
                let reaches_start = lines.first().is_some_and(|l| l.offset == 0);
                if good_idx.is_none() && !reaches_start {
                    let bad = &lines[0];
                    return Err(AuditError::CorruptTail {
                        path,
                        offset: bad.offset,
                        why: describe_bad_line(bad),
                    });
                }
                let region = &lines[torn_from..];
                let offset = region[0].offset;
                let end_newline = region.last().is_some_and(|l| l.newline);
                let mut bytes = Vec::new();
                for (i, l) in region.iter().enumerate() {
                    if i > 0 {
                        bytes.push(b'\n');
                    }
                    bytes.extend_from_slice(&l.bytes);
                }
                let reason = region
                    .iter()
                    .map(describe_bad_line)
                    .collect::<Vec<_>>()
                    .join("; ");
                torn = Some((offset, bytes, end_newline, reason));
            }
            if let Some(i) = good_idx {
                let line = &lines[i];
                if let Ok(rec) = parse_line(&line.bytes) {
                    last_good = Some((rec.seq, hex::encode(sha256(&line.bytes))));
                    last_good_offset = Some(line.offset);
                }
            }
        }
        // Nothing usable in the current file: the chain continues from the newest rotated file.
        if last_good.is_none()
            && let Some(newest) = files::rotated_siblings(&path)?.pop()
        {
            let name = newest.path.display().to_string();
            let bad = |why: String| AuditError::BadRotatedFile {
                path: path.clone(),
                name: name.clone(),
                why,
            };
            let line =
                files::last_line_of(&newest.path)?.ok_or_else(|| bad("it is empty".into()))?;
            let rec = parse_line(&line.bytes)
                .map_err(|e| bad(format!("its last line is not a record: {e}")))?;
            last_good = Some((rec.seq, hex::encode(sha256(&line.bytes))));
        }
        let (last_seq, prev) = match &last_good {
            Some((seq, hash)) => (*seq, hash.clone()),
            None => (FIRST_SEQ - 1, GENESIS_PREV.to_owned()),
        };

        // The current file's first record gives its age and the name it will be rotated to.
        let (mut started, mut first_seq) = (None, last_seq + 1);
        if len > 0
            && let Some(first) = files::first_line(&path)?
            && let Ok(rec) = parse_line(&first.bytes)
        {
            started = Some(rec.time);
            first_seq = rec.seq;
        }

        let seal_path = files::seal_path(&path);
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Where records lost from the end would have started: before any torn bytes.
        let good_end = torn.as_ref().map_or(len, |(offset, ..)| *offset);
        let mut lost: Option<(u64, u64, String)> = None; // first, last lost seq; the seal's hash
        let mut seal_notes: Vec<(String, Value)> = Vec::new();
        match files::read_seal(&seal_path) {
            Ok(Some(seal)) => {
                if seal.seq > last_seq {
                    lost = Some((last_seq + 1, seal.seq, seal.sha256.clone()));
                } else if seal.seq == last_seq && seal.sha256 != prev {
                    seal_notes.push((
                        format!("the last record (seq {last_seq}) does not match its seal: it was changed after it was written"),
                        json!({"reason": "last record does not match its seal", "file": file_name,
                               "changed_seq": last_seq, "changed_offset": last_good_offset,
                               "sealed_seq": seal.seq, "sealed_sha256": seal.sha256, "found_sha256": prev}),
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => seal_notes.push((
                format!("{e}"),
                json!({"reason": "seal unreadable", "file": file_name, "error": e.to_string()}),
            )),
        }

        // Records lost from the end keep their seqs: the next record continues after them, so a seq
        // quoted elsewhere never names two different records.
        let next_seq = lost.as_ref().map_or(last_seq + 1, |(_, last, _)| last + 1);
        if started.is_none() {
            first_seq = next_seq;
        }
        let mut core = Core {
            seal_path,
            instance: opts.instance,
            max_bytes: opts.max_bytes,
            max_age: opts.max_age,
            compress: opts.compress_rotated,
            file,
            size: len,
            started,
            first_seq,
            next_seq,
            prev,
            pending: Vec::new(),
            durable_seq: last_seq,
            sealed_seq: 0,
            compressors: Vec::new(),
            failed: None,
            path,
        };

        let now = Timestamp::now();
        let lost_note = lost.as_ref().map(|(first, last, sealed_sha)| {
            let msg = format!(
                "the log ends at seq {last_seq} (byte {good_end}) but its seal names seq {last}: records {first}..={last} were lost or removed from the end"
            );
            let data = json!({"lost_first_seq": first, "lost_last_seq": last, "lost_at_offset": good_end,
                              "last_seq": last_seq, "sealed_seq": last, "sealed_sha256": sealed_sha});
            (msg, data)
        });
        let mut lost_pending = lost_note;
        if let Some((offset, bytes, end_newline, reason)) = torn {
            let sha = hex::encode(sha256(&bytes));
            let msg = format!(
                "torn tail at offset {offset} ({} bytes, sha256 {sha}): {reason}; kept in place and followed by an audit.recovered record",
                bytes.len()
            );
            tracing::warn!(path = %core.path.display(), offset, length = bytes.len(), "audit log: {msg}");
            report.warnings.push(msg);
            report.torn = Some(TornTail {
                offset,
                length: bytes.len() as u64,
                sha256: sha.clone(),
                reason: reason.clone(),
            });
            if !end_newline {
                core.pending.push(b'\n');
            }
            let mut data = json!({"reason": "torn tail", "detail": reason, "file": file_name,
                "torn_offset": offset, "torn_length": bytes.len(), "torn_sha256": sha});
            // The first recovered record is the one that skips the lost seqs, so it says so.
            if let Some((msg, lost_data)) = lost_pending.take() {
                tracing::warn!(path = %core.path.display(), "audit log: {msg}");
                report.warnings.push(msg);
                if let (Some(obj), Value::Object(extra)) = (data.as_object_mut(), lost_data) {
                    obj.extend(extra);
                }
            }
            core.append(now, Kind::Recovered, &encode_data(&data))?;
        }
        if let Some((msg, mut data)) = lost_pending {
            if let Some(obj) = data.as_object_mut() {
                obj.insert("reason".into(), json!("records missing from the end"));
                obj.insert("file".into(), json!(file_name));
            }
            seal_notes.insert(0, (msg, data));
        }
        for (msg, data) in seal_notes {
            tracing::warn!(path = %core.path.display(), "audit log: {msg}");
            report.warnings.push(msg);
            core.append(now, Kind::Recovered, &encode_data(&data))?;
        }
        if !core.pending.is_empty() {
            core.sync()?;
        }
        report.next_seq = core.next_seq;
        Ok((core, report))
    }

    fn fail(&mut self, e: &AuditError) -> AuditError {
        let reason = e.to_string();
        tracing::error!(path = %self.path.display(), "audit log write failed: {reason}");
        self.failed = Some(reason.clone());
        AuditError::WriterFailed {
            path: self.path.clone(),
            reason,
        }
    }

    fn check_failed(&self) -> Result<(), AuditError> {
        match &self.failed {
            Some(reason) => Err(AuditError::WriterFailed {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn append(&mut self, time: Timestamp, kind: Kind, data: &[u8]) -> Result<u64, AuditError> {
        self.check_failed()?;
        if self.rotation_due(time) {
            self.sync()?;
            if let Err(e) = self.rotate(time) {
                return Err(self.fail(&e));
            }
        }
        let seq = self.next_seq;
        let hash = encode_into(
            &mut self.pending,
            seq,
            &format_time(time),
            kind.as_str(),
            &self.instance,
            data,
            &self.prev,
        );
        self.prev = hex::encode(hash);
        self.next_seq += 1;
        if self.started.is_none() {
            self.started = Some(time);
        }
        Ok(seq)
    }

    fn rotation_due(&self, now: Timestamp) -> bool {
        let total = self.size + self.pending.len() as u64;
        if total == 0 {
            return false;
        }
        if self.max_bytes.is_some_and(|max| total >= max) {
            return true;
        }
        match (self.max_age, self.started) {
            (Some(age), Some(started)) => now.duration_since(started).unsigned_abs() >= age,
            _ => false,
        }
    }

    /// Writes pending bytes, fsyncs, and moves the seal forward.
    fn sync(&mut self) -> Result<(), AuditError> {
        self.check_failed()?;
        if !self.pending.is_empty() {
            if let Err(e) = self.file.write_all(&self.pending) {
                return Err(self.fail(&AuditError::io(&self.path, "writing", e)));
            }
            self.size += self.pending.len() as u64;
            self.pending.clear();
            // After a failed fsync the page cache may already have dropped the dirty pages, so a retry
            // could report success for data that never reached the disk; the writer stops instead.
            if let Err(e) = self.file.sync_data() {
                return Err(self.fail(&AuditError::io(&self.path, "fsync", e)));
            }
            self.durable_seq = self.next_seq - 1;
        }
        if self.durable_seq > self.sealed_seq {
            let seal = Seal {
                seq: self.durable_seq,
                sha256: self.prev.clone(),
            };
            if let Err(e) = files::write_seal(&self.seal_path, &seal) {
                return Err(self.fail(&e));
            }
            self.sealed_seq = self.durable_seq;
        }
        Ok(())
    }

    fn rotate(&mut self, now: Timestamp) -> Result<(), AuditError> {
        let started = self.started.unwrap_or(now);
        let rotated = files::rotated_name(&self.path, started, self.first_seq);
        let mut gz_name = rotated.file_name().unwrap_or_default().to_os_string();
        gz_name.push(".gz");
        if rotated.exists() || rotated.with_file_name(gz_name).exists() {
            return Err(AuditError::BadRotatedFile {
                path: self.path.clone(),
                name: rotated.display().to_string(),
                why: "a rotated file with this name already exists, so rotating would overwrite it"
                    .into(),
            });
        }
        fs::rename(&self.path, &rotated)
            .map_err(|e| AuditError::io(&self.path, "renaming for rotation", e))?;
        let dir = files::parent_dir(&self.path);
        self.file = crate::private_fs::options()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&self.path)
            .and_then(|f| crate::private_fs::make_private(&f).map(|()| f))
            .map_err(|e| AuditError::io(&self.path, "creating after rotation", e))?;
        files::sync_dir(&dir)?;
        let previous_first = self.first_seq;
        let previous_last = self.next_seq - 1;
        self.size = 0;
        self.started = None;
        self.first_seq = self.next_seq;
        let rotated_file = rotated
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::info!(path = %self.path.display(), rotated = %rotated_file, "audit log rotated");
        self.append(
            now,
            Kind::Rotated,
            &encode_data(
                &json!({"previous_file": rotated_file, "previous_first_seq": previous_first,
                    "previous_last_seq": previous_last, "compressed": self.compress}),
            ),
        )?;
        if self.compress {
            self.compressors.retain(|h| !h.is_finished());
            let spawned = std::thread::Builder::new()
                .name("audit-gzip".into())
                .spawn(move || {
                    if let Err(e) = files::compress_rotated(&rotated) {
                        tracing::warn!(
                            "audit log: {e}; it stays uncompressed and is retried at the next open"
                        );
                    }
                });
            match spawned {
                Ok(h) => self.compressors.push(h),
                Err(e) => tracing::warn!(
                    "audit log: could not start compressing a rotated file ({e}); retried at the next open"
                ),
            }
        }
        Ok(())
    }

    fn commit(&mut self, batch: Vec<Msg>, dropped: u64) -> CommitOutcome {
        let mut replies = Vec::new();
        let mut steps = Vec::new();
        let mut events = 0u64;
        let mut lost = 0u64;
        for msg in batch {
            match msg {
                Msg::Event { time, kind, data } => match self.append(time, kind, &data) {
                    Ok(_) => events += 1,
                    Err(_) => lost += 1,
                },
                Msg::Step {
                    time,
                    kind,
                    data,
                    done,
                } => {
                    let r = self.append(time, kind, &data);
                    steps.push((done, r));
                }
                Msg::Flush { done } | Msg::Close { done } => replies.push(done),
            }
        }
        if dropped > 0 {
            let data = json!({"count": dropped, "reason": "queue full"});
            if let Err(e) = self.append(Timestamp::now(), Kind::Dropped, &encode_data(&data)) {
                tracing::error!(path = %self.path.display(), dropped, "audit log: could not record dropped events: {e}");
            }
        }
        let synced = self.sync();
        let failed_reason = synced.as_ref().err().map(|e| e.to_string());
        let fail = |path: &Path| AuditError::WriterFailed {
            path: path.to_path_buf(),
            reason: failed_reason.clone().unwrap_or_default(),
        };
        let mut out = Vec::with_capacity(steps.len() + replies.len());
        for (done, r) in steps {
            let r = match r {
                Ok(seq) if failed_reason.is_none() => Ok(seq),
                Ok(_) => Err(fail(&self.path)),
                Err(e) => Err(e),
            };
            out.push((done, r));
        }
        for done in replies {
            let r = match &failed_reason {
                None => Ok(self.durable_seq),
                Some(_) => Err(fail(&self.path)),
            };
            out.push((done, r));
        }
        if failed_reason.is_some() {
            lost += events;
            events = 0;
        }
        CommitOutcome {
            replies: out,
            events_written: events,
            events_lost: lost,
        }
    }

    /// Waits for background compression of rotated files.
    fn finish(&mut self) {
        for h in self.compressors.drain(..) {
            let _ = h.join();
        }
    }
}

fn describe_bad_line(line: &RawLine) -> String {
    match parse_line(&line.bytes) {
        _ if !line.newline => "no trailing newline (write cut short)".to_owned(),
        Ok(_) => "a complete record".to_owned(),
        Err(e) => e.to_string(),
    }
}

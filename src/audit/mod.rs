//! The tamper-evident audit log: an append-only, hash-chained JSON Lines file.
//!
//! Every step of a backup cycle (and, if configured, selected Home Assistant events) becomes one line:
//!
//! ```text
//! {"seq":7,"time":"2026-11-26T09:35:00.123456Z","kind":"backup.created","instance":"home","data":{...},"prev":"<hex sha256>"}
//! ```
//!
//! `prev` is the SHA-256 of the previous record's full line bytes (without the newline); the first record
//! of the first file has `seq` 1 and `prev` = 64 zeros ([`GENESIS_PREV`]). Editing, deleting, inserting or
//! reordering any line therefore breaks the chain at that line or the one after it. The newest record has
//! no successor to protect it, so after every durable write the writer also updates a small *seal* file
//! beside the log (`<path>.seal`: the last durable `seq` and its line hash); [`verify_path`] checks it and
//! so also notices records cut off the end of the log.
//!
//! What the chain does not do: it is not signed. Someone who can write the files can rewrite the whole chain
//! from the edit onwards (and the seal); the chain makes edits *evident*, it does not make them impossible.
//! Compare the `last_sha256` that `verify` prints with a copy kept elsewhere to anchor it.
//!
//! Pieces:
//! - [`AuditLog`]: the writer. One tokio task owns the file; cheap cloned handles feed it through a bounded
//!   channel. [`AuditLog::step`] returns once its record is fsync'd; [`AuditLog::event`] never blocks and is
//!   made durable within [`AuditOptions::batch_delay`]. When the queue is full, events are counted, not
//!   waited for, and the count is written as an [`kind::DROPPED`] record (the producer is usually the Home
//!   Assistant WebSocket reader, which must never stall behind the disk).
//! - Rotation by size or age keeps the chain across files; rotated files are named
//!   `audit.jsonl.<first record time>-<first seq>` (optionally `.gz`) and sort by that seq.
//! - Crash recovery: a torn last line found at open is kept in place, reported, and followed by an
//!   [`kind::RECOVERED`] record naming its offset, length and SHA-256; [`verify`] accepts such a fragment
//!   only when that record follows it and reports it as a warning.
//! - [`verify`] / [`verify_path`]: check the chain across rotated files and name the first bad record.
//! - [`tail`]: read and follow records, filtered by kind and time.
//!
//! This module knows nothing about Home Assistant, SSH or the backup cycle: callers hand it a kind and a
//! JSON object. It must never rewrite, reorder or drop a written line, and never log record contents.

mod files;
mod record;
pub mod tail;
mod verify;
mod writer;

use std::path::PathBuf;

pub use files::discover;
pub use record::{GENESIS_PREV, Record};
pub use verify::{Finding, Issue, VerifyOptions, VerifyReport, verify, verify_path};
pub use writer::{AuditLog, AuditOptions, AuditStats, EventStatus, OpenReport, TornTail};

/// Record kinds written by hapull. Callers may use others; these are the ones the program itself uses.
pub mod kind {
    pub const CYCLE_STARTED: &str = "cycle.started";
    pub const BACKUP_CREATED: &str = "backup.created";
    pub const BACKUP_COMPLETED: &str = "backup.completed";
    pub const PULL_FINISHED: &str = "pull.finished";
    pub const VERIFY_FAILED: &str = "verify.failed";
    pub const HA_DELETED: &str = "ha.deleted";
    pub const STORE_PRUNED: &str = "store.pruned";
    pub const HA_EVENT: &str = "ha.event";
    /// Written by the log itself after a torn last line or a seal that does not match the file.
    pub const RECOVERED: &str = "audit.recovered";
    /// First record of every file after a rotation.
    pub const ROTATED: &str = "audit.rotated";
    /// How many events were not queued because the queue was full.
    pub const DROPPED: &str = "audit.dropped";
}

/// Errors at the audit module's boundary.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "audit log {path}: {action} failed: {source}; check that the directory exists, is writable and has space"
    )]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "audit log {path}: the last complete line (offset {offset}) is not a valid record ({why}); \
         the file is damaged before its tail, so hapull will not append to it. \
         Run `hapull audit verify --path {path}` and move the file aside to start a new chain"
    )]
    CorruptTail {
        path: PathBuf,
        offset: u64,
        why: String,
    },
    #[error(
        "audit log {path}: a rotated file is named like {name} but cannot be read as a chain ({why}); \
         move it aside or restore it"
    )]
    BadRotatedFile {
        path: PathBuf,
        name: String,
        why: String,
    },
    #[error(
        "audit seal {path} is not valid ({why}); it should hold {{\"seq\":N,\"sha256\":\"...\"}}. \
         If it was damaged, compare the log with a copy; hapull rewrites it after the next record"
    )]
    BadSeal { path: PathBuf, why: String },
    #[error("audit log {path}: {what}")]
    InvalidOptions { path: PathBuf, what: String },
    #[error(
        "audit log {path}: an earlier write or fsync failed ({reason}); no further records are accepted \
         because the file state is unknown. Restart hapull: reopening the log records the recovery"
    )]
    WriterFailed { path: PathBuf, reason: String },
    #[error("audit log {path} is closed; records can no longer be written")]
    Closed { path: PathBuf },
    #[error("audit log: no files to read; pass files or --path (the configured [audit] path)")]
    NoFiles,
    #[error(
        "audit log {path} does not exist and has no rotated files beside it; check [audit] path or --path"
    )]
    NotFound { path: PathBuf },
}

impl AuditError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        AuditError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

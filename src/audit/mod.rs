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
//!   made durable within [`AuditOptions::batch_delay`]. When the queue is full (by count or by bytes),
//!   events are counted, not waited for, and the count is written as a [`Kind::Dropped`] record (the producer is usually the Home
//!   Assistant WebSocket reader, which must never stall behind the disk).
//! - Rotation by size or age keeps the chain across files; rotated files are named
//!   `audit.jsonl.<first record time>-<first seq>` (optionally `.gz`) and sort by that seq.
//! - Recovery: a torn last line found at open is kept in place, reported, and followed by a
//!   [`Kind::Recovered`] record naming its offset, length and SHA-256; records missing from the end (the
//!   seal names a later one) or a last record that no longer matches the seal are recorded the same way,
//!   and sequence numbers continue after the lost ones, never reusing them. A recovery is evidence:
//!   [`verify`] reports each one (what, where, when found) in [`VerifyReport::recoveries`], and the log
//!   counts as needing attention until a later [`Kind::Acknowledged`] record covers it.
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
pub use verify::{
    Finding, Issue, Recovery, RecoveryWhat, VerifyOptions, VerifyReport, verify, verify_path,
};
pub use writer::{AuditLog, AuditOptions, AuditStats, EventStatus, OpenReport, TornTail};

/// Every kind of record hapull writes: one list, so a kind cannot be misspelt at one call site or go
/// undocumented. Readers (`verify`, `tail`) still accept any kind string: logs outlive versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A cycle began (`data.mode`: `api` or `service`).
    CycleStarted,
    /// Connected to Home Assistant for a cycle (version, backup API).
    CycleConnected,
    /// A cycle committed its archive.
    CycleFinished,
    /// A cycle failed (`data.step`, `data.error`).
    CycleFailed,
    /// A scheduled run came due while the previous cycle was still running.
    CycleSkipped,
    /// A cycle that failed for a transient reason will be tried again (`data.attempt`, `data.at`).
    CycleRetry,
    /// Home Assistant accepted the request for a backup.
    BackupCreated,
    /// A backup's id became known: a Supervisor job turned into the backup id it made, or a request of
    /// an interrupted earlier cycle (`data.interrupted`) identified (`data.job_id`, `data.backup_id`,
    /// `data.how`).
    BackupIdentified,
    /// Home Assistant said the backup is finished.
    BackupCompleted,
    /// Home Assistant said the backup failed.
    BackupFailed,
    /// The service recipe's shell command ran (and what it answered).
    HaShellCommand,
    /// The archive file of the backup was found on the HA host.
    ArchiveLocated,
    /// The archive was pulled (size, SHA-256).
    PullFinished,
    /// The archive was verified and committed to the store.
    ArchiveCommitted,
    /// A pulled archive failed verification and was not committed.
    VerifyFailed,
    /// A backup was deleted in Home Assistant (only ever after a verified copy exists).
    HaDeleted,
    /// The daemon deep-verified a committed archive and every check passed (`data.checks`: one
    /// entry per check with its result and what it proved).
    DeepVerified,
    /// A deep verification found a problem (`data.checks` names the failed check). Nothing is
    /// deleted because of it.
    DeepVerifyFailed,
    /// A due deep verification could not run (`data.reason`: no password for a protected backup,
    /// not enough free space, interrupted).
    DeepVerifySkipped,
    /// An archive was removed from the store by retention.
    StorePruned,
    /// An archive and its manifest were copied to an offsite target and proven there (`data.proof`).
    OffsiteProven,
    /// An offsite copy failed or did not match; it is not counted.
    OffsiteFailed,
    /// Offsite retention deleted a copy hapull had uploaded.
    OffsiteDeleted,
    /// The offsite storage refused a deletion (a write-only target); recorded once per copy.
    OffsiteDeleteRefused,
    /// A Home Assistant bus event chosen in `[audit] record_events`.
    HaEvent,
    /// Events of a recorded type may have been missed (reconnect, lag).
    HaEventsGap,
    /// The connection to Home Assistant changed state.
    HaConnection,
    /// The daemon started (`data`: version, config file, schedule).
    ServiceStarted,
    /// The daemon stopped.
    ServiceStopped,
    /// Written by the log itself after a torn last line, records missing from the end, or a last record
    /// that does not match the seal. Stays a finding of `audit verify` until acknowledged.
    Recovered,
    /// A person looked at the recoveries up to `data.through_seq` (`hapull audit ack`).
    Acknowledged,
    /// First record of every file after a rotation.
    Rotated,
    /// How many events were not queued because the queue was full.
    Dropped,
}

impl Kind {
    /// Every kind, in the order of the list above.
    pub const ALL: &[Kind] = &[
        Kind::CycleStarted,
        Kind::CycleConnected,
        Kind::CycleFinished,
        Kind::CycleFailed,
        Kind::CycleSkipped,
        Kind::CycleRetry,
        Kind::BackupCreated,
        Kind::BackupIdentified,
        Kind::BackupCompleted,
        Kind::BackupFailed,
        Kind::HaShellCommand,
        Kind::ArchiveLocated,
        Kind::PullFinished,
        Kind::ArchiveCommitted,
        Kind::VerifyFailed,
        Kind::HaDeleted,
        Kind::DeepVerified,
        Kind::DeepVerifyFailed,
        Kind::DeepVerifySkipped,
        Kind::StorePruned,
        Kind::OffsiteProven,
        Kind::OffsiteFailed,
        Kind::OffsiteDeleted,
        Kind::OffsiteDeleteRefused,
        Kind::HaEvent,
        Kind::HaEventsGap,
        Kind::HaConnection,
        Kind::ServiceStarted,
        Kind::ServiceStopped,
        Kind::Recovered,
        Kind::Acknowledged,
        Kind::Rotated,
        Kind::Dropped,
    ];

    /// The name written in the record's `kind` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::CycleStarted => "cycle.started",
            Kind::CycleConnected => "cycle.connected",
            Kind::CycleFinished => "cycle.finished",
            Kind::CycleFailed => "cycle.failed",
            Kind::CycleSkipped => "cycle.skipped",
            Kind::CycleRetry => "cycle.retry",
            Kind::BackupCreated => "backup.created",
            Kind::BackupIdentified => "backup.identified",
            Kind::BackupCompleted => "backup.completed",
            Kind::BackupFailed => "backup.failed",
            Kind::HaShellCommand => "ha.shell_command",
            Kind::ArchiveLocated => "archive.located",
            Kind::PullFinished => "pull.finished",
            Kind::ArchiveCommitted => "archive.committed",
            Kind::VerifyFailed => "verify.failed",
            Kind::HaDeleted => "ha.deleted",
            Kind::DeepVerified => "archive.deep_verified",
            Kind::DeepVerifyFailed => "archive.deep_verify_failed",
            Kind::DeepVerifySkipped => "archive.deep_verify_skipped",
            Kind::StorePruned => "store.pruned",
            Kind::OffsiteProven => "offsite.proven",
            Kind::OffsiteFailed => "offsite.failed",
            Kind::OffsiteDeleted => "offsite.deleted",
            Kind::OffsiteDeleteRefused => "offsite.delete_refused",
            Kind::HaEvent => "ha.event",
            Kind::HaEventsGap => "ha.events_gap",
            Kind::HaConnection => "ha.connection",
            Kind::ServiceStarted => "service.started",
            Kind::ServiceStopped => "service.stopped",
            Kind::Recovered => "audit.recovered",
            Kind::Acknowledged => "audit.acknowledged",
            Kind::Rotated => "audit.rotated",
            Kind::Dropped => "audit.dropped",
        }
    }

    /// The kind with this name, if hapull writes it.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

//! Offsite copies: each committed archive (and its manifest) copied by rclone to storage elsewhere —
//! S3, B2, Google Drive, another SFTP host, any remote rclone reaches — and **proven** there, with a
//! retention of its own.
//!
//! The proof is the remote's own hash of the uploaded file — SHA-256 where the backend has it, else
//! its strongest (SHA-1, MD5, QuickXor, ...) — compared with the same hash of the committed local
//! file; a backend with no hash is checked by size, and, with `download_back`, by reading the file
//! back in full. What was proven, and how, is kept in a ledger in the store ([`ledger`]).
//!
//! This module must NOT:
//! - talk to storage itself: rclone does, as a child process ([`rclone`]);
//! - delete a remote file it did not upload and prove (only ledger entries are ever deleted), the
//!   newest proven remote copy, or anything at all while the local store does not hold that newest
//!   copy verified (then the remote may be the last copy, and it keeps everything);
//! - fail because storage refuses deletions: a write-only target (a B2 key without delete rights, an
//!   S3 bucket with object lock) is how offsite copies are made ransomware-proof; a refusal is
//!   recorded once and not retried;
//! - know about Home Assistant or SSH: it starts from archives already committed to the store.

mod check;
mod ledger;
mod plan;
mod proof;
pub mod rclone;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use tracing::{info, warn};

use crate::audit::{AuditLog, Kind};
use crate::store::{self, RetentionPolicy, Store, StoredArchive};

pub use ledger::{Copy, Ledger};
use plan::lag;
use proof::proof_name;
pub use rclone::{INSTALL_HINT, MIN_VERSION, Rclone, Redactor, RemoteEntry};

/// Why an offsite operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    #[error("rclone not found at {}: {INSTALL_HINT}", program.display())]
    RcloneMissing { program: PathBuf },
    #[error(
        "{} is {found}; hapull needs rclone {}.{}.{} or newer: {INSTALL_HINT}",
        program.display(), MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
    )]
    RcloneTooOld { program: PathBuf, found: String },
    #[error("{what}: {detail}")]
    Rclone { what: String, detail: String },
    #[error(
        "{what}: rclone did not finish within {after:?} (raise `timeout` in [[offsite]] for slow links)"
    )]
    Timeout { what: String, after: Duration },
    #[error(
        "{remote_path}: the remote copy does not match the local archive ({detail}); it is not counted as an offsite copy"
    )]
    Mismatch { remote_path: String, detail: String },
    #[error("{remote_path}: not on the remote after the upload")]
    Missing { remote_path: String },
    #[error(
        "local archive {path} does not match its manifest ({problems}); not uploaded, run `hapull verify --all`"
    )]
    LocalCorrupt { path: String, problems: String },
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("offsite ledger {}: {source}", path.display())]
    Ledger {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log: {0}")]
    Audit(String),
}

impl OffsiteError {
    /// Failures that say nothing about the next archive (this one is damaged, or its remote copy
    /// differs): the run goes on with the others. Anything else (rclone missing, remote down) stops it.
    fn is_per_archive(&self) -> bool {
        matches!(
            self,
            OffsiteError::Mismatch { .. }
                | OffsiteError::Missing { .. }
                | OffsiteError::LocalCorrupt { .. }
        )
    }
}

/// One `[[offsite]]` target, validated.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// A short name for logs, metrics and the ledger file (default: from the remote).
    pub name: String,
    /// rclone's `remote:path` (or a local path).
    pub remote: String,
    pub rclone: PathBuf,
    pub rclone_config: Option<PathBuf>,
    pub retention: RetentionPolicy,
    /// Bytes per second.
    pub bandwidth_limit: Option<u64>,
    /// For each rclone invocation.
    pub timeout: Duration,
    /// A failed offsite copy fails the cycle (else it is reported and alerted only).
    pub fail_cycle: bool,
    /// When the remote has no hash, read the uploaded file back in full.
    pub download_back: bool,
}

/// How remote copies on a target are proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofMethod {
    /// The remote's hash of this type (lower-case rclone name).
    Hash(String),
    /// Read back in full and SHA-256 compared.
    Download,
    /// The size only: less than a proof, named as such.
    Size,
}

/// One archive proven on the remote in this run.
#[derive(Debug, Clone)]
pub struct Proven {
    pub backup_id: String,
    pub relative_path: String,
    pub size: u64,
    pub proof: String,
}

/// What one run against a target did.
#[derive(Debug, Clone, Default)]
pub struct TargetReport {
    pub name: String,
    pub remote: String,
    pub fail_cycle: bool,
    pub proof: Option<String>,
    pub uploaded: Vec<Proven>,
    /// `(backup id if about one archive, error)`.
    pub failures: Vec<(Option<String>, String)>,
    pub deleted: Vec<String>,
    /// Deletions the storage refused in this run (each reported once).
    pub refused: Vec<String>,
    /// Why offsite retention deleted nothing although its rules would have.
    pub retention_waits: Option<String>,
    /// Archives (and bytes) the offsite rules keep that have no proven remote copy yet.
    pub lag_archives: u64,
    pub lag_bytes: u64,
    /// When a run last left nothing missing offsite.
    pub last_success: Option<Timestamp>,
}

impl TargetReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A line of `hapull check` about a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckLevel {
    Ok,
    Warn,
    Fail,
}

/// One offsite target, ready to run.
#[derive(Debug, Clone)]
pub struct Target {
    pub config: TargetConfig,
    rclone: Rclone,
    /// The remote as shown in logs, errors and the audit log (a connection string's secrets blanked).
    shown_remote: String,
}

impl Target {
    pub fn new(config: TargetConfig) -> Target {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let redactor = Redactor::new(config.rclone_config.as_deref(), &config.remote, &env);
        let rclone = Rclone::new(
            config.rclone.clone(),
            config.rclone_config.clone(),
            config.bandwidth_limit.map(|b| format!("{b}B")),
            config.timeout,
            redactor,
        );
        let shown_remote = rclone.redactor().redact(&config.remote);
        Target {
            config,
            rclone,
            shown_remote,
        }
    }

    /// The remote, safe to show.
    pub fn shown_remote(&self) -> &str {
        &self.shown_remote
    }

    /// A remote path, safe to show.
    fn shown(&self, relative: &str) -> String {
        self.rclone.redactor().redact(&self.remote_path(relative))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// `remote` joined with a relative path.
    pub fn remote_path(&self, relative: &str) -> String {
        let r = &self.config.remote;
        if r.ends_with(':') || r.ends_with('/') {
            format!("{r}{relative}")
        } else {
            format!("{r}/{relative}")
        }
    }

    fn ledger_path(&self, store: &Store) -> PathBuf {
        Ledger::path(store.root(), &self.config.name)
    }

    fn load_ledger(&self, store: &Store) -> Result<Ledger, OffsiteError> {
        let path = self.ledger_path(store);
        Ledger::load(&path, &self.shown_remote)
            .map_err(|source| OffsiteError::Ledger { path, source })
    }

    fn save_ledger(&self, store: &Store, ledger: &Ledger) -> Result<(), OffsiteError> {
        let path = self.ledger_path(store);
        ledger
            .save(&path)
            .map_err(|source| OffsiteError::Ledger { path, source })
    }

    /// Uploads and proves what is missing, then applies offsite retention. Never panics on a remote
    /// problem: everything that went wrong is in the report (and the audit log).
    pub async fn sync(
        &self,
        store: Arc<Store>,
        tz: &TimeZone,
        audit: Option<&AuditLog>,
    ) -> TargetReport {
        let mut report = TargetReport {
            name: self.config.name.clone(),
            remote: self.shown_remote.clone(),
            fail_cycle: self.config.fail_cycle,
            ..TargetReport::default()
        };
        if let Err(e) = self.sync_inner(&store, tz, audit, &mut report).await {
            warn!(target = %self.config.name, error = %e, "offsite copy failed");
            let _ = record(
                audit,
                Kind::OffsiteFailed,
                json!({"target": self.config.name, "error": e.to_string()}),
            )
            .await;
            report.failures.push((None, e.to_string()));
        }
        report
    }

    async fn sync_inner(
        &self,
        store: &Arc<Store>,
        tz: &TimeZone,
        audit: Option<&AuditLog>,
        report: &mut TargetReport,
    ) -> Result<(), OffsiteError> {
        let name = &self.config.name;
        self.rclone.check_version().await?;
        let mut ledger = self.load_ledger(store)?;
        let local = blocking(store, |s| s.list()).await??;
        let keep = self.plan(&local, &ledger, tz);
        let method = self.proof_method().await?;
        report.proof = Some(proof_name(&method));

        // Uploads: what the offsite rules keep and is not proven there yet, newest first.
        let mut missing: Vec<&StoredArchive> = local
            .iter()
            .filter(|a| keep.contains(&key(&a.manifest)))
            .filter(|a| {
                ledger
                    .find(&a.manifest.backup_id, &a.manifest.sha256)
                    .is_none()
            })
            .collect();
        missing.sort_by_key(|a| std::cmp::Reverse(a.manifest.pulled_at));
        for archive in missing {
            let id = archive.manifest.backup_id.clone();
            match self.upload_and_prove(store, archive, &method).await {
                Ok(copy) => {
                    info!(target = %name, backup_id = %id, remote = %self.shown(&copy.relative_path),
                          proof = %copy.proof, "offsite copy proven");
                    record(
                        audit,
                        Kind::OffsiteProven,
                        json!({"target": name, "backup_id": id, "remote": self.shown(&copy.relative_path),
                               "size": copy.manifest.size, "sha256": copy.manifest.sha256,
                               "proof": copy.proof, "proof_value": copy.proof_value}),
                    )
                    .await?;
                    report.uploaded.push(Proven {
                        backup_id: id,
                        relative_path: copy.relative_path.clone(),
                        size: copy.manifest.size,
                        proof: copy.proof.clone(),
                    });
                    ledger.put(copy);
                    self.save_ledger(store, &ledger)?;
                }
                Err(e) => {
                    warn!(target = %name, backup_id = %id, error = %e, "offsite copy not proven");
                    record(
                        audit,
                        Kind::OffsiteFailed,
                        json!({"target": name, "backup_id": id, "error": e.to_string()}),
                    )
                    .await?;
                    let go_on = e.is_per_archive();
                    report.failures.push((Some(id), e.to_string()));
                    if !go_on {
                        break;
                    }
                }
            }
        }

        self.retention(store, &local, &keep, &mut ledger, audit, report)
            .await?;

        let (n, bytes) = lag(&local, &keep, &ledger);
        report.lag_archives = n;
        report.lag_bytes = bytes;
        if report.failures.is_empty() && n == 0 {
            ledger.last_success = Some(Timestamp::now().to_string());
            self.save_ledger(store, &ledger)?;
        }
        report.last_success = ledger.last_success_at();
        Ok(())
    }
}

fn key(m: &store::Manifest) -> (String, String) {
    (m.backup_id.clone(), m.sha256.clone())
}

/// `2026/11/x.tar` -> `2026/11/x.json` (the manifest's name in the store).
fn manifest_relative(archive: &str) -> String {
    match archive.strip_suffix(".tar") {
        Some(stem) => format!("{stem}.json"),
        None => format!("{archive}.json"),
    }
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Result<T, OffsiteError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| OffsiteError::Rclone {
            what: "store task".into(),
            detail: e.to_string(),
        })
}

async fn record(
    audit: Option<&AuditLog>,
    kind: Kind,
    data: serde_json::Value,
) -> Result<(), OffsiteError> {
    if let Some(a) = audit {
        a.step(kind, data)
            .await
            .map_err(|e| OffsiteError::Audit(e.to_string()))?;
    }
    Ok(())
}

/// A name usable as a file name and metrics label, from a remote string.
pub fn default_name(remote: &str) -> String {
    let s: String = remote
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches(['_', '.']).to_string();
    if s.is_empty() {
        "offsite".into()
    } else {
        s.chars().take(64).collect()
    }
}

#[cfg(test)]
mod tests;

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

mod ledger;
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
pub use rclone::{INSTALL_HINT, MIN_VERSION, Rclone, Redactor, RemoteEntry};

/// Hash types rclone knows, strongest first; SHA-256 first because the store's manifests carry it.
const HASH_PREFERENCE: [&str; 13] = [
    "sha256",
    "sha512",
    "blake3",
    "dropbox",
    "sha1",
    "hidrive",
    "mailru",
    "whirlpool",
    "md5",
    "quickxor",
    "xxh128",
    "xxh3",
    "crc32",
];

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

impl ProofMethod {
    pub fn choose(hashes: &[String], download_back: bool) -> ProofMethod {
        HASH_PREFERENCE
            .iter()
            .find(|h| hashes.iter().any(|x| x == *h))
            .map(|h| ProofMethod::Hash(h.to_string()))
            .unwrap_or(if download_back {
                ProofMethod::Download
            } else {
                ProofMethod::Size
            })
    }

    pub fn describe(&self) -> String {
        match self {
            ProofMethod::Hash(h) => format!("the remote's {h} hash compared with the local file's"),
            ProofMethod::Download => {
                "no remote hash: each copy is read back in full and its SHA-256 compared".into()
            }
            ProofMethod::Size => {
                "no remote hash: size only (set `download_back = true` to read each copy back)"
                    .into()
            }
        }
    }
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

    pub async fn proof_method(&self) -> Result<ProofMethod, OffsiteError> {
        let hashes = self.rclone.hash_types(&self.config.remote).await?;
        Ok(ProofMethod::choose(&hashes, self.config.download_back))
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

    /// The archives (by backup id and SHA-256) the offsite rules keep, planned over everything known
    /// on either side, so uploads and deletions never work against each other.
    fn plan(
        &self,
        local: &[StoredArchive],
        ledger: &Ledger,
        tz: &TimeZone,
    ) -> std::collections::BTreeSet<(String, String)> {
        let mut all: Vec<StoredArchive> = local.to_vec();
        for c in &ledger.copies {
            if !local.iter().any(|a| key(&a.manifest) == key(&c.manifest)) {
                all.push(StoredArchive {
                    path: PathBuf::from(self.remote_path(&c.relative_path)),
                    manifest_path: PathBuf::new(),
                    relative_path: c.relative_path.clone(),
                    manifest: c.manifest.clone(),
                });
            }
        }
        if self.config.retention.keeps_everything() {
            return all.iter().map(|a| key(&a.manifest)).collect();
        }
        store::plan(&all, &self.config.retention, tz)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| key(&d.archive.manifest))
            .collect()
    }

    async fn upload_and_prove(
        &self,
        store: &Arc<Store>,
        archive: &StoredArchive,
        method: &ProofMethod,
    ) -> Result<Copy, OffsiteError> {
        // The local file is re-read first: a copy of a damaged archive is no copy at all.
        let a = archive.clone();
        let check = blocking(store, move |s| s.verify(&a)).await??;
        if !check.is_ok() {
            return Err(OffsiteError::LocalCorrupt {
                path: archive.relative_path.clone(),
                problems: check.problems.join("; "),
            });
        }
        let manifest_rel = manifest_relative(&archive.relative_path);
        let manifest_sha = {
            let p = archive.manifest_path.clone();
            tokio::task::spawn_blocking(move || store::hash_file(&p))
                .await
                .map_err(|e| OffsiteError::Rclone {
                    what: "hashing the manifest".into(),
                    detail: e.to_string(),
                })?
                .map_err(|e| OffsiteError::Rclone {
                    what: format!("reading {}", archive.manifest_path.display()),
                    detail: e.to_string(),
                })?
        };
        let files = [
            (
                archive.path.as_path(),
                archive.relative_path.as_str(),
                archive.manifest.size,
                archive.manifest.sha256.clone(),
            ),
            (
                archive.manifest_path.as_path(),
                manifest_rel.as_str(),
                manifest_sha.0,
                hex::encode(manifest_sha.1),
            ),
        ];
        let mut proof = None;
        for (path, rel, size, sha) in &files {
            let dest = self.remote_path(rel);
            self.rclone.copy_to(path, &dest, false).await?;
            let proven = match self.prove(path, rel, *size, sha, method).await {
                Err(OffsiteError::Mismatch { detail, .. }) => {
                    // A stale or damaged file of the same size and time is skipped by rclone's
                    // own comparison: upload once more unconditionally, then prove again.
                    warn!(remote = %self.shown(rel), %detail, "remote copy differs; uploading it again");
                    self.rclone.copy_to(path, &dest, true).await?;
                    self.prove(path, rel, *size, sha, method).await?
                }
                other => other?,
            };
            proof.get_or_insert(proven);
        }
        let (kind, value) = proof.unwrap_or_default();
        Ok(Copy {
            relative_path: archive.relative_path.clone(),
            manifest: archive.manifest.clone(),
            proof: kind,
            proof_value: value,
            proven_at: Timestamp::now().to_string(),
            delete_refused_at: None,
        })
    }

    /// Proves one uploaded file; returns the proof's name and the value compared.
    async fn prove(
        &self,
        local: &Path,
        relative: &str,
        size: u64,
        sha256: &str,
        method: &ProofMethod,
    ) -> Result<(String, String), OffsiteError> {
        let shown = self.shown(relative);
        let (dir, file) = match relative.rsplit_once('/') {
            Some((d, f)) => (self.remote_path(d), f),
            None => (self.config.remote.clone(), relative),
        };
        let hash = match method {
            ProofMethod::Hash(h) => Some(h.as_str()),
            _ => None,
        };
        let entries = self
            .rclone
            .list(&dir, hash, false)
            .await?
            .unwrap_or_default();
        let entry = entries
            .iter()
            .find(|e| e.path == file && !e.is_dir)
            .ok_or_else(|| OffsiteError::Missing {
                remote_path: shown.clone(),
            })?;
        if u64::try_from(entry.size).ok() != Some(size) {
            return Err(OffsiteError::Mismatch {
                remote_path: shown,
                detail: format!("remote size {} bytes, local {size}", entry.size),
            });
        }
        if let Some(h) = hash
            && let Some(remote_hash) = entry.hashes.get(h).filter(|v| !v.is_empty())
        {
            let local_hash = if h == "sha256" {
                sha256.to_string()
            } else {
                self.rclone.hash_local(h, local).await?
            };
            if !remote_hash.eq_ignore_ascii_case(&local_hash) {
                return Err(OffsiteError::Mismatch {
                    remote_path: shown,
                    detail: format!("remote {h} {remote_hash}, local {local_hash}"),
                });
            }
            return Ok((h.to_string(), remote_hash.to_ascii_lowercase()));
        }
        // No hash from the remote (the backend has none, or none for this file).
        if self.config.download_back {
            let (n, sha) = self
                .rclone
                .download_sha256(&self.remote_path(relative))
                .await?;
            let got = hex::encode(sha);
            if n != size || got != sha256 {
                return Err(OffsiteError::Mismatch {
                    remote_path: shown,
                    detail: format!(
                        "read back {n} bytes with SHA-256 {got}, local {size} bytes {sha256}"
                    ),
                });
            }
            return Ok(("download".into(), got));
        }
        Ok(("size".into(), size.to_string()))
    }

    async fn retention(
        &self,
        store: &Arc<Store>,
        local: &[StoredArchive],
        keep: &std::collections::BTreeSet<(String, String)>,
        ledger: &mut Ledger,
        audit: Option<&AuditLog>,
        report: &mut TargetReport,
    ) -> Result<(), OffsiteError> {
        let name = &self.config.name;
        let Some(newest) = ledger
            .copies
            .iter()
            .max_by_key(|c| (c.manifest.pulled_at, c.relative_path.clone()))
            .cloned()
        else {
            return Ok(());
        };
        let doomed: Vec<Copy> = ledger
            .copies
            .iter()
            .filter(|c| c.relative_path != newest.relative_path)
            .filter(|c| c.delete_refused_at.is_none())
            .filter(|c| !keep.contains(&key(&c.manifest)))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        // Nothing goes offsite before the local store holds the newest offsite copy, verified now:
        // otherwise the remote may be the last copy there is.
        let held = local
            .iter()
            .find(|a| key(&a.manifest) == key(&newest.manifest))
            .cloned();
        let verified = match held {
            Some(a) => blocking(store, move |s| s.verify(&a)).await??.is_ok(),
            None => false,
        };
        if !verified {
            let why = format!(
                "the local store does not hold {} verified, so the remote may be the last copy; offsite retention deletes nothing",
                newest.manifest.backup_id
            );
            warn!(target = %name, "{why}");
            report.retention_waits = Some(why);
            return Ok(());
        }
        for c in doomed {
            let tar = self.shown(&c.relative_path);
            let outcome = match self
                .rclone
                .delete_file(&self.remote_path(&c.relative_path))
                .await
            {
                Ok(()) => {
                    self.rclone
                        .delete_file(&self.remote_path(&manifest_relative(&c.relative_path)))
                        .await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    ledger.copies.retain(|x| x.relative_path != c.relative_path);
                    self.save_ledger(store, ledger)?;
                    info!(target = %name, backup_id = %c.manifest.backup_id, remote = %tar, "offsite copy deleted by retention");
                    record(
                        audit,
                        Kind::OffsiteDeleted,
                        json!({"target": name, "backup_id": c.manifest.backup_id, "remote": tar}),
                    )
                    .await?;
                    report.deleted.push(c.manifest.backup_id.clone());
                }
                Err(Ok(reason)) => {
                    if let Some(x) = ledger
                        .copies
                        .iter_mut()
                        .find(|x| x.relative_path == c.relative_path)
                    {
                        x.delete_refused_at = Some(Timestamp::now().to_string());
                    }
                    self.save_ledger(store, ledger)?;
                    warn!(target = %name, backup_id = %c.manifest.backup_id, remote = %tar, %reason,
                          "the storage refused to delete an offsite copy retention would remove (a write-only target?); it stays, hapull will not try again");
                    record(
                        audit,
                        Kind::OffsiteDeleteRefused,
                        json!({"target": name, "backup_id": c.manifest.backup_id, "remote": tar, "reason": reason}),
                    )
                    .await?;
                    report.refused.push(c.manifest.backup_id.clone());
                }
                Err(Err(e)) => {
                    // Not a failure of the copy: the next run tries again.
                    warn!(target = %name, backup_id = %c.manifest.backup_id, error = %e, "offsite retention could not delete; will retry");
                }
            }
        }
        Ok(())
    }

    /// The ledger and the lag, without contacting the remote (for metrics at start-up).
    pub fn local_status(
        &self,
        store: &Store,
        tz: &TimeZone,
    ) -> Result<(Ledger, u64, u64), OffsiteError> {
        let ledger = self.load_ledger(store)?;
        let local = store.list()?;
        let keep = self.plan(&local, &ledger, tz);
        let (n, bytes) = lag(&local, &keep, &ledger);
        Ok((ledger, n, bytes))
    }

    /// The ledger only.
    pub fn ledger(&self, store: &Store) -> Result<Ledger, OffsiteError> {
        self.load_ledger(store)
    }

    /// Every file under the remote root.
    pub async fn remote_files(&self) -> Result<Vec<RemoteEntry>, OffsiteError> {
        Ok(self
            .rclone
            .list(&self.config.remote, None, true)
            .await?
            .unwrap_or_default())
    }

    /// `hapull check`: rclone, the remote (reachable, writable, hash), which proof will be used, and
    /// whether deletions are allowed. A test file is uploaded, proven and deleted.
    pub async fn check(&self) -> Vec<(CheckLevel, String)> {
        let mut out = Vec::new();
        match self.rclone.check_version().await {
            Ok(v) => out.push((
                CheckLevel::Ok,
                format!("{v} at {}", self.config.rclone.display()),
            )),
            Err(e) => {
                out.push((CheckLevel::Fail, e.to_string()));
                return out;
            }
        }
        match self.rclone.list(&self.config.remote, None, false).await {
            Ok(Some(files)) => out.push((
                CheckLevel::Ok,
                format!(
                    "{} is reachable ({} file(s) at its top)",
                    self.shown_remote,
                    files.len()
                ),
            )),
            Ok(None) => out.push((
                CheckLevel::Ok,
                format!(
                    "{} is reachable (the folder does not exist yet; the first upload makes it)",
                    self.shown_remote
                ),
            )),
            Err(e) => {
                out.push((
                    CheckLevel::Fail,
                    format!("{} is not reachable: {e}", self.shown_remote),
                ));
                return out;
            }
        }
        let method = match self.proof_method().await {
            Ok(m) => m,
            Err(e) => {
                out.push((CheckLevel::Fail, e.to_string()));
                return out;
            }
        };
        let probe_name = format!(".hapull-check-{:016x}", fastrand::u64(..));
        let dir = std::env::temp_dir().join(format!("hapull-check-{}", std::process::id()));
        let content = format!("hapull offsite check {}\n", Timestamp::now());
        let local = dir.join(&probe_name);
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|_| std::fs::write(&local, content.as_bytes()));
        if let Err(e) = made {
            out.push((
                CheckLevel::Fail,
                format!("cannot write a test file in {}: {e}", dir.display()),
            ));
            return out;
        }
        let sha = hex::encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content.as_bytes()).as_ref(),
        );
        let remote = self.shown(&probe_name);
        match self
            .rclone
            .copy_to(&local, &self.remote_path(&probe_name), false)
            .await
        {
            Ok(()) => {
                out.push((CheckLevel::Ok, format!("writable (test file {remote})")));
                match self
                    .prove(&local, &probe_name, content.len() as u64, &sha, &method)
                    .await
                {
                    Ok((kind, _)) => {
                        let level = if kind == "size" {
                            CheckLevel::Warn
                        } else {
                            CheckLevel::Ok
                        };
                        out.push((
                            level,
                            format!(
                                "proof: {kind} — {} (checked on the test file)",
                                method.describe()
                            ),
                        ));
                    }
                    Err(e) => out.push((
                        CheckLevel::Fail,
                        format!("proof {}: {e}", proof_name(&method)),
                    )),
                }
                match self.rclone.delete_file(&self.remote_path(&probe_name)).await {
                    Ok(()) => out.push((CheckLevel::Ok, "deletions allowed: offsite retention deletes what hapull uploaded and its rules drop".into())),
                    Err(Ok(reason)) => out.push((CheckLevel::Warn, format!(
                        "deletions refused ({reason}): a write-only target; retention's deletions are reported, not done, and the test file {remote} stays (delete it with the storage's own tools)"))),
                    Err(Err(e)) => out.push((CheckLevel::Warn, format!("deleting the test file failed: {e}"))),
                }
            }
            Err(e) => out.push((CheckLevel::Fail, format!("not writable: {e}"))),
        }
        let _ = std::fs::remove_dir_all(&dir);
        out
    }
}

fn proof_name(m: &ProofMethod) -> String {
    match m {
        ProofMethod::Hash(h) => h.clone(),
        ProofMethod::Download => "download".into(),
        ProofMethod::Size => "size".into(),
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

fn lag(
    local: &[StoredArchive],
    keep: &std::collections::BTreeSet<(String, String)>,
    ledger: &Ledger,
) -> (u64, u64) {
    local
        .iter()
        .filter(|a| keep.contains(&key(&a.manifest)))
        .filter(|a| {
            ledger
                .find(&a.manifest.backup_id, &a.manifest.sha256)
                .is_none()
        })
        .fold((0, 0), |(n, b), a| (n + 1, b + a.manifest.size))
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
mod tests {
    use super::*;

    #[test]
    fn the_strongest_hash_is_chosen() {
        let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ProofMethod::choose(&h(&["md5", "sha1", "sha256"]), false),
            ProofMethod::Hash("sha256".into())
        );
        assert_eq!(
            ProofMethod::choose(&h(&["md5", "sha1"]), false),
            ProofMethod::Hash("sha1".into())
        );
        assert_eq!(
            ProofMethod::choose(&h(&["quickxor"]), false),
            ProofMethod::Hash("quickxor".into())
        );
        assert_eq!(ProofMethod::choose(&h(&[]), true), ProofMethod::Download);
        assert_eq!(
            ProofMethod::choose(&h(&["unknown"]), false),
            ProofMethod::Size
        );
    }

    #[test]
    fn names_and_paths() {
        assert_eq!(default_name("b2:home-backups/ha"), "b2_home-backups_ha");
        assert_eq!(default_name("/mnt/usb"), "mnt_usb");
        assert_eq!(manifest_relative("2026/11/a_b.tar"), "2026/11/a_b.json");
        let t = |remote: &str| {
            Target::new(TargetConfig {
                name: "t".into(),
                remote: remote.into(),
                rclone: "rclone".into(),
                rclone_config: None,
                retention: RetentionPolicy::default(),
                bandwidth_limit: None,
                timeout: Duration::from_secs(1),
                fail_cycle: false,
                download_back: false,
            })
        };
        assert_eq!(
            t("b2:bucket").remote_path("2026/x.tar"),
            "b2:bucket/2026/x.tar"
        );
        assert_eq!(t("gd:").remote_path("2026/x.tar"), "gd:2026/x.tar");
        assert_eq!(t("/srv/copy/").remote_path("x.tar"), "/srv/copy/x.tar");
    }
}

//! The local archive store: where pulled backups end up, proven intact, with a manifest each.
//!
//! Layout under the store directory:
//!
//! ```text
//! <store>/SHA256SUMS                                   `cd <store> && sha256sum -c SHA256SUMS`
//! <store>/<YYYY>/<MM>/<date>_<name>_<backup_id>.tar     the archive, byte for byte as HA wrote it
//! <store>/<YYYY>/<MM>/<date>_<name>_<backup_id>.json    its manifest
//! <store>/.incoming/                                    where pulls land before they are committed
//! ```
//!
//! `<date>` is Home Assistant's backup date in UTC (`2026-11-26T09-07-39Z`), `<name>` the display name
//! reduced to a safe slug, `<backup_id>` the id checked by [`safe_component`].
//!
//! The store receives a file that has already been pulled and hashed; it knows nothing about SSH or
//! Home Assistant's API. [`Store::commit`] re-reads the file once, checking the archive structure and
//! the size and SHA-256 the transfer reported, then moves it into place. Crash safety: the manifest is
//! written (temp file, fsync, rename, fsync directory) before the archive is linked into place, so an
//! archive never exists without its manifest; a manifest whose archive is missing (a crash between the
//! two steps) and stray temp files are removed by [`Store::open`], and `SHA256SUMS` is always rebuilt
//! from the manifests. The store never deletes an archive on its own: only [`Store::remove`] and
//! [`Store::prune`] do, and prune never removes the newest archive.
//!
//! One process writes to a store at a time: writers hold the store's [`lock::StoreLock`] and only then
//! [`Store::open`] it (which repairs what a crash left); readers use [`Store::open_read_only`], which
//! changes nothing, so a `list` beside a running cycle cannot take its half-written files for leftovers.
//! Every file and folder the store writes is private ([`crate::private_fs`]). All I/O is blocking;
//! async callers should use `tokio::task::spawn_blocking`.

mod archive;
pub mod extract;
mod ledger;
pub mod lock;
mod names;
mod retention;
pub mod securetar;
mod stream_verify;
mod tar_stream;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};

use crate::secret::Secret;

pub use archive::{
    ArchiveError, ArchiveSummary, BackupJson, HomeAssistantPart, Level, MAX_BACKUP_JSON,
    MAX_OUTER_MEMBERS, MemberInfo, NO_PASSWORD_WARNING, TarError, Verify, VerifyOptions,
    parse_backup_json, parse_backup_json_from_tar_prefix, verify_file, verify_file_with,
    verify_reader, verify_reader_with,
};
pub use ledger::{Entry as LedgerEntry, LEDGER_FILE, Ledger};
pub use names::{MAX_COMPONENT_BYTES, NameError, safe_component, sanitize_for_filename};
pub use retention::{Decision, RetentionPolicy, plan};
pub use securetar::{Keys, SecureTarError};
pub use stream_verify::StreamVerifier;

pub(crate) use archive::hash_file;

/// Name of the checksum file at the store root.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// Prefix of every temporary file the store creates; leftovers are removed by [`Store::open`].
const TMP_PREFIX: &str = crate::private_fs::TMP_PREFIX;

/// A `.partial` download untouched for this long is abandoned (its backup is likely gone from Home
/// Assistant) and removed, so failed pulls do not fill the disk over months.
pub const STALE_PARTIAL_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

const INCOMING_DIR: &str = ".incoming";

const MANIFEST_FORMAT: u32 = 1;

/// Facts about a pulled file, from the transfer and the cycle.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    /// The backup id Home Assistant gave; `backup.json`'s slug must match it.
    pub backup_id: String,
    /// Size the transfer wrote.
    pub size: u64,
    /// SHA-256 the transfer computed while writing.
    pub sha256: [u8; 32],
    /// When hapull received the archive (retention is computed on this).
    pub pulled_at: Timestamp,
    /// Where it came from, for the manifest: host and remote path.
    pub source_host: String,
    pub source_path: String,
    /// How deeply to check the archive before committing it.
    pub verify: Verify,
    /// The backup password, for protected backups.
    pub password: Option<Secret>,
    /// What a [`StreamVerifier`] proved while the file was pulled; the commit then does not read
    /// the file again.
    pub verified: Option<ArchiveSummary>,
}

/// The manifest stored beside each archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: String,
    pub name: String,
    #[serde(with = "rfc3339")]
    pub ha_date: Timestamp,
    pub ha_version: Option<String>,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    pub protected: bool,
    /// When hapull received the archive, UTC.
    #[serde(with = "rfc3339")]
    pub pulled_at: Timestamp,
    pub source_host: String,
    pub source_path: String,
    pub hapull_version: String,
    /// The archive's file name, beside the manifest.
    pub archive: String,
    /// What verification proved before the commit (absent in manifests of older versions, which
    /// did not record it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Level>,
    /// SecureTar version of the encrypted inner archives, when they were opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub securetar: Option<u8>,
}

impl Manifest {
    /// `full`, `structure`, or `unrecorded` (a manifest from before levels were recorded).
    pub fn verified_str(&self) -> &'static str {
        self.verified.map_or("unrecorded", Level::as_str)
    }
}

/// An archive in the store, as described by its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArchive {
    /// Absolute (or store-relative, if the store was opened with a relative path) path of the `.tar`.
    pub path: PathBuf,
    pub manifest_path: PathBuf,
    /// `YYYY/MM/<file>.tar`, as written in `SHA256SUMS`.
    pub relative_path: String,
    pub manifest: Manifest,
}

/// Something in the store that is not a complete archive+manifest pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreProblem {
    pub path: PathBuf,
    pub kind: ProblemKind,
    /// What is wrong, for a person.
    pub problem: String,
}

/// The kinds of [`StoreProblem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A manifest that cannot be read or does not describe the archive beside it.
    UnreadableManifest,
    /// A manifest whose archive is not there.
    MissingArchive,
    /// An archive with no manifest: not listed, not verified, never pruned.
    MissingManifest,
}

impl std::fmt::Display for StoreProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

/// Everything [`Store::scan`] found.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Complete archives, oldest Home Assistant date first.
    pub archives: Vec<StoredArchive>,
    /// Unreadable manifests, archives without a manifest, manifests without an archive.
    pub problems: Vec<StoreProblem>,
}

/// The result of re-checking a stored archive against its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub relative_path: String,
    pub expected_size: u64,
    pub actual_size: u64,
    pub expected_sha256: String,
    pub actual_sha256: String,
    /// Empty when the archive is intact.
    pub problems: Vec<String>,
    /// What was proven when the archive's structure was checked (`None`: only re-hashed).
    pub level: Option<Level>,
    /// Why the level is lower than full, for a person.
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Errors at the store's boundary.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not an intact Home Assistant backup: {source}", path.display())]
    Archive { path: PathBuf, source: ArchiveError },
    #[error("{} cannot be opened: {source}", path.display())]
    WrongPassword { path: PathBuf, source: ArchiveError },
    #[error("unusable backup id: {0}")]
    Name(#[from] NameError),
    #[error(
        "{} is {actual} bytes but the transfer reported {expected}: the file changed after it was \
         pulled; pull it again",
        path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{} has SHA-256 {actual} but the transfer computed {expected}: the file changed after it was \
         pulled (a disk or memory fault?); pull it again",
        path.display()
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "backup {backup_id} is already stored as {} with SHA-256 {existing_sha256}, but the new file \
         has {new_sha256}: refusing to replace it; move the stored archive away if it is the wrong one",
        existing.display()
    )]
    Conflict {
        backup_id: String,
        existing: PathBuf,
        existing_sha256: String,
        new_sha256: String,
    },
    #[error(
        "{} already exists without a manifest: refusing to overwrite it; check that file, then move \
         it away",
        path.display()
    )]
    Occupied { path: PathBuf },
    #[error(
        "backup.json dates this backup {date}, outside the years 1000-9999 the store layout uses; \
         check the clock of the Home Assistant host"
    )]
    DateOutOfRange { date: String },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// A directory of verified Home Assistant backups.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating it with mode 0700 if missing) the store at `dir`, removes leftovers of an
    /// interrupted commit or removal, and brings `SHA256SUMS` in line with the manifests. Without
    /// write permission the store still opens, for reading, and that repair is skipped.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = dir.as_ref().to_owned();
        crate::private_fs::create_dir_all(&root)
            .map_err(io_err("create the store directory", &root))?;
        let store = Store { root };
        match store.recover() {
            // Someone who may only read the store (`hapull list` or `verify` as another user, a
            // read-only mount) can still use it; the next writer repairs it.
            Err(StoreError::Io { source, path, .. })
                if source.kind() == io::ErrorKind::PermissionDenied
                    || source.raw_os_error() == Some(libc::EROFS) =>
            {
                warn!(path = %path.display(), "store is read-only here; leftovers not cleaned up");
                Ok(store)
            }
            other => other.map(|()| store),
        }
    }

    /// Opens the store at `dir` for reading: creates nothing, repairs nothing (a writer may be at work).
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = dir.as_ref().to_owned();
        fs::metadata(&root).map_err(io_err("open the store directory", &root))?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes `.partial` downloads (and their sidecars) in the incoming folder not written to for
    /// `max_age`, logging each; returns what was removed. Only a lock holder may call this.
    pub fn remove_stale_partials(
        &self,
        max_age: std::time::Duration,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let dir = self.root.join(INCOMING_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let now = std::time::SystemTime::now();
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.ends_with(".partial") || name.ends_with(".partial.meta")) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if !meta.is_file() || age < max_age {
                continue;
            }
            let path = entry.path();
            warn!(
                path = %path.display(),
                bytes = meta.len(),
                age_days = age.as_secs() / 86_400,
                "removing a partial download untouched for over a week"
            );
            remove_if_present(&path)?;
            removed.push(path);
        }
        if !removed.is_empty() {
            fsync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// Where to pull the archive of `backup_id` before committing it: inside the store, so the commit
    /// is a rename on the same file system. Creates the directory.
    pub fn incoming_path(&self, backup_id: &str) -> Result<PathBuf, StoreError> {
        let id = safe_component(backup_id)?;
        let dir = self.root.join(INCOMING_DIR);
        ensure_dir(&self.root, &dir)?;
        self.remove_stale_partials(STALE_PARTIAL_AGE)?;
        Ok(dir.join(format!("{id}.tar")))
    }

    /// Verifies the pulled file at `partial` and moves it into the store with its manifest.
    ///
    /// Checks, in one read of the file: the archive structure (per `info.verify`), that `backup.json`
    /// names `info.backup_id`, and that size and SHA-256 equal what the transfer reported. If the
    /// same archive is already stored, removes `partial` and returns the stored one; if a different
    /// archive of that backup id is stored, refuses.
    pub fn commit(&self, partial: &Path, info: &CommitInfo) -> Result<StoredArchive, StoreError> {
        let backup_id = safe_component(&info.backup_id)?;
        let new_sha = hex::encode(info.sha256);
        let meta = fs::metadata(partial).map_err(io_err("read", partial))?;
        if meta.len() != info.size {
            return Err(StoreError::SizeMismatch {
                path: partial.to_owned(),
                expected: info.size,
                actual: meta.len(),
            });
        }

        if let Some(existing) = self.find(&backup_id)? {
            if existing.manifest.sha256 != new_sha || existing.manifest.size != info.size {
                return Err(StoreError::Conflict {
                    backup_id,
                    existing: existing.path,
                    existing_sha256: existing.manifest.sha256,
                    new_sha256: new_sha,
                });
            }
            if !same_file(partial, &existing.path) {
                fs::remove_file(partial).map_err(io_err("remove the duplicate", partial))?;
                fsync_parent(partial)?;
            }
            info!(backup_id = %backup_id, path = %existing.path.display(), "archive already stored");
            return Ok(existing);
        }

        // Verified while it was pulled: the bytes the verifier read are the bytes the transfer
        // hashed and wrote, so there is nothing to re-read. Otherwise, one read does both.
        let streamed = info.verified.is_some();
        let summary = match &info.verified {
            Some(summary) => {
                if summary.backup.slug != backup_id {
                    return Err(StoreError::Archive {
                        path: partial.to_owned(),
                        source: ArchiveError::SlugMismatch {
                            expected: backup_id,
                            found: tar_stream::shown(&summary.backup.slug),
                        },
                    });
                }
                summary.clone()
            }
            None => {
                let mut keys = info.password.clone().map(Keys::new);
                verify_file_with(
                    partial,
                    &backup_id,
                    VerifyOptions {
                        mode: info.verify,
                        keys: keys.as_mut(),
                        hash: true,
                    },
                )
                .map_err(|source| match source {
                    ArchiveError::WrongPassword { .. } => StoreError::WrongPassword {
                        path: partial.to_owned(),
                        source,
                    },
                    source => StoreError::Archive {
                        path: partial.to_owned(),
                        source,
                    },
                })?
            }
        };
        if summary.size != info.size {
            return Err(StoreError::SizeMismatch {
                path: partial.to_owned(),
                expected: info.size,
                actual: summary.size,
            });
        }
        if !streamed && summary.sha256 != info.sha256 {
            return Err(StoreError::HashMismatch {
                path: partial.to_owned(),
                expected: new_sha,
                actual: summary.sha256_hex(),
            });
        }

        let ha_date = summary
            .backup
            .timestamp()
            .map_err(|source| StoreError::Archive {
                path: partial.to_owned(),
                source,
            })?;
        let utc = ha_date.to_zoned(TimeZone::UTC);
        if !(1000..=9999).contains(&utc.year()) {
            return Err(StoreError::DateOutOfRange {
                date: tar_stream::shown(&summary.backup.date),
            });
        }
        let stem = names::archive_stem(ha_date, &summary.backup.name, &backup_id)?;
        let year = format!("{:04}", utc.year());
        let month = format!("{:02}", utc.month());
        let dir = self.root.join(&year).join(&month);
        let archive_name = format!("{stem}.tar");
        let target = dir.join(&archive_name);
        let manifest_path = dir.join(format!("{stem}.json"));
        if target.symlink_metadata().is_ok() {
            return Err(StoreError::Occupied { path: target });
        }

        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            backup_id: backup_id.clone(),
            name: summary.backup.name.clone(),
            ha_date,
            ha_version: summary.backup.ha_version().map(str::to_owned),
            size: summary.size,
            sha256: new_sha,
            protected: summary.backup.protected,
            pulled_at: info.pulled_at,
            source_host: info.source_host.clone(),
            source_path: info.source_path.clone(),
            hapull_version: env!("CARGO_PKG_VERSION").to_owned(),
            archive: archive_name.clone(),
            verified: Some(summary.level),
            securetar: summary.securetar,
        };
        for w in &summary.warnings {
            warn!(backup_id = %backup_id, "{w}");
        }

        ensure_dir(&self.root, &self.root.join(&year))?;
        ensure_dir(&self.root.join(&year), &dir)?;
        // The archive keeps this file's inode (it is linked into place): make it private first, whatever
        // mode the pull or an older version left.
        File::open(partial)
            .and_then(|f| {
                crate::private_fs::make_private(&f)?;
                f.sync_all()
            })
            .map_err(io_err("flush to disk", partial))?;
        let mut json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| io_err("encode", &manifest_path)(io::Error::other(e)))?;
        json.push(b'\n');
        write_atomic(&manifest_path, &json)?;
        if let Err(e) = place(partial, &target, &info.sha256) {
            // Without its archive the manifest describes nothing; take it back.
            let _ = fs::remove_file(&manifest_path);
            let _ = fsync_dir(&dir);
            return Err(e);
        }

        let stored = StoredArchive {
            path: target,
            manifest_path,
            relative_path: format!("{year}/{month}/{archive_name}"),
            manifest,
        };
        self.refresh_sums()?;
        info!(
            backup_id = %backup_id,
            path = %stored.path.display(),
            bytes = stored.manifest.size,
            sha256 = %stored.manifest.sha256,
            "archive committed"
        );
        Ok(stored)
    }

    /// Complete archives (oldest first); problems are logged as warnings. See [`Store::scan`].
    pub fn list(&self) -> Result<Vec<StoredArchive>, StoreError> {
        let listing = self.scan()?;
        for p in &listing.problems {
            warn!(path = %p.path.display(), problem = %p.problem, "store entry skipped");
        }
        Ok(listing.archives)
    }

    /// Reads every manifest. Unreadable manifests, manifests without an archive and archives without
    /// a manifest are reported in [`Listing::problems`] instead of failing the listing.
    pub fn scan(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for (year, year_dir) in subdirs(&self.root, 4)? {
            for (month, month_dir) in subdirs(&year_dir, 2)? {
                self.scan_month(&format!("{year}/{month}"), &month_dir, &mut listing)?;
            }
        }
        listing
            .archives
            .sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        Ok(listing)
    }

    fn scan_month(&self, rel: &str, dir: &Path, listing: &mut Listing) -> Result<(), StoreError> {
        let mut files: Vec<String> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            if let Ok(name) = entry.file_name().into_string()
                && !name.starts_with('.')
            {
                files.push(name);
            }
        }
        files.sort();
        for name in &files {
            if let Some(stem) = name.strip_suffix(".json") {
                let manifest_path = dir.join(name);
                let archive_name = format!("{stem}.tar");
                match load_manifest(&manifest_path, &archive_name) {
                    Ok(manifest) => {
                        if files.binary_search(&archive_name).is_ok() {
                            listing.archives.push(StoredArchive {
                                path: dir.join(&archive_name),
                                manifest_path,
                                relative_path: format!("{rel}/{archive_name}"),
                                manifest,
                            });
                        } else {
                            listing.problems.push(StoreProblem {
                                path: manifest_path,
                                kind: ProblemKind::MissingArchive,
                                problem: format!("its archive {archive_name} is missing"),
                            });
                        }
                    }
                    Err(problem) => listing.problems.push(StoreProblem {
                        path: manifest_path,
                        kind: ProblemKind::UnreadableManifest,
                        problem,
                    }),
                }
            } else if let Some(stem) = name.strip_suffix(".tar")
                && files.binary_search(&format!("{stem}.json")).is_err()
            {
                listing.problems.push(StoreProblem {
                    path: dir.join(name),
                    kind: ProblemKind::MissingManifest,
                    problem: "archive without a manifest (not listed, not verified, never pruned)"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The stored archive of `backup_id`, if any.
    pub fn find(&self, backup_id: &str) -> Result<Option<StoredArchive>, StoreError> {
        Ok(self
            .scan()?
            .archives
            .into_iter()
            .find(|a| a.manifest.backup_id == backup_id))
    }

    /// Re-hashes the archive and compares size and SHA-256 with its manifest.
    pub fn verify(&self, archive: &StoredArchive) -> Result<VerifyReport, StoreError> {
        self.verify_with(archive, None, None)
    }

    /// Like [`Store::verify`], and with `Some(mode)` also re-checks the archive's structure and, in
    /// [`Verify::Full`] mode, reads every inner archive (decrypting a protected backup's with
    /// `keys`), all in the same single read of the file.
    pub fn verify_with(
        &self,
        archive: &StoredArchive,
        structure: Option<Verify>,
        keys: Option<&mut Keys>,
    ) -> Result<VerifyReport, StoreError> {
        let m = &archive.manifest;
        let mut problems = Vec::new();
        let mut level = None;
        let mut warnings = Vec::new();
        let checked = match structure {
            Some(mode) => match verify_file_with(
                &archive.path,
                &m.backup_id,
                VerifyOptions {
                    mode,
                    keys,
                    hash: true,
                },
            ) {
                Ok(summary) => {
                    level = Some(summary.level);
                    warnings = summary.warnings;
                    Some((summary.size, summary.sha256))
                }
                Err(ArchiveError::Open { source, .. }) => {
                    return Err(io_err("read", &archive.path)(source));
                }
                Err(e) => {
                    problems.push(format!("structure: {e}"));
                    None
                }
            },
            None => None,
        };
        let (size, sha) = match checked {
            Some(v) => v,
            None => hash_file(&archive.path).map_err(io_err("read", &archive.path))?,
        };
        let actual_sha256 = hex::encode(sha);
        if size != m.size {
            problems.push(format!(
                "size is {size} bytes, the manifest says {}",
                m.size
            ));
        }
        if actual_sha256 != m.sha256 {
            problems.push(format!(
                "SHA-256 is {actual_sha256}, the manifest says {}: the archive is corrupt",
                m.sha256
            ));
        }
        Ok(VerifyReport {
            relative_path: archive.relative_path.clone(),
            expected_size: m.size,
            actual_size: size,
            expected_sha256: m.sha256.clone(),
            actual_sha256,
            problems,
            level,
            warnings,
        })
    }

    /// Deletes an archive and its manifest, and its entry in `SHA256SUMS`.
    pub fn remove(&self, archive: &StoredArchive) -> Result<(), StoreError> {
        self.remove_many(std::slice::from_ref(archive))
    }

    fn remove_many(&self, doomed: &[StoredArchive]) -> Result<(), StoreError> {
        if doomed.is_empty() {
            return Ok(());
        }
        let remaining: Vec<StoredArchive> = self
            .scan()?
            .archives
            .into_iter()
            .filter(|a| !doomed.iter().any(|d| d.path == a.path))
            .collect();
        // The checksum list goes first, so `sha256sum -c` never names a file that is gone.
        self.write_sums(&remaining)?;
        for a in doomed {
            remove_if_present(&a.path)?;
            fsync_parent(&a.path)?;
            remove_if_present(&a.manifest_path)?;
            fsync_parent(&a.manifest_path)?;
            self.remove_empty_parents(&a.path);
            info!(
                backup_id = %a.manifest.backup_id,
                path = %a.path.display(),
                "archive removed"
            );
        }
        Ok(())
    }

    /// Applies `policy` (buckets in `tz`): with `dry_run`, only decides. Returns every decision,
    /// newest first. Archives the store cannot read a manifest for are never touched.
    pub fn prune(
        &self,
        policy: &RetentionPolicy,
        tz: &TimeZone,
        dry_run: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        let listing = self.scan()?;
        let decisions = plan(&listing.archives, policy, tz);
        if dry_run {
            return Ok(decisions);
        }
        let doomed: Vec<StoredArchive> = decisions
            .iter()
            .skip(1) // the newest, kept whatever the plan says
            .filter(|d| !d.keep)
            .map(|d| d.archive.clone())
            .collect();
        self.remove_many(&doomed)?;
        Ok(decisions)
    }

    /// Brings the store back to a consistent state after a crash.
    fn recover(&self) -> Result<(), StoreError> {
        remove_temp_files(&self.root)?;
        self.remove_stale_partials(STALE_PARTIAL_AGE)?;
        for (_, year_dir) in subdirs(&self.root, 4)? {
            for (_, month_dir) in subdirs(&year_dir, 2)? {
                remove_temp_files(&month_dir)?;
            }
        }
        let listing = self.scan()?;
        for p in &listing.problems {
            // Only a manifest whose archive is missing is removed: it is what a crash between
            // writing the manifest and placing the archive leaves. Archives are never removed here.
            if p.kind == ProblemKind::MissingArchive {
                warn!(path = %p.path.display(), "removing manifest of an archive that is not there");
                remove_if_present(&p.path)?;
                fsync_parent(&p.path)?;
            } else {
                warn!(path = %p.path.display(), problem = %p.problem, "store entry needs attention");
            }
        }
        self.write_sums(&listing.archives)
    }

    fn refresh_sums(&self) -> Result<(), StoreError> {
        let listing = self.scan()?;
        self.write_sums(&listing.archives)
    }

    fn write_sums(&self, archives: &[StoredArchive]) -> Result<(), StoreError> {
        let mut lines: Vec<String> = archives
            .iter()
            .map(|a| format!("{}  {}\n", a.manifest.sha256, a.relative_path))
            .collect();
        lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
        let content = lines.concat();
        let path = self.root.join(SUMS_FILE);
        if fs::read(&path).ok().as_deref() == Some(content.as_bytes()) {
            return Ok(());
        }
        write_atomic(&path, content.as_bytes())
    }

    fn remove_empty_parents(&self, archive: &Path) {
        let mut dir = archive.parent();
        for _ in 0..2 {
            let Some(d) = dir else { return };
            if d == self.root || fs::remove_dir(d).is_err() {
                return;
            }
            let _ = fsync_parent(d);
            dir = d.parent();
        }
    }
}

fn load_manifest(path: &Path, archive_name: &str) -> Result<Manifest, String> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(1024 * 1024).read_to_end(&mut data))
        .map_err(|e| format!("unreadable manifest: {e}"))?;
    let m: Manifest =
        serde_json::from_slice(&data).map_err(|e| format!("unreadable manifest: {e}"))?;
    if m.archive != archive_name {
        return Err(format!(
            "the manifest names archive {:?}, not {archive_name:?} beside it",
            m.archive
        ));
    }
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the manifest's sha256 {:?} is not a SHA-256",
            m.sha256
        ));
    }
    if let Err(e) = safe_component(&m.backup_id) {
        return Err(format!("the manifest's backup_id is unusable: {e}"));
    }
    Ok(m)
}

/// Subdirectories whose names are exactly `digits` ASCII digits, sorted.
fn subdirs(dir: &Path, digits: usize) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.len() == digits
            && name.bytes().all(|b| b.is_ascii_digit())
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            warn!(path = %entry.path().display(), "removing a temporary file left by an interrupted write");
            remove_if_present(&entry.path())?;
            removed = true;
        }
    }
    if removed {
        fsync_dir(dir)?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::private_fs::sync_dir(dir).map_err(io_err("flush the directory", dir))
}

fn fsync_parent(path: &Path) -> Result<(), StoreError> {
    fsync_dir(&crate::private_fs::parent_of(path))
}

/// Creates `dir` (mode 0700) if missing and makes its entry in `parent` durable.
fn ensure_dir(parent: &Path, dir: &Path) -> Result<(), StoreError> {
    match fs::DirBuilder::new()
        .mode(crate::private_fs::DIR_MODE)
        .create(dir)
    {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(crate::private_fs::DIR_MODE))
                .map_err(io_err("set mode 0700 on", dir))?;
            fsync_dir(parent)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err("create the directory", dir)(e)),
    }
}

fn temp_path_for(target: &Path) -> PathBuf {
    crate::private_fs::temp_path_for(target)
}

/// Writes `data` to `target` so that a crash leaves the old content or the new, never a mix.
fn write_atomic(target: &Path, data: &[u8]) -> Result<(), StoreError> {
    crate::private_fs::write_atomic(target, data).map_err(io_err("write", target))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Moves `from` to `to` without ever replacing an existing `to`: a hard link (atomic, fails if `to`
/// exists) then removal of `from`. Across file systems, copies to a temp file beside `to`, checks the
/// copy's hash, then links it.
fn place(from: &Path, to: &Path, sha256: &[u8; 32]) -> Result<(), StoreError> {
    match link_no_replace(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = temp_path_for(to);
            let copied = copy_durably(from, &tmp, sha256)
                .and_then(|()| link_no_replace(&tmp, to).map_err(|e| link_error(e, to)));
            let _ = fs::remove_file(&tmp);
            copied?;
        }
        Err(e) => return Err(link_error(e, to)),
    }
    fsync_parent(to)?;
    remove_if_present(from)?;
    fsync_parent(from)
}

fn link_error(e: io::Error, to: &Path) -> StoreError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        StoreError::Occupied {
            path: to.to_owned(),
        }
    } else {
        io_err("move the archive into place at", to)(e)
    }
}

/// `link(2)`, falling back on file systems without hard links to a rename after checking that `to`
/// does not exist (the store has one writer, so nothing creates `to` in between).
fn link_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        other => other,
    }
}

fn copy_durably(from: &Path, tmp: &Path, sha256: &[u8; 32]) -> Result<(), StoreError> {
    let mut src = File::open(from).map_err(io_err("read", from))?;
    let mut dst = crate::private_fs::create_new(tmp).map_err(io_err("create", tmp))?;
    io::copy(&mut src, &mut dst).map_err(io_err("copy into", tmp))?;
    dst.sync_all().map_err(io_err("flush to disk", tmp))?;
    let (_, copied) = hash_file(tmp).map_err(io_err("read", tmp))?;
    if &copied != sha256 {
        return Err(StoreError::HashMismatch {
            path: tmp.to_owned(),
            expected: hex::encode(sha256),
            actual: hex::encode(copied),
        });
    }
    Ok(())
}

mod rfc3339 {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

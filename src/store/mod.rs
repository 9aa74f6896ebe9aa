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
mod commit;
pub mod deep;
pub mod extract;
mod ledger;
mod listing;
pub mod lock;
mod names;
mod prune;
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
pub use ledger::{Entry as LedgerEntry, LEDGER_FILE, Ledger, Pending};
pub use names::{MAX_COMPONENT_BYTES, NameError, safe_component, sanitize_for_filename};
pub use retention::{Decision, RetentionPolicy, plan};
pub use securetar::{Keys, SecureTarError};
pub use stream_verify::StreamVerifier;

pub(crate) use archive::hash_file;
use commit::write_atomic;
use listing::subdirs;

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

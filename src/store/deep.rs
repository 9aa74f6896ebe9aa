//! `verify --deep`: the proof that a restore would bring the house back. A stored archive is
//! verified as usual (SHA-256 against its manifest, every inner archive read to its end), then
//! unpacked with [`super::extract`] into a private temporary folder inside the store, where the
//! recorder database gets SQLite's `PRAGMA integrity_check` and every `.storage` file is parsed as
//! JSON. Each check reports what it proved, and a check that could not run says so.
//!
//! The temporary folder holds the backup's secrets in the clear: it is created 0700 and removed
//! when the check ends, on error, on a panic, and on an interruption (through [`Cancel`]); a folder
//! left by a process that was killed outright is removed by the next deep check. This module never
//! writes anything else into the store and never changes a stored archive or manifest.

use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use super::extract::{ExtractOptions, extract};
use super::{Keys, Store, StoreError, StoredArchive, Verify, parse_backup_json};

/// Where the recorder database sits in an unpacked backup.
pub const DATABASE: &str = "homeassistant/data/home-assistant_v2.db";
/// Where Home Assistant's own JSON state sits in an unpacked backup.
pub const STORAGE: &str = "homeassistant/data/.storage";

/// Prefix of the temporary folders, followed by the owner's process id.
const SCRATCH_PREFIX: &str = ".hapull-deep-";
/// How many lines of SQLite's integrity report are shown.
const SHOWN_PROBLEMS: usize = 5;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed(String),
    Failed(String),
    /// The backup does not contain what this check reads (e.g. a backup without the database).
    NotIncluded(String),
    /// The check could not run (an earlier step failed, or the run was interrupted).
    NotRun(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed(_) => "ok",
            Outcome::Failed(_) => "FAILED",
            Outcome::NotIncluded(_) => "not included",
            Outcome::NotRun(_) => "NOT RUN",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Outcome::Passed(d)
            | Outcome::Failed(d)
            | Outcome::NotIncluded(d)
            | Outcome::NotRun(d) => d,
        }
    }
}

/// One named check of a deep verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `archive`, `unpack`, `database`, `storage` or `cleanup`.
    pub name: &'static str,
    pub outcome: Outcome,
}

/// What a deep verification of one archive proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepReport {
    pub relative_path: String,
    pub checks: Vec<Check>,
}

impl DeepReport {
    /// True when no check failed and none was left unrun. A part the backup does not include is
    /// not a failure; it is reported as such.
    pub fn passed(&self) -> bool {
        self.checks
            .iter()
            .all(|c| matches!(c.outcome, Outcome::Passed(_) | Outcome::NotIncluded(_)))
    }
}

/// How a deep verification ended, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed (or the backup does not include what it reads).
    Passed,
    /// A check found a problem.
    Failed,
    /// Nothing failed, but a check could not run: interrupted, or not enough free space.
    NotRun,
}

impl DeepReport {
    pub fn verdict(&self) -> Verdict {
        if self.passed() {
            Verdict::Passed
        } else if self
            .checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Failed(_)))
        {
            Verdict::Failed
        } else {
            Verdict::NotRun
        }
    }
}

/// How many archive bytes are unpacked between two looks at the free space.
const SPACE_CHECK_EVERY: u64 = 1 << 20;

/// Lets another thread stop a deep verification (Ctrl-C): the unpack stops at its next read, a
/// running SQLite check is interrupted, and the temporary folder is removed before returning.
/// It also bounds the disk use ([`Cancel::keeping_free`]).
#[derive(Default)]
pub struct Cancel {
    flag: AtomicBool,
    sqlite: Mutex<Option<rusqlite::InterruptHandle>>,
    /// Free space the unpack must leave in the store (0: no limit).
    reserve: u64,
    low_space: AtomicBool,
}

impl Cancel {
    /// A deep verification that does not start unless the store has room for the archive's size
    /// plus `reserve`, and stops (reported as not run, never as a failure) when unpacking would
    /// leave less than `reserve` free.
    pub fn keeping_free(reserve: u64) -> Cancel {
        Cancel {
            reserve,
            ..Cancel::default()
        }
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Ok(mut h) = self.sqlite.lock()
            && let Some(h) = h.take()
        {
            h.interrupt();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Verifies `archive` deeply; see the module documentation. `Err` only when the temporary folder
/// cannot be made or the archive cannot be read at all; every finding is a [`Check`].
pub fn deep_verify(
    store: &Store,
    archive: &StoredArchive,
    mut keys: Option<&mut Keys>,
    cancel: &Cancel,
) -> Result<DeepReport, StoreError> {
    let mut report = DeepReport {
        relative_path: archive.relative_path.clone(),
        checks: Vec::new(),
    };
    let mut add = |name, outcome| report.checks.push(Check { name, outcome });

    let plain = store.verify_with(archive, Some(Verify::Full), keys.as_deref_mut())?;
    if !plain.is_ok() {
        add("archive", Outcome::Failed(plain.problems.join("; ")));
        not_run(&mut add, "the archive failed its verification");
        return Ok(report);
    }
    let level = plain.level.map_or("hashed", super::Level::as_str);
    add(
        "archive",
        Outcome::Passed(format!(
            "{level}: sha256 {} matches the manifest{}",
            plain.actual_sha256,
            plain
                .warnings
                .iter()
                .map(|w| format!("; {w}"))
                .collect::<String>()
        )),
    );

    remove_abandoned_scratch(store.root());
    if cancel.reserve > 0 {
        // The unpacked backup is at least about as big as the archive (it is compressed); the
        // guard during the unpack holds the rest of the bound.
        let free = crate::private_fs::available_space(store.root()).unwrap_or(0);
        let needed = archive.manifest.size.saturating_add(cancel.reserve);
        if free < needed {
            add(
                "unpack",
                Outcome::NotRun(format!(
                    "not enough free space in the store to unpack: {free} bytes free, at least \
                     {needed} needed (the archive's size plus {} kept free); free some space",
                    cancel.reserve
                )),
            );
            not_run(&mut add, "the backup was not unpacked");
            return Ok(report);
        }
    }
    let scratch = Scratch::create(store.root())?;
    let file = fs::File::open(&archive.path).map_err(|source| StoreError::Io {
        action: "read",
        path: archive.path.clone(),
        source,
    })?;
    let unpacked = extract(
        Cancellable {
            inner: file,
            cancel,
            scratch: &scratch.path,
            since_check: 0,
        },
        &scratch.path,
        ExtractOptions {
            keys,
            overwrite: false,
            progress: None,
        },
    );
    match unpacked {
        Ok(s) => {
            add(
                "unpack",
                Outcome::Passed(format!(
                    "{} ({} files, {} bytes) unpacked into a private temporary folder",
                    s.parts.join(", "),
                    s.files,
                    s.bytes
                )),
            );
            let excluded = fs::read(scratch.path.join("backup.json"))
                .ok()
                .and_then(|j| parse_backup_json(&j).ok())
                .and_then(|b| b.homeassistant)
                .and_then(|h| h.exclude_database)
                == Some(true);
            add("database", check_database(&scratch.path, excluded, cancel));
            add("storage", check_storage(&scratch.path, cancel));
        }
        // The extractor's error only echoes the interruption; it says nothing about the backup.
        Err(_) if cancel.low_space.load(Ordering::SeqCst) => {
            let why = format!(
                "stopped: unpacking would have left less than {} bytes free in the store; free \
                 some space",
                cancel.reserve
            );
            add("unpack", Outcome::NotRun(why.clone()));
            not_run(&mut add, &why);
        }
        Err(_) if cancel.is_cancelled() => {
            add("unpack", Outcome::NotRun("interrupted".to_owned()));
            not_run(&mut add, "interrupted");
        }
        Err(e) => {
            add("unpack", Outcome::Failed(e.to_string()));
            not_run(&mut add, "the backup could not be unpacked");
        }
    }
    if let Err(e) = scratch.remove() {
        add("cleanup", Outcome::Failed(e));
    }
    Ok(report)
}

fn not_run(add: &mut impl FnMut(&'static str, Outcome), why: &str) {
    add("database", Outcome::NotRun(why.to_owned()));
    add("storage", Outcome::NotRun(why.to_owned()));
}

fn check_database(dir: &Path, excluded: bool, cancel: &Cancel) -> Outcome {
    let db = dir.join(DATABASE);
    match fs::symlink_metadata(&db) {
        Ok(md) if md.file_type().is_file() => {}
        Ok(_) => return Outcome::Failed(format!("{DATABASE} is not a regular file")),
        Err(_) if excluded => {
            return Outcome::NotIncluded(format!(
                "the backup was made without the database (backup.json: exclude_database), so \
                 {DATABASE} was not checked"
            ));
        }
        Err(_) => {
            return Outcome::NotIncluded(format!(
                "no {DATABASE} in the backup (made without the database, or the recorder uses \
                 another database server): nothing was checked"
            ));
        }
    }
    if cancel.is_cancelled() {
        return Outcome::NotRun("interrupted".to_owned());
    }
    let size = fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    match integrity_check(&db, cancel) {
        Ok(lines) if lines == ["ok"] => Outcome::Passed(format!(
            "{DATABASE} ({size} bytes): PRAGMA integrity_check ok"
        )),
        Ok(lines) => {
            let mut shown: Vec<&str> = lines
                .iter()
                .take(SHOWN_PROBLEMS)
                .map(String::as_str)
                .collect();
            let more = lines.len().saturating_sub(SHOWN_PROBLEMS);
            let more = if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            };
            if shown.is_empty() {
                shown.push("no answer");
            }
            Outcome::Failed(format!(
                "{DATABASE}: PRAGMA integrity_check: {}{more}",
                shown.join("; ")
            ))
        }
        Err(_) if cancel.is_cancelled() => Outcome::NotRun("interrupted".to_owned()),
        Err(e) => Outcome::Failed(format!("{DATABASE}: SQLite: {e}")),
    }
}

/// SQLite's own integrity report: `["ok"]` for a sound database, else one line per problem.
fn integrity_check(db: &Path, cancel: &Cancel) -> rusqlite::Result<Vec<String>> {
    use rusqlite::{Connection, OpenFlags};
    // Read-write on the private copy, as Home Assistant would open it after a restore: a
    // write-ahead log or hot journal in the backup is applied first, then checked.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    if let Ok(mut h) = cancel.sqlite.lock() {
        *h = Some(conn.get_interrupt_handle());
    }
    // A cancel between the check above and storing the handle would be missed otherwise.
    if cancel.is_cancelled() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
            None,
        ));
    }
    let result = (|| {
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    if let Ok(mut h) = cancel.sqlite.lock() {
        *h = None;
    }
    result
}

fn check_storage(dir: &Path, cancel: &Cancel) -> Outcome {
    let root = dir.join(STORAGE);
    if !fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
        return Outcome::NotIncluded(format!(
            "no {STORAGE} folder in the backup: nothing was parsed"
        ));
    }
    let mut files = Vec::new();
    let mut skipped = 0usize;
    if let Err(e) = walk(&root, &mut files, &mut skipped) {
        return Outcome::Failed(format!("cannot list {STORAGE}: {e}"));
    }
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        if cancel.is_cancelled() {
            return Outcome::NotRun("interrupted".to_owned());
        }
        let rel = f.strip_prefix(dir).unwrap_or(f).display().to_string();
        let parsed = fs::File::open(f)
            .map_err(|e| e.to_string())
            .and_then(|file| {
                serde_json::from_reader::<_, serde::de::IgnoredAny>(BufReader::new(file))
                    .map(drop)
                    .map_err(|e| format!("not valid JSON: {e}"))
            });
        if let Err(why) = parsed {
            failures.push(format!("{rel}: {why}"));
        }
    }
    let skipped = if skipped > 0 {
        format!(" ({skipped} entries that are not regular files skipped)")
    } else {
        String::new()
    };
    if failures.is_empty() {
        Outcome::Passed(format!(
            "{} {STORAGE} files parsed as JSON{skipped}",
            files.len()
        ))
    } else {
        Outcome::Failed(format!(
            "{} of {} {STORAGE} files are not valid JSON: {}{skipped}",
            failures.len(),
            files.len(),
            failures.join("; ")
        ))
    }
}

/// Regular files under `dir`, recursively; links and other entries are counted, not followed.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut usize) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() {
            files.push(entry.path());
        } else if kind.is_dir() {
            walk(&entry.path(), files, skipped)?;
        } else {
            *skipped += 1;
        }
    }
    Ok(())
}

/// The temporary folder; removed on drop (errors, panics) and by [`Scratch::remove`].
struct Scratch {
    path: PathBuf,
    removed: bool,
}

impl Scratch {
    fn create(store_root: &Path) -> Result<Scratch, StoreError> {
        let path = store_root.join(format!(
            "{SCRATCH_PREFIX}{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| StoreError::Io {
                action: "create the temporary folder",
                path: path.clone(),
                source,
            })?;
        // The mode given to mkdir is filtered by the umask; set it exactly.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(|source| {
            StoreError::Io {
                action: "make private",
                path: path.clone(),
                source,
            }
        })?;
        Ok(Scratch {
            path,
            removed: false,
        })
    }

    fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        fs::remove_dir_all(&self.path).map_err(|e| {
            format!(
                "cannot remove the temporary folder {} ({e}): it holds the unpacked backup, \
                 delete it by hand",
                self.path.display()
            )
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = fs::remove_dir_all(&self.path)
        {
            warn!(path = %self.path.display(), error = %e, "cannot remove the temporary folder of a deep verification; delete it by hand");
        }
    }
}

/// Removes temporary folders whose process is gone (killed before it could clean up).
fn remove_abandoned_scratch(store_root: &Path) {
    let Ok(entries) = fs::read_dir(store_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 sends nothing; it only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && entry.file_type().is_ok_and(|t| t.is_dir()) {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    warn!(path = %entry.path().display(), "removed the temporary folder of an interrupted deep verification")
                }
                Err(e) => {
                    warn!(path = %entry.path().display(), error = %e, "cannot remove an abandoned temporary folder")
                }
            }
        }
    }
}

/// A reader that fails once [`Cancel::cancel`] was called, so an unpack stops promptly, and once
/// the free space in the temporary folder falls below the reserve.
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a Cancel,
    scratch: &'a Path,
    since_check: u64,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("interrupted"));
        }
        if self.cancel.reserve > 0 && self.since_check >= SPACE_CHECK_EVERY {
            self.since_check = 0;
            let free = crate::private_fs::available_space(self.scratch).unwrap_or(0);
            if free < self.cancel.reserve {
                self.cancel.low_space.store(true, Ordering::SeqCst);
                self.cancel.cancel();
                return Err(io::Error::other("not enough free space"));
            }
        }
        let n = self.inner.read(buf)?;
        self.since_check += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch_dirs(root: &Path) -> Vec<String> {
        fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(SCRATCH_PREFIX))
            .collect()
    }

    #[test]
    fn the_temporary_folder_is_private_and_removed_even_on_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let caught = std::panic::catch_unwind(|| {
            let s = Scratch::create(&root).unwrap();
            assert_eq!(fs::metadata(&s.path).unwrap().mode() & 0o777, 0o700);
            fs::create_dir(s.path.join("homeassistant")).unwrap();
            fs::write(s.path.join("homeassistant/secrets.yaml"), "x").unwrap();
            assert_eq!(scratch_dirs(&root).len(), 1);
            panic!("in the middle of a check");
        });
        assert!(caught.is_err());
        assert!(scratch_dirs(&root).is_empty());
    }

    #[test]
    fn folders_of_dead_processes_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        // A process id that cannot exist (above the kernel's pid_max limit of 2^22).
        let dead = tmp
            .path()
            .join(format!("{SCRATCH_PREFIX}99999999-0000000000000001"));
        let live = tmp.path().join(format!(
            "{SCRATCH_PREFIX}{}-0000000000000002",
            std::process::id()
        ));
        for d in [&dead, &live] {
            fs::create_dir_all(d.join("homeassistant")).unwrap();
        }
        let other = tmp.path().join(".hapull-tmp-x");
        fs::write(&other, "").unwrap();
        remove_abandoned_scratch(tmp.path());
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn a_reader_stops_when_free_space_falls_below_the_reserve() {
        let tmp = tempfile::tempdir().unwrap();
        let cancel = Cancel::keeping_free(u64::MAX / 2);
        let data = vec![0u8; 3 * SPACE_CHECK_EVERY as usize];
        let mut r = Cancellable {
            inner: &data[..],
            cancel: &cancel,
            scratch: tmp.path(),
            since_check: 0,
        };
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(err.to_string(), "not enough free space");
        assert!(cancel.is_cancelled() && cancel.low_space.load(Ordering::SeqCst));
    }

    #[test]
    fn a_cancelled_reader_fails_at_once() {
        let cancel = Cancel::default();
        let mut r = Cancellable {
            inner: &b"abc"[..],
            cancel: &cancel,
            scratch: Path::new("/"),
            since_check: 0,
        };
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        cancel.cancel();
        assert!(r.read(&mut buf).is_err());
    }
}

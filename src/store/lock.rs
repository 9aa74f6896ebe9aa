//! One writer per store: an exclusive `flock` on `<store>/.hapull.lock`, held for the life of every
//! process that writes the store, its ledger or the audit log. The lock file also says who holds it
//! (pid, command, since when), so a second process can name the holder when it is refused.
//!
//! The kernel releases the lock when the holder exits or dies, so there is no stale lock to clean up:
//! the holder text in the file is only believed while the lock is actually held.
//!
//! Taking the lock and writing the holder's name are one step for everyone else: both happen under a
//! short exclusive lock on a second file (`.hapull.claim`), and a refused process reads the name under
//! a shared lock on it, so it never reads the name half-written or not yet written.
//!
//! This module must not decide what to do about a busy store (refuse, wait, hint): the caller does.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// File name of the lock in the store's root.
pub const LOCK_FILE: &str = ".hapull.lock";
/// File whose short lock makes "take the lock, write the holder" one step for readers of the holder.
pub const CLAIM_FILE: &str = ".hapull.claim";

/// Who holds (or last held) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// The command, e.g. `run` or `once`.
    pub command: String,
    /// RFC 3339, UTC.
    pub since: String,
}

impl Holder {
    /// True when the holder is the daemon, which keeps the lock for as long as it runs.
    pub fn is_daemon(&self) -> bool {
        self.command == "run"
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`hapull {}` (pid {}, since {})",
            self.command, self.pid, self.since
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock. `holder` is `None` when it has not written its name yet.
    #[error("the store {} is in use by {}; one process writes a store at a time", dir.display(), holder.as_ref().map_or_else(|| "another hapull process (starting up)".to_string(), Holder::to_string))]
    Busy {
        dir: PathBuf,
        holder: Option<Holder>,
    },
    #[error("store lock {}: {action} failed: {source}; check that the store folder exists and is writable by this user", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The held lock. Dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Takes the lock of the store at `dir` (creating the folder and the lock file if needed) without
    /// waiting; [`LockError::Busy`] names the holder when another process has it.
    pub fn try_acquire(dir: &Path, command: &str) -> Result<StoreLock, LockError> {
        let (mut file, path) = open(dir, LOCK_FILE)?;
        let (claim_file, claim_path) = open(dir, CLAIM_FILE)?;
        // Exclusive only for the instant of taking the lock and writing the name.
        claim_file
            .lock()
            .map_err(|e| io_err(&claim_path, "locking", e))?;
        let taken = match file.try_lock() {
            Ok(()) => claim(file, path, command),
            Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Busy {
                dir: dir.to_path_buf(),
                holder: read_holder(&mut file),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path, "locking", e)),
        };
        let _ = claim_file.unlock();
        taken
    }

    /// Takes the lock, waiting as long as it takes. Blocking: call from `spawn_blocking`.
    pub fn acquire_blocking(dir: &Path, command: &str) -> Result<StoreLock, LockError> {
        loop {
            match StoreLock::try_acquire(dir, command) {
                Err(LockError::Busy { .. }) => {}
                other => return other,
            }
            // Wait for the holder to let go (without holding the claim lock meanwhile), then claim
            // properly; another waiter may win that race, and then this one waits again.
            let (file, path) = open(dir, LOCK_FILE)?;
            file.lock().map_err(|e| io_err(&path, "locking", e))?;
            drop(file);
        }
    }

    /// Who holds the lock of the store at `dir` right now, if anyone (`Ok(None)` when it is free).
    /// Never creates anything.
    pub fn holder(dir: &Path) -> Result<Option<Holder>, LockError> {
        let path = dir.join(LOCK_FILE);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "opening", e)),
        };
        // Under the claim lock: a process in the middle of taking the lock has written its name, and
        // none can try to take it while this probe briefly holds it shared.
        let claim_file = File::open(dir.join(CLAIM_FILE)).ok();
        if let Some(c) = &claim_file {
            let _ = c.lock();
        }
        let held = match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                Ok(None)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(read_holder(&mut file)),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path, "checking", e)),
        };
        if let Some(c) = &claim_file {
            let _ = c.unlock();
        }
        held
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock anyway; unlocking first makes it prompt even if
        // another descriptor of this file were still open somewhere in the process.
        let _ = self.file.unlock();
    }
}

fn io_err(path: &Path, action: &'static str, source: io::Error) -> LockError {
    LockError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn open(dir: &Path, name: &str) -> Result<(File, PathBuf), LockError> {
    crate::private_fs::create_dir_all(dir)
        .map_err(|e| io_err(dir, "creating the store folder", e))?;
    let path = dir.join(name);
    // Never truncate before holding the lock: that would erase the holder's name.
    let file = crate::private_fs::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err(&path, "opening", e))?;
    crate::private_fs::make_private(&file).map_err(|e| io_err(&path, "setting mode 0600 on", e))?;
    Ok((file, path))
}

fn claim(mut file: File, path: PathBuf, command: &str) -> Result<StoreLock, LockError> {
    let holder = Holder {
        pid: std::process::id(),
        command: command.to_string(),
        since: Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    };
    let mut text = serde_json::to_vec(&holder).unwrap_or_default();
    text.push(b'\n');
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(&text));
    written.map_err(|e| io_err(&path, "writing the holder to", e))?;
    Ok(StoreLock { file, path })
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(4096).read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = StoreLock::try_acquire(dir.path(), "once").unwrap();
        let err = StoreLock::try_acquire(dir.path(), "prune").unwrap_err();
        let LockError::Busy { holder, .. } = &err else {
            panic!("{err}")
        };
        let holder = holder.as_ref().expect("holder named");
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(holder.command, "once");
        assert!(err.to_string().contains("`hapull once`"), "{err}");
        assert_eq!(
            StoreLock::holder(dir.path()).unwrap().map(|h| h.command),
            Some("once".into())
        );
        drop(held);
        assert_eq!(StoreLock::holder(dir.path()).unwrap(), None);
        let again = StoreLock::try_acquire(dir.path(), "prune").unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
    }
}

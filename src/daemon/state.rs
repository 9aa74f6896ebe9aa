//! The small state file: when the last scheduled run was due, when the last cycle succeeded or
//! failed (written by the daemon and by `hapull once` / `hapull pull`), when the daemon started, how
//! many failed cycles were retried and which retry is due, and the last deep verification's verdict
//! (so `[store] deep_verify = "7d"` counts from it across restarts, and health can report a failure).
//!
//! It lets a restarted daemon catch up a run missed while the machine was down, and lets
//! `hapull health` (a separate process) judge health by the same rule as `/healthz`. It holds only
//! timestamps, never secrets, and it is not the audit log: losing it costs at most one extra run.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Reading or writing the state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the state file {path} is damaged ({reason}); delete it (it only holds the last run and success times) and hapull will start afresh"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "cannot write the state file {path}: {source}; check that the folder exists and is writable by hapull"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the state file records. Missing values are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// The scheduled instant of the last run the scheduler handled (started or skipped).
    pub last_scheduled_run: Option<Timestamp>,
    /// When the last cycle succeeded.
    pub last_success: Option<Timestamp>,
    /// When the daemon last started.
    pub started_at: Option<Timestamp>,
    /// When the last cycle failed (informational: health is judged by the last success).
    pub last_failure: Option<Timestamp>,
    /// Retries of failed cycles, counted over the daemon's whole life (kept across restarts).
    pub retries: u64,
    /// A retry that is waiting to run: which attempt, and when.
    pub pending_retry: Option<RetryAt>,
    /// The last deep verification that reached a verdict (passed or failed).
    pub last_deep_verify: Option<DeepVerdict>,
    /// When a deep verification last passed.
    pub last_deep_verify_success: Option<Timestamp>,
}

/// The verdict of a deep verification that ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeepVerdict {
    pub at: Timestamp,
    pub passed: bool,
}

/// A retry of a failed cycle that is due at `at`; `attempt` 2 is the first retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAt {
    pub attempt: u32,
    pub at: Timestamp,
}

#[derive(Serialize, Deserialize, Default)]
struct OnDisk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_scheduled_run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_success: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_failure: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    retries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_retry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_deep_verify: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_deep_verify_passed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_deep_verify_success: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl State {
    /// Reads the state at `path`; a file that does not exist yet is an empty state.
    pub fn read(path: &Path) -> Result<State, StateError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let damaged = |reason: String| StateError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let disk: OnDisk = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        let ts = |name: &str, v: Option<String>| -> Result<Option<Timestamp>, StateError> {
            v.map(|s| {
                s.parse::<Timestamp>()
                    .map_err(|e| damaged(format!("{name} {s:?} is not a timestamp: {e}")))
            })
            .transpose()
        };
        let next_retry = ts("next_retry", disk.next_retry)?;
        let deep_at = ts("last_deep_verify", disk.last_deep_verify)?;
        Ok(State {
            last_scheduled_run: ts("last_scheduled_run", disk.last_scheduled_run)?,
            last_success: ts("last_success", disk.last_success)?,
            started_at: ts("started_at", disk.started_at)?,
            last_failure: ts("last_failure", disk.last_failure)?,
            retries: disk.retries,
            pending_retry: match (disk.retry_attempt, next_retry) {
                (Some(attempt), Some(at)) => Some(RetryAt { attempt, at }),
                _ => None,
            },
            last_deep_verify: match (deep_at, disk.last_deep_verify_passed) {
                (Some(at), Some(passed)) => Some(DeepVerdict { at, passed }),
                _ => None,
            },
            last_deep_verify_success: ts(
                "last_deep_verify_success",
                disk.last_deep_verify_success,
            )?,
        })
    }

    /// Writes the state to `path` so that a crash leaves either the old or the new file: a
    /// temporary file in the same folder, fsync, rename, fsync the folder.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let werr = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let disk = OnDisk {
            last_scheduled_run: self.last_scheduled_run.map(|t| t.to_string()),
            last_success: self.last_success.map(|t| t.to_string()),
            started_at: self.started_at.map(|t| t.to_string()),
            last_failure: self.last_failure.map(|t| t.to_string()),
            retries: self.retries,
            retry_attempt: self.pending_retry.map(|r| r.attempt),
            next_retry: self.pending_retry.map(|r| r.at.to_string()),
            last_deep_verify: self.last_deep_verify.map(|d| d.at.to_string()),
            last_deep_verify_passed: self.last_deep_verify.map(|d| d.passed),
            last_deep_verify_success: self.last_deep_verify_success.map(|t| t.to_string()),
        };
        let mut text =
            serde_json::to_string_pretty(&disk).map_err(|e| werr(std::io::Error::other(e)))?;
        text.push('\n');
        crate::private_fs::write_atomic(path, text.as_bytes()).map_err(werr)
    }
}

/// The state file shared by the scheduler and the status code of one daemon: every update is
/// written through at once. Cheap to clone. Writes are small and synchronous.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: Arc<PathBuf>,
    state: Arc<Mutex<State>>,
}

impl StateFile {
    /// Loads the state at `path` (empty if the file does not exist yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<StateFile, StateError> {
        let path = path.into();
        let state = State::read(&path)?;
        Ok(StateFile {
            path: Arc::new(path),
            state: Arc::new(Mutex::new(state)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state as last read or written.
    pub fn get(&self) -> State {
        *self.lock()
    }

    /// The state as the file holds it now: another process (`hapull once`) may have written it. A
    /// file that cannot be read leaves the last known state.
    pub fn reload(&self) -> State {
        let mut guard = self.lock();
        if let Ok(on_disk) = State::read(&self.path) {
            *guard = on_disk;
        }
        *guard
    }

    /// Records that the daemon started at `at`.
    pub fn record_start(&self, at: Timestamp) -> Result<(), StateError> {
        self.update(|s| s.started_at = Some(at))
    }

    /// Records that the scheduled run due at `at` was handled (started or skipped).
    pub fn record_scheduled_run(&self, at: Timestamp) -> Result<(), StateError> {
        self.update(|s| s.last_scheduled_run = Some(at))
    }

    /// Records a successful cycle that finished at `at` (no retry is pending any more).
    pub fn record_success(&self, at: Timestamp) -> Result<(), StateError> {
        self.update(|s| {
            s.last_success = Some(at);
            s.pending_retry = None;
        })
    }

    /// Records that a failed cycle will be retried (counted in `retries`).
    pub fn record_retry(&self, retry: RetryAt) -> Result<(), StateError> {
        self.update(|s| {
            s.retries = s.retries.saturating_add(1);
            s.pending_retry = Some(retry);
        })
    }

    /// Records that no retry is pending (the cycle failed for good, or shutdown came first).
    pub fn clear_retry(&self) -> Result<(), StateError> {
        if self.get().pending_retry.is_none() {
            return Ok(());
        }
        self.update(|s| s.pending_retry = None)
    }

    /// Records the verdict of a deep verification.
    pub fn record_deep_verify(&self, verdict: DeepVerdict) -> Result<(), StateError> {
        self.update(|s| {
            s.last_deep_verify = Some(verdict);
            if verdict.passed {
                s.last_deep_verify_success = Some(verdict.at);
            }
        })
    }

    /// Forgets the last deep verdict (deep verification was turned off: a failure of long ago
    /// must not keep health red forever). The last success time stays.
    pub fn clear_deep_verify(&self) -> Result<(), StateError> {
        if self.get().last_deep_verify.is_none() {
            return Ok(());
        }
        self.update(|s| s.last_deep_verify = None)
    }

    /// Records a cycle that failed at `at`.
    pub fn record_failure(&self, at: Timestamp) -> Result<(), StateError> {
        self.update(|s| s.last_failure = Some(at))
    }

    fn update(&self, f: impl FnOnce(&mut State)) -> Result<(), StateError> {
        let mut guard = self.lock();
        // Start from what the file holds now, so a daemon and a one-shot command writing the same
        // file do not undo each other's records.
        let mut next = State::read(&self.path).unwrap_or(*guard);
        f(&mut next);
        next.write(&self.path)?;
        *guard = next;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data that is only replaced whole: a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

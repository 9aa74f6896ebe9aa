//! Pull and Commit: the one way an archive enters the store, for the new backup, a catch-up of an
//! earlier one, and the archives saved before the recipe's delete command.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::{At, Context, CycleError, Made, Step};
use crate::config::VerifyLevel;
use crate::store::{self, CommitInfo, Ledger, LedgerEntry, StoredArchive, Verify};
use crate::transfer::{self, PullOutcome};

impl Context {
    /// Pull, then Commit, each in its own span.
    pub(super) async fn save(
        &self,
        made: &Made,
        remote: &str,
    ) -> Result<(StoredArchive, PullOutcome), CycleError> {
        let id = &made.backup_id;
        let (local, pulled) = (self.pull(made, remote))
            .instrument(info_span!("pull", backup_id = %id))
            .await?;
        let archive = (self.commit(made, remote, &local, &pulled))
            .instrument(info_span!("commit", backup_id = %id))
            .await?;
        Ok((archive, pulled))
    }

    /// Pull into the store's incoming folder (resumable).
    pub(super) async fn pull(
        &self,
        made: &Made,
        remote: &str,
    ) -> Result<(PathBuf, PullOutcome), CycleError> {
        let local = self.store.incoming_path(&made.backup_id).at(Step::Pull)?;
        let mut opts = self.settings.pull.clone();
        opts.expected_size = made.backup.as_ref().and_then(|b| b.size);
        let outcome = transfer::pull_with(&self.ssh, &self.identity, remote, &local, &opts)
            .await
            .at(Step::Pull)?;
        info!(bytes = outcome.size, secs = outcome.duration.as_secs_f64(), sha256 = %outcome.sha256_hex(), "pulled");
        self.record(
            "pull.finished",
            json!({"backup_id": made.backup_id, "remote": remote, "size": outcome.size, "sha256": outcome.sha256_hex(),
                   "duration_s": outcome.duration.as_secs_f64(), "attempts": outcome.attempts, "resumed_bytes": outcome.resumed_bytes}),
        )
        .await?;
        Ok((local, outcome))
    }

    /// Verify the archive and commit it with its manifest.
    pub(super) async fn commit(
        &self,
        made: &Made,
        remote: &str,
        local: &Path,
        pulled: &PullOutcome,
    ) -> Result<StoredArchive, CycleError> {
        let info = CommitInfo {
            backup_id: made.backup_id.clone(),
            size: pulled.size,
            sha256: pulled.sha256,
            pulled_at: Timestamp::now(),
            source_host: self.ssh.host.clone(),
            source_path: remote.to_string(),
            verify: match self.settings.verify {
                VerifyLevel::Full => Verify::Full,
                VerifyLevel::Structure => Verify::Structure,
            },
        };
        let store = self.store.clone();
        let local_owned = local.to_path_buf();
        let result = tokio::task::spawn_blocking(move || store.commit(&local_owned, &info))
            .await
            .map_err(|e| CycleError::refused(Step::Commit, format!("commit task failed: {e}")))?;
        let root = self.store.root();
        match result {
            Ok(archive) => {
                info!(path = %archive.path.display(), "verified and committed");
                if let Err(e) = Ledger::remember(root, LedgerEntry::Committed, &made.backup_id) {
                    warn!(error = %e, "cannot note the commit in the store's list of hapull's backups");
                }
                self.record(
                    "archive.committed",
                    json!({"backup_id": made.backup_id, "path": archive.relative_path, "sha256": archive.manifest.sha256, "size": archive.manifest.size}),
                )
                .await?;
                Ok(archive)
            }
            Err(e) => {
                // A damaged archive (not a full disk) is remembered, so the catch-up does not pull it
                // again every cycle; Home Assistant keeps it, hapull never deletes it.
                if matches!(
                    e,
                    store::StoreError::Archive { .. }
                        | store::StoreError::SizeMismatch { .. }
                        | store::StoreError::HashMismatch { .. }
                ) {
                    let _ = Ledger::remember(root, LedgerEntry::Rejected, &made.backup_id);
                }
                // A file that failed verification is not kept as if it were a backup; HA's copy stays.
                let _ = std::fs::remove_file(local);
                self.record(
                    "verify.failed",
                    json!({"backup_id": made.backup_id, "remote": remote, "error": e.to_string()}),
                )
                .await?;
                Err(e).at(Step::Commit)
            }
        }
    }

    /// The store holds a committed archive of this backup, whole.
    pub(super) fn has_verified_copy(&self, backup_id: &str) -> bool {
        match self.store.find(backup_id) {
            Ok(Some(a)) => std::fs::metadata(&a.path)
                .map(|m| m.len() == a.manifest.size)
                .unwrap_or(false),
            _ => false,
        }
    }
}

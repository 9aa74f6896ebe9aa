//! Pull and Commit: the one way an archive enters the store, for the new backup, a catch-up of an
//! earlier one, and the archives saved before the recipe's delete command.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jiff::Timestamp;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::{At, Context, CycleError, Made, Source, Step};
use crate::audit::Kind;
use crate::config::VerifyLevel;
use crate::store::{
    self, ArchiveError, ArchiveSummary, CommitInfo, Keys, Ledger, LedgerEntry, Level, StoreError,
    StoredArchive, StreamVerifier, Verify,
};
use crate::transfer::{self, ByteObserver, PullOutcome};

/// The store's verifier fed by the transfer's byte observer: the archive is verified in the same
/// pass that writes it, while the transfer stays ignorant of archives and the store of transfers.
struct VerifyFeed(StreamVerifier);

impl ByteObserver for VerifyFeed {
    fn observe(&mut self, bytes: Bytes) {
        self.0.feed(bytes);
    }
}

/// A pulled file and what its verification during the pull found.
pub(super) struct Pulled {
    outcome: PullOutcome,
    verdict: Result<ArchiveSummary, ArchiveError>,
}

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
        let Pulled { outcome, verdict } = pulled;
        let archive = (self.commit(made, remote, &local, &outcome, verdict))
            .instrument(info_span!("commit", backup_id = %id))
            .await?;
        Ok((archive, outcome))
    }

    fn verify_mode(&self) -> Verify {
        match self.settings.verify {
            VerifyLevel::Full => Verify::Full,
            VerifyLevel::Structure => Verify::Structure,
        }
    }

    /// Pull into the store's incoming folder (resumable).
    pub(super) async fn pull(
        &self,
        made: &Made,
        remote: &str,
    ) -> Result<(PathBuf, Pulled), CycleError> {
        let local = self.store.incoming_path(&made.backup_id).at(Step::Pull)?;
        let mut opts = self.settings.pull.clone();
        // The size of the copy on the agent pulled from, as `backup/info` lists it.
        opts.expected_size = made.backup.as_ref().and_then(|b| {
            match made.agent.as_deref().and_then(|a| b.on_agent(a)) {
                Some((size, _)) => size,
                None => b.size,
            }
        });
        // Shared by every attempt, so the Argon2 root key is derived once per backup.
        let keys =
            (self.settings.backup.password.clone()).map(|p| Arc::new(Mutex::new(Keys::new(p))));
        let mode = self.verify_mode();
        let new_verifier =
            || VerifyFeed(StreamVerifier::start(&made.backup_id, mode, keys.clone()));
        let (outcome, feed) = match &self.source {
            Source::Sftp { ssh, identity } => {
                transfer::pull_observed(ssh, identity, remote, &local, &opts, new_verifier).await
            }
            Source::Http { target, .. } => {
                transfer::download_observed(target, remote, &local, &opts, new_verifier).await
            }
        }
        .at(Step::Pull)?;
        let verifier = feed.0;
        let verdict = tokio::task::spawn_blocking(move || verifier.finish())
            .await
            .map_err(|e| CycleError::refused(Step::Commit, format!("verify task failed: {e}")))?;
        info!(bytes = outcome.size, secs = outcome.duration.as_secs_f64(), sha256 = %outcome.sha256_hex(), "pulled");
        self.record(
            Kind::PullFinished,
            json!({"backup_id": made.backup_id, "remote": remote, "size": outcome.size, "sha256": outcome.sha256_hex(),
                   "duration_s": outcome.duration.as_secs_f64(), "attempts": outcome.attempts, "resumed_bytes": outcome.resumed_bytes}),
        )
        .await?;
        Ok((local, Pulled { outcome, verdict }))
    }

    /// Commit the archive verified during the pull, with its manifest (no second read of the file).
    pub(super) async fn commit(
        &self,
        made: &Made,
        remote: &str,
        local: &Path,
        pulled: &PullOutcome,
        verdict: Result<ArchiveSummary, ArchiveError>,
    ) -> Result<StoredArchive, CycleError> {
        let result = match verdict {
            Err(source @ ArchiveError::WrongPassword { .. }) => Err(StoreError::WrongPassword {
                path: local.to_path_buf(),
                source,
            }),
            Err(source) => Err(StoreError::Archive {
                path: local.to_path_buf(),
                source,
            }),
            Ok(summary) => {
                let info = CommitInfo {
                    backup_id: made.backup_id.clone(),
                    size: pulled.size,
                    sha256: pulled.sha256,
                    pulled_at: Timestamp::now(),
                    source_host: self.source.host().to_string(),
                    source_path: remote.to_string(),
                    verify: self.verify_mode(),
                    password: None,
                    verified: Some(summary),
                };
                let store = self.store.clone();
                let local_owned = local.to_path_buf();
                tokio::task::spawn_blocking(move || store.commit(&local_owned, &info))
                    .await
                    .map_err(|e| {
                        CycleError::refused(Step::Commit, format!("commit task failed: {e}"))
                    })?
            }
        };
        let root = self.store.root();
        match result {
            Ok(archive) => {
                let level = archive.manifest.verified_str();
                info!(path = %archive.path.display(), verified = level, "verified and committed");
                if let Err(e) = Ledger::remember(root, LedgerEntry::Committed, &made.backup_id) {
                    warn!(error = %e, "cannot note the commit in the store's list of hapull's backups");
                }
                self.record(
                    Kind::ArchiveCommitted,
                    json!({"backup_id": made.backup_id, "path": archive.relative_path, "sha256": archive.manifest.sha256, "size": archive.manifest.size,
                           "verified": level, "protected": archive.manifest.protected, "securetar": archive.manifest.securetar}),
                )
                .await?;
                Ok(archive)
            }
            Err(e) => {
                // A damaged archive (not a full disk, not a wrong password) is remembered, so the
                // catch-up does not pull it again every cycle; Home Assistant keeps it, hapull
                // never deletes it. Once a wrong password is fixed, the next cycle pulls it again.
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
                    Kind::VerifyFailed,
                    json!({"backup_id": made.backup_id, "remote": remote, "error": e.to_string()}),
                )
                .await?;
                Err(e).at(Step::Commit)
            }
        }
    }

    /// The store holds a committed archive of this backup, whole.
    pub(super) fn has_verified_copy(&self, backup_id: &str) -> bool {
        self.stored_level(backup_id).is_some()
    }

    /// The level a whole committed archive of this backup was proven at, if the store has one.
    fn stored_level(&self, backup_id: &str) -> Option<Option<Level>> {
        match self.store.find(backup_id) {
            Ok(Some(a)) => std::fs::metadata(&a.path)
                .is_ok_and(|m| m.len() == a.manifest.size)
                .then_some(a.manifest.verified),
            _ => None,
        }
    }

    /// Why Home Assistant's copy of this backup must stay, if it must: no whole copy in the store,
    /// or one proven at less than `full` where the configuration asks for `full` (a protected
    /// backup committed without its password: its encrypted members were never read).
    pub(super) fn reason_to_keep_in_ha(&self, backup_id: &str) -> Option<&'static str> {
        match self.stored_level(backup_id) {
            None => Some("no verified local copy"),
            // A manifest from before levels were recorded: accepted as that version accepted it.
            Some(Some(Level::Full) | None) => None,
            Some(_) if self.settings.verify == VerifyLevel::Structure => None,
            Some(_) => Some(
                "the local copy is verified at structure level only (a protected backup and no [backup] password_file): set password_file to verify it fully",
            ),
        }
    }
}

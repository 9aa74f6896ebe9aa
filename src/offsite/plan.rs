//! What a target keeps: the plan over local and remote archives, the catch-up lag, and retention
//! (deleting the remote copies the plan drops).
//!
//! Retention must never delete the newest proven copy, a file hapull did not upload and prove (only
//! ledger entries are candidates), or anything while the local store does not hold the newest copy
//! verified; a refused deletion is recorded once and not retried.

use super::*;

impl Target {
    /// The archives (by backup id and SHA-256) the offsite rules keep, planned over everything known
    /// on either side, so uploads and deletions never work against each other.
    pub(super) fn plan(
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

    pub(super) async fn retention(
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
}

pub(super) fn lag(
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

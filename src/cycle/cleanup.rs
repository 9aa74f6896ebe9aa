//! CleanUpHa and Retention: delete hapull's own backups in Home Assistant beyond the newest
//! `keep_on_ha`, each only when its archive is in the store; then apply the local retention policy.

use serde_json::json;
use tracing::info;

use super::{At, Context, CycleError, Step};
use crate::audit::Kind;
use crate::config::BackupMode;
use crate::ha::{Backup, BackupApi};
use crate::store::Ledger;

impl Context {
    pub(super) async fn clean_up_ha(&self, api: BackupApi) -> Result<Vec<String>, CycleError> {
        if self.settings.backup.mode == BackupMode::Service {
            // The recipe's delete command is the clean-up in this mode.
            return Ok(Vec::new());
        }
        let ledger = Ledger::read(self.store.root())
            .map_err(|e| CycleError::refused(Step::CleanUpHa, e.to_string()))?;
        let mut ours: Vec<Backup> = (self.client.backup_info().await.at(Step::CleanUpHa)?)
            .backups
            .into_iter()
            .filter(|b| self.settings.backup.prune_foreign || ledger.made(&b.backup_id))
            .collect();
        ours.sort_by(|a, b| b.date.cmp(&a.date));
        let mut deleted = Vec::new();
        for b in ours
            .into_iter()
            .skip(self.settings.backup.keep_on_ha as usize)
        {
            if let Some(why) = self.reason_to_keep_in_ha(&b.backup_id) {
                info!(backup_id = %b.backup_id, "kept in Home Assistant: {why}");
                continue;
            }
            match api {
                BackupApi::Modern => self.client.backup_delete(&b.backup_id).await,
                BackupApi::Legacy { .. } => self.client.legacy_backup_remove(&b.backup_id).await,
            }
            .at(Step::CleanUpHa)?;
            info!(backup_id = %b.backup_id, "deleted from Home Assistant (a verified local copy exists)");
            self.record(
                Kind::HaDeleted,
                json!({"backup_id": b.backup_id, "name": b.name}),
            )
            .await?;
            deleted.push(b.backup_id);
        }
        Ok(deleted)
    }

    pub(super) async fn retention(&self) -> Result<Vec<String>, CycleError> {
        if self.settings.retention.keeps_everything() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let policy = self.settings.retention;
        let tz = self.settings.timezone.clone();
        let decisions = tokio::task::spawn_blocking(move || store.prune(&policy, &tz, false))
            .await
            .map_err(|e| CycleError::refused(Step::Retention, e.to_string()))?
            .at(Step::Retention)?;
        let mut pruned = Vec::new();
        for d in decisions.into_iter().filter(|d| !d.keep) {
            self.record(
                Kind::StorePruned,
                json!({"backup_id": d.archive.manifest.backup_id, "path": d.archive.relative_path}),
            )
            .await?;
            pruned.push(d.archive.manifest.backup_id);
        }
        Ok(pruned)
    }
}

//! CatchUp: hapull's own backups that an earlier, failed cycle left in Home Assistant without a local
//! copy are pulled now, so a bad hour does not leave a hole in the history (a few per cycle, newest
//! first). A failure here is logged and leaves the backup in Home Assistant; it never fails the cycle.

use tracing::{info, warn};

use super::{At, Context, CycleError, Made, Step};
use crate::config::BackupMode;
use crate::ha::BackupApi;
use crate::store::Ledger;

/// Earlier backups pulled per cycle at most, so one cycle stays bounded in time.
const MAX_PER_CYCLE: usize = 3;

impl Context {
    pub(super) async fn catch_up(
        &self,
        api: BackupApi,
        agent: Option<&str>,
    ) -> Result<Vec<String>, CycleError> {
        if self.settings.backup.mode == BackupMode::Service {
            // There the delete command already saved every archive; what HA still lists after it
            // removed the files has nothing left to pull.
            return Ok(Vec::new());
        }
        let ledger = Ledger::read(self.store.root())
            .map_err(|e| CycleError::refused(Step::CatchUp, e.to_string()))?;
        let mut missing: Vec<_> = (self.client.backup_info().await.at(Step::CatchUp)?)
            .backups
            .into_iter()
            // Only a failed cycle's backup that was never committed: one committed and since pruned
            // by retention is not pulled again, nor one already refused as damaged.
            .filter(|b| {
                ledger.made(&b.backup_id)
                    && !ledger.committed(&b.backup_id)
                    && !ledger.rejected(&b.backup_id)
                    && !self.has_verified_copy(&b.backup_id)
            })
            .collect();
        missing.sort_by(|a, b| b.date.cmp(&a.date));
        let mut saved = Vec::new();
        for b in missing.into_iter().take(MAX_PER_CYCLE) {
            let made = Made::listed(b, agent);
            let result = async {
                let remote = self.locate(api, &made).await?;
                self.save(&made, &remote).await
            }
            .await;
            match result {
                Ok((a, _)) => {
                    info!(backup_id = %made.backup_id, path = %a.relative_path, "pulled an earlier backup that had no local copy");
                    saved.push(made.backup_id);
                }
                Err(e) => {
                    warn!(backup_id = %made.backup_id, error = %e, "an earlier backup still has no local copy; it stays in Home Assistant")
                }
            }
        }
        Ok(saved)
    }
}

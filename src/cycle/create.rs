//! Create: ask Home Assistant for a backup (modern `backup/generate`, legacy blocking generate, or the
//! recipe's service calls in [`super::service_mode`]) and record its id in the store's ledger before
//! anything else happens to it.

use jiff::Timestamp;
use serde_json::json;
use tracing::info;

use super::{At, Context, CycleError, Made, Step};
use crate::audit::Kind;
use crate::config::BackupMode;
use crate::ha::{BackupApi, GenerateRequest, Subscription};
use crate::store::{Ledger, LedgerEntry, safe_component};

impl Context {
    pub(super) async fn create(
        &self,
        api: BackupApi,
        sub: Option<&mut Subscription>,
    ) -> Result<Made, CycleError> {
        // Events of earlier jobs (one that was running when the cycle started) must not be taken for
        // ours: the manager was idle when this was called, so what is buffered is history.
        if let Some(sub) = sub {
            let old = sub.drain();
            if !old.is_empty() {
                info!(
                    events = old.len(),
                    "discarding backup events from before this cycle's backup"
                );
            }
        }
        let made = match (self.settings.mode, api) {
            (BackupMode::Api, BackupApi::Modern) => self.generate().await?,
            (BackupMode::Api, BackupApi::Legacy { .. }) => {
                info!(
                    path = "legacy backup/generate",
                    "this Home Assistant has the legacy backup API (no events); its backup/generate blocks until the backup is made"
                );
                let b = (self
                    .client
                    .legacy_backup_generate(self.settings.timeout)
                    .await)
                    .at(Step::Create)?;
                Made::listed(b)
            }
            (BackupMode::Service, _) => self.create_by_services().await?,
        };
        let id = safe_component(&made.backup_id).map_err(|e| {
            CycleError::refused(
                Step::Create,
                format!("Home Assistant gave an unusable backup id: {e}"),
            )
        })?;
        Ledger::remember(self.store.root(), LedgerEntry::Made, &id).map_err(|e| {
            CycleError::refused(
                Step::Create,
                format!("cannot record the new backup id in the store: {e}"),
            )
        })?;
        self.record(Kind::BackupCreated, json!({"backup_id": id}))
            .await?;
        Ok(made)
    }

    async fn generate(&self) -> Result<Made, CycleError> {
        let name = self.backup_name();
        info!(path = "backup/generate", %name, "asking Home Assistant for a backup");
        let job = self
            .client
            .backup_generate(&GenerateRequest {
                agent_ids: vec!["backup.local".into()],
                name: Some(name.clone()),
                include_database: Some(self.settings.include_database),
                password: self.settings.password.clone(),
            })
            .await
            .at(Step::Create)?;
        Ok(Made {
            backup_id: job,
            requested_name: Some(name),
            backup: None,
        })
    }

    fn backup_name(&self) -> String {
        let now = Timestamp::now().to_zoned(self.settings.timezone.clone());
        self.settings
            .name_template
            .replace("{date}", &now.strftime("%Y-%m-%d %H.%M").to_string())
    }
}

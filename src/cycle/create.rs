//! Create: ask Home Assistant for a backup (modern `backup/generate`, legacy blocking generate, or the
//! recipe's service calls in [`super::service_mode`]) and record its id in the store's ledger before
//! anything else happens to it. In `api` mode the request itself is recorded (a pending entry, see
//! [`super::pending`]) before it is sent, so a process stopped at any moment leaves no backup of
//! hapull's unrecorded.

use jiff::Timestamp;
use serde_json::json;
use tracing::{info, warn};

use super::{At, Context, CycleError, Made, Step};
use crate::audit::Kind;
use crate::config::BackupMode;
use crate::ha::{BackupApi, GenerateRequest, HaError, Install, Subscription};
use crate::store::{Ledger, safe_component};

impl Context {
    pub(super) async fn create(
        &self,
        api: BackupApi,
        agent: Option<String>,
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
        let made = match (self.settings.backup.mode, api) {
            (BackupMode::Api, BackupApi::Modern) => self.generate(agent).await?,
            (BackupMode::Api, BackupApi::Legacy { .. }) => {
                // The legacy API has no password: going on would make an unencrypted backup the
                // user did not ask for.
                if self.settings.backup.password.is_some() {
                    return Err(CycleError::refused(
                        Step::Create,
                        format!(
                            "[backup] password is set, but Home Assistant {} has the legacy backup API, which cannot encrypt a backup; no backup was made. Remove password/password_file/password_env, or update Home Assistant to 2025.1 or later",
                            self.client.ha_version()
                        ),
                    ));
                }
                info!(
                    path = "legacy backup/generate",
                    "this Home Assistant has the legacy backup API (no events); its backup/generate blocks until the backup is made"
                );
                // HA names it; the name is known in advance.
                let name = format!("Core {}", self.client.ha_version());
                let pending = self.note_request(Timestamp::now(), &name, None, Step::Create)?;
                let b = match self
                    .client
                    .legacy_backup_generate(self.settings.backup.timeout)
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        self.refused_request(&pending, &e);
                        return Err(e).at(Step::Create);
                    }
                };
                Made {
                    pending: Some(pending),
                    ..Made::listed(b, None)
                }
            }
            (BackupMode::Service, _) => {
                let mut made = self.create_by_services().await?;
                made.agent = agent;
                made
            }
        };
        let id = match safe_component(&made.backup_id) {
            Ok(id) => id,
            Err(e) => {
                // hapull can never pull or delete a backup by that id: nothing to remember.
                if let Some(k) = &made.pending
                    && let Err(e) = Ledger::settle_pending(self.store.root(), k, None)
                {
                    warn!(error = %e, "cannot drop a backup request from the store's ledger");
                }
                return Err(CycleError::refused(
                    Step::Create,
                    format!("Home Assistant gave an unusable backup id: {e}"),
                ));
            }
        };
        if made.job_id.is_some() {
            // Only backup ids go into the made list; the job becomes one once identified (Await).
            // Until then the pending entry holds the job id, for a later cycle if this one stops.
            if let Some(k) = &made.pending {
                Ledger::set_pending_job(self.store.root(), k, &id).map_err(|e| {
                    CycleError::refused(
                        Step::Create,
                        format!("cannot record the backup job id in the store: {e}"),
                    )
                })?;
            }
            self.record(Kind::BackupCreated, json!({"job_id": id}))
                .await?;
            return Ok(made);
        }
        self.settle(&made, &id, Step::Create)?;
        self.record(Kind::BackupCreated, json!({"backup_id": id}))
            .await?;
        Ok(Made {
            pending: None,
            ..made
        })
    }

    /// Home Assistant answered the request with an error: no backup was started, so its pending entry
    /// goes. A lost connection or a timeout says nothing about that: the entry stays for later cycles.
    fn refused_request(&self, pending: &str, e: &HaError) {
        if matches!(e, HaError::Command { .. })
            && let Err(e) = Ledger::settle_pending(self.store.root(), pending, None)
        {
            warn!(error = %e, "cannot drop a refused backup request from the store's ledger; a later cycle drops it");
        }
    }

    async fn generate(&self, agent: Option<String>) -> Result<Made, CycleError> {
        let name = self.backup_name();
        let agent = agent.unwrap_or_else(|| "backup.local".into());
        info!(path = "backup/generate", %name, %agent, "asking Home Assistant for a backup");
        let requested_at = Timestamp::now();
        let pending = self.note_request(requested_at, &name, Some(&agent), Step::Create)?;
        let job = match self
            .client
            .backup_generate(&GenerateRequest {
                agent_ids: vec![agent.clone()],
                name: Some(name.clone()),
                include_database: Some(self.settings.backup.include_database),
                password: self.settings.backup.password.clone(),
            })
            .await
        {
            Ok(job) => job,
            Err(e) => {
                self.refused_request(&pending, &e);
                return Err(e).at(Step::Create);
            }
        };
        // On a Supervisor install the answer is a Supervisor job id, not the backup id.
        let supervisor = Install::of_agent(&agent) == Install::Supervisor;
        Ok(Made {
            job_id: supervisor.then(|| job.clone()),
            backup_id: job,
            requested_at: Some(requested_at),
            agent: Some(agent),
            requested_name: Some(name),
            backup: None,
            pending: Some(pending),
        })
    }

    fn backup_name(&self) -> String {
        let now = Timestamp::now().to_zoned(self.settings.timezone.clone());
        (self.settings.backup.name).replace("{date}", &now.strftime("%Y-%m-%d %H.%M").to_string())
    }
}

//! The recipe's way of making a backup: `shell_command.<name>` (which deletes every archive file in the
//! backups folder behind Home Assistant's back), then the `backup.create` service.
//!
//! The delete command is the dangerous part. It runs only right after a listing of `remote_dir` in
//! which every archive has a verified copy in the store: archives without one are pulled and committed
//! first, and the folder is listed again, until a listing finds nothing unsaved. What remains is the
//! time between that last listing and the command running in Home Assistant (one WebSocket round
//! trip): an archive HA starts writing inside that window is not protected.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tracing::{info, warn};

use super::{At, Context, CycleError, Made, Step};
use crate::audit::Kind;
use crate::ha::Backup;
use crate::store::safe_component;
use crate::transfer::Session;

/// Rounds of "list, save what is new" before giving up on a folder that keeps changing.
const MAX_SAVE_ROUNDS: usize = 5;

impl Context {
    pub(super) async fn create_by_services(&self) -> Result<Made, CycleError> {
        let before: BTreeSet<String> = (self.client.backup_info().await.at(Step::Create)?)
            .backups
            .into_iter()
            .map(|b| b.backup_id)
            .collect();
        self.save_everything_before_delete().await?;
        let name = &self.settings.backup.shell_command;
        info!(path = "service", service = %format!("shell_command.{name}"), "running the delete command (every archive has a verified local copy)");
        let r = (self.client)
            .call_service(
                "shell_command",
                name,
                json!({}),
                true,
                self.settings.backup.timeout,
            )
            .await
            .at(Step::Create)?;
        if let Some(code) = r
            .get("response")
            .and_then(|x| x.get("returncode"))
            .and_then(Value::as_i64)
            && code != 0
        {
            warn!(
                returncode = code,
                "shell_command returned non-zero; continuing with backup.create"
            );
        }
        self.record(
            Kind::HaShellCommand,
            json!({"service": format!("shell_command.{name}"), "response": r.get("response")}),
        )
        .await?;
        info!(
            path = "service",
            "calling backup.create (blocks until the backup is made)"
        );
        (self.client)
            .call_service(
                "backup",
                "create",
                json!({}),
                false,
                self.settings.backup.timeout,
            )
            .await
            .at(Step::Create)?;
        let after = self.client.backup_info().await.at(Step::Create)?;
        let mut new: Vec<Backup> = (after.backups.into_iter())
            .filter(|b| !before.contains(&b.backup_id))
            .collect();
        new.sort_by(|a, b| a.date.cmp(&b.date));
        let b = new.pop().ok_or_else(|| {
            CycleError::refused(
                Step::Create,
                "backup.create finished but no new backup appeared in Home Assistant's list",
            )
        })?;
        Ok(Made::listed(b, None))
    }

    /// Lists `remote_dir` and saves every archive without a verified copy, again and again, until a
    /// listing finds none: only then may the delete command run. Refuses (deleting nothing) when an
    /// archive cannot be saved or the folder does not settle.
    async fn save_everything_before_delete(&self) -> Result<(), CycleError> {
        for round in 1..=MAX_SAVE_ROUNDS {
            let session = self.session(Step::Create).await?;
            let unsaved = self.unsaved_archives(&session).await;
            session.close().await;
            let unsaved = unsaved?;
            if unsaved.is_empty() {
                return Ok(());
            }
            for (slug, path) in unsaved {
                info!(backup_id = %slug, %path, round, "pulling an archive without a local copy before the delete command runs");
                let made = Made {
                    backup_id: slug,
                    job_id: None,
                    requested_at: None,
                    agent: None,
                    requested_name: None,
                    backup: None,
                    pending: None,
                };
                self.save(&made, &path).await?;
            }
        }
        Err(CycleError::refused(
            Step::Create,
            format!(
                "new archives kept appearing in {} while hapull saved them ({MAX_SAVE_ROUNDS} rounds); the delete command was not run",
                self.settings.remote_dir
            ),
        ))
    }

    /// `(backup id, remote path)` of every archive in `remote_dir` with no verified copy in the store.
    async fn unsaved_archives(
        &self,
        session: &Session,
    ) -> Result<Vec<(String, String)>, CycleError> {
        let entries = (session.list_dir(&self.settings.remote_dir).await).at(Step::Create)?;
        let mut unsaved = Vec::new();
        for e in entries
            .iter()
            .filter(|e| e.is_file && e.name.ends_with(".tar"))
        {
            let Ok(name) = safe_component(&e.name) else {
                return Err(CycleError::refused(
                    Step::Create,
                    format!(
                        "refusing to delete: \"{}\" in {} has an unsafe name",
                        e.name.escape_debug(),
                        self.settings.remote_dir
                    ),
                ));
            };
            let path = super::locate::remote_join(&self.settings.remote_dir, &name);
            let slug = super::locate::peek_slug(session, &path).await.map_err(|why| {
                CycleError::refused(
                    Step::Create,
                    format!(
                        "refusing to run the delete command: {path} is not a readable backup ({why}) and has no local copy"
                    ),
                )
            })?;
            if !self.has_verified_copy(&slug) {
                unsaved.push((slug, path));
            }
        }
        Ok(unsaved)
    }
}

//! Await: wait for Home Assistant's own word that the backup is complete, across reconnects and
//! missed events, and learn the backup's details.
//!
//! Events carry no backup id; the manager runs one backup at a time and was idle when ours started,
//! so the next `completed`/`failed` is ours. When events were missed (a reconnect, or a subscription
//! that lagged), the cycle asks HA where the backup stands instead of waiting for an event that may
//! never come.

use std::time::Duration;

use serde_json::json;
use tokio::time::timeout_at;
use tracing::{info, warn};

use super::pending::{candidates, how_found};
use super::{At, Context, CycleError, Made, Step};
use crate::audit::Kind;
use crate::config::BackupMode;
use crate::ha::{BackupApi, BackupEvent, BackupState, HaError, SubItem, Subscription};
use crate::store::{Ledger, safe_component};

impl Context {
    pub(super) async fn await_completion(
        &self,
        api: BackupApi,
        sub: Option<&mut Subscription>,
        made: Made,
    ) -> Result<Made, CycleError> {
        let (BackupApi::Modern, BackupMode::Api, Some(sub)) = (api, self.settings.backup.mode, sub)
        else {
            // Legacy generate and backup.create block until the backup is finished.
            self.record(
                Kind::BackupCompleted,
                json!({"backup_id": made.backup_id, "how": "blocking call returned"}),
            )
            .await?;
            return Ok(made);
        };
        let deadline = tokio::time::Instant::now() + self.settings.backup.timeout;
        let mut stage = None;
        loop {
            let item = match timeout_at(deadline, sub.next()).await {
                Err(_) => {
                    return Err(CycleError::Timeout {
                        step: Step::Await,
                        after: self.settings.backup.timeout,
                        what: format!(
                            "backup {} did not complete (last stage {}); nothing was deleted",
                            made.backup_id,
                            stage
                                .as_deref()
                                .map_or("unknown".to_string(), |s: &str| format!(
                                    "\"{}\"",
                                    s.escape_debug()
                                ))
                        ),
                    });
                }
                Ok(None) => return Err(HaError::Closed).at(Step::Await),
                Ok(Some(item)) => item,
            };
            let missed = match item {
                SubItem::Event(v) => match BackupEvent::parse(&v) {
                    Ok(BackupEvent::CreateBackup {
                        state: BackupState::Completed,
                        ..
                    }) => break,
                    Ok(BackupEvent::CreateBackup {
                        state: BackupState::Failed,
                        reason,
                        ..
                    }) => {
                        let reason = reason.unwrap_or_else(|| "no reason given".into());
                        self.record(
                            Kind::BackupFailed,
                            json!({"backup_id": made.backup_id, "reason": reason}),
                        )
                        .await?;
                        return Err(CycleError::BackupFailed { reason });
                    }
                    Ok(BackupEvent::CreateBackup { stage: s, .. }) => {
                        if s != stage {
                            info!(stage = ?s, "backup in progress");
                            stage = s;
                        }
                        false
                    }
                    Ok(BackupEvent::UploadProgress {
                        uploaded_bytes,
                        total_bytes,
                        ..
                    }) => {
                        info!(
                            uploaded_bytes,
                            total_bytes, "Home Assistant is storing the backup"
                        );
                        false
                    }
                    Ok(_) => false,
                    Err(e) => {
                        warn!(error = %e, "ignoring a backup event");
                        false
                    }
                },
                SubItem::Lagged(n) => {
                    warn!(
                        dropped = n,
                        "missed backup events; asking Home Assistant where the backup stands"
                    );
                    true
                }
                SubItem::Reconnected => {
                    warn!(
                        "reconnected while waiting; asking Home Assistant where the backup stands"
                    );
                    true
                }
            };
            if missed && self.finished_by_state(&made, deadline).await? {
                break;
            }
        }
        // Certain: Core's job id is the backup id, or the Supervisor job named it.
        let (made, mut certain) = if made.job_id.is_some() {
            self.identify_supervisor_backup(made).await?
        } else {
            (made, true)
        };
        let details = (self.client.backup_details(&made.backup_id).await).at(Step::Await)?;
        let made = match details {
            Some(b) => Made {
                backup: Some(b),
                ..made
            },
            None => {
                certain = false;
                self.find_by_name_after_job(&made).await?.0
            }
        };
        if let (true, Some(instance)) =
            (certain, made.backup.as_ref().and_then(|b| b.instance_id()))
            && let Err(e) = Ledger::set_instance(self.store.root(), instance)
        {
            // Only the name rule's instance check misses it; a later cycle records it again.
            warn!(error = %e, "cannot record Home Assistant's instance id in the store");
        }
        self.record(
            Kind::BackupCompleted,
            json!({"backup_id": made.backup_id, "size": made.backup.as_ref().and_then(|b| b.size)}),
        )
        .await?;
        Ok(made)
    }

    /// After missed events: `true` when the backup is finished, `false` while it is still being made.
    /// A backup that is neither running nor listed is gone (Home Assistant restarted mid-backup):
    /// no event will ever complete it, so waiting for the timeout would only hide the loss.
    async fn finished_by_state(
        &self,
        made: &Made,
        deadline: tokio::time::Instant,
    ) -> Result<bool, CycleError> {
        loop {
            let info = match self.client.backup_info().await {
                Ok(i) => Some(i),
                Err(e) if e.is_transient() => None,
                Err(e) => return Err(e).at(Step::Await),
            };
            // A restarted Home Assistant answers before its backup manager is ready ("blocked").
            if let Some(info) = info.filter(|i| i.state != "blocked") {
                if info.state == "create_backup" {
                    return Ok(false);
                }
                if info.backups.iter().any(|b| b.backup_id == made.backup_id) {
                    return Ok(true);
                }
                // A Supervisor job is not listed by its id: ask the job itself.
                if let Some(job) = &made.job_id
                    && let Ok(Some(_)) = self.client.supervisor_job_reference(job).await
                {
                    return Ok(true);
                }
                return match info.last_action_event {
                    Some(BackupEvent::CreateBackup {
                        state: BackupState::Failed,
                        reason,
                        ..
                    }) => Err(CycleError::BackupFailed {
                        reason: reason
                            .unwrap_or_else(|| "failed while hapull was disconnected".into()),
                    }),
                    _ => Err(CycleError::refused(
                        Step::Await,
                        format!(
                            "backup {} is gone: Home Assistant is idle and does not list it (it restarted mid-backup?); nothing was deleted, the next cycle makes a new one",
                            made.backup_id
                        ),
                    )),
                };
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CycleError::Timeout {
                    step: Step::Await,
                    after: self.settings.backup.timeout,
                    what: format!(
                        "Home Assistant did not say where backup {} stands after a reconnect; nothing was deleted",
                        made.backup_id
                    ),
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// On a Supervisor install: turns the job id into the backup id — the job's `reference`, else the
    /// newest backup with our name, made since we asked, by this instance. Records the id in the
    /// ledger (so clean-up finds it) and in the audit log, and says whether the id is certain (the job
    /// named it) rather than found by name.
    async fn identify_supervisor_backup(&self, made: Made) -> Result<(Made, bool), CycleError> {
        let job = made.job_id.clone().unwrap_or_default();
        let mut how = "supervisor job reference";
        let mut found = None;
        for attempt in 0..5 {
            match self.client.supervisor_job_reference(&job).await {
                Ok(Some(id)) => {
                    found = Some(id);
                    break;
                }
                // The job may report done a moment after the completed event.
                Ok(None) if attempt < 4 => tokio::time::sleep(Duration::from_secs(1)).await,
                Ok(None) => break,
                Err(e) => {
                    warn!(job_id = %job, error = %e, "cannot ask the Supervisor about the backup job; finding the backup by name and date");
                    break;
                }
            }
        }
        let made = match found {
            Some(id) => Made {
                backup_id: id,
                ..made
            },
            None => {
                let (made, found_how) = self.find_by_name_after_job(&made).await?;
                how = found_how;
                made
            }
        };
        let id = safe_component(&made.backup_id).map_err(|e| {
            CycleError::refused(
                Step::Await,
                format!("the Supervisor gave an unusable backup id: {e}"),
            )
        })?;
        self.settle(&made, &id, Step::Await)?;
        info!(job_id = %job, backup_id = %id, how, "backup identified");
        self.record(
            Kind::BackupIdentified,
            json!({"job_id": job, "backup_id": id, "how": how}),
        )
        .await?;
        let made = Made {
            job_id: None,
            pending: None,
            ..made
        };
        Ok((made, how == "supervisor job reference"))
    }

    /// When the job id is not the backup id and the job cannot say which backup it made: the newest
    /// backup with the name hapull asked for, dated no earlier than the request, not already in the
    /// ledger, made by this instance (`extra_metadata.instance_id` as seen on hapull's earlier
    /// backups). Also says how it was found (see [`how_found`]).
    async fn find_by_name_after_job(
        &self,
        made: &Made,
    ) -> Result<(Made, &'static str), CycleError> {
        let info = self.client.backup_info().await.at(Step::Await)?;
        let ledger = Ledger::read(self.store.root())
            .map_err(|e| CycleError::refused(Step::Await, e.to_string()))?;
        let name = made.requested_name.as_deref().unwrap_or("");
        let (mut found, checked) = candidates(info.backups, &ledger, name, made.requested_at, None);
        let b = found.pop().ok_or_else(|| {
                CycleError::refused(
                    Step::Await,
                    format!(
                        "backup job {} completed but no new backup named {:?} is listed; nothing was deleted",
                        made.job_id.as_deref().unwrap_or(&made.backup_id),
                        name
                    ),
                )
            })?;
        let how = how_found(checked, &b);
        let made = Made {
            backup_id: b.backup_id.clone(),
            backup: Some(b),
            ..made.clone()
        };
        Ok((made, how))
    }
}

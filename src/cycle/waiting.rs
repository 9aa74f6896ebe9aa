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

use super::{At, Context, CycleError, Made, Step};
use crate::audit::Kind;
use crate::config::BackupMode;
use crate::ha::{Backup, BackupApi, BackupEvent, BackupState, HaError, SubItem, Subscription};

impl Context {
    pub(super) async fn await_completion(
        &self,
        api: BackupApi,
        sub: Option<&mut Subscription>,
        made: Made,
    ) -> Result<Made, CycleError> {
        let (BackupApi::Modern, BackupMode::Api, Some(sub)) = (api, self.settings.mode, sub) else {
            // Legacy generate and backup.create block until the backup is finished.
            self.record(
                Kind::BackupCompleted,
                json!({"backup_id": made.backup_id, "how": "blocking call returned"}),
            )
            .await?;
            return Ok(made);
        };
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let mut stage = None;
        loop {
            let item = match timeout_at(deadline, sub.next()).await {
                Err(_) => {
                    return Err(CycleError::Timeout {
                        step: Step::Await,
                        after: self.settings.timeout,
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
        let details = (self.client.backup_details(&made.backup_id).await).at(Step::Await)?;
        let made = match details {
            Some(b) => Made {
                backup_id: made.backup_id,
                requested_name: made.requested_name,
                backup: Some(b),
            },
            None => self.find_by_name_after_supervisor_job(&made).await?,
        };
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
                    after: self.settings.timeout,
                    what: format!(
                        "Home Assistant did not say where backup {} stands after a reconnect; nothing was deleted",
                        made.backup_id
                    ),
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// On Supervisor installs the job id is not the backup id: the new backup is the newest one with
    /// our name.
    async fn find_by_name_after_supervisor_job(&self, made: &Made) -> Result<Made, CycleError> {
        let info = self.client.backup_info().await.at(Step::Await)?;
        let mut candidates: Vec<Backup> = (info.backups.into_iter())
            .filter(|b| made.requested_name.as_deref() == Some(b.name.as_str()))
            .collect();
        candidates.sort_by(|a, b| a.date.cmp(&b.date));
        let b = candidates.pop().ok_or_else(|| {
            CycleError::refused(
                Step::Await,
                format!(
                    "backup job {} completed but no such backup is listed",
                    made.backup_id
                ),
            )
        })?;
        Ok(Made::listed(b))
    }
}

//! One backup cycle, as an explicit sequence of named steps:
//!
//! ```text
//! Connect -> Create -> Await -> Locate -> Pull -> Commit -> CleanUpHa -> Retention
//! ```
//!
//! Each step is a function with a tracing span and an audit record. This is the only place that knows
//! the order of steps, and it holds the one rule that matters: **nothing is deleted anywhere until a
//! verified copy exists elsewhere**. Home Assistant's backups are deleted only after the archive is
//! committed (hashed, structure-checked, manifest written) in the store, and only hapull's own, beyond
//! `keep_on_ha`; in `service` mode the recipe's delete command runs only once every archive it would
//! delete has a verified local copy.
//!
//! Everything Home Assistant says is untrusted: ids and names are validated before they become a path,
//! remote paths are always `remote_dir/<validated file name>`, and the archive must prove (its
//! `backup.json` slug) that it is the backup it claims to be.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::timeout_at;
use tracing::{Instrument, info, info_span, warn};

use crate::audit::AuditLog;
use crate::config::{BackupMode, VerifyLevel};
use crate::ha::{
    Backup, BackupApi, BackupEvent, BackupState, Client, GenerateRequest, HaError, SubItem,
    Subscription,
};
use crate::secret::Secret;
use crate::store::{
    self, CommitInfo, RetentionPolicy, Store, StoredArchive, Verify, safe_component,
};
use crate::transfer::{
    self, Identity, PullOptions, PullOutcome, Session, SshTarget, TransferError,
};

/// The steps of a cycle, as named in logs, audit records and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Create,
    Await,
    Locate,
    Pull,
    Commit,
    CleanUpHa,
    Retention,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Create => "create",
            Step::Await => "await",
            Step::Locate => "locate",
            Step::Pull => "pull",
            Step::Commit => "commit",
            Step::CleanUpHa => "cleanup_ha",
            Step::Retention => "retention",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a cycle did not commit an archive (or could not finish cleaning up).
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("{step}: {source}")]
    Ha { step: Step, source: HaError },
    #[error("{step}: {source}")]
    Transfer { step: Step, source: TransferError },
    #[error("{step}: {source}")]
    Store {
        step: Step,
        source: store::StoreError,
    },
    #[error("Home Assistant reported the backup failed: {reason}")]
    BackupFailed { reason: String },
    #[error("{step}: gave up after {after:?}: {what}")]
    Timeout {
        step: Step,
        after: Duration,
        what: String,
    },
    #[error("{step}: {message}")]
    Refused { step: Step, message: String },
    #[error("audit log: {0}")]
    Audit(String),
}

impl CycleError {
    pub fn step(&self) -> Option<Step> {
        match self {
            CycleError::Ha { step, .. }
            | CycleError::Transfer { step, .. }
            | CycleError::Store { step, .. }
            | CycleError::Timeout { step, .. }
            | CycleError::Refused { step, .. } => Some(*step),
            CycleError::BackupFailed { .. } => Some(Step::Await),
            CycleError::Audit(_) => None,
        }
    }
}

/// A listing of `[ssh] remote_dir` that failed because of the configured value or the folder's
/// permissions, said as a config problem: the key, its value, what went wrong and the fix.
pub fn remote_dir_problem(remote_dir: &str, e: &TransferError) -> Option<String> {
    match e {
        TransferError::NotFound { host, .. } => Some(format!(
            "[ssh] remote_dir = {remote_dir:?}: no such folder on {host}. Set it to Home Assistant's \
             config folder + /backups as the SFTP account sees it (Core on Debian: \
             /home/homeassistant/.homeassistant/backups; NixOS: /var/lib/hass/backups; chroot variant: \
             /backups); docs/SETUP.md shows how to find the config folder"
        )),
        TransferError::PermissionDenied { user, .. } => Some(format!(
            "[ssh] remote_dir = {remote_dir:?}: user {user} may not list it (permission denied). Put \
             {user} in Home Assistant's group, and give that group read and search permission on the \
             folder and search (g+x) on every folder above it: docs/SETUP.md, Permissions"
        )),
        _ => None,
    }
}

/// What the cycle needs to know, from the validated config.
#[derive(Clone)]
pub struct Settings {
    pub mode: BackupMode,
    pub shell_command: String,
    pub name_template: String,
    pub include_database: bool,
    pub password: Option<Secret>,
    pub keep_on_ha: u32,
    pub prune_foreign: bool,
    pub timeout: Duration,
    pub blocked_timeout: Duration,
    pub remote_dir: String,
    pub verify: VerifyLevel,
    pub retention: RetentionPolicy,
    pub timezone: jiff::tz::TimeZone,
    pub pull: PullOptions,
}

/// The long-lived parts a cycle works with.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub ssh: SshTarget,
    /// The SSH key, decrypted once when the context is built.
    pub identity: Identity,
    pub store: Arc<Store>,
    pub audit: Option<AuditLog>,
    pub settings: Settings,
}

/// What a committed cycle produced.
#[derive(Debug, Clone)]
pub struct Report {
    pub backup_id: String,
    pub archive: StoredArchive,
    pub pull: PullOutcome,
    pub deleted_on_ha: Vec<String>,
    pub pruned: Vec<String>,
    pub duration: Duration,
    pub api: BackupApi,
}

/// Where the backup HA made lives and what HA said about it.
#[derive(Debug, Clone)]
struct Made {
    backup_id: String,
    /// The name hapull asked for (api mode), to find the backup when the job id is not its id.
    requested_name: Option<String>,
    /// HA's view of it (modern: details; legacy: the generate result or list entry).
    backup: Option<Backup>,
}

impl Context {
    async fn record(&self, kind: &str, data: Value) -> Result<(), CycleError> {
        if let Some(audit) = &self.audit {
            audit
                .step(kind, data)
                .await
                .map_err(|e| CycleError::Audit(e.to_string()))?;
        }
        Ok(())
    }

    /// Runs one full cycle: make a backup, pull it, verify, commit, clean up.
    pub async fn run_cycle(&self) -> Result<Report, CycleError> {
        let started = Instant::now();
        let span = info_span!("cycle", mode = ?self.settings.mode);
        async {
            self.record("cycle.started", json!({"mode": format!("{:?}", self.settings.mode).to_lowercase()})).await?;
            let outcome = self.steps(started).await;
            match &outcome {
                Ok(r) => {
                    info!(backup_id = %r.backup_id, bytes = r.pull.size, secs = r.duration.as_secs_f64(), "cycle finished: archive committed");
                    self.record(
                        "cycle.finished",
                        json!({"backup_id": r.backup_id, "size": r.pull.size, "sha256": r.pull.sha256_hex(),
                               "duration_s": r.duration.as_secs_f64(), "deleted_on_ha": r.deleted_on_ha, "pruned": r.pruned}),
                    )
                    .await?;
                }
                Err(e) => {
                    warn!(error = %e, "cycle failed");
                    self.record("cycle.failed", json!({"step": e.step().map(Step::as_str), "error": e.to_string()})).await?;
                }
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn steps(&self, started: Instant) -> Result<Report, CycleError> {
        let (api, mut sub) = self.connect().instrument(info_span!("connect")).await?;
        let made = self
            .create(api, sub.as_mut())
            .instrument(info_span!("create"))
            .await?;
        let made = self
            .await_completion(api, sub.as_mut(), made)
            .instrument(info_span!("await"))
            .await?;
        drop(sub);
        self.finish(api, made, started).await
    }

    /// Pulls an existing Home Assistant backup (no new backup), then commits and cleans up like a cycle.
    pub async fn pull_existing(&self, backup_id: &str) -> Result<Report, CycleError> {
        let started = Instant::now();
        let api = self
            .client
            .detect_backup_api()
            .await
            .map_err(|source| CycleError::Ha {
                step: Step::Connect,
                source,
            })?;
        let list = self
            .client
            .backup_info()
            .await
            .map_err(|source| CycleError::Ha {
                step: Step::Locate,
                source,
            })?;
        let backup = list.backups.into_iter().find(|b| b.backup_id == backup_id).ok_or_else(|| CycleError::Refused {
            step: Step::Locate,
            message: format!("Home Assistant has no backup {backup_id:?}; `hapull list --remote` shows the ids it has"),
        })?;
        let made = Made {
            backup_id: backup_id.to_string(),
            requested_name: None,
            backup: Some(backup),
        };
        self.finish(api, made, started).await
    }

    async fn finish(
        &self,
        api: BackupApi,
        made: Made,
        started: Instant,
    ) -> Result<Report, CycleError> {
        let remote = self
            .locate(api, &made)
            .instrument(info_span!("locate", backup_id = %made.backup_id))
            .await?;
        let (local, pulled) = self
            .pull(&made, &remote)
            .instrument(info_span!("pull", backup_id = %made.backup_id))
            .await?;
        let archive = self
            .commit(&made, &remote, &local, &pulled)
            .instrument(info_span!("commit", backup_id = %made.backup_id))
            .await?;
        let deleted_on_ha = self
            .clean_up_ha(api)
            .instrument(info_span!("cleanup_ha"))
            .await?;
        let pruned = self.retention().instrument(info_span!("retention")).await?;
        Ok(Report {
            backup_id: made.backup_id,
            archive,
            pull: pulled,
            deleted_on_ha,
            pruned,
            duration: started.elapsed(),
            api,
        })
    }

    /// Step 1: which API, subscribe to backup events, wait while HA is starting (`blocked`) or busy
    /// with another backup.
    async fn connect(&self) -> Result<(BackupApi, Option<Subscription>), CycleError> {
        let ha = |source| CycleError::Ha {
            step: Step::Connect,
            source,
        };
        let api = self.client.detect_backup_api().await.map_err(ha)?;
        // The SSH side is checked before Home Assistant is asked for anything: a broken host key or
        // permission would otherwise leave a new, unpulled backup on the HA host every cycle.
        self.preflight_ssh().await?;
        let sub = match api {
            BackupApi::Modern => Some(self.client.subscribe_backup_events().await.map_err(ha)?),
            BackupApi::Legacy { .. } => None,
        };
        let deadline = tokio::time::Instant::now() + self.settings.blocked_timeout;
        loop {
            let info = self.client.backup_info().await.map_err(ha)?;
            match info.state.as_str() {
                "idle" => break,
                state => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(CycleError::Timeout {
                            step: Step::Connect,
                            after: self.settings.blocked_timeout,
                            what: format!("Home Assistant's backup manager stayed {state:?}"),
                        });
                    }
                    info!(state, "backup manager busy; waiting for it to become idle");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        info!(%api, ha_version = %self.client.ha_version(), "connected");
        let api_name = match api {
            BackupApi::Modern => "modern",
            BackupApi::Legacy { .. } => "legacy",
        };
        self.record(
            "cycle.connected",
            json!({"ha_version": self.client.ha_version(), "backup_api": api_name}),
        )
        .await?;
        Ok((api, sub))
    }

    /// Host key, login and a listing of `remote_dir`.
    async fn preflight_ssh(&self) -> Result<(), CycleError> {
        let tr = |source| CycleError::Transfer {
            step: Step::Connect,
            source,
        };
        let session = Session::connect_with(&self.ssh, &self.identity, &self.settings.pull.session)
            .await
            .map_err(tr)?;
        let listed = session.list_dir(&self.settings.remote_dir).await;
        session.close().await;
        listed.map_err(
            |e| match remote_dir_problem(&self.settings.remote_dir, &e) {
                Some(message) => CycleError::Refused {
                    step: Step::Connect,
                    message,
                },
                None => tr(e),
            },
        )?;
        Ok(())
    }

    fn backup_name(&self) -> String {
        let now = Timestamp::now().to_zoned(self.settings.timezone.clone());
        self.settings
            .name_template
            .replace("{date}", &now.strftime("%Y-%m-%d %H.%M").to_string())
    }

    /// Step 2: ask Home Assistant for a backup.
    async fn create(
        &self,
        api: BackupApi,
        sub: Option<&mut Subscription>,
    ) -> Result<Made, CycleError> {
        let ha = |source| CycleError::Ha {
            step: Step::Create,
            source,
        };
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
            (BackupMode::Api, BackupApi::Modern) => {
                let name = self.backup_name();
                let name_for_lookup = name.clone();
                info!(path = "backup/generate", %name, "asking Home Assistant for a backup");
                let job = self
                    .client
                    .backup_generate(&GenerateRequest {
                        agent_ids: vec!["backup.local".into()],
                        name: Some(name),
                        include_database: Some(self.settings.include_database),
                        password: self.settings.password.clone(),
                    })
                    .await
                    .map_err(ha)?;
                Made {
                    backup_id: job,
                    requested_name: Some(name_for_lookup),
                    backup: None,
                }
            }
            (BackupMode::Api, BackupApi::Legacy { .. }) => {
                info!(
                    path = "legacy backup/generate",
                    "this Home Assistant has the legacy backup API (no events); its backup/generate blocks until the backup is made"
                );
                let b = self
                    .client
                    .legacy_backup_generate(self.settings.timeout)
                    .await
                    .map_err(ha)?;
                Made {
                    backup_id: b.backup_id.clone(),
                    requested_name: None,
                    backup: Some(b),
                }
            }
            (BackupMode::Service, _) => self.create_by_services().await?,
        };
        let id = safe_component(&made.backup_id).map_err(|e| CycleError::Refused {
            step: Step::Create,
            message: format!("Home Assistant gave an unusable backup id: {e}"),
        })?;
        remember_made(self.store.root(), &id).map_err(|e| CycleError::Refused {
            step: Step::Create,
            message: format!("cannot record the new backup id in the store: {e}"),
        })?;
        self.record("backup.created", json!({"backup_id": id}))
            .await?;
        Ok(made)
    }

    /// The recipe's way: `shell_command.<name>` (deletes the archive files), then `backup.create`.
    /// The delete runs only when every archive it will delete has a verified copy in the store.
    async fn create_by_services(&self) -> Result<Made, CycleError> {
        let ha = |source| CycleError::Ha {
            step: Step::Create,
            source,
        };
        self.rescue_unsaved_archives().await?;
        let before: BTreeSet<String> = self
            .client
            .backup_info()
            .await
            .map_err(ha)?
            .backups
            .into_iter()
            .map(|b| b.backup_id)
            .collect();
        let name = &self.settings.shell_command;
        info!(path = "service", service = %format!("shell_command.{name}"), "running the delete command (every archive has a verified local copy)");
        let r = self
            .client
            .call_service(
                "shell_command",
                name,
                json!({}),
                true,
                self.settings.timeout,
            )
            .await
            .map_err(ha)?;
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
            "ha.shell_command",
            json!({"service": format!("shell_command.{name}"), "response": r.get("response")}),
        )
        .await?;
        info!(
            path = "service",
            "calling backup.create (blocks until the backup is made)"
        );
        self.client
            .call_service("backup", "create", json!({}), false, self.settings.timeout)
            .await
            .map_err(ha)?;
        let after = self.client.backup_info().await.map_err(ha)?;
        let mut new: Vec<Backup> = after
            .backups
            .into_iter()
            .filter(|b| !before.contains(&b.backup_id))
            .collect();
        new.sort_by(|a, b| a.date.cmp(&b.date));
        let b = new.pop().ok_or_else(|| CycleError::Refused {
            step: Step::Create,
            message: "backup.create finished but no new backup appeared in Home Assistant's list"
                .into(),
        })?;
        Ok(Made {
            backup_id: b.backup_id.clone(),
            requested_name: None,
            backup: Some(b),
        })
    }

    /// Before anything deletes archive files behind HA's back: pull every archive in `remote_dir` that
    /// has no verified copy in the store. Refuses (deleting nothing) if one cannot be saved.
    async fn rescue_unsaved_archives(&self) -> Result<(), CycleError> {
        let tr = |source| CycleError::Transfer {
            step: Step::Create,
            source,
        };
        let session = Session::connect_with(&self.ssh, &self.identity, &self.settings.pull.session)
            .await
            .map_err(tr)?;
        let entries = session
            .list_dir(&self.settings.remote_dir)
            .await
            .map_err(tr)?;
        let mut unsaved = Vec::new();
        for e in entries
            .iter()
            .filter(|e| e.is_file && e.name.ends_with(".tar"))
        {
            let Ok(name) = safe_component(&e.name) else {
                return Err(CycleError::Refused {
                    step: Step::Create,
                    message: format!(
                        "refusing to delete: {:?} in {} has an unsafe name",
                        e.name, self.settings.remote_dir
                    ),
                });
            };
            let path = remote_join(&self.settings.remote_dir, &name);
            let slug = match peek_slug(&session, &path).await {
                Ok(s) => s,
                Err(why) => {
                    return Err(CycleError::Refused {
                        step: Step::Create,
                        message: format!(
                            "refusing to run the delete command: {path} is not a readable backup ({why}) and has no local copy"
                        ),
                    });
                }
            };
            if !self.has_verified_copy(&slug) {
                unsaved.push((slug, path));
            }
        }
        session.close().await;
        for (slug, path) in unsaved {
            info!(backup_id = %slug, %path, "pulling an archive without a local copy before the delete command runs");
            let made = Made {
                backup_id: slug,
                requested_name: None,
                backup: None,
            };
            let (local, pulled) = self.pull(&made, &path).await?;
            self.commit(&made, &path, &local, &pulled).await?;
        }
        Ok(())
    }

    fn has_verified_copy(&self, backup_id: &str) -> bool {
        match self.store.find(backup_id) {
            Ok(Some(a)) => std::fs::metadata(&a.path)
                .map(|m| m.len() == a.manifest.size)
                .unwrap_or(false),
            _ => false,
        }
    }

    /// Step 3: wait for Home Assistant's own word that the backup is complete.
    async fn await_completion(
        &self,
        api: BackupApi,
        sub: Option<&mut Subscription>,
        made: Made,
    ) -> Result<Made, CycleError> {
        let (BackupApi::Modern, BackupMode::Api, Some(sub)) = (api, self.settings.mode, sub) else {
            // Legacy generate and backup.create block until the backup is finished.
            self.record(
                "backup.completed",
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
                            "backup {} did not complete (last stage {stage:?}); nothing was deleted",
                            made.backup_id
                        ),
                    });
                }
                Ok(None) => {
                    return Err(CycleError::Ha {
                        step: Step::Await,
                        source: HaError::Closed,
                    });
                }
                Ok(Some(item)) => item,
            };
            match item {
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
                            "backup.failed",
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
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "ignoring a backup event"),
                },
                SubItem::Lagged(n) => warn!(dropped = n, "missed backup events"),
                SubItem::Reconnected => {
                    // Events were missed: decide from HA's own state.
                    warn!(
                        "reconnected while waiting; asking Home Assistant where the backup stands"
                    );
                    if self.completion_after_reconnect(&made, deadline).await? {
                        break;
                    }
                }
            }
        }
        let details = self
            .client
            .backup_details(&made.backup_id)
            .await
            .map_err(|source| CycleError::Ha {
                step: Step::Await,
                source,
            })?;
        let made = match details {
            Some(b) => Made {
                backup_id: made.backup_id,
                requested_name: made.requested_name,
                backup: Some(b),
            },
            None => self.find_by_name_after_supervisor_job(&made).await?,
        };
        self.record(
            "backup.completed",
            json!({"backup_id": made.backup_id, "size": made.backup.as_ref().and_then(|b| b.size)}),
        )
        .await?;
        Ok(made)
    }

    /// After a reconnect: `true` when the backup is finished, `false` while it is still being made.
    /// A backup that is neither running nor listed is gone (Home Assistant restarted mid-backup):
    /// no event will ever complete it, so waiting for the timeout would only hide the loss.
    async fn completion_after_reconnect(
        &self,
        made: &Made,
        deadline: tokio::time::Instant,
    ) -> Result<bool, CycleError> {
        loop {
            let info = match self.client.backup_info().await {
                Ok(i) => Some(i),
                Err(e) if e.is_transient() => None,
                Err(source) => {
                    return Err(CycleError::Ha {
                        step: Step::Await,
                        source,
                    });
                }
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
                    _ => Err(CycleError::Refused {
                        step: Step::Await,
                        message: format!(
                            "backup {} is gone: Home Assistant is idle and does not list it (it restarted mid-backup?); nothing was deleted, the next cycle makes a new one",
                            made.backup_id
                        ),
                    }),
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
        let info = self
            .client
            .backup_info()
            .await
            .map_err(|source| CycleError::Ha {
                step: Step::Await,
                source,
            })?;
        let mut candidates: Vec<Backup> = info
            .backups
            .into_iter()
            .filter(|b| made.requested_name.as_deref() == Some(b.name.as_str()))
            .collect();
        candidates.sort_by(|a, b| a.date.cmp(&b.date));
        let b = candidates.pop().ok_or_else(|| CycleError::Refused {
            step: Step::Await,
            message: format!(
                "backup job {} completed but no such backup is listed",
                made.backup_id
            ),
        })?;
        Ok(Made {
            backup_id: b.backup_id.clone(),
            requested_name: None,
            backup: Some(b),
        })
    }

    /// Step 4: find the archive on the HA host: HA's file-name rule, confirmed by the archive's own
    /// `backup.json`; else peek the candidates in `remote_dir`.
    async fn locate(&self, api: BackupApi, made: &Made) -> Result<String, CycleError> {
        let tr = |source| CycleError::Transfer {
            step: Step::Locate,
            source,
        };
        let id = safe_component(&made.backup_id).map_err(|e| CycleError::Refused {
            step: Step::Locate,
            message: e.to_string(),
        })?;
        let mut guesses = Vec::new();
        if let Some(b) = &made.backup {
            if let Some(name) = ha_archive_file_name(&b.name, &b.date) {
                guesses.push(name);
            }
            if let Some(p) = &b.path
                && let Some(file) = p.rsplit('/').next()
            {
                guesses.push(file.to_string());
            }
        }
        if matches!(api, BackupApi::Legacy { .. }) {
            guesses.push(format!("{id}.tar"));
        }
        let session = Session::connect_with(&self.ssh, &self.identity, &self.settings.pull.session)
            .await
            .map_err(tr)?;
        let result = async {
            for g in guesses {
                let Ok(file) = safe_component(&g) else {
                    warn!(name = %g.escape_debug(), "ignoring an unsafe file name derived from Home Assistant's data");
                    continue;
                };
                let path = remote_join(&self.settings.remote_dir, &file);
                match peek_slug(&session, &path).await {
                    Ok(slug) if slug == id => return Ok(path),
                    Ok(other) => warn!(%path, slug = %other, "archive belongs to another backup"),
                    Err(why) => info!(%path, %why, "not at the expected name"),
                }
            }
            // Fall back: peek the newest archives in the folder.
            let mut entries = session.list_dir(&self.settings.remote_dir).await.map_err(tr)?;
            entries.retain(|e| e.is_file && e.name.ends_with(".tar"));
            entries.sort_by_key(|e| std::cmp::Reverse(e.mtime));
            for e in entries.into_iter().take(64) {
                let Ok(file) = safe_component(&e.name) else { continue };
                let path = remote_join(&self.settings.remote_dir, &file);
                if let Ok(slug) = peek_slug(&session, &path).await
                    && slug == id
                {
                    return Ok(path);
                }
            }
            Err(CycleError::Refused {
                step: Step::Locate,
                message: format!(
                    "no archive of backup {id} in {} on {} (is remote_dir right, and can user {} read it? see README, Permissions)",
                    self.settings.remote_dir, self.ssh.host, self.ssh.user
                ),
            })
        }
        .await;
        session.close().await;
        let path = result?;
        info!(remote = %path, "archive located");
        self.record(
            "archive.located",
            json!({"backup_id": made.backup_id, "remote": path}),
        )
        .await?;
        Ok(path)
    }

    /// Step 5: pull into the store's incoming folder (resumable).
    async fn pull(&self, made: &Made, remote: &str) -> Result<(PathBuf, PullOutcome), CycleError> {
        let local = self
            .store
            .incoming_path(&made.backup_id)
            .map_err(|source| CycleError::Store {
                step: Step::Pull,
                source,
            })?;
        let mut opts = self.settings.pull.clone();
        opts.expected_size = made.backup.as_ref().and_then(|b| b.size);
        let outcome = transfer::pull_with(&self.ssh, &self.identity, remote, &local, &opts)
            .await
            .map_err(|source| CycleError::Transfer {
                step: Step::Pull,
                source,
            })?;
        info!(bytes = outcome.size, secs = outcome.duration.as_secs_f64(), sha256 = %outcome.sha256_hex(), "pulled");
        self.record(
            "pull.finished",
            json!({"backup_id": made.backup_id, "remote": remote, "size": outcome.size, "sha256": outcome.sha256_hex(),
                   "duration_s": outcome.duration.as_secs_f64(), "attempts": outcome.attempts, "resumed_bytes": outcome.resumed_bytes}),
        )
        .await?;
        Ok((local, outcome))
    }

    /// Step 6: verify the archive and commit it with its manifest.
    async fn commit(
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
            .map_err(|e| CycleError::Refused {
                step: Step::Commit,
                message: format!("commit task failed: {e}"),
            })?;
        match result {
            Ok(archive) => {
                info!(path = %archive.path.display(), "verified and committed");
                if let Err(e) = remember_committed(self.store.root(), &made.backup_id) {
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
                    let _ = remember_rejected(self.store.root(), &made.backup_id);
                }
                // A file that failed verification is not kept as if it were a backup; HA's copy stays.
                let _ = std::fs::remove_file(local);
                self.record(
                    "verify.failed",
                    json!({"backup_id": made.backup_id, "remote": remote, "error": e.to_string()}),
                )
                .await?;
                Err(CycleError::Store {
                    step: Step::Commit,
                    source: e,
                })
            }
        }
    }

    /// Step 7: delete hapull's own backups in HA beyond the newest `keep_on_ha`, each only when its
    /// archive is in the store.
    async fn clean_up_ha(&self, api: BackupApi) -> Result<Vec<String>, CycleError> {
        if self.settings.mode == BackupMode::Service {
            // The recipe's delete command is the clean-up in this mode.
            return Ok(Vec::new());
        }
        let ha = |source| CycleError::Ha {
            step: Step::CleanUpHa,
            source,
        };
        // One read of hapull's own list: which backups it made, committed, or found damaged.
        let made = read_made_file(self.store.root());
        let set = |ids: Vec<String>| ids.into_iter().collect::<BTreeSet<String>>();
        let (made_ids, committed_ids, rejected_ids) =
            (set(made.ids), set(made.committed), set(made.rejected));
        let mut ours: Vec<Backup> = self
            .client
            .backup_info()
            .await
            .map_err(ha)?
            .backups
            .into_iter()
            .filter(|b| self.settings.prune_foreign || made_ids.contains(&b.backup_id))
            .collect();
        ours.sort_by(|a, b| b.date.cmp(&a.date));
        // hapull's own backups that an earlier, failed cycle left without a local copy are pulled now,
        // so a bad hour does not leave a hole in the history (a few per cycle, newest first).
        let mut caught_up = 0;
        for b in &ours {
            // Only a failed cycle's backup that was never committed: one committed and since pruned
            // by retention is not pulled again.
            if caught_up >= 3
                || !made_ids.contains(&b.backup_id)
                || committed_ids.contains(&b.backup_id)
                || rejected_ids.contains(&b.backup_id)
                || self.has_verified_copy(&b.backup_id)
            {
                continue;
            }
            caught_up += 1;
            let made = Made {
                backup_id: b.backup_id.clone(),
                requested_name: None,
                backup: Some(b.clone()),
            };
            let saved = async {
                let remote = self.locate(api, &made).await?;
                let (local, pulled) = self.pull(&made, &remote).await?;
                self.commit(&made, &remote, &local, &pulled).await
            }
            .await;
            match saved {
                Ok(a) => {
                    info!(backup_id = %b.backup_id, path = %a.relative_path, "pulled an earlier backup that had no local copy")
                }
                Err(e) => {
                    warn!(backup_id = %b.backup_id, error = %e, "an earlier backup still has no local copy; it stays in Home Assistant")
                }
            }
        }
        let mut deleted = Vec::new();
        for b in ours.into_iter().skip(self.settings.keep_on_ha as usize) {
            if !self.has_verified_copy(&b.backup_id) {
                info!(backup_id = %b.backup_id, "kept in Home Assistant: no verified local copy");
                continue;
            }
            match api {
                BackupApi::Modern => self.client.backup_delete(&b.backup_id).await.map_err(ha)?,
                BackupApi::Legacy { .. } => self
                    .client
                    .legacy_backup_remove(&b.backup_id)
                    .await
                    .map_err(ha)?,
            }
            info!(backup_id = %b.backup_id, "deleted from Home Assistant (verified local copy exists)");
            self.record(
                "ha.deleted",
                json!({"backup_id": b.backup_id, "name": b.name}),
            )
            .await?;
            deleted.push(b.backup_id);
        }
        Ok(deleted)
    }

    /// Step 8: local retention.
    async fn retention(&self) -> Result<Vec<String>, CycleError> {
        if self.settings.retention.keeps_everything() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let policy = self.settings.retention;
        let tz = self.settings.timezone.clone();
        let decisions = tokio::task::spawn_blocking(move || store.prune(&policy, &tz, false))
            .await
            .map_err(|e| CycleError::Refused {
                step: Step::Retention,
                message: e.to_string(),
            })?
            .map_err(|source| CycleError::Store {
                step: Step::Retention,
                source,
            })?;
        let mut pruned = Vec::new();
        for d in decisions.into_iter().filter(|d| !d.keep) {
            self.record(
                "store.pruned",
                json!({"backup_id": d.archive.manifest.backup_id, "path": d.archive.relative_path}),
            )
            .await?;
            pruned.push(d.archive.manifest.backup_id);
        }
        Ok(pruned)
    }
}

/// Reads `backup.json`'s slug from the first member of a remote archive.
async fn peek_slug(session: &Session, path: &str) -> Result<String, String> {
    let bytes = session
        .read_tar_member(path, "./backup.json", 1 << 20)
        .await
        .map_err(|e| e.to_string())?;
    let backup = store::parse_backup_json(&bytes).map_err(|e| format!("backup.json: {e}"))?;
    Ok(backup.slug)
}

fn remote_join(dir: &str, file: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), file)
}

/// Home Assistant's local archive name: `"_".join(f"{name} {date:%Y-%m-%d %H.%M %S%f}.tar".split())`,
/// with the date as HA holds it (UTC).
pub fn ha_archive_file_name(name: &str, date: &str) -> Option<String> {
    // HA formats the date in the offset its string carries, so the wall-clock part is used as written.
    let civil_part = date
        .strip_suffix('Z')
        .or_else(|| {
            let cut = date.len().checked_sub(6)?;
            let (head, tail) = (date.get(..cut)?, date.get(cut..)?);
            (tail.starts_with(['+', '-']) && tail.as_bytes().get(3) == Some(&b':')).then_some(head)
        })
        .unwrap_or(date);
    let dt: jiff::civil::DateTime = civil_part.parse().ok()?;
    let micros = dt.subsec_nanosecond() / 1000;
    let stamp = format!("{}{:06}", dt.strftime("%Y-%m-%d %H.%M %S"), micros);
    let joined = format!("{name} {stamp}.tar");
    Some(joined.split_whitespace().collect::<Vec<_>>().join("_"))
}

/// Ids of the backups hapull asked for, kept in the store so clean-up never touches anyone else's.
const MADE_FILE: &str = ".hapull-made.json";

#[derive(Default, Serialize, Deserialize)]
struct MadeIds {
    /// Backups hapull asked Home Assistant for.
    ids: Vec<String>,
    /// Those of them committed to the store at least once (retention may have pruned them since).
    #[serde(default)]
    committed: Vec<String>,
    /// Those whose archive failed verification (e.g. HA died while writing it and still lists it): not
    /// pulled again by the catch-up, and never deleted by hapull.
    #[serde(default)]
    rejected: Vec<String>,
}

fn read_made_file(root: &Path) -> MadeIds {
    std::fs::read(root.join(MADE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<MadeIds>(&b).ok())
        .unwrap_or_default()
}

fn remember_made(root: &Path, id: &str) -> std::io::Result<()> {
    update_made(root, |m| push_unique(&mut m.ids, id))
}

fn remember_rejected(root: &Path, id: &str) -> std::io::Result<()> {
    update_made(root, |m| push_unique(&mut m.rejected, id))
}

fn remember_committed(root: &Path, id: &str) -> std::io::Result<()> {
    update_made(root, |m| push_unique(&mut m.committed, id))
}

fn push_unique(list: &mut Vec<String>, id: &str) -> bool {
    if list.iter().any(|x| x == id) {
        return false;
    }
    list.push(id.to_string());
    // Bounded: ids of backups long gone are of no use.
    if list.len() > 10_000 {
        list.drain(..list.len() - 10_000);
    }
    true
}

fn update_made(root: &Path, change: impl FnOnce(&mut MadeIds) -> bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut made = read_made_file(root);
    if !change(&mut made) {
        return Ok(());
    }
    let body = serde_json::to_vec_pretty(&made)?;
    std::fs::create_dir_all(root)?;
    let tmp = root.join(format!("{MADE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, root.join(MADE_FILE))?;
    std::fs::File::open(root)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_match_what_home_assistant_writes() {
        // From the recordings / NOTES.md.
        assert_eq!(
            ha_archive_file_name("hapull fixture", "2026-11-26T09:07:39.253410+00:00").as_deref(),
            Some("hapull_fixture_2026-11-26_09.07_39253410.tar")
        );
        assert_eq!(
            ha_archive_file_name(
                "Custom backup 2026.11.0",
                "2026-11-26T09:07:39.395316+00:00"
            )
            .as_deref(),
            Some("Custom_backup_2026.11.0_2026-11-26_09.07_39395316.tar")
        );
        assert_eq!(
            ha_archive_file_name("a  b", "2026-01-02T03:04:05+00:00").as_deref(),
            Some("a_b_2026-01-02_03.04_05000000.tar")
        );
        assert_eq!(ha_archive_file_name("x", "not a date"), None);
    }
}

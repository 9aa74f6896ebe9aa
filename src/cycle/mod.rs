//! One backup cycle, as an explicit sequence of named steps:
//!
//! ```text
//! Connect -> Create -> Await -> Locate -> Pull -> Commit -> CatchUp -> CleanUpHa -> Retention -> Offsite
//! ```
//!
//! [`Context::run_cycle`] shows that sequence in one function; each step lives in the file named after
//! its concern and has a tracing span and an audit record. This is the only place that knows the order
//! of steps, and it holds the one rule that matters: **nothing is deleted anywhere until a verified copy
//! exists elsewhere**. Home Assistant's backups are deleted only after the archive is committed
//! (hashed, verified, manifest written) in the store, and only hapull's own, beyond `keep_on_ha`; in
//! `service` mode the recipe's delete command runs only once every archive it would delete has a
//! verified local copy (see [`service_mode`]).
//!
//! Every archive enters the store through the same two step functions, [`Context::pull`] and
//! [`Context::commit`]: for the new backup, for a catch-up of an earlier one, and for archives saved
//! before the recipe's delete command.
//!
//! Everything Home Assistant says is untrusted: ids and names are validated before they become a path,
//! remote paths are always `remote_dir/<validated file name>`, and the archive must prove (its
//! `backup.json` slug) that it is the backup it claims to be.
//!
//! The cycle must not know how bytes travel (that is [`crate::transfer`]), how an archive is checked or
//! laid out on disk (that is [`crate::store`]), or how Home Assistant's protocol looks on the wire (that
//! is [`crate::ha`]).

mod catch_up;
mod cleanup;
mod connect;
mod create;
mod locate;
mod offsite;
mod pending;
mod save;
mod service_mode;
mod waiting;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracing::{Instrument, info, info_span, warn};

use crate::audit::{AuditLog, Kind};
use crate::config::{BackupMode, VerifyLevel};
use crate::ha::{Backup, BackupApi, Client, HaError};
use crate::store::{self, RetentionPolicy, Store, StoredArchive};
use crate::transfer::{HttpTarget, Identity, PullOptions, PullOutcome, SshTarget, TransferError};

pub use connect::remote_dir_problem;
pub use locate::{ha_archive_file_name, peek_backup_json};

/// The steps of a cycle, as named in logs, audit records and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Create,
    Await,
    Locate,
    Pull,
    Commit,
    CatchUp,
    CleanUpHa,
    Retention,
    Offsite,
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
            Step::CatchUp => "catch_up",
            Step::CleanUpHa => "cleanup_ha",
            Step::Retention => "retention",
            Step::Offsite => "offsite",
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
    #[error("{step}: gave up after {}: {what}", humantime::format_duration(*.after))]
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

    /// True when running the cycle again later may succeed: Home Assistant or the SSH host
    /// unreachable or restarting, or HA's backup manager busy past `blocked_timeout`. A refused
    /// token, a changed host key, a refusal, a failed backup or a store problem need a person.
    pub fn is_transient(&self) -> bool {
        match self {
            CycleError::Ha { source, .. } => source.is_transient(),
            CycleError::Transfer { source, .. } => match source {
                TransferError::RetriesExhausted { last, .. } => last.is_transient(),
                other => other.is_transient(),
            },
            CycleError::Timeout { step, .. } => *step == Step::Connect,
            CycleError::Store { .. }
            | CycleError::BackupFailed { .. }
            | CycleError::Refused { .. }
            | CycleError::Audit(_) => false,
        }
    }

    fn refused(step: Step, message: impl Into<String>) -> CycleError {
        CycleError::Refused {
            step,
            message: message.into(),
        }
    }
}

/// Tags a lower layer's error with the step it happened in: `client.backup_info().await.at(Step::Locate)?`.
trait At<T> {
    fn at(self, step: Step) -> Result<T, CycleError>;
}

impl<T> At<T> for Result<T, HaError> {
    fn at(self, step: Step) -> Result<T, CycleError> {
        self.map_err(|source| CycleError::Ha { step, source })
    }
}

impl<T> At<T> for Result<T, TransferError> {
    fn at(self, step: Step) -> Result<T, CycleError> {
        self.map_err(|source| CycleError::Transfer { step, source })
    }
}

impl<T> At<T> for Result<T, store::StoreError> {
    fn at(self, step: Step) -> Result<T, CycleError> {
        self.map_err(|source| CycleError::Store { step, source })
    }
}

/// What the cycle needs to know, from the validated config.
#[derive(Clone)]
pub struct Settings {
    /// What to ask Home Assistant for, and what to keep there (`[backup]`).
    pub backup: crate::config::Backup,
    pub remote_dir: String,
    pub verify: VerifyLevel,
    pub retention: RetentionPolicy,
    pub timezone: jiff::tz::TimeZone,
    pub pull: PullOptions,
}

/// How archives are fetched from the HA side.
#[derive(Clone)]
pub enum Source {
    /// SFTP from `Settings::remote_dir` on the HA host.
    Sftp {
        ssh: SshTarget,
        /// The SSH key, decrypted once when the context is built.
        identity: Identity,
    },
    /// Home Assistant's own download endpoint, `<prefix>/api/backup/download/<id>`, with the token.
    Http {
        target: HttpTarget,
        /// Path HA is served under behind a proxy (usually empty).
        prefix: String,
    },
}

impl Source {
    /// The host archives come from, as recorded in manifests.
    pub fn host(&self) -> &str {
        match self {
            Source::Sftp { ssh, .. } => &ssh.host,
            Source::Http { target, .. } => &target.host,
        }
    }
}

/// The long-lived parts a cycle works with.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub source: Source,
    pub store: Arc<Store>,
    pub audit: Option<AuditLog>,
    pub settings: Settings,
    /// `[[offsite]]` targets (none: no offsite step).
    pub offsite: Vec<crate::offsite::Target>,
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
    /// One report per offsite target.
    pub offsite: Vec<crate::offsite::TargetReport>,
}

/// A backup in Home Assistant the cycle works on, and what HA said about it.
#[derive(Debug, Clone)]
struct Made {
    /// The backup id; on a Supervisor install, the job id until the backup is identified.
    backup_id: String,
    /// The Supervisor job that makes the backup (Supervisor installs, until identified).
    job_id: Option<String>,
    /// When hapull asked for it, to tell it from older backups of the same name.
    requested_at: Option<jiff::Timestamp>,
    /// The local agent holding the copy (modern API); `None` on the legacy API.
    agent: Option<String>,
    /// The name hapull asked for (api mode), to find the backup when the job id is not its id.
    requested_name: Option<String>,
    /// HA's view of it (modern: details; legacy: the generate result or list entry).
    backup: Option<Backup>,
    /// The key of the ledger's pending entry for this request, until the backup id is recorded.
    pending: Option<String>,
}

impl Made {
    fn listed(backup: Backup, agent: Option<&str>) -> Made {
        Made {
            backup_id: backup.backup_id.clone(),
            job_id: None,
            requested_at: None,
            agent: agent.map(str::to_string),
            requested_name: None,
            backup: Some(backup),
            pending: None,
        }
    }
}

impl Context {
    async fn record(&self, kind: Kind, data: Value) -> Result<(), CycleError> {
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
        let span = info_span!("cycle", mode = self.settings.backup.mode.as_str());
        async {
            self.record(
                Kind::CycleStarted,
                json!({"mode": self.settings.backup.mode.as_str()}),
            )
            .await?;
            let outcome = self.steps(started).await;
            self.record_outcome(&outcome).await?;
            outcome
        }
        .instrument(span)
        .await
    }

    /// The sequence. Service mode saves every archive its delete command would remove inside Create.
    async fn steps(&self, started: Instant) -> Result<Report, CycleError> {
        let (api, agent, mut sub) = self.connect().instrument(info_span!("connect")).await?;
        if self.settings.backup.mode == BackupMode::Api {
            // Home Assistant is idle now: what earlier cycles asked for is finished or never will be.
            self.resolve_pending()
                .instrument(info_span!("pending"))
                .await;
        }
        let made = (self.create(api, agent, sub.as_mut()))
            .instrument(info_span!("create"))
            .await?;
        let made = (self.await_completion(api, sub.as_mut(), made))
            .instrument(info_span!("await"))
            .await?;
        drop(sub);
        self.finish(api, made, started).await
    }

    /// From a finished backup in Home Assistant to a clean state on both sides.
    async fn finish(
        &self,
        api: BackupApi,
        made: Made,
        started: Instant,
    ) -> Result<Report, CycleError> {
        let id = made.backup_id.clone();
        let remote = (self.locate(api, &made))
            .instrument(info_span!("locate", backup_id = %id))
            .await?;
        let (archive, pulled) = self.save(&made, &remote).await?;
        self.catch_up(api, made.agent.as_deref())
            .instrument(info_span!("catch_up"))
            .await?;
        let deleted_on_ha = (self.clean_up_ha(api))
            .instrument(info_span!("cleanup_ha"))
            .await?;
        let pruned = self.retention().instrument(info_span!("retention")).await?;
        let offsite = self.offsite().await?;
        Ok(Report {
            backup_id: made.backup_id,
            archive,
            pull: pulled,
            deleted_on_ha,
            pruned,
            duration: started.elapsed(),
            api,
            offsite,
        })
    }

    /// Pulls an existing Home Assistant backup (no new backup), then commits and cleans up like a cycle.
    pub async fn pull_existing(&self, backup_id: &str) -> Result<Report, CycleError> {
        let started = Instant::now();
        let api = self.client.detect_backup_api().await.at(Step::Connect)?;
        let list = self.client.backup_info().await.at(Step::Locate)?;
        let backup = (list.backups.into_iter())
            .find(|b| b.backup_id == backup_id)
            .ok_or_else(|| {
                CycleError::refused(
                    Step::Locate,
                    format!("Home Assistant has no backup \"{}\"; `hapull list --remote` shows the ids it has", backup_id.escape_debug()),
                )
            })?;
        let agent = self.local_agent(api, Step::Connect).await?;
        self.finish(api, Made::listed(backup, agent.as_deref()), started)
            .await
    }

    async fn record_outcome(&self, outcome: &Result<Report, CycleError>) -> Result<(), CycleError> {
        match outcome {
            Ok(r) => {
                info!(backup_id = %r.backup_id, bytes = r.pull.size, secs = r.duration.as_secs_f64(), "cycle finished: archive committed");
                self.record(
                    Kind::CycleFinished,
                    json!({"backup_id": r.backup_id, "size": r.pull.size, "sha256": r.pull.sha256_hex(),
                           "duration_s": r.duration.as_secs_f64(), "deleted_on_ha": r.deleted_on_ha, "pruned": r.pruned}),
                )
                .await
            }
            Err(e) => {
                warn!(error = %e, "cycle failed");
                self.record(
                    Kind::CycleFailed,
                    json!({"step": e.step().map(Step::as_str), "error": e.to_string()}),
                )
                .await
            }
        }
    }
}

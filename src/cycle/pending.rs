//! Pending requests: a backup hapull asked for is written to the store's ledger *before* the request
//! is sent, and becomes a backup id in the ledger as soon as that id is known. A cycle stopped in
//! between (the process killed, the machine down, Await timing out before a Supervisor job was
//! identified) leaves a pending entry; later cycles turn it into the backup id, so the backup is
//! pulled by the catch-up and cleaned up like every other backup hapull made, instead of lying in
//! Home Assistant as if someone else had made it.
//!
//! A pending entry is resolved by the Supervisor job's `reference` when there is a job id, else by the
//! name/date/instance rule ([`candidates`]), and only when exactly one backup fits. Resolving never
//! deletes anything: it only adds an id to the ledger. An entry nothing fits is dropped after
//! [`GIVE_UP_AFTER`] with a warning (the backup was never made, or was deleted by someone else).
//!
//! What this must not do: claim a backup it is not sure of (that would make it hapull's to delete once
//! a copy exists), or fail the cycle: a problem here is logged and tried again next cycle.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tracing::{info, warn};

use super::{Context, CycleError, Made, Step};
use crate::audit::Kind;
use crate::ha::{Backup, Install};
use crate::store::{Ledger, LedgerEntry, Pending, safe_component};

/// How long an unresolved request is kept before hapull stops looking for its backup.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The clocks of the HA host and this machine may differ a little: a backup dated this much before
/// the request may still be the one asked for.
const CLOCK_SLACK: SignedDuration = SignedDuration::from_secs(300);

/// A backup dated this long after an interrupted request is not the one it asked for: its date is
/// when it started, which is at once (HA refuses a request it cannot start), give or take the
/// difference between the clocks.
const LATEST_START: SignedDuration = SignedDuration::from_secs(600);

/// The ledger key of a request made at `t`.
pub(super) fn key(t: Timestamp) -> String {
    t.to_string()
}

/// Backups that may be the one asked for at `requested_at` under `name`: that name, dated no earlier
/// than the request (less [`CLOCK_SLACK`]) and, when `until` is given, no later than it; not already in
/// the ledger; made by this instance (`extra_metadata.instance_id` as the ledger remembers it, else as
/// on hapull's earlier backups still listed, when HA says). Oldest first, with whether the instance
/// could be checked.
pub(super) fn candidates(
    backups: Vec<Backup>,
    ledger: &Ledger,
    name: &str,
    requested_at: Option<Timestamp>,
    until: Option<Timestamp>,
) -> (Vec<Backup>, bool) {
    // Our instance: the one that made hapull's earlier backups, when known.
    let instance = ledger.instance_id.clone().or_else(|| {
        (backups.iter())
            .filter(|b| ledger.made(&b.backup_id))
            .find_map(|b| b.instance_id().map(str::to_string))
    });
    let since = requested_at.map(|t| t - CLOCK_SLACK);
    let mut found: Vec<Backup> = (backups.into_iter())
        .filter(|b| b.name == name)
        .filter(|b| !ledger.made(&b.backup_id))
        .filter(|b| {
            let date = b.date.parse::<Timestamp>().ok();
            let after = match (since, date) {
                (Some(since), Some(date)) => date >= since,
                // An undated backup cannot be told from an old one of the same name.
                (Some(_), None) => false,
                (None, _) => true,
            };
            let before = match (until, date) {
                (Some(until), Some(date)) => date <= until,
                (Some(_), None) => false,
                (None, _) => true,
            };
            after && before
        })
        .filter(|b| match (&instance, b.instance_id()) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        })
        .collect();
    found.sort_by(|a, b| a.date.cmp(&b.date));
    (found, instance.is_some())
}

/// How a backup found by [`candidates`] was identified, as the audit log says it: the instance only
/// when it was compared.
pub(super) fn how_found(instance_checked: bool, b: &Backup) -> &'static str {
    if instance_checked && b.instance_id().is_some() {
        "name, date and instance"
    } else {
        "name and date"
    }
}

impl Context {
    /// Writes the pending entry for a request about to be sent; returns its key.
    pub(super) fn note_request(
        &self,
        requested_at: Timestamp,
        name: &str,
        agent: Option<&str>,
        step: Step,
    ) -> Result<String, CycleError> {
        let k = key(requested_at);
        Ledger::add_pending(
            self.store.root(),
            Pending {
                requested_at: k.clone(),
                name: Some(name.to_string()),
                agent: agent.map(str::to_string),
                job_id: None,
            },
        )
        .map_err(|e| {
            CycleError::refused(
                step,
                format!(
                    "cannot record the backup request in the store ({e}); no backup was asked for"
                ),
            )
        })?;
        Ok(k)
    }

    /// Records the backup id of `made`: its pending entry (if any) becomes a made id in one write.
    pub(super) fn settle(
        &self,
        made: &Made,
        backup_id: &str,
        step: Step,
    ) -> Result<(), CycleError> {
        match &made.pending {
            Some(k) => Ledger::settle_pending(self.store.root(), k, Some(backup_id)),
            None => Ledger::remember(self.store.root(), LedgerEntry::Made, backup_id),
        }
        .map_err(|e| Self::unrecorded(step, e))
    }

    fn unrecorded(step: Step, e: std::io::Error) -> CycleError {
        CycleError::refused(
            step,
            format!("cannot record the new backup id in the store: {e}"),
        )
    }

    /// At the start of a cycle (Home Assistant idle): turns the requests earlier cycles left pending
    /// into backup ids. Never fails the cycle.
    pub(super) async fn resolve_pending(&self) {
        let pending = match Ledger::read(self.store.root()) {
            Ok(l) => l.pending,
            Err(e) => {
                warn!(error = %e, "cannot read the list of pending backup requests");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        // One listing for all entries: nothing is being made while HA is idle.
        let listed = match self.client.backup_info().await {
            Ok(info) => info.backups,
            Err(e) => {
                warn!(error = %e, "cannot list Home Assistant's backups; pending backup requests are looked at next cycle");
                return;
            }
        };
        for p in pending {
            if let Err(e) = self.resolve_one(&p, &listed).await {
                warn!(requested_at = %p.requested_at, error = %e, "a backup requested by an earlier cycle is still unidentified; trying again next cycle");
            }
        }
    }

    async fn resolve_one(&self, p: &Pending, listed: &[Backup]) -> Result<(), CycleError> {
        let requested_at = p.requested_at.parse::<Timestamp>().ok();
        let supervisor = p.agent.as_deref().map(Install::of_agent) == Some(Install::Supervisor);
        let mut found = None;
        if let (Some(job), true) = (&p.job_id, supervisor) {
            match self.client.supervisor_job_reference(job).await {
                Ok(Some(id)) => found = Some((id, "supervisor job reference")),
                Ok(None) => {}
                // The Supervisor forgets jobs when it restarts: the name rule still applies.
                Err(e) => {
                    info!(job_id = %job, error = %e, "the Supervisor does not know the backup job; finding the backup by name and date")
                }
            }
        }
        if found.is_none()
            && let Some(name) = &p.name
        {
            // Read again for each entry: one resolved just before is no candidate for this one.
            let ledger = Ledger::read(self.store.root())
                .map_err(|e| CycleError::refused(Step::Connect, e.to_string()))?;
            let until = requested_at.map(|t| t + LATEST_START);
            let (mut fit, checked) =
                candidates(listed.to_vec(), &ledger, name, requested_at, until);
            match fit.len() {
                1 => {
                    found = fit
                        .pop()
                        .map(|b| (b.backup_id.clone(), how_found(checked, &b)))
                }
                0 => {}
                n => warn!(
                    requested_at = %p.requested_at, name = %name, candidates = n,
                    "several backups fit an interrupted request; claiming none of them (they stay in Home Assistant, untouched)"
                ),
            }
        }
        match found {
            Some((id, how)) => {
                let id = safe_component(&id).map_err(|e| {
                    CycleError::refused(
                        Step::Connect,
                        format!("Home Assistant gave an unusable backup id: {e}"),
                    )
                })?;
                Ledger::settle_pending(self.store.root(), &p.requested_at, Some(&id))
                    .map_err(|e| Self::unrecorded(Step::Connect, e))?;
                info!(backup_id = %id, requested_at = %p.requested_at, how, "identified the backup an interrupted cycle asked for");
                self.record(
                    Kind::BackupIdentified,
                    json!({"job_id": p.job_id, "backup_id": id, "how": how,
                           "requested_at": p.requested_at, "interrupted": true}),
                )
                .await
            }
            None => {
                let age = requested_at
                    .map(|t| Timestamp::now().duration_since(t))
                    .unwrap_or(SignedDuration::MAX);
                let bound = SignedDuration::from_secs(
                    GIVE_UP_AFTER.as_secs().try_into().unwrap_or(i64::MAX),
                );
                if age < bound {
                    info!(requested_at = %p.requested_at, "the backup an interrupted cycle asked for is not found yet");
                    return Ok(());
                }
                Ledger::settle_pending(self.store.root(), &p.requested_at, None)
                    .map_err(|e| Self::unrecorded(Step::Connect, e))?;
                warn!(
                    requested_at = %p.requested_at, name = ?p.name, job_id = ?p.job_id,
                    "gave up looking for the backup an interrupted cycle asked for (7 days); if it exists in Home Assistant, hapull treats it as someone else's and never deletes it"
                );
                Ok(())
            }
        }
    }
}

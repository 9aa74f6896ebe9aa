//! The daemon's deep verification (`[store] deep_verify`): after a cycle committed an archive and a
//! deep verification is due, that archive is unpacked into a private temporary folder in the store
//! and checked ([`crate::store::deep`]) on a blocking thread, and the verdict goes to the audit
//! log, the state file, the metrics (and so health), and — when something failed — to Home
//! Assistant and the failure webhook.
//!
//! It runs after the cycle, so it never delays committing or cleaning up, and it must not delete or
//! change anything in the store or in Home Assistant, whatever it finds. That is safe: the archive
//! is a byte-exact, fully verified copy of what Home Assistant wrote, so a database found damaged
//! was already damaged in Home Assistant's copy; keeping that copy would not save anything, and
//! deleting the local one would lose the rest of the backup.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::audit::Kind;
use crate::config::DeepVerify;
use crate::daemon::DeepVerdict;
use crate::store::StoredArchive;
use crate::store::deep::{Cancel, DeepReport, Outcome, Verdict, deep_verify};

use super::CycleJob;

/// Free space a deep verification leaves in the store: the next pull checks its own room, and the
/// store's filesystem should never be filled to the last byte by a check.
const FREE_RESERVE: u64 = 256 * 1024 * 1024;

/// Whether a deep verification is due now, by the setting and the last verdict in the state file.
/// After a failure, every cycle checks its archive until one passes, so health recovers with the
/// first good backup.
pub(super) fn due(setting: DeepVerify, last: Option<DeepVerdict>, now: Timestamp) -> bool {
    match setting {
        DeepVerify::Off => false,
        DeepVerify::EveryCycle => true,
        DeepVerify::Every(interval) => match last {
            None => true,
            Some(v) if !v.passed => true,
            Some(v) => Duration::try_from(now.duration_since(v.at)).is_ok_and(|a| a >= interval),
        },
    }
}

fn outcome_str(o: &Outcome) -> &'static str {
    match o {
        Outcome::Passed(_) => "passed",
        Outcome::Failed(_) => "failed",
        Outcome::NotIncluded(_) => "not_included",
        Outcome::NotRun(_) => "not_run",
    }
}

/// The per-check results for the audit record: names, results and what they proved. The details
/// name files, sizes and SQLite's findings, never file contents or the password.
fn checks_json(report: &DeepReport) -> Value {
    Value::Array(
        report
            .checks
            .iter()
            .map(|c| {
                json!({"check": c.name, "result": outcome_str(&c.outcome), "detail": c.outcome.detail()})
            })
            .collect(),
    )
}

impl CycleJob {
    /// Deep-verifies `archive` (just committed by this cycle) when the setting says it is due.
    pub(super) async fn deep_verify_if_due(&self, archive: &StoredArchive) {
        let now = self.clock.now();
        if !due(self.deep_verify, self.state.get().last_deep_verify, now) {
            return;
        }
        let id = archive.manifest.backup_id.clone();
        if archive.manifest.protected && self.ctx.settings.backup.password.is_none() {
            let reason = "the backup is password-protected and no [backup] password is configured, \
                          so it cannot be unpacked: set password_file (or password_env) to deep-verify it";
            warn!(backup_id = %id, "cannot deep-verify: {reason}");
            self.deep_skipped(archive, reason).await;
            return;
        }
        info!(backup_id = %id, path = %archive.relative_path, "deep verification: unpacking the archive and checking its database and .storage files");
        let cancel = Arc::new(Cancel::keeping_free(FREE_RESERVE));
        let work = {
            let (store, archive, cancel) =
                (self.ctx.store.clone(), archive.clone(), cancel.clone());
            let password = self.ctx.settings.backup.password.clone();
            tokio::task::spawn_blocking(move || {
                let mut keys = password.map(crate::store::Keys::new);
                deep_verify(&store, &archive, keys.as_mut(), &cancel)
            })
        };
        tokio::pin!(work);
        let mut stop = self.stop.clone();
        let stopping = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        // On shutdown the check is stopped and its temporary folder removed before the job ends.
        let joined = tokio::select! {
            done = &mut work => done,
            () = stopping => { cancel.cancel(); work.await }
        };
        let finished = self.clock.now();
        let duration_s = finished.duration_since(now).as_secs_f64().max(0.0);
        let report = match joined {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                let reason = format!("the deep verification could not run: {e}");
                warn!(backup_id = %id, "{reason}");
                self.deep_skipped(archive, &reason).await;
                return;
            }
            Err(e) => {
                let reason = format!("the deep verification task ended abnormally: {e}");
                warn!(backup_id = %id, "{reason}");
                self.deep_skipped(archive, &reason).await;
                return;
            }
        };
        let data = json!({"backup_id": id, "path": archive.relative_path, "duration_s": duration_s,
                          "checks": checks_json(&report)});
        match report.verdict() {
            Verdict::Passed => {
                info!(backup_id = %id, secs = duration_s, "deep verification passed");
                self.deep_verdict(true, finished);
                self.audit_step(Kind::DeepVerified, data).await;
            }
            Verdict::Failed => {
                let failed: Vec<String> = report
                    .checks
                    .iter()
                    .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
                    .map(|c| format!("{}: {}", c.name, c.outcome.detail()))
                    .collect();
                let summary = failed.join("; ");
                error!(backup_id = %id, problems = %summary, "deep verification FAILED: this backup would not restore cleanly; nothing was deleted");
                self.deep_verdict(false, finished);
                self.audit_step(Kind::DeepVerifyFailed, data).await;
                self.notify_deep_failure(&id, &archive.relative_path, &summary)
                    .await;
            }
            Verdict::NotRun => {
                let reason = report
                    .checks
                    .iter()
                    .find(|c| matches!(c.outcome, Outcome::NotRun(_)))
                    .map_or("a check could not run", |c| c.outcome.detail())
                    .to_string();
                warn!(backup_id = %id, %reason, "deep verification did not complete; it is tried again after the next cycle");
                self.metrics.deep_verify_skipped();
                let mut data = data;
                data["reason"] = json!(reason);
                self.audit_step(Kind::DeepVerifySkipped, data).await;
            }
        }
    }

    /// A verdict: in the state file (for the interval and `hapull health`) and the metrics.
    fn deep_verdict(&self, passed: bool, at: Timestamp) {
        let verdict = DeepVerdict { at, passed };
        self.metrics.deep_verified(verdict);
        if let Err(e) = self.state.record_deep_verify(verdict) {
            warn!(error = %e, "cannot record the deep verification in the state file");
        }
    }

    /// A due check that could not run: no verdict, so the next cycle tries again.
    async fn deep_skipped(&self, archive: &StoredArchive, reason: &str) {
        self.metrics.deep_verify_skipped();
        self.audit_step(
            Kind::DeepVerifySkipped,
            json!({"backup_id": archive.manifest.backup_id, "path": archive.relative_path, "reason": reason}),
        )
        .await;
    }

    async fn audit_step(&self, kind: Kind, data: Value) {
        if let Some(a) = &self.ctx.audit
            && let Err(e) = a.step(kind, data).await
        {
            warn!(error = %e, kind = %kind, "cannot write the audit record");
        }
    }

    /// Said in Home Assistant (event and persistent notification) and on the failure webhook.
    async fn notify_deep_failure(&self, backup_id: &str, path: &str, problems: &str) {
        let body = json!({"event": "deep_verify_failed", "backup_id": backup_id, "archive": path,
                          "error": problems, "time": Timestamp::now().to_string()});
        let note = json!({"title": "hapull: backup would not restore cleanly",
                          "message": format!("The deep verification of backup {backup_id} found a problem: {problems}. The archive is kept; check Home Assistant's recorder database and .storage files."),
                          "notification_id": "hapull_deep_verify_failed"});
        self.alert("hapull_deep_verify_failed", &body, note).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn due_by_setting_and_last_verdict() {
        let now = ts("2026-06-08T10:00:00Z");
        let week = DeepVerify::Every(Duration::from_secs(7 * 86400));
        let passed = |at: &str| {
            Some(DeepVerdict {
                at: ts(at),
                passed: true,
            })
        };
        assert!(!due(DeepVerify::Off, None, now));
        assert!(due(
            DeepVerify::EveryCycle,
            passed("2026-06-08T09:00:00Z"),
            now
        ));
        assert!(due(week, None, now));
        assert!(!due(week, passed("2026-06-01T10:00:01Z"), now));
        assert!(due(week, passed("2026-06-01T10:00:00Z"), now));
        // After a failure every cycle checks again, however recent the failure.
        let failed = Some(DeepVerdict {
            at: ts("2026-06-08T09:59:00Z"),
            passed: false,
        });
        assert!(due(week, failed, now));
        assert!(!due(DeepVerify::Off, failed, now));
    }
}

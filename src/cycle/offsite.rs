//! The offsite step: after the archive is committed (and HA and the store are tidied), every
//! `[[offsite]]` target gets what it is missing — this archive, and earlier committed ones an
//! earlier cycle could not copy — proven on the remote, then its own retention.
//!
//! A target's failure is reported (log, audit, the cycle's report, and so notifications and
//! metrics); it fails the cycle only when the target says `on_failure = "fail_cycle"`. The archive
//! stays committed locally either way.

use tracing::{Instrument, info_span};

use super::{Context, CycleError, Step};
use crate::offsite::TargetReport;

impl Context {
    pub(super) async fn offsite(&self) -> Result<Vec<TargetReport>, CycleError> {
        let mut reports = Vec::new();
        for target in &self.offsite {
            let report = target
                .sync(
                    self.store.clone(),
                    &self.settings.timezone,
                    self.audit.as_ref(),
                )
                .instrument(info_span!("offsite", target = %target.name()))
                .await;
            reports.push(report);
        }
        if let Some(bad) = reports.iter().find(|r| r.fail_cycle && !r.ok()) {
            let errors: Vec<&str> = bad.failures.iter().map(|(_, e)| e.as_str()).collect();
            return Err(CycleError::Refused {
                step: Step::Offsite,
                message: format!("offsite target {}: {}", bad.name, errors.join("; ")),
            });
        }
        Ok(reports)
    }
}

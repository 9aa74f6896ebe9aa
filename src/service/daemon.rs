//! The long-running service behind `hapull run`: one Home Assistant connection kept open between
//! cycles, the cycle run on the schedule (never two at once), retries of a failed cycle, chosen HA
//! events recorded in the audit log, state, metrics, health and notifications, and a clean stop when
//! asked: scheduling stops, a running cycle may finish within the grace period, else it is cut,
//! leaving a resumable partial file. Building the cycle's parts from the config is `super`'s job.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::audit::{AuditLog, Kind};
use crate::config::Config;
use crate::cycle::{Context, CycleError, Report};
use crate::daemon::{
    Clock, CycleReport, Metrics, Notifier, OffsiteValues, Outcome, PendingRetry, RetryAt,
    RetryOutcome, RetryPolicy, RunReason, Schedule, Scheduler, StateFile, StatusServer, Tick,
    retry_until,
};
use crate::ha::{Client, ConnectionState, HaError, SubItem};

use super::{ServiceError, client_options, context, open_audit, setup, timezone};
use crate::config::DeepVerify;

mod deep_check;

/// Connects, retrying transient failures with capped backoff until `shutdown` resolves; a refused
/// token or a bad certificate ends at once. `None` when shut down first.
async fn connect_with_retry(
    cfg: &Config,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Client>, ServiceError> {
    let opts = client_options(cfg, true)?;
    let connect = (|| Client::connect(opts.clone()))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(60))
                .with_jitter()
                .without_max_times(),
        )
        .sleep(tokio::time::sleep)
        .when(HaError::is_transient)
        .notify(|e, retry_in| {
            warn!(error = %e, retry_in = %humantime::format_duration(retry_in), "Home Assistant is not reachable yet");
        });
    // A connection attempt may be dropped at any point: nothing is half-done on either side.
    tokio::select! {
        connected = connect => Ok(Some(connected?)),
        _ = &mut *shutdown => Ok(None),
    }
}

/// Runs the service until `shutdown` resolves (first signal: graceful) — a second resolution of
/// `force` cuts a running cycle at once.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send,
    force: impl Future<Output = ()> + Send,
) -> Result<(), ServiceError> {
    let clock = Clock::system();
    let tz = timezone(&cfg)?;
    let schedule = Schedule::parse(&cfg.schedule.cron, tz)
        .map_err(|e| ServiceError::Config(format!("[schedule] cron: {e}")))?;
    // Retries of a failed cycle stop when the next run is due; the scheduler owns its own copy.
    let next_runs = schedule.clone();
    let retry = RetryPolicy {
        min_delay: cfg.schedule.retry_min,
        max_delay: cfg.schedule.retry_max,
        seed: None,
    };
    if let Some(dir) = cfg.schedule.state_file.parent() {
        crate::private_fs::create_dir_all(dir)
            .map_err(|e| setup(format!("creating {}: {e}", dir.display())))?;
    }
    let state = StateFile::open(&cfg.schedule.state_file).map_err(setup)?;
    state.record_start(clock.now()).map_err(setup)?;
    let metrics = Metrics::new(env!("CARGO_PKG_VERSION"), clock.now());
    if let Some(at) = state.get().last_success {
        metrics.set_last_success(at);
    }
    let deep_verify = cfg
        .store
        .as_ref()
        .map(|s| s.deep_verify)
        .unwrap_or_default();
    if deep_verify == DeepVerify::Off {
        // A failure found while deep verification was on must not keep health bad for ever.
        if let Err(e) = state.clear_deep_verify() {
            warn!(error = %e, "cannot clear the last deep verification in the state file");
        }
    }
    let st = state.get();
    metrics.set_deep_verify(st.last_deep_verify, st.last_deep_verify_success);
    let notifier = Notifier::new(
        cfg.notify.webhook_success.as_deref(),
        cfg.notify.webhook_failure.as_deref(),
    )
    .map_err(setup)?;

    let (stop_tx, _) = tokio::sync::watch::channel(false);

    if let Some(addr) = cfg.status.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| setup(format!("[status] listen {addr}: {e}")))?;
        info!(%addr, "status endpoint: /healthz and /metrics");
        let server = StatusServer::new(metrics.clone(), cfg.status.max_age, clock.clone())
            .with_state_file(state.clone());
        let mut stop_rx = stop_tx.subscribe();
        tokio::spawn(server.serve(listener, async move {
            let _ = stop_rx.wait_for(|v| *v).await;
        }));
    }

    let mut shutdown = Box::pin(shutdown);
    let audit = open_audit(&cfg).await?;
    if let Some(a) = &audit {
        let _ = a
            .step(
                Kind::ServiceStarted,
                json!({"version": env!("CARGO_PKG_VERSION"), "config": cfg.path.display().to_string(),
                       "cron": cfg.schedule.cron, "timezone": cfg.schedule.timezone,
                       "deep_verify": deep_verify.describe()}),
            )
            .await;
    }
    let Some(client) = connect_with_retry(&cfg, &mut shutdown).await? else {
        // Stopped before Home Assistant answered: the stop is still part of the record.
        if let Some(a) = &audit {
            let _ = a
                .step(Kind::ServiceStopped, json!({"before": "connected"}))
                .await;
        }
        close_audit(&audit).await;
        return Ok(());
    };
    info!(ha_version = %client.ha_version(), endpoint = %cfg.home_assistant.endpoint, "connected to Home Assistant");
    metrics.set_ha_connected(true);
    tokio::spawn(watch_connection(
        client.clone(),
        metrics.clone(),
        audit.clone(),
    ));
    if let (Some(a), Some(acfg)) = (&audit, &cfg.audit) {
        for t in &acfg.record_events {
            match client.subscribe_events(Some(t)).await {
                Ok(sub) => {
                    tokio::spawn(record_events(
                        sub,
                        a.clone(),
                        t.clone(),
                        acfg.record_domains.clone(),
                        acfg.record_entity_ids.clone(),
                    ));
                }
                Err(e) => warn!(event_type = %t, error = %e, "cannot record this event type"),
            }
        }
    }
    let ctx = context(&cfg, client.clone(), audit.clone(), false).await?;
    offsite_metrics_at_start(&ctx, &metrics).await;
    let mut scheduler = Scheduler::new(schedule, clock.clone(), state.clone())
        .with_jitter(cfg.schedule.jitter)
        .with_run_on_start(cfg.schedule.run_on_start);
    info!(cron = %cfg.schedule.cron, timezone = %cfg.schedule.timezone, "scheduler started");

    let mut running: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            tick = scheduler.next_tick() => match tick {
                Tick::Skipped { scheduled_for } => {
                    warn!(%scheduled_for, "a run came due while the previous cycle is still running; skipped");
                    metrics.cycle_skipped();
                    if let Some(a) = &audit {
                        let _ = a.step(Kind::CycleSkipped, json!({"scheduled_for": scheduled_for.to_string()})).await;
                    }
                }
                Tick::Run { scheduled_for, reason, guard } => {
                    let why = match reason {
                        RunReason::Scheduled => "scheduled".to_string(),
                        RunReason::OnStart => "run_on_start".to_string(),
                        RunReason::CatchUp { missed } => format!("catching up a run missed at {missed}"),
                    };
                    info!(%scheduled_for, reason = %why, "starting a cycle");
                    let job = CycleJob {
                        ctx: ctx.clone(),
                        metrics: metrics.clone(),
                        state: state.clone(),
                        notifier: notifier.clone(),
                        clock: clock.clone(),
                        notify_ha: cfg.notify.home_assistant,
                        retry,
                        deep_verify,
                        next_due: next_runs.next_after(scheduled_for),
                        stop: stop_tx.subscribe(),
                    };
                    running = Some(tokio::spawn(async move {
                        let _running = guard;
                        job.run().await;
                    }));
                }
            },
        }
    }

    info!("shutting down: no new cycles");
    let _ = stop_tx.send(true);
    if let Some(mut handle) = running.take()
        && !handle.is_finished()
    {
        let grace = cfg.schedule.shutdown_grace;
        info!(?grace, "waiting for the running cycle to finish");
        tokio::select! {
            _ = &mut handle => info!("the running cycle finished"),
            _ = tokio::time::sleep(grace) => {
                warn!("the running cycle did not finish within the grace period; cutting it (a partial download stays and is resumed next time)");
                handle.abort();
                let _ = handle.await;
            }
            _ = force => {
                warn!("second signal: cutting the running cycle now (a partial download stays and is resumed next time)");
                handle.abort();
                let _ = handle.await;
            }
        }
    }
    if let Some(a) = &audit {
        let _ = a.step(Kind::ServiceStopped, json!({})).await;
    }
    close_audit(&audit).await;
    Ok(())
}

/// The offsite gauges from the ledgers, so a restarted daemon does not report "never" until the
/// next cycle.
async fn offsite_metrics_at_start(ctx: &Context, metrics: &Metrics) {
    for t in &ctx.offsite {
        let (store, target, tz) = (ctx.store.clone(), t.clone(), ctx.settings.timezone.clone());
        let status = tokio::task::spawn_blocking(move || target.local_status(&store, &tz)).await;
        match status {
            Ok(Ok((ledger, lag_archives, lag_bytes))) => metrics.set_offsite(
                t.name(),
                OffsiteValues {
                    last_success: ledger.last_success_at(),
                    lag_archives,
                    lag_bytes,
                    failures: 0,
                },
                false,
            ),
            Ok(Err(e)) => warn!(target = %t.name(), error = %e, "cannot read the offsite ledger"),
            Err(e) => warn!(error = %e, "offsite status task failed"),
        }
    }
}

async fn close_audit(audit: &Option<AuditLog>) {
    if let Some(a) = audit
        && let Err(e) = a.close().await
    {
        warn!(error = %e, "closing the audit log");
    }
}

struct CycleJob {
    ctx: Context,
    metrics: Metrics,
    state: StateFile,
    notifier: Notifier,
    clock: Clock,
    notify_ha: bool,
    retry: RetryPolicy,
    /// When the archive a cycle committed is deep-verified.
    deep_verify: DeepVerify,
    /// When the next scheduled run is due: retries stop before it.
    next_due: Option<Timestamp>,
    /// Becomes true on shutdown: a wait for a retry ends at once (a running attempt is not cut).
    stop: tokio::sync::watch::Receiver<bool>,
}

impl CycleJob {
    /// Runs the cycle; a transient failure is retried with backoff until the next scheduled run, a
    /// permanent one is alerted at once. Only the final outcome is notified.
    async fn run(self) {
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        let outcome = retry_until(
            &self.retry,
            &self.clock,
            self.next_due,
            stopped,
            CycleError::is_transient,
            || self.attempt(),
            |pending, e| self.retrying(pending, e),
        )
        .await;
        self.metrics.cycle_retry_cleared();
        if let Err(e) = self.state.clear_retry() {
            warn!(error = %e, "cannot clear the pending retry in the state file");
        }
        match outcome {
            RetryOutcome::Succeeded {
                value: (r, duration),
                attempts,
            } => {
                if attempts > 1 {
                    info!(attempts, "the cycle succeeded after retrying");
                }
                self.notify_success(&r, duration).await;
                self.deep_verify_if_due(&r.archive).await;
            }
            RetryOutcome::Permanent { error, .. } => {
                tracing::error!(error = %error, "the cycle failed for a reason retrying cannot fix; not retried");
                self.notify_failure(&error.to_string()).await;
            }
            RetryOutcome::Exhausted { error, attempts } => {
                warn!(attempts, error = %error, "the cycle still fails; the next scheduled run tries again");
                self.notify_failure(&format!(
                    "{error} (tried {attempts} time(s); retries stopped because the next scheduled run is due)"
                ))
                .await;
            }
            RetryOutcome::Stopped { error, attempts } => {
                info!(attempts, error = %error, "shutting down while waiting to retry the failed cycle");
            }
        }
        // Between cycles the daemon only waits: give the pull's buffers back to the system.
        crate::release_memory();
    }

    /// One run of the cycle, counted in the metrics.
    async fn attempt(&self) -> Result<(Report, Duration), CycleError> {
        let started = self.clock.now();
        self.metrics.cycle_started(started);
        let outcome = self.ctx.run_cycle().await;
        let finished_at = self.clock.now();
        let duration = finished_at.duration_since(started).unsigned_abs();
        match outcome {
            Ok(r) => {
                if let Err(e) = self.state.record_success(finished_at) {
                    warn!(error = %e, "cannot record the success in the state file; `hapull health` may report stale data");
                }
                self.metrics.cycle_finished(&CycleReport {
                    outcome: Outcome::Success,
                    finished_at,
                    duration,
                    pulled_bytes: r.pull.size.saturating_sub(r.pull.resumed_bytes),
                    transfer_duration: r.pull.duration,
                    archive_bytes: Some(r.pull.size),
                });
                self.metrics.archive_verified(
                    r.archive.manifest.verified == Some(crate::store::Level::Full),
                    r.archive.manifest.protected,
                );
                for o in &r.offsite {
                    self.metrics.set_offsite(
                        &o.name,
                        OffsiteValues {
                            last_success: o.last_success,
                            lag_archives: o.lag_archives,
                            lag_bytes: o.lag_bytes,
                            failures: 0,
                        },
                        !o.ok(),
                    );
                    if !o.ok() {
                        let errors: Vec<&str> =
                            o.failures.iter().map(|(_, e)| e.as_str()).collect();
                        self.notify_offsite_failure(&o.name, &errors.join("; "))
                            .await;
                    }
                }
                Ok((r, duration))
            }
            Err(e) => {
                let recorded = self.state.record_failure(finished_at);
                if let Err(e) = recorded {
                    warn!(error = %e, "cannot record the outcome in the state file; `hapull health` may report stale data");
                }
                self.metrics.cycle_finished(&CycleReport {
                    outcome: Outcome::Failed,
                    finished_at,
                    duration,
                    pulled_bytes: 0,
                    transfer_duration: Duration::ZERO,
                    archive_bytes: None,
                });
                Err(e)
            }
        }
    }

    fn retrying(&self, pending: &PendingRetry, error: &CycleError) {
        warn!(
            attempt = pending.attempt,
            retry_in = %humantime::format_duration(Duration::from_secs(pending.delay.as_secs())),
            at = %pending.at,
            error = %error,
            "the cycle failed for a transient reason; retrying"
        );
        self.metrics.cycle_retry_scheduled(pending.at);
        if let Err(e) = self.state.record_retry(RetryAt {
            attempt: pending.attempt,
            at: pending.at,
        }) {
            warn!(error = %e, "cannot record the pending retry in the state file");
        }
        if let Some(a) = &self.ctx.audit {
            a.event(
                Kind::CycleRetry,
                json!({"attempt": pending.attempt, "delay_s": pending.delay.as_secs_f64(),
                       "at": pending.at.to_string(), "error": error.to_string()}),
            );
        }
    }

    async fn notify_success(&self, r: &Report, duration: Duration) {
        let body = json!({"backup_id": r.backup_id, "size": r.pull.size, "sha256": r.pull.sha256_hex(),
                          "duration_s": duration.as_secs_f64(), "archive": r.archive.relative_path});
        if self.notify_ha
            && let Err(e) = self
                .ctx
                .client
                .fire_event("hapull_backup_pulled", body.clone())
                .await
        {
            warn!(error = %e, "cannot fire hapull_backup_pulled in Home Assistant");
        }
        if let Err(e) = self.notifier.success(&body).await {
            warn!(error = %e, "success webhook failed");
        }
    }

    /// An offsite copy failed (`on_failure = "alert"`): the archive is safe locally, the second copy
    /// is missing. Said in Home Assistant and on the failure webhook.
    async fn notify_offsite_failure(&self, target: &str, error: &str) {
        let body =
            json!({"offsite_target": target, "error": error, "time": Timestamp::now().to_string()});
        let note = json!({"title": "hapull: offsite copy missing", "message": format!("The archive is committed locally, but the offsite copy to {target} failed: {error}"), "notification_id": format!("hapull_offsite_failed_{target}")});
        self.alert("hapull_offsite_failed", &body, note).await;
    }

    async fn notify_failure(&self, error: &str) {
        let body = json!({"error": error, "time": Timestamp::now().to_string()});
        let note = json!({"title": "hapull: backup not pulled", "message": format!("The last backup cycle failed: {error}"), "notification_id": "hapull_backup_failed"});
        self.alert("hapull_backup_failed", &body, note).await;
    }

    /// A problem a person must hear of: an `event` in Home Assistant with `body` and a persistent
    /// `note` there (when notifying HA is on), and `body` on the failure webhook. Failing to say it
    /// is logged, never fatal.
    async fn alert(&self, event: &str, body: &Value, note: Value) {
        if self.notify_ha {
            if let Err(e) = self.ctx.client.fire_event(event, body.clone()).await {
                warn!(error = %e, event, "cannot fire the event in Home Assistant");
            }
            if let Err(e) = self
                .ctx
                .client
                .call_service(
                    "persistent_notification",
                    "create",
                    note,
                    false,
                    Duration::from_secs(30),
                )
                .await
            {
                warn!(error = %e, "cannot create a persistent notification in Home Assistant");
            }
        }
        if let Err(e) = self.notifier.failure(body).await {
            warn!(error = %e, "failure webhook failed");
        }
    }
}

async fn watch_connection(client: Client, metrics: Metrics, audit: Option<AuditLog>) {
    let mut state = client.state();
    let mut last: Option<ConnectionState> = None;
    loop {
        let current = state.borrow_and_update().clone();
        metrics.set_ha_connected(current == ConnectionState::Connected);
        // A notification that repeats the state already recorded is not a change of connection.
        if last.as_ref() == Some(&current) {
            if state.changed().await.is_err() {
                return;
            }
            continue;
        }
        last = Some(current.clone());
        let text = match &current {
            ConnectionState::Connected => {
                json!({"state": "connected", "ha_version": client.ha_version()})
            }
            ConnectionState::Reconnecting { reason } => {
                json!({"state": "reconnecting", "reason": reason})
            }
            ConnectionState::Failed { reason } => json!({"state": "failed", "reason": reason}),
            ConnectionState::Closed => json!({"state": "closed"}),
        };
        if let Some(a) = &audit {
            a.event(Kind::HaConnection, text);
        }
        if let ConnectionState::Failed { reason } = &current {
            tracing::error!(%reason, "the connection to Home Assistant failed for good; fix the cause and restart hapull");
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Records HA bus events of one type in the audit log, filtered by domain / entity id.
async fn record_events(
    mut sub: crate::ha::Subscription,
    audit: AuditLog,
    event_type: String,
    domains: Vec<String>,
    entities: Vec<String>,
) {
    while let Some(item) = sub.next().await {
        match item {
            SubItem::Event(e) => {
                if !passes(&e, &domains, &entities) {
                    continue;
                }
                audit.event(Kind::HaEvent, e);
            }
            SubItem::Reconnected => {
                audit.event(Kind::HaEventsGap, json!({"event_type": event_type, "why": "reconnected; events may have been missed"}));
            }
            SubItem::Lagged(n) => {
                audit.event(
                    Kind::HaEventsGap,
                    json!({"event_type": event_type, "dropped": n}),
                );
            }
        }
    }
}

fn passes(event: &Value, domains: &[String], entities: &[String]) -> bool {
    let data = event.get("data");
    let domain_ok = domains.is_empty()
        || data
            .and_then(|d| d.get("domain"))
            .and_then(Value::as_str)
            .is_some_and(|d| domains.iter().any(|x| x == d));
    let entity_ok = entities.is_empty()
        || match data.and_then(|d| d.get("entity_id")) {
            Some(Value::String(s)) => entities.iter().any(|x| x == s),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .any(|s| entities.iter().any(|x| x == s)),
            _ => false,
        };
    domain_ok && entity_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters() {
        let e = json!({"event_type": "call_service", "data": {"domain": "light", "service": "turn_on", "entity_id": ["light.a", "light.b"]}});
        assert!(passes(&e, &[], &[]));
        assert!(passes(&e, &["light".into()], &[]));
        assert!(!passes(&e, &["switch".into()], &[]));
        assert!(passes(&e, &[], &["light.b".into()]));
        assert!(!passes(&e, &["light".into()], &["light.c".into()]));
    }
}

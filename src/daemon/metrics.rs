//! Counters and gauges about backup cycles, rendered in the Prometheus text exposition format
//! (version 0.0.4) for `/metrics`.
//!
//! The registry only holds numbers handed to it; it does not time cycles, serve HTTP or persist
//! anything (the last success time is also kept in the state file, by the caller).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;

use super::state::DeepVerdict;

/// How a cycle ended, for `hapull_cycles_total{outcome=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
    /// A due run was skipped because the previous cycle was still running.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// What a finished (successful or failed) cycle reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CycleReport {
    pub outcome: Outcome,
    pub finished_at: Timestamp,
    /// The whole cycle, from asking for a backup to the end of clean-up.
    pub duration: Duration,
    /// Bytes read over the network in this cycle (also for a failed pull).
    pub pulled_bytes: u64,
    /// The time spent pulling, for the throughput gauge; zero if nothing was pulled.
    pub transfer_duration: Duration,
    /// The size of the archive committed to the store, for a successful cycle.
    pub archive_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Values {
    version: String,
    started_at: Option<Timestamp>,
    last_success: Option<Timestamp>,
    last_attempt: Option<Timestamp>,
    last_duration: Option<Duration>,
    last_archive_bytes: Option<u64>,
    /// Whether the last committed archive was verified in full, and whether it was protected.
    last_archive_full: Option<bool>,
    last_archive_protected: Option<bool>,
    last_throughput: Option<f64>,
    success: u64,
    failed: u64,
    skipped: u64,
    pulled_bytes: u64,
    ha_connected: bool,
    retries: u64,
    next_retry: Option<Timestamp>,
    offsite: std::collections::BTreeMap<String, OffsiteValues>,
    deep: DeepValues,
}

/// Deep verifications run by the daemon.
#[derive(Debug, Clone, Copy, Default)]
struct DeepValues {
    last: Option<DeepVerdict>,
    last_success: Option<Timestamp>,
    passed: u64,
    failed: u64,
    skipped: u64,
}

/// One offsite target's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OffsiteValues {
    /// When a run last left nothing missing on the target.
    pub last_success: Option<Timestamp>,
    /// Archives (and their bytes) the target's rules keep that have no proven copy there yet.
    pub lag_archives: u64,
    pub lag_bytes: u64,
    /// Runs that reported a failure.
    pub failures: u64,
}

/// A snapshot of the recorded values.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub started_at: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    pub last_attempt: Option<Timestamp>,
    pub cycles_success: u64,
    pub cycles_failed: u64,
    pub cycles_skipped: u64,
    pub pulled_bytes: u64,
    pub ha_connected: bool,
    /// Retries of failed cycles since the daemon started.
    pub cycle_retries: u64,
    /// When a pending retry is due.
    pub next_retry: Option<Timestamp>,
    /// The last deep verification that reached a verdict.
    pub last_deep_verify: Option<DeepVerdict>,
    pub last_deep_verify_success: Option<Timestamp>,
}

/// The metrics registry. Cheap to clone; all clones share the values.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Mutex<Values>>);

impl Metrics {
    /// A registry for a daemon of version `version` that started at `started_at`.
    pub fn new(version: &str, started_at: Timestamp) -> Metrics {
        Metrics(Arc::new(Mutex::new(Values {
            version: version.to_string(),
            started_at: Some(started_at),
            ..Values::default()
        })))
    }

    /// Carries over the last success time from the state file, so a restart does not forget it.
    pub fn set_last_success(&self, at: Timestamp) {
        let mut v = self.lock();
        if v.last_success.is_none_or(|old| old < at) {
            v.last_success = Some(at);
        }
    }

    /// A cycle started at `at`.
    pub fn cycle_started(&self, at: Timestamp) {
        self.lock().last_attempt = Some(at);
    }

    /// A cycle ended. A report with [`Outcome::Skipped`] only counts the skip.
    pub fn cycle_finished(&self, r: &CycleReport) {
        let mut v = self.lock();
        match r.outcome {
            Outcome::Skipped => {
                v.skipped += 1;
                return;
            }
            Outcome::Success => {
                v.success += 1;
                v.last_success = Some(r.finished_at);
                v.last_archive_bytes = r.archive_bytes.or(v.last_archive_bytes);
            }
            Outcome::Failed => v.failed += 1,
        }
        v.last_duration = Some(r.duration);
        v.pulled_bytes = v.pulled_bytes.saturating_add(r.pulled_bytes);
        if r.pulled_bytes > 0 && !r.transfer_duration.is_zero() {
            v.last_throughput = Some(r.pulled_bytes as f64 / r.transfer_duration.as_secs_f64());
        }
    }

    /// A failed cycle will be retried at `at`.
    pub fn cycle_retry_scheduled(&self, at: Timestamp) {
        let mut v = self.lock();
        v.retries = v.retries.saturating_add(1);
        v.next_retry = Some(at);
    }

    /// No retry is pending any more.
    pub fn cycle_retry_cleared(&self) {
        self.lock().next_retry = None;
    }

    /// What the verification of the last committed archive proved: `full` (every byte read,
    /// protected ones decrypted) or less, and whether the backup was password-protected.
    pub fn archive_verified(&self, full: bool, protected: bool) {
        let mut v = self.lock();
        v.last_archive_full = Some(full);
        v.last_archive_protected = Some(protected);
    }

    /// Carries over the last deep verdict and success time from the state file.
    pub fn set_deep_verify(&self, last: Option<DeepVerdict>, last_success: Option<Timestamp>) {
        let mut v = self.lock();
        v.deep.last = last;
        v.deep.last_success = last_success;
    }

    /// A deep verification reached a verdict.
    pub fn deep_verified(&self, verdict: DeepVerdict) {
        let mut v = self.lock();
        v.deep.last = Some(verdict);
        if verdict.passed {
            v.deep.passed += 1;
            v.deep.last_success = Some(verdict.at);
        } else {
            v.deep.failed += 1;
        }
    }

    /// A due deep verification could not run (no password for a protected backup, not enough
    /// free space, interrupted).
    pub fn deep_verify_skipped(&self) {
        self.lock().deep.skipped += 1;
    }

    /// A due run was skipped because a cycle was still running.
    pub fn cycle_skipped(&self) {
        self.lock().skipped += 1;
    }

    /// The state of offsite target `name` after a run (`failed`: the run reported a failure).
    pub fn set_offsite(&self, name: &str, state: OffsiteValues, failed: bool) {
        let mut v = self.lock();
        let entry = v.offsite.entry(name.to_string()).or_default();
        let failures = entry.failures + u64::from(failed);
        let last_success = state.last_success.or(entry.last_success);
        *entry = OffsiteValues {
            last_success,
            failures,
            ..state
        };
    }

    /// Whether the connection to Home Assistant is up.
    pub fn set_ha_connected(&self, connected: bool) {
        self.lock().ha_connected = connected;
    }

    pub fn snapshot(&self) -> Snapshot {
        let v = self.lock();
        Snapshot {
            started_at: v.started_at,
            last_success: v.last_success,
            last_attempt: v.last_attempt,
            cycles_success: v.success,
            cycles_failed: v.failed,
            cycles_skipped: v.skipped,
            pulled_bytes: v.pulled_bytes,
            ha_connected: v.ha_connected,
            cycle_retries: v.retries,
            next_retry: v.next_retry,
            last_deep_verify: v.deep.last,
            last_deep_verify_success: v.deep.last_success,
        }
    }

    /// The metrics in the Prometheus text format 0.0.4. Timestamps are Unix seconds; a time or
    /// size never recorded is reported as 0.
    pub fn render(&self) -> String {
        let v = self.lock().clone();
        let ts = |t: Option<Timestamp>| t.map_or(0.0, |t| t.as_millisecond() as f64 / 1000.0);
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}\n",
                fmt_f64(value)
            );
        };
        gauge(
            "hapull_start_time_seconds",
            "When the daemon started, as a Unix timestamp.",
            ts(v.started_at),
        );
        gauge(
            "hapull_last_success_timestamp_seconds",
            "When the last backup cycle succeeded, as a Unix timestamp (0: never).",
            ts(v.last_success),
        );
        gauge(
            "hapull_last_attempt_timestamp_seconds",
            "When the last backup cycle started, as a Unix timestamp (0: never).",
            ts(v.last_attempt),
        );
        gauge(
            "hapull_last_cycle_duration_seconds",
            "How long the last finished backup cycle took.",
            v.last_duration.map_or(0.0, |d| d.as_secs_f64()),
        );
        gauge(
            "hapull_last_archive_size_bytes",
            "Size of the last archive committed to the store.",
            v.last_archive_bytes.map_or(0.0, |b| b as f64),
        );
        gauge(
            "hapull_last_archive_verified_full",
            "1 when the last committed archive was verified in full (every inner archive read, \
             protected ones decrypted), 0 when only its structure was (or none was committed).",
            if v.last_archive_full == Some(true) {
                1.0
            } else {
                0.0
            },
        );
        gauge(
            "hapull_last_archive_protected",
            "1 when the last committed archive was password-protected, else 0.",
            if v.last_archive_protected == Some(true) {
                1.0
            } else {
                0.0
            },
        );
        gauge(
            "hapull_last_throughput_bytes_per_second",
            "Pull speed of the last cycle that pulled data.",
            v.last_throughput.unwrap_or(0.0),
        );
        gauge(
            "hapull_home_assistant_connected",
            "1 while the connection to Home Assistant is up, else 0.",
            if v.ha_connected { 1.0 } else { 0.0 },
        );
        let _ = write!(
            out,
            "# HELP hapull_cycles_total Backup cycles by outcome.\n# TYPE hapull_cycles_total counter\n"
        );
        for (outcome, n) in [
            (Outcome::Success, v.success),
            (Outcome::Failed, v.failed),
            (Outcome::Skipped, v.skipped),
        ] {
            let _ = writeln!(
                out,
                "hapull_cycles_total{{outcome=\"{}\"}} {n}",
                outcome.as_str()
            );
        }
        gauge_line(
            &mut out,
            "hapull_next_retry_timestamp_seconds",
            "When a failed cycle will be retried, as a Unix timestamp (0: no retry pending).",
            ts(v.next_retry),
        );
        let _ = write!(
            out,
            "# HELP hapull_cycle_retries_total Retries of failed backup cycles (transient failures: Home Assistant or SSH unreachable, backup manager busy).\n# TYPE hapull_cycle_retries_total counter\nhapull_cycle_retries_total {}\n",
            v.retries
        );
        let _ = write!(
            out,
            "# HELP hapull_pulled_bytes_total Bytes pulled from Home Assistant.\n# TYPE hapull_pulled_bytes_total counter\nhapull_pulled_bytes_total {}\n",
            v.pulled_bytes
        );
        gauge_line(
            &mut out,
            "hapull_deep_verify_last_success_timestamp_seconds",
            "When a deep verification (archive unpacked, database integrity_check, .storage parsed) \
             last passed, as a Unix timestamp (0: never).",
            ts(v.deep.last_success),
        );
        gauge_line(
            &mut out,
            "hapull_deep_verify_last_timestamp_seconds",
            "When the last deep verification that reached a verdict finished (0: never).",
            ts(v.deep.last.map(|d| d.at)),
        );
        gauge_line(
            &mut out,
            "hapull_deep_verify_last_failed",
            "1 when the last deep verification found a problem, else 0.",
            if v.deep.last.is_some_and(|d| !d.passed) {
                1.0
            } else {
                0.0
            },
        );
        let _ = write!(
            out,
            "# HELP hapull_deep_verify_total Deep verifications run by the daemon, by outcome.\n# TYPE hapull_deep_verify_total counter\n"
        );
        for (outcome, n) in [
            ("passed", v.deep.passed),
            ("failed", v.deep.failed),
            ("skipped", v.deep.skipped),
        ] {
            let _ = writeln!(out, "hapull_deep_verify_total{{outcome=\"{outcome}\"}} {n}");
        }
        if !v.offsite.is_empty() {
            for (name, help) in [
                (
                    "hapull_offsite_last_success_timestamp_seconds",
                    "When an offsite target last held a proven copy of everything its rules keep, as a Unix timestamp (0: never).",
                ),
                (
                    "hapull_offsite_lag_archives",
                    "Archives an offsite target's rules keep that have no proven copy there yet.",
                ),
                (
                    "hapull_offsite_lag_bytes",
                    "Bytes of the archives not yet proven on an offsite target.",
                ),
                (
                    "hapull_offsite_failures_total",
                    "Offsite runs that reported a failure.",
                ),
            ] {
                let kind = if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                };
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
                for (target, o) in &v.offsite {
                    let value = match name {
                        "hapull_offsite_last_success_timestamp_seconds" => ts(o.last_success),
                        "hapull_offsite_lag_archives" => o.lag_archives as f64,
                        "hapull_offsite_lag_bytes" => o.lag_bytes as f64,
                        _ => o.failures as f64,
                    };
                    let _ = writeln!(
                        out,
                        "{name}{{target=\"{}\"}} {}",
                        escape_label(target),
                        fmt_f64(value)
                    );
                }
            }
        }
        let _ = write!(
            out,
            "# HELP hapull_build_info Build information; the value is always 1.\n# TYPE hapull_build_info gauge\nhapull_build_info{{version=\"{}\"}} 1\n",
            escape_label(&v.version)
        );
        out
    }

    fn lock(&self) -> MutexGuard<'_, Values> {
        // Plain numbers, each update complete in itself: a poisoned lock still holds usable values.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn gauge_line(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}\n",
        fmt_f64(value)
    );
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

//! The daemon's building blocks: when cycles run ([`schedule`], [`scheduler`]), what the daemon
//! remembers across restarts ([`state`]), retrying a failed cycle until the next run ([`retry`]),
//! health and Prometheus metrics ([`status`], [`metrics`]), and webhooks ([`notify`]).
//!
//! These pieces know nothing about Home Assistant, SFTP or the archive store, and none of them runs
//! a backup cycle; `hapull run` wires them to the cycle, roughly like this:
//!
//! ```no_run
//! use std::time::Duration;
//! use hapull::daemon::{
//!     Clock, CycleReport, Metrics, Notifier, Outcome, Schedule, Scheduler, StateFile, StatusServer,
//!     Tick,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = Clock::system();
//! let state = StateFile::open("/var/lib/hapull/state.json")?;
//! state.record_start(clock.now())?;
//! let metrics = Metrics::new(env!("CARGO_PKG_VERSION"), clock.now());
//! if let Some(at) = state.get().last_success {
//!     metrics.set_last_success(at);
//! }
//! let status = StatusServer::new(metrics.clone(), Duration::from_secs(3 * 3600), clock.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9180").await?;
//! tokio::spawn(status.serve(listener, std::future::pending()));
//!
//! let tz = jiff::tz::TimeZone::get("Europe/Berlin")?;
//! let mut scheduler = Scheduler::new(Schedule::parse("5 * * * *", tz)?, clock.clone(), state.clone())
//!     .with_jitter(Duration::from_secs(60));
//! let notifier = Notifier::new(Some("https://hc-ping.com/<uuid>"), None)?;
//! loop {
//!     match scheduler.next_tick().await {
//!         Tick::Skipped { .. } => metrics.cycle_skipped(),
//!         Tick::Run { guard, .. } => {
//!             let (metrics, state, notifier, clock) =
//!                 (metrics.clone(), state.clone(), notifier.clone(), clock.clone());
//!             tokio::spawn(async move {
//!                 let _running = guard; // held until the cycle ends
//!                 metrics.cycle_started(clock.now());
//!                 // ... the cycle ...
//!                 let finished_at = clock.now();
//!                 let _ = state.record_success(finished_at);
//!                 metrics.cycle_finished(&CycleReport {
//!                     outcome: Outcome::Success,
//!                     finished_at,
//!                     duration: Duration::from_secs(90),
//!                     pulled_bytes: 1 << 30,
//!                     transfer_duration: Duration::from_secs(30),
//!                     archive_bytes: Some(1 << 30),
//!                 });
//!                 let _ = notifier.success(&serde_json::json!({"event": "backup_pulled"})).await;
//!             });
//!         }
//!     }
//! }
//! # }
//! ```

pub mod clock;
pub mod metrics;
pub mod notify;
pub mod retry;
pub mod schedule;
pub mod scheduler;
pub mod state;
pub mod status;

pub use clock::Clock;
pub use metrics::{CycleReport, Metrics, OffsiteValues, Outcome};
pub use notify::{Method, Notifier, NotifyError, WebhookClient, WebhookUrl};
pub use retry::{PendingRetry, RetryOutcome, RetryPolicy, retry_until};
pub use schedule::{Schedule, ScheduleError};
pub use scheduler::{RunGuard, RunReason, Scheduler, Tick};
pub use state::{DeepVerdict, RetryAt, State, StateError, StateFile};
pub use status::{Health, Limits, StatusServer, evaluate, health_from_state_file};

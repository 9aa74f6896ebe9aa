//! The daemon's building blocks: when cycles run ([`schedule`], [`scheduler`]), what the daemon
//! remembers across restarts ([`state`]), health and Prometheus metrics ([`status`], [`metrics`]),
//! and webhooks ([`notify`]).
//!
//! These pieces know nothing about Home Assistant, SFTP or the archive store; `hapull run` wires them
//! to the backup cycle.

pub mod clock;
pub mod metrics;
pub mod notify;
pub mod schedule;
pub mod scheduler;
pub mod state;
pub mod status;

pub use clock::Clock;
pub use metrics::{CycleReport, Metrics, Outcome};
pub use notify::{Method, Notifier, NotifyError, WebhookClient, WebhookUrl};
pub use schedule::{Schedule, ScheduleError};
pub use scheduler::{RunGuard, RunReason, Scheduler, Tick};
pub use state::{State, StateError, StateFile};
pub use status::{Health, Limits, StatusServer, evaluate, health_from_state_file};

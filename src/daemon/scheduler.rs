//! The daemon loop's timer: says when to start a cycle, and when a due cycle must be skipped.
//!
//! Use it as a loop: `let tick = scheduler.next_tick().await;` then, for [`Tick::Run`], start the
//! cycle in its own task and keep the [`RunGuard`] alive until the cycle ends; for
//! [`Tick::Skipped`], record that a due run was skipped because the previous cycle was still
//! running. Two cycles never run at once.
//!
//! At start-up a run missed while the machine was down (the state file's `last_scheduled_run` is
//! followed by a due time in the past) runs once, however many were missed; `run_on_start` runs
//! one at start-up; both together still run only one.
//!
//! It knows nothing about what a cycle does and does not run one itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use super::clock::Clock;
use super::schedule::Schedule;
use super::state::StateFile;

/// Why a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunReason {
    /// Its time came.
    Scheduled,
    /// `run_on_start` is set.
    OnStart,
    /// A run was due while hapull was not running; `missed` is the first such due time.
    CatchUp { missed: Timestamp },
}

/// What the daemon loop should do now.
#[derive(Debug)]
pub enum Tick {
    /// Start a cycle, holding `guard` until it has finished.
    Run {
        scheduled_for: Timestamp,
        reason: RunReason,
        guard: RunGuard,
    },
    /// A run was due at `scheduled_for` but the previous cycle is still running.
    Skipped { scheduled_for: Timestamp },
}

impl Tick {
    /// The instant this tick was due.
    pub fn scheduled_for(&self) -> Timestamp {
        match self {
            Tick::Run { scheduled_for, .. } | Tick::Skipped { scheduled_for } => *scheduled_for,
        }
    }
}

/// Marks a cycle as running for as long as it lives.
#[derive(Debug)]
pub struct RunGuard(Arc<AtomicBool>);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Produces [`Tick`]s from a [`Schedule`], a [`Clock`] and the [`StateFile`].
#[derive(Debug)]
pub struct Scheduler {
    schedule: Schedule,
    clock: Clock,
    state: StateFile,
    jitter: Duration,
    run_on_start: bool,
    rng: fastrand::Rng,
    running: Arc<AtomicBool>,
    /// The due time of the last handled run (or the start instant); `None` before the first tick.
    last_slot: Option<Timestamp>,
}

impl Scheduler {
    pub fn new(schedule: Schedule, clock: Clock, state: StateFile) -> Scheduler {
        Scheduler {
            schedule,
            clock,
            state,
            jitter: Duration::ZERO,
            run_on_start: false,
            rng: fastrand::Rng::new(),
            running: Arc::new(AtomicBool::new(false)),
            last_slot: None,
        }
    }

    /// A random delay in `[0, jitter]` is added to each scheduled run (never past the next one).
    pub fn with_jitter(mut self, jitter: Duration) -> Scheduler {
        self.jitter = jitter;
        self
    }

    /// Run one cycle as soon as the scheduler starts.
    pub fn with_run_on_start(mut self, run_on_start: bool) -> Scheduler {
        self.run_on_start = run_on_start;
        self
    }

    /// Seeds the jitter's random numbers (for reproducible tests).
    pub fn with_seed(mut self, seed: u64) -> Scheduler {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// True while a [`RunGuard`] handed out by this scheduler is alive.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// A guard for a run started outside the schedule (e.g. on request), or `None` if a cycle is
    /// running.
    pub fn try_start(&self) -> Option<RunGuard> {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| RunGuard(self.running.clone()))
    }

    /// Waits for the next due run and says what to do. Cancel-safe: dropping the future before it
    /// completes loses nothing (a new call waits for the same run; jitter is drawn afresh). If the
    /// schedule never fires again this waits forever.
    pub async fn next_tick(&mut self) -> Tick {
        let now = self.clock.now();
        let last = match self.last_slot {
            Some(last) => last,
            None => {
                self.last_slot = Some(now);
                let missed = self
                    .state
                    .get()
                    .last_scheduled_run
                    .and_then(|last| self.schedule.next_after(last))
                    .filter(|due| *due <= now);
                let reason = match missed {
                    Some(missed) => Some(RunReason::CatchUp { missed }),
                    None if self.run_on_start => Some(RunReason::OnStart),
                    None => None,
                };
                if let Some(reason) = reason {
                    return self.emit(now, reason);
                }
                now
            }
        };
        let Some(mut due) = self.schedule.next_after(last) else {
            return std::future::pending().await;
        };
        if due <= now {
            // Called late (the loop was busy): the runs that passed collapse into the latest one.
            let mut guard = 0u32;
            while let Some(n) = self.schedule.next_after(due) {
                if n > now || guard > 100_000 {
                    break;
                }
                due = n;
                guard += 1;
            }
        } else {
            let at = self.schedule.jittered(due, self.jitter, &mut self.rng);
            self.clock.sleep_until(at).await;
        }
        self.last_slot = Some(due);
        self.emit(due, RunReason::Scheduled)
    }

    fn emit(&mut self, scheduled_for: Timestamp, reason: RunReason) -> Tick {
        if let Err(e) = self.state.record_scheduled_run(scheduled_for) {
            // Not fatal: the worst outcome is one extra catch-up run after a restart.
            tracing::warn!(error = %e, "cannot record the scheduled run");
        }
        match self.try_start() {
            Some(guard) => Tick::Run {
                scheduled_for,
                reason,
                guard,
            },
            None => Tick::Skipped { scheduled_for },
        }
    }
}

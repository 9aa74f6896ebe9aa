//! Retrying a failed run until the next one is due: capped exponential backoff with jitter (backon's
//! policy), only for failures the caller calls transient, stopped early by shutdown.
//!
//! It knows nothing about what is retried (the service hands it the backup cycle and says which
//! errors are transient) and it records nothing itself: the caller is told of each retry and keeps
//! metrics, the state file and the audit log. It must not retry a permanent failure.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use jiff::Timestamp;

use super::clock::Clock;

/// How long to wait between attempts: from `min_delay`, doubling up to `max_delay`, each wait
/// stretched by a random part of itself (up to twice as long) so that many daemons behind one HA
/// restart do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Seeds the jitter (tests); `None` draws a random seed.
    pub seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_secs(15),
            max_delay: Duration::from_secs(300),
            seed: None,
        }
    }
}

impl RetryPolicy {
    /// The waits before the second, third, ... attempt, without end.
    pub fn delays(&self) -> backon::ExponentialBackoff {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        if let Some(seed) = self.seed {
            builder = builder.with_jitter_seed(seed);
        }
        builder.build()
    }
}

/// A retry about to be waited for, as told to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRetry {
    /// The attempt that will run after the wait (2 for the first retry).
    pub attempt: u32,
    pub delay: Duration,
    /// When the clock will read the end of the wait.
    pub at: Timestamp,
}

/// How retrying ended.
#[derive(Debug)]
pub enum RetryOutcome<T, E> {
    /// An attempt succeeded; `attempts` counts the first one too.
    Succeeded { value: T, attempts: u32 },
    /// The last attempt failed for a reason retrying cannot help.
    Permanent { error: E, attempts: u32 },
    /// Still failing transiently, and the next wait would end at or after `until`.
    Exhausted { error: E, attempts: u32 },
    /// Shutdown came while waiting to retry.
    Stopped { error: E, attempts: u32 },
}

/// Runs `attempt` until it succeeds, fails permanently, the next retry would not start before
/// `until` (the next scheduled run; `None`: no limit), or `stop` resolves during a wait. An attempt
/// already running is never cut: `stop` is only watched between attempts.
pub async fn retry_until<T, E, F, Fut>(
    policy: &RetryPolicy,
    clock: &Clock,
    until: Option<Timestamp>,
    stop: impl Future<Output = ()>,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
    mut on_retry: impl FnMut(&PendingRetry, &E),
) -> RetryOutcome<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    let mut stop = std::pin::pin!(stop);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(value) => return RetryOutcome::Succeeded { value, attempts },
            Err(e) if !is_transient(&e) => return RetryOutcome::Permanent { error: e, attempts },
            Err(e) => e,
        };
        let Some(delay) = delays.next() else {
            return RetryOutcome::Exhausted { error, attempts };
        };
        let Some(at) = clock.now().checked_add(delay).ok() else {
            return RetryOutcome::Exhausted { error, attempts };
        };
        if until.is_some_and(|until| at >= until) {
            return RetryOutcome::Exhausted { error, attempts };
        }
        on_retry(
            &PendingRetry {
                attempt: attempts + 1,
                delay,
                at,
            },
            &error,
        );
        tokio::select! {
            _ = clock.sleep_until(at) => {}
            _ = &mut stop => return RetryOutcome::Stopped { error, attempts },
        }
    }
}

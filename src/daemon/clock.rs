//! Wall-clock time for the daemon, and sleeping until a wall-clock instant.
//!
//! Production uses the system clock. Tests use a clock that starts at a chosen instant and follows
//! tokio's clock, so `tokio::time::pause()` / `advance()` move it.

use std::time::Duration;

use jiff::Timestamp;

/// The longest single sleep: the system clock can jump (NTP, suspend/resume, manual change) while
/// tokio's monotonic timer does not notice, so long waits are cut into pieces and re-checked.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Where "now" comes from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    System,
    Tokio {
        anchor: tokio::time::Instant,
        at: Timestamp,
    },
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `at` now and then advances with tokio's clock (which tests can pause and
    /// advance). Must be called inside a tokio runtime.
    pub fn following_tokio(at: Timestamp) -> Clock {
        Clock(Source::Tokio {
            anchor: tokio::time::Instant::now(),
            at,
        })
    }

    /// The current instant.
    pub fn now(&self) -> Timestamp {
        match &self.0 {
            Source::System => Timestamp::now(),
            Source::Tokio { anchor, at } => {
                let elapsed = anchor.elapsed();
                at.checked_add(elapsed).unwrap_or(Timestamp::MAX)
            }
        }
    }

    /// Sleeps until this clock reads `t` or later.
    pub async fn sleep_until(&self, t: Timestamp) {
        loop {
            let now = self.now();
            if now >= t {
                return;
            }
            let left = Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO);
            // At least a millisecond, so a sub-millisecond remainder cannot spin.
            let step = left.min(MAX_SLEEP).max(Duration::from_millis(1));
            tokio::time::sleep(step).await;
        }
    }
}

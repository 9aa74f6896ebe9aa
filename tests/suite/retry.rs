//! Retrying a failed cycle, on paused tokio time: transient failures are retried with capped,
//! jittered, growing waits until the next scheduled run; permanent ones are not retried; shutdown ends
//! a wait at once; the state file and /metrics show the retries.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hapull::daemon::{
    Clock, Metrics, PendingRetry, RetryAt, RetryOutcome, RetryPolicy, StateFile, retry_until,
};
use jiff::Timestamp;

#[derive(Debug, PartialEq)]
enum Fail {
    Transient,
    Permanent,
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn policy(min: u64, max: u64) -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_secs(min),
        max_delay: Duration::from_secs(max),
        seed: Some(7),
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_growing_jittered_waits_until_success() {
    let clock = Clock::following_tokio(ts("2026-06-01T10:05:00Z"));
    let calls = Cell::new(0u32);
    let started: RefCell<Vec<Timestamp>> = RefCell::new(Vec::new());
    let pending: RefCell<Vec<PendingRetry>> = RefCell::new(Vec::new());
    let outcome = retry_until(
        &policy(15, 300),
        &clock,
        Some(ts("2026-06-01T11:05:00Z")),
        std::future::pending(),
        |e: &Fail| *e == Fail::Transient,
        || {
            calls.set(calls.get() + 1);
            started.borrow_mut().push(clock.now());
            let n = calls.get();
            async move {
                if n < 4 {
                    Err(Fail::Transient)
                } else {
                    Ok("committed")
                }
            }
        },
        |p, e| {
            assert_eq!(*e, Fail::Transient);
            pending.borrow_mut().push(*p);
        },
    )
    .await;
    match outcome {
        RetryOutcome::Succeeded { value, attempts } => {
            assert_eq!(value, "committed");
            assert_eq!(attempts, 4);
        }
        other => panic!("expected success after retries, got {other:?}"),
    }
    let pending = pending.into_inner();
    let started = started.into_inner();
    assert_eq!(
        pending.iter().map(|p| p.attempt).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    for (i, p) in pending.iter().enumerate() {
        // Exponential from 15 s, each wait stretched by jitter of up to itself.
        let base = Duration::from_secs(15 << i);
        assert!(
            p.delay >= base && p.delay <= base * 2,
            "retry {i}: {:?} not within [{base:?}, {:?}]",
            p.delay,
            base * 2
        );
        // The next attempt started when the wait said it would, not earlier.
        assert!(
            started[i + 1] >= p.at,
            "{:?} before {:?}",
            started[i + 1],
            p.at
        );
        assert_eq!(p.at, started[i].checked_add(p.delay).unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn waits_are_capped_at_the_maximum() {
    let mut delays = policy(1, 8).delays();
    for i in 0..20 {
        let d = delays.next().expect("retries go on without a count limit");
        let base = Duration::from_secs(1u64 << i.min(3)).min(Duration::from_secs(8));
        assert!(d >= base && d <= base * 2, "wait {i}: {d:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_not_retried() {
    let clock = Clock::following_tokio(ts("2026-06-01T10:05:00Z"));
    let before = clock.now();
    let calls = Cell::new(0u32);
    let outcome: RetryOutcome<(), Fail> = retry_until(
        &policy(15, 300),
        &clock,
        None,
        std::future::pending(),
        |e: &Fail| *e == Fail::Transient,
        || {
            calls.set(calls.get() + 1);
            async { Err(Fail::Permanent) }
        },
        |p, _| panic!("a permanent failure must not be retried: {p:?}"),
    )
    .await;
    assert!(
        matches!(
            outcome,
            RetryOutcome::Permanent {
                error: Fail::Permanent,
                attempts: 1
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(clock.now(), before, "no wait at all");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_before_the_next_scheduled_run() {
    let clock = Clock::following_tokio(ts("2026-06-01T10:05:00Z"));
    let next_run = ts("2026-06-01T11:05:00Z");
    let pending: RefCell<Vec<PendingRetry>> = RefCell::new(Vec::new());
    let outcome: RetryOutcome<(), Fail> = retry_until(
        &policy(15, 300),
        &clock,
        Some(next_run),
        std::future::pending(),
        |e: &Fail| *e == Fail::Transient,
        || async { Err(Fail::Transient) },
        |p, _| pending.borrow_mut().push(*p),
    )
    .await;
    let attempts = match outcome {
        RetryOutcome::Exhausted { attempts, .. } => attempts,
        other => panic!("expected the retries to run out, got {other:?}"),
    };
    let pending = pending.into_inner();
    assert_eq!(pending.len() as u32, attempts - 1);
    // 15 s doubling to the 5 min cap within an hour: several retries, none at or after the next run.
    assert!(attempts >= 8, "only {attempts} attempts in an hour");
    assert!(pending.iter().all(|p| p.at < next_run), "{pending:?}");
    assert!(pending.iter().all(|p| p.delay <= Duration::from_secs(600)));
    assert!(
        clock.now() < next_run,
        "gave up before the next run was due"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_wait_at_once() {
    let clock = Clock::following_tokio(ts("2026-06-01T10:05:00Z"));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let pending: RefCell<Option<PendingRetry>> = RefCell::new(None);
    let slow = policy(60, 300);
    let retry = retry_until(
        &slow,
        &clock,
        None,
        async move {
            let _ = stop_rx.wait_for(|v| *v).await;
        },
        |e: &Fail| *e == Fail::Transient,
        || async { Err::<(), _>(Fail::Transient) },
        |p, _| *pending.borrow_mut() = Some(*p),
    );
    let stopper = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = stop_tx.send(true);
    };
    let (outcome, ()) = tokio::join!(retry, stopper);
    assert!(
        matches!(outcome, RetryOutcome::Stopped { attempts: 1, .. }),
        "{outcome:?}"
    );
    let p = pending.into_inner().expect("a retry was pending");
    assert!(clock.now() < p.at, "stopped before the retry was due");
}

#[test]
fn the_state_file_keeps_the_retry_count_and_the_pending_retry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let state = StateFile::open(&path).unwrap();
    let at = ts("2026-06-01T10:05:40Z");
    state.record_retry(RetryAt { attempt: 2, at }).unwrap();
    state
        .record_retry(RetryAt {
            attempt: 3,
            at: ts("2026-06-01T10:06:30Z"),
        })
        .unwrap();
    let again = StateFile::open(&path).unwrap().get();
    assert_eq!(again.retries, 2);
    assert_eq!(
        again.pending_retry,
        Some(RetryAt {
            attempt: 3,
            at: ts("2026-06-01T10:06:30Z")
        })
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"retries\": 2"), "{text}");
    assert!(text.contains("\"next_retry\""), "{text}");
    state.record_success(ts("2026-06-01T10:07:00Z")).unwrap();
    let again = StateFile::open(&path).unwrap().get();
    assert_eq!(
        again.pending_retry, None,
        "a success ends the pending retry"
    );
    assert_eq!(again.retries, 2, "the count stays");
}

#[test]
fn metrics_show_retries_and_the_pending_one() {
    let m = Metrics::new("0.1.0", ts("2026-06-01T10:00:00Z"));
    let text = m.render();
    assert!(text.contains("\nhapull_cycle_retries_total 0\n"), "{text}");
    assert!(
        text.contains("\nhapull_next_retry_timestamp_seconds 0\n"),
        "{text}"
    );
    m.cycle_retry_scheduled(ts("2026-06-01T10:05:40Z"));
    let text = m.render();
    assert!(
        text.contains("# TYPE hapull_cycle_retries_total counter\n"),
        "{text}"
    );
    assert!(text.contains("\nhapull_cycle_retries_total 1\n"), "{text}");
    let at = ts("2026-06-01T10:05:40Z").as_second();
    assert!(
        text.contains(&format!("\nhapull_next_retry_timestamp_seconds {at}\n")),
        "{text}"
    );
    m.cycle_retry_cleared();
    let snap = m.snapshot();
    assert_eq!(snap.cycle_retries, 1);
    assert_eq!(snap.next_retry, None);
}

#[test]
fn which_cycle_failures_are_retried() {
    use hapull::cycle::{CycleError, Step};
    use hapull::ha::HaError;
    use hapull::transfer::TransferError;
    let ha = |source| CycleError::Ha {
        step: Step::Connect,
        source,
    };
    let transient = [
        ha(HaError::ConnectionLost(
            "not connected to Home Assistant (reconnecting)".into(),
        )),
        ha(HaError::Connect {
            endpoint: "ws://ha:8123/api/websocket".into(),
            reason: "connection refused".into(),
        }),
        ha(HaError::Command {
            command: "backup/generate".into(),
            code: "home_assistant_error".into(),
            message: "Backup manager busy: create_backup".into(),
        }),
        CycleError::Timeout {
            step: Step::Connect,
            after: Duration::from_secs(600),
            what: "Home Assistant's backup manager stayed \"create_backup\"".into(),
        },
        CycleError::Transfer {
            step: Step::Connect,
            source: TransferError::Connect {
                host: "ha".into(),
                port: 22,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            },
        },
    ];
    for e in &transient {
        assert!(e.is_transient(), "should be retried: {e}");
    }
    let permanent = [
        ha(HaError::AuthInvalid {
            endpoint: "ws://ha:8123/api/websocket".into(),
            message: "invalid access token".into(),
        }),
        CycleError::Transfer {
            step: Step::Connect,
            source: TransferError::HostKeyChanged {
                host_port: "ha".into(),
                fingerprint: "SHA256:x".into(),
                algorithm: "ssh-ed25519".into(),
                path: "/etc/hapull/known_hosts".into(),
                line: 1,
            },
        },
        CycleError::Timeout {
            step: Step::Await,
            after: Duration::from_secs(7200),
            what: "no completion event".into(),
        },
        CycleError::BackupFailed {
            reason: "upload_failed".into(),
        },
        CycleError::Refused {
            step: Step::CleanUpHa,
            message: "no verified copy".into(),
        },
    ];
    for e in &permanent {
        assert!(!e.is_transient(), "must not be retried: {e}");
    }
}

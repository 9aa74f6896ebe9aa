//! The daemon's building blocks as the integrator and a user see them: when cycles fire (cron in a
//! time zone, across DST changes, with jitter, catch-up and overlap rules, on paused tokio time),
//! health by the max-age rule, `/metrics` parsed as Prometheus text over real TCP, and webhooks
//! against local HTTP and HTTPS servers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hapull::daemon::{
    Clock, CycleReport, Limits, Method, Metrics, Notifier, NotifyError, Outcome, RunReason,
    Schedule, ScheduleError, Scheduler, State, StateFile, StatusServer, Tick, WebhookClient,
    WebhookUrl, evaluate, health_from_state_file,
};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn schedule(expr: &str, tz: &str) -> Schedule {
    Schedule::parse(expr, TimeZone::get(tz).unwrap()).unwrap()
}

/// The first `n` firings strictly after `from`.
fn firings(s: &Schedule, from: &str, n: usize) -> Vec<Timestamp> {
    let mut t = ts(from);
    let mut out = Vec::new();
    for _ in 0..n {
        t = s.next_after(t).unwrap();
        out.push(t);
    }
    out
}

fn all(v: &[&str]) -> Vec<Timestamp> {
    v.iter().map(|s| ts(s)).collect()
}

// ---------------------------------------------------------------------------------------------
// Cron expressions
// ---------------------------------------------------------------------------------------------

#[test]
fn hourly_at_minute_5_in_berlin_on_spring_forward_night() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST. There is no 02:05; the hourly run continues on the
    // new clock, keeping runs an hour apart.
    let s = schedule("5 * * * *", "Europe/Berlin");
    assert_eq!(
        firings(&s, "2026-03-28T23:00:00Z", 4),
        all(&[
            "2026-03-28T23:05:00Z", // 00:05 CET
            "2026-03-29T00:05:00Z", // 01:05 CET
            "2026-03-29T01:05:00Z", // 03:05 CEST
            "2026-03-29T02:05:00Z", // 04:05 CEST
        ])
    );
}

#[test]
fn hourly_at_minute_5_in_berlin_on_fall_back_night() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:05 happens twice; it fires once, the first time.
    let s = schedule("5 * * * *", "Europe/Berlin");
    assert_eq!(
        firings(&s, "2026-10-24T22:00:00Z", 5),
        all(&[
            "2026-10-24T22:05:00Z", // 00:05 CEST
            "2026-10-24T23:05:00Z", // 01:05 CEST
            "2026-10-25T00:05:00Z", // 02:05 CEST (first 02:05)
            "2026-10-25T02:05:00Z", // 03:05 CET (the second 02:05, at 01:05Z, does not fire)
            "2026-10-25T03:05:00Z", // 04:05 CET
        ])
    );
}

#[test]
fn daily_at_0230_on_spring_forward_night_runs_at_the_end_of_the_gap() {
    let s = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        firings(&s, "2026-03-27T12:00:00Z", 3),
        all(&[
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST, the first instant after
            "2026-03-30T00:30:00Z", // 02:30 CEST
        ])
    );
}

#[test]
fn daily_at_0230_on_fall_back_night_runs_once() {
    let s = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        firings(&s, "2026-10-23T12:00:00Z", 3),
        all(&[
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // the first 02:30 (CEST); not again at 01:30Z (02:30 CET)
            "2026-10-26T01:30:00Z", // 02:30 CET
        ])
    );
    // Asked during the second 02:xx hour, the next run is tomorrow's.
    assert_eq!(
        s.next_after(ts("2026-10-25T01:10:00Z")),
        Some(ts("2026-10-26T01:30:00Z"))
    );
}

#[test]
fn fields_lists_ranges_steps_and_names() {
    let s = schedule("0,30 9-17/4 * jan-mar mon-fri", "UTC");
    // 2026-01-02 is a Friday; 9, 13 and 17 o'clock at :00 and :30; then Monday the 5th.
    assert_eq!(
        firings(&s, "2026-01-02T00:00:00Z", 7),
        all(&[
            "2026-01-02T09:00:00Z",
            "2026-01-02T09:30:00Z",
            "2026-01-02T13:00:00Z",
            "2026-01-02T13:30:00Z",
            "2026-01-02T17:00:00Z",
            "2026-01-02T17:30:00Z",
            "2026-01-05T09:00:00Z",
        ])
    );
    // After March the next run is next January.
    assert_eq!(
        s.next_after(ts("2026-03-31T18:00:00Z")),
        Some(ts("2027-01-01T09:00:00Z"))
    );
    // Step from a single value: 10/20 = 10, 30, 50.
    let s = schedule("10/20 0 * * *", "UTC");
    assert_eq!(
        firings(&s, "2026-05-01T00:00:00Z", 4),
        all(&[
            "2026-05-01T00:10:00Z",
            "2026-05-01T00:30:00Z",
            "2026-05-01T00:50:00Z",
            "2026-05-02T00:10:00Z",
        ])
    );
}

#[test]
fn weekday_seven_and_zero_are_sunday() {
    // 2026-05-03 is a Sunday.
    for expr in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN", "0 12 * * 6-7"] {
        let s = schedule(expr, "UTC");
        let next = s.next_after(ts("2026-05-02T13:00:00Z")).unwrap();
        assert_eq!(next, ts("2026-05-03T12:00:00Z"), "{expr}");
    }
}

#[test]
fn day_of_month_or_day_of_week_when_both_are_restricted() {
    // 2026-02: the 13th is a Friday; Fridays are 6, 13, 20, 27.
    let either = schedule("0 0 1,15 * fri", "UTC");
    assert_eq!(
        firings(&either, "2026-02-01T00:00:00Z", 5),
        all(&[
            "2026-02-06T00:00:00Z",
            "2026-02-13T00:00:00Z",
            "2026-02-15T00:00:00Z",
            "2026-02-20T00:00:00Z",
            "2026-02-27T00:00:00Z",
        ])
    );
    // Only one restricted: only that one counts.
    let dom_only = schedule("0 0 1,15 * *", "UTC");
    assert_eq!(
        firings(&dom_only, "2026-02-01T00:00:00Z", 2),
        all(&["2026-02-15T00:00:00Z", "2026-03-01T00:00:00Z"])
    );
    let dow_only = schedule("0 0 * * fri", "UTC");
    assert_eq!(
        firings(&dow_only, "2026-02-01T00:00:00Z", 2),
        all(&["2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z"])
    );
}

#[test]
fn macros() {
    let from = "2026-05-13T10:20:00Z"; // a Wednesday
    for (m, next) in [
        ("@hourly", "2026-05-13T11:00:00Z"),
        ("@daily", "2026-05-14T00:00:00Z"),
        ("@midnight", "2026-05-14T00:00:00Z"),
        ("@weekly", "2026-05-17T00:00:00Z"),
        ("@monthly", "2026-06-01T00:00:00Z"),
        ("@yearly", "2027-01-01T00:00:00Z"),
        ("@annually", "2027-01-01T00:00:00Z"),
    ] {
        assert_eq!(
            schedule(m, "UTC").next_after(ts(from)),
            Some(ts(next)),
            "{m}"
        );
    }
}

#[test]
fn leap_day_schedule_waits_for_the_next_leap_year() {
    let s = schedule("0 0 29 2 *", "UTC");
    assert_eq!(
        s.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2028-02-29T00:00:00Z"))
    );
}

#[test]
fn errors_name_the_field_and_value() {
    let err = |e: &str| Schedule::parse(e, TimeZone::UTC).unwrap_err().to_string();
    assert_eq!(err("61 * * * *"), "minute field: 61 is out of range 0-59");
    assert_eq!(err("0 24 * * *"), "hour field: 24 is out of range 0-23");
    assert_eq!(
        err("0 0 0 * *"),
        "day-of-month field: 0 is out of range 1-31"
    );
    assert_eq!(err("0 0 * 13 *"), "month field: 13 is out of range 1-12");
    assert_eq!(err("0 0 * * 8"), "day-of-week field: 8 is out of range 0-7");
    assert!(err("0 0 * foo *").starts_with("month field: \"foo\" is not a number in 1-12"));
    assert!(err("*/0 * * * *").starts_with("minute field: step 0"));
    assert!(err("5-1 * * * *").contains("runs backwards"));
    assert!(err("* * * *").contains("has 4 fields"));
    assert!(err("@often").contains("unknown cron macro \"@often\""));
    assert!(err("0 0 30 2 *").contains("never fires"));
    assert!(matches!(
        Schedule::parse("1,,2 * * * *", TimeZone::UTC),
        Err(ScheduleError::Field {
            field: "minute",
            ..
        })
    ));
}

#[test]
fn jitter_stays_within_bounds_and_before_the_next_run() {
    let s = schedule("5 * * * *", "UTC");
    let due = ts("2026-06-01T10:05:00Z");
    let mut rng = fastrand::Rng::with_seed(7);
    let jitter = Duration::from_secs(600);
    let mut min = Duration::MAX;
    let mut max = Duration::ZERO;
    for _ in 0..5000 {
        let at = s.jittered(due, jitter, &mut rng);
        let delay = Duration::try_from(at.duration_since(due)).unwrap();
        assert!(delay <= jitter, "{delay:?}");
        min = min.min(delay);
        max = max.max(delay);
    }
    // The delays spread over the range rather than sitting at one end.
    assert!(min < Duration::from_secs(60) && max > Duration::from_secs(540));

    // A jitter longer than the interval never reaches the next run.
    let next = s.next_after(due).unwrap();
    let mut latest = due;
    for _ in 0..5000 {
        let at = s.jittered(due, Duration::from_secs(7200), &mut rng);
        assert!(at >= due && at < next, "{at}");
        latest = latest.max(at);
    }
    assert!(latest > ts("2026-06-01T11:00:00Z"));
}

// ---------------------------------------------------------------------------------------------
// The scheduler, on paused tokio time
// ---------------------------------------------------------------------------------------------

struct Fixture {
    _dir: tempfile::TempDir,
    state_path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let state_path = dir.path().join("state.json");
    Fixture {
        _dir: dir,
        state_path,
    }
}

/// Collects ticks with the clock reading at which each arrived; runs finish at once.
async fn ticks(sched: &mut Scheduler, clock: &Clock, n: usize) -> Vec<(Timestamp, Timestamp)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let tick = sched.next_tick().await;
        assert!(matches!(tick, Tick::Run { .. }), "{tick:?}");
        out.push((clock.now(), tick.scheduled_for()));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn scheduler_fires_hourly_across_both_berlin_dst_changes() {
    let f = fixture();
    let state = StateFile::open(&f.state_path).unwrap();

    let clock = Clock::following_tokio(ts("2026-03-28T23:30:00Z"));
    let mut sched = Scheduler::new(schedule("5 * * * *", "Europe/Berlin"), clock.clone(), state);
    let got = ticks(&mut sched, &clock, 3).await;
    let want = all(&[
        "2026-03-29T00:05:00Z", // 01:05 CET
        "2026-03-29T01:05:00Z", // 03:05 CEST
        "2026-03-29T02:05:00Z",
    ]);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want);
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), want);

    let state = StateFile::open(&f.state_path).unwrap();
    let clock = Clock::following_tokio(ts("2026-10-24T23:30:00Z"));
    let mut sched = Scheduler::new(schedule("5 * * * *", "Europe/Berlin"), clock.clone(), state);
    // The state file says the last run was in March: that run is caught up first, once.
    let first = sched.next_tick().await;
    assert!(matches!(
        first,
        Tick::Run {
            reason: RunReason::CatchUp { .. },
            ..
        }
    ));
    drop(first);
    let got = ticks(&mut sched, &clock, 3).await;
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        all(&[
            "2026-10-25T00:05:00Z", // 02:05 CEST
            "2026-10-25T02:05:00Z", // 03:05 CET
            "2026-10-25T03:05:00Z",
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_missed_while_down_is_caught_up_once() {
    let f = fixture();
    // The last run was at 05:05; the machine was down until 10:20, missing five runs.
    State {
        last_scheduled_run: Some(ts("2026-06-01T05:05:00Z")),
        ..State::default()
    }
    .write(&f.state_path)
    .unwrap();
    let state = StateFile::open(&f.state_path).unwrap();
    let clock = Clock::following_tokio(ts("2026-06-01T10:20:00Z"));
    let mut sched = Scheduler::new(schedule("5 * * * *", "UTC"), clock.clone(), state.clone())
        .with_run_on_start(true);

    let tick = sched.next_tick().await;
    assert_eq!(clock.now(), ts("2026-06-01T10:20:00Z"), "at once");
    match tick {
        Tick::Run { reason, .. } => assert_eq!(
            reason,
            RunReason::CatchUp {
                missed: ts("2026-06-01T06:05:00Z")
            }
        ),
        other => panic!("{other:?}"),
    }
    // The caught-up cycle finishes before the next due time.
    drop(tick);
    // Then the schedule resumes: the next run is 11:05, not another catch-up.
    let tick = sched.next_tick().await;
    assert_eq!(clock.now(), ts("2026-06-01T11:05:00Z"));
    assert!(matches!(
        tick,
        Tick::Run {
            reason: RunReason::Scheduled,
            ..
        }
    ));
    drop(tick);
    assert_eq!(
        State::read(&f.state_path).unwrap().last_scheduled_run,
        Some(ts("2026-06-01T11:05:00Z"))
    );

    // A restart before the next due time catches nothing up and does not run on start.
    let clock = Clock::following_tokio(ts("2026-06-01T11:30:00Z"));
    let mut sched = Scheduler::new(
        schedule("5 * * * *", "UTC"),
        clock.clone(),
        StateFile::open(&f.state_path).unwrap(),
    );
    let tick = sched.next_tick().await;
    assert_eq!(clock.now(), ts("2026-06-01T12:05:00Z"));
    assert_eq!(tick.scheduled_for(), ts("2026-06-01T12:05:00Z"));
}

#[tokio::test(start_paused = true)]
async fn run_on_start_runs_once_at_start_up() {
    let f = fixture();
    let clock = Clock::following_tokio(ts("2026-06-01T10:20:00Z"));
    let mut sched = Scheduler::new(
        schedule("5 * * * *", "UTC"),
        clock.clone(),
        StateFile::open(&f.state_path).unwrap(),
    )
    .with_run_on_start(true);
    let tick = sched.next_tick().await;
    assert!(matches!(
        tick,
        Tick::Run {
            reason: RunReason::OnStart,
            ..
        }
    ));
    assert_eq!(clock.now(), ts("2026-06-01T10:20:00Z"));
    drop(tick);
    let tick = sched.next_tick().await;
    assert_eq!(clock.now(), ts("2026-06-01T11:05:00Z"));
    assert!(matches!(
        tick,
        Tick::Run {
            reason: RunReason::Scheduled,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_tick_during_a_running_cycle_is_skipped() {
    let f = fixture();
    let clock = Clock::following_tokio(ts("2026-06-01T10:20:00Z"));
    let mut sched = Scheduler::new(
        schedule("*/15 * * * *", "UTC"),
        clock.clone(),
        StateFile::open(&f.state_path).unwrap(),
    );
    let Tick::Run { guard, .. } = sched.next_tick().await else {
        panic!("the first tick runs");
    };
    assert_eq!(clock.now(), ts("2026-06-01T10:30:00Z"));
    // The cycle takes 20 minutes: the 10:45 tick finds it running.
    let cycle = tokio::spawn(async move {
        let _guard = guard;
        tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    });
    let tick = sched.next_tick().await;
    assert_eq!(clock.now(), ts("2026-06-01T10:45:00Z"));
    assert!(
        matches!(tick, Tick::Skipped { scheduled_for } if scheduled_for == ts("2026-06-01T10:45:00Z")),
        "{tick:?}"
    );
    assert!(sched.is_running());
    assert!(sched.try_start().is_none(), "no second cycle beside it");
    cycle.await.unwrap();
    // The cycle ended at 10:50; the 11:00 tick runs.
    assert!(!sched.is_running());
    let tick = sched.next_tick().await;
    assert_eq!(clock.now(), ts("2026-06-01T11:00:00Z"));
    assert!(matches!(tick, Tick::Run { .. }), "{tick:?}");
}

#[tokio::test(start_paused = true)]
async fn ticks_that_passed_while_the_loop_was_busy_collapse_into_one() {
    let f = fixture();
    let clock = Clock::following_tokio(ts("2026-06-01T10:20:00Z"));
    let mut sched = Scheduler::new(
        schedule("*/15 * * * *", "UTC"),
        clock.clone(),
        StateFile::open(&f.state_path).unwrap(),
    );
    let first = sched.next_tick().await;
    assert_eq!(first.scheduled_for(), ts("2026-06-01T10:30:00Z"));
    drop(first);
    // The loop comes back only at 11:20: 10:45, 11:00 and 11:15 have passed.
    tokio::time::advance(Duration::from_secs(50 * 60)).await;
    let tick = sched.next_tick().await;
    assert_eq!(tick.scheduled_for(), ts("2026-06-01T11:15:00Z"));
    assert_eq!(clock.now(), ts("2026-06-01T11:20:00Z"));
    drop(tick);
    let tick = sched.next_tick().await;
    assert_eq!(tick.scheduled_for(), ts("2026-06-01T11:30:00Z"));
}

#[tokio::test(start_paused = true)]
async fn jittered_runs_start_late_but_keep_their_due_time() {
    let f = fixture();
    let clock = Clock::following_tokio(ts("2026-06-01T10:20:00Z"));
    let mut sched = Scheduler::new(
        schedule("5 * * * *", "UTC"),
        clock.clone(),
        StateFile::open(&f.state_path).unwrap(),
    )
    .with_jitter(Duration::from_secs(300))
    .with_seed(1);
    let mut delays = Vec::new();
    for _ in 0..20 {
        let tick = sched.next_tick().await;
        let due = tick.scheduled_for();
        assert_eq!(due.as_second() % 3600, 5 * 60, "due at :05, {due}");
        let delay = Duration::try_from(clock.now().duration_since(due)).unwrap();
        assert!(delay <= Duration::from_secs(300), "{delay:?}");
        delays.push(delay);
    }
    assert!(
        delays.iter().any(|d| *d != delays[0]),
        "a random delay per run"
    );
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn health_turns_unhealthy_after_max_age() {
    let start = ts("2026-06-01T10:00:00Z");
    let clock = Clock::following_tokio(start);
    let metrics = Metrics::new("0.1.0", start);
    let max_age = Duration::from_secs(3 * 3600);
    let server = StatusServer::new(metrics.clone(), max_age, clock.clone());

    assert!(server.health().is_healthy(), "grace period after start");
    tokio::time::advance(Duration::from_secs(3 * 3600 - 1)).await;
    assert!(server.health().is_healthy());
    tokio::time::advance(Duration::from_secs(2)).await;
    let h = server.health();
    assert!(!h.is_healthy());
    assert!(h.reason().contains("no successful backup"), "{h:?}");

    metrics.cycle_finished(&success_report(clock.now(), 1000));
    assert!(server.health().is_healthy());
    tokio::time::advance(max_age).await;
    assert!(
        server.health().is_healthy(),
        "exactly max_age is still fine"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let h = server.health();
    assert!(!h.is_healthy());
    assert!(h.reason().contains("longer than max_age 3h"), "{h:?}");
}

#[test]
fn health_from_the_state_file_follows_the_same_rule() {
    let f = fixture();
    let max_age = Duration::from_secs(3600);
    let start = ts("2026-06-01T10:00:00Z");

    let h = health_from_state_file(&f.state_path, max_age, start);
    assert!(!h.is_healthy(), "no state file: nothing is running");
    assert!(h.reason().contains("state.json"), "{h:?}");

    let state = StateFile::open(&f.state_path).unwrap();
    state.record_start(start).unwrap();
    for (now, healthy) in [
        ("2026-06-01T10:30:00Z", true),
        ("2026-06-01T11:00:00Z", true),
        ("2026-06-01T11:00:01Z", false),
    ] {
        assert_eq!(
            health_from_state_file(&f.state_path, max_age, ts(now)).is_healthy(),
            healthy,
            "{now}"
        );
        assert_eq!(
            evaluate(None, Some(start), max_age, ts(now)).is_healthy(),
            healthy
        );
    }
    state.record_success(ts("2026-06-01T12:00:00Z")).unwrap();
    assert!(
        health_from_state_file(&f.state_path, max_age, ts("2026-06-01T12:59:00Z")).is_healthy()
    );
    assert!(
        !health_from_state_file(&f.state_path, max_age, ts("2026-06-01T13:01:00Z")).is_healthy()
    );

    std::fs::write(&f.state_path, "{ not json").unwrap();
    let h = health_from_state_file(&f.state_path, max_age, ts("2026-06-01T12:30:00Z"));
    assert!(!h.is_healthy());
    assert!(h.reason().contains("damaged"), "{h:?}");
}

#[test]
fn the_state_file_survives_a_reopen() {
    let f = fixture();
    let s = StateFile::open(&f.state_path).unwrap();
    s.record_start(ts("2026-06-01T10:00:00Z")).unwrap();
    s.record_scheduled_run(ts("2026-06-01T10:05:00Z")).unwrap();
    s.record_success(ts("2026-06-01T10:09:00Z")).unwrap();
    let again = StateFile::open(&f.state_path).unwrap().get();
    assert_eq!(
        again,
        State {
            last_scheduled_run: Some(ts("2026-06-01T10:05:00Z")),
            last_success: Some(ts("2026-06-01T10:09:00Z")),
            started_at: Some(ts("2026-06-01T10:00:00Z")),
            last_failure: None,
            retries: 0,
            pending_retry: None,
            last_deep_verify: None,
            last_deep_verify_success: None,
        }
    );
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(f.state_path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
}

#[test]
fn an_unwritable_state_file_is_an_error_that_names_it() {
    let err = StateFile::open("/nonexistent-dir/state.json")
        .unwrap()
        .record_success(ts("2026-06-01T10:00:00Z"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot write the state file /nonexistent-dir/state.json"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics and the status server over real TCP
// ---------------------------------------------------------------------------------------------

fn success_report(at: Timestamp, bytes: u64) -> CycleReport {
    CycleReport {
        outcome: Outcome::Success,
        finished_at: at,
        duration: Duration::from_millis(95_500),
        pulled_bytes: bytes,
        transfer_duration: Duration::from_secs(4),
        archive_bytes: Some(bytes),
    }
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parser for the Prometheus text exposition format 0.0.4, strict enough to reject what a
/// Prometheus server would: every sample must belong to a family with a TYPE line before it, names
/// and label syntax must be valid, values must be floats.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    assert!(text.ends_with('\n'), "the last line ends with a newline");
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap().to_string();
            let arg = parts.next().unwrap_or("").to_string();
            assert!(valid_name(&name), "{line}");
            match kind {
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"]
                            .contains(&arg.as_str()),
                        "{line}"
                    );
                    assert!(types.insert(name, arg).is_none(), "TYPE twice: {line}");
                }
                "HELP" => {
                    assert!(!arg.is_empty(), "{line}");
                    assert!(helps.insert(name, arg).is_none(), "HELP twice: {line}");
                }
                _ => {}
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(valid_name(&key), "{line}");
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut val = String::new();
                    loop {
                        match chars.next().unwrap_or_else(|| panic!("{line}")) {
                            '\\' => match chars.next() {
                                Some('n') => val.push('\n'),
                                Some(c @ ('\\' | '"')) => val.push(c),
                                other => panic!("bad escape {other:?} in {line}"),
                            },
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.insert(key, val);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_string(), labels)
            }
        };
        assert!(valid_name(&name), "{line}");
        assert!(
            types.contains_key(&name),
            "sample {name} has no TYPE line before it"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    for name in types.keys() {
        assert!(helps.contains_key(name), "{name} has no HELP");
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "exactly one sample {name}{labels:?}");
    found[0].value
}

/// A raw HTTP/1.1 request; returns status code, headers (lower-case names) and body.
async fn http(
    addr: std::net::SocketAddr,
    request: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect::<BTreeMap<_, _>>();
    if let Some(len) = headers.get("content-length") {
        if request.starts_with("HEAD ") {
            assert!(body.is_empty());
        } else {
            assert_eq!(len.parse::<usize>().unwrap(), body.len());
        }
    }
    (status, headers, body.to_string())
}

async fn start_server(
    server: StatusServer,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    (addr, tx, handle)
}

#[tokio::test]
async fn metrics_endpoint_serves_what_was_recorded_in_prometheus_format() {
    let start = ts("2026-06-01T10:00:00Z");
    let metrics = Metrics::new("0.1.0 \"dev\"", start);
    metrics.set_ha_connected(true);
    metrics.cycle_started(ts("2026-06-01T10:05:00Z"));
    metrics.cycle_finished(&success_report(ts("2026-06-01T10:06:35Z"), 40_000_000));
    metrics.cycle_started(ts("2026-06-01T11:05:00Z"));
    metrics.cycle_finished(&CycleReport {
        outcome: Outcome::Failed,
        finished_at: ts("2026-06-01T11:07:00Z"),
        duration: Duration::from_secs(120),
        pulled_bytes: 1_000,
        transfer_duration: Duration::ZERO,
        archive_bytes: None,
    });
    metrics.cycle_skipped();
    metrics.cycle_skipped();

    let server = StatusServer::new(
        metrics.clone(),
        Duration::from_secs(3 * 3600),
        Clock::system(),
    );
    let (addr, stop, handle) = start_server(server).await;

    let (code, headers, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(code, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (types, samples) = parse_prometheus(&body);
    for (name, kind) in &types {
        assert!(name.starts_with("hapull_"), "{name}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
    }
    assert_eq!(types["hapull_cycles_total"], "counter");
    assert_eq!(types["hapull_last_success_timestamp_seconds"], "gauge");

    assert_eq!(
        value(&samples, "hapull_cycles_total", &[("outcome", "success")]),
        1.0
    );
    assert_eq!(
        value(&samples, "hapull_cycles_total", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        value(&samples, "hapull_cycles_total", &[("outcome", "skipped")]),
        2.0
    );
    assert_eq!(
        value(&samples, "hapull_last_success_timestamp_seconds", &[]),
        ts("2026-06-01T10:06:35Z").as_second() as f64
    );
    assert_eq!(
        value(&samples, "hapull_last_attempt_timestamp_seconds", &[]),
        ts("2026-06-01T11:05:00Z").as_second() as f64
    );
    assert_eq!(
        value(&samples, "hapull_start_time_seconds", &[]),
        start.as_second() as f64
    );
    assert_eq!(
        value(&samples, "hapull_last_cycle_duration_seconds", &[]),
        120.0
    );
    assert_eq!(
        value(&samples, "hapull_last_archive_size_bytes", &[]),
        40_000_000.0
    );
    assert_eq!(
        value(&samples, "hapull_last_throughput_bytes_per_second", &[]),
        10_000_000.0
    );
    assert_eq!(
        value(&samples, "hapull_pulled_bytes_total", &[]),
        40_001_000.0
    );
    assert_eq!(value(&samples, "hapull_home_assistant_connected", &[]), 1.0);
    assert_eq!(
        value(
            &samples,
            "hapull_build_info",
            &[("version", "0.1.0 \"dev\"")]
        ),
        1.0
    );

    // A change shows on the next scrape.
    metrics.set_ha_connected(false);
    let (_, _, body) = http(addr, "GET /metrics?x=1 HTTP/1.1\r\n\r\n").await;
    let (_, samples) = parse_prometheus(&body);
    assert_eq!(value(&samples, "hapull_home_assistant_connected", &[]), 0.0);

    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn healthz_answers_ok_or_503_with_the_reason() {
    let long_ago = ts("2020-01-01T00:00:00Z");
    let metrics = Metrics::new("0.1.0", long_ago);
    let server = StatusServer::new(metrics.clone(), Duration::from_secs(3600), Clock::system());
    let (addr, stop, handle) = start_server(server).await;

    let (code, _, body) = http(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(code, 503);
    assert!(
        body.starts_with("unhealthy: no successful backup yet"),
        "{body}"
    );

    metrics.cycle_finished(&success_report(Timestamp::now(), 10));
    let (code, headers, body) = http(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(code, 200);
    assert!(
        body.starts_with("healthy: last successful backup at "),
        "{body}"
    );
    assert_eq!(headers["connection"], "close");

    let (code, _, body) = http(addr, "HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!((code, body.as_str()), (200, ""));

    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn the_status_server_refuses_what_it_does_not_serve() {
    let server = StatusServer::new(
        Metrics::new("0.1.0", Timestamp::now()),
        Duration::from_secs(3600),
        Clock::system(),
    )
    .with_limits(Limits {
        max_request_bytes: 1024,
        timeout: Duration::from_millis(300),
        max_connections: 4,
    });
    let (addr, stop, handle) = start_server(server).await;

    assert_eq!(http(addr, "GET / HTTP/1.1\r\n\r\n").await.0, 404);
    assert_eq!(http(addr, "GET /metricsx HTTP/1.1\r\n\r\n").await.0, 404);
    let (code, headers, _) = http(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((code, headers["allow"].as_str()), (405, "GET, HEAD"));
    assert_eq!(http(addr, "garbage\r\n\r\n").await.0, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(4000));
    assert_eq!(http(addr, &huge).await.0, 431);

    // A client that connects and sends half a request is cut off, not waited for forever; the
    // server keeps answering others meanwhile.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metr").await.unwrap();
    assert_eq!(http(addr, "GET /healthz HTTP/1.1\r\n\r\n").await.0, 200);
    let mut buf = Vec::new();
    let n = slow.read_to_end(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");

    // More idle clients than connection slots do not block the server for good.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    assert_eq!(http(addr, "GET /healthz HTTP/1.1\r\n\r\n").await.0, 200);
    drop(idle);

    stop.send(()).unwrap();
    handle.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "after shutdown nothing listens"
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// A plain HTTP server answering each request with the next code from `codes` (the last one
/// repeats); `None` means never answer.
async fn webhook_server(codes: Vec<Option<u16>>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut i = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let code = codes[i.min(codes.len() - 1)];
            i += 1;
            let log = log.clone();
            tokio::spawn(serve_one(stream, code, log));
        }
    });
    (base, seen)
}

async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    code: Option<u16>,
    log: Arc<Mutex<Vec<Received>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_string();
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().unwrap().push(Received {
        request_line,
        headers,
        body: String::from_utf8(body).unwrap(),
    });
    match code {
        Some(code) => {
            let _ = stream
                .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nOK").as_bytes())
                .await;
            let _ = stream.shutdown().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn quick(client: WebhookClient) -> WebhookClient {
    client
        .timeout(Duration::from_millis(500))
        .retries(2, Duration::from_millis(10))
}

const SECRET: &str = "0f3c9a52-1d6e-4b1a-9f57-7d2c1e0a9b44";

#[tokio::test]
async fn success_webhook_posts_json() {
    let (base, seen) = webhook_server(vec![Some(200)]).await;
    let notifier = Notifier::new(Some(&format!("{base}/ping/{SECRET}")), None)
        .unwrap()
        .with_client(quick(WebhookClient::new().unwrap()));
    let body = json!({"event": "backup_pulled", "backup_id": "abc123", "bytes": 1234});
    notifier.success(&body).await.unwrap();
    // Not configured: nothing is sent.
    notifier.failure(&json!({})).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].request_line,
        format!("POST /ping/{SECRET} HTTP/1.1")
    );
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_eq!(seen[0].headers["host"], base.trim_start_matches("http://"));
    let got: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(got, body);
}

#[tokio::test]
async fn webhook_by_get_with_a_query() {
    let (base, seen) = webhook_server(vec![Some(204)]).await;
    let url = WebhookUrl::parse("webhook_failure", &format!("{base}/{SECRET}/fail?rid=7")).unwrap();
    let code = quick(WebhookClient::new().unwrap().method(Method::Get))
        .send(&url, &json!({"ignored": true}))
        .await
        .unwrap();
    assert_eq!(code, 204);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].request_line,
        format!("GET /{SECRET}/fail?rid=7 HTTP/1.1")
    );
    assert!(seen[0].body.is_empty());
}

#[tokio::test]
async fn transient_webhook_failures_are_retried() {
    let (base, seen) = webhook_server(vec![Some(503), Some(502), Some(200)]).await;
    let url = WebhookUrl::parse("webhook_success", &format!("{base}/{SECRET}")).unwrap();
    let code = quick(WebhookClient::new().unwrap())
        .send(&url, &json!({}))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn retries_give_up_and_permanent_failures_are_not_retried() {
    let (base, seen) = webhook_server(vec![Some(500)]).await;
    let url = WebhookUrl::parse("webhook_success", &format!("{base}/{SECRET}")).unwrap();
    let err = quick(WebhookClient::new().unwrap())
        .send(&url, &json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotifyError::Status { code: 500, .. }),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 3, "one try and two retries");

    let (base, seen) = webhook_server(vec![Some(404)]).await;
    let url = WebhookUrl::parse("webhook_success", &format!("{base}/{SECRET}")).unwrap();
    let err = quick(WebhookClient::new().unwrap())
        .send(&url, &json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotifyError::Status { code: 404, .. }),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "a 404 is not retried");
    assert_secret_free(&err);
}

#[tokio::test]
async fn a_silent_webhook_times_out() {
    let (base, seen) = webhook_server(vec![None]).await;
    let url = WebhookUrl::parse("webhook_success", &format!("{base}/{SECRET}")).unwrap();
    let err = WebhookClient::new()
        .unwrap()
        .timeout(Duration::from_millis(200))
        .retries(1, Duration::from_millis(10))
        .send(&url, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, NotifyError::Timeout { .. }), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_secret_free(&err);
}

#[tokio::test]
async fn an_unreachable_webhook_is_a_connect_error() {
    // Bind and drop to get a port nobody listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let url = WebhookUrl::parse(
        "webhook_success",
        &format!("http://127.0.0.1:{port}/{SECRET}"),
    )
    .unwrap();
    let err = quick(WebhookClient::new().unwrap())
        .send(&url, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, NotifyError::Connect { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("http://127.0.0.1:{port}"))
    );
    assert_secret_free(&err);
}

fn assert_secret_free(e: &NotifyError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(SECRET), "{text}");
}

#[test]
fn webhook_urls_are_parsed_and_never_shown_whole() {
    let u = WebhookUrl::parse("webhook_success", &format!("https://hc-ping.com/{SECRET}")).unwrap();
    assert_eq!(u.to_string(), "https://hc-ping.com");
    assert!(!format!("{u:?}").contains(SECRET));
    let u = WebhookUrl::parse("webhook_success", "http://[::1]:8080/x").unwrap();
    assert_eq!(u.to_string(), "http://[::1]:8080");
    let u = WebhookUrl::parse("webhook_success", "HTTPS://Example.org:443").unwrap();
    assert_eq!(u.to_string(), "https://Example.org");

    for (bad, why) in [
        ("ftp://x/y", "scheme"),
        (&format!("https://user:{SECRET}@host/"), "user names"),
        ("https:///path", "host is missing"),
        ("https://host:99999/", "port"),
        (&format!("https://host/{SECRET} x"), "spaces"),
        ("https://ho st/", "spaces"),
        ("http://a:b:80/", "host has characters"),
    ] {
        let err = WebhookUrl::parse("webhook_failure", bad).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(why), "{bad}: {text}");
        assert!(text.contains("[notify] webhook_failure"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
    }
}

fn self_signed_for_127_0_0_1(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("hook.crt");
    let key = dir.join("hook.key");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A self-signed server certificate must not claim to be a CA (webpki refuses that).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed for the TLS tests");
    assert!(status.success());
    (cert, key)
}

#[tokio::test]
async fn https_webhook_with_a_trusted_certificate_and_a_refused_one() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_for_127_0_0_1(dir.path());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs.clone(), PrivateKeyDer::from_pem_file(&key).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let log = log.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve_one(tls, Some(200), log).await;
                }
            });
        }
    });
    let url = WebhookUrl::parse(
        "webhook_success",
        &format!("https://127.0.0.1:{port}/{SECRET}"),
    )
    .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs[0].clone()).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let code = quick(WebhookClient::with_tls(Arc::new(client_cfg)))
        .send(&url, &json!({"event": "backup_pulled"}))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        seen.lock().unwrap()[0].request_line,
        format!("POST /{SECRET} HTTP/1.1")
    );

    // With only the public roots, the self-signed certificate is refused and not retried.
    let err = quick(WebhookClient::new().unwrap())
        .send(&url, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, NotifyError::Tls { .. }), "{err}");
    assert!(!err.is_transient());
    assert_secret_free(&err);
    assert_eq!(seen.lock().unwrap().len(), 1, "no request without trust");
}

//! `hapull run` on an hourly schedule, with Home Assistant (the simulator) down just before the
//! scheduled run: the run fails, is retried with backoff while HA is away, and commits soon after HA
//! is back, not an hour later. The state file and /metrics show the retries. A real sshd serves the
//! archives; the process is the real binary.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::KillOnDrop;
use crate::support::config;
use crate::support::sshd::Sshd;
use hapull::store::Store;
use hapull_sim::{Sim, SimOptions};
use jiff::{Timestamp, ToSpan};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn state(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn metrics(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn archives(store: &Path) -> usize {
    Store::open_read_only(store)
        .and_then(|s| s.list())
        .map(|l| l.len())
        .unwrap_or(0)
}

/// Polls a child process's files (there is no event to wait for across processes); `limit` only
/// stops a hung test, it is not what the test measures.
async fn wait_for(limit: Duration, log: &Path, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_while_ha_is_down_is_retried_and_commits_when_ha_is_back() {
    let sshd = Sshd::start();
    let ha_dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(ha_dir.path());
    opts.payload_bytes = 256 * 1024;
    let mut sim = Sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "sim-token\n").unwrap();
    let status_port = free_port();
    // Hourly, at a minute 30-90 s from now: the run is a real scheduled one.
    let due_minute = Timestamp::now()
        .checked_add(90.seconds())
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .minute();
    let config: PathBuf = dir.path().join("hapull.toml");
    std::fs::write(
        &config,
        format!(
            r#"{base}
[store]
dir = "archives"

[audit]
path = "audit.jsonl"

[schedule]
cron = "{due_minute} * * * *"
state_file = "state.json"
retry_min = "2s"
retry_max = "8s"

[status]
listen = "127.0.0.1:{status_port}"
"#,
            base = config::sim_and_sshd(&sim.url(), &sshd, ha_dir.path(), ""),
        ),
    )
    .unwrap();
    let log = dir.path().join("run.log");
    let child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_hapull"))
            .arg("-c")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(
        Duration::from_secs(60),
        &log,
        "the scheduler starting",
        || log_text().contains("scheduler started"),
    )
    .await;
    assert_eq!(
        state(dir.path())["last_scheduled_run"],
        serde_json::Value::Null
    );

    // HA goes away before the scheduled run.
    sim.stop_serving().await;
    let store_dir = dir.path().join("archives");
    wait_for(
        Duration::from_secs(180),
        &log,
        "a retry of the failed scheduled run",
        || {
            state(dir.path())["retry_attempt"]
                .as_u64()
                .is_some_and(|a| a >= 2)
        },
    )
    .await;
    let s = state(dir.path());
    let scheduled: Timestamp = s["last_scheduled_run"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        scheduled.to_zoned(jiff::tz::TimeZone::UTC).minute(),
        due_minute,
        "the failed run is the scheduled one: {s}"
    );
    assert!(s["retries"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(
        archives(&store_dir),
        0,
        "nothing can be committed while HA is down"
    );
    let m = metrics(status_port);
    assert!(
        metric(&m, "hapull_cycle_retries_total ").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(
        metric(&m, "hapull_cycles_total{outcome=\"failed\"} ").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(
        metric(&m, "hapull_next_retry_timestamp_seconds ").is_some_and(|t| t > 0.0),
        "{m}"
    );

    // HA is back: a retry commits the backup, well before the next hourly run.
    sim.resume_serving().await.unwrap();
    let back_at = Timestamp::now();
    wait_for(
        Duration::from_secs(300),
        &log,
        "a commit after HA came back",
        || archives(&store_dir) == 1,
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        &log,
        "the success in the state file",
        || state(dir.path())["last_success"].is_string(),
    )
    .await;
    let s = state(dir.path());
    let success: Timestamp = s["last_success"].as_str().unwrap().parse().unwrap();
    assert!(
        success < scheduled.checked_add(1.hour()).unwrap(),
        "committed by a retry, not by the next hourly run: {s}"
    );
    assert_eq!(
        s["next_retry"],
        serde_json::Value::Null,
        "no retry pending: {s}"
    );
    // For the record (not asserted: wall-clock times depend on the machine).
    eprintln!(
        "scheduled run {scheduled}, HA back {back_at}, committed {success} ({}s after HA was back), {} retries",
        success.duration_since(back_at).as_secs(),
        s["retries"]
    );
    assert!(s["retries"].as_u64().unwrap() >= 1, "{s}");
    // The daemon writes the state file first, then its metrics: wait for them to catch up.
    wait_for(
        Duration::from_secs(30),
        &log,
        "the success in /metrics",
        || {
            metric(
                &metrics(status_port),
                "hapull_cycles_total{outcome=\"success\"} ",
            ) == Some(1.0)
        },
    )
    .await;
    let m = metrics(status_port);
    assert_eq!(
        metric(&m, "hapull_cycles_total{outcome=\"success\"} "),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "hapull_next_retry_timestamp_seconds "),
        Some(0.0),
        "{m}"
    );

    // The audit log tells the story in order: failed, retry, ..., finished.
    let kinds: Vec<String> = std::fs::read_to_string(dir.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .collect();
    let first_retry = kinds.iter().position(|k| k == "cycle.retry");
    let finished = kinds.iter().position(|k| k == "cycle.finished");
    assert!(
        matches!((first_retry, finished), (Some(r), Some(f)) if r < f),
        "{kinds:?}"
    );
    assert!(!log_text().contains("not retried"), "{}", log_text());
    drop(child);
}

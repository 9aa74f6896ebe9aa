//! Load test for the audit log's `event()` path with Home Assistant `state_changed`-sized records.
//!
//! ```text
//! cargo run --release --example bench_audit -- [--rate 10000] [--secs 10] [--dir /var/tmp] [--max-secs 5] [--full-events]
//! ```
//!
//! Phase 1 paces events at `--rate` for `--secs` and reports the achieved durable rate, the slowest
//! `event()` call, the writer lag (enqueue until fsync'd) and memory. Phase 2 calls `event()` as fast as
//! one producer can for `--max-secs` to find the writer's ceiling. Finally it times `verify` on the result.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hapull::audit::{self, AuditLog, AuditOptions, EventStatus, Kind};
use serde_json::{Value, json};

struct Args {
    rate: u64,
    secs: u64,
    max_secs: u64,
    dir: Option<PathBuf>,
    full: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rate: 10_000,
        secs: 10,
        max_secs: 5,
        dir: None,
        full: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--rate" => args.rate = value()?.parse()?,
            "--secs" => args.secs = value()?.parse()?,
            "--max-secs" => args.max_secs = value()?.parse()?,
            "--dir" => args.dir = Some(value()?.into()),
            "--full-events" => args.full = true,
            other => anyhow::bail!(
                "unknown argument {other}; use --rate N --secs N --max-secs N --dir PATH --full-events"
            ),
        }
    }
    Ok(args)
}

/// A `state_changed` event as Home Assistant sends it. `full`: a sensor with the usual attributes and
/// contexts on both states (~1.1 KB serialized); otherwise a lean one (~600 bytes).
fn state_changed(i: u64, full: bool) -> Value {
    let t = "2026-11-26T09:07:39.248417+00:00";
    let entity = format!("sensor.living_room_temperature_{}", i % 50);
    let ctx =
        json!({"id": format!("01M8BHRJ3GW8X8QN4BX{i:07}"), "parent_id": null, "user_id": null});
    let state = |v: String| {
        if full {
            json!({
                "entity_id": entity, "state": v,
                "attributes": {"state_class": "measurement", "unit_of_measurement": "°C",
                               "device_class": "temperature", "friendly_name": "Living room temperature"},
                "last_changed": t, "last_reported": t, "last_updated": t, "context": ctx,
            })
        } else {
            json!({
                "entity_id": entity, "state": v,
                "attributes": {"unit_of_measurement": "°C", "friendly_name": "Living room"},
                "last_changed": t, "last_updated": t,
            })
        }
    };
    json!({
        "event_type": "state_changed",
        "data": {
            "entity_id": entity,
            "old_state": state(format!("{}.4", 18 + i % 5)),
            "new_state": state(format!("{}.5", 18 + i % 5)),
        },
        "origin": "LOCAL", "time_fired": t, "context": ctx,
    })
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples (time, events queued so far) and measures how long until that many are durable.
async fn lag_monitor(log: AuditLog, stop: Arc<AtomicBool>) -> Duration {
    let mut samples: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let mut max = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let stats = log.stats();
        samples.push_back((now, stats.events_queued));
        while let Some(&(t, queued)) = samples.front() {
            if queued > stats.events_durable {
                break;
            }
            max = max.max(now - t);
            samples.pop_front();
        }
        if stop.load(Ordering::Relaxed) && samples.len() <= 1 {
            return max;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::Builder::new()
        .prefix("bench-audit")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let mut opts = AuditOptions::new(dir.path().join("audit.jsonl"), "bench");
    opts.max_bytes = Some(64 * 1024 * 1024);
    let log = AuditLog::open(opts.clone()).await?;
    let payload_len = serde_json::to_vec(&state_changed(1, args.full))?.len();
    println!(
        "payload {payload_len} bytes of JSON per event; batch delay {:?}; files in {}",
        opts.batch_delay,
        dir.path().display()
    );

    // Phase 1: paced.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(lag_monitor(log.clone(), Arc::clone(&stop)));
    let per_tick = (args.rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.secs);
    let mut i = 0u64;
    let mut enqueue_ns: Vec<u64> = Vec::with_capacity((args.rate * args.secs) as usize + 1000);
    let mut not_queued = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let data = state_changed(i, args.full);
            let t0 = Instant::now();
            let status = log.event(Kind::HaEvent, data);
            enqueue_ns.push(t0.elapsed().as_nanos() as u64);
            if status != EventStatus::Queued {
                not_queued += 1;
            }
            i += 1;
        }
    }
    let produced = Instant::now() - start;
    let durable_at = log.flush().await?;
    stop.store(true, Ordering::Relaxed);
    let max_lag = monitor.await?;
    let all_durable = Instant::now() - start;
    let stats = log.stats();
    let (rss, hwm) = rss_kib();
    println!("paced phase: {} events in {:.2?}", i, produced);
    println!(
        "  offered {:.0}/s, durable {:.0}/s (all {} durable after {:.2?}; seq {durable_at})",
        i as f64 / produced.as_secs_f64(),
        stats.events_durable as f64 / all_durable.as_secs_f64(),
        stats.events_durable,
        all_durable
    );
    enqueue_ns.sort_unstable();
    let pct = |p: f64| {
        let idx = ((enqueue_ns.len() as f64 - 1.0) * p).round() as usize;
        Duration::from_nanos(enqueue_ns.get(idx).copied().unwrap_or(0))
    };
    println!(
        "  event() incl. serializing data: p50 {:.1?}, p99 {:.1?}, p99.9 {:.1?}, max {:.1?}; over 1 ms: {}; dropped {not_queued}",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        enqueue_ns.iter().filter(|&&n| n > 1_000_000).count()
    );
    println!("  writer lag (event() until fsync'd): max {max_lag:.1?}");
    println!("  RSS now {} MiB, peak {} MiB", rss / 1024, hwm / 1024);

    // Phase 2: as fast as one producer can go.
    let before = log.stats();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.max_secs);
    let mut n = 0u64;
    let mut dropped = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            if log.event(Kind::HaEvent, state_changed(n, args.full)) == EventStatus::Dropped {
                dropped += 1;
            }
            n += 1;
        }
        tokio::task::yield_now().await;
    }
    log.flush().await?;
    let elapsed = start.elapsed();
    let after = log.stats();
    let (_, hwm) = rss_kib();
    println!(
        "max phase: offered {:.0}/s, durable {:.0}/s, dropped {dropped} ({:.1}%), peak RSS {} MiB",
        n as f64 / elapsed.as_secs_f64(),
        (after.events_durable - before.events_durable) as f64 / elapsed.as_secs_f64(),
        100.0 * dropped as f64 / n.max(1) as f64,
        hwm / 1024
    );
    log.close().await?;

    let files = audit::discover(&opts.path)?;
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let t0 = Instant::now();
    let report = audit::verify_path(&opts.path, false)?;
    let took = t0.elapsed();
    println!(
        "verify: {} records, {} files, {} MiB in {:.2?} ({:.0} records/s), intact: {}",
        report.records,
        files.len(),
        bytes / (1024 * 1024),
        took,
        report.records as f64 / took.as_secs_f64(),
        report.is_intact()
    );
    Ok(())
}

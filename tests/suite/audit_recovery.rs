//! Audit recoveries are evidence: every recovery the writer makes (torn tail, records lost from the end,
//! a changed last record) is reported by `verify` with where and when, keeps the log "needing attention"
//! until an `audit.acknowledged` record covers it, and never reuses a lost record's seq. Also: the event
//! queue is bounded in bytes, not only in count.

use std::path::{Path, PathBuf};

use hapull::audit::{self, AuditLog, AuditOptions, EventStatus, Kind, RecoveryWhat};
use serde_json::{Value, json};

fn opts(dir: &Path) -> AuditOptions {
    AuditOptions::new(dir.join("audit.jsonl"), "home")
}

async fn log_with(dir: &Path, n: u64) -> PathBuf {
    let log = AuditLog::open(opts(dir)).await.unwrap();
    for i in 0..n {
        log.step(Kind::PullFinished, json!({"i": i})).await.unwrap();
    }
    log.close().await.unwrap();
    dir.join("audit.jsonl")
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Cuts the file at the start of its `keep`th line (1-based count of lines kept).
fn keep_lines(path: &Path, keep: usize) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    for _ in 0..keep {
        at += bytes[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    }
    std::fs::write(path, &bytes[..at]).unwrap();
    at as u64
}

#[tokio::test]
async fn lost_records_are_reported_until_acknowledged_and_their_seqs_stay_unused() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_with(dir.path(), 10).await;
    let offset = keep_lines(&path, 7);

    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    let next = log.step(Kind::CycleStarted, json!({})).await.unwrap();
    log.close().await.unwrap();
    // Records 8..=10 were lost; the recovery record is 11, the next one 12.
    assert_eq!(next, 12);
    let recs = records(&path);
    let recovered = recs
        .iter()
        .find(|r| r["kind"] == "audit.recovered")
        .unwrap();
    assert_eq!(recovered["seq"], 11);

    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_intact(), "{:?}", report.problem);
    assert!(!report.is_clean());
    let open: Vec<_> = report.unacknowledged().collect();
    assert_eq!(open.len(), 1, "{:?}", report.recoveries);
    assert_eq!(open[0].seq, 11);
    assert_eq!(
        open[0].what,
        RecoveryWhat::Lost {
            first_seq: 8,
            last_seq: 10,
            offset: Some(offset)
        }
    );
    let shown = open[0].to_string();
    assert!(
        shown.contains("records seq 8..=10 were lost from the end"),
        "{shown}"
    );
    assert!(shown.contains("NOT acknowledged"), "{shown}");

    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    let ack = log
        .step(Kind::Acknowledged, json!({"through_seq": 11}))
        .await
        .unwrap();
    log.close().await.unwrap();
    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_clean(), "{:?}", report.recoveries);
    assert_eq!(report.recoveries[0].acknowledged_by, Some(ack));
}

#[tokio::test]
async fn a_recovery_after_an_acknowledgement_needs_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_with(dir.path(), 5).await;
    keep_lines(&path, 4);
    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    log.step(Kind::Acknowledged, json!({"through_seq": 6}))
        .await
        .unwrap();
    log.step(Kind::CycleStarted, json!({})).await.unwrap();
    log.close().await.unwrap();
    assert!(audit::verify_path(&path, false).unwrap().is_clean());

    // Now a torn tail: a write cut short.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"seq\":9,\"time\":");
    std::fs::write(&path, &bytes).unwrap();
    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    log.close().await.unwrap();
    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_intact(), "{:?}", report.problem);
    let open: Vec<_> = report.unacknowledged().collect();
    assert_eq!(open.len(), 1, "{:?}", report.recoveries);
    assert!(
        matches!(open[0].what, RecoveryWhat::Torn { length: 16, .. }),
        "{:?}",
        open[0]
    );
    assert_eq!(
        report.recoveries.len(),
        2,
        "the earlier one is still listed"
    );
}

#[tokio::test]
async fn a_changed_last_record_is_named_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_with(dir.path(), 3).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let last_start = text[..text.len() - 1].rfind('\n').unwrap() + 1;
    std::fs::write(&path, text.replace("{\"i\":2}", "{\"i\":9}")).unwrap();
    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    log.close().await.unwrap();
    let report = audit::verify_path(&path, false).unwrap();
    let open: Vec<_> = report.unacknowledged().collect();
    assert_eq!(
        open.iter().map(|r| r.what.clone()).collect::<Vec<_>>(),
        vec![RecoveryWhat::Changed {
            seq: 3,
            offset: Some(last_start as u64)
        }]
    );
}

#[tokio::test]
async fn the_event_queue_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.queue_bytes = 10_000;
    // Events wait in the queue for the batch delay; nothing is written before the fill below ends.
    o.batch_delay = std::time::Duration::from_secs(3600);
    let log = AuditLog::open(o).await.unwrap();
    let big = "x".repeat(3_000);
    let statuses: Vec<EventStatus> = (0..5)
        .map(|_| log.event(Kind::HaEvent, json!({"big": big})))
        .collect();
    // Three of ~3 kB fit in 10 kB; the fourth and fifth do not, though the count limit is far away.
    assert_eq!(
        statuses,
        vec![
            EventStatus::Queued,
            EventStatus::Queued,
            EventStatus::Queued,
            EventStatus::Dropped,
            EventStatus::Dropped
        ]
    );
    log.close().await.unwrap();
    assert_eq!(log.stats().events_dropped, 2);
    let recs = records(&dir.path().join("audit.jsonl"));
    let dropped = recs.iter().find(|r| r["kind"] == "audit.dropped").unwrap();
    assert_eq!(dropped["data"]["count"], 2);
    assert_eq!(recs.iter().filter(|r| r["kind"] == "ha.event").count(), 3);
}

#[test]
fn every_kind_has_one_distinct_name() {
    let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    for k in Kind::ALL {
        assert_eq!(Kind::from_name(k.as_str()), Some(*k));
    }
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n);
}

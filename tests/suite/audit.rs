//! The audit log as a user meets it: records written, files rotated and compressed, tampering found at
//! the right line, crashes recovered without hiding anything, and the `audit` CLI's exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use hapull::audit::tail::{Follower, TailFilter};
use hapull::audit::{
    self, AuditLog, AuditOptions, EventStatus, GENESIS_PREV, Issue, Kind, VerifyOptions,
    VerifyReport,
};
use hapull::cli::audit::{AuditCommand, TailArgs, VerifyArgs, run_with_output};
use proptest::prelude::*;
use serde_json::{Value, json};

fn sha256_hex(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn opts(dir: &Path) -> AuditOptions {
    AuditOptions::new(dir.join("audit.jsonl"), "home")
}

/// A state_changed-like payload, as the integrator records HA events.
fn ha_event(i: u64) -> Value {
    json!({
        "event_type": "state_changed",
        "entity_id": format!("sensor.temp_{i}"),
        "new_state": {"state": format!("{}.5", i % 30), "attributes": {"unit_of_measurement": "°C"}},
    })
}

/// Writes `n` records, alternating durable steps and batched events.
async fn write_records(o: AuditOptions, n: u64) -> PathBuf {
    let log = AuditLog::open(o).await.unwrap();
    for i in 0..n {
        if i % 2 == 0 {
            log.step(
                Kind::PullFinished,
                json!({"backup_id": format!("b{i}"), "bytes": i * 1000}),
            )
            .await
            .unwrap();
        } else {
            assert_eq!(log.event(Kind::HaEvent, ha_event(i)), EventStatus::Queued);
        }
    }
    log.close().await.unwrap();
    log.path().to_path_buf()
}

fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\n").unwrap_or(l).to_vec())
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
}

fn json_line(line: &[u8]) -> Value {
    serde_json::from_slice(line).unwrap()
}

fn problem(report: &VerifyReport) -> (PathBuf, u64, Issue) {
    let p = report
        .problem
        .clone()
        .unwrap_or_else(|| panic!("expected a problem, report: {report:?}"));
    (p.file, p.line, p.issue)
}

#[tokio::test]
async fn records_chain_from_genesis_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_records(opts(dir.path()), 40).await;
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 40);
    let first = json_line(&lines[0]);
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], GENESIS_PREV);
    assert_eq!(first["instance"], "home");
    assert_eq!(first["kind"], "pull.finished");
    let keys: Vec<&str> = std::str::from_utf8(&lines[0])
        .unwrap()
        .match_indices("\":")
        .map(|(i, _)| {
            let s = &std::str::from_utf8(&lines[0]).unwrap()[..i];
            &s[s.rfind('"').unwrap() + 1..]
        })
        .take(5)
        .collect();
    assert_eq!(keys, ["seq", "time", "kind", "instance", "data"]);
    for w in lines.windows(2) {
        assert_eq!(json_line(&w[1])["prev"], sha256_hex(&w[0]));
    }

    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (40, Some(1), Some(40))
    );
    assert_eq!(
        report.last_sha256.as_deref(),
        Some(sha256_hex(&lines[39]).as_str())
    );
}

#[tokio::test]
async fn chain_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    write_records(opts(dir.path()), 3).await;
    let path = write_records(opts(dir.path()), 3).await;
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 6);
    assert_eq!(json_line(&lines[3])["seq"], 4);
    assert_eq!(json_line(&lines[3])["prev"], sha256_hex(&lines[2]));
    assert!(audit::verify_path(&path, false).unwrap().is_intact());
}

#[tokio::test]
async fn concurrent_steps_get_distinct_durable_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.step(Kind::CycleStarted, json!({"n": i})).await.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let seq = t.await.unwrap();
        // step() returned, so the record is in the file already.
        assert!(log.durable_seq() >= seq);
        seqs.push(seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(read_lines(log.path()).len(), 20);
    log.close().await.unwrap();
    assert!(matches!(
        log.step(Kind::CycleStarted, json!({})).await,
        Err(audit::AuditError::Closed { .. })
    ));
    assert_eq!(log.event(Kind::HaEvent, json!({})), EventStatus::Closed);
}

#[tokio::test]
async fn rotation_by_size_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_bytes = Some(4000);
    let path = write_records(o, 120).await;
    let files = audit::discover(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(files.last().unwrap(), &path);
    for pair in files.windows(2) {
        let older = read_lines(&pair[0]);
        let newer = read_lines(&pair[1]);
        let first = json_line(&newer[0]);
        assert_eq!(first["kind"], "audit.rotated");
        assert_eq!(first["prev"], sha256_hex(older.last().unwrap()));
        assert_eq!(
            first["data"]["previous_file"],
            pair[0].file_name().unwrap().to_str().unwrap()
        );
        // The size limit is honoured up to one record.
        assert!(std::fs::metadata(&pair[0]).unwrap().len() < 4000 + 1000);
    }
    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, 120 + (files.len() as u64 - 1));

    // Verifying only the newer files is a partial chain: refused unless asked for.
    let tail_only = &files[1..];
    let strict = audit::verify(tail_only, &VerifyOptions::default()).unwrap();
    let (file, line, issue) = problem(&strict);
    assert_eq!((file, line), (files[1].clone(), 1));
    assert!(matches!(issue, Issue::NotGenesis { .. }));
    let lenient = audit::verify(
        tail_only,
        &VerifyOptions {
            allow_partial: true,
            seal: None,
        },
    )
    .unwrap();
    assert!(lenient.is_intact());
    assert!(matches!(
        lenient.warnings[0].issue,
        Issue::PartialChain { .. }
    ));
}

#[tokio::test]
async fn rotation_with_compression_verifies_through_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_bytes = Some(3000);
    o.compress_rotated = true;
    let path = write_records(o.clone(), 80).await;
    let files = audit::discover(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files[..files.len() - 1] {
        assert!(f.to_str().unwrap().ends_with(".gz"), "{f:?}");
    }
    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_intact(), "{report:?}");

    // Reopening continues the chain from the compressed files.
    let path = write_records(o, 10).await;
    assert!(audit::verify_path(&path, false).unwrap().is_intact());

    // A change inside a compressed file (line 3, "b2" -> "b3") is found in that file, at the next record.
    let files = audit::discover(&path).unwrap();
    let target = &files[0];
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(target).unwrap()),
        &mut text,
    )
    .unwrap();
    let changed = text.replacen("b2\"", "b3\"", 1);
    assert_ne!(changed, text);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, changed.as_bytes()).unwrap();
    std::fs::write(target, enc.finish().unwrap()).unwrap();
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (target.clone(), 4));
    assert!(matches!(issue, Issue::PrevMismatch { .. }), "{issue:?}");
}

#[tokio::test]
async fn rotation_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_age = Some(Duration::from_millis(5));
    let log = AuditLog::open(o).await.unwrap();
    log.step(Kind::CycleStarted, json!({})).await.unwrap();
    // Record times come from the clock, so the second record must be later than the age limit.
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.step(Kind::CycleStarted, json!({})).await.unwrap();
    log.close().await.unwrap();
    let files = audit::discover(log.path()).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(read_lines(&files[0]).len(), 1);
    assert_eq!(
        json_line(&read_lines(&files[1])[0])["kind"],
        "audit.rotated"
    );
    assert!(audit::verify_path(log.path(), false).unwrap().is_intact());
}

/// A log of 20 records in one file, plus its seal, for tampering.
async fn tamper_base(dir: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let path = write_records(opts(dir), 20).await;
    let lines = read_lines(&path);
    assert!(audit::verify_path(&path, false).unwrap().is_intact());
    (path, lines)
}

#[tokio::test]
async fn flipped_byte_is_found_at_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = tamper_base(dir.path()).await;
    // Line 10 changes in its data ("bytes": 9000 -> 9001); its successor no longer chains.
    let text = String::from_utf8(lines[9].clone()).unwrap();
    let changed = if text.contains("\"bytes\":") {
        text.replacen("000", "001", 1)
    } else {
        text.replacen("temp_", "temq_", 1)
    };
    assert_ne!(text, changed);
    lines[9] = changed.into_bytes();
    write_lines(&path, &lines);
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 11));
    assert!(matches!(issue, Issue::PrevMismatch { .. }), "{issue:?}");
}

#[tokio::test]
async fn changed_newest_record_is_found_by_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = tamper_base(dir.path()).await;
    let last = lines.len() - 1;
    lines[last] = String::from_utf8(lines[last].clone())
        .unwrap()
        .replacen("temp_", "temq_", 1)
        .into_bytes();
    write_lines(&path, &lines);
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 20));
    assert!(matches!(issue, Issue::SealMismatch { .. }), "{issue:?}");
}

#[tokio::test]
async fn deleted_line_is_found_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = tamper_base(dir.path()).await;
    lines.remove(9);
    write_lines(&path, &lines);
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 10));
    assert_eq!(
        issue,
        Issue::SeqGap {
            expected: 10,
            found: 11
        }
    );
}

#[tokio::test]
async fn removed_newest_records_are_found_by_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = tamper_base(dir.path()).await;
    lines.truncate(18);
    write_lines(&path, &lines);
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 18));
    assert_eq!(issue, Issue::SealBeyondEnd { sealed_seq: 20 });

    // Reopening does not paper over it: the loss is reported and recorded.
    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    assert_eq!(
        log.open_report().warnings.len(),
        1,
        "{:?}",
        log.open_report()
    );
    log.close().await.unwrap();
    let lines = read_lines(&path);
    let rec = json_line(lines.last().unwrap());
    assert_eq!(rec["kind"], "audit.recovered");
    assert_eq!(rec["data"]["sealed_seq"], 20);
    assert_eq!(rec["data"]["last_seq"], 18);
    assert!(audit::verify_path(&path, false).unwrap().is_intact());
}

#[tokio::test]
async fn inserted_line_is_found_where_it_was_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = tamper_base(dir.path()).await;
    let copy = lines[4].clone();
    lines.insert(10, copy);
    write_lines(&path, &lines);
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 11));
    assert_eq!(
        issue,
        Issue::SeqGap {
            expected: 11,
            found: 5
        }
    );
}

#[tokio::test]
async fn swapped_lines_are_found_at_the_first_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = tamper_base(dir.path()).await;
    lines.swap(9, 10);
    write_lines(&path, &lines);
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 10));
    assert_eq!(
        issue,
        Issue::SeqGap {
            expected: 10,
            found: 11
        }
    );
}

#[tokio::test]
async fn truncation_mid_line_is_found_at_the_cut_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = tamper_base(dir.path()).await;
    let keep: usize = lines[..9].iter().map(|l| l.len() + 1).sum::<usize>() + 30;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..keep]).unwrap();
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 10));
    assert_eq!(issue, Issue::IncompleteLine);
}

#[tokio::test]
async fn tampering_in_a_rotated_file_names_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_bytes = Some(4000);
    let path = write_records(o, 60).await;
    let files = audit::discover(&path).unwrap();
    let target = &files[1];
    let mut lines = read_lines(target);
    lines.swap(2, 3);
    write_lines(target, &lines);
    let (file, line, _) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (target.clone(), 3));
}

fn proptest_base() -> &'static (Vec<u8>, Vec<u8>) {
    static BASE: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = rt.block_on(write_records(opts(dir.path()), 12));
        let log = std::fs::read(&path).unwrap();
        let seal = std::fs::read(dir.path().join("audit.jsonl.seal")).unwrap();
        (log, seal)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any single changed byte is detected, at the changed line or the one after it.
    #[test]
    fn every_single_byte_change_is_found(pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let (log, seal) = proptest_base();
        let i = pos.index(log.len());
        let mut changed = log.clone();
        changed[i] = changed[i].wrapping_add(delta);
        let changed_line = log[..i].iter().filter(|&&b| b == b'\n').count() as u64 + 1;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, &changed).unwrap();
        std::fs::write(dir.path().join("audit.jsonl.seal"), seal).unwrap();
        let report = audit::verify_path(&path, false).unwrap();
        let p = report.problem.clone();
        prop_assert!(p.is_some(), "byte {} (line {}) changed by {} went unnoticed", i, changed_line, delta);
        let p = p.unwrap();
        prop_assert_eq!(&p.file, &path);
        prop_assert!(
            p.line == changed_line || p.line == changed_line + 1,
            "changed line {}, reported {}", changed_line, p
        );
    }
}

const TORN: &[u8] = br#"{"seq":7,"time":"2026-11-26T09:3"#;

#[tokio::test]
async fn torn_tail_is_kept_reported_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_records(opts(dir.path()), 6).await;
    let good_len = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(TORN);
    std::fs::write(&path, &bytes).unwrap();

    // Before hapull reopens the log, the torn line is a failure.
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!(
        (file, line, issue),
        (path.clone(), 7, Issue::IncompleteLine)
    );

    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    let torn = log.open_report().torn.clone().expect("torn tail reported");
    assert_eq!(torn.offset, good_len);
    assert_eq!(torn.length, TORN.len() as u64);
    assert_eq!(torn.sha256, sha256_hex(TORN));
    assert!(!log.open_report().warnings.is_empty());
    let seq = log.step(Kind::CycleStarted, json!({})).await.unwrap();
    log.close().await.unwrap();

    let lines = read_lines(&path);
    assert_eq!(lines[6], TORN, "torn bytes stay in place");
    let rec = json_line(&lines[7]);
    assert_eq!(rec["kind"], "audit.recovered");
    assert_eq!(rec["seq"], 7);
    assert_eq!(rec["prev"], sha256_hex(&lines[5]));
    assert_eq!(rec["data"]["torn_offset"], good_len);
    assert_eq!(rec["data"]["torn_length"], TORN.len());
    assert_eq!(rec["data"]["torn_sha256"], sha256_hex(TORN));
    assert_eq!(seq, 8);

    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.warnings.len(), 1);
    assert_eq!(report.warnings[0].line, 7);
    assert_eq!(
        report.warnings[0].issue,
        Issue::TornFragment {
            offset: good_len,
            length: TORN.len() as u64
        }
    );
}

#[tokio::test]
async fn torn_fragment_without_its_recovery_record_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_records(opts(dir.path()), 6).await;
    // Reopen to get the fragment recovered, then change the recovery record's hash of it.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(TORN);
    std::fs::write(&path, &bytes).unwrap();
    AuditLog::open(opts(dir.path()))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    let mut lines = read_lines(&path);
    let forged = String::from_utf8(lines[7].clone())
        .unwrap()
        .replace(&sha256_hex(TORN), &sha256_hex(b"something else"));
    lines[7] = forged.into_bytes();
    write_lines(&path, &lines);
    let (file, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!((file, line), (path.clone(), 7));
    assert!(matches!(issue, Issue::InvalidJson(_)), "{issue:?}");

    // A fragment followed by an ordinary record (no recovery record at all) fails the same way.
    let mut lines = read_lines(&path);
    lines.remove(7);
    write_lines(&path, &lines);
    let (_, line, issue) = problem(&audit::verify_path(&path, false).unwrap());
    assert_eq!(line, 7);
    assert!(matches!(issue, Issue::InvalidJson(_)), "{issue:?}");
}

#[tokio::test]
async fn torn_tail_with_newline_and_repeated_crash_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_records(opts(dir.path()), 4).await;
    // Garbage that did end in a newline (e.g. zeros left by a crash)...
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\0\0\0\0\n");
    // ...then a second crash while the recovery record was being written.
    bytes.extend_from_slice(br#"{"seq":5,"time":"2026"#);
    std::fs::write(&path, &bytes).unwrap();

    let log = AuditLog::open(opts(dir.path())).await.unwrap();
    assert!(log.open_report().torn.is_some());
    log.step(Kind::CycleStarted, json!({})).await.unwrap();
    log.close().await.unwrap();
    let report = audit::verify_path(&path, false).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_eq!(report.last_seq, Some(6));
}

#[tokio::test]
async fn damage_before_the_tail_refuses_to_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_records(opts(dir.path()), 3).await;
    let mut bytes = std::fs::read(&path).unwrap();
    for _ in 0..6 {
        bytes.extend_from_slice(b"not a record\n");
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = AuditLog::open(opts(dir.path())).await.unwrap_err();
    assert!(
        matches!(err, audit::AuditError::CorruptTail { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("audit verify"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was written");
}

#[tokio::test]
async fn clean_shutdown_loses_no_batched_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    // Nothing is written by the timer during this test: only close() can make these durable.
    o.batch_delay = Duration::from_secs(3000);
    let log = AuditLog::open(o).await.unwrap();
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let log = log.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..2500u64 {
                assert_eq!(
                    log.event(Kind::HaEvent, json!({"producer": p, "i": i})),
                    EventStatus::Queued
                );
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    log.close().await.unwrap();
    let stats = log.stats();
    assert_eq!(
        (stats.events_queued, stats.events_durable),
        (10_000, 10_000)
    );
    assert_eq!(stats.events_dropped, 0);
    let lines = read_lines(log.path());
    assert_eq!(lines.len(), 10_000);
    for p in 0..4 {
        let mine: Vec<u64> = lines
            .iter()
            .map(|l| json_line(l))
            .filter(|r| r["data"]["producer"] == p)
            .map(|r| r["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            mine,
            (0..2500).collect::<Vec<_>>(),
            "producer {p} in order, none lost"
        );
    }
    assert!(audit::verify_path(log.path(), false).unwrap().is_intact());
}

#[tokio::test]
async fn events_become_durable_without_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.batch_delay = Duration::from_millis(20);
    let log = AuditLog::open(o).await.unwrap();
    assert_eq!(log.event(Kind::HaEvent, ha_event(1)), EventStatus::Queued);
    // Only a guard against hanging forever; the writer's timer is what is being tested.
    let durable = tokio::time::timeout(Duration::from_secs(60), log.wait_durable(1))
        .await
        .expect("the batch timer never wrote the event");
    assert_eq!(durable, 1);
    assert_eq!(read_lines(log.path()).len(), 1);
    log.close().await.unwrap();
}

#[tokio::test]
async fn full_queue_counts_drops_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.queue_capacity = 1;
    o.batch_delay = Duration::from_secs(3000);
    let log = AuditLog::open(o).await.unwrap();
    // On this single-threaded runtime the writer cannot run until we yield, so the queue stays full.
    assert_eq!(log.event(Kind::HaEvent, ha_event(0)), EventStatus::Queued);
    for i in 1..100 {
        assert_eq!(log.event(Kind::HaEvent, ha_event(i)), EventStatus::Dropped);
    }
    log.close().await.unwrap();
    assert_eq!(log.stats().events_dropped, 99);
    let lines = read_lines(log.path());
    assert_eq!(lines.len(), 2);
    let dropped = json_line(&lines[1]);
    assert_eq!(dropped["kind"], "audit.dropped");
    assert_eq!(dropped["data"]["count"], 99);
}

#[tokio::test]
async fn follower_reads_across_rotation_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_bytes = Some(1500);
    let log = AuditLog::open(o).await.unwrap();
    let mut follower = Follower::new(log.path());
    let mut seen = Vec::new();
    for i in 0..40u64 {
        log.step(Kind::PullFinished, json!({"i": i})).await.unwrap();
        if i % 3 == 0 {
            seen.extend(follower.poll().unwrap());
        }
    }
    log.close().await.unwrap();
    seen.extend(follower.poll().unwrap());
    assert!(audit::discover(log.path()).unwrap().len() > 2);
    let seqs: Vec<u64> = seen
        .iter()
        .map(|l| json_line(l)["seq"].as_u64().unwrap())
        .collect();
    let total = seqs.len() as u64;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let kinds: Vec<Value> = seen.iter().map(|l| json_line(l)["kind"].clone()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "pull.finished").count(), 40);
}

#[tokio::test]
async fn tail_filter_by_kind_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_records(opts(dir.path()), 10).await;
    let files = audit::discover(&path).unwrap();
    let mut kinds = Vec::new();
    let filter = TailFilter {
        kinds: vec!["ha.event".into()],
        since: None,
    };
    let skipped = audit::tail::read(&files, &filter, |t| kinds.push(t.record.kind)).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(kinds.len(), 5);
    assert!(kinds.iter().all(|k| k == "ha.event"));

    let future = TailFilter {
        kinds: vec![],
        since: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)),
    };
    let mut n = 0;
    audit::tail::read(&files, &future, |_| n += 1).unwrap();
    assert_eq!(n, 0);
}

async fn cli(cmd: AuditCommand, default: Option<&Path>) -> (ExitCode, String) {
    let mut out: Vec<u8> = Vec::new();
    let code = run_with_output(cmd, default, &mut out).await.unwrap();
    (code, String::from_utf8(out).unwrap())
}

fn verify_cmd(path: Option<PathBuf>, files: Vec<PathBuf>) -> AuditCommand {
    AuditCommand::Verify(VerifyArgs {
        path,
        files,
        allow_partial: false,
    })
}

#[tokio::test]
async fn cli_verify_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = tamper_base(dir.path()).await;

    let (code, out) = cli(verify_cmd(None, vec![]), Some(&path)).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("intact: 20 records"), "{out}");

    let (code, _) = cli(verify_cmd(None, vec![path.clone()]), None).await;
    assert_eq!(code, ExitCode::SUCCESS);

    lines.swap(4, 5);
    write_lines(&path, &lines);
    let (code, out) = cli(verify_cmd(None, vec![]), Some(&path)).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(out.contains("line 5 (seq 6): seq gap"), "{out}");

    // --path overrides the configured path.
    let other = tempfile::tempdir().unwrap();
    let good = write_records(opts(other.path()), 3).await;
    let (code, _) = cli(verify_cmd(Some(good), vec![]), Some(&path)).await;
    assert_eq!(code, ExitCode::SUCCESS);

    // No path at all is an error that says what to pass.
    let mut sink: Vec<u8> = Vec::new();
    let err = run_with_output(verify_cmd(None, vec![]), None, &mut sink)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--path"), "{err}");

    // A configured path that does not exist is an error naming it, not a verdict on the chain.
    let missing = other.path().join("nothing-here.jsonl");
    let err = run_with_output(verify_cmd(None, vec![]), Some(&missing), &mut sink)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("nothing-here.jsonl"), "{err:#}");
}

#[tokio::test]
async fn cli_tail_prints_filtered_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_records(opts(dir.path()), 30).await;
    let tail = |kinds: Vec<String>, json: bool, lines: Option<usize>| {
        AuditCommand::Tail(TailArgs {
            path: None,
            follow: false,
            kinds,
            since: None,
            json,
            lines,
        })
    };
    let (code, out) = cli(
        tail(vec!["pull.finished".into()], true, Some(3)),
        Some(&path),
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    let printed: Vec<&str> = out.lines().collect();
    let stored = read_lines(&path);
    assert_eq!(
        printed,
        [&stored[24], &stored[26], &stored[28]]
            .iter()
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect::<Vec<_>>()
    );

    let (_, out) = cli(tail(vec![], false, None), Some(&path)).await;
    assert_eq!(out.lines().count(), 10, "default shows the newest 10");
    assert!(out.lines().last().unwrap().contains("#30"), "{out}");
}

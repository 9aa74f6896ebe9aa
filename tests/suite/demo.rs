//! `hapull demo` as a user runs it: no config, no network, exit 0, archives verified, audit chain intact.

use std::process::Command;

#[test]
fn demo_runs_full_cycles_and_leaves_verified_archives() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .args(["demo", "--cycles", "2", "--size-mib", "1", "--dir"])
        .arg(&work)
        .env("HAPULL_CONFIG", "/nonexistent/hapull.toml")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.matches("demo:   committed ").count(), 2, "{stdout}");
    assert!(stdout.contains("chain intact"), "{stdout}");
    assert!(
        !stderr.contains("connection to Home Assistant lost"),
        "{stderr}"
    );

    // The store it leaves behind checks out with the user's own tools.
    let sums = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(work.join("archives"))
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&sums.stdout)
            .matches(": OK")
            .count(),
        2
    );
    let cfg = work.join("hapull.toml");
    let verify = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&cfg)
        .args(["verify", "--all"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let audit = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&cfg)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );

    let list = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&cfg)
        .args(["list", "--json"])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["archives"].as_array().unwrap().len(), 2, "{listed}");
    let prune = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&cfg)
        .args(["prune", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&prune.stdout);
    assert!(prune.status.success(), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("keep")).count(),
        2,
        "{text}"
    );

    // keep_last = 10 keeps both, so the rules themselves are checked with keep_last = 1: the dry run
    // names one archive to delete and deletes nothing; the real run deletes exactly that one.
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("keep_last = 10"), "{text}");
    std::fs::write(&cfg, text.replace("keep_last = 10", "keep_last = 1")).unwrap();
    let prune = |dry: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hapull"));
        c.arg("-c").arg(&cfg).arg("prune");
        if dry {
            c.arg("--dry-run");
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        text
    };
    let archive_of = |line: &str| {
        line.split_whitespace()
            .find(|w| w.ends_with(".tar"))
            .map(str::to_string)
    };
    let dry = prune(true);
    let kept: Vec<_> = dry.lines().filter(|l| l.starts_with("keep")).collect();
    let going: Vec<_> = dry
        .lines()
        .filter(|l| l.starts_with("would delete"))
        .collect();
    assert_eq!((kept.len(), going.len()), (1, 1), "{dry}");
    let going_path = archive_of(going[0]).unwrap();
    let kept_path = archive_of(kept[0]).unwrap();
    assert!(
        work.join("archives").join(&going_path).exists(),
        "a dry run deletes nothing: {dry}"
    );
    let real = prune(false);
    let deleted: Vec<_> = real.lines().filter(|l| l.starts_with("delete")).collect();
    assert_eq!(deleted.len(), 1, "{real}");
    assert!(deleted[0].contains(&going_path), "{real}");
    assert!(!work.join("archives").join(&going_path).exists());
    assert!(work.join("archives").join(&kept_path).exists());
    let sums = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(work.join("archives"))
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&sums.stdout)
            .matches(": OK")
            .count(),
        1
    );
    let audit = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&cfg)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(audit.status.success());
    let log = std::fs::read_to_string(work.join("audit.jsonl")).unwrap_or_default();
    assert_eq!(log.matches("\"store.pruned\"").count(), 1, "{log}");
}

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
}

//! The most verbose logging hapull offers (`-vv`, `RUST_LOG=trace`) never prints the access token,
//! although the WebSocket library logs every frame at trace level and the `auth` frame carries it: a
//! whole `hapull once` cycle against the simulated Home Assistant and a real sshd, stderr searched.

use std::process::Command;

use crate::support::config;
use crate::support::sshd::Sshd;
use hapull_sim::{Sim, SimOptions};

const TOKEN: &str = "llat-7c3e9b1d5f0a4e2c8b6d1f3a5c7e9b0d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_of_a_whole_cycle_never_shows_the_token() {
    let sshd = Sshd::start();
    let ha_dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(ha_dir.path());
    opts.token = TOKEN.to_string();
    opts.payload_bytes = 64 * 1024;
    let sim = Sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("hapull.toml");
    std::fs::write(
        &config,
        format!(
            r#"{base}
[store]
dir = "archives"
"#,
            base = config::sim_and_sshd(&sim.url(), &sshd, ha_dir.path(), ""),
        ),
    )
    .unwrap();

    for (args, rust_log) in [
        (vec!["-vv", "once"], None),
        (vec!["once"], Some("trace")),
        (
            vec!["once"],
            Some("tungstenite=trace,tokio_tungstenite=trace,trace"),
        ),
    ] {
        let hapull = config.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_hapull"));
            c.arg("-c").arg(&hapull).args(&args);
            c.env_remove("RUST_LOG");
            if let Some(filter) = rust_log {
                c.env("RUST_LOG", filter);
            }
            c.output().unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{rust_log:?}: the cycle must succeed for the check to mean anything:\n{stderr}"
        );
        // Verbose output really was on (so the absence of the token is not the absence of logging).
        let level = if rust_log.is_some() { "TRACE" } else { "DEBUG" };
        assert!(
            stderr.contains(level),
            "{rust_log:?}: expected {level} lines:\n{stderr}"
        );
        // The library prints frames both as text and as hex.
        let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
        for text in [&stderr, &stdout] {
            assert!(!text.contains(TOKEN), "{rust_log:?}: the token was logged");
            assert!(
                !text.contains(&TOKEN[5..20]),
                "{rust_log:?}: part of the token was logged"
            );
            assert!(
                !text.contains(&hex[10..40]),
                "{rust_log:?}: the token was logged in hex"
            );
        }
    }

    // Dropping the library's frame records must not raise its level: the default shows no DEBUG.
    let hapull = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hapull"))
            .arg("-c")
            .arg(&hapull)
            .arg("once")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("DEBUG"), "{stderr}");
}

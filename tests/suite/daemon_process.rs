//! `hapull run` as a process: against the simulated Home Assistant and a real sshd, on a short schedule,
//! it completes cycles, reports health, and stops with exit 0 on SIGTERM — also in the middle of a
//! transfer, leaving a partial download that the next pull resumes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::KillOnDrop;
use crate::support::config;
use crate::support::sshd::Sshd;
use hapull::store::Store;
use hapull_sim::{Sim, SimOptions};

struct Setup {
    _sshd: Sshd,
    sim: Sim,
    dir: tempfile::TempDir,
    _ha_dir: tempfile::TempDir,
    config: PathBuf,
}

async fn setup(extra: &str, payload_bytes: u64) -> Setup {
    let sshd = Sshd::start();
    let ha_dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(ha_dir.path());
    opts.payload_bytes = payload_bytes;
    let sim = Sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "sim-token\n").unwrap();
    let config = dir.path().join("hapull.toml");
    let body = format!(
        r#"{base}
[store]
dir = "archives"

[audit]
path = "audit.jsonl"

[schedule]
cron = "* * * * *"
run_on_start = true
state_file = "state.json"
{extra}
"#,
        base = config::sim_and_sshd(&sim.url(), &sshd, ha_dir.path(), ""),
    );
    std::fs::write(&config, body).unwrap();
    Setup {
        _sshd: sshd,
        sim,
        dir,
        _ha_dir: ha_dir,
        config,
    }
}

fn hapull(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hapull"));
    c.arg("-c").arg(config).args(args);
    c
}

fn spawn_run(config: &Path, log: &Path) -> KillOnDrop {
    KillOnDrop(
        hapull(config, &["run"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("hapull run did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_until(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn audit_kinds(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_completes_two_cycles_and_stops_cleanly_on_sigterm() {
    let s = setup("", 0).await;
    let log = s.dir.path().join("run.log");
    let mut child = spawn_run(&s.config, &log);
    // run_on_start gives the first cycle at once, the minute boundary the second (within 60 s).
    let store_dir = s.dir.path().join("archives");
    let two = wait_until(Duration::from_secs(90), || {
        Store::open_read_only(&store_dir)
            .map(|st| st.list().map(|l| l.len()).unwrap_or(0))
            .unwrap_or(0)
            >= 2
    })
    .await;
    assert!(
        two,
        "two cycles did not complete; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let health = hapull(&s.config, &["health"]).output().unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let kinds = audit_kinds(s.dir.path());
    assert!(
        kinds.iter().filter(|k| *k == "cycle.finished").count() >= 2,
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("service.stopped"));
    // Home Assistant heard about each success.
    let pulled = s
        .sim
        .fired_events()
        .iter()
        .filter(|e| e["event_type"] == "hapull_backup_pulled")
        .count();
    assert!(pulled >= 2, "{:?}", s.sim.fired_events());
    // HA keeps exactly keep_on_ha (1) of hapull's backups; the older one went only after its commit.
    assert_eq!(s.sim.backups().len(), 1);
    // The audit chain is intact.
    let verify = hapull(&s.config, &["audit", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_transfer_leaves_a_partial_that_the_next_pull_resumes() {
    // A 24 MiB archive pulled at 2 MiB/s: the transfer is still running when the signal comes, and a
    // 1 s grace period cuts it.
    let s = setup("shutdown_grace = \"1s\"\n", 24 << 20).await;
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("remote_dir =", "bandwidth_limit = \"2MiB\"\nremote_dir =");
    std::fs::write(&s.config, cfg).unwrap();
    let log = s.dir.path().join("run.log");
    let mut child = spawn_run(&s.config, &log);
    let incoming = s.dir.path().join("archives/.incoming");
    let started = wait_until(Duration::from_secs(60), || {
        std::fs::read_dir(&incoming)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.path().to_string_lossy().ends_with(".partial")
                        && e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
    .await;
    assert!(
        started,
        "the pull never started; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("did not finish within the grace period"),
        "{text}"
    );

    // Nothing that looks complete: only the partial (and its sidecar) in the store.
    let store = Store::open_read_only(s.dir.path().join("archives")).unwrap();
    assert!(store.list().unwrap().is_empty());
    let partial_len: u64 = std::fs::read_dir(&incoming)
        .unwrap()
        .flatten()
        .filter(|e| e.path().to_string_lossy().ends_with(".partial"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(partial_len > 0);

    // The backup is still in HA; pulling it resumes from the partial.
    let id = s.sim.backups()[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("bandwidth_limit = \"2MiB\"\n", "");
    std::fs::write(&s.config, cfg).unwrap();
    let out = hapull(&s.config, &["pull", &id]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kinds = std::fs::read_to_string(s.dir.path().join("audit.jsonl")).unwrap();
    let pulled = kinds
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "pull.finished")
        .unwrap();
    assert!(
        pulled["data"]["resumed_bytes"].as_u64().unwrap() > 0,
        "{pulled}"
    );
    let store = Store::open_read_only(s.dir.path().join("archives")).unwrap();
    let a = store.find(&id).unwrap().unwrap();
    assert!(store.verify(&a).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cycle_is_announced_in_home_assistant() {
    let s = setup("", 0).await;
    // One committed backup that HA still holds (keep_on_ha = 1) ...
    let once = hapull(&s.config, &["once"]).output().unwrap();
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let kept = s.sim.backups()[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        Store::open_read_only(s.dir.path().join("archives"))
            .unwrap()
            .find(&kept)
            .unwrap()
            .is_some()
    );
    // ... and keep_on_ha = 0 from now on: a successful cycle would delete it (it is hapull's and has
    // a verified copy). A failed one must not.
    // Only the cycle at start: no scheduled one may run (and rightly delete) while the test looks.
    let mut cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("cron = \"* * * * *\"", "cron = \"0 0 1 1 *\"");
    cfg.push_str("\n[backup]\nkeep_on_ha = 0\n");
    std::fs::write(&s.config, cfg).unwrap();
    s.sim.control().fail_next_backup("upload_failed");
    let log = s.dir.path().join("run.log");
    let mut child = spawn_run(&s.config, &log);
    let failed = wait_until(Duration::from_secs(30), || {
        audit_kinds(s.dir.path())
            .iter()
            .any(|k| k == "cycle.failed")
    })
    .await;
    assert!(
        failed,
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let announced = wait_until(Duration::from_secs(10), || {
        !s.sim.notifications().is_empty()
            && s.sim
                .fired_events()
                .iter()
                .any(|e| e["event_type"] == "hapull_backup_failed")
    })
    .await;
    assert!(announced, "notifications: {:?}", s.sim.notifications());
    let note = s.sim.notifications()[0].to_string();
    assert!(note.contains("upload_failed"), "{note}");
    sigterm(&child);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(30)).code(),
        Some(0)
    );
    // Nothing was deleted in HA: the backup a successful cycle would have removed is still there
    // (the failed backup itself left nothing).
    let ids: Vec<String> = s
        .sim
        .backups()
        .iter()
        .filter_map(|b| b["backup_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, vec![kept]);
    assert!(!audit_kinds(s.dir.path()).iter().any(|k| k == "ha.deleted"));
}

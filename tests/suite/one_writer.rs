//! One writer per store, private files, and audit recoveries that stay visible — as a user meets them:
//! `hapull` processes against the simulated Home Assistant and a real sshd.
//!
//! - two `hapull once` started together: one commits, the other is refused (exit 75) naming the holder;
//!   with `--wait` the second waits and commits too; beside a daemon, `once` is refused with a hint;
//! - under `umask 022` every file hapull writes is 0600 and every folder it creates 0700;
//! - the audit log's last record cut off between two runs: `audit verify` names the lost record and
//!   fails until `audit ack` records that a person looked at it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::KillOnDrop;
use crate::support::config;
use crate::support::sshd::Sshd;
use hapull::store::Store;
use hapull::store::lock::StoreLock;
use hapull_sim::{Sim, SimOptions};

struct Setup {
    _sshd: Sshd,
    sim: Sim,
    dir: tempfile::TempDir,
    _ha_dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// Everything hapull writes lives under `data/`, which does not exist before it runs.
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn store_dir(&self) -> PathBuf {
        self.data().join("archives")
    }

    fn audit_path(&self) -> PathBuf {
        self.data().join("audit").join("audit.jsonl")
    }
}

/// `payload_bytes` with `bandwidth_limit` makes a pull last long enough for a second process to meet
/// the first one's lock, whichever starts first.
async fn setup(payload_bytes: u64, ssh_extra: &str) -> Setup {
    let sshd = Sshd::start();
    let ha_dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(ha_dir.path());
    opts.payload_bytes = payload_bytes;
    let sim = Sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sim-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("hapull.toml");
    let body = format!(
        r#"{base}

[store]
dir = "data/archives"

[audit]
path = "data/audit/audit.jsonl"

[schedule]
cron = "0 3 * * *"
state_file = "data/state/state.json"
"#,
        base = config::sim_and_sshd(&sim.url(), &sshd, ha_dir.path(), ssh_extra),
    );
    std::fs::write(&config, body).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    Setup {
        _sshd: sshd,
        sim,
        dir,
        _ha_dir: ha_dir,
        config,
    }
}

/// `hapull -c <config> <args>` run through `sh` with `umask 022`, the common default outside systemd.
fn hapull(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(config)
        .args(args);
    c
}

fn spawn(config: &Path, args: &[&str]) -> Child {
    hapull(config, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn wait_until(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn store_verifies(s: &Setup) -> usize {
    let out = hapull(&s.config, &["verify", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let archives = Store::open_read_only(s.store_dir())
        .unwrap()
        .list()
        .unwrap();
    archives.len()
}

fn audit_verify(s: &Setup) -> Output {
    hapull(&s.config, &["audit", "verify"]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_once_together_one_commits_the_other_is_refused_naming_it() {
    // 6 MiB at 2 MiB/s: the first process holds the store for seconds, the second starts within
    // milliseconds.
    let s = setup(6 << 20, "bandwidth_limit = \"2MiB\"").await;
    let a = spawn(&s.config, &["once"]);
    let b = spawn(&s.config, &["once"]);
    let (a_pid, b_pid) = (a.id(), b.id());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (winner, loser, winner_pid) = match (a.status.code(), b.status.code()) {
        (Some(0), Some(75)) => (&a, &b, a_pid),
        (Some(75), Some(0)) => (&b, &a, b_pid),
        _ => panic!(
            "expected one exit 0 and one exit 75\nfirst:\n{}\nsecond:\n{}",
            text(&a),
            text(&b)
        ),
    };
    assert!(
        String::from_utf8_lossy(&winner.stdout).contains("committed"),
        "{}",
        text(winner)
    );
    let refusal = String::from_utf8_lossy(&loser.stderr);
    assert!(
        refusal.contains(&format!("`hapull once` (pid {winner_pid}, since ")),
        "the refusal names the holder:\n{refusal}"
    );
    assert!(refusal.contains("--wait"), "{refusal}");
    // The refused process did nothing: one backup made in HA, one archive, an intact chain.
    assert_eq!(s.sim.backups().len(), 1);
    assert_eq!(store_verifies(&s), 1);
    let verify = audit_verify(&s);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let log = std::fs::read_to_string(s.audit_path()).unwrap();
    assert_eq!(
        log.matches("\"kind\":\"cycle.started\"").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_the_second_once_waits_and_commits_too() {
    let s = setup(4 << 20, "bandwidth_limit = \"2MiB\"").await;
    let a = spawn(&s.config, &["once"]);
    let store = s.store_dir();
    // The second starts only once the first holds the lock, so it must wait.
    let held = wait_until(Duration::from_secs(30), || {
        StoreLock::holder(&store).ok().flatten().is_some()
    })
    .await;
    assert!(held, "the first `hapull once` never took the store lock");
    let b = spawn(&s.config, &["--wait", "once"]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b));
    assert!(
        String::from_utf8_lossy(&b.stderr).contains("waiting for it to finish"),
        "{}",
        text(&b)
    );
    assert_eq!(store_verifies(&s), 2);
    let verify = audit_verify(&s);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_and_prune_beside_a_running_daemon_are_refused_with_a_hint() {
    let s = setup(0, "").await;
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("[store]\n", "[store]\nkeep_last = 1\n");
    std::fs::write(&s.config, cfg).unwrap();
    let mut daemon = KillOnDrop(
        hapull(&s.config, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = s.store_dir();
    let held = wait_until(Duration::from_secs(30), || {
        StoreLock::holder(&store)
            .ok()
            .flatten()
            .is_some_and(|h| h.command == "run")
    })
    .await;
    assert!(held, "the daemon never took the store lock");
    for args in [&["once"][..], &["prune"][..], &["--wait", "once"][..]] {
        let out = hapull(&s.config, args).output().unwrap();
        assert_eq!(out.status.code(), Some(75), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("`hapull run` (pid {}", daemon.id())) && err.contains("daemon"),
            "{args:?}: {err}"
        );
        assert!(err.contains("Stop it first"), "{args:?}: {err}");
    }
    // Reading stays possible beside the daemon.
    let list = hapull(&s.config, &["list"]).output().unwrap();
    assert!(list.status.success(), "{}", text(&list));
    assert!(
        s.sim.backups().is_empty(),
        "nothing was made by the refused commands"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) {
    dirs.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            walk(&p, files, dirs);
        } else {
            files.push(p);
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_umask_022_everything_written_is_0600_in_0700_folders() {
    let s = setup(0, "").await;
    let out = hapull(&s.config, &["once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The daemon writes the state file at start; stop it once it has.
    let mut daemon = KillOnDrop(
        hapull(&s.config, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let state = s.data().join("state/state.json");
    // `hapull once` above wrote the file already; the daemon's own write records its start.
    let written = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("started_at"))
    })
    .await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert!(written, "the daemon never wrote its state file");

    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(&s.data(), &mut files, &mut dirs);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(s.data()).unwrap().display().to_string())
        .collect();
    // What the user expects to find: archive, manifest, sums, ledger, lock, audit log and seal, state.
    for wanted in [
        "archives/SHA256SUMS",
        "archives/.hapull-made.json",
        "archives/.hapull.lock",
        "archives/.hapull.claim",
        "audit/audit.jsonl",
        "audit/audit.jsonl.seal",
        "state/state.json",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing in {names:?}"
        );
    }
    assert!(names.iter().any(|n| n.ends_with(".tar")), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.ends_with(".json") && n.contains("/20")),
        "{names:?}"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{} is {:o}", f.display(), mode(f));
    }
    for d in &dirs {
        assert_eq!(mode(d), 0o700, "{} is {:o}", d.display(), mode(d));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_record_cut_between_runs_is_named_until_acknowledged() {
    let s = setup(0, "").await;
    let first = hapull(&s.config, &["once"]).output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));

    // Cut the last record off the log, as a truncation (or someone hiding it) would.
    let log = std::fs::read(s.audit_path()).unwrap();
    let body = &log[..log.len() - 1];
    let cut_at = body.iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let last: serde_json::Value = serde_json::from_slice(&log[cut_at..log.len() - 1]).unwrap();
    let lost_seq = last["seq"].as_u64().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.audit_path())
        .unwrap()
        .set_len(cut_at as u64)
        .unwrap();

    let second = hapull(&s.config, &["once"]).output().unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));

    let verify = audit_verify(&s);
    let report = text(&verify);
    assert_eq!(verify.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!(
            "record seq {lost_seq} was lost from the end at byte offset {cut_at}"
        )),
        "{report}"
    );
    assert!(
        report.contains("NOT acknowledged") && report.contains("hapull audit ack"),
        "{report}"
    );

    // The lost seq is not reused: the recovery record takes the next one.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(s.audit_path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recovered = records
        .iter()
        .find(|r| r["kind"] == "audit.recovered")
        .expect("a recovery record");
    assert_eq!(recovered["seq"].as_u64(), Some(lost_seq + 1), "{recovered}");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["seq"].as_u64() == Some(lost_seq))
            .count(),
        0
    );

    let ack = hapull(
        &s.config,
        &["audit", "ack", "--note", "log cut by the test"],
    )
    .output()
    .unwrap();
    assert_eq!(ack.status.code(), Some(0), "{}", text(&ack));
    let verify = audit_verify(&s);
    let report = text(&verify);
    assert_eq!(verify.status.code(), Some(0), "{report}");
    // Still visible, now as acknowledged.
    assert!(
        report.contains(&format!("record seq {lost_seq} was lost")),
        "{report}"
    );
    assert!(report.contains("acknowledged at seq"), "{report}");
    let log = std::fs::read_to_string(s.audit_path()).unwrap();
    let ack_rec: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(ack_rec["kind"], "audit.acknowledged");
    assert_eq!(ack_rec["data"]["note"], "log cut by the test");
    // A second ack has nothing to do and writes nothing.
    let again = hapull(&s.config, &["audit", "ack"]).output().unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to acknowledge"));
    assert_eq!(std::fs::read_to_string(s.audit_path()).unwrap(), log);
}

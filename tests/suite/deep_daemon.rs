//! `[store] deep_verify` in `hapull run`, as a process against the simulated Home Assistant (its
//! archives carrying a real SQLite recorder database) and a real sshd: off by default; on, the
//! committed archive is unpacked and checked after the cycle, and the verdict is in the audit log,
//! the state file, `/metrics`, `/healthz` and `hapull health`; a damaged database fails the check,
//! is announced, and deletes nothing anywhere; an interval counts from the state file across
//! restarts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::config;
use crate::support::sshd::Sshd;
use hapull::store::Store;
use hapull_sim::{Sim, SimOptions};

struct Rig {
    _sshd: Sshd,
    sim: Sim,
    dir: tempfile::TempDir,
    _ha_dir: tempfile::TempDir,
    config: PathBuf,
    status_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon config with one cycle at start (the cron never fires during a test) and `store_extra`
/// in `[store]`; the sim's archives hold `database`.
async fn rig(store_extra: &str, database: Vec<u8>) -> Rig {
    let sshd = Sshd::start();
    let ha_dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(ha_dir.path());
    opts.database = Some(Arc::new(database));
    let sim = Sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "sim-token\n").unwrap();
    let config = dir.path().join("hapull.toml");
    let status_port = free_port();
    let body = format!(
        r#"{base}
[store]
dir = "archives"
{store_extra}

[audit]
path = "audit.jsonl"

[schedule]
cron = "0 0 1 1 *"
run_on_start = true
state_file = "state.json"

[status]
listen = "127.0.0.1:{status_port}"
"#,
        base = config::sim_and_sshd(&sim.url(), &sshd, ha_dir.path(), ""),
    );
    std::fs::write(&config, body).unwrap();
    Rig {
        _sshd: sshd,
        sim,
        dir,
        _ha_dir: ha_dir,
        config,
        status_port,
    }
}

/// A sound recorder database, and one with a page overwritten.
fn databases() -> (Vec<u8>, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let good = crate::deep_verify::database(tmp.path());
    let mut bad = good.clone();
    crate::deep_verify::corrupt(&mut bad);
    (good, bad)
}

impl Rig {
    fn hapull(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hapull"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn spawn_run(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_hapull"))
            .arg("-c")
            .arg(&self.config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap())
            .spawn()
            .unwrap()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("run.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    fn kinds(&self) -> Vec<String> {
        self.records()
            .iter()
            .filter_map(|v| v["kind"].as_str().map(str::to_string))
            .collect()
    }

    fn record(&self, kind: &str) -> Option<Value> {
        self.records().into_iter().find(|r| r["kind"] == kind)
    }

    /// Waits (polling the audit log the daemon writes) until a record of `kind` is there.
    async fn wait_for(&self, kind: &str, child: &mut Child) -> Value {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(r) = self.record(kind) {
                return r;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "hapull run exited early ({status}); log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        panic!(
            "no {kind} record; records: {:?}\nlog:\n{}",
            self.kinds(),
            self.log_text()
        );
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.status_port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let code = body
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, body)
    }

    /// The value of a metric line starting with `name` (labels included) in `/metrics`.
    fn metric(&self, name: &str) -> f64 {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }

    fn stop(&self, mut child: Child) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert_eq!(s.code(), Some(0), "log:\n{}", self.log_text());
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("hapull run did not stop; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn store(&self) -> Store {
        Store::open_read_only(self.dir.path().join("archives")).unwrap()
    }

    /// No unpacked copy is left in the store.
    fn assert_no_scratch(&self) {
        let left: Vec<String> = std::fs::read_dir(self.dir.path().join("archives"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".hapull-deep-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.path().join("state.json")).unwrap())
            .unwrap()
    }
}

/// A webhook receiver: the body of the first POST it gets, answered 200.
fn webhook_receiver() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as many body bytes as Content-Length says.
            let body = loop {
                let Ok(n) = stream.read(&mut buf) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body.to_string());
                    }
                }
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Some(body) = body {
                let _ = tx.send(body);
            }
        }
    });
    (port, rx)
}

/// The check named `name` in a deep record's `data.checks`.
fn check<'a>(record: &'a Value, name: &str) -> &'a Value {
    record["data"]["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {record}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_no_deep_verification_runs() {
    let (good, _) = databases();
    let r = rig("", good).await;
    let mut child = r.spawn_run();
    r.wait_for("cycle.finished", &mut child).await;
    // The success is announced before a deep verification would start; stopping waits for the
    // cycle's job to end, so a deep verification that ran would be in the log by then.
    let start = Instant::now();
    while !r
        .sim
        .fired_events()
        .iter()
        .any(|e| e["event_type"] == "hapull_backup_pulled")
    {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        r.metric("hapull_deep_verify_total{outcome=\"passed\"}"),
        0.0
    );
    r.stop(child);
    let kinds = r.kinds();
    assert!(
        !kinds.iter().any(|k| k.starts_with("archive.deep_")),
        "{kinds:?}"
    );
    assert_eq!(
        r.record("service.started").unwrap()["data"]["deep_verify"],
        "off"
    );
    assert!(r.state().get("last_deep_verify").is_none(), "{}", r.state());
    r.assert_no_scratch();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cycle_deep_verifies_the_committed_archive_and_reports_it() {
    let (good, _) = databases();
    let r = rig("deep_verify = \"every_cycle\"", good).await;
    let mut child = r.spawn_run();
    let rec = r.wait_for("archive.deep_verified", &mut child).await;
    let committed = r.record("archive.committed").unwrap();
    assert_eq!(rec["data"]["backup_id"], committed["data"]["backup_id"]);
    assert_eq!(rec["data"]["path"], committed["data"]["path"]);
    for name in ["archive", "unpack", "database", "storage"] {
        assert_eq!(check(&rec, name)["result"], "passed", "{rec}");
    }
    let db = check(&rec, "database")["detail"].as_str().unwrap();
    assert!(
        db.contains("home-assistant_v2.db") && db.contains("PRAGMA integrity_check ok"),
        "{db}"
    );
    let storage = check(&rec, "storage")["detail"].as_str().unwrap();
    assert!(
        storage.contains("1 homeassistant/data/.storage files parsed"),
        "{storage}"
    );
    // After the cycle's own record: the check never holds up the commit or the clean-up.
    let kinds = r.kinds();
    let finished = kinds.iter().position(|k| k == "cycle.finished").unwrap();
    let deep = kinds
        .iter()
        .position(|k| k == "archive.deep_verified")
        .unwrap();
    assert!(finished < deep, "{kinds:?}");

    assert_eq!(
        r.metric("hapull_deep_verify_total{outcome=\"passed\"}"),
        1.0
    );
    assert_eq!(r.metric("hapull_deep_verify_last_failed"), 0.0);
    assert!(r.metric("hapull_deep_verify_last_success_timestamp_seconds") > 1.7e9);
    let (code, body) = r.get("/healthz");
    assert_eq!(code, 200, "{body}");
    let health = r.hapull(&["health"]);
    assert!(health.status.success(), "{health:?}");
    let state = r.state();
    assert_eq!(state["last_deep_verify_passed"], true, "{state}");
    assert_eq!(state["last_deep_verify"], state["last_deep_verify_success"]);
    r.stop(child);
    r.assert_no_scratch();
    // `hapull check` says what the daemon will do, and what it cannot without a password.
    let check = r.hapull(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("deep_verify"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("warn") && line.contains("\"every_cycle\"") && line.contains("password_file"),
        "{text}"
    );
    let verify = r.hapull(&["audit", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_fails_the_check_makes_health_bad_and_deletes_nothing() {
    let (_, bad) = databases();
    let r = rig("deep_verify = \"7d\"\nkeep_last = 1", bad).await;
    let (hook_port, hook) = webhook_receiver();
    let mut cfg = std::fs::read_to_string(&r.config).unwrap();
    cfg.push_str(&format!(
        "\n[notify]\nwebhook_failure = \"http://127.0.0.1:{hook_port}/fail\"\n"
    ));
    std::fs::write(&r.config, cfg).unwrap();
    let mut child = r.spawn_run();
    let rec = r.wait_for("archive.deep_verify_failed", &mut child).await;
    let id = rec["data"]["backup_id"].as_str().unwrap().to_string();
    assert_eq!(check(&rec, "archive")["result"], "passed", "{rec}");
    let db = check(&rec, "database");
    assert_eq!(db["result"], "failed", "{rec}");
    assert!(
        db["detail"]
            .as_str()
            .unwrap()
            .contains("homeassistant/data/home-assistant_v2.db"),
        "{rec}"
    );
    assert_eq!(check(&rec, "storage")["result"], "passed", "{rec}");

    // Health is bad, by the endpoint and by `hapull health`, naming the deep verification.
    let (code, body) = r.get("/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("deep verification"), "{body}");
    let health = r.hapull(&["health"]);
    assert_eq!(health.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("deep verification"),
        "{health:?}"
    );
    assert_eq!(r.metric("hapull_deep_verify_last_failed"), 1.0);
    assert_eq!(
        r.metric("hapull_deep_verify_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        r.metric("hapull_deep_verify_last_success_timestamp_seconds"),
        0.0
    );
    // Home Assistant heard about it.
    let start = Instant::now();
    while !r
        .sim
        .notifications()
        .iter()
        .any(|n| n.to_string().contains("would not restore"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            r.sim.notifications()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        r.sim
            .fired_events()
            .iter()
            .any(|e| e["event_type"] == "hapull_deep_verify_failed"
                && e["data"]["backup_id"] == id.as_str()),
        "{:?}",
        r.sim.fired_events()
    );
    // And the failure webhook, with the problem but no secret.
    let body: Value =
        serde_json::from_str(&hook.recv_timeout(Duration::from_secs(30)).unwrap()).unwrap();
    assert_eq!(body["event"], "deep_verify_failed", "{body}");
    assert_eq!(body["backup_id"], id.as_str(), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("database: homeassistant/data/home-assistant_v2.db"),
        "{body}"
    );
    r.stop(child);

    // Nothing was deleted: the archive is in the store, whole, and Home Assistant keeps its copy.
    let store = r.store();
    let archive = store.find(&id).unwrap().expect("the archive is kept");
    assert!(store.verify(&archive).unwrap().is_ok());
    assert!(
        r.sim
            .backups()
            .iter()
            .any(|b| b["backup_id"] == id.as_str())
    );
    let kinds = r.kinds();
    assert!(
        !kinds
            .iter()
            .any(|k| k == "ha.deleted" || k == "store.pruned"),
        "{kinds:?}"
    );
    r.assert_no_scratch();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_counts_from_the_state_file_across_restarts() {
    let (good, _) = databases();
    let r = rig("deep_verify = \"7d\"", good).await;
    let mut child = r.spawn_run();
    r.wait_for("archive.deep_verified", &mut child).await;
    r.stop(child);

    // A restart commits another archive; the last verdict is minutes old, so no check is due.
    let mut child = r.spawn_run();
    let start = Instant::now();
    while r.kinds().iter().filter(|k| *k == "cycle.finished").count() < 2 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("hapull run exited ({status}); log:\n{}", r.log_text());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            r.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted daemon reports the verdict it read from the state file.
    assert!(r.metric("hapull_deep_verify_last_success_timestamp_seconds") > 1.7e9);
    r.stop(child);
    let kinds = r.kinds();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.starts_with("archive.deep_"))
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(r.store().list().unwrap().len(), 2);
}

#[test]
fn a_bad_setting_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t\n").unwrap();
    let config = dir.path().join("hapull.toml");
    std::fs::write(
        &config,
        "[home_assistant]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"token\"\n\n[store]\ndir = \"a\"\ndeep_verify = \"weekly\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&config)
        .arg("health")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 7: [store] deep_verify: \"weekly\" is not a choice")
            && err.contains("\"every_cycle\""),
        "{err}"
    );
    assert!(Path::new(&config).exists());
}

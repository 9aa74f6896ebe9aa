//! hapull's commands as a user runs them: the real binary, a real OpenSSH sshd serving the simulated
//! Home Assistant's backups folder, the real store. Retention inside a cycle and `hapull prune`,
//! `prune_foreign`, the catch-up of an earlier failed cycle's backup, service mode refusing to
//! delete, host key pinning with `hapull trust-host`, `hapull events`, `hapull list --remote`, SIGINT
//! and the second-signal cut, webhooks from a real cycle, a protected backup, and the read-only
//! `internal-sftp -R` account the README prescribes.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::config;
use crate::support::hook::Hook;
use crate::support::sshd::Sshd;
use hapull::ha::{Client, ClientOptions, Endpoint, GenerateRequest};
use hapull::secret::Secret;
use hapull::store::Store;
use hapull_sim::{Sim, SimOptions, SimVersion};
use serde_json::{Value, json};

struct Rig {
    sshd: Sshd,
    sim: Sim,
    dir: tempfile::TempDir,
    _ha_dir: tempfile::TempDir,
    config: PathBuf,
}

impl Rig {
    async fn start(payload_bytes: u64) -> Rig {
        Rig::start_with(Sshd::start(), payload_bytes).await
    }

    async fn start_with(sshd: Sshd, payload_bytes: u64) -> Rig {
        Rig::start_as(sshd, payload_bytes, SimVersion::Current).await
    }

    async fn start_as(sshd: Sshd, payload_bytes: u64, version: SimVersion) -> Rig {
        let ha_dir = tempfile::tempdir().unwrap();
        let mut opts = SimOptions::new(ha_dir.path());
        opts.payload_bytes = payload_bytes;
        opts.version = version;
        let sim = Sim::start(opts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "sim-token\n").unwrap();
        let config = dir.path().join("hapull.toml");
        let rig = Rig {
            sshd,
            sim,
            dir,
            _ha_dir: ha_dir,
            config,
        };
        rig.configure("", "", "");
        rig
    }

    fn known_hosts_line(&self) -> String {
        format!(
            "known_hosts = \"{}\"",
            self.sshd.write_known_hosts(self.sshd.port).display()
        )
    }

    /// Writes the config: `ssh_extra` goes into [ssh], `backup` and `rest` are whole sections.
    fn configure(&self, ssh_extra: &str, backup: &str, rest: &str) {
        self.configure_keys(&self.known_hosts_line(), ssh_extra, backup, rest)
    }

    fn configure_keys(&self, host_keys: &str, ssh_extra: &str, backup: &str, rest: &str) {
        let body = format!(
            "{ha}{ssh}\n\
             [backup]\n{backup}\n\n[store]\ndir = \"archives\"\n{store}\n\n[audit]\npath = \"audit.jsonl\"\n\n\
             [schedule]\ncron = \"0 0 1 1 *\"\nrun_on_start = true\nstate_file = \"state.json\"\n\n{rest}\n",
            ha = config::home_assistant(&self.sim.url()),
            ssh = config::ssh(&self.sshd, self.sim.backup_dir(), host_keys, ssh_extra),
            store = "",
        );
        std::fs::write(&self.config, body).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hapull"));
        c.arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    fn hapull(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn store(&self) -> Store {
        // Read-only: it observes what the hapull processes wrote, and repairs nothing behind them.
        Store::open_read_only(self.dir.path().join("archives")).unwrap()
    }

    /// Backup ids in the store whose archive re-hashes to its manifest.
    fn verified(&self) -> Vec<String> {
        let store = self.store();
        let mut ids: Vec<String> = store
            .list()
            .unwrap()
            .iter()
            .filter(|a| store.verify(a).unwrap().is_ok())
            .map(|a| a.manifest.backup_id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn ha_ids(&self) -> Vec<String> {
        self.sim
            .backups()
            .iter()
            .filter_map(|b| b["backup_id"].as_str().map(str::to_string))
            .collect()
    }

    fn audit(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == kind)
            .collect()
    }

    /// A backup made in Home Assistant by someone else (not hapull), waited for until it is listed.
    async fn made_by_hand(&self, name: &str) -> String {
        self.made_by_hand_with(name, None).await
    }

    /// A backup made in Home Assistant by someone else, protected with `password` when given.
    async fn made_by_hand_with(&self, name: &str, password: Option<&str>) -> String {
        let mut o = ClientOptions::new(
            Endpoint::parse(&self.sim.url()).unwrap(),
            Secret::new("sim-token"),
            None,
        )
        .unwrap();
        o.request_timeout = Duration::from_secs(10);
        let c = Client::connect(o).await.unwrap();
        let id = c
            .backup_generate(&GenerateRequest {
                agent_ids: vec!["backup.local".into()],
                name: Some(name.into()),
                password: password.map(Secret::new),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            until(|| self.ha_ids().contains(&id)).await,
            "the hand-made backup never completed"
        );
        id
    }

    fn spawn(&self, args: &[&str], log: &str) -> (Child, PathBuf) {
        let path = self.dir.path().join(log);
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&path).unwrap())
            .spawn()
            .unwrap();
        (child, path)
    }

    fn partial_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.path().join("archives/.incoming"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().to_string_lossy().ends_with(".partial"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Polls a condition every 50 ms; false only after a minute (a guard against a hang).
async fn until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..1200 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

async fn exit_code(child: &mut Child) -> Option<i32> {
    let mut status = None;
    let ended = until(|| {
        status = child.try_wait().unwrap();
        status.is_some()
    })
    .await;
    if !ended {
        let _ = child.kill();
        panic!("hapull did not exit");
    }
    status.unwrap().code()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_runs_inside_a_cycle_and_hapull_prune_applies_new_rules() {
    let rig = Rig::start(0).await;
    let keep = |n: u32| {
        rig.configure("", "", "");
        let text = std::fs::read_to_string(&rig.config).unwrap().replace(
            "dir = \"archives\"\n",
            &format!("dir = \"archives\"\nkeep_last = {n}\n"),
        );
        std::fs::write(&rig.config, text).unwrap();
    };
    keep(2);
    let mut made = Vec::new();
    for _ in 0..3 {
        ok(&rig.hapull(&["once"]));
        let finished = rig.audit("cycle.finished");
        made.push(
            finished.last().unwrap()["data"]["backup_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The third cycle pruned the first archive: keep_last = 2 keeps the two newest.
    let finished = rig.audit("cycle.finished");
    assert_eq!(finished[0]["data"]["pruned"], json!([]));
    assert_eq!(finished[1]["data"]["pruned"], json!([]));
    assert_eq!(finished[2]["data"]["pruned"], json!([made[0]]));
    let pruned = rig.audit("store.pruned");
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0]["data"]["backup_id"], made[0].as_str());
    let mut newest = vec![made[1].clone(), made[2].clone()];
    newest.sort();
    assert_eq!(rig.verified(), newest);

    // Tighter rules, applied by `hapull prune`: the dry run deletes nothing, the real run the older.
    keep(1);
    let dry = ok(&rig.hapull(&["prune", "--dry-run"]));
    assert_eq!(dry.matches("would delete").count(), 1, "{dry}");
    assert!(dry.contains(&made[1]), "{dry}");
    assert_eq!(rig.verified(), newest);
    let real = ok(&rig.hapull(&["prune"]));
    assert_eq!(
        real.lines().filter(|l| l.starts_with("delete")).count(),
        1,
        "{real}"
    );
    assert_eq!(rig.verified(), vec![made[2].clone()]);
    assert_eq!(rig.audit("store.pruned").len(), 2);
    let sums = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(rig.dir.path().join("archives"))
        .output()
        .unwrap();
    assert!(sums.status.success());
    assert_eq!(
        String::from_utf8_lossy(&sums.stdout)
            .matches(": OK")
            .count(),
        1
    );
    ok(&rig.hapull(&["audit", "verify"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_foreign_deletes_other_backups_only_once_they_have_a_verified_copy() {
    let rig = Rig::start(0).await;
    let copied = rig.made_by_hand("by hand, pulled").await;
    let uncopied = rig.made_by_hand("by hand, never pulled").await;
    // A local copy of the first one, taken with prune_foreign = false: HA keeps both.
    ok(&rig.hapull(&["pull", &copied]));
    assert_eq!(rig.verified(), vec![copied.clone()]);
    assert!(rig.ha_ids().contains(&copied) && rig.ha_ids().contains(&uncopied));

    rig.configure("", "keep_on_ha = 1\nprune_foreign = true", "");
    ok(&rig.hapull(&["once"]));
    let new = rig.audit("cycle.finished")[0]["data"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let in_ha = rig.ha_ids();
    // hapull's newest is kept (keep_on_ha = 1 now counts every backup), the foreign one with a
    // verified copy is deleted, the one without a copy stays.
    assert!(in_ha.contains(&new), "{in_ha:?}");
    assert!(!in_ha.contains(&copied), "{in_ha:?}");
    assert!(in_ha.contains(&uncopied), "{in_ha:?}");
    let deleted: Vec<Value> = rig
        .audit("ha.deleted")
        .iter()
        .map(|r| r["data"]["backup_id"].clone())
        .collect();
    assert_eq!(deleted, vec![json!(copied)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_proven_only_at_structure_level_does_not_let_home_assistant_delete_its_own() {
    let rig = Rig::start(0).await;
    // Protected by someone in HA; hapull has no password_file, so it cannot read the inner archives.
    let protected = rig
        .made_by_hand_with(
            "protected, by hand",
            Some("a password hapull does not have"),
        )
        .await;
    ok(&rig.hapull(&["pull", &protected]));
    let stored = rig.store().find(&protected).unwrap().unwrap();
    assert_eq!(stored.manifest.verified_str(), "structure");

    rig.configure("", "keep_on_ha = 1\nprune_foreign = true", "");
    let out = rig.hapull(&["once"]);
    ok(&out);
    let in_ha = rig.ha_ids();
    assert!(
        in_ha.contains(&protected),
        "deleted on a structure-level copy: {in_ha:?}"
    );
    assert!(rig.audit("ha.deleted").is_empty());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("structure level only") && log.contains("password_file"),
        "{log}"
    );

    // Where the user chose structure-level verification, that level is enough.
    rig.configure_keys(
        &rig.known_hosts_line(),
        "",
        "keep_on_ha = 1\nprune_foreign = true",
        "",
    );
    let config = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &rig.config,
        config.replace(
            "dir = \"archives\"\n",
            "dir = \"archives\"\nverify = \"structure\"\n",
        ),
    )
    .unwrap();
    ok(&rig.hapull(&["once"]));
    assert!(!rig.ha_ids().contains(&protected), "{:?}", rig.ha_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_cycle_pulls_an_earlier_failed_cycles_backup() {
    // 8 MiB at 1 MiB/s: the first run is killed in the middle of its pull.
    let rig = Rig::start(8 << 20).await;
    rig.configure("bandwidth_limit = \"1MiB\"", "", "");
    let (mut child, log) = rig.spawn(&["once"], "killed.log");
    assert!(
        until(|| rig.partial_bytes() > 1 << 20).await,
        "the pull never got under way: {}",
        log_of(&log)
    );
    child.kill().unwrap();
    let _ = child.wait();
    let first = rig.audit("backup.created")[0]["data"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rig.verified().is_empty());
    assert_eq!(rig.ha_ids(), vec![first.clone()]);

    rig.configure("", "", "");
    let out = rig.hapull(&["once"]);
    ok(&out);
    let second = rig.audit("backup.created")[1]["data"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Both are committed and verified: the new one, and the earlier one its failed cycle left.
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(rig.verified(), both);
    let pulled: Vec<String> = rig
        .audit("pull.finished")
        .iter()
        .filter_map(|r| r["data"]["backup_id"].as_str().map(str::to_string))
        .collect();
    assert!(pulled.contains(&first), "{pulled:?}");
    // With both copies safe, HA keeps hapull's newest only.
    assert_eq!(rig.ha_ids(), vec![second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_refuses_to_run_the_delete_command_when_an_archive_cannot_be_saved() {
    let rig = Rig::start(0).await;
    let by_hand = rig.made_by_hand("made by hand").await;
    // Something in the backups folder that is not a readable backup: it cannot be saved, so the
    // recipe's delete command (which removes every archive there) must not run.
    let junk = rig.sim.backup_dir().join("notes.tar");
    std::fs::write(&junk, b"this is not a tar archive at all, just text").unwrap();
    rig.configure("", "mode = \"service\"", "");
    let out = rig.hapull(&["once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing"), "{stderr}");
    assert!(stderr.contains("notes.tar"), "{stderr}");
    let calls: Vec<Value> = rig
        .sim
        .received()
        .iter()
        .map(|r| r.frame.clone())
        .filter(|f| f["type"] == "call_service")
        .collect();
    assert!(
        !calls.iter().any(|f| f["domain"] == "shell_command"),
        "the delete command ran: {calls:?}"
    );
    assert!(junk.exists());
    assert!(rig.ha_ids().contains(&by_hand));
    assert!(rig.sim.archive_path(&by_hand).unwrap().exists());

    // Without the junk the same cycle runs: the hand-made archive is saved before the delete.
    std::fs::remove_file(&junk).unwrap();
    ok(&rig.hapull(&["once"]));
    assert!(rig.verified().contains(&by_hand));
    assert!(
        rig.sim
            .received()
            .iter()
            .any(|r| r.frame["type"] == "call_service" && r.frame["domain"] == "shell_command")
    );
}

fn keygen_fingerprint(public_key_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_key_file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_host_shows_the_servers_key_and_a_pinned_key_is_enforced() {
    let rig = Rig::start(0).await;
    let real = keygen_fingerprint(&rig.sshd.dir.path().join("host_ed25519.pub"));
    let shown = ok(&rig.hapull(&["trust-host"]));
    assert!(shown.contains(&real), "{shown}");
    let pin_line = shown
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("host_key = "))
        .unwrap()
        .to_string();
    assert_eq!(pin_line, format!("host_key = \"{real}\""));
    // The last line: the known_hosts entry (the first names the server too).
    let kh_line = shown
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("[127.0.0.1]:"))
        .unwrap()
        .to_string();

    // The known_hosts line it prints is accepted as is.
    let kh = rig.dir.path().join("known_hosts_from_trust_host");
    std::fs::write(&kh, format!("{kh_line}\n")).unwrap();
    rig.configure_keys(&format!("known_hosts = \"{}\"", kh.display()), "", "", "");
    ok(&rig.hapull(&["once"]));

    // The pin it prints is accepted as is.
    rig.configure_keys(&pin_line, "", "", "");
    ok(&rig.hapull(&["once"]));
    assert_eq!(rig.verified().len(), 2);

    // A pin of another server's key: refused before Home Assistant makes a backup.
    let other = Sshd::start();
    let wrong = keygen_fingerprint(&other.dir.path().join("host_ed25519.pub"));
    let before = rig.sim.backups().len();
    rig.configure_keys(&format!("host_key = \"{wrong}\""), "", "", "");
    let out = rig.hapull(&["once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("host key"), "{stderr}");
    assert!(
        stderr.contains(&real) && stderr.contains("pinned"),
        "the error shows the key offered and the pin it missed: {stderr}"
    );
    assert_eq!(rig.sim.backups().len(), before, "no backup was made");
    assert_eq!(rig.verified().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_home_assistant_events_as_json_lines_until_interrupted() {
    let rig = Rig::start(0).await;
    let mut child = rig
        .command(&["events", "--type", "hapull_test_event", "--no-backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Fire only once hapull is subscribed (the simulator saw its subscription).
    assert!(
        until(|| rig
            .sim
            .received()
            .iter()
            .any(|r| r.frame["type"] == "subscribe_events"
                && r.frame["event_type"] == "hapull_test_event"))
        .await
    );
    let control = rig.sim.control();
    control.fire_event("some_other_event", json!({"n": 0}));
    control.fire_event("hapull_test_event", json!({"n": 1}));
    control.fire_event("hapull_test_event", json!({"n": 2}));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        got.push(v);
    }
    assert!(
        got.iter().all(|v| v["event_type"] == "hapull_test_event"),
        "{got:?}"
    );
    assert_eq!(got[0]["data"]["n"], 1);
    assert_eq!(got[1]["data"]["n"], 2);
    signal(&child, "INT");
    assert_eq!(exit_code(&mut child).await, Some(0));
    // Nothing else was printed (the other event type was not asked for).
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_remote_shows_home_assistants_backups() {
    let rig = Rig::start(0).await;
    let by_hand = rig.made_by_hand("a name with \"quotes\"").await;
    ok(&rig.hapull(&["once"]));
    let listed: Value =
        serde_json::from_str(&ok(&rig.hapull(&["list", "--remote", "--json"]))).unwrap();
    let mut ids: Vec<String> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut in_ha = rig.ha_ids();
    in_ha.sort();
    assert_eq!(ids, in_ha);
    assert_eq!(ids.len(), 2);
    let hand = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backup_id"] == by_hand.as_str())
        .unwrap();
    assert_eq!(hand["name"], "a name with \"quotes\"");
    assert!(hand["size"].as_u64().unwrap() > 0);
    assert_eq!(listed["state"], "idle");
    let text = ok(&rig.hapull(&["list", "--remote"]));
    assert!(text.starts_with("ID"), "{text}");
    for id in &in_ha {
        assert!(text.lines().any(|l| l.starts_with(id.as_str())), "{text}");
    }
    // The local listing is another thing: only what hapull committed.
    let local: Value = serde_json::from_str(&ok(&rig.hapull(&["list", "--json"]))).unwrap();
    assert_eq!(local["archives"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_the_pull_go_on_and_a_second_signal_cuts_it() {
    // 32 MiB at 1 MiB/s and an hour of grace: only the second signal can end this run early.
    let rig = Rig::start(32 << 20).await;
    rig.configure("bandwidth_limit = \"1MiB\"", "", "");
    let text = std::fs::read_to_string(&rig.config)
        .unwrap()
        .replace("state_file = ", "shutdown_grace = \"1h\"\nstate_file = ");
    std::fs::write(&rig.config, text).unwrap();
    let (mut child, log) = rig.spawn(&["run"], "run.log");
    assert!(
        until(|| rig.partial_bytes() > 1 << 20).await,
        "the pull never started: {}",
        log_of(&log)
    );
    signal(&child, "INT");
    assert!(
        until(|| log_of(&log).contains("send it again to stop at once")).await,
        "{}",
        log_of(&log)
    );
    // After the first signal the transfer carries on.
    let at_signal = rig.partial_bytes();
    assert!(
        until(|| rig.partial_bytes() > at_signal + (2 << 20)).await,
        "the pull stopped after the first signal: {}",
        log_of(&log)
    );
    assert!(child.try_wait().unwrap().is_none());
    signal(&child, "INT");
    assert_eq!(exit_code(&mut child).await, Some(0), "{}", log_of(&log));
    let text = log_of(&log);
    assert!(
        text.contains("second signal: cutting the running cycle now"),
        "{text}"
    );
    // Cut, not finished: nothing committed, the partial stays for the next pull, HA keeps the backup.
    assert!(rig.verified().is_empty());
    assert!(rig.partial_bytes() > at_signal);
    assert_eq!(rig.ha_ids().len(), 1);
    assert!(rig.audit("ha.deleted").is_empty());
    let kinds: Vec<String> = std::fs::read_to_string(rig.dir.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("service.stopped"));
    ok(&rig.hapull(&["audit", "verify"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_report_a_real_cycles_success_and_failure() {
    let rig = Rig::start(0).await;
    let hook = Hook::start();
    let notify = format!(
        "[notify]\nhome_assistant = false\nwebhook_success = \"{}\"\nwebhook_failure = \"{}\"\n",
        hook.url("/ping/ok"),
        hook.url("/ping/fail")
    );
    rig.configure("", "", &notify);
    let (mut child, log) = rig.spawn(&["run"], "run.log");
    assert!(
        until(|| !hook.requests().is_empty()).await,
        "{}",
        log_of(&log)
    );
    signal(&child, "TERM");
    assert_eq!(exit_code(&mut child).await, Some(0), "{}", log_of(&log));
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].0, "POST /ping/ok HTTP/1.1");
    let store = rig.store();
    let archives = store.list().unwrap();
    assert_eq!(archives.len(), 1);
    let body = &reqs[0].1;
    assert_eq!(body["backup_id"], archives[0].manifest.backup_id.as_str());
    assert_eq!(body["sha256"], archives[0].manifest.sha256.as_str());
    assert_eq!(body["archive"], archives[0].relative_path.as_str());

    // A failed cycle calls the failure hook, naming the reason.
    rig.sim.control().fail_next_backup("upload_failed");
    let (mut child, log) = rig.spawn(&["run"], "run2.log");
    assert!(
        until(|| hook.requests().len() == 2).await,
        "{}",
        log_of(&log)
    );
    signal(&child, "TERM");
    assert_eq!(exit_code(&mut child).await, Some(0), "{}", log_of(&log));
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].0, "POST /ping/fail HTTP/1.1");
    assert!(
        reqs[1].1["error"]
            .as_str()
            .unwrap()
            .contains("upload_failed"),
        "{reqs:?}"
    );
    // The URLs (often secrets) are not in the log whole.
    assert!(!log_of(&log).contains("/ping/"), "{}", log_of(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_backup_goes_through_a_cycle_without_the_password_showing() {
    let rig = Rig::start(0).await;
    let password = "correct horse battery staple";
    std::fs::write(
        rig.dir.path().join("backup_password"),
        format!("{password}\n"),
    )
    .unwrap();
    rig.configure("", "password_file = \"backup_password\"", "");
    // The simulator only masks a protected archive's inner bytes (it is not SecureTar), so here the
    // archive is checked to its structure; decrypting real SecureTar is proven against real Home
    // Assistant (tests/real/e2e, scenario 10) and the recorded archives.
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        "dir = \"archives\"\n",
        "dir = \"archives\"\nverify = \"structure\"\n",
    );
    std::fs::write(&rig.config, text).unwrap();
    let out = rig.hapull(&["once"]);
    ok(&out);
    // Home Assistant was asked for a protected backup, with the password, and made one.
    let generate = rig
        .sim
        .received()
        .into_iter()
        .map(|r| r.frame)
        .find(|f| f["type"] == "backup/generate")
        .unwrap();
    assert_eq!(generate["password"], password);
    let id = rig.ha_ids()[0].clone();
    let listed: Value =
        serde_json::from_str(&ok(&rig.hapull(&["list", "--remote", "--json"]))).unwrap();
    assert_eq!(listed["backups"][0]["backup_id"], id.as_str());
    assert_eq!(listed["backups"][0]["protected"], true, "{listed}");
    assert_eq!(rig.verified(), vec![id.clone()]);
    let store = rig.store();
    let a = store.find(&id).unwrap().unwrap();
    assert!(a.manifest.protected, "the manifest says it is protected");
    assert_eq!(
        std::fs::read(&a.path).unwrap(),
        std::fs::read(rig.sim.archive_path(&id).unwrap()).unwrap(),
        "the stored archive is the one HA made, byte for byte"
    );
    // (`hapull verify --all` decrypts with the password, which the simulator's masked archive does
    // not survive: see above.)
    // The password is nowhere hapull writes.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(password));
    for f in ["audit.jsonl", "state.json"] {
        let text = std::fs::read_to_string(rig.dir.path().join(f)).unwrap_or_default();
        assert!(!text.contains(password), "{f}");
    }
    let manifests = walk_text(&rig.dir.path().join("archives"));
    assert!(!manifests.contains(password));
}

fn walk_text(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out += &walk_text(&p);
        } else if !p.to_string_lossy().ends_with(".tar") {
            out += &String::from_utf8_lossy(&std::fs::read(&p).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_internal_sftp_account_is_enough() {
    // The account the README prescribes: `ForceCommand internal-sftp -R` (read-only), no shell.
    let rig = Rig::start_with(Sshd::start_read_only(), 0).await;
    ok(&rig.hapull(&["check"]));
    ok(&rig.hapull(&["once"]));
    ok(&rig.hapull(&["once"]));
    let ids = rig.audit("cycle.finished");
    assert_eq!(ids.len(), 2);
    assert_eq!(rig.verified().len(), 2);
    // The server really is read-only for this account: a write through it is refused.
    let probe = rig.sim.backup_dir().join("probe");
    let out = Command::new("sftp")
        .args([
            "-b",
            "-",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            rig.sshd.write_known_hosts(rig.sshd.port).display()
        ))
        .arg("-i")
        .arg(&rig.sshd.client_key)
        .arg("-P")
        .arg(rig.sshd.port.to_string())
        .arg(format!("{}@127.0.0.1", rig.sshd.user))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("mkdir {}\n", probe.display()).as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success(), "a write was allowed");
    assert!(!probe.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_with_a_legacy_home_assistant_is_refused_before_any_backup() {
    // The legacy backup API cannot encrypt: a configured password must not quietly give an
    // unencrypted backup.
    let rig = Rig::start_as(Sshd::start(), 0, SimVersion::Legacy).await;
    std::fs::write(rig.dir.path().join("backup_password"), "s3cret-pass\n").unwrap();
    rig.configure("", "password_file = \"backup_password\"", "");
    let out = rig.hapull(&["once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("password") && stderr.contains("legacy backup API"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pass"), "{stderr}");
    assert!(rig.sim.backups().is_empty(), "no backup was made");
    assert!(
        !rig.sim
            .received()
            .iter()
            .any(|r| r.frame["type"] == "backup/generate"),
        "nothing was asked of Home Assistant"
    );
    // Without the password the same Home Assistant works.
    rig.configure("", "", "");
    ok(&rig.hapull(&["once"]));
    assert_eq!(rig.verified().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_pending_requests_and_refuses_a_damaged_ledger() {
    let rig = Rig::start(0).await;
    let store = rig.dir.path().join("archives");
    hapull::store::Ledger::add_pending(
        &store,
        hapull::store::Pending {
            requested_at: "2026-12-01T17:40:00Z".into(),
            name: Some("hapull".into()),
            agent: Some("hassio.local".into()),
            job_id: None,
        },
    )
    .unwrap();
    let out = ok(&rig.hapull(&["check"]));
    assert!(
        out.contains("[warn] store ledger")
            && out.contains("1 backup request(s) of interrupted cycles not identified yet")
            && out.contains("2026-12-01T17:40:00Z"),
        "{out}"
    );

    std::fs::write(store.join(hapull::store::LEDGER_FILE), b"{\"ids\": [").unwrap();
    let out = rig.hapull(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[FAIL] store ledger") && stdout.contains("move it aside"),
        "{stdout}"
    );
    // And a cycle asks Home Assistant for nothing while it cannot record what it asks for.
    let once = rig.hapull(&["once"]);
    assert_eq!(once.status.code(), Some(1));
    assert!(rig.sim.backups().is_empty(), "no backup was made");
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(stderr.contains("no backup was asked for"), "{stderr}");
}

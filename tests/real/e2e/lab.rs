//! The lab the end-to-end scenarios run in: one real Home Assistant (from the variables
//! `shared/real-ha/up.sh` prints), the lab sshd (`scripts/lab-sshd`), and the real `hapull` binary
//! driven with a generated config in a temporary folder.
//!
//! Every scenario ends with the same check, the one rule hapull exists for: a backup Home Assistant
//! completed is either committed and verified in the store, or still present in Home Assistant. A
//! watcher thread looks at HA's backups folder all through the scenario, so a complete archive that
//! disappears (deleted by a clean-up or the delete command) is still known to the check.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use hapull::ha::{BackupApi, Client, ClientOptions, Endpoint};
use hapull::secret::Secret;
use hapull::store::Store;
use serde_json::{Value, json};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("set {name} (scripts/e2e-real sets every variable this suite reads)")
    })
}

/// True when the suite is asked to run (HAPULL_E2E=1); the tests are also `#[ignore]`d.
pub fn enabled() -> bool {
    std::env::var("HAPULL_E2E").as_deref() == Ok("1")
}

/// One real Home Assistant instance.
pub struct Ha {
    pub url: String,
    pub token_file: PathBuf,
    pub backup_dir: PathBuf,
    pub config_dir: PathBuf,
    pub version: String,
    pub legacy: bool,
    up_sh: PathBuf,
    pid_file: PathBuf,
}

/// The lab sshd in front of the backups folders.
pub struct Lab {
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl Ha {
    pub fn from_env() -> Ha {
        let legacy = std::env::var("HAPULL_E2E_HA_LEGACY").as_deref() == Ok("1");
        let real_ha = PathBuf::from(var("HAPULL_E2E_REAL_HA_DIR"));
        let lab_root =
            PathBuf::from(std::env::var("HA_LAB_ROOT").unwrap_or("/var/tmp/ha-lab".into()));
        Ha {
            url: var("HA_URL"),
            token_file: var("HA_TOKEN_FILE").into(),
            backup_dir: var("HA_BACKUP_DIR").into(),
            config_dir: var("HA_CONFIG_DIR").into(),
            version: var("HAPULL_E2E_HA_VERSION"),
            legacy,
            up_sh: real_ha.join("up.sh"),
            pid_file: lab_root.join(if legacy { "legacy-ha.pid" } else { "ha.pid" }),
        }
    }

    pub async fn client(&self) -> Result<Client, String> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| e.to_string())?;
        let mut opts = ClientOptions::new(
            Endpoint::parse(&self.url).map_err(|e| e.to_string())?,
            Secret::new(token.trim()),
            None,
        )
        .map_err(|e| e.to_string())?;
        opts.request_timeout = Duration::from_secs(120);
        Client::connect(opts).await.map_err(|e| e.to_string())
    }

    /// Backup ids and names Home Assistant lists now.
    pub fn backups(&self) -> BTreeMap<String, String> {
        block_on(async {
            let c = self.client().await.unwrap();
            c.backup_info()
                .await
                .unwrap()
                .backups
                .into_iter()
                .map(|b| (b.backup_id, b.name))
                .collect()
        })
    }

    pub fn delete(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        block_on(async {
            let c = self.client().await.unwrap();
            let api = c.detect_backup_api().await.unwrap();
            for id in ids {
                let r = match api {
                    BackupApi::Modern => c.backup_delete(id).await,
                    BackupApi::Legacy { .. } => c.legacy_backup_remove(id).await,
                };
                if let Err(e) = r {
                    eprintln!("lab: could not delete backup {id} from Home Assistant: {e}");
                }
            }
        })
    }

    /// Waits until the backup manager is idle (a scenario may leave one running).
    pub fn wait_idle(&self) {
        for _ in 0..600 {
            let state = block_on(async {
                let c = self.client().await.ok()?;
                c.backup_info().await.ok().map(|i| i.state)
            });
            if state.as_deref() == Some("idle") {
                return;
            }
            thread::sleep(Duration::from_millis(500));
        }
        panic!("Home Assistant's backup manager never became idle");
    }

    /// Stops this instance only (shared/real-ha/down.sh stops both).
    pub fn stop(&self) {
        self.stop_with("TERM")
    }

    /// Stops this instance with a signal: TERM (HA shuts down, finishing what it can) or KILL (a
    /// crash or power cut).
    pub fn stop_with(&self, signal: &str) {
        let pid = std::fs::read_to_string(&self.pid_file).unwrap();
        let pid = pid.trim();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pid}")])
            .status();
        for _ in 0..120 {
            let alive = Command::new("kill")
                .args(["-0", pid])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !alive {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// Starts it again with shared/real-ha/up.sh (reuses everything; waits until HA is up).
    pub fn start(&self) {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.up_sh);
        if self.legacy {
            cmd.arg("--legacy");
        }
        let out = cmd
            .env("HA_UMASK", "0027")
            .env_remove("HA_BULK_MB")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "up.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_idle();
    }

    /// A file of random data in the config folder, so backups are big and slow (like up.sh's
    /// HA_BULK_MB); removed when the value is dropped.
    pub fn bulk(&self, mib: usize) -> Bulk {
        let path = self.config_dir.join("bulk-e2e.bin");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for b in chunk.iter_mut() {
                *b = fastrand::u8(..);
            }
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        Bulk(path)
    }
}

pub struct Bulk(PathBuf);

impl Drop for Bulk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Lab {
    pub fn from_env() -> Lab {
        Lab {
            port: var("LAB_SSH_PORT").parse().unwrap(),
            user: var("LAB_SSH_USER"),
            key: var("LAB_KEY").into(),
            known_hosts: var("LAB_KNOWN_HOSTS").into(),
        }
    }
}

/// How a scenario's config differs from the plain one.
#[derive(Clone)]
pub struct Tweaks {
    pub mode: &'static str,
    pub ssh_port: Option<u16>,
    pub known_hosts: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub bandwidth_limit: Option<&'static str>,
    pub timeout: &'static str,
    /// More lines for the [backup] section.
    pub backup_extra: String,
    /// Appended at the end, inside [notify] until it opens a section of its own.
    pub tail: String,
}

impl Default for Tweaks {
    fn default() -> Self {
        Tweaks {
            mode: "api",
            ssh_port: None,
            known_hosts: None,
            token_file: None,
            bandwidth_limit: None,
            timeout: "10m",
            backup_extra: String::new(),
            tail: String::new(),
        }
    }
}

/// What a run of the binary left: exit code and both streams.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// hapull's one-line verdict: the `committed ...` line, or the `hapull: ...` error line.
    pub fn verdict(&self) -> String {
        let committed = self.stdout.lines().find_map(|l| {
            let rest = l.strip_prefix("committed ")?;
            let (path, size) = rest.split_once(" (")?;
            let file = path.rsplit('/').next()?;
            let bytes = size.split_whitespace().next()?;
            Some(format!("committed {file} ({bytes} bytes)"))
        });
        let line = committed.unwrap_or_else(|| {
            self.stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("hapull:"))
                .unwrap_or("(no verdict line)")
                .trim()
                .to_string()
        });
        match self.code {
            Some(c) => format!("exit {c}: {line}"),
            None => format!("killed by a signal: {line}"),
        }
    }
}

/// One scenario: a temporary folder with config, store and audit log, the watcher, the result.
pub struct Case {
    pub ha: Ha,
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub audit: PathBuf,
    pub config: PathBuf,
    scenario: &'static str,
    expected: &'static str,
    baseline: BTreeSet<String>,
    seen: Arc<Mutex<BTreeMap<String, String>>>,
    stop_watch: Arc<AtomicBool>,
    watcher: Option<thread::JoinHandle<()>>,
    failures: Vec<String>,
    observed: Vec<String>,
}

impl Case {
    pub fn new(scenario: &'static str, expected: &'static str) -> Case {
        let ha = Ha::from_env();
        let lab = Lab::from_env();
        ha.wait_idle();
        let dir = tempfile::Builder::new()
            .prefix("hapull-e2e-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let baseline = ha.backups().into_keys().collect();
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop_watch = Arc::new(AtomicBool::new(false));
        let watcher = watch(ha.backup_dir.clone(), seen.clone(), stop_watch.clone());
        let mut case = Case {
            audit: dir.path().join("audit.jsonl"),
            config: dir.path().join("hapull.toml"),
            ha,
            lab,
            dir,
            store,
            scenario,
            expected,
            baseline,
            seen,
            stop_watch,
            watcher: Some(watcher),
            failures: Vec::new(),
            observed: Vec::new(),
        };
        case.configure(&Tweaks::default());
        case
    }

    pub fn configure(&mut self, t: &Tweaks) {
        let q = |p: &Path| toml_str(&p.display().to_string());
        let mut text = format!(
            "[home_assistant]\nurl = {url}\ntoken_file = {token}\nrequest_timeout = \"2m\"\n\n\
             [ssh]\nhost = \"127.0.0.1\"\nport = {port}\nuser = {user}\nidentity_file = {key}\n\
             known_hosts = {kh}\nremote_dir = {rd}\nconnect_timeout = \"10s\"\n",
            url = toml_str(&self.ha.url),
            token = q(t.token_file.as_deref().unwrap_or(&self.ha.token_file)),
            port = t.ssh_port.unwrap_or(self.lab.port),
            user = toml_str(&self.lab.user),
            key = q(&self.lab.key),
            kh = q(t.known_hosts.as_deref().unwrap_or(&self.lab.known_hosts)),
            rd = q(&self.ha.backup_dir),
        );
        if let Some(bw) = t.bandwidth_limit {
            text += &format!("bandwidth_limit = {}\n", toml_str(bw));
        }
        text += &format!(
            "\n[backup]\nmode = {}\nname = \"hapull e2e {{date}}\"\nkeep_on_ha = 1\ntimeout = {}\n\
             blocked_timeout = \"3m\"\n{}\n\n[store]\ndir = {}\nverify = \"full\"\n\n[audit]\npath = {}\n\n\
             [notify]\nhome_assistant = false\n{}\n",
            toml_str(t.mode),
            toml_str(t.timeout),
            t.backup_extra,
            q(&self.store),
            q(&self.audit),
            t.tail,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hapull"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `hapull <args>` to the end.
    pub fn hapull(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    /// Starts `hapull <args>`; its output goes to files in the case folder.
    pub fn spawn(&self, args: &[&str], tag: &str) -> Child {
        let out = std::fs::File::create(self.dir.path().join(format!("{tag}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("{tag}.err"))).unwrap();
        self.command(args).stdout(out).stderr(err).spawn().unwrap()
    }

    /// Waits for a spawned run and reads what it printed.
    pub fn collect(&self, mut child: Child, tag: &str) -> Run {
        let status = child.wait().unwrap();
        let read = |ext| {
            std::fs::read_to_string(self.dir.path().join(format!("{tag}.{ext}")))
                .unwrap_or_default()
        };
        Run {
            code: status.code(),
            stdout: read("out"),
            stderr: read("err"),
        }
    }

    /// Polls `cond` every 100 ms for up to `limit` (a guard against a hang, not a measurement).
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let tries = limit.as_millis() / 100;
        for _ in 0..tries {
            if cond() {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("lab: gave up waiting for {what}");
        false
    }

    /// Bytes in the store's incoming folder (a pull in progress).
    pub fn incoming_bytes(&self) -> u64 {
        std::fs::read_dir(self.store.join(".incoming"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The archives in the store that look complete (have a final name), with the backup id of
    /// each and whether it re-hashes to its manifest.
    pub fn committed(&self) -> Vec<(String, bool)> {
        // Read-only: hapull may be committing right now, and a repairing open would race it.
        let Ok(store) = Store::open_read_only(&self.store) else {
            return Vec::new();
        };
        let Ok(listing) = store.scan() else {
            return Vec::new();
        };
        let mut out: Vec<(String, bool)> = listing
            .archives
            .iter()
            .map(|a| {
                let ok = store.verify(a).map(|r| r.is_ok()).unwrap_or(false);
                (a.manifest.backup_id.clone(), ok)
            })
            .collect();
        for p in listing.problems {
            out.push((format!("problem: {}", p.path.display()), false));
        }
        out
    }

    /// The audit records of one kind.
    pub fn audit_records(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("kind").and_then(Value::as_str) == Some(kind))
            .collect()
    }

    /// Notes something a user would see; shows up in the report's "observed" column.
    pub fn observe(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("observed: {what}");
        self.observed.push(what);
    }

    /// A check of the scenario's expectation; a failure fails the scenario.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            eprintln!("FAILED: {what}");
            self.failures.push(what);
        }
    }

    /// Checks the rule, writes the result line, tidies HA (the backups this case made), and fails
    /// the test if anything was wrong.
    pub fn finish(mut self) {
        self.stop_watch.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            // Its last scan is taken after this point: every archive the run left is seen.
            let _ = w.join();
        }
        self.ha.wait_idle();
        let in_ha = self.ha.backups();
        // Present in HA = its archive file is still there (complete or not: HA keeps what it has).
        let files = present_slugs(&self.ha.backup_dir);
        let committed = self.committed();
        let verified: BTreeSet<String> = committed
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(id, _)| id.clone())
            .collect();
        // Completed = a complete archive file seen during the case, or one this case's hapull was
        // told is complete. HA's own list is not used: it keeps entries whose files an earlier
        // delete command removed.
        let mut completed: BTreeSet<String> = self.seen.lock().unwrap().keys().cloned().collect();
        completed.extend(
            self.audit_records("backup.completed")
                .iter()
                .filter_map(|r| r["data"]["backup_id"].as_str().map(str::to_string)),
        );
        let lost: Vec<&String> = completed
            .iter()
            .filter(|id| {
                // HA's list can be stale after files were deleted behind its back: the file decides.
                !verified.contains(*id) && !files.contains(*id)
            })
            .collect();
        let bad: Vec<&String> = committed
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(id, _)| id)
            .collect();
        let rule_ok = lost.is_empty() && bad.is_empty();
        if !lost.is_empty() {
            self.failures.push(format!(
                "RULE BROKEN: completed backups neither committed nor in HA: {lost:?}"
            ));
        }
        if !bad.is_empty() {
            self.failures.push(format!(
                "RULE BROKEN: store has archives that look complete but do not verify: {bad:?}"
            ));
        }
        let new_in_store: Vec<_> = committed.iter().map(|(id, _)| id.as_str()).collect();
        self.observed.push(format!(
            "store: {} verified archive(s) {:?}; HA lists {} backup(s)",
            verified.len(),
            new_in_store,
            in_ha.len()
        ));
        let pass = self.failures.is_empty();
        let line = json!({
            "scenario": self.scenario,
            "ha_version": self.ha.version,
            "expected": self.expected,
            "observed": self.observed.join("; "),
            "rule": if rule_ok { "held" } else { "BROKEN" },
            "pass": pass,
            "failures": self.failures,
            "at": jiff::Timestamp::now().to_string(),
        });
        let results = std::env::var("HAPULL_E2E_RESULTS").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/e2e-results.jsonl").into()
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results)
            .unwrap();
        writeln!(f, "{line}").unwrap();
        // Keep HA tidy for the next scenario: remove what this case made.
        let made: Vec<String> = in_ha
            .keys()
            .filter(|id| !self.baseline.contains(*id))
            .cloned()
            .collect();
        self.ha.delete(&made);
        assert!(
            pass,
            "{}: {:?}\n(case folder kept: {})",
            self.scenario,
            self.failures,
            self.dir.keep().display()
        );
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// `backup.json` slugs of the complete archives in a folder, by slug -> file name.
pub fn archive_slugs(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".tar") {
            continue;
        }
        if let Some(slug) = complete_archive_slug(&e.path()) {
            out.insert(slug, name);
        }
    }
    out
}

/// `backup.json` slugs of every archive in a folder whose `backup.json` is readable.
fn present_slugs(dir: &Path) -> BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .filter_map(|e| archive_slug(&e.path(), false))
        .collect()
}

fn complete_archive_slug(path: &Path) -> Option<String> {
    archive_slug(path, true)
}

/// The slug of an archive whose tar structure reads to its end with a `backup.json` in it.
fn archive_slug(path: &Path, complete: bool) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut ar = tar::Archive::new(f);
    let mut slug = None;
    let mut end = 0u64;
    for entry in ar.entries_with_seek().ok()? {
        let mut entry = entry.ok()?;
        end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let p = entry.path().ok()?.to_string_lossy().into_owned();
        if p.trim_start_matches("./") == "backup.json" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s).ok()?;
            let v: Value = serde_json::from_str(&s).ok()?;
            slug = v.get("slug").and_then(Value::as_str).map(str::to_string);
            if !complete {
                return slug;
            }
        }
    }
    // A tar ends with two zero blocks; a file cut short at a member boundary has none.
    (end + 1024 <= len).then_some(())?;
    slug
}

/// Watches HA's backups folder: every complete archive seen, by slug.
/// After `stop` is set it scans once more and ends, so joining it gives a last look taken after
/// the scenario finished.
fn watch(
    dir: PathBuf,
    seen: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut checked: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let last = stop.load(Ordering::SeqCst);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Ok(m) = e.metadata() else { continue };
                    if !name.ends_with(".tar") || checked.get(&name) == Some(&m.len()) {
                        continue;
                    }
                    if let Some(slug) = complete_archive_slug(&e.path()) {
                        seen.lock().unwrap().insert(slug, name.clone());
                        checked.insert(name, m.len());
                    }
                }
            }
            if last {
                return;
            }
            thread::sleep(Duration::from_millis(150));
        }
    })
}

/// The `.tar` files in a folder with their sizes, complete or not.
pub fn archive_files(dir: &Path) -> BTreeMap<String, u64> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().ok()?.len(),
            ))
        })
        .collect()
}

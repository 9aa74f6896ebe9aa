//! The first hour as a new user lives it, with the built binary: `hapull init` with every value writes a
//! config that `check` accepts without an edit, its sshd snippet is the one in `config/sshd/` and real
//! OpenSSH accepts it, `trust-host --write` pins the key only when confirmed, and after `hapull once`
//! commits, `hapull health` and the daemon's `/healthz` say the same.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::sshd::Sshd;
use hapull::daemon::{Clock, Metrics, StateFile, StatusServer, health_from_state_file};
use hapull_sim::{Sim, SimOptions};
use jiff::Timestamp;

fn hapull(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hapull"))
        .args(args)
        .env_remove("HAPULL_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn there_is_one_sshd_snippet_and_openssh_accepts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    let out = hapull(&["init", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = fs::read_to_string(dir.join("hapull-sftp.conf")).unwrap();
    let shipped = fs::read_to_string(repo("config/sshd/hapull-sftp.conf")).unwrap();
    assert_eq!(written, shipped, "init writes config/sshd/hapull-sftp.conf");
    // What init prints for the HA host is that file's settings, line for line.
    let stdout = text(&out.stdout);
    for line in shipped
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            stdout.contains(line.trim()),
            "{line:?} missing from:\n{stdout}"
        );
    }
    // README and SETUP point to the file instead of carrying their own copies.
    for doc in ["README.md", "docs/SETUP.md"] {
        let t = fs::read_to_string(repo(doc)).unwrap();
        assert!(t.contains("config/sshd/hapull-sftp.conf"), "{doc}");
        assert!(!t.contains("\nMatch User"), "{doc} has its own Match block");
        assert!(
            !t.contains("    ForceCommand"),
            "{doc} has its own Match block"
        );
    }

    // Real OpenSSH reads it, for the default account and for another one.
    let other = tmp.path().join("other");
    let out = hapull(&[
        "init",
        "--dir",
        other.to_str().unwrap(),
        "--ssh-user",
        "sftp-ha",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snippet = fs::read_to_string(other.join("hapull-sftp.conf")).unwrap();
    assert!(snippet.contains("\nMatch User sftp-ha\n"), "{snippet}");
    crate::support::sshd::generate_key(&tmp.path().join("host_key"), "");
    for conf in [dir.join("hapull-sftp.conf"), other.join("hapull-sftp.conf")] {
        let main = tmp.path().join("sshd_config");
        fs::write(
            &main,
            format!(
                "HostKey {}\nUsePAM no\nSubsystem sftp internal-sftp\nInclude {}\n",
                tmp.path().join("host_key").display(),
                conf.display()
            ),
        )
        .unwrap();
        let _ = fs::create_dir_all("/run/sshd");
        let t = Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&main)
            .output()
            .unwrap();
        assert!(
            t.status.success(),
            "sshd -t: {}\n{}",
            text(&t.stderr),
            fs::read_to_string(&conf).unwrap()
        );
    }
}

#[test]
fn init_refuses_bad_values_and_names_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    for (flag, value, says) in [
        ("--remote-dir", "backups", "absolute path"),
        ("--timezone", "Mars/Olympus", "time zone"),
        ("--ssh-user", "a b", "account name"),
        ("--ssh-port", "0", "0"),
    ] {
        let d = tmp.path().join(flag.trim_start_matches('-'));
        let out = hapull(&["init", "--dir", d.to_str().unwrap(), flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = text(&out.stderr);
        assert!(err.contains(flag) && err.contains(says), "{flag}: {err}");
        assert!(!d.join("hapull.toml").exists(), "{flag}: nothing written");
    }
}

struct Lab {
    sshd: Sshd,
    sim: Sim,
    ha_dir: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl Lab {
    async fn start() -> Lab {
        let sshd = Sshd::start();
        let ha_dir = tempfile::tempdir().unwrap();
        let sim = Sim::start(SimOptions::new(ha_dir.path())).await.unwrap();
        Lab {
            sshd,
            sim,
            ha_dir,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn etc(&self) -> PathBuf {
        self.tmp.path().join("etc")
    }

    fn config(&self) -> String {
        self.etc().join("hapull.toml").display().to_string()
    }

    /// `hapull init` with every value a first config needs, the key authorised on the SSH server and
    /// the token in place: what a user does before `trust-host`.
    fn init(&self) -> Output {
        let port = self.sshd.port.to_string();
        let out = hapull(&[
            "init",
            "--dir",
            self.etc().to_str().unwrap(),
            "--data-dir",
            self.tmp.path().join("data").to_str().unwrap(),
            "--ha-url",
            &self.sim.url(),
            "--ssh-host",
            "127.0.0.1",
            "--ssh-port",
            &port,
            "--ssh-user",
            &self.sshd.user,
            "--remote-dir",
            self.ha_dir.path().to_str().unwrap(),
            "--timezone",
            "Europe/Berlin",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let public = fs::read_to_string(self.etc().join("id_ed25519.pub")).unwrap();
        let mut auth = fs::OpenOptions::new()
            .append(true)
            .open(self.sshd.dir.path().join("authorized_keys"))
            .unwrap();
        writeln!(auth, "restrict {}", public.trim()).unwrap();
        fs::write(self.etc().join("ha_token"), "sim-token\n").unwrap();
        out
    }

    /// The host key's fingerprint as `ssh-keygen -lf` shows it on the server.
    fn host_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.sshd.dir.path().join("host_ed25519.pub"))
            .output()
            .unwrap();
        text(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_every_value_needs_no_edit_and_trust_host_write_pins_the_key() {
    let lab = Lab::start().await;
    let out = lab.init();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("The config needs no edit"), "{stdout}");
    let as_written = fs::read_to_string(lab.config()).unwrap();
    let cfg = lab.config();
    let known_hosts = lab.etc().join("known_hosts");

    // Before the key is pinned, check fails on exactly that, and says how to fix it.
    let check = hapull(&["-c", &cfg, "check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stdout));
    assert!(text(&check.stdout).contains("trust-host"));

    // The plain form names the file; a wrong confirmation writes nothing.
    let show = hapull(&["-c", &cfg, "trust-host"]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert!(
        text(&show.stdout).contains(&format!("{} ([ssh] known_hosts)", known_hosts.display())),
        "{}",
        text(&show.stdout)
    );
    let fingerprint = lab.host_fingerprint();
    assert!(text(&show.stdout).contains(&fingerprint));
    let wrong = hapull(&[
        "-c",
        &cfg,
        "trust-host",
        "--write",
        "--expect",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains("nothing was written"));
    assert_eq!(fs::read_to_string(&known_hosts).unwrap(), "");
    // Without a terminal and without --expect, nothing is written either.
    let unconfirmed = hapull(&["-c", &cfg, "trust-host", "--write"]);
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert_eq!(fs::read_to_string(&known_hosts).unwrap(), "");

    let write = hapull(&[
        "-c",
        &cfg,
        "trust-host",
        "--write",
        "--expect",
        &fingerprint,
    ]);
    assert!(write.status.success(), "{}", text(&write.stderr));
    let pinned = fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(
        pinned,
        format!("{}\n", lab.sshd.known_hosts_line(lab.sshd.port))
    );
    let again = hapull(&[
        "-c",
        &cfg,
        "trust-host",
        "--write",
        "--expect",
        &fingerprint,
    ]);
    assert!(again.status.success());
    assert!(text(&again.stdout).contains("already trusts"));
    assert_eq!(fs::read_to_string(&known_hosts).unwrap(), pinned);

    let check = hapull(&["-c", &cfg, "check"]);
    let check_out = text(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{check_out}");
    assert!(check_out.ends_with("ready\n"), "{check_out}");
    assert_eq!(
        fs::read_to_string(lab.config()).unwrap(),
        as_written,
        "no hand edit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_remote_dir_is_named_with_its_key_and_fix() {
    let lab = Lab::start().await;
    lab.init();
    let cfg = lab.config();
    let fp = lab.host_fingerprint();
    assert!(
        hapull(&["-c", &cfg, "trust-host", "--write", "--expect", &fp])
            .status
            .success()
    );
    let text_cfg = fs::read_to_string(&cfg).unwrap();
    let missing = lab.ha_dir.path().join("nope");
    let edited = text_cfg.replace(
        &format!("remote_dir = \"{}\"", lab.ha_dir.path().display()),
        &format!("remote_dir = \"{}\"", missing.display()),
    );
    assert_ne!(edited, text_cfg);
    fs::write(&cfg, edited).unwrap();
    let want = format!(
        "[ssh] remote_dir = \"{}\": no such folder",
        missing.display()
    );
    let check = hapull(&["-c", &cfg, "check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        text(&check.stdout).contains(&want),
        "{}",
        text(&check.stdout)
    );
    assert!(text(&check.stdout).contains("config folder + /backups"));
    let once = hapull(&["-c", &cfg, "once"]);
    assert_eq!(once.status.code(), Some(1));
    assert!(text(&once.stderr).contains(&want), "{}", text(&once.stderr));
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
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

fn wait_for_port(port: u16, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("hapull run exited early: {status}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the status endpoint did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_health_and_healthz_agree() {
    let lab = Lab::start().await;
    lab.init();
    let cfg = lab.config();
    let fp = lab.host_fingerprint();
    assert!(
        hapull(&["-c", &cfg, "trust-host", "--write", "--expect", &fp])
            .status
            .success()
    );
    let state_path = lab.tmp.path().join("data/state.json");

    // Nothing has run: unhealthy, and it says why.
    let health = hapull(&["-c", &cfg, "health"]);
    assert_eq!(health.status.code(), Some(1));

    let once = hapull(&["-c", &cfg, "once"]);
    assert!(once.status.success(), "{}", text(&once.stderr));
    let recorded = StateFile::open(&state_path).unwrap().get();
    let success = recorded.last_success.expect("once records its success");
    let health = hapull(&["-c", &cfg, "health"]);
    assert_eq!(health.status.code(), Some(0), "{}", text(&health.stdout));
    assert!(text(&health.stdout).contains(&success.to_string()));

    // The daemon, on a schedule that does not come due during the test, answers from the same record.
    let port = free_port();
    let with_status = fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "# listen = \"127.0.0.1:9180\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("# cron = \"5 * * * *\"", "cron = \"0 0 1 1 *\"")
        .replace("# keep_on_ha = 1 ", "keep_on_ha = 5 ");
    fs::write(&cfg, with_status).unwrap();

    // Two backups in Home Assistant: `list --remote` shows the newest first.
    let second = hapull(&["-c", &cfg, "once"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let success = StateFile::open(&state_path)
        .unwrap()
        .get()
        .last_success
        .unwrap();
    let list = hapull(&["-c", &cfg, "list", "--remote", "--json"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let dates: Vec<Timestamp> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["date"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(dates.len(), 2, "{listed}");
    assert!(dates[0] >= dates[1], "newest first: {dates:?}");
    let mut daemon = crate::support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_hapull"))
            .args(["-c", &cfg, "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, &mut daemon);
    // The daemon has connected to Home Assistant (its record reaches the log within a second).
    let audit_path = lab.tmp.path().join("data/audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&audit_path)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("\"ha.connection\"") && l.contains("\"connected\""))
    {
        assert!(
            Instant::now() < deadline,
            "the daemon did not connect to Home Assistant within a minute"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = get(port, "/healthz");
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = daemon.wait().unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("last successful backup at {success}")),
        "{body}"
    );
    assert!(stopped.success(), "{stopped}");

    // The daemon's run in the audit log: one start, one connection, one stop.
    let audit = fs::read_to_string(lab.tmp.path().join("data/audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |kind: &str| records.iter().filter(|r| r["kind"] == kind).count();
    assert_eq!(count("service.started"), 1, "{audit}");
    assert_eq!(count("service.stopped"), 1, "{audit}");
    let connected = records
        .iter()
        .filter(|r| r["kind"] == "ha.connection" && r["data"]["state"] == "connected")
        .count();
    assert_eq!(connected, 1, "{audit}");

    // Past max_age, both say unhealthy at the same instant; within it, both say healthy.
    let max_age = Duration::from_secs(3 * 3600);
    let state = StateFile::open(&state_path).unwrap();
    let started = state
        .get()
        .started_at
        .expect("the daemon recorded its start");
    for (offset, healthy) in [(3600, true), (3 * 3600 + 1, false)] {
        let now = started.max(success) + jiff::SignedDuration::from_secs(offset);
        let (server, from_file) = at_instant(now, {
            let (state, state_path) = (state.clone(), state_path.clone());
            move |clock| {
                let server = StatusServer::new(Metrics::new("test", started), max_age, clock)
                    .with_state_file(state);
                (
                    server.health(),
                    health_from_state_file(&state_path, max_age, now),
                )
            }
        });
        assert_eq!(server.is_healthy(), healthy, "{offset}: {server:?}");
        assert_eq!(from_file.is_healthy(), healthy, "{offset}: {from_file:?}");
    }
}

/// Runs `f` with a clock that stands still at `at` (a paused tokio clock on a thread of its own).
fn at_instant<T: Send + 'static>(at: Timestamp, f: impl FnOnce(Clock) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move { f(Clock::following_tokio(at)) })
    })
    .join()
    .unwrap()
}

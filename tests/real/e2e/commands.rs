//! Scenarios for what a user does beside `hapull once`, against the real Home Assistant: a protected
//! backup through a cycle, `hapull events` and `list --remote`, and `hapull run` stopped by SIGINT
//! during a pull (the first signal lets it go on, the second cuts it), after which the next run
//! pulls the cut backup too and calls the success webhook.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use super::MIN;
use super::hook::Hook;
use super::lab::{self, Case, Tweaks, block_on};
use serde_json::{Value, json};

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
#[ignore = "needs real Home Assistant and the lab sshd: scripts/e2e-real"]
fn s10_protected_backup_through_a_cycle() {
    e2e!();
    let ha_legacy = std::env::var("HAPULL_E2E_HA_LEGACY").as_deref() == Ok("1");
    let mut case = Case::new(
        "10 protected backup (password) through a cycle",
        "current HA: exit 0, HA lists the backup as protected, the archive is committed and verified, the password is in no output; legacy HA (no encryption): exit 1 naming the password, no backup made",
    );
    let password = format!("e2e-pass-{}", fastrand::u64(..));
    let pw_file = case.dir.path().join("backup_password");
    std::fs::write(&pw_file, &password).unwrap();
    case.configure(&Tweaks {
        backup_extra: format!("password_file = \"{}\"", pw_file.display()),
        ..Tweaks::default()
    });
    let run = case.hapull(&["once"]);
    case.observe(format!("hapull: {}", run.verdict()));
    let audit = std::fs::read_to_string(&case.audit).unwrap_or_default();
    case.check(
        !run.stderr.contains(&password)
            && !run.stdout.contains(&password)
            && !audit.contains(&password),
        "the password appears in no output and not in the audit log",
    );
    if ha_legacy {
        case.check(run.code == Some(1), "exit 1");
        case.check(
            run.stderr.contains("password") && run.stderr.contains("legacy backup API"),
            "the error names the password and the legacy API",
        );
        case.check(
            case.audit_records("backup.created").is_empty(),
            "no backup was made",
        );
        case.finish();
        return;
    }
    case.check(run.code == Some(0), "exit 0");
    let ids: Vec<String> = case
        .audit_records("backup.created")
        .iter()
        .filter_map(|r| r["data"]["backup_id"].as_str().map(str::to_string))
        .collect();
    case.check(ids.len() == 1, format!("one backup created: {ids:?}"));
    let id = ids.first().cloned().unwrap_or_default();
    let listed = case.hapull(&["list", "--remote", "--json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap_or(Value::Null);
    let entry = listed["backups"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["backup_id"] == id.as_str()).cloned())
        .unwrap_or(Value::Null);
    case.observe(format!("HA lists it as protected: {}", entry["protected"]));
    case.check(
        entry["protected"] == true,
        "`hapull list --remote` shows the backup as protected",
    );
    let committed = case.committed();
    case.check(
        committed.iter().any(|(c, ok)| *c == id && *ok),
        "the protected archive is committed and verified",
    );
    let store = hapull::store::Store::open_read_only(&case.store).unwrap();
    let protected = store
        .find(&id)
        .ok()
        .flatten()
        .is_some_and(|a| a.manifest.protected);
    case.check(protected, "its manifest says it is protected");
    let verify = case.hapull(&["verify", "--all"]);
    case.check(verify.code == Some(0), "`hapull verify --all` passes");
    case.finish();
}

#[test]
#[ignore = "needs real Home Assistant and the lab sshd: scripts/e2e-real"]
fn s12_events_and_list_remote() {
    e2e!();
    let mut case = Case::new(
        "12 `hapull events` and `hapull list --remote`",
        "events prints the fired event as a JSON line and exits 0 on SIGINT; list --remote shows exactly the backups HA lists",
    );
    let event_type = format!("hapull_e2e_{}", fastrand::u32(..));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("--config")
        .arg(&case.config)
        .args(["events", "--no-backup", "--type", &event_type])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(case.dir.path().join("events.err")).unwrap())
        .spawn()
        .unwrap();
    let err = case.dir.path().join("events.err");
    let ready = case.wait_for("hapull events to connect", MIN, || {
        std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("printing events")
    });
    case.check(ready, "hapull events connected");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // It subscribes right after saying it is connected; fire until one arrives.
    let mut line = None;
    for n in 0..30 {
        block_on(async {
            let c = case.ha.client().await.unwrap();
            c.fire_event(&event_type, json!({"n": n})).await.unwrap();
        });
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
            line = Some(l);
            break;
        }
    }
    let v: Value = line
        .as_deref()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    case.observe(format!(
        "events printed: {}",
        line.as_deref().unwrap_or("nothing")
    ));
    case.check(
        v["event_type"] == event_type.as_str() && v["data"]["n"].is_u64(),
        "the fired event is printed as a JSON line",
    );
    signal(child.id(), "INT");
    let mut code = None;
    let ended = case.wait_for("hapull events to end", MIN, || {
        code = child.try_wait().ok().flatten().map(|s| s.code());
        code.is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    case.check(code == Some(Some(0)), "exit 0 on SIGINT");

    let listed = case.hapull(&["list", "--remote", "--json"]);
    case.check(listed.code == Some(0), "`list --remote` exits 0");
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap_or(Value::Null);
    let mut ids: Vec<String> = listed["backups"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|b| b["backup_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    let in_ha: Vec<String> = case.ha.backups().into_keys().collect();
    case.observe(format!("list --remote: {} backup(s)", ids.len()));
    case.check(ids == in_ha, "list --remote shows the backups HA lists");
    case.finish();
}

#[test]
#[ignore = "needs real Home Assistant and the lab sshd: scripts/e2e-real"]
fn s11_run_sigint_twice_cuts_the_pull_then_the_next_run_saves_both() {
    e2e!();
    let mut case = Case::new(
        "11 `hapull run`: SIGINT during a pull, then SIGINT again; then a new run",
        "after the first SIGINT the pull goes on; the second cuts it: exit 0, nothing committed, the backup stays in HA; the next run commits its own backup and the cut one, and calls the success webhook",
    );
    let hook = Hook::start();
    let state = case.dir.path().join("state.json");
    let tail = |bw: bool| Tweaks {
        bandwidth_limit: bw.then_some("4MiB"),
        tail: format!(
            "webhook_success = \"http://127.0.0.1:{port}/ok\"\nwebhook_failure = \"http://127.0.0.1:{port}/fail\"\n\n\
             [schedule]\ncron = \"0 3 1 1 *\"\nrun_on_start = true\nshutdown_grace = \"1h\"\nstate_file = \"{state}\"\n",
            port = hook.port,
            state = state.display(),
        ),
        ..Tweaks::default()
    };
    let t = tail(true);
    case.configure(&t);
    let _bulk = case.ha.bulk(64);
    let child = case.spawn(&["run"], "run1");
    let err = case.dir.path().join("run1.err");
    let pulling = case.wait_for("the pull to be under way", 3 * MIN, || {
        case.incoming_bytes() > 8 << 20
    });
    case.check(pulling, "the pull got under way");
    signal(child.id(), "INT");
    let said = case.wait_for("the first signal to be acknowledged", MIN, || {
        std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("send it again to stop at once")
    });
    case.check(
        said,
        "the first SIGINT says it finishes up and how to stop at once",
    );
    let at_signal = case.incoming_bytes();
    let went_on = case.wait_for("the pull to go on after the first signal", MIN, || {
        case.incoming_bytes() > at_signal + (4 << 20)
    });
    case.check(went_on, "the pull goes on after the first SIGINT");
    signal(child.id(), "INT");
    let mut child = child;
    let ended = case.wait_for("hapull run to end", MIN, || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let run = case.collect(child, "run1");
    case.observe(format!(
        "first run: exit {:?} with {} MiB pulled",
        run.code,
        case.incoming_bytes() >> 20
    ));
    case.check(
        ended && run.code == Some(0),
        "the second SIGINT ends it with exit 0",
    );
    case.check(
        run.stderr
            .contains("second signal: cutting the running cycle now"),
        "the log says the cycle was cut",
    );
    case.check(
        case.committed().is_empty(),
        "nothing committed by the cut run",
    );
    case.check(hook.requests().is_empty(), "no webhook for a cut cycle");
    let cut_id = case
        .audit_records("backup.created")
        .first()
        .and_then(|r| r["data"]["backup_id"].as_str().map(str::to_string))
        .unwrap_or_default();
    case.check(
        lab::archive_slugs(&case.ha.backup_dir).contains_key(&cut_id),
        "the cut backup is still in HA",
    );

    case.configure(&tail(false));
    let mut child = case.spawn(&["run"], "run2");
    let called = case.wait_for("the success webhook", 6 * MIN, || {
        !hook.requests().is_empty() || matches!(child.try_wait(), Ok(Some(_)))
    });
    case.check(called, "the second run called a webhook");
    signal(child.id(), "TERM");
    let ended = case.wait_for("hapull run to end", 3 * MIN, || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let run = case.collect(child, "run2");
    case.check(
        run.code == Some(0),
        "the second run stops with exit 0 on SIGTERM",
    );
    let reqs = hook.requests();
    case.observe(format!(
        "webhooks: {:?}",
        reqs.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>()
    ));
    case.check(
        reqs.len() == 1 && reqs[0].0 == "POST /ok HTTP/1.1",
        "exactly one call, to the success webhook",
    );
    let ids: Vec<String> = case
        .audit_records("backup.created")
        .iter()
        .filter_map(|r| r["data"]["backup_id"].as_str().map(str::to_string))
        .collect();
    let committed = case.committed();
    case.check(ids.len() == 2, format!("two backups created: {ids:?}"));
    for id in &ids {
        case.check(
            committed.iter().any(|(c, ok)| c == id && *ok),
            format!("backup {id} committed and verified"),
        );
    }
    let new_id = ids.get(1).cloned().unwrap_or_default();
    let body = reqs.first().map(|(_, b)| b.clone()).unwrap_or(Value::Null);
    case.check(
        body["backup_id"] == new_id.as_str()
            && body["sha256"].as_str().is_some_and(|s| s.len() == 64),
        "the webhook names the committed backup and its SHA-256",
    );
    case.finish();
}

#[test]
#[ignore = "needs real Home Assistant and the lab sshd: scripts/e2e-real"]
fn s13_ha_restarting_at_a_scheduled_run_is_retried() {
    e2e!();
    let mut case = Case::new(
        "13 `hapull run` hourly: HA down when the scheduled run comes due, then back",
        "the scheduled cycle fails for a transient reason and is retried (cycle.retry); once HA is back the retry commits within minutes, not at the next hourly run",
    );
    let state = case.dir.path().join("state.json");
    // An hourly schedule whose run comes due two minutes from now.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let minute = (now.minute() + 2) % 60;
    case.configure(&Tweaks {
        tail: format!(
            "\n[schedule]\ncron = \"{minute} * * * *\"\ntimezone = \"UTC\"\nretry_min = \"5s\"\nretry_max = \"20s\"\n\
             state_file = \"{}\"\n",
            state.display()
        ),
        ..Tweaks::default()
    });
    let child = case.spawn(&["run"], "run");
    let connected = case.wait_for("the daemon to connect", MIN, || {
        case.audit_records("ha.connection")
            .iter()
            .any(|r| r["data"]["state"] == "connected")
    });
    case.check(connected, "the daemon connected to Home Assistant");
    case.ha.stop();
    let retried = case.wait_for("the scheduled run to fail and be retried", 4 * MIN, || {
        !case.audit_records("cycle.retry").is_empty()
    });
    case.check(
        retried,
        "the scheduled run failed while HA was down and a retry was scheduled",
    );
    case.ha.start();
    let back = std::time::Instant::now();
    let committed = case.wait_for("a retry to commit", 5 * MIN, || {
        !case.audit_records("cycle.finished").is_empty()
    });
    case.observe(format!(
        "retries recorded: {}; committed {:.0} s after HA was back",
        case.audit_records("cycle.retry").len(),
        back.elapsed().as_secs_f64()
    ));
    case.check(
        committed,
        "a retry committed within minutes of Home Assistant being back",
    );
    signal(child.id(), "TERM");
    let run = case.collect(child, "run");
    case.observe(format!("hapull run: {}", run.verdict()));
    case.check(run.code == Some(0), "the daemon stopped cleanly on SIGTERM");
    case.finish();
}

#[test]
#[ignore = "needs real Home Assistant and the lab sshd: scripts/e2e-real"]
fn s25_daemon_deep_verifies_a_real_backup() {
    e2e!();
    let mut case = Case::new(
        "25 `hapull run` with `deep_verify = \"every_cycle\"`",
        "after the cycle commits, the daemon unpacks the real backup, checks its recorder database (when the backup has one) and every .storage file, records archive.deep_verified with each check passed, and reports healthy; no temporary folder left",
    );
    let state = case.dir.path().join("state.json");
    case.configure(&Tweaks {
        tail: format!(
            "\n[schedule]\ncron = \"0 0 1 1 *\"\nrun_on_start = true\nstate_file = \"{}\"\n",
            state.display()
        ),
        ..Tweaks::default()
    });
    let text = std::fs::read_to_string(&case.config).unwrap();
    std::fs::write(
        &case.config,
        text.replacen(
            "verify = \"full\"\n",
            "verify = \"full\"\ndeep_verify = \"every_cycle\"\n",
            1,
        ),
    )
    .unwrap();
    let child = case.spawn(&["run"], "run");
    let done = case.wait_for("the deep verification", 5 * MIN, || {
        !case.audit_records("archive.deep_verified").is_empty()
            || !case.audit_records("archive.deep_verify_failed").is_empty()
            || !case.audit_records("archive.deep_verify_skipped").is_empty()
    });
    case.check(done, "the daemon deep-verified the committed backup");
    let deep = case.audit_records("archive.deep_verified");
    let checks = deep
        .first()
        .map(|r| r["data"]["checks"].clone())
        .unwrap_or(Value::Null);
    case.observe(format!("checks: {checks}"));
    let result = |name: &str| {
        checks
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["check"] == name)
            .map(|c| c["result"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    for name in ["archive", "unpack", "storage"] {
        case.check(result(name) == "passed", format!("the {name} check passed"));
    }
    // The lab's Home Assistant runs without the recorder, so its backups hold no database; a
    // database that is there must pass.
    case.check(
        matches!(result("database").as_str(), "passed" | "not_included"),
        format!(
            "the database check passed or found no database ({})",
            result("database")
        ),
    );
    let health = case.hapull(&["health"]);
    case.observe(format!("hapull health: {}", health.verdict()));
    case.check(health.code == Some(0), "`hapull health` reports healthy");
    signal(child.id(), "TERM");
    let run = case.collect(child, "run");
    case.check(run.code == Some(0), "the daemon stopped cleanly on SIGTERM");
    let leftovers: Vec<_> = std::fs::read_dir(&case.store)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.contains("deep"))
                .collect()
        })
        .unwrap_or_default();
    case.check(
        leftovers.is_empty(),
        format!("no temporary folder left in the store: {leftovers:?}"),
    );
    case.finish();
}

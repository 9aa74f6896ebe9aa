//! The backup cycle end to end: the simulated Home Assistant for the WebSocket side, a real OpenSSH
//! sshd serving the simulator's backups folder, the real store. The rule checked throughout: a backup
//! Home Assistant completed is either committed and verified locally, or still present in HA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::sshd::Sshd;
use hapull::config::{Backup, BackupMode, VerifyLevel};
use hapull::cycle::{Context, CycleError, Settings, Source, Step};
use hapull::ha::{Client, ClientOptions, Endpoint, GenerateRequest};
use hapull::secret::Secret;
use hapull::store::{RetentionPolicy, Store};
use hapull::transfer::{HostKeyPolicy, PullOptions, SshTarget};
use hapull_sim::{Corruption, Sim, SimOptions, SimVersion};

struct Rig {
    sshd: Sshd,
    sim: Sim,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    store_dir: std::path::PathBuf,
}

async fn rig(version: SimVersion, stage: Duration) -> Rig {
    let sshd = Sshd::start();
    let ha_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(ha_dir.path());
    opts.version = version;
    opts.stage_duration = stage;
    let sim = Sim::start(opts).await.unwrap();
    let store_path = store_dir.path().join("archives");
    Rig {
        sshd,
        sim,
        _dirs: (ha_dir, store_dir),
        store_dir: store_path,
    }
}

async fn client(sim: &Sim) -> Client {
    let mut o = ClientOptions::new(
        Endpoint::parse(&sim.url()).unwrap(),
        Secret::new("sim-token"),
        None,
    )
    .unwrap();
    o.request_timeout = Duration::from_secs(10);
    o.max_reconnect_delay = Duration::from_millis(500);
    Client::connect(o).await.unwrap()
}

async fn context(rig: &Rig, mode: BackupMode, keep_on_ha: u32) -> Context {
    let ssh = SshTarget {
        host: "127.0.0.1".into(),
        port: rig.sshd.port,
        user: rig.sshd.user.clone(),
        identity_file: rig.sshd.client_key.clone(),
        passphrase: None,
        host_keys: HostKeyPolicy::KnownHosts {
            path: rig.sshd.write_known_hosts(rig.sshd.port),
            trust_on_first_use: false,
        },
    };
    let mut pull = PullOptions {
        retry_budget: 2,
        min_backoff: Duration::from_millis(100),
        ..PullOptions::default()
    };
    pull.free_space_margin = 0;
    let identity = hapull::transfer::load_identity(&ssh.identity_file, None).unwrap();
    Context {
        client: client(&rig.sim).await,
        source: Source::Sftp { ssh, identity },
        store: Arc::new(Store::open(&rig.store_dir).unwrap()),
        audit: None,
        settings: Settings {
            backup: Backup {
                mode,
                keep_on_ha,
                name: "hapull {date}".into(),
                timeout: Duration::from_secs(30),
                blocked_timeout: Duration::from_secs(5),
                ..Backup::default()
            },
            remote_dir: rig.sim.backup_dir().display().to_string(),
            verify: VerifyLevel::Full,
            retention: RetentionPolicy::default(),
            timezone: jiff::tz::TimeZone::UTC,
            pull,
        },
        offsite: Vec::new(),
    }
}

fn ha_ids(sim: &Sim) -> Vec<String> {
    sim.backups()
        .iter()
        .map(|b| {
            b.get("backup_id")
                .or_else(|| b.get("slug"))
                .and_then(|v| v.as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Waits until Home Assistant lists the backup, i.e. it completed (polling HA's state, not a pause).
async fn until_listed(sim: &Sim, id: &str) {
    for _ in 0..1000 {
        if ha_ids(sim).iter().any(|x| x == id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("backup {id} never completed in the simulator");
}

/// Waits until the simulator is writing an archive (a backup is in progress).
async fn until_writing(sim: &Sim) {
    for _ in 0..1000 {
        if sim.control().running_archive_path().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the simulator never started writing an archive");
}

async fn make_by_hand(sim: &Sim, name: &str) -> String {
    let c = client(sim).await;
    let id = c
        .backup_generate(&GenerateRequest {
            agent_ids: vec!["backup.local".into()],
            name: Some(name.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    until_listed(sim, &id).await;
    id
}

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn sums_check(store: &Path) {
    let out = std::process::Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every backup HA completed is committed locally or still in HA.
fn nothing_lost(rig: &Rig, completed: &[String]) {
    let store = Store::open(&rig.store_dir).unwrap();
    let in_ha = ha_ids(&rig.sim);
    for id in completed {
        let local = store
            .find(id)
            .unwrap()
            .map(|a| store.verify(&a).unwrap().is_ok())
            .unwrap_or(false);
        assert!(
            local || in_ha.contains(id),
            "backup {id} is neither committed locally nor in HA"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_mode_commits_verified_archives_and_keeps_one_in_ha() {
    let rig = rig(SimVersion::Current, Duration::from_millis(100)).await;
    let ctx = context(&rig, BackupMode::Api, 1).await;
    let first = ctx.run_cycle().await.unwrap();
    assert_eq!(ha_ids(&rig.sim), vec![first.backup_id.clone()]);
    let ha_file = rig.sim.archive_path(&first.backup_id).unwrap();
    assert_eq!(
        sha256_of(&first.archive.path),
        sha256_of(&ha_file),
        "the stored archive is byte-exact"
    );
    assert_eq!(first.archive.manifest.sha256, first.pull.sha256_hex());
    assert!(
        first
            .archive
            .relative_path
            .ends_with(&format!("_{}.tar", first.backup_id))
    );

    let second = ctx.run_cycle().await.unwrap();
    assert_ne!(first.backup_id, second.backup_id);
    // The older one went from HA only because its verified copy is in the store.
    assert_eq!(second.deleted_on_ha, vec![first.backup_id.clone()]);
    assert_eq!(ha_ids(&rig.sim), vec![second.backup_id.clone()]);
    let store = Store::open(&rig.store_dir).unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
    sums_check(&rig.store_dir);
    nothing_lost(&rig, &[first.backup_id, second.backup_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_on_ha_zero_still_keeps_backups_without_a_local_copy() {
    let rig = rig(SimVersion::Current, Duration::from_millis(50)).await;
    let ctx = context(&rig, BackupMode::Api, 0).await;
    let r = ctx.run_cycle().await.unwrap();
    // Its verified copy is committed, so with keep_on_ha = 0 HA keeps none of hapull's.
    assert_eq!(r.deleted_on_ha, vec![r.backup_id.clone()]);
    assert!(ha_ids(&rig.sim).is_empty());
    nothing_lost(&rig, std::slice::from_ref(&r.backup_id));

    // One of hapull's own backups with no local copy (its archive was damaged, so it was refused):
    // beyond keep_on_ha = 0 and hapull's to delete, it is kept only because no verified copy exists.
    rig.sim.control().corrupt_next_archive(Corruption::FlipByte);
    let refused = ctx.run_cycle().await.unwrap_err();
    assert_eq!(refused.step(), Some(Step::Commit), "{refused}");
    let uncopied = ha_ids(&rig.sim)[0].clone();
    let r2 = ctx.run_cycle().await.unwrap();
    assert_eq!(r2.deleted_on_ha, vec![r2.backup_id.clone()]);
    assert_eq!(ha_ids(&rig.sim), vec![uncopied.clone()]);
    assert!(
        Store::open(&rig.store_dir)
            .unwrap()
            .find(&uncopied)
            .unwrap()
            .is_none()
    );

    // A backup that is not hapull's is never touched (prune_foreign = false), even when it has a
    // verified local copy: here the foreign rule alone protects it.
    let foreign = make_by_hand(&rig.sim, "manual").await;
    let pulled = ctx.pull_existing(&foreign).await.unwrap();
    assert_eq!(pulled.backup_id, foreign);
    let store = Store::open(&rig.store_dir).unwrap();
    assert!(
        store
            .verify(&store.find(&foreign).unwrap().unwrap())
            .unwrap()
            .is_ok(),
        "the foreign backup has a verified local copy"
    );
    let r3 = ctx.run_cycle().await.unwrap();
    assert!(ha_ids(&rig.sim).contains(&foreign));
    assert!(!r3.deleted_on_ha.contains(&foreign));
    assert!(!pulled.deleted_on_ha.contains(&foreign));
    // ... while hapull's own new backup, with the same kind of copy, went.
    assert_eq!(r3.deleted_on_ha, vec![r3.backup_id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backup_deletes_nothing_and_says_why() {
    let rig = rig(SimVersion::Current, Duration::from_millis(50)).await;
    let ctx = context(&rig, BackupMode::Api, 0).await;
    let ok = ctx.run_cycle().await.unwrap();
    let manual = make_by_hand(&rig.sim, "manual").await;
    let before = ha_ids(&rig.sim);
    rig.sim.control().fail_next_backup("upload_failed");
    let err = ctx.run_cycle().await.unwrap_err();
    assert!(
        matches!(err, CycleError::BackupFailed { ref reason } if reason == "upload_failed"),
        "{err}"
    );
    assert!(err.to_string().contains("upload_failed"));
    assert_eq!(ha_ids(&rig.sim), before, "nothing deleted in HA");
    assert_eq!(
        Store::open(&rig.store_dir).unwrap().list().unwrap().len(),
        1,
        "nothing new committed"
    );
    nothing_lost(&rig, &[ok.backup_id, manual]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_websocket_during_the_backup_still_ends_in_a_pull() {
    let rig = rig(SimVersion::Current, Duration::from_millis(1500)).await;
    let ctx = context(&rig, BackupMode::Api, 1).await;
    let control = rig.sim.control();
    let dropper = tokio::spawn(async move {
        // Wait until the archive is being written, then cut every connection.
        for _ in 0..1000 {
            if control.running_archive_path().is_some() {
                control.drop_connections();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    });
    let r = ctx.run_cycle().await.unwrap();
    assert!(
        dropper.await.unwrap(),
        "the connections were cut while the archive was being written"
    );
    let conns: std::collections::BTreeSet<u64> =
        rig.sim.received().iter().map(|r| r.conn).collect();
    assert!(conns.len() >= 2, "the client reconnected");
    let store = Store::open(&rig.store_dir).unwrap();
    assert!(
        store
            .verify(&store.find(&r.backup_id).unwrap().unwrap())
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_archive_is_not_committed_and_ha_keeps_it() {
    for how in [Corruption::Truncate, Corruption::FlipByte] {
        let rig = rig(SimVersion::Current, Duration::from_millis(50)).await;
        let ctx = context(&rig, BackupMode::Api, 0).await;
        rig.sim.control().corrupt_next_archive(how);
        let err = ctx.run_cycle().await.unwrap_err();
        assert!(
            matches!(err.step(), Some(Step::Pull) | Some(Step::Commit)),
            "{err}"
        );
        assert_eq!(ha_ids(&rig.sim).len(), 1, "HA's copy is kept: {err}");
        let store = Store::open(&rig.store_dir).unwrap();
        assert!(store.list().unwrap().is_empty(), "nothing committed");
        // No file that looks like an archive anywhere in the store.
        let stray: Vec<_> = walk(&rig.store_dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_saves_every_archive_before_the_delete_command_runs() {
    let rig = rig(SimVersion::Current, Duration::from_millis(50)).await;
    // A backup made outside hapull, with no local copy: the recipe's delete would destroy it.
    let manual = make_by_hand(&rig.sim, "made by hand").await;
    let ctx = context(&rig, BackupMode::Service, 1).await;
    let r = ctx.run_cycle().await.unwrap();
    let store = Store::open(&rig.store_dir).unwrap();
    assert!(
        store.find(&manual).unwrap().is_some(),
        "the hand-made backup was pulled before the delete command"
    );
    assert!(store.find(&r.backup_id).unwrap().is_some());
    assert!(
        r.archive.manifest.name.starts_with("Custom backup"),
        "{}",
        r.archive.manifest.name
    );
    sums_check(&rig.store_dir);
    nothing_lost(&rig, &[manual, r.backup_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_home_assistant_uses_the_blocking_api() {
    let rig = rig(SimVersion::Legacy, Duration::from_millis(50)).await;
    let ctx = context(&rig, BackupMode::Api, 1).await;
    let first = ctx.run_cycle().await.unwrap();
    assert!(first.archive.path.exists());
    assert_eq!(
        first.api,
        hapull::ha::BackupApi::Legacy { has_details: false }
    );
    let second = ctx.run_cycle().await.unwrap();
    assert_eq!(second.deleted_on_ha, vec![first.backup_id.clone()]);
    assert_eq!(ha_ids(&rig.sim), vec![second.backup_id.clone()]);
    sums_check(&rig.store_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_already_running_is_waited_for() {
    let rig = rig(SimVersion::Current, Duration::from_millis(1200)).await;
    let c = client(&rig.sim).await;
    let other = c
        .backup_generate(&GenerateRequest {
            agent_ids: vec!["backup.local".into()],
            name: Some("someone else's".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ctx = context(&rig, BackupMode::Api, 1).await;
    let r = ctx.run_cycle().await.unwrap();
    assert_ne!(r.backup_id, other);
    assert!(
        ha_ids(&rig.sim).contains(&other),
        "someone else's backup is not hapull's to delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_manager_that_never_unblocks_times_out_cleanly() {
    let rig = rig(SimVersion::Current, Duration::from_millis(50)).await;
    rig.sim.control().set_blocked(true);
    let mut ctx = context(&rig, BackupMode::Api, 1).await;
    ctx.settings.backup.blocked_timeout = Duration::from_secs(1);
    let err = ctx.run_cycle().await.unwrap_err();
    assert!(
        matches!(
            err,
            CycleError::Timeout {
                step: Step::Connect,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("blocked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_ssh_side_is_found_before_home_assistant_makes_a_backup() {
    let rig = rig(SimVersion::Current, Duration::from_millis(50)).await;
    let mut ctx = context(&rig, BackupMode::Api, 1).await;
    // A known_hosts that records another key for this server.
    let other = Sshd::start();
    let kh = rig.sshd.dir.path().join("wrong_known_hosts");
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{} {}\n", rig.sshd.port, other.host_public_key),
    )
    .unwrap();
    let Source::Sftp { ssh, .. } = &mut ctx.source else {
        unreachable!("the rig uses SFTP")
    };
    ssh.host_keys = HostKeyPolicy::KnownHosts {
        path: kh,
        trust_on_first_use: false,
    };
    let err = ctx.run_cycle().await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Connect), "{err}");
    assert!(err.to_string().contains("HOST KEY CHANGED"), "{err}");
    assert!(
        ha_ids(&rig.sim).is_empty(),
        "no backup was made that could not be pulled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_restarting_mid_backup_is_reported_not_waited_out() {
    let mut rig = rig(SimVersion::Current, Duration::from_millis(2000)).await;
    let ctx = context(&rig, BackupMode::Api, 1).await;
    let cycle = tokio::spawn(async move { ctx.run_cycle().await });
    until_writing(&rig.sim).await;
    rig.sim.restart().await.unwrap();
    // hapull learns from HA that the backup is gone instead of waiting out its 30 s backup timeout:
    // a wait would end in a Timeout error.
    let err = cycle.await.unwrap().unwrap_err();
    assert!(
        !matches!(err, CycleError::Timeout { .. }),
        "waited out the timeout: {err}"
    );
    // The restarted HA either forgot the backup, or (like real HA killed mid-write) lists the
    // truncated archive it left behind, which verification then refuses.
    assert!(
        err.to_string().contains("is gone") || err.step() == Some(Step::Commit),
        "{err}"
    );
    assert!(
        Store::open(&rig.store_dir)
            .unwrap()
            .list()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_archive_is_kept_in_ha_and_not_pulled_again_and_again() {
    let rig = rig(SimVersion::Current, Duration::from_millis(50)).await;
    let mut ctx = context(&rig, BackupMode::Api, 0).await;
    let audit_path = rig.store_dir.with_file_name("audit.jsonl");
    ctx.audit = Some(
        hapull::audit::AuditLog::open(hapull::audit::AuditOptions::new(&audit_path, "test"))
            .await
            .unwrap(),
    );
    rig.sim.control().corrupt_next_archive(Corruption::FlipByte);
    let damaged = ctx.run_cycle().await.unwrap_err();
    assert_eq!(damaged.step(), Some(Step::Commit), "{damaged}");
    let bad_id = ha_ids(&rig.sim)[0].clone();
    // The next cycles commit their own backups; the damaged one is neither pulled again nor deleted.
    ctx.run_cycle().await.unwrap();
    ctx.run_cycle().await.unwrap();
    assert!(
        ha_ids(&rig.sim).contains(&bad_id),
        "HA keeps the only copy there is"
    );
    let store = Store::open(&rig.store_dir).unwrap();
    assert!(store.find(&bad_id).unwrap().is_none());
    assert_eq!(store.list().unwrap().len(), 2);
    ctx.audit.as_ref().unwrap().close().await.unwrap();
    let failed_verifications = std::fs::read_to_string(&audit_path)
        .unwrap()
        .matches("\"verify.failed\"")
        .count();
    assert_eq!(
        failed_verifications, 1,
        "the damaged archive was pulled only once"
    );
}

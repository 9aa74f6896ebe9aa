//! Every kind of install, full cycles: Home Assistant OS / Supervised (the simulator's Supervisor
//! personality: agent `hassio.local`, job ids, `<slug>.tar` files of add-on updates) and Core, over
//! SFTP (a real OpenSSH sshd serving the backups folder) and over Home Assistant's own HTTP download.
//! What a user would check: the store holds backup ids (never job ids), HA keeps exactly `keep_on_ha`
//! of hapull's backups and every backup someone else made, and a cut download still commits.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hapull::audit::{AuditLog, AuditOptions};
use hapull::config::{BackupMode, VerifyLevel};
use hapull::cycle::{Context, Settings, Source};
use hapull::ha::{Client, ClientOptions, Endpoint};
use hapull::secret::Secret;
use hapull::sim::{Sim, SimOptions, SimVersion};
use hapull::store::{RetentionPolicy, Store};
use hapull::transfer::{HostKeyPolicy, HttpTarget, PullOptions, SshTarget};
use support::sshd::Sshd;

struct Rig {
    sim: Sim,
    sshd: Option<Sshd>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    store_dir: std::path::PathBuf,
    audit_path: std::path::PathBuf,
}

async fn rig(version: SimVersion, sftp: bool, payload_bytes: u64) -> Rig {
    let ha_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(ha_dir.path());
    opts.version = version;
    opts.stage_duration = Duration::from_millis(40);
    opts.payload_bytes = payload_bytes;
    let sim = Sim::start(opts).await.unwrap();
    Rig {
        sim,
        sshd: sftp.then(Sshd::start),
        store_dir: store_dir.path().join("archives"),
        audit_path: store_dir.path().join("audit.jsonl"),
        _dirs: (ha_dir, store_dir),
    }
}

async fn context(rig: &Rig, keep_on_ha: u32) -> Context {
    let mut o = ClientOptions::new(
        Endpoint::parse(&rig.sim.url()).unwrap(),
        Secret::new("sim-token"),
        None,
    )
    .unwrap();
    o.request_timeout = Duration::from_secs(10);
    let client = Client::connect(o).await.unwrap();
    let source = match &rig.sshd {
        Some(sshd) => {
            let ssh = SshTarget {
                host: "127.0.0.1".into(),
                port: sshd.port,
                user: sshd.user.clone(),
                identity_file: sshd.client_key.clone(),
                passphrase: None,
                host_keys: HostKeyPolicy::KnownHosts {
                    path: sshd.write_known_hosts(sshd.port),
                    trust_on_first_use: false,
                },
            };
            let identity = hapull::transfer::load_identity(&ssh.identity_file, None).unwrap();
            Source::Sftp { ssh, identity }
        }
        None => Source::Http {
            target: HttpTarget {
                tls: None,
                host: "127.0.0.1".into(),
                port: rig.sim.addr().port(),
                token: Secret::new("sim-token"),
                connect_timeout: Duration::from_secs(5),
                read_timeout: Duration::from_secs(10),
            },
            prefix: String::new(),
        },
    };
    let mut pull = PullOptions {
        retry_budget: 2,
        min_backoff: Duration::from_millis(50),
        ..PullOptions::default()
    };
    pull.free_space_margin = 0;
    let audit = AuditLog::open(AuditOptions::new(&rig.audit_path, "test"))
        .await
        .unwrap();
    Context {
        client,
        source,
        store: Arc::new(Store::open(&rig.store_dir).unwrap()),
        audit: Some(audit),
        settings: Settings {
            mode: BackupMode::Api,
            shell_command: "delete_backups".into(),
            agent_id: None,
            name_template: "hapull {date}".into(),
            include_database: true,
            password: None,
            keep_on_ha,
            prune_foreign: false,
            timeout: Duration::from_secs(30),
            blocked_timeout: Duration::from_secs(5),
            remote_dir: rig.sim.backup_dir().display().to_string(),
            verify: VerifyLevel::Full,
            retention: RetentionPolicy::default(),
            timezone: jiff::tz::TimeZone::UTC,
            pull,
        },
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

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// The job ids `backup/generate` answered, as the simulator received and sent them.
fn job_ids(rig: &Rig) -> Vec<String> {
    let text = std::fs::read_to_string(&rig.audit_path).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "backup.created")
        .filter_map(|r| r["data"]["job_id"].as_str().map(str::to_string))
        .collect()
}

/// Two cycles with `keep_on_ha = 1` beside an add-on update's backup and a backup made in HA's UI.
async fn supervisor_cycles(rig: &Rig) {
    let addon = rig
        .sim
        .control()
        .add_foreign_backup("addon_core_ssh_9.15.0")
        .unwrap();
    let ui = rig
        .sim
        .control()
        .add_foreign_backup("Full backup 2026-11-30")
        .unwrap();
    let ctx = context(rig, 1).await;
    let first = ctx.run_cycle().await.unwrap();
    let second = ctx.run_cycle().await.unwrap();

    // Backup ids, never the Supervisor's job ids, everywhere hapull records them.
    let jobs = job_ids(rig);
    assert_eq!(jobs.len(), 2, "one job per cycle");
    for job in &jobs {
        assert_eq!(job.len(), 32, "a Supervisor job id: {job}");
    }
    for report in [&first, &second] {
        assert_eq!(
            report.backup_id.len(),
            8,
            "a Supervisor slug: {}",
            report.backup_id
        );
        assert!(!jobs.contains(&report.backup_id));
        assert_eq!(report.archive.manifest.backup_id, report.backup_id);
    }
    let store = Store::open(&rig.store_dir).unwrap();
    let mut stored: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.manifest.backup_id)
        .collect();
    stored.sort();
    let mut expected = vec![first.backup_id.clone(), second.backup_id.clone()];
    expected.sort();
    assert_eq!(stored, expected);
    let made = std::fs::read_to_string(rig.store_dir.join(".hapull-made.json")).unwrap();
    for job in &jobs {
        assert!(
            !made.contains(job.as_str()),
            "job id in hapull's list: {made}"
        );
    }
    let audit = std::fs::read_to_string(&rig.audit_path).unwrap();
    assert_eq!(audit.matches("\"kind\":\"backup.identified\"").count(), 2);

    // Byte-exact, with the Supervisor's extra members accepted and verified.
    let ha_file = rig.sim.archive_path(&second.backup_id).unwrap();
    assert_eq!(file_bytes(&second.archive.path), file_bytes(&ha_file));
    let mut tar = tar::Archive::new(std::fs::File::open(&second.archive.path).unwrap());
    let names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            String::from_utf8_lossy(&e.path_bytes()).into_owned()
        })
        .collect();
    for member in ["./supervisor.tar.gz", "./core_ssh.tar.gz", "./share.tar.gz"] {
        assert!(names.iter().any(|n| n == member), "{member} in {names:?}");
    }

    // HA keeps exactly keep_on_ha of hapull's backups and everything it did not make.
    assert_eq!(second.deleted_on_ha, vec![first.backup_id.clone()]);
    let mut in_ha = ha_ids(&rig.sim);
    in_ha.sort();
    let mut want = vec![second.backup_id.clone(), addon, ui];
    want.sort();
    assert_eq!(in_ha, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_install_over_sftp_full_cycles() {
    let rig = rig(SimVersion::Supervisor, true, 0).await;
    supervisor_cycles(&rig).await;
    let asked = rig
        .sim
        .received()
        .iter()
        .filter(|r| r.frame["type"] == "supervisor/api")
        .count();
    assert!(asked >= 2, "the job reference was asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_install_over_http_full_cycles() {
    let rig = rig(SimVersion::Supervisor, false, 0).await;
    supervisor_cycles(&rig).await;
    let (downloads, ranged) = rig.sim.control().downloads();
    assert_eq!((downloads, ranged), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_from_hassio_local_starts_over_and_commits() {
    let rig = rig(SimVersion::Supervisor, false, 3 << 20).await;
    rig.sim.control().cut_next_download(1 << 20);
    let ctx = context(&rig, 1).await;
    let report = ctx.run_cycle().await.unwrap();
    assert_eq!(report.pull.attempts, 2);
    assert_eq!(report.pull.resumed_bytes, 0, "no Range on a stream");
    assert_eq!(rig.sim.control().downloads(), (2, 0));
    let ha_file = rig.sim.archive_path(&report.backup_id).unwrap();
    assert_eq!(file_bytes(&report.archive.path), file_bytes(&ha_file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_from_backup_local_resumes_with_range_and_commits() {
    let rig = rig(SimVersion::Current, false, 3 << 20).await;
    rig.sim.control().cut_next_download(1 << 20);
    let ctx = context(&rig, 1).await;
    let report = ctx.run_cycle().await.unwrap();
    assert_eq!(report.pull.attempts, 2);
    assert_eq!(report.pull.resumed_bytes, 1 << 20);
    assert_eq!(rig.sim.control().downloads(), (2, 1));
    let ha_file = rig.sim.archive_path(&report.backup_id).unwrap();
    assert_eq!(file_bytes(&report.archive.path), file_bytes(&ha_file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_over_http_commits_and_cleans_up() {
    let rig = rig(SimVersion::Legacy, false, 0).await;
    let ctx = context(&rig, 1).await;
    let first = ctx.run_cycle().await.unwrap();
    let second = ctx.run_cycle().await.unwrap();
    assert_eq!(ha_ids(&rig.sim), vec![second.backup_id.clone()]);
    assert_eq!(second.deleted_on_ha, vec![first.backup_id]);
    let ha_file = rig.sim.archive_path(&second.backup_id).unwrap();
    assert_eq!(file_bytes(&second.archive.path), file_bytes(&ha_file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_over_http_is_refused_without_retrying() {
    let rig = rig(SimVersion::Current, false, 0).await;
    let mut ctx = context(&rig, 1).await;
    if let Source::Http { target, .. } = &mut ctx.source {
        target.token = Secret::new("not-the-token");
    }
    let err = ctx.run_cycle().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("HTTP 401") && text.contains("administrator"),
        "{text}"
    );
    assert!(!text.contains("not-the-token"), "the token leaked: {text}");
    assert_eq!(rig.sim.control().downloads(), (0, 0));
    // The backup stays in HA: nothing is deleted without a local copy.
    assert_eq!(ha_ids(&rig.sim).len(), 1);
}

//! Every kind of install, full cycles: Home Assistant OS / Supervised (the simulator's Supervisor
//! personality: agent `hassio.local`, job ids, `<slug>.tar` files of add-on updates) and Core, over
//! SFTP (a real OpenSSH sshd serving the backups folder) and over Home Assistant's own HTTP download.
//! What a user would check: the store holds backup ids (never job ids), HA keeps exactly `keep_on_ha`
//! of hapull's backups and every backup someone else made, and a cut download still commits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::sshd::Sshd;
use hapull::audit::{AuditLog, AuditOptions};
use hapull::config::{Backup, VerifyLevel};
use hapull::cycle::{Context, Settings, Source};
use hapull::ha::{Client, ClientOptions, Endpoint};
use hapull::secret::Secret;
use hapull::store::{RetentionPolicy, Store};
use hapull::transfer::{HostKeyPolicy, HttpTarget, PullOptions, SshTarget};
use hapull_sim::{Sim, SimOptions, SimVersion};

pub(crate) struct Rig {
    pub(crate) sim: Sim,
    pub(crate) sshd: Option<Sshd>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    pub(crate) store_dir: std::path::PathBuf,
    pub(crate) audit_path: std::path::PathBuf,
}

pub(crate) async fn rig(version: SimVersion, sftp: bool, payload_bytes: u64) -> Rig {
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

pub(crate) async fn context(rig: &Rig, keep_on_ha: u32) -> Context {
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
            backup: Backup {
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

pub(crate) fn ha_ids(sim: &Sim) -> Vec<String> {
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

fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        // A self-signed server certificate must not claim to be a CA (webpki refuses that).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed for the TLS tests");
    assert!(status.success());
    (cert, key)
}

/// An HTTPS server that answers every request with `response` and closes.
async fn https_server(cert: &Path, key: &Path, response: Vec<u8>) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let response = Arc::new(response);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, response) = (acceptor.clone(), response.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn https_target(host: &str, port: u16, ca_file: &Path) -> HttpTarget {
    HttpTarget {
        tls: Some(Arc::new(hapull::ha::tls_config(Some(ca_file)).unwrap())),
        host: host.into(),
        port,
        token: Secret::new("tls-token"),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_downloads_with_ca_file_and_refuses_a_certificate_for_another_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "localhost");
    let body = b"0123456789abcdef".repeat(1000);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"x\"\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let port = https_server(&cert, &key, response).await;
    let opts = PullOptions {
        retry_budget: 3,
        min_backoff: Duration::from_millis(10),
        free_space_margin: 0,
        ..PullOptions::default()
    };

    // The name the certificate was issued for, trusted through ca_file: the bytes arrive intact.
    let local = dir.path().join("ok.tar");
    let ok = hapull::transfer::download(
        &https_target("localhost", port, &cert),
        "/api/backup/download/abc?agent_id=backup.local",
        &local,
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&local).unwrap(), body);
    assert_eq!(ok.size, body.len() as u64);

    // Another name for the same server: refused at once, with what to change.
    let local = dir.path().join("mismatch.tar");
    let err = hapull::transfer::download(
        &https_target("127.0.0.1", port, &cert),
        "/api/backup/download/abc?agent_id=backup.local",
        &local,
        &opts,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(text.contains("not issued for this host name"), "{text}");
    assert!(
        text.contains("home_assistant.url") && text.contains("ca_file"),
        "{text}"
    );
    assert!(!local.exists() && !dir.path().join("mismatch.tar.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "localhost");
    let response =
        b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/steal\r\nContent-Length: 0\r\n\r\n"
            .to_vec();
    let port = https_server(&cert, &key, response).await;
    let err = hapull::transfer::download(
        &https_target("localhost", port, &cert),
        "/api/backup/download/abc",
        &dir.path().join("r.tar"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(
        text.contains("not followed") && text.contains("elsewhere.example"),
        "{text}"
    );
}

#[test]
fn demo_supervisor_runs_full_cycles_over_sftp_and_http() {
    for extra in [&[][..], &["--http"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hapull"))
            .args([
                "demo",
                "--supervisor",
                "--cycles",
                "2",
                "--size-mib",
                "1",
                "--dir",
            ])
            .arg(dir.path().join("demo"))
            .args(extra)
            .env("HAPULL_CONFIG", "/nonexistent/hapull.toml")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{extra:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert_eq!(stdout.matches("demo:   committed ").count(), 2, "{stdout}");
        assert_eq!(stdout.matches("deleted backup ").count(), 1, "{stdout}");
        assert!(
            stdout.contains("still in Home Assistant, untouched"),
            "{stdout}"
        );
        assert!(stdout.contains("chain intact"), "{stdout}");
        let config = std::fs::read_to_string(dir.path().join("demo/hapull.toml")).unwrap();
        assert_eq!(config.contains("[ssh]"), extra.is_empty(), "{config}");
    }
}

#[test]
fn init_for_home_assistant_os_writes_an_http_config_without_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hapull"))
        .args([
            "init",
            "--install",
            "os",
            "--ha-url",
            "https://ha.example:8123",
            "--dir",
        ])
        .arg(dir.path().join("etc"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Home Assistant OS") && stdout.contains("Nothing else to install"),
        "{stdout}"
    );
    assert!(!stdout.contains("sshd_config"), "{stdout}");
    std::fs::write(dir.path().join("etc/ha_token"), "t\n").unwrap();
    let cfg = hapull::config::load(&dir.path().join("etc/hapull.toml"))
        .unwrap()
        .config;
    assert_eq!(cfg.transfer.via, hapull::config::Via::Http);
    assert!(cfg.ssh.is_none(), "[ssh] is commented out");
    assert_eq!(cfg.home_assistant.endpoint.host(), "ha.example");
}

//! Offsite copies through the real rclone, against real servers started here on loopback
//! (`rclone serve sftp`, `rclone serve webdav`, OpenSSH's sftp with deletions denied) and a local-path
//! remote. What a user checks: the archive is on the remote byte for byte, the proof named is the one
//! the remote can give, a copy that differs is reported and not counted, retention keeps the newest
//! and deletes only what hapull uploaded, and a write-only target never fails a run.
//!
//! rclone must be installed (`apt-get install rclone`; `scripts/test` does it).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hapull::offsite::{Target, TargetConfig};
use hapull::store::{CommitInfo, RetentionPolicy, Store, StoredArchive, Verify};
use jiff::tz::TimeZone;

// ---------------------------------------------------------------------------------------------
// Archives in a real store

fn raw_member(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_764_148_059);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A Home Assistant archive with `payload` bytes of incompressible data inside.
fn ha_archive(slug: &str, payload: usize) -> Vec<u8> {
    let json = serde_json::to_vec(&serde_json::json!({
        "compressed": true, "date": "2026-11-26T09:07:39.253410+00:00",
        "homeassistant": {"exclude_database": false, "version": "2026.11.0"},
        "name": format!("backup {slug}"), "protected": false, "slug": slug, "type": "partial", "version": 2,
    }))
    .unwrap();
    let mut noise = vec![0u8; payload];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ slug.len() as u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut inner = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(noise.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    inner
        .append_data(&mut h, "data/home-assistant_v2.db", &noise[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&inner.into_inner().unwrap()).unwrap();
    let mut outer = tar::Builder::new(Vec::new());
    raw_member(&mut outer, "./backup.json", &json);
    raw_member(&mut outer, "./homeassistant.tar.gz", &gz.finish().unwrap());
    outer.into_inner().unwrap()
}

fn commit(store: &Store, slug: &str, payload: usize, pulled_at: &str) -> StoredArchive {
    let bytes = ha_archive(slug, payload);
    let path = store.incoming_path(slug).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let mut sha = [0u8; 32];
    sha.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref());
    store
        .commit(
            &path,
            &CommitInfo {
                backup_id: slug.into(),
                size: bytes.len() as u64,
                sha256: sha,
                pulled_at: pulled_at.parse().unwrap(),
                source_host: "ha.test".into(),
                source_path: format!("/backups/{slug}.tar"),
                verify: Verify::Structure,
                password: None,
                verified: None,
            },
        )
        .unwrap()
}

fn sha256_file(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn target(name: &str, remote: &str, conf: Option<&Path>) -> TargetConfig {
    TargetConfig {
        name: name.into(),
        remote: remote.into(),
        rclone: "rclone".into(),
        rclone_config: conf.map(Path::to_path_buf),
        retention: RetentionPolicy::default(),
        bandwidth_limit: None,
        timeout: Duration::from_secs(120),
        fail_cycle: false,
        download_back: false,
    }
}

fn obscure(pass: &str) -> String {
    let out = Command::new("rclone")
        .args(["obscure", pass])
        .output()
        .expect("rclone must be installed (apt-get install rclone)");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// rclone's own servers

struct Served {
    child: Child,
    port: u16,
    _cache: tempfile::TempDir,
}

impl Served {
    /// `rclone serve <kind>` of `dir` on a free loopback port; returns once it says it listens.
    fn start(kind: &str, dir: &Path) -> Served {
        let cache = tempfile::tempdir().unwrap();
        let mut child = Command::new("rclone")
            .args([
                "serve",
                kind,
                "-v",
                "--addr",
                "127.0.0.1:0",
                "--user",
                "u",
                "--pass",
                "secret-pass",
            ])
            .arg(dir)
            .args(["--config", "/dev/null", "--cache-dir"])
            .arg(cache.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rclone must be installed (apt-get install rclone)");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("rclone serve {kind} exited before listening"))
                .unwrap();
            if line.contains("listening on") || line.contains("Server started on") {
                let addr = line.rsplit("127.0.0.1:").next().unwrap();
                let digits: String = addr.chars().take_while(char::is_ascii_digit).collect();
                break digits.parse::<u16>().unwrap();
            }
        };
        // Keep draining its log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served {
            child,
            port,
            _cache: cache,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_conf(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("rclone.conf");
    std::fs::write(&p, body).unwrap();
    p
}

fn sftp_conf(dir: &Path, port: u16) -> PathBuf {
    write_conf(
        dir,
        &format!(
            "[served]\ntype = sftp\nhost = 127.0.0.1\nport = {port}\nuser = u\npass = {}\n",
            obscure("secret-pass")
        ),
    )
}

// ---------------------------------------------------------------------------------------------

/// rclone's sftp backend gives SHA-1 (and MD5) for a server that runs the hash commands:
/// the strongest, SHA-1, is the proof; the served file is the local archive byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_remote_is_proven_by_its_sha1() {
    let tmp = tempfile::tempdir().unwrap();
    let served_dir = tmp.path().join("served");
    std::fs::create_dir(&served_dir).unwrap();
    let server = Served::start("sftp", &served_dir);
    let conf = sftp_conf(tmp.path(), server.port);
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let a = commit(&store, "aaaa1111", 200_000, "2026-11-26T10:00:00Z");
    let t = Target::new(target("box", "served:ha", Some(&conf)));

    let r = t.sync(store.clone(), &TimeZone::UTC, None).await;
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.proof.as_deref(), Some("sha1"));
    assert_eq!(r.uploaded.len(), 1);
    assert_eq!(r.uploaded[0].proof, "sha1");
    assert_eq!((r.lag_archives, r.lag_bytes), (0, 0));
    assert!(r.last_success.is_some());
    let remote = served_dir.join("ha").join(&a.relative_path);
    assert_eq!(sha256_file(&remote), a.manifest.sha256);
    assert!(
        served_dir
            .join("ha")
            .join(a.relative_path.replace(".tar", ".json"))
            .exists()
    );

    // A second run has nothing to do.
    let again = t.sync(store.clone(), &TimeZone::UTC, None).await;
    assert!(again.ok() && again.uploaded.is_empty(), "{again:?}");
}

/// WebDAV (vendor "other") has no hash: proven by reading the copy back with `download_back`, and
/// named `size` (not more) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_remote_without_hash_is_read_back_or_named_size_only() {
    let tmp = tempfile::tempdir().unwrap();
    let served_dir = tmp.path().join("dav");
    std::fs::create_dir(&served_dir).unwrap();
    let server = Served::start("webdav", &served_dir);
    let conf = write_conf(
        tmp.path(),
        &format!(
            "[dav]\ntype = webdav\nurl = http://127.0.0.1:{}/\nvendor = other\nuser = u\npass = {}\n",
            server.port,
            obscure("secret-pass")
        ),
    );
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let a = commit(&store, "bbbb2222", 150_000, "2026-11-26T10:00:00Z");

    let mut cfg = target("dav", "dav:copies", Some(&conf));
    cfg.download_back = true;
    let r = Target::new(cfg)
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.uploaded[0].proof, "download");
    assert_eq!(
        sha256_file(&served_dir.join("copies").join(&a.relative_path)),
        a.manifest.sha256
    );
    let ledger = Target::new(target("dav", "dav:copies", Some(&conf)))
        .ledger(&store)
        .unwrap();
    assert_eq!(ledger.copies[0].proof_value, a.manifest.sha256);

    // Without download_back the same remote gives a size-only proof, and says so.
    let b = commit(&store, "cccc3333", 150_000, "2026-11-26T11:00:00Z");
    let r = Target::new(target("dav2", "dav:other", Some(&conf)))
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.proof.as_deref(), Some("size"));
    assert!(r.uploaded.iter().all(|p| p.proof == "size"));
    assert!(
        r.uploaded
            .iter()
            .any(|p| p.backup_id == b.manifest.backup_id)
    );
}

/// The server dies during the upload: the run reports it, nothing is counted, the lag says what is
/// missing; the next run (server back) completes it and proves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_is_completed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let served_dir = tmp.path().join("served");
    std::fs::create_dir(&served_dir).unwrap();
    let mut server = Served::start("sftp", &served_dir);
    let conf = sftp_conf(tmp.path(), server.port);
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let a = commit(&store, "dddd4444", 6 << 20, "2026-11-26T10:00:00Z");
    let mut cfg = target("box", "served:ha", Some(&conf));
    // Slow enough that the upload is still going when the server is killed; and rclone gives up
    // at once instead of retrying against a server that is gone.
    cfg.bandwidth_limit = Some(512 << 10);
    let impatient = tmp.path().join("rclone-impatient");
    std::fs::write(
        &impatient,
        "#!/bin/sh\nexec rclone --retries 1 --low-level-retries 1 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &impatient,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    cfg.rclone = impatient;
    let t = Target::new(cfg);

    let remote = served_dir.join("ha").join(&a.relative_path);
    let run = {
        let (t, store) = (t.clone(), store.clone());
        tokio::spawn(async move { t.sync(store, &TimeZone::UTC, None).await })
    };
    // Kill the server once the upload has written part of the file.
    let watched = remote.clone();
    tokio::task::spawn_blocking(move || {
        while std::fs::metadata(&watched).map(|m| m.len()).unwrap_or(0) == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    server.kill();
    let r = run.await.unwrap();
    assert!(!r.ok(), "the run must report the cut upload");
    assert!(r.uploaded.is_empty());
    assert_eq!(r.lag_archives, 1);
    assert_eq!(r.lag_bytes, a.manifest.size);
    assert!(
        std::fs::metadata(&remote).unwrap().len() < a.manifest.size,
        "the remote holds a partial file"
    );
    assert!(
        t.ledger(&store).unwrap().copies.is_empty(),
        "a partial upload is not counted"
    );

    let server = Served::start("sftp", &served_dir);
    let conf = sftp_conf(tmp.path(), server.port);
    let r = Target::new(target("box", "served:ha", Some(&conf)))
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.uploaded.len(), 1);
    assert_eq!(r.lag_archives, 0);
    assert_eq!(sha256_file(&remote), a.manifest.sha256);
}

/// A remote that accepts the upload but holds other bytes (here rclone is wrapped so that each
/// uploaded archive is damaged on the remote right after rclone wrote it): the remote's hash differs,
/// the copy is uploaded once more, still differs, and is reported — not counted, not in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_copy_with_a_different_hash_is_reported_not_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let remote_dir = tmp.path().join("remote");
    let wrapper = tmp.path().join("rclone-damaging");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nrclone \"$@\" || exit $?\n\
         for last; do :; done\n\
         if [ \"$1\" = copyto ] || [ \"$2\" = copyto ] || [ \"$3\" = copyto ]; then\n\
           case \"$last\" in *.tar) printf 'X' | dd of=\"$last\" bs=1 seek=700 conv=notrunc 2>/dev/null;; esac\n\
         fi\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let a = commit(&store, "eeee5555", 100_000, "2026-11-26T10:00:00Z");
    let audit_path = tmp.path().join("audit.jsonl");
    let audit =
        hapull::audit::AuditLog::open(hapull::audit::AuditOptions::new(&audit_path, "test"))
            .await
            .unwrap();
    let mut cfg = target("local", remote_dir.to_str().unwrap(), None);
    cfg.rclone = wrapper.clone();
    let t = Target::new(cfg);

    let r = t.sync(store.clone(), &TimeZone::UTC, Some(&audit)).await;
    audit.close().await.unwrap();
    assert_eq!(r.proof.as_deref(), Some("sha256"));
    assert!(r.uploaded.is_empty());
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    let (id, err) = &r.failures[0];
    assert_eq!(id.as_deref(), Some("eeee5555"));
    assert!(
        err.contains("does not match") && err.contains("sha256"),
        "{err}"
    );
    assert!(
        err.contains(&a.manifest.sha256),
        "names the expected hash: {err}"
    );
    assert_eq!(r.lag_archives, 1);
    assert!(t.ledger(&store).unwrap().copies.is_empty());
    assert!(r.last_success.is_none());
    let log = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        log.contains("offsite.failed") && !log.contains("offsite.proven"),
        "{log}"
    );
}

/// Offsite retention: keeps the newest, deletes what its rules drop among what hapull uploaded, and
/// never touches a file it did not upload. With the newest offsite copy missing from the local store,
/// it deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_and_deletes_only_its_own_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let remote_dir = tmp.path().join("remote");
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let old = commit(&store, "ffff0001", 50_000, "2026-11-24T10:00:00Z");
    let mid = commit(&store, "ffff0002", 50_000, "2026-11-25T10:00:00Z");
    let new = commit(&store, "ffff0003", 50_000, "2026-11-26T10:00:00Z");
    let remote = remote_dir.to_str().unwrap().to_string();

    let r = Target::new(target("usb", &remote, None))
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.uploaded.len(), 3);
    // Someone else's file in the same place.
    let foreign = remote_dir.join(old.relative_path.replace("ffff0001", "someone-elses"));
    std::fs::write(&foreign, b"not hapull's").unwrap();

    let mut cfg = target("usb", &remote, None);
    cfg.retention = RetentionPolicy {
        keep_last: 1,
        ..RetentionPolicy::default()
    };
    let t = Target::new(cfg);
    let r = t.sync(store.clone(), &TimeZone::UTC, None).await;
    assert!(r.ok(), "{:?}", r.failures);
    let mut deleted = r.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, vec!["ffff0001", "ffff0002"]);
    assert!(
        remote_dir.join(&new.relative_path).exists(),
        "the newest stays"
    );
    assert!(!remote_dir.join(&old.relative_path).exists());
    assert!(!remote_dir.join(&mid.relative_path).exists());
    assert!(
        !remote_dir
            .join(mid.relative_path.replace(".tar", ".json"))
            .exists()
    );
    assert!(
        foreign.exists(),
        "a file hapull did not upload is never deleted"
    );
    let ledger = t.ledger(&store).unwrap();
    assert_eq!(ledger.copies.len(), 1);

    // The local store loses the newest archive and a newer one arrives: it is uploaded and proven,
    // becomes the newest remote copy held locally, and the older one goes by the rules.
    store.remove(&new).unwrap();
    commit(&store, "ffff0004", 50_000, "2026-11-27T10:00:00Z");
    let r = t.sync(store.clone(), &TimeZone::UTC, None).await;
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.deleted, vec!["ffff0003"]);

    store
        .remove(&store.find("ffff0004").unwrap().unwrap())
        .unwrap();
    commit(&store, "ffff0005", 50_000, "2026-11-28T10:00:00Z");
    let mut cfg = target("usb", &remote, None);
    cfg.retention = RetentionPolicy {
        keep_last: 1,
        ..RetentionPolicy::default()
    };
    // rclone missing: a clear error naming the install command, and the ledger untouched.
    cfg.rclone = tmp.path().join("no-such-rclone");
    let r = Target::new(cfg)
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert!(!r.ok());
    assert!(
        r.failures[0].1.contains("apt-get install rclone"),
        "{:?}",
        r.failures
    );
    let remaining = Target::new(target("usb", &remote, None))
        .ledger(&store)
        .unwrap();
    assert_eq!(remaining.copies.len(), 1);
    assert_eq!(remaining.copies[0].manifest.backup_id, "ffff0004");
}

/// The guard alone: the newest remote copy is not held locally, the rules would delete an older
/// one, and nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_deleted_offsite_while_the_newest_copy_is_missing_locally() {
    let tmp = tempfile::tempdir().unwrap();
    let remote_dir = tmp.path().join("remote");
    let remote = remote_dir.to_str().unwrap().to_string();
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let old = commit(&store, "gggg0001", 50_000, "2026-11-24T10:00:00Z");
    let new = commit(&store, "gggg0002", 50_000, "2026-11-25T10:00:00Z");
    let r = Target::new(target("usb", &remote, None))
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert_eq!(r.uploaded.len(), 2);
    store.remove(&new).unwrap();
    let mut cfg = target("usb", &remote, None);
    cfg.retention = RetentionPolicy {
        keep_last: 1,
        ..RetentionPolicy::default()
    };
    let r = Target::new(cfg)
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert!(r.deleted.is_empty(), "{r:?}");
    assert!(
        r.retention_waits
            .as_deref()
            .unwrap_or_default()
            .contains("gggg0002"),
        "{r:?}"
    );
    assert!(remote_dir.join(&old.relative_path).exists());
}

/// A target whose account may write but not delete (OpenSSH's sftp server with removals denied, as
/// for a ransomware-proof SFTP box): uploads work, retention's refused deletions are reported once,
/// never fail the run, and are not tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_only_target_refusals_are_reported_once_and_never_fail() {
    let sshd = crate::support::sshd::Sshd::start_with(
        "ed25519",
        "Subsystem sftp internal-sftp -P remove,rmdir\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let remote_dir = sshd.remote_dir();
    let conf = write_conf(
        tmp.path(),
        &format!(
            "[box]\ntype = sftp\nhost = 127.0.0.1\nport = {}\nuser = {}\nkey_file = {}\n",
            sshd.port,
            sshd.user,
            sshd.client_key.display()
        ),
    );
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let old = commit(&store, "hhhh0001", 50_000, "2026-11-24T10:00:00Z");
    let new = commit(&store, "hhhh0002", 50_000, "2026-11-25T10:00:00Z");
    let remote = format!("box:{}", remote_dir.display());

    let r = Target::new(target("wo", &remote, Some(&conf)))
        .sync(store.clone(), &TimeZone::UTC, None)
        .await;
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.uploaded.len(), 2);

    let mut cfg = target("wo", &remote, Some(&conf));
    cfg.retention = RetentionPolicy {
        keep_last: 1,
        ..RetentionPolicy::default()
    };
    cfg.fail_cycle = true;
    let t = Target::new(cfg);
    let r = t.sync(store.clone(), &TimeZone::UTC, None).await;
    assert!(
        r.ok(),
        "a refused deletion is not a failure: {:?}",
        r.failures
    );
    assert_eq!(r.refused, vec!["hhhh0001"]);
    assert!(r.deleted.is_empty());
    assert!(remote_dir.join(&old.relative_path).exists());
    assert!(remote_dir.join(&new.relative_path).exists());
    let ledger = t.ledger(&store).unwrap();
    assert!(
        ledger
            .copies
            .iter()
            .any(|c| c.manifest.backup_id == "hhhh0001" && c.delete_refused_at.is_some())
    );

    let again = t.sync(store.clone(), &TimeZone::UTC, None).await;
    assert!(again.ok(), "{:?}", again.failures);
    assert!(again.refused.is_empty(), "reported once: {again:?}");
}

/// A connection-string remote carries its password on the command line, and rclone repeats it in
/// its errors: hapull's report, error and audit record show it blanked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_a_remote_never_reach_errors_or_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = obscure("hunter2-very-secret");
    // Port 1 on loopback: nothing listens, rclone fails and names the remote.
    let remote = format!(":sftp,host=127.0.0.1,port=1,user=u,pass={secret}:ha");
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    commit(&store, "iiii0001", 10_000, "2026-11-26T10:00:00Z");
    let audit_path = tmp.path().join("audit.jsonl");
    let audit =
        hapull::audit::AuditLog::open(hapull::audit::AuditOptions::new(&audit_path, "test"))
            .await
            .unwrap();
    let mut cfg = target("cs", &remote, None);
    cfg.timeout = Duration::from_secs(60);
    let t = Target::new(cfg);
    let r = t.sync(store.clone(), &TimeZone::UTC, Some(&audit)).await;
    audit.close().await.unwrap();
    assert!(!r.ok());
    let text = format!("{r:?}");
    assert!(!text.contains(&secret), "{text}");
    assert!(
        text.contains("***"),
        "the error still says which remote: {text}"
    );
    let log = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        log.contains("offsite.failed") && !log.contains(&secret),
        "{log}"
    );
    let ledger = std::fs::read_to_string(tmp.path().join("store/.hapull-offsite/cs.json"))
        .unwrap_or_default();
    assert!(!ledger.contains(&secret));
}

// ---------------------------------------------------------------------------------------------
// A whole cycle, and what `hapull list --offsite` shows

mod cycle_rig {
    use super::*;
    use crate::support::sshd::Sshd;
    use hapull::config::{Backup, VerifyLevel};
    use hapull::cycle::{Context, Settings, Source};
    use hapull::ha::{Client, ClientOptions, Endpoint};
    use hapull::secret::Secret;
    use hapull::transfer::{HostKeyPolicy, PullOptions, SshTarget};
    use hapull_sim::{Sim, SimOptions, SimVersion};

    /// A backup cycle against the simulated Home Assistant (WebSocket side) and a real sshd, with an
    /// `[[offsite]]` target served by `rclone serve sftp`; then the CLI lists both sides.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cycle_copies_and_proves_its_archive_offsite_and_list_shows_it() {
        let sshd = Sshd::start();
        let tmp = tempfile::tempdir().unwrap();
        let ha_dir = tmp.path().join("ha");
        std::fs::create_dir(&ha_dir).unwrap();
        let mut opts = SimOptions::new(&ha_dir);
        opts.version = SimVersion::Current;
        opts.stage_duration = Duration::from_millis(50);
        let sim = Sim::start(opts).await.unwrap();
        let served_dir = tmp.path().join("served");
        std::fs::create_dir(&served_dir).unwrap();
        let server = Served::start("sftp", &served_dir);
        let conf = sftp_conf(tmp.path(), server.port);
        let store_dir = tmp.path().join("store");
        let audit_path = tmp.path().join("audit.jsonl");
        let audit =
            hapull::audit::AuditLog::open(hapull::audit::AuditOptions::new(&audit_path, "test"))
                .await
                .unwrap();

        let mut co = ClientOptions::new(
            Endpoint::parse(&sim.url()).unwrap(),
            Secret::new("sim-token"),
            None,
        )
        .unwrap();
        co.request_timeout = Duration::from_secs(10);
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
        let pull = PullOptions {
            free_space_margin: 0,
            ..PullOptions::default()
        };
        let ctx = Context {
            client: Client::connect(co).await.unwrap(),
            source: Source::Sftp {
                identity: hapull::transfer::load_identity(&ssh.identity_file, None).unwrap(),
                ssh,
            },
            store: Arc::new(Store::open(&store_dir).unwrap()),
            audit: Some(audit.clone()),
            settings: Settings {
                backup: Backup {
                    name: "hapull {date}".into(),
                    timeout: Duration::from_secs(30),
                    blocked_timeout: Duration::from_secs(5),
                    ..Backup::default()
                },
                remote_dir: sim.backup_dir().display().to_string(),
                verify: VerifyLevel::Full,
                retention: RetentionPolicy::default(),
                timezone: TimeZone::UTC,
                pull,
            },
            offsite: vec![Target::new(target("box", "served:ha", Some(&conf)))],
        };
        let report = ctx.run_cycle().await.unwrap();
        audit.close().await.unwrap();
        assert_eq!(report.offsite.len(), 1);
        let o = &report.offsite[0];
        assert!(o.ok(), "{:?}", o.failures);
        assert_eq!(o.uploaded.len(), 1);
        assert_eq!(o.uploaded[0].backup_id, report.backup_id);
        assert_eq!(o.uploaded[0].proof, "sha1");
        let remote = served_dir.join("ha").join(&report.archive.relative_path);
        assert_eq!(sha256_file(&remote), report.archive.manifest.sha256);
        assert_eq!(sha256_file(&remote), sha256_file(&report.archive.path));
        let log = std::fs::read_to_string(&audit_path).unwrap();
        assert!(
            log.contains("\"archive.committed\"") && log.contains("\"offsite.proven\""),
            "{log}"
        );

        // The CLI, from a config file like a user's.
        let token = tmp.path().join("token");
        std::fs::write(&token, "sim-token").unwrap();
        let config = tmp.path().join("hapull.toml");
        std::fs::write(
            &config,
            format!(
                "[home_assistant]\nurl = \"{}\"\ntoken_file = \"{}\"\n\n[store]\ndir = \"{}\"\n\n\
                 [[offsite]]\nname = \"box\"\nremote = \"served:ha\"\nconfig = \"{}\"\n",
                sim.url(),
                token.display(),
                store_dir.display(),
                conf.display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hapull"))
            .args(["-q", "-c"])
            .arg(&config)
            .args(["list", "--offsite", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = &v["offsite"][0]["archives"];
        assert_eq!(rows.as_array().unwrap().len(), 1, "{v}");
        assert_eq!(rows[0]["backup_id"], report.backup_id.as_str());
        assert_eq!(rows[0]["local"], true);
        assert_eq!(rows[0]["on_remote"], true);
        assert_eq!(rows[0]["proven"]["proof"], "sha1");
        let table = Command::new(env!("CARGO_BIN_EXE_hapull"))
            .args(["-q", "-c"])
            .arg(&config)
            .args(["list", "--offsite"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            text.contains(&report.backup_id) && text.contains("proven (sha1)"),
            "{text}"
        );
    }
}

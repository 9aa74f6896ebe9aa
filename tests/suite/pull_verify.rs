//! One-pass verification: the store's verifier reads the bytes as the pull writes them (through the
//! transfer's byte observer), including after a dropped connection, when the pull resumes from the
//! partial file and re-feeds its prefix first. Against a real OpenSSH sshd.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::relay::Relay;
use crate::support::sshd::Sshd;
use bytes::Bytes;
use hapull::secret::Secret;
use hapull::store::{ArchiveError, CommitInfo, Keys, Level, Store, StreamVerifier, Verify};
use hapull::transfer::{self, ByteObserver, HostKeyPolicy, PullOptions, SessionOptions, SshTarget};

struct Feed(StreamVerifier);

impl ByteObserver for Feed {
    fn observe(&mut self, bytes: Bytes) {
        self.0.feed(bytes);
    }
}

fn target(sshd: &Sshd, port: u16) -> SshTarget {
    SshTarget {
        host: "127.0.0.1".into(),
        port,
        user: sshd.user.clone(),
        identity_file: sshd.client_key.clone(),
        passphrase: None,
        host_keys: HostKeyPolicy::KnownHosts {
            path: sshd.write_known_hosts(port),
            trust_on_first_use: false,
        },
    }
}

fn opts() -> PullOptions {
    PullOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        free_space_margin: 0,
        session: SessionOptions {
            request_timeout: Duration::from_secs(15),
            ..SessionOptions::default()
        },
        ..PullOptions::default()
    }
}

/// A Home Assistant backup whose inner archive holds `len` incompressible bytes.
fn ha_backup(path: &Path, slug: &str, len: usize) {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(11).fill(&mut data);
    let mut inner = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_cksum();
    inner
        .append_data(&mut h, "data/blob.bin", &data[..])
        .unwrap();
    let inner = inner.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(&inner).unwrap();
    let gz = gz.finish().unwrap();
    let json = format!(
        r#"{{"slug":"{slug}","name":"t","date":"2026-11-26T09:07:39+00:00","homeassistant":{{"version":"2026.11.0"}}}}"#
    );
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("./backup.json", json.as_bytes()),
        ("./homeassistant.tar.gz", &gz[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[tokio::test]
async fn a_resumed_pull_is_verified_in_one_pass_and_committed_without_a_reread() {
    let sshd = Sshd::start();
    let src = sshd.remote_dir().join("b.tar");
    ha_backup(&src, "feed0001", 24 * 1024 * 1024);
    let proxy = Relay::cutting(sshd.port, 8 * 1024 * 1024).await.port;
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let local = store.incoming_path("feed0001").unwrap();
    let made = std::sync::atomic::AtomicU32::new(0);
    let (outcome, feed) = transfer::pull_observed(
        &target(&sshd, proxy),
        &hapull::transfer::load_identity(&sshd.client_key, None).unwrap(),
        src.to_str().unwrap(),
        &local,
        &opts(),
        || {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Feed(StreamVerifier::start("feed0001", Verify::Full, None))
        },
    )
    .await
    .unwrap();
    assert!(
        outcome.attempts >= 2 && outcome.resumed_bytes > 0,
        "{outcome:?}"
    );
    assert_eq!(
        made.load(std::sync::atomic::Ordering::Relaxed),
        outcome.attempts
    );
    let summary = feed.0.finish().unwrap();
    assert_eq!(summary.level, Level::Full);
    assert_eq!(summary.size, std::fs::metadata(&src).unwrap().len());
    assert_eq!(
        summary.deep_checked,
        vec!["homeassistant.tar.gz".to_owned()]
    );

    let stored = store
        .commit(
            &local,
            &CommitInfo {
                backup_id: "feed0001".to_owned(),
                size: outcome.size,
                sha256: outcome.sha256,
                pulled_at: "2026-11-26T10:00:00Z".parse().unwrap(),
                source_host: "h".to_owned(),
                source_path: src.display().to_string(),
                verify: Verify::Full,
                password: None,
                verified: Some(summary),
            },
        )
        .unwrap();
    assert_eq!(stored.manifest.verified, Some(Level::Full));
    let json = std::fs::read_to_string(&stored.manifest_path).unwrap();
    assert!(json.contains(r#""verified": "full""#), "{json}");
    // The committed file is the pulled one, byte for byte.
    assert_eq!(
        std::fs::read(&stored.path).unwrap(),
        std::fs::read(&src).unwrap()
    );
}

#[tokio::test]
async fn a_protected_backup_is_decrypted_during_the_pull_and_a_wrong_password_is_named() {
    let sshd = Sshd::start();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/securetar");
    let src = sshd.remote_dir().join("p.tar");
    std::fs::copy(fixture.join("v3_5ec0a003.tar"), &src).unwrap();
    let password = Secret::new(
        String::from_utf8(std::fs::read(fixture.join("password.txt")).unwrap()).unwrap(),
    );
    let identity = hapull::transfer::load_identity(&sshd.client_key, None).unwrap();
    for (pw, ok) in [(password, true), (Secret::new("another password"), false)] {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(Mutex::new(Keys::new(pw)));
        let (_, feed) = transfer::pull_observed(
            &target(&sshd, sshd.port),
            &identity,
            src.to_str().unwrap(),
            &dir.path().join("p.tar"),
            &opts(),
            || {
                Feed(StreamVerifier::start(
                    "5ec0a003",
                    Verify::Full,
                    Some(keys.clone()),
                ))
            },
        )
        .await
        .unwrap();
        let result = feed.0.finish();
        if ok {
            let s = result.unwrap();
            assert_eq!((s.level, s.securetar), (Level::Full, Some(3)));
        } else {
            let e = result.unwrap_err();
            assert!(matches!(e, ArchiveError::WrongPassword { .. }), "{e}");
            assert!(e.to_string().contains("wrong password"));
        }
    }
}

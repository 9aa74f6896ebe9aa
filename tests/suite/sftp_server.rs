//! The embedded SFTP server, driven by real clients: OpenSSH's `sftp` and the russh + russh-sftp client
//! that hapull itself uses.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use hapull_sim::sftp_server::MAX_READ_LEN;
use hapull_sim::sftp_server::{Faults, SftpServer, SftpServerOptions};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use russh_sftp::client::rawsession::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const USER: &str = "backup";
const ARCHIVE: &str = "a1b2c3d4.tar";

/// Deterministic bytes that do not compress to nothing and are not a multiple of any read size.
fn archive_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    fastrand::Rng::with_seed(7).fill(&mut bytes);
    bytes
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest(&SHA256, bytes).as_ref().to_vec()
}

/// An ed25519 key made by OpenSSH's own ssh-keygen, as a user would make one.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PublicKey) {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
    let public = russh::keys::load_public_key(path.with_extension("pub")).unwrap();
    (path, public)
}

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    key: PathBuf,
    archive: Vec<u8>,
    server: SftpServer,
}

impl Fixture {
    async fn start(faults: Faults, archive_len: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("backups");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(root.join("old")).unwrap();
        let archive = archive_bytes(archive_len);
        std::fs::write(root.join(ARCHIVE), &archive).unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"outside the served folder").unwrap();

        let (key, public) = keygen(dir.path(), "id_client");
        let mut opts = SftpServerOptions::new(&root, USER, public);
        opts.faults = faults;
        let server = SftpServer::start(opts).await.unwrap();
        std::fs::write(
            dir.path().join("known_hosts"),
            format!("{}\n", server.known_hosts_line()),
        )
        .unwrap();
        Fixture {
            dir,
            root,
            key,
            archive,
            server,
        }
    }

    fn local(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run `sftp -b` with strict host key checking against the server's known_hosts line.
    async fn sftp(&self, key: &Path, user: &str, batch: &str) -> Output {
        let batch_file = self.local("batch");
        std::fs::write(&batch_file, batch).unwrap();
        tokio::process::Command::new("/usr/bin/sftp")
            .arg("-b")
            .arg(&batch_file)
            .args(["-F", "/dev/null"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.local("known_hosts").display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "PasswordAuthentication=no"])
            .arg("-i")
            .arg(key)
            .arg("-P")
            .arg(self.server.addr().port().to_string())
            .arg(format!("{user}@127.0.0.1"))
            .current_dir(self.dir.path())
            .output()
            .await
            .unwrap()
    }

    async fn sftp_ok(&self, batch: &str) -> String {
        let out = self.sftp(&self.key, USER, batch).await;
        assert!(
            out.status.success(),
            "sftp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn sftp_refused(&self, batch: &str) -> String {
        let out = self.sftp(&self.key, USER, batch).await;
        assert!(!out.status.success(), "sftp succeeded at {batch:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[tokio::test]
async fn openssh_sftp_lists_and_downloads_byte_exact() {
    // Large enough that OpenSSH keeps 64 reads of 255 KiB in flight for many rounds: a server that
    // stops reading requests while a reply waits for window stalls well before the end.
    let fx = Fixture::start(Faults::default(), 48 * 1024 * 1024 + 4321).await;
    let dest = fx.local("downloaded.tar");

    // A guard against a stalled transfer hanging the suite, not a speed requirement.
    let listing = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        fx.sftp_ok(&format!("ls -l /\nget /{ARCHIVE} {}\n", dest.display())),
    )
    .await
    .expect("the download stalled");

    assert!(listing.contains(ARCHIVE), "listing: {listing}");
    assert!(listing.contains("old"), "listing: {listing}");
    let line = listing.lines().find(|l| l.ends_with(ARCHIVE)).unwrap();
    assert!(
        line.contains(&fx.archive.len().to_string()),
        "size missing in {line:?}"
    );
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(got.len(), fx.archive.len());
    assert_eq!(sha256(&got), sha256(&fx.archive));
    assert_eq!(fx.server.stats().file_bytes_served, fx.archive.len() as u64);
}

#[tokio::test]
async fn openssh_sftp_resumes_a_partial_download() {
    let fx = Fixture::start(Faults::default(), 1024 * 1024).await;
    let dest = fx.local("partial.tar");
    std::fs::write(&dest, &fx.archive[..300_000]).unwrap();

    fx.sftp_ok(&format!("reget /{ARCHIVE} {}\n", dest.display()))
        .await;

    assert_eq!(sha256(&std::fs::read(&dest).unwrap()), sha256(&fx.archive));
    assert_eq!(
        fx.server.stats().file_bytes_served,
        (fx.archive.len() - 300_000) as u64
    );
}

#[tokio::test]
async fn writes_removes_renames_and_mkdir_are_refused() {
    let fx = Fixture::start(Faults::default(), 4096).await;
    let upload = fx.local("upload.bin");
    std::fs::write(&upload, b"new data").unwrap();

    let put = fx
        .sftp_refused(&format!("put {} /upload.bin\n", upload.display()))
        .await;
    assert!(put.contains("Permission denied"), "{put}");
    let overwrite = fx
        .sftp_refused(&format!("put {} /{ARCHIVE}\n", upload.display()))
        .await;
    assert!(overwrite.contains("Permission denied"), "{overwrite}");
    fx.sftp_refused(&format!("rm /{ARCHIVE}\n")).await;
    fx.sftp_refused(&format!("rename /{ARCHIVE} /moved.tar\n"))
        .await;
    fx.sftp_refused("mkdir /new\n").await;
    fx.sftp_refused("rmdir /old\n").await;
    fx.sftp_refused(&format!("chmod 777 /{ARCHIVE}\n")).await;
    fx.sftp_refused(&format!("symlink /{ARCHIVE} /link\n"))
        .await;

    let mut names: Vec<_> = std::fs::read_dir(&fx.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec![ARCHIVE.to_owned(), "old".to_owned()]);
    assert_eq!(
        sha256(&std::fs::read(fx.root.join(ARCHIVE)).unwrap()),
        sha256(&fx.archive)
    );
}

#[tokio::test]
async fn paths_outside_the_root_are_refused() {
    let fx = Fixture::start(Faults::default(), 4096).await;
    let secret = fx.local("secret.txt");
    std::os::unix::fs::symlink(&secret, fx.root.join("escape")).unwrap();
    std::os::unix::fs::symlink("..", fx.root.join("up")).unwrap();
    std::os::unix::fs::symlink(ARCHIVE, fx.root.join("latest.tar")).unwrap();

    for remote in [
        "../secret.txt".to_owned(),
        "/../secret.txt".to_owned(),
        "old/../../secret.txt".to_owned(),
        secret.display().to_string(),
        "/escape".to_owned(),
        "/up/secret.txt".to_owned(),
    ] {
        let dest = fx.local("stolen.txt");
        let err = fx
            .sftp_refused(&format!("get {remote} {}\n", dest.display()))
            .await;
        assert!(!dest.exists(), "{remote} was downloaded");
        assert!(
            // sftp reports a refused stat while expanding the name as "not found".
            ["Permission denied", "No such file", "not found"]
                .iter()
                .any(|m| err.contains(m)),
            "{remote}: {err}"
        );
    }
    let out = fx
        .sftp(&fx.key, USER, "ls -l /up/\nls -l /up/secret.txt\n")
        .await;
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.contains("secret.txt  ") && !listing.contains("backups"),
        "{listing}"
    );
    assert!(
        !listing.contains("-rw"),
        "a file outside the root was listed: {listing}"
    );

    // A link that stays inside the root is an ordinary file to the client.
    let dest = fx.local("latest.tar");
    fx.sftp_ok(&format!("get /latest.tar {}\n", dest.display()))
        .await;
    assert_eq!(sha256(&std::fs::read(&dest).unwrap()), sha256(&fx.archive));
}

#[tokio::test]
async fn only_the_authorized_key_and_user_may_log_in() {
    let fx = Fixture::start(Faults::default(), 4096).await;
    let (other_key, _) = keygen(fx.dir.path(), "id_other");

    let wrong_key = fx.sftp(&other_key, USER, "ls /\n").await;
    assert!(!wrong_key.status.success());
    assert!(
        String::from_utf8_lossy(&wrong_key.stderr).contains("Permission denied (publickey)"),
        "{}",
        String::from_utf8_lossy(&wrong_key.stderr)
    );

    let wrong_user = fx.sftp(&fx.key, "root", "ls /\n").await;
    assert!(!wrong_user.status.success());

    assert_eq!(fx.server.stats().authenticated_connections, 0);
    fx.sftp_ok("ls /\n").await;
    assert_eq!(fx.server.stats().authenticated_connections, 1);
}

#[tokio::test]
async fn a_changed_host_key_is_refused_by_openssh() {
    let fx = Fixture::start(Faults::default(), 4096).await;
    let (_, public) = keygen(fx.dir.path(), "id_client2");
    let impostor = SftpServer::start(SftpServerOptions::new(&fx.root, USER, public))
        .await
        .unwrap();
    assert_ne!(
        impostor.host_key_fingerprint(),
        fx.server.host_key_fingerprint()
    );
    let line = impostor.known_hosts_line().to_owned();
    let port = impostor.addr().port().to_string();
    // The impostor is reached at the first server's known_hosts entry.
    let fake = line.replace(&port, &fx.server.addr().port().to_string());
    std::fs::write(fx.local("known_hosts"), format!("{fake}\n")).unwrap();

    let err = fx.sftp_refused("ls /\n").await;
    assert!(err.contains("Host key verification failed"), "{err}");
}

#[tokio::test]
async fn fingerprint_matches_what_ssh_keygen_prints() {
    let fx = Fixture::start(Faults::default(), 16).await;
    let out = std::process::Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(fx.local("known_hosts"))
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains(fx.server.host_key_fingerprint()),
        "{printed} vs {}",
        fx.server.host_key_fingerprint()
    );
    assert!(fx.server.host_key_fingerprint().starts_with("SHA256:"));
    let port = fx.server.addr().port();
    assert!(
        fx.server
            .known_hosts_line()
            .starts_with(&format!("[127.0.0.1]:{port} ssh-ed25519 AAAA"))
    );
}

struct PinnedHost(PublicKey);

impl russh::client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()),
        )
    }
}

/// An SFTP session over russh, the way hapull's transfer code opens one.
async fn russh_session(
    server: &SftpServer,
    key: &Path,
) -> (russh::client::Handle<PinnedHost>, SftpSession) {
    let config = Arc::new(russh::client::Config::default());
    let pinned = PinnedHost(server.host_public_key().clone());
    let mut ssh = russh::client::connect(config, server.addr(), pinned)
        .await
        .unwrap();
    let key = russh::keys::load_secret_key(key, None).unwrap();
    let auth = ssh
        .authenticate_publickey(USER, PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .unwrap();
    assert!(auth.success(), "russh client was refused");
    let channel = ssh.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "sftp").await.unwrap();
    let sftp = SftpSession::new(channel.into_stream()).await.unwrap();
    (ssh, sftp)
}

/// Read from `offset` until end of file or the first error; returns what arrived and whether it ended
/// cleanly.
async fn read_from(sftp: &SftpSession, offset: u64) -> (Vec<u8>, bool) {
    let mut file = sftp.open(format!("/{ARCHIVE}")).await.unwrap();
    file.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test]
async fn russh_client_reads_the_archive_and_sees_the_limits() {
    let fx = Fixture::start(Faults::default(), 3 * 1024 * 1024 + 17).await;
    let (ssh, sftp) = russh_session(&fx.server, &fx.key).await;

    let names: Vec<String> = sftp
        .read_dir("/")
        .await
        .unwrap()
        .map(|e| e.file_name())
        .collect();
    assert!(names.contains(&ARCHIVE.to_owned()), "{names:?}");
    let meta = sftp.metadata(format!("/{ARCHIVE}")).await.unwrap();
    assert_eq!(meta.size, Some(fx.archive.len() as u64));
    assert_eq!(sftp.canonicalize(".").await.unwrap(), "/");

    let (got, clean) = read_from(&sftp, 0).await;
    assert!(clean);
    assert_eq!(sha256(&got), sha256(&fx.archive));

    // The advertised limits, and a read longer than them, seen through the raw protocol.
    let channel = ssh.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "sftp").await.unwrap();
    let raw = RawSftpSession::new(channel.into_stream());
    raw.init().await.unwrap();
    let limits = raw.limits().await.unwrap();
    assert_eq!(limits.max_read_len, u64::from(MAX_READ_LEN));
    assert_eq!(limits.max_packet_len, 256 * 1024);
    let handle = raw
        .open(
            format!("/{ARCHIVE}"),
            OpenFlags::READ,
            FileAttributes::empty(),
        )
        .await
        .unwrap()
        .handle;
    let data = raw.read(&handle, 10, 1024 * 1024).await.unwrap().data;
    assert_eq!(data.len(), MAX_READ_LEN as usize);
    assert_eq!(data[..], fx.archive[10..10 + data.len()]);
    let tail = raw
        .read(&handle, fx.archive.len() as u64 - 5, 4096)
        .await
        .unwrap()
        .data;
    assert_eq!(tail[..], fx.archive[fx.archive.len() - 5..]);
    assert!(
        raw.read(&handle, fx.archive.len() as u64, 4096)
            .await
            .is_err()
    );
    raw.close(&handle).await.unwrap();

    let escape = sftp
        .metadata("/../secret.txt")
        .await
        .unwrap_err()
        .to_string();
    assert!(escape.contains("outside the served folder"), "{escape}");
    std::os::unix::fs::symlink("..", fx.root.join("up")).unwrap();
    let Err(escape) = sftp.read_dir("/up").await else {
        panic!("a folder outside the root was listed");
    };
    let escape = escape.to_string();
    assert!(escape.contains("outside the served folder"), "{escape}");

    assert!(sftp.remove_file(format!("/{ARCHIVE}")).await.is_err());
    assert!(sftp.create("/new.tar").await.is_err());
    assert!(fx.root.join(ARCHIVE).exists());
    assert!(!fx.root.join("new.tar").exists());
}

#[tokio::test]
async fn a_cut_connection_can_be_resumed_on_the_next_one() {
    let budget = 1024 * 1024 + 123;
    let faults = Faults {
        drop_after_bytes: Some(budget),
        drop_first_connections: Some(1),
        ..Faults::default()
    };
    let fx = Fixture::start(faults, 3 * 1024 * 1024).await;

    let (_ssh, sftp) = russh_session(&fx.server, &fx.key).await;
    let (first, clean) = read_from(&sftp, 0).await;
    assert!(!clean, "the first connection was not cut");
    assert!(
        first.len() as u64 <= budget,
        "{} bytes arrived",
        first.len()
    );
    assert_eq!(first[..], fx.archive[..first.len()]);
    assert_eq!(fx.server.stats().connections_cut, 1);

    let (_ssh2, sftp2) = russh_session(&fx.server, &fx.key).await;
    let (rest, clean) = read_from(&sftp2, first.len() as u64).await;
    assert!(clean, "the second connection was cut");
    let whole = [first, rest].concat();
    assert_eq!(sha256(&whole), sha256(&fx.archive));
    assert_eq!(fx.server.stats().connections_cut, 1);
}

#[tokio::test]
async fn a_rate_limited_download_is_still_byte_exact() {
    let faults = Faults {
        rate_limit_bytes_per_sec: Some(64 * 1024 * 1024),
        ..Faults::default()
    };
    let fx = Fixture::start(faults, 2 * 1024 * 1024 + 5).await;
    let dest = fx.local("slow.tar");
    fx.sftp_ok(&format!("get /{ARCHIVE} {}\n", dest.display()))
        .await;
    assert_eq!(sha256(&std::fs::read(&dest).unwrap()), sha256(&fx.archive));
}

#[tokio::test]
async fn shutdown_disconnects_clients_and_frees_the_port() {
    let fx = Fixture::start(Faults::default(), 4096).await;
    let addr = fx.server.addr();
    let (_ssh, sftp) = russh_session(&fx.server, &fx.key).await;
    fx.server.shutdown().await;

    assert!(sftp.metadata(format!("/{ARCHIVE}")).await.is_err());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn start_refuses_a_missing_root() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keygen(dir.path(), "id");
    let missing = dir.path().join("nope");
    let err = SftpServer::start(SftpServerOptions::new(&missing, USER, public))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

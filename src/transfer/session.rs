//! One authenticated SSH connection with an SFTP channel: connect, verify the host, log in, and the
//! small remote operations (stat, list, peek into a tar). The bulk download lives in `pull.rs`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use super::hostkey::{self, HostKeyInfo, HostKeyPolicy, Verdict};
use super::link::Link;
use super::{SshTarget, TransferError};

/// SSH and SFTP tuning for one connection. The defaults are what `pull` uses.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Limit for each step of setting up a session: TCP connect, SSH handshake, login, channel open,
    /// SFTP subsystem request and SFTP start (each step has the whole limit).
    pub connect_timeout: Duration,
    /// How long one SFTP request may wait for its answer before the connection counts as dropped.
    pub request_timeout: Duration,
    /// SSH channel window (bytes the server may send ahead of our reading).
    pub window_size: u32,
    /// Read requests kept outstanding during a pull.
    pub outstanding_reads: usize,
    /// Size of one read request; capped by what the server announces.
    pub read_size: u32,
    /// SSH ciphers to offer, most wanted first (names from [`CIPHERS`]).
    pub ciphers: Vec<&'static str>,
}

/// The SSH ciphers hapull can use, in its default order: AES-GCM first, which the AES instructions
/// of x86 and most ARMv8 processors make the cheapest for both ends; ChaCha20-Poly1305 is the choice
/// for a server without them (a Raspberry Pi 4 or a Compute Module 4, as in Home Assistant Yellow).
pub const CIPHERS: &[&str] = &[
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
];

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            // OpenSSH's own window. A larger one lets sshd run ahead in smaller writes: on a
            // 1 GiB pull it cost the server about 20 % more CPU and made nothing faster
            // (examples/bench_verified_pull, 2 vs 32 MiB). 2 MiB still covers a 100 Mbit/s link
            // with 150 ms of round trip.
            window_size: 2 * 1024 * 1024,
            // 8 MiB in flight: as fast as 16 MiB on a local link (measured with
            // examples/bench_verified_pull), with less memory.
            outstanding_reads: 32,
            read_size: 255 * 1024,
            ciphers: CIPHERS.to_vec(),
        }
    }
}

/// A private key, decrypted once and then reused for every (re)connection.
#[derive(Clone)]
pub struct Identity {
    key: Arc<PrivateKey>,
    path: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("path", &self.path)
            .field("algorithm", &self.key.algorithm().to_string())
            .finish()
    }
}

/// Reads and (with `passphrase`) decrypts an OpenSSH private key. Ed25519 and ECDSA keys work;
/// RSA keys are refused with a message saying so, since signing with them is not built in.
pub fn load_identity(
    path: &Path,
    passphrase: Option<&crate::secret::Secret>,
) -> Result<Identity, TransferError> {
    let identity_err = |reason: String| TransferError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    // As ssh does: a private key others may read is refused, not used.
    if let Some(bits) = crate::private_fs::exposed_bits(path).filter(|b| *b != 0) {
        return Err(identity_err(format!(
            "the private key can be read or changed by its group or others (permission bits {bits:03o} beyond \
             the owner's); ssh refuses such a key and so does hapull. Run `chmod 600 {}`",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| identity_err(e.to_string()))?;
    let parsed = PrivateKey::from_openssh(text.trim()).map_err(|e| {
        identity_err(format!(
            "not an OpenSSH private key ({e}); convert it with `ssh-keygen -p -f`"
        ))
    })?;
    let key = if parsed.is_encrypted() {
        let Some(pass) = passphrase else {
            return Err(TransferError::PassphraseRequired {
                path: path.to_path_buf(),
            });
        };
        parsed
            .decrypt(pass.expose())
            .map_err(|_| TransferError::WrongPassphrase {
                path: path.to_path_buf(),
            })?
    } else {
        parsed
    };
    if key.algorithm().is_rsa() {
        return Err(identity_err(
            "RSA keys are not supported; create an ed25519 key with `ssh-keygen -t ed25519`".into(),
        ));
    }
    Ok(Identity {
        key: Arc::new(key),
        path: path.to_path_buf(),
    })
}

/// Checks the server key against the policy; remembers why it refused so the caller can say so.
struct Client {
    host: String,
    port: u16,
    policy: Option<HostKeyPolicy>,
    rejection: Arc<Mutex<Option<TransferError>>>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl Client {
    fn check(&self, key: &PublicKey) -> Result<(), TransferError> {
        let info = HostKeyInfo::new(&self.host, self.port, key);
        match &self.policy {
            None => Err(TransferError::UnknownHost {
                host_port: info.host_port,
                fingerprint: info.fingerprint,
                known_hosts_line: info.known_hosts_line,
                path: PathBuf::from("(scan only)"),
            }),
            Some(HostKeyPolicy::Pinned(pins)) => {
                if hostkey::pinned_match(pins, key) {
                    Ok(())
                } else {
                    Err(TransferError::HostKeyNotPinned {
                        host_port: info.host_port,
                        fingerprint: info.fingerprint,
                        pinned: pins.join(", "),
                    })
                }
            }
            Some(HostKeyPolicy::KnownHosts {
                path,
                trust_on_first_use,
            }) => {
                let verdict = match hostkey::check_known_hosts(path, &self.host, self.port, key) {
                    Err(TransferError::KnownHostsUnreadable { source, .. })
                        if *trust_on_first_use && source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        Verdict::Unknown
                    }
                    other => other?,
                };
                match verdict {
                    Verdict::Trusted => Ok(()),
                    Verdict::Changed { line, algorithm } => Err(TransferError::HostKeyChanged {
                        host_port: info.host_port,
                        fingerprint: info.fingerprint,
                        algorithm,
                        path: path.clone(),
                        line,
                    }),
                    Verdict::Unknown if *trust_on_first_use => {
                        hostkey::append_known_host(path, &info)?;
                        tracing::warn!(
                            host = %info.host_port,
                            fingerprint = %info.fingerprint,
                            known_hosts = %path.display(),
                            "trusting host key on first use"
                        );
                        Ok(())
                    }
                    Verdict::Unknown => Err(TransferError::UnknownHost {
                        host_port: info.host_port,
                        fingerprint: info.fingerprint,
                        known_hosts_line: info.known_hosts_line,
                        path: path.clone(),
                    }),
                }
            }
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            // Host certificates are never advertised, so this is a protocol surprise: refuse.
            return Ok(false);
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key.clone());
        }
        match self.check(key) {
            Ok(()) => Ok(true),
            Err(e) => {
                if let Ok(mut slot) = self.rejection.lock() {
                    *slot = Some(e);
                }
                Ok(false)
            }
        }
    }
}

fn ssh_config(opts: &SessionOptions, key_algorithms: &[String]) -> client::Config {
    let ciphers: Vec<russh::cipher::Name> = (opts.ciphers.iter())
        .filter_map(|c| russh::cipher::Name::try_from(*c).ok())
        .collect();
    let mut preferred = russh::Preferred {
        cipher: Cow::Owned(ciphers),
        ..russh::Preferred::default()
    };
    if !key_algorithms.is_empty() {
        // Ask first for a host key type that known_hosts can vouch for, as OpenSSH does; otherwise a
        // host with an ed25519 and an ECDSA key would look "unknown" when only one was recorded.
        let family = |a: &russh::keys::Algorithm| {
            let s = a.to_string();
            if a.clone().is_rsa() {
                "ssh-rsa".to_string()
            } else {
                s
            }
        };
        let mut keys: Vec<_> = preferred.key.to_vec();
        keys.sort_by_key(|a| !key_algorithms.contains(&family(a)));
        preferred.key = Cow::Owned(keys);
    }
    client::Config {
        window_size: opts.window_size,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        preferred,
        nodelay: true,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        ..Default::default()
    }
}

/// A connected, verified SSH transport: its handle, the host key the server showed, and the switch
/// that ends the link's set-up phase.
type Handshake = (
    client::Handle<Client>,
    Arc<Mutex<Option<PublicKey>>>,
    Arc<AtomicBool>,
);

async fn handshake(
    host: &str,
    port: u16,
    policy: Option<HostKeyPolicy>,
    opts: &SessionOptions,
) -> Result<Handshake, TransferError> {
    let key_algorithms = match &policy {
        Some(HostKeyPolicy::KnownHosts { path, .. }) => hostkey::known_algorithms(path, host, port),
        _ => Vec::new(),
    };
    let config = Arc::new(ssh_config(opts, &key_algorithms));
    let rejection = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(None));
    let handler = Client {
        host: host.to_string(),
        port,
        policy,
        rejection: rejection.clone(),
        seen: seen.clone(),
    };
    let socket = tokio::time::timeout(
        opts.connect_timeout,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| TransferError::Connect {
        host: host.to_string(),
        port,
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
    })?
    .map_err(|source| TransferError::Connect {
        host: host.to_string(),
        port,
        source,
    })?;
    let (link, setting_up) = Link::new(socket);
    let result = tokio::time::timeout(
        opts.connect_timeout,
        client::connect_stream(config, link, handler),
    )
    .await;
    let taken = rejection.lock().ok().and_then(|mut r| r.take());
    if let Some(refusal) = taken {
        return Err(refusal);
    }
    match result {
        Ok(Ok(handle)) => Ok((handle, seen, setting_up)),
        Ok(Err(e)) => Err(disconnected(host, port, e.to_string())),
        Err(_) => Err(TransferError::StepTimeout {
            host: host.to_string(),
            port,
            step: "SSH handshake",
            after: opts.connect_timeout,
        }),
    }
}

/// One step of setting up a session, bounded by `limit` so a server that stops answering halfway
/// (after the handshake, during login, on the channel or subsystem request) cannot hang the cycle.
async fn ssh_step<T>(
    host: &str,
    port: u16,
    step: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, russh::Error>>,
) -> Result<T, TransferError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(disconnected(host, port, format!("{step} failed: {e}"))),
        Err(_) => Err(TransferError::StepTimeout {
            host: host.to_string(),
            port,
            step,
            after: limit,
        }),
    }
}

fn disconnected(host: &str, port: u16, message: String) -> TransferError {
    TransferError::Disconnected {
        host: host.to_string(),
        port,
        message,
    }
}

/// Connects to `host:port` and reports the host key it presents, without trusting or logging in.
/// Compare the fingerprint with the one the host shows (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)
/// before adding the line to known_hosts.
pub async fn scan_host_key(host: &str, port: u16) -> Result<HostKeyInfo, TransferError> {
    match handshake(host, port, None, &SessionOptions::default()).await {
        Err(TransferError::UnknownHost {
            host_port,
            fingerprint,
            known_hosts_line,
            ..
        }) => {
            let algorithm = known_hosts_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            Ok(HostKeyInfo {
                host_port,
                algorithm,
                fingerprint,
                known_hosts_line,
            })
        }
        Err(e) => Err(e),
        Ok(_) => Err(disconnected(
            host,
            port,
            "server accepted a scan-only handshake".into(),
        )),
    }
}

/// Metadata of a remote file or directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    /// The entry's name as the server sent it (untrusted: validate before using it locally).
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: Option<u64>,
    pub is_file: bool,
}

/// An open, authenticated SFTP session. Cheap operations go straight through; a dropped connection
/// surfaces as a transient [`TransferError`]; reconnecting is the caller's choice (see [`super::pull`]).
pub struct Session {
    ssh: client::Handle<Client>,
    pub(crate) sftp: Arc<RawSftpSession>,
    pub(crate) user: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) read_size: u32,
    pub(crate) outstanding: usize,
}

impl Session {
    /// Loads the identity and connects. To reconnect repeatedly, load the identity once with
    /// [`load_identity`] and use [`Session::connect_with`].
    pub async fn connect(
        target: &SshTarget,
        opts: &SessionOptions,
    ) -> Result<Session, TransferError> {
        let identity = load_identity(&target.identity_file, target.passphrase.as_ref())?;
        Session::connect_with(target, &identity, opts).await
    }

    /// Connects, verifies the host key, logs in with `identity` and opens the SFTP subsystem.
    pub async fn connect_with(
        target: &SshTarget,
        identity: &Identity,
        opts: &SessionOptions,
    ) -> Result<Session, TransferError> {
        let (host, port) = (target.host.as_str(), target.port);
        let (mut ssh, _, setting_up) =
            handshake(host, port, Some(target.host_keys.clone()), opts).await?;
        let limit = opts.connect_timeout;
        let hash = ssh_step(host, port, "login", limit, ssh.best_supported_rsa_hash())
            .await?
            .flatten();
        let auth = ssh_step(
            host,
            port,
            "login",
            limit,
            ssh.authenticate_publickey(
                &target.user,
                PrivateKeyWithHashAlg::new(identity.key.clone(), hash),
            ),
        )
        .await?;
        if !matches!(auth, AuthResult::Success) {
            return Err(TransferError::AuthRefused {
                user: target.user.clone(),
                host: host.to_string(),
                port,
                key_file: identity.path.clone(),
            });
        }
        let channel = ssh_step(
            host,
            port,
            "channel open",
            limit,
            ssh.channel_open_session(),
        )
        .await?;
        ssh_step(
            host,
            port,
            "SFTP subsystem request",
            limit,
            channel.request_subsystem(true, "sftp"),
        )
        .await?;
        let cfg = russh_sftp::client::Config {
            max_packet_len: 256 * 1024 + 1024,
            request_timeout_secs: opts.request_timeout.as_secs().max(1),
            ..Default::default()
        };
        let mut sftp = RawSftpSession::new_with_config(channel.into_stream(), cfg);
        tokio::time::timeout(limit, sftp.init())
            .await
            .map_err(|_| TransferError::StepTimeout {
                host: host.to_string(),
                port,
                step: "SFTP start",
                after: limit,
            })?
            .map_err(|e| {
                disconnected(host, port, format!("SFTP subsystem failed to start: {e}"))
            })?;
        let mut read_size = opts.read_size.max(1);
        if let Ok(limits) = sftp.limits().await {
            if limits.max_read_len > 0 {
                read_size = read_size.min(u32::try_from(limits.max_read_len).unwrap_or(u32::MAX));
            }
            sftp.set_limits(limits.into());
        } else {
            // Servers without the limits extension are only promised 32 KiB reads.
            read_size = read_size.min(32 * 1024);
        }
        setting_up.store(false, Ordering::Relaxed);
        Ok(Session {
            ssh,
            sftp: Arc::new(sftp),
            user: target.user.clone(),
            host: host.to_string(),
            port,
            read_size,
            outstanding: opts.outstanding_reads.max(1),
        })
    }

    pub(crate) fn remote_err(&self, op: &'static str, path: &str, e: SftpError) -> TransferError {
        match e {
            SftpError::Status(s) => match s.status_code {
                StatusCode::PermissionDenied => TransferError::PermissionDenied {
                    user: self.user.clone(),
                    op,
                    path: path.to_string(),
                },
                StatusCode::NoSuchFile => TransferError::NotFound {
                    host: self.host.clone(),
                    op,
                    path: path.to_string(),
                },
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    disconnected(&self.host, self.port, s.error_message)
                }
                _ => TransferError::Remote {
                    op,
                    path: path.to_string(),
                    message: format!("{}: {}", s.status_code, s.error_message),
                },
            },
            SftpError::Limited(m) => TransferError::Remote {
                op,
                path: path.to_string(),
                message: m,
            },
            other => disconnected(&self.host, self.port, other.to_string()),
        }
    }

    /// Size, modification time and type of a remote path (symlinks followed).
    pub async fn stat(&self, path: &str) -> Result<RemoteEntry, TransferError> {
        let attrs = self
            .sftp
            .stat(path)
            .await
            .map_err(|e| self.remote_err("stat", path, e))?
            .attrs;
        Ok(entry(path.rsplit('/').next().unwrap_or(path), &attrs))
    }

    /// The entries of a remote directory, without `.` and `..`.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<RemoteEntry>, TransferError> {
        let handle = self
            .sftp
            .opendir(path)
            .await
            .map_err(|e| self.remote_err("list", path, e))?
            .handle;
        let mut out = Vec::new();
        let result = loop {
            match self.sftp.readdir(handle.as_str()).await {
                Ok(name) => out.extend(
                    name.files
                        .iter()
                        .filter(|f| f.filename != "." && f.filename != "..")
                        .map(|f| entry(&f.filename, &f.attrs)),
                ),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break Ok(out),
                Err(e) => break Err(self.remote_err("list", path, e)),
            }
        };
        let _ = self.sftp.close(handle).await;
        result
    }

    /// Reads the first `len` bytes of the file at `path` (fewer only when the file is shorter),
    /// without downloading the rest: enough to look inside an archive's first member.
    pub async fn read_prefix(&self, path: &str, len: u64) -> Result<Vec<u8>, TransferError> {
        let handle = self.open_read(path).await?;
        let result = self.read_exact_at(&handle, path, 0, len).await;
        let _ = self.sftp.close(handle).await;
        result
    }

    pub(crate) async fn open_read(&self, path: &str) -> Result<String, TransferError> {
        Ok(self
            .sftp
            .open(path, OpenFlags::READ, FileAttributes::default())
            .await
            .map_err(|e| self.remote_err("read", path, e))?
            .handle)
    }

    /// Reads up to `len` bytes from `offset`, fewer only at end of file.
    async fn read_exact_at(
        &self,
        handle: &str,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, TransferError> {
        let mut out = Vec::with_capacity(usize::try_from(len.min(1 << 20)).unwrap_or(0));
        while (out.len() as u64) < len {
            let want = (len - out.len() as u64).min(u64::from(self.read_size)) as u32;
            match self
                .sftp
                .read(handle, offset + out.len() as u64, want)
                .await
            {
                Ok(data) if data.data.is_empty() => break,
                Ok(data) => out.extend_from_slice(&data.data),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break,
                Err(e) => return Err(self.remote_err("read", path, e)),
            }
        }
        Ok(out)
    }

    /// Pulls `remote` to `local` over this session (one attempt; resumes a matching `.partial`).
    /// See [`super::pull`] for the version that reconnects and retries.
    pub async fn pull(
        &self,
        remote: &str,
        local: &Path,
        opts: &super::PullOptions,
    ) -> Result<super::PullOutcome, TransferError> {
        let started = std::time::Instant::now();
        let (mut outcome, ()) = super::pull::pull_once(self, &[], remote, local, opts, ()).await?;
        outcome.duration = started.elapsed();
        Ok(outcome)
    }

    /// Ends the session politely.
    pub async fn close(self) {
        let _ = self.sftp.close_session();
        let _ = self
            .ssh
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn entry(name: &str, attrs: &FileAttributes) -> RemoteEntry {
    RemoteEntry {
        name: name.to_string(),
        size: attrs.size.unwrap_or(0),
        mtime: attrs.mtime.map(u64::from),
        is_file: attrs.is_regular(),
    }
}

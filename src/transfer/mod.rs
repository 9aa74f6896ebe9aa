//! Pull engines: fetch one remote file into a local path, byte-exact, hashed, resumable, atomic —
//! over SFTP ([`pull`]) or HTTPS ([`download`], in `http.rs`). Both hand every chunk to the same
//! writer, so whatever checks the bytes on the way sees one stream whichever transport brought it.
//!
//! It connects with russh, verifies the host key (known_hosts or pinned fingerprints, never "accept
//! anything"), logs in with a key, and pulls with many SFTP reads outstanding while a writer thread
//! hashes (SHA-256) and writes each chunk as it arrives. Data goes to `<local>.partial` (with a
//! `<local>.partial.meta` sidecar naming the remote size and mtime) and is renamed into place only after
//! the size checks pass, so a file at the destination name is always complete. A dropped connection is
//! retried with capped exponential backoff, resuming from what is on disk.
//!
//! What it must not do: know about Home Assistant or backups; derive local file names from remote
//! names (the caller chooses `local`); write anywhere but `local` and its two sidecars; retry a
//! permanent failure (host key, login, permission, disk space).

mod disk;
mod error;
mod hostkey;
mod http;
mod link;
mod pull;
mod session;
mod sha;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;

pub use error::TransferError;
pub use hostkey::{HostKeyInfo, HostKeyPolicy, TrustOutcome, trust_host_key};
pub use http::{HttpTarget, download, download_observed};
pub use session::{
    CIPHERS, Identity, RemoteEntry, Session, SessionOptions, load_identity, scan_host_key,
};

use crate::secret::Secret;

/// Where and as whom to connect. Built by the configuration layer from the user's settings.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// OpenSSH private key (ed25519 or ECDSA).
    pub identity_file: PathBuf,
    /// Passphrase of an encrypted key.
    pub passphrase: Option<Secret>,
    pub host_keys: HostKeyPolicy,
}

/// How a pull behaves. `Default` gives sensible production values.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// If set, the remote file must have exactly this size (checked before and after the transfer).
    pub expected_size: Option<u64>,
    /// Retries after a transient failure (dropped connection, file changed); 0 = a single attempt.
    pub retry_budget: u32,
    /// First delay between attempts; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// Cap on the delay between attempts.
    pub max_backoff: Duration,
    /// Free space to leave at the destination beyond the file itself.
    pub free_space_margin: u64,
    /// Throttle in bytes per second (`None` = as fast as possible).
    pub bandwidth_limit: Option<u64>,
    /// Draw a progress bar when stderr is a terminal (otherwise progress goes to tracing).
    pub progress: bool,
    /// SSH connections one pull uses, reading the file in turns (at least 1). OpenSSH's sshd serves
    /// each connection with one process that encrypts all it sends, so on a server with more than
    /// one core a second connection sends faster (and here, where hapull and sshd share two cores,
    /// it made a 1 GiB pull about 8 % faster: examples/bench_verified_pull). Extra connections are
    /// a bonus: one that cannot be made leaves the pull to the others.
    pub connections: usize,
    /// Connection tuning.
    pub session: SessionOptions,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            expected_size: None,
            retry_budget: 5,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            free_space_margin: 64 * 1024 * 1024,
            bandwidth_limit: None,
            progress: false,
            connections: 2,
            session: SessionOptions::default(),
        }
    }
}

/// What a successful pull produced. The file is at the destination, fsynced, with this content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOutcome {
    pub size: u64,
    /// SHA-256 of the whole file, computed while it was written (including any resumed prefix).
    pub sha256: [u8; 32],
    pub duration: Duration,
    /// Bytes taken from an existing `.partial` rather than transferred by the final attempt.
    pub resumed_bytes: u64,
    /// Connection attempts used (1 when nothing went wrong).
    pub attempts: u32,
}

impl PullOutcome {
    /// The SHA-256 as lowercase hex, as `sha256sum` prints it.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Sees every byte of a pulled file, in file order from offset 0, as the pull writes it (a resumed
/// pull first re-feeds the prefix already on disk). A fresh observer is made for each attempt, so a
/// retry never feeds one observer twice. It runs on the writer thread: it must not block for long.
/// The transfer knows nothing of what the observer does with the bytes.
pub trait ByteObserver: Send + 'static {
    fn observe(&mut self, bytes: Bytes);
}

/// No observer.
impl ByteObserver for () {
    fn observe(&mut self, _bytes: Bytes) {}
}

/// Pulls `remote` from `target` into `local`, reconnecting and resuming after transient failures
/// within `opts.retry_budget`. The identity is decrypted once, before the first attempt.
///
/// `local` is chosen by the caller; nothing here derives it from remote names. An existing file at
/// `local` is replaced atomically once the new one is complete; the store decides whether that is wanted.
pub async fn pull(
    target: &SshTarget,
    remote: &str,
    local: &Path,
    opts: &PullOptions,
) -> Result<PullOutcome, TransferError> {
    let identity = load_identity(&target.identity_file, target.passphrase.as_ref())?;
    pull_with(target, &identity, remote, local, opts).await
}

/// [`pull`] with an identity loaded once by the caller (a daemon decrypts its key at start, not per pull).
pub async fn pull_with(
    target: &SshTarget,
    identity: &Identity,
    remote: &str,
    local: &Path,
    opts: &PullOptions,
) -> Result<PullOutcome, TransferError> {
    pull_observed(target, identity, remote, local, opts, || ())
        .await
        .map(|(outcome, ())| outcome)
}

/// [`pull_with`], showing every byte to an observer made by `new_observer` for each attempt; returns
/// the observer of the attempt that completed.
pub async fn pull_observed<O: ByteObserver>(
    target: &SshTarget,
    identity: &Identity,
    remote: &str,
    local: &Path,
    opts: &PullOptions,
    new_observer: impl Fn() -> O + Sync,
) -> Result<(PullOutcome, O), TransferError> {
    let started = Instant::now();
    let attempts = AtomicU32::new(0);
    let attempt = || async {
        attempts.fetch_add(1, Ordering::Relaxed);
        let (session, helpers) = connect_all(target, identity, opts).await?;
        let result = pull::pull_once(&session, &helpers, remote, local, opts, new_observer()).await;
        for helper in helpers {
            helper.close().await;
        }
        session.close().await;
        result
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(opts.min_backoff)
        .with_max_delay(opts.max_backoff)
        .with_max_times(opts.retry_budget as usize)
        .with_jitter();
    let result = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(TransferError::is_transient)
        .notify(|e, delay| {
            tracing::warn!(remote, error = %e, retry_in = ?delay, "pull interrupted; will resume");
        })
        .await;
    let attempts = attempts.load(Ordering::Relaxed);
    match result {
        Ok((mut outcome, observer)) => {
            outcome.attempts = attempts;
            outcome.duration = started.elapsed();
            Ok((outcome, observer))
        }
        Err(e) if e.is_transient() && attempts > 1 => Err(TransferError::RetriesExhausted {
            attempts,
            last: Box::new(e),
        }),
        Err(e) => Err(e),
    }
}

/// Most connections one pull opens.
pub const MAX_CONNECTIONS: usize = 4;

/// The pull's connections, all made at once: the main one and as many of the extra ones as could be
/// made. Only the main connection may record a host key met for the first time: the extra ones are
/// checked against what is already known, and one that meets an unknown key is simply not used. If
/// only an extra connection got through (a server that takes one connection at a time), it becomes
/// the main one; with none, the main connection's error is the answer.
async fn connect_all(
    target: &SshTarget,
    identity: &Identity,
    opts: &PullOptions,
) -> Result<(Session, Vec<Session>), TransferError> {
    let mut helper_target = target.clone();
    if let HostKeyPolicy::KnownHosts {
        trust_on_first_use, ..
    } = &mut helper_target.host_keys
    {
        *trust_on_first_use = false;
    }
    let extra = opts.connections.clamp(1, MAX_CONNECTIONS) - 1;
    let helpers = futures_util::future::join_all(
        (0..extra).map(|_| Session::connect_with(&helper_target, identity, &opts.session)),
    );
    let (main, helpers) = tokio::join!(
        Session::connect_with(target, identity, &opts.session),
        helpers
    );
    let mut extras = Vec::with_capacity(extra);
    for helper in helpers {
        match helper {
            Ok(s) => extras.push(s),
            Err(e) => tracing::info!(
                host = %target.host,
                error = %e,
                "an extra SSH connection could not be made; the pull goes on over the others \
                 (set [ssh] connections = 1 to stop trying)"
            ),
        }
    }
    let main = match main {
        Ok(s) => s,
        Err(e) if extras.is_empty() => return Err(e),
        Err(e) => {
            tracing::info!(
                host = %target.host,
                error = %e,
                "one SSH connection could not be made; the pull goes on over the others"
            );
            extras.remove(0)
        }
    };
    Ok((main, extras))
}

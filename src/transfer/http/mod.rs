//! HTTPS download engine: fetch one URL into a local path with a bearer token, byte-exact, hashed,
//! resumable where the server allows it, atomic — the same guarantees as the SFTP pull.
//!
//! It speaks the small part of HTTP/1.1 a single download needs (one `GET` per connection, `Content-Length`,
//! `chunked` or close-delimited bodies, `Range`/`If-Range`), over the same rustls configuration as the
//! WebSocket client, so `ca_file` and the certificate checks are the same. Bytes go through the same
//! writer thread as the SFTP pull (`pull::writer`), which hashes each chunk as it writes it, into
//! `<local>.partial` with a `<local>.partial.meta` sidecar, renamed into place once complete.
//!
//! A download resumes with `Range` only when the server said `Accept-Ranges: bytes`, gave a length, and
//! the same validator (`ETag` or `Last-Modified`) still holds (`If-Range`); otherwise it starts over.
//!
//! What it must not do: know about Home Assistant or backups (the caller gives the path and query);
//! follow redirects (the token would go wherever the redirect points); put the token in anything
//! but the `Authorization` header (never in an error, a log line or the sidecar); write anywhere but
//! `local` and its two sidecars.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::pull;
use super::{ByteObserver, PullOptions, PullOutcome, TransferError};
use crate::secret::Secret;

mod body;
mod connect;
mod response;
mod resume;
#[cfg(test)]
mod tests;

use body::read_body;
use connect::connect;
use response::{Framing, check_status, framing, parse_content_range, read_head};
use resume::{Meta, remove_if_exists, resumable};

/// Bytes handed to the writer per chunk; also the socket read buffer.
const CHUNK: usize = 256 * 1024;

/// Where and with which credentials to download. Built by the configuration layer.
#[derive(Clone)]
pub struct HttpTarget {
    /// `Some` for `https://`: the rustls configuration (web PKI roots plus `ca_file`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Host name or address, IPv6 without brackets.
    pub host: String,
    pub port: u16,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Secret,
    /// Limit for TCP connect, TLS handshake and the response head.
    pub connect_timeout: Duration,
    /// Longest silence while the body streams before the connection counts as dropped.
    pub read_timeout: Duration,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &self.url(""))
            .field("token", &self.token)
            .finish()
    }
}

impl HttpTarget {
    /// The URL of `path` (which starts with `/`), for messages; it never holds the token.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{path}", self.port)
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls.is_some() { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Downloads `path` (with its query) from `target` into `local`, reconnecting after transient
/// failures within `opts.retry_budget`; resumes where the server supports ranges, else starts over.
/// `opts.expected_size`, when set, must match the length the server gives and the bytes received.
pub async fn download(
    target: &HttpTarget,
    path: &str,
    local: &Path,
    opts: &PullOptions,
) -> Result<PullOutcome, TransferError> {
    download_observed(target, path, local, opts, || ())
        .await
        .map(|(outcome, ())| outcome)
}

/// [`download`], showing every byte to an observer made by `new_observer` for each attempt (see
/// [`ByteObserver`]); returns the observer of the attempt that completed.
pub async fn download_observed<O: ByteObserver>(
    target: &HttpTarget,
    path: &str,
    local: &Path,
    opts: &PullOptions,
    new_observer: impl Fn() -> O + Sync,
) -> Result<(PullOutcome, O), TransferError> {
    if !path.starts_with('/') || path.contains(['\r', '\n', ' ', '#']) {
        return Err(TransferError::HttpProtocol {
            url: target.url(""),
            message: format!("{path:?} is not a request path"),
        });
    }
    let started = Instant::now();
    let attempts = AtomicU32::new(0);
    let attempt = || async {
        attempts.fetch_add(1, Ordering::Relaxed);
        download_once(target, path, local, opts, new_observer()).await
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(opts.min_backoff)
        .with_max_delay(opts.max_backoff)
        .with_max_times(opts.retry_budget as usize)
        .with_jitter();
    let url = target.url(path);
    let result = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(TransferError::is_transient)
        .notify(|e, delay| {
            tracing::warn!(%url, error = %e, retry_in = ?delay, "download interrupted; will try again");
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

async fn download_once<O: ByteObserver>(
    target: &HttpTarget,
    path: &str,
    local: &Path,
    opts: &PullOptions,
    observer: O,
) -> Result<(PullOutcome, O), TransferError> {
    let started = Instant::now();
    let url = target.url(path);
    let paths = pull::local_paths(local)?;
    let resume = resumable(&paths, path);
    if resume.is_none() {
        remove_if_exists(&paths.partial)?;
        remove_if_exists(&paths.meta)?;
    }

    let mut conn = tokio::time::timeout(target.connect_timeout, connect(target, &url))
        .await
        .map_err(|_| TransferError::HttpUnreachable {
            url: url.clone(),
            message: format!("no connection within {:?}", target.connect_timeout),
        })??;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hapull/{}\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n",
        target.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    if let Some((meta, len)) = &resume {
        request.push_str(&format!(
            "Range: bytes={len}-\r\nIf-Range: {}\r\n",
            meta.validator
        ));
    }
    // The token is appended last and the buffer dropped right after sending, so it cannot end up
    // in a message built from `request`.
    let mut wire = request.into_bytes();
    wire.extend_from_slice(b"Authorization: Bearer ");
    wire.extend_from_slice(target.token.expose().as_bytes());
    wire.extend_from_slice(b"\r\n\r\n");
    let sent = tokio::time::timeout(target.connect_timeout, async {
        conn.write_all(&wire).await?;
        conn.flush().await
    })
    .await;
    drop(wire);
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(dropped(&url, &e)),
        Err(_) => return Err(silent(&url, target.connect_timeout)),
    }

    let mut reader = tokio::io::BufReader::with_capacity(CHUNK, conn);
    let head = tokio::time::timeout(target.read_timeout, read_head(&mut reader, &url))
        .await
        .map_err(|_| silent(&url, target.read_timeout))??;
    check_status(&head, &url, path)?;

    let framing = framing(&head, &url)?;
    let content_range = head.get("content-range").map(str::to_string);
    let (keep, size) = match (head.status, &resume) {
        (206, Some((meta, len))) => {
            let (start, total) =
                parse_content_range(content_range.as_deref()).ok_or_else(|| {
                    TransferError::HttpProtocol {
                        url: url.clone(),
                        message: format!("206 with an unusable Content-Range {content_range:?}"),
                    }
                })?;
            if start != *len || total != meta.size {
                // Not the range asked for: the prefix cannot be trusted to line up.
                remove_if_exists(&paths.partial)?;
                remove_if_exists(&paths.meta)?;
                return Err(TransferError::RemoteChanged { path: url });
            }
            (*len, Some(total))
        }
        (206, None) => {
            return Err(TransferError::HttpProtocol {
                url,
                message: "206 Partial Content to a request without Range".into(),
            });
        }
        _ => {
            if resume.is_some() {
                tracing::info!(%url, "the server sent the whole file again; starting over");
            }
            let size = match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            (0, size)
        }
    };
    if let Some(expected) = opts.expected_size
        && let Some(size) = size
        && expected != size
    {
        return Err(TransferError::SizeMismatch {
            path: url,
            what: "the expected size",
            expected,
            actual: size,
        });
    }
    let total_hint = size.or(opts.expected_size);

    let available = pull::available_space(&paths.dir)
        .map_err(|e| TransferError::local("check free space in", &paths.dir, e))?;
    let needed = total_hint
        .unwrap_or(0)
        .saturating_sub(keep)
        .saturating_add(opts.free_space_margin);
    if available < needed {
        return Err(TransferError::InsufficientSpace {
            dir: paths.dir.clone(),
            needed,
            available,
            margin: opts.free_space_margin,
        });
    }

    // Resumable later only with a length, ranges and a validator; a stream is started over.
    let ranges = head
        .get("accept-ranges")
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("bytes")));
    let validator = head
        .get("etag")
        .filter(|v| !v.starts_with("W/"))
        .or_else(|| head.get("last-modified"))
        .map(str::to_string);
    if keep == 0 {
        remove_if_exists(&paths.meta)?;
        if let (true, Some(size), Some(validator)) = (ranges || head.status == 206, size, validator)
        {
            let meta = Meta {
                path: path.to_string(),
                size,
                validator,
            };
            pull::write_synced(&paths.meta, &meta.text())
                .map_err(|e| TransferError::local("write", &paths.meta, e))?;
            pull::sync_dir(&paths.dir).map_err(|e| TransferError::local("fsync", &paths.dir, e))?;
        }
    } else {
        tracing::info!(%url, resumed_bytes = keep, size = ?size, "resuming partial download");
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(pull::WRITER_QUEUE);
    let partial = paths.partial.clone();
    let writer = tokio::task::spawn_blocking(move || pull::writer(partial, keep, rx, observer));
    let body_len = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let fetched = read_body(
        &mut reader,
        framing,
        &url,
        target.read_timeout,
        opts,
        keep,
        total_hint,
        tx,
    )
    .await;
    let written = writer.await.map_err(|e| {
        TransferError::local(
            "write",
            &paths.partial,
            std::io::Error::other(e.to_string()),
        )
    })?;
    // A failed write stops the reader too; the writer's error says why.
    let (sha256, total, observer) = written?;
    let received = fetched?;
    if let Some(n) = body_len
        && received != n
    {
        return Err(TransferError::HttpUnreachable {
            url,
            message: format!("the connection closed after {received} of {n} bytes"),
        });
    }
    if let Some(expected) = opts.expected_size
        && total != expected
    {
        // A close-delimited or chunked stream that ended early: try again from the start.
        if total < expected && body_len.is_none() {
            remove_if_exists(&paths.partial)?;
            return Err(TransferError::HttpUnreachable {
                url,
                message: format!("the stream ended after {total} of {expected} bytes"),
            });
        }
        return Err(TransferError::SizeMismatch {
            path: url,
            what: "the expected size",
            expected,
            actual: total,
        });
    }

    std::fs::rename(&paths.partial, local)
        .map_err(|e| TransferError::local("rename into place", local, e))?;
    remove_if_exists(&paths.meta)?;
    pull::sync_dir(&paths.dir).map_err(|e| TransferError::local("fsync", &paths.dir, e))?;
    let outcome = PullOutcome {
        size: total,
        sha256,
        duration: started.elapsed(),
        resumed_bytes: keep,
        attempts: 1,
    };
    Ok((outcome, observer))
}

fn dropped(url: &str, e: &std::io::Error) -> TransferError {
    TransferError::HttpUnreachable {
        url: url.to_string(),
        message: format!("connection lost: {e}"),
    }
}

fn silent(url: &str, after: Duration) -> TransferError {
    TransferError::HttpUnreachable {
        url: url.to_string(),
        message: format!("the server sent nothing for {after:?}"),
    }
}

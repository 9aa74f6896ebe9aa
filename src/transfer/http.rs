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
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

use super::pull::{self, Progress};
use super::{ByteObserver, PullOptions, PullOutcome, TransferError};
use crate::secret::Secret;

/// Largest response head accepted (status line plus headers).
const MAX_HEAD: usize = 64 * 1024;
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

/// What the sidecar says about the download a `.partial` holds the start of. Only a resumable one
/// (known length, ranges offered, a validator) is worth keeping.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    path: String,
    size: u64,
    validator: String,
}

impl Meta {
    fn text(&self) -> String {
        format!(
            "hapull-partial http v1\nsize {}\nvalidator {}\nremote {}\n",
            self.size, self.validator, self.path
        )
    }

    fn parse(text: &str) -> Option<Meta> {
        let mut lines = text.lines();
        if lines.next()? != "hapull-partial http v1" {
            return None;
        }
        let size = lines.next()?.strip_prefix("size ")?.parse().ok()?;
        let validator = lines.next()?.strip_prefix("validator ")?.to_string();
        let path = lines.next()?.strip_prefix("remote ")?.to_string();
        Some(Meta {
            path,
            size,
            validator,
        })
    }
}

fn remove_if_exists(p: &Path) -> Result<(), TransferError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TransferError::local("remove", p, e)),
    }
}

/// The prefix worth resuming from: what the sidecar describes for this same path, if anything.
fn resumable(paths: &pull::LocalPaths, path: &str) -> Option<(Meta, u64)> {
    let meta = Meta::parse(&std::fs::read_to_string(&paths.meta).ok()?)?;
    let len = std::fs::metadata(&paths.partial).ok()?.len();
    (meta.path == path && len > 0 && len < meta.size).then_some((meta, len))
}

/// One response head.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
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

async fn connect(target: &HttpTarget, url: &str) -> Result<Box<dyn Io>, TransferError> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| TransferError::HttpUnreachable {
            url: url.to_string(),
            message: format!("cannot connect: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &target.tls else {
        return Ok(Box::new(tcp));
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| {
        TransferError::Tls {
            url: url.to_string(),
            reason: format!("{:?} is not a valid server name: {e}", target.host),
        }
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(url, e))?;
    Ok(Box::new(stream))
}

/// A handshake failure caused by the certificate is permanent; anything else is a dropped connection.
fn tls_error(url: &str, e: std::io::Error) -> TransferError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => TransferError::Tls {
            url: url.to_string(),
            reason: match cert {
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "the certificate is not issued for this host name".to_string()
                }
                rustls::CertificateError::UnknownIssuer => {
                    "the certificate is signed by an unknown authority".to_string()
                }
                other => format!("invalid certificate: {other:?}"),
            },
        },
        Some(other) => TransferError::Tls {
            url: url.to_string(),
            reason: other.to_string(),
        },
        None => dropped(url, &e),
    }
}

/// Reads the status line and headers (skipping `100 Continue`-style interim answers).
async fn read_head<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    url: &str,
) -> Result<Head, TransferError> {
    let protocol = |message: String| TransferError::HttpProtocol {
        url: url.to_string(),
        message,
    };
    loop {
        let mut raw = Vec::new();
        loop {
            let before = raw.len();
            let n = (&mut *reader)
                .take((MAX_HEAD - before) as u64 + 1)
                .read_until(b'\n', &mut raw)
                .await
                .map_err(|e| dropped(url, &e))?;
            if n == 0 {
                return Err(TransferError::HttpUnreachable {
                    url: url.to_string(),
                    message: "the connection closed before a response".into(),
                });
            }
            if raw.len() > MAX_HEAD {
                return Err(protocol(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
            let line = &raw[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 96];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(protocol("incomplete head".into())),
            Err(e) => return Err(protocol(format!("bad head: {e}"))),
        }
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            continue;
        }
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        return Ok(Head { status, headers });
    }
}

fn check_status(head: &Head, url: &str, path: &str) -> Result<(), TransferError> {
    let status = head.status;
    let err = |hint: &str, transient: bool| TransferError::HttpStatus {
        url: url.to_string(),
        status,
        hint: hint.to_string(),
        transient,
    };
    match status {
        200 | 206 => Ok(()),
        300..=399 => Err(TransferError::Redirect {
            url: url.to_string(),
            status,
            location: head
                .get("location")
                .unwrap_or("")
                .chars()
                .take(300)
                .collect(),
        }),
        401 => Err(err(
            "the token was refused; use a long-lived access token of an administrator (Profile → Security)",
            false,
        )),
        403 => Err(err(
            "the token's user may not download this; downloads need an administrator's token (Settings → People → make the user an administrator)",
            false,
        )),
        404 => Err(err(
            &format!("{path} is not there (deleted, or on another agent)"),
            false,
        )),
        416 => Err(err(
            "the requested range is past the end of the file; starting over",
            true,
        )),
        408 | 429 | 500..=599 => Err(err("the server is busy or failed; trying again", true)),
        _ => Err(err("unexpected answer", false)),
    }
}

fn framing(head: &Head, url: &str) -> Result<Framing, TransferError> {
    if let Some(te) = head.get("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        if last.eq_ignore_ascii_case("chunked") {
            return Ok(Framing::Chunked);
        }
        return Ok(Framing::Close);
    }
    if let Some(ce) = head.get("content-encoding")
        && !ce.eq_ignore_ascii_case("identity")
    {
        return Err(TransferError::HttpProtocol {
            url: url.to_string(),
            message: format!("the body came {ce}-encoded although only identity was accepted"),
        });
    }
    match head.get("content-length") {
        Some(v) => v
            .parse::<u64>()
            .map(Framing::Length)
            .map_err(|_| TransferError::HttpProtocol {
                url: url.to_string(),
                message: format!("Content-Length {v:?} is not a number"),
            }),
        None => Ok(Framing::Close),
    }
}

/// `bytes <start>-<end>/<total>` → (start, total).
fn parse_content_range(v: Option<&str>) -> Option<(u64, u64)> {
    let rest = v?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, total))
}

/// Streams the body to the writer; returns the number of body bytes received.
#[allow(clippy::too_many_arguments)]
async fn read_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    framing: Framing,
    url: &str,
    idle: Duration,
    opts: &PullOptions,
    start: u64,
    total_hint: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<u64, TransferError> {
    let mut progress = Progress::new(opts.progress, start, total_hint.unwrap_or(0));
    let clock = tokio::time::Instant::now();
    let mut body = Body::new(framing);
    let mut received = 0u64;
    loop {
        if let Some(limit) = opts.bandwidth_limit.filter(|l| *l > 0) {
            let due = Duration::from_secs_f64(received as f64 / limit as f64);
            tokio::time::sleep_until(clock + due).await;
        }
        let chunk = tokio::time::timeout(idle, body.next(reader, url))
            .await
            .map_err(|_| silent(url, idle))??;
        let Some(chunk) = chunk else { break };
        received += chunk.len() as u64;
        if let Some(limit) = total_hint
            && start + received > limit
        {
            return Err(TransferError::SizeMismatch {
                path: url.to_string(),
                what: "the announced size",
                expected: limit,
                actual: start + received,
            });
        }
        if tx.send(chunk).await.is_err() {
            // The writer stopped; the caller reports its error.
            return Ok(received);
        }
        progress.update(start + received);
    }
    progress.finish();
    Ok(received)
}

/// The body decoder: yields the payload in chunks of at most [`CHUNK`] bytes, `None` at its end.
struct Body {
    framing: Framing,
    /// Bytes left in the body (`Length`) or in the current chunk (`Chunked`).
    left: u64,
    done: bool,
}

impl Body {
    fn new(framing: Framing) -> Body {
        Body {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            done: false,
        }
    }

    async fn next<R: AsyncBufRead + Unpin>(
        &mut self,
        r: &mut R,
        url: &str,
    ) -> Result<Option<Vec<u8>>, TransferError> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Length(_) => {
                if self.left == 0 {
                    self.done = true;
                    return Ok(None);
                }
                let got = read_some(r, self.left, url).await?;
                if got.is_empty() {
                    // Short: the caller compares what arrived with Content-Length.
                    self.done = true;
                    return Ok(None);
                }
                self.left -= got.len() as u64;
                Ok(Some(got))
            }
            Framing::Close => {
                let got = read_some(r, CHUNK as u64, url).await?;
                if got.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(got))
            }
            Framing::Chunked => {
                if self.left == 0 {
                    self.left = read_chunk_size(r, url).await?;
                    if self.left == 0 {
                        skip_trailers(r, url).await?;
                        self.done = true;
                        return Ok(None);
                    }
                }
                let got = read_some(r, self.left, url).await?;
                if got.is_empty() {
                    return Err(TransferError::HttpUnreachable {
                        url: url.to_string(),
                        message: "the connection closed inside a chunk".into(),
                    });
                }
                self.left -= got.len() as u64;
                if self.left == 0 {
                    expect_crlf(r, url).await?;
                }
                Ok(Some(got))
            }
        }
    }
}

/// Up to `max` bytes (and at most [`CHUNK`]); empty at end of stream.
async fn read_some<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: u64,
    url: &str,
) -> Result<Vec<u8>, TransferError> {
    let want = usize::try_from(max).unwrap_or(CHUNK).min(CHUNK);
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let buf = r.fill_buf().await.map_err(|e| dropped(url, &e))?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len().min(want - out.len());
        out.extend_from_slice(&buf[..n]);
        r.consume(n);
        // Hand over what is there rather than wait for a full chunk on a slow link.
        if out.len() >= want / 4 {
            break;
        }
    }
    Ok(out)
}

async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    url: &str,
    what: &str,
) -> Result<Vec<u8>, TransferError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(4097)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| dropped(url, &e))?;
    if n == 0 || !line.ends_with(b"\n") {
        if line.len() > 4096 {
            return Err(TransferError::HttpProtocol {
                url: url.to_string(),
                message: format!("{what} line longer than 4096 bytes"),
            });
        }
        return Err(TransferError::HttpUnreachable {
            url: url.to_string(),
            message: format!("the connection closed in a {what} line"),
        });
    }
    Ok(line)
}

async fn read_chunk_size<R: AsyncBufRead + Unpin>(
    r: &mut R,
    url: &str,
) -> Result<u64, TransferError> {
    let line = read_line(r, url, "chunk size").await?;
    let text = String::from_utf8_lossy(&line);
    let hex = text.split(';').next().unwrap_or("").trim();
    if hex.is_empty() || hex.len() > 15 {
        return Err(TransferError::HttpProtocol {
            url: url.to_string(),
            message: format!("bad chunk size {:?}", text.trim_end()),
        });
    }
    u64::from_str_radix(hex, 16).map_err(|_| TransferError::HttpProtocol {
        url: url.to_string(),
        message: format!("bad chunk size {hex:?}"),
    })
}

async fn expect_crlf<R: AsyncBufRead + Unpin>(r: &mut R, url: &str) -> Result<(), TransferError> {
    let line = read_line(r, url, "chunk end").await?;
    if line == b"\r\n" || line == b"\n" {
        Ok(())
    } else {
        Err(TransferError::HttpProtocol {
            url: url.to_string(),
            message: "chunk data longer than its size".into(),
        })
    }
}

async fn skip_trailers<R: AsyncBufRead + Unpin>(r: &mut R, url: &str) -> Result<(), TransferError> {
    for _ in 0..64 {
        let line = read_line(r, url, "trailer").await?;
        if line == b"\r\n" || line == b"\n" {
            return Ok(());
        }
    }
    Err(TransferError::HttpProtocol {
        url: url.to_string(),
        message: "more than 64 trailer lines".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode(framing: Framing, wire: &[u8]) -> Result<Vec<u8>, TransferError> {
        let mut r = tokio::io::BufReader::with_capacity(7, wire);
        let mut body = Body::new(framing);
        let mut out = Vec::new();
        while let Some(c) = body.next(&mut r, "http://x/").await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: y\r\n\r\n";
        assert_eq!(
            decode(Framing::Chunked, wire).await.unwrap(),
            b"hello 0123456789"
        );
    }

    #[tokio::test]
    async fn a_chunked_body_cut_mid_chunk_is_a_dropped_connection() {
        let e = decode(Framing::Chunked, b"a\r\n01234").await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let e = decode(Framing::Chunked, b"5\r\nhello").await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let e = decode(Framing::Chunked, b"zz\r\n").await.unwrap_err();
        assert!(matches!(e, TransferError::HttpProtocol { .. }), "{e}");
        let e = decode(Framing::Chunked, b"2\r\nabc\r\n").await.unwrap_err();
        assert!(matches!(e, TransferError::HttpProtocol { .. }), "{e}");
    }

    #[tokio::test]
    async fn length_and_close_delimited_bodies() {
        assert_eq!(
            decode(Framing::Length(4), b"abcdefgh").await.unwrap(),
            b"abcd"
        );
        assert_eq!(decode(Framing::Length(9), b"abc").await.unwrap(), b"abc");
        assert_eq!(
            decode(Framing::Close, b"abcdefgh").await.unwrap(),
            b"abcdefgh"
        );
    }

    #[test]
    fn content_range_and_meta_round_trip() {
        assert_eq!(
            parse_content_range(Some("bytes 100-199/1000")),
            Some((100, 1000))
        );
        assert_eq!(parse_content_range(Some("bytes */1000")), None);
        assert_eq!(parse_content_range(Some("bytes 5-4/10")), None);
        let m = Meta {
            path: "/a?b=c".into(),
            size: 42,
            validator: "\"abc\"".into(),
        };
        assert_eq!(Meta::parse(&m.text()), Some(m));
        assert_eq!(Meta::parse("hapull-partial v1\nsize 1\n"), None);
    }

    #[test]
    fn statuses_say_what_to_do_and_which_are_worth_retrying() {
        let head = |status, headers: &[(&str, &str)]| Head {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let e = check_status(&head(401, &[]), "u", "/p").unwrap_err();
        assert!(
            !e.is_transient() && e.to_string().contains("administrator"),
            "{e}"
        );
        let e = check_status(&head(302, &[("Location", "https://evil/")]), "u", "/p").unwrap_err();
        assert!(
            !e.is_transient() && e.to_string().contains("not followed"),
            "{e}"
        );
        assert!(
            check_status(&head(503, &[]), "u", "/p")
                .unwrap_err()
                .is_transient()
        );
        assert!(check_status(&head(200, &[]), "u", "/p").is_ok());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let t = HttpTarget {
            tls: None,
            host: "::1".into(),
            port: 8123,
            token: Secret::new("very-secret-token"),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        };
        let s = format!("{t:?}");
        assert!(
            !s.contains("very-secret-token") && s.contains("http://[::1]:8123"),
            "{s}"
        );
        assert_eq!(t.host_header(), "[::1]:8123");
    }
}

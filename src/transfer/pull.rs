//! The bulk download: pipelined SFTP reads feeding a writer thread that hashes as it writes, resume from
//! a `.partial` file, free-space preflight, and the atomic commit.
//!
//! Invariant: the destination name appears only after size checks pass, via rename of a fsynced file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, StatusCode};

use super::disk::{self, DiskWriter};
use super::session::Session;
use super::sha::Sha256Thread;
use super::{ByteObserver, PullOptions, PullOutcome, TransferError};

/// Chunks queued between the network and the writer; bounds memory together with the read window.
pub(super) const WRITER_QUEUE: usize = 16;
/// How often progress is logged when no terminal bar is shown.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) struct LocalPaths {
    pub(crate) partial: PathBuf,
    pub(crate) meta: PathBuf,
    pub(crate) dir: PathBuf,
}

pub(crate) fn local_paths(local: &Path) -> Result<LocalPaths, TransferError> {
    let Some(name) = local.file_name() else {
        return Err(TransferError::local(
            "use as destination file",
            local,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
        ));
    };
    let with_suffix = |suffix: &str| {
        let mut n = name.to_os_string();
        n.push(suffix);
        local.with_file_name(n)
    };
    let dir = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(LocalPaths {
        partial: with_suffix(".partial"),
        meta: with_suffix(".partial.meta"),
        dir,
    })
}

/// What the sidecar records about the remote file the `.partial` holds a prefix of.
fn meta_text(remote: &str, size: u64, mtime: Option<u32>) -> String {
    let mtime = mtime.map_or_else(|| "-".to_string(), |m| m.to_string());
    format!("hapull-partial v1\nsize {size}\nmtime {mtime}\nremote {remote}\n")
}

/// How many bytes of an existing `.partial` can be kept; discards it (and its sidecar) when it belongs
/// to another file or another version of this one.
fn resume_point(paths: &LocalPaths, wanted_meta: &str, size: u64) -> Result<u64, TransferError> {
    let meta = std::fs::read_to_string(&paths.meta).ok();
    let partial_len = std::fs::metadata(&paths.partial).ok().map(|m| m.len());
    match (meta, partial_len) {
        (Some(m), Some(len)) if m == wanted_meta && len <= size => {
            return Ok(disk::resume_offset(len));
        }
        (None, None) => return Ok(0),
        _ => {}
    }
    tracing::info!(partial = %paths.partial.display(), "discarding a partial download of another or changed remote file");
    for p in [&paths.partial, &paths.meta] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TransferError::local("remove stale", p, e)),
        }
    }
    Ok(0)
}

pub(super) fn available_space(dir: &Path) -> std::io::Result<u64> {
    crate::private_fs::available_space(dir)
}

pub(super) fn write_synced(path: &Path, text: &str) -> std::io::Result<()> {
    crate::private_fs::write_atomic(path, text.as_bytes())
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    crate::private_fs::sync_dir(dir)
}

/// The writer side: re-hashes the kept prefix, then appends and hashes each chunk in order. The
/// observer sees every byte from offset 0: the kept prefix as it is re-read, then each chunk once it
/// is written. Shared by every transport, so the observer sees the same stream whichever way the
/// bytes came.
pub(super) fn writer<O: ByteObserver>(
    partial: PathBuf,
    keep: u64,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut observer: O,
) -> Result<([u8; 32], u64, O), TransferError> {
    // Private from the first byte: an unprotected backup holds every secret of the home.
    let mut file = crate::private_fs::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&partial)
        .and_then(|f| crate::private_fs::make_private(&f).map(|()| f))
        .map_err(|e| TransferError::local("open", &partial, e))?;
    file.set_len(keep)
        .map_err(|e| TransferError::local("truncate", &partial, e))?;
    let mut sha = Sha256Thread::start().map_err(|e| TransferError::local("hash", &partial, e))?;
    let hash_err = |e| TransferError::local("hash", &partial, e);
    let mut buf = vec![0u8; 1 << 20];
    let mut hashed = 0u64;
    while hashed < keep {
        let n = file
            .read(&mut buf)
            .map_err(|e| TransferError::local("re-read", &partial, e))?;
        if n == 0 {
            break;
        }
        let n = n.min(usize::try_from(keep - hashed).unwrap_or(n));
        let piece = Bytes::copy_from_slice(&buf[..n]);
        sha.update(piece.clone()).map_err(hash_err)?;
        observer.observe(piece);
        hashed += n as u64;
    }
    drop(buf);
    let mut disk = DiskWriter::new(file, &partial, hashed)
        .map_err(|e| TransferError::local("open", &partial, e))?;
    tracing::debug!(
        direct_io = disk.direct(),
        from = hashed,
        "writing the download"
    );
    while let Some(chunk) = rx.blocking_recv() {
        let piece = Bytes::from(chunk);
        sha.update(piece.clone()).map_err(hash_err)?;
        disk.write(&piece)
            .map_err(|e| TransferError::local("write", &partial, e))?;
        observer.observe(piece);
    }
    let total = disk
        .finish()
        .map_err(|e| TransferError::local("write and fsync", &partial, e))?;
    let sha = sha.finish().map_err(hash_err)?;
    Ok((sha, total, observer))
}

pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
    base: u64,
    size: u64,
}

impl Progress {
    pub(super) fn new(show_bar: bool, base: u64, size: u64) -> Self {
        use std::io::IsTerminal;
        let bar = (show_bar && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(size);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar.set_position(base);
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            started: now,
            last_log: now,
            base,
            size,
        }
    }

    pub(super) fn update(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.last_log.elapsed() >= LOG_INTERVAL {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = (done - self.base) as f64 / secs;
            tracing::info!(
                bytes = done,
                total = self.size,
                rate_bytes_per_sec = rate as u64,
                "pulling"
            );
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One attempt: `s` checks, sizes and reads the file; each of `helpers` (extra connections to the
/// same server) opens it too and takes its turn at the reads.
pub(crate) async fn pull_once<O: ByteObserver>(
    s: &Session,
    helpers: &[Session],
    remote: &str,
    local: &Path,
    opts: &PullOptions,
    observer: O,
) -> Result<(PullOutcome, O), TransferError> {
    let handle = s.open_read(remote).await?;
    let mut readers = vec![Reader {
        session: s,
        handle: handle.clone(),
    }];
    let result = match s.sftp.fstat(handle.as_str()).await {
        Ok(attrs) => {
            for h in helpers {
                if let Some(r) = same_file(h, remote, &attrs.attrs).await {
                    readers.push(r);
                }
            }
            pull_open(&readers, attrs.attrs, remote, local, opts, observer).await
        }
        Err(e) => Err(s.remote_err("stat", remote, e)),
    };
    for r in &readers {
        let _ = r.session.sftp.close(r.handle.as_str()).await;
    }
    result
}

/// Opens `remote` on an extra connection, and keeps it only if it is the file the main connection
/// has open (same size and modification time): reads taken in turns from a file replaced between
/// the two opens would mix two files. An extra connection that cannot is simply left out.
async fn same_file<'a>(h: &'a Session, remote: &str, attrs: &FileAttributes) -> Option<Reader<'a>> {
    let handle = match h.open_read(remote).await {
        Ok(handle) => handle,
        Err(e) => {
            tracing::debug!(remote, error = %e, "an extra connection cannot open the file");
            return None;
        }
    };
    match h.sftp.fstat(handle.as_str()).await {
        Ok(a) if a.attrs.size == attrs.size && a.attrs.mtime == attrs.mtime => {
            Some(Reader { session: h, handle })
        }
        _ => {
            tracing::debug!(remote, "an extra connection sees another file; not used");
            let _ = h.sftp.close(handle).await;
            None
        }
    }
}

/// A connection with the file open on it.
struct Reader<'a> {
    session: &'a Session,
    handle: String,
}

/// The pull proper, over `readers` (the main connection first), of a file whose attributes the
/// main connection found to be `attrs`.
async fn pull_open<O: ByteObserver>(
    readers: &[Reader<'_>],
    attrs: FileAttributes,
    remote: &str,
    local: &Path,
    opts: &PullOptions,
    observer: O,
) -> Result<(PullOutcome, O), TransferError> {
    let started = Instant::now();
    let Some(size) = attrs.size else {
        return Err(TransferError::Remote {
            op: "stat",
            path: remote.to_string(),
            message: "the server did not report a size".into(),
        });
    };
    if let Some(expected) = opts.expected_size
        && expected != size
    {
        return Err(TransferError::SizeMismatch {
            path: remote.to_string(),
            what: "the expected size",
            expected,
            actual: size,
        });
    }
    let mtime = attrs.mtime;
    let paths = local_paths(local)?;
    let wanted_meta = meta_text(remote, size, mtime);
    let keep = resume_point(&paths, &wanted_meta, size)?;

    let available = available_space(&paths.dir)
        .map_err(|e| TransferError::local("check free space in", &paths.dir, e))?;
    let needed = (size - keep).saturating_add(opts.free_space_margin);
    if available < needed {
        return Err(TransferError::InsufficientSpace {
            dir: paths.dir.clone(),
            needed,
            available,
            margin: opts.free_space_margin,
        });
    }
    if keep == 0 || !paths.meta.exists() {
        write_synced(&paths.meta, &wanted_meta)
            .map_err(|e| TransferError::local("write", &paths.meta, e))?;
        sync_dir(&paths.dir).map_err(|e| TransferError::local("fsync", &paths.dir, e))?;
    }
    if keep > 0 {
        tracing::info!(
            remote,
            resumed_bytes = keep,
            size,
            "resuming partial download"
        );
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITER_QUEUE);
    let partial = paths.partial.clone();
    let writer = tokio::task::spawn_blocking(move || writer(partial, keep, rx, observer));

    let fetched = fetch(readers, remote, keep, size, opts, tx).await;
    let written = writer.await.map_err(|e| {
        TransferError::local(
            "write",
            &paths.partial,
            std::io::Error::other(e.to_string()),
        )
    })?;
    // A failed write makes the reader stop too; the writer's error is the one that explains why.
    let (sha256, total, observer) = written?;
    fetched?;

    // The file must not have changed under any of the connections while they read it.
    for r in readers {
        let after = (r.session.sftp.fstat(r.handle.as_str()).await)
            .map_err(|e| r.session.remote_err("stat", remote, e))?
            .attrs;
        if after.size != Some(size) || after.mtime != mtime {
            return Err(TransferError::RemoteChanged {
                path: remote.to_string(),
            });
        }
    }
    if total != size {
        return Err(TransferError::SizeMismatch {
            path: remote.to_string(),
            what: "the remote size",
            expected: size,
            actual: total,
        });
    }

    std::fs::rename(&paths.partial, local)
        .map_err(|e| TransferError::local("rename into place", local, e))?;
    match std::fs::remove_file(&paths.meta) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(TransferError::local("remove", &paths.meta, e)),
    }
    sync_dir(&paths.dir).map_err(|e| TransferError::local("fsync", &paths.dir, e))?;

    Ok((
        PullOutcome {
            size,
            sha256,
            duration: started.elapsed(),
            resumed_bytes: keep,
            attempts: 1,
        },
        observer,
    ))
}

/// Keeps `outstanding` reads in flight and hands the answers, in file order, to the writer. The
/// reads go to the connections in turn (read `k` to connection `k mod n`), so each server process
/// sends its share while the answers are still taken in order.
async fn fetch(
    readers: &[Reader<'_>],
    remote: &str,
    start: u64,
    size: u64,
    opts: &PullOptions,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), TransferError> {
    let mut progress = Progress::new(opts.progress, start, size);
    let clock = tokio::time::Instant::now();
    let mut next = start;
    let mut done = start;
    let mut inflight = FuturesOrdered::new();
    let Some(first) = readers.first() else {
        return Ok(());
    };
    let (s, handle) = (first.session, first.handle.as_str());
    let chunk = u64::from(s.read_size);
    let mut turn = readers.iter().cycle();
    // With a bandwidth limit, each request waits for its moment: the one at `next` may go once the
    // limit allows the bytes before it.
    let limit = opts.bandwidth_limit.filter(|l| *l > 0);
    let due = |next: u64| {
        limit.map(|l| clock + Duration::from_secs_f64((next - start) as f64 / l as f64))
    };
    loop {
        let now = tokio::time::Instant::now();
        while inflight.len() < s.outstanding && next < size && due(next).is_none_or(|at| at <= now)
        {
            let len = (size - next).min(chunk) as u32;
            let Some(reader) = turn.next() else { break };
            let sftp = reader.session.sftp.clone();
            let h = reader.handle.clone();
            let off = next;
            inflight.push_back(async move { (off, len, sftp.read(h, off, len).await) });
            next += u64::from(len);
        }
        // Wait for the next answer, or for the moment the next request may go: the requests in
        // flight are only sent and answered while they are being polled, never while this waits
        // for the pace alone.
        let pace = (next < size && inflight.len() < s.outstanding)
            .then(|| due(next))
            .flatten();
        let answer = match (pace, inflight.is_empty()) {
            (None, _) => inflight.next().await,
            (Some(at), true) => {
                tokio::time::sleep_until(at).await;
                continue;
            }
            (Some(at), false) => tokio::select! {
                answer = inflight.next() => answer,
                () = tokio::time::sleep_until(at) => continue,
            },
        };
        let Some((off, len, result)) = answer else {
            break;
        };
        let mut data = match result {
            Ok(d) => d.data,
            Err(SftpError::Status(st)) if st.status_code == StatusCode::Eof => Vec::new(),
            Err(e) => return Err(s.remote_err("read", remote, e)),
        };
        // Servers may answer with less than asked; fetch the gap before moving on so order holds.
        while (data.len() as u64) < u64::from(len) {
            let have = data.len() as u64;
            let want = (u64::from(len) - have) as u32;
            match s.sftp.read(handle, off + have, want).await {
                Ok(d) if !d.data.is_empty() => data.extend_from_slice(&d.data),
                Ok(_) => {
                    return Err(TransferError::RemoteChanged {
                        path: remote.to_string(),
                    });
                }
                Err(SftpError::Status(st)) if st.status_code == StatusCode::Eof => {
                    return Err(TransferError::RemoteChanged {
                        path: remote.to_string(),
                    });
                }
                Err(e) => return Err(s.remote_err("read", remote, e)),
            }
        }
        done += data.len() as u64;
        if tx.send(data).await.is_err() {
            // The writer stopped; its own error is reported by the caller.
            return Ok(());
        }
        progress.update(done);
    }
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_meta_sit_beside_the_destination() {
        let p = local_paths(Path::new("/a/b/backup.tar")).unwrap();
        assert_eq!(p.partial, Path::new("/a/b/backup.tar.partial"));
        assert_eq!(p.meta, Path::new("/a/b/backup.tar.partial.meta"));
        assert_eq!(p.dir, Path::new("/a/b"));
        assert_eq!(local_paths(Path::new("x.tar")).unwrap().dir, Path::new("."));
        assert!(local_paths(Path::new("/")).is_err());
    }

    #[test]
    fn stale_partial_of_a_changed_file_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let paths = local_paths(&dir.path().join("f.tar")).unwrap();
        std::fs::write(&paths.partial, vec![7u8; 10_000]).unwrap();
        std::fs::write(&paths.meta, meta_text("/r/f.tar", 20_000, Some(1))).unwrap();
        // The kept prefix is rounded down to an aligned offset, so direct I/O can go on from it.
        assert_eq!(
            resume_point(&paths, &meta_text("/r/f.tar", 20_000, Some(1)), 20_000).unwrap(),
            8192
        );
        assert_eq!(
            resume_point(&paths, &meta_text("/r/f.tar", 20_000, Some(2)), 20_000).unwrap(),
            0
        );
        assert!(!paths.partial.exists() && !paths.meta.exists());
    }
}

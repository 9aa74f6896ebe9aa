//! The files of one log: rotated-file names, discovery, line reading (plain or gzip) and the seal.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::AuditError;

/// A rotated file found beside the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotated {
    pub path: PathBuf,
    pub first_seq: u64,
    pub compressed: bool,
}

/// `<name>.<YYYYMMDDTHHMMSSZ>-<first seq>`; the caller appends `.gz` when compressing.
pub(crate) fn rotated_name(current: &Path, started: Timestamp, first_seq: u64) -> PathBuf {
    let stamp = started.strftime("%Y%m%dT%H%M%SZ");
    let mut name = current.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{stamp}-{first_seq:012}"));
    current.with_file_name(name)
}

/// Parses the suffix after `<name>.`: returns (first seq, compressed).
fn parse_suffix(suffix: &str) -> Option<(u64, bool)> {
    let (body, compressed) = match suffix.strip_suffix(".gz") {
        Some(b) => (b, true),
        None => (suffix, false),
    };
    let (stamp, seq) = body.split_once('-')?;
    let s = stamp.as_bytes();
    let stamp_ok = s.len() == 16
        && s[..8].iter().all(u8::is_ascii_digit)
        && s[8] == b'T'
        && s[9..15].iter().all(u8::is_ascii_digit)
        && s[15] == b'Z';
    if !stamp_ok || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq.parse().ok()?, compressed))
}

/// Rotated siblings of `current`, oldest first. When both a plain and a `.gz` copy exist (a compression
/// was interrupted before the plain file was removed), the plain one is listed: it is the original.
pub(crate) fn rotated_siblings(current: &Path) -> Result<Vec<Rotated>, AuditError> {
    let dir = parent_dir(current);
    let Some(base) = current.file_name().and_then(|n| n.to_str()) else {
        return Err(AuditError::InvalidOptions {
            path: current.to_path_buf(),
            what: "the path has no UTF-8 file name; use a path like /var/lib/hapull/audit.jsonl"
                .into(),
        });
    };
    let prefix = format!("{base}.");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(&dir, "listing the directory", e)),
    };
    let mut found: Vec<Rotated> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(&dir, "listing the directory", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(suffix) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some((first_seq, compressed)) = parse_suffix(suffix) else {
            continue;
        };
        found.push(Rotated {
            path: entry.path(),
            first_seq,
            compressed,
        });
    }
    found.sort_by(|a, b| {
        (a.first_seq, a.compressed, &a.path).cmp(&(b.first_seq, b.compressed, &b.path))
    });
    found.dedup_by(|later, earlier| later.first_seq == earlier.first_seq);
    Ok(found)
}

/// The files of the log at `current`, in chain order: rotated siblings, then the current file if it exists.
pub fn discover(current: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<PathBuf> = rotated_siblings(current)?
        .into_iter()
        .map(|r| r.path)
        .collect();
    if current.exists() {
        files.push(current.to_path_buf());
    }
    Ok(files)
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(crate) fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// Opens a log file for reading, decompressing `.gz` files transparently.
pub(crate) fn open_lines(path: &Path) -> Result<LineReader, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::io(path, "opening for reading", e))?;
    let inner: Box<dyn BufRead + Send> = if is_gz(path) {
        Box::new(BufReader::with_capacity(
            256 * 1024,
            MultiGzDecoder::new(BufReader::new(file)),
        ))
    } else {
        Box::new(BufReader::with_capacity(256 * 1024, file))
    };
    Ok(LineReader {
        inner,
        path: path.to_path_buf(),
        offset: 0,
        line_no: 0,
    })
}

/// One line as found in a file: where it starts, its bytes (without newline), and whether a newline ended it.
#[derive(Debug, Clone)]
pub(crate) struct RawLine {
    pub line_no: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub newline: bool,
}

pub(crate) struct LineReader {
    inner: Box<dyn BufRead + Send>,
    path: PathBuf,
    offset: u64,
    line_no: u64,
}

impl LineReader {
    pub fn next_line(&mut self) -> Result<Option<RawLine>, AuditError> {
        let mut bytes = Vec::new();
        let n = self
            .inner
            .read_until(b'\n', &mut bytes)
            .map_err(|e| AuditError::io(&self.path, "reading", e))?;
        if n == 0 {
            return Ok(None);
        }
        let offset = self.offset;
        self.offset += n as u64;
        self.line_no += 1;
        let newline = bytes.last() == Some(&b'\n');
        if newline {
            bytes.pop();
        }
        Ok(Some(RawLine {
            line_no: self.line_no,
            offset,
            bytes,
            newline,
        }))
    }
}

/// Up to `n` last lines of a plain file of length `len`, oldest first, found by reading backwards in
/// growing windows so a multi-gigabyte log is not read whole at open.
pub(crate) fn last_lines(
    file: &mut File,
    path: &Path,
    len: u64,
    n: usize,
) -> Result<Vec<RawLine>, AuditError> {
    let mut window: u64 = 64 * 1024;
    loop {
        let window_len = window.min(len);
        let start = len - window_len;
        let mut buf = vec![0u8; window_len as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| AuditError::io(path, "reading the tail", e))?;
        let mut lines = split_lines(&buf, start);
        // The first piece of a window that does not start at 0 may be cut; drop it.
        if start > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        if lines.len() >= n || start == 0 {
            let skip = lines.len().saturating_sub(n);
            return Ok(lines.split_off(skip));
        }
        window = window.saturating_mul(4);
    }
}

/// The first line of a plain file (for its start time and first seq).
pub(crate) fn first_line(path: &Path) -> Result<Option<RawLine>, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::io(path, "opening for reading", e))?;
    let mut reader = LineReader {
        inner: Box::new(BufReader::new(file.take(16 * 1024 * 1024))),
        path: path.to_path_buf(),
        offset: 0,
        line_no: 0,
    };
    reader.next_line()
}

fn split_lines(buf: &[u8], base: u64) -> Vec<RawLine> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let (end, newline) = match buf[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (pos + i, true),
            None => (buf.len(), false),
        };
        out.push(RawLine {
            line_no: 0,
            offset: base + pos as u64,
            bytes: buf[pos..end].to_vec(),
            newline,
        });
        pos = end + usize::from(newline);
    }
    out
}

/// The last line of any log file (plain: read backwards; gzip: streamed through).
pub(crate) fn last_line_of(path: &Path) -> Result<Option<RawLine>, AuditError> {
    if is_gz(path) {
        let mut reader = open_lines(path)?;
        let mut last = None;
        while let Some(line) = reader.next_line()? {
            last = Some(line);
        }
        return Ok(last);
    }
    let mut file = File::open(path).map_err(|e| AuditError::io(path, "opening for reading", e))?;
    let len = file
        .metadata()
        .map_err(|e| AuditError::io(path, "reading metadata", e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    Ok(last_lines(&mut file, path, len, 1)?.pop())
}

/// The seal: the last durable record's seq and line hash, kept beside the log so that the newest record
/// (which has no successor carrying its hash) and the end of the log are covered too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Seal {
    pub seq: u64,
    pub sha256: String,
}

pub(crate) fn seal_path(current: &Path) -> PathBuf {
    let mut name = current.file_name().unwrap_or_default().to_os_string();
    name.push(".seal");
    current.with_file_name(name)
}

pub(crate) fn read_seal(path: &Path) -> Result<Option<Seal>, AuditError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AuditError::BadRotatedFile {
                    path: path.to_path_buf(),
                    name: "seal".into(),
                    why: format!("the seal file is not valid: {e}"),
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io(path, "reading the seal", e)),
    }
}

/// Replaces the seal atomically (see [`crate::private_fs::write_atomic`]).
pub(crate) fn write_seal(path: &Path, seal: &Seal) -> Result<(), AuditError> {
    let mut bytes = serde_json::to_vec(seal).unwrap_or_default();
    bytes.push(b'\n');
    crate::private_fs::write_atomic(path, &bytes)
        .map_err(|e| AuditError::io(path, "writing the seal", e))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    crate::private_fs::sync_dir(dir).map_err(|e| AuditError::io(dir, "syncing the directory", e))
}

/// Compresses a rotated file to `<file>.gz` (temporary name, fsync, rename, fsync directory), then removes
/// the plain file. Interrupted runs leave either the plain file alone or both; both are handled at open.
pub(crate) fn compress_rotated(plain: &Path) -> Result<PathBuf, AuditError> {
    let mut gz_name = plain.file_name().unwrap_or_default().to_os_string();
    gz_name.push(".gz");
    let gz = plain.with_file_name(&gz_name);
    gz_name.push(".tmp");
    let tmp = plain.with_file_name(gz_name);
    let result = (|| {
        let mut input = File::open(plain)?;
        let _ = fs::remove_file(&tmp);
        let out = crate::private_fs::create_new(&tmp)?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        io::copy(&mut input, &mut enc)?;
        let out = enc.finish()?;
        out.sync_all()?;
        fs::rename(&tmp, &gz)
    })();
    result.map_err(|e| AuditError::io(plain, "compressing the rotated file", e))?;
    sync_dir(&parent_dir(plain))?;
    fs::remove_file(plain).map_err(|e| AuditError::io(plain, "removing after compression", e))?;
    Ok(gz)
}

/// Finishes compressions a crash interrupted: removes half-written `.gz.tmp` files, removes plain files
/// whose `.gz` is complete, and compresses the remaining plain rotated files.
pub(crate) fn finish_compressions(current: &Path) -> Result<(), AuditError> {
    let dir = parent_dir(current);
    let Some(base) = current.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let prefix = format!("{base}.");
    let entries =
        fs::read_dir(&dir).map_err(|e| AuditError::io(&dir, "listing the directory", e))?;
    let mut plain = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(&dir, "listing the directory", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(suffix) = name.strip_prefix(&prefix) else {
            continue;
        };
        if let Some(body) = suffix.strip_suffix(".gz.tmp") {
            if parse_suffix(body).is_some() {
                fs::remove_file(entry.path())
                    .map_err(|e| AuditError::io(entry.path(), "removing a partial file", e))?;
            }
        } else if let Some((_, false)) = parse_suffix(suffix) {
            plain.push(entry.path());
        }
    }
    for p in plain {
        let mut gz_name = p.file_name().unwrap_or_default().to_os_string();
        gz_name.push(".gz");
        let gz = p.with_file_name(gz_name);
        if gz.exists() {
            fs::remove_file(&p).map_err(|e| AuditError::io(&p, "removing after compression", e))?;
        } else {
            compress_rotated(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_parse_back() {
        let t: Timestamp = "2026-11-26T09:35:00Z".parse().unwrap();
        let p = rotated_name(Path::new("/x/audit.jsonl"), t, 123);
        assert_eq!(p, Path::new("/x/audit.jsonl.20261126T093500Z-000000000123"));
        assert_eq!(
            parse_suffix("20261126T093500Z-000000000123"),
            Some((123, false))
        );
        assert_eq!(parse_suffix("20261126T093500Z-7.gz"), Some((7, true)));
        assert_eq!(parse_suffix("seal"), None);
        assert_eq!(parse_suffix("20261126T093500Z-7.gz.tmp"), None);
    }

    #[test]
    fn split_keeps_offsets_and_missing_newline() {
        let lines = split_lines(b"ab\ncd\nef", 10);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].offset, 13);
        assert_eq!(lines[2].bytes, b"ef");
        assert!(!lines[2].newline);
    }
}

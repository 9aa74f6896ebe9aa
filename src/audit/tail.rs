//! Reading records back for people: filter by kind and time, print as text or JSON, follow new records
//! across rotation. Reading never checks the chain (that is [`super::verify`]) and never writes.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::AuditError;
use super::files;
use super::record::{Record, format_time, parse_line};

/// Which records to show. Empty `kinds` means every kind.
#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    pub kinds: Vec<String>,
    pub since: Option<Timestamp>,
}

impl TailFilter {
    pub fn matches(&self, rec: &Record) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == &rec.kind))
            && self.since.is_none_or(|t| rec.time >= t)
    }
}

/// A record and its exact line as stored (for `--json`, which prints the line unchanged).
#[derive(Debug, Clone)]
pub struct TailLine {
    pub record: Record,
    pub line: String,
}

/// One line of text for a record: time, seq, kind, instance, data.
pub fn format_text(rec: &Record) -> String {
    let data = serde_json::to_string(&rec.data).unwrap_or_default();
    format!(
        "{}  #{:<8} {:<18} {}  {}",
        format_time(rec.time),
        rec.seq,
        rec.kind,
        rec.instance,
        data
    )
}

/// Parses a line; `None` for lines that are not records (torn fragments and damage, which `verify` reports).
pub fn parse(line: &[u8]) -> Option<TailLine> {
    let record = parse_line(line).ok()?;
    let line = String::from_utf8(line.to_vec()).ok()?;
    Some(TailLine { record, line })
}

/// Calls `each` for every matching record in `files`, oldest first. Returns how many lines were skipped
/// because they are not records.
pub fn read(
    files: &[PathBuf],
    filter: &TailFilter,
    mut each: impl FnMut(TailLine),
) -> Result<u64, AuditError> {
    let mut skipped = 0;
    for file in files {
        let mut reader = files::open_lines(file)?;
        while let Some(raw) = reader.next_line()? {
            match parse(&raw.bytes) {
                Some(t) if filter.matches(&t.record) => each(t),
                Some(_) => {}
                None => skipped += 1,
            }
        }
    }
    Ok(skipped)
}

/// Follows the current file: every [`Follower::poll`] returns the complete lines appended since the last
/// one. When the file is rotated away, the rest of the old file is read first, then the new file from its
/// start, so no record is missed or repeated.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the beginning of the current file (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Follower {
            path: path.into(),
            file: None,
            ino: 0,
            offset: 0,
            partial: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Complete new lines (without newlines), oldest first.
    pub fn poll(&mut self) -> Result<Vec<Vec<u8>>, AuditError> {
        let mut lines = Vec::new();
        // Two rounds at most: the old file's rest, then the new file after a rotation.
        for _ in 0..2 {
            if self.file.is_none() {
                match File::open(&self.path) {
                    Ok(f) => {
                        let meta = f
                            .metadata()
                            .map_err(|e| AuditError::io(&self.path, "reading metadata", e))?;
                        self.ino = meta.ino();
                        self.offset = 0;
                        self.partial.clear();
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(lines),
                    Err(e) => return Err(AuditError::io(&self.path, "opening for reading", e)),
                }
            }
            self.read_available(&mut lines)?;
            let replaced = match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() == self.ino => {
                    if m.len() < self.offset {
                        tracing::warn!(path = %self.path.display(), "audit log got shorter; reading it again from the start");
                        self.file = None;
                        continue;
                    }
                    false
                }
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(e) => return Err(AuditError::io(&self.path, "reading metadata", e)),
            };
            if !replaced {
                return Ok(lines);
            }
            // Rotated: lines may have been appended between the read above and the rename.
            self.read_available(&mut lines)?;
            if !self.partial.is_empty() {
                tracing::warn!(
                    path = %self.path.display(),
                    bytes = self.partial.len(),
                    "rotated audit file ended in an incomplete line; not shown (see `hapull audit verify`)"
                );
            }
            self.file = None;
        }
        Ok(lines)
    }

    fn read_available(&mut self, lines: &mut Vec<Vec<u8>>) -> Result<(), AuditError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let n = file
            .read_to_end(&mut buf)
            .map_err(|e| AuditError::io(&self.path, "reading", e))?;
        self.offset += n as u64;
        let mut rest = buf.as_slice();
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..i]);
            lines.push(line);
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }
}

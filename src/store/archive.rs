//! Verifies a Home Assistant backup archive on disk without extracting it.
//!
//! A backup is an uncompressed tar whose first member is `./backup.json`, followed by
//! `./homeassistant.tar.gz` and, on Supervisor installs, one `.tar.gz` (or `.tar`) per add-on or
//! folder. Verification streams the file once, in bounded memory, and computes its SHA-256 on the way.
//! The archive is treated as hostile: a crafted file yields an error, never a panic, a large
//! allocation or a file written anywhere. This module never extracts, never writes and never deletes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use aws_lc_rs::digest;
use flate2::bufread::MultiGzDecoder;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use super::tar_stream::TarError;
use super::tar_stream::{Member, TarStream, shown};

/// Largest `backup.json` accepted. Real ones are a few kilobytes.
pub const MAX_BACKUP_JSON: u64 = 1024 * 1024;

/// Most members accepted in the outer archive (one per add-on or folder in practice).
pub const MAX_OUTER_MEMBERS: usize = 10_000;

const READ_BUFFER: usize = 256 * 1024;

/// How deeply to check an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Outer tar headers and `backup.json` only.
    Structure,
    /// Also decompress and read every inner `.tar.gz`/`.tar` member to its end, unless the backup is
    /// protected (encrypted inner archives cannot be read without the password).
    #[default]
    Full,
}

/// The fields of `backup.json` that hapull uses. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct BackupJson {
    /// The backup id.
    pub slug: String,
    pub name: String,
    /// As Home Assistant wrote it, e.g. `2026-11-26T09:07:39.253410+00:00`.
    pub date: String,
    #[serde(default)]
    pub protected: bool,
    /// Absent or `null` on Supervisor backups that leave Home Assistant itself out.
    #[serde(default)]
    pub homeassistant: Option<HomeAssistantPart>,
    #[serde(default)]
    pub compressed: Option<bool>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub crypto: Option<String>,
}

/// The `homeassistant` object of `backup.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HomeAssistantPart {
    pub version: String,
    #[serde(default)]
    pub exclude_database: Option<bool>,
}

impl BackupJson {
    /// The backup date as an instant.
    pub fn timestamp(&self) -> Result<Timestamp, ArchiveError> {
        self.date
            .parse::<Timestamp>()
            .map_err(|e| ArchiveError::BadDate {
                date: shown(&self.date),
                reason: e.to_string(),
            })
    }

    pub fn ha_version(&self) -> Option<&str> {
        self.homeassistant.as_ref().map(|h| h.version.as_str())
    }
}

/// One member of the outer archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub name: String,
    pub size: u64,
}

/// What a successful verification saw.
#[derive(Debug, Clone)]
pub struct ArchiveSummary {
    pub backup: BackupJson,
    /// Bytes in the file.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
    /// Outer members in order, `backup.json` first.
    pub members: Vec<MemberInfo>,
    /// Members whose content was decompressed and read to the end (empty in `Structure` mode and for
    /// protected backups).
    pub deep_checked: Vec<String>,
}

impl ArchiveSummary {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Why an archive is not an intact Home Assistant backup.
#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("the archive is not a complete tar file: {0}")]
    Outer(#[source] TarError),
    #[error("the archive is empty (no members before the end-of-archive marker)")]
    Empty,
    #[error(
        "the first member is {found}, not ./backup.json: this is not a Home Assistant backup, or it \
         was repacked"
    )]
    BackupJsonNotFirst { found: String },
    #[error(
        "backup.json is {size} bytes, over the {limit}-byte limit: refusing a crafted or corrupt \
         archive"
    )]
    BackupJsonTooLarge { size: u64, limit: u64 },
    #[error("backup.json is not valid: {0}")]
    BackupJsonInvalid(#[source] serde_json::Error),
    #[error(
        "backup.json says this is backup {found}, but backup {expected} was requested: the wrong \
         file was pulled, or Home Assistant reused a file name"
    )]
    SlugMismatch { expected: String, found: String },
    #[error("backup.json has an unreadable date {date}: {reason}")]
    BadDate { date: String, reason: String },
    #[error(
        "the archive has no {expected} member although backup.json says Home Assistant was \
         included: the backup is incomplete"
    )]
    MissingMember { expected: &'static str },
    #[error("the archive has more than {limit} members: refusing a crafted or corrupt archive")]
    TooManyMembers { limit: usize },
    #[error(
        "member {member} does not decompress and read to its end: {detail}; the backup is corrupt \
         (if it was pulled while Home Assistant was still writing it, pull it again)"
    )]
    Inner { member: String, detail: String },
    #[error(
        "the archive prefix of {have} bytes does not hold all of backup.json (needs {need}); read a \
         longer prefix"
    )]
    PrefixTooShort { have: usize, need: u64 },
}

/// Verifies the backup archive at `path`: structure, `backup.json` (whose slug must equal
/// `expected_id`), and in [`Verify::Full`] mode the inner archives. Reads the file exactly once and
/// returns its size and SHA-256 along with what it found.
pub fn verify_file(
    path: &Path,
    expected_id: &str,
    mode: Verify,
) -> Result<ArchiveSummary, ArchiveError> {
    let file = File::open(path).map_err(|source| ArchiveError::Open {
        path: path.display().to_string(),
        source,
    })?;
    verify_reader(file, expected_id, mode)
}

/// [`verify_file`] over any reader.
pub fn verify_reader<R: Read>(
    reader: R,
    expected_id: &str,
    mode: Verify,
) -> Result<ArchiveSummary, ArchiveError> {
    let hashing = HashingReader::new(reader);
    let mut tar = TarStream::new(BufReader::with_capacity(READ_BUFFER, hashing));

    let first = tar
        .next_member()
        .map_err(ArchiveError::Outer)?
        .ok_or(ArchiveError::Empty)?;
    let backup = read_backup_json(&mut tar, &first)?;
    if backup.slug != expected_id {
        return Err(ArchiveError::SlugMismatch {
            expected: shown(expected_id),
            found: shown(&backup.slug),
        });
    }
    backup.timestamp()?;

    let deep = mode == Verify::Full && !backup.protected;
    let mut members = vec![MemberInfo {
        name: first.name,
        size: first.size,
    }];
    let mut deep_checked = Vec::new();
    while let Some(member) = tar.next_member().map_err(ArchiveError::Outer)? {
        if members.len() >= MAX_OUTER_MEMBERS {
            return Err(ArchiveError::TooManyMembers {
                limit: MAX_OUTER_MEMBERS,
            });
        }
        let plain = plain_name(&member.name);
        if deep && member.is_regular_file() {
            if plain.ends_with(".tar.gz") || plain.ends_with(".tgz") {
                check_inner(&mut tar, &member, true)?;
                deep_checked.push(member.name.clone());
            } else if plain.ends_with(".tar") {
                check_inner(&mut tar, &member, false)?;
                deep_checked.push(member.name.clone());
            }
        }
        members.push(MemberInfo {
            name: member.name,
            size: member.size,
        });
    }

    if backup.homeassistant.is_some()
        && !members.iter().any(|m| {
            let n = plain_name(&m.name);
            n == "homeassistant.tar.gz" || n == "homeassistant.tar"
        })
    {
        return Err(ArchiveError::MissingMember {
            expected: "./homeassistant.tar.gz",
        });
    }

    let hashing = tar.into_inner().into_inner();
    let (size, sha256) = hashing.finish();
    Ok(ArchiveSummary {
        backup,
        size,
        sha256,
        members,
        deep_checked,
    })
}

/// Parses `backup.json` from the first member of an in-memory archive prefix (as read from a remote
/// file without downloading it). The prefix must hold the first header and all of `backup.json`.
pub fn parse_backup_json_from_tar_prefix(bytes: &[u8]) -> Result<BackupJson, ArchiveError> {
    let mut tar = TarStream::new(bytes);
    let first = match tar.next_member() {
        Ok(Some(m)) => m,
        Ok(None) => return Err(ArchiveError::Empty),
        Err(TarError::MissingEnd { .. }) if bytes.len() < 512 => {
            return Err(ArchiveError::PrefixTooShort {
                have: bytes.len(),
                need: 512,
            });
        }
        Err(TarError::Truncated { .. }) => {
            // Cut inside a header or an extension header's data: at least the next whole block.
            return Err(ArchiveError::PrefixTooShort {
                have: bytes.len(),
                need: (bytes.len() as u64).saturating_add(1).next_multiple_of(512),
            });
        }
        Err(e) => return Err(ArchiveError::Outer(e)),
    };
    // The data starts after every header of the member (pax and long-name headers included), which
    // is where the stream stands now; `first.offset` is where its first header began.
    let need = tar.offset().saturating_add(first.size);
    match read_backup_json(&mut tar, &first) {
        Err(ArchiveError::Outer(TarError::Truncated { .. })) => Err(ArchiveError::PrefixTooShort {
            have: bytes.len(),
            need,
        }),
        other => other,
    }
}

/// Parses the body of a `backup.json` (e.g. a member already read from a remote archive).
pub fn parse_backup_json(bytes: &[u8]) -> Result<BackupJson, ArchiveError> {
    if bytes.len() as u64 > MAX_BACKUP_JSON {
        return Err(ArchiveError::BackupJsonTooLarge {
            size: bytes.len() as u64,
            limit: MAX_BACKUP_JSON,
        });
    }
    serde_json::from_slice(bytes).map_err(ArchiveError::BackupJsonInvalid)
}

fn plain_name(name: &str) -> &str {
    name.strip_prefix("./").unwrap_or(name)
}

fn read_backup_json<R: Read>(
    tar: &mut TarStream<R>,
    first: &Member,
) -> Result<BackupJson, ArchiveError> {
    if plain_name(&first.name) != "backup.json" || !first.is_regular_file() {
        return Err(ArchiveError::BackupJsonNotFirst {
            found: shown(&first.name),
        });
    }
    if first.size > MAX_BACKUP_JSON {
        return Err(ArchiveError::BackupJsonTooLarge {
            size: first.size,
            limit: MAX_BACKUP_JSON,
        });
    }
    let mut data = Vec::new();
    if let Err(e) = tar.data().read_to_end(&mut data) {
        return Err(ArchiveError::Outer(if tar.was_truncated() {
            TarError::Truncated {
                offset: tar.offset(),
                what: "backup.json".to_owned(),
            }
        } else {
            TarError::Io {
                offset: tar.offset(),
                source: e,
            }
        }));
    }
    parse_backup_json(&data)
}

/// Reads an inner archive member to its end: gunzip (when `gzip`) and walk its tar headers, skipping
/// file data. A short outer file is reported as outer truncation, not as inner corruption.
fn check_inner<R: Read>(
    outer: &mut TarStream<R>,
    member: &Member,
    gzip: bool,
) -> Result<(), ArchiveError> {
    let result = {
        let data = BufReader::with_capacity(READ_BUFFER, outer.data());
        if gzip {
            walk_inner_gz(data)
        } else {
            walk_inner_tar(data)
        }
    };
    // A short outer file is the more useful diagnosis than whatever the decoder tripped over first,
    // so on an inner failure read on to the end of the member to see whether it is all there.
    if result.is_err() && !outer.was_truncated() {
        let _ = outer.skip_rest();
    }
    match result {
        Ok(()) => Ok(()),
        Err(_) if outer.was_truncated() => Err(ArchiveError::Outer(TarError::Truncated {
            offset: outer.offset(),
            what: format!("member {}", shown(&member.name)),
        })),
        Err(detail) => Err(ArchiveError::Inner {
            member: shown(&member.name),
            detail,
        }),
    }
}

fn walk_inner_gz<B: BufRead>(data: B) -> Result<(), String> {
    let mut tar = TarStream::new(MultiGzDecoder::new(data));
    walk(&mut tar).map_err(|e| describe_inner(e, true))?;
    // Anything left after the gzip stream would be bytes no restore ever reads.
    let mut rest = tar.into_inner().into_inner();
    match rest.fill_buf() {
        Ok([]) => Ok(()),
        Ok(_) => Err("data follows the end of the gzip stream".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn walk_inner_tar<B: BufRead>(data: B) -> Result<(), String> {
    let mut tar = TarStream::new(data);
    walk(&mut tar).map_err(|e| describe_inner(e, false))
}

fn walk<R: Read>(tar: &mut TarStream<R>) -> Result<(), TarError> {
    while tar.next_member()?.is_some() {}
    Ok(())
}

fn describe_inner(e: TarError, gzip: bool) -> String {
    match e {
        TarError::Io { source, .. } if gzip => format!("gzip data is corrupt ({source})"),
        other => format!("its tar content is invalid: {other}"),
    }
}

/// Passes bytes through while hashing them.
pub(crate) struct HashingReader<R> {
    inner: R,
    ctx: digest::Context,
    count: u64,
}

impl<R> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            ctx: digest::Context::new(&digest::SHA256),
            count: 0,
        }
    }

    pub(crate) fn finish(self) -> (u64, [u8; 32]) {
        let d = self.ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        (self.count, out)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Size and SHA-256 of a whole file, streamed.
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut reader = HashingReader::new(File::open(path)?);
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(reader.finish())
}

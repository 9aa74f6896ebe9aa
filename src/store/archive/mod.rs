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

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::securetar::Keys;
pub use super::tar_stream::TarError;
use super::tar_stream::{Member, TarStream, shown};

mod hashing;
mod inner;

pub(crate) use hashing::{HashingReader, hash_file};
use inner::check_inner;
pub(crate) use inner::{InnerFailure, InnerTar, inner_kind};

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
    /// Members whose content was decrypted (protected backups), decompressed and read to the end
    /// (empty in `Structure` mode and for protected backups checked without the password).
    pub deep_checked: Vec<String>,
    /// What was proven: `Full` only when every inner archive was read to its end.
    pub level: Level,
    /// SecureTar version of the encrypted members (protected backups whose members were opened).
    pub securetar: Option<u8>,
    /// Why the level is lower than asked, for a person (e.g. a protected backup and no password).
    pub warnings: Vec<String>,
}

/// How much of an archive was proven intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every byte read: outer structure, `backup.json`, and every inner archive decrypted (if
    /// protected), decompressed and walked to its end.
    Full,
    /// Outer structure and `backup.json` only; the inner archives were not read.
    Structure,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Structure => "structure",
        }
    }
}

/// How [`verify_reader_with`] checks an archive.
#[derive(Debug, Default)]
pub struct VerifyOptions<'a> {
    pub mode: Verify,
    /// The backup password, for protected backups.
    pub keys: Option<&'a mut Keys>,
    /// Compute the SHA-256 of the file (a caller that hashed the bytes already leaves it off).
    pub hash: bool,
}

/// The warning given when a protected backup is checked without its password.
pub const NO_PASSWORD_WARNING: &str = "the backup is password-protected and no password is \
     configured, so its encrypted contents were not read (verified at structure level only); set \
     `password_file` in the [backup] section of the config (or pass --password-file) to verify it \
     fully";

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
        "member {member}: wrong password: the backup password given does not open this backup \
         (give the password Home Assistant used for it: `password_file` in [backup], or \
         --password-file for verify and extract)"
    )]
    WrongPassword { member: String },
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
    verify_file_with(
        path,
        expected_id,
        VerifyOptions {
            mode,
            keys: None,
            hash: true,
        },
    )
}

/// [`verify_file`] with a password for protected backups.
pub fn verify_file_with(
    path: &Path,
    expected_id: &str,
    opts: VerifyOptions<'_>,
) -> Result<ArchiveSummary, ArchiveError> {
    let file = File::open(path).map_err(|source| ArchiveError::Open {
        path: path.display().to_string(),
        source,
    })?;
    verify_reader_with(file, expected_id, opts)
}

/// [`verify_file`] over any reader.
pub fn verify_reader<R: Read>(
    reader: R,
    expected_id: &str,
    mode: Verify,
) -> Result<ArchiveSummary, ArchiveError> {
    verify_reader_with(
        reader,
        expected_id,
        VerifyOptions {
            mode,
            keys: None,
            hash: true,
        },
    )
}

/// Verifies an archive read once from `reader`: the outer tar, `backup.json`, and (in
/// [`Verify::Full`] mode) every inner archive decrypted, decompressed and walked to its end. Nothing
/// is written anywhere; decrypted data lives only in bounded buffers.
pub fn verify_reader_with<R: Read>(
    reader: R,
    expected_id: &str,
    opts: VerifyOptions<'_>,
) -> Result<ArchiveSummary, ArchiveError> {
    verify_buffered_with(
        BufReader::with_capacity(READ_BUFFER, reader),
        expected_id,
        opts,
    )
}

/// [`verify_reader_with`] for a reader that has its own buffer (the bytes are read in place, with
/// no copy into another).
pub(crate) fn verify_buffered_with<R: BufRead>(
    reader: R,
    expected_id: &str,
    opts: VerifyOptions<'_>,
) -> Result<ArchiveSummary, ArchiveError> {
    let VerifyOptions {
        mode,
        mut keys,
        hash,
    } = opts;
    let mut tar = TarStream::new(HashingReader::with_hash(reader, hash));

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

    let mut warnings = Vec::new();
    let deep = mode == Verify::Full && (!backup.protected || keys.is_some());
    if mode == Verify::Full && !deep {
        warnings.push(NO_PASSWORD_WARNING.to_owned());
    }
    let mut securetar = None;
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
        if deep
            && member.is_regular_file()
            && let Some(gzip) = inner_kind(&member.name)
        {
            let keys = if backup.protected {
                keys.as_deref_mut()
            } else {
                None
            };
            let version = check_inner(&mut tar, &member, gzip, keys)?;
            if version.is_some() {
                securetar = version;
            }
            deep_checked.push(member.name.clone());
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

    let (size, sha256) = tar.into_inner().finish();
    Ok(ArchiveSummary {
        backup,
        size,
        sha256,
        members,
        deep_checked,
        level: if deep { Level::Full } else { Level::Structure },
        securetar,
        warnings,
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

//! Backup archives as Home Assistant writes them: an uncompressed outer tar holding `./backup.json`
//! first and `homeassistant.tar.gz` second (HA 2026.11 writes the first name with `./`, the second
//! without), padded to tar's 10 KiB record like Python's `tarfile`.
//!
//! This file only builds bytes and names; it never touches the network and never decides when a backup
//! happens.

use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use jiff::Timestamp;
use serde_json::{Value, json};

/// Python's `tarfile.RECORDSIZE`: outer archives are padded to a multiple of it.
const TAR_RECORD: usize = 10 * 1024;

/// What goes into one archive.
pub(crate) struct ArchiveSpec<'a> {
    pub slug: &'a str,
    pub name: &'a str,
    pub date: Timestamp,
    pub ha_version: &'a str,
    pub legacy: bool,
    pub include_database: bool,
    pub password: Option<&'a str>,
    pub instance_id: &'a str,
    pub payload_bytes: u64,
    /// The recorder database's bytes; `None`: a stub.
    pub database: Option<&'a [u8]>,
    /// Written by the Supervisor: its `backup.json` fields and add-on, folder and
    /// `supervisor.tar.gz` members.
    pub supervisor: bool,
    /// When Core asked the Supervisor for it (recorded in `extra`), if Core did.
    pub request_date: Option<Timestamp>,
}

/// The Supervisor dates a backup when its job starts, a moment after Core asked for it (the file
/// name follows Core's request date, `backup/info` the Supervisor's date).
pub(crate) fn supervisor_date(request: Timestamp, supervisor: bool) -> Timestamp {
    if supervisor {
        request + jiff::SignedDuration::from_millis(1_250)
    } else {
        request
    }
}

/// HA's ISO date with microseconds and an explicit UTC offset, e.g. `2026-11-26T09:07:39.253410+00:00`.
pub(crate) fn iso_micros(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// The local agent's file name: `"_".join(f"{name} {date:%Y-%m-%d %H.%M %S%f}.tar".split())`.
///
/// A `/` in the name would leave the backups folder, so it becomes `_`; HA never has to deal with that
/// because its file names come from its own UI, but the simulator takes names from untrusted clients.
pub(crate) fn current_file_name(name: &str, date: Timestamp) -> String {
    let raw = format!("{name} {}.tar", date.strftime("%Y-%m-%d %H.%M %S%6f"));
    raw.split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .replace(['/', '\0'], "_")
}

/// The `backup.json` document, with the fields HA writes.
pub(crate) fn backup_json(spec: &ArchiveSpec<'_>) -> Value {
    let date = iso_micros(spec.date);
    if spec.legacy {
        return json!({
            "slug": spec.slug,
            "name": spec.name,
            "date": date,
            "type": "partial",
            "folders": ["homeassistant"],
            "homeassistant": {"version": spec.ha_version},
            "compressed": true,
        });
    }
    if spec.supervisor {
        let mut extra = json!({"instance_id": spec.instance_id, "with_automatic_settings": false});
        if let Some(d) = spec.request_date {
            extra["supervisor.backup_request_date"] = json!(iso_micros(d));
        }
        return json!({
            "slug": spec.slug,
            "version": 2,
            "name": spec.name,
            "date": iso_micros(supervisor_date(spec.date, spec.request_date.is_some())),
            "type": "partial",
            "supervisor_version": "2026.11.2",
            "extra": extra,
            "homeassistant": {"version": spec.ha_version, "exclude_database": !spec.include_database, "size": 0.01},
            "compressed": true,
            "protected": spec.password.is_some(),
            "crypto": if spec.password.is_some() { json!("aes128") } else { Value::Null },
            "addons": [{"slug": "core_ssh", "name": "Terminal & SSH", "version": "9.16.0", "size": 0.01}],
            "repositories": [],
            "folders": ["share"],
            "docker": {},
        });
    }
    // Exactly the keys HA 2026.11 writes (checked against a real archive): no `folders`, `addons` or
    // `crypto`, even for a protected backup.
    json!({
        "compressed": true,
        "date": date,
        "extra": {"instance_id": spec.instance_id, "with_automatic_settings": false},
        "homeassistant": {"exclude_database": !spec.include_database, "version": spec.ha_version},
        "name": spec.name,
        "protected": spec.password.is_some(),
        "slug": spec.slug,
        "type": "partial",
        "version": 2,
    })
}

/// A built archive and where the inner archive's bytes sit in it.
pub(crate) struct Built {
    pub bytes: Vec<u8>,
    /// Offset of the middle byte of `homeassistant.tar.gz`'s data: damaging it leaves both tar
    /// headers intact, so only a content check notices.
    pub inner_middle: u64,
}

/// Builds the complete archive in memory.
pub(crate) fn build(spec: &ArchiveSpec<'_>) -> std::io::Result<Built> {
    let mtime = u64::try_from(spec.date.as_second()).unwrap_or(0);
    let mut inner = inner_archive(spec, mtime)?;
    if let Some(password) = spec.password {
        // Real HA wraps the inner archive in SecureTar (AES-128-CBC). The simulator only needs the
        // bytes to be opaque to a reader without the password, so it masks them with a keystream.
        mask(&mut inner, password);
    }
    let meta = serde_json::to_vec(&backup_json(spec)).map_err(std::io::Error::other)?;

    let mut outer = tar::Builder::new(Vec::new());
    append(&mut outer, "./backup.json", &meta, mtime)?;
    if spec.supervisor {
        append(&mut outer, "./homeassistant.tar.gz", &inner, mtime)?;
        for (member, file, text) in [
            (
                "./core_ssh.tar.gz",
                "data/options.json",
                "{\"authorized_keys\": []}",
            ),
            ("./share.tar.gz", "share/readme.txt", "shared folder"),
            (
                "./supervisor.tar.gz",
                "supervisor.json",
                "{\"version\": \"2026.11.2\"}",
            ),
        ] {
            append(
                &mut outer,
                member,
                &small_tar_gz(file, text.as_bytes(), mtime)?,
                mtime,
            )?;
        }
    } else {
        append(&mut outer, "homeassistant.tar.gz", &inner, mtime)?;
    }
    let mut bytes = outer.into_inner()?;
    let padded = bytes.len().div_ceil(TAR_RECORD) * TAR_RECORD;
    bytes.resize(padded, 0);
    let inner_start = 512 + meta.len().div_ceil(512) * 512 + 512;
    Ok(Built {
        bytes,
        inner_middle: (inner_start + inner.len() / 2) as u64,
    })
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mtime: u64,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    // HA's names keep their leading `./`, which `set_path` would normalise away, so the name bytes
    // are written directly.
    let name = path.as_bytes();
    let Some(ustar) = header.as_ustar_mut() else {
        return Err(std::io::Error::other("ustar header expected"));
    };
    if name.len() > ustar.name.len() {
        return Err(std::io::Error::other(format!("tar name too long: {path}")));
    }
    ustar.name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    builder.append(&header, data)
}

/// The gzip'd tar of the configuration folder, under `data/` as HA stores it.
fn inner_archive(spec: &ArchiveSpec<'_>, mtime: u64) -> std::io::Result<Vec<u8>> {
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let config = format!(
        "homeassistant:\n  name: Simulated home\n  time_zone: UTC\nshell_command:\n  delete_backups: find /var/lib/hass/backups -type f -delete\n# backup {}\n",
        spec.slug
    );
    append_gz(
        &mut builder,
        "data/configuration.yaml",
        config.as_bytes(),
        mtime,
    )?;
    append_gz(
        &mut builder,
        "data/.HA_VERSION",
        spec.ha_version.as_bytes(),
        mtime,
    )?;
    let storage = json!({"version": 1, "minor_version": 1, "key": "core.config", "data": {"location_name": "Simulated home"}});
    let storage = serde_json::to_vec(&storage).map_err(std::io::Error::other)?;
    append_gz(&mut builder, "data/.storage/core.config", &storage, mtime)?;
    if spec.include_database {
        append_gz(
            &mut builder,
            "data/home-assistant_v2.db",
            spec.database.unwrap_or(b"SQLite format 3\0"),
            mtime,
        )?;
    }
    if spec.payload_bytes > 0 {
        let mut header = tar::Header::new_ustar();
        header.set_size(spec.payload_bytes);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        let reader = PseudoRandom::new(seed_of(spec.slug)).take(spec.payload_bytes);
        builder.append_data(&mut header, "data/payload.bin", reader)?;
    }
    builder.into_inner()?.finish()
}

/// A gzip'd tar holding one file: an add-on's, a folder's or the Supervisor's own member.
fn small_tar_gz(path: &str, data: &[u8], mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    append_gz(&mut builder, path, data, mtime)?;
    builder.into_inner()?.finish()
}

fn append_gz(
    builder: &mut tar::Builder<GzEncoder<Vec<u8>>>,
    path: &str,
    data: &[u8],
    mtime: u64,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data)
}

fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn mask(data: &mut [u8], password: &str) {
    let mut rng = fastrand::Rng::with_seed(seed_of(password));
    for byte in data {
        *byte ^= rng.u8(..);
    }
}

/// Incompressible, reproducible bytes, so big archives cost no disk reads to make.
struct PseudoRandom(fastrand::Rng);

impl PseudoRandom {
    fn new(seed: u64) -> Self {
        PseudoRandom(fastrand::Rng::with_seed(seed))
    }
}

impl Read for PseudoRandom {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.fill(buf);
        Ok(buf.len())
    }
}

/// Reads `./backup.json` from an archive on disk; `None` if the file is not a readable backup.
pub(crate) fn read_backup_json(path: &Path) -> Option<Value> {
    let file = std::fs::File::open(path).ok()?;
    let mut archive = tar::Archive::new(file);
    let mut entries = archive.entries().ok()?;
    let mut entry = entries.next()?.ok()?;
    let entry_path = entry.path().ok()?.to_string_lossy().into_owned();
    if entry_path.trim_start_matches("./") != "backup.json" || entry.size() > 1024 * 1024 {
        return None;
    }
    let mut text = Vec::new();
    entry.read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes `data` to `path` with mode 0640 (what HA's files get under the backup guide's umask 0027).
pub(crate) fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(path)?;
    // The process umask may be stricter or looser than HA's; the mode is part of what is simulated.
    file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    Ok(file)
}

/// Appends one chunk and flushes it, so a reader sees the file grow.
pub(crate) fn write_chunk(file: &mut std::fs::File, chunk: &[u8]) -> std::io::Result<()> {
    file.write_all(chunk)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_matches_ha_for_the_recorded_backup() {
        let date: Timestamp = "2026-11-26T09:07:39.253410Z".parse().unwrap();
        assert_eq!(
            current_file_name("hapull fixture", date),
            "hapull_fixture_2026-11-26_09.07_39253410.tar"
        );
        assert_eq!(
            iso_micros(date),
            "2026-11-26T09:07:39.253410+00:00".to_string()
        );
    }

    #[test]
    fn name_cannot_escape_the_folder() {
        let date: Timestamp = "2026-11-26T09:07:39Z".parse().unwrap();
        assert!(!current_file_name("../../etc/x", date).contains('/'));
    }
}

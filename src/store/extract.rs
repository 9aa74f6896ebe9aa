//! Unpacks a Home Assistant backup (protected or not) into a folder, without Home Assistant: each
//! inner archive `./<name>.tar.gz` becomes `DIR/<name>/...`, decrypted and decompressed on the way,
//! and `backup.json` is written as `DIR/backup.json`.
//!
//! The archive is hostile until proven otherwise. Member names and link targets are checked before
//! they become paths: absolute names, `..` components, links that point outside `DIR` and device or
//! fifo members are refused (the extraction stops, naming the member). Nothing is written through a
//! symbolic link, nothing outside `DIR`, and no existing file is replaced unless asked. Files are
//! created 0600 (0700 when executable in the archive) and folders 0700, whatever the umask: a
//! backup holds secrets. This module does not verify the SHA-256 of the file against a manifest
//! (`hapull verify` does); it does check every layer it reads (gzip CRC, SecureTar MACs).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use super::archive::{
    ArchiveError, InnerFailure, InnerTar, MAX_BACKUP_JSON, inner_kind, parse_backup_json,
};
use super::securetar::Keys;
use super::tar_stream::{TarError, TarStream, shown};

const READ_BUFFER: usize = 256 * 1024;

/// Why an extraction stopped. What was written before stays in `DIR`.
#[derive(Debug, Error)]
pub enum ExtractError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(
        "the backup is password-protected: give its password with --password-file FILE (or \
         password_file in the config)"
    )]
    NeedsPassword,
    #[error(
        "member {member} of {inner}: refused: {reason}; nothing is written outside the target folder"
    )]
    Refused {
        inner: String,
        member: String,
        reason: &'static str,
    },
    #[error(
        "{} already exists: not overwritten (use --overwrite to replace existing files)",
        path.display()
    )]
    Exists { path: PathBuf },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExtractError + use<> {
    let path = path.to_owned();
    move |source| ExtractError::Io {
        action,
        path,
        source,
    }
}

/// What [`extract`] did.
#[derive(Debug, Clone, Default)]
pub struct ExtractSummary {
    pub backup_id: String,
    pub protected: bool,
    pub securetar: Option<u8>,
    /// Inner archives unpacked, as `DIR/<name>` folder names.
    pub parts: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

/// Options of [`extract`].
pub struct ExtractOptions<'a> {
    pub keys: Option<&'a mut Keys>,
    /// Replace existing regular files (never folders, never through links).
    pub overwrite: bool,
    /// Called with the number of archive bytes read so far (for a progress bar).
    pub progress: Option<&'a mut dyn FnMut(u64)>,
}

/// Unpacks the backup read from `reader` into `dir` (created if missing).
pub fn extract<R: Read>(
    reader: R,
    dir: &Path,
    opts: ExtractOptions<'_>,
) -> Result<ExtractSummary, ExtractError> {
    let ExtractOptions {
        mut keys,
        overwrite,
        mut progress,
    } = opts;
    make_dir(dir)?;
    let counting = Counting {
        inner: reader,
        count: 0,
        progress: progress.take(),
    };
    let mut outer = TarStream::new(BufReader::with_capacity(READ_BUFFER, counting));
    let first = outer
        .next_member()
        .map_err(ArchiveError::Outer)?
        .ok_or(ArchiveError::Empty)?;
    let plain_first = first.name.strip_prefix("./").unwrap_or(&first.name);
    if plain_first != "backup.json" || !first.is_regular_file() {
        return Err(ArchiveError::BackupJsonNotFirst {
            found: shown(&first.name),
        }
        .into());
    }
    if first.size > MAX_BACKUP_JSON {
        return Err(ArchiveError::BackupJsonTooLarge {
            size: first.size,
            limit: MAX_BACKUP_JSON,
        }
        .into());
    }
    let mut json = Vec::new();
    outer
        .data()
        .read_to_end(&mut json)
        .map_err(|source| ArchiveError::Outer(TarError::Io { offset: 0, source }))?;
    let backup = parse_backup_json(&json)?;
    if backup.protected && keys.is_none() {
        return Err(ExtractError::NeedsPassword);
    }
    write_new_file(
        &dir.join("backup.json"),
        &mut &json[..],
        0o600,
        overwrite,
        |source| ExtractError::Io {
            action: "read",
            path: PathBuf::from("backup.json"),
            source,
        },
    )?;
    let mut summary = ExtractSummary {
        backup_id: backup.slug.clone(),
        protected: backup.protected,
        ..ExtractSummary::default()
    };

    while let Some(member) = outer.next_member().map_err(ArchiveError::Outer)? {
        let Some(gzip) = inner_kind(&member.name) else {
            continue;
        };
        if !member.is_regular_file() {
            continue;
        }
        let plain = member.name.strip_prefix("./").unwrap_or(&member.name);
        let stem = plain
            .strip_suffix(".tar.gz")
            .or_else(|| plain.strip_suffix(".tgz"))
            .or_else(|| plain.strip_suffix(".tar"))
            .unwrap_or(plain);
        let inner_label = shown(&member.name);
        // The part's folder name comes from the outer archive: one plain component only.
        let part = safe_relative(stem)
            .filter(|p| p.components().count() == 1)
            .ok_or(ExtractError::Refused {
                inner: shown("(outer archive)"),
                member: inner_label.clone(),
                reason: "its name is not a plain file name",
            })?;
        let root = dir.join(&part);
        make_dir(&root)?;
        let data = BufReader::with_capacity(READ_BUFFER, outer.data());
        let protected_keys = if backup.protected {
            keys.as_deref_mut()
        } else {
            None
        };
        let (stream, version) =
            InnerTar::open(data, gzip, protected_keys).map_err(|f| inner_error(f, &inner_label))?;
        if version.is_some() {
            summary.securetar = version;
        }
        let mut inner = TarStream::new(stream);
        unpack(&mut inner, &root, &inner_label, overwrite, &mut summary)?;
        inner
            .into_inner()
            .finish()
            .map_err(|f| inner_error(f, &inner_label))?;
        summary.parts.push(part.display().to_string());
    }
    Ok(summary)
}

fn inner_error(f: InnerFailure, member: &str) -> ExtractError {
    match f {
        InnerFailure::WrongPassword => ArchiveError::WrongPassword {
            member: member.to_owned(),
        }
        .into(),
        InnerFailure::Bad(detail) => ArchiveError::Inner {
            member: member.to_owned(),
            detail,
        }
        .into(),
    }
}

fn unpack<R: Read>(
    tar: &mut TarStream<R>,
    root: &Path,
    inner_label: &str,
    overwrite: bool,
    summary: &mut ExtractSummary,
) -> Result<(), ExtractError> {
    let tar_err = |e: TarError| -> ExtractError {
        match e {
            TarError::Io { source, .. } => match super::SecureTarError::from_io(&source) {
                Some(super::SecureTarError::WrongPassword) => ArchiveError::WrongPassword {
                    member: inner_label.to_owned(),
                }
                .into(),
                _ => ArchiveError::Inner {
                    member: inner_label.to_owned(),
                    detail: source.to_string(),
                }
                .into(),
            },
            other => ArchiveError::Inner {
                member: inner_label.to_owned(),
                detail: format!("its tar content is invalid: {other}"),
            }
            .into(),
        }
    };
    while let Some(m) = tar.next_member().map_err(tar_err)? {
        let refused = |reason| ExtractError::Refused {
            inner: inner_label.to_owned(),
            member: shown(&m.name),
            reason,
        };
        if m.name.starts_with('/') {
            return Err(refused("an absolute name"));
        }
        let Some(rel) = safe_relative(&m.name) else {
            return Err(refused("a name that climbs out of the folder (\"..\")"));
        };
        if rel.as_os_str().is_empty() {
            // "./" itself: the part's root folder, made already.
            continue;
        }
        let target = root.join(&rel);
        let parent = target.parent().unwrap_or(root);
        real_dirs(root, parent)?;
        match m.kind {
            b'0' | 0 | b'7' => {
                let mode = if m.mode & 0o100 != 0 { 0o700 } else { 0o600 };
                let written =
                    write_new_file(&target, &mut tar.data(), mode, overwrite, |source| {
                        tar_err(TarError::Io { offset: 0, source })
                    })?;
                summary.files += 1;
                summary.bytes += written;
            }
            b'5' => real_dirs(root, &target)?,
            b'2' => {
                if m.link.starts_with('/') {
                    return Err(refused("a symbolic link to an absolute path"));
                }
                // Resolve the target against the link's folder, inside the part's folder.
                let link_parent = rel.parent().unwrap_or(Path::new(""));
                if safe_relative(&link_parent.join(&m.link).to_string_lossy()).is_none() {
                    return Err(refused("a symbolic link that points outside the folder"));
                }
                remove_for_overwrite(&target, overwrite)?;
                std::os::unix::fs::symlink(&m.link, &target)
                    .map_err(io_err("create the link", &target))?;
            }
            b'1' => {
                if m.link.starts_with('/') {
                    return Err(refused("a hard link to an absolute path"));
                }
                let Some(src_rel) = safe_relative(&m.link) else {
                    return Err(refused("a hard link that points outside the folder"));
                };
                let src = root.join(src_rel);
                // Only to a regular file extracted before, never through or to a link.
                match fs::symlink_metadata(&src) {
                    Ok(md) if md.file_type().is_file() => {}
                    _ => return Err(refused("a hard link to something that is not a file in it")),
                }
                remove_for_overwrite(&target, overwrite)?;
                fs::hard_link(&src, &target).map_err(io_err("create the link", &target))?;
            }
            b'3' | b'4' => return Err(refused("a device file")),
            b'6' => return Err(refused("a fifo")),
            _ => return Err(refused("a member type hapull does not extract")),
        }
    }
    Ok(())
}

/// `name` as a relative path of normal components (`.` dropped), or `None` if it is absolute or
/// has a `..`.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn make_dir(dir: &Path) -> Result<(), ExtractError> {
    match fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_dir() => Ok(()),
        Ok(_) => Err(ExtractError::Io {
            action: "use as a folder",
            path: dir.to_owned(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "it exists and is not a folder",
            ),
        }),
        Err(_) => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create the folder", dir)),
    }
}

/// Makes every folder from `root` down to `dir`, refusing to pass through anything that is not a
/// real folder (a symbolic link made by an earlier member, for instance).
fn real_dirs(root: &Path, dir: &Path) -> Result<(), ExtractError> {
    let Ok(rel) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => {
                return Err(ExtractError::Io {
                    action: "use as a folder",
                    path: at,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "it is a file or a link, not a folder; nothing is written through links",
                    ),
                });
            }
            Err(_) => fs::DirBuilder::new()
                .mode(0o700)
                .create(&at)
                .map_err(io_err("create the folder", &at))?,
        }
    }
    Ok(())
}

fn remove_for_overwrite(target: &Path, overwrite: bool) -> Result<(), ExtractError> {
    match fs::symlink_metadata(target) {
        Err(_) => Ok(()),
        Ok(md) if overwrite && !md.file_type().is_dir() => {
            fs::remove_file(target).map_err(io_err("replace", target))
        }
        Ok(_) => Err(ExtractError::Exists {
            path: target.to_owned(),
        }),
    }
}

/// Writes a new file (never following a link at its name), returning the bytes written. A failure
/// to read `data` (damage in the archive) goes through `read_error`.
fn write_new_file<R: Read>(
    target: &Path,
    data: &mut R,
    mode: u32,
    overwrite: bool,
    read_error: impl FnOnce(io::Error) -> ExtractError,
) -> Result<u64, ExtractError> {
    remove_for_overwrite(target, overwrite)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(io_err("create", target))?;
    // The mode given to open is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("set the permissions of", target))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        f.write_all(&buf[..got]).map_err(io_err("write", target))?;
        n += got as u64;
    }
    f.flush().map_err(io_err("write", target))?;
    Ok(n)
}

struct Counting<'a, R> {
    inner: R,
    count: u64,
    progress: Option<&'a mut dyn FnMut(u64)>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(p) = &mut self.progress {
            p(self.count);
        }
        Ok(n)
    }
}

/// Opens `path` and extracts it; see [`extract`].
pub fn extract_file(
    path: &Path,
    dir: &Path,
    opts: ExtractOptions<'_>,
) -> Result<ExtractSummary, ExtractError> {
    let f = File::open(path).map_err(io_err("read", path))?;
    extract(f, dir, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// (name, type flag, link target, data).
    type Entry<'a> = (&'a str, u8, &'a str, &'a [u8]);

    /// An inner tar from raw entries. Names are written into the header as given, hostile ones
    /// included.
    fn inner(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_ustar_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(tar::EntryType::new(*kind));
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn backup(inner_tar: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(inner_tar).unwrap();
        let gz = gz.finish().unwrap();
        let json = br#"{"slug":"abc123","name":"t","date":"2026-11-26T09:07:39+00:00","homeassistant":{"version":"2026.11.0"}}"#;
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("./backup.json", &json[..]),
            ("./homeassistant.tar.gz", &gz[..]),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(archive: &[u8], dir: &Path, overwrite: bool) -> Result<ExtractSummary, ExtractError> {
        extract(
            archive,
            dir,
            ExtractOptions {
                keys: None,
                overwrite,
                progress: None,
            },
        )
    }

    #[test]
    fn unpacks_each_part_into_its_folder_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let archive = backup(&inner(&[
            ("./data", b'5', "", b""),
            ("./data/configuration.yaml", b'0', "", b"homeassistant:\n"),
            ("./data/link.yaml", b'2', "configuration.yaml", b""),
            ("./data/hard.yaml", b'1', "data/configuration.yaml", b""),
        ]));
        let s = run(&archive, &dir, false).unwrap();
        assert_eq!(s.parts, vec!["homeassistant".to_owned()]);
        let f = dir.join("homeassistant/data/configuration.yaml");
        assert_eq!(fs::read(&f).unwrap(), b"homeassistant:\n");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.join("homeassistant/data")).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::read(dir.join("homeassistant/data/link.yaml")).unwrap(),
            b"homeassistant:\n"
        );
        assert!(dir.join("backup.json").is_file());
        // Existing files are kept unless asked.
        assert!(matches!(
            run(&archive, &dir, false),
            Err(ExtractError::Exists { .. })
        ));
        run(&archive, &dir, true).unwrap();
    }

    #[test]
    fn hostile_names_links_and_devices_are_refused_and_nothing_lands_outside() {
        let cases: Vec<Vec<Entry<'_>>> = vec![
            vec![("../evil", b'0', "", b"x")],
            vec![("/tmp/evil-abs", b'0', "", b"x")],
            vec![("data/../../evil", b'0', "", b"x")],
            vec![("data/up", b'2', "../../evil", b"")],
            vec![("data/abs", b'2', "/etc/passwd", b"")],
            vec![("data/hard", b'1', "../evil", b"")],
            vec![("data/hard2", b'1', "/etc/passwd", b"")],
            vec![("data/dev", b'3', "", b"")],
            vec![("data/fifo", b'6', "", b"")],
            // A link inside the folder, then a file written "through" it.
            vec![("data/l", b'2', ".", b""), ("data/l/x", b'0', "", b"x")],
        ];
        for entries in cases {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("a/b");
            let err = run(&backup(&inner(&entries)), &dir, false).unwrap_err();
            assert!(
                matches!(err, ExtractError::Refused { .. } | ExtractError::Io { .. }),
                "{entries:?}: {err}"
            );
            assert!(
                err.to_string().contains(entries.last().unwrap().0)
                    || matches!(err, ExtractError::Io { .. }),
                "{err}"
            );
            // Nothing but the target folder was created beside it.
            let mut outside: Vec<_> = fs::read_dir(tmp.path().join("a"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            outside.sort();
            assert_eq!(outside, vec![std::ffi::OsString::from("b")], "{entries:?}");
            assert!(!tmp.path().join("evil").exists() && !Path::new("/tmp/evil-abs").exists());
        }
    }
}

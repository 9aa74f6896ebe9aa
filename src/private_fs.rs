//! Private files: everything hapull writes (archives, manifests, `SHA256SUMS`, the audit log and its
//! seal, the state file, the ledger, a learned `known_hosts`) is mode `0600` in folders of mode `0700`,
//! whatever the umask. An unprotected backup holds every secret of the home; the audit log and the state
//! say when the house is empty. Modes are set on the open descriptor (`fchmod`), not only requested at
//! creation, because the umask may take bits away and a file created earlier may have been wider.
//!
//! Also the one crash-safe replacement of a small file ([`write_atomic`]): temporary file in the same
//! folder, fsync, rename, fsync the folder, so a crash leaves the old content or the new, never a mix.
//!
//! And the free space of a folder's filesystem ([`available_space`]), which the pull and the deep
//! verification check before writing big files.
//!
//! This module knows nothing about what the files mean; it must not log their contents.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file hapull writes.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder hapull creates.
pub const DIR_MODE: u32 = 0o700;
/// Prefix of temporary files; a store removes leftovers with this prefix when it opens.
pub const TMP_PREFIX: &str = ".hapull-tmp-";

/// Options for a private file: created with mode 0600. Callers add read/write/append/create flags and
/// then call [`make_private`] on the opened file.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Sets the open file to mode 0600 unless it already is (the umask may have taken bits, or the file
/// existed with wider ones).
pub fn make_private(file: &File) -> io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Opens `path` for appending (creating it), mode 0600.
pub fn open_append(path: &Path) -> io::Result<File> {
    let f = options().read(true).append(true).create(true).open(path)?;
    make_private(&f)?;
    Ok(f)
}

/// Creates a new file that must not exist yet, mode 0600.
pub fn create_new(path: &Path) -> io::Result<File> {
    let f = options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    make_private(&f)?;
    Ok(f)
}

/// Creates `dir` and its missing parents with mode 0700 (folders that already exist are left as they
/// are: they may be shared, like `/var/lib`). Every folder created is made durable in its parent.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
            sync_dir(&parent_of(dir))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Fsyncs a folder, so entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder `path` is in (`.` for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A fresh temporary name beside `target`, starting with [`TMP_PREFIX`].
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!("{TMP_PREFIX}{name}.{:016x}", fastrand::u64(..)))
}

/// Replaces `target` with `data`, mode 0600: temporary file in the same folder, fsync, rename, fsync
/// the folder. The folder must exist. On error the temporary file is removed and `target` is unchanged.
pub fn write_atomic(target: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(target, data, FILE_MODE)
}

/// [`write_atomic`] with another mode, for the few files meant to be read by others (a public key).
pub fn write_atomic_mode(target: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path_for(target);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, target)?;
        sync_dir(&parent_of(target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The permission bits of `path` that let its group or others read, write or run it (`0` when none);
/// `None` when it cannot be examined.
pub fn exposed_bits(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o077)
}

/// Bytes an unprivileged process can still write on the filesystem holding `dir`.
pub fn available_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `stat` is a plain C struct written by the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // field widths differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn new_folders_are_0700_and_existing_files_become_0600() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for d in [dir.path().join("a"), dir.path().join("a/b"), deep.clone()] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        let f = deep.join("log");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, Permissions::from_mode(0o664)).unwrap();
        drop(open_append(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        assert_eq!(exposed_bits(&f), Some(0));
    }
}

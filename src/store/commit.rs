//! Committing a pulled archive into the store: [`Store::commit`] and its crash safety.
//!
//! The manifest is made durable before the archive is linked into place, and an existing archive is
//! never replaced (hard link, or a hash-checked copy across file systems). This file must not delete a
//! stored archive, and must not know about SSH or Home Assistant: it receives a file already pulled.

use super::*;

impl Store {
    /// Where to pull the archive of `backup_id` before committing it: inside the store, so the commit
    /// is a rename on the same file system. Creates the directory.
    pub fn incoming_path(&self, backup_id: &str) -> Result<PathBuf, StoreError> {
        let id = safe_component(backup_id)?;
        let dir = self.root.join(INCOMING_DIR);
        ensure_dir(&self.root, &dir)?;
        self.remove_stale_partials(STALE_PARTIAL_AGE)?;
        Ok(dir.join(format!("{id}.tar")))
    }

    /// Verifies the pulled file at `partial` and moves it into the store with its manifest.
    ///
    /// Checks, in one read of the file: the archive structure (per `info.verify`), that `backup.json`
    /// names `info.backup_id`, and that size and SHA-256 equal what the transfer reported. If the
    /// same archive is already stored, removes `partial` and returns the stored one; if a different
    /// archive of that backup id is stored, refuses.
    pub fn commit(&self, partial: &Path, info: &CommitInfo) -> Result<StoredArchive, StoreError> {
        let backup_id = safe_component(&info.backup_id)?;
        let new_sha = hex::encode(info.sha256);
        let meta = fs::metadata(partial).map_err(io_err("read", partial))?;
        if meta.len() != info.size {
            return Err(StoreError::SizeMismatch {
                path: partial.to_owned(),
                expected: info.size,
                actual: meta.len(),
            });
        }

        if let Some(existing) = self.find(&backup_id)? {
            if existing.manifest.sha256 != new_sha || existing.manifest.size != info.size {
                return Err(StoreError::Conflict {
                    backup_id,
                    existing: existing.path,
                    existing_sha256: existing.manifest.sha256,
                    new_sha256: new_sha,
                });
            }
            if !same_file(partial, &existing.path) {
                fs::remove_file(partial).map_err(io_err("remove the duplicate", partial))?;
                fsync_parent(partial)?;
            }
            info!(backup_id = %backup_id, path = %existing.path.display(), "archive already stored");
            return Ok(existing);
        }

        // Verified while it was pulled: the bytes the verifier read are the bytes the transfer
        // hashed and wrote, so there is nothing to re-read. Otherwise, one read does both.
        let streamed = info.verified.is_some();
        let summary = match &info.verified {
            Some(summary) => {
                if summary.backup.slug != backup_id {
                    return Err(StoreError::Archive {
                        path: partial.to_owned(),
                        source: ArchiveError::SlugMismatch {
                            expected: backup_id,
                            found: tar_stream::shown(&summary.backup.slug),
                        },
                    });
                }
                summary.clone()
            }
            None => {
                let mut keys = info.password.clone().map(Keys::new);
                verify_file_with(
                    partial,
                    &backup_id,
                    VerifyOptions {
                        mode: info.verify,
                        keys: keys.as_mut(),
                        hash: true,
                    },
                )
                .map_err(|source| match source {
                    ArchiveError::WrongPassword { .. } => StoreError::WrongPassword {
                        path: partial.to_owned(),
                        source,
                    },
                    source => StoreError::Archive {
                        path: partial.to_owned(),
                        source,
                    },
                })?
            }
        };
        if summary.size != info.size {
            return Err(StoreError::SizeMismatch {
                path: partial.to_owned(),
                expected: info.size,
                actual: summary.size,
            });
        }
        if !streamed && summary.sha256 != info.sha256 {
            return Err(StoreError::HashMismatch {
                path: partial.to_owned(),
                expected: new_sha,
                actual: summary.sha256_hex(),
            });
        }

        let ha_date = summary
            .backup
            .timestamp()
            .map_err(|source| StoreError::Archive {
                path: partial.to_owned(),
                source,
            })?;
        let utc = ha_date.to_zoned(TimeZone::UTC);
        if !(1000..=9999).contains(&utc.year()) {
            return Err(StoreError::DateOutOfRange {
                date: tar_stream::shown(&summary.backup.date),
            });
        }
        let stem = names::archive_stem(ha_date, &summary.backup.name, &backup_id)?;
        let year = format!("{:04}", utc.year());
        let month = format!("{:02}", utc.month());
        let dir = self.root.join(&year).join(&month);
        let archive_name = format!("{stem}.tar");
        let target = dir.join(&archive_name);
        let manifest_path = dir.join(format!("{stem}.json"));
        if target.symlink_metadata().is_ok() {
            return Err(StoreError::Occupied { path: target });
        }

        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            backup_id: backup_id.clone(),
            name: summary.backup.name.clone(),
            ha_date,
            ha_version: summary.backup.ha_version().map(str::to_owned),
            size: summary.size,
            sha256: new_sha,
            protected: summary.backup.protected,
            pulled_at: info.pulled_at,
            source_host: info.source_host.clone(),
            source_path: info.source_path.clone(),
            hapull_version: env!("CARGO_PKG_VERSION").to_owned(),
            archive: archive_name.clone(),
            verified: Some(summary.level),
            securetar: summary.securetar,
        };
        for w in &summary.warnings {
            warn!(backup_id = %backup_id, "{w}");
        }

        ensure_dir(&self.root, &self.root.join(&year))?;
        ensure_dir(&self.root.join(&year), &dir)?;
        // The archive keeps this file's inode (it is linked into place): make it private first, whatever
        // mode the pull or an older version left.
        File::open(partial)
            .and_then(|f| {
                crate::private_fs::make_private(&f)?;
                f.sync_all()
            })
            .map_err(io_err("flush to disk", partial))?;
        let mut json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| io_err("encode", &manifest_path)(io::Error::other(e)))?;
        json.push(b'\n');
        write_atomic(&manifest_path, &json)?;
        if let Err(e) = place(partial, &target, &info.sha256) {
            // Without its archive the manifest describes nothing; take it back.
            let _ = fs::remove_file(&manifest_path);
            let _ = fsync_dir(&dir);
            return Err(e);
        }

        let stored = StoredArchive {
            path: target,
            manifest_path,
            relative_path: format!("{year}/{month}/{archive_name}"),
            manifest,
        };
        self.refresh_sums()?;
        info!(
            backup_id = %backup_id,
            path = %stored.path.display(),
            bytes = stored.manifest.size,
            sha256 = %stored.manifest.sha256,
            "archive committed"
        );
        Ok(stored)
    }
}

/// Creates `dir` (mode 0700) if missing and makes its entry in `parent` durable.
pub(super) fn ensure_dir(parent: &Path, dir: &Path) -> Result<(), StoreError> {
    match fs::DirBuilder::new()
        .mode(crate::private_fs::DIR_MODE)
        .create(dir)
    {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(crate::private_fs::DIR_MODE))
                .map_err(io_err("set mode 0700 on", dir))?;
            fsync_dir(parent)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err("create the directory", dir)(e)),
    }
}

pub(super) fn temp_path_for(target: &Path) -> PathBuf {
    crate::private_fs::temp_path_for(target)
}

/// Writes `data` to `target` so that a crash leaves the old content or the new, never a mix.
pub(super) fn write_atomic(target: &Path, data: &[u8]) -> Result<(), StoreError> {
    crate::private_fs::write_atomic(target, data).map_err(io_err("write", target))
}

pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Moves `from` to `to` without ever replacing an existing `to`: a hard link (atomic, fails if `to`
/// exists) then removal of `from`. Across file systems, copies to a temp file beside `to`, checks the
/// copy's hash, then links it.
pub(super) fn place(from: &Path, to: &Path, sha256: &[u8; 32]) -> Result<(), StoreError> {
    match link_no_replace(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = temp_path_for(to);
            let copied = copy_durably(from, &tmp, sha256)
                .and_then(|()| link_no_replace(&tmp, to).map_err(|e| link_error(e, to)));
            let _ = fs::remove_file(&tmp);
            copied?;
        }
        Err(e) => return Err(link_error(e, to)),
    }
    fsync_parent(to)?;
    remove_if_present(from)?;
    fsync_parent(from)
}

pub(super) fn link_error(e: io::Error, to: &Path) -> StoreError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        StoreError::Occupied {
            path: to.to_owned(),
        }
    } else {
        io_err("move the archive into place at", to)(e)
    }
}

/// `link(2)`, falling back on file systems without hard links to a rename after checking that `to`
/// does not exist (the store has one writer, so nothing creates `to` in between).
pub(super) fn link_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        other => other,
    }
}

pub(super) fn copy_durably(from: &Path, tmp: &Path, sha256: &[u8; 32]) -> Result<(), StoreError> {
    let mut src = File::open(from).map_err(io_err("read", from))?;
    let mut dst = crate::private_fs::create_new(tmp).map_err(io_err("create", tmp))?;
    io::copy(&mut src, &mut dst).map_err(io_err("copy into", tmp))?;
    dst.sync_all().map_err(io_err("flush to disk", tmp))?;
    let (_, copied) = hash_file(tmp).map_err(io_err("read", tmp))?;
    if &copied != sha256 {
        return Err(StoreError::HashMismatch {
            path: tmp.to_owned(),
            expected: hex::encode(sha256),
            actual: hex::encode(copied),
        });
    }
    Ok(())
}

//! Reading the store: listing manifests, finding an archive, re-verifying one.
//!
//! Problems (unreadable manifests, archives without a manifest and the reverse) are reported, not
//! repaired: this file must not change anything on disk, so it is safe beside a running writer.

use super::*;

impl Store {
    /// Complete archives (oldest first); problems are logged as warnings. See [`Store::scan`].
    pub fn list(&self) -> Result<Vec<StoredArchive>, StoreError> {
        let listing = self.scan()?;
        for p in &listing.problems {
            warn!(path = %p.path.display(), problem = %p.problem, "store entry skipped");
        }
        Ok(listing.archives)
    }

    /// Reads every manifest. Unreadable manifests, manifests without an archive and archives without
    /// a manifest are reported in [`Listing::problems`] instead of failing the listing.
    pub fn scan(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for (year, year_dir) in subdirs(&self.root, 4)? {
            for (month, month_dir) in subdirs(&year_dir, 2)? {
                self.scan_month(&format!("{year}/{month}"), &month_dir, &mut listing)?;
            }
        }
        listing
            .archives
            .sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        Ok(listing)
    }

    pub(super) fn scan_month(
        &self,
        rel: &str,
        dir: &Path,
        listing: &mut Listing,
    ) -> Result<(), StoreError> {
        let mut files: Vec<String> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            if let Ok(name) = entry.file_name().into_string()
                && !name.starts_with('.')
            {
                files.push(name);
            }
        }
        files.sort();
        for name in &files {
            if let Some(stem) = name.strip_suffix(".json") {
                let manifest_path = dir.join(name);
                let archive_name = format!("{stem}.tar");
                match load_manifest(&manifest_path, &archive_name) {
                    Ok(manifest) => {
                        if files.binary_search(&archive_name).is_ok() {
                            listing.archives.push(StoredArchive {
                                path: dir.join(&archive_name),
                                manifest_path,
                                relative_path: format!("{rel}/{archive_name}"),
                                manifest,
                            });
                        } else {
                            listing.problems.push(StoreProblem {
                                path: manifest_path,
                                kind: ProblemKind::MissingArchive,
                                problem: format!("its archive {archive_name} is missing"),
                            });
                        }
                    }
                    Err(problem) => listing.problems.push(StoreProblem {
                        path: manifest_path,
                        kind: ProblemKind::UnreadableManifest,
                        problem,
                    }),
                }
            } else if let Some(stem) = name.strip_suffix(".tar")
                && files.binary_search(&format!("{stem}.json")).is_err()
            {
                listing.problems.push(StoreProblem {
                    path: dir.join(name),
                    kind: ProblemKind::MissingManifest,
                    problem: "archive without a manifest (not listed, not verified, never pruned)"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The stored archive of `backup_id`, if any.
    pub fn find(&self, backup_id: &str) -> Result<Option<StoredArchive>, StoreError> {
        Ok(self
            .scan()?
            .archives
            .into_iter()
            .find(|a| a.manifest.backup_id == backup_id))
    }

    /// Re-hashes the archive and compares size and SHA-256 with its manifest.
    pub fn verify(&self, archive: &StoredArchive) -> Result<VerifyReport, StoreError> {
        self.verify_with(archive, None, None)
    }

    /// Like [`Store::verify`], and with `Some(mode)` also re-checks the archive's structure and, in
    /// [`Verify::Full`] mode, reads every inner archive (decrypting a protected backup's with
    /// `keys`), all in the same single read of the file.
    pub fn verify_with(
        &self,
        archive: &StoredArchive,
        structure: Option<Verify>,
        keys: Option<&mut Keys>,
    ) -> Result<VerifyReport, StoreError> {
        let m = &archive.manifest;
        let mut problems = Vec::new();
        let mut level = None;
        let mut warnings = Vec::new();
        let checked = match structure {
            Some(mode) => match verify_file_with(
                &archive.path,
                &m.backup_id,
                VerifyOptions {
                    mode,
                    keys,
                    hash: true,
                },
            ) {
                Ok(summary) => {
                    level = Some(summary.level);
                    warnings = summary.warnings;
                    Some((summary.size, summary.sha256))
                }
                Err(ArchiveError::Open { source, .. }) => {
                    return Err(io_err("read", &archive.path)(source));
                }
                Err(e) => {
                    problems.push(format!("structure: {e}"));
                    None
                }
            },
            None => None,
        };
        let (size, sha) = match checked {
            Some(v) => v,
            None => hash_file(&archive.path).map_err(io_err("read", &archive.path))?,
        };
        let actual_sha256 = hex::encode(sha);
        if size != m.size {
            problems.push(format!(
                "size is {size} bytes, the manifest says {}",
                m.size
            ));
        }
        if actual_sha256 != m.sha256 {
            problems.push(format!(
                "SHA-256 is {actual_sha256}, the manifest says {}: the archive is corrupt",
                m.sha256
            ));
        }
        Ok(VerifyReport {
            relative_path: archive.relative_path.clone(),
            expected_size: m.size,
            actual_size: size,
            expected_sha256: m.sha256.clone(),
            actual_sha256,
            problems,
            level,
            warnings,
        })
    }
}

pub(super) fn load_manifest(path: &Path, archive_name: &str) -> Result<Manifest, String> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(1024 * 1024).read_to_end(&mut data))
        .map_err(|e| format!("unreadable manifest: {e}"))?;
    let m: Manifest =
        serde_json::from_slice(&data).map_err(|e| format!("unreadable manifest: {e}"))?;
    if m.archive != archive_name {
        return Err(format!(
            "the manifest names archive {:?}, not {archive_name:?} beside it",
            m.archive
        ));
    }
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the manifest's sha256 {:?} is not a SHA-256",
            m.sha256
        ));
    }
    if let Err(e) = safe_component(&m.backup_id) {
        return Err(format!("the manifest's backup_id is unusable: {e}"));
    }
    Ok(m)
}

/// Subdirectories whose names are exactly `digits` ASCII digits, sorted.
pub(super) fn subdirs(dir: &Path, digits: usize) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.len() == digits
            && name.bytes().all(|b| b.is_ascii_digit())
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

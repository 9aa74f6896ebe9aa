//! Proving remote copies: choosing the strongest hash a target offers, uploading, and checking the
//! uploaded file against the committed local one.
//!
//! A ledger entry ([`Copy`]) is made only for a copy that passed its check, a differing remote file
//! is uploaded again and re-proven, and a size-only check is named as such, never as a hash proof.
//! This file must not delete anything and does not write the ledger itself.

use super::*;

/// Hash types rclone knows, strongest first; SHA-256 first because the store's manifests carry it.
pub(super) const HASH_PREFERENCE: [&str; 13] = [
    "sha256",
    "sha512",
    "blake3",
    "dropbox",
    "sha1",
    "hidrive",
    "mailru",
    "whirlpool",
    "md5",
    "quickxor",
    "xxh128",
    "xxh3",
    "crc32",
];

impl ProofMethod {
    pub fn choose(hashes: &[String], download_back: bool) -> ProofMethod {
        HASH_PREFERENCE
            .iter()
            .find(|h| hashes.iter().any(|x| x == *h))
            .map(|h| ProofMethod::Hash(h.to_string()))
            .unwrap_or(if download_back {
                ProofMethod::Download
            } else {
                ProofMethod::Size
            })
    }

    pub fn describe(&self) -> String {
        match self {
            ProofMethod::Hash(h) => format!("the remote's {h} hash compared with the local file's"),
            ProofMethod::Download => {
                "no remote hash: each copy is read back in full and its SHA-256 compared".into()
            }
            ProofMethod::Size => {
                "no remote hash: size only (set `download_back = true` to read each copy back)"
                    .into()
            }
        }
    }
}

impl Target {
    pub async fn proof_method(&self) -> Result<ProofMethod, OffsiteError> {
        let hashes = self.rclone.hash_types(&self.config.remote).await?;
        Ok(ProofMethod::choose(&hashes, self.config.download_back))
    }

    pub(super) async fn upload_and_prove(
        &self,
        store: &Arc<Store>,
        archive: &StoredArchive,
        method: &ProofMethod,
    ) -> Result<Copy, OffsiteError> {
        // The local file is re-read first: a copy of a damaged archive is no copy at all.
        let a = archive.clone();
        let check = blocking(store, move |s| s.verify(&a)).await??;
        if !check.is_ok() {
            return Err(OffsiteError::LocalCorrupt {
                path: archive.relative_path.clone(),
                problems: check.problems.join("; "),
            });
        }
        let manifest_rel = manifest_relative(&archive.relative_path);
        let manifest_sha = {
            let p = archive.manifest_path.clone();
            tokio::task::spawn_blocking(move || store::hash_file(&p))
                .await
                .map_err(|e| OffsiteError::Rclone {
                    what: "hashing the manifest".into(),
                    detail: e.to_string(),
                })?
                .map_err(|e| OffsiteError::Rclone {
                    what: format!("reading {}", archive.manifest_path.display()),
                    detail: e.to_string(),
                })?
        };
        let files = [
            (
                archive.path.as_path(),
                archive.relative_path.as_str(),
                archive.manifest.size,
                archive.manifest.sha256.clone(),
            ),
            (
                archive.manifest_path.as_path(),
                manifest_rel.as_str(),
                manifest_sha.0,
                hex::encode(manifest_sha.1),
            ),
        ];
        let mut proof = None;
        for (path, rel, size, sha) in &files {
            let dest = self.remote_path(rel);
            self.rclone.copy_to(path, &dest, false).await?;
            let proven = match self.prove(path, rel, *size, sha, method).await {
                Err(OffsiteError::Mismatch { detail, .. }) => {
                    // A stale or damaged file of the same size and time is skipped by rclone's
                    // own comparison: upload once more unconditionally, then prove again.
                    warn!(remote = %self.shown(rel), %detail, "remote copy differs; uploading it again");
                    self.rclone.copy_to(path, &dest, true).await?;
                    self.prove(path, rel, *size, sha, method).await?
                }
                other => other?,
            };
            proof.get_or_insert(proven);
        }
        let (kind, value) = proof.unwrap_or_default();
        Ok(Copy {
            relative_path: archive.relative_path.clone(),
            manifest: archive.manifest.clone(),
            proof: kind,
            proof_value: value,
            proven_at: Timestamp::now().to_string(),
            delete_refused_at: None,
        })
    }

    /// Proves one uploaded file; returns the proof's name and the value compared.
    pub(super) async fn prove(
        &self,
        local: &Path,
        relative: &str,
        size: u64,
        sha256: &str,
        method: &ProofMethod,
    ) -> Result<(String, String), OffsiteError> {
        let shown = self.shown(relative);
        let (dir, file) = match relative.rsplit_once('/') {
            Some((d, f)) => (self.remote_path(d), f),
            None => (self.config.remote.clone(), relative),
        };
        let hash = match method {
            ProofMethod::Hash(h) => Some(h.as_str()),
            _ => None,
        };
        let entries = self
            .rclone
            .list(&dir, hash, false)
            .await?
            .unwrap_or_default();
        let entry = entries
            .iter()
            .find(|e| e.path == file && !e.is_dir)
            .ok_or_else(|| OffsiteError::Missing {
                remote_path: shown.clone(),
            })?;
        if u64::try_from(entry.size).ok() != Some(size) {
            return Err(OffsiteError::Mismatch {
                remote_path: shown,
                detail: format!("remote size {} bytes, local {size}", entry.size),
            });
        }
        if let Some(h) = hash
            && let Some(remote_hash) = entry.hashes.get(h).filter(|v| !v.is_empty())
        {
            let local_hash = if h == "sha256" {
                sha256.to_string()
            } else {
                self.rclone.hash_local(h, local).await?
            };
            if !remote_hash.eq_ignore_ascii_case(&local_hash) {
                return Err(OffsiteError::Mismatch {
                    remote_path: shown,
                    detail: format!("remote {h} {remote_hash}, local {local_hash}"),
                });
            }
            return Ok((h.to_string(), remote_hash.to_ascii_lowercase()));
        }
        // No hash from the remote (the backend has none, or none for this file).
        if self.config.download_back {
            let (n, sha) = self
                .rclone
                .download_sha256(&self.remote_path(relative))
                .await?;
            let got = hex::encode(sha);
            if n != size || got != sha256 {
                return Err(OffsiteError::Mismatch {
                    remote_path: shown,
                    detail: format!(
                        "read back {n} bytes with SHA-256 {got}, local {size} bytes {sha256}"
                    ),
                });
            }
            return Ok(("download".into(), got));
        }
        Ok(("size".into(), size.to_string()))
    }
}

pub(super) fn proof_name(m: &ProofMethod) -> String {
    match m {
        ProofMethod::Hash(h) => h.clone(),
        ProofMethod::Download => "download".into(),
        ProofMethod::Size => "size".into(),
    }
}

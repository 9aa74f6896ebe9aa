//! What hapull uploaded to one offsite target and proved there, kept in the store
//! (`<store>/.hapull-offsite/<target>.json`). Offsite retention deletes only what this file lists,
//! so hapull never touches a remote file it did not put there itself.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::Manifest;

const DIR: &str = ".hapull-offsite";

/// One archive (and its manifest) on the remote, proven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// `YYYY/MM/<file>.tar`, relative to the target's remote root (as in the local store).
    pub relative_path: String,
    /// The manifest as uploaded beside it (retention plans on its times).
    pub manifest: Manifest,
    /// How the remote copy was proven: a hash name (`sha256`, `sha1`, `md5`, ...), `download`
    /// (read back in full, SHA-256 compared) or `size` (the size only).
    pub proof: String,
    /// The value compared (the hash, or the size).
    pub proof_value: String,
    /// RFC 3339, UTC.
    pub proven_at: String,
    /// Set when the storage refused to delete it (a write-only target); hapull does not try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_refused_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub remote: String,
    #[serde(default)]
    pub copies: Vec<Copy>,
    /// When a run last finished with every archive it should have offsite proven there.
    #[serde(default)]
    pub last_success: Option<String>,
}

impl Ledger {
    pub fn last_success_at(&self) -> Option<Timestamp> {
        self.last_success.as_deref().and_then(|s| s.parse().ok())
    }
}

impl Ledger {
    pub fn path(store_root: &Path, target: &str) -> PathBuf {
        store_root.join(DIR).join(format!("{target}.json"))
    }

    /// The ledger, or an empty one for `remote` when there is none yet. A ledger that exists but
    /// cannot be read is an error: starting over would forget what may be deleted.
    pub fn load(path: &Path, remote: &str) -> std::io::Result<Ledger> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a readable offsite ledger: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger {
                remote: remote.to_string(),
                ..Ledger::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes the ledger crash-safely (temp file, fsync, rename, fsync folder), private to hapull.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("ledger")
        ));
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    pub fn find(&self, backup_id: &str, sha256: &str) -> Option<&Copy> {
        self.copies
            .iter()
            .find(|c| c.manifest.backup_id == backup_id && c.manifest.sha256 == sha256)
    }

    /// Adds or replaces the entry for the same remote path.
    pub fn put(&mut self, copy: Copy) {
        self.copies
            .retain(|c| c.relative_path != copy.relative_path);
        self.copies.push(copy);
    }
}

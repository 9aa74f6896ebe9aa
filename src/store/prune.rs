//! Removing from the store: single archives, retention pruning, stale partial downloads.
//!
//! The only code that deletes archives. It must never remove the newest archive when pruning, nor an
//! archive whose manifest it cannot read, and only a holder of the store lock may call it.

use super::*;

impl Store {
    /// Removes `.partial` downloads (and their sidecars) in the incoming folder not written to for
    /// `max_age`, logging each; returns what was removed. Only a lock holder may call this.
    pub fn remove_stale_partials(
        &self,
        max_age: std::time::Duration,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let dir = self.root.join(INCOMING_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let now = std::time::SystemTime::now();
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.ends_with(".partial") || name.ends_with(".partial.meta")) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if !meta.is_file() || age < max_age {
                continue;
            }
            let path = entry.path();
            warn!(
                path = %path.display(),
                bytes = meta.len(),
                age_days = age.as_secs() / 86_400,
                "removing a partial download untouched for over a week"
            );
            remove_if_present(&path)?;
            removed.push(path);
        }
        if !removed.is_empty() {
            fsync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// Deletes an archive and its manifest, and its entry in `SHA256SUMS`.
    pub fn remove(&self, archive: &StoredArchive) -> Result<(), StoreError> {
        self.remove_many(std::slice::from_ref(archive))
    }

    pub(super) fn remove_many(&self, doomed: &[StoredArchive]) -> Result<(), StoreError> {
        if doomed.is_empty() {
            return Ok(());
        }
        let remaining: Vec<StoredArchive> = self
            .scan()?
            .archives
            .into_iter()
            .filter(|a| !doomed.iter().any(|d| d.path == a.path))
            .collect();
        // The checksum list goes first, so `sha256sum -c` never names a file that is gone.
        self.write_sums(&remaining)?;
        for a in doomed {
            remove_if_present(&a.path)?;
            fsync_parent(&a.path)?;
            remove_if_present(&a.manifest_path)?;
            fsync_parent(&a.manifest_path)?;
            self.remove_empty_parents(&a.path);
            info!(
                backup_id = %a.manifest.backup_id,
                path = %a.path.display(),
                "archive removed"
            );
        }
        Ok(())
    }

    /// Applies `policy` (buckets in `tz`): with `dry_run`, only decides. Returns every decision,
    /// newest first. Archives the store cannot read a manifest for are never touched.
    pub fn prune(
        &self,
        policy: &RetentionPolicy,
        tz: &TimeZone,
        dry_run: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        let listing = self.scan()?;
        let decisions = plan(&listing.archives, policy, tz);
        if dry_run {
            return Ok(decisions);
        }
        let doomed: Vec<StoredArchive> = decisions
            .iter()
            .skip(1) // the newest, kept whatever the plan says
            .filter(|d| !d.keep)
            .map(|d| d.archive.clone())
            .collect();
        self.remove_many(&doomed)?;
        Ok(decisions)
    }
}

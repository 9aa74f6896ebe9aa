//! Rotating the log file: when it is due, and moving the current file aside so that the next file's
//! first record names the previous one.
//!
//! The chain must continue across files; rotation must not lose, rewrite or reorder records.

use super::*;

impl Core {
    pub(super) fn rotation_due(&self, now: Timestamp) -> bool {
        let total = self.size + self.pending.len() as u64;
        if total == 0 {
            return false;
        }
        if self.max_bytes.is_some_and(|max| total >= max) {
            return true;
        }
        match (self.max_age, self.started) {
            (Some(age), Some(started)) => now.duration_since(started).unsigned_abs() >= age,
            _ => false,
        }
    }

    pub(super) fn rotate(&mut self, now: Timestamp) -> Result<(), AuditError> {
        let started = self.started.unwrap_or(now);
        let rotated = files::rotated_name(&self.path, started, self.first_seq);
        let mut gz_name = rotated.file_name().unwrap_or_default().to_os_string();
        gz_name.push(".gz");
        if rotated.exists() || rotated.with_file_name(gz_name).exists() {
            return Err(AuditError::BadRotatedFile {
                path: self.path.clone(),
                name: rotated.display().to_string(),
                why: "a rotated file with this name already exists, so rotating would overwrite it"
                    .into(),
            });
        }
        fs::rename(&self.path, &rotated)
            .map_err(|e| AuditError::io(&self.path, "renaming for rotation", e))?;
        let dir = files::parent_dir(&self.path);
        self.file = crate::private_fs::options()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&self.path)
            .and_then(|f| crate::private_fs::make_private(&f).map(|()| f))
            .map_err(|e| AuditError::io(&self.path, "creating after rotation", e))?;
        files::sync_dir(&dir)?;
        let previous_first = self.first_seq;
        let previous_last = self.next_seq - 1;
        self.size = 0;
        self.started = None;
        self.first_seq = self.next_seq;
        let rotated_file = rotated
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::info!(path = %self.path.display(), rotated = %rotated_file, "audit log rotated");
        self.append(
            now,
            Kind::Rotated,
            &encode_data(
                &json!({"previous_file": rotated_file, "previous_first_seq": previous_first,
                    "previous_last_seq": previous_last, "compressed": self.compress}),
            ),
        )?;
        if self.compress {
            self.compressors.retain(|h| !h.is_finished());
            let spawned = std::thread::Builder::new()
                .name("audit-gzip".into())
                .spawn(move || {
                    if let Err(e) = files::compress_rotated(&rotated) {
                        tracing::warn!(
                            "audit log: {e}; it stays uncompressed and is retried at the next open"
                        );
                    }
                });
            match spawned {
                Ok(h) => self.compressors.push(h),
                Err(e) => tracing::warn!(
                    "audit log: could not start compressing a rotated file ({e}); retried at the next open"
                ),
            }
        }
        Ok(())
    }
}

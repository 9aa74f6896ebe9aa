//! Views of a target: local status, the ledger, the remote listing, and `check`.
//!
//! Only `check` writes to the storage, and only its own test file (uploaded, proven, deleted). Nothing
//! here uploads or deletes a backup or changes the ledger.

use super::*;

impl Target {
    /// The ledger and the lag, without contacting the remote (for metrics at start-up).
    pub fn local_status(
        &self,
        store: &Store,
        tz: &TimeZone,
    ) -> Result<(Ledger, u64, u64), OffsiteError> {
        let ledger = self.load_ledger(store)?;
        let local = store.list()?;
        let keep = self.plan(&local, &ledger, tz);
        let (n, bytes) = lag(&local, &keep, &ledger);
        Ok((ledger, n, bytes))
    }

    /// The ledger only.
    pub fn ledger(&self, store: &Store) -> Result<Ledger, OffsiteError> {
        self.load_ledger(store)
    }

    /// Every file under the remote root.
    pub async fn remote_files(&self) -> Result<Vec<RemoteEntry>, OffsiteError> {
        Ok(self
            .rclone
            .list(&self.config.remote, None, true)
            .await?
            .unwrap_or_default())
    }

    /// `hapull check`: rclone, the remote (reachable, writable, hash), which proof will be used, and
    /// whether deletions are allowed. A test file is uploaded, proven and deleted.
    pub async fn check(&self) -> Vec<(CheckLevel, String)> {
        let mut out = Vec::new();
        match self.rclone.check_version().await {
            Ok(v) => out.push((
                CheckLevel::Ok,
                format!("{v} at {}", self.config.rclone.display()),
            )),
            Err(e) => {
                out.push((CheckLevel::Fail, e.to_string()));
                return out;
            }
        }
        match self.rclone.list(&self.config.remote, None, false).await {
            Ok(Some(files)) => out.push((
                CheckLevel::Ok,
                format!(
                    "{} is reachable ({} file(s) at its top)",
                    self.shown_remote,
                    files.len()
                ),
            )),
            Ok(None) => out.push((
                CheckLevel::Ok,
                format!(
                    "{} is reachable (the folder does not exist yet; the first upload makes it)",
                    self.shown_remote
                ),
            )),
            Err(e) => {
                out.push((
                    CheckLevel::Fail,
                    format!("{} is not reachable: {e}", self.shown_remote),
                ));
                return out;
            }
        }
        let method = match self.proof_method().await {
            Ok(m) => m,
            Err(e) => {
                out.push((CheckLevel::Fail, e.to_string()));
                return out;
            }
        };
        let probe_name = format!(".hapull-check-{:016x}", fastrand::u64(..));
        let dir = std::env::temp_dir().join(format!("hapull-check-{}", std::process::id()));
        let content = format!("hapull offsite check {}\n", Timestamp::now());
        let local = dir.join(&probe_name);
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|_| std::fs::write(&local, content.as_bytes()));
        if let Err(e) = made {
            out.push((
                CheckLevel::Fail,
                format!("cannot write a test file in {}: {e}", dir.display()),
            ));
            return out;
        }
        let sha = hex::encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content.as_bytes()).as_ref(),
        );
        let remote = self.shown(&probe_name);
        match self
            .rclone
            .copy_to(&local, &self.remote_path(&probe_name), false)
            .await
        {
            Ok(()) => {
                out.push((CheckLevel::Ok, format!("writable (test file {remote})")));
                match self
                    .prove(&local, &probe_name, content.len() as u64, &sha, &method)
                    .await
                {
                    Ok((kind, _)) => {
                        let level = if kind == "size" {
                            CheckLevel::Warn
                        } else {
                            CheckLevel::Ok
                        };
                        out.push((
                            level,
                            format!(
                                "proof: {kind} — {} (checked on the test file)",
                                method.describe()
                            ),
                        ));
                    }
                    Err(e) => out.push((
                        CheckLevel::Fail,
                        format!("proof {}: {e}", proof_name(&method)),
                    )),
                }
                match self.rclone.delete_file(&self.remote_path(&probe_name)).await {
                    Ok(()) => out.push((CheckLevel::Ok, "deletions allowed: offsite retention deletes what hapull uploaded and its rules drop".into())),
                    Err(Ok(reason)) => out.push((CheckLevel::Warn, format!(
                        "deletions refused ({reason}): a write-only target; retention's deletions are reported, not done, and the test file {remote} stays (delete it with the storage's own tools)"))),
                    Err(Err(e)) => out.push((CheckLevel::Warn, format!("deleting the test file failed: {e}"))),
                }
            }
            Err(e) => out.push((CheckLevel::Fail, format!("not writable: {e}"))),
        }
        let _ = std::fs::remove_dir_all(&dir);
        out
    }
}

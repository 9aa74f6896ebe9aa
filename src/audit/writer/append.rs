//! Appending records to the chain: encoding, batching a commit, making it durable, failing for good.
//!
//! After a write or sync error the writer is failed and must not write again (a record after a gap
//! would break the chain).

use super::*;

impl Core {
    pub(super) fn fail(&mut self, e: &AuditError) -> AuditError {
        let reason = e.to_string();
        tracing::error!(path = %self.path.display(), "audit log write failed: {reason}");
        self.failed = Some(reason.clone());
        AuditError::WriterFailed {
            path: self.path.clone(),
            reason,
        }
    }

    pub(super) fn check_failed(&self) -> Result<(), AuditError> {
        match &self.failed {
            Some(reason) => Err(AuditError::WriterFailed {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn append(
        &mut self,
        time: Timestamp,
        kind: Kind,
        data: &[u8],
    ) -> Result<u64, AuditError> {
        self.check_failed()?;
        if self.rotation_due(time) {
            self.sync()?;
            if let Err(e) = self.rotate(time) {
                return Err(self.fail(&e));
            }
        }
        let seq = self.next_seq;
        let hash = encode_into(
            &mut self.pending,
            seq,
            &format_time(time),
            kind.as_str(),
            &self.instance,
            data,
            &self.prev,
        );
        self.prev = hex::encode(hash);
        self.next_seq += 1;
        if self.started.is_none() {
            self.started = Some(time);
        }
        Ok(seq)
    }

    /// Writes pending bytes, fsyncs, and moves the seal forward.
    pub(super) fn sync(&mut self) -> Result<(), AuditError> {
        self.check_failed()?;
        if !self.pending.is_empty() {
            if let Err(e) = self.file.write_all(&self.pending) {
                return Err(self.fail(&AuditError::io(&self.path, "writing", e)));
            }
            self.size += self.pending.len() as u64;
            self.pending.clear();
            // After a failed fsync the page cache may already have dropped the dirty pages, so a retry
            // could report success for data that never reached the disk; the writer stops instead.
            if let Err(e) = self.file.sync_data() {
                return Err(self.fail(&AuditError::io(&self.path, "fsync", e)));
            }
            self.durable_seq = self.next_seq - 1;
        }
        if self.durable_seq > self.sealed_seq {
            let seal = Seal {
                seq: self.durable_seq,
                sha256: self.prev.clone(),
            };
            if let Err(e) = files::write_seal(&self.seal_path, &seal) {
                return Err(self.fail(&e));
            }
            self.sealed_seq = self.durable_seq;
        }
        Ok(())
    }

    pub(super) fn commit(&mut self, batch: Vec<Msg>, dropped: u64) -> CommitOutcome {
        let mut replies = Vec::new();
        let mut steps = Vec::new();
        let mut events = 0u64;
        let mut lost = 0u64;
        for msg in batch {
            match msg {
                Msg::Event { time, kind, data } => match self.append(time, kind, &data) {
                    Ok(_) => events += 1,
                    Err(_) => lost += 1,
                },
                Msg::Step {
                    time,
                    kind,
                    data,
                    done,
                } => {
                    let r = self.append(time, kind, &data);
                    steps.push((done, r));
                }
                Msg::Flush { done } | Msg::Close { done } => replies.push(done),
            }
        }
        if dropped > 0 {
            let data = json!({"count": dropped, "reason": "queue full"});
            if let Err(e) = self.append(Timestamp::now(), Kind::Dropped, &encode_data(&data)) {
                tracing::error!(path = %self.path.display(), dropped, "audit log: could not record dropped events: {e}");
            }
        }
        let synced = self.sync();
        let failed_reason = synced.as_ref().err().map(|e| e.to_string());
        let fail = |path: &Path| AuditError::WriterFailed {
            path: path.to_path_buf(),
            reason: failed_reason.clone().unwrap_or_default(),
        };
        let mut out = Vec::with_capacity(steps.len() + replies.len());
        for (done, r) in steps {
            let r = match r {
                Ok(seq) if failed_reason.is_none() => Ok(seq),
                Ok(_) => Err(fail(&self.path)),
                Err(e) => Err(e),
            };
            out.push((done, r));
        }
        for done in replies {
            let r = match &failed_reason {
                None => Ok(self.durable_seq),
                Some(_) => Err(fail(&self.path)),
            };
            out.push((done, r));
        }
        if failed_reason.is_some() {
            lost += events;
            events = 0;
        }
        CommitOutcome {
            replies: out,
            events_written: events,
            events_lost: lost,
        }
    }

    /// Waits for background compression of rotated files.
    pub(super) fn finish(&mut self) {
        for h in self.compressors.drain(..) {
            let _ = h.join();
        }
    }
}

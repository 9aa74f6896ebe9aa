//! Opening the log: reading back the chain's end and recovering from a torn tail.
//!
//! A torn tail of at most a few lines (what a crash leaves) is kept in place and followed by an
//! `audit.recovered` record, never silently dropped; more than that is damage, and opening must fail
//! (`CorruptTail`) rather than repair it.

use super::*;

impl Core {
    pub(super) fn open(opts: AuditOptions) -> Result<(Core, OpenReport), AuditError> {
        let path = opts.path.clone();
        let dir = files::parent_dir(&path);
        crate::private_fs::create_dir_all(&dir)
            .map_err(|e| AuditError::io(&dir, "creating the directory", e))?;
        if opts.compress_rotated {
            files::finish_compressions(&path)?;
        }
        let mut file = crate::private_fs::open_append(&path)
            .map_err(|e| AuditError::io(&path, "opening for append", e))?;
        files::sync_dir(&dir)?;
        let len = file
            .metadata()
            .map_err(|e| AuditError::io(&path, "reading metadata", e))?
            .len();

        let mut report = OpenReport::default();
        let mut torn: Option<(u64, Vec<u8>, bool, String)> = None; // offset, bytes, ended in newline, reason
        let mut last_good: Option<(u64, String)> = None; // seq, line hash
        let mut last_good_offset: Option<u64> = None; // where that line starts, in the current file
        if len > 0 {
            let lines = files::last_lines(&mut file, &path, len, MAX_TORN_LINES + 1)?;
            let good_idx = lines
                .iter()
                .rposition(|l| l.newline && parse_line(&l.bytes).is_ok());
            let torn_from = good_idx.map_or(0, |i| i + 1);
            if torn_from < lines.len() {
                let reaches_start = lines.first().is_some_and(|l| l.offset == 0);
                if good_idx.is_none() && !reaches_start {
                    let bad = &lines[0];
                    return Err(AuditError::CorruptTail {
                        path,
                        offset: bad.offset,
                        why: describe_bad_line(bad),
                    });
                }
                let region = &lines[torn_from..];
                let offset = region[0].offset;
                let end_newline = region.last().is_some_and(|l| l.newline);
                let mut bytes = Vec::new();
                for (i, l) in region.iter().enumerate() {
                    if i > 0 {
                        bytes.push(b'\n');
                    }
                    bytes.extend_from_slice(&l.bytes);
                }
                let reason = region
                    .iter()
                    .map(describe_bad_line)
                    .collect::<Vec<_>>()
                    .join("; ");
                torn = Some((offset, bytes, end_newline, reason));
            }
            if let Some(i) = good_idx {
                let line = &lines[i];
                if let Ok(rec) = parse_line(&line.bytes) {
                    last_good = Some((rec.seq, hex::encode(sha256(&line.bytes))));
                    last_good_offset = Some(line.offset);
                }
            }
        }
        // Nothing usable in the current file: the chain continues from the newest rotated file.
        if last_good.is_none()
            && let Some(newest) = files::rotated_siblings(&path)?.pop()
        {
            let name = newest.path.display().to_string();
            let bad = |why: String| AuditError::BadRotatedFile {
                path: path.clone(),
                name: name.clone(),
                why,
            };
            let line =
                files::last_line_of(&newest.path)?.ok_or_else(|| bad("it is empty".into()))?;
            let rec = parse_line(&line.bytes)
                .map_err(|e| bad(format!("its last line is not a record: {e}")))?;
            last_good = Some((rec.seq, hex::encode(sha256(&line.bytes))));
        }
        let (last_seq, prev) = match &last_good {
            Some((seq, hash)) => (*seq, hash.clone()),
            None => (FIRST_SEQ - 1, GENESIS_PREV.to_owned()),
        };

        // The current file's first record gives its age and the name it will be rotated to.
        let (mut started, mut first_seq) = (None, last_seq + 1);
        if len > 0
            && let Some(first) = files::first_line(&path)?
            && let Ok(rec) = parse_line(&first.bytes)
        {
            started = Some(rec.time);
            first_seq = rec.seq;
        }

        let seal_path = files::seal_path(&path);
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Where records lost from the end would have started: before any torn bytes.
        let good_end = torn.as_ref().map_or(len, |(offset, ..)| *offset);
        let mut lost: Option<(u64, u64, String)> = None; // first, last lost seq; the seal's hash
        let mut seal_notes: Vec<(String, Value)> = Vec::new();
        match files::read_seal(&seal_path) {
            Ok(Some(seal)) => {
                if seal.seq > last_seq {
                    lost = Some((last_seq + 1, seal.seq, seal.sha256.clone()));
                } else if seal.seq == last_seq && seal.sha256 != prev {
                    seal_notes.push((
                        format!("the last record (seq {last_seq}) does not match its seal: it was changed after it was written"),
                        json!({"reason": "last record does not match its seal", "file": file_name,
                               "changed_seq": last_seq, "changed_offset": last_good_offset,
                               "sealed_seq": seal.seq, "sealed_sha256": seal.sha256, "found_sha256": prev}),
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => seal_notes.push((
                format!("{e}"),
                json!({"reason": "seal unreadable", "file": file_name, "error": e.to_string()}),
            )),
        }

        // Records lost from the end keep their seqs: the next record continues after them, so a seq
        // quoted elsewhere never names two different records.
        let next_seq = lost.as_ref().map_or(last_seq + 1, |(_, last, _)| last + 1);
        if started.is_none() {
            first_seq = next_seq;
        }
        let mut core = Core {
            seal_path,
            instance: opts.instance,
            max_bytes: opts.max_bytes,
            max_age: opts.max_age,
            compress: opts.compress_rotated,
            file,
            size: len,
            started,
            first_seq,
            next_seq,
            prev,
            pending: Vec::new(),
            durable_seq: last_seq,
            sealed_seq: 0,
            compressors: Vec::new(),
            failed: None,
            path,
        };

        let now = Timestamp::now();
        let lost_note = lost.as_ref().map(|(first, last, sealed_sha)| {
            let msg = format!(
                "the log ends at seq {last_seq} (byte {good_end}) but its seal names seq {last}: records {first}..={last} were lost or removed from the end"
            );
            let data = json!({"lost_first_seq": first, "lost_last_seq": last, "lost_at_offset": good_end,
                              "last_seq": last_seq, "sealed_seq": last, "sealed_sha256": sealed_sha});
            (msg, data)
        });
        let mut lost_pending = lost_note;
        if let Some((offset, bytes, end_newline, reason)) = torn {
            let sha = hex::encode(sha256(&bytes));
            let msg = format!(
                "torn tail at offset {offset} ({} bytes, sha256 {sha}): {reason}; kept in place and followed by an audit.recovered record",
                bytes.len()
            );
            tracing::warn!(path = %core.path.display(), offset, length = bytes.len(), "audit log: {msg}");
            report.warnings.push(msg);
            report.torn = Some(TornTail {
                offset,
                length: bytes.len() as u64,
                sha256: sha.clone(),
                reason: reason.clone(),
            });
            if !end_newline {
                core.pending.push(b'\n');
            }
            let mut data = json!({"reason": "torn tail", "detail": reason, "file": file_name,
                "torn_offset": offset, "torn_length": bytes.len(), "torn_sha256": sha});
            // The first recovered record is the one that skips the lost seqs, so it says so.
            if let Some((msg, lost_data)) = lost_pending.take() {
                tracing::warn!(path = %core.path.display(), "audit log: {msg}");
                report.warnings.push(msg);
                if let (Some(obj), Value::Object(extra)) = (data.as_object_mut(), lost_data) {
                    obj.extend(extra);
                }
            }
            core.append(now, Kind::Recovered, &encode_data(&data))?;
        }
        if let Some((msg, mut data)) = lost_pending {
            if let Some(obj) = data.as_object_mut() {
                obj.insert("reason".into(), json!("records missing from the end"));
                obj.insert("file".into(), json!(file_name));
            }
            seal_notes.insert(0, (msg, data));
        }
        for (msg, data) in seal_notes {
            tracing::warn!(path = %core.path.display(), "audit log: {msg}");
            report.warnings.push(msg);
            core.append(now, Kind::Recovered, &encode_data(&data))?;
        }
        if !core.pending.is_empty() {
            core.sync()?;
        }
        report.next_seq = core.next_seq;
        Ok((core, report))
    }
}

pub(super) fn describe_bad_line(line: &RawLine) -> String {
    match parse_line(&line.bytes) {
        _ if !line.newline => "no trailing newline (write cut short)".to_owned(),
        Ok(_) => "a complete record".to_owned(),
        Err(e) => e.to_string(),
    }
}

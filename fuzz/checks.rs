//! What each fuzz target asserts about one input. Shared by the fuzz targets and by
//! `tests/hostile.rs`, which replays the inputs kept in `fuzz/regressions/<target>/`.
#![allow(dead_code)]

use std::path::{Component, Path};

use hapull::cycle::ha_archive_file_name;
use hapull::ha::{Backup, BackupEvent, BackupList, HaError, Incoming, decode_frame, parse_result};
use hapull::store::{
    ArchiveError, MAX_COMPONENT_BYTES, Verify, parse_backup_json_from_tar_prefix, safe_component,
    sanitize_for_filename, verify_reader,
};

/// Errors quote HA's text clipped to a few hundred bytes; anything far longer grows with the input.
const MAX_ERROR_TEXT: usize = 4096;

fn check_error(e: &HaError) {
    let text = e.to_string();
    assert!(
        text.len() <= MAX_ERROR_TEXT,
        "error text of {} bytes",
        text.len()
    );
}

/// Everything Home Assistant sends over the WebSocket goes through `decode_frame`, then
/// `parse_result` and the backup API's parsers. None of it may panic, overflow the stack or produce
/// an error message that grows with the input.
pub fn ha_decode(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for item in decode_frame(text) {
        match item {
            Incoming::Event { event, .. } => {
                if let Err(e) = BackupEvent::parse(&event) {
                    check_error(&e);
                }
            }
            Incoming::Result { body, .. } => match parse_result("backup/info", body) {
                Ok(result) => {
                    if let Err(e) = BackupList::from_value(&result) {
                        check_error(&e);
                    }
                    if let Err(e) = Backup::from_value(&result) {
                        check_error(&e);
                    }
                    if let Some(b) = result.get("backup")
                        && let Err(e) = Backup::from_value(b)
                    {
                        check_error(&e);
                    }
                }
                Err(e) => check_error(&e),
            },
            Incoming::Pong { .. } => {}
            Incoming::Ignored { reason } => {
                assert!(
                    reason.len() <= MAX_ERROR_TEXT,
                    "reason of {} bytes",
                    reason.len()
                );
            }
        }
    }
}

/// The archive verifier over arbitrary bytes: it must return an error, never panic, and when it
/// accepts, what it reports about the file must be true.
pub fn archive_verify(data: &[u8]) {
    for mode in [Verify::Structure, Verify::Full] {
        match verify_reader(data, "fuzz", mode) {
            Ok(summary) => {
                assert_eq!(summary.size, data.len() as u64);
                assert_eq!(summary.backup.slug, "fuzz");
                assert!(!summary.members.is_empty());
                // A member cannot be larger than the file that holds it.
                for m in &summary.members {
                    assert!(m.size <= data.len() as u64, "{m:?}");
                }
                assert_eq!(summary.sha256, sha256(data));
                assert!(summary.backup.timestamp().is_ok());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// An independent one-shot hash of the same bytes, against the verifier's streamed one.
fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `backup.json` read from the first bytes of a remote archive (which file holds which backup):
/// arbitrary bytes give an error or a parsed `backup.json`, never a panic, and "prefix too short"
/// asks for more than it was given.
pub fn tar_prefix(data: &[u8]) {
    match parse_backup_json_from_tar_prefix(data) {
        Ok(backup) => {
            let _ = backup.timestamp();
        }
        Err(ArchiveError::PrefixTooShort { have, need }) => {
            assert_eq!(have, data.len());
            assert!(
                need > have as u64,
                "asks for {need} bytes with {have} in hand"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn assert_single_component(s: &str) {
    assert!(!s.is_empty() && s != "." && s != "..", "{s:?}");
    assert!(s.len() <= MAX_COMPONENT_BYTES, "{} bytes", s.len());
    assert!(
        !s.chars().any(|c| c == '/' || c == '\\' || c.is_control()),
        "{s:?}"
    );
    let base = Path::new("/remote/backup");
    let joined = base.join(s);
    let comps: Vec<Component<'_>> = joined.components().collect();
    assert_eq!(comps.len(), base.components().count() + 1, "{s:?}");
    assert!(
        matches!(comps.last(), Some(Component::Normal(c)) if c.to_str() == Some(s)),
        "{s:?}"
    );
}

/// Names from Home Assistant become file names only through these rules. Whatever they accept must
/// be one plain path component: no separator, no NUL or control character, not `.` or `..`, short.
/// The input is a name, optionally followed by `\u{1}` and a date.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, date) = text
        .split_once('\u{1}')
        .unwrap_or((text, "2026-11-26T09:07:39.253410+00:00"));
    if let Ok(ok) = safe_component(name) {
        assert_eq!(ok, name);
        assert_single_component(&ok);
    }
    let slug = sanitize_for_filename(name);
    assert!(slug.len() <= 64 && !slug.is_empty());
    assert!(slug.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if let Some(file) = ha_archive_file_name(name, date)
        && let Ok(ok) = safe_component(&file)
    {
        assert_single_component(&ok);
        assert!(ok.ends_with(".tar"), "{ok:?}");
    }
}

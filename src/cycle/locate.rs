//! Locate: find the archive of a backup on the HA host. HA's file-name rule gives the first guess,
//! the archive's own `backup.json` (read from its first member without downloading the rest) must
//! confirm it; else the newest archives in `remote_dir` are peeked. Over HTTP there is nothing to
//! find: the archive is HA's download URL, and the store checks its slug at commit.

use serde_json::json;
use tracing::{info, warn};

use super::{At, Context, CycleError, Made, Source, Step};
use crate::audit::Kind;
use crate::ha::{BackupApi, Install};
use crate::store::{self, ArchiveError, BackupJson, MAX_BACKUP_JSON, safe_component};
use crate::transfer::Session;

/// How many of the newest archives in `remote_dir` are peeked when no name guess matched.
const PEEK_NEWEST: usize = 64;

/// First read of an archive's prefix; enough for `backup.json` in every archive seen so far.
const FIRST_PEEK: u64 = 16 * 1024;

impl Context {
    pub(super) async fn locate(&self, api: BackupApi, made: &Made) -> Result<String, CycleError> {
        let id = safe_component(&made.backup_id)
            .map_err(|e| CycleError::refused(Step::Locate, e.to_string()))?;
        if let Source::Http { prefix, .. } = &self.source {
            let path = match &made.agent {
                Some(agent) => format!(
                    "{prefix}/api/backup/download/{}?agent_id={}",
                    url_component(&id),
                    url_component(agent)
                ),
                None => format!("{prefix}/api/backup/download/{}", url_component(&id)),
            };
            info!(remote = %path, "archive located (Home Assistant's download)");
            self.record(
                Kind::ArchiveLocated,
                json!({"backup_id": made.backup_id, "remote": path}),
            )
            .await?;
            return Ok(path);
        }
        let mut guesses = Vec::new();
        if let Some(b) = &made.backup {
            if let Some(name) = ha_archive_file_name(&b.name, &b.date) {
                guesses.push(name);
            }
            // Supervisor installs name the file after the moment HA asked, not the backup's date.
            if let Some(name) = b
                .request_date()
                .and_then(|d| ha_archive_file_name(&b.name, d))
            {
                guesses.push(name);
            }
            if let Some(p) = &b.path
                && let Some(file) = p.rsplit('/').next()
            {
                guesses.push(file.to_string());
            }
        }
        // Legacy HA and the Supervisor (backups it made itself, uploads) name files `<slug>.tar`.
        if matches!(api, BackupApi::Legacy { .. })
            || made.agent.as_deref().map(Install::of_agent) == Some(Install::Supervisor)
        {
            guesses.push(format!("{id}.tar"));
        }
        let session = self.session(Step::Locate).await?;
        let result = self.find_archive(&session, &id, guesses).await;
        session.close().await;
        let path = result?;
        info!(remote = %path, "archive located");
        self.record(
            Kind::ArchiveLocated,
            json!({"backup_id": made.backup_id, "remote": path}),
        )
        .await?;
        Ok(path)
    }

    async fn find_archive(
        &self,
        session: &Session,
        id: &str,
        guesses: Vec<String>,
    ) -> Result<String, CycleError> {
        let dir = &self.settings.remote_dir;
        for g in guesses {
            let Ok(file) = safe_component(&g) else {
                warn!(name = %g.escape_debug(), "ignoring an unsafe file name derived from Home Assistant's data");
                continue;
            };
            let path = remote_join(dir, &file);
            match peek_slug(session, &path).await {
                Ok(slug) if slug == id => return Ok(path),
                Ok(other) => warn!(%path, slug = %other, "archive belongs to another backup"),
                Err(why) => info!(%path, %why, "not at the expected name"),
            }
        }
        // Fall back: peek the newest archives in the folder.
        let mut entries = session.list_dir(dir).await.at(Step::Locate)?;
        entries.retain(|e| e.is_file && e.name.ends_with(".tar"));
        entries.sort_by_key(|e| std::cmp::Reverse(e.mtime));
        for e in entries.into_iter().take(PEEK_NEWEST) {
            let Ok(file) = safe_component(&e.name) else {
                continue;
            };
            let path = remote_join(dir, &file);
            if let Ok(slug) = peek_slug(session, &path).await
                && slug == id
            {
                return Ok(path);
            }
        }
        Err(CycleError::refused(
            Step::Locate,
            format!(
                "no archive of backup {id} in {dir} on {} (is [ssh] remote_dir right, and can user {} read it? see README, Permissions)",
                self.source.host(),
                match &self.source {
                    Source::Sftp { ssh, .. } => ssh.user.as_str(),
                    Source::Http { .. } => "-",
                }
            ),
        ))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads and checks `backup.json`, the first member of the remote archive at `path`, reading only as
/// much of the file as it needs. The store's parser (the one the fuzzer exercises) does the reading.
pub async fn peek_backup_json(session: &Session, path: &str) -> Result<BackupJson, String> {
    // backup.json may be preceded by extension headers (long names, pax): allow some room for them.
    let limit = MAX_BACKUP_JSON + 64 * 1024;
    let mut want = FIRST_PEEK;
    loop {
        let bytes = session
            .read_prefix(path, want)
            .await
            .map_err(|e| e.to_string())?;
        match store::parse_backup_json_from_tar_prefix(&bytes) {
            Err(ArchiveError::PrefixTooShort { need, .. })
                if (bytes.len() as u64) == want && need > want && need <= limit =>
            {
                want = need;
            }
            Err(ArchiveError::PrefixTooShort { have, .. }) if (have as u64) < want => {
                return Err(format!(
                    "not a complete backup archive: the file ends after {have} bytes, inside its first member"
                ));
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

/// Reads `backup.json`'s slug from the first member of a remote archive.
pub(super) async fn peek_slug(session: &Session, path: &str) -> Result<String, String> {
    Ok(peek_backup_json(session, path).await?.slug)
}

pub(super) fn remote_join(dir: &str, file: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), file)
}

/// Home Assistant's local archive name: `"_".join(f"{name} {date:%Y-%m-%d %H.%M %S%f}.tar".split())`,
/// with the date as HA holds it (UTC).
pub fn ha_archive_file_name(name: &str, date: &str) -> Option<String> {
    // HA formats the date in the offset its string carries, so the wall-clock part is used as written.
    let civil_part = date
        .strip_suffix('Z')
        .or_else(|| {
            let cut = date.len().checked_sub(6)?;
            let (head, tail) = (date.get(..cut)?, date.get(cut..)?);
            (tail.starts_with(['+', '-']) && tail.as_bytes().get(3) == Some(&b':')).then_some(head)
        })
        .unwrap_or(date);
    let dt: jiff::civil::DateTime = civil_part.parse().ok()?;
    let micros = dt.subsec_nanosecond() / 1000;
    let stamp = format!("{}{:06}", dt.strftime("%Y-%m-%d %H.%M %S"), micros);
    let joined = format!("{name} {stamp}.tar");
    Some(joined.split_whitespace().collect::<Vec<_>>().join("_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_match_what_home_assistant_writes() {
        // From the recordings / NOTES.md.
        assert_eq!(
            ha_archive_file_name("hapull fixture", "2026-11-26T09:07:39.253410+00:00").as_deref(),
            Some("hapull_fixture_2026-11-26_09.07_39253410.tar")
        );
        assert_eq!(
            ha_archive_file_name(
                "Custom backup 2026.11.0",
                "2026-11-26T09:07:39.395316+00:00"
            )
            .as_deref(),
            Some("Custom_backup_2026.11.0_2026-11-26_09.07_39395316.tar")
        );
        assert_eq!(
            ha_archive_file_name("a  b", "2026-01-02T03:04:05+00:00").as_deref(),
            Some("a_b_2026-01-02_03.04_05000000.tar")
        );
        assert_eq!(ha_archive_file_name("x", "not a date"), None);
    }
}

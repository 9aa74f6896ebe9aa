//! The ledger: which Home Assistant backups hapull asked for, which of them reached the store, and
//! which were refused as damaged. It lives in the store's root (`.hapull-made.json`) so clean-up in
//! Home Assistant only ever touches hapull's own backups, and the catch-up knows what is still missing.
//!
//! It also holds the requests still *pending*: a backup asked for whose id is not known yet (a
//! Supervisor job not yet identified, or a cycle stopped between sending `backup/generate` and
//! recording the answer). They are written before the request is sent, so a backup hapull asked for is
//! never forgotten, whatever moment the process dies at; a later cycle turns each into a backup id.
//!
//! It must not decide anything: it records ids; the cycle decides what they mean.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the ledger in the store's root.
pub const LEDGER_FILE: &str = ".hapull-made.json";

/// How many ids each list keeps: ids of backups long gone are of no use.
const MAX_IDS: usize = 10_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Ledger {
    /// Backups hapull asked Home Assistant for.
    pub ids: Vec<String>,
    /// Those of them committed to the store at least once (retention may have pruned them since).
    #[serde(default)]
    pub committed: Vec<String>,
    /// Those whose archive failed verification (e.g. HA died while writing it and still lists it): not
    /// pulled again by the catch-up, and never deleted by hapull.
    #[serde(default)]
    pub rejected: Vec<String>,
    /// Requests whose backup id is not known yet, oldest first. Absent in ledgers written before this
    /// list existed (and omitted when empty), so older versions still read the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Pending>,
    /// The Home Assistant instance (`extra_metadata.instance_id`) of the last backup hapull identified
    /// for certain: only backups of this instance can be hapull's when one is found by its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// A backup hapull asked for and has not identified yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// When hapull asked (RFC 3339, UTC); also the entry's key.
    pub requested_at: String,
    /// The name hapull asked for; `None` where Home Assistant chooses it (legacy API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The agent asked to keep the local copy (`None`: legacy API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The Supervisor job id, once `backup/generate` answered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Which list of the ledger an id goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Made,
    Committed,
    Rejected,
}

impl Ledger {
    /// Reads the ledger of the store at `root`; a missing file is an empty ledger. A ledger that cannot
    /// be read or parsed is an error, never an empty ledger: forgetting which backups are hapull's would
    /// let the catch-up and the clean-up go wrong. Writers hold the store lock, so nothing changes the
    /// file between a read and the write that follows it.
    pub fn read(root: &Path) -> std::io::Result<Ledger> {
        let path = root.join(LEDGER_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
            Err(e) => return Err(e),
        };
        serde_json::from_slice::<Ledger>(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not hapull's list of its backups ({e}); hapull will not guess which backups are \
                     its own. Restore the file from a copy, or move it aside to start an empty list (hapull \
                     then deletes none of the backups in Home Assistant until it has made new ones)",
                    path.display()
                ),
            )
        })
    }

    pub fn made(&self, id: &str) -> bool {
        self.ids.iter().any(|x| x == id)
    }

    pub fn committed(&self, id: &str) -> bool {
        self.committed.iter().any(|x| x == id)
    }

    pub fn rejected(&self, id: &str) -> bool {
        self.rejected.iter().any(|x| x == id)
    }

    /// Records `id` in the given list of the ledger at `root`, durably.
    pub fn remember(root: &Path, entry: Entry, id: &str) -> std::io::Result<()> {
        let mut ledger = Ledger::read(root)?;
        let list = match entry {
            Entry::Made => &mut ledger.ids,
            Entry::Committed => &mut ledger.committed,
            Entry::Rejected => &mut ledger.rejected,
        };
        if list.iter().any(|x| x == id) {
            return Ok(());
        }
        list.push(id.to_string());
        if list.len() > MAX_IDS {
            list.drain(..list.len() - MAX_IDS);
        }
        ledger.write(root)
    }

    /// Records the instance hapull's backups come from (written only when it changed).
    pub fn set_instance(root: &Path, instance_id: &str) -> std::io::Result<()> {
        let mut ledger = Ledger::read(root)?;
        if ledger.instance_id.as_deref() == Some(instance_id) {
            return Ok(());
        }
        ledger.instance_id = Some(instance_id.to_string());
        ledger.write(root)
    }

    /// Adds a pending request, durably, before it is sent.
    pub fn add_pending(root: &Path, pending: Pending) -> std::io::Result<()> {
        let mut ledger = Ledger::read(root)?;
        ledger
            .pending
            .retain(|p| p.requested_at != pending.requested_at);
        ledger.pending.push(pending);
        if ledger.pending.len() > MAX_IDS {
            ledger.pending.drain(..ledger.pending.len() - MAX_IDS);
        }
        ledger.write(root)
    }

    /// Notes the Supervisor job id of the pending request made at `requested_at`.
    pub fn set_pending_job(root: &Path, requested_at: &str, job_id: &str) -> std::io::Result<()> {
        let mut ledger = Ledger::read(root)?;
        for p in ledger
            .pending
            .iter_mut()
            .filter(|p| p.requested_at == requested_at)
        {
            p.job_id = Some(job_id.to_string());
        }
        ledger.write(root)
    }

    /// Settles the pending request made at `requested_at`, in one durable write: with `Some(id)` the
    /// backup id joins the made list as the entry leaves; with `None` the entry is dropped (nothing was
    /// made, or hapull gave up on it).
    pub fn settle_pending(
        root: &Path,
        requested_at: &str,
        backup_id: Option<&str>,
    ) -> std::io::Result<()> {
        let mut ledger = Ledger::read(root)?;
        let before = ledger.pending.len();
        ledger.pending.retain(|p| p.requested_at != requested_at);
        let unchanged = ledger.pending.len() == before;
        match backup_id {
            Some(id) if !ledger.made(id) => {
                ledger.ids.push(id.to_string());
                if ledger.ids.len() > MAX_IDS {
                    ledger.ids.drain(..ledger.ids.len() - MAX_IDS);
                }
            }
            _ if unchanged => return Ok(()),
            _ => {}
        }
        ledger.write(root)
    }

    fn write(&self, root: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(self)?;
        crate::private_fs::create_dir_all(root)?;
        crate::private_fs::write_atomic(&root.join(LEDGER_FILE), &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_garbled_ledger_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEDGER_FILE), b"{\"ids\": [\"a\"").unwrap();
        let err = Ledger::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(LEDGER_FILE) && err.contains("move it aside"),
            "{err}"
        );
        // And nothing is written over it.
        assert!(Ledger::remember(dir.path(), Entry::Made, "b").is_err());
        assert_eq!(
            std::fs::read(dir.path().join(LEDGER_FILE)).unwrap(),
            b"{\"ids\": [\"a\""
        );
    }

    #[test]
    fn a_pending_request_becomes_a_made_id_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pending {
            requested_at: "2026-12-01T17:40:00Z".into(),
            name: Some("hapull 2026-12-01 17.40".into()),
            agent: Some("hassio.local".into()),
            job_id: None,
        };
        Ledger::add_pending(dir.path(), p.clone()).unwrap();
        Ledger::set_pending_job(dir.path(), &p.requested_at, "0123abcd").unwrap();
        let l = Ledger::read(dir.path()).unwrap();
        assert_eq!(l.pending.len(), 1);
        assert_eq!(l.pending[0].job_id.as_deref(), Some("0123abcd"));
        assert!(l.ids.is_empty());
        Ledger::settle_pending(dir.path(), &p.requested_at, Some("5ec0a002")).unwrap();
        let l = Ledger::read(dir.path()).unwrap();
        assert!(l.pending.is_empty() && l.made("5ec0a002"));
        // Given up: dropped, nothing recorded as made.
        Ledger::add_pending(dir.path(), p.clone()).unwrap();
        Ledger::settle_pending(dir.path(), &p.requested_at, None).unwrap();
        let l = Ledger::read(dir.path()).unwrap();
        assert!(l.pending.is_empty() && l.ids == vec!["5ec0a002"]);
    }

    #[test]
    fn ledgers_with_and_without_pending_entries_read_both_ways() {
        // A ledger written before pending entries existed reads as having none.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LEDGER_FILE),
            br#"{"ids":["a"],"committed":["a"]}"#,
        )
        .unwrap();
        let l = Ledger::read(dir.path()).unwrap();
        assert!(l.pending.is_empty() && l.made("a"));
        // And one with pending entries keeps the fields an older version knows.
        #[derive(Deserialize)]
        struct Old {
            ids: Vec<String>,
        }
        Ledger::add_pending(
            dir.path(),
            Pending {
                requested_at: "2026-12-01T17:40:00Z".into(),
                name: None,
                agent: None,
                job_id: None,
            },
        )
        .unwrap();
        let text = std::fs::read(dir.path().join(LEDGER_FILE)).unwrap();
        let old: Old = serde_json::from_slice(&text).unwrap();
        assert_eq!(old.ids, vec!["a"]);
        // No pending entries: the list is not written at all.
        Ledger::settle_pending(dir.path(), "2026-12-01T17:40:00Z", None).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LEDGER_FILE)).unwrap();
        assert!(!text.contains("pending"), "{text}");
    }

    #[test]
    fn remembers_each_id_once_per_list() {
        let dir = tempfile::tempdir().unwrap();
        Ledger::remember(dir.path(), Entry::Made, "a").unwrap();
        Ledger::remember(dir.path(), Entry::Made, "a").unwrap();
        Ledger::remember(dir.path(), Entry::Committed, "a").unwrap();
        let l = Ledger::read(dir.path()).unwrap();
        assert_eq!(l.ids, vec!["a"]);
        assert!(l.made("a") && l.committed("a") && !l.rejected("a"));
        assert!(!l.made("b"));
    }
}

//! The ledger: which Home Assistant backups hapull asked for, which of them reached the store, and
//! which were refused as damaged. It lives in the store's root (`.hapull-made.json`) so clean-up in
//! Home Assistant only ever touches hapull's own backups, and the catch-up knows what is still missing.
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

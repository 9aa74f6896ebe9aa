//! The `.partial.meta` sidecar of an HTTP download: what it records (path, length, validator), and
//! whether the `.partial` beside it is worth resuming. It never holds the token.

use std::path::Path;

use super::TransferError;
use crate::transfer::{disk, pull};

/// What the sidecar says about the download a `.partial` holds the start of. Only a resumable one
/// (known length, ranges offered, a validator) is worth keeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) path: String,
    pub(super) size: u64,
    pub(super) validator: String,
}

impl Meta {
    pub(super) fn text(&self) -> String {
        format!(
            "hapull-partial http v1\nsize {}\nvalidator {}\nremote {}\n",
            self.size, self.validator, self.path
        )
    }

    pub(super) fn parse(text: &str) -> Option<Meta> {
        let mut lines = text.lines();
        if lines.next()? != "hapull-partial http v1" {
            return None;
        }
        let size = lines.next()?.strip_prefix("size ")?.parse().ok()?;
        let validator = lines.next()?.strip_prefix("validator ")?.to_string();
        let path = lines.next()?.strip_prefix("remote ")?.to_string();
        Some(Meta {
            path,
            size,
            validator,
        })
    }
}

pub(super) fn remove_if_exists(p: &Path) -> Result<(), TransferError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TransferError::local("remove", p, e)),
    }
}

/// The prefix worth resuming from: what the sidecar describes for this same path, if anything.
pub(super) fn resumable(paths: &pull::LocalPaths, path: &str) -> Option<(Meta, u64)> {
    let meta = Meta::parse(&std::fs::read_to_string(&paths.meta).ok()?)?;
    let len = disk::resume_offset(std::fs::metadata(&paths.partial).ok()?.len());
    (meta.path == path && len > 0 && len < meta.size).then_some((meta, len))
}

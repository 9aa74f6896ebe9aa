//! Rules for turning names that come from Home Assistant (backup ids, display names) into local or
//! remote file names. Everything Home Assistant sends is untrusted: these functions are the one place
//! that decides what may become part of a path.

use jiff::Timestamp;
use thiserror::Error;

/// Longest accepted component, in bytes. File systems allow 255; the rest is room for the date, the
/// display name and the extension the store adds.
pub const MAX_COMPONENT_BYTES: usize = 200;

/// Longest display-name part of a store file name, in bytes.
const MAX_SLUG_BYTES: usize = 64;

/// Longest file name most file systems accept.
const MAX_FILE_NAME_BYTES: usize = 255;

/// Why a name from Home Assistant cannot be used as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("the name is empty; Home Assistant should never send an empty backup id")]
    Empty,
    #[error("the name \"{}\" refers to a directory (\".\" or \"..\"); refusing it as a file name", .0.escape_debug())]
    DirectoryReference(String),
    #[error(
        "the name {shown} contains {what}, which is not allowed in a file name; refusing it \
         rather than writing outside the intended directory"
    )]
    Forbidden { shown: String, what: &'static str },
    #[error("the name is {len} bytes long, over the {max}-byte limit for a file name component")]
    TooLong { len: usize, max: usize },
}

/// Accepts `s` as a single path component or says why not: rejects empty, `.`, `..`, `/`, `\`, NUL,
/// control characters and names over [`MAX_COMPONENT_BYTES`]. Returns the name unchanged.
pub fn safe_component(s: &str) -> Result<String, NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s == "." || s == ".." {
        return Err(NameError::DirectoryReference(s.to_owned()));
    }
    if s.len() > MAX_COMPONENT_BYTES {
        return Err(NameError::TooLong {
            len: s.len(),
            max: MAX_COMPONENT_BYTES,
        });
    }
    for c in s.chars() {
        let what = match c {
            '/' => "a slash",
            '\\' => "a backslash",
            '\0' => "a NUL byte",
            c if c.is_control() => "a control character",
            _ => continue,
        };
        return Err(NameError::Forbidden {
            shown: super::tar_stream::shown(s),
            what,
        });
    }
    Ok(s.to_owned())
}

/// Maps a display name (e.g. `"Automatic backup 2026.11.0"`) to a short slug for a file name
/// (`"Automatic-backup-2026-11-0"`): ASCII letters and digits are kept, every other run of characters
/// becomes one `-`, the result is at most 64 bytes, and never empty (`"backup"`). Underscores are
/// replaced too, because the store uses them to separate the parts of a file name.
pub fn sanitize_for_filename(name: &str) -> String {
    slug(name, MAX_SLUG_BYTES)
}

fn slug(name: &str, max: usize) -> String {
    let mut out = String::with_capacity(name.len().min(max));
    let mut pending_dash = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if pending_dash && !out.is_empty() {
                if out.len() + 1 >= max {
                    break;
                }
                out.push('-');
            }
            pending_dash = false;
            if out.len() >= max {
                break;
            }
            out.push(c);
        } else {
            pending_dash = true;
        }
    }
    if out.is_empty() {
        out.push_str("backup");
    }
    out
}

/// The file name stem for an archive in the store: `<date>_<name>_<backup_id>`, with the date in UTC
/// as `YYYY-MM-DDTHH-MM-SSZ` so names sort by time and contain no `:`. The display-name part is
/// shortened so that `<stem>.json` fits in 255 bytes.
pub(crate) fn archive_stem(
    date: Timestamp,
    name: &str,
    backup_id: &str,
) -> Result<String, NameError> {
    let id = safe_component(backup_id)?;
    let date = date.strftime("%Y-%m-%dT%H-%M-%SZ").to_string();
    let fixed = date.len() + 2 + id.len() + ".json".len();
    let room = MAX_FILE_NAME_BYTES
        .saturating_sub(fixed)
        .min(MAX_SLUG_BYTES);
    let name = slug(name, room.max(1));
    let stem = format!("{date}_{name}_{id}");
    if stem.len() + ".json".len() > MAX_FILE_NAME_BYTES {
        return Err(NameError::TooLong {
            len: stem.len(),
            max: MAX_FILE_NAME_BYTES - ".json".len(),
        });
    }
    Ok(stem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    #[test]
    fn rejects_what_could_escape_or_confuse() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "..\\x",
            "a\0b",
            "a\nb",
            "tab\there",
            "del\u{7f}",
        ] {
            assert!(safe_component(bad).is_err(), "{bad:?} accepted");
        }
        assert!(safe_component(&"a".repeat(201)).is_err());
        for good in [
            "dcc25121",
            "Core 2024.3.3",
            "...",
            ".hidden",
            "ünïcode",
            &"a".repeat(200),
        ] {
            assert_eq!(safe_component(good).as_deref(), Ok(good));
        }
    }

    #[test]
    fn slugs_read_well() {
        assert_eq!(
            sanitize_for_filename("Automatic backup 2026.11.0"),
            "Automatic-backup-2026-11-0"
        );
        assert_eq!(sanitize_for_filename("hapull fixture"), "hapull-fixture");
        assert_eq!(sanitize_for_filename("../../etc/passwd"), "etc-passwd");
        assert_eq!(sanitize_for_filename("___"), "backup");
        assert_eq!(sanitize_for_filename(""), "backup");
        assert_eq!(sanitize_for_filename(&"x".repeat(500)).len(), 64);
    }

    #[test]
    fn stem_layout() {
        let t: Timestamp = "2026-11-26T09:07:39.253410+00:00".parse().unwrap();
        assert_eq!(
            archive_stem(t, "hapull fixture", "dcc25121").unwrap(),
            "2026-11-26T09-07-39Z_hapull-fixture_dcc25121"
        );
        let long_id = "i".repeat(200);
        let stem = archive_stem(t, &"n".repeat(300), &long_id).unwrap();
        assert!(stem.len() + 5 <= 255, "{}", stem.len());
        assert!(stem.ends_with(&long_id));
    }

    fn stays_inside(component: &str) -> bool {
        let base = Path::new("/store/base");
        let joined = base.join(component);
        let comps: Vec<_> = joined.components().collect();
        joined.starts_with(base)
            && comps.len() == base.components().count() + 1
            && matches!(comps.last(), Some(Component::Normal(c)) if *c == std::ffi::OsStr::new(component))
    }

    proptest! {
        #[test]
        fn accepted_components_never_escape(s in "\\PC{0,8}|[./\\\\a\\x00\\n]{0,6}|.{0,40}") {
            if let Ok(ok) = safe_component(&s) {
                prop_assert!(stays_inside(&ok), "{ok:?} escapes");
            }
        }

        #[test]
        fn slugs_are_always_safe(s in ".{0,300}") {
            let slug = sanitize_for_filename(&s);
            prop_assert!(safe_component(&slug).is_ok());
            prop_assert!(stays_inside(&slug));
            prop_assert!(slug.len() <= 64 && !slug.is_empty());
            prop_assert!(slug.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            prop_assert!(!slug.starts_with('-') && !slug.ends_with('-'));
        }

        #[test]
        fn stems_are_single_safe_components(name in ".{0,300}", id in "[^/\\\\\\x00-\\x1f]{1,200}", secs in 0i64..253_402_300_799) {
            let t = Timestamp::from_second(secs).unwrap();
            if let Ok(stem) = archive_stem(t, &name, &id) {
                prop_assert!(stays_inside(&stem));
                let manifest = format!("{stem}.json");
                prop_assert!(stays_inside(&manifest));
                prop_assert!(stem.len() + 5 <= 255);
            }
        }
    }
}

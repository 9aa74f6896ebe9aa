//! The local archive store, exercised the way hapull uses it: real archives built like Home
//! Assistant builds them (an uncompressed tar holding `./backup.json` and a gzipped inner tar), real
//! files on disk, and the real `sha256sum -c` a user would run.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use aws_lc_rs::digest;
use flate2::Compression;
use flate2::write::GzEncoder;
use hapull::store::{
    ArchiveError, CommitInfo, Manifest, ProblemKind, RetentionPolicy, Store, StoreError,
    StoredArchive, TarError, Verify, parse_backup_json_from_tar_prefix, plan, verify_file,
};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Building archives

/// Appends a regular file with the name written verbatim (the `tar` crate would drop a leading
/// `./`, which Home Assistant writes).
fn raw_member(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_764_148_059);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn inner_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_cksum();
    b.append_data(&mut dir, "data/.storage", std::io::empty())
        .unwrap();
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn inner_gz() -> Vec<u8> {
    let config: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    gzip(&inner_tar(&[
        ("data/configuration.yaml", b"homeassistant:\n  name: Home\n"),
        ("data/.storage/core.config_entries", &config),
        ("data/home-assistant_v2.db", &[0u8; 70_000]),
    ]))
}

fn backup_json(slug: &str, name: &str, date: &str, protected: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "compressed": true,
        "date": date,
        "extra": {"instance_id": "2eff7039", "with_automatic_settings": false},
        "homeassistant": {"exclude_database": false, "version": "2026.11.0"},
        "name": name,
        "protected": protected,
        "slug": slug,
        "type": "partial",
        "version": 2,
        "some_future_field": [1, 2, 3],
    }))
    .unwrap()
}

const DATE: &str = "2026-11-26T09:07:39.253410+00:00";

fn archive_with(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        raw_member(&mut b, name, data);
    }
    b.into_inner().unwrap()
}

fn ha_archive(slug: &str, name: &str, date: &str) -> Vec<u8> {
    archive_with(&[
        ("./backup.json", backup_json(slug, name, date, false)),
        ("./homeassistant.tar.gz", inner_gz()),
    ])
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

fn check(
    bytes: &[u8],
    slug: &str,
    mode: Verify,
) -> Result<hapull::store::ArchiveSummary, ArchiveError> {
    let dir = tempfile::tempdir().unwrap();
    verify_file(&write(dir.path(), "a.tar", bytes), slug, mode)
}

// ---------------------------------------------------------------------------------------------
// Archive verification

#[test]
fn good_archive_passes_both_modes_and_reports_its_hash() {
    let bytes = ha_archive("dcc25121", "hapull fixture", DATE);
    let full = check(&bytes, "dcc25121", Verify::Full).unwrap();
    assert_eq!(full.backup.slug, "dcc25121");
    assert_eq!(full.backup.name, "hapull fixture");
    assert_eq!(full.backup.ha_version(), Some("2026.11.0"));
    assert_eq!(full.size, bytes.len() as u64);
    assert_eq!(full.sha256, sha256(&bytes));
    let names: Vec<_> = full.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["./backup.json", "./homeassistant.tar.gz"]);
    assert_eq!(full.deep_checked, ["./homeassistant.tar.gz"]);

    let structure = check(&bytes, "dcc25121", Verify::Structure).unwrap();
    assert_eq!(structure.sha256, sha256(&bytes));
    assert!(structure.deep_checked.is_empty());
}

#[test]
fn names_without_dot_slash_and_supervisor_members_are_accepted() {
    let addon = gzip(&inner_tar(&[("options.json", b"{}")]));
    let folder = inner_tar(&[("share/readme.txt", b"hi")]);
    let bytes = archive_with(&[
        ("backup.json", backup_json("9f2e1c4a", "Full", DATE, false)),
        ("homeassistant.tar.gz", inner_gz()),
        ("./core_mosquitto.tar.gz", addon),
        ("./share.tar", folder),
    ]);
    let s = check(&bytes, "9f2e1c4a", Verify::Full).unwrap();
    assert_eq!(s.deep_checked.len(), 3);
}

#[test]
fn truncated_archive_fails_in_both_modes() {
    let bytes = ha_archive("dcc25121", "x", DATE);
    // Inside backup.json, inside the inner archive, before either end-of-archive block, between
    // them, and one byte short.
    for cut in [
        700,
        bytes.len() / 2,
        bytes.len() - 1024,
        bytes.len() - 512,
        bytes.len() - 1,
    ] {
        for mode in [Verify::Full, Verify::Structure] {
            match check(&bytes[..cut], "dcc25121", mode) {
                Err(ArchiveError::Outer(
                    TarError::Truncated { .. } | TarError::MissingEnd { .. },
                )) => {}
                other => panic!("cut at {cut} in {mode:?}: {other:?}"),
            }
        }
    }
    let err = check(&bytes[..bytes.len() / 2], "dcc25121", Verify::Full).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn wrong_slug_is_refused_naming_both_ids() {
    let bytes = ha_archive("dcc25121", "x", DATE);
    let err = check(&bytes, "aaaa1111", Verify::Structure).unwrap_err();
    assert!(matches!(err, ArchiveError::SlugMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("dcc25121") && msg.contains("aaaa1111"),
        "{msg}"
    );
}

#[test]
fn backup_json_must_come_first() {
    let bytes = archive_with(&[
        ("./homeassistant.tar.gz", inner_gz()),
        ("./backup.json", backup_json("dcc25121", "x", DATE, false)),
    ]);
    let err = check(&bytes, "dcc25121", Verify::Structure).unwrap_err();
    assert!(
        matches!(err, ArchiveError::BackupJsonNotFirst { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("homeassistant.tar.gz"));
}

#[test]
fn corrupt_gzip_fails_full_but_passes_structure() {
    let mut inner = inner_gz();
    let mid = inner.len() / 2;
    for b in &mut inner[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let bytes = archive_with(&[
        ("./backup.json", backup_json("dcc25121", "x", DATE, false)),
        ("./homeassistant.tar.gz", inner),
    ]);
    let err = check(&bytes, "dcc25121", Verify::Full).unwrap_err();
    assert!(matches!(err, ArchiveError::Inner { .. }), "{err:?}");
    assert!(err.to_string().contains("homeassistant.tar.gz"), "{err}");
    check(&bytes, "dcc25121", Verify::Structure).unwrap();
}

#[test]
fn inner_tar_cut_short_inside_valid_gzip_fails_full() {
    let tar = inner_tar(&[("data/big", &[1u8; 5000])]);
    let inner = gzip(&tar[..3000]);
    let bytes = archive_with(&[
        ("./backup.json", backup_json("dcc25121", "x", DATE, false)),
        ("./homeassistant.tar.gz", inner),
    ]);
    let err = check(&bytes, "dcc25121", Verify::Full).unwrap_err();
    assert!(matches!(err, ArchiveError::Inner { .. }), "{err:?}");
}

#[test]
fn oversized_backup_json_is_refused() {
    let mut big = backup_json("dcc25121", "x", DATE, false);
    big.pop();
    big.extend_from_slice(br#","pad":""#);
    big.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    big.extend_from_slice(b"\"}");
    let bytes = archive_with(&[
        ("./backup.json", big),
        ("./homeassistant.tar.gz", inner_gz()),
    ]);
    let err = check(&bytes, "dcc25121", Verify::Full).unwrap_err();
    assert!(
        matches!(err, ArchiveError::BackupJsonTooLarge { .. }),
        "{err:?}"
    );
}

#[test]
fn invalid_backup_json_is_refused() {
    let bytes = archive_with(&[
        ("./backup.json", b"{\"slug\": \"dcc25121\"".to_vec()),
        ("./homeassistant.tar.gz", inner_gz()),
    ]);
    let err = check(&bytes, "dcc25121", Verify::Full).unwrap_err();
    assert!(matches!(err, ArchiveError::BackupJsonInvalid(_)), "{err:?}");
}

#[test]
fn hostile_member_names_are_only_read_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    fs::create_dir_all(&nested).unwrap();
    let evil = inner_tar(&[]);
    let bytes = archive_with(&[
        ("./backup.json", backup_json("dcc25121", "x", DATE, false)),
        ("./homeassistant.tar.gz", inner_gz()),
        ("../../../../tmp/hapull-escape.tar", evil.clone()),
        ("/etc/hapull-escape.tar", evil),
        ("a/../../x\u{1b}[31m", b"data".to_vec()),
    ]);
    let archive = write(&nested, "a.tar", &bytes);
    let s = verify_file(&archive, "dcc25121", Verify::Full).unwrap();
    assert_eq!(s.members.len(), 5);
    assert!(!Path::new("/tmp/hapull-escape.tar").exists());
    assert!(!Path::new("/etc/hapull-escape.tar").exists());
    let left: Vec<_> = fs::read_dir(&nested).unwrap().collect();
    assert_eq!(left.len(), 1, "verification created files");
}

#[test]
fn member_declaring_a_huge_size_is_truncation_not_an_allocation() {
    let mut bytes = ha_archive("dcc25121", "x", DATE);
    // Rewrite the second header's size field to 8 GiB (base-256), then fix its checksum.
    let json_len = backup_json("dcc25121", "x", DATE, false).len();
    let second = 512 + json_len.div_ceil(512) * 512;
    let h = &mut bytes[second..second + 512];
    h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    for mode in [Verify::Full, Verify::Structure] {
        let err = check(&bytes, "dcc25121", mode).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}

#[test]
fn protected_archive_inner_is_not_decompressed() {
    // An encrypted inner archive is not gzip; in Full mode it must not be read as such.
    let encrypted: Vec<u8> = (0..50_000u32).map(|i| (i * 7919 % 256) as u8).collect();
    let bytes = archive_with(&[
        ("./backup.json", backup_json("dcc25121", "x", DATE, true)),
        ("./homeassistant.tar.gz", encrypted),
    ]);
    let s = check(&bytes, "dcc25121", Verify::Full).unwrap();
    assert!(s.backup.protected);
    assert!(s.deep_checked.is_empty());
}

#[test]
fn missing_homeassistant_member_is_incomplete() {
    let bytes = archive_with(&[("./backup.json", backup_json("dcc25121", "x", DATE, false))]);
    let err = check(&bytes, "dcc25121", Verify::Structure).unwrap_err();
    assert!(matches!(err, ArchiveError::MissingMember { .. }), "{err:?}");
}

#[test]
fn backup_json_from_a_prefix() {
    let bytes = ha_archive("dcc25121", "hapull fixture", DATE);
    let b = parse_backup_json_from_tar_prefix(&bytes[..4096]).unwrap();
    assert_eq!(b.slug, "dcc25121");
    assert_eq!(b.date, DATE);
    assert!(!b.protected);
    for short in [0, 100, 600] {
        let err = parse_backup_json_from_tar_prefix(&bytes[..short]).unwrap_err();
        assert!(
            matches!(err, ArchiveError::PrefixTooShort { .. }),
            "{short}: {err:?}"
        );
    }
    let not_first = archive_with(&[("./homeassistant.tar.gz", inner_gz())]);
    assert!(matches!(
        parse_backup_json_from_tar_prefix(&not_first[..2048]),
        Err(ArchiveError::BackupJsonNotFirst { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The store

struct Pulled {
    path: PathBuf,
    info: CommitInfo,
}

fn pulled(dir: &Path, slug: &str, name: &str, date: &str, pulled_at: &str) -> Pulled {
    let bytes = ha_archive(slug, name, date);
    let path = write(dir, &format!("{slug}.tar"), &bytes);
    Pulled {
        path,
        info: CommitInfo {
            backup_id: slug.to_owned(),
            size: bytes.len() as u64,
            sha256: sha256(&bytes),
            pulled_at: pulled_at.parse().unwrap(),
            source_host: "homeassistant.local".to_owned(),
            source_path: format!("/var/lib/hass/backups/{slug}.tar"),
            verify: Verify::Full,
            password: None,
            verified: None,
        },
    }
}

fn sha256sum_check(store: &Path) {
    let out = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(store)
        .output()
        .expect("sha256sum (coreutils) is needed for this test");
    assert!(
        out.status.success(),
        "sha256sum -c failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn commit_list_verify_remove_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("archives");
    let store = Store::open(&root).unwrap();
    let incoming = store.incoming_path("dcc25121").unwrap();
    let p = pulled(
        incoming.parent().unwrap(),
        "dcc25121",
        "hapull fixture",
        DATE,
        "2026-11-26T09:08:02Z",
    );

    let stored = store.commit(&p.path, &p.info).unwrap();
    assert!(!p.path.exists(), "the pulled file is moved, not copied");
    assert_eq!(
        stored.relative_path,
        "2026/11/2026-11-26T09-07-39Z_hapull-fixture_dcc25121.tar"
    );
    assert_eq!(stored.path, root.join(&stored.relative_path));
    assert_eq!(sha256(&fs::read(&stored.path).unwrap()), p.info.sha256);

    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(root.join("2026/11/2026-11-26T09-07-39Z_hapull-fixture_dcc25121.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["backup_id"], "dcc25121");
    assert_eq!(manifest["name"], "hapull fixture");
    assert_eq!(manifest["ha_date"], "2026-11-26T09:07:39.25341Z");
    assert_eq!(manifest["ha_version"], "2026.11.0");
    assert_eq!(manifest["size"], p.info.size);
    assert_eq!(manifest["protected"], false);
    assert_eq!(manifest["pulled_at"], "2026-11-26T09:08:02Z");
    assert_eq!(manifest["source_host"], "homeassistant.local");
    assert_eq!(
        manifest["source_path"],
        "/var/lib/hass/backups/dcc25121.tar"
    );
    assert_eq!(manifest["hapull_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);

    sha256sum_check(&root);

    // A second store handle sees the same thing.
    let again = Store::open(&root).unwrap();
    assert_eq!(again.list().unwrap(), vec![stored.clone()]);
    assert_eq!(again.find("dcc25121").unwrap(), Some(stored.clone()));
    assert_eq!(again.find("other").unwrap(), None);

    let report = store.verify(&stored).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(
        store
            .verify_with(&stored, Some(Verify::Full), None)
            .unwrap()
            .is_ok()
    );

    store.remove(&stored).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!stored.path.exists() && !stored.manifest_path.exists());
    assert_eq!(fs::read_to_string(root.join("SHA256SUMS")).unwrap(), "");
    assert!(
        !root.join("2026").exists(),
        "empty year/month folders are removed"
    );
}

#[test]
fn a_flipped_byte_fails_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    let p = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T09:08:02Z");
    let stored = store.commit(&p.path, &p.info).unwrap();

    let mut bytes = fs::read(&stored.path).unwrap();
    let i = bytes.len() / 3;
    bytes[i] ^= 0x01;
    fs::write(&stored.path, &bytes).unwrap();

    let report = store.verify(&stored).unwrap();
    assert!(!report.is_ok());
    assert_ne!(report.actual_sha256, report.expected_sha256);
    assert!(
        report.problems.iter().any(|p| p.contains("SHA-256")),
        "{report:?}"
    );
    let deep = store
        .verify_with(&stored, Some(Verify::Full), None)
        .unwrap();
    assert!(!deep.is_ok());
}

#[test]
fn commit_refuses_a_file_that_differs_from_what_the_transfer_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();

    let mut p = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T09:08:02Z");
    p.info.sha256[0] ^= 1;
    let err = store.commit(&p.path, &p.info).unwrap_err();
    assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("pull it again"), "{err}");

    let mut p = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T09:08:02Z");
    p.info.size += 1;
    assert!(matches!(
        store.commit(&p.path, &p.info).unwrap_err(),
        StoreError::SizeMismatch { .. }
    ));

    let mut p = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T09:08:02Z");
    p.info.backup_id = "b0b0b0b0".to_owned();
    assert!(matches!(
        store.commit(&p.path, &p.info).unwrap_err(),
        StoreError::Archive {
            source: ArchiveError::SlugMismatch { .. },
            ..
        }
    ));

    let mut p = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T09:08:02Z");
    p.info.backup_id = "../dcc25121".to_owned();
    assert!(matches!(
        store.commit(&p.path, &p.info).unwrap_err(),
        StoreError::Name(_)
    ));

    // Nothing was stored, the pulled file is still there for inspection.
    assert!(p.path.exists());
    assert!(store.scan().unwrap().archives.is_empty());
    assert_eq!(
        fs::read_to_string(store.root().join("SHA256SUMS")).unwrap(),
        ""
    );
}

#[test]
fn committing_the_same_archive_twice_is_harmless_and_a_different_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    let first = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T09:08:02Z");
    let stored = store.commit(&first.path, &first.info).unwrap();

    let again = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T10:00:00Z");
    assert_eq!(store.commit(&again.path, &again.info).unwrap(), stored);
    assert!(!again.path.exists());
    // Committing the stored file itself does not delete it.
    assert_eq!(store.commit(&stored.path, &first.info).unwrap(), stored);
    assert!(stored.path.exists());

    let other = pulled(
        tmp.path(),
        "dcc25121",
        "a different name",
        DATE,
        "2026-11-26T10:00:00Z",
    );
    let err = store.commit(&other.path, &other.info).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains(&stored.manifest.sha256));
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.verify(&stored).unwrap().is_ok());
}

#[test]
fn open_cleans_up_after_an_interrupted_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let store = Store::open(&root).unwrap();
    let a = pulled(tmp.path(), "aaaa0001", "a", DATE, "2026-11-26T09:08:02Z");
    let a = store.commit(&a.path, &a.info).unwrap();
    let b = pulled(
        tmp.path(),
        "bbbb0002",
        "b",
        "2026-11-27T09:00:00+00:00",
        "2026-11-27T09:08:02Z",
    );
    let b = store.commit(&b.path, &b.info).unwrap();

    // A crash after the manifest was written but before the archive was placed, a crash in the
    // middle of writing a temp file, and a crash before SHA256SUMS was rewritten.
    fs::remove_file(&b.path).unwrap();
    let month = a.path.parent().unwrap();
    fs::write(month.join(".hapull-tmp-half-written.tar.1234"), b"partial").unwrap();
    fs::write(root.join(".hapull-tmp-SHA256SUMS.99"), b"junk").unwrap();
    fs::write(root.join("SHA256SUMS"), b"").unwrap();

    let store = Store::open(&root).unwrap();
    assert_eq!(store.list().unwrap(), vec![a.clone()]);
    assert!(!b.manifest_path.exists(), "orphan manifest removed");
    let leftovers: Vec<String> = fs::read_dir(month)
        .unwrap()
        .chain(fs::read_dir(&root).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".hapull-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let sums = fs::read_to_string(root.join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        format!("{}  {}\n", a.manifest.sha256, a.relative_path)
    );
    sha256sum_check(&root);
}

#[test]
fn problems_are_reported_and_never_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let store = Store::open(&root).unwrap();
    let a = pulled(tmp.path(), "aaaa0001", "a", DATE, "2026-11-26T09:08:02Z");
    let a = store.commit(&a.path, &a.info).unwrap();
    let month = a.path.parent().unwrap().to_owned();
    fs::write(
        month.join("2026-11-01T00-00-00Z_x_broken.json"),
        b"{ not json",
    )
    .unwrap();
    fs::write(month.join("2026-11-01T00-00-00Z_x_broken.tar"), b"data").unwrap();
    fs::write(month.join("2026-11-02T00-00-00Z_x_lonely.tar"), b"data").unwrap();

    let store = Store::open(&root).unwrap();
    let listing = store.scan().unwrap();
    assert_eq!(listing.archives, vec![a]);
    assert_eq!(listing.problems.len(), 2, "{:?}", listing.problems);
    assert!(
        listing
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::UnreadableManifest
                && p.path.ends_with("2026-11-01T00-00-00Z_x_broken.json"))
    );
    assert!(
        listing
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::MissingManifest
                && p.path.ends_with("2026-11-02T00-00-00Z_x_lonely.tar"))
    );
    assert!(month.join("2026-11-02T00-00-00Z_x_lonely.tar").exists());
    assert!(month.join("2026-11-01T00-00-00Z_x_broken.json").exists());
    assert_eq!(store.list().unwrap().len(), 1);
    sha256sum_check(&root);
}

#[test]
fn prune_removes_what_the_plan_says_and_sums_stay_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let store = Store::open(&root).unwrap();
    // Five backups on five days, pulled at 03:00 UTC.
    for day in 1..=5 {
        let id = format!("day0000{day}");
        let date = format!("2026-10-0{day}T02:55:00+00:00");
        let p = pulled(
            tmp.path(),
            &id,
            "nightly",
            &date,
            &format!("2026-10-0{day}T03:00:00Z"),
        );
        store.commit(&p.path, &p.info).unwrap();
    }
    sha256sum_check(&root);
    let policy = RetentionPolicy {
        keep_last: 2,
        ..Default::default()
    };

    let dry = store.prune(&policy, &TimeZone::UTC, true).unwrap();
    assert_eq!(dry.iter().filter(|d| !d.keep).count(), 3);
    assert_eq!(store.list().unwrap().len(), 5, "a dry run deletes nothing");

    let done = store.prune(&policy, &TimeZone::UTC, false).unwrap();
    let kept: Vec<_> = done
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.archive.manifest.backup_id.clone())
        .collect();
    assert_eq!(kept, ["day00005", "day00004"]);
    let left: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.manifest.backup_id)
        .collect();
    assert_eq!(left, ["day00004", "day00005"]);
    for d in done.iter().filter(|d| !d.keep) {
        assert!(!d.archive.path.exists() && !d.archive.manifest_path.exists());
    }
    assert_eq!(
        fs::read_to_string(root.join("SHA256SUMS"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    sha256sum_check(&root);
}

// ---------------------------------------------------------------------------------------------
// Retention

fn fake(i: usize, pulled_at: Timestamp) -> StoredArchive {
    let id = format!("id{i:05}");
    let rel = format!("x/{id}.tar");
    StoredArchive {
        path: PathBuf::from(&rel),
        manifest_path: PathBuf::from(format!("x/{id}.json")),
        relative_path: rel,
        manifest: Manifest {
            format: 1,
            backup_id: id.clone(),
            name: "n".to_owned(),
            ha_date: pulled_at,
            ha_version: None,
            size: 1,
            sha256: "0".repeat(64),
            protected: false,
            pulled_at,
            source_host: "h".to_owned(),
            source_path: "p".to_owned(),
            hapull_version: "0".to_owned(),
            archive: format!("{id}.tar"),
            verified: None,
            securetar: None,
        },
    }
}

fn kept_times(archives: &[StoredArchive], policy: RetentionPolicy, tz: &TimeZone) -> Vec<String> {
    plan(archives, &policy, tz)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| {
            d.archive
                .manifest
                .pulled_at
                .to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .collect()
}

#[test]
fn restic_example_twelve_sundays_keep_daily_four() {
    // From restic's forget documentation: one backup every Sunday for 12 weeks, --keep-daily 4
    // keeps the four most recent.
    let first: Timestamp = "2019-09-01T11:00:00Z".parse().unwrap();
    let archives: Vec<_> = (0..12)
        .map(|w| {
            fake(
                w,
                first + jiff::SignedDuration::from_hours(24 * 7 * w as i64),
            )
        })
        .collect();
    let kept = kept_times(
        &archives,
        RetentionPolicy {
            keep_daily: 4,
            ..Default::default()
        },
        &TimeZone::UTC,
    );
    assert_eq!(
        kept,
        [
            "2019-11-17 11:00",
            "2019-11-10 11:00",
            "2019-11-03 11:00",
            "2019-10-27 11:00"
        ]
    );
}

#[test]
fn restic_example_daily_backups_for_years() {
    // restic's documented scenario (daily backups, keep 7 daily, 5 weekly, 12 monthly, 75 yearly),
    // over ten years ending Wednesday 2025-12-31 so the expected set can be read off a calendar.
    let first: Timestamp = "2016-01-01T11:00:00Z".parse().unwrap();
    let last: Timestamp = "2025-12-31T11:00:00Z".parse().unwrap();
    let days = (last.as_second() - first.as_second()) / 86_400 + 1;
    let archives: Vec<_> = (0..days)
        .map(|d| fake(d as usize, first + jiff::SignedDuration::from_hours(24 * d)))
        .collect();
    let policy = RetentionPolicy {
        keep_daily: 7,
        keep_weekly: 5,
        keep_monthly: 12,
        keep_yearly: 75,
        ..Default::default()
    };
    let decisions = plan(&archives, &policy, &TimeZone::UTC);
    let kept: Vec<String> = decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| {
            d.archive
                .manifest
                .pulled_at
                .strftime("%Y-%m-%d")
                .to_string()
        })
        .collect();
    let mut expected: Vec<String> = (25..=31).rev().map(|d| format!("2025-12-{d}")).collect();
    // Sundays of the earlier ISO weeks (Mon 29 Dec 2025 starts 2026-W01, which holds the 31st).
    expected.extend(["2025-12-21", "2025-12-14", "2025-12-07"].map(String::from));
    // Last day of the eleven earlier months of 2025.
    for m in (1..=11).rev() {
        let end = jiff::civil::date(2025, m, 1).last_of_month();
        expected.push(end.to_string());
    }
    // New Year's Eve of the earlier years, then the oldest backup because the yearly rule still has
    // room (restic keeps it as "oldest yearly snapshot").
    for y in (2016..=2024).rev() {
        expected.push(format!("{y}-12-31"));
    }
    expected.push("2016-01-01".to_owned());
    // Sort both newest first to compare as sets in calendar order.
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(kept, expected_sorted);
    let oldest = decisions.last().unwrap();
    assert_eq!(oldest.reasons, ["oldest yearly 2016"]);
    let newest = &decisions[0];
    assert_eq!(
        newest.reasons,
        [
            "daily 2025-12-31",
            "weekly 2026-W01",
            "monthly 2025-12",
            "yearly 2025"
        ]
    );
}

#[test]
fn hourly_and_last_rules_and_time_zones() {
    let t = |s: &str| s.parse::<Timestamp>().unwrap();
    let archives = vec![
        fake(0, t("2026-03-29T00:10:00Z")),
        fake(1, t("2026-03-29T00:40:00Z")),
        fake(2, t("2026-03-29T01:05:00Z")), // 03:05 in Berlin, just after the DST jump
        fake(3, t("2026-03-29T01:50:00Z")),
        fake(4, t("2026-03-28T23:30:00Z")),
    ];
    let hourly = RetentionPolicy {
        keep_hourly: 3,
        ..Default::default()
    };
    assert_eq!(
        kept_times(&archives, hourly, &TimeZone::UTC),
        ["2026-03-29 01:50", "2026-03-29 00:40", "2026-03-28 23:30"]
    );
    let berlin = TimeZone::get("Europe/Berlin").unwrap();
    let daily = RetentionPolicy {
        keep_daily: 5,
        ..Default::default()
    };
    // In Berlin 23:30 UTC on the 28th is already the 29th: one local day, plus the oldest kept
    // because the rule has room left.
    assert_eq!(
        kept_times(&archives, daily, &berlin),
        ["2026-03-29 03:50", "2026-03-29 00:30"]
    );
    assert_eq!(
        kept_times(&archives, daily, &TimeZone::UTC),
        ["2026-03-29 01:50", "2026-03-28 23:30"]
    );
    let last = RetentionPolicy {
        keep_last: 2,
        keep_yearly: 1,
        ..Default::default()
    };
    assert_eq!(
        kept_times(&archives, last, &TimeZone::UTC),
        ["2026-03-29 01:50", "2026-03-29 01:05"]
    );
}

#[test]
fn no_rule_keeps_everything() {
    let archives: Vec<_> = (0..10)
        .map(|i| {
            fake(
                i,
                Timestamp::from_second(1_700_000_000 + 3600 * i as i64).unwrap(),
            )
        })
        .collect();
    let d = plan(&archives, &RetentionPolicy::default(), &TimeZone::UTC);
    assert!(d.iter().all(|d| d.keep && !d.reasons.is_empty()));
}

fn arb_archives() -> impl Strategy<Value = Vec<StoredArchive>> {
    // Up to ~3 years of pulls, with deliberate duplicates of the same instant.
    prop::collection::vec(prop_oneof![3 => 0i64..100_000_000, 1 => 0i64..4], 1..50).prop_map(
        |secs| {
            secs.into_iter()
                .enumerate()
                .map(|(i, s)| fake(i, Timestamp::from_second(1_700_000_000 + s).unwrap()))
                .collect()
        },
    )
}

fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
    (0u32..6, 0u32..6, 0u32..6, 0u32..6, 0u32..6, 0u32..6).prop_map(|(l, h, d, w, m, y)| {
        RetentionPolicy {
            keep_last: l,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
        }
    })
}

fn kept_ids(archives: &[StoredArchive], policy: &RetentionPolicy, tz: &TimeZone) -> Vec<String> {
    let mut ids: Vec<String> = plan(archives, policy, tz)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| d.archive.manifest.backup_id)
        .collect();
    ids.sort();
    ids
}

fn newest_id(archives: &[StoredArchive]) -> String {
    archives
        .iter()
        .max_by(|a, b| {
            a.manifest
                .pulled_at
                .cmp(&b.manifest.pulled_at)
                .then_with(|| a.relative_path.cmp(&b.relative_path))
        })
        .unwrap()
        .manifest
        .backup_id
        .clone()
}

proptest! {
    #[test]
    fn newest_is_always_kept(archives in arb_archives(), policy in arb_policy()) {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let newest = newest_id(&archives);
        prop_assert!(kept_ids(&archives, &policy, &tz).contains(&newest));
        let decisions = plan(&archives, &policy, &tz);
        prop_assert_eq!(decisions.len(), archives.len());
        prop_assert!(decisions.iter().all(|d| d.keep != d.reasons.is_empty()));
    }

    #[test]
    fn keep_last_alone_keeps_exactly_the_newest_n(archives in arb_archives(), n in 1u32..60) {
        let policy = RetentionPolicy { keep_last: n, ..Default::default() };
        let mut sorted = archives.clone();
        sorted.sort_by(|a, b| b.manifest.pulled_at.cmp(&a.manifest.pulled_at).then_with(|| b.relative_path.cmp(&a.relative_path)));
        let mut expected: Vec<String> = sorted.iter().take(n as usize).map(|a| a.manifest.backup_id.clone()).collect();
        expected.sort();
        prop_assert_eq!(kept_ids(&archives, &policy, &TimeZone::UTC), expected);
    }

    #[test]
    fn result_does_not_depend_on_input_order(archives in arb_archives(), policy in arb_policy(), seed in any::<u64>()) {
        let mut shuffled = archives.clone();
        fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
        let tz = TimeZone::get("America/New_York").unwrap();
        let a: Vec<_> = plan(&archives, &policy, &tz).into_iter().map(|d| (d.archive.manifest.backup_id, d.keep, d.reasons)).collect();
        let b: Vec<_> = plan(&shuffled, &policy, &tz).into_iter().map(|d| (d.archive.manifest.backup_id, d.keep, d.reasons)).collect();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn raising_any_rule_keeps_a_superset(archives in arb_archives(), policy in arb_policy(), which in 0usize..6, by in 1u32..4) {
        let mut more = policy;
        let field = match which {
            0 => &mut more.keep_last,
            1 => &mut more.keep_hourly,
            2 => &mut more.keep_daily,
            3 => &mut more.keep_weekly,
            4 => &mut more.keep_monthly,
            _ => &mut more.keep_yearly,
        };
        // From "no rule" (keep everything) any rule keeps less; that step is not an increase here.
        prop_assume!(!policy.keeps_everything());
        *field += by;
        let tz = TimeZone::UTC;
        let before = kept_ids(&archives, &policy, &tz);
        let after = kept_ids(&archives, &more, &tz);
        for id in &before {
            prop_assert!(after.contains(id), "{} kept by {:?} but not by {:?}", id, policy, more);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Archives written the way Home Assistant writes them

/// Builds a backup with Python's `tarfile`, the library Home Assistant itself uses: pax format, a
/// `./backup.json` member added with `addfile`, an inner `w:gz` archive with long and non-ASCII
/// names (which need pax headers), and the 10 KiB record padding Python adds at the end.
#[test]
fn archive_written_by_python_tarfile_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py.tar");
    let script = r#"
import io, json, sys, tarfile, time
out = sys.argv[1]
meta = {"slug": "0c1a2b3d", "name": "Automatic backup 2026.11.0", "date": "2026-11-26T03:45:12.000001+01:00",
        "protected": False, "compressed": True, "type": "partial", "version": 2,
        "homeassistant": {"version": "2026.11.0", "exclude_database": False}, "extra": {}}
inner = io.BytesIO()
with tarfile.open(fileobj=inner, mode="w:gz", format=tarfile.PAX_FORMAT) as t:
    for name, data in [("data/configuration.yaml", b"homeassistant:\n"),
                       ("data/" + "deep/" * 30 + "file.txt", b"x" * 3000),
                       ("data/www/b\u00fchne.png", bytes(range(256)) * 40)]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = time.time()
        t.addfile(info, io.BytesIO(data))
with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as outer:
    raw = json.dumps(meta).encode()
    info = tarfile.TarInfo("./backup.json")
    info.size = len(raw)
    info.mtime = int(time.time())
    outer.addfile(info, io.BytesIO(raw))
    data = inner.getvalue()
    info = tarfile.TarInfo("./homeassistant.tar.gz")
    info.size = len(data)
    outer.addfile(info, io.BytesIO(data))
"#;
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out)
        .status()
        .expect("python3 is needed to build an archive the way Home Assistant does");
    assert!(status.success());
    let bytes = fs::read(&out).unwrap();
    assert_eq!(bytes.len() % 10240, 0, "Python pads to whole records");

    let s = verify_file(&out, "0c1a2b3d", Verify::Full).unwrap();
    assert_eq!(s.deep_checked, ["./homeassistant.tar.gz"]);
    assert_eq!(s.sha256, sha256(&bytes));
    assert_eq!(
        s.backup.timestamp().unwrap(),
        "2026-11-26T02:45:12.000001Z".parse::<Timestamp>().unwrap()
    );

    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let stored = store
        .commit(
            &out,
            &CommitInfo {
                backup_id: "0c1a2b3d".to_owned(),
                size: bytes.len() as u64,
                sha256: sha256(&bytes),
                pulled_at: "2026-11-26T02:50:00Z".parse().unwrap(),
                source_host: "ha".to_owned(),
                source_path:
                    "/var/lib/hass/backups/Automatic_backup_2026.11.0_2026-11-26_03.45_12000001.tar"
                        .to_owned(),
                verify: Verify::Full,
                password: None,
                verified: None,
            },
        )
        .unwrap();
    assert_eq!(
        stored.relative_path,
        "2026/11/2026-11-26T02-45-12Z_Automatic-backup-2026-11-0_0c1a2b3d.tar"
    );
    sha256sum_check(tmp.path());
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_store_can_still_be_listed_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let store = Store::open(&root).unwrap();
    let p = pulled(tmp.path(), "dcc25121", "x", DATE, "2026-11-26T09:08:02Z");
    let stored = store.commit(&p.path, &p.info).unwrap();
    let stray = stored.path.with_file_name(".hapull-tmp-leftover.1");
    fs::write(&stray, b"x").unwrap();

    // A read-only bind mount of the same store (this needs root, as the transfer tests' tmpfs does).
    let ro = tmp.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let ok = Command::new("mount")
        .arg("--bind")
        .arg(&root)
        .arg(&ro)
        .status()
        .unwrap();
    assert!(ok.success(), "mount --bind failed: run the tests as root");
    let _guard = Mounted(ro.clone());
    let ok = Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(ok.success(), "remounting read-only failed");

    let ro_store = Store::open(&ro).unwrap();
    let listed = ro_store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(ro_store.verify(&listed[0]).unwrap().is_ok());
    assert!(
        stray.exists(),
        "nothing was changed through the read-only mount"
    );
}

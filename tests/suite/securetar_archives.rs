//! The SecureTar reader against real protected archives written by Home Assistant's own library
//! (`tests/fixtures/securetar/`, facts in its FACTS.json), and against damaged copies.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use hapull::secret::Secret;
use hapull::store::securetar::{Decrypt, Plain, SecureTarError};
use hapull::store::{ArchiveError, Keys, Level, Verify, VerifyOptions, verify_file_with};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/securetar")
}

fn facts() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join("FACTS.json")).unwrap()).unwrap()
}

fn password(file: &str) -> Secret {
    // Password files hold the password exactly; Secret::new only trims a trailing newline.
    Secret::new(String::from_utf8(std::fs::read(dir().join(file)).unwrap()).unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decrypts one inner member with the library's reader; returns its plaintext size and SHA-256.
fn decrypt_member(
    archive: &Path,
    member: &str,
    keys: &mut Keys,
) -> Result<(u64, String, u8), SecureTarError> {
    let mut outer = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in outer.entries().unwrap() {
        let entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            != member
        {
            continue;
        }
        let mut dec = Decrypt::new(BufReader::new(entry), keys, Plain::Gzip)?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match dec.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    return Err(SecureTarError::from_io(&e)
                        .cloned()
                        .expect("a SecureTar error"));
                }
            };
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            total += n as u64;
        }
        return Ok((total, hex(ctx.finish().as_ref()), dec.version()));
    }
    panic!("no member {member} in {}", archive.display());
}

fn file_sha(path: &Path) -> (u64, String) {
    let data = std::fs::read(path).unwrap();
    (
        data.len() as u64,
        hex(digest::digest(&digest::SHA256, &data).as_ref()),
    )
}

#[test]
fn every_archive_decrypts_to_the_reference_plaintext() {
    let facts = facts();
    for (name, f) in facts["archives"].as_object().unwrap() {
        let path = dir().join(name);
        assert_eq!(
            file_sha(&path),
            (
                f["size"].as_u64().unwrap(),
                f["sha256"].as_str().unwrap().to_owned()
            ),
            "{name}"
        );
        let mut keys = Keys::new(password("password.txt"));
        for (member, m) in f["inner"].as_object().unwrap() {
            let (size, sha, version) = decrypt_member(&path, member, &mut keys).unwrap();
            assert_eq!(
                size,
                m["plaintext_bytes"].as_u64().unwrap(),
                "{name} {member}"
            );
            assert_eq!(
                sha,
                m["plaintext_sha256"].as_str().unwrap(),
                "{name} {member}"
            );
            assert_eq!(u64::from(version), f["securetar_version"].as_u64().unwrap());
        }
        // The whole backup verifies fully: decrypted, inflated, every inner header walked.
        let mut keys = Keys::new(password("password.txt"));
        let summary = verify_file_with(
            &path,
            f["slug"].as_str().unwrap(),
            VerifyOptions {
                mode: Verify::Full,
                keys: Some(&mut keys),
                hash: true,
            },
        )
        .unwrap();
        assert_eq!(summary.level, Level::Full, "{name}");
        assert_eq!(
            summary.securetar.map(u64::from),
            f["securetar_version"].as_u64(),
            "{name}"
        );
        assert_eq!(
            summary.deep_checked,
            vec!["homeassistant.tar.gz".to_owned()]
        );
        assert_eq!(hex(&summary.sha256), f["sha256"].as_str().unwrap());
        if summary.securetar == Some(3) {
            assert_eq!(
                keys.argon2_derivations(),
                1,
                "root key derived once per backup"
            );
        }
    }
}

#[test]
fn real_home_assistant_archive_decrypts() {
    let path = dir().join("real-ha-2026.11.0-protected.tar");
    let mut keys = Keys::new(password("real-ha-2026.11.0-protected.password"));
    let (size, sha, version) = decrypt_member(&path, "homeassistant.tar.gz", &mut keys).unwrap();
    assert_eq!((size, version), (7565, 3));
    assert_eq!(
        sha,
        "672558310abbf9244817b092545b4e1f3a8615631d0cb36680bd1be45d6b2084"
    );
}

#[test]
fn flipped_archives_are_refused_naming_the_member() {
    for (name, slug) in [
        ("v2_5ec0a002_flipped.tar", "5ec0a002"),
        ("v3_5ec0a003_flipped.tar", "5ec0a003"),
    ] {
        let mut keys = Keys::new(password("password.txt"));
        let err = verify_file_with(
            &dir().join(name),
            slug,
            VerifyOptions {
                mode: Verify::Full,
                keys: Some(&mut keys),
                hash: true,
            },
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Inner { .. }), "{name}: {err}");
        assert!(
            err.to_string().contains("homeassistant.tar.gz"),
            "{name}: {err}"
        );
    }
}

#[test]
fn wrong_password_is_reported_as_such() {
    for (name, slug) in [
        ("v2_5ec0a002.tar", "5ec0a002"),
        ("v3_5ec0a003.tar", "5ec0a003"),
        ("real-ha-2026.11.0-protected.tar", ""),
    ] {
        let path = dir().join(name);
        let slug = if slug.is_empty() {
            backup_slug(&path)
        } else {
            slug.to_owned()
        };
        let mut keys = Keys::new(Secret::new("not the password"));
        let err = verify_file_with(
            &path,
            &slug,
            VerifyOptions {
                mode: Verify::Full,
                keys: Some(&mut keys),
                hash: true,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ArchiveError::WrongPassword { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("wrong password"), "{err}");
        assert!(!err.to_string().contains("not the password"));
    }
}

#[test]
fn without_a_password_a_protected_backup_is_structure_only_with_a_warning() {
    let summary = verify_file_with(
        &dir().join("v3_5ec0a003.tar"),
        "5ec0a003",
        VerifyOptions {
            mode: Verify::Full,
            keys: None,
            hash: true,
        },
    )
    .unwrap();
    assert_eq!(summary.level, Level::Structure);
    assert!(summary.deep_checked.is_empty());
    assert!(
        summary.warnings[0].contains("password_file"),
        "{:?}",
        summary.warnings
    );
}

fn backup_slug(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    hapull::store::parse_backup_json_from_tar_prefix(&data)
        .unwrap()
        .slug
}

#[test]
fn every_archive_extracts_and_the_flipped_ones_are_refused() {
    use hapull::store::extract::{ExtractOptions, extract_file};
    for (name, pw, ok) in [
        ("v2_5ec0a002.tar", "password.txt", true),
        ("v3_5ec0a003.tar", "password.txt", true),
        (
            "real-ha-2026.11.0-protected.tar",
            "real-ha-2026.11.0-protected.password",
            true,
        ),
        ("v2_5ec0a002_flipped.tar", "password.txt", false),
        ("v3_5ec0a003_flipped.tar", "password.txt", false),
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut keys = Keys::new(password(pw));
        let result = extract_file(
            &dir().join(name),
            out.path(),
            ExtractOptions {
                keys: Some(&mut keys),
                overwrite: false,
                progress: None,
            },
        );
        if ok {
            let s = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.parts, vec!["homeassistant".to_owned()], "{name}");
            assert!(
                s.files > 0 && out.path().join("homeassistant").is_dir(),
                "{name}"
            );
        } else {
            let e = result.unwrap_err();
            assert!(
                e.to_string().contains("homeassistant.tar.gz"),
                "{name}: {e}"
            );
        }
    }
    // The real Home Assistant backup unpacks to its configuration.
    let out = tempfile::tempdir().unwrap();
    let mut keys = Keys::new(password("real-ha-2026.11.0-protected.password"));
    extract_file(
        &dir().join("real-ha-2026.11.0-protected.tar"),
        out.path(),
        ExtractOptions {
            keys: Some(&mut keys),
            overwrite: false,
            progress: None,
        },
    )
    .unwrap();
    assert!(
        out.path()
            .join("homeassistant/data/configuration.yaml")
            .is_file()
    );
}

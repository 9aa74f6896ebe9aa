//! `hapull verify --deep`: a stored backup is unpacked into a private temporary folder in the store,
//! its recorder database checked by SQLite and its `.storage` files parsed, through the real binary.
//! The archives are built here the way Home Assistant lays them out, with a real SQLite database.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_lc_rs::digest;
use hapull::secret::Secret;
use hapull::store::{CommitInfo, Store, Verify};

const PAGE: usize = 4096;

/// A recorder-like SQLite database with enough rows that every page is in use.
pub(crate) fn database(dir: &Path) -> Vec<u8> {
    let path = dir.join("home-assistant_v2.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE};
         CREATE TABLE states (state_id INTEGER PRIMARY KEY, entity_id TEXT, state TEXT);
         CREATE INDEX ix_states_entity ON states (entity_id);"
    ))
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..3000 {
        tx.execute(
            "INSERT INTO states (entity_id, state) VALUES (?1, ?2)",
            (format!("sensor.t{}", i % 40), format!("{i:0>120}")),
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 50 * PAGE, "{}", bytes.len());
    bytes
}

/// Overwrites one whole page in the middle of the database file.
pub(crate) fn corrupt(db: &mut [u8]) {
    let page = db.len() / PAGE / 2;
    db[page * PAGE..(page + 1) * PAGE].fill(0xA5);
}

/// A backup as Home Assistant 2026.11 writes it: `backup.json`, then `homeassistant.tar.gz` holding
/// `data/...`.
fn backup(slug: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut inner = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        inner
            .append_data(&mut h, format!("./data/{name}"), *data)
            .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&inner.into_inner().unwrap()).unwrap();
    let gz = gz.finish().unwrap();
    let json = format!(
        r#"{{"slug":"{slug}","name":"Automatic backup 2026.11.0","date":"2026-11-26T09:07:39.253410+00:00","type":"partial","protected":false,"compressed":true,"homeassistant":{{"version":"2026.11.0","exclude_database":false}}}}"#
    );
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("./backup.json", json.as_bytes()),
        ("./homeassistant.tar.gz", &gz[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        outer.append_data(&mut h, name, data).unwrap();
    }
    outer.into_inner().unwrap()
}

fn commit(store: &Store, tmp: &Path, slug: &str, bytes: &[u8], password: Option<Secret>) {
    let partial = tmp.join(format!("{slug}.partial"));
    std::fs::write(&partial, bytes).unwrap();
    let mut sha = [0u8; 32];
    sha.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    store
        .commit(
            &partial,
            &CommitInfo {
                backup_id: slug.to_owned(),
                size: bytes.len() as u64,
                sha256: sha,
                pulled_at: "2026-11-26T09:10:00Z".parse().unwrap(),
                source_host: "ha".to_owned(),
                source_path: format!("/config/backups/{slug}.tar"),
                verify: Verify::Full,
                password,
                verified: None,
            },
        )
        .unwrap();
}

struct Rig {
    tmp: tempfile::TempDir,
    store: Store,
    config: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let store_dir = tmp.path().join("store");
        let store = Store::open(&store_dir).unwrap();
        let token = tmp.path().join("token");
        std::fs::write(&token, "unused").unwrap();
        let config = tmp.path().join("hapull.toml");
        std::fs::write(
            &config,
            format!(
                "[home_assistant]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n\n\
                 [store]\ndir = \"{}\"\n",
                token.display(),
                store_dir.display()
            ),
        )
        .unwrap();
        Rig { tmp, store, config }
    }

    fn add(&self, slug: &str, bytes: &[u8]) {
        commit(&self.store, self.tmp.path(), slug, bytes, None);
    }

    fn verify(&self, args: &[&str]) -> (Output, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_hapull"))
            .args(["-q", "-c"])
            .arg(&self.config)
            .args(["verify", "--deep"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Whatever the outcome, the unpacked copy is gone from the store.
        let left: Vec<_> = std::fs::read_dir(self.store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".hapull-deep-"))
            .collect();
        assert!(left.is_empty(), "temporary folders left: {left:?}\n{text}");
        (out, text)
    }
}

/// The line of check `name` in the output.
fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
}

const STORAGE_OK: &[(&str, &[u8])] = &[
    (".storage/core.config_entries", br#"{"version":1,"minor_version":5,"key":"core.config_entries","data":{"entries":[]}}"#),
    (".storage/core.entity_registry", br#"{"version":1,"key":"core.entity_registry","data":{"entities":[{"entity_id":"sensor.t1"}]}}"#),
    (".storage/auth", br#"{"version":1,"key":"auth","data":{"users":[]}}"#),
];

fn files_with<'a>(db: &'a [u8], storage: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
    let mut files: Vec<(&str, &[u8])> = vec![
        ("configuration.yaml", b"homeassistant:\n"),
        ("home-assistant_v2.db", db),
    ];
    files.extend_from_slice(storage);
    files
}

#[test]
fn a_sound_backup_with_its_database_passes_every_check() {
    let rig = Rig::new();
    let db = database(rig.tmp.path());
    rig.add(
        "aa11aa11",
        &backup("aa11aa11", &files_with(&db, STORAGE_OK)),
    );
    let (out, text) = rig.verify(&["aa11aa11"]);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ok  "), "{text}");
    assert!(line(&text, "archive").contains("full"), "{text}");
    let db_line = line(&text, "database");
    assert!(
        db_line.contains(" ok ")
            && db_line.contains("home-assistant_v2.db")
            && db_line.contains("PRAGMA integrity_check ok"),
        "{text}"
    );
    let storage = line(&text, "storage");
    assert!(
        storage.contains(" ok ") && storage.contains("3 homeassistant/data/.storage files parsed"),
        "{text}"
    );
}

#[test]
fn a_corrupted_database_fails_naming_the_database() {
    let rig = Rig::new();
    let mut db = database(rig.tmp.path());
    corrupt(&mut db);
    rig.add(
        "bb22bb22",
        &backup("bb22bb22", &files_with(&db, STORAGE_OK)),
    );
    let (out, text) = rig.verify(&["bb22bb22"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("FAILED  "), "{text}");
    // The archive itself is intact: only the database inside it is damaged.
    assert!(line(&text, "archive").contains(" ok "), "{text}");
    let db_line = line(&text, "database");
    assert!(
        db_line.contains("FAILED") && db_line.contains("homeassistant/data/home-assistant_v2.db"),
        "{text}"
    );
    assert!(line(&text, "storage").contains(" ok "), "{text}");
}

#[test]
fn a_broken_storage_file_fails_naming_the_file() {
    let rig = Rig::new();
    let db = database(rig.tmp.path());
    let storage: &[(&str, &[u8])] = &[
        STORAGE_OK[0],
        (
            ".storage/core.device_registry",
            br#"{"version":1,"key":"core.device_registry","data":{"devices":["#,
        ),
        STORAGE_OK[2],
    ];
    rig.add("cc33cc33", &backup("cc33cc33", &files_with(&db, storage)));
    let (out, text) = rig.verify(&["cc33cc33"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "database").contains(" ok "), "{text}");
    let storage = line(&text, "storage");
    assert!(
        storage.contains("FAILED")
            && storage.contains("homeassistant/data/.storage/core.device_registry")
            && storage.contains("not valid JSON")
            && storage.contains("1 of 3"),
        "{text}"
    );
    assert!(!storage.contains("core.config_entries"), "{text}");
}

#[test]
fn a_backup_without_the_database_says_so_and_all_checks_every_archive() {
    let rig = Rig::new();
    let db = database(rig.tmp.path());
    let no_db: Vec<(&str, &[u8])> = files_with(&db, STORAGE_OK)
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".db"))
        .collect();
    rig.add("dd44dd44", &backup("dd44dd44", &no_db));
    let (out, text) = rig.verify(&["dd44dd44"]);
    assert!(out.status.success(), "{text}");
    let db_line = line(&text, "database");
    assert!(
        db_line.contains("not included") && !db_line.contains(" ok "),
        "{text}"
    );
    assert!(line(&text, "storage").contains(" ok "), "{text}");

    // With a damaged one beside it, --all reports both and fails.
    let mut bad = db.clone();
    corrupt(&mut bad);
    rig.add(
        "ee55ee55",
        &backup("ee55ee55", &files_with(&bad, STORAGE_OK)),
    );
    let (out, text) = rig.verify(&["--all"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ok  ") && text.contains("_dd44dd44.tar"),
        "{text}"
    );
    assert!(
        text.contains("FAILED  ") && text.contains("_ee55ee55.tar"),
        "{text}"
    );
}

#[test]
fn a_protected_backup_is_unpacked_with_the_password_and_not_run_without_it() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/securetar");
    let archive = std::fs::read(fixtures.join("real-ha-2026.11.0-protected.tar")).unwrap();
    let slug = hapull::store::parse_backup_json_from_tar_prefix(&archive)
        .unwrap()
        .slug;
    let password_file = fixtures.join("real-ha-2026.11.0-protected.password");
    let password = Secret::new(String::from_utf8(std::fs::read(&password_file).unwrap()).unwrap());
    let rig = Rig::new();
    commit(&rig.store, rig.tmp.path(), &slug, &archive, Some(password));

    let (out, text) = rig.verify(&[&slug]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        line(&text, "unpack").contains("FAILED") && text.contains("--password-file"),
        "{text}"
    );
    assert!(line(&text, "database").contains("NOT RUN"), "{text}");
    assert!(line(&text, "storage").contains("NOT RUN"), "{text}");

    let pw = password_file.to_string_lossy().into_owned();
    let (out, text) = rig.verify(&[&slug, "--password-file", &pw]);
    assert!(out.status.success(), "{text}");
    assert!(line(&text, "unpack").contains(" ok "), "{text}");
    assert!(line(&text, "storage").contains(" ok "), "{text}");
}

//! Abandoned `.partial` downloads do not fill the disk: those untouched for a week are removed when a
//! writer opens the store or starts a pull; recent ones (a pull to resume) stay.

use std::time::{Duration, SystemTime};

use hapull::store::{STALE_PARTIAL_AGE, Store};

fn age(path: &std::path::Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

#[test]
fn week_old_partials_go_recent_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let incoming = store.incoming_path("fresh").unwrap();
    let inc_dir = incoming.parent().unwrap().to_path_buf();
    let old = inc_dir.join("old.tar.partial");
    let old_meta = inc_dir.join("old.tar.partial.meta");
    let fresh = inc_dir.join("fresh.tar.partial");
    let unrelated = inc_dir.join("notes.txt");
    for p in [&old, &old_meta, &fresh, &unrelated] {
        std::fs::write(p, b"x").unwrap();
    }
    let eight_days = STALE_PARTIAL_AGE + Duration::from_secs(24 * 3600);
    age(&old, eight_days);
    age(&old_meta, eight_days);
    age(&unrelated, eight_days);
    age(&fresh, Duration::from_secs(6 * 24 * 3600));

    // Opening the store as its writer cleans up.
    let store = Store::open(dir.path()).unwrap();
    assert!(
        !old.exists() && !old_meta.exists(),
        "week-old partial and sidecar removed"
    );
    assert!(fresh.exists(), "a six-day-old partial may still be resumed");
    assert!(unrelated.exists(), "only .partial files are touched");

    // Starting a pull does too (a daemon opens its store once and runs for months).
    age(&fresh, eight_days);
    store.incoming_path("next").unwrap();
    assert!(!fresh.exists());
    // A reader changes nothing.
    std::fs::write(&old, b"x").unwrap();
    age(&old, eight_days);
    Store::open_read_only(dir.path()).unwrap().list().unwrap();
    assert!(old.exists());
}

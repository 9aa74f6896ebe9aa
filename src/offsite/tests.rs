//! Unit tests of hash choice and target names and paths.

use super::*;

#[test]
fn the_strongest_hash_is_chosen() {
    let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ProofMethod::choose(&h(&["md5", "sha1", "sha256"]), false),
        ProofMethod::Hash("sha256".into())
    );
    assert_eq!(
        ProofMethod::choose(&h(&["md5", "sha1"]), false),
        ProofMethod::Hash("sha1".into())
    );
    assert_eq!(
        ProofMethod::choose(&h(&["quickxor"]), false),
        ProofMethod::Hash("quickxor".into())
    );
    assert_eq!(ProofMethod::choose(&h(&[]), true), ProofMethod::Download);
    assert_eq!(
        ProofMethod::choose(&h(&["unknown"]), false),
        ProofMethod::Size
    );
}

#[test]
fn names_and_paths() {
    assert_eq!(default_name("b2:home-backups/ha"), "b2_home-backups_ha");
    assert_eq!(default_name("/mnt/usb"), "mnt_usb");
    assert_eq!(manifest_relative("2026/11/a_b.tar"), "2026/11/a_b.json");
    let t = |remote: &str| {
        Target::new(TargetConfig {
            name: "t".into(),
            remote: remote.into(),
            rclone: "rclone".into(),
            rclone_config: None,
            retention: RetentionPolicy::default(),
            bandwidth_limit: None,
            timeout: Duration::from_secs(1),
            fail_cycle: false,
            download_back: false,
        })
    };
    assert_eq!(
        t("b2:bucket").remote_path("2026/x.tar"),
        "b2:bucket/2026/x.tar"
    );
    assert_eq!(t("gd:").remote_path("2026/x.tar"), "gd:2026/x.tar");
    assert_eq!(t("/srv/copy/").remote_path("x.tar"), "/srv/copy/x.tar");
}

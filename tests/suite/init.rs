//! `hapull init` as a user runs it: the built binary writes into a fresh folder, and the result is
//! checked the way a user would — file modes, the key with `ssh-keygen`, the config with `hapull check`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn hapull(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hapull"))
        .args(args)
        .env_remove("HAPULL_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An address where nothing listens: the port was just given out by the kernel and released.
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_a_usable_key_config_and_known_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    let data = tmp.path().join("data");
    let url = closed_port_url();
    let out = hapull(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--ha-url",
        &url,
        "--ssh-host",
        "127.0.0.1",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));

    let key = dir.join("id_ed25519");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(fs::read(dir.join("known_hosts")).unwrap(), b"");

    // OpenSSH itself must accept the private key, and derive the public key init printed.
    let derived = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
        .unwrap();
    assert!(derived.status.success(), "{}", text(&derived.stderr));
    let derived = text(&derived.stdout);
    let mut fields = derived.split_whitespace();
    assert_eq!(fields.next(), Some("ssh-ed25519"));
    let blob = fields.next().unwrap();
    let pub_file = fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    assert!(pub_file.starts_with(&format!("ssh-ed25519 {blob} hapull@")));

    // What the user installs on the Home Assistant host.
    assert!(
        stdout.contains(&format!("restrict ssh-ed25519 {blob} hapull@")),
        "{stdout}"
    );
    assert!(stdout.contains("re-run with --from"), "{stdout}");
    assert!(stdout.contains("Match User hapull-sftp"));
    assert!(stdout.contains("ForceCommand internal-sftp -R"));
    assert!(stdout.contains("umask 0027"));
    assert!(stdout.contains("chmod -R g+rX"));
    let cfg = dir.join("hapull.toml");
    let cfg_s = cfg.to_str().unwrap();
    for next in ["trust-host --write", "check", "once"] {
        assert!(
            stdout.contains(&format!("hapull -c {cfg_s} {next}")),
            "{next}: {stdout}"
        );
    }

    // The config names the files init wrote; without the token it is a config error (exit 2) ...
    let written = fs::read_to_string(&cfg).unwrap();
    assert!(written.contains(&format!("identity_file = \"{}\"", key.display())));
    assert!(written.contains(&format!("dir = \"{}/archives\"", data.display())));
    let check = hapull(&["-c", cfg_s, "check"]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check.stdout));
    assert!(text(&check.stdout).contains("token_file"));

    // ... and once the token exists it loads, and check gets as far as connecting to Home Assistant.
    fs::write(dir.join("ha_token"), "not-a-real-token\n").unwrap();
    let check = hapull(&["-c", cfg_s, "check"]);
    let check_out = text(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{check_out}");
    assert!(
        check_out.contains(&format!("[ok  ] config       {cfg_s} is valid")),
        "{check_out}"
    );
    assert!(check_out.contains("[FAIL] connect"), "{check_out}");

    // The daemon's state file is in the data folder too, where `hapull health` looks for it.
    let health = hapull(&["-c", cfg_s, "health"]);
    assert_eq!(health.status.code(), Some(1));
    assert!(
        text(&health.stdout).contains(&format!("{}/state.json", data.display())),
        "{}",
        text(&health.stdout)
    );
    assert!(!check_out.contains("not-a-real-token"));
}

#[test]
fn init_never_overwrites_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert!(hapull(&["init", "--dir", dir]).status.success());
    let key = tmp.path().join("id_ed25519");
    let first = fs::read(&key).unwrap();
    fs::write(tmp.path().join("known_hosts"), "[ha]:22 ssh-ed25519 AAAA\n").unwrap();

    let again = hapull(&["init", "--dir", dir]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("--force"));
    assert_eq!(fs::read(&key).unwrap(), first);
    assert_eq!(
        fs::read_to_string(tmp.path().join("known_hosts")).unwrap(),
        "[ha]:22 ssh-ed25519 AAAA\n"
    );

    let forced = hapull(&["init", "--dir", dir, "--force"]);
    assert!(forced.status.success());
    assert_ne!(fs::read(&key).unwrap(), first);
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn init_puts_the_given_address_into_the_authorized_keys_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hapull(&[
        "init",
        "--dir",
        tmp.path().to_str().unwrap(),
        "--from",
        "192.0.2.7",
    ]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("restrict,from=\"192.0.2.7\" ssh-ed25519 AAAA"));

    let bad = hapull(&[
        "init",
        "--dir",
        tmp.path().join("other").to_str().unwrap(),
        "--from",
        "a\" command=\"sh",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(!tmp.path().join("other").exists());
}

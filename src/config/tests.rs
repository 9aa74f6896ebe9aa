use super::*;
use std::io::Write;

/// Writes a file the way the setup guide says secrets are kept: mode 0600.
fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(body.as_bytes()).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn secret_files_readable_by_others_are_warned_about_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "secret-token\n");
    let pw = write(dir.path(), "pw", "backup-pass\n");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o640)).unwrap();
    let l = load_str(
        dir.path(),
        "[home_assistant]\nurl = \"http://ha:8123\"\ntoken_file = \"token\"\n[backup]\npassword_file = \"pw\"\n",
    )
    .unwrap();
    let all = l
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("token_file") && all.contains(&format!("chmod 600 {}", token.display())),
        "{all}"
    );
    assert!(
        all.contains("password_file") && all.contains(&format!("chmod 600 {}", pw.display())),
        "{all}"
    );
    assert!(
        !all.contains("secret-token") && !all.contains("backup-pass"),
        "{all}"
    );
}

fn load_str(dir: &Path, body: &str) -> Result<Loaded, ConfigError> {
    let p = write(dir, "hapull.toml", body);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    load(&p)
}

#[test]
fn unknown_key_names_key_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "abc\n");
    let err = load_str(
        dir.path(),
        "[home_assistant]\nurl = \"http://ha:8123\"\ntoken_file = \"token\"\ntoken_flie = \"x\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("hapull.toml"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("token_flie"), "{err}");
}

#[test]
fn token_from_file_is_trimmed_and_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "  secret-token\n");
    // https, so the only warning this could give is about the token file.
    let l = load_str(
        dir.path(),
        "[home_assistant]\nurl = \"https://ha:8123\"\ntoken_file = \"token\"\n",
    )
    .unwrap();
    assert_eq!(l.config.home_assistant.token.expose(), "secret-token");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(
        l.config.home_assistant.endpoint.ws_url(),
        "wss://ha:8123/api/websocket"
    );
    assert!(!format!("{:?}", l.config).contains("secret-token"));
}

#[test]
fn inline_token_warns_and_world_readable_file_warns_again() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "c.toml",
        "[home_assistant]\nurl = \"http://ha:8123\"\ntoken = \"inline-secret\"\n",
    );
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let l = load(&p).unwrap();
    let all = l
        .warnings
        .iter()
        .map(|w| w.0.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("written inline"), "{all}");
    assert!(all.contains("readable by other users"), "{all}");
    assert!(!all.contains("inline-secret"));
}

#[test]
fn token_env_is_read_through_the_given_lookup() {
    let raw = RawConfig::parse(
        "[home_assistant]\nurl = \"https://ha.example\"\ntoken_env = \"HA_TOKEN\"\n",
    )
    .unwrap();
    let l = validate(raw, Path::new("/nonexistent/c.toml"), Some(0o600), &|k| {
        (k == "HA_TOKEN").then(|| "from-env".to_string())
    })
    .unwrap();
    assert_eq!(l.config.home_assistant.token.expose(), "from-env");
    let raw = RawConfig::parse(
        "[home_assistant]\nurl = \"https://ha.example\"\ntoken_env = \"MISSING\"\n",
    )
    .unwrap();
    let e = validate(raw, Path::new("c.toml"), None, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MISSING is not set"), "{e}");
}

#[test]
fn bad_values_say_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "t");
    let base = "[home_assistant]\nurl = \"http://ha:8123\"\ntoken_file = \"token\"\n";
    let cases = [
        (
            "[home_assistant]\nurl = \"ftp://ha\"\ntoken_file = \"token\"\n",
            "scheme must be",
        ),
        (
            "[home_assistant]\nurl = \"http://ha\"\ntoken_file = \"missing\"\n",
            "cannot read",
        ),
        ("[home_assistant]\nurl = \"http://ha\"\n", "no access token"),
        (
            "[home_assistant]\nurl = \"http://ha\"\ntoken_file = \"token\"\ntoken = \"x\"\n",
            "set only one",
        ),
        (
            &format!("{base}[backup]\ntimeout = \"soon\"\n"),
            "is not a duration",
        ),
        (
            &format!("{base}[backup]\nmode = \"magic\"\n"),
            "\"api\" or \"service\"",
        ),
        (
            &format!("{base}[schedule]\ntimezone = \"Mars/Olympus\"\n"),
            "not a known time zone",
        ),
        (
            &format!("{base}[store]\nverify = \"some\"\n"),
            "\"full\" or \"structure\"",
        ),
        (
            &format!("{base}[status]\nlisten = \"nowhere\"\n"),
            "address:port",
        ),
        (
            &format!("{base}[ssh]\nhost = \"ha\"\nidentity_file = \"token\"\n"),
            "host key must be verified",
        ),
        (
            &format!("{base}[ssh]\nhost = \"ha\"\nidentity_file = \"token\"\nhost_key = \"abc\"\n"),
            "not a SHA256",
        ),
        (
            &format!(
                "{base}[ssh]\nhost = \"ha\"\nidentity_file = \"token\"\nknown_hosts = \"kh\"\n"
            ),
            "cannot read",
        ),
        (
            &format!(
                "{base}[ssh]\nhost = \"ha\"\nidentity_file = \"token\"\nhost_key = \"SHA256:aaaaaaaaaaaaaaaaaaaaaaaa\"\nremote_dir = \"rel\"\n"
            ),
            "absolute",
        ),
        ("[nonsense]\n", "unknown field"),
        (
            &format!("{base}[schedule]\ncron = \"61 * * * *\"\n"),
            "minute field",
        ),
    ];
    for (body, want) in cases {
        let e = load_str(dir.path(), body).unwrap_err().to_string();
        assert!(
            e.contains(want),
            "config:\n{body}\nerror: {e}\nwanted: {want}"
        );
    }
}

#[test]
fn sizes_parse_with_binary_units() {
    assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
    assert_eq!(parse_size("512k").unwrap(), 512 << 10);
    assert_eq!(parse_size("7").unwrap(), 7);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("5 parsecs").is_err());
    assert!(parse_size("99999999999999GiB").is_err());
}

#[test]
fn the_example_config_is_valid_and_complete() {
    // Every key the example documents must parse (commented keys are checked by uncommenting them).
    let text = include_str!("../../config/hapull.example.toml");
    let uncommented: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            match t.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest.to_string(),
                // A commented-out table (`# [[offsite]]`): its keys belong to it.
                Some(rest) if rest.starts_with("[[") => rest.to_string(),
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    RawConfig::parse(text).unwrap();
    // Uncommenting alternatives makes some combinations invalid (token_file + token_env) but every key
    // must still be known to the parser.
    let err = RawConfig::parse(&uncommented).err().unwrap_or_default();
    assert!(!err.contains("unknown field"), "{err}");
}

#[test]
fn offsite_targets_default_to_the_stores_retention_and_name_their_mistakes() {
    let base = "[home_assistant]\nurl = \"http://ha:8123\"\ntoken = \"t\"\n[store]\ndir = \"/tmp/x\"\nkeep_last = 5\n";
    let load = |extra: &str| {
        let raw = RawConfig::parse(&format!("{base}{extra}")).unwrap();
        validate(raw, Path::new("/etc/hapull/hapull.toml"), None, &|_| None)
    };
    let cfg = load("[[offsite]]\nremote = \"b2:bucket/ha\"\n")
        .unwrap()
        .config;
    assert_eq!(cfg.offsite.len(), 1);
    let t = &cfg.offsite[0];
    assert_eq!(t.name, "b2_bucket_ha");
    assert_eq!(t.retention.keep_last, 5, "as the store");
    assert!(!t.fail_cycle);
    assert_eq!(t.rclone, Path::new("rclone"));
    let own = load("[[offsite]]\nremote = \"b2:b\"\nkeep_daily = 30\non_failure = \"fail_cycle\"\nbandwidth_limit = \"1MiB\"\n")
        .unwrap()
        .config;
    assert_eq!(own.offsite[0].retention.keep_daily, 30);
    assert_eq!(
        own.offsite[0].retention.keep_last, 0,
        "its own rules replace the store's"
    );
    assert!(own.offsite[0].fail_cycle);
    assert_eq!(own.offsite[0].bandwidth_limit, Some(1 << 20));
    let err = load("[[offsite]]\nname = \"x\"\n").unwrap_err().to_string();
    assert!(
        err.contains("[offsite] remote") && err.contains("rclone config"),
        "{err}"
    );
    let err = load("[[offsite]]\nremote = \"a:\"\non_failure = \"panic\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("on_failure") && err.contains("fail_cycle"),
        "{err}"
    );
    let err = load(
        "[[offsite]]\nremote = \"a:\"\nname = \"s\"\n[[offsite]]\nremote = \"b:\"\nname = \"s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("two [[offsite]] targets"), "{err}");
}

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.s3cr3t-token-body";

#[test]
fn a_syntax_error_on_the_token_line_names_the_line_not_the_token() {
    let dir = tempfile::tempdir().unwrap();
    for body in [
        // A stray word after the value.
        format!("[home_assistant]\nurl = \"http://127.0.0.1:8123\"\ntoken = \"{TOKEN}\" oops\n"),
        // The closing quote forgotten.
        format!("[home_assistant]\nurl = \"http://127.0.0.1:8123\"\ntoken = \"{TOKEN}\n"),
        // Not quoted at all.
        format!("[home_assistant]\nurl = \"http://127.0.0.1:8123\"\ntoken = {TOKEN}\n"),
    ] {
        let err = load_str(dir.path(), &body).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, ConfigError::Parse { .. }), "{text}");
        assert!(!text.contains(TOKEN), "the token was echoed: {text}");
        assert!(
            !text.contains("s3cr3t"),
            "part of the token was echoed: {text}"
        );
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("hapull.toml"), "{text}");
    }
}

#[test]
fn a_secret_of_the_wrong_type_is_not_quoted_back() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_str(
        dir.path(),
        "[home_assistant]\nurl = \"http://127.0.0.1:8123\"\ntoken_file = \"t\"\n\n[backup]\npassword = 80417723991\n",
    )
    .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("80417723991"), "{text}");
    assert!(text.contains("password"), "{text}");
}

#[test]
fn a_bad_webhook_url_names_the_key_and_line_never_the_url() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "abc\n");
    let uuid = "5f2b6c1e-0d5b-4c7a-9f51-2b4c5d6e7f80";
    for url in [
        format!("hc-ping.com/{uuid}"),
        format!("ftp://hc-ping.com/{uuid}"),
        format!("https://user:{uuid}@hc-ping.com/"),
        format!("https://hc-ping.com:99999/{uuid}"),
    ] {
        let err = load_str(
            dir.path(),
            &format!(
                "[home_assistant]\nurl = \"http://127.0.0.1:8123\"\ntoken_file = \"token\"\n\n[notify]\nwebhook_failure = \"{url}\"\n"
            ),
        )
        .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(uuid), "{url}: {text}");
        assert!(text.contains("webhook_failure"), "{text}");
        assert!(text.contains("line 6"), "{text}");
    }
}

#[test]
fn validation_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "abc\n");
    let err = load_str(
        dir.path(),
        "[home_assistant]\nurl = \"http://127.0.0.1:8123\"\ntoken_file = \"token\"\nheartbeat = \"0s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 4: [home_assistant] heartbeat"), "{err}");
}

#[test]
fn an_unencrypted_url_to_another_host_warns_that_the_token_travels_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "abc\n");
    let warnings = |url: &str| {
        load_str(
            dir.path(),
            &format!("[home_assistant]\nurl = \"{url}\"\ntoken_file = \"token\"\n"),
        )
        .unwrap()
        .warnings
        .iter()
        .map(|w| w.to_string())
        .filter(|w| w.contains("in clear"))
        .count()
    };
    assert_eq!(warnings("http://homeassistant.local:8123"), 1);
    assert_eq!(warnings("ws://10.0.0.2:8123/api/websocket"), 1);
    assert_eq!(warnings("http://127.0.0.1:8123"), 0);
    assert_eq!(warnings("http://localhost:8123"), 0);
    assert_eq!(warnings("https://ha.example.org"), 0);
}

#[test]
fn deep_verify_is_off_by_default_and_its_mistakes_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "t");
    let base = "[home_assistant]\nurl = \"http://ha:8123\"\ntoken_file = \"token\"\n[store]\ndir = \"a\"\n";
    let setting = |extra: &str| {
        load_str(dir.path(), &format!("{base}{extra}")).map(|l| l.config.store.unwrap().deep_verify)
    };
    assert_eq!(setting("").unwrap(), DeepVerify::Off);
    assert_eq!(setting("deep_verify = \"off\"\n").unwrap(), DeepVerify::Off);
    assert_eq!(
        setting("deep_verify = \"every_cycle\"\n").unwrap(),
        DeepVerify::EveryCycle
    );
    assert_eq!(
        setting("deep_verify = \"7d\"\n").unwrap(),
        DeepVerify::Every(std::time::Duration::from_secs(7 * 86400))
    );
    assert_eq!(
        setting("deep_verify = \"1week\"\n").unwrap(),
        DeepVerify::Every(std::time::Duration::from_secs(7 * 86400))
    );
    for bad in ["\"weekly\"", "\"0s\"", "\"\""] {
        let e = setting(&format!("deep_verify = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 6: [store] deep_verify:")
                && e.contains("\"every_cycle\"")
                && e.contains("\"7d\""),
            "{bad}: {e}"
        );
    }
    // Not a string at all: the parser names the line and the key.
    let e = setting("deep_verify = 3\n").unwrap_err().to_string();
    assert!(e.contains("line 6") && e.contains("deep_verify"), "{e}");
}

#[test]
fn an_empty_backup_section_means_the_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "t\n");
    let ssh =
        "[ssh]\nhost = \"ha\"\nuser = \"u\"\nidentity_file = \"token\"\nknown_hosts = \"token\"\n";
    let l = load_str(
        dir.path(),
        &format!("[home_assistant]\nurl = \"http://ha:8123\"\ntoken_file = \"token\"\n{ssh}"),
    )
    .unwrap();
    let b = &l.config.backup;
    // As config/hapull.example.toml documents them.
    assert_eq!(b.mode, BackupMode::Api);
    assert_eq!(b.shell_command, "delete_backups");
    assert_eq!(b.name, "hapull");
    assert!(b.include_database && b.password.is_none() && b.agent_id.is_none());
    assert_eq!((b.keep_on_ha, b.prune_foreign), (1, false));
    assert_eq!(b.timeout, std::time::Duration::from_secs(2 * 3600));
    assert_eq!(b.blocked_timeout, std::time::Duration::from_secs(600));
    let ssh = l.config.ssh.as_ref().unwrap();
    assert_eq!((ssh.port, ssh.connections), (22, 2));
    let err = load_str(
        dir.path(),
        &format!(
            "[home_assistant]\nurl = \"http://ha:8123\"\ntoken_file = \"token\"\n{ssh}connections = 5\n",
            ssh = "[ssh]\nhost = \"ha\"\nuser = \"u\"\nidentity_file = \"token\"\nknown_hosts = \"token\"\n"
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("connections") && err.contains("between 1 and 4"),
        "{err}"
    );
}

#[test]
fn ssh_ciphers_are_checked_and_kept_in_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "t\n");
    let with = |line: &str| {
        load_str(
            dir.path(),
            &format!(
                "[home_assistant]\nurl = \"http://ha:8123\"\ntoken_file = \"token\"\n[ssh]\nhost = \"ha\"\n\
                 user = \"u\"\nidentity_file = \"token\"\nknown_hosts = \"token\"\n{line}\n"
            ),
        )
    };
    let l =
        with("ciphers = [\"chacha20-poly1305@openssh.com\", \"aes128-gcm@openssh.com\"]").unwrap();
    assert_eq!(
        l.config.ssh.unwrap().ciphers,
        vec!["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"]
    );
    let l = with("").unwrap();
    assert_eq!(
        l.config.ssh.unwrap().ciphers,
        crate::transfer::CIPHERS.to_vec()
    );
    let err = with("ciphers = [\"3des-cbc\"]").unwrap_err().to_string();
    assert!(
        err.contains("3des-cbc") && err.contains("aes256-gcm@openssh.com"),
        "{err}"
    );
    let err = with("ciphers = []").unwrap_err().to_string();
    assert!(err.contains("at least one"), "{err}");
}

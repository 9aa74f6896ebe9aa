//! `hapull init`: the files a new installation needs, and what to install on the Home Assistant host.
//!
//! Writes a commented `hapull.toml` (the example config with its paths pointed into the chosen folder
//! and the given values filled in), a dedicated ed25519 key pair for the SFTP login, an empty
//! `known_hosts` and the sshd snippet for the Home Assistant host (the same file as
//! `config/sshd/hapull-sftp.conf`), then prints the `authorized_keys` line and what is left to do. It
//! never overwrites a file unless `--force` is given, never contacts Home Assistant or the SSH server,
//! and never writes outside `--dir`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use russh::keys::{Algorithm, PrivateKey, ssh_key::LineEnding};

use super::{EXIT_OK, EXIT_USAGE, Global};

/// The example configuration, every key documented; `init` fills in the paths.
const EXAMPLE_CONFIG: &str = include_str!("../../config/hapull.example.toml");
/// The sshd snippet for the Home Assistant host, for the example's account name.
pub const SSHD_SNIPPET: &str = include_str!("../../config/sshd/hapull-sftp.conf");
/// The folder the example's config-side paths point into.
const EXAMPLE_CONFIG_DIR: &str = "/etc/hapull";
/// The folder the example's data-side paths (store, audit log, state) point into.
const EXAMPLE_DATA_DIR: &str = "/var/lib/hapull";
const EXAMPLE_URL_LINE: &str = "url = \"http://homeassistant.local:8123\"";
const EXAMPLE_HOST_LINE: &str = "host = \"homeassistant.local\"";
const EXAMPLE_PORT_LINE: &str = "# port = 22";
const EXAMPLE_REMOTE_DIR_LINE: &str = "remote_dir = \"/var/lib/hass/backups\"";
const EXAMPLE_TIMEZONE_PREFIX: &str = "# timezone = \"UTC\"";
/// The SFTP account's name on the Home Assistant host, as in the example's `[ssh] user` and the
/// snippet's `Match User` line. Deliberately not a name an OS already uses (Debian has a `backup`).
const SSH_USER: &str = "hapull-sftp";
const SSH_USER_LINE_PREFIX: &str = "user = \"hapull-sftp\"";
const SNIPPET_MATCH_LINE: &str = "Match User hapull-sftp";

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder for hapull.toml, the key pair, known_hosts and the sshd snippet (created if missing).
    #[arg(long, value_name = "DIR", default_value = EXAMPLE_CONFIG_DIR)]
    pub dir: PathBuf,
    /// Folder the config points the store, audit log and state file into.
    #[arg(long, value_name = "DIR", default_value = EXAMPLE_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Home Assistant's URL, for [home_assistant] url.
    #[arg(long, value_name = "URL")]
    pub ha_url: Option<String>,
    /// The Home Assistant host's SSH name or address, for [ssh] host.
    #[arg(long, value_name = "HOST")]
    pub ssh_host: Option<String>,
    /// The Home Assistant host's SSH port, for [ssh] port (default 22).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ssh_port: Option<u16>,
    /// The read-only SFTP account on the Home Assistant host, for [ssh] user and the sshd snippet.
    #[arg(long, value_name = "NAME", default_value = SSH_USER)]
    pub ssh_user: String,
    /// Home Assistant's backups folder as that account sees it, for [ssh] remote_dir
    /// (Home Assistant's config folder + /backups).
    #[arg(long, value_name = "PATH")]
    pub remote_dir: Option<String>,
    /// Time zone of the schedule, for [schedule] timezone (e.g. Europe/Berlin; default UTC).
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// This machine's address as the Home Assistant host sees it, for `from="..."` in authorized_keys.
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Overwrite existing files (the old key pair and known_hosts are lost).
    #[arg(long)]
    pub force: bool,
    /// The kind of Home Assistant install; asked when not given and stdin is a terminal (else core).
    /// `os` (Home Assistant OS, also Supervised) writes a config with [transfer] via = "http" and no
    /// [ssh]; the others use a read-only SFTP account on the HA host.
    #[arg(long, value_enum, value_name = "KIND")]
    pub install: Option<InstallKind>,
}

/// What `hapull init --install` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InstallKind {
    /// Home Assistant OS or Supervised: HA's own download over HTTPS, nothing to install on the HA side.
    #[value(alias = "supervised", alias = "haos")]
    Os,
    /// Home Assistant Core or Container on Linux: a read-only SFTP account.
    #[value(alias = "container")]
    Core,
    /// NixOS running Home Assistant: a read-only SFTP account from config/nixos/ha-host.nix.
    Nixos,
}

/// Asks on the terminal which install this is; core when nothing usable is typed.
fn ask_install() -> InstallKind {
    use std::io::IsTerminal;
    if !io::stdin().is_terminal() {
        return InstallKind::Core;
    }
    print!(
        "Which Home Assistant install is this?\n  os     Home Assistant OS or Supervised (Settings -> System shows a Supervisor)\n  core   Core or Container on Linux\n  nixos  NixOS\n[os/core/nixos, default core]: "
    );
    let _ = io::stdout().flush();
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
    match line.trim().to_ascii_lowercase().as_str() {
        "os" | "haos" | "supervised" => InstallKind::Os,
        "nixos" => InstallKind::Nixos,
        _ => InstallKind::Core,
    }
}

/// Home Assistant OS: the download goes through Home Assistant, so [ssh] is commented out.
fn http_only(config: &str) -> String {
    let mut out = String::with_capacity(config.len());
    let mut in_ssh = false;
    for line in config.lines() {
        if line.starts_with('[') {
            in_ssh = line.trim() == "[ssh]";
        }
        if line.trim() == "# via = \"sftp\"" {
            out.push_str(
                "via = \"http\"                            # Home Assistant OS: no SSH needed\n",
            );
            continue;
        }
        if in_ssh && !line.trim().is_empty() && !line.starts_with('#') {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What `init` writes, by name inside `--dir`.
const CONFIG_NAME: &str = "hapull.toml";
const KEY_NAME: &str = "id_ed25519";
const PUB_NAME: &str = "id_ed25519.pub";
const KNOWN_HOSTS_NAME: &str = "known_hosts";
const SNIPPET_NAME: &str = "hapull-sftp.conf";
const TOKEN_NAME: &str = "ha_token";

/// The values given on the command line that go into the config.
struct Values<'a> {
    ha_url: Option<&'a str>,
    ssh_host: Option<&'a str>,
    ssh_port: Option<u16>,
    ssh_user: &'a str,
    remote_dir: Option<&'a str>,
    timezone: Option<&'a str>,
}

/// Checks the flags before anything is written; the error names the flag, the value and the fix.
fn validate(args: &InitArgs) -> Result<(), String> {
    if let Some(from) = &args.from
        && (from.is_empty() || from.contains(|c: char| c == '"' || c.is_whitespace()))
    {
        return Err(format!(
            "--from {from:?} is not an address pattern; give an address, a host name or a CIDR range like 192.0.2.0/24"
        ));
    }
    let user = &args.ssh_user;
    if user.is_empty()
        || user.starts_with('-')
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "--ssh-user {user:?} is not an account name; use letters, digits, '-', '_' or '.', e.g. {SSH_USER}"
        ));
    }
    if let Some(dir) = &args.remote_dir
        && (!dir.starts_with('/') || dir.chars().any(char::is_control))
    {
        return Err(format!(
            "--remote-dir {dir:?} must be an absolute path on the Home Assistant host, e.g. /home/homeassistant/.homeassistant/backups"
        ));
    }
    if let Some(tz) = &args.timezone
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        return Err(format!(
            "--timezone {tz:?} is not a known time zone; use a name like Europe/Berlin or UTC (`timedatectl list-timezones` lists them)"
        ));
    }
    for (flag, v) in [("--ha-url", &args.ha_url), ("--ssh-host", &args.ssh_host)] {
        if let Some(v) = v
            && (v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "{flag} {v:?} must be a non-empty value without spaces"
            ));
        }
    }
    Ok(())
}

pub async fn run(_global: &Global, args: InitArgs) -> anyhow::Result<ExitCode> {
    if let Err(msg) = validate(&args) {
        eprintln!("hapull: error: {msg}; nothing was written");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    // Paths in the written config must not depend on the folder hapull is later started from.
    let dir = absolute(&args.dir)?;
    let data_dir = absolute(&args.data_dir)?;
    let targets = [
        CONFIG_NAME,
        KEY_NAME,
        PUB_NAME,
        KNOWN_HOSTS_NAME,
        SNIPPET_NAME,
    ]
    .map(|n| dir.join(n));
    if !args.force {
        let existing: Vec<String> = targets
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            let verb = if existing.len() == 1 {
                "exists"
            } else {
                "exist"
            };
            eprintln!(
                "hapull: error: {} already {verb}; nothing was written. Pass --force to replace (the old key pair and known_hosts are lost), or choose another --dir",
                existing.join(", ")
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    }

    let install = args.install.unwrap_or_else(ask_install);
    let values = Values {
        ha_url: args.ha_url.as_deref(),
        ssh_host: args.ssh_host.as_deref(),
        ssh_port: args.ssh_port,
        ssh_user: &args.ssh_user,
        remote_dir: args.remote_dir.as_deref(),
        timezone: args.timezone.as_deref(),
    };
    let mut config = render_config(&dir, &data_dir, &values)?;
    if install == InstallKind::Os {
        config = http_only(&config);
    }
    let snippet = sshd_snippet(&args.ssh_user);
    let comment = format!("hapull@{}", hostname());
    let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .context("generating an ed25519 key pair")?;
    key.set_comment(comment.as_str());
    let private = key
        .to_openssh(LineEnding::LF)
        .context("encoding the private key")?;
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding the public key")?;

    crate::private_fs::create_dir_all(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_file(&dir.join(KEY_NAME), private.as_bytes(), 0o600)?;
    write_file(&dir.join(PUB_NAME), format!("{public}\n").as_bytes(), 0o644)?;
    write_file(&dir.join(KNOWN_HOSTS_NAME), b"", 0o644)?;
    write_file(&dir.join(SNIPPET_NAME), snippet.as_bytes(), 0o644)?;
    write_file(&dir.join(CONFIG_NAME), config.as_bytes(), 0o644)?;
    sync_dir(&dir)?;

    let fingerprint = key.public_key().fingerprint(russh::keys::HashAlg::Sha256);
    let mut out = io::stdout().lock();
    let text = match install {
        InstallKind::Os => os_instructions(&dir, &public),
        InstallKind::Core | InstallKind::Nixos => instructions(
            &dir,
            &public,
            &fingerprint.to_string(),
            args.from.as_deref(),
            &values,
            &snippet,
        ),
    };
    // A closed pipe (`hapull init | head`) is not a failure: the files are written.
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    Ok(ExitCode::from(EXIT_OK))
}

/// The sshd snippet for the account `user`: `config/sshd/hapull-sftp.conf` with its `Match User` line
/// naming that account.
pub fn sshd_snippet(user: &str) -> String {
    SSHD_SNIPPET.replacen(SNIPPET_MATCH_LINE, &format!("Match User {user}"), 1)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// This machine's name, for the key's comment; "localhost" when it cannot be read.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_string())
}

/// A TOML basic string's content for `s` (the surrounding quotes are already in the template).
fn toml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Replaces the one line of the example that starts with `prefix` (comment after it included) by
/// `line`; an error when the example lost that line, so a changed example cannot silently leave a
/// value out.
fn replace_line(text: &str, prefix: &str, line: &str) -> anyhow::Result<String> {
    let mut done = false;
    let mut out = String::with_capacity(text.len() + line.len());
    for l in text.split_inclusive('\n') {
        if !done && l.starts_with(prefix) {
            out.push_str(line);
            out.push('\n');
            done = true;
        } else {
            out.push_str(l);
        }
    }
    if !done {
        anyhow::bail!("the built-in example config has no line starting with {prefix:?}");
    }
    Ok(out)
}

/// The example config with its paths moved into `dir` and `data_dir`, and the given values filled in.
fn render_config(dir: &Path, data_dir: &Path, v: &Values<'_>) -> anyhow::Result<String> {
    let utf8 = |p: &Path| {
        p.to_str()
            .map(|s| s.trim_end_matches('/').to_string())
            .ok_or_else(|| {
                anyhow::anyhow!("{} is not valid UTF-8; choose another folder", p.display())
            })
    };
    let dir_s = toml_escape(&utf8(dir)?);
    let data_s = toml_escape(&utf8(data_dir)?);
    let mut text = EXAMPLE_CONFIG
        .replace(&format!("\"{EXAMPLE_CONFIG_DIR}/"), &format!("\"{dir_s}/"))
        .replace(&format!("\"{EXAMPLE_DATA_DIR}/"), &format!("\"{data_s}/"));
    // The state file's default is under the example's data folder; elsewhere (a container's /data) it
    // must be spelled out, or `hapull run` and `hapull health` would use a folder that may not exist.
    if data_s != EXAMPLE_DATA_DIR {
        text = text.replacen("# state_file = \"", "state_file = \"", 1);
    }
    if let Some(url) = v.ha_url {
        text = replace_line(
            &text,
            EXAMPLE_URL_LINE,
            &format!("url = \"{}\"", toml_escape(url)),
        )?;
    }
    if let Some(host) = v.ssh_host {
        text = replace_line(
            &text,
            EXAMPLE_HOST_LINE,
            &format!("host = \"{}\"", toml_escape(host)),
        )?;
    }
    if let Some(port) = v.ssh_port {
        text = replace_line(&text, EXAMPLE_PORT_LINE, &format!("port = {port}"))?;
    }
    if v.ssh_user != SSH_USER {
        text = replace_line(
            &text,
            SSH_USER_LINE_PREFIX,
            &format!("user = \"{}\"", toml_escape(v.ssh_user)),
        )?;
    }
    if let Some(remote) = v.remote_dir {
        text = replace_line(
            &text,
            EXAMPLE_REMOTE_DIR_LINE,
            &format!("remote_dir = \"{}\"", toml_escape(remote)),
        )?;
    }
    if let Some(tz) = v.timezone {
        text = replace_line(
            &text,
            EXAMPLE_TIMEZONE_PREFIX,
            &format!("timezone = \"{}\"", toml_escape(tz)),
        )?;
    }
    let header = format!(
        "# Written by `hapull init`. The long-lived access token goes into {}/{TOKEN_NAME} (mode 600).\n",
        utf8(dir)?
    );
    Ok(header + &text)
}

/// Writes `contents` under a temporary name, fsyncs it and renames it over `path`, so a crash leaves
/// either the old file or the complete new one, never a torn key. The mode is set at creation, so the
/// private key is never readable by others, not even briefly.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    crate::private_fs::write_atomic_mode(path, contents, mode)
        .with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Home Assistant OS / Supervised: the token is all the HA side needs.
fn os_instructions(dir: &Path, public: &str) -> String {
    let d = dir.display();
    format!(
        r#"Wrote {d}/{CONFIG_NAME} for Home Assistant OS / Supervised: [transfer] via = "http", so hapull downloads
each backup through Home Assistant itself with the token, and no SSH account is needed ([ssh] is commented
out). A key pair {d}/{KEY_NAME} and {d}/{PUB_NAME} is there too, in case you later prefer SFTP.

== In Home Assistant ==

1. The token: as an administrator, your profile -> Security -> Long-lived access tokens -> Create token.
   (The backup API and the download are admin-only.)

   Nothing else to install. Home Assistant streams these downloads without ranges, so a download cut
   mid-way starts over.

   Optional, SFTP instead (a cut download then resumes): install the "Advanced SSH & Web Terminal"
   add-on, set `sftp: true` in its options, add this key to its authorized_keys:

      {public}

   and in {d}/{CONFIG_NAME} set via = "sftp" and uncomment [ssh] with remote_dir = "/backup", the
   add-on's user and port; then `hapull trust-host`.

== On this machine ==

2. Store the token:

      install -m 600 /dev/null {d}/{TOKEN_NAME} && nano {d}/{TOKEN_NAME}

3. Edit {d}/{CONFIG_NAME}: [home_assistant] url (https:// with ca_file if HA uses its own certificate),
   [store] dir, [schedule] timezone. If hapull runs as another user: chown -R hapull: {d}

4. Check everything (it names the install it found), make the first backup, then let it run:

      hapull -c {d}/{CONFIG_NAME} check
      hapull -c {d}/{CONFIG_NAME} once
      systemctl enable --now hapull      # or: docker compose up -d, or NixOS services.hapull.enable
"#
    )
}

/// What the Home Assistant host needs and what is left to do here, in order.
fn instructions(
    dir: &Path,
    public: &str,
    fingerprint: &str,
    from: Option<&str>,
    v: &Values<'_>,
    snippet: &str,
) -> String {
    let d = dir.display();
    let user = v.ssh_user;
    let key_line = match from {
        Some(addr) => format!("restrict,from=\"{addr}\" {public}"),
        None => format!("restrict {public}"),
    };
    let from_hint = match from {
        Some(_) => String::new(),
        None => "   (To accept this key only from this machine, re-run with --from <this machine's address>.)\n"
            .to_string(),
    };
    let config = format!("{d}/{CONFIG_NAME}");
    let c = if config == crate::config::DEFAULT_CONFIG_PATH {
        String::new()
    } else {
        format!(" -c {config}")
    };
    // What the written config still holds as the example's placeholder.
    let mut left = Vec::new();
    if v.ha_url.is_none() {
        left.push(
            "[home_assistant] url is the example's http://homeassistant.local:8123 (--ha-url)"
                .to_string(),
        );
    }
    if v.ssh_host.is_none() {
        left.push("[ssh] host is the example's homeassistant.local (--ssh-host)".to_string());
    }
    if v.remote_dir.is_none() {
        left.push("[ssh] remote_dir is NixOS's /var/lib/hass/backups; set Home Assistant's config folder + /backups (--remote-dir)".to_string());
    }
    if v.timezone.is_none() {
        left.push("[schedule] timezone is UTC (--timezone)".to_string());
    }
    let left = if left.is_empty() {
        "   The config needs no edit: every value it needs was given.\n".to_string()
    } else {
        let mut s = format!(
            "   Still the example's values in {config} (edit them, or re-run init --force with the flag):\n"
        );
        for l in left {
            s.push_str(&format!("     - {l}\n"));
        }
        s
    };
    let snippet_body: String = snippet
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        r#"Wrote {config}, {d}/{KEY_NAME} (mode 600), {d}/{PUB_NAME}, an empty {d}/{KNOWN_HOSTS_NAME}
and {d}/{SNIPPET_NAME} (the sshd settings for the Home Assistant host).
The new key's fingerprint is {fingerprint}.

== On the Home Assistant host, as root (docs/SETUP.md has every command) ==

1. An account `{user}` that may only read backups: in Home Assistant's group, no password, not locked.
2. /etc/ssh/authorized_keys/{user} (root-owned, mode 644) holding this one line:

      {key_line}
{from_hint}
3. {d}/{SNIPPET_NAME} copied to /etc/ssh/sshd_config.d/50-hapull-sftp.conf, then `sshd -t && systemctl reload ssh`:

{snippet_body}
4. Home Assistant's archives group-readable: its umask 0027, `chmod -R g+rX` on the backups folder, and
   group search (g+x) on every folder above it.

== Left to do on this machine ==

{left}   - the token: an administrator's long-lived access token (HA profile -> Security) alone in
       {d}/{TOKEN_NAME}:   install -m 600 /dev/null {d}/{TOKEN_NAME} && nano {d}/{TOKEN_NAME}
   - if hapull runs as its own user (the systemd unit's `hapull`): chown -R hapull:hapull {d}
   - pin the host key: compare the fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`
       on the Home Assistant host, then:   hapull{c} trust-host --write
   - hapull{c} check        # exit 0 = ready
   - hapull{c} once         # the first backup, end to end
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>() -> Values<'a> {
        Values {
            ha_url: None,
            ssh_host: None,
            ssh_port: None,
            ssh_user: SSH_USER,
            remote_dir: None,
            timezone: None,
        }
    }

    #[test]
    fn the_example_still_has_the_lines_init_rewrites() {
        assert!(
            EXAMPLE_CONFIG.contains(&format!("# state_file = \"{EXAMPLE_DATA_DIR}/state.json\""))
        );
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_CONFIG_DIR}/id_ed25519\"")));
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_CONFIG_DIR}/known_hosts\"")));
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_CONFIG_DIR}/{TOKEN_NAME}\"")));
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_DATA_DIR}/archives\"")));
        assert!(SSHD_SNIPPET.contains(&format!("\n{SNIPPET_MATCH_LINE}\n")));
        // Every value flag finds its line (render_config fails otherwise).
        let v = Values {
            ha_url: Some("http://ha:8123"),
            ssh_host: Some("ha"),
            ssh_port: Some(2222),
            ssh_user: "other",
            remote_dir: Some("/x/backups"),
            timezone: Some("Europe/Berlin"),
        };
        render_config(Path::new("/c"), Path::new("/d"), &v).unwrap();
    }

    #[test]
    fn rendered_config_points_into_the_chosen_folders() {
        let mut v = values();
        v.ha_url = Some("https://ha.example:8123");
        v.ssh_host = Some("ha.example");
        let text = render_config(Path::new("/srv/my \"conf\""), Path::new("/data/"), &v).unwrap();
        assert!(!text.contains("\"/etc/hapull/"), "{text}");
        assert!(!text.contains("\"/var/lib/hapull/"), "{text}");
        let raw = crate::config::RawConfig::parse(&text).unwrap();
        let ssh = raw.ssh.unwrap();
        assert_eq!(
            ssh.identity_file.as_deref(),
            Some("/srv/my \"conf\"/id_ed25519")
        );
        assert_eq!(ssh.host.as_deref(), Some("ha.example"));
        assert_eq!(ssh.user.as_deref(), Some(SSH_USER));
        assert_eq!(raw.store.unwrap().dir.as_deref(), Some("/data/archives"));
        assert_eq!(
            raw.schedule.unwrap().state_file.as_deref(),
            Some("/data/state.json")
        );
        assert_eq!(
            raw.home_assistant.unwrap().url.as_deref(),
            Some("https://ha.example:8123")
        );
    }

    #[test]
    fn every_given_value_lands_in_its_key() {
        let v = Values {
            ha_url: Some("http://10.0.0.5:8123"),
            ssh_host: Some("10.0.0.5"),
            ssh_port: Some(2222),
            ssh_user: "sftp-ha",
            remote_dir: Some("/home/homeassistant/.homeassistant/backups"),
            timezone: Some("Europe/Berlin"),
        };
        let text =
            render_config(Path::new("/etc/hapull"), Path::new("/var/lib/hapull"), &v).unwrap();
        let raw = crate::config::RawConfig::parse(&text).unwrap();
        let ssh = raw.ssh.unwrap();
        assert_eq!(ssh.host.as_deref(), Some("10.0.0.5"));
        assert_eq!(ssh.port, Some(2222));
        assert_eq!(ssh.user.as_deref(), Some("sftp-ha"));
        assert_eq!(
            ssh.remote_dir.as_deref(),
            Some("/home/homeassistant/.homeassistant/backups")
        );
        assert_eq!(
            raw.schedule.unwrap().timezone.as_deref(),
            Some("Europe/Berlin")
        );
        assert!(sshd_snippet("sftp-ha").contains("\nMatch User sftp-ha\n"));
        assert_eq!(sshd_snippet(SSH_USER), SSHD_SNIPPET);
    }
}

//! `hapull init`: the files a new installation needs, and what to install on the Home Assistant host.
//!
//! Writes a commented `hapull.toml` (the example config with its paths pointed into the chosen folder),
//! a dedicated ed25519 key pair for the SFTP login and an empty `known_hosts`, then prints the
//! `authorized_keys` line, the sshd block and the permission settings for a read-only SFTP account on
//! the Home Assistant host, and the next commands to run. It never overwrites a file unless `--force`
//! is given, never contacts Home Assistant or the SSH server, and never writes outside `--dir`.

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
/// The folder the example's config-side paths point into.
const EXAMPLE_CONFIG_DIR: &str = "/etc/hapull";
/// The folder the example's data-side paths (store, audit log, state) point into.
const EXAMPLE_DATA_DIR: &str = "/var/lib/hapull";
const EXAMPLE_URL_LINE: &str = "url = \"http://homeassistant.local:8123\"";
const EXAMPLE_HOST_LINE: &str = "host = \"homeassistant.local\"";
/// The SFTP account's name on the Home Assistant host, as in the example's `[ssh] user`.
const SSH_USER: &str = "backup";

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder for hapull.toml, the key pair and known_hosts (created if missing).
    #[arg(long, value_name = "DIR", default_value = EXAMPLE_CONFIG_DIR)]
    pub dir: PathBuf,
    /// Folder the config points the store, audit log and state file into.
    #[arg(long, value_name = "DIR", default_value = EXAMPLE_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Home Assistant's URL to write into [home_assistant] url.
    #[arg(long, value_name = "URL")]
    pub ha_url: Option<String>,
    /// The Home Assistant host's SSH name or address to write into [ssh] host.
    #[arg(long, value_name = "HOST")]
    pub ssh_host: Option<String>,
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
const TOKEN_NAME: &str = "ha_token";

pub async fn run(_global: &Global, args: InitArgs) -> anyhow::Result<ExitCode> {
    if let Some(from) = &args.from
        && (from.is_empty() || from.contains(|c: char| c == '"' || c.is_whitespace()))
    {
        eprintln!(
            "hapull: error: --from {from:?} is not an address pattern; give an address, a host name or a CIDR range like 192.0.2.0/24"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    // Paths in the written config must not depend on the folder hapull is later started from.
    let dir = absolute(&args.dir)?;
    let data_dir = absolute(&args.data_dir)?;
    let targets = [CONFIG_NAME, KEY_NAME, PUB_NAME, KNOWN_HOSTS_NAME].map(|n| dir.join(n));
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
    let mut config = render_config(
        &dir,
        &data_dir,
        args.ha_url.as_deref(),
        args.ssh_host.as_deref(),
    )?;
    if install == InstallKind::Os {
        config = http_only(&config);
    }
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
        ),
    };
    // A closed pipe (`hapull init | head`) is not a failure: the files are written.
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    Ok(ExitCode::from(EXIT_OK))
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

/// The example config with its paths moved into `dir` and `data_dir`, and the URL and host filled in
/// when given.
fn render_config(
    dir: &Path,
    data_dir: &Path,
    ha_url: Option<&str>,
    ssh_host: Option<&str>,
) -> anyhow::Result<String> {
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
    if let Some(url) = ha_url {
        text = text.replacen(
            EXAMPLE_URL_LINE,
            &format!("url = \"{}\"", toml_escape(url)),
            1,
        );
    }
    if let Some(host) = ssh_host {
        text = text.replacen(
            EXAMPLE_HOST_LINE,
            &format!("host = \"{}\"", toml_escape(host)),
            1,
        );
    }
    let header = format!(
        "# Written by `hapull init`. Before the first run: set [home_assistant] url and [ssh] host, and put a\n\
         # long-lived access token into {}/{TOKEN_NAME} (chmod 600).\n",
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

/// Everything to do next, on the Home Assistant host and here.
fn instructions(dir: &Path, public: &str, fingerprint: &str, from: Option<&str>) -> String {
    let d = dir.display();
    let user = SSH_USER;
    let key_line = match from {
        Some(addr) => format!("restrict,from=\"{addr}\" {public}"),
        None => format!("restrict {public}"),
    };
    let from_hint = match from {
        Some(_) => String::new(),
        None => format!(
            "   To accept this key only from this machine, put its address in front (or re-run with --from):\n\
             \x20     restrict,from=\"192.0.2.10\" {public}\n"
        ),
    };
    format!(
        r#"Wrote {d}/{CONFIG_NAME}, {d}/{KEY_NAME} (mode 600), {d}/{PUB_NAME} and an empty {d}/{KNOWN_HOSTS_NAME}.
The new key's fingerprint is {fingerprint}.

== On the Home Assistant host (as root) ==

1. A user that may only read backups, in Home Assistant's group:

      id {user} >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {user}
      usermod -aG hass {user}
      usermod -p '*' {user}      # no password, but not locked: sshd refuses locked accounts even with a key

   (NixOS: users.users.{user} = {{ isSystemUser = true; group = "hass";
    openssh.authorizedKeys.keys = [ "<the line from step 2>" ]; }};  see config/nixos/ in hapull's sources.)

2. Its authorized_keys file, /etc/ssh/authorized_keys/{user} (owned by root, mode 644), with this one line.
   `restrict` turns off forwarding, the terminal and ~/.ssh/rc for this key:

      {key_line}

{from_hint}
3. In /etc/ssh/sshd_config (at the end: a Match block runs to the end of the file or the next Match):

      Match User {user}
          AuthorizedKeysFile /etc/ssh/authorized_keys/%u
          ForceCommand internal-sftp -R
          AuthenticationMethods publickey
          AllowTcpForwarding no
          X11Forwarding no
          PermitTTY no

   `internal-sftp -R` serves SFTP read-only: the account can read the backups and change nothing.
   Stricter, with a chroot: bind-mount the backups folder read-only into an empty folder and lock the
   account in there. ChrootDirectory and every folder above it must be owned by root and not writable by
   group or others (sshd refuses the login otherwise), so /var/lib/hass itself cannot be the chroot:

      install -d -o root -g root -m 755 /srv/hapull-sftp /srv/hapull-sftp/backups
      mount --bind -o ro /var/lib/hass/backups /srv/hapull-sftp/backups   # and an /etc/fstab line:
      # /var/lib/hass/backups  /srv/hapull-sftp/backups  none  bind,ro  0 0

      Match User {user}
          AuthorizedKeysFile /etc/ssh/authorized_keys/%u
          ChrootDirectory /srv/hapull-sftp
          ForceCommand internal-sftp -R -d /backups
          AuthenticationMethods publickey
          AllowTcpForwarding no
          X11Forwarding no
          PermitTTY no

   and here set [ssh] remote_dir = "/backups". Then: sshd -t && systemctl reload ssh (NixOS: sshd).

4. Let the group read the backups. Home Assistant writes archives with its umask; make it 0027 so its
   group may read them (systemd: `systemctl edit home-assistant`, add):

      [Service]
      UMask=0027

   and once, for the archives that already exist:

      chmod g+rX /var/lib/hass /var/lib/hass/backups
      chmod -R g+rX /var/lib/hass/backups

   (Adjust the path: Home Assistant OS/Container keep backups in <config>/backups.) Mind the case:
   the widely copied `chmod -r g+rx` is not recursive. `-r` means "remove read", so it takes read
   permission away from everyone. Use `-R`.

== On this machine ==

5. The token: in Home Assistant, your profile -> Security -> Long-lived access tokens -> Create token
   (an administrator's: the backup API is admin-only), then:

      install -m 600 /dev/null {d}/{TOKEN_NAME} && nano {d}/{TOKEN_NAME}

6. Edit {d}/{CONFIG_NAME}: [home_assistant] url, [ssh] host, [store] dir, [schedule] timezone.
   If hapull runs as another user (the systemd unit's `hapull`, uid 10001 in the container image):
      chown -R hapull: {d}

7. Pin the Home Assistant host's SSH key, compare its fingerprint with the one on that host
   (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), and add the printed line to {d}/{KNOWN_HOSTS_NAME}:

      hapull -c {d}/{CONFIG_NAME} trust-host

8. Check everything, make the first backup, then let it run on its schedule:

      hapull -c {d}/{CONFIG_NAME} check
      hapull -c {d}/{CONFIG_NAME} once
      systemctl enable --now hapull      # or: docker compose up -d, or NixOS services.hapull.enable
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_still_has_the_lines_init_rewrites() {
        assert!(
            EXAMPLE_CONFIG.contains(&format!("# state_file = \"{EXAMPLE_DATA_DIR}/state.json\""))
        );
        assert!(EXAMPLE_CONFIG.contains(EXAMPLE_URL_LINE));
        assert!(EXAMPLE_CONFIG.contains(EXAMPLE_HOST_LINE));
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_CONFIG_DIR}/id_ed25519\"")));
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_CONFIG_DIR}/known_hosts\"")));
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_CONFIG_DIR}/{TOKEN_NAME}\"")));
        assert!(EXAMPLE_CONFIG.contains(&format!("\"{EXAMPLE_DATA_DIR}/archives\"")));
        assert!(EXAMPLE_CONFIG.contains(&format!("user = \"{SSH_USER}\"")));
    }

    #[test]
    fn rendered_config_points_into_the_chosen_folders() {
        let text = render_config(
            Path::new("/srv/my \"conf\""),
            Path::new("/data/"),
            Some("https://ha.example:8123"),
            Some("ha.example"),
        )
        .unwrap();
        assert!(!text.contains("\"/etc/hapull/"), "{text}");
        assert!(!text.contains("\"/var/lib/hapull/"), "{text}");
        let raw = crate::config::RawConfig::parse(&text).unwrap();
        let ssh = raw.ssh.unwrap();
        assert_eq!(
            ssh.identity_file.as_deref(),
            Some("/srv/my \"conf\"/id_ed25519")
        );
        assert_eq!(ssh.host.as_deref(), Some("ha.example"));
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
}

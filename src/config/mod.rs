//! Configuration: one TOML file, read into a raw shape ([`raw`]) that mirrors the file exactly and rejects
//! unknown keys, then validated once into the runtime [`Config`] the rest of the program uses.
//!
//! Validation happens here and nowhere else: URL schemes, durations, sizes, that files exist and are
//! readable, where secrets come from. Other modules receive checked values and never see raw TOML.
//! This module reads secrets from files or the environment but never logs them.

mod raw;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ha::Endpoint;
use crate::secret::Secret;
pub use crate::transfer::HostKeyPolicy;

pub use raw::RawConfig;

/// Where `hapull` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hapull/hapull.toml";

/// A configuration error: always names the file, the key and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {error} (give another with --config or HAPULL_CONFIG; `hapull init` writes one)",
        path = path.display()
    )]
    Read { path: PathBuf, error: io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {at}[{section}] {key}: {message}", at = at_line(*line))]
    Invalid {
        path: PathBuf,
        /// The line that sets the key, when it is in the file.
        line: Option<usize>,
        section: &'static str,
        key: &'static str,
        message: String,
    },
    #[error(
        "{path}: section [{section}] is required for this command; see config/hapull.example.toml"
    )]
    MissingSection {
        path: PathBuf,
        section: &'static str,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// The line of `text` that sets `key` in `[section]`, if one does.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            current = name.trim().to_string();
            continue;
        }
        if current == section && raw::line_key(t) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

/// A non-fatal problem found while loading, reported to the user as a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub String);

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub home_assistant: HomeAssistant,
    pub transfer: Transfer,
    pub ssh: Option<Ssh>,
    pub backup: Backup,
    pub schedule: Schedule,
    pub store: Option<Store>,
    pub audit: Option<Audit>,
    pub notify: Notify,
    pub status: Status,
    /// `[[offsite]]` targets, in file order.
    pub offsite: Vec<crate::offsite::TargetConfig>,
}

/// How archives come from Home Assistant to this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// SFTP from the HA host's backups folder (`[ssh]`).
    Sftp,
    /// Home Assistant's own download (`/api/backup/download`) with the token; no `[ssh]`.
    Http,
}

#[derive(Debug, Clone)]
pub struct Transfer {
    pub via: Via,
    /// Throttle for `via = "http"` in bytes per second (SFTP uses `[ssh] bandwidth_limit`).
    pub bandwidth_limit: Option<u64>,
    /// Limit for connecting and for silences while downloading over HTTP.
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HomeAssistant {
    pub endpoint: Endpoint,
    pub token: Secret,
    pub ca_file: Option<PathBuf>,
    pub request_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_message_size: usize,
}

#[derive(Debug, Clone)]
pub struct Ssh {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    pub passphrase: Option<Secret>,
    pub host_keys: HostKeyPolicy,
    pub remote_dir: String,
    pub bandwidth_limit: Option<u64>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum BackupMode {
    /// `backup/generate` (Home Assistant 2025.1 and later).
    Api,
    /// The recipe's service calls: `shell_command.<name>` then `backup.create`.
    Service,
}

#[derive(Debug, Clone)]
pub struct Backup {
    pub mode: BackupMode,
    pub shell_command: String,
    /// The agent that keeps HA's local copies; `None`: ask HA (`backup.local` or `hassio.local`).
    pub agent_id: Option<String>,
    pub name: String,
    pub include_database: bool,
    pub password: Option<Secret>,
    pub keep_on_ha: u32,
    pub prune_foreign: bool,
    pub timeout: Duration,
    pub blocked_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: String,
    pub timezone: String,
    pub jitter: Duration,
    pub run_on_start: bool,
    /// Where the daemon remembers its last runs (also read by `hapull health`).
    pub state_file: PathBuf,
    /// How long a running cycle may go on after SIGTERM before it is cut (leaving a resumable partial).
    pub shutdown_grace: Duration,
    /// A cycle that failed for a transient reason is retried after `retry_min`, then doubling waits
    /// up to `retry_max` (each stretched by jitter), until the next scheduled run.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum VerifyLevel {
    Full,
    Structure,
}

impl BackupMode {
    /// The name used in the config file, logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Api => "api",
            BackupMode::Service => "service",
        }
    }
}

impl TryFrom<String> for BackupMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "api" => Ok(BackupMode::Api),
            "service" => Ok(BackupMode::Service),
            other => Err(format!(
                "{other:?} is not a mode; use \"api\" or \"service\""
            )),
        }
    }
}

impl TryFrom<String> for VerifyLevel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "full" => Ok(VerifyLevel::Full),
            "structure" => Ok(VerifyLevel::Structure),
            other => Err(format!(
                "{other:?} is not a level; use \"full\" or \"structure\""
            )),
        }
    }
}

impl VerifyLevel {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyLevel::Full => "full",
            VerifyLevel::Structure => "structure",
        }
    }
}

/// Local retention, with restic's semantics (see [`crate::store::retention`]).
pub use crate::store::RetentionPolicy as Retention;

#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub verify: VerifyLevel,
    pub retention: Retention,
}

#[derive(Debug, Clone)]
pub struct Audit {
    pub path: PathBuf,
    pub instance: String,
    pub record_events: Vec<String>,
    /// Only events whose `data.domain` is one of these (empty: any).
    pub record_domains: Vec<String>,
    /// Only events whose `data.entity_id` is one of these (empty: any).
    pub record_entity_ids: Vec<String>,
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    pub compress_rotated: bool,
}

#[derive(Debug, Clone)]
pub struct Notify {
    pub home_assistant: bool,
    pub webhook_success: Option<String>,
    pub webhook_failure: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub listen: Option<std::net::SocketAddr>,
    pub max_age: Duration,
}

/// The result of loading: the config and the warnings to show.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let raw = RawConfig::parse(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })?;
    let mode = fs::metadata(path).map(|m| m.permissions().mode()).ok();
    validate(raw, path, mode, &|name| std::env::var(name).ok()).map_err(|e| match e {
        ConfigError::Invalid {
            path,
            line: None,
            section,
            key,
            message,
        } => ConfigError::Invalid {
            line: line_of(&text, section, key),
            path,
            section,
            key,
            message,
        },
        other => other,
    })
}

/// Validates a parsed file. `file_mode` is the config file's permission bits (for the "readable by
/// others" warning); `env` looks environment variables up (a parameter so tests need not mutate the
/// process environment).
pub fn validate(
    raw: RawConfig,
    path: &Path,
    file_mode: Option<u32>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut v = Validator {
        path,
        base: path.parent().unwrap_or(Path::new(".")),
        warnings: Vec::new(),
        inline_secret: false,
        env,
    };
    let ha = raw.home_assistant.ok_or(ConfigError::MissingSection {
        path: path.to_path_buf(),
        section: "home_assistant",
    })?;
    let home_assistant = v.home_assistant(ha)?;
    let transfer = v.transfer(raw.transfer.unwrap_or_default())?;
    let ssh = raw.ssh.map(|s| v.ssh(s)).transpose()?;
    if transfer.via == Via::Http && ssh.is_some() {
        v.warn(format!(
            "{}: [ssh] is not used with [transfer] via = \"http\"; remove it or set via = \"sftp\"",
            path.display()
        ));
    }
    let backup = v.backup(raw.backup.unwrap_or_default())?;
    let schedule = v.schedule(raw.schedule.unwrap_or_default())?;
    let store = raw.store.map(|s| v.store(s)).transpose()?;
    let audit = raw.audit.map(|a| v.audit(a)).transpose()?;
    let notify = v.notify(raw.notify.unwrap_or_default())?;
    let status = v.status(raw.status.unwrap_or_default())?;
    let store_retention = store.as_ref().map(|s| s.retention).unwrap_or_default();
    let mut offsite = Vec::new();
    for o in raw.offsite.unwrap_or_default() {
        let t = v.offsite(o, store_retention)?;
        if offsite
            .iter()
            .any(|x: &crate::offsite::TargetConfig| x.name == t.name)
        {
            return Err(v.err(
                "offsite",
                "name",
                format!(
                    "two [[offsite]] targets are named {:?}; give each its own `name`",
                    t.name
                ),
            ));
        }
        offsite.push(t);
    }
    if v.inline_secret
        && let Some(mode) = file_mode
        && mode & 0o077 != 0
    {
        v.warn(format!(
            "{} holds a secret and is readable by other users (mode {:o}); run `chmod 600 {}` or move the secret to a *_file",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    Ok(Loaded {
        config: Config {
            path: path.to_path_buf(),
            home_assistant,
            transfer,
            ssh,
            backup,
            schedule,
            store,
            audit,
            notify,
            status,
            offsite,
        },
        warnings: v.warnings,
    })
}

struct Validator<'a> {
    path: &'a Path,
    base: &'a Path,
    warnings: Vec<ConfigWarning>,
    inline_secret: bool,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn err(
        &self,
        section: &'static str,
        key: &'static str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: None,
            section,
            key,
            message: message.into(),
        }
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(ConfigWarning(message));
    }

    /// Relative paths in the file are relative to the file's own folder, as users expect.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn readable_file(
        &self,
        section: &'static str,
        key: &'static str,
        p: &str,
    ) -> Result<PathBuf, ConfigError> {
        let path = self.resolve(p);
        match fs::File::open(&path) {
            Ok(f) => match f.metadata() {
                Ok(m) if m.is_file() => Ok(path),
                Ok(_) => Err(self.err(
                    section,
                    key,
                    format!("{} is not a regular file", path.display()),
                )),
                Err(e) => {
                    Err(self.err(section, key, format!("cannot stat {}: {e}", path.display())))
                }
            },
            Err(e) => Err(self.err(section, key, format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn duration(
        &self,
        section: &'static str,
        key: &'static str,
        s: &str,
    ) -> Result<Duration, ConfigError> {
        humantime::parse_duration(s.trim()).map_err(|e| {
            self.err(
                section,
                key,
                format!("{s:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"2h\""),
            )
        })
    }

    /// A secret from exactly one of: `<key>_file`, `<key>_env`, inline `<key>`.
    #[allow(clippy::too_many_arguments)]
    fn secret(
        &mut self,
        section: &'static str,
        key: &'static str,
        file_key: &'static str,
        env_key: &'static str,
        file: Option<String>,
        env: Option<String>,
        inline: Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        let count = [file.is_some(), env.is_some(), inline.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if count > 1 {
            return Err(self.err(
                section,
                key,
                format!("set only one of `{file_key}`, `{env_key}` and `{key}`"),
            ));
        }
        if let Some(f) = file {
            let path = self.readable_file(section, file_key, &f)?;
            let text = fs::read_to_string(&path).map_err(|e| {
                self.err(
                    section,
                    file_key,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let secret = Secret::new(text.trim());
            if secret.is_empty() {
                return Err(self.err(section, file_key, format!("{} is empty", path.display())));
            }
            if let Some(bits) = crate::private_fs::exposed_bits(&path).filter(|b| *b != 0) {
                self.warn(format!(
                    "[{section}] {file_key}: {} can be read or changed by its group or others (permission bits {bits:03o} \
                     beyond the owner's); the secret in it is exposed. Run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
            return Ok(Some(secret));
        }
        if let Some(name) = env {
            let value = (self.env)(&name).ok_or_else(|| {
                self.err(
                    section,
                    env_key,
                    format!("environment variable {name} is not set (or not valid UTF-8)"),
                )
            })?;
            let secret = Secret::new(value.trim());
            if secret.is_empty() {
                return Err(self.err(
                    section,
                    env_key,
                    format!("environment variable {name} is empty"),
                ));
            }
            return Ok(Some(secret));
        }
        if let Some(value) = inline {
            self.inline_secret = true;
            self.warn(format!(
                "[{section}] {key} is written inline in {}; prefer `{file_key}` or `{env_key}` so the config can be shared without the secret",
                self.path.display()
            ));
            let secret = Secret::new(value.trim());
            if secret.is_empty() {
                return Err(self.err(section, key, "is empty"));
            }
            return Ok(Some(secret));
        }
        Ok(None)
    }

    fn home_assistant(&mut self, r: raw::HomeAssistant) -> Result<HomeAssistant, ConfigError> {
        const S: &str = "home_assistant";
        let url = r.url.ok_or_else(|| {
            self.err(
                S,
                "url",
                "is required, e.g. \"http://homeassistant.local:8123\"",
            )
        })?;
        let endpoint = Endpoint::parse(&url).map_err(|e| self.err(S, "url", e.to_string()))?;
        let token = self
            .secret(S, "token", "token_file", "token_env", r.token_file, r.token_env, r.token)?
            .ok_or_else(|| {
                self.err(
                    S,
                    "token_file",
                    "no access token: set `token_file` (a file holding a long-lived access token made in your Home Assistant profile) or `token_env`",
                )
            })?;
        let ca_file = r
            .ca_file
            .map(|p| self.readable_file(S, "ca_file", &p))
            .transpose()?;
        if !endpoint.is_tls() && !endpoint.is_loopback() {
            self.warn(format!(
                "[{S}] url {endpoint} is not encrypted and not on this machine: the access token (an \
                 administrator's credential) and the backup password travel in clear over the network; \
                 use https:// (e.g. through a reverse proxy) or reach Home Assistant over a trusted link"
            ));
        }
        if ca_file.is_some() && !endpoint.is_tls() {
            self.warn(format!(
                "[{S}] ca_file is set but url {url} does not use TLS; the CA file is ignored"
            ));
        }
        let request_timeout = self.duration(
            S,
            "request_timeout",
            r.request_timeout.as_deref().unwrap_or("30s"),
        )?;
        let heartbeat_interval =
            self.duration(S, "heartbeat", r.heartbeat.as_deref().unwrap_or("30s"))?;
        if heartbeat_interval < Duration::from_secs(1) {
            return Err(self.err(S, "heartbeat", "must be at least 1s"));
        }
        let max_message_size = match r.max_message_size {
            Some(s) => parse_size(&s).map_err(|e| self.err(S, "max_message_size", e))?,
            None => 16 * 1024 * 1024,
        };
        Ok(HomeAssistant {
            endpoint,
            token,
            ca_file,
            request_timeout,
            heartbeat_interval,
            max_message_size: usize::try_from(max_message_size).unwrap_or(usize::MAX),
        })
    }

    fn ssh(&mut self, r: raw::Ssh) -> Result<Ssh, ConfigError> {
        const S: &str = "ssh";
        let host = r
            .host
            .ok_or_else(|| self.err(S, "host", "is required: the Home Assistant host"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(self.err(S, "host", format!("{host:?} is not a host name")));
        }
        let user = r.user.unwrap_or_else(|| "hapull-sftp".to_string());
        let identity_file = self.readable_file(
            S,
            "identity_file",
            r.identity_file.as_deref().ok_or_else(|| {
                self.err(
                    S,
                    "identity_file",
                    "is required: the private key hapull logs in with (`hapull init` makes one)",
                )
            })?,
        )?;
        let passphrase = self.secret(
            S,
            "passphrase",
            "passphrase_file",
            "passphrase_env",
            r.passphrase_file,
            r.passphrase_env,
            r.passphrase,
        )?;
        let host_keys = match (r.known_hosts, r.host_key) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    S,
                    "host_key",
                    "set either `known_hosts` or `host_key`, not both",
                ));
            }
            (Some(kh), None) => {
                let path = self.resolve(&kh);
                let tofu = r.trust_on_first_use.unwrap_or(false);
                // A missing file is only acceptable when the user asked to learn the key on first use.
                if !tofu {
                    self.readable_file(S, "known_hosts", &kh)?;
                }
                HostKeyPolicy::KnownHosts {
                    path,
                    trust_on_first_use: tofu,
                }
            }
            (None, Some(keys)) => {
                let keys = keys.into_vec();
                for k in &keys {
                    if !k.starts_with("SHA256:") || k.len() < 20 {
                        return Err(self.err(
                            S,
                            "host_key",
                            format!("{k:?} is not a SHA256 fingerprint; run `hapull trust-host` to see the server's"),
                        ));
                    }
                }
                if r.trust_on_first_use == Some(true) {
                    return Err(self.err(
                        S,
                        "trust_on_first_use",
                        "only applies with `known_hosts`",
                    ));
                }
                HostKeyPolicy::Pinned(keys)
            }
            (None, None) => {
                return Err(self.err(
                    S,
                    "known_hosts",
                    "the host key must be verified: set `known_hosts` (a file) or `host_key = \"SHA256:...\"`; `hapull trust-host` shows the key",
                ));
            }
        };
        let remote_dir = r
            .remote_dir
            .unwrap_or_else(|| "/var/lib/hass/backups".to_string());
        if !remote_dir.starts_with('/') {
            return Err(self.err(
                S,
                "remote_dir",
                format!("{remote_dir:?} must be an absolute path"),
            ));
        }
        let bandwidth_limit = r
            .bandwidth_limit
            .map(|s| parse_size(&s).map_err(|e| self.err(S, "bandwidth_limit", e)))
            .transpose()?;
        let connect_timeout = self.duration(
            S,
            "connect_timeout",
            r.connect_timeout.as_deref().unwrap_or("30s"),
        )?;
        Ok(Ssh {
            host,
            port: r.port.unwrap_or(22),
            user,
            identity_file,
            passphrase,
            host_keys,
            remote_dir,
            bandwidth_limit,
            connect_timeout,
        })
    }

    fn transfer(&mut self, r: raw::Transfer) -> Result<Transfer, ConfigError> {
        const S: &str = "transfer";
        let via = match r.via.as_deref().unwrap_or("sftp") {
            "sftp" => Via::Sftp,
            "http" | "https" => Via::Http,
            other => {
                return Err(self.err(
                    S,
                    "via",
                    format!("{other:?} is not a transport; use \"sftp\" or \"http\""),
                ));
            }
        };
        let bandwidth_limit = r
            .bandwidth_limit
            .map(|s| parse_size(&s).map_err(|e| self.err(S, "bandwidth_limit", e)))
            .transpose()?;
        Ok(Transfer {
            via,
            bandwidth_limit,
            connect_timeout: self.duration(
                S,
                "connect_timeout",
                r.connect_timeout.as_deref().unwrap_or("30s"),
            )?,
        })
    }

    fn backup(&mut self, r: raw::Backup) -> Result<Backup, ConfigError> {
        const S: &str = "backup";
        let mode = r.mode.unwrap_or(BackupMode::Api);
        let shell_command = r
            .shell_command
            .unwrap_or_else(|| "delete_backups".to_string());
        if shell_command.is_empty()
            || !shell_command
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(self.err(
                S,
                "shell_command",
                format!("{shell_command:?} is not a service name (letters, digits, _)"),
            ));
        }
        let password = self.secret(
            S,
            "password",
            "password_file",
            "password_env",
            r.password_file,
            r.password_env,
            r.password,
        )?;
        if let Some(agent) = &r.agent_id
            && (agent.is_empty()
                || !agent
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(self.err(
                S,
                "agent_id",
                format!("{agent:?} is not an agent id (e.g. \"backup.local\" or \"hassio.local\"; `hapull check` lists them)"),
            ));
        }
        let name = r.name.unwrap_or_else(|| "hapull".to_string());
        if name.trim().is_empty() {
            return Err(self.err(S, "name", "must not be empty"));
        }
        Ok(Backup {
            mode,
            shell_command,
            agent_id: r.agent_id,
            name,
            include_database: r.include_database.unwrap_or(true),
            password,
            keep_on_ha: r.keep_on_ha.unwrap_or(1),
            prune_foreign: r.prune_foreign.unwrap_or(false),
            timeout: self.duration(S, "timeout", r.timeout.as_deref().unwrap_or("2h"))?,
            blocked_timeout: self.duration(
                S,
                "blocked_timeout",
                r.blocked_timeout.as_deref().unwrap_or("10m"),
            )?,
        })
    }

    fn schedule(&mut self, r: raw::Schedule) -> Result<Schedule, ConfigError> {
        const S: &str = "schedule";
        let timezone = r.timezone.unwrap_or_else(|| "UTC".to_string());
        if jiff::tz::TimeZone::get(&timezone).is_err() {
            return Err(self.err(
                S,
                "timezone",
                format!("{timezone:?} is not a known time zone (e.g. \"Europe/Berlin\", \"UTC\")"),
            ));
        }
        let cron = r.cron.unwrap_or_else(|| "5 * * * *".to_string());
        if let Ok(tz) = jiff::tz::TimeZone::get(&timezone)
            && let Err(e) = crate::daemon::Schedule::parse(&cron, tz)
        {
            return Err(self.err(S, "cron", format!("{cron:?}: {e}")));
        }
        let retry_min = self.duration(S, "retry_min", r.retry_min.as_deref().unwrap_or("15s"))?;
        let retry_max = self.duration(S, "retry_max", r.retry_max.as_deref().unwrap_or("5m"))?;
        if retry_min.is_zero() {
            return Err(self.err(S, "retry_min", "must be more than 0s, e.g. \"15s\""));
        }
        if retry_max < retry_min {
            return Err(self.err(
                S,
                "retry_max",
                format!(
                    "is shorter than retry_min ({}); the longest wait between retries cannot be shorter than the first",
                    humantime::format_duration(retry_min)
                ),
            ));
        }
        Ok(Schedule {
            cron,
            timezone,
            jitter: self.duration(S, "jitter", r.jitter.as_deref().unwrap_or("0s"))?,
            run_on_start: r.run_on_start.unwrap_or(false),
            state_file: self.resolve(
                r.state_file
                    .as_deref()
                    .unwrap_or("/var/lib/hapull/state.json"),
            ),
            shutdown_grace: self.duration(
                S,
                "shutdown_grace",
                r.shutdown_grace.as_deref().unwrap_or("2m"),
            )?,
            retry_min,
            retry_max,
        })
    }

    fn store(&mut self, r: raw::Store) -> Result<Store, ConfigError> {
        let dir = self.resolve(r.dir.as_deref().unwrap_or("/var/lib/hapull/archives"));
        let verify = r.verify.unwrap_or(VerifyLevel::Full);
        Ok(Store {
            dir,
            verify,
            retention: Retention {
                keep_last: r.keep_last.unwrap_or(0),
                keep_hourly: r.keep_hourly.unwrap_or(0),
                keep_daily: r.keep_daily.unwrap_or(0),
                keep_weekly: r.keep_weekly.unwrap_or(0),
                keep_monthly: r.keep_monthly.unwrap_or(0),
                keep_yearly: r.keep_yearly.unwrap_or(0),
            },
        })
    }

    fn audit(&mut self, r: raw::Audit) -> Result<Audit, ConfigError> {
        const S: &str = "audit";
        let path = self.resolve(r.path.as_deref().unwrap_or("/var/lib/hapull/audit.jsonl"));
        for t in &r.record_events.clone().unwrap_or_default() {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(self.err(S, "record_events", format!("{t:?} is not an event type")));
            }
        }
        Ok(Audit {
            path,
            instance: r.instance.unwrap_or_else(|| "hapull".to_string()),
            record_events: r.record_events.unwrap_or_default(),
            record_domains: r.record_domains.unwrap_or_default(),
            record_entity_ids: r.record_entity_ids.unwrap_or_default(),
            max_bytes: r
                .max_bytes
                .map(|s| parse_size(&s).map_err(|e| self.err(S, "max_bytes", e)))
                .transpose()?,
            max_age: r
                .max_age
                .map(|s| self.duration(S, "max_age", &s))
                .transpose()?,
            compress_rotated: r.compress_rotated.unwrap_or(false),
        })
    }

    fn notify(&mut self, r: raw::Notify) -> Result<Notify, ConfigError> {
        const S: &str = "notify";
        for (key, url) in [
            ("webhook_success", &r.webhook_success),
            ("webhook_failure", &r.webhook_failure),
        ] {
            // The URL itself is never repeated: a ping URL is a secret (it holds the check's id).
            if let Some(u) = url
                && let Err(e) = crate::daemon::WebhookUrl::parse(key, u)
            {
                let reason = match e {
                    crate::daemon::NotifyError::InvalidUrl { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(self.err(
                    S,
                    key,
                    format!("not a usable webhook URL (value not shown): {reason}"),
                ));
            }
        }
        Ok(Notify {
            home_assistant: r.home_assistant.unwrap_or(true),
            webhook_success: r.webhook_success,
            webhook_failure: r.webhook_failure,
        })
    }

    fn status(&mut self, r: raw::Status) -> Result<Status, ConfigError> {
        const S: &str = "status";
        let listen = r
            .listen
            .map(|l| {
                l.parse().map_err(|_| {
                    self.err(
                        S,
                        "listen",
                        format!("{l:?} is not an address:port, e.g. \"127.0.0.1:9180\""),
                    )
                })
            })
            .transpose()?;
        Ok(Status {
            listen,
            max_age: self.duration(S, "max_age", r.max_age.as_deref().unwrap_or("3h"))?,
        })
    }
}

impl Validator<'_> {
    fn offsite(
        &mut self,
        r: raw::Offsite,
        store: Retention,
    ) -> Result<crate::offsite::TargetConfig, ConfigError> {
        const S: &str = "offsite";
        let remote = r.remote.ok_or_else(|| {
            self.err(
                S,
                "remote",
                "is required: an rclone remote and path, e.g. \"b2:home-backups/ha\" (see `rclone config`)",
            )
        })?;
        if remote.trim().is_empty() || remote.contains(['\n', '\r']) {
            return Err(self.err(S, "remote", format!("{remote:?} is not an rclone remote")));
        }
        let name = r
            .name
            .unwrap_or_else(|| crate::offsite::default_name(&remote));
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(self.err(
                S,
                "name",
                format!("{name:?}: use letters, digits, '-', '_' and '.' (at most 64)"),
            ));
        }
        // A bare program name is looked up on PATH when run; a path is relative to the config file.
        let rclone = match r.rclone {
            Some(p) if p.contains('/') => self.resolve(&p),
            Some(p) => PathBuf::from(p),
            None => PathBuf::from("rclone"),
        };
        let rclone_config = r
            .config
            .map(|p| self.readable_file(S, "config", &p))
            .transpose()?;
        let any_keep = [
            r.keep_last,
            r.keep_hourly,
            r.keep_daily,
            r.keep_weekly,
            r.keep_monthly,
            r.keep_yearly,
        ]
        .iter()
        .any(Option::is_some);
        // Without keep_* of its own a target keeps what the local store keeps.
        let retention = if any_keep {
            Retention {
                keep_last: r.keep_last.unwrap_or(0),
                keep_hourly: r.keep_hourly.unwrap_or(0),
                keep_daily: r.keep_daily.unwrap_or(0),
                keep_weekly: r.keep_weekly.unwrap_or(0),
                keep_monthly: r.keep_monthly.unwrap_or(0),
                keep_yearly: r.keep_yearly.unwrap_or(0),
            }
        } else {
            store
        };
        let bandwidth_limit = r
            .bandwidth_limit
            .map(|s| parse_size(&s).map_err(|e| self.err(S, "bandwidth_limit", e)))
            .transpose()?;
        let timeout = self.duration(S, "timeout", r.timeout.as_deref().unwrap_or("6h"))?;
        if timeout < Duration::from_secs(1) {
            return Err(self.err(S, "timeout", "must be at least 1s"));
        }
        let fail_cycle = match r.on_failure.as_deref().unwrap_or("alert") {
            "alert" => false,
            "fail_cycle" => true,
            other => {
                return Err(self.err(
                    S,
                    "on_failure",
                    format!("{other:?}: use \"alert\" (report and notify, the cycle still succeeds) or \"fail_cycle\""),
                ));
            }
        };
        Ok(crate::offsite::TargetConfig {
            name,
            remote,
            rclone,
            rclone_config,
            retention,
            bandwidth_limit,
            timeout,
            fail_cycle,
            download_back: r.download_back.unwrap_or(false),
        })
    }
}

/// Parses "10MiB", "512k", "1G", "1048576" into bytes (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size; write e.g. \"16MiB\", \"512KiB\", \"1048576\"")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; use KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests;

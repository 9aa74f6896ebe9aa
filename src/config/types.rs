//! The validated configuration types: what the rest of the program receives once the file has been
//! checked. Plain data with small string conversions; nothing here reads files or validates.

use std::path::PathBuf;
use std::time::Duration;

use crate::ha::Endpoint;
use crate::secret::Secret;

use super::{ConfigWarning, HostKeyPolicy};

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
    /// SSH connections per pull (1 to `transfer::MAX_CONNECTIONS`).
    pub connections: usize,
    /// SSH ciphers to offer, most wanted first (from `transfer::CIPHERS`).
    pub ciphers: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum BackupMode {
    /// `backup/generate` (Home Assistant 2025.1 and later).
    Api,
    /// The recipe's service calls: `shell_command.<name>` then `backup.create`.
    Service,
}

/// `[backup]`. [`Default`] gives what an empty section means.
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

impl Default for Backup {
    fn default() -> Self {
        Backup {
            mode: BackupMode::Api,
            shell_command: "delete_backups".to_string(),
            agent_id: None,
            name: "hapull".to_string(),
            include_database: true,
            password: None,
            keep_on_ha: 1,
            prune_foreign: false,
            timeout: Duration::from_secs(2 * 3600),
            blocked_timeout: Duration::from_secs(10 * 60),
        }
    }
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
    /// When `hapull run` deep-verifies the archive a cycle committed.
    pub deep_verify: DeepVerify,
    pub retention: Retention,
}

/// `[store] deep_verify`: when the daemon unpacks the archive a cycle just committed and checks
/// its database and `.storage` files (what `hapull verify --deep` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeepVerify {
    /// Never in the daemon (`verify --deep` by hand still works).
    #[default]
    Off,
    /// After every cycle that committed an archive.
    EveryCycle,
    /// After the first cycle that commits an archive once this long has passed since the last
    /// deep verification that reached a verdict (or when none has, or the last one failed).
    Every(Duration),
}

impl DeepVerify {
    /// The setting as written in the config file.
    pub fn describe(self) -> String {
        match self {
            DeepVerify::Off => "off".to_string(),
            DeepVerify::EveryCycle => "every_cycle".to_string(),
            DeepVerify::Every(d) => humantime::format_duration(d).to_string(),
        }
    }
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

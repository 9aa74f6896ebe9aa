//! The configuration file exactly as written: every field optional, unknown keys rejected.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub home_assistant: Option<HomeAssistant>,
    pub ssh: Option<Ssh>,
    pub backup: Option<Backup>,
    pub schedule: Option<Schedule>,
    pub store: Option<Store>,
    pub audit: Option<Audit>,
    pub notify: Option<Notify>,
    pub status: Option<Status>,
}

impl RawConfig {
    /// Parses TOML text. The error message carries the line, column and the offending key.
    pub fn parse(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    pub url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub ca_file: Option<String>,
    pub request_timeout: Option<String>,
    pub heartbeat: Option<String>,
    pub max_message_size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_file: Option<String>,
    pub passphrase: Option<String>,
    pub passphrase_file: Option<String>,
    pub passphrase_env: Option<String>,
    pub known_hosts: Option<String>,
    pub host_key: Option<OneOrMany>,
    pub trust_on_first_use: Option<bool>,
    pub remote_dir: Option<String>,
    pub bandwidth_limit: Option<String>,
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    pub mode: Option<super::BackupMode>,
    pub shell_command: Option<String>,
    pub name: Option<String>,
    pub include_database: Option<bool>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub keep_on_ha: Option<u32>,
    pub prune_foreign: Option<bool>,
    pub timeout: Option<String>,
    pub blocked_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    pub run_on_start: Option<bool>,
    pub state_file: Option<String>,
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub dir: Option<String>,
    pub verify: Option<super::VerifyLevel>,
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub path: Option<String>,
    pub instance: Option<String>,
    pub record_events: Option<Vec<String>>,
    pub record_domains: Option<Vec<String>>,
    pub record_entity_ids: Option<Vec<String>>,
    pub max_bytes: Option<String>,
    pub max_age: Option<String>,
    pub compress_rotated: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub home_assistant: Option<bool>,
    pub webhook_success: Option<String>,
    pub webhook_failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub listen: Option<String>,
    pub max_age: Option<String>,
}

//! The configuration file exactly as written: every field optional, unknown keys rejected.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub home_assistant: Option<HomeAssistant>,
    pub transfer: Option<Transfer>,
    pub ssh: Option<Ssh>,
    pub backup: Option<Backup>,
    pub schedule: Option<Schedule>,
    pub store: Option<Store>,
    pub audit: Option<Audit>,
    pub notify: Option<Notify>,
    pub status: Option<Status>,
    pub offsite: Option<Vec<Offsite>>,
}

impl RawConfig {
    /// Parses TOML text. The error message carries the line, column and the offending key.
    /// Parses the TOML text. The error names the line, column and key but never quotes the file:
    /// toml's own message shows the offending line, which may hold a token or a webhook URL.
    pub fn parse(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| parse_error(text, &e))
    }
}

/// Keys whose values are secrets: never shown in an error, whatever went wrong on their line.
pub(crate) const SECRET_KEYS: &[&str] = &[
    "token",
    "passphrase",
    "password",
    "webhook_success",
    "webhook_failure",
];

fn parse_error(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim_end().to_string();
    // Whatever a message might quote from a secret's value is cut out (a password written as a bare
    // number, say, is quoted back by "invalid type: integer ..."): each secret value in the file,
    // wherever it is, and everything quoted on the error's own line if that line is a secret's.
    for value in secret_values(text) {
        if value.len() >= 3 {
            message = message.replace(&value, "<redacted>");
        }
    }
    let Some(span) = e.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    match line_key(line) {
        Some(key) if SECRET_KEYS.contains(&key) => format!(
            "line {line_no}, column {column}: the value of `{key}` is not valid here ({}); \
             its value is not shown; write it as a quoted string, or better move it to `{key}_file`",
            without_quoted(&message)
        ),
        Some(key) => format!("line {line_no}, column {column} (key `{key}`): {message}"),
        None => format!("line {line_no}, column {column}: {message}"),
    }
}

/// The key a `key = value` line sets, if the line looks like one.
pub(crate) fn line_key(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"').trim_matches('\'');
    let key = key.rsplit('.').next().unwrap_or(key).trim();
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then_some(key)
}

/// The raw text after `=` on every line that sets a secret key, and its unquoted form.
fn secret_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(key) = line_key(line) else { continue };
        if !SECRET_KEYS.contains(&key) {
            continue;
        }
        if let Some((_, value)) = line.split_once('=') {
            let value = value.trim();
            let unquoted = value.trim_matches(|c| c == '"' || c == '\'');
            out.push(value.to_string());
            out.push(unquoted.to_string());
        }
    }
    // Longest first, so a value is cut whole before any part of it.
    out.sort_by_key(|v| std::cmp::Reverse(v.len()));
    out
}

/// `message` with everything between backticks or quotes removed.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside: Option<char> = None;
    for c in message.chars() {
        match inside {
            Some(q) if c == q => {
                inside = None;
                out.push_str("...");
                out.push(c);
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                inside = Some(c);
                out.push(c);
            }
            None => out.push(c),
        }
    }
    out.replace('\n', " ")
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
pub struct Transfer {
    pub via: Option<String>,
    pub bandwidth_limit: Option<String>,
    pub connect_timeout: Option<String>,
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
    pub connections: Option<usize>,
    pub ciphers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    pub mode: Option<super::BackupMode>,
    pub shell_command: Option<String>,
    pub agent_id: Option<String>,
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
    pub retry_min: Option<String>,
    pub retry_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub dir: Option<String>,
    pub verify: Option<super::VerifyLevel>,
    pub deep_verify: Option<String>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offsite {
    pub name: Option<String>,
    pub remote: Option<String>,
    pub rclone: Option<String>,
    pub config: Option<String>,
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub bandwidth_limit: Option<String>,
    pub timeout: Option<String>,
    pub on_failure: Option<String>,
    pub download_back: Option<bool>,
}

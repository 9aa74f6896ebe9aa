//! Configuration: one TOML file, read into a raw shape ([`raw`]) that mirrors the file exactly and rejects
//! unknown keys, then validated once into the runtime [`Config`] the rest of the program uses.
//!
//! Validation happens here and nowhere else: URL schemes, durations, sizes, that files exist and are
//! readable, where secrets come from. Other modules receive checked values and never see raw TOML.
//! This module reads secrets from files or the environment but never logs them.

mod raw;
mod secrets;
mod sections;
mod types;
mod validator;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

pub use types::*;
use validator::Validator;

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

//! Per-section validation: turns each raw `[section]` into its validated type, with errors that name
//! the key and the fix. Generic checks are in `validator`; this module must not read the file itself.

use std::path::PathBuf;
use std::time::Duration;

use crate::ha::Endpoint;

use super::validator::Validator;
use super::{
    Audit, Backup, ConfigError, DeepVerify, HomeAssistant, HostKeyPolicy, Notify, Retention,
    Schedule, Ssh, Status, Store, Transfer, VerifyLevel, Via, parse_size, raw,
};

impl Validator<'_> {
    pub(super) fn home_assistant(
        &mut self,
        r: raw::HomeAssistant,
    ) -> Result<HomeAssistant, ConfigError> {
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

    pub(super) fn ssh(&mut self, r: raw::Ssh) -> Result<Ssh, ConfigError> {
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
        let connections = r.connections.unwrap_or(2);
        let most = crate::transfer::MAX_CONNECTIONS;
        if !(1..=most).contains(&connections) {
            return Err(self.err(
                S,
                "connections",
                format!("{connections} is not between 1 and {most}"),
            ));
        }
        let ciphers = match r.ciphers {
            None => crate::transfer::CIPHERS.to_vec(),
            Some(names) => {
                let mut ciphers = Vec::new();
                for name in &names {
                    match crate::transfer::CIPHERS
                        .iter()
                        .find(|c| **c == name.as_str())
                    {
                        Some(c) if !ciphers.contains(c) => ciphers.push(*c),
                        Some(_) => {}
                        None => {
                            return Err(self.err(
                                S,
                                "ciphers",
                                format!(
                                    "{name:?} is not a cipher hapull offers; choose from {}",
                                    crate::transfer::CIPHERS.join(", ")
                                ),
                            ));
                        }
                    }
                }
                if ciphers.is_empty() {
                    return Err(self.err(S, "ciphers", "name at least one cipher"));
                }
                ciphers
            }
        };
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
            connections,
            ciphers,
        })
    }

    pub(super) fn transfer(&mut self, r: raw::Transfer) -> Result<Transfer, ConfigError> {
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

    pub(super) fn backup(&mut self, r: raw::Backup) -> Result<Backup, ConfigError> {
        const S: &str = "backup";
        let d = Backup::default();
        let mode = r.mode.unwrap_or(d.mode);
        let shell_command = r.shell_command.unwrap_or(d.shell_command);
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
        let name = r.name.unwrap_or(d.name);
        if name.trim().is_empty() {
            return Err(self.err(S, "name", "must not be empty"));
        }
        Ok(Backup {
            mode,
            shell_command,
            agent_id: r.agent_id,
            name,
            include_database: r.include_database.unwrap_or(d.include_database),
            password,
            keep_on_ha: r.keep_on_ha.unwrap_or(d.keep_on_ha),
            prune_foreign: r.prune_foreign.unwrap_or(d.prune_foreign),
            timeout: match r.timeout {
                Some(t) => self.duration(S, "timeout", &t)?,
                None => d.timeout,
            },
            blocked_timeout: match r.blocked_timeout {
                Some(t) => self.duration(S, "blocked_timeout", &t)?,
                None => d.blocked_timeout,
            },
        })
    }

    pub(super) fn schedule(&mut self, r: raw::Schedule) -> Result<Schedule, ConfigError> {
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

    pub(super) fn store(&mut self, r: raw::Store) -> Result<Store, ConfigError> {
        let dir = self.resolve(r.dir.as_deref().unwrap_or("/var/lib/hapull/archives"));
        let verify = r.verify.unwrap_or(VerifyLevel::Full);
        let deep_verify = match r.deep_verify.as_deref().map(str::trim) {
            None | Some("off") => DeepVerify::Off,
            Some("every_cycle") => DeepVerify::EveryCycle,
            Some(other) => match humantime::parse_duration(other) {
                Ok(d) if !d.is_zero() => DeepVerify::Every(d),
                _ => {
                    return Err(self.err(
                        "store",
                        "deep_verify",
                        format!(
                            "{other:?} is not a choice; use \"off\" (the default), \"every_cycle\", or \
                             an interval such as \"24h\" or \"7d\" (the archive a cycle commits is \
                             deep-verified once that long has passed since the last deep verification)"
                        ),
                    ));
                }
            },
        };
        Ok(Store {
            dir,
            verify,
            deep_verify,
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

    pub(super) fn audit(&mut self, r: raw::Audit) -> Result<Audit, ConfigError> {
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

    pub(super) fn notify(&mut self, r: raw::Notify) -> Result<Notify, ConfigError> {
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

    pub(super) fn status(&mut self, r: raw::Status) -> Result<Status, ConfigError> {
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
    pub(super) fn offsite(
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

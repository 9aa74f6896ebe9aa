//! The long-running service behind `hapull run` (`daemon`), and the wiring from the validated config
//! to the parts the cycle works with (also used by the one-shot commands).
//!
//! It keeps one Home Assistant connection open between cycles, runs the cycle on the schedule (never
//! two at once), records chosen HA events in the audit log, keeps state, metrics and health, sends
//! notifications, and stops cleanly when asked: scheduling stops, a running cycle may finish within the
//! grace period, else it is cut, leaving a resumable partial file.

mod daemon;

pub use daemon::run;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditLog, AuditOptions};
use crate::config::{BackupMode, Config, VerifyLevel, Via};
use crate::cycle::{Context, Settings, Source};
use crate::ha::{Client, ClientOptions, HaError};
use crate::store::{RetentionPolicy, Store};
use crate::transfer::{HttpTarget, PullOptions, SshTarget};

/// Why the service (or building a cycle's context) failed. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Ha(#[from] HaError),
    #[error("{0}")]
    Setup(String),
}

fn setup(what: impl std::fmt::Display) -> ServiceError {
    ServiceError::Setup(what.to_string())
}

pub fn ssh_target(cfg: &Config) -> Result<SshTarget, ServiceError> {
    let ssh = cfg.ssh.as_ref().ok_or_else(|| {
        ServiceError::Config(format!(
            "{}: section [ssh] is required; see config/hapull.example.toml",
            cfg.path.display()
        ))
    })?;
    Ok(SshTarget {
        host: ssh.host.clone(),
        port: ssh.port,
        user: ssh.user.clone(),
        identity_file: ssh.identity_file.clone(),
        passphrase: ssh.passphrase.clone(),
        host_keys: ssh.host_keys.clone(),
    })
}

/// How the cycle fetches archives: SFTP (the key is decrypted here, once) or HA's HTTP download.
pub fn source(cfg: &Config) -> Result<Source, ServiceError> {
    match cfg.transfer.via {
        Via::Sftp => {
            let ssh = ssh_target(cfg)?;
            let identity =
                crate::transfer::load_identity(&ssh.identity_file, ssh.passphrase.as_ref())
                    .map_err(|e| setup(e.to_string()))?;
            Ok(Source::Sftp { ssh, identity })
        }
        Via::Http => Ok(Source::Http {
            target: http_target(cfg)?,
            prefix: cfg.home_assistant.endpoint.http_prefix().to_string(),
        }),
    }
}

/// Home Assistant's HTTP side: same host, port, TLS settings (`ca_file`) and token as the WebSocket.
pub fn http_target(cfg: &Config) -> Result<HttpTarget, ServiceError> {
    let ha = &cfg.home_assistant;
    let opts = ClientOptions::new(ha.endpoint.clone(), ha.token.clone(), ha.ca_file.as_deref())?;
    Ok(HttpTarget {
        tls: opts.tls,
        host: ha.endpoint.host().to_string(),
        port: ha.endpoint.port(),
        token: ha.token.clone(),
        connect_timeout: cfg.transfer.connect_timeout,
        read_timeout: Duration::from_secs(120),
    })
}

pub fn open_store(cfg: &Config) -> Result<Store, ServiceError> {
    let store = cfg.store.as_ref().ok_or_else(|| {
        ServiceError::Config(format!(
            "{}: section [store] is required; see config/hapull.example.toml",
            cfg.path.display()
        ))
    })?;
    Store::open(&store.dir)
        .map_err(|e| setup(format!("opening the store {}: {e}", store.dir.display())))
}

/// Where the one-writer lock lives: the store's folder, or (with no store configured) the audit log's.
/// Every process that writes either takes it there, so they agree on it.
pub fn lock_dir(cfg: &Config) -> Result<std::path::PathBuf, ServiceError> {
    if let Some(store) = &cfg.store {
        return Ok(store.dir.clone());
    }
    if let Some(a) = &cfg.audit {
        return Ok(crate::private_fs::parent_of(&a.path));
    }
    Err(ServiceError::Config(format!(
        "{}: neither [store] nor [audit] is configured, so there is nothing to write",
        cfg.path.display()
    )))
}

/// Opens the store for reading only: repairs nothing, so it is safe beside a writer.
pub fn open_store_read_only(cfg: &Config) -> Result<Store, ServiceError> {
    let store = cfg.store.as_ref().ok_or_else(|| {
        ServiceError::Config(format!(
            "{}: section [store] is required; see config/hapull.example.toml",
            cfg.path.display()
        ))
    })?;
    Store::open_read_only(&store.dir)
        .map_err(|e| setup(format!("opening the store {}: {e}", store.dir.display())))
}

pub fn retention(cfg: &Config) -> RetentionPolicy {
    cfg.store.as_ref().map(|s| s.retention).unwrap_or_default()
}

pub fn timezone(cfg: &Config) -> Result<jiff::tz::TimeZone, ServiceError> {
    jiff::tz::TimeZone::get(&cfg.schedule.timezone).map_err(|e| {
        ServiceError::Config(format!(
            "[schedule] timezone = {:?}: {e}; use a name like \"Europe/Berlin\" or \"UTC\"",
            cfg.schedule.timezone
        ))
    })
}

pub async fn open_audit(cfg: &Config) -> Result<Option<AuditLog>, ServiceError> {
    let Some(a) = &cfg.audit else { return Ok(None) };
    let mut opts = AuditOptions::new(&a.path, &a.instance);
    opts.max_bytes = a.max_bytes;
    opts.max_age = a.max_age;
    opts.compress_rotated = a.compress_rotated;
    let log = AuditLog::open(opts)
        .await
        .map_err(|e| setup(format!("opening the audit log {}: {e}", a.path.display())))?;
    Ok(Some(log))
}

/// Client options from the config.
pub fn client_options(cfg: &Config, reconnect: bool) -> Result<ClientOptions, ServiceError> {
    let ha = &cfg.home_assistant;
    let mut opts =
        ClientOptions::new(ha.endpoint.clone(), ha.token.clone(), ha.ca_file.as_deref())?;
    opts.request_timeout = ha.request_timeout;
    opts.heartbeat_interval = ha.heartbeat_interval;
    opts.max_message_size = ha.max_message_size;
    opts.reconnect = reconnect;
    Ok(opts)
}

pub fn settings(cfg: &Config, progress: bool) -> Result<Settings, ServiceError> {
    let (bandwidth_limit, connect_timeout, remote_dir, connections) = match cfg.transfer.via {
        Via::Sftp => {
            let ssh = cfg.ssh.as_ref().ok_or_else(|| {
                ServiceError::Config(format!(
                    "{}: section [ssh] is required with [transfer] via = \"sftp\" (the default); \
                     add it, or set via = \"http\" to download through Home Assistant itself",
                    cfg.path.display()
                ))
            })?;
            (
                ssh.bandwidth_limit,
                ssh.connect_timeout,
                ssh.remote_dir.clone(),
                ssh.connections,
            )
        }
        Via::Http => {
            if cfg.backup.mode == BackupMode::Service {
                return Err(ServiceError::Config(format!(
                    "{}: [backup] mode = \"service\" runs a command that deletes every archive in HA's \
                     backups folder, which needs [transfer] via = \"sftp\" to save each one first; \
                     use mode = \"api\" with via = \"http\"",
                    cfg.path.display()
                )));
            }
            (
                cfg.transfer.bandwidth_limit,
                cfg.transfer.connect_timeout,
                String::new(),
                1,
            )
        }
    };
    let mut pull = PullOptions {
        bandwidth_limit,
        progress,
        connections,
        ..PullOptions::default()
    };
    pull.session.connect_timeout = connect_timeout;
    if let (Via::Sftp, Some(ssh)) = (cfg.transfer.via, &cfg.ssh) {
        pull.session.ciphers = ssh.ciphers.clone();
    }
    Ok(Settings {
        backup: cfg.backup.clone(),
        remote_dir,
        verify: cfg
            .store
            .as_ref()
            .map(|s| s.verify)
            .unwrap_or(VerifyLevel::Full),
        retention: retention(cfg),
        timezone: timezone(cfg)?,
        pull,
    })
}

/// The `[[offsite]]` targets, ready to run.
pub fn offsite_targets(cfg: &Config) -> Vec<crate::offsite::Target> {
    cfg.offsite
        .iter()
        .cloned()
        .map(crate::offsite::Target::new)
        .collect()
}

/// The cycle's context over an already connected client.
pub async fn context(
    cfg: &Config,
    client: Client,
    audit: Option<AuditLog>,
    progress: bool,
) -> Result<Context, ServiceError> {
    Ok(Context {
        client,
        source: source(cfg)?,
        store: Arc::new(open_store(cfg)?),
        audit,
        settings: settings(cfg, progress)?,
        offsite: offsite_targets(cfg),
    })
}

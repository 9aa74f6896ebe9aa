//! Turns the validated config into the parts the cycle works with.

use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::audit::{AuditLog, AuditOptions};
use crate::config::{Config, HostKeys};
use crate::cycle::{Context, Settings};
use crate::store::{RetentionPolicy, Store};
use crate::transfer::{HostKeyPolicy, PullOptions, SshTarget};

pub(crate) fn ssh_target(cfg: &Config) -> anyhow::Result<SshTarget> {
    let Some(ssh) = &cfg.ssh else {
        bail!(
            "{}: section [ssh] is required for this command; see config/hapull.example.toml",
            cfg.path.display()
        );
    };
    Ok(SshTarget {
        host: ssh.host.clone(),
        port: ssh.port,
        user: ssh.user.clone(),
        identity_file: ssh.identity_file.clone(),
        passphrase: ssh.passphrase.clone(),
        host_keys: match &ssh.host_keys {
            HostKeys::KnownHosts {
                path,
                trust_on_first_use,
            } => HostKeyPolicy::KnownHosts {
                path: path.clone(),
                trust_on_first_use: *trust_on_first_use,
            },
            HostKeys::Pinned(keys) => HostKeyPolicy::Pinned(keys.clone()),
        },
    })
}

pub(crate) fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let Some(store) = &cfg.store else {
        bail!(
            "{}: section [store] is required for this command; see config/hapull.example.toml",
            cfg.path.display()
        );
    };
    Store::open(&store.dir).with_context(|| format!("opening the store {}", store.dir.display()))
}

pub(crate) fn retention(cfg: &Config) -> RetentionPolicy {
    let r = cfg
        .store
        .as_ref()
        .map(|s| s.retention.clone())
        .unwrap_or_default();
    RetentionPolicy {
        keep_last: r.keep_last,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
    }
}

pub(crate) fn timezone(cfg: &Config) -> anyhow::Result<jiff::tz::TimeZone> {
    jiff::tz::TimeZone::get(&cfg.schedule.timezone)
        .with_context(|| format!("time zone {}", cfg.schedule.timezone))
}

pub(crate) async fn open_audit(cfg: &Config) -> anyhow::Result<Option<AuditLog>> {
    let Some(a) = &cfg.audit else { return Ok(None) };
    let mut opts = AuditOptions::new(&a.path, &a.instance);
    opts.max_bytes = a.max_bytes;
    opts.max_age = a.max_age;
    opts.compress_rotated = a.compress_rotated;
    let log = AuditLog::open(opts)
        .await
        .with_context(|| format!("opening the audit log {}", a.path.display()))?;
    Ok(Some(log))
}

/// Everything a cycle needs, connected.
pub(crate) async fn build(
    cfg: &Config,
    reconnect: bool,
    progress: bool,
) -> anyhow::Result<Context> {
    let ssh = ssh_target(cfg)?;
    let store = open_store(cfg)?;
    let ssh_cfg = cfg.ssh.as_ref().context("[ssh] is required")?;
    let mut pull = PullOptions {
        bandwidth_limit: ssh_cfg.bandwidth_limit,
        progress,
        ..PullOptions::default()
    };
    pull.session.connect_timeout = ssh_cfg.connect_timeout;
    let settings = Settings {
        mode: cfg.backup.mode,
        shell_command: cfg.backup.shell_command.clone(),
        name_template: cfg.backup.name.clone(),
        include_database: cfg.backup.include_database,
        password: cfg.backup.password.clone(),
        keep_on_ha: cfg.backup.keep_on_ha,
        prune_foreign: cfg.backup.prune_foreign,
        timeout: cfg.backup.timeout,
        blocked_timeout: cfg.backup.blocked_timeout,
        remote_dir: ssh_cfg.remote_dir.clone(),
        verify: cfg
            .store
            .as_ref()
            .map(|s| s.verify)
            .unwrap_or(crate::config::VerifyLevel::Full),
        retention: retention(cfg),
        timezone: timezone(cfg)?,
        pull,
    };
    let audit = open_audit(cfg).await?;
    let client = super::connect(cfg, reconnect).await?;
    Ok(Context {
        client,
        ssh,
        store: Arc::new(store),
        audit,
        settings,
    })
}

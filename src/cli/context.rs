//! The one-shot commands' view of [`crate::service`]'s wiring.

use crate::config::Config;
use crate::cycle::Context;
use crate::service;

pub(crate) fn open_store(cfg: &Config) -> anyhow::Result<crate::store::Store> {
    Ok(service::open_store(cfg)?)
}

pub(crate) fn retention(cfg: &Config) -> crate::store::RetentionPolicy {
    service::retention(cfg)
}

pub(crate) fn timezone(cfg: &Config) -> anyhow::Result<jiff::tz::TimeZone> {
    Ok(service::timezone(cfg)?)
}

pub(crate) async fn open_audit(cfg: &Config) -> anyhow::Result<Option<crate::audit::AuditLog>> {
    Ok(service::open_audit(cfg).await?)
}

/// Everything a cycle needs, connected.
pub(crate) async fn build(
    cfg: &Config,
    reconnect: bool,
    progress: bool,
) -> anyhow::Result<Context> {
    // Checked before connecting, so a config problem is reported as such.
    service::settings(cfg, progress)?;
    service::ssh_target(cfg)?;
    let audit = open_audit(cfg).await?;
    let client = super::connect(cfg, reconnect).await?;
    Ok(service::context(cfg, client, audit, progress).await?)
}

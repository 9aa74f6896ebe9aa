//! Connect: which backup API this Home Assistant has, the SSH side checked before HA is asked for
//! anything, and a wait while HA is starting (`blocked`) or busy with another backup.

use std::time::Duration;

use serde_json::json;
use tracing::info;

use super::{At, Context, CycleError, Step};
use crate::audit::Kind;
use crate::ha::{BackupApi, Subscription};
use crate::transfer::{Session, TransferError};

/// A listing of `[ssh] remote_dir` that failed because of the configured value or the folder's
/// permissions, said as a config problem: the key, its value, what went wrong and the fix.
pub fn remote_dir_problem(remote_dir: &str, e: &TransferError) -> Option<String> {
    match e {
        TransferError::NotFound { host, .. } => Some(format!(
            "[ssh] remote_dir = {remote_dir:?}: no such folder on {host}. Set it to Home Assistant's \
             config folder + /backups as the SFTP account sees it (Core on Debian: \
             /home/homeassistant/.homeassistant/backups; NixOS: /var/lib/hass/backups; chroot variant: \
             /backups); docs/SETUP.md shows how to find the config folder"
        )),
        TransferError::PermissionDenied { user, .. } => Some(format!(
            "[ssh] remote_dir = {remote_dir:?}: user {user} may not list it (permission denied). Put \
             {user} in Home Assistant's group, and give that group read and search permission on the \
             folder and search (g+x) on every folder above it: docs/SETUP.md, Permissions"
        )),
        _ => None,
    }
}

impl Context {
    pub(super) async fn connect(&self) -> Result<(BackupApi, Option<Subscription>), CycleError> {
        let api = self.client.detect_backup_api().await.at(Step::Connect)?;
        // The SSH side is checked before Home Assistant is asked for anything: a broken host key or
        // permission would otherwise leave a new, unpulled backup on the HA host every cycle.
        self.preflight_ssh().await?;
        let sub = match api {
            BackupApi::Modern => {
                Some((self.client.subscribe_backup_events().await).at(Step::Connect)?)
            }
            BackupApi::Legacy { .. } => None,
        };
        self.wait_until_idle().await?;
        info!(%api, ha_version = %self.client.ha_version(), "connected");
        let api_name = match api {
            BackupApi::Modern => "modern",
            BackupApi::Legacy { .. } => "legacy",
        };
        self.record(
            Kind::CycleConnected,
            json!({"ha_version": self.client.ha_version(), "backup_api": api_name}),
        )
        .await?;
        Ok((api, sub))
    }

    async fn wait_until_idle(&self) -> Result<(), CycleError> {
        let deadline = tokio::time::Instant::now() + self.settings.blocked_timeout;
        loop {
            let info = self.client.backup_info().await.at(Step::Connect)?;
            if info.state == "idle" {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CycleError::Timeout {
                    step: Step::Connect,
                    after: self.settings.blocked_timeout,
                    what: format!(
                        "Home Assistant's backup manager stayed \"{}\"",
                        info.state.escape_debug()
                    ),
                });
            }
            info!(
                state = %info.state,
                "backup manager busy; waiting for it to become idle"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Host key, login and a listing of `remote_dir`.
    async fn preflight_ssh(&self) -> Result<(), CycleError> {
        let session = self.session(Step::Connect).await?;
        let listed = session.list_dir(&self.settings.remote_dir).await;
        session.close().await;
        if let Err(e) = &listed
            && let Some(message) = remote_dir_problem(&self.settings.remote_dir, e)
        {
            return Err(CycleError::Refused {
                step: Step::Connect,
                message,
            });
        }
        listed.at(Step::Connect)?;
        Ok(())
    }

    /// One SFTP session to the HA host, for listing and peeking.
    pub(super) async fn session(&self, step: Step) -> Result<Session, CycleError> {
        Session::connect_with(&self.ssh, &self.identity, &self.settings.pull.session)
            .await
            .at(step)
    }
}

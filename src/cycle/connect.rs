//! Connect: which backup API this Home Assistant has, which agent keeps its local copies (and so
//! which kind of install it is), the SSH side checked before HA is asked for anything, and a wait
//! while HA is starting (`blocked`) or busy with another backup.

use std::time::Duration;

use serde_json::json;
use tracing::info;

use super::{At, Context, CycleError, Source, Step};
use crate::audit::Kind;
use crate::ha::{BackupApi, Install, Subscription, choose_local_agent};
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
    pub(super) async fn connect(
        &self,
    ) -> Result<(BackupApi, Option<String>, Option<Subscription>), CycleError> {
        let api = self.client.detect_backup_api().await.at(Step::Connect)?;
        let agent = self.local_agent(api, Step::Connect).await?;
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
        let install = agent.as_deref().map_or(Install::Legacy, Install::of_agent);
        info!(%api, %install, agent = ?agent, ha_version = %self.client.ha_version(), "connected");
        let api_name = match api {
            BackupApi::Modern => "modern",
            BackupApi::Legacy { .. } => "legacy",
        };
        self.record(
            Kind::CycleConnected,
            json!({"ha_version": self.client.ha_version(), "backup_api": api_name, "agent": agent}),
        )
        .await?;
        Ok((api, agent, sub))
    }

    /// The local agent (modern API): asked of HA each cycle, as mounts and installs change.
    pub(super) async fn local_agent(
        &self,
        api: BackupApi,
        step: Step,
    ) -> Result<Option<String>, CycleError> {
        if !matches!(api, BackupApi::Modern) {
            return Ok(None);
        }
        let agents = self.client.backup_agents().await.at(step)?;
        choose_local_agent(&agents, self.settings.backup.agent_id.as_deref())
            .map(Some)
            .map_err(|message| CycleError::refused(step, message))
    }

    async fn wait_until_idle(&self) -> Result<(), CycleError> {
        let deadline = tokio::time::Instant::now() + self.settings.backup.blocked_timeout;
        loop {
            let info = self.client.backup_info().await.at(Step::Connect)?;
            if info.state == "idle" {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CycleError::Timeout {
                    step: Step::Connect,
                    after: self.settings.backup.blocked_timeout,
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
        // Over HTTP the token and TLS were proven by the WebSocket connection to the same server.
        if !matches!(self.source, Source::Sftp { .. }) {
            return Ok(());
        }
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
        let Source::Sftp { ssh, identity } = &self.source else {
            return Err(CycleError::refused(
                step,
                "this needs the SSH side, but [transfer] via = \"http\" has none",
            ));
        };
        Session::connect_with(ssh, identity, &self.settings.pull.session)
            .await
            .at(step)
    }
}

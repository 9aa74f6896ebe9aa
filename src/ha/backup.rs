//! Home Assistant's backup API: the modern one (2025.1 and later: job ids, events, agents) and the
//! legacy one (2024.x and earlier: slugs, a blocking generate, no events), behind one set of types.
//!
//! Everything parsed here comes from Home Assistant and is untrusted: ids and names are returned as
//! given, and whoever turns them into file names must validate them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::error::clip;
use super::{Client, HaError};

/// Which backup API a server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupApi {
    /// 2025.1 and later: `backup/generate` returns at once, progress comes as events.
    Modern,
    /// Up to 2024.12: blocking `backup/generate`, `backup/remove`, no events; `backup/details` only
    /// on later 2024 releases.
    Legacy { has_details: bool },
}

impl std::fmt::Display for BackupApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupApi::Modern => f.write_str("modern (backup/generate with events, 2025.1+)"),
            BackupApi::Legacy { .. } => {
                f.write_str("legacy (blocking backup/generate, HA 2024.x or older)")
            }
        }
    }
}

/// One backup as Home Assistant lists it, in either API's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    /// `backup_id` (modern) or `slug` (legacy).
    pub backup_id: String,
    pub name: String,
    /// ISO 8601 as HA wrote it.
    pub date: String,
    pub ha_version: Option<String>,
    /// Exact size in bytes of the copy on `backup.local` (modern only; legacy gives rounded MB).
    pub size: Option<u64>,
    pub size_mb_approx: Option<f64>,
    pub protected: bool,
    /// Agents holding a copy (modern); legacy backups are always local.
    pub agents: Vec<String>,
    /// The archive's path on the HA host (legacy only).
    pub path: Option<String>,
    pub raw: Value,
}

/// A legacy backup as returned by the blocking `backup/generate`.
pub type LegacyBackup = Backup;

/// `backup/info`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupList {
    pub backups: Vec<Backup>,
    /// Manager state (`idle`, `create_backup`, `blocked`, ...); legacy: `backing_up` mapped to
    /// `create_backup` / `idle`.
    pub state: String,
    pub last_action_event: Option<BackupEvent>,
}

/// The state a backup job reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    InProgress,
    Completed,
    Failed,
}

/// An event from `backup/subscribe_events`.
#[derive(Debug, Clone, PartialEq)]
pub enum BackupEvent {
    /// The manager state without a job: `idle`, `blocked`, or a state this client does not know.
    Manager { state: String },
    /// A create-backup job moved on.
    CreateBackup {
        stage: Option<String>,
        state: BackupState,
        reason: Option<String>,
    },
    /// Bytes written to an agent (no `state` field in HA's message).
    UploadProgress {
        agent_id: String,
        uploaded_bytes: u64,
        total_bytes: u64,
    },
    /// Another manager activity (restore, receive, ...) with its raw content.
    Other { manager_state: String, raw: Value },
}

impl BackupEvent {
    /// Parses an event body. Unknown shapes become [`BackupEvent::Other`]; only a body without a
    /// `manager_state` string is an error.
    pub fn parse(v: &Value) -> Result<BackupEvent, HaError> {
        let manager_state = v
            .get("manager_state")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HaError::Protocol(format!(
                    "backup event without manager_state: {}",
                    clip(&v.to_string(), 200)
                ))
            })?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(|s| clip(s, 300));
        if manager_state == "create_backup" {
            if let Some(agent_id) = text("agent_id")
                && v.get("state").is_none()
            {
                return Ok(BackupEvent::UploadProgress {
                    agent_id,
                    uploaded_bytes: v.get("uploaded_bytes").and_then(Value::as_u64).unwrap_or(0),
                    total_bytes: v.get("total_bytes").and_then(Value::as_u64).unwrap_or(0),
                });
            }
            let state = match v.get("state").and_then(Value::as_str) {
                Some("in_progress") => Some(BackupState::InProgress),
                Some("completed") => Some(BackupState::Completed),
                Some("failed") => Some(BackupState::Failed),
                _ => None,
            };
            if let Some(state) = state {
                return Ok(BackupEvent::CreateBackup {
                    stage: text("stage"),
                    state,
                    reason: text("reason"),
                });
            }
        }
        if v.get("state").is_none() && v.get("stage").is_none() {
            return Ok(BackupEvent::Manager {
                state: clip(manager_state, 100),
            });
        }
        Ok(BackupEvent::Other {
            manager_state: clip(manager_state, 100),
            raw: v.clone(),
        })
    }
}

/// `backup/generate` options (modern API).
#[derive(Clone, Default)]
pub struct GenerateRequest {
    pub agent_ids: Vec<String>,
    pub name: Option<String>,
    pub include_database: Option<bool>,
    pub password: Option<crate::secret::Secret>,
}

impl std::fmt::Debug for GenerateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateRequest")
            .field("agent_ids", &self.agent_ids)
            .field("name", &self.name)
            .field("include_database", &self.include_database)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A backup agent (`backup/agents/info`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentInfo {
    pub agent_id: String,
    #[serde(default)]
    pub name: String,
}

impl Backup {
    /// Parses one backup as `backup/info` or `backup/details` lists it (either API's shape).
    pub fn from_value(v: &Value) -> Result<Backup, HaError> {
        parse_backup(v)
    }

    /// Size and protection of the copy `agent` holds, when HA lists one there.
    pub fn on_agent(&self, agent: &str) -> Option<(Option<u64>, bool)> {
        let a = self.raw.get("agents")?.get(agent)?;
        Some((
            a.get("size").and_then(Value::as_u64),
            a.get("protected").and_then(Value::as_bool).unwrap_or(false),
        ))
    }

    /// The HA instance that made the backup (`extra_metadata.instance_id`), when HA says.
    pub fn instance_id(&self) -> Option<&str> {
        self.raw.get("extra_metadata")?.get("instance_id")?.as_str()
    }

    /// When Home Assistant asked the Supervisor for this backup (Supervisor installs): the date the
    /// archive's file name is derived from, which may differ from `date`.
    pub fn request_date(&self) -> Option<&str> {
        self.raw
            .get("extra_metadata")?
            .get("supervisor.backup_request_date")?
            .as_str()
    }
}

/// Which kind of Home Assistant install the backup API reveals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Core, Container, NixOS: the local agent is `backup.local`; job id = backup id.
    Core,
    /// Home Assistant OS or Supervised: `hassio.local`; the job id is a Supervisor job.
    Supervisor,
    /// 2024.x or older: slugs, no agents.
    Legacy,
}

impl Install {
    /// From the local agent's id (modern API).
    pub fn of_agent(agent: &str) -> Install {
        if agent.starts_with("hassio.") {
            Install::Supervisor
        } else {
            Install::Core
        }
    }
}

impl std::fmt::Display for Install {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Install::Core => "Home Assistant Core/Container (local agent backup.local)",
            Install::Supervisor => {
                "Home Assistant OS/Supervised (local agent hassio.local, Supervisor jobs)"
            }
            Install::Legacy => "legacy backup API (Home Assistant 2024.x or older)",
        })
    }
}

/// The agent whose copies live on the HA host: the configured one (which must exist), else
/// `backup.local` (Core), else `hassio.local` (Supervisor). The error names what HA offers.
pub fn choose_local_agent(
    agents: &[AgentInfo],
    configured: Option<&str>,
) -> Result<String, String> {
    let has = |id: &str| agents.iter().any(|a| a.agent_id == id);
    let offered = || {
        let ids: Vec<&str> = agents.iter().map(|a| a.agent_id.as_str()).collect();
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids.join(", ")
        }
    };
    if let Some(c) = configured {
        return if has(c) {
            Ok(c.to_string())
        } else {
            Err(format!(
                "backup agent {c:?} (backup.agent_id) is not offered by Home Assistant; it offers: {}",
                offered()
            ))
        };
    }
    ["backup.local", "hassio.local"]
        .into_iter()
        .find(|id| has(id))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "Home Assistant offers no local backup agent (backup.local or hassio.local); it offers: {}. \
                 Set backup.agent_id to the one that keeps backups on the HA host",
                offered()
            )
        })
}

impl BackupList {
    /// Parses the result of `backup/info` (either API's shape).
    pub fn from_value(v: &Value) -> Result<BackupList, HaError> {
        parse_list(v)
    }
}

fn parse_backup(v: &Value) -> Result<Backup, HaError> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(id) = s("backup_id") {
        let agents_obj = v.get("agents").and_then(Value::as_object);
        let local =
            agents_obj.and_then(|a| a.get("backup.local").or_else(|| a.get("hassio.local")));
        let any_agent = agents_obj.and_then(|a| a.values().next());
        let size = local
            .or(any_agent)
            .and_then(|a| a.get("size"))
            .and_then(Value::as_u64);
        let protected = local
            .or(any_agent)
            .and_then(|a| a.get("protected"))
            .and_then(Value::as_bool)
            .or_else(|| v.get("protected").and_then(Value::as_bool))
            .unwrap_or(false);
        return Ok(Backup {
            backup_id: id,
            name: s("name").unwrap_or_default(),
            date: s("date").unwrap_or_default(),
            ha_version: s("homeassistant_version"),
            size,
            size_mb_approx: None,
            protected,
            agents: agents_obj
                .map(|a| a.keys().cloned().collect())
                .unwrap_or_default(),
            path: None,
            raw: v.clone(),
        });
    }
    if let Some(slug) = s("slug") {
        return Ok(Backup {
            backup_id: slug,
            name: s("name").unwrap_or_default(),
            date: s("date").unwrap_or_default(),
            ha_version: None,
            size: None,
            size_mb_approx: v.get("size").and_then(Value::as_f64),
            protected: v.get("protected").and_then(Value::as_bool).unwrap_or(false),
            agents: vec!["backup.local".into()],
            path: s("path"),
            raw: v.clone(),
        });
    }
    Err(HaError::Protocol(format!(
        "a backup without backup_id or slug: {}",
        clip(&v.to_string(), 200)
    )))
}

fn parse_list(v: &Value) -> Result<BackupList, HaError> {
    let items = v.get("backups").and_then(Value::as_array).ok_or_else(|| {
        HaError::Protocol(format!(
            "backup/info without a backups list: {}",
            clip(&v.to_string(), 200)
        ))
    })?;
    let backups = items
        .iter()
        .map(parse_backup)
        .collect::<Result<Vec<_>, _>>()?;
    let state = match v.get("state").and_then(Value::as_str) {
        Some(s) => clip(s, 100),
        None => match v.get("backing_up").and_then(Value::as_bool) {
            Some(true) => "create_backup".into(),
            _ => "idle".into(),
        },
    };
    let last_action_event = v
        .get("last_action_event")
        .filter(|e| !e.is_null())
        .map(BackupEvent::parse)
        .transpose()?;
    Ok(BackupList {
        backups,
        state,
        last_action_event,
    })
}

impl Client {
    /// Detects the backup API by asking, not by version number: `backup/agents/info` exists only in
    /// the modern API; on the legacy one `backup/details` may or may not exist.
    pub async fn detect_backup_api(&self) -> Result<BackupApi, HaError> {
        match self.call(json!({"type": "backup/agents/info"})).await {
            Ok(_) => Ok(BackupApi::Modern),
            Err(e) if e.is_unknown_command() => {
                // Confirms the backup integration is loaded at all (else this fails with a clear error).
                self.call(json!({"type": "backup/info"})).await?;
                let has_details = match self
                    .call(json!({"type": "backup/details", "slug": ""}))
                    .await
                {
                    Ok(_) => true,
                    Err(e) if e.is_unknown_command() => false,
                    Err(HaError::Command { .. }) => true,
                    Err(e) => return Err(e),
                };
                Ok(BackupApi::Legacy { has_details })
            }
            Err(e) => Err(e),
        }
    }

    /// `backup/info`, in either API's shape.
    pub async fn backup_info(&self) -> Result<BackupList, HaError> {
        let v = self.call(json!({"type": "backup/info"})).await?;
        parse_list(&v)
    }

    /// `backup/details` (modern); `None` when HA does not know the id.
    pub async fn backup_details(&self, backup_id: &str) -> Result<Option<Backup>, HaError> {
        let v = self
            .call(json!({"type": "backup/details", "backup_id": backup_id}))
            .await?;
        match v.get("backup") {
            None | Some(Value::Null) => Ok(None),
            Some(b) => parse_backup(b).map(Some),
        }
    }

    /// `backup/generate` (modern): starts a backup and returns the job id as soon as it has started.
    pub async fn backup_generate(&self, req: &GenerateRequest) -> Result<String, HaError> {
        let mut frame = json!({"type": "backup/generate", "agent_ids": req.agent_ids});
        if let Some(name) = &req.name {
            frame["name"] = Value::from(name.as_str());
        }
        if let Some(db) = req.include_database {
            frame["include_database"] = Value::Bool(db);
        }
        if let Some(pw) = &req.password {
            frame["password"] = Value::from(pw.expose());
        }
        let v = self.call(frame).await?;
        v.get("backup_job_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                HaError::Protocol(format!(
                    "backup/generate without backup_job_id: {}",
                    clip(&v.to_string(), 200)
                ))
            })
    }

    /// `backup/generate` (legacy): blocks until the backup is made and returns it.
    pub async fn legacy_backup_generate(&self, timeout: Duration) -> Result<LegacyBackup, HaError> {
        let v = self
            .call_with_timeout(json!({"type": "backup/generate"}), timeout)
            .await?;
        parse_backup(&v)
    }

    /// `backup/delete` (modern): from every agent. An unknown id is not an error in HA.
    pub async fn backup_delete(&self, backup_id: &str) -> Result<(), HaError> {
        let v = self
            .call(json!({"type": "backup/delete", "backup_id": backup_id}))
            .await?;
        match v.get("agent_errors").and_then(Value::as_object) {
            Some(errors) if !errors.is_empty() => Err(HaError::Command {
                command: "backup/delete".into(),
                code: "agent_errors".into(),
                message: clip(&Value::Object(errors.clone()).to_string(), 300),
            }),
            _ => Ok(()),
        }
    }

    /// `backup/remove` (legacy).
    pub async fn legacy_backup_remove(&self, slug: &str) -> Result<(), HaError> {
        self.call(json!({"type": "backup/remove", "slug": slug}))
            .await
            .map(|_| ())
    }

    /// `backup/agents/info` (modern).
    pub async fn backup_agents(&self) -> Result<Vec<AgentInfo>, HaError> {
        let v = self.call(json!({"type": "backup/agents/info"})).await?;
        let agents = v.get("agents").cloned().unwrap_or(Value::Array(vec![]));
        serde_json::from_value(agents)
            .map_err(|e| HaError::Protocol(format!("backup/agents/info: {e}")))
    }

    /// The backup id a Supervisor job produced (`supervisor/api` `GET /jobs/<id>`, field `reference`):
    /// `Some` once the job is done without errors and names one; `None` while it runs, when it
    /// names none, or when it failed (the Supervisor names the backup at the job's start, so a
    /// failed job can carry a reference to a backup that was never finished).
    pub async fn supervisor_job_reference(&self, job_id: &str) -> Result<Option<String>, HaError> {
        if job_id.is_empty()
            || !job_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(HaError::Protocol(format!(
                "{:?} is not a Supervisor job id",
                clip(job_id, 80)
            )));
        }
        let v = self
            .call(json!({"type": "supervisor/api", "endpoint": format!("/jobs/{job_id}"), "method": "get"}))
            .await?;
        let done = v.get("done").and_then(Value::as_bool).unwrap_or(false)
            && v.get("errors")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
        Ok(v.get("reference")
            .and_then(Value::as_str)
            .filter(|r| done && !r.is_empty())
            .map(|r| clip(r, 100)))
    }

    /// `backup/config/info` (modern): HA's own automatic-backup settings, as HA sends them.
    pub async fn backup_config(&self) -> Result<Value, HaError> {
        let v = self.call(json!({"type": "backup/config/info"})).await?;
        Ok(v.get("config").cloned().unwrap_or(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_agent_is_asked_not_assumed() {
        let agents = |ids: &[&str]| -> Vec<AgentInfo> {
            ids.iter()
                .map(|id| AgentInfo {
                    agent_id: id.to_string(),
                    name: String::new(),
                })
                .collect()
        };
        let core = agents(&["backup.local", "cloud.cloud"]);
        let os = agents(&["hassio.local", "hassio.nas", "cloud.cloud"]);
        assert_eq!(choose_local_agent(&core, None).unwrap(), "backup.local");
        assert_eq!(choose_local_agent(&os, None).unwrap(), "hassio.local");
        assert_eq!(
            choose_local_agent(&os, Some("hassio.nas")).unwrap(),
            "hassio.nas"
        );
        let e = choose_local_agent(&core, Some("hassio.local")).unwrap_err();
        assert!(e.contains("backup.local, cloud.cloud"), "{e}");
        let e = choose_local_agent(&agents(&["cloud.cloud"]), None).unwrap_err();
        assert!(
            e.contains("backup.agent_id") && e.contains("cloud.cloud"),
            "{e}"
        );
        assert_eq!(Install::of_agent("hassio.local"), Install::Supervisor);
        assert_eq!(Install::of_agent("backup.local"), Install::Core);
    }

    #[test]
    fn a_supervisor_backup_says_where_its_copy_is_and_when_it_was_asked_for() {
        let v = json!({"backup_id": "5f2a9c1e", "name": "hapull x", "date": "2026-11-26T09:07:40.5+00:00",
            "extra_metadata": {"instance_id": "abc", "supervisor.backup_request_date": "2026-11-26T10:07:39.253410+01:00"},
            "agents": {"hassio.local": {"protected": true, "size": 4096}, "hassio.nas": {"protected": false, "size": 4000}}});
        let b = Backup::from_value(&v).unwrap();
        assert_eq!((b.size, b.protected), (Some(4096), true));
        assert_eq!(b.on_agent("hassio.nas"), Some((Some(4000), false)));
        assert_eq!(b.on_agent("backup.local"), None);
        assert_eq!(b.instance_id(), Some("abc"));
        assert_eq!(b.request_date(), Some("2026-11-26T10:07:39.253410+01:00"));
    }

    #[test]
    fn parses_every_event_shape_ha_sends() {
        let cases = [
            (
                json!({"manager_state": "idle"}),
                BackupEvent::Manager {
                    state: "idle".into(),
                },
            ),
            (
                json!({"manager_state": "create_backup", "reason": null, "stage": "home_assistant", "state": "in_progress"}),
                BackupEvent::CreateBackup {
                    stage: Some("home_assistant".into()),
                    state: BackupState::InProgress,
                    reason: None,
                },
            ),
            (
                json!({"manager_state": "create_backup", "agent_id": "backup.local", "uploaded_bytes": 0, "total_bytes": 20480}),
                BackupEvent::UploadProgress {
                    agent_id: "backup.local".into(),
                    uploaded_bytes: 0,
                    total_bytes: 20480,
                },
            ),
            (
                json!({"manager_state": "create_backup", "reason": "upload_failed", "stage": null, "state": "failed"}),
                BackupEvent::CreateBackup {
                    stage: None,
                    state: BackupState::Failed,
                    reason: Some("upload_failed".into()),
                },
            ),
        ];
        for (v, want) in cases {
            assert_eq!(BackupEvent::parse(&v).unwrap(), want, "{v}");
        }
        assert!(BackupEvent::parse(&json!({"state": "idle"})).is_err());
        assert!(matches!(
            BackupEvent::parse(
                &json!({"manager_state": "restore_backup", "stage": "x", "state": "in_progress"})
            )
            .unwrap(),
            BackupEvent::Other { .. }
        ));
    }

    #[test]
    fn reads_both_list_shapes() {
        let legacy = json!({"backups": [{"slug": "cf400062", "name": "Core 2024.3.3", "date": "2026-11-26T09:13:35.744754+00:00", "path": "/x/cf400062.tar", "size": 0.01}], "backing_up": false});
        let l = parse_list(&legacy).unwrap();
        assert_eq!(l.state, "idle");
        assert_eq!(l.backups[0].backup_id, "cf400062");
        assert_eq!(l.backups[0].path.as_deref(), Some("/x/cf400062.tar"));
        assert_eq!(l.backups[0].size, None);

        let modern = json!({"backups": [{"backup_id": "dcc25121", "name": "hapull fixture", "date": "2026-11-26T09:07:39.253410+00:00",
            "homeassistant_version": "2026.11.0", "agents": {"backup.local": {"protected": true, "size": 20480}}}],
            "state": "idle", "last_action_event": {"manager_state": "create_backup", "reason": null, "stage": null, "state": "completed"}});
        let m = parse_list(&modern).unwrap();
        assert_eq!(m.backups[0].size, Some(20480));
        assert!(m.backups[0].protected);
        assert_eq!(m.backups[0].ha_version.as_deref(), Some("2026.11.0"));
        assert!(matches!(
            m.last_action_event,
            Some(BackupEvent::CreateBackup {
                state: BackupState::Completed,
                ..
            })
        ));
        assert!(parse_list(&json!({"nope": 1})).is_err());
        assert!(parse_list(&json!({"backups": [{"name": "no id"}]})).is_err());
    }
}

//! `hapull check`: is everything hapull needs in place? Each line names what was checked and, when it
//! failed, what to do. Exit 0 only when nothing failed.

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, Global};
use crate::config::{BackupMode, Config, Via};
use crate::ha::{BackupApi, Client, HaError, Install, choose_local_agent};

#[derive(Debug, Args)]
pub struct CheckArgs {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Level, String, String)>,
}

impl Report {
    fn add(&mut self, level: Level, what: &str, text: impl Into<String>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let text = text.into();
        println!("[{tag}] {what:<12} {text}");
        self.lines.push((level, what.to_string(), text));
    }

    fn failed(&self) -> bool {
        self.lines.iter().any(|(l, _, _)| *l == Level::Fail)
    }
}

pub async fn run(global: &Global, _args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report { lines: Vec::new() };
    let loaded = match crate::config::load(&global.config) {
        Ok(l) => l,
        Err(e) => {
            report.add(Level::Fail, "config", e.to_string());
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    report.add(
        Level::Ok,
        "config",
        format!("{} is valid", global.config.display()),
    );
    for w in &loaded.warnings {
        report.add(Level::Warn, "config", w.to_string());
    }
    let cfg = loaded.config;
    check_home_assistant(&cfg, &mut report).await;
    check_ssh(&cfg, &mut report).await;
    check_store(&cfg, &mut report);
    check_verification(&cfg, &mut report);
    check_offsite(&cfg, &mut report).await;
    if report.failed() {
        println!("not ready: fix the FAIL lines above");
        Ok(ExitCode::from(EXIT_FAILED))
    } else {
        println!("ready");
        Ok(ExitCode::from(EXIT_OK))
    }
}

async fn check_home_assistant(cfg: &Config, report: &mut Report) {
    let client = match super::connect(cfg, false).await {
        Ok(c) => c,
        Err(e) => {
            report.add(Level::Fail, "connect", format!("{e:#}"));
            return;
        }
    };
    report.add(
        Level::Ok,
        "connect",
        format!(
            "{} (Home Assistant {})",
            cfg.home_assistant.endpoint,
            client.ha_version()
        ),
    );
    let api = match client.detect_backup_api().await {
        Ok(api) => api,
        Err(e) => {
            report.add(Level::Fail, "backup api", explain_backup_error(&e));
            return;
        }
    };
    report.add(Level::Ok, "backup api", api.to_string());
    let mut agent = None;
    match client.backup_info().await {
        Ok(list) => {
            let level = if list.state == "blocked" {
                Level::Warn
            } else {
                Level::Ok
            };
            report.add(
                level,
                "manager",
                format!(
                    "state {}, {} backup(s) listed",
                    list.state,
                    list.backups.len()
                ),
            );
        }
        Err(e) => report.add(Level::Fail, "permission", explain_backup_error(&e)),
    }
    if api == BackupApi::Modern {
        match client.backup_agents().await {
            Ok(agents) => {
                let names: Vec<String> = agents.iter().map(|a| a.agent_id.clone()).collect();
                match choose_local_agent(&agents, cfg.backup.agent_id.as_deref()) {
                    Ok(local) => {
                        report.add(
                            Level::Ok,
                            "agents",
                            format!("{}; local copies on {local}", names.join(", ")),
                        );
                        agent = Some(local);
                    }
                    Err(why) => report.add(Level::Fail, "agents", why),
                }
            }
            Err(e) => report.add(Level::Fail, "agents", explain_backup_error(&e)),
        }
        match client.backup_config().await {
            Ok(_) => report.add(Level::Ok, "permission", "the token may use the backup API"),
            Err(e) => report.add(Level::Fail, "permission", explain_backup_error(&e)),
        }
    }
    let install = match api {
        BackupApi::Legacy { .. } => Some(Install::Legacy),
        BackupApi::Modern => agent.as_deref().map(Install::of_agent),
    };
    if let Some(install) = install {
        report.add(Level::Ok, "install", install.to_string());
        report.add(Level::Ok, "needs", install_needs(install, cfg.transfer.via));
    }
    check_automations(cfg, &client, report).await;
    match (cfg.backup.mode, api) {
        (BackupMode::Api, BackupApi::Legacy { .. }) => report.add(
            Level::Ok,
            "mode",
            "api: this Home Assistant has the legacy backup API, so hapull uses its blocking backup/generate",
        ),
        (BackupMode::Api, BackupApi::Modern) => report.add(
            Level::Ok,
            "mode",
            format!(
                "api: backup/generate to {}",
                agent.as_deref().unwrap_or("the local agent")
            ),
        ),
        (BackupMode::Service, _) if install == Some(Install::Supervisor) => report.add(
            Level::Fail,
            "mode",
            "mode = \"service\" is the recipe for Core installs (a shell command deleting files in <config>/backups); on Home Assistant OS use mode = \"api\"",
        ),
        (BackupMode::Service, _) => check_services(cfg, &client, report).await,
    }
}

/// What this install type needs on the Home Assistant side, for the chosen transport.
fn install_needs(install: Install, via: Via) -> &'static str {
    match (install, via) {
        (Install::Core, Via::Sftp) => {
            "a read-only SFTP account on the HA host for <config>/backups ([ssh], see `hapull init --install core`); or [transfer] via = \"http\" and no SSH at all"
        }
        (Install::Supervisor, Via::Sftp) => {
            "SFTP into the Supervisor's backup folder: the SSH add-on with SFTP on, [ssh] remote_dir = \"/backup\" (see `hapull init --install os`); or [transfer] via = \"http\" and no SSH at all"
        }
        (Install::Legacy, Via::Sftp) => {
            "a read-only SFTP account on the HA host for <config>/backups, where archives are <slug>.tar ([ssh]); or [transfer] via = \"http\""
        }
        (Install::Core | Install::Legacy, Via::Http) => {
            "nothing more: archives come from Home Assistant's own download with this token (a cut download resumes)"
        }
        (Install::Supervisor, Via::Http) => {
            "nothing more: archives come from Home Assistant's own download with this token (hassio.local streams without ranges, so a cut download starts over)"
        }
    }
}

async fn check_services(cfg: &Config, client: &Client, report: &mut Report) {
    let services = match client.call(json!({"type": "get_services"})).await {
        Ok(v) => v,
        Err(e) => {
            report.add(
                Level::Fail,
                "services",
                format!("cannot list services: {e}"),
            );
            return;
        }
    };
    let has = |domain: &str, service: &str| {
        services
            .get(domain)
            .and_then(|d| d.get(service))
            .is_some_and(|s| !s.is_null())
    };
    let name = &cfg.backup.shell_command;
    if has("shell_command", name) {
        report.add(
            Level::Ok,
            "services",
            format!("shell_command.{name} exists"),
        );
    } else {
        report.add(
            Level::Fail,
            "services",
            format!(
                "mode = \"service\" needs shell_command.{name} in Home Assistant's configuration (see config/home-assistant/), or use mode = \"api\""
            ),
        );
    }
    if has("backup", "create") {
        report.add(Level::Ok, "services", "backup.create exists");
    } else {
        report.add(
            Level::Fail,
            "services",
            "backup.create is missing: add `backup:` to configuration.yaml",
        );
    }
    report.add(
        Level::Warn,
        "mode",
        format!(
            "service: shell_command.{name} deletes archive files behind Home Assistant's back, so they stay listed in its backup list until HA restarts; mode = \"api\" avoids this"
        ),
    );
}

/// Turns a backup API error into advice.
fn explain_backup_error(e: &HaError) -> String {
    match e.code() {
        // The error itself says what to do.
        Some("unauthorized") => e.to_string(),
        Some("unknown_command") => {
            format!(
                "{e} — the backup integration is not loaded; add `backup:` to configuration.yaml and restart Home Assistant"
            )
        }
        _ => e.to_string(),
    }
}

/// The SSH side: host key, login, the backups folder and whether its archives are readable.
async fn check_ssh(cfg: &Config, report: &mut Report) {
    if cfg.transfer.via == Via::Http {
        report.add(
            Level::Ok,
            "transfer",
            format!(
                "via http: {}://{}:{}{}/api/backup/download/<id>, with the token and TLS checked above; [ssh] not needed",
                if cfg.home_assistant.endpoint.is_tls() { "https" } else { "http" },
                cfg.home_assistant.endpoint.host(),
                cfg.home_assistant.endpoint.port(),
                cfg.home_assistant.endpoint.http_prefix()
            ),
        );
        return;
    }
    let Some(ssh) = &cfg.ssh else {
        report.add(Level::Warn, "ssh", "no [ssh] section: hapull cannot pull archives over SFTP (check, events and list --remote still work); add [ssh], or set [transfer] via = \"http\" to download through Home Assistant itself");
        return;
    };
    let target = match crate::service::ssh_target(cfg) {
        Ok(t) => t,
        Err(e) => {
            report.add(Level::Fail, "ssh", e.to_string());
            return;
        }
    };
    let opts = crate::transfer::SessionOptions {
        connect_timeout: ssh.connect_timeout,
        ciphers: ssh.ciphers.clone(),
        ..Default::default()
    };
    let session = match crate::transfer::Session::connect(&target, &opts).await {
        Ok(s) => s,
        Err(e) => {
            report.add(Level::Fail, "ssh", e.to_string());
            return;
        }
    };
    report.add(
        Level::Ok,
        "ssh",
        format!(
            "{}@{}:{}: host key verified, logged in",
            ssh.user, ssh.host, ssh.port
        ),
    );
    match session.list_dir(&ssh.remote_dir).await {
        Ok(entries) => {
            let mut archives: Vec<_> = entries
                .into_iter()
                .filter(|e| e.is_file && e.name.ends_with(".tar"))
                .collect();
            archives.sort_by_key(|e| std::cmp::Reverse(e.mtime));
            report.add(
                Level::Ok,
                "remote_dir",
                format!("{}: {} archive(s)", ssh.remote_dir, archives.len()),
            );
            if let Some(newest) = archives.first() {
                let path = format!("{}/{}", ssh.remote_dir.trim_end_matches('/'), newest.name);
                match crate::cycle::peek_backup_json(&session, &path).await {
                    Ok(_) => report.add(
                        Level::Ok,
                        "readable",
                        format!("{} can be read", newest.name.escape_debug()),
                    ),
                    Err(e) => report.add(Level::Fail, "readable", e.to_string()),
                }
            }
        }
        Err(e) => report.add(
            Level::Fail,
            "remote_dir",
            crate::cycle::remote_dir_problem(&ssh.remote_dir, &e).unwrap_or_else(|| e.to_string()),
        ),
    }
    session.close().await;
}

/// What a commit will prove about each archive, and whether protected backups can be read.
fn check_verification(cfg: &Config, report: &mut Report) {
    use crate::config::VerifyLevel;
    let Some(store) = &cfg.store else {
        return;
    };
    match (store.verify, cfg.backup.password.is_some()) {
        (VerifyLevel::Structure, _) => report.add(
            Level::Warn,
            "verify",
            "verify = \"structure\": inner archives are not read, archives are committed at \
             structure level only; set verify = \"full\" to check every byte",
        ),
        (VerifyLevel::Full, true) => report.add(
            Level::Ok,
            "verify",
            "full: every inner archive is read to its end; protected backups are decrypted with \
             the configured password",
        ),
        (VerifyLevel::Full, false) => report.add(
            Level::Warn,
            "verify",
            "no backup password configured: unprotected backups are verified in full, \
             password-protected ones (Home Assistant encrypts automatic backups by default) only \
             at structure level; set password_file in [backup] to verify them fully",
        ),
    }
    let deep = store.deep_verify;
    if deep != crate::config::DeepVerify::Off {
        let when = match deep {
            crate::config::DeepVerify::Every(_) => format!(
                "deep_verify = \"{}\": `hapull run` deep-verifies the committed archive once that \
                 long has passed since the last verdict",
                deep.describe()
            ),
            _ => {
                "deep_verify = \"every_cycle\": `hapull run` deep-verifies every committed archive"
                    .to_string()
            }
        };
        if cfg.backup.password.is_some() {
            report.add(Level::Ok, "deep_verify", when);
        } else {
            report.add(
                Level::Warn,
                "deep_verify",
                format!(
                    "{when}, but password-protected backups cannot be unpacked without a \
                     password: set password_file in [backup]"
                ),
            );
        }
    }
}

/// The store folder exists (or can be made) and is writable.
fn check_store(cfg: &Config, report: &mut Report) {
    let Some(store) = &cfg.store else {
        report.add(
            Level::Warn,
            "store",
            "no [store] section: hapull has nowhere to put archives",
        );
        return;
    };
    // Only a probe: a daemon may be writing this store, and repairing it belongs to its writer.
    let probe = store.dir.join(".hapull-check");
    let writable = crate::private_fs::create_dir_all(&store.dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => report.add(
            Level::Ok,
            "store",
            format!("{} is writable", store.dir.display()),
        ),
        Err(e) => report.add(
            Level::Fail,
            "store",
            format!("cannot write in {}: {e}", store.dir.display()),
        ),
    }
    match crate::store::Ledger::read(&store.dir) {
        // A ledger that cannot be read stops every cycle before it asks for a backup.
        Err(e) => report.add(Level::Fail, "store ledger", e.to_string()),
        Ok(l) if !l.pending.is_empty() => {
            let oldest = l.pending.iter().map(|p| p.requested_at.as_str()).min();
            report.add(
                Level::Warn,
                "store ledger",
                format!(
                    "{} backup request(s) of interrupted cycles not identified yet (oldest asked {}): \
                     the next cycle looks for them in Home Assistant; after 7 days hapull stops looking",
                    l.pending.len(),
                    oldest.unwrap_or("?")
                ),
            )
        }
        Ok(_) => {}
    }
    match crate::store::lock::StoreLock::holder(&store.dir) {
        Ok(Some(h)) => report.add(
            Level::Ok,
            "store lock",
            format!("held by {h}: `once`, `pull` and `prune` wait for it or are refused (exit 75)"),
        ),
        Ok(None) => {}
        Err(e) => report.add(Level::Warn, "store lock", e.to_string()),
    }
}

/// Each `[[offsite]]` target: rclone, the remote (reachable, writable, its hash), the proof hapull
/// will use, and whether deletions are allowed (a test file is uploaded, proven and deleted).
async fn check_offsite(cfg: &Config, report: &mut Report) {
    for target in crate::service::offsite_targets(cfg) {
        let what = format!("offsite {}", target.name());
        for (level, text) in target.check().await {
            let level = match level {
                crate::offsite::CheckLevel::Ok => Level::Ok,
                crate::offsite::CheckLevel::Warn => Level::Warn,
                crate::offsite::CheckLevel::Fail => Level::Fail,
            };
            report.add(level, &what, text);
        }
    }
}

/// Services that make a backup when an automation calls them.
const CREATING_SERVICES: &[&str] = &[
    "backup.create",
    "backup.create_automatic",
    "hassio.backup_full",
    "hassio.backup_partial",
];

/// What one automation does to backups, by the services its config calls.
#[derive(Debug, Default, PartialEq, Eq)]
struct BackupCalls {
    creates: Vec<String>,
    deletes: Vec<String>,
}

/// Every service an automation's config calls: the values of `service:` (before 2024.8) and
/// `action:` (since) at any depth, so actions inside `choose`, `if`, `repeat` and `parallel` count.
fn called_services(config: &Value, out: &mut Vec<String>) {
    match config {
        Value::Object(map) => {
            for (k, v) in map {
                if (k == "service" || k == "action")
                    && let Value::String(s) = v
                {
                    out.push(s.trim().to_string());
                }
                called_services(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| called_services(v, out)),
        _ => {}
    }
}

/// Whether `config` (an automation's, as `automation/config` returns it) creates or deletes backups.
/// A shell command counts as deleting when it is the one `mode = "service"` uses or its name
/// mentions backups: its command line is not visible over the API.
fn backup_calls(config: &Value, shell_command: &str) -> BackupCalls {
    let mut services = Vec::new();
    called_services(config, &mut services);
    let mut calls = BackupCalls::default();
    for s in services {
        if CREATING_SERVICES.contains(&s.as_str()) {
            if !calls.creates.contains(&s) {
                calls.creates.push(s);
            }
        } else if let Some(name) = s.strip_prefix("shell_command.")
            && (name == shell_command || name.contains("backup"))
            && !calls.deletes.contains(&s)
        {
            calls.deletes.push(s);
        }
    }
    calls
}

/// Warns about each enabled Home Assistant automation that makes or deletes backups by itself — the
/// recipe's "Create Backup on Schedule" deletes every archive, also ones hapull has not pulled yet.
async fn check_automations(cfg: &Config, client: &Client, report: &mut Report) {
    let states = match client.call(json!({"type": "get_states"})).await {
        Ok(Value::Array(states)) => states,
        Ok(_) => {
            report.add(
                Level::Warn,
                "automations",
                "cannot read Home Assistant's automations: get_states did not answer a list",
            );
            return;
        }
        Err(e) => {
            report.add(Level::Warn, "automations", format!("cannot read Home Assistant's automations: {e}; make sure none of them creates or deletes backups"));
            return;
        }
    };
    let automations: Vec<&Value> = states
        .iter()
        .filter(|s| {
            s.get("entity_id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with("automation."))
        })
        .collect();
    let mut found = 0;
    for a in &automations {
        let Some(id) = a.get("entity_id").and_then(Value::as_str) else {
            continue;
        };
        let name = a
            .pointer("/attributes/friendly_name")
            .and_then(Value::as_str)
            .unwrap_or(id);
        let config = match client
            .call(json!({"type": "automation/config", "entity_id": id}))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                report.add(
                    Level::Warn,
                    "automations",
                    format!("cannot read the config of {id} ({name:?}): {e}; make sure it does not create or delete backups"),
                );
                continue;
            }
        };
        let calls = backup_calls(
            config.get("config").unwrap_or(&config),
            &cfg.backup.shell_command,
        );
        if calls.creates.is_empty() && calls.deletes.is_empty() {
            continue;
        }
        found += 1;
        let enabled = a.get("state").and_then(Value::as_str) != Some("off");
        let mut what = Vec::new();
        if !calls.deletes.is_empty() {
            what.push(format!(
                "{}, which deletes archives hapull may not have pulled yet",
                calls.deletes.join(", ")
            ));
        }
        if !calls.creates.is_empty() {
            what.push(format!(
                "{}, which makes backups on its own schedule",
                calls.creates.join(", ")
            ));
        }
        let text = format!("automation {name:?} ({id}) calls {}", what.join(", and "));
        if enabled {
            report.add(
                Level::Warn,
                "automations",
                format!("{text}: disable it in Home Assistant (Settings -> Automations & scenes, or `automation.turn_off`); hapull makes the backups now (README, Coming from the recipe)"),
            );
        } else {
            report.add(
                Level::Ok,
                "automations",
                format!("{text}, but it is disabled"),
            );
        }
    }
    if found == 0 {
        report.add(
            Level::Ok,
            "automations",
            format!(
                "none of {} automation(s) creates or deletes backups",
                automations.len()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipes_automation_is_recognised_in_old_and_new_syntax() {
        // As Home Assistant 2024.3 stores the recipe (`service:` steps under `action:`).
        let old = json!({"id": "recipe_backup_schedule", "alias": "Create Backup on Schedule",
            "trigger": [{"platform": "time_pattern", "minutes": 5}],
            "action": [{"service": "shell_command.delete_backups", "data": {}},
                       {"service": "backup.create", "data": {}}]});
        let calls = backup_calls(&old, "delete_backups");
        assert_eq!(calls.deletes, ["shell_command.delete_backups"]);
        assert_eq!(calls.creates, ["backup.create"]);
        // 2024.8 and later: `actions:` with `action:` steps, nested in a choose.
        let new = json!({"triggers": [], "actions": [{"choose": [{"conditions": [],
            "sequence": [{"action": "hassio.backup_full"}]}]}]});
        let calls = backup_calls(&new, "delete_backups");
        assert_eq!(calls.creates, ["hassio.backup_full"]);
        assert!(calls.deletes.is_empty());
        // Lights are not backups; a shell command named otherwise is not assumed to delete any.
        let other =
            json!({"actions": [{"action": "light.turn_on"}, {"action": "shell_command.notify"}]});
        assert_eq!(
            backup_calls(&other, "delete_backups"),
            BackupCalls::default()
        );
        let renamed = json!({"actions": [{"action": "shell_command.purge"}]});
        assert_eq!(
            backup_calls(&renamed, "purge").deletes,
            ["shell_command.purge"]
        );
    }
}

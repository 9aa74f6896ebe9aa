//! `hapull list`, `hapull verify` (and `verify --deep`), `hapull prune`: the local store (and `list --remote`: HA's list).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::{EXIT_FAILED, EXIT_OK, Global};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List Home Assistant's backups instead of the local store.
    #[arg(long, conflicts_with = "offsite")]
    pub remote: bool,
    /// Local archives beside their copies on each [[offsite]] target (what hapull proved there, and
    /// what the remote holds now).
    #[arg(long)]
    pub offsite: bool,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id to verify.
    #[arg(conflicts_with = "all", required_unless_present = "all")]
    pub backup_id: Option<String>,
    /// Verify every archive in the store.
    #[arg(long)]
    pub all: bool,
    /// File holding the backup password (default: the config's `password_file`), to decrypt and
    /// verify protected backups.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// Also prove a restore would work: unpack into a private temporary folder in the store, run
    /// SQLite's integrity check on the recorder database and parse every .storage file as JSON,
    /// then remove the folder.
    #[arg(long)]
    pub deep: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted and why, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn list(global: &Global, args: ListArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    if args.remote {
        let client = super::connect(&cfg, false).await?;
        let mut list = client.backup_info().await?;
        // Newest first, as the local list; Home Assistant's order is not defined. Dates HA wrote in
        // a form that does not parse go last, in their own order.
        list.backups
            .sort_by_cached_key(|b| std::cmp::Reverse(b.date.parse::<jiff::Timestamp>().ok()));
        if args.json {
            let items: Vec<_> = list
                .backups
                .iter()
                .map(|b| json!({"backup_id": b.backup_id, "name": b.name, "date": b.date, "size": b.size, "protected": b.protected, "ha_version": b.ha_version}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"state": list.state, "backups": items}))?
            );
        } else {
            println!("{:<10} {:<34} {:>12}  NAME", "ID", "DATE", "SIZE");
            for b in &list.backups {
                let size = b
                    .size
                    .map(|s| s.to_string())
                    .or(b.size_mb_approx.map(|m| format!("~{m} MB")))
                    .unwrap_or_default();
                println!(
                    "{:<10} {:<34} {:>12}  {}",
                    b.backup_id,
                    b.date,
                    size,
                    b.name.escape_debug()
                );
            }
        }
        return Ok(ExitCode::from(EXIT_OK));
    }
    if args.offsite {
        return list_offsite(&cfg, args.json).await;
    }
    let store = crate::service::open_store_read_only(&cfg)?;
    let listing = tokio::task::spawn_blocking(move || store.scan()).await??;
    if args.json {
        let items: Vec<_> = listing
            .archives
            .iter()
            .map(|a| json!({"path": a.relative_path, "manifest": a.manifest}))
            .collect();
        let problems: Vec<_> = listing.problems.iter().map(|p| p.to_string()).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"archives": items, "problems": problems}))?
        );
    } else {
        println!(
            "{:<10} {:<22} {:>12}  {:<10} {:<9}  PATH",
            "ID", "PULLED AT", "SIZE", "VERIFIED", "PROTECTED"
        );
        for a in &listing.archives {
            let protected = match (a.manifest.protected, a.manifest.securetar) {
                (false, _) => "no".to_owned(),
                (true, Some(v)) => format!("yes (v{v})"),
                (true, None) => "yes".to_owned(),
            };
            println!(
                "{:<10} {:<22} {:>12}  {:<10} {:<9}  {}",
                a.manifest.backup_id,
                a.manifest
                    .pulled_at
                    .strftime("%Y-%m-%d %H:%M:%SZ")
                    .to_string(),
                a.manifest.size,
                a.manifest.verified_str(),
                protected,
                a.relative_path
            );
        }
        for p in &listing.problems {
            eprintln!("problem: {p}");
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

pub async fn verify(global: &Global, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    let store = crate::service::open_store_read_only(&cfg)?;
    let password = match &args.password_file {
        Some(path) => Some(super::read_password_file(path)?),
        None => cfg.backup.password.clone(),
    };
    if args.deep {
        return verify_deep(store, args.backup_id, password).await;
    }
    let failed = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        // One set of keys for the run: archives of one backup series share nothing, but the cache
        // costs nothing and the password is held once.
        let mut keys = password.map(crate::store::Keys::new);
        let archives = match &args.backup_id {
            Some(id) => vec![
                store
                    .find(id)?
                    .with_context(|| format!("no archive of backup {id} in the store"))?,
            ],
            None => store.list()?,
        };
        let mut failed = 0;
        for a in &archives {
            // One read of each file: SHA-256 against the manifest, the archive's structure, and
            // every inner archive decrypted (if protected) and decompressed to its end.
            let report = store.verify_with(a, Some(crate::store::Verify::Full), keys.as_mut())?;
            if report.is_ok() {
                let level = report.level.map_or("hashed", crate::store::Level::as_str);
                println!(
                    "{level:<9} {}  sha256 {}",
                    report.relative_path, report.actual_sha256
                );
                for w in &report.warnings {
                    println!("          warning: {w}");
                }
            } else {
                failed += 1;
                println!(
                    "FAILED  {}: {}",
                    report.relative_path,
                    report.problems.join("; ")
                );
            }
        }
        Ok(failed)
    })
    .await??;
    Ok(ExitCode::from(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}

/// `verify --deep`: per archive, one line per check; exit 0 only when every check passed.
async fn verify_deep(
    store: crate::store::Store,
    backup_id: Option<String>,
    password: Option<crate::secret::Secret>,
) -> anyhow::Result<ExitCode> {
    use crate::store::deep::{Cancel, deep_verify};
    let cancel = std::sync::Arc::new(Cancel::default());
    let worker_cancel = cancel.clone();
    let mut work = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut keys = password.map(crate::store::Keys::new);
        let archives = match &backup_id {
            Some(id) => vec![
                store
                    .find(id)?
                    .with_context(|| format!("no archive of backup {id} in the store"))?,
            ],
            None => store.list()?,
        };
        let mut failed = 0;
        for a in &archives {
            if worker_cancel.is_cancelled() {
                break;
            }
            let report = deep_verify(&store, a, keys.as_mut(), &worker_cancel)?;
            let verdict = if report.passed() { "ok" } else { "FAILED" };
            println!("{verdict}  {}", report.relative_path);
            for c in &report.checks {
                println!(
                    "  {:<9} {:<13} {}",
                    c.name,
                    c.outcome.label(),
                    c.outcome.detail()
                );
            }
            if !report.passed() {
                failed += 1;
            }
        }
        Ok(failed)
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // An interruption stops the check and waits for its temporary folder to be removed: the
    // folder holds the unpacked backup.
    let (failed, interrupted) = tokio::select! {
        done = &mut work => (done??, false),
        _ = tokio::signal::ctrl_c() => { cancel.cancel(); (work.await??, true) }
        _ = sigterm.recv() => { cancel.cancel(); (work.await??, true) }
    };
    if interrupted {
        eprintln!("hapull: verify --deep interrupted; its temporary folder was removed");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    Ok(ExitCode::from(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}

pub async fn prune(global: &Global, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    let policy = crate::service::retention(&cfg);
    let tz = crate::service::timezone(&cfg)?;
    if policy.keeps_everything() {
        println!("no keep_* rule is set in [store]: everything is kept");
        return Ok(ExitCode::from(EXIT_OK));
    }
    let dry_run = args.dry_run;
    // A dry run only reads; a real one is the store's writer for its duration.
    let (_lock, store, audit) = if dry_run {
        (None, crate::service::open_store_read_only(&cfg)?, None)
    } else {
        let lock = super::lock_store(global, &cfg, "prune").await?;
        let store = crate::service::open_store(&cfg)?;
        (Some(lock), store, crate::service::open_audit(&cfg).await?)
    };
    let decisions =
        tokio::task::spawn_blocking(move || store.prune(&policy, &tz, dry_run)).await??;
    for d in &decisions {
        let verdict = if d.keep {
            "keep  "
        } else if dry_run {
            "would delete"
        } else {
            "delete"
        };
        let why = if d.reasons.is_empty() {
            "no rule keeps it".to_string()
        } else {
            d.reasons.join(", ")
        };
        println!("{verdict}  {}  ({why})", d.archive.relative_path);
        if !d.keep
            && !dry_run
            && let Some(a) = &audit
        {
            a.step(
                crate::audit::Kind::StorePruned,
                json!({"backup_id": d.archive.manifest.backup_id, "path": d.archive.relative_path}),
            )
            .await?;
        }
    }
    if let Some(a) = audit {
        a.close().await?;
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `hapull list --offsite`: every archive known locally or on a target, and where it is.
async fn list_offsite(cfg: &crate::config::Config, as_json: bool) -> anyhow::Result<ExitCode> {
    let targets = crate::service::offsite_targets(cfg);
    if targets.is_empty() {
        anyhow::bail!(
            "{}: no [[offsite]] target is configured; see config/hapull.example.toml",
            cfg.path.display()
        );
    }
    let store = std::sync::Arc::new(crate::service::open_store_read_only(cfg)?);
    let s = store.clone();
    let local = tokio::task::spawn_blocking(move || s.list()).await??;
    let mut failed = false;
    let mut out = Vec::new();
    for t in &targets {
        let ledger = t.ledger(&store)?;
        let remote = match t.remote_files().await {
            Ok(files) => Some(files),
            Err(e) => {
                eprintln!(
                    "hapull: offsite {}: cannot list {}: {e}",
                    t.name(),
                    t.shown_remote()
                );
                failed = true;
                None
            }
        };
        let on_remote = |rel: &str| {
            remote
                .as_ref()
                .map(|files| files.iter().any(|f| f.path == rel))
        };
        // Every archive: local ones, then those only the target still has.
        let mut rows: Vec<serde_json::Value> = Vec::new();
        for a in &local {
            let copy = ledger.find(&a.manifest.backup_id, &a.manifest.sha256);
            rows.push(json!({
                "backup_id": a.manifest.backup_id,
                "path": a.relative_path,
                "size": a.manifest.size,
                "pulled_at": a.manifest.pulled_at.to_string(),
                "local": true,
                "proven": copy.map(|c| json!({"proof": c.proof, "value": c.proof_value, "at": c.proven_at})),
                "on_remote": on_remote(&a.relative_path),
            }));
        }
        for c in &ledger.copies {
            if local.iter().any(|a| a.relative_path == c.relative_path) {
                continue;
            }
            rows.push(json!({
                "backup_id": c.manifest.backup_id,
                "path": c.relative_path,
                "size": c.manifest.size,
                "pulled_at": c.manifest.pulled_at.to_string(),
                "local": false,
                "proven": json!({"proof": c.proof, "value": c.proof_value, "at": c.proven_at}),
                "on_remote": on_remote(&c.relative_path),
                "delete_refused_at": c.delete_refused_at,
            }));
        }
        rows.sort_by(|a, b| b["pulled_at"].as_str().cmp(&a["pulled_at"].as_str()));
        for r in &rows {
            if r["proven"].is_object() && r["on_remote"] == json!(false) {
                // hapull proved this copy once; it is gone now (deleted behind hapull's back?).
                failed = true;
                eprintln!(
                    "hapull: offsite {}: {} was proven there but is no longer on the remote",
                    t.name(),
                    r["path"].as_str().unwrap_or_default()
                );
            }
        }
        if !as_json {
            println!("offsite {} ({}):", t.name(), t.shown_remote());
            println!(
                "  {:<10} {:<6} {:<22} {:>12}  PATH",
                "ID", "LOCAL", "OFFSITE", "SIZE"
            );
            for r in &rows {
                let proven = r["proven"]["proof"].as_str();
                let present = r["on_remote"].as_bool();
                let offsite = match (proven, present) {
                    (Some(p), Some(true) | None) => format!("proven ({p})"),
                    (Some(_), Some(false)) => "GONE from remote".to_string(),
                    (None, Some(true)) => "unproven copy".to_string(),
                    (None, _) => "missing".to_string(),
                };
                println!(
                    "  {:<10} {:<6} {:<22} {:>12}  {}",
                    r["backup_id"].as_str().unwrap_or_default(),
                    if r["local"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    offsite,
                    r["size"],
                    r["path"].as_str().unwrap_or_default()
                );
            }
        }
        out.push(json!({"target": t.name(), "remote": t.shown_remote(), "last_success": ledger.last_success, "archives": rows}));
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"offsite": out}))?
        );
    }
    Ok(ExitCode::from(if failed { EXIT_FAILED } else { EXIT_OK }))
}

//! `hapull once` (one full cycle now) and `hapull pull <backup_id>` (pull a backup HA already has).

use std::process::ExitCode;

use clap::Args;

use super::{EXIT_FAILED, EXIT_OK, Global};
use crate::cycle::Report;

#[derive(Debug, Args)]
pub struct OnceArgs {}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The backup id, as `hapull list --remote` shows it.
    pub backup_id: String,
}

pub async fn run_once(global: &Global, _args: OnceArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    // Held until this function returns: the store, its ledger and the audit log have one writer.
    let _lock = super::lock_store(global, &cfg, "once").await?;
    let ctx = build(&cfg).await?;
    let outcome = ctx.run_cycle().await;
    finish(&cfg, &ctx, outcome).await
}

pub async fn run_pull(global: &Global, args: PullArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    let _lock = super::lock_store(global, &cfg, "pull").await?;
    let ctx = build(&cfg).await?;
    let outcome = ctx.pull_existing(&args.backup_id).await;
    finish(&cfg, &ctx, outcome).await
}

async fn finish(
    cfg: &crate::config::Config,
    ctx: &crate::cycle::Context,
    outcome: Result<Report, crate::cycle::CycleError>,
) -> anyhow::Result<ExitCode> {
    if let Some(audit) = &ctx.audit {
        audit.close().await?;
    }
    record_outcome(cfg, &outcome);
    match outcome {
        Ok(r) => {
            println!(
                "committed {} ({} bytes, sha256 {})",
                r.archive.path.display(),
                r.pull.size,
                r.pull.sha256_hex()
            );
            for id in &r.deleted_on_ha {
                println!("deleted from Home Assistant: {id} (verified local copy exists)");
            }
            for id in &r.pruned {
                println!("pruned from the store: {id}");
            }
            let mut offsite_failed = false;
            for o in &r.offsite {
                for p in &o.uploaded {
                    println!(
                        "offsite {}: {} copied and proven ({})",
                        o.name, p.relative_path, p.proof
                    );
                }
                for id in &o.deleted {
                    println!("offsite {}: {id} deleted by its retention", o.name);
                }
                for id in &o.refused {
                    println!(
                        "offsite {}: the storage refused to delete {id} (write-only target); it stays",
                        o.name
                    );
                }
                if let Some(why) = &o.retention_waits {
                    println!("offsite {}: {why}", o.name);
                }
                for (id, e) in &o.failures {
                    offsite_failed = true;
                    match id {
                        Some(id) => eprintln!("hapull: offsite {}: {id} NOT copied: {e}", o.name),
                        None => eprintln!("hapull: offsite {}: {e}", o.name),
                    }
                }
                if o.ok() && o.lag_archives == 0 {
                    println!(
                        "offsite {}: up to date (proof: {})",
                        o.name,
                        o.proof.as_deref().unwrap_or("-")
                    );
                }
            }
            if offsite_failed {
                eprintln!(
                    "hapull: the archive is committed locally; the offsite copy is missing (next cycle retries)"
                );
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        Err(e) => {
            use crate::cycle::Step;
            match e.step() {
                // These run only after the commit: the archive is safe, the tidy-up is not done.
                Some(Step::CleanUpHa | Step::Retention | Step::Offsite) => {
                    eprintln!("hapull: archive committed, but {e}")
                }
                _ => eprintln!("hapull: backup not committed: {e}"),
            }
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// Writes the outcome into the state file, where `hapull health` and a daemon's `/healthz` read the
/// last success. Only a cycle that finished counts as a success, as in the daemon and its metrics. A
/// state file that cannot be written is reported and does not change the exit code: the backup
/// itself is done.
fn record_outcome(cfg: &crate::config::Config, outcome: &Result<Report, crate::cycle::CycleError>) {
    let committed = outcome.is_ok();
    let path = &cfg.schedule.state_file;
    let write = || -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private_fs::create_dir_all(dir)?;
        }
        let state = crate::daemon::StateFile::open(path)?;
        let now = jiff::Timestamp::now();
        if committed {
            state.record_success(now)?;
        } else {
            state.record_failure(now)?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        eprintln!(
            "hapull: warning: cannot record the outcome in the state file {}: {e:#}; `hapull health` will not see it",
            path.display()
        );
    }
}

/// Everything a cycle needs, connected (with progress on the terminal).
async fn build(cfg: &crate::config::Config) -> anyhow::Result<crate::cycle::Context> {
    // Checked before connecting, so a config problem is reported as such.
    crate::service::settings(cfg, true)?;
    let audit = crate::service::open_audit(cfg).await?;
    let client = super::connect(cfg, true).await?;
    Ok(crate::service::context(cfg, client, audit, true).await?)
}

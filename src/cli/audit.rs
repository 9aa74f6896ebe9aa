//! `hapull audit verify` and `hapull audit tail`: check and read the audit log; `hapull audit ack`:
//! record that a person has looked at the recoveries `verify` reports.
//!
//! `verify` and `tail` only read the log; they never write to it (recovering a torn tail is the
//! writer's job, done when hapull next opens the log). `ack` writes one record, as the store's writer.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use jiff::{SignedDuration, Timestamp};

use crate::audit::tail::{self, Follower, TailFilter, TailLine};
use crate::audit::{self, VerifyOptions, VerifyReport};

/// How often `tail -f` looks for new records.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit log. Exits 0 when it is intact and every recovery (torn tail,
    /// records lost from the end, a changed last record) has been acknowledged; 1 otherwise, printing
    /// the first bad record or the recoveries still to acknowledge.
    Verify(VerifyArgs),
    /// Acknowledge the recoveries `audit verify` reports, after looking into them: writes an
    /// `audit.acknowledged` record covering them (it stays in the chain), so `verify` exits 0 again.
    Ack(AckArgs),
    /// Show audit records, optionally filtered by kind and time; -f keeps following new ones.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The current audit file; rotated files and the seal are found beside it.
    /// Defaults to [audit] path from the configuration.
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// Check exactly these files, oldest first, instead of discovering them from the path.
    #[arg(value_name = "FILES")]
    pub files: Vec<PathBuf>,
    /// Accept a chain that starts after the first record (older rotated files were removed on purpose).
    #[arg(long)]
    pub allow_partial: bool,
}

#[derive(Debug, Args)]
pub struct AckArgs {
    /// The current audit file. Defaults to [audit] path from the configuration.
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// What was found and done, kept in the acknowledgement record.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The current audit file. Defaults to [audit] path from the configuration.
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// Keep printing new records as they are written, across rotation, until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only records of this kind (repeat, or separate with commas), e.g. --kind pull.finished.
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Only records at or after this time: RFC 3339 (2026-11-26T09:00:00Z) or an age (2h, 3days).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Print each record's stored JSON line unchanged.
    #[arg(long)]
    pub json: bool,
    /// How many of the newest matching records to print first (default 10, or all with --since).
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
}

/// Runs an audit subcommand, printing to stdout. `default_path` is the configured `[audit] path`;
/// `--path` overrides it.
pub async fn run(cmd: AuditCommand, default_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout();
    run_with_output(cmd, default_path, &mut out).await
}

/// [`run`], printing to `out`.
pub async fn run_with_output(
    cmd: AuditCommand,
    default_path: Option<&Path>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify(args) => run_verify(args, default_path, out).await,
        AuditCommand::Tail(args) => run_tail(args, default_path, out).await,
        AuditCommand::Ack(args) => {
            // Without a configuration (no store lock to take): only for a log no process writes.
            let path = choose_path(args.path, default_path)?;
            acknowledge(&path, "", args.note, out).await
        }
    }
}

/// `hapull audit ack` with a configuration: as the store's writer (taking its lock), with the
/// configured instance name.
pub async fn run_ack(global: &super::Global, args: AckArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    let Some(acfg) = cfg.audit.as_ref() else {
        bail!(
            "{} has no [audit] section, so there is no audit log to acknowledge",
            cfg.path.display()
        );
    };
    let path = args.path.unwrap_or_else(|| acfg.path.clone());
    let _lock = super::lock_store(global, &cfg, "audit ack").await?;
    let mut out = std::io::stdout();
    acknowledge(&path, &acfg.instance, args.note, &mut out).await
}

/// Writes an `audit.acknowledged` record covering every recovery `verify` reports for the log at
/// `path`. The caller holds the store's lock (this writes the log). Refuses on a broken chain: an
/// acknowledgement covers recorded recoveries, not damage nobody recorded.
pub async fn acknowledge(
    path: &Path,
    instance: &str,
    note: Option<String>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<ExitCode> {
    let report = {
        let owned = path.to_path_buf();
        tokio::task::spawn_blocking(move || audit::verify_path(&owned, false))
            .await?
            .with_context(|| format!("verifying the audit log {}", path.display()))?
    };
    if let Some(p) = &report.problem {
        print_report(&report, out)?;
        bail!(
            "not acknowledging: the chain is broken at {p}, which no recovery record accounts for. \
             Keep the files as evidence and start a new log (move them aside) once you know what happened"
        );
    }
    let pending: Vec<&audit::Recovery> = report.unacknowledged().collect();
    let Some(through) = pending.iter().map(|r| r.seq).max() else {
        writeln!(out, "nothing to acknowledge: no recovery is waiting")?;
        return Ok(ExitCode::SUCCESS);
    };
    for r in &pending {
        writeln!(out, "acknowledging {r}")?;
    }
    let mut seqs: Vec<u64> = pending.iter().map(|r| r.seq).collect();
    seqs.dedup();
    let by = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default();
    let log = audit::AuditLog::open(audit::AuditOptions::new(path, instance))
        .await
        .with_context(|| format!("opening the audit log {}", path.display()))?;
    let written = log
        .step(
            audit::Kind::Acknowledged,
            serde_json::json!({"through_seq": through, "recoveries": seqs, "by": by, "note": note}),
        )
        .await;
    log.close().await?;
    let seq = written?;
    writeln!(
        out,
        "recorded audit.acknowledged at seq {seq}, covering recoveries up to seq {through}"
    )?;
    Ok(ExitCode::SUCCESS)
}

fn choose_path(explicit: Option<PathBuf>, default_path: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit.or_else(|| default_path.map(Path::to_path_buf)) {
        Some(p) => Ok(p),
        None => bail!(
            "no audit log path: pass --path /var/lib/hapull/audit.jsonl or set [audit] path in the configuration"
        ),
    }
}

async fn run_verify(
    args: VerifyArgs,
    default_path: Option<&Path>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<ExitCode> {
    let report = if args.files.is_empty() {
        let path = choose_path(args.path, default_path)?;
        let shown = path.display().to_string();
        let allow_partial = args.allow_partial;
        tokio::task::spawn_blocking(move || audit::verify_path(&path, allow_partial))
            .await?
            .with_context(|| format!("verifying the audit log {shown}"))?
    } else {
        let files = args.files;
        // A seal only ever sits beside the current file; use it when that file is among those given.
        let seal = files.last().map(|f| {
            let mut name = f.file_name().unwrap_or_default().to_os_string();
            name.push(".seal");
            f.with_file_name(name)
        });
        let opts = VerifyOptions {
            allow_partial: args.allow_partial,
            seal: seal.filter(|s| s.exists()),
        };
        tokio::task::spawn_blocking(move || audit::verify(&files, &opts))
            .await?
            .context("verifying the audit files")?
    };
    print_report(&report, out)?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &VerifyReport, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    for w in &report.warnings {
        writeln!(out, "warning: {w}")?;
    }
    for r in &report.recoveries {
        writeln!(out, "{r}")?;
    }
    match &report.problem {
        Some(p) => {
            writeln!(out, "audit log BROKEN: first bad record at {p}")?;
            if let Some(last) = report.last_seq {
                writeln!(
                    out,
                    "records before it are intact ({} records, up to seq {last})",
                    report.records
                )?;
            }
        }
        None => {
            let range = match (report.first_seq, report.last_seq) {
                (Some(a), Some(b)) => format!(", seq {a}..{b}"),
                _ => String::new(),
            };
            writeln!(
                out,
                "audit log intact: {} records in {} file(s){range}",
                report.records,
                report.files.len()
            )?;
            if let Some(h) = &report.last_sha256 {
                writeln!(out, "newest record sha256 {h}")?;
            }
            let open = report.unacknowledged().count();
            if open > 0 {
                writeln!(
                    out,
                    "NEEDS ATTENTION: {open} recovery finding(s) not acknowledged: the log was damaged or cut \
                     and hapull recovered it. Look into it, then record that with `hapull audit ack --note \"...\"`"
                )?;
            }
        }
    }
    Ok(())
}

/// `--since`: a timestamp, or an age counted back from `now`.
pub(crate) fn parse_since(value: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    if let Ok(t) = value.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(age) = humantime::parse_duration(value)
        && let Ok(age) = SignedDuration::try_from(age)
        && let Ok(t) = now.checked_sub(age)
    {
        return Ok(t);
    }
    bail!(
        "--since {value:?} is neither a time like 2026-11-26T09:00:00Z nor an age like 2h or 30min"
    )
}

async fn run_tail(
    args: TailArgs,
    default_path: Option<&Path>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<ExitCode> {
    let path = choose_path(args.path, default_path)?;
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, Timestamp::now()))
        .transpose()?;
    let filter = TailFilter {
        kinds: args.kinds,
        since,
    };
    let limit = args.lines.or(if since.is_some() { None } else { Some(10) });
    let json = args.json;

    // History: the rotated files, then the current file through the follower so that following
    // continues exactly where the history ends.
    let shown = path.display().to_string();
    let (history, skipped, follower) = {
        let path = path.clone();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut follower = Follower::new(&path);
            let mut history: VecDeque<TailLine> = VecDeque::new();
            let mut keep = |t: TailLine| {
                if limit == Some(0) {
                    return;
                }
                history.push_back(t);
                if limit.is_some_and(|n| history.len() > n) {
                    history.pop_front();
                }
            };
            let rotated: Vec<PathBuf> = audit::discover(&path)?
                .into_iter()
                .filter(|f| f != &path)
                .collect();
            let mut skipped = tail::read(&rotated, &filter, &mut keep)?;
            for line in follower.poll()? {
                match tail::parse(&line) {
                    Some(t) if filter.matches(&t.record) => keep(t),
                    Some(_) => {}
                    None => skipped += 1,
                }
            }
            Ok((history, skipped, follower))
        })
        .await?
        .with_context(|| format!("reading the audit log {shown}"))?
    };
    for t in &history {
        print_line(t, json, out)?;
    }
    if skipped > 0 {
        eprintln!(
            "note: {skipped} line(s) are not audit records and were skipped; run `hapull audit verify`"
        );
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    out.flush()?;
    let mut follower = follower;
    let mut ticker = tokio::time::interval(FOLLOW_INTERVAL);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {}
        }
        let (f, lines) = tokio::task::spawn_blocking(move || {
            let lines = follower.poll();
            (follower, lines)
        })
        .await?;
        follower = f;
        let lines = lines.with_context(|| format!("following the audit log {}", path.display()))?;
        for line in lines {
            if let Some(t) = tail::parse(&line)
                && filter.matches(&t.record)
            {
                print_line(&t, json, out)?;
            }
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_line(t: &TailLine, json: bool, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", t.line)?;
    } else {
        writeln!(out, "{}", tail::format_text(&t.record))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_ages() {
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_since("2h", now).unwrap(),
            "2026-11-26T10:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_since("2026-11-26T09:00:00Z", now).unwrap(),
            "2026-11-26T09:00:00Z".parse::<Timestamp>().unwrap()
        );
        let err = parse_since("yesterday-ish", now).unwrap_err().to_string();
        assert!(err.contains("yesterday-ish"), "{err}");
    }
}

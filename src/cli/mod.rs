//! The command line: one file per subcommand. This is the only layer (with `main.rs`) that uses
//! `anyhow` and prints for humans; it turns validated config into the options of the library's modules.

pub mod audit;
mod check;
mod completions;
mod events;
mod extract;
mod init;
mod once;
mod run;
mod store_cmds;
mod trust_host;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::ha::Client;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The command ran and failed (a check failed, a backup was not committed, ...).
pub const EXIT_FAILED: u8 = 1;
/// Bad usage or configuration: nothing was attempted.
pub const EXIT_USAGE: u8 = 2;
/// Another hapull process is writing the store: nothing was attempted, try again later (`EX_TEMPFAIL`).
pub const EXIT_TEMPFAIL: u8 = 75;

#[derive(Debug, Parser)]
#[command(name = "hapull", version, about = "Pull verified Home Assistant backups to this machine", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file.
    #[arg(short, long, global = true, env = "HAPULL_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log detail (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When another hapull process is writing the store, wait for it to finish instead of exiting with
    /// status 75. Never waits for a running daemon (`hapull run`), which holds the store while it runs.
    #[arg(long, global = true)]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Full cycles against a simulated Home Assistant and an embedded SFTP server, in a temporary
    /// folder: no network, no root, no configuration.
    Demo(DemoArgs),
    /// Check the configuration and the connection to Home Assistant; exit 0 only when all is ready.
    Check(check::CheckArgs),
    /// Print Home Assistant events as JSON lines until interrupted.
    Events(events::EventsArgs),
    /// Run as a daemon: cycles on the schedule, one Home Assistant connection kept open, status
    /// endpoint, notifications. Stops cleanly on SIGTERM/SIGINT.
    Run(run::RunArgs),
    /// Exit 0 when the last successful cycle is recent enough (for Docker's HEALTHCHECK), else 1.
    Health(run::HealthArgs),
    /// Run one backup cycle now: create, await, pull, verify, commit, clean up. Exit 0 only when an
    /// archive was committed.
    Once(once::OnceArgs),
    /// Pull a backup Home Assistant already has, without creating one.
    Pull(once::PullArgs),
    /// List the archives in the local store (or, with --remote, Home Assistant's backups).
    List(store_cmds::ListArgs),
    /// Check local archives in one read each: SHA-256 against the manifest, structure, and every
    /// inner archive decrypted (protected backups) and decompressed to its end. With --deep, also
    /// unpack it and check the recorder database (SQLite) and the .storage files (JSON).
    Verify(store_cmds::VerifyArgs),
    /// Unpack a Home Assistant backup (protected or not) into a folder, without Home Assistant.
    Extract(extract::ExtractArgs),
    /// Apply the local retention rules, showing what goes and why.
    Prune(store_cmds::PruneArgs),
    /// Show the SSH server's host key fingerprint, to compare and pin it.
    TrustHost(trust_host::TrustHostArgs),
    /// The tamper-evident audit log: verify its hash chain, or show its records.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Write a commented config, a key pair and known_hosts into a folder, and print what to set up on
    /// the Home Assistant host.
    Init(init::InitArgs),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff).
    Man(completions::ManArgs),
}

/// `hapull demo`: full cycles against a simulated Home Assistant, nothing to set up.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder to work in (default: a new folder under the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many cycles to run.
    #[arg(long, default_value_t = 3)]
    pub cycles: u32,
    /// Size of the simulated configuration in each backup, in MiB (random data, so it does not compress).
    #[arg(long, default_value_t = 8)]
    pub size_mib: u64,
    /// Imitate Home Assistant OS / Supervised instead of Core: agent hassio.local, Supervisor job ids,
    /// archives with add-on and folder members, and an add-on update's backup hapull must not touch.
    #[arg(long)]
    pub supervisor: bool,
    /// Fetch archives through Home Assistant's own download ([transfer] via = "http") instead of SFTP.
    #[arg(long)]
    pub http: bool,
}

/// Sets up tracing on standard error.
pub fn init_tracing(global: &Global) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::prelude::*;
    let default = match (global.quiet, global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "hapull=debug,info",
        (false, _) => "hapull=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // The WebSocket library logs every frame at trace level, and frames carry the access token (the
    // `auth` message) and the backup password (`backup/generate`): those records are dropped whatever
    // RUST_LOG says, so `-vv` or RUST_LOG=trace never prints a secret. A filter of its own rather than
    // an EnvFilter directive, which could only set the library's level, not cap it.
    let no_frames = filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE
            && (meta.target().starts_with("tungstenite")
                || meta.target().starts_with("tokio_tungstenite")))
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match global.log_format {
        LogFormat::Text => registry.with(layer.with_filter(no_frames)).try_init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(no_frames))
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Runs a command and maps its outcome to an exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        // The simulated Home Assistant is not part of the library: the `hapull` binary runs the demo.
        Command::Demo(_) => Err(anyhow::anyhow!(
            "`demo` is run by the hapull command itself, not through the library"
        )),
        Command::Check(args) => check::run(&cli.global, args).await,
        Command::Events(args) => events::run(&cli.global, args).await,
        Command::Run(args) => run::run(&cli.global, args).await,
        Command::Health(args) => run::health(&cli.global, args).await,
        Command::Once(args) => once::run_once(&cli.global, args).await,
        Command::Pull(args) => once::run_pull(&cli.global, args).await,
        Command::List(args) => store_cmds::list(&cli.global, args).await,
        Command::Verify(args) => store_cmds::verify(&cli.global, args).await,
        Command::Extract(args) => extract::run(&cli.global, args).await,
        Command::Prune(args) => store_cmds::prune(&cli.global, args).await,
        Command::TrustHost(args) => trust_host::run(&cli.global, args).await,
        Command::Init(args) => init::run(&cli.global, args).await,
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
        Command::Audit(audit::AuditCommand::Ack(args)) => audit::run_ack(&cli.global, args).await,
        Command::Audit(cmd) => {
            // The path comes from the config when there is one; `--path` overrides it.
            let path = config::load(&cli.global.config)
                .ok()
                .and_then(|l| l.config.audit.map(|a| a.path));
            audit::run(cmd, path.as_deref()).await
        }
    };
    exit_code(outcome)
}

/// Maps a command's outcome to the process exit code, printing the error.
pub fn exit_code(outcome: anyhow::Result<ExitCode>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hapull: error: {e:#}");
            let usage = e
                .chain()
                .any(|c| c.downcast_ref::<config::ConfigError>().is_some());
            let busy = e.chain().any(|c| c.downcast_ref::<StoreBusy>().is_some());
            ExitCode::from(if busy {
                EXIT_TEMPFAIL
            } else if usage {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            })
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what Docker and systemd send).
pub(crate) async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Another process writes the store: nothing was done (exit status [`EXIT_TEMPFAIL`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreBusy(String);

/// Takes the store's one-writer lock for `command`, to hold for the rest of the process. Refused (exit
/// status 75) while another process holds it, unless `--wait` was given and the holder is not the
/// daemon; the refusal names the holder.
pub(crate) async fn lock_store(
    global: &Global,
    cfg: &Config,
    command: &'static str,
) -> anyhow::Result<crate::store::lock::StoreLock> {
    use crate::store::lock::{LockError, StoreLock};
    let dir = crate::service::lock_dir(cfg)?;
    let shown = dir.display().to_string();
    let first = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || StoreLock::try_acquire(&dir, command)).await?
    };
    let holder = match first {
        Ok(lock) => return Ok(lock),
        Err(LockError::Busy { holder, .. }) => holder,
        Err(e) => return Err(e.into()),
    };
    let busy = LockError::Busy {
        dir: dir.clone(),
        holder: holder.clone(),
    };
    if holder.as_ref().is_some_and(|h| h.is_daemon()) {
        let wait_note = if global.wait {
            " (--wait does not wait for a daemon: it holds the store for as long as it runs)"
        } else {
            ""
        };
        return Err(StoreBusy(format!(
            "{busy}. It is the daemon: it makes the backups on its schedule{wait_note}. \
             Stop it first (e.g. `systemctl stop hapull`) to run `hapull {command}` by hand, or let it do the work \
             (`hapull audit tail -f` shows its cycles)"
        ))
        .into());
    }
    if !global.wait {
        return Err(StoreBusy(format!(
            "{busy}. `hapull {command}` did nothing; run it again when that process has finished, or pass --wait to wait for it"
        ))
        .into());
    }
    tracing::info!(store = %shown, "{busy}; waiting for it to finish (--wait)");
    let lock =
        tokio::task::spawn_blocking(move || StoreLock::acquire_blocking(&dir, command)).await??;
    Ok(lock)
}

/// Loads the config and logs its warnings.
pub(crate) fn load_config(global: &Global) -> anyhow::Result<Config> {
    let loaded = config::load(&global.config)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.config)
}

/// Connects to Home Assistant as the config says.
pub async fn connect(cfg: &Config, reconnect: bool) -> anyhow::Result<Client> {
    let opts = crate::service::client_options(cfg, reconnect)?;
    Client::connect(opts).await.with_context(|| {
        format!(
            "connecting to Home Assistant at {} ([home_assistant] url in {})",
            cfg.home_assistant.endpoint,
            cfg.path.display()
        )
    })
}

/// Reads a backup password from a file: the whole file, less one trailing line break.
pub(crate) fn read_password_file(path: &std::path::Path) -> anyhow::Result<crate::secret::Secret> {
    use anyhow::Context as _;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "the password file {} is not UTF-8 text; Home Assistant passwords are text",
            path.display()
        )
    })?;
    let secret = crate::secret::Secret::new(text);
    anyhow::ensure!(
        !secret.is_empty(),
        "the password file {} is empty; put the backup password in it",
        path.display()
    );
    Ok(secret)
}

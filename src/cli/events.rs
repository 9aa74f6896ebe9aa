//! `hapull events`: Home Assistant events as JSON lines on standard output, one per line, flushed per
//! line, until Ctrl-C (exit 0). Bus events are printed as Home Assistant sends them; backup manager
//! events (HA 2025.1+) as `{"backup_manager": {...}}`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{EXIT_OK, Global};
use crate::ha::{HaError, SubItem, Subscription};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this type (repeatable); default: all event types.
    #[arg(short = 't', long = "type", value_name = "EVENT_TYPE")]
    pub types: Vec<String>,
    /// Do not include backup manager events.
    #[arg(long)]
    pub no_backup: bool,
}

pub async fn run(global: &Global, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    let client = super::connect(&cfg, true).await?;
    info!(ha_version = %client.ha_version(), "connected; printing events until Ctrl-C");

    let mut subs: Vec<Subscription> = Vec::new();
    if args.types.is_empty() {
        subs.push(client.subscribe_events(None).await?);
    } else {
        for t in &args.types {
            subs.push(client.subscribe_events(Some(t)).await?);
        }
    }
    let mut backup_sub = None;
    if !args.no_backup {
        match client.subscribe_backup_events().await {
            Ok(s) => backup_sub = Some(s),
            Err(e) if e.is_unknown_command() => {
                info!("this Home Assistant has no backup events (legacy backup API)");
            }
            Err(e) => return Err(e.into()),
        }
    }

    // One forwarding task per subscription, all into one printer, so no subscription waits on another.
    let (tx, mut rx) = mpsc::channel::<Value>(1024);
    for (sub, is_backup) in subs
        .into_iter()
        .map(|s| (s, false))
        .chain(backup_sub.into_iter().map(|s| (s, true)))
    {
        tokio::spawn(forward(sub, is_backup, tx.clone()));
    }
    drop(tx);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // One signal listener for the whole loop: one made anew each turn would miss a signal that
    // arrives between two turns.
    let mut stop = std::pin::pin!(super::interrupted());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            line = rx.recv() => match line {
                None => {
                    warn!("all subscriptions ended");
                    return Err(HaError::Closed.into());
                }
                Some(v) => {
                    // A closed pipe (`hapull events | head`) is a normal way to stop.
                    if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
                        break;
                    }
                }
            },
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

async fn forward(mut sub: Subscription, is_backup: bool, tx: mpsc::Sender<Value>) {
    while let Some(item) = sub.next().await {
        let line = match item {
            SubItem::Event(e) if is_backup => json!({"backup_manager": e}),
            SubItem::Event(e) => e,
            SubItem::Reconnected => {
                warn!("reconnected to Home Assistant; events may have been missed");
                continue;
            }
            SubItem::Lagged(n) => {
                warn!(
                    dropped = n,
                    "fell behind Home Assistant's events; some were dropped"
                );
                continue;
            }
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

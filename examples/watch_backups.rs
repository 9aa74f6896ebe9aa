//! Watch Home Assistant's backup manager and print each step of every backup as it happens, using the
//! library's WebSocket client the way hapull does.
//!
//! ```text
//! cargo run --example watch_backups -- <url> <token_file>
//! cargo run --example watch_backups -- http://homeassistant.local:8123 /etc/hapull/ha_token
//! ```
//! Start a backup in Home Assistant (Settings -> System -> Backups) and watch it go through its stages.
//! Needs Home Assistant 2025.1 or later (older versions send no backup events). Ctrl-C stops.

use std::process::ExitCode;

use hapull::ha::{BackupEvent, BackupState, Client, ClientOptions, Endpoint, SubItem};
use hapull::secret::Secret;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, token_file] = &args[..] else {
        eprintln!("usage: watch_backups <url> <token_file>");
        return ExitCode::from(2);
    };
    let endpoint = match Endpoint::parse(url) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) if !t.trim().is_empty() => Secret::new(t.trim()),
        Ok(_) => {
            eprintln!("error: {token_file} is empty; put a long-lived access token in it");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: cannot read token file {token_file}: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = match ClientOptions::new(endpoint, token, None) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = match Client::connect(opts).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut events = match client.subscribe_backup_events().await {
        Ok(s) => s,
        Err(e) if e.is_unknown_command() => {
            eprintln!(
                "Home Assistant {} sends no backup events (the backup API before 2025.1)",
                client.ha_version()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "connected to Home Assistant {}; waiting for backup events (Ctrl-C to stop)",
        client.ha_version()
    );
    loop {
        let item = tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            item = events.next() => item,
        };
        let Some(item) = item else {
            eprintln!("the connection to Home Assistant ended");
            return ExitCode::FAILURE;
        };
        let raw = match item {
            SubItem::Event(v) => v,
            SubItem::Reconnected => {
                println!("(reconnected; events in between may be missed)");
                continue;
            }
            SubItem::Lagged(n) => {
                println!("({n} events dropped: this program fell behind)");
                continue;
            }
        };
        let time = jiff::Zoned::now().strftime("%H:%M:%S");
        match BackupEvent::parse(&raw) {
            Ok(BackupEvent::Manager { state }) => println!("{time}  manager is {state}"),
            Ok(BackupEvent::CreateBackup {
                stage,
                state,
                reason,
            }) => {
                let stage = stage.as_deref().unwrap_or("-");
                match state {
                    BackupState::InProgress => println!("{time}  backup in progress: {stage}"),
                    BackupState::Completed => println!("{time}  backup completed"),
                    BackupState::Failed => println!(
                        "{time}  backup FAILED at {stage}: {}",
                        reason.as_deref().unwrap_or("no reason given")
                    ),
                }
            }
            Ok(BackupEvent::UploadProgress {
                agent_id,
                uploaded_bytes,
                total_bytes,
            }) => {
                let pct = if total_bytes > 0 {
                    uploaded_bytes as f64 * 100.0 / total_bytes as f64
                } else {
                    0.0
                };
                println!(
                    "{time}  writing to {agent_id}: {uploaded_bytes} of {total_bytes} bytes ({pct:.0}%)"
                );
            }
            Ok(BackupEvent::Other { manager_state, raw }) => {
                println!("{time}  {manager_state}: {raw}")
            }
            Err(e) => println!("{time}  (unreadable event: {e})"),
        }
    }
}

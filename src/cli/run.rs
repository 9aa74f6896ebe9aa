//! `hapull run`: the daemon. `hapull health`: exit 0/1 by the daemon's health rule (for Docker's
//! HEALTHCHECK), from the state file, without needing the status endpoint.

use std::process::ExitCode;

use clap::Args;

use super::{EXIT_FAILED, EXIT_OK, Global};

#[derive(Debug, Args)]
pub struct RunArgs {}

#[derive(Debug, Args)]
pub struct HealthArgs {}

pub async fn run(global: &Global, _args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    // The daemon is the store's one writer for as long as it runs.
    let _lock = super::lock_store(global, &cfg, "run").await?;
    // First SIGTERM/SIGINT: graceful; a second one cuts a running cycle at once.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(2);
    tokio::spawn(async move {
        loop {
            super::interrupted().await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    let (force_tx, force_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        rx.recv().await;
        tracing::info!("signal received: finishing up (send it again to stop at once)");
        tokio::spawn(async move {
            rx.recv().await;
            let _ = force_tx.send(());
        });
    };
    let force = async move {
        let _ = force_rx.await;
    };
    crate::service::run(cfg, shutdown, force).await?;
    Ok(ExitCode::from(EXIT_OK))
}

pub async fn health(global: &Global, _args: HealthArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::load_config(global)?;
    let h = crate::daemon::health_from_state_file(
        &cfg.schedule.state_file,
        cfg.status.max_age,
        jiff::Timestamp::now(),
    );
    println!("{}", h.reason());
    Ok(ExitCode::from(if h.is_healthy() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}

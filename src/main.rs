//! The `hapull` command: parse arguments, set up logging, run the chosen command, map the outcome to
//! an exit code. Everything else lives in the library, except `hapull demo`, which brings the simulated
//! Home Assistant (crates/hapull-sim) that the library must not contain.

use std::process::ExitCode;

use clap::Parser;
use hapull::cli::{Cli, Command};

mod demo;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = hapull::cli::init_tracing(&cli.global) {
        eprintln!("hapull: {e}");
        return ExitCode::from(hapull::cli::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hapull: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => hapull::cli::exit_code(demo::run(args).await),
            command => {
                hapull::cli::run(Cli {
                    global: cli.global,
                    command,
                })
                .await
            }
        }
    })
}

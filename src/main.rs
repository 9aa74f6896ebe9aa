//! The `hapull` command: parse arguments, set up logging, run the chosen command, map the outcome to
//! an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = hapull::cli::Cli::parse();
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
    runtime.block_on(hapull::cli::run(cli))
}

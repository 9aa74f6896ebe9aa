//! Pull one file over SFTP the way hapull does, and print its size and SHA-256.
//!
//! ```text
//! cargo run --example pull_one -- <host> <port> <user> <identity_file> <known_hosts> <remote_path> <local_path>
//! ```
//! Set `HAPULL_KEY_PASSPHRASE` for an encrypted key and `HAPULL_BWLIMIT` (bytes/s) to throttle.

use std::path::PathBuf;
use std::process::ExitCode;

use hapull::secret::Secret;
use hapull::transfer::{self, HostKeyPolicy, PullOptions, SshTarget};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port, user, key, known_hosts, remote, local] = &args[..] else {
        eprintln!(
            "usage: pull_one <host> <port> <user> <identity_file> <known_hosts> <remote_path> <local_path>"
        );
        return ExitCode::from(2);
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("port {port:?} is not a number between 1 and 65535");
        return ExitCode::from(2);
    };
    let target = SshTarget {
        host: host.clone(),
        port,
        user: user.clone(),
        identity_file: PathBuf::from(key),
        passphrase: std::env::var("HAPULL_KEY_PASSPHRASE").ok().map(Secret::new),
        host_keys: HostKeyPolicy::KnownHosts {
            path: PathBuf::from(known_hosts),
            trust_on_first_use: false,
        },
    };
    let opts = PullOptions {
        progress: true,
        bandwidth_limit: std::env::var("HAPULL_BWLIMIT")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..PullOptions::default()
    };
    match transfer::pull(&target, remote, local.as_ref(), &opts).await {
        Ok(outcome) => {
            println!(
                "{}  {} ({} bytes in {:.2?}, {} resumed, {} attempt(s))",
                outcome.sha256_hex(),
                local,
                outcome.size,
                outcome.duration,
                outcome.resumed_bytes,
                outcome.attempts
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

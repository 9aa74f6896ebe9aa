//! `hapull trust-host`: show the SSH server's host key so the user can compare it out of band, and,
//! with `--write`, add it to the configured known_hosts once the user has confirmed it.
//!
//! It never writes a key the user has not confirmed: on a terminal it asks, elsewhere the fingerprint
//! the user compared must be given with `--expect` and must match the key the server presents now. It
//! never replaces a recorded key (that is a changed host key, an edit the user makes by hand).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, Global};
use crate::transfer::HostKeyPolicy;
use crate::transfer::TrustOutcome;

#[derive(Debug, Args)]
pub struct TrustHostArgs {
    /// Host to ask (default: [ssh] host from the config).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (default: [ssh] port, else 22).
    #[arg(long)]
    pub port: Option<u16>,
    /// After showing the fingerprint and a confirmation, append the key to [ssh] known_hosts.
    #[arg(long)]
    pub write: bool,
    /// The fingerprint compared on the host (`SHA256:...`): --write then needs no prompt and writes
    /// only if the server presents exactly this key.
    #[arg(long, value_name = "SHA256:...", requires = "write")]
    pub expect: Option<String>,
}

pub async fn run(global: &Global, args: TrustHostArgs) -> anyhow::Result<ExitCode> {
    // The config is needed for the host unless it is given, and always for --write (the file to write).
    let cfg = if args.host.is_none() || args.write {
        Some(super::load_config(global)?)
    } else {
        None
    };
    let ssh = cfg.as_ref().and_then(|c| c.ssh.as_ref());
    let (host, port) = match (&args.host, ssh) {
        (Some(h), s) => (h.clone(), args.port.or(s.map(|s| s.port)).unwrap_or(22)),
        (None, Some(s)) => (s.host.clone(), args.port.unwrap_or(s.port)),
        (None, None) => anyhow::bail!(
            "{}: no [ssh] section; give --host, or set [ssh] host in the config",
            global.config.display()
        ),
    };
    let known_hosts: Option<PathBuf> = match ssh.map(|s| &s.host_keys) {
        Some(HostKeyPolicy::KnownHosts { path, .. }) => Some(path.clone()),
        _ => None,
    };
    let info = crate::transfer::scan_host_key(&host, port).await?;
    println!(
        "{} offers a {} host key with fingerprint",
        info.host_port, info.algorithm
    );
    println!("    {}", info.fingerprint);
    println!();
    println!(
        "Compare it with the key on the server itself (there: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)."
    );
    if !args.write {
        println!("If they match, either pin it in [ssh]:");
        println!("    host_key = \"{}\"", info.fingerprint);
        match &known_hosts {
            Some(path) => {
                println!(
                    "or add this line to {} ([ssh] known_hosts):",
                    path.display()
                );
                println!("    {}", info.known_hosts_line);
                println!("(`hapull trust-host --write` does that after asking.)");
            }
            None => {
                println!("or add this line to a known_hosts file named in [ssh] known_hosts:");
                println!("    {}", info.known_hosts_line);
            }
        }
        return Ok(ExitCode::from(EXIT_OK));
    }

    let Some(path) = known_hosts else {
        eprintln!(
            "hapull: error: {}: [ssh] pins host_key instead of naming a known_hosts file, so --write has nowhere to write; add the fingerprint above to [ssh] host_key instead",
            global.config.display()
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    match &args.expect {
        Some(expected) => {
            if !same_fingerprint(expected, &info.fingerprint) {
                eprintln!(
                    "hapull: error: {} presents {}, not the expected {expected}; nothing was written. If you compared a different key type, compare `ssh-keygen -lf` of the {} key",
                    info.host_port, info.fingerprint, info.algorithm
                );
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
        None => {
            if !std::io::stdin().is_terminal() {
                eprintln!(
                    "hapull: error: --write without a terminal needs the fingerprint you compared on the host: --expect SHA256:...; nothing was written"
                );
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            print!(
                "Is this the fingerprint shown on the host? Type yes to add it to {}: ",
                path.display()
            );
            std::io::stdout().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if answer.trim() != "yes" {
                println!("Nothing was written.");
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
    }
    match crate::transfer::trust_host_key(&path, &host, port, &info)? {
        TrustOutcome::Added => println!(
            "Added to {}:\n    {}",
            path.display(),
            info.known_hosts_line
        ),
        TrustOutcome::AlreadyPresent => println!(
            "{} already trusts this key for {}; nothing was written.",
            path.display(),
            info.host_port
        ),
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `SHA256:abc` and `SHA256:abc=` are the same fingerprint (ssh-keygen drops the base64 padding).
fn same_fingerprint(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('=').to_string();
    norm(a) == norm(b)
}

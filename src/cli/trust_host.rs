//! `hapull trust-host`: show the SSH server's host key so the user can compare it out of band and pin it.

use std::process::ExitCode;

use clap::Args;

use super::{EXIT_OK, Global};

#[derive(Debug, Args)]
pub struct TrustHostArgs {
    /// Host to ask (default: [ssh] host from the config).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (default: [ssh] port, else 22).
    #[arg(long)]
    pub port: Option<u16>,
}

pub async fn run(global: &Global, args: TrustHostArgs) -> anyhow::Result<ExitCode> {
    let (host, port) = match (&args.host, args.port) {
        (Some(h), p) => (h.clone(), p.unwrap_or(22)),
        (None, p) => {
            let cfg = super::load_config(global)?;
            let ssh = cfg
                .ssh
                .ok_or_else(|| anyhow::anyhow!("give --host, or set [ssh] host in the config"))?;
            (ssh.host, p.unwrap_or(ssh.port))
        }
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
    println!("If they match, either pin it in [ssh]:");
    println!("    host_key = \"{}\"", info.fingerprint);
    println!("or add this line to the known_hosts file named in [ssh] known_hosts:");
    println!("    {}", info.known_hosts_line);
    Ok(ExitCode::from(EXIT_OK))
}

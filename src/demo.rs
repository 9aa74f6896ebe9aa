//! `hapull demo`: hapull's main job on built-in defaults, with nothing to set up. It starts a simulated
//! Home Assistant and an embedded read-only SFTP server on 127.0.0.1 in a fresh folder, writes a real
//! config file for them, and runs full cycles through the same code as `hapull once` (client, transfer
//! engine, store, audit log). No network, no root, no configuration; the folder is kept so the results
//! can be inspected (`hapull -c <folder>/hapull.toml list`, `... audit verify`).
//!
//! `--supervisor` imitates Home Assistant OS / Supervised (agent `hassio.local`, Supervisor job ids,
//! an add-on update's backup that must stay untouched); `--http` fetches archives through Home
//! Assistant's own download instead of SFTP (no SFTP server, no `[ssh]`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use hapull::cli::DemoArgs;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

use hapull::cli::{EXIT_FAILED, EXIT_OK};
use hapull::service;
use hapull_sim::sftp_server::{SftpServer, SftpServerOptions};
use hapull_sim::{Sim, SimOptions, SimVersion};

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "hapull-demo-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        )),
    };
    let ha_backups = dir.join("home-assistant/backups");
    std::fs::create_dir_all(&ha_backups)
        .with_context(|| format!("creating {}", ha_backups.display()))?;
    let dir = dir.canonicalize()?;
    let ha_backups = ha_backups.canonicalize()?;

    say(&format!("working in {}", dir.display()));
    // The key hapull logs in with, as `hapull init` makes it.
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .context("generating a key")?;
    let key_path = dir.join("id_ed25519");
    write_private(
        &key_path,
        key.to_openssh(LineEnding::LF)
            .context("encoding the key")?
            .as_bytes(),
    )?;

    let mut sim_opts = SimOptions::new(&ha_backups);
    if args.supervisor {
        sim_opts.version = SimVersion::Supervisor;
    }
    sim_opts.payload_bytes = args.size_mib << 20;
    sim_opts.stage_duration = Duration::from_millis(600);
    let token = sim_opts.token.clone();
    let sim = Sim::start(sim_opts)
        .await
        .context("starting the simulated Home Assistant")?;
    say(&format!(
        "simulated Home Assistant {}{} at {}",
        SimVersion::Current.ha_version(),
        if args.supervisor {
            " on Home Assistant OS (Supervisor, agent hassio.local)"
        } else {
            ""
        },
        sim.url()
    ));
    let addon_backup = if args.supervisor {
        let id = (sim.control())
            .add_foreign_backup("addon_core_ssh_9.15.0")
            .context("writing an add-on update's backup")?;
        say(&format!(
            "an add-on update's backup {id} is already in Home Assistant; hapull must leave it alone"
        ));
        Some(id)
    } else {
        None
    };

    let sftp = if args.http {
        say("archives come through Home Assistant's own download (/api/backup/download); no SSH");
        None
    } else {
        let sftp = SftpServer::start(SftpServerOptions::new(
            &ha_backups,
            "hapull-sftp",
            key.public_key().clone(),
        ))
        .await
        .context("starting the embedded SFTP server")?;
        say(&format!(
            "read-only SFTP server for user hapull-sftp at {} (host key {})",
            sftp.addr(),
            sftp.host_key_fingerprint()
        ));
        std::fs::write(
            dir.join("known_hosts"),
            format!("{}\n", sftp.known_hosts_line()),
        )?;
        Some(sftp)
    };
    write_private(&dir.join("ha_token"), format!("{token}\n").as_bytes())?;

    let config_path = dir.join("hapull.toml");
    std::fs::write(
        &config_path,
        demo_config(&sim.url(), sftp.as_ref().map(|s| s.addr().port())),
    )?;
    say(&format!("config written to {}", config_path.display()));
    let cfg = hapull::config::load(&config_path)?.config;

    let audit = service::open_audit(&cfg).await?;
    let client = hapull::cli::connect(&cfg, true).await?;
    let ctx = service::context(&cfg, client, audit.clone(), false).await?;

    let mut committed = 0;
    for n in 1..=args.cycles {
        say(&format!(
            "cycle {n} of {}: create, await, locate, pull, verify, commit, clean up",
            args.cycles
        ));
        match ctx.run_cycle().await {
            Ok(r) => {
                committed += 1;
                say(&format!(
                    "  committed {} ({:.1} MiB, sha256 {}) in {:.1}s",
                    r.archive.relative_path,
                    r.pull.size as f64 / 1048576.0,
                    &r.pull.sha256_hex()[..16],
                    r.duration.as_secs_f64()
                ));
                for id in &r.deleted_on_ha {
                    say(&format!(
                        "  deleted backup {id} from Home Assistant: its verified copy is in the store"
                    ));
                }
                let in_ha: Vec<String> = sim
                    .backups()
                    .iter()
                    .filter_map(|b| b["backup_id"].as_str().map(str::to_string))
                    .collect();
                say(&format!("  Home Assistant now holds: {}", in_ha.join(", ")));
            }
            Err(e) => say(&format!("  cycle failed: {e}")),
        }
    }
    if let Some(a) = &audit {
        a.close().await?;
    }
    // Hang up before the simulated server goes away, so the client does not report a lost connection.
    drop(ctx);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addon_kept = match &addon_backup {
        Some(id) => {
            let kept = (sim.backups().iter()).any(|b| b["backup_id"].as_str() == Some(id.as_str()));
            say(&format!(
                "the add-on update's backup {id} is {}",
                if kept {
                    "still in Home Assistant, untouched"
                } else {
                    "GONE"
                }
            ));
            kept
        }
        None => true,
    };
    if let Some(sftp) = sftp {
        sftp.shutdown().await;
    }
    sim.shutdown().await;

    let store = service::open_store(&cfg)?;
    let listing = store.scan()?;
    say(&format!(
        "the store {} holds {} archive(s):",
        store.root().display(),
        listing.archives.len()
    ));
    for a in &listing.archives {
        let report = store.verify(a)?;
        say(&format!(
            "  {} {}",
            if report.is_ok() { "ok    " } else { "FAILED" },
            a.relative_path
        ));
    }
    let audit_path = dir.join("audit.jsonl");
    let chain = hapull::audit::verify_path(&audit_path, false)?;
    say(&format!(
        "audit log {}: {} records, chain {}",
        audit_path.display(),
        chain.records,
        if chain.is_intact() {
            "intact"
        } else {
            "BROKEN"
        }
    ));
    say(&format!(
        "look around: hapull -c {} list; hapull -c {0} verify --all; hapull -c {0} audit tail -n 20",
        config_path.display()
    ));
    Ok(ExitCode::from(
        if committed == args.cycles && chain.is_intact() && addon_kept {
            EXIT_OK
        } else {
            EXIT_FAILED
        },
    ))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "demo: {line}");
    let _ = out.flush();
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    hapull::private_fs::write_atomic(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn demo_config(url: &str, sftp_port: Option<u16>) -> String {
    let transfer = match sftp_port {
        Some(port) => format!(
            r#"[ssh]
host = "127.0.0.1"
port = {port}
user = "hapull-sftp"
identity_file = "id_ed25519"
known_hosts = "known_hosts"
remote_dir = "/"
"#
        ),
        None => "[transfer]\nvia = \"http\"\n".to_string(),
    };
    format!(
        r#"# Written by `hapull demo` for its simulated Home Assistant and embedded SFTP server.
[home_assistant]
url = "{url}"
token_file = "ha_token"

{transfer}
[backup]
name = "hapull demo {{date}}"
keep_on_ha = 1

[store]
dir = "archives"
verify = "full"
keep_last = 10

[audit]
path = "audit.jsonl"
instance = "demo"

[schedule]
state_file = "state.json"
"#
    )
}

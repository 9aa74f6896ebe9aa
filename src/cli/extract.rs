//! `hapull extract ARCHIVE --to DIR`: unpack any Home Assistant backup, protected or not, without
//! Home Assistant.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::{EXIT_OK, Global};
use crate::store::Keys;
use crate::store::extract::{ExtractOptions, extract_file};

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The backup: a path to a Home Assistant backup file (from the store or anywhere), or the
    /// backup id of an archive in the store.
    pub archive: String,
    /// Folder to unpack into (created if missing): each part lands in DIR/<part>/, e.g.
    /// DIR/homeassistant/data/configuration.yaml.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// File holding the backup password (default: the config's `password_file`, if a config is
    /// found). Needed for protected backups.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Replace files that already exist in DIR (never folders; never through links).
    #[arg(long)]
    pub overwrite: bool,
}

pub async fn run(global: &Global, args: ExtractArgs) -> anyhow::Result<ExitCode> {
    // The config is optional: extraction is for when the Home Assistant host is gone, and may run
    // on any machine with just the file and the password.
    let cfg = super::load_config(global).ok();
    let path = PathBuf::from(&args.archive);
    let path = if path.exists() {
        path
    } else {
        let cfg = cfg.as_ref().with_context(|| {
            format!(
                "{} is not a file, and without a readable config there is no store to look it up in",
                args.archive
            )
        })?;
        // Only reads: no repair that could race a writer (the daemon committing).
        let store = crate::service::open_store_read_only(cfg)?;
        store
            .find(&args.archive)?
            .with_context(|| {
                format!(
                    "{} is neither a file nor the id of an archive in the store",
                    args.archive
                )
            })?
            .path
    };
    let password = match &args.password_file {
        Some(p) => Some(super::read_password_file(p)?),
        None => cfg.as_ref().and_then(|c| c.backup.password.clone()),
    };
    let size = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let to = args.to.clone();
    let overwrite = args.overwrite;
    let summary = tokio::task::spawn_blocking(move || {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(size);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        let mut keys = password.map(Keys::new);
        let mut on_progress = |done: u64| {
            if let Some(b) = &bar {
                b.set_position(done);
            }
        };
        let result = extract_file(
            &path,
            &to,
            ExtractOptions {
                keys: keys.as_mut(),
                overwrite,
                progress: Some(&mut on_progress),
            },
        );
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        result
    })
    .await??;
    let protected = match (summary.protected, summary.securetar) {
        (true, Some(v)) => format!(", protected (SecureTar v{v}), decrypted"),
        (true, None) => ", protected".to_owned(),
        (false, _) => String::new(),
    };
    println!(
        "extracted backup {} into {}: {} ({} files, {} bytes){protected}",
        summary.backup_id,
        args.to.display(),
        summary.parts.join(", "),
        summary.files,
        summary.bytes
    );
    Ok(ExitCode::from(EXIT_OK))
}

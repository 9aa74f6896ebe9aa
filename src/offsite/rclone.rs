//! rclone as a child process: one invocation per operation, each with a deadline, stdout parsed,
//! stderr kept for the log and for errors with every known secret blanked out.
//!
//! It must not interpret what it copies (that is the caller's job) nor print anything rclone says
//! without passing it through [`Redactor`]: an rclone.conf holds passwords, keys and OAuth tokens,
//! and a connection-string remote (`:s3,secret_access_key=...:bucket`) holds them on the command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tracing::debug;

use super::OffsiteError;

/// The oldest rclone hapull drives: Debian 12's (1.60.1). Everything used here (`backend features`,
/// `lsjson --hash-type`, `hashsum sha256`, `deletefile`, `copyto`) is there.
pub const MIN_VERSION: (u32, u32, u32) = (1, 60, 0);

/// How to install rclone, for the "missing or too old" errors.
pub const INSTALL_HINT: &str = "install it with `apt-get install rclone` (Debian/Ubuntu), `dnf install rclone`, \
     `nix-env -iA nixpkgs.rclone`, or from https://rclone.org/install/, and set `rclone = \"/path/to/rclone\"` \
     in [[offsite]] if it is not on PATH";

/// How much of rclone's stderr an error message carries (its end, where the reason is).
const STDERR_IN_ERRORS: usize = 1500;

/// One entry of `rclone lsjson`.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteEntry {
    #[serde(rename = "Path")]
    pub path: String,
    #[serde(rename = "Size")]
    pub size: i64,
    #[serde(rename = "IsDir")]
    pub is_dir: bool,
    #[serde(rename = "Hashes", default)]
    pub hashes: std::collections::BTreeMap<String, String>,
}

/// How one rclone invocation failed.
#[derive(Debug)]
pub struct Failure {
    pub exit_code: Option<i32>,
    /// The end of rclone's stderr, redacted.
    pub stderr: String,
}

/// Blanks out secrets in text rclone printed.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Collects secrets from the rclone config file (when readable), the remote string and the
    /// process environment's `RCLONE_*` variables.
    pub fn new(config: Option<&Path>, remote: &str, env: &[(String, String)]) -> Redactor {
        let mut r = Redactor::default();
        let text = config
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once('=') {
                r.consider(key.trim(), value.trim());
            }
        }
        // A connection string: `:backend,key=value,key2="v,2":path` or `name,key=value:path`.
        if let Some(params) = remote.split(':').find(|s| s.contains('=')) {
            for kv in params.split(',') {
                if let Some((key, value)) = kv.split_once('=') {
                    r.consider(key.trim(), value.trim().trim_matches(['"', '\'']));
                }
            }
        }
        for (key, value) in env {
            if key.starts_with("RCLONE_") {
                r.consider(&key.to_ascii_lowercase(), value);
            }
        }
        r.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        r.secrets.dedup();
        r
    }

    fn consider(&mut self, key: &str, value: &str) {
        let key = key.to_ascii_lowercase();
        const SECRET_WORDS: [&str; 9] = [
            "pass",
            "secret",
            "token",
            "key",
            "credentials",
            "sas_url",
            "auth",
            "session",
            "private",
        ];
        if !SECRET_WORDS.iter().any(|w| key.contains(w)) || value.len() < 4 {
            return;
        }
        self.secrets.push(value.to_string());
        // OAuth tokens are JSON: its parts can appear on their own in a message.
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(value)
        {
            for (k, v) in map {
                if let serde_json::Value::String(s) = v {
                    self.consider(&k, &s);
                }
            }
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// The rclone program with the options every invocation shares.
#[derive(Debug, Clone)]
pub struct Rclone {
    program: PathBuf,
    config: Option<PathBuf>,
    bwlimit: Option<String>,
    timeout: Duration,
    redactor: Redactor,
}

impl Rclone {
    pub fn new(
        program: PathBuf,
        config: Option<PathBuf>,
        bwlimit: Option<String>,
        timeout: Duration,
        redactor: Redactor,
    ) -> Rclone {
        Rclone {
            program,
            config,
            bwlimit,
            timeout,
            redactor,
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn command(&self, args: &[OsString]) -> Command {
        let mut cmd = Command::new(&self.program);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out or cancelled operation must not leave rclone running on.
            .kill_on_drop(true);
        // What rclone writes on a local-path remote (a USB disk) is a backup: private, as
        // everything hapull writes, whatever hapull's own umask.
        // SAFETY: umask is async-signal-safe and touches no memory; it runs in the forked child
        // before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        cmd
    }

    fn spawn_error(&self, e: std::io::Error) -> OffsiteError {
        if e.kind() == std::io::ErrorKind::NotFound {
            OffsiteError::RcloneMissing {
                program: self.program.clone(),
            }
        } else {
            OffsiteError::Rclone {
                what: format!("starting {}", self.program.display()),
                detail: e.to_string(),
            }
        }
    }

    /// Runs rclone to the end (or the deadline) and returns its stdout, or how it failed.
    async fn run(&self, what: &str, args: Vec<OsString>) -> Result<Vec<u8>, RunError> {
        // `what` names remote paths, and a connection-string remote carries its credentials.
        let what = &self.redactor.redact(what);
        let child = self
            .command(&args)
            .spawn()
            .map_err(|e| RunError::Setup(self.spawn_error(e)))?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(RunError::Setup(OffsiteError::Rclone {
                    what: what.to_string(),
                    detail: e.to_string(),
                }));
            }
            // Dropping the future drops the child, which kills it (kill_on_drop).
            Err(_) => {
                return Err(RunError::Setup(OffsiteError::Timeout {
                    what: what.to_string(),
                    after: self.timeout,
                }));
            }
        };
        let stderr = self
            .redactor
            .redact(&String::from_utf8_lossy(&output.stderr));
        if !stderr.trim().is_empty() {
            debug!(what, rclone_stderr = %stderr.trim_end(), "rclone said");
        }
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(RunError::Failed(Failure {
                exit_code: output.status.code(),
                stderr: tail(&stderr, STDERR_IN_ERRORS),
            }))
        }
    }

    fn failed(&self, what: &str, f: Failure) -> OffsiteError {
        OffsiteError::Rclone {
            what: self.redactor.redact(what),
            detail: format!(
                "rclone exited with {}: {}",
                f.exit_code
                    .map_or_else(|| "a signal".to_string(), |c| format!("code {c}")),
                f.stderr.trim()
            ),
        }
    }

    async fn run_ok(&self, what: &str, args: Vec<OsString>) -> Result<Vec<u8>, OffsiteError> {
        self.run(what, args).await.map_err(|e| match e {
            RunError::Setup(e) => e,
            RunError::Failed(f) => self.failed(what, f),
        })
    }

    /// The installed version; an error when rclone is missing or older than [`MIN_VERSION`].
    pub async fn check_version(&self) -> Result<String, OffsiteError> {
        let out = self
            .run_ok("rclone version", vec!["version".into()])
            .await?;
        let text = String::from_utf8_lossy(&out);
        let first = text.lines().next().unwrap_or_default().trim().to_string();
        let found = parse_version(&first).ok_or_else(|| OffsiteError::Rclone {
            what: "rclone version".into(),
            detail: format!(
                "{} printed {first:?}, not an rclone version",
                self.program.display()
            ),
        })?;
        if found < MIN_VERSION {
            return Err(OffsiteError::RcloneTooOld {
                program: self.program.clone(),
                found: first,
            });
        }
        Ok(first)
    }

    /// The hash types the remote's backend can report (`rclone backend features`), lower case.
    pub async fn hash_types(&self, remote: &str) -> Result<Vec<String>, OffsiteError> {
        #[derive(Deserialize)]
        struct Features {
            #[serde(rename = "Hashes", default)]
            hashes: Vec<String>,
        }
        let what = self
            .redactor
            .redact(&format!("rclone backend features {remote}"));
        let out = self
            .run_ok(
                &what,
                vec!["backend".into(), "features".into(), remote.into()],
            )
            .await?;
        let f: Features = serde_json::from_slice(&out).map_err(|e| OffsiteError::Rclone {
            what,
            detail: format!("unexpected output: {e}"),
        })?;
        Ok(f.hashes
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect())
    }

    /// Copies one local file to `dest` (a full remote path). With `force`, even when the remote
    /// file has the same size and time (a stale or damaged copy rclone would otherwise skip).
    pub async fn copy_to(&self, local: &Path, dest: &str, force: bool) -> Result<(), OffsiteError> {
        let mut args: Vec<OsString> = vec!["copyto".into()];
        if force {
            args.push("--ignore-times".into());
        }
        if let Some(b) = &self.bwlimit {
            args.push("--bwlimit".into());
            args.push(b.into());
        }
        args.push(local.into());
        args.push(dest.into());
        self.run_ok(&format!("uploading to {dest}"), args)
            .await
            .map(|_| ())
    }

    /// The files directly in `dir`, with hash `hash` when given. `None` when the folder does not
    /// exist (nothing uploaded there yet).
    pub async fn list(
        &self,
        dir: &str,
        hash: Option<&str>,
        recursive: bool,
    ) -> Result<Option<Vec<RemoteEntry>>, OffsiteError> {
        let mut args: Vec<OsString> = vec!["lsjson".into(), "--files-only".into()];
        if recursive {
            args.push("--recursive".into());
        }
        if let Some(h) = hash {
            args.push("--hash-type".into());
            args.push(h.into());
        }
        args.push(dir.into());
        let what = self.redactor.redact(&format!("listing {dir}"));
        match self.run(&what, args).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| OffsiteError::Rclone {
                    what,
                    detail: format!("unexpected lsjson output: {e}"),
                }),
            // rclone's exit code 3: directory not found.
            Err(RunError::Failed(f)) if f.exit_code == Some(3) => Ok(None),
            Err(RunError::Failed(f)) => Err(self.failed(&what, f)),
            Err(RunError::Setup(e)) => Err(e),
        }
    }

    /// Deletes one remote file. `Err(Ok(reason))` when the storage refused (no delete permission,
    /// object lock), `Err(Err(e))` for anything else.
    pub async fn delete_file(&self, path: &str) -> Result<(), Result<String, OffsiteError>> {
        let what = self.redactor.redact(&format!("deleting {path}"));
        match self
            .run(&what, vec!["deletefile".into(), path.into()])
            .await
        {
            Ok(_) => Ok(()),
            // Exit code 4: the file is not there (gone already); nothing left to delete.
            Err(RunError::Failed(f)) if f.exit_code == Some(4) => Ok(()),
            Err(RunError::Failed(f)) if looks_refused(&f.stderr) => Err(Ok(last_line(&f.stderr))),
            Err(RunError::Failed(f)) => Err(Err(self.failed(&what, f))),
            Err(RunError::Setup(e)) => Err(Err(e)),
        }
    }

    /// Reads a remote file back to the end and returns its size and SHA-256.
    pub async fn download_sha256(&self, path: &str) -> Result<(u64, [u8; 32]), OffsiteError> {
        let what = self
            .redactor
            .redact(&format!("downloading {path} to check it"));
        let mut child = self
            .command(&["cat".into(), path.into()])
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let mut stdout = child.stdout.take().ok_or_else(|| OffsiteError::Rclone {
            what: what.clone(),
            detail: "no stdout".into(),
        })?;
        let mut stderr = child.stderr.take();
        let read = async {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                ctx.update(&buf[..n]);
            }
            let mut err = Vec::new();
            if let Some(s) = stderr.as_mut() {
                s.read_to_end(&mut err).await?;
            }
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((size, ctx.finish(), status, err))
        };
        let (size, digest, status, err) = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| OffsiteError::Timeout {
                what: what.clone(),
                after: self.timeout,
            })?
            .map_err(|e| OffsiteError::Rclone {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        if !status.success() {
            return Err(self.failed(
                &what,
                Failure {
                    exit_code: status.code(),
                    stderr: tail(
                        &self.redactor.redact(&String::from_utf8_lossy(&err)),
                        STDERR_IN_ERRORS,
                    ),
                },
            ));
        }
        let mut sha = [0u8; 32];
        sha.copy_from_slice(digest.as_ref());
        Ok((size, sha))
    }

    /// Hash `hash` of a local file, computed by rclone (for hash types hapull does not implement).
    pub async fn hash_local(&self, hash: &str, local: &Path) -> Result<String, OffsiteError> {
        let what = format!("rclone hashsum {hash} {}", local.display());
        let out = self
            .run_ok(&what, vec!["hashsum".into(), hash.into(), local.into()])
            .await?;
        String::from_utf8_lossy(&out)
            .split_whitespace()
            .next()
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| OffsiteError::Rclone {
                what,
                detail: "no hash in the output".into(),
            })
    }
}

enum RunError {
    /// rclone could not be run (missing, timed out).
    Setup(OffsiteError),
    /// rclone ran and reported failure.
    Failed(Failure),
}

/// `rclone v1.60.1-DEV` -> (1, 60, 1).
pub fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let v = line.split_whitespace().nth(1)?.strip_prefix('v')?;
    let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Storage that refuses a deletion says so in one of these ways (SFTP, S3, B2, Azure, GCS, WebDAV).
fn looks_refused(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "permission denied",
        "access denied",
        "accessdenied",
        "forbidden",
        "403",
        "not allowed",
        "not permitted",
        "unauthorized",
        "not entitled",
        "object lock",
        "objectlock",
        "retention",
        "immutable",
        "legal hold",
    ]
    .iter()
    .any(|w| s.contains(w))
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &s[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("rclone v1.60.1-DEV"), Some((1, 60, 1)));
        assert_eq!(parse_version("rclone v1.68.2"), Some((1, 68, 2)));
        assert_eq!(parse_version("rclone v1.53"), Some((1, 53, 0)));
        assert_eq!(parse_version("something else"), None);
        assert!(parse_version("rclone v1.53.3-DEV").unwrap() < MIN_VERSION);
    }

    #[test]
    fn secrets_from_config_remote_and_environment_are_blanked() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("rclone.conf");
        std::fs::write(
            &conf,
            "[b2]\ntype = b2\naccount = 0012ab\nkey = K001secretkeyvalue\n\n[gd]\ntype = drive\n\
             token = {\"access_token\":\"ya29.abcdef\",\"token_type\":\"Bearer\",\"refresh_token\":\"1//refreshme\"}\n",
        )
        .unwrap();
        let r = Redactor::new(
            Some(&conf),
            ":s3,access_key_id=AKIAEXAMPLE,secret_access_key=wJalrXUtnFEMI:bucket/x",
            &[("RCLONE_CONFIG_X_PASS".into(), "envpassword".into())],
        );
        let text = "failed: key K001secretkeyvalue token ya29.abcdef refresh 1//refreshme \
                    s3 wJalrXUtnFEMI pass envpassword; account 0012ab";
        let out = r.redact(text);
        for s in [
            "K001secretkeyvalue",
            "ya29.abcdef",
            "1//refreshme",
            "wJalrXUtnFEMI",
            "envpassword",
        ] {
            assert!(!out.contains(s), "{s} leaked: {out}");
        }
        // Not a secret: the account id and the words around stay readable.
        assert!(out.contains("account 0012ab"), "{out}");
    }

    #[test]
    fn refusals_are_told_apart_from_other_failures() {
        assert!(looks_refused(
            "ERROR : x.tar: Couldn't delete: permission denied"
        ));
        assert!(looks_refused(
            "AccessDenied: Access Denied\n\tstatus code: 403"
        ));
        assert!(!looks_refused(
            "dial tcp 127.0.0.1:1: connect: connection refused"
        ));
    }
}

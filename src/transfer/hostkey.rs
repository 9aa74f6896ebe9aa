//! Host-key verification: known_hosts files (plain and hashed entries) and pinned fingerprints.
//!
//! Our own reader rather than russh's helper, because that one treats a missing file as "host unknown"
//! and stops at the first line it cannot parse; both would turn a configuration mistake into a
//! misleading message.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use russh::keys::ssh_encoding::base64::{Base64, Encoding};
use russh::keys::{HashAlg, PublicKey};

use super::TransferError;

/// How the remote host's key is checked. There is no "accept anything" policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Check against an OpenSSH known_hosts file. With `trust_on_first_use`, a host that has no entry
    /// yet is accepted once and its line appended (a missing file is then created); a host whose key
    /// differs from its entry is always refused.
    KnownHosts {
        path: PathBuf,
        trust_on_first_use: bool,
    },
    /// Accept only keys with one of these fingerprints (`"SHA256:..."`, as `ssh-keygen -lf` prints).
    Pinned(Vec<String>),
}

/// A host's key as seen on the wire, for `hapull trust-host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyInfo {
    /// `host` for port 22, else `[host]:port`, as known_hosts writes it.
    pub host_port: String,
    /// Key algorithm, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// `SHA256:...` fingerprint.
    pub fingerprint: String,
    /// The line to add to known_hosts to trust this key.
    pub known_hosts_line: String,
}

impl HostKeyInfo {
    pub(crate) fn new(host: &str, port: u16, key: &PublicKey) -> Self {
        let host_port = host_port(host, port);
        HostKeyInfo {
            known_hosts_line: known_hosts_line(&host_port, key),
            algorithm: key.algorithm().to_string(),
            fingerprint: fingerprint(key),
            host_port,
        }
    }
}

pub(crate) fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn known_hosts_line(host_port: &str, key: &PublicKey) -> String {
    let b64 = key
        .to_bytes()
        .map(|b| Base64::encode_string(&b))
        .unwrap_or_default();
    format!("{host_port} {} {b64}", key.algorithm())
}

/// What a known_hosts file says about a key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Trusted,
    Unknown,
    Changed { line: usize, algorithm: String },
}

/// Key algorithms recorded for this host, so negotiation can ask the server for a key we can check.
/// A file that cannot be read or parsed yields none here; [`check_known_hosts`] reports why.
pub(crate) fn known_algorithms(path: &Path, host: &str, port: u16) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(entries) = entries(&text) else {
        return Vec::new();
    };
    let wanted = host_port(host, port);
    let mut out = Vec::new();
    for entry in entries {
        if entry.marker.is_none() && hosts_match(entry.hosts, &wanted) {
            let alg = entry.key.algorithm().to_string();
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
    }
    out
}

struct Entry<'a> {
    line: usize,
    marker: Option<&'a str>,
    hosts: &'a str,
    key: PublicKey,
}

/// A line of known_hosts that cannot be read as `[marker] hosts algorithm base64-key [comment]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// Every entry of a known_hosts file. A line that cannot be parsed is an error rather than skipped:
/// it may be the very entry meant to pin this host, and skipping it would turn a pinned host into an
/// unknown one (which trust on first use would then accept).
fn entries(text: &str) -> Result<Vec<Entry<'_>>, BadLine> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| BadLine {
            line: i + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let mut marker = None;
        let mut hosts = fields.next().unwrap_or_default();
        if hosts.starts_with('@') {
            if !matches!(hosts, "@revoked" | "@cert-authority") {
                return Err(bad(format!(
                    "unknown marker {hosts:?} (only @revoked and @cert-authority exist)"
                )));
            }
            marker = Some(hosts);
            hosts = fields
                .next()
                .ok_or_else(|| bad("a marker but no host patterns".into()))?;
        }
        for pattern in hosts.split(',') {
            let pattern = pattern.strip_prefix('!').unwrap_or(pattern);
            if let Some(hashed) = pattern.strip_prefix("|1|") {
                decode_hashed(hashed)
                    .ok_or_else(|| bad("a hashed host entry that is not |1|salt|hash".into()))?;
            } else if pattern.is_empty() {
                return Err(bad("an empty host pattern".into()));
            }
        }
        let algorithm = fields
            .next()
            .ok_or_else(|| bad("host patterns but no key type".into()))?;
        let key_b64 = fields
            .next()
            .ok_or_else(|| bad(format!("key type {algorithm} but no key")))?;
        let key = parse_key(algorithm, key_b64)
            .ok_or_else(|| bad(format!("the {algorithm} key is not valid base64 key data")))?;
        out.push(Entry {
            line: i + 1,
            marker,
            hosts,
            key,
        });
    }
    Ok(out)
}

/// Checks `key` for `host`/`port` against the known_hosts file at `path`.
pub(crate) fn check_known_hosts(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<Verdict, TransferError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TransferError::KnownHostsUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
    verdict(&text, host, port, key).map_err(|bad| TransferError::KnownHostsLine {
        path: path.to_path_buf(),
        line: bad.line,
        reason: bad.reason,
    })
}

/// Any key recorded for the host pins it: a key that matches none of them is a changed key, whatever
/// its type. (Treating a new key type as "unknown" would let trust on first use accept a server that
/// simply stopped offering the recorded type, which is exactly what an attacker would do.)
fn verdict(text: &str, host: &str, port: u16, key: &PublicKey) -> Result<Verdict, BadLine> {
    let wanted = host_port(host, port);
    let mut changed = None;
    let mut trusted = false;
    for entry in entries(text)? {
        if !hosts_match(entry.hosts, &wanted) {
            continue;
        }
        let same = entry.key.key_data() == key.key_data();
        match entry.marker {
            Some("@revoked") if same => {
                return Ok(Verdict::Changed {
                    line: entry.line,
                    algorithm: format!("{} (revoked)", entry.key.algorithm()),
                });
            }
            Some(_) => continue,
            None => {}
        }
        if same {
            trusted = true;
        } else if changed.is_none() {
            changed = Some(Verdict::Changed {
                line: entry.line,
                algorithm: entry.key.algorithm().to_string(),
            });
        }
    }
    Ok(if trusted {
        Verdict::Trusted
    } else {
        changed.unwrap_or(Verdict::Unknown)
    })
}

fn parse_key(algorithm: &str, b64: &str) -> Option<PublicKey> {
    PublicKey::from_openssh(&format!("{algorithm} {b64}")).ok()
}

/// OpenSSH host-pattern matching: comma-separated patterns, `*`/`?` wildcards, `!` negation, and
/// hashed `|1|salt|hmac` entries.
fn hosts_match(patterns: &str, host_port: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let hit = if let Some(hashed) = pattern.strip_prefix("|1|") {
            hashed_match(hashed, host_port)
        } else {
            glob_match(pattern.as_bytes(), host_port.as_bytes())
        };
        if hit {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

fn decode_hashed(salt_and_hash: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (salt, hash) = salt_and_hash.split_once('|')?;
    Some((
        Base64::decode_vec(salt).ok()?,
        Base64::decode_vec(hash).ok()?,
    ))
}

fn hashed_match(salt_and_hash: &str, host_port: &str) -> bool {
    let Some((salt, hash)) = decode_hashed(salt_and_hash) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    hmac::verify(&key, host_port.as_bytes(), &hash).is_ok()
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.split_first(), text.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob_match(rest, text) || (!text.is_empty() && glob_match(pattern, &text[1..]))
        }
        (Some((b'?', rest)), Some((_, trest))) => glob_match(rest, trest),
        (Some((p, rest)), Some((t, trest))) => p.eq_ignore_ascii_case(t) && glob_match(rest, trest),
        _ => false,
    }
}

/// Appends a trusted-on-first-use line, creating the file (and its directory) if needed.
pub(crate) fn append_known_host(path: &Path, info: &HostKeyInfo) -> Result<(), TransferError> {
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::private_fs::create_dir_all(parent)?;
        }
        let needs_newline = std::fs::read(path)
            .map(|b| !b.is_empty() && !b.ends_with(b"\n"))
            .unwrap_or(false);
        let mut f = crate::private_fs::open_append(path)?;
        if needs_newline {
            f.write_all(b"\n")?;
        }
        writeln!(f, "{}", info.known_hosts_line)?;
        f.sync_all()
    };
    write().map_err(|source| TransferError::KnownHostsWrite {
        host_port: info.host_port.clone(),
        path: path.to_path_buf(),
        source,
    })
}

/// What [`trust_host_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustOutcome {
    /// The line was appended.
    Added,
    /// The file already trusts this key for this host; nothing was written.
    AlreadyPresent,
}

/// Adds the key a user confirmed (`info`, as [`scan_host_key`](super::scan_host_key) saw it for
/// `host`:`port`) to the known_hosts file at `path`, unless the file already trusts it. A file that
/// records a *different* key of the same type for this host is left alone and reported as a changed
/// host key: replacing a key is the user's decision, made by editing the file.
pub fn trust_host_key(
    path: &Path,
    host: &str,
    port: u16,
    info: &HostKeyInfo,
) -> Result<TrustOutcome, TransferError> {
    let mut fields = info.known_hosts_line.split_whitespace().skip(1);
    let key = match (fields.next(), fields.next()) {
        (Some(alg), Some(b64)) => parse_key(alg, b64),
        _ => None,
    };
    let Some(key) = key else {
        return Err(TransferError::KnownHostsWrite {
            host_port: info.host_port.clone(),
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "the scanned key cannot be encoded as a known_hosts line",
            ),
        });
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(TransferError::KnownHostsUnreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let verdict =
        verdict(&text, host, port, &key).map_err(|bad| TransferError::KnownHostsLine {
            path: path.to_path_buf(),
            line: bad.line,
            reason: bad.reason,
        })?;
    match verdict {
        Verdict::Trusted => Ok(TrustOutcome::AlreadyPresent),
        Verdict::Changed { line, algorithm } => Err(TransferError::HostKeyChanged {
            host_port: info.host_port.clone(),
            fingerprint: info.fingerprint.clone(),
            algorithm,
            path: path.to_path_buf(),
            line,
        }),
        Verdict::Unknown => {
            append_known_host(path, info)?;
            Ok(TrustOutcome::Added)
        }
    }
}

/// Whether `key` matches one of the pinned fingerprints (with or without base64 padding).
pub(crate) fn pinned_match(pins: &[String], key: &PublicKey) -> bool {
    let actual = fingerprint(key);
    let norm = |s: &str| s.trim().trim_end_matches('=').to_string();
    pins.iter().any(|p| norm(p) == norm(&actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECi/6wYf1x5K5VBxb1/HYHdMLlGlP6skEf4Wm0L6jNR";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID8cscSPtNaYCn1BeTs6RVDFI14MyqCzy0C55hkHMuW0";

    /// An ECDSA key, for "the host now offers another key type".
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBInb9FHyLLK6+CC37iYyIdbkUYXrp5D7KMimOxVVojzlhtOWk5+nlrRpTBcIkLP+3Lh4rl1Wy79k5q9eN6zxiD4=";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn v(text: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
        verdict(text, host, port, key).unwrap()
    }

    #[test]
    fn plain_bracketed_and_wildcard_entries_match() {
        let k = key(KEY);
        assert_eq!(
            v(&format!("ha.local {KEY}\n"), "ha.local", 22, &k),
            Verdict::Trusted
        );
        assert_eq!(
            v(&format!("[ha.local]:2222 {KEY}\n"), "ha.local", 2222, &k),
            Verdict::Trusted
        );
        assert_eq!(
            v(&format!("ha.local {KEY}\n"), "ha.local", 2222, &k),
            Verdict::Unknown
        );
        assert_eq!(
            v(&format!("*.local,!evil.local {KEY}\n"), "ha.local", 22, &k),
            Verdict::Trusted
        );
        assert_eq!(
            v(
                &format!("*.local,!evil.local {KEY}\n"),
                "evil.local",
                22,
                &k
            ),
            Verdict::Unknown
        );
    }

    #[test]
    fn hashed_entry_matches_its_host_only() {
        // Produced by `ssh-keygen -H` for host "ha.local".
        let salt = [7u8; 20];
        let key_ = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        let tag = hmac::sign(&key_, b"ha.local");
        let hashed = format!(
            "|1|{}|{}",
            Base64::encode_string(&salt),
            Base64::encode_string(tag.as_ref())
        );
        let k = key(KEY);
        assert_eq!(
            v(&format!("{hashed} {KEY}\n"), "ha.local", 22, &k),
            Verdict::Trusted
        );
        assert_eq!(
            v(&format!("{hashed} {KEY}\n"), "other", 22, &k),
            Verdict::Unknown
        );
    }

    #[test]
    fn different_key_of_same_type_is_a_change() {
        let Ok(other) = PublicKey::from_openssh(OTHER) else {
            // The constant must be a valid key for this test to mean anything.
            panic!("test key does not parse");
        };
        let text = format!("# comment\n\nha.local {OTHER}\n");
        assert!(matches!(
            v(&text, "ha.local", 22, &key(KEY)),
            Verdict::Changed { line: 3, .. }
        ));
        assert_eq!(v(&text, "ha.local", 22, &other), Verdict::Trusted);
    }

    #[test]
    fn pins_compare_with_or_without_padding() {
        let k = key(KEY);
        let fp = fingerprint(&k);
        assert!(pinned_match(&[format!("{fp}=")], &k));
        assert!(!pinned_match(&["SHA256:nope".into()], &k));
    }

    #[test]
    fn a_key_of_another_type_than_the_recorded_one_is_a_change() {
        let text = format!("ha.local {KEY}\n");
        assert_eq!(
            v(&text, "ha.local", 22, &key(ECDSA)),
            Verdict::Changed {
                line: 1,
                algorithm: "ssh-ed25519".into()
            }
        );
        // With both types recorded, either one is trusted.
        let both = format!("ha.local {KEY}\nha.local {ECDSA}\n");
        assert_eq!(v(&both, "ha.local", 22, &key(ECDSA)), Verdict::Trusted);
        assert_eq!(v(&both, "ha.local", 22, &key(KEY)), Verdict::Trusted);
        // A key recorded for another host pins nothing here.
        assert_eq!(v(&text, "other.local", 22, &key(ECDSA)), Verdict::Unknown);
    }

    #[test]
    fn an_unparsable_line_is_an_error_naming_the_line() {
        let k = key(KEY);
        for (text, line, reason) in [
            (
                format!("ha.local {KEY}\nother.local ssh-ed25519\n"),
                2,
                "no key",
            ),
            (
                "# c\nha.local ssh-ed25519 not-base64!\n".to_string(),
                2,
                "not valid",
            ),
            ("ha.local\n".to_string(), 1, "no key type"),
            (format!("@bogus ha.local {KEY}\n"), 1, "unknown marker"),
            (format!("|1|nope ha.local {KEY}\n"), 1, "hashed"),
        ] {
            let err = verdict(&text, "ha.local", 22, &k).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
            assert!(err.reason.contains(reason), "{text:?}: {}", err.reason);
        }
    }
}

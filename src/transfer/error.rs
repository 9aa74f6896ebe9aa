//! The one error type of the transfer module, and its transient/permanent split.

use std::path::PathBuf;

/// Everything that can go wrong while reaching the remote host or pulling a file from it.
///
/// Messages name the thing, the value and the fix. [`TransferError::is_transient`] tells a retry loop
/// whether trying again can help: a dropped connection can, a refused key or a changed host key cannot.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The TCP connection could not be made (host down, port closed, name does not resolve).
    #[error(
        "cannot connect to {host}:{port}: {source}; check that the host is up and sshd listens there"
    )]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },

    /// The SSH or SFTP connection failed or dropped after it was made.
    #[error("connection to {host}:{port} failed: {message}")]
    Disconnected {
        host: String,
        port: u16,
        message: String,
    },

    /// One step of setting up the session (handshake, login, channel open, SFTP subsystem request, SFTP
    /// start) got no answer in time.
    #[error(
        "{step} with {host}:{port} did not finish within {after:?}; the server accepted the connection \
         but stopped answering (overloaded, or sshd waiting on something such as a slow AuthorizedKeysCommand \
         or DNS lookup); raise [ssh] connect_timeout if the host is just slow"
    )]
    StepTimeout {
        host: String,
        port: u16,
        step: &'static str,
        after: std::time::Duration,
    },

    /// The host is not listed in known_hosts (and trust on first use is off).
    #[error(
        "known_hosts {path} has no entry for {host_port} (key {fingerprint}); \
         if that fingerprint is right, run `hapull trust-host` or add this line to {path}:\n{known_hosts_line}"
    )]
    UnknownHost {
        host_port: String,
        fingerprint: String,
        known_hosts_line: String,
        path: PathBuf,
    },

    /// The host presented a key other than the one recorded for it: possibly an attack.
    #[error(
        "HOST KEY CHANGED for {host_port}: it now presents {fingerprint}, but {path} line {line} records a \
         different {algorithm} key. This may be a man-in-the-middle attack; refusing to connect. If the host \
         was reinstalled, verify the new fingerprint out of band and replace that line"
    )]
    HostKeyChanged {
        host_port: String,
        fingerprint: String,
        algorithm: String,
        path: PathBuf,
        line: usize,
    },

    /// The host key is not one of the pinned fingerprints.
    #[error(
        "host key of {host_port} is {fingerprint}, which is not among the pinned fingerprints ({pinned}); \
         refusing to connect. If the host was reinstalled, verify the new fingerprint and update `host_key`"
    )]
    HostKeyNotPinned {
        host_port: String,
        fingerprint: String,
        pinned: String,
    },

    /// A line of the known_hosts file cannot be parsed. Not skipped: it may be the entry that pins
    /// this host.
    #[error(
        "known_hosts {path} line {line} cannot be parsed: {reason}; fix or delete that line \
         (each line is `host[,host...] key-type base64-key`)"
    )]
    KnownHostsLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// The known_hosts file is missing or unreadable; not the same as "host unknown".
    #[error(
        "cannot read known_hosts {path}: {source}; create it (e.g. with `hapull trust-host`) or fix its permissions"
    )]
    KnownHostsUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Appending a first-use host key to known_hosts failed.
    #[error("cannot record the host key of {host_port} in {path}: {source}")]
    KnownHostsWrite {
        host_port: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The private key file cannot be read or parsed.
    #[error("cannot use identity file {path}: {reason}")]
    Identity { path: PathBuf, reason: String },

    /// The private key is encrypted and no passphrase was configured.
    #[error("identity file {path} is encrypted; configure its passphrase")]
    PassphraseRequired { path: PathBuf },

    /// The configured passphrase does not decrypt the private key.
    #[error("the passphrase for identity file {path} is wrong; check the configured passphrase")]
    WrongPassphrase { path: PathBuf },

    /// The server refused the key.
    #[error(
        "{host}:{port} refused public-key login for user {user} with key {key_file}; add the matching .pub \
         line to that user's authorized_keys on the host"
    )]
    AuthRefused {
        user: String,
        host: String,
        port: u16,
        key_file: PathBuf,
    },

    /// The remote user lacks permission for a remote path.
    #[error("user {user} cannot {op} {path} (permission denied): see README, Permissions")]
    PermissionDenied {
        user: String,
        op: &'static str,
        path: String,
    },

    /// The remote path does not exist.
    #[error("{path} does not exist on {host} (while trying to {op} it)")]
    NotFound {
        host: String,
        op: &'static str,
        path: String,
    },

    /// Any other refusal by the SFTP server.
    #[error("SFTP server refused to {op} {path}: {message}")]
    Remote {
        op: &'static str,
        path: String,
        message: String,
    },

    /// The remote file changed (size or modification time) while it was being pulled.
    #[error("{path} changed on the remote side during the pull (size/mtime differ); starting over")]
    RemoteChanged { path: String },

    /// The size of the file does not match what was expected.
    #[error(
        "{path}: {what} is {expected} bytes but {actual} bytes were found; the file is incomplete or not the one expected"
    )]
    SizeMismatch {
        path: String,
        what: &'static str,
        expected: u64,
        actual: u64,
    },

    /// Not enough free space at the destination; nothing was transferred.
    #[error(
        "not enough free space in {dir}: {needed} bytes needed (file, minus what is already there, plus a \
         {margin} bytes margin) but only {available} available; free some space or lower the margin"
    )]
    InsufficientSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
        margin: u64,
    },

    /// A local file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The HTTPS server could not be reached (name, port, TCP), or the connection dropped mid-download.
    #[error(
        "cannot download {url}: {message}; check that Home Assistant is up and reachable at that address"
    )]
    HttpUnreachable { url: String, message: String },

    /// The TLS handshake failed: the certificate is not trusted or not issued for this name.
    #[error(
        "TLS with {url} failed: {reason}; use the host name the certificate was issued for in \
         home_assistant.url, or give the certificate of the CA that signed it as home_assistant.ca_file"
    )]
    Tls { url: String, reason: String },

    /// The server answered with a status other than the file.
    #[error("{url} answered HTTP {status}: {hint}")]
    HttpStatus {
        url: String,
        status: u16,
        hint: String,
        transient: bool,
    },

    /// The server answered with a redirect, which is never followed (it could send the token elsewhere).
    #[error(
        "{url} answered HTTP {status} redirecting to {location:?}; redirects are not followed: \
         set home_assistant.url to the address Home Assistant serves itself"
    )]
    Redirect {
        url: String,
        status: u16,
        location: String,
    },

    /// The response does not follow HTTP/1.1 (bad status line, headers or chunk framing).
    #[error("{url}: malformed HTTP response: {message}")]
    HttpProtocol { url: String, message: String },

    /// The retry budget ran out; the last error is attached.
    #[error("giving up after {attempts} attempts: {last}")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        last: Box<TransferError>,
    },
}

impl TransferError {
    /// Whether trying again later may succeed (a dropped or refused connection, a file that changed
    /// under us). Permanent errors (host key, authentication, permissions, disk space) need a person.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransferError::Connect { .. }
                | TransferError::Disconnected { .. }
                | TransferError::StepTimeout { .. }
                | TransferError::RemoteChanged { .. }
                | TransferError::HttpUnreachable { .. }
                | TransferError::HttpProtocol { .. }
                | TransferError::HttpStatus {
                    transient: true,
                    ..
                }
        )
    }

    pub(crate) fn local(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        TransferError::Local {
            op,
            path: path.into(),
            source,
        }
    }
}

//! An embedded, read-only SFTP server on 127.0.0.1 for `hapull demo` and the tests.
//!
//! It speaks real SSH (russh) and SFTP version 3 (russh-sftp), so OpenSSH's `sftp` and hapull's own
//! russh client both talk to it exactly as they would to the sshd on a Home Assistant host. One folder
//! is served as `/` (so a client configured against it uses `remote_dir = "/"`); one user with one
//! public key may log in; passwords and every other method are refused.
//!
//! What it must not do: change anything. Every write, remove, rename, mkdir, rmdir, setstat and symlink
//! request is answered with "permission denied", and no path (through `..` or a symbolic link) reaches
//! outside the served folder. It is a stand-in for tests and demos: it binds only to loopback, and its
//! jail assumes nobody swaps symbolic links inside the served folder while a request is being resolved.
//!
//! Two fault knobs ([`Faults`]) let tests exercise the client's recovery: cutting a connection after a
//! number of bytes of file content, and pacing file content to a byte rate per connection.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Largest read served at once, and what `limits@openssh.com` advertises. OpenSSH's sftp-server uses
/// the same figure: 256 KiB messages minus room for the packet header, so a full reply still fits
/// under the 256 KiB packet limit that both OpenSSH and russh-sftp clients enforce.
pub const MAX_READ_LEN: u32 = 256 * 1024 - 1024;

/// The SFTP packet size advertised to clients.
const MAX_PACKET_LEN: u64 = 256 * 1024;

/// Open handles per SFTP session; beyond this a client is leaking handles, not transferring.
const MAX_OPEN_HANDLES: usize = 256;

/// Directory entries per `SSH_FXP_NAME` reply, small enough to stay far below the packet limit.
const READDIR_BATCH: usize = 128;

/// How long a shutting-down connection gets to deliver its goodbye before its socket is cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Faults a test can switch on to exercise the client's recovery paths.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Cut a connection (TCP closed, no SSH goodbye) once it has served this many bytes of file
    /// content. The read that reaches the budget is shortened to end exactly on it; the cut happens
    /// on the next request. Replies still in flight at that moment are lost, as on a real network.
    pub drop_after_bytes: Option<u64>,
    /// How many authenticated connections, in order, the cut applies to. `None`: every one, so each
    /// reconnection makes `drop_after_bytes` of progress.
    pub drop_first_connections: Option<u64>,
    /// Pace file content to at most this many bytes per second on each connection.
    pub rate_limit_bytes_per_sec: Option<u64>,
}

/// What to serve, to whom, and with which host key.
#[derive(Clone)]
pub struct SftpServerOptions {
    /// The folder served as `/`.
    pub root: PathBuf,
    /// The only user name accepted.
    pub user: String,
    /// The only key accepted, compared by key material (the comment is ignored).
    pub authorized_key: PublicKey,
    /// The host key; a fresh ed25519 key is generated when `None`.
    pub host_key: Option<PrivateKey>,
    /// Fault injection; none by default.
    pub faults: Faults,
}

impl std::fmt::Debug for SftpServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the host key's fingerprint: the private half never reaches a log line.
        let host_key = self
            .host_key
            .as_ref()
            .map(|k| k.fingerprint(HashAlg::Sha256).to_string());
        f.debug_struct("SftpServerOptions")
            .field("root", &self.root)
            .field("user", &self.user)
            .field(
                "authorized_key",
                &self.authorized_key.fingerprint(HashAlg::Sha256).to_string(),
            )
            .field("host_key", &host_key)
            .field("faults", &self.faults)
            .finish()
    }
}

impl SftpServerOptions {
    /// Options with a generated host key and no faults.
    pub fn new(
        root: impl Into<PathBuf>,
        user: impl Into<String>,
        authorized_key: PublicKey,
    ) -> Self {
        Self {
            root: root.into(),
            user: user.into(),
            authorized_key,
            host_key: None,
            faults: Faults::default(),
        }
    }
}

/// Counters a test can read to see what the server did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SftpServerStats {
    /// Connections that passed authentication.
    pub authenticated_connections: u64,
    /// Bytes of file content handed to clients (before any cut loses them in flight).
    pub file_bytes_served: u64,
    /// Connections cut by [`Faults::drop_after_bytes`].
    pub connections_cut: u64,
}

/// A running server. Dropping it stops accepting and disconnects every client; [`SftpServer::shutdown`]
/// does the same and waits until every connection has ended.
pub struct SftpServer {
    addr: SocketAddr,
    host_public_key: PublicKey,
    fingerprint: String,
    known_hosts_line: String,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SftpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpServer")
            .field("addr", &self.addr)
            .field("host_key", &self.fingerprint)
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl SftpServer {
    /// Bind 127.0.0.1 on a free port and start serving `opts.root` read-only.
    ///
    /// Fails when the root is not an existing directory, when the host key cannot be generated or
    /// encoded, or when binding fails.
    pub async fn start(opts: SftpServerOptions) -> io::Result<SftpServer> {
        let root = tokio::fs::canonicalize(&opts.root).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "SFTP server root {} cannot be resolved: {e}; create the folder first",
                    opts.root.display()
                ),
            )
        })?;
        if !tokio::fs::metadata(&root).await?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "SFTP server root {} is not a directory; pass the folder that holds the backups",
                    root.display()
                ),
            ));
        }

        let host_key = match opts.host_key {
            Some(key) => key,
            None => generate_ed25519()?,
        };
        let host_public_key = host_key.public_key().clone();
        let fingerprint = host_public_key.fingerprint(HashAlg::Sha256).to_string();
        // The comment would make the line differ from what `ssh-keyscan` prints; leave it out.
        let bare_key = PublicKey::new(host_public_key.key_data().clone(), "");
        let encoded = bare_key.to_openssh().map_err(|e| {
            io::Error::other(format!(
                "SFTP server host key {fingerprint} cannot be encoded: {e}"
            ))
        })?;

        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let known_hosts_line = if addr.port() == 22 {
            format!("{} {encoded}", addr.ip())
        } else {
            format!("[{}]:{} {encoded}", addr.ip(), addr.port())
        };

        let config = russh::server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            // Rejections stay uniform in time; on loopback a short delay is enough and keeps tests of
            // refused keys quick. The first "none" probe every OpenSSH client sends is answered at once.
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            // Requests and replies alternate; Nagle would add a delay to each small reply.
            nodelay: true,
            ..Default::default()
        };

        let shared = Arc::new(Shared {
            root,
            user: opts.user,
            authorized_key: opts.authorized_key,
            faults: opts.faults,
            authenticated: AtomicU64::new(0),
            served: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            Arc::clone(&shared),
            shutdown_rx,
        ));
        info!(%addr, host_key = %fingerprint, root = %shared.root.display(), "SFTP server listening");

        Ok(SftpServer {
            addr,
            host_public_key,
            fingerprint,
            known_hosts_line,
            shared,
            shutdown_tx,
            accept_task: Some(accept_task),
        })
    }

    /// The address clients connect to (always 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host's public key, for clients that pin it.
    pub fn host_public_key(&self) -> &PublicKey {
        &self.host_public_key
    }

    /// The host key fingerprint as OpenSSH prints it: `SHA256:` and unpadded base64.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A `known_hosts` line for this server: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub fn known_hosts_line(&self) -> &str {
        &self.known_hosts_line
    }

    /// What the server has done so far.
    pub fn stats(&self) -> SftpServerStats {
        SftpServerStats {
            authenticated_connections: self.shared.authenticated.load(Ordering::Relaxed),
            file_bytes_served: self.shared.served.load(Ordering::Relaxed),
            connections_cut: self.shared.cut.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting, say goodbye to every client, and wait until all connections have ended.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.accept_task.take()
            && let Err(e) = task.await
        {
            warn!(error = %e, "SFTP server task ended abnormally");
        }
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        // Connection tasks watch this flag; they end on their own without being awaited here.
        let _ = self.shutdown_tx.send(true);
    }
}

/// State every connection reads.
struct Shared {
    root: PathBuf,
    user: String,
    authorized_key: PublicKey,
    faults: Faults,
    authenticated: AtomicU64,
    served: AtomicU64,
    cut: AtomicU64,
}

fn generate_ed25519() -> io::Result<PrivateKey> {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed)
        .map_err(|_| io::Error::other("no randomness available to generate the SFTP host key"))?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Err: the server handle was dropped, which also means stop.
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&config),
                        Arc::clone(&shared),
                        shutdown.clone(),
                    ));
                }
                // Running out of descriptors is transient; a short pause avoids a hot loop.
                Err(e) => {
                    warn!(error = %e, "SFTP server could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    debug!("SFTP server stopped");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A second descriptor for the same socket: shutting it down cuts the connection under russh
    // without racing russh for ownership of the stream.
    let cutter = match stream.as_fd().try_clone_to_owned() {
        Ok(fd) => std::net::TcpStream::from(fd),
        Err(e) => {
            warn!(%peer, error = %e, "SFTP server could not duplicate a socket; dropping the connection");
            return;
        }
    };
    let cut = Arc::new(Notify::new());
    let handler = SshHandler {
        shared: Arc::clone(&shared),
        peer,
        channels: HashMap::new(),
        conn: Arc::new(ConnState {
            cut: Arc::clone(&cut),
            subject_to_cut: false.into(),
            served: AtomicU64::new(0),
            pacer: Mutex::new(None),
        }),
    };
    let mut session = match russh::server::run_stream(config, stream, handler).await {
        Ok(session) => session,
        Err(e) => {
            debug!(%peer, error = %e, "SSH handshake did not complete");
            return;
        }
    };
    let handle = session.handle();
    tokio::select! {
        result = &mut session => {
            match result {
                Ok(()) => debug!(%peer, "SSH connection closed"),
                Err(e) => debug!(%peer, error = %e, "SSH connection ended with an error"),
            }
        }
        () = cut.notified() => {
            info!(%peer, "cutting the connection (fault injection)");
            shared.cut.fetch_add(1, Ordering::Relaxed);
            let _ = cutter.shutdown(Shutdown::Both);
            let _ = session.await;
        }
        _ = wait_for_shutdown(&mut shutdown) => {
            let _ = handle
                .disconnect(Disconnect::ByApplication, "server shutting down".into(), String::new())
                .await;
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut session).await.is_err() {
                let _ = cutter.shutdown(Shutdown::Both);
                let _ = session.await;
            }
        }
    }
}

async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // A closed channel (the server handle dropped) counts as a shutdown request.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Per-connection state shared by the SSH handler and its SFTP sessions.
struct ConnState {
    cut: Arc<Notify>,
    subject_to_cut: std::sync::atomic::AtomicBool,
    served: AtomicU64,
    pacer: Mutex<Option<Pacer>>,
}

/// Paces bytes to a rate: the n-th byte may leave no earlier than `start + n / rate`.
#[derive(Debug, Clone, Copy)]
struct Pacer {
    start: Instant,
    rate: u64,
    sent: u64,
}

impl Pacer {
    fn new(start: Instant, rate: u64) -> Self {
        Self {
            start,
            rate: rate.max(1),
            sent: 0,
        }
    }

    /// Account for `bytes` more and return the instant before which they must not be sent.
    fn deadline_for(&mut self, bytes: u64) -> Instant {
        self.sent = self.sent.saturating_add(bytes);
        let nanos = u128::from(self.sent) * 1_000_000_000 / u128::from(self.rate);
        let offset = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.start + offset
    }
}

struct SshHandler {
    shared: Arc<Shared>,
    peer: SocketAddr,
    channels: HashMap<ChannelId, Channel<Msg>>,
    conn: Arc<ConnState>,
}

impl SshHandler {
    fn is_authorized(&self, user: &str, key: &PublicKey) -> bool {
        user == self.shared.user && key.key_data() == self.shared.authorized_key.key_data()
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.is_authorized(user, offer.public_key) {
            Ok(Auth::Accept)
        } else {
            info!(
                peer = %self.peer,
                user,
                key = %offer.public_key.fingerprint(HashAlg::Sha256),
                "refused a key that is not the authorized one"
            );
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.is_authorized(user, key.public_key) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let index = self.shared.authenticated.fetch_add(1, Ordering::Relaxed);
        let faults = &self.shared.faults;
        let subject = faults.drop_after_bytes.is_some()
            && faults.drop_first_connections.is_none_or(|n| index < n);
        self.conn.subject_to_cut.store(subject, Ordering::Relaxed);
        info!(peer = %self.peer, user = %self.shared.user, "SFTP client authenticated");
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.close(channel)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(chan) = (name == "sftp")
            .then(|| self.channels.remove(&channel))
            .flatten()
        else {
            info!(peer = %self.peer, subsystem = name, "refused a subsystem other than sftp");
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let sftp = SftpHandler {
            shared: Arc::clone(&self.shared),
            conn: Arc::clone(&self.conn),
            handles: HashMap::new(),
            next_handle: 0,
        };
        russh_sftp::server::run(DrainedChannel::new(chan.into_stream()), sftp).await;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        info!(peer = %self.peer, "refused a shell: this server only serves SFTP");
        session.channel_failure(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        info!(peer = %self.peer, "refused a command: this server only serves SFTP");
        session.channel_failure(channel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

/// An SSH channel whose incoming data is read eagerly by its own task.
///
/// russh's session loop hands incoming channel data to a bounded queue and waits when it is full, and it
/// is the same loop that processes the client's window adjustments. The SFTP loop reads one request,
/// then writes its reply, so when a reply waits for window while the client keeps pipelining requests,
/// the queue fills and both sides wait on each other. Draining requests as they arrive breaks that
/// cycle; what is buffered is bounded by how many requests the client keeps outstanding.
struct DrainedChannel {
    incoming: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    pending: bytes::Bytes,
    outgoing: tokio::io::WriteHalf<russh::ChannelStream<Msg>>,
}

impl DrainedChannel {
    fn new(stream: russh::ChannelStream<Msg>) -> Self {
        let (mut read, outgoing) = tokio::io::split(stream);
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(bytes::Bytes::copy_from_slice(&buf[..n])).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Self {
            incoming,
            pending: bytes::Bytes::new(),
            outgoing,
        }
    }
}

impl tokio::io::AsyncRead for DrainedChannel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.pending.is_empty() {
            match self.incoming.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.pending = chunk,
                // The channel ended: end of stream.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for DrainedChannel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.outgoing).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.outgoing).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.outgoing).poll_shutdown(cx)
    }
}

enum OpenHandle {
    File(Arc<std::fs::File>),
    Dir(VecDeque<File>),
}

struct SftpHandler {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
}

fn status(code: StatusCode, message: impl Into<String>) -> StatusReply {
    code.with_message(message)
}

fn read_only(what: &str, path: &str) -> StatusReply {
    status(
        StatusCode::PermissionDenied,
        format!("{what} {path:?} refused: this server is read-only"),
    )
}

fn io_status(path: &str, e: &io::Error) -> StatusReply {
    match e.kind() {
        io::ErrorKind::NotFound => {
            status(StatusCode::NoSuchFile, format!("{path:?} does not exist"))
        }
        io::ErrorKind::PermissionDenied => status(
            StatusCode::PermissionDenied,
            format!("{path:?} is not readable"),
        ),
        _ => status(StatusCode::Failure, format!("{path:?}: {e}")),
    }
}

fn attrs_of(meta: &std::fs::Metadata) -> FileAttributes {
    let mut attrs = FileAttributes::from(meta);
    // The conversion guesses "regular" for anything that is not a directory; the mode has the truth.
    attrs.permissions = Some(meta.mode());
    attrs
}

/// Split a client path into components below the served root. `..` may climb back up but never above
/// `/`; the client's working directory is always `/`.
fn lexical_components(path: &str) -> Result<Vec<&str>, StatusReply> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(status(
                        StatusCode::PermissionDenied,
                        format!("{path:?} leads outside the served folder"),
                    ));
                }
            }
            name if name.contains('\0') => {
                return Err(status(
                    StatusCode::BadMessage,
                    format!("{path:?} contains a NUL byte"),
                ));
            }
            name => parts.push(name),
        }
    }
    Ok(parts)
}

impl SftpHandler {
    /// Map a client path to a real path inside the root, following symbolic links for the last
    /// component only when `follow_last` is set. Anything that resolves outside the root is refused.
    async fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf, StatusReply> {
        let parts = lexical_components(path)?;
        let root = &self.shared.root;
        let lexical: PathBuf = parts.iter().fold(root.clone(), |p, c| p.join(c));
        let (to_canonicalize, last) = match (follow_last, parts.last()) {
            (true, _) | (false, None) => (lexical.as_path(), None),
            (false, Some(last)) => (lexical.parent().unwrap_or(root.as_path()), Some(*last)),
        };
        let canonical = tokio::fs::canonicalize(to_canonicalize)
            .await
            .map_err(|e| io_status(path, &e))?;
        if !canonical.starts_with(root) {
            return Err(status(
                StatusCode::PermissionDenied,
                format!("{path:?} leads outside the served folder"),
            ));
        }
        Ok(match last {
            Some(last) => canonical.join(last),
            None => canonical,
        })
    }

    /// The client-visible name of a real path inside the root.
    fn virtual_path(&self, real: &Path) -> Option<String> {
        let rest = real.strip_prefix(&self.shared.root).ok()?;
        let mut out = String::from("/");
        out.push_str(rest.to_str()?);
        Some(out)
    }

    fn add_handle(&mut self, handle: OpenHandle) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_OPEN_HANDLES {
            return Err(status(
                StatusCode::Failure,
                format!("too many open handles (limit {MAX_OPEN_HANDLES}); close some first"),
            ));
        }
        self.next_handle += 1;
        let name = format!("h{}", self.next_handle);
        self.handles.insert(name.clone(), handle);
        Ok(name)
    }

    /// Apply the cut budget: how many of `len` bytes may be served now. `None` means the connection
    /// has just been cut and nothing more is to be sent.
    fn budget(&self, len: u64) -> Option<u64> {
        let Some(limit) = self.shared.faults.drop_after_bytes else {
            return Some(len);
        };
        if !self.conn.subject_to_cut.load(Ordering::Relaxed) {
            return Some(len);
        }
        let served = self.conn.served.load(Ordering::Relaxed);
        if served >= limit {
            // notify_one stores a permit, so the cut happens even if the connection task is busy.
            self.conn.cut.notify_one();
            return None;
        }
        Some(len.min(limit - served))
    }

    async fn pace(&self, bytes: u64) {
        let Some(rate) = self.shared.faults.rate_limit_bytes_per_sec else {
            return;
        };
        let deadline = {
            let mut pacer = self.conn.pacer.lock().await;
            pacer
                .get_or_insert_with(|| Pacer::new(Instant::now(), rate))
                .deadline_for(bytes)
        };
        tokio::time::sleep_until(deadline).await;
    }
}

impl russh_sftp::server::Handler for SftpHandler {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        status(
            StatusCode::OpUnsupported,
            "not supported by this read-only server",
        )
    }

    async fn init(
        &mut self,
        version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        debug!(version, "SFTP session started");
        let mut reply = Version::new();
        reply
            .extensions
            .insert(russh_sftp::extensions::LIMITS.to_owned(), "1".to_owned());
        Ok(reply)
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        _data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        if request != russh_sftp::extensions::LIMITS {
            return Err(status(
                StatusCode::OpUnsupported,
                format!("extension {request:?} is not supported by this server"),
            ));
        }
        // Four uint64: packet, read, write and open-handle limits. Writes are refused anyway, but a
        // zero would make some clients compute a zero-sized upload buffer before even trying.
        let mut data = Vec::with_capacity(32);
        for value in [
            MAX_PACKET_LEN,
            u64::from(MAX_READ_LEN),
            u64::from(MAX_READ_LEN),
            MAX_OPEN_HANDLES as u64,
        ] {
            data.extend_from_slice(&value.to_be_bytes());
        }
        Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let parts = lexical_components(&path)?;
        let lexical = format!("/{}", parts.join("/"));
        // An existing path is reported with its links resolved, as OpenSSH does; a missing one
        // keeps its lexical form so a client can still name a file it is about to ask about.
        let name = match self.resolve(&path, true).await {
            Ok(real) => self.virtual_path(&real).unwrap_or(lexical),
            Err(reply) if reply.status_code == StatusCode::NoSuchFile => lexical,
            Err(reply) => return Err(reply),
        };
        Ok(Name {
            id,
            files: vec![File::dummy(name)],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let real = self.resolve(&path, true).await?;
        let meta = tokio::fs::metadata(&real)
            .await
            .map_err(|e| io_status(&path, &e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let real = self.resolve(&path, false).await?;
        let meta = tokio::fs::symlink_metadata(&real)
            .await
            .map_err(|e| io_status(&path, &e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let Some(OpenHandle::File(file)) = self.handles.get(&handle) else {
            return Err(status(
                StatusCode::Failure,
                format!("{handle:?} is not an open file handle"),
            ));
        };
        let meta = file.metadata().map_err(|e| io_status(&handle, &e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let real = self.resolve(&path, true).await?;
        let mut dir = tokio::fs::read_dir(&real)
            .await
            .map_err(|e| io_status(&path, &e))?;
        let mut entries = VecDeque::new();
        while let Some(entry) = dir.next_entry().await.map_err(|e| io_status(&path, &e))? {
            // SFTP names travel as UTF-8 strings here; a name that is not cannot be asked for again.
            let Ok(name) = entry.file_name().into_string() else {
                debug!(dir = %path, "skipping a directory entry whose name is not UTF-8");
                continue;
            };
            // Entries are listed as they are (links as links), like OpenSSH's sftp-server.
            match entry.metadata().await {
                Ok(meta) => entries.push_back(File::new(name, attrs_of(&meta))),
                Err(e) => {
                    debug!(dir = %path, entry = %name, error = %e, "entry vanished while listing")
                }
            }
        }
        let handle = self.add_handle(OpenHandle::Dir(entries))?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(OpenHandle::Dir(entries)) = self.handles.get_mut(&handle) else {
            return Err(status(
                StatusCode::Failure,
                format!("{handle:?} is not an open directory handle"),
            ));
        };
        if entries.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let take = entries.len().min(READDIR_BATCH);
        Ok(Name {
            id,
            files: entries.drain(..take).collect(),
        })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let writes = OpenFlags::WRITE
            | OpenFlags::APPEND
            | OpenFlags::CREATE
            | OpenFlags::TRUNCATE
            | OpenFlags::EXCLUDE;
        if pflags.intersects(writes) {
            return Err(read_only("opening for writing", &filename));
        }
        let real = self.resolve(&filename, true).await?;
        // The resolved path has no links left; O_NOFOLLOW keeps a link swapped in since then out.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&real)
            .await
            .map_err(|e| io_status(&filename, &e))?
            .into_std()
            .await;
        let meta = file.metadata().map_err(|e| io_status(&filename, &e))?;
        if !meta.is_file() {
            return Err(status(
                StatusCode::Failure,
                format!("{filename:?} is not a regular file; only files can be read"),
            ));
        }
        let handle = self.add_handle(OpenHandle::File(Arc::new(file)))?;
        Ok(Handle { id, handle })
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let Some(OpenHandle::File(file)) = self.handles.get(&handle) else {
            return Err(status(
                StatusCode::Failure,
                format!("{handle:?} is not an open file handle"),
            ));
        };
        let file = Arc::clone(file);
        let Some(allowed) = self.budget(u64::from(len.min(MAX_READ_LEN))) else {
            return Err(status(
                StatusCode::Failure,
                "connection is being cut (fault injection)",
            ));
        };
        // `allowed` is at most MAX_READ_LEN, so it fits a usize on every platform.
        let want = usize::try_from(allowed).unwrap_or(MAX_READ_LEN as usize);
        let data = tokio::task::spawn_blocking(move || read_at_full(&file, offset, want))
            .await
            .map_err(|e| {
                status(
                    StatusCode::Failure,
                    format!("read of {handle:?} failed: {e}"),
                )
            })?
            .map_err(|e| io_status(&handle, &e))?;
        if data.is_empty() && want > 0 {
            return Err(StatusCode::Eof.into());
        }
        let n = data.len() as u64;
        self.pace(n).await;
        self.conn.served.fetch_add(n, Ordering::Relaxed);
        self.shared.served.fetch_add(n, Ordering::Relaxed);
        Ok(Data { id, data })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        if self.handles.remove(&handle).is_none() {
            return Err(status(
                StatusCode::Failure,
                format!("{handle:?} is not an open handle"),
            ));
        }
        Ok(Status {
            id,
            status_code: StatusCode::Ok,
            error_message: "Ok".to_owned(),
            language_tag: "en-US".to_owned(),
        })
    }

    async fn write(
        &mut self,
        _id: u32,
        handle: String,
        _offset: u64,
        _data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        Err(read_only("writing to", &handle))
    }

    async fn setstat(
        &mut self,
        _id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        Err(read_only("changing attributes of", &path))
    }

    async fn fsetstat(
        &mut self,
        _id: u32,
        handle: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        Err(read_only("changing attributes of", &handle))
    }

    async fn remove(&mut self, _id: u32, filename: String) -> Result<Status, Self::Error> {
        Err(read_only("removing", &filename))
    }

    async fn mkdir(
        &mut self,
        _id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        Err(read_only("creating directory", &path))
    }

    async fn rmdir(&mut self, _id: u32, path: String) -> Result<Status, Self::Error> {
        Err(read_only("removing directory", &path))
    }

    async fn rename(
        &mut self,
        _id: u32,
        oldpath: String,
        _newpath: String,
    ) -> Result<Status, Self::Error> {
        Err(read_only("renaming", &oldpath))
    }

    async fn symlink(
        &mut self,
        _id: u32,
        linkpath: String,
        _targetpath: String,
    ) -> Result<Status, Self::Error> {
        Err(read_only("creating link", &linkpath))
    }
}

/// Read up to `len` bytes at `offset`, short only at end of file.
fn read_at_full(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_bytes_by_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, 1000);
        assert_eq!(pacer.deadline_for(500), start + Duration::from_millis(500));
        assert_eq!(pacer.deadline_for(1500), start + Duration::from_secs(2));
        assert_eq!(pacer.deadline_for(0), start + Duration::from_secs(2));
    }

    #[test]
    fn dotdot_cannot_climb_above_root() {
        assert_eq!(lexical_components("/a/./b/../c").ok(), Some(vec!["a", "c"]));
        assert_eq!(lexical_components("a/..").ok(), Some(vec![]));
        assert!(lexical_components("/..").is_err());
        assert!(lexical_components("a/../../etc/passwd").is_err());
        assert!(lexical_components("a\0b").is_err());
    }
}

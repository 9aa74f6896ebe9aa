//! A simulated Home Assistant: a real WebSocket server on `127.0.0.1` speaking the part of HA's
//! WebSocket API that hapull uses, as HA 2026.11.0 does ([`SimVersion::Current`]) or as HA 2024.3.3
//! does ([`SimVersion::Legacy`]), and writing real backup archives into a folder.
//!
//! It exists for tests and for `hapull demo`: it can be driven into states a real instance cannot be
//! put in on demand (a failing or never-ending backup, a dropped connection mid-backup, a revoked
//! token, garbage on the wire, a corrupt archive) through [`SimControl`], and it records what clients
//! sent so tests can check their behaviour.
//!
//! What it must not do: depend on anything else in this crate (the client must be tested against
//! something that does not share its assumptions), or trust its clients: every frame is validated and
//! answered the way HA answers it, or the connection is closed as HA closes it.
//!
//! Known differences from real HA:
//! - With a password, HA encrypts the inner archive with SecureTar; here the inner bytes are only
//!   masked with a password-derived keystream. `backup.json` says `protected: true`, as HA's does.
//! - `invalid_format` messages follow voluptuous' wording for missing keys and wrong types; the wording
//!   for extra keys is simplified (HA 2026 quotes the whole message).
//! - No server-side WebSocket pings, no slow-consumer eviction. Of HA's HTTP API only the backup
//!   download (`/api/backup/download/<id>`) is served (see `http.rs`).
//! - A failed backup goes `in_progress` (stage null), `in_progress` (home_assistant), then `failed` with
//!   the given reason; the `backup.create` service then answers `home_assistant_error`
//!   "Backup failed: <reason>".
//! - A restart re-reads the backups folder (as HA's local agent does at start); a backup running at
//!   that moment is abandoned with its partial file left behind.

mod archive;
mod conn;
mod http;
pub mod sftp_server;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use state::Received;
use state::{ConnMsg, Shared};

/// Which Home Assistant to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimVersion {
    /// HA 2026.11.0: the backup manager API with events.
    Current,
    /// HA 2024.3.3: `backup/info` with slugs, a blocking `backup/generate`, `backup/remove`.
    Legacy,
    /// HA 2026.11.0 on Home Assistant OS / Supervised: agent `hassio.local`, `backup/generate`
    /// answers a Supervisor job id (the backup id comes later, from `supervisor/api` `/jobs/<id>`),
    /// Supervisor stages, archives named after the request date and holding add-on, folder and
    /// `supervisor.tar.gz` members, downloads streamed without `Range`.
    Supervisor,
}

impl SimVersion {
    /// The `ha_version` string the server announces.
    pub fn ha_version(self) -> &'static str {
        match self {
            SimVersion::Current | SimVersion::Supervisor => "2026.11.0",
            SimVersion::Legacy => "2024.3.3",
        }
    }
}

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Which HA to imitate.
    pub version: SimVersion,
    /// The only access token `auth` accepts.
    pub token: String,
    /// The backups folder (HA's `<config>/backups`); must exist. Archives already in it are listed.
    pub backup_dir: PathBuf,
    /// Bytes of incompressible data added to every archive, so archives can be made big.
    pub payload_bytes: u64,
    /// How long the `home_assistant` stage lasts; the archive grows in chunks across it.
    pub stage_duration: Duration,
    /// Start with the backup manager `blocked`, as HA is until it has finished starting.
    pub start_blocked: bool,
    /// The recorder database (`data/home-assistant_v2.db`) put in every archive that includes the
    /// database. `None`: a 16-byte stub that is only SQLite's magic, not a database.
    pub database: Option<std::sync::Arc<Vec<u8>>>,
}

impl SimOptions {
    /// Current HA, token `sim-token`, no payload, a 50 ms stage, not blocked.
    pub fn new(backup_dir: impl Into<PathBuf>) -> Self {
        SimOptions {
            version: SimVersion::Current,
            token: "sim-token".into(),
            backup_dir: backup_dir.into(),
            payload_bytes: 0,
            stage_duration: Duration::from_millis(50),
            start_blocked: false,
            database: None,
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The backups folder is missing or not a folder.
    #[error("simulator backups folder {path} is not a folder: {source}; create it before starting")]
    BackupDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The listening socket could not be opened.
    #[error("simulator could not listen on {addr}: {source}; is another process using the port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Ways to damage the next archive, just before HA reports it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Cut the file to half its size (the listed size stays the full one).
    Truncate,
    /// Flip one byte in the middle: same size, tar headers intact, different content.
    FlipByte,
}

/// How the Supervisor answers `supervisor/api` `GET /jobs/<id>` (Supervisor personality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobAnswer {
    /// As it should: the job, with `reference` = the backup id once done.
    #[default]
    Reference,
    /// The job, done, but naming no backup (`reference: null`).
    NoReference,
    /// "No job found" for every job, as after a Supervisor restart.
    UnknownJob,
    /// An error: the Supervisor cannot be reached.
    Unreachable,
    /// The job, done, naming its backup but with errors: the Supervisor names the backup when the
    /// job starts, so a failed job still carries a reference.
    Failed,
}

/// Bad frames the server can push to every authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garbage {
    /// A text frame that is not JSON.
    InvalidJson,
    /// A well-formed message of a type HA never sends.
    UnknownType,
    /// A result for a command id the client never used.
    ResultForUnknownId,
    /// A valid result message padded to about this many bytes.
    Oversized(usize),
    /// Valid JSON nested this deep.
    DeeplyNested(usize),
}

/// A running simulated Home Assistant.
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

/// The fault switches and server-side actions; cheap to clone, usable while clients are connected.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<Shared>,
}

impl Sim {
    /// Starts listening on `127.0.0.1` on a free port.
    pub async fn start(opts: SimOptions) -> Result<Sim, SimError> {
        match std::fs::metadata(&opts.backup_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(SimError::BackupDir {
                    path: opts.backup_dir.clone(),
                    source: std::io::Error::other("not a directory"),
                });
            }
            Err(source) => {
                return Err(SimError::BackupDir {
                    path: opts.backup_dir.clone(),
                    source,
                });
            }
        }
        let shared = Shared::new(&opts);
        let wanted = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(wanted)
            .await
            .map_err(|source| SimError::Bind {
                addr: wanted,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: wanted,
            source,
        })?;
        let accept = Some(tokio::spawn(accept_loop(listener, shared.clone())));
        Ok(Sim {
            shared,
            addr,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT`, the form a user writes in the configuration.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/api/websocket`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/websocket", self.addr)
    }

    /// The listening address; it stays the same across [`Sim::restart`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backups folder.
    pub fn backup_dir(&self) -> &Path {
        &self.shared.backup_dir
    }

    /// The fault switches.
    pub fn control(&self) -> SimControl {
        SimControl {
            shared: self.shared.clone(),
        }
    }

    /// The backups as `backup/info` lists them now (legacy shape in legacy mode).
    pub fn backups(&self) -> Vec<Value> {
        self.control().backups()
    }

    /// The archive file of a listed backup, whether or not it still exists on disk.
    pub fn archive_path(&self, backup_id: &str) -> Option<PathBuf> {
        self.control().archive_path(backup_id)
    }

    /// Every frame received so far, from every connection, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Persistent notifications created and not dismissed: `{notification_id, title, message}`.
    pub fn notifications(&self) -> Vec<Value> {
        self.shared.lock().notifications.clone()
    }

    /// Every event put on the bus (by `fire_event`, service calls, state changes, floods), in order.
    pub fn fired_events(&self) -> Vec<Value> {
        self.shared.lock().fired.clone()
    }

    /// Number of connections currently open (authenticated or not).
    pub fn connection_count(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Stops accepting, closes every connection with a close frame, abandons a running backup.
    pub async fn shutdown(mut self) {
        self.stop_serving().await;
    }

    /// HA going down: the port is released and every connection closed. Backups on disk stay.
    pub async fn stop_serving(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        self.shared.send_all(|| ConnMsg::Close);
        self.shared.abort_job();
        // Wait until the connections have gone, so a following bind of the same port succeeds and
        // no old connection outlives the "restart".
        for _ in 0..200 {
            if self.shared.lock().conns.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// HA coming back on the same port: re-reads the backups folder and accepts connections again.
    pub async fn resume_serving(&mut self) -> Result<(), SimError> {
        if self.accept.is_some() {
            return Ok(());
        }
        self.shared.rescan();
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: self.addr,
                source,
            })?;
        self.accept = Some(tokio::spawn(accept_loop(listener, self.shared.clone())));
        Ok(())
    }

    /// [`Sim::stop_serving`] then [`Sim::resume_serving`].
    pub async fn restart(&mut self) -> Result<(), SimError> {
        self.stop_serving().await;
        self.resume_serving().await
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.shared.send_all(|| ConnMsg::Drop);
        self.shared.abort_job();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    // One port for both, as in HA: the request line says which.
                    if http::is_download(&stream).await {
                        http::serve(shared, stream).await;
                    } else {
                        conn::serve(shared, stream).await;
                    }
                });
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl SimControl {
    /// The next backup fails with this reason after its archive was partly written; the file is removed.
    pub fn fail_next_backup(&self, reason: &str) {
        self.shared.lock().faults.fail_next = Some(reason.to_string());
    }

    /// The next backup never finishes: it stays in the `home_assistant` stage with its file written,
    /// until [`SimControl::release_hung_backup`].
    pub fn hang_next_backup(&self) {
        self.shared.lock().faults.hang_next = true;
    }

    /// Lets a hung backup go on and complete, as if HA had only been slow.
    pub fn release_hung_backup(&self) {
        self.shared.release_hang.notify_one();
    }

    /// How `supervisor/api` `GET /jobs/<id>` answers from now on.
    pub fn set_job_answer(&self, answer: JobAnswer) {
        self.shared.lock().faults.job_answer = answer;
    }

    /// The next `backup/generate` starts the backup, then the connection drops before the answer (the
    /// client never learns the backup's id).
    pub fn drop_connection_on_next_generate(&self) {
        self.shared.lock().faults.drop_on_generate = true;
    }

    /// The next `backup/generate` is refused with "Backup manager busy: create_backup", as when another
    /// backup started between the client's check and its request.
    pub fn refuse_next_generate(&self) {
        self.shared.lock().faults.refuse_generate = true;
    }

    /// The next backup completes (events, job reference) but never appears in `backup/info`.
    pub fn unlist_next_backup(&self) {
        self.shared.lock().faults.unlist_next = true;
    }

    /// Adds a backup with this name and date, as the Supervisor stores it (`<slug>.tar`), made by this
    /// instance or, with `instance_id`, by another one (`extra_metadata.instance_id`). Returns its id.
    pub fn add_backup(
        &self,
        name: &str,
        date: jiff::Timestamp,
        instance_id: Option<&str>,
    ) -> std::io::Result<String> {
        self.shared.add_backup(name, date, instance_id)
    }

    /// The next archive is damaged right before `completed` is reported.
    pub fn corrupt_next_archive(&self, how: Corruption) {
        self.shared.lock().faults.corrupt_next = Some(how);
    }

    /// Drops every TCP connection without a close frame; a running backup carries on.
    pub fn drop_connections(&self) {
        self.shared.send_all(|| ConnMsg::Drop);
    }

    /// Puts the backup manager into `blocked` (or back to `idle`); ignored during a backup.
    pub fn set_blocked(&self, blocked: bool) {
        self.shared.set_blocked(blocked);
    }

    /// Holds every command back this long after it arrived before handling it (zero: answer at once).
    /// Commands already held back are re-timed against the new delay.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.shared.lock().faults.answer_delay = delay;
        self.shared.delay_changed.notify_waiters();
    }

    /// Fires `count` events of this type, as fast as the server can, with data `{"n": i}`.
    pub fn flood_events(&self, event_type: &str, count: usize) {
        for n in 0..count {
            let ctx = self.shared.context(false);
            self.shared.fire(event_type, json!({"n": n}), ctx);
        }
    }

    /// Fires one bus event, as an integration inside HA would.
    pub fn fire_event(&self, event_type: &str, data: Value) {
        let ctx = self.shared.context(false);
        self.shared.fire(event_type, data, ctx);
    }

    /// Sends a bad frame to every authenticated connection.
    pub fn send_garbage(&self, garbage: Garbage) {
        let text = match garbage {
            Garbage::InvalidJson => "{\"id\": 1, \"type\": \"result\", \"succ".to_string(),
            Garbage::UnknownType => json!({"type": "sim_unknown_message", "data": {}}).to_string(),
            Garbage::ResultForUnknownId => {
                json!({"id": 987_654_321u64, "type": "result", "success": true, "result": null})
                    .to_string()
            }
            Garbage::Oversized(bytes) => {
                json!({"id": 987_654_321u64, "type": "result", "success": true, "result": "x".repeat(bytes)})
                    .to_string()
            }
            Garbage::DeeplyNested(depth) => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        };
        let inner = self.shared.lock();
        for entry in inner.conns.values() {
            if entry.authed {
                let _ = entry.tx.send(ConnMsg::Raw(text.clone()));
            }
        }
    }

    /// Revokes the access token: new `auth` messages fail and open connections are closed.
    pub fn revoke_token(&self) {
        let mut inner = self.shared.lock();
        inner.token = format!("revoked-{}", state::random_hex(32));
        for entry in inner.conns.values() {
            let _ = entry.tx.send(ConnMsg::Close);
        }
    }

    /// Accepts this token from now on (e.g. after [`SimControl::revoke_token`]).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_string();
    }

    /// The backups as `backup/info` lists them now.
    pub fn backups(&self) -> Vec<Value> {
        let inner = self.shared.lock();
        inner
            .backups
            .iter()
            .map(|b| self.shared.backup_value(b))
            .collect()
    }

    /// The archive file of a listed backup.
    pub fn archive_path(&self, backup_id: &str) -> Option<PathBuf> {
        let inner = self.shared.lock();
        inner
            .backups
            .iter()
            .find(|b| b.id == backup_id)
            .map(|b| b.path.clone())
    }

    /// The next HTTP download sends this many body bytes, then drops the connection.
    pub fn cut_next_download(&self, after_bytes: u64) {
        self.shared.lock().faults.cut_download = Some(after_bytes);
    }

    /// Number of HTTP downloads served, and how many of them were `Range` requests.
    pub fn downloads(&self) -> (u64, u64) {
        let inner = self.shared.lock();
        (inner.downloads, inner.range_downloads)
    }

    /// Adds a backup someone else made, as the Supervisor stores it (`<slug>.tar`, add-on and folder
    /// members): e.g. an add-on update's backup or one made in HA's UI. Returns its id.
    pub fn add_foreign_backup(&self, name: &str) -> std::io::Result<String> {
        self.shared.add_foreign_backup(name)
    }

    /// The file of the backup being written right now, if any.
    pub fn running_archive_path(&self) -> Option<PathBuf> {
        self.shared.lock().job_path.clone()
    }
}

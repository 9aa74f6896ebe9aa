//! The simulated instance's state: event bus, backup manager, backups list, recorded observations.
//!
//! Connections only read and mutate this through short critical sections; no lock is held across an
//! `.await`. Nothing here speaks WebSocket: messages are built as JSON values and handed to each
//! connection's queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::archive::{self, ArchiveSpec};
use super::{Corruption, SimVersion};

/// One message the server wants a connection to consider. Connections filter bus items through their
/// own subscriptions.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A Home Assistant bus event (`event_type`, `data`, `origin`, `time_fired`, `context`).
    Bus { event_type: String, event: Value },
    /// A backup manager event, for `backup/subscribe_events` subscribers.
    Manager(Value),
    /// A complete message for one connection only (e.g. a result that must go out among events).
    Direct { conn: u64, msg: Value },
}

/// What a connection's queue carries.
#[derive(Debug)]
pub(crate) enum ConnMsg {
    /// Messages produced together: one frame when coalescing is on.
    Batch(Arc<Vec<Item>>),
    /// A raw text frame, sent as is (garbage faults).
    Raw(String),
    /// A command whose answer delay has elapsed.
    Delayed(Value),
    /// Close with a close frame (token revoked, server stopping).
    Close,
    /// Drop the TCP connection without a close frame (network blip).
    Drop,
}

pub(crate) struct ConnEntry {
    pub tx: mpsc::UnboundedSender<ConnMsg>,
    pub authed: bool,
}

/// A received frame, tagged with the connection it came in on.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Connection number, counted from 1 since the simulator started.
    pub conn: u64,
    /// The frame as JSON; a frame that is not JSON is kept as a JSON string of its text. The access
    /// token of `auth` messages is replaced by `"<redacted>"`.
    pub frame: Value,
}

#[derive(Default)]
pub(crate) struct Faults {
    pub fail_next: Option<String>,
    pub hang_next: bool,
    pub corrupt_next: Option<Corruption>,
    pub answer_delay: Duration,
    /// Body bytes after which the next HTTP download is cut.
    pub cut_download: Option<u64>,
    /// How `supervisor/api` `GET /jobs/<id>` answers (Supervisor personality).
    pub job_answer: super::JobAnswer,
    /// The next backup completes but is not listed.
    pub unlist_next: bool,
    /// The next `backup/generate` starts the backup and drops the connection instead of answering.
    pub drop_on_generate: bool,
    /// The next `backup/generate` is refused as HA refuses it while busy.
    pub refuse_generate: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ManagerState {
    Idle,
    Blocked,
    CreateBackup,
}

impl ManagerState {
    fn as_str(self) -> &'static str {
        match self {
            ManagerState::Idle => "idle",
            ManagerState::Blocked => "blocked",
            ManagerState::CreateBackup => "create_backup",
        }
    }
}

/// One backup the local agent knows about.
#[derive(Clone, Debug)]
pub(crate) struct BackupRecord {
    pub id: String,
    pub name: String,
    pub date: String,
    pub path: PathBuf,
    pub size: u64,
    pub protected: bool,
    pub database_included: bool,
    /// When Core asked the Supervisor for it (Supervisor personality): the file name's date.
    pub request_date: Option<String>,
    /// The HA instance that made it, when not this one (a backup from another instance on a shared
    /// network storage, or uploaded).
    pub instance_id: Option<String>,
}

pub(crate) struct Inner {
    pub token: String,
    pub next_conn: u64,
    pub conns: HashMap<u64, ConnEntry>,
    pub state: ManagerState,
    pub last_event: Value,
    pub last_action_event: Value,
    pub backups: Vec<BackupRecord>,
    pub notifications: Vec<Value>,
    pub fired: Vec<Value>,
    pub received: Vec<Received>,
    pub faults: Faults,
    pub job: Option<tokio::task::JoinHandle<()>>,
    pub job_path: Option<PathBuf>,
    /// Supervisor jobs: job id → the backup id once the job is done.
    pub jobs: HashMap<String, Option<String>>,
    pub downloads: u64,
    pub range_downloads: u64,
    event_entity: Value,
    sensor_entity: Value,
}

pub(crate) struct Shared {
    pub version: SimVersion,
    pub backup_dir: PathBuf,
    pub payload_bytes: u64,
    pub database: Option<Arc<Vec<u8>>>,
    pub stage_duration: Duration,
    pub user_id: String,
    pub instance_id: String,
    /// Wakes held-back commands when the answer delay changes.
    pub delay_changed: tokio::sync::Notify,
    /// Lets a hung backup finish.
    pub release_hang: tokio::sync::Notify,
    inner: Mutex<Inner>,
}

/// How a backup ended, for callers that block on it.
pub(crate) type JobOutcome = Result<BackupRecord, String>;

pub(crate) struct JobRequest {
    pub name: String,
    pub include_database: bool,
    pub password: Option<String>,
    /// Sent to this connection among the first stage's messages (the `backup/generate` result).
    pub early_reply: Option<(u64, Value)>,
}

pub(crate) enum StartError {
    Busy(&'static str),
}

impl Shared {
    pub fn new(opts: &super::SimOptions) -> Arc<Shared> {
        let now = Timestamp::now();
        let state = if opts.start_blocked {
            ManagerState::Blocked
        } else {
            ManagerState::Idle
        };
        let inner = Inner {
            token: opts.token.clone(),
            next_conn: 0,
            conns: HashMap::new(),
            state,
            last_event: json!({"manager_state": state.as_str()}),
            last_action_event: Value::Null,
            backups: Vec::new(),
            notifications: Vec::new(),
            fired: Vec::new(),
            received: Vec::new(),
            faults: Faults::default(),
            job: None,
            job_path: None,
            jobs: HashMap::new(),
            downloads: 0,
            range_downloads: 0,
            event_entity: entity_state(
                "event.backup_automatic_backup",
                json!("unknown"),
                json!({"event_types": ["completed", "failed", "in_progress"], "event_type": null, "friendly_name": "Backup Automatic backup"}),
                now,
            ),
            sensor_entity: entity_state(
                "sensor.backup_backup_manager_state",
                json!(state.as_str()),
                sensor_attributes(),
                now,
            ),
        };
        let shared = Arc::new(Shared {
            version: opts.version,
            backup_dir: opts.backup_dir.clone(),
            payload_bytes: opts.payload_bytes,
            database: opts.database.clone(),
            stage_duration: opts.stage_duration,
            user_id: random_hex(32),
            instance_id: random_hex(32),
            delay_changed: tokio::sync::Notify::new(),
            release_hang: tokio::sync::Notify::new(),
            inner: Mutex::new(inner),
        });
        shared.rescan();
        shared
    }

    /// Locks the state. A panic elsewhere must not take the simulator down with it, so poisoning is
    /// ignored: the state is plain data and stays usable.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ha_version(&self) -> &'static str {
        self.version.ha_version()
    }

    pub fn legacy(&self) -> bool {
        self.version == SimVersion::Legacy
    }

    pub fn supervisor(&self) -> bool {
        self.version == SimVersion::Supervisor
    }

    /// The agent that keeps backups on the HA host.
    pub fn local_agent(&self) -> &'static str {
        if self.supervisor() {
            "hassio.local"
        } else {
            "backup.local"
        }
    }

    /// A fresh context as HA attaches to events and service calls.
    pub fn context(&self, with_user: bool) -> Value {
        json!({
            "id": ulid(),
            "parent_id": null,
            "user_id": if with_user { json!(self.user_id) } else { Value::Null },
        })
    }

    /// Registers a new connection and returns its number.
    pub fn register(&self, tx: mpsc::UnboundedSender<ConnMsg>) -> u64 {
        let mut inner = self.lock();
        inner.next_conn += 1;
        let id = inner.next_conn;
        inner.conns.insert(id, ConnEntry { tx, authed: false });
        id
    }

    pub fn unregister(&self, conn: u64) {
        self.lock().conns.remove(&conn);
    }

    pub fn record(&self, conn: u64, frame: Value) {
        self.lock().received.push(Received { conn, frame });
    }

    /// Sends a batch to every authenticated connection.
    pub fn emit(&self, items: Vec<Item>) {
        let mut inner = self.lock();
        Self::emit_locked(&mut inner, items);
    }

    fn emit_locked(inner: &mut Inner, items: Vec<Item>) {
        if items.is_empty() {
            return;
        }
        for item in &items {
            if let Item::Bus { event, .. } = item {
                inner.fired.push(event.clone());
            }
        }
        let batch = Arc::new(items);
        for entry in inner.conns.values() {
            if entry.authed {
                let _ = entry.tx.send(ConnMsg::Batch(batch.clone()));
            }
        }
    }

    /// Fires a bus event and returns its context.
    pub fn fire(&self, event_type: &str, data: Value, context: Value) -> Value {
        let event = bus_event(event_type, data, context.clone(), Timestamp::now());
        self.emit(vec![Item::Bus {
            event_type: event_type.to_string(),
            event,
        }]);
        context
    }

    /// Sends a message to every connection, authenticated or not.
    pub fn send_all(&self, make: impl Fn() -> ConnMsg) {
        let inner = self.lock();
        for entry in inner.conns.values() {
            let _ = entry.tx.send(make());
        }
    }

    /// Re-reads the backups folder as HA's local agent does when it starts: every file that is a
    /// readable backup is listed, everything else is ignored.
    pub fn rescan(&self) {
        let mut found = Vec::new();
        if let Ok(dir) = std::fs::read_dir(&self.backup_dir) {
            for entry in dir.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("tar") {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let Some(doc) = archive::read_backup_json(&path) else {
                    continue;
                };
                let (Some(id), Some(name), Some(date)) = (
                    doc.get("slug").and_then(Value::as_str),
                    doc.get("name").and_then(Value::as_str),
                    doc.get("date").and_then(Value::as_str),
                ) else {
                    continue;
                };
                found.push(BackupRecord {
                    id: id.to_string(),
                    name: name.to_string(),
                    date: date.to_string(),
                    path,
                    size: meta.len(),
                    protected: doc.get("protected").and_then(Value::as_bool) == Some(true),
                    database_included: doc
                        .pointer("/homeassistant/exclude_database")
                        .and_then(Value::as_bool)
                        != Some(true),
                    request_date: doc
                        .pointer("/extra/supervisor.backup_request_date")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    instance_id: doc
                        .pointer("/extra/instance_id")
                        .and_then(Value::as_str)
                        .filter(|i| *i != self.instance_id)
                        .map(str::to_string),
                });
            }
        }
        found.sort_by(|a, b| a.date.cmp(&b.date));
        self.lock().backups = found;
    }

    /// `blocked` on or off; emits the manager event like HA does when its state changes.
    pub fn set_blocked(&self, blocked: bool) {
        let mut inner = self.lock();
        let target = if blocked {
            ManagerState::Blocked
        } else {
            ManagerState::Idle
        };
        if inner.state == ManagerState::CreateBackup || inner.state == target {
            return;
        }
        let mut items = Vec::new();
        self.manager_transition(&mut inner, target, &mut items);
        let event = json!({"manager_state": target.as_str()});
        inner.last_event = event.clone();
        if !self.legacy() {
            items.push(Item::Manager(event));
        }
        Self::emit_locked(&mut inner, items);
    }

    /// Starts a backup job. The first events go out before this returns, so a reply sent afterwards
    /// by the caller follows them, as in HA.
    pub fn start_backup(
        self: &Arc<Self>,
        req: JobRequest,
    ) -> Result<oneshot::Receiver<JobOutcome>, StartError> {
        self.start_backup_with_id(req, random_hex(8))
    }

    /// [`Shared::start_backup`] with the backup id chosen by the caller (it is the `backup_job_id`).
    pub fn start_backup_with_id(
        self: &Arc<Self>,
        req: JobRequest,
        id: String,
    ) -> Result<oneshot::Receiver<JobOutcome>, StartError> {
        let mut inner = self.lock();
        match inner.state {
            ManagerState::Blocked => return Err(StartError::Busy("blocked")),
            ManagerState::CreateBackup => return Err(StartError::Busy("create_backup")),
            ManagerState::Idle => {}
        }
        let date = Timestamp::now();
        // On a Supervisor install the answer is a job id; the backup gets its own slug.
        let (id, job_id) = if self.supervisor() {
            (random_hex(8), Some(id))
        } else {
            (id, None)
        };
        if let Some(job) = &job_id {
            inner.jobs.insert(job.clone(), None);
        }
        let file_name = if self.legacy() {
            format!("{id}.tar")
        } else {
            archive::current_file_name(&req.name, date)
        };
        let path = self.backup_dir.join(file_name);
        let fail = inner.faults.fail_next.take();
        let hang = std::mem::take(&mut inner.faults.hang_next);
        let corrupt = inner.faults.corrupt_next.take();

        let mut first = Vec::new();
        self.backup_event(&mut inner, "in_progress", None, None, &mut first, true);
        Self::emit_locked(&mut inner, first);
        let mut second = Vec::new();
        if let Some((conn, msg)) = req.early_reply.clone() {
            second.push(Item::Direct { conn, msg });
        }
        if self.supervisor() {
            self.backup_event(
                &mut inner,
                "in_progress",
                Some("addon_repositories"),
                None,
                &mut second,
                false,
            );
        }
        self.backup_event(
            &mut inner,
            "in_progress",
            Some("home_assistant"),
            None,
            &mut second,
            false,
        );
        Self::emit_locked(&mut inner, second);

        let (done_tx, done_rx) = oneshot::channel();
        let job = Job {
            shared: self.clone(),
            id,
            job_id,
            date,
            path: path.clone(),
            req,
            fail,
            hang,
            corrupt,
        };
        inner.job_path = Some(path);
        inner.job = Some(tokio::spawn(async move {
            let outcome = job.run().await;
            let _ = done_tx.send(outcome);
        }));
        Ok(done_rx)
    }

    /// Stops a running job (server restart): the partial file stays, as after a real crash, and the
    /// manager is idle again.
    pub fn abort_job(&self) {
        let mut inner = self.lock();
        if let Some(job) = inner.job.take() {
            job.abort();
        }
        inner.job_path = None;
        if inner.state == ManagerState::CreateBackup {
            inner.state = ManagerState::Idle;
            inner.last_event = json!({"manager_state": "idle"});
        }
    }

    /// Records the manager state change and the matching `sensor` state change (current HA only).
    fn manager_transition(&self, inner: &mut Inner, to: ManagerState, items: &mut Vec<Item>) {
        inner.state = to;
        if self.legacy() {
            return;
        }
        let now = Timestamp::now();
        let ctx = self.context(false);
        let new = entity_state_ctx(
            "sensor.backup_backup_manager_state",
            json!(to.as_str()),
            sensor_attributes(),
            now,
            ctx.clone(),
        );
        let old = std::mem::replace(&mut inner.sensor_entity, new.clone());
        items.push(state_changed(
            "sensor.backup_backup_manager_state",
            old,
            new,
            ctx,
            now,
        ));
    }

    /// A `create_backup` manager event with a state (not a progress event), plus the matching
    /// `event.backup_automatic_backup` state change. `enter` also moves the manager to `create_backup`.
    fn backup_event(
        &self,
        inner: &mut Inner,
        state: &str,
        stage: Option<&str>,
        reason: Option<&str>,
        items: &mut Vec<Item>,
        enter: bool,
    ) {
        if !self.legacy() {
            let now = Timestamp::now();
            let ctx = self.context(false);
            let attributes = json!({
                "event_types": ["completed", "failed", "in_progress"],
                "event_type": state,
                "backup_stage": stage,
                "failed_reason": reason,
                "friendly_name": "Backup Automatic backup",
            });
            let millis = now.strftime("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string();
            let new = entity_state_ctx(
                "event.backup_automatic_backup",
                json!(millis),
                attributes,
                now,
                ctx.clone(),
            );
            let old = std::mem::replace(&mut inner.event_entity, new.clone());
            items.push(state_changed(
                "event.backup_automatic_backup",
                old,
                new,
                ctx,
                now,
            ));
        }
        if enter {
            self.manager_transition(inner, ManagerState::CreateBackup, items);
        } else {
            inner.state = ManagerState::CreateBackup;
        }
        let event = json!({"manager_state": "create_backup", "reason": reason, "stage": stage, "state": state});
        inner.last_event = event.clone();
        inner.last_action_event = event.clone();
        if !self.legacy() {
            items.push(Item::Manager(event));
        }
    }

    fn progress_event(&self, inner: &mut Inner, uploaded: u64, total: u64, items: &mut Vec<Item>) {
        let event = json!({"manager_state": "create_backup", "agent_id": self.local_agent(), "uploaded_bytes": uploaded, "total_bytes": total});
        inner.last_event = event.clone();
        inner.last_action_event = event.clone();
        if !self.legacy() {
            items.push(Item::Manager(event));
        }
    }

    fn finish(&self, inner: &mut Inner, items: &mut Vec<Item>) {
        self.manager_transition(inner, ManagerState::Idle, items);
        let event = json!({"manager_state": "idle"});
        inner.last_event = event.clone();
        if !self.legacy() {
            items.push(Item::Manager(event));
        }
        inner.job = None;
        inner.job_path = None;
    }

    /// A backup as `backup/info` lists it.
    pub fn backup_value(&self, b: &BackupRecord) -> Value {
        if self.legacy() {
            let mb = (b.size as f64 / 1_048_576.0 * 100.0).round() / 100.0;
            return json!({"slug": b.id, "name": b.name, "date": b.date, "path": b.path.to_string_lossy(), "size": mb});
        }
        let instance = b.instance_id.as_deref().unwrap_or(&self.instance_id);
        let mut extra = json!({"instance_id": instance, "with_automatic_settings": false});
        if let Some(d) = &b.request_date {
            extra["supervisor.backup_request_date"] = json!(d);
        }
        let (addons, folders) = if self.supervisor() {
            (
                json!([{"name": "Terminal & SSH", "slug": "core_ssh", "version": "9.16.0"}]),
                json!(["share"]),
            )
        } else {
            (json!([]), json!([]))
        };
        json!({
            "addons": addons,
            "backup_id": b.id,
            "date": b.date,
            "database_included": b.database_included,
            "extra_metadata": extra,
            "folders": folders,
            "homeassistant_included": true,
            "homeassistant_version": self.ha_version(),
            "name": b.name,
            "agents": {self.local_agent(): {"protected": b.protected, "size": b.size}},
            "failed_addons": [],
            "failed_agent_ids": [],
            "failed_folders": [],
            "with_automatic_settings": false,
        })
    }

    pub fn info(&self) -> Value {
        let inner = self.lock();
        let backups: Vec<Value> = inner.backups.iter().map(|b| self.backup_value(b)).collect();
        if self.legacy() {
            return json!({"backups": backups, "backing_up": inner.job.is_some()});
        }
        json!({
            "agent_errors": {},
            "agent_error_translations": {},
            "backups": backups,
            "last_attempted_automatic_backup": null,
            "last_completed_automatic_backup": null,
            "last_action_event": inner.last_action_event,
            "next_automatic_backup": null,
            "next_automatic_backup_additional": false,
            "state": inner.state.as_str(),
        })
    }

    /// A backup made outside Core (an add-on update, the Supervisor CLI): `<slug>.tar`, listed at once.
    pub fn add_foreign_backup(&self, name: &str) -> std::io::Result<String> {
        self.add_backup(name, Timestamp::now(), None)
    }

    /// A backup with this name and date, made by this instance or by `instance_id`; `<slug>.tar`,
    /// listed at once.
    pub fn add_backup(
        &self,
        name: &str,
        date: Timestamp,
        instance_id: Option<&str>,
    ) -> std::io::Result<String> {
        let slug = random_hex(8);
        let built = archive::build(&ArchiveSpec {
            slug: &slug,
            name,
            date,
            ha_version: self.ha_version(),
            legacy: self.legacy(),
            include_database: true,
            password: None,
            instance_id: instance_id.unwrap_or(&self.instance_id),
            payload_bytes: 0,
            database: self.database.as_deref().map(Vec::as_slice),
            supervisor: self.supervisor(),
            request_date: None,
        })?;
        let path = self.backup_dir.join(format!("{slug}.tar"));
        let mut file = archive::create_file(&path)?;
        archive::write_chunk(&mut file, &built.bytes)?;
        let record = BackupRecord {
            id: slug.clone(),
            name: name.to_string(),
            date: archive::iso_micros(date),
            path,
            size: built.bytes.len() as u64,
            protected: false,
            database_included: true,
            request_date: None,
            instance_id: instance_id.map(str::to_string),
        };
        let mut inner = self.lock();
        inner.backups.push(record);
        inner.backups.sort_by(|a, b| a.date.cmp(&b.date));
        Ok(slug)
    }

    /// Removes a backup's file and its entry; an unknown id is not an error.
    pub fn delete_backup(&self, id: &str) {
        let removed: Vec<BackupRecord> = {
            let mut inner = self.lock();
            let (gone, keep) = inner.backups.drain(..).partition(|b| b.id == id);
            inner.backups = keep;
            gone
        };
        for b in removed {
            let _ = std::fs::remove_file(&b.path);
        }
    }
}

struct Job {
    shared: Arc<Shared>,
    id: String,
    /// The Supervisor job making it (Supervisor personality).
    job_id: Option<String>,
    date: Timestamp,
    path: PathBuf,
    req: JobRequest,
    fail: Option<String>,
    hang: bool,
    corrupt: Option<Corruption>,
}

/// Chunks the archive is written in during the `home_assistant` stage.
const WRITE_CHUNKS: u32 = 8;

impl Job {
    async fn run(self) -> JobOutcome {
        let shared = self.shared.clone();
        let name = self.req.name.clone();
        let password = self.req.password.clone();
        let spec_id = self.id.clone();
        let date = self.date;
        let include_database = self.req.include_database;
        let payload = shared.payload_bytes;
        let built = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                archive::build(&ArchiveSpec {
                    slug: &spec_id,
                    name: &name,
                    date,
                    ha_version: shared.ha_version(),
                    legacy: shared.legacy(),
                    include_database,
                    password: password.as_deref(),
                    instance_id: &shared.instance_id,
                    payload_bytes: payload,
                    database: shared.database.as_deref().map(Vec::as_slice),
                    supervisor: shared.supervisor(),
                    request_date: shared.supervisor().then_some(date),
                })
            })
            .await
        };
        let (bytes, inner_middle) = match built {
            Ok(Ok(built)) => (built.bytes, built.inner_middle),
            Ok(Err(e)) => return self.failed(format!("could not build the archive: {e}")),
            Err(e) => return self.failed(format!("archive builder stopped: {e}")),
        };
        if let Err(e) = self.write_progressively(&bytes).await {
            let reason = format!(
                "could not write {}: {e}; check that the backups folder exists and is writable",
                self.path.display()
            );
            return self.failed(reason);
        }
        if let Some(reason) = self.fail.clone() {
            return self.failed(reason);
        }
        if self.hang {
            shared.release_hang.notified().await;
        }
        let size = bytes.len() as u64;
        drop(bytes);
        if let Some(corruption) = self.corrupt {
            // Damage the file before HA reports completion, so no reader ever sees it intact.
            let _ = corrupt(&self.path, corruption, size, inner_middle);
        }
        let supervisor = shared.supervisor();
        let record = BackupRecord {
            id: self.id.clone(),
            name: self.req.name.clone(),
            date: archive::iso_micros(archive::supervisor_date(self.date, supervisor)),
            path: self.path.clone(),
            size,
            protected: self.req.password.is_some(),
            database_included: self.req.include_database,
            request_date: supervisor.then(|| archive::iso_micros(self.date)),
            instance_id: None,
        };
        let mut inner = shared.lock();
        let mut items = Vec::new();
        if supervisor {
            for stage in [
                "addons",
                "folders",
                "finishing_file",
                "await_addon_restarts",
            ] {
                shared.backup_event(
                    &mut inner,
                    "in_progress",
                    Some(stage),
                    None,
                    &mut items,
                    false,
                );
            }
        }
        shared.backup_event(
            &mut inner,
            "in_progress",
            Some("upload_to_agents"),
            None,
            &mut items,
            false,
        );
        shared.progress_event(&mut inner, 0, size, &mut items);
        shared.progress_event(&mut inner, size, size, &mut items);
        shared.backup_event(
            &mut inner,
            "in_progress",
            Some("cleaning_up"),
            None,
            &mut items,
            false,
        );
        Shared::emit_locked(&mut inner, items);
        if !std::mem::take(&mut inner.faults.unlist_next) {
            inner.backups.push(record.clone());
        }
        if let Some(job) = &self.job_id {
            inner.jobs.insert(job.clone(), Some(self.id.clone()));
        }
        let mut items = Vec::new();
        shared.backup_event(&mut inner, "completed", None, None, &mut items, false);
        shared.finish(&mut inner, &mut items);
        Shared::emit_locked(&mut inner, items);
        Ok(record)
    }

    async fn write_progressively(&self, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path.clone();
        let mut file = tokio::task::spawn_blocking(move || archive::create_file(&path))
            .await
            .map_err(std::io::Error::other)??;
        let chunk = bytes.len().div_ceil(WRITE_CHUNKS as usize).max(1);
        let pause = self.shared.stage_duration / WRITE_CHUNKS;
        for part in bytes.chunks(chunk) {
            let part = part.to_vec();
            file = tokio::task::spawn_blocking(move || {
                archive::write_chunk(&mut file, &part).map(|()| file)
            })
            .await
            .map_err(std::io::Error::other)??;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    fn failed(self, reason: String) -> JobOutcome {
        let _ = std::fs::remove_file(&self.path);
        // HA reports every Supervisor-side failure with this one reason.
        let reason = if self.shared.supervisor() {
            "upload_failed".to_string()
        } else {
            reason
        };
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        let mut items = Vec::new();
        shared.backup_event(&mut inner, "failed", None, Some(&reason), &mut items, false);
        shared.finish(&mut inner, &mut items);
        Shared::emit_locked(&mut inner, items);
        Err(reason)
    }
}

fn corrupt(path: &Path, how: Corruption, size: u64, inner_middle: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    match how {
        Corruption::Truncate => file.set_len(size / 2),
        Corruption::FlipByte => {
            let mut byte = [0u8; 1];
            file.seek(SeekFrom::Start(inner_middle))?;
            file.read_exact(&mut byte)?;
            file.seek(SeekFrom::Start(inner_middle))?;
            file.write_all(&[byte[0] ^ 0xff])?;
            file.flush()
        }
    }
}

/// `{"event_type","data","origin","time_fired","context"}` as HA puts on its bus.
pub(crate) fn bus_event(event_type: &str, data: Value, context: Value, at: Timestamp) -> Value {
    json!({
        "event_type": event_type,
        "data": data,
        "origin": "LOCAL",
        "time_fired": archive::iso_micros(at),
        "context": context,
    })
}

fn state_changed(entity_id: &str, old: Value, new: Value, ctx: Value, at: Timestamp) -> Item {
    Item::Bus {
        event_type: "state_changed".into(),
        event: bus_event(
            "state_changed",
            json!({"entity_id": entity_id, "old_state": old, "new_state": new}),
            ctx,
            at,
        ),
    }
}

fn sensor_attributes() -> Value {
    json!({
        "options": ["idle", "create_backup", "blocked", "receive_backup", "restore_backup"],
        "device_class": "enum",
        "friendly_name": "Backup Backup Manager state",
    })
}

fn entity_state(entity_id: &str, state: Value, attributes: Value, at: Timestamp) -> Value {
    let ctx = json!({"id": ulid(), "parent_id": null, "user_id": null});
    entity_state_ctx(entity_id, state, attributes, at, ctx)
}

fn entity_state_ctx(
    entity_id: &str,
    state: Value,
    attributes: Value,
    at: Timestamp,
    ctx: Value,
) -> Value {
    let t = archive::iso_micros(at);
    json!({
        "entity_id": entity_id,
        "state": state,
        "attributes": attributes,
        "last_changed": t,
        "last_reported": t,
        "last_updated": t,
        "context": ctx,
    })
}

pub(crate) fn random_hex(len: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    (0..len)
        .map(|_| HEX[fastrand::usize(..HEX.len())] as char)
        .collect()
}

/// A ULID-looking id (48-bit millisecond time + 80 random bits, Crockford base32), as HA's contexts use.
pub(crate) fn ulid() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let millis = u128::try_from(Timestamp::now().as_millisecond()).unwrap_or(0) & ((1 << 48) - 1);
    let value = (millis << 80) | (fastrand::u128(..) & ((1u128 << 80) - 1));
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

//! One WebSocket connection: the auth handshake, then commands in, results and events out.
//!
//! Every client frame is untrusted: whatever arrives, the connection answers like HA would or closes;
//! it never panics. All outgoing messages pass through the connection's own queue, so results and
//! events leave in the order they were produced.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::state::{ConnMsg, Item, JobRequest, Shared, StartError};

/// HA refuses incoming frames over 4 MiB.
const MAX_INCOMING: usize = 4 * 1024 * 1024;
/// HA drops a connection that has not authenticated within 10 s.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

#[derive(Clone, Debug)]
enum Sub {
    Events(Option<String>),
    Backup,
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    tx: mpsc::UnboundedSender<ConnMsg>,
    delay_tx: mpsc::UnboundedSender<(Instant, Value)>,
    /// Commands held back by the answer delay and not yet handled; later ones queue behind them.
    held: usize,
    last_id: u64,
    coalesce: bool,
    subs: Vec<(u64, Sub)>,
}

enum Flow {
    Continue,
    Close,
    Drop,
}

/// Removes the connection from the shared table however the task ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    #[allow(clippy::result_large_err)] // the signature is tungstenite's
    fn only_websocket_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        if req.uri().path() == "/api/websocket" {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some("404: Not Found".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            Err(err)
        }
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_INCOMING))
        .max_frame_size(Some(MAX_INCOMING));
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, only_websocket_path, Some(config))
            .await
    else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = shared.register(tx.clone());
    let _registration = Registration {
        shared: shared.clone(),
        id,
    };
    let (delay_tx, delay_rx) = mpsc::unbounded_channel();
    let delayer = tokio::spawn(delay_commands(shared.clone(), delay_rx, tx.clone()));
    let mut conn = Conn {
        shared,
        id,
        tx,
        delay_tx,
        held: 0,
        last_id: 0,
        coalesce: false,
        subs: Vec::new(),
    };
    let flow = match conn.authenticate(&mut ws, &mut rx).await {
        Flow::Continue => conn.run(&mut ws, &mut rx).await,
        other => other,
    };
    delayer.abort();
    if let Flow::Close = flow {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        // Let the client's close reply arrive so the socket shuts down cleanly.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// Holds each command back by the configured answer delay, in arrival order.
async fn delay_commands(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(Instant, Value)>,
    tx: mpsc::UnboundedSender<ConnMsg>,
) {
    while let Some((at, msg)) = rx.recv().await {
        loop {
            // Registered before reading the delay, so a change in between is not missed.
            let changed = shared.delay_changed.notified();
            let delay = shared.lock().faults.answer_delay;
            tokio::select! {
                () = tokio::time::sleep_until(at + delay) => break,
                () = changed => {}
            }
        }
        if tx.send(ConnMsg::Delayed(msg)).is_err() {
            return;
        }
    }
}

async fn send_text(ws: &mut Ws, text: String) -> bool {
    ws.send(Message::text(text)).await.is_ok()
}

impl Conn {
    fn legacy(&self) -> bool {
        self.shared.legacy()
    }

    async fn authenticate(
        &mut self,
        ws: &mut Ws,
        rx: &mut mpsc::UnboundedReceiver<ConnMsg>,
    ) -> Flow {
        let hello = json!({"type": "auth_required", "ha_version": self.shared.ha_version()});
        if !send_text(ws, hello.to_string()).await {
            return Flow::Drop;
        }
        let deadline = tokio::time::sleep(AUTH_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Flow::Close,
                msg = rx.recv() => match msg {
                    Some(ConnMsg::Drop) | None => return Flow::Drop,
                    Some(ConnMsg::Close) => return Flow::Close,
                    Some(_) => {}
                },
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t.to_string(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Flow::Drop,
                        Some(Ok(Message::Binary(_))) => return Flow::Close,
                    };
                    return self.check_auth(ws, &text).await;
                }
            }
        }
    }

    async fn check_auth(&mut self, ws: &mut Ws, text: &str) -> Flow {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            self.shared.record(self.id, Value::String(text.to_string()));
            return Flow::Close;
        };
        let mut recorded = msg.clone();
        if let Some(token) = recorded.get_mut("access_token") {
            *token = json!("<redacted>");
        }
        self.shared.record(self.id, recorded);
        let problem = auth_format_problem(&msg, self.legacy());
        let answer = match problem {
            Some(p) => {
                json!({"type": "auth_invalid", "message": format!("Auth message incorrectly formatted: {p}")})
            }
            None => {
                let offered = msg.get("access_token").and_then(Value::as_str);
                let ok = {
                    let mut inner = self.shared.lock();
                    let ok = offered.is_some_and(|t| t == inner.token);
                    if ok && let Some(entry) = inner.conns.get_mut(&self.id) {
                        entry.authed = true;
                    }
                    ok
                };
                if ok {
                    let ok = json!({"type": "auth_ok", "ha_version": self.shared.ha_version()});
                    return if send_text(ws, ok.to_string()).await {
                        Flow::Continue
                    } else {
                        Flow::Drop
                    };
                }
                json!({"type": "auth_invalid", "message": "Invalid access token or password"})
            }
        };
        let _ = send_text(ws, answer.to_string()).await;
        Flow::Close
    }

    async fn run(&mut self, ws: &mut Ws, rx: &mut mpsc::UnboundedReceiver<ConnMsg>) -> Flow {
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return Flow::Drop };
                    match msg {
                        ConnMsg::Batch(items) => {
                            let out = self.render(&items);
                            if !self.write(ws, out).await {
                                return Flow::Drop;
                            }
                        }
                        ConnMsg::Raw(text) => {
                            if !send_text(ws, text).await {
                                return Flow::Drop;
                            }
                        }
                        ConnMsg::Delayed(msg) => {
                            self.held = self.held.saturating_sub(1);
                            self.process(msg);
                        }
                        ConnMsg::Close => return Flow::Close,
                        ConnMsg::Drop => return Flow::Drop,
                    }
                }
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t.to_string(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Flow::Drop,
                        // HA's server only takes text frames and closes on anything else.
                        Some(Ok(Message::Binary(_))) => return Flow::Close,
                    };
                    let Ok(msg) = serde_json::from_str::<Value>(&text) else {
                        // HA closes the connection on a frame that is not JSON, without an error message.
                        self.shared.record(self.id, Value::String(text));
                        return Flow::Close;
                    };
                    self.shared.record(self.id, msg.clone());
                    if self.held == 0 && self.shared.lock().faults.answer_delay.is_zero() {
                        self.process(msg);
                    } else if self.delay_tx.send((Instant::now(), msg)).is_ok() {
                        self.held += 1;
                    }
                }
            }
        }
    }

    /// Turns a batch into the messages this connection should see, through its subscriptions.
    fn render(&self, items: &[Item]) -> Vec<Value> {
        let mut out = Vec::new();
        for item in items {
            match item {
                Item::Direct { conn, msg } if *conn == self.id => out.push(msg.clone()),
                Item::Direct { .. } => {}
                Item::Bus { event_type, event } => {
                    for (sub_id, sub) in &self.subs {
                        if let Sub::Events(filter) = sub
                            && filter.as_ref().is_none_or(|f| f == event_type)
                        {
                            out.push(json!({"type": "event", "event": event, "id": sub_id}));
                        }
                    }
                }
                Item::Manager(event) => {
                    for (sub_id, sub) in &self.subs {
                        if let Sub::Backup = sub {
                            out.push(json!({"id": sub_id, "type": "event", "event": event}));
                        }
                    }
                }
            }
        }
        out
    }

    async fn write(&self, ws: &mut Ws, out: Vec<Value>) -> bool {
        if out.is_empty() {
            return true;
        }
        if self.coalesce && out.len() > 1 {
            return send_text(ws, Value::Array(out).to_string()).await;
        }
        for msg in out {
            if !send_text(ws, msg.to_string()).await {
                return false;
            }
        }
        true
    }

    fn send(&self, msgs: Vec<Value>) {
        let items = msgs
            .into_iter()
            .map(|msg| Item::Direct { conn: self.id, msg })
            .collect();
        let _ = self.tx.send(ConnMsg::Batch(Arc::new(items)));
    }

    fn result(&self, id: u64, result: Value) {
        self.send(vec![result_msg(id, result)]);
    }

    fn error(&self, id: Value, code: &str, message: &str) {
        self.send(vec![error_msg(id, code, message)]);
    }

    fn process(&mut self, msg: Value) {
        match msg {
            Value::Array(msgs) => {
                for m in msgs {
                    self.process_one(m);
                }
            }
            other => self.process_one(other),
        }
    }

    fn process_one(&mut self, msg: Value) {
        let Value::Object(obj) = msg else {
            self.error(json!(0), "invalid_format", "Message incorrectly formatted.");
            return;
        };
        let raw_id = obj.get("id").cloned().unwrap_or(Value::Null);
        let (Some(id), Some(kind)) = (
            raw_id.as_u64().filter(|_| !raw_id.is_boolean()),
            obj.get("type").and_then(Value::as_str),
        ) else {
            self.error(raw_id, "invalid_format", "Message incorrectly formatted.");
            return;
        };
        if id <= self.last_id {
            self.error(json!(id), "id_reuse", "Identifier values have to increase.");
            return;
        }
        self.last_id = id;
        let kind = kind.to_string();
        if let Err(message) = self.dispatch(id, &kind, &obj) {
            self.error(json!(id), "invalid_format", &message);
        }
    }

    /// Runs one command. `Err` is an `invalid_format` message.
    fn dispatch(&mut self, id: u64, kind: &str, obj: &Map<String, Value>) -> Result<(), String> {
        let legacy = self.legacy();
        let schema = Schema { obj, legacy };
        match (kind, legacy) {
            ("ping", _) => {
                schema.check(&[], &[])?;
                self.send(vec![json!({"id": id, "type": "pong"})]);
            }
            ("supported_features", _) => {
                schema.check(&[("features", Kind::Object)], &[])?;
                self.coalesce = obj
                    .get("features")
                    .and_then(|f| f.get("coalesce_messages"))
                    .is_some_and(|v| v.as_u64() == Some(1) || v == &json!(true));
                self.result(id, Value::Null);
            }
            ("subscribe_events", _) => {
                schema.check(&[], &[("event_type", Kind::Str)])?;
                let filter = obj
                    .get("event_type")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.subs.push((id, Sub::Events(filter)));
                self.result(id, Value::Null);
            }
            ("unsubscribe_events", _) => {
                schema.check(&[("subscription", Kind::Int)], &[])?;
                let sub = obj.get("subscription").and_then(Value::as_u64);
                let before = self.subs.len();
                self.subs.retain(|(s, _)| Some(*s) != sub);
                if self.subs.len() == before {
                    self.error(json!(id), "not_found", "Subscription not found.");
                } else {
                    self.result(id, Value::Null);
                }
            }
            ("fire_event", _) => {
                schema.check(
                    &[("event_type", Kind::Str)],
                    &[("event_data", Kind::Object)],
                )?;
                let event_type = obj.get("event_type").and_then(Value::as_str).unwrap_or("");
                let data = obj.get("event_data").cloned().unwrap_or_else(|| json!({}));
                let ctx = self.shared.context(true);
                self.shared.fire(event_type, data, ctx.clone());
                self.result(id, json!({"context": ctx}));
            }
            ("call_service", _) => {
                schema.check(
                    &[("domain", Kind::Str), ("service", Kind::Str)],
                    &[
                        ("service_data", Kind::Object),
                        ("target", Kind::Object),
                        ("return_response", Kind::Bool),
                    ],
                )?;
                self.call_service(id, obj)?;
            }
            ("backup/info", _) => {
                schema.check(&[], &[])?;
                let info = self.shared.info();
                self.result(id, info);
            }
            ("backup/generate", true) => {
                schema.check(&[], &[])?;
                self.legacy_generate(id);
            }
            ("backup/remove", true) => {
                schema.check(&[("slug", Kind::Str)], &[])?;
                let slug = obj.get("slug").and_then(Value::as_str).unwrap_or("");
                self.shared.delete_backup(slug);
                self.result(id, Value::Null);
            }
            ("backup/subscribe_events", false) => {
                schema.check(&[], &[])?;
                self.subs.push((id, Sub::Backup));
                let current = self.shared.lock().last_event.clone();
                self.send(vec![
                    json!({"id": id, "type": "event", "event": current}),
                    result_msg(id, Value::Null),
                ]);
            }
            ("backup/generate", false) => {
                schema.check(
                    &[("agent_ids", Kind::StrList)],
                    &[
                        ("name", Kind::Str),
                        ("include_database", Kind::Bool),
                        ("password", Kind::Str),
                        ("include_homeassistant", Kind::Bool),
                        ("include_addons", Kind::StrList),
                        ("include_all_addons", Kind::Bool),
                        ("include_folders", Kind::StrList),
                        ("extra_metadata", Kind::Object),
                    ],
                )?;
                self.generate(id, obj);
            }
            ("backup/details", false) => {
                schema.check(&[("backup_id", Kind::Str)], &[])?;
                let wanted = obj.get("backup_id").and_then(Value::as_str).unwrap_or("");
                let backup = {
                    let inner = self.shared.lock();
                    inner
                        .backups
                        .iter()
                        .find(|b| b.id == wanted)
                        .map(|b| self.shared.backup_value(b))
                        .unwrap_or(Value::Null)
                };
                self.result(
                    id,
                    json!({"agent_errors": {}, "agent_error_translations": {}, "backup": backup}),
                );
            }
            ("backup/delete", false) => {
                schema.check(&[("backup_id", Kind::Str)], &[])?;
                let wanted = obj.get("backup_id").and_then(Value::as_str).unwrap_or("");
                self.shared.delete_backup(wanted);
                self.result(
                    id,
                    json!({"agent_errors": {}, "agent_error_translations": {}}),
                );
            }
            ("backup/agents/info", false) => {
                schema.check(&[], &[])?;
                self.result(
                    id,
                    json!({"agents": [{"agent_id": self.shared.local_agent(), "name": "local"}]}),
                );
            }
            ("supervisor/api", false) if self.shared.supervisor() => {
                schema.check(
                    &[("endpoint", Kind::Str), ("method", Kind::Str)],
                    &[("data", Kind::Object), ("timeout", Kind::Int)],
                )?;
                self.supervisor_api(id, obj);
            }
            ("backup/config/info", false) => {
                schema.check(&[], &[])?;
                self.result(id, config_info());
            }
            _ => self.error(json!(id), "unknown_command", "Unknown command."),
        }
        Ok(())
    }

    fn generate(&mut self, id: u64, obj: &Map<String, Value>) {
        let agents: Vec<&str> = obj
            .get("agent_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !agents.contains(&self.shared.local_agent()) {
            let listed = agents
                .iter()
                .map(|a| py_repr(&json!(a)))
                .collect::<Vec<_>>()
                .join(", ");
            self.error(
                json!(id),
                "home_assistant_error",
                &format!("At least one available backup agent must be selected, got [{listed}]"),
            );
            return;
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("Custom backup {}", self.shared.ha_version()));
        let req = JobRequest {
            name,
            include_database: obj
                .get("include_database")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            password: obj
                .get("password")
                .and_then(Value::as_str)
                .map(str::to_string),
            early_reply: None,
        };
        if std::mem::take(&mut self.shared.lock().faults.refuse_generate) {
            // Another backup started between the client's idle check and its request.
            self.error(
                json!(id),
                "home_assistant_error",
                "Backup manager busy: create_backup",
            );
            return;
        }
        if std::mem::take(&mut self.shared.lock().faults.drop_on_generate) {
            // The backup starts, but the connection goes before the answer is sent.
            let _ = self.shared.start_backup_with_id(
                req,
                super::state::random_hex(if self.shared.supervisor() { 32 } else { 8 }),
            );
            let _ = self.tx.send(ConnMsg::Drop);
            return;
        }
        self.start_and_reply_early(id, req);
    }

    /// `backup/generate` answers when the backup starts: after the first event, with the second.
    fn start_and_reply_early(&self, id: u64, mut req: JobRequest) {
        // The job id is only known once the job exists, so the reply is built from a reserved id.
        // Core: the job id is the backup id. Supervisor: a 32-hex job id, the backup id comes later.
        let job_id = super::state::random_hex(if self.shared.supervisor() { 32 } else { 8 });
        req.early_reply = Some((
            self.id,
            result_msg(id, json!({"backup_job_id": job_id.clone()})),
        ));
        match self.shared.start_backup_with_id(req, job_id) {
            Ok(_) => {}
            Err(StartError::Busy(why)) => self.error(
                json!(id),
                "home_assistant_error",
                &format!("Backup manager busy: {why}"),
            ),
        }
    }

    /// The part of the Supervisor's API that HA's `supervisor/api` passes through and hapull uses:
    /// `GET /jobs/<uuid>`, answered with the job's `data` as HA returns it.
    fn supervisor_api(&self, id: u64, obj: &Map<String, Value>) {
        let endpoint = obj.get("endpoint").and_then(Value::as_str).unwrap_or("");
        let method = obj.get("method").and_then(Value::as_str).unwrap_or("");
        let job = endpoint
            .strip_prefix("/jobs/")
            .filter(|_| method.eq_ignore_ascii_case("get"));
        let (known, answer) = {
            let inner = self.shared.lock();
            (
                job.and_then(|j| inner.jobs.get(j).cloned()),
                inner.faults.job_answer,
            )
        };
        let known = match answer {
            super::JobAnswer::Unreachable => {
                return self.error(
                    json!(id),
                    "home_assistant_error",
                    "Error on Supervisor API: Cannot connect to host 172.30.32.2:80",
                );
            }
            // As after a Supervisor restart: it keeps no jobs.
            super::JobAnswer::UnknownJob => None,
            super::JobAnswer::Reference
            | super::JobAnswer::NoReference
            | super::JobAnswer::Failed => known,
        };
        match (job, known) {
            (Some(job), Some(made)) => {
                let done = made.is_some();
                let reference = match answer {
                    super::JobAnswer::NoReference => None,
                    _ => made,
                };
                self.result(
                    id,
                    json!({
                        "name": "backup_manager_partial_backup",
                        "reference": reference,
                        "uuid": job,
                        "progress": if done { 100 } else { 0 },
                        "stage": if done { Value::Null } else { json!("home_assistant") },
                        "done": done,
                        "errors": if answer == super::JobAnswer::Failed {
                            json!([{"type": "BackupError", "message": "Backup failed", "stage": null}])
                        } else {
                            json!([])
                        },
                        "created": "2026-11-26T09:07:39.253410+00:00",
                        "child_jobs": [],
                        "extra": null,
                    }),
                );
            }
            (Some(job), None) => self.error(
                json!(id),
                "home_assistant_error",
                &format!("No job found with id {job}"),
            ),
            (None, _) => self.error(
                json!(id),
                "home_assistant_error",
                &format!("Supervisor API {method} {endpoint} is not simulated"),
            ),
        }
    }

    fn legacy_generate(&self, id: u64) {
        let req = JobRequest {
            name: format!("Core {}", self.shared.ha_version()),
            include_database: true,
            password: None,
            early_reply: None,
        };
        let done = match self.shared.start_backup(req) {
            Ok(done) => done,
            Err(StartError::Busy(_)) => {
                self.error(
                    json!(id),
                    "home_assistant_error",
                    "Backup already in progress",
                );
                return;
            }
        };
        if std::mem::take(&mut self.shared.lock().faults.drop_on_generate) {
            // The backup goes on; the connection waiting for it does not.
            let _ = self.tx.send(ConnMsg::Drop);
            return;
        }
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let conn = self.id;
        tokio::spawn(async move {
            let msg = match done.await {
                Ok(Ok(record)) => result_msg(id, shared.backup_value(&record)),
                Ok(Err(reason)) => error_msg(json!(id), "home_assistant_error", &reason),
                Err(_) => return,
            };
            let _ = tx.send(ConnMsg::Batch(Arc::new(vec![Item::Direct { conn, msg }])));
        });
    }

    fn call_service(&mut self, id: u64, obj: &Map<String, Value>) -> Result<(), String> {
        let domain = obj.get("domain").and_then(Value::as_str).unwrap_or("");
        let service = obj.get("service").and_then(Value::as_str).unwrap_or("");
        let data = obj
            .get("service_data")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let return_response = obj.get("return_response") == Some(&json!(true));
        let known = matches!(
            (domain, service),
            ("shell_command", "delete_backups")
                | ("backup", "create")
                | ("persistent_notification", "create" | "dismiss")
        );
        if !known {
            let err = json!({
                "code": "not_found",
                "message": format!("Service {domain}.{service} not found."),
                "translation_key": "service_not_found",
                "translation_placeholders": {"domain": domain, "service": service},
                "translation_domain": "homeassistant",
            });
            self.send(vec![
                json!({"id": id, "type": "result", "success": false, "error": err}),
            ]);
            return Ok(());
        }
        if domain == "persistent_notification"
            && service == "create"
            && data.get("message").and_then(Value::as_str).is_none()
        {
            let message = if self.legacy() {
                "required key not provided @ data['message']"
            } else {
                "required key not provided at 'message'"
            };
            return Err(message.to_string());
        }
        if return_response && domain != "shell_command" {
            self.error(
                json!(id),
                "service_validation_error",
                "Validation error: An action which does not return responses can't be called with return_response=True",
            );
            return Ok(());
        }
        let ctx = self.shared.context(true);
        self.shared.fire(
            "call_service",
            json!({"domain": domain, "service": service, "service_data": data}),
            ctx.clone(),
        );
        match (domain, service) {
            ("shell_command", "delete_backups") => {
                delete_files_under(&self.shared.backup_dir);
                let mut result = json!({"context": ctx});
                if return_response && let Some(obj) = result.as_object_mut() {
                    obj.insert(
                        "response".into(),
                        json!({"stdout": "", "stderr": "", "returncode": 0}),
                    );
                }
                self.result(id, result);
            }
            ("persistent_notification", "create") => {
                let notification_id = data
                    .get("notification_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(super::state::ulid);
                let note = json!({
                    "notification_id": notification_id,
                    "title": data.get("title").cloned().unwrap_or(Value::Null),
                    "message": data.get("message").cloned().unwrap_or(Value::Null),
                });
                {
                    let mut inner = self.shared.lock();
                    inner
                        .notifications
                        .retain(|n| n.get("notification_id") != note.get("notification_id"));
                    inner.notifications.push(note);
                }
                self.result(id, json!({"context": ctx}));
            }
            ("persistent_notification", "dismiss") => {
                let wanted = data.get("notification_id").cloned();
                self.shared
                    .lock()
                    .notifications
                    .retain(|n| n.get("notification_id") != wanted.as_ref());
                self.result(id, json!({"context": ctx}));
            }
            _ => self.service_backup_create(id, ctx),
        }
        Ok(())
    }

    /// `backup.create` blocks until the backup is done; events keep flowing meanwhile.
    fn service_backup_create(&self, id: u64, ctx: Value) {
        let version = self.shared.ha_version();
        let name = if self.legacy() {
            format!("Core {version}")
        } else {
            format!("Custom backup {version}")
        };
        let req = JobRequest {
            name,
            include_database: true,
            password: None,
            early_reply: None,
        };
        let done = match self.shared.start_backup(req) {
            Ok(done) => done,
            Err(StartError::Busy(why)) => {
                let message = if self.legacy() {
                    "Backup already in progress".to_string()
                } else {
                    format!("Backup manager busy: {why}")
                };
                self.error(json!(id), "home_assistant_error", &message);
                return;
            }
        };
        let tx = self.tx.clone();
        let conn = self.id;
        tokio::spawn(async move {
            let msg = match done.await {
                Ok(Ok(_)) => result_msg(id, json!({"context": ctx})),
                Ok(Err(reason)) => error_msg(
                    json!(id),
                    "home_assistant_error",
                    &format!("Backup failed: {reason}"),
                ),
                Err(_) => return,
            };
            let _ = tx.send(ConnMsg::Batch(Arc::new(vec![Item::Direct { conn, msg }])));
        });
    }
}

/// The backup guide's `find <dir> -type f -delete`: every regular file below the folder.
fn delete_files_under(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            delete_files_under(&entry.path());
        } else if kind.is_file() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn result_msg(id: u64, result: Value) -> Value {
    json!({"id": id, "type": "result", "success": true, "result": result})
}

fn error_msg(id: Value, code: &str, message: &str) -> Value {
    json!({"id": id, "type": "result", "success": false, "error": {"code": code, "message": message}})
}

fn config_info() -> Value {
    json!({"config": {
        "agents": {},
        "automatic_backups_configured": false,
        "create_backup": {
            "agent_ids": [],
            "include_addons": null,
            "include_all_addons": false,
            "include_database": true,
            "include_folders": null,
            "name": null,
            "password": null,
        },
        "last_attempted_automatic_backup": null,
        "last_completed_automatic_backup": null,
        "last_completed_automatic_backup_size": null,
        "retention": {"copies": null, "days": null},
        "schedule": {"days": [], "recurrence": "never", "time": null},
        "next_automatic_backup": null,
        "next_automatic_backup_additional": false,
    }})
}

/// What an `auth` message lacks, in HA's voluptuous wording; `None` if it is well formed.
fn auth_format_problem(msg: &Value, legacy: bool) -> Option<String> {
    let Some(obj) = msg.as_object() else {
        return Some("expected a dictionary".into());
    };
    let mut problems = Vec::new();
    for (key, value) in obj {
        if !matches!(key.as_str(), "type" | "access_token" | "api_password") {
            problems.push(if legacy {
                format!(
                    "extra keys not allowed @ data['{key}']. Got {}",
                    py_repr(value)
                )
            } else {
                format!("not a valid option at '{key}'. Got {}", py_repr(value))
            });
        }
    }
    let kind = obj.get("type").cloned().unwrap_or(Value::Null);
    if kind != json!("auth") {
        problems.push(if legacy {
            format!(
                "not a valid value for dictionary value @ data['type']. Got {}",
                py_repr(&kind)
            )
        } else {
            format!("not a valid value at 'type'. Got {}", py_repr(&kind))
        });
    }
    if problems.is_empty() {
        None
    } else {
        Some(problems.join("\n"))
    }
}

/// Python's `repr` of a JSON value, as HA's error messages quote the offending value.
fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Object,
    StrList,
}

/// The small part of voluptuous the commands need: required and optional keys with a type, nothing else.
struct Schema<'a> {
    obj: &'a Map<String, Value>,
    legacy: bool,
}

impl Schema<'_> {
    fn at(&self, key: &str) -> String {
        if self.legacy {
            format!("@ data['{key}']")
        } else {
            format!("at '{key}'")
        }
    }

    fn check(&self, required: &[(&str, Kind)], optional: &[(&str, Kind)]) -> Result<(), String> {
        for (key, value) in self.obj {
            if key == "id" || key == "type" {
                continue;
            }
            let Some((_, kind)) = required.iter().chain(optional).find(|(k, _)| k == key) else {
                return Err(format!(
                    "extra keys not allowed {}. Got {}",
                    self.at(key),
                    py_repr(value)
                ));
            };
            let fits = match kind {
                Kind::Str => value.is_string(),
                Kind::Int => value.is_u64() || value.is_i64(),
                Kind::Bool => value.is_boolean(),
                Kind::Object => value.is_object(),
                Kind::StrList => value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string)),
            };
            if !fits {
                let expected = match kind {
                    Kind::Str => "expected str",
                    Kind::Int => "expected int",
                    Kind::Bool => "expected bool",
                    Kind::Object => "expected dict",
                    Kind::StrList => "expected list",
                };
                return Err(format!(
                    "{expected} {}. Got {}",
                    self.at(key),
                    py_repr(value)
                ));
            }
        }
        for (key, _) in required {
            if !self.obj.contains_key(*key) {
                return Err(format!(
                    "required key not provided {}. Got None",
                    self.at(key)
                ));
            }
        }
        Ok(())
    }
}

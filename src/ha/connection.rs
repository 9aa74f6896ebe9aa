//! One WebSocket connection to Home Assistant, and the task that owns it.
//!
//! A single task owns the socket: it reads continuously (Home Assistant drops clients that fall behind),
//! matches results to requests by id, routes events to subscriptions, sends the heartbeat and, when the
//! connection dies, reconnects with capped exponential backoff and restores the subscriptions. Nothing
//! here panics on what Home Assistant sends: a bad message is logged and skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use super::error::{HaError, clip};
use super::frames::{Incoming, decode_frame, parse_result};
use super::{ClientOptions, ConnectionState};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Home Assistant gives a client 10 s to authenticate; waiting a little longer for its answer is enough.
const AUTH_TIMEOUT: Duration = Duration::from_secs(15);
/// Room for a subscriber to fall behind before events are counted as lagged instead of queued.
pub(crate) const SUBSCRIPTION_BUFFER: usize = 4096;

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SubItem {
    /// One event, the `event` member of Home Assistant's event message.
    Event(Value),
    /// The connection was lost and re-established; events may have been missed in between and the
    /// subscription was renewed (for backup events HA resends the current manager state).
    Reconnected,
    /// The subscriber fell behind and this many events were dropped.
    Lagged(u64),
}

pub(crate) enum Command {
    Call {
        frame: Map<String, Value>,
        reply: oneshot::Sender<Result<Value, HaError>>,
    },
    Subscribe {
        frame: Map<String, Value>,
        key: u64,
        events: mpsc::Sender<SubItem>,
        reply: oneshot::Sender<Result<(), HaError>>,
    },
    Unsubscribe {
        key: u64,
    },
}

struct Sub {
    frame: Map<String, Value>,
    events: mpsc::Sender<SubItem>,
    lagged: u64,
    /// The id this subscription has on the current connection.
    conn_id: Option<u64>,
}

impl Sub {
    /// Delivers without ever blocking the reader: a full buffer counts as lag.
    fn deliver(&mut self, item: SubItem) {
        if self.lagged > 0 {
            match self.events.try_send(SubItem::Lagged(self.lagged)) {
                Ok(()) => self.lagged = 0,
                Err(_) => {
                    self.lagged += 1;
                    return;
                }
            }
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(item) {
            self.lagged += 1;
        }
    }
}

enum Pending {
    Call {
        command: String,
        reply: oneshot::Sender<Result<Value, HaError>>,
    },
    Subscribe {
        key: u64,
        reply: Option<oneshot::Sender<Result<(), HaError>>>,
    },
}

/// Connects, authenticates and opts into message coalescing. Returns the socket and HA's version.
pub(crate) async fn establish(opts: &ClientOptions) -> Result<(Ws, String), HaError> {
    let endpoint = opts.endpoint.to_string();
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(opts.max_message_size))
        .max_frame_size(Some(opts.max_message_size));
    let connector = match &opts.tls {
        Some(cfg) => Connector::Rustls(cfg.clone()),
        None => Connector::Plain,
    };
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        opts.endpoint.ws_url(),
        Some(ws_config),
        true,
        Some(connector),
    );
    let (mut ws, _response) = match tokio::time::timeout(opts.request_timeout, connecting).await {
        Err(_) => {
            return Err(HaError::Connect {
                endpoint,
                reason: format!("no connection within {:?}", opts.request_timeout),
            });
        }
        Ok(Err(e)) => return Err(classify_connect_error(&endpoint, e)),
        Ok(Ok(x)) => x,
    };

    let first = read_json(&mut ws, &endpoint).await?;
    let version = match first.get("type").and_then(Value::as_str) {
        Some("auth_required") => first
            .get("ha_version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        _ => {
            return Err(HaError::NotHomeAssistant {
                endpoint,
                reason: format!(
                    "expected auth_required, got {}",
                    clip(&first.to_string(), 200)
                ),
            });
        }
    };
    let auth = json!({"type": "auth", "access_token": opts.token.expose()});
    send_value(&mut ws, &auth).await?;
    let answer = read_json(&mut ws, &endpoint).await?;
    match answer.get("type").and_then(Value::as_str) {
        Some("auth_ok") => {}
        Some("auth_invalid") => {
            let message = answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(HaError::AuthInvalid {
                endpoint,
                message: clip(message, 200),
            });
        }
        _ => {
            return Err(HaError::Protocol(format!(
                "expected auth_ok or auth_invalid, got {}",
                clip(&answer.to_string(), 200)
            )));
        }
    }
    Ok((ws, version))
}

fn classify_connect_error(endpoint: &str, e: tungstenite::Error) -> HaError {
    use tungstenite::Error as E;
    let endpoint = endpoint.to_string();
    match e {
        E::Tls(t) => HaError::Tls {
            endpoint,
            reason: t.to_string(),
        },
        E::Io(io) if io.to_string().contains("CaUsedAsEndEntity") => HaError::Tls {
            endpoint,
            reason: format!(
                "{io} (the server's certificate is marked as a CA: put the CA that signed it in ca_file, or make the self-signed certificate with basicConstraints CA:FALSE)"
            ),
        },
        E::Io(io) => {
            // rustls reports certificate problems through io::Error on the handshake.
            let text = io.to_string();
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
                || text.contains("certificate")
            {
                HaError::Tls {
                    endpoint,
                    reason: text,
                }
            } else {
                HaError::Connect {
                    endpoint,
                    reason: text,
                }
            }
        }
        E::Http(resp) => HaError::NotHomeAssistant {
            endpoint,
            reason: format!("HTTP {} instead of a WebSocket upgrade", resp.status()),
        },
        E::Url(u) => HaError::NotHomeAssistant {
            endpoint,
            reason: u.to_string(),
        },
        other => HaError::Connect {
            endpoint,
            reason: other.to_string(),
        },
    }
}

async fn read_json(ws: &mut Ws, endpoint: &str) -> Result<Value, HaError> {
    let deadline = Instant::now() + AUTH_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| HaError::Timeout {
                command: "authentication".into(),
                after: AUTH_TIMEOUT,
            })?;
        match next {
            None => {
                return Err(HaError::ConnectionLost(format!(
                    "{endpoint} closed the connection during authentication"
                )));
            }
            Some(Err(e)) => return Err(HaError::ConnectionLost(e.to_string())),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| {
                    HaError::Protocol(format!("invalid JSON during authentication: {e}"))
                });
            }
            Some(Ok(Message::Close(_))) => {
                return Err(HaError::ConnectionLost(format!(
                    "{endpoint} closed the connection during authentication"
                )));
            }
            Some(Ok(_)) => continue,
        }
    }
}

async fn send_value(ws: &mut Ws, v: &Value) -> Result<(), HaError> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| HaError::ConnectionLost(e.to_string()))
}

/// The task that owns the connection for the client's whole life.
pub(crate) struct Actor {
    opts: Arc<ClientOptions>,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<ConnectionState>,
    version: watch::Sender<String>,
    subs: HashMap<u64, Sub>,
    next_id: u64,
}

/// Why a connection ended.
enum End {
    Lost(String),
    ClientGone,
}

impl Actor {
    pub(crate) fn new(
        opts: Arc<ClientOptions>,
        commands: mpsc::Receiver<Command>,
        state: watch::Sender<ConnectionState>,
        version: watch::Sender<String>,
    ) -> Actor {
        Actor {
            opts,
            commands,
            state,
            version,
            subs: HashMap::new(),
            next_id: 0,
        }
    }

    pub(crate) async fn run(mut self, mut ws: Ws) {
        loop {
            self.state.send_replace(ConnectionState::Connected);
            let end = self.serve(&mut ws).await;
            let _ = ws.close(None).await;
            let reason = match end {
                End::ClientGone => {
                    self.state.send_replace(ConnectionState::Closed);
                    return;
                }
                End::Lost(reason) => reason,
            };
            warn!(%reason, "connection to Home Assistant lost");
            if !self.opts.reconnect {
                self.state.send_replace(ConnectionState::Closed);
                return;
            }
            self.state
                .send_replace(ConnectionState::Reconnecting { reason });
            match self.reconnect().await {
                Some(new_ws) => {
                    ws = new_ws;
                    // Subscriptions are renewed as the first thing on the new connection (in serve).
                    for sub in self.subs.values_mut() {
                        sub.conn_id = None;
                        sub.deliver(SubItem::Reconnected);
                    }
                }
                None => return,
            }
        }
    }

    /// Reconnects with capped exponential backoff and jitter. Commands arriving meanwhile fail fast
    /// (callers decide whether to wait); a refused token ends the client for good.
    async fn reconnect(&mut self) -> Option<Ws> {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(self.opts.max_reconnect_delay)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let delay = delays.next().unwrap_or(self.opts.max_reconnect_delay);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    cmd = self.commands.recv() => match cmd {
                        None => {
                            self.state.send_replace(ConnectionState::Closed);
                            return None;
                        }
                        Some(cmd) => self.refuse_while_down(cmd),
                    },
                }
            }
            match establish(&self.opts).await {
                Ok((ws, version)) => {
                    info!(ha_version = %version, "reconnected to Home Assistant");
                    self.version.send_replace(version);
                    return Some(ws);
                }
                Err(e) if e.is_transient() => {
                    debug!(error = %e, "reconnect attempt failed");
                    self.state.send_replace(ConnectionState::Reconnecting {
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    warn!(error = %e, "giving up reconnecting: the error is permanent");
                    self.state.send_replace(ConnectionState::Failed {
                        reason: e.to_string(),
                    });
                    return None;
                }
            }
        }
    }

    fn refuse_while_down(&mut self, cmd: Command) {
        let lost =
            || HaError::ConnectionLost("not connected to Home Assistant (reconnecting)".into());
        match cmd {
            Command::Call { reply, .. } => {
                let _ = reply.send(Err(lost()));
            }
            Command::Subscribe {
                frame,
                key,
                events,
                reply,
            } => {
                // Kept: it is sent as soon as the connection is back.
                self.subs.insert(
                    key,
                    Sub {
                        frame,
                        events,
                        lagged: 0,
                        conn_id: None,
                    },
                );
                let _ = reply.send(Ok(()));
            }
            Command::Unsubscribe { key } => {
                self.subs.remove(&key);
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn send_frame(
        &mut self,
        ws: &mut Ws,
        mut frame: Map<String, Value>,
    ) -> Result<u64, String> {
        let id = self.take_id();
        frame.insert("id".into(), Value::from(id));
        let text = Value::Object(frame).to_string();
        ws.send(Message::Text(text.into()))
            .await
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    async fn serve(&mut self, ws: &mut Ws) -> End {
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut routes: HashMap<u64, u64> = HashMap::new(); // connection id -> subscription key
        let mut awaiting_pong: Option<u64> = None;

        let mut features = Map::new();
        features.insert("type".into(), "supported_features".into());
        features.insert("features".into(), json!({"coalesce_messages": 1}));
        match self.send_frame(ws, features).await {
            Ok(id) => {
                let (tx, _rx) = oneshot::channel();
                pending.insert(
                    id,
                    Pending::Call {
                        command: "supported_features".into(),
                        reply: tx,
                    },
                );
            }
            Err(e) => return End::Lost(e),
        }
        let keys: Vec<u64> = self.subs.keys().copied().collect();
        for key in keys {
            let Some(frame) = self.subs.get(&key).map(|s| s.frame.clone()) else {
                continue;
            };
            match self.send_frame(ws, frame).await {
                Ok(id) => {
                    routes.insert(id, key);
                    if let Some(s) = self.subs.get_mut(&key) {
                        s.conn_id = Some(id);
                    }
                    pending.insert(id, Pending::Subscribe { key, reply: None });
                }
                Err(e) => return End::Lost(e),
            }
        }

        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + self.opts.heartbeat_interval,
            self.opts.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                incoming = ws.next() => match incoming {
                    None => return End::Lost("Home Assistant closed the connection".into()),
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    Some(Ok(Message::Text(text))) => {
                        self.dispatch(text.as_str(), &mut pending, &mut routes, &mut awaiting_pong);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("code {}, {}", f.code, clip(f.reason.as_str(), 100)))
                            .unwrap_or_else(|| "no reason".into());
                        return End::Lost(format!("Home Assistant closed the connection ({why})"));
                    }
                    Some(Ok(Message::Binary(b))) => {
                        warn!(bytes = b.len(), "ignoring a binary frame from Home Assistant");
                    }
                    // Pings are answered by the WebSocket layer itself.
                    Some(Ok(_)) => {}
                },
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return End::ClientGone };
                    match cmd {
                        Command::Call { frame, reply } => {
                            let command = frame.get("type").and_then(Value::as_str).unwrap_or("?").to_string();
                            match self.send_frame(ws, frame).await {
                                Ok(id) => { pending.insert(id, Pending::Call { command, reply }); }
                                Err(e) => {
                                    let _ = reply.send(Err(HaError::ConnectionLost(e.clone())));
                                    return End::Lost(e);
                                }
                            }
                        }
                        Command::Subscribe { frame, key, events, reply } => {
                            self.subs.insert(key, Sub { frame: frame.clone(), events, lagged: 0, conn_id: None });
                            match self.send_frame(ws, frame).await {
                                Ok(id) => {
                                    // Routed before the result arrives: HA may send events first.
                                    routes.insert(id, key);
                                    if let Some(s) = self.subs.get_mut(&key) { s.conn_id = Some(id); }
                                    pending.insert(id, Pending::Subscribe { key, reply: Some(reply) });
                                }
                                Err(e) => {
                                    let _ = reply.send(Err(HaError::ConnectionLost(e.clone())));
                                    return End::Lost(e);
                                }
                            }
                        }
                        Command::Unsubscribe { key } => {
                            if let Some(sub) = self.subs.remove(&key)
                                && let Some(conn_id) = sub.conn_id
                            {
                                routes.remove(&conn_id);
                                let mut frame = Map::new();
                                frame.insert("type".into(), "unsubscribe_events".into());
                                frame.insert("subscription".into(), Value::from(conn_id));
                                match self.send_frame(ws, frame).await {
                                    Ok(id) => {
                                        let (tx, _rx) = oneshot::channel();
                                        pending.insert(id, Pending::Call { command: "unsubscribe_events".into(), reply: tx });
                                    }
                                    Err(e) => return End::Lost(e),
                                }
                            }
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    if awaiting_pong.is_some() {
                        fail_pending(pending, "no pong within the heartbeat interval");
                        return End::Lost(format!(
                            "Home Assistant did not answer a heartbeat within {}",
                            humantime::format_duration(self.opts.heartbeat_interval)
                        ));
                    }
                    // Requests whose caller gave up (timed out) are forgotten here.
                    pending.retain(|_, p| match p {
                        Pending::Call { reply, .. } => !reply.is_closed(),
                        Pending::Subscribe { .. } => true,
                    });
                    let mut frame = Map::new();
                    frame.insert("type".into(), "ping".into());
                    match self.send_frame(ws, frame).await {
                        Ok(id) => awaiting_pong = Some(id),
                        Err(e) => return End::Lost(e),
                    }
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        text: &str,
        pending: &mut HashMap<u64, Pending>,
        routes: &mut HashMap<u64, u64>,
        awaiting_pong: &mut Option<u64>,
    ) {
        for item in decode_frame(text) {
            self.dispatch_one(item, pending, routes, awaiting_pong);
        }
    }

    fn dispatch_one(
        &mut self,
        msg: Incoming,
        pending: &mut HashMap<u64, Pending>,
        routes: &mut HashMap<u64, u64>,
        awaiting_pong: &mut Option<u64>,
    ) {
        match msg {
            Incoming::Event { id, event } => {
                match routes.get(&id).and_then(|key| self.subs.get_mut(key)) {
                    Some(sub) => sub.deliver(SubItem::Event(event)),
                    None => debug!(id, "event for a subscription that is gone"),
                }
            }
            Incoming::Result { id, body } => match pending.remove(&id) {
                Some(Pending::Call { command, reply }) => {
                    let _ = reply.send(parse_result(&command, body));
                }
                Some(Pending::Subscribe { key, reply }) => {
                    let outcome = parse_result("subscribe", body).map(|_| ());
                    if let Err(e) = &outcome {
                        // A refused subscription delivers nothing more.
                        routes.remove(&id);
                        if reply.is_none() {
                            warn!(error = %e, "Home Assistant refused to renew a subscription after reconnecting");
                        }
                        self.subs.remove(&key);
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                None => {
                    let text = clip(&Value::Object(body).to_string(), 200);
                    warn!(id, message = %text, "ignoring a result for a request this client never sent or already settled");
                }
            },
            Incoming::Pong { id } => {
                if *awaiting_pong == Some(id) {
                    *awaiting_pong = None;
                } else if let Some(Pending::Call { reply, .. }) = pending.remove(&id) {
                    let _ = reply.send(Ok(Value::Null));
                } else {
                    debug!(id, "unexpected pong");
                }
            }
            Incoming::Ignored { reason } => {
                warn!(%reason, "ignoring a message from Home Assistant")
            }
        }
    }
}

fn fail_pending(pending: HashMap<u64, Pending>, why: &str) {
    for (_, p) in pending {
        match p {
            Pending::Call { reply, .. } => {
                let _ = reply.send(Err(HaError::ConnectionLost(why.into())));
            }
            Pending::Subscribe {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(Err(HaError::ConnectionLost(why.into())));
            }
            Pending::Subscribe { reply: None, .. } => {}
        }
    }
}

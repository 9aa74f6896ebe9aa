//! Home Assistant WebSocket client: connection, protocol, subscriptions and the backup API.
//!
//! [`Client::connect`] authenticates once (a refused token is a permanent error, reported at once) and
//! hands the socket to a task that keeps it alive: heartbeat, continuous reading, reconnection with
//! capped backoff, renewal of subscriptions. Requests are matched to results by id and each has a
//! timeout. This module knows nothing about SFTP, the store or the audit log.

mod backup;
mod connection;
mod endpoint;
mod error;
mod frames;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

pub use backup::{
    AgentInfo, Backup, BackupApi, BackupEvent, BackupList, BackupState, GenerateRequest, Install,
    LegacyBackup, choose_local_agent,
};
pub use connection::SubItem;
pub use endpoint::{Endpoint, EndpointError};
pub use error::HaError;
pub use frames::{Incoming, decode_frame, parse_result};

use crate::secret::Secret;
use connection::{Actor, Command};

/// How to reach and talk to Home Assistant.
#[derive(Clone)]
pub struct ClientOptions {
    pub endpoint: Endpoint,
    pub token: Secret,
    /// TLS settings; `None` for `ws://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub request_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_message_size: usize,
    /// Reconnect when the connection drops (the daemon); one-shot commands may turn it off.
    pub reconnect: bool,
    pub max_reconnect_delay: Duration,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token)
            .field("tls", &self.tls.is_some())
            .field("request_timeout", &self.request_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("max_message_size", &self.max_message_size)
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

impl ClientOptions {
    /// Options with the defaults hapull uses; TLS is set up for `wss://` endpoints with the web PKI
    /// roots plus the certificates in `ca_file`, if given. There is no way to turn verification off.
    pub fn new(
        endpoint: Endpoint,
        token: Secret,
        ca_file: Option<&Path>,
    ) -> Result<ClientOptions, HaError> {
        let tls = if endpoint.is_tls() {
            Some(Arc::new(tls_config(ca_file).map_err(|reason| {
                HaError::Tls {
                    endpoint: endpoint.to_string(),
                    reason,
                }
            })?))
        } else {
            None
        };
        Ok(ClientOptions {
            endpoint,
            token,
            tls,
            request_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            max_message_size: 16 * 1024 * 1024,
            reconnect: true,
            max_reconnect_delay: Duration::from_secs(60),
        })
    }
}

/// The rustls client configuration: aws-lc-rs, web PKI roots, plus an optional extra CA file.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| format!("ca_file {} is not valid PEM: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: unusable certificate: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The state of the connection, observable through [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    Connected,
    Reconnecting {
        reason: String,
    },
    /// A permanent error (e.g. the token was revoked); the client will not reconnect.
    Failed {
        reason: String,
    },
    Closed,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    version: watch::Receiver<String>,
    next_key: AtomicU64,
    request_timeout: Duration,
}

/// A cheap, clonable handle to one Home Assistant connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects and authenticates. Fails at once on a refused token or an unreachable server; once
    /// connected, the client reconnects by itself (when `opts.reconnect`).
    pub async fn connect(opts: ClientOptions) -> Result<Client, HaError> {
        let (ws, version) = connection::establish(&opts).await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected);
        let (version_tx, version_rx) = watch::channel(version);
        let request_timeout = opts.request_timeout;
        let actor = Actor::new(Arc::new(opts), cmd_rx, state_tx, version_tx);
        tokio::spawn(actor.run(ws));
        Ok(Client {
            inner: Arc::new(Inner {
                commands: cmd_tx,
                state: state_rx,
                version: version_rx,
                next_key: AtomicU64::new(1),
                request_timeout,
            }),
        })
    }

    /// The Home Assistant version reported at the last (re)connection.
    pub fn ha_version(&self) -> String {
        self.inner.version.borrow().clone()
    }

    /// The connection state, as a watch channel.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Sends a command (a JSON object without `id`) and waits for its result, with the default timeout.
    pub async fn call(&self, frame: Value) -> Result<Value, HaError> {
        self.call_with_timeout(frame, self.inner.request_timeout)
            .await
    }

    /// Like [`Client::call`] with an explicit timeout (some commands, e.g. a blocking legacy backup,
    /// take long).
    pub async fn call_with_timeout(
        &self,
        frame: Value,
        timeout: Duration,
    ) -> Result<Value, HaError> {
        let Value::Object(frame) = frame else {
            return Err(HaError::Protocol("a command must be a JSON object".into()));
        };
        let command = frame
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Call { frame, reply: tx })
            .await
            .map_err(|_| HaError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(HaError::Timeout {
                command,
                after: timeout,
            }),
            Ok(Err(_)) => Err(HaError::ConnectionLost(format!(
                "connection closed before {command} was answered"
            ))),
            Ok(Ok(result)) => result,
        }
    }

    /// Subscribes with any subscription command; events that arrive before the command's result are
    /// delivered too. The subscription is renewed after a reconnect and ended when dropped.
    pub async fn subscribe(&self, frame: Value) -> Result<Subscription, HaError> {
        let Value::Object(frame) = frame else {
            return Err(HaError::Protocol("a command must be a JSON object".into()));
        };
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::channel(connection::SUBSCRIPTION_BUFFER);
        let (tx, rx) = oneshot::channel();
        let command = frame
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        self.inner
            .commands
            .send(Command::Subscribe {
                frame,
                key,
                events: events_tx,
                reply: tx,
            })
            .await
            .map_err(|_| HaError::Closed)?;
        let sub = Subscription {
            key,
            events: events_rx,
            commands: self.inner.commands.clone(),
        };
        match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Err(_) => Err(HaError::Timeout {
                command,
                after: self.inner.request_timeout,
            }),
            Ok(Err(_)) => Err(HaError::ConnectionLost(format!(
                "connection closed before {command} was answered"
            ))),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(()))) => Ok(sub),
        }
    }

    /// `subscribe_events`, for one event type or (None) all of them.
    pub async fn subscribe_events(
        &self,
        event_type: Option<&str>,
    ) -> Result<Subscription, HaError> {
        let mut frame = json!({"type": "subscribe_events"});
        if let Some(t) = event_type {
            frame["event_type"] = Value::from(t);
        }
        self.subscribe(frame).await
    }

    /// `backup/subscribe_events`: backup manager state changes (HA 2025.1 and later).
    pub async fn subscribe_backup_events(&self) -> Result<Subscription, HaError> {
        self.subscribe(json!({"type": "backup/subscribe_events"}))
            .await
    }

    /// `call_service`. It returns when the service has finished (HA always waits); with
    /// `return_response` the service's response is in the result's `response`.
    pub async fn call_service(
        &self,
        domain: &str,
        service: &str,
        data: Value,
        return_response: bool,
        timeout: Duration,
    ) -> Result<Value, HaError> {
        let mut frame = json!({"type": "call_service", "domain": domain, "service": service, "service_data": data});
        if return_response {
            frame["return_response"] = Value::Bool(true);
        }
        self.call_with_timeout(frame, timeout).await
    }

    /// `fire_event` on Home Assistant's event bus.
    pub async fn fire_event(&self, event_type: &str, data: Value) -> Result<(), HaError> {
        self.call(json!({"type": "fire_event", "event_type": event_type, "event_data": data}))
            .await
            .map(|_| ())
    }

    /// A protocol-level ping; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, HaError> {
        let start = tokio::time::Instant::now();
        self.call(json!({"type": "ping"})).await?;
        Ok(start.elapsed())
    }
}

/// A stream of events from one subscription. Dropping it unsubscribes.
pub struct Subscription {
    key: u64,
    events: mpsc::Receiver<SubItem>,
    commands: mpsc::Sender<Command>,
}

impl Subscription {
    /// The next item; `None` when the client has shut down or Home Assistant refused the renewal.
    pub async fn next(&mut self) -> Option<SubItem> {
        self.events.recv().await
    }

    /// Takes everything already received without waiting (e.g. events of an earlier backup job).
    pub fn drain(&mut self) -> Vec<SubItem> {
        let mut out = Vec::new();
        while let Ok(item) = self.events.try_recv() {
            out.push(item);
        }
        out
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self
            .commands
            .try_send(Command::Unsubscribe { key: self.key });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_that_hold_no_usable_certificate_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("empty.pem", "", "holds no PEM certificate"),
            (
                "text.pem",
                "not a certificate\n",
                "holds no PEM certificate",
            ),
            (
                "broken.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "is not valid PEM",
            ),
            (
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "unusable certificate",
            ),
        ];
        for (name, body, want) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            let err = tls_config(Some(&path)).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
        }
    }
}

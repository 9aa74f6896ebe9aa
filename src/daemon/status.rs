//! Health: the rule, its reading from the state file for `hapull health`, and a tiny HTTP/1.1 server
//! for `GET /healthz` and `GET /metrics`.
//!
//! The health rule: healthy when the last successful cycle finished within `max_age`, and also
//! during a start-up grace period of `max_age` after the daemon started (a freshly started daemon has
//! had no chance to succeed yet). `/healthz` and [`health_from_state_file`] apply the same rule to the
//! same record: the state file, where the daemon and `hapull once` / `hapull pull` write their
//! successes.
//!
//! A deep verification that found a problem (`[store] deep_verify`) also makes health bad, whatever
//! the age of the last success, until a later deep verification passes: a backup that would not
//! restore is a problem a person must see, even though the cycle itself succeeded.
//!
//! The server is for a local scraper or a health check, not the internet: it answers two paths, caps
//! request size, connection count and time per connection, closes every connection after one answer
//! and never reveals anything but the numbers in [`Metrics`]. It must not run cycles or change state.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::clock::Clock;
use super::metrics::Metrics;
use super::state::{DeepVerdict, State, StateFile};

/// Healthy or not, with the reason a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy(String),
    Unhealthy(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Health::Healthy(r) | Health::Unhealthy(r) => r,
        }
    }
}

fn age(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or(Duration::ZERO)
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The health rule (see the module docs).
pub fn evaluate(
    last_success: Option<Timestamp>,
    started_at: Option<Timestamp>,
    max_age: Duration,
    now: Timestamp,
) -> Health {
    if let Some(ok) = last_success {
        let a = age(now, ok);
        if a <= max_age {
            return Health::Healthy(format!("last successful backup at {ok} ({} ago)", human(a)));
        }
    }
    if let Some(start) = started_at {
        let a = age(now, start);
        if a <= max_age {
            return Health::Healthy(format!(
                "started at {start} ({} ago), within the grace period of {}",
                human(a),
                human(max_age)
            ));
        }
    }
    match last_success {
        Some(ok) => Health::Unhealthy(format!(
            "the last successful backup was at {ok}, {} ago, longer than max_age {}",
            human(age(now, ok)),
            human(max_age)
        )),
        None => Health::Unhealthy(format!(
            "no successful backup yet, and the daemon started more than max_age {} ago",
            human(max_age)
        )),
    }
}

/// The deep-verification part of the rule: `Some(reason)` when the last deep verdict is a failure.
pub fn deep_problem(last: Option<DeepVerdict>) -> Option<String> {
    match last {
        Some(DeepVerdict { at, passed: false }) => Some(format!(
            "the deep verification at {at} found a problem in the newest backup (see the audit \
             record archive.deep_verify_failed, or run `hapull verify --deep`); this clears when a \
             later deep verification passes"
        )),
        _ => None,
    }
}

/// [`evaluate`], made unhealthy by a failed deep verification.
fn with_deep(health: Health, last: Option<DeepVerdict>) -> Health {
    match (health, deep_problem(last)) {
        (h, None) => h,
        (Health::Healthy(_), Some(problem)) => Health::Unhealthy(problem),
        (Health::Unhealthy(reason), Some(problem)) => {
            Health::Unhealthy(format!("{reason}; and {problem}"))
        }
    }
}

/// The health rule applied to the daemon's state file, for `hapull health` (e.g. Docker's
/// HEALTHCHECK) without the HTTP endpoint.
pub fn health_from_state_file(path: &Path, max_age: Duration, now: Timestamp) -> Health {
    match State::read(path) {
        Ok(State {
            last_success: None,
            started_at: None,
            ..
        }) => Health::Unhealthy(format!(
            "{} records no start and no successful backup; is `hapull run` running with this state file, or has `hapull once` succeeded?",
            path.display()
        )),
        Ok(state) => {
            let health = match evaluate(state.last_success, state.started_at, max_age, now) {
                Health::Unhealthy(reason) => match state.last_failure {
                    Some(failed) if state.last_success.is_none_or(|ok| failed > ok) => {
                        Health::Unhealthy(format!("{reason}; the last cycle failed at {failed}"))
                    }
                    _ => Health::Unhealthy(reason),
                },
                healthy => healthy,
            };
            with_deep(health, state.last_deep_verify)
        }
        Err(e) => Health::Unhealthy(e.to_string()),
    }
}

/// Limits that keep a slow or hostile client from holding the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest request head accepted (request line and headers).
    pub max_request_bytes: usize,
    /// Time allowed to send the request, and again to take the answer.
    pub timeout: Duration,
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: 8 * 1024,
            timeout: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

/// What `/healthz` and `/metrics` answer from.
#[derive(Debug, Clone)]
pub struct StatusServer {
    metrics: Metrics,
    max_age: Duration,
    clock: Clock,
    limits: Limits,
    state: Option<StateFile>,
}

impl StatusServer {
    pub fn new(metrics: Metrics, max_age: Duration, clock: Clock) -> StatusServer {
        StatusServer {
            metrics,
            max_age,
            clock,
            limits: Limits::default(),
            state: None,
        }
    }

    /// Also counts the successes recorded in `state` (by this daemon, or by `hapull once` meanwhile),
    /// so `/healthz` and `hapull health` agree.
    pub fn with_state_file(mut self, state: StateFile) -> StatusServer {
        self.state = Some(state);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> StatusServer {
        self.limits = limits;
        self
    }

    /// Health by the rule in the module docs, from the metrics registry.
    pub fn health(&self) -> Health {
        let s = self.metrics.snapshot();
        let recorded = self.state.as_ref().map(StateFile::reload);
        let last_success = s.last_success.max(recorded.and_then(|r| r.last_success));
        // The state file is the shared record; without one, what this daemon saw.
        let deep = match recorded {
            Some(r) => r.last_deep_verify,
            None => s.last_deep_verify,
        };
        with_deep(
            evaluate(last_success, s.started_at, self.max_age, self.clock.now()),
            deep,
        )
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting and waits for the
    /// connections in progress (each bounded by the timeout). Errors accepting one connection are
    /// logged and do not stop the server.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.limits.max_connections.max(1)));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // Reap finished connections so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "status server: accept failed");
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let this = this.clone();
            tasks.spawn(async move {
                let _permit = permit;
                if let Err(e) = this.connection(stream).await {
                    tracing::debug!(error = %e, "status server: connection ended with an error");
                }
            });
        }
        drop(listener);
        while tasks.join_next().await.is_some() {}
    }

    async fn connection(&self, mut stream: TcpStream) -> io::Result<()> {
        let limits = self.limits;
        let head = match tokio::time::timeout(limits.timeout, read_head(&mut stream, limits)).await
        {
            Ok(Ok(head)) => head,
            Ok(Err(RequestError::Io(e))) => return Err(e),
            Ok(Err(RequestError::TooLarge)) => Head::Reject(431, "request too large\n"),
            Ok(Err(RequestError::Closed)) => return Ok(()),
            // A client too slow to send a request head gets nothing but a closed connection.
            Err(_) => return Ok(()),
        };
        let response = self.respond(head);
        tokio::time::timeout(limits.timeout, async {
            stream.write_all(&response).await?;
            stream.shutdown().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "writing the answer timed out"))?
    }

    fn respond(&self, head: Head) -> Vec<u8> {
        let (method, path) = match head {
            Head::Reject(code, body) => return response(code, "text/plain", body, &[], true),
            Head::Request { method, path } => (method, path),
        };
        let with_body = method != "HEAD";
        // The query string is ignored: Prometheus and health checkers may add one.
        let path = path.split('?').next().unwrap_or("");
        match path {
            "/healthz" | "/metrics" if method != "GET" && method != "HEAD" => response(
                405,
                "text/plain",
                "only GET and HEAD are allowed\n",
                &[("Allow", "GET, HEAD")],
                true,
            ),
            "/healthz" => match self.health() {
                Health::Healthy(reason) => response(
                    200,
                    "text/plain",
                    &format!("healthy: {reason}\n"),
                    &[],
                    with_body,
                ),
                Health::Unhealthy(reason) => response(
                    503,
                    "text/plain",
                    &format!("unhealthy: {reason}\n"),
                    &[],
                    with_body,
                ),
            },
            "/metrics" => response(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &self.metrics.render(),
                &[],
                with_body,
            ),
            _ => response(
                404,
                "text/plain",
                "not found; try /healthz or /metrics\n",
                &[],
                with_body,
            ),
        }
    }
}

enum Head {
    Request { method: String, path: String },
    Reject(u16, &'static str),
}

enum RequestError {
    Io(io::Error),
    TooLarge,
    Closed,
}

/// Reads up to the end of the request head; only the request line is looked at.
async fn read_head(stream: &mut TcpStream, limits: Limits) -> Result<Head, RequestError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            buf.truncate(end);
            break;
        }
        if buf.len() > limits.max_request_bytes {
            return Err(RequestError::TooLarge);
        }
        let n = stream.read(&mut chunk).await.map_err(RequestError::Io)?;
        if n == 0 {
            return Err(RequestError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > limits.max_request_bytes {
        return Err(RequestError::TooLarge);
    }
    let Ok(text) = std::str::from_utf8(&buf) else {
        return Ok(Head::Reject(400, "bad request\n"));
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(path), Some(version), None)
            if !method.is_empty() && path.starts_with('/') && version.starts_with("HTTP/1.") =>
        {
            Ok(Head::Request {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
        _ => Ok(Head::Reject(400, "bad request\n")),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn response(
    code: u16,
    content_type: &str,
    body: &str,
    extra: &[(&str, &str)],
    with_body: bool,
) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    if with_body {
        out.push_str(body);
    }
    out.into_bytes()
}

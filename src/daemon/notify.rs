//! Webhooks: tell a monitoring service (healthchecks.io and the like) that a cycle succeeded or
//! failed, with a small HTTP/1.1 client over tokio and rustls.
//!
//! Such URLs often are secrets (a healthchecks.io ping URL holds the check's UUID), so the URL is
//! never logged or put in an error message whole: only `scheme://host[:port]`. A webhook is a
//! notification, not part of the backup: callers log a failure and carry on. This module does not
//! follow redirects, read response bodies or know what a cycle is.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A webhook could not be sent. Messages name the target as `scheme://host` only.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "[notify] {key} is not a usable webhook URL: {reason}; it must look like https://host/path"
    )]
    InvalidUrl { key: String, reason: String },
    #[error("cannot reach webhook {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error(
        "TLS with webhook {target} failed: {reason}; check the URL's host name and its certificate"
    )]
    Tls { target: String, reason: String },
    #[error("webhook {target} did not answer within {after:?}")]
    Timeout { target: String, after: Duration },
    #[error("webhook {target} answered HTTP {code}; expected 2xx{hint}")]
    Status {
        target: String,
        code: u16,
        hint: &'static str,
    },
    #[error("webhook {target} sent a malformed answer: {reason}")]
    Protocol { target: String, reason: String },
    #[error("cannot set up TLS for webhooks: {0}")]
    TlsSetup(String),
}

impl NotifyError {
    /// True when trying again may help (network trouble, a busy or failing server).
    pub fn is_transient(&self) -> bool {
        match self {
            NotifyError::Connect { .. }
            | NotifyError::Timeout { .. }
            | NotifyError::Protocol { .. } => true,
            NotifyError::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            NotifyError::InvalidUrl { .. } | NotifyError::Tls { .. } | NotifyError::TlsSetup(_) => {
                false
            }
        }
    }
}

/// A parsed `http://` or `https://` URL. `Display` and `Debug` show only `scheme://host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    https: bool,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl WebhookUrl {
    /// Parses `url`; `key` names the setting in errors (e.g. `webhook_success`). The error never
    /// repeats the path, which may hold a secret.
    pub fn parse(key: &str, url: &str) -> Result<WebhookUrl, NotifyError> {
        let bad = |reason: &str| NotifyError::InvalidUrl {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let url = url.trim();
        if url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(bad(
                "it contains spaces, control or non-ASCII characters (percent-encode them)",
            ));
        }
        // Parsing is http::Uri's (it drops a fragment, which is never sent anyway). Its errors do
        // not repeat the input, but are mapped to reasons a user can act on.
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| match e.to_string().as_str() {
                    "invalid authority" | "invalid uri character" => {
                        bad("the host has characters a host name cannot have")
                    }
                    _ => bad("the host is missing"),
                })?;
        let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme is not http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("the host is missing"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user names and passwords in the URL are not supported"));
        }
        let default_port = if https { 443 } else { 80 };
        let port = match (uri.port_u16(), port_text(authority.as_str())) {
            (Some(p), _) if p != 0 => p,
            (None, None) => default_port,
            _ => return Err(bad("the port is not a number in 1-65535")),
        };
        let bracketed = authority.host().starts_with('[');
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        if !host.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || (bracketed && c == ':')
        }) {
            return Err(bad("the host has characters a host name cannot have"));
        }
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
            None => "/".to_string(),
        };
        Ok(WebhookUrl {
            https,
            host: host.to_string(),
            port,
            path,
        })
    }

    fn default_port(&self) -> bool {
        self.port == if self.https { 443 } else { 80 }
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The text after the authority's port colon, if there is one and it is not empty (`host:` means the
/// default port).
fn port_text(authority: &str) -> Option<&str> {
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    after_host
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.host_header())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self}/<redacted>)")
    }
}

/// How a webhook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// POST with a JSON body (the default; healthchecks.io shows the body with the ping).
    Post,
    /// GET without a body.
    Get,
}

/// Sends webhooks: http and https (aws-lc-rs, web PKI roots), a timeout per attempt, a few retries
/// with exponential backoff and jitter for transient failures. Success is any 2xx answer.
#[derive(Clone)]
pub struct WebhookClient {
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    timeout: Duration,
    retries: usize,
    retry_delay: Duration,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient")
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client trusting the web PKI roots: POST, 10 s per attempt, 2 retries from 1 s apart.
    pub fn new() -> Result<WebhookClient, NotifyError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NotifyError::TlsSetup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(WebhookClient::with_tls(Arc::new(config)))
    }

    /// A client using `tls` (e.g. one that trusts a private CA).
    pub fn with_tls(tls: Arc<rustls::ClientConfig>) -> WebhookClient {
        WebhookClient {
            tls,
            method: Method::Post,
            timeout: Duration::from_secs(10),
            retries: 2,
            retry_delay: Duration::from_secs(1),
        }
    }

    pub fn method(mut self, method: Method) -> WebhookClient {
        self.method = method;
        self
    }

    /// Time allowed for one attempt: connect, TLS, request and the answer's status line.
    pub fn timeout(mut self, timeout: Duration) -> WebhookClient {
        self.timeout = timeout;
        self
    }

    /// Retries after the first attempt, the first `delay` later, doubling (with jitter).
    pub fn retries(mut self, retries: usize, delay: Duration) -> WebhookClient {
        self.retries = retries;
        self.retry_delay = delay;
        self
    }

    /// Calls `url` with `body` (ignored for GET), retrying transient failures. Returns the 2xx code.
    pub async fn send(
        &self,
        url: &WebhookUrl,
        body: &serde_json::Value,
    ) -> Result<u16, NotifyError> {
        let body = if self.method == Method::Post {
            serde_json::to_vec(body).unwrap_or_default()
        } else {
            Vec::new()
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry_delay)
            .with_max_delay(self.retry_delay.saturating_mul(8))
            .with_max_times(self.retries)
            .with_jitter();
        (|| self.attempt(url, &body))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(NotifyError::is_transient)
            .notify(|e, after| {
                tracing::warn!(webhook = %url, error = %e, retry_in = ?after, "webhook failed; retrying");
            })
            .await
    }

    async fn attempt(&self, url: &WebhookUrl, body: &[u8]) -> Result<u16, NotifyError> {
        let target = url.to_string();
        let code = tokio::time::timeout(self.timeout, self.exchange(url, body))
            .await
            .map_err(|_| NotifyError::Timeout {
                target: target.clone(),
                after: self.timeout,
            })??;
        if (200..300).contains(&code) {
            tracing::debug!(webhook = %url, code, "webhook sent");
            Ok(code)
        } else {
            let hint = if (300..400).contains(&code) {
                " (redirects are not followed: use the final URL)"
            } else {
                ""
            };
            Err(NotifyError::Status { target, code, hint })
        }
    }

    async fn exchange(&self, url: &WebhookUrl, body: &[u8]) -> Result<u16, NotifyError> {
        let target = url.to_string();
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| NotifyError::Connect {
                target: target.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let request = self.request(url, body);
        if !url.https {
            return exchange_on(tcp, &request, &target).await;
        }
        let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
            NotifyError::Tls {
                target: target.clone(),
                reason: e.to_string(),
            }
        })?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                // rustls reports certificate and protocol problems as an io::Error wrapping a
                // rustls::Error; anything else is the network.
                let is_tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
                if is_tls {
                    NotifyError::Tls {
                        target: target.clone(),
                        reason: e.to_string(),
                    }
                } else {
                    NotifyError::Connect {
                        target: target.clone(),
                        reason: e.to_string(),
                    }
                }
            })?;
        exchange_on(tls, &request, &target).await
    }

    fn request(&self, url: &WebhookUrl, body: &[u8]) -> Vec<u8> {
        let mut head = match self.method {
            Method::Post => format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                url.path,
                url.host_header(),
                body.len()
            ),
            Method::Get => format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\n",
                url.path,
                url.host_header()
            ),
        };
        head.push_str(concat!(
            "User-Agent: hapull/",
            env!("CARGO_PKG_VERSION"),
            "\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ));
        let mut out = head.into_bytes();
        if self.method == Method::Post {
            out.extend_from_slice(body);
        }
        out
    }
}

/// Sends the request and reads the status code from the answer's first line.
async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    target: &str,
) -> Result<u16, NotifyError> {
    let io_err = |e: std::io::Error| NotifyError::Connect {
        target: target.to_string(),
        reason: e.to_string(),
    };
    stream.write_all(request).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let line = loop {
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            break String::from_utf8_lossy(&buf[..end]).trim_end().to_string();
        }
        if buf.len() > 4096 {
            return Err(NotifyError::Protocol {
                target: target.to_string(),
                reason: "no status line in the first 4 KiB".to_string(),
            });
        }
        let n = stream.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            return Err(NotifyError::Protocol {
                target: target.to_string(),
                reason: "the connection closed before an answer".to_string(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/1.") && (100..600).contains(&code) => {
            Ok(code)
        }
        _ => Err(NotifyError::Protocol {
            target: target.to_string(),
            reason: format!(
                "{:?} is not an HTTP/1.x status line",
                line.chars().take(80).collect::<String>()
            ),
        }),
    }
}

/// The two configured webhooks (`[notify] webhook_success` / `webhook_failure`).
#[derive(Debug, Clone)]
pub struct Notifier {
    success: Option<WebhookUrl>,
    failure: Option<WebhookUrl>,
    client: WebhookClient,
}

impl Notifier {
    /// Parses the configured URLs (either may be absent) and sets up a default [`WebhookClient`].
    pub fn new(success: Option<&str>, failure: Option<&str>) -> Result<Notifier, NotifyError> {
        Ok(Notifier {
            success: success
                .map(|u| WebhookUrl::parse("webhook_success", u))
                .transpose()?,
            failure: failure
                .map(|u| WebhookUrl::parse("webhook_failure", u))
                .transpose()?,
            client: WebhookClient::new()?,
        })
    }

    pub fn with_client(mut self, client: WebhookClient) -> Notifier {
        self.client = client;
        self
    }

    /// Calls `webhook_success` with `body`, if configured.
    pub async fn success(&self, body: &serde_json::Value) -> Result<(), NotifyError> {
        match &self.success {
            Some(url) => self.client.send(url, body).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Calls `webhook_failure` with `body`, if configured.
    pub async fn failure(&self, body: &serde_json::Value) -> Result<(), NotifyError> {
        match &self.failure {
            Some(url) => self.client.send(url, body).await.map(|_| ()),
            None => Ok(()),
        }
    }
}

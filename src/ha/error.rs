use std::time::Duration;

/// What went wrong talking to Home Assistant. [`HaError::is_transient`] tells callers whether trying
/// again later can help; permanent errors (a refused token, a bad certificate, a wrong URL) are never
/// retried in a loop.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("cannot connect to Home Assistant at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error(
        "TLS with Home Assistant at {endpoint} failed: {reason}; use in [home_assistant] url the host name the certificate is issued for, and if Home Assistant uses a self-signed certificate, set [home_assistant] ca_file to the CA that signed it"
    )]
    Tls { endpoint: String, reason: String },
    #[error(
        "{endpoint} is not Home Assistant's WebSocket API ({reason}); check [home_assistant] url"
    )]
    NotHomeAssistant { endpoint: String, reason: String },
    #[error(
        "Home Assistant at {endpoint} refused the access token ({message}); create a new long-lived access token in your Home Assistant user profile (Security tab) and put it in the token file"
    )]
    AuthInvalid { endpoint: String, message: String },
    #[error("Home Assistant sent something unexpected: {0}")]
    Protocol(String),
    #[error("Home Assistant did not answer {command} within {}", humantime::format_duration(*.after))]
    Timeout { command: String, after: Duration },
    #[error("the connection to Home Assistant was lost: {0}")]
    ConnectionLost(String),
    #[error("Home Assistant answered {command} with error {code}: {message}{hint}", hint = command_hint(code))]
    Command {
        command: String,
        code: String,
        message: String,
    },
    #[error("the Home Assistant client has been shut down")]
    Closed,
}

impl HaError {
    /// True when the same request may succeed later (network trouble, HA restarting or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            HaError::Connect { .. } | HaError::Timeout { .. } | HaError::ConnectionLost(_) => true,
            HaError::Command { code, .. } => code == "home_assistant_error" || code == "timeout",
            HaError::Tls { .. }
            | HaError::NotHomeAssistant { .. }
            | HaError::AuthInvalid { .. }
            | HaError::Protocol(_)
            | HaError::Closed => false,
        }
    }

    /// The error code Home Assistant gave, if this is a command error.
    pub fn code(&self) -> Option<&str> {
        match self {
            HaError::Command { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when Home Assistant does not know the command (older versions, integration not loaded).
    pub fn is_unknown_command(&self) -> bool {
        self.code() == Some("unknown_command")
    }
}

/// What to do about an error code that always means the same thing.
fn command_hint(code: &str) -> &'static str {
    match code {
        "unauthorized" => {
            "; the token's user is not an administrator: backups need a long-lived access token of an administrator (make the user an administrator under Settings → People, or create the token as one)"
        }
        _ => "",
    }
}

/// Cuts text from Home Assistant to a length fit for an error message or a log line.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

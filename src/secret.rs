//! Secrets (access tokens, key passphrases, backup passwords) that must never reach a log line.

use std::fmt;

/// A secret string. `Debug` and `Display` print `<redacted>`; the value is only reachable through
/// [`Secret::expose`], so every use of it is visible in the source.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value, trimming one trailing newline (as files written by `echo` carry).
    pub fn new(value: impl Into<String>) -> Self {
        let mut s: String = value.into();
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        Secret(s)
    }

    /// The secret value. Call only where the value is sent to its destination.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2\n");
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?} {s} {s:#?}").contains("hunter2"));
    }
}

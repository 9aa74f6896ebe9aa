//! Where Home Assistant's WebSocket API lives, from whatever URL form the user wrote.

use std::fmt;

/// A validated WebSocket endpoint: `ws://` or `wss://`, host, port and the path ending in
/// `/api/websocket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

/// Why a URL is not a Home Assistant address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{url:?} is not a Home Assistant URL: {why}; write e.g. \"http://homeassistant.local:8123\""
)]
pub struct EndpointError {
    url: String,
    why: &'static str,
}

impl Endpoint {
    /// Accepts `http(s)://host[:port][/prefix]`, `ws(s)://...`, with or without `/api/websocket`.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let err = |why| EndpointError {
            url: url.to_string(),
            why,
        };
        let trimmed = url.trim();
        let (scheme, rest) = trimmed.split_once("://").ok_or(err("no scheme"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            _ => return Err(err("the scheme must be http, https, ws or wss")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) || authority.contains(['?', '#']) {
            return Err(err("query strings and fragments are not allowed"));
        }
        if authority.contains('@') {
            return Err(err(
                "credentials in the URL are not allowed; use token_file",
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(err("unclosed IPv6 bracket"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| err("the port is not a number"))?,
                None if after.is_empty() => default_port,
                None => return Err(err("unexpected text after the IPv6 address")),
            };
            (format!("[{h}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| err("the port is not a number"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(err("no host"));
        }
        if port == 0 {
            return Err(err("port 0"));
        }
        let mut path = path.trim_end_matches('/').to_string();
        if !path.ends_with("/api/websocket") {
            path.push_str("/api/websocket");
        }
        Ok(Endpoint {
            tls,
            host,
            port,
            path,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host name as used for TLS server-name checks (without IPv6 brackets).
    pub fn host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path prefix Home Assistant is served under (empty unless behind a proxy at a sub-path),
    /// for its HTTP API: `<prefix>/api/...`.
    pub fn http_prefix(&self) -> &str {
        self.path.strip_suffix("/api/websocket").unwrap_or("")
    }

    /// The full `ws://` / `wss://` URL.
    pub fn ws_url(&self) -> String {
        format!(
            "{}://{}:{}{}",
            if self.tls { "wss" } else { "ws" },
            self.host,
            self.port,
            self.path
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ws_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_forms_users_write() {
        let cases = [
            (
                "http://homeassistant.local:8123",
                "ws://homeassistant.local:8123/api/websocket",
            ),
            (
                "http://homeassistant.local:8123/",
                "ws://homeassistant.local:8123/api/websocket",
            ),
            (
                "https://ha.example.org",
                "wss://ha.example.org:443/api/websocket",
            ),
            (
                "ws://10.0.0.2:8123/api/websocket",
                "ws://10.0.0.2:8123/api/websocket",
            ),
            (
                "wss://ha.example.org/api/websocket/",
                "wss://ha.example.org:443/api/websocket",
            ),
            ("http://proxy.lan/ha", "ws://proxy.lan:80/ha/api/websocket"),
            ("HTTP://[::1]:8123", "ws://[::1]:8123/api/websocket"),
        ];
        for (input, want) in cases {
            assert_eq!(Endpoint::parse(input).unwrap().ws_url(), want, "{input}");
        }
        assert_eq!(Endpoint::parse("http://[::1]:8123").unwrap().host(), "::1");
    }

    #[test]
    fn rejects_what_is_not_a_home_assistant_url() {
        for bad in [
            "homeassistant.local:8123",
            "ftp://x",
            "http://",
            "http://:8123",
            "http://h:notaport",
            "http://h:0",
            "http://user:pw@h:8123",
            "http://h:8123/?x=1",
        ] {
            let e = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(e.contains("is not a Home Assistant URL"), "{bad}: {e}");
        }
    }
}

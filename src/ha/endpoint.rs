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

/// Why a URL is not a Home Assistant address. Shows the URL without any user name or password in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{url:?} is not a Home Assistant URL: {why}; write e.g. \"http://homeassistant.local:8123\""
)]
pub struct EndpointError {
    url: String,
    why: &'static str,
}

/// The URL as it may be shown: credentials (`user:password@`) replaced, so an error never echoes them.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl Endpoint {
    /// Accepts `http(s)://host[:port][/prefix]`, `ws(s)://...`, with or without `/api/websocket`.
    /// Parsing is `http::Uri`'s; this adds what Home Assistant needs on top.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let trimmed = url.trim();
        let err = |why| EndpointError {
            url: shown(trimmed),
            why,
        };
        if !trimmed.contains("://") {
            return Err(err("no scheme"));
        }
        if trimmed.contains('#') {
            // http::Uri drops a fragment silently; a URL with one was not meant for us.
            return Err(err("query strings and fragments are not allowed"));
        }
        let uri: http::Uri = trimmed.parse().map_err(|_| {
            err("it is not a valid URL (a host name, an optional :port and path are expected)")
        })?;
        let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => return Err(err("the scheme must be http, https, ws or wss")),
        };
        if uri.query().is_some() {
            return Err(err("query strings and fragments are not allowed"));
        }
        let authority = uri.authority().ok_or(err("no host"))?;
        if authority.as_str().contains('@') {
            return Err(err(
                "credentials in the URL are not allowed; use token_file",
            ));
        }
        let host = authority.host();
        if host.is_empty() || host == "[]" {
            return Err(err("no host"));
        }
        let port = match (uri.port_u16(), port_text(authority.as_str())) {
            (Some(0), _) => return Err(err("port 0")),
            (Some(p), _) => p,
            (None, Some(_)) => return Err(err("the port is not a number")),
            (None, None) => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        let mut path = uri.path().trim_end_matches('/').to_string();
        if !path.ends_with("/api/websocket") {
            path.push_str("/api/websocket");
        }
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// True when the host is this machine (`localhost`, `127.0.0.0/8`, `::1`): only then does an
    /// unencrypted connection keep the token off the network.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
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

/// The text after the authority's port colon, if there is one and it is not empty (`h:` means the
/// default port, as browsers read it).
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

    #[test]
    fn errors_never_echo_credentials() {
        let e = Endpoint::parse("http://admin:hunter2@ha.local:8123/?x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("<redacted>@ha.local:8123"), "{e}");
    }

    #[test]
    fn loopback_hosts() {
        for (url, lo) in [
            ("http://localhost:8123", true),
            ("http://127.0.0.1:8123", true),
            ("http://127.1.2.3:8123", true),
            ("http://[::1]:8123", true),
            ("http://homeassistant.local:8123", false),
            ("http://10.0.0.2:8123", false),
        ] {
            assert_eq!(Endpoint::parse(url).unwrap().is_loopback(), lo, "{url}");
        }
    }
}

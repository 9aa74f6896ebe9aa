//! The response head of a download: reading and parsing the status line and headers (interim
//! answers skipped, size bounded), what a status means for the user and for retrying, how the body
//! is delimited, and `Content-Range`. It reads only the head, never the body.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::{TransferError, dropped};

/// Largest response head accepted (status line plus headers).
const MAX_HEAD: usize = 64 * 1024;

/// One response head.
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
}

impl Head {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// Reads the status line and headers (skipping `100 Continue`-style interim answers).
pub(super) async fn read_head<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    url: &str,
) -> Result<Head, TransferError> {
    let protocol = |message: String| TransferError::HttpProtocol {
        url: url.to_string(),
        message,
    };
    loop {
        let mut raw = Vec::new();
        loop {
            let before = raw.len();
            let n = (&mut *reader)
                .take((MAX_HEAD - before) as u64 + 1)
                .read_until(b'\n', &mut raw)
                .await
                .map_err(|e| dropped(url, &e))?;
            if n == 0 {
                return Err(TransferError::HttpUnreachable {
                    url: url.to_string(),
                    message: "the connection closed before a response".into(),
                });
            }
            if raw.len() > MAX_HEAD {
                return Err(protocol(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
            let line = &raw[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 96];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(protocol("incomplete head".into())),
            Err(e) => return Err(protocol(format!("bad head: {e}"))),
        }
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            continue;
        }
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        return Ok(Head { status, headers });
    }
}

pub(super) fn check_status(head: &Head, url: &str, path: &str) -> Result<(), TransferError> {
    let status = head.status;
    let err = |hint: &str, transient: bool| TransferError::HttpStatus {
        url: url.to_string(),
        status,
        hint: hint.to_string(),
        transient,
    };
    match status {
        200 | 206 => Ok(()),
        300..=399 => Err(TransferError::Redirect {
            url: url.to_string(),
            status,
            location: head
                .get("location")
                .unwrap_or("")
                .chars()
                .take(300)
                .collect(),
        }),
        401 => Err(err(
            "the token was refused; use a long-lived access token of an administrator (Profile → Security)",
            false,
        )),
        403 => Err(err(
            "the token's user may not download this; downloads need an administrator's token (Settings → People → make the user an administrator)",
            false,
        )),
        404 => Err(err(
            &format!("{path} is not there (deleted, or on another agent)"),
            false,
        )),
        416 => Err(err(
            "the requested range is past the end of the file; starting over",
            true,
        )),
        408 | 429 | 500..=599 => Err(err("the server is busy or failed; trying again", true)),
        _ => Err(err("unexpected answer", false)),
    }
}

pub(super) fn framing(head: &Head, url: &str) -> Result<Framing, TransferError> {
    if let Some(te) = head.get("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        if last.eq_ignore_ascii_case("chunked") {
            return Ok(Framing::Chunked);
        }
        return Ok(Framing::Close);
    }
    if let Some(ce) = head.get("content-encoding")
        && !ce.eq_ignore_ascii_case("identity")
    {
        return Err(TransferError::HttpProtocol {
            url: url.to_string(),
            message: format!("the body came {ce}-encoded although only identity was accepted"),
        });
    }
    match head.get("content-length") {
        Some(v) => v
            .parse::<u64>()
            .map(Framing::Length)
            .map_err(|_| TransferError::HttpProtocol {
                url: url.to_string(),
                message: format!("Content-Length {v:?} is not a number"),
            }),
        None => Ok(Framing::Close),
    }
}

/// `bytes <start>-<end>/<total>` → (start, total).
pub(super) fn parse_content_range(v: Option<&str>) -> Option<(u64, u64)> {
    let rest = v?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, total))
}

//! HA's backup download, `GET /api/backup/download/<id>[?agent_id=<agent>]`, on the WebSocket's port.
//!
//! As HA 2026.11 serves it: an administrator's bearer token is required (401 otherwise); Core's
//! `backup.local` (and legacy HA) answer with the file itself — `Content-Length`, `Accept-Ranges`,
//! `ETag`/`Last-Modified`, `Range` → 206 — while `hassio.local` streams it chunked, without a length
//! and without ranges. One connection serves one request. [`super::SimControl::cut_next_download`]
//! drops the connection mid-body.
//!
//! What it must not do: serve anything but listed backups (no path from the request reaches the
//! file system), or follow HA's `password=` decryption (not simulated: answered 400).

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::state::Shared;

const PREFIX: &[u8] = b"GET /api/backup/download/";

/// Whether the connection starts with a download request (else it is left to the WebSocket side).
pub(crate) async fn is_download(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 32];
    for _ in 0..400 {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n >= PREFIX.len() {
            return buf.starts_with(PREFIX);
        }
        if n == 0 || !PREFIX.starts_with(&buf[..n]) {
            return false;
        }
        // Only part of the request line is there yet; peeking again at once would spin.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

struct Request {
    path: String,
    query: Vec<(String, String)>,
    authorization: Option<String>,
    range: Option<String>,
    if_range: Option<String>,
}

async fn read_request(reader: &mut tokio::io::BufReader<TcpStream>) -> Option<Request> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = (&mut *reader)
            .take(16 * 1024)
            .read_until(b'\n', &mut raw)
            .await
            .ok()?;
        if n == 0 || raw.len() > 16 * 1024 {
            return None;
        }
        if &raw[before..] == b"\r\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&raw).ok()?;
    let target = req.path?.to_string();
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q),
        None => (target.clone(), ""),
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.replace("%2E", ".").replace("%2e", "."))
        })
        .collect();
    Some(Request {
        path,
        query,
        authorization: header("authorization"),
        range: header("range"),
        if_range: header("if-range"),
    })
}

async fn respond(stream: &mut tokio::io::BufReader<TcpStream>, status: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.get_mut().write_all(text.as_bytes()).await;
    let _ = stream.get_mut().shutdown().await;
}

pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let mut reader = tokio::io::BufReader::new(stream);
    let Some(req) = read_request(&mut reader).await else {
        respond(&mut reader, "400 Bad Request", "400: Bad Request").await;
        return;
    };
    let token = shared.lock().token.clone();
    if req.authorization.as_deref() != Some(&format!("Bearer {token}")) {
        respond(&mut reader, "401 Unauthorized", "401: Unauthorized").await;
        return;
    }
    let id = req
        .path
        .strip_prefix("/api/backup/download/")
        .unwrap_or("")
        .to_string();
    let agent = req
        .query
        .iter()
        .find(|(k, _)| k == "agent_id")
        .map(|(_, v)| v.clone());
    if req.query.iter().any(|(k, _)| k == "password") {
        respond(
            &mut reader,
            "400 Bad Request",
            "decryption is not simulated",
        )
        .await;
        return;
    }
    if !shared.legacy() && agent.as_deref() != Some(shared.local_agent()) {
        respond(&mut reader, "400 Bad Request", "Invalid agent").await;
        return;
    }
    let record = {
        let inner = shared.lock();
        inner.backups.iter().find(|b| b.id == id).cloned()
    };
    let Some(record) = record else {
        respond(&mut reader, "404 Not Found", "404: Not Found").await;
        return;
    };
    let Ok(mut file) = tokio::fs::File::open(&record.path).await else {
        respond(&mut reader, "404 Not Found", "404: Not Found").await;
        return;
    };
    let Ok(meta) = file.metadata().await else {
        respond(&mut reader, "500 Internal Server Error", "500").await;
        return;
    };
    let size = meta.len();
    let cut = {
        let mut inner = shared.lock();
        inner.downloads += 1;
        if req.range.is_some() {
            inner.range_downloads += 1;
        }
        inner.faults.cut_download.take()
    };
    let stream = reader.get_mut();
    if shared.supervisor() {
        // hassio.local: the Supervisor's stream, relayed by Core chunk by chunk.
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nContent-Disposition: attachment; filename=\"{id}.tar\"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Ok(n) = file.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                break;
            }
            let mut n = n;
            if let Some(limit) = cut
                && sent + n as u64 > limit
            {
                n = (limit - sent) as usize;
                let mut chunk = format!("{n:x}\r\n").into_bytes();
                chunk.extend_from_slice(&buf[..n]);
                let _ = stream.write_all(&chunk).await;
                return;
            }
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&buf[..n]);
            chunk.extend_from_slice(b"\r\n");
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
            sent += n as u64;
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let _ = stream.shutdown().await;
        return;
    }
    // backup.local and legacy: aiohttp's FileResponse.
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!("\"{mtime:x}-{size:x}\"");
    let start = match (&req.range, &req.if_range) {
        (Some(r), ifr) if ifr.as_deref().is_none_or(|v| v == etag) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok()),
        _ => None,
    };
    let head = match start {
        Some(s) if s >= size => {
            respond(&mut reader, "416 Range Not Satisfiable", "").await;
            return;
        }
        Some(s) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Type: application/x-tar\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\nContent-Range: bytes {s}-{}/{size}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            size - 1,
            size - s
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        ),
    };
    let start = start.unwrap_or(0);
    if stream.write_all(head.as_bytes()).await.is_err()
        || file.seek(std::io::SeekFrom::Start(start)).await.is_err()
    {
        return;
    }
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = file.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            break;
        }
        let mut n = n;
        if let Some(limit) = cut
            && sent + n as u64 > limit
        {
            n = (limit - sent) as usize;
            let _ = stream.write_all(&buf[..n]).await;
            return;
        }
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
        sent += n as u64;
    }
    let _ = stream.shutdown().await;
}

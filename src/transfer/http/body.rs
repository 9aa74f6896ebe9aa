//! The response body of a download: decoding `Content-Length`, `chunked` and close-delimited
//! bodies into chunks of bounded size and handing them to the writer, with the bandwidth limit,
//! the idle timeout, the announced-size check and progress. It never writes to disk itself.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::response::Framing;
use super::{CHUNK, TransferError, dropped, silent};
use crate::transfer::PullOptions;
use crate::transfer::pull::Progress;

/// Streams the body to the writer; returns the number of body bytes received.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    framing: Framing,
    url: &str,
    idle: Duration,
    opts: &PullOptions,
    start: u64,
    total_hint: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<u64, TransferError> {
    let mut progress = Progress::new(opts.progress, start, total_hint.unwrap_or(0));
    let clock = tokio::time::Instant::now();
    let mut body = Body::new(framing);
    let mut received = 0u64;
    loop {
        if let Some(limit) = opts.bandwidth_limit.filter(|l| *l > 0) {
            let due = Duration::from_secs_f64(received as f64 / limit as f64);
            tokio::time::sleep_until(clock + due).await;
        }
        let chunk = tokio::time::timeout(idle, body.next(reader, url))
            .await
            .map_err(|_| silent(url, idle))??;
        let Some(chunk) = chunk else { break };
        received += chunk.len() as u64;
        if let Some(limit) = total_hint
            && start + received > limit
        {
            return Err(TransferError::SizeMismatch {
                path: url.to_string(),
                what: "the announced size",
                expected: limit,
                actual: start + received,
            });
        }
        if tx.send(chunk).await.is_err() {
            // The writer stopped; the caller reports its error.
            return Ok(received);
        }
        progress.update(start + received);
    }
    progress.finish();
    Ok(received)
}

/// The body decoder: yields the payload in chunks of at most [`CHUNK`] bytes, `None` at its end.
pub(super) struct Body {
    framing: Framing,
    /// Bytes left in the body (`Length`) or in the current chunk (`Chunked`).
    left: u64,
    done: bool,
}

impl Body {
    pub(super) fn new(framing: Framing) -> Body {
        Body {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            done: false,
        }
    }

    pub(super) async fn next<R: AsyncBufRead + Unpin>(
        &mut self,
        r: &mut R,
        url: &str,
    ) -> Result<Option<Vec<u8>>, TransferError> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Length(_) => {
                if self.left == 0 {
                    self.done = true;
                    return Ok(None);
                }
                let got = read_some(r, self.left, url).await?;
                if got.is_empty() {
                    // Short: the caller compares what arrived with Content-Length.
                    self.done = true;
                    return Ok(None);
                }
                self.left -= got.len() as u64;
                Ok(Some(got))
            }
            Framing::Close => {
                let got = read_some(r, CHUNK as u64, url).await?;
                if got.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(got))
            }
            Framing::Chunked => {
                if self.left == 0 {
                    self.left = read_chunk_size(r, url).await?;
                    if self.left == 0 {
                        skip_trailers(r, url).await?;
                        self.done = true;
                        return Ok(None);
                    }
                }
                let got = read_some(r, self.left, url).await?;
                if got.is_empty() {
                    return Err(TransferError::HttpUnreachable {
                        url: url.to_string(),
                        message: "the connection closed inside a chunk".into(),
                    });
                }
                self.left -= got.len() as u64;
                if self.left == 0 {
                    expect_crlf(r, url).await?;
                }
                Ok(Some(got))
            }
        }
    }
}

/// Up to `max` bytes (and at most [`CHUNK`]); empty at end of stream.
async fn read_some<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: u64,
    url: &str,
) -> Result<Vec<u8>, TransferError> {
    let want = usize::try_from(max).unwrap_or(CHUNK).min(CHUNK);
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let buf = r.fill_buf().await.map_err(|e| dropped(url, &e))?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len().min(want - out.len());
        out.extend_from_slice(&buf[..n]);
        r.consume(n);
        // Hand over what is there rather than wait for a full chunk on a slow link.
        if out.len() >= want / 4 {
            break;
        }
    }
    Ok(out)
}

async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    url: &str,
    what: &str,
) -> Result<Vec<u8>, TransferError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(4097)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| dropped(url, &e))?;
    if n == 0 || !line.ends_with(b"\n") {
        if line.len() > 4096 {
            return Err(TransferError::HttpProtocol {
                url: url.to_string(),
                message: format!("{what} line longer than 4096 bytes"),
            });
        }
        return Err(TransferError::HttpUnreachable {
            url: url.to_string(),
            message: format!("the connection closed in a {what} line"),
        });
    }
    Ok(line)
}

async fn read_chunk_size<R: AsyncBufRead + Unpin>(
    r: &mut R,
    url: &str,
) -> Result<u64, TransferError> {
    let line = read_line(r, url, "chunk size").await?;
    let text = String::from_utf8_lossy(&line);
    let hex = text.split(';').next().unwrap_or("").trim();
    if hex.is_empty() || hex.len() > 15 {
        return Err(TransferError::HttpProtocol {
            url: url.to_string(),
            message: format!("bad chunk size {:?}", text.trim_end()),
        });
    }
    u64::from_str_radix(hex, 16).map_err(|_| TransferError::HttpProtocol {
        url: url.to_string(),
        message: format!("bad chunk size {hex:?}"),
    })
}

async fn expect_crlf<R: AsyncBufRead + Unpin>(r: &mut R, url: &str) -> Result<(), TransferError> {
    let line = read_line(r, url, "chunk end").await?;
    if line == b"\r\n" || line == b"\n" {
        Ok(())
    } else {
        Err(TransferError::HttpProtocol {
            url: url.to_string(),
            message: "chunk data longer than its size".into(),
        })
    }
}

async fn skip_trailers<R: AsyncBufRead + Unpin>(r: &mut R, url: &str) -> Result<(), TransferError> {
    for _ in 0..64 {
        let line = read_line(r, url, "trailer").await?;
        if line == b"\r\n" || line == b"\n" {
            return Ok(());
        }
    }
    Err(TransferError::HttpProtocol {
        url: url.to_string(),
        message: "more than 64 trailer lines".into(),
    })
}

//! The TCP connection under an SSH session.
//!
//! While a session is being set up (key exchange, login, channel, SFTP start), every read asks the
//! kernel to acknowledge at once (`TCP_QUICKACK`). OpenSSH's sshd leaves Nagle's algorithm on for
//! sessions without a terminal, and right after login it answers in several small writes: the
//! second waits until the first is acknowledged, and Linux delays that acknowledgement by 40 ms
//! once an exchange looks interactive. That was 44 ms of every connection (measured on OpenSSH 9.2,
//! most of the time it took to connect). Once the session is set up, data flows in bulk and the
//! kernel acknowledges promptly on its own, so the extra system call stops.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct Link {
    tcp: TcpStream,
    setting_up: Arc<AtomicBool>,
}

impl Link {
    /// The link, and the switch that ends its set-up phase (store `false` once the session is up).
    pub(crate) fn new(tcp: TcpStream) -> (Self, Arc<AtomicBool>) {
        let setting_up = Arc::new(AtomicBool::new(true));
        let _ = tcp.set_nodelay(true);
        (
            Link {
                tcp,
                setting_up: setting_up.clone(),
            },
            setting_up,
        )
    }

    fn ack_now(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if self.setting_up.load(Ordering::Relaxed) {
            // Only a hint: a refusal costs a delay, never data.
            let _ = self.tcp.set_quickack(true);
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.ack_now();
        }
        polled
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn carries_bytes_both_ways_before_and_after_set_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 70_000];
            for _ in 0..2 {
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            }
        });
        let (mut link, setting_up) = Link::new(TcpStream::connect(addr).await.unwrap());
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        for _ in 0..2 {
            link.write_all(&data).await.unwrap();
            let mut back = vec![0u8; data.len()];
            link.read_exact(&mut back).await.unwrap();
            assert_eq!(back, data);
            setting_up.store(false, Ordering::Relaxed);
        }
        echo.await.unwrap();
    }
}

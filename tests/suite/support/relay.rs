//! A TCP relay between the client under test and a real server, for link faults: it counts what the
//! server sends over each connection, can cut the first connection after some bytes (a link that
//! drops mid-transfer; later connections pass), and can turn away connections beyond a number (a
//! server that takes one connection at a time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// The first connection is torn down once the server has sent this many bytes over it.
    pub cut_first_after: Option<u64>,
    /// Connections let through; later ones are closed as soon as they are accepted.
    pub admit: usize,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            cut_first_after: None,
            admit: usize::MAX,
        }
    }
}

pub struct Relay {
    pub port: u16,
    counts: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and relays to `127.0.0.1:upstream` until the test's runtime ends.
    pub async fn start(upstream: u16, faults: Faults) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts: Arc<Mutex<Vec<Arc<AtomicU64>>>> = Arc::default();
        let seen = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let count = Arc::new(AtomicU64::new(0));
                let limit = {
                    let mut all = seen.lock().unwrap();
                    if all.len() >= faults.admit {
                        drop(client);
                        continue;
                    }
                    all.push(count.clone());
                    if all.len() == 1 {
                        faults.cut_first_after
                    } else {
                        None
                    }
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let sent = count.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        if limit.is_some_and(|l| sent >= l) {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Relay { port, counts }
    }

    /// A relay whose first connection is cut after `cut_after` bytes from the server.
    pub async fn cutting(upstream: u16, cut_after: u64) -> Relay {
        Relay::start(
            upstream,
            Faults {
                cut_first_after: Some(cut_after),
                ..Faults::default()
            },
        )
        .await
    }

    /// Bytes the server sent over each connection let through, in the order they were accepted.
    pub fn carried(&self) -> Vec<u64> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

//! A TCP proxy between hapull and sshd that cuts the first connection once it has carried a given
//! number of bytes from the server, like a flaky link dropping mid-transfer. Later connections pass.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

pub struct CutOnce {
    pub port: u16,
    /// Set once the cut happened.
    pub cut: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
}

impl CutOnce {
    /// Listens on 127.0.0.1:0, forwards to `127.0.0.1:upstream`; the connection that first carries
    /// `cut_after` bytes downstream is torn down in both directions.
    pub fn start(upstream: u16, cut_after: u64) -> CutOnce {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let (c, n) = (cut.clone(), connections.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let cut = c.clone();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(c2, s2, None));
                thread::spawn(move || pump(server, client, Some((cut, cut_after))));
            }
        });
        CutOnce {
            port,
            cut,
            connections,
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Option<(Arc<AtomicBool>, u64)>) {
    let mut buf = [0u8; 32 * 1024];
    let mut carried = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        carried += n as u64;
        if let Some((flag, after)) = &cut
            && carried >= *after
            && !flag.swap(true, Ordering::SeqCst)
        {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

//! SHA-256 of a download on a thread of its own. Hashing is the most expensive thing done to each
//! byte (about as much CPU as everything else in a pull together): on the writer's thread it set the
//! pace of the whole pipeline; beside it, the network, the disk and the hash all proceed at once.
//!
//! What it must not do: see the bytes out of order, or give a digest unless it saw every byte.

use std::thread::JoinHandle;

use aws_lc_rs::digest;
use bytes::Bytes;

use crate::pieces::{self, PieceSender};

/// Batches of pieces (about a MiB each) queued ahead of the hasher.
const QUEUE: usize = 4;

pub(crate) struct Sha256Thread {
    tx: Option<PieceSender>,
    thread: Option<JoinHandle<[u8; 32]>>,
}

impl Sha256Thread {
    pub(crate) fn start() -> std::io::Result<Self> {
        let (tx, rx) = pieces::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("hapull-sha256".into())
            .spawn(move || {
                let mut ctx = digest::Context::new(&digest::SHA256);
                for piece in rx {
                    ctx.update(&piece);
                }
                let mut sha = [0u8; 32];
                sha.copy_from_slice(ctx.finish().as_ref());
                sha
            })?;
        Ok(Sha256Thread {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// The next bytes of the file (shared, not copied). Waits while the hasher is a full queue
    /// behind.
    pub(crate) fn update(&mut self, piece: Bytes) -> std::io::Result<()> {
        match self.tx.as_mut().map(|tx| tx.send(piece)) {
            Some(Ok(())) => Ok(()),
            _ => Err(std::io::Error::other("the SHA-256 thread stopped")),
        }
    }

    /// The digest of everything given to [`Sha256Thread::update`].
    pub(crate) fn finish(mut self) -> std::io::Result<[u8; 32]> {
        let closed = self.tx.take().map(PieceSender::close);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(sha)) if matches!(closed, Some(Ok(()))) => Ok(sha),
            _ => Err(std::io::Error::other("the SHA-256 thread stopped")),
        }
    }
}

impl Drop for Sha256Thread {
    fn drop(&mut self) {
        // An abandoned hash (a failed write) ends with its input; what was gathered is not sent.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_sha256_of_the_pieces_in_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Sha256Thread::start().unwrap();
        for piece in data.chunks(65_537) {
            h.update(Bytes::copy_from_slice(piece)).unwrap();
        }
        let want = digest::digest(&digest::SHA256, &data);
        assert_eq!(h.finish().unwrap().as_slice(), want.as_ref());
        let empty = Sha256Thread::start().unwrap().finish().unwrap();
        assert_eq!(
            hex::encode(empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

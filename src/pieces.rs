//! Pieces of a byte stream handed from one thread to another in batches.
//!
//! A pull hands every network read (about 255 KiB) to the hasher and to the verifier, each on a
//! thread of its own. One piece per hand-off means a thread wake-up per piece whenever either side
//! waits for the other, and on a small machine those wake-ups cost as much as the work. Pieces are
//! therefore gathered into batches of about [`BATCH`] bytes (shared, never copied) and sent together.
//!
//! What it must not do: reorder, drop or duplicate a piece, or hold more than the queue's batches
//! plus the one being gathered.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::{Buf, Bytes};

/// Bytes gathered before a batch is sent.
pub(crate) const BATCH: usize = 1 << 20;

/// The receiving side has gone (it finished early or failed).
#[derive(Debug)]
pub(crate) struct Closed;

/// A bounded, batched queue of byte pieces: at most `batches` batches wait for the receiver.
pub(crate) fn channel(batches: usize) -> (PieceSender, PieceReceiver) {
    let (tx, rx) = sync_channel(batches);
    (
        PieceSender {
            tx: Some(tx),
            pending: Vec::new(),
            pending_len: 0,
        },
        PieceReceiver {
            rx,
            batch: Vec::new().into_iter(),
            current: Bytes::new(),
        },
    )
}

pub(crate) struct PieceSender {
    tx: Option<SyncSender<Vec<Bytes>>>,
    pending: Vec<Bytes>,
    pending_len: usize,
}

impl PieceSender {
    /// Adds a piece; sends the batch once it holds [`BATCH`] bytes (waiting while the queue is full).
    pub(crate) fn send(&mut self, piece: Bytes) -> Result<(), Closed> {
        if piece.is_empty() {
            return Ok(());
        }
        self.pending_len += piece.len();
        self.pending.push(piece);
        if self.pending_len >= BATCH {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Sends whatever has been gathered.
    pub(crate) fn flush(&mut self) -> Result<(), Closed> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending_len = 0;
        let batch = std::mem::take(&mut self.pending);
        match &self.tx {
            Some(tx) if tx.send(batch).is_ok() => Ok(()),
            _ => {
                self.tx = None;
                Err(Closed)
            }
        }
    }

    /// Sends what is gathered and ends the stream: the receiver sees its end after the last piece.
    pub(crate) fn close(mut self) -> Result<(), Closed> {
        self.flush()
    }
}

/// The pieces in the order they were sent, one at a time ([`Iterator`]) or as one stream
/// ([`Read`], [`BufRead`], without copying into a buffer of its own). The stream ends when the
/// sender is dropped or closed.
pub(crate) struct PieceReceiver {
    rx: Receiver<Vec<Bytes>>,
    batch: std::vec::IntoIter<Bytes>,
    current: Bytes,
}

impl Iterator for PieceReceiver {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.current.has_remaining() {
            return Some(std::mem::take(&mut self.current));
        }
        loop {
            if let Some(piece) = self.batch.next() {
                return Some(piece);
            }
            self.batch = self.rx.recv().ok()?.into_iter();
        }
    }
}

impl BufRead for PieceReceiver {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if !self.current.has_remaining() {
            self.current = self.next().unwrap_or_default();
        }
        Ok(self.current.chunk())
    }

    fn consume(&mut self, amt: usize) {
        self.current.advance(amt.min(self.current.remaining()));
    }
}

impl Read for PieceReceiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, buf)
    }
}

/// `Read::read` for a reader that is its own buffer: copies from what `fill_buf` holds.
pub(crate) fn read_buffered<R: BufRead>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let have = r.fill_buf()?;
    let n = have.len().min(buf.len());
    buf[..n].copy_from_slice(&have[..n]);
    r.consume(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn every_piece_arrives_once_and_in_order_whatever_the_sizes() {
        let data = data();
        for size in [1, 4_095, 65_537, BATCH + 1, 2_999_999] {
            let (mut tx, rx) = channel(2);
            let sent = data.clone();
            let sender = std::thread::spawn(move || {
                for piece in sent.chunks(size) {
                    tx.send(Bytes::copy_from_slice(piece)).unwrap();
                }
                tx.send(Bytes::new()).unwrap();
                tx.close().unwrap();
            });
            let got: Vec<u8> = rx.flat_map(|b| b.to_vec()).collect();
            sender.join().unwrap();
            assert_eq!(got, data, "pieces of {size} bytes");
        }
    }

    #[test]
    fn reads_as_one_stream_and_ends_with_the_sender() {
        let data = data();
        let (mut tx, mut rx) = channel(1);
        let sent = data.clone();
        let sender = std::thread::spawn(move || {
            for piece in sent.chunks(100_003) {
                tx.send(Bytes::copy_from_slice(piece)).unwrap();
            }
            // Dropped without close: what was gathered is not sent, the stream just ends.
        });
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert!(got.len() < data.len());
        assert_eq!(got[..], data[..got.len()]);
        assert_eq!(got.len() % 100_003, 0);

        // BufRead: consume part of a piece, then the rest follows.
        let (mut tx, mut rx) = channel(1);
        tx.send(Bytes::from_static(b"abcdef")).unwrap();
        tx.send(Bytes::from_static(b"gh")).unwrap();
        tx.close().unwrap();
        assert_eq!(rx.fill_buf().unwrap(), b"abcdef");
        rx.consume(4);
        let mut rest = String::new();
        rx.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "efgh");
        assert!(rx.fill_buf().unwrap().is_empty());
    }

    #[test]
    fn a_gone_receiver_is_reported() {
        let (mut tx, rx) = channel(1);
        drop(rx);
        assert!(tx.send(Bytes::from(vec![0u8; BATCH])).is_err());
        assert!(tx.send(Bytes::from(vec![0u8; BATCH])).is_err());
    }
}

//! Verifies an archive from its bytes as they arrive, on a thread of its own, so that a pull is
//! checked in the same pass that writes it and the commit needs no second read of the file.
//!
//! The bytes come in as [`Bytes`] (shared with whoever wrote them, not copied) through a bounded
//! queue; the verifier reads them as one stream with the same code as [`super::verify_file_with`].
//! Memory is bounded by the queue and the verifier's own buffers. Nothing is written anywhere:
//! decrypted and inflated data only passes through memory. This module knows nothing of where the
//! bytes come from.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::archive::{ArchiveError, ArchiveSummary, Verify, VerifyOptions, verify_buffered_with};
use super::securetar::Keys;
use crate::pieces::{self, PieceSender};

/// Batches of pieces (about a MiB each) queued ahead of the verifier.
const QUEUE: usize = 4;

/// A verification running beside a download. Feed it every byte of the file, in order, then
/// [`StreamVerifier::finish`].
pub struct StreamVerifier {
    tx: Option<PieceSender>,
    handle: Option<JoinHandle<Result<ArchiveSummary, ArchiveError>>>,
}

impl StreamVerifier {
    /// Starts verifying a stream that should be backup `expected_id`. With `keys`, a protected
    /// backup's inner archives are decrypted and read too (the keys are shared so that the Argon2
    /// root key is derived once per backup, across retries).
    pub fn start(expected_id: &str, mode: Verify, keys: Option<Arc<Mutex<Keys>>>) -> Self {
        let (tx, reader) = pieces::channel(QUEUE);
        let expected_id = expected_id.to_owned();
        let handle = std::thread::Builder::new()
            .name("hapull-verify".to_owned())
            .spawn(move || {
                let mut guard = keys.as_ref().map(|k| k.lock());
                let keys = match &mut guard {
                    Some(Ok(g)) => Some(&mut **g),
                    // A verifier that panicked while holding the keys left them intact: they are
                    // only read after derivation.
                    Some(Err(poisoned)) => Some(&mut **poisoned.get_mut()),
                    None => None,
                };
                let result = verify_buffered_with(
                    reader,
                    &expected_id,
                    VerifyOptions {
                        mode,
                        keys,
                        // The transfer hashes the same bytes already.
                        hash: false,
                    },
                );
                drop(guard);
                result
            });
        match handle {
            Ok(handle) => StreamVerifier {
                tx: Some(tx),
                handle: Some(handle),
            },
            Err(e) => {
                // No thread: report the failure from finish().
                drop(tx);
                StreamVerifier {
                    tx: None,
                    handle: Some(std::thread::spawn(move || {
                        Err(ArchiveError::Open {
                            path: "(verifier thread)".to_owned(),
                            source: e,
                        })
                    })),
                }
            }
        }
    }

    /// The next bytes of the file. Blocks while the verifier is behind by a full queue; once the
    /// verifier has stopped (it found a problem), bytes are dropped.
    pub fn feed(&mut self, bytes: Bytes) {
        if let Some(tx) = &mut self.tx
            && tx.send(bytes).is_err()
        {
            self.tx = None;
        }
    }

    /// Ends the stream and returns what the verifier proved, or why the archive is not intact.
    pub fn finish(mut self) -> Result<ArchiveSummary, ArchiveError> {
        // A verifier that stopped early has its reason; a short stream is found short.
        let _ = self.tx.take().map(PieceSender::close);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(ArchiveError::Open {
                path: "(verifier thread)".to_owned(),
                source: io::Error::other("the verifier stopped unexpectedly"),
            }),
        }
    }
}

impl Drop for StreamVerifier {
    fn drop(&mut self) {
        // An abandoned verification (a failed attempt) ends when its input does; not joined, so
        // dropping never waits.
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> Vec<u8> {
        let json = br#"{"slug":"abc123","name":"t","date":"2026-11-26T09:07:39+00:00","homeassistant":{"version":"2026.11.0"}}"#;
        let mut inner = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        inner.append_data(&mut h, "data/a", &b"abc"[..]).unwrap();
        let inner = inner.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &inner).unwrap();
        let gz = gz.finish().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("./backup.json", &json[..]),
            ("./homeassistant.tar.gz", &gz[..]),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn verifies_what_is_fed_in_any_pieces() {
        let data = backup();
        for piece in [1, 7, 512, 100_000] {
            let mut v = StreamVerifier::start("abc123", Verify::Full, None);
            for c in data.chunks(piece) {
                v.feed(Bytes::copy_from_slice(c));
            }
            let s = v.finish().unwrap();
            assert_eq!(s.size, data.len() as u64);
            assert_eq!(s.level, super::super::Level::Full);
        }
    }

    #[test]
    fn a_short_or_damaged_stream_fails() {
        let data = backup();
        let mut v = StreamVerifier::start("abc123", Verify::Full, None);
        v.feed(Bytes::copy_from_slice(&data[..data.len() - 1024]));
        assert!(v.finish().is_err());
        let mut bad = data.clone();
        // Inside the gzip member (after two headers and backup.json).
        let at = 3 * 512 + 20;
        bad[at] ^= 0xff;
        let mut v = StreamVerifier::start("abc123", Verify::Full, None);
        // Feeding on after the verifier gave up neither blocks nor panics.
        for c in bad.chunks(10) {
            v.feed(Bytes::copy_from_slice(c));
        }
        assert!(v.finish().is_err());
        let mut v = StreamVerifier::start("other", Verify::Full, None);
        v.feed(Bytes::from(data));
        assert!(matches!(v.finish(), Err(ArchiveError::SlugMismatch { .. })));
    }
}

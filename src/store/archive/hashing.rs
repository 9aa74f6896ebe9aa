//! Counting and SHA-256 hashing of the bytes of an archive as they stream past, and the hash of a
//! whole file. It only reads; it never writes or changes a file.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use aws_lc_rs::digest;

use super::READ_BUFFER;

/// Passes bytes through while hashing them.
/// Without hashing it only counts (the SHA-256 is then all zeros).
pub(crate) struct HashingReader<R> {
    inner: R,
    ctx: Option<digest::Context>,
    count: u64,
    /// Set if bytes were consumed that could not be hashed; every later read fails.
    lost: bool,
}

impl<R> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self::with_hash(inner, true)
    }

    pub(crate) fn with_hash(inner: R, hash: bool) -> Self {
        HashingReader {
            inner,
            ctx: hash.then(|| digest::Context::new(&digest::SHA256)),
            count: 0,
            lost: false,
        }
    }

    pub(crate) fn finish(self) -> (u64, [u8; 32]) {
        let mut out = [0u8; 32];
        if let Some(ctx) = self.ctx {
            out.copy_from_slice(ctx.finish().as_ref());
        }
        (self.count, out)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.lost {
            return Err(io::Error::other(
                "the hash lost track of the bytes read (the reader failed mid-buffer)",
            ));
        }
        self.inner.fill_buf()
    }

    /// Hashes exactly the bytes consumed, straight from the inner reader's buffer.
    fn consume(&mut self, amt: usize) {
        if amt == 0 {
            return;
        }
        if let Some(ctx) = &mut self.ctx {
            // The bytes being consumed are the start of the buffer the last fill_buf returned; a
            // filled buffer is returned again without reading.
            match self.inner.fill_buf() {
                Ok(buf) if buf.len() >= amt => ctx.update(&buf[..amt]),
                _ => self.lost = true,
            }
        }
        self.inner.consume(amt);
        self.count += amt as u64;
    }
}

impl<R: BufRead> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::pieces::read_buffered(self, buf)
    }
}

/// Size and SHA-256 of a whole file, streamed.
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut reader = HashingReader::new(BufReader::with_capacity(READ_BUFFER, File::open(path)?));
    loop {
        let n = match reader.fill_buf() {
            Ok(buf) => buf.len(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        reader.consume(n);
    }
    Ok(reader.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_exactly_the_bytes_consumed_however_they_are_read() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        let want = digest::digest(&digest::SHA256, &data);
        // Small buffer under it, reads of odd sizes mixed with partial consumes.
        let mut r = HashingReader::new(BufReader::with_capacity(4096, &data[..]));
        let mut buf = [0u8; 777];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            let have = r.fill_buf().unwrap().len();
            r.consume(have.min(1000));
        }
        let (count, sha) = r.finish();
        assert_eq!(count, data.len() as u64);
        assert_eq!(sha.as_slice(), want.as_ref());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let (size, sha) = hash_file(&path).unwrap();
        assert_eq!((size, sha.as_slice()), (data.len() as u64, want.as_ref()));
    }
}

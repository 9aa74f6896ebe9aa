//! Counting and SHA-256 hashing of the bytes of an archive as they stream past, and the hash of a
//! whole file. It only reads; it never writes or changes a file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use aws_lc_rs::digest;

use super::READ_BUFFER;

/// Passes bytes through while hashing them.
/// Without hashing it only counts (the SHA-256 is then all zeros).
pub(crate) struct HashingReader<R> {
    inner: R,
    ctx: Option<digest::Context>,
    count: u64,
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

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(ctx) = &mut self.ctx {
            ctx.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Size and SHA-256 of a whole file, streamed.
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut reader = HashingReader::new(File::open(path)?);
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(reader.finish())
}

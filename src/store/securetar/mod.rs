//! Decrypts the inner archives of a password-protected Home Assistant backup (SecureTar v1, v2, v3)
//! as a stream, so they can be verified or extracted without ever writing plaintext to disk.
//!
//! Formats (as Home Assistant's `securetar` library writes them):
//! - v1: 16 salt bytes, then AES-128-CBC. Key = SHA-256 applied 100 times to the password, first 16
//!   bytes; IV = SHA-256 applied 100 times to key ‖ salt, first 16 bytes. Old writers padded every
//!   unaligned write, not only the last, so the plaintext is returned unpadded and the gzip layer
//!   above copes with the padding (see [`GzipTrailer`]).
//! - v2: a 32-byte header (`SecureTar`, version, zeros, plaintext size as u64 big-endian, reserved),
//!   16 salt bytes, then AES-128-CBC with PKCS#7 padding at the end. No MAC: a wrong password shows as
//!   a first block that is neither gzip nor tar.
//! - v3: the same header, then Argon2 salt, validation salt, validation key, stream-key salt and a
//!   libsodium secretstream header (136 bytes in all), then XChaCha20-Poly1305 secretstream chunks of
//!   1 MiB plaintext, the last one tagged FINAL. The password is checked against the validation key
//!   (in constant time) before any data is decrypted, and every chunk is authenticated.
//!
//! All primitives come from well-kept crates (`aes`/`cbc`, `argon2`, `blake2`, `dryoc`, aws-lc's
//! SHA-256); this module only lays them out as the format says. It buffers at most one v3 chunk.
//! It never writes anything and never logs or prints the password or keys.

use std::io::{self, BufRead, Read};

use aes::Aes128;
use cbc::cipher::KeyIvInit;
use dryoc::classic::crypto_secretstream_xchacha20poly1305 as secretstream;
use dryoc::constants;
use thiserror::Error;
use zeroize::Zeroizing;

mod keys;
mod legacy;
mod stream;
#[cfg(test)]
mod tests;

pub use keys::Keys;
pub use legacy::GzipTrailer;

use keys::derive_iv;
use stream::open_v3;

const MAGIC: &[u8; 9] = b"SecureTar";
const HEADER_V2: usize = 32;
const SALT: usize = 16;
const V3_HEADER: usize = 136;
const AES_BLOCK: usize = 16;
/// Plaintext bytes per v3 secretstream chunk.
const V3_CHUNK: usize = 1024 * 1024;
/// Bytes a secretstream adds to each chunk (tag byte and 16-byte MAC).
const V3_OVERHEAD: usize = constants::CRYPTO_SECRETSTREAM_XCHACHA20POLY1305_ABYTES;
const TAG_MESSAGE: u8 = constants::CRYPTO_SECRETSTREAM_XCHACHA20POLY1305_TAG_MESSAGE;
const TAG_FINAL: u8 = constants::CRYPTO_SECRETSTREAM_XCHACHA20POLY1305_TAG_FINAL;
const PERSONAL: &[u8; 16] = b"SecureTarv3\0\0\0\0\0";
/// Argon2id parameters of v3: 16 MiB, 8 passes, 1 lane.
const ARGON2_M_KIB: u32 = 16 * 1024;
const ARGON2_T: u32 = 8;
const ARGON2_P: u32 = 1;
/// Ciphertext decrypted per read in the CBC modes.
const CBC_BATCH: usize = 256 * 1024;

/// Why an encrypted member cannot be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SecureTarError {
    #[error(
        "wrong password: the backup password given does not open this backup (give the password \
         Home Assistant used for it: `password_file` in [backup], or --password-file for verify \
         and extract)"
    )]
    WrongPassword,
    #[error("SecureTar version {0} is not supported (known: 1, 2, 3)")]
    UnsupportedVersion(u8),
    #[error("the SecureTar header is damaged ({0})")]
    BadHeader(&'static str),
    #[error("the encrypted data ends early: {0}")]
    Truncated(String),
    #[error("the encrypted data is damaged: {0}")]
    Damaged(String),
}

impl SecureTarError {
    fn io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The SecureTar error inside an I/O error, if that is what it carries.
    pub fn from_io(e: &io::Error) -> Option<&SecureTarError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<SecureTarError>())
    }
}

/// What the plaintext of a member should start with; used to recognise a wrong password in v1/v2,
/// which have no MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    Gzip,
    Tar,
}

/// Whether an inner member starts like SecureTar v2/v3 (v1 has no header and cannot be recognised
/// by its bytes: a protected backup's members without this header are v1).
pub fn has_header(prefix: &[u8]) -> bool {
    prefix.len() >= MAGIC.len() && &prefix[..MAGIC.len()] == MAGIC
}

enum Mode {
    Cbc {
        dec: Box<cbc::Decryptor<Aes128>>,
        /// v2 pads once at the end (PKCS#7); v1 output keeps whatever padding the writer left.
        strip_padding: bool,
    },
    Stream {
        state: Box<secretstream::State>,
        final_seen: bool,
        chunks: u64,
    },
}

/// A reader of the plaintext of one encrypted member. Reading it to its end proves the member
/// decrypts completely (and, for v3, authenticates); errors are [`SecureTarError`]s inside
/// `io::Error` (see [`SecureTarError::from_io`]).
pub struct Decrypt<R> {
    inner: R,
    mode: Mode,
    version: u8,
    expected_size: Option<u64>,
    produced: u64,
    /// Ciphertext read but not yet decrypted (CBC keeps back the last block until the end is known).
    cbuf: Vec<u8>,
    inner_done: bool,
    out: Zeroizing<Vec<u8>>,
    out_pos: usize,
    plain: Plain,
    checked_plain: bool,
    finished: bool,
}

impl<R: BufRead> Decrypt<R> {
    /// Reads the member's SecureTar header (deriving keys as needed) and returns a reader of its
    /// plaintext. A v3 wrong password is reported here, before any data is decrypted.
    pub fn new(mut inner: R, keys: &mut Keys, plain: Plain) -> Result<Self, SecureTarError> {
        let start = inner.fill_buf().map_err(read_err)?;
        let mut header = [0u8; V3_HEADER];
        let (version, mode, expected_size) = if has_header(start) {
            read_exact_or(&mut inner, &mut header[..HEADER_V2])?;
            if header[10..16].iter().any(|&b| b != 0) {
                return Err(SecureTarError::BadHeader("non-zero bytes 10 to 15"));
            }
            let mut size = [0u8; 8];
            size.copy_from_slice(&header[16..24]);
            let size = u64::from_be_bytes(size);
            match header[9] {
                2 => {
                    let mut salt = [0u8; SALT];
                    read_exact_or(&mut inner, &mut salt)?;
                    let key = keys.legacy_key();
                    let iv = derive_iv(&key, &salt);
                    let dec = cbc::Decryptor::<Aes128>::new(&(*key).into(), &iv.into());
                    (
                        2,
                        Mode::Cbc {
                            dec: Box::new(dec),
                            strip_padding: true,
                        },
                        Some(size),
                    )
                }
                3 => {
                    read_exact_or(&mut inner, &mut header[HEADER_V2..])?;
                    let state = open_v3(&header, keys)?;
                    (
                        3,
                        Mode::Stream {
                            state,
                            final_seen: false,
                            chunks: 0,
                        },
                        Some(size),
                    )
                }
                v => return Err(SecureTarError::UnsupportedVersion(v)),
            }
        } else {
            let mut salt = [0u8; SALT];
            read_exact_or(&mut inner, &mut salt)?;
            let key = keys.legacy_key();
            let iv = derive_iv(&key, &salt);
            let dec = cbc::Decryptor::<Aes128>::new(&(*key).into(), &iv.into());
            (
                1,
                Mode::Cbc {
                    dec: Box::new(dec),
                    strip_padding: false,
                },
                None,
            )
        };
        Ok(Decrypt {
            inner,
            mode,
            version,
            expected_size,
            produced: 0,
            cbuf: Vec::new(),
            inner_done: false,
            out: Zeroizing::new(Vec::new()),
            out_pos: 0,
            plain,
            checked_plain: false,
            finished: false,
        })
    }

    /// 1, 2 or 3.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Plaintext bytes returned so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Fills `self.out` with the next plaintext; `false` at the end.
    fn refill(&mut self) -> Result<bool, SecureTarError> {
        if self.finished {
            return Ok(false);
        }
        // Each mode replaces `out` with the next plaintext; the stream mode reuses its memory.
        self.out_pos = 0;
        match &mut self.mode {
            Mode::Cbc { .. } => self.refill_cbc()?,
            Mode::Stream { .. } => self.refill_stream()?,
        }
        if !self.checked_plain && !self.out.is_empty() {
            self.checked_plain = true;
            if !plausible_start(&self.out, self.plain) {
                // Without a MAC (v1, v2) this is how a wrong password shows; v3 checked the
                // password already, so there it means the plaintext is not what the name says.
                return Err(if self.version == 3 {
                    SecureTarError::Damaged(format!(
                        "the decrypted data is not {}",
                        match self.plain {
                            Plain::Gzip => "gzip",
                            Plain::Tar => "a tar archive",
                        }
                    ))
                } else {
                    SecureTarError::WrongPassword
                });
            }
        }
        self.produced += self.out.len() as u64;
        if let Some(expected) = self.expected_size
            && self.produced > expected
        {
            return Err(SecureTarError::Damaged(format!(
                "it decrypts to more than the {expected} bytes its header states"
            )));
        }
        if self.finished
            && let Some(expected) = self.expected_size
            && self.produced != expected
        {
            return Err(SecureTarError::Truncated(format!(
                "it decrypts to {} bytes, its header states {expected}",
                self.produced
            )));
        }
        Ok(!self.out.is_empty() || !self.finished)
    }

    /// Reads ciphertext until `want` bytes are buffered or the member ends.
    fn fill_cbuf(&mut self, want: usize) -> Result<(), SecureTarError> {
        while self.cbuf.len() < want && !self.inner_done {
            let avail = self.inner.fill_buf().map_err(read_err)?;
            if avail.is_empty() {
                self.inner_done = true;
                break;
            }
            let take = avail.len().min(want - self.cbuf.len());
            self.cbuf.extend_from_slice(&avail[..take]);
            self.inner.consume(take);
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Decrypt<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.out_pos >= self.out.len() {
            if !self.refill().map_err(SecureTarError::io)? {
                return Ok(0);
            }
        }
        let n = (self.out.len() - self.out_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// The plaintext is handed out from the decryption buffer itself, so a reader on top (the gzip
/// decoder) needs no buffer and no copy of its own.
impl<R: BufRead> BufRead for Decrypt<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.out_pos >= self.out.len() {
            if !self.refill().map_err(SecureTarError::io)? {
                return Ok(&[]);
            }
        }
        Ok(&self.out[self.out_pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.out_pos = (self.out_pos + amount).min(self.out.len());
    }
}

fn plausible_start(data: &[u8], plain: Plain) -> bool {
    match plain {
        Plain::Gzip => data.len() >= 3 && data[..3] == [0x1f, 0x8b, 0x08],
        // Any tar written by Python has a ustar (or GNU) magic at 257.
        Plain::Tar => data.len() >= 262 && &data[257..262] == b"ustar",
    }
}

fn read_err(e: io::Error) -> SecureTarError {
    SecureTarError::Truncated(e.to_string())
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), SecureTarError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SecureTarError::Truncated("the member ends inside its SecureTar header".to_owned())
        } else {
            read_err(e)
        }
    })
}

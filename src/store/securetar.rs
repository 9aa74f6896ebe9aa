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

use std::fmt;
use std::io::{self, BufRead, Read};

use aes::Aes128;
use aws_lc_rs::digest;
use blake2::Blake2bMac;
use blake2::digest::Mac as _;
use blake2::digest::consts::U32;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use dryoc::classic::crypto_secretstream_xchacha20poly1305 as secretstream;
use dryoc::constants;
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::secret::Secret;

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

/// The backup password with the keys derived from it, cached so that each is derived once per
/// backup (every inner archive of one backup shares the Argon2 salt).
pub struct Keys {
    password: Secret,
    legacy: Option<Zeroizing<[u8; 16]>>,
    root: Option<([u8; SALT], Zeroizing<[u8; 32]>)>,
    /// How many times the Argon2 root key was derived (tests check it is once per backup).
    derivations: u32,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    pub fn new(password: Secret) -> Self {
        Keys {
            password,
            legacy: None,
            root: None,
            derivations: 0,
        }
    }

    pub fn argon2_derivations(&self) -> u32 {
        self.derivations
    }

    /// The v1/v2 AES key: SHA-256 applied 100 times to the password, first 16 bytes.
    fn legacy_key(&mut self) -> Zeroizing<[u8; 16]> {
        if let Some(k) = &self.legacy {
            return k.clone();
        }
        let digest = sha256_100(self.password.expose().as_bytes());
        let mut key = Zeroizing::new([0u8; 16]);
        key.copy_from_slice(&digest[..16]);
        self.legacy = Some(key.clone());
        key
    }

    fn root_key(&mut self, salt: &[u8; SALT]) -> Result<Zeroizing<[u8; 32]>, SecureTarError> {
        if let Some((cached_salt, key)) = &self.root
            && cached_salt == salt
        {
            return Ok(key.clone());
        }
        let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
            .map_err(|_| SecureTarError::BadHeader("Argon2 parameters"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(self.password.expose().as_bytes(), salt, key.as_mut())
            .map_err(|_| SecureTarError::BadHeader("Argon2 salt"))?;
        self.derivations += 1;
        self.root = Some((*salt, key.clone()));
        Ok(key)
    }
}

fn sha256_100(first: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, first).as_ref());
    for _ in 1..100 {
        let d = digest::digest(&digest::SHA256, &out);
        out.copy_from_slice(d.as_ref());
    }
    out
}

fn derive_iv(key: &[u8; 16], salt: &[u8]) -> [u8; 16] {
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(key);
    seed.extend_from_slice(salt);
    let d = sha256_100(&seed);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&d[..16]);
    iv
}

fn blake2b_keyed(root: &[u8; 32], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, SecureTarError> {
    let mac = Blake2bMac::<U32>::new_with_salt_and_personal(Some(root), salt, PERSONAL)
        .map_err(|_| SecureTarError::BadHeader("key derivation parameters"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    Ok(out)
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
        self.out.clear();
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

    fn refill_cbc(&mut self) -> Result<(), SecureTarError> {
        // The first batch must hold a tar header's magic (byte 257) for the password check.
        self.fill_cbuf(CBC_BATCH + AES_BLOCK)?;
        let Mode::Cbc { dec, strip_padding } = &mut self.mode else {
            return Ok(());
        };
        let usable = if self.inner_done {
            if !self.cbuf.len().is_multiple_of(AES_BLOCK) {
                return Err(SecureTarError::Truncated(format!(
                    "the ciphertext is not a whole number of {AES_BLOCK}-byte blocks"
                )));
            }
            self.cbuf.len()
        } else {
            // Keep the last block back: only at the end is it known whether it holds padding.
            (self.cbuf.len() / AES_BLOCK).saturating_sub(1) * AES_BLOCK
        };
        let mut data: Vec<u8> = self.cbuf.drain(..usable).collect();
        let (blocks, _) = cbc::cipher::InOutBuf::from(&mut data[..]).into_chunks();
        dec.decrypt_blocks_inout(blocks);
        if self.inner_done {
            self.finished = true;
            if *strip_padding {
                let pad = data.last().copied().unwrap_or(0);
                let pad_len = usize::from(pad);
                if !(1..=AES_BLOCK).contains(&pad_len)
                    || data.len() < pad_len
                    || data[data.len() - pad_len..].iter().any(|&b| b != pad)
                {
                    return Err(SecureTarError::Damaged(
                        "the final block's padding is invalid".to_owned(),
                    ));
                }
                data.truncate(data.len() - pad_len);
            }
        }
        self.out.extend_from_slice(&data);
        zeroize::Zeroize::zeroize(&mut data);
        Ok(())
    }

    fn refill_stream(&mut self) -> Result<(), SecureTarError> {
        let chunk_ct = V3_CHUNK + V3_OVERHEAD;
        self.fill_cbuf(chunk_ct)?;
        let Mode::Stream {
            state,
            final_seen,
            chunks,
        } = &mut self.mode
        else {
            return Ok(());
        };
        if self.cbuf.is_empty() {
            if *final_seen {
                self.finished = true;
                return Ok(());
            }
            return Err(SecureTarError::Truncated(format!(
                "the stream ends after {chunks} chunks without its final chunk"
            )));
        }
        if *final_seen {
            return Err(SecureTarError::Damaged(
                "data follows the final chunk".to_owned(),
            ));
        }
        if self.cbuf.len() < V3_OVERHEAD {
            return Err(SecureTarError::Truncated(format!(
                "chunk {} is cut short",
                *chunks + 1
            )));
        }
        let mut tag = 0u8;
        self.out.resize(self.cbuf.len() - V3_OVERHEAD, 0);
        let n = secretstream::crypto_secretstream_xchacha20poly1305_pull(
            state,
            &mut self.out,
            &mut tag,
            &self.cbuf,
            None,
        )
        .map_err(|_| {
            if self.cbuf.len() < chunk_ct && self.inner_done {
                SecureTarError::Damaged(format!(
                    "chunk {} fails authentication (the data was altered, or the member is cut \
                     short)",
                    *chunks + 1
                ))
            } else {
                SecureTarError::Damaged(format!(
                    "chunk {} fails authentication (the data was altered)",
                    *chunks + 1
                ))
            }
        })?;
        self.out.truncate(n);
        self.cbuf.clear();
        *chunks += 1;
        let chunk_no = *chunks;
        match tag {
            TAG_FINAL => *final_seen = true,
            TAG_MESSAGE => {}
            other => {
                return Err(SecureTarError::Damaged(format!(
                    "chunk {chunk_no} has unexpected tag {other}"
                )));
            }
        }
        let is_final = *final_seen;
        // A FINAL chunk must be the last thing in the member; look now so the error names it.
        if is_final {
            self.fill_cbuf(1)?;
            if !self.cbuf.is_empty() {
                return Err(SecureTarError::Damaged(format!(
                    "chunk {chunk_no} is marked final but more data follows (an early final chunk)"
                )));
            }
            self.finished = true;
        } else if self.inner_done && self.cbuf.is_empty() {
            return Err(SecureTarError::Truncated(format!(
                "the stream ends after {chunk_no} chunks without its final chunk"
            )));
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

fn open_v3(
    header: &[u8; V3_HEADER],
    keys: &mut Keys,
) -> Result<Box<secretstream::State>, SecureTarError> {
    let mut argon_salt = [0u8; SALT];
    argon_salt.copy_from_slice(&header[32..48]);
    let root = keys.root_key(&argon_salt)?;
    let validation = blake2b_keyed(&root, &header[48..64])?;
    if !bool::from(validation.as_slice().ct_eq(&header[64..96])) {
        return Err(SecureTarError::WrongPassword);
    }
    let stream_key = blake2b_keyed(&root, &header[96..112])?;
    let mut stream_header = [0u8; 24];
    stream_header.copy_from_slice(&header[112..136]);
    let mut state = Box::new(secretstream::State::new());
    secretstream::crypto_secretstream_xchacha20poly1305_init_pull(
        &mut state,
        &stream_header,
        &stream_key,
    );
    Ok(state)
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

/// Where a gzip stream's trailer (CRC-32 and size) sits after the deflate data, and whether it
/// matches. Standard gzip: right after the deflate data, then (inside SecureTar v1) PKCS#7 padding.
/// Old SecureTar v1 writers padded the last deflate write too, so the trailer follows that padding
/// and is itself padded with eight `0x08` bytes.
pub struct GzipTrailer;

impl GzipTrailer {
    /// Checks the bytes after the deflate data (`rest`) against the CRC-32 and length of what was
    /// inflated.
    pub fn check(rest: &[u8], crc: u32, len: u32) -> Result<(), String> {
        let matches = |at: usize| {
            rest.len() >= at + 8
                && rest[at..at + 4] == crc.to_le_bytes()
                && rest[at + 4..at + 8] == len.to_le_bytes()
        };
        let pkcs7 = |bytes: &[u8]| {
            let n = bytes.len();
            (1..=AES_BLOCK).contains(&n) && bytes.iter().all(|&b| usize::from(b) == n)
        };
        // Trailer, then padding to the block (or none, for a plain gzip).
        if matches(0) && (rest.len() == 8 || pkcs7(&rest[8..])) {
            return Ok(());
        }
        // Legacy: padding of the last deflate write, trailer, eight bytes of 0x08.
        if rest.len() >= 16 {
            let p = rest.len() - 16;
            let padded_ok =
                p == 0 || (p < AES_BLOCK && rest[..p].iter().all(|&b| usize::from(b) == p));
            if padded_ok && matches(p) && rest[p + 8..].iter().all(|&b| b == 8) {
                return Ok(());
            }
        }
        if rest.len() < 8 {
            return Err("the gzip trailer is missing (the data ends early)".to_owned());
        }
        Err("the gzip checksum or length does not match the data (it is corrupt)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ArchiveError, Level, Verify, VerifyOptions, verify_reader_with};
    use cbc::cipher::BlockModeEncrypt;
    use std::io::Write;

    const PASSWORD: &str = "pässword 2";

    /// A small inner tar.gz holding one file, as bytes.
    fn inner_tar_gz(content: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "data/configuration.yaml", content)
            .unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn cbc_encrypt(key: &[u8; 16], salt: &[u8; 16], plain: &[u8]) -> Vec<u8> {
        assert_eq!(plain.len() % 16, 0);
        let iv = derive_iv(key, salt);
        let mut enc = cbc::Encryptor::<Aes128>::new(&(*key).into(), &iv.into());
        let mut data = plain.to_vec();
        let (blocks, _) = cbc::cipher::InOutBuf::from(&mut data[..]).into_chunks();
        enc.encrypt_blocks_inout(blocks);
        data
    }

    fn pkcs7(mut data: Vec<u8>) -> Vec<u8> {
        let pad = 16 - data.len() % 16;
        data.extend(std::iter::repeat_n(pad as u8, pad));
        data
    }

    /// SecureTar v1 as writers before 2025 made it: every unaligned write padded, so the padding of
    /// the last deflate write sits before the gzip trailer, which is padded itself.
    fn v1_legacy(gz: &[u8]) -> Vec<u8> {
        let body = &gz[..gz.len() - 8];
        let trailer = &gz[gz.len() - 8..];
        let mut plain = Vec::new();
        for write in body.chunks(10240) {
            if write.len() % 16 == 0 {
                plain.extend_from_slice(write);
            } else {
                plain.extend(pkcs7(write.to_vec()));
            }
        }
        plain.extend(pkcs7(trailer.to_vec()));
        let key: [u8; 16] = sha256_100(PASSWORD.as_bytes())[..16].try_into().unwrap();
        let salt = [7u8; 16];
        let mut out = salt.to_vec();
        out.extend(cbc_encrypt(&key, &salt, &plain));
        out
    }

    fn v1_standard(gz: &[u8]) -> Vec<u8> {
        let key: [u8; 16] = sha256_100(PASSWORD.as_bytes())[..16].try_into().unwrap();
        let salt = [9u8; 16];
        let mut out = salt.to_vec();
        out.extend(cbc_encrypt(&key, &salt, &pkcs7(gz.to_vec())));
        out
    }

    /// SecureTar v3 with the chunks and tags given (`None` = the usual: MESSAGE, ..., FINAL).
    fn v3(plain: &[u8], chunk: usize, tags: Option<Vec<u8>>) -> Vec<u8> {
        let argon_salt = [1u8; 16];
        let validation_salt = [2u8; 16];
        let stream_salt = [3u8; 16];
        let mut keys = Keys::new(Secret::new(PASSWORD));
        let root = keys.root_key(&argon_salt).unwrap();
        let validation = blake2b_keyed(&root, &validation_salt).unwrap();
        let stream_key = blake2b_keyed(&root, &stream_salt).unwrap();
        let mut state = secretstream::State::new();
        let mut sheader = [0u8; 24];
        secretstream::crypto_secretstream_xchacha20poly1305_init_push(
            &mut state,
            &mut sheader,
            &stream_key,
        );
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(3);
        out.extend_from_slice(&[0u8; 6]);
        out.extend_from_slice(&(plain.len() as u64).to_be_bytes());
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&argon_salt);
        out.extend_from_slice(&validation_salt);
        out.extend_from_slice(validation.as_slice());
        out.extend_from_slice(&stream_salt);
        out.extend_from_slice(&sheader);
        let pieces: Vec<&[u8]> = if plain.is_empty() {
            vec![&[]]
        } else {
            plain.chunks(chunk).collect()
        };
        let n = pieces.len();
        let tags = tags.unwrap_or_else(|| {
            (0..n)
                .map(|i| if i + 1 == n { TAG_FINAL } else { TAG_MESSAGE })
                .collect()
        });
        for (piece, tag) in pieces.iter().zip(tags) {
            let mut ct = vec![0u8; piece.len() + V3_OVERHEAD];
            secretstream::crypto_secretstream_xchacha20poly1305_push(
                &mut state, &mut ct, piece, None, tag,
            )
            .unwrap();
            out.extend(ct);
        }
        out
    }

    fn decrypt_all(member: &[u8], password: &str) -> Result<Vec<u8>, SecureTarError> {
        let mut keys = Keys::new(Secret::new(password));
        let mut d = Decrypt::new(member, &mut keys, Plain::Gzip)?;
        let mut out = Vec::new();
        d.read_to_end(&mut out)
            .map_err(|e| SecureTarError::from_io(&e).cloned().unwrap())?;
        Ok(out)
    }

    /// A whole protected backup with one inner member.
    fn backup(member: &[u8]) -> Vec<u8> {
        let json = br#"{"slug":"abc123","name":"t","date":"2026-11-26T09:07:39+00:00","protected":true,"homeassistant":{"version":"2026.11.0"}}"#;
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("./backup.json", &json[..]),
            ("./homeassistant.tar.gz", member),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn verify(
        archive: &[u8],
        password: &str,
    ) -> Result<crate::store::ArchiveSummary, ArchiveError> {
        let mut keys = Keys::new(Secret::new(password));
        verify_reader_with(
            archive,
            "abc123",
            VerifyOptions {
                mode: Verify::Full,
                keys: Some(&mut keys),
                hash: false,
            },
        )
    }

    #[test]
    fn v1_legacy_padding_and_standard_padding_both_verify_fully() {
        let content: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let gz = inner_tar_gz(&content);
        for member in [v1_legacy(&gz), v1_standard(&gz)] {
            let s = verify(&backup(&member), PASSWORD).unwrap();
            assert_eq!((s.level, s.securetar), (Level::Full, Some(1)));
        }
        // The gzip CRC still protects v1: a flipped byte in the middle is refused.
        let mut member = v1_legacy(&gz);
        let mid = member.len() / 2;
        member[mid] ^= 0x40;
        assert!(matches!(
            verify(&backup(&member), PASSWORD),
            Err(ArchiveError::Inner { .. })
        ));
        assert!(matches!(
            verify(&backup(&v1_legacy(&gz)), "other"),
            Err(ArchiveError::WrongPassword { .. })
        ));
    }

    #[test]
    fn v3_reads_every_chunk_and_refuses_truncation_and_misplaced_final() {
        let plain: Vec<u8> = (0..3 * 1000u32).map(|i| (i % 251) as u8).collect();
        let mut good = plain.clone();
        good[..3].copy_from_slice(&[0x1f, 0x8b, 0x08]);
        let member = v3(&good, V3_CHUNK, None);
        assert_eq!(decrypt_all(&member, PASSWORD).unwrap(), good);
        assert_eq!(
            decrypt_all(&member, "wrong").unwrap_err(),
            SecureTarError::WrongPassword
        );

        // Several chunks, as large backups have (small chunks keep the test fast).
        let big: Vec<u8> = (0..(V3_CHUNK * 2 + 100)).map(|i| (i % 253) as u8).collect();
        let mut big = big;
        big[..3].copy_from_slice(&[0x1f, 0x8b, 0x08]);
        let member = v3(&big, V3_CHUNK, None);
        assert_eq!(decrypt_all(&member, PASSWORD).unwrap(), big);

        // Cut at a chunk boundary: the final chunk is missing.
        let cut = V3_HEADER + 2 * (V3_CHUNK + V3_OVERHEAD);
        assert!(matches!(
            decrypt_all(&member[..cut], PASSWORD),
            Err(SecureTarError::Truncated(_))
        ));
        // Cut inside a chunk: it no longer authenticates.
        assert!(matches!(
            decrypt_all(&member[..cut - 1000], PASSWORD),
            Err(SecureTarError::Damaged(_))
        ));
        // No chunk tagged FINAL at all.
        let no_final = v3(&big, V3_CHUNK, Some(vec![TAG_MESSAGE; 3]));
        assert!(matches!(
            decrypt_all(&no_final, PASSWORD),
            Err(SecureTarError::Truncated(_))
        ));
        // FINAL on the first chunk, more after it.
        let early = v3(
            &big,
            V3_CHUNK,
            Some(vec![TAG_FINAL, TAG_MESSAGE, TAG_FINAL]),
        );
        let err = decrypt_all(&early, PASSWORD).unwrap_err();
        assert!(err.to_string().contains("early final"), "{err}");
        // A header that states another size.
        let mut wrong_size = member.clone();
        wrong_size[23] ^= 1;
        assert!(decrypt_all(&wrong_size, PASSWORD).is_err());
        // A flipped bit anywhere in the data.
        let mut flipped = member.clone();
        flipped[V3_HEADER + V3_CHUNK + 5] ^= 1;
        assert!(matches!(
            decrypt_all(&flipped, PASSWORD),
            Err(SecureTarError::Damaged(_))
        ));
    }

    #[test]
    fn v2_truncation_is_refused() {
        let gz = inner_tar_gz(b"hello");
        let key: [u8; 16] = sha256_100(PASSWORD.as_bytes())[..16].try_into().unwrap();
        let salt = [5u8; 16];
        let mut member = Vec::new();
        member.extend_from_slice(MAGIC);
        member.push(2);
        member.extend_from_slice(&[0u8; 6]);
        member.extend_from_slice(&(gz.len() as u64).to_be_bytes());
        member.extend_from_slice(&[0u8; 8]);
        member.extend_from_slice(&salt);
        member.extend(cbc_encrypt(&key, &salt, &pkcs7(gz.clone())));
        assert_eq!(decrypt_all(&member, PASSWORD).unwrap(), gz);
        assert!(verify(&backup(&member), PASSWORD).is_ok());
        for cut in [member.len() - 16, member.len() - 5, 40] {
            assert!(decrypt_all(&member[..cut], PASSWORD).is_err(), "cut {cut}");
            assert!(
                verify(&backup(&member[..cut]), PASSWORD).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn legacy_iv_and_key_are_iterated_sha256() {
        // One SHA-256 of "" is e3b0...; the 100-fold iteration must differ from a single one.
        let once = digest::digest(&digest::SHA256, b"");
        assert_ne!(sha256_100(b"")[..], once.as_ref()[..]);
        let mut k = Keys::new(Secret::new("pw"));
        assert_eq!(*k.legacy_key(), *k.legacy_key());
    }

    #[test]
    fn gzip_trailer_layouts() {
        let crc = 0x0102_0304u32;
        let len = 77u32;
        let mut t = Vec::new();
        t.extend_from_slice(&crc.to_le_bytes());
        t.extend_from_slice(&len.to_le_bytes());
        assert!(GzipTrailer::check(&t, crc, len).is_ok());
        let mut padded = t.clone();
        padded.extend_from_slice(&[8u8; 8]);
        assert!(GzipTrailer::check(&padded, crc, len).is_ok());
        let mut legacy = vec![3u8; 3];
        legacy.extend_from_slice(&t);
        legacy.extend_from_slice(&[8u8; 8]);
        assert!(GzipTrailer::check(&legacy, crc, len).is_ok());
        assert!(GzipTrailer::check(&legacy, crc ^ 1, len).is_err());
        assert!(GzipTrailer::check(&t[..5], crc, len).is_err());
    }
}

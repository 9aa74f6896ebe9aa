//! SecureTar v1 and v2: AES-128-CBC decryption of a member's ciphertext, and the gzip trailer check
//! that copes with the padding old v1 writers put before it. It only decrypts what [`Decrypt`]
//! hands it; it never writes anything.

use std::io::BufRead;

use cbc::cipher::BlockModeDecrypt;

use super::{AES_BLOCK, CBC_BATCH, Decrypt, Mode, SecureTarError};

impl<R: BufRead> Decrypt<R> {
    pub(super) fn refill_cbc(&mut self) -> Result<(), SecureTarError> {
        self.out.clear();
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

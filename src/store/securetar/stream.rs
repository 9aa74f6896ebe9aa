//! SecureTar v3: the password check against the header's validation key and the
//! XChaCha20-Poly1305 secretstream, one authenticated chunk at a time. It holds at most one chunk
//! and never returns data that did not authenticate; it never writes anything.

use std::io::BufRead;

use dryoc::classic::crypto_secretstream_xchacha20poly1305 as secretstream;
use subtle::ConstantTimeEq;

use super::keys::blake2b_keyed;
use super::{
    Decrypt, Keys, Mode, SALT, SecureTarError, TAG_FINAL, TAG_MESSAGE, V3_CHUNK, V3_HEADER,
    V3_OVERHEAD,
};

impl<R: BufRead> Decrypt<R> {
    pub(super) fn refill_stream(&mut self) -> Result<(), SecureTarError> {
        let chunk_ct = V3_CHUNK + V3_OVERHEAD;
        self.fill_cbuf(chunk_ct)?;
        // Only the end and the errors below leave `out` without a new chunk: they leave it empty.
        let keep = std::mem::take(&mut self.out);
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
        // The previous chunk's buffer is reused as it is (it is overwritten): no clearing per chunk.
        self.out = keep;
        let need = self.cbuf.len() - V3_OVERHEAD;
        if self.out.len() < need {
            self.out.resize(need, 0);
        }
        self.out.truncate(need);
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

pub(super) fn open_v3(
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

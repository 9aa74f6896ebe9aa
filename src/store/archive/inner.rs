//! Reading one inner archive of a backup (`homeassistant.tar.gz`, an add-on's `.tar.gz` or `.tar`):
//! decrypting it when the backup is protected, decompressing it, walking its tar headers to the end
//! and checking that nothing but the expected trailer follows. Shared by verification and
//! extraction. It never writes anything; decrypted data lives only in bounded buffers.

use std::io::{self, BufRead, Read};

use flate2::CrcReader;
use flate2::bufread::{DeflateDecoder, MultiGzDecoder};

use super::{ArchiveError, plain_name};
use crate::store::securetar::{Decrypt, GzipTrailer, Keys, Plain, SecureTarError};
use crate::store::tar_stream::{Member, TarError, TarStream, shown};

/// `Some(gzip)` for a member that is an inner archive (`.tar.gz`/`.tgz` or `.tar`).
pub(crate) fn inner_kind(name: &str) -> Option<bool> {
    let plain = plain_name(name);
    if plain.ends_with(".tar.gz") || plain.ends_with(".tgz") {
        Some(true)
    } else if plain.ends_with(".tar") {
        Some(false)
    } else {
        None
    }
}

/// Why an inner archive could not be read.
#[derive(Debug)]
pub(crate) enum InnerFailure {
    WrongPassword,
    Bad(String),
}

/// The plaintext tar stream of one inner archive: decrypted (when `keys` is given: the backup is
/// protected) and decompressed (when `gzip`). [`InnerTar::finish`] checks what follows the data.
pub(crate) enum InnerTar<B: BufRead> {
    Plain(B),
    Gz(MultiGzDecoder<B>),
    Enc(Decrypt<B>),
    EncGz(MultiGzDecoder<Decrypt<B>>),
    /// SecureTar v1 with gzip: inflated as raw deflate, because old writers put padding before the
    /// gzip trailer (see [`GzipTrailer`]).
    LegacyGz(CrcReader<DeflateDecoder<Decrypt<B>>>),
}

/// Largest gzip header field (file name, comment, extra) accepted before the data.
const GZIP_FIELD_LIMIT: usize = 64 * 1024;

impl<B: BufRead> InnerTar<B> {
    /// Opens an inner archive. Returns the stream and the SecureTar version when encrypted.
    pub(crate) fn open(
        data: B,
        gzip: bool,
        keys: Option<&mut Keys>,
    ) -> Result<(Self, Option<u8>), InnerFailure> {
        let Some(keys) = keys else {
            return Ok((
                if gzip {
                    InnerTar::Gz(MultiGzDecoder::new(data))
                } else {
                    InnerTar::Plain(data)
                },
                None,
            ));
        };
        let plain = if gzip { Plain::Gzip } else { Plain::Tar };
        let dec = Decrypt::new(data, keys, plain).map_err(securetar_failure)?;
        let version = dec.version();
        // Decrypt is a BufRead: the decoders read straight from its buffer.
        let buffered = dec;
        let stream = match (gzip, version) {
            (false, _) => InnerTar::Enc(buffered),
            (true, 1) => {
                let mut buffered = buffered;
                skip_gzip_header(&mut buffered)?;
                InnerTar::LegacyGz(CrcReader::new(DeflateDecoder::new(buffered)))
            }
            (true, _) => InnerTar::EncGz(MultiGzDecoder::new(buffered)),
        };
        Ok((stream, Some(version)))
    }

    /// After the tar stream ended: checks that nothing but the expected trailer follows.
    pub(crate) fn finish(self) -> Result<(), InnerFailure> {
        match self {
            InnerTar::Plain(_) => Ok(()),
            InnerTar::Enc(mut r) => drain_to_end(&mut r),
            InnerTar::Gz(gz) => nothing_after_gzip(gz.into_inner()),
            InnerTar::EncGz(gz) => nothing_after_gzip(gz.into_inner()),
            InnerTar::LegacyGz(crc) => {
                let (sum, amount) = (crc.crc().sum(), crc.crc().amount());
                let mut rest = Vec::new();
                crc.into_inner()
                    .into_inner()
                    .take(64)
                    .read_to_end(&mut rest)
                    .map_err(io_failure)?;
                if rest.len() > 32 {
                    return Err(InnerFailure::Bad(
                        "data follows the end of the gzip stream".to_owned(),
                    ));
                }
                GzipTrailer::check(&rest, sum, amount).map_err(InnerFailure::Bad)
            }
        }
    }
}

impl<B: BufRead> Read for InnerTar<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            InnerTar::Plain(r) => r.read(buf),
            InnerTar::Gz(r) => r.read(buf),
            InnerTar::Enc(r) => r.read(buf),
            InnerTar::EncGz(r) => r.read(buf),
            InnerTar::LegacyGz(r) => r.read(buf),
        }
    }
}

fn nothing_after_gzip<B: BufRead>(mut rest: B) -> Result<(), InnerFailure> {
    // Anything left after the gzip stream would be bytes no restore ever reads.
    match rest.fill_buf() {
        Ok([]) => Ok(()),
        Ok(_) => Err(InnerFailure::Bad(
            "data follows the end of the gzip stream".to_owned(),
        )),
        Err(e) => Err(io_failure(e)),
    }
}

fn drain_to_end<R: Read>(r: &mut R) -> Result<(), InnerFailure> {
    let mut buf = [0u8; 512];
    match r.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(_) => Err(InnerFailure::Bad(
            "data follows the end of the tar archive".to_owned(),
        )),
        Err(e) => Err(io_failure(e)),
    }
}

fn securetar_failure(e: SecureTarError) -> InnerFailure {
    match e {
        SecureTarError::WrongPassword => InnerFailure::WrongPassword,
        other => InnerFailure::Bad(other.to_string()),
    }
}

fn io_failure(e: io::Error) -> InnerFailure {
    match SecureTarError::from_io(&e) {
        Some(st) => securetar_failure(st.clone()),
        None => InnerFailure::Bad(e.to_string()),
    }
}

/// Skips a gzip member header (RFC 1952), leaving the reader at the deflate data.
fn skip_gzip_header<R: BufRead>(r: &mut R) -> Result<(), InnerFailure> {
    let bad = |what: &str| InnerFailure::Bad(format!("the gzip header is invalid ({what})"));
    let mut fixed = [0u8; 10];
    r.read_exact(&mut fixed).map_err(io_failure)?;
    if fixed[..3] != [0x1f, 0x8b, 0x08] {
        return Err(bad("no gzip magic"));
    }
    let flags = fixed[3];
    if flags & 0x04 != 0 {
        let mut xlen = [0u8; 2];
        r.read_exact(&mut xlen).map_err(io_failure)?;
        let mut extra = vec![0u8; usize::from(u16::from_le_bytes(xlen))];
        r.read_exact(&mut extra).map_err(io_failure)?;
    }
    for flag in [0x08u8, 0x10] {
        if flags & flag != 0 {
            let mut field = Vec::new();
            r.take(GZIP_FIELD_LIMIT as u64)
                .read_until(0, &mut field)
                .map_err(io_failure)?;
            if field.last() != Some(&0) {
                return Err(bad("an unterminated or oversized name or comment"));
            }
        }
    }
    if flags & 0x02 != 0 {
        let mut crc = [0u8; 2];
        r.read_exact(&mut crc).map_err(io_failure)?;
    }
    Ok(())
}

/// Reads an inner archive member to its end: decrypt (protected backups), gunzip (when `gzip`) and
/// walk its tar headers, skipping file data. A short outer file is reported as outer truncation, not
/// as inner corruption. Returns the SecureTar version of an encrypted member.
pub(super) fn check_inner<R: BufRead>(
    outer: &mut TarStream<R>,
    member: &Member,
    gzip: bool,
    keys: Option<&mut Keys>,
) -> Result<Option<u8>, ArchiveError> {
    let result = (|| {
        // The outer stream is buffered: the member's data is read straight from its buffer.
        let (stream, version) = InnerTar::open(outer.data(), gzip, keys)?;
        let mut tar = TarStream::new(stream);
        walk(&mut tar).map_err(|e| describe_inner(e, gzip))?;
        tar.into_inner().finish()?;
        Ok(version)
    })();
    // A short outer file is the more useful diagnosis than whatever the decoder tripped over first,
    // so on an inner failure read on to the end of the member to see whether it is all there.
    if result.is_err() && !outer.was_truncated() {
        let _ = outer.skip_rest();
    }
    match result {
        Ok(version) => Ok(version),
        Err(_) if outer.was_truncated() => Err(ArchiveError::Outer(TarError::Truncated {
            offset: outer.offset(),
            what: format!("member {}", shown(&member.name)),
        })),
        Err(InnerFailure::WrongPassword) => Err(ArchiveError::WrongPassword {
            member: shown(&member.name),
        }),
        Err(InnerFailure::Bad(detail)) => Err(ArchiveError::Inner {
            member: shown(&member.name),
            detail,
        }),
    }
}

fn walk<R: Read>(tar: &mut TarStream<R>) -> Result<(), TarError> {
    while tar.next_member()?.is_some() {}
    Ok(())
}

fn describe_inner(e: TarError, gzip: bool) -> InnerFailure {
    match e {
        TarError::Io { source, .. } => match SecureTarError::from_io(&source) {
            Some(SecureTarError::WrongPassword) => InnerFailure::WrongPassword,
            Some(st) => InnerFailure::Bad(st.to_string()),
            None if gzip => InnerFailure::Bad(format!("gzip data is corrupt ({source})")),
            None => InnerFailure::Bad(format!("its tar content is invalid: {source}")),
        },
        other => InnerFailure::Bad(format!("its tar content is invalid: {other}")),
    }
}

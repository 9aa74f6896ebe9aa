//! A strict, streaming reader of tar headers for verifying archives without extracting them.
//!
//! The `tar` crate is built for extraction and is forgiving where a verifier must not be: it treats an
//! early end of file as a normal end of archive and reads GNU long-name and pax headers of any declared
//! size into memory. This reader insists on the end-of-archive marker, reports a short member as
//! truncation, caps every piece of metadata it buffers, and never allocates in proportion to a size
//! field. It never writes anything anywhere: member names and link targets are untrusted data; the
//! extractor (`extract.rs`) is the one place that turns them into paths, after checking them.

use std::io::{self, BufRead, Read};

use thiserror::Error;

const BLOCK: usize = 512;
const BLOCK_U64: u64 = 512;

/// The most metadata (pax records, GNU long names) buffered for one member. Real archives use a few
/// hundred bytes; a hostile header declaring gigabytes is refused instead of allocated.
pub const EXTENSION_LIMIT: u64 = 1024 * 1024;

const SKIP_CHUNK: usize = 256 * 1024;

/// What is wrong with a tar stream, with the byte offset (in that stream) where it was found.
#[derive(Debug, Error)]
pub enum TarError {
    #[error("read failed at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error(
        "it ends at byte {offset} inside {what}: the file is truncated (an interrupted copy, or a \
         backup that was still being written)"
    )]
    Truncated { offset: u64, what: String },
    #[error(
        "it ends at byte {offset} without the end-of-archive marker (two zero blocks): the file is \
         truncated or still being written"
    )]
    MissingEnd { offset: u64 },
    #[error(
        "the header at byte {offset} has a bad checksum (stored {stored}, computed {computed}): the \
         data is corrupt or this is not a tar archive"
    )]
    BadChecksum {
        offset: u64,
        stored: String,
        computed: u32,
    },
    #[error("the header at byte {offset} has an unreadable {field} field: the data is corrupt")]
    BadField { offset: u64, field: &'static str },
    #[error(
        "the {kind} header at byte {offset} declares {size} bytes of metadata, over the {limit}-byte \
         limit: refusing a crafted or corrupt archive"
    )]
    ExtensionTooLarge {
        offset: u64,
        kind: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("the pax header at byte {offset} is malformed ({reason})")]
    BadPax { offset: u64, reason: &'static str },
    #[error("the extended header at byte {offset} is not followed by the member it describes")]
    DanglingExtension { offset: u64 },
    #[error("non-zero data at byte {offset}, after the end-of-archive marker")]
    TrailingData { offset: u64 },
}

/// One member's header, after pax and GNU extension headers have been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The stored name, lossily decoded. Untrusted: never used as a path without checking.
    pub name: String,
    /// The type flag byte (`b'0'`, `b'5'`, ...).
    pub kind: u8,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// Offset of the member's (first) header in the stream.
    pub offset: u64,
    /// Target of a symbolic or hard link (pax `linkpath`, GNU long link, or the header field).
    /// Untrusted, like the name.
    pub link: String,
    /// Permission bits from the header.
    pub mode: u32,
}

impl Member {
    pub fn is_regular_file(&self) -> bool {
        matches!(self.kind, b'0' | 0 | b'7')
    }
}

/// Reads members one after the other; data not read by the caller is skipped (read and discarded, so
/// a hashing reader underneath still sees every byte).
pub struct TarStream<R> {
    inner: R,
    offset: u64,
    remaining: u64,
    padding: u64,
    current: String,
    finished: bool,
    /// Set when the underlying stream ended inside a member's data, so callers that wrapped the member
    /// in a decoder can tell "the outer file is short" from "the inner data is corrupt".
    truncated: bool,
    scratch: Vec<u8>,
}

impl<R: Read> TarStream<R> {
    pub fn new(inner: R) -> Self {
        TarStream {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            current: String::new(),
            finished: false,
            truncated: false,
            scratch: Vec::new(),
        }
    }

    /// Bytes consumed from the underlying reader so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn was_truncated(&self) -> bool {
        self.truncated
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next member, or `None` after a valid end-of-archive marker followed only by zero padding
    /// up to the end of the stream.
    pub fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;

        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut pax_link: Option<String> = None;
        let mut pax_path: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        let mut first_offset: Option<u64> = None;

        loop {
            let header_offset = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return Err(TarError::MissingEnd {
                    offset: header_offset,
                });
            }
            if block.iter().all(|&b| b == 0) {
                if let Some(offset) = first_offset {
                    return Err(TarError::DanglingExtension { offset });
                }
                self.finish_after_zero_block()?;
                return Ok(None);
            }
            check_checksum(&block, header_offset)?;
            first_offset.get_or_insert(header_offset);

            let kind = block[156];
            let header_size = parse_numeric(&block[124..136]).ok_or(TarError::BadField {
                offset: header_offset,
                field: "size",
            })?;

            match kind {
                b'x' => {
                    let data = self.read_extension(header_offset, "pax", header_size)?;
                    let (path, size, link) = parse_pax(&data, header_offset)?;
                    if path.is_some() {
                        pax_path = path;
                    }
                    if size.is_some() {
                        pax_size = size;
                    }
                    if link.is_some() {
                        pax_link = link;
                    }
                    continue;
                }
                b'L' => {
                    let data = self.read_extension(header_offset, "GNU long name", header_size)?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                    continue;
                }
                b'K' => {
                    let data = self.read_extension(header_offset, "GNU long link", header_size)?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    long_link = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                    continue;
                }
                b'g' => {
                    // Global pax records do not affect what is verified or extracted.
                    self.begin_data(header_size, "an extended header");
                    self.skip_rest()?;
                    continue;
                }
                _ => {}
            }

            let name = match (pax_path, long_name) {
                (Some(p), _) => p,
                (None, Some(l)) => l,
                (None, None) => header_name(&block),
            };
            let size = pax_size.unwrap_or(header_size);
            let link = match (pax_link, long_link) {
                (Some(l), _) | (None, Some(l)) => l,
                (None, None) => String::from_utf8_lossy(cstr(&block[157..257])).into_owned(),
            };
            let mode = parse_octal(&block[100..108]).unwrap_or(0o644) as u32 & 0o7777;
            // Links, devices, directories and fifos carry no data even if a size is stored; this is
            // how Python's tarfile (which writes and reads Home Assistant's archives) treats them.
            let data_size = if matches!(kind, b'1'..=b'6') { 0 } else { size };
            self.begin_data(data_size, &name);
            return Ok(Some(Member {
                name,
                kind,
                size: data_size,
                offset: first_offset.unwrap_or(header_offset),
                link,
                mode,
            }));
        }
    }

    /// A reader over the unread data of the current member.
    pub fn data(&mut self) -> MemberData<'_, R> {
        MemberData { stream: self }
    }

    fn begin_data(&mut self, size: u64, what: &str) {
        self.remaining = size;
        self.padding = (BLOCK_U64 - size % BLOCK_U64) % BLOCK_U64;
        self.current.clear();
        self.current.push_str(what);
    }

    fn read_extension(
        &mut self,
        offset: u64,
        kind: &'static str,
        size: u64,
    ) -> Result<Vec<u8>, TarError> {
        if size > EXTENSION_LIMIT {
            return Err(TarError::ExtensionTooLarge {
                offset,
                kind,
                size,
                limit: EXTENSION_LIMIT,
            });
        }
        self.begin_data(size, kind);
        let mut data = Vec::new();
        let read = self.data().read_to_end(&mut data);
        if let Err(source) = read {
            return Err(self.map_data_error(source));
        }
        self.skip_rest()?;
        Ok(data)
    }

    fn map_data_error(&self, source: io::Error) -> TarError {
        if self.truncated {
            TarError::Truncated {
                offset: self.offset,
                what: format!("member {}", shown(&self.current)),
            }
        } else {
            TarError::Io {
                offset: self.offset,
                source,
            }
        }
    }

    /// Discards what is left of the current member's data and padding.
    pub fn skip_rest(&mut self) -> Result<(), TarError> {
        // A crafted size field can be close to u64::MAX: saturate, then run into the end of the stream.
        let mut left = self.remaining.saturating_add(self.padding);
        if left == 0 {
            return Ok(());
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; SKIP_CHUNK];
        }
        while left > 0 {
            let want = usize::try_from(left.min(SKIP_CHUNK as u64)).unwrap_or(SKIP_CHUNK);
            let n = read_at(&mut self.inner, &mut self.scratch[..want], self.offset)?;
            if n == 0 {
                self.truncated = true;
                return Err(TarError::Truncated {
                    offset: self.offset,
                    what: format!("member {}", shown(&self.current)),
                });
            }
            self.offset += n as u64;
            left -= n as u64;
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Reads a whole block; `false` on a clean end of stream at a block boundary.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            match read_at(
                &mut self.inner,
                &mut block[filled..],
                self.offset + filled as u64,
            )? {
                0 => break,
                n => filled += n,
            }
        }
        self.offset += filled as u64;
        match filled {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(TarError::Truncated {
                offset: self.offset,
                what: "a header block".to_owned(),
            }),
        }
    }

    /// After one zero block: a second must follow, then only zeros (writers pad to a record size).
    fn finish_after_zero_block(&mut self) -> Result<(), TarError> {
        let at = self.offset;
        let mut block = [0u8; BLOCK];
        if !self.read_block(&mut block)? {
            return Err(TarError::MissingEnd { offset: at });
        }
        if block.iter().any(|&b| b != 0) {
            return Err(TarError::TrailingData { offset: at });
        }
        let mut buf = [0u8; 8192];
        loop {
            let n = read_at(&mut self.inner, &mut buf, self.offset)?;
            if n == 0 {
                break;
            }
            if let Some(pos) = buf[..n].iter().position(|&b| b != 0) {
                return Err(TarError::TrailingData {
                    offset: self.offset + pos as u64,
                });
            }
            self.offset += n as u64;
        }
        self.finished = true;
        Ok(())
    }
}

/// One `read`, retried when interrupted; an I/O error is reported at `offset`.
fn read_at<R: Read>(inner: &mut R, buf: &mut [u8], offset: u64) -> Result<usize, TarError> {
    loop {
        match inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(TarError::Io { offset, source }),
            Ok(n) => return Ok(n),
        }
    }
}

/// The stream ended inside the current member: marks it truncated and says so. (Fields, not the
/// stream, so that it can be called while the stream's buffer is borrowed.)
fn cut_short(truncated: &mut bool, current: &str, remaining: u64) -> io::Error {
    *truncated = true;
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("member {} ends {remaining} bytes early", shown(current)),
    )
}

/// Data of the current member; reading past it returns end of file. An underlying end of file before
/// the member is complete is an `UnexpectedEof` error, never a silent short read.
pub struct MemberData<'a, R> {
    stream: &'a mut TarStream<R>,
}

impl<R: Read> Read for MemberData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &mut *self.stream;
        if s.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(s.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = s.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(cut_short(&mut s.truncated, &s.current, s.remaining));
        }
        s.offset += n as u64;
        s.remaining -= n as u64;
        Ok(n)
    }
}

/// Over a buffered stream the member's data is handed out from that buffer, so a decoder on top
/// needs no buffer (and no copy) of its own. The same limits as `read`: never past the member, and an
/// early end of the stream is `UnexpectedEof`.
impl<R: BufRead> BufRead for MemberData<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let s = &mut *self.stream;
        if s.remaining == 0 {
            return Ok(&[]);
        }
        let remaining = usize::try_from(s.remaining).unwrap_or(usize::MAX);
        let buf = s.inner.fill_buf()?;
        if buf.is_empty() {
            return Err(cut_short(&mut s.truncated, &s.current, s.remaining));
        }
        Ok(&buf[..buf.len().min(remaining)])
    }

    fn consume(&mut self, amount: usize) {
        let s = &mut *self.stream;
        let amount = u64::try_from(amount).unwrap_or(u64::MAX).min(s.remaining);
        // `amount` fits in usize: it is at most what fill_buf returned.
        s.inner.consume(usize::try_from(amount).unwrap_or(0));
        s.offset += amount;
        s.remaining -= amount;
    }
}

/// A name from an untrusted archive, made safe to print: escaped and shortened.
pub fn shown(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(120)
        .flat_map(char::escape_debug)
        .collect();
    if name.chars().count() > 120 {
        out.push('…');
    }
    format!("\"{out}\"")
}

fn check_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let field = &block[148..156];
    let stored = parse_octal(field);
    let mut unsigned: u32 = 0;
    let mut signed: i32 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    // Some historic writers summed signed bytes; readers accept either.
    let ok = match stored {
        Some(v) => v == u64::from(unsigned) || i64::try_from(v).ok() == Some(i64::from(signed)),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TarError::BadChecksum {
            offset,
            stored: String::from_utf8_lossy(field).escape_debug().to_string(),
            computed: unsigned,
        })
    }
}

/// Octal (NUL/space terminated, leading spaces allowed) or GNU base-256 (high bit set).
fn parse_numeric(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            if first == 0xff {
                return None; // negative
            }
            let mut v: u64 = u64::from(first & 0x7f);
            for &b in &field[1..] {
                v = v.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            Some(v)
        }
        _ => parse_octal(field),
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|&b| b != b' ')?;
    let rest = &field[start..];
    let end = rest
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(rest.len());
    if !rest[end..].iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    let digits = &rest[..end];
    if digits.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn header_name(block: &[u8; BLOCK]) -> String {
    let name = cstr(&block[0..100]);
    let is_ustar = &block[257..263] == b"ustar\0";
    let prefix = if is_ustar {
        cstr(&block[345..500])
    } else {
        &[]
    };
    if prefix.is_empty() {
        String::from_utf8_lossy(name).into_owned()
    } else {
        let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
        full.extend_from_slice(prefix);
        full.push(b'/');
        full.extend_from_slice(name);
        String::from_utf8_lossy(&full).into_owned()
    }
}

/// The `path`, `size` and `linkpath` of pax records.
type PaxFields = (Option<String>, Option<u64>, Option<String>);

/// Parses pax records (`"<len> <key>=<value>\n"`), returning `path`, `size` and `linkpath` if
/// present.
fn parse_pax(data: &[u8], offset: u64) -> Result<PaxFields, TarError> {
    let bad = |reason| TarError::BadPax { offset, reason };
    let mut path = None;
    let mut size = None;
    let mut link = None;
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(bad("record without a length"))?;
        let len_text =
            std::str::from_utf8(&rest[..space]).map_err(|_| bad("non-numeric length"))?;
        let len: usize = len_text.parse().map_err(|_| bad("non-numeric length"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad("record length out of range"));
        }
        let record = &rest[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or(bad("record not ended by a newline"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(bad("record without '='"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => path = Some(String::from_utf8_lossy(value).into_owned()),
            b"linkpath" => link = Some(String::from_utf8_lossy(value).into_owned()),
            b"size" => {
                let text = std::str::from_utf8(value).map_err(|_| bad("non-numeric size"))?;
                size = Some(text.parse().map_err(|_| bad("non-numeric size"))?);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok((path, size, link))
}

#[cfg(test)]
mod tests;

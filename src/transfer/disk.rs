//! Writing a download to its `.partial` file. Where the filesystem allows it, the bytes go to disk with
//! direct I/O (`O_DIRECT`) from aligned blocks, written by a thread of their own: a backup is written
//! once and read back at most once, so routing gigabytes through the page cache only costs CPU (the
//! kernel's copy, page allocation, writeback) and pushes out whatever else the machine had cached.
//! Where direct I/O is refused (tmpfs, some network and FUSE filesystems, an unaligned resume point) the
//! same writer falls back to ordinary buffered writes with early writeback. Either way the caller's final
//! `finish` makes the whole file durable (fsync), so the two modes give the same guarantee.
//!
//! What it must not do: reorder bytes, leave a gap, or report success before every byte reached the
//! file; hold more than `BLOCKS` blocks of memory.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Alignment direct I/O needs of memory, file offsets and lengths (covers 512- and 4096-byte sectors).
pub(crate) const ALIGN: u64 = 4096;
/// Size of one block handed to the I/O thread.
const BLOCK: usize = 2 << 20;
/// Blocks in rotation: one being filled, the others being written.
const BLOCKS: usize = 3;
/// Buffered mode: dirty bytes after which writeback is started, so the disk works while the network
/// does and the final fsync has little left to do.
const WRITEBACK_STEP: u64 = 32 * 1024 * 1024;

/// The point a resumed download restarts from: the kept prefix, rounded down so that direct I/O can
/// go on at an aligned offset (at most `ALIGN - 1` bytes are fetched again).
pub(crate) fn resume_offset(len: u64) -> u64 {
    len - len % ALIGN
}

/// One aligned block of memory, without `unsafe`: a slightly larger vector, used from its first
/// aligned byte.
struct Block {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Self {
        let mem = vec![0u8; BLOCK + ALIGN as usize];
        let start = mem.as_ptr().align_offset(ALIGN as usize);
        Block { mem, start, len: 0 }
    }

    /// Copies as much of `src` as fits; returns how much.
    fn fill(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(BLOCK - self.len);
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&src[..n]);
        self.len += n;
        n
    }

    fn full(&self) -> bool {
        self.len == BLOCK
    }

    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

/// The thread that writes full blocks with direct I/O and hands them back empty.
struct IoThread {
    full: Option<mpsc::SyncSender<(u64, Block)>>,
    empty: mpsc::Receiver<std::io::Result<Block>>,
    thread: Option<std::thread::JoinHandle<()>>,
    spare: Vec<Block>,
    in_flight: usize,
}

impl IoThread {
    fn start(direct: File, buffered: File, path: PathBuf) -> std::io::Result<Self> {
        let (full_tx, full_rx) = mpsc::sync_channel::<(u64, Block)>(BLOCKS);
        let (empty_tx, empty_rx) = mpsc::sync_channel(BLOCKS);
        let thread = std::thread::Builder::new()
            .name("hapull-disk".into())
            .spawn(move || {
                let mut direct = Some(direct);
                for (offset, mut block) in full_rx {
                    let mut result = match &direct {
                        Some(f) => f.write_all_at(block.data(), offset),
                        None => buffered.write_all_at(block.data(), offset),
                    };
                    if let (Err(e), Some(_)) = (&result, &direct)
                        && e.raw_os_error() == Some(libc::EINVAL)
                    {
                        // Accepted at open, refused at write (some filesystems do): go on buffered.
                        tracing::debug!(path = %path.display(), "direct I/O refused; writing through the page cache");
                        direct = None;
                        result = buffered.write_all_at(block.data(), offset);
                    }
                    let failed = result.is_err();
                    block.len = 0;
                    if empty_tx.send(result.map(|()| block)).is_err() || failed {
                        break;
                    }
                }
            })?;
        Ok(IoThread {
            full: Some(full_tx),
            empty: empty_rx,
            thread: Some(thread),
            spare: (1..BLOCKS).map(|_| Block::new()).collect(),
            in_flight: 0,
        })
    }

    fn submit(&mut self, offset: u64, block: Block) -> std::io::Result<()> {
        let sent = match &self.full {
            Some(tx) => tx.send((offset, block)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.stopped());
        }
        self.in_flight += 1;
        Ok(())
    }

    fn take_empty(&mut self) -> std::io::Result<Block> {
        if let Some(b) = self.spare.pop() {
            return Ok(b);
        }
        self.wait_one()
    }

    fn wait_one(&mut self) -> std::io::Result<Block> {
        match self.empty.recv() {
            Ok(result) => {
                self.in_flight -= 1;
                result
            }
            Err(_) => Err(self.stopped()),
        }
    }

    /// Waits until every submitted block is on its way to the disk (written, not yet synced).
    fn drain(&mut self) -> std::io::Result<()> {
        while self.in_flight > 0 {
            let block = self.wait_one()?;
            self.spare.push(block);
        }
        Ok(())
    }

    /// Why the thread stopped: the write error it handed back (a full disk, an I/O error), which
    /// may still be waiting in the queue of returned blocks.
    fn stopped(&mut self) -> std::io::Error {
        while let Ok(result) = self.empty.try_recv() {
            if let Err(e) = result {
                return e;
            }
        }
        std::io::Error::other("the disk writer thread stopped")
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.full = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Mode {
    Buffered { flushed: u64 },
    Direct { block: Block, io: IoThread },
}

/// Appends to a file from `start` on, in order, and makes it durable on `finish`.
pub(crate) struct DiskWriter {
    file: File,
    /// File offset of the next byte to accept.
    pos: u64,
    mode: Mode,
}

impl DiskWriter {
    /// Writes from `start` on into `file` (already open for writing at `path`). Direct I/O is used
    /// when `start` is aligned and the filesystem accepts it.
    pub(crate) fn new(mut file: File, path: &Path, start: u64) -> std::io::Result<Self> {
        file.seek(SeekFrom::Start(start))?;
        let mode = match start
            .is_multiple_of(ALIGN)
            .then(|| open_direct(path))
            .flatten()
        {
            Some(direct) => Mode::Direct {
                block: Block::new(),
                io: IoThread::start(direct, file.try_clone()?, path.to_path_buf())?,
            },
            None => Mode::Buffered { flushed: start },
        };
        Ok(DiskWriter {
            file,
            pos: start,
            mode,
        })
    }

    /// Whether bytes go to disk with direct I/O (for tests and logs).
    pub(crate) fn direct(&self) -> bool {
        matches!(self.mode, Mode::Direct { .. })
    }

    pub(crate) fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        match &mut self.mode {
            Mode::Buffered { flushed } => {
                self.file.write_all(data)?;
                self.pos += data.len() as u64;
                if self.pos - *flushed >= WRITEBACK_STEP {
                    start_writeback(&self.file, *flushed, self.pos - *flushed);
                    *flushed = self.pos;
                }
            }
            Mode::Direct { block, io } => {
                while !data.is_empty() {
                    let n = block.fill(data);
                    data = &data[n..];
                    self.pos += n as u64;
                    if block.full() {
                        let next = io.take_empty()?;
                        let done = std::mem::replace(block, next);
                        io.submit(self.pos - BLOCK as u64, done)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes what is still held and makes the file durable. Returns the file's length.
    pub(crate) fn finish(mut self) -> std::io::Result<u64> {
        if let Mode::Direct { block, io } = &mut self.mode {
            io.drain()?;
            // The last, partial block goes through the page cache: its length is not aligned.
            let start = self.pos - block.len as u64;
            self.file.write_all_at(block.data(), start)?;
        }
        self.file.sync_all()?;
        Ok(self.pos)
    }
}

/// A descriptor for direct I/O, on the local filesystems where it is known to be a plain win
/// (ext2/3/4, XFS). Elsewhere, e.g. NFS or SMB mounts of a NAS, direct writes go synchronously to
/// the server one block at a time and would be slower than the page cache: those stay buffered.
fn open_direct(path: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        // SAFETY: fstatfs fills a plain C struct from an open descriptor.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // width differs by platform
        let kind = i64::from(st.f_type as i64);
        matches!(kind, EXT4 | XFS).then_some(file)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call; the flag only starts writeback.
    // Failure is harmless (the final fsync still runs), so the result is ignored.
    let _ =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Writes `prefix_len` bytes by hand, then the rest through the writer in uneven chunks, and
    /// checks the file is exactly the pattern.
    fn round_trip(dir: &Path, prefix_len: usize, total: usize) -> bool {
        let path = dir.join(format!("f-{prefix_len}-{total}"));
        let want = pattern(total, prefix_len as u8);
        std::fs::write(&path, &want[..prefix_len]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut w = DiskWriter::new(file, &path, prefix_len as u64).unwrap();
        let direct = w.direct();
        let mut at = prefix_len;
        let mut step = 1usize;
        while at < total {
            let n = step.min(total - at);
            w.write(&want[at..at + n]).unwrap();
            at += n;
            step = step * 7 % 1_000_003 + 4093;
        }
        assert_eq!(w.finish().unwrap(), total as u64);
        assert!(std::fs::read(&path).unwrap() == want, "content differs");
        direct
    }

    #[test]
    fn every_byte_lands_in_order_whatever_the_chunking_and_start() {
        // /var/tmp is on a local disk on most systems (direct I/O on ext4 and XFS); the temp dir may
        // be tmpfs (buffered): both paths are checked wherever they are available.
        for base in [std::env::temp_dir(), PathBuf::from("/var/tmp")] {
            let Ok(dir) = tempfile::tempdir_in(&base) else {
                continue;
            };
            for (prefix, total) in [
                (0, 0),
                (0, 1),
                (0, BLOCK),
                (0, 3 * BLOCK + 12345),
                (ALIGN as usize, 2 * BLOCK + 1),
                (8192, 5 * BLOCK),
                (1000, BLOCK + 77), // unaligned start: buffered
            ] {
                let direct = round_trip(dir.path(), prefix, total);
                if !(prefix as u64).is_multiple_of(ALIGN) {
                    assert!(!direct, "an unaligned start must not use direct I/O");
                }
            }
        }
    }

    #[test]
    fn a_full_disk_is_reported_as_such_not_as_a_stopped_thread() {
        // /dev/full refuses every write with ENOSPC, direct or not.
        let Ok(file) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut w = DiskWriter::new(file, Path::new("/dev/full"), 0).unwrap();
        let data = vec![1u8; 5 * BLOCK];
        let err = match w.write(&data) {
            Err(e) => e,
            Ok(()) => w.finish().unwrap_err(),
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }

    #[test]
    fn a_failed_block_write_is_the_error_later_calls_give() {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut io =
            IoThread::start(full.try_clone().unwrap(), full, PathBuf::from("/dev/full")).unwrap();
        let mut block = Block::new();
        block.fill(&[1u8; 4096]);
        io.submit(0, block).unwrap();
        // The thread writes, fails and ends; whatever is asked of it next says why.
        if let Some(t) = io.thread.take() {
            t.join().unwrap();
        }
        let err = io.submit(4096, Block::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }

    #[test]
    fn resume_offsets_are_aligned_and_never_past_the_prefix() {
        assert_eq!(resume_offset(0), 0);
        assert_eq!(resume_offset(4095), 0);
        assert_eq!(resume_offset(4096), 4096);
        assert_eq!(resume_offset(10_000), 8192);
    }
}

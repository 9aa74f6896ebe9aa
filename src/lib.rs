//! hapull: keep Home Assistant backups safe on a separate machine.
//!
//! The job, in order: ask Home Assistant for a backup over its WebSocket API ([`ha`]), wait for its own
//! completion event, pull the archive over SFTP ([`transfer`]), verify and commit it to the local
//! [`store`], copy it on to storage elsewhere ([`offsite`], through rclone), record every step in the tamper-evident [`audit`] log, and only then clean up. The
//! [`cycle`] is the one place that knows the order of the steps; the [`daemon`] runs it on a schedule.

pub mod audit;
pub mod cli;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod ha;
pub mod offsite;
pub mod private_fs;
pub mod secret;
pub mod service;
pub mod store;
pub mod transfer;

/// Tunes the C allocator for hapull's traffic, once, before any thread starts. A pull allocates and
/// frees a few hundred kilobytes for every SFTP answer; above glibc's default threshold each of those
/// is a fresh `mmap`, so every byte of a backup would also cost a page fault and a page clearing, and
/// every free an `munmap`. Serving them from the heap, and letting it keep a little freed memory,
/// saves that work (measured with `examples/bench_verified_pull`). Memory use stays bounded by the
/// transfer's own queues.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

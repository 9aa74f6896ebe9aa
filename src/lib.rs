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
mod pieces;
pub mod private_fs;
pub mod secret;
pub mod service;
pub mod store;
pub mod transfer;

/// Gives memory freed since the last call back to the system: a daemon that waits an hour between
/// cycles should not hold on to what the last pull used.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

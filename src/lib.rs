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

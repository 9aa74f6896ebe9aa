//! hapull's integration tests, in one binary so the crate and its TLS stack are linked once: one
//! module per capability. Real parts where they run here (OpenSSH sshd, the hapull binary); the
//! simulated Home Assistant (crates/hapull-sim) for faults, hostile input and timing.
//!
//! The suites against a real Home Assistant are in `tests/real/`.

mod support;

mod audit;
mod audit_recovery;
mod commands;
mod completions;
mod connections;
mod cycle;
mod daemon;
mod daemon_process;
mod deep_daemon;
mod deep_verify;
mod demo;
mod first_hour;
mod ha_client;
mod hostile;
mod hostkeys;
mod identify;
mod init;
mod installs;
mod log_secrets;
mod offsite;
mod one_writer;
mod pull_verify;
mod retry;
mod retry_process;
mod securetar_archives;
mod sftp_server;
mod sim;
mod ssh_steps;
mod store;
mod store_partials;
mod transfer;

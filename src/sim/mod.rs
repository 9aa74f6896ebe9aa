//! sim (in progress)
pub mod sftp_server;

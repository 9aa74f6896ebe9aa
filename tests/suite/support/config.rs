//! The parts of a hapull config that point it at a test's simulated Home Assistant and sshd; each
//! test adds the sections it is about.

use std::path::Path;

use super::sshd::Sshd;

/// `[home_assistant]` for the simulator at `url`, the token in the file `token` beside the config.
pub fn home_assistant(url: &str) -> String {
    format!("[home_assistant]\nurl = \"{url}\"\ntoken_file = \"token\"\n\n")
}

/// `[ssh]` for `sshd` serving `remote_dir`, the host trusted by `host_keys` (a `known_hosts = ...`
/// or `host_key = ...` line), then `extra` lines.
pub fn ssh(sshd: &Sshd, remote_dir: &Path, host_keys: &str, extra: &str) -> String {
    format!(
        "[ssh]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\nidentity_file = \"{key}\"\n\
         {host_keys}\nremote_dir = \"{remote}\"\n{extra}\n",
        port = sshd.port,
        user = sshd.user,
        key = sshd.client_key.display(),
        remote = remote_dir.display(),
    )
}

/// `[home_assistant]` and `[ssh]`, the sshd's host key in a known_hosts file.
pub fn sim_and_sshd(url: &str, sshd: &Sshd, remote_dir: &Path, ssh_extra: &str) -> String {
    let kh = format!(
        "known_hosts = \"{}\"",
        sshd.write_known_hosts(sshd.port).display()
    );
    format!(
        "{}{}",
        home_assistant(url),
        ssh(sshd, remote_dir, &kh, ssh_extra)
    )
}

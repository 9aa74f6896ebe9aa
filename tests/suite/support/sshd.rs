//! A real OpenSSH sshd on 127.0.0.1 for tests: its own host key, one client key in authorized_keys,
//! internal-sftp, everything in a temporary directory that disappears with the value.
//!
//! When running as root, sshd is started without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (via
//! `setpriv`), so a `chmod 000` file is unreadable to the logged-in root user just as it would be for
//! an ordinary backup user.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    /// Client private key authorised to log in (unencrypted ed25519).
    pub client_key: PathBuf,
    /// The server's public host key in OpenSSH format (`ssh-ed25519 AAAA...` by default).
    pub host_public_key: String,
    child: Child,
    log: PathBuf,
}

fn keygen(path: &Path, passphrase: &str) {
    keygen_typed(path, "ed25519", passphrase)
}

fn keygen_typed(path: &Path, key_type: &str, passphrase: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", key_type, "-N", passphrase, "-C", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen must be installed (package openssh-client)");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

/// Generates an ed25519 key pair at `path` (and `path.pub`).
pub fn generate_key(path: &Path, passphrase: &str) {
    keygen(path, passphrase)
}

fn current_user() -> String {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .expect("run `id -un`");
    String::from_utf8(out.stdout)
        .expect("user name is UTF-8")
        .trim()
        .to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

impl Sshd {
    /// Starts sshd and waits until it accepts connections. Panics (test failure) if sshd is missing.
    pub fn start() -> Sshd {
        Sshd::start_with_host_key("ed25519")
    }

    /// Starts sshd with a single host key of `key_type` (`ed25519`, `ecdsa`), so the server offers
    /// only that type.
    pub fn start_with_host_key(key_type: &str) -> Sshd {
        Sshd::start_with(key_type, "")
    }

    /// Starts sshd with the account set up as the README prescribes for the Home Assistant host:
    /// `ForceCommand internal-sftp -R` (read-only SFTP, no shell, no forwarding).
    pub fn start_read_only() -> Sshd {
        Sshd::start_with(
            "ed25519",
            "ForceCommand internal-sftp -R\nAllowTcpForwarding no\nX11Forwarding no\nPermitTTY no\n",
        )
    }

    /// Starts sshd with a host key of `key_type` and `extra` sshd_config lines, which come first and
    /// so take precedence over the defaults (sshd uses the first value of a keyword).
    pub fn start_with(key_type: &str, extra: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: install openssh-server (e.g. `apt-get install openssh-server`) to run these tests"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let host_key = dir.path().join(format!("host_{key_type}"));
        let client_key = dir.path().join("id_ed25519");
        keygen_typed(&host_key, key_type, "");
        keygen(&client_key, "");
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)
            .expect("write authorized_keys");
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "{extra}\n\
                 ListenAddress 127.0.0.1:{port}\n\
                 HostKey {host}\n\
                 AuthorizedKeysFile {auth}\n\
                 PidFile none\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 MaxStartups 100\n\
                 LogLevel ERROR\n\
                 {subsystem}",
                // sshd refuses a second Subsystem line for the same name.
                subsystem = if extra.contains("Subsystem sftp") {
                    ""
                } else {
                    "Subsystem sftp internal-sftp\n"
                },
                host = host_key.display(),
                auth = authorized.display(),
            ),
        )
        .expect("write sshd_config");
        let log = dir.path().join("sshd.log");
        let log_file = std::fs::File::create(&log).expect("create sshd log");
        let is_root = unsafe_geteuid() == 0;
        let mut cmd = if is_root && Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args([
                "--bounding-set=-dac_override,-dac_read_search",
                "--inh-caps=-dac_override,-dac_read_search",
                SSHD,
            ]);
            c
        } else {
            Command::new(SSHD)
        };
        cmd.arg("-D").arg("-e").arg("-f").arg(&config);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start sshd");
        let host_public_key = std::fs::read_to_string(host_key.with_extension("pub"))
            .expect("read host public key")
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let mut sshd = Sshd {
            dir,
            port,
            user: current_user(),
            client_key,
            host_public_key,
            child,
            log,
        };
        sshd.wait_ready();
        sshd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sshd exited early ({status}): {}", self.log_text());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "sshd did not accept connections on port {}: {}",
            self.port,
            self.log_text()
        );
    }

    /// What sshd wrote to stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The known_hosts line for this server as reached on `port` (the sshd port or a proxy's).
    pub fn known_hosts_line(&self, port: u16) -> String {
        format!("[127.0.0.1]:{port} {}", self.host_public_key)
    }

    /// Writes a known_hosts file trusting this server on `port` and returns its path.
    pub fn write_known_hosts(&self, port: u16) -> PathBuf {
        let path = self.dir.path().join(format!("known_hosts_{port}"));
        std::fs::write(&path, format!("{}\n", self.known_hosts_line(port)))
            .expect("write known_hosts");
        path
    }

    /// A directory the sftp user can read, for remote files.
    pub fn remote_dir(&self) -> PathBuf {
        let d = self.dir.path().join("remote");
        std::fs::create_dir_all(&d).expect("create remote dir");
        d
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

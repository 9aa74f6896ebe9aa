//! Throughput benchmark: hapull's pull (with SHA-256) against OpenSSH's `sftp` client, same file, same
//! local sshd, alternating rounds. Build in release mode:
//!
//! ```text
//! cargo run --release --example bench_pull -- [--size-mib 1024] [--rounds 3] [--reads 32] [--read-kib 255] [--out-dir DIR]
//! ```
//! Each hapull pull runs in a child process so its peak RSS (VmHWM) is its own.

#[allow(dead_code)]
#[path = "../tests/suite/support/sshd.rs"]
mod sshd;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hapull::transfer::{self, HostKeyPolicy, PullOptions, SessionOptions, SshTarget};

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Child mode: one pull, then print seconds, peak RSS and the hash.
fn child(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [port, user, key, kh, remote, local, reads, read_kib] = args else {
        return Err("bad child arguments".into());
    };
    let target = SshTarget {
        host: "127.0.0.1".into(),
        port: port.parse()?,
        user: user.clone(),
        identity_file: key.into(),
        passphrase: None,
        host_keys: HostKeyPolicy::KnownHosts {
            path: kh.into(),
            trust_on_first_use: false,
        },
    };
    let opts = PullOptions {
        free_space_margin: 0,
        session: SessionOptions {
            outstanding_reads: reads.parse()?,
            read_size: read_kib.parse::<u32>()? * 1024,
            ..SessionOptions::default()
        },
        ..PullOptions::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let outcome = rt.block_on(transfer::pull(&target, remote, Path::new(local), &opts))?;
    let secs = started.elapsed().as_secs_f64();
    println!("RESULT {secs} {} {}", vm_hwm_kib(), outcome.sha256_hex());
    Ok(())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let size = flag(&args, "--size-mib", 1024) * 1024 * 1024;
    let rounds = flag(&args, "--rounds", 3);
    let reads = flag(&args, "--reads", 32);
    let read_kib = flag(&args, "--read-kib", 255);

    let server = sshd::Sshd::start();
    let remote = server.remote_dir().join("bench.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&remote)?);
        let mut rng = fastrand::Rng::with_seed(42);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..size / (1 << 20) {
            rng.fill(&mut buf);
            f.write_all(&buf)?;
        }
    }
    let kh = server.write_known_hosts(server.port);
    // `--out-dir /dev/shm` takes the local disk (and its fsync) out of the comparison.
    let out_dir = match args
        .iter()
        .position(|a| a == "--out-dir")
        .and_then(|i| args.get(i + 1))
    {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let local: PathBuf = out_dir.path().join("bench.bin");
    let batch = out_dir.path().join("batch");
    std::fs::write(
        &batch,
        format!("get {} {}\n", remote.display(), local.display()),
    )?;
    let exe = std::env::current_exe()?;
    println!(
        "file {} MiB, {rounds} rounds, hapull {reads} x {read_kib} KiB reads",
        size / 1024 / 1024
    );

    let (mut ours, mut theirs, mut peak) = (Vec::new(), Vec::new(), 0u64);
    for round in 1..=rounds {
        let _ = std::fs::remove_file(&local);
        let out = Command::new(&exe)
            .arg("--child")
            .args([
                server.port.to_string(),
                server.user.clone(),
                server.client_key.display().to_string(),
                kh.display().to_string(),
                remote.display().to_string(),
                local.display().to_string(),
                reads.to_string(),
                read_kib.to_string(),
            ])
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
            return Err(format!("hapull pull failed: {text}").into());
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let secs: f64 = f[1].parse()?;
        let hwm: u64 = f[2].parse()?;
        peak = peak.max(hwm);
        let ours_rate = mbps(size, Duration::from_secs_f64(secs));
        ours.push(ours_rate);

        let _ = std::fs::remove_file(&local);
        let started = Instant::now();
        let status = Command::new("sftp")
            .arg("-q")
            .arg("-b")
            .arg(&batch)
            .arg("-i")
            .arg(&server.client_key)
            .arg("-P")
            .arg(server.port.to_string())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg(format!("{}@127.0.0.1", server.user))
            .stdout(Stdio::null())
            .status()?;
        let elapsed = started.elapsed();
        if !status.success() {
            return Err("OpenSSH sftp failed".into());
        }
        let theirs_rate = mbps(size, elapsed);
        theirs.push(theirs_rate);
        println!(
            "round {round}: hapull {ours_rate:.0} MB/s (sha {}…, peak RSS {} MiB), OpenSSH sftp {theirs_rate:.0} MB/s",
            &f[3][..12],
            hwm / 1024
        );
    }
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!(
        "median: hapull {a:.0} MB/s, OpenSSH sftp {b:.0} MB/s, ratio {:.2}x, hapull peak RSS {} MiB",
        a / b,
        peak / 1024
    );
    Ok(())
}

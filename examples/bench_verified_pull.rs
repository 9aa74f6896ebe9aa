//! End-to-end benchmark of a verified pull of a real Home Assistant backup: hapull's pull with the
//! one-pass verification (outer tar, backup.json, every inner archive inflated, decrypted when
//! protected) and the commit into a store (fsync, link, manifest), against OpenSSH `sftp` get of the
//! same file from the same local sshd followed by `sync -f` (the same durability), alternating
//! rounds. Build in release mode:
//!
//! ```text
//! cargo run --release --example bench_verified_pull -- ARCHIVE.tar BACKUP_ID [--password-file F] [--rounds 5] [--out-dir DIR]
//! ```
//! Each hapull run is a child process, so its peak RSS (VmHWM) and CPU time are its own; sftp's are
//! measured by GNU time. The rest of the machine's busy time during each run (from /proc/stat) is
//! printed beside them: on a quiet machine that is the server's share (sshd) plus the kernel's. The archive is hard-linked (or copied) into the sshd's folder.

#[allow(dead_code)]
#[path = "../tests/suite/support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use hapull::secret::Secret;
use hapull::store::{CommitInfo, Keys, Store, StreamVerifier, Verify};
use hapull::transfer::{self, ByteObserver, HostKeyPolicy, PullOptions, SshTarget};

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills a plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Feeds the verifier and notes when the last byte of the file was written.
struct Feed {
    verifier: StreamVerifier,
    seen: u64,
    size: u64,
    last_byte: Arc<Mutex<Option<Instant>>>,
    first_byte: Arc<Mutex<Option<Instant>>>,
}

impl ByteObserver for Feed {
    fn observe(&mut self, bytes: Bytes) {
        if self.seen == 0
            && let Ok(mut t) = self.first_byte.lock()
        {
            *t = Some(Instant::now());
        }
        self.seen += bytes.len() as u64;
        self.verifier.feed(bytes);
        if self.seen == self.size
            && let Ok(mut t) = self.last_byte.lock()
        {
            *t = Some(Instant::now());
        }
    }
}

/// Child mode: one verified pull and commit; prints the figures.
fn child(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [port, user, key, kh, remote, store_dir, id, size, pw] = args else {
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
    let size: u64 = size.parse()?;
    let mut opts = PullOptions {
        free_space_margin: 0,
        ..PullOptions::default()
    };
    // Tuning experiments: the defaults are what hapull uses.
    if let Some(v) = std::env::var("BENCH_READ_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.session.read_size = v;
    }
    if let Some(v) = std::env::var("BENCH_OUTSTANDING")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.session.outstanding_reads = v;
    }
    if let Some(v) = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.connections = v;
    }
    if let Some(v) = std::env::var("BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.session.window_size = v;
    }
    let keys = (pw != "-")
        .then(|| std::fs::read_to_string(pw))
        .transpose()?
        .map(|p| Arc::new(Mutex::new(Keys::new(Secret::new(p)))));
    let rt = if std::env::var("BENCH_RT").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    let started = Instant::now();
    let store = Store::open(store_dir)?;
    let local = store.incoming_path(id)?;
    let identity = transfer::load_identity(Path::new(key), None)?;
    if std::env::var_os("BENCH_PHASES").is_some() {
        eprintln!(
            "phases: store and key ready at {:.3} s",
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let s = rt.block_on(transfer::Session::connect_with(
            &target,
            &identity,
            &opts.session,
        ))?;
        eprintln!("phases: a session takes {:.3} s", t.elapsed().as_secs_f64());
        rt.block_on(s.close());
    }
    let last_byte = Arc::new(Mutex::new(None));
    let first_byte = Arc::new(Mutex::new(None));
    let (outcome, feed) = rt.block_on(transfer::pull_observed(
        &target,
        &identity,
        remote,
        &local,
        &opts,
        || Feed {
            verifier: StreamVerifier::start(id, Verify::Full, keys.clone()),
            seen: 0,
            size,
            last_byte: last_byte.clone(),
            first_byte: first_byte.clone(),
        },
    ))?;
    let summary = feed.verifier.finish()?;
    let stored = store.commit(
        &local,
        &CommitInfo {
            backup_id: id.clone(),
            size: outcome.size,
            sha256: outcome.sha256,
            pulled_at: jiff::Timestamp::now(),
            source_host: "127.0.0.1".to_owned(),
            source_path: remote.clone(),
            verify: Verify::Full,
            password: None,
            verified: Some(summary),
        },
    )?;
    let done = Instant::now();
    let after_last = last_byte
        .lock()
        .ok()
        .and_then(|t| *t)
        .map_or(f64::NAN, |t| (done - t).as_secs_f64());
    if std::env::var_os("BENCH_PHASES").is_some() {
        let at = |t: &Arc<Mutex<Option<Instant>>>| {
            t.lock()
                .ok()
                .and_then(|t| *t)
                .map_or(f64::NAN, |t| (t - started).as_secs_f64())
        };
        eprintln!(
            "phases: first byte at {:.3} s, last byte at {:.3} s, committed at {:.3} s",
            at(&first_byte),
            at(&last_byte),
            (done - started).as_secs_f64()
        );
    }
    println!(
        "RESULT {} {} {} {} {} {}",
        (done - started).as_secs_f64(),
        after_last,
        cpu_seconds(),
        proc_status_kib("VmHWM:"),
        stored.manifest.verified_str(),
        stored.manifest.sha256
    );
    Ok(())
}

/// CPU-seconds the whole machine has spent busy so far (all CPUs, from /proc/stat). On a quiet
/// machine, a run's share minus the client's own is the server's: sshd's session processes (their
/// CPU cannot be read from the listening sshd's children's times: OpenSSH's session processes are
/// not all accounted there) and the kernel threads that write the file.
fn machine_busy_cpu() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    // user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    busy / tick
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let (Some(archive), Some(id)) = (args.first(), args.get(1)) else {
        return Err("usage: bench_verified_pull ARCHIVE.tar BACKUP_ID [--password-file F] [--rounds N] [--out-dir DIR]".into());
    };
    let rounds: usize = opt(&args, "--rounds").unwrap_or("5").parse()?;
    let pw = opt(&args, "--password-file").unwrap_or("-").to_owned();
    let size = std::fs::metadata(archive)?.len();
    let server = sshd::Sshd::start();
    let remote = server.remote_dir().join("backup.tar");
    if std::fs::hard_link(archive, &remote).is_err() {
        std::fs::copy(archive, &remote)?;
    }
    let kh = server.write_known_hosts(server.port);
    let out_dir = match opt(&args, "--out-dir") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let local: PathBuf = out_dir.path().join("sftp.tar");
    let store_dir = out_dir.path().join("store");
    let batch = out_dir.path().join("batch");
    std::fs::write(
        &batch,
        format!("get {} {}\n", remote.display(), local.display()),
    )?;
    let exe = std::env::current_exe()?;
    println!(
        "{} ({size} bytes, backup {id}{}), {rounds} alternating rounds, out dir {}",
        archive,
        if pw == "-" { "" } else { ", protected" },
        out_dir.path().display()
    );
    let (mut ours, mut theirs, mut after, mut our_cpu, mut their_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peak = 0u64;
    let (mut our_sshd, mut their_sshd) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let _ = std::fs::remove_dir_all(&store_dir);
        let busy_before = machine_busy_cpu();
        let out = Command::new(&exe)
            .arg("--child")
            .args([
                server.port.to_string(),
                server.user.clone(),
                server.client_key.display().to_string(),
                kh.display().to_string(),
                remote.display().to_string(),
                store_dir.display().to_string(),
                id.clone(),
                size.to_string(),
                pw.clone(),
            ])
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
            return Err(format!("hapull pull failed: {text}").into());
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let (secs, after_last, cpu, hwm): (f64, f64, f64, u64) =
            (f[1].parse()?, f[2].parse()?, f[3].parse()?, f[4].parse()?);
        let our_s = machine_busy_cpu() - busy_before - cpu;
        let _ = std::fs::remove_dir_all(&store_dir);

        let _ = std::fs::remove_file(&local);
        let busy_before = machine_busy_cpu();
        let started = Instant::now();
        let timed = Command::new("/usr/bin/time")
            .args(["-f", "TIME %U %S %M", "sh", "-c"])
            .arg(
                "sftp -q -b \"$1\" -i \"$2\" -P \"$3\" -o UserKnownHostsFile=\"$4\" \
                 -o StrictHostKeyChecking=yes -o BatchMode=yes \"$5\" >/dev/null && sync -f \"$6\"",
            )
            .args([
                "sh".to_owned(),
                batch.display().to_string(),
                server.client_key.display().to_string(),
                server.port.to_string(),
                kh.display().to_string(),
                format!("{}@127.0.0.1", server.user),
                local.display().to_string(),
            ])
            .stderr(Stdio::piped())
            .output()?;
        let their_secs = started.elapsed().as_secs_f64();
        if !timed.status.success() {
            return Err(format!("sftp failed: {}", String::from_utf8_lossy(&timed.stderr)).into());
        }
        let err = String::from_utf8_lossy(&timed.stderr);
        let t: Vec<f64> = err
            .lines()
            .find(|l| l.starts_with("TIME "))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let their_c =
            t.first().copied().unwrap_or(f64::NAN) + t.get(1).copied().unwrap_or(f64::NAN);
        let their_s = machine_busy_cpu() - busy_before - their_c;
        let _ = std::fs::remove_file(&local);

        peak = peak.max(hwm);
        println!(
            "round {round}: hapull {secs:.2} s ({} verified, committed {after_last:.3} s after the last byte, {cpu:.2} CPU-s, rest of the machine {our_s:.2}, peak RSS {} MiB) | sftp+sync {their_secs:.2} s ({their_c:.2} CPU-s, rest of the machine {their_s:.2}) | ratio {:.2}x",
            f[5],
            hwm / 1024,
            their_secs / secs
        );
        ours.push(secs);
        theirs.push(their_secs);
        after.push(after_last);
        our_cpu.push(cpu);
        their_cpu.push(their_c);
        our_sshd.push(our_s);
        their_sshd.push(their_s);
    }
    let gib = size as f64 / (1u64 << 30) as f64;
    let (o, omin, omax) = stats(&ours);
    let (t, tmin, tmax) = stats(&theirs);
    let (a, amin, amax) = stats(&after);
    let (oc, _, _) = stats(&our_cpu);
    let (tc, _, _) = stats(&their_cpu);
    let (os, _, _) = stats(&our_sshd);
    let (ts, _, _) = stats(&their_sshd);
    let ratios: Vec<f64> = theirs.iter().zip(&ours).map(|(t, o)| t / o).collect();
    let (r, rmin, rmax) = stats(&ratios);
    println!(
        "median (min-max): hapull {o:.2} s ({omin:.2}-{omax:.2}), sftp+sync {t:.2} s ({tmin:.2}-{tmax:.2}); \
         speed-up {r:.2}x ({rmin:.2}-{rmax:.2}); committed {a:.3} s ({amin:.3}-{amax:.3}) after the last byte; \
         CPU-s per GiB: hapull {:.2} + rest of the machine (sshd, kernel) {:.2}, sftp client {:.2} + rest {:.2}; hapull peak RSS {} MiB",
        oc / gib,
        os / gib,
        tc / gib,
        ts / gib,
        peak / 1024
    );
    Ok(())
}

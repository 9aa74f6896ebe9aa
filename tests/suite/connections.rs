//! How a pull uses its SSH connections to a real OpenSSH sshd: the reads are shared between the
//! connections and the file is byte-exact; a connection the server turns away is done without; only
//! the main connection records a host key met for the first time; a bandwidth limit paces the
//! requests from the first byte on; the ciphers offered are the ones configured.

use crate::support::relay::{Faults, Relay};
use crate::support::sshd::Sshd;
use crate::transfer::{
    fast_retry, files_in, random_file, remote_str, sha256sum, target, trusting_first_use,
};
use bytes::Bytes;
use hapull::transfer::{self, ByteObserver, HostKeyPolicy, PullOptions};

fn known(sshd: &Sshd, port: u16) -> HostKeyPolicy {
    HostKeyPolicy::KnownHosts {
        path: sshd.write_known_hosts(port),
        trust_on_first_use: false,
    }
}

#[tokio::test]
async fn two_connections_each_carry_about_half_and_the_copy_is_exact() {
    let sshd = Sshd::start();
    let size = 40 * 1024 * 1024 + 12_345;
    let src = sshd.remote_dir().join("big.tar");
    random_file(&src, size, 21);
    let relay = Relay::start(sshd.port, Faults::default()).await;
    let t = target(&sshd, relay.port, known(&sshd, relay.port));
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("big.tar");

    // The default is two connections.
    assert_eq!(PullOptions::default().connections, 2);
    let outcome = transfer::pull(&t, &remote_str(&src), &dst, &fast_retry())
        .await
        .unwrap();
    assert_eq!(outcome.attempts, 1);
    assert_eq!(outcome.sha256_hex(), sha256sum(&src));
    assert_eq!(sha256sum(&dst), sha256sum(&src));
    let bytes = relay.carried();
    assert_eq!(bytes.len(), 2, "two connections: {bytes:?}");
    for b in &bytes {
        // Reads alternate between the connections: each brings about half of the file.
        assert!(
            *b > size as u64 * 2 / 5 && *b < size as u64 * 3 / 5,
            "each connection carries about half of {size} bytes: {bytes:?}"
        );
    }

    // One connection when asked: it carries the whole file.
    std::fs::remove_file(&dst).unwrap();
    let one = PullOptions {
        connections: 1,
        ..fast_retry()
    };
    transfer::pull(&t, &remote_str(&src), &dst, &one)
        .await
        .unwrap();
    assert_eq!(sha256sum(&dst), sha256sum(&src));
    let bytes = relay.carried();
    assert_eq!(bytes.len(), 3, "one more connection: {bytes:?}");
    assert!(bytes[2] > size as u64, "{bytes:?}");
    assert_eq!(files_in(local.path()), vec!["big.tar".to_string()]);
}

#[tokio::test]
async fn a_server_that_takes_one_connection_gets_the_whole_pull_over_it() {
    let sshd = Sshd::start();
    let size = 9 * 1024 * 1024 + 7;
    let src = sshd.remote_dir().join("b.tar");
    random_file(&src, size, 22);
    // Whichever connection arrives first is let through (the main one or the extra one); the
    // other is closed as soon as it connects.
    let relay = Relay::start(
        sshd.port,
        Faults {
            admit: 1,
            ..Faults::default()
        },
    )
    .await;
    let t = target(&sshd, relay.port, known(&sshd, relay.port));
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("b.tar");
    let opts = PullOptions {
        connections: 3,
        ..fast_retry()
    };
    let outcome = transfer::pull(&t, &remote_str(&src), &dst, &opts)
        .await
        .unwrap();
    assert_eq!(
        outcome.attempts, 1,
        "a refused extra connection is no failure"
    );
    assert_eq!(sha256sum(&dst), sha256sum(&src));
    let bytes = relay.carried();
    assert_eq!(bytes.len(), 1);
    assert!(bytes[0] > size as u64);
}

#[tokio::test]
async fn only_the_main_connection_records_a_new_host_key() {
    let sshd = Sshd::start();
    let src = sshd.remote_dir().join("c.tar");
    random_file(&src, 3 * 1024 * 1024, 23);
    let (t, kh) = trusting_first_use(&sshd);
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("c.tar");
    let opts = PullOptions {
        connections: 4,
        ..fast_retry()
    };
    for _ in 0..2 {
        transfer::pull(&t, &remote_str(&src), &dst, &opts)
            .await
            .unwrap();
        assert_eq!(sha256sum(&dst), sha256sum(&src));
        // One line, written once, however many connections met the new host at the same moment.
        assert_eq!(
            std::fs::read_to_string(&kh).unwrap(),
            format!("{}\n", sshd.known_hosts_line(sshd.port))
        );
    }
}

/// When each byte arrived: (seconds since the pull began, bytes so far).
struct Arrivals {
    start: std::time::Instant,
    seen: u64,
    marks: Vec<(f64, u64)>,
}

impl ByteObserver for Arrivals {
    fn observe(&mut self, bytes: Bytes) {
        self.seen += bytes.len() as u64;
        self.marks
            .push((self.start.elapsed().as_secs_f64(), self.seen));
    }
}

#[tokio::test]
async fn a_bandwidth_limit_paces_the_bytes_from_the_start_instead_of_bursting_at_the_end() {
    let sshd = Sshd::start();
    let size: u64 = 6 * 1024 * 1024;
    let src = sshd.remote_dir().join("slow.tar");
    random_file(&src, size as usize, 24);
    let t = target(&sshd, sshd.port, known(&sshd, sshd.port));
    let identity = transfer::load_identity(&t.identity_file, None).unwrap();
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("slow.tar");
    // 2 MiB/s: the file takes 3 s.
    let opts = PullOptions {
        bandwidth_limit: Some(2 << 20),
        ..fast_retry()
    };
    let start = std::time::Instant::now();
    let (outcome, arrivals) =
        transfer::pull_observed(&t, &identity, &remote_str(&src), &dst, &opts, || Arrivals {
            start,
            seen: 0,
            marks: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(sha256sum(&dst), sha256sum(&src));
    let marks = arrivals.marks;
    let first = marks.first().map_or(f64::NAN, |m| m.0);
    let half = marks
        .iter()
        .find(|m| m.1 >= size / 2)
        .map_or(f64::NAN, |m| m.0);
    // The bytes flow from the start (a throttle that only held the requests back until the end
    // delivered the whole file at once, after 3 s) ...
    assert!(first < 1.5, "first bytes after {first:.2} s: {marks:?}");
    // ... and no faster than the limit: half the file needs 1.5 s, less one read's worth.
    assert!(half >= 1.2, "half the file after {half:.2} s: {marks:?}");
    assert!(
        outcome.duration.as_secs_f64() >= 2.5,
        "the whole file in {:?}",
        outcome.duration
    );
}

#[tokio::test]
async fn a_file_rewritten_during_the_pull_is_pulled_again_whole() {
    let sshd = Sshd::start();
    let size = 6 * 1024 * 1024;
    let src = sshd.remote_dir().join("moving.tar");
    random_file(&src, size, 25);
    // An hour old, so that the rewrite below changes the modification time SFTP reports (seconds).
    let status = std::process::Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    let t = target(&sshd, sshd.port, known(&sshd, sshd.port));
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("moving.tar");
    let opts = PullOptions {
        bandwidth_limit: Some(3 << 20),
        ..fast_retry()
    };
    let rewrite = {
        let src = src.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            // In place, same size: only the modification time tells.
            let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(5 << 20)).unwrap();
            std::io::Write::write_all(&mut f, b"changed").unwrap();
        })
    };
    let outcome = transfer::pull(&t, &remote_str(&src), &dst, &opts)
        .await
        .unwrap();
    rewrite.await.unwrap();
    assert!(outcome.attempts >= 2, "the change was noticed: {outcome:?}");
    assert_eq!(outcome.resumed_bytes, 0, "nothing kept of the old file");
    assert_eq!(sha256sum(&dst), sha256sum(&src), "the new content, whole");
}

#[tokio::test]
async fn the_ciphers_offered_are_the_ones_configured() {
    // A server that speaks only ChaCha20-Poly1305, as one might set up for a Raspberry Pi 4.
    let sshd = Sshd::start_with("ed25519", "Ciphers chacha20-poly1305@openssh.com");
    let src = sshd.remote_dir().join("c.tar");
    random_file(&src, 1024 * 1024, 26);
    let t = target(&sshd, sshd.port, known(&sshd, sshd.port));
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("c.tar");
    let offering = |ciphers: Vec<&'static str>| PullOptions {
        retry_budget: 0,
        session: hapull::transfer::SessionOptions {
            ciphers,
            ..fast_retry().session
        },
        ..fast_retry()
    };
    // The default list includes it (after AES-GCM): agreed.
    transfer::pull(
        &t,
        &remote_str(&src),
        &dst,
        &offering(transfer::CIPHERS.to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(sha256sum(&dst), sha256sum(&src));
    // Only AES-GCM offered: no cipher in common, and the error says the handshake failed.
    std::fs::remove_file(&dst).unwrap();
    let err = transfer::pull(
        &t,
        &remote_str(&src),
        &dst,
        &offering(vec!["aes256-gcm@openssh.com"]),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(!dst.exists(), "{err}");
    // Both lists are named, so the user sees what to change.
    assert!(
        err.contains("Cipher") && err.contains("aes256-gcm") && err.contains("chacha20-poly1305"),
        "{err}"
    );
}

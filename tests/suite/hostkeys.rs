//! Host-key pinning against a real OpenSSH sshd: any key recorded for a host pins it, whatever its
//! type, also with trust on first use; a known_hosts line that cannot be parsed stops the connection
//! with the file and line named, instead of being skipped.

use std::path::PathBuf;

use crate::support::sshd::{Sshd, generate_key};
use hapull::transfer::{HostKeyPolicy, Session, SessionOptions, SshTarget, TransferError};

fn target(sshd: &Sshd, known_hosts: PathBuf, trust_on_first_use: bool) -> SshTarget {
    SshTarget {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        identity_file: sshd.client_key.clone(),
        passphrase: None,
        host_keys: HostKeyPolicy::KnownHosts {
            path: known_hosts,
            trust_on_first_use,
        },
    }
}

#[tokio::test]
async fn a_host_recorded_with_ed25519_that_now_serves_only_ecdsa_is_refused_even_with_tofu() {
    let sshd = Sshd::start_with_host_key("ecdsa");
    assert!(
        sshd.host_public_key.starts_with("ecdsa-sha2-"),
        "the server must offer only an ECDSA key: {}",
        sshd.host_public_key
    );
    // What known_hosts recorded earlier: an ed25519 key for this very host and port.
    let recorded = sshd.dir.path().join("recorded");
    generate_key(&recorded, "");
    let recorded_pub = std::fs::read_to_string(recorded.with_extension("pub")).unwrap();
    let recorded_line = format!(
        "[127.0.0.1]:{} {}",
        sshd.port,
        recorded_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let kh = sshd.dir.path().join("known_hosts");
    std::fs::write(&kh, format!("# pinned\n{recorded_line}\n")).unwrap();

    let err = Session::connect(&target(&sshd, kh.clone(), true), &SessionOptions::default())
        .await
        .err()
        .expect("a host serving a key of another type than the recorded one must be refused");
    match &err {
        TransferError::HostKeyChanged {
            line, algorithm, ..
        } => {
            assert_eq!(*line, 2);
            assert_eq!(algorithm, "ssh-ed25519");
        }
        other => panic!("expected HostKeyChanged, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("HOST KEY CHANGED"), "{text}");
    assert!(text.contains(&kh.display().to_string()), "{text}");
    assert!(!err.is_transient(), "a changed key must not be retried");
    // Nothing was learned: the file still holds only the recorded key.
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        format!("# pinned\n{recorded_line}\n")
    );

    // The same server is accepted once its real ECDSA key is the one recorded.
    std::fs::write(&kh, format!("{}\n", sshd.known_hosts_line(sshd.port))).unwrap();
    Session::connect(&target(&sshd, kh, false), &SessionOptions::default())
        .await
        .expect("the recorded ECDSA key is trusted")
        .close()
        .await;
}

#[tokio::test]
async fn an_unparsable_known_hosts_line_is_an_error_naming_file_and_line() {
    let sshd = Sshd::start();
    let kh = sshd.dir.path().join("known_hosts_bad");
    // Line 3 is this host's entry with its key cut off: skipping it would make the host "unknown"
    // and trust on first use would then accept whatever key is offered.
    let cut = format!("[127.0.0.1]:{} ssh-ed25519", sshd.port);
    std::fs::write(&kh, format!("# hosts\n\n{cut}\n")).unwrap();
    let err = Session::connect(&target(&sshd, kh.clone(), true), &SessionOptions::default())
        .await
        .err()
        .expect("an unparsable line must stop the connection");
    assert!(
        matches!(err, TransferError::KnownHostsLine { line: 3, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&kh.display().to_string()), "{text}");
    assert!(text.contains("line 3"), "{text}");
    assert!(!err.is_transient());
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        format!("# hosts\n\n{cut}\n"),
        "nothing may be appended to a file hapull could not read"
    );
}

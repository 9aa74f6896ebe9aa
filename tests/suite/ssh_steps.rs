//! Every step of setting up an SSH session has its own time limit, against a real OpenSSH sshd made to
//! stop answering at a given step: the error names the step and counts as transient (a retry later
//! may find the server answering again).

use std::time::Duration;

use crate::support::sshd::Sshd;
use hapull::transfer::{HostKeyPolicy, Session, SessionOptions, SshTarget, TransferError};

fn target(sshd: &Sshd) -> SshTarget {
    SshTarget {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        identity_file: sshd.client_key.clone(),
        passphrase: None,
        host_keys: HostKeyPolicy::KnownHosts {
            path: sshd.write_known_hosts(sshd.port),
            trust_on_first_use: false,
        },
    }
}

fn opts() -> SessionOptions {
    SessionOptions {
        connect_timeout: Duration::from_secs(2),
        ..SessionOptions::default()
    }
}

async fn timed_out_step(sshd: &Sshd) -> (&'static str, String) {
    let err = Session::connect(&target(sshd), &opts())
        .await
        .err()
        .expect("a server that stops answering must not give a session");
    let text = err.to_string();
    assert!(
        err.is_transient(),
        "a stalled server is worth a retry: {err:?}"
    );
    match err {
        TransferError::StepTimeout { step, after, .. } => {
            assert_eq!(after, Duration::from_secs(2));
            (step, text)
        }
        other => panic!("expected a step timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_login_that_never_completes_times_out_naming_the_login() {
    // sshd asks an AuthorizedKeysCommand whether the key may log in; this one takes longer than the
    // limit, so the server answers the handshake but never the login.
    let sshd = Sshd::start_with(
        "ed25519",
        "AuthorizedKeysFile none\n\
         AuthorizedKeysCommand /usr/bin/sleep 10\n\
         AuthorizedKeysCommandUser nobody",
    );
    let (step, text) = timed_out_step(&sshd).await;
    assert_eq!(step, "login", "{text}");
    assert!(text.starts_with("login with 127.0.0.1:"), "{text}");
    assert!(text.contains("connect_timeout"), "{text}");
}

#[tokio::test]
async fn an_sftp_subsystem_that_never_answers_times_out_naming_the_step() {
    // The subsystem starts (so the request succeeds) but is not an SFTP server: it never answers.
    let sshd = Sshd::start_with("ed25519", "Subsystem sftp /usr/bin/sleep 10");
    let (step, text) = timed_out_step(&sshd).await;
    assert_eq!(step, "SFTP start", "{text}");
}

//! Against a real Home Assistant. Ignored by default; run with
//! `eval "$(shared/real-ha/up.sh)"` (or `--legacy`) then
//! `HAPULL_REAL_HA_URL=$HA_URL HAPULL_REAL_HA_TOKEN_FILE=$HA_TOKEN_FILE cargo test --test ha_real -- --ignored`.

use std::time::Duration;

use hapull::ha::{
    BackupApi, BackupEvent, BackupState, Client, ClientOptions, Endpoint, GenerateRequest, SubItem,
};
use hapull::secret::Secret;

fn instance() -> (String, String) {
    let url = std::env::var("HAPULL_REAL_HA_URL").expect(
        "set HAPULL_REAL_HA_URL to the instance's URL (shared/real-ha/up.sh prints HA_URL)",
    );
    let token = std::env::var("HAPULL_REAL_HA_TOKEN_FILE")
        .expect("set HAPULL_REAL_HA_TOKEN_FILE to the instance's token file");
    (url, token)
}

async fn client() -> Client {
    let (url, token_file) = instance();
    let token = std::fs::read_to_string(token_file).unwrap();
    let mut opts = ClientOptions::new(
        Endpoint::parse(&url).unwrap(),
        Secret::new(token.trim()),
        None,
    )
    .unwrap();
    opts.request_timeout = Duration::from_secs(60);
    Client::connect(opts).await.unwrap()
}

#[tokio::test]
#[ignore = "needs a real Home Assistant: see the file's header"]
async fn backup_round_trip_on_real_home_assistant() {
    let client = client().await;
    match client.detect_backup_api().await.unwrap() {
        BackupApi::Modern => {
            let mut sub = client.subscribe_backup_events().await.unwrap();
            let job = client
                .backup_generate(&GenerateRequest {
                    agent_ids: vec!["backup.local".into()],
                    name: Some("hapull client test".into()),
                    include_database: Some(true),
                    password: None,
                })
                .await
                .unwrap();
            let mut stages = Vec::new();
            loop {
                let item = tokio::time::timeout(Duration::from_secs(120), sub.next())
                    .await
                    .unwrap()
                    .unwrap();
                let SubItem::Event(e) = item else { continue };
                match BackupEvent::parse(&e).unwrap() {
                    BackupEvent::CreateBackup {
                        state: BackupState::Completed,
                        ..
                    } => break,
                    BackupEvent::CreateBackup {
                        state: BackupState::Failed,
                        reason,
                        ..
                    } => panic!("backup failed: {reason:?}"),
                    BackupEvent::CreateBackup { stage: Some(s), .. } => stages.push(s),
                    _ => {}
                }
            }
            assert!(stages.contains(&"home_assistant".to_string()), "{stages:?}");
            let details = client
                .backup_details(&job)
                .await
                .unwrap()
                .expect("the new backup is listed");
            assert_eq!(details.name, "hapull client test");
            assert!(details.size.unwrap() > 0);
            client.backup_delete(&job).await.unwrap();
            assert!(client.backup_details(&job).await.unwrap().is_none());
        }
        BackupApi::Legacy { .. } => {
            let b = client
                .legacy_backup_generate(Duration::from_secs(300))
                .await
                .unwrap();
            let list = client.backup_info().await.unwrap();
            assert!(list.backups.iter().any(|x| x.backup_id == b.backup_id));
            assert!(
                client
                    .subscribe_backup_events()
                    .await
                    .err()
                    .unwrap()
                    .is_unknown_command()
            );
            client.legacy_backup_remove(&b.backup_id).await.unwrap();
            let list = client.backup_info().await.unwrap();
            assert!(!list.backups.iter().any(|x| x.backup_id == b.backup_id));
        }
    }
}

#[tokio::test]
#[ignore = "needs a real Home Assistant: see the file's header"]
async fn check_passes_and_fails_with_advice_for_a_wrong_token() {
    let (url, token_file) = instance();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[home_assistant]\nurl = \"{url}\"\ntoken_file = \"{token_file}\"\n"),
    )
    .unwrap();
    let bad_token = dir.path().join("bad_token");
    std::fs::write(&bad_token, "not-a-token\n").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[home_assistant]\nurl = \"{url}\"\ntoken_file = \"{}\"\n",
            bad_token.display()
        ),
    )
    .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&good)
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ready"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hapull"))
        .arg("-c")
        .arg(&bad)
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("refused the access token") && stdout.contains("long-lived access token"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-a-token"));
}

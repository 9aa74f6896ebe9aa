//! The Home Assistant client against (1) replays of exchanges recorded from real Home Assistant
//! 2026.11.0 and 2024.3.3, and (2) a scripted server for the faults a real one will not produce on
//! demand. Every replayed client frame must be one HA accepts, and the client must reach the
//! conclusions the recording shows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hapull::ha::{
    BackupApi, BackupEvent, BackupState, Client, ClientOptions, ConnectionState, Endpoint,
    GenerateRequest, HaError, SubItem,
};
use hapull::secret::Secret;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Replay of recorded exchanges
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Send(Value),
    Recv(Value),
    /// The recorded client closed the socket; the replay closes it from the server side.
    Drop,
    NewConnection,
}

fn load_recording(version: &str, name: &str) -> Vec<Step> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ha-protocol")
        .join(version)
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut steps = Vec::new();
    let mut conn = None;
    // The recordings also probe HA's own rules with frames no correct client sends (an id used
    // twice, answered `id_reuse`): those exchanges are left out, everything else must be played.
    let mut last_id = 0u64;
    let mut probe_id = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let c = v.get("conn").and_then(Value::as_u64).unwrap_or(1);
        if conn.is_some_and(|old| old != c) {
            steps.push(Step::NewConnection);
            last_id = 0;
        }
        conn = Some(c);
        let id = v["frame"].get("id").and_then(Value::as_u64);
        match v["dir"].as_str().unwrap() {
            "send" if id.is_some_and(|id| id <= last_id) => probe_id = id,
            "recv" if id.is_some() && id == probe_id => {
                assert_eq!(v["frame"]["error"]["code"], "id_reuse", "{line}");
                probe_id = None;
            }
            "send" => {
                last_id = id.unwrap_or(last_id);
                steps.push(Step::Send(v["frame"].clone()))
            }
            "recv" if v.get("frame").is_some() => steps.push(Step::Recv(v["frame"].clone())),
            "recv" => {} // the server's close frame: the socket closes after auth_invalid anyway
            "note" => steps.push(Step::Drop),
            other => panic!("unknown dir {other}"),
        }
    }
    steps
}

/// What the replay server saw the client send, for assertions.
#[derive(Default)]
struct Seen {
    frames: Vec<Value>,
    problems: Vec<String>,
    /// Recorded steps the replay has gone through, of `total`.
    consumed: usize,
    total: usize,
}

/// Serves one recording: checks each client frame against the next recorded one (type and keys),
/// maps recorded ids to the client's ids, and sends the recorded answers.
async fn replay_server(
    steps: Vec<Step>,
    seen: Arc<Mutex<Seen>>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    seen.lock().unwrap().total = steps.len();
    let handle = tokio::spawn(async move {
        let mut pos = 0;
        while pos < steps.len() {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut ids: std::collections::HashMap<u64, u64> = Default::default();
            let mut last_client_id = 0u64;
            while let Some(step) = steps.get(pos).cloned() {
                seen.lock().unwrap().consumed = pos;
                match step {
                    Step::NewConnection => {
                        pos += 1;
                        seen.lock().unwrap().consumed = pos;
                        break;
                    }
                    Step::Drop => {
                        pos += 1;
                        let _ = ws.close(None).await;
                        // The rest of the connection's recording is what the client no longer saw.
                        while pos < steps.len() && !matches!(steps[pos], Step::NewConnection) {
                            pos += 1;
                        }
                        seen.lock().unwrap().consumed = pos;
                        break;
                    }
                    Step::Recv(mut frame) => {
                        pos += 1;
                        remap_ids(&mut frame, &ids);
                        let _ = ws.send(Message::Text(frame.to_string().into())).await;
                        seen.lock().unwrap().consumed = pos;
                    }
                    Step::Send(expected) => {
                        let Some(Ok(msg)) = ws.next().await else {
                            return;
                        };
                        let Message::Text(text) = msg else { continue };
                        let got: Value = serde_json::from_str(text.as_str()).unwrap();
                        seen.lock().unwrap().frames.push(got.clone());
                        if let Some(id) = got.get("id").and_then(Value::as_u64) {
                            if id <= last_client_id {
                                seen.lock()
                                    .unwrap()
                                    .problems
                                    .push(format!("id {id} does not increase"));
                            }
                            last_client_id = id;
                        }
                        let got_type = got["type"].as_str().unwrap_or("").to_string();
                        // Frames the client sends on its own (features, heartbeat) when the recording
                        // has none: answered as HA answers them.
                        if got_type != expected["type"].as_str().unwrap_or("") {
                            if let Some(skip) = find_forward(&steps, pos, &got) {
                                // The client left recorded frames out: a difference from what HA
                                // saw, not something to step over.
                                seen.lock().unwrap().problems.push(format!(
                                    "client sent {got} where the recording has {expected}; recorded steps {pos}..{skip} skipped"
                                ));
                                pos = skip;
                                if let Step::Send(f) = &steps[pos] {
                                    map_id(f, &got, &mut ids);
                                    check_shape(f, &got, &mut seen.lock().unwrap());
                                }
                                pos += 1;
                                seen.lock().unwrap().consumed = pos;
                                continue;
                            }
                            let answer = match got_type.as_str() {
                                "supported_features" => {
                                    json!({"id": got["id"], "type": "result", "success": true, "result": null})
                                }
                                "ping" => json!({"id": got["id"], "type": "pong"}),
                                _ => {
                                    seen.lock().unwrap().problems.push(format!(
                                        "unexpected frame {got}, recording expects {expected}"
                                    ));
                                    return;
                                }
                            };
                            let _ = ws.send(Message::Text(answer.to_string().into())).await;
                            continue;
                        }
                        map_id(&expected, &got, &mut ids);
                        check_shape(&expected, &got, &mut seen.lock().unwrap());
                        pos += 1;
                        seen.lock().unwrap().consumed = pos;
                    }
                }
            }
        }
        // Keep the last connection open until the client is done.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    (url, handle)
}

fn find_forward(steps: &[Step], from: usize, got: &Value) -> Option<usize> {
    (from + 1..steps.len()).find(
        |&i| matches!(&steps[i], Step::Send(f) if f["type"] == got["type"] && keys(f) == keys(got)),
    )
}

fn map_id(expected: &Value, got: &Value, ids: &mut std::collections::HashMap<u64, u64>) {
    if let (Some(rec), Some(cli)) = (
        expected.get("id").and_then(Value::as_u64),
        got.get("id").and_then(Value::as_u64),
    ) {
        ids.insert(rec, cli);
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.retain(|k| k != "id");
    k.sort();
    k
}

fn check_shape(expected: &Value, got: &Value, seen: &mut Seen) {
    if keys(expected) != keys(got) {
        seen.problems.push(format!(
            "frame keys differ: recorded {expected}, client sent {got}"
        ));
    }
    for k in [
        "domain",
        "service",
        "event_type",
        "agent_ids",
        "name",
        "include_database",
        "backup_id",
        "slug",
    ] {
        if expected.get(k).is_some() && expected.get(k) != got.get(k) {
            seen.problems.push(format!(
                "{k} differs: recorded {expected}, client sent {got}"
            ));
        }
    }
}

fn remap_ids(frame: &mut Value, ids: &std::collections::HashMap<u64, u64>) {
    match frame {
        Value::Array(items) => items.iter_mut().for_each(|f| remap_ids(f, ids)),
        Value::Object(o) => {
            if let Some(id) = o.get("id").and_then(Value::as_u64)
                && let Some(mapped) = ids.get(&id)
            {
                o.insert("id".into(), Value::from(*mapped));
            }
        }
        _ => {}
    }
}

fn options(url: &str, token: &str) -> ClientOptions {
    let mut o =
        ClientOptions::new(Endpoint::parse(url).unwrap(), Secret::new(token), None).unwrap();
    o.request_timeout = Duration::from_secs(5);
    o.max_reconnect_delay = Duration::from_millis(300);
    o
}

async fn next_backup_event(sub: &mut hapull::ha::Subscription) -> BackupEvent {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("event in time")
        {
            Some(SubItem::Event(v)) => return BackupEvent::parse(&v).unwrap(),
            Some(_) => continue,
            None => panic!("subscription ended"),
        }
    }
}

async fn assert_clean(seen: &Arc<Mutex<Seen>>) {
    {
        let s = seen.lock().unwrap();
        assert!(
            s.problems.is_empty(),
            "client frames HA would not accept: {:#?}",
            s.problems
        );
    }
    assert_consumed(seen).await;
}

/// The whole recording was played: every recorded client frame was sent and matched, every recorded
/// answer delivered. The replay server may still be writing its last frames, so this waits for it.
async fn assert_consumed(seen: &Arc<Mutex<Seen>>) {
    for _ in 0..500 {
        {
            let s = seen.lock().unwrap();
            if s.consumed == s.total {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = seen.lock().unwrap();
    panic!(
        "the recording was not played to its end: {} of {} steps (client frames seen: {:#?})",
        s.consumed, s.total, s.frames
    );
}

/// Waits until the replay server has received a client frame matching `what` (the order of frames
/// in flight is the order the recording has).
async fn until_sent(seen: &Arc<Mutex<Seen>>, what: impl Fn(&Value) -> bool) {
    for _ in 0..500 {
        if seen.lock().unwrap().frames.iter().any(&what) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the client never sent the expected frame");
}

#[tokio::test]
async fn replay_auth_invalid_is_a_permanent_error_that_says_what_to_do() {
    for version in ["2026.11.0", "2024.3.3"] {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (url, _h) =
            replay_server(load_recording(version, "auth-invalid.jsonl"), seen.clone()).await;
        let err = match Client::connect(options(&url, "wrong-token")).await {
            Err(e) => e,
            Ok(_) => panic!("connected with a wrong token"),
        };
        assert!(matches!(err, HaError::AuthInvalid { .. }), "{err:?}");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("refused the access token") && text.contains("long-lived access token"),
            "{text}"
        );
        assert!(
            !text.contains("wrong-token"),
            "the token leaked into the error: {text}"
        );
        // The auth frame carried the token, and nothing else was sent.
        let frames = seen.lock().unwrap().frames.clone();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["type"], "auth");
        assert_eq!(frames[0]["access_token"], "wrong-token");
        assert_consumed(&seen).await;
    }
}

#[tokio::test]
async fn replay_generate_with_coalesced_messages() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (url, _h) = replay_server(
        load_recording("2026.11.0", "backup-generate-coalesced.jsonl"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    assert_eq!(client.ha_version(), "2026.11.0");
    assert_eq!(
        client.backup_agents().await.unwrap()[0].agent_id,
        "backup.local"
    );
    let mut backup = client.subscribe_backup_events().await.unwrap();
    // The manager state arrived in the same array frame as, and before, the subscription's result.
    assert_eq!(
        next_backup_event(&mut backup).await,
        BackupEvent::Manager {
            state: "idle".into()
        }
    );
    let mut states = client
        .subscribe_events(Some("state_changed"))
        .await
        .unwrap();
    let job = client
        .backup_generate(&GenerateRequest {
            agent_ids: vec!["backup.local".into()],
            name: Some("hapull fixture".into()),
            include_database: Some(true),
            password: None,
        })
        .await
        .unwrap();
    assert_eq!(job, "dcc25121");
    // Bus events delivered from coalesced arrays.
    let mut saw_state_change = false;
    while let Ok(Some(SubItem::Event(e))) =
        tokio::time::timeout(Duration::from_millis(500), states.next()).await
    {
        assert_eq!(e["event_type"], "state_changed");
        saw_state_change = true;
    }
    assert!(saw_state_change);
    let list = client.backup_info().await.unwrap();
    assert_eq!(list.backups[0].backup_id, "dcc25121");
    assert_eq!(list.backups[0].size, Some(20480));
    let details = client.backup_details("dcc25121").await.unwrap().unwrap();
    assert_eq!(details.name, "hapull fixture");
    assert_clean(&seen).await;
}

#[tokio::test]
async fn replay_busy_and_protected_with_two_requests_in_flight() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (url, _h) = replay_server(
        load_recording("2026.11.0", "backup-generate-busy-and-protected.jsonl"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    let mut sub = client.subscribe_backup_events().await.unwrap();
    assert_eq!(
        next_backup_event(&mut sub).await,
        BackupEvent::Manager {
            state: "idle".into()
        }
    );
    let first = GenerateRequest {
        agent_ids: vec!["backup.local".into()],
        name: Some("hapull protected".into()),
        include_database: None,
        password: Some(Secret::new("fixture-pass")),
    };
    let second = GenerateRequest {
        agent_ids: vec!["backup.local".into()],
        name: Some("second while busy".into()),
        include_database: None,
        password: None,
    };
    // Two requests in flight; results matched by id.
    let c2 = client.clone();
    let a = tokio::spawn(async move { client.backup_generate(&first).await.map(|j| (j, client)) });
    until_sent(&seen, |f| {
        f["type"] == "backup/generate" && f["name"] == "hapull protected"
    })
    .await;
    let b = c2.backup_generate(&second).await;
    let (job, client) = a.await.unwrap().unwrap();
    assert_eq!(job, "eb2931d0");
    let err = b.unwrap_err();
    assert_eq!(err.code(), Some("home_assistant_error"));
    assert!(
        err.to_string()
            .contains("Backup manager busy: create_backup"),
        "{err}"
    );
    // The events of the backup, in order, ending with completed then idle.
    let mut seen_events = Vec::new();
    loop {
        let e = next_backup_event(&mut sub).await;
        let done = e
            == BackupEvent::Manager {
                state: "idle".into(),
            };
        seen_events.push(e);
        if done {
            break;
        }
    }
    assert!(seen_events.iter().any(|e| matches!(
        e,
        BackupEvent::UploadProgress {
            total_bytes: 20480,
            ..
        }
    )));
    assert!(seen_events.contains(&BackupEvent::CreateBackup {
        stage: None,
        state: BackupState::Completed,
        reason: None
    }));
    let list = client.backup_info().await.unwrap();
    assert!(
        list.backups
            .iter()
            .any(|b| b.backup_id == "eb2931d0" && b.protected)
    );
    assert_clean(&seen).await;
}

#[tokio::test]
async fn replay_delete_errors_and_services() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (url, _h) = replay_server(
        load_recording("2026.11.0", "delete-errors-ping.jsonl"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    let list = client.backup_info().await.unwrap();
    assert_eq!(list.backups.len(), 3);
    for b in &list.backups {
        client.backup_delete(&b.backup_id).await.unwrap();
    }
    client.backup_delete("deadbeef").await.unwrap(); // unknown ids are not an error in HA
    assert_eq!(client.backup_details("deadbeef").await.unwrap(), None);
    client.ping().await.unwrap();
    let err = client
        .call(json!({"type": "no/such_command"}))
        .await
        .unwrap_err();
    assert!(err.is_unknown_command(), "{err:?}");
    let err = client
        .call_service("backup", "nope", json!({}), false, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_found"));
    assert!(
        err.to_string().contains("Service backup.nope not found"),
        "{err}"
    );
    client
        .fire_event("hapull_fixture", json!({"ok": true}))
        .await
        .unwrap();
    let after = client.backup_info().await.unwrap();
    assert!(after.backups.is_empty());
    assert!(matches!(
        after.last_action_event,
        Some(BackupEvent::CreateBackup {
            state: BackupState::Completed,
            ..
        })
    ));
    assert_clean(&seen).await;
}

#[tokio::test]
async fn replay_service_mode_shows_the_stale_list() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (url, _h) = replay_server(
        load_recording("2026.11.0", "service-delete-then-create.jsonl"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    let mut sub = client.subscribe_backup_events().await.unwrap();
    assert_eq!(
        next_backup_event(&mut sub).await,
        BackupEvent::Manager {
            state: "idle".into()
        }
    );
    let r = client
        .call_service(
            "shell_command",
            "delete_backups",
            json!({}),
            true,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(r["response"]["returncode"], 0);
    client
        .call_service("backup", "create", json!({}), false, Duration::from_secs(5))
        .await
        .unwrap();
    // The events of the blocking service call arrived before its result and were all delivered.
    let mut completed = false;
    while let Ok(Some(SubItem::Event(e))) =
        tokio::time::timeout(Duration::from_millis(300), sub.next()).await
    {
        completed |= matches!(
            BackupEvent::parse(&e).unwrap(),
            BackupEvent::CreateBackup {
                state: BackupState::Completed,
                ..
            }
        );
    }
    assert!(completed);
    let list = client.backup_info().await.unwrap();
    assert!(
        list.backups.len() > 1,
        "the deleted backups are still listed (stale list)"
    );
    assert_clean(&seen).await;
}

#[tokio::test]
async fn replay_reconnect_mid_backup_renews_the_subscription() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (url, _h) = replay_server(
        load_recording("2026.11.0", "reconnect-mid-backup.jsonl"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    // As recorded, the generate request is pipelined behind the subscription.
    let (sub, job) = tokio::join!(client.subscribe_backup_events(), async {
        until_sent(&seen, |f| f["type"] == "backup/subscribe_events").await;
        client
            .backup_generate(&GenerateRequest {
                agent_ids: vec!["backup.local".into()],
                name: Some("reconnect test".into()),
                ..Default::default()
            })
            .await
    });
    let (mut sub, job) = (sub.unwrap(), job.unwrap());
    assert_eq!(job, "fa18070d");
    // The server drops the connection mid-backup; the subscription reports the reconnect and then
    // carries the events of the renewed subscription up to completion.
    let mut reconnected = false;
    let mut completed = false;
    while !completed {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("in time")
        {
            Some(SubItem::Reconnected) => reconnected = true,
            Some(SubItem::Event(e)) => {
                completed = matches!(
                    BackupEvent::parse(&e).unwrap(),
                    BackupEvent::CreateBackup {
                        state: BackupState::Completed,
                        ..
                    }
                );
                assert!(!completed || reconnected);
            }
            Some(SubItem::Lagged(_)) => {}
            None => panic!("subscription ended"),
        }
    }
    let list = client.backup_info().await.unwrap();
    assert!(list.backups.iter().any(|b| b.backup_id == "fa18070d"));
    assert_clean(&seen).await;
}

#[tokio::test]
async fn replay_legacy_api() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (url, _h) = replay_server(
        load_recording("2024.3.3", "legacy-backup-generate.jsonl"),
        seen.clone(),
    )
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    assert_eq!(client.ha_version(), "2024.3.3");
    assert!(client.backup_info().await.unwrap().backups.is_empty());
    let b = client
        .legacy_backup_generate(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(b.backup_id, "cf400062");
    assert_eq!(
        b.path.as_deref(),
        Some("/var/tmp/ha-lab/legacy-config/backups/cf400062.tar")
    );
    let list = client.backup_info().await.unwrap();
    assert_eq!(list.backups.len(), 1);
    let err = client
        .call(json!({"type": "backup/details", "slug": "cf400062"}))
        .await
        .unwrap_err();
    assert!(err.is_unknown_command());
    client
        .call_service("backup", "create", json!({}), false, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(client.backup_info().await.unwrap().backups.len(), 2);
    client.legacy_backup_remove("cf400062").await.unwrap();
    let err = client.subscribe_backup_events().await.err().unwrap();
    assert!(
        err.is_unknown_command(),
        "legacy HA has no backup events: {err:?}"
    );
    assert_clean(&seen).await;
}

// ---------------------------------------------------------------------------------------------
// Faults: a scripted server
// ---------------------------------------------------------------------------------------------

type Handler = Box<dyn FnMut(&Value) -> Vec<Message> + Send>;

/// A server that authenticates like HA and answers each client frame with what `handler` returns.
async fn scripted(mut make: impl FnMut() -> Handler + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let mut handler = make();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _ = ws
                    .send(text(
                        json!({"type": "auth_required", "ha_version": "2026.11.0"}),
                    ))
                    .await;
                let _ = ws.next().await;
                let _ = ws
                    .send(text(json!({"type": "auth_ok", "ha_version": "2026.11.0"})))
                    .await;
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    for out in handler(&v) {
                        if matches!(out, Message::Close(_)) {
                            let _ = ws.close(None).await;
                            return;
                        }
                        if ws.send(out).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

fn ok(v: &Value, result: Value) -> Message {
    text(json!({"id": v["id"], "type": "result", "success": true, "result": result}))
}

#[tokio::test]
async fn nothing_listening_is_a_clear_transient_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = match Client::connect(options(&format!("http://127.0.0.1:{port}"), "t")).await {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    assert!(matches!(err, HaError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_from_the_server_is_skipped_and_the_answer_still_arrives() {
    let url = scripted(|| {
        Box::new(|v: &Value| {
            if v["type"] != "backup/info" {
                return vec![ok(v, Value::Null)];
            }
            vec![
                Message::Text("{not json".into()),
                text(json!({"type": "no_such_message_type", "x": 1})),
                text(json!([1, "two", null])),
                text(json!({"id": 9999, "type": "result", "success": true, "result": null})),
                text(json!({"id": 9998, "type": "event", "event": {}})),
                Message::Binary(vec![0u8; 10].into()),
                ok(v, json!({"backups": [], "state": "idle"})),
            ]
        })
    })
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    let list = client.backup_info().await.unwrap();
    assert!(list.backups.is_empty());
    assert_eq!(*client.state().borrow(), ConnectionState::Connected);
}

#[tokio::test]
async fn a_frame_above_the_limit_ends_the_connection_not_the_process() {
    let url = scripted(|| {
        Box::new(|v: &Value| {
            if v["type"] == "backup/info" {
                vec![text(json!({"id": v["id"], "type": "result", "success": true, "result": {"pad": "x".repeat(2 << 20)}}))]
            } else {
                vec![ok(v, Value::Null)]
            }
        })
    })
    .await;
    let mut opts = options(&url, "t");
    opts.max_message_size = 1 << 20;
    opts.reconnect = false;
    let client = Client::connect(opts).await.unwrap();
    let err = client.backup_info().await.unwrap_err();
    assert!(matches!(err, HaError::ConnectionLost(_)), "{err:?}");
}

#[tokio::test]
async fn ha_closing_mid_request_fails_the_request_promptly() {
    let url = scripted(|| {
        Box::new(|v: &Value| {
            if v["type"] == "backup/info" {
                vec![Message::Close(None)]
            } else {
                vec![ok(v, Value::Null)]
            }
        })
    })
    .await;
    let mut opts = options(&url, "t");
    opts.request_timeout = Duration::from_secs(30);
    let client = Client::connect(opts).await.unwrap();
    let err = client.backup_info().await.unwrap_err();
    // Not the 30 s request timeout (that would be HaError::Timeout): the loss is noticed when the
    // socket closes.
    assert!(matches!(err, HaError::ConnectionLost(_)), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn an_unanswered_request_times_out() {
    let url = scripted(|| {
        Box::new(|v: &Value| {
            if v["type"] == "backup/info" {
                vec![]
            } else {
                vec![ok(v, Value::Null)]
            }
        })
    })
    .await;
    let mut opts = options(&url, "t");
    opts.request_timeout = Duration::from_millis(300);
    let client = Client::connect(opts).await.unwrap();
    let err = client.backup_info().await.unwrap_err();
    assert!(matches!(err, HaError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("backup/info"));
}

#[tokio::test]
async fn a_missing_pong_is_a_dead_connection_and_the_client_reconnects() {
    let connections = Arc::new(Mutex::new(0u32));
    let c = connections.clone();
    let url = scripted(move || {
        *c.lock().unwrap() += 1;
        let first = *c.lock().unwrap() == 1;
        Box::new(move |v: &Value| match v["type"].as_str() {
            // The first connection never answers pings (a half-dead link).
            Some("ping") if first => vec![],
            Some("ping") => vec![text(json!({"id": v["id"], "type": "pong"}))],
            _ => vec![ok(v, Value::Null)],
        })
    })
    .await;
    let mut opts = options(&url, "t");
    opts.heartbeat_interval = Duration::from_millis(200);
    let client = Client::connect(opts).await.unwrap();
    let mut sub = client.subscribe_events(Some("x")).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap();
    assert_eq!(item, Some(SubItem::Reconnected));
    assert!(*connections.lock().unwrap() >= 2);
    // And the renewed connection works.
    let mut state = client.state();
    tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    client.fire_event("after", json!({})).await.unwrap();
}

#[tokio::test]
async fn a_revoked_token_stops_reconnection_for_good() {
    let connections = Arc::new(Mutex::new(0u32));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let n = {
                let mut g = c.lock().unwrap();
                *g += 1;
                *g
            };
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                continue;
            };
            let _ = ws
                .send(text(
                    json!({"type": "auth_required", "ha_version": "2026.11.0"}),
                ))
                .await;
            let _ = ws.next().await;
            if n == 1 {
                let _ = ws
                    .send(text(json!({"type": "auth_ok", "ha_version": "2026.11.0"})))
                    .await;
                let _ = ws.next().await; // supported_features
                let _ = ws.close(None).await; // then HA "restarts" with the token revoked
            } else {
                let _ = ws.send(text(json!({"type": "auth_invalid", "message": "Invalid access token or password"}))).await;
                let _ = ws.close(None).await;
            }
        }
    });
    let client = Client::connect(options(&url, "t")).await.unwrap();
    let mut state = client.state();
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| matches!(s, ConnectionState::Failed { .. })),
    )
    .await
    .expect("gives up in time")
    .unwrap()
    .clone();
    let ConnectionState::Failed { reason } = s else {
        unreachable!()
    };
    assert!(reason.contains("refused the access token"), "{reason}");
    // The connection task ends after a permanent refusal (its state sender goes with it): from then
    // on nothing can dial again.
    tokio::time::timeout(Duration::from_secs(10), async {
        while state.changed().await.is_ok() {}
    })
    .await
    .expect("the connection task ends after the refusal");
    assert_eq!(
        *connections.lock().unwrap(),
        2,
        "no retry loop on a refused token"
    );
}

#[tokio::test]
async fn tls_name_mismatch_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "not-this-host.example");
    let url = tls_server(&cert, &key).await;
    let opts = ClientOptions::new(
        Endpoint::parse(&url).unwrap(),
        Secret::new("t"),
        Some(&cert),
    )
    .unwrap();
    let err = match Client::connect(opts).await {
        Err(e) => e,
        Ok(_) => panic!("TLS accepted a certificate for another name"),
    };
    assert!(matches!(err, HaError::Tls { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("ca_file"), "{err}");

    // The same server with a certificate for its real name and the CA given: accepted.
    let (cert, key) = self_signed(dir.path(), "localhost");
    let url = tls_server(&cert, &key)
        .await
        .replace("127.0.0.1", "localhost");
    let opts = ClientOptions::new(
        Endpoint::parse(&url).unwrap(),
        Secret::new("t"),
        Some(&cert),
    )
    .unwrap();
    let client = Client::connect(opts).await.unwrap();
    assert_eq!(client.ha_version(), "2026.11.0");
}

fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        // A self-signed server certificate must not claim to be a CA (webpki refuses that).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed for the TLS tests");
    assert!(status.success());
    (cert, key)
}

async fn tls_server(cert: &Path, key: &Path) -> String {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let _ = ws
                    .send(text(
                        json!({"type": "auth_required", "ha_version": "2026.11.0"}),
                    ))
                    .await;
                let _ = ws.next().await;
                let _ = ws
                    .send(text(json!({"type": "auth_ok", "ha_version": "2026.11.0"})))
                    .await;
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let _ = ws.send(ok(&v, Value::Null)).await;
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn detects_the_api_by_asking() {
    let url = scripted(|| {
        Box::new(|v: &Value| match v["type"].as_str() {
            Some("backup/agents/info") | Some("backup/details") => vec![text(
                json!({"id": v["id"], "type": "result", "success": false, "error": {"code": "unknown_command", "message": "Unknown command."}}),
            )],
            Some("backup/info") => vec![ok(v, json!({"backups": [], "backing_up": false}))],
            _ => vec![ok(v, Value::Null)],
        })
    })
    .await;
    let client = Client::connect(options(&url, "t")).await.unwrap();
    assert_eq!(
        client.detect_backup_api().await.unwrap(),
        BackupApi::Legacy { has_details: false }
    );
}

#[tokio::test]
async fn websocket_pings_from_home_assistant_are_answered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ws.send(text(
            json!({"type": "auth_required", "ha_version": "2026.11.0"}),
        ))
        .await
        .unwrap();
        let _ = ws.next().await;
        ws.send(text(json!({"type": "auth_ok", "ha_version": "2026.11.0"})))
            .await
            .unwrap();
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        // HA drops clients that do not answer its pings; the answer must come without any request.
        let mut tx = Some(tx);
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Pong(p) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(p.to_vec());
                    }
                }
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let _ = ws.send(ok(&v, Value::Null)).await;
                }
                _ => {}
            }
        }
    });
    let _client = Client::connect(options(&url, "t")).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("pong in time")
        .unwrap();
    assert_eq!(pong, b"are you there");
}

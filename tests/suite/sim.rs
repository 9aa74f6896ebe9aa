//! The simulated Home Assistant against the recordings of real HA, and each of its fault switches.
//!
//! The replay tests send the client frames of every recording in `tests/fixtures/ha-protocol/` and
//! check that the frames coming back match the recorded ones in order, message type, key sets and
//! every value that is not an id, a date or a size.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hapull_sim::{Corruption, Garbage, Sim, SimControl, SimOptions, SimVersion};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TOKEN: &str = "sim-test-token";
/// Generous: only reached when something is broken.
const FRAME_WAIT: Duration = Duration::from_secs(20);

fn fixtures(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ha-protocol")
        .join(version)
}

async fn start(version: SimVersion, stage: Duration) -> (Sim, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(dir.path());
    opts.version = version;
    opts.token = TOKEN.into();
    opts.stage_duration = stage;
    (Sim::start(opts).await.unwrap(), dir)
}

async fn connect(sim: &Sim) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(sim.ws_url())
        .await
        .unwrap();
    ws
}

/// Next message of any kind, or `None` when the socket is gone.
async fn next_message(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("no frame from the simulator in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    match next_message(ws).await {
        Some(Message::Text(t)) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Next single message, unpacking coalesced arrays.
async fn next_msgs(ws: &mut Ws) -> Vec<Value> {
    match next_json(ws).await {
        Value::Array(items) => items,
        one => vec![one],
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn authed(sim: &Sim) -> Ws {
    let mut ws = connect(sim).await;
    assert_eq!(next_json(&mut ws).await["type"], "auth_required");
    send(&mut ws, json!({"type": "auth", "access_token": TOKEN})).await;
    assert_eq!(next_json(&mut ws).await["type"], "auth_ok");
    ws
}

/// Reads until a message satisfies `want`, returning everything read including it.
async fn read_until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        for m in next_msgs(ws).await {
            let done = want(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

fn is_result(id: u64) -> impl Fn(&Value) -> bool {
    move |m| m["type"] == "result" && m["id"] == id
}

fn is_manager(state: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["type"] == "event" && m["event"]["state"] == state
}

// ---------------------------------------------------------------------------------------------
// Replaying the recordings

/// Values that differ between any two runs of HA: compared by JSON type only.
const VOLATILE_KEYS: &[&str] = &[
    "backup_id",
    "backup_job_id",
    "slug",
    "path",
    "date",
    "time_fired",
    "last_changed",
    "last_reported",
    "last_updated",
    "user_id",
    "instance_id",
    "size",
    "total_bytes",
    "uploaded_bytes",
];

fn looks_like_date(s: &str) -> bool {
    s.len() > 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[..4].iter().all(u8::is_ascii_digit)
}

/// Compares `actual` with the recorded `expected`; records the simulator's backup ids under the
/// recorded ones so later frames can refer to them.
fn compare(
    expected: &Value,
    actual: &Value,
    key: &str,
    path: &str,
    ids: &mut HashMap<String, String>,
) -> Result<(), String> {
    let fail = || Err(format!("at {path}: expected {expected}, got {actual}"));
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut ek: Vec<_> = e.keys().collect();
            let mut ak: Vec<_> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                return Err(format!("at {path}: keys {ek:?} != {ak:?}"));
            }
            for (k, ev) in e {
                compare(ev, &a[k], k, &format!("{path}.{k}"), ids)?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!(
                    "at {path}: {} items expected, {} got: {actual}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(ev, av, key, &format!("{path}[{i}]"), ids)?;
            }
            Ok(())
        }
        (Value::String(e), Value::String(a)) => {
            if matches!(key, "backup_id" | "backup_job_id" | "slug") {
                ids.insert(e.clone(), a.clone());
            }
            // Context ids (ULIDs) share the key `id` with the numeric command ids.
            if VOLATILE_KEYS.contains(&key) || key == "id" || looks_like_date(e) || e == a {
                Ok(())
            } else {
                fail()
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            if VOLATILE_KEYS.contains(&key) || e == a {
                Ok(())
            } else {
                fail()
            }
        }
        (e, a) if e == a => Ok(()),
        _ => fail(),
    }
}

fn substitute(frame: &mut Value, ids: &HashMap<String, String>, token: &str) {
    match frame {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "access_token" {
                    *v = json!(token);
                } else {
                    substitute(v, ids, token);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, ids, token)),
        Value::String(s) => {
            if let Some(mapped) = ids.get(s.as_str()) {
                *s = mapped.clone();
            }
        }
        _ => {}
    }
}

/// Replays one recording against `sim`, keeping backup-id mappings across recordings.
async fn replay(sim: &Sim, file: &Path, token: &str, ids: &mut HashMap<String, String>) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(file).unwrap();
    let mut ws: Option<Ws> = None;
    let mut conn_no = None;
    let mut matched = 0;
    for (n, line) in text.lines().enumerate() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let conn = rec.get("conn").and_then(Value::as_u64).unwrap_or(1);
        if conn_no != Some(conn) {
            if let Some(mut old) = ws.take() {
                let _ = old.close(None).await;
            }
            ws = Some(connect(sim).await);
            conn_no = Some(conn);
        }
        let socket = ws.as_mut().unwrap();
        match rec["dir"].as_str().unwrap() {
            "send" => {
                let mut frame = rec["frame"].clone();
                substitute(&mut frame, ids, token);
                send(socket, frame).await;
            }
            "recv" if rec.get("close").is_some() => match next_message(socket).await {
                Some(Message::Close(Some(frame))) => {
                    assert_eq!(u16::from(frame.code), 1000, "{name}:{}", n + 1);
                    matched += 1;
                }
                other => panic!("{name}:{}: expected a close frame, got {other:?}", n + 1),
            },
            "recv" => {
                let actual = next_json(socket).await;
                if let Err(e) = compare(&rec["frame"], &actual, "", "$", ids) {
                    panic!("{name}:{}: {e}", n + 1);
                }
                matched += 1;
            }
            "note" => {
                // The client closed the socket here; the next line opens another connection.
                if let Some(mut old) = ws.take() {
                    let _ = old.close(None).await;
                }
                conn_no = None;
            }
            other => panic!("{name}:{}: unknown direction {other}", n + 1),
        }
    }
    assert!(matched > 0, "{name}: nothing compared");
}

#[tokio::test]
async fn current_recordings_replay_in_the_order_they_were_recorded() {
    // One instance through all recordings, in the order HA went through them: later recordings list
    // and delete the backups the earlier ones made.
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(400)).await;
    let mut ids = HashMap::new();
    for file in [
        "backup-generate-coalesced.jsonl",
        "backup-generate-busy-and-protected.jsonl",
        "service-delete-then-create.jsonl",
        "delete-errors-ping.jsonl",
        "reconnect-mid-backup.jsonl",
    ] {
        replay(&sim, &fixtures("2026.11.0").join(file), TOKEN, &mut ids).await;
    }
    // Every recorded backup id was mapped onto one the simulator made.
    for recorded in ["dcc25121", "eb2931d0", "c0335d4b", "fa18070d"] {
        let own = &ids[recorded];
        assert_eq!(own.len(), 8);
        assert!(own.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

#[tokio::test]
async fn auth_invalid_recordings_replay_for_both_versions() {
    for (version, dir) in [
        (SimVersion::Current, "2026.11.0"),
        (SimVersion::Legacy, "2024.3.3"),
    ] {
        let (sim, _dir) = start(version, Duration::from_millis(10)).await;
        let mut ids = HashMap::new();
        replay(
            &sim,
            &fixtures(dir).join("auth-invalid.jsonl"),
            "not-the-token",
            &mut ids,
        )
        .await;
    }
}

#[tokio::test]
async fn legacy_recording_replays() {
    let (sim, _dir) = start(SimVersion::Legacy, Duration::from_millis(20)).await;
    let mut ids = HashMap::new();
    replay(
        &sim,
        &fixtures("2024.3.3").join("legacy-backup-generate.jsonl"),
        TOKEN,
        &mut ids,
    )
    .await;
    // The removed one is gone from disk, the other is `<slug>.tar`.
    let remaining = sim.backups();
    assert_eq!(remaining.len(), 1);
    let slug = remaining[0]["slug"].as_str().unwrap();
    let path = sim.archive_path(slug).unwrap();
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        format!("{slug}.tar")
    );
    assert!(path.exists());
    assert!(
        !sim.archive_path(&ids["cf400062"])
            .is_some_and(|p| p.exists())
    );
}

// ---------------------------------------------------------------------------------------------
// Archives and the backups list

async fn generate(ws: &mut Ws, id: u64, extra: Value) -> (String, Vec<Value>) {
    let mut cmd = json!({"id": id, "type": "backup/generate", "agent_ids": ["backup.local"]});
    if let (Some(c), Some(e)) = (cmd.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    send(ws, cmd).await;
    let seen = read_until(ws, |m| {
        m["type"] == "event" && m["event"]["manager_state"] == "idle"
    })
    .await;
    let job = seen
        .iter()
        .find(|m| m["id"] == id && m["type"] == "result")
        .map(|m| m["result"]["backup_job_id"].as_str().unwrap().to_string())
        .expect("generate result");
    (job, seen)
}

async fn subscribe_backup(ws: &mut Ws, id: u64) {
    send(ws, json!({"id": id, "type": "backup/subscribe_events"})).await;
    read_until(ws, is_result(id)).await;
}

fn read_archive(path: &Path) -> (Value, Vec<String>, Vec<u8>) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut names = Vec::new();
    let mut meta = Value::Null;
    let mut inner = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name == "./backup.json" {
            meta = serde_json::from_slice(&data).unwrap();
        } else {
            inner = data;
        }
        names.push(name);
    }
    (meta, names, inner)
}

#[tokio::test]
async fn archive_is_a_real_ha_backup() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(dir.path());
    opts.token = TOKEN.into();
    opts.payload_bytes = 300_000;
    opts.stage_duration = Duration::from_millis(20);
    let sim = Sim::start(opts).await.unwrap();
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    let (id, seen) = generate(
        &mut ws,
        2,
        json!({"name": "nightly run", "include_database": false}),
    )
    .await;

    let path = sim.archive_path(&id).unwrap();
    let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(file_name.starts_with("nightly_run_"), "{file_name}");
    assert!(file_name.ends_with(".tar"));
    use std::os::unix::fs::PermissionsExt;
    let meta_fs = std::fs::metadata(&path).unwrap();
    assert_eq!(meta_fs.permissions().mode() & 0o777, 0o640);

    let (meta, names, inner) = read_archive(&path);
    assert_eq!(names, ["./backup.json", "homeassistant.tar.gz"]);
    assert_eq!(meta["slug"], id.as_str());
    assert_eq!(meta["name"], "nightly run");
    assert_eq!(meta["version"], 2);
    assert_eq!(meta["protected"], false);
    assert_eq!(meta["homeassistant"]["exclude_database"], true);
    assert_eq!(meta["homeassistant"]["version"], "2026.11.0");
    let mut keys: Vec<&String> = meta.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "compressed",
            "date",
            "extra",
            "homeassistant",
            "name",
            "protected",
            "slug",
            "type",
            "version"
        ]
    );

    let mut inner_tar = tar::Archive::new(flate2::read::GzDecoder::new(&inner[..]));
    let mut payload = 0;
    let mut inner_names = Vec::new();
    for entry in inner_tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name == "data/payload.bin" {
            payload = data.len();
        }
        inner_names.push(name);
    }
    assert!(inner_names.contains(&"data/configuration.yaml".to_string()));
    assert_eq!(payload, 300_000);

    // The size HA reports is the file's size, and the upload progress ends there.
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(sim.backups()[0]["agents"]["backup.local"]["size"], size);
    let last_progress = seen
        .iter()
        .rfind(|m| m["event"].get("uploaded_bytes").is_some())
        .unwrap();
    assert_eq!(last_progress["event"]["uploaded_bytes"], size);
    assert_eq!(last_progress["event"]["total_bytes"], size);
    assert!(last_progress["event"].get("state").is_none());
}

#[tokio::test]
async fn archive_grows_during_the_home_assistant_stage() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(dir.path());
    opts.token = TOKEN.into();
    opts.payload_bytes = 1_000_000;
    opts.stage_duration = Duration::from_millis(800);
    let sim = Sim::start(opts).await.unwrap();
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    send(
        &mut ws,
        json!({"id": 2, "type": "backup/generate", "agent_ids": ["backup.local"]}),
    )
    .await;
    read_until(&mut ws, |m| m["event"]["stage"] == "home_assistant").await;
    let running = sim.control().running_archive_path().unwrap();
    // Sample the file until completion: at least one sample sees it present but incomplete.
    let mut partial_seen = false;
    let mut done = false;
    while !done {
        if let Ok(meta) = std::fs::metadata(&running)
            && meta.len() > 0
            && meta.len() < 1_000_000
        {
            partial_seen = true;
        }
        tokio::select! {
            msgs = next_msgs(&mut ws) => done = msgs.iter().any(is_manager("completed")),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    assert!(partial_seen, "the archive never appeared incomplete");
    assert!(std::fs::metadata(&running).unwrap().len() > 1_000_000);
}

#[tokio::test]
async fn protected_backup_is_marked_and_its_inner_archive_is_opaque() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    let (id, _) = generate(&mut ws, 2, json!({"password": "s3cret"})).await;
    let (meta, _, inner) = read_archive(&sim.archive_path(&id).unwrap());
    assert_eq!(meta["protected"], true);
    assert_eq!(
        sim.backups()[0]["agents"]["backup.local"]["protected"],
        true
    );
    let mut out = Vec::new();
    assert!(
        flate2::read::GzDecoder::new(&inner[..])
            .read_to_end(&mut out)
            .is_err()
    );
}

#[tokio::test]
async fn shell_command_deletes_files_but_the_list_stays_stale_until_restart() {
    let (mut sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    let (id, _) = generate(&mut ws, 2, json!({})).await;
    let path = sim.archive_path(&id).unwrap();
    send(&mut ws, json!({"id": 3, "type": "call_service", "domain": "shell_command", "service": "delete_backups", "service_data": {}, "return_response": true})).await;
    let seen = read_until(&mut ws, is_result(3)).await;
    assert_eq!(seen.last().unwrap()["result"]["response"]["returncode"], 0);
    assert!(!path.exists());
    send(&mut ws, json!({"id": 4, "type": "backup/info"})).await;
    let info = read_until(&mut ws, is_result(4)).await.pop().unwrap();
    assert_eq!(info["result"]["backups"][0]["backup_id"], id.as_str());

    // HA reads the folder again when it starts.
    sim.restart().await.unwrap();
    assert!(sim.backups().is_empty());
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "backup/info"})).await;
    let info = read_until(&mut ws, is_result(1)).await.pop().unwrap();
    assert_eq!(info["result"]["backups"], json!([]));
}

#[tokio::test]
async fn restart_lists_archives_already_in_the_folder_and_keeps_the_port() {
    let (mut sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let addr = sim.addr();
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    let (id, _) = generate(&mut ws, 2, json!({"name": "kept"})).await;
    sim.restart().await.unwrap();
    // The old connection was closed by the restart.
    assert!(matches!(
        next_message(&mut ws).await,
        Some(Message::Close(_)) | None
    ));
    assert_eq!(sim.addr(), addr);
    let listed = sim.backups();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["backup_id"], id.as_str());
    assert_eq!(listed[0]["name"], "kept");
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"id": 1, "type": "pong"}));
}

// ---------------------------------------------------------------------------------------------
// Protocol edges

#[tokio::test]
async fn bad_input_is_answered_like_ha_and_never_kills_the_server() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "backup/delete"})).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["error"]["code"], "invalid_format");
    assert_eq!(
        m["error"]["message"],
        "required key not provided at 'backup_id'. Got None"
    );
    send(&mut ws, json!({"type": "ping"})).await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        m,
        json!({"id": null, "type": "result", "success": false, "error": {"code": "invalid_format", "message": "Message incorrectly formatted."}})
    );
    send(
        &mut ws,
        json!({"id": 2, "type": "unsubscribe_events", "subscription": 99}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await["error"],
        json!({"code": "not_found", "message": "Subscription not found."})
    );
    send(
        &mut ws,
        json!({"id": 3, "type": "backup/generate", "agent_ids": ["nope.agent"]}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await["error"]["message"],
        "At least one available backup agent must be selected, got ['nope.agent']"
    );
    send(&mut ws, json!({"id": 4, "type": "ping", "extra": 1})).await;
    assert_eq!(next_json(&mut ws).await["error"]["code"], "invalid_format");
    // Deep nesting is just JSON that is not a command.
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    ws.send(Message::text(deep)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "invalid_format");
    send(&mut ws, json!({"id": 5, "type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"id": 5, "type": "pong"}));
    // A frame that is not JSON: HA closes the connection without a word.
    ws.send(Message::text("not json")).await.unwrap();
    assert!(
        matches!(next_message(&mut ws).await, Some(Message::Close(Some(f))) if u16::from(f.code) == 1000)
    );
    // The server carries on.
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn non_auth_message_before_auth_is_refused_and_closed() {
    for version in [SimVersion::Current, SimVersion::Legacy] {
        let (sim, _dir) = start(version, Duration::from_millis(10)).await;
        let mut ws = connect(&sim).await;
        next_json(&mut ws).await;
        send(&mut ws, json!({"type": "ping", "id": 1})).await;
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "auth_invalid");
        assert!(
            m["message"]
                .as_str()
                .unwrap()
                .starts_with("Auth message incorrectly formatted: ")
        );
        assert!(matches!(
            next_message(&mut ws).await,
            Some(Message::Close(_))
        ));
    }
}

#[tokio::test]
async fn only_the_websocket_path_is_served() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let url = format!("ws://{}/api/other", sim.addr());
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn received_frames_are_recorded_per_connection_with_the_token_redacted() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 7, "type": "ping"})).await;
    next_json(&mut ws).await;
    let mut other = authed(&sim).await;
    send(&mut other, json!({"id": 1, "type": "ping"})).await;
    next_json(&mut other).await;
    let got = sim.received();
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0].frame,
        json!({"type": "auth", "access_token": "<redacted>"})
    );
    assert_eq!(got[1].frame["id"], 7);
    assert_ne!(got[1].conn, got[3].conn);
    assert!(!format!("{got:?}").contains(TOKEN));
}

#[tokio::test]
async fn service_calls_fire_events_and_notifications_are_kept() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    send(
        &mut ws,
        json!({"id": 1, "type": "subscribe_events", "event_type": "call_service"}),
    )
    .await;
    next_json(&mut ws).await;
    send(&mut ws, json!({"id": 2, "type": "call_service", "domain": "persistent_notification", "service": "create", "service_data": {"message": "backup failed", "title": "hapull"}})).await;
    let event = next_json(&mut ws).await;
    let result = next_json(&mut ws).await;
    assert_eq!(event["id"], 1);
    assert_eq!(
        event["event"]["data"],
        json!({"domain": "persistent_notification", "service": "create", "service_data": {"message": "backup failed", "title": "hapull"}})
    );
    assert_eq!(event["event"]["context"], result["result"]["context"]);
    let notes = sim.notifications();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["message"], "backup failed");
    assert_eq!(notes[0]["title"], "hapull");
}

// ---------------------------------------------------------------------------------------------
// Fault switches

#[tokio::test]
async fn fail_next_backup_reports_the_reason_and_leaves_no_file() {
    let (sim, dir) = start(SimVersion::Current, Duration::from_millis(20)).await;
    sim.control().fail_next_backup("upload_failed");
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    let (_, seen) = generate(&mut ws, 2, json!({})).await;
    let states: Vec<Value> = seen
        .iter()
        .filter(|m| m["id"] == 1)
        .map(|m| m["event"].clone())
        .collect();
    assert_eq!(states.last().unwrap(), &json!({"manager_state": "idle"}));
    assert_eq!(
        states[states.len() - 2],
        json!({"manager_state": "create_backup", "reason": "upload_failed", "stage": null, "state": "failed"})
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(sim.backups().is_empty());
    // Only the next one fails.
    let (id, _) = generate(&mut ws, 3, json!({})).await;
    assert!(sim.archive_path(&id).unwrap().exists());
}

#[tokio::test]
async fn failed_service_backup_answers_an_error() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    sim.control().fail_next_backup("disk full");
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "call_service", "domain": "backup", "service": "create", "service_data": {}})).await;
    let result = read_until(&mut ws, is_result(1)).await.pop().unwrap();
    assert_eq!(result["success"], false);
    assert_eq!(result["error"]["code"], "home_assistant_error");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk full")
    );
}

#[tokio::test]
async fn dropped_connections_do_not_stop_the_backup() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(600)).await;
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    send(
        &mut ws,
        json!({"id": 2, "type": "backup/generate", "agent_ids": ["backup.local"], "name": "blip"}),
    )
    .await;
    let seen = read_until(&mut ws, |m| m["event"]["stage"] == "home_assistant").await;
    let job = seen.iter().find(|m| m["id"] == 2).unwrap()["result"]["backup_job_id"].clone();
    sim.control().drop_connections();
    // No close frame: the TCP connection just ends.
    assert!(next_message(&mut ws).await.is_none());
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "backup/subscribe_events"})).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["event"]["manager_state"], "create_backup");
    read_until(&mut ws, is_manager("completed")).await;
    assert_eq!(sim.backups()[0]["backup_id"], job);
}

#[tokio::test]
async fn blocked_manager_refuses_backups_until_unblocked() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(dir.path());
    opts.token = TOKEN.into();
    opts.start_blocked = true;
    let sim = Sim::start(opts).await.unwrap();
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "backup/subscribe_events"})).await;
    assert_eq!(
        next_json(&mut ws).await["event"],
        json!({"manager_state": "blocked"})
    );
    next_json(&mut ws).await;
    send(
        &mut ws,
        json!({"id": 2, "type": "backup/generate", "agent_ids": ["backup.local"]}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await["error"],
        json!({"code": "home_assistant_error", "message": "Backup manager busy: blocked"})
    );
    sim.control().set_blocked(false);
    assert_eq!(
        next_json(&mut ws).await["event"],
        json!({"manager_state": "idle"})
    );
    let (id, _) = generate(&mut ws, 3, json!({})).await;
    assert!(sim.archive_path(&id).unwrap().exists());
}

#[tokio::test]
async fn slow_answers_come_after_events_produced_meanwhile() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let control = sim.control();
    let mut ws = authed(&sim).await;
    send(
        &mut ws,
        json!({"id": 1, "type": "subscribe_events", "event_type": "marker"}),
    )
    .await;
    next_json(&mut ws).await;
    control.set_answer_delay(Duration::from_secs(3600));
    send(&mut ws, json!({"id": 2, "type": "ping"})).await;
    // Let the ping reach the server before the event is fired.
    while sim.received().len() < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    control.fire_event("marker", json!({}));
    assert_eq!(next_json(&mut ws).await["event"]["event_type"], "marker");
    // Lifting the delay releases the held ping.
    control.set_answer_delay(Duration::ZERO);
    assert_eq!(next_json(&mut ws).await, json!({"id": 2, "type": "pong"}));
    send(&mut ws, json!({"id": 3, "type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["id"], 3);
}

#[tokio::test]
async fn flood_delivers_every_event_in_order() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    send(
        &mut ws,
        json!({"id": 1, "type": "subscribe_events", "event_type": "flood"}),
    )
    .await;
    next_json(&mut ws).await;
    sim.control().flood_events("flood", 5000);
    for n in 0..5000 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["event"]["data"]["n"], n);
    }
    assert_eq!(sim.fired_events().len(), 5000);
}

#[tokio::test]
async fn garbage_reaches_the_client_and_the_connection_keeps_working() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    let control = sim.control();
    control.send_garbage(Garbage::InvalidJson);
    let Some(Message::Text(t)) = next_message(&mut ws).await else {
        panic!()
    };
    assert!(serde_json::from_str::<Value>(&t).is_err());
    control.send_garbage(Garbage::UnknownType);
    assert_eq!(next_json(&mut ws).await["type"], "sim_unknown_message");
    control.send_garbage(Garbage::ResultForUnknownId);
    assert_eq!(next_json(&mut ws).await["id"], 987_654_321u64);
    control.send_garbage(Garbage::Oversized(5 * 1024 * 1024));
    let Some(Message::Text(t)) = next_message(&mut ws).await else {
        panic!()
    };
    assert!(t.len() > 5 * 1024 * 1024);
    control.send_garbage(Garbage::DeeplyNested(1000));
    let Some(Message::Text(t)) = next_message(&mut ws).await else {
        panic!()
    };
    assert!(
        serde_json::from_str::<Value>(&t).is_err(),
        "serde_json refuses nesting that deep"
    );
    send(&mut ws, json!({"id": 1, "type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn a_hung_backup_never_completes_and_keeps_the_manager_busy() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    sim.control().hang_next_backup();
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    send(
        &mut ws,
        json!({"id": 2, "type": "backup/generate", "agent_ids": ["backup.local"]}),
    )
    .await;
    read_until(&mut ws, |m| m["event"]["stage"] == "home_assistant").await;
    // Far longer than the whole backup would take; waiting only lets a broken hang show itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut ws, json!({"id": 3, "type": "backup/info"})).await;
    let seen = read_until(&mut ws, is_result(3)).await;
    assert!(!seen.iter().any(is_manager("completed")));
    let info = seen.last().unwrap();
    assert_eq!(info["result"]["state"], "create_backup");
    assert_eq!(info["result"]["backups"], json!([]));
    send(
        &mut ws,
        json!({"id": 4, "type": "backup/generate", "agent_ids": ["backup.local"]}),
    )
    .await;
    let busy = read_until(&mut ws, is_result(4)).await.pop().unwrap();
    assert_eq!(
        busy["error"]["message"],
        "Backup manager busy: create_backup"
    );
    assert!(sim.control().running_archive_path().unwrap().exists());
}

#[tokio::test]
async fn revoked_token_closes_connections_and_refuses_new_auth() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    sim.control().revoke_token();
    assert!(matches!(
        next_message(&mut ws).await,
        Some(Message::Close(_))
    ));
    let mut ws = connect(&sim).await;
    next_json(&mut ws).await;
    send(&mut ws, json!({"type": "auth", "access_token": TOKEN})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "auth_invalid", "message": "Invalid access token or password"})
    );
}

async fn corrupted(how: Corruption) -> (PathBuf, u64, tempfile::TempDir, Sim) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(dir.path());
    opts.token = TOKEN.into();
    opts.payload_bytes = 100_000;
    let sim = Sim::start(opts).await.unwrap();
    sim.control().corrupt_next_archive(how);
    let mut ws = authed(&sim).await;
    subscribe_backup(&mut ws, 1).await;
    let (id, _) = generate(&mut ws, 2, json!({})).await;
    let listed = sim.backups()[0]["agents"]["backup.local"]["size"]
        .as_u64()
        .unwrap();
    (sim.archive_path(&id).unwrap(), listed, dir, sim)
}

#[tokio::test]
async fn truncated_archive_is_shorter_than_listed() {
    let (path, listed, _dir, _sim) = corrupted(Corruption::Truncate).await;
    assert!(std::fs::metadata(&path).unwrap().len() < listed);
}

#[tokio::test]
async fn flipped_byte_keeps_the_size_and_structure_but_breaks_the_content() {
    let (path, listed, _dir, _sim) = corrupted(Corruption::FlipByte).await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), listed);
    let (meta, names, inner) = read_archive(&path);
    assert_eq!(names.len(), 2);
    assert!(meta["slug"].is_string());
    let mut out = Vec::new();
    assert!(
        flate2::read::GzDecoder::new(&inner[..])
            .read_to_end(&mut out)
            .is_err()
    );
}

#[tokio::test]
async fn stopped_server_refuses_connections_until_resumed() {
    let (mut sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let url = sim.ws_url();
    sim.stop_serving().await;
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err()
    );
    sim.resume_serving().await.unwrap();
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn legacy_generate_blocks_and_refuses_new_api_commands() {
    let (sim, _dir) = start(SimVersion::Legacy, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    send(
        &mut ws,
        json!({"id": 1, "type": "backup/generate", "name": "x"}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await["error"]["message"],
        "extra keys not allowed @ data['name']. Got 'x'"
    );
    for (id, kind) in [
        (2, "backup/config/info"),
        (3, "backup/agents/info"),
        (4, "backup/delete"),
    ] {
        send(&mut ws, json!({"id": id, "type": kind})).await;
        assert_eq!(next_json(&mut ws).await["error"]["code"], "unknown_command");
    }
    send(&mut ws, json!({"id": 5, "type": "backup/generate"})).await;
    let r = next_json(&mut ws).await;
    assert_eq!(r["result"]["name"], "Core 2024.3.3");
    let slug = r["result"]["slug"].as_str().unwrap();
    assert!(PathBuf::from(r["result"]["path"].as_str().unwrap()).ends_with(format!("{slug}.tar")));
    let (meta, names, _) = read_archive(&sim.archive_path(slug).unwrap());
    assert_eq!(names[0], "./backup.json");
    assert_eq!(meta["slug"], slug);
}

#[allow(dead_code)]
fn _control_is_clone_and_send(c: SimControl) -> impl Clone + Send + Sync {
    c
}

#[tokio::test]
async fn silent_client_is_closed_after_the_auth_timeout() {
    // HA's 10 s auth timeout, in real time: tokio's paused clock is not available to this crate's
    // tests, and the assertion is only that the close happens, not when.
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = connect(&sim).await;
    assert_eq!(next_json(&mut ws).await["type"], "auth_required");
    assert!(matches!(
        next_message(&mut ws).await,
        Some(Message::Close(_)) | None
    ));
}

#[tokio::test]
async fn unsubscribed_events_stop_arriving() {
    let (sim, _dir) = start(SimVersion::Current, Duration::from_millis(10)).await;
    let mut ws = authed(&sim).await;
    send(&mut ws, json!({"id": 1, "type": "subscribe_events"})).await;
    next_json(&mut ws).await;
    send(
        &mut ws,
        json!({"id": 2, "type": "fire_event", "event_type": "one"}),
    )
    .await;
    let event = next_json(&mut ws).await;
    assert_eq!(event["event"]["event_type"], "one");
    assert_eq!(event["event"]["data"], json!({}));
    assert_eq!(event["event"]["origin"], "LOCAL");
    assert_eq!(next_json(&mut ws).await["id"], 2);
    send(
        &mut ws,
        json!({"id": 3, "type": "unsubscribe_events", "subscription": 1}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["success"], true);
    send(
        &mut ws,
        json!({"id": 4, "type": "fire_event", "event_type": "two"}),
    )
    .await;
    // The next frame is the result, not an event.
    assert_eq!(next_json(&mut ws).await["id"], 4);
}

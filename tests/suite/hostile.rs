//! A hostile Home Assistant: names that try to escape `remote_dir` or the store, frames above the size
//! limit, JSON nested 100 000 levels deep, endless event floods, results for requests never sent, and
//! backups that never finish. In every case hapull must stay inside its folders, within memory and
//! time bounds, and say what happened.
//!
//! The simulator's fault switches are used where they exist; the rest comes from a small scripted
//! WebSocket server. Archive locating and pulling run against a real OpenSSH sshd.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::sshd::Sshd;
use futures_util::{SinkExt, StreamExt};
use hapull::config::{Backup, VerifyLevel};
use hapull::cycle::{Context, CycleError, Settings, Source, Step, ha_archive_file_name};
use hapull::ha::{
    Client, ClientOptions, ConnectionState, Endpoint, HaError, Incoming, SubItem, decode_frame,
};
use hapull::secret::Secret;
use hapull::store::{RetentionPolicy, Store};
use hapull::transfer::{HostKeyPolicy, PullOptions, SshTarget};
use hapull_sim::{Garbage, Sim, SimOptions};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Generous bound for anything that should take well under a second.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// A scripted Home Assistant
// ---------------------------------------------------------------------------------------------

type Handler = Box<dyn FnMut(&Value) -> Vec<Message> + Send>;

struct Scripted {
    url: String,
    /// Every frame the client sent after authenticating.
    received: Arc<Mutex<Vec<Value>>>,
}

impl Scripted {
    fn commands(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|v| v["type"].as_str().map(str::to_string))
            .collect()
    }
}

/// A server that authenticates like HA and answers each client frame with what the handler returns.
async fn scripted(mut make: impl FnMut() -> Handler + Send + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let mut handler = make();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let hello = json!({"type": "auth_required", "ha_version": "2026.11.0"});
                let _ = ws.send(text(hello)).await;
                let _ = ws.next().await;
                let _ = ws
                    .send(text(json!({"type": "auth_ok", "ha_version": "2026.11.0"})))
                    .await;
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    log.lock().unwrap().push(v.clone());
                    for out in handler(&v) {
                        if ws.send(out).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Scripted { url, received }
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

fn ok(v: &Value, result: Value) -> Message {
    text(json!({"id": v["id"], "type": "result", "success": true, "result": result}))
}

fn options(url: &str) -> ClientOptions {
    let mut o = ClientOptions::new(Endpoint::parse(url).unwrap(), Secret::new("t"), None).unwrap();
    o.request_timeout = Duration::from_secs(10);
    o.max_reconnect_delay = Duration::from_millis(500);
    o
}

/// HA 2026.11 as far as a cycle needs it: the job id and the backup it turns into are the script's.
/// Every backup event goes to the backup subscription; `backup/delete` is answered but must never
/// be sent by the tests that use this.
fn modern_ha(job_id: String, details: Value, listed: Vec<Value>) -> impl FnMut() -> Handler {
    move || {
        let job_id = job_id.clone();
        let details = details.clone();
        let listed = listed.clone();
        let mut sub_id = Value::Null;
        let mut generated = false;
        Box::new(move |v: &Value| {
            let event =
                |sub: &Value, body: Value| text(json!({"id": sub, "type": "event", "event": body}));
            match v["type"].as_str().unwrap_or("") {
                "backup/agents/info" => vec![ok(
                    v,
                    json!({"agents": [{"agent_id": "backup.local", "name": "local"}]}),
                )],
                "backup/subscribe_events" => {
                    sub_id = v["id"].clone();
                    vec![
                        ok(v, Value::Null),
                        event(&sub_id, json!({"manager_state": "idle"})),
                    ]
                }
                "backup/info" => {
                    let mut backups = listed.clone();
                    if generated {
                        backups.push(details.clone());
                    }
                    vec![ok(
                        v,
                        json!({"backups": backups, "state": "idle", "last_action_event": null}),
                    )]
                }
                "backup/generate" => {
                    generated = true;
                    vec![
                        ok(v, json!({"backup_job_id": job_id})),
                        event(
                            &sub_id,
                            json!({"manager_state": "create_backup", "reason": null, "stage": null, "state": "in_progress"}),
                        ),
                        event(
                            &sub_id,
                            json!({"manager_state": "create_backup", "reason": null, "stage": null, "state": "completed"}),
                        ),
                        event(&sub_id, json!({"manager_state": "idle"})),
                    ]
                }
                "backup/details" => vec![ok(v, json!({"agent_errors": {}, "backup": details}))],
                "backup/delete" => vec![ok(v, json!({"agent_errors": {}}))],
                "ping" => vec![text(json!({"id": v["id"], "type": "pong"}))],
                "supported_features" | "unsubscribe_events" => vec![ok(v, Value::Null)],
                _ => vec![text(
                    json!({"id": v["id"], "type": "result", "success": false,
                    "error": {"code": "unknown_command", "message": "Unknown command."}}),
                )],
            }
        })
    }
}

fn sshd_target(sshd: &Sshd) -> SshTarget {
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

async fn context(client: Client, ssh: SshTarget, store: &Path, remote_dir: &Path) -> Context {
    let mut pull = PullOptions {
        retry_budget: 1,
        min_backoff: Duration::from_millis(100),
        ..PullOptions::default()
    };
    pull.free_space_margin = 0;
    let identity = hapull::transfer::load_identity(&ssh.identity_file, None).unwrap();
    Context {
        client,
        source: Source::Sftp { ssh, identity },
        store: Arc::new(Store::open(store).unwrap()),
        audit: None,
        settings: Settings {
            backup: Backup {
                keep_on_ha: 0,
                name: "hapull {date}".into(),
                timeout: Duration::from_secs(20),
                blocked_timeout: Duration::from_secs(5),
                ..Backup::default()
            },
            remote_dir: remote_dir.display().to_string(),
            verify: VerifyLevel::Full,
            retention: RetentionPolicy::default(),
            timezone: jiff::tz::TimeZone::UTC,
            pull,
        },
        offsite: Vec::new(),
    }
}

/// Every file and folder under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(base).unwrap().to_path_buf());
            if p.is_dir() && !p.is_symlink() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// A Home Assistant backup archive: `./backup.json`, then `./homeassistant.tar.gz` holding `filler`.
fn archive(slug: &str, name: &str, date: &str, filler: &[u8]) -> Vec<u8> {
    let inner_tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(filler.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "data/filler.bin", filler).unwrap();
        b.into_inner().unwrap()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&inner_tar).unwrap();
    let inner = gz.finish().unwrap();
    let backup_json = serde_json::to_vec(&json!({
        "slug": slug, "name": name, "date": date, "type": "partial", "protected": false,
        "compressed": true, "homeassistant": {"version": "2026.11.0", "exclude_database": false},
    }))
    .unwrap();
    let mut outer = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("./backup.json", backup_json.as_slice()),
        ("./homeassistant.tar.gz", inner.as_slice()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        outer.append_data(&mut h, path, data).unwrap();
    }
    outer.into_inner().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Names that try to escape
// ---------------------------------------------------------------------------------------------

fn hostile_ids() -> Vec<String> {
    vec![
        "../../etc".into(),
        "../../../../tmp/hapull-escape".into(),
        "a/b".into(),
        "/etc/passwd".into(),
        "..".into(),
        ".".into(),
        "".into(),
        "nul\0byte".into(),
        "back\\slash".into(),
        "line\nbreak".into(),
        "\u{1b}[2Jterminal".into(),
        "x".repeat(10 * 1024),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_id_that_could_escape_is_refused_before_anything_is_written() {
    // A real SSH side: the cycle checks it before asking Home Assistant for anything.
    let sshd = Sshd::start();
    for id in hostile_ids() {
        let details = json!({"backup_id": id, "name": "n", "date": "2026-11-26T09:07:39.253410+00:00",
            "agents": {"backup.local": {"protected": false, "size": 10240}}});
        let ha = scripted(modern_ha(id.clone(), details, vec![])).await;
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("store");
        let remote = root.path().join("remote");
        std::fs::create_dir_all(&remote).unwrap();
        let client = Client::connect(options(&ha.url)).await.unwrap();
        let ctx = context(client, sshd_target(&sshd), &store, &remote).await;
        let before = tree(root.path());

        let err = tokio::time::timeout(PATIENCE, ctx.run_cycle())
            .await
            .expect("the cycle ends")
            .expect_err(&format!("backup id {:?} was accepted", clip(&id)));

        assert!(
            matches!(
                err,
                CycleError::Refused {
                    step: Step::Create,
                    ..
                }
            ),
            "{:?}: {err}",
            clip(&id)
        );
        let msg = err.to_string();
        assert!(msg.contains("unusable backup id"), "{msg}");
        assert!(
            msg.len() < 2048,
            "the error quotes a 10 KB name in full: {} bytes",
            msg.len()
        );
        // Only hapull's ledger, which records each request before it is sent, is new; the refused
        // id is not in it and the request is not left pending.
        let mut after = tree(root.path());
        let ledger_file = Path::new("store").join(hapull::store::LEDGER_FILE);
        assert!(after.remove(&ledger_file), "the request was recorded first");
        assert_eq!(after, before, "files written for {:?}", clip(&id));
        let ledger = hapull::store::Ledger::read(&store).unwrap();
        assert!(
            ledger.ids.is_empty() && ledger.pending.is_empty(),
            "{:?}",
            clip(&format!("{ledger:?}"))
        );
        assert!(
            !ha.commands()
                .iter()
                .any(|c| c == "backup/delete" || c == "backup/details"),
            "{:?}",
            ha.commands()
        );
    }
    assert!(!Path::new("/tmp/hapull-escape").exists());
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_ha_never_lead_outside_remote_dir_or_the_store() {
    let sshd = Sshd::start();
    let root = sshd.remote_dir();
    let remote = root.join("backups");
    std::fs::create_dir_all(&remote).unwrap();
    let date = "2026-11-26T09:07:39.253410+00:00";
    let id = "dcc25121";

    // The name HA reports would make HA's file-name rule point one folder up, where a decoy with the
    // right slug waits; hapull must find the real archive inside remote_dir instead.
    let traversal_name = "../decoy";
    let decoy_file = ha_archive_file_name(traversal_name, date).unwrap();
    assert!(decoy_file.starts_with("../"), "{decoy_file}");
    let decoy = archive(id, traversal_name, date, b"decoy outside remote_dir");
    std::fs::write(remote.join(&decoy_file), &decoy).unwrap();
    let real = archive(id, traversal_name, date, b"the real archive");
    std::fs::write(remote.join("renamed_by_someone.tar"), &real).unwrap();
    // Files a hostile host could name: control characters, a newline, a name at the file system's
    // limit. They are skipped (not safe names) or read in place and found to be other backups.
    for name in [
        "\u{1b}[2J.tar".to_string(),
        "new\nline.tar".to_string(),
        format!("{}.tar", "l".repeat(250)),
    ] {
        std::fs::write(remote.join(&name), archive("other", "x", date, b"x")).unwrap();
    }
    let outside_before = tree(&root);

    // A display name of 10 KB with NUL, escapes and slashes: it only ever becomes a slug.
    let long_name = format!(
        "../../{}\0\u{1b}[31m/{}",
        "n".repeat(10 * 1024),
        "/etc/cron.d/x"
    );
    for name in [traversal_name.to_string(), long_name] {
        let details = json!({"backup_id": id, "name": name, "date": date,
            "agents": {"backup.local": {"protected": false, "size": real.len()}}});
        let ha = scripted(modern_ha(id.into(), details, vec![])).await;
        let store_parent = tempfile::tempdir().unwrap();
        let store = store_parent.path().join("store");
        let client = Client::connect(options(&ha.url)).await.unwrap();
        let ctx = context(client, sshd_target(&sshd), &store, &remote).await;

        let report = tokio::time::timeout(PATIENCE, ctx.run_cycle())
            .await
            .expect("the cycle ends")
            .unwrap_or_else(|e| panic!("cycle failed: {e}"));

        let stored = std::fs::read(&report.archive.path).unwrap();
        assert_eq!(stored, real, "the decoy outside remote_dir was pulled");
        assert!(report.archive.path.starts_with(&store));
        // Everything the store wrote is a plain name inside it.
        for rel in tree(store_parent.path()) {
            assert!(rel.starts_with("store"), "{rel:?} is outside the store");
            for c in rel.components() {
                let s = c.as_os_str().to_str().unwrap();
                assert!(s.len() <= 255, "{} bytes", s.len());
                assert!(!s.chars().any(char::is_control), "{s:?}");
            }
        }
        // Nothing at or beyond remote_dir was written, renamed or deleted (clean-up goes through HA).
        assert_eq!(tree(&root), outside_before);
        // HA deletes only the backup that now has a verified copy, by its id.
        let deletes: Vec<Value> = ha
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "backup/delete")
            .cloned()
            .collect();
        assert!(deletes.iter().all(|d| d["backup_id"] == id), "{deletes:?}");
    }
}

#[test]
fn the_decoder_refuses_100k_levels_of_nesting_without_a_stack_overflow() {
    // A small stack makes a recursion that escaped serde_json's limit fail here, not in production.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let depth = 100_000;
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            let in_a_result =
                format!("{{\"id\":1,\"type\":\"result\",\"success\":true,\"result\":{arrays}}}");
            let mut reasons = Vec::new();
            for frame in [arrays, objects, in_a_result] {
                let items = decode_frame(&frame);
                assert_eq!(items.len(), 1);
                let Incoming::Ignored { reason } = &items[0] else {
                    panic!("accepted: {:?}", items[0]);
                };
                assert!(reason.contains("recursion limit"), "{reason}");
                assert!(reason.len() < 1024, "{} bytes", reason.len());
                reasons.push(reason.clone());
            }
            reasons
        })
        .unwrap();
    let reasons = handle.join().expect("decoding overflowed the stack");
    assert_eq!(reasons.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// The wire: frames too big, too deep, too many, or answering nothing
// ---------------------------------------------------------------------------------------------

async fn sim() -> (Sim, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(dir.path())).await.unwrap();
    (sim, dir)
}

async fn sim_client(sim: &Sim, max_message_size: usize) -> Client {
    let mut o = ClientOptions::new(
        Endpoint::parse(&sim.url()).unwrap(),
        Secret::new("sim-token"),
        None,
    )
    .unwrap();
    o.request_timeout = Duration::from_secs(10);
    o.max_reconnect_delay = Duration::from_millis(500);
    o.max_message_size = max_message_size;
    Client::connect(o).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_above_max_message_size_drops_the_connection_and_hapull_reconnects() {
    let (sim, _dir) = sim().await;
    let client = sim_client(&sim, 1 << 20).await;
    let mut state = client.state();
    sim.control().send_garbage(Garbage::Oversized(64 << 20));

    let reason = tokio::time::timeout(PATIENCE, async {
        loop {
            state.changed().await.unwrap();
            if let ConnectionState::Reconnecting { reason } = state.borrow().clone() {
                return reason;
            }
        }
    })
    .await
    .expect("the oversized frame ended the connection");
    assert!(reason.contains("too long"), "{reason}");
    assert!(reason.len() < 1024, "{reason}");

    tokio::time::timeout(
        PATIENCE,
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .expect("reconnected")
    .unwrap();
    let list = client.backup_info().await.unwrap();
    assert_eq!(list.state, "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_from_the_server_is_skipped_and_the_connection_survives() {
    let (sim, _dir) = sim().await;
    let client = sim_client(&sim, 16 << 20).await;
    let mut state = client.state();
    for _ in 0..3 {
        sim.control().send_garbage(Garbage::DeeplyNested(100_000));
    }
    let list = tokio::time::timeout(PATIENCE, client.backup_info())
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(list.state, "idle");
    assert_eq!(*state.borrow_and_update(), ConnectionState::Connected);
    assert!(!state.has_changed().unwrap(), "the connection was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_deep_to_parse_is_reported_as_an_unanswered_request() {
    let ha = scripted(|| {
        Box::new(|v: &Value| {
            if v["type"] == "backup/info" {
                let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
                let body = format!(
                    "{{\"id\":{},\"type\":\"result\",\"success\":true,\"result\":{deep}}}",
                    v["id"]
                );
                vec![Message::Text(body.into())]
            } else {
                vec![ok(v, Value::Null)]
            }
        })
    })
    .await;
    let mut opts = options(&ha.url);
    opts.request_timeout = Duration::from_millis(500);
    let client = Client::connect(opts).await.unwrap();
    let err = client.backup_info().await.unwrap_err();
    assert!(matches!(err, HaError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("backup/info"), "{err}");
    // Still usable afterwards.
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_flood_is_read_to_the_end_with_bounded_buffering_and_counted_drops() {
    let (sim, _dir) = sim().await;
    let client = sim_client(&sim, 16 << 20).await;
    let mut sub = client
        .subscribe_events(Some("hostile_flood"))
        .await
        .unwrap();
    let total = 50_000;
    sim.control().flood_events("hostile_flood", total);

    // The pong comes after every flood frame on the same socket: once it is here, hapull has read
    // the whole flood although nobody consumed the subscription.
    tokio::time::timeout(PATIENCE, client.ping())
        .await
        .expect("the reader kept reading during the flood")
        .unwrap();
    let queued = sub.drain();
    assert!(
        queued.iter().all(|i| matches!(i, SubItem::Event(_))),
        "{:?}",
        queued.iter().find(|i| !matches!(i, SubItem::Event(_)))
    );
    assert!(
        queued.len() < total,
        "all {total} events were buffered: no bound"
    );
    // The events kept are the first ones, in order.
    for (n, item) in queued.iter().enumerate() {
        let SubItem::Event(e) = item else {
            unreachable!()
        };
        assert_eq!(e["data"]["n"], json!(n));
    }

    // The next delivery reports how many were dropped, then the event itself.
    sim.control()
        .fire_event("hostile_flood", json!({"n": "marker"}));
    client.ping().await.unwrap();
    let after = sub.drain();
    assert_eq!(after.len(), 2, "{after:?}");
    let SubItem::Lagged(dropped) = after[0] else {
        panic!("no lag report: {:?}", after[0])
    };
    assert_eq!(
        dropped as usize + queued.len(),
        total,
        "events unaccounted for"
    );
    let SubItem::Event(e) = &after[1] else {
        panic!("{:?}", after[1])
    };
    assert_eq!(e["data"]["n"], "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_for_ids_never_sent_are_ignored_and_do_not_answer_other_requests() {
    let ha = scripted(|| {
        Box::new(|v: &Value| {
            let id = v["id"].as_u64().unwrap();
            if v["type"] != "backup/info" {
                return vec![ok(v, Value::Null)];
            }
            let bogus = |id: Value| {
                text(json!({"id": id, "type": "result", "success": false,
                    "error": {"code": "bogus", "message": "for nobody"}}))
            };
            vec![
                bogus(json!(id + 1000)),
                bogus(json!(u64::MAX)),
                bogus(json!(-1)),
                bogus(json!(id as f64 + 0.5)),
                bogus(json!(id.to_string())),
                bogus(json!(null)),
                text(json!([{"id": id + 1, "type": "result", "success": true, "result": "early"}])),
                ok(v, json!({"backups": [], "state": "idle"})),
                // A second answer to the same request: already settled, ignored.
                bogus(json!(id)),
            ]
        })
    })
    .await;
    let client = Client::connect(options(&ha.url)).await.unwrap();
    for _ in 0..3 {
        let list = client.backup_info().await.unwrap();
        assert_eq!(list.state, "idle");
        client.ping().await.unwrap();
    }
    assert_eq!(*client.state().borrow(), ConnectionState::Connected);

    // Through the simulator's switch as well, while a request is waiting.
    let (sim, _dir) = sim().await;
    let client = sim_client(&sim, 16 << 20).await;
    sim.control().set_answer_delay(Duration::from_millis(200));
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.backup_info().await }
    });
    for _ in 0..10 {
        sim.control().send_garbage(Garbage::ResultForUnknownId);
    }
    let list = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert_eq!(list.state, "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_only_other_ids_times_out_with_the_command_named() {
    let ha = scripted(|| {
        Box::new(|v: &Value| {
            let id = v["id"].as_u64().unwrap();
            vec![text(
                json!({"id": id + 7, "type": "result", "success": true, "result": null}),
            )]
        })
    })
    .await;
    let mut opts = options(&ha.url);
    opts.request_timeout = Duration::from_millis(300);
    let client = Client::connect(opts).await.unwrap();
    let err = client.backup_info().await.unwrap_err();
    assert!(matches!(err, HaError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("backup/info"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A backup that never finishes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_never_finishes_times_out_and_deletes_nothing() {
    let (sim, dir) = sim().await;
    sim.control().hang_next_backup();
    let client = sim_client(&sim, 16 << 20).await;
    let store = tempfile::tempdir().unwrap();
    let sshd = Sshd::start();
    let mut ctx = context(client, sshd_target(&sshd), store.path(), dir.path()).await;
    ctx.settings.backup.timeout = Duration::from_secs(2);

    let err = tokio::time::timeout(PATIENCE, ctx.run_cycle())
        .await
        .expect("the cycle gives up by itself")
        .unwrap_err();

    assert!(
        matches!(
            err,
            CycleError::Timeout {
                step: Step::Await,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("did not complete"), "{msg}");
    assert!(msg.contains("nothing was deleted"), "{msg}");
    let sent: Vec<String> = sim
        .received()
        .iter()
        .filter_map(|r| r.frame["type"].as_str().map(str::to_string))
        .collect();
    assert!(
        !sent.iter().any(|t| t == "backup/delete"),
        "a delete was sent: {sent:?}"
    );
    let partial = sim
        .control()
        .running_archive_path()
        .expect("the backup is still running");
    assert!(partial.exists(), "HA's unfinished archive was removed");
    let stored = Store::open(store.path()).unwrap().list().unwrap();
    assert!(stored.is_empty(), "{stored:?}");
}

// ---------------------------------------------------------------------------------------------
// Inputs the fuzzers found (or that were once dangerous), replayed with the fuzz targets' checks
// ---------------------------------------------------------------------------------------------

#[path = "../../fuzz/checks.rs"]
mod checks;

#[test]
fn fuzz_regressions_replay_cleanly() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 4] = [
        ("ha_decode", checks::ha_decode),
        ("archive_verify", checks::archive_verify),
        ("tar_prefix", checks::tar_prefix),
        ("names", checks::names),
    ];
    let mut replayed = 0;
    for (target, check) in targets {
        let Ok(entries) = std::fs::read_dir(base.join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // On its own thread so a panic names the input that caused it.
            let name = path.display().to_string();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || check(&data))
                .unwrap()
                .join()
                .unwrap_or_else(|_| panic!("{name} fails again"));
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no regression inputs under {}",
        base.display()
    );
}

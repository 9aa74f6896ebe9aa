//! Which backup is hapull's: turning a Supervisor job id into the backup id when the job cannot say
//! (the name, date and instance rule), and backups whose cycle stopped before their id was recorded
//! (pending requests), resolved by a later cycle, pulled and cleaned up like every backup hapull made.
//! Full cycles against the simulator's Supervisor and Core personalities, archives pulled by a real
//! OpenSSH sshd or Home Assistant's HTTP download; the process test kills the real binary.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hapull::cycle::Step;
use hapull::store::{Ledger, LedgerEntry, Store};
use hapull_sim::{JobAnswer, SimVersion};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::installs::{Rig, context, ha_ids, rig};
use crate::support::KillOnDrop;
use crate::support::config;

/// One fixed name for every backup: the hardest case for telling them apart by name.
const NAME: &str = "hapull nightly";
const OTHER_INSTANCE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn ledger(store: &Path) -> Ledger {
    Ledger::read(store).unwrap()
}

fn audit(rig: &Rig, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(&rig.audit_path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == kind)
        .map(|r| r["data"].clone())
        .collect()
}

fn stored(store: &Path) -> Vec<String> {
    let mut ids: Vec<String> = Store::open_read_only(store)
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.manifest.backup_id)
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Backups with hapull's name that are not the one it asked for: one of this instance dated an hour
/// before the request, one of another instance dated after it, one dated after it that is already in
/// hapull's ledger. Returns their ids in that order.
fn decoys(rig: &Rig) -> [String; 3] {
    let c = rig.sim.control();
    let now = Timestamp::now();
    let older = c
        .add_backup(NAME, now - SignedDuration::from_hours(1), None)
        .unwrap();
    let foreign = c
        .add_backup(
            NAME,
            now + SignedDuration::from_mins(10),
            Some(OTHER_INSTANCE),
        )
        .unwrap();
    let known = c
        .add_backup(NAME, now + SignedDuration::from_mins(20), None)
        .unwrap();
    // Made and committed by hapull earlier (retention has pruned its copy since).
    Ledger::remember(&rig.store_dir, LedgerEntry::Made, &known).unwrap();
    Ledger::remember(&rig.store_dir, LedgerEntry::Committed, &known).unwrap();
    [older, foreign, known]
}

/// The job ids `backup/generate` answered, in order.
fn job_ids(rig: &Rig) -> Vec<String> {
    audit(rig, "backup.created")
        .iter()
        .filter_map(|d| d["job_id"].as_str().map(str::to_string))
        .collect()
}

/// A first cycle identified by the job's reference (so hapull's instance is known from its backup),
/// then a cycle where the Supervisor's job says nothing useful: the backup is found by name, date and
/// instance, among backups of the same name that are not it.
async fn fallback_identifies_our_new_backup(sftp: bool, answer: JobAnswer) {
    let rig = rig(SimVersion::Supervisor, sftp, 0).await;
    let mut ctx = context(&rig, 3).await;
    ctx.settings.backup.name = NAME.into();
    let first = ctx.run_cycle().await.unwrap();
    rig.sim.control().set_job_answer(answer);
    let [older, foreign, known] = decoys(&rig);
    let before = ha_ids(&rig.sim);

    let second = ctx.run_cycle().await.unwrap();

    // The right backup: the one the job made, nothing else.
    let new: Vec<String> = (ha_ids(&rig.sim).into_iter())
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(new, vec![second.backup_id.clone()], "{answer:?}");
    for decoy in [&older, &foreign, &known, &first.backup_id] {
        assert_ne!(&second.backup_id, decoy, "{answer:?}");
    }
    assert_eq!(second.archive.manifest.backup_id, second.backup_id);
    let ha_file = rig.sim.archive_path(&second.backup_id).unwrap();
    assert_eq!(
        std::fs::read(&second.archive.path).unwrap(),
        std::fs::read(ha_file).unwrap()
    );
    assert_eq!(
        stored(&rig.store_dir),
        sorted(vec![first.backup_id.clone(), second.backup_id.clone()])
    );

    // The ledger holds backup ids, never job ids, and nothing is left pending.
    let jobs = job_ids(&rig);
    assert_eq!(jobs.len(), 2);
    let l = ledger(&rig.store_dir);
    assert!(l.made(&second.backup_id) && l.committed(&second.backup_id));
    assert!(!l.made(&older) && !l.made(&foreign));
    assert!(l.pending.is_empty(), "{:?}", l.pending);
    let text = std::fs::read_to_string(rig.store_dir.join(".hapull-made.json")).unwrap();
    for job in &jobs {
        assert!(!text.contains(job.as_str()), "job id in the ledger: {text}");
    }

    // The audit log says how.
    let identified = audit(&rig, "backup.identified");
    assert_eq!(identified.len(), 2);
    assert_eq!(identified[0]["how"], "supervisor job reference");
    assert_eq!(identified[1]["how"], "name, date and instance");
    assert_eq!(identified[1]["backup_id"], second.backup_id.as_str());
    assert_eq!(identified[1]["job_id"], jobs[1].as_str());

    // Everything else stays in HA: the decoys are not hapull's (or are kept by keep_on_ha).
    assert!(
        second.deleted_on_ha.is_empty(),
        "{:?}",
        second.deleted_on_ha
    );
    for id in [&older, &foreign, &known] {
        assert!(ha_ids(&rig.sim).contains(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_reference_is_identified_by_name_date_and_instance_over_sftp() {
    fallback_identifies_our_new_backup(true, JobAnswer::NoReference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_job_is_identified_by_name_date_and_instance_over_http() {
    fallback_identifies_our_new_backup(false, JobAnswer::UnknownJob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_supervisor_falls_back_to_name_date_and_instance() {
    fallback_identifies_our_new_backup(true, JobAnswer::Unreachable).await;
}

/// A job that ended with errors still names the backup it started: that name is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_jobs_reference_is_not_taken_for_a_finished_backup() {
    fallback_identifies_our_new_backup(false, JobAnswer::Failed).await;
}

/// With `keep_on_ha = 0` none of hapull's backups stays listed to show which instance is this one:
/// the instance is remembered from the last backup identified for certain, and a newer backup of the
/// same name from another instance is still not taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_is_remembered_when_no_backup_of_hapulls_is_left_in_ha() {
    let rig = rig(SimVersion::Supervisor, true, 0).await;
    let mut ctx = context(&rig, 0).await;
    ctx.settings.backup.name = NAME.into();
    let first = ctx.run_cycle().await.unwrap();
    assert_eq!(first.deleted_on_ha, vec![first.backup_id.clone()]);
    assert!(ha_ids(&rig.sim).is_empty());
    assert!(ledger(&rig.store_dir).instance_id.is_some());

    rig.sim.control().set_job_answer(JobAnswer::NoReference);
    let foreign = rig
        .sim
        .control()
        .add_backup(
            NAME,
            Timestamp::now() + SignedDuration::from_mins(10),
            Some(OTHER_INSTANCE),
        )
        .unwrap();
    let second = ctx.run_cycle().await.unwrap();
    assert_ne!(second.backup_id, foreign);
    assert_eq!(second.archive.manifest.backup_id, second.backup_id);
    assert_eq!(
        ha_ids(&rig.sim),
        vec![foreign.clone()],
        "the foreign one stays"
    );
    assert!(!ledger(&rig.store_dir).made(&foreign));
    let identified = audit(&rig, "backup.identified");
    assert_eq!(identified[1]["how"], "name, date and instance");
    assert_eq!(identified[1]["backup_id"], second.backup_id.as_str());
}

/// The backup the job made is not listed, and only backups that are not it carry the name: none is
/// taken, the cycle fails saying so, nothing is deleted anywhere, and the request stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_candidate_fails_clearly_and_deletes_nothing() {
    let rig = rig(SimVersion::Supervisor, true, 0).await;
    let mut ctx = context(&rig, 1).await;
    ctx.settings.backup.name = NAME.into();
    let first = ctx.run_cycle().await.unwrap();
    rig.sim.control().set_job_answer(JobAnswer::Unreachable);
    let [older, foreign, _known] = decoys(&rig);
    rig.sim.control().unlist_next_backup();
    let before = sorted(ha_ids(&rig.sim));

    let err = ctx.run_cycle().await.unwrap_err();

    let jobs = job_ids(&rig);
    let text = err.to_string();
    assert_eq!(err.step(), Some(Step::Await), "{text}");
    assert!(
        text.contains(&format!(
            "backup job {} completed but no new backup named \"{NAME}\" is listed; nothing was deleted",
            jobs[1]
        )),
        "{text}"
    );
    assert_eq!(sorted(ha_ids(&rig.sim)), before, "nothing deleted in HA");
    assert!(audit(&rig, "ha.deleted").is_empty());
    assert_eq!(stored(&rig.store_dir), vec![first.backup_id.clone()]);
    let l = ledger(&rig.store_dir);
    assert!(!l.made(&older) && !l.made(&foreign));
    assert_eq!(
        l.pending.len(),
        1,
        "kept for a later cycle: {:?}",
        l.pending
    );
    assert_eq!(l.pending[0].job_id.as_deref(), Some(jobs[1].as_str()));
    assert_eq!(l.pending[0].name.as_deref(), Some(NAME));
}

/// What a user checks after an interrupted cycle: the backup it left in HA is hapull's (ledger),
/// has a verified copy in the store, and is deleted from HA by clean-up only after that copy exists.
fn assert_interrupted_backup_recovered(
    rig: &Rig,
    first: &str,
    last: &hapull::cycle::Report,
) -> String {
    let identified = audit(rig, "backup.identified");
    let recovered: Vec<&Value> = identified
        .iter()
        .filter(|d| d["interrupted"] == true)
        .collect();
    assert_eq!(recovered.len(), 1, "{identified:?}");
    let id = recovered[0]["backup_id"].as_str().unwrap().to_string();
    assert_ne!(id, first);
    assert_ne!(id, last.backup_id);

    let l = ledger(&rig.store_dir);
    assert!(l.pending.is_empty(), "{:?}", l.pending);
    assert!(l.made(&id) && l.committed(&id));
    assert_eq!(
        stored(&rig.store_dir),
        sorted(vec![first.to_string(), id.clone(), last.backup_id.clone()])
    );
    // keep_on_ha = 1: only the newest stays in HA; the recovered one went, after its copy was made.
    assert_eq!(ha_ids(&rig.sim), vec![last.backup_id.clone()]);
    assert!(last.deleted_on_ha.contains(&id), "{:?}", last.deleted_on_ha);
    let records: Vec<Value> = std::fs::read_to_string(&rig.audit_path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let at = |kind: &str| {
        records
            .iter()
            .position(|r| r["kind"] == kind && r["data"]["backup_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {kind} for {id}"))
    };
    assert!(at("archive.committed") < at("ha.deleted"));
    id
}

/// Await gives up on a Supervisor backup that takes too long; the backup finishes later, after the
/// Supervisor restarted (it no longer knows the job). The next cycle finds it by name, date and
/// instance, records it, pulls it and cleans it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_backup_left_by_a_timed_out_cycle_is_recorded_pulled_and_cleaned_up() {
    let rig = rig(SimVersion::Supervisor, true, 0).await;
    let mut ctx = context(&rig, 1).await;
    ctx.settings.backup.name = NAME.into();
    let first = ctx.run_cycle().await.unwrap();

    rig.sim.control().hang_next_backup();
    let mut impatient = ctx.clone();
    impatient.settings.backup.timeout = Duration::from_secs(2);
    let err = impatient.run_cycle().await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Await), "{err}");
    let l = ledger(&rig.store_dir);
    assert_eq!(l.ids, vec![first.backup_id.clone()]);
    assert_eq!(l.pending.len(), 1);
    let job = job_ids(&rig)[1].clone();
    assert_eq!(l.pending[0].job_id.as_deref(), Some(job.as_str()));

    rig.sim.control().set_job_answer(JobAnswer::UnknownJob);
    rig.sim.control().release_hung_backup();
    let last = ctx.run_cycle().await.unwrap();

    let id = assert_interrupted_backup_recovered(&rig, &first.backup_id, &last);
    let d = audit(&rig, "backup.identified")
        .into_iter()
        .find(|d| d["backup_id"] == id.as_str())
        .unwrap();
    assert_eq!(d["how"], "name, date and instance");
    assert_eq!(d["job_id"], job.as_str());
}

/// Core: the connection drops after `backup/generate` was sent and before its answer arrived, so the
/// cycle never learns the id of the backup HA went on to make. The next cycle identifies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_backup_whose_answer_was_lost_is_recorded_pulled_and_cleaned_up() {
    let rig = rig(SimVersion::Current, false, 0).await;
    let mut ctx = context(&rig, 1).await;
    ctx.settings.backup.name = NAME.into();
    let first = ctx.run_cycle().await.unwrap();

    rig.sim.control().drop_connection_on_next_generate();
    let err = ctx.run_cycle().await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Create), "{err}");
    let l = ledger(&rig.store_dir);
    assert_eq!(l.ids, vec![first.backup_id.clone()]);
    assert_eq!(l.pending.len(), 1, "the request is remembered");
    assert_eq!(l.pending[0].job_id, None);

    // A new connection, as the next run of a restarted process has.
    let mut ctx = context(&rig, 1).await;
    ctx.settings.backup.name = NAME.into();
    let last = ctx.run_cycle().await.unwrap();
    let id = assert_interrupted_backup_recovered(&rig, &first.backup_id, &last);
    let d = audit(&rig, "backup.identified")
        .into_iter()
        .find(|d| d["backup_id"] == id.as_str())
        .unwrap();
    assert_eq!(d["how"], "name, date and instance");
}

/// Legacy 2024.x: the connection drops while the blocking `backup/generate` runs; HA finishes the
/// backup anyway (named `Core <version>` by HA). The next cycle identifies it by that name and date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_backup_whose_answer_was_lost_is_recorded_pulled_and_cleaned_up() {
    let rig = rig(SimVersion::Legacy, true, 0).await;
    let ctx = context(&rig, 1).await;
    let first = ctx.run_cycle().await.unwrap();

    rig.sim.control().drop_connection_on_next_generate();
    let err = ctx.run_cycle().await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Create), "{err}");
    let l = ledger(&rig.store_dir);
    assert_eq!(l.ids, vec![first.backup_id.clone()]);
    assert_eq!(l.pending.len(), 1, "the request is remembered");
    assert_eq!(l.pending[0].name.as_deref(), Some("Core 2024.3.3"));

    let ctx = context(&rig, 1).await;
    let last = ctx.run_cycle().await.unwrap();
    let id = assert_interrupted_backup_recovered(&rig, &first.backup_id, &last);
    let d = audit(&rig, "backup.identified")
        .into_iter()
        .find(|d| d["backup_id"] == id.as_str())
        .unwrap();
    assert_eq!(d["how"], "name and date", "legacy lists no instance");
}

/// A refused request (HA busy) made nothing: its pending entry goes at once, nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_leaves_nothing_pending() {
    let rig = rig(SimVersion::Supervisor, false, 0).await;
    let ctx = context(&rig, 1).await;
    rig.sim.control().refuse_next_generate();
    let err = ctx.run_cycle().await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Create), "{err}");
    assert!(err.to_string().contains("Backup manager busy"), "{err}");
    let l = ledger(&rig.store_dir);
    assert!(l.pending.is_empty() && l.ids.is_empty(), "{l:?}");
    assert!(ha_ids(&rig.sim).is_empty());
}

/// The real binary, killed (SIGKILL) while it waits for a Supervisor backup: the next `hapull once`
/// identifies that backup by the job's reference, pulls it and cleans it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_leaves_no_backup_of_its_own_unrecorded() {
    let rig = rig(SimVersion::Supervisor, true, 0).await;
    let sshd = rig.sshd.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "sim-token\n").unwrap();
    let config = dir.path().join("hapull.toml");
    std::fs::write(
        &config,
        format!(
            r#"{base}
[backup]
name = "{NAME}"
keep_on_ha = 1

[store]
dir = "{store}"

[audit]
path = "{audit}"
"#,
            base = config::sim_and_sshd(&rig.sim.url(), sshd, rig.sim.backup_dir(), ""),
            store = rig.store_dir.display(),
            audit = rig.audit_path.display(),
        ),
    )
    .unwrap();
    let once = |log: &str| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_hapull"))
                .arg("-c")
                .arg(&config)
                .arg("once")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let succeeded = |mut child: KillOnDrop, name: &str| {
        let status = child.wait().unwrap();
        assert!(status.success(), "{}", log(name));
    };

    succeeded(once("first.log"), "first.log");
    let first = ledger(&rig.store_dir).ids;
    assert_eq!(first.len(), 1);

    rig.sim.control().hang_next_backup();
    let mut child = once("killed.log");
    // Across processes there is no event to wait for: poll the ledger (the limit only stops a hung
    // test; it is not what the test measures).
    let start = Instant::now();
    let job_recorded = || {
        let l = ledger(&rig.store_dir);
        l.pending.first().is_some_and(|p| p.job_id.is_some())
    };
    while !job_recorded() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job id was never recorded; log:\n{}",
            log("killed.log")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(child);
    let l = ledger(&rig.store_dir);
    assert_eq!(l.ids, first, "no backup id is known yet");
    assert_eq!(l.pending.len(), 1);

    // HA finishes the backup with nobody waiting; a later cycle picks it up.
    rig.sim.control().release_hung_backup();
    succeeded(once("last.log"), "last.log");

    let l = ledger(&rig.store_dir);
    assert!(l.pending.is_empty(), "{:?}", l.pending);
    assert_eq!(l.ids.len(), 3, "{:?}", l.ids);
    let recovered = audit(&rig, "backup.identified")
        .into_iter()
        .find(|d| d["interrupted"] == true)
        .expect("the interrupted backup was identified");
    assert_eq!(recovered["how"], "supervisor job reference");
    let id = recovered["backup_id"].as_str().unwrap().to_string();
    assert!(l.committed(&id));
    assert_eq!(stored(&rig.store_dir).len(), 3);
    assert!(stored(&rig.store_dir).contains(&id));
    let in_ha = ha_ids(&rig.sim);
    assert_eq!(in_ha.len(), 1, "keep_on_ha = 1: {in_ha:?}");
    assert!(!in_ha.contains(&id) && !in_ha.contains(&first[0]));
    assert!(
        audit(&rig, "ha.deleted")
            .iter()
            .any(|d| d["backup_id"] == id.as_str())
    );
}

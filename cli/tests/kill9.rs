//! Crash safety of the whole embedded pipeline, with real processes and `kill -9`.
//!
//! Producer and workers run as separate `vera` processes sharing one bus file and one
//! store directory. The test kills them with SIGKILL at random moments (seeded: set
//! VERA_TEST_SEED to replay a failure), restarts them, and at the end checks that:
//! every good row can be read back byte-identical; no uid is stored twice; every
//! segment verifies; and the bad rows were rejected, not lost silently.

mod support;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn vera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vera"))
}

fn common_args(data_dir: &Path, source: &Path) -> Vec<String> {
    vec!["--data-dir".into(), data_dir.display().to_string(), "--source-db".into(), source.display().to_string()]
}

fn spawn(args: &[String]) -> Child {
    vera().args(args).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn vera")
}

fn kill9(child: &mut Child) {
    // Child::kill sends SIGKILL on Unix: no destructor, no flush, no graceful anything.
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let seed: u64 = std::env::var("VERA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("kill9 seed: {seed} (VERA_TEST_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite");
    let data_dir = dir.path().join("data");

    let status = vera()
        .args([
            "generate",
            "--db",
            &source.display().to_string(),
            "--files",
            "3000",
            "--days",
            "3",
            "--bad-rows-per-kind",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let mut producer_args = vec!["producer".to_owned(), "--drain".into(), "--slot-rows".into(), "200".into()];
    producer_args.extend(common_args(&data_dir, &source));
    let worker_args = |id: &str| {
        let mut args = vec![
            "worker".to_owned(),
            "--id".into(),
            id.into(),
            "--visibility-timeout-seconds".into(),
            "2".into(),
            "--retain-days".into(),
            "1".into(),
        ];
        args.extend(common_args(&data_dir, &source));
        args
    };

    // Phase 1: producer and two workers, all killed and restarted at random.
    let mut producer = spawn(&producer_args);
    let mut workers = vec![spawn(&worker_args("w1")), spawn(&worker_args("w2"))];
    let chaos_until = Instant::now() + Duration::from_secs(12);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..400)));
        match rng.gen_range(0..3) {
            0 => {
                kill9(&mut producer);
                producer = spawn(&producer_args);
            }
            n => {
                let index = n - 1;
                kill9(&mut workers[index]);
                workers[index] = spawn(&worker_args(&format!("w{}", index + 1)));
            }
        }
        kills += 1;
    }
    for worker in &mut workers {
        kill9(worker);
    }
    kill9(&mut producer);
    let packed_during_chaos = stored_uids(&data_dir.join("store")).len();
    eprintln!("{kills} processes killed with SIGKILL; {packed_during_chaos} files were packed during the chaos");

    // Phase 2: let a producer and a worker finish cleanly.
    let status = vera().args(&producer_args).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "producer must resume and drain");
    let mut final_worker = worker_args("final");
    final_worker.extend(["--exit-when-idle-ms".into(), "3000".into()]);
    let status = vera().args(&final_worker).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "final worker must finish the queue");

    // Every segment verifies.
    let verify = vera().args(["verify", "--json", "--data-dir", &data_dir.display().to_string()]).output().unwrap();
    assert!(verify.status.success(), "verify failed: {}", String::from_utf8_lossy(&verify.stdout));

    // No uid stored twice, and every good row reads back identical.
    let stored = stored_uids(&data_dir.join("store"));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for uid in &stored {
        *counts.entry(uid.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "uids stored twice: {duplicated:?}");

    let rows = support::nullable_rows(&source);
    let mut seen = HashSet::new();
    let mut good = 0;
    for (uid, created_at, payload) in rows {
        let (Some(uid), Some(created_at), Some(payload)) = (uid, created_at, payload) else { continue };
        if payload.len() > 512 * 1024 || vera_protocol::Timestamp::parse(&created_at).is_err() {
            assert!(!counts.contains_key(uid.as_str()), "a rejected row was stored: {uid}");
            continue;
        }
        if !seen.insert(uid.clone()) {
            continue; // a duplicate uid: the first row is the one stored, checked above
        }
        good += 1;
        let out = vera()
            .args(["get", &uid, "--created-at", &created_at, "--data-dir", &data_dir.display().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{uid} unreadable: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, payload, "{uid} came back different");
    }
    assert_eq!(stored.len(), good, "stored files must be exactly the good rows");
}

fn stored_uids(store: &Path) -> Vec<String> {
    uids_in(store, |key| key.ends_with(".vera"))
}

/// Uids in the final generations only (no staging segments).
fn final_uids(store: &Path) -> Vec<String> {
    uids_in(store, |key| vera_protocol::routing::ShardAddr::from_segment_key(key).is_ok())
}

/// Uids in every segment whose key passes `keep`, once per copy.
fn uids_in(store: &Path, keep: fn(&str) -> bool) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use vera_store::ObjectStore;
        let store = vera_store::local::LocalStore::open(store).unwrap();
        let shards = vera_store::shards::ShardStore::new(std::sync::Arc::new(store.clone()));
        let mut uids = Vec::new();
        for meta in store.list("").await.unwrap() {
            if keep(&meta.key) {
                let index = shards.index(&meta.key).await.unwrap();
                uids.extend(index.files().map(|f| f.uid.to_owned()));
            }
        }
        uids
    })
}

/// The bytes of pushed file `i`.
fn pushed(i: usize) -> Vec<u8> {
    format!("{{\"call\":{i},\"cdr\":\"{}\"}}", "x".repeat(i % 300)).into_bytes()
}

#[test]
fn kill_9_of_ingest_workers_loses_nothing_and_stores_nothing_twice() {
    let seed: u64 = std::env::var("VERA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("ingest kill9 seed: {seed} (VERA_TEST_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.display().to_string();
    let status =
        vera().args(["routing", "init", "--n-bits", "1", "--data-dir", &data]).stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    const FILES: usize = 6000;
    let created_at = |i: usize| format!("2026-11-{:02}T{:02}:00:00Z", 20 + i % 3, i % 24);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use vera_bus::Bus;
        let bus = vera_bus::sqlite::SqliteBus::open(data_dir.join("bus.sqlite"), 50).await.unwrap();
        let now = vera_protocol::Timestamp::parse("2026-11-24T00:00:00Z").unwrap();
        for chunk in (0..FILES).collect::<Vec<_>>().chunks(500) {
            let events = chunk
                .iter()
                .map(|&i| {
                    let at = vera_protocol::Timestamp::parse(&created_at(i)).unwrap();
                    vera_worker::ingest::inline_event(&format!("call-{i:05}"), at, None, &pushed(i), now)
                })
                .collect();
            bus.publish(vera_bus::topics::INGEST, events).await.unwrap();
        }
    });
    let worker_args = |id: &str| -> Vec<String> {
        ["worker", "--ingest", "--id", id, "--ingest-linger-ms", "300", "--visibility-timeout-seconds", "2"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--retain-days".into(),
                "1".into(),
                "--max-attempts".into(),
                "50".into(),
                "--data-dir".into(),
                data.clone(),
            ])
            .collect()
    };
    let mut workers = vec![spawn(&worker_args("i1")), spawn(&worker_args("i2"))];
    let chaos_until = Instant::now() + Duration::from_secs(10);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..700)));
        let index = rng.gen_range(0..2);
        kill9(&mut workers[index]);
        workers[index] = spawn(&worker_args(&format!("i{}", index + 1)));
        kills += 1;
    }
    for worker in &mut workers {
        kill9(worker);
    }
    eprintln!(
        "{kills} ingest workers killed; {} files stored during the chaos",
        stored_uids(&data_dir.join("store")).len()
    );
    let mut last = worker_args("final");
    last.extend(["--exit-when-idle-ms".into(), "2500".into()]);
    let output = vera().args(&last).stderr(Stdio::null()).output().unwrap();
    assert!(output.status.success(), "final ingest worker must drain the topic");

    let stored = stored_uids(&data_dir.join("store"));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for uid in &stored {
        *counts.entry(uid.as_str()).or_default() += 1;
    }
    // A staging copy and a final copy of one file may coexist until `vera compact`
    // tidies; the same staging segment or generation never holds a uid twice, and no
    // uid sits in two final generations.
    let finals = final_uids(&data_dir.join("store"));
    let twice: Vec<_> = {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for uid in &finals {
            *seen.entry(uid.as_str()).or_default() += 1;
        }
        seen.into_iter().filter(|(_, n)| *n > 1).collect()
    };
    assert!(twice.is_empty(), "uids in two final generations: {twice:?}");
    assert_eq!(counts.len(), FILES, "every pushed file is stored");
    for i in (0..FILES).step_by(7) {
        let out = vera()
            .args(["get", &format!("call-{i:05}"), "--created-at", &created_at(i), "--data-dir", &data])
            .output()
            .unwrap();
        assert!(out.status.success(), "call-{i:05} unreadable: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, pushed(i));
    }
    let status = runtime.block_on(async {
        use vera_bus::Bus;
        let bus = vera_bus::sqlite::SqliteBus::open(data_dir.join("bus.sqlite"), 50).await.unwrap();
        bus.depth(vera_bus::topics::INGEST).await.unwrap()
    });
    assert_eq!((status.visible, status.in_flight, status.dead), (0, 0, 0), "every event acked, none dead-lettered");
}

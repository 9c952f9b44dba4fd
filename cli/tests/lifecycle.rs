//! The lifecycle commands as an operator runs them, on the embedded deployment:
//! `vera delete --list` → `vera lifecycle-tracker` → `vera repack --from-bus` (the CronJob
//! form) → erased files are gone, the others read back byte-identical, `vera verify`
//! passes; `vera retain` refuses to shorten; `vera hold` holds.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vera")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn vera(args: &[&str]) -> String {
    let output = run(args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn depth(data: &str, topic: &str) -> (u64, u64) {
    let status: serde_json::Value = serde_json::from_str(&vera(&["bus-status", "--data-dir", data])).unwrap();
    let depth = &status[topic]["depth"];
    (depth["visible"].as_u64().unwrap(), depth["in_flight"].as_u64().unwrap())
}

#[test]
fn delete_track_repack_retain_and_hold_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite");
    let (source_s, data) = (source.display().to_string(), dir.path().join("data").display().to_string());
    vera(&["generate", "--db", &source_s, "--files", "200", "--days", "1", "--bad-rows-per-kind", "0"]);
    vera(&["producer", "--drain", "--data-dir", &data, "--source-db", &source_s]);
    // Generations, which repack works on (staging segments are merged by `vera compact`).
    vera(&[
        "worker",
        "--exit-when-idle-ms",
        "500",
        "--retain-days",
        "0",
        "--direct-min-files",
        "0",
        "--data-dir",
        &data,
        "--source-db",
        &source_s,
    ]);
    let rows = support::all_rows(&source);
    let (erased, kept) = rows.split_at(rows.len() * 6 / 10);

    let list = dir.path().join("erase.txt");
    let lines: Vec<String> = erased.iter().map(|(uid, at, _)| format!("{uid} {at}")).collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let common = ["--request-id", "gdpr-2026-0099", "--operator", "dpo.alice", "--data-dir", &data];
    let out = vera(&[&["delete", "--list", list.to_str().unwrap()][..], &common[..]].concat());
    assert_eq!(out.lines().filter(|l| l.starts_with("tombstoned ")).count(), erased.len(), "{out}");

    // The tracker turns the tombstone events into repack requests.
    let mut tracker = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(["lifecycle-tracker", "--data-dir", &data])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&data, "events") != (0, 0) {
        assert!(Instant::now() < deadline, "the tracker did not consume the events");
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("kill").args(["-INT", &tracker.id().to_string()]).status().unwrap();
    assert!(tracker.wait().unwrap().success(), "the tracker stops cleanly on Ctrl-C");
    assert!(depth(&data, "repack").0 > 0, "repacks were requested");

    // One-shot repack from the bus: drains the topic and exits.
    let stats: serde_json::Value = serde_json::from_str(&vera(&["repack", "--from-bus", "--data-dir", &data])).unwrap();
    assert!(stats["repacked"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["dead_lettered"], 0, "{stats}");
    assert_eq!(depth(&data, "repack"), (0, 0));

    for (uid, at, payload) in kept {
        let bytes = Command::new(env!("CARGO_BIN_EXE_vera"))
            .args(["get", uid, "--created-at", at, "--data-dir", &data])
            .output()
            .unwrap();
        assert!(bytes.status.success(), "{uid}: {}", String::from_utf8_lossy(&bytes.stderr));
        assert_eq!(&bytes.stdout, payload, "{uid} byte-identical after the repack");
    }
    for (uid, at, _) in erased.iter().take(20) {
        let gone = run(&["get", uid, "--created-at", at, "--data-dir", &data]);
        assert!(!gone.status.success());
        assert!(String::from_utf8_lossy(&gone.stderr).contains("is gone"), "{uid}");
    }
    let verify: serde_json::Value = serde_json::from_str(&vera(&["verify", "--json", "--data-dir", &data])).unwrap();
    assert_eq!(verify["failures"].as_array().unwrap().len(), 0, "{verify}");
    // Stats count the files readers can reach through current segments, once each.
    let stats: serde_json::Value = serde_json::from_str(&vera(&["stats", "--json", "--data-dir", &data])).unwrap();
    assert!(stats["superseded_segments"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["files"].as_u64().unwrap() < rows.len() as u64, "erased files no longer counted: {stats}");
    let current = vera_protocol::shard::FORMAT_VERSION.to_string();
    assert_eq!(stats["segments_by_format"][current.as_str()], stats["segments"], "every segment in the current format");

    // Retention only grows; a hold is set on the segment's lock.
    let (uid, at, _) = &kept[0];
    let args =
        ["--created-at", at.as_str(), "--request-id", "keep-1", "--operator", "records.bob", "--data-dir", &data];
    let out = vera(&[&["retain", uid, "--until", "2090-01-01T00:00:00Z"][..], &args[..]].concat());
    assert!(out.contains("locked until 2090-01-01"), "{out}");
    let refused = run(&[&["retain", uid, "--until", "2080-01-01T00:00:00Z"][..], &args[..]].concat());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot be shortened"), "{refused:?}");
    let out = vera(&[&["hold", uid, "--on"][..], &args[..]].concat());
    assert!(out.contains("legal hold on"), "{out}");
    let out = vera(&[&["hold", uid, "--off"][..], &args[..]].concat());
    assert!(out.contains("legal hold off"), "{out}");
}

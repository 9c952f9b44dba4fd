//! Disaster-recovery drill: pack, erase one file, lose the source database and the bus
//! (every worker's state), and rebuild the reader's view from the object store alone.
//! Every good source row is in it with its BLAKE3, the erased one stays erased, and a
//! corrupted segment fails the rebuild by name.

mod support;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};

fn vera() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vera"));
    command.env("RUST_LOG", "warn").stdin(Stdio::null());
    command
}

fn ok(args: &[&str]) -> String {
    let output = vera().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "vera {args:?}: {}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_archive_is_rebuilt_from_the_object_store_alone() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite");
    let data = dir.path().join("data");
    let (source_arg, data_arg) = (source.display().to_string(), data.display().to_string());
    ok(&["generate", "--db", &source_arg, "--files", "1500", "--days", "3", "--bad-rows-per-kind", "1"]);
    ok(&[
        "producer",
        "--drain",
        "--slot-rows",
        "500",
        "--n-bits",
        "1",
        "--source-db",
        &source_arg,
        "--data-dir",
        &data_arg,
    ]);
    ok(&[
        "worker",
        "--exit-when-idle-ms",
        "1500",
        "--retain-days",
        "1",
        "--source-db",
        &source_arg,
        "--data-dir",
        &data_arg,
    ]);

    // What the source held: the first row of each uid that a worker accepts.
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (uid, created_at, payload) in support::nullable_rows(&source) {
        let (Some(uid), Some(created_at), Some(payload)) = (uid, created_at, payload) else { continue };
        if payload.len() > 512 * 1024
            || vera_protocol::Timestamp::parse(&created_at).is_err()
            || !seen.insert(uid.clone())
        {
            continue;
        }
        expected.insert(uid, (created_at, blake3::hash(&payload).to_hex().to_string()));
    }
    let (erased_uid, (erased_at, _)) = expected.iter().nth(10).map(|(u, v)| (u.clone(), v.clone())).unwrap();
    ok(&[
        "delete",
        &erased_uid,
        "--created-at",
        &erased_at,
        "--request-id",
        "dr-drill-1",
        "--operator",
        "dpo",
        "--data-dir",
        &data_arg,
    ]);

    // The disaster: the source database and the bus (every worker's state) are gone.
    std::fs::remove_file(&source).unwrap();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("bus.sqlite") {
            std::fs::remove_file(path).unwrap();
        }
    }

    let manifest = dir.path().join("manifest.jsonl");
    let out = ok(&["rebuild", "--deep", "--manifest", &manifest.display().to_string(), "--data-dir", &data_arg]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["corrupt"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["files"], expected.len(), "{report}");
    assert_eq!(report["erased"], 1, "{report}");
    let mut found = 0;
    for line in std::fs::read_to_string(&manifest).unwrap().lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let uid = entry["uid"].as_str().unwrap();
        let (_, blake3) = &expected[uid];
        assert_eq!(entry["blake3"].as_str().unwrap(), blake3, "{uid}: the stored hash is the source row's");
        let state = if uid == erased_uid { "erased" } else { "live" };
        assert_eq!(entry["state"], state, "{uid}");
        found += 1;
    }
    assert_eq!(found, expected.len(), "0 lost");

    // A flipped bit in one segment's index fails the rebuild, naming the segment.
    let objects = data.join("store").join("objects");
    let segment = find_segment(&objects).expect("a segment on disk");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    let mut permissions = std::fs::metadata(&segment).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&segment, permissions).unwrap();
    std::fs::write(&segment, bytes).unwrap();
    let output = vera().args(["rebuild", "--data-dir", &data_arg]).output().unwrap();
    assert!(!output.status.success(), "a corrupt segment must fail the rebuild");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(report["corrupt"].as_array().unwrap().iter().any(|c| c.as_str().unwrap().contains(&name)), "{report}");
}

fn find_segment(dir: &Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_segment(&path) {
                return Some(found);
            }
        } else if path.to_string_lossy().ends_with(".vera") {
            return Some(path);
        }
    }
    None
}

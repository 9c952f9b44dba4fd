//! Small arrival-pattern runs through the real embedded pipeline (`loadtest --scenario`):
//! nothing lost or duplicated, and a closed slice's layout stays bounded under follow
//! mode's one-second slots (which wave 1 turned into a generation per slot).

use std::process::Command;

fn run(pattern: &str, files: &str, rate: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scenario.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--scenario", pattern, "--files", files, "--rate", rate, "--linger-ms", "500"])
        .arg("--out")
        .arg(&out)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output()
        .expect("run the load test");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadtest --scenario {pattern} failed:\n{stderr}");
    let reports: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    reports[0].clone()
}

fn number(report: &serde_json::Value, field: &str) -> f64 {
    report[field].as_f64().unwrap_or_else(|| panic!("{field} missing in {report}"))
}

#[test]
fn a_stream_in_one_second_slots_closes_into_one_segment_per_address() {
    // 2,400 files over a simulated day at 400 a second: 6 s of wall time, about 12 slots.
    let report = run("stream", "2400", "400");
    assert_eq!((number(&report, "lost"), number(&report, "duplicated")), (0.0, 0.0), "{report}");
    assert_eq!(number(&report, "files"), 2400.0);
    assert_eq!(number(&report, "staging_left"), 0.0, "every staging segment merged and deleted: {report}");
    assert!(number(&report, "segments_per_address_max") <= 2.0, "{report}");
    assert!(number(&report, "compaction_files_merged") > 0.0, "nothing went through staging: {report}");
    assert_eq!(number(&report, "cold_share_at_most_2"), 1.0, "{report}");
    assert!(number(&report, "pack_lag_p99_seconds") < 60.0, "{report}");
}

#[test]
fn a_bulk_migration_with_late_rows_keeps_two_generations_at_most() {
    let report = run("bulk", "3000", "200");
    assert_eq!((number(&report, "lost"), number(&report, "duplicated")), (0.0, 0.0), "{report}");
    assert_eq!(number(&report, "files"), 3000.0, "{report}");
    assert!(number(&report, "segments_per_address_max") <= 2.0, "{report}");
    assert_eq!(number(&report, "cold_share_at_most_2"), 1.0, "{report}");
    assert_eq!(number(&report, "staging_left"), 0.0, "{report}");
}

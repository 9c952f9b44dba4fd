//! A tiny load test end to end (s3s-fs must be installed: `scripts/s3s-fs`, which
//! `scripts/services` runs): every figure the README quotes is produced, consistent, and
//! derived from the run, and every read returned the stored bytes (the load test checks
//! each body's BLAKE3 and fails otherwise).

use std::process::Command;

#[test]
fn a_small_run_reports_every_field_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("figures.json");
    let markdown = dir.path().join("table.md");
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--files", "400", "--cold-reads", "20", "--warm-reads", "60", "--days", "2"])
        .arg("--out")
        .arg(&out)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output()
        .expect("run the load test");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadtest failed:\n{stderr}");
    let figures: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let number = |pointer: &str| {
        figures.pointer(pointer).and_then(serde_json::Value::as_f64).unwrap_or_else(|| panic!("{pointer} missing"))
    };
    // The fields the issue names.
    for pointer in [
        "/vera/files_per_minute",
        "/naive/files_per_minute",
        "/vera/puts",
        "/naive/puts",
        "/read/warm/p99_ms",
        "/read/warm/gets_per_read",
        "/read/cold/gets_per_read",
        "/space/vera_bytes",
        "/space/naive_bytes",
        "/space/tar_zstd_bytes",
        "/reader/bytes_per_cached_file",
    ] {
        assert!(number(pointer) > 0.0, "{pointer} = {}", number(pointer));
    }
    assert_eq!(number("/vera/files"), 400.0);
    assert_eq!(number("/naive/files"), 400.0);
    assert_eq!(number("/naive/puts"), 400.0, "one PUT per file, counted on the wire");
    assert!(number("/vera/puts") < 40.0, "segments, not files: {}", number("/vera/puts"));
    assert_eq!(number("/vera/objects"), number("/ratios/segments"), "VERA's objects are the segments listed");
    assert!(number("/ratios/tasks_retried") >= 0.0);
    assert_eq!(number("/reader/cached_files"), 400.0, "every segment's index was loaded");
    assert_eq!(number("/read/cold/reads"), 20.0);
    assert_eq!(number("/read/warm/reads"), 60.0);
    assert_eq!((number("/read/suffix_kib"), number("/read/later_suffix_kib")), (256.0, 1024.0), "the defaults");
    // A cold read fetches the suffix (footer and index, and for a small segment the record
    // too); it moves more bytes than a warm read, which fetches only the record.
    assert!(number("/read/cold/gets_per_read") >= 1.0, "a cold read fetches at least the suffix");
    assert!(
        number("/read/cold/bytes_per_read") > number("/read/warm/bytes_per_read"),
        "cold reads were cold: {} vs {} bytes per read",
        number("/read/cold/bytes_per_read"),
        number("/read/warm/bytes_per_read")
    );
    assert!(number("/read/warm/gets_per_read") >= 1.0, "a warm read still fetches the data");
    // Per-read GET counts add up to the averages.
    for phase in ["cold", "warm", "direct_s3_range_get"] {
        let by_gets = figures["read"][phase]["reads_by_gets"].as_object().unwrap();
        let (reads, gets) = by_gets.iter().fold((0.0, 0.0), |(reads, gets), (n, count)| {
            let count = count.as_f64().unwrap();
            (reads + count, gets + count * n.parse::<f64>().unwrap())
        });
        assert_eq!(reads, number(&format!("/read/{phase}/reads")), "{phase}: {by_gets:?}");
        let average = number(&format!("/read/{phase}/gets_per_read"));
        assert!((gets / reads - average).abs() < 1e-9, "{phase}: {gets} GETs over {reads} reads vs {average}");
    }
    assert_eq!(number("/read/direct_s3_range_get/gets_per_read"), 1.0, "the floor is one counted range GET");
    // Every file's cold-read cost from the layout covers every file, and each sampled cold
    // read cost exactly what the layout says (the model and the reader agree).
    let by_layout = figures["read"]["cold_by_layout"].as_object().unwrap();
    let files: f64 = by_layout.values().map(|files| files.as_f64().unwrap()).sum();
    assert_eq!(files, 400.0, "{by_layout:?}");
    assert_eq!(number("/read/cold/reads_as_layout_predicts"), 20.0, "{}", figures["read"]);
    assert!(figures["read"]["warm"].get("reads_as_layout_predicts").is_none(), "only cold reads are predicted");
    // CPU time, client and the server this run started: read from /proc, so present.
    assert!(number("/naive/cpu/client_seconds") > 0.0, "400 signed PUTs cost measurable client CPU");
    for pointer in ["/vera/cpu/client_seconds", "/vera/cpu/server_seconds", "/naive/cpu/server_seconds"] {
        assert!(number(pointer) >= 0.0, "{pointer}");
    }
    // The ceiling is derived from the run: present exactly when VERA's server CPU was
    // readable, and then every core on the server's share at that CPU per file.
    let ceiling = figures.pointer("/ratios/ingest_speedup_ceiling").expect("ceiling field");
    match figures.pointer("/vera/cpu/server_ms_per_file").and_then(serde_json::Value::as_f64) {
        Some(ms) if ms > 0.0 => {
            let expected = number("/machine/cores") * 60_000.0 / ms / number("/naive/files_per_minute");
            let ceiling = ceiling.as_f64().expect("a ceiling when the server's CPU was read");
            assert!((ceiling - expected).abs() < 1e-6 * expected, "{ceiling} vs {expected}");
        }
        _ => assert!(ceiling.is_null(), "no ceiling without server CPU: {ceiling}"),
    }
    // The naive path stores the raw bytes: its bucket holds exactly the corpus.
    assert_eq!(number("/space/naive_bytes"), number("/corpus/bytes"));
    let goals = figures["goals"].as_array().unwrap();
    assert_eq!(goals.len(), 8);
    let table = std::fs::read_to_string(&markdown).unwrap();
    assert!(table.contains("| files per minute |") && table.contains("| warm |"), "{table}");
    assert!(table.contains(&format!("| PUT requests | {} | 400 |", number("/vera/puts"))), "{table}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest")).args(["--mix", "paper=3"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown kind \"paper\""));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--files", "10", "--s3s-fs", "/nonexistent/s3s-fs"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot start /nonexistent/s3s-fs"));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest")).args(["--suffix-kib", "0"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--suffix-kib"));
}

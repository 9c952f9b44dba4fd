//! The routing table lives in the store: a reader started without `--n-bits` finds every
//! file, a flag that disagrees is refused, an epoch is added for the future only, and a
//! corrupt table stops every role, naming the object.

use std::process::{Command, Output, Stdio};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vera")).args(args).env_remove("VERA_N_BITS").stdin(Stdio::null()).output().unwrap()
}

fn vera(args: &[&str]) -> String {
    let output = run(args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn refused(args: &[&str]) -> String {
    let output = run(args);
    assert!(!output.status.success(), "{args:?} should have been refused");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_role_routes_by_the_table_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (source, data) = (path("source.sqlite"), path("data"));
    vera(&["generate", "--db", &source, "--files", "40", "--days", "1", "--bad-rows-per-kind", "0"]);
    // Nothing is routed before a table exists, except by the commands that write it.
    assert!(refused(&["routing", "show", "--data-dir", &data]).contains("no routing table"));
    vera(&["producer", "--drain", "--n-bits", "3", "--data-dir", &data, "--source-db", &source]);
    vera(&["worker", "--exit-when-idle-ms", "500", "--retain-days", "0", "--data-dir", &data, "--source-db", &source]);
    let table: serde_json::Value = serde_json::from_str(&vera(&["routing", "show", "--data-dir", &data])).unwrap();
    assert_eq!(table["epochs"][0]["epoch"]["n_bits"], 3, "{table}");

    // A reader with no --n-bits reads every file where the producer put it.
    let rows = vera(&["routing", "show", "--data-dir", &data]);
    assert!(rows.contains("\"day\""), "{rows}");
    let (uid, created_at) = first_row(&source);
    vera(&["get", &uid, "--created-at", &created_at, "--data-dir", &data, "--out", &path("got")]);
    assert!(std::fs::metadata(path("got")).unwrap().len() > 0);
    // One that disagrees is refused, not sent looking in the wrong place.
    let message = refused(&["get", &uid, "--created-at", &created_at, "--n-bits", "2", "--data-dir", &data]);
    assert!(message.contains("--n-bits") && message.contains("routes new files with 3"), "{message}");
    let message = refused(&["producer", "--drain", "--n-bits", "4", "--data-dir", &data, "--source-db", &source]);
    assert!(message.contains("routes new files with 3"), "{message}");

    // Epochs: never in the past; a future one is a new version, audited.
    let past = refused(&add_epoch("2026-01-01T00:00:00Z", &data));
    assert!(past.contains("files already created would move"), "{past}");
    let added: serde_json::Value = serde_json::from_str(&vera(&add_epoch("2099-01-01T00:00:00Z", &data))).unwrap();
    assert_eq!(added["epochs"][1]["epoch"]["id"], 2, "{added}");
    // Where signatures are required, an unsigned epoch is refused.
    let signers = path("allowed_signers");
    let status =
        Command::new("ssh-keygen").args(["-q", "-N", "", "-t", "ed25519", "-f", &path("alice")]).status().unwrap();
    assert!(status.success());
    let alice = std::fs::read_to_string(path("alice.pub")).unwrap();
    std::fs::write(&signers, format!("alice@bank.example namespaces=\"vera\" {}\n", alice.trim())).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(add_epoch("2099-06-01T00:00:00Z", &data))
        .env("VERA_ALLOWED_SIGNERS", &signers)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unsigned request refused"), "{output:?}");
    let status: serde_json::Value = serde_json::from_str(&vera(&["bus-status", "--data-dir", &data])).unwrap();
    assert!(status["audit"]["depth"]["visible"].as_u64().unwrap() > 0, "the ROUTING event waits for the writer");
    // Files of epoch 1 are still found.
    vera(&["get", &uid, "--created-at", &created_at, "--data-dir", &data, "--out", &path("again")]);

    // A corrupt table stops every role and names the object.
    let corrupt = dir.path().join("data/store/objects/control/routing/v000003.json");
    std::fs::write(&corrupt, b"{ not a table").unwrap();
    for args in [
        vec!["routing", "show", "--data-dir", data.as_str()],
        vec!["get", uid.as_str(), "--created-at", created_at.as_str(), "--data-dir", data.as_str()],
        vec!["producer", "--drain", "--data-dir", data.as_str(), "--source-db", source.as_str()],
    ] {
        let message = refused(&args);
        assert!(message.contains("v000003.json"), "{args:?}: {message}");
    }
}

/// `vera routing add-epoch` of hourly buckets with 4 bits from `from` on.
fn add_epoch<'a>(from: &'a str, data: &'a str) -> Vec<&'a str> {
    let epoch = ["routing", "add-epoch", "--from", from, "--granularity", "hour", "--epoch-n-bits", "4"];
    [&epoch[..], &["--operator", "ops.alice", "--data-dir", data][..]].concat()
}

/// The first good row of the demo corpus: (uid, created_at).
fn first_row(source: &str) -> (String, String) {
    use sqlx::{ConnectOptions, Row};
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut connection =
            sqlx::sqlite::SqliteConnectOptions::new().filename(source).read_only(true).connect().await.unwrap();
        let row = sqlx::query("SELECT uid, created_at FROM files WHERE payload IS NOT NULL ORDER BY id LIMIT 1")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        (row.get("uid"), row.get("created_at"))
    })
}

#[test]
fn plan_proposes_a_table_from_the_histogram_and_applies_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (source, data) = (path("source.sqlite"), path("data"));
    vera(&["generate", "--db", &source, "--files", "2000", "--days", "7", "--bad-rows-per-kind", "1"]);
    let plan: serde_json::Value = serde_json::from_str(&vera(&[
        "plan",
        "--json",
        "--min-files-per-segment",
        "100",
        "--source-db",
        &source,
        "--data-dir",
        &data,
    ]))
    .unwrap();
    // About 285 files a day: daily buckets, and one address a day, as few as the byte
    // limit and the index allow.
    assert_eq!(plan["epochs"][0]["granularity"], "day", "{plan}");
    assert_eq!(plan["epochs"][0]["n_bits"], 0, "{plan}");
    assert!(plan["files_per_segment"].as_f64().unwrap() >= 100.0, "{plan}");
    assert_eq!(plan["undated"], 1, "the corpus's bad created_at row: {plan}");
    assert!(
        refused(&["routing", "show", "--data-dir", &data]).contains("no routing table"),
        "a plan alone writes nothing"
    );

    vera(&["plan", "--apply", "--min-files-per-segment", "100", "--source-db", &source, "--data-dir", &data]);
    let table: serde_json::Value = serde_json::from_str(&vera(&["routing", "show", "--data-dir", &data])).unwrap();
    assert_eq!(table, plan["table"]);
    // The producer follows the stored table; a plan for other targets cannot replace it.
    vera(&["producer", "--drain", "--data-dir", &data, "--source-db", &source]);
    let message = refused(&["plan", "--apply", "--source-db", &source, "--data-dir", &data]);
    assert!(message.contains("different routing table"), "{message}");

    // An empty source: a clear message.
    let empty = path("empty.sqlite");
    vera(&["generate", "--db", &empty, "--files", "0", "--bad-rows-per-kind", "0"]);
    let message = refused(&["plan", "--source-db", &empty, "--data-dir", &path("data2")]);
    assert!(message.contains("nothing to plan for"), "{message}");
}

//! The trust commands as an operator and an auditor use them, on the embedded
//! deployment: signed delete (`--emit-request` → `ssh-keygen -Y sign` →
//! `--signed-request`), unsigned and replayed requests refused, the audit writer and
//! `vera audit verify`, a signed export and `vera proof verify`, and a tampered export.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn vera(args: &[&str], envs: &[(&str, &str)]) -> String {
    let output = run(args, envs);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Generates a corpus into `source` (`generate` flags) and packs it into `data`.
fn pack(source: &str, data: &str, generate: &[&str]) {
    vera(&[&["generate", "--db", source][..], generate].concat(), &[]);
    vera(&["producer", "--drain", "--data-dir", data, "--source-db", source], &[]);
    work(source, data);
}

/// Runs a worker until the pack queue is empty.
fn work(source: &str, data: &str) {
    vera(
        &["worker", "--exit-when-idle-ms", "500", "--retain-days", "0", "--data-dir", data, "--source-db", source],
        &[],
    );
}

fn keygen(path: &Path) -> String {
    let status = Command::new("ssh-keygen").args(["-q", "-N", "", "-t", "ed25519", "-f"]).arg(path).status().unwrap();
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_owned()
}

#[test]
fn signed_admin_requests_audit_log_and_a_verified_export() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (source, data) = (path("source.sqlite"), path("data"));
    pack(&source, &data, &["--files", "60", "--days", "1", "--bad-rows-per-kind", "0"]);
    let rows = support::all_rows(Path::new(&source));

    let alice = keygen(&dir.path().join("alice"));
    std::fs::write(path("allowed_signers"), format!("alice@bank.example namespaces=\"vera\" {alice}\n")).unwrap();
    std::fs::write(path("roles"), "alice@bank.example eraser,auditor\n").unwrap();
    let (signers, roles) = (path("allowed_signers"), path("roles"));
    let env = [("VERA_ALLOWED_SIGNERS", signers.as_str()), ("VERA_ROLES", roles.as_str())];
    keygen(&dir.path().join("checkpoint"));
    let checkpoint = path("checkpoint");
    let verifier_key = vera(&["audit", "verifier-key", "--checkpoint-key", &checkpoint], &[]);
    std::fs::write(path("verifier_keys"), &verifier_key).unwrap();
    let verifier_keys = path("verifier_keys");

    // Unsigned: refused where signatures are required.
    let (uid, at, _) = &rows[0];
    let delete = ["delete", uid.as_str(), "--created-at", at.as_str(), "--request-id", "gdpr-7", "--data-dir", &data];
    let refused = run(&[&delete[..], &["--operator", "dpo.alice"][..]].concat(), &env);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unsigned request refused"), "{refused:?}");

    // Emit, sign with ssh-keygen, run.
    let request = path("delete.json");
    vera(&[&delete[..], &["--emit-request", &request, "--principal", "alice@bank.example"][..]].concat(), &env);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "vera", "-f"])
        .arg(dir.path().join("alice"))
        .arg(&request)
        .status()
        .unwrap();
    assert!(status.success());
    let out = vera(&[&delete[..], &["--signed-request", &request][..]].concat(), &env);
    assert!(out.starts_with(&format!("tombstoned {uid}")), "{out}");
    // Replayed, and reused for other arguments: refused.
    let replay = run(&[&delete[..], &["--signed-request", &request][..]].concat(), &env);
    assert!(String::from_utf8_lossy(&replay.stderr).contains("replayed"), "{replay:?}");
    let (uid2, at2, _) = &rows[1];
    let other = ["delete", uid2.as_str(), "--created-at", at2.as_str(), "--request-id", "gdpr-7", "--data-dir", &data];
    let reused = run(&[&other[..], &["--signed-request", &request][..]].concat(), &env);
    assert!(String::from_utf8_lossy(&reused.stderr).contains("other arguments"), "{reused:?}");

    // The audit writer logs PACK, DELETE and the denials, and signs a checkpoint.
    let write = [
        "audit",
        "write",
        "--log-id",
        "w0",
        "--checkpoint-key",
        &checkpoint,
        "--retain-days",
        "0",
        "--until-idle",
        "--data-dir",
        &data,
    ];
    let stats: serde_json::Value = serde_json::from_str(&vera(&write, &[])).unwrap();
    assert!(stats["appended"].as_u64().unwrap() >= 4, "{stats}");

    // A signed export of three files (one erased), signed by VERA's own signer.
    let list = path("export.txt");
    let wanted: Vec<String> = rows[..3].iter().map(|(uid, at, _)| format!("{uid} {at}")).collect();
    std::fs::write(&list, wanted.join("\n")).unwrap();
    let out_dir = path("export");
    let export = ["export", "--list", &list, "--out", &out_dir, "--data-dir", &data];
    let export_request = path("export.json");
    vera(&[&export[..], &["--emit-request", &export_request, "--principal", "alice@bank.example"][..]].concat(), &env);
    vera(&["request", "sign", "--key", &path("alice"), &export_request], &[]);
    let report: serde_json::Value =
        serde_json::from_str(&vera(&[&export[..], &["--signed-request", &export_request][..]].concat(), &env)).unwrap();
    assert_eq!((report["files"].as_u64(), report["excluded"].as_u64()), (Some(2), Some(1)), "{report}");
    let proof: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("export/integrity_proof.json")).unwrap()).unwrap();
    assert_eq!(proof["request"]["principal"], "alice@bank.example");
    for file in proof["files"].as_array().unwrap() {
        let (_, _, payload) = rows.iter().find(|(uid, _, _)| uid == file["uid"].as_str().unwrap()).unwrap();
        assert_eq!(&std::fs::read(dir.path().join("export").join(file["path"].as_str().unwrap())).unwrap(), payload);
    }
    let verified: serde_json::Value =
        serde_json::from_str(&vera(&["proof", "verify", &out_dir, "--verifier-keys", &verifier_keys], &[])).unwrap();
    assert_eq!(verified["files"], 2, "{verified}");

    // The auditor's copy is altered: verification fails.
    let first = dir.path().join("export").join(proof["files"][0]["path"].as_str().unwrap());
    std::fs::write(&first, b"altered").unwrap();
    let failed = run(&["proof", "verify", &out_dir, "--verifier-keys", &verifier_keys], &[]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("does not match its BLAKE3"), "{failed:?}");

    // The EXPORT event is logged too; the whole log verifies.
    vera(&write, &[]);
    let report: serde_json::Value =
        serde_json::from_str(&vera(&["audit", "verify", "--verifier-keys", &verifier_keys, "--data-dir", &data], &[]))
            .unwrap();
    for action in ["PACK", "DELETE", "EXPORT"] {
        assert!(report["actions"][action].as_u64().unwrap_or(0) >= 1, "{action}: {report}");
    }
    assert_eq!(report["unanchored"], 0, "{report}");
}

#[test]
fn break_glass_takes_two_operators_from_the_command_line() {
    use vera_store::{Clock, LockMode, ObjectStore, PutOptions, Retention};
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let data = path("data");
    let alice = keygen(&dir.path().join("alice"));
    let carol = keygen(&dir.path().join("carol"));
    std::fs::write(path("allowed_signers"), format!("alice@bank.example {alice}\ncarol@bank.example {carol}\n"))
        .unwrap();
    std::fs::write(path("roles"), "alice@bank.example break-glass\ncarol@bank.example break-glass\n").unwrap();
    let (signers, roles) = (path("allowed_signers"), path("roles"));
    let env = [("VERA_ALLOWED_SIGNERS", signers.as_str()), ("VERA_ROLES", roles.as_str())];

    let key = "quarantine/upload-7.bin";
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = vera_store::local::LocalStore::open(dir.path().join("data/store")).unwrap();
        let until =
            vera_protocol::Timestamp::from_micros(vera_store::SystemClock.now().as_micros() + 86_400_000_000).unwrap();
        let retention = Retention { mode: LockMode::Governance, retain_until: until };
        store.put(key, bytes::Bytes::from_static(b"x"), PutOptions::create().with_retention(retention)).await.unwrap();
    });
    let base = ["break-glass", "delete", key, "--ticket", "INC-9", "--data-dir", &data];
    for who in ["alice", "carol"] {
        let file = path(&format!("{who}.json"));
        let principal = format!("{who}@bank.example");
        vera(&[&base[..], &["--emit-request", &file, "--principal", &principal][..]].concat(), &env);
        vera(&["request", "sign", "--key", &path(who), &file], &[]);
    }
    let (a, c) = (path("alice.json"), path("carol.json"));
    let one = run(&[&base[..], &["--signed-request", &a][..]].concat(), &env);
    assert!(String::from_utf8_lossy(&one.stderr).contains("two signed requests"), "{one:?}");
    let out = vera(&[&base[..], &["--signed-request", &a, "--signed-request", &c][..]].concat(), &env);
    assert!(out.contains("approved by alice@bank.example and carol@bank.example"), "{out}");
    assert!(!dir.path().join("data/store/objects").join(key).exists());
    let again = run(&[&base[..], &["--signed-request", &a, "--signed-request", &c][..]].concat(), &env);
    assert!(String::from_utf8_lossy(&again.stderr).contains("replayed"), "{again:?}");
}

/// Runs SQL against the SQLite source.
fn sqlite(path: &str, sql: &str) {
    use sqlx::ConnectOptions;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut connection = options.connect().await.unwrap();
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    });
}

#[test]
fn reconcile_attests_a_complete_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (source, data) = (path("source.sqlite"), path("data"));
    pack(&source, &data, &["--files", "80", "--days", "2", "--bad-rows-per-kind", "1"]);
    let store = ["--data-dir", data.as_str(), "--source-db", source.as_str()];
    let report: serde_json::Value =
        serde_json::from_str(&vera(&[&["reconcile", "--json"][..], &store[..]].concat(), &[])).unwrap();
    let rows = report["in_source"].as_u64().unwrap();
    assert!(rows >= 80, "{report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["pending"], 0, "{report}");
    assert_eq!(report["stored"].as_u64().unwrap() + report["rejected"].as_u64().unwrap(), rows, "{report}");
    assert!(report["rejected_by_reason"]["null_payload"].as_u64() == Some(1), "{report}");

    // A row that appears behind the producer's watermark (an explicit old id) is missing:
    // reconcile names it, exits non-zero, and refuses to attest.
    sqlite(&source, "INSERT INTO files VALUES (-5, 'behind', '2026-11-24T10:00:00Z', NULL, x'01')");
    keygen(&dir.path().join("checkpoint"));
    let checkpoint = path("checkpoint");
    let attestation = path("attestation.json");
    let refused =
        run(&[&["reconcile", "--attest", &attestation, "--checkpoint-key", &checkpoint][..], &store[..]].concat(), &[]);
    assert!(!refused.status.success());
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(stdout.contains("1 missing") && stdout.contains("MISSING watermark -5 uid behind"), "{stdout}");
    assert!(!Path::new(&attestation).exists(), "no attestation of an incomplete range");

    // --republish hands the row to the workers as a one-row task; then it is stored.
    let republished = run(&[&["reconcile", "--republish"][..], &store[..]].concat(), &[]);
    assert!(String::from_utf8_lossy(&republished.stderr).contains("published 1 one-row pack task"), "{republished:?}");
    work(&source, &data);
    let repaired: serde_json::Value =
        serde_json::from_str(&vera(&[&["reconcile", "--json"][..], &store[..]].concat(), &[])).unwrap();
    assert_eq!(repaired["missing"], 0, "{repaired}");
    assert_eq!(repaired["in_source"].as_u64(), Some(rows + 1), "{repaired}");
    let rows = rows + 1;

    // Complete again: attested, verifiable offline, and a changed statement is caught.
    vera(&[&["reconcile", "--attest", &attestation, "--checkpoint-key", &checkpoint][..], &store[..]].concat(), &[]);
    std::fs::write(path("verifier_keys"), vera(&["audit", "verifier-key", "--checkpoint-key", &checkpoint], &[]))
        .unwrap();
    let verified: serde_json::Value = serde_json::from_str(&vera(
        &["proof", "verify-attestation", &attestation, "--verifier-keys", &path("verifier_keys")],
        &[],
    ))
    .unwrap();
    assert_eq!(verified["kind"], "reconcile");
    assert_eq!(verified["statement"]["missing"], 0);
    assert_eq!(verified["statement"]["in_source"].as_u64(), Some(rows));
    assert!(verified["statement"]["summary"].as_str().unwrap().starts_with(&format!("all {rows} rows")), "{verified}");
    let text = std::fs::read_to_string(&attestation).unwrap();
    let forged = text.replacen("\\\"missing\\\": 0", "\\\"missing\\\": 1", 1);
    assert_ne!(forged, text, "the statement holds the missing count");
    std::fs::write(&attestation, forged).unwrap();
    let caught = run(&["proof", "verify-attestation", &attestation, "--verifier-keys", &path("verifier_keys")], &[]);
    assert!(!caught.status.success());
    assert!(String::from_utf8_lossy(&caught.stderr).contains("was changed"), "{caught:?}");

    // The attestation is in the audit log as a RECONCILE event.
    vera(
        &[
            "audit",
            "write",
            "--log-id",
            "w1",
            "--checkpoint-key",
            &checkpoint,
            "--retain-days",
            "0",
            "--until-idle",
            "--data-dir",
            &data,
        ],
        &[],
    );
    let log = walk(&dir.path().join("data/store"));
    assert!(log.contains("\"action\":\"RECONCILE\"") && log.contains("statement_sha256"), "no RECONCILE event");
    vera(&["audit", "verify", "--verifier-keys", &path("verifier_keys"), "--data-dir", &data], &[]);
}

/// Every file's text under `dir`, concatenated.
fn walk(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&walk(&path));
        } else {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    text
}

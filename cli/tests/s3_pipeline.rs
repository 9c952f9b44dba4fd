//! The `vera` processes against S3 with Object Lock (moto on loopback): setup-bucket,
//! producer, two workers, verify and get, all through `--s3-bucket`. Built only with
//! `--features s3` (the test command enables all features).
#![cfg(feature = "s3")]

mod support;
use support::first_row;

use std::process::{Command, Stdio};

fn vera(args: &[&str]) -> std::process::Output {
    let endpoint = std::env::var("VERA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(args)
        // moto accepts any credentials; they reach the SDK through the standard chain.
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("VERA_S3_ENDPOINT", endpoint)
        .env("VERA_S3_PATH_STYLE", "true")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run vera")
}

fn ok(output: std::process::Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn producer_and_two_workers_pack_into_s3_and_everything_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.sqlite");
    let data = dir.path().join("data");
    let bucket = format!("vera-cli-{:08x}", rand::random::<u32>());
    let (source_s, data_s) = (source.display().to_string(), data.display().to_string());
    let common = ["--data-dir", &data_s, "--s3-bucket", &bucket];

    ok(
        vera(&["generate", "--db", &source_s, "--files", "1500", "--days", "2", "--bad-rows-per-kind", "1"]),
        "generate",
    );
    let setup = ok(vera(&["setup-bucket", "--s3-bucket", &bucket, "--data-dir", &data_s]), "setup-bucket");
    assert!(setup.contains("Created"), "{setup}");

    let mut producer = vec!["producer", "--drain", "--slot-rows", "500", "--source-db", &source_s];
    producer.extend(common);
    ok(vera(&producer), "producer");
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let id = format!("w{i}");
            let mut args: Vec<String> =
                ["worker", "--id", &id, "--exit-when-idle-ms", "2000", "--retain-days", "30", "--source-db", &source_s]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            args.extend(common.iter().map(|s| s.to_string()));
            std::thread::spawn(move || vera(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        })
        .collect();
    for worker in workers {
        ok(worker.join().unwrap(), "worker");
    }

    let mut verify = vec!["verify", "--json"];
    verify.extend(common);
    let report: serde_json::Value = serde_json::from_str(&ok(vera(&verify), "verify")).unwrap();
    assert_eq!(report["failures"].as_array().map(Vec::len), Some(0), "{report}");
    assert_eq!(report["files"].as_u64(), Some(1496), "1500 rows minus 4 bad ones: {report}");

    let (uid, created_at, payload) = first_row(&source);
    let mut get = vec!["get", &uid, "--created-at", &created_at];
    get.extend(common);
    let output = vera(&get);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, payload);
}

/// With no AWS credentials anywhere in the environment, `--s3-vault-secret` supplies them
/// from OpenBao's KV v2 (scripts/openbao provisions `secret/vera/s3`).
#[cfg(feature = "vault")]
#[test]
fn s3_credentials_come_from_vault_kv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let bucket = format!("vera-vault-{:08x}", rand::random::<u32>());
    let endpoint = std::env::var("VERA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    let vault = std::env::var("VERA_TEST_VAULT_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8250".into());
    let token = std::env::var("VERA_TEST_VAULT_TOKEN").unwrap_or_else(|_| "vera-dev-root".into());
    let setup = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vera"))
            .args(["setup-bucket", "--s3-bucket", &bucket, "--data-dir", &data])
            .args(extra)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", dir.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("VERA_S3_ENDPOINT", &endpoint)
            .env("VERA_S3_PATH_STYLE", "true")
            .env("VAULT_ADDR", &vault)
            .env("VAULT_TOKEN", &token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let without = setup(&[]);
    assert!(!without.status.success(), "no credentials at all must fail: {without:?}");
    let missing = setup(&["--s3-vault-secret", "secret/vera/absent"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading S3 credentials"), "{missing:?}");
    let with = setup(&["--s3-vault-secret", "secret/vera/s3"]);
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    assert!(!String::from_utf8_lossy(&with.stderr).contains("vera-test-secret"), "the secret is never printed");
}

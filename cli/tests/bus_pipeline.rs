//! The whole pipeline once per real bus and once per SQL source, as separate `vera`
//! processes: producer → bus → workers → S3 with Object Lock (moto) → verify and read back.
//!
//! | bus                  | source     |
//! |----------------------|------------|
//! | SQS (moto)           | PostgreSQL |
//! | Kafka (tansu)        | MariaDB    |
//! | RabbitMQ             | SQLite     |
//!
//! In each run a first worker is killed with SIGKILL right after it logs that it claimed a
//! task, before it can finish it. Two more workers then drain the bus. The run passes when
//! that task was delivered again (a worker reports a redelivery), every good row is stored
//! exactly once (the verified file count equals the good rows: none lost, none twice),
//! every segment verifies, and a file reads back byte-identical.
//!
//! Endpoints come from the environment with loopback defaults: VERA_TEST_S3_ENDPOINT,
//! VERA_AMQP_URI, VERA_KAFKA_BROKERS, VERA_TEST_POSTGRES_URL, VERA_TEST_MYSQL_URL.
#![cfg(all(feature = "s3", feature = "sqs", feature = "kafka", feature = "amqp"))]

mod support;
use support::first_row;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FILES: u64 = 1200;
/// `generate --bad-rows-per-kind 1` adds four bad rows among the FILES.
const GOOD_FILES: u64 = FILES - 4;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn vera() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vera"));
    command
        // moto accepts any credentials; they reach the SDK through the standard chain.
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("VERA_S3_ENDPOINT", env_or("VERA_TEST_S3_ENDPOINT", "http://127.0.0.1:5055"))
        .env("VERA_S3_PATH_STYLE", "true")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn ok(output: std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The longest one `vera` command of these tests may run: a command that hangs fails its
/// test with this message instead of holding CI until its own limit.
const COMMAND_LIMIT: Duration = Duration::from_secs(300);

fn run(args: &[String], what: &str) -> String {
    let child = vera().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run vera");
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(COMMAND_LIMIT) {
        Ok(output) => ok(output.expect("wait for vera"), what),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} did not finish within {COMMAND_LIMIT:?}; killed it");
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

enum SourceKind {
    Sqlite,
    Postgres,
    MySql,
}

/// Copies the generated corpus into a fresh table of the SQL server, returning the
/// source arguments for `vera`.
async fn load_source(kind: &SourceKind, sqlite: &Path) -> Vec<String> {
    use sqlx::{ConnectOptions, Connection, Row};
    let table = format!("vera_e2e_{:08x}", rand::random::<u32>());
    let mut reader =
        sqlx::sqlite::SqliteConnectOptions::new().filename(sqlite).read_only(true).connect().await.unwrap();
    let rows = sqlx::query("SELECT id, uid, created_at, content_type, payload FROM files ORDER BY id")
        .fetch_all(&mut reader)
        .await
        .unwrap();
    macro_rules! copy {
        ($connection:expr, $create:expr, $insert:expr) => {{
            let mut connection = $connection;
            sqlx::raw_sql(&$create).execute(&mut connection).await.unwrap();
            let mut transaction = connection.begin().await.unwrap();
            for row in &rows {
                sqlx::query(&$insert)
                    .bind(row.get::<i64, _>("id"))
                    .bind(row.get::<Option<String>, _>("uid"))
                    .bind(row.get::<Option<String>, _>("created_at"))
                    .bind(row.get::<Option<String>, _>("content_type"))
                    .bind(row.get::<Option<Vec<u8>>, _>("payload"))
                    .execute(&mut *transaction)
                    .await
                    .unwrap();
            }
            transaction.commit().await.unwrap();
        }};
    }
    match kind {
        SourceKind::Sqlite => vec!["--source-db".into(), sqlite.display().to_string()],
        SourceKind::Postgres => {
            let url = env_or("VERA_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
            copy!(
                sqlx::PgConnection::connect(&url).await.expect("PostgreSQL (./scripts/services)"),
                // The column and index `--visibility transaction-id` (the default) needs.
                format!(
                    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, uid TEXT, created_at TEXT, content_type TEXT, payload BYTEA, \
                     vera_xid xid8 NOT NULL DEFAULT pg_current_xact_id()); CREATE INDEX ON {table} (vera_xid, id)"
                ),
                format!("INSERT INTO {table} (id, uid, created_at, content_type, payload) VALUES ($1, $2, $3, $4, $5)")
            );
            vec!["--source-url".into(), url, "--table".into(), table]
        }
        SourceKind::MySql => {
            let url = env_or("VERA_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
            copy!(
                sqlx::MySqlConnection::connect(&url).await.expect("MariaDB (./scripts/services)"),
                // The column and index `--visibility insert-time` (the default) needs.
                format!(
                    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, uid TEXT, created_at TEXT, content_type TEXT, payload LONGBLOB, \
                     vera_inserted_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), INDEX (vera_inserted_at, id))"
                ),
                format!("INSERT INTO {table} (id, uid, created_at, content_type, payload) VALUES (?, ?, ?, ?, ?)")
            );
            vec!["--source-url".into(), url, "--table".into(), table]
        }
    }
}

/// Starts a worker and kills it with SIGKILL as soon as it has claimed a task.
fn kill_worker_mid_task(args: &[String]) {
    let mut child: Child = vera()
        .args(args)
        .env("RUST_LOG", "vera_worker=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("task claimed") {
                let _ = sender.send(());
                return;
            }
        }
    });
    let claimed = receiver.recv_timeout(Duration::from_secs(120));
    // SIGKILL: no destructor, no ack, no goodbye to the broker.
    let _ = child.kill();
    let _ = child.wait();
    assert!(claimed.is_ok(), "the first worker never claimed a task");
}

/// `broker_counts_crashed_deliveries`: SQS and RabbitMQ count a delivery whose consumer
/// died; tansu does not return the Kafka commit metadata VERA keeps that count in.
fn pipeline(bus: String, kind: SourceKind, broker_counts_crashed_deliveries: bool) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("source.sqlite");
    let data = dir.path().join("data").display().to_string();
    let bucket = format!("vera-bus-{:08x}", rand::random::<u32>());
    run(
        &strings(&[
            "generate",
            "--db",
            &sqlite.display().to_string(),
            "--files",
            &FILES.to_string(),
            "--days",
            "2",
            "--bad-rows-per-kind",
            "1",
        ]),
        "generate",
    );
    let source = tokio::runtime::Runtime::new().unwrap().block_on(load_source(&kind, &sqlite));
    // verify and get need only the store; everything else also talks to the bus.
    let store_only = strings(&["--data-dir", &data, "--s3-bucket", &bucket]);
    let common = [store_only.clone(), strings(&["--bus", &bus])].concat();
    let source_name = format!("e2e-{:08x}", rand::random::<u32>());
    let mut sourced = source.clone();
    sourced.extend(strings(&["--source-name", &source_name]));

    run(&[strings(&["setup-bucket"]), common.clone()].concat(), "setup-bucket");
    let setup = run(&[strings(&["setup-bus", "--max-attempts", "5"]), common.clone()].concat(), "setup-bus");
    assert!(setup.contains("bus ready"), "{setup}");
    let produced: serde_json::Value = serde_json::from_str(
        run(
            &[strings(&["producer", "--drain", "--slot-rows", "200"]), common.clone(), sourced.clone()].concat(),
            "producer",
        )
        .trim(),
    )
    .unwrap();
    let tasks = produced["slots_published"].as_u64().unwrap();
    assert_eq!(produced["rows_planned"].as_u64().unwrap(), FILES, "{produced}");
    // Slots end on day boundaries where they can, so there may be more than FILES / 200.
    assert!((FILES / 200..=2 * FILES / 200).contains(&tasks), "{produced}");

    let worker = |id: &str| {
        [
            strings(&[
                "worker",
                "--id",
                id,
                "--exit-when-idle-ms",
                "4000",
                "--retain-days",
                "30",
                "--visibility-timeout-seconds",
                "5",
            ]),
            common.clone(),
            sourced.clone(),
        ]
        .concat()
    };
    kill_worker_mid_task(&worker("doomed"));

    let survivors: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|id| {
            let args = worker(id);
            std::thread::spawn(move || run(&args, "worker"))
        })
        .collect();
    let stats: Vec<serde_json::Value> =
        survivors.into_iter().map(|h| serde_json::from_str(h.join().unwrap().trim()).unwrap()).collect();
    // The killed worker never acked its task, so the survivors did every task: the killed
    // one came back to them. Delivery is at least once: a Kafka rebalance while a survivor
    // is mid-task hands that task to the other one too, so a task may be done twice (the
    // second time finds everything stored). `verify` below proves each row is stored once.
    let done: u64 = stats.iter().map(|s| s["tasks_done"].as_u64().unwrap()).sum();
    assert!(done >= tasks, "the killed worker's task was delivered again: {done} of {tasks} tasks, {stats:?}");
    if broker_counts_crashed_deliveries {
        let redelivered: u64 = stats.iter().map(|s| s["redelivered"].as_u64().unwrap()).sum();
        assert!(redelivered >= 1, "the broker counted the lost delivery: {stats:?}");
    }
    assert!(stats.iter().all(|s| s["dead_lettered"] == 0), "{stats:?}");

    // The depth figures workers export for autoscaling, read the same way: all drained.
    let status: serde_json::Value =
        serde_json::from_str(&run(&[strings(&["bus-status"]), common.clone()].concat(), "bus-status")).unwrap();
    assert_eq!(status["pack"]["depth"]["visible"], 0, "{status}");
    assert_eq!(status["pack"]["depth"]["dead"], 0, "{status}");
    assert!(
        status["events"]["depth"]["visible"].as_u64().unwrap() > 0,
        "ShardSealed events wait for their consumer: {status}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&run(&[strings(&["verify", "--json"]), store_only.clone()].concat(), "verify")).unwrap();
    assert_eq!(report["failures"].as_array().map(Vec::len), Some(0), "{report}");
    assert_eq!(report["files"].as_u64(), Some(GOOD_FILES), "every good row exactly once: {report}");

    // Every source row is archived or rejected with a reason, and reconcile proves it.
    let reconciled: serde_json::Value = serde_json::from_str(&run(
        &[strings(&["reconcile", "--json"]), store_only.clone(), sourced.clone()].concat(),
        "reconcile",
    ))
    .unwrap();
    assert_eq!(reconciled["in_source"].as_u64(), Some(FILES), "{reconciled}");
    assert_eq!(reconciled["missing"].as_u64(), Some(0), "{reconciled}");
    assert_eq!(reconciled["pending"].as_u64(), Some(0), "{reconciled}");
    let accounted = reconciled["stored"].as_u64().unwrap() + reconciled["rejected"].as_u64().unwrap();
    assert_eq!(accounted, FILES, "{reconciled}");
    assert!(reconciled["rejected"].as_u64().unwrap() >= FILES - GOOD_FILES - 1, "{reconciled}");

    let (uid, created_at, payload) = first_row(&sqlite);
    let output =
        vera().args([strings(&["get", &uid, "--created-at", &created_at]), store_only].concat()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, payload);
    eprintln!("pipeline on {} finished in {:.1}s", bus.split("://").next().unwrap(), started.elapsed().as_secs_f64());
}

fn prefix() -> String {
    format!("vera-test-{:08x}", rand::random::<u32>())
}

#[test]
fn sqs_bus_with_a_postgres_source() {
    let endpoint = env_or("VERA_TEST_S3_ENDPOINT", "http://127.0.0.1:5055");
    pipeline(
        format!("sqs://us-east-1?endpoint={endpoint}&wait_seconds=1&prefix={}-", prefix()),
        SourceKind::Postgres,
        true,
    );
}

#[test]
fn kafka_bus_with_a_mariadb_source() {
    let brokers = env_or("VERA_KAFKA_BROKERS", "127.0.0.1:9092");
    let prefix = prefix();
    pipeline(format!("kafka://{brokers}?prefix={prefix}.&group={prefix}&partitions=3"), SourceKind::MySql, false);
}

#[test]
fn rabbitmq_bus_with_a_sqlite_source() {
    let uri = env_or("VERA_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/%2f");
    // heartbeat=10 reaches lapin in the URI it connects with (and the broker accepts it).
    pipeline(format!("{uri}?prefix={}.&heartbeat=10", prefix()), SourceKind::Sqlite, true);
}

/// Disaster recovery on Kafka: the pack topic is replayed from offset 0 into an empty
/// store, and the rebuilt segments are byte-identical to the originals. The topic has one
/// partition, so the replay sees the tasks in their original order; with several
/// partitions the same files land in the same segments, but two tasks touching one shard
/// address may take its generation numbers in the other order.
#[test]
fn kafka_replay_rebuilds_byte_identical_segments() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("source.sqlite").display().to_string();
    let (original, rebuilt) =
        (dir.path().join("original").display().to_string(), dir.path().join("rebuilt").display().to_string());
    let brokers = env_or("VERA_KAFKA_BROKERS", "127.0.0.1:9092");
    let prefix = prefix();
    let bus = format!("kafka://{brokers}?prefix={prefix}.&group={prefix}&partitions=1");
    run(&strings(&["generate", "--db", &sqlite, "--files", "600", "--days", "2"]), "generate");
    let on = |data: &str| strings(&["--data-dir", data, "--bus", &bus]);
    let sourced = |data: &str| [on(data), strings(&["--source-db", &sqlite])].concat();
    run(&[strings(&["setup-bus"]), on(&original)].concat(), "setup-bus");
    run(&[strings(&["producer", "--drain", "--slot-rows", "150"]), sourced(&original)].concat(), "producer");
    let worker = |data: &str| {
        [strings(&["worker", "--exit-when-idle-ms", "3000", "--retain-days", "30"]), sourced(data)].concat()
    };
    run(&worker(&original), "worker");
    let replayed = run(&[strings(&["replay", "--from-offset", "0"]), on(&original)].concat(), "replay");
    assert!(replayed.contains("\"partitions\""), "{replayed}");
    run(&worker(&rebuilt), "worker on the replay");

    let segments = |data: &str| {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            use vera_store::ObjectStore;
            let store = vera_store::local::LocalStore::open(Path::new(data).join("store")).unwrap();
            let mut out = std::collections::BTreeMap::new();
            for meta in store.list("").await.unwrap() {
                if meta.key.ends_with(".vera") {
                    out.insert(meta.key.clone(), store.get(&meta.key).await.unwrap().body);
                }
            }
            out
        })
    };
    let (first, second) = (segments(&original), segments(&rebuilt));
    assert!(first.len() >= 2, "segments were written: {:?}", first.keys());
    assert_eq!(first.keys().collect::<Vec<_>>(), second.keys().collect::<Vec<_>>(), "the same segment keys");
    for (key, bytes) in &first {
        assert!(second[key] == *bytes, "segment {key} differs after the replay");
    }
}

/// `--bus amqp://…?vault_role=rabbitmq/vera`: the bus connects as a dynamic RabbitMQ user
/// issued by OpenBao (scripts/openbao), with no credentials in the URL or the config.
#[cfg(feature = "vault")]
#[test]
fn rabbitmq_credentials_come_from_vault() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let prefix = format!("vault{:08x}.", rand::random::<u32>());
    let vault = env_or("VERA_TEST_VAULT_ADDR", "http://127.0.0.1:8250");
    let token = env_or("VERA_TEST_VAULT_TOKEN", "vera-dev-root");
    let run = |role: &str, command: &str| {
        Command::new(env!("CARGO_BIN_EXE_vera"))
            .args([command, "--data-dir", &data])
            .env("VERA_BUS", format!("amqp://127.0.0.1:5672/%2f?prefix={prefix}&vault_role={role}"))
            .env("VAULT_ADDR", &vault)
            .env("VAULT_TOKEN", &token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let setup = run("rabbitmq/vera", "setup-bus");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let status = run("rabbitmq/vera", "bus-status");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let depth: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(depth["pack"]["depth"]["visible"], 0, "{depth}");
    let refused = run("rabbitmq/no-such-role", "bus-status");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("RabbitMQ credentials"), "{refused:?}");
}

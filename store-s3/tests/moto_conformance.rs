//! The S3 backend passes the shared ObjectStore conformance suite against a real S3 API
//! with Object Lock: the moto server that `./scripts/moto` installs and starts. The
//! endpoint comes from `VERA_TEST_S3_ENDPOINT` (default `http://127.0.0.1:5055`).

use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region, SharedCredentialsProvider};
use bytes::Bytes;
use vera_protocol::Timestamp;
use vera_store::conformance::{self, TimeControl};
use vera_store::{Clock, GovernanceBypass, LockMode, ObjectStore, PutOptions, Retention, StoreErrorKind, SystemClock};
use vera_store_s3::{BucketSetup, BucketState, S3Settings, S3Store, ensure_bucket};

fn endpoint() -> String {
    std::env::var("VERA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

/// moto accepts any credentials; real ones never appear in code or config.
fn s3(bucket: &str) -> S3Store {
    let shared = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "moto")))
        .build();
    // Smallest parts S3 allows, so the conformance suite's streamed upload takes three.
    let settings = S3Settings {
        endpoint: Some(endpoint()),
        force_path_style: true,
        multipart_threshold: vera_store_s3::MIN_PART_SIZE,
        part_size: vera_store_s3::MIN_PART_SIZE,
        ..S3Settings::new(bucket)
    };
    S3Store::from_sdk_config(&shared, &settings)
}

fn bucket_name(what: &str) -> String {
    format!("vera-{what}-{:08x}", rand::random::<u32>())
}

const SETUP: BucketSetup =
    BucketSetup { default_retention: Some((LockMode::Compliance, 1)), allow_without_object_lock: false };

/// The server's clock cannot be moved: wait instead, with short retention periods.
struct RealTime;

impl TimeControl for RealTime {
    fn now(&self) -> Timestamp {
        SystemClock.now()
    }

    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    fn retention_unit(&self) -> Duration {
        Duration::from_secs(3)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_conformance_on_moto() {
    let bucket = bucket_name("conf");
    let store = s3(&bucket);
    // Object Lock on, no bucket default: every object carries its own retention, and
    // mutable objects (CAS) stay unlocked, as VERA's sidecars and watermark must.
    let setup = BucketSetup { default_retention: None, ..SETUP };
    assert_eq!(ensure_bucket(&store, setup).await.unwrap(), BucketState::Created);
    conformance::run_all(&store, &RealTime).await;
}

#[tokio::test]
async fn a_bucket_without_object_lock_is_refused_unless_allowed() {
    let bucket = bucket_name("nolock");
    let store = s3(&bucket);
    store.client().create_bucket().bucket(&bucket).send().await.unwrap();
    let refused = ensure_bucket(&store, SETUP).await.unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Config);
    let allowed = BucketSetup { allow_without_object_lock: true, ..SETUP };
    assert_eq!(ensure_bucket(&store, allowed).await.unwrap(), BucketState::ExistedWithoutObjectLockAllowed);
    let again = ensure_bucket(&s3(&bucket_name("lock")), SETUP).await.unwrap();
    assert_eq!(again, BucketState::Created);
}

#[tokio::test]
async fn locked_objects_refuse_deletion_overwrite_and_shortening_even_where_moto_would_allow_it() {
    let bucket = bucket_name("lock");
    let store = s3(&bucket);
    ensure_bucket(&store, SETUP).await.unwrap();
    let until = Timestamp::from_micros(SystemClock.now().as_micros() + 3_600_000_000).unwrap();
    let outcome = store
        .put(
            "e1/d2026-11-24/n00-0/g000000.vera",
            Bytes::from_static(b"segment"),
            PutOptions::create().with_retention(Retention { mode: LockMode::Compliance, retain_until: until }),
        )
        .await
        .unwrap();
    assert!(outcome.version_id.is_some(), "Object Lock buckets are versioned: the version id is recorded");
    let key = "e1/d2026-11-24/n00-0/g000000.vera";
    assert_eq!(store.delete(key).await.unwrap_err().kind, StoreErrorKind::Locked);
    let shorter = Retention {
        mode: LockMode::Compliance,
        retain_until: Timestamp::from_micros(until.as_micros() - 60_000_000).unwrap(),
    };
    assert_eq!(store.set_retention(key, shorter).await.unwrap_err().kind, StoreErrorKind::Locked);
    assert_eq!(&store.get(key).await.unwrap().body[..], b"segment");
    let head = store.head(key).await.unwrap();
    assert_eq!(head.retention.map(|r| r.mode), Some(LockMode::Compliance));

    // The server itself, asked directly without VERA's own checks:
    let version = outcome.version_id.clone().unwrap();
    let client = store.client();
    let refused = client.delete_object().bucket(&bucket).key(key).version_id(&version).send().await;
    assert!(refused.is_err(), "the server refuses to delete a locked version");
    let overwrite = client
        .put_object()
        .bucket(&bucket)
        .key(key)
        .if_none_match("*")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"forged"))
        .send()
        .await;
    assert!(overwrite.is_err(), "the server refuses a create over an existing segment");
    // An unconditional PUT only adds a version on top; the locked bytes stay readable.
    client
        .put_object()
        .bucket(&bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"forged"))
        .send()
        .await
        .unwrap();
    let original = client.get_object().bucket(&bucket).key(key).version_id(&version).send().await.unwrap();
    assert_eq!(&original.body.collect().await.unwrap().into_bytes()[..], b"segment", "the locked version is intact");
    // And VERA refuses both on its own, whatever the server would do.
    assert_eq!(
        store.put(key, Bytes::from_static(b"x"), PutOptions::create()).await.unwrap_err().kind,
        StoreErrorKind::AlreadyExists
    );
    assert_eq!(
        store.put(key, Bytes::from_static(b"x"), PutOptions::overwrite()).await.unwrap_err().kind,
        StoreErrorKind::Locked
    );
}

#[tokio::test]
async fn a_missing_bucket_and_an_unreachable_endpoint_say_what_to_fix() {
    let store = s3(&bucket_name("never-created"));
    let error = store.list("e1/").await.expect_err("no such bucket");
    assert_eq!(error.kind, StoreErrorKind::Config, "a missing bucket is not an empty one: {error:?}");
    assert!(error.to_string().contains("vera setup-bucket"), "{error}");
    let error = store.put("k", Bytes::from_static(b"x"), PutOptions::create()).await.expect_err("no bucket");
    assert_eq!(error.kind, StoreErrorKind::Config, "{error:?}");

    let shared = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "moto")))
        .build();
    let unreachable = S3Store::from_sdk_config(
        &shared,
        &S3Settings {
            endpoint: Some("http://127.0.0.1:1".into()),
            force_path_style: true,
            max_attempts: 1,
            ..S3Settings::new("any")
        },
    );
    let error = unreachable.head("k").await.expect_err("nothing listens on port 1");
    assert_eq!(error.kind, StoreErrorKind::Transient);
    assert!(error.to_string().contains("reachable"), "{error}");
}

#[tokio::test]
async fn break_glass_bypasses_governance_but_never_compliance_or_a_legal_hold() {
    let bucket = bucket_name("glass");
    let store = s3(&bucket);
    ensure_bucket(&store, SETUP).await.unwrap();
    let until = Timestamp::from_micros(SystemClock.now().as_micros() + 3_600_000_000).unwrap();
    let governance = Retention { mode: LockMode::Governance, retain_until: until };
    for key in ["gov/a", "gov/b", "gov/held"] {
        store.put(key, Bytes::from_static(b"x"), PutOptions::create().with_retention(governance)).await.unwrap();
    }
    store.set_legal_hold("gov/held", true).await.unwrap();
    let compliance = Retention { mode: LockMode::Compliance, retain_until: until };
    store.put("comp/a", Bytes::from_static(b"x"), PutOptions::create().with_retention(compliance)).await.unwrap();

    // The ordinary paths refuse, as always.
    assert_eq!(store.delete("gov/a").await.unwrap_err().kind, StoreErrorKind::Locked);
    // Shortening GOVERNANCE retention works only with the bypass.
    let sooner = Retention {
        mode: LockMode::Governance,
        retain_until: Timestamp::from_micros(until.as_micros() - 1_800_000_000).unwrap(),
    };
    assert_eq!(store.set_retention("gov/b", sooner).await.unwrap_err().kind, StoreErrorKind::Locked);
    store.bypass_governance("gov/b", GovernanceBypass::Shorten(sooner)).await.unwrap();
    assert_eq!(store.head("gov/b").await.unwrap().retention.map(|r| r.retain_until), Some(sooner.retain_until));
    store.bypass_governance("gov/a", GovernanceBypass::Delete).await.unwrap();
    assert_eq!(store.get("gov/a").await.unwrap_err().kind, StoreErrorKind::NotFound);
    for key in ["gov/held", "comp/a"] {
        let error = store.bypass_governance(key, GovernanceBypass::Delete).await.unwrap_err();
        assert_eq!(error.kind, StoreErrorKind::Locked, "{key}: {error}");
        assert_eq!(&store.get(key).await.unwrap().body[..], b"x");
    }
}

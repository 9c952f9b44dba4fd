//! `S3Store`: the `ObjectStore` seam on S3 and S3-compatible servers (AWS, MinIO, Ceph).
//!
//! * Create-if-absent is `PutObject` with `If-None-Match: *`; compare-and-swap is
//!   `If-Match: <etag>`.
//! * Object Lock mode, retain-until and legal hold are set per object on the PUT, and
//!   changed with `PutObjectRetention` / `PutObjectLegalHold`. VERA refuses to shorten or
//!   weaken retention *itself*, from the state a HEAD returns, before asking the server:
//!   some servers (moto) would allow it.
//! * Deletes name the current version id, so Object Lock refuses them; a delete without
//!   a version id would only add a delete marker, which VERA never does on purpose.
//! * Lock state is read from `HeadObject` (moto answers `GetObjectRetention` with 500).
//! * Credentials come from the standard AWS chain (environment, profile, SSO, IMDS);
//!   `endpoint` and `force_path_style` serve MinIO and friends. The SDK retries 5xx,
//!   SlowDown and timeouts with exponential backoff and jitter (standard retry mode).
//!
//! * Large bodies (`put_source` above `multipart_threshold`) stream as a multipart upload,
//!   one part in memory at a time; the lock, legal hold and metadata go on
//!   `CreateMultipartUpload`, create-if-absent goes on `CompleteMultipartUpload`
//!   (`If-None-Match: *`), and a failed upload is aborted so no parts linger.
//!
//! `ensure_bucket` is the setup step: it creates a bucket with Object Lock and a default
//! retention, and refuses a bucket without Object Lock unless explicitly allowed.

pub mod requests;

use std::collections::BTreeMap;
use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockLegalHold, ObjectLockLegalHoldStatus,
    ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode, ObjectLockRule, Tag, Tagging,
};
use aws_smithy_types::DateTime;
use bytes::Bytes;
use vera_protocol::Timestamp;
use vera_store::upload::UploadSource;
use vera_store::{
    GetOutcome, GovernanceBypass, LockMode, ObjectMeta, ObjectStore, PutMode, PutOptions, PutOutcome, Retention,
    StoreError, StoreErrorKind, TagCount, validate_key,
};

/// Where the bucket is and how to reach it. No credentials here: they come from the
/// standard AWS chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// e.g. `http://127.0.0.1:9000` for MinIO; `None` for AWS.
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub max_attempts: u32,
    /// `put_source` bodies at least this long go up as multipart uploads.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (S3: at least 5 MiB, except the last part).
    pub part_size: u64,
    /// For servers that fail a suffix range longer than the object (s3s-fs 0.14.1 answers
    /// 500: it seeks before the start of the file) instead of returning the whole object as
    /// S3, MinIO and moto do: a suffix read that fails with a 5xx is tried once, without
    /// SDK retries, then replaced by HEAD + range GET. Off by default.
    pub suffix_fallback: bool,
}

/// Bodies at least this long go up as multipart uploads. Every part is a billed request
/// (a 40 MiB segment in 16 MiB parts is 5: create, 3 parts, complete), so the threshold is
/// as high as memory allows: a smaller body is read into memory for one PutObject, so a
/// worker holds at most `put_concurrency` × this much in upload buffers.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;

/// S3's smallest allowed part (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

impl S3Settings {
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Settings {
            bucket: bucket.into(),
            region: "us-east-1".into(),
            endpoint: None,
            force_path_style: false,
            max_attempts: 5,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: 16 * 1024 * 1024,
            suffix_fallback: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    multipart_threshold: u64,
    part_size: u64,
    suffix_fallback: bool,
}

impl S3Store {
    /// Builds a client from the standard AWS configuration chain plus `settings`.
    pub async fn connect(settings: &S3Settings) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .load()
            .await;
        Self::from_sdk_config(&shared, settings)
    }

    /// Builds a client from an existing SDK configuration (tests pass static credentials).
    pub fn from_sdk_config(shared: &aws_config::SdkConfig, settings: &S3Settings) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::from(shared)
            .force_path_style(settings.force_path_style)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)));
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        S3Store {
            client: Client::from_conf(builder.build()),
            bucket: settings.bucket.clone(),
            multipart_threshold: settings.multipart_threshold.max(MIN_PART_SIZE),
            part_size: settings.part_size.max(MIN_PART_SIZE),
            suffix_fallback: settings.suffix_fallback,
        }
    }

    /// A client with fixed credentials instead of the AWS chain: for S3-compatible test and
    /// benchmark servers (moto, s3s-fs) whose keys are not secrets.
    pub fn with_static_credentials(settings: &S3Settings, access_key: &str, secret_key: &str) -> Self {
        Self::with_credentials(settings, access_key, secret_key, None, "vera-static")
    }

    /// A client with credentials fetched by the caller (from Vault's KV v2, say), named by
    /// `source` in the SDK's logs. The secret is never logged.
    pub fn with_credentials(
        settings: &S3Settings,
        access_key: &str,
        secret_key: &str,
        session_token: Option<String>,
        source: &'static str,
    ) -> Self {
        use aws_sdk_s3::config::{Credentials, Region, SharedCredentialsProvider};
        let credentials = Credentials::new(access_key, secret_key, session_token, None, source);
        let shared = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .build();
        Self::from_sdk_config(&shared, settings)
    }

    /// Counts every HTTP request this store's client transmits (retries and multipart parts
    /// included) into `counts`, by S3 request class; see [`requests`].
    pub fn with_request_counts(mut self, counts: std::sync::Arc<vera_store::counting::RequestCounts>) -> Self {
        let config = self.client.config().to_builder().interceptor(requests::RequestCounter::new(counts)).build();
        self.client = Client::from_conf(config);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Streams `body` as a multipart upload; see the module docs.
    async fn put_multipart(
        &self,
        key: &str,
        body: std::sync::Arc<dyn UploadSource>,
        options: PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        let op = match &options.mode {
            PutMode::Create => Op::Create,
            PutMode::Update { .. } => Op::Update,
            PutMode::Overwrite => Op::Write,
        };
        if op != Op::Create {
            self.refuse_if_locked(key).await?;
        }
        let mut create = self.client.create_multipart_upload().bucket(&self.bucket).key(key);
        if let Some(retention) = options.retention {
            create = create
                .object_lock_mode(object_lock_mode(retention.mode))
                .object_lock_retain_until_date(to_datetime(retention.retain_until));
        }
        if options.legal_hold {
            create = create.object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On);
        }
        for (name, value) in &options.metadata {
            create = create.metadata(name, value);
        }
        let upload = create.send().await.map_err(|e| map_error(key, e, Op::Write))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let result = self.upload_parts_and_complete(key, &upload_id, body, &options.mode, op).await;
        if let Ok(outcome) = &result {
            // Some servers (moto) ignore the lock on CreateMultipartUpload: read it back
            // and set what is missing, so the object is never left unprotected.
            let head = self.head(key).await?;
            if let Some(retention) = options.retention
                && head.retention.is_none_or(|r| r.retain_until < retention.retain_until)
            {
                tracing::warn!(key, "the server did not apply the upload's Object Lock; setting it now");
                self.set_retention(key, retention).await?;
            }
            if options.legal_hold && !head.legal_hold {
                self.set_legal_hold(key, true).await?;
            }
            return Ok(outcome.clone());
        }
        if result.is_err() {
            // Leave no billable parts behind.
            let abort =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
            if let Err(error) = abort {
                tracing::warn!(key, upload_id, error = %error, "could not abort a failed multipart upload");
            }
        }
        result
    }

    async fn upload_parts_and_complete(
        &self,
        key: &str,
        upload_id: &str,
        body: std::sync::Arc<dyn UploadSource>,
        mode: &PutMode,
        op: Op,
    ) -> Result<PutOutcome, StoreError> {
        let len = body.len();
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1;
        while offset < len {
            let size = self.part_size.min(len - offset);
            let source = body.clone();
            let chunk = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
                let mut buf = vec![0; usize::try_from(size).map_err(std::io::Error::other)?];
                source.read_exact_at(offset, &mut buf)?;
                Ok(Bytes::from(buf))
            })
            .await
            .map_err(|e| StoreError::new(StoreErrorKind::Other, key, format!("reading part {number} failed: {e}")))?
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Other, key, format!("reading part {number} failed")).with_source(e)
            })?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| map_error(key, e, Op::Write))?;
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .set_checksum_crc32(part.checksum_crc32().map(str::to_owned))
                    .set_checksum_crc32_c(part.checksum_crc32_c().map(str::to_owned))
                    .build(),
            );
            offset += size;
            number += 1;
        }
        let mut complete = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        match mode {
            PutMode::Create => complete = complete.if_none_match("*"),
            PutMode::Update { etag } => complete = complete.if_match(etag),
            PutMode::Overwrite => {}
        }
        let output = complete.send().await.map_err(|e| map_error(key, e, op))?;
        Ok(PutOutcome {
            etag: output.e_tag().unwrap_or_default().to_owned(),
            version_id: output.version_id().map(str::to_owned),
        })
    }

    async fn refuse_if_locked(&self, key: &str) -> Result<(), StoreError> {
        let head = match self.head_raw(key).await {
            Ok(head) => head,
            Err(error) if error.kind == StoreErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        if head.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On) {
            return Err(StoreError::new(StoreErrorKind::Locked, key, "object is under legal hold"));
        }
        if let Some(retention) = lock_from_parts(head.object_lock_mode(), head.object_lock_retain_until_date())
            && retention.retain_until > now()
        {
            return Err(StoreError::new(
                StoreErrorKind::Locked,
                key,
                format!("object is under {:?} retention until {}", retention.mode, retention.retain_until),
            ));
        }
        Ok(())
    }

    /// Current version id and lock state, from HEAD.
    async fn head_raw(&self, key: &str) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput, StoreError> {
        self.client.head_object().bucket(&self.bucket).key(key).send().await.map_err(|e| map_error(key, e, Op::Read))
    }
}

/// How the bucket should be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSetup {
    /// Bucket default (mode, days) for objects put without their own retention. `None`
    /// keeps Object Lock on with no default, so each object carries its own retention and
    /// mutable objects (sidecars, watermarks) can share the bucket unlocked.
    pub default_retention: Option<(LockMode, i32)>,
    /// Accept an existing bucket without Object Lock (never for production data).
    pub allow_without_object_lock: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketState {
    Created,
    /// The server ignored the Object Lock flag, and the override allowed that.
    CreatedWithoutObjectLockAllowed,
    ExistedWithObjectLock,
    ExistedWithoutObjectLockAllowed,
}

async fn object_lock_enabled(store: &S3Store) -> bool {
    let configuration = store.client.get_object_lock_configuration().bucket(&store.bucket).send().await;
    matches!(
        configuration.as_ref().ok().and_then(|c| c.object_lock_configuration()).and_then(|c| c.object_lock_enabled()),
        Some(ObjectLockEnabled::Enabled)
    )
}

/// Creates the bucket with Object Lock and a default retention, or checks an existing
/// one. A bucket without Object Lock is refused with `Config` unless allowed.
pub async fn ensure_bucket(store: &S3Store, setup: BucketSetup) -> Result<BucketState, StoreError> {
    let bucket = store.bucket.as_str();
    // HEAD first: in us-east-1, CreateBucket on a bucket you own answers 200, not an error.
    let exists = match store.client.head_bucket().bucket(bucket).send().await {
        Ok(_) => true,
        Err(error) => {
            let mapped = map_error(bucket, error, Op::Read);
            if mapped.kind != StoreErrorKind::NotFound {
                return Err(mapped);
            }
            false
        }
    };
    if exists {
        if object_lock_enabled(store).await {
            return Ok(BucketState::ExistedWithObjectLock);
        }
        if !setup.allow_without_object_lock {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                bucket,
                "bucket exists without Object Lock; shards need WORM storage (pass the explicit override only for throwaway data)",
            ));
        }
        return Ok(BucketState::ExistedWithoutObjectLockAllowed);
    }
    store
        .client
        .create_bucket()
        .bucket(bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .map_err(|e| map_error(bucket, e, Op::Write))?;
    // Some servers (s3s-fs, older MinIO setups) accept the Object Lock flag and ignore it:
    // read the bucket back instead of trusting the 200.
    if !object_lock_enabled(store).await {
        if !setup.allow_without_object_lock {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                bucket,
                "the server created the bucket but did not enable Object Lock (it may not support it); \
                 shards need WORM storage: delete the bucket and use a server with Object Lock, or pass the \
                 explicit override for throwaway data",
            ));
        }
        return Ok(BucketState::CreatedWithoutObjectLockAllowed);
    }
    let state = BucketState::Created;
    let Some((mode, days)) = setup.default_retention else {
        return Ok(state);
    };
    let rule = ObjectLockRule::builder()
        .default_retention(DefaultRetention::builder().mode(retention_mode(mode)).days(days).build())
        .build();
    let configuration =
        ObjectLockConfiguration::builder().object_lock_enabled(ObjectLockEnabled::Enabled).rule(rule).build();
    store
        .client
        .put_object_lock_configuration()
        .bucket(bucket)
        .object_lock_configuration(configuration)
        .send()
        .await
        .map_err(|e| map_error(bucket, e, Op::Write))?;
    Ok(state)
}

/// Storage classes a superseded segment may move to: cheaper, yet readable with a plain
/// GET (readers still read its footer and index on a cold cache).
pub const INSTANT_ARCHIVE_CLASSES: &[&str] = &["GLACIER_IR", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING"];

/// Id of the bucket lifecycle rule that moves superseded segments to the archive class.
pub const ARCHIVE_RULE_ID: &str = "vera-archive-superseded";

/// Installs (or updates) the bucket lifecycle rule that moves objects tagged
/// `tag_key = tag_value` (segments a repack superseded) to `storage_class` after
/// `after_days`. Other rules in the bucket's lifecycle configuration are kept. Storage
/// class transitions do not touch Object Lock: an archived segment stays locked until its
/// retention expires. The rule never expires (deletes) anything.
pub async fn ensure_archive_rule(
    store: &S3Store,
    tag: (&str, &str),
    storage_class: &str,
    after_days: i32,
) -> Result<(), StoreError> {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleRule, LifecycleRuleFilter, Transition,
        TransitionStorageClass,
    };
    let bucket = store.bucket.as_str();
    let invalid = |e: aws_sdk_s3::error::BuildError| {
        StoreError::new(StoreErrorKind::InvalidInput, bucket, "invalid lifecycle rule").with_source(e)
    };
    if after_days < 0 {
        return Err(StoreError::new(StoreErrorKind::InvalidInput, bucket, "archive days must be 0 or more"));
    }
    let class = TransitionStorageClass::from(storage_class);
    if !INSTANT_ARCHIVE_CLASSES.contains(&storage_class) {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            bucket,
            format!(
                "storage class {storage_class:?} is not one of {INSTANT_ARCHIVE_CLASSES:?}: readers still fetch a \
                 superseded segment's footer and index to learn which files it held, so it must stay readable \
                 without a restore (GLACIER and DEEP_ARCHIVE are not)"
            ),
        ));
    }
    let rule = LifecycleRule::builder()
        .id(ARCHIVE_RULE_ID)
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .tag(Tag::builder().key(tag.0).value(tag.1).build().map_err(invalid)?)
                .build(),
        )
        .transitions(Transition::builder().days(after_days).storage_class(class).build())
        .build()
        .map_err(invalid)?;
    let mut rules: Vec<LifecycleRule> =
        match store.client.get_bucket_lifecycle_configuration().bucket(bucket).send().await {
            Ok(current) => current.rules().iter().filter(|r| r.id() != Some(ARCHIVE_RULE_ID)).cloned().collect(),
            Err(error) => {
                let code = error.as_service_error().and_then(|e| e.code()).unwrap_or_default().to_owned();
                if code != "NoSuchLifecycleConfiguration" {
                    return Err(map_error(bucket, error, Op::Read));
                }
                Vec::new()
            }
        };
    rules.push(rule);
    let configuration = BucketLifecycleConfiguration::builder().set_rules(Some(rules)).build().map_err(invalid)?;
    store
        .client
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(configuration)
        .send()
        .await
        .map_err(|e| map_error(bucket, e, Op::Write))?;
    Ok(())
}

/// The transitions (storage class, days) of the archive rule, if the bucket has it.
pub async fn archive_rule(store: &S3Store) -> Result<Option<Vec<(String, i32)>>, StoreError> {
    let bucket = store.bucket.as_str();
    match store.client.get_bucket_lifecycle_configuration().bucket(bucket).send().await {
        Ok(current) => Ok(current.rules().iter().find(|r| r.id() == Some(ARCHIVE_RULE_ID)).map(|rule| {
            rule.transitions()
                .iter()
                .map(|t| (t.storage_class().map(|c| c.as_str().to_owned()).unwrap_or_default(), t.days().unwrap_or(0)))
                .collect()
        })),
        Err(error) if error.as_service_error().and_then(|e| e.code()) == Some("NoSuchLifecycleConfiguration") => {
            Ok(None)
        }
        Err(error) => Err(map_error(bucket, error, Op::Read)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Create,
    Update,
    Delete,
}

fn map_error<E>(key: &str, error: SdkError<E, HttpResponse>, op: Op) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, message) = match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default();
            let kind = match (status, code, op) {
                // If-Match on a missing key: the object to update is not there.
                // A missing bucket is a deployment error, never "no such object": reads
                // would otherwise report files as absent.
                (_, "NoSuchBucket", _) => StoreErrorKind::Config,
                (404, _, Op::Update) => StoreErrorKind::Precondition,
                (_, "NoSuchKey" | "NotFound", _) | (404, _, _) => StoreErrorKind::NotFound,
                (412, _, Op::Create) => StoreErrorKind::AlreadyExists,
                (412, _, _) => StoreErrorKind::Precondition,
                (409, _, Op::Create | Op::Update) => StoreErrorKind::Transient,
                (403, "AccessDenied", Op::Delete | Op::Write | Op::Update) => StoreErrorKind::Locked,
                (403, _, _) => StoreErrorKind::Config,
                (400, "InvalidRequest" | "InvalidArgument", _) => StoreErrorKind::InvalidInput,
                // Retrying cannot help a server that lacks the operation.
                (501, _, _) => StoreErrorKind::Config,
                (500..=599, _, _) | (_, "SlowDown" | "RequestTimeout", _) => StoreErrorKind::Transient,
                _ => StoreErrorKind::Other,
            };
            let hint = match (kind, code) {
                (StoreErrorKind::Config, "NoSuchBucket") => ": the bucket does not exist; run `vera setup-bucket`",
                (StoreErrorKind::Config, "NotImplemented") => {
                    ": this S3 server does not implement the operation (Object Lock needs a server that does)"
                }
                (StoreErrorKind::Config, _) => ": check the credentials and the bucket policy",
                _ => "",
            };
            (kind, format!("s3 answered {status} {code}{hint}"))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => (
            StoreErrorKind::Transient,
            "s3 request did not complete: is the endpoint (--s3-endpoint) running and reachable?".to_owned(),
        ),
        _ => (StoreErrorKind::Other, "s3 request failed".to_owned()),
    };
    StoreError::new(kind, key, message).with_source(error)
}

/// `ObjectMeta` from a GetObject or HeadObject output: the two types share these
/// accessors but no trait.
macro_rules! object_meta {
    ($key:expr, $output:expr) => {
        ObjectMeta {
            key: $key.to_owned(),
            len: u64::try_from($output.content_length().unwrap_or(0)).unwrap_or(0),
            etag: $output.e_tag().unwrap_or_default().to_owned(),
            version_id: $output.version_id().map(str::to_owned),
            retention: lock_from_parts($output.object_lock_mode(), $output.object_lock_retain_until_date()),
            legal_hold: $output.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On),
            metadata: $output.metadata().cloned().unwrap_or_default().into_iter().collect(),
            last_modified: $output.last_modified().and_then(from_datetime),
        }
    };
}

/// `x-amz-tagging-count` as a [`TagCount`]: S3 leaves the header out when there are none.
fn tag_count(header: Option<i32>) -> TagCount {
    Some(header.map_or(0, |n| u32::try_from(n).unwrap_or(0)))
}

async fn collect_body(key: &str, body: ByteStream) -> Result<Bytes, StoreError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Transient, key, "s3 body read failed").with_source(e))?
        .into_bytes())
}

fn now() -> Timestamp {
    use vera_store::Clock;
    vera_store::SystemClock.now()
}

fn retention_mode(mode: LockMode) -> ObjectLockRetentionMode {
    match mode {
        LockMode::Compliance => ObjectLockRetentionMode::Compliance,
        LockMode::Governance => ObjectLockRetentionMode::Governance,
    }
}

fn object_lock_mode(mode: LockMode) -> ObjectLockMode {
    match mode {
        LockMode::Compliance => ObjectLockMode::Compliance,
        LockMode::Governance => ObjectLockMode::Governance,
    }
}

fn to_datetime(timestamp: Timestamp) -> DateTime {
    let micros = timestamp.as_micros();
    // In range by construction: sub-second part is 0..1_000_000 us.
    DateTime::from_secs_and_nanos(micros.div_euclid(1_000_000), (micros.rem_euclid(1_000_000) * 1000) as u32)
}

fn from_datetime(datetime: &DateTime) -> Option<Timestamp> {
    let micros = datetime.secs().checked_mul(1_000_000)?.checked_add(i64::from(datetime.subsec_nanos() / 1000))?;
    Timestamp::from_micros(micros).ok()
}

fn lock_from_parts(mode: Option<&ObjectLockMode>, until: Option<&DateTime>) -> Option<Retention> {
    let mode = match mode? {
        ObjectLockMode::Compliance => LockMode::Compliance,
        ObjectLockMode::Governance => LockMode::Governance,
        _ => return None,
    };
    Some(Retention { mode, retain_until: from_datetime(until?)? })
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        let mut request = self.client.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(body));
        let op = match &options.mode {
            PutMode::Create => {
                request = request.if_none_match("*");
                Op::Create
            }
            PutMode::Update { etag } => {
                request = request.if_match(etag);
                Op::Update
            }
            PutMode::Overwrite => Op::Write,
        };
        if op != Op::Create {
            // S3 would accept the PUT as a new version and keep the locked one; VERA's
            // contract is stricter and the same on every backend: a locked key is never
            // overwritten.
            self.refuse_if_locked(key).await?;
        }
        if let Some(retention) = options.retention {
            request = request
                .object_lock_mode(object_lock_mode(retention.mode))
                .object_lock_retain_until_date(to_datetime(retention.retain_until));
        }
        if options.legal_hold {
            request = request.object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On);
        }
        for (name, value) in &options.metadata {
            request = request.metadata(name, value);
        }
        let output = request.send().await.map_err(|e| map_error(key, e, op))?;
        Ok(PutOutcome {
            etag: output.e_tag().unwrap_or_default().to_owned(),
            version_id: output.version_id().map(str::to_owned),
        })
    }

    async fn put_source(
        &self,
        key: &str,
        body: std::sync::Arc<dyn UploadSource>,
        options: PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        if body.len() < self.multipart_threshold {
            let bytes = vera_store::upload::read_all(key, body).await?;
            return self.put(key, bytes, options).await;
        }
        self.put_multipart(key, body, options).await
    }

    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        validate_key(key)?;
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_error(key, e, Op::Read))?;
        let meta = object_meta!(key, output);
        let body = collect_body(key, output.body).await?;
        Ok(GetOutcome { meta: ObjectMeta { len: body.len() as u64, ..meta }, body })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        Ok(self.get_range_tagged(key, range).await?.0)
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        let (bytes, total, _) = self.get_suffix_tagged(key, len).await?;
        Ok((bytes, total))
    }

    /// S3 sends `x-amz-tagging-count` only when the object has tags: absent means 0.
    async fn get_range_tagged(&self, key: &str, range: Range<u64>) -> Result<(Bytes, TagCount), StoreError> {
        validate_key(key)?;
        if range.start >= range.end {
            if range.start == range.end {
                return Ok((Bytes::new(), None));
            }
            return Err(StoreError::new(StoreErrorKind::InvalidInput, key, "empty or inverted range"));
        }
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(header)
            .send()
            .await
            .map_err(|e| map_error(key, e, Op::Read))?;
        let tags = tag_count(output.tag_count());
        let body = collect_body(key, output.body).await?;
        if body.len() as u64 != range.end - range.start {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                key,
                format!("range {}..{} not satisfiable: got {} bytes", range.start, range.end, body.len()),
            ));
        }
        Ok((body, tags))
    }

    async fn get_suffix_tagged(&self, key: &str, len: u64) -> Result<(Bytes, u64, TagCount), StoreError> {
        validate_key(key)?;
        let request = self.client.get_object().bucket(&self.bucket).key(key).range(format!("bytes=-{}", len.max(1)));
        let sent = if self.suffix_fallback {
            let once = aws_sdk_s3::config::Builder::default().retry_config(aws_config::retry::RetryConfig::disabled());
            request.customize().config_override(once).send().await
        } else {
            request.send().await
        };
        let output = match sent {
            Ok(output) => output,
            Err(SdkError::ServiceError(service))
                if self.suffix_fallback && service.raw().status().is_server_error() =>
            {
                let object_len = self.head_raw(key).await?.content_length().and_then(|n| u64::try_from(n).ok());
                let object_len = object_len.ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Other, key, "HEAD answered without a Content-Length")
                })?;
                let (tail, tags) = self.get_range_tagged(key, object_len.saturating_sub(len)..object_len).await?;
                return Ok((tail, object_len, tags));
            }
            Err(error) => return Err(map_error(key, error, Op::Read)),
        };
        let total = output
            .content_range()
            .and_then(|range| range.rsplit('/').next())
            .and_then(|total| total.parse::<u64>().ok());
        let tags = tag_count(output.tag_count());
        let body = collect_body(key, output.body).await?;
        // Without Content-Range the server sent the whole (short) object.
        let total = total.unwrap_or(body.len() as u64);
        Ok((body, total, tags))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        validate_key(key)?;
        let output = self.head_raw(key).await?;
        Ok(object_meta!(key, output))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        let mut metas = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_error(prefix, e, Op::Read))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                metas.push(ObjectMeta {
                    key: key.to_owned(),
                    len: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                    etag: object.e_tag().unwrap_or_default().to_owned(),
                    version_id: None,
                    retention: None,
                    legal_hold: false,
                    metadata: Default::default(),
                    last_modified: object.last_modified().and_then(from_datetime),
                });
            }
        }
        metas.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(metas)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let head = match self.head_raw(key).await {
            Ok(head) => head,
            Err(error) if error.kind == StoreErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut request = self.client.delete_object().bucket(&self.bucket).key(key);
        if let Some(version) = head.version_id() {
            request = request.version_id(version);
        }
        request.send().await.map_err(|e| map_error(key, e, Op::Delete))?;
        Ok(())
    }

    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        validate_key(key)?;
        let head = self.head_raw(key).await?;
        if let Some(current) = lock_from_parts(head.object_lock_mode(), head.object_lock_retain_until_date()) {
            if current.mode == LockMode::Compliance && retention.mode == LockMode::Governance {
                return Err(StoreError::new(StoreErrorKind::Locked, key, "cannot weaken COMPLIANCE retention"));
            }
            if retention.retain_until < current.retain_until {
                return Err(StoreError::new(
                    StoreErrorKind::Locked,
                    key,
                    format!("cannot shorten retention from {} to {}", current.retain_until, retention.retain_until),
                ));
            }
        }
        let lock = ObjectLockRetention::builder()
            .mode(retention_mode(retention.mode))
            .retain_until_date(to_datetime(retention.retain_until))
            .build();
        let mut request = self.client.put_object_retention().bucket(&self.bucket).key(key).retention(lock);
        if let Some(version) = head.version_id() {
            request = request.version_id(version);
        }
        request.send().await.map_err(|e| map_error(key, e, Op::Write))?;
        Ok(())
    }

    async fn bypass_governance(&self, key: &str, bypass: GovernanceBypass) -> Result<(), StoreError> {
        validate_key(key)?;
        let head = self.head_raw(key).await?;
        // VERA refuses what no bypass may do, whatever the server would allow.
        vera_store::check_bypassable(
            key,
            &bypass,
            head.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On),
            lock_from_parts(head.object_lock_mode(), head.object_lock_retain_until_date()),
            vera_store::Clock::now(&vera_store::SystemClock),
        )?;
        match bypass {
            GovernanceBypass::Delete => {
                let mut request =
                    self.client.delete_object().bucket(&self.bucket).key(key).bypass_governance_retention(true);
                if let Some(version) = head.version_id() {
                    request = request.version_id(version);
                }
                request.send().await.map_err(|e| map_error(key, e, Op::Delete))?;
            }
            GovernanceBypass::Shorten(retention) => {
                let lock = ObjectLockRetention::builder()
                    .mode(retention_mode(retention.mode))
                    .retain_until_date(to_datetime(retention.retain_until))
                    .build();
                let mut request = self
                    .client
                    .put_object_retention()
                    .bucket(&self.bucket)
                    .key(key)
                    .retention(lock)
                    .bypass_governance_retention(true);
                if let Some(version) = head.version_id() {
                    request = request.version_id(version);
                }
                request.send().await.map_err(|e| map_error(key, e, Op::Write))?;
            }
        }
        Ok(())
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        validate_key(key)?;
        let head = self.head_raw(key).await?;
        let status = if on { ObjectLockLegalHoldStatus::On } else { ObjectLockLegalHoldStatus::Off };
        let mut request = self
            .client
            .put_object_legal_hold()
            .bucket(&self.bucket)
            .key(key)
            .legal_hold(ObjectLockLegalHold::builder().status(status).build());
        if let Some(version) = head.version_id() {
            request = request.version_id(version);
        }
        request.send().await.map_err(|e| map_error(key, e, Op::Write))?;
        Ok(())
    }

    async fn set_tags(&self, key: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
        validate_key(key)?;
        let head = self.head_raw(key).await?;
        let invalid = |e: aws_sdk_s3::error::BuildError| {
            StoreError::new(StoreErrorKind::InvalidInput, key, "invalid object tags").with_source(e)
        };
        let tag_set = tags
            .iter()
            .map(|(name, value)| Tag::builder().key(name).value(value).build().map_err(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let tagging = Tagging::builder().set_tag_set(Some(tag_set)).build().map_err(invalid)?;
        let mut request = self.client.put_object_tagging().bucket(&self.bucket).key(key).tagging(tagging);
        if let Some(version) = head.version_id() {
            request = request.version_id(version);
        }
        request.send().await.map_err(|e| map_error(key, e, Op::Write))?;
        Ok(())
    }

    async fn tags(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
        validate_key(key)?;
        let output = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_error(key, e, Op::Read))?;
        Ok(output.tag_set().iter().map(|tag| (tag.key().to_owned(), tag.value().to_owned())).collect())
    }
}

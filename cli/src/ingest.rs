//! `vera worker --ingest`: the ingest worker's flags and wiring.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use vera_store::ObjectStore;
use vera_worker::ingest::{CreatedAtFrom, DEFAULT_KEY_PATTERN, IngestSettings, IngestWorker, LandingSettings};

use crate::common::StoreArgs;

/// Flags of an ingest worker (with `--ingest`).
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Consume the `ingest` topic (files pushed by upstream systems as `file_arrived`
    /// events or S3 event notifications) instead of pack tasks. Needs no source database.
    #[arg(long)]
    pub ingest: bool,
    /// The longest an ingested file waits in the worker before it is sealed (into a
    /// staging segment if its address has fewer files than a final generation needs).
    /// Longer: fewer, fuller segments; shorter: files readable sooner.
    #[arg(long = "ingest-linger-ms", env = "VERA_INGEST_LINGER_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub linger_ms: u64,
    /// Events claimed per bus request.
    #[arg(long, env = "VERA_INGEST_CLAIM_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub ingest_claim_batch: u64,
    /// Files held at most before everything held is sealed.
    #[arg(long, env = "VERA_INGEST_MAX_HELD_FILES", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub ingest_max_held_files: u64,
    /// Staged objects and notified keys must lie under this prefix of the landing store;
    /// events naming any other key are dead-lettered.
    #[arg(long, env = "VERA_LANDING_PREFIX", default_value = "landing/")]
    pub landing_prefix: String,
    /// The landing bucket, when it is not the archive bucket (S3 only). Notifications
    /// from any other bucket are dead-lettered.
    #[arg(long, env = "VERA_LANDING_BUCKET")]
    pub landing_bucket: Option<String>,
    /// A regular expression matched against a notified key after the landing prefix,
    /// whole. Its group `uid` is the uid; its group `created_at`, if any, the creation
    /// time (RFC 3339, microseconds, or a date YYYY-MM-DD). Example:
    /// `(?P<created_at>\d{4}-\d{2}-\d{2})/(?P<uid>[^/]+)`.
    #[arg(long, env = "VERA_LANDING_KEY_PATTERN", default_value = DEFAULT_KEY_PATTERN)]
    pub landing_key_pattern: String,
    /// Where a notified object's created_at comes from when the key pattern has no
    /// `created_at` group: `metadata:NAME` (user metadata, x-amz-meta-NAME on S3) or
    /// `event-time` (when the object was written, from the notification). With such a
    /// group the key always decides.
    #[arg(long, env = "VERA_LANDING_CREATED_AT", default_value = "metadata:created-at")]
    pub landing_created_at: String,
    /// Delete a staged or notified object from the landing store once its file is
    /// durable and verified in a segment, with an EXPIRE audit event.
    #[arg(long, env = "VERA_EXPIRE_STAGED")]
    pub expire_staged: bool,
}

impl IngestArgs {
    pub fn settings(&self) -> anyhow::Result<IngestSettings> {
        let key_pattern = regex::Regex::new(&self.landing_key_pattern)
            .map_err(|e| anyhow::anyhow!("--landing-key-pattern is not a regular expression: {e}"))?;
        let has_group = key_pattern.capture_names().flatten().any(|name| name == "created_at");
        let created_at = if has_group { CreatedAtFrom::Key } else { parse_created_at_from(&self.landing_created_at)? };
        let held = usize::try_from(self.ingest_max_held_files)?;
        Ok(IngestSettings {
            linger: Duration::from_millis(self.linger_ms),
            claim_batch: usize::try_from(self.ingest_claim_batch)?.min(held),
            max_held_files: held,
            landing: LandingSettings {
                prefix: self.landing_prefix.clone(),
                bucket: self.landing_bucket.clone(),
                key_pattern,
                created_at,
            },
            expire_staged: self.expire_staged,
            ..IngestSettings::default()
        })
    }

    /// The bus URL an ingest worker opens: a RabbitMQ consumer may hold as many unacked
    /// events as it claims in a linger, so its prefetch is raised unless set.
    pub fn bus_url(&self, url: Option<&str>) -> Option<String> {
        let url = url?;
        if url.starts_with("amqp") && !url.contains("prefetch=") {
            let separator = if url.contains('?') { '&' } else { '?' };
            let prefetch = self.ingest_max_held_files.min(u64::from(u16::MAX));
            return Some(format!("{url}{separator}prefetch={prefetch}"));
        }
        Some(url.to_owned())
    }
}

fn parse_created_at_from(text: &str) -> anyhow::Result<CreatedAtFrom> {
    match text.split_once(':') {
        Some(("metadata", name)) if !name.is_empty() => Ok(CreatedAtFrom::Metadata(name.to_ascii_lowercase())),
        None if text == "event-time" => Ok(CreatedAtFrom::EventTime),
        _ => anyhow::bail!("--landing-created-at {text:?}: give metadata:NAME or event-time"),
    }
}

/// The store staged objects are read from: the landing bucket, or the archive store.
async fn landing_store(
    store: &StoreArgs,
    args: &IngestArgs,
    archive: &Arc<dyn ObjectStore>,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match (&args.landing_bucket, &store.s3_bucket) {
        (Some(landing), Some(archive_bucket)) if landing != archive_bucket => landing_s3(store, landing).await,
        (Some(_), None) => anyhow::bail!("--landing-bucket needs an S3 archive (--s3-bucket)"),
        _ => Ok(Arc::clone(archive)),
    }
}

#[cfg(feature = "s3")]
async fn landing_s3(store: &StoreArgs, bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(Arc::new(store.s3_client(bucket).await?))
}

#[cfg(not(feature = "s3"))]
async fn landing_s3(_store: &StoreArgs, _bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    anyhow::bail!("this vera was built without S3 support; rebuild with `cargo build -p vera --features s3`")
}

/// Runs an ingest worker until Ctrl-C (or idle, with `exit_when_idle_ms`).
pub async fn run(args: crate::run::WorkerCommandArgs) -> anyhow::Result<()> {
    let ingest = args.ingest.settings()?;
    let worker = args.worker.settings()?;
    ingest.validate(&worker).map_err(|e| anyhow::anyhow!(e))?;
    let mut store_args = args.store.clone();
    store_args.bus = args.ingest.bus_url(args.store.bus.as_deref());
    let store = store_args.object_store().await?;
    let routing = store_args.routing(store.as_ref()).await?;
    let bus = store_args.bus(args.worker.max_attempts).await?;
    let landing = landing_store(&store_args, &args.ingest, &store).await?;
    let shutdown = crate::run::start_worker_services(&args, &bus, vera_bus::topics::INGEST)?;
    let runner = IngestWorker {
        worker_id: args.id.clone(),
        bus: Arc::clone(&bus),
        shards: store_args.shards(store),
        landing,
        routing,
        settings: Arc::new(worker),
        ingest,
    };
    let stats = runner.run(shutdown).await;
    crate::run::close_bus(bus.as_ref()).await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_sources_parse_and_bad_ones_are_named() {
        assert_eq!(parse_created_at_from("metadata:Created-At").unwrap(), CreatedAtFrom::Metadata("created-at".into()));
        assert_eq!(parse_created_at_from("event-time").unwrap(), CreatedAtFrom::EventTime);
        assert!(parse_created_at_from("metadata:").is_err());
        assert!(parse_created_at_from("key").unwrap_err().to_string().contains("metadata:NAME"));
    }
}

//! Shared options and component wiring for every subcommand.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use vera_bus::Bus;
use vera_protocol::compress::{CompressionMode, CompressionPolicy};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_source::sqlite::SqliteSource;
use vera_source::{PayloadKind, SourceMapping, Visibility};
use vera_store::counting::CountingStore;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{LockMode, ObjectStore};
use vera_worker::settings::StagingSettings;
use vera_worker::{RetentionPolicy, WorkerSettings};

/// `--n-bits` when a command writes the first routing table and none is given.
pub const DEFAULT_N_BITS: u8 = 2;

/// Where the embedded deployment keeps its state.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory holding the local WORM store (`store/`) and the embedded bus (`bus.sqlite`).
    #[arg(long, env = "VERA_DATA_DIR", default_value = "vera-data")]
    pub data_dir: PathBuf,
    /// Hash bits of routing epoch 1 (2^n addresses per day), for a command that writes the
    /// store's first routing table (`vera routing init`, `setup-bucket`, the first producer
    /// or demo; default 2, and for the demo the table `vera plan` proposes for its corpus).
    /// Every other time the table in the store decides, and a value given here that differs
    /// from its latest epoch is refused.
    #[arg(long, env = "VERA_N_BITS")]
    pub n_bits: Option<u8>,
    /// Keep segments in this S3 bucket instead of the local store (a build with
    /// `--features s3`). Credentials come from the standard AWS chain, never from flags.
    #[arg(long, env = "VERA_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 endpoint for MinIO, Ceph or moto, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "VERA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "VERA_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style addressing (needed by MinIO and most non-AWS servers).
    #[arg(long, env = "VERA_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// For S3 servers that answer 500 to a suffix range longer than the object (s3s-fs):
    /// retry such index reads as HEAD + range GET. Not needed for AWS, MinIO or moto.
    #[arg(long, env = "VERA_S3_SUFFIX_FALLBACK")]
    pub s3_suffix_fallback: bool,
    /// Take the S3 credentials from this Vault/OpenBao KV v2 secret, `MOUNT/PATH` (e.g.
    /// `secret/vera/s3`, members access_key_id, secret_access_key, optional session_token)
    /// instead of the AWS chain. VAULT_ADDR and VAULT_TOKEN (or VAULT_TOKEN_FILE) locate
    /// Vault. Needs the `vault` feature.
    #[arg(long, env = "VERA_S3_VAULT_SECRET")]
    pub s3_vault_secret: Option<String>,
    /// The message bus. Unset: the embedded SQLite queue in --data-dir. Otherwise
    /// `amqp://USER:PASS@HOST:5672/%2f` (RabbitMQ), `sqs://REGION[?endpoint=URL]` or
    /// `kafka://HOST:PORT[,HOST:PORT][?group=NAME]`; each takes `?prefix=` for queue names.
    /// Pass passwords through the VERA_BUS environment variable, not the command line.
    #[arg(long, env = "VERA_BUS", hide_env_values = true)]
    pub bus: Option<String>,
}

impl StoreArgs {
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn bus_path(&self) -> PathBuf {
        self.data_dir.join("bus.sqlite")
    }

    /// The routing table the flags would write first: epoch 1 with `--n-bits` (default 2).
    pub fn initial_routing(&self) -> anyhow::Result<RoutingTable> {
        let table = RoutingTable::single(RoutingEpoch::v1(self.n_bits.unwrap_or(DEFAULT_N_BITS))?);
        table.validate()?;
        Ok(table)
    }

    /// The routing table in the store, which every role routes by. Refused if the store
    /// holds none, or if `--n-bits` disagrees with it.
    pub async fn routing(&self, store: &dyn ObjectStore) -> anyhow::Result<RoutingTable> {
        match vera_store::routing_table::load(store).await? {
            Some(stored) => self.agree(stored),
            None => anyhow::bail!(
                "the store holds no routing table ({}); run `vera routing init` (or `vera setup-bucket`) first",
                vera_store::routing_table::routing_key(1)
            ),
        }
    }

    /// [`StoreArgs::routing`], writing the flags' table first if the store holds none
    /// (create-if-absent: of two racing writers, one wins and the other reads its table).
    pub async fn routing_or_init(&self, store: &dyn ObjectStore) -> anyhow::Result<RoutingTable> {
        let now = vera_store::Clock::now(&vera_store::SystemClock);
        let stored = vera_store::routing_table::init(store, &self.initial_routing()?, now, None).await;
        match stored {
            Ok(stored) => self.agree(stored),
            // Another table is there: say how the flag disagrees with it.
            Err(vera_store::routing_table::RoutingTableError::Different { .. }) => self.routing(store).await,
            Err(error) => Err(error.into()),
        }
    }

    fn agree(&self, stored: vera_store::routing_table::StoredRouting) -> anyhow::Result<RoutingTable> {
        let latest = stored.table.epochs.last().map(|entry| entry.epoch.n_bits);
        if let (Some(flag), Some(latest)) = (self.n_bits, latest)
            && flag != latest
        {
            anyhow::bail!(
                "--n-bits (or VERA_N_BITS) is {flag}, but the store's routing table ({}) routes new files with \
                 {latest}; leave the flag out, or add an epoch with `vera routing add-epoch`",
                vera_store::routing_table::routing_key(stored.version)
            );
        }
        Ok(stored.table)
    }

    pub fn local_store(&self) -> anyhow::Result<LocalStore> {
        std::fs::create_dir_all(&self.data_dir)?;
        Ok(LocalStore::open(self.store_dir())?)
    }

    pub fn counting_store(&self) -> anyhow::Result<Arc<CountingStore<LocalStore>>> {
        Ok(Arc::new(CountingStore::new(self.local_store()?)))
    }

    /// The configured object store: S3 when `--s3-bucket` is given, else the local one.
    pub async fn object_store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        match &self.s3_bucket {
            None => Ok(Arc::new(self.local_store()?)),
            Some(bucket) => self.s3_store(bucket).await,
        }
    }

    #[cfg(feature = "s3")]
    pub async fn s3_settings(&self, bucket: &str) -> vera_store_s3::S3Settings {
        vera_store_s3::S3Settings {
            region: self.s3_region.clone(),
            endpoint: self.s3_endpoint.clone(),
            force_path_style: self.s3_path_style,
            suffix_fallback: self.s3_suffix_fallback,
            ..vera_store_s3::S3Settings::new(bucket)
        }
    }

    #[cfg(feature = "s3")]
    async fn s3_store(&self, bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(self.s3_client(bucket).await?))
    }

    /// The S3 store for `bucket`, with credentials from Vault (`--s3-vault-secret`) or the
    /// AWS chain.
    #[cfg(feature = "s3")]
    pub async fn s3_client(&self, bucket: &str) -> anyhow::Result<vera_store_s3::S3Store> {
        let settings = self.s3_settings(bucket).await;
        match &self.s3_vault_secret {
            None => Ok(vera_store_s3::S3Store::connect(&settings).await),
            Some(secret) => s3_store_from_vault(&settings, secret).await,
        }
    }

    #[cfg(not(feature = "s3"))]
    async fn s3_store(&self, _bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        anyhow::bail!("this vera was built without S3 support; rebuild with `cargo build -p vera --features s3`")
    }

    pub fn shards(&self, store: Arc<dyn ObjectStore>) -> ShardStore {
        ShardStore::new(store)
    }

    /// The configured bus: `--bus`, or the embedded SQLite queue in `--data-dir`.
    pub async fn bus(&self, max_attempts: u32) -> anyhow::Result<Arc<dyn Bus>> {
        crate::bus::open(self.bus.as_deref(), self.bus_path(), max_attempts).await
    }
}

/// The source table and its column mapping.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// SQLite database holding the files to pack.
    #[arg(long, env = "VERA_SOURCE_DB")]
    pub source_db: Option<PathBuf>,
    /// PostgreSQL or MySQL/MariaDB source instead of SQLite: `postgres://user@host/db` or
    /// `mysql://user@host/db`. Put passwords in PGPASSWORD-style environment, not here.
    #[arg(long, env = "VERA_SOURCE_URL", conflicts_with = "source_db")]
    pub source_url: Option<String>,
    /// Name of this source (tasks carry it; the watermark object is per source).
    #[arg(long, default_value = "demo")]
    pub source_name: String,
    #[arg(long, default_value = "files")]
    pub table: String,
    #[arg(long, default_value = "uid")]
    pub uid_column: String,
    /// Column with RFC 3339 text or integer microseconds since the Unix epoch.
    #[arg(long, default_value = "created_at")]
    pub created_at_column: String,
    #[arg(long, default_value = "payload")]
    pub payload_column: String,
    /// The payload column holds file paths instead of bytes; relative paths resolve here.
    #[arg(long)]
    pub payload_paths_under: Option<PathBuf>,
    /// Column with the MIME type; sniffed from magic bytes when empty.
    #[arg(long, default_value = "content_type")]
    pub content_type_column: String,
    /// Monotonically increasing column the producer scans by.
    #[arg(long, default_value = "id")]
    pub watermark_column: String,
    /// How VERA knows that no row can still commit below where it has read, so that a
    /// row whose transaction commits late is never passed over. `auto`: SQLite is read
    /// in watermark order (one writer at a time); PostgreSQL by `transaction-id`;
    /// MySQL/MariaDB by `insert-time`. `watermark-order` on PostgreSQL or MySQL is only
    /// for a table nobody writes to while VERA reads it.
    #[arg(long, env = "VERA_SOURCE_VISIBILITY", value_enum, default_value_t = VisibilityChoice::Auto)]
    pub visibility: VisibilityChoice,
    /// The visibility column: an `xid8 DEFAULT pg_current_xact_id()` for transaction-id
    /// (default `vera_xid`), a `TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6)` for
    /// insert-time (default `vera_inserted_at`). It must lead an index. `vera` checks
    /// it at start and names what is missing.
    #[arg(long, env = "VERA_SOURCE_VISIBILITY_COLUMN")]
    pub visibility_column: Option<String>,
    /// insert-time only: plan rows only this many milliseconds behind the server's
    /// clock (open transactions below that are waited for). It must cover the longest
    /// an INSERT waits (on a table lock, say) between its start, which sets its row's
    /// time, and writing the row.
    #[arg(long, env = "VERA_SOURCE_SETTLE_MS", default_value_t = 1000)]
    pub settle_ms: u64,
}

/// `--visibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VisibilityChoice {
    Auto,
    WatermarkOrder,
    TransactionId,
    InsertTime,
}

/// Which kind of database a source URL or path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Sqlite,
    Postgres,
    MySql,
}

impl SourceArgs {
    pub fn kind(&self) -> anyhow::Result<SourceKind> {
        match &self.source_url {
            None => Ok(SourceKind::Sqlite),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(SourceKind::Postgres),
            Some(url) if url.starts_with("mysql://") || url.starts_with("mariadb://") => Ok(SourceKind::MySql),
            Some(_) => anyhow::bail!("--source-url must start with postgres:// or mysql://"),
        }
    }

    /// The visibility `--visibility` names for this kind of source.
    pub fn visibility(&self, kind: SourceKind) -> anyhow::Result<Visibility> {
        let choice = match (self.visibility, kind) {
            (VisibilityChoice::Auto, SourceKind::Sqlite) => VisibilityChoice::WatermarkOrder,
            (VisibilityChoice::Auto, SourceKind::Postgres) => VisibilityChoice::TransactionId,
            (VisibilityChoice::Auto, SourceKind::MySql) => VisibilityChoice::InsertTime,
            (choice, _) => choice,
        };
        let column = |default: &str| self.visibility_column.clone().unwrap_or_else(|| default.to_owned());
        Ok(match (choice, kind) {
            (VisibilityChoice::WatermarkOrder, _) => {
                if kind != SourceKind::Sqlite {
                    tracing::warn!(
                        "--visibility watermark-order: a row whose transaction commits after a later row's is \
                         missed; only for a table nobody writes to while VERA reads it"
                    );
                }
                Visibility::WatermarkOrder
            }
            (VisibilityChoice::TransactionId, SourceKind::Postgres) => {
                Visibility::TransactionId { column: column("vera_xid") }
            }
            (VisibilityChoice::InsertTime, SourceKind::MySql) => {
                Visibility::InsertTime { column: column("vera_inserted_at"), settle_millis: self.settle_ms }
            }
            (choice, kind) => anyhow::bail!(
                "--visibility {} does not apply to a {kind:?} source (SQLite: watermark-order; PostgreSQL: \
                 transaction-id; MySQL/MariaDB: insert-time)",
                clap::ValueEnum::to_possible_value(&choice).map_or_else(String::new, |v| v.get_name().to_owned())
            ),
        })
    }

    pub fn mapping(&self) -> SourceMapping {
        SourceMapping {
            table: self.table.clone(),
            uid_column: self.uid_column.clone(),
            created_at_column: self.created_at_column.clone(),
            payload_column: self.payload_column.clone(),
            payload: match &self.payload_paths_under {
                Some(dir) => PayloadKind::Path { base_dir: Some(dir.clone()) },
                None => PayloadKind::Inline,
            },
            content_type_column: (!self.content_type_column.is_empty()).then(|| self.content_type_column.clone()),
            watermark_column: self.watermark_column.clone(),
            visibility: Visibility::WatermarkOrder,
        }
    }

    /// [`SourceArgs::mapping`] with the visibility for the configured source.
    pub fn full_mapping(&self) -> anyhow::Result<SourceMapping> {
        Ok(SourceMapping { visibility: self.visibility(self.kind()?)?, ..self.mapping() })
    }

    pub async fn open(&self, default_db: Option<PathBuf>) -> anyhow::Result<Arc<dyn vera_source::Source>> {
        let mapping = self.full_mapping()?;
        if let Some(url) = &self.source_url {
            let source: Arc<dyn vera_source::Source> = match self.kind()? {
                SourceKind::Postgres => {
                    Arc::new(vera_source::postgres::PostgresSource::connect(&self.source_name, url, mapping).await?)
                }
                SourceKind::MySql => {
                    let url = url.replacen("mariadb://", "mysql://", 1);
                    Arc::new(vera_source::mysql::MySqlSource::connect(&self.source_name, &url, mapping).await?)
                }
                SourceKind::Sqlite => anyhow::bail!("--source-url must start with postgres:// or mysql://"),
            };
            return Ok(source);
        }
        let path = self
            .source_db
            .clone()
            .or(default_db)
            .ok_or_else(|| anyhow::anyhow!("--source-db is required (or set VERA_SOURCE_DB)"))?;
        if !path.exists() {
            anyhow::bail!("source database {} does not exist", path.display());
        }
        Ok(Arc::new(SqliteSource::open(&self.source_name, &path, mapping).await?))
    }
}

/// Worker tuning.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Largest file accepted; bigger rows are rejected and reported.
    #[arg(long, default_value_t = 512 * 1024)]
    pub max_file_bytes: u64,
    /// `ratio` (zstd + dictionaries), `speed` (lz4) or `off`.
    #[arg(long, default_value = "ratio", value_parser = parse_mode)]
    pub compression: CompressionMode,
    /// Object Lock retention in days past each segment's day; 0 writes without a lock.
    #[arg(long, default_value_t = 2555)]
    pub retain_days: u32,
    /// Lock mode for sealed segments.
    #[arg(long, default_value = "compliance", value_parser = parse_lock_mode)]
    pub lock_mode: LockMode,
    /// Seconds a claimed task stays invisible to other workers (extended while working).
    #[arg(long, default_value_t = 120)]
    pub visibility_timeout_seconds: u64,
    /// Deliveries before a task is dead-lettered.
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u32,
    /// A task's files at one address become a final generation at once from this many
    /// on; fewer go to a short-locked staging segment that `vera compact` merges once the
    /// time slice closes (docs/adr/0005). 0 writes every segment final.
    #[arg(long, env = "VERA_DIRECT_MIN_FILES", default_value_t = 1000)]
    pub direct_min_files: u64,
    /// Object Lock on staging segments, in days from their write (never past the final
    /// retention); `vera compact` extends it while a segment is not merged.
    #[arg(long, env = "VERA_STAGING_RETENTION_DAYS", default_value_t = 7)]
    pub staging_retention_days: u32,
}

fn parse_mode(text: &str) -> Result<CompressionMode, String> {
    match text {
        "ratio" => Ok(CompressionMode::Ratio),
        "speed" => Ok(CompressionMode::Speed),
        "off" => Ok(CompressionMode::Off),
        other => Err(format!("unknown compression mode {other:?} (ratio, speed, off)")),
    }
}

pub fn parse_lock_mode(text: &str) -> Result<LockMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "compliance" => Ok(LockMode::Compliance),
        "governance" => Ok(LockMode::Governance),
        other => Err(format!("unknown lock mode {other:?} (compliance, governance)")),
    }
}

impl WorkerArgs {
    pub fn settings(&self) -> anyhow::Result<WorkerSettings> {
        let settings = WorkerSettings {
            visibility_timeout_seconds: self.visibility_timeout_seconds,
            max_file_bytes: self.max_file_bytes,
            compression: CompressionPolicy { mode: self.compression, ..CompressionPolicy::default() },
            retention: (self.retain_days > 0)
                .then_some(RetentionPolicy { mode: self.lock_mode, retain_days: self.retain_days }),
            staging: StagingSettings {
                direct_min_files: self.direct_min_files,
                retention_days: self.staging_retention_days,
                ..StagingSettings::default()
            },
            ..WorkerSettings::default()
        };
        settings.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(settings)
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level. sqlx's "slow statement"
/// warnings are muted by default: slot reads stream for seconds by design.
pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default_level},sqlx::query=error")));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(all(feature = "s3", feature = "vault"))]
async fn s3_store_from_vault(
    settings: &vera_store_s3::S3Settings,
    secret: &str,
) -> anyhow::Result<vera_store_s3::S3Store> {
    use anyhow::Context;
    use vera_audit::vault::{Vault, VaultConfig};
    let (mount, path) = secret.split_once('/').context("--s3-vault-secret is MOUNT/PATH, e.g. secret/vera/s3")?;
    let vault = Vault::connect(&VaultConfig::from_env()?)?;
    let credentials = vault.s3_credentials(mount, path).await?;
    tracing::info!(secret, access_key_id = %credentials.access_key_id, "S3 credentials from Vault");
    Ok(vera_store_s3::S3Store::with_credentials(
        settings,
        &credentials.access_key_id,
        credentials.secret_access_key.expose(),
        credentials.session_token.as_ref().map(|token| token.expose().to_owned()),
        "vault-kv2",
    ))
}

#[cfg(all(feature = "s3", not(feature = "vault")))]
async fn s3_store_from_vault(
    _settings: &vera_store_s3::S3Settings,
    _secret: &str,
) -> anyhow::Result<vera_store_s3::S3Store> {
    anyhow::bail!("--s3-vault-secret needs a vera built with `--features vault`")
}

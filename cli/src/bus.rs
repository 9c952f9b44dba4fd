//! `--bus URL`: which message bus a process talks to.
//!
//! | URL                                               | Bus                                    |
//! |---------------------------------------------------|----------------------------------------|
//! | unset                                             | embedded SQLite queue in `--data-dir`  |
//! | `sqlite:PATH`                                     | embedded SQLite queue at PATH          |
//! | `amqp://USER:PASS@HOST:5672/VHOST` (or `amqps://`) | RabbitMQ (`--features amqp`); `?vault_role=MOUNT/ROLE` instead of USER:PASS takes a dynamic user from Vault (`--features vault`) |
//! | `sqs://REGION[?endpoint=URL]`                     | Amazon SQS or compatible (`--features sqs`) |
//! | `kafka://HOST:PORT[,HOST:PORT…][?group=NAME&partitions=N&replication=N]` | Kafka (`--features kafka`) |
//!
//! Every real bus also takes `prefix=` (queue and topic name prefix). Unknown parameters
//! are refused, so a typo cannot silently fall back to a default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use vera_bus::Bus;
use vera_bus::sqlite::SqliteBus;

/// A parsed `--bus` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusUrl {
    Sqlite(PathBuf),
    Amqp { uri: String, params: BTreeMap<String, String> },
    Sqs { region: String, params: BTreeMap<String, String> },
    Kafka { brokers: String, params: BTreeMap<String, String> },
}

fn split_query<'a>(
    rest: &'a str,
    allowed: &[&str],
    scheme: &str,
) -> anyhow::Result<(&'a str, BTreeMap<String, String>)> {
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').with_context(|| format!("--bus: `{pair}` is not key=value"))?;
        if !allowed.contains(&key) {
            bail!("--bus: {scheme} URLs take {}; `{key}` is not one of them", allowed.join(", "));
        }
        params.insert(key.to_owned(), value.to_owned());
    }
    Ok((base, params))
}

impl BusUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                bail!("--bus sqlite:PATH needs a path");
            }
            return Ok(BusUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("amqp://") || url.starts_with("amqps://") {
            let (base, params) =
                split_query(url, &["prefix", "prefetch", "timeout_ms", "heartbeat", "vault_role"], "amqp")?;
            return Ok(BusUrl::Amqp { uri: base.to_owned(), params });
        }
        if let Some(rest) = url.strip_prefix("sqs://") {
            let (region, params) = split_query(rest, &["prefix", "endpoint", "wait_seconds"], "sqs")?;
            if region.is_empty() {
                bail!("--bus sqs://REGION needs a region, e.g. sqs://eu-west-1");
            }
            return Ok(BusUrl::Sqs { region: region.to_owned(), params });
        }
        if let Some(rest) = url.strip_prefix("kafka://") {
            let (brokers, params) = split_query(rest, &["prefix", "group", "partitions", "replication"], "kafka")?;
            if brokers.is_empty() {
                bail!("--bus kafka://HOST:PORT needs at least one broker");
            }
            return Ok(BusUrl::Kafka { brokers: brokers.to_owned(), params });
        }
        bail!(
            "--bus {}: unknown bus; use sqlite:PATH, amqp://…, sqs://REGION or kafka://HOST:PORT",
            vera_bus::redact_url(url)
        )
    }
}

#[cfg(any(feature = "amqp", feature = "sqs", feature = "kafka"))]
fn number<T: std::str::FromStr>(params: &BTreeMap<String, String>, key: &str) -> anyhow::Result<Option<T>> {
    params
        .get(key)
        .map(|value| value.parse::<T>().map_err(|_| anyhow::anyhow!("--bus: {key}={value} is not a number")))
        .transpose()
}

/// Opens the bus `url` names (or the embedded one at `default_sqlite`).
pub async fn open(url: Option<&str>, default_sqlite: PathBuf, max_attempts: u32) -> anyhow::Result<Arc<dyn Bus>> {
    let parsed = match url {
        None => BusUrl::Sqlite(default_sqlite),
        Some(url) => BusUrl::parse(url)?,
    };
    match parsed {
        BusUrl::Sqlite(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            Ok(Arc::new(SqliteBus::open(&path, max_attempts).await?))
        }
        BusUrl::Amqp { uri, params } => open_amqp(uri, params, max_attempts).await,
        BusUrl::Sqs { region, params } => open_sqs(region, params, max_attempts).await,
        BusUrl::Kafka { brokers, params } => open_kafka(brokers, params, max_attempts).await,
    }
}

#[cfg(feature = "amqp")]
async fn open_amqp(uri: String, params: BTreeMap<String, String>, max_attempts: u32) -> anyhow::Result<Arc<dyn Bus>> {
    let uri = match params.get("vault_role") {
        Some(role) => with_vault_credentials(&uri, role).await?,
        None => uri,
    };
    // The heartbeat is AMQP's own: the client proposes it in the URI and lapin negotiates
    // it. It is how the broker notices a dead connection and takes back what it had sent
    // that connection's consumers.
    let uri = match number::<u16>(&params, "heartbeat")? {
        Some(0) => bail!("--bus: heartbeat=0 turns dead-connection detection off; give seconds, e.g. 15"),
        Some(seconds) => format!("{uri}?heartbeat={seconds}"),
        None => uri,
    };
    let mut settings = vera_bus_amqp::AmqpSettings { max_attempts, ..vera_bus_amqp::AmqpSettings::new(uri) };
    if let Some(prefix) = params.get("prefix") {
        settings.prefix = prefix.clone();
    }
    if let Some(prefetch) = number(&params, "prefetch")? {
        settings.prefetch = prefetch;
    }
    if let Some(timeout_ms) = number::<u64>(&params, "timeout_ms")? {
        if timeout_ms == 0 {
            bail!("--bus: timeout_ms=0 would fail every call; give the longest a broker call may take, e.g. 30000");
        }
        settings.operation_timeout = std::time::Duration::from_millis(timeout_ms);
    }
    Ok(Arc::new(vera_bus_amqp::AmqpBus::connect(settings).await?))
}

#[cfg(not(feature = "amqp"))]
async fn open_amqp(_: String, _: BTreeMap<String, String>, _: u32) -> anyhow::Result<Arc<dyn Bus>> {
    bail!("this vera was built without RabbitMQ support; rebuild with `cargo build -p vera --features amqp`")
}

#[cfg(feature = "sqs")]
async fn open_sqs(region: String, params: BTreeMap<String, String>, max_attempts: u32) -> anyhow::Result<Arc<dyn Bus>> {
    let mut settings = vera_bus_sqs::SqsSettings {
        region,
        endpoint: params.get("endpoint").cloned(),
        max_attempts,
        ..vera_bus_sqs::SqsSettings::default()
    };
    if let Some(prefix) = params.get("prefix") {
        settings.prefix = prefix.clone();
    }
    if let Some(wait) = number(&params, "wait_seconds")? {
        settings.wait_seconds = wait;
    }
    Ok(Arc::new(vera_bus_sqs::SqsBus::connect(settings).await?))
}

#[cfg(not(feature = "sqs"))]
async fn open_sqs(_: String, _: BTreeMap<String, String>, _: u32) -> anyhow::Result<Arc<dyn Bus>> {
    bail!("this vera was built without SQS support; rebuild with `cargo build -p vera --features sqs`")
}

#[cfg(feature = "kafka")]
pub fn kafka_settings(
    brokers: String,
    params: &BTreeMap<String, String>,
    max_attempts: u32,
) -> anyhow::Result<vera_bus_kafka::KafkaSettings> {
    let mut settings = vera_bus_kafka::KafkaSettings { max_attempts, ..vera_bus_kafka::KafkaSettings::new(brokers) };
    if let Some(prefix) = params.get("prefix") {
        settings.prefix = prefix.clone();
    }
    if let Some(group) = params.get("group") {
        settings.group = group.clone();
    }
    if let Some(partitions) = number(params, "partitions")? {
        settings.partitions = partitions;
    }
    if let Some(replication) = number(params, "replication")? {
        settings.replication = replication;
    }
    Ok(settings)
}

#[cfg(feature = "kafka")]
async fn open_kafka(
    brokers: String,
    params: BTreeMap<String, String>,
    max_attempts: u32,
) -> anyhow::Result<Arc<dyn Bus>> {
    let settings = kafka_settings(brokers, &params, max_attempts)?;
    Ok(Arc::new(vera_bus_kafka::KafkaBus::connect(settings).await?))
}

#[cfg(not(feature = "kafka"))]
async fn open_kafka(_: String, _: BTreeMap<String, String>, _: u32) -> anyhow::Result<Arc<dyn Bus>> {
    bail!("this vera was built without Kafka support; rebuild with `cargo build -p vera --features kafka`")
}

/// `?vault_role=MOUNT/ROLE`: a dynamic RabbitMQ user from Vault/OpenBao's RabbitMQ secrets
/// engine, spliced into `uri` (which must carry no credentials of its own). Its lease and
/// the Vault token are renewed in the background; when the lease can no longer be renewed
/// (max TTL reached, revoked) the process exits with status 75 so its supervisor restarts
/// it with a fresh user, rather than run on with a connection about to be cut.
#[cfg(all(feature = "amqp", feature = "vault"))]
async fn with_vault_credentials(uri: &str, role: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use vera_audit::vault::{Vault, VaultConfig, spawn_lease_keeper, spawn_token_keeper};
    let (scheme, rest) = uri.split_once("://").context("amqp URL without a scheme")?;
    let authority = rest.split_once('/').map_or(rest, |(authority, _)| authority);
    if authority.contains('@') {
        bail!("--bus: with vault_role the URL must not carry credentials of its own");
    }
    let (mount, role) = role.split_once('/').context("vault_role is MOUNT/ROLE, e.g. rabbitmq/vera")?;
    let vault = Vault::connect(&VaultConfig::from_env()?)?;
    let credentials = vault.rabbitmq_credentials(mount, role).await?;
    tracing::info!(user = %credentials.username, lease_seconds = credentials.lease.duration.as_secs(), "RabbitMQ credentials from Vault");
    let shutdown = tokio_util::sync::CancellationToken::new();
    spawn_token_keeper(vault.clone(), std::time::Duration::from_secs(60), shutdown.clone());
    spawn_lease_keeper(vault, credentials.lease.clone(), shutdown, |error| {
        tracing::error!(%error, "the RabbitMQ lease can no longer be renewed; exiting so a restart fetches a new user");
        std::process::exit(75);
    });
    Ok(format!("{scheme}://{}@{rest}", credentials.userinfo().expose()))
}

#[cfg(all(feature = "amqp", not(feature = "vault")))]
async fn with_vault_credentials(_uri: &str, _role: &str) -> anyhow::Result<String> {
    bail!("--bus ...?vault_role= needs a vera built with `--features vault`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_typos_are_refused() {
        assert_eq!(BusUrl::parse("sqlite:/tmp/b.sqlite").unwrap(), BusUrl::Sqlite("/tmp/b.sqlite".into()));
        match BusUrl::parse("sqs://eu-west-1?endpoint=http://127.0.0.1:5055&prefix=x-").unwrap() {
            BusUrl::Sqs { region, params } => {
                assert_eq!(region, "eu-west-1");
                assert_eq!(params["endpoint"], "http://127.0.0.1:5055");
            }
            other => panic!("{other:?}"),
        }
        match BusUrl::parse("kafka://a:9092,b:9092?group=g").unwrap() {
            BusUrl::Kafka { brokers, params } => {
                assert_eq!((brokers.as_str(), params["group"].as_str()), ("a:9092,b:9092", "g"))
            }
            other => panic!("{other:?}"),
        }
        let typo = BusUrl::parse("kafka://a:9092?gruop=g").unwrap_err().to_string();
        assert!(typo.contains("gruop"), "{typo}");
        let unknown = BusUrl::parse("nats://u:secret@h").unwrap_err().to_string();
        assert!(unknown.contains("unknown bus") && !unknown.contains("secret"), "{unknown}");
        assert!(BusUrl::parse("sqs://").is_err());
        match BusUrl::parse("amqp://h:5672/%2f?prefetch=8&timeout_ms=5000&heartbeat=15").unwrap() {
            BusUrl::Amqp { uri, params } => {
                assert_eq!(uri, "amqp://h:5672/%2f");
                assert_eq!((params["prefetch"].as_str(), params["timeout_ms"].as_str()), ("8", "5000"));
                assert_eq!(params["heartbeat"], "15");
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg(feature = "amqp")]
    #[tokio::test]
    async fn a_zero_or_unparsable_amqp_timeout_or_heartbeat_is_refused_before_connecting() {
        let sqlite = std::path::PathBuf::from("unused.sqlite");
        // Port 1: nothing listens, so reaching the connect step would fail differently.
        for (url, expected) in [
            ("amqp://127.0.0.1:1/%2f?timeout_ms=0", "timeout_ms=0"),
            ("amqp://127.0.0.1:1/%2f?timeout_ms=soon", "not a number"),
            ("amqp://127.0.0.1:1/%2f?heartbeat=0", "heartbeat=0"),
            ("amqp://127.0.0.1:1/%2f?heartbeat=-1", "not a number"),
        ] {
            let error = open(Some(url), sqlite.clone(), 5).await.err().expect("refused").to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }
}

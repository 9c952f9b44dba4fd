//! Secrets from Vault or OpenBao, through `vaultrs`.
//!
//! * S3 credentials: KV v2 (`secret/vera/s3` by default: `access_key_id`,
//!   `secret_access_key`, optional `session_token`).
//! * RabbitMQ credentials: the RabbitMQ secrets engine, as dynamic users with a lease;
//!   [`LeaseKeeper`] renews the lease at half its duration.
//! * Checkpoint signing: [`TransitSigner`] signs with an `ed25519` Transit key, so the key
//!   never leaves Vault. Each Transit key version is its own verifier key; rotating
//!   (`transit/keys/<name>/rotate`) adds one, and [`TransitSigner::verifier_keys`] lists
//!   them all so every old checkpoint stays verifiable.
//! * The token comes from `VAULT_TOKEN` or a token file (a Kubernetes secret mount),
//!   never from a config file, and [`TokenKeeper`] renews it before it expires.
//!
//! Secrets are held in [`Secret`], whose `Debug` prints `<redacted>`; nothing here logs
//! a secret value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustify_derive::Endpoint;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use crate::AuditError;
use crate::note::{NoteSignature, NoteSigner, verifier_key};

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn vault_error(what: &str, error: impl std::fmt::Display) -> AuditError {
    AuditError::Vault(format!("{what}: {error}"))
}

/// Where Vault is and how to log in.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub address: String,
    pub token: Secret,
}

impl VaultConfig {
    /// `VAULT_ADDR` (or `BAO_ADDR`), and the token from `VAULT_TOKEN` (or `BAO_TOKEN`),
    /// or from the file named by `VAULT_TOKEN_FILE`.
    pub fn from_env() -> Result<VaultConfig, AuditError> {
        let var = |names: &[&str]| names.iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()));
        let address = var(&["VAULT_ADDR", "BAO_ADDR"])
            .ok_or_else(|| AuditError::Config("set VAULT_ADDR to the Vault or OpenBao address".into()))?;
        let token = match var(&["VAULT_TOKEN", "BAO_TOKEN"]) {
            Some(token) => token,
            None => {
                let path = var(&["VAULT_TOKEN_FILE"]).ok_or_else(|| {
                    AuditError::Config("set VAULT_TOKEN or VAULT_TOKEN_FILE; tokens never go in config files".into())
                })?;
                std::fs::read_to_string(&path)
                    .map_err(|e| AuditError::Config(format!("cannot read VAULT_TOKEN_FILE {path}: {e}")))?
                    .trim()
                    .to_owned()
            }
        };
        Ok(VaultConfig { address, token: Secret(token) })
    }
}

/// A connected client.
#[derive(Clone)]
pub struct Vault {
    client: Arc<VaultClient>,
}

impl Vault {
    pub fn connect(config: &VaultConfig) -> Result<Vault, AuditError> {
        let settings = VaultClientSettingsBuilder::default()
            .address(&config.address)
            .token(config.token.expose())
            .build()
            .map_err(|e| vault_error("client settings", e))?;
        let client = VaultClient::new(settings).map_err(|e| vault_error("client", e))?;
        Ok(Vault { client: Arc::new(client) })
    }

    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    /// S3 credentials from a KV v2 secret.
    pub async fn s3_credentials(&self, mount: &str, path: &str) -> Result<S3Credentials, AuditError> {
        vaultrs::kv2::read::<S3Credentials>(self.client.as_ref(), mount, path)
            .await
            .map_err(|e| vault_error(&format!("reading S3 credentials at {mount}/{path}"), e))
    }

    /// A fresh RabbitMQ user from the RabbitMQ secrets engine, with its lease.
    pub async fn rabbitmq_credentials(&self, mount: &str, role: &str) -> Result<DynamicCredentials, AuditError> {
        let endpoint = RabbitCredsRequest { mount: mount.to_owned(), role: role.to_owned() };
        let result = vaultrs::api::exec_with_no_result(self.client.as_ref(), endpoint)
            .await
            .map_err(|e| vault_error(&format!("issuing RabbitMQ credentials from {mount}/creds/{role}"), e))?;
        let data = result.data.ok_or_else(|| AuditError::Vault("RabbitMQ credentials response had no data".into()))?;
        Ok(DynamicCredentials {
            username: data.username,
            password: data.password,
            lease: Lease {
                id: result.lease_id,
                duration: Duration::from_secs(u64::from(result.lease_duration)),
                renewable: result.renewable,
            },
        })
    }

    /// Renews a lease; returns its new duration.
    pub async fn renew_lease(&self, lease_id: &str, increment: Duration) -> Result<Duration, AuditError> {
        let endpoint = RenewLeaseRequest { lease_id: lease_id.to_owned(), increment: increment.as_secs() };
        let renewed = vaultrs::api::exec_with_no_result(self.client.as_ref(), endpoint)
            .await
            .map_err(|e| vault_error("renewing a lease", e))?;
        Ok(Duration::from_secs(renewed.lease_duration))
    }

    /// Renews this client's own token; returns its remaining TTL.
    pub async fn renew_token(&self) -> Result<Duration, AuditError> {
        let auth = vaultrs::token::renew_self(self.client.as_ref(), None)
            .await
            .map_err(|e| vault_error("renewing the token", e))?;
        Ok(Duration::from_secs(auth.lease_duration))
    }

    /// The token's remaining TTL and whether it can be renewed.
    pub async fn token_ttl(&self) -> Result<(Duration, bool), AuditError> {
        let info =
            vaultrs::token::lookup_self(self.client.as_ref()).await.map_err(|e| vault_error("token lookup", e))?;
        Ok((Duration::from_secs(info.ttl), info.renewable.unwrap_or(false)))
    }
}

/// S3 credentials as stored in KV v2.
#[derive(Debug, Clone, Deserialize)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    #[serde(default)]
    pub session_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: String,
    pub duration: Duration,
    pub renewable: bool,
}

/// A dynamic username and password with the lease that keeps them alive.
#[derive(Debug, Clone)]
pub struct DynamicCredentials {
    pub username: String,
    pub password: Secret,
    pub lease: Lease,
}

impl DynamicCredentials {
    /// An AMQP URL for `host:port` with these credentials (percent-encoded).
    pub fn amqp_url(&self, host: &str, port: u16, vhost: &str) -> Secret {
        Secret(format!("amqp://{}@{host}:{port}/{}", self.userinfo().expose(), percent_encode(vhost)))
    }

    /// `user:password`, percent-encoded for the userinfo part of a URL.
    pub fn userinfo(&self) -> Secret {
        Secret(format!("{}:{}", percent_encode(&self.username), percent_encode(self.password.expose())))
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct RabbitCreds {
    username: String,
    password: Secret,
}

#[derive(Debug, Endpoint)]
#[endpoint(path = "{self.mount}/creds/{self.role}", response = "vaultrs::api::EndpointResult<RabbitCreds>")]
struct RabbitCredsRequest {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    role: String,
}

#[derive(Debug, Deserialize)]
struct RenewedLease {
    lease_duration: u64,
}

#[derive(Debug, Serialize, Endpoint)]
#[endpoint(path = "sys/leases/renew", method = "PUT", response = "RenewedLease")]
struct RenewLeaseRequest {
    lease_id: String,
    increment: u64,
}

/// Keeps a lease alive: renews it at half its duration until `shutdown`. When renewal
/// fails for good (max TTL reached, lease revoked), it calls `on_expired` so the caller
/// can fetch new credentials.
pub fn spawn_lease_keeper(
    vault: Vault,
    lease: Lease,
    shutdown: CancellationToken,
    on_expired: impl Fn(AuditError) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut duration = lease.duration.max(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(duration / 2) => {}
            }
            match vault.renew_lease(&lease.id, lease.duration).await {
                Ok(renewed) if !renewed.is_zero() => {
                    metrics::counter!("vera_vault_lease_renewals_total").increment(1);
                    tracing::debug!(lease = %lease.id, seconds = renewed.as_secs(), "lease renewed");
                    duration = renewed.max(Duration::from_secs(2));
                }
                Ok(_) => {
                    on_expired(AuditError::Vault(format!("lease {} reached its max TTL", lease.id)));
                    return;
                }
                Err(error) => {
                    on_expired(error);
                    return;
                }
            }
        }
    })
}

/// Keeps the client's token alive: checks its TTL and renews it when less than a third
/// is left (at least every `check_every`).
pub fn spawn_token_keeper(
    vault: Vault,
    check_every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut initial_ttl: Option<Duration> = None;
        loop {
            match vault.token_ttl().await {
                // A root token has no TTL: nothing to renew.
                Ok((ttl, _)) if ttl.is_zero() => return,
                Ok((ttl, renewable)) => {
                    let full = *initial_ttl.get_or_insert(ttl);
                    if ttl < full / 3 {
                        if !renewable {
                            tracing::error!(seconds = ttl.as_secs(), "Vault token is not renewable and expires soon");
                        } else {
                            match vault.renew_token().await {
                                Ok(renewed) => {
                                    metrics::counter!("vera_vault_token_renewals_total").increment(1);
                                    tracing::info!(seconds = renewed.as_secs(), "Vault token renewed");
                                }
                                Err(error) => tracing::warn!(%error, "Vault token renewal failed; retrying"),
                            }
                        }
                    }
                    let sleep = check_every.min(ttl / 4).max(Duration::from_millis(200));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(sleep) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Vault token lookup failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(check_every) => {}
                    }
                }
            }
        }
    })
}

/// Signs checkpoints with a Transit `ed25519` key.
pub struct TransitSigner {
    vault: Vault,
    mount: String,
    key: String,
    /// The note key name (defaults to the Transit key name).
    name: String,
    public_keys: tokio::sync::Mutex<BTreeMap<u64, [u8; 32]>>,
}

impl TransitSigner {
    pub async fn new(vault: Vault, mount: &str, key: &str, name: &str) -> Result<TransitSigner, AuditError> {
        let signer = TransitSigner {
            vault,
            mount: mount.to_owned(),
            key: key.to_owned(),
            name: name.to_owned(),
            public_keys: tokio::sync::Mutex::new(BTreeMap::new()),
        };
        signer.refresh_keys().await?;
        Ok(signer)
    }

    async fn refresh_keys(&self) -> Result<BTreeMap<u64, [u8; 32]>, AuditError> {
        let key = vaultrs::transit::key::read(self.vault.client(), &self.mount, &self.key)
            .await
            .map_err(|e| vault_error(&format!("reading Transit key {}/{}", self.mount, self.key), e))?;
        let vaultrs::api::transit::responses::ReadKeyData::Asymmetric(versions) = key.keys else {
            return Err(AuditError::Config(format!(
                "Transit key {} is not asymmetric; create it with type=ed25519",
                self.key
            )));
        };
        let mut keys = BTreeMap::new();
        for (version, entry) in versions {
            let version: u64 = version.parse().map_err(|_| vault_error("Transit key version", version))?;
            let bytes = B64.decode(&entry.public_key).map_err(|e| vault_error("Transit public key", e))?;
            let public: [u8; 32] =
                bytes.try_into().map_err(|_| AuditError::Config(format!("Transit key {} is not ed25519", self.key)))?;
            keys.insert(version, public);
        }
        *self.public_keys.lock().await = keys.clone();
        Ok(keys)
    }

    /// One verifier key per Transit key version, oldest first.
    pub async fn verifier_keys(&self) -> Result<Vec<String>, AuditError> {
        Ok(self.refresh_keys().await?.values().map(|public| verifier_key(&self.name, public)).collect())
    }
}

#[async_trait]
impl NoteSigner for TransitSigner {
    fn name(&self) -> &str {
        &self.name
    }

    async fn sign(&self, message: &[u8]) -> Result<NoteSignature, AuditError> {
        let signed =
            vaultrs::transit::data::sign(self.vault.client(), &self.mount, &self.key, &B64.encode(message), None)
                .await
                .map_err(|e| vault_error(&format!("Transit sign with {}", self.key), e))?;
        // "vault:v<version>:<base64 signature>"
        let mut parts = signed.signature.splitn(3, ':');
        let (Some(_), Some(version), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(vault_error("Transit signature", "not vault:v<N>:<base64>"));
        };
        let version: u64 = version
            .strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| vault_error("Transit signature", "bad key version"))?;
        let signature: [u8; 64] = B64
            .decode(signature)
            .map_err(|e| vault_error("Transit signature", e))?
            .try_into()
            .map_err(|_| vault_error("Transit signature", "not 64 bytes: is the key ed25519?"))?;
        let known = self.public_keys.lock().await.get(&version).copied();
        let public_key = match known {
            Some(public) => public,
            // Rotated since we last looked.
            None => *self
                .refresh_keys()
                .await?
                .get(&version)
                .ok_or_else(|| vault_error("Transit signature", format!("unknown key version {version}")))?,
        };
        Ok(NoteSignature { public_key, signature })
    }
}

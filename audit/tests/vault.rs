//! Secrets against a real OpenBao dev server (scripts/openbao; `VERA_TEST_VAULT_ADDR`,
//! `VERA_TEST_VAULT_TOKEN`) and the real RabbitMQ: KV v2 S3 credentials, dynamic
//! RabbitMQ users that carry the bus, Transit checkpoint signing across a key rotation,
//! and token renewal.
#![cfg(feature = "vault")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use vera_audit::log::{AuditLog, verify_log};
use vera_audit::note::{Checkpoint, Verifiers};
use vera_audit::vault::{Secret, TransitSigner, Vault, VaultConfig, spawn_token_keeper};
use vera_bus::{Bus, Outgoing};
use vera_bus_amqp::{AmqpBus, AmqpSettings};
use vera_protocol::Timestamp;
use vera_store::local::LocalStore;
use vera_store::{ObjectStore, SystemClock};

fn root() -> VaultConfig {
    VaultConfig {
        address: std::env::var("VERA_TEST_VAULT_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8250".into()),
        token: Secret::new(std::env::var("VERA_TEST_VAULT_TOKEN").unwrap_or_else(|_| "vera-dev-root".into())),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn s3_credentials_come_from_kv_v2_and_never_print() {
    let vault = Vault::connect(&root()).unwrap();
    let path = unique("vera/s3-test");
    let secret = unique("secret");
    let mut data = std::collections::HashMap::new();
    data.insert("access_key_id", "AKIATEST");
    data.insert("secret_access_key", secret.as_str());
    vaultrs::kv2::set(vault.client(), "secret", &path, &data).await.unwrap();

    let credentials = vault.s3_credentials("secret", &path).await.unwrap();
    assert_eq!(credentials.access_key_id, "AKIATEST");
    assert_eq!(credentials.secret_access_key.expose(), secret);
    let printed = format!("{credentials:?} {}", credentials.secret_access_key);
    assert!(!printed.contains(&secret), "{printed}");
    assert!(vault.s3_credentials("secret", "vera/no-such-secret").await.is_err());
}

#[tokio::test]
async fn dynamic_rabbitmq_credentials_carry_the_bus_and_their_lease_renews() {
    let vault = Vault::connect(&root()).unwrap();
    let credentials = vault.rabbitmq_credentials("rabbitmq", "vera").await.unwrap();
    assert!(!credentials.lease.id.is_empty());
    assert!(credentials.lease.renewable);
    assert!(!format!("{credentials:?}").contains(credentials.password.expose()));

    let mut settings = AmqpSettings::new(credentials.amqp_url("127.0.0.1", 5672, "/").expose());
    settings.prefix = format!("{}.", unique("vault"));
    let bus = AmqpBus::connect(settings).await.unwrap();
    bus.ensure_topics(&["pack"]).await.unwrap();
    bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"through a dynamic user") }])
        .await
        .unwrap();
    let mut claimed = Vec::new();
    for _ in 0..50 {
        claimed = bus.claim("pack", 1, Duration::from_secs(30)).await.unwrap();
        if !claimed.is_empty() {
            break;
        }
    }
    assert_eq!(claimed[0].payload.as_ref(), b"through a dynamic user");
    bus.ack(&claimed[0]).await.unwrap();

    let renewed = vault.renew_lease(&credentials.lease.id, Duration::from_secs(120)).await.unwrap();
    assert!(renewed > Duration::ZERO);
    assert!(vault.renew_lease("rabbitmq/creds/vera/not-a-lease", Duration::from_secs(60)).await.is_err());
}

#[tokio::test]
async fn transit_signs_checkpoints_and_old_ones_verify_after_rotation() {
    let vault = Vault::connect(&root()).unwrap();
    let key = unique("audit");
    let mut options = vaultrs::api::transit::requests::CreateKeyRequest::builder();
    options.key_type(vaultrs::api::transit::KeyType::Ed25519);
    vaultrs::transit::key::create(vault.client(), "transit", &key, Some(&mut options)).await.unwrap();
    let signer = Arc::new(TransitSigner::new(vault.clone(), "transit", &key, "audit.vault").await.unwrap());

    // An audit log whose checkpoints are signed in Transit.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let log = AuditLog::open(store.clone(), "w0", signer.clone(), None, Arc::new(SystemClock)).await.unwrap();
    let event = |n: u32| {
        let at = Timestamp::from_unix_seconds(1_800_000_000).unwrap();
        vera_protocol::message::Envelope::new(
            format!("vault-test/{n}"),
            at,
            vera_protocol::message::Message::AuditEvent(vera_protocol::message::AuditEvent {
                action: vera_protocol::message::AuditAction::Read,
                outcome: vera_protocol::message::AuditOutcome::Ok,
                at,
                actor: "reader".into(),
                request_id: None,
                uid: Some(format!("u{n}")),
                segment_key: None,
                details: Default::default(),
            }),
        )
    };
    log.append(&[event(1), event(2)]).await.unwrap();
    log.checkpoint().await.unwrap();
    let before = signer.verifier_keys().await.unwrap();
    assert_eq!(before.len(), 1);

    vaultrs::transit::key::rotate(vault.client(), "transit", &key).await.unwrap();
    log.append(&[event(3)]).await.unwrap();
    log.checkpoint().await.unwrap();
    let after = signer.verifier_keys().await.unwrap();
    assert_eq!(after.len(), 2, "one verifier key per Transit key version");

    // Both checkpoints verify with the full key list; the old list does not cover the new one.
    let all = Verifiers::parse(&after.join("\n")).unwrap();
    let report = verify_log(store.as_ref(), "w0", &all).await.unwrap();
    assert_eq!((report.entries, report.checkpoints), (3, 2));
    let old_only = Verifiers::parse(&before.join("\n")).unwrap();
    assert!(verify_log(store.as_ref(), "w0", &old_only).await.is_err());
    let first =
        String::from_utf8(store.get(&vera_audit::log::checkpoint_key("w0", 2)).await.unwrap().body.to_vec()).unwrap();
    assert_eq!(Checkpoint::open(&first, &old_only).unwrap().size, 2);
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires() {
    let vault = Vault::connect(&root()).unwrap();
    let mut options = vaultrs::api::token::requests::CreateTokenRequest::builder();
    options.ttl("6s").renewable(true).explicit_max_ttl("120s");
    let child = vaultrs::token::new(vault.client(), Some(&mut options)).await.unwrap();
    let short =
        Vault::connect(&VaultConfig { address: root().address, token: Secret::new(child.client_token) }).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let keeper = spawn_token_keeper(short.clone(), Duration::from_millis(500), shutdown.clone());
    // Without renewal the token would be gone after 6 s.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (ttl, _) = short.token_ttl().await.expect("token still valid after its first TTL");
    assert!(ttl > Duration::ZERO);
    shutdown.cancel();
    keeper.await.unwrap();
}

//! VERA's trust layer.
//!
//! * [`log`] and [`writer`]: the tamper-evident audit log. Every PACK, READ, DELETE,
//!   REPACK, RETAIN, HOLD and EXPORT is an `AuditEvent` on the bus; audit writers append
//!   them to per-writer logs shaped as RFC 9162 Merkle trees ([`tree`]), in immutable
//!   segments under Object Lock, and sign checkpoints ([`note`], C2SP signed notes).
//!   [`log::verify_log`] recomputes everything from S3.
//! * [`operator`]: admin requests signed with the operator's SSH key (SSHSIG), checked
//!   against an OpenSSH `allowed_signers` file, with roles, expiry and replay protection.
//! * [`attest`]: signed statements an auditor checks offline, such as `vera reconcile
//!   --attest`'s "every row of this range is archived or rejected".
//! * [`export`]: auditor exports with `integrity_proof.json`, and the offline verifier.
//! * `vault` (feature `vault`): S3 credentials from KV v2, dynamic RabbitMQ credentials,
//!   checkpoint signing in Transit, token renewal.

pub mod attest;
pub mod breakglass;
pub mod export;
pub mod log;
pub mod note;
pub mod operator;
pub mod tree;
#[cfg(feature = "vault")]
pub mod vault;
pub mod writer;

use vera_store::StoreError;

/// Everything that can go wrong in the trust layer. Each verification failure is its own
/// variant, so callers and tests can tell a deleted entry from a bad signature.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("audit segment {key} is corrupt: {reason}")]
    CorruptSegment { key: String, reason: String },
    #[error("audit log {log}: entry {index} is corrupt: {reason}")]
    CorruptEntry { log: String, index: u64, reason: String },
    #[error(
        "audit log {log}: expected a segment starting at entry {expected}, found one at {found}: entries are missing or were inserted"
    )]
    Gap { log: String, expected: u64, found: u64 },
    #[error(
        "audit segment {key} does not continue the tree before it: an earlier entry was changed, removed or reordered"
    )]
    ChainBroken { key: String },
    #[error(
        "audit log {log}: the entries do not hash to the signed checkpoint at size {size}: an entry was changed, removed or reordered"
    )]
    CheckpointMismatch { log: String, size: u64 },
    #[error(
        "audit log {log} is truncated: a signed checkpoint covers {checkpoint_size} entries, the log holds {log_size}"
    )]
    Truncated { log: String, checkpoint_size: u64, log_size: u64 },
    #[error("checkpoint signature by {key} does not verify")]
    CheckpointSignature { key: String },
    #[error("checkpoint is not signed by any trusted key")]
    UnknownCheckpointKey,
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("message {id} on the audit topic is not an audit event")]
    NotAnAuditEvent { id: String },
    #[error("another writer extended the log first ({key} exists); state reloaded, retry")]
    Conflict { key: String },
    #[error("unsigned request refused: {0}")]
    Unsigned(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("unknown signer: {0}")]
    UnknownSigner(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("request expired or not yet valid: {0}")]
    Expired(String),
    #[error("replayed request refused: {0}")]
    Replayed(String),
    #[error("invalid request: {0}")]
    Request(String),
    #[error("export: {0}")]
    Export(String),
    #[error("proof verification failed: {0}")]
    Proof(String),
    #[error("vault: {0}")]
    Vault(String),
    #[error("malformed attestation: {0}")]
    BadAttestation(String),
    #[error("the attestation's statement does not match the hash its signature covers: it was changed")]
    AttestationMismatch,
}

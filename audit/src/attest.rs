//! Signed completeness attestations: "all N rows of range R are archived, M rejected
//! for these reasons", as `vera reconcile --attest` writes them.
//!
//! An attestation file is JSON:
//!
//! ```text
//! {"format": "vera.attestation", "version": 1,
//!  "statement": "<the statement, a JSON document, as one string>",
//!  "note": "<a C2SP signed note>"}
//! ```
//!
//! The statement is kept as the exact bytes that were hashed, so no JSON re-encoding
//! can change them. The note's text is three lines, signed like an audit checkpoint
//! (Ed25519, the checkpoint key or Vault Transit, [`crate::note`]):
//!
//! ```text
//! vera-attestation/<kind>
//! <base64 SHA-256 of the statement bytes>
//! time <RFC 3339 UTC>
//! ```
//!
//! [`verify_attestation`] checks the signature against trusted verifier keys and the
//! hash against the statement, offline: an auditor needs the file and the keys only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vera_protocol::Timestamp;

use crate::AuditError;
use crate::note::{NoteSigner, Verifiers, open_note, sign_note};

pub const ATTESTATION_FORMAT: &str = "vera.attestation";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    pub format: String,
    pub version: u16,
    /// The attested statement, a JSON document, byte for byte as hashed.
    pub statement: String,
    /// The signed note over the statement's hash.
    pub note: String,
}

/// What a verified attestation says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifiedAttestation {
    pub kind: String,
    pub signed_at: Timestamp,
    pub statement_sha256: String,
    pub statement: serde_json::Value,
}

fn digest(statement: &str) -> String {
    B64.encode(Sha256::digest(statement.as_bytes()))
}

fn check_kind(kind: &str) -> Result<(), AuditError> {
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(AuditError::Config(format!("attestation kind {kind:?} must be letters, digits and '-'")));
    }
    Ok(())
}

/// Signs `statement` (a JSON document) as an attestation of `kind` (e.g. `reconcile`).
pub async fn attest(
    kind: &str,
    statement: &serde_json::Value,
    at: Timestamp,
    signer: &dyn NoteSigner,
) -> Result<Attestation, AuditError> {
    check_kind(kind)?;
    let statement = serde_json::to_string_pretty(statement)
        .map_err(|e| AuditError::Config(format!("the statement cannot be encoded: {e}")))?;
    let body = format!("vera-attestation/{kind}\n{}\ntime {at}\n", digest(&statement));
    let note = sign_note(&body, signer).await?;
    Ok(Attestation { format: ATTESTATION_FORMAT.into(), version: 1, statement, note })
}

/// Checks an attestation file's signature and hash; returns what it says.
pub fn verify_attestation(bytes: &[u8], verifiers: &Verifiers) -> Result<VerifiedAttestation, AuditError> {
    let bad = |reason: String| AuditError::BadAttestation(reason);
    let attestation: Attestation =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not an attestation file: {e}")))?;
    if attestation.format != ATTESTATION_FORMAT || attestation.version != 1 {
        return Err(bad(format!("unknown format {:?} version {}", attestation.format, attestation.version)));
    }
    let body = open_note(&attestation.note, verifiers)?;
    let mut lines = body.lines();
    let kind = lines
        .next()
        .and_then(|line| line.strip_prefix("vera-attestation/"))
        .ok_or_else(|| bad("the note's first line is not vera-attestation/<kind>".into()))?
        .to_owned();
    let signed_digest = lines.next().ok_or_else(|| bad("the note has no statement hash".into()))?;
    let signed_at = lines
        .next()
        .and_then(|line| line.strip_prefix("time "))
        .and_then(|text| Timestamp::parse(text).ok())
        .ok_or_else(|| bad("the note's time line is missing or not RFC 3339".into()))?;
    let actual = digest(&attestation.statement);
    if signed_digest != actual {
        return Err(AuditError::AttestationMismatch);
    }
    let statement =
        serde_json::from_str(&attestation.statement).map_err(|e| bad(format!("the statement is not JSON: {e}")))?;
    Ok(VerifiedAttestation { kind, signed_at, statement_sha256: actual, statement })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::note::KeyFileSigner;

    fn signer(seed: u8) -> KeyFileSigner {
        KeyFileSigner::new("vera-audit", SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    async fn signed() -> Vec<u8> {
        let statement = serde_json::json!({"in_source": 10, "stored": 9, "rejected": 1, "missing": 0});
        let at = Timestamp::parse("2026-12-04T10:00:00Z").unwrap();
        serde_json::to_vec(&attest("reconcile", &statement, at, &signer(1)).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn an_attestation_verifies_offline_and_says_what_was_signed() {
        let verifiers = Verifiers::parse(&signer(1).verifier_key()).unwrap();
        let verified = verify_attestation(&signed().await, &verifiers).unwrap();
        assert_eq!(verified.kind, "reconcile");
        assert_eq!(verified.statement["stored"], 9);
        assert_eq!(verified.signed_at, Timestamp::parse("2026-12-04T10:00:00Z").unwrap());
    }

    #[tokio::test]
    async fn a_changed_statement_or_an_unknown_key_is_refused() {
        let bytes = signed().await;
        let verifiers = Verifiers::parse(&signer(1).verifier_key()).unwrap();
        let mut attestation: Attestation = serde_json::from_slice(&bytes).unwrap();
        attestation.statement = attestation.statement.replace("\"missing\": 0", "\"missing\": 1");
        let forged = serde_json::to_vec(&attestation).unwrap();
        assert!(matches!(verify_attestation(&forged, &verifiers), Err(AuditError::AttestationMismatch)));
        let other = Verifiers::parse(&signer(2).verifier_key()).unwrap();
        assert!(matches!(verify_attestation(&bytes, &other), Err(AuditError::UnknownCheckpointKey)));
        assert!(matches!(verify_attestation(b"{}", &verifiers), Err(AuditError::BadAttestation(_))));
    }
}

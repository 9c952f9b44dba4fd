//! Signed checkpoints in the C2SP signed-note format (`c2sp.org/signed-note`,
//! `c2sp.org/tlog-checkpoint`), with Ed25519 signatures.
//!
//! A checkpoint note is UTF-8 text:
//!
//! ```text
//! vera-audit/<log id>
//! <tree size, decimal>
//! <root hash, standard base64>
//! time <RFC 3339 UTC, microseconds>
//!
//! — <key name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>
//! ```
//!
//! The signature covers the text up to and including the newline before the blank line.
//! The key id is the first four bytes of `SHA-256(name || 0x0A || 0x01 || public key)`.
//! Verifiers are configured with *verifier keys*, one per line:
//! `<name>+<key id, 8 hex digits>+<base64(0x01 || 32-byte public key)>`. Rotating the
//! signing key (a new Transit key version, a new key file) adds a line; old checkpoints
//! stay verifiable as long as their line stays.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use vera_protocol::Timestamp;
use vera_protocol::merkle::Hash;

use crate::AuditError;

/// Signature algorithm byte of Ed25519 in C2SP signed notes.
const ALG_ED25519: u8 = 0x01;
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// What a signer returns: the public key that verifies `signature` (it names the key
/// version for signers that rotate) and the signature itself.
#[derive(Debug, Clone)]
pub struct NoteSignature {
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// Something that signs checkpoint notes with Ed25519: a key file, or Vault Transit,
/// where the key never leaves Vault.
#[async_trait]
pub trait NoteSigner: Send + Sync {
    /// The key name that appears on signature lines and in verifier keys.
    fn name(&self) -> &str;
    async fn sign(&self, message: &[u8]) -> Result<NoteSignature, AuditError>;
}

/// An Ed25519 key held in memory, read from an unencrypted OpenSSH private key file
/// (`ssh-keygen -t ed25519 -N '' -f FILE`).
pub struct KeyFileSigner {
    name: String,
    key: SigningKey,
}

impl KeyFileSigner {
    pub fn new(name: impl Into<String>, key: SigningKey) -> Result<Self, AuditError> {
        let name = name.into();
        check_key_name(&name)?;
        Ok(KeyFileSigner { name, key })
    }

    pub fn from_openssh_file(name: impl Into<String>, path: &std::path::Path) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuditError::Config(format!("cannot read checkpoint key {}: {e}", path.display())))?;
        let private = ssh_key::PrivateKey::from_openssh(&text)
            .map_err(|e| AuditError::Config(format!("{} is not an OpenSSH private key: {e}", path.display())))?;
        if private.is_encrypted() {
            return Err(AuditError::Config(format!(
                "checkpoint key {} is passphrase-protected; the audit writer runs unattended, use Vault Transit or an unencrypted key",
                path.display()
            )));
        }
        let Some(pair) = private.key_data().ed25519() else {
            return Err(AuditError::Config(format!(
                "checkpoint key {} is {}, checkpoints are signed with Ed25519",
                path.display(),
                private.algorithm()
            )));
        };
        Self::new(name, SigningKey::from_bytes(&pair.private.to_bytes()))
    }

    pub fn verifier_key(&self) -> String {
        verifier_key(&self.name, &self.key.verifying_key().to_bytes())
    }
}

#[async_trait]
impl NoteSigner for KeyFileSigner {
    fn name(&self) -> &str {
        &self.name
    }

    async fn sign(&self, message: &[u8]) -> Result<NoteSignature, AuditError> {
        Ok(NoteSignature {
            public_key: self.key.verifying_key().to_bytes(),
            signature: self.key.sign(message).to_bytes(),
        })
    }
}

fn check_key_name(name: &str) -> Result<(), AuditError> {
    if name.is_empty() || name.contains(['+', ' ', '\n', '\t']) {
        return Err(AuditError::Config(format!("key name {name:?} must be non-empty without spaces or '+'")));
    }
    Ok(())
}

/// `SHA-256(name || "\n" || 0x01 || public key)[..4]`, big-endian.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_ED25519]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The verifier key line for a public key.
pub fn verifier_key(name: &str, public_key: &[u8; 32]) -> String {
    let mut material = vec![ALG_ED25519];
    material.extend_from_slice(public_key);
    format!("{name}+{:08x}+{}", key_id(name, public_key), B64.encode(material))
}

/// The set of keys checkpoints may be signed with.
#[derive(Debug, Clone, Default)]
pub struct Verifiers {
    keys: HashMap<(String, u32), VerifyingKey>,
}

impl Verifiers {
    /// Parses verifier keys, one per line; blank lines and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        let mut verifiers = Verifiers::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            verifiers
                .add_line(line)
                .map_err(|reason| AuditError::Config(format!("verifier key on line {}: {reason}", number + 1)))?;
        }
        if verifiers.keys.is_empty() {
            return Err(AuditError::Config("no verifier keys given".into()));
        }
        Ok(verifiers)
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuditError::Config(format!("cannot read verifier keys {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    fn add_line(&mut self, line: &str) -> Result<(), String> {
        let mut parts = line.splitn(3, '+');
        let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected <name>+<key id>+<base64 key>".into());
        };
        let id = u32::from_str_radix(id, 16).map_err(|_| "key id is not 8 hex digits".to_owned())?;
        let material = B64.decode(material).map_err(|e| format!("key is not base64: {e}"))?;
        let [ALG_ED25519, public_key @ ..] = material.as_slice() else {
            return Err("only Ed25519 keys (algorithm 0x01) are supported".into());
        };
        let public_key: [u8; 32] = public_key.try_into().map_err(|_| "an Ed25519 key is 32 bytes".to_owned())?;
        if key_id(name, &public_key) != id {
            return Err("key id does not match the name and key".into());
        }
        let key = VerifyingKey::from_bytes(&public_key).map_err(|e| format!("not an Ed25519 point: {e}"))?;
        self.keys.insert((name.to_owned(), id), key);
        Ok(())
    }
}

/// Signs a note's text (every line newline-terminated) and returns the whole note.
pub async fn sign_note(body: &str, signer: &dyn NoteSigner) -> Result<String, AuditError> {
    check_key_name(signer.name())?;
    debug_assert!(body.ends_with('\n') && !body.contains("\n\n"), "a note's text is non-empty lines");
    let signed = signer.sign(body.as_bytes()).await?;
    let mut material = key_id(signer.name(), &signed.public_key).to_be_bytes().to_vec();
    material.extend_from_slice(&signed.signature);
    Ok(format!("{body}\n{SIGNATURE_PREFIX}{} {}\n", signer.name(), B64.encode(material)))
}

/// Parses a note and checks that at least one of its signatures is by a known key and
/// valid; returns the signed text. Signatures by unknown keys are ignored, as the
/// signed-note spec says; a note with none by a known key is refused.
pub fn open_note<'a>(note: &'a str, verifiers: &Verifiers) -> Result<&'a str, AuditError> {
    let bad = |reason: &str| AuditError::BadCheckpoint(reason.to_owned());
    let Some(split) = note.find("\n\n") else {
        return Err(bad("no blank line between text and signatures"));
    };
    let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
    let mut known = false;
    for line in signatures.lines() {
        let Some(rest) = line.strip_prefix(SIGNATURE_PREFIX) else {
            return Err(bad("a signature line does not start with an em dash"));
        };
        let Some((name, material)) = rest.split_once(' ') else {
            return Err(bad("a signature line has no signature"));
        };
        let material = B64.decode(material).map_err(|_| bad("a signature is not base64"))?;
        if material.len() != 4 + 64 {
            return Err(bad("an Ed25519 signature line holds 68 bytes"));
        }
        let id = u32::from_be_bytes([material[0], material[1], material[2], material[3]]);
        let Some(key) = verifiers.keys.get(&(name.to_owned(), id)) else {
            continue;
        };
        known = true;
        let signature = Signature::from_slice(&material[4..]).map_err(|_| bad("malformed signature"))?;
        if key.verify(body.as_bytes(), &signature).is_err() {
            return Err(AuditError::CheckpointSignature { key: format!("{name}+{id:08x}") });
        }
    }
    if !known {
        return Err(AuditError::UnknownCheckpointKey);
    }
    Ok(body)
}

/// A checkpoint: the log's size and root at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub log: String,
    pub size: u64,
    pub root: Hash,
    pub time: Timestamp,
}

impl Checkpoint {
    pub fn origin(log: &str) -> String {
        format!("vera-audit/{log}")
    }

    /// The signed text (every line newline-terminated).
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\ntime {}\n", Self::origin(&self.log), self.size, B64.encode(self.root), self.time)
    }

    /// Signs the checkpoint and returns the whole note.
    pub async fn sign(&self, signer: &dyn NoteSigner) -> Result<String, AuditError> {
        sign_note(&self.body(), signer).await
    }

    /// Parses a note and checks that at least one of its signatures is by a known key
    /// and valid (see [`open_note`]).
    pub fn open(note: &str, verifiers: &Verifiers) -> Result<Checkpoint, AuditError> {
        Self::parse_body(open_note(note, verifiers)?)
    }

    fn parse_body(body: &str) -> Result<Checkpoint, AuditError> {
        let bad = |reason: &str| AuditError::BadCheckpoint(reason.to_owned());
        let mut lines = body.lines();
        let log = lines
            .next()
            .and_then(|origin| origin.strip_prefix("vera-audit/"))
            .ok_or_else(|| bad("origin line is not vera-audit/<log>"))?
            .to_owned();
        let size = lines.next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| bad("size line is not a number"))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok())
            .ok_or_else(|| bad("root line is not a base64 32-byte hash"))?;
        let time = lines
            .next()
            .and_then(|t| t.strip_prefix("time "))
            .and_then(|t| Timestamp::parse(t).ok())
            .ok_or_else(|| bad("time line is missing or not RFC 3339"))?;
        Ok(Checkpoint { log, size, root, time })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> KeyFileSigner {
        KeyFileSigner::new("audit.example", SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            log: "w0".into(),
            size: 42,
            root: [7; 32],
            time: Timestamp::parse("2026-11-25T10:00:00Z").unwrap(),
        }
    }

    #[tokio::test]
    async fn a_signed_checkpoint_opens_with_its_verifier_key_and_rotation_keeps_old_ones() {
        let old = signer(1);
        let new = signer(2);
        let note_old = checkpoint().sign(&old).await.unwrap();
        let note_new = checkpoint().sign(&new).await.unwrap();
        let both = Verifiers::parse(&format!("{}\n# rotated\n{}\n", old.verifier_key(), new.verifier_key())).unwrap();
        assert_eq!(Checkpoint::open(&note_old, &both).unwrap(), checkpoint());
        assert_eq!(Checkpoint::open(&note_new, &both).unwrap(), checkpoint());
        let only_new = Verifiers::parse(&new.verifier_key()).unwrap();
        assert!(matches!(Checkpoint::open(&note_old, &only_new), Err(AuditError::UnknownCheckpointKey)));
    }

    #[tokio::test]
    async fn a_changed_note_fails_its_signature() {
        let key = signer(1);
        let verifiers = Verifiers::parse(&key.verifier_key()).unwrap();
        let note = checkpoint().sign(&key).await.unwrap();
        let forged = note.replacen("\n42\n", "\n41\n", 1);
        assert!(matches!(Checkpoint::open(&forged, &verifiers), Err(AuditError::CheckpointSignature { .. })));
        assert!(matches!(Checkpoint::open("garbage", &verifiers), Err(AuditError::BadCheckpoint(_))));
    }

    #[test]
    fn verifier_keys_with_a_wrong_id_are_refused() {
        let line = signer(1).verifier_key();
        let mut parts: Vec<&str> = line.split('+').collect();
        parts[1] = "00000000";
        assert!(Verifiers::parse(&parts.join("+")).is_err());
        assert!(Verifiers::parse("").is_err());
    }
}

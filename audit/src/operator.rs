//! Operator authentication: admin requests signed with the operator's own SSH key.
//!
//! A request is a small JSON document (see [`Request`]). The operator signs the file's
//! exact bytes with OpenSSH:
//!
//! ```text
//! ssh-keygen -Y sign -n vera -f ~/.ssh/id_ed25519 request.json   # writes request.json.sig
//! ```
//!
//! VERA verifies the SSHSIG signature (PROTOCOL.sshsig: Ed25519, or RSA with
//! rsa-sha2-512) under the namespace [`NAMESPACE`] against an OpenSSH `allowed_signers`
//! file, then parses the signed bytes; nothing outside the signature is trusted. The
//! principal's roles come from a roles file (`<principal> <role>[,<role>…]` per line),
//! because `allowed_signers` has no place for them that `ssh-keygen` would accept.
//!
//! Refused: unsigned requests (where signing is required), signatures that do not
//! verify, signers not in `allowed_signers` for the request's principal, principals
//! without the action's role, requests not yet valid or expired, validity windows over
//! [`MAX_VALIDITY`], and replays: each request's nonce is claimed once, create-if-absent,
//! as `audit/requests/<nonce>.json` on the object store, which also keeps the signed
//! request as evidence.
//!
//! Both files are re-read when they change, so rotating an operator's key or role needs
//! no restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use vera_protocol::Timestamp;
use vera_store::{ObjectStore, PutOptions, StoreErrorKind};

use crate::AuditError;

/// The SSHSIG namespace every VERA request is signed under.
pub const NAMESPACE: &str = "vera";
/// Longest accepted `expires_at - issued_at`.
pub const MAX_VALIDITY_SECS: i64 = 24 * 3600;
pub const MAX_VALIDITY: std::time::Duration = std::time::Duration::from_secs(MAX_VALIDITY_SECS as u64);
/// Tolerated clock skew for `issued_at` in the future.
pub const MAX_SKEW_SECS: i64 = 300;
pub const REQUESTS_PREFIX: &str = "audit/requests/";
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// What an admin action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Delete,
    Retain,
    Hold,
    Export,
    Repack,
    /// Two of these, by two operators, bypass GOVERNANCE retention (see `breakglass`).
    BreakGlass,
    /// Add a routing epoch to the store's routing table.
    Routing,
}

impl Action {
    /// The role an operator needs for the action.
    pub fn role(self) -> &'static str {
        match self {
            Action::Delete => "eraser",
            Action::Retain | Action::Hold => "retention",
            Action::Export => "auditor",
            Action::Repack => "repacker",
            Action::BreakGlass => "break-glass",
            Action::Routing => "router",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Retain => "retain",
            Action::Hold => "hold",
            Action::Export => "export",
            Action::Repack => "repack",
            Action::BreakGlass => "break-glass",
            Action::Routing => "routing",
        }
    }
}

/// The signed document. Field order is fixed so a request VERA writes is readable, but
/// VERA never re-serialises it: the signature covers the bytes as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Always 1.
    pub vera_request: u32,
    pub action: Action,
    pub principal: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// 32 lowercase hex digits (128 random bits); used once.
    pub nonce: String,
    /// The action's arguments, exactly as the command would take them.
    pub args: serde_json::Map<String, serde_json::Value>,
}

impl Request {
    /// A fresh request with a random nonce.
    pub fn new(
        action: Action,
        principal: &str,
        now: Timestamp,
        validity: std::time::Duration,
        args: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Request, AuditError> {
        let seconds = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
        if seconds <= 0 || seconds > MAX_VALIDITY_SECS {
            return Err(AuditError::Request(format!(
                "validity must be between 1 s and {MAX_VALIDITY_SECS} s, not {seconds} s"
            )));
        }
        let expires_at = Timestamp::from_micros(now.as_micros().saturating_add(seconds * 1_000_000))
            .map_err(|e| AuditError::Request(e.to_string()))?;
        Ok(Request {
            vera_request: 1,
            action,
            principal: principal.to_owned(),
            issued_at: now,
            expires_at,
            nonce: hex::encode(rand::random::<[u8; 16]>()),
            args,
        })
    }

    /// The bytes to sign and store: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// A request with its signature, as read from `FILE` and `FILE.sig`.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub bytes: Bytes,
    /// The armored `-----BEGIN SSH SIGNATURE-----` block.
    pub signature: String,
}

impl SignedRequest {
    /// Reads `path` and `path.sig` (what `ssh-keygen -Y sign` writes).
    pub fn read(path: &Path) -> Result<SignedRequest, AuditError> {
        let bytes = std::fs::read(path)
            .map_err(|e| AuditError::Request(format!("cannot read request {}: {e}", path.display())))?;
        let sig_path = PathBuf::from(format!("{}.sig", path.display()));
        let signature = std::fs::read_to_string(&sig_path).map_err(|e| {
            AuditError::Unsigned(format!(
                "no signature at {} ({e}); sign it with `ssh-keygen -Y sign -n {NAMESPACE} -f KEY {}`",
                sig_path.display(),
                path.display()
            ))
        })?;
        Ok(SignedRequest { bytes: Bytes::from(bytes), signature })
    }
}

/// Signs `message` as `ssh-keygen -Y sign -n vera` would (SHA-512; RSA keys sign with
/// rsa-sha2-512).
pub fn sign(key: &PrivateKey, message: &[u8]) -> Result<String, AuditError> {
    let failed = |e: ssh_key::Error| AuditError::Request(format!("cannot sign with this key: {e}"));
    let signature = match key.key_data().rsa() {
        // ssh-key 0.6.7 rebuilds RSA keys from the wrong primes when signing, so RSA goes
        // through the rsa crate directly; SSHSIG framing stays ssh-key's.
        Some(pair) => SshSig::sign(&RsaSha512::new(pair)?, NAMESPACE, HashAlg::Sha512, message).map_err(failed)?,
        None => key.sign(NAMESPACE, HashAlg::Sha512, message).map_err(failed)?,
    };
    signature.to_pem(LineEnding::LF).map_err(|e| AuditError::Request(format!("cannot encode the signature: {e}")))
}

/// An RSA key signing with PKCS#1 v1.5 and SHA-512 (`rsa-sha2-512`).
struct RsaSha512 {
    key: rsa::pkcs1v15::SigningKey<sha2::Sha512>,
    public: ssh_key::public::KeyData,
}

impl RsaSha512 {
    fn new(pair: &ssh_key::private::RsaKeypair) -> Result<Self, AuditError> {
        let bad = |e: ssh_key::Error| AuditError::Config(format!("RSA key: {e}"));
        let number = |m: &ssh_key::Mpint| rsa::BigUint::try_from(m).map_err(bad);
        let private = rsa::RsaPrivateKey::from_components(
            number(&pair.public.n)?,
            number(&pair.public.e)?,
            number(&pair.private.d)?,
            vec![number(&pair.private.p)?, number(&pair.private.q)?],
        )
        .map_err(|e| AuditError::Config(format!("RSA key: {e}")))?;
        if rsa::traits::PublicKeyParts::size(&private) * 8 < 2048 {
            return Err(AuditError::Config("RSA keys must have at least 2048 bits".into()));
        }
        Ok(RsaSha512 {
            key: rsa::pkcs1v15::SigningKey::new(private),
            public: ssh_key::public::KeyData::Rsa(pair.public.clone()),
        })
    }
}

impl rsa::signature::Signer<ssh_key::Signature> for RsaSha512 {
    fn try_sign(&self, message: &[u8]) -> Result<ssh_key::Signature, rsa::signature::Error> {
        use rsa::signature::SignatureEncoding;
        let signature = rsa::signature::Signer::try_sign(&self.key, message)?;
        ssh_key::Signature::new(ssh_key::Algorithm::Rsa { hash: Some(HashAlg::Sha512) }, signature.to_vec())
            .map_err(|_| rsa::signature::Error::new())
    }
}

impl From<&RsaSha512> for ssh_key::public::KeyData {
    fn from(signer: &RsaSha512) -> Self {
        signer.public.clone()
    }
}

/// Reads an unencrypted OpenSSH private key.
pub fn read_private_key(path: &Path) -> Result<PrivateKey, AuditError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuditError::Config(format!("cannot read key {}: {e}", path.display())))?;
    let key = PrivateKey::from_openssh(&text)
        .map_err(|e| AuditError::Config(format!("{} is not an OpenSSH private key: {e}", path.display())))?;
    if key.is_encrypted() {
        return Err(AuditError::Config(format!(
            "{} is passphrase-protected: sign with `ssh-keygen -Y sign -n {NAMESPACE}` (it asks for the passphrase or uses ssh-agent)",
            path.display()
        )));
    }
    Ok(key)
}

/// One line of `allowed_signers`.
#[derive(Debug, Clone)]
struct AllowedSigner {
    principals: Vec<String>,
    namespaces: Option<Vec<String>>,
    valid_after: Option<Timestamp>,
    valid_before: Option<Timestamp>,
    key: PublicKey,
}

/// A parsed OpenSSH `allowed_signers` file (see ssh-keygen(1), "ALLOWED SIGNERS").
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    signers: Vec<AllowedSigner>,
}

impl AllowedSigners {
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        let mut signers = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let signer = parse_signer_line(line)
                .map_err(|reason| AuditError::Config(format!("allowed_signers line {}: {reason}", number + 1)))?;
            signers.push(signer);
        }
        Ok(AllowedSigners { signers })
    }

    /// The keys allowed to sign as `principal` under `namespace` at `at`.
    fn keys_for(&self, principal: &str, namespace: &str, at: Timestamp) -> Vec<&PublicKey> {
        self.signers
            .iter()
            .filter(|signer| signer.principals.iter().any(|pattern| pattern_matches(pattern, principal)))
            .filter(|signer| {
                signer.namespaces.as_ref().is_none_or(|list| list.iter().any(|n| pattern_matches(n, namespace)))
            })
            .filter(|signer| signer.valid_after.is_none_or(|after| at >= after))
            .filter(|signer| signer.valid_before.is_none_or(|before| at < before))
            .map(|signer| &signer.key)
            .collect()
    }
}

fn parse_signer_line(line: &str) -> Result<AllowedSigner, String> {
    let (principals, rest) = split_field(line)?;
    let principals: Vec<String> = principals.split(',').map(|p| p.trim_matches('"').to_owned()).collect();
    let rest = rest.trim_start();
    let is_key_type = |token: &str| {
        token.starts_with("ssh-")
            || token.starts_with("ecdsa-")
            || token.starts_with("sk-")
            || token.starts_with("rsa-")
    };
    let (options, key_text) = if is_key_type(rest) {
        ("", rest)
    } else {
        let (options, after) = split_field(rest)?;
        (options, after.trim_start())
    };
    let mut signer = AllowedSigner {
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key: PublicKey::from_openssh(key_text).map_err(|e| format!("public key: {e}"))?,
    };
    for option in split_options(options) {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name.to_ascii_lowercase(), Some(value.trim_matches('"').to_owned())),
            None => (option.to_ascii_lowercase(), None),
        };
        match (name.as_str(), value) {
            ("namespaces", Some(value)) => signer.namespaces = Some(value.split(',').map(str::to_owned).collect()),
            ("valid-after", Some(value)) => signer.valid_after = Some(parse_ssh_time(&value)?),
            ("valid-before", Some(value)) => signer.valid_before = Some(parse_ssh_time(&value)?),
            ("cert-authority", None) => {
                return Err("cert-authority lines are not supported: list each operator's key".into());
            }
            (other, _) => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(signer)
}

/// Splits off the first whitespace-delimited field, honouring double quotes.
fn split_field(text: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (at, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Ok((&text[..at], &text[at..])),
            _ => {}
        }
    }
    Err("expected principals, options and a public key".into())
}

fn split_options(options: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (at, c) in options.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&options[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if start < options.len() {
        parts.push(&options[start..]);
    }
    parts
}

/// `YYYYMMDD[HHMM[SS]][Z]`; without `Z` OpenSSH uses local time, VERA uses UTC.
fn parse_ssh_time(value: &str) -> Result<Timestamp, String> {
    let digits = value.trim_end_matches(['Z', 'z']);
    let bad = || format!("time {value:?} is not YYYYMMDD[HHMM[SS]]");
    if !digits.chars().all(|c| c.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let part = |from: usize| digits.get(from..from + 2).unwrap_or("00");
    let text = format!("{}-{}-{}T{}:{}:{}Z", &digits[0..4], &digits[4..6], &digits[6..8], part(8), part(10), part(12));
    Timestamp::parse(&text).map_err(|_| bad())
}

/// OpenSSH pattern: `*` and `?` wildcards, a leading `!` negates.
fn pattern_matches(pattern: &str, text: &str) -> bool {
    if let Some(negated) = pattern.strip_prefix('!') {
        return !pattern_matches(negated, text);
    }
    fn glob(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], t) || (!t.is_empty() && glob(p, &t[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => glob(&p[1..], &t[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), text.as_bytes())
}

/// Principal → roles.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    roles: BTreeMap<String, BTreeSet<String>>,
}

impl Roles {
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        let mut roles = Roles::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(principal), Some(list), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(AuditError::Config(format!(
                    "roles line {}: expected `<principal> <role>[,<role>…]`",
                    number + 1
                )));
            };
            roles.roles.entry(principal.to_owned()).or_default().extend(list.split(',').map(str::to_owned));
        }
        Ok(roles)
    }

    pub fn has(&self, principal: &str, role: &str) -> bool {
        self.roles.get(principal).is_some_and(|roles| roles.contains(role))
    }
}

/// The principal and roles files, re-read whenever either file's modification time or
/// length changes.
pub struct Authorizer {
    signers_path: PathBuf,
    roles_path: PathBuf,
    cached: Mutex<Option<(FileStamp, AllowedSigners, Roles)>>,
}

type FileStamp = [(Option<SystemTime>, u64); 2];

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub request: Request,
    pub bytes: Bytes,
    pub signature: String,
    /// The signing key's SHA-256 fingerprint.
    pub fingerprint: String,
}

impl Authorizer {
    pub fn new(signers_path: impl Into<PathBuf>, roles_path: impl Into<PathBuf>) -> Result<Self, AuditError> {
        let authorizer =
            Authorizer { signers_path: signers_path.into(), roles_path: roles_path.into(), cached: Mutex::new(None) };
        authorizer.current()?;
        Ok(authorizer)
    }

    fn stamp(&self) -> Result<FileStamp, AuditError> {
        let one = |path: &Path| -> Result<(Option<SystemTime>, u64), AuditError> {
            let meta = std::fs::metadata(path)
                .map_err(|e| AuditError::Config(format!("cannot read {}: {e}", path.display())))?;
            Ok((meta.modified().ok(), meta.len()))
        };
        Ok([one(&self.signers_path)?, one(&self.roles_path)?])
    }

    fn current(&self) -> Result<(AllowedSigners, Roles), AuditError> {
        let stamp = self.stamp()?;
        let mut cached = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((seen, signers, roles)) = cached.as_ref()
            && *seen == stamp
        {
            return Ok((signers.clone(), roles.clone()));
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| AuditError::Config(format!("cannot read {}: {e}", path.display())))
        };
        let signers = AllowedSigners::parse(&read(&self.signers_path)?)?;
        let roles = Roles::parse(&read(&self.roles_path)?)?;
        *cached = Some((stamp, signers.clone(), roles.clone()));
        Ok((signers, roles))
    }

    /// Checks signature, principal, role and validity window; does not claim the nonce
    /// (see [`claim_nonce`]), so a check can be repeated.
    pub fn check(&self, signed: &SignedRequest, action: Action, now: Timestamp) -> Result<Authorized, AuditError> {
        if signed.bytes.len() > MAX_REQUEST_BYTES {
            return Err(AuditError::Request(format!("request is over {MAX_REQUEST_BYTES} bytes")));
        }
        let signature = SshSig::from_pem(signed.signature.trim())
            .map_err(|e| AuditError::BadSignature(format!("not an SSH signature: {e}")))?;
        if signature.namespace() != NAMESPACE {
            return Err(AuditError::BadSignature(format!(
                "signed under namespace {:?}; VERA requests are signed with -n {NAMESPACE}",
                signature.namespace()
            )));
        }
        // Parse only to learn the claimed principal; nothing is acted on before the
        // signature over these exact bytes verifies with that principal's key.
        let request: Request = serde_json::from_slice(&signed.bytes)
            .map_err(|e| AuditError::Request(format!("not a VERA request: {e}")))?;
        if request.vera_request != 1 {
            return Err(AuditError::Request(format!("unsupported request version {}", request.vera_request)));
        }
        let (signers, roles) = self.current()?;
        let keys = signers.keys_for(&request.principal, NAMESPACE, now);
        if keys.is_empty() {
            return Err(AuditError::UnknownSigner(format!(
                "principal {:?} has no key in allowed_signers for namespace {NAMESPACE} now",
                request.principal
            )));
        }
        let Some(key) = keys.into_iter().find(|key| key.key_data() == signature.public_key()) else {
            return Err(AuditError::UnknownSigner(format!(
                "the signing key is not one of {:?}'s keys in allowed_signers",
                request.principal
            )));
        };
        if signature.hash_alg() != HashAlg::Sha512 && key.algorithm().is_rsa() {
            return Err(AuditError::BadSignature("RSA signatures must use rsa-sha2-512".into()));
        }
        key.verify(NAMESPACE, &signed.bytes, &signature)
            .map_err(|e| AuditError::BadSignature(format!("signature does not verify: {e}")))?;
        if request.action != action {
            return Err(AuditError::Request(format!(
                "the request is for {}, not {}",
                request.action.name(),
                action.name()
            )));
        }
        if !roles.has(&request.principal, action.role()) {
            return Err(AuditError::Forbidden(format!(
                "{} lacks the {} role that {} needs",
                request.principal,
                action.role(),
                action.name()
            )));
        }
        if request.nonce.len() != 32 || !request.nonce.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(AuditError::Request("nonce must be 32 lowercase hex digits".into()));
        }
        let window = request.expires_at.as_micros() - request.issued_at.as_micros();
        if window <= 0 || window > MAX_VALIDITY_SECS * 1_000_000 {
            return Err(AuditError::Request(format!("validity window must be at most {MAX_VALIDITY_SECS} s")));
        }
        if request.issued_at.as_micros() > now.as_micros() + MAX_SKEW_SECS * 1_000_000 {
            return Err(AuditError::Expired(format!("issued at {} is in the future", request.issued_at)));
        }
        if now >= request.expires_at {
            return Err(AuditError::Expired(format!("expired at {}", request.expires_at)));
        }
        Ok(Authorized {
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            request,
            bytes: signed.bytes.clone(),
            signature: signed.signature.clone(),
        })
    }
}

/// Claims the request's nonce: stores the signed request at
/// `audit/requests/<nonce>.json`, create-if-absent. A second use is refused as a replay.
pub async fn claim_nonce(store: &dyn ObjectStore, authorized: &Authorized) -> Result<String, AuditError> {
    let key = format!("{REQUESTS_PREFIX}{}.json", authorized.request.nonce);
    let record = serde_json::json!({
        "request": String::from_utf8_lossy(&authorized.bytes),
        "signature": authorized.signature,
        "fingerprint": authorized.fingerprint,
    });
    match store.put(&key, Bytes::from(serde_json::to_vec(&record).unwrap_or_default()), PutOptions::create()).await {
        Ok(_) => Ok(key),
        Err(error) if error.kind == StoreErrorKind::AlreadyExists => {
            Err(AuditError::Replayed(format!("nonce {} was already used", authorized.request.nonce)))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_times() {
        assert!(pattern_matches("*@bank.example", "alice@bank.example"));
        assert!(!pattern_matches("*@bank.example", "alice@evil.example"));
        assert!(pattern_matches("al?ce", "alice"));
        assert!(!pattern_matches("!alice", "alice"));
        assert_eq!(parse_ssh_time("20261125").unwrap(), Timestamp::parse("2026-11-25T00:00:00Z").unwrap());
        assert_eq!(parse_ssh_time("202611251230Z").unwrap(), Timestamp::parse("2026-11-25T12:30:00Z").unwrap());
        assert!(parse_ssh_time("2026").is_err());
    }

    #[test]
    fn allowed_signers_lines_parse_with_options_and_refuse_unknown_ones() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbXkbEb6N2fFZ0qxGlNQ1TRDdqW1zD9W4hSB28TGUIG";
        let text = format!(
            "# operators\nalice@bank.example,bob@bank.example namespaces=\"vera,git\",valid-after=\"20260101\" {key} laptop\n*@ops.example {key}\n"
        );
        let signers = AllowedSigners::parse(&text).unwrap();
        let at = Timestamp::parse("2026-11-25T00:00:00Z").unwrap();
        assert_eq!(signers.keys_for("bob@bank.example", "vera", at).len(), 1);
        assert_eq!(signers.keys_for("bob@bank.example", "file", at).len(), 0);
        assert_eq!(signers.keys_for("eve@ops.example", "file", at).len(), 1);
        assert_eq!(
            signers.keys_for("alice@bank.example", "vera", Timestamp::parse("2025-01-01T00:00:00Z").unwrap()).len(),
            0
        );
        assert!(AllowedSigners::parse(&format!("alice frobnicate {key}")).is_err());
        assert!(AllowedSigners::parse("alice ssh-ed25519 notbase64").is_err());
    }
}

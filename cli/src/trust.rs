//! Trust commands and the signed-request gate of the admin commands.
//!
//! * `vera audit write|verify|verifier-key`: the audit writer, the verifier, and the
//!   verifier-key line of a checkpoint key.
//! * `vera request sign`: sign a request file with an SSH key, as `ssh-keygen -Y sign`.
//! * `vera export` and `vera proof verify`: auditor exports and their offline check.
//! * [`AuthArgs`] / [`authorize`]: every admin command (delete, retain, hold, repack,
//!   export) can write the request to sign (`--emit-request`), and runs a signed one
//!   (`--signed-request`). Where `--allowed-signers` is configured, unsigned runs are
//!   refused; refusals are published as DENIED audit events.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use vera_audit::export::{Selection, export, verify_export};
use vera_audit::log::{AuditLog, list_logs, verify_log};
use vera_audit::note::{KeyFileSigner, NoteSigner, Verifiers};
use vera_audit::operator::{
    Action, Authorized, Authorizer, Request, SignedRequest, claim_nonce, read_private_key, sign,
};
use vera_audit::writer::{WriterSettings, run_audit_writer};
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Envelope, Message};
use vera_store::{Clock, ObjectStore, SystemClock};

use crate::common::StoreArgs;

/// How an admin command proves who asked.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Run the request in FILE, signed with `ssh-keygen -Y sign -n vera` (the signature
    /// is read from FILE.sig). Its action and arguments must equal this command's.
    #[arg(long, value_name = "FILE", conflicts_with = "emit_request")]
    pub signed_request: Option<PathBuf>,
    /// Do not run: write this command as a request to FILE, for the operator to sign.
    #[arg(long, value_name = "FILE", requires = "principal")]
    pub emit_request: Option<PathBuf>,
    /// With --emit-request: the principal that will sign (as in allowed_signers).
    #[arg(long)]
    pub principal: Option<String>,
    /// With --emit-request: how long the request stays valid, e.g. 900s, 15m, 2h (at most 24h).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub valid_for: Duration,
    /// OpenSSH allowed_signers file. When set, unsigned requests are refused.
    #[arg(long, env = "VERA_ALLOWED_SIGNERS")]
    pub allowed_signers: Option<PathBuf>,
    /// Roles file: `<principal> <role>[,<role>…]` per line. Roles: eraser (delete),
    /// retention (retain, hold), auditor (export), repacker (repack), router (routing
    /// add-epoch).
    #[arg(long, env = "VERA_ROLES")]
    pub roles: Option<PathBuf>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 900s, 15m or 2h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        "d" => value * 86_400,
        _ => return Err(format!("unknown unit in {text:?} (s, m, h, d)")),
    };
    Ok(Duration::from_secs(seconds))
}

/// Who the command runs as, once [`authorize`] let it through.
pub enum Gate {
    /// `--emit-request`: the request was written; do not run.
    Emitted,
    /// Run as this operator id; `signed` when a verified request named it.
    Run { operator: String, signed: Option<Authorized> },
}

fn audit_action(action: Action) -> AuditAction {
    match action {
        Action::Delete => AuditAction::Delete,
        Action::Retain => AuditAction::Retain,
        Action::Hold => AuditAction::Hold,
        Action::Export => AuditAction::Export,
        Action::Repack => AuditAction::Repack,
        Action::BreakGlass => AuditAction::Delete,
        Action::Routing => AuditAction::Routing,
    }
}

/// Publishes a DENIED audit event for a refused request (best effort: the refusal
/// stands even if the bus is down).
async fn audit_denial(bus: Option<&dyn Bus>, action: Action, actor: &str, reason: &str) {
    let Some(bus) = bus else { return };
    let now = SystemClock.now();
    let mut details = BTreeMap::new();
    details.insert("reason".to_owned(), reason.chars().filter(|c| !c.is_control()).take(300).collect());
    details.insert("request_action".to_owned(), action.name().to_owned());
    let actor = if vera_protocol::ids::is_valid_id(actor) { actor.to_owned() } else { "unknown".to_owned() };
    let event = AuditEvent {
        action: audit_action(action),
        outcome: AuditOutcome::Denied,
        at: now,
        actor,
        request_id: None,
        uid: None,
        segment_key: None,
        details,
    };
    let id = format!("denied/{}/{:016x}", action.name(), rand::random::<u64>());
    if let Err(error) = publish_audit(bus, id, now, event).await {
        tracing::error!(%error, "could not publish the DENIED audit event");
    }
}

/// Publishes one audit event on the `audit` topic, keyed like every other.
pub(crate) async fn publish_audit(
    bus: &dyn Bus,
    id: String,
    now: Timestamp,
    event: AuditEvent,
) -> Result<(), vera_bus::BusError> {
    let envelope = Envelope::new(id, now, Message::AuditEvent(event));
    let outgoing = Outgoing { key: envelope.ordering_key(), payload: Bytes::from(envelope.encode()) };
    bus.publish(topics::AUDIT, vec![outgoing]).await
}

/// The gate every admin command passes. `args` is the command's own arguments, which a
/// signed request must match exactly.
pub async fn authorize(
    auth: &AuthArgs,
    action: Action,
    args: serde_json::Map<String, serde_json::Value>,
    operator: Option<&str>,
    store: &dyn ObjectStore,
    bus: Option<&dyn Bus>,
) -> anyhow::Result<Gate> {
    let now = SystemClock.now();
    if let Some(path) = &auth.emit_request {
        let principal = auth.principal.as_deref().context("--emit-request needs --principal")?;
        let request = Request::new(action, principal, now, auth.valid_for, args)?;
        std::fs::write(path, request.to_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {}; sign it with `ssh-keygen -Y sign -n {} -f KEY {}` (or `vera request sign --key KEY {}`), then run this command again with --signed-request {}",
            path.display(),
            vera_audit::operator::NAMESPACE,
            path.display(),
            path.display(),
            path.display()
        );
        return Ok(Gate::Emitted);
    }
    let Some(path) = &auth.signed_request else {
        if auth.allowed_signers.is_some() {
            let reason = "this deployment requires signed requests (VERA_ALLOWED_SIGNERS is set): use --emit-request, sign, then --signed-request";
            audit_denial(bus, action, operator.unwrap_or("unknown"), "unsigned request").await;
            anyhow::bail!(vera_audit::AuditError::Unsigned(reason.into()));
        }
        let operator = operator.context("--operator (or VERA_OPERATOR) is required for an unsigned request")?;
        tracing::warn!(
            "unsigned {} request by {operator}: set VERA_ALLOWED_SIGNERS to require SSH signatures",
            action.name()
        );
        return Ok(Gate::Run { operator: operator.to_owned(), signed: None });
    };
    let (Some(signers), Some(roles)) = (&auth.allowed_signers, &auth.roles) else {
        anyhow::bail!("--signed-request needs --allowed-signers and --roles (or VERA_ALLOWED_SIGNERS and VERA_ROLES)");
    };
    let checked = async {
        let authorizer = Authorizer::new(signers, roles)?;
        let signed = SignedRequest::read(path)?;
        let authorized = authorizer.check(&signed, action, now)?;
        if authorized.request.args != args {
            return Err(vera_audit::AuditError::Request(format!(
                "the signed request is for other arguments: signed {}, given {}",
                serde_json::Value::Object(authorized.request.args.clone()),
                serde_json::Value::Object(args.clone())
            )));
        }
        claim_nonce(store, &authorized).await?;
        Ok(authorized)
    }
    .await;
    match checked {
        Ok(authorized) => {
            let operator = authorized.request.principal.clone();
            if !vera_protocol::ids::is_valid_id(&operator) {
                anyhow::bail!("principal {operator:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ / + = -");
            }
            Ok(Gate::Run { operator, signed: Some(authorized) })
        }
        Err(error) => {
            audit_denial(bus, action, operator.unwrap_or("unknown"), &error.to_string()).await;
            Err(error.into())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Run an audit writer: append AuditEvents from the bus's `audit` topic to this
    /// writer's log (immutable segments under Object Lock) and sign checkpoints.
    Write(WriteArgs),
    /// Recompute every audit log (or one) from the store and check it against its
    /// signed checkpoints. Exits non-zero on any deleted, changed, reordered or missing entry.
    Verify(VerifyArgs),
    /// Print the verifier-key line for a checkpoint key (give it to auditors and to
    /// `vera audit verify --verifier-keys`).
    VerifierKey(SignerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SignerArgs {
    /// Unencrypted OpenSSH Ed25519 private key that signs checkpoints
    /// (`ssh-keygen -t ed25519 -N '' -f FILE`). Prefer --transit-key in production.
    #[arg(long, env = "VERA_CHECKPOINT_KEY", conflicts_with = "transit_key")]
    pub checkpoint_key: Option<PathBuf>,
    /// Sign checkpoints with this Vault/OpenBao Transit key (type ed25519), so the key never
    /// leaves Vault. VAULT_ADDR and VAULT_TOKEN (or VAULT_TOKEN_FILE) locate Vault.
    #[arg(long, env = "VERA_TRANSIT_KEY")]
    pub transit_key: Option<String>,
    /// Transit mount path.
    #[arg(long, env = "VERA_TRANSIT_MOUNT", default_value = "transit")]
    pub transit_mount: String,
    /// The key name on signature lines and in verifier keys.
    #[arg(long, env = "VERA_CHECKPOINT_KEY_NAME", default_value = "vera-audit")]
    pub key_name: String,
}

impl SignerArgs {
    /// The signer, and the verifier-key lines that check its signatures.
    pub(crate) async fn open(&self) -> anyhow::Result<(Arc<dyn NoteSigner>, Vec<String>)> {
        if let Some(path) = &self.checkpoint_key {
            let signer = KeyFileSigner::from_openssh_file(&self.key_name, path)?;
            let line = signer.verifier_key();
            return Ok((Arc::new(signer), vec![line]));
        }
        if let Some(key) = &self.transit_key {
            return self.transit(key).await;
        }
        anyhow::bail!("name a checkpoint signing key: --checkpoint-key FILE or --transit-key NAME")
    }

    #[cfg(feature = "vault")]
    async fn transit(&self, key: &str) -> anyhow::Result<(Arc<dyn NoteSigner>, Vec<String>)> {
        use vera_audit::vault::{TransitSigner, Vault, VaultConfig};
        let vault = Vault::connect(&VaultConfig::from_env()?)?;
        let signer = TransitSigner::new(vault, &self.transit_mount, key, &self.key_name).await?;
        let lines = signer.verifier_keys().await?;
        Ok((Arc::new(signer), lines))
    }

    #[cfg(not(feature = "vault"))]
    async fn transit(&self, _key: &str) -> anyhow::Result<(Arc<dyn NoteSigner>, Vec<String>)> {
        anyhow::bail!("this vera was built without Vault support; rebuild with `--features vault`")
    }
}

#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// This writer's log id, unique per writer (e.g. the pod name of a StatefulSet).
    /// Writers never coordinate: two with the same id cannot fork the log, one retries.
    #[arg(long, env = "VERA_AUDIT_LOG_ID")]
    pub log_id: String,
    #[command(flatten)]
    pub signer: SignerArgs,
    /// COMPLIANCE retention of audit segments and checkpoints, in days; 0 for none
    /// (stores without Object Lock only).
    #[arg(long, default_value_t = 3653)]
    pub retain_days: u32,
    /// Events per segment at most.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Stop when the audit topic is empty instead of running until Ctrl-C.
    #[arg(long)]
    pub until_idle: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Trusted checkpoint verifier keys, one per line (old keys stay listed after rotation).
    #[arg(long, env = "VERA_VERIFIER_KEYS")]
    pub verifier_keys: PathBuf,
    /// Only this log (default: every log under audit/logs/).
    #[arg(long)]
    pub log: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Write(args) => {
            let store = args.store.object_store().await?;
            let bus = args.store.bus(5).await?;
            let (signer, _) = args.signer.open().await?;
            let retention = (args.retain_days > 0).then_some(args.retain_days);
            let log = AuditLog::open(store, &args.log_id, signer, retention, Arc::new(SystemClock)).await?;
            let shutdown = crate::run::ctrl_c_token();
            let settings = WriterSettings { batch: args.batch, ..WriterSettings::default() };
            let stats = run_audit_writer(&log, bus.as_ref(), &settings, &shutdown, args.until_idle).await?;
            crate::run::close_bus(bus.as_ref()).await;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify(args) => {
            let store = args.store.object_store().await?;
            let verifiers = Verifiers::from_file(&args.verifier_keys)?;
            let logs = match &args.log {
                Some(log) => vec![log.clone()],
                None => list_logs(store.as_ref()).await?,
            };
            if logs.is_empty() {
                anyhow::bail!("no audit logs under audit/logs/ in this store");
            }
            let mut failed = 0;
            for log in logs {
                match verify_log(store.as_ref(), &log, &verifiers).await {
                    Ok(report) => println!("{}", serde_json::to_string(&report)?),
                    Err(error) => {
                        failed += 1;
                        println!("{}", serde_json::json!({"log": log, "error": error.to_string()}));
                        eprintln!("error: audit log {log}: {error}");
                    }
                }
            }
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        AuditCommand::VerifierKey(args) => {
            let (_, lines) = args.open().await?;
            for line in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Sign a request file with an unencrypted OpenSSH key, writing FILE.sig exactly as
    /// `ssh-keygen -Y sign -n vera -f KEY FILE` would (passphrase-protected keys and
    /// ssh-agent: use ssh-keygen itself).
    Sign {
        /// The OpenSSH private key (Ed25519 or RSA).
        #[arg(long)]
        key: PathBuf,
        /// The request file written by --emit-request.
        file: PathBuf,
    },
}

pub fn request(command: RequestCommand) -> anyhow::Result<ExitCode> {
    match command {
        RequestCommand::Sign { key, file } => {
            let key = read_private_key(&key)?;
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let _: Request = serde_json::from_slice(&bytes).context("not a VERA request")?;
            let signature = sign(&key, &bytes)?;
            let out = PathBuf::from(format!("{}.sig", file.display()));
            std::fs::write(&out, signature).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The directory to write (created; must be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// A file of `UID CREATED_AT` lines to export.
    #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
    pub list: Option<PathBuf>,
    /// Export every live file created at or after this time (RFC 3339)...
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    /// ...and before this time.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Who asks, for an unsigned export (signed ones take the principal).
    #[arg(long, env = "VERA_OPERATOR")]
    pub operator: Option<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn export_command(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (selection, mut request_args) = match (&args.list, &args.from, &args.to) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let files = crate::lifecycle::parse_list(&text)?;
            let listed: Vec<serde_json::Value> =
                files.iter().map(|(uid, at)| serde_json::json!([uid, at.to_rfc3339()])).collect();
            let mut map = serde_json::Map::new();
            map.insert("files".into(), listed.into());
            (Selection::Files(files), map)
        }
        (None, Some(from), Some(to)) => {
            let (from, to) = (Timestamp::parse(from)?, Timestamp::parse(to)?);
            if to <= from {
                anyhow::bail!("--to must be after --from");
            }
            let mut map = serde_json::Map::new();
            map.insert("from".into(), from.to_rfc3339().into());
            map.insert("to".into(), to.to_rfc3339().into());
            (Selection::Range { from, to }, map)
        }
        _ => anyhow::bail!("name the files with --list, or a time range with --from and --to"),
    };
    request_args.insert("out".into(), args.out.display().to_string().into());
    let store = args.store.object_store().await?;
    let bus = args.store.bus(5).await?;
    let gate = authorize(
        &args.auth,
        Action::Export,
        request_args,
        args.operator.as_deref(),
        store.as_ref(),
        Some(bus.as_ref()),
    )
    .await?;
    let Gate::Run { operator, signed } = gate else { return Ok(ExitCode::SUCCESS) };
    let now = SystemClock.now();
    let request = signed.as_ref().map(|authorized| {
        BTreeMap::from([
            ("nonce".to_owned(), authorized.request.nonce.clone()),
            ("principal".to_owned(), authorized.request.principal.clone()),
            ("fingerprint".to_owned(), authorized.fingerprint.clone()),
        ])
    });
    let routing = args.store.routing(store.as_ref()).await?;
    let (_, report) = export(&store, &routing, &selection, &args.out, now, request).await?;
    // The export itself is audited.
    let mut details = BTreeMap::new();
    details.insert("files".to_owned(), report.files.to_string());
    details.insert("excluded".to_owned(), report.excluded.to_string());
    details.insert("segments".to_owned(), report.segments.to_string());
    if let Some(authorized) = &signed {
        details.insert("key_fingerprint".to_owned(), authorized.fingerprint.clone());
    }
    let request_id = signed.as_ref().map(|a| a.request.nonce.clone());
    let event = AuditEvent {
        action: AuditAction::Export,
        outcome: AuditOutcome::Ok,
        at: now,
        actor: operator,
        request_id: request_id.clone(),
        uid: None,
        segment_key: None,
        details,
    };
    let id = format!("export/{}", request_id.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())));
    publish_audit(bus.as_ref(), id, now, event)
        .await
        .context("the export was written but its EXPORT audit event was not published")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// Check an export directory offline: every file's hash, its inclusion in its
    /// segment, each segment's audit anchor, and the signed checkpoints.
    Verify {
        /// The export directory (holds integrity_proof.json).
        dir: PathBuf,
        /// Trusted checkpoint verifier keys, one per line.
        #[arg(long, env = "VERA_VERIFIER_KEYS")]
        verifier_keys: PathBuf,
    },
    /// Check a signed attestation offline (`vera reconcile --attest FILE`): its signature
    /// against the trusted keys and its statement against the signed hash; prints the
    /// statement. Exits non-zero if either fails.
    VerifyAttestation {
        /// The attestation file.
        file: PathBuf,
        /// Trusted checkpoint verifier keys, one per line.
        #[arg(long, env = "VERA_VERIFIER_KEYS")]
        verifier_keys: PathBuf,
    },
}

pub fn proof(command: ProofCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProofCommand::Verify { dir, verifier_keys } => {
            let verifiers = Verifiers::from_file(&verifier_keys)?;
            match verify_export(&dir, &verifiers) {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    if !report.unanchored_segments.is_empty() {
                        // Their files are proven only against a Merkle root nothing signed.
                        eprintln!(
                            "error: {} segment(s) have no audit anchor (their PACK events were not yet checkpointed when exported): {}",
                            report.unanchored_segments.len(),
                            report.unanchored_segments.join(", ")
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        ProofCommand::VerifyAttestation { file, verifier_keys } => {
            let verifiers = Verifiers::from_file(&verifier_keys)?;
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            match vera_audit::attest::verify_attestation(&bytes, &verifiers) {
                Ok(verified) => {
                    println!("{}", serde_json::to_string_pretty(&verified)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BreakGlassOperation {
    /// Delete the object despite its GOVERNANCE retention.
    Delete,
    /// Shorten its GOVERNANCE retention to --until.
    ShortenRetention,
}

#[derive(Debug, Clone, Args)]
pub struct BreakGlassArgs {
    #[arg(value_enum)]
    pub operation: BreakGlassOperation,
    /// The object key (a segment, sidecar or any other object under GOVERNANCE retention).
    pub key: String,
    /// With shorten-retention: the new, earlier retain-until (RFC 3339).
    #[arg(long, required_if_eq("operation", "shorten-retention"))]
    pub until: Option<String>,
    /// The incident or change ticket; part of what both operators sign.
    #[arg(long)]
    pub ticket: String,
    /// A signed request (FILE and FILE.sig); give it twice, one per operator.
    #[arg(long = "signed-request", value_name = "FILE")]
    pub signed_requests: Vec<PathBuf>,
    /// Do not run: write the request for one operator to sign.
    #[arg(long, value_name = "FILE", requires = "principal", conflicts_with = "signed_requests")]
    pub emit_request: Option<PathBuf>,
    #[arg(long)]
    pub principal: Option<String>,
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub valid_for: Duration,
    #[arg(long, env = "VERA_ALLOWED_SIGNERS")]
    pub allowed_signers: Option<PathBuf>,
    #[arg(long, env = "VERA_ROLES")]
    pub roles: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Two-person GOVERNANCE bypass; see `vera_audit::breakglass`.
pub async fn break_glass(args: BreakGlassArgs) -> anyhow::Result<ExitCode> {
    use vera_audit::breakglass::{Operation, approve, execute};
    let operation = match args.operation {
        BreakGlassOperation::Delete => Operation::Delete { key: args.key.clone() },
        BreakGlassOperation::ShortenRetention => Operation::Shorten {
            key: args.key.clone(),
            until: Timestamp::parse(args.until.as_deref().context("shorten-retention needs --until")?)?,
        },
    };
    let now = SystemClock.now();
    if let Some(path) = &args.emit_request {
        let principal = args.principal.as_deref().context("--emit-request needs --principal")?;
        let request = Request::new(Action::BreakGlass, principal, now, args.valid_for, operation.args(&args.ticket))?;
        std::fs::write(path, request.to_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {}; a second operator emits and signs their own request for the same operation",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = args.store.object_store().await?;
    let bus = args.store.bus(5).await?;
    let (Some(signers), Some(roles)) = (&args.allowed_signers, &args.roles) else {
        anyhow::bail!("break-glass needs --allowed-signers and --roles (or VERA_ALLOWED_SIGNERS and VERA_ROLES)");
    };
    let approved = async {
        let [first, second] = args.signed_requests.as_slice() else {
            return Err(vera_audit::AuditError::Unsigned(format!(
                "break-glass needs two signed requests (--signed-request twice), got {}",
                args.signed_requests.len()
            )));
        };
        let authorizer = Authorizer::new(signers, roles)?;
        let requests = [SignedRequest::read(first)?, SignedRequest::read(second)?];
        approve(store.as_ref(), &authorizer, operation, &args.ticket, [&requests[0], &requests[1]], now).await
    }
    .await;
    let approved = match approved {
        Ok(approved) => approved,
        Err(error) => {
            audit_denial(Some(bus.as_ref()), Action::BreakGlass, "unknown", &error.to_string()).await;
            return Err(error.into());
        }
    };
    let (event, result) = execute(store.as_ref(), &approved, now).await;
    let id = format!("break-glass/{}", approved.approvers[0].request.nonce);
    let published = publish_audit(bus.as_ref(), id, now, event).await;
    result?;
    published.context("the bypass was done but its audit event was not published")?;
    println!(
        "break-glass {} of {} done, approved by {} and {}",
        match args.operation {
            BreakGlassOperation::Delete => "delete",
            BreakGlassOperation::ShortenRetention => "retention shortening",
        },
        args.key,
        approved.approvers[0].request.principal,
        approved.approvers[1].request.principal
    );
    Ok(ExitCode::SUCCESS)
}

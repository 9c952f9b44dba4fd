//! `vera rebuild`: the archive's contents and their proof, from the object store alone.
//!
//! After a disaster that took the source database, the bus and every worker, the bucket
//! still says everything: which files exist, where, with which hash, which are erased, and
//! that each segment is the one the audit log anchored. This command reads it back: every
//! segment's index (every hash, with `--deep`), every sidecar and erasure marker, and every
//! audit log's PACK, COMPACT and REPACK anchors. It writes the reader's view (one line per
//! file) and exits non-zero if anything is corrupt, or, with `--require-anchors`, if a
//! segment has no anchor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use vera_protocol::message::{AuditAction, Message};
use vera_protocol::routing::{ShardAddr, erasure_id, sidecar_key_of};
use vera_protocol::sidecar::Sidecar;
use vera_store::ObjectStore;
use vera_store::shards::ShardStore;

use crate::common::StoreArgs;

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// Write the reader's view here, one JSON object per line: uid, created_at, segment,
    /// blake3, raw_len and state (`live` or `erased`).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Read every segment whole and check every record's hash and the object hash, not
    /// just the indexes (one GET per segment and all its bytes).
    #[arg(long)]
    pub deep: bool,
    /// Fail when a segment has no PACK, COMPACT or REPACK anchor in the audit log (the
    /// audit writer must have caught up).
    #[arg(long)]
    pub require_anchors: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Default, Serialize)]
pub struct RebuildReport {
    pub segments: u64,
    pub staging_segments: u64,
    pub superseded_segments: u64,
    pub sidecars: u64,
    pub erasure_markers: u64,
    /// Files in the reader's view.
    pub files: u64,
    pub live: u64,
    pub erased: u64,
    /// Copies of a file found in more than one place (a staging copy next to its final
    /// one before `vera compact` tidies); each counted once above.
    pub redundant_copies: u64,
    pub audit_logs: u64,
    pub anchors: u64,
    /// Segments whose Merkle root no audit anchor names.
    pub unanchored: Vec<String>,
    /// What is corrupt or unreadable.
    pub corrupt: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ViewEntry {
    uid: String,
    created_at: String,
    segment: String,
    blake3: String,
    raw_len: u32,
    state: &'static str,
    #[serde(skip)]
    staging: bool,
}

pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<std::process::ExitCode> {
    let store = args.store.object_store().await?;
    let shards = ShardStore::new(std::sync::Arc::clone(&store));
    let mut report = RebuildReport::default();
    let listing = store.list("e").await?;
    let keys: BTreeSet<&str> = listing.iter().map(|m| m.key.as_str()).collect();
    let mut erased_ids: HashMap<ShardAddr, BTreeSet<String>> = HashMap::new();
    let mut segments = Vec::new();
    for meta in &listing {
        if let Some((prefix, _)) = meta.key.rsplit_once('/')
            && let Ok(addr) = ShardAddr::from_key_prefix(prefix)
            && let Some(id) = addr.erasure_id_of(&meta.key)
        {
            report.erasure_markers += 1;
            erased_ids.entry(addr).or_default().insert(id.to_owned());
        } else if ShardAddr::parse_any_segment_key(&meta.key).is_ok() {
            segments.push((meta, false));
        } else if ShardAddr::from_staging_key(&meta.key).is_ok() {
            segments.push((meta, true));
        }
    }
    let anchors = audit_anchors(store.as_ref(), &mut report).await?;
    let mut view: BTreeMap<String, ViewEntry> = BTreeMap::new();
    for (meta, staging) in segments {
        report.segments += 1;
        report.staging_segments += u64::from(staging);
        if args.deep
            && let Err(failure) = crate::inspect::verify_object(store.as_ref(), meta).await?
        {
            report.corrupt.push(failure);
            continue;
        }
        let index = match shards.index(&meta.key).await {
            Ok(index) => index,
            Err(error) => {
                report.corrupt.push(format!("{}: {error}", meta.key));
                continue;
            }
        };
        let root = vera_protocol::hex::encode(&index.footer().merkle_root);
        if !anchors.get(&meta.key).is_some_and(|roots| roots.contains(&root)) {
            report.unanchored.push(meta.key.clone());
        }
        let sidecar_key = sidecar_key_of(&meta.key);
        let sidecar = if keys.contains(sidecar_key.as_str()) {
            report.sidecars += 1;
            match store.get(&sidecar_key).await.map(|got| Sidecar::decode(&got.body)) {
                Ok(Ok(sidecar)) => Some(sidecar),
                Ok(Err(error)) => {
                    report.corrupt.push(format!("{sidecar_key}: {error}"));
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        } else {
            None
        };
        if sidecar.as_ref().is_some_and(|s| s.superseded.is_some()) {
            // A repack moved its live files to the successor, which is listed too.
            report.superseded_segments += 1;
            continue;
        }
        let (addr, _) = match ShardAddr::from_staging_key(&meta.key) {
            Ok((addr, _)) => (addr, 0),
            Err(_) => ShardAddr::parse_any_segment_key(&meta.key).map(|(addr, generation, _)| (addr, generation))?,
        };
        for file in index.files() {
            let erased = sidecar.as_ref().is_some_and(|s| s.is_tombstoned(file.uid))
                || erased_ids.get(&addr).is_some_and(|ids| ids.contains(&erasure_id(file.uid)));
            let entry = ViewEntry {
                uid: file.uid.to_owned(),
                created_at: vera_protocol::Timestamp::from_micros(file.entry.created_at_micros)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
                segment: meta.key.clone(),
                blake3: vera_protocol::hex::encode(&file.entry.content_hash),
                raw_len: file.entry.raw_len,
                state: if erased { "erased" } else { "live" },
                staging,
            };
            match view.get(file.uid) {
                None => {
                    view.insert(entry.uid.clone(), entry);
                }
                Some(held) => {
                    report.redundant_copies += 1;
                    // A final copy is what a reader serves; a staging one waits for compaction.
                    if held.staging && !staging {
                        view.insert(entry.uid.clone(), entry);
                    }
                }
            }
        }
    }
    report.files = view.len() as u64;
    report.erased = view.values().filter(|e| e.state == "erased").count() as u64;
    report.live = report.files - report.erased;
    if let Some(path) = &args.manifest {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for entry in view.values() {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    let failed = !report.corrupt.is_empty() || (args.require_anchors && !report.unanchored.is_empty());
    Ok(if failed { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}

/// Segment key → the Merkle roots the audit logs anchor for it (PACK and COMPACT name the
/// segment; REPACK names its new segment).
async fn audit_anchors(
    store: &dyn ObjectStore,
    report: &mut RebuildReport,
) -> anyhow::Result<HashMap<String, BTreeSet<String>>> {
    let mut anchors: HashMap<String, BTreeSet<String>> = HashMap::new();
    for log in vera_audit::log::list_logs(store).await? {
        report.audit_logs += 1;
        let entries = match vera_audit::log::read_entries(store, &log).await {
            Ok(entries) => entries,
            Err(error) => {
                report.corrupt.push(format!("audit log {log}: {error}"));
                continue;
            }
        };
        for found in entries {
            let Message::AuditEvent(event) = found.envelope.message else { continue };
            let anchor = match event.action {
                AuditAction::Pack | AuditAction::Compact => {
                    event.segment_key.zip(event.details.get("merkle_root").cloned())
                }
                AuditAction::Repack => {
                    event.details.get("new_segment").cloned().zip(event.details.get("new_merkle_root").cloned())
                }
                _ => None,
            };
            if let Some((key, root)) = anchor {
                report.anchors += 1;
                anchors.entry(key).or_default().insert(root);
            }
        }
    }
    Ok(anchors)
}

//! Auditor exports: the requested files plus `integrity_proof.json`, and the offline
//! verifier an auditor runs on their own machine (`vera proof verify`).
//!
//! An export directory holds `files/<n>` (the bytes of each exported file) and
//! `integrity_proof.json` (see FORMAT.md §9). The chain an auditor checks, with nothing
//! but the directory and the trusted checkpoint verifier keys:
//!
//! 1. each file's BLAKE3 equals its `blake3`;
//! 2. that hash's leaf, with `inclusion_proof`, gives the segment's `merkle_root`;
//! 3. the segment's `merkle_root` and `object_blake3` are what its PACK or REPACK audit
//!    anchor recorded, and that anchor entry, with its inclusion proof, gives the root of
//!    a checkpoint of its audit log;
//! 4. the checkpoint note is signed by a trusted key;
//! 5. for a file that a repack moved, the REPACK anchors of every older segment are
//!    included and proven the same way.
//!
//! The Object Lock state (mode, retain-until, legal hold, version id) is read back from
//! S3 with a HEAD at export time and reported as is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vera_protocol::Timestamp;
use vera_protocol::merkle::{Hash, inclusion_proof, leaf_hash, root_of_leaf_hashes, verify_inclusion};
use vera_protocol::message::{AuditAction, Message};
use vera_protocol::routing::{RoutingTable, ShardAddr};
use vera_protocol::shard::reader::{ReadLimits, SegmentIndex};
use vera_store::ObjectStore;
use vera_store::shards::{ShardStore, StoreSidecars, sidecar_of};

use crate::AuditError;
use crate::log::{FoundEntry, latest_checkpoint, list_logs, read_entries};
use crate::note::{Checkpoint, Verifiers};

pub const PROOF_FILE: &str = "integrity_proof.json";
pub const PROOF_FORMAT: &str = "vera-integrity-proof";

/// Which files to export.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Files named by uid and creation time.
    Files(Vec<(String, Timestamp)>),
    /// Every live file created in `[from, to)`: lists the current segments and reads
    /// each index once.
    Range { from: Timestamp, to: Timestamp },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityProof {
    pub format: String,
    pub version: u32,
    pub exported_at: Timestamp,
    /// The signed request's nonce, principal and key fingerprint, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<BTreeMap<String, String>>,
    pub files: Vec<ProofFile>,
    pub segments: BTreeMap<String, ProofSegment>,
    /// Signed checkpoint notes, verbatim, one per audit log an anchor comes from.
    pub checkpoints: BTreeMap<String, ProofCheckpoint>,
    /// Requested files that were not exported, with the reason (erased, not found).
    #[serde(default)]
    pub excluded: Vec<Excluded>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofFile {
    pub uid: String,
    pub created_at: Timestamp,
    /// Path inside the export directory.
    pub path: String,
    pub content_type: String,
    pub bytes: u64,
    #[serde(with = "vera_protocol::hex")]
    pub blake3: Hash,
    pub segment_key: String,
    /// Position of the file in the segment's index: its leaf index in the Merkle tree.
    pub leaf_index: u64,
    #[serde(with = "hex_hashes")]
    pub inclusion_proof: Vec<Hash>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofSegment {
    #[serde(with = "vera_protocol::hex")]
    pub object_blake3: Hash,
    #[serde(with = "vera_protocol::hex")]
    pub merkle_root: Hash,
    pub entry_count: u64,
    pub object_lock: ObjectLockState,
    /// The PACK or REPACK audit entry that recorded this segment's hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<ProofAnchor>,
    /// Older segments this one was repacked from, newest first, each with its REPACK
    /// anchor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repacked_from: Vec<RepackLink>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockState {
    pub mode: Option<String>,
    pub retain_until: Option<Timestamp>,
    pub legal_hold: bool,
    pub version_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepackLink {
    pub segment_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<ProofAnchor>,
}

/// An audit log entry and its inclusion proof against a checkpoint in the proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofAnchor {
    pub log: String,
    pub index: u64,
    /// The entry line, verbatim (its leaf is `leaf_hash` of these UTF-8 bytes).
    pub entry: String,
    pub tree_size: u64,
    #[serde(with = "hex_hashes")]
    pub inclusion_proof: Vec<Hash>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofCheckpoint {
    pub size: u64,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Excluded {
    pub uid: String,
    pub created_at: Timestamp,
    pub reason: String,
}

mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serializer};
    use vera_protocol::merkle::Hash;

    pub fn serialize<S: Serializer>(hashes: &[Hash], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(hashes.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Hash>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| {
                let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
                <Hash>::try_from(bytes.as_slice()).map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))
            })
            .collect()
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    pub files: u64,
    pub bytes: u64,
    pub segments: u64,
    pub anchored_segments: u64,
    pub excluded: u64,
}

/// The audit logs' anchors, indexed for the export: every PACK and REPACK entry by the
/// segment key it names, with the log's leaves to prove it.
struct Anchors {
    by_segment: BTreeMap<String, (String, u64, FoundEntry)>,
    leaves: BTreeMap<String, Vec<Hash>>,
    checkpoints: BTreeMap<String, ProofCheckpoint>,
}

impl Anchors {
    async fn load(store: &dyn ObjectStore) -> Result<Anchors, AuditError> {
        let mut anchors =
            Anchors { by_segment: BTreeMap::new(), leaves: BTreeMap::new(), checkpoints: BTreeMap::new() };
        for log in list_logs(store).await? {
            let Some((size, note)) = latest_checkpoint(store, &log).await? else { continue };
            let entries = read_entries(store, &log).await?;
            let leaves: Vec<Hash> = entries.iter().map(|found| leaf_hash(&found.entry)).collect();
            for found in entries {
                if found.index >= size {
                    break;
                }
                let Message::AuditEvent(event) = &found.envelope.message else { continue };
                let Some(segment) = &event.segment_key else { continue };
                // `pack:<key>`: the PACK that wrote a segment; `repack:<old>`: the REPACK
                // of an old segment; `new:<key>`: the REPACK that wrote a segment.
                let lookups = match event.action {
                    AuditAction::Pack => vec![format!("pack:{segment}")],
                    AuditAction::Repack => {
                        let mut lookups = vec![format!("repack:{segment}")];
                        lookups.extend(event.details.get("new_segment").map(|new| format!("new:{new}")));
                        lookups
                    }
                    _ => Vec::new(),
                };
                for lookup in lookups {
                    anchors.by_segment.entry(lookup).or_insert((log.clone(), size, found.clone()));
                }
            }
            anchors.leaves.insert(log.clone(), leaves);
            anchors.checkpoints.insert(log, ProofCheckpoint { size, note });
        }
        Ok(anchors)
    }

    fn proof(&self, lookup: &str) -> Option<ProofAnchor> {
        let (log, size, found) = self.by_segment.get(lookup)?;
        let leaves = self.leaves.get(log)?;
        let proof = inclusion_proof(&leaves[..*size as usize], found.index as usize)?;
        Some(ProofAnchor {
            log: log.clone(),
            index: found.index,
            entry: String::from_utf8_lossy(&found.entry).into_owned(),
            tree_size: *size,
            inclusion_proof: proof,
        })
    }
}

struct LoadedSegment {
    body: bytes::Bytes,
    index: SegmentIndex,
    positions: BTreeMap<String, u64>,
    leaves: Vec<Hash>,
}

/// Writes the selected files and `integrity_proof.json` into `out_dir` (created; must be
/// empty). Tombstoned files are listed as excluded, never exported.
pub async fn export(
    shared: &std::sync::Arc<dyn ObjectStore>,
    routing: &RoutingTable,
    selection: &Selection,
    out_dir: &Path,
    exported_at: Timestamp,
    request: Option<BTreeMap<String, String>>,
) -> Result<(IntegrityProof, ExportReport), AuditError> {
    let io = |what: &str, e: std::io::Error| AuditError::Export(format!("{what}: {e}"));
    std::fs::create_dir_all(out_dir.join("files")).map_err(|e| io("creating the export directory", e))?;
    if std::fs::read_dir(out_dir.join("files")).map_err(|e| io("reading the export directory", e))?.next().is_some()
        || out_dir.join(PROOF_FILE).exists()
    {
        return Err(AuditError::Export(format!("{} is not empty", out_dir.display())));
    }
    let store = shared.as_ref();
    let shards = ShardStore::new(shared.clone());
    let sidecars = StoreSidecars(store);
    // (uid, created_at) → segment key, for the files to export.
    let mut wanted: Vec<(String, Timestamp, String)> = Vec::new();
    let mut excluded = Vec::new();
    match selection {
        Selection::Files(files) => {
            for (uid, created_at) in files {
                match shards.locate(routing, uid, *created_at, &sidecars).await {
                    Ok(located) if located.is_tombstoned(uid) => excluded.push(Excluded {
                        uid: uid.clone(),
                        created_at: *created_at,
                        reason: "erased (tombstoned)".into(),
                    }),
                    Ok(located) => {
                        let stored_at = located.index.find(uid).map(|f| f.entry.created_at_micros);
                        if stored_at != Some(created_at.as_micros()) {
                            excluded.push(Excluded {
                                uid: uid.clone(),
                                created_at: *created_at,
                                reason: "no file with this uid was created at this time".into(),
                            });
                        } else {
                            wanted.push((uid.clone(), *created_at, located.key));
                        }
                    }
                    Err(error) if error.is_not_found() => excluded.push(Excluded {
                        uid: uid.clone(),
                        created_at: *created_at,
                        reason: "not found".into(),
                    }),
                    Err(error) => return Err(AuditError::Export(format!("locating {uid}: {error}"))),
                }
            }
        }
        Selection::Range { from, to } => {
            // Generations first, then staging segments (ADR 0005): a staged copy of a file
            // a generation holds is not exported twice.
            let mut listed = store.list("e").await?;
            listed.retain(|meta| meta.key.ends_with(".vera"));
            listed.sort_by_key(|meta| ShardAddr::from_staging_key(&meta.key).is_ok());
            let mut chosen: std::collections::HashSet<String> = std::collections::HashSet::new();
            for meta in listed {
                let staged = ShardAddr::from_staging_key(&meta.key).is_ok();
                let sidecar = sidecar_of(store, &meta.key).await.map_err(|e| AuditError::Export(e.to_string()))?;
                if sidecar.as_ref().is_some_and(|s| s.superseded.is_some()) {
                    continue; // its live files are in the successor, which is listed too
                }
                let index = shards.index(&meta.key).await.map_err(|e| AuditError::Export(e.to_string()))?;
                for file in index.files() {
                    let created_at = Timestamp::from_micros(file.entry.created_at_micros)
                        .map_err(|e| AuditError::Export(e.to_string()))?;
                    if created_at < *from || created_at >= *to {
                        continue;
                    }
                    if !chosen.insert(file.uid.to_owned()) && staged {
                        continue;
                    }
                    if sidecar.as_ref().is_some_and(|s| s.is_tombstoned(file.uid)) {
                        excluded.push(Excluded {
                            uid: file.uid.to_owned(),
                            created_at,
                            reason: "erased (tombstoned)".into(),
                        });
                    } else {
                        wanted.push((file.uid.to_owned(), created_at, meta.key.clone()));
                    }
                }
            }
        }
    }

    let anchors = Anchors::load(store).await?;
    let limits = ReadLimits::default();
    let mut loaded: BTreeMap<String, LoadedSegment> = BTreeMap::new();
    let mut segments: BTreeMap<String, ProofSegment> = BTreeMap::new();
    let mut files = Vec::new();
    let mut total_bytes = 0u64;
    let mut used_logs = BTreeSet::new();
    for (number, (uid, created_at, key)) in wanted.iter().enumerate() {
        if !loaded.contains_key(key) {
            let got = store.get(key).await?;
            let object_len = got.body.len() as u64;
            let index = SegmentIndex::open_from(&mut Cursor::new(&got.body[..]), object_len, 1 << 20, &limits)
                .map_err(|e| AuditError::Export(format!("{key}: {e}")))?;
            let positions = index.files().enumerate().map(|(at, file)| (file.uid.to_owned(), at as u64)).collect();
            let leaves: Vec<Hash> = index.files().map(|file| leaf_hash(&file.entry.content_hash)).collect();
            if root_of_leaf_hashes(&leaves) != index.footer().merkle_root {
                return Err(AuditError::Export(format!("{key}: files do not hash to the footer's Merkle root")));
            }
            let meta = store.head(key).await?;
            let mut segment = ProofSegment {
                object_blake3: *blake3::hash(&got.body).as_bytes(),
                merkle_root: index.footer().merkle_root,
                entry_count: index.len() as u64,
                object_lock: ObjectLockState {
                    mode: meta.retention.as_ref().map(|r| format!("{:?}", r.mode).to_uppercase()),
                    retain_until: meta.retention.as_ref().map(|r| r.retain_until),
                    legal_hold: meta.legal_hold,
                    version_id: meta.version_id.clone(),
                },
                anchor: anchors.proof(&format!("pack:{key}")).or_else(|| anchors.proof(&format!("new:{key}"))),
                repacked_from: Vec::new(),
            };
            // Walk back through repacks: each older segment's REPACK anchor.
            let mut current = sidecar_of(store, key).await.map_err(|e| AuditError::Export(e.to_string()))?;
            let mut hops = 0;
            while let Some(old) = current.as_ref().and_then(|s| s.repacked_from.clone()) {
                segment
                    .repacked_from
                    .push(RepackLink { segment_key: old.clone(), anchor: anchors.proof(&format!("repack:{old}")) });
                current = sidecar_of(store, &old).await.map_err(|e| AuditError::Export(e.to_string()))?;
                hops += 1;
                if hops > 64 {
                    return Err(AuditError::Export(format!("{key}: more than 64 repacks in its history")));
                }
            }
            for anchor in segment.anchor.iter().chain(segment.repacked_from.iter().filter_map(|l| l.anchor.as_ref())) {
                used_logs.insert(anchor.log.clone());
            }
            segments.insert(key.clone(), segment);
            loaded.insert(key.clone(), LoadedSegment { body: got.body, index, positions, leaves });
        }
        let segment = &loaded[key];
        let Some(file) = segment.index.find(uid) else {
            return Err(AuditError::Export(format!("{uid} vanished from {key}")));
        };
        let range = file.record_range();
        let record = segment
            .body
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| AuditError::Export(format!("{key}: record of {uid} is out of bounds")))?;
        let bytes =
            segment.index.decode(file, record, &limits).map_err(|e| AuditError::Export(format!("{key}: {e}")))?;
        let path = format!("files/{number:08}");
        std::fs::write(out_dir.join(&path), &bytes).map_err(|e| io("writing a file", e))?;
        let leaf_index = segment.positions[uid.as_str()];
        files.push(ProofFile {
            uid: uid.clone(),
            created_at: *created_at,
            path,
            content_type: file.content_type.to_owned(),
            bytes: bytes.len() as u64,
            blake3: file.entry.content_hash,
            segment_key: key.clone(),
            leaf_index,
            inclusion_proof: inclusion_proof(&segment.leaves, leaf_index as usize).unwrap_or_default(),
        });
        total_bytes += bytes.len() as u64;
    }
    let checkpoints = anchors
        .checkpoints
        .iter()
        .filter(|(log, _)| used_logs.contains(*log))
        .map(|(l, c)| (l.clone(), c.clone()))
        .collect();
    let proof = IntegrityProof {
        format: PROOF_FORMAT.into(),
        version: 1,
        exported_at,
        request,
        files,
        segments,
        checkpoints,
        excluded,
    };
    let text = serde_json::to_vec_pretty(&proof).map_err(|e| AuditError::Export(e.to_string()))?;
    std::fs::write(out_dir.join(PROOF_FILE), text).map_err(|e| io("writing integrity_proof.json", e))?;
    let report = ExportReport {
        files: proof.files.len() as u64,
        bytes: total_bytes,
        segments: proof.segments.len() as u64,
        anchored_segments: proof.segments.values().filter(|s| s.anchor.is_some()).count() as u64,
        excluded: proof.excluded.len() as u64,
    };
    Ok((proof, report))
}

/// What the verifier checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProofReport {
    pub files: u64,
    pub segments: u64,
    pub anchors: u64,
    pub checkpoints: u64,
    /// Segments exported without an audit anchor (their log had no checkpoint yet).
    pub unanchored_segments: Vec<String>,
}

/// Checks an export directory offline. Every failure names what does not match.
pub fn verify_export(dir: &Path, verifiers: &Verifiers) -> Result<ProofReport, AuditError> {
    let fail = |reason: String| AuditError::Proof(reason);
    let text = std::fs::read(dir.join(PROOF_FILE)).map_err(|e| fail(format!("cannot read {PROOF_FILE}: {e}")))?;
    let proof: IntegrityProof = serde_json::from_slice(&text).map_err(|e| fail(format!("{PROOF_FILE}: {e}")))?;
    if proof.format != PROOF_FORMAT || proof.version != 1 {
        return Err(fail(format!("unknown proof format {:?} version {}", proof.format, proof.version)));
    }
    let mut roots: BTreeMap<String, (u64, Hash)> = BTreeMap::new();
    for (log, checkpoint) in &proof.checkpoints {
        let opened = Checkpoint::open(&checkpoint.note, verifiers)
            .map_err(|e| fail(format!("checkpoint of audit log {log}: {e}")))?;
        if opened.log != *log || opened.size != checkpoint.size {
            return Err(fail(format!("checkpoint of audit log {log} signs another log or size")));
        }
        roots.insert(log.clone(), (opened.size, opened.root));
    }
    let check_anchor = |anchor: &ProofAnchor, what: &str| -> Result<vera_protocol::message::AuditEvent, AuditError> {
        let Some((size, root)) = roots.get(&anchor.log) else {
            return Err(fail(format!("{what}: no checkpoint for audit log {}", anchor.log)));
        };
        if anchor.tree_size != *size
            || !verify_inclusion(
                &leaf_hash(anchor.entry.as_bytes()),
                anchor.index,
                *size,
                &anchor.inclusion_proof,
                root,
            )
        {
            return Err(fail(format!("{what}: audit entry {} is not in the signed log {}", anchor.index, anchor.log)));
        }
        let envelope = vera_protocol::message::Envelope::decode(anchor.entry.as_bytes())
            .map_err(|e| fail(format!("{what}: audit entry: {e}")))?;
        match envelope.message {
            Message::AuditEvent(event) => Ok(event),
            _ => Err(fail(format!("{what}: anchor is not an audit event"))),
        }
    };
    let mut anchors = 0u64;
    let mut unanchored = Vec::new();
    for (key, segment) in &proof.segments {
        match &segment.anchor {
            Some(anchor) => {
                let event = check_anchor(anchor, key)?;
                let hex = |h: &Hash| vera_protocol::hex::encode(h);
                let recorded = match event.action {
                    AuditAction::Pack if event.segment_key.as_deref() == Some(key) => {
                        (event.details.get("object_blake3").cloned(), event.details.get("merkle_root").cloned())
                    }
                    AuditAction::Repack if event.details.get("new_segment") == Some(key) => {
                        (event.details.get("new_segment_hash").cloned(), event.details.get("new_merkle_root").cloned())
                    }
                    _ => return Err(fail(format!("{key}: its anchor is about another segment"))),
                };
                if recorded.0.as_deref() != Some(hex(&segment.object_blake3).as_str()) {
                    return Err(fail(format!("{key}: object hash differs from the one its audit anchor recorded")));
                }
                if let Some(root) = recorded.1
                    && root != hex(&segment.merkle_root)
                {
                    return Err(fail(format!("{key}: Merkle root differs from the one its audit anchor recorded")));
                }
                anchors += 1;
            }
            None => unanchored.push(key.clone()),
        }
        for link in &segment.repacked_from {
            if let Some(anchor) = &link.anchor {
                let event = check_anchor(anchor, &link.segment_key)?;
                if event.action != AuditAction::Repack
                    || event.segment_key.as_deref() != Some(link.segment_key.as_str())
                {
                    return Err(fail(format!("{}: its repack anchor is about another segment", link.segment_key)));
                }
                anchors += 1;
            }
        }
    }
    for file in &proof.files {
        let Some(segment) = proof.segments.get(&file.segment_key) else {
            return Err(fail(format!("{}: segment {} is not in the proof", file.uid, file.segment_key)));
        };
        if file.path.contains("..") || file.path.starts_with('/') {
            return Err(fail(format!("{}: path {:?} leaves the export", file.uid, file.path)));
        }
        let bytes = std::fs::read(dir.join(&file.path)).map_err(|e| fail(format!("{}: {e}", file.path)))?;
        if *blake3::hash(&bytes).as_bytes() != file.blake3 || bytes.len() as u64 != file.bytes {
            return Err(fail(format!("{} ({}): content does not match its BLAKE3", file.uid, file.path)));
        }
        if !verify_inclusion(
            &leaf_hash(&file.blake3),
            file.leaf_index,
            segment.entry_count,
            &file.inclusion_proof,
            &segment.merkle_root,
        ) {
            return Err(fail(format!("{}: not included in segment {}'s Merkle root", file.uid, file.segment_key)));
        }
    }
    Ok(ProofReport {
        files: proof.files.len() as u64,
        segments: proof.segments.len() as u64,
        anchors,
        checkpoints: proof.checkpoints.len() as u64,
        unanchored_segments: unanchored,
    })
}

//! Repack: rewrite a segment without the files it no longer has to keep.
//!
//! A segment is immutable and under Object Lock, so erasing a file's bytes means writing a
//! new segment with the live files and retiring the old one. Every step is idempotent and
//! leaves state on S3 that the next step (or a rerun after a crash) picks up:
//!
//! 1. **Plan.** The old sidecar gets a [`RepackPlan`] by compare-and-swap: the target key
//!    (`…/g000000.r1.vera`, one round past the old one) and the uids to drop, fixed now —
//!    tombstoned files under neither a retention extension nor a legal hold. A rerun finds
//!    the plan and follows it, so it rebuilds the same segment even if more files were
//!    tombstoned since. With nothing to drop there is no plan and nothing happens.
//! 2. **Write.** The old segment is read once (whole), every kept file is decoded and
//!    checked against its BLAKE3, and the new segment is built deterministically and
//!    written create-if-absent, with retention at least the old segment's and at least
//!    every moved file's extension, and a legal hold if any moved file is held. If the
//!    target already exists (an earlier attempt, or a concurrent repacker) it must hold
//!    exactly the planned files with the same content hashes, or the repack stops with an
//!    error.
//! 3. **Anchor.** A REPACK audit event links the old and new segment hashes and carries
//!    the Merkle root of the moved uids (and of the dropped ones); a `ShardSealed` event
//!    announces the new segment. Envelope ids derive from the old key, so a rerun publishes
//!    recognisable duplicates.
//! 4. **Supersede.** The new segment's sidecar is written as the old one's state for the
//!    moved files ([`Sidecar::inherit`]), then the old sidecar gets `superseded` by
//!    compare-and-swap. Lifecycle operations that raced in between make the swap fail and
//!    the step starts again from a fresh read; once it succeeds the old sidecar is frozen
//!    and every later operation goes to the new segment's sidecar.
//! 5. **Archive.** The old segment's legal hold, if any, is released (its held files are
//!    held in the new segment), and it is tagged [`ARCHIVE_TAG`]` = superseded`; the
//!    bucket's lifecycle rule (installed by `vera setup-bucket`) moves tagged objects to
//!    the archive storage class. It stays under its own retention until that expires.
//!
//! Readers never see a file twice or miss one: until step 4 they read the old segment;
//! from then on they follow the `superseded` link (see `ShardStore::locate`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use bytes::Bytes;
use vera_bus::topics;
use vera_protocol::Timestamp;
use vera_protocol::compress::CompressionPolicy;
use vera_protocol::merkle::{self, Hash};
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Message, ShardSealed};
use vera_protocol::routing::{ShardAddr, sidecar_key_of};
use vera_protocol::shard::{FileInput, SegmentIndex, SegmentSettings, SegmentWriter};
use vera_protocol::sidecar::{Change, RepackPlan, Sidecar, Superseded};
use vera_store::shards::META_OBJECT_HASH;
use vera_store::{LockMode, PutOptions, Retention, StoreErrorKind};

use crate::{Lifecycle, LifecycleError};

/// Object tag a superseded segment gets; the archive lifecycle rule filters on it.
pub const ARCHIVE_TAG: (&str, &str) = ("vera-state", "superseded");

/// How the repacked segment is built and locked.
#[derive(Debug, Clone, PartialEq)]
pub struct RepackSettings {
    pub compression: CompressionPolicy,
    pub max_file_bytes: u64,
    /// Lock mode for the new segment when the old one has no retention but a moved file
    /// has an extension. Otherwise the old segment's mode is kept.
    pub default_mode: LockMode,
    /// Tag the old segment for the archive lifecycle rule (step 5).
    pub archive: bool,
}

impl Default for RepackSettings {
    fn default() -> Self {
        RepackSettings {
            compression: CompressionPolicy::default(),
            max_file_bytes: 256 * 1024 * 1024,
            default_mode: LockMode::Compliance,
            archive: true,
        }
    }
}

/// What a repack did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepackReport {
    pub old_key: String,
    /// `None` when every file was dropped, or nothing was to be dropped.
    pub new_key: Option<String>,
    pub moved: u64,
    pub dropped: u64,
    /// Tombstoned files kept because of retention or a legal hold (hidden, not erased).
    pub kept_tombstoned: u64,
    #[serde(serialize_with = "vera_protocol::hex::option::serialize")]
    pub moved_uids_root: Option<Hash>,
    /// False when there was nothing to drop: the segment was left alone.
    pub repacked: bool,
    /// True when an earlier run had already finished every step but the archive tag.
    pub already_superseded: bool,
}

/// The new segment, built or found.
struct Written {
    key: String,
    hash: Hash,
    version_id: Option<String>,
    merkle_root: Hash,
    files: u64,
    raw_bytes: u64,
    object_bytes: u64,
    retention: Option<Retention>,
}

impl Lifecycle {
    /// Repacks one segment; see the module docs. Safe to run again after a crash at any
    /// point, and concurrently with itself and with deletes, retains and holds.
    pub async fn repack(
        &self,
        segment_key: &str,
        request_id: &str,
        settings: &RepackSettings,
    ) -> Result<RepackReport, LifecycleError> {
        if !vera_protocol::ids::is_valid_id(request_id) {
            return Err(LifecycleError::InvalidRequest(format!("request_id {request_id:?} is not a valid id")));
        }
        let (addr, generation, round) = ShardAddr::parse_any_segment_key(segment_key)
            .map_err(|e| LifecycleError::InvalidRequest(format!("{segment_key:?} is not a segment key: {e}")))?;
        let index = self.shards.index(segment_key).await?;
        let now = self.clock.now();
        let target_key = addr.repacked_segment_key(generation, round + 1);

        // 1. Plan (or find the plan of an earlier run).
        let planned = self
            .update_sidecar(segment_key, |sidecar| {
                if sidecar.repack.is_some() {
                    return Ok(Change::Unchanged);
                }
                let dropped: BTreeSet<String> = index
                    .files()
                    .filter(|file| sidecar.is_tombstoned(file.uid) && !sidecar.must_keep(file.uid, now))
                    .map(|file| file.uid.to_owned())
                    .collect();
                if dropped.is_empty() {
                    return Ok(Change::Unchanged);
                }
                sidecar.repack = Some(RepackPlan {
                    target_key: target_key.clone(),
                    dropped,
                    planned_at: now,
                    request_id: request_id.to_owned(),
                });
                Ok(Change::Changed)
            })
            .await;
        let (_, sidecar) = planned?;
        if sidecar.superseded.is_some() {
            // Steps 1 to 4 are done; only the archive tag may be missing.
            self.archive(segment_key, settings).await?;
            return Ok(report_of(segment_key, &index, &sidecar, true));
        }
        let Some(plan) = sidecar.repack.clone() else {
            tracing::info!(segment = %segment_key, "nothing to drop: segment left as it is");
            return Ok(RepackReport {
                old_key: segment_key.to_owned(),
                new_key: None,
                moved: index.len() as u64,
                dropped: 0,
                kept_tombstoned: index.files().filter(|f| sidecar.is_tombstoned(f.uid)).count() as u64,
                moved_uids_root: None,
                repacked: false,
                already_superseded: false,
            });
        };
        let moved: BTreeSet<String> =
            index.files().map(|file| file.uid.to_owned()).filter(|uid| !plan.dropped.contains(uid)).collect();

        // 2. Write the new segment (or check the one an earlier run wrote).
        let old_meta = self.shards.store().head(segment_key).await?;
        let old_hash = object_hash(&old_meta.metadata, segment_key)?;
        if old_hash != sidecar.segment_hash {
            return Err(repack_error(segment_key, "its sidecar belongs to another object (hash mismatch)"));
        }
        let written = if moved.is_empty() {
            None
        } else {
            Some(self.write_repacked(&plan, addr, generation, &index, &moved, &sidecar, &old_meta, settings).await?)
        };

        // 3. Anchor in the audit log.
        let moved_list: Vec<&str> = moved.iter().map(String::as_str).collect();
        let dropped_list: Vec<&str> = plan.dropped.iter().map(String::as_str).collect();
        let moved_root = merkle::root(&moved_list);
        let mut details = BTreeMap::from([
            ("old_segment_hash".to_owned(), vera_protocol::hex::encode(&old_hash)),
            ("moved_files".to_owned(), moved.len().to_string()),
            ("moved_uids_merkle_root".to_owned(), vera_protocol::hex::encode(&moved_root)),
            ("dropped_files".to_owned(), plan.dropped.len().to_string()),
            ("dropped_uids_merkle_root".to_owned(), vera_protocol::hex::encode(&merkle::root(&dropped_list))),
        ]);
        if let Some(version) = &old_meta.version_id {
            details.insert("old_version_id".to_owned(), version.clone());
        }
        if let Some(new) = &written {
            details.insert("new_segment".to_owned(), new.key.clone());
            details.insert("new_segment_hash".to_owned(), vera_protocol::hex::encode(&new.hash));
            details.insert("new_merkle_root".to_owned(), vera_protocol::hex::encode(&new.merkle_root));
            if let Some(version) = &new.version_id {
                details.insert("new_version_id".to_owned(), version.clone());
            }
        }
        let anchor = Message::AuditEvent(AuditEvent {
            action: AuditAction::Repack,
            outcome: AuditOutcome::Ok,
            at: plan.planned_at,
            actor: "repack".to_owned(),
            request_id: Some(plan.request_id.clone()),
            uid: None,
            segment_key: Some(segment_key.to_owned()),
            details,
        });
        self.publish(topics::AUDIT, format!("repack-anchor/{segment_key}"), now, anchor).await?;
        if let Some(new) = &written {
            let sealed = Message::ShardSealed(ShardSealed {
                task_id: format!("repack/{segment_key}"),
                addr,
                generation,
                key: new.key.clone(),
                version_id: new.version_id.clone(),
                object_hash: new.hash,
                merkle_root: new.merkle_root,
                files: new.files,
                raw_bytes: new.raw_bytes,
                object_bytes: new.object_bytes,
                retain_until: new.retention.map(|r| r.retain_until),
                sealed_at: plan.planned_at,
            });
            self.publish(topics::EVENTS, format!("sealed/{}", new.key), now, sealed).await?;
        }

        // 4. Supersede: hand the sidecar state over, then freeze the old sidecar.
        self.supersede(segment_key, &plan, written.as_ref().map(|w| (w.key.as_str(), w.hash)), &moved, now).await?;

        // 5. Archive.
        self.archive(segment_key, settings).await?;
        let final_sidecar = crate::sidecar_of(self.shards.store().as_ref(), segment_key).await?.unwrap_or(sidecar);
        let report = report_of(segment_key, &index, &final_sidecar, false);
        tracing::info!(
            old = %segment_key,
            new = ?report.new_key,
            moved = report.moved,
            dropped = report.dropped,
            "segment repacked"
        );
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_repacked(
        &self,
        plan: &RepackPlan,
        addr: ShardAddr,
        generation: u32,
        index: &SegmentIndex,
        moved: &BTreeSet<String>,
        sidecar: &Sidecar,
        old_meta: &vera_store::ObjectMeta,
        settings: &RepackSettings,
    ) -> Result<Written, LifecycleError> {
        let store = self.shards.store();
        let old_key = sidecar.segment_key.clone();
        let target = plan.target_key.clone();
        // Retention: never less than the old segment's, and up to the longest extension.
        let longest_extension = sidecar
            .retention
            .iter()
            .filter(|(uid, _)| moved.contains(*uid))
            .map(|(_, extension)| extension.retain_until)
            .max();
        let retention = match (old_meta.retention, longest_extension) {
            (Some(old), Some(until)) => Some(Retention { mode: old.mode, retain_until: old.retain_until.max(until) }),
            (Some(old), None) => Some(old),
            (None, Some(until)) => Some(Retention { mode: settings.default_mode, retain_until: until }),
            (None, None) => None,
        };
        let legal_hold = moved.iter().any(|uid| sidecar.is_held(uid));

        let expected: BTreeMap<String, Hash> = index
            .files()
            .filter(|file| moved.contains(file.uid))
            .map(|file| (file.uid.to_owned(), file.entry.content_hash))
            .collect();
        match store.head(&target).await {
            Ok(meta) => return self.check_existing(&old_key, &target, &meta, &expected, retention).await,
            Err(error) if error.kind == StoreErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }

        let object = store.get(&old_key).await?;
        // SegmentSettings::new picks the current format: old segments are upgraded as
        // they are repacked.
        let segment_settings = SegmentSettings {
            policy: settings.compression.clone(),
            max_file_bytes: settings.max_file_bytes,
            ..SegmentSettings::new(addr, generation)
        };
        let index_copy = index.clone();
        let moved_copy = moved.clone();
        let limits = *self.shards.limits();
        let old_key_copy = old_key.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<_, LifecycleError> {
            let body = object.body;
            if *blake3::hash(&body).as_bytes() != object_hash(&object.meta.metadata, &old_key_copy)? {
                return Err(repack_error(&old_key_copy, "the segment's bytes do not match its recorded hash"));
            }
            let broken = |e: &dyn std::fmt::Display| repack_error(&old_key_copy, &format!("cannot rebuild it: {e}"));
            let mut writer = SegmentWriter::new(segment_settings, Cursor::new(Vec::new())).map_err(|e| broken(&e))?;
            for file in index_copy.files().filter(|file| moved_copy.contains(file.uid)) {
                let bytes =
                    index_copy.read_file(&mut Cursor::new(&body[..]), file.uid, &limits).map_err(|e| broken(&e))?;
                let created_at = Timestamp::from_micros(file.entry.created_at_micros).map_err(|e| broken(&e))?;
                writer
                    .add(FileInput { uid: file.uid, created_at, content_type: Some(file.content_type), bytes: &bytes })
                    .map_err(|e| broken(&e))?;
            }
            let mut out = Vec::new();
            let sealed = writer.finish(&mut out).map_err(|e| broken(&e))?;
            Ok((out, sealed))
        })
        .await
        .map_err(|e| repack_error(&old_key, &format!("the rebuild task failed: {e}")))??;
        let (bytes, sealed) = built;
        let mut options =
            PutOptions::create().with_metadata(META_OBJECT_HASH, vera_protocol::hex::encode(&sealed.object_hash));
        options.retention = retention;
        options.legal_hold = legal_hold;
        match store.put(&target, Bytes::from(bytes), options).await {
            Ok(outcome) => Ok(Written {
                key: target,
                hash: sealed.object_hash,
                version_id: outcome.version_id,
                merkle_root: sealed.footer.merkle_root,
                files: sealed.files,
                raw_bytes: sealed.raw_bytes,
                object_bytes: sealed.object_len,
                retention,
            }),
            Err(error) if error.kind == StoreErrorKind::AlreadyExists => {
                let meta = store.head(&target).await?;
                self.check_existing(&old_key, &target, &meta, &expected, retention).await
            }
            Err(error) => Err(error.into()),
        }
    }

    /// An earlier (or concurrent) run wrote the target: it must hold exactly the planned
    /// files, with the same content.
    async fn check_existing(
        &self,
        old_key: &str,
        target: &str,
        meta: &vera_store::ObjectMeta,
        expected: &BTreeMap<String, Hash>,
        retention: Option<Retention>,
    ) -> Result<Written, LifecycleError> {
        let hash = object_hash(&meta.metadata, target)?;
        let index = self.shards.index(target).await?;
        let found: BTreeMap<String, Hash> =
            index.files().map(|file| (file.uid.to_owned(), file.entry.content_hash)).collect();
        if &found != expected {
            return Err(repack_error(
                old_key,
                &format!("{target} already exists with other files than planned; refusing to supersede"),
            ));
        }
        if let Some(wanted) = retention {
            let locked = meta.retention.is_some_and(|r| r.retain_until >= wanted.retain_until);
            if !locked {
                self.shards.store().set_retention(target, wanted).await?;
            }
        }
        Ok(Written {
            key: target.to_owned(),
            hash,
            version_id: meta.version_id.clone(),
            merkle_root: index.footer().merkle_root,
            files: index.len() as u64,
            raw_bytes: index.files().map(|f| u64::from(f.entry.raw_len)).sum(),
            object_bytes: meta.len,
            retention: meta.retention.or(retention),
        })
    }

    async fn supersede(
        &self,
        old_key: &str,
        plan: &RepackPlan,
        new: Option<(&str, Hash)>,
        moved: &BTreeSet<String>,
        now: Timestamp,
    ) -> Result<(), LifecycleError> {
        let store = self.shards.store();
        let old_sidecar_key = sidecar_key_of(old_key);
        for _ in 0..self.cas_attempts {
            let got = store.get(&old_sidecar_key).await?;
            let mut old = Sidecar::decode(&got.body)
                .map_err(|source| LifecycleError::CorruptSidecar { segment_key: old_key.to_owned(), source })?;
            if old.superseded.is_some() {
                return Ok(());
            }
            if let Some((new_key, new_hash)) = new {
                // Nobody else writes the new sidecar until the old one is frozen, so it
                // is simply (re)written from the old one's current state.
                let inherited = old.inherit(new_key, new_hash, moved);
                vera_store::shards::mark_has_sidecar(store.as_ref(), new_key).await?;
                store.put(&sidecar_key_of(new_key), Bytes::from(inherited.encode()), PutOptions::overwrite()).await?;
            }
            old.superseded = Some(Superseded {
                segment_key: new.map(|(key, _)| key.to_owned()),
                segment_hash: new.map(|(_, hash)| hash),
                at: now,
                request_id: plan.request_id.clone(),
            });
            match store.put(&old_sidecar_key, Bytes::from(old.encode()), PutOptions::update(got.meta.etag)).await {
                Ok(_) => return Ok(()),
                Err(error) if matches!(error.kind, StoreErrorKind::Precondition | StoreErrorKind::AlreadyExists) => {
                    tracing::debug!(segment = %old_key, "sidecar changed while superseding; reading it again");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(LifecycleError::Contended { segment_key: old_key.to_owned(), attempts: self.cas_attempts })
    }

    async fn archive(&self, old_key: &str, settings: &RepackSettings) -> Result<(), LifecycleError> {
        // Held files moved (with their hold) to the new segment, and holds on them are
        // recorded there from now on: the old copy no longer needs one, and keeping it
        // would stop the old segment from ever expiring.
        if self.shards.store().head(old_key).await?.legal_hold {
            self.shards.store().set_legal_hold(old_key, false).await?;
        }
        if settings.archive {
            vera_store::shards::add_tag(self.shards.store().as_ref(), old_key, ARCHIVE_TAG).await?;
        }
        Ok(())
    }
}

fn report_of(old_key: &str, index: &SegmentIndex, sidecar: &Sidecar, already: bool) -> RepackReport {
    let dropped = sidecar.repack.as_ref().map(|plan| plan.dropped.clone()).unwrap_or_default();
    let moved: BTreeSet<&str> = index.files().map(|f| f.uid).filter(|uid| !dropped.contains(*uid)).collect();
    let kept_tombstoned = moved.iter().filter(|uid| sidecar.is_tombstoned(uid)).count() as u64;
    let moved: Vec<&str> = moved.into_iter().collect();
    RepackReport {
        old_key: old_key.to_owned(),
        new_key: sidecar.superseded.as_ref().and_then(|s| s.segment_key.clone()),
        moved: moved.len() as u64,
        dropped: dropped.len() as u64,
        kept_tombstoned,
        moved_uids_root: Some(merkle::root(&moved)),
        repacked: true,
        already_superseded: already,
    }
}

fn object_hash(metadata: &BTreeMap<String, String>, key: &str) -> Result<Hash, LifecycleError> {
    metadata
        .get(META_OBJECT_HASH)
        .and_then(|hex| vera_protocol::hex::decode(hex))
        .ok_or_else(|| LifecycleError::MissingObjectHash { segment_key: key.to_owned() })
}

fn repack_error(segment_key: &str, reason: &str) -> LifecycleError {
    LifecycleError::Repack { segment_key: segment_key.to_owned(), reason: reason.to_owned() }
}

/// What the repack consumer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepackerStats {
    pub requests: u64,
    pub repacked: u64,
    /// Requests for segments repacked before (duplicates, or already done).
    pub already_done: u64,
    pub nothing_to_drop: u64,
    pub dead_lettered: u64,
    pub retried: u64,
}

/// Consumes `RepackRequested` from the `repack` topic and repacks each segment, until
/// `shutdown` or, with `until_idle`, until the topic is empty (the CronJob form).
/// Requests that can never succeed (malformed, unknown segment, a conflicting target)
/// are dead-lettered; others are retried by the bus until their attempts run out.
pub async fn run_repacker(
    lifecycle: std::sync::Arc<Lifecycle>,
    bus: std::sync::Arc<dyn vera_bus::Bus>,
    settings: RepackSettings,
    shutdown: tokio_util::sync::CancellationToken,
    until_idle: bool,
) -> RepackerStats {
    let mut stats = RepackerStats::default();
    while let Some(batch) = crate::next_batch(bus.as_ref(), topics::REPACK, &shutdown, until_idle).await {
        for delivery in batch {
            handle_repack(&lifecycle, bus.as_ref(), &delivery, &settings, &mut stats).await;
        }
    }
    stats
}

async fn handle_repack(
    lifecycle: &Lifecycle,
    bus: &dyn vera_bus::Bus,
    delivery: &vera_bus::Delivery,
    settings: &RepackSettings,
    stats: &mut RepackerStats,
) {
    let settled = match vera_protocol::message::Envelope::decode(&delivery.payload).map(|e| e.message) {
        Ok(Message::RepackRequested(request)) => {
            stats.requests += 1;
            let request_id = format!(
                "auto-repack:{}",
                &vera_protocol::hex::encode(blake3::hash(request.key.as_bytes()).as_bytes())[..16]
            );
            match lifecycle.repack(&request.key, &request_id, settings).await {
                Ok(report) => {
                    match (report.repacked, report.already_superseded) {
                        (false, _) => stats.nothing_to_drop += 1,
                        (true, true) => stats.already_done += 1,
                        (true, false) => stats.repacked += 1,
                    }
                    bus.ack(delivery).await
                }
                Err(error) if is_permanent(&error) => {
                    stats.dead_lettered += 1;
                    tracing::error!(segment = %request.key, error = %error, "repack cannot succeed: dead-lettered");
                    bus.dead_letter(delivery, &error.to_string()).await
                }
                Err(error) => {
                    stats.retried += 1;
                    tracing::warn!(segment = %request.key, error = %error, "repack failed; the bus will retry it");
                    bus.nack(delivery, std::time::Duration::from_secs(5)).await
                }
            }
        }
        Ok(_) => {
            stats.dead_lettered += 1;
            bus.dead_letter(delivery, "not a repack_requested message").await
        }
        Err(error) => {
            stats.dead_lettered += 1;
            bus.dead_letter(delivery, &format!("malformed message: {error}")).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%error, message_id = %delivery.message_id, "settling a repack request failed; it will come back");
    }
}

/// Errors no retry can fix.
fn is_permanent(error: &LifecycleError) -> bool {
    match error {
        LifecycleError::InvalidRequest(_)
        | LifecycleError::UnknownFile { .. }
        | LifecycleError::Repack { .. }
        | LifecycleError::MissingObjectHash { .. }
        | LifecycleError::CorruptSidecar { .. } => true,
        LifecycleError::Shards(vera_store::shards::ShardError::Segment { .. }) => true,
        LifecycleError::Shards(vera_store::shards::ShardError::Store(e)) | LifecycleError::Store(e) => {
            matches!(e.kind, StoreErrorKind::NotFound | StoreErrorKind::Config | StoreErrorKind::InvalidInput)
        }
        _ => false,
    }
}

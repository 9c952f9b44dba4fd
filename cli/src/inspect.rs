//! `vera get`, `vera verify`, `vera stats`: looking at what is stored.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use vera_protocol::Timestamp;
use vera_protocol::compress::Codec;
use vera_protocol::routing::ShardAddr;
use vera_protocol::shard::verify_segment;
use vera_store::ObjectStore;
use vera_store::cold_cost::{SegmentShape, cold_read_gets, probed_run};
use vera_store::shards::{DEFAULT_LATER_SUFFIX_BYTES, DEFAULT_SUFFIX_BYTES, ShardError};

use crate::common::StoreArgs;

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The file's uid.
    pub uid: String,
    /// The file's created_at (RFC 3339, or integer microseconds since the Unix epoch).
    #[arg(long)]
    pub created_at: String,
    /// Write the bytes here instead of stdout.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let created_at = Timestamp::parse(&args.created_at)?;
    let store: Arc<dyn ObjectStore> = args.store.object_store().await?;
    let routing = args.store.routing(store.as_ref()).await?;
    let shards = args.store.shards(store);
    let read = match shards.read_file(&routing, &args.uid, created_at).await {
        Ok(read) => read,
        Err(ShardError::Gone { key, .. }) => {
            let Some(tombstone) = vera_lifecycle::tombstone_of(shards.store().as_ref(), &key, &args.uid).await? else {
                anyhow::bail!("file {} is gone (tombstoned in {key}); VERA no longer serves it", args.uid);
            };
            anyhow::bail!(
                "file {} is gone: erased at {} ({:?}, request {}, by {}); VERA no longer serves it",
                args.uid,
                tombstone.at.to_rfc3339(),
                tombstone.reason,
                tombstone.request_id,
                tombstone.operator
            );
        }
        Err(other) => return Err(other.into()),
    };
    match &args.out {
        Some(path) => std::fs::write(path, &read.bytes)?,
        None => std::io::stdout().lock().write_all(&read.bytes)?,
    }
    tracing::info!(uid = %args.uid, key = %read.key, content_type = %read.content_type, bytes = read.bytes.len(), "file read and verified");
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub segments: u64,
    pub segments_ok: u64,
    pub files: u64,
    pub raw_bytes: u64,
    pub failures: Vec<String>,
}

/// Re-reads every segment and checks every hash.
pub async fn verify(args: InspectArgs) -> anyhow::Result<VerifyReport> {
    let store = args.store.object_store().await?;
    let mut report = VerifyReport::default();
    let segments: Vec<_> = store.list("").await?.into_iter().filter(|m| m.key.ends_with(".vera")).collect();
    let progress = progress_bar(segments.len() as u64, "verifying", args.json);
    for meta in segments {
        progress.inc(1);
        report.segments += 1;
        match verify_object(store.as_ref(), &meta).await? {
            Ok((files, raw_bytes)) => {
                report.segments_ok += 1;
                report.files += files;
                report.raw_bytes += raw_bytes;
            }
            Err(failure) => report.failures.push(failure),
        }
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Reads a whole segment and checks every hash in it, and its object hash against the one
/// recorded at write time: `(files, raw bytes)`, or what is wrong. `Err` only when the
/// store cannot be read.
pub async fn verify_object(
    store: &dyn ObjectStore,
    meta: &vera_store::ObjectMeta,
) -> anyhow::Result<Result<(u64, u64), String>> {
    let object = store.get(&meta.key).await?;
    let len = object.body.len() as u64;
    let outcome = tokio::task::spawn_blocking(move || {
        verify_segment(&mut Cursor::new(&object.body[..]), len, &vera_protocol::shard::ReadLimits::default())
    })
    .await?;
    Ok(match outcome {
        Ok(segment) => {
            let recorded = meta.metadata.get(vera_worker::pack::META_OBJECT_HASH);
            if recorded.is_some_and(|hex| *hex != vera_protocol::hex::encode(&segment.object_hash)) {
                Err(format!("{}: object hash differs from the hash recorded at write time", meta.key))
            } else {
                Ok((segment.files, segment.raw_bytes))
            }
        }
        Err(error) => Err(format!("{}: {error}", meta.key)),
    })
}

/// A bar on stderr for long walks over the store; hidden for `--json` output.
fn progress_bar(len: u64, message: &'static str, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} segments (eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

#[derive(Debug, Default, Serialize)]
pub struct StatsReport {
    pub segments: u64,
    /// Staging segments (ADR 0005): not counted in `segments` or any figure below.
    pub staging_segments: u64,
    pub addresses: u64,
    pub files: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub compression_ratio: f64,
    pub max_segments_per_address: u64,
    pub mean_segments_per_address: f64,
    pub mean_files_per_segment: f64,
    pub segments_with_dictionary: u64,
    pub index_bytes_per_file: f64,
    /// Segments whose footer and index do not fit in the reader's default cold-read
    /// suffix (`vera serve --suffix-kib`, `--later-suffix-kib` for generation 1 and up):
    /// the first cold read of such a segment costs one more GET, after which the reader
    /// asks for the larger size.
    pub indexes_over_default_suffix: u64,
    pub files_by_codec: BTreeMap<String, u64>,
    /// Current segments by `.vera` format version. Readers cache format 1 segments whole
    /// (about 100 bytes per file) and format 2 ones at about 8; a repack upgrades.
    pub segments_by_format: BTreeMap<u16, u64>,
    /// Current segments of generation 1 and up (late arrivals, mostly), and the largest
    /// of them: a cold read of a file in one also reads the earlier generations' indexes,
    /// and costs no data GET only if the segment fits in the reader's `--later-suffix-kib`.
    pub later_generation_segments: u64,
    pub largest_later_generation_bytes: u64,
    /// What a cold read of each file costs in GETs, with the reader's default suffixes
    /// (`vera_store::cold_cost`): files by GETs, `{"1": …, "2": …, "3": …}`. Files of
    /// addresses a repack touched are left out (`addresses_repacked`): a read there
    /// follows the repack and costs more.
    pub files_by_cold_read_gets: BTreeMap<u64, u64>,
    pub addresses_repacked: u64,
    /// Addresses with later generations but no generation 0: only late arrivals so far
    /// (their day's own rows not yet packed, or none), read past the missing key.
    pub addresses_without_generation_0: u64,
    pub locked_segments: u64,
    /// Segments a repack replaced: kept (locked, archived) but not counted above, since
    /// their live files are counted in the segments that replaced them.
    pub superseded_segments: u64,
}

impl StatsReport {
    /// Aligned `name: value` lines for people; `--json` gives the same figures for tools.
    pub fn to_text(&self) -> String {
        let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
        let mut lines = vec![
            ("segments", self.segments.to_string()),
            ("shard addresses", self.addresses.to_string()),
            ("files", self.files.to_string()),
            ("raw bytes", mb(self.raw_bytes)),
            ("stored bytes", mb(self.stored_bytes)),
            ("compression ratio", format!("{:.2}x", self.compression_ratio)),
            (
                "segments per address",
                format!("mean {:.2}, max {}", self.mean_segments_per_address, self.max_segments_per_address),
            ),
            ("files per segment", format!("{:.0}", self.mean_files_per_segment)),
            ("segments with a dictionary", self.segments_with_dictionary.to_string()),
            ("index bytes per file", format!("{:.1}", self.index_bytes_per_file)),
            (
                "indexes over default suffix",
                format!(
                    "{} ({} KiB, g ≥ 1: {} KiB)",
                    self.indexes_over_default_suffix,
                    DEFAULT_SUFFIX_BYTES / 1024,
                    DEFAULT_LATER_SUFFIX_BYTES / 1024
                ),
            ),
            (
                "later generations (g ≥ 1)",
                format!("{}, largest {}", self.later_generation_segments, mb(self.largest_later_generation_bytes)),
            ),
            ("addresses without g0", self.addresses_without_generation_0.to_string()),
            ("staging segments (vera compact)", self.staging_segments.to_string()),
            (
                "cold-read GETs",
                self.files_by_cold_read_gets
                    .iter()
                    .map(|(gets, files)| format!("{files} files {gets}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("segments under Object Lock", self.locked_segments.to_string()),
            ("superseded by a repack", self.superseded_segments.to_string()),
        ];
        for (codec, count) in &self.files_by_codec {
            lines.push(("files stored as", format!("{codec}: {count}")));
        }
        for (version, count) in &self.segments_by_format {
            lines.push(("segments in format", format!("{version}: {count}")));
        }
        lines.iter().map(|(name, value)| format!("{name:>30}  {value}\n")).collect()
    }
}

/// Figures on the store, from segment footers and indexes (one suffix read each).
pub async fn stats(args: InspectArgs) -> anyhow::Result<StatsReport> {
    let store: Arc<dyn ObjectStore> = args.store.object_store().await?;
    let shards = args.store.shards(Arc::clone(&store));
    let mut report = StatsReport::default();
    let mut per_address: BTreeMap<ShardAddr, u64> = BTreeMap::new();
    let mut index_bytes = 0u64;
    // Generations by address for the cold-read cost; `None` once a repack touched it.
    let mut layouts: BTreeMap<ShardAddr, Option<BTreeMap<u32, SegmentShape>>> = BTreeMap::new();
    let segments: Vec<_> = store.list("").await?.into_iter().filter(|m| m.key.ends_with(".vera")).collect();
    let progress = progress_bar(segments.len() as u64, "reading", args.json);
    for meta in segments {
        progress.inc(1);
        if ShardAddr::from_staging_key(&meta.key).is_ok() {
            // Waiting for `vera compact`, or merged and waiting for its lock to expire.
            report.staging_segments += 1;
            continue;
        }
        let Ok((addr, generation, round)) = ShardAddr::parse_any_segment_key(&meta.key) else { continue };
        let sidecar = vera_store::shards::sidecar_of(store.as_ref(), &meta.key).await?;
        if sidecar.is_some_and(|sidecar| sidecar.superseded.is_some()) {
            report.superseded_segments += 1;
            layouts.insert(addr, None);
            continue;
        }
        let index = shards.index(&meta.key).await?;
        match layouts.entry(addr).or_insert_with(|| Some(BTreeMap::new())) {
            Some(generations) if round == 0 => {
                generations.insert(generation, SegmentShape::of(&index));
            }
            layout => *layout = None,
        }
        report.segments += 1;
        *per_address.entry(addr).or_default() += 1;
        report.stored_bytes += meta.len;
        if generation > 0 {
            report.later_generation_segments += 1;
            report.largest_later_generation_bytes = report.largest_later_generation_bytes.max(meta.len);
        }
        report.locked_segments += u64::from(meta.retention.is_some());
        let region = index.footer().index_region_len + vera_protocol::shard::FOOTER_LEN as u64;
        index_bytes += index.footer().index_region_len - u64::from(index.footer().dictionary_len);
        let suffix = if generation > 0 { DEFAULT_LATER_SUFFIX_BYTES } else { DEFAULT_SUFFIX_BYTES };
        report.indexes_over_default_suffix += u64::from(region > suffix);
        report.segments_with_dictionary += u64::from(index.dictionary().is_some());
        *report.segments_by_format.entry(index.format_version()).or_default() += 1;
        for file in index.files() {
            report.files += 1;
            report.raw_bytes += u64::from(file.entry.raw_len);
            let codec = match file.entry.codec {
                Codec::Raw => "raw",
                Codec::Zstd => "zstd",
                Codec::Lz4 => "lz4",
                Codec::ZstdDict => "zstd_dictionary",
            };
            *report.files_by_codec.entry(codec.to_owned()).or_default() += 1;
        }
    }
    progress.finish_and_clear();
    for layout in layouts.into_values() {
        let Some(generations) = layout else {
            report.addresses_repacked += 1;
            continue;
        };
        let probed = probed_run(generations);
        report.addresses_without_generation_0 += u64::from(probed.first().is_some_and(Option::is_none));
        for gets in cold_read_gets(&probed, DEFAULT_SUFFIX_BYTES, DEFAULT_LATER_SUFFIX_BYTES).into_iter().flatten() {
            *report.files_by_cold_read_gets.entry(gets).or_default() += 1;
        }
    }
    report.addresses = per_address.len() as u64;
    report.max_segments_per_address = per_address.values().copied().max().unwrap_or(0);
    if report.addresses > 0 {
        report.mean_segments_per_address = report.segments as f64 / report.addresses as f64;
    }
    if report.segments > 0 {
        report.mean_files_per_segment = report.files as f64 / report.segments as f64;
    }
    if report.stored_bytes > 0 {
        report.compression_ratio = report.raw_bytes as f64 / report.stored_bytes as f64;
    }
    if report.files > 0 {
        report.index_bytes_per_file = index_bytes as f64 / report.files as f64;
    }
    Ok(report)
}

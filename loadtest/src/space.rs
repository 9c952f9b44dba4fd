//! Bytes stored: VERA's segments, the naive objects, and `tar | zstd -3` of the same files
//! (built in process with the `tar` and `zstd` crates: the same tar stream and the same
//! zstd level as the shell pipeline, without needing either tool installed).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use serde::Serialize;
use vera_source::Source;
use vera_source::corpus::is_text_heavy;
use vera_store::ObjectStore;
use vera_store::cold_cost::{SegmentShape, probed_run};
use vera_store::shards::ShardStore;

use crate::layout::AddressLayout;

/// Counts what passes through, keeps nothing.
#[derive(Clone, Default)]
struct ByteCounter(Arc<AtomicU64>);

impl Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct TarZstd {
    builder: tar::Builder<zstd::Encoder<'static, ByteCounter>>,
    compressed: ByteCounter,
    raw: u64,
}

impl TarZstd {
    fn new() -> std::io::Result<Self> {
        let compressed = ByteCounter::default();
        let encoder = zstd::Encoder::new(compressed.clone(), 3)?;
        Ok(TarZstd { builder: tar::Builder::new(encoder), compressed, raw: 0 })
    }

    fn append(&mut self, name: &str, mtime: u64, bytes: &[u8]) -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        self.builder.append_data(&mut header, name, bytes)?;
        self.raw += bytes.len() as u64;
        Ok(())
    }

    /// (compressed bytes, raw file bytes)
    fn finish(self) -> std::io::Result<(u64, u64)> {
        let encoder = self.builder.into_inner()?;
        encoder.finish()?;
        Ok((self.compressed.0.load(Ordering::Relaxed), self.raw))
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TarZstdSizes {
    pub all_bytes: u64,
    pub all_raw_bytes: u64,
    pub text_bytes: u64,
    pub text_raw_bytes: u64,
}

/// `tar -c FILES | zstd -3 | wc -c`, for the whole corpus and for its text-heavy part.
pub async fn tar_zstd(source: &dyn Source, max_file_bytes: u64) -> anyhow::Result<TarZstdSizes> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(String, u64, bool, Vec<u8>)>(256);
    let compressor = std::thread::spawn(move || -> std::io::Result<TarZstdSizes> {
        let (mut all, mut text) = (TarZstd::new()?, TarZstd::new()?);
        for (name, mtime, is_text, bytes) in receiver {
            all.append(&name, mtime, &bytes)?;
            if is_text {
                text.append(&name, mtime, &bytes)?;
            }
        }
        let ((all_bytes, all_raw_bytes), (text_bytes, text_raw_bytes)) = (all.finish()?, text.finish()?);
        Ok(TarZstdSizes { all_bytes, all_raw_bytes, text_bytes, text_raw_bytes })
    });
    let mut rows = std::pin::pin!(crate::ingest::valid_rows(source, max_file_bytes));
    while let Some(row) = rows.try_next().await? {
        let is_text = row.content_type.as_deref().is_some_and(is_text_heavy);
        let mtime = u64::try_from(row.created_at.as_micros() / 1_000_000).unwrap_or(0);
        if sender.send((row.uid, mtime, is_text, row.bytes)).is_err() {
            break; // the compressor failed; its error is reported below
        }
    }
    drop(sender);
    compressor.join().map_err(|_| anyhow::anyhow!("the tar+zstd thread panicked"))?.map_err(anyhow::Error::from)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VeraSizes {
    /// Every object in the bucket (segments, sidecars, watermark): what the bill counts.
    pub bucket_bytes: u64,
    pub segments: u64,
    pub files: u64,
    /// Text-heavy files: their raw bytes, and their share of the segments (their own
    /// records, plus each segment's index, dictionary and framing apportioned by file count).
    pub text_raw_bytes: u64,
    pub text_stored_bytes: u64,
    /// Addresses holding segments, and the most segments (generations) under one.
    pub addresses: u64,
    pub max_segments_per_address: u64,
}

/// Lists the bucket and opens every segment's index. Also returns every address's
/// segments in generation order, for [`crate::layout`].
pub async fn vera(store: Arc<dyn ObjectStore>) -> anyhow::Result<(VeraSizes, Vec<AddressLayout>)> {
    let mut sizes = VeraSizes::default();
    let shards = ShardStore::new(Arc::clone(&store));
    let mut text_stored = 0.0f64;
    let mut per_address: BTreeMap<String, BTreeMap<u32, (SegmentShape, Vec<String>)>> = BTreeMap::new();
    for object in store.list("").await? {
        sizes.bucket_bytes += object.len;
        if !object.key.ends_with(".vera") {
            continue;
        }
        let index = shards.index(&object.key).await?;
        let shape = (SegmentShape::of(&index), index.files().map(|file| file.uid.to_owned()).collect());
        sizes.segments += 1;
        let (mut records, mut text_records, mut text_files) = (0u64, 0u64, 0u64);
        for file in index.files() {
            let range = file.record_range();
            records += range.end - range.start;
            if is_text_heavy(file.content_type) {
                text_files += 1;
                text_records += range.end - range.start;
                sizes.text_raw_bytes += u64::from(file.entry.raw_len);
            }
        }
        let overhead = index.object_len().saturating_sub(records);
        sizes.files += index.len() as u64;
        text_stored += text_records as f64 + overhead as f64 * text_files as f64 / index.len().max(1) as f64;
        shards.forget(&object.key);
        // Only generations (not repacked segments, which the load test never writes) are
        // probed by a cold read.
        if let Ok((addr, generation)) = vera_protocol::routing::ShardAddr::from_segment_key(&object.key) {
            per_address.entry(addr.key_prefix()).or_default().insert(generation, shape);
        }
    }
    sizes.text_stored_bytes = text_stored.round() as u64;
    sizes.addresses = per_address.len() as u64;
    sizes.max_segments_per_address = per_address.values().map(|segments| segments.len() as u64).max().unwrap_or(0);
    let layout = per_address
        .into_values()
        .map(|segments| {
            let (generations, uids) = probed_run(segments)
                .into_iter()
                .map(|segment| match segment {
                    Some((shape, uids)) => (Some(shape), uids),
                    None => (None, Vec::new()),
                })
                .unzip();
            AddressLayout { generations, uids }
        })
        .collect();
    Ok((sizes, layout))
}

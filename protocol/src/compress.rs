//! Per-file compression policy.
//!
//! Small files are stored one by one so that any file can be fetched with one range GET,
//! which rules out compressing a shard as a whole. Instead each file gets its own codec:
//!
//! 1. **Sniff** the magic bytes (`infer`). Formats that are already compressed (JPEG, PNG,
//!    GIF, WebP, MP4, ZIP and Office documents, gzip, bzip2, xz, zstd, 7z, …) are stored raw:
//!    compressing them again burns CPU for nothing.
//! 2. **Sample**: compress the first `sample_bytes` with a fast setting. If that sample does
//!    not save `min_saving_ratio`, store the file raw.
//! 3. **Compress** the whole file with zstd (ratio mode) or lz4 (speed mode) and keep the
//!    result only if it saves at least `min_saving_ratio`; otherwise store raw.
//! 4. **Dictionary**: small files of one kind compress poorly alone because each starts
//!    with an empty window. When a segment holds enough small, compressible files, the
//!    writer trains a zstd dictionary on a deterministic sample of them, stores it in the
//!    index region, and compresses each of them against it. Decoding still needs only the
//!    file's own bytes plus that dictionary.
//!
//! Every decision depends only on the file's bytes and the policy, never on arrival order,
//! which is what lets the shard writer be deterministic.

use serde::{Deserialize, Serialize};

/// How a payload is stored. The numeric values are the on-disk codec byte (FORMAT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// One zstd frame (RFC 8878), no dictionary.
    Zstd = 1,
    /// One LZ4 block (lz4 block format, no frame, no size prefix).
    Lz4 = 2,
    /// One zstd frame compressed against the segment's dictionary.
    ZstdDict = 3,
}

impl Codec {
    pub fn from_byte(byte: u8) -> Option<Codec> {
        match byte {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Lz4),
            3 => Some(Codec::ZstdDict),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        self as u8
    }
}

/// Which compressor the policy reaches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionMode {
    /// zstd at `zstd_level`, plus per-segment dictionaries.
    Ratio,
    /// lz4 block compression: several times faster, larger output; no dictionaries.
    Speed,
    /// Store everything raw.
    Off,
}

/// Settings for the per-file policy. Part of the segment's identity: the same files with
/// the same policy give a byte-identical segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionPolicy {
    pub mode: CompressionMode,
    /// zstd level for whole files (1..=19). 3 is zstd's own default.
    pub zstd_level: i32,
    /// Keep a compressed form only if `stored <= raw * (1 - min_saving_ratio)`.
    pub min_saving_ratio: f64,
    /// Bytes compressed (at zstd level 1, or lz4 in speed mode) as a trial before
    /// compressing a file larger than twice this.
    pub sample_bytes: usize,
    /// Files smaller than this are never worth compressing on their own.
    pub min_file_bytes: usize,
    pub dictionary: DictionaryPolicy,
}

/// When and how a per-segment zstd dictionary is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DictionaryPolicy {
    pub enabled: bool,
    /// Only files up to this size are dictionary candidates.
    pub max_file_bytes: usize,
    /// Train only when at least this many candidates are in the segment.
    pub min_files: usize,
    /// Upper bound on the trained dictionary. It lives in the index region, so it counts
    /// against the reader's suffix read.
    pub max_dictionary_bytes: usize,
    /// Upper bound on the sample bytes kept in memory for training.
    pub sample_budget_bytes: usize,
    /// Candidates must have a byte entropy below this many bits per byte (0..=8).
    pub max_entropy_bits_per_byte: f64,
}

impl Default for CompressionPolicy {
    fn default() -> Self {
        CompressionPolicy {
            mode: CompressionMode::Ratio,
            zstd_level: 3,
            min_saving_ratio: 0.10,
            sample_bytes: 4 * 1024,
            min_file_bytes: 64,
            dictionary: DictionaryPolicy::default(),
        }
    }
}

impl Default for DictionaryPolicy {
    fn default() -> Self {
        DictionaryPolicy {
            enabled: true,
            max_file_bytes: 4096,
            min_files: 64,
            max_dictionary_bytes: 16 * 1024,
            sample_budget_bytes: 512 * 1024,
            max_entropy_bits_per_byte: 6.5,
        }
    }
}

/// A policy value that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("zstd_level must be 1..=19, got {0}")]
    ZstdLevel(i32),
    #[error("min_saving_ratio must be in 0.0..1.0, got {0}")]
    SavingRatio(f64),
    #[error("sample_bytes must be at least 256, got {0}")]
    SampleBytes(usize),
    #[error("dictionary.max_dictionary_bytes must be 1024..=1048576, got {0}")]
    DictionaryBytes(usize),
    #[error("dictionary.max_file_bytes must be at least 1, got {0}")]
    DictionaryFileBytes(usize),
    #[error("dictionary.max_entropy_bits_per_byte must be in 0.0..=8.0, got {0}")]
    Entropy(f64),
}

impl CompressionPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(1..=19).contains(&self.zstd_level) {
            return Err(PolicyError::ZstdLevel(self.zstd_level));
        }
        if !(0.0..1.0).contains(&self.min_saving_ratio) {
            return Err(PolicyError::SavingRatio(self.min_saving_ratio));
        }
        if self.sample_bytes < 256 {
            return Err(PolicyError::SampleBytes(self.sample_bytes));
        }
        let dictionary = &self.dictionary;
        if !(1024..=1024 * 1024).contains(&dictionary.max_dictionary_bytes) {
            return Err(PolicyError::DictionaryBytes(dictionary.max_dictionary_bytes));
        }
        if dictionary.max_file_bytes == 0 {
            return Err(PolicyError::DictionaryFileBytes(dictionary.max_file_bytes));
        }
        if !(0.0..=8.0).contains(&dictionary.max_entropy_bits_per_byte) {
            return Err(PolicyError::Entropy(dictionary.max_entropy_bits_per_byte));
        }
        Ok(())
    }

    /// Largest stored size that still counts as a saving for a file of `raw_len` bytes.
    fn worth_keeping(&self, raw_len: usize, stored_len: usize) -> bool {
        (stored_len as f64) <= (raw_len as f64) * (1.0 - self.min_saving_ratio)
    }

    fn dictionaries_enabled(&self) -> bool {
        self.mode == CompressionMode::Ratio && self.dictionary.enabled
    }
}

/// MIME types (as `infer` names them) whose payload is already compressed.
const PRECOMPRESSED_MIME: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/heif",
    "image/jxl",
    "image/jp2",
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "video/x-matroska",
    "video/x-m4v",
    "audio/mpeg",
    "audio/ogg",
    "audio/x-flac",
    "audio/m4a",
    "audio/aac",
    "application/zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/epub+zip",
    "application/java-archive",
    "application/gzip",
    "application/x-bzip2",
    "application/x-xz",
    "application/zstd",
    "application/x-7z-compressed",
    "application/vnd.rar",
    "application/x-lzip",
    "application/x-brotli",
];

/// The MIME type sniffed from magic bytes, if `infer` recognises it.
pub fn sniff_mime(bytes: &[u8]) -> Option<&'static str> {
    infer::get(bytes).map(|kind| kind.mime_type())
}

/// True when the magic bytes say the payload is already compressed.
pub fn is_precompressed(bytes: &[u8]) -> bool {
    sniff_mime(bytes).is_some_and(|mime| PRECOMPRESSED_MIME.contains(&mime))
}

/// Shannon entropy of the byte histogram, in bits per byte (0.0 for empty input).
pub fn byte_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u64; 256];
    for &byte in bytes {
        counts[usize::from(byte)] += 1;
    }
    let total = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = count as f64 / total;
            -p * p.log2()
        })
        .sum()
}

/// What the policy decided for a file before any dictionary exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Final form: codec and stored bytes.
    Final { codec: Codec, stored: Vec<u8> },
    /// A small compressible file: compress it at seal time, against the segment's
    /// dictionary if one gets trained. Holds the raw bytes.
    DictionaryCandidate { raw: Vec<u8> },
}

/// Applies steps 1–3 of the policy to one file. Pure and order-independent.
pub fn prepare(policy: &CompressionPolicy, raw: &[u8]) -> Prepared {
    prepare_owned(policy, raw.to_vec())
}

/// [`prepare`] for a buffer the caller gives up: raw files keep it without a copy.
pub fn prepare_owned(policy: &CompressionPolicy, raw: Vec<u8>) -> Prepared {
    match decide(policy, &raw) {
        Decision::Raw => Prepared::Final { codec: Codec::Raw, stored: raw },
        Decision::Candidate => Prepared::DictionaryCandidate { raw },
        Decision::Compressed(codec, stored) => Prepared::Final { codec, stored },
    }
}

enum Decision {
    Raw,
    Candidate,
    Compressed(Codec, Vec<u8>),
}

fn decide(policy: &CompressionPolicy, raw: &[u8]) -> Decision {
    if policy.mode == CompressionMode::Off || raw.len() < policy.min_file_bytes || is_precompressed(raw) {
        return Decision::Raw;
    }
    if policy.dictionaries_enabled()
        && raw.len() <= policy.dictionary.max_file_bytes
        && byte_entropy(raw) <= policy.dictionary.max_entropy_bits_per_byte
    {
        return Decision::Candidate;
    }
    // Below twice the sample size, compressing the whole file costs about as much as the
    // probe would; above it, a probe on the first `sample_bytes` decides.
    if raw.len() > 2 * policy.sample_bytes && !sample_pays(policy, &raw[..policy.sample_bytes]) {
        return Decision::Raw;
    }
    match compress_plain(policy, raw) {
        Some((codec, stored)) => Decision::Compressed(codec, stored),
        None => Decision::Raw,
    }
}

/// Compresses with the policy's codec and no dictionary; `None` if it does not pay.
pub fn compress_plain(policy: &CompressionPolicy, raw: &[u8]) -> Option<(Codec, Vec<u8>)> {
    let (codec, stored) = match policy.mode {
        CompressionMode::Off => return None,
        CompressionMode::Speed => (Codec::Lz4, lz4_flex::block::compress(raw)),
        CompressionMode::Ratio => (Codec::Zstd, zstd_compress(raw, policy.zstd_level)?),
    };
    policy.worth_keeping(raw.len(), stored.len()).then_some((codec, stored))
}

thread_local! {
    /// One zstd context per thread and level: creating a context costs about as much as
    /// compressing a 16 KiB file, and the output is identical either way.
    static ZSTD_CONTEXTS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// zstd with a reused per-thread context; `None` only if zstd itself fails.
fn zstd_compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    ZSTD_CONTEXTS.with(|contexts| {
        let mut contexts = contexts.try_borrow_mut().ok()?;
        if !contexts.iter().any(|(l, _)| *l == level) {
            contexts.push((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, compressor) = contexts.iter_mut().find(|(l, _)| *l == level)?;
        compressor.compress(raw).ok()
    })
}

fn sample_pays(policy: &CompressionPolicy, sample: &[u8]) -> bool {
    let compressed_len = match policy.mode {
        CompressionMode::Off => return false,
        CompressionMode::Speed => lz4_flex::block::compress(sample).len(),
        CompressionMode::Ratio => match zstd_compress(sample, 1) {
            Some(compressed) => compressed.len(),
            None => return false,
        },
    };
    policy.worth_keeping(sample.len(), compressed_len)
}

/// Trains a dictionary from samples given in a deterministic order. `None` when zstd
/// cannot build a useful one (too few or too uniform samples): the caller then
/// compresses without one, which is just as deterministic.
pub fn train_dictionary(policy: &CompressionPolicy, samples: &[&[u8]]) -> Option<Vec<u8>> {
    if samples.len() < policy.dictionary.min_files.max(8) {
        return None;
    }
    let total: usize = samples.iter().map(|sample| sample.len()).sum();
    let mut continuous = Vec::with_capacity(total);
    let mut sizes = Vec::with_capacity(samples.len());
    for sample in samples {
        continuous.extend_from_slice(sample);
        sizes.push(sample.len());
    }
    // zstd refuses to train a dictionary larger than its input; keep well under it.
    let target = policy.dictionary.max_dictionary_bytes.min(total / 4);
    if target < 256 {
        return None;
    }
    let dictionary = zstd::dict::from_continuous(&continuous, &sizes, target).ok()?;
    (!dictionary.is_empty()).then_some(dictionary)
}

/// A compressor bound to one segment's dictionary.
pub struct DictionaryCompressor<'a> {
    compressor: zstd::bulk::Compressor<'a>,
}

impl DictionaryCompressor<'_> {
    pub fn new(policy: &CompressionPolicy, dictionary: &[u8]) -> std::io::Result<Self> {
        let compressor = zstd::bulk::Compressor::with_dictionary(policy.zstd_level, dictionary)?;
        Ok(DictionaryCompressor { compressor })
    }

    pub fn compress(&mut self, raw: &[u8]) -> std::io::Result<Vec<u8>> {
        self.compressor.compress(raw)
    }
}

/// Finishes a dictionary candidate: dictionary compression if a dictionary exists, else
/// plain compression, and raw if neither pays.
pub fn finish_candidate(
    policy: &CompressionPolicy,
    dictionary: Option<&mut DictionaryCompressor<'_>>,
    raw: &[u8],
) -> (Codec, Vec<u8>) {
    if let Some(compressor) = dictionary
        && let Ok(stored) = compressor.compress(raw)
        && policy.worth_keeping(raw.len(), stored.len())
    {
        return (Codec::ZstdDict, stored);
    }
    compress_plain(policy, raw).unwrap_or_else(|| (Codec::Raw, raw.to_vec()))
}

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("declared raw length {raw_len} exceeds the limit {limit}")]
    TooLarge { raw_len: u64, limit: u64 },
    #[error("{codec:?} payload is corrupt")]
    Corrupt { codec: Codec },
    #[error("{codec:?} payload decoded to {actual} bytes, index says {expected}")]
    LengthMismatch { codec: Codec, expected: u64, actual: u64 },
    #[error("payload uses the segment dictionary but the segment has none")]
    MissingDictionary,
    #[error("raw payload is {actual} bytes, index says {expected}")]
    RawLengthMismatch { expected: u64, actual: u64 },
}

/// Decodes one stored payload. `raw_len` comes from the (checksummed) index but is still
/// bounded by `max_raw_len` before anything is allocated, and decoding stops at
/// `raw_len + 1` bytes so a decompression bomb cannot run away.
pub fn decode(
    codec: Codec,
    stored: &[u8],
    raw_len: u64,
    dictionary: Option<&[u8]>,
    max_raw_len: u64,
) -> Result<Vec<u8>, DecodeError> {
    if raw_len > max_raw_len {
        return Err(DecodeError::TooLarge { raw_len, limit: max_raw_len });
    }
    // Bounded by max_raw_len just above, which the caller keeps far below usize::MAX.
    let expected = usize::try_from(raw_len).map_err(|_| DecodeError::TooLarge { raw_len, limit: max_raw_len })?;
    let decoded = match codec {
        Codec::Raw => {
            if stored.len() != expected {
                return Err(DecodeError::RawLengthMismatch { expected: raw_len, actual: stored.len() as u64 });
            }
            stored.to_vec()
        }
        Codec::Lz4 => {
            // An LZ4 block expands at most ~255x; refuse claims beyond that before allocating.
            if expected > stored.len().saturating_mul(255).saturating_add(16) {
                return Err(DecodeError::Corrupt { codec });
            }
            lz4_flex::block::decompress(stored, expected).map_err(|_| DecodeError::Corrupt { codec })?
        }
        Codec::Zstd | Codec::ZstdDict => {
            let dictionary_bytes: &[u8] = match (codec, dictionary) {
                (Codec::ZstdDict, Some(bytes)) => bytes,
                (Codec::ZstdDict, None) => return Err(DecodeError::MissingDictionary),
                _ => &[],
            };
            decode_zstd_bounded(stored, dictionary_bytes, expected).ok_or(DecodeError::Corrupt { codec })?
        }
    };
    if decoded.len() != expected {
        return Err(DecodeError::LengthMismatch { codec, expected: raw_len, actual: decoded.len() as u64 });
    }
    Ok(decoded)
}

thread_local! {
    /// One zstd decompression context per thread, reused by every decode on it: making a
    /// context (and a streaming decoder's buffers) costs about three times what decoding a
    /// small record does (`cargo bench -p vera-protocol --bench pack`, `decode_record`).
    /// A thread that has decoded keeps 94 KiB (`ZSTD_sizeof_DCtx`, zstd 1.5.7); a
    /// dictionary's copy (about 140 KiB more) is held only during the call.
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decodes a zstd payload into a buffer of `expected + 1` bytes: a frame that holds more is
/// refused (`None`) when it fills the buffer, so a decompression bomb cannot run away; one
/// that holds fewer bytes, or exactly one more, comes back for the caller's length check.
fn decode_zstd_bounded(stored: &[u8], dictionary: &[u8], expected: usize) -> Option<Vec<u8>> {
    let capacity = expected.saturating_add(1);
    let decode = |context: &mut zstd::bulk::Decompressor<'static>| {
        context.set_dictionary(dictionary).and_then(|()| context.decompress(stored, capacity))
    };
    ZSTD_CONTEXT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let context = match slot.as_mut() {
                Some(context) => context,
                None => slot.insert(zstd::bulk::Decompressor::new().ok()?),
            };
            let decoded = decode(context);
            // Dropping the dictionary's copy leaves an idle thread holding only the
            // context; a context that failed is not trusted again.
            if decoded.is_err() || context.set_dictionary(&[]).is_err() {
                *slot = None;
            }
            decoded.ok()
        }
        // Only reachable if a decode ever ran inside another on one thread: use a fresh one.
        Err(_) => decode(&mut zstd::bulk::Decompressor::new().ok()?).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_record(i: usize) -> Vec<u8> {
        format!(
            "{{\"receipt_id\":\"R-{i:08}\",\"store\":\"Store #{}\",\"amount_cents\":{},\"currency\":\"EUR\",\"items\":[{{\"sku\":\"SKU-{}\",\"qty\":{}}}]}}",
            i % 17,
            (i * 7919) % 100_000,
            i % 251,
            i % 5 + 1
        )
        .into_bytes()
    }

    #[test]
    fn precompressed_formats_are_stored_raw() {
        let policy = CompressionPolicy::default();
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0];
        jpeg.extend(std::iter::repeat_n(b'a', 10_000));
        let mut gzip = vec![0x1F, 0x8B, 0x08];
        gzip.extend(std::iter::repeat_n(b'a', 10_000));
        let mut zstd_frame = vec![0x28, 0xB5, 0x2F, 0xFD];
        zstd_frame.extend(std::iter::repeat_n(b'a', 10_000));
        for payload in [jpeg, gzip, zstd_frame] {
            assert!(is_precompressed(&payload));
            assert_eq!(prepare(&policy, &payload), Prepared::Final { codec: Codec::Raw, stored: payload.clone() });
        }
    }

    #[test]
    fn text_is_compressed_and_noise_is_not() {
        let policy = CompressionPolicy::default();
        let text: Vec<u8> = (0..2000).flat_map(json_record).collect();
        match prepare(&policy, &text) {
            Prepared::Final { codec: Codec::Zstd, stored } => assert!(stored.len() * 4 < text.len()),
            other => panic!("expected zstd, got {other:?}"),
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert_eq!(prepare(&policy, &noise), Prepared::Final { codec: Codec::Raw, stored: noise.clone() });
    }

    #[test]
    fn speed_mode_uses_lz4_and_round_trips() {
        let policy = CompressionPolicy { mode: CompressionMode::Speed, ..CompressionPolicy::default() };
        let text: Vec<u8> = (0..500).flat_map(json_record).collect();
        let Prepared::Final { codec, stored } = prepare(&policy, &text) else {
            panic!("speed mode has no dictionaries")
        };
        assert_eq!(codec, Codec::Lz4);
        assert_eq!(decode(codec, &stored, text.len() as u64, None, 1 << 30).unwrap(), text);
    }

    #[test]
    fn small_text_becomes_a_dictionary_candidate() {
        let policy = CompressionPolicy::default();
        assert!(matches!(prepare(&policy, &json_record(1)), Prepared::DictionaryCandidate { .. }));
        let tiny = b"ok".to_vec();
        assert_eq!(prepare(&policy, &tiny), Prepared::Final { codec: Codec::Raw, stored: tiny.clone() });
    }

    /// 400 small JSON records and a dictionary trained on them.
    fn records_and_dictionary(policy: &CompressionPolicy) -> (Vec<Vec<u8>>, Vec<u8>) {
        let records: Vec<Vec<u8>> = (0..400).map(json_record).collect();
        let samples: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let dictionary = train_dictionary(policy, &samples).expect("dictionary trains");
        (records, dictionary)
    }

    #[test]
    fn dictionary_beats_plain_zstd_on_small_records() {
        let policy = CompressionPolicy::default();
        let (records, dictionary) = records_and_dictionary(&policy);
        let mut compressor = DictionaryCompressor::new(&policy, &dictionary).unwrap();
        let (mut with_dict, mut plain) = (0usize, 0usize);
        for record in &records {
            let (codec, stored) = finish_candidate(&policy, Some(&mut compressor), record);
            assert_eq!(codec, Codec::ZstdDict);
            assert_eq!(&decode(codec, &stored, record.len() as u64, Some(&dictionary), 1 << 20).unwrap(), record);
            with_dict += stored.len();
            plain += compress_plain(&policy, record).map_or(record.len(), |(_, s)| s.len());
        }
        assert!(with_dict * 2 < plain, "dictionary {with_dict} vs plain {plain}");
    }

    #[test]
    fn a_reused_decoding_context_never_carries_a_dictionary_or_a_failure_over() {
        let policy = CompressionPolicy::default();
        let (records, dictionary) = records_and_dictionary(&policy);
        let mut compressor = DictionaryCompressor::new(&policy, &dictionary).unwrap();
        let record = &records[7];
        let with_dictionary = compressor.compress(record).unwrap();
        let plain = zstd::bulk::compress(record, 3).unwrap();
        let len = record.len() as u64;
        for _ in 0..3 {
            let decoded = decode(Codec::ZstdDict, &with_dictionary, len, Some(&dictionary), 1 << 20);
            assert_eq!(decoded.as_ref(), Ok(record));
            // The same thread's next decode has no dictionary: the record cannot decode.
            assert_eq!(
                decode(Codec::Zstd, &with_dictionary, len, None, 1 << 20),
                Err(DecodeError::Corrupt { codec: Codec::Zstd })
            );
            assert_eq!(decode(Codec::Zstd, &plain, len, None, 1 << 20).as_ref(), Ok(record));
            // A failure leaves the thread able to decode the next payload.
            assert!(decode(Codec::Zstd, &plain[..plain.len() / 2], len, None, 1 << 20).is_err());
            let other = decode(Codec::ZstdDict, &with_dictionary, len, Some(&dictionary), 1 << 20);
            assert_eq!(other.as_ref(), Ok(record));
        }
    }

    #[test]
    fn decode_refuses_hostile_lengths() {
        let stored = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        assert_eq!(
            decode(Codec::Zstd, &stored, 1 << 20, None, 1000),
            Err(DecodeError::TooLarge { raw_len: 1 << 20, limit: 1000 })
        );
        // The index claims fewer bytes than the frame holds: refused, no runaway.
        assert_eq!(decode(Codec::Zstd, &stored, 10, None, 1 << 30), Err(DecodeError::Corrupt { codec: Codec::Zstd }));
        // One byte more than the index says is reported as a length mismatch.
        let eleven = zstd::bulk::compress(&[7u8; 11], 3).unwrap();
        assert_eq!(
            decode(Codec::Zstd, &eleven, 10, None, 1 << 30),
            Err(DecodeError::LengthMismatch { codec: Codec::Zstd, expected: 10, actual: 11 })
        );
        // And fewer bytes than the index says, too.
        assert_eq!(
            decode(Codec::Zstd, &eleven, 12, None, 1 << 30),
            Err(DecodeError::LengthMismatch { codec: Codec::Zstd, expected: 12, actual: 11 })
        );
        assert_eq!(
            decode(Codec::Lz4, &[0xF0], 1 << 20, None, 1 << 30),
            Err(DecodeError::Corrupt { codec: Codec::Lz4 })
        );
        assert_eq!(decode(Codec::ZstdDict, &stored, 1 << 20, None, 1 << 30), Err(DecodeError::MissingDictionary));
        assert!(decode(Codec::Zstd, b"not zstd", 5, None, 1 << 30).is_err());
    }

    #[test]
    fn policy_validation() {
        assert!(CompressionPolicy::default().validate().is_ok());
        let bad = CompressionPolicy { zstd_level: 0, ..CompressionPolicy::default() };
        assert_eq!(bad.validate(), Err(PolicyError::ZstdLevel(0)));
        let bad = CompressionPolicy { min_saving_ratio: 1.5, ..CompressionPolicy::default() };
        assert_eq!(bad.validate(), Err(PolicyError::SavingRatio(1.5)));
    }
}

#[cfg(test)]
mod sniffing_tests {
    use super::*;

    /// The formats the policy promises to store raw, each by its real magic bytes.
    #[test]
    fn every_listed_compressed_format_is_recognised() {
        let mut zip = b"PK\x03\x04".to_vec();
        zip.extend([0u8; 26]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("jpeg", vec![0xFF, 0xD8, 0xFF, 0xE0]),
            ("png", b"\x89PNG\r\n\x1a\n".to_vec()),
            ("gif", b"GIF89a".to_vec()),
            ("webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ".to_vec()),
            ("mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom".to_vec()),
            ("zip", zip),
            ("gzip", vec![0x1F, 0x8B, 0x08]),
            ("bzip2", b"BZh91AY&SY".to_vec()),
            ("xz", vec![0xFD, b'7', b'z', b'X', b'Z', 0x00]),
            ("zstd", vec![0x28, 0xB5, 0x2F, 0xFD]),
            ("7z", vec![b'7', b'z', 0xBC, 0xAF, 0x27, 0x1C]),
        ];
        for (name, mut bytes) in cases {
            bytes.extend(std::iter::repeat_n(b'a', 4096));
            assert!(is_precompressed(&bytes), "{name} not recognised (sniffed {:?})", sniff_mime(&bytes));
        }
        assert!(!is_precompressed(b"%PDF-1.7\n plain text content"));
        assert!(!is_precompressed(b"{\"json\": true}"));
    }
}

//! A realistic mixed corpus in SQLite, for the demo and the load test.
//!
//! Kinds, by share of files: JSON receipts, call-detail records, XML invoices, CSV
//! extracts and application logs (compressible), PDFs with text content, and JPEG, PNG,
//! gzip and zip payloads (already compressed: high-entropy bytes behind real magic
//! numbers). Sizes run from 200 B to 512 KiB with a long tail; the default mix has a
//! mean above 16 KiB. `created_at` spreads over `days` days in watermark order, with a
//! share of rows arriving late (created the day before they arrive). A handful of bad
//! rows (NULL payload, unparseable `created_at`, oversized payload, duplicate uid) test
//! the reject path.
//!
//! `vera demo`, `vera generate` and the load test use it.

use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use sqlx::Connection;

#[derive(Debug, Clone)]
pub struct CorpusSpec {
    pub files: u64,
    pub days: u32,
    /// First day of the spread (UTC midnight), as Unix seconds.
    pub start_unix_seconds: i64,
    /// Share of rows created the day before they arrive.
    pub late_share: f64,
    /// Bad rows of each kind to include.
    pub bad_rows_per_kind: u64,
    /// Size of the deliberately oversized rows.
    pub oversized_bytes: usize,
    pub seed: u64,
    /// Kinds and their weights; see [`parse_mix`].
    pub mix: Vec<(Kind, u32)>,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        CorpusSpec {
            files: 100_000,
            days: 7,
            start_unix_seconds: 1_794_960_000, // 2026-11-18T00:00:00Z
            late_share: 0.01,
            bad_rows_per_kind: 5,
            oversized_bytes: 600 * 1024,
            seed: 20_261_124,
            mix: DEFAULT_MIX.to_vec(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot remove the old corpus {path}")]
    Remove { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot create the corpus database")]
    Create(#[from] crate::SourceError),
    #[error("cannot write the corpus")]
    Write(#[from] sqlx::Error),
}

/// True for the content types of the compressible, text-heavy kinds (receipts, call
/// records, XML, CSV, logs); PDFs are half text, half image and count as not text.
pub fn is_text_heavy(content_type: &str) -> bool {
    matches!(content_type, "application/json" | "text/plain" | "application/xml" | "text/csv")
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CorpusSummary {
    pub rows: u64,
    pub good_rows: u64,
    pub bad_rows: u64,
    pub payload_bytes: u64,
}

/// The kinds of file the corpus holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Receipt,
    CallRecord,
    Xml,
    Csv,
    Log,
    Pdf,
    Jpeg,
    Png,
    Gzip,
    Zip,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Receipt,
        Kind::CallRecord,
        Kind::Xml,
        Kind::Csv,
        Kind::Log,
        Kind::Pdf,
        Kind::Jpeg,
        Kind::Png,
        Kind::Gzip,
        Kind::Zip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Receipt => "receipt",
            Kind::CallRecord => "cdr",
            Kind::Xml => "xml",
            Kind::Csv => "csv",
            Kind::Log => "log",
            Kind::Pdf => "pdf",
            Kind::Jpeg => "jpeg",
            Kind::Png => "png",
            Kind::Gzip => "gzip",
            Kind::Zip => "zip",
        }
    }
}

/// (kind, weight): mostly small records, with enough documents and images for a mean
/// file size above 16 KiB.
pub const DEFAULT_MIX: &[(Kind, u32)] = &[
    (Kind::Receipt, 22),
    (Kind::CallRecord, 14),
    (Kind::Xml, 8),
    (Kind::Csv, 8),
    (Kind::Log, 8),
    (Kind::Pdf, 14),
    (Kind::Jpeg, 14),
    (Kind::Png, 6),
    (Kind::Gzip, 3),
    (Kind::Zip, 3),
];

/// Parses a mix such as `receipt=22,cdr=14,pdf=10,jpeg=5`: kind names from
/// [`Kind::name`] with relative weights; kinds left out get weight 0.
pub fn parse_mix(text: &str) -> Result<Vec<(Kind, u32)>, String> {
    let mut mix = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) =
            part.split_once('=').ok_or_else(|| format!("{part:?} is not KIND=WEIGHT (e.g. receipt=22)"))?;
        let kind = Kind::ALL.into_iter().find(|k| k.name() == name.trim()).ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown kind {name:?}; kinds are {}", names.join(", "))
        })?;
        if mix.iter().any(|(seen, _)| *seen == kind) {
            return Err(format!("kind {name:?} is named twice"));
        }
        let weight: u32 = weight.trim().parse().map_err(|_| format!("weight {weight:?} is not a whole number"))?;
        mix.push((kind, weight));
    }
    if mix.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
        return Err("the mix needs at least one kind with a weight above 0".to_owned());
    }
    Ok(mix)
}

/// One file drawn from `mix`, as [`generate`] makes them: its payload and content type.
/// The load test's arrival patterns build their rows with it.
pub fn sample_file(rng: &mut SmallRng, mix: &[(Kind, u32)], id: u64) -> (Vec<u8>, &'static str) {
    let kind = pick_kind(rng, mix);
    content(rng, kind, id)
}

fn pick_kind(rng: &mut SmallRng, mix: &[(Kind, u32)]) -> Kind {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut roll = rng.gen_range(0..total.max(1));
    for (kind, weight) in mix {
        if roll < *weight {
            return *kind;
        }
        roll -= weight;
    }
    Kind::Receipt
}

/// Long-tailed size in `[min, max]`: log-uniform between min and a kind-specific typical
/// size, with 5 % drawn from the tail up to `max`.
fn size(rng: &mut SmallRng, min: usize, typical: usize, max: usize) -> usize {
    let upper = if rng.gen_bool(0.05) { max } else { typical };
    let log = rng.gen_range((min as f64).ln()..=(upper as f64).ln());
    (log.exp() as usize).clamp(min, max)
}

const MAX_FILE: usize = 512 * 1024;

fn size_range(kind: Kind) -> (usize, usize, usize) {
    match kind {
        Kind::Receipt => (200, 4096, 4096),
        Kind::CallRecord => (200, 1500, 8 * 1024),
        Kind::Xml => (1024, 24 * 1024, 128 * 1024),
        Kind::Csv => (512, 32 * 1024, 256 * 1024),
        Kind::Log => (512, 48 * 1024, 256 * 1024),
        Kind::Pdf => (8 * 1024, 96 * 1024, MAX_FILE),
        Kind::Jpeg => (8 * 1024, 112 * 1024, MAX_FILE),
        Kind::Png => (2 * 1024, 48 * 1024, MAX_FILE),
        Kind::Gzip => (1024, 48 * 1024, MAX_FILE),
        Kind::Zip => (2 * 1024, 64 * 1024, MAX_FILE),
    }
}

fn content(rng: &mut SmallRng, kind: Kind, id: u64) -> (Vec<u8>, &'static str) {
    let (min, typical, max) = size_range(kind);
    let len = size(rng, min, typical, max);
    match kind {
        Kind::Receipt => (receipt(rng, id), "application/json"),
        Kind::CallRecord => (call_records(rng, len), "text/plain"),
        Kind::Xml => (xml_invoice(rng, len), "application/xml"),
        Kind::Csv => (csv(rng, len), "text/csv"),
        Kind::Log => (log_lines(rng, len), "text/plain"),
        Kind::Pdf => (pdf(rng, len), "application/pdf"),
        Kind::Jpeg => {
            (with_magic(rng, &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0], len), "image/jpeg")
        }
        Kind::Png => (with_magic(rng, &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A], len), "image/png"),
        Kind::Gzip => (with_magic(rng, &[0x1F, 0x8B, 0x08, 0x00], len), "application/gzip"),
        Kind::Zip => (with_magic(rng, b"PK\x03\x04", len), "application/zip"),
    }
}

fn with_magic(rng: &mut SmallRng, magic: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len.max(magic.len())];
    rng.fill_bytes(&mut bytes);
    bytes[..magic.len()].copy_from_slice(magic);
    bytes
}

const STORES: &[&str] =
    &["Amsterdam Centraal", "Utrecht Hoog Catharijne", "Rotterdam Markthal", "Den Haag HS", "Eindhoven Strijp"];
const WORDS: &[&str] = &[
    "account",
    "transfer",
    "invoice",
    "payment",
    "settlement",
    "customer",
    "reference",
    "balance",
    "statement",
    "approved",
    "pending",
    "merchant",
    "terminal",
    "branch",
    "ledger",
    "period",
    "amount",
    "currency",
    "review",
    "archive",
];

fn receipt(rng: &mut SmallRng, id: u64) -> Vec<u8> {
    let items: Vec<String> = (0..rng.gen_range(1..8))
        .map(|_| {
            format!(
                r#"{{"sku":"SKU-{:06}","description":"{} {}","qty":{},"unit_price_cents":{},"vat_rate":"21%"}}"#,
                rng.gen_range(0..1_000_000),
                WORDS[rng.gen_range(0..WORDS.len())],
                WORDS[rng.gen_range(0..WORDS.len())],
                rng.gen_range(1..5),
                rng.gen_range(50..20_000)
            )
        })
        .collect();
    format!(
        r#"{{"receipt_id":"R-{id:012}","issued_at":"2026-11-{:02}T{:02}:{:02}:{:02}Z","store":{{"name":"{}","vat_id":"NL{:09}B01"}},"payment":{{"method":"card","scheme":"VISA","last4":"{:04}","auth_code":"{:06}"}},"items":[{}],"total_cents":{},"currency":"EUR"}}"#,
        rng.gen_range(1..29),
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen_range(0..60),
        STORES[rng.gen_range(0..STORES.len())],
        rng.gen_range(0..1_000_000_000),
        rng.gen_range(0..10_000),
        rng.gen_range(0..1_000_000),
        items.join(","),
        rng.gen_range(100..500_000)
    )
    .into_bytes()
}

fn call_records(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 256);
    while out.len() < len {
        out.push_str(&format!(
            "cdr_version=3;call_id={:016x};start=2026-11-{:02}T{:02}:{:02}:{:02}Z;duration_s={};caller=+3161{:07};callee=+3162{:07};cell=NL-{:05};result={}\n",
            rng.next_u64(),
            rng.gen_range(1..29),
            rng.gen_range(0..24),
            rng.gen_range(0..60),
            rng.gen_range(0..60),
            rng.gen_range(0..3600),
            rng.gen_range(0..10_000_000),
            rng.gen_range(0..10_000_000),
            rng.gen_range(0..100_000),
            ["ANSWERED", "BUSY", "NO_ANSWER", "FAILED"][rng.gen_range(0..4)]
        ));
    }
    out.into_bytes()
}

fn xml_invoice(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Invoice xmlns=\"urn:oasis:names:specification:ubl:schema:xsd:Invoice-2\"><ID>INV-{:010}</ID>",
        rng.gen_range(0..10_000_000_000u64)
    );
    while out.len() < len {
        out.push_str(&format!(
            "<InvoiceLine><ID>{}</ID><InvoicedQuantity unitCode=\"EA\">{}</InvoicedQuantity><LineExtensionAmount currencyID=\"EUR\">{}.{:02}</LineExtensionAmount><Item><Name>{} {}</Name></Item></InvoiceLine>\n",
            rng.gen_range(1..1000),
            rng.gen_range(1..50),
            rng.gen_range(1..10_000),
            rng.gen_range(0..100),
            WORDS[rng.gen_range(0..WORDS.len())],
            WORDS[rng.gen_range(0..WORDS.len())]
        ));
    }
    out.push_str("</Invoice>\n");
    out.into_bytes()
}

fn csv(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut out = String::from("date,account,counterparty,amount,currency,reference\n");
    while out.len() < len {
        out.push_str(&format!(
            "2026-11-{:02},NL{:02}BANK{:010},NL{:02}BANK{:010},{}.{:02},EUR,{}-{:08}\n",
            rng.gen_range(1..29),
            rng.gen_range(10..99),
            rng.gen_range(0..10_000_000_000u64),
            rng.gen_range(10..99),
            rng.gen_range(0..10_000_000_000u64),
            rng.gen_range(0..100_000),
            rng.gen_range(0..100),
            WORDS[rng.gen_range(0..WORDS.len())],
            rng.gen_range(0..100_000_000)
        ));
    }
    out.into_bytes()
}

fn log_lines(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 256);
    while out.len() < len {
        out.push_str(&format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z {} [{}] request_id={:016x} {} {} latency_ms={}\n",
            rng.gen_range(1..29),
            rng.gen_range(0..24),
            rng.gen_range(0..60),
            rng.gen_range(0..60),
            rng.gen_range(0..1000),
            ["INFO", "WARN", "DEBUG", "ERROR"][rng.gen_range(0..4)],
            ["payments", "ledger", "kyc", "gateway"][rng.gen_range(0..4)],
            rng.next_u64(),
            WORDS[rng.gen_range(0..WORDS.len())],
            WORDS[rng.gen_range(0..WORDS.len())],
            rng.gen_range(0..900)
        ));
    }
    out.into_bytes()
}

/// A small valid-looking PDF: text objects (compressible) plus an embedded image stream
/// (incompressible), as scanned statements tend to be.
fn pdf(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n".to_vec();
    let text_len = len / 2;
    out.extend_from_slice(b"3 0 obj << /Length 0 >> stream\nBT /F1 10 Tf 72 720 Td\n");
    while out.len() < text_len {
        out.extend_from_slice(
            format!(
                "({} {} {} {}.{:02} EUR) Tj T*\n",
                WORDS[rng.gen_range(0..WORDS.len())],
                WORDS[rng.gen_range(0..WORDS.len())],
                rng.gen_range(0..1_000_000),
                rng.gen_range(0..100_000),
                rng.gen_range(0..100)
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"ET\nendstream endobj\n4 0 obj << /Subtype /Image /Filter /DCTDecode >> stream\n");
    let image_len = len.saturating_sub(out.len() + 32);
    let start = out.len();
    out.resize(start + image_len, 0);
    rng.fill_bytes(&mut out[start..]);
    out.extend_from_slice(b"\nendstream endobj\n%%EOF\n");
    out
}

/// Writes the corpus to a fresh SQLite database at `path`; `on_row` is called once per
/// row written (progress bars).
pub async fn generate(
    path: &Path,
    spec: &CorpusSpec,
    on_row: &(dyn Fn() + Sync),
) -> Result<CorpusSummary, CorpusError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| CorpusError::Remove { path: path.to_owned(), source })?;
    }
    let mut connection = crate::sqlite::create_demo_database(path).await?;
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let mut summary = CorpusSummary::default();
    let seconds_per_row = (f64::from(spec.days) * 86_400.0) / spec.files.max(1) as f64;
    let bad_every =
        if spec.bad_rows_per_kind == 0 { u64::MAX } else { (spec.files / (spec.bad_rows_per_kind * 4 + 1)).max(2) };
    let mut bad_kind = 0u64;
    let mut last_good = (String::new(), String::new());
    let mut transaction = connection.begin().await?;
    for id in 1..=spec.files {
        let arrival = spec.start_unix_seconds + (id as f64 * seconds_per_row) as i64;
        let late = rng.gen_bool(spec.late_share);
        let created = if late { arrival - 86_400 - rng.gen_range(0..3600) } else { arrival - rng.gen_range(0..60) };
        let created_at = format_rfc3339(created);
        let uid = format!("doc-{:010}-{:04x}", id, rng.gen_range(0..0x10000));
        let kind = pick_kind(&mut rng, &spec.mix);
        let (payload, content_type) = content(&mut rng, kind, id);
        let is_bad = id % bad_every == 0 && bad_kind < spec.bad_rows_per_kind * 4;
        let (uid, created_at, payload) = if is_bad {
            bad_kind += 1;
            summary.bad_rows += 1;
            match bad_kind % 4 {
                0 => (uid, created_at, None),
                1 => (uid, "2026-13-45 25:61".to_owned(), Some(payload)),
                2 => (uid, created_at, Some(with_magic(&mut rng, b"\x89PNG\r\n\x1a\n", spec.oversized_bytes))),
                // Same uid and created_at as an earlier row, different content.
                _ => (
                    last_good.0.clone(),
                    last_good.1.clone(),
                    Some(b"a different payload for a duplicate uid".to_vec()),
                ),
            }
        } else {
            summary.good_rows += 1;
            last_good = (uid.clone(), created_at.clone());
            (uid, created_at, Some(payload))
        };
        summary.payload_bytes += payload.as_ref().map_or(0, |p| p.len() as u64);
        sqlx::query("INSERT INTO files (id, uid, created_at, content_type, payload) VALUES (?, ?, ?, ?, ?)")
            .bind(id as i64)
            .bind(uid)
            .bind(created_at)
            .bind(content_type)
            .bind(payload)
            .execute(&mut *transaction)
            .await?;
        summary.rows += 1;
        if id % 10_000 == 0 {
            transaction.commit().await?;
            transaction = connection.begin().await?;
        }
        on_row();
    }
    transaction.commit().await?;
    connection.close().await?;
    Ok(summary)
}

fn format_rfc3339(unix_seconds: i64) -> String {
    vera_protocol::Timestamp::from_unix_seconds(unix_seconds)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|_| "invalid".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_bad_ones_are_refused_with_a_reason() {
        assert_eq!(parse_mix("receipt=3, pdf=1").unwrap(), vec![(Kind::Receipt, 3), (Kind::Pdf, 1)]);
        assert!(parse_mix("paper=1").unwrap_err().contains("kinds are receipt, cdr"));
        assert!(parse_mix("receipt").unwrap_err().contains("KIND=WEIGHT"));
        assert!(parse_mix("receipt=x").unwrap_err().contains("whole number"));
        assert!(parse_mix("receipt=1,receipt=2").unwrap_err().contains("twice"));
        assert!(parse_mix("receipt=0").unwrap_err().contains("above 0"));
        let names: Vec<String> = DEFAULT_MIX.iter().map(|(k, w)| format!("{}={w}", k.name())).collect();
        assert_eq!(parse_mix(&names.join(",")).unwrap(), DEFAULT_MIX.to_vec(), "every kind name round-trips");
    }

    #[tokio::test]
    async fn a_text_only_mix_yields_only_text_content_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.sqlite");
        let spec = CorpusSpec {
            files: 200,
            bad_rows_per_kind: 0,
            mix: parse_mix("receipt=1,log=1,csv=1").unwrap(),
            ..CorpusSpec::default()
        };
        let summary = generate(&path, &spec, &|| {}).await.unwrap();
        assert_eq!((summary.rows, summary.good_rows), (200, 200));
        use crate::Source;
        use futures::TryStreamExt;
        let source = crate::sqlite::SqliteSource::open("demo", &path, crate::SourceMapping::demo()).await.unwrap();
        let all = vera_protocol::message::Slot::by_watermark(i64::MIN, i64::MAX, 0, 0);
        let rows: Vec<crate::SourceRow> = source.read_slot(all).try_collect().await.unwrap();
        assert_eq!(rows.len(), 200);
        for row in rows {
            let content_type = row.content_type.unwrap();
            assert!(is_text_heavy(&content_type), "{content_type} in a text-only mix");
        }
    }
}

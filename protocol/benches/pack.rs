//! Packing, lookup, decoding and dictionary benchmarks, each reported as a ratio against
//! a baseline measured in the same run (these machines are shared and noisy; ratios travel
//! better than absolute times).
//!
//! `cargo bench -p vera-protocol --bench pack`
//!
//! After criterion's own report, a summary table prints the ratios and the goals.

use std::hint::black_box;
use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use vera_protocol::Timestamp;
use vera_protocol::compress::{self, Codec, CompressionPolicy};
use vera_protocol::routing::{ShardAddr, locate_shard};
use vera_protocol::shard::{FileInput, ReadLimits, SegmentIndex, SegmentSettings, SegmentWriter};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn day() -> Timestamp {
    Timestamp::parse("2026-11-24T00:00:00Z").unwrap_or(Timestamp::MIN)
}

fn addr() -> ShardAddr {
    locate_shard("bench", day(), 0).expect("valid address")
}

/// Log lines and JSON records: the compressible half of a realistic corpus.
fn text_file(rng: &mut Rng, len: usize) -> Vec<u8> {
    let levels = ["INFO", "WARN", "DEBUG", "ERROR"];
    let services = ["payments", "ledger", "kyc", "gateway", "archive"];
    let mut out = String::with_capacity(len + 200);
    while out.len() < len {
        out.push_str(&format!(
            "2026-11-24T10:{:02}:{:02}.{:03}Z {} [{}] request_id={:016x} account=NL{:02}BANK{:010} amount={}.{:02} latency_ms={}\n",
            rng.below(60),
            rng.below(60),
            rng.below(1000),
            levels[rng.below(4) as usize],
            services[rng.below(5) as usize],
            rng.next(),
            rng.below(100),
            rng.below(10_000_000_000),
            rng.below(100_000),
            rng.below(100),
            rng.below(900)
        ));
    }
    out.truncate(len);
    out.into_bytes()
}

fn random_file(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

fn receipt(rng: &mut Rng) -> Vec<u8> {
    let stores = ["Amsterdam Centraal", "Utrecht Hoog Catharijne", "Rotterdam Markthal", "Den Haag HS"];
    let items: Vec<String> = (0..1 + rng.below(6))
        .map(|_| {
            format!(
                r#"{{"sku":"SKU-{:06}","description":"Item {}","qty":{},"unit_price_cents":{},"vat_rate":"21%"}}"#,
                rng.below(1_000_000),
                rng.below(500),
                1 + rng.below(4),
                rng.below(10_000)
            )
        })
        .collect();
    format!(
        r#"{{"receipt_id":"R-{:012}","issued_at":"2026-11-24T{:02}:{:02}:{:02}Z","store":{{"name":"{}","vat_id":"NL{:09}B01"}},"payment":{{"method":"card","scheme":"VISA","last4":"{:04}","auth_code":"{:06}"}},"items":[{}],"total_cents":{},"currency":"EUR"}}"#,
        rng.below(1_000_000_000_000),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        stores[rng.below(4) as usize],
        rng.below(1_000_000_000),
        rng.below(10_000),
        rng.below(1_000_000),
        items.join(","),
        rng.below(100_000)
    )
    .into_bytes()
}

fn call_record(rng: &mut Rng) -> Vec<u8> {
    format!(
        "cdr_version=3;call_id={:016x};start=2026-11-24T{:02}:{:02}:{:02}Z;duration_s={};caller=+3161{:07};callee=+3162{:07};imsi=20404{:010};cell=NL-{:05};bearer=VoLTE;result={};charge_units={}\n",
        rng.next(),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(3600),
        rng.below(10_000_000),
        rng.below(10_000_000),
        rng.below(10_000_000_000),
        rng.below(100_000),
        ["ANSWERED", "BUSY", "NO_ANSWER", "FAILED"][rng.below(4) as usize],
        rng.below(500)
    )
    .into_bytes()
}

fn pack(files: &[Vec<u8>], settings: &SegmentSettings) -> (Vec<u8>, u64) {
    let mut writer = SegmentWriter::new(settings.clone(), Cursor::new(Vec::new())).expect("valid settings");
    for (i, bytes) in files.iter().enumerate() {
        let uid = format!("f{i:08}");
        writer.add(FileInput { uid: &uid, created_at: day(), content_type: None, bytes }).expect("file packs");
    }
    let mut out = Vec::new();
    let sealed = writer.finish(&mut out).expect("segment seals");
    (out, sealed.stored_payload_bytes + u64::from(sealed.footer.dictionary_len))
}

fn total_len(files: &[Vec<u8>]) -> u64 {
    files.iter().map(|f| f.len() as u64).sum()
}

fn criterion_home() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/criterion"))
}

fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_home().join(group).join(function).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default()
        .output_directory(&criterion_home())
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let settings = SegmentSettings::new(addr(), 0);
    let mut rng = Rng(0x5EED_1234_ABCD_0001);

    // 1. Compressible text, 256 files of 32 KiB (above the dictionary cut-off).
    let text: Vec<Vec<u8>> = (0..256).map(|_| text_file(&mut rng, 32 * 1024)).collect();
    let mut group = criterion.benchmark_group("pack_text");
    group.throughput(Throughput::Bytes(total_len(&text)));
    group.bench_function("vera_pack", |b| b.iter(|| black_box(pack(&text, &settings))));
    group.bench_function("zstd3_per_file", |b| {
        b.iter(|| {
            for file in &text {
                black_box(zstd::bulk::compress(file, 3).expect("zstd"));
            }
        })
    });
    group.finish();

    // 2. Incompressible data, 64 files of 256 KiB.
    let noise: Vec<Vec<u8>> = (0..64).map(|_| random_file(&mut rng, 256 * 1024)).collect();
    let mut group = criterion.benchmark_group("pack_incompressible");
    group.throughput(Throughput::Bytes(total_len(&noise)));
    group.bench_function("vera_pack", |b| b.iter(|| black_box(pack(&noise, &settings))));
    group.bench_function("memcpy_blake3", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(total_len(&noise) as usize);
            for file in &noise {
                out.extend_from_slice(black_box(blake3::hash(file).as_bytes()));
                out.extend_from_slice(file);
            }
            black_box(out)
        })
    });
    group.finish();

    // 3. Lookup + decode + verify one 16 KiB text file from an open segment of 2,000.
    let lookup_files: Vec<Vec<u8>> = (0..2000).map(|_| text_file(&mut rng, 16 * 1024)).collect();
    let (segment, _) = pack(&lookup_files, &settings);
    let limits = ReadLimits::default();
    let index = SegmentIndex::open_from(&mut Cursor::new(&segment), segment.len() as u64, 64 * 1024, &limits)
        .expect("segment opens");
    let uids: Vec<String> = (0..2000).map(|i| format!("f{i:08}")).collect();
    let mut group = criterion.benchmark_group("lookup_decode");
    group.throughput(Throughput::Elements(1));
    let mut pick = Rng(7);
    group.bench_function("vera_find_decode_verify", |b| {
        b.iter(|| {
            let uid = &uids[pick.below(2000) as usize];
            let file = index.find(uid).expect("present");
            let range = file.record_range();
            black_box(index.decode(file, &segment[range.start as usize..range.end as usize], &limits).expect("decodes"))
        })
    });
    let stored: Vec<Vec<u8>> = lookup_files.iter().map(|f| zstd::bulk::compress(f, 3).expect("zstd")).collect();
    group.bench_function("zstd_decompress_only", |b| {
        b.iter(|| {
            let i = pick.below(2000) as usize;
            black_box(zstd::bulk::decompress(&stored[i], 16 * 1024).expect("zstd"))
        })
    });
    group.finish();

    // 4. Dictionary: pack time with and without, on 4,000 small receipts.
    let receipts: Vec<Vec<u8>> = (0..4000).map(|_| receipt(&mut rng)).collect();
    let mut no_dictionary = settings.clone();
    no_dictionary.policy.dictionary.enabled = false;
    let mut group = criterion.benchmark_group("pack_small_records");
    group.throughput(Throughput::Elements(receipts.len() as u64));
    for (name, candidate) in [("with_dictionary", &settings), ("without_dictionary", &no_dictionary)] {
        group.bench_with_input(BenchmarkId::from_parameter(name), candidate, |b, s| {
            b.iter(|| black_box(pack(&receipts, s)))
        });
    }
    group.finish();

    // 5. Decoding one record compressed with a segment dictionary: `compress::decode`
    //    (one zstd context per thread, reused) against a fresh streaming decoder per
    //    record, which is how VERA decoded before.
    let policy = CompressionPolicy::default();
    let receipt_slices: Vec<&[u8]> = receipts.iter().map(Vec::as_slice).collect();
    let dictionary = compress::train_dictionary(&policy, &receipt_slices).expect("dictionary trains");
    let mut compressor = compress::DictionaryCompressor::new(&policy, &dictionary).expect("compressor");
    let receipts_stored: Vec<Vec<u8>> = receipts.iter().map(|r| compressor.compress(r).expect("compresses")).collect();
    let mut group = criterion.benchmark_group("decode_record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("vera_decode", |b| {
        b.iter(|| {
            let i = pick.below(4000) as usize;
            let len = receipts[i].len() as u64;
            black_box(
                compress::decode(Codec::ZstdDict, &receipts_stored[i], len, Some(&dictionary), 1 << 20)
                    .expect("decodes"),
            )
        })
    });
    group.bench_function("fresh_stream_decoder", |b| {
        b.iter(|| {
            let i = pick.below(4000) as usize;
            let decoder =
                zstd::stream::read::Decoder::with_dictionary(&receipts_stored[i][..], &dictionary).expect("decoder");
            let mut output = Vec::with_capacity(receipts[i].len());
            decoder.take(receipts[i].len() as u64 + 1).read_to_end(&mut output).expect("decodes");
            black_box(output)
        })
    });
    group.finish();
    criterion.final_summary();

    // Ratios.
    let ratio = |group: &str, numerator: &str, denominator: &str| -> Option<f64> {
        Some(mean_ns(group, denominator)? / mean_ns(group, numerator)?)
    };
    let throughput_gbs = |group: &str, function: &str, bytes: u64| mean_ns(group, function).map(|ns| bytes as f64 / ns);
    println!("\n| benchmark | measured | goal |");
    println!("|---|---|---|");
    if let Some(r) = ratio("pack_text", "vera_pack", "zstd3_per_file") {
        println!("| pack compressible text vs plain zstd -3 (speed ratio) | {r:.2}x | >= 0.8x |");
    }
    if let (Some(r), Some(gbs)) = (
        ratio("pack_incompressible", "vera_pack", "memcpy_blake3"),
        throughput_gbs("pack_incompressible", "vera_pack", total_len(&noise)),
    ) {
        println!(
            "| pack incompressible vs memcpy+BLAKE3 (speed ratio) | {r:.2}x, {gbs:.2} GB/s on one core | >= 1 GB/s per core |"
        );
    }
    if let (Some(vera), Some(zstd_only)) =
        (mean_ns("lookup_decode", "vera_find_decode_verify"), mean_ns("lookup_decode", "zstd_decompress_only"))
    {
        println!(
            "| find + decode + verify one 16 KiB file | {:.1} us ({:.2}x the bare zstd decompress, {:.1} us) | report |",
            vera / 1000.0,
            vera / zstd_only,
            zstd_only / 1000.0
        );
    }
    if let (Some(r), Some(vera)) =
        (ratio("decode_record", "vera_decode", "fresh_stream_decoder"), mean_ns("decode_record", "vera_decode"))
    {
        println!(
            "| decode one small record with the segment dictionary vs a fresh zstd decoder per record (speed ratio) | {r:.2}x, {:.1} us | report |",
            vera / 1000.0
        );
    }
    if let Some(r) = ratio("pack_small_records", "with_dictionary", "without_dictionary") {
        println!("| pack time, small records, dictionary vs none (speed ratio) | {r:.2}x | report |");
    }
    for (name, files) in [
        ("JSON receipts", receipts.clone()),
        ("call records", (0..4000).map(|_| call_record(&mut rng)).collect::<Vec<_>>()),
        ("mixed small files", mixed_small(&mut rng)),
    ] {
        let (_, with_dictionary) = pack(&files, &settings);
        let (_, without) = pack(&files, &no_dictionary);
        let raw = total_len(&files);
        println!(
            "| size, {name} under 4 KiB: per-file zstd / per-shard dictionary | {:.2}x ({raw} B raw -> {without} B per-file, {with_dictionary} B with dictionary incl. the dictionary) | >= 2x on one kind |",
            without as f64 / with_dictionary as f64
        );
    }
}

/// Receipts, call records, XML, CSV, log lines and random binary, all under 4 KiB.
fn mixed_small(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..4000)
        .map(|i| match i % 6 {
            0 => receipt(rng),
            1 => call_record(rng),
            2 => format!(
                "<?xml version=\"1.0\"?><invoice id=\"{}\"><customer>C{:08}</customer><line qty=\"{}\" price=\"{}\"/></invoice>",
                rng.next(),
                rng.below(100_000_000),
                rng.below(9),
                rng.below(100_000)
            )
            .into_bytes(),
            3 => (0..1 + rng.below(20))
                .map(|_| format!("{},{},{},EUR\n", rng.below(1_000_000), rng.below(100_000), rng.below(365)))
                .collect::<String>()
                .into_bytes(),
            4 => {
                let len = 200 + rng.below(3000) as usize;
                text_file(rng, len)
            }
            _ => {
                let len = 200 + rng.below(3000) as usize;
                random_file(rng, len)
            }
        })
        .collect()
}

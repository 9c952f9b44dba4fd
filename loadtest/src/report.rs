//! The figures, as JSON and as a Markdown table, with the goals checked against them.

use std::collections::BTreeMap;

use serde::Serialize;
use vera_source::corpus::{CorpusSummary, Kind};
use vera_store::shards::CacheStats;

use crate::ingest::IngestResult;
use crate::reads::ReadFigures;
use crate::space::{TarZstdSizes, VeraSizes};

/// Everything one run measured.
pub struct RunInfo {
    pub quick: bool,
    pub server: String,
    pub mix: Vec<(Kind, u32)>,
    pub corpus: CorpusSummary,
    pub generate_seconds: f64,
    pub vera: IngestResult,
    /// Pack tasks that failed transiently and were delivered again.
    pub tasks_retried: u64,
    pub naive: IngestResult,
    pub vera_sizes: VeraSizes,
    pub naive_bytes: u64,
    pub tar_zstd: TarZstdSizes,
    pub suffix_kib: u64,
    pub later_suffix_kib: u64,
    pub cold: ReadFigures,
    /// Every stored file's cold-read cost, worked out from the layout: files by GETs.
    pub cold_costs_by_layout: BTreeMap<u64, u64>,
    pub warm: ReadFigures,
    pub direct: ReadFigures,
    pub cache: CacheStats,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub s3_server: String,
    pub mode: &'static str,
    pub seconds: f64,
    pub corpus: Corpus,
    pub vera: IngestResult,
    pub naive: IngestResult,
    pub ratios: Ratios,
    pub space: Space,
    pub read: Reads,
    pub reader: ReaderMemory,
    pub goals: Vec<Goal>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Corpus {
    pub files: u64,
    pub bytes: u64,
    pub mean_file_bytes: f64,
    pub mix: String,
    pub generate_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    /// VERA files/min ÷ naive files/min.
    pub ingest_speedup: f64,
    /// The most `ingest_speedup` could be on this machine with this S3 server: VERA's
    /// rate if every core did nothing but the S3 server's share of VERA's work (the
    /// client's share taken as free), ÷ naive files/min. `None` when the server's CPU was
    /// not measured (`--endpoint`) or was too small to read.
    pub ingest_speedup_ceiling: Option<f64>,
    /// Naive PUTs ÷ VERA PUTs.
    pub put_reduction: f64,
    /// Segments in the bucket after the ingest (listed, not as reported by the workers:
    /// a retried task's first attempt may have written some).
    pub segments: u64,
    pub files_per_segment: f64,
    /// Pack tasks that failed transiently and were delivered again.
    pub tasks_retried: u64,
    /// Addresses with segments; segments ÷ addresses is what a cold read may probe.
    pub addresses: u64,
    pub max_segments_per_address: u64,
}

#[derive(Debug, Serialize)]
pub struct Space {
    pub raw_bytes: u64,
    pub vera_bytes: u64,
    pub naive_bytes: u64,
    pub tar_zstd_bytes: u64,
    /// vera_bytes ÷ tar_zstd_bytes − 1.
    pub vera_over_tar_zstd: f64,
    pub text: TextSpace,
}

#[derive(Debug, Serialize)]
pub struct TextSpace {
    pub raw_bytes: u64,
    pub vera_bytes: u64,
    pub tar_zstd_bytes: u64,
    /// 1 − vera_bytes ÷ raw_bytes.
    pub vera_saved: f64,
}

#[derive(Debug, Serialize)]
pub struct Reads {
    /// The reader's cold-read suffix (`--suffix-kib`).
    pub suffix_kib: u64,
    /// Its cold-read suffix for later generations (`--later-suffix-kib`).
    pub later_suffix_kib: u64,
    pub cold: ReadFigures,
    /// What a cold read of every stored file costs in answered GETs, worked out from the
    /// segments' layout (loadtest/src/layout.rs): `{"1": files, "2": files, …}`. The
    /// sampled cold reads are checked against it (`cold.reads_as_layout_predicts`).
    pub cold_by_layout: BTreeMap<u64, u64>,
    pub warm: ReadFigures,
    /// The same records as the warm reads, by bare S3 range GET (no reader, no HTTP hop):
    /// the floor the reader's latency sits on.
    pub direct_s3_range_get: ReadFigures,
}

#[derive(Debug, Serialize)]
pub struct ReaderMemory {
    /// The lookup path's resident bytes per cached file, with every segment's read index
    /// loaded: the index cache's bytes (its byte budget's weigher, cache keys included)
    /// less the zstd dictionaries.
    pub bytes_per_cached_file: f64,
    /// The segments' zstd dictionaries (kept to decode, not to look up) per cached file.
    pub dictionary_bytes_per_cached_file: f64,
    /// Both together: everything the index cache holds, per cached file.
    pub total_bytes_per_cached_file: f64,
    pub cached_files: u64,
    pub cached_segments: u64,
    pub cache_bytes: u64,
    pub dictionary_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: &'static str,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// The mean GETs per read (on the wire), and how many reads took more than `limit`
/// GETs that the server answered; and on the wire, when GETs it refused with a 5xx
/// change that.
///
/// The goals are judged on answered GETs: s3s-fs answers 500 to a suffix range longer
/// than the object, which S3 (and moto) serve with the whole object, so on S3 the refused
/// GET and the one sent after it are one GET (loadtest/README.md, "Suffix ranges").
fn gets_measured(reads: &ReadFigures, limit: u64) -> String {
    let (over, over_answered) = reads.reads_over(limit);
    let mut measured =
        format!("{:.3} mean; {over_answered} of {} reads over {limit}", reads.gets_per_read, reads.reads);
    if over_answered != over {
        measured += &format!(" ({over} counting the GETs s3s-fs refused with a 5xx)");
    }
    measured
}

/// Files whose count in `by_gets` is over `limit`.
fn files_over(by_gets: &BTreeMap<u64, u64>, limit: u64) -> u64 {
    by_gets.range(limit + 1..).map(|(_, files)| files).sum()
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 { numerator / denominator } else { 0.0 }
}

/// The ingest ratio VERA could reach at most where both ways share `cores` with the S3
/// server: VERA's files/min if all of them ran the server's part of VERA's work and
/// nothing else (`server_ms_per_file` each), against the naive files/min measured.
/// Storing VERA's bytes costs the server that CPU whatever the client does, so no client
/// can beat this here.
fn speedup_ceiling(cores: usize, vera_server_ms_per_file: Option<f64>, naive_files_per_minute: f64) -> Option<f64> {
    let server_ms = vera_server_ms_per_file.filter(|ms| *ms > 0.0)?;
    (naive_files_per_minute > 0.0).then(|| cores as f64 * 60_000.0 / server_ms / naive_files_per_minute)
}

impl Report {
    pub fn build(run: RunInfo) -> Self {
        let corpus = Corpus {
            files: run.corpus.good_rows,
            bytes: run.corpus.payload_bytes,
            mean_file_bytes: ratio(run.corpus.payload_bytes as f64, run.corpus.good_rows as f64),
            mix: run.mix.iter().map(|(kind, weight)| format!("{}={weight}", kind.name())).collect::<Vec<_>>().join(","),
            generate_seconds: run.generate_seconds,
        };
        let machine = Machine::read();
        let ratios = Ratios {
            ingest_speedup: ratio(run.vera.files_per_minute, run.naive.files_per_minute),
            ingest_speedup_ceiling: speedup_ceiling(
                machine.cores,
                run.vera.cpu.server_ms_per_file,
                run.naive.files_per_minute,
            ),
            put_reduction: ratio(run.naive.puts as f64, run.vera.puts as f64),
            segments: run.vera_sizes.segments,
            files_per_segment: ratio(run.vera.files as f64, run.vera_sizes.segments as f64),
            tasks_retried: run.tasks_retried,
            addresses: run.vera_sizes.addresses,
            max_segments_per_address: run.vera_sizes.max_segments_per_address,
        };
        let space = Space {
            raw_bytes: run.tar_zstd.all_raw_bytes,
            vera_bytes: run.vera_sizes.bucket_bytes,
            naive_bytes: run.naive_bytes,
            tar_zstd_bytes: run.tar_zstd.all_bytes,
            vera_over_tar_zstd: ratio(run.vera_sizes.bucket_bytes as f64, run.tar_zstd.all_bytes as f64) - 1.0,
            text: TextSpace {
                raw_bytes: run.vera_sizes.text_raw_bytes,
                vera_bytes: run.vera_sizes.text_stored_bytes,
                tar_zstd_bytes: run.tar_zstd.text_bytes,
                vera_saved: 1.0 - ratio(run.vera_sizes.text_stored_bytes as f64, run.vera_sizes.text_raw_bytes as f64),
            },
        };
        let files = run.cache.files as f64;
        let reader = ReaderMemory {
            bytes_per_cached_file: ratio((run.cache.bytes - run.cache.dictionary_bytes) as f64, files),
            dictionary_bytes_per_cached_file: ratio(run.cache.dictionary_bytes as f64, files),
            total_bytes_per_cached_file: ratio(run.cache.bytes as f64, files),
            cached_files: run.cache.files,
            cached_segments: run.cache.segments,
            cache_bytes: run.cache.bytes,
            dictionary_bytes: run.cache.dictionary_bytes,
        };
        let goals = vec![
            Goal {
                goal: "ingest rate vs naive",
                target: "≥ 50×".into(),
                measured: match ratios.ingest_speedup_ceiling {
                    Some(ceiling) => format!(
                        "{:.1}× (at most {ceiling:.0}× here: the S3 server's CPU for VERA's writes alone, on every core)",
                        ratios.ingest_speedup
                    ),
                    None => format!("{:.1}×", ratios.ingest_speedup),
                },
                met: ratios.ingest_speedup >= 50.0,
            },
            Goal {
                goal: "fewer PUTs than naive",
                target: "≥ 1,000×".into(),
                measured: format!("{:.0}×", ratios.put_reduction),
                met: ratios.put_reduction >= 1000.0,
            },
            Goal {
                goal: "warm read p99",
                target: "≤ 5 ms".into(),
                measured: format!("{:.2} ms", run.warm.p99_ms),
                met: run.warm.p99_ms <= 5.0,
            },
            // Per read, not on average: every read must keep to it.
            Goal {
                goal: "GETs per warm read",
                target: "1, every read".into(),
                measured: gets_measured(&run.warm, 1),
                met: run.warm.reads_over(1).1 == 0,
            },
            // Judged on the sample and on every file's cost by the layout: a sample of
            // 1,000 rarely lands on a third generation's few files.
            Goal {
                goal: "GETs per cold read",
                target: "≤ 2, every read".into(),
                measured: format!(
                    "{}; by the layout, {} of {} files over 2",
                    gets_measured(&run.cold, 2),
                    files_over(&run.cold_costs_by_layout, 2),
                    run.cold_costs_by_layout.values().sum::<u64>()
                ),
                met: run.cold.reads_over(2).1 == 0 && files_over(&run.cold_costs_by_layout, 2) == 0,
            },
            Goal {
                goal: "space vs tar | zstd -3",
                target: "within 15 %".into(),
                measured: format!("{:+.1} %", space.vera_over_tar_zstd * 100.0),
                met: space.vera_over_tar_zstd <= 0.15,
            },
            Goal {
                goal: "saved on the text-heavy part",
                target: "≥ 40 %".into(),
                measured: format!("{:.1} %", space.text.vera_saved * 100.0),
                met: space.text.vera_saved >= 0.40,
            },
            Goal {
                goal: "reader bytes per cached file (lookup path)",
                target: "≤ 12 B".into(),
                measured: format!("{:.1} B", reader.bytes_per_cached_file),
                met: reader.bytes_per_cached_file <= 12.0,
            },
        ];
        Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine,
            s3_server: run.server,
            mode: if run.quick { "quick" } else { "full" },
            seconds: run.seconds,
            corpus,
            vera: run.vera,
            naive: run.naive,
            ratios,
            space,
            read: Reads {
                suffix_kib: run.suffix_kib,
                later_suffix_kib: run.later_suffix_kib,
                cold: run.cold,
                cold_by_layout: run.cold_costs_by_layout,
                warm: run.warm,
                direct_s3_range_get: run.direct,
            },
            reader,
            goals,
        }
    }

    pub fn markdown(&self) -> String {
        let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
        let (v, n) = (&self.vera, &self.naive);
        let mut out = format!(
            "Load test ({} mode): {} files, {} ({:.1} KiB mean), mix {}; {} cores ({}), {:.0} GiB; {}.\n\n",
            self.mode,
            self.corpus.files,
            mb(self.corpus.bytes),
            self.corpus.mean_file_bytes / 1024.0,
            self.corpus.mix,
            self.machine.cores,
            self.machine.cpu,
            self.machine.memory_gib,
            self.s3_server.split(" (").next().unwrap_or(&self.s3_server),
        );
        out += "| Ingest | VERA | naive (1 object per file) | VERA vs naive |\n|---|---:|---:|---:|\n";
        out += &format!(
            "| files per minute | {:.0} | {:.0} | {:.1}× |\n",
            v.files_per_minute, n.files_per_minute, self.ratios.ingest_speedup
        );
        out += &format!("| wall seconds | {:.2} | {:.2} | |\n", v.seconds, n.seconds);
        if let Some(ceiling) = self.ratios.ingest_speedup_ceiling {
            out += &format!(
                "| VERA files per minute at most here: every core on the S3 server's share of VERA's work | {:.0} | | {ceiling:.1}× |\n",
                ceiling * n.files_per_minute
            );
        }
        let server_ms =
            |cpu: &crate::cpu::CpuUse| cpu.server_ms_per_file.map_or("–".to_owned(), |ms| format!("{ms:.3}"));
        out += &format!(
            "| CPU ms per file: client / server | {:.3} / {} | {:.3} / {} | |\n",
            v.cpu.client_ms_per_file,
            server_ms(&v.cpu),
            n.cpu.client_ms_per_file,
            server_ms(&n.cpu),
        );
        out += &format!("| cores busy (CPU s per wall s) | {:.2} | {:.2} | |\n", v.cpu.cores_busy, n.cpu.cores_busy);
        out += &format!("| PUT requests | {} | {} | {:.0}× fewer |\n", v.puts, n.puts, self.ratios.put_reduction);
        out += &format!(
            "| GET / HEAD / LIST requests | {} / {} / {} | {} / {} / {} | |\n",
            v.gets, v.heads, v.lists, n.gets, n.heads, n.lists
        );
        out += &format!("| objects | {} | {} | |\n", v.objects, n.objects);
        out += &format!(
            "| segments per address | {:.2} mean, {} at most ({} addresses) | | |\n",
            ratio(self.ratios.segments as f64, self.ratios.addresses as f64),
            self.ratios.max_segments_per_address,
            self.ratios.addresses
        );
        out += &format!("| PUTs in flight (at most) | {} | {} | |\n", v.concurrency, n.concurrency);
        out += &format!("| pack tasks retried after a transient failure | {} | | |\n\n", self.ratios.tasks_retried);
        let s = &self.space;
        out += "| Bytes stored | VERA | naive | tar \\| zstd -3 | raw |\n|---|---:|---:|---:|---:|\n";
        out += &format!(
            "| whole corpus | {} ({:+.1} % vs tar+zstd) | {} | {} | {} |\n",
            mb(s.vera_bytes),
            s.vera_over_tar_zstd * 100.0,
            mb(s.naive_bytes),
            mb(s.tar_zstd_bytes),
            mb(s.raw_bytes)
        );
        out += &format!(
            "| text-heavy part | {} ({:.1} % saved) | {} | {} | {} |\n\n",
            mb(s.text.vera_bytes),
            s.text.vera_saved * 100.0,
            mb(s.text.raw_bytes),
            mb(s.text.tar_zstd_bytes),
            mb(s.text.raw_bytes)
        );
        out += "| Reads through the reader (HTTP) | reads | p50 ms | p95 ms | p99 ms | S3 GETs per read | of which sidecar GETs |\n|---|---:|---:|---:|---:|---:|---:|\n";
        for (name, r) in [
            ("cold (caches emptied before each read)", &self.read.cold),
            ("warm", &self.read.warm),
            ("bare S3 range GET of the same records (floor)", &self.read.direct_s3_range_get),
        ] {
            out += &format!(
                "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} |\n",
                r.reads, r.p50_ms, r.p95_ms, r.p99_ms, r.gets_per_read, r.sidecar_gets_per_read
            );
        }
        let by_gets = |by: &std::collections::BTreeMap<u64, u64>| {
            by.iter().map(|(gets, reads)| format!("{reads} took {gets}")).collect::<Vec<_>>().join(", ")
        };
        out += &format!(
            "\nReads by S3 GETs (cold reads fetch the last {} KiB of a segment, {} KiB of a later \
             generation): cold {}; warm {}. GETs the server answered 5xx: {:.3} per cold read; \
             without them, cold {}.\n",
            self.read.suffix_kib,
            self.read.later_suffix_kib,
            by_gets(&self.read.cold.reads_by_gets),
            by_gets(&self.read.warm.reads_by_gets),
            self.read.cold.get_server_errors_per_read,
            by_gets(&self.read.cold.reads_by_answered_gets),
        );
        out += &format!(
            "\nEvery stored file's cold read, worked out from the layout (answered GETs): {}; \
             the sampled cold reads cost what it says for {} of {}.\n",
            self.read
                .cold_by_layout
                .iter()
                .map(|(gets, files)| format!("{files} files took {gets}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.read.cold.reads_as_layout_predicts.unwrap_or(0),
            self.read.cold.reads,
        );
        let m = &self.reader;
        out += &format!(
            "\nReader index cache: {:.1} B per cached file for the lookup path, plus {:.1} B of zstd \
             dictionaries, {:.1} B in all ({} files in {} segments, {}).\n\n",
            m.bytes_per_cached_file,
            m.dictionary_bytes_per_cached_file,
            m.total_bytes_per_cached_file,
            m.cached_files,
            m.cached_segments,
            mb(m.cache_bytes),
        );
        out += "| Goal | target | measured | met |\n|---|---|---|---|\n";
        for goal in &self.goals {
            let name = goal.goal.replace('|', "\\|");
            out += &format!(
                "| {name} | {} | {} | {} |\n",
                goal.target,
                goal.measured,
                if goal.met { "yes" } else { "**no**" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_every_core_on_the_servers_share_against_the_naive_rate() {
        // 0.05 ms of server CPU per file on 2 cores: 40,000 files/s, 2.4 M files/min;
        // against 100,000 naive files/min, 24×.
        let ceiling = speedup_ceiling(2, Some(0.05), 100_000.0).unwrap();
        assert!((ceiling - 24.0).abs() < 1e-9, "{ceiling}");
        // Twice the cores, twice the ceiling; twice the server CPU per file, half.
        assert!((speedup_ceiling(4, Some(0.05), 100_000.0).unwrap() - 48.0).abs() < 1e-9);
        assert!((speedup_ceiling(2, Some(0.1), 100_000.0).unwrap() - 12.0).abs() < 1e-9);
        // Unmeasured or unreadably small server CPU, or no naive rate: no ceiling.
        assert_eq!(speedup_ceiling(2, None, 100_000.0), None);
        assert_eq!(speedup_ceiling(2, Some(0.0), 100_000.0), None);
        assert_eq!(speedup_ceiling(2, Some(0.05), 0.0), None);
    }
}

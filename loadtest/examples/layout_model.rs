//! A model of VERA's segment layout under five arrival patterns, for ADR 0005.
//!
//! It does not run VERA. It replays when each file arrives (and when it was created)
//! through three layout policies and counts what each would store: objects per million
//! files, files per PUT, segments per address, cold-read GETs, and pack lag. The policies:
//!
//! - `slots`: wave 1. Every producer slot seals one new generation per address it touches.
//! - `closed`: the producer holds a time slice's rows until the slice closes (its end plus
//!   the allowed lateness), then packs them once.
//! - `staging`: small segments go to a short-locked staging area and are merged into one
//!   final generation per address when the slice closes; late arrivals merge once more
//!   when the allowed lateness has passed. Large segments are written final directly.
//!
//! `cargo run --release -p loadtest --example layout_model` prints one table per policy
//! (it needs nothing but std, so `rustc -O --edition 2024` on this file also works).

use std::collections::HashMap;

/// splitmix64: the model needs repeatable numbers, nothing more.
struct SmallRng(u64);

impl SmallRng {
    fn seed_from_u64(seed: u64) -> Self {
        SmallRng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn gen_bool(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / ((1u64 << 53) as f64)) < p
    }
    fn gen_range(&mut self, range: std::ops::RangeInclusive<i64>) -> i64 {
        let span = (range.end() - range.start() + 1) as u64;
        range.start() + (self.next() % span) as i64
    }
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// One file: when it became visible to the producer, and its `created_at`.
#[derive(Clone, Copy)]
struct Arrival {
    at: i64,
    created: i64,
    bucket: u32,
}

struct Pattern {
    name: &'static str,
    arrivals: Vec<Arrival>,
    slice_seconds: i64,
    n_bits: u32,
    /// Rows per slot (bulk) or the follow-mode poll (stream).
    follow: bool,
    mean_file_bytes: u64,
}

fn arrival(rng: &mut SmallRng, at: i64, created: i64) -> Arrival {
    Arrival { at, created, bucket: rng.next() as u32 }
}

fn bulk(rng: &mut SmallRng, late_share: f64, late_batches: i64) -> Vec<Arrival> {
    // 100,000 files over 7 days, scanned in order at 700,000 files a minute; late rows
    // arrive in `late_batches` batches spread over the following 48 hours.
    let mut out = Vec::new();
    let files = 100_000i64;
    for i in 0..files {
        let created = i * 7 * DAY / files;
        let scan = created / 60_000; // the whole scan takes ten seconds, as a bulk migration
        if rng.gen_bool(late_share) {
            let batch = rng.gen_range(1..=late_batches);
            out.push(arrival(rng, created + batch * 48 * HOUR / late_batches, created));
        } else {
            out.push(arrival(rng, 7 * DAY + scan, created));
        }
    }
    out
}

fn diurnal_rate(base: f64, t: i64) -> f64 {
    let phase = (t % DAY) as f64 / DAY as f64 * std::f64::consts::TAU;
    base * (1.0 - 0.6 * phase.cos())
}

fn stream(rng: &mut SmallRng, base: f64, seconds: i64, burst: Option<(i64, i64, f64)>) -> Vec<Arrival> {
    let mut out = Vec::new();
    for t in 0..seconds {
        let mut rate = diurnal_rate(base, t);
        if let Some((from, to, factor)) = burst
            && (from..to).contains(&t)
        {
            rate *= factor;
        }
        let whole = rate.floor() as i64 + i64::from(rng.gen_bool(rate.fract()));
        for _ in 0..whole {
            let created = t;
            // Visible after a commit delay of up to two seconds.
            let visible = t + rng.gen_range(0..=2);
            out.push(arrival(rng, visible, created));
        }
    }
    out
}

fn sparse(rng: &mut SmallRng) -> Vec<Arrival> {
    // Ten years, a median of three files a day, three dense months at 2,000 a day; all
    // migrated at once in created_at order.
    let mut out = Vec::new();
    let dense = [(3 * 365 + 40) * DAY, (6 * 365 + 100) * DAY, (8 * 365 + 200) * DAY];
    for day in 0..(10 * 365) {
        let start = day * DAY;
        let count =
            if dense.iter().any(|d| (d..&(d + 30 * DAY)).contains(&&start)) { 2000 } else { rng.gen_range(0..=6) };
        for i in 0..count {
            let created = start + i * DAY / count.max(1);
            out.push(arrival(rng, 10 * 365 * DAY + created / 5000, created));
        }
    }
    out
}

/// What one policy did with one pattern.
#[derive(Default)]
struct Outcome {
    puts: u64,
    /// Final segments per address, each with its file count and bytes.
    finals: HashMap<(i64, u32), Vec<u64>>,
    lags: Vec<i64>,
}

#[derive(Clone, Copy)]
struct Policy {
    name: &'static str,
    slot_rows: usize,
    linger_seconds: i64,
    lateness_seconds: i64,
    direct_min_files: u64,
}

/// The time slice (its start) and length a file falls in. Sparse backfill follows the
/// planner's table: calendar years, but 30-day slices with 1 hash bit in a dense year.
fn slice_of(pattern: &Pattern, created: i64) -> (i64, i64, u32) {
    if pattern.name == "sparse" && [3, 6, 8].contains(&(created / (365 * DAY))) {
        let start = created - created.rem_euclid(30 * DAY);
        return (start, 30 * DAY, 1);
    }
    let start = created - created.rem_euclid(pattern.slice_seconds);
    (start, pattern.slice_seconds, pattern.n_bits)
}

/// An address: its slice's end, and the hash bucket.
fn address(pattern: &Pattern, file: &Arrival) -> (i64, u32) {
    let (start, length, n_bits) = slice_of(pattern, file.created);
    let mask = (1u32 << n_bits) - 1;
    (start + length, file.bucket & mask)
}

/// Cuts the arrivals into producer slots: `slot_rows` at most, and in follow mode a slot
/// is published once its oldest row has waited the linger time.
fn slots(pattern: &Pattern, policy: &Policy) -> Vec<(i64, Vec<Arrival>)> {
    let mut out = Vec::new();
    let mut current: Vec<Arrival> = Vec::new();
    for file in &pattern.arrivals {
        if let Some(first) = current.first()
            && (current.len() >= policy.slot_rows || (pattern.follow && file.at >= first.at + policy.linger_seconds))
        {
            let full = current.len() >= policy.slot_rows;
            let published = if full { file.at } else { first.at + policy.linger_seconds };
            // Like the producer's slot cutter: a full slot ends at its last slice change.
            let last_slice = current.last().map(|f| address(pattern, f).0);
            let cut = match (full, last_slice) {
                (true, Some(last)) => current.iter().rposition(|f| address(pattern, f).0 != last).map(|p| p + 1),
                _ => None,
            };
            let carry = match cut {
                Some(cut) => current.split_off(cut),
                None => Vec::new(),
            };
            out.push((published, std::mem::replace(&mut current, carry)));
        }
        current.push(*file);
    }
    if let Some(last) = current.last() {
        out.push((last.at, current));
    }
    out
}

fn run(pattern: &Pattern, policy: &Policy) -> Outcome {
    let mut outcome = Outcome::default();
    const PACK_SECONDS: i64 = 2;
    match policy.name {
        "closed" => {
            // One segment per address at slice end + lateness; later ones add segments.
            let mut groups: HashMap<((i64, u32), i64), u64> = HashMap::new();
            for file in &pattern.arrivals {
                let addr = address(pattern, file);
                let close = addr.0 + policy.lateness_seconds;
                let packed = close.max(file.at);
                *groups.entry((addr, packed / 600)).or_default() += 1;
                outcome.lags.push(packed + PACK_SECONDS - file.at);
            }
            for ((addr, _), files) in groups {
                outcome.puts += 1;
                outcome.finals.entry(addr).or_default().push(files);
            }
        }
        _ => {
            let staging = policy.name == "staging";
            // Staged files per address, by the time they were staged.
            let mut staged: HashMap<(i64, u32), Vec<(i64, u64)>> = HashMap::new();
            for (published, slot) in slots(pattern, policy) {
                let mut groups: HashMap<(i64, u32), u64> = HashMap::new();
                for file in &slot {
                    *groups.entry(address(pattern, file)).or_default() += 1;
                    outcome.lags.push(published + PACK_SECONDS - file.at);
                }
                for (addr, files) in groups {
                    outcome.puts += 1;
                    if staging && files < policy.direct_min_files {
                        staged.entry(addr).or_default().push((published, files));
                    } else {
                        outcome.finals.entry(addr).or_default().push(files);
                    }
                }
            }
            // Compaction: at slice close (or when the last staged write is quiet), then
            // the stragglers once more when the lateness has passed, then once per day.
            for (addr, mut writes) in staged {
                writes.sort();
                let slice_end = addr.0;
                let has_final = outcome.finals.contains_key(&addr);
                // A merge runs at its deadline once no write came for QUIET seconds.
                const QUIET: i64 = 60;
                let next_deadline = |deadline: i64| {
                    if deadline < slice_end + policy.lateness_seconds {
                        slice_end + policy.lateness_seconds
                    } else {
                        deadline + DAY
                    }
                };
                let mut deadline = if has_final { slice_end + policy.lateness_seconds } else { slice_end + 300 };
                let mut merges: Vec<u64> = vec![0];
                let mut last_write = i64::MIN;
                for (at, files) in writes {
                    let runs_at = deadline.max(last_write.saturating_add(QUIET));
                    if at > runs_at && merges.last().is_some_and(|f| *f > 0) {
                        while deadline < at {
                            deadline = next_deadline(deadline);
                        }
                        merges.push(0);
                    }
                    last_write = at;
                    *merges.last_mut().expect("one merge") += files;
                }
                for files in merges.into_iter().filter(|files| *files > 0) {
                    outcome.puts += 1;
                    outcome.finals.entry(addr).or_default().push(files);
                }
            }
        }
    }
    outcome
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(pattern: &Pattern, policy: &Policy, mut outcome: Outcome) {
    let files = pattern.arrivals.len() as u64;
    let objects: u64 = outcome.finals.values().map(|s| s.len() as u64).sum();
    let addresses = outcome.finals.len() as u64;
    let max_segments = outcome.finals.values().map(Vec::len).max().unwrap_or(0);
    // Cold-read GETs: a probe per generation up to the file's; one more range GET unless
    // the whole segment came in the probe's suffix (about 1 MiB for a later generation).
    let mut gets = [0u64; 5];
    for segments in outcome.finals.values() {
        for (position, files) in segments.iter().enumerate() {
            let whole_in_suffix = position > 0 && files * pattern.mean_file_bytes <= 1 << 20;
            let cost = position + 1 + usize::from(!whole_in_suffix);
            gets[cost.min(4)] += files;
        }
    }
    outcome.lags.sort_unstable();
    let share = |n: u64| 100.0 * n as f64 / files as f64;
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.2} / {} | {:.3} | {:.3} | {:.3} | {} s | {} s |",
        pattern.name,
        policy.name,
        objects as f64 * 1e6 / files as f64,
        files as f64 / outcome.puts as f64,
        objects as f64 / addresses as f64,
        max_segments,
        share(gets[0] + gets[1] + gets[2]),
        share(gets[3]),
        share(gets[4]),
        percentile(&outcome.lags, 0.5),
        percentile(&outcome.lags, 0.99),
    );
}

fn main() {
    let mut rng = SmallRng::seed_from_u64(20_261_207);
    let patterns = [
        Pattern {
            name: "bulk",
            arrivals: bulk(&mut rng, 0.01, 1),
            slice_seconds: DAY,
            n_bits: 2,
            follow: true,
            mean_file_bytes: 12_000,
        },
        Pattern {
            name: "stream",
            arrivals: stream(&mut rng, 200.0, DAY, None),
            slice_seconds: HOUR,
            n_bits: 6,
            follow: true,
            mean_file_bytes: 12_000,
        },
        Pattern {
            name: "late",
            arrivals: bulk(&mut rng, 0.01, 4),
            slice_seconds: DAY,
            n_bits: 2,
            follow: true,
            mean_file_bytes: 12_000,
        },
        Pattern {
            name: "sparse",
            arrivals: sparse(&mut rng),
            slice_seconds: 365 * DAY,
            n_bits: 0,
            follow: true,
            mean_file_bytes: 12_000,
        },
        Pattern {
            name: "burst",
            arrivals: stream(&mut rng, 200.0, 6 * HOUR, Some((3 * HOUR, 3 * HOUR + 600, 10.0))),
            slice_seconds: HOUR,
            n_bits: 6,
            follow: true,
            mean_file_bytes: 12_000,
        },
    ];
    let policies = [
        Policy { name: "slots", slot_rows: 25_000, linger_seconds: 1, lateness_seconds: 0, direct_min_files: 0 },
        Policy {
            name: "closed",
            slot_rows: 25_000,
            linger_seconds: 1,
            lateness_seconds: 48 * HOUR,
            direct_min_files: 0,
        },
        Policy {
            name: "staging",
            slot_rows: 25_000,
            linger_seconds: 10,
            lateness_seconds: 48 * HOUR,
            direct_min_files: 1000,
        },
    ];
    println!(
        "| pattern | policy | objects per 1M files | files per PUT | segments per address mean / max | cold ≤ 2 GETs % | 3 GETs % | ≥ 4 GETs % | pack lag p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for pattern in &patterns {
        let mut sorted = pattern.arrivals.clone();
        sorted.sort_by_key(|a| (a.at, a.created));
        let pattern = Pattern { arrivals: sorted, ..*pattern };
        for policy in &policies {
            report(&pattern, policy, run(&pattern, policy));
        }
    }
}

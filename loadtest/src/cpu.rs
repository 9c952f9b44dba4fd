//! CPU time spent by this process and by the S3 server child, read from `/proc` (Linux):
//! on a machine whose cores both sides share, it tells whether a phase was CPU-bound and
//! how many CPU milliseconds each file cost, client and server apart.

use std::time::Duration;

use serde::Serialize;

/// CPU seconds (user + system, all threads) of one process so far; `None` off Linux or
/// once the process is gone.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_from_stat(&stat, ticks_per_second()?)
}

/// Fields 14 and 15 of `/proc/<pid>/stat` (utime, stime, in clock ticks). The command
/// name (field 2) is in parentheses and may hold spaces, so fields are counted after the
/// last `)`, where field 3 is the first.
fn cpu_seconds_from_stat(stat: &str, ticks_per_second: f64) -> Option<f64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second)
}

fn ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

/// Where CPU time is read: this process, and the server's process when we started it.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    server_pid: Option<u32>,
}

/// CPU time a phase used, client (this process) and server apart.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub client_seconds: f64,
    /// `None` for a server we did not start (`--endpoint`).
    pub server_seconds: Option<f64>,
    /// Client and server CPU seconds per wall-clock second: 2.0 is both cores busy.
    pub cores_busy: f64,
    /// Client and server CPU milliseconds per file stored, together and apart.
    pub ms_per_file: f64,
    pub client_ms_per_file: f64,
    pub server_ms_per_file: Option<f64>,
}

/// A reading taken at the start of a phase.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    client: Option<f64>,
    server: Option<f64>,
}

impl CpuMeter {
    pub fn new(server_pid: Option<u32>) -> Self {
        CpuMeter { server_pid }
    }

    pub fn mark(&self) -> CpuMark {
        CpuMark { client: process_cpu_seconds("self"), server: self.server_cpu() }
    }

    fn server_cpu(&self) -> Option<f64> {
        self.server_pid.and_then(|pid| process_cpu_seconds(&pid.to_string()))
    }

    /// CPU used since `mark`, over a phase that took `elapsed` and stored `files`.
    pub fn since(&self, mark: CpuMark, elapsed: Duration, files: u64) -> CpuUse {
        self.between(mark, self.mark(), elapsed, files)
    }

    /// CPU used from `start` to `end`, a phase that took `elapsed` and stored `files`.
    pub fn between(&self, start: CpuMark, end: CpuMark, elapsed: Duration, files: u64) -> CpuUse {
        let delta = |start: Option<f64>, end: Option<f64>| start.zip(end).map(|(start, end)| (end - start).max(0.0));
        let client_seconds = delta(start.client, end.client).unwrap_or(0.0);
        let server_seconds = delta(start.server, end.server);
        let total = client_seconds + server_seconds.unwrap_or(0.0);
        let seconds = elapsed.as_secs_f64();
        let per_file = |seconds: f64| if files > 0 { seconds * 1000.0 / files as f64 } else { 0.0 };
        CpuUse {
            client_seconds,
            server_seconds,
            cores_busy: if seconds > 0.0 { total / seconds } else { 0.0 },
            ms_per_file: per_file(total),
            client_ms_per_file: per_file(client_seconds),
            server_ms_per_file: server_seconds.map(per_file),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as /proc allows.
        let stat = "4242 (s3s fs) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_seconds_from_stat(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds_from_stat("4242 (cut short) S 1", 100.0), None);
        assert_eq!(cpu_seconds_from_stat("no parenthesis here", 100.0), None);
    }

    #[test]
    fn this_process_burns_measurable_cpu() {
        let meter = CpuMeter::new(Some(std::process::id()));
        let mark = meter.mark();
        let started = std::time::Instant::now();
        // A fixed amount of work (not a fixed time), so a busy machine only makes it slower.
        let data = vec![7u8; 64 * 1024 * 1024];
        let mut hash = blake3::hash(&data);
        for _ in 0..3 {
            hash = blake3::hash(&[hash.as_bytes().as_slice(), &data].concat());
        }
        std::hint::black_box(hash);
        let used = meter.since(mark, started.elapsed(), 10);
        // Hashing 256 MiB takes well over 50 ms of CPU (5 clock ticks) on any machine.
        assert!(used.client_seconds >= 0.05, "{used:?}");
        assert_eq!(used.server_seconds.map(|s| s >= 0.05), Some(true), "the same process, read by pid: {used:?}");
        assert!(used.ms_per_file > 0.0 && used.cores_busy > 0.0, "{used:?}");
        // 10 files: the per-file figures are the seconds × 100, and add up.
        assert!((used.client_ms_per_file - used.client_seconds * 100.0).abs() < 1e-9, "{used:?}");
        let server_ms = used.server_ms_per_file.unwrap();
        assert!((used.client_ms_per_file + server_ms - used.ms_per_file).abs() < 1e-9, "{used:?}");
    }
}

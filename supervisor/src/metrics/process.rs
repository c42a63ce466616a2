//! The supervisor's own process, read from `/proc/self`: resident memory,
//! open and allowed fds, start time and CPU time, under the names every
//! Prometheus client library uses (`process_*`).
//!
//! Clock ticks (`/proc/self/stat` counts in them) are read from the
//! kernel's auxiliary vector (`AT_CLKTCK` in `/proc/self/auxv`) rather than
//! assumed; the start time is the boot time (`btime` in `/proc/stat`) plus
//! the process's start in ticks, so it survives an exec of the same
//! process, as the kernel keeps it.

use std::path::Path;

/// `AT_CLKTCK`: the auxiliary vector's entry for clock ticks per second.
const AT_CLKTCK: u64 = 17;

/// What `/proc/self` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// Resident set size.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on them.
    pub max_fds: u64,
    /// Seconds since the Unix epoch.
    pub start_time_unix: f64,
    /// User plus system time, seconds.
    pub cpu_seconds: f64,
}

impl ProcessStats {
    /// Reads them; `None` if `/proc` is not there or not as expected.
    pub fn read() -> Option<ProcessStats> {
        let proc = Path::new("/proc/self");
        let status = std::fs::read_to_string(proc.join("status")).ok()?;
        let stat = std::fs::read_to_string(proc.join("stat")).ok()?;
        let limits = std::fs::read_to_string(proc.join("limits")).ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks = clock_ticks(&std::fs::read(proc.join("auxv")).ok()?)? as f64;
        let (cpu_ticks, start_ticks) = cpu_and_start(&stat)?;
        // The directory's own fd, open while it is listed, is not counted.
        let open_fds = std::fs::read_dir(proc.join("fd")).ok()?.count() as u64;
        Some(ProcessStats {
            resident_bytes: kib_field(&status, "VmRSS:")? * 1024,
            open_fds: open_fds.saturating_sub(1),
            max_fds: max_open_files(&limits)?,
            start_time_unix: boot_time(&boot)? as f64 + start_ticks as f64 / ticks,
            cpu_seconds: cpu_ticks as f64 / ticks,
        })
    }
}

/// A `Name:   N kB` line of `/proc/PID/status`.
fn kib_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix(name))?;
    line.split_whitespace().next()?.parse().ok()
}

/// `(utime + stime, starttime)` from `/proc/PID/stat`, in clock ticks. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses: fields are counted from the last `)`.
fn cpu_and_start(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field n of proc(5) is fields[n - 3] here.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some((field(14)? + field(15)?, field(22)?))
}

/// The soft limit of `Max open files` in `/proc/PID/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: boot time, seconds since the Unix epoch.
fn boot_time(stat: &str) -> Option<u64> {
    let line = stat.lines().find_map(|line| line.strip_prefix("btime "))?;
    line.trim().parse().ok()
}

/// `AT_CLKTCK` from an auxiliary vector: pairs of native-endian words.
fn clock_ticks(auxv: &[u8]) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| -> Option<u64> {
        let array: [u8; WORD] = bytes.try_into().ok()?;
        Some(usize::from_ne_bytes(array) as u64)
    };
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        (word(&pair[..WORD])? == AT_CLKTCK)
            .then(|| word(&pair[WORD..]))
            .flatten()
            .filter(|ticks| *ticks > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 12345 1000 \
                    200 18446744073709551615";
        assert_eq!(cpu_and_start(stat), Some((10, 12345)));
    }

    #[test]
    fn our_process_is_read() {
        let stats = ProcessStats::read().expect("/proc/self");
        assert!(stats.resident_bytes > 0);
        assert!(stats.open_fds >= 3 && stats.open_fds <= stats.max_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        // This test process started within the last hour, not in the future.
        assert!(
            stats.start_time_unix <= now + 1.0 && stats.start_time_unix > now - 3600.0,
            "{} vs {now}",
            stats.start_time_unix
        );
        let auxv = std::fs::read("/proc/self/auxv").expect("auxv");
        assert_eq!(clock_ticks(&auxv), Some(100), "USER_HZ on Linux");
    }
}

//! What a server process used, from `/proc`: CPU seconds (user + system, all threads; and
//! user alone, the process's own code as opposed to the kernel's work for it) and
//! peak resident memory (`VmHWM`), whose peak can be reset between runs through
//! `/proc/<pid>/clear_refs` so each run reports its own peak.

use anyhow::Context;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds of all its threads so far.
    pub cpu_secs: f64,
    /// User-mode CPU seconds of all its threads so far (its own code, no system calls).
    pub user_secs: f64,
    /// Peak resident set (bytes) since start or the last [`reset_peak`].
    pub peak_rss: u64,
    /// Current resident set (bytes).
    pub rss: u64,
}

/// CPU seconds (user + system) of the calling thread so far.
///
/// # Errors
/// When `/proc/thread-self/stat` cannot be read or parsed.
pub fn thread_cpu_secs() -> anyhow::Result<f64> {
    let (user, system) = cpu_of(&std::fs::read_to_string("/proc/thread-self/stat")?)?;
    Ok(user + system)
}

/// User and system CPU seconds from a `/proc` stat line.
fn cpu_of(stat: &str) -> anyhow::Result<(f64, f64)> {
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc stat")?.parse()?)
    };
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11)? as f64 / hz, ticks(12)? as f64 / hz))
}

/// Reads the usage of `pid`.
///
/// # Errors
/// When the process is gone or `/proc` cannot be parsed.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (user_secs, system_secs) = cpu_of(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(Usage {
        cpu_secs: user_secs + system_secs,
        user_secs,
        peak_rss: kib("VmHWM:"),
        rss: kib("VmRSS:"),
    })
}

/// Resets the peak RSS of `pid` to its current RSS (`echo 5 > /proc/<pid>/clear_refs`).
///
/// # Errors
/// When the file cannot be written (another user's process, or an old kernel).
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_process() -> anyhow::Result<()> {
        let me = std::process::id();
        super::reset_peak(me)?;
        let u = super::usage(me)?;
        assert!(u.peak_rss > 0 && u.rss > 0 && u.cpu_secs >= u.user_secs && u.user_secs >= 0.0);
        Ok(())
    }
}

//! kshuffle-benches: measurements of the kshuffle daemon, side by side with Spark's own Java
//! external shuffle service. Figures are reported as ratios measured in one run, never
//! asserted in tests.
//!
//! - [`layout`]: Spark-format shuffle files (maps × reducers, block size, skew) with content
//!   that can be verified byte for byte without a copy;
//! - [`load`]: the load generator, fetching as Spark's fetcher does (`FetchShuffleBlocks`, then
//!   every `ChunkFetchRequest` pipelined; requests in flight per connection; connections; batch
//!   fetch), verifying every byte, with HDR latency percentiles;
//! - [`register`]: many executors registering at once;
//! - [`loopback`]: the machine's loopback limit for the same bytes (plain `sendfile`);
//! - [`procstat`]: server CPU seconds and peak RSS from `/proc`;
//! - [`services`]: `kshuffled` and the Java service as child processes;
//! - [`compare`]: the side-by-side runner and its table;
//! - [`sparkjobs`]: wall time of the real-Spark test workloads with each service;
//! - [`scale`]: throughput and memory as connections and registered executors grow.
//!
//! The binary is `kshuffle-bench` (`load`, `compare`, `loopback`, `scale`); `scripts/bench.sh`
//! builds and runs the comparison.

pub mod compare;
pub mod layout;
pub mod load;
pub mod loopback;
pub mod procstat;
pub mod register;
pub mod scale;
pub mod services;
pub mod sparkjobs;
pub mod tls;

/// The directory a run works in: `dir` (created if missing) or, without one, a fresh temporary
/// directory named `prefix…` that lives as long as the returned guard. The path is canonical.
///
/// # Errors
/// When the directory cannot be created or resolved.
pub fn work_dir(
    dir: Option<&std::path::Path>,
    prefix: &str,
) -> anyhow::Result<(Option<tempfile::TempDir>, std::path::PathBuf)> {
    let (guard, path) = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (None, dir.to_path_buf())
        }
        None => {
            let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    Ok((guard, std::fs::canonicalize(path)?))
}

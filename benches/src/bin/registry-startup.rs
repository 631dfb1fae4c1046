//! How long the daemon takes to load its registry at start: writes N registrations through
//! the durable registry (journal), then times re-opening it (replay), several times.
//!
//!   cargo run --release -p kshuffle-benches --bin registry-startup -- [N ...]
//!
//! The journal is written under /dev/shm when it exists (fsync is cheap there, so building
//! 50,000 records takes seconds); replay cost is reading and parsing, the same from a
//! warm page cache on disk. Reported, never asserted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use kshuffle::registry::{Executor, JournalRegistry, Registry};

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 50_000]
    } else {
        sizes
    };
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    println!("| registrations | journal bytes | replay (best of 5) | replay (median) |");
    println!("|---:|---:|---:|---:|");
    for n in sizes {
        let dir = tempfile::tempdir_in(&base)?;
        {
            let (reg, _) = JournalRegistry::open(dir.path())?;
            for i in 0..n {
                let app = format!("spark-application-{}", i / 100);
                let root = format!("/var/lib/kshuffle/{app}/executor-{i}");
                reg.insert(Arc::new(Executor {
                    app_id: app.as_str().into(),
                    exec_id: (i % 100).to_string().as_str().into(),
                    local_dirs: vec![format!(
                        "{root}/blockmgr-2f1c0c9e-5b8a-4d1e-9a3b-0d6c2e7f4a11"
                    )],
                    resolved_dirs: vec![
                        format!("{root}/blockmgr-2f1c0c9e-5b8a-4d1e-9a3b-0d6c2e7f4a11").into(),
                    ],
                    sub_dirs_per_local_dir: 64,
                    shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
                }))?;
            }
        }
        let bytes = std::fs::metadata(dir.path().join("registry.journal"))?.len();
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let (reg, recovery) = JournalRegistry::open(dir.path())?;
            times.push(started.elapsed());
            anyhow::ensure!(
                reg.len() == n && recovery.moved_aside.is_none(),
                "replay lost entries"
            );
        }
        times.sort();
        println!(
            "| {n} | {bytes} | {:.1} ms | {:.1} ms |",
            times[0].as_secs_f64() * 1e3,
            times[2].as_secs_f64() * 1e3
        );
    }
    Ok(())
}

//! Prometheus metrics, through the `metrics` facade (`kshuffle_` prefix).
//!
//! The request path bumps plain atomics ([`Stats`](crate::stats::Stats)); [`publish`] copies
//! them into the recorder when `/metrics` is scraped, so serving a block costs no registry
//! lookup. Latency histograms and error counters are recorded where they happen.
//!
//! How they map to the Java service's `shuffleService` metrics, for operators who know those:
//!
//! | Java (`shuffleService` source) | kshuffle |
//! |---|---|
//! | `registerExecutorRequestLatencyMillis` | `kshuffle_request_duration_seconds{type="RegisterExecutor"}` |
//! | `openBlockRequestLatencyMillis` | `kshuffle_request_duration_seconds{type="FetchShuffleBlocks"\|"OpenBlocks"}` |
//! | `blockTransferMessageRate` | `rate(kshuffle_chunks_served_total + kshuffle_streams_served_total)` |
//! | `blockTransferRateBytes` | `rate(kshuffle_served_bytes_total)` |
//! | `blockTransferRate` | `rate(kshuffle_chunks_served_total + kshuffle_streams_served_total)` (a batch range counts once, Java counts its partitions) |
//! | `registeredExecutorsSize` | `kshuffle_registered_executors` |
//! | `numActiveConnections` | `kshuffle_connections_open` |
//! | `numRegisteredConnections` | `kshuffle_connections_total` |
//! | `numCaughtExceptions` | `kshuffle_errors_total{kind}` |
//! | – | `kshuffle_registered_apps`, `kshuffle_streams_open`, `kshuffle_data_files_kept_open`, `kshuffle_data_files_shed_total` (kept data files closed because the process ran out of descriptors), `kshuffle_apps_removed_total`, `kshuffle_cleanup_reclaimed_bytes_total`, `kshuffle_orphan_dirs_reclaimed_total`, `kshuffle_registry_recovered_with_loss`, `kshuffle_turns_yielded_total`, `kshuffle_rpcs_read_ahead_total`, `kshuffle_chunks_out_of_turn_total`, `kshuffle_tls_handshakes_total` (TLS sessions established), `kshuffle_encrypted_connections_total` (connections with Spark's AES cipher), `kshuffle_registry_syncs_total` and `kshuffle_registry_synced_records_total` (their ratio: registrations per journal sync) |

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Bucket bounds of every latency histogram, 50 µs to 10 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

use crate::handler::Service;

/// Copies the live counters into the recorder.
pub fn publish(service: &Service) {
    let s = service.stats.snapshot();
    let registry = service.store.registry();
    metrics::gauge!("kshuffle_registered_executors").set(registry.len() as f64);
    metrics::gauge!("kshuffle_registered_apps").set(registry.apps().len() as f64);
    metrics::gauge!("kshuffle_connections_open")
        .set(service.stats.connections_open.load(Ordering::Relaxed) as f64);
    metrics::gauge!("kshuffle_streams_open")
        .set(service.stats.streams_open.load(Ordering::Relaxed) as f64);
    metrics::gauge!("kshuffle_data_files_kept_open").set(service.store.open_files().len() as f64);
    for (name, value) in [
        ("kshuffle_connections_total", s.connections),
        ("kshuffle_connections_refused_total", s.connections_refused),
        ("kshuffle_registrations_total", s.registrations),
        ("kshuffle_open_blocks_total", s.open_blocks),
        (
            "kshuffle_fetch_shuffle_blocks_total",
            s.fetch_shuffle_blocks,
        ),
        ("kshuffle_batch_fetches_total", s.batch_fetches),
        ("kshuffle_remove_blocks_total", s.remove_blocks),
        ("kshuffle_blocks_removed_total", s.blocks_removed),
        ("kshuffle_local_dirs_requests_total", s.local_dirs_requests),
        ("kshuffle_map_outputs_opened_total", s.map_outputs_opened),
        ("kshuffle_chunks_served_total", s.chunks_served),
        ("kshuffle_streams_served_total", s.streams_served),
        (
            "kshuffle_served_bytes_total",
            s.chunk_bytes + s.stream_bytes,
        ),
        ("kshuffle_rdd_blocks_served_total", s.rdd_blocks_served),
        ("kshuffle_rpc_failures_total", s.rpc_failures),
        ("kshuffle_chunk_failures_total", s.chunk_failures),
        ("kshuffle_connection_errors_total", s.connection_errors),
        ("kshuffle_turns_yielded_total", s.turns_yielded),
        ("kshuffle_rpcs_read_ahead_total", s.rpcs_read_ahead),
        ("kshuffle_chunks_out_of_turn_total", s.chunks_out_of_turn),
        ("kshuffle_tls_handshakes_total", s.tls_handshakes),
        (
            "kshuffle_encrypted_connections_total",
            s.encrypted_connections,
        ),
    ] {
        metrics::counter!(name).absolute(value);
    }
}

/// Records how long handling one request of `kind` took.
pub fn request_duration(kind: &'static str, started: std::time::Instant) {
    metrics::histogram!("kshuffle_request_duration_seconds", "type" => kind)
        .record(started.elapsed().as_secs_f64());
}

/// Records how long serving one chunk took (`ChunkFetchRequest`, or `StreamRequest` when
/// `stream`), through a histogram handle looked up once per process: building the labelled
/// key and looking it up in the recorder for every chunk was about a tenth of the daemon's
/// instructions per small block (`scripts/profile.sh callgrind small`). The daemon installs
/// its recorder before it serves anything, so the handle is the recorder's.
pub fn chunk_duration(stream: bool, started: std::time::Instant) {
    static CHUNK: OnceLock<metrics::Histogram> = OnceLock::new();
    static STREAM: OnceLock<metrics::Histogram> = OnceLock::new();
    let (cell, kind) = if stream {
        (&STREAM, "StreamRequest")
    } else {
        (&CHUNK, "ChunkFetchRequest")
    };
    cell.get_or_init(|| metrics::histogram!("kshuffle_request_duration_seconds", "type" => kind))
        .record(started.elapsed().as_secs_f64());
}

/// Counts an error of `kind` (`unknown_executor`, `index_missing`, `idle_timeout`, …).
pub fn error(kind: &'static str) {
    metrics::counter!("kshuffle_errors_total", "kind" => kind).increment(1);
}

/// Runs `drain` (the exporter's upkeep, which moves every queued histogram sample into its
/// buckets) every `interval` until `stop`, on tokio's blocking pool: a drain takes time in
/// proportion to the chunks served since the last one (~2 ms per 220,000 samples measured),
/// and on an async worker it would hold up every connection queued behind it.
pub async fn drain_periodically<F>(interval: Duration, stop: CancellationToken, drain: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let drain = Arc::new(drain);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let drain = Arc::clone(&drain);
        if let Err(e) = tokio::task::spawn_blocking(move || drain()).await {
            tracing::warn!(error = %e, "metrics upkeep failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drain runs off the runtime's own thread, repeatedly, and stops with the token.
    #[tokio::test(start_paused = true)]
    async fn drains_run_on_the_blocking_pool_until_stopped() {
        let runtime_thread = std::thread::current().id();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(drain_periodically(
            Duration::from_secs(1),
            stop.clone(),
            move || {
                let _ = tx.send(std::thread::current().id());
            },
        ));
        for _ in 0..3 {
            let thread = rx.recv().await.unwrap();
            assert_ne!(thread, runtime_thread, "drained on the async worker");
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the upkeep did not stop")
            .unwrap();
        // The drain (and its sender) went with the task.
        while let Some(thread) = rx.recv().await {
            assert_ne!(thread, runtime_thread, "drained on the async worker");
        }
    }
}

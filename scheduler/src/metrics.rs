//! Metric names (prefix `kshuffle_scheduler_`), through the `metrics` facade. The binary
//! installs the Prometheus recorder; without one these are no-ops.
//!
//! - `kshuffle_scheduler_pods_requested_total`: executor pods created;
//! - `kshuffle_scheduler_pods_deleted_total`: executor pods deleted by the scheduler;
//! - `kshuffle_scheduler_executor_failures_total`: failed, evicted or timed-out pods;
//! - `kshuffle_scheduler_pods{state}`: pods pending, running, failed (gauge);
//! - `kshuffle_scheduler_target_executors`: the requested total (gauge);
//! - `kshuffle_scheduler_api_calls_total{verb}` and `..._api_errors_total{verb,kind}`;
//! - `kshuffle_scheduler_rounds_total` and `kshuffle_scheduler_round_duration_seconds`;
//! - `kshuffle_scheduler_watch_errors_total`.

use std::sync::atomic::{AtomicU64, Ordering};

static API_CALLS: AtomicU64 = AtomicU64::new(0);

/// Counts one API call.
pub fn api_call(verb: &'static str) {
    API_CALLS.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("kshuffle_scheduler_api_calls_total", "verb" => verb).increment(1);
}

/// API calls made by this process's allocators and pollers (not the watch, which kube runs).
pub fn api_calls() -> u64 {
    API_CALLS.load(Ordering::Relaxed)
}

/// Counts a failed API call by kind: the Status reason for API errors, else `transport`.
pub fn api_error(verb: &'static str, err: &kube::Error) {
    let kind = match err {
        kube::Error::Api(s) if s.code >= 500 => "server_error",
        kube::Error::Api(s) if s.code == 409 => "conflict",
        kube::Error::Api(s) if s.code == 404 => "not_found",
        kube::Error::Api(_) => "client_error",
        _ => "transport",
    };
    metrics::counter!("kshuffle_scheduler_api_errors_total", "verb" => verb, "kind" => kind)
        .increment(1);
}

/// Counts an API call that timed out on our side.
pub fn api_timeout(verb: &'static str) {
    metrics::counter!("kshuffle_scheduler_api_errors_total", "verb" => verb, "kind" => "timeout")
        .increment(1);
}

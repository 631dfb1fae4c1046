//! Test helpers shared by kshuffle's crates. Dev-only: never a dependency of product code.
//!
//! - [`apiserver`]: a fake Kubernetes API server for core/v1 pods (plus the ConfigMaps,
//!   Secrets, Services and PVCs Spark's own client uses, and watches over WebSocket) that
//!   speaks real HTTP/JSON on 127.0.0.1, with a simulated scheduler and kubelet, fault
//!   injection, call counters and a request log; optionally a process kubelet that runs
//!   Spark executor pods as local JVMs (see `testkit/README.md`).
//!   No Kubernetes cluster, container runtime or kube-apiserver runs on our machines; tests of
//!   code that talks to Kubernetes point the real `kube` client at this server instead
//!   ([`kube_client`]).
//! - [`cluster`]: applying manifests and reading `spark-submit` flags files, for the
//!   `fake-apiserver` binary's simulated cluster (`scripts/sim-cluster.sh`).
//! - [`kustomize`]: `kubectl kustomize` of a deploy directory, as documents.
//! - [`support`]: helpers of the tests that run programs on the simulated cluster (bounded
//!   polling, HTTP GET of admin endpoints, Prometheus counters, process groups killed on drop).

pub mod apiserver;
pub mod cluster;
pub mod kustomize;
pub mod support;

pub use apiserver::{Calls, FakeApiServer, Latencies, Node, Outage};

/// A `kube::Config` for the fake server: plain HTTP, no auth, the given default namespace,
/// and kube's defaults otherwise (including its retry of 429/503/504 with backoff, up to 15
/// times; set `default_retry = false` to see a 503 at once).
pub fn kube_config(server: &FakeApiServer, namespace: &str) -> kube::Config {
    // The URL is built from a bound socket address, so it always parses.
    let url = server
        .url()
        .parse()
        .unwrap_or_else(|_| axum::http::Uri::from_static("http://127.0.0.1"));
    let mut config = kube::Config::new(url);
    config.default_namespace = namespace.to_owned();
    config.read_timeout = Some(std::time::Duration::from_secs(30));
    config
}

/// A `kube::Client` from [`kube_config`].
///
/// # Errors
/// When the client cannot be built from the config.
pub fn kube_client(server: &FakeApiServer, namespace: &str) -> Result<kube::Client, kube::Error> {
    kube::Client::try_from(kube_config(server, namespace))
}

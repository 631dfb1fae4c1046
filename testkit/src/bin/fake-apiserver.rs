//! Runs the fake Kubernetes API server until Ctrl-C (or SIGTERM), printing its URL and then
//! every request it receives (method, path and query, WebSocket or not, status, client), for a
//! developer to point `spark-submit --master k8s://URL` or `kubectl --server URL` at.
//!
//! With `--work-dir` it is a simulated cluster (`scripts/sim-cluster.sh` runs it so): `--nodes`
//! nodes with testkit's process kubelet running pods as local processes (Spark executors from
//! `--spark-home`, images mapped to programs by `--image`), the objects of `--apply` files
//! created, and pod changes printed; on Ctrl-C every process it started is killed (and if
//! this process is killed outright, the kernel kills the containers' processes).
//!
//! Usage: `cargo run -p kshuffle-testkit --bin fake-apiserver -- --help`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kshuffle_testkit::apiserver::ProcessKubelet;
use kshuffle_testkit::cluster::{self, Applied};
use kshuffle_testkit::{FakeApiServer, Node};

/// The fake Kubernetes API server, optionally a simulated cluster of local processes.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated nodes `node-1`…`node-N` (without it: one node of 64 CPUs and 256 GiB).
    #[arg(long)]
    nodes: Option<usize>,
    /// CPUs of each node of `--nodes`.
    #[arg(long, default_value_t = 4)]
    node_cpus: u64,
    /// Memory of each node of `--nodes`, in GiB.
    #[arg(long, default_value_t = 8)]
    node_memory_gib: u64,
    /// Run pods as local processes (the process kubelet), keeping their files, logs and the
    /// nodes' hostPath directories under DIR.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The `pyspark` package directory (holding `jars/`) Spark executor pods run from.
    #[arg(long, value_name = "DIR", requires = "work_dir")]
    spark_home: Option<PathBuf>,
    /// Run containers of image NAME (any tag) as the program PATH.
    #[arg(long = "image", value_name = "NAME=PATH", requires = "work_dir", value_parser = pair)]
    images: Vec<(String, String)>,
    /// Set env VARS (comma-separated) of NAME's containers to the pod IP, the one address
    /// its program may bind (no network namespaces here).
    #[arg(long = "address-env", value_name = "NAME=VARS", requires = "work_dir", value_parser = pair)]
    address_env: Vec<(String, String)>,
    /// Containers of image NAME exit 0 at once (init containers whose work is moot here).
    #[arg(long = "noop-image", value_name = "NAME", requires = "work_dir")]
    noop_images: Vec<String>,
    /// The first three bytes of the nodes' addresses (node i is NETWORK.i).
    #[arg(long, default_value = "127.0.1")]
    node_network: String,
    /// Probe containers at least this often, in milliseconds (manifests say 5-10 s).
    #[arg(long, value_name = "MS")]
    max_probe_period_ms: Option<u64>,
    /// Create the objects of this YAML file (repeatable; kinds the fake does not serve are
    /// skipped and listed).
    #[arg(long = "apply", value_name = "FILE")]
    apply: Vec<PathBuf>,
    /// Calls of webhooks naming Service NS/NAME in `clientConfig.service` go to ADDR
    /// (repeatable), e.g. `kshuffle-sidecar/kshuffle-webhook=127.0.0.1:8443`.
    #[arg(long = "webhook-service", value_name = "NS/NAME=ADDR", value_parser = pair)]
    webhook_services: Vec<(String, String)>,
    /// A CA certificate (PEM) put into the `caBundle` of applied MutatingWebhookConfigurations
    /// that have none, as cert-manager's CA injector would.
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// `spark-submit` of the printed example command.
    #[arg(long, value_name = "PATH")]
    spark_submit: Option<PathBuf>,
    /// A flags file (`--conf k=v` lines) whose flags go into the printed example command.
    #[arg(long, value_name = "FILE")]
    submit_flags: Option<PathBuf>,
    /// One more `--conf KEY=VALUE` of the printed example command (repeatable), e.g. the
    /// settings of kshuffle-scheduler's JVM adapter.
    #[arg(long = "submit-conf", value_name = "KEY=VALUE", value_parser = pair)]
    submit_confs: Vec<(String, String)>,
    /// Do not print every request.
    #[arg(long)]
    no_request_log: bool,
}

fn pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = FakeApiServer::builder();
    let mut kubelet_view = None;
    if let Some(n) = args.nodes {
        let names = (1..=n).map(|i| format!("node-{i}"));
        builder = builder.nodes(
            names
                .map(|name| Node::new(name, args.node_cpus, args.node_memory_gib))
                .collect(),
        );
    }
    if let Some(work) = &args.work_dir {
        std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        let work = std::fs::canonicalize(work)?;
        let spark_home = args
            .spark_home
            .clone()
            .unwrap_or_else(|| work.join("no-spark-home"));
        let mut kubelet = ProcessKubelet::new(spark_home, &work).node_network(&args.node_network);
        for (image, path) in &args.images {
            let path = std::fs::canonicalize(path).with_context(|| format!("--image {path}"))?;
            kubelet = kubelet.image(image, path);
        }
        for (image, vars) in &args.address_env {
            kubelet = kubelet.address_env(image, &vars.split(',').collect::<Vec<_>>());
        }
        for image in &args.noop_images {
            kubelet = kubelet.noop_image(image);
        }
        if let Some(ms) = args.max_probe_period_ms {
            kubelet = kubelet.max_probe_period(Duration::from_millis(ms));
        }
        kubelet_view = Some((work, kubelet.clone()));
        builder = builder.process_kubelet(kubelet);
    }
    for (service, addr) in &args.webhook_services {
        let (ns, name) = service
            .split_once('/')
            .with_context(|| format!("--webhook-service {service}: expected NS/NAME=ADDR"))?;
        let addr = addr
            .parse()
            .with_context(|| format!("--webhook-service {service}={addr}: not an address"))?;
        builder = builder.webhook_service(ns, name, addr);
    }
    let ca_bundle = match &args.ca_bundle {
        Some(f) => Some(std::fs::read(f).with_context(|| format!("--ca-bundle {}", f.display()))?),
        None => None,
    };
    let server = builder.start().await?;
    println!("fake API server at {}", server.url());
    if let (Some(n), Some((work, kubelet))) = (args.nodes, &kubelet_view) {
        for i in 0..n {
            let node = format!("node-{}", i + 1);
            let addr = kubelet.node_address(i);
            let host = kubelet.host_path(&node, "/");
            println!("node {node} {addr} (hostPath / = {})", host.display());
        }
        println!("kubeconfig {}", work.join("kubeconfig").display());
    }
    let client = kshuffle_testkit::kube_client(&server, "default")?;
    for file in &args.apply {
        for mut manifest in cluster::read_manifests(file)? {
            if let Some(pem) = &ca_bundle {
                manifest.inject_ca_bundle(pem);
            }
            match cluster::apply(&client, &manifest).await? {
                Applied::Created => println!("created {}", manifest.describe()),
                Applied::Skipped => println!(
                    "skipped {} (not served by the fake API server)",
                    manifest.describe()
                ),
            }
        }
    }
    if let Some(submit) = &args.spark_submit {
        print_submit(
            &server.url(),
            submit,
            args.submit_flags.as_deref(),
            &args.submit_confs,
        )?;
    }
    println!("running; Ctrl-C stops the cluster and every process it started");
    serve(&server, !args.no_request_log).await?;
    println!("stopping");
    server.shutdown().await;
    Ok(())
}

/// Prints a ready-to-paste client-mode `spark-submit` against the server.
fn print_submit(
    url: &str,
    submit: &std::path::Path,
    flags: Option<&std::path::Path>,
    extra: &[(String, String)],
) -> anyhow::Result<()> {
    let mut confs = match flags {
        Some(f) => cluster::read_submit_flags(f)?,
        None => Vec::new(),
    };
    confs.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    confs.extend(
        [
            "spark.kubernetes.container.image=kshuffle/spark-test",
            "spark.kubernetes.namespace=spark-jobs",
            "spark.driver.host=127.0.0.1",
            "spark.executor.cores=1",
            "spark.executor.memory=512m",
            "spark.dynamicAllocation.maxExecutors=2",
        ]
        .map(str::to_owned),
    );
    let python = submit.with_file_name("python");
    let mut cmd = format!(
        "SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON={} {} --master k8s://{url} --deploy-mode client",
        python.display(),
        submit.display()
    );
    for c in confs {
        cmd.push_str(&format!(" \\\n  --conf {c}"));
    }
    cmd.push_str(" \\\n  YOUR_JOB.py");
    println!("spark-submit (client mode; executors run as local JVMs on the nodes):\n{cmd}");
    Ok(())
}

/// Until SIGINT or SIGTERM: prints new requests and pod changes.
async fn serve(server: &FakeApiServer, log_requests: bool) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut seen = 0;
    let mut pods: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; return Ok(()); }
            _ = term.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        if log_requests {
            // The log keeps the last requests only; print what is new since the last tick.
            let from = seen;
            for r in server.requests().iter().filter(|r| r.seq > from) {
                let query = if r.query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", r.query)
                };
                let ws = if r.websocket { " [websocket]" } else { "" };
                println!(
                    "{} {} {}{}{} ({})",
                    r.status, r.method, r.path, query, ws, r.user_agent
                );
                seen = r.seq;
            }
        }
        let now: BTreeMap<String, String> = server.all_pods().iter().map(summary).collect();
        for (name, line) in &now {
            if pods.get(name) != Some(line) {
                println!("pod {name} {line}");
            }
        }
        for name in pods.keys().filter(|n| !now.contains_key(*n)) {
            println!("pod {name} gone");
        }
        pods = now;
    }
}

/// `namespace/name` and `node podIP phase [Ready] [restarts=N]` of a pod.
fn summary(pod: &Pod) -> (String, String) {
    let meta = &pod.metadata;
    let name = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    );
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let status = pod.status.as_ref();
    let ip = status.and_then(|s| s.pod_ip.as_deref());
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let restarts: i32 = status
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum());
    let mut line = format!(
        "{} {} {phase}",
        node.unwrap_or("(unscheduled)"),
        ip.unwrap_or("-")
    );
    if ready {
        line.push_str(" Ready");
    }
    if meta.deletion_timestamp.is_some() {
        line.push_str(" Terminating");
    }
    if restarts > 0 {
        line.push_str(&format!(" restarts={restarts}"));
    }
    (name, line)
}
